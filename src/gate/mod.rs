//! The gate orders one node's verification: take the reboot lock → preflight → (drain) →
//! record the boot → reboot → wait for the node to go down and come back on a new boot →
//! the checks → cleanup (probe pods, uncordon when clean, release the lock). It owns
//! every deadline (the waits in `cluster` have none of their own) and times every step,
//! so a report says where the minutes went.
//!
//! The steps live beside this file: `lock`, `preflight` and `drain` guard the reboot;
//! `calico` (calico-node through the API), `host_state` (the node over SSH) and
//! `connectivity` (probe pods) read what the checks judge; `rolling` repeats a verify
//! node by node; `drift` and `node_diagnosis` are the runs that reboot nothing.
//!
//! A check that could not run is an `<error>`, never a pass: when a step the later checks
//! depend on fails (the reboot was refused, the node never came back), the checks after
//! it are recorded as errors that say why they did not run.

use crate::checks::{
    judge_bgp, judge_boot_id, judge_calico_ready, judge_connectivity, judge_crashloop,
    judge_next_boot, judge_node_ready, judge_node_tmpfiles, judge_run_dir, judge_tmpfiles,
    CalicoObservation, CheckName, CheckResult, ErrorKind, Evidence, Judgement, ProbeOutcome,
    RunDirStat, Unobserved, Verdict,
};
use crate::cluster::probes::{probe_pod_name, ProbeFleet, ProbeRequest, ReadyProbe};
use crate::cluster::{self, Cluster};
use crate::diagnose::{self, Findings, NodeShell};
use crate::expectations::{
    needs_deployment, resolve, CalicoExpectations, ExpectationError, TmpfilesDeclaration,
    CALICO_NODE_DAEMONSET,
};
use crate::host::{HostError, RebootOutcome, ShellCommand, SshTransport, Transport};
use crate::inventory::{CalicoSettings, Inventory, NodeEntry};
use crate::report::{NodeReport, RunIdentity, StepTiming};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::wait::Condition;
use kube::runtime::{watcher, WatchStreamExt};
use phase::{Owed, Phase};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

mod calico;
mod connectivity;
mod drain;
mod drift;
mod host_state;
pub mod lock;
mod mesh;
mod node_diagnosis;
mod phase;
mod preflight;
mod reboot;
mod recorder;
mod rolling;
pub mod sweep;
mod verify;

pub use calico::{
    calico_expectations, check_calico, CalicoBaseline, CalicoLookupError, CalicoResults,
};
pub use connectivity::{check_connectivity, start_probes, ProbePlan, SharedProbes};
pub use drift::{drift, DRIFT_CHECKS};
pub use host_state::{check_bgp, check_host, node_network_state, HostResults, NodeNetworkState};
pub use lock::LockSlot;
pub use mesh::mesh;
pub use node_diagnosis::{diagnose_node, DIAGNOSE_CHECKS};
pub use reboot::{crashloop_window_start, reboot_node, RebootBaseline};
use recorder::{check_result, Recorder};
pub use rolling::{plan as plan_rolling, rolling, RollingRequest};
pub use verify::verify;

/// How many probe execs run at once (each reaches all of its pod's targets). Each is an
/// exec stream through the API server; cilium-cli runs its connectivity scenarios with
/// similar modest parallelism to stay polite to the control plane of a production
/// cluster.
const PROBE_CONCURRENCY: usize = 16;

/// The longest one curl may take. Pod-to-pod traffic inside a cluster answers in
/// milliseconds; five seconds tells a dropped packet from a slow one, and leaves room
/// for retries inside the connectivity deadline.
const PROBE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The probe client's connect timeout while calico-node is Ready: a pod-to-pod SYN is
/// answered in well under a millisecond, and two seconds leave room for one lost SYN to
/// be sent again before the pair is tried anew.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The connect timeout once calico-node is known broken on the node (not Ready,
/// crash-looping): the verdict is already failed, and the probes only say which pairs
/// are cut, so they need not wait.
const PROBE_CONNECT_TIMEOUT_WHEN_BROKEN: Duration = Duration::from_millis(500);

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
    #[error("{node} is protected in {inventory} (the control plane, typically): name it with --allow-protected to reboot it")]
    Protected { node: String, inventory: PathBuf },
    #[error("--nodes names {node} twice: a rolling update reboots each node once")]
    DuplicateNode { node: String },
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
    fn step_finished(&self, _node: &str, _step: &str, _took: Duration) {}
    fn check_finished(&self, _result: &CheckResult) {}
    /// Whether [`Progress::report_so_far`] is wanted (building it costs a copy).
    fn keeps_reports_so_far(&self) -> bool {
        false
    }
    /// A node's report as it stands after every change, marked interrupted, with the
    /// checks still to come as errors: what a front end writes if it must end the run
    /// before the gate returns (a second Ctrl-C).
    fn report_so_far(&self, _report: &NodeReport) {}
}

/// Shows nothing.
pub struct Quiet;
impl Progress for Quiet {}

/// A front end's `Progress` that also keeps each node's report so far, for the report
/// a run cut short by a second signal must still write.
pub struct KeepingReports<'a> {
    shown: &'a dyn Progress,
    reports: std::sync::Arc<crate::report::ReportsSoFar>,
}

impl<'a> KeepingReports<'a> {
    pub fn new(
        shown: &'a dyn Progress,
        reports: std::sync::Arc<crate::report::ReportsSoFar>,
    ) -> Self {
        KeepingReports { shown, reports }
    }
}

impl Progress for KeepingReports<'_> {
    fn step_started(&self, node: &str, step: &str) {
        self.shown.step_started(node, step);
    }
    fn step_finished(&self, node: &str, step: &str, took: Duration) {
        self.shown.step_finished(node, step, took);
    }
    fn check_finished(&self, result: &CheckResult) {
        self.shown.check_finished(result);
    }
    fn keeps_reports_so_far(&self) -> bool {
        true
    }
    fn report_so_far(&self, report: &NodeReport) {
        self.reports.keep(report.clone());
    }
}

#[derive(Debug, Clone)]
pub struct VerifyRequest {
    pub node: String,
    /// Reboot the node first (otherwise verify it as it is).
    pub reboot: bool,
    /// Reboot even when the preflight finds the cluster degraded (recorded, loudly).
    pub force: bool,
    /// Allow rebooting a node the inventory marks protected.
    pub allow_protected: bool,
    /// Cordon and drain the node before the reboot; uncordon it only if every check
    /// passed.
    pub drain: bool,
}

impl VerifyRequest {
    /// What this run will do, which decides the permissions it needs.
    pub fn needs(&self) -> Vec<crate::rbac::Need> {
        use crate::rbac::Need;
        let mut needs = vec![Need::Verify];
        if self.reboot {
            needs.push(Need::Reboot);
        }
        if self.drain {
            needs.push(Need::Drain);
        }
        needs
    }

    /// The checks this request reports, in report order, for nodes of `kind`.
    pub fn expected_checks(&self, kind: crate::inventory::NodeKind) -> Vec<CheckName> {
        let mut checks = CheckName::for_verify(self.reboot, kind);
        if self.reboot && self.drain {
            checks.insert(1, CheckName::NodeDrained);
        }
        checks
    }
}

/// The longest one node's run can last, by the inventory's deadlines: the wait for the
/// lock, the preflight's probes, the drain, the reboot and both waits on the node, the
/// checks, and the cleanup steps, each to its deadline. A run that has not ended by
/// then is stuck past all of them, and nothing of its is worth keeping: its lock is let
/// go ([`work_under_lock`]), and a later run sweeps what it left.
pub fn longest_run(inventory: &Inventory) -> Duration {
    inventory.lock.wait + work_under_lock(inventory)
}

/// The longest a run's work under the lock can last, from when it took the lock.
pub fn work_under_lock(inventory: &Inventory) -> Duration {
    let t = &inventory.timeouts;
    // Each step that reaches the node (the reachability proof, the boot record, the
    // reboot command, the host state, the network state) within one command deadline.
    let commands = t.ssh * 5;
    let preflight = t.probe_ready + t.connectivity;
    let reboot = t.node_not_ready + t.node_ready;
    let checks = t.calico_ready.max(t.probe_ready) + t.connectivity;
    // Probe pods, node shells, the uncordon and the release.
    let cleanup = CLEANUP_TIMEOUT * 4;
    commands + preflight + t.drain + reboot + checks + cleanup
}

/// A short random ID for this run's probe pods: unique enough that two runs never share
/// a pod, short enough to fit a pod name.
pub fn new_run_id() -> String {
    format!("{:08x}", crate::host::random_u64() as u32)
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

/// How a run reaches one node's host, and how an engineer would reach it to apply a fix.
pub struct NodeAccess {
    pub transport: Box<dyn Transport>,
    pub shell: NodeShell,
}

/// The fix commands' way onto a node of the inventory: SSH to its host, or `kubectl
/// debug` for a node reached through a node shell.
pub fn fix_shell(inventory: &Inventory, entry: &NodeEntry) -> NodeShell {
    match inventory.ssh_target(entry) {
        Some(target) => NodeShell::of(&target),
        None => NodeShell::kubectl_debug(
            &entry.name.value,
            &inventory.node_shell.image,
            &inventory.node_shell.namespace,
        ),
    }
}

/// The transport the inventory chooses for a node. A node shell goes through the API
/// server, so it needs `cluster`; its pods carry `run_id`, which the caller owes a
/// cleanup for.
///
/// # Errors
/// The node is reached through a node shell and there is no connection to the API.
pub fn node_access(
    inventory: &Inventory,
    entry: &NodeEntry,
    cluster: Option<&Cluster>,
    run_id: &str,
) -> Result<NodeAccess, HostError> {
    let shell = fix_shell(inventory, entry);
    let node = entry.name.value.as_str();
    let transport: Box<dyn Transport> = match (inventory.ssh_target(entry), cluster) {
        (Some(target), _) => Box::new(SshTransport::new(target, inventory.timeouts.ssh)),
        (None, Some(cluster)) => Box::new(crate::node_shell::NodeShellTransport::new(
            cluster.clone(),
            inventory.node_shell.clone(),
            run_id,
            node,
            inventory.timeouts.ssh,
            inventory.timeouts.probe_ready,
        )),
        (None, None) => {
            return Err(HostError::NodeShell {
                node: node.to_string(),
                action: "reaching the node".into(),
                reason: "it is reached through a node shell, which needs the API server, and there is no connection to it".into(),
                before_sending: true,
            })
        }
    };
    Ok(NodeAccess { transport, shell })
}

/// The node, as the inventory lists it.
///
/// # Errors
/// The inventory does not list it.
pub fn check_node<'a>(inventory: &'a Inventory, node: &str) -> Result<&'a NodeEntry, GateError> {
    inventory.node(node).ok_or_else(|| GateError::UnknownNode {
        node: node.to_string(),
        inventory: inventory.file.clone(),
        known: inventory.node_names().join(", "),
    })
}

/// Whether a verify request can run at all, before anything talks to the cluster.
///
/// # Errors
/// The node is not in the inventory, or is protected and a reboot was asked without
/// `--allow-protected`.
pub fn check_request(inventory: &Inventory, request: &VerifyRequest) -> Result<(), GateError> {
    let entry = check_node(inventory, &request.node)?;
    if request.reboot && entry.protected && !request.allow_protected {
        return Err(GateError::Protected {
            node: request.node.clone(),
            inventory: inventory.file.clone(),
        });
    }
    Ok(())
}
