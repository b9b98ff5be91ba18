//! What the checks read on the node itself over SSH: the tmpfiles.d file, the run
//! directory, the routes and BIRD's BGP sessions.

use super::*;

/// `tmpfiles_config_present` and `run_dir_permissions`, with what the diagnosis needs.
pub struct HostResults {
    pub tmpfiles: CheckResult,
    pub run_dir: CheckResult,
    /// Some(None): the file does not exist; None: it could not be read.
    pub tmpfiles_content: Option<Option<String>>,
    pub run_dir_stat: Option<RunDirStat>,
    pub run_dir_missing: bool,
}

/// What `cat`/`stat` say (in the C locale) of a path that does not exist.
const NO_SUCH_FILE: &str = "No such file or directory";

/// Runs a command, retrying only while the node refuses or drops the TCP connection
/// (sshd still starting; behind a bastion, the bastion cannot reach it yet), up to
/// `patience`. A host key or authentication failure is final at once: retrying cannot
/// fix it, and must not hide it.
async fn run_when_reachable(
    transport: &dyn Transport,
    command: &ShellCommand,
    patience: Duration,
) -> Result<crate::host::CommandOutput, HostError> {
    let deadline = Instant::now() + patience;
    loop {
        match transport.run(command).await {
            Err(error) if error.unreachable() && Instant::now() + SSH_RETRY_PAUSE < deadline => {
                tokio::time::sleep(SSH_RETRY_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// The run directory's mode and owner, followed through a symlink (/var/run → /run).
fn run_dir_stat_command(run_dir: &str) -> ShellCommand {
    ShellCommand::new("env")
        .arg("LC_ALL=C")
        .arg("stat")
        .arg("-L")
        .arg("-c")
        .arg("%a %u %g")
        .arg("--")
        .arg(run_dir)
}

/// A file's content, with the C locale's error message when it is missing.
fn cat_command(file: &str) -> ShellCommand {
    ShellCommand::new("env")
        .arg("LC_ALL=C")
        .arg("cat")
        .arg("--")
        .arg(file)
}

/// Every command `check_host` runs on the node, in its order: for a caller that sends
/// them in one round trip first (see `crate::host::Prefetched`).
pub fn host_check_commands(calico: &CalicoExpectations) -> Vec<ShellCommand> {
    let tmpfiles = match &calico.tmpfiles {
        Some(declared) => cat_command(&declared.file),
        None => merged_tmpfiles_command(),
    };
    vec![tmpfiles, run_dir_stat_command(&calico.run_dir)]
}

/// Reads the tmpfiles.d file and the run directory's mode and owner on the node. A node
/// whose sshd is still starting is given `ssh_patience` to accept the connection.
pub async fn check_host(
    transport: &dyn Transport,
    node: &str,
    calico: &CalicoExpectations,
    ssh_patience: Duration,
) -> HostResults {
    let (tmpfiles, tmpfiles_content) = match &calico.tmpfiles {
        Some(declared) => {
            declared_tmpfiles(transport, node, declared, &calico.run_dir, ssh_patience).await
        }
        None => node_tmpfiles(transport, node, calico, ssh_patience).await,
    };
    let started = Instant::now();
    let stat = run_dir_stat_command(&calico.run_dir);
    let (run_dir, run_dir_stat, run_dir_missing) =
        match run_when_reachable(transport, &stat, ssh_patience).await {
            Ok(output) if output.success() => match RunDirStat::parse(&output.stdout) {
                Some(observed) => {
                    let judgement = judge_run_dir(Some(&observed), calico);
                    (
                        check_result(CheckName::RunDirPermissions, node, judgement, started),
                        Some(observed),
                        false,
                    )
                }
                None => {
                    let message = format!(
                        "`stat` printed {:?}, not `mode uid gid`",
                        output.stdout.trim()
                    );
                    (
                        CheckResult::error(
                            CheckName::RunDirPermissions,
                            node,
                            ErrorKind::Error,
                            message,
                            started.elapsed(),
                        ),
                        None,
                        false,
                    )
                }
            },
            Ok(output) if output.stderr.contains(NO_SUCH_FILE) => (
                check_result(
                    CheckName::RunDirPermissions,
                    node,
                    judge_run_dir(None, calico),
                    started,
                ),
                None,
                true,
            ),
            Ok(output) => (
                command_error(CheckName::RunDirPermissions, node, &stat, &output, started),
                None,
                false,
            ),
            Err(error) => (
                host_error(CheckName::RunDirPermissions, node, &error, started),
                None,
                false,
            ),
        };
    HostResults {
        tmpfiles,
        run_dir,
        tmpfiles_content,
        run_dir_stat,
        run_dir_missing,
    }
}

/// `tmpfiles_config_present` where the inventory declares the entry: its file must hold it.
async fn declared_tmpfiles(
    transport: &dyn Transport,
    node: &str,
    declared: &TmpfilesDeclaration,
    run_dir: &str,
    ssh_patience: Duration,
) -> (CheckResult, Option<Option<String>>) {
    let started = Instant::now();
    let cat = cat_command(&declared.file);
    match run_when_reachable(transport, &cat, ssh_patience).await {
        Ok(output) if output.success() => {
            let judgement = judge_tmpfiles(Some(&output.stdout), declared, run_dir);
            (
                check_result(CheckName::TmpfilesConfigPresent, node, judgement, started),
                Some(Some(output.stdout)),
            )
        }
        Ok(output) if output.stderr.contains(NO_SUCH_FILE) => (
            check_result(
                CheckName::TmpfilesConfigPresent,
                node,
                judge_tmpfiles(None, declared, run_dir),
                started,
            ),
            Some(None),
        ),
        Ok(output) => (
            command_error(
                CheckName::TmpfilesConfigPresent,
                node,
                &cat,
                &output,
                started,
            ),
            None,
        ),
        Err(error) => (
            host_error(CheckName::TmpfilesConfigPresent, node, &error, started),
            None,
        ),
    }
}

/// `tmpfiles_config_present` where nobody declared an entry: the node's merged tmpfiles.d
/// configuration, judged where it has an entry for the run directory. The merged text is
/// kept: drift's next-boot check and the diagnosis read it too.
async fn node_tmpfiles(
    transport: &dyn Transport,
    node: &str,
    calico: &CalicoExpectations,
    ssh_patience: Duration,
) -> (CheckResult, Option<Option<String>>) {
    let started = Instant::now();
    let command = merged_tmpfiles_command();
    match run_when_reachable(transport, &command, ssh_patience).await {
        Ok(output) if output.success() => (
            check_result(
                CheckName::TmpfilesConfigPresent,
                node,
                judge_node_tmpfiles(&output.stdout, calico),
                started,
            ),
            Some(Some(output.stdout)),
        ),
        Ok(output) => (
            command_error(
                CheckName::TmpfilesConfigPresent,
                node,
                &command,
                &output,
                started,
            ),
            None,
        ),
        Err(error) => (
            host_error(CheckName::TmpfilesConfigPresent, node, &error, started),
            None,
        ),
    }
}

/// systemd-tmpfiles' own view of every tmpfiles.d file, in the order it applies them.
pub(super) fn merged_tmpfiles_command() -> ShellCommand {
    ShellCommand::new("env")
        .arg("LC_ALL=C")
        .arg("systemd-tmpfiles")
        .arg("--cat-config")
}

pub(super) fn command_error(
    name: CheckName,
    node: &str,
    command: &ShellCommand,
    output: &crate::host::CommandOutput,
    started: Instant,
) -> CheckResult {
    let message = format!(
        "`{}` exited {} on the node: {}",
        command.render(None),
        output.exit_status,
        output.stderr.trim()
    );
    CheckResult::error(name, node, ErrorKind::Error, message, started.elapsed())
}

pub(super) fn host_error(
    name: CheckName,
    node: &str,
    error: &HostError,
    started: Instant,
) -> CheckResult {
    CheckResult::unobserved(name, node, &Unobserved::from(error), started.elapsed())
}

/// The node's routes and BIRD's view of its BGP sessions, read over SSH.
pub struct NodeNetworkState {
    pub routes: Result<String, Unobserved>,
    /// Ok(None): BIRD's control socket does not answer (BIRD is not running).
    pub bgp: Result<Option<String>, Unobserved>,
    pub socket: String,
}

impl NodeNetworkState {
    pub(super) fn bgp_output(&self) -> Option<&str> {
        match &self.bgp {
            Ok(Some(output)) => Some(output),
            _ => None,
        }
    }

    pub fn as_details(&self) -> Vec<String> {
        let routes = match &self.routes {
            Ok(routes) => format!("ip -4 route on the node:\n{}", routes.trim_end()),
            Err(error) => format!("ip -4 route on the node: unavailable ({error})"),
        };
        let bgp = match &self.bgp {
            Ok(Some(output)) => format!("BGP (birdcl show protocols):\n{}", output.trim_end()),
            Ok(None) => format!("BGP: BIRD does not answer on {}", self.socket),
            Err(error) => format!("BGP: unavailable ({error})"),
        };
        vec![routes, bgp]
    }
}

/// Reads `ip -4 route` and `birdcl show protocols` (birdc where birdcl is missing) on
/// the node. BIRD's socket is Calico's: `bird.ctl` in the run directory.
/// What `node_network_state` reads, for a caller that fetches it in one round trip
/// with other commands: both BIRD clients, since which one the node has is not known.
pub(super) fn network_commands(calico: &CalicoExpectations) -> Vec<ShellCommand> {
    let mut commands = vec![routes_command()];
    commands.extend(BIRD_CLIENTS.map(|client| bird_protocols_command(client, calico)));
    commands
}

const BIRD_CLIENTS: [&str; 2] = ["birdcl", "birdc"];

fn routes_command() -> ShellCommand {
    ShellCommand::new("ip").arg("-4").arg("route")
}

fn bird_socket(calico: &CalicoExpectations) -> String {
    format!("{}/bird.ctl", calico.run_dir.trim_end_matches('/'))
}

fn bird_protocols_command(client: &str, calico: &CalicoExpectations) -> ShellCommand {
    ShellCommand::new(client)
        .arg("-s")
        .arg(bird_socket(calico))
        .arg("show")
        .arg("protocols")
}

pub async fn node_network_state(
    transport: &dyn Transport,
    calico: &CalicoExpectations,
) -> NodeNetworkState {
    let routes = match transport.run(&routes_command()).await {
        Ok(output) if output.success() => Ok(output.stdout),
        Ok(output) => Err(Unobserved::new(
            ErrorKind::Error,
            format!("exit {}: {}", output.exit_status, output.stderr.trim()),
        )),
        Err(error) => Err(Unobserved::from(&error)),
    };
    let mut bgp = Err(Unobserved::new(
        ErrorKind::Error,
        "neither birdcl nor birdc is installed on the node",
    ));
    for client in BIRD_CLIENTS {
        bgp = match transport.run(&bird_protocols_command(client, calico)).await {
            Ok(output) if output.success() => Ok(Some(output.stdout)),
            // 127: the shell found no such program; try the other client.
            Ok(output) if output.exit_status == 127 => continue,
            Ok(output)
                if format!("{}{}", output.stdout, output.stderr).contains("Unable to connect") =>
            {
                Ok(None)
            }
            Ok(output) => Err(Unobserved::new(
                ErrorKind::Error,
                format!(
                    "{client} exit {}: {}",
                    output.exit_status,
                    output.stderr.trim()
                ),
            )),
            Err(error) => Err(Unobserved::from(&error)),
        };
        break;
    }
    NodeNetworkState {
        routes,
        bgp,
        socket: bird_socket(calico),
    }
}

/// `bgp_sessions_established` from the node's network state.
pub fn check_bgp(state: &NodeNetworkState, node: &str, started: Instant) -> CheckResult {
    match &state.bgp {
        Ok(output) => {
            let mut result = check_result(
                CheckName::BgpSessionsEstablished,
                node,
                judge_bgp(output.as_deref(), &state.socket),
                started,
            );
            result.details.extend(state.as_details());
            result
        }
        Err(error) => CheckResult::unobserved(
            CheckName::BgpSessionsEstablished,
            node,
            error,
            started.elapsed(),
        ),
    }
}

/// The node's BGP peers as the cluster knows them (each other node of the inventory, at
/// its InternalIP), with how to reach each, so that a BGP diagnosis can name the peer at
/// fault and give that peer's fix. Empty when the nodes cannot be read: the diagnosis
/// then speaks of the node alone.
pub(super) async fn bgp_peers(
    cluster: &Cluster,
    inventory: &Inventory,
    node: &str,
) -> Vec<diagnose::BgpPeer> {
    let Ok(nodes) = cluster.nodes().await else {
        return Vec::new();
    };
    nodes
        .iter()
        .filter_map(|peer| {
            let name = peer.metadata.name.as_deref()?;
            let entry = inventory.node(name).filter(|_| name != node)?;
            let address = peer
                .status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .find(|a| a.type_ == "InternalIP")?
                .address
                .parse()
                .ok()?;
            Some(diagnose::BgpPeer {
                node: name.to_string(),
                address,
                shell: super::fix_shell(inventory, entry),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{connect_refused, output, FakeTransport};

    const CAT: &str = "env LC_ALL=C cat";
    const STAT: &str = "env LC_ALL=C stat";
    const NODE: &str = "k8s-worker-03";

    fn declared() -> CalicoExpectations {
        CalicoExpectations::hardened_site()
    }

    #[rstest::rstest]
    #[case::declared(declared())]
    #[case::merged(CalicoExpectations { tmpfiles: None, ..declared() })]
    #[tokio::test]
    async fn what_the_host_check_reads_can_be_sent_in_one_batch(
        #[case] calico: CalicoExpectations,
    ) {
        let transport = FakeTransport::default()
            .always(CAT, Ok(output("d /run/calico 0755 999 999 -\n", "", 0)))
            .always(
                "env LC_ALL=C systemd-tmpfiles",
                Ok(output("d /run/calico 0755 999 999 -\n", "", 0)),
            )
            .always(STAT, Ok(output("755 999 999\n", "", 0)));
        let batch = crate::host::Prefetched::fetch(&transport, host_check_commands(&calico)).await;
        let sent = transport.ran.lock().unwrap().len();
        let host = check_host(&batch, NODE, &calico, Duration::ZERO).await;
        assert!(host.run_dir.passed(), "{:?}", host.run_dir);
        assert!(
            host.tmpfiles_content.is_some(),
            "the tmpfiles.d text was read"
        );
        assert_eq!(
            transport.ran.lock().unwrap().len(),
            sent,
            "nothing read beyond the batch: {:?}",
            transport.ran.lock().unwrap()
        );
    }

    #[tokio::test]
    async fn a_node_whose_sshd_is_still_starting_is_given_its_patience() {
        let transport = FakeTransport::default()
            .on(CAT, Err(connect_refused(NODE)))
            .on(CAT, Err(connect_refused(NODE)))
            .on(CAT, Ok(output("d /run/calico 0755 999 999 -\n", "", 0)))
            .always(STAT, Ok(output("755 999 999\n", "", 0)));
        let host = check_host(&transport, NODE, &declared(), Duration::from_secs(10)).await;
        assert!(host.tmpfiles.passed(), "{:?}", host.tmpfiles);
        assert!(host.run_dir.passed(), "{:?}", host.run_dir);
        assert_eq!(
            transport.ran.lock().unwrap().len(),
            4,
            "two refusals, then cat and stat"
        );
    }

    #[tokio::test]
    async fn a_bastion_that_cannot_reach_the_node_yet_is_asked_again() {
        // After a reboot the bastion is up before the node's sshd is.
        let not_yet = || HostError::Tunnel {
            node: NODE.into(),
            bastion: "root@198.18.0.10:22".into(),
            address: "198.18.0.13:22".into(),
            reason: "Channel open failure: connect failed".into(),
        };
        let transport = FakeTransport::default()
            .on(CAT, Err(not_yet()))
            .on(CAT, Ok(output("d /run/calico 0755 999 999 -\n", "", 0)))
            .always(STAT, Ok(output("755 999 999\n", "", 0)));
        let host = check_host(&transport, NODE, &declared(), Duration::from_secs(10)).await;
        assert!(host.tmpfiles.passed(), "{:?}", host.tmpfiles);
        assert_eq!(
            transport.ran.lock().unwrap().len(),
            3,
            "one refusal, then cat and stat"
        );
    }

    #[tokio::test]
    async fn a_host_key_mismatch_is_final_at_once_and_an_ssh_error() {
        let mismatch = || HostError::HostKeyMismatch {
            node: NODE.into(),
            address: "198.18.0.13:22".into(),
            known_hosts: "ssh/known_hosts".into(),
        };
        let transport = FakeTransport::default()
            .always(CAT, Err(mismatch()))
            .always(STAT, Err(mismatch()));
        let host = check_host(&transport, NODE, &declared(), Duration::from_secs(30)).await;
        for result in [&host.tmpfiles, &host.run_dir] {
            assert!(
                matches!(&result.verdict, Verdict::Error(m) if m.contains("HOST KEY MISMATCH")),
                "{result:?}"
            );
            assert_eq!(result.error_kind, Some(ErrorKind::Ssh));
        }
        assert_eq!(transport.ran.lock().unwrap().len(), 2, "never retried");
    }

    #[tokio::test]
    async fn a_declared_entry_that_is_missing_fails_and_feeds_the_diagnosis() {
        let transport = FakeTransport::default()
            .always(
                CAT,
                Ok(output(
                    "",
                    "cat: /etc/tmpfiles.d/calico.conf: No such file or directory\n",
                    1,
                )),
            )
            .always(STAT, Ok(output("700 0 0\n", "", 0)));
        let host = check_host(&transport, NODE, &declared(), Duration::ZERO).await;
        assert!(
            matches!(&host.tmpfiles.verdict, Verdict::Failed(m) if m.contains("does not exist")),
            "{:?}",
            host.tmpfiles
        );
        assert!(matches!(host.run_dir.verdict, Verdict::Failed(_)));
        assert_eq!(host.tmpfiles_content, Some(None));
        assert_eq!(host.run_dir_stat, RunDirStat::parse("700 0 0"));
    }

    #[tokio::test]
    async fn a_command_that_fails_on_the_node_is_an_error_naming_it() {
        let transport = FakeTransport::default()
            .always(CAT, Ok(output("", "cat: Permission denied\n", 1)))
            .always(STAT, Ok(output("garbage", "", 0)));
        let host = check_host(&transport, NODE, &declared(), Duration::ZERO).await;
        assert!(
            matches!(&host.tmpfiles.verdict, Verdict::Error(m) if m.contains("exited 1") && m.contains("Permission denied")),
            "{:?}",
            host.tmpfiles
        );
        assert!(
            matches!(&host.run_dir.verdict, Verdict::Error(m) if m.contains("not `mode uid gid`")),
            "{:?}",
            host.run_dir
        );
    }
}
