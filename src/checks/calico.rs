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
/// after the node became Ready (a restart caused by the reboot itself does not count),
/// or its run since the reboot said why it is dying (`fatal_line`: a fatal log line or
/// a probe failure of Calico's own, which ends the wait before the kubelet has reported
/// the container's end).
pub fn judge_crashloop(
    pod: Option<&Pod>,
    ready_since: Option<&k8s_openapi::jiff::Timestamp>,
    fatal_line: Option<&str>,
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
    if let Some(line) = fatal_line {
        return (
            Verdict::Failed(format!(
                "calico-node {} is failing since the node came back: {line}",
                pod_name(pod)
            )),
            evidence,
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use rstest::rstest;

    /// calico-node as the API shows it: its one container's current state and last
    /// termination, and how often it restarted.
    fn pod(state: serde_json::Value, last: Option<serde_json::Value>, restarts: i32) -> Pod {
        let mut status = serde_json::json!({
            "name": "calico-node",
            "image": "calico/node",
            "imageID": "",
            "ready": false,
            "restartCount": restarts,
            "state": state,
        });
        if let Some(last) = last {
            status["lastState"] = last;
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "calico-node-x1", "namespace": "kube-system"},
            "status": {"containerStatuses": [status]},
        }))
        .expect("a pod")
    }

    fn failed_with(judgement: &Judgement) -> &str {
        match &judgement.0 {
            Verdict::Failed(message) => message,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn no_calico_node_pod_fails() {
        let judgement = judge_crashloop(None, None, None);
        assert_eq!(failed_with(&judgement), "no calico-node pod on the node");
        assert_eq!(judgement.1[0].observed, "none");
    }

    /// The real kubelet reports a container's end a second or two after it: a run that
    /// already said why it is dying (BIRD's own line, a probe failure naming the control
    /// socket) fails the check while the pod still shows it running.
    #[test]
    fn a_run_that_said_why_it_is_dying_fails_before_the_kubelet_reports_it() {
        let running = pod(
            serde_json::json!({"running": {"startedAt": "2026-12-02T10:00:00Z"}}),
            None,
            1,
        );
        assert!(matches!(
            judge_crashloop(Some(&running), None, None).0,
            Verdict::Passed
        ));
        let line = "bird: Cannot create control socket /var/run/calico/bird.ctl: Permission denied";
        assert_eq!(
            failed_with(&judge_crashloop(Some(&running), None, Some(line))),
            format!("calico-node calico-node-x1 is failing since the node came back: {line}")
        );
    }

    #[test]
    fn crashloopbackoff_fails_with_the_restart_count() {
        let pod = pod(
            serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}}),
            Some(serde_json::json!({"terminated": {"exitCode": 1, "reason": "Error"}})),
            4,
        );
        let judgement = judge_crashloop(Some(&pod), None, None);
        assert_eq!(
            failed_with(&judgement),
            "calico-node calico-node-x1 is in CrashLoopBackOff after 4 restarts"
        );
        assert!(
            judgement.1[0]
                .observed
                .contains("waiting (CrashLoopBackOff)")
                && judgement.1[0].observed.contains("restarts=4")
                && judgement.1[0].observed.contains("last exit 1 (Error)"),
            "{:?}",
            judgement.1
        );
    }

    #[test]
    fn a_container_that_exited_with_an_error_and_stays_down_fails() {
        let pod = pod(
            serde_json::json!({"terminated": {"exitCode": 2, "reason": "Error"}}),
            None,
            0,
        );
        let judgement = judge_crashloop(Some(&pod), None, None);
        assert_eq!(
            failed_with(&judgement),
            "calico-node calico-node-x1 exited with code 2 and is not running"
        );
    }

    #[rstest]
    // The reboot itself killed the last container (exit 255, Unknown): not a crash.
    #[case::killed_by_the_reboot(255, "Unknown", "2026-12-01T10:00:00Z", true)]
    // It died with an error, but before the node was Ready: the old boot's trouble.
    #[case::died_before_ready(1, "Error", "2026-12-01T09:59:00Z", true)]
    // It died with an error after the node was Ready: a crash since boot.
    #[case::died_after_ready(1, "Error", "2026-12-01T10:01:00Z", false)]
    // A clean exit is a restart, not a crash.
    #[case::exited_cleanly(0, "Completed", "2026-12-01T10:01:00Z", true)]
    fn a_running_container_is_judged_by_how_its_last_one_died(
        #[case] exit_code: i32,
        #[case] reason: &str,
        #[case] finished_at: &str,
        #[case] passes: bool,
    ) {
        let pod = pod(
            serde_json::json!({"running": {"startedAt": "2026-12-01T10:02:00Z"}}),
            Some(serde_json::json!({"terminated": {
                "exitCode": exit_code,
                "reason": reason,
                "finishedAt": finished_at,
            }})),
            1,
        );
        let ready_since: Timestamp = "2026-12-01T10:00:30Z".parse().unwrap();
        let judgement = judge_crashloop(Some(&pod), Some(&ready_since), None);
        assert_eq!(judgement.0 == Verdict::Passed, passes, "{judgement:?}");
        if !passes {
            assert_eq!(
                failed_with(&judgement),
                format!("calico-node calico-node-x1 restarted after exiting with code {exit_code}")
            );
        }
    }

    #[test]
    fn without_knowing_when_the_node_was_ready_an_error_exit_counts() {
        let pod = pod(
            serde_json::json!({"running": {}}),
            Some(serde_json::json!({"terminated": {"exitCode": 1, "reason": "Error"}})),
            1,
        );
        let judgement = judge_crashloop(Some(&pod), None, None);
        assert!(matches!(judgement.0, Verdict::Failed(_)), "{judgement:?}");
    }

    #[test]
    fn a_pod_without_a_container_status_fails_rather_than_passes() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "calico-node-x1"},
            "status": {},
        }))
        .unwrap();
        assert_eq!(
            failed_with(&judge_crashloop(Some(&pod), None, None)),
            "calico-node has no container status"
        );
    }
}
