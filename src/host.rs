//! Running commands on nodes. A [`Transport`] runs one shell command on one node and
//! returns its output and exit status; [`SshTransport`] does it over SSH with libssh2,
//! verifying the host key against known_hosts every time (an unknown or changed key is
//! refused before anything runs). Every word of a command is shell-quoted by
//! [`ShellCommand`], so a hostile path or node name cannot inject.
//!
//! A node behind a bastion (`ssh.jump`) is reached as `ssh -J` does: an SSH session to
//! the bastion, whose host key is verified the same way, a `direct-tcpip` channel from
//! it to the node, and the node's own SSH session inside that channel.

use crate::inventory::{Become, JumpHost, SshTarget};
use nix::poll::{PollFd, PollFlags};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, thiserror::Error)]
pub enum HostError {
    #[error("{node}: cannot connect to {address}: {reason}")]
    Connect {
        node: String,
        address: String,
        reason: String,
    },
    #[error("{node}: host key of {address} is not in {known_hosts}: refusing to connect (add the node's real key first)")]
    UnknownHostKey {
        node: String,
        address: String,
        known_hosts: String,
    },
    #[error("{node}: HOST KEY MISMATCH for {address} (known_hosts: {known_hosts}): the node's key changed or someone is impersonating it; refusing to connect")]
    HostKeyMismatch {
        node: String,
        address: String,
        known_hosts: String,
    },
    #[error("{node}: cannot read known_hosts {known_hosts}: {reason}")]
    KnownHosts {
        node: String,
        known_hosts: String,
        reason: String,
    },
    #[error("{node}: SSH authentication as {user} failed: {reason}")]
    Authentication {
        node: String,
        user: String,
        reason: String,
    },
    #[error("{node}: `{command}` failed over SSH: {reason}")]
    Session {
        node: String,
        command: String,
        reason: String,
    },
    #[error("{node}: node shell: {action}: {reason}")]
    NodeShell {
        node: String,
        action: String,
        reason: String,
        /// Whether the command was never sent: the shell pod could not be started or
        /// entered.
        before_sending: bool,
    },
    #[error("{node}: `{command}` could not be run here: {reason}")]
    Local {
        node: String,
        command: String,
        reason: String,
    },
    #[error("{node}: `{command}` did not finish within {timeout:?}")]
    Timeout {
        node: String,
        command: String,
        timeout: Duration,
    },
    #[error("{node}: cannot connect to the bastion {bastion}: {reason}")]
    BastionConnect {
        node: String,
        bastion: String,
        reason: String,
    },
    #[error("{node}: host key of the bastion {bastion} is not in {known_hosts}: refusing to connect (add the bastion's real key first)")]
    BastionUnknownHostKey {
        node: String,
        bastion: String,
        known_hosts: String,
    },
    #[error("{node}: HOST KEY MISMATCH for the bastion {bastion} (known_hosts: {known_hosts}): the bastion's key changed or someone is impersonating it; refusing to connect")]
    BastionHostKeyMismatch {
        node: String,
        bastion: String,
        known_hosts: String,
    },
    #[error("{node}: SSH authentication as {user} on the bastion {bastion} failed: {reason}")]
    BastionAuthentication {
        node: String,
        bastion: String,
        user: String,
        reason: String,
    },
    #[error("{node}: the bastion {bastion} cannot reach {address}: {reason}")]
    Tunnel {
        node: String,
        bastion: String,
        address: String,
        reason: String,
    },
}

impl HostError {
    /// What kept the node from being reached or used, for the reports.
    pub fn kind(&self) -> crate::checks::ErrorKind {
        match self {
            HostError::Timeout { .. } => crate::checks::ErrorKind::Timeout,
            HostError::NodeShell { .. } => crate::checks::ErrorKind::NodeShell,
            HostError::Local { .. } => crate::checks::ErrorKind::Error,
            _ => crate::checks::ErrorKind::Ssh,
        }
    }

    /// Whether the error happened before any command reached the node: the connection,
    /// the host key or the login failed, so nothing ran there. A session that broke
    /// after the command was sent leaves it unknown.
    pub fn before_sending(&self) -> bool {
        if let HostError::NodeShell { before_sending, .. } = self {
            return *before_sending;
        }
        matches!(
            self,
            HostError::Connect { .. }
                | HostError::UnknownHostKey { .. }
                | HostError::HostKeyMismatch { .. }
                | HostError::KnownHosts { .. }
                | HostError::Authentication { .. }
                | HostError::Local { .. }
                | HostError::BastionConnect { .. }
                | HostError::BastionUnknownHostKey { .. }
                | HostError::BastionHostKeyMismatch { .. }
                | HostError::BastionAuthentication { .. }
                | HostError::Tunnel { .. }
        )
    }

    /// Whether the node, or its bastion, refused or dropped the connection: what a
    /// machine whose sshd is still starting does, so trying again may succeed. A host
    /// key or login failure is not: retrying cannot fix it.
    pub fn unreachable(&self) -> bool {
        matches!(
            self,
            HostError::Connect { .. } | HostError::BastionConnect { .. } | HostError::Tunnel { .. }
        )
    }
}

/// Runs an operator's command line on this machine, for a node that another system
/// restarts (`docker restart NODE` for kind), within `timeout` from start to exit. Its
/// output is capped as it is read ([`crate::hostile::MAX_STREAM_BYTES`] per stream). It
/// runs in a process group of its own, which is killed whole if it overruns or the run
/// is cancelled: a shell's children cannot keep it alive.
///
/// # Errors
/// It could not be started, or did not finish in time.
pub async fn run_local(
    node: &str,
    line: &str,
    timeout: Duration,
) -> Result<CommandOutput, HostError> {
    let local_error = |reason: String| HostError::Local {
        node: node.to_string(),
        command: line.to_string(),
        reason,
    };
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(line)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| local_error(e.to_string()))?;
    let mut group = KillGroupOnDrop(child.id());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let finished = async {
        let limit = crate::hostile::MAX_STREAM_BYTES;
        let (stdout, stderr, status) = tokio::join!(
            read_capped(stdout, limit),
            read_capped(stderr, limit),
            child.wait()
        );
        let status = status?;
        Ok::<_, std::io::Error>(CommandOutput {
            stdout: stdout?.into_text(),
            stderr: stderr?.into_text(),
            exit_status: status.code().unwrap_or(-1),
        })
    };
    match tokio::time::timeout(timeout, finished).await {
        Ok(Ok(output)) => {
            // It ended by itself: what it started to outlive it is the operator's.
            group.0 = None;
            Ok(output)
        }
        Ok(Err(error)) => Err(local_error(error.to_string())),
        Err(_) => Err(HostError::Timeout {
            node: node.to_string(),
            command: line.to_string(),
            timeout,
        }),
    }
}

/// A local command's process group, killed (SIGKILL, every process in it) when this is
/// dropped: at its deadline, or when the future running it is dropped (Ctrl-C).
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(group) = self.0.and_then(|id| i32::try_from(id).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(group),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Reads a stream to its end, keeping at most `limit` bytes of it (the rest is counted,
/// not kept). A stream that is not there reads as empty.
///
/// # Errors
/// Reading failed.
pub async fn read_capped<R: tokio::io::AsyncRead + Unpin>(
    reader: Option<R>,
    limit: usize,
) -> std::io::Result<crate::hostile::CappedOutput> {
    use tokio::io::AsyncReadExt;
    let mut output = crate::hostile::CappedOutput::new(limit);
    let Some(mut reader) = reader else {
        return Ok(output);
    };
    let mut buffer = vec![0; 32 * 1024];
    loop {
        match reader.read(&mut buffer).await? {
            0 => return Ok(output),
            read => output.push(&buffer[..read]),
        }
    }
}

/// A command line whose every word is quoted for a POSIX shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommand {
    words: Vec<String>,
    /// Trusted shell text from the inventory (the reboot command), run as written.
    raw: Option<String>,
}

impl ShellCommand {
    pub fn new<S: Into<String>>(program: S) -> Self {
        ShellCommand {
            words: vec![program.into()],
            raw: None,
        }
    }
    pub fn arg<S: Into<String>>(mut self, word: S) -> Self {
        self.words.push(word.into());
        self
    }
    /// A command written by the operator in the inventory, e.g. the reboot command.
    pub fn operator_text(text: &str) -> Self {
        ShellCommand {
            words: Vec::new(),
            raw: Some(text.to_string()),
        }
    }
    /// The command line as the remote shell will read it.
    pub fn render(&self, become_method: Option<Become>) -> String {
        let line = match &self.raw {
            Some(raw) => raw.clone(),
            None => self
                .words
                .iter()
                .map(|w| shell_escape::unix::escape(w.into()).into_owned())
                .collect::<Vec<_>>()
                .join(" "),
        };
        match become_method {
            Some(Become::Sudo) => format!(
                "sudo -n -- sh -c {}",
                shell_escape::unix::escape(line.into())
            ),
            None => line,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_status: i32,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.exit_status == 0
    }
}

/// What became of a command that may take the machine down with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebootOutcome {
    /// The connection dropped or the command returned 0: the machine is going down.
    Issued,
    /// The command ran and refused (non-zero exit): the machine is not rebooting.
    Refused(CommandOutput),
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// 64 bits nobody outside this process can predict: std's hasher keys come from the
/// operating system's randomness, and the clock makes each call differ.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

/// Several commands sent to a node as one script, for one round trip instead of one per
/// command. Each command's output, errors and exit status come back apart, between
/// lines that carry a boundary its output cannot hold: random and new for every batch,
/// so not even a file written to forge it can know it in advance.
pub struct CommandBatch {
    boundary: String,
    count: usize,
}

impl CommandBatch {
    /// The batch and the script that runs it (POSIX sh; each command's stderr is kept
    /// apart from its stdout with file descriptors, so nothing is written on the node).
    pub fn new(commands: &[ShellCommand]) -> (Self, ShellCommand) {
        let boundary = format!("postflight-{:016x}{:016x}", random_u64(), random_u64());
        let mut script = String::new();
        for (index, command) in commands.iter().enumerate() {
            let marker = |what: &str| format!("'{boundary} {index} {what}'");
            script.push_str(&format!(
                "printf '%s\\n' {out}\n\
                 {{ err=$( {{ {line}\n}} 2>&1 1>&3 3>&- ); }} 3>&1; status=$?\n\
                 printf '\\n%s\\n%s\\n%s %s\\n' {err} \"$err\" {status} \"$status\"\n",
                out = marker("out"),
                err = marker("err"),
                status = marker("status"),
                line = command.render(None),
            ));
        }
        let batch = CommandBatch {
            boundary,
            count: commands.len(),
        };
        // Under sh whatever the login shell is: the script is POSIX, not fish or csh.
        (batch, ShellCommand::new("sh").arg("-c").arg(script))
    }

    /// Each command's output from the script's, in order.
    ///
    /// # Errors
    /// The script's output is not what it prints (it did not run to its end, or was not
    /// run by a POSIX shell): what is missing.
    pub fn split(&self, output: &CommandOutput) -> Result<Vec<CommandOutput>, String> {
        let mut rest = output.stdout.as_str();
        let mut outputs = Vec::with_capacity(self.count);
        for index in 0..self.count {
            let marker = |what: &str| format!("{} {index} {what}", self.boundary);
            let missing = |what: &str| {
                format!(
                    "the batch's output stops before command {} of {}'s {what} (exit {}: {})",
                    index + 1,
                    self.count,
                    output.exit_status,
                    output.stderr.trim()
                )
            };
            let start = format!("{}\n", marker("out"));
            rest = rest
                .strip_prefix(start.as_str())
                .ok_or_else(|| missing("output"))?;
            let err_marker = format!("\n{}\n", marker("err"));
            let (stdout, after) = rest
                .split_once(err_marker.as_str())
                .ok_or_else(|| missing("errors"))?;
            let status_marker = format!("\n{} ", marker("status"));
            let (stderr, after) = after
                .split_once(status_marker.as_str())
                .ok_or_else(|| missing("exit status"))?;
            let (status, after) = after
                .split_once('\n')
                .ok_or_else(|| missing("exit status"))?;
            let exit_status = status
                .trim()
                .parse::<i32>()
                .map_err(|_| missing("exit status"))?;
            outputs.push(CommandOutput {
                stdout: stdout.to_string(),
                stderr: stderr.to_string(),
                exit_status,
            });
            rest = after;
        }
        Ok(outputs)
    }
}

/// Runs `commands` as one batch through `run`: one round trip to the node. What keeps
/// the batch from running at all is each command's error.
pub async fn run_batched(
    transport: &dyn Transport,
    node: &str,
    commands: &[ShellCommand],
) -> Vec<Result<CommandOutput, HostError>> {
    let (batch, script) = CommandBatch::new(commands);
    match transport
        .run(&script)
        .await
        .map(|output| batch.split(&output))
    {
        Ok(Ok(outputs)) => outputs.into_iter().map(Ok).collect(),
        Ok(Err(why)) => commands
            .iter()
            .map(|command| {
                Err(HostError::Session {
                    node: node.to_string(),
                    command: command.render(None),
                    reason: why.clone(),
                })
            })
            .collect(),
        Err(error) => commands.iter().map(|_| Err(error.clone())).collect(),
    }
}

/// A transport that has already run some commands, in one round trip: each of them is
/// answered once from what came back; anything else goes to the node as usual.
pub struct Prefetched<'a> {
    inner: &'a dyn Transport,
    answers: std::sync::Mutex<Vec<(ShellCommand, Result<CommandOutput, HostError>)>>,
}

impl<'a> Prefetched<'a> {
    pub async fn fetch(inner: &'a dyn Transport, commands: Vec<ShellCommand>) -> Self {
        let outputs = inner.run_all(&commands).await;
        Prefetched {
            inner,
            answers: std::sync::Mutex::new(commands.into_iter().zip(outputs).collect()),
        }
    }

    fn take(&self, command: &ShellCommand) -> Option<Result<CommandOutput, HostError>> {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        let position = answers.iter().position(|(asked, _)| asked == command)?;
        Some(answers.remove(position).1)
    }
}

impl Transport for Prefetched<'_> {
    fn run<'b>(
        &'b self,
        command: &'b ShellCommand,
    ) -> BoxFuture<'b, Result<CommandOutput, HostError>> {
        match self.take(command) {
            Some(answer) => Box::pin(std::future::ready(answer)),
            None => self.inner.run(command),
        }
    }

    fn reboot<'b>(
        &'b self,
        command: &'b ShellCommand,
    ) -> BoxFuture<'b, Result<RebootOutcome, HostError>> {
        self.inner.reboot(command)
    }

    fn node_restarted(&self) -> BoxFuture<'_, ()> {
        self.inner.node_restarted()
    }
}

/// One way to run commands on a node: SSH, or a node-shell pod through the API.
pub trait Transport: Send + Sync {
    /// Runs a command and waits for it to finish.
    fn run<'a>(
        &'a self,
        command: &'a ShellCommand,
    ) -> BoxFuture<'a, Result<CommandOutput, HostError>>;
    /// Runs several commands, in one round trip where the transport can (SSH and node
    /// shells send them as one script), each with its own output.
    fn run_all<'a>(
        &'a self,
        commands: &'a [ShellCommand],
    ) -> BoxFuture<'a, Vec<Result<CommandOutput, HostError>>> {
        Box::pin(async move {
            let mut outputs = Vec::with_capacity(commands.len());
            for command in commands {
                outputs.push(self.run(command).await);
            }
            outputs
        })
    }
    /// Runs a command that reboots the node: the connection dropping is success.
    fn reboot<'a>(
        &'a self,
        command: &'a ShellCommand,
    ) -> BoxFuture<'a, Result<RebootOutcome, HostError>>;
    /// The node was restarted by something else than this transport (a local command):
    /// whatever it keeps on the node is gone, and the next command starts afresh.
    fn node_restarted(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// SSH to one node. Its clones share one session: a run's commands to a node go over
/// one connection, each in a channel of its own, instead of a handshake and key
/// authentication per command.
///
/// Each command has one deadline, `timeout` from when it is asked for to its exit status,
/// whatever it prints meanwhile: a command that keeps printing cannot keep a run (and the
/// reboot lock it holds) forever. Its output is capped as it is read
/// ([`crate::hostile::MAX_STREAM_BYTES`] per stream). At the deadline its channel is
/// closed and its session disconnected, and the blocking worker returns.
#[derive(Clone)]
pub struct SshTransport {
    target: SshTarget,
    timeout: Duration,
    /// The open session, kept between commands; none until the first, and none again
    /// after anything went wrong on it (a reboot, a timeout), so the next reconnects.
    /// Behind a bastion, the bastion's session lives in the thread that carries this
    /// one's stream, and ends when this one is dropped.
    session: std::sync::Arc<std::sync::Mutex<Option<Connection>>>,
}

/// An SSH session and a second handle on the socket it runs on, to wait on while the
/// session does not block.
struct Connection {
    session: ssh2::Session,
    socket: OwnedFd,
}

/// What a host key check against known_hosts found.
enum HostKey {
    Known,
    Unknown,
    Changed,
}

/// How long closing a channel and disconnecting may each take once a deadline has
/// passed: a node that stopped answering is not waited for.
const HANG_UP_GRACE_MS: u32 = 500;
/// How much longer than its deadline the run waits for an SSH worker before it answers
/// for it: the worker's own hang-up, and a margin. Only a libssh2 call no timeout
/// reaches (a stuck ssh-agent) ever needs it.
const WORKER_GRACE: Duration = Duration::from_secs(2);
/// The longest a command's reader sleeps without looking again: only a safety net, since
/// the socket wakes it.
const DRAIN_WAIT_MAX: Duration = Duration::from_millis(100);

/// What is left of `deadline`, as the timeout of the session's next blocking call; none
/// when it has passed. Never 0, which libssh2 reads as "no timeout".
fn arm(session: &ssh2::Session, deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return None;
    }
    session.set_timeout(left.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
    Some(left)
}

/// libssh2's LIBSSH2_ERROR_TIMEOUT: a blocking call's timeout ran out.
const LIBSSH2_ERROR_TIMEOUT: i32 = -9;

fn timed_out(error: &ssh2::Error) -> bool {
    error.code() == ssh2::ErrorCode::Session(LIBSSH2_ERROR_TIMEOUT)
}

/// Ends a command whose deadline passed: its channel is closed and the session
/// disconnected, each with a short grace, so that the node's sshd ends the command, then
/// both are freed (the socket with them).
fn hang_up(connection: Connection, mut channel: ssh2::Channel) {
    let session = &connection.session;
    session.set_blocking(true);
    session.set_timeout(HANG_UP_GRACE_MS);
    let _ = channel.close();
    let _ = session.disconnect(None, "postflight: the command's deadline passed", None);
    drop(channel);
    drop(connection);
}

impl SshTransport {
    pub fn new(target: SshTarget, timeout: Duration) -> Self {
        SshTransport {
            target,
            timeout,
            session: Default::default(),
        }
    }

    /// Where this transport connects, as whom.
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// The node's address, and the bastion it is reached through.
    fn address(&self) -> String {
        match &self.target.jump {
            Some(jump) => format!(
                "{}:{} (through the bastion {jump})",
                self.target.host, self.target.port
            ),
            None => format!("{}:{}", self.target.host, self.target.port),
        }
    }

    fn tcp_connect(&self, host: &str, port: u16, deadline: Instant) -> Result<TcpStream, String> {
        let address = (host, port)
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .next()
            .ok_or_else(|| "no address".to_string())?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("not connected within {:?}", self.timeout));
        }
        TcpStream::connect_timeout(&address, left).map_err(|e| e.to_string())
    }

    /// A session on `stream` with its handshake done, every blocking call on it bounded
    /// by what is left of `deadline`.
    fn handshake<S: std::os::fd::AsRawFd + AsFd + 'static>(
        &self,
        stream: S,
        deadline: Instant,
    ) -> Result<Connection, String> {
        let socket = stream
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| e.to_string())?;
        let mut session = ssh2::Session::new().map_err(|e| e.to_string())?;
        if arm(&session, deadline).is_none() {
            return Err(format!("not connected within {:?}", self.timeout));
        }
        session.set_tcp_stream(stream);
        session
            .handshake()
            .map_err(|e| format!("SSH handshake: {e}"))?;
        Ok(Connection { session, socket })
    }

    /// Connects, verifies the host key (the bastion's too), authenticates. Nothing runs
    /// before this passes.
    fn connect(&self, deadline: Instant) -> Result<Connection, HostError> {
        let target = &self.target;
        let connect_error = |reason: String| HostError::Connect {
            node: target.node.clone(),
            address: self.address(),
            reason,
        };
        let connection = match &target.jump {
            None => {
                let tcp = self
                    .tcp_connect(&target.host, target.port, deadline)
                    .map_err(connect_error)?;
                self.handshake(tcp, deadline).map_err(connect_error)?
            }
            Some(jump) => {
                let tunnel = self.open_tunnel(jump, deadline)?;
                self.handshake(tunnel, deadline).map_err(connect_error)?
            }
        };
        let session = &connection.session;
        match self.check_host_key(session, &target.host, target.port)? {
            HostKey::Known => {}
            HostKey::Changed => {
                return Err(HostError::HostKeyMismatch {
                    node: target.node.clone(),
                    address: self.address(),
                    known_hosts: target.known_hosts.display().to_string(),
                })
            }
            HostKey::Unknown => {
                return Err(HostError::UnknownHostKey {
                    node: target.node.clone(),
                    address: self.address(),
                    known_hosts: target.known_hosts.display().to_string(),
                })
            }
        }
        self.authenticate(session, &target.user)
            .map_err(|reason| HostError::Authentication {
                node: target.node.clone(),
                user: target.user.clone(),
                reason,
            })?;
        Ok(connection)
    }

    /// Logs into the bastion (its host key verified first) and opens a channel from it
    /// to the node's SSH port. The returned socket carries the node's SSH stream: a
    /// thread moves it through the channel, and it owns the bastion's session, which
    /// ends when the node's session closes that socket (or the bastion the channel).
    fn open_tunnel(&self, jump: &JumpHost, deadline: Instant) -> Result<UnixStream, HostError> {
        let target = &self.target;
        let bastion = jump.to_string();
        let bastion_error = |reason: String| HostError::BastionConnect {
            node: target.node.clone(),
            bastion: bastion.clone(),
            reason,
        };
        let tcp = self
            .tcp_connect(&jump.host, jump.port, deadline)
            .map_err(bastion_error)?;
        let Connection { session, socket } =
            self.handshake(tcp, deadline).map_err(bastion_error)?;
        match self.check_host_key(&session, &jump.host, jump.port)? {
            HostKey::Known => {}
            HostKey::Changed => {
                return Err(HostError::BastionHostKeyMismatch {
                    node: target.node.clone(),
                    bastion,
                    known_hosts: target.known_hosts.display().to_string(),
                })
            }
            HostKey::Unknown => {
                return Err(HostError::BastionUnknownHostKey {
                    node: target.node.clone(),
                    bastion,
                    known_hosts: target.known_hosts.display().to_string(),
                })
            }
        }
        self.authenticate(&session, &jump.user).map_err(|reason| {
            HostError::BastionAuthentication {
                node: target.node.clone(),
                bastion: bastion.clone(),
                user: jump.user.clone(),
                reason,
            }
        })?;
        let channel = session
            .channel_direct_tcpip(&target.host, target.port, None)
            .map_err(|e| HostError::Tunnel {
                node: target.node.clone(),
                bastion: bastion.clone(),
                address: format!("{}:{}", target.host, target.port),
                reason: e.to_string(),
            })?;
        let (node_end, pump_end) = UnixStream::pair().map_err(|e| bastion_error(e.to_string()))?;
        // From here on only the pump thread touches the bastion's session: without
        // blocking, so that it can wait on both sockets at once.
        session.set_blocking(false);
        let channel = BastionChannel {
            session,
            channel,
            socket,
        };
        std::thread::Builder::new()
            .name("ssh-jump".into())
            .spawn(move || pump(channel, pump_end))
            .map_err(|e| bastion_error(format!("starting the tunnel thread: {e}")))?;
        Ok(node_end)
    }

    /// Checks the key a server presented for `host:port` against the inventory's
    /// known_hosts, read whole (bounded: it must be a regular file of a sane size) and
    /// line by line as libssh2 would read the file.
    fn check_host_key(
        &self,
        session: &ssh2::Session,
        host: &str,
        port: u16,
    ) -> Result<HostKey, HostError> {
        let target = &self.target;
        let known_hosts_error = |reason: String| HostError::KnownHosts {
            node: target.node.clone(),
            known_hosts: target.known_hosts.display().to_string(),
            reason,
        };
        let text = crate::local_file::read_text(&target.known_hosts, "known_hosts")
            .map_err(|e| known_hosts_error(e.problem.to_string()))?;
        let mut known_hosts = session
            .known_hosts()
            .map_err(|e| known_hosts_error(e.to_string()))?;
        for (index, line) in text.lines().enumerate() {
            known_hosts
                .read_str(line, ssh2::KnownHostFileKind::OpenSSH)
                .map_err(|e| known_hosts_error(format!("line {}: {e}", index + 1)))?;
        }
        let (key, _) = session
            .host_key()
            .ok_or_else(|| known_hosts_error("the server sent no host key".into()))?;
        Ok(match known_hosts.check_port(host, port, key) {
            ssh2::CheckResult::Match => HostKey::Known,
            ssh2::CheckResult::Mismatch => HostKey::Changed,
            ssh2::CheckResult::NotFound | ssh2::CheckResult::Failure => HostKey::Unknown,
        })
    }

    /// Logs in as `user` with the node's identity file (a regular file of a sane size),
    /// or else the ssh-agent's keys.
    fn authenticate(&self, session: &ssh2::Session, user: &str) -> Result<(), String> {
        match &self.target.identity_file {
            Some(identity) => {
                crate::local_file::read(identity, "key")
                    .map_err(|e| format!("key {}: {}", identity.display(), e.problem))?;
                session
                    .userauth_pubkey_file(user, None, identity, None)
                    .map_err(|e| format!("key {}: {e}", identity.display()))?
            }
            None => session
                .userauth_agent(user)
                .map_err(|e| format!("ssh-agent: {e}"))?,
        }
        if !session.authenticated() {
            return Err("not authenticated".into());
        }
        Ok(())
    }

    fn session_error(&self, command: &str, reason: impl ToString) -> HostError {
        HostError::Session {
            node: self.target.node.clone(),
            command: command.to_string(),
            reason: reason.to_string(),
        }
    }

    fn timeout_error(&self, command: &str) -> HostError {
        HostError::Timeout {
            node: self.target.node.clone(),
            command: command.to_string(),
            timeout: self.timeout,
        }
    }

    /// The deadline passed before the command was sent (the connection took it all, or
    /// an earlier command to the node did): nothing ran, which a reboot must not take
    /// for the machine going down.
    fn not_sent_in_time(&self) -> HostError {
        HostError::Connect {
            node: self.target.node.clone(),
            address: self.address(),
            reason: format!("not sent: its deadline of {:?} passed first", self.timeout),
        }
    }

    /// A new connection and a channel on it.
    fn fresh_channel(
        &self,
        line: &str,
        deadline: Instant,
    ) -> Result<(Connection, ssh2::Channel), HostError> {
        let connection = self.connect(deadline)?;
        let channel = connection
            .session
            .channel_session()
            .map_err(|e| self.session_error(line, e))?;
        Ok((connection, channel))
    }

    /// Blocking: exec one command and collect its output by `deadline`, or learn that the
    /// channel broke after the command was sent (what a reboot looks like).
    fn exec_blocking(&self, line: &str, deadline: Instant) -> Result<Execution, HostError> {
        // One command at a time per node: libssh2 sessions are not for concurrent use. A
        // command that waited here for another spent its own deadline waiting.
        let mut kept = self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if Instant::now() >= deadline {
            return Err(self.not_sent_in_time());
        }
        let (connection, mut channel) = match kept.take() {
            // A kept session may have died with the node (a reboot closes it): one fresh
            // connection then, verified and authenticated like the first. Only opening
            // the channel is retried: nothing has been sent to the node yet.
            Some(connection) => {
                arm(&connection.session, deadline);
                match connection.session.channel_session() {
                    Ok(channel) => (connection, channel),
                    Err(_) => {
                        drop(connection);
                        self.fresh_channel(line, deadline)?
                    }
                }
            }
            None => self.fresh_channel(line, deadline)?,
        };
        if arm(&connection.session, deadline).is_none() {
            hang_up(connection, channel);
            return Err(self.not_sent_in_time());
        }
        // A failed exec may still have reached the node (a reboot that kills sshd before
        // it answers): a session error, never a connection that was not made.
        if let Err(error) = channel.exec(line) {
            if timed_out(&error) {
                hang_up(connection, channel);
                return Err(self.timeout_error(line));
            }
            return Err(self.session_error(line, error));
        }
        // Both streams at once, without blocking: read one after the other, a command
        // that fills stderr while stdout waits would pile up in libssh2's queue.
        connection.session.set_blocking(false);
        let drained = drain(
            &mut SshOutput {
                session: &connection.session,
                channel: &mut channel,
                socket: connection.socket.as_fd(),
            },
            deadline,
            crate::hostile::MAX_STREAM_BYTES,
        );
        connection.session.set_blocking(true);
        let (stdout, stderr) = match drained {
            Drained::Finished { stdout, stderr } => (stdout.into_text(), stderr.into_text()),
            Drained::DeadlinePassed => {
                hang_up(connection, channel);
                return Err(self.timeout_error(line));
            }
            Drained::Broken(reason) => return Ok(Execution::Dropped(reason)),
        };
        if arm(&connection.session, deadline).is_none() {
            hang_up(connection, channel);
            return Err(self.timeout_error(line));
        }
        if let Err(error) = channel.wait_close() {
            if timed_out(&error) {
                hang_up(connection, channel);
                return Err(self.timeout_error(line));
            }
            return Ok(Execution::Dropped(error.to_string()));
        }
        match channel.exit_status() {
            Ok(exit_status) => {
                drop(channel);
                // Only a session that just carried a whole command is kept for the next.
                *kept = Some(connection);
                Ok(Execution::Finished(CommandOutput {
                    stdout,
                    stderr,
                    exit_status,
                }))
            }
            Err(e) => Ok(Execution::Dropped(e.to_string())),
        }
    }
}

/// Where a command's output comes from, as [`drain`] reads it: two streams whose reads
/// never block, and a way to wait for more.
trait OutputSource {
    /// What is there of stdout, or of stderr: `WouldBlock` when nothing is yet. 0 bytes
    /// is no end by itself (see `ended`).
    fn read(&mut self, stderr: bool, buffer: &mut [u8]) -> std::io::Result<usize>;
    /// The command's side has sent its end, and nothing of it is left unread.
    fn ended(&self) -> bool;
    /// Waits, at most `wait`, until more may be read.
    fn wait(&self, wait: Duration);
}

/// How reading a command's output ended.
#[derive(Debug)]
enum Drained {
    Finished {
        stdout: crate::hostile::CappedOutput,
        stderr: crate::hostile::CappedOutput,
    },
    /// The deadline passed first.
    DeadlinePassed,
    /// The connection broke: what was said.
    Broken(String),
}

/// Reads both streams of a command to their end, each capped at `limit` as it is read,
/// by `deadline` however much keeps coming.
fn drain(source: &mut impl OutputSource, deadline: Instant, limit: usize) -> Drained {
    let mut stdout = crate::hostile::CappedOutput::new(limit);
    let mut stderr = crate::hostile::CappedOutput::new(limit);
    let mut buffer = vec![0; 32 * 1024];
    loop {
        let mut moved = false;
        for (is_stderr, sink) in [(false, &mut stdout), (true, &mut stderr)] {
            match source.read(is_stderr, &mut buffer) {
                Ok(0) => {}
                Ok(read) => {
                    sink.push(&buffer[..read]);
                    moved = true;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Drained::Broken(e.to_string()),
            }
        }
        if !moved && source.ended() {
            return Drained::Finished { stdout, stderr };
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Drained::DeadlinePassed;
        }
        if !moved {
            source.wait(left.min(DRAIN_WAIT_MAX));
        }
    }
}

/// A command's channel, in a session that does not block.
struct SshOutput<'a> {
    session: &'a ssh2::Session,
    channel: &'a mut ssh2::Channel,
    socket: BorrowedFd<'a>,
}

impl OutputSource for SshOutput<'_> {
    fn read(&mut self, stderr: bool, buffer: &mut [u8]) -> std::io::Result<usize> {
        if stderr {
            self.channel.stderr().read(buffer)
        } else {
            self.channel.read(buffer)
        }
    }
    fn ended(&self) -> bool {
        // libssh2 masks the end while data of either stream waits to be read.
        self.channel.eof()
    }
    fn wait(&self, wait: Duration) {
        // A window adjustment that could not be sent waits for room to write.
        let events = match self.session.block_directions() {
            ssh2::BlockDirections::Outbound => PollFlags::POLLOUT,
            ssh2::BlockDirections::Both => PollFlags::POLLIN | PollFlags::POLLOUT,
            ssh2::BlockDirections::Inbound | ssh2::BlockDirections::None => PollFlags::POLLIN,
        };
        let mut sockets = [PollFd::new(self.socket, events)];
        let wait = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        let _ = nix::poll::poll(&mut sockets, wait);
    }
}

/// How a command that reached the node ended.
enum Execution {
    Finished(CommandOutput),
    /// The connection broke after the command was sent: what libssh2 said.
    Dropped(String),
}

/// The bastion's end of a tunnel, as the pump drives it: reads and writes of the
/// forwarded stream that never block, and the socket to wait on when neither can go on.
trait TunnelEnd: Read + Write {
    fn socket(&self) -> BorrowedFd<'_>;
    /// What must happen on the socket before a stalled read or write can go on.
    fn wait_for(&self) -> PollFlags;
    /// Whether the far end closed the stream: libssh2 also reads 0 bytes when a packet
    /// it took in was not data.
    fn closed(&self) -> bool;
}

/// A `direct-tcpip` channel to the node, with the bastion session it runs in (in
/// non-blocking mode) and a handle to that session's socket.
struct BastionChannel {
    /// Dropped after the channel, as libssh2 frees them.
    channel: ssh2::Channel,
    session: ssh2::Session,
    socket: OwnedFd,
}

impl Read for BastionChannel {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        self.channel.read(buffer)
    }
}

impl Write for BastionChannel {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.channel.write(data)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.channel.flush()
    }
}

impl TunnelEnd for BastionChannel {
    fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
    fn wait_for(&self) -> PollFlags {
        // Always readable: the node's data may arrive at any time, and a write stalled
        // on a full window goes on once the window adjustment is read.
        match self.session.block_directions() {
            ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both => {
                PollFlags::POLLIN | PollFlags::POLLOUT
            }
            ssh2::BlockDirections::Inbound | ssh2::BlockDirections::None => PollFlags::POLLIN,
        }
    }
    fn closed(&self) -> bool {
        self.channel.eof()
    }
}

/// How much of the stream the pump holds per direction.
const PUMP_BUFFER: usize = 32 * 1024;
/// The longest the pump waits without looking again: only a safety net, since it is
/// woken by its sockets.
const PUMP_WAIT_MS: u16 = 1000;
/// As long, while bytes wait to go into the channel: libssh2 may have taken in the window
/// adjustment such a write waits for while reading, leaving its socket with nothing to
/// wake the pump.
const PUMP_WRITE_RETRY_MS: u16 = 10;
/// Wakeups in a row that moved nothing before the pump rests between them: a socket that
/// keeps reporting an event nothing can act on must not turn into a busy loop.
const PUMP_FRUITLESS_WAKEUPS: u32 = 8;

/// What one read or write did.
enum Step {
    Moved,
    Stalled,
    /// End of stream, or a write that took nothing.
    Nothing,
    Failed,
}

fn step(result: std::io::Result<usize>) -> Step {
    match result {
        Ok(0) => Step::Nothing,
        Ok(_) => Step::Moved,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) =>
        {
            Step::Stalled
        }
        Err(_) => Step::Failed,
    }
}

/// Bytes read from one side and not yet written to the other.
struct Pending {
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Pending {
    fn new() -> Self {
        Pending {
            buffer: vec![0; PUMP_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
    fn is_empty(&self) -> bool {
        self.start == self.end
    }
    fn read_from(&mut self, from: &mut impl Read) -> Step {
        let result = from.read(&mut self.buffer);
        if let Ok(read) = result {
            (self.start, self.end) = (0, read);
        }
        step(result)
    }
    fn write_to(&mut self, to: &mut impl Write) -> Step {
        let result = to.write(&self.buffer[self.start..self.end]);
        if let Ok(written) = result {
            self.start += written;
        }
        step(result)
    }
}

/// Moves the node's SSH stream between `node` (the socket its session runs on) and the
/// bastion's channel, both ways, until either side closes or fails. Nothing here blocks
/// but the wait for one of the two sockets.
fn pump(mut tunnel: impl TunnelEnd, mut node: UnixStream) {
    if node.set_nonblocking(true).is_err() {
        return;
    }
    let mut to_tunnel = Pending::new();
    let mut to_node = Pending::new();
    let mut fruitless_wakeups = 0;
    loop {
        let mut moved = false;
        if to_tunnel.is_empty() {
            match to_tunnel.read_from(&mut node) {
                Step::Moved => moved = true,
                Step::Stalled => {}
                Step::Nothing | Step::Failed => return,
            }
        }
        if !to_tunnel.is_empty() {
            match to_tunnel.write_to(&mut tunnel) {
                Step::Moved => moved = true,
                Step::Stalled | Step::Nothing => {}
                Step::Failed => return,
            }
        }
        if to_node.is_empty() {
            match to_node.read_from(&mut tunnel) {
                Step::Moved => moved = true,
                Step::Nothing if tunnel.closed() => return,
                Step::Stalled | Step::Nothing => {}
                Step::Failed => return,
            }
        }
        if !to_node.is_empty() {
            match to_node.write_to(&mut node) {
                Step::Moved => moved = true,
                Step::Stalled => {}
                Step::Nothing | Step::Failed => return,
            }
        }
        if moved {
            fruitless_wakeups = 0;
            continue;
        }
        let mut node_events = PollFlags::empty();
        if to_tunnel.is_empty() {
            node_events |= PollFlags::POLLIN;
        }
        if !to_node.is_empty() {
            node_events |= PollFlags::POLLOUT;
        }
        // While the node cannot take more, the tunnel's data waits in the bastion's
        // window; only a stalled write to the tunnel needs its socket then.
        let mut tunnel_events = tunnel.wait_for();
        if !to_node.is_empty() && to_tunnel.is_empty() {
            tunnel_events = PollFlags::empty();
        }
        let mut sockets = [
            PollFd::new(node.as_fd(), node_events),
            PollFd::new(tunnel.socket(), tunnel_events),
        ];
        let wait = if to_tunnel.is_empty() {
            PUMP_WAIT_MS
        } else {
            PUMP_WRITE_RETRY_MS
        };
        match nix::poll::poll(&mut sockets, wait) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        // A hung-up socket that nobody reads from would wake every wait at once.
        let hung_up = PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL;
        let gone = |socket: &PollFd, listening: bool| {
            !listening && socket.revents().is_some_and(|r| r.intersects(hung_up))
        };
        if gone(&sockets[0], node_events.contains(PollFlags::POLLIN))
            || gone(&sockets[1], tunnel_events.contains(PollFlags::POLLIN))
        {
            return;
        }
        fruitless_wakeups += 1;
        if fruitless_wakeups > PUMP_FRUITLESS_WAKEUPS {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl SshTransport {
    /// Runs the command on a blocking thread, since libssh2 blocks; returns the line as
    /// sent, for error messages. The deadline starts now: waiting for a worker thread, or
    /// for an earlier command to the node, counts against it.
    async fn exec_off_thread(
        &self,
        command: &ShellCommand,
    ) -> (String, Result<Execution, HostError>) {
        let line = command.render(self.target.become_method);
        let deadline = Instant::now() + self.timeout;
        let transport = self.clone();
        let sent = line.clone();
        let worker = tokio::task::spawn_blocking(move || transport.exec_blocking(&line, deadline));
        // The worker returns by itself at the deadline; this is the net under it, for a
        // libssh2 call that no timeout reaches. A worker left behind holds nothing the
        // run needs, and the process does not wait for it at exit.
        let result = match tokio::time::timeout(self.timeout + WORKER_GRACE, worker).await {
            Ok(joined) => joined.expect("ssh worker does not panic"),
            Err(_) => Err(self.timeout_error(&sent)),
        };
        (sent, result)
    }
}

impl Transport for SshTransport {
    fn run<'a>(
        &'a self,
        command: &'a ShellCommand,
    ) -> BoxFuture<'a, Result<CommandOutput, HostError>> {
        Box::pin(async move {
            let (line, result) = self.exec_off_thread(command).await;
            match result? {
                Execution::Finished(output) => Ok(output),
                Execution::Dropped(reason) => {
                    Err(self.session_error(&line, format!("connection dropped: {reason}")))
                }
            }
        })
    }

    fn run_all<'a>(
        &'a self,
        commands: &'a [ShellCommand],
    ) -> BoxFuture<'a, Vec<Result<CommandOutput, HostError>>> {
        Box::pin(run_batched(self, &self.target.node, commands))
    }

    fn reboot<'a>(
        &'a self,
        command: &'a ShellCommand,
    ) -> BoxFuture<'a, Result<RebootOutcome, HostError>> {
        Box::pin(async move {
            match self.exec_off_thread(command).await.1 {
                Ok(Execution::Finished(output)) if output.success() => Ok(RebootOutcome::Issued),
                Ok(Execution::Finished(output)) => Ok(RebootOutcome::Refused(output)),
                // Connected, authenticated, command sent, then the line went dead: the
                // machine is going down, which is what we asked for.
                Ok(Execution::Dropped(_)) => Ok(RebootOutcome::Issued),
                Err(HostError::Timeout { .. }) => Ok(RebootOutcome::Issued),
                Err(other) => Err(other),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    use fake::output;

    /// Runs a batch's script in this machine's sh, as a node's would.
    fn run_here(script: &ShellCommand) -> CommandOutput {
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(script.render(None))
            .output()
            .unwrap();
        CommandOutput {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            exit_status: output.status.code().unwrap_or(-1),
        }
    }

    #[test]
    fn a_batch_gives_each_command_its_own_output_errors_and_status() {
        let commands = [
            ShellCommand::new("printf").arg("d /run/calico 0755 999 999 -\n"),
            ShellCommand::new("cat")
                .arg("--")
                .arg("/nonexistent/postflight"),
            // No final newline, an empty line, and a quote: kept exactly.
            ShellCommand::new("printf").arg("a\n\nb 'c'"),
            ShellCommand::new("sh")
                .arg("-c")
                .arg("echo out; echo err >&2; exit 3"),
            ShellCommand::new("true"),
        ];
        let (batch, script) = CommandBatch::new(&commands);
        let outputs = batch.split(&run_here(&script)).unwrap();
        assert_eq!(outputs[0], output("d /run/calico 0755 999 999 -\n", "", 0));
        assert_eq!(outputs[1].exit_status, 1);
        assert!(
            outputs[1].stderr.contains("No such file"),
            "{:?}",
            outputs[1]
        );
        assert_eq!(outputs[1].stdout, "");
        assert_eq!(outputs[2], output("a\n\nb 'c'", "", 0));
        assert_eq!(outputs[3], output("out\n", "err", 3));
        assert_eq!(outputs[4], output("", "", 0));
    }

    #[test]
    fn output_that_mimics_the_batch_cannot_pass_for_another_command() {
        // A file written to forge the markers cannot know the boundary, made anew for
        // every batch.
        let (first, _) = CommandBatch::new(&[ShellCommand::new("true")]);
        let forged = format!(
            "x\n{} 0 err\n\n{} 0 status 0\n",
            first.boundary, first.boundary
        );
        let commands = [
            ShellCommand::new("printf").arg("%s").arg(&forged),
            ShellCommand::new("printf").arg("second"),
        ];
        let (batch, script) = CommandBatch::new(&commands);
        assert_ne!(batch.boundary, first.boundary);
        let outputs = batch.split(&run_here(&script)).unwrap();
        assert_eq!(outputs[0].stdout, forged);
        assert_eq!(outputs[1].stdout, "second");
    }

    #[test]
    fn a_batch_cut_short_is_an_error_not_a_result() {
        let commands = [ShellCommand::new("true"), ShellCommand::new("true")];
        let (batch, script) = CommandBatch::new(&commands);
        let mut whole = run_here(&script);
        let cut = whole.stdout.len() / 2;
        whole.stdout.truncate(cut);
        let why = batch.split(&whole).unwrap_err();
        assert!(why.contains("stops before command"), "{why}");
    }

    #[tokio::test]
    async fn a_local_command_reports_its_exit_and_is_bounded() {
        let output = run_local("n1", "echo restarted; exit 3", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            (output.stdout.as_str(), output.exit_status),
            ("restarted\n", 3)
        );
        let late = run_local("n1", "sleep 5", Duration::from_millis(100)).await;
        assert!(matches!(late, Err(HostError::Timeout { .. })), "{late:?}");
    }

    #[tokio::test]
    async fn a_local_command_that_prints_forever_ends_at_its_deadline_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let late = dir.path().join("late");
        // A child that outlives the shell's deadline, and a loop that keeps printing.
        let line = format!(
            "(sleep 1; touch {}) & while :; do echo still going; done",
            late.display()
        );
        let started = std::time::Instant::now();
        let result = run_local("n1", &line, Duration::from_millis(300)).await;
        let took = started.elapsed();
        assert!(
            matches!(result, Err(HostError::Timeout { .. })),
            "{result:?}"
        );
        assert!(took < Duration::from_millis(800), "took {took:?}");
        std::thread::sleep(Duration::from_millis(1200));
        assert!(!late.exists(), "the command's process group was killed");
    }

    #[tokio::test]
    async fn a_local_commands_output_is_capped_per_stream_while_it_is_read() {
        let limit = crate::hostile::MAX_STREAM_BYTES;
        let line = format!(
            "head -c {} /dev/zero | tr '\\0' o; head -c {} /dev/zero | tr '\\0' e >&2; echo done >&2",
            limit * 3,
            limit + 5
        );
        let output = run_local("n1", &line, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(output.exit_status, 0);
        let marker =
            |more: usize| format!("… [output cut at {limit} bytes: {more} more bytes not shown]");
        assert!(output.stdout.ends_with(&marker(limit * 2)), "stdout cut");
        assert_eq!(output.stdout.len(), limit + marker(limit * 2).len());
        assert!(
            output.stderr.ends_with(&marker(5 + "done\n".len())),
            "stderr cut on its own"
        );
    }

    #[tokio::test]
    async fn an_exec_stream_is_capped_while_it_is_read() {
        use tokio::io::AsyncReadExt;
        let flood = tokio::io::repeat(b'y').take(8 * 1024 * 1024);
        let output = read_capped(Some(flood), 1000).await.unwrap();
        assert!(output.was_cut());
        assert!(output
            .into_text()
            .ends_with("… [output cut at 1000 bytes: 8387608 more bytes not shown]"));
        let none = read_capped(None::<tokio::io::Empty>, 10).await.unwrap();
        assert_eq!(none.into_text(), "");
    }

    /// A command's output as a node might send it: `chunk` on each stream it floods, until
    /// `total` bytes (forever when none), then its end.
    struct Flood {
        stdout: bool,
        stderr: bool,
        chunk: usize,
        total: Option<usize>,
        sent: usize,
        waits: std::cell::Cell<usize>,
    }

    impl Flood {
        fn new(stdout: bool, stderr: bool, total: Option<usize>) -> Self {
            Flood {
                stdout,
                stderr,
                chunk: 16 * 1024,
                total,
                sent: 0,
                waits: Default::default(),
            }
        }
    }

    impl OutputSource for Flood {
        fn read(&mut self, stderr: bool, buffer: &mut [u8]) -> std::io::Result<usize> {
            let floods = if stderr { self.stderr } else { self.stdout };
            let left = self.total.map_or(usize::MAX, |total| total - self.sent);
            if !floods || left == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let read = self.chunk.min(buffer.len()).min(left);
            buffer[..read].fill(b'y');
            self.sent += read;
            Ok(read)
        }
        fn ended(&self) -> bool {
            self.total.is_some_and(|total| self.sent == total)
        }
        fn wait(&self, wait: Duration) {
            self.waits.set(self.waits.get() + 1);
            std::thread::sleep(wait);
        }
    }

    #[test]
    fn output_that_never_ends_is_cut_at_the_deadline_however_fast_it_comes() {
        let mut flood = Flood::new(true, true, None);
        let started = std::time::Instant::now();
        let drained = drain(&mut flood, started + Duration::from_millis(200), 1024);
        assert!(matches!(drained, Drained::DeadlinePassed), "{drained:?}");
        assert!(started.elapsed() < Duration::from_millis(400));
        assert!(flood.sent > 1024 * 1024, "it kept reading: {}", flood.sent);
    }

    #[test]
    fn a_node_that_goes_silent_is_waited_on_not_spun_on() {
        let mut silent = Flood::new(false, false, None);
        let started = std::time::Instant::now();
        let drained = drain(&mut silent, started + Duration::from_millis(350), 1024);
        assert!(matches!(drained, Drained::DeadlinePassed), "{drained:?}");
        assert!(silent.waits.get() <= 5, "{} waits", silent.waits.get());
    }

    #[test]
    fn a_finished_command_keeps_the_start_of_each_stream_and_says_it_was_cut() {
        let mut flood = Flood::new(false, true, Some(100_000));
        let far = std::time::Instant::now() + Duration::from_secs(10);
        let Drained::Finished { stdout, stderr } = drain(&mut flood, far, 1000) else {
            panic!("it finished");
        };
        assert_eq!(stdout.into_text(), "");
        assert_eq!(
            stderr.into_text(),
            format!(
                "{}… [output cut at 1000 bytes: 99000 more bytes not shown]",
                "y".repeat(1000)
            )
        );
    }

    fn through_sh(line: &str) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(line)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn a_bastion_that_fails_has_sent_nothing_and_only_an_unreachable_one_is_retried() {
        let (node, bastion) = (
            "k8s-worker-03".to_string(),
            "ops@198.18.0.10:22".to_string(),
        );
        let refused = HostError::BastionConnect {
            node: node.clone(),
            bastion: bastion.clone(),
            reason: "Connection refused".into(),
        };
        let node_down = HostError::Tunnel {
            node: node.clone(),
            bastion: bastion.clone(),
            address: "198.18.0.13:22".into(),
            reason: "Channel open failure: connect failed".into(),
        };
        let impostor = HostError::BastionHostKeyMismatch {
            node: node.clone(),
            bastion: bastion.clone(),
            known_hosts: "known_hosts".into(),
        };
        let unknown = HostError::BastionUnknownHostKey {
            node: node.clone(),
            bastion: bastion.clone(),
            known_hosts: "known_hosts".into(),
        };
        let login = HostError::BastionAuthentication {
            node,
            bastion,
            user: "ops".into(),
            reason: "denied".into(),
        };
        for error in [&refused, &node_down, &impostor, &unknown, &login] {
            assert!(error.before_sending(), "{error}");
            assert!(
                error.to_string().contains("bastion ops@198.18.0.10:22"),
                "{error}"
            );
            assert_eq!(error.kind(), crate::checks::ErrorKind::Ssh);
        }
        assert!(refused.unreachable() && node_down.unreachable());
        assert!(!impostor.unreachable() && !unknown.unreachable() && !login.unreachable());
    }

    #[rstest]
    #[case::semicolon("k8s-worker-03; touch /tmp/pwned")]
    #[case::substitution("$(touch /tmp/pwned)")]
    #[case::backticks("`touch /tmp/pwned`")]
    #[case::quotes("it's \"quoted\" \\ back")]
    #[case::newline("a\ntouch /tmp/pwned")]
    fn hostile_words_reach_the_program_as_one_argument(#[case] hostile: &str) {
        let line = ShellCommand::new("printf")
            .arg("%s")
            .arg(hostile)
            .render(None);
        assert_eq!(through_sh(&line), hostile);
        let sudo_free = ShellCommand::new("printf")
            .arg("%s")
            .arg(hostile)
            .render(Some(Become::Sudo));
        assert!(sudo_free.starts_with("sudo -n -- sh -c "));
        // What sudo would run is the same line, quoted once more.
        let inner = sudo_free.trim_start_matches("sudo -n -- ");
        assert_eq!(through_sh(inner), hostile);
    }
}

#[cfg(test)]
mod pump_tests {
    use super::*;
    use std::thread::JoinHandle;

    /// A socket standing in for the bastion's channel: it reads 0 only at its end.
    struct SocketTunnel(UnixStream);

    impl Read for SocketTunnel {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buffer)
        }
    }
    impl Write for SocketTunnel {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.write(data)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.0.flush()
        }
    }
    impl TunnelEnd for SocketTunnel {
        fn socket(&self) -> BorrowedFd<'_> {
            self.0.as_fd()
        }
        fn wait_for(&self) -> PollFlags {
            PollFlags::POLLIN
        }
        fn closed(&self) -> bool {
            true
        }
    }

    /// CPU time this thread has used, in clock ticks (user and system).
    fn thread_cpu_ticks() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        // utime and stime are the 14th and 15th fields; the state, the 3rd, comes first.
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// The node session's socket, the bastion's far end, and the pump between them,
    /// which returns the CPU time it used.
    fn pumped() -> (UnixStream, UnixStream, JoinHandle<u64>) {
        let (node_session, pump_node) = UnixStream::pair().unwrap();
        let (bastion, pump_tunnel) = UnixStream::pair().unwrap();
        pump_tunnel.set_nonblocking(true).unwrap();
        let pump = std::thread::spawn(move || {
            pump(SocketTunnel(pump_tunnel), pump_node);
            thread_cpu_ticks()
        });
        (node_session, bastion, pump)
    }

    fn pattern(seed: u8) -> Vec<u8> {
        (0..4 * 1024 * 1024u32)
            .map(|i| (i % 251) as u8 ^ seed)
            .collect()
    }

    /// Writes `data` to `to` on a thread of its own and reads as much from `from`.
    fn exchange(mut to: UnixStream, mut from: UnixStream, data: Vec<u8>) -> JoinHandle<Vec<u8>> {
        let writer = std::thread::spawn(move || to.write_all(&data).map(|_| to));
        std::thread::spawn(move || {
            let mut received = vec![0; 4 * 1024 * 1024];
            from.read_exact(&mut received).unwrap();
            drop(writer.join().unwrap().unwrap());
            received
        })
    }

    #[test]
    fn the_pump_carries_both_directions_at_once_and_ends_with_the_node_session() {
        let (node_session, bastion, pump) = pumped();
        // Each direction at once, more than any socket buffer holds: a pump that waited
        // on one direction while the other filled up would never finish.
        let upstream = exchange(
            node_session.try_clone().unwrap(),
            bastion.try_clone().unwrap(),
            pattern(1),
        );
        let downstream = exchange(
            bastion.try_clone().unwrap(),
            node_session.try_clone().unwrap(),
            pattern(2),
        );
        assert!(upstream.join().unwrap() == pattern(1), "node to bastion");
        assert!(downstream.join().unwrap() == pattern(2), "bastion to node");
        drop(node_session);
        pump.join().unwrap();
        let mut rest = Vec::new();
        (&bastion).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the bastion's side sees the end");
    }

    #[test]
    fn the_pump_ends_when_the_bastion_closes_and_the_node_session_sees_it() {
        let (mut node_session, mut bastion, pump) = pumped();
        bastion.write_all(b"last words").unwrap();
        drop(bastion);
        let mut received = Vec::new();
        node_session.read_to_end(&mut received).unwrap();
        assert_eq!(received, b"last words");
        pump.join().unwrap();
    }

    #[test]
    fn an_idle_pump_waits_without_using_the_cpu() {
        let (node_session, _bastion, pump) = pumped();
        std::thread::sleep(Duration::from_secs(1));
        drop(node_session);
        let ticks = pump.join().unwrap();
        // 100 ticks a second: a busy loop would use nearly all of them.
        assert!(ticks <= 5, "the pump used {ticks} ticks of CPU in 1s idle");
    }
}

/// A scripted transport for unit tests of the gate's host-side paths: each command line
/// (as it would be sent, without `become`) is answered from a script in order, and every
/// line run is recorded. A line with no answer left is a test bug and panics.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    type Answer = Result<CommandOutput, HostError>;

    #[derive(Default)]
    pub struct FakeTransport {
        /// Answers in order for lines starting with the key.
        answers: Mutex<Vec<(String, VecDeque<Answer>)>>,
        /// Every answer for a line that starts with the key, when no exact line matches.
        fallback: Mutex<Vec<(String, Answer)>>,
        pub ran: Mutex<Vec<String>>,
    }

    pub fn output(stdout: &str, stderr: &str, exit_status: i32) -> CommandOutput {
        CommandOutput {
            stdout: stdout.into(),
            stderr: stderr.into(),
            exit_status,
        }
    }

    pub fn connect_refused(node: &str) -> HostError {
        HostError::Connect {
            node: node.into(),
            address: "198.18.0.13:22".into(),
            reason: "Connection refused".into(),
        }
    }

    impl FakeTransport {
        /// Answers the next run of a line starting with `prefix` with `answer`.
        pub fn on(self, prefix: &str, answer: Answer) -> Self {
            {
                let mut answers = self.answers.lock().unwrap();
                match answers.iter_mut().find(|(p, _)| p == prefix) {
                    Some((_, queue)) => queue.push_back(answer),
                    None => answers.push((prefix.into(), VecDeque::from([answer]))),
                }
            }
            self
        }

        /// Answers every line starting with `prefix` that has no scripted answer.
        pub fn always(self, prefix: &str, answer: Answer) -> Self {
            self.fallback.lock().unwrap().push((prefix.into(), answer));
            self
        }

        fn answer(&self, command: &ShellCommand) -> Answer {
            let line = command.render(None);
            self.ran.lock().unwrap().push(line.clone());
            if let Some(answer) = self
                .answers
                .lock()
                .unwrap()
                .iter_mut()
                .filter(|(prefix, _)| line.starts_with(prefix.as_str()))
                .find_map(|(_, queue)| queue.pop_front())
            {
                return answer;
            }
            self.fallback
                .lock()
                .unwrap()
                .iter()
                .find(|(prefix, _)| line.starts_with(prefix.as_str()))
                .map(|(_, answer)| clone_answer(answer))
                .unwrap_or_else(|| panic!("the fake transport has no answer for {line:?}"))
        }
    }

    fn clone_answer(answer: &Answer) -> Answer {
        match answer {
            Ok(output) => Ok(output.clone()),
            Err(HostError::Connect {
                node,
                address,
                reason,
            }) => Err(HostError::Connect {
                node: node.clone(),
                address: address.clone(),
                reason: reason.clone(),
            }),
            Err(HostError::HostKeyMismatch {
                node,
                address,
                known_hosts,
            }) => Err(HostError::HostKeyMismatch {
                node: node.clone(),
                address: address.clone(),
                known_hosts: known_hosts.clone(),
            }),
            Err(other) => panic!("the fake transport cannot repeat {other}"),
        }
    }

    impl Transport for FakeTransport {
        fn run<'a>(
            &'a self,
            command: &'a ShellCommand,
        ) -> BoxFuture<'a, Result<CommandOutput, HostError>> {
            Box::pin(async move { self.answer(command) })
        }

        fn reboot<'a>(
            &'a self,
            command: &'a ShellCommand,
        ) -> BoxFuture<'a, Result<RebootOutcome, HostError>> {
            Box::pin(async move {
                match self.answer(command)? {
                    output if output.success() => Ok(RebootOutcome::Issued),
                    output => Ok(RebootOutcome::Refused(output)),
                }
            })
        }
    }
}
