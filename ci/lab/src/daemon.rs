//! The lab's background process: it owns the lab's network, PKI and control plane, boots
//! the nodes, and takes everything down again on SIGTERM.

use crate::controlplane::{self, ControlPlane};
use crate::kubelet::{self, Runtime, Timings};
use crate::node;
use crate::pki;
use crate::system::{self, io_context, shell_quote, Result, SystemError};
use crate::topology::{CalicoProfile, KubeletKind, NodeKind, NodeSpec, Topology, CALICO_UID};
use crate::{LabPaths, ReadyReport};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::wait::await_condition;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The image the lab's calico-node DaemonSet runs (the stand-in answers to it).
pub const CALICO_NODE_IMAGE: &str = "docker.io/calico/node:v3.28.0";

fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    io_context(std::fs::write(path, contents), || {
        format!("writing {}", path.display())
    })
}

/// How an inventory of the lab reaches its nodes.
#[derive(Clone, Copy)]
pub(crate) enum Reached<'a> {
    /// Over SSH: every node directly, or, with a bastion, every other node through it.
    OverSsh { bastion: Option<&'a NodeSpec> },
    /// No SSH at all: through the API, as on a managed cluster.
    ThroughNodeShells,
}

/// A postflight inventory describing this lab, as a user would write one for a cluster.
/// Nodes that are containers are restarted with `lab_binary`'s `reboot`, from here.
pub(crate) fn inventory(topology: &Topology, reached: Reached, lab_binary: &Path) -> String {
    let (written_by, access) = match reached {
        Reached::OverSsh { bastion } => {
            let jump = bastion
                .map(|bastion| format!("  jump: root@{}:22\n", bastion.ip))
                .unwrap_or_default();
            (
                if bastion.is_some() {
                    "postflight-lab bastion"
                } else {
                    "postflight-lab up"
                },
                format!("ssh:\n  user: root\n  port: 22\n  identity_file: ssh/id_ed25519\n  known_hosts: ssh/known_hosts\n{jump}"),
            )
        }
        Reached::ThroughNodeShells => (
            "postflight-lab up",
            "transport: node-shell\nnode_shell:\n  image: docker.io/library/busybox:1.37.0\n"
                .to_string(),
        ),
    };
    let mut text = format!(
        "# postflight inventory for the lab `{name}` (written by {written_by}).\n\
         cluster:\n  kubeconfig: postflight.kubeconfig\n  context: postflight-lab-{name}\n\
         {access}nodes:\n",
        name = topology.name
    );
    for node in &topology.nodes {
        text.push_str(&format!("  - name: {}\n", node.name));
        if let Reached::OverSsh { .. } = reached {
            text.push_str(&format!("    host: {}\n", node.ip));
        }
        if node.control_plane {
            text.push_str("    protected: true\n");
        }
        if let Reached::OverSsh {
            bastion: Some(bastion),
        } = reached
        {
            if bastion.name == node.name {
                // The bastion itself is the one node still reachable directly.
                text.push_str("    jump: none\n");
            }
        }
    }
    // No `calico:` section: a default inventory, which reads where and as whom
    // calico-node runs from its DaemonSet, whichever profile the lab runs.
    text.push_str(
        "probe:\n  namespace: postflight-probe\n  image: registry.k8s.io/e2e-test-images/agnhost:2.53\n  port: 8080\n",
    );
    let reboot = match topology.node_kind {
        NodeKind::Machine => "reboot:\n  command: systemctl reboot\n".to_string(),
        // As `docker restart {node}` restarts a kind node: from outside, here.
        NodeKind::Container => format!(
            "reboot:\n  command: {}\n  runs_on: local\n  node_kind: container\n",
            yaml_string(&format!(
                "{} reboot --name {} --node {{node}}",
                shell_quote(&lab_binary.to_string_lossy()),
                shell_quote(&topology.name)
            ))
        ),
    };
    text.push_str(&reboot);
    text.push_str(
        "timeouts:\n  node_not_ready: 60s\n  node_ready: 120s\n  calico_ready: 90s\n  connectivity: 30s\n",
    );
    text
}

/// A YAML double-quoted scalar: the command holds quotes and braces.
fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

/// calico-node's DaemonSet as the profile installs it. The hardened site runs it as
/// uid/gid 999 with the capabilities BIRD needs to program routes and listen on port 179;
/// the stock manifest and the operator run it as the image's user, root.
fn calico_daemonset(profile: CalicoProfile) -> serde_json::Value {
    let security = match profile {
        CalicoProfile::Hardened => json!({
            "runAsUser": CALICO_UID, "runAsGroup": CALICO_UID,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"]},
        }),
        CalicoProfile::Stock | CalicoProfile::Operator => json!({"privileged": true}),
    };
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "calico-node", "namespace": profile.namespace(), "labels": {"k8s-app": "calico-node"}},
        "spec": {
            "selector": {"matchLabels": {"k8s-app": "calico-node"}},
            "template": {
                "metadata": {"labels": {"k8s-app": "calico-node"}},
                "spec": {
                    "hostNetwork": true,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{
                        "name": "calico-node", "image": CALICO_NODE_IMAGE,
                        "env": [{"name": "NODENAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                                {"name": "CALICO_NETWORKING_BACKEND", "value": "bird"}],
                        "securityContext": security,
                        "readinessProbe": {"exec": {"command": ["/bin/calico-node", "-bird-ready", "-threshold-time=5s"]}, "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 2},
                        "volumeMounts": [{"name": "var-run-calico", "mountPath": "/var/run/calico"}],
                    }],
                    "volumes": [{"name": "var-run-calico", "hostPath": {"path": "/var/run/calico", "type": "DirectoryOrCreate"}}],
                },
            },
        },
    })
}

/// Kernel limits a lab shares with the whole host, raised (never lowered) as kind's
/// known issues tell its users to:
/// - the ARP table is one table for every network namespace, and its default limit
///   (1,024 entries) is what one real host needs. A lab node has a neighbour entry for
///   every peer it speaks BGP to and every pod on it: 50 nodes need 2,450 for BGP alone,
///   and past the limit new entries fail ("neighbor table overflow");
/// - inotify instances are counted per user across the host (128 by default), and every
///   real node's kubelet, containerd and kube-proxy take several: two 4-node labs side by
///   side ran out, and a kubelet that cannot watch its files never registers ("too many
///   open files").
const KERNEL_LIMITS: [(&str, u64); 5] = [
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh1", 4_096),
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh2", 16_384),
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh3", 32_768),
    ("/proc/sys/fs/inotify/max_user_instances", 8_192),
    ("/proc/sys/fs/inotify/max_user_watches", 524_288),
];

/// Where the limits cannot be read or raised (a lab inside a container that does not
/// own the host's settings), the lab still starts, with a warning: it then holds as many
/// nodes as the host's limits do.
fn raise_kernel_limits() {
    for (path, wanted) in KERNEL_LIMITS {
        let raised = std::fs::read_to_string(path).and_then(|current| {
            if current.trim().parse::<u64>().unwrap_or(0) < wanted {
                std::fs::write(path, wanted.to_string())
            } else {
                Ok(())
            }
        });
        if let Err(error) = raised {
            tracing::warn!(
                "cannot raise {path} to {wanted} ({error}): a large lab may run out of it"
            );
        }
    }
}

/// Builds the host side of the lab network: the bridge namespace and the host's veth.
fn create_network(topology: &Topology) -> Result<()> {
    raise_kernel_limits();
    let bridge = topology.bridge_netns();
    system::run_args("ip", &["netns", "add", &bridge])?;
    system::netns_sh(
        &bridge,
        "ip link set lo up; ip link add br0 type bridge; ip link set br0 up",
    )?;
    let host = topology.host_veth();
    system::ip(
        None,
        &[
            "link", "add", &host, "type", "veth", "peer", "name", "host", "netns", &bridge,
        ],
    )?;
    system::ip(
        Some(&bridge),
        &["link", "set", "host", "master", "br0", "up"],
    )?;
    system::ip(
        None,
        &[
            "addr",
            "add",
            &format!("{}/24", topology.host_ip()),
            "dev",
            &host,
        ],
    )?;
    system::ip(None, &["link", "set", &host, "up"])?;
    for node in &topology.nodes {
        node::create_network(topology, node)?;
    }
    Ok(())
}

fn ssh_material(paths: &LabPaths) -> Result<()> {
    io_context(std::fs::create_dir_all(paths.ssh_dir()), || {
        "creating the ssh directory".into()
    })?;
    let key = paths.ssh_key();
    system::run_args(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "postflight-lab",
            "-f",
            &key.to_string_lossy(),
        ],
    )?;
    let public = io_context(std::fs::read_to_string(key.with_extension("pub")), || {
        "reading the lab public key".into()
    })?;
    write(&paths.authorized_keys(), public)
}

pub struct DaemonArgs {
    pub topology: Topology,
    pub lab_binary: PathBuf,
    pub k8s_binary: PathBuf,
    pub timings: Timings,
}

/// The RBAC postflight runs with in every lab: the manifest users apply, and nothing else.
pub const POSTFLIGHT_RBAC: &str = include_str!("../../rbac.yaml");

/// Runs the lab's kubectl (the server's own version) as the lab's admin, feeding it
/// `stdin`; returns what it printed.
pub async fn admin_kubectl(
    k8s_binary: &Path,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::new(k8s_binary);
    command
        .arg("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let describe = format!("kubectl {}", args.join(" "));
    let mut child = command.spawn().map_err(|source| SystemError::Spawn {
        command: describe.clone(),
        source,
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes()).await;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|source| SystemError::Spawn {
            command: describe.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(SystemError::Failed {
            command: describe,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn other(context: &str, message: impl std::fmt::Display) -> SystemError {
    SystemError::Io {
        context: context.into(),
        source: std::io::Error::other(message.to_string()),
    }
}

pub async fn run(args: DaemonArgs) -> std::result::Result<(), SystemError> {
    let started = Instant::now();
    let topology = args.topology;
    let paths = LabPaths::new(&topology.state_dir);
    let real = topology.kubelet == KubeletKind::Real;
    // A real node's parts are found (or built) before anything of the lab exists: a
    // missing one fails `up` at once, naming the part and the fix.
    let parts = if real {
        let parts = crate::realnode::Parts::find(&args.k8s_binary)
            .map_err(|e| other("finding a real node's parts", e))?;
        write(
            &topology.state_dir.join("parts.json"),
            serde_json::to_vec_pretty(&parts).expect("parts serialise"),
        )?;
        Some(parts)
    } else {
        None
    };
    write(
        &topology.topology_file(),
        serde_json::to_vec_pretty(&topology).expect("topology serialises"),
    )?;
    if !real {
        // A simulated node binds its tmpfiles.d over this machine's, which must exist; a
        // real node makes its own in its overlay of /etc.
        let _ = std::fs::create_dir_all("/etc/tmpfiles.d");
    }
    ssh_material(&paths)?;
    let mut known_hosts = String::new();
    for node in &topology.nodes {
        node::provision(&topology, node, &paths.authorized_keys(), &args.lab_binary)?;
        let host_key = io_context(
            std::fs::read_to_string(
                node::NodePaths::new(&topology, node)
                    .host_key
                    .with_extension("pub"),
            ),
            || format!("reading the host key of {}", node.name),
        )?;
        let key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        known_hosts.push_str(&format!("{} {}\n", node.ip, key.join(" ")));
    }
    write(&paths.known_hosts(), known_hosts)?;
    create_network(&topology)?;

    let pki = pki::create(&topology)?;
    if let Some(parts) = &parts {
        let images_started = Instant::now();
        let (t, p) = (topology.clone(), parts.clone());
        tokio::task::spawn_blocking(move || crate::realnode::build_images(&t, &p))
            .await
            .expect("building images does not panic")
            .map_err(|e| other("building the nodes' images", e))?;
        tracing::info!(
            seconds = images_started.elapsed().as_secs_f64(),
            "images built"
        );
        for node in &topology.nodes {
            crate::realnode::provision(&topology, node, parts, &pki)
                .map_err(|e| other(&format!("provisioning {}", node.name), e))?;
        }
    }
    write(
        &paths.state_dir.join("ca.crt"),
        std::fs::read(pki.ca_cert()).unwrap_or_default(),
    )?;
    let mut plane = ControlPlane::start(&topology, &args.k8s_binary, &pki, &args.timings).await?;
    let plane_paths = controlplane::ControlPlanePaths::new(&topology.state_dir);
    // kubectl at the server's version, for the lab's users and tests.
    let kubectl_link = paths.kubectl();
    io_context(
        std::fs::create_dir_all(kubectl_link.parent().expect("bin directory"))
            .and_then(|()| std::os::unix::fs::symlink(&args.k8s_binary, &kubectl_link)),
        || format!("linking {}", kubectl_link.display()),
    )?;
    io_context(
        std::fs::copy(plane_paths.kubeconfig("admin"), paths.kubeconfig()),
        || "writing the admin kubeconfig".into(),
    )?;
    let kubectl = |arguments: &'static [&'static str], stdin: Option<String>| {
        let (binary, kubeconfig) = (args.k8s_binary.clone(), paths.kubeconfig());
        async move { admin_kubectl(&binary, &kubeconfig, arguments, stdin.as_deref()).await }
    };
    // postflight's identity: a ServiceAccount bound to the RBAC users apply, and a token
    // for it, in the kubeconfig the lab's inventory names.
    kubectl(&["apply", "-f", "-"], Some(POSTFLIGHT_RBAC.to_string())).await?;
    kubectl(&["create", "namespace", "postflight"], None).await?;
    kubectl(
        &[
            "create",
            "serviceaccount",
            "postflight",
            "--namespace",
            "postflight",
        ],
        None,
    )
    .await?;
    let token = kubectl(
        &[
            "create",
            "token",
            "postflight",
            "--namespace",
            "postflight",
            "--duration",
            "48h",
        ],
        None,
    )
    .await?;
    let ca_pem = io_context(std::fs::read_to_string(pki.ca_cert()), || {
        "reading the lab CA".into()
    })?;
    write(
        &paths.postflight_kubeconfig(),
        controlplane::token_kubeconfig(
            &plane.server,
            &ca_pem,
            token.trim(),
            &format!("postflight-lab-{}", topology.name),
            "postflight",
        ),
    )?;
    write(
        &paths.inventory(),
        inventory(
            &topology,
            Reached::OverSsh { bastion: None },
            &args.lab_binary,
        ),
    )?;
    write(
        &paths.node_shell_inventory(),
        inventory(&topology, Reached::ThroughNodeShells, &args.lab_binary),
    )?;
    if topology.calico == CalicoProfile::Operator {
        // The operator's namespace runs privileged pods, and says so to Pod Security.
        let namespace = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "calico-system", "labels": {"pod-security.kubernetes.io/enforce": "privileged"}},
        });
        kubectl(&["apply", "-f", "-"], Some(namespace.to_string())).await?;
    }
    if real {
        for object in crate::realnode::calico_objects(&topology) {
            kubectl(&["apply", "-f", "-"], Some(object.to_string())).await?;
        }
        // The API server's own identity may use the kubelets' API (exec, logs,
        // port-forward): a real kubelet authorizes it by webhook, as kubeadm sets up.
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "kube-apiserver-kubelet-api-admin"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kubelet-api-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kube-apiserver-kubelet-client"}],
        });
        kubectl(&["apply", "-f", "-"], Some(binding.to_string())).await?;
    } else {
        kubectl(
            &["apply", "-f", "-"],
            Some(calico_daemonset(topology.calico).to_string()),
        )
        .await?;
    }

    // Each kubelet is a client of its own, as the node's identity.
    let mut clients = HashMap::new();
    for node in &topology.nodes {
        let pair = pki.node_client(&node.name);
        let read = |path: &Path| {
            io_context(std::fs::read_to_string(path), || {
                format!("reading {}", path.display())
            })
        };
        let kubeconfig_path = plane_paths.kubeconfig(&format!("kubelet-{}", node.name));
        let kubeconfig = controlplane::certificate_kubeconfig(
            &plane.server,
            &ca_pem,
            &read(&pair.cert)?,
            &read(&pair.key)?,
            &format!("postflight-lab-{}", topology.name),
            &format!("system:node:{}", node.name),
        );
        write(&kubeconfig_path, &kubeconfig)?;
        if real {
            // A real node's own copies, in its /etc/kubernetes, as kubeadm writes them.
            let node_paths = crate::realnode::RealPaths::new(&topology, node);
            write(&node_paths.kubelet_kubeconfig, &kubeconfig)?;
            write(
                &node_paths.kube_proxy_kubeconfig,
                read(&plane_paths.kubeconfig("kube-proxy"))?,
            )?;
        }
        let client = kubelet::client_from_kubeconfig(&kubeconfig_path)
            .await
            .map_err(|e| other("a kubelet's API client", e))?;
        clients.insert(node.name.clone(), client);
    }
    if !real {
        plane.start_kubelet_server(&topology)?;
    }
    let runtime = Runtime::new(
        topology.clone(),
        args.lab_binary.clone(),
        args.timings,
        plane.server.clone(),
        plane_paths.pods_dir(),
        clients,
    );
    let admin = kubelet::client_from_kubeconfig(&paths.kubeconfig())
        .await
        .map_err(|e| other("the lab's admin client", e))?;
    let plane = Arc::new(tokio::sync::Mutex::new(plane));
    crate::control::serve(&topology, runtime.clone(), plane.clone(), admin.clone())?;

    let booted = Instant::now();
    let boots = topology.nodes.iter().map(|n| {
        let runtime = runtime.clone();
        let name = n.name.clone();
        async move { runtime.boot(&name).await }
    });
    for result in futures::future::join_all(boots).await {
        result.map_err(|e| other("booting", e))?;
    }
    // kubeadm labels the control-plane node; a kubelet may not label itself so.
    for node in topology.nodes.iter().filter(|n| n.control_plane) {
        let nodes: kube::Api<Node> = kube::Api::all(admin.clone());
        let registered = await_condition(nodes, &node.name, |n: Option<&Node>| n.is_some());
        tokio::time::timeout(Duration::from_secs(120), registered)
            .await
            .map_err(|_| {
                other(
                    "registering nodes",
                    format!("{} did not register", node.name),
                )
            })?
            .map_err(|e| other("watching nodes", e))?;
        let label = "node-role.kubernetes.io/control-plane=";
        let binary = args.k8s_binary.clone();
        admin_kubectl(
            &binary,
            &paths.kubeconfig(),
            &["label", "node", &node.name, label, "--overwrite"],
            None,
        )
        .await?;
    }
    let ready_at = wait_until_ready(&admin, topology.calico.namespace(), topology.nodes.len())
        .await
        .map_err(|e| other("waiting for the lab to be ready", e))?;
    let api_port = plane.lock().await.ports.apiserver;
    let report = ReadyReport {
        api_port,
        pid: std::process::id(),
        setup_seconds: (booted - started).as_secs_f64(),
        boot_to_calico_ready_seconds: (ready_at - booted).as_secs_f64(),
    };
    write(
        &paths.ready_file(),
        serde_json::to_vec_pretty(&report).expect("report serialises"),
    )?;
    tracing::info!(?report, "lab ready");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .expect("SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("stopping the lab");
    runtime.shutdown_all().await;
    plane.lock().await.stop().await;
    Ok(())
}

/// Whether a Node's Ready condition is True.
pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Waits until every node is Ready and the calico-node DaemonSet reports a Ready pod on
/// each, as `kubectl rollout status` reads it.
async fn wait_until_ready(
    admin: &kube::Client,
    calico_namespace: &str,
    node_count: usize,
) -> std::result::Result<Instant, String> {
    let daemonsets: kube::Api<DaemonSet> = kube::Api::namespaced(admin.clone(), calico_namespace);
    let count = node_count as i32;
    let rolled_out = await_condition(daemonsets, "calico-node", move |ds: Option<&DaemonSet>| {
        ds.and_then(|ds| ds.status.as_ref())
            .is_some_and(|s| s.desired_number_scheduled == count && s.number_ready == count)
    });
    tokio::time::timeout(Duration::from_secs(300), rolled_out)
        .await
        .map_err(|_| "calico-node was not Ready on every node within 300 s".to_string())?
        .map_err(|e| e.to_string())?;
    let nodes: kube::Api<Node> = kube::Api::all(admin.clone());
    for node in nodes
        .list(&Default::default())
        .await
        .map_err(|e| e.to_string())?
    {
        let name = node.metadata.name.clone().unwrap_or_default();
        let ready = await_condition(nodes.clone(), &name, |n: Option<&Node>| {
            n.is_some_and(node_is_ready)
        });
        tokio::time::timeout(Duration::from_secs(120), ready)
            .await
            .map_err(|_| format!("node {name} was not Ready within 120 s"))?
            .map_err(|e| e.to_string())?;
    }
    Ok(Instant::now())
}
