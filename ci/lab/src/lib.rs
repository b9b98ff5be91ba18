//! postflight-lab: a Calico-style Kubernetes cluster on one Linux host, built from real
//! parts: Kubernetes' own control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, built by `ci/lab/k8s`), and nodes of network namespaces, veths,
//! OpenSSH, systemd-tmpfiles, BIRD and curl, whose kubelets are simulated as real API
//! clients (the model kwok uses). It exists so postflight can be proved end to end where
//! no cloud cluster can run, and as the demo a new user runs first.
//!
//! # Usage
//! ```no_run
//! # fn main() -> Result<(), postflight_lab::LabError> {
//! let lab = postflight_lab::Lab::up(postflight_lab::LabConfig::new("demo"))?;
//! println!("kubeconfig: {}", lab.paths().kubeconfig().display());
//! drop(lab); // takes the lab down
//! # Ok(()) }
//! ```

pub mod agnhost;
pub mod calico;
pub mod control;
pub mod controlplane;
pub mod daemon;
pub mod images;
pub mod kubelet;
pub mod node;
pub mod nsenter;
pub mod oci;
pub mod pki;
pub mod realnode;
pub mod system;
pub mod topology;
pub mod volumes;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use topology::{Topology, MAX_LABS};

pub use kubelet::Timings;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("lab name {0:?} must be 1-20 characters of a-z, 0-9 and '-'")]
    BadName(String),
    #[error("a lab has 1 to {max} nodes, not {0}", max = topology::MAX_NODES)]
    BadSize(usize),
    #[error("no free address block: {0} labs are running already")]
    NoFreeBlock(u8),
    #[error("the lab must run as root (it creates network namespaces and mounts)")]
    NotRoot,
    #[error("lab `{0}` is not running (no registry entry)")]
    NotRunning(String),
    #[error("the lab daemon exited before the lab was ready; its logs are kept in {log}; the daemon's ends with:\n{tail}")]
    DaemonDied { log: PathBuf, tail: String },
    #[error("the lab was not ready within {0:?}; its logs are kept in {1}")]
    NotReadyInTime(Duration, PathBuf),
    #[error("node {0:?} is not part of lab `{1}`")]
    UnknownNode(String, String),
    #[error("lab control: {0}")]
    Control(String),
    #[error("the lab's control plane is not built: {0}")]
    ControlPlaneBuild(String),
    #[error(transparent)]
    System(#[from] system::SystemError),
}

pub type Result<T> = std::result::Result<T, LabError>;

/// Where a lab keeps what a user or a test needs.
#[derive(Debug, Clone)]
pub struct LabPaths {
    pub state_dir: PathBuf,
}

impl LabPaths {
    pub fn new(state_dir: &Path) -> Self {
        LabPaths {
            state_dir: state_dir.to_path_buf(),
        }
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }
    pub fn inventory(&self) -> PathBuf {
        self.state_dir.join("inventory.yaml")
    }
    /// The same cluster, every node reached through a node shell instead of SSH.
    pub fn node_shell_inventory(&self) -> PathBuf {
        self.state_dir.join("inventory-node-shell.yaml")
    }
    /// The inventory that reaches every node but the bastion through it (`postflight-lab
    /// bastion`).
    pub fn bastion_inventory(&self) -> PathBuf {
        self.state_dir.join("inventory-bastion.yaml")
    }
    pub fn ssh_dir(&self) -> PathBuf {
        self.state_dir.join("ssh")
    }
    pub fn ssh_key(&self) -> PathBuf {
        self.ssh_dir().join("id_ed25519")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.ssh_dir().join("known_hosts")
    }
    pub fn authorized_keys(&self) -> PathBuf {
        self.ssh_dir().join("authorized_keys")
    }
    /// The kubeconfig postflight runs with: a token of the `postflight` ServiceAccount,
    /// bound to `ci/rbac.yaml` and nothing else.
    pub fn postflight_kubeconfig(&self) -> PathBuf {
        self.state_dir.join("postflight.kubeconfig")
    }
    /// `kubectl` at the server's version (a link to the lab's `lab-k8s`).
    pub fn kubectl(&self) -> PathBuf {
        self.state_dir.join("bin").join("kubectl")
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.state_dir.join("daemon.log")
    }
    pub fn ready_file(&self) -> PathBuf {
        self.state_dir.join("ready.json")
    }
    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join("control.sock")
    }
}

/// What the daemon reports once every node and every calico-node pod is Ready.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadyReport {
    pub api_port: u16,
    pub pid: u32,
    /// Network, keys, PKI and API server, before any node boots.
    pub setup_seconds: f64,
    /// From power-on of all nodes to every calico-node Ready (BGP converged).
    pub boot_to_calico_ready_seconds: f64,
}

#[derive(Debug, Clone)]
pub struct LabConfig {
    pub name: String,
    pub nodes: usize,
    pub state_dir: Option<PathBuf>,
    pub timings: Timings,
    /// The `postflight-lab` binary; found next to the running executable when unset.
    pub binary: Option<PathBuf>,
    pub ready_timeout: Duration,
    pub calico: topology::CalicoProfile,
    pub node_kind: topology::NodeKind,
    pub kubelet: topology::KubeletKind,
}

impl LabConfig {
    pub fn new(name: &str) -> Self {
        LabConfig {
            name: name.into(),
            nodes: 5,
            state_dir: None,
            timings: Timings::default(),
            binary: None,
            ready_timeout: Duration::from_secs(180),
            calico: topology::CalicoProfile::default(),
            node_kind: topology::NodeKind::default(),
            kubelet: topology::KubeletKind::default(),
        }
    }
    /// Real nodes (Kubernetes' kubelet, containerd, runc, CNI, BIRD 1.6) or simulated
    /// kubelets (the scale profile).
    pub fn kubelet(mut self, kubelet: topology::KubeletKind) -> Self {
        self.kubelet = kubelet;
        self
    }
    /// Nodes that are containers (kind's kind) instead of machines.
    pub fn node_kind(mut self, kind: topology::NodeKind) -> Self {
        self.node_kind = kind;
        self
    }
    pub fn calico(mut self, profile: topology::CalicoProfile) -> Self {
        self.calico = profile;
        self
    }
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RegistryEntry {
    name: String,
    block: u8,
    state_dir: PathBuf,
    pid: Option<u32>,
}

fn registry_dir() -> PathBuf {
    std::env::temp_dir().join("postflight-lab")
}
fn registry_file(name: &str) -> PathBuf {
    registry_dir().join(format!("{name}.json"))
}
fn block_file(block: u8) -> PathBuf {
    registry_dir().join(format!("block-{block}"))
}

fn read_entry(name: &str) -> Option<RegistryEntry> {
    serde_json::from_str(&std::fs::read_to_string(registry_file(name)).ok()?).ok()
}

fn process_alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// The path of the `postflight-lab` executable: explicit, from `POSTFLIGHT_LAB_BIN`, the
/// running executable itself, or next to it (test binaries live in `target/*/deps`).
pub fn lab_binary(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    if let Ok(path) = std::env::var("POSTFLIGHT_LAB_BIN") {
        return path.into();
    }
    let current = std::env::current_exe().unwrap_or_default();
    if current.file_name().is_some_and(|n| n == "postflight-lab") {
        return current;
    }
    let dir = current.parent().unwrap_or(Path::new("."));
    [dir.join("postflight-lab"), dir.join("../postflight-lab")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| "postflight-lab".into())
}

/// A running lab. Dropping it takes the lab down.
#[derive(Debug)]
pub struct Lab {
    name: String,
    paths: LabPaths,
    topology: Topology,
    ready: ReadyReport,
    up_duration: Duration,
    keep: bool,
}

impl Lab {
    /// Brings a lab up (cleaning a stale lab of the same name first) and returns once
    /// every node and every calico-node pod is Ready.
    ///
    /// # Errors
    /// Not root, a bad name or size, no free address block, or a daemon that failed or
    /// was not ready in time (the error carries the end of its log).
    pub fn up(config: LabConfig) -> Result<Lab> {
        let started = Instant::now();
        let name = &config.name;
        if name.is_empty()
            || name.len() > 20
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(LabError::BadName(name.clone()));
        }
        if !(1..=topology::MAX_NODES).contains(&config.nodes) {
            return Err(LabError::BadSize(config.nodes));
        }
        if !nix::unistd::Uid::effective().is_root() {
            return Err(LabError::NotRoot);
        }
        teardown(name);
        // Built (or found up to date) before anything is claimed, so a missing Go fails
        // `up` at once with the reason and the command to run; never a simulated plane.
        let k8s_binary = controlplane::ensure_binary().map_err(LabError::ControlPlaneBuild)?;
        std::fs::create_dir_all(registry_dir()).map_err(|e| system::SystemError::Io {
            context: "creating the lab registry".into(),
            source: e,
        })?;
        let state_dir = config
            .state_dir
            .clone()
            .unwrap_or_else(|| registry_dir().join(name));
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir).map_err(|e| system::SystemError::Io {
            context: format!("creating {}", state_dir.display()),
            source: e,
        })?;
        let state_dir = state_dir.canonicalize().unwrap_or(state_dir);
        let mut entry = claim_block(name, &state_dir)?;
        let block = entry.block;
        let mut topology = Topology::new(name, block, &state_dir, config.nodes);
        topology.calico = config.calico;
        topology.node_kind = config.node_kind;
        topology.kubelet = config.kubelet;
        let paths = LabPaths::new(&state_dir);
        let binary = lab_binary(config.binary.as_deref());
        let log =
            std::fs::File::create(paths.daemon_log()).map_err(|e| system::SystemError::Io {
                context: "creating the daemon log".into(),
                source: e,
            })?;
        let timings = serde_json::to_string(&config.timings).expect("timings serialise");
        let mut command = std::process::Command::new(&binary);
        command
            .args([
                "daemon",
                "--name",
                name,
                "--block",
                &block.to_string(),
                "--nodes",
                &config.nodes.to_string(),
                "--calico",
                serde_json::to_value(config.calico)
                    .expect("a profile serialises")
                    .as_str()
                    .expect("a profile is a string"),
                "--node-kind",
                serde_json::to_value(config.node_kind)
                    .expect("a node kind serialises")
                    .as_str()
                    .expect("a node kind is a string"),
                "--kubelet",
                serde_json::to_value(config.kubelet)
                    .expect("a kubelet kind serialises")
                    .as_str()
                    .expect("a kubelet kind is a string"),
            ])
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--k8s-binary")
            .arg(&k8s_binary)
            .args(["--timings", &timings])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        // Its own session: the lab outlives the command that started it, and a Ctrl-C
        // in that terminal does not reach it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(|e| system::SystemError::Spawn {
            command: binary.display().to_string(),
            source: e,
        })?;
        entry.pid = Some(child.id());
        write_entry(&entry);
        let deadline = Instant::now() + config.ready_timeout;
        let ready = loop {
            if let Ok(text) = std::fs::read_to_string(paths.ready_file()) {
                if let Ok(report) = serde_json::from_str::<ReadyReport>(&text) {
                    break report;
                }
            }
            if let Ok(Some(_)) = child.try_wait() {
                let tail = std::fs::read_to_string(paths.daemon_log()).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(20).collect();
                let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                let logs = preserve_logs(name, &paths);
                teardown(name);
                return Err(LabError::DaemonDied { log: logs, tail });
            }
            if Instant::now() > deadline {
                let logs = preserve_logs(name, &paths);
                teardown(name);
                return Err(LabError::NotReadyInTime(config.ready_timeout, logs));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // The daemon is reaped by whoever outlives us; do not wait on it here.
        std::mem::forget(child);
        Ok(Lab {
            name: name.clone(),
            paths,
            topology,
            ready,
            up_duration: started.elapsed(),
            keep: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn paths(&self) -> &LabPaths {
        &self.paths
    }
    pub fn topology(&self) -> &Topology {
        &self.topology
    }
    pub fn ready_report(&self) -> &ReadyReport {
        &self.ready
    }
    pub fn up_duration(&self) -> Duration {
        self.up_duration
    }
    /// Leaves the lab running when the handle is dropped (the CLI's `up`).
    pub fn keep_running(mut self) -> Self {
        self.keep = true;
        self
    }

    pub fn node_names(&self) -> Vec<String> {
        self.topology.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The incident's OS update on one node; see [`os_update`].
    pub fn os_update(&self, node: &str, clobber_tmpfiles: bool) -> Result<()> {
        os_update(&self.name, node, clobber_tmpfiles)
    }

    /// Reboots a node as `systemctl reboot` on it would; returns once the reboot started.
    pub fn reboot(&self, node: &str) -> Result<()> {
        reboot(&self.name, node, true)
    }

    /// Runs a command on a node (its namespaces and mount view), like `docker exec` on a
    /// kind node.
    pub fn node_exec(&self, node: &str, argv: &[String]) -> Result<std::process::Output> {
        let command = node_command(&self.name, node, argv)?;
        let mut command = command;
        command.output().map_err(|e| {
            LabError::System(system::SystemError::Spawn {
                command: argv.join(" "),
                source: e,
            })
        })
    }

    pub fn down(mut self) {
        self.keep = false;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            teardown(&self.name);
        }
    }
}

/// Copies a failed lab's logs (the daemon's, every control-plane component's and every
/// real node service's) out of
/// its state directory, which teardown removes, and returns where they went.
fn preserve_logs(name: &str, paths: &LabPaths) -> PathBuf {
    let kept = registry_dir().join(format!("{name}.failed"));
    let _ = std::fs::remove_dir_all(&kept);
    let _ = std::fs::create_dir_all(&kept);
    let _ = std::fs::copy(paths.daemon_log(), kept.join("daemon.log"));
    let plane = controlplane::ControlPlanePaths::new(&paths.state_dir).dir;
    for entry in std::fs::read_dir(plane).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let _ = std::fs::copy(&path, kept.join(entry.file_name()));
        }
    }
    // A real node's services (kubelet, containerd, kube-proxy, sshd), as NODE-SERVICE.log.
    for node in std::fs::read_dir(paths.state_dir.join("nodes"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for entry in std::fs::read_dir(node.path().join("logs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = format!(
                "{}-{}",
                node.file_name().to_string_lossy(),
                entry.file_name().to_string_lossy()
            );
            let _ = std::fs::copy(entry.path(), kept.join(name));
        }
    }
    kept
}

/// Writes a registry entry atomically (a temporary file, then a rename): another lab
/// claiming a block reads entries without waiting for this write, and a half-written
/// entry would read as a dead lab whose block is free — two labs on one block.
fn write_entry(entry: &RegistryEntry) {
    let path = registry_file(&entry.name);
    let temporary = path.with_extension(format!("json.{}", std::process::id()));
    let written = std::fs::write(
        &temporary,
        serde_json::to_vec(entry).expect("entry serialises"),
    );
    if written.is_ok() {
        let _ = std::fs::rename(&temporary, &path);
    }
}

/// Claims a free address block and registers the lab, under an exclusive lock so that
/// labs started at the same moment never share a block. A claim whose lab is gone (no
/// live process owns it) is stale and is taken over.
fn claim_block(name: &str, state_dir: &Path) -> Result<RegistryEntry> {
    let io = |context: &str, source| {
        LabError::System(system::SystemError::Io {
            context: context.into(),
            source,
        })
    };
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(registry_dir().join(".lock"))
        .map_err(|e| io("opening the registry lock", e))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io("locking the registry", e.into()))?;
    for block in 0..MAX_LABS {
        let path = block_file(block);
        if let Ok(owner) = std::fs::read_to_string(&path) {
            let alive = read_entry(owner.trim())
                .and_then(|e| e.pid)
                .is_some_and(process_alive);
            if alive {
                continue;
            }
            teardown(owner.trim());
        }
        std::fs::write(&path, name).map_err(|e| io("claiming an address block", e))?;
        let entry = RegistryEntry {
            name: name.into(),
            block,
            state_dir: state_dir.into(),
            pid: Some(std::process::id()),
        };
        write_entry(&entry);
        return Ok(entry);
    }
    Err(LabError::NoFreeBlock(MAX_LABS))
}

fn entry_and_topology(name: &str) -> Result<(RegistryEntry, Topology)> {
    let entry = read_entry(name).ok_or_else(|| LabError::NotRunning(name.into()))?;
    let text = std::fs::read_to_string(entry.state_dir.join("topology.json"))
        .map_err(|_| LabError::NotRunning(name.into()))?;
    let topology: Topology =
        serde_json::from_str(&text).map_err(|_| LabError::NotRunning(name.into()))?;
    Ok((entry, topology))
}

/// Stops a lab and removes every namespace, veth, mount, process and file it made.
/// Idempotent, and works after a crash: it goes by the registry and by name prefixes.
pub fn teardown(name: &str) {
    let Some(entry) = read_entry(name) else {
        return;
    };
    if let Some(pid) = entry.pid.filter(|p| process_alive(*p)) {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if !process_alive(pid.as_raw() as u32) || is_zombie(pid.as_raw()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    }
    // The daemon leads its own process group, and so do what it started (control plane,
    // kubelet API server, sshd, containers): whatever a crashed daemon left goes too.
    if let Some(pid) = entry.pid {
        let group = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
    // The block's network is this lab's only while the block file names it: a stale
    // entry's block may already belong to a lab started since.
    let owns_block =
        std::fs::read_to_string(block_file(entry.block)).is_ok_and(|owner| owner.trim() == name);
    if owns_block {
        let prefix = format!("pf{}", entry.block);
        // A real node's processes first: its containers are outside the daemon's group.
        realnode::remove_cgroups_of_prefix(&prefix);
        let namespaces = system::list_netns_with_prefix(&prefix);
        // Pods first, then nodes, then the bridge: processes die before their cables go.
        for netns in namespaces.iter().rev() {
            system::delete_netns(netns);
        }
        let _ = system::ip(None, &["link", "del", &format!("{prefix}-host")]);
        let _ = std::fs::remove_file(block_file(entry.block));
    }
    system::unmount_below(&entry.state_dir);
    let _ = std::fs::remove_dir_all(&entry.state_dir);
    let _ = std::fs::remove_file(registry_file(name));
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

pub fn state_dir(name: &str) -> Result<PathBuf> {
    Ok(entry_and_topology(name)?.0.state_dir)
}

pub fn os_update(name: &str, node: &str, clobber_tmpfiles: bool) -> Result<()> {
    let (_, topology) = entry_and_topology(name)?;
    let spec = topology
        .node(node)
        .ok_or_else(|| LabError::UnknownNode(node.into(), name.into()))?;
    if clobber_tmpfiles {
        node::clobber_tmpfiles(&topology, spec)?;
    }
    Ok(())
}

/// Reboots a node as `systemctl reboot` does, or, not `graceful`, as a machine that dies
/// without shutting down.
pub fn reboot(name: &str, node: &str, graceful: bool) -> Result<()> {
    let (_, topology) = entry_and_topology(name)?;
    topology
        .node(node)
        .ok_or_else(|| LabError::UnknownNode(node.into(), name.into()))?;
    let unclean = if graceful { "" } else { "?unclean=1" };
    control::request(
        &topology.control_socket(),
        "POST",
        &format!("/nodes/{node}/reboot{unclean}"),
    )
    .map(|_| ())
    .map_err(LabError::Control)
}

pub fn status(name: &str) -> Result<String> {
    let (_, topology) = entry_and_topology(name)?;
    control::request(&topology.control_socket(), "GET", "/status").map_err(LabError::Control)
}

/// A command that runs `argv` on a node of a running lab.
pub fn node_command(name: &str, node: &str, argv: &[String]) -> Result<std::process::Command> {
    let (_, topology) = entry_and_topology(name)?;
    let spec = topology
        .node(node)
        .ok_or_else(|| LabError::UnknownNode(node.into(), name.into()))?;
    if topology.kubelet == topology::KubeletKind::Real {
        return Ok(realnode::enter_command(&topology, spec, argv));
    }
    Ok(node::enter_command(
        &topology,
        spec,
        &topology.node_netns(spec),
        argv,
    ))
}

/// Holds a node down (or releases it): while held, a node that reboots stays off, as a
/// machine that never comes back from its reboot. A node that is up is not affected
/// until its next reboot.
pub fn hold(name: &str, node: &str, held: bool) -> Result<()> {
    let (_, topology) = entry_and_topology(name)?;
    let spec = topology
        .node(node)
        .ok_or_else(|| LabError::UnknownNode(node.into(), name.into()))?;
    let flag = node::NodePaths::new(&topology, spec).hold_flag;
    let result = if held {
        std::fs::write(&flag, b"held by postflight-lab hold\n")
    } else {
        match std::fs::remove_file(&flag) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    };
    result.map_err(|e| {
        LabError::System(system::SystemError::Io {
            context: format!(
                "{} the hold-down flag of {node}",
                if held { "setting" } else { "clearing" }
            ),
            source: e,
        })
    })
}

/// Takes a node's NIC down, or brings it back: the node drops off the network (pods,
/// BGP, SSH and its kubelet's heartbeats), and a node that boots meanwhile boots with its
/// NIC down.
pub fn nic(name: &str, node: &str, up: bool) -> Result<()> {
    let (_, topology) = entry_and_topology(name)?;
    let spec = topology
        .node(node)
        .ok_or_else(|| LabError::UnknownNode(node.into(), name.into()))?;
    node::set_nic(&topology, spec, up).map_err(LabError::System)
}

/// The nftables tables the lab's firewall knobs live in, inside a node's namespace: one
/// per knob, so that lifting one fault leaves the other in place.
const BGP_FIREWALL_TABLE: &str = "postflight_lab_bgp";
const POD_FIREWALL_TABLE: &str = "postflight_lab_pods";
const LOSS_TABLE: &str = "postflight_lab_loss";
const BASTION_FIREWALL_TABLE: &str = "postflight_lab_bastion";

/// What a node keeps SSH to when `bastion` is the only way in: every address family
/// dropped but the bastion's own address.
fn ssh_only_from(bastion: std::net::Ipv4Addr) -> String {
    let t = BASTION_FIREWALL_TABLE;
    // Replaced whole, so that naming another bastion leaves no rule for the old one.
    format!(
        "nft delete table inet {t} 2>/dev/null || true; \
         nft add table inet {t} && \
         nft add chain inet {t} input '{{ type filter hook input priority 0; }}' && \
         nft add rule inet {t} input ip saddr {bastion} tcp dport 22 accept && \
         nft add rule inet {t} input tcp dport 22 drop"
    )
}

/// Makes `bastion` the only way in over SSH, as sites put their nodes behind a jump
/// host: every other node drops TCP port 22 from anywhere but the bastion's address,
/// and `inventory-bastion.yaml` (next to `inventory.yaml`) reaches them through it.
/// The rules live in each node's network namespace, which a reboot keeps (a power-off
/// flushes addresses, routes and processes, not nftables). With `None`, the rules and
/// that inventory go. Returns the inventory's path.
pub fn bastion(name: &str, bastion: Option<&str>) -> Result<PathBuf> {
    let (entry, topology) = entry_and_topology(name)?;
    let paths = LabPaths::new(&entry.state_dir);
    let bastion = match bastion {
        Some(node) => Some(
            topology
                .node(node)
                .ok_or_else(|| LabError::UnknownNode(node.into(), name.into()))?,
        ),
        None => None,
    };
    for node in &topology.nodes {
        let script = bastion
            .filter(|b| b.name != node.name)
            .map(|b| ssh_only_from(b.ip));
        firewall(name, &node.name, BASTION_FIREWALL_TABLE, script)?;
    }
    let inventory = paths.bastion_inventory();
    let written = match bastion {
        Some(bastion) => std::fs::write(
            &inventory,
            daemon::inventory(
                &topology,
                daemon::Reached::OverSsh {
                    bastion: Some(bastion),
                },
                &lab_binary(None),
            ),
        ),
        None => match std::fs::remove_file(&inventory) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
    };
    written.map_err(|e| {
        LabError::System(system::SystemError::Io {
            context: format!("writing {}", inventory.display()),
            source: e,
        })
    })?;
    Ok(inventory)
}

/// Drops BGP (TCP 179, both directions) on a node, as a host firewall would, or allows
/// it again. The rule lives in the node's own network namespace and dies with it.
pub fn block_bgp(name: &str, node: &str, blocked: bool) -> Result<()> {
    let t = BGP_FIREWALL_TABLE;
    let script = format!(
        "nft add table inet {t} && \
         nft add chain inet {t} input '{{ type filter hook input priority 0; }}' && \
         nft add chain inet {t} output '{{ type filter hook output priority 0; }}' && \
         nft add rule inet {t} input tcp dport 179 drop && nft add rule inet {t} input tcp sport 179 drop && \
         nft add rule inet {t} output tcp dport 179 drop && nft add rule inet {t} output tcp sport 179 drop"
    );
    firewall(name, node, t, blocked.then_some(script))
}

/// Drops pod traffic that crosses the node's uplink, in both directions, as a host
/// firewall's FORWARD policy of DROP does (Docker sets one): BGP and the node's own
/// traffic still flow, so calico-node stays Ready, and pods on the node still reach each
/// other, but no pod traffic enters or leaves the node. Or allows it again.
pub fn block_pod_traffic(name: &str, node: &str, blocked: bool) -> Result<()> {
    let t = POD_FIREWALL_TABLE;
    let script = format!(
        "nft add table inet {t} && \
         nft add chain inet {t} forward '{{ type filter hook forward priority 0; }}' && \
         nft add rule inet {t} forward iifname eth0 oifname != eth0 drop && \
         nft add rule inet {t} forward iifname != eth0 oifname eth0 drop"
    );
    firewall(name, node, t, blocked.then_some(script))
}

/// Drops `percent` % of the pod traffic that crosses the node's uplink, at random and in
/// both directions (a failing NIC, a congested link), or stops (`None`). Each direction
/// has a rule counting all its packets and one counting what it dropped, so that the
/// loss can be read back (`nft list table inet postflight_lab_loss` on the node).
pub fn lose_pod_traffic(name: &str, node: &str, percent: Option<u8>) -> Result<()> {
    let t = LOSS_TABLE;
    let script = percent.map(|p| {
        format!(
            "nft add table inet {t} && \
             nft add chain inet {t} forward '{{ type filter hook forward priority -1; }}' && \
             nft add rule inet {t} forward iifname eth0 oifname != eth0 counter && \
             nft add rule inet {t} forward iifname eth0 oifname != eth0 numgen random mod 100 '<' {p} counter drop && \
             nft add rule inet {t} forward iifname != eth0 oifname eth0 counter && \
             nft add rule inet {t} forward iifname != eth0 oifname eth0 numgen random mod 100 '<' {p} counter drop"
        )
    });
    firewall(name, node, t, script)
}

/// Runs `script` (which fills `table`) in the node's network namespace, or deletes the
/// table when there is no script. Only the network namespace: a firewall needs nothing
/// of the node's mount view, and a node powering off is taking that apart.
fn firewall(name: &str, node: &str, table: &str, script: Option<String>) -> Result<()> {
    let (_, topology) = entry_and_topology(name)?;
    let spec = topology
        .node(node)
        .ok_or_else(|| LabError::UnknownNode(node.into(), name.into()))?;
    let script =
        script.unwrap_or_else(|| format!("nft delete table inet {table} 2>/dev/null || true"));
    system::netns_sh(&topology.node_netns(spec), &script)
        .map(|_| ())
        .map_err(|e| LabError::Control(format!("nft on {node}: {e}")))
}

/// Compacts the lab's etcd at its current revision: watches on older revisions end
/// with 410 Gone, as after etcd's routine compaction on a real cluster.
pub fn compact_etcd(name: &str) -> Result<String> {
    let (_, topology) = entry_and_topology(name)?;
    control::request(&topology.control_socket(), "POST", "/etcd/compact").map_err(LabError::Control)
}

/// Stops the lab's API server process for `seconds`, then starts it again.
/// With `freeze`, the process is frozen instead: requests hang rather than being refused.
pub fn pause_api(name: &str, seconds: u64, freeze: bool) -> Result<String> {
    let (_, topology) = entry_and_topology(name)?;
    control::request(
        &topology.control_socket(),
        "POST",
        &format!("/apiserver/pause?seconds={seconds}&freeze={freeze}"),
    )
    .map_err(LabError::Control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bastion_reaches_ssh_on_the_other_nodes() {
        let script = ssh_only_from(std::net::Ipv4Addr::new(198, 18, 3, 10));
        let accept = script
            .find("ip saddr 198.18.3.10 tcp dport 22 accept")
            .expect("the bastion is let in");
        let drop = script
            .find("input tcp dport 22 drop")
            .expect("everyone else is dropped, IPv6 too");
        assert!(accept < drop, "the bastion's rule comes first: {script}");
        assert!(
            script.starts_with("nft delete table inet postflight_lab_bastion"),
            "a second bastion replaces the first: {script}"
        );
    }

    #[test]
    fn the_bastion_inventory_jumps_to_every_node_but_the_bastion() {
        let topology = Topology::new("t", 3, Path::new("/x"), 3);
        let bastion = &topology.nodes[0];
        let over_ssh = |bastion| daemon::Reached::OverSsh { bastion };
        let lab = Path::new("/lab/postflight-lab");
        let text = daemon::inventory(&topology, over_ssh(Some(bastion)), lab);
        assert!(
            text.contains("  known_hosts: ssh/known_hosts\n  jump: root@198.18.3.10:22\nnodes:\n"),
            "{text}"
        );
        assert!(
            text.contains("  - name: k8s-control-01\n    host: 198.18.3.10\n    protected: true\n    jump: none\n"),
            "{text}"
        );
        assert_eq!(text.matches("jump: none").count(), 1, "{text}");
        assert!(!daemon::inventory(&topology, over_ssh(None), lab).contains("jump"));
    }
}
