//! The lab's kubelets and container runtime. One kubelet per node runs while the node is
//! powered: it registers the Node with its boot ID, heart-beats, and runs the pods bound
//! to the node — each in its own network namespace wired the way Calico wires pods, each
//! container a real process — with readiness probes, restarts with back-off
//! (CrashLoopBackOff), restart counts and current/previous logs.
//!
//! The kubelets live in the lab daemon rather than as processes on the nodes: what a
//! reboot does to them (they stop, the node goes silent, they come back and re-register)
//! is done by aborting and restarting their tasks, and every process they started on the
//! node dies with the node.

use crate::apiserver::store::{self, now_rfc3339, ApiError, Store};
use crate::apiserver::PodRuntime;
use crate::images::{self, Image};
use crate::node;
use crate::system;
use crate::topology::{NodeSpec, Topology};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The lab's clock settings. Kubernetes' defaults are in the comments; the lab is faster
/// so that a reboot cycle takes seconds, not minutes, while keeping the same shape.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Timings {
    /// kubelet nodeStatusUpdateFrequency: 10 s in Kubernetes.
    pub heartbeat: Duration,
    /// node-monitor-grace-period: 40 s in Kubernetes, four heartbeats. The lab allows
    /// more heartbeats than that: a busy 2-core machine running two labs at once can
    /// delay one by seconds, and a node that flaps to Unknown while it runs would be a
    /// lab fault, not a cluster fault. A reboot does not wait for it: the kubelet's
    /// graceful shutdown reports the node NotReady at once.
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

#[derive(Debug, Clone)]
struct Sandbox {
    node: String,
    netns: String,
    ip: Ipv4Addr,
    host_network: bool,
}

#[derive(Default)]
struct NodeSlot {
    kubelet: Mutex<Option<JoinHandle<()>>>,
    sshd: Mutex<Option<JoinHandle<()>>>,
    power: tokio::sync::Mutex<()>,
}

pub struct Runtime {
    pub topology: Topology,
    pub store: Arc<Store>,
    pub lab_binary: PathBuf,
    pub timings: Timings,
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

pub fn record_event(store: &Store, object: &Value, kind: &str, reason: &str, message: &str) {
    let namespace = match store::namespace_of(object) {
        "" => "default",
        ns => ns,
    };
    let now = now_rfc3339();
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{}.", store::name_of(object))},
        "involvedObject": {
            "kind": object["kind"], "apiVersion": object["apiVersion"], "namespace": object["metadata"]["namespace"],
            "name": object["metadata"]["name"], "uid": object["metadata"]["uid"],
        },
        "reason": reason, "message": message, "type": kind, "count": 1,
        "firstTimestamp": now, "lastTimestamp": now, "source": {"component": "kubelet"},
    });
    let _ = store.create("events", namespace, event);
}

impl Runtime {
    pub fn new(
        topology: Topology,
        store: Arc<Store>,
        lab_binary: PathBuf,
        timings: Timings,
    ) -> Arc<Self> {
        let nodes = topology
            .nodes
            .iter()
            .map(|n| (n.name.clone(), NodeSlot::default()))
            .collect();
        Arc::new(Runtime {
            topology,
            store,
            lab_binary,
            timings,
            sandboxes: Mutex::new(HashMap::new()),
            next_sandbox: AtomicU64::new(1),
            nodes,
        })
    }

    fn node(&self, name: &str) -> Result<NodeSpec, ApiError> {
        self.topology
            .node(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found("nodes", name))
    }

    /// Powers a node on: fresh /run from tmpfiles.d, new boot ID, then sshd and kubelet.
    pub async fn boot(self: &Arc<Self>, name: &str) -> Result<(), ApiError> {
        let node = self.node(name)?;
        let slot = &self.nodes[name];
        let _power = slot.power.lock().await;
        self.boot_locked(&node).await
    }

    async fn boot_locked(self: &Arc<Self>, node: &NodeSpec) -> Result<(), ApiError> {
        let slot = &self.nodes[&node.name];
        let (topology, spec) = (self.topology.clone(), node.clone());
        let boot_id = tokio::task::spawn_blocking(move || node::power_on(&topology, &spec))
            .await
            .expect("power_on does not panic")
            .map_err(|e| {
                ApiError::new(500, "InternalError", format!("booting {}: {e}", node.name))
            })?;
        let mut sshd = node::start_sshd(&self.topology, node).map_err(|e| {
            ApiError::new(
                500,
                "InternalError",
                format!("starting sshd on {}: {e}", node.name),
            )
        })?;
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
        self.sandboxes
            .lock()
            .unwrap()
            .retain(|_, s| s.node != node.name);
        let (topology, spec) = (self.topology.clone(), node.clone());
        let _ = tokio::task::spawn_blocking(move || node::power_off(&topology, &spec)).await;
    }

    /// A reboot as `systemctl reboot` does it, plus the time the machine stays dark. While
    /// the node's hold-down flag exists it stays off (a node that never comes back).
    pub async fn reboot(self: &Arc<Self>, name: &str) -> Result<(), ApiError> {
        let node = self.node(name)?;
        let slot = &self.nodes[name];
        let _power = slot.power.lock().await;
        tracing::info!(node = name, "rebooting");
        self.power_off_locked(&node).await;
        // `systemctl reboot` runs the kubelet's graceful node shutdown: the node reports
        // NotReady and its pods stop being Ready as it goes down. Written once the
        // kubelet task is gone, so no late heartbeat can undo it.
        let now = now_rfc3339();
        let _ = self.store.update("nodes", "", name, |n| {
            n["status"]["conditions"] =
                node_conditions("False", "KubeletNotReady", "node is shutting down", &now);
            Ok(())
        });
        crate::controllers::mark_pods_unready(&self.store, name);
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
            self.power_off_locked(node).await;
        }
    }

    fn node_object(&self, node: &NodeSpec, boot_id: &str) -> Value {
        let mut labels = json!({
            "kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
        });
        if node.control_plane {
            labels["node-role.kubernetes.io/control-plane"] = json!("");
        }
        let now = now_rfc3339();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "labels": labels},
            "spec": {"podCIDR": node.pod_cidr(), "podCIDRs": [node.pod_cidr()]},
            "status": {
                "conditions": node_conditions("True", "KubeletReady", "kubelet is posting ready status", &now),
                "addresses": [{"type": "InternalIP", "address": node.ip.to_string()}, {"type": "Hostname", "address": node.name}],
                "nodeInfo": {
                    "bootID": boot_id, "machineID": format!("{:032x}", node.index + 1), "systemUUID": format!("lab-{}", node.name),
                    "kernelVersion": kernel, "osImage": "Debian GNU/Linux 12 (bookworm) [postflight lab]",
                    "containerRuntimeVersion": "lab://0.1.0", "kubeletVersion": "v1.32.0-lab", "kubeProxyVersion": "",
                    "operatingSystem": "linux", "architecture": "amd64",
                },
                "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            },
        })
    }

    async fn kubelet(self: Arc<Self>, node: NodeSpec, boot_id: String) {
        let registration = self.node_object(&node, &boot_id);
        if self.store.get("nodes", "", &node.name).is_some() {
            let _ = self.store.update("nodes", "", &node.name, |n| {
                n["status"] = registration["status"].clone();
                Ok(())
            });
        } else if let Err(e) = self.store.create("nodes", "", registration) {
            tracing::error!(node = node.name, "registering the node: {}", e.message);
        }
        let mut workers = PodWorkers::default();
        let mut events = self.store.subscribe();
        let mut heartbeat = tokio::time::interval(self.timings.heartbeat);
        let mut resync = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = heartbeat.tick() => self.heartbeat(&node),
                _ = resync.tick() => self.sync_pods(&node, &mut workers),
                event = events.recv() => match event {
                    Ok(event) if event.resource == "pods" && event.object["spec"]["nodeName"] == json!(node.name) => self.sync_pods(&node, &mut workers),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.sync_pods(&node, &mut workers),
                    Err(_) => return,
                },
            }
        }
    }

    fn heartbeat(&self, node: &NodeSpec) {
        let now = now_rfc3339();
        let _ = self.store.update("nodes", "", &node.name, |n| {
            n["status"]["conditions"] = node_conditions(
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
                &now,
            );
            Ok(())
        });
    }

    fn sync_pods(self: &Arc<Self>, node: &NodeSpec, workers: &mut PodWorkers) {
        let (pods, _) = self.store.list("pods", None);
        let desired: HashMap<String, Value> = pods
            .into_iter()
            .filter(|p| p["spec"]["nodeName"] == json!(node.name))
            .map(|p| {
                (
                    p["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    p,
                )
            })
            .collect();
        let gone: Vec<String> = workers
            .0
            .keys()
            .filter(|uid| !desired.contains_key(*uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(worker) = workers.0.remove(&uid) {
                worker.abort();
            }
            self.remove_sandbox(&uid);
        }
        for (uid, pod) in desired {
            workers.0.entry(uid).or_insert_with(|| {
                let runtime = self.clone();
                let node = node.clone();
                tokio::spawn(async move { runtime.run_pod(node, pod).await })
            });
        }
    }

    fn remove_sandbox(&self, uid: &str) {
        let sandbox = self.sandboxes.lock().unwrap().remove(uid);
        if let Some(sandbox) = sandbox.filter(|s| !s.host_network) {
            std::thread::spawn(move || system::delete_netns(&sandbox.netns));
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
            let ip = (1..63)
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
        let wire = || -> system::Result<()> {
            system::run_args("ip", &["netns", "add", &pod_netns])?;
            system::netns_sh(
                &node_netns,
                &format!(
                    "ip link add {veth} type veth peer name eth0 netns {pod_netns}; ip link set {veth} up; \
                     sysctl -qw net.ipv4.conf.{veth}.proxy_arp=1; ip route replace {ip}/32 dev {veth}"
                ),
            )?;
            let mac = system::netns_sh(&node_netns, &format!("cat /sys/class/net/{veth}/address"))?;
            let mac = String::from_utf8_lossy(&mac.stdout).trim().to_string();
            // Calico's pod wiring, except that the route via the link-local gateway covers
            // the lab's range only: the lab has no default routes anywhere.
            system::netns_sh(
                &pod_netns,
                &format!(
                    "ip link set lo up; ip addr add {ip}/32 dev eth0; ip link set eth0 up; \
                     ip route add 169.254.1.1 dev eth0 scope link; ip route add 198.18.0.0/15 via 169.254.1.1 dev eth0; \
                     ip neigh replace 169.254.1.1 lladdr {mac} dev eth0 nud permanent"
                ),
            )?;
            Ok(())
        };
        wire().map_err(|e| {
            self.remove_sandbox(uid);
            format!("failed to set up the pod network: {e}")
        })?;
        Ok(self
            .sandboxes
            .lock()
            .unwrap()
            .get(uid)
            .cloned()
            .expect("sandbox just made"))
    }

    async fn run_pod(self: Arc<Self>, node: NodeSpec, pod: Value) {
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let (namespace, name) = (
            store::namespace_of(&pod).to_string(),
            store::name_of(&pod).to_string(),
        );
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
                record_event(
                    &self.store,
                    &pod,
                    "Warning",
                    "FailedCreatePodSandBox",
                    &message,
                );
                return;
            }
        };
        let now = now_rfc3339();
        let containers = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // After a reboot the pod object is the same but every container is new: restart
        // counts go on from where they were, as the kubelet counts dead containers.
        let current = self
            .store
            .get("pods", &namespace, &name)
            .unwrap_or_else(|| pod.clone());
        let previous_statuses = current["status"]["containerStatuses"]
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
        let _ = self.store.update("pods", &namespace, &name, |p| {
            p["status"]["phase"] = json!("Pending");
            p["status"]["hostIP"] = json!(node.ip.to_string());
            p["status"]["hostIPs"] = json!([{"ip": node.ip.to_string()}]);
            p["status"]["podIP"] = json!(sandbox.ip.to_string());
            p["status"]["podIPs"] = json!([{"ip": sandbox.ip.to_string()}]);
            p["status"]["startTime"] = json!(now);
            p["status"]["containerStatuses"] = json!(statuses);
            refresh_pod_conditions(p);
            Ok(())
        });
        let mut containers_running = tokio::task::JoinSet::new();
        for container in containers {
            let runtime = self.clone();
            let (node, pod, sandbox) = (node.clone(), pod.clone(), sandbox.clone());
            containers_running
                .spawn(async move { runtime.run_container(node, pod, sandbox, container).await });
        }
        while containers_running.join_next().await.is_some() {}
    }

    fn set_container_status(&self, pod: &Value, container: &str, change: impl FnOnce(&mut Value)) {
        let _ = self
            .store
            .update("pods", store::namespace_of(pod), store::name_of(pod), |p| {
                if p["metadata"]["uid"] != pod["metadata"]["uid"] {
                    return Ok(());
                }
                if let Some(statuses) = p["status"]["containerStatuses"].as_array_mut() {
                    if let Some(status) =
                        statuses.iter_mut().find(|s| s["name"] == json!(container))
                    {
                        change(status);
                    }
                }
                refresh_pod_conditions(p);
                Ok(())
            });
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
                    store::name_of(pod).to_string()
                },
            ),
            (
                "POSTFLIGHT_LAB_TOPOLOGY".into(),
                self.topology.topology_file().to_string_lossy().into(),
            ),
        ];
        for variable in container["env"].as_array().into_iter().flatten() {
            let name = variable["name"].as_str().unwrap_or_default().to_string();
            let value = if let Some(v) = variable["value"].as_str() {
                v.to_string()
            } else {
                match variable["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("spec.nodeName") => node.name.clone(),
                    Some("status.podIP") => sandbox.ip.to_string(),
                    Some("status.hostIP") => node.ip.to_string(),
                    Some("metadata.name") => store::name_of(pod).to_string(),
                    Some("metadata.namespace") => store::namespace_of(pod).to_string(),
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
    ) {
        let container_name = container["name"].as_str().unwrap_or_default().to_string();
        let image_name = container["image"].as_str().unwrap_or_default().to_string();
        let image = match images::identify(&image_name) {
            Ok(image) => image,
            Err(message) => {
                record_event(&self.store, &pod, "Warning", "Failed", &message);
                self.set_container_status(&pod, &container_name, |s| {
                    s["state"] = json!({"waiting": {"reason": "ErrImagePull", "message": message}})
                });
                tokio::time::sleep(Duration::from_secs(2)).await;
                self.set_container_status(&pod, &container_name, |s| {
                    s["state"] = json!({"waiting": {"reason": "ImagePullBackOff", "message": format!("Back-off pulling image \"{image_name}\"")}})
                });
                return std::future::pending().await;
            }
        };
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        };
        let argv = images::entrypoint(
            &image,
            &strings(&container["command"]),
            &strings(&container["args"]),
            &self.lab_binary,
        );
        let env = self.container_env(&pod, &container, &sandbox, &node);
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let logs = log_dir(&self.topology, &uid, &container_name);
        let _ = std::fs::create_dir_all(&logs);
        let restart_policy = pod["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always")
            .to_string();
        let mut backoff = self.timings.backoff_base;
        let mut restarts: u64 = self
            .store
            .get("pods", store::namespace_of(&pod), store::name_of(&pod))
            .and_then(|p| {
                p["status"]["containerStatuses"]
                    .as_array()?
                    .iter()
                    .find(|s| s["name"] == json!(container_name))?["restartCount"]
                    .as_u64()
            })
            .unwrap_or(0);
        loop {
            let log_path = logs.join(format!("{restarts}.log"));
            let log = match std::fs::File::create(&log_path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!("creating {}: {e}", log_path.display());
                    return;
                }
            };
            let mut command: tokio::process::Command =
                node::enter_command(&self.topology, &node, &sandbox.netns, &argv).into();
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
                    self.set_container_status(&pod, &container_name, |s| s["state"] = json!({"waiting": {"reason": "RunContainerError", "message": e.to_string()}}));
                    return;
                }
            };
            record_event(
                &self.store,
                &pod,
                "Normal",
                "Started",
                &format!("Started container {container_name}"),
            );
            self.set_container_status(&pod, &container_name, |s| {
                s["state"] = json!({"running": {"startedAt": started_at}});
                s["started"] = json!(true);
                s["ready"] = json!(container["readinessProbe"].is_null());
                s["containerID"] = json!(format!("lab://{uid}-{container_name}-{restarts}"));
                s["imageID"] = json!(format!("{image_name}@lab"));
            });
            let probe = (!container["readinessProbe"].is_null()).then(|| {
                let runtime = self.clone();
                let (node, pod, sandbox, container, image_name) = (
                    node.clone(),
                    pod.clone(),
                    sandbox.clone(),
                    container.clone(),
                    image_name.clone(),
                );
                tokio::spawn(async move {
                    runtime
                        .readiness_loop(node, pod, sandbox, container, image_name)
                        .await
                })
            });
            let status = child.wait().await;
            if let Some(probe) = probe {
                probe.abort();
            }
            let code = status.ok().and_then(|s| s.code()).unwrap_or(137);
            let terminated = json!({"terminated": {
                "exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": started_at, "finishedAt": now_rfc3339(), "containerID": format!("lab://{uid}-{container_name}-{restarts}"),
            }});
            let done = restart_policy == "Never" || (restart_policy == "OnFailure" && code == 0);
            if done {
                self.set_container_status(&pod, &container_name, |s| {
                    s["state"] = terminated.clone();
                    s["ready"] = json!(false);
                });
                let phase = if code == 0 { "Succeeded" } else { "Failed" };
                let _ = self.store.update(
                    "pods",
                    store::namespace_of(&pod),
                    store::name_of(&pod),
                    |p| {
                        p["status"]["phase"] = json!(phase);
                        refresh_pod_conditions(p);
                        Ok(())
                    },
                );
                return;
            }
            if started.elapsed() > Duration::from_secs(600) {
                backoff = self.timings.backoff_base;
            }
            restarts += 1;
            let message = format!(
                "back-off {}s restarting failed container={container_name} pod={}_{}({uid})",
                backoff.as_secs(),
                store::name_of(&pod),
                store::namespace_of(&pod)
            );
            record_event(
                &self.store,
                &pod,
                "Warning",
                "BackOff",
                "Back-off restarting failed container",
            );
            self.set_container_status(&pod, &container_name, |s| {
                s["lastState"] = terminated.clone();
                s["state"] = json!({"waiting": {"reason": "CrashLoopBackOff", "message": message}});
                s["ready"] = json!(false);
                s["started"] = json!(false);
                s["restartCount"] = json!(restarts);
            });
            tokio::time::sleep(backoff).await;
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
        loop {
            let mut command = if let Some(exec) = probe["exec"]["command"].as_array() {
                let argv: Vec<String> = exec
                    .iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect();
                let image = images::identify(&image_name).unwrap_or(Image::Shell);
                let argv = images::map_binary(&image, argv, &self.lab_binary);
                let mut command = tokio::process::Command::from(node::enter_command(
                    &self.topology,
                    &node,
                    &sandbox.netns,
                    &argv,
                ));
                command
                    .env_clear()
                    .envs(self.container_env(&pod, &container, &sandbox, &node));
                command
            } else if let Some(port) = probe["httpGet"]["port"].as_u64() {
                let path = probe["httpGet"]["path"].as_str().unwrap_or("/");
                let url = format!("http://{}:{port}{path}", sandbox.ip);
                let argv = [
                    "curl",
                    "-sf",
                    "-o",
                    "/dev/null",
                    "--max-time",
                    &timeout.as_secs().to_string(),
                    &url,
                ]
                .map(String::from);
                tokio::process::Command::from(node::enter_command(
                    &self.topology,
                    &node,
                    &self.topology.node_netns(&node),
                    &argv,
                ))
            } else {
                return;
            };
            command
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            let passed = matches!(tokio::time::timeout(timeout + Duration::from_secs(2), command.status()).await, Ok(Ok(s)) if s.success());
            failures = if passed { 0 } else { failures + 1 };
            ready = passed || (ready && failures < failure_threshold);
            // Published every period, not only on a change, as the kubelet's status
            // manager reconciles: the node lifecycle controller may have marked the pod
            // unready while this node's heartbeat was late, and a change-only update
            // would leave it unready for good. An unchanged status is not written.
            self.set_container_status(&pod, &container_name, |s| s["ready"] = json!(ready));
            tokio::time::sleep(period).await;
        }
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

/// Marks a node whose kubelet went silent as the node lifecycle controller does.
pub fn mark_node_unknown(node: &mut Value) {
    let now = now_rfc3339();
    if let Some(conditions) = node["status"]["conditions"].as_array_mut() {
        for condition in conditions {
            condition["status"] = json!("Unknown");
            condition["reason"] = json!("NodeStatusUnknown");
            condition["message"] = json!("Kubelet stopped posting node status.");
            condition["lastTransitionTime"] = json!(now);
        }
    }
}

/// Recomputes phase and the Ready/ContainersReady conditions from container statuses,
/// keeping each condition's lastTransitionTime while its status does not change.
pub fn refresh_pod_conditions(pod: &mut Value) {
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let all_ready = !statuses.is_empty() && statuses.iter().all(|s| s["ready"] == json!(true));
    let any_started = statuses
        .iter()
        .any(|s| !s["state"]["running"].is_null() || s["restartCount"].as_u64().unwrap_or(0) > 0);
    if pod["status"]["phase"] == json!("Pending") && any_started {
        pod["status"]["phase"] = json!("Running");
    }
    let now = now_rfc3339();
    let previous = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let condition = |kind: &str, status: bool| {
        let status = if status { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c["type"] == json!(kind) && c["status"] == json!(status))
            .and_then(|c| c["lastTransitionTime"].as_str().map(String::from))
            .unwrap_or_else(|| now.clone());
        json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since})
    };
    pod["status"]["conditions"] = json!([
        condition("PodScheduled", true),
        condition("Initialized", true),
        condition("ContainersReady", all_ready),
        condition("Ready", all_ready),
    ]);
}

#[derive(Default)]
struct PodWorkers(HashMap<String, JoinHandle<()>>);

impl Drop for PodWorkers {
    fn drop(&mut self) {
        for worker in self.0.values() {
            worker.abort();
        }
    }
}

impl PodRuntime for Runtime {
    fn exec_command(
        &self,
        pod: &Value,
        container: &str,
        argv: &[String],
    ) -> Result<tokio::process::Command, ApiError> {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        let spec = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == json!(container))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "container {container} is not valid for pod {}",
                    store::name_of(pod)
                ))
            })?;
        let running = pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == json!(container) && !s["state"]["running"].is_null());
        let sandbox = self.sandboxes.lock().unwrap().get(uid).cloned();
        let (Some(sandbox), true) = (sandbox, running) else {
            return Err(ApiError::bad_request(format!(
                "unable to upgrade connection: container not found (\"{container}\")"
            )));
        };
        let node = self.node(&sandbox.node)?;
        let image =
            images::identify(spec["image"].as_str().unwrap_or_default()).unwrap_or(Image::Shell);
        let argv = images::map_binary(&image, argv.to_vec(), &self.lab_binary);
        let mut command: tokio::process::Command =
            node::enter_command(&self.topology, &node, &sandbox.netns, &argv).into();
        let env = self.container_env(pod, spec, &sandbox, &node);
        command.env_clear().envs(env);
        Ok(command)
    }

    fn log_file(&self, pod: &Value, container: &str, previous: bool) -> Result<PathBuf, ApiError> {
        let status = pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == json!(container))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "container \"{container}\" in pod \"{}\" is waiting to start",
                    store::name_of(pod)
                ))
            })?;
        let restarts = status["restartCount"].as_u64().unwrap_or(0);
        let dir = log_dir(
            &self.topology,
            pod["metadata"]["uid"].as_str().unwrap_or_default(),
            container,
        );
        if previous {
            if restarts == 0 {
                return Err(ApiError::bad_request(format!(
                    "previous terminated container \"{container}\" in pod \"{}\" not found",
                    store::name_of(pod)
                )));
            }
            return Ok(dir.join(format!("{}.log", restarts - 1)));
        }
        (0..=restarts)
            .rev()
            .map(|n| dir.join(format!("{n}.log")))
            .find(|p| p.exists())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "container \"{container}\" in pod \"{}\" is waiting to start",
                    store::name_of(pod)
                ))
            })
    }
}
