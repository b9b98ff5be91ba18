//! The lab's real Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager
//! and kube-scheduler, all from the `lab-k8s` binary that `ci/lab/k8s` builds from one
//! pinned Kubernetes version, plus the streaming server that serves every lab node's
//! kubelet API (exec and logs). This module owns their flags, their kubeconfigs, their
//! processes and the two faults that act on them: an API server outage and an etcd
//! compaction.
//!
//! Everything listens inside the lab's addresses: the API server on the host's address on
//! the lab bridge, etcd and the components' own ports on loopback.

use crate::pki::PkiPaths;
use crate::system::{io_context, Result, SystemError};
use crate::topology::Topology;
use crate::Timings;
use base64::Engine;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The Kubernetes version the lab runs, as pinned in `ci/lab/k8s/VERSION`.
pub const KUBERNETES_VERSION: &str = include_str!("../k8s/VERSION");

/// The directory that holds the Go module of the lab's control plane.
pub fn go_module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s")
}

/// Builds `lab-k8s` when it is missing or out of date (Go's caches make a rebuild a
/// link), and returns its path. `POSTFLIGHT_LAB_K8S_BIN` names a prebuilt one instead.
pub fn ensure_binary() -> std::result::Result<PathBuf, String> {
    if let Ok(path) = std::env::var("POSTFLIGHT_LAB_K8S_BIN") {
        return Ok(path.into());
    }
    let script = go_module_dir().join("build.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "building the lab's control plane failed ({}); run `bash {}` to see why",
            output.status,
            script.display()
        ));
    }
    let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
    Ok(path.into())
}

/// The ports one lab's control plane uses. Every lab gets its own, so that several labs
/// (parallel tests) run side by side.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Ports {
    pub apiserver: u16,
    pub etcd_client: u16,
    pub etcd_peer: u16,
}

fn free_port(address: std::net::Ipv4Addr) -> Result<u16> {
    let listener = io_context(std::net::TcpListener::bind((address, 0)), || {
        format!("finding a free port on {address}")
    })?;
    Ok(listener.local_addr().expect("bound").port())
}

impl Ports {
    pub fn pick(topology: &Topology) -> Result<Ports> {
        let loopback = std::net::Ipv4Addr::LOCALHOST;
        Ok(Ports {
            apiserver: free_port(topology.host_ip())?,
            etcd_client: free_port(loopback)?,
            etcd_peer: free_port(loopback)?,
        })
    }
}

/// Where a lab's control plane keeps its files.
#[derive(Debug, Clone)]
pub struct ControlPlanePaths {
    pub dir: PathBuf,
}

impl ControlPlanePaths {
    pub fn new(state_dir: &Path) -> Self {
        ControlPlanePaths {
            dir: state_dir.join("control-plane"),
        }
    }
    pub fn etcd_data(&self) -> PathBuf {
        self.dir.join("etcd")
    }
    pub fn log(&self, component: &str) -> PathBuf {
        self.dir.join(format!("{component}.log"))
    }
    pub fn kubeconfig(&self, component: &str) -> PathBuf {
        self.dir.join(format!("{component}.kubeconfig"))
    }
    pub fn admission_config(&self) -> PathBuf {
        self.dir.join("admission.yaml")
    }
    pub fn pods_dir(&self) -> PathBuf {
        self.dir.join("kubelet-pods")
    }
    pub fn audit_policy(&self) -> PathBuf {
        self.dir.join("audit-policy.yaml")
    }
    /// Every request postflight's ServiceAccount makes, one JSON event per line: what the
    /// benchmark counts requests per run from, since the API server's own request metrics
    /// cannot tell postflight from the lab's kubelets and controllers.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("postflight-audit.log")
    }
}

/// Audits postflight's own ServiceAccount at Metadata level and nothing else.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: [\"system:serviceaccount:postflight:postflight\"]
  - level: None
";

/// A kubeconfig whose user authenticates with a client certificate from the lab CA.
pub fn certificate_kubeconfig(
    server: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    cluster: &str,
    user: &str,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n\
         contexts:\n- name: {cluster}\n  context:\n    cluster: {cluster}\n    user: {user}\ncurrent-context: {cluster}\n",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    )
}

/// A kubeconfig whose user authenticates with a bearer token.
pub fn token_kubeconfig(
    server: &str,
    ca_pem: &str,
    token: &str,
    cluster: &str,
    user: &str,
) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: {user}\n  user:\n    token: {token}\n\
         contexts:\n- name: {cluster}\n  context:\n    cluster: {cluster}\n    user: {user}\ncurrent-context: {cluster}\n"
    )
}

fn read(path: &Path) -> Result<String> {
    io_context(std::fs::read_to_string(path), || {
        format!("reading {}", path.display())
    })
}

fn write(path: &Path, contents: &str) -> Result<()> {
    io_context(std::fs::write(path, contents), || {
        format!("writing {}", path.display())
    })
}

/// Pod Security as the issue of the lab's cluster demands: `baseline` enforced everywhere
/// by default, kube-system exempt (calico-node is privileged there, as on a real cluster);
/// namespaces that want `restricted` say so with the standard label.
const ADMISSION_CONFIG: &str = "apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    defaults:
      enforce: baseline
      enforce-version: latest
      audit: baseline
      audit-version: latest
      warn: baseline
      warn-version: latest
    exemptions:
      usernames: []
      runtimeClasses: []
      namespaces: [kube-system]
";

/// One running component, with how to start it again.
struct Component {
    name: &'static str,
    argv: Vec<String>,
    child: Option<Child>,
}

/// The lab's running control plane. Dropping it kills every component.
pub struct ControlPlane {
    binary: PathBuf,
    paths: ControlPlanePaths,
    pki: PkiPaths,
    pub ports: Ports,
    pub server: String,
    etcd: Component,
    apiserver: Component,
    controller_manager: Component,
    scheduler: Component,
    kubelet_server: Option<Component>,
}

/// The flags the controller manager and the scheduler share: one kubeconfig for the API,
/// and no endpoint of their own (`--secure-port=0`): nothing in the lab reads their
/// health or metrics, and a port picked free and bound later could be taken meanwhile by
/// a lab starting beside this one; a single instance, so no leader election.
fn client_component_flags(kubeconfig: &Path) -> Vec<String> {
    let kubeconfig = kubeconfig.display();
    vec![
        format!("--kubeconfig={kubeconfig}"),
        "--secure-port=0".into(),
        "--leader-elect=false".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

/// Starts a component's process, its output appended to its log.
fn spawn(binary: &Path, paths: &ControlPlanePaths, component: &mut Component) -> Result<()> {
    let log = io_context(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.log(component.name)),
        || format!("opening the log of {}", component.name),
    )?;
    let mut command = Command::new(binary);
    command
        .args(&component.argv)
        .stdin(Stdio::null())
        .stdout(io_context(log.try_clone(), || "log handle".into())?)
        .stderr(log)
        // Two cores carry the whole control plane and every simulated node, and memory
        // is plentiful: a collection every time the heap doubles (Go's default) left the
        // API server spending a large share of its CPU in the collector under a 50-node
        // burst. GOMEMLIMIT bounds each component's heap all the same.
        .env("GOGC", "200")
        .env("GOMEMLIMIT", "1GiB")
        .kill_on_drop(true);
    let child = command.spawn().map_err(|source| SystemError::Spawn {
        command: format!("{} {}", binary.display(), component.name),
        source,
    })?;
    component.child = Some(child);
    Ok(())
}

impl ControlPlane {
    /// Starts etcd, the API server, the controller manager and the scheduler, and
    /// returns once the API server answers `/readyz` to the lab's admin.
    pub async fn start(
        topology: &Topology,
        binary: &Path,
        pki: &PkiPaths,
        timings: &Timings,
    ) -> Result<ControlPlane> {
        let paths = ControlPlanePaths::new(&topology.state_dir);
        io_context(std::fs::create_dir_all(&paths.dir), || {
            format!("creating {}", paths.dir.display())
        })?;
        io_context(std::fs::create_dir_all(paths.pods_dir()), || {
            "creating the kubelets' pod directory".into()
        })?;
        write(&paths.admission_config(), ADMISSION_CONFIG)?;
        write(&paths.audit_policy(), AUDIT_POLICY)?;
        let ports = Ports::pick(topology)?;
        let server = format!("https://{}:{}", topology.host_ip(), ports.apiserver);
        let ca_pem = read(&pki.ca_cert())?;
        for (component, file, user) in [
            ("admin", "admin", "postflight-lab-admin"),
            (
                "controller-manager",
                "controller-manager",
                "system:kube-controller-manager",
            ),
            ("scheduler", "scheduler", "system:kube-scheduler"),
            // Bound to system:node-proxier by Kubernetes' bootstrap policy.
            ("kube-proxy", "kube-proxy", "system:kube-proxy"),
        ] {
            let pair = pki.pair(file);
            write(
                &paths.kubeconfig(component),
                &certificate_kubeconfig(
                    &server,
                    &ca_pem,
                    &read(&pair.cert)?,
                    &read(&pair.key)?,
                    &format!("postflight-lab-{}", topology.name),
                    user,
                ),
            )?;
        }
        let p = |path: PathBuf| path.to_string_lossy().into_owned();
        let etcd_url = format!("https://127.0.0.1:{}", ports.etcd_client);
        let etcd = Component {
            name: "etcd",
            argv: vec![
                "etcd".into(),
                format!("--data-dir={}", p(paths.etcd_data())),
                format!("--listen-client-url={etcd_url}"),
                format!("--listen-peer-url=http://127.0.0.1:{}", ports.etcd_peer),
                format!("--cert-file={}", p(pki.pair("etcd-server").cert)),
                format!("--key-file={}", p(pki.pair("etcd-server").key)),
                format!("--trusted-ca-file={}", p(pki.ca_cert())),
            ],
            child: None,
        };
        let seconds = |d: Duration| format!("{}ms", d.as_millis());
        let apiserver = Component {
            name: "kube-apiserver",
            argv: vec![
                "kube-apiserver".into(),
                format!("--etcd-servers={etcd_url}"),
                format!("--etcd-cafile={}", p(pki.ca_cert())),
                format!(
                    "--etcd-certfile={}",
                    p(pki.pair("apiserver-etcd-client").cert)
                ),
                format!(
                    "--etcd-keyfile={}",
                    p(pki.pair("apiserver-etcd-client").key)
                ),
                format!("--bind-address={}", topology.host_ip()),
                format!("--advertise-address={}", topology.host_ip()),
                format!("--secure-port={}", ports.apiserver),
                format!("--tls-cert-file={}", p(pki.pair("apiserver").cert)),
                format!("--tls-private-key-file={}", p(pki.pair("apiserver").key)),
                format!("--client-ca-file={}", p(pki.ca_cert())),
                "--authorization-mode=Node,RBAC".into(),
                "--enable-admission-plugins=NodeRestriction".into(),
                format!(
                    "--admission-control-config-file={}",
                    p(paths.admission_config())
                ),
                format!("--audit-policy-file={}", p(paths.audit_policy())),
                format!("--audit-log-path={}", p(paths.audit_log())),
                "--audit-log-format=json".into(),
                "--allow-privileged=true".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!(
                    "--service-account-key-file={}",
                    p(pki.service_account_public_key())
                ),
                format!(
                    "--service-account-signing-key-file={}",
                    p(pki.service_account_key())
                ),
                format!("--service-cluster-ip-range={}", topology.service_cidr()),
                format!(
                    "--kubelet-client-certificate={}",
                    p(pki.pair("apiserver-kubelet-client").cert)
                ),
                format!(
                    "--kubelet-client-key={}",
                    p(pki.pair("apiserver-kubelet-client").key)
                ),
                format!("--kubelet-certificate-authority={}", p(pki.ca_cert())),
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--cert-dir={}", p(paths.dir.join("apiserver-certs"))),
                "--profiling=false".into(),
                "--event-ttl=1h".into(),
                "--v=1".into(),
            ],
            child: None,
        };
        let controller_manager = Component {
            name: "kube-controller-manager",
            argv: [
                vec!["kube-controller-manager".to_string()],
                client_component_flags(&paths.kubeconfig("controller-manager")),
                vec![
                    format!(
                        "--cert-dir={}",
                        p(paths.dir.join("controller-manager-certs"))
                    ),
                    "--use-service-account-credentials=true".into(),
                    format!("--controllers={}", CONTROLLERS.join(",")),
                    format!(
                        "--service-account-private-key-file={}",
                        p(pki.service_account_key())
                    ),
                    format!("--root-ca-file={}", p(pki.ca_cert())),
                    format!("--node-monitor-period={}", seconds(Duration::from_secs(1))),
                    format!(
                        "--node-monitor-grace-period={}",
                        seconds(timings.node_grace)
                    ),
                    "--node-startup-grace-period=60s".into(),
                ],
            ]
            .concat(),
            child: None,
        };
        let scheduler = Component {
            name: "kube-scheduler",
            argv: [
                vec!["kube-scheduler".to_string()],
                client_component_flags(&paths.kubeconfig("scheduler")),
            ]
            .concat(),
            child: None,
        };
        let mut plane = ControlPlane {
            binary: binary.to_path_buf(),
            paths,
            pki: pki.clone(),
            ports,
            server,
            etcd,
            apiserver,
            controller_manager,
            scheduler,
            kubelet_server: None,
        };
        spawn(&plane.binary, &plane.paths, &mut plane.etcd)?;
        spawn(&plane.binary, &plane.paths, &mut plane.apiserver)?;
        plane.wait_ready(Duration::from_secs(120)).await?;
        spawn(&plane.binary, &plane.paths, &mut plane.controller_manager)?;
        spawn(&plane.binary, &plane.paths, &mut plane.scheduler)?;
        Ok(plane)
    }

    /// Starts the streaming server that is every node's kubelet API.
    pub fn start_kubelet_server(&mut self, topology: &Topology) -> Result<()> {
        let p = |path: PathBuf| path.to_string_lossy().into_owned();
        let mut argv = vec![
            "kubelet-server".to_string(),
            format!("--pods-dir={}", p(self.paths.pods_dir())),
            format!("--cert-file={}", p(self.pki.pair("kubelet-serving").cert)),
            format!("--key-file={}", p(self.pki.pair("kubelet-serving").key)),
            format!("--client-ca-file={}", p(self.pki.ca_cert())),
        ];
        for node in &topology.nodes {
            argv.push(format!(
                "--node={},{},{}",
                node.name,
                topology.node_netns(node),
                node.ip
            ));
        }
        let mut component = Component {
            name: "kubelet-server",
            argv,
            child: None,
        };
        spawn(&self.binary, &self.paths, &mut component)?;
        self.kubelet_server = Some(component);
        Ok(())
    }

    /// Waits until the API server answers `/readyz` with the admin's credentials.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let kubeconfig = self.paths.kubeconfig("admin");
        loop {
            for component in [&mut self.etcd, &mut self.apiserver] {
                if let Some(child) = component.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(SystemError::Failed {
                            command: format!("lab-k8s {}", component.name),
                            status: status.to_string(),
                            stderr: log_tail(&self.paths.log(component.name)),
                        });
                    }
                }
            }
            let ready = Command::new(&self.binary)
                .args(["kubectl", "--kubeconfig"])
                .arg(&kubeconfig)
                .args(["get", "--raw", "/readyz", "--request-timeout=2s"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(SystemError::Failed {
                    command: "kube-apiserver /readyz".into(),
                    status: format!("not ready within {within:?}"),
                    stderr: log_tail(&self.paths.log("kube-apiserver")),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A real API server outage: the process is killed (`stopped` fires then), stays
    /// down for `down`, and is started again; returns once it serves again.
    pub async fn outage(
        &mut self,
        down: Duration,
        stopped: tokio::sync::oneshot::Sender<()>,
    ) -> Result<()> {
        if let Some(mut child) = self.apiserver.child.take() {
            let _ = child.kill().await;
        }
        let _ = stopped.send(());
        tokio::time::sleep(down).await;
        spawn(&self.binary, &self.paths, &mut self.apiserver)?;
        self.wait_ready(Duration::from_secs(120)).await
    }

    /// An outage that hangs instead of refusing: the API server process is frozen
    /// (SIGSTOP) for `down`, so connections open and requests never answer, as behind a
    /// partitioned load balancer or in a stop-the-world pause. Then it thaws and serves
    /// on, watches and all.
    pub async fn freeze(
        &mut self,
        down: Duration,
        stopped: tokio::sync::oneshot::Sender<()>,
    ) -> Result<()> {
        use nix::sys::signal::{kill, Signal};
        let pid = self
            .apiserver
            .child
            .as_ref()
            .and_then(|c| c.id())
            .map(|pid| nix::unistd::Pid::from_raw(pid as i32));
        if let Some(pid) = pid {
            let _ = kill(pid, Signal::SIGSTOP);
        }
        let _ = stopped.send(());
        tokio::time::sleep(down).await;
        if let Some(pid) = pid {
            let _ = kill(pid, Signal::SIGCONT);
        }
        self.wait_ready(Duration::from_secs(120)).await
    }

    /// etcd maintenance as clients meet it: etcd is compacted at its current revision
    /// and the API server restarts onto the compacted store (a rolling restart, a 0 s
    /// outage). Every open watch breaks; resumed from its last resourceVersion it gets
    /// 410 Gone, because that revision is gone from etcd and from the new watch cache, and
    /// the client must relist.
    pub async fn compact_etcd(&mut self) -> Result<String> {
        let compacted = self.compact_etcd_store().await?;
        let (stopped, _) = tokio::sync::oneshot::channel();
        self.outage(Duration::ZERO, stopped).await?;
        Ok(format!(
            "{compacted}API server restarted onto the compacted store\n"
        ))
    }

    async fn compact_etcd_store(&self) -> Result<String> {
        let p = |path: PathBuf| path.to_string_lossy().into_owned();
        let output = Command::new(&self.binary)
            .arg("etcd-compact")
            .arg(format!(
                "--endpoint=https://127.0.0.1:{}",
                self.ports.etcd_client
            ))
            .arg(format!(
                "--cert-file={}",
                p(self.pki.pair("apiserver-etcd-client").cert)
            ))
            .arg(format!(
                "--key-file={}",
                p(self.pki.pair("apiserver-etcd-client").key)
            ))
            .arg(format!("--trusted-ca-file={}", p(self.pki.ca_cert())))
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| SystemError::Spawn {
                command: "lab-k8s etcd-compact".into(),
                source,
            })?;
        if !output.status.success() {
            return Err(SystemError::Failed {
                command: "lab-k8s etcd-compact".into(),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Stops every component, newest first, giving each a moment to exit cleanly.
    pub async fn stop(&mut self) {
        let components = [
            self.kubelet_server.as_mut(),
            Some(&mut self.scheduler),
            Some(&mut self.controller_manager),
            Some(&mut self.apiserver),
            Some(&mut self.etcd),
        ];
        for component in components.into_iter().flatten() {
            if let Some(mut child) = component.child.take() {
                if let Some(pid) = child.id() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                if tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
    }
}

/// The controllers the lab runs: what a cluster needs for postflight's paths (namespace
/// deletion, service-account tokens, DaemonSets, PodDisruptionBudgets, node lifecycle and
/// taints, garbage collection) and nothing that needs a cloud.
pub const CONTROLLERS: &[&str] = &[
    "namespace-controller",
    "clusterrole-aggregation-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "daemonset-controller",
    "disruption-controller",
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "garbage-collector-controller",
    "pod-garbage-collector-controller",
    "replicaset-controller",
    "deployment-controller",
    "endpointslice-controller",
    "root-ca-certificate-publisher-controller",
    "ttl-after-finished-controller",
    "job-controller",
    "cronjob-controller",
];

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(15).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}
