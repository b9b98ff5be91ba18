//! calico-node on the node under test: waiting for it to be Ready in a container newer
//! than the reboot, reading its fatal log lines and log tails as evidence.

use super::*;

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
) -> Result<CalicoObservation, cluster::ClusterError> {
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
                cluster
                    .end_wait_on_refusal(&format!("watching calico-node on {node}"), &error)
                    .await?;
                continue;
            }
            None => std::future::pending().await,
        };
        *latest.lock().expect("latest lock") = Some(pod.clone());
        let fresh = baseline.is_none_or(|b| b.is_superseded_by(&pod));
        if fresh && cluster::pod_ready(&pod) {
            return Ok(CalicoObservation {
                pod: Some(pod),
                ..Default::default()
            });
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
                return Ok(CalicoObservation {
                    pod: Some(pod),
                    fatal_log_line: Some(line),
                    timed_out: None,
                });
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
}
