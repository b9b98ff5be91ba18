//! `drift`: every node, without rebooting any, checked for the state that breaks
//! calico-node at its next boot.

use super::host_state::{command_error, host_check_commands, host_error, merged_tmpfiles_command};
use super::*;

/// How many nodes the drift check reads at once. Each is one SSH connection to its own
/// node's sshd (so sshd's MaxStartups, per server, is never near) carrying a few short
/// commands, on a blocking thread while it waits. With 64, a 50-node sweep is one wave,
/// and a node that does not answer holds one slot for its own deadline and no more.
const DRIFT_CONCURRENCY: usize = 64;

/// The checks of `drift`, in report order.
pub const DRIFT_CHECKS: [CheckName; 3] = [
    CheckName::TmpfilesConfigPresent,
    CheckName::RunDirAfterNextBoot,
    CheckName::RunDirPermissions,
];

/// Checks every node of the inventory, without rebooting any, for the state that breaks
/// calico-node at the next boot: the tmpfiles.d file, what systemd-tmpfiles will make of
/// the run directory, and the directory as it is now. Nodes run in parallel (at most
/// `DRIFT_CONCURRENCY` at once), each within the inventory's SSH deadline; a node that
/// cannot be reached is an error for that node alone.
pub async fn drift(
    inventory: &Inventory,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Vec<NodeReport> {
    let nodes = inventory.node_names();
    let run_id = new_run_id();
    let setup = async {
        // Node shells go through the API server: connect once for all of them.
        let cluster = if inventory.uses_node_shell() || needs_deployment(&inventory.calico) {
            Some(connect(inventory).await?)
        } else {
            None
        };
        let calico = drift_expectations(inventory, cluster.as_ref()).await?;
        Ok::<_, CalicoLookupError>((cluster, calico))
    };
    let (cluster, calico) = match setup.await {
        Ok(found) => found,
        Err(error) => {
            return nodes
                .iter()
                .map(|node| {
                    let recorder = Recorder::new(node, progress, &DRIFT_CHECKS);
                    recorder.identify(|run| run.run_id = run_id.clone());
                    recorder.error_remaining(error.kind(), &error.to_string());
                    recorder.into_report(false, Timestamp::now(), None)
                })
                .collect();
        }
    };
    let cluster = cluster.as_ref();
    let sweep = futures::stream::iter(nodes.iter())
        .map(|node| drift_node(inventory, cluster, &calico, node, &run_id, progress))
        .buffer_unordered(DRIFT_CONCURRENCY)
        .collect::<Vec<NodeReport>>();
    let mut reports = tokio::select! {
        reports = sweep => reports,
        () = cancel.cancelled() => {
            nodes.iter().map(|node| {
                let recorder = Recorder::new(node, progress, &DRIFT_CHECKS);
                recorder.identify(|run| run.run_id = run_id.clone());
                recorder.error_remaining(ErrorKind::Interrupted, "the run was interrupted");
                let mut report = recorder.into_report(false, Timestamp::now(), None);
                report.interrupted = true;
                report
            }).collect()
        }
    };
    if let Some(cluster) = cluster.filter(|_| inventory.uses_node_shell()) {
        delete_node_shells(cluster, inventory, &run_id, &mut reports).await;
    }
    // Inventory order, so reports and JUnit read the same from run to run.
    reports.sort_by_key(|r| nodes.iter().position(|n| *n == r.node));
    reports
}

/// What drift holds every node to. The API is asked only when the inventory leaves out
/// where or as whom calico-node runs: a fully declared inventory sweeps over SSH alone.
async fn drift_expectations(
    inventory: &Inventory,
    cluster: Option<&Cluster>,
) -> Result<CalicoExpectations, CalicoLookupError> {
    match cluster {
        Some(cluster) if needs_deployment(&inventory.calico) => {
            calico_expectations(cluster, &inventory.calico).await
        }
        _ => Ok(resolve(&inventory.calico, &[])?),
    }
}

/// Deletes the sweep's node shells, on every exit of it, Ctrl-C included; a failure to is
/// said in every report, with the command that does it by hand.
pub(super) async fn delete_node_shells(
    cluster: &Cluster,
    inventory: &Inventory,
    run_id: &str,
    reports: &mut [NodeReport],
) {
    let namespace = &inventory.node_shell.namespace;
    let run_ids = [run_id];
    let deletion = tokio::time::timeout(
        CLEANUP_TIMEOUT,
        super::verify::while_unreachable(cluster, || {
            cluster.delete_node_shells(namespace, &run_ids)
        }),
    )
    .await;
    let failure = match deletion {
        Ok(Ok(())) => return,
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("not done within {CLEANUP_TIMEOUT:?}"),
    };
    let note = format!(
        "the node shell pods of run {run_id} were not deleted ({failure}): `kubectl -n {namespace} delete pod -l {}={run_id}`",
        cluster::probes::RUN_LABEL
    );
    for report in reports {
        report.notes.push(note.clone());
    }
}

async fn drift_node(
    inventory: &Inventory,
    cluster: Option<&Cluster>,
    calico: &CalicoExpectations,
    node: &str,
    run_id: &str,
    progress: &dyn Progress,
) -> NodeReport {
    let started_at = Timestamp::now();
    let recorder = Recorder::new(node, progress, &DRIFT_CHECKS);
    recorder.identify(|run| run.run_id = run_id.to_string());
    let entry = inventory.node(node).expect("the node is in the inventory");
    let access = match node_access(inventory, entry, cluster, run_id) {
        Ok(access) => access,
        Err(error) => {
            recorder.error_remaining(error.kind(), &error.to_string());
            return recorder.into_report(false, started_at, None);
        }
    };
    let through_node_shell =
        inventory.transport_of(entry) == crate::inventory::TransportKind::NodeShell;
    // A node shell may first have to start its pod (and pull its image).
    let deadline = if through_node_shell {
        inventory.timeouts.ssh * 2 + inventory.timeouts.probe_ready
    } else {
        inventory.timeouts.ssh * 2
    };
    let checks = drift_checks(&access, node, calico);
    let outcome = tokio::time::timeout(
        deadline,
        recorder.timed("read the node's Calico state", checks),
    )
    .await;
    if let Some(cluster) = cluster.filter(|_| through_node_shell) {
        // Done with this node: its shell goes now, not when the last node is read (the
        // sweep's end deletes whatever this could not).
        let _ = tokio::time::timeout(
            CLEANUP_TIMEOUT,
            cluster.delete_node_shells_on(&inventory.node_shell.namespace, run_id, node),
        )
        .await;
    }
    match outcome {
        Ok((results, _)) => results.into_iter().for_each(|r| recorder.record(r)),
        Err(_) => recorder.error_remaining(
            ErrorKind::Timeout,
            &format!("{node} did not answer within {deadline:?}"),
        ),
    }
    recorder.into_report(false, started_at, None)
}

/// The drift checks of one node, and what they found, for the diagnosis.
pub(super) async fn drift_checks(
    access: &NodeAccess,
    node: &str,
    calico: &CalicoExpectations,
) -> (Vec<CheckResult>, Findings) {
    // One round trip to the node: everything the checks read, sent as one batch.
    let transport =
        &crate::host::Prefetched::fetch(&*access.transport, drift_commands(calico)).await;
    drift_checks_on(transport, &access.shell, node, calico).await
}

/// Everything the drift checks read on a node.
pub(super) fn drift_commands(calico: &CalicoExpectations) -> Vec<ShellCommand> {
    let cat_config = merged_tmpfiles_command();
    let mut wanted = host_check_commands(calico);
    if !wanted.contains(&cat_config) {
        wanted.push(cat_config);
    }
    wanted
}

/// The drift checks over `transport`, which has usually fetched `drift_commands` already.
pub(super) async fn drift_checks_on(
    transport: &dyn Transport,
    shell: &NodeShell,
    node: &str,
    calico: &CalicoExpectations,
) -> (Vec<CheckResult>, Findings) {
    let cat_config = merged_tmpfiles_command();
    // A node under a drift sweep is up: one connection attempt, no waiting for sshd.
    let host = check_host(transport, node, calico, Duration::ZERO).await;
    let started = Instant::now();
    // Without a declared entry, the host check already read the merged configuration.
    let merged = match (&calico.tmpfiles, &host.tmpfiles_content) {
        (None, Some(Some(merged))) => Ok(crate::host::CommandOutput {
            stdout: merged.clone(),
            stderr: String::new(),
            exit_status: 0,
        }),
        _ => transport.run(&cat_config).await,
    };
    // Beside a declared file, the other files: one of them may override its entry.
    let merged_tmpfiles = match (&calico.tmpfiles, &merged) {
        (Some(_), Ok(output)) if output.success() => Some(output.stdout.clone()),
        _ => None,
    };
    let mut next_boot = match merged {
        Ok(output) if output.success() => check_result(
            CheckName::RunDirAfterNextBoot,
            node,
            judge_next_boot(&output.stdout, calico),
            started,
        ),
        // Older systemd has no --cat-config: judge the one file we know of, and say so.
        Ok(output) => match &host.tmpfiles_content {
            Some(Some(content)) => {
                let mut result = check_result(
                    CheckName::RunDirAfterNextBoot,
                    node,
                    judge_next_boot(content, calico),
                    started,
                );
                result.details.push(format!(
                    "`systemd-tmpfiles --cat-config` failed (exit {}: {}); judged from {} alone, other tmpfiles.d files may override it",
                    output.exit_status,
                    output.stderr.trim(),
                    calico.tmpfiles_file()
                ));
                result
            }
            _ => command_error(
                CheckName::RunDirAfterNextBoot,
                node,
                &cat_config,
                &output,
                started,
            ),
        },
        Err(error) => host_error(CheckName::RunDirAfterNextBoot, node, &error, started),
    };
    let findings = Findings {
        run_dir: host.run_dir_stat.clone(),
        run_dir_missing: host.run_dir_missing,
        tmpfiles_content: host.tmpfiles_content.clone(),
        merged_tmpfiles,
        ..Findings::new(node, shell.clone(), &calico.namespace)
    };
    let mut tmpfiles = host.tmpfiles;
    let failed = |r: &CheckResult| matches!(r.verdict, Verdict::Failed(_));
    if failed(&tmpfiles) || failed(&next_boot) {
        let diagnosis = diagnose::diagnose_drift(&findings, calico);
        if failed(&tmpfiles) {
            tmpfiles.diagnosis = diagnosis.clone();
        }
        if failed(&next_boot) {
            next_boot.diagnosis = diagnosis;
        }
    }
    (vec![tmpfiles, next_boot, host.run_dir], findings)
}
