//! `verify`: one node's run, from connecting to the last verdict, and the cleanup its
//! ledger owes on every exit.

use super::reboot::{preflight_then_reboot, RebootOptions};
use super::*;

/// Verifies one node, rebooting it first when asked. Always returns a report — checks
/// that could not run are errors in it — unless the request itself is wrong.
///
/// `cancel` stops the run between or inside steps (Ctrl-C): the report then marks the
/// checks that did not run, is flagged interrupted, and the probe pods are still deleted.
///
/// # Errors
/// The node is not in the inventory.
pub async fn verify(
    inventory: &Inventory,
    request: &VerifyRequest,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<NodeReport, GateError> {
    verify_with_probes(inventory, request, None, None, progress, cancel).await
}

/// As `verify`; with `shared`, the gate uses (and creates if missing) its caller's probe
/// pods instead of its own, and leaves them for the caller to delete. With `lock_slot`,
/// it takes up the lock held there, if any, instead of taking it anew, and puts it back
/// there when it ends instead of releasing it: the caller releases it.
pub(super) async fn verify_with_probes(
    inventory: &Inventory,
    request: &VerifyRequest,
    shared: Option<&SharedProbes>,
    lock_slot: Option<&lock::LockSlot>,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<NodeReport, GateError> {
    check_request(inventory, request)?;
    let started_at = Timestamp::now();
    let recorder = Recorder::new(
        &request.node,
        progress,
        &request.expected_checks(inventory.reboot.node_kind),
    );
    let run_id = new_run_id();
    recorder.identify(|run| run.run_id = run_id.clone());
    let mut state = RunState {
        lock_slot,
        ..RunState::default()
    };
    // A rolling update's lock, held since an earlier node: this run works under it.
    if let Some(held) = lock_slot
        .and_then(lock::LockSlot::take)
        .filter(|_| request.reboot)
    {
        held.hold_for(work_under_lock(inventory));
        recorder.identify(|run| run.lock_holder = Some(held.holder().to_string()));
        state.lock_lost = held.lost_signal();
        state.lock = Some(held);
        state.ledger.owed.push(Owed::Lease);
    }
    let lock_lost = state.lock_lost.clone();
    let interrupted = tokio::select! {
        () = verify_steps(inventory, request, shared, &recorder, &run_id, &mut state) => false,
        () = cancel.cancelled() => true,
        // A lapsed lock stops the run where it is: another run may now reboot a node,
        // and this one must not go on to anything else.
        () = lock_lost.cancelled() => {
            let how = state.lock.as_ref().and_then(lock::HeldLock::lost).unwrap_or_default();
            recorder.error_remaining(
                ErrorKind::LockLost,
                &format!("the reboot lock was lost ({how}): the run stopped there"),
            );
            false
        }
    };
    if interrupted {
        recorder.error_remaining(ErrorKind::Interrupted, "the run was interrupted");
    }
    let outcome = phase::Outcome {
        all_passed: recorder.all_passed(),
        interrupted,
        lock_lost: state.lock.as_ref().and_then(lock::HeldLock::lost),
    };
    let plan = phase::cleanup_plan(state.ledger.phase, &state.ledger.owed, &outcome);
    clean_up(plan, &recorder, &mut state, inventory).await;
    // Rebooted only once the reboot was sent (or may have been): a run refused before
    // that (permissions, the lock, the preflight) rebooted nothing.
    let rebooted = state.ledger.phase.rebooted();
    let mut report = recorder.into_report(rebooted, started_at, state.ready_at);
    report.interrupted = interrupted;
    Ok(report)
}

/// Performs a cleanup plan, each step within its own deadline, saying in the report what
/// could not be done and how to do it by hand.
async fn clean_up(
    plan: Vec<phase::Cleanup>,
    recorder: &Recorder<'_>,
    state: &mut RunState<'_>,
    inventory: &Inventory,
) {
    use phase::Cleanup;
    for step in plan {
        match step {
            Cleanup::DeleteProbePods { run_ids } => {
                if let Some(cluster) = &state.cluster {
                    delete_run_pods(recorder, cluster, inventory, RunPods::Probes, &run_ids).await;
                }
            }
            Cleanup::DeleteNodeShellPods { run_ids } => {
                if let Some(cluster) = &state.cluster {
                    delete_run_pods(recorder, cluster, inventory, RunPods::NodeShells, &run_ids)
                        .await;
                }
            }
            Cleanup::Uncordon { node, note } => {
                let Some(cluster) = &state.cluster else {
                    continue;
                };
                if let Some(note) = note {
                    recorder.note(note);
                }
                let uncordon = tokio::time::timeout(
                    CLEANUP_TIMEOUT,
                    while_unreachable(cluster, || cluster.set_unschedulable(&node, false)),
                );
                match recorder.timed("uncordon", uncordon).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => {
                        recorder.note(format!("{node} could not be uncordoned: {error}"));
                    }
                    Err(_) => recorder.note(format!(
                        "{node} was not uncordoned within {CLEANUP_TIMEOUT:?} (is the API server away?): `kubectl uncordon {node}`"
                    )),
                }
            }
            Cleanup::LeaveCordoned { note, .. } | Cleanup::Note(note) => recorder.note(note),
            Cleanup::ReleaseLease => {
                let Some(held) = state.lock.take() else {
                    continue;
                };
                // A rolling update's lock is the update's to release, after its last
                // node: a soak holds it too.
                if let Some(slot) = state.lock_slot {
                    slot.put(held);
                    continue;
                }
                let release = tokio::time::timeout(CLEANUP_TIMEOUT, held.release());
                match recorder.timed("release the reboot lock", release).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => recorder.note(format!(
                        "the reboot lock was not released (it expires by itself): {error}"
                    )),
                    Err(_) => recorder.note(
                        "the reboot lock was not released in time (it expires by itself)".into(),
                    ),
                }
            }
        }
    }
}

/// The pods a run makes and its cleanup deletes by run id.
#[derive(Clone, Copy)]
enum RunPods {
    Probes,
    NodeShells,
}

impl RunPods {
    fn what(self) -> &'static str {
        match self {
            RunPods::Probes => "probe pods",
            RunPods::NodeShells => "node shell pods",
        }
    }

    fn namespace(self, inventory: &Inventory) -> &str {
        match self {
            RunPods::Probes => &inventory.probe.namespace,
            RunPods::NodeShells => &inventory.node_shell.namespace,
        }
    }

    async fn delete(
        self,
        cluster: &Cluster,
        namespace: &str,
        runs: &[&str],
        inventory_nodes: usize,
    ) -> Result<(), cluster::ClusterError> {
        match self {
            // A gate's set: a pod on every node, and a second on its own.
            RunPods::Probes => {
                cluster
                    .delete_probes(namespace, runs, inventory_nodes + 1)
                    .await
            }
            RunPods::NodeShells => cluster.delete_node_shells(namespace, runs).await,
        }
    }
}

/// Deletes the pods these runs made, within the cleanup deadline, and says in the report
/// how to do it by hand if it could not.
async fn delete_run_pods(
    recorder: &Recorder<'_>,
    cluster: &Cluster,
    inventory: &Inventory,
    pods: RunPods,
    run_ids: &[String],
) {
    let (what, namespace) = (pods.what(), pods.namespace(inventory));
    let runs: Vec<&str> = run_ids.iter().map(String::as_str).collect();
    let cleanup = tokio::time::timeout(
        CLEANUP_TIMEOUT,
        while_unreachable(cluster, || {
            pods.delete(cluster, namespace, &runs, inventory.nodes.len())
        }),
    );
    match recorder.timed(&format!("delete {what}"), cleanup).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => recorder.note(format!(
            "{what} of run {} were not deleted: {error}",
            run_ids.join(", ")
        )),
        Err(_) => recorder.note(format!(
            "{what} were not deleted within {CLEANUP_TIMEOUT:?}: `kubectl -n {namespace} delete pod -l '{} in ({})'`",
            cluster::probes::RUN_LABEL,
            run_ids.join(",")
        )),
    }
}

/// How long a cleanup step waits before trying again an API server it could not reach.
const CLEANUP_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Runs a cleanup step, trying again while the API server cannot be reached or is not
/// ready yet (it is restarting, or an outage is ending; a server that has just started
/// refuses with 403 until its authorizer has synced): what a run made is worth undoing
/// once the server is back. Any other error, and a refusal from a ready server, is
/// final. The caller bounds it with the step's deadline.
pub(super) async fn while_unreachable<T, Step, Attempt>(
    cluster: &Cluster,
    mut step: Step,
) -> Result<T, cluster::ClusterError>
where
    Step: FnMut() -> Attempt,
    Attempt: std::future::Future<Output = Result<T, cluster::ClusterError>>,
{
    loop {
        let error = match step().await {
            Err(error) if error.kind() == ErrorKind::Unreachable => error,
            Err(error)
                if matches!(error.kind(), ErrorKind::Forbidden | ErrorKind::NotFound)
                    && !cluster.serving().await =>
            {
                error
            }
            done => return done,
        };
        tracing::warn!("cleanup: the API server is not back yet, retrying: {error}");
        tokio::time::sleep(CLEANUP_RETRY_PAUSE).await;
    }
}

/// What the steps of a run leave for its cleanup, whether they finish or are cut short.
#[derive(Default)]
struct RunState<'a> {
    /// Where a rolling update keeps its lock between nodes.
    lock_slot: Option<&'a lock::LockSlot>,
    cluster: Option<Cluster>,
    lock: Option<lock::HeldLock>,
    ready_at: Option<Instant>,
    ledger: Ledger,
    /// Cancelled by the lock's renewer if the hold lapses.
    lock_lost: CancellationToken,
}

/// How far a run got and what it made on the way: all its cleanup is decided from this.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    pub(super) phase: Phase,
    pub(super) owed: Vec<Owed>,
}

/// The refusal of a run whose identity lacks permissions: each missing one, and where to
/// get them.
pub(super) fn missing_permissions(missing: &[crate::rbac::Access]) -> String {
    let list: Vec<String> = missing.iter().map(crate::rbac::Access::describe).collect();
    format!(
        "postflight may not {}: nothing was locked, cordoned or created; grant what `postflight rbac` prints (kubectl apply -f -)",
        list.join(", ")
    )
}

/// The cluster a run talked to, for its report.
pub(super) fn identify_cluster(run: &mut RunIdentity, cluster: &Cluster) {
    run.api_server = Some(cluster.server().to_string());
    run.context = cluster.context().map(String::from);
}

async fn verify_steps(
    inventory: &Inventory,
    request: &VerifyRequest,
    shared: Option<&SharedProbes>,
    recorder: &Recorder<'_>,
    run_id: &str,
    state: &mut RunState<'_>,
) {
    let node = request.node.as_str();
    let cluster = match recorder
        .timed("connect to the API server", connect(inventory))
        .await
    {
        Ok(cluster) => cluster,
        Err(error) => return recorder.error_remaining(error.kind(), &error.to_string()),
    };
    state.cluster = Some(cluster.clone());
    recorder.identify(|run| identify_cluster(run, &cluster));
    // An API server that does not answer is one error, said once, before anything else.
    if let Err(error) = recorder.timed("reach the API server", cluster.ping()).await {
        return recorder.error_remaining(error.kind(), &error.to_string());
    }
    // Before anything is locked, cordoned or created: a missing permission is one clear
    // error now, not a 403 halfway through a reboot.
    let entry = inventory.node(node).expect("the node is in the inventory");
    let through_node_shell =
        inventory.transport_of(entry) == crate::inventory::TransportKind::NodeShell;
    let mut needs = request.needs();
    if through_node_shell {
        needs.push(crate::rbac::Need::NodeShell);
    }
    let accesses = crate::rbac::required(inventory, &needs);
    match recorder
        .timed(
            "check postflight's permissions",
            cluster.missing_access(&accesses),
        )
        .await
    {
        Ok(missing) if missing.is_empty() => {}
        Ok(missing) => {
            return recorder.error_remaining(ErrorKind::Forbidden, &missing_permissions(&missing))
        }
        Err(error) => return recorder.error_remaining(error.kind(), &error.to_string()),
    }
    // What dead runs left (a SIGKILLed run's pods and lease) goes before this run makes
    // anything; a run that may reboot reads the lease, so it can tell dead from alive.
    if request.reboot {
        let swept = tokio::time::timeout(CLEANUP_TIMEOUT, sweep::sweep(&cluster, inventory));
        match recorder.timed("sweep what dead runs left", swept).await {
            Ok(Ok(said)) => said.into_iter().for_each(|line| recorder.note(line)),
            Ok(Err(error)) => recorder.note(format!("what dead runs left was not swept: {error}")),
            Err(_) => recorder.note(format!(
                "what dead runs left was not swept within {CLEANUP_TIMEOUT:?}"
            )),
        }
    }
    // From here on the run may create probe pods, which cleanup then owes, unless they
    // are a set the caller keeps across gates and deletes itself.
    let probe_run_id = shared.map_or(run_id, |shared| shared.run_id.as_str());
    if shared.is_none() {
        state.ledger.owed.push(Owed::ProbePods {
            run_id: run_id.to_string(),
        });
    }
    if through_node_shell {
        state.ledger.owed.push(Owed::NodeShellPods {
            run_id: run_id.to_string(),
        });
    }
    let access = match node_access(inventory, entry, Some(&cluster), run_id) {
        Ok(access) => access,
        Err(error) => return recorder.error_remaining(error.kind(), &error.to_string()),
    };
    let transport = &*access.transport;
    let calico = match recorder
        .timed(
            "read how calico-node is installed",
            calico_expectations(&cluster, &inventory.calico),
        )
        .await
    {
        Ok(calico) => calico,
        Err(error) => return recorder.error_remaining(error.kind(), &error.to_string()),
    };
    let calico = &calico;

    let baseline = if request.reboot {
        if state.lock.is_none() {
            let holder = lock::holder_identity(run_id);
            let acquire = lock::acquire(
                &cluster,
                inventory,
                &holder,
                work_under_lock(inventory),
                state.lock_lost.clone(),
            );
            match recorder.timed("take the reboot lock", acquire).await {
                Ok(held) => {
                    recorder.identify(|run| run.lock_holder = Some(holder.clone()));
                    state.lock = Some(held);
                    state.ledger.owed.push(Owed::Lease);
                }
                Err(error) => return recorder.error_remaining(error.kind(), &error.to_string()),
            }
        }
        state.ledger.phase = Phase::Locked;
        match preflight_then_reboot(
            inventory,
            &cluster,
            transport,
            node,
            recorder,
            RebootOptions {
                calico,
                force: request.force,
                drain: request.drain,
                probes: super::preflight::ProbeScope {
                    run_id: probe_run_id,
                    paired_nodes: shared.map_or(&[], |shared| shared.paired_nodes.as_slice()),
                    new_run: shared.is_none(),
                    // A rolling update's gates after its first follow a reboot.
                    rolling: shared.is_some_and(|shared| {
                        shared.paired_nodes.first().map(String::as_str) != Some(node)
                    }),
                },
                ledger: &mut state.ledger,
            },
        )
        .await
        {
            Some(baseline) => Some(baseline),
            None => return,
        }
    } else {
        let started = Instant::now();
        match recorder.timed("read the node", cluster.node(node)).await {
            Ok(current) => recorder.record(check_result(
                CheckName::NodeReadyAfterReboot,
                node,
                judge_node_ready(&current),
                started,
            )),
            Err(error) => return recorder.error_remaining(error.kind(), &error.to_string()),
        }
        None
    };
    state.ready_at = Some(Instant::now());
    let crashloop_since = crashloop_window_start(baseline.as_ref());

    let others: Vec<String> = inventory
        .node_names()
        .into_iter()
        .filter(|n| n != node)
        .collect();
    let mut probes = ProbePlan::new(probe_run_id, node, &others);
    // Without a reboot there was no preflight, whose pods this run would reuse.
    probes.new_run = !request.reboot;
    if let Some(baseline) = &baseline {
        probes.stale = baseline.probe_containers.clone();
    }
    let calico_step = recorder.timed(
        "wait for calico-node Ready",
        check_calico(
            &cluster,
            calico,
            node,
            baseline.as_ref().map(|b| &b.calico),
            crashloop_since,
            inventory.timeouts.calico_ready,
        ),
    );
    let host_step = recorder.timed(
        "read the node's Calico state",
        check_host(transport, node, calico, inventory.timeouts.ssh),
    );
    let probe_step = recorder.timed(
        "start probe pods",
        start_probes(&cluster, inventory, &probes),
    );
    let (calico_results, mut host, fleet) = tokio::join!(calico_step, host_step, probe_step);
    // Where no tmpfiles.d entry makes the run directory at boot, the kubelet makes it
    // (calico-node's hostPath volume) only when it starts calico-node, which can be after
    // the node is Ready: a directory missing at that first read says nothing yet. Read
    // again now that calico-node has had its chance.
    if host.run_dir_missing {
        host = recorder
            .timed(
                "read the node's Calico state again, after calico-node's start",
                check_host(transport, node, calico, inventory.timeouts.ssh),
            )
            .await;
    }
    let calico_ready = calico_results.ready.passed();
    let findings = Findings {
        node: node.into(),
        shell: access.shell.clone(),
        calico_pod: calico_results.pod_name.clone(),
        calico_namespace: calico.namespace.clone(),
        fatal_log_line: calico_results.fatal_log_line.clone(),
        run_dir: host.run_dir_stat.clone(),
        run_dir_missing: host.run_dir_missing,
        tmpfiles_content: host.tmpfiles_content.clone(),
        merged_tmpfiles: None,
    };
    let connectivity = recorder.timed(
        "probe pod connectivity",
        check_connectivity(&cluster, inventory, &probes, fleet, calico_ready),
    );
    // With calico-node already failed, the node's routes and BGP state will be wanted
    // for the diagnosis: they are read beside the probes, not after them.
    let collect_network_state = || {
        recorder.timed(
            "collect the node's routes and BGP state",
            node_network_state(transport, calico),
        )
    };
    let ((same, cross), network_state) = if calico_ready {
        (connectivity.await, None)
    } else {
        let (probed, state) = tokio::join!(connectivity, collect_network_state());
        (probed, Some(state))
    };
    let mut results = vec![
        calico_results.ready,
        calico_results.crashloop,
        host.tmpfiles,
        host.run_dir,
        same,
        cross,
    ];
    let mut diagnosis = diagnose::diagnose(&findings, calico);
    let network_broken = results.iter().any(|r| {
        matches!(
            r.name,
            CheckName::CalicoNodeReady | CheckName::CrossNodePodConnectivity
        ) && matches!(r.verdict, Verdict::Failed(_))
    });
    if network_broken {
        // What the node's routing looks like, for the reader and for the BGP signature.
        let state = match network_state {
            Some(state) => state,
            None => collect_network_state().await,
        };
        if diagnosis.is_none() {
            if let Some(output) = state.bgp_output() {
                let peers = host_state::bgp_peers(&cluster, inventory, node).await;
                diagnosis = diagnose::diagnose_bgp(node, &findings.shell, output, &peers, calico);
            }
        }
        if let Some(cross) = results
            .iter_mut()
            .find(|r| r.name == CheckName::CrossNodePodConnectivity)
        {
            cross.details.extend(state.as_details());
        }
    }
    for result in &mut results {
        let diagnosed = matches!(
            result.name,
            CheckName::CalicoNodeReady
                | CheckName::RunDirPermissions
                | CheckName::TmpfilesConfigPresent
                | CheckName::CrossNodePodConnectivity
        );
        if diagnosed && matches!(result.verdict, Verdict::Failed(_)) {
            result.diagnosis = diagnosis.clone();
        }
    }
    for result in results {
        recorder.record(result);
    }
    state.ledger.phase = Phase::Checked;
}
