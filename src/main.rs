//! The `postflight` command line: parses arguments, wires signals to cancellation, and
//! hands everything else to the library.

mod console;

use anyhow::Context;
use clap::{Parser, Subcommand};
use console::Console;
use postflight::gate::{self, RollingRequest, VerifyRequest};
use postflight::inventory::Inventory;
use postflight::report;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Exit code for usage and inventory errors (DESIGN.md).
const EXIT_USAGE: u8 = 2;
/// Exit code when the checks could not run at all.
const EXIT_INFRASTRUCTURE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "postflight",
    version,
    about = "Post-update node verification for Kubernetes clusters that run Calico"
)]
struct Cli {
    /// The inventory that describes the cluster.
    #[arg(long, global = true, env = "POSTFLIGHT_INVENTORY")]
    inventory: Option<PathBuf>,
    /// The kubeconfig to use, over the inventory's `cluster.kubeconfig`. Without either,
    /// KUBECONFIG, ~/.kube/config, then the in-cluster service account, as kubectl does.
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use, over the inventory's `cluster.context`.
    #[arg(long, global = true)]
    context: Option<String>,
    /// No progress on stderr; the report on stdout is unchanged.
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Also postflight's own log on stderr: retried waits, refused requests.
    #[arg(long, short, global = true)]
    verbose: bool,
    /// Colour in the report: auto (a terminal, unless NO_COLOR), always (CI logs that
    /// render ANSI), never.
    #[arg(long, global = true, value_enum, default_value_t)]
    color: console::ColorChoice,
    #[command(subcommand)]
    command: Command,
}

/// The report files every command that checks something can write.
#[derive(Clone, clap::Args)]
struct ReportFlags {
    /// Write JUnit XML here: a testsuite per node (always written, also on failure and
    /// interruption; a rolling update rewrites it after every node).
    #[arg(long)]
    junit: Option<PathBuf>,
    /// The JUnit schema to follow: jenkins (what Jenkins, GitLab, GitHub and nextest
    /// read: zoned timestamps, per-check output, flaky marks) or ant (the strict Apache
    /// Ant schema).
    #[arg(long, value_enum, default_value_t)]
    junit_dialect: JunitDialectFlag,
    /// Write the full report as JSON here (schema/report-v1.schema.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write one self-contained HTML page here: the timeline of each node's run, the
    /// pod-pair heat map, and every check with its evidence and fix.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Write Prometheus text exposition here, for node_exporter's textfile collector.
    #[arg(long)]
    metrics: Option<PathBuf>,
}

#[derive(Clone, Copy, Default, clap::ValueEnum)]
enum JunitDialectFlag {
    #[default]
    Jenkins,
    Ant,
}

impl From<ReportFlags> for report::ReportFiles {
    fn from(flags: ReportFlags) -> Self {
        report::ReportFiles {
            junit: flags.junit,
            junit_dialect: match flags.junit_dialect {
                JunitDialectFlag::Jenkins => report::JunitDialect::Jenkins,
                JunitDialectFlag::Ant => report::JunitDialect::Ant,
            },
            json: flags.json,
            html: flags.html,
            metrics: flags.metrics,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Validate an inventory file; errors name file:line:column.
    CheckInventory {
        /// Defaults to --inventory.
        file: Option<PathBuf>,
    },
    /// Write inventories from what a site already keeps.
    Inventory {
        #[command(subcommand)]
        command: InventoryCommand,
    },
    /// Verify that a node is really back: Ready on a new boot, calico-node Ready, its
    /// host state intact, pod traffic to and from every other node.
    Verify {
        /// The node, as Kubernetes names it.
        #[arg(long)]
        node: String,
        /// Reboot the node first (with the inventory's reboot command, over SSH), after
        /// a preflight that the rest of the cluster is whole.
        #[arg(long)]
        reboot: bool,
        /// Reboot even if the preflight finds the cluster degraded. Recorded in the report.
        #[arg(long, requires = "reboot")]
        force: bool,
        /// Allow rebooting a node the inventory marks `protected` (the control plane).
        #[arg(long, requires = "reboot")]
        allow_protected: bool,
        /// Cordon and drain the node first (evictions respect PodDisruptionBudgets); it is
        /// uncordoned only if every check passes.
        #[arg(long, requires = "reboot")]
        drain: bool,
        #[command(flatten)]
        reports: ReportFlags,
    },
    /// Diagnose a node as it is, without rebooting it: calico-node and its logs, the
    /// tmpfiles.d entry, the run directory, routes and BGP, and the known root causes.
    Diagnose {
        /// The node, as Kubernetes names it.
        #[arg(long)]
        node: String,
        #[command(flatten)]
        reports: ReportFlags,
    },
    /// A rolling update's gate: reboot and verify the nodes one at a time (each as
    /// `verify --reboot`), stopping at the first that does not pass.
    Rolling {
        /// The nodes, in order (comma-separated); default: every node of the inventory
        /// that is not protected, in inventory order.
        #[arg(long, value_delimiter = ',')]
        nodes: Option<Vec<String>>,
        /// Cordon and drain each node first.
        #[arg(long)]
        drain: bool,
        /// Reboot even if a preflight finds the cluster degraded.
        #[arg(long)]
        force: bool,
        /// Allow protected nodes named in --nodes.
        #[arg(long)]
        allow_protected: bool,
        /// After a node passes, wait this long (e.g. 5m) before rebooting the next, so its
        /// workloads settle and a slow failure shows before a second node goes down.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        soak: std::time::Duration,
        #[command(flatten)]
        reports: ReportFlags,
    },
    /// Print the RBAC postflight needs for this inventory — the probe namespace, a
    /// ClusterRole and Roles in the probe and lock namespaces, bound to a ServiceAccount —
    /// ready for `kubectl apply -f -`. It grants nothing postflight does not use.
    Rbac {
        /// The ServiceAccount postflight runs as, NAMESPACE/NAME.
        #[arg(long, default_value = "postflight/postflight")]
        service_account: postflight::rbac::Subject,
    },
    /// Check every ordered pair of the nodes' pods, rebooting nothing: one probe pod per
    /// node, one exec per pod reaching all the others at once. For the nightly run.
    Mesh {
        #[command(flatten)]
        reports: ReportFlags,
    },
    /// Check every node, without rebooting any, for the state that breaks calico-node at
    /// its next boot: the tmpfiles.d entry, what the next boot will create, the live
    /// directory.
    Drift {
        #[command(flatten)]
        reports: ReportFlags,
    },
    /// Print the version, the git commit, the build date, rustc and the Kubernetes API
    /// version postflight was built against (the reports carry the same facts).
    Version {
        #[arg(long, value_enum, default_value_t)]
        output: VersionOutput,
    },
    /// Print the completion script for SHELL, e.g. `source <(postflight completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages, postflight(1) and one for each subcommand, into DIR.
    Man {
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
}

#[derive(Clone, Copy, Default, clap::ValueEnum)]
enum VersionOutput {
    #[default]
    Text,
    Json,
}

#[derive(Subcommand)]
enum InventoryCommand {
    /// Write a postflight inventory from an Ansible inventory: its hosts are the nodes,
    /// ansible_host/port/user/ssh_private_key_file/become their SSH access. The global
    /// --kubeconfig and --context, when given, go into its `cluster:` section. Variables
    /// it has no use for are named on stderr.
    FromAnsible(FromAnsibleArgs),
    /// Write a postflight inventory for a kind cluster from `kind get nodes`: its nodes
    /// reached through node shells, restarted with `docker restart`, no addresses
    /// written. The context is kind's (`kind-NAME`), checked in the kubeconfig (the
    /// global --kubeconfig, or kubectl's default).
    FromKind {
        /// The kind cluster's name (`kind create cluster --name NAME`).
        #[arg(long, default_value = "kind")]
        name: String,
        /// Write the inventory here (atomically) instead of to stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["inventory_source", "list_json"])))]
struct FromAnsibleArgs {
    /// The Ansible inventory (a file or a directory, anything `ansible-inventory -i`
    /// takes); ansible-inventory from ansible-core must be on PATH.
    #[arg(short = 'i', long, value_name = "PATH")]
    inventory_source: Option<PathBuf>,
    /// What `ansible-inventory --list` printed, instead of running it; `-` for stdin.
    #[arg(long, value_name = "FILE")]
    list_json: Option<PathBuf>,
    /// The group whose hosts (and its children's, recursively) are the Kubernetes nodes.
    #[arg(long, value_name = "NAME", default_value = "all")]
    group: String,
    /// Mark the nodes of this group `protected` (the control plane), never rebooted
    /// unless named with --allow-protected.
    #[arg(long, value_name = "NAME")]
    protected_group: Option<String>,
    /// The host variable that holds a host's Kubernetes node name, where it differs from
    /// its Ansible name.
    #[arg(long, value_name = "VARIABLE", default_value = postflight::ansible::DEFAULT_NODE_NAME_VARIABLE)]
    node_name_var: String,
    /// The known_hosts file every node's host key is verified against.
    #[arg(long, value_name = "PATH")]
    known_hosts: PathBuf,
    /// Write the inventory here (atomically) instead of to stdout.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // kube-client logs every failed HTTP request at ERROR: during an API outage that is a
    // flood of lines saying what postflight's own "retrying" warnings and its report say
    // once. POSTFLIGHT_LOG=kube_client=debug brings them back.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POSTFLIGHT_LOG").unwrap_or_else(
                |_| match (cli.quiet, cli.verbose) {
                    (true, _) => "error,kube_client::client::builder=off".into(),
                    (_, true) => "warn,postflight=debug,kube_client::client::builder=off".into(),
                    _ => "warn,kube_client::client::builder=off".into(),
                },
            ),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !console::no_color_asked())
        .init();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("postflight: {error:#}");
            ExitCode::from(EXIT_INFRASTRUCTURE)
        }
    }
}

fn load_inventory(path: Option<&Path>) -> Result<Inventory, u8> {
    let Some(path) = path else {
        eprintln!("postflight: no inventory: pass --inventory FILE or set POSTFLIGHT_INVENTORY");
        return Err(EXIT_USAGE);
    };
    Inventory::load(path).map_err(|error| {
        eprintln!("postflight: {error}");
        EXIT_USAGE
    })
}

/// The inventory for a command that talks to the cluster, with `--kubeconfig` and
/// `--context` over the inventory's own.
fn load_cluster_inventory(flags: &ClusterFlags) -> Result<Inventory, u8> {
    let mut inventory = load_inventory(flags.inventory.as_deref())?;
    if let Some(kubeconfig) = &flags.kubeconfig {
        inventory.cluster.kubeconfig = Some(kubeconfig.clone());
    }
    if let Some(context) = &flags.context {
        inventory.cluster.context = Some(context.clone());
    }
    Ok(inventory)
}

/// The global flags that say where the cluster is.
struct ClusterFlags {
    inventory: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
}

/// A kubeconfig or context that cannot be found is a usage error, said once, before
/// anything runs.
/// The async runtime for a run against the cluster, once the cluster's configuration is
/// known to load; `Err(code)`: it does not, and that was said.
fn cluster_runtime(inventory: &Inventory) -> anyhow::Result<Result<tokio::runtime::Runtime, u8>> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    Ok(runtime
        .block_on(check_cluster_config(inventory))
        .map(|()| runtime))
}

/// Runs a command's work, reports included, to its end, then ends the runtime without
/// waiting for its blocking workers: an SSH worker still in a call to a stuck node (it
/// returns at its own deadline) must not keep a finished run's process alive.
fn run_to_end<T>(
    runtime: tokio::runtime::Runtime,
    work: impl std::future::Future<Output = T>,
) -> T {
    let result = runtime.block_on(work);
    runtime.shutdown_background();
    result
}

async fn check_cluster_config(inventory: &Inventory) -> Result<(), u8> {
    match gate::connect(inventory).await {
        Ok(_) => Ok(()),
        Err(error) => {
            eprintln!("postflight: {error}");
            Err(EXIT_USAGE)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let reports = match &cli.command {
        Command::Verify { reports, .. }
        | Command::Diagnose { reports, .. }
        | Command::Rolling { reports, .. }
        | Command::Mesh { reports }
        | Command::Drift { reports } => Some(reports),
        _ => None,
    };
    // Two reports written to one file would keep only the last: refused before anything.
    if let Some(Err(error)) = reports.map(|r| report::ReportFiles::from(r.clone()).check_distinct())
    {
        eprintln!("postflight: {error}");
        return Ok(EXIT_USAGE);
    }
    let flags = ClusterFlags {
        inventory: cli.inventory,
        kubeconfig: cli.kubeconfig,
        context: cli.context,
    };
    let display = console::Settings {
        quiet: cli.quiet,
        color: cli.color,
    };
    match cli.command {
        Command::Version { output } => {
            let build = postflight::build_info::BUILD;
            match output {
                VersionOutput::Text => print!("{}", build.text()),
                VersionOutput::Json => println!("{}", serde_json::to_string_pretty(&build)?),
            }
            Ok(0)
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "postflight", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { out_dir } => {
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("creating {}", out_dir.display()))?;
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &out_dir)
                .with_context(|| format!("writing the man pages into {}", out_dir.display()))?;
            Ok(0)
        }
        Command::CheckInventory { file } => {
            let path = file.or(flags.inventory);
            Ok(match load_inventory(path.as_deref()) {
                Ok(inventory) => match inventory.check_files() {
                    Err(error) => {
                        eprintln!("postflight: {error}");
                        EXIT_USAGE
                    }
                    Ok(()) => {
                        for warning in inventory.warnings() {
                            eprintln!(
                                "postflight: {}: warning: {warning}",
                                inventory.file.display()
                            );
                        }
                        println!(
                            "{}: valid, {} nodes",
                            inventory.file.display(),
                            inventory.nodes.len()
                        );
                        0
                    }
                },
                Err(code) => code,
            })
        }
        Command::Inventory {
            command: InventoryCommand::FromAnsible(args),
        } => from_ansible(args, flags),
        Command::Inventory {
            command: InventoryCommand::FromKind { name, output },
        } => from_kind(&name, output.as_deref(), flags.kubeconfig.as_deref()),
        Command::Verify {
            node,
            reboot,
            force,
            allow_protected,
            drain,
            reports,
        } => {
            let inventory = match load_cluster_inventory(&flags) {
                Ok(inventory) => inventory,
                Err(code) => return Ok(code),
            };
            let request = VerifyRequest {
                node,
                reboot,
                force,
                allow_protected,
                drain,
            };
            // What is wrong with the request itself is said before where the cluster is.
            if let Err(error) = gate::check_request(&inventory, &request) {
                return usage_error(error);
            }
            let runtime = match cluster_runtime(&inventory)? {
                Ok(runtime) => runtime,
                Err(code) => return Ok(code),
            };
            run_to_end(
                runtime,
                verify(inventory, request, Outputs::new(reports, display)),
            )
        }
        Command::Rbac { service_account } => {
            let inventory = match load_inventory(flags.inventory.as_deref()) {
                Ok(inventory) => inventory,
                Err(code) => return Ok(code),
            };
            print!(
                "{}",
                postflight::rbac::manifest(&inventory, &service_account)
            );
            Ok(0)
        }
        Command::Diagnose { node, reports } => {
            let inventory = match load_cluster_inventory(&flags) {
                Ok(inventory) => inventory,
                Err(code) => return Ok(code),
            };
            if let Err(error) = gate::check_node(&inventory, &node) {
                return usage_error(error);
            }
            let runtime = match cluster_runtime(&inventory)? {
                Ok(runtime) => runtime,
                Err(code) => return Ok(code),
            };
            run_to_end(
                runtime,
                diagnose(inventory, node, Outputs::new(reports, display)),
            )
        }
        Command::Rolling {
            nodes,
            drain,
            force,
            allow_protected,
            soak,
            reports,
        } => {
            let inventory = match load_cluster_inventory(&flags) {
                Ok(inventory) => inventory,
                Err(code) => return Ok(code),
            };
            let request = RollingRequest {
                nodes,
                drain,
                force,
                allow_protected,
                soak,
            };
            if let Err(error) = gate::plan_rolling(&inventory, &request) {
                return usage_error(error);
            }
            let runtime = match cluster_runtime(&inventory)? {
                Ok(runtime) => runtime,
                Err(code) => return Ok(code),
            };
            run_to_end(
                runtime,
                rolling(inventory, request, Outputs::new(reports, display)),
            )
        }
        Command::Mesh { reports } => {
            let inventory = match load_cluster_inventory(&flags) {
                Ok(inventory) => inventory,
                Err(code) => return Ok(code),
            };
            let runtime = match cluster_runtime(&inventory)? {
                Ok(runtime) => runtime,
                Err(code) => return Ok(code),
            };
            run_to_end(runtime, mesh(inventory, Outputs::new(reports, display)))
        }
        Command::Drift { reports } => {
            let inventory = match load_cluster_inventory(&flags) {
                Ok(inventory) => inventory,
                Err(code) => return Ok(code),
            };
            let runtime = match cluster_runtime(&inventory)? {
                Ok(runtime) => runtime,
                Err(code) => return Ok(code),
            };
            run_to_end(runtime, drift(inventory, Outputs::new(reports, display)))
        }
    }
}

fn from_ansible(args: FromAnsibleArgs, flags: ClusterFlags) -> anyhow::Result<u8> {
    use postflight::ansible;
    let refused = |error: ansible::ImportError| {
        eprintln!(
            "postflight: {}",
            postflight::hostile::for_terminal(&error.to_string())
        );
        Ok(EXIT_USAGE)
    };
    let (listing, origin) = match (&args.inventory_source, &args.list_json) {
        (Some(source), _) => match ansible::run_ansible_inventory(source) {
            Ok(listing) => {
                eprint!("{}", postflight::hostile::for_terminal(&listing.warnings));
                (
                    listing.json,
                    format!("ansible-inventory -i {}", source.display()),
                )
            }
            Err(error) => return refused(error),
        },
        (None, Some(file)) => match ansible::read_listing(file) {
            Ok(json) => (json, file.display().to_string()),
            Err(error) => return refused(error),
        },
        (None, None) => unreachable!("clap requires --inventory-source or --list-json"),
    };
    let options = ansible::ImportOptions {
        group: args.group,
        protected_group: args.protected_group,
        node_name_variable: args.node_name_var,
        known_hosts: args.known_hosts,
        kubeconfig: flags.kubeconfig,
        context: flags.context,
        working_directory: std::env::current_dir().context("reading the working directory")?,
    };
    let import = match ansible::convert(&listing, &origin, &options) {
        Ok(import) => import,
        Err(error) => return refused(error),
    };
    if !import.ignored.is_empty() {
        eprintln!("postflight: left out these Ansible variables, which postflight does not use:");
        for ignored in &import.ignored {
            eprintln!("  {ignored}");
        }
    }
    match &args.output {
        Some(file) => {
            report::write_atomically(file, import.yaml.as_bytes())
                .context("writing the inventory")?;
            eprintln!(
                "postflight: wrote {} nodes to {}",
                import.node_names.len(),
                file.display()
            );
        }
        None => print!("{}", import.yaml),
    }
    Ok(0)
}

fn from_kind(
    cluster: &str,
    output: Option<&std::path::Path>,
    kubeconfig: Option<&std::path::Path>,
) -> anyhow::Result<u8> {
    use postflight::kind;
    let written = kind::get_nodes(cluster).and_then(|nodes| {
        kind::check_context(cluster, kubeconfig)?;
        Ok((kind::inventory(cluster, &nodes, kubeconfig)?, nodes.len()))
    });
    let (text, nodes) = match written {
        Ok(written) => written,
        Err(error) => {
            eprintln!(
                "postflight: {}",
                postflight::hostile::for_terminal(&error.to_string())
            );
            return Ok(EXIT_USAGE);
        }
    };
    match output {
        Some(file) => {
            report::write_atomically(file, text.as_bytes()).context("writing the inventory")?;
            eprintln!("postflight: wrote {nodes} nodes to {}", file.display());
        }
        None => print!("{text}"),
    }
    Ok(0)
}

/// Where the reports of a run go, besides the console.
struct Outputs {
    files: report::ReportFiles,
    /// How the console shows the run.
    display: console::Settings,
}

impl Outputs {
    fn new(flags: ReportFlags, display: console::Settings) -> Self {
        Outputs {
            files: flags.into(),
            display,
        }
    }
}

/// Writes the reports, prints the summary, and returns the exit code.
fn conclude(
    reports: &[report::NodeReport],
    rolling: Option<&report::RollingSummary>,
    outputs: &Outputs,
    title: &str,
    console: &Console,
) -> anyhow::Result<u8> {
    console.clear_line();
    let written = outputs
        .files
        .write(reports, rolling, title)
        .context("writing the reports")?;
    print!("{}", report::console(reports, console.color));
    if let Some(summary) = rolling {
        println!("{}", summary.describe());
    }
    for line in written {
        println!("{line}");
    }
    let code = report::exit_code(reports);
    if code == 130 {
        eprintln!("postflight: interrupted; the report marks the checks that did not run");
    }
    Ok(code)
}

async fn diagnose(inventory: Inventory, node: String, outputs: Outputs) -> anyhow::Result<u8> {
    let console = &Console::new(outputs.display);
    let (so_far, last_words) = last_words(&outputs, "postflight diagnose");
    let progress = &gate::KeepingReports::new(console, so_far);
    let run = cancellable(
        leftovers(&inventory, None),
        last_words,
        |cancel| async move { gate::diagnose_node(&inventory, &node, progress, &cancel).await },
    );
    match run.await {
        Ok(report) => conclude(&[report], None, &outputs, "postflight diagnose", console),
        Err(error) => usage_error(error),
    }
}

async fn rolling(
    inventory: Inventory,
    request: RollingRequest,
    outputs: Outputs,
) -> anyhow::Result<u8> {
    let console = &Console::new(outputs.display);
    let outputs_so_far = &outputs;
    let (so_far, last_words) = last_words(&outputs, "postflight rolling");
    let progress = &gate::KeepingReports::new(console, so_far);
    let run = cancellable(
        leftovers(&inventory, request.drain.then_some("NODE")),
        last_words,
        |cancel| async move {
            // JUnit and JSON are rewritten after every node, so a rollout killed halfway
            // still leaves the verdicts of the nodes it did.
            let write_so_far = |reports: &[report::NodeReport],
                                summary: &report::RollingSummary| {
                let files = &outputs_so_far.files;
                if let Err(error) = files.write(reports, Some(summary), "postflight rolling") {
                    eprintln!("postflight: writing the reports: {error}");
                }
            };
            gate::rolling(&inventory, &request, progress, &cancel, &write_so_far).await
        },
    );
    let (reports, summary) = match run.await {
        Ok(done) => done,
        Err(error) => return usage_error(error),
    };
    let code = conclude(
        &reports,
        Some(&summary),
        &outputs,
        "postflight rolling",
        console,
    )?;
    Ok(if summary.interrupted_between_nodes {
        130
    } else {
        code
    })
}

async fn mesh(inventory: Inventory, outputs: Outputs) -> anyhow::Result<u8> {
    let console = &Console::new(outputs.display);
    let (so_far, last_words) = last_words(&outputs, "postflight mesh");
    let progress = &gate::KeepingReports::new(console, so_far);
    let reports = cancellable(
        leftovers(&inventory, None),
        last_words,
        |cancel| async move { gate::mesh(&inventory, progress, &cancel).await },
    )
    .await;
    conclude(&reports, None, &outputs, "postflight mesh", console)
}

async fn drift(inventory: Inventory, outputs: Outputs) -> anyhow::Result<u8> {
    let console = &Console::new(outputs.display);
    let (so_far, last_words) = last_words(&outputs, "postflight drift");
    let progress = &gate::KeepingReports::new(console, so_far);
    let reports = cancellable(
        leftovers(&inventory, None),
        last_words,
        |cancel| async move { gate::drift(&inventory, progress, &cancel).await },
    )
    .await;
    conclude(&reports, None, &outputs, "postflight drift", console)
}

async fn verify(
    inventory: Inventory,
    request: VerifyRequest,
    outputs: Outputs,
) -> anyhow::Result<u8> {
    let console = &Console::new(outputs.display);
    let (so_far, last_words) = last_words(&outputs, "postflight verify");
    let progress = &gate::KeepingReports::new(console, so_far);
    let run = cancellable(
        leftovers(&inventory, request.drain.then_some(request.node.as_str())),
        last_words,
        |cancel| async move { gate::verify(&inventory, &request, progress, &cancel).await },
    );
    match run.await {
        Ok(report) => conclude(&[report], None, &outputs, "postflight verify", console),
        Err(error) => usage_error(error),
    }
}

/// Runs `work` with Ctrl-C and SIGTERM wired to the cancellation token it gets. A second
/// signal during the cleanup that the first one started skips what is left: `leftovers`
/// says what that may be and how to undo it by hand.
async fn cancellable<T, Work>(
    leftovers: String,
    last_words: LastWords,
    work: impl FnOnce(CancellationToken) -> Work,
) -> T
where
    Work: std::future::Future<Output = T>,
{
    let cancel = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(cancel.clone(), leftovers, last_words));
    let result = work(cancel).await;
    signals.abort();
    result
}

/// A request the gate refused before doing anything: exit code 2.
fn usage_error(error: gate::GateError) -> anyhow::Result<u8> {
    eprintln!("postflight: {error}");
    Ok(EXIT_USAGE)
}

/// SIGINT (Ctrl-C) and SIGTERM (a CI job cancelled) both end the run cleanly: reports
/// are written and probe pods deleted.
async fn cancel_on_signal(cancel: CancellationToken, leftovers: String, last_words: LastWords) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot listen for signals: Ctrl-C will end the run without a report");
        return;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    cancel.cancel();
    // The run now cleans up (probe pods, uncordon, the lock), each step with its own
    // deadline. Asked again, stop at once: the operator has decided.
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("postflight: interrupted again: cleanup skipped. {leftovers}");
    // The reports are always written: with what is known, marked interrupted.
    match last_words
        .reports
        .write(&last_words.files, last_words.title)
    {
        Ok(written) => written
            .iter()
            .for_each(|line| eprintln!("postflight: the interrupted run's {line}")),
        Err(error) => eprintln!("postflight: writing the reports: {error}"),
    }
    std::process::exit(130);
}

/// What a run cut short by a second signal still writes: the reports as they stand.
struct LastWords {
    files: report::ReportFiles,
    reports: std::sync::Arc<report::ReportsSoFar>,
    title: &'static str,
}

/// The store of reports so far that a run's `Progress` fills, and what to write from it.
fn last_words(
    outputs: &Outputs,
    title: &'static str,
) -> (std::sync::Arc<report::ReportsSoFar>, LastWords) {
    let reports = std::sync::Arc::<report::ReportsSoFar>::default();
    let words = LastWords {
        files: outputs.files.clone(),
        reports: reports.clone(),
        title,
    };
    (reports, words)
}

/// What a run cut short during its cleanup may leave, with the commands that undo it.
fn leftovers(inventory: &Inventory, node: Option<&str>) -> String {
    let probe = &inventory.probe.namespace;
    let lock = &inventory.lock;
    let cordon = node
        .map(|n| format!(" a cordon from --drain (`kubectl uncordon {n}`);"))
        .unwrap_or_default();
    // Their process ends by itself within the hour, but a privileged pod is worth a
    // command now.
    let shells = if inventory.uses_node_shell() {
        format!(
            " node shell pods (`kubectl -n {} delete pod -l app.kubernetes.io/name={}`);",
            inventory.node_shell.namespace,
            postflight::node_shell::SHELL_POD_APP
        )
    } else {
        String::new()
    };
    format!(
        "Possibly left: probe pods (`kubectl -n {probe} delete pod -l app.kubernetes.io/managed-by=postflight`);{shells}{cordon} the reboot lock {}/{} (it expires {} after its last renewal)",
        lock.namespace,
        lock.name,
        humantime::format_duration(lock.duration)
    )
}
