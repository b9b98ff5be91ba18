//! The inventory: one YAML file that describes a cluster for postflight — how to reach
//! its API and its nodes, what Calico needs on each node, how to probe the pod network,
//! how to reboot, and how long each wait may take. Loading it validates everything up
//! front; every error names `file:line:column`.

use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{file}: cannot read the inventory: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{file}: {message}")]
    Unlocated { file: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    #[serde(skip)]
    pub file: PathBuf,
    #[serde(default)]
    pub cluster: ClusterAccess,
    /// How nodes are reached, unless a node says otherwise.
    #[serde(default)]
    pub transport: TransportKind,
    #[serde(default)]
    pub ssh: SshDefaults,
    #[serde(default)]
    pub node_shell: NodeShellSettings,
    pub nodes: Vec<NodeEntry>,
    #[serde(default)]
    pub calico: CalicoSettings,
    #[serde(default)]
    pub probe: ProbeSettings,
    #[serde(default)]
    pub reboot: RebootSettings,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub lock: LockSettings,
}

/// The cluster-wide reboot lock: a coordination.k8s.io/v1 Lease held (and renewed) for
/// the whole of a reboot, so that two pipelines never reboot two nodes at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockSettings {
    pub namespace: String,
    pub name: String,
    /// A holder that stops renewing (killed) loses the lease after this long.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// How long a second run waits for the lock before it gives up, naming the holder.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// How far two runners' clocks may disagree: a lease whose `renewTime` is older than
    /// its duration plus this is free (its holder is gone), however recently this run
    /// first saw it.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
}

impl Default for LockSettings {
    fn default() -> Self {
        LockSettings {
            namespace: "kube-system".into(),
            name: "postflight-reboot-lock".into(),
            // As long as a reboot may take to come back (timeouts.node_ready): a run killed
            // while its node is down keeps the next one out until the node is due back,
            // and renewals ride out an API outage of up to this long.
            duration: Duration::from_secs(300),
            wait: Duration::from_secs(300),
            // Far more than NTP-synchronised runners ever disagree, far less than a
            // lease's duration.
            clock_skew: Duration::from_secs(60),
        }
    }
}

/// How to reach the API server. Unset fields follow the usual rules (KUBECONFIG, then
/// ~/.kube/config, then in-cluster), as kubectl does.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterAccess {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

/// How postflight reaches a node's host to read its files and reboot it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    /// SSH to the node's `host`, its key verified against `ssh.known_hosts`.
    #[default]
    Ssh,
    /// A short-lived privileged pod on the node, entered through the Kubernetes API's
    /// exec (as `kubectl debug node/NAME --profile=sysadmin` does): for clusters that
    /// allow no SSH to nodes, and for nodes that are containers (kind).
    NodeShell,
}

/// The node-shell transport's pods: one per node a run needs, privileged, in the host's
/// PID and network namespaces, entering PID 1's namespaces with nsenter for each command.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeShellSettings {
    /// Labelled Pod Security `privileged` and provisioned by `postflight rbac` when any
    /// node uses this transport; kept apart from the `restricted` probe namespace.
    pub namespace: String,
    /// Any image with `nsenter` and `sleep` (busybox has both as applets).
    pub image: String,
    pub image_pull_secrets: Vec<String>,
    /// Unset, the shell pods tolerate every taint: a node under test may carry one.
    pub tolerations: Option<Vec<k8s_openapi::api::core::v1::Toleration>>,
}

impl Default for NodeShellSettings {
    fn default() -> Self {
        NodeShellSettings {
            namespace: "postflight-node-shell".into(),
            image: "docker.io/library/busybox:1.37.0".into(),
            image_pull_secrets: Vec::new(),
            tolerations: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Become {
    Sudo,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshDefaults {
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    pub identity_file: Option<PathBuf>,
    /// Host keys are always verified against this file; there is no way to turn it off,
    /// and no silent fallback to `~/.ssh/known_hosts`: an inventory names it.
    #[serde(default)]
    pub known_hosts: PathBuf,
    #[serde(rename = "become")]
    pub become_method: Option<Become>,
    /// The bastion every node is reached through, unless a node says otherwise.
    pub jump: Option<JumpSetting>,
}

impl Default for SshDefaults {
    fn default() -> Self {
        SshDefaults {
            user: default_user(),
            port: default_ssh_port(),
            identity_file: None,
            known_hosts: PathBuf::new(),
            become_method: None,
            jump: None,
        }
    }
}

/// A `jump:` value as written: `[user@]host[:port]` (an IPv6 address with a port in
/// brackets, `[fd00::1]:2222`), or `none` (or `""`) for a node reached directly although
/// `ssh.jump` is set. Checked as it is read, so a bad value is reported at its position.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum JumpSetting {
    Direct,
    Via {
        /// Unset: the node's own SSH user.
        user: Option<String>,
        host: String,
        port: u16,
    },
}

impl TryFrom<String> for JumpSetting {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() || text == "none" {
            return Ok(JumpSetting::Direct);
        }
        let (user, address) = match text.split_once('@') {
            Some((user, address)) => (Some(user), address),
            None => (None, text),
        };
        // `user:password@host`: postflight logs in with keys only, and a password has no
        // business in an inventory or in an error message: it is not repeated.
        if user.is_some_and(|user| user.contains(':')) {
            return Err("jump: `user:password@host` carries a password, which postflight never uses (it logs in with keys only); write `user@host` and give the key in ssh.identity_file or the ssh-agent".into());
        }
        if let Some(user) = user {
            // What a login name is (POSIX portable filename characters), and nothing
            // `ssh -J` in a pasted fix command could read as an option.
            if user.is_empty()
                || user.starts_with('-')
                || !user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(format!(
                    "jump {text:?}: the user {user:?} is not a login name (letters, digits, '.', '_', '-')"
                ));
            }
        }
        let (host, port) = if let Some(bracketed) = address.strip_prefix('[') {
            let (host, rest) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("jump {text:?}: `[` without its `]`"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!(
                    "jump {text:?}: only an IPv6 address goes in brackets"
                ));
            }
            match rest {
                "" => (host, None),
                _ => match rest.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(format!("jump {text:?}: expected `:port` after `]`")),
                },
            }
        } else if address.parse::<std::net::Ipv6Addr>().is_ok() {
            (address, None)
        } else {
            match address.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (address, None),
            }
        };
        if !valid_host(host) {
            return Err(format!(
                "jump {text:?}: host {host:?} is neither an IP address nor a hostname"
            ));
        }
        let port = match port {
            None => default_ssh_port(),
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("jump {text:?}: port {port:?} is not 1-65535"))?,
        };
        Ok(JumpSetting::Via {
            user: user.map(String::from),
            host: host.into(),
            port,
        })
    }
}

/// The bastion a node is reached through, with the defaults applied: `ssh -J` to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpHost {
    pub user: String,
    pub host: String,
    pub port: u16,
}

impl JumpHost {
    /// `host:port`, an IPv6 address in brackets, as `ssh -J` and error messages take it.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for JumpHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.user, self.address())
    }
}

/// An IP address, or a hostname (RFC 1123 labels): what `ssh` and a pasted fix command
/// take as one word.
pub(crate) fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn default_user() -> String {
    "root".into()
}
fn default_ssh_port() -> u16 {
    22
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The node's name as Kubernetes knows it.
    pub name: Spanned<String>,
    /// Address or DNS name for SSH: an IP address or a hostname, nothing a shell would
    /// read as more than a word (it goes into the fix commands a report prints). Only
    /// SSH needs it.
    pub host: Option<Spanned<String>>,
    /// Overrides the inventory's `transport` for this node.
    pub transport: Option<TransportKind>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub identity_file: Option<PathBuf>,
    #[serde(rename = "become")]
    pub become_method: Option<Become>,
    /// Never rebooted unless named with --allow-protected (the control plane, typically).
    #[serde(default)]
    pub protected: bool,
    /// This node's bastion, over `ssh.jump`; `none` reaches it directly.
    pub jump: Option<JumpSetting>,
}

/// A node's SSH access with the inventory's defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct SshTarget {
    pub node: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub identity_file: Option<PathBuf>,
    pub known_hosts: PathBuf,
    pub become_method: Option<Become>,
    /// The bastion to tunnel through; its host key is verified against `known_hosts` too,
    /// and it is logged into with the node's identity.
    pub jump: Option<JumpHost>,
}

/// What the inventory says about Calico. Everything is optional: what it leaves out is
/// read from the cluster (the calico-node DaemonSet: its namespace, its selector and the
/// user it runs as), and what it sets wins. `crate::expectations` resolves the two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalicoSettings {
    pub namespace: Option<String>,
    pub selector: Option<String>,
    pub run_dir: String,
    /// Octal, as `stat -c %a` prints it. Set with the owner for an exact requirement.
    pub run_dir_mode: Option<String>,
    pub run_dir_owner: Option<u32>,
    pub run_dir_group: Option<u32>,
    /// A tmpfiles.d entry the site declares for the run directory; set both to require
    /// it. Left out, the node's own tmpfiles.d configuration is judged where it has an
    /// entry for the run directory, and the check is skipped where it has none.
    pub tmpfiles_file: Option<String>,
    pub tmpfiles_line: Option<String>,
}

impl Default for CalicoSettings {
    fn default() -> Self {
        CalicoSettings {
            namespace: None,
            selector: None,
            run_dir: "/var/run/calico".into(),
            run_dir_mode: None,
            run_dir_owner: None,
            run_dir_group: None,
            tmpfiles_file: None,
            tmpfiles_line: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeSettings {
    /// The namespace of the probe pods. The RBAC manifest (`ci/rbac.yaml`) provisions it,
    /// labelled for Pod Security `restricted`; postflight creates it only when missing
    /// and allowed to, and never deletes it.
    pub namespace: String,
    pub image: String,
    /// Secrets in the probe namespace to pull `image` with, from a private registry.
    pub image_pull_secrets: Vec<String>,
    /// The probe pods' tolerations, as in a pod spec. Unset, they tolerate every taint:
    /// a probe must start on a tainted control-plane node, and on a node that still
    /// carries a taint from its reboot.
    pub tolerations: Option<Vec<k8s_openapi::api::core::v1::Toleration>>,
    pub port: u16,
    /// The probe server's arguments; `{port}` is replaced by `port`.
    pub server_args: Vec<String>,
    /// The client run once in a probe pod to reach all of its targets at once. The word
    /// `{targets}` is replaced by `client_target` repeated for each target (with its
    /// `{url}`); `{timeout_seconds}` and `{connect_timeout_seconds}` by the limits. It must
    /// print one line per target: the URL, the HTTP status (000 for none), the client's
    /// exit code (0 for none) and its error message, separated by spaces, as curl's
    /// `-w '%{url} %{http_code} %{exitcode} %{errormsg}\n'` does.
    pub client_command: Vec<String>,
    pub client_target: Vec<String>,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            namespace: "postflight-probe".into(),
            image: "registry.k8s.io/e2e-test-images/agnhost:2.53".into(),
            image_pull_secrets: Vec::new(),
            tolerations: None,
            port: 8080,
            server_args: vec!["netexec".into(), "--http-port={port}".into()],
            client_command: [
                "curl",
                "-sS",
                "--parallel",
                "--parallel-immediate",
                "--parallel-max",
                "64",
                "--connect-timeout",
                "{connect_timeout_seconds}",
                "--max-time",
                "{timeout_seconds}",
                "-w",
                "%{url} %{http_code} %{exitcode} %{errormsg}\n",
                "{targets}",
            ]
            .map(String::from)
            .to_vec(),
            // Each target's body goes to /dev/null: curl's -o applies to one URL.
            client_target: ["-o", "/dev/null", "{url}"].map(String::from).to_vec(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RebootSettings {
    /// Run on the node (over its transport, with `become` when set; the connection
    /// dropping is expected), or here (`runs_on: local`). `{node}` is replaced by the
    /// node's name, quoted for the shell: `docker restart {node}` for kind.
    pub command: String,
    pub runs_on: RunsOn,
    /// What a reboot is for these nodes, which decides how it is proven.
    pub node_kind: NodeKind,
}

impl Default for RebootSettings {
    fn default() -> Self {
        RebootSettings {
            command: "systemctl reboot".into(),
            runs_on: RunsOn::Node,
            node_kind: NodeKind::Machine,
        }
    }
}

impl RebootSettings {
    /// The command for `node`, its name quoted where `{node}` stands.
    pub fn command_for(&self, node: &str) -> String {
        self.command
            .replace("{node}", &shell_escape::unix::escape(node.into()))
    }
}

/// Where the reboot command runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunsOn {
    /// On the node, through its transport.
    #[default]
    Node,
    /// On the machine postflight runs on: for nodes that another system restarts
    /// (`docker restart`, a hypervisor's CLI).
    Local,
}

/// What the nodes are, for proving that they restarted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A machine with its own kernel: a reboot gives it a new boot ID
    /// (`boot_id_changed`).
    #[default]
    Machine,
    /// A container on a shared kernel (kind): its boot ID is the host's and never
    /// changes, so a restart is proven by its PID 1 starting again (`node_restarted`).
    Container,
}

/// Deadlines for each wait. The defaults follow the Kubernetes e2e reboot test: a node
/// has 2 minutes to go NotReady and 5 to come back Ready.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    #[serde(with = "humantime_serde")]
    pub node_not_ready: Duration,
    #[serde(with = "humantime_serde")]
    pub node_ready: Duration,
    #[serde(with = "humantime_serde")]
    pub calico_ready: Duration,
    #[serde(with = "humantime_serde")]
    pub connectivity: Duration,
    #[serde(with = "humantime_serde")]
    pub probe_ready: Duration,
    #[serde(with = "humantime_serde")]
    pub ssh: Duration,
    /// How long evictions may be refused (disruption budgets) before the run gives up
    /// without rebooting.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            node_not_ready: Duration::from_secs(120),
            node_ready: Duration::from_secs(300),
            calico_ready: Duration::from_secs(300),
            connectivity: Duration::from_secs(120),
            probe_ready: Duration::from_secs(120),
            ssh: Duration::from_secs(30),
            drain: Duration::from_secs(300),
        }
    }
}

/// The shortest deadline an inventory may give: a wait, an SSH command or the lock's
/// duration. Below it, a deadline decides at random (a `1ns` SSH timeout fails every
/// command), never about the node.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest: a day. A node that has not come back, a drain or a lock wait after a day
/// is for a person to look at; and the reboot lock (`lock.duration`, what a killed run
/// keeps others out for) must not outlast the work it protects by years.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// DNS-1123 subdomain, what Kubernetes accepts as a node name.
pub(crate) fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl Inventory {
    /// Reads and validates an inventory file. Relative paths inside it are resolved
    /// against the file's directory.
    ///
    /// # Errors
    /// Unreadable file, YAML syntax, unknown fields, wrong types, and invalid values, each
    /// with the file, line and column.
    pub fn load(file: &Path) -> Result<Inventory, InventoryError> {
        let text = crate::local_file::read_text(file, "the inventory").map_err(|error| {
            InventoryError::Read {
                file: file.into(),
                source: std::io::Error::other(error.problem.to_string()),
            }
        })?;
        Self::parse(&text, file)
    }

    /// Parses inventory text; `file` is used for error messages and relative paths.
    pub fn parse(text: &str, file: &Path) -> Result<Inventory, InventoryError> {
        let mut inventory: Inventory = serde_saphyr::from_str(text).map_err(|error| {
            let message = error.to_string();
            let first = message.lines().next().unwrap_or_default();
            // serde-saphyr prefixes "error: line N column M: "; we say it as file:line:column.
            let message = first
                .split_once(": ")
                .and_then(|(_, rest)| rest.split_once(": ").map(|(_, m)| m))
                .unwrap_or(first)
                .to_string();
            match error.location() {
                Some(location) => InventoryError::Invalid {
                    file: file.into(),
                    line: location.line(),
                    column: location.column(),
                    message,
                },
                None => InventoryError::Unlocated {
                    file: file.into(),
                    message,
                },
            }
        })?;
        inventory.file = file.into();
        inventory.validate(text)?;
        let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let resolve = |p: &mut PathBuf| {
            // `~/` as a shell would read it: inventories are written by people.
            if let (Ok(rest), Some(home)) = (p.strip_prefix("~"), home.as_ref()) {
                *p = home.join(rest);
            }
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(kubeconfig) = inventory.cluster.kubeconfig.as_mut() {
            resolve(kubeconfig);
        }
        resolve(&mut inventory.ssh.known_hosts);
        if let Some(identity) = inventory.ssh.identity_file.as_mut() {
            resolve(identity);
        }
        for node in &mut inventory.nodes {
            if let Some(identity) = node.identity_file.as_mut() {
                resolve(identity);
            }
        }
        Ok(inventory)
    }

    /// An error at the line of `key` (`section.field`) in the inventory's text, as
    /// file:line:column; without the file position when the key is not written out.
    fn located(&self, text: &str, key: &str, message: String) -> InventoryError {
        let field = key.rsplit('.').next().unwrap_or(key);
        let section = key.split_once('.').map(|(section, _)| section);
        let mut in_section = section.is_none();
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if let Some(section) = section {
                if !line.starts_with(' ') && !line.starts_with('#') && !line.is_empty() {
                    in_section = line.starts_with(&format!("{section}:"));
                }
            }
            if in_section && trimmed.starts_with(&format!("{field}:")) {
                return InventoryError::Invalid {
                    file: self.file.clone(),
                    line: index as u64 + 1,
                    column: (line.len() - trimmed.len()) as u64 + 1,
                    message,
                };
            }
        }
        InventoryError::Unlocated {
            file: self.file.clone(),
            message,
        }
    }

    fn validate(&self, text: &str) -> Result<(), InventoryError> {
        let at = |span: &Spanned<String>, message: String| InventoryError::Invalid {
            file: self.file.clone(),
            line: span.referenced.line(),
            column: span.referenced.column(),
            message,
        };
        if self.nodes.is_empty() {
            return Err(self.located(text, "nodes", "`nodes` lists no node".into()));
        }
        let mut seen = HashSet::new();
        for node in &self.nodes {
            if !valid_node_name(&node.name.value) {
                return Err(at(
                    &node.name,
                    format!(
                        "node name {:?} is not a valid Kubernetes node name (DNS-1123)",
                        node.name.value
                    ),
                ));
            }
            if !seen.insert(node.name.value.as_str()) {
                return Err(at(
                    &node.name,
                    format!("node {:?} is listed twice", node.name.value),
                ));
            }
            match &node.host {
                Some(host) if !valid_host(&host.value) => {
                    return Err(at(
                        host,
                        format!(
                            "host {:?} of node {} is neither an IP address nor a hostname",
                            host.value, node.name.value
                        ),
                    ));
                }
                None if self.transport_of(node) == TransportKind::Ssh => {
                    return Err(at(
                        &node.name,
                        format!(
                            "node {} has no `host`: SSH needs one (or give it `transport: node-shell`)",
                            node.name.value
                        ),
                    ));
                }
                _ => {}
            }
        }
        let durations = [
            ("timeouts.node_not_ready", self.timeouts.node_not_ready),
            ("timeouts.node_ready", self.timeouts.node_ready),
            ("timeouts.calico_ready", self.timeouts.calico_ready),
            ("timeouts.connectivity", self.timeouts.connectivity),
            ("timeouts.probe_ready", self.timeouts.probe_ready),
            ("timeouts.ssh", self.timeouts.ssh),
            ("timeouts.drain", self.timeouts.drain),
            ("lock.duration", self.lock.duration),
            ("lock.wait", self.lock.wait),
        ];
        if let Some((key, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return Err(self.located(
                text,
                key,
                format!("{key} is 0s: a wait that cannot succeed; give it a duration > 0"),
            ));
        }
        for (key, duration) in durations {
            let (bound, side, why) = if duration < MIN_TIMEOUT {
                (MIN_TIMEOUT, "under the floor", "no step of a run can be judged in less, and a sub-second deadline only fails at random")
            } else if duration > MAX_TIMEOUT {
                (MAX_TIMEOUT, "over the ceiling", "no step of a run takes longer, and the reboot lock must not be held for longer than the work it protects")
            } else {
                continue;
            };
            return Err(self.located(
                text,
                key,
                format!(
                    "{key} is {}: {side} of {} ({why})",
                    humantime::format_duration(duration),
                    humantime::format_duration(bound)
                ),
            ));
        }
        // A skew allowance may be none at all; it is not a deadline, but a lease it
        // stretched by days would never free.
        if self.lock.clock_skew > MAX_TIMEOUT {
            return Err(self.located(
                text,
                "lock.clock_skew",
                format!(
                    "lock.clock_skew is {}: over the ceiling of {} (a dead run's lease would hold the lock for that long)",
                    humantime::format_duration(self.lock.clock_skew),
                    humantime::format_duration(MAX_TIMEOUT)
                ),
            ));
        }
        if self.lock.duration < self.timeouts.node_ready {
            return Err(self.located(
                text,
                "lock.duration",
                format!(
                    "lock.duration ({}) is shorter than timeouts.node_ready ({}): a run killed while its node reboots would free the lock before the node is due back, and a second run could take a second node down; make it at least as long",
                    humantime::format_duration(self.lock.duration),
                    humantime::format_duration(self.timeouts.node_ready)
                ),
            ));
        }
        if let Some(mode) = &self.calico.run_dir_mode {
            if mode.is_empty()
                || mode.len() > 4
                || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b))
            {
                return Err(self.located(
                    text,
                    "calico.run_dir_mode",
                    format!("calico.run_dir_mode {mode:?} is not an octal mode like \"0755\""),
                ));
            }
        }
        if self.calico.tmpfiles_file.is_some() != self.calico.tmpfiles_line.is_some() {
            return Err(self.located(
                text,
                "calico",
                "calico.tmpfiles_file and calico.tmpfiles_line go together: set both to require the entry, or neither to judge the node's own".into(),
            ));
        }
        if !self.probe.client_command.iter().any(|w| w == "{targets}") {
            return Err(self.located(
                text,
                "probe.client_command",
                "probe.client_command must have a word {targets}: the client reaches all of a pod's targets in one run (see probe.client_target)".into(),
            ));
        }
        if !self.probe.client_target.iter().any(|w| w.contains("{url}")) {
            return Err(self.located(
                text,
                "probe.client_target",
                "probe.client_target must contain {url}".into(),
            ));
        }
        if self.reboot.runs_on == RunsOn::Local && !self.reboot.command.contains("{node}") {
            return Err(self.located(
                text,
                "reboot.command",
                "reboot.command runs here (runs_on: local) but does not name the node: put {node} where the node's name goes, e.g. `docker restart {node}`".into(),
            ));
        }
        let any_over_ssh = self
            .nodes
            .iter()
            .any(|node| self.transport_of(node) == TransportKind::Ssh);
        if any_over_ssh && self.ssh.known_hosts.as_os_str().is_empty() {
            return Err(self.located(
                text,
                "ssh",
                "ssh.known_hosts is required: every node's host key is verified against it, and there is no fallback".into(),
            ));
        }
        Ok(())
    }

    /// The files this inventory names that a run reads when it starts: known_hosts
    /// (which must exist when any node is reached over SSH), every identity file, and
    /// the kubeconfig. Each one that is there must be a regular file of a sane size (see
    /// [`crate::local_file`]); a missing identity file or kubeconfig may be meant for
    /// another machine (the CI runner), and is left for the run to report.
    ///
    /// # Errors
    /// The first file that breaks this, with the setting that names it.
    pub fn check_files(&self) -> Result<(), InventoryError> {
        let unusable = |message: String| InventoryError::Unlocated {
            file: self.file.clone(),
            message,
        };
        let ssh_targets: Vec<SshTarget> = self
            .nodes
            .iter()
            .filter_map(|node| self.ssh_target(node))
            .collect();
        if !ssh_targets.is_empty() {
            match crate::local_file::read(&self.ssh.known_hosts, "ssh.known_hosts") {
                Err(error) if error.missing() => {
                    return Err(unusable(format!(
                        "ssh.known_hosts {} does not exist: host keys could not be verified",
                        self.ssh.known_hosts.display()
                    )))
                }
                Err(error) => return Err(unusable(error.to_string())),
                Ok(_) => {}
            }
        }
        let identities = ssh_targets
            .iter()
            .filter_map(|target| target.identity_file.as_ref().map(|f| (target, f)));
        let mut checked = HashSet::new();
        for (target, identity) in identities {
            if !checked.insert(identity) {
                continue;
            }
            match crate::local_file::read(identity, "identity_file") {
                Err(error) if !error.missing() => {
                    return Err(unusable(format!("node {}: {error}", target.node)))
                }
                _ => {}
            }
        }
        if let Some(kubeconfig) = &self.cluster.kubeconfig {
            match crate::local_file::read(kubeconfig, "cluster.kubeconfig") {
                Err(error) if !error.missing() => return Err(unusable(error.to_string())),
                _ => {}
            }
        }
        Ok(())
    }

    /// What is allowed but probably not meant, for `check-inventory` to say.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.lock.wait < self.lock.duration {
            warnings.push(format!(
                "lock.wait ({}) is shorter than lock.duration ({}): a run that waits for a lock whose holder was killed gives up before the lease can expire, so one killed run fails every pipeline started within {} of it; make lock.wait at least lock.duration",
                humantime::format_duration(self.lock.wait),
                humantime::format_duration(self.lock.duration),
                humantime::format_duration(self.lock.duration + self.lock.clock_skew),
            ));
        }
        warnings
    }

    pub fn node(&self, name: &str) -> Option<&NodeEntry> {
        self.nodes.iter().find(|n| n.name.value == name)
    }

    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.value.clone()).collect()
    }

    /// How a node is reached: its own `transport`, or the inventory's.
    pub fn transport_of(&self, node: &NodeEntry) -> TransportKind {
        node.transport.unwrap_or(self.transport)
    }

    /// Whether any node is reached through a node shell, which needs its own namespace
    /// and permissions.
    pub fn uses_node_shell(&self) -> bool {
        self.nodes
            .iter()
            .any(|node| self.transport_of(node) == TransportKind::NodeShell)
    }

    /// SSH access for a node, with the inventory's defaults filled in; none for a node
    /// reached through a node shell.
    pub fn ssh_target(&self, node: &NodeEntry) -> Option<SshTarget> {
        if self.transport_of(node) != TransportKind::Ssh {
            return None;
        }
        let user = node.user.clone().unwrap_or_else(|| self.ssh.user.clone());
        let jump = match node.jump.as_ref().or(self.ssh.jump.as_ref()) {
            Some(JumpSetting::Via {
                user: jump_user,
                host,
                port,
            }) => Some(JumpHost {
                user: jump_user.clone().unwrap_or_else(|| user.clone()),
                host: host.clone(),
                port: *port,
            }),
            Some(JumpSetting::Direct) | None => None,
        };
        Some(SshTarget {
            node: node.name.value.clone(),
            host: node.host.as_ref()?.value.clone(),
            port: node.port.unwrap_or(self.ssh.port),
            user,
            jump,
            identity_file: node
                .identity_file
                .clone()
                .or_else(|| self.ssh.identity_file.clone()),
            known_hosts: self.ssh.known_hosts.clone(),
            become_method: node.become_method.or(self.ssh.become_method),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const GOOD: &str = "cluster:\n  kubeconfig: kubeconfig\nssh:\n  identity_file: ssh/id\n  known_hosts: ssh/known_hosts\nnodes:\n  - name: k8s-worker-01\n    host: 198.18.0.11\n  - name: k8s-worker-03\n    host: 198.18.0.13\n    port: 2222\n    user: admin\n    become: sudo\ntimeouts:\n  node_ready: 90s\n";

    #[test]
    fn a_good_inventory_loads_with_defaults_and_resolved_paths() {
        let inventory = Inventory::parse(GOOD, Path::new("/etc/postflight/staging.yaml")).unwrap();
        assert_eq!(
            inventory.cluster.kubeconfig.as_deref(),
            Some(Path::new("/etc/postflight/kubeconfig"))
        );
        assert_eq!(inventory.timeouts.node_ready, Duration::from_secs(90));
        assert_eq!(inventory.timeouts.node_not_ready, Duration::from_secs(120));
        assert_eq!(inventory.calico.run_dir, "/var/run/calico");
        assert_eq!(inventory.calico.run_dir_owner, None);
        let target = inventory
            .ssh_target(inventory.node("k8s-worker-03").unwrap())
            .expect("reached over SSH");
        assert_eq!(
            (target.port, target.user.as_str(), target.become_method),
            (2222, "admin", Some(Become::Sudo))
        );
        assert_eq!(
            target.identity_file.as_deref(),
            Some(Path::new("/etc/postflight/ssh/id"))
        );
        assert_eq!(
            target.known_hosts,
            Path::new("/etc/postflight/ssh/known_hosts")
        );
    }

    #[rstest]
    #[case("198.18.0.11", true)]
    #[case("fd00::1", true)]
    #[case("k8s-worker-03.staging.example.com", true)]
    #[case("node_3", false)]
    #[case("-oProxyCommand=x", false)]
    #[case("h $(reboot)", false)]
    #[case("", false)]
    fn a_host_is_an_ip_or_a_hostname(#[case] host: &str, #[case] valid: bool) {
        assert_eq!(valid_host(host), valid, "{host}");
    }

    #[test]
    fn a_password_in_a_jump_is_refused_and_never_repeated() {
        for text in [
            "ssh:\n  known_hosts: k\n  jump: \"admin:SEKRIT@bastion:2222\"\nnodes:\n  - name: a\n    host: h\n",
            "ssh:\n  known_hosts: k\nnodes:\n  - name: a\n    host: h\n    jump: \"admin:SE@KRIT@bastion\"\n",
        ] {
            let error = Inventory::parse(text, Path::new("inv.yaml")).unwrap_err().to_string();
            assert!(error.contains("carries a password"), "{error}");
            assert!(!error.contains("SEKRIT") && !error.contains("KRIT"), "{error}");
        }
    }

    #[test]
    fn the_timeouts_bounds_are_accepted_themselves() {
        let text = "ssh:\n  known_hosts: k\nnodes:\n  - name: a\n    host: h\ntimeouts:\n  ssh: 1s\n  drain: 24h\nlock:\n  duration: 24h\n  wait: 1s\n";
        let inventory = Inventory::parse(text, Path::new("inv.yaml")).unwrap();
        assert_eq!(inventory.timeouts.ssh, MIN_TIMEOUT);
        assert_eq!(inventory.lock.duration, MAX_TIMEOUT);
    }

    #[test]
    fn check_files_names_a_known_hosts_that_is_a_directory_or_a_device() {
        let dir = tempfile::tempdir().unwrap();
        let inventory_at = |known_hosts: &str, identity: &str| {
            let text = format!(
                "ssh:\n  known_hosts: {known_hosts}\n  identity_file: {identity}\nnodes:\n  - name: a\n    host: h\n"
            );
            Inventory::parse(&text, &dir.path().join("inv.yaml")).unwrap()
        };
        std::fs::create_dir(dir.path().join("khdir")).unwrap();
        std::fs::write(dir.path().join("known_hosts"), "").unwrap();
        let error = inventory_at("khdir", "id")
            .check_files()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("ssh.known_hosts")
                && error.contains("khdir: not a regular file (a directory)"),
            "{error}"
        );
        let error = inventory_at("gone", "id")
            .check_files()
            .unwrap_err()
            .to_string();
        assert!(error.contains("gone does not exist"), "{error}");
        let error = inventory_at("known_hosts", "/dev/zero")
            .check_files()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("node a: identity_file /dev/zero: not a regular file"),
            "{error}"
        );
        // An identity file kept on another machine (the CI runner) is not this one's to refuse.
        assert!(inventory_at("known_hosts", "missing-id")
            .check_files()
            .is_ok());
    }

    #[test]
    fn an_inventory_that_is_not_a_file_is_refused_without_reading_it() {
        let error = Inventory::load(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "/dev/zero: cannot read the inventory: not a regular file (a character device); give the path of the file itself"
        );
    }

    #[rstest]
    #[case::unknown_field(
        "nodes:\n  - name: a\n    host: h\n    hots: x\n",
        4,
        5,
        "unknown field `hots`"
    )]
    #[case::wrong_type("nodes:\n  - name: a\n    host: h\n    port: twenty-two\n", 4, 11, "")]
    #[case::bad_duration(
        "nodes:\n  - name: a\n    host: h\ntimeouts:\n  node_ready: soon\n",
        5,
        3,
        "expected a duration"
    )]
    #[case::duplicate_node(
        "nodes:\n  - name: a\n    host: h\n  - name: a\n    host: i\n",
        4,
        11,
        "listed twice"
    )]
    #[case::invalid_node_name(
        "nodes:\n  - name: Worker_3\n    host: h\n",
        2,
        11,
        "not a valid Kubernetes node name"
    )]
    #[case::syntax("nodes: [\n", 1, 0, "")]
    #[case::shell_in_host(
        "nodes:\n  - name: a\n    host: \"h; rm -rf /\"\n",
        3,
        11,
        "neither an IP address nor a hostname"
    )]
    #[case::empty_nodes("ssh:\n  known_hosts: k\nnodes: []\n", 3, 1, "lists no node")]
    #[case::bad_mode(
        "nodes:\n  - name: a\n    host: h\ncalico:\n  run_dir_mode: \"0855\"\n",
        5,
        3,
        "not an octal mode"
    )]
    #[case::probe_without_url(
        "nodes:\n  - name: a\n    host: h\nprobe:\n  client_command: [\"curl\"]\n",
        5,
        3,
        "must have a word {targets}"
    )]
    #[case::no_known_hosts(
        "ssh:\n  user: admin\nnodes:\n  - name: a\n    host: h\n",
        1,
        1,
        "ssh.known_hosts is required"
    )]
    #[case::ssh_node_without_host(
        "ssh:\n  known_hosts: k\nnodes:\n  - name: a\n",
        4,
        11,
        "SSH needs one (or give it `transport: node-shell`)"
    )]
    #[case::unknown_transport(
        "transport: telnet\nnodes:\n  - name: a\n",
        1,
        12,
        "unknown variant `telnet`"
    )]
    #[case::local_reboot_without_the_node(
        "ssh:\n  known_hosts: k\nnodes:\n  - name: a\n    host: h\nreboot:\n  command: docker restart kind-worker\n  runs_on: local\n",
        7,
        3,
        "does not name the node"
    )]
    #[case::zero_timeout(
        "nodes:\n  - name: a\n    host: h\ntimeouts:\n  calico_ready: 0s\n",
        5,
        3,
        "timeouts.calico_ready is 0s"
    )]
    #[case::zero_lock_wait(
        "nodes:\n  - name: a\n    host: 198.18.0.11\nlock:\n  wait: 0s\n",
        5,
        3,
        "lock.wait is 0s"
    )]
    #[case::lease_shorter_than_a_reboot(
        "nodes:\n  - name: a\n    host: 198.18.0.11\nlock:\n  duration: 60s\n",
        5,
        3,
        "lock.duration (1m) is shorter than timeouts.node_ready (5m)"
    )]
    #[case::jump_with_shell_in_host(
        "ssh:\n  known_hosts: k\n  jump: \"ops@b; reboot\"\nnodes:\n  - name: a\n    host: h\n",
        3,
        9,
        "neither an IP address nor a hostname"
    )]
    #[case::jump_with_bad_port(
        "ssh:\n  known_hosts: k\n  jump: ops@bastion:0\nnodes:\n  - name: a\n    host: h\n",
        3,
        9,
        "port \"0\" is not 1-65535"
    )]
    #[case::jump_with_option_as_user(
        "ssh:\n  known_hosts: k\nnodes:\n  - name: a\n    host: h\n    jump: -oProxyCommand=x@bastion\n",
        6,
        11,
        "is not a login name"
    )]
    #[case::jump_with_password(
        "ssh:\n  known_hosts: k\n  jump: \"admin:SEKRIT@bastion\"\nnodes:\n  - name: a\n    host: h\n",
        3,
        9,
        "carries a password, which postflight never uses"
    )]
    #[case::sub_second_ssh(
        "nodes:\n  - name: a\n    host: h\ntimeouts:\n  ssh: 1ns\n",
        5,
        3,
        "timeouts.ssh is 1ns: under the floor of 1s"
    )]
    #[case::fractional_second(
        "nodes:\n  - name: a\n    host: h\ntimeouts:\n  node_ready: 0.0001s\n",
        5,
        3,
        "timeouts.node_ready is 100us: under the floor of 1s"
    )]
    #[case::a_68_year_lease(
        "nodes:\n  - name: a\n    host: h\nlock:\n  duration: 99999999999999999s\n",
        5,
        3,
        "lock.duration is 3168808781years"
    )]
    #[case::a_week_of_clock_skew(
        "nodes:\n  - name: a\n    host: h\nlock:\n  clock_skew: 7days\n",
        5,
        3,
        "lock.clock_skew is 7days: over the ceiling of 1day"
    )]
    #[case::a_wait_over_a_day(
        "nodes:\n  - name: a\n    host: h\ntimeouts:\n  drain: 25h\n",
        5,
        3,
        "timeouts.drain is 1day 1h: over the ceiling of 1day"
    )]
    #[case::node_jump_with_unclosed_bracket(
        "ssh:\n  known_hosts: k\nnodes:\n  - name: a\n    host: h\n    jump: \"[fd00::1:22\"\n",
        6,
        11,
        "without its `]`"
    )]
    fn each_kind_of_bad_inventory_points_at_its_location(
        #[case] text: &str,
        #[case] line: u64,
        #[case] column: u64,
        #[case] needle: &str,
    ) {
        let error = Inventory::parse(text, Path::new("inv.yaml")).unwrap_err();
        let InventoryError::Invalid {
            line: l,
            column: c,
            message,
            ..
        } = &error
        else {
            panic!("no location in {error}")
        };
        assert_eq!(*l, line, "{error}");
        if column > 0 {
            assert_eq!(*c, column, "{error}");
        }
        assert!(message.contains(needle), "{error}");
        assert!(
            error.to_string().starts_with(&format!("inv.yaml:{line}:")),
            "{error}"
        );
    }

    #[test]
    fn node_shell_nodes_need_no_host_and_no_known_hosts() {
        let text = "transport: node-shell\nnodes:\n  - name: k8s-worker-01\n  - name: k8s-worker-02\n    transport: node-shell\n";
        let inventory = Inventory::parse(text, Path::new("shells.yaml")).unwrap();
        assert!(inventory.uses_node_shell());
        let entry = inventory.node("k8s-worker-01").unwrap();
        assert_eq!(inventory.transport_of(entry), TransportKind::NodeShell);
        assert_eq!(inventory.ssh_target(entry), None);
        assert_eq!(inventory.node_shell.namespace, "postflight-node-shell");
        // One node over SSH among node shells: it needs its host and known_hosts again.
        let mixed = "transport: node-shell\nnodes:\n  - name: a\n  - name: b\n    host: 198.18.0.12\n    transport: ssh\n";
        let error = Inventory::parse(mixed, Path::new("mixed.yaml")).unwrap_err();
        assert!(
            error.to_string().contains("ssh.known_hosts is required"),
            "{error}"
        );
    }

    #[test]
    fn semantic_errors_point_at_their_key_and_name_the_file() {
        let error = Inventory::parse("nodes: []\n", Path::new("inv.yaml")).unwrap_err();
        assert_eq!(error.to_string(), "inv.yaml:1:1: `nodes` lists no node");
        // A default that is wrong has no line of its own: the file is still named.
        let error = Inventory::parse("nodes:\n  - name: a\n    host: h\n", Path::new("inv.yaml"))
            .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("inv.yaml: ssh.known_hosts is required"),
            "{error}"
        );
        let error = Inventory::parse(
            "nodes:\n  - name: a\n    host: h\ncalico:\n  run_dir_mode: \"rwx\"\n",
            Path::new("inv.yaml"),
        )
        .unwrap_err();
        assert!(error.to_string().contains("octal"), "{error}");
    }

    #[rstest]
    #[case::all_parts(
        "ops@bastion.example.com:2222",
        Some("ops"),
        "bastion.example.com",
        2222
    )]
    #[case::no_user("198.18.0.10", None, "198.18.0.10", 22)]
    #[case::no_port("ops@198.18.0.10", Some("ops"), "198.18.0.10", 22)]
    #[case::bare_ipv6("fd00::1", None, "fd00::1", 22)]
    #[case::bracketed_ipv6("admin@[fd00::1]:2200", Some("admin"), "fd00::1", 2200)]
    fn a_jump_is_user_host_and_port(
        #[case] text: &str,
        #[case] user: Option<&str>,
        #[case] host: &str,
        #[case] port: u16,
    ) {
        assert_eq!(
            JumpSetting::try_from(text.to_string()),
            Ok(JumpSetting::Via {
                user: user.map(String::from),
                host: host.into(),
                port
            })
        );
    }

    #[rstest]
    #[case::empty_user("@bastion")]
    #[case::port_not_a_number("bastion:ssh")]
    #[case::port_too_big("bastion:65536")]
    #[case::two_ats("a@b@bastion")]
    #[case::brackets_around_a_name("[bastion]:22")]
    #[case::junk_after_brackets("[fd00::1]x")]
    #[case::empty_host("ops@:22")]
    fn a_bad_jump_is_refused(#[case] text: &str) {
        assert!(
            JumpSetting::try_from(text.to_string()).is_err(),
            "{text} was accepted"
        );
    }

    #[test]
    fn a_node_takes_the_default_jump_its_own_or_none() {
        let text = "ssh:\n  user: ops\n  known_hosts: k\n  jump: 198.18.0.10\nnodes:\n  - name: a\n    host: 198.18.0.11\n  - name: b\n    host: 198.18.0.12\n    user: admin\n    jump: jump@[fd00::1]:2200\n  - name: c\n    host: 198.18.0.13\n    jump: none\n  - name: d\n    host: 198.18.0.14\n    jump: \"\"\n";
        let inventory = Inventory::parse(text, Path::new("inv.yaml")).unwrap();
        let jump = |node: &str| {
            inventory
                .ssh_target(inventory.node(node).unwrap())
                .expect("reached over SSH")
                .jump
        };
        assert_eq!(
            jump("a"),
            Some(JumpHost {
                user: "ops".into(),
                host: "198.18.0.10".into(),
                port: 22
            }),
            "the node's user logs into the bastion too"
        );
        let b = jump("b").unwrap();
        assert_eq!(b.to_string(), "jump@[fd00::1]:2200");
        assert_eq!(jump("c"), None);
        assert_eq!(jump("d"), None);
        let direct = Inventory::parse(GOOD, Path::new("inv.yaml")).unwrap();
        assert_eq!(
            direct
                .ssh_target(direct.node("k8s-worker-01").unwrap())
                .expect("reached over SSH")
                .jump,
            None
        );
    }

    #[test]
    fn a_lock_wait_shorter_than_the_lease_is_warned_about_and_the_skew_is_set() {
        let text = "nodes:\n  - name: a\n    host: 198.18.0.11\nssh:\n  known_hosts: k\nlock:\n  duration: 10m\n  wait: 2m\n  clock_skew: 30s\n";
        let inventory = Inventory::parse(text, Path::new("inv.yaml")).unwrap();
        assert_eq!(inventory.lock.clock_skew, Duration::from_secs(30));
        let warnings = inventory.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("lock.wait (2m) is shorter than lock.duration (10m)"),
            "{warnings:?}"
        );
        let defaults = Inventory::parse(
            "nodes:\n  - name: a\n    host: 198.18.0.11\nssh:\n  known_hosts: k\n",
            Path::new("inv.yaml"),
        )
        .unwrap();
        assert_eq!(defaults.lock.clock_skew, Duration::from_secs(60));
        assert!(defaults.warnings().is_empty(), "{:?}", defaults.warnings());
    }
}
