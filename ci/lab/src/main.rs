//! `postflight-lab`: bring a lab cluster up and down, break it the way the incident did,
//! and look inside it.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use postflight_lab::topology::{CalicoProfile, KubeletKind, NodeKind, Topology};
use postflight_lab::{Lab, LabConfig, Timings};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "postflight-lab",
    version,
    about = "A Calico-style Kubernetes lab cluster on one Linux host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the cluster and return once every node and calico-node pod is Ready.
    Up {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Seconds a rebooting node stays dark.
        #[arg(long)]
        boot_delay: Option<f64>,
        /// How Calico is installed: the incident's hardened site (calico-node as uid 999,
        /// its own tmpfiles.d entry), Calico's stock manifest, or the operator's install.
        #[arg(long, value_enum, default_value_t)]
        calico: CalicoProfile,
        /// What the nodes are: machines, or containers on this machine's kernel as kind's
        /// are (a restart keeps the boot ID; the inventories reboot them with this
        /// binary's `reboot`, run locally, as `docker restart` restarts a kind node).
        #[arg(long, value_enum, default_value_t)]
        node_kind: NodeKind,
        /// Whose kubelet the nodes run: real nodes (Kubernetes' kubelet, containerd, runc,
        /// CNI, BIRD 1.6), or the lab's simulated one (the scale profile only).
        #[arg(long, value_enum, default_value_t)]
        kubelet: KubeletKind,
    },
    /// Stop the lab and remove everything it made (idempotent; works after a crash).
    Down {
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// Nodes, boot IDs, BGP sessions and pods, one line each.
    Status {
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// The incident's OS package update; takes effect at the node's next reboot.
    OsUpdate {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long)]
        node: String,
        /// Replace /etc/tmpfiles.d/calico.conf with the package default (root-only /run/calico).
        #[arg(long)]
        clobber_tmpfiles: bool,
    },
    /// Reboot a node, as `systemctl reboot` on the node does.
    Reboot {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long)]
        node: String,
        /// Die without shutting down (a power cut): no graceful node shutdown.
        #[arg(long)]
        unclean: bool,
    },
    /// Run a command on a node (its network, mounts and hostname); exit code passes through.
    NodeExec {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long)]
        node: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Keep a node down: while held, a rebooting node does not come back (a node that
    /// never returns from its reboot). `--release` lets it boot.
    Hold {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long)]
        node: String,
        #[arg(long)]
        release: bool,
    },
    /// Take a node's NIC down (off the network: pods, BGP, SSH, its kubelet's
    /// heartbeats); `--up` brings it back.
    Nic {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long)]
        node: String,
        #[arg(long)]
        up: bool,
    },
    /// Drop a share of the pod traffic in and out of a node at random (a failing NIC, a
    /// congested link); `--stop` ends it.
    LosePodTraffic {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long)]
        node: String,
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u8).range(1..=100))]
        percent: u8,
        #[arg(long)]
        stop: bool,
    },
    /// Drop BGP (TCP 179) in and out of a node, as a host firewall would; `--unblock`
    /// removes the rule.
    BlockBgp(FirewallFault),
    /// Drop pod traffic in and out of a node (a FORWARD policy of DROP) while BGP stays
    /// up and calico-node Ready; `--unblock` removes the rule.
    BlockPodTraffic(FirewallFault),
    /// Make one node the only way in over SSH: every other node drops TCP port 22 from
    /// anywhere but it (also after a reboot), and `inventory-bastion.yaml` reaches them
    /// through it (`ssh.jump`). `--off` opens SSH again and removes that inventory.
    Bastion {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, required_unless_present = "off")]
        node: Option<String>,
        #[arg(long, conflicts_with = "node")]
        off: bool,
    },
    /// Compact etcd at its current revision, so that open watches get 410 Gone.
    CompactEtcd {
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// Stop the API server for a while (a real outage), then start it again.
    PauseApi {
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Freeze the process (SIGSTOP) instead: connections hang, nothing is refused.
        #[arg(long)]
        freeze: bool,
    },
    /// Print the lab's state directory.
    Path {
        #[arg(long, default_value = "lab")]
        name: String,
    },
    #[command(hide = true)]
    Daemon {
        #[arg(long)]
        name: String,
        #[arg(long)]
        block: u8,
        #[arg(long)]
        nodes: usize,
        #[arg(long, value_enum)]
        calico: CalicoProfile,
        #[arg(long, value_enum, default_value_t)]
        node_kind: NodeKind,
        #[arg(long, value_enum, default_value_t)]
        kubelet: KubeletKind,
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        timings: String,
        #[arg(long)]
        k8s_binary: PathBuf,
    },
    /// PID 1 of a real node (started by the lab daemon at each boot).
    #[command(hide = true)]
    NodeInit {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        node: String,
    },
    /// Used by a node's `systemctl reboot`: asks the lab to reboot this node.
    #[command(hide = true)]
    RequestReboot {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long)]
        unclean: bool,
    },
    /// The calico-node container (`calico-node`, `calico-node -bird-ready`).
    #[command(hide = true, name = "calico-node", allow_hyphen_values = true)]
    CalicoNode {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Runs an exec readiness probe's command each time a line arrives on stdin, and
    /// answers with its exit code: started once in the container's namespaces, it spares
    /// every probe the chain of processes that enters them.
    #[command(hide = true)]
    ProbeRunner {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        argv: Vec<String>,
    },
    /// `nsenter` in a lab container: what entering PID 1's namespaces reaches there.
    #[command(hide = true)]
    Nsenter {
        #[arg(long = "lab-reach")]
        reach: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The agnhost container (`agnhost netexec --http-port=N`).
    #[command(hide = true)]
    Agnhost {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// A firewall fault on one node, set or (with `--unblock`) lifted.
#[derive(clap::Args)]
struct FirewallFault {
    #[arg(long, default_value = "lab")]
    name: String,
    #[arg(long)]
    node: String,
    #[arg(long)]
    unblock: bool,
}

impl FirewallFault {
    fn apply(
        self,
        block: fn(&str, &str, bool) -> postflight_lab::Result<()>,
        traffic: &str,
    ) -> anyhow::Result<ExitCode> {
        block(&self.name, &self.node, !self.unblock)?;
        let state = if self.unblock {
            "allowed again"
        } else {
            "dropped in and out"
        };
        println!("{}: {traffic} {state}", self.node);
        Ok(ExitCode::SUCCESS)
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("postflight-lab: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up {
            name,
            nodes,
            state_dir,
            boot_delay,
            calico,
            node_kind,
            kubelet,
        } => {
            let mut config = LabConfig::new(&name)
                .nodes(nodes)
                .calico(calico)
                .node_kind(node_kind)
                .kubelet(kubelet);
            config.state_dir = state_dir;
            if let Some(seconds) = boot_delay {
                config.timings.boot_delay = std::time::Duration::from_secs_f64(seconds);
            }
            let lab = Lab::up(config)?.keep_running();
            let paths = lab.paths();
            println!(
                "lab `{}` is up: {} nodes Ready, calico-node Ready on each",
                lab.name(),
                lab.topology().nodes.len()
            );
            println!(
                "  up took            {:.1}s (BGP converged {:.1}s after power-on)",
                lab.up_duration().as_secs_f64(),
                lab.ready_report().boot_to_calico_ready_seconds
            );
            println!("  kubeconfig         {}", paths.kubeconfig().display());
            println!("  inventory          {}", paths.inventory().display());
            println!("  ssh key            {}", paths.ssh_key().display());
            println!("  ssh known_hosts    {}", paths.known_hosts().display());
            for node in &lab.topology().nodes {
                println!(
                    "  node {:<16} {}  pods {}",
                    node.name,
                    node.ip,
                    node.pod_cidr()
                );
            }
            println!(
                "try: {} --kubeconfig {} get nodes -o wide",
                paths.kubectl().display(),
                paths.kubeconfig().display()
            );
            println!(
                "postflight runs as the ServiceAccount postflight/postflight (ci/rbac.yaml): {}",
                paths.postflight_kubeconfig().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Down { name } => {
            postflight_lab::teardown(&name);
            println!("lab `{name}` is down");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { name } => {
            print!("{}", postflight_lab::status(&name)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::OsUpdate {
            name,
            node,
            clobber_tmpfiles,
        } => {
            postflight_lab::os_update(&name, &node, clobber_tmpfiles)?;
            if clobber_tmpfiles {
                println!("{node}: /etc/tmpfiles.d/calico.conf replaced by the package default; takes effect at the next reboot");
            } else {
                println!("{node}: updated (nothing clobbered)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reboot {
            name,
            node,
            unclean,
        } => {
            postflight_lab::reboot(&name, &node, !unclean)?;
            println!(
                "{node}: rebooting{}",
                if unclean {
                    " without shutting down"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::NodeExec {
            name,
            node,
            command,
        } => {
            let status = postflight_lab::node_command(&name, &node, &command)?
                .status()
                .context("running the command on the node")?;
            Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
        }
        Command::LosePodTraffic {
            name,
            node,
            percent,
            stop,
        } => {
            postflight_lab::lose_pod_traffic(&name, &node, (!stop).then_some(percent))?;
            if stop {
                println!("{node}: pod traffic flows again");
            } else {
                println!("{node}: {percent} % of pod traffic through the node is dropped");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Nic { name, node, up } => {
            postflight_lab::nic(&name, &node, up)?;
            println!("{node}: NIC {}", if up { "up" } else { "down" });
            Ok(ExitCode::SUCCESS)
        }
        Command::Hold {
            name,
            node,
            release,
        } => {
            postflight_lab::hold(&name, &node, !release)?;
            println!(
                "{node}: {}",
                if release {
                    "released: it boots when it reboots"
                } else {
                    "held down: a reboot will not bring it back"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::BlockBgp(fault) => fault.apply(postflight_lab::block_bgp, "BGP (TCP 179)"),
        Command::BlockPodTraffic(fault) => fault.apply(
            postflight_lab::block_pod_traffic,
            "pod traffic through the node",
        ),
        Command::Bastion { name, node, off } => {
            let bastion = if off { None } else { node.as_deref() };
            let inventory = postflight_lab::bastion(&name, bastion)?;
            match bastion {
                Some(bastion) => {
                    println!("{bastion}: the only way in over SSH; the other nodes drop port 22 from anywhere else");
                    println!("  inventory          {}", inventory.display());
                }
                None => println!("lab `{name}`: every node takes SSH from anywhere again"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CompactEtcd { name } => {
            print!("{}", postflight_lab::compact_etcd(&name)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::PauseApi {
            name,
            seconds,
            freeze,
        } => {
            print!("{}", postflight_lab::pause_api(&name, seconds, freeze)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Path { name } => {
            println!("{}", postflight_lab::state_dir(&name)?.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon {
            name,
            block,
            nodes,
            calico,
            node_kind,
            kubelet,
            state_dir,
            timings,
            k8s_binary,
        } => {
            let log_filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into());
            tracing_subscriber::fmt()
                .with_env_filter(log_filter)
                .with_ansi(false)
                .init();
            let timings: Timings = serde_json::from_str(&timings).context("parsing --timings")?;
            let mut topology = Topology::new(&name, block, &state_dir, nodes);
            topology.calico = calico;
            topology.node_kind = node_kind;
            topology.kubelet = kubelet;
            let lab_binary = std::env::current_exe().context("locating this binary")?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(postflight_lab::daemon::run(
                postflight_lab::daemon::DaemonArgs {
                    topology,
                    lab_binary,
                    k8s_binary,
                    timings,
                },
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::NodeInit { state_dir, node } => {
            let text = std::fs::read_to_string(state_dir.join("topology.json"))
                .context("reading the lab's topology")?;
            let topology: Topology =
                serde_json::from_str(&text).context("parsing topology.json")?;
            let spec = topology
                .node(&node)
                .with_context(|| format!("no node {node} in the lab"))?
                .clone();
            Ok(ExitCode::from(
                postflight_lab::realnode::init(&topology, &spec) as u8,
            ))
        }
        Command::RequestReboot {
            state_dir,
            node,
            unclean,
        } => {
            let unclean = if unclean { "?unclean=1" } else { "" };
            postflight_lab::control::request(
                &state_dir.join("control.sock"),
                "POST",
                &format!("/nodes/{node}/reboot{unclean}"),
            )
            .map_err(anyhow::Error::msg)?;
            // Like systemctl reboot: the caller's session ends with the machine.
            std::thread::sleep(std::time::Duration::from_secs(30));
            Ok(ExitCode::SUCCESS)
        }
        Command::CalicoNode { args } => {
            let code = if args
                .iter()
                .any(|a| a == "-bird-ready" || a == "--bird-ready")
            {
                postflight_lab::calico::bird_ready(&args)
            } else {
                postflight_lab::calico::run()
            };
            Ok(ExitCode::from(code as u8))
        }
        Command::ProbeRunner { argv } => {
            postflight_lab::kubelet::run_probes(&argv)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Nsenter { reach, args } => {
            // Returns only when it did not become the command.
            let (code, message) = postflight_lab::nsenter::run(&reach, &args);
            eprintln!("{message}");
            Ok(ExitCode::from(code as u8))
        }
        Command::Agnhost { args } => {
            let Some(first) = args.first() else {
                bail!("agnhost: name a subcommand (netexec, pause)")
            };
            match first.as_str() {
                "netexec" => {
                    let port = args
                        .iter()
                        .find_map(|a| a.strip_prefix("--http-port=").map(String::from))
                        .or_else(|| {
                            args.iter()
                                .position(|a| a == "--http-port")
                                .and_then(|i| args.get(i + 1).cloned())
                        })
                        .unwrap_or_else(|| "8080".into());
                    let port: u16 = port.parse().context("--http-port")?;
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?
                        .block_on(postflight_lab::agnhost::netexec(port))?;
                    Ok(ExitCode::SUCCESS)
                }
                "pause" => loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                },
                other => bail!("agnhost: the lab does not implement `{other}`"),
            }
        }
    }
}
