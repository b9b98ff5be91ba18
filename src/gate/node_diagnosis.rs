//! `diagnose`: a node as it is, without a reboot or probe pods, with the evidence and
//! the known root causes.

use super::drift::{drift_checks_on, drift_commands};
use super::host_state::network_commands;
use super::*;

/// How long `diagnose` lets calico-node's state settle: enough for the first watch
/// event, which carries the pod as it is; diagnose reports, it does not wait.
const DIAGNOSE_SNAPSHOT: Duration = Duration::from_secs(2);

/// The checks of `diagnose`, in report order.
pub const DIAGNOSE_CHECKS: [CheckName; 6] = [
    CheckName::CalicoNodeReady,
    CheckName::CalicoNodeNotCrashlooping,
    CheckName::TmpfilesConfigPresent,
    CheckName::RunDirPermissions,
    CheckName::RunDirAfterNextBoot,
    CheckName::BgpSessionsEstablished,
];

/// Diagnoses a node as it is, without rebooting it or starting probe pods: calico-node
/// (state, restarts, current and previous logs), the tmpfiles.d entry and what the next
/// boot will make of the run directory, the directory now, the node's routes and BGP
/// sessions — then the known failure signatures over all of it.
///
/// # Errors
/// The node is not in the inventory.
pub async fn diagnose_node(
    inventory: &Inventory,
    node: &str,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<NodeReport, GateError> {
    check_node(inventory, node)?;
    let started_at = Timestamp::now();
    let recorder = Recorder::new(node, progress, &DIAGNOSE_CHECKS);
    let run_id = new_run_id();
    recorder.identify(|run| run.run_id = run_id.clone());
    let mut connected = None;
    let interrupted = tokio::select! {
        () = diagnose_steps(inventory, node, &recorder, &run_id, &mut connected) => false,
        () = cancel.cancelled() => true,
    };
    if interrupted {
        recorder.error_remaining(ErrorKind::Interrupted, "the run was interrupted");
    }
    let mut report = recorder.into_report(false, started_at, None);
    report.interrupted = interrupted;
    let shell_used = inventory.node(node).is_some_and(|entry| {
        inventory.transport_of(entry) == crate::inventory::TransportKind::NodeShell
    });
    if let Some(cluster) = connected.as_ref().filter(|_| shell_used) {
        super::drift::delete_node_shells(
            cluster,
            inventory,
            &run_id,
            std::slice::from_mut(&mut report),
        )
        .await;
    }
    Ok(report)
}

async fn diagnose_steps(
    inventory: &Inventory,
    node: &str,
    recorder: &Recorder<'_>,
    run_id: &str,
    connected: &mut Option<Cluster>,
) {
    let cluster = recorder
        .timed("connect to the API server", connect(inventory))
        .await;
    if let Ok(cluster) = &cluster {
        recorder.identify(|run| super::verify::identify_cluster(run, cluster));
        *connected = Some(cluster.clone());
    }
    examine(inventory, node, recorder, run_id, cluster.as_ref()).await;
}

/// Reads `node` as `diagnose` does — calico-node through the API, the node's files,
/// routes and BGP sessions — and records the checks, each failed one carrying the known
/// root cause, if one fits. Without the API, a fully declared inventory still lets the
/// node itself be read. `mesh` uses it for the nodes its matrix implicates.
pub(super) async fn examine(
    inventory: &Inventory,
    node: &str,
    recorder: &Recorder<'_>,
    run_id: &str,
    cluster: Result<&Cluster, &cluster::ClusterError>,
) {
    let entry = inventory.node(node).expect("the node is in the inventory");
    let access = match node_access(inventory, entry, cluster.ok(), run_id) {
        Ok(access) => access,
        Err(error) => return recorder.error_remaining(error.kind(), &error.to_string()),
    };
    let calico = match cluster {
        Ok(cluster) => calico_expectations(cluster, &inventory.calico).await,
        Err(_) if !needs_deployment(&inventory.calico) => {
            resolve(&inventory.calico, &[]).map_err(CalicoLookupError::from)
        }
        Err(error) => return recorder.error_remaining(error.kind(), &error.to_string()),
    };
    let calico = match calico {
        Ok(calico) => calico,
        Err(error) => return recorder.error_remaining(error.kind(), &error.to_string()),
    };
    let calico = &calico;
    let cluster_side = async {
        let cluster = match cluster {
            Ok(cluster) => cluster,
            Err(error) => return Err(Unobserved::from(error)),
        };
        if let Ok(current) = cluster.node(node).await {
            recorder.note(format!(
                "node: {}",
                cluster::describe_ready_condition(&current)
            ));
        }
        let since = crashloop_window_start(None);
        Ok(check_calico(cluster, calico, node, None, since, DIAGNOSE_SNAPSHOT).await)
    };
    let host_side = async {
        // One round trip: the files the drift checks read, the routes and BGP.
        let mut commands = drift_commands(calico);
        commands.extend(network_commands(calico));
        let transport = &crate::host::Prefetched::fetch(&*access.transport, commands).await;
        let files = drift_checks_on(transport, &access.shell, node, calico).await;
        let started = Instant::now();
        let network = node_network_state(transport, calico).await;
        (files, network, started)
    };
    let (calico_results, (files, network, network_started)) = tokio::join!(
        recorder.timed("read calico-node from the API", cluster_side),
        recorder.timed("read the node", host_side),
    );
    let (mut results, mut findings) = files;
    results.push(check_bgp(&network, node, network_started));
    match calico_results {
        Ok(calico_results) => {
            findings.calico_pod = calico_results.pod_name.clone();
            findings.fatal_log_line = calico_results.fatal_log_line.clone();
            results.push(calico_results.ready);
            results.push(calico_results.crashloop);
        }
        Err(error) => {
            for name in [
                CheckName::CalicoNodeReady,
                CheckName::CalicoNodeNotCrashlooping,
            ] {
                results.push(CheckResult::unobserved(name, node, &error, Duration::ZERO));
            }
        }
    }
    let peers = match cluster {
        Ok(cluster) => super::host_state::bgp_peers(cluster, inventory, node).await,
        Err(_) => Vec::new(),
    };
    let diagnosis = diagnose::diagnose(&findings, calico).or_else(|| {
        network.bgp_output().and_then(|output| {
            diagnose::diagnose_bgp(node, &findings.shell, output, &peers, calico)
        })
    });
    for result in &mut results {
        if matches!(result.verdict, Verdict::Failed(_)) && diagnosis.is_some() {
            result.diagnosis = diagnosis.clone();
        }
    }
    for result in results {
        recorder.record(result);
    }
}
