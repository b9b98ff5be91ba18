//! `mesh`: every ordered pair of probe pods across the inventory's nodes, without
//! rebooting anything, for the nightly run. One probe pod per node; one exec per source
//! pod runs a client that reaches every target at once (curl `--parallel`), so the cost
//! grows with the number of nodes in execs and only the pairs grow with its square.
//! A pair that fails is tried once more in a second exec; one that then answers is
//! flaky, not green.

use super::*;

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
    run.identify(|identity| identity.run_id = run_id.clone());
    let mut cluster_used = None;
    let outcome = tokio::select! {
        outcome = mesh_steps(inventory, &run, &run_id, &nodes, &mut cluster_used) => outcome,
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
    nodes
        .iter()
        .map(|node| {
            let result = match &outcome {
                Ok(found) => judge_node(node, found),
                Err(why) => CheckResult::unobserved(CheckName::PodMesh, node, why, Duration::ZERO),
            };
            NodeReport {
                node: node.clone(),
                results: vec![result.bounded()],
                interrupted: cancel.is_cancelled(),
                ..shared.clone()
            }
        })
        .collect()
}

/// What the mesh found: the fleet, and per source pod its pairs or why its client
/// could not run.
struct MeshFound {
    fleet: ProbeFleet,
    sources: Vec<(ReadyProbe, Result<Vec<ProbeOutcome>, String>)>,
    took: Duration,
}

async fn mesh_steps(
    inventory: &Inventory,
    run: &Recorder<'_>,
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
    Ok(MeshFound {
        fleet,
        sources,
        took: started.elapsed(),
    })
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

fn judge_node(node: &str, found: &MeshFound) -> CheckResult {
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
    let failed: Vec<&ProbeOutcome> = outcomes.iter().filter(|o| !o.succeeded()).collect();
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
    let verdict = if !failed.is_empty() {
        Verdict::Failed(format!(
            "{} of {} pairs from {node} failed: {}",
            failed.len(),
            outcomes.len(),
            failed
                .iter()
                .map(|o| format!("{} → {}: {}", o.from_node, o.to_node, o.observed()))
                .collect::<Vec<_>>()
                .join("; ")
        ))
    } else if !unprobed.is_empty() {
        Verdict::Error(format!(
            "{} pairs from {node} could not be probed: {}",
            unprobed.len(),
            unprobed.join("; ")
        ))
    } else {
        Verdict::Passed
    };
    let evidence = failed
        .iter()
        .map(|o| Evidence::new(o.label(), o.observed(), "HTTP 2xx or 3xx"))
        .collect();
    let mut result = CheckResult::new(CheckName::PodMesh, node, verdict, evidence, took);
    if matches!(result.verdict, Verdict::Error(_)) {
        result.error_kind = Some(ErrorKind::Error);
    }
    result.pairs = outcomes.iter().map(ProbeOutcome::pair_result).collect();
    result.flaky = crate::checks::flaky_pairs(outcomes);
    result
}
