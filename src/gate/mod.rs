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
use crate::report::{NodeReport, StepTiming};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::wait::Condition;
use kube::runtime::{watcher, WatchStreamExt};
use phase::{Owed, Phase};
use std::hash::{BuildHasher, Hasher};
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
mod node_diagnosis;
mod phase;
mod preflight;
mod rolling;

pub use calico::{
    calico_expectations, check_calico, CalicoBaseline, CalicoLookupError, CalicoResults,
};
pub use connectivity::{check_connectivity, start_probes, ProbePlan};
pub use drift::{drift, DRIFT_CHECKS};
pub use host_state::{check_bgp, check_host, node_network_state, HostResults, NodeNetworkState};
pub use node_diagnosis::{diagnose_node, DIAGNOSE_CHECKS};
pub use rolling::{plan as plan_rolling, rolling, RollingRequest};

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

    /// The checks this request reports, in report order.
    pub fn expected_checks(&self) -> Vec<CheckName> {
        let mut checks = CheckName::for_verify(self.reboot);
        if self.reboot && self.drain {
            checks.insert(1, CheckName::NodeDrained);
        }
        checks
    }
}

/// Collects results and step timings; shared by the steps of one node's run.
struct Recorder<'a> {
    node: String,
    /// The checks this run reports, in order; any not recorded at the end is an error.
    expected: Vec<CheckName>,
    results: Mutex<Vec<CheckResult>>,
    steps: Mutex<Vec<StepTiming>>,
    notes: Mutex<Vec<String>>,
    last_verdict: Mutex<Option<Instant>>,
    progress: &'a dyn Progress,
}

impl<'a> Recorder<'a> {
    fn new(node: &str, progress: &'a dyn Progress, expected: &[CheckName]) -> Self {
        Recorder {
            node: node.into(),
            expected: expected.to_vec(),
            results: Mutex::default(),
            steps: Mutex::default(),
            notes: Mutex::default(),
            last_verdict: Mutex::default(),
            progress,
        }
    }

    /// Every check recorded so far passed, or had nothing to judge.
    fn all_passed(&self) -> bool {
        self.results
            .lock()
            .expect("recorder lock")
            .iter()
            .all(CheckResult::passed)
    }

    fn record(&self, result: CheckResult) {
        let result = result.bounded();
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
    fn error_remaining(&self, kind: ErrorKind, why: &str) {
        let missing: Vec<CheckName> = {
            let results = self.results.lock().expect("recorder lock");
            self.expected
                .iter()
                .copied()
                .filter(|name| !results.iter().any(|r| r.name == *name))
                .collect()
        };
        for name in missing {
            self.record(CheckResult::error(
                name,
                &self.node,
                kind,
                why.to_string(),
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
    check_request(inventory, request)?;
    let started_at = Timestamp::now();
    let recorder = Recorder::new(&request.node, progress, &request.expected_checks());
    let run_id = new_run_id();
    let mut state = RunState::default();
    let lock_lost = state.lock_lost.clone();
    let interrupted = tokio::select! {
        () = verify_steps(inventory, request, &recorder, &run_id, &mut state) => false,
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
    let mut report = recorder.into_report(request.reboot, started_at, state.ready_at);
    report.interrupted = interrupted;
    Ok(report)
}

/// Performs a cleanup plan, each step within its own deadline, saying in the report what
/// could not be done and how to do it by hand.
async fn clean_up(
    plan: Vec<phase::Cleanup>,
    recorder: &Recorder<'_>,
    state: &mut RunState,
    inventory: &Inventory,
) {
    use phase::Cleanup;
    for step in plan {
        match step {
            Cleanup::DeleteProbePods { run_ids } => {
                let Some(cluster) = &state.cluster else {
                    continue;
                };
                let namespace = &inventory.probe.namespace;
                let runs: Vec<&str> = run_ids.iter().map(String::as_str).collect();
                let cleanup =
                    tokio::time::timeout(CLEANUP_TIMEOUT, cluster.delete_probes(namespace, &runs));
                match recorder.timed("delete probe pods", cleanup).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => recorder.note(format!(
                        "probe pods of run {} were not deleted: {error}",
                        run_ids.join(", ")
                    )),
                    Err(_) => recorder.note(format!(
                        "probe pods were not deleted within {CLEANUP_TIMEOUT:?}: delete them with `kubectl -n {namespace} delete pod -l {}` and the run ids {}",
                        cluster::probes::RUN_LABEL,
                        run_ids.join(", ")
                    )),
                }
            }
            Cleanup::Uncordon { node, note } => {
                let Some(cluster) = &state.cluster else {
                    continue;
                };
                if let Some(note) = note {
                    recorder.note(note);
                }
                let uncordon =
                    tokio::time::timeout(CLEANUP_TIMEOUT, cluster.set_unschedulable(&node, false));
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

/// What the steps of a run leave for its cleanup, whether they finish or are cut short.
#[derive(Default)]
struct RunState {
    cluster: Option<Cluster>,
    lock: Option<lock::HeldLock>,
    ready_at: Option<Instant>,
    ledger: Ledger,
    /// Cancelled by the lock's renewer if the hold lapses.
    lock_lost: CancellationToken,
}

/// How far a run got and what it made on the way: all its cleanup is decided from this.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    phase: Phase,
    owed: Vec<Owed>,
}

/// The refusal of a run whose identity lacks permissions: each missing one, and where to
/// get them.
fn missing_permissions(missing: &[crate::rbac::Access]) -> String {
    let list: Vec<String> = missing.iter().map(crate::rbac::Access::describe).collect();
    format!(
        "postflight may not {}: nothing was locked, cordoned or created; grant what `postflight rbac` prints (kubectl apply -f -)",
        list.join(", ")
    )
}

async fn verify_steps(
    inventory: &Inventory,
    request: &VerifyRequest,
    recorder: &Recorder<'_>,
    run_id: &str,
    state: &mut RunState,
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
    // An API server that does not answer is one error, said once, before anything else.
    if let Err(error) = recorder.timed("reach the API server", cluster.ping()).await {
        return recorder.error_remaining(error.kind(), &error.to_string());
    }
    // Before anything is locked, cordoned or created: a missing permission is one clear
    // error now, not a 403 halfway through a reboot.
    let accesses = crate::rbac::required(inventory, &request.needs());
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
    // From here on the run may create probe pods, which cleanup then owes; the
    // preflight's carry a run id of their own.
    state.ledger.owed.push(Owed::ProbePods {
        run_id: run_id.to_string(),
    });
    let transport = ssh_transport(inventory, node).expect("the node is in the inventory");
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
        let holder = lock::holder_identity(run_id);
        match recorder
            .timed(
                "take the reboot lock",
                lock::acquire(&cluster, inventory, &holder, state.lock_lost.clone()),
            )
            .await
        {
            Ok(held) => {
                state.lock = Some(held);
                state.ledger.owed.push(Owed::Lease);
                state.ledger.phase = Phase::Locked;
            }
            Err(error) => return recorder.error_remaining(error.kind(), &error.to_string()),
        }
        match preflight_then_reboot(
            inventory,
            &cluster,
            &transport,
            node,
            recorder,
            run_id,
            RebootOptions {
                calico,
                force: request.force,
                drain: request.drain,
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
    let probes = ProbePlan::new(run_id, node, &others);
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
        shell: NodeShell::of(transport.target()),
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

/// Checks the cluster is whole, reboots a node and waits for it to come back, as
/// `verify --reboot` does (without --force), for a front
/// end that runs the checks one by one (the cluster suite). Returns
/// `node_ready_after_reboot` and `boot_id_changed` (or errors for the checks that could
/// not run), the timed steps, and the baseline the later checks compare against — None
/// when the node did not come back.
pub async fn reboot_node(
    inventory: &Inventory,
    calico: &CalicoExpectations,
    cluster: &Cluster,
    transport: &dyn Transport,
    node: &str,
) -> (Vec<CheckResult>, Vec<StepTiming>, Option<RebootBaseline>) {
    let recorder = Recorder::new(node, &Quiet, &CheckName::for_verify(true));
    let baseline = preflight_then_reboot(
        inventory,
        cluster,
        transport,
        node,
        &recorder,
        &new_run_id(),
        RebootOptions {
            calico,
            force: false,
            drain: false,
            ledger: &mut Ledger::default(),
        },
    )
    .await;
    let results = recorder.results.into_inner().expect("recorder lock");
    (
        results,
        recorder.steps.into_inner().expect("recorder lock"),
        baseline,
    )
}

/// Refuses to reboot into a degraded cluster (unless forced, which is noted), then
/// reboots and waits; records `cluster_healthy_before_reboot` on the way. None: the node
/// was not rebooted or did not come back, and the remaining checks are recorded as errors.
async fn preflight_then_reboot(
    inventory: &Inventory,
    cluster: &Cluster,
    transport: &dyn Transport,
    node: &str,
    recorder: &Recorder<'_>,
    run_id: &str,
    options: RebootOptions<'_>,
) -> Option<RebootBaseline> {
    let RebootOptions {
        calico,
        force,
        drain: drain_first,
        ledger,
    } = options;
    let started = Instant::now();
    ledger.owed.push(Owed::ProbePods {
        run_id: preflight::preflight_run_id(run_id),
    });
    let problems = recorder
        .timed(
            "preflight: is the cluster whole?",
            preflight::cluster_problems(cluster, inventory, calico, node, run_id),
        )
        .await;
    if problems.is_empty() {
        let evidence = Evidence::new(
            "cluster before the reboot",
            "whole",
            "API answers, every node and calico-node Ready, pod mesh complete",
        );
        recorder.record(CheckResult::new(
            CheckName::ClusterHealthyBeforeReboot,
            node,
            Verdict::Passed,
            vec![evidence],
            started.elapsed(),
        ));
    } else {
        let message = format!(
            "the cluster is degraded before the reboot: {}",
            problems.join("; ")
        );
        recorder.record(CheckResult::error(
            CheckName::ClusterHealthyBeforeReboot,
            node,
            ErrorKind::Refused,
            message,
            started.elapsed(),
        ));
        if !force {
            let why = "the preflight refused the reboot (the cluster is already degraded; --force overrides)";
            recorder.error_remaining(ErrorKind::Refused, why);
            return None;
        }
        recorder.note(format!(
            "--force: rebooted {node} although the preflight found the cluster degraded"
        ));
    }
    ledger.phase = Phase::Preflighted;
    if drain_first {
        let started = Instant::now();
        // Nothing is drained for a reboot that cannot be sent: the transport proves it
        // reaches the node (connection, host key, login) with a no-op first.
        if let Err(error) = recorder
            .timed(
                "prove the node can be reached to reboot it",
                transport.run(&ShellCommand::new("true")),
            )
            .await
        {
            recorder.record(CheckResult::error(
                CheckName::NodeDrained,
                node,
                error.kind(),
                format!("not drained: the reboot could not be sent: {error}"),
                started.elapsed(),
            ));
            recorder.error_remaining(
                error.kind(),
                &format!("the node was not rebooted: it cannot be reached to reboot it: {error}"),
            );
            return None;
        }
        // A node someone else cordoned stays cordoned whatever this run finds: the cordon
        // is theirs to lift, not ours.
        let cordoned_before = match cluster.node(node).await {
            Ok(current) => cluster::node_unschedulable(&current),
            Err(error) => {
                recorder.record(CheckResult::error(
                    CheckName::NodeDrained,
                    node,
                    error.kind(),
                    error.to_string(),
                    started.elapsed(),
                ));
                recorder.error_remaining(
                    error.kind(),
                    "the node was not rebooted: it could not be drained",
                );
                return None;
            }
        };
        if cordoned_before {
            recorder.note(format!(
                "{node} was already cordoned before this run; it is left cordoned"
            ));
        }
        // Owed before the drain starts: a run interrupted mid-drain must still uncordon.
        if !cordoned_before {
            ledger.owed.push(Owed::Cordon { node: node.into() });
        }
        ledger.phase = Phase::Cordoned;
        let drained = recorder
            .timed(
                "cordon and drain",
                drain::drain(cluster, node, inventory.timeouts.drain, !cordoned_before),
            )
            .await;
        match drained {
            Ok(evicted) => {
                ledger.phase = Phase::Drained;
                let evidence = Evidence::new(
                    "pods evicted",
                    evicted.to_string(),
                    "every pod a drain moves",
                );
                recorder.record(CheckResult::new(
                    CheckName::NodeDrained,
                    node,
                    Verdict::Passed,
                    vec![evidence],
                    started.elapsed(),
                ));
            }
            Err(why) => {
                // The drain undid its own cordon, or says why it could not.
                ledger
                    .owed
                    .retain(|owed| !matches!(owed, Owed::Cordon { .. }));
                recorder.record(CheckResult::error(
                    CheckName::NodeDrained,
                    node,
                    why.kind(),
                    why.to_string(),
                    started.elapsed(),
                ));
                recorder.error_remaining(
                    why.kind(),
                    "the node was not rebooted: its drain did not finish",
                );
                return None;
            }
        }
    }
    reboot_and_wait(
        inventory, calico, cluster, transport, node, recorder, ledger,
    )
    .await
}

/// How a reboot is prepared.
struct RebootOptions<'a> {
    calico: &'a CalicoExpectations,
    /// Reboot even into a degraded cluster.
    force: bool,
    /// Cordon and drain first.
    drain: bool,
    /// How far the run got and what it made, for its cleanup.
    ledger: &'a mut Ledger,
}

/// Records the boot, reboots the node over SSH, waits for it to go down and to come
/// back Ready on a new boot, and records `node_ready_after_reboot` and `boot_id_changed`.
/// Returns None when the node did not come back (the remaining checks are then recorded
/// as errors).
async fn reboot_and_wait(
    inventory: &Inventory,
    calico: &CalicoExpectations,
    cluster: &Cluster,
    transport: &dyn Transport,
    node: &str,
    recorder: &Recorder<'_>,
    ledger: &mut Ledger,
) -> Option<RebootBaseline> {
    let timeouts = &inventory.timeouts;
    let before = match recorder
        .timed("record the boot ID", cluster.node(node))
        .await
    {
        Ok(before) => before,
        Err(error) => {
            recorder.error_remaining(error.kind(), &error.to_string());
            return None;
        }
    };
    let Some(boot_id) = cluster::boot_id(&before)
        .map(String::from)
        .filter(|id| !id.is_empty())
    else {
        recorder.error_remaining(
            ErrorKind::Error,
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
            recorder.error_remaining(error.kind(), &error.to_string());
            return None;
        }
    };

    let started = Instant::now();
    let command = ShellCommand::operator_text(&inventory.reboot.command);
    // Set before sending: an SSH error mid-command leaves it unknown whether the node is
    // going down, and unknown must count as rebooted.
    let before_reboot = ledger.phase;
    ledger.phase = Phase::RebootSent;
    match recorder
        .timed("issue the reboot", transport.reboot(&command))
        .await
    {
        Ok(RebootOutcome::Issued) => {}
        Ok(RebootOutcome::Refused(output)) => {
            ledger.phase = before_reboot;
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
            recorder.error_remaining(ErrorKind::Refused, "the node was not rebooted");
            return None;
        }
        Err(error) => {
            // Nothing reached the node (no connection, a refused host key, a failed
            // login): it was not rebooted, and a drained node goes back into service.
            if error.before_sending() {
                ledger.phase = before_reboot;
            }
            recorder.error_remaining(
                error.kind(),
                &format!("could not issue the reboot: {error}"),
            );
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
    let went = recorder.timed("wait for the node to go down", down).await;
    if let Ok(Err(refused)) = &went {
        recorder.error_remaining(refused.kind(), &refused.to_string());
        return None;
    }
    if went.is_err() {
        let message = format!(
            "the node stayed Ready on boot {boot_id} for {} after the reboot command: it did not reboot",
            humantime::format_duration(timeouts.node_not_ready)
        );
        let seen = last_seen.lock().expect("last_seen lock").clone();
        fail_node_ready(recorder, node, message, seen.as_ref(), &boot_id, started);
        recorder.error_remaining(ErrorKind::Timeout, "the node did not reboot");
        return None;
    }
    ledger.phase = Phase::Down;

    let back = cluster::is_node_ready().and(cluster::has_boot_id_other_than(&boot_id));
    let up = tokio::time::timeout(
        timeouts.node_ready,
        cluster.wait_for_node(node, back, &last_seen),
    );
    let after = match recorder
        .timed("wait for the node to be Ready on a new boot", up)
        .await
    {
        Ok(Ok(after)) => {
            ledger.phase = Phase::Back;
            after
        }
        Ok(Err(refused)) => {
            recorder.error_remaining(refused.kind(), &refused.to_string());
            return None;
        }
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
            recorder.error_remaining(ErrorKind::Timeout, "the node did not come back");
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
