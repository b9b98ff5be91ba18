//! The lab's background process: it owns the lab's network, PKI and control plane, boots
//! the nodes, and takes everything down again on SIGTERM.

use crate::apiserver::store::Store;
use crate::apiserver::{ApiServer, PodRuntime};
use crate::kubelet::{Runtime, Timings};
use crate::node;
use crate::system::{self, io_context, Result, SystemError};
use crate::topology::Topology;
use crate::{LabPaths, ReadyReport};
use base64::Engine;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The image the lab's calico-node DaemonSet runs (the stand-in answers to it).
pub const CALICO_NODE_IMAGE: &str = "docker.io/calico/node:v3.28.0";

fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    io_context(std::fs::write(path, contents), || {
        format!("writing {}", path.display())
    })
}

struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

fn make_pki(topology: &Topology) -> std::result::Result<Pki, rcgen::Error> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("postflight-lab-{} CA", topology.name),
    );
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate()?;
    let mut server_params = rcgen::CertificateParams::new(vec![
        "localhost".to_string(),
        "kubernetes".into(),
        "kubernetes.default.svc".into(),
    ])?;
    server_params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    server_params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(topology.host_ip().into()));
    server_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver");
    server_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &issuer)?;
    Ok(Pki {
        ca_pem: ca_cert.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}

fn kubeconfig(topology: &Topology, port: u16, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let name = format!("postflight-lab-{}", topology.name);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\n\
         users:\n- name: {name}-admin\n  user:\n    token: {token}\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}-admin\n\
         current-context: {name}\n"
    )
}

/// A postflight inventory describing this lab, as a user would write one for a cluster.
fn inventory(topology: &Topology) -> String {
    let mut text = format!(
        "# postflight inventory for the lab `{name}` (written by postflight-lab up).\n\
         cluster:\n  kubeconfig: kubeconfig\n  context: postflight-lab-{name}\n\
         ssh:\n  user: root\n  port: 22\n  identity_file: ssh/id_ed25519\n  known_hosts: ssh/known_hosts\n\
         nodes:\n",
        name = topology.name
    );
    for node in &topology.nodes {
        text.push_str(&format!("  - name: {}\n    host: {}\n", node.name, node.ip));
        if node.control_plane {
            text.push_str("    protected: true\n");
        }
    }
    text.push_str(
        "calico:\n  namespace: kube-system\n  selector: k8s-app=calico-node\n  run_dir: /var/run/calico\n  run_dir_mode: \"0755\"\n  run_dir_owner: 999\n  run_dir_group: 999\n\
         \x20 tmpfiles_file: /etc/tmpfiles.d/calico.conf\n  tmpfiles_line: \"d /run/calico 0755 999 999 -\"\n\
         probe:\n  namespace: postflight-probe\n  image: registry.k8s.io/e2e-test-images/agnhost:2.53\n  port: 8080\n\
         reboot:\n  command: systemctl reboot\n\
         timeouts:\n  node_not_ready: 60s\n  node_ready: 120s\n  calico_ready: 90s\n  connectivity: 30s\n",
    );
    text
}

fn calico_daemonset() -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "calico-node", "namespace": "kube-system", "labels": {"k8s-app": "calico-node"}},
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
                        "readinessProbe": {"exec": {"command": ["/bin/calico-node", "-bird-ready", "-threshold-time=5s"]}, "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 2},
                        "volumeMounts": [{"name": "var-run-calico", "mountPath": "/var/run/calico"}],
                    }],
                    "volumes": [{"name": "var-run-calico", "hostPath": {"path": "/var/run/calico", "type": "DirectoryOrCreate"}}],
                },
            },
        },
    })
}

/// Builds the host side of the lab network: the bridge namespace and the host's veth.
fn create_network(topology: &Topology) -> Result<()> {
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
    pub timings: Timings,
}

pub async fn run(args: DaemonArgs) -> std::result::Result<(), SystemError> {
    let started = Instant::now();
    let topology = args.topology;
    let paths = LabPaths::new(&topology.state_dir);
    write(
        &topology.topology_file(),
        serde_json::to_vec_pretty(&topology).expect("topology serialises"),
    )?;
    let _ = std::fs::create_dir_all("/etc/tmpfiles.d");
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

    let pki = make_pki(&topology).map_err(|e| SystemError::Io {
        context: "making the lab PKI".into(),
        source: std::io::Error::other(e),
    })?;
    write(&paths.state_dir.join("ca.crt"), &pki.ca_pem)?;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let store = Arc::new(Store::new());
    let runtime = Runtime::new(
        topology.clone(),
        store.clone(),
        args.lab_binary.clone(),
        args.timings,
    );
    let request_log = io_context(std::fs::File::create(paths.request_log()), || {
        "creating the request log".into()
    })?;
    let api = ApiServer::new(
        store.clone(),
        token.clone(),
        runtime.clone() as Arc<dyn PodRuntime>,
        request_log,
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        pki.server_cert_pem.into_bytes(),
        pki.server_key_pem.into_bytes(),
    )
    .await
    .map_err(|e| SystemError::Io {
        context: "loading the server certificate".into(),
        source: e,
    })?;
    let loopback = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| SystemError::Io {
        context: "binding 127.0.0.1".into(),
        source: e,
    })?;
    let port = loopback.local_addr().expect("bound").port();
    let lab_side =
        std::net::TcpListener::bind((topology.host_ip(), port)).map_err(|e| SystemError::Io {
            context: format!("binding {}:{port}", topology.host_ip()),
            source: e,
        })?;
    for listener in [loopback, lab_side] {
        listener.set_nonblocking(true).expect("nonblocking");
        let server = axum_server::from_tcp_rustls(listener, tls.clone());
        let app = api.router();
        tokio::spawn(async move { server.serve(app.into_make_service()).await });
    }
    write(
        &paths.kubeconfig(),
        kubeconfig(&topology, port, &pki.ca_pem, &token),
    )?;
    write(&paths.inventory(), inventory(&topology))?;

    for namespace in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let _ = store.create("namespaces", "", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}, "status": {"phase": "Active"}}));
    }
    let _ = store.create("daemonsets.apps", "kube-system", calico_daemonset());
    tokio::spawn(crate::controllers::run(store.clone(), args.timings));
    crate::control::serve(&topology, runtime.clone(), api.clone())?;

    let booted = Instant::now();
    let boots = topology.nodes.iter().map(|n| {
        let runtime = runtime.clone();
        let name = n.name.clone();
        async move { runtime.boot(&name).await }
    });
    for result in futures::future::join_all(boots).await {
        result.map_err(|e| SystemError::Io {
            context: "booting".into(),
            source: std::io::Error::other(e.message),
        })?;
    }
    let ready_at = wait_until_ready(&store, topology.nodes.len()).await;
    let report = ReadyReport {
        api_port: port,
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
    Ok(())
}

async fn wait_until_ready(store: &Store, node_count: usize) -> Instant {
    let mut events = store.subscribe();
    loop {
        let nodes = store.list("nodes", None).0;
        let calico: Vec<_> = store
            .list("pods", Some("kube-system"))
            .0
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["k8s-app"] == "calico-node")
            .collect();
        let nodes_ready =
            nodes.len() == node_count && nodes.iter().all(crate::controllers::node_is_ready);
        // The DaemonSet's own status counts too, as `kubectl rollout status` reads it:
        // its controller publishes a tick after the pods turn Ready, and a user who
        // looks right after `up` must not see a half-ready DaemonSet.
        let daemonset_ready = store
            .get("daemonsets.apps", "kube-system", "calico-node")
            .is_some_and(|ds| ds["status"]["numberReady"] == serde_json::json!(node_count));
        if nodes_ready
            && daemonset_ready
            && calico.len() == node_count
            && calico.iter().all(crate::apiserver::pod_is_ready)
        {
            return Instant::now();
        }
        let _ = events.recv().await;
    }
}
