//! The lab's kubelets and container runtime. One kubelet per node runs while the node is
//! powered. It is a real client of the real API server, under the Node authorizer with
//! the node's own identity (`system:node:<name>`): it registers the Node with its boot
//! ID, renews its Lease in `kube-node-lease`, reports node status, and runs the pods
//! bound to the node — each in its own network namespace wired the way Calico wires pods,
//! each container a real process — with readiness probes, restarts with back-off
//! (CrashLoopBackOff), restart counts, current and previous logs, and graceful deletion.
//! The node's kubelet API (exec, logs) is served by `lab-k8s kubelet-server` from the
//! container records this module writes.
//!
//! The kubelets live in the lab daemon rather than as processes on the nodes: what a
//! reboot does to them (they stop, the node goes silent, they come back and re-register)
//! is done by aborting and restarting their tasks, and every process they started on the
//! node dies with the node.

use crate::images::{self, Image};
use crate::node;
use crate::system;
use crate::topology::{NodeSpec, Topology};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Client;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// The lab's clock settings. Kubernetes' defaults are in the comments; the lab is faster
/// so that a reboot cycle takes seconds, not minutes, while keeping the same shape.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Timings {
    /// How often a kubelet renews its node Lease: 10 s in Kubernetes (a quarter of the
    /// lease's 40 s).
    pub heartbeat: Duration,
    /// node-monitor-grace-period: 40 s in Kubernetes, four lease renewals. The lab allows
    /// more renewals than that: a busy 2-core machine running two labs at once can delay
    /// one by seconds, and a node that flaps to Unknown while it runs would be a lab
    /// fault, not a cluster fault. A reboot does not wait for it: the kubelet's graceful
    /// shutdown reports the node NotReady at once.
    pub node_grace: Duration,
    /// How long a rebooting node stays dark (firmware, kernel, systemd).
    pub boot_delay: Duration,
    /// Container restart back-off: 10 s doubling to 5 min in Kubernetes.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            heartbeat: Duration::from_secs(1),
            node_grace: Duration::from_secs(8),
            boot_delay: Duration::from_secs(4),
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(20),
        }
    }
}

/// How often a kubelet reports its node status when nothing changed (the Lease is the
/// heartbeat): nodeStatusReportFrequency, 5 min in Kubernetes.
const NODE_STATUS_REPORT: Duration = Duration::from_secs(60);

/// Now, truncated to `unit`, not rounded, as Go's RFC 3339 formatting does: a rounded
/// time can lie in the future, and a heartbeat from the future once made the node
/// controller see a live node as silent.
fn now_truncated(unit: k8s_openapi::jiff::Unit) -> k8s_openapi::jiff::Timestamp {
    use k8s_openapi::jiff::{RoundMode, TimestampRound};
    k8s_openapi::jiff::Timestamp::now()
        .round(TimestampRound::new().smallest(unit).mode(RoundMode::Trunc))
        .expect("truncating the current time cannot overflow")
}

/// Now in whole seconds, as metav1.Time carries it.
pub fn now_rfc3339() -> String {
    now_truncated(k8s_openapi::jiff::Unit::Second).to_string()
}

/// Now with microseconds, as metav1.MicroTime (a Lease's renewTime) carries it.
fn now_micro() -> String {
    now_truncated(k8s_openapi::jiff::Unit::Microsecond)
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

#[derive(Debug, Clone)]
struct Sandbox {
    node: String,
    netns: String,
    ip: Ipv4Addr,
    host_network: bool,
}

/// What the kubelet knows of one pod it runs: the status it reports (its own view,
/// pushed to the API server by a writer task, as the kubelet's status manager does), and
/// the signal that asks its containers to stop.
struct PodWorker {
    uid: String,
    namespace: String,
    name: String,
    status: Mutex<Value>,
    changed: Notify,
    /// `Some(grace)` once the pod is being deleted.
    stop: watch::Sender<Option<Duration>>,
    task: Mutex<Option<JoinHandle<()>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// When the kubelet took the pod on: its probe workers tick from then, not from when
    /// a container started.
    admitted: tokio::time::Instant,
}

impl PodWorker {
    /// Stops everything this worker runs at once: its containers (killed with their
    /// tasks), its probes and its status writer. The tasks hold the worker themselves,
    /// so dropping the kubelet's handle alone would leave them running.
    fn abort(&self) {
        for handle in [&self.task, &self.writer] {
            if let Some(task) = handle.lock().unwrap().take() {
                task.abort();
            }
        }
    }
}

#[derive(Default)]
struct NodeSlot {
    kubelet: Mutex<Option<JoinHandle<()>>>,
    sshd: Mutex<Option<JoinHandle<()>>>,
    pods: Mutex<HashMap<String, Arc<PodWorker>>>,
    power: tokio::sync::Mutex<()>,
}

pub struct Runtime {
    pub topology: Topology,
    pub lab_binary: PathBuf,
    pub timings: Timings,
    /// The API server's URL: what a pod reaches as the `kubernetes` Service.
    api_server: String,
    /// Where container records for the kubelet API server go.
    pods_dir: PathBuf,
    /// Each node's API client, authenticated as that node.
    clients: HashMap<String, Client>,
    sandboxes: Mutex<HashMap<String, Sandbox>>,
    next_sandbox: AtomicU64,
    nodes: HashMap<String, NodeSlot>,
}

fn log_dir(topology: &Topology, pod_uid: &str, container: &str) -> PathBuf {
    topology
        .state_dir
        .join("logs")
        .join(pod_uid)
        .join(container)
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}
fn namespace_of(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or_default()
}

impl Runtime {
    pub fn new(
        topology: Topology,
        lab_binary: PathBuf,
        timings: Timings,
        api_server: String,
        pods_dir: PathBuf,
        clients: HashMap<String, Client>,
    ) -> Arc<Self> {
        let nodes = topology
            .nodes
            .iter()
            .map(|n| (n.name.clone(), NodeSlot::default()))
            .collect();
        Arc::new(Runtime {
            topology,
            lab_binary,
            timings,
            api_server,
            pods_dir,
            clients,
            sandboxes: Mutex::new(HashMap::new()),
            next_sandbox: AtomicU64::new(1),
            nodes,
        })
    }

    fn node(&self, name: &str) -> Result<NodeSpec, String> {
        self.topology
            .node(name)
            .cloned()
            .ok_or_else(|| format!("no node {name} in this lab"))
    }

    fn client(&self, node: &str) -> Client {
        self.clients[node].clone()
    }

    /// Records an event as the kubelet does; best effort, never waited on.
    fn record_event(&self, node: &str, pod: &Value, kind: &str, reason: &str, message: &str) {
        let client = self.client(node);
        let namespace = namespace_of(pod).to_string();
        let now = now_rfc3339();
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": format!("{}.", name_of(pod)), "namespace": namespace},
            "involvedObject": {
                "kind": "Pod", "apiVersion": "v1", "namespace": namespace,
                "name": name_of(pod), "uid": pod["metadata"]["uid"],
            },
            "reason": reason, "message": message, "type": kind, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "kubelet", "host": node},
            "reportingComponent": "kubelet", "reportingInstance": node,
        });
        tokio::spawn(async move {
            let events: Api<k8s_openapi::api::core::v1::Event> =
                Api::namespaced(client, &namespace);
            if let Ok(event) = serde_json::from_value(event) {
                let _ = events.create(&PostParams::default(), &event).await;
            }
        });
    }

    /// Powers a node on: fresh /run from tmpfiles.d, new boot ID, then sshd and kubelet.
    pub async fn boot(self: &Arc<Self>, name: &str) -> Result<(), String> {
        let node = self.node(name)?;
        let slot = &self.nodes[name];
        let _power = slot.power.lock().await;
        self.boot_locked(&node).await
    }

    async fn boot_locked(self: &Arc<Self>, node: &NodeSpec) -> Result<(), String> {
        if self.topology.kubelet == crate::topology::KubeletKind::Real {
            let (topology, spec, lab) =
                (self.topology.clone(), node.clone(), self.lab_binary.clone());
            return tokio::task::spawn_blocking(move || {
                crate::realnode::power_on(&topology, &spec, &lab)
            })
            .await
            .expect("power_on does not panic")
            .map(|_| ());
        }
        let slot = &self.nodes[&node.name];
        let (topology, spec) = (self.topology.clone(), node.clone());
        let boot_id = tokio::task::spawn_blocking(move || node::power_on(&topology, &spec))
            .await
            .expect("power_on does not panic")
            .map_err(|e| format!("booting {}: {e}", node.name))?;
        let mut sshd = node::start_sshd(&self.topology, node)
            .map_err(|e| format!("starting sshd on {}: {e}", node.name))?;
        *slot.sshd.lock().unwrap() = Some(tokio::spawn(async move {
            let _ = sshd.wait().await;
        }));
        let runtime = self.clone();
        let spec = node.clone();
        *slot.kubelet.lock().unwrap() =
            Some(tokio::spawn(
                async move { runtime.kubelet(spec, boot_id).await },
            ));
        Ok(())
    }

    /// Cuts the node's power: kubelet and every process of the node stop, its pods'
    /// sandboxes and the kernel's routes are gone.
    async fn power_off_locked(&self, node: &NodeSpec) {
        let slot = &self.nodes[&node.name];
        if let Some(kubelet) = slot.kubelet.lock().unwrap().take() {
            kubelet.abort();
        }
        if let Some(sshd) = slot.sshd.lock().unwrap().take() {
            sshd.abort();
        }
        let workers: Vec<Arc<PodWorker>> =
            slot.pods.lock().unwrap().drain().map(|(_, w)| w).collect();
        for worker in &workers {
            worker.abort();
            self.remove_records(&worker.namespace, &worker.name);
        }
        drop(workers);
        self.sandboxes
            .lock()
            .unwrap()
            .retain(|_, s| s.node != node.name);
        let (topology, spec) = (self.topology.clone(), node.clone());
        let _ = tokio::task::spawn_blocking(move || node::power_off(&topology, &spec)).await;
    }

    /// What `systemctl reboot` makes the kubelet do before the machine goes down (its
    /// graceful node shutdown): report the node NotReady and its pods not ready. Bounded,
    /// as systemd's inhibitor delay is: an unreachable API server does not hold the
    /// reboot.
    async fn graceful_shutdown(&self, node: &NodeSpec) {
        let client = self.client(&node.name);
        let workers: Vec<Arc<PodWorker>> = self.nodes[&node.name]
            .pods
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect();
        let now = now_rfc3339();
        let report = async {
            let nodes: Api<Node> = Api::all(client.clone());
            let status = json!({"status": {"conditions": node_conditions("False", "KubeletNotReady", "node is shutting down", &now)}});
            post_node_status(&nodes, &node.name, status).await;
            for worker in workers {
                let status = {
                    let mut status = worker.status.lock().unwrap();
                    for container in status["containerStatuses"]
                        .as_array_mut()
                        .into_iter()
                        .flatten()
                    {
                        container["ready"] = json!(false);
                    }
                    refresh_pod_conditions(&mut status);
                    status.clone()
                };
                let _ = push_status(&client, &worker, status).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), report).await;
    }

    /// A reboot as `systemctl reboot` does it, plus the time the machine stays dark. While
    /// the node's hold-down flag exists it stays off (a node that never comes back). An
    /// unclean one (`graceful` false) is a machine that dies: nothing is reported, the
    /// node stays Ready in the API until the node-lifecycle controller or its next boot
    /// says otherwise, and its containers die without SIGTERM.
    pub async fn reboot(self: &Arc<Self>, name: &str, graceful: bool) -> Result<(), String> {
        let node = self.node(name)?;
        let slot = &self.nodes[name];
        let _power = slot.power.lock().await;
        tracing::info!(node = name, "rebooting");
        if self.topology.kubelet == crate::topology::KubeletKind::Real {
            let (topology, spec) = (self.topology.clone(), node.clone());
            let _ = tokio::task::spawn_blocking(move || {
                crate::realnode::power_off(&topology, &spec, graceful)
            })
            .await;
        } else {
            // The kubelet stops first, so no late heartbeat can undo the shutdown report.
            if let Some(kubelet) = slot.kubelet.lock().unwrap().take() {
                kubelet.abort();
            }
            // A container node's kubelet has no graceful node shutdown configured (kind's
            // has none): its restart reports nothing.
            if graceful && self.topology.node_kind == crate::topology::NodeKind::Machine {
                self.graceful_shutdown(&node).await;
            }
            self.power_off_locked(&node).await;
        }
        tokio::time::sleep(self.timings.boot_delay).await;
        let hold = node::NodePaths::new(&self.topology, &node).hold_flag;
        while hold.exists() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.boot_locked(&node).await?;
        tracing::info!(node = name, "booted");
        Ok(())
    }

    pub async fn shutdown_all(&self) {
        for node in &self.topology.nodes {
            let _power = self.nodes[&node.name].power.lock().await;
            if self.topology.kubelet == crate::topology::KubeletKind::Real {
                let (topology, spec) = (self.topology.clone(), node.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    crate::realnode::power_off(&topology, &spec, false)
                })
                .await;
                continue;
            }
            self.power_off_locked(node).await;
        }
    }

    fn node_object(&self, node: &NodeSpec, boot_id: &str) -> Value {
        // A kubelet may not give itself node-role labels (NodeRestriction); the lab's
        // admin labels the control-plane node, as kubeadm does.
        let labels = json!({
            "kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
        });
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "labels": labels},
            "spec": {"podCIDR": node.pod_cidr(), "podCIDRs": [node.pod_cidr()]},
            "status": self.node_status(node, boot_id),
        })
    }

    fn node_status(&self, node: &NodeSpec, boot_id: &str) -> Value {
        let now = now_rfc3339();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        json!({
            "conditions": node_conditions("True", "KubeletReady", "kubelet is posting ready status", &now),
            "addresses": [{"type": "InternalIP", "address": node.ip.to_string()}, {"type": "Hostname", "address": node.name}],
            "nodeInfo": {
                "bootID": boot_id, "machineID": format!("{:032x}", node.index + 1), "systemUUID": format!("lab-{}", node.name),
                "kernelVersion": kernel, "osImage": "Debian GNU/Linux 12 (bookworm) [postflight lab]",
                "containerRuntimeVersion": "lab://0.2.0",
                "kubeletVersion": crate::controlplane::KUBERNETES_VERSION.trim(),
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
            "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        })
    }

    /// Registers the Node, or, when it exists (a reboot), reports the new boot's status.
    async fn register(&self, node: &NodeSpec, boot_id: &str) -> Result<(), kube::Error> {
        let nodes: Api<Node> = Api::all(self.client(&node.name));
        let object: Node =
            serde_json::from_value(self.node_object(node, boot_id)).expect("a valid Node");
        match nodes.create(&PostParams::default(), &object).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(e),
        }
        // Status is not taken from a create; it is reported, as the kubelet does.
        let status = json!({"status": self.node_status(node, boot_id)});
        nodes
            .patch_status(
                &node.name,
                &PatchParams::default(),
                &Patch::Strategic(status),
            )
            .await?;
        Ok(())
    }

    async fn renew_lease(&self, node: &NodeSpec) -> Result<(), kube::Error> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client(&node.name), "kube-node-lease");
        let renewed = json!({"spec": {"holderIdentity": node.name, "renewTime": now_micro(),
            "leaseDurationSeconds": self.timings.node_grace.as_secs().max(1)}});
        match leases
            .patch(&node.name, &PatchParams::default(), &Patch::Merge(&renewed))
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 404 => {
                let mut lease = renewed.clone();
                lease["metadata"] = json!({"name": node.name, "namespace": "kube-node-lease"});
                let lease = serde_json::from_value(lease).expect("a valid Lease");
                leases
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    /// Returns once the node's NIC is up: the kubelet's API traffic crosses it.
    async fn link(&self, node: &NodeSpec) {
        while !node::nic_up(&self.topology, node) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn kubelet(self: Arc<Self>, node: NodeSpec, boot_id: String) {
        self.link(&node).await;
        // Registration is retried as the kubelet retries it: the API server may be
        // away (an outage) when the node boots.
        while let Err(e) = self.register(&node, &boot_id).await {
            tracing::warn!(node = node.name, "registering the node: {e}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let heartbeat = {
            let runtime = self.clone();
            let (node, boot_id) = (node.clone(), boot_id.clone());
            tokio::spawn(async move { runtime.heartbeat(node, boot_id).await })
        };
        let _heartbeat = AbortOnDrop(heartbeat);
        let pods: Api<Pod> = Api::all(self.client(&node.name));
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", node.name));
        let (reader, writer) = reflector::store::<Pod>();
        let mut events = reflector(writer, watcher(pods, config))
            .default_backoff()
            .boxed();
        let mut resync = tokio::time::interval(Duration::from_secs(1));
        // Nothing is synced before the first complete list: an empty store would read as
        // "no pods here" and stop what runs.
        let mut listed = false;
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => {
                        listed |= matches!(event, watcher::Event::InitDone);
                        if listed {
                            self.sync_pods(&node, &reader.state());
                        }
                    }
                    Some(Err(e)) => tracing::debug!(node = node.name, "pod watch: {e}"),
                    None => return,
                },
                _ = resync.tick() => {
                    if listed {
                        self.sync_pods(&node, &reader.state());
                    }
                }
            }
        }
    }

    async fn heartbeat(self: Arc<Self>, node: NodeSpec, boot_id: String) {
        let nodes: Api<Node> = Api::all(self.client(&node.name));
        let mut lease = tokio::time::interval(self.timings.heartbeat);
        let mut report = tokio::time::interval(NODE_STATUS_REPORT);
        report.tick().await;
        // Nothing reaches the API server while the node's NIC is down: the
        // node-lifecycle controller then sees its heartbeats stop and marks it Unknown.
        // Once the NIC is back, the kubelet finds its status in the API differs from its
        // own and reports it at once, as a kubelet does.
        let mut was_cut_off = false;
        loop {
            let report_now = tokio::select! {
                _ = lease.tick() => {
                    if !node::nic_up(&self.topology, &node) {
                        was_cut_off = true;
                        continue;
                    }
                    if let Err(e) = self.renew_lease(&node).await {
                        tracing::debug!(node = node.name, "renewing the node lease: {e}");
                    }
                    std::mem::take(&mut was_cut_off)
                }
                _ = report.tick() => node::nic_up(&self.topology, &node),
            };
            if report_now {
                let status = json!({"status": self.node_status(&node, &boot_id)});
                post_node_status(&nodes, &node.name, status).await;
            }
        }
    }

    fn sync_pods(self: &Arc<Self>, node: &NodeSpec, pods: &[Arc<Pod>]) {
        let slot = &self.nodes[&node.name];
        let desired: HashMap<String, Value> = pods
            .iter()
            .filter_map(|p| {
                let value = serde_json::to_value(p.as_ref()).ok()?;
                Some((p.metadata.uid.clone()?, value))
            })
            .collect();
        let mut workers = slot.pods.lock().unwrap();
        let gone: Vec<String> = workers
            .keys()
            .filter(|uid| !desired.contains_key(*uid))
            .cloned()
            .collect();
        for uid in gone {
            // Removed from the API (force-deleted, or finished here): the containers stop.
            if let Some(worker) = workers.remove(&uid) {
                worker.abort();
                self.remove_records(&worker.namespace, &worker.name);
                self.remove_sandbox(&uid);
            }
        }
        for (uid, pod) in desired {
            let deleting = !pod["metadata"]["deletionTimestamp"].is_null();
            let grace = Duration::from_secs(
                pod["metadata"]["deletionGracePeriodSeconds"]
                    .as_u64()
                    .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_u64())
                    .unwrap_or(30),
            );
            if let Some(worker) = workers.get(&uid) {
                if deleting && worker.stop.borrow().is_none() {
                    worker.stop.send_replace(Some(grace));
                }
                // The status manager's reconcile: someone else changed what the API says
                // (the node lifecycle controller marks a silent node's pods unready), so
                // the kubelet's own view is written again.
                if status_differs(&pod["status"], &worker.status.lock().unwrap()) {
                    worker.changed.notify_one();
                }
                continue;
            }
            let worker = self.start_pod(node, pod, deleting.then_some(grace));
            workers.insert(uid, worker);
        }
    }

    fn start_pod(
        self: &Arc<Self>,
        node: &NodeSpec,
        pod: Value,
        stop: Option<Duration>,
    ) -> Arc<PodWorker> {
        let (stop_sender, _) = watch::channel(stop);
        let worker = Arc::new(PodWorker {
            uid: pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            namespace: namespace_of(&pod).to_string(),
            name: name_of(&pod).to_string(),
            status: Mutex::new(pod["status"].clone()),
            changed: Notify::new(),
            stop: stop_sender,
            task: Mutex::new(None),
            writer: Mutex::new(None),
            admitted: tokio::time::Instant::now(),
        });
        let client = self.client(&node.name);
        let writer = {
            let worker = Arc::downgrade(&worker);
            let nic_down = node::NodePaths::new(&self.topology, node).nic_down_flag;
            tokio::spawn(async move { status_writer(client, worker, nic_down).await })
        };
        *worker.writer.lock().unwrap() = Some(writer);
        let task = {
            let runtime = self.clone();
            let node = node.clone();
            let worker = worker.clone();
            tokio::spawn(async move { runtime.run_pod(node, pod, worker).await })
        };
        *worker.task.lock().unwrap() = Some(task);
        worker
    }

    fn remove_sandbox(&self, uid: &str) {
        let sandbox = self.sandboxes.lock().unwrap().remove(uid);
        crate::volumes::remove(&self.topology, uid);
        if let Some(sandbox) = sandbox.filter(|s| !s.host_network) {
            std::thread::spawn(move || system::delete_netns(&sandbox.netns));
        }
    }

    fn records_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        self.pods_dir.join(namespace).join(pod)
    }

    fn remove_records(&self, namespace: &str, pod: &str) {
        let _ = std::fs::remove_dir_all(self.records_dir(namespace, pod));
    }

    /// Describes a container to the kubelet API server: how to enter it for exec and
    /// where its logs are.
    #[allow(clippy::too_many_arguments)]
    fn write_record(
        &self,
        node: &NodeSpec,
        pod: &Value,
        sandbox: &Sandbox,
        container: &Value,
        image: &Image,
        running: bool,
        restarts: u64,
    ) {
        let container_name = container["name"].as_str().unwrap_or_default();
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        // `kubectl exec` runs as the container's user, in its namespaces.
        let user = run_as(pod, container).ok().flatten();
        let mounts = crate::volumes::container_mounts(&self.topology, pod, container);
        let mut prefix: Vec<String> = node::enter_container_command(
            &self.topology,
            node,
            &sandbox.netns,
            &mounts,
            &as_user(user, Vec::new()),
        )
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
        prefix.insert(0, "ip".into());
        let lab = self.lab_binary.to_string_lossy().to_string();
        let mut binaries = match image {
            Image::CalicoNode => json!({"calico-node": [lab, "calico-node"]}),
            Image::Agnhost => json!({"agnhost": [lab, "agnhost"]}),
            _ => json!({}),
        };
        // In every image: the real nsenter would enter this machine, not the node.
        let handle = node::NodePaths::new(&self.topology, node).netns_handle;
        let reach = crate::nsenter::Reach::of(pod, container, &handle);
        binaries["nsenter"] = json!(crate::nsenter::stand_in(&self.lab_binary, &reach));
        let env: Vec<String> = self
            .container_env(pod, container, sandbox, node)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let record = json!({
            "uid": uid, "node": node.name, "running": running, "restart_count": restarts,
            "log_dir": log_dir(&self.topology, uid, container_name),
            "argv_prefix": prefix, "env": env, "binaries": binaries,
        });
        let dir = self.records_dir(namespace_of(pod), name_of(pod));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{container_name}.json"));
        let temporary = dir.join(format!(".{container_name}.json.tmp"));
        if std::fs::write(&temporary, record.to_string()).is_ok() {
            let _ = std::fs::rename(&temporary, &path);
        }
    }

    fn create_sandbox(
        &self,
        node: &NodeSpec,
        uid: &str,
        host_network: bool,
    ) -> Result<Sandbox, String> {
        if host_network {
            let sandbox = Sandbox {
                node: node.name.clone(),
                netns: self.topology.node_netns(node),
                ip: node.ip,
                host_network,
            };
            self.sandboxes
                .lock()
                .unwrap()
                .insert(uid.into(), sandbox.clone());
            return Ok(sandbox);
        }
        let sequence = self.next_sandbox.fetch_add(1, Ordering::SeqCst);
        let ip = {
            let mut sandboxes = self.sandboxes.lock().unwrap();
            let used: Vec<Ipv4Addr> = sandboxes
                .values()
                .filter(|s| s.node == node.name)
                .map(|s| s.ip)
                .collect();
            let base = u32::from(node.pod_block);
            let ip = (1..crate::topology::POD_BLOCK_SIZE - 1)
                .map(|offset| Ipv4Addr::from(base + offset))
                .find(|ip| !used.contains(ip))
                .ok_or("the node's pod address block is full")?;
            let sandbox = Sandbox {
                node: node.name.clone(),
                netns: self.topology.pod_netns(node, sequence),
                ip,
                host_network,
            };
            sandboxes.insert(uid.into(), sandbox);
            ip
        };
        let node_netns = self.topology.node_netns(node);
        let pod_netns = self.topology.pod_netns(node, sequence);
        let veth = format!("cali{sequence:08x}");
        // Calico's pod wiring, except that the route via the link-local gateway covers
        // the lab's range only: the lab has no default routes anywhere. As Calico does,
        // every host end of a pod's veth has the MAC ee:ee:ee:ee:ee:ee, which the pod's
        // neighbour entry for the gateway names.
        let wire = || -> system::Result<()> {
            system::run_args("ip", &["netns", "add", &pod_netns])?;
            system::ip_batch(
                &node_netns,
                &format!(
                    "link add {veth} address {CALICO_HOST_MAC} type veth peer name eth0 netns {pod_netns}\n\
                     link set {veth} up\n\
                     route replace {ip}/32 dev {veth}\n"
                ),
            )?;
            system::run_args(
                "ip",
                &[
                    "netns",
                    "exec",
                    &node_netns,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv4.conf.{veth}.proxy_arp=1"),
                ],
            )?;
            system::ip_batch(
                &pod_netns,
                &format!(
                    "link set lo up\n\
                     addr add {ip}/32 dev eth0\n\
                     link set eth0 up\n\
                     route add 169.254.1.1 dev eth0 scope link\n\
                     route add 198.18.0.0/15 via 169.254.1.1 dev eth0\n\
                     neigh replace 169.254.1.1 lladdr {CALICO_HOST_MAC} dev eth0 nud permanent\n"
                ),
            )?;
            Ok(())
        };
        wire().map_err(|e| {
            self.remove_sandbox(uid);
            format!("failed to set up the pod network: {e}")
        })?;
        // The pod's deletion or its node's power-off can take the sandbox away while it
        // was being wired: that pod does not start, and the rest of the lab goes on (this
        // once panicked and took every node down with it).
        self.sandboxes
            .lock()
            .unwrap()
            .get(uid)
            .cloned()
            .ok_or_else(|| {
                "the pod's sandbox was removed while its network was set up (the pod was deleted, or its node powered off)".to_string()
            })
    }

    async fn run_pod(self: Arc<Self>, node: NodeSpec, pod: Value, worker: Arc<PodWorker>) {
        let uid = worker.uid.clone();
        if worker.stop.borrow().is_none() {
            self.start_containers(&node, &pod, &worker).await;
        }
        // Graceful deletion: every container has stopped (or none ran); the kubelet
        // removes the pod, conditioned on its UID so that a new pod of the same name is
        // never taken with it.
        self.remove_records(&worker.namespace, &worker.name);
        self.remove_sandbox(&uid);
        let pods: Api<Pod> = Api::namespaced(self.client(&node.name), &worker.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        loop {
            match pods.delete(&worker.name, &params).await {
                Ok(_) => return,
                Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => return,
                Err(e) => {
                    tracing::debug!(
                        node = node.name,
                        pod = worker.name,
                        "finishing deletion: {e}"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Creates the sandbox and runs every container until the pod is asked to stop.
    async fn start_containers(
        self: &Arc<Self>,
        node: &NodeSpec,
        pod: &Value,
        worker: &Arc<PodWorker>,
    ) {
        let uid = worker.uid.clone();
        let host_network = pod["spec"]["hostNetwork"] == json!(true);
        let runtime = self.clone();
        let (sandbox_node, sandbox_uid) = (node.clone(), uid.clone());
        let sandbox = tokio::task::spawn_blocking(move || {
            runtime.create_sandbox(&sandbox_node, &sandbox_uid, host_network)
        })
        .await
        .expect("create_sandbox does not panic");
        let sandbox = match sandbox {
            Ok(s) => s,
            Err(message) => {
                self.record_event(
                    &node.name,
                    pod,
                    "Warning",
                    "FailedCreatePodSandBox",
                    &message,
                );
                let mut stop = worker.stop.subscribe();
                stopped(&mut stop).await;
                return;
            }
        };
        create_host_path_directories(&self.topology, node, pod);
        // Volumes are retried until they can be set up, as the kubelet's volume manager
        // does: a ConfigMap such as kube-root-ca.crt may not be published yet at boot.
        let client = self.client(&node.name);
        let mut stop = worker.stop.subscribe();
        let mut pause = Duration::from_millis(250);
        while let Err(message) = crate::volumes::prepare(&self.topology, &client, pod).await {
            self.record_event(&node.name, pod, "Warning", "FailedMount", &message);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stopped(&mut stop) => return,
            }
            pause = (pause * 2).min(Duration::from_secs(4));
        }
        let now = now_rfc3339();
        let containers = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // After a reboot the pod object is the same but every container is new: restart
        // counts go on from where they were, as the kubelet counts dead containers.
        let previous_statuses = pod["status"]["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| {
                let previous = previous_statuses.iter().find(|s| s["name"] == c["name"]);
                let restarts = previous.map_or(0, |s| {
                    let ran = !s["state"]["running"].is_null() || !s["state"]["terminated"].is_null() || s["started"] == json!(true);
                    s["restartCount"].as_u64().unwrap_or(0) + u64::from(ran)
                });
                let mut status = json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": false, "started": false,
                       "restartCount": restarts, "state": {"waiting": {"reason": "ContainerCreating"}}});
                if let Some(last) = previous.filter(|s| !s["state"]["running"].is_null()) {
                    status["lastState"] = json!({"terminated": {"exitCode": 255, "reason": "Unknown",
                        "startedAt": last["state"]["running"]["startedAt"], "finishedAt": now}});
                }
                status
            })
            .collect();
        {
            let mut status = worker.status.lock().unwrap();
            status["phase"] = json!("Pending");
            status["hostIP"] = json!(node.ip.to_string());
            status["hostIPs"] = json!([{"ip": node.ip.to_string()}]);
            status["podIP"] = json!(sandbox.ip.to_string());
            status["podIPs"] = json!([{"ip": sandbox.ip.to_string()}]);
            status["startTime"] = json!(now);
            status["containerStatuses"] = json!(statuses);
            refresh_pod_conditions(&mut status);
        }
        worker.changed.notify_one();
        let mut containers_running = tokio::task::JoinSet::new();
        for container in containers {
            let runtime = self.clone();
            let (node, pod, sandbox, worker) =
                (node.clone(), pod.clone(), sandbox.clone(), worker.clone());
            containers_running.spawn(async move {
                runtime
                    .run_container(node, pod, sandbox, container, worker)
                    .await
            });
        }
        while containers_running.join_next().await.is_some() {}
    }

    fn set_container_status(
        &self,
        worker: &PodWorker,
        container: &str,
        change: impl FnOnce(&mut Value),
    ) {
        {
            let mut status = worker.status.lock().unwrap();
            if let Some(statuses) = status["containerStatuses"].as_array_mut() {
                if let Some(entry) = statuses.iter_mut().find(|s| s["name"] == json!(container)) {
                    let before = entry.clone();
                    change(entry);
                    if *entry == before {
                        return;
                    }
                }
            }
            refresh_pod_conditions(&mut status);
        }
        worker.changed.notify_one();
    }

    fn container_env(
        &self,
        pod: &Value,
        container: &Value,
        sandbox: &Sandbox,
        node: &NodeSpec,
    ) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "PATH".to_string(),
                "/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin".to_string(),
            ),
            (
                "HOSTNAME".into(),
                if sandbox.host_network {
                    node.name.clone()
                } else {
                    name_of(pod).to_string()
                },
            ),
            (
                "POSTFLIGHT_LAB_TOPOLOGY".into(),
                self.topology.topology_file().to_string_lossy().into(),
            ),
        ];
        // Every pod learns where the API server is from the `kubernetes` Service. The lab
        // has no service proxy, so it hands out the Service's endpoint itself.
        if let Some((host, port)) = self
            .api_server
            .strip_prefix("https://")
            .map(|rest| rest.trim_end_matches('/'))
            .and_then(|rest| rest.rsplit_once(':'))
        {
            env.push(("KUBERNETES_SERVICE_HOST".into(), host.to_string()));
            env.push(("KUBERNETES_SERVICE_PORT".into(), port.to_string()));
        }
        for variable in container["env"].as_array().into_iter().flatten() {
            let name = variable["name"].as_str().unwrap_or_default().to_string();
            let value = if let Some(v) = variable["value"].as_str() {
                v.to_string()
            } else {
                match variable["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("spec.nodeName") => node.name.clone(),
                    Some("status.podIP") => sandbox.ip.to_string(),
                    Some("status.hostIP") => node.ip.to_string(),
                    Some("metadata.name") => name_of(pod).to_string(),
                    Some("metadata.namespace") => namespace_of(pod).to_string(),
                    _ => String::new(),
                }
            };
            env.push((name, value));
        }
        env
    }

    async fn run_container(
        self: Arc<Self>,
        node: NodeSpec,
        pod: Value,
        sandbox: Sandbox,
        container: Value,
        worker: Arc<PodWorker>,
    ) {
        let container_name = container["name"].as_str().unwrap_or_default().to_string();
        let image_name = container["image"].as_str().unwrap_or_default().to_string();
        let mut stop = worker.stop.subscribe();
        let image = match images::identify(&image_name) {
            Ok(image) => image,
            Err(message) => {
                self.record_event(&node.name, &pod, "Warning", "Failed", &message);
                self.set_container_status(&worker, &container_name, |s| {
                    s["state"] = json!({"waiting": {"reason": "ErrImagePull", "message": message}})
                });
                tokio::time::sleep(Duration::from_secs(2)).await;
                self.set_container_status(&worker, &container_name, |s| {
                    s["state"] = json!({"waiting": {"reason": "ImagePullBackOff", "message": format!("Back-off pulling image \"{image_name}\"")}})
                });
                stopped(&mut stop).await;
                return;
            }
        };
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        };
        let mut argv = images::entrypoint(
            &image,
            &strings(&container["command"]),
            &strings(&container["args"]),
            &self.lab_binary,
        );
        if argv
            .first()
            .is_some_and(|first| first.rsplit('/').next() == Some("nsenter"))
        {
            let handle = node::NodePaths::new(&self.topology, &node).netns_handle;
            let reach = crate::nsenter::Reach::of(&pod, &container, &handle);
            argv.splice(0..1, crate::nsenter::stand_in(&self.lab_binary, &reach));
        }
        let argv = match run_as(&pod, &container) {
            Ok(user) => as_user(user, argv),
            Err(message) => {
                self.record_event(&node.name, &pod, "Warning", "Failed", &message);
                self.set_container_status(&worker, &container_name, |s| {
                    s["state"] = json!({"waiting": {"reason": "CreateContainerConfigError", "message": message}})
                });
                stopped(&mut stop).await;
                return;
            }
        };
        let env = self.container_env(&pod, &container, &sandbox, &node);
        let uid = worker.uid.clone();
        let logs = log_dir(&self.topology, &uid, &container_name);
        let _ = std::fs::create_dir_all(&logs);
        let restart_policy = pod["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always")
            .to_string();
        let mut backoff = self.timings.backoff_base;
        let mut restarts: u64 = worker.status.lock().unwrap()["containerStatuses"]
            .as_array()
            .and_then(|statuses| {
                statuses
                    .iter()
                    .find(|s| s["name"] == json!(container_name))?["restartCount"]
                    .as_u64()
            })
            .unwrap_or(0);
        loop {
            if stop.borrow().is_some() {
                return;
            }
            let log_path = logs.join(format!("{restarts}.log"));
            let log = match std::fs::File::create(&log_path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!("creating {}: {e}", log_path.display());
                    return;
                }
            };
            let mounts = crate::volumes::container_mounts(&self.topology, &pod, &container);
            let mut command: tokio::process::Command = node::enter_container_command(
                &self.topology,
                &node,
                &sandbox.netns,
                &mounts,
                &argv,
            )
            .into();
            command
                .env_clear()
                .envs(env.iter().cloned())
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            command
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log);
            let started_at = now_rfc3339();
            let started = Instant::now();
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(e) => {
                    self.set_container_status(&worker, &container_name, |s| s["state"] = json!({"waiting": {"reason": "RunContainerError", "message": e.to_string()}}));
                    stopped(&mut stop).await;
                    return;
                }
            };
            self.write_record(&node, &pod, &sandbox, &container, &image, true, restarts);
            self.record_event(
                &node.name,
                &pod,
                "Normal",
                "Started",
                &format!("Started container {container_name}"),
            );
            self.set_container_status(&worker, &container_name, |s| {
                s["state"] = json!({"running": {"startedAt": started_at}});
                s["started"] = json!(true);
                s["ready"] = json!(container["readinessProbe"].is_null());
                s["containerID"] = json!(format!("lab://{uid}-{container_name}-{restarts}"));
                s["imageID"] = json!(format!("{image_name}@lab"));
            });
            let probe = (!container["readinessProbe"].is_null()).then(|| {
                let runtime = self.clone();
                let (node, pod, sandbox, container, image_name, worker) = (
                    node.clone(),
                    pod.clone(),
                    sandbox.clone(),
                    container.clone(),
                    image_name.clone(),
                    worker.clone(),
                );
                AbortOnDrop(tokio::spawn(async move {
                    runtime
                        .readiness_loop(node, pod, sandbox, container, image_name, worker)
                        .await
                }))
            });
            let status = tokio::select! {
                status = child.wait() => status.ok(),
                grace = stopped(&mut stop) => terminate(&mut child, grace).await,
            };
            drop(probe);
            let code = status.and_then(exit_code).unwrap_or(137);
            self.write_record(&node, &pod, &sandbox, &container, &image, false, restarts);
            let terminated = json!({"terminated": {
                "exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": started_at, "finishedAt": now_rfc3339(), "containerID": format!("lab://{uid}-{container_name}-{restarts}"),
            }});
            let stopping = stop.borrow().is_some();
            let done = stopping
                || restart_policy == "Never"
                || (restart_policy == "OnFailure" && code == 0);
            if done {
                self.set_container_status(&worker, &container_name, |s| {
                    s["state"] = terminated.clone();
                    s["ready"] = json!(false);
                    s["started"] = json!(false);
                });
                if !stopping {
                    let phase = if code == 0 { "Succeeded" } else { "Failed" };
                    worker.status.lock().unwrap()["phase"] = json!(phase);
                    worker.changed.notify_one();
                    stopped(&mut stop).await;
                }
                return;
            }
            if started.elapsed() > Duration::from_secs(600) {
                backoff = self.timings.backoff_base;
            }
            restarts += 1;
            let message = format!(
                "back-off {}s restarting failed container={container_name} pod={}_{}({uid})",
                backoff.as_secs(),
                name_of(&pod),
                namespace_of(&pod)
            );
            self.record_event(
                &node.name,
                &pod,
                "Warning",
                "BackOff",
                "Back-off restarting failed container",
            );
            self.set_container_status(&worker, &container_name, |s| {
                s["lastState"] = terminated.clone();
                s["state"] = json!({"waiting": {"reason": "CrashLoopBackOff", "message": message}});
                s["ready"] = json!(false);
                s["started"] = json!(false);
                s["restartCount"] = json!(restarts);
            });
            self.write_record(&node, &pod, &sandbox, &container, &image, false, restarts);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped(&mut stop) => return,
            }
            backoff = (backoff * 2).min(self.timings.backoff_cap);
        }
    }

    async fn readiness_loop(
        self: Arc<Self>,
        node: NodeSpec,
        pod: Value,
        sandbox: Sandbox,
        container: Value,
        image_name: String,
        worker: Arc<PodWorker>,
    ) {
        let probe = &container["readinessProbe"];
        let seconds = |field: &str, default: u64| {
            Duration::from_secs(probe[field].as_u64().unwrap_or(default))
        };
        let (period, timeout) = (
            seconds("periodSeconds", 10),
            seconds("timeoutSeconds", 1).max(Duration::from_secs(1)),
        );
        let failure_threshold = probe["failureThreshold"].as_u64().unwrap_or(3);
        let container_name = container["name"].as_str().unwrap_or_default().to_string();
        tokio::time::sleep(seconds("initialDelaySeconds", 0)).await;
        let (mut ready, mut failures) = (false, 0);
        // Probing must cost next to nothing: a 50-node lab runs a probe per node every
        // second. An exec probe goes to one runner process that stays in the container's
        // namespaces; an HTTP probe is a socket opened in the node's network namespace by
        // a thread, not a process.
        let mut runner: Option<ProbeRunner> = None;
        loop {
            let passed = if let Some(exec) = probe["exec"]["command"].as_array() {
                if runner.is_none() {
                    let argv: Vec<String> = exec
                        .iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect();
                    let image = images::identify(&image_name).unwrap_or(Image::Shell);
                    let mut argv_with_runner = vec![
                        self.lab_binary.display().to_string(),
                        "probe-runner".to_string(),
                    ];
                    argv_with_runner.extend(images::map_binary(&image, argv, &self.lab_binary));
                    let mut command = tokio::process::Command::from(node::enter_command(
                        &self.topology,
                        &node,
                        &sandbox.netns,
                        &argv_with_runner,
                    ));
                    command
                        .env_clear()
                        .envs(self.container_env(&pod, &container, &sandbox, &node));
                    runner = ProbeRunner::start(command);
                }
                match runner.as_mut() {
                    Some(active) => match active.probe(timeout).await {
                        Some(passed) => passed,
                        // Hung or gone: the next period starts a fresh one.
                        None => {
                            runner = None;
                            false
                        }
                    },
                    None => false,
                }
            } else if let Some(port) = probe["httpGet"]["port"].as_u64() {
                let path = probe["httpGet"]["path"].as_str().unwrap_or("/").to_string();
                http_get_in_netns(
                    &self.topology.node_netns(&node),
                    &sandbox.ip.to_string(),
                    port as u16,
                    &path,
                    timeout,
                )
                .await
            } else {
                return;
            };
            failures = if passed { 0 } else { failures + 1 };
            ready = passed || (ready && failures < failure_threshold);
            self.set_container_status(&worker, &container_name, |s| s["ready"] = json!(ready));
            // As the kubelet's prober: a container's first probe runs as soon as it is
            // seen running (the loop's first pass), later ones on the pod's ticker,
            // which started when the pod was admitted, before its sandbox was made.
            tokio::time::sleep_until(next_tick(worker.admitted, period)).await;
        }
    }
}

/// The MAC of the host end of every pod veth, as Calico sets it.
const CALICO_HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// The first tick of a ticker started at `start` with `period` that is after now.
fn next_tick(start: tokio::time::Instant, period: Duration) -> tokio::time::Instant {
    let period = period.max(Duration::from_millis(100));
    let elapsed = start.elapsed();
    let ticks = elapsed.as_nanos() / period.as_nanos() + 1;
    start + period * u32::try_from(ticks).unwrap_or(u32::MAX)
}

/// Makes a pod's `hostPath` volumes of type DirectoryOrCreate that do not exist yet, as
/// the kubelet does before it starts the containers: mode 0755, owned by root. Only the
/// node's own `/run` is the node's in the lab (every other path is the host's, which
/// the lab never writes), and that is where calico-node's volume lives.
fn create_host_path_directories(topology: &Topology, node: &NodeSpec, pod: &Value) {
    use std::os::unix::fs::DirBuilderExt;
    let run = node::NodePaths::new(topology, node).run;
    for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let host_path = &volume["hostPath"];
        if host_path["type"] != json!("DirectoryOrCreate") {
            continue;
        }
        let path = host_path["path"].as_str().unwrap_or_default();
        let below_run = path
            .strip_prefix("/var/run/")
            .or_else(|| path.strip_prefix("/run/"));
        if let Some(rest) = below_run.filter(|r| !r.split('/').any(|part| part == "..")) {
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(run.join(rest));
        }
    }
}

/// Who a container runs as: user, group, and the capabilities its securityContext adds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RunAs {
    user: u64,
    group: u64,
    capabilities: Vec<String>,
}

/// The user and group a container runs as, from its securityContext over the pod's, as
/// the kubelet resolves them; `None` is the image's user (root, for every lab image).
/// `runAsNonRoot` without a non-root user is refused, as the kubelet refuses it.
fn run_as(pod: &Value, container: &Value) -> Result<Option<RunAs>, String> {
    let field = |name: &str| {
        let own = &container["securityContext"][name];
        if own.is_null() {
            pod["spec"]["securityContext"][name].clone()
        } else {
            own.clone()
        }
    };
    let user = field("runAsUser").as_u64();
    let group = field("runAsGroup").as_u64().unwrap_or(0);
    if field("runAsNonRoot") == json!(true) && user.unwrap_or(0) == 0 {
        return Err(format!(
            "Error: container has runAsNonRoot and image will run as root (pod: \"{}_{}({})\", container: {})",
            name_of(pod),
            namespace_of(pod),
            pod["metadata"]["uid"].as_str().unwrap_or_default(),
            container["name"].as_str().unwrap_or_default()
        ));
    }
    let capabilities = container["securityContext"]["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str())
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect();
    Ok(user.map(|user| RunAs {
        user,
        group,
        capabilities,
    }))
}

/// Prefixes `argv` so that it runs as the given user, with no supplementary groups. The
/// capabilities a securityContext adds survive the change of user and the exec as
/// ambient capabilities, which is how a container runtime hands them to a non-root
/// process.
fn as_user(user: Option<RunAs>, argv: Vec<String>) -> Vec<String> {
    let Some(RunAs {
        user,
        group,
        capabilities,
    }) = user
    else {
        return argv;
    };
    let mut prefixed: Vec<String> = vec![
        "setpriv".into(),
        format!("--reuid={user}"),
        format!("--regid={group}"),
        "--clear-groups".into(),
    ];
    if !capabilities.is_empty() {
        let list = capabilities
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",");
        prefixed.push(format!("--inh-caps={list}"));
        prefixed.push(format!("--ambient-caps={list}"));
    }
    prefixed.push("--".into());
    prefixed.extend(argv);
    prefixed
}

/// Waits until the pod is asked to stop, and returns its grace period. A pod whose
/// worker is gone counts as stopped at once.
async fn stopped(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    stop.wait_for(Option::is_some)
        .await
        .map(|grace| grace.unwrap_or_default())
        .unwrap_or_default()
}

/// Stops a container as the kubelet does: SIGTERM, then SIGKILL once the grace period
/// is over.
async fn terminate(
    child: &mut tokio::process::Child,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.kill().await;
            child.wait().await.ok()
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| 128 + s))
}

/// Whether the API's pod status disagrees with the kubelet's on what matters to readers:
/// the phase, each condition's status, and each container's readiness and restarts.
fn status_differs(api: &Value, local: &Value) -> bool {
    if local["containerStatuses"].is_null() {
        // Nothing reported yet: the pod is still being set up.
        return false;
    }
    let conditions = |status: &Value| -> Vec<(Value, Value)> {
        status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| (c["type"].clone(), c["status"].clone()))
            .collect()
    };
    let containers = |status: &Value| -> Vec<(Value, Value, Value)> {
        status["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["name"].clone(),
                    c["ready"].clone(),
                    c["restartCount"].clone(),
                )
            })
            .collect()
    };
    api["phase"] != local["phase"]
        || conditions(api) != conditions(local)
        || containers(api) != containers(local)
}

/// Pushes a pod's status as the kubelet's status manager does: the latest status wins,
/// and the patch names the pod's UID so that it never lands on a new pod of the same
/// name.
async fn status_writer(client: Client, worker: std::sync::Weak<PodWorker>, nic_down: PathBuf) {
    loop {
        let Some(current) = worker.upgrade() else {
            return;
        };
        current.changed.notified().await;
        // The latest status goes out once the node's NIC is back.
        while nic_down.exists() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        loop {
            let status = current.status.lock().unwrap().clone();
            match push_status(&client, &current, status).await {
                Ok(()) => break,
                Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409 | 422) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

async fn push_status(
    client: &Client,
    worker: &PodWorker,
    status: Value,
) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &worker.namespace);
    let patch = json!({"metadata": {"uid": worker.uid}, "status": status});
    pods.patch_status(&worker.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// Reports node status as the kubelet does; a failure is left to the next report.
async fn post_node_status(nodes: &Api<Node>, name: &str, status: Value) {
    let _ = nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(status))
        .await;
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn node_conditions(ready: &str, reason: &str, message: &str, now: &str) -> Value {
    let pressure = |kind: &str, reason: &str| {
        let status = if ready == "True" { "False" } else { "Unknown" };
        json!({"type": kind, "status": status, "reason": reason, "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!([
        pressure("MemoryPressure", "KubeletHasSufficientMemory"),
        pressure("DiskPressure", "KubeletHasNoDiskPressure"),
        pressure("PIDPressure", "KubeletHasSufficientPID"),
        {"type": "Ready", "status": ready, "reason": reason, "message": message, "lastHeartbeatTime": now, "lastTransitionTime": now},
    ])
}

/// Recomputes phase and the Ready/ContainersReady conditions from container statuses,
/// keeping each condition's lastTransitionTime while its status does not change.
pub fn refresh_pod_conditions(status: &mut Value) {
    let statuses = status["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let all_ready = !statuses.is_empty() && statuses.iter().all(|s| s["ready"] == json!(true));
    let any_started = statuses
        .iter()
        .any(|s| !s["state"]["running"].is_null() || s["restartCount"].as_u64().unwrap_or(0) > 0);
    if status["phase"] == json!("Pending") && any_started {
        status["phase"] = json!("Running");
    }
    let now = now_rfc3339();
    let previous = status["conditions"].as_array().cloned().unwrap_or_default();
    let condition = |kind: &str, ok: bool| {
        let value = if ok { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c["type"] == json!(kind) && c["status"] == json!(value))
            .and_then(|c| c["lastTransitionTime"].as_str().map(String::from))
            .unwrap_or_else(|| now.clone());
        json!({"type": kind, "status": value, "lastProbeTime": null, "lastTransitionTime": since})
    };
    status["conditions"] = json!([
        condition("PodScheduled", true),
        condition("Initialized", true),
        condition("ContainersReady", all_ready),
        condition("Ready", all_ready),
    ]);
}

/// A client for the API server from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client, String> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| format!("loading {}: {e}", path.display()))?;
    Client::try_from(config).map_err(|e| format!("a client from {}: {e}", path.display()))
}

/// An exec probe's command, run on request by a process that stays in the container's
/// namespaces (`postflight-lab probe-runner`): one fork per probe instead of the chain
/// that enters the namespaces. Dropping it kills it.
struct ProbeRunner {
    child: tokio::process::Child,
    requests: tokio::process::ChildStdin,
    answers: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl ProbeRunner {
    fn start(mut command: tokio::process::Command) -> Option<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        let requests = child.stdin.take()?;
        let answers = tokio::io::BufReader::new(child.stdout.take()?).lines();
        Some(ProbeRunner {
            child,
            requests,
            answers,
        })
    }

    /// Whether the command passed; `None` when the runner hung or died.
    async fn probe(&mut self, timeout: Duration) -> Option<bool> {
        use tokio::io::AsyncWriteExt;
        let line = format!("{}\n", timeout.as_millis());
        self.requests.write_all(line.as_bytes()).await.ok()?;
        let answer =
            tokio::time::timeout(timeout + Duration::from_secs(1), self.answers.next_line());
        match answer.await {
            Ok(Ok(Some(code))) => Some(code.trim() == "0"),
            _ => {
                let _ = self.child.start_kill();
                None
            }
        }
    }
}

/// The runner's side: each line on stdin (the probe's timeout in milliseconds) runs
/// `argv` once and answers its exit code; a command still running at the timeout is
/// killed, as the kubelet kills a probe that overran, and fails.
///
/// # Errors
/// stdin or stdout failed: the kubelet went away.
pub fn run_probes(argv: &[String]) -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let timeout = Duration::from_millis(line?.trim().parse().unwrap_or(1000));
        let code = match std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Err(_) => 127,
            Ok(mut child) => {
                let deadline = Instant::now() + timeout;
                loop {
                    match child.try_wait()? {
                        Some(status) => break status.code().unwrap_or(1),
                        None if Instant::now() >= deadline => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break 124;
                        }
                        None => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
        };
        let mut out = stdout.lock();
        writeln!(out, "{code}")?;
        out.flush()?;
    }
    Ok(())
}

/// An HTTP GET probe from the node's network namespace, as the kubelet sends it, with no
/// process: a fresh thread enters the namespace, and the socket it opens stays there.
/// Passed means a status from 200 to 399, as the kubelet counts it.
async fn http_get_in_netns(
    netns: &str,
    ip: &str,
    port: u16,
    path: &str,
    timeout: Duration,
) -> bool {
    let (netns, ip, path) = (
        PathBuf::from("/run/netns").join(netns),
        ip.to_string(),
        path.to_string(),
    );
    let (answer, passed) = tokio::sync::oneshot::channel();
    // A thread of its own: setns changes the calling thread, which must not be one a
    // runtime reuses.
    std::thread::spawn(move || {
        let _ = answer.send(http_get_from(&netns, &ip, port, &path, timeout).unwrap_or(false));
    });
    // One deadline for the whole probe, whatever the socket's own timeouts allow.
    matches!(tokio::time::timeout(timeout, passed).await, Ok(Ok(true)))
}

fn http_get_from(
    netns: &Path,
    ip: &str,
    port: u16,
    path: &str,
    timeout: Duration,
) -> std::io::Result<bool> {
    use std::io::{Read, Write};
    let namespace = std::fs::File::open(netns)?;
    nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(std::io::Error::other)?;
    let address: std::net::SocketAddr = (
        ip.parse::<std::net::IpAddr>()
            .map_err(std::io::Error::other)?,
        port,
    )
        .into();
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/lab\r\n\r\n"
    )?;
    let mut head = [0u8; 16];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..])? {
            0 => break,
            n => read += n,
        }
    }
    let status = std::str::from_utf8(&head[..read])
        .ok()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok());
    Ok(matches!(status, Some(code) if (200..400).contains(&code)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_tick_from_the_pods_admission_not_from_its_containers_start() {
        let admitted = tokio::time::Instant::now() - Duration::from_millis(2300);
        let next = next_tick(admitted, Duration::from_secs(1));
        assert_eq!(next - admitted, Duration::from_secs(3));
        let just_admitted = tokio::time::Instant::now();
        let next = next_tick(just_admitted, Duration::from_secs(1));
        assert_eq!(next - just_admitted, Duration::from_secs(1));
    }

    fn status(ready: &str, container_ready: bool) -> Value {
        json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "containerStatuses": [{"name": "c", "ready": container_ready, "restartCount": 0}],
        })
    }

    #[test]
    fn a_pod_another_controller_marked_unready_is_reported_again() {
        let local = status("True", true);
        // The node lifecycle controller's doing: Ready=False while the container is ready.
        assert!(status_differs(&status("False", true), &local));
        assert!(status_differs(&status("True", false), &local));
        // Timestamps alone are no reason to write.
        let mut same = local.clone();
        same["conditions"][0]["lastTransitionTime"] = json!("2026-02-02T00:00:00Z");
        assert!(!status_differs(&same, &local));
        // Nothing reported yet: nothing to reconcile.
        assert!(!status_differs(&status("False", false), &json!({})));
    }
}
