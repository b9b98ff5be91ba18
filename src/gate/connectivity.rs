//! Pod-to-pod probes between postflight's own probe pods: same node and across nodes,
//! in both directions, each failure naming its pair and the client's own error.

use super::*;

mod dial_back;

/// The probe pods of one run: two on the node under test (for same-node traffic) and
/// one on every other node.
#[derive(Debug, Clone)]
pub struct ProbePlan {
    pub run_id: String,
    pub node: String,
    pub requests: Vec<ProbeRequest>,
    /// No pod of this run can exist yet (its first batch), so none is looked for before
    /// creating.
    pub new_run: bool,
    /// Containers the node's probe pods ran before its reboot: a pod still showing one
    /// has not been seen back, whatever its Ready condition says.
    pub stale: Vec<String>,
}

impl ProbePlan {
    pub fn new(run_id: &str, node: &str, others: &[String]) -> Self {
        Self::with_pairs(run_id, node, others, &[])
    }

    /// As `new`, with a second pod also on each of `paired` (the nodes a rolling update
    /// will reboot after this one), so that one set serves every gate of the update.
    pub fn with_pairs(run_id: &str, node: &str, others: &[String], paired: &[String]) -> Self {
        let pods_on = |name: &String| {
            if name == node || paired.contains(name) {
                2
            } else {
                1
            }
        };
        let mut requests: Vec<ProbeRequest> = Vec::new();
        for name in std::iter::once(&node.to_string()).chain(others) {
            requests.extend((0..pods_on(name)).map(|index| ProbeRequest {
                name: probe_pod_name(run_id, name, index),
                node: name.clone(),
            }));
        }
        ProbePlan {
            run_id: run_id.into(),
            node: node.into(),
            requests,
            new_run: false,
            stale: Vec::new(),
        }
    }
}

/// Probe pods that one caller keeps across several gates (a rolling update): the first
/// gate's preflight creates them, every later gate reuses them, and the caller deletes
/// them when it ends, on every exit.
#[derive(Debug, Clone)]
pub struct SharedProbes {
    pub run_id: String,
    /// The nodes the caller will reboot: each carries two pods, for same-node probes.
    pub paired_nodes: Vec<String>,
}

/// Creates the probe pods and waits (up to the probe deadline) until each is Ready or
/// cannot start.
///
/// # Errors
/// The probe namespace or pods could not be created or read: the connectivity checks
/// cannot run.
pub async fn start_probes(
    cluster: &Cluster,
    inventory: &Inventory,
    plan: &ProbePlan,
) -> Result<ProbeFleet, Unobserved> {
    let fleet = start_probes_once(cluster, inventory, plan).await?;
    let deleted = fleet
        .broken
        .iter()
        .any(|(_, why)| why == cluster::probes::PROBE_POD_DELETED);
    if !deleted {
        return Ok(fleet);
    }
    // Pods of the set were deleted under the wait, most often with their namespace:
    // once more, from the namespace up, which waits out its deletion.
    cluster.forget_namespace(&inventory.probe.namespace).await;
    start_probes_once(cluster, inventory, plan).await
}

async fn start_probes_once(
    cluster: &Cluster,
    inventory: &Inventory,
    plan: &ProbePlan,
) -> Result<ProbeFleet, Unobserved> {
    let settings = &inventory.probe;
    let namespace = settings.namespace.as_str();
    // One deadline for both: creating may first wait out a namespace that an earlier run
    // left Terminating.
    let probe_ready = inventory.timeouts.probe_ready;
    let deadline = tokio::time::Instant::now() + probe_ready;
    // The namespace first: until an earlier one has finished Terminating, its dying pods
    // may carry this set's names (a rolling update's set outlives any one gate).
    let namespace_ready = tokio::time::timeout_at(deadline, cluster.ensure_namespace(namespace));
    in_time(namespace_ready.await, namespace, probe_ready)?;
    let create = tokio::time::timeout_at(
        deadline,
        cluster.create_probes(settings, &plan.run_id, &plan.requests, plan.new_run),
    );
    let every_name: Vec<String> = plan.requests.iter().map(|r| r.name.clone()).collect();
    // The watch starts with the creations, not after them: its first list holds the few
    // pods made so far rather than all of them (listing 51 finished pods took 0.7 s on a
    // loaded lab), and each pod counts from the moment it is Ready.
    let wait_for_all = tokio::time::timeout_at(
        deadline,
        cluster.wait_for_probes(namespace, &plan.run_id, &every_name, &plan.stale),
    );
    let (refused, waited) =
        match futures::future::select(std::pin::pin!(create), std::pin::pin!(wait_for_all)).await {
            futures::future::Either::Left((created, wait_for_all)) => {
                let refused: Vec<(ProbeRequest, String)> =
                    in_time(created, namespace, probe_ready)?;
                if refused.is_empty() {
                    (refused, wait_for_all.await)
                } else {
                    // A refused pod never appears: the wait starts again for the others.
                    let expected: Vec<String> = not_refused(&plan.requests, &refused)
                        .map(|r| r.name.clone())
                        .collect();
                    let waited = if expected.is_empty() {
                        Ok(Ok(ProbeFleet {
                            namespace: namespace.into(),
                            ..ProbeFleet::default()
                        }))
                    } else {
                        tokio::time::timeout_at(
                            deadline,
                            cluster.wait_for_probes(
                                namespace,
                                &plan.run_id,
                                &expected,
                                &plan.stale,
                            ),
                        )
                        .await
                    };
                    (refused, waited)
                }
            }
            // Every pod was there and settled before the creations ended (a set kept from an
            // earlier gate): the creations still finish, for their refusals.
            futures::future::Either::Right((waited, create)) => {
                (in_time(create.await, namespace, probe_ready)?, waited)
            }
        };
    let created: Vec<ProbeRequest> = not_refused(&plan.requests, &refused).cloned().collect();
    let mut fleet = match waited {
        Ok(fleet) => fleet.map_err(|e| Unobserved::from(&e))?,
        Err(_) => cluster
            .probe_fleet_now(namespace, &plan.run_id, &created, &plan.stale)
            .await
            .map_err(|e| Unobserved::from(&e))?,
    };
    fleet.broken.extend(refused);
    Ok(fleet)
}

/// What came of a step bounded by the probe deadline: a deadline passed is the probe
/// namespace that did not become ready for new pods in time.
fn in_time<T>(
    outcome: Result<Result<T, cluster::ClusterError>, tokio::time::error::Elapsed>,
    namespace: &str,
    probe_ready: Duration,
) -> Result<T, Unobserved> {
    outcome
        .map_err(|_| {
            Unobserved::new(
                ErrorKind::Timeout,
                format!(
                    "the probe namespace {namespace} was not ready for new pods within {}: still Terminating, or deleted and not provisioned again (postflight rbac | kubectl apply -f -)",
                    humantime::format_duration(probe_ready)
                ),
            )
        })?
        .map_err(|e| Unobserved::from(&e))
}

/// The requests the API did not refuse.
fn not_refused<'a>(
    requests: &'a [ProbeRequest],
    refused: &'a [(ProbeRequest, String)],
) -> impl Iterator<Item = &'a ProbeRequest> {
    requests
        .iter()
        .filter(|r| !refused.iter().any(|(refused, _)| refused.name == r.name))
}

/// One directed probe of the plan.
#[derive(Debug, Clone)]
pub(super) struct Pair {
    pub from: ReadyProbe,
    pub to: ReadyProbe,
    pub same_node: bool,
}

impl Pair {
    /// What one attempt at this pair found, after the failures of `earlier` attempts.
    fn outcome(
        &self,
        url: String,
        result: Result<u16, String>,
        earlier: Vec<String>,
    ) -> ProbeOutcome {
        ProbeOutcome {
            from_node: self.from.node.clone(),
            from_pod: self.from.name.clone(),
            to_node: self.to.node.clone(),
            to_pod: self.to.name.clone(),
            url,
            result,
            attempts: earlier.len() as u32 + 1,
            earlier_failures: earlier,
        }
    }
}

/// Runs the same-node and cross-node probes. Failed probes are retried until the
/// connectivity deadline only when calico-node is Ready (routes may still be arriving);
/// when it is not, the first answer is the verdict — waiting cannot fix it.
pub async fn check_connectivity(
    cluster: &Cluster,
    inventory: &Inventory,
    plan: &ProbePlan,
    fleet: Result<ProbeFleet, Unobserved>,
    calico_ready: bool,
) -> (CheckResult, CheckResult) {
    let started = Instant::now();
    let node = plan.node.as_str();
    let fleet = match fleet {
        Ok(fleet) => fleet,
        Err(error) => {
            let message = format!("probe pods could not be created: {error}");
            return (
                CheckResult::error(
                    CheckName::SameNodePodConnectivity,
                    node,
                    error.kind,
                    message.clone(),
                    started.elapsed(),
                ),
                CheckResult::error(
                    CheckName::CrossNodePodConnectivity,
                    node,
                    error.kind,
                    message,
                    started.elapsed(),
                ),
            );
        }
    };
    let local = fleet.on_node(node);
    let broken_text = |name: &str| fleet.why_broken(name).unwrap_or("not Ready").to_string();
    let mut pairs = Vec::new();
    let mut unrunnable: Vec<String> = Vec::new();
    let mut same_unrunnable: Vec<String> = Vec::new();
    match local.as_slice() {
        [a, b, ..] => {
            pairs.push(Pair {
                from: (*a).clone(),
                to: (*b).clone(),
                same_node: true,
            });
            pairs.push(Pair {
                from: (*b).clone(),
                to: (*a).clone(),
                same_node: true,
            });
        }
        _ => {
            for request in plan.requests.iter().filter(|r| r.node == node) {
                if !local.iter().any(|p| p.name == request.name) {
                    same_unrunnable.push(format!(
                        "probe pod {} on {node}: {}",
                        request.name,
                        broken_text(&request.name)
                    ));
                }
            }
        }
    }
    let home = local.first().copied();
    for request in plan.requests.iter().filter(|r| r.node != node) {
        let remote = fleet.ready.iter().find(|p| p.name == request.name);
        match (home, remote) {
            (Some(home), Some(remote)) => {
                pairs.push(Pair {
                    from: home.clone(),
                    to: remote.clone(),
                    same_node: false,
                });
                pairs.push(Pair {
                    from: remote.clone(),
                    to: home.clone(),
                    same_node: false,
                });
            }
            (_, None) => unrunnable.push(format!(
                "probe pod {} on {}: {}",
                request.name,
                request.node,
                broken_text(&request.name)
            )),
            (None, Some(_)) => {}
        }
    }
    if home.is_none() {
        unrunnable.extend(same_unrunnable.iter().cloned());
    }

    // With calico-node Ready, a failed pair may be routes still arriving: it is tried
    // again until the deadline. Without, the first answer is the verdict — waiting cannot
    // fix it — and it comes fast.
    let tries = if calico_ready {
        Tries {
            attempts: u32::MAX,
            deadline: Instant::now() + inventory.timeouts.connectivity,
            connect_timeout: PROBE_CONNECT_TIMEOUT,
        }
    } else {
        Tries {
            attempts: 1,
            deadline: Instant::now(),
            connect_timeout: PROBE_CONNECT_TIMEOUT_WHEN_BROKEN,
        }
    };
    // The dial-back fast path only where the network is expected whole: a broken one
    // would fail the dials too, and only delay the direct probes that name each cut.
    let outcomes = if calico_ready {
        dial_back::probe_with_dial_back(cluster, inventory, &fleet.namespace, pairs, tries).await
    } else {
        probe_until_settled(cluster, inventory, &fleet.namespace, pairs, tries).await
    };
    let (same, cross): (Vec<_>, Vec<_>) =
        outcomes.into_iter().partition(|(pair, _)| pair.same_node);
    let verdict =
        |name: CheckName, what: &str, outcomes: Vec<(Pair, ProbeRun)>, unrunnable: &[String]| {
            let mut ran = Vec::new();
            let mut could_not_run = unrunnable.to_vec();
            for (pair, run) in outcomes {
                match run {
                    ProbeRun::Ran(outcome) => ran.push(outcome),
                    ProbeRun::CouldNotRun(why) => {
                        could_not_run.push(format!("{} → {}: {why}", pair.from.name, pair.to.name))
                    }
                }
            }
            let (mut verdict, evidence) = judge_connectivity(&ran, what);
            let pairs = ran.iter().map(ProbeOutcome::pair_result).collect();
            let flaky = crate::checks::flaky_pairs(&ran);
            if !could_not_run.is_empty() && !matches!(verdict, Verdict::Failed(_)) {
                verdict = Verdict::Error(format!(
                    "{what} probes could not run: {}",
                    could_not_run.join("; ")
                ));
            }
            let probes_missing = matches!(verdict, Verdict::Error(_)) && !could_not_run.is_empty();
            let mut result = CheckResult::new(name, node, verdict, evidence, started.elapsed());
            result.pairs = pairs;
            result.flaky = flaky;
            if probes_missing {
                let settings = &inventory.probe;
                result.diagnosis = diagnose::diagnose_probes(
                    node,
                    &settings.namespace,
                    &settings.image,
                    &could_not_run,
                );
            }
            result.details.extend(
                could_not_run
                    .into_iter()
                    .map(|c| format!("could not run: {c}")),
            );
            result
        };
    (
        verdict(
            CheckName::SameNodePodConnectivity,
            "same-node",
            same,
            &same_unrunnable,
        ),
        verdict(
            CheckName::CrossNodePodConnectivity,
            "cross-node",
            cross,
            &unrunnable,
        ),
    )
}

#[derive(Debug, Clone)]
pub(super) enum ProbeRun {
    Ran(ProbeOutcome),
    /// The exec itself failed (API error): nothing is known about the network.
    CouldNotRun(String),
}

/// How many targets the default probe client reaches at once (`--parallel-max`).
const CLIENT_PARALLELISM: usize = 64;

/// How many times a pair is tried, and for how long.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tries {
    /// Attempts at most (a failed pair is tried again after `PROBE_RETRY_PAUSE`).
    pub attempts: u32,
    /// No attempt starts after this.
    pub deadline: Instant,
    /// The client's connect timeout: short when a fatal signature already says the
    /// network is broken, since a pod-to-pod SYN is answered in well under a millisecond.
    pub connect_timeout: Duration,
}

/// Probes `pairs` until each answers or its tries run out. Each round is one exec per
/// source pod, whose client reaches all of that pod's targets at once: the execs of a
/// round grow with the pods, not with the pairs.
pub(super) async fn probe_until_settled(
    cluster: &Cluster,
    inventory: &Inventory,
    namespace: &str,
    pairs: Vec<Pair>,
    tries: Tries,
) -> Vec<(Pair, ProbeRun)> {
    let pairs = pairs.into_iter().map(|p| (p, Vec::new())).collect();
    probe_until_settled_after(cluster, inventory, namespace, pairs, tries).await
}

/// `probe_until_settled` for pairs that already failed before (each with what it
/// said), so that a pair passing now is reported as having needed a retry.
async fn probe_until_settled_after(
    cluster: &Cluster,
    inventory: &Inventory,
    namespace: &str,
    mut pending: Vec<(Pair, Vec<String>)>,
    tries: Tries,
) -> Vec<(Pair, ProbeRun)> {
    let mut done: Vec<(Pair, ProbeRun)> = Vec::new();
    // The last failure each retried pair saw: if a retry cannot even run, that failure
    // still stands, rather than becoming "could not run".
    let mut last_failure: std::collections::HashMap<(String, String), ProbeOutcome> =
        std::collections::HashMap::new();
    loop {
        let mut by_source: std::collections::BTreeMap<String, Vec<(Pair, Vec<String>)>> =
            std::collections::BTreeMap::new();
        for (pair, earlier) in pending.drain(..) {
            by_source
                .entry(pair.from.name.clone())
                .or_default()
                .push((pair, earlier));
        }
        let round = futures::stream::iter(by_source.into_values())
            .map(|group| {
                probe_from_one_pod(cluster, inventory, namespace, group, tries.connect_timeout)
            })
            .buffer_unordered(PROBE_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        for (pair, run) in round.into_iter().flatten() {
            let key = (pair.from.name.clone(), pair.to.name.clone());
            match run {
                ProbeRun::Ran(outcome)
                    if !outcome.succeeded()
                        && outcome.attempts < tries.attempts
                        && Instant::now() + PROBE_RETRY_PAUSE < tries.deadline =>
                {
                    let mut earlier = outcome.earlier_failures.clone();
                    earlier.push(outcome.observed());
                    last_failure.insert(key, outcome);
                    pending.push((pair, earlier));
                }
                ProbeRun::CouldNotRun(_) if last_failure.contains_key(&key) => {
                    let failed = last_failure.remove(&key).expect("checked");
                    done.push((pair, ProbeRun::Ran(failed)));
                }
                run => done.push((pair, run)),
            }
        }
        if pending.is_empty() {
            return done;
        }
        tokio::time::sleep(PROBE_RETRY_PAUSE).await;
    }
}

pub(super) fn probe_url(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{port}/hostname")
    } else {
        format!("http://{ip}:{port}/hostname")
    }
}

/// One exec in the pairs' common source pod: the client reaching every target at once.
async fn probe_from_one_pod(
    cluster: &Cluster,
    inventory: &Inventory,
    namespace: &str,
    group: Vec<(Pair, Vec<String>)>,
    connect_timeout: Duration,
) -> Vec<(Pair, ProbeRun)> {
    let source = group[0].0.from.name.clone();
    let urls: Vec<String> = group
        .iter()
        .map(|(pair, _)| probe_url(&pair.to.ip, inventory.probe.port))
        .collect();
    let results = match run_client(
        cluster,
        inventory,
        namespace,
        &source,
        &urls,
        connect_timeout,
        PROBE_ATTEMPT_TIMEOUT,
    )
    .await
    {
        Ok(results) => results,
        Err(why) => {
            return group
                .into_iter()
                .map(|(pair, _)| (pair, ProbeRun::CouldNotRun(why.clone())))
                .collect()
        }
    };
    group
        .into_iter()
        .zip(urls)
        .zip(results)
        .map(|(((pair, earlier), url), result)| {
            let result =
                result.unwrap_or_else(|| Err("the client printed no result for it".into()));
            let outcome = pair.outcome(url, result, earlier);
            (pair, ProbeRun::Ran(outcome))
        })
        .collect()
}

/// The client's result for each URL, in order: the HTTP status or its error, `None`
/// for a URL it printed nothing about.
type ClientResults = Vec<Option<Result<u16, String>>>;

/// One exec of the probe client in `source`, reaching every URL at once: one result per
/// URL, in order (`None` for a URL the client printed nothing about), or why the exec
/// told nothing at all.
async fn run_client(
    cluster: &Cluster,
    inventory: &Inventory,
    namespace: &str,
    source: &str,
    urls: &[String],
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<ClientResults, String> {
    let settings = &inventory.probe;
    let argv = client_argv(
        &settings.client_command,
        &settings.client_target,
        urls,
        connect_timeout,
        timeout,
    );
    // The exec gets the client's own limit for each wave of targets it runs at once,
    // plus time for the API server: a pod with a thousand targets is not cut short.
    let waves = urls.len().div_ceil(CLIENT_PARALLELISM).max(1) as u32;
    let exec_deadline = timeout * (waves + 2);
    let exec = tokio::time::timeout(exec_deadline, cluster.exec(namespace, source, &argv));
    let output = match exec.await {
        Err(_) => return Err(format!("exec did not finish within {exec_deadline:?}")),
        Ok(Err(error)) => return Err(error.to_string()),
        Ok(Ok(output)) => output,
    };
    let results = parse_client_output(&output.stdout, urls);
    if results.iter().all(Option::is_none) {
        let said = output.stderr.trim();
        return Err(format!(
            "the probe client printed no result (exit {}){}",
            output.exit_code,
            if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            }
        ));
    }
    Ok(results)
}

/// The client's argv: `{targets}` becomes the per-target words for every URL, and the
/// timeouts are filled in (in seconds; curl takes fractions).
fn client_argv(
    command: &[String],
    per_target: &[String],
    urls: &[String],
    connect_timeout: Duration,
    timeout: Duration,
) -> Vec<String> {
    let seconds = |d: Duration| format!("{}", d.as_secs_f64());
    let mut argv = Vec::new();
    for word in command {
        if word == "{targets}" {
            for url in urls {
                argv.extend(per_target.iter().map(|w| w.replace("{url}", url)));
            }
        } else {
            argv.push(
                word.replace("{timeout_seconds}", &seconds(timeout))
                    .replace("{connect_timeout_seconds}", &seconds(connect_timeout)),
            );
        }
    }
    argv
}

/// One result per URL, in order, from lines of `URL STATUS EXIT MESSAGE`; `None` for a
/// URL the client printed nothing about.
fn parse_client_output(stdout: &str, urls: &[String]) -> ClientResults {
    let mut results: ClientResults = vec![None; urls.len()];
    for line in stdout.lines() {
        let mut words = line.splitn(4, ' ');
        let (Some(url), Some(status), Some(exit)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let message = words.next().unwrap_or("").trim();
        let Some(index) = urls.iter().position(|u| u == url) else {
            continue;
        };
        let result = match (status.parse::<u16>(), exit.parse::<u32>()) {
            (Ok(code), Ok(0)) if code > 0 => Ok(code),
            (_, Ok(exit)) if exit != 0 => Err(format!("curl: ({exit}) {message}")),
            _ => Err(format!("no HTTP status: {line}")),
        };
        results[index] = Some(result);
    }
    results
}

/// Up to this many directed pairs the preflight probes every ordered pair of nodes: a
/// 16-node cluster's 240. Beyond it a full mesh before every single reboot costs more
/// than it tells (2,450 connections at 50 nodes took 1.7 to 3.1 s of a 2-core lab, the
/// larger part of the gate's own time; 999,000 at 1,000 nodes), and the preflight
/// switches to `preflight_pairs`' linear set: calico-node's readiness, checked on every
/// node first, already requires each of its BGP sessions, and `postflight mesh` is the
/// full N² picture for a nightly run.
const FULL_MESH_PAIR_LIMIT: usize = 16 * 15;

/// The directed pairs, as indexes into `nodes`, that the preflight probes before `node`
/// is rebooted. A cluster small enough gets the full mesh. A larger one gets, in 3(N−1)
/// pairs, what makes the verdict after the reboot attributable: every pair that check
/// will probe (the node to and from every other node), so a pair failing afterwards
/// worked before; plus a ring through the other nodes, so each of them also proves it
/// sends to and receives from a node that is not being rebooted. Calico's own readiness,
/// checked for every node first, already requires each BGP session to be established.
fn preflight_pairs(nodes: &[&str], node: &str) -> Vec<(usize, usize)> {
    let count = nodes.len();
    if count * count.saturating_sub(1) <= FULL_MESH_PAIR_LIMIT {
        return (0..count)
            .flat_map(|from| (0..count).map(move |to| (from, to)))
            .filter(|(from, to)| from != to)
            .collect();
    }
    let Some(target) = nodes.iter().position(|n| *n == node) else {
        // The node under test has no probe pod: the ring alone still covers every node.
        return (0..count).map(|i| (i, (i + 1) % count)).collect();
    };
    let others: Vec<usize> = (0..count).filter(|i| *i != target).collect();
    let mut pairs: Vec<(usize, usize)> = others
        .iter()
        .flat_map(|other| [(target, *other), (*other, target)])
        .collect();
    pairs.extend(
        others
            .iter()
            .zip(others.iter().cycle().skip(1))
            .map(|(from, to)| (*from, *to)),
    );
    pairs
}

/// The pod network is whole before anything is rebooted: probe pods (one per node)
/// reach each other over `preflight_pairs`. One attempt per pair — a healthy cluster
/// answers at once, and a gate that waits on a sick one only delays the refusal.
/// Returns what is wrong, empty when nothing is.
pub(super) async fn mesh_problems(
    cluster: &Cluster,
    inventory: &Inventory,
    node: &str,
    fleet: ProbeFleet,
) -> Vec<String> {
    let mut problems: Vec<String> = fleet
        .broken
        .iter()
        .map(|(request, why)| format!("probe pod on {} could not start: {why}", request.node))
        .collect();
    let nodes: Vec<&str> = fleet
        .ready
        .iter()
        .map(|probe| probe.node.as_str())
        .collect();
    let pairs: Vec<Pair> = preflight_pairs(&nodes, node)
        .into_iter()
        .map(|(from, to)| Pair {
            from: fleet.ready[from].clone(),
            to: fleet.ready[to].clone(),
            same_node: false,
        })
        .collect();
    let tries = Tries {
        attempts: 1,
        deadline: Instant::now(),
        connect_timeout: PROBE_CONNECT_TIMEOUT,
    };
    let outcomes =
        dial_back::probe_with_dial_back(cluster, inventory, &fleet.namespace, pairs, tries).await;
    for (pair, run) in outcomes {
        match run {
            ProbeRun::Ran(outcome) if outcome.succeeded() => {}
            ProbeRun::Ran(outcome) => problems.push(outcome.describe()),
            ProbeRun::CouldNotRun(why) => problems.push(format!(
                "{} → {}: could not run: {why}",
                pair.from.node, pair.to.node
            )),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_plan_puts_two_pods_on_the_node_and_one_on_each_other() {
        let plan = ProbePlan::new("abc", "w3", &["w1".into(), "w2".into()]);
        let nodes: Vec<&str> = plan.requests.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(nodes, ["w3", "w3", "w1", "w2"]);
        let mut names: Vec<&str> = plan.requests.iter().map(|r| r.name.as_str()).collect();
        names.dedup();
        assert_eq!(names.len(), 4, "{names:?}");
    }

    #[test]
    fn a_rolling_updates_set_has_two_pods_on_every_node_it_will_reboot() {
        let others: Vec<String> = ["w1", "w2", "cp"].map(String::from).to_vec();
        let paired: Vec<String> = ["w3", "w1", "w2"].map(String::from).to_vec();
        let plan = ProbePlan::with_pairs("abc", "w3", &others, &paired);
        let nodes: Vec<&str> = plan.requests.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(nodes, ["w3", "w3", "w1", "w1", "w2", "w2", "cp"]);
        // Every gate of the update names the same pods, whichever node it reboots.
        let later =
            ProbePlan::with_pairs("abc", "w1", &["w3", "w2", "cp"].map(String::from), &paired);
        let names = |plan: &ProbePlan| {
            let mut names: Vec<String> = plan.requests.iter().map(|r| r.name.clone()).collect();
            names.sort();
            names
        };
        assert_eq!(names(&plan), names(&later));
    }

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("node-{i:03}")).collect()
    }

    #[test]
    fn a_small_cluster_gets_every_ordered_pair() {
        let nodes = names(16);
        let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let pairs = preflight_pairs(&nodes, "node-003");
        assert_eq!(pairs.len(), 16 * 15);
        let unique: std::collections::BTreeSet<_> = pairs.iter().collect();
        assert_eq!(unique.len(), pairs.len());
        assert!(pairs.iter().all(|(from, to)| from != to));
    }

    #[test]
    fn a_large_cluster_gets_the_node_both_ways_and_a_ring_through_the_others() {
        let nodes = names(17);
        let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let target = 3;
        let pairs = preflight_pairs(&nodes, nodes[target]);
        assert_eq!(pairs.len(), 3 * 16, "linear, not 272");
        for other in (0..17).filter(|i| *i != target) {
            assert!(pairs.contains(&(target, other)), "node → {other}");
            assert!(pairs.contains(&(other, target)), "{other} → node");
            let sends = pairs
                .iter()
                .filter(|(from, to)| *from == other && *to != target)
                .count();
            let receives = pairs
                .iter()
                .filter(|(from, to)| *to == other && *from != target)
                .count();
            assert_eq!((sends, receives), (1, 1), "ring through {other}");
        }
        assert!(pairs.iter().all(|(from, to)| from != to));
    }

    #[test]
    fn ipv6_probe_addresses_are_bracketed() {
        assert_eq!(
            probe_url("198.19.1.2", 8080),
            "http://198.19.1.2:8080/hostname"
        );
        assert_eq!(probe_url("fd00::2", 8080), "http://[fd00::2]:8080/hostname");
    }

    #[test]
    fn every_target_gets_its_own_output_words_and_the_timeouts_are_filled_in() {
        let settings = crate::inventory::ProbeSettings::default();
        let urls = vec![
            "http://198.19.0.2:8080/hostname".to_string(),
            "http://198.19.0.3:8080/hostname".to_string(),
        ];
        let argv = client_argv(
            &settings.client_command,
            &settings.client_target,
            &urls,
            Duration::from_millis(500),
            Duration::from_secs(5),
        );
        let joined = argv.join(" ");
        assert!(joined.starts_with("curl -sS --parallel"), "{joined}");
        assert!(joined.contains("--connect-timeout 0.5 "), "{joined}");
        assert!(joined.contains("--max-time 5 "), "{joined}");
        assert!(
            joined.ends_with(
                "-o /dev/null http://198.19.0.2:8080/hostname -o /dev/null http://198.19.0.3:8080/hostname"
            ),
            "{joined}"
        );
    }

    #[test]
    fn the_client_output_gives_each_target_its_status_or_its_error() {
        let urls: Vec<String> = [
            "http://a:1/hostname",
            "http://b:1/hostname",
            "http://c:1/hostname",
            "http://d:1/hostname",
        ]
        .map(String::from)
        .to_vec();
        let stdout = "http://b:1/hostname 000 28 Connection timed out after 5001 milliseconds\n\
                      http://a:1/hostname 200 0 \n\
                      http://c:1/hostname 000 7 Failed to connect to c port 1: Connection refused\n\
                      garbage\n";
        let results = parse_client_output(stdout, &urls);
        assert_eq!(results[0], Some(Ok(200)));
        assert_eq!(
            results[1],
            Some(Err(
                "curl: (28) Connection timed out after 5001 milliseconds".into()
            ))
        );
        assert!(
            matches!(&results[2], Some(Err(e)) if e.starts_with("curl: (7) Failed to connect"))
        );
        assert_eq!(results[3], None, "nothing printed for d");
    }
}
