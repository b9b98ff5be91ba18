//! `mesh`: every ordered pair of probe pods across the inventory's nodes, without
//! rebooting anything, for the nightly run. One probe pod per node; one exec per source
//! pod runs a client that reaches every target at once (curl `--parallel`), so the cost
//! grows with the number of nodes in execs and only the pairs grow with its square.
//! A pair that fails is tried once more in a second exec; one that then answers is
//! flaky, not green.

use super::*;

/// The check `mesh` reports, once per node: its probe pod reaches every other node's.
pub const MESH_CHECKS: [CheckName; 1] = [CheckName::PodMesh];

/// Source pods probing at once: each is one exec stream through the API server, with
/// its own parallel clients inside the pod.
const MESH_EXEC_CONCURRENCY: usize = 16;

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
            verify::while_unreachable(cluster, || cluster.delete_probes(namespace, &runs)),
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

async fn probe_every_pair(
    cluster: &Cluster,
    inventory: &Inventory,
    fleet: &ProbeFleet,
) -> Vec<(ReadyProbe, Result<Vec<ProbeOutcome>, String>)> {
    futures::stream::iter(fleet.ready.iter())
        .map(|source| async move {
            let targets: Vec<&ReadyProbe> = fleet
                .ready
                .iter()
                .filter(|target| target.node != source.node)
                .collect();
            let first = probe_targets(cluster, inventory, &fleet.namespace, source, &targets).await;
            let outcome = match first {
                Err(why) => Err(why),
                Ok(mut outcomes) => {
                    // A failed pair gets one more try: a lost SYN is not a broken path.
                    let failed: Vec<&ReadyProbe> = targets
                        .iter()
                        .zip(&outcomes)
                        .filter(|(_, outcome)| !outcome.succeeded())
                        .map(|(target, _)| *target)
                        .collect();
                    if !failed.is_empty() {
                        tokio::time::sleep(PROBE_RETRY_PAUSE).await;
                        if let Ok(again) =
                            probe_targets(cluster, inventory, &fleet.namespace, source, &failed)
                                .await
                        {
                            for retried in again {
                                if let Some(first) =
                                    outcomes.iter_mut().find(|o| o.to_pod == retried.to_pod)
                                {
                                    let earlier = first.pair_result().observed;
                                    *first = ProbeOutcome {
                                        attempts: 2,
                                        earlier_failures: vec![earlier],
                                        ..retried
                                    };
                                }
                            }
                        }
                    }
                    Ok(outcomes)
                }
            };
            (source.clone(), outcome)
        })
        .buffer_unordered(MESH_EXEC_CONCURRENCY)
        .collect()
        .await
}

/// One exec in `source`: the mesh client reaching every target at once.
async fn probe_targets(
    cluster: &Cluster,
    inventory: &Inventory,
    namespace: &str,
    source: &ReadyProbe,
    targets: &[&ReadyProbe],
) -> Result<Vec<ProbeOutcome>, String> {
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let settings = &inventory.probe;
    let urls: Vec<String> = targets
        .iter()
        .map(|t| connectivity::probe_url(&t.ip, settings.port))
        .collect();
    let argv = mesh_argv(
        &settings.mesh_client_command,
        &settings.mesh_client_target,
        &urls,
        PROBE_ATTEMPT_TIMEOUT,
    );
    let exec = tokio::time::timeout(
        PROBE_ATTEMPT_TIMEOUT * 3,
        cluster.exec(namespace, &source.name, &argv),
    );
    let output = match exec.await {
        Err(_) => {
            return Err(format!(
                "the mesh client in {} did not finish within {:?}",
                source.name,
                PROBE_ATTEMPT_TIMEOUT * 3
            ))
        }
        Ok(Err(error)) => return Err(error.to_string()),
        Ok(Ok(output)) => output,
    };
    let results = parse_mesh_output(&output.stdout, &urls);
    if results.iter().all(Option::is_none) {
        return Err(format!(
            "the mesh client printed no result (exit {}): {}",
            output.exit_code,
            output.stderr.trim()
        ));
    }
    Ok(targets
        .iter()
        .zip(urls)
        .zip(results)
        .map(|((target, url), result)| ProbeOutcome {
            from_node: source.node.clone(),
            from_pod: source.name.clone(),
            to_node: target.node.clone(),
            to_pod: target.name.clone(),
            url,
            result: result.unwrap_or_else(|| Err("the client printed no result for it".into())),
            attempts: 1,
            earlier_failures: Vec::new(),
        })
        .collect())
}

/// The mesh client's argv: `{targets}` becomes the per-target words for every URL.
fn mesh_argv(
    command: &[String],
    per_target: &[String],
    urls: &[String],
    timeout: Duration,
) -> Vec<String> {
    let seconds = timeout.as_secs().to_string();
    let mut argv = Vec::new();
    for word in command {
        if word == "{targets}" {
            for url in urls {
                argv.extend(per_target.iter().map(|w| w.replace("{url}", url)));
            }
        } else {
            argv.push(word.replace("{timeout_seconds}", &seconds));
        }
    }
    argv
}

/// One result per URL, in order, from lines of `URL STATUS EXIT MESSAGE`; `None` for a
/// URL the client printed nothing about.
fn parse_mesh_output(stdout: &str, urls: &[String]) -> Vec<Option<Result<u16, String>>> {
    let mut results: Vec<Option<Result<u16, String>>> = vec![None; urls.len()];
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
                .map(|o| format!(
                    "{} → {}: {}",
                    o.from_node,
                    o.to_node,
                    o.pair_result().observed
                ))
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
        .map(|o| {
            Evidence::new(
                format!(
                    "{}/{} → {}/{} ({})",
                    o.from_node, o.from_pod, o.to_node, o.to_pod, o.url
                ),
                o.pair_result().observed,
                "HTTP 2xx or 3xx",
            )
        })
        .collect();
    let mut result = CheckResult::new(CheckName::PodMesh, node, verdict, evidence, took);
    if matches!(result.verdict, Verdict::Error(_)) {
        result.error_kind = Some(ErrorKind::Error);
    }
    result.pairs = outcomes.iter().map(ProbeOutcome::pair_result).collect();
    result.flaky = crate::checks::flaky_pairs(outcomes);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_gets_its_own_output_words_and_the_timeout_is_filled_in() {
        let settings = crate::inventory::ProbeSettings::default();
        let urls = vec![
            "http://198.19.0.2:8080/hostname".to_string(),
            "http://198.19.0.3:8080/hostname".to_string(),
        ];
        let argv = mesh_argv(
            &settings.mesh_client_command,
            &settings.mesh_client_target,
            &urls,
            Duration::from_secs(5),
        );
        let joined = argv.join(" ");
        assert!(joined.starts_with("curl -sS --parallel"), "{joined}");
        assert!(joined.contains("--max-time 5 "), "{joined}");
        assert!(joined.ends_with(
            "-o /dev/null http://198.19.0.2:8080/hostname -o /dev/null http://198.19.0.3:8080/hostname"
        ), "{joined}");
        assert!(
            !joined.contains('{') || joined.contains("%{url}"),
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
        let results = parse_mesh_output(stdout, &urls);
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
