//! The gate orders one node's verification: record the boot → reboot → wait for the node
//! to go down and come back on a new boot → the checks → cleanup. It owns every deadline
//! (the waits in `cluster` have none of their own) and times every step, so a report
//! says where the minutes went.
//!
//! A check that could not run is an `<error>`, never a pass: when a step the later checks
//! depend on fails (the reboot was refused, the node never came back), the checks after
//! it are recorded as errors that say why they did not run.

use crate::checks::{
    judge_bgp, judge_boot_id, judge_calico_ready, judge_connectivity, judge_crashloop,
    judge_next_boot, judge_node_ready, judge_run_dir, judge_tmpfiles, CalicoObservation, CheckName,
    CheckResult, Evidence, Judgement, ProbeOutcome, RunDirStat, Verdict,
};
use crate::cluster::probes::{probe_pod_name, ProbeFleet, ProbeRequest, ReadyProbe};
use crate::cluster::{self, Cluster};
use crate::diagnose::{self, Findings};
use crate::host::{HostError, RebootOutcome, ShellCommand, SshTransport, Transport};
use crate::inventory::{CalicoExpectations, Inventory};
use crate::report::{NodeReport, StepTiming};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::wait::Condition;
use kube::runtime::{watcher, WatchStreamExt};
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How many curls run at once. Each is an exec stream through the API server; cilium-cli
/// runs its connectivity scenarios with similar modest parallelism to stay polite to
/// the control plane of a production cluster.
const PROBE_CONCURRENCY: usize = 8;

/// The longest one curl may take. Pod-to-pod traffic inside a cluster answers in
/// milliseconds; five seconds tells a dropped packet from a slow one, and leaves room
/// for retries inside the connectivity deadline.
const PROBE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between retries of a failed probe while the network may still be converging
/// (BGP routes arriving just after calico-node turns Ready).
const PROBE_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Without a reboot, a calico-node container that died with an error this recently is
/// still crash-looping in all but name: the kubelet's back-off caps at 5 minutes, so two
/// back-off periods cover a loop that is between attempts.
const CRASHLOOP_LOOKBACK: Duration = Duration::from_secs(600);

/// Pause between SSH connection attempts while a freshly booted node's sshd starts:
/// the kubelet often reports Ready a little before sshd listens.
const SSH_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Deleting the probe pods at the end may not hang the run: the verdict is known.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How many lines of calico-node's logs go into the evidence.
const LOG_TAIL_LINES: i64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{inventory}: node {node:?} is not in the inventory (it lists: {known})")]
    UnknownNode {
        node: String,
        inventory: PathBuf,
        known: String,
    },
}

/// Receives progress while a run goes on, for a console or a test log. The library never
/// prints; a front end decides what to show.
pub trait Progress: Send + Sync {
    fn step_started(&self, _node: &str, _step: &str) {}
    fn check_finished(&self, _result: &CheckResult) {}
}

/// Shows nothing.
pub struct Quiet;
impl Progress for Quiet {}

#[derive(Debug, Clone)]
pub struct VerifyRequest {
    pub node: String,
    /// Reboot the node first (otherwise verify it as it is).
    pub reboot: bool,
}

/// Collects results and step timings; shared by the steps of one node's run.
struct Recorder<'a> {
    node: String,
    results: Mutex<Vec<CheckResult>>,
    steps: Mutex<Vec<StepTiming>>,
    notes: Mutex<Vec<String>>,
    last_verdict: Mutex<Option<Instant>>,
    progress: &'a dyn Progress,
}

impl<'a> Recorder<'a> {
    fn new(node: &str, progress: &'a dyn Progress) -> Self {
        Recorder {
            node: node.into(),
            results: Mutex::default(),
            steps: Mutex::default(),
            notes: Mutex::default(),
            last_verdict: Mutex::default(),
            progress,
        }
    }

    fn record(&self, result: CheckResult) {
        self.progress.check_finished(&result);
        *self.last_verdict.lock().expect("recorder lock") = Some(Instant::now());
        self.results.lock().expect("recorder lock").push(result);
    }

    fn note(&self, note: String) {
        self.notes.lock().expect("recorder lock").push(note);
    }

    async fn timed<T>(&self, step: &str, work: impl std::future::Future<Output = T>) -> T {
        self.progress.step_started(&self.node, step);
        let started = Instant::now();
        let value = work.await;
        self.steps.lock().expect("recorder lock").push(StepTiming {
            step: step.into(),
            duration: started.elapsed(),
        });
        value
    }

    fn into_report(
        self,
        rebooted: bool,
        started_at: Timestamp,
        ready_at: Option<Instant>,
    ) -> NodeReport {
        let mut results = self.results.into_inner().expect("recorder lock");
        results.sort_by_key(|r| r.name);
        let last_verdict = self.last_verdict.into_inner().expect("recorder lock");
        NodeReport {
            node: self.node,
            rebooted,
            started_at: started_at.to_string(),
            results,
            steps: self.steps.into_inner().expect("recorder lock"),
            ready_to_verdict: ready_at
                .zip(last_verdict)
                .map(|(ready, verdict)| verdict.saturating_duration_since(ready)),
            interrupted: false,
            notes: self.notes.into_inner().expect("recorder lock"),
        }
    }

    /// Every expected check not recorded yet becomes an error saying why it did not run.
    fn error_remaining(&self, expected: &[CheckName], why: &str) {
        let missing: Vec<CheckName> = {
            let results = self.results.lock().expect("recorder lock");
            expected
                .iter()
                .copied()
                .filter(|name| !results.iter().any(|r| r.name == *name))
                .collect()
        };
        for name in missing {
            self.record(CheckResult::error(
                name,
                &self.node,
                format!("not run: {why}"),
                Duration::ZERO,
            ));
        }
    }
}

fn check_result(
    name: CheckName,
    node: &str,
    (verdict, evidence): Judgement,
    started: Instant,
) -> CheckResult {
    CheckResult::new(name, node, verdict, evidence, started.elapsed())
}

/// A short random ID for this run's probe pods: unique enough that two runs never share
/// a pod, short enough to fit a pod name.
pub fn new_run_id() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    format!("{:08x}", hasher.finish() as u32)
}

/// Connects to the cluster the inventory names.
///
/// # Errors
/// The kubeconfig cannot be read or has no usable context.
pub async fn connect(inventory: &Inventory) -> Result<Cluster, cluster::ClusterError> {
    Cluster::connect(
        inventory.cluster.kubeconfig.as_deref(),
        inventory.cluster.context.as_deref(),
    )
    .await
}

/// The SSH transport for a node of the inventory.
pub fn ssh_transport(inventory: &Inventory, node: &str) -> Option<SshTransport> {
    let entry = inventory.node(node)?;
    Some(SshTransport::new(
        inventory.ssh_target(entry),
        inventory.timeouts.ssh,
    ))
}

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
    if inventory.node(&request.node).is_none() {
        return Err(GateError::UnknownNode {
            node: request.node.clone(),
            inventory: inventory.file.clone(),
            known: inventory.node_names().join(", "),
        });
    }
    let started_at = Timestamp::now();
    let recorder = Recorder::new(&request.node, progress);
    let run_id = new_run_id();
    let mut connected: Option<Cluster> = None;
    let mut ready_at: Option<Instant> = None;
    let expected = CheckName::for_verify(request.reboot);
    let interrupted = tokio::select! {
        () = verify_steps(inventory, request, &recorder, &run_id, &mut connected, &mut ready_at) => false,
        () = cancel.cancelled() => true,
    };
    if interrupted {
        recorder.error_remaining(&expected, "the run was interrupted");
    }
    if let Some(cluster) = &connected {
        let namespace = &inventory.probe.namespace;
        let cleanup =
            tokio::time::timeout(CLEANUP_TIMEOUT, cluster.delete_probes(namespace, &run_id));
        match recorder.timed("delete probe pods", cleanup).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => recorder.note(format!("probe pods of run {run_id} were not deleted: {error}")),
            Err(_) => recorder.note(format!(
                "probe pods of run {run_id} were not deleted within {CLEANUP_TIMEOUT:?}: delete them with `kubectl -n {namespace} delete pod -l {}={run_id}`",
                cluster::probes::RUN_LABEL
            )),
        }
    }
    let mut report = recorder.into_report(request.reboot, started_at, ready_at);
    report.interrupted = interrupted;
    Ok(report)
}

async fn verify_steps(
    inventory: &Inventory,
    request: &VerifyRequest,
    recorder: &Recorder<'_>,
    run_id: &str,
    connected: &mut Option<Cluster>,
    ready_at: &mut Option<Instant>,
) {
    let node = request.node.as_str();
    let expected = CheckName::for_verify(request.reboot);
    let cluster = match recorder
        .timed("connect to the API server", connect(inventory))
        .await
    {
        Ok(cluster) => cluster,
        Err(error) => return recorder.error_remaining(&expected, &error.to_string()),
    };
    *connected = Some(cluster.clone());
    let transport = ssh_transport(inventory, node).expect("the node is in the inventory");
    let calico = &inventory.calico;

    let baseline = if request.reboot {
        match reboot_and_wait(inventory, &cluster, &transport, node, recorder).await {
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
            Err(error) => return recorder.error_remaining(&expected, &error.to_string()),
        }
        None
    };
    *ready_at = Some(Instant::now());
    let crashloop_since = crashloop_window_start(baseline.as_ref());

    let others: Vec<String> = inventory
        .node_names()
        .into_iter()
        .filter(|n| n != node)
        .collect();
    let probes = ProbePlan::new(run_id, node, &others);
    let calico_step = recorder.timed(
        "wait for calico-node Ready",
        check_calico(
            &cluster,
            inventory,
            node,
            baseline.as_ref().map(|b| &b.calico),
            crashloop_since,
            inventory.timeouts.calico_ready,
        ),
    );
    let host_step = recorder.timed(
        "read the node's Calico state over SSH",
        check_host(&transport, node, calico, inventory.timeouts.ssh),
    );
    let probe_step = recorder.timed(
        "start probe pods",
        start_probes(&cluster, inventory, &probes),
    );
    let (calico_results, host, fleet) = tokio::join!(calico_step, host_step, probe_step);
    let calico_ready = calico_results.ready.passed();
    let findings = Findings {
        node: node.into(),
        calico_pod: calico_results.pod_name.clone(),
        calico_namespace: calico.namespace.clone(),
        fatal_log_line: calico_results.fatal_log_line.clone(),
        run_dir: host.run_dir_stat.clone(),
        run_dir_missing: host.run_dir_missing,
        tmpfiles_content: host.tmpfiles_content.clone(),
    };
    let (same, cross) = recorder
        .timed(
            "probe pod connectivity",
            check_connectivity(&cluster, inventory, &probes, fleet, calico_ready),
        )
        .await;
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
        let state = recorder
            .timed(
                "collect the node's routes and BGP state",
                node_network_state(&transport, calico),
            )
            .await;
        if diagnosis.is_none() {
            diagnosis = state
                .bgp_output()
                .and_then(|output| diagnose::diagnose_bgp(node, output, calico));
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
}

/// The node's routes and BIRD's view of its BGP sessions, read over SSH.
pub struct NodeNetworkState {
    pub routes: Result<String, String>,
    /// Ok(None): BIRD's control socket does not answer (BIRD is not running).
    pub bgp: Result<Option<String>, String>,
    pub socket: String,
}

impl NodeNetworkState {
    fn bgp_output(&self) -> Option<&str> {
        match &self.bgp {
            Ok(Some(output)) => Some(output),
            _ => None,
        }
    }

    pub fn as_details(&self) -> Vec<String> {
        let routes = match &self.routes {
            Ok(routes) => format!("ip -4 route on the node:\n{}", routes.trim_end()),
            Err(error) => format!("ip -4 route on the node: unavailable ({error})"),
        };
        let bgp = match &self.bgp {
            Ok(Some(output)) => format!("BGP (birdcl show protocols):\n{}", output.trim_end()),
            Ok(None) => format!("BGP: BIRD does not answer on {}", self.socket),
            Err(error) => format!("BGP: unavailable ({error})"),
        };
        vec![routes, bgp]
    }
}

/// Reads `ip -4 route` and `birdcl show protocols` (birdc where birdcl is missing) on
/// the node. BIRD's socket is Calico's: `bird.ctl` in the run directory.
pub async fn node_network_state(
    transport: &dyn Transport,
    calico: &CalicoExpectations,
) -> NodeNetworkState {
    let socket = format!("{}/bird.ctl", calico.run_dir.trim_end_matches('/'));
    let routes = match transport
        .run(&ShellCommand::new("ip").arg("-4").arg("route"))
        .await
    {
        Ok(output) if output.success() => Ok(output.stdout),
        Ok(output) => Err(format!(
            "exit {}: {}",
            output.exit_status,
            output.stderr.trim()
        )),
        Err(error) => Err(error.to_string()),
    };
    let mut bgp = Err("neither birdcl nor birdc is installed on the node".to_string());
    for client in ["birdcl", "birdc"] {
        let command = ShellCommand::new(client)
            .arg("-s")
            .arg(&socket)
            .arg("show")
            .arg("protocols");
        bgp = match transport.run(&command).await {
            Ok(output) if output.success() => Ok(Some(output.stdout)),
            // 127: the shell found no such program; try the other client.
            Ok(output) if output.exit_status == 127 => continue,
            Ok(output)
                if format!("{}{}", output.stdout, output.stderr).contains("Unable to connect") =>
            {
                Ok(None)
            }
            Ok(output) => Err(format!(
                "{client} exit {}: {}",
                output.exit_status,
                output.stderr.trim()
            )),
            Err(error) => Err(error.to_string()),
        };
        break;
    }
    NodeNetworkState {
        routes,
        bgp,
        socket,
    }
}

/// `bgp_sessions_established` from the node's network state.
pub fn check_bgp(state: &NodeNetworkState, node: &str, started: Instant) -> CheckResult {
    match &state.bgp {
        Ok(output) => {
            let mut result = check_result(
                CheckName::BgpSessionsEstablished,
                node,
                judge_bgp(output.as_deref(), &state.socket),
                started,
            );
            result.details.extend(state.as_details());
            result
        }
        Err(error) => CheckResult::error(
            CheckName::BgpSessionsEstablished,
            node,
            error.clone(),
            started.elapsed(),
        ),
    }
}

/// Since when a calico-node container that exited with an error counts as crash-looping:
/// since the node's new boot turned Ready, or, without a reboot, the recent past.
pub fn crashloop_window_start(baseline: Option<&RebootBaseline>) -> Option<Timestamp> {
    match baseline {
        Some(baseline) => baseline.ready_since,
        None => Timestamp::now().checked_sub(CRASHLOOP_LOOKBACK).ok(),
    }
}

/// What a node looked like before its reboot, to tell the new boot from the old.
#[derive(Debug, Clone)]
pub struct RebootBaseline {
    pub boot_id: String,
    pub calico: CalicoBaseline,
    /// When the node's Ready condition turned True on the new boot.
    pub ready_since: Option<Timestamp>,
}

/// The calico-node container that ran before the reboot: after it, only a different
/// container (or pod) may count as Ready, never a stale status from the old boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CalicoBaseline {
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
}

impl CalicoBaseline {
    fn of(pod: Option<&Pod>) -> Self {
        CalicoBaseline {
            pod_uid: pod.and_then(|p| p.metadata.uid.clone()),
            container_id: pod
                .and_then(first_container_status)
                .and_then(|s| s.container_id.clone()),
        }
    }

    /// The pod runs a container that started after the baseline was taken.
    fn is_superseded_by(&self, pod: &Pod) -> bool {
        let current = CalicoBaseline::of(Some(pod));
        current.pod_uid != self.pod_uid
            || (current.container_id.is_some() && current.container_id != self.container_id)
    }
}

fn first_container_status(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()
}

/// Reboots a node and waits for it to come back, as `verify --reboot` does, for a front
/// end that runs the checks one by one (the cluster suite). Returns
/// `node_ready_after_reboot` and `boot_id_changed` (or errors for the checks that could
/// not run), the timed steps, and the baseline the later checks compare against — None
/// when the node did not come back.
pub async fn reboot_node(
    inventory: &Inventory,
    cluster: &Cluster,
    transport: &dyn Transport,
    node: &str,
) -> (Vec<CheckResult>, Vec<StepTiming>, Option<RebootBaseline>) {
    let recorder = Recorder::new(node, &Quiet);
    let baseline = reboot_and_wait(inventory, cluster, transport, node, &recorder).await;
    let results = recorder.results.into_inner().expect("recorder lock");
    (
        results,
        recorder.steps.into_inner().expect("recorder lock"),
        baseline,
    )
}

/// Records the boot, reboots the node over SSH, waits for it to go down and to come
/// back Ready on a new boot, and records `node_ready_after_reboot` and `boot_id_changed`.
/// Returns None when the node did not come back (the remaining checks are then recorded
/// as errors).
async fn reboot_and_wait(
    inventory: &Inventory,
    cluster: &Cluster,
    transport: &dyn Transport,
    node: &str,
    recorder: &Recorder<'_>,
) -> Option<RebootBaseline> {
    let expected = CheckName::for_verify(true);
    let timeouts = &inventory.timeouts;
    let calico = &inventory.calico;
    let before = match recorder
        .timed("record the boot ID", cluster.node(node))
        .await
    {
        Ok(before) => before,
        Err(error) => {
            recorder.error_remaining(&expected, &error.to_string());
            return None;
        }
    };
    let Some(boot_id) = cluster::boot_id(&before)
        .map(String::from)
        .filter(|id| !id.is_empty())
    else {
        recorder.error_remaining(
            &expected,
            &format!("node {node} reports no bootID: a reboot could not be proven"),
        );
        return None;
    };
    let calico_before = match cluster
        .pods_on_node(&calico.namespace, &calico.selector, node)
        .await
    {
        Ok(pods) => CalicoBaseline::of(pods.first()),
        Err(error) => {
            recorder.error_remaining(&expected, &error.to_string());
            return None;
        }
    };

    let started = Instant::now();
    let command = ShellCommand::operator_text(&inventory.reboot.command);
    match recorder
        .timed("issue the reboot", transport.reboot(&command))
        .await
    {
        Ok(RebootOutcome::Issued) => {}
        Ok(RebootOutcome::Refused(output)) => {
            let message = format!(
                "the reboot command `{}` was refused (exit {}): {}",
                inventory.reboot.command,
                output.exit_status,
                output.stderr.trim()
            );
            recorder.record(CheckResult::new(
                CheckName::NodeReadyAfterReboot,
                node,
                Verdict::Failed(message.clone()),
                vec![Evidence::new(
                    "reboot command",
                    format!("exit {}", output.exit_status),
                    "the node goes down",
                )],
                started.elapsed(),
            ));
            recorder.error_remaining(&expected, "the node was not rebooted");
            return None;
        }
        Err(error) => {
            recorder.error_remaining(&expected, &format!("could not issue the reboot: {error}"));
            return None;
        }
    }

    let last_seen = Mutex::new(None);
    let went_down = cluster::is_node_ready()
        .not()
        .or(cluster::has_boot_id_other_than(&boot_id));
    let down = tokio::time::timeout(
        timeouts.node_not_ready,
        cluster.wait_for_node(node, went_down, &last_seen),
    );
    if recorder
        .timed("wait for the node to go down", down)
        .await
        .is_err()
    {
        let message = format!(
            "the node stayed Ready on boot {boot_id} for {} after the reboot command: it did not reboot",
            humantime::format_duration(timeouts.node_not_ready)
        );
        let seen = last_seen.lock().expect("last_seen lock").clone();
        fail_node_ready(recorder, node, message, seen.as_ref(), &boot_id, started);
        recorder.error_remaining(&expected, "the node did not reboot");
        return None;
    }

    let back = cluster::is_node_ready().and(cluster::has_boot_id_other_than(&boot_id));
    let up = tokio::time::timeout(
        timeouts.node_ready,
        cluster.wait_for_node(node, back, &last_seen),
    );
    let after = match recorder
        .timed("wait for the node to be Ready on a new boot", up)
        .await
    {
        Ok(after) => after,
        Err(_) => {
            let seen = last_seen.lock().expect("last_seen lock").clone();
            let last = seen.as_ref().map_or(
                "the node object is gone".into(),
                cluster::describe_ready_condition,
            );
            let message = format!(
                "the node was not Ready on a new boot within {}; last seen: {last}",
                humantime::format_duration(timeouts.node_ready)
            );
            fail_node_ready(recorder, node, message, seen.as_ref(), &boot_id, started);
            recorder.error_remaining(&expected, "the node did not come back");
            return None;
        }
    };
    recorder.record(check_result(
        CheckName::NodeReadyAfterReboot,
        node,
        judge_node_ready(&after),
        started,
    ));
    let new_boot = cluster::boot_id(&after).unwrap_or_default();
    recorder.record(check_result(
        CheckName::BootIdChanged,
        node,
        judge_boot_id(&boot_id, new_boot),
        started,
    ));
    let ready_since = cluster::node_condition(&after, "Ready")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    Some(RebootBaseline {
        boot_id,
        calico: calico_before,
        ready_since,
    })
}

fn fail_node_ready(
    recorder: &Recorder<'_>,
    node: &str,
    message: String,
    seen: Option<&Node>,
    boot_id: &str,
    started: Instant,
) {
    let condition = seen.map_or("node not found".into(), cluster::describe_ready_condition);
    recorder.record(CheckResult::new(
        CheckName::NodeReadyAfterReboot,
        node,
        Verdict::Failed(message),
        vec![Evidence::new(
            "Ready condition",
            condition,
            "Ready=True on a new boot",
        )],
        started.elapsed(),
    ));
    let seen_boot = seen.and_then(cluster::boot_id).unwrap_or_default();
    recorder.record(check_result(
        CheckName::BootIdChanged,
        node,
        judge_boot_id(boot_id, seen_boot),
        started,
    ));
}

/// `calico_node_ready` and `calico_node_not_crashlooping`, with what the diagnosis needs.
pub struct CalicoResults {
    pub ready: CheckResult,
    pub crashloop: CheckResult,
    pub pod_name: Option<String>,
    pub fatal_log_line: Option<String>,
}

/// Waits (up to `deadline`) for calico-node on the node to be Ready in a
/// container newer than `baseline`; a known fatal line in its logs ends the wait at once.
/// On failure the current and previous log tails are attached as evidence.
pub async fn check_calico(
    cluster: &Cluster,
    inventory: &Inventory,
    node: &str,
    baseline: Option<&CalicoBaseline>,
    crashloop_since: Option<Timestamp>,
    deadline: Duration,
) -> CalicoResults {
    let calico = &inventory.calico;
    let started = Instant::now();
    let latest: Mutex<Option<Pod>> = Mutex::new(None);
    let watched = tokio::time::timeout(
        deadline,
        watch_calico(cluster, calico, node, baseline, &latest),
    )
    .await;
    let observation = match watched {
        Ok(observation) => observation,
        Err(_) => {
            // Read it once more: the watch may have been down when the deadline hit.
            let pod = match cluster
                .pods_on_node(&calico.namespace, &calico.selector, node)
                .await
            {
                Ok(pods) => pods.into_iter().next(),
                Err(_) => latest.lock().expect("latest lock").clone(),
            };
            CalicoObservation {
                pod,
                fatal_log_line: None,
                timed_out: Some(deadline),
            }
        }
    };
    let mut ready = check_result(
        CheckName::CalicoNodeReady,
        node,
        judge_calico_ready(&observation, node),
        started,
    );
    let crashloop_judgement = judge_crashloop(observation.pod.as_ref(), crashloop_since.as_ref());
    let mut crashloop = check_result(
        CheckName::CalicoNodeNotCrashlooping,
        node,
        crashloop_judgement,
        started,
    );
    let pod_name = observation
        .pod
        .as_ref()
        .and_then(|p| p.metadata.name.clone());
    if let Some(pod) = &pod_name {
        if !ready.passed() || !crashloop.passed() {
            // The logs go with the first failing check, once: a reader sees them there.
            let logs = calico_log_tails(cluster, &calico.namespace, pod).await;
            if ready.passed() {
                &mut crashloop
            } else {
                &mut ready
            }
            .details
            .extend(logs);
        }
    }
    CalicoResults {
        ready,
        crashloop,
        pod_name,
        fatal_log_line: observation.fatal_log_line,
    }
}

async fn watch_calico(
    cluster: &Cluster,
    calico: &CalicoExpectations,
    node: &str,
    baseline: Option<&CalicoBaseline>,
    latest: &Mutex<Option<Pod>>,
) -> CalicoObservation {
    let config = watcher::Config::default()
        .labels(&calico.selector)
        .fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(cluster.pods(&calico.namespace), config)
        .default_backoff()
        .applied_objects()
        .boxed();
    // The (pod, restart count) whose logs were read last: each dead container is read once.
    let mut logs_read_for: Option<(String, i32)> = None;
    loop {
        let pod = match stream.next().await {
            Some(Ok(pod)) => pod,
            Some(Err(error)) => {
                tracing::warn!(node, "watching calico-node, retrying: {error}");
                continue;
            }
            None => std::future::pending().await,
        };
        *latest.lock().expect("latest lock") = Some(pod.clone());
        let fresh = baseline.is_none_or(|b| b.is_superseded_by(&pod));
        if fresh && cluster::pod_ready(&pod) {
            return CalicoObservation {
                pod: Some(pod),
                ..Default::default()
            };
        }
        let Some(restarts) = died_since_start(&pod) else {
            continue;
        };
        let key = (pod.metadata.uid.clone().unwrap_or_default(), restarts);
        if logs_read_for.as_ref() == Some(&key) {
            continue;
        }
        logs_read_for = Some(key);
        let name = pod.metadata.name.clone().unwrap_or_default();
        for previous in [true, false] {
            let log = cluster
                .logs(&calico.namespace, &name, None, previous, LOG_TAIL_LINES)
                .await
                .unwrap_or_default();
            if let Some(line) = diagnose::fatal_calico_log_line(&log) {
                return CalicoObservation {
                    pod: Some(pod),
                    fatal_log_line: Some(line),
                    timed_out: None,
                };
            }
        }
    }
}

/// The restart count of a calico-node container that has exited with an error and is
/// waiting to be started again; None while it runs or starts.
fn died_since_start(pod: &Pod) -> Option<i32> {
    let status = first_container_status(pod)?;
    let state = status.state.as_ref()?;
    let crashing = state
        .waiting
        .as_ref()
        .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
        || state.terminated.as_ref().is_some_and(|t| t.exit_code != 0);
    crashing.then_some(status.restart_count)
}

async fn calico_log_tails(cluster: &Cluster, namespace: &str, pod: &str) -> Vec<String> {
    let mut tails = Vec::new();
    for (previous, which) in [(true, "previous"), (false, "current")] {
        match cluster
            .logs(namespace, pod, None, previous, LOG_TAIL_LINES)
            .await
        {
            Ok(log) if !log.trim().is_empty() => tails.push(format!(
                "{which} log of {namespace}/{pod} (tail):\n{}",
                log.trim_end()
            )),
            Ok(_) => {}
            Err(error) => tails.push(format!(
                "{which} log of {namespace}/{pod}: unavailable ({error})"
            )),
        }
    }
    tails
}

/// `tmpfiles_config_present` and `run_dir_permissions`, with what the diagnosis needs.
pub struct HostResults {
    pub tmpfiles: CheckResult,
    pub run_dir: CheckResult,
    /// Some(None): the file does not exist; None: it could not be read.
    pub tmpfiles_content: Option<Option<String>>,
    pub run_dir_stat: Option<RunDirStat>,
    pub run_dir_missing: bool,
}

/// What `cat`/`stat` say (in the C locale) of a path that does not exist.
const NO_SUCH_FILE: &str = "No such file or directory";

/// Runs a command, retrying only while the node refuses or drops the TCP connection
/// (sshd still starting), up to `patience`. A host key or authentication failure is
/// final at once: retrying cannot fix it, and must not hide it.
async fn run_when_reachable(
    transport: &dyn Transport,
    command: &ShellCommand,
    patience: Duration,
) -> Result<crate::host::CommandOutput, HostError> {
    let deadline = Instant::now() + patience;
    loop {
        match transport.run(command).await {
            Err(HostError::Connect { .. }) if Instant::now() + SSH_RETRY_PAUSE < deadline => {
                tokio::time::sleep(SSH_RETRY_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// Reads the tmpfiles.d file and the run directory's mode and owner on the node. A node
/// whose sshd is still starting is given `ssh_patience` to accept the connection.
pub async fn check_host(
    transport: &dyn Transport,
    node: &str,
    calico: &CalicoExpectations,
    ssh_patience: Duration,
) -> HostResults {
    let started = Instant::now();
    let cat = ShellCommand::new("env")
        .arg("LC_ALL=C")
        .arg("cat")
        .arg("--")
        .arg(&calico.tmpfiles_file);
    let (tmpfiles, tmpfiles_content) = match run_when_reachable(transport, &cat, ssh_patience).await
    {
        Ok(output) if output.success() => {
            let judgement = judge_tmpfiles(Some(&output.stdout), calico);
            (
                check_result(CheckName::TmpfilesConfigPresent, node, judgement, started),
                Some(Some(output.stdout)),
            )
        }
        Ok(output) if output.stderr.contains(NO_SUCH_FILE) => (
            check_result(
                CheckName::TmpfilesConfigPresent,
                node,
                judge_tmpfiles(None, calico),
                started,
            ),
            Some(None),
        ),
        Ok(output) => (
            command_error(
                CheckName::TmpfilesConfigPresent,
                node,
                &cat,
                &output,
                started,
            ),
            None,
        ),
        Err(error) => (
            host_error(CheckName::TmpfilesConfigPresent, node, &error, started),
            None,
        ),
    };
    let started = Instant::now();
    let stat = ShellCommand::new("env")
        .arg("LC_ALL=C")
        .arg("stat")
        .arg("-L")
        .arg("-c")
        .arg("%a %u %g")
        .arg("--")
        .arg(&calico.run_dir);
    let (run_dir, run_dir_stat, run_dir_missing) =
        match run_when_reachable(transport, &stat, ssh_patience).await {
            Ok(output) if output.success() => match RunDirStat::parse(&output.stdout) {
                Some(observed) => {
                    let judgement = judge_run_dir(Some(&observed), calico);
                    (
                        check_result(CheckName::RunDirPermissions, node, judgement, started),
                        Some(observed),
                        false,
                    )
                }
                None => {
                    let message = format!(
                        "`stat` printed {:?}, not `mode uid gid`",
                        output.stdout.trim()
                    );
                    (
                        CheckResult::error(
                            CheckName::RunDirPermissions,
                            node,
                            message,
                            started.elapsed(),
                        ),
                        None,
                        false,
                    )
                }
            },
            Ok(output) if output.stderr.contains(NO_SUCH_FILE) => (
                check_result(
                    CheckName::RunDirPermissions,
                    node,
                    judge_run_dir(None, calico),
                    started,
                ),
                None,
                true,
            ),
            Ok(output) => (
                command_error(CheckName::RunDirPermissions, node, &stat, &output, started),
                None,
                false,
            ),
            Err(error) => (
                host_error(CheckName::RunDirPermissions, node, &error, started),
                None,
                false,
            ),
        };
    HostResults {
        tmpfiles,
        run_dir,
        tmpfiles_content,
        run_dir_stat,
        run_dir_missing,
    }
}

fn command_error(
    name: CheckName,
    node: &str,
    command: &ShellCommand,
    output: &crate::host::CommandOutput,
    started: Instant,
) -> CheckResult {
    let message = format!(
        "`{}` exited {} on the node: {}",
        command.render(None),
        output.exit_status,
        output.stderr.trim()
    );
    CheckResult::error(name, node, message, started.elapsed())
}

fn host_error(name: CheckName, node: &str, error: &HostError, started: Instant) -> CheckResult {
    CheckResult::error(name, node, error.to_string(), started.elapsed())
}

/// The probe pods of one run: two on the node under test (for same-node traffic) and
/// one on every other node.
#[derive(Debug, Clone)]
pub struct ProbePlan {
    pub run_id: String,
    pub node: String,
    pub requests: Vec<ProbeRequest>,
}

impl ProbePlan {
    pub fn new(run_id: &str, node: &str, others: &[String]) -> Self {
        let mut requests: Vec<ProbeRequest> = (0..2)
            .map(|index| ProbeRequest {
                name: probe_pod_name(run_id, node, index),
                node: node.into(),
            })
            .collect();
        requests.extend(others.iter().map(|other| ProbeRequest {
            name: probe_pod_name(run_id, other, 0),
            node: other.clone(),
        }));
        ProbePlan {
            run_id: run_id.into(),
            node: node.into(),
            requests,
        }
    }
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
) -> Result<ProbeFleet, String> {
    let settings = &inventory.probe;
    let refused = cluster
        .create_probes(settings, &plan.run_id, &plan.requests)
        .await
        .map_err(|e| e.to_string())?;
    let expected = plan.requests.len() - refused.len();
    let wait = cluster.wait_for_probes(&settings.namespace, &plan.run_id, expected);
    let mut fleet = match tokio::time::timeout(inventory.timeouts.probe_ready, wait).await {
        Ok(fleet) => fleet,
        Err(_) => cluster
            .probe_fleet_now(&settings.namespace, &plan.run_id, &plan.requests)
            .await
            .map_err(|e| e.to_string())?,
    };
    fleet.broken.extend(refused);
    Ok(fleet)
}

/// One directed probe of the plan.
#[derive(Debug, Clone)]
struct Pair {
    from: ReadyProbe,
    to: ReadyProbe,
    same_node: bool,
}

/// Runs the same-node and cross-node probes. Failed probes are retried until the
/// connectivity deadline only when calico-node is Ready (routes may still be arriving);
/// when it is not, the first answer is the verdict — waiting cannot fix it.
pub async fn check_connectivity(
    cluster: &Cluster,
    inventory: &Inventory,
    plan: &ProbePlan,
    fleet: Result<ProbeFleet, String>,
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
                    message.clone(),
                    started.elapsed(),
                ),
                CheckResult::error(
                    CheckName::CrossNodePodConnectivity,
                    node,
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

    let deadline = Instant::now() + inventory.timeouts.connectivity;
    let outcomes = probe_until_settled(
        cluster,
        inventory,
        &fleet.namespace,
        pairs,
        calico_ready,
        deadline,
    )
    .await;
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
            if !could_not_run.is_empty() && !matches!(verdict, Verdict::Failed(_)) {
                verdict = Verdict::Error(format!(
                    "{what} probes could not run: {}",
                    could_not_run.join("; ")
                ));
            }
            let mut result = CheckResult::new(name, node, verdict, evidence, started.elapsed());
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
enum ProbeRun {
    Ran(ProbeOutcome),
    /// The exec itself failed (API error): nothing is known about the network.
    CouldNotRun(String),
}

async fn probe_until_settled(
    cluster: &Cluster,
    inventory: &Inventory,
    namespace: &str,
    pairs: Vec<Pair>,
    retry: bool,
    deadline: Instant,
) -> Vec<(Pair, ProbeRun)> {
    let mut done: Vec<(Pair, ProbeRun)> = Vec::new();
    let mut pending: Vec<(Pair, u32)> = pairs.into_iter().map(|p| (p, 0)).collect();
    loop {
        let round = futures::stream::iter(pending.drain(..))
            .map(|(pair, attempts)| async move {
                let run = probe_once(cluster, inventory, namespace, &pair, attempts + 1).await;
                (pair, run)
            })
            .buffer_unordered(PROBE_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        for (pair, run) in round {
            let failed = matches!(&run, ProbeRun::Ran(outcome) if !outcome.succeeded());
            let attempts = match &run {
                ProbeRun::Ran(outcome) => outcome.attempts,
                ProbeRun::CouldNotRun(_) => 1,
            };
            if failed && retry && Instant::now() + PROBE_RETRY_PAUSE < deadline {
                pending.push((pair, attempts));
            } else {
                done.push((pair, run));
            }
        }
        if pending.is_empty() {
            return done;
        }
        tokio::time::sleep(PROBE_RETRY_PAUSE).await;
    }
}

fn probe_url(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{port}/hostname")
    } else {
        format!("http://{ip}:{port}/hostname")
    }
}

async fn probe_once(
    cluster: &Cluster,
    inventory: &Inventory,
    namespace: &str,
    pair: &Pair,
    attempt: u32,
) -> ProbeRun {
    let url = probe_url(&pair.to.ip, inventory.probe.port);
    let seconds = PROBE_ATTEMPT_TIMEOUT.as_secs().to_string();
    let argv: Vec<String> = inventory
        .probe
        .client_command
        .iter()
        .map(|word| {
            word.replace("{url}", &url)
                .replace("{timeout_seconds}", &seconds)
        })
        .collect();
    // The exec round trip gets the curl's own limit plus time for the API server.
    let exec = tokio::time::timeout(
        PROBE_ATTEMPT_TIMEOUT * 3,
        cluster.exec(namespace, &pair.from.name, &argv),
    );
    let result = match exec.await {
        Err(_) => {
            return ProbeRun::CouldNotRun(format!(
                "exec did not finish within {:?}",
                PROBE_ATTEMPT_TIMEOUT * 3
            ))
        }
        Ok(Err(error)) => return ProbeRun::CouldNotRun(error.to_string()),
        Ok(Ok(output)) if output.exit_code == 0 => match output.stdout.trim().parse::<u16>() {
            Ok(code) => Ok(code),
            Err(_) => Err(format!(
                "the client printed {:?}, not an HTTP status",
                output.stdout.trim()
            )),
        },
        Ok(Ok(output)) => {
            let said = output.stderr.trim();
            Err(if said.is_empty() {
                format!("exit {}", output.exit_code)
            } else {
                said.to_string()
            })
        }
    };
    ProbeRun::Ran(ProbeOutcome {
        from_node: pair.from.node.clone(),
        from_pod: pair.from.name.clone(),
        to_node: pair.to.node.clone(),
        to_pod: pair.to.name.clone(),
        url,
        result,
        attempts: attempt,
    })
}

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
    if inventory.node(node).is_none() {
        return Err(GateError::UnknownNode {
            node: node.into(),
            inventory: inventory.file.clone(),
            known: inventory.node_names().join(", "),
        });
    }
    let started_at = Timestamp::now();
    let recorder = Recorder::new(node, progress);
    let interrupted = tokio::select! {
        () = diagnose_steps(inventory, node, &recorder) => false,
        () = cancel.cancelled() => true,
    };
    if interrupted {
        recorder.error_remaining(&DIAGNOSE_CHECKS, "the run was interrupted");
    }
    let mut report = recorder.into_report(false, started_at, None);
    report.interrupted = interrupted;
    Ok(report)
}

async fn diagnose_steps(inventory: &Inventory, node: &str, recorder: &Recorder<'_>) {
    let calico = &inventory.calico;
    let transport = ssh_transport(inventory, node).expect("the node is in the inventory");
    let cluster_side = async {
        let cluster = match connect(inventory).await {
            Ok(cluster) => cluster,
            Err(error) => return Err(error.to_string()),
        };
        if let Ok(current) = cluster.node(node).await {
            recorder.note(format!(
                "node: {}",
                cluster::describe_ready_condition(&current)
            ));
        }
        let since = crashloop_window_start(None);
        Ok(check_calico(&cluster, inventory, node, None, since, DIAGNOSE_SNAPSHOT).await)
    };
    let host_side = async {
        let files = drift_checks(&transport, node, calico).await;
        let started = Instant::now();
        let network = node_network_state(&transport, calico).await;
        (files, network, started)
    };
    let (calico_results, (files, network, network_started)) = tokio::join!(
        recorder.timed("read calico-node from the API", cluster_side),
        recorder.timed("read the node over SSH", host_side),
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
                results.push(CheckResult::error(
                    name,
                    node,
                    error.clone(),
                    Duration::ZERO,
                ));
            }
        }
    }
    let diagnosis = diagnose::diagnose(&findings, calico).or_else(|| {
        network
            .bgp_output()
            .and_then(|output| diagnose::diagnose_bgp(node, output, calico))
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

/// How many nodes the drift check reads at once. Each is one SSH connection and three
/// short commands; eight keeps a large cluster's sweep quick without a thundering herd on
/// a bastion or on sshd's MaxStartups (10 by default).
const DRIFT_CONCURRENCY: usize = 8;

/// The checks of `drift`, in report order.
pub const DRIFT_CHECKS: [CheckName; 3] = [
    CheckName::TmpfilesConfigPresent,
    CheckName::RunDirAfterNextBoot,
    CheckName::RunDirPermissions,
];

/// Checks every node of the inventory, without rebooting any, for the state that breaks
/// calico-node at the next boot: the tmpfiles.d file, what systemd-tmpfiles will make of
/// the run directory, and the directory as it is now. Nodes run in parallel (at most
/// [`DRIFT_CONCURRENCY`] at once), each within the inventory's SSH deadline; a node that
/// cannot be reached is an error for that node alone.
pub async fn drift(
    inventory: &Inventory,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Vec<NodeReport> {
    let nodes = inventory.node_names();
    let sweep = futures::stream::iter(nodes.iter())
        .map(|node| drift_node(inventory, node, progress))
        .buffer_unordered(DRIFT_CONCURRENCY)
        .collect::<Vec<NodeReport>>();
    let mut reports = tokio::select! {
        reports = sweep => reports,
        () = cancel.cancelled() => {
            nodes.iter().map(|node| {
                let recorder = Recorder::new(node, progress);
                recorder.error_remaining(&DRIFT_CHECKS, "the run was interrupted");
                let mut report = recorder.into_report(false, Timestamp::now(), None);
                report.interrupted = true;
                report
            }).collect()
        }
    };
    // Inventory order, so reports and JUnit read the same from run to run.
    reports.sort_by_key(|r| nodes.iter().position(|n| *n == r.node));
    reports
}

async fn drift_node(inventory: &Inventory, node: &str, progress: &dyn Progress) -> NodeReport {
    let started_at = Timestamp::now();
    let recorder = Recorder::new(node, progress);
    let transport = ssh_transport(inventory, node).expect("the node is in the inventory");
    let deadline = inventory.timeouts.ssh * 2;
    let checks = drift_checks(&transport, node, &inventory.calico);
    match tokio::time::timeout(
        deadline,
        recorder.timed("read the node's Calico state over SSH", checks),
    )
    .await
    {
        Ok((results, _)) => results.into_iter().for_each(|r| recorder.record(r)),
        Err(_) => recorder.error_remaining(
            &DRIFT_CHECKS,
            &format!("{node} did not answer within {deadline:?}"),
        ),
    }
    recorder.into_report(false, started_at, None)
}

/// The drift checks of one node, and what they found, for the diagnosis.
async fn drift_checks(
    transport: &dyn Transport,
    node: &str,
    calico: &CalicoExpectations,
) -> (Vec<CheckResult>, Findings) {
    // A node under a drift sweep is up: one connection attempt, no waiting for sshd.
    let host = check_host(transport, node, calico, Duration::ZERO).await;
    let started = Instant::now();
    let cat_config = ShellCommand::new("env")
        .arg("LC_ALL=C")
        .arg("systemd-tmpfiles")
        .arg("--cat-config");
    let mut next_boot = match transport.run(&cat_config).await {
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
                    calico.tmpfiles_file
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
        node: node.into(),
        calico_namespace: calico.namespace.clone(),
        run_dir: host.run_dir_stat.clone(),
        run_dir_missing: host.run_dir_missing,
        tmpfiles_content: host.tmpfiles_content.clone(),
        ..Default::default()
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
    fn a_stale_ready_status_from_before_the_reboot_does_not_count() {
        let pod = |uid: &str, container: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "calico-node-x", "uid": uid},
                "status": {"containerStatuses": [{"name": "calico-node", "image": "calico/node", "imageID": "",
                    "ready": true, "restartCount": 3, "containerID": container}]},
            }))
            .unwrap()
        };
        let baseline = CalicoBaseline::of(Some(&pod("u1", "lab://c-3")));
        assert!(!baseline.is_superseded_by(&pod("u1", "lab://c-3")));
        assert!(baseline.is_superseded_by(&pod("u1", "lab://c-4")));
        assert!(baseline.is_superseded_by(&pod("u2", "lab://c-3")));
    }

    #[test]
    fn ipv6_probe_addresses_are_bracketed() {
        assert_eq!(
            probe_url("198.19.1.2", 8080),
            "http://198.19.1.2:8080/hostname"
        );
        assert_eq!(probe_url("fd00::2", 8080), "http://[fd00::2]:8080/hostname");
    }
}
