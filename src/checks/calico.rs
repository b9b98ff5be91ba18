//! calico-node on the node: Ready in a container newer than the reboot, and not
//! crash-looping.

use super::{Evidence, Judgement, Verdict};
use k8s_openapi::api::core::v1::Pod;
use std::time::Duration;

/// What was seen of calico-node on the node when waiting for it ended.
#[derive(Debug, Clone, Default)]
pub struct CalicoObservation {
    pub pod: Option<Pod>,
    /// A known fatal line from its logs, which ends the wait at once.
    pub fatal_log_line: Option<String>,
    /// The wait hit its deadline.
    pub timed_out: Option<Duration>,
}

fn container_summary(pod: &Pod) -> String {
    let Some(status) = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
    else {
        return "no container status".into();
    };
    let state = status.state.as_ref();
    let state = if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
        format!("waiting ({})", waiting.reason.clone().unwrap_or_default())
    } else if let Some(terminated) = state.and_then(|s| s.terminated.as_ref()) {
        format!("terminated (exit {})", terminated.exit_code)
    } else if state.and_then(|s| s.running.as_ref()).is_some() {
        "running".into()
    } else {
        "unknown".into()
    };
    // The last termination says how the previous container died: the evidence an
    // operator reads next to `kubectl logs --previous`.
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| {
            let when = t
                .finished_at
                .as_ref()
                .map(|f| format!(" at {}", f.0))
                .unwrap_or_default();
            format!(
                ", last exit {} ({}){when}",
                t.exit_code,
                t.reason.clone().unwrap_or_default()
            )
        })
        .unwrap_or_default();
    format!(
        "{state}, ready={}, restarts={}{last}",
        status.ready, status.restart_count
    )
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

pub fn judge_calico_ready(observation: &CalicoObservation, node: &str) -> Judgement {
    let Some(pod) = &observation.pod else {
        let message = format!("no calico-node pod on {node}");
        return (
            Verdict::Failed(message),
            vec![Evidence::new("calico-node pod", "none", "one, Ready")],
        );
    };
    let mut evidence = vec![Evidence::new(
        format!("pod {}", pod_name(pod)),
        container_summary(pod),
        "running, ready=true",
    )];
    if let Some(line) = &observation.fatal_log_line {
        evidence.push(Evidence::new("log", line.as_str(), "no fatal error"));
        return (
            Verdict::Failed(format!("calico-node {} is failing: {line}", pod_name(pod))),
            evidence,
        );
    }
    if crate::cluster::pod_ready(pod) {
        return (Verdict::Passed, evidence);
    }
    let waited = observation
        .timed_out
        .map(|d| format!(" within {}", humantime::format_duration(d)))
        .unwrap_or_default();
    (
        Verdict::Failed(format!(
            "calico-node {} did not become Ready{waited}: {}",
            pod_name(pod),
            container_summary(pod)
        )),
        evidence,
    )
}

/// A crash loop: the container waits in CrashLoopBackOff, or it last died with an error
/// after the node became Ready (a restart caused by the reboot itself does not count).
pub fn judge_crashloop(
    pod: Option<&Pod>,
    ready_since: Option<&k8s_openapi::jiff::Timestamp>,
) -> Judgement {
    let Some(pod) = pod else {
        return (
            Verdict::Failed("no calico-node pod on the node".into()),
            vec![Evidence::new("calico-node pod", "none", "one")],
        );
    };
    let evidence = vec![Evidence::new(
        format!("pod {}", pod_name(pod)),
        container_summary(pod),
        "running, not restarting",
    )];
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first());
    let Some(status) = status else {
        return (
            Verdict::Failed("calico-node has no container status".into()),
            evidence,
        );
    };
    let waiting = status
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone());
    if waiting.as_deref() == Some("CrashLoopBackOff") {
        return (
            Verdict::Failed(format!(
                "calico-node {} is in CrashLoopBackOff after {} restarts",
                pod_name(pod),
                status.restart_count
            )),
            evidence,
        );
    }
    if let Some(terminated) = status
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .filter(|t| t.exit_code != 0)
    {
        let message = format!(
            "calico-node {} exited with code {} and is not running",
            pod_name(pod),
            terminated.exit_code
        );
        return (Verdict::Failed(message), evidence);
    }
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    if let Some(last) = last.filter(|t| t.exit_code != 0 && t.reason.as_deref() == Some("Error")) {
        let after_ready = match (last.finished_at.as_ref(), ready_since) {
            (Some(finished), Some(since)) => finished.0 >= *since,
            _ => true,
        };
        if after_ready {
            return (
                Verdict::Failed(format!(
                    "calico-node {} restarted after exiting with code {}",
                    pod_name(pod),
                    last.exit_code
                )),
                evidence,
            );
        }
    }
    (Verdict::Passed, evidence)
}
