//! Running commands on nodes. A [`Transport`] runs one shell command on one node and
//! returns its output and exit status; [`SshTransport`] does it over SSH with libssh2,
//! verifying the host key against known_hosts every time (an unknown or changed key is
//! refused before anything runs). Every word of a command is shell-quoted by
//! [`ShellCommand`], so a hostile path or node name cannot inject.

use crate::inventory::{Become, SshTarget};
use std::future::Future;
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::pin::Pin;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
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
        )
    }
}

/// Runs an operator's command line on this machine, for a node that another system
/// restarts (`docker restart NODE` for kind), within `timeout`; killed if it overruns.
///
/// # Errors
/// It could not be started, or did not finish in time.
pub async fn run_local(
    node: &str,
    line: &str,
    timeout: Duration,
) -> Result<CommandOutput, HostError> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(line)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Ok(Ok(output)) => Ok(CommandOutput {
            stdout: crate::hostile::lossy(output.stdout),
            stderr: crate::hostile::lossy(output.stderr),
            exit_status: output.status.code().unwrap_or(-1),
        }),
        Ok(Err(error)) => Err(HostError::Local {
            node: node.to_string(),
            command: line.to_string(),
            reason: error.to_string(),
        }),
        Err(_) => Err(HostError::Timeout {
            node: node.to_string(),
            command: line.to_string(),
            timeout,
        }),
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

/// One way to run commands on a node: SSH, or a node-shell pod through the API.
pub trait Transport: Send + Sync {
    /// Runs a command and waits for it to finish.
    fn run<'a>(
        &'a self,
        command: &'a ShellCommand,
    ) -> BoxFuture<'a, Result<CommandOutput, HostError>>;
    /// Runs a command that reboots the node: the connection dropping is success.
    fn reboot<'a>(
        &'a self,
        command: &'a ShellCommand,
    ) -> BoxFuture<'a, Result<RebootOutcome, HostError>>;
}

/// SSH to one node. Its clones share one session: a run's commands to a node go over
/// one connection, each in a channel of its own, instead of a handshake and key
/// authentication per command.
#[derive(Clone)]
pub struct SshTransport {
    target: SshTarget,
    timeout: Duration,
    /// The open session, kept between commands; none until the first, and none again
    /// after anything went wrong on it (a reboot, a timeout), so the next reconnects.
    session: std::sync::Arc<std::sync::Mutex<Option<ssh2::Session>>>,
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

    fn address(&self) -> String {
        format!("{}:{}", self.target.host, self.target.port)
    }

    /// Connects, verifies the host key, authenticates. Nothing runs before this passes.
    fn connect(&self) -> Result<ssh2::Session, HostError> {
        let target = &self.target;
        let connect_error = |reason: String| HostError::Connect {
            node: target.node.clone(),
            address: self.address(),
            reason,
        };
        let address = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|e| connect_error(e.to_string()))?
            .next()
            .ok_or_else(|| connect_error("no address".into()))?;
        let tcp = TcpStream::connect_timeout(&address, self.timeout)
            .map_err(|e| connect_error(e.to_string()))?;
        let mut session = ssh2::Session::new().map_err(|e| connect_error(e.to_string()))?;
        session.set_timeout(self.timeout.as_millis().min(u32::MAX as u128) as u32);
        session.set_tcp_stream(tcp);
        session
            .handshake()
            .map_err(|e| connect_error(format!("SSH handshake: {e}")))?;
        self.verify_host_key(&session)?;
        let user = &target.user;
        let auth_error = |reason: String| HostError::Authentication {
            node: target.node.clone(),
            user: user.clone(),
            reason,
        };
        match &target.identity_file {
            Some(identity) => session
                .userauth_pubkey_file(user, None, identity, None)
                .map_err(|e| auth_error(format!("key {}: {e}", identity.display())))?,
            None => session
                .userauth_agent(user)
                .map_err(|e| auth_error(format!("ssh-agent: {e}")))?,
        }
        if !session.authenticated() {
            return Err(auth_error("not authenticated".into()));
        }
        Ok(session)
    }

    fn verify_host_key(&self, session: &ssh2::Session) -> Result<(), HostError> {
        let target = &self.target;
        let known_hosts_path = target.known_hosts.display().to_string();
        let known_hosts_error = |reason: String| HostError::KnownHosts {
            node: target.node.clone(),
            known_hosts: known_hosts_path.clone(),
            reason,
        };
        let mut known_hosts = session
            .known_hosts()
            .map_err(|e| known_hosts_error(e.to_string()))?;
        known_hosts
            .read_file(&target.known_hosts, ssh2::KnownHostFileKind::OpenSSH)
            .map_err(|e| known_hosts_error(e.to_string()))?;
        let (key, _) = session
            .host_key()
            .ok_or_else(|| known_hosts_error("the server sent no host key".into()))?;
        match known_hosts.check_port(&target.host, target.port, key) {
            ssh2::CheckResult::Match => Ok(()),
            ssh2::CheckResult::Mismatch => Err(HostError::HostKeyMismatch {
                node: target.node.clone(),
                address: self.address(),
                known_hosts: known_hosts_path,
            }),
            ssh2::CheckResult::NotFound | ssh2::CheckResult::Failure => {
                Err(HostError::UnknownHostKey {
                    node: target.node.clone(),
                    address: self.address(),
                    known_hosts: known_hosts_path,
                })
            }
        }
    }

    fn session_error(&self, command: &str, reason: impl ToString) -> HostError {
        HostError::Session {
            node: self.target.node.clone(),
            command: command.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Blocking: exec one command and collect its output, or learn that the channel broke
    /// after the command was sent (what a reboot looks like).
    fn exec_blocking(&self, line: &str) -> Result<Execution, HostError> {
        // One command at a time per node: libssh2 sessions are not for concurrent use.
        let mut kept = self.session.lock().expect("ssh session lock");
        let (session, mut channel) = match kept.take() {
            // A kept session may have died with the node (a reboot closes it): one fresh
            // connection then, verified and authenticated like the first. Only opening
            // the channel is retried: nothing has been sent to the node yet.
            Some(session) => match session.channel_session() {
                Ok(channel) => (session, channel),
                Err(_) => {
                    let session = self.connect()?;
                    let channel = session
                        .channel_session()
                        .map_err(|e| self.session_error(line, e))?;
                    (session, channel)
                }
            },
            None => {
                let session = self.connect()?;
                let channel = session
                    .channel_session()
                    .map_err(|e| self.session_error(line, e))?;
                (session, channel)
            }
        };
        // A failed exec may still have reached the node (a reboot that kills sshd before
        // it answers): a session error, never a connection that was not made.
        channel
            .exec(line)
            .map_err(|e| self.session_error(line, e))?;
        // As bytes: a node's files and tools may print anything, and invalid UTF-8 must
        // not turn a finished command into a broken connection.
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let read = channel
            .read_to_end(&mut stdout)
            .and_then(|_| channel.stderr().read_to_end(&mut stderr));
        let (stdout, stderr) = (crate::hostile::lossy(stdout), crate::hostile::lossy(stderr));
        if let Err(e) = read {
            if e.kind() == std::io::ErrorKind::TimedOut {
                return Err(HostError::Timeout {
                    node: self.target.node.clone(),
                    command: line.into(),
                    timeout: self.timeout,
                });
            }
            return Ok(Execution::Dropped(e.to_string()));
        }
        if let Err(e) = channel.wait_close() {
            return Ok(Execution::Dropped(e.to_string()));
        }
        match channel.exit_status() {
            Ok(exit_status) => {
                // Only a session that just carried a whole command is kept for the next.
                *kept = Some(session);
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

/// How a command that reached the node ended.
enum Execution {
    Finished(CommandOutput),
    /// The connection broke after the command was sent: what libssh2 said.
    Dropped(String),
}

impl SshTransport {
    /// Runs the command on a blocking thread, since libssh2 blocks; returns the line as
    /// sent, for error messages.
    async fn exec_off_thread(
        &self,
        command: &ShellCommand,
    ) -> (String, Result<Execution, HostError>) {
        let line = command.render(self.target.become_method);
        let transport = self.clone();
        let sent = line.clone();
        let result = tokio::task::spawn_blocking(move || transport.exec_blocking(&line))
            .await
            .expect("ssh worker does not panic");
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

    fn through_sh(line: &str) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(line)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
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
