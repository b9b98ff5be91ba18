//! calico-node on the node under test: waiting for it to be Ready in a container newer
//! than the reboot, reading its fatal log lines and log tails as evidence.

use super::*;
use k8s_openapi::api::core::v1::Event;

#[derive(Debug, thiserror::Error)]
pub enum CalicoLookupError {
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error(transparent)]
    Expectation(#[from] ExpectationError),
}

impl CalicoLookupError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CalicoLookupError::Cluster(error) => error.kind(),
            CalicoLookupError::Expectation(ExpectationError::NoDaemonSet { .. }) => {
                ErrorKind::NotFound
            }
            CalicoLookupError::Expectation(_) => ErrorKind::Error,
        }
    }
}

/// What this run holds calico-node and its host state to: the inventory's `calico:`
/// values, and where it is silent, calico-node's DaemonSet. An inventory that says
/// everything needs no API call.
///
/// # Errors
/// The DaemonSet could not be listed, or was not found once.
pub async fn calico_expectations(
    cluster: &Cluster,
    settings: &CalicoSettings,
) -> Result<CalicoExpectations, CalicoLookupError> {
    if !needs_deployment(settings) {
        return Ok(resolve(settings, &[])?);
    }
    let daemonsets = cluster
        .daemonsets_named(CALICO_NODE_DAEMONSET, settings.namespace.as_deref())
        .await?;
    Ok(resolve(settings, &daemonsets)?)
}

/// The calico-node container that ran before the reboot: after it, only a different
/// container (or pod) may count as Ready, never a stale status from the old boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CalicoBaseline {
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
}

impl CalicoBaseline {
    pub(super) fn of(pod: Option<&Pod>) -> Self {
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
    calico: &CalicoExpectations,
    node: &str,
    baseline: Option<&CalicoBaseline>,
    crashloop_since: Option<Timestamp>,
    deadline: Duration,
) -> CalicoResults {
    let started = Instant::now();
    let latest: Mutex<Option<Pod>> = Mutex::new(None);
    let watched = tokio::time::timeout(
        deadline,
        watch_calico(cluster, calico, node, baseline, &latest),
    )
    .await;
    let observation = match watched {
        Ok(Ok(observation)) => observation,
        Ok(Err(refused)) => {
            let why = Unobserved::from(&refused);
            return CalicoResults {
                ready: CheckResult::unobserved(
                    CheckName::CalicoNodeReady,
                    node,
                    &why,
                    started.elapsed(),
                ),
                crashloop: CheckResult::unobserved(
                    CheckName::CalicoNodeNotCrashlooping,
                    node,
                    &why,
                    started.elapsed(),
                ),
                pod_name: None,
                fatal_log_line: None,
            };
        }
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
    let crashloop_judgement = judge_crashloop(
        observation.pod.as_ref(),
        crashloop_since.as_ref(),
        observation.fatal_log_line.as_deref(),
    );
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
) -> Result<CalicoObservation, cluster::ClusterError> {
    let config = watcher::Config::default()
        .labels(&calico.selector)
        .fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(cluster.pods(&calico.namespace), config)
        .default_backoff()
        .applied_objects()
        .boxed();
    // A readiness probe that cannot reach BIRD leaves the pod running and unready: only
    // its events say so, one per failed probe.
    let unhealthy = watcher::Config::default().fields("involvedObject.kind=Pod,reason=Unhealthy");
    let mut events = watcher(
        kube::Api::<Event>::namespaced(cluster.client().clone(), &calico.namespace),
        unhealthy,
    )
    .default_backoff()
    .applied_objects()
    .boxed();
    let mut events_refused = false;
    // The (pod, container, restart count) whose logs were read last: each dead container
    // is read once.
    let mut logs_read_for: Option<(String, String, i32)> = None;
    loop {
        let pod = tokio::select! {
            next = stream.next() => match next {
                Some(Ok(pod)) => pod,
                Some(Err(error)) => {
                    cluster
                        .end_wait_on_refusal(&format!("watching calico-node on {node}"), &error)
                        .await?;
                    continue;
                }
                None => std::future::pending().await,
            },
            next = events.next(), if !events_refused => {
                match next {
                    Some(Ok(event)) => {
                        let pod = latest.lock().expect("latest lock").clone();
                        if let Some(line) = pod.as_ref().and_then(|pod| {
                            probe_signature(pod, baseline, &event)
                        }) {
                            return Ok(CalicoObservation {
                                pod,
                                fatal_log_line: Some(line),
                                timed_out: None,
                            });
                        }
                    }
                    // Without the events the wait still ends on the pod's own state.
                    Some(Err(error)) => events_refused = cluster::final_refusal(&error).is_some(),
                    None => events_refused = true,
                }
                continue;
            }
        };
        *latest.lock().expect("latest lock") = Some(pod.clone());
        let fresh = baseline.is_none_or(|b| b.is_superseded_by(&pod));
        if fresh && cluster::pod_ready(&pod) {
            return Ok(CalicoObservation {
                pod: Some(pod),
                ..Default::default()
            });
        }
        let Some(crashed) = crashed_container(&pod) else {
            continue;
        };
        let key = (
            pod.metadata.uid.clone().unwrap_or_default(),
            crashed.name.clone(),
            crashed.restarts,
        );
        if logs_read_for.as_ref() == Some(&key) {
            continue;
        }
        logs_read_for = Some(key);
        let name = pod.metadata.name.clone().unwrap_or_default();
        // Only the last run says why the container is down now.
        let log = cluster
            .logs(
                &calico.namespace,
                &name,
                Some(&crashed.name),
                crashed.last_run_is_previous,
                LOG_TAIL_LINES,
            )
            .await
            .unwrap_or_default();
        if let Some(line) = diagnose::fatal_calico_log_line(&log) {
            return Ok(CalicoObservation {
                pod: Some(pod),
                fatal_log_line: Some(line),
                timed_out: None,
            });
        }
    }
}

/// The signature in a probe failure of `pod`'s current container, if `event` is one:
/// the pod's own (by UID), newer than the baseline, and seen since the container
/// started, so a failure from before the reboot does not count.
fn probe_signature(pod: &Pod, baseline: Option<&CalicoBaseline>, event: &Event) -> Option<String> {
    let involved = &event.involved_object;
    if involved.uid.is_none() || involved.uid != pod.metadata.uid {
        return None;
    }
    if !baseline.is_none_or(|b| b.is_superseded_by(pod)) {
        return None;
    }
    let started = first_container_status(pod)?
        .state
        .as_ref()?
        .running
        .as_ref()?
        .started_at
        .as_ref()?
        .0;
    let last_seen = [
        event
            .series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref())
            .map(|t| t.0),
        event.last_timestamp.as_ref().map(|t| t.0),
        event.event_time.as_ref().map(|t| t.0),
    ]
    .into_iter()
    .flatten()
    .max();
    diagnose::fatal_probe_event(
        &[diagnose::ProbeEvent {
            message: event.message.clone().unwrap_or_default(),
            last_seen,
        }],
        Some(started),
    )
}

/// A container of calico-node's pod that exited with an error: an init container (the
/// non-privileged mode's, which chowns the directories) or calico-node itself.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CrashedContainer {
    name: String,
    restarts: i32,
    /// Its last run is the previous instance (it waits to be started again), not the
    /// current one (which has just exited).
    last_run_is_previous: bool,
}

/// The restart count of a calico-node container that has exited with an error and is
/// waiting to be started again; None while it runs or starts.
fn crashed_container(pod: &Pod) -> Option<CrashedContainer> {
    let status = pod.status.as_ref()?;
    let init = status.init_container_statuses.iter().flatten();
    let main = status.container_statuses.iter().flatten().take(1);
    init.chain(main).find_map(|status| {
        let state = status.state.as_ref()?;
        let waiting = state
            .waiting
            .as_ref()
            .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"));
        let exited = state.terminated.as_ref().is_some_and(|t| t.exit_code != 0);
        (waiting || exited).then(|| CrashedContainer {
            name: status.name.clone(),
            restarts: status.restart_count,
            last_run_is_previous: waiting,
        })
    })
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

#[cfg(test)]
mod tests {
    use super::*;

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

    fn pod_with(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "calico-node-x", "uid": "u1"},
            "status": status,
        }))
        .unwrap()
    }

    fn container(name: &str, state: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"name": name, "image": "calico/node", "imageID": "", "ready": false,
            "restartCount": 2, "state": state})
    }

    #[test]
    fn the_log_read_is_the_last_run_of_the_container_that_died() {
        let backoff = serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}});
        let exited = serde_json::json!({"terminated": {"exitCode": 1}});
        let running = serde_json::json!({"running": {"startedAt": "2026-12-01T10:00:00Z"}});
        // Waiting to start again: its last run is the previous instance.
        let crashed = crashed_container(&pod_with(
            serde_json::json!({"containerStatuses": [container("calico-node", backoff.clone())]}),
        ));
        assert_eq!(
            crashed,
            Some(CrashedContainer {
                name: "calico-node".into(),
                restarts: 2,
                last_run_is_previous: true
            })
        );
        // Just exited: its last run is the current instance.
        let crashed = crashed_container(&pod_with(
            serde_json::json!({"containerStatuses": [container("calico-node", exited)]}),
        ));
        assert_eq!(crashed.map(|c| c.last_run_is_previous), Some(false));
        // Non-privileged mode's init container failed: its own log is read.
        let crashed = crashed_container(&pod_with(serde_json::json!({
            "initContainerStatuses": [container("hostpath-init", backoff)],
            "containerStatuses": [container("calico-node", serde_json::json!({"waiting": {"reason": "PodInitializing"}}))],
        })));
        assert_eq!(crashed.map(|c| c.name), Some("hostpath-init".into()));
        let healthy =
            pod_with(serde_json::json!({"containerStatuses": [container("calico-node", running)]}));
        assert_eq!(crashed_container(&healthy), None);
    }

    #[test]
    fn a_probe_event_counts_only_for_this_pod_since_its_container_started() {
        let pod = pod_with(serde_json::json!({"containerStatuses": [container(
            "calico-node",
            serde_json::json!({"running": {"startedAt": "2026-12-01T10:00:00Z"}}),
        )]}));
        let event = |uid: &str, at: &str| -> Event {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "calico-node-x.1", "namespace": "kube-system"},
                "involvedObject": {"kind": "Pod", "name": "calico-node-x", "uid": uid},
                "reason": "Unhealthy", "type": "Warning", "lastTimestamp": at,
                "message": "Readiness probe failed: calico/node is not ready: BIRD is not ready: Error querying BIRD: unable to connect to BIRDv4 socket: dial unix /var/run/calico/bird.ctl: connect: connection refused",
            }))
            .unwrap()
        };
        assert!(probe_signature(&pod, None, &event("u1", "2026-12-01T10:00:30Z")).is_some());
        assert_eq!(
            probe_signature(&pod, None, &event("u1", "2026-12-01T09:59:00Z")),
            None,
            "from before the container started"
        );
        assert_eq!(
            probe_signature(&pod, None, &event("u0", "2026-12-01T10:00:30Z")),
            None,
            "another pod of the same name"
        );
        let baseline = CalicoBaseline::of(Some(&pod));
        assert_eq!(
            probe_signature(&pod, Some(&baseline), &event("u1", "2026-12-01T10:00:30Z")),
            None,
            "the container from before the reboot"
        );
    }
}
