//! Who the pod mesh blames. A failed pair only says that two pods did not reach each
//! other; the pattern over the whole matrix says where the fault is: a node whose pods
//! cannot send, cannot be reached, or both; a partition into groups; or failures that
//! implicate no node. Pure: the probed pairs in, the attribution and each node's verdict
//! out, so every shape is a unit test.

use super::{Evidence, Judgement, PairResult, ProbeOutcome, Verdict};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// How a node's pairs fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Every pair from it and every pair to it fails.
    BothWays,
    /// Every pair from it fails; pairs to it answer.
    CannotSend,
    /// Every pair to it fails; pairs from it answer.
    CannotBeReached,
}

/// A node the matrix names as the end at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Implicated {
    pub node: String,
    pub fault: Fault,
    pub failed_out: usize,
    pub probed_out: usize,
    pub failed_in: usize,
    pub probed_in: usize,
    /// Nodes the same failures can be blamed on just as well: with two nodes, a pair
    /// that fails both ways cannot tell which end is broken. Each is implicated too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub or_else: Vec<String>,
}

impl Implicated {
    /// What the matrix shows of the node, for a verdict and the report's summary.
    pub fn describe(&self) -> String {
        let mut text = match self.fault {
            Fault::BothWays => format!(
                "every pair to and from it fails ({} of {} sent, {} of {} received)",
                self.failed_out, self.probed_out, self.failed_in, self.probed_in
            ),
            Fault::CannotSend => format!(
                "its pods cannot send: every pair from it fails ({} of {}), pairs to it answer",
                self.failed_out, self.probed_out
            ),
            Fault::CannotBeReached => format!(
                "its pods cannot be reached: every pair to it fails ({} of {}), pairs from it answer",
                self.failed_in, self.probed_in
            ),
        };
        if !self.or_else.is_empty() {
            text.push_str(&format!(
                "; the same failures fit {} as well, and the matrix cannot tell which end is at fault",
                self.or_else.join(", ")
            ));
        }
        text
    }

    /// Whether this node's fault accounts for the failed pair `from → to`.
    fn explains(&self, from: &str, to: &str) -> bool {
        let sends = matches!(self.fault, Fault::BothWays | Fault::CannotSend);
        let receives = matches!(self.fault, Fault::BothWays | Fault::CannotBeReached);
        (sends && self.node == from) || (receives && self.node == to)
    }
}

/// What the whole matrix says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MeshAttribution {
    /// In inventory order.
    pub implicated: Vec<Implicated>,
    /// Groups that reach each other inside and not across; empty unless the mesh is
    /// split so. No single node is to blame then.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partition: Vec<Vec<String>>,
    /// Failed node pairs (from, to) that no implicated node accounts for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unexplained: Vec<(String, String)>,
}

impl MeshAttribution {
    pub fn implicated(&self, node: &str) -> Option<&Implicated> {
        self.implicated.iter().find(|i| i.node == node)
    }

    /// The implicated node that accounts for the failed pair, if any.
    pub fn explained_by(&self, from: &str, to: &str) -> Option<&Implicated> {
        self.implicated.iter().find(|i| i.explains(from, to))
    }

    /// The partition's groups as a reader sees them: `[a, b] | [c, d]`.
    pub fn describe_partition(&self) -> String {
        self.partition
            .iter()
            .map(|group| format!("[{}]", group.join(", ")))
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// One line for the whole mesh: who is at fault, or that nobody is named.
    pub fn summary(&self, nodes: usize) -> Option<String> {
        if !self.partition.is_empty() {
            return Some(format!(
                "the pod network is partitioned into {} groups that reach each other inside and not across: {}",
                self.partition.len(),
                self.describe_partition()
            ));
        }
        let mut parts = Vec::new();
        if nodes > 2 && self.implicated.len() == nodes {
            parts.push(format!(
                "every node is implicated: the fault is not one node's but the whole pod network's ({} nodes)",
                nodes
            ));
        } else {
            parts.extend(
                self.implicated
                    .iter()
                    .map(|i| format!("{}: {}", i.node, i.describe())),
            );
        }
        if !self.unexplained.is_empty() {
            parts.push(format!(
                "{} failed node pair(s) implicate no node: {}",
                self.unexplained.len(),
                self.unexplained
                    .iter()
                    .map(|(from, to)| format!("{from} → {to}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Which way a claim about a node points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Direction {
    Out,
    In,
}

/// "Every pair from (or to) this node failed", with the failed pairs it accounts for.
#[derive(Debug, Clone)]
struct Claim<'a> {
    node: usize,
    direction: Direction,
    covers: BTreeSet<(&'a str, &'a str)>,
}

/// Attributes the failures of a mesh. `nodes` gives the order of the answer; pod pairs
/// are folded to node pairs, a node pair failing if any of its pod pairs failed. A pair
/// that answered only on a retry counts as answered: it is flaky, not broken.
pub fn attribute(nodes: &[String], pairs: &[PairResult]) -> MeshAttribution {
    let mut failed_cell: BTreeMap<(&str, &str), bool> = BTreeMap::new();
    for pair in pairs.iter().filter(|p| p.from_node != p.to_node) {
        *failed_cell
            .entry((pair.from_node.as_str(), pair.to_node.as_str()))
            .or_default() |= !pair.passed;
    }
    let failed: BTreeSet<(&str, &str)> = failed_cell
        .iter()
        .filter(|(_, failed)| **failed)
        .map(|(cell, _)| *cell)
        .collect();
    if failed.is_empty() {
        return MeshAttribution::default();
    }
    if let Some(partition) = partition(nodes, &failed_cell) {
        return MeshAttribution {
            partition,
            ..MeshAttribution::default()
        };
    }
    // A claim stands only where every probed pair on that side of the node failed.
    let mut claims = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        for direction in [Direction::Out, Direction::In] {
            let side: Vec<((&str, &str), bool)> = failed_cell
                .iter()
                .filter(|((from, to), _)| match direction {
                    Direction::Out => from == node,
                    Direction::In => to == node,
                })
                .map(|(cell, failed)| (*cell, *failed))
                .collect();
            if !side.is_empty() && side.iter().all(|(_, failed)| *failed) {
                claims.push(Claim {
                    node: index,
                    direction,
                    covers: side.into_iter().map(|(cell, _)| cell).collect(),
                });
            }
        }
    }
    // A node whose pairs fail on both sides is at fault whatever else is: a healthy
    // node only looks so when every other node fails it, which is a partition (found
    // above) or every node failing.
    let both_ways: BTreeSet<usize> = claims
        .iter()
        .filter(|c| c.direction == Direction::Out)
        .filter(|out| {
            claims
                .iter()
                .any(|c| c.node == out.node && c.direction == Direction::In)
        })
        .map(|c| c.node)
        .collect();
    let mut uncovered = failed.clone();
    for claim in claims.iter().filter(|c| both_ways.contains(&c.node)) {
        for cell in &claim.covers {
            uncovered.remove(cell);
        }
    }
    // Of the one-sided claims, the fewest that account for the rest: greedily the one
    // that accounts for the most, then those a later pick made redundant are dropped.
    let one_sided: Vec<&Claim> = claims
        .iter()
        .filter(|c| !both_ways.contains(&c.node))
        .collect();
    let mut chosen: Vec<Claim> = Vec::new();
    loop {
        let best = one_sided
            .iter()
            .filter(|c| !chosen.iter().any(|k| same_claim(k, c)))
            .max_by_key(|c| {
                (
                    c.covers.intersection(&uncovered).count(),
                    std::cmp::Reverse((c.node, c.direction)),
                )
            });
        match best {
            Some(claim) if claim.covers.intersection(&uncovered).next().is_some() => {
                for cell in &claim.covers {
                    uncovered.remove(cell);
                }
                chosen.push((*claim).clone());
            }
            _ => break,
        }
    }
    let settled: BTreeSet<(&str, &str)> = claims
        .iter()
        .filter(|c| both_ways.contains(&c.node))
        .flat_map(|c| c.covers.iter().copied())
        .collect();
    let mut index = chosen.len();
    while index > 0 {
        index -= 1;
        let others: BTreeSet<(&str, &str)> = chosen
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .flat_map(|(_, c)| c.covers.iter().copied())
            .chain(settled.iter().copied())
            .collect();
        if chosen[index].covers.is_subset(&others) {
            chosen.remove(index);
        }
    }
    // A one-sided claim that accounts for exactly the same pairs as a chosen one is as
    // likely: a pair failing one way between two nodes fits either end.
    let alternatives: Vec<(usize, Claim)> = chosen
        .iter()
        .enumerate()
        .flat_map(|(i, kept)| {
            one_sided
                .iter()
                .filter(move |c| !same_claim(c, kept) && c.covers == kept.covers)
                .map(move |c| (i, (*c).clone()))
        })
        .filter(|(_, c)| !chosen.iter().any(|k| same_claim(k, c)))
        .collect();
    let mut blamed: BTreeMap<usize, (BTreeSet<Direction>, BTreeSet<usize>)> = BTreeMap::new();
    for node in &both_ways {
        blamed
            .entry(*node)
            .or_default()
            .0
            .extend([Direction::Out, Direction::In]);
    }
    for claim in &chosen {
        blamed
            .entry(claim.node)
            .or_default()
            .0
            .insert(claim.direction);
    }
    for (kept, alternative) in &alternatives {
        let kept_node = chosen[*kept].node;
        let entry = blamed.entry(alternative.node).or_default();
        entry.0.insert(alternative.direction);
        entry.1.insert(kept_node);
        blamed
            .entry(kept_node)
            .or_default()
            .1
            .insert(alternative.node);
    }
    let count = |node: &str, direction: Direction| {
        let side = failed_cell
            .iter()
            .filter(|((from, to), _)| match direction {
                Direction::Out => *from == node,
                Direction::In => *to == node,
            });
        let (probed, failed) =
            side.fold((0, 0), |(p, f), (_, failed)| (p + 1, f + *failed as usize));
        (failed, probed)
    };
    let implicated: Vec<Implicated> = blamed
        .into_iter()
        .map(|(index, (directions, or_else))| {
            let node = nodes[index].as_str();
            let (failed_out, probed_out) = count(node, Direction::Out);
            let (failed_in, probed_in) = count(node, Direction::In);
            let fault = match (
                directions.contains(&Direction::Out),
                directions.contains(&Direction::In),
            ) {
                (true, true) => Fault::BothWays,
                (true, false) => Fault::CannotSend,
                _ => Fault::CannotBeReached,
            };
            Implicated {
                node: node.to_string(),
                fault,
                failed_out,
                probed_out,
                failed_in,
                probed_in,
                or_else: or_else
                    .into_iter()
                    .filter(|other| *other != index)
                    .map(|other| nodes[other].clone())
                    .collect(),
            }
        })
        .collect();
    let attribution = MeshAttribution {
        implicated,
        partition: Vec::new(),
        unexplained: Vec::new(),
    };
    let unexplained = failed
        .iter()
        .filter(|(from, to)| attribution.explained_by(from, to).is_none())
        .map(|(from, to)| (from.to_string(), to.to_string()))
        .collect();
    MeshAttribution {
        unexplained,
        ..attribution
    }
}

fn same_claim(a: &Claim, b: &Claim) -> bool {
    a.node == b.node && a.direction == b.direction
}

/// Groups that answer each other both ways inside and fail every pair across, at least
/// two of them with more than one node. (One node cut off from a connected rest is a
/// node at fault, not a partition: the claims name it.)
fn partition(nodes: &[String], cells: &BTreeMap<(&str, &str), bool>) -> Option<Vec<Vec<String>>> {
    let present: Vec<&str> = nodes
        .iter()
        .map(String::as_str)
        .filter(|node| cells.keys().any(|(from, to)| from == node || to == node))
        .collect();
    let position = |node: &str| present.iter().position(|n| *n == node);
    let mut group: Vec<usize> = (0..present.len()).collect();
    fn root(group: &mut [usize], mut i: usize) -> usize {
        while group[i] != i {
            group[i] = group[group[i]];
            i = group[i];
        }
        i
    }
    for (&(from, to), &failed) in cells {
        let back_failed = cells.get(&(to, from)).copied().unwrap_or(true);
        if failed || back_failed {
            continue;
        }
        if let (Some(a), Some(b)) = (position(from), position(to)) {
            let (a, b) = (root(&mut group, a), root(&mut group, b));
            group[a] = b;
        }
    }
    let mut groups: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (i, node) in present.iter().enumerate() {
        let r = root(&mut group, i);
        groups.entry(r).or_default().push(node.to_string());
    }
    let groups: Vec<Vec<String>> = groups.into_values().collect();
    if groups.iter().filter(|g| g.len() > 1).count() < 2 {
        return None;
    }
    let group_of = |node: &str| groups.iter().position(|g| g.iter().any(|n| n == node));
    let clean = cells
        .iter()
        .all(|((from, to), failed)| *failed == (group_of(from) != group_of(to)));
    clean.then(|| {
        let mut groups = groups;
        groups.sort_by_key(|g| nodes.iter().position(|n| *n == g[0]));
        groups
    })
}

/// `pod_mesh` for one node: only a node the matrix implicates (or one in a partition,
/// where no single node can be blamed) fails for the pairs the attribution accounts
/// for. A healthy node whose only failed pairs are to or from an implicated node passes,
/// its evidence naming the peer and the node whose case says why. Failures that no
/// implicated node accounts for fail the sending node, as they always did.
pub fn judge_pod_mesh(
    node: &str,
    outcomes: &[ProbeOutcome],
    attribution: &MeshAttribution,
) -> Judgement {
    let failed: Vec<&ProbeOutcome> = outcomes.iter().filter(|o| !o.succeeded()).collect();
    let pair_text = |o: &ProbeOutcome| format!("{} → {}: {}", o.from_node, o.to_node, o.observed());
    let listing = |pairs: &[&ProbeOutcome]| {
        pairs
            .iter()
            .map(|o| pair_text(o))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let failed_evidence =
        |o: &ProbeOutcome| Evidence::new(o.label(), o.observed(), "HTTP 2xx or 3xx");
    if !attribution.partition.is_empty() && !failed.is_empty() {
        return (
            Verdict::Failed(format!(
                "the pod network is partitioned into groups that reach each other inside and not across ({}); {} of {} pairs from {node} failed: {}",
                attribution.describe_partition(),
                failed.len(),
                outcomes.len(),
                listing(&failed)
            )),
            failed.iter().map(|o| failed_evidence(o)).collect(),
        );
    }
    if let Some(implicated) = attribution.implicated(node) {
        return (
            Verdict::Failed(format!(
                "{node} is the node at fault: {}{}",
                implicated.describe(),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!("; from it: {}", listing(&failed))
                }
            )),
            failed.iter().map(|o| failed_evidence(o)).collect(),
        );
    }
    let (explained, unexplained): (Vec<&ProbeOutcome>, Vec<&ProbeOutcome>) = failed
        .iter()
        .partition(|o| attribution.explained_by(&o.from_node, &o.to_node).is_some());
    let explained_evidence = explained.iter().map(|o| {
        let culprit = attribution
            .explained_by(&o.from_node, &o.to_node)
            .map_or("", |i| i.node.as_str());
        Evidence::new(
            o.label(),
            o.observed(),
            format!("HTTP 2xx or 3xx; accounted for by {culprit}, the node at fault: see {culprit}'s pod_mesh"),
        )
    });
    if unexplained.is_empty() {
        return (Verdict::Passed, explained_evidence.collect());
    }
    let mut message = format!(
        "{} of {} pairs from {node} failed, and no node's fault accounts for them: {}",
        unexplained.len(),
        outcomes.len(),
        listing(&unexplained)
    );
    if !explained.is_empty() {
        message.push_str(&format!(
            " ({} more failed to a node at fault: {})",
            explained.len(),
            listing(&explained)
        ));
    }
    (
        Verdict::Failed(message),
        unexplained
            .iter()
            .map(|o| failed_evidence(o))
            .chain(explained_evidence)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("n{i:02}")).collect()
    }

    /// Every ordered pair of `nodes`, failing where `fails` says.
    fn matrix(nodes: &[String], fails: impl Fn(usize, usize) -> bool) -> Vec<PairResult> {
        let mut pairs = Vec::new();
        for (i, from) in nodes.iter().enumerate() {
            for (j, to) in nodes.iter().enumerate().filter(|(j, _)| *j != i) {
                let failed = fails(i, j);
                pairs.push(PairResult {
                    from_node: from.clone(),
                    from_pod: format!("pf-{from}"),
                    to_node: to.clone(),
                    to_pod: format!("pf-{to}"),
                    passed: !failed,
                    observed: if failed {
                        "curl: (28) Connection timed out".into()
                    } else {
                        "HTTP 200".into()
                    },
                    attempts: if failed { 2 } else { 1 },
                    earlier_failures: Vec::new(),
                });
            }
        }
        pairs
    }

    fn blamed(attribution: &MeshAttribution) -> Vec<(usize, Fault)> {
        attribution
            .implicated
            .iter()
            .map(|i| (i.node[1..].parse().unwrap(), i.fault))
            .collect()
    }

    #[rstest]
    fn a_healthy_mesh_blames_nobody(#[values(2, 3, 5, 17, 64)] size: usize) {
        let nodes = names(size);
        let attribution = attribute(&nodes, &matrix(&nodes, |_, _| false));
        assert_eq!(attribution, MeshAttribution::default());
        assert_eq!(attribution.summary(size), None);
    }

    #[rstest]
    fn one_node_failing_both_ways_is_the_one_named(#[values(3, 4, 5, 16, 50, 64)] size: usize) {
        let nodes = names(size);
        let broken = size / 2;
        let attribution = attribute(&nodes, &matrix(&nodes, |i, j| i == broken || j == broken));
        assert_eq!(blamed(&attribution), vec![(broken, Fault::BothWays)]);
        assert!(attribution.unexplained.is_empty() && attribution.partition.is_empty());
        let implicated = &attribution.implicated[0];
        assert_eq!(
            (
                implicated.failed_out,
                implicated.probed_out,
                implicated.failed_in,
                implicated.probed_in
            ),
            (size - 1, size - 1, size - 1, size - 1)
        );
        let summary = attribution.summary(size).unwrap();
        assert!(
            summary.starts_with(&format!(
                "{}: every pair to and from it fails",
                nodes[broken]
            )),
            "{summary}"
        );
    }

    #[rstest]
    fn a_node_that_fails_one_way_is_named_with_its_direction(#[values(3, 5, 20, 64)] size: usize) {
        let nodes = names(size);
        let mute = attribute(&nodes, &matrix(&nodes, |i, _| i == 1));
        assert_eq!(blamed(&mute), vec![(1, Fault::CannotSend)]);
        assert!(mute.implicated[0].describe().contains("cannot send"));
        let deaf = attribute(&nodes, &matrix(&nodes, |_, j| j == size - 1));
        assert_eq!(blamed(&deaf), vec![(size - 1, Fault::CannotBeReached)]);
        assert!(deaf.implicated[0].describe().contains("cannot be reached"));
        assert!(mute.unexplained.is_empty() && deaf.unexplained.is_empty());
    }

    #[rstest]
    fn several_broken_nodes_are_each_named(#[values(4, 5, 12, 64)] size: usize) {
        let nodes = names(size);
        let broken = [0, size - 1];
        let attribution = attribute(
            &nodes,
            &matrix(&nodes, |i, j| broken.contains(&i) || broken.contains(&j)),
        );
        assert_eq!(
            blamed(&attribution),
            vec![(0, Fault::BothWays), (size - 1, Fault::BothWays)]
        );
        assert!(attribution.unexplained.is_empty());
    }

    #[test]
    fn two_unreachable_nodes_do_not_make_the_third_a_node_that_cannot_send() {
        // n02 reaches neither n00 nor n01 only because neither can be reached: a greedy
        // pick of "n02 cannot send" first must be undone.
        let nodes = vec!["n02".to_string(), "n00".into(), "n01".into()];
        let pairs = matrix(&nodes, |_, j| j == 1 || j == 2);
        let attribution = attribute(&nodes, &pairs);
        let named: Vec<(&str, Fault)> = attribution
            .implicated
            .iter()
            .map(|i| (i.node.as_str(), i.fault))
            .collect();
        assert_eq!(
            named,
            vec![
                ("n00", Fault::CannotBeReached),
                ("n01", Fault::CannotBeReached)
            ]
        );
    }

    #[rstest]
    #[case::halves(6, 3)]
    #[case::uneven(7, 2)]
    #[case::large(64, 20)]
    fn a_partition_names_its_groups_and_no_node(#[case] size: usize, #[case] split: usize) {
        let nodes = names(size);
        let side = |i: usize| i < split;
        let attribution = attribute(&nodes, &matrix(&nodes, |i, j| side(i) != side(j)));
        assert!(attribution.implicated.is_empty(), "{attribution:?}");
        assert_eq!(attribution.partition.len(), 2);
        assert_eq!(attribution.partition[0], nodes[..split].to_vec());
        assert_eq!(attribution.partition[1], nodes[split..].to_vec());
        assert!(attribution
            .summary(size)
            .unwrap()
            .contains("partitioned into 2 groups"));
    }

    #[rstest]
    fn scattered_failures_implicate_no_node(#[values(4, 5, 30, 64)] size: usize) {
        let nodes = names(size);
        let scattered = [(0, 1), (2, 3)];
        let attribution = attribute(&nodes, &matrix(&nodes, |i, j| scattered.contains(&(i, j))));
        assert!(attribution.implicated.is_empty() && attribution.partition.is_empty());
        assert_eq!(
            attribution.unexplained,
            vec![
                (nodes[0].clone(), nodes[1].clone()),
                (nodes[2].clone(), nodes[3].clone())
            ]
        );
        assert!(attribution
            .summary(size)
            .unwrap()
            .contains("implicate no node"));
    }

    #[test]
    fn a_broken_node_and_a_scattered_failure_are_told_apart() {
        let nodes = names(6);
        let attribution = attribute(
            &nodes,
            &matrix(&nodes, |i, j| i == 5 || j == 5 || (i, j) == (0, 1)),
        );
        assert_eq!(blamed(&attribution), vec![(5, Fault::BothWays)]);
        assert_eq!(attribution.unexplained, vec![("n00".into(), "n01".into())]);
    }

    #[test]
    fn two_nodes_that_fail_each_other_are_both_named_since_either_could_be_at_fault() {
        let nodes = names(2);
        let both = attribute(&nodes, &matrix(&nodes, |_, _| true));
        assert_eq!(
            blamed(&both),
            vec![(0, Fault::BothWays), (1, Fault::BothWays)]
        );
        let one_way = attribute(&nodes, &matrix(&nodes, |i, _| i == 0));
        assert_eq!(
            blamed(&one_way),
            vec![(0, Fault::CannotSend), (1, Fault::CannotBeReached)]
        );
        assert_eq!(one_way.implicated[0].or_else, vec!["n01".to_string()]);
        assert!(one_way.implicated[1]
            .describe()
            .contains("cannot tell which end"));
    }

    #[test]
    fn everything_failing_says_the_fault_is_not_one_nodes() {
        let nodes = names(5);
        let attribution = attribute(&nodes, &matrix(&nodes, |_, _| true));
        assert_eq!(attribution.implicated.len(), 5);
        assert!(attribution
            .summary(5)
            .unwrap()
            .starts_with("every node is implicated"));
    }

    #[test]
    fn a_pair_that_answered_on_a_retry_is_not_a_failure() {
        let nodes = names(4);
        let mut pairs = matrix(&nodes, |_, _| false);
        for pair in pairs.iter_mut().filter(|p| p.to_node == "n02") {
            pair.earlier_failures = vec!["curl: (28) Connection timed out".into()];
            pair.attempts = 2;
        }
        assert_eq!(attribute(&nodes, &pairs), MeshAttribution::default());
    }

    #[test]
    fn ipv6_addresses_and_pod_names_do_not_change_the_answer() {
        let nodes = names(5);
        let mut pairs = matrix(&nodes, |i, j| i == 3 || j == 3);
        for pair in &mut pairs {
            pair.observed = "curl: (7) Failed to connect to fd00:198:19::3 port 8080".into();
            pair.to_pod = format!("[fd00::{}]:8080", pair.to_node);
        }
        assert_eq!(
            blamed(&attribute(&nodes, &pairs)),
            vec![(3, Fault::BothWays)]
        );
    }

    #[test]
    fn unprobed_pairs_count_on_neither_side() {
        // n03's probe pod never started: no pair to or from it exists.
        let nodes = names(5);
        let pairs: Vec<PairResult> = matrix(&nodes, |i, j| i == 1 || j == 1)
            .into_iter()
            .filter(|p| p.from_node != "n03" && p.to_node != "n03")
            .collect();
        let attribution = attribute(&nodes, &pairs);
        assert_eq!(blamed(&attribution), vec![(1, Fault::BothWays)]);
        assert_eq!(attribution.implicated[0].probed_out, 3);
    }

    fn outcome(from: &str, to: &str, ok: bool) -> ProbeOutcome {
        ProbeOutcome {
            from_node: from.into(),
            from_pod: format!("pf-{from}"),
            to_node: to.into(),
            to_pod: format!("pf-{to}"),
            url: format!("http://{to}:8080/"),
            result: if ok {
                Ok(200)
            } else {
                Err("curl: (7) Failed to connect".into())
            },
            attempts: if ok { 1 } else { 2 },
            earlier_failures: Vec::new(),
        }
    }

    #[test]
    fn only_the_node_at_fault_fails_and_its_peers_point_at_it() {
        let nodes = names(3);
        let attribution = attribute(&nodes, &matrix(&nodes, |i, j| i == 2 || j == 2));
        let (verdict, evidence) = judge_pod_mesh(
            "n00",
            &[outcome("n00", "n01", true), outcome("n00", "n02", false)],
            &attribution,
        );
        assert_eq!(verdict, Verdict::Passed);
        assert_eq!(evidence.len(), 1);
        assert!(
            evidence[0].what.contains("n02") && evidence[0].expected.contains("see n02's pod_mesh")
        );
        let (verdict, _) = judge_pod_mesh(
            "n02",
            &[outcome("n02", "n00", false), outcome("n02", "n01", false)],
            &attribution,
        );
        let Verdict::Failed(message) = verdict else {
            panic!("{verdict:?}")
        };
        assert!(
            message.starts_with("n02 is the node at fault: every pair to and from it fails"),
            "{message}"
        );
        assert!(message.contains("n02 → n00: curl: (7)"), "{message}");
    }

    #[test]
    fn a_failure_no_fault_accounts_for_still_fails_its_sender() {
        let nodes = names(4);
        let attribution = attribute(&nodes, &matrix(&nodes, |i, j| (i, j) == (0, 1)));
        let (verdict, evidence) = judge_pod_mesh(
            "n00",
            &[outcome("n00", "n01", false), outcome("n00", "n02", true)],
            &attribution,
        );
        let Verdict::Failed(message) = verdict else {
            panic!("{verdict:?}")
        };
        assert!(
            message.contains("no node's fault accounts for them"),
            "{message}"
        );
        assert_eq!(evidence.len(), 1);
        assert_eq!(
            judge_pod_mesh("n01", &[outcome("n01", "n00", true)], &attribution).0,
            Verdict::Passed
        );
    }

    #[test]
    fn in_a_partition_every_node_with_failed_pairs_fails() {
        let nodes = names(4);
        let attribution = attribute(&nodes, &matrix(&nodes, |i, j| (i < 2) != (j < 2)));
        let (verdict, _) = judge_pod_mesh(
            "n00",
            &[outcome("n00", "n01", true), outcome("n00", "n02", false)],
            &attribution,
        );
        let Verdict::Failed(message) = verdict else {
            panic!("{verdict:?}")
        };
        assert!(message.contains("[n00, n01] | [n02, n03]"), "{message}");
    }
}
