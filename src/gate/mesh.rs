//! `mesh`: every ordered pair of probe pods across the inventory's nodes, without
//! rebooting anything, for the nightly run. One probe pod per node; one exec per source
//! pod runs a client that reaches every target at once (curl `--parallel`), so the cost
//! grows with the number of nodes in execs and only the pairs grow with its square.
//! A pair that fails is tried once more in a second exec; one that then answers is
//! flaky, not green.
//!
//! The matrix then says who is at fault (`checks::attribute`): only a node it implicates
//! fails `pod_mesh`, and each such node is read as `diagnose` reads it — calico-node,
//! the run directory and tmpfiles.d, routes and BGP, one round trip to the node — so
//! the nightly report carries the root cause and the fix, not one failure per node.

use super::*;
use crate::checks::MeshAttribution;

/// Checks every ordered pair of nodes' probe pods. Returns one report per node of the
/// inventory, in its order; the probe pods are deleted on every exit.
pub async fn mesh(
    inventory: &Inventory,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Vec<NodeReport> {
    let started_at = Timestamp::now();
    let nodes = inventory.node_names();
    let run_id = new_run_id();
    // The run's steps are shared by every node: one recorder times them.
    let run = Recorder::new("mesh", progress, &[]);
    let began = Instant::now();
    run.identify(|identity| identity.run_id = run_id.clone());
    let mut cluster_used = None;
    let outcome = tokio::select! {
        outcome = mesh_steps(inventory, &run, progress, began, &run_id, &nodes, &mut cluster_used) => outcome,
        () = cancel.cancelled() => Err(Unobserved::new(ErrorKind::Interrupted, "the run was interrupted")),
    };
    if let Some(cluster) = &cluster_used {
        let namespace = &inventory.probe.namespace;
        let runs = [run_id.as_str()];
        let cleanup = tokio::time::timeout(
            CLEANUP_TIMEOUT,
            verify::while_unreachable(cluster, || {
                cluster.delete_probes(namespace, &runs, nodes.len())
            }),
        );
        match run.timed("delete probe pods", cleanup).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => run.note(format!(
                "probe pods of run {run_id} were not deleted: {error}"
            )),
            Err(_) => run.note(format!(
                "probe pods were not deleted within {CLEANUP_TIMEOUT:?}: `kubectl -n {namespace} delete pod -l {}={run_id}`",
                cluster::probes::RUN_LABEL
            )),
        }
    }
    let shared = run.into_report(false, started_at, None);
    let mut reports: Vec<NodeReport> = nodes
        .iter()
        .map(|node| {
            let mut report = NodeReport {
                node: node.clone(),
                interrupted: cancel.is_cancelled(),
                ..shared.clone()
            };
            let result = match &outcome {
                Ok(found) => {
                    let reading = found.readings.iter().find(|r| r.node == *node);
                    if let Some(reading) = reading {
                        report.steps.extend(reading.steps.iter().cloned());
                    }
                    judge_node(node, found, reading)
                }
                Err(why) => CheckResult::unobserved(CheckName::PodMesh, node, why, Duration::ZERO),
            };
            report.results = vec![result.bounded()];
            report
        })
        .collect();
    let shells_used = outcome.as_ref().is_ok_and(|found| {
        found.readings.iter().any(|reading| {
            inventory.node(&reading.node).is_some_and(|entry| {
                inventory.transport_of(entry) == crate::inventory::TransportKind::NodeShell
            })
        })
    });
    if let Some(cluster) = cluster_used.as_ref().filter(|_| shells_used) {
        super::drift::delete_node_shells(cluster, inventory, &run_id, &mut reports).await;
    }
    reports
}

/// What the mesh found: the fleet, and per source pod its pairs or why its client
/// could not run.
struct MeshFound {
    fleet: ProbeFleet,
    sources: Vec<(ReadyProbe, Result<Vec<ProbeOutcome>, String>)>,
    took: Duration,
    attribution: MeshAttribution,
    /// What was read of each implicated node.
    readings: Vec<Reading>,
}

/// An implicated node read as `diagnose` reads it: its checks (failed ones carrying the
/// known root cause) and the steps, placed on the mesh run's timeline.
struct Reading {
    node: String,
    /// How an engineer reaches the node, for the fix commands.
    shell: NodeShell,
    results: Vec<CheckResult>,
    steps: Vec<StepTiming>,
}

/// More implicated nodes than this are no longer one node's fault: reading each would
/// cost a round trip per node for a picture the matrix already gives.
const MAX_NODES_READ: usize = 8;

async fn mesh_steps(
    inventory: &Inventory,
    run: &Recorder<'_>,
    progress: &dyn Progress,
    began: Instant,
    run_id: &str,
    nodes: &[String],
    cluster_used: &mut Option<Cluster>,
) -> Result<MeshFound, Unobserved> {
    let cluster = run
        .timed("connect to the API server", connect(inventory))
        .await
        .map_err(|e| Unobserved::new(e.kind(), e.to_string()))?;
    run.identify(|identity| verify::identify_cluster(identity, &cluster));
    run.timed("reach the API server", cluster.ping())
        .await
        .map_err(|e| Unobserved::from(&e))?;
    let accesses = crate::rbac::required(inventory, &[crate::rbac::Need::Verify]);
    let missing = run
        .timed(
            "check postflight's permissions",
            cluster.missing_access(&accesses),
        )
        .await
        .map_err(|e| Unobserved::from(&e))?;
    if !missing.is_empty() {
        return Err(Unobserved::new(
            ErrorKind::Forbidden,
            verify::missing_permissions(&missing),
        ));
    }
    // From here on the run may have made probe pods: cleanup deletes them.
    *cluster_used = Some(cluster.clone());
    let plan = ProbePlan {
        run_id: run_id.to_string(),
        node: String::new(),
        requests: nodes
            .iter()
            .map(|node| ProbeRequest {
                name: probe_pod_name(run_id, node, 0),
                node: node.clone(),
            })
            .collect(),
        new_run: true,
        stale: Vec::new(),
    };
    let fleet = run
        .timed("start probe pods", start_probes(&cluster, inventory, &plan))
        .await?;
    let started = Instant::now();
    let sources = run
        .timed(
            crate::report::MESH_STEP,
            probe_every_pair(&cluster, inventory, &fleet),
        )
        .await;
    let took = started.elapsed();
    let pairs: Vec<crate::checks::PairResult> = sources
        .iter()
        .filter_map(|(_, outcomes)| outcomes.as_ref().ok())
        .flatten()
        .map(ProbeOutcome::pair_result)
        .collect();
    let attribution = crate::checks::attribute(nodes, &pairs);
    let readings = if attribution.implicated.is_empty() {
        Vec::new()
    } else if attribution.implicated.len() > MAX_NODES_READ {
        run.note(format!(
            "{} nodes are implicated, more than the {MAX_NODES_READ} mesh reads: none was read; `postflight diagnose NODE` reads one",
            attribution.implicated.len()
        ));
        Vec::new()
    } else {
        let read = attribution.implicated.iter().map(|implicated| {
            read_implicated(
                inventory,
                &cluster,
                &implicated.node,
                run_id,
                progress,
                began,
            )
        });
        run.timed("read the implicated nodes", futures::future::join_all(read))
            .await
    };
    Ok(MeshFound {
        fleet,
        sources,
        took,
        attribution,
        readings,
    })
}

/// Reads one implicated node as `diagnose` does.
async fn read_implicated(
    inventory: &Inventory,
    cluster: &Cluster,
    node: &str,
    run_id: &str,
    progress: &dyn Progress,
    began: Instant,
) -> Reading {
    let offset = began.elapsed();
    let recorder = Recorder::new(node, progress, &super::node_diagnosis::DIAGNOSE_CHECKS);
    super::node_diagnosis::examine(inventory, node, &recorder, run_id, Ok(cluster)).await;
    let (results, mut steps) = recorder.into_parts();
    for step in &mut steps {
        step.started_after += offset;
    }
    let entry = inventory.node(node).expect("the node is in the inventory");
    Reading {
        node: node.to_string(),
        shell: fix_shell(inventory, entry),
        results,
        steps,
    }
}

/// Every ordered pair of ready probe pods on different nodes, each tried at most twice:
/// a lost SYN is not a broken path, and a pair that needed the second try is flaky.
async fn probe_every_pair(
    cluster: &Cluster,
    inventory: &Inventory,
    fleet: &ProbeFleet,
) -> Vec<(ReadyProbe, Result<Vec<ProbeOutcome>, String>)> {
    let pairs: Vec<connectivity::Pair> = fleet
        .ready
        .iter()
        .flat_map(|from| {
            fleet
                .ready
                .iter()
                .filter(move |to| to.node != from.node)
                .map(move |to| connectivity::Pair {
                    from: from.clone(),
                    to: to.clone(),
                    same_node: false,
                })
        })
        .collect();
    let tries = connectivity::Tries {
        attempts: 2,
        deadline: Instant::now() + inventory.timeouts.connectivity,
        connect_timeout: PROBE_CONNECT_TIMEOUT,
    };
    let runs =
        connectivity::probe_until_settled(cluster, inventory, &fleet.namespace, pairs, tries).await;
    fleet
        .ready
        .iter()
        .map(|source| {
            let mut outcomes = Vec::new();
            let mut could_not_run = None;
            for (pair, run) in runs
                .iter()
                .filter(|(pair, _)| pair.from.name == source.name)
            {
                match run {
                    connectivity::ProbeRun::Ran(outcome) => outcomes.push(outcome.clone()),
                    connectivity::ProbeRun::CouldNotRun(why) => {
                        could_not_run =
                            Some(format!("{} → {}: {why}", pair.from.name, pair.to.name));
                    }
                }
            }
            // Inventory order of the targets, so reports read the same from night to night.
            outcomes.sort_by_key(|o| fleet.ready.iter().position(|p| p.name == o.to_pod));
            let result = match could_not_run {
                Some(why) => Err(why),
                None => Ok(outcomes),
            };
            (source.clone(), result)
        })
        .collect()
}

fn judge_node(node: &str, found: &MeshFound, reading: Option<&Reading>) -> CheckResult {
    let took = found.took;
    if let Some((_, why)) = found.fleet.broken.iter().find(|(r, _)| r.node == node) {
        return CheckResult::error(
            CheckName::PodMesh,
            node,
            ErrorKind::Error,
            format!("the probe pod on {node} could not start: {why}"),
            took,
        );
    }
    let Some((_, outcome)) = found.sources.iter().find(|(s, _)| s.node == node) else {
        return CheckResult::error(
            CheckName::PodMesh,
            node,
            ErrorKind::Error,
            format!("{node} had no probe pod to probe from"),
            took,
        );
    };
    let outcomes = match outcome {
        Ok(outcomes) => outcomes,
        Err(why) => {
            return CheckResult::error(
                CheckName::PodMesh,
                node,
                ErrorKind::Error,
                format!("the mesh client could not run on {node}: {why}"),
                took,
            )
        }
    };
    let unprobed: Vec<String> = found
        .fleet
        .broken
        .iter()
        .map(|(request, why)| {
            format!(
                "{node} → {}: its probe pod could not start: {why}",
                request.node
            )
        })
        .collect();
    let (verdict, evidence) = crate::checks::judge_pod_mesh(node, outcomes, &found.attribution);
    let verdict = match verdict {
        Verdict::Passed if !unprobed.is_empty() => Verdict::Error(format!(
            "{} pairs from {node} could not be probed: {}",
            unprobed.len(),
            unprobed.join("; ")
        )),
        verdict => verdict,
    };
    let mut result = CheckResult::new(CheckName::PodMesh, node, verdict, evidence, took);
    if matches!(result.verdict, Verdict::Error(_)) {
        result.error_kind = Some(ErrorKind::Error);
    }
    result.pairs = outcomes.iter().map(ProbeOutcome::pair_result).collect();
    result.flaky = crate::checks::flaky_pairs(outcomes);
    if let Some(implicated) = found.attribution.implicated(node) {
        let (details, diagnosis, state) = match reading {
            Some(reading) => what_was_read(reading, implicated),
            None => (Vec::new(), None, None),
        };
        let mut summary = format!("{node}: {}", implicated.describe());
        if let Some(state) = state {
            summary.push_str(&format!("; {state}"));
        }
        if let Some(diagnosis) = &diagnosis {
            summary.push_str(&format!("; root cause: {}", diagnosis.root_cause));
        }
        result.details = details;
        result.diagnosis = diagnosis;
        result.implicated = Some(crate::checks::Implication {
            matrix: implicated.clone(),
            summary,
        });
    }
    result
}

/// From what was read of an implicated node: a line per check for the details, the
/// root cause (a known signature, or else the datapath when calico-node and BGP are
/// fine), and calico-node's state in a few words.
fn what_was_read(
    reading: &Reading,
    implicated: &crate::checks::Implicated,
) -> (
    Vec<String>,
    Option<crate::checks::Diagnosis>,
    Option<String>,
) {
    let of = |name: CheckName| reading.results.iter().find(|r| r.name == name);
    let mut details = vec![format!("what was read of {}:", reading.node)];
    for result in &reading.results {
        let verdict = match &result.verdict {
            Verdict::Passed => "passed".to_string(),
            Verdict::Failed(m) => format!("failed: {m}"),
            Verdict::Error(m) => format!("could not run: {m}"),
            Verdict::Skipped(m) => format!("skipped: {m}"),
        };
        details.push(format!("{}: {verdict}", result.name));
        details.extend(result.evidence.iter().map(|e| {
            format!(
                "  {}: observed {} | expected {}",
                e.what, e.observed, e.expected
            )
        }));
    }
    let failing = |name: CheckName| {
        of(name).and_then(|r| match &r.verdict {
            Verdict::Failed(m) => Some(m.clone()),
            _ => None,
        })
    };
    let calico_ready = of(CheckName::CalicoNodeReady).is_some_and(|r| r.verdict == Verdict::Passed);
    let state = failing(CheckName::CalicoNodeNotCrashlooping)
        .or_else(|| failing(CheckName::CalicoNodeReady))
        .or_else(|| calico_ready.then(|| "calico-node Ready".to_string()));
    let known = reading.results.iter().find_map(|r| r.diagnosis.clone());
    let bgp_established =
        of(CheckName::BgpSessionsEstablished).is_some_and(|r| r.verdict == Verdict::Passed);
    let diagnosis = known.or_else(|| {
        (calico_ready && bgp_established)
            .then(|| diagnose::diagnose_datapath(&reading.node, &reading.shell, implicated))
    });
    (details, diagnosis, state)
}
