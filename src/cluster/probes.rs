//! Probe pods: the workloads postflight owns to test the pod network, in the manner of
//! cilium-cli's connectivity test. postflight never borrows a user's pods: it creates its
//! own, pinned to nodes by `spec.nodeName`, labelled with this run's ID so that cleanup
//! finds exactly what this run made, and deletes them when the run ends.

use super::{api_error, pod_ip, pod_ready, Cluster, ClusterError, MANAGED_BY_LABEL};
use crate::inventory::ProbeSettings;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::watcher;
use std::collections::BTreeMap;

/// Why a probe pod that is being deleted under the run cannot serve it.
pub const PROBE_POD_DELETED: &str = "deleted while the run waited for it";

/// The `app.kubernetes.io/name` of every probe pod.
pub const PROBE_APP: &str = "postflight-probe";

/// The label that ties a probe pod to the run that made it.
pub const RUN_LABEL: &str = "postflight.io/run";

/// Waiting reasons after which a container will not start without someone changing
/// something: waiting out the deadline would only delay the verdict.
const HOPELESS_WAITING_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// What a kubelet says under a hopeless-looking reason while it is still starting up:
/// its own transient state, which it retries by itself. A kubelet back from a reboot
/// before it has listed the Services cannot build a pod's service environment yet
/// (`pkg/kubelet/kubelet_pods.go`), and says so as a CreateContainerConfigError.
const TRANSIENT_WAITING_MESSAGES: &[&str] =
    &["services have not yet been read at least once, cannot construct envvars"];

/// One probe pod postflight wants on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    pub name: String,
    pub node: String,
}

/// A probe pod that runs and is Ready, with the address other probes reach it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyProbe {
    pub name: String,
    pub node: String,
    pub ip: String,
    /// The container that answered Ready. A reboot starts a new one in the same pod:
    /// a pod still showing this one after the reboot has not been seen back yet.
    pub container: Option<String>,
}

/// What became of each requested probe pod.
#[derive(Debug, Clone, Default)]
pub struct ProbeFleet {
    pub namespace: String,
    pub ready: Vec<ReadyProbe>,
    /// Pods that could not start, with the reason (`<error>` material, not `<failure>`).
    pub broken: Vec<(ProbeRequest, String)>,
}

impl ProbeFleet {
    pub fn on_node(&self, node: &str) -> Vec<&ReadyProbe> {
        self.ready.iter().filter(|p| p.node == node).collect()
    }
    pub fn why_broken(&self, name: &str) -> Option<&str> {
        self.broken
            .iter()
            .find(|(r, _)| r.name == name)
            .map(|(_, why)| why.as_str())
    }
}

/// The user probe pods run as: `nobody`, which every image has. agnhost's HTTP server
/// listens above 1024 and needs no privilege.
pub const PROBE_USER: i64 = 65534;

/// A pod name for a probe: DNS-1123, at most 63 characters, unique per run and node.
pub fn probe_pod_name(run_id: &str, node: &str, index: usize) -> String {
    let index = index.to_string();
    let room = 63usize.saturating_sub("pf---".len() + run_id.len() + index.len());
    let node: String = node.replace('.', "-").chars().take(room).collect();
    format!("pf-{run_id}-{}-{index}", node.trim_end_matches('-'))
}

/// The pod spec of a probe: the inventory's image (and pull secrets) running its HTTP
/// server, pinned to the node, tolerating every taint unless the inventory lists its own
/// tolerations (a rebooted node may still carry some), and ready only when its HTTP port
/// answers.
pub fn probe_pod(settings: &ProbeSettings, run_id: &str, request: &ProbeRequest) -> Pod {
    let args: Vec<String> = settings
        .server_args
        .iter()
        .map(|a| a.replace("{port}", &settings.port.to_string()))
        .collect();
    let (tolerations, pull_secrets) = placement(
        settings.tolerations.as_deref(),
        &settings.image_pull_secrets,
    );
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": request.name,
            "namespace": settings.namespace,
            "labels": {
                MANAGED_BY_LABEL.0: MANAGED_BY_LABEL.1,
                RUN_LABEL: run_id,
                "app.kubernetes.io/name": PROBE_APP,
            },
        },
        "spec": {
            "nodeName": request.node,
            "tolerations": tolerations,
            "imagePullSecrets": pull_secrets,
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": false,
            // Pod Security `restricted`, which postflight's namespace enforces and many
            // clusters enforce everywhere: an unprivileged user, no privilege escalation,
            // no capabilities, the runtime's seccomp profile, and bounded resources.
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": PROBE_USER,
                "runAsGroup": PROBE_USER,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "probe",
                "image": settings.image,
                "args": args,
                "ports": [{"containerPort": settings.port, "protocol": "TCP"}],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
                "resources": {
                    "requests": {"cpu": "10m", "memory": "16Mi"},
                    "limits": {"cpu": "100m", "memory": "64Mi"},
                },
                "readinessProbe": {
                    "httpGet": {"path": "/", "port": settings.port},
                    "periodSeconds": 1,
                },
            }],
        },
    }))
    .expect("the probe pod spec is a valid Pod")
}

/// The tolerations and image pull secrets of a pod postflight makes on a node, as pod
/// spec JSON: the inventory's tolerations, or every taint tolerated when it lists none
/// (the node under test may still carry one from its reboot).
pub(crate) fn placement(
    tolerations: Option<&[k8s_openapi::api::core::v1::Toleration]>,
    image_pull_secrets: &[String],
) -> (serde_json::Value, Vec<serde_json::Value>) {
    let tolerations = match tolerations {
        Some(tolerations) => serde_json::to_value(tolerations).expect("tolerations serialise"),
        None => serde_json::json!([{"operator": "Exists"}]),
    };
    let pull_secrets = image_pull_secrets
        .iter()
        .map(|name| serde_json::json!({ "name": name }))
        .collect();
    (tolerations, pull_secrets)
}

/// A pod that will never run again: its phase is final.
fn pod_ended(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| matches!(phase, "Failed" | "Succeeded"))
}

/// Why a probe pod is not running, in the words its status gives; `None` while it may
/// still come up.
pub(crate) fn hopeless(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Failed") | Some("Succeeded")) {
        return Some(format!(
            "pod phase {}",
            status.phase.clone().unwrap_or_default()
        ));
    }
    let waiting = status
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref())?;
    let reason = waiting.reason.clone().unwrap_or_default();
    let message = waiting.message.clone().unwrap_or_default();
    if TRANSIENT_WAITING_MESSAGES
        .iter()
        .any(|transient| message.contains(transient))
    {
        return None;
    }
    HOPELESS_WAITING_REASONS
        .contains(&reason.as_str())
        .then(|| format!("{reason}: {message}"))
}

/// Why a probe pod is not Ready yet, for the report when its deadline passes.
fn not_ready_reason(pod: Option<&Pod>) -> String {
    let Some(pod) = pod else {
        return "the pod does not exist".into();
    };
    let status = pod.status.as_ref();
    let waiting = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref()?.waiting.as_ref());
    match waiting {
        Some(waiting) => format!(
            "container waiting: {} {}",
            waiting.reason.clone().unwrap_or_default(),
            waiting.message.clone().unwrap_or_default()
        )
        .trim_end()
        .to_string(),
        None => {
            let phase = status
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "unknown".into());
            let ip = pod_ip(pod).unwrap_or_else(|| "none".into());
            let container = status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .map(|c| format!(", container ready={} restarts={}", c.ready, c.restart_count))
                .unwrap_or_default();
            format!("phase {phase}, pod IP {ip}{container}: its readiness probe (HTTP GET / on the probe port) does not pass")
        }
    }
}

/// Probe pods created (or deleted) at once: polite to the API server, and a 50-node plan
/// in a few round trips.
const CREATE_CONCURRENCY: usize = 16;

/// Up to this many pods, one deletecollection request deletes them about as fast as
/// deleting each at once would.
const DELETE_COLLECTION_UP_TO: usize = 16;

impl Cluster {
    /// Creates the probe pods (in the inventory's probe namespace, created if missing).
    /// A pod the API refuses is recorded as broken; the others go on.
    ///
    /// # Errors
    /// The namespace cannot be read or created.
    pub async fn create_probes(
        &self,
        settings: &ProbeSettings,
        run_id: &str,
        requests: &[ProbeRequest],
        new_run: bool,
    ) -> Result<Vec<(ProbeRequest, String)>, ClusterError> {
        self.ensure_namespace(&settings.namespace).await?;
        // The run's pods that exist already (the preflight's, kept for after the reboot)
        // are listed in one request rather than refused one by one; a new run has none.
        let selector = format!("{RUN_LABEL}={run_id}");
        // Pod name → the node it is bound to, and whether it has ended for good (a
        // kubelet's graceful shutdown marks its pods Failed, and nothing restarts them).
        let existing: BTreeMap<String, (String, bool)> = if new_run {
            BTreeMap::new()
        } else {
            self.pods(&settings.namespace)
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(api_error(format!(
                    "listing the probe pods of run {run_id} in {}",
                    settings.namespace
                )))?
                .items
                .into_iter()
                .filter_map(|pod| {
                    let ended = pod_ended(&pod);
                    let node = pod.spec.and_then(|spec| spec.node_name).unwrap_or_default();
                    pod.metadata.name.map(|name| (name, (node, ended)))
                })
                .collect()
        };
        let mut refused = Vec::new();
        let mut missing = Vec::new();
        let mut ended = Vec::new();
        for request in requests {
            match existing.get(&request.name) {
                None => missing.push(request),
                Some((node, true)) if *node == request.node => ended.push(request),
                Some((node, false)) if *node == request.node => {}
                // Two node names that a pod name cannot tell apart: never let one node's
                // pod stand in for another's.
                Some((node, _)) => refused.push((
                    request.clone(),
                    format!(
                        "probe pod {} of this run is bound to {node}, not {}",
                        request.name, request.node
                    ),
                )),
            }
        }
        // An ended pod is replaced under its own name, so the run's plan still finds it.
        let api: Api<Pod> = self.pods(&settings.namespace);
        let replaced = futures::stream::iter(ended)
            .map(|request| {
                let api = api.clone();
                async move {
                    let gone = api
                        .delete(&request.name, &DeleteParams::default().grace_period(0))
                        .await;
                    match gone {
                        Ok(_) => Ok(request),
                        Err(kube::Error::Api(status)) if status.code == 404 => Ok(request),
                        Err(error) => Err((
                            request.clone(),
                            format!("it ended, and deleting it to start it again failed: {error}"),
                        )),
                    }
                }
            })
            .buffer_unordered(CREATE_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        for outcome in replaced {
            match outcome {
                Ok(request) => missing.push(request),
                Err(refusal) => refused.push(refusal),
            }
        }
        // At once, not one after another: a 50-node plan is 51 round trips otherwise.
        let created: Vec<(ProbeRequest, String)> = futures::stream::iter(missing)
            .map(|request| async move {
                self.create_pod(&probe_pod(settings, run_id, request))
                    .await
                    .err()
                    .map(|error| (request.clone(), error.to_string()))
            })
            .buffer_unordered(CREATE_CONCURRENCY)
            .filter_map(std::future::ready)
            .collect()
            .await;
        refused.extend(created);
        Ok(refused)
    }

    /// Watches this run's probe pods until each of `expected` is Ready (in a container
    /// not listed in `stale`: one from before a reboot does not count) or can no longer
    /// start. Pods still pending when the caller's deadline cuts this short are reported
    /// by [`Cluster::probe_fleet_now`].
    pub async fn wait_for_probes(
        &self,
        namespace: &str,
        run_id: &str,
        expected: &[String],
        stale: &[String],
    ) -> Result<ProbeFleet, ClusterError> {
        let config = watcher::Config::default().labels(&format!("{RUN_LABEL}={run_id}"));
        self.watch_until(
            "watching the probe pods",
            self.pods(namespace),
            config,
            |pods| probes_settled(namespace, pods, expected, stale),
        )
        .await
    }

    /// The probe pods of a run as they are now: Ready ones, and why the others are not.
    ///
    /// # Errors
    /// The pods cannot be listed.
    pub async fn probe_fleet_now(
        &self,
        namespace: &str,
        run_id: &str,
        requests: &[ProbeRequest],
        stale: &[String],
    ) -> Result<ProbeFleet, ClusterError> {
        let params = ListParams::default().labels(&format!("{RUN_LABEL}={run_id}"));
        let pods = self
            .pods(namespace)
            .list(&params)
            .await
            .map_err(api_error("listing probe pods"))?
            .items;
        let mut fleet = fleet_from(namespace, pods.iter(), stale);
        let unready = requests.iter().any(|r| {
            !fleet.ready.iter().any(|p| p.name == r.name) && fleet.why_broken(&r.name).is_none()
        });
        let sandboxes = if unready {
            self.sandbox_failures(namespace).await
        } else {
            BTreeMap::new()
        };
        for request in requests {
            let listed = pods
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(&request.name));
            let ready = fleet.ready.iter().any(|r| r.name == request.name);
            if !ready && fleet.why_broken(&request.name).is_none() {
                let why = match listed {
                    Some(pod) if container_id(pod).is_some_and(|c| stale.contains(&c)) => {
                        "not seen back after the reboot: the pod still shows its container from before it".to_string()
                    }
                    listed => not_ready_reason(listed),
                };
                // A pod the kubelet could not wire says why only in its events: most
                // often the CNI plugin's own error.
                let why = match sandboxes.get(&request.name) {
                    Some(failure) => format!("{why}; FailedCreatePodSandBox: {failure}"),
                    None => why,
                };
                fleet
                    .broken
                    .push((request.clone(), format!("not Ready in time: {why}")));
            }
        }
        Ok(fleet)
    }

    /// The newest sandbox failure the kubelet reported for each pod of `namespace`, by
    /// pod name. Evidence only: when the events cannot be read there is none.
    async fn sandbox_failures(&self, namespace: &str) -> BTreeMap<String, String> {
        let params = ListParams::default().fields("reason=FailedCreatePodSandBox");
        let Ok(events) = Api::<Event>::namespaced(self.client().clone(), namespace)
            .list(&params)
            .await
        else {
            return BTreeMap::new();
        };
        let mut newest: BTreeMap<String, (Option<k8s_openapi::jiff::Timestamp>, String)> =
            BTreeMap::new();
        for event in events.items {
            let (Some(pod), Some(message)) = (event.involved_object.name, event.message) else {
                continue;
            };
            let seen = event.last_timestamp.map(|t| t.0);
            if newest.get(&pod).is_none_or(|(at, _)| seen >= *at) {
                newest.insert(pod, (seen, message));
            }
        }
        newest.into_iter().map(|(pod, (_, m))| (pod, m)).collect()
    }

    /// Deletes the probe pods of the given runs, at once: they hold no state worth a
    /// grace period. A small set goes in one deletecollection; a large one pod by pod,
    /// many at a time, since the API server works through a deletecollection one pod
    /// after another (`--delete-collection-workers` is 1 by default): 51 pods took 1.6 s
    /// on the lab that way. `expected_pods` is how many the caller made, to choose.
    ///
    /// # Errors
    /// The API refuses the deletion.
    pub async fn delete_probes(
        &self,
        namespace: &str,
        run_ids: &[&str],
        expected_pods: usize,
    ) -> Result<(), ClusterError> {
        let selector = format!("{RUN_LABEL} in ({})", run_ids.join(","));
        let params = ListParams::default().labels(&selector);
        let api: Api<Pod> = self.pods(namespace);
        let failed = |error| {
            api_error(format!(
                "deleting the probe pods of run {}",
                run_ids.join(", ")
            ))(error)
        };
        let gone = DeleteParams::default().grace_period(0);
        if expected_pods <= DELETE_COLLECTION_UP_TO {
            return match api.delete_collection(&gone, &params).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                Err(error) => Err(failed(error)),
            };
        }
        let names: Vec<String> = match api.list_metadata(&params).await {
            Ok(list) => list
                .items
                .into_iter()
                .filter_map(|pod| pod.metadata.name)
                .collect(),
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(error) => return Err(failed(error)),
        };
        let refusals: Vec<kube::Error> = futures::stream::iter(names)
            .map(|name| {
                let (api, gone) = (api.clone(), gone.clone());
                async move {
                    match api.delete(&name, &gone).await {
                        Err(kube::Error::Api(status)) if status.code == 404 => None,
                        Err(error) => Some(error),
                        Ok(_) => None,
                    }
                }
            })
            .buffer_unordered(CREATE_CONCURRENCY)
            .filter_map(std::future::ready)
            .collect()
            .await;
        match refusals.into_iter().next() {
            None => Ok(()),
            Some(error) => Err(failed(error)),
        }
    }
}

/// The probe fleet once every expected pod has settled (Ready in a current container,
/// or unable to start); `None` while one may still come up.
fn probes_settled(
    namespace: &str,
    pods: &[Pod],
    expected: &[String],
    stale: &[String],
) -> Option<ProbeFleet> {
    let fleet = fleet_from(namespace, pods.iter(), stale);
    let settled = |name: &String| {
        fleet.ready.iter().any(|p| p.name == *name) || fleet.why_broken(name).is_some()
    };
    expected.iter().all(settled).then_some(fleet)
}

/// The ID of a pod's (first) container, once it has one.
fn container_id(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .container_id
        .clone()
        .filter(|id| !id.is_empty())
}

fn fleet_from<'a>(
    namespace: &str,
    pods: impl Iterator<Item = &'a Pod>,
    stale: &[String],
) -> ProbeFleet {
    let mut fleet = ProbeFleet {
        namespace: namespace.into(),
        ..Default::default()
    };
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let container = container_id(pod);
        let leaving = pod.metadata.deletion_timestamp.is_some();
        let current = !leaving && !container.as_ref().is_some_and(|c| stale.contains(c));
        match (pod_ready(pod) && current, pod_ip(pod), hopeless(pod)) {
            (true, Some(ip), _) => fleet.ready.push(ReadyProbe {
                name,
                node,
                ip,
                container,
            }),
            // Someone is deleting it (most often with its namespace): the caller may
            // start the set again once the namespace is back.
            _ if leaving => fleet
                .broken
                .push((ProbeRequest { name, node }, PROBE_POD_DELETED.to_string())),
            (_, _, Some(why)) => fleet.broken.push((ProbeRequest { name, node }, why)),
            _ => {}
        }
    }
    fleet
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(name: &str, ready: bool, container: Option<&str>, phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"nodeName": "w1", "containers": []},
            "status": {
                "phase": phase,
                "podIP": "198.19.0.5",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [{
                    "name": "probe", "image": "agnhost", "imageID": "", "ready": ready,
                    "restartCount": 0, "containerID": container,
                }],
            },
        }))
        .unwrap()
    }

    fn waiting(reason: &str, message: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"nodeName": "w1", "containers": []},
            "status": {
                "phase": "Pending",
                "containerStatuses": [{
                    "name": "probe", "image": "agnhost", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": message}},
                }],
            },
        }))
        .unwrap()
    }

    /// The real kubelet's words, back from a reboot before it has listed the Services:
    /// it retries by itself, so the pod may still come up; a missing ConfigMap does not.
    #[test]
    fn a_kubelet_still_starting_is_waited_for_and_a_config_error_is_not() {
        let starting = waiting(
            "CreateContainerConfigError",
            "services have not yet been read at least once, cannot construct envvars",
        );
        assert_eq!(hopeless(&starting), None);
        let missing = waiting(
            "CreateContainerConfigError",
            "configmap \"probe-settings\" not found",
        );
        assert_eq!(
            hopeless(&missing).as_deref(),
            Some("CreateContainerConfigError: configmap \"probe-settings\" not found")
        );
        let pull = waiting("ImagePullBackOff", "Back-off pulling image");
        assert!(hopeless(&pull).is_some_and(|why| why.starts_with("ImagePullBackOff")));
    }

    #[test]
    fn a_pod_still_in_its_container_from_before_the_reboot_is_not_back() {
        let stale = vec!["lab://old".to_string()];
        let expected = vec!["p".to_string()];
        // Ready, but in the container the reboot killed: the status is stale.
        let before = [probe("p", true, Some("lab://old"), "Running")];
        assert!(probes_settled("ns", &before, &expected, &stale).is_none());
        // Restarted by the kubelet, not Ready yet.
        let starting = [probe("p", false, Some("lab://new"), "Running")];
        assert!(probes_settled("ns", &starting, &expected, &stale).is_none());
        let back = [probe("p", true, Some("lab://new"), "Running")];
        let fleet = probes_settled("ns", &back, &expected, &stale).expect("back");
        assert_eq!(fleet.ready[0].container.as_deref(), Some("lab://new"));
        // Left Failed by a graceful shutdown: settled, as a pod that cannot start.
        let ended = [probe("p", false, Some("lab://old"), "Failed")];
        let fleet = probes_settled("ns", &ended, &expected, &stale).expect("settled");
        assert_eq!(fleet.why_broken("p"), Some("pod phase Failed"));
        assert!(pod_ended(&ended[0]));
        assert!(!pod_ended(&back[0]));
    }

    /// What the mocked API server below was asked, in order.
    static ASKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

    #[tokio::test]
    async fn a_probe_pod_that_ended_with_its_node_is_deleted_and_made_again() {
        let cluster = crate::cluster::mock::mocked(|method, path| {
            ASKED.lock().unwrap().push(format!("{method} {path}"));
            let pod = |name: &str, node: &str, phase: &str| {
                serde_json::json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": "postflight-probe"},
                    "spec": {"nodeName": node, "containers": []},
                    "status": {"phase": phase},
                })
            };
            match (method, path) {
                ("GET", "/api/v1/namespaces/postflight-probe") => (
                    200,
                    serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "postflight-probe"}})
                    .to_string(),
                ),
                ("GET", "/api/v1/namespaces/postflight-probe/pods") => (
                    200,
                    serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                    "items": [
                        // Marked Failed by the kubelet's graceful shutdown.
                        pod("pf-r1-w1-0", "w1", "Failed"),
                        pod("pf-r1-w2-0", "w2", "Running"),
                    ]})
                    .to_string(),
                ),
                ("DELETE", "/api/v1/namespaces/postflight-probe/pods/pf-r1-w1-0") => {
                    (200, pod("pf-r1-w1-0", "w1", "Failed").to_string())
                }
                ("POST", "/api/v1/namespaces/postflight-probe/pods") => {
                    (201, pod("pf-r1-w1-0", "w1", "Pending").to_string())
                }
                _ => (
                    404,
                    crate::cluster::mock::status_json(404, "NotFound", "not mocked"),
                ),
            }
        });
        let requests = ["w1", "w2"].map(|node| ProbeRequest {
            name: probe_pod_name("r1", node, 0),
            node: node.into(),
        });
        let refused = cluster
            .create_probes(&ProbeSettings::default(), "r1", &requests, false)
            .await
            .unwrap();
        assert!(refused.is_empty(), "{refused:?}");
        let asked = ASKED.lock().unwrap().clone();
        let at = |request: &str| asked.iter().position(|r| r == request);
        let deleted = at("DELETE /api/v1/namespaces/postflight-probe/pods/pf-r1-w1-0");
        let created = at("POST /api/v1/namespaces/postflight-probe/pods");
        assert!(deleted.is_some() && created > deleted, "{asked:?}");
        assert_eq!(
            asked.iter().filter(|r| r.starts_with("POST")).count(),
            1,
            "the running pod stays as it is: {asked:?}"
        );
    }

    #[tokio::test]
    async fn a_probe_pod_the_cni_plugin_could_not_wire_says_why_from_its_events() {
        let cluster = crate::cluster::mock::mocked(|method, path| {
            match (method, path) {
            ("GET", "/api/v1/namespaces/postflight-probe/pods") => (
                200,
                serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                "items": [{
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "pf-r1-w1-0", "namespace": "postflight-probe"},
                    "spec": {"nodeName": "w1", "containers": []},
                    "status": {"phase": "Pending", "containerStatuses": [{"name": "probe",
                        "image": "agnhost", "imageID": "", "ready": false, "restartCount": 0,
                        "state": {"waiting": {"reason": "ContainerCreating"}}}]},
                }]})
                .to_string(),
            ),
            ("GET", "/api/v1/namespaces/postflight-probe/events") => (
                200,
                serde_json::json!({"apiVersion": "v1", "kind": "EventList", "metadata": {},
                "items": [
                    {"metadata": {"name": "e1"}, "reason": "FailedCreatePodSandBox",
                     "involvedObject": {"kind": "Pod", "name": "pf-r1-w1-0"},
                     "lastTimestamp": "2026-12-01T10:00:00Z", "message": "older"},
                    {"metadata": {"name": "e2"}, "reason": "FailedCreatePodSandBox",
                     "involvedObject": {"kind": "Pod", "name": "pf-r1-w1-0"},
                     "lastTimestamp": "2026-12-01T10:00:09Z",
                     "message": "Failed to create pod sandbox: plugin type=\"calico\" failed (add): stat /var/lib/calico/nodename: no such file or directory"},
                ]})
                .to_string(),
            ),
            _ => (
                404,
                crate::cluster::mock::status_json(404, "NotFound", "not mocked"),
            ),
        }
        });
        let request = ProbeRequest {
            name: "pf-r1-w1-0".into(),
            node: "w1".into(),
        };
        let fleet = cluster
            .probe_fleet_now("postflight-probe", "r1", &[request], &[])
            .await
            .unwrap();
        let why = fleet.why_broken("pf-r1-w1-0").expect("not ready");
        assert_eq!(
            why,
            "not Ready in time: container waiting: ContainerCreating; FailedCreatePodSandBox: Failed to create pod sandbox: plugin type=\"calico\" failed (add): stat /var/lib/calico/nodename: no such file or directory"
        );
        assert!(crate::diagnose::cni_failure(&[why.to_string()]).is_some());
    }

    #[test]
    fn a_pod_being_deleted_is_broken_as_deleted_not_ready() {
        let expected = vec!["p".to_string()];
        let mut dying = probe("p", true, Some("c1"), "Running");
        dying.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let fleet = probes_settled("ns", &[dying.clone()], &expected, &[]).expect("settled");
        assert!(
            fleet.ready.is_empty(),
            "a dying pod is never Ready for the run"
        );
        assert_eq!(fleet.why_broken("p"), Some(PROBE_POD_DELETED));
        dying.status.as_mut().unwrap().phase = Some("Failed".into());
        let fleet = probes_settled("ns", &[dying], &expected, &[]).expect("settled");
        assert_eq!(fleet.why_broken("p"), Some(PROBE_POD_DELETED));
    }

    #[test]
    fn the_wait_is_for_every_expected_pod_not_for_a_count() {
        let expected = vec!["a".to_string(), "b".to_string()];
        let one = [probe("a", true, Some("c1"), "Running")];
        assert!(probes_settled("ns", &one, &expected, &[]).is_none());
        let other_run_lookalike = [
            probe("a", true, Some("c1"), "Running"),
            probe("z", true, Some("c2"), "Running"),
        ];
        assert!(probes_settled("ns", &other_run_lookalike, &expected, &[]).is_none());
        let both = [
            probe("a", true, Some("c1"), "Running"),
            probe("b", true, Some("c2"), "Running"),
        ];
        assert_eq!(
            probes_settled("ns", &both, &expected, &[])
                .unwrap()
                .ready
                .len(),
            2
        );
    }

    #[test]
    fn probe_pods_are_pinned_labelled_and_use_the_inventory_image() {
        let settings = ProbeSettings::default();
        let request = ProbeRequest {
            name: probe_pod_name("r1", "k8s-worker-03", 0),
            node: "k8s-worker-03".into(),
        };
        let pod = probe_pod(&settings, "r1", &request);
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("k8s-worker-03"));
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels[RUN_LABEL], "r1");
        assert_eq!(labels[MANAGED_BY_LABEL.0], MANAGED_BY_LABEL.1);
        let container = &spec.containers[0];
        assert_eq!(container.image.as_deref(), Some(settings.image.as_str()));
        assert_eq!(
            container.args.as_deref(),
            Some(&["netexec".to_string(), "--http-port=8080".to_string()][..])
        );
        assert_eq!(pod.metadata.name.as_deref(), Some("pf-r1-k8s-worker-03-0"));
        let tolerations = spec.tolerations.unwrap();
        assert_eq!(tolerations[0].operator.as_deref(), Some("Exists"));
        assert!(spec.image_pull_secrets.unwrap_or_default().is_empty());
    }

    #[test]
    fn the_inventory_sets_pull_secrets_and_tolerations() {
        let inventory = crate::inventory::Inventory::parse(
            "ssh:\n  known_hosts: k\nnodes:\n  - name: a\n    host: h\nprobe:\n  image: registry.example.internal/agnhost:2.53\n  image_pull_secrets: [mirror-pull]\n  tolerations:\n    - key: node-role.kubernetes.io/control-plane\n      operator: Exists\n      effect: NoSchedule\n",
            std::path::Path::new("/inventory.yaml"),
        )
        .expect("a valid inventory");
        let request = ProbeRequest {
            name: probe_pod_name("r1", "a", 0),
            node: "a".into(),
        };
        let spec = probe_pod(&inventory.probe, "r1", &request).spec.unwrap();
        let secrets = spec.image_pull_secrets.unwrap();
        assert_eq!(secrets[0].name, "mirror-pull");
        let tolerations = spec.tolerations.unwrap();
        assert_eq!(tolerations.len(), 1);
        assert_eq!(
            tolerations[0].key.as_deref(),
            Some("node-role.kubernetes.io/control-plane")
        );
        assert_eq!(tolerations[0].effect.as_deref(), Some("NoSchedule"));
    }

    #[test]
    fn probe_names_stay_valid_for_long_and_dotted_node_names() {
        let name = probe_pod_name("abcdef12", &format!("{}.example.com", "n".repeat(80)), 1);
        assert!(name.len() <= 63, "{name}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{name}"
        );
    }
}
