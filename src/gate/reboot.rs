//! Rebooting a node and proving it came back: the preflight, the optional drain, the
//! reboot command, and the waits for the node to go down and to be Ready on a new boot.

use super::verify::Ledger;
use super::*;
use crate::checks::{judge_restart, ProcessStart};
use crate::inventory::{NodeKind, RunsOn};

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
    /// The containers the node's probe pods ran before the reboot.
    pub probe_containers: Vec<String>,
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
    let recorder = Recorder::new(
        node,
        &Quiet,
        &CheckName::for_verify(true, inventory.reboot.node_kind),
    );
    let run_id = new_run_id();
    let baseline = preflight_then_reboot(
        inventory,
        cluster,
        transport,
        node,
        &recorder,
        RebootOptions {
            calico,
            force: false,
            drain: false,
            ledger: &mut Ledger::default(),
            probes: preflight::ProbeScope {
                run_id: &run_id,
                paired_nodes: &[],
                new_run: true,
                rolling: false,
            },
        },
    )
    .await;
    // The preflight keeps the other nodes' probe pods for a verify's checks after the
    // reboot; a caller that only reboots has no use for them.
    let runs = [run_id.as_str()];
    let cleanup = tokio::time::timeout(
        CLEANUP_TIMEOUT,
        verify::while_unreachable(cluster, || {
            cluster.delete_probes(&inventory.probe.namespace, &runs, inventory.nodes.len() + 1)
        }),
    );
    if !matches!(cleanup.await, Ok(Ok(()))) {
        recorder.note(format!(
            "the preflight's probe pods (run {run_id}) were not deleted: `kubectl -n {} delete pod -l {}={run_id}`",
            inventory.probe.namespace,
            cluster::probes::RUN_LABEL
        ));
    }
    let (results, steps) = recorder.into_parts();
    (results, steps, baseline)
}

/// Refuses to reboot into a degraded cluster (unless forced, which is noted), then
/// reboots and waits; records `cluster_healthy_before_reboot` on the way. None: the node
/// was not rebooted or did not come back, and the remaining checks are recorded as errors.
pub(super) async fn preflight_then_reboot(
    inventory: &Inventory,
    cluster: &Cluster,
    transport: &dyn Transport,
    node: &str,
    recorder: &Recorder<'_>,
    options: RebootOptions<'_>,
) -> Option<RebootBaseline> {
    let RebootOptions {
        calico,
        force,
        drain: drain_first,
        ledger,
        probes,
    } = options;
    let started = Instant::now();
    // The run's probe pods, made here, are already owed: the caller owes its run's.
    let preflight::Preflight { problems, stale } = recorder
        .timed(
            "preflight: is the cluster whole?",
            preflight::cluster_problems(cluster, inventory, calico, node, probes),
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
    let mut baseline = reboot_and_wait(
        inventory, calico, cluster, transport, node, recorder, ledger,
    )
    .await?;
    baseline.probe_containers = stale;
    Some(baseline)
}

/// How a reboot is prepared.
pub(super) struct RebootOptions<'a> {
    pub(super) calico: &'a CalicoExpectations,
    /// Reboot even into a degraded cluster.
    pub(super) force: bool,
    /// Cordon and drain first.
    pub(super) drain: bool,
    /// How far the run got and what it made, for its cleanup.
    pub(super) ledger: &'a mut Ledger,
    /// The probe pods the preflight starts.
    pub(super) probes: preflight::ProbeScope<'a>,
}

/// Records the boot, reboots the node, waits for it to go down and to come back Ready
/// on a new boot, and records `node_ready_after_reboot` and `boot_id_changed` (for a
/// node that is a container, `node_restarted`, proven by its PID 1).
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

    if inventory.reboot.node_kind == NodeKind::Container {
        return restart_container_and_wait(
            inventory,
            cluster,
            transport,
            node,
            recorder,
            ledger,
            (boot_id, calico_before),
        )
        .await;
    }
    let started = Instant::now();
    if !issue_reboot(inventory, transport, node, recorder, ledger, started).await {
        return None;
    }

    let last_seen = Mutex::new(None);
    let down = tokio::time::timeout(
        timeouts.node_not_ready,
        cluster.wait_for_node(node, went_down(&boot_id), &last_seen),
    );
    let went = recorder.timed("wait for the node to go down", down).await;
    if let Ok(Err(refused)) = &went {
        recorder.error_remaining(refused.kind(), &refused.to_string());
        return None;
    }
    if went.is_err() {
        // What the watch last saw may be stale (an API outage, a watch re-established
        // late): only a fresh read can say the node stayed up.
        let fresh = cluster.node(node).await;
        match after_no_down(fresh.as_ref().map_err(|e| e.kind()), &boot_id) {
            AfterNoDown::StayedUp => {
                let message = format!(
                    "the node stayed Ready on boot {boot_id} for {} after the reboot command: it did not reboot",
                    humantime::format_duration(timeouts.node_not_ready)
                );
                let seen = fresh.ok();
                fail_node_ready(recorder, node, message, seen.as_ref(), &boot_id, started);
                recorder.error_remaining(ErrorKind::Timeout, "the node did not reboot");
                return None;
            }
            AfterNoDown::Refused => {
                let error = fresh.expect_err("a refusal is an error");
                recorder.error_remaining(error.kind(), &error.to_string());
                return None;
            }
            // Down after all, or the API cannot say now: the wait for Ready on a new boot
            // decides (a node that never rebooted fails it at its deadline).
            AfterNoDown::WentDown | AfterNoDown::Unknown => {}
        }
    }
    ledger.phase = Phase::Down;

    let back = cluster::is_node_ready().and(cluster::has_boot_id_other_than(&boot_id));
    let step = "wait for the node to be Ready on a new boot";
    let after = match wait_until_back(
        cluster, inventory, node, back, step, &last_seen, recorder, ledger,
    )
    .await
    {
        Comeback::Back(after) => after,
        Comeback::Refused => return None,
        Comeback::TimedOut { seen, last } => {
            let waited = humantime::format_duration(timeouts.node_ready).to_string();
            let message = format!(
                "the node went down after the reboot command and was not Ready on a new boot within {waited}; last seen: {last}"
            );
            record_not_ready(recorder, node, message, seen.as_ref(), started);
            let last_boot = seen.as_ref().and_then(cluster::boot_id).unwrap_or_default();
            recorder.record(check_result(
                CheckName::BootIdChanged,
                node,
                crate::checks::judge_boot_id_not_back(&boot_id, last_boot, &waited),
                started,
            ));
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
        probe_containers: Vec::new(),
    })
}

/// Sends the reboot command, on the node or here as the inventory says, and records
/// why when it was not sent or was refused. Returns whether the node may be going down.
async fn issue_reboot(
    inventory: &Inventory,
    transport: &dyn Transport,
    node: &str,
    recorder: &Recorder<'_>,
    ledger: &mut Ledger,
    started: Instant,
) -> bool {
    let command = inventory.reboot.command_for(node);
    // Set before sending: an error mid-command leaves it unknown whether the node is
    // going down, and unknown must count as rebooted.
    let before_reboot = ledger.phase;
    ledger.phase = Phase::RebootSent;
    recorder.set_reboot_sent(true);
    let sent = async {
        match inventory.reboot.runs_on {
            RunsOn::Node => {
                transport
                    .reboot(&ShellCommand::operator_text(&command))
                    .await
            }
            RunsOn::Local => {
                match crate::host::run_local(node, &command, inventory.timeouts.ssh).await? {
                    output if output.success() => Ok(RebootOutcome::Issued),
                    output => Ok(RebootOutcome::Refused(output)),
                }
            }
        }
    };
    match recorder.timed("issue the reboot", sent).await {
        Ok(RebootOutcome::Issued) => {
            if inventory.reboot.runs_on == RunsOn::Local {
                transport.node_restarted().await;
            }
            true
        }
        Ok(RebootOutcome::Refused(output)) => {
            ledger.phase = before_reboot;
            recorder.set_reboot_sent(false);
            let message = format!(
                "the reboot command `{command}` was refused (exit {}): {}",
                output.exit_status,
                output.stderr.trim()
            );
            recorder.record(CheckResult::new(
                CheckName::NodeReadyAfterReboot,
                node,
                Verdict::Failed(message),
                vec![Evidence::new(
                    "reboot command",
                    format!("exit {}", output.exit_status),
                    "the node goes down",
                )],
                started.elapsed(),
            ));
            recorder.error_remaining(ErrorKind::Refused, "the node was not rebooted");
            false
        }
        Err(error) => {
            // Nothing reached the node (no connection, a refused host key, a failed
            // login, a local command that could not start): it was not rebooted, and a
            // drained node goes back into service.
            if error.before_sending() {
                ledger.phase = before_reboot;
                recorder.set_reboot_sent(false);
            }
            recorder.error_remaining(
                error.kind(),
                &format!("could not issue the reboot: {error}"),
            );
            false
        }
    }
}

/// Pause between reads of a restarting container node's PID 1: the read fails while
/// the node is down, and that is expected.
const RESTART_READ_PAUSE: Duration = Duration::from_millis(500);

/// Reads when the node's PID 1 started, through its transport.
async fn read_pid1_start(transport: &dyn Transport) -> Result<ProcessStart, String> {
    let command = ShellCommand::new("sh").arg("-c").arg(ProcessStart::COMMAND);
    let output = transport.run(&command).await.map_err(|e| e.to_string())?;
    if !output.success() {
        return Err(format!(
            "`{}` exited {}: {}",
            ProcessStart::COMMAND,
            output.exit_status,
            output.stderr.trim()
        ));
    }
    ProcessStart::parse(&output.stdout)
        .ok_or_else(|| format!("`{}` printed no start time", ProcessStart::COMMAND))
}

/// The restart of a node that is a container (kind): its boot ID is the host's and does
/// not change, and its Node may never turn NotReady if the restart is quick. So the
/// restart is proven by the node's PID 1 being a new process, read through the
/// transport, and the node counts as back once it is Ready with a heartbeat posted by
/// the kubelet since the restart. Records `node_ready_after_reboot` and
/// `node_restarted`.
async fn restart_container_and_wait(
    inventory: &Inventory,
    cluster: &Cluster,
    transport: &dyn Transport,
    node: &str,
    recorder: &Recorder<'_>,
    ledger: &mut Ledger,
    (boot_id, calico_before): (String, CalicoBaseline),
) -> Option<RebootBaseline> {
    let timeouts = &inventory.timeouts;
    let pid1_before = match recorder
        .timed("record when PID 1 started", read_pid1_start(transport))
        .await
    {
        Ok(start) => start,
        Err(why) => {
            recorder.error_remaining(
                ErrorKind::Error,
                &format!("the restart could not be proven, so {node} was not restarted: reading PID 1's start failed: {why}"),
            );
            return None;
        }
    };
    let started = Instant::now();
    let restarted_at = Timestamp::now();
    if !issue_reboot(inventory, transport, node, recorder, ledger, started).await {
        return None;
    }
    // What the last read said: a node whose PID 1 was read again unchanged did not
    // restart; a node that could not be read at all is not known to have.
    let last_read: Mutex<Option<Result<ProcessStart, String>>> = Mutex::new(None);
    let new_pid1 = async {
        loop {
            let read = read_pid1_start(transport).await;
            if let Ok(start) = &read {
                if start.ticks_after_boot > pid1_before.ticks_after_boot {
                    return *start;
                }
            }
            *last_read.lock().expect("last read lock") = Some(read);
            tokio::time::sleep(RESTART_READ_PAUSE).await;
        }
    };
    let pid1_after = match recorder
        .timed(
            "wait for a new PID 1 on the node",
            tokio::time::timeout(timeouts.node_not_ready, new_pid1),
        )
        .await
    {
        Ok(start) => start,
        Err(_) => {
            let waited = humantime::format_duration(timeouts.node_not_ready);
            let last = last_read.lock().expect("last read lock").clone();
            if !matches!(last, Some(Ok(_))) {
                let why = match last {
                    Some(Err(why)) => why,
                    _ => "no read finished".to_string(),
                };
                recorder.error_remaining(
                    ErrorKind::Timeout,
                    &format!("the node's PID 1 could not be read for {waited} after the restart command, so whether it restarted is not known: {why}"),
                );
                return None;
            }
            let message = format!(
                "the node's PID 1 still runs since {} {waited} after the restart command: it did not restart",
                pid1_before.started_at(),
            );
            recorder.record(CheckResult::new(
                CheckName::NodeReadyAfterReboot,
                node,
                Verdict::Failed(message),
                vec![Evidence::new(
                    "PID 1 started",
                    pid1_before.started_at(),
                    "a new PID 1",
                )],
                started.elapsed(),
            ));
            recorder.record(check_result(
                CheckName::NodeRestarted,
                node,
                judge_restart(&boot_id, &boot_id, &pid1_before, &pid1_before),
                started,
            ));
            recorder.error_remaining(ErrorKind::Timeout, "the node did not restart");
            return None;
        }
    };
    ledger.phase = Phase::Down;
    // The kubelet's own report since the restart, not a Ready left over from before it:
    // a heartbeat from the new boot's kubelet, which starts after the new PID 1 (both on
    // the node's clock; heartbeats have whole seconds, as the start is taken here).
    let since = pid1_after.timestamp().unwrap_or(restarted_at);
    let last_seen = Mutex::new(None);
    let back = cluster::is_node_ready().and(cluster::has_reported_since(since));
    let step = "wait for the node to be Ready after its restart";
    let after = match wait_until_back(
        cluster, inventory, node, back, step, &last_seen, recorder, ledger,
    )
    .await
    {
        Comeback::Back(after) => after,
        Comeback::Refused => return None,
        Comeback::TimedOut { last, .. } => {
            recorder.record(CheckResult::new(
                CheckName::NodeReadyAfterReboot,
                node,
                Verdict::Failed(format!(
                    "the node was not Ready after its restart within {}; last seen: {last}",
                    humantime::format_duration(timeouts.node_ready)
                )),
                vec![Evidence::new(
                    "Ready condition",
                    last,
                    "Ready=True, reported since the restart",
                )],
                started.elapsed(),
            ));
            recorder.record(check_result(
                CheckName::NodeRestarted,
                node,
                judge_restart(&boot_id, &boot_id, &pid1_before, &pid1_after),
                started,
            ));
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
    let boot_after = cluster::boot_id(&after).unwrap_or_default();
    recorder.record(check_result(
        CheckName::NodeRestarted,
        node,
        judge_restart(&boot_id, boot_after, &pid1_before, &pid1_after),
        started,
    ));
    Some(RebootBaseline {
        boot_id,
        calico: calico_before,
        ready_since: Some(since),
        probe_containers: Vec::new(),
    })
}

/// How a wait for a rebooted node to come back ended.
enum Comeback {
    Back(Node),
    /// The watch was refused (401, 403, 404): said already, the run's checks end.
    Refused,
    /// The deadline passed: the node as last seen, and its Ready condition in words.
    TimedOut {
        seen: Option<Node>,
        last: String,
    },
}

/// Waits, as the step `step` and within `timeouts.node_ready`, until the node is `back`;
/// `last_seen` keeps the node as the watch last saw it. A node that is back moves the
/// run to `Phase::Back`.
#[allow(clippy::too_many_arguments)]
async fn wait_until_back(
    cluster: &Cluster,
    inventory: &Inventory,
    node: &str,
    back: impl Condition<Node>,
    step: &str,
    last_seen: &Mutex<Option<Node>>,
    recorder: &Recorder<'_>,
    ledger: &mut Ledger,
) -> Comeback {
    let up = tokio::time::timeout(
        inventory.timeouts.node_ready,
        cluster.wait_for_node(node, back, last_seen),
    );
    match recorder.timed(step, up).await {
        Ok(Ok(after)) => {
            ledger.phase = Phase::Back;
            Comeback::Back(after)
        }
        Ok(Err(refused)) => {
            recorder.error_remaining(refused.kind(), &refused.to_string());
            Comeback::Refused
        }
        Err(_) => {
            let seen = last_seen.lock().expect("last_seen lock").clone();
            let last = seen.as_ref().map_or(
                "the node object is gone".into(),
                cluster::describe_ready_condition,
            );
            Comeback::TimedOut { seen, last }
        }
    }
}

fn fail_node_ready(
    recorder: &Recorder<'_>,
    node: &str,
    message: String,
    seen: Option<&Node>,
    boot_id: &str,
    started: Instant,
) {
    record_not_ready(recorder, node, message, seen, started);
    let seen_boot = seen.and_then(cluster::boot_id).unwrap_or_default();
    recorder.record(check_result(
        CheckName::BootIdChanged,
        node,
        judge_boot_id(boot_id, seen_boot),
        started,
    ));
}

/// `node_ready_after_reboot` failed with `message`, the node's Ready condition as last
/// seen for evidence.
fn record_not_ready(
    recorder: &Recorder<'_>,
    node: &str,
    message: String,
    seen: Option<&Node>,
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
}

/// What a fresh read of the node says once the wait for it to go down has timed out.
#[derive(Debug, PartialEq, Eq)]
enum AfterNoDown {
    /// Still Ready on the boot the reboot command was sent to.
    StayedUp,
    /// Not Ready, or on another boot: the watch missed it.
    WentDown,
    /// The API server cannot be reached: the node's state is not known.
    Unknown,
    /// The API server refused the read in a way no wait can change.
    Refused,
}

/// The node has gone down since the reboot command: it is not Ready, or it runs a boot
/// other than `boot_id`.
fn went_down(boot_id: &str) -> impl Condition<Node> + '_ {
    cluster::is_node_ready()
        .not()
        .or(cluster::has_boot_id_other_than(boot_id))
}

fn after_no_down(fresh: Result<&Node, ErrorKind>, boot_id: &str) -> AfterNoDown {
    match fresh {
        Ok(node) if went_down(boot_id).matches_object(Some(node)) => AfterNoDown::WentDown,
        Ok(_) => AfterNoDown::StayedUp,
        Err(ErrorKind::Unreachable) => AfterNoDown::Unknown,
        Err(_) => AfterNoDown::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::mock::{mocked, status_json};
    use crate::gate::phase::{cleanup_plan, Cleanup, Outcome};
    use crate::host::fake::{connect_refused, output, FakeTransport};

    /// An API outage while the node reboots can leave the watch's last view on the old
    /// boot: only a fresh read that still shows it Ready there says it did not reboot.
    #[test]
    fn only_a_fresh_read_says_a_node_did_not_reboot() {
        let node = |ready: &str, boot: &str| -> Node {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "w1"},
                "status": {
                    "conditions": [{"type": "Ready", "status": ready}],
                    "nodeInfo": {"bootID": boot, "machineID": "", "systemUUID": "",
                        "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "",
                        "kubeletVersion": "", "kubeProxyVersion": "", "operatingSystem": "",
                        "architecture": ""},
                },
            }))
            .unwrap()
        };
        assert_eq!(
            after_no_down(Ok(&node("True", "old")), "old"),
            AfterNoDown::StayedUp
        );
        assert_eq!(
            after_no_down(Ok(&node("True", "new")), "old"),
            AfterNoDown::WentDown
        );
        assert_eq!(
            after_no_down(Ok(&node("Unknown", "old")), "old"),
            AfterNoDown::WentDown
        );
        assert_eq!(
            after_no_down(Err(ErrorKind::Unreachable), "old"),
            AfterNoDown::Unknown
        );
        assert_eq!(
            after_no_down(Err(ErrorKind::Forbidden), "old"),
            AfterNoDown::Refused
        );
    }

    const NODE: &str = "k8s-worker-03";

    /// The API of a cluster whose node is Ready on boot b1, with no calico-node pod yet.
    fn api(method: &str, path: &str) -> (u16, String) {
        match (method, path) {
            ("GET", "/api/v1/nodes/k8s-worker-03") => (
                200,
                serde_json::json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": NODE, "uid": "n-1"},
                    "status": {
                        "conditions": [{"type": "Ready", "status": "True"}],
                        "nodeInfo": {"bootID": "b1", "machineID": "m", "systemUUID": "s",
                            "kernelVersion": "6.1", "osImage": "Debian", "containerRuntimeVersion": "containerd://1.7",
                            "kubeletVersion": "v1.37.2", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
                    },
                })
                .to_string(),
            ),
            ("GET", "/api/v1/namespaces/kube-system/pods") => (
                200,
                r#"{"apiVersion":"v1","kind":"PodList","metadata":{},"items":[]}"#.into(),
            ),
            _ => (404, status_json(404, "NotFound", "the mock has no such thing")),
        }
    }

    fn inventory() -> Inventory {
        Inventory::parse(
            "ssh:\n  known_hosts: k\nnodes:\n  - name: k8s-worker-03\n    host: 198.18.0.13\n",
            std::path::Path::new("/inventory.yaml"),
        )
        .expect("an inventory")
    }

    /// A drained node whose reboot could not be sent: the run says why, the phase stays
    /// before the reboot, and the cleanup plan puts the node back into service.
    async fn reboot_that_is_not_sent(transport: FakeTransport) -> (Ledger, Vec<Cleanup>, String) {
        let cluster = mocked(api);
        let recorder = Recorder::new(
            NODE,
            &Quiet,
            &CheckName::for_verify(true, crate::inventory::NodeKind::Machine),
        );
        let mut ledger = Ledger {
            phase: Phase::Drained,
            owed: vec![Owed::Cordon { node: NODE.into() }],
        };
        let baseline = reboot_and_wait(
            &inventory(),
            &CalicoExpectations::hardened_site(),
            &cluster,
            &transport,
            NODE,
            &recorder,
            &mut ledger,
        )
        .await;
        assert!(baseline.is_none());
        let outcome = Outcome {
            all_passed: recorder.all_passed(),
            interrupted: false,
            lock_lost: None,
        };
        let plan = cleanup_plan(ledger.phase, &ledger.owed, &outcome);
        let (results, _) = recorder.into_parts();
        let said = format!("{results:?}");
        (ledger, plan, said)
    }

    #[tokio::test]
    async fn a_reboot_the_node_refuses_leaves_the_node_back_in_service() {
        let transport = FakeTransport::default().always(
            "systemctl reboot",
            Ok(output("", "Failed to reboot: Access denied\n", 1)),
        );
        let (ledger, plan, said) = reboot_that_is_not_sent(transport).await;
        assert_eq!(ledger.phase, Phase::Drained, "not rebooted");
        assert!(said.contains("was refused (exit 1)"), "{said}");
        assert!(
            plan.iter()
                .any(|c| matches!(c, Cleanup::Uncordon { node, .. } if node == NODE)),
            "{plan:?}"
        );
    }

    #[tokio::test]
    async fn a_reboot_that_never_reached_the_node_leaves_it_back_in_service() {
        let transport =
            FakeTransport::default().always("systemctl reboot", Err(connect_refused(NODE)));
        let (ledger, plan, said) = reboot_that_is_not_sent(transport).await;
        assert_eq!(ledger.phase, Phase::Drained);
        assert!(said.contains("could not issue the reboot"), "{said}");
        assert!(plan
            .iter()
            .any(|c| matches!(c, Cleanup::Uncordon { node, .. } if node == NODE)));
    }

    #[tokio::test]
    async fn a_reboot_whose_connection_broke_after_sending_counts_as_sent() {
        let transport = FakeTransport::default().on(
            "systemctl reboot",
            Err(HostError::Session {
                node: NODE.into(),
                command: "systemctl reboot".into(),
                reason: "connection reset".into(),
            }),
        );
        let (ledger, plan, _) = reboot_that_is_not_sent(transport).await;
        assert_eq!(ledger.phase, Phase::RebootSent, "it may be going down");
        assert!(
            plan.iter()
                .any(|c| matches!(c, Cleanup::LeaveCordoned { node, .. } if node == NODE)),
            "unknown counts as rebooted: {plan:?}"
        );
    }

    /// A container node restarted with a local command, whose PID 1 reads as `after`
    /// once the command has run: what the restart wait records.
    async fn restart_container(
        after: Option<Result<crate::host::CommandOutput, HostError>>,
    ) -> (Ledger, String) {
        const STAT: &str = "1 (systemd) S 0 1 1 0 -1 4194560 41 0 0 0 3 5 0 0 20 0 1 0 123456 1 1\nbtime 1764150000\n";
        let inventory = Inventory::parse(
            "transport: node-shell\nnodes:\n  - name: k8s-worker-03\nreboot:\n  command: true {node}\n  runs_on: local\n  node_kind: container\ntimeouts:\n  node_not_ready: 1s\n",
            std::path::Path::new("/inventory.yaml"),
        )
        .expect("an inventory");
        let mut transport = FakeTransport::default().on("sh -c", Ok(output(STAT, "", 0)));
        if let Some(after) = after {
            transport = transport.always("sh -c", after);
        }
        let recorder = Recorder::new(
            NODE,
            &Quiet,
            &CheckName::for_verify(true, crate::inventory::NodeKind::Container),
        );
        let mut ledger = Ledger {
            phase: Phase::Preflighted,
            owed: vec![],
        };
        let baseline = reboot_and_wait(
            &inventory,
            &CalicoExpectations::hardened_site(),
            &mocked(api),
            &transport,
            NODE,
            &recorder,
            &mut ledger,
        )
        .await;
        assert!(baseline.is_none());
        let (results, _) = recorder.into_parts();
        (ledger, format!("{results:?}"))
    }

    #[tokio::test]
    async fn a_container_node_whose_pid_1_stays_did_not_restart() {
        const SAME: &str = "1 (systemd) S 0 1 1 0 -1 4194560 41 0 0 0 3 5 0 0 20 0 1 0 123456 1 1\nbtime 1764150000\n";
        let (ledger, said) = restart_container(Some(Ok(output(SAME, "", 0)))).await;
        assert_eq!(ledger.phase, Phase::RebootSent);
        assert!(said.contains("did not restart"), "{said}");
        assert!(said.contains("NodeRestarted"), "{said}");
    }

    #[tokio::test]
    async fn a_container_node_that_cannot_be_read_is_not_said_to_have_stayed_up() {
        let (ledger, said) = restart_container(Some(Err(connect_refused(NODE)))).await;
        assert_eq!(ledger.phase, Phase::RebootSent, "it may be restarting");
        assert!(!said.contains("did not restart"), "{said}");
        assert!(said.contains("is not known"), "{said}");
    }
}
