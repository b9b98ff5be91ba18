//! One lab node's host side: its network namespace, its root directory (with its own
//! `/etc/tmpfiles.d` and a `/run` tmpfs rebuilt at every boot by the real
//! `systemd-tmpfiles`), its boot ID, its OpenSSH server, and the `systemctl`/`reboot`
//! commands a shell on the node sees.
//!
//! A process "on the node" runs in the node's network namespace and in a mount namespace
//! where the node's `/run`, `/etc/tmpfiles.d`, `/proc/sys/kernel/random/boot_id` and a
//! node-private `/usr/local/bin` are bind-mounted over the host's. `/usr/local/bin` comes
//! first in sshd's default `PATH`, which is how `systemctl reboot` typed over SSH reaches
//! the lab's reboot instead of the host's systemd.

use crate::system::{self, io_context, shell_quote, Result};
use crate::topology::{CalicoProfile, NodeKind, NodeSpec, Topology};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The tmpfiles.d line the incident's cluster was provisioned with.
pub const HEALTHY_CALICO_TMPFILES: &str = "d /run/calico 0755 999 999 -\n";
/// What the OS package ships, and what the incident's update put back.
pub const PACKAGE_DEFAULT_CALICO_TMPFILES: &str = "d /run/calico 0700 root root -\n";

/// A stock root `.bashrc` in what matters here: nothing for a shell that is not interactive.
const STOCK_ROOT_BASHRC: &str =
    "# ~/.bashrc of a lab node's root\ncase $- in *i*) ;; *) return ;; esac\n";

pub struct NodePaths {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub run: PathBuf,
    pub tmpfiles_dir: PathBuf,
    pub calico_tmpfiles: PathBuf,
    pub boot_id: PathBuf,
    pub bin: PathBuf,
    pub host_key: PathBuf,
    pub sshd_config: PathBuf,
    pub sshd_log: PathBuf,
    /// Present while the lab holds the node down (it will not finish booting).
    pub hold_flag: PathBuf,
    /// Present while the node's NIC is down: nothing of the node reaches the network,
    /// its kubelet's API traffic included.
    pub nic_down_flag: PathBuf,
    /// Present once a power-off has finished taking the node apart, until it boots: a
    /// fault applied to the node's network before then could be killed with it.
    pub powered_off_flag: PathBuf,
    /// A second handle on the node's network namespace, outside /run: inside the node's
    /// own view /run is the node's, where `ip netns` names are not to be found.
    pub netns_handle: PathBuf,
    /// For a node that is a container: its PID 1's `/proc/1/stat`, written at each
    /// start, which the node's view shows in place of this machine's init (a lab node
    /// has no PID namespace of its own, as the boot ID has no kernel of its own).
    pub pid1_stat: PathBuf,
    /// The root user's `.bashrc` as a stock node has it. Bash sources `~/.bashrc` for
    /// every command sshd runs, and a lab node shares this machine's `/root`: a CI
    /// machine's own `.bashrc` (a pyenv init, say) would otherwise cost every SSH
    /// command ~80 ms of the lab's CPU, which no real node spends.
    pub root_bashrc: PathBuf,
}

impl NodePaths {
    pub fn new(topology: &Topology, node: &NodeSpec) -> Self {
        let dir = topology.node_dir(node);
        let root = topology.node_root(node);
        NodePaths {
            run: root.join("run"),
            tmpfiles_dir: root.join("etc/tmpfiles.d"),
            calico_tmpfiles: root.join("etc/tmpfiles.d/calico.conf"),
            boot_id: dir.join("boot_id"),
            bin: dir.join("bin"),
            host_key: dir.join("ssh/ssh_host_ed25519_key"),
            sshd_config: dir.join("ssh/sshd_config"),
            sshd_log: dir.join("sshd.log"),
            hold_flag: dir.join("hold-down"),
            nic_down_flag: dir.join("nic-down"),
            powered_off_flag: dir.join("powered-off"),
            netns_handle: dir.join("netns"),
            pid1_stat: dir.join("pid1-stat"),
            root_bashrc: dir.join("root.bashrc"),
            root,
            dir,
        }
    }
}

/// A command that runs `argv` on the node: in its network namespace `netns` (the node's
/// own, or a pod's on that node) and in the node's mount and UTS view.
pub fn enter_command(
    topology: &Topology,
    node: &NodeSpec,
    netns: &str,
    argv: &[String],
) -> Command {
    enter_container_command(topology, node, netns, &[], argv)
}

/// As `enter_command`, with a container's volumes bind-mounted at their mount paths, in
/// a mount namespace of its own.
pub fn enter_container_command(
    topology: &Topology,
    node: &NodeSpec,
    netns: &str,
    mounts: &[crate::volumes::Mount],
    argv: &[String],
) -> Command {
    let paths = NodePaths::new(topology, node);
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    let volumes: String = mounts
        .iter()
        .map(|mount| {
            let target = shell_quote(&mount.target);
            let read_only = if mount.read_only {
                format!(" && mount -o remount,bind,ro {target}")
            } else {
                String::new()
            };
            format!(
                "mkdir -p {target} && mount --bind {source} {target}{read_only} && ",
                source = q(&mount.source)
            )
        })
        .collect();
    let pid1 = match topology.node_kind {
        NodeKind::Machine => String::new(),
        NodeKind::Container => format!("mount --bind {} /proc/1/stat && ", q(&paths.pid1_stat)),
    };
    // Only a file can be bound over a file: a machine without a root .bashrc needs none.
    let bashrc = format!(
        "{{ [ ! -f /root/.bashrc ] || mount --bind {} /root/.bashrc; }} && ",
        q(&paths.root_bashrc)
    );
    let script = format!(
        "mount --bind {run} /run && mount --bind {tmpfiles} /etc/tmpfiles.d && \
         mount --bind {boot_id} /proc/sys/kernel/random/boot_id && {pid1}\
         mount --bind {bin} /usr/local/bin && {bashrc}{volumes}hostname {name} && exec \"$@\"",
        run = q(&paths.run),
        tmpfiles = q(&paths.tmpfiles_dir),
        boot_id = q(&paths.boot_id),
        bin = q(&paths.bin),
        name = shell_quote(&node.name),
    );
    let mut command = Command::new("ip");
    command
        .args([
            "netns",
            "exec",
            netns,
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "sh",
            "-c",
        ])
        .arg(script)
        .arg("node-enter")
        .args(argv);
    command
}

/// Creates the node's files once, at `up`: directories, healthy tmpfiles.d, SSH host key,
/// sshd configuration, and the lab's `systemctl`/`reboot`/`shutdown`.
pub fn provision(
    topology: &Topology,
    node: &NodeSpec,
    authorized_keys: &Path,
    lab_binary: &Path,
) -> Result<()> {
    let paths = NodePaths::new(topology, node);
    for dir in [
        &paths.run,
        &paths.tmpfiles_dir,
        &paths.bin,
        &paths.dir.join("ssh"),
    ] {
        io_context(std::fs::create_dir_all(dir), || {
            format!("creating {}", dir.display())
        })?;
    }
    // Only the hardened site declares its own entry; a stock or operator install has
    // none, and calico-node's hostPath volume creates the directory.
    if topology.calico == CalicoProfile::Hardened {
        write(&paths.calico_tmpfiles, HEALTHY_CALICO_TMPFILES)?;
    }
    // sshd needs its privilege-separation directory in the node's /run at every boot.
    write(
        &paths.tmpfiles_dir.join("sshd.conf"),
        "d /run/sshd 0755 root root -\n",
    )?;
    write(&paths.root_bashrc, STOCK_ROOT_BASHRC)?;
    if !paths.host_key.exists() {
        system::run_args(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                &node.name,
                "-f",
                &paths.host_key.to_string_lossy(),
            ],
        )?;
    }
    let sshd_config = format!(
        "ListenAddress {ip}\nPort 22\nHostKey {key}\nAuthorizedKeysFile {auth}\nStrictModes no\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
         UsePAM no\nPidFile none\nPrintMotd no\nLogLevel INFO\n",
        ip = node.ip,
        key = paths.host_key.display(),
        auth = authorized_keys.display(),
    );
    write(&paths.sshd_config, &sshd_config)?;
    let request = format!(
        "{bin} request-reboot --state-dir {state} --node {node}",
        bin = shell_quote(&lab_binary.to_string_lossy()),
        state = shell_quote(&topology.state_dir.to_string_lossy()),
        node = shell_quote(&node.name),
    );
    let reboot = format!("exec {request}\n");
    // `systemctl reboot --force --force` (or -ff) reboots at once, without shutting
    // down: the lab's unclean reboot.
    let systemctl = format!(
        "#!/bin/sh\n# The lab's systemctl: only the verbs that restart the machine.\n\
         force=0; verb=\nfor word in \"$@\"; do case \"$word\" in\n\
         \x20 --force|-f) force=$((force+1)) ;;\n  -ff) force=2 ;;\n\
         \x20 reboot|kexec|soft-reboot) verb=reboot ;;\nesac; done\n\
         if [ \"$verb\" = reboot ] && [ $force -ge 2 ]; then exec {request} --unclean; fi\n\
         if [ \"$verb\" = reboot ]; then {reboot}fi\n\
         echo \"systemctl on a lab node only knows reboot\" >&2\nexit 1\n"
    );
    write_executable(&paths.bin.join("systemctl"), &systemctl)?;
    write_executable(&paths.bin.join("reboot"), &format!("#!/bin/sh\n{reboot}"))?;
    write_executable(
        &paths.bin.join("shutdown"),
        &format!("#!/bin/sh\ncase \" $* \" in *\" -r \"*) {reboot};; esac\necho 'only shutdown -r' >&2\nexit 1\n"),
    )?;
    Ok(())
}

fn write(path: &Path, contents: &str) -> Result<()> {
    io_context(std::fs::write(path, contents), || {
        format!("writing {}", path.display())
    })
}

fn write_executable(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    write(path, contents)?;
    io_context(
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)),
        || format!("chmod {}", path.display()),
    )
}

/// Creates the node's network namespace and its cable into the lab bridge.
pub fn create_network(topology: &Topology, node: &NodeSpec) -> Result<()> {
    let netns = topology.node_netns(node);
    let bridge_port = format!("{}-v{}", topology.prefix(), node.index);
    system::run_args("ip", &["netns", "add", &netns])?;
    let handle = NodePaths::new(topology, node).netns_handle;
    write(&handle, "")?;
    system::run_args(
        "mount",
        &[
            "--bind",
            &format!("/run/netns/{netns}"),
            &handle.to_string_lossy(),
        ],
    )?;
    system::ip(
        None,
        &[
            "link",
            "add",
            &bridge_port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns,
        ],
    )?;
    system::ip(
        None,
        &[
            "link",
            "set",
            &bridge_port,
            "netns",
            &topology.bridge_netns(),
        ],
    )?;
    system::ip(
        Some(&topology.bridge_netns()),
        &["link", "set", &bridge_port, "master", "br0", "up"],
    )?;
    Ok(())
}

/// What a power-on gives the node's network before any service starts: interfaces up
/// with the node address, forwarding on, and Calico's natOutgoing.
pub fn bring_up_network(topology: &Topology, node: &NodeSpec) -> Result<()> {
    let _ = std::fs::remove_file(&NodePaths::new(topology, node).powered_off_flag);
    let netns = topology.node_netns(node);
    system::netns_sh(
        &netns,
        &format!(
            "ip link set lo up; ip addr replace {ip}/24 dev eth0; ip link set eth0 {link}; \
             sysctl -qw net.ipv4.ip_forward=1",
            ip = node.ip,
            link = if nic_up(topology, node) { "up" } else { "down" },
        ),
    )?;
    // Calico's natOutgoing (on by default in its IP pool, programmed by Felix on a real
    // node): pod traffic to anything outside the pool, such as the API server, leaves
    // with the node's address, so the far end needs no route back to pod blocks.
    system::netns_sh(
        &netns,
        &format!(
            "nft delete table ip calico-nat 2>/dev/null || true; \
             nft add table ip calico-nat && \
             nft add chain ip calico-nat postrouting '{{ type nat hook postrouting priority 100; }}' && \
             nft add rule ip calico-nat postrouting ip saddr {pool} ip daddr != {pool} masquerade",
            pool = topology.pod_pool()
        ),
    )?;
    Ok(())
}

/// What a power-on gives the node before any service starts: interfaces up with the node
/// address, forwarding on, a fresh `/run` built by `systemd-tmpfiles --boot` from the
/// node's own tmpfiles.d, and a new boot ID.
pub fn power_on(topology: &Topology, node: &NodeSpec) -> Result<String> {
    let paths = NodePaths::new(topology, node);
    bring_up_network(topology, node)?;
    system::unmount_below(&paths.run);
    system::run_args(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "mode=755,size=16m",
            "tmpfs",
            &paths.run.to_string_lossy(),
        ],
    )?;
    system::run_args(
        "systemd-tmpfiles",
        &[
            "--create",
            "--boot",
            &format!("--root={}", paths.root.display()),
        ],
    )?;
    let boot_id = match topology.node_kind {
        NodeKind::Machine => uuid::Uuid::new_v4().to_string(),
        NodeKind::Container => {
            // A container shares this machine's kernel: its boot ID, and a PID 1 that
            // starts now.
            write(&paths.pid1_stat, &pid1_stat_starting_now()?)?;
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map_err(|e| system::SystemError::Io {
                    context: "reading this machine's boot ID".into(),
                    source: e,
                })?
                .trim()
                .to_string()
        }
    };
    write(&paths.boot_id, &format!("{boot_id}\n"))?;
    Ok(boot_id)
}

/// `/proc/1/stat` of an init that starts now: this machine's, with its start time
/// (field 22, in clock ticks since the kernel booted) moved to this moment.
fn pid1_stat_starting_now() -> Result<String> {
    let read = |path: &str| {
        std::fs::read_to_string(path).map_err(|e| system::SystemError::Io {
            context: format!("reading {path}"),
            source: e,
        })
    };
    let uptime: f64 = read("/proc/uptime")?
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    let stat = read("/proc/1/stat")?;
    let name_end = stat.rfind(')').map_or(0, |i| i + 1);
    let (head, rest) = stat.split_at(name_end);
    let mut fields: Vec<String> = rest.split_whitespace().map(String::from).collect();
    if let Some(start) = fields.get_mut(19) {
        *start = ((uptime * 100.0) as u64).to_string();
    }
    Ok(format!("{head} {}\n", fields.join(" ")))
}

/// What a power cut takes away: every process on the node and in its pods, the pods'
/// network namespaces and veths, the routes and neighbour entries, and `/run`.
pub fn power_off(topology: &Topology, node: &NodeSpec) {
    let netns = topology.node_netns(node);
    let pod_prefix = format!("{netns}-p");
    for pod_netns in system::list_netns_with_prefix(&netns) {
        if pod_netns.starts_with(&pod_prefix) {
            system::delete_netns(&pod_netns);
        }
    }
    system::kill_netns_processes(&netns);
    let _ = system::netns_sh(
        &netns,
        "ip -4 route flush table main; ip neigh flush all; ip addr flush dev eth0",
    );
    let paths = NodePaths::new(topology, node);
    system::unmount_below(&paths.run);
    let _ = std::fs::write(&paths.powered_off_flag, b"");
}

/// Starts the node's real sshd in the node's namespaces.
pub fn start_sshd(topology: &Topology, node: &NodeSpec) -> std::io::Result<tokio::process::Child> {
    let paths = NodePaths::new(topology, node);
    let argv = vec![
        "/usr/sbin/sshd".to_string(),
        "-D".into(),
        "-e".into(),
        "-f".into(),
        paths.sshd_config.to_string_lossy().into(),
    ];
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.sshd_log)?;
    let mut command: tokio::process::Command =
        enter_command(topology, node, &topology.node_netns(node), &argv).into();
    command
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    command.spawn()
}

/// Replaces the node's calico tmpfiles.d entry with the package default, as the
/// incident's OS update did. Nothing changes on the running node until it reboots.
pub fn clobber_tmpfiles(topology: &Topology, node: &NodeSpec) -> Result<()> {
    write(
        &NodePaths::new(topology, node).calico_tmpfiles,
        PACKAGE_DEFAULT_CALICO_TMPFILES,
    )
}

/// Whether the node's NIC is up (the lab's `nic` knob takes it down).
pub fn nic_up(topology: &Topology, node: &NodeSpec) -> bool {
    !NodePaths::new(topology, node).nic_down_flag.exists()
}

/// Takes the node's NIC down or brings it back: its link, and with it everything the
/// node sends, the kubelet's heartbeats included (the lab's kubelets run on the host, so
/// they honour the flag this leaves).
pub fn set_nic(topology: &Topology, node: &NodeSpec, up: bool) -> Result<()> {
    let paths = NodePaths::new(topology, node);
    if up {
        let _ = std::fs::remove_file(&paths.nic_down_flag);
    } else {
        write(&paths.nic_down_flag, "")?;
    }
    system::netns_sh(
        &topology.node_netns(node),
        &format!("ip link set eth0 {}", if up { "up" } else { "down" }),
    )?;
    Ok(())
}

/// Whether this process — calico-node, as whichever user its pod runs it — can create
/// files in the directory `dir` right now.
pub fn can_create_files_in(dir: &Path) -> bool {
    let probe = dir.join(format!(".calico-node-write-test-{}", std::process::id()));
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .is_ok();
    if created {
        let _ = std::fs::remove_file(&probe);
    }
    created
}
