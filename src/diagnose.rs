//! Known failure signatures, mapped to a root cause an on-call engineer can act on and
//! the exact commands that fix it. A signature matches on evidence already collected
//! (log lines, `stat` of the run directory, the tmpfiles.d file); nothing here does I/O.

use crate::checks::{RunDirStat, TmpfilesEntry};
use crate::expectations::{canonical_run_path, CalicoExpectations};
pub use crate::fix::NodeShell;
use crate::fix::{whole_line_pattern, Command, Fix};

pub use crate::checks::Diagnosis;

/// A failure calico-node (or a part of Calico) states about itself, known by what real
/// Calico prints, each with the root cause it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// calico-node's user cannot use the run directory: the incident. Its report's own
    /// wording, BIRD's `Cannot create control socket …: Permission denied`, and the
    /// readiness probe's `connect: permission denied` on the control socket.
    RunDirDenied,
    /// BIRD's `Cannot create control socket …: Address in use`: a socket left from before
    /// the reboot, or another BIRD still running (projectcalico/calico #3399).
    SocketInUse,
    /// The readiness probe's `unable to connect to BIRDv4 socket … connection refused`:
    /// BIRD is not running in calico-node (projectcalico/calico #9638, #6860).
    BirdNotRunning,
    /// Non-privileged mode's init container: `Unable to chown /var/lib/calico/`
    /// (projectcalico/calico #7653).
    ChownFailed,
    /// The CNI plugin's `stat /var/lib/calico/nodename: no such file or directory`:
    /// calico-node has not written its nodename, so it is not running on the node
    /// (rancher/elemental #218).
    NoNodename,
}

/// Who said a line: calico-node at an error level, BIRD itself, the readiness or
/// liveness probe (from the pod's events), or the CNI plugin (a pod's sandbox events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaker {
    Calico,
    Bird,
    Probe,
    Cni,
}

/// The signatures, and who must say them: a marker counts only in a line of its own
/// speaker, so an INFO line or an env value echoed at startup never matches.
const SIGNATURES: &[(Speaker, &str, Signature)] = &[
    // The incident report's own wording.
    (
        Speaker::Calico,
        "permission denied on /var/run/calico",
        Signature::RunDirDenied,
    ),
    (
        Speaker::Calico,
        "permission denied on /run/calico",
        Signature::RunDirDenied,
    ),
    (
        Speaker::Calico,
        "Failed to initialize BIRD",
        Signature::RunDirDenied,
    ),
    (
        Speaker::Calico,
        "Unable to chown /var/lib/calico",
        Signature::ChownFailed,
    ),
    (
        Speaker::Bird,
        "Cannot create control socket",
        Signature::SocketInUse,
    ),
    (
        Speaker::Probe,
        "unable to connect to BIRDv4 socket",
        Signature::BirdNotRunning,
    ),
    (
        Speaker::Probe,
        "unable to connect to BIRDv6 socket",
        Signature::BirdNotRunning,
    ),
    (
        Speaker::Cni,
        "stat /var/lib/calico/nodename: no such file or directory",
        Signature::NoNodename,
    ),
];

/// What a line from `speaker` says, if it is a known signature. A control socket that
/// is refused for permission is the incident's, whoever says it.
fn signature_in(speaker: Speaker, line: &str) -> Option<Signature> {
    // The CNI plugin's words follow the kubelet's `plugin type="calico" failed`.
    let line = match speaker {
        Speaker::Cni => line.split_once("plugin type=\"calico\" failed")?.1,
        _ => line,
    };
    let (_, _, signature) = SIGNATURES
        .iter()
        .find(|(who, marker, _)| *who == speaker && line.contains(marker))?;
    let denied = line.to_ascii_lowercase().contains("permission denied");
    Some(match signature {
        Signature::SocketInUse | Signature::BirdNotRunning if denied => Signature::RunDirDenied,
        Signature::SocketInUse if !line.contains("Address in use") => Signature::BirdNotRunning,
        other => *other,
    })
}

/// The signature a reported line carries (a line `fatal_calico_log_line`,
/// `fatal_probe_event` or `cni_failure` returned).
pub fn signature_of(line: &str) -> Option<Signature> {
    [Speaker::Calico, Speaker::Bird, Speaker::Probe, Speaker::Cni]
        .into_iter()
        .find_map(|speaker| signature_in(speaker, line))
}

/// Whether a calico-node log line is calico-node's own at FATAL, ERROR or PANIC level:
/// Calico's format (`2026-12-01 10:00:00.000 [FATAL][1] file.go 12: …`, the level the
/// first bracket after the timestamp) or logrus' (`level=fatal` as a key of its own,
/// not inside a quoted value).
fn at_error_level(line: &str) -> bool {
    let error = |level: &str| {
        ["fatal", "error", "panic"]
            .iter()
            .any(|l| level.eq_ignore_ascii_case(l))
    };
    if let Some(open) = line.find('[') {
        let timestamp = &line[..open];
        if timestamp
            .chars()
            .all(|c| c.is_ascii_digit() || " -:.TZ+".contains(c))
        {
            let level = line[open + 1..].split(']').next().unwrap_or_default();
            return error(level);
        }
    }
    logfmt_value(line, "level").is_some_and(error)
}

/// The value of `key` in a logfmt line (`time="…" level=fatal msg="…"`), reading quoted
/// values whole, so a `level=fatal` inside one is not a key.
fn logfmt_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        let end = rest.find(['=', ' ']).unwrap_or(rest.len());
        let name = &rest[..end];
        rest = &rest[end..];
        let value = match rest.strip_prefix('=') {
            Some(after) if after.starts_with('"') => {
                let body = &after[1..];
                let mut close = None;
                let mut escaped = false;
                for (i, c) in body.char_indices() {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '"' => {
                            close = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let close = close?;
                rest = &body[close + 1..];
                &body[..close]
            }
            Some(after) => {
                let end = after.find(' ').unwrap_or(after.len());
                rest = &after[end..];
                &after[..end]
            }
            None => "",
        };
        if name == key {
            return Some(value);
        }
        rest = rest.trim_start();
    }
    None
}

/// BIRD's own line, as it prints it in calico-node's log: `bird: …`.
fn bird_line(line: &str) -> bool {
    line.trim_start().starts_with("bird: ")
}

/// The last known fatal line in a calico-node log (the log of the container's last
/// run): a signature in calico-node's own line at FATAL, ERROR or PANIC level, or in
/// BIRD's own. The last, because what a dying container says last is why it died.
pub fn fatal_calico_log_line(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .find(|line| {
            (at_error_level(line) && signature_in(Speaker::Calico, line).is_some())
                || (bird_line(line) && signature_in(Speaker::Bird, line).is_some())
        })
        .map(|l| l.trim().to_string())
}

/// A probe failure as the kubelet reports it in a pod's event (reason `Unhealthy`):
/// the message, and when it was last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeEvent {
    pub message: String,
    pub last_seen: Option<k8s_openapi::jiff::Timestamp>,
}

/// The newest known signature among calico-node's probe failures since `since` (the
/// start of its current container): only the probe's own output counts, the text after
/// the kubelet's `Readiness probe failed: ` (or `Liveness …`), and it must be Calico's
/// `calico/node is not ready: BIRD is not ready: …`.
pub fn fatal_probe_event(
    events: &[ProbeEvent],
    since: Option<k8s_openapi::jiff::Timestamp>,
) -> Option<String> {
    let mut recent: Vec<&ProbeEvent> = events
        .iter()
        .filter(|e| match (since, e.last_seen) {
            (Some(since), Some(seen)) => seen >= since,
            (Some(_), None) => false,
            (None, _) => true,
        })
        .collect();
    recent.sort_by_key(|e| e.last_seen);
    recent
        .into_iter()
        .rev()
        .find(|e| {
            let output = ["Readiness probe failed: ", "Liveness probe failed: "]
                .iter()
                .find_map(|p| e.message.strip_prefix(p));
            output.is_some_and(|o| {
                o.trim_start()
                    .starts_with("calico/node is not ready: BIRD is not ready:")
                    && signature_in(Speaker::Probe, o).is_some()
            })
        })
        .map(|e| e.message.trim().to_string())
}

/// The CNI plugin's known failure in why a pod did not start (a sandbox event's message
/// or a waiting reason), for the node whose pods it could not wire.
pub fn cni_failure(why: &[String]) -> Option<&str> {
    why.iter()
        .map(String::as_str)
        .find(|w| signature_in(Speaker::Cni, w).is_some())
}

/// What the diagnosis can use; each piece is optional because collection may fail.
#[derive(Debug, Clone)]
pub struct Findings {
    pub node: String,
    /// How to reach the node, for the remediation commands.
    pub shell: NodeShell,
    pub calico_pod: Option<String>,
    pub calico_namespace: String,
    pub fatal_log_line: Option<String>,
    pub run_dir: Option<RunDirStat>,
    pub run_dir_missing: bool,
    /// Some(None): the file does not exist.
    pub tmpfiles_content: Option<Option<String>>,
    /// `systemd-tmpfiles --cat-config`, where it was read beside a declared file: the
    /// other files, one of which may override the declared entry.
    pub merged_tmpfiles: Option<String>,
}

impl Findings {
    /// Nothing collected yet about `node`.
    pub fn new(node: &str, shell: NodeShell, calico_namespace: &str) -> Self {
        Findings {
            node: node.into(),
            shell,
            calico_pod: None,
            calico_namespace: calico_namespace.into(),
            fatal_log_line: None,
            run_dir: None,
            run_dir_missing: false,
            tmpfiles_content: None,
            merged_tmpfiles: None,
        }
    }
}

/// How the node's tmpfiles.d configuration is put right without losing an entry that
/// was not found wrong: the wanted line goes into the fix's own file (the declared one,
/// or the run directory's own), and each line that contradicts it is taken out of the
/// file it is in, that line and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TmpfilesRepair {
    /// The entry's file; the wanted line goes in when `add`.
    file: String,
    add: bool,
    /// Each contradicting line as its file has it, and that file (None: the merged
    /// configuration did not say which).
    remove: Vec<(Option<String>, String)>,
    /// The file whose entry makes the directory once the fix is done.
    effective: String,
}

/// Directory entries for the run directory, as systemd-tmpfiles would apply them.
fn run_dir_entries(text: &str, expected: &CalicoExpectations) -> Vec<TmpfilesEntry> {
    let run_dir = canonical_run_path(&expected.run_dir);
    crate::checks::parse_tmpfiles(text)
        .into_iter()
        .filter(|e| {
            canonical_run_path(&e.path) == run_dir
                && matches!(e.kind.trim_end_matches('!'), "d" | "D" | "v" | "q" | "Q")
        })
        .collect()
}

/// Whether the tmpfiles.d configuration the findings carry is wrong, and its repair.
fn tmpfiles_repair(
    findings: &Findings,
    expected: &CalicoExpectations,
) -> Option<(bool, TmpfilesRepair)> {
    use crate::checks::{judge_node_tmpfiles, judge_tmpfiles, Verdict};
    let own = expected.tmpfiles_file();
    match (&findings.tmpfiles_content, &expected.tmpfiles) {
        (Some(content), Some(declared)) => {
            let want = declared
                .line
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let mine = content
                .as_deref()
                .map(crate::checks::parse_tmpfiles)
                .unwrap_or_default();
            // The other files: whatever they say about the directory contradicts the
            // declared entry, whether it comes before it (and wins) or after.
            let others: Vec<TmpfilesEntry> = findings
                .merged_tmpfiles
                .as_deref()
                .map(|m| run_dir_entries(m, expected))
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.source.as_deref() != Some(own.as_str()) && e.line != want)
                .collect();
            // In the declared file, any other line for the directory contradicts it.
            let contradicting: Vec<&TmpfilesEntry> = mine
                .iter()
                .filter(|e| {
                    canonical_run_path(&e.path) == canonical_run_path(&expected.run_dir)
                        && e.line != want
                })
                .collect();
            let wrong = judge_tmpfiles(content.as_deref(), declared, &expected.run_dir).0
                != Verdict::Passed
                || !others.is_empty();
            let mut remove: Vec<(Option<String>, String)> = contradicting
                .into_iter()
                .map(|e| (Some(own.clone()), e.raw.clone()))
                .collect();
            remove.extend(others.into_iter().map(|e| (e.source, e.raw)));
            Some((
                wrong,
                TmpfilesRepair {
                    add: !mine.iter().any(|e| e.line == want),
                    file: own.clone(),
                    remove,
                    effective: own,
                },
            ))
        }
        (Some(Some(merged)), None) => {
            let wrong = matches!(judge_node_tmpfiles(merged, expected).0, Verdict::Failed(_));
            let entries = run_dir_entries(merged, expected);
            let good = |e: &TmpfilesEntry| {
                e.stat()
                    .is_ok_and(|stat| expected.judge_access(&stat).is_ok())
            };
            let first_good = entries.iter().find(|e| good(e));
            Some((
                wrong,
                TmpfilesRepair {
                    add: first_good.is_none(),
                    effective: first_good
                        .and_then(|e| e.source.clone())
                        .unwrap_or_else(|| own.clone()),
                    file: own,
                    remove: entries
                        .iter()
                        .filter(|e| !good(e))
                        .map(|e| (e.source.clone(), e.raw.clone()))
                        .collect(),
                },
            ))
        }
        _ => None,
    }
}

impl TmpfilesRepair {
    /// What is wrong with the configuration, in words.
    fn describe(&self, expected: &CalicoExpectations) -> String {
        let mut said = Vec::new();
        if self.add {
            said.push(format!(
                "{} no longer has `{}`",
                self.file,
                expected.tmpfiles_line()
            ));
        }
        for (file, line) in &self.remove {
            let line = line.trim();
            said.push(match file {
                Some(file) if *file == self.file => format!("{file} has `{line}` instead"),
                Some(file) => format!(
                    "{file} has an entry for {} of its own, `{line}`",
                    expected.run_dir
                ),
                None => format!(
                    "a tmpfiles.d file has an entry for {} of its own, `{line}`",
                    expected.run_dir
                ),
            });
        }
        said.join("; ")
    }

    /// Each contradicting line taken out of its file (sed deletes that exact line), the
    /// wanted line appended to the entry's file, then the directory made as it says.
    fn fixes(&self, shell: &NodeShell, expected: &CalicoExpectations) -> Vec<Fix> {
        let append = || {
            Command::new("tee")
                .arg("-a")
                .operands([self.file.as_str()])
                .as_root()
                .fed([expected.tmpfiles_line()])
        };
        let mut files: Vec<&str> = Vec::new();
        for (file, _) in &self.remove {
            if let Some(file) = file.as_deref().filter(|f| !files.contains(f)) {
                files.push(file);
            }
        }
        let mut fixes = Vec::new();
        for file in &files {
            let mut sed = Command::new("sed").arg("-i");
            for (_, line) in self
                .remove
                .iter()
                .filter(|(f, _)| f.as_deref() == Some(file))
            {
                sed = sed.arg("-e").arg(format!("{}d", whole_line_pattern(line)));
            }
            let mut commands = vec![sed.operands([*file]).as_root()];
            if self.add && *file == self.file {
                commands.push(append());
            }
            fixes.push(Fix::on(shell, commands));
        }
        for (_, line) in self.remove.iter().filter(|(f, _)| f.is_none()) {
            fixes.push(Fix::note(format!(
                "take the line {} out of the tmpfiles.d file that has it (systemd-tmpfiles --cat-config shows which)",
                line.trim()
            )));
        }
        if self.add && !files.contains(&self.file.as_str()) {
            fixes.push(Fix::on(shell, [append()]));
        }
        fixes.push(Fix::on(
            shell,
            [Command::new("systemd-tmpfiles")
                .arg("--create")
                .operands([self.effective.as_str()])
                .as_root()],
        ));
        fixes
    }
}

/// Deletes the calico-node pod of the node, so its DaemonSet starts it again on the
/// repaired directory.
fn delete_calico_pod(findings: &Findings, expected: &CalicoExpectations) -> Fix {
    let kubectl = Command::new("kubectl").args(["-n", &findings.calico_namespace]);
    Fix::here([match &findings.calico_pod {
        Some(pod) => kubectl.args(["delete", "pod"]).operands([pod.as_str()]),
        None => kubectl.args([
            "delete",
            "pod",
            "-l",
            &expected.selector,
            "--field-selector",
            &format!("spec.nodeName={}", findings.node),
        ]),
    }])
}

pub fn diagnose(findings: &Findings, expected: &CalicoExpectations) -> Option<Diagnosis> {
    let run_dir_wrong = findings.run_dir_missing
        || findings
            .run_dir
            .as_ref()
            .is_some_and(|s| expected.judge_access(s).is_err());
    let signature = findings.fatal_log_line.as_deref().and_then(signature_of);
    let permission_denied = signature == Some(Signature::RunDirDenied);
    let repair = tmpfiles_repair(findings, expected).filter(|(wrong, _)| *wrong);
    let shell = &findings.shell;
    let observed = findings
        .run_dir
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_else(|| "missing".into());
    if let (true, Some((_, repair))) = (permission_denied || run_dir_wrong, &repair) {
        return Some(Diagnosis {
            root_cause: format!(
                "the tmpfiles.d entry for Calico was replaced (package update?): {}, so at boot systemd-tmpfiles made {} as {observed} and calico-node ({}) cannot use it",
                repair.describe(expected), expected.run_dir, expected.user()
            ),
            remediation: [
                repair.fixes(shell, expected),
                vec![delete_calico_pod(findings, expected)],
            ]
            .concat(),
            prevention: Some(format!(
                "put {} into node provisioning (configuration management owns it, the OS package does not), and run `postflight drift` before every rolling update: every node updated with the same package carries the same fault until its next reboot",
                repair.file
            )),
        });
    }
    if permission_denied || run_dir_wrong {
        let want = expected.wanted_stat();
        return Some(Diagnosis {
            root_cause: format!(
                "{} is {observed} (expected {}) although its tmpfiles.d entry is right: something changed it after boot",
                expected.run_dir,
                expected.wanted()
            ),
            remediation: vec![
                Fix::on(
                    shell,
                    [Command::new("install")
                        .args(["-d", "-m", &format!("0{}", want.mode)])
                        .args(["-o", &want.uid.to_string(), "-g", &want.gid.to_string()])
                        .operands([expected.run_dir.as_str()])
                        .as_root()],
                ),
                delete_calico_pod(findings, expected),
            ],
            prevention: Some("find what changes the directory's mode or owner after boot (a hardening script, a security agent)".into()),
        });
    }
    let line = findings.fatal_log_line.as_deref().unwrap_or_default();
    signature.and_then(|signature| diagnose_signature(signature, line, findings, expected))
}

/// BIRD's control socket, in calico-node's run directory.
fn bird_socket(expected: &CalicoExpectations) -> String {
    format!("{}/bird.ctl", expected.run_dir.trim_end_matches('/'))
}

/// calico-node's own words, where the host state the checks read is right.
fn diagnose_signature(
    signature: Signature,
    line: &str,
    findings: &Findings,
    expected: &CalicoExpectations,
) -> Option<Diagnosis> {
    let node = &findings.node;
    let shell = &findings.shell;
    let socket = bird_socket(expected);
    let logs = || {
        let kubectl = Command::new("kubectl").args(["-n", &findings.calico_namespace, "logs"]);
        Fix::here([match &findings.calico_pod {
            Some(pod) => kubectl.operands([pod.as_str()]).args(["--tail", "100"]),
            None => kubectl.args([
                "-l",
                &expected.selector,
                "--field-selector",
                &format!("spec.nodeName={node}"),
                "--tail",
                "100",
            ]),
        }])
    };
    match signature {
        Signature::SocketInUse => Some(Diagnosis {
            root_cause: format!(
                "BIRD cannot create its control socket {socket} on {node}: it is in use, by a socket file left from before the reboot (the run directory outlived the boot, so it is not on /run's tmpfs) or by another BIRD still running (calico-node said: {line})"
            ),
            remediation: vec![
                Fix::on(shell, [Command::new("pgrep").args(["-a", "bird"])])
                    .commented("another BIRD still running? stop it first"),
                Fix::on(
                    shell,
                    [Command::new("rm").arg("-f").operands([socket.as_str()]).as_root()],
                )
                .commented("only when no BIRD runs: the socket is left from before the reboot"),
                delete_calico_pod(findings, expected),
            ],
            prevention: Some(format!(
                "keep {} on /run (a tmpfs), so that every boot starts without a socket in it",
                expected.run_dir
            )),
        }),
        Signature::BirdNotRunning => Some(Diagnosis {
            root_cause: format!(
                "calico-node's readiness probe cannot reach BIRD on its control socket {socket} on {node}: BIRD is not running in calico-node (it did not start, or died), so no routes are exchanged; BIRD's own error is in calico-node's log (the probe said: {line})"
            ),
            remediation: vec![
                logs().filtered(Command::new("grep").args(["-i", "bird"])),
                Fix::on(
                    shell,
                    [Command::new("birdcl")
                        .args(["-s", &socket, "show", "status"])
                        .as_root()],
                )
                .commented("does BIRD answer on the node?"),
            ],
            prevention: None,
        }),
        Signature::ChownFailed => {
            let want = expected.wanted_stat();
            Some(Diagnosis {
                root_cause: format!(
                    "calico-node runs non-privileged, and its init container could not chown /var/lib/calico/ on {node} to calico-node's user ({}): calico-node cannot write its state there (it said: {line})",
                    expected.user()
                ),
                remediation: vec![
                    Fix::on(
                        shell,
                        [Command::new("stat")
                            .args(["-c", "%a %u %g", "/var/lib/calico"])
                            .as_root()],
                    )
                    .commented("who owns it now?"),
                    Fix::on(
                        shell,
                        [Command::new("chown")
                            .arg("-R")
                            .arg(format!("{}:{}", want.uid, want.gid))
                            .operands(["/var/lib/calico"])
                            .as_root()],
                    ),
                    delete_calico_pod(findings, expected),
                ],
                prevention: Some(
                    "give the init container of non-privileged mode what Calico's manifest gives it (it runs as root with CAP_CHOWN), or provision /var/lib/calico owned by calico-node's user"
                        .into(),
                ),
            })
        }
        // Diagnosed where the CNI plugin says it: the probe pods it could not wire.
        Signature::RunDirDenied | Signature::NoNodename => None,
    }
}

/// The incident's time bomb on a node that has not rebooted yet: its tmpfiles.d entry
/// is wrong, so the next boot makes the run directory unusable for calico-node.
pub fn diagnose_drift(findings: &Findings, expected: &CalicoExpectations) -> Option<Diagnosis> {
    let (_, repair) = tmpfiles_repair(findings, expected)?;
    let node = &findings.node;
    let what = repair.describe(expected);
    let file = &repair.file;
    Some(Diagnosis {
        root_cause: format!(
            "{file} on {node} will not recreate {} as calico-node needs it (package update?){}: the node works now and breaks at its next reboot",
            expected.run_dir,
            if what.is_empty() { String::new() } else { format!(": {what}") }
        ),
        remediation: repair.fixes(&findings.shell, expected),
        prevention: Some(format!(
            "put {file} into node provisioning, so that an OS package cannot replace it unnoticed, and keep `postflight drift` in the rolling update before each reboot"
        )),
    })
}

/// A BGP peer of the node under test: who it is and how an engineer reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpPeer {
    pub node: String,
    pub address: std::net::IpAddr,
    pub shell: NodeShell,
}

/// The peer address in the name Calico gives a BIRD session: `Mesh_10_20_0_12` for the
/// node-to-node mesh, `Node_…` and `Global_…` for explicit peers.
pub fn session_peer_address(session: &str) -> Option<std::net::IpAddr> {
    let rest = ["Mesh_", "Node_", "Global_"]
        .iter()
        .find_map(|prefix| session.strip_prefix(prefix))?;
    rest.replace('_', ".").parse().ok()
}

/// BGP sessions that are not Established: pod routes are not exchanged, so cross-node pod
/// traffic fails while same-node traffic works. When every session of the node is down,
/// the fault is the node's own; when only some are, it is on the far side of those —
/// typically a peer whose firewall drops TCP 179 — and the fix goes to that peer.
pub fn diagnose_bgp(
    node: &str,
    shell: &NodeShell,
    show_protocols: &str,
    peers: &[BgpPeer],
    expected: &CalicoExpectations,
) -> Option<Diagnosis> {
    let sessions = crate::checks::parse_bgp_sessions(show_protocols);
    let down: Vec<&crate::checks::BgpSession> =
        sessions.iter().filter(|s| !s.established()).collect();
    if down.is_empty() {
        return None;
    }
    let described: Vec<String> = down
        .iter()
        .map(|s| format!("{} ({})", s.name, format!("{} {}", s.state, s.info).trim()))
        .collect();
    let socket = bird_socket(expected);
    let birdcl = |what: &[&str]| {
        Command::new("birdcl")
            .args(["-s", &socket])
            .args(what.iter().copied())
            .as_root()
    };
    // The firewall's rules are read on the node, and searched on the engineer's side.
    let firewall = |shell: &NodeShell| {
        Fix::on(
            shell,
            [
                Command::new("iptables").arg("-S").as_root(),
                Command::new("nft").args(["list", "ruleset"]).as_root(),
            ],
        )
        .keep_going()
        .filtered(Command::new("grep").args(["-w", "179"]))
        .commented("a firewall dropping BGP (TCP 179)?")
    };
    let logs = |on: &str| {
        Fix::here([Command::new("kubectl").args([
            "-n",
            &expected.namespace,
            "logs",
            "-l",
            &expected.selector,
            "--field-selector",
            &format!("spec.nodeName={on}"),
            "--tail",
            "50",
        ])])
    };
    let culprits: Vec<&BgpPeer> = down
        .iter()
        .filter_map(|s| session_peer_address(&s.name))
        .filter_map(|address| peers.iter().find(|p| p.address == address))
        .collect();
    let some_established = down.len() < sessions.len();
    if some_established && !culprits.is_empty() {
        let names: Vec<&str> = culprits.iter().map(|p| p.node.as_str()).collect();
        let mut remediation = Vec::new();
        for peer in &culprits {
            remediation.push(firewall(&peer.shell));
            remediation.push(
                Fix::on(&peer.shell, [birdcl(&["show", "protocols"])]).commented(format!(
                    "does {} see its session to {node} down too?",
                    peer.node
                )),
            );
            remediation.push(logs(&peer.node));
        }
        return Some(Diagnosis {
            root_cause: format!(
                "BGP between {node} and {} is down ({}) while {node}'s other {} sessions are Established: the fault is on {}'s side, not {node}'s, so pod routes to and from it are not exchanged",
                names.join(", "),
                described.join(", "),
                sessions.len() - down.len(),
                names.join(", ")
            ),
            remediation,
            prevention: Some(
                "allow TCP 179 between all nodes in the host firewall baseline, and alert on calico-node's BGP peer state".into(),
            ),
        });
    }
    Some(Diagnosis {
        root_cause: format!(
            "BGP is not established on {node}: {} of {} sessions are down ({}), so its pod routes are not exchanged with its peers",
            down.len(),
            sessions.len(),
            described.join(", ")
        ),
        remediation: vec![
            Fix::on(shell, [birdcl(&["show", "protocols", "all"])])
                .commented("why each session is down"),
            firewall(shell),
            logs(node),
        ],
        prevention: Some(
            "allow TCP 179 between all nodes in the host firewall baseline, and alert on calico-node's BGP peer state".into(),
        ),
    })
}

/// Probe pods that never started: the network was not tested at all, and the cause is
/// usually the probe image (not mirrored into an air-gapped registry) or scheduling.
pub fn diagnose_probes(
    node: &str,
    namespace: &str,
    image: &str,
    why: &[String],
) -> Option<Diagnosis> {
    if why.is_empty() {
        return None;
    }
    if let Some(said) = cni_failure(why) {
        return Some(Diagnosis {
            root_cause: format!(
                "the CNI plugin cannot wire pods on {node}: calico-node has not written /var/lib/calico/nodename there, so it is not running on {node} (or has not started, or does not mount /var/lib/calico); the pod network of {node} was not tested ({said})"
            ),
            remediation: vec![
                Fix::here([Command::new("kubectl").args([
                    "get",
                    "pods",
                    "-A",
                    "-o",
                    "wide",
                    "--field-selector",
                    &format!("spec.nodeName={node}"),
                ])])
                .commented("is calico-node there, and Running?"),
                Fix::here([Command::new("kubectl").args(["get", "daemonsets", "-A"])])
                    .filtered(Command::new("grep").arg("calico-node"))
                    .commented("does its DaemonSet schedule on this node?"),
            ],
            prevention: Some("keep calico-node's DaemonSet tolerating every node taint, so that it runs on every node pods are scheduled to".into()),
        });
    }
    let image_trouble = why
        .iter()
        .any(|w| w.contains("ErrImagePull") || w.contains("ImagePullBackOff"));
    let root_cause = if image_trouble {
        format!("postflight's probe pods could not pull {image}: the pod network of {node} was not tested ({})", why.join("; "))
    } else {
        format!(
            "postflight's probe pods did not start: the pod network of {node} was not tested ({})",
            why.join("; ")
        )
    };
    let kubectl = || Command::new("kubectl").args(["-n", namespace]);
    Some(Diagnosis {
        root_cause,
        remediation: vec![
            Fix::here([kubectl().args(["get", "events", "--sort-by=.lastTimestamp"])])
                .filtered(Command::new("tail").arg("-20")),
            Fix::here([kubectl().args(["describe", "pods"])]),
            Fix::note(format!("if the cluster cannot reach registry.k8s.io, mirror {image} and set probe.image in the inventory")),
        ],
        prevention: Some("keep the probe image in the cluster's own registry, next to the images the nodes run".into()),
    })
}

/// A node the pod mesh blames while calico-node on it is Ready and its BGP sessions are
/// Established: Calico's control plane is fine, so what drops the pods' packets is on
/// the node's datapath — a host firewall's forwarding rules most often (Docker's FORWARD
/// policy of DROP is the classic), matching the pods' `cali*` interfaces.
pub fn diagnose_datapath(
    node: &str,
    shell: &NodeShell,
    implicated: &crate::checks::Implicated,
) -> Diagnosis {
    Diagnosis {
        root_cause: format!(
            "calico-node on {node} is Ready and its BGP sessions are Established, yet {}: the fault is in {node}'s datapath (a host firewall or filter rule dropping forwarded pod traffic on its cali* interfaces), not in Calico's control plane",
            implicated.describe()
        ),
        remediation: vec![
            // The rules are read on the node, and searched on the engineer's side.
            Fix::on(
                shell,
                [
                    Command::new("nft").args(["list", "ruleset"]).as_root(),
                    Command::new("iptables").args(["-S", "FORWARD"]).as_root(),
                ],
            )
            .keep_going()
            .filtered(Command::new("grep").args(["-nE", "cali|policy|drop|DROP"]))
            .commented("the rule or policy dropping forwarded pod traffic"),
            Fix::on(shell, [Command::new("ip").args(["-4", "route"]).as_root()])
                .commented("each local pod has a /32 route on its own cali interface"),
        ],
        prevention: Some(
            "keep the host firewall baseline from filtering forwarded traffic on cali* interfaces (or set the FORWARD policy to ACCEPT where Docker sets DROP), and run `postflight mesh` nightly".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expectations::{CalicoUser, RunDirAccess, TmpfilesDeclaration};
    use crate::fix::paste::{assert_pastes_as_intended, Paste};
    use crate::inventory::{JumpHost, SshTarget};

    fn shell(user: &str, port: u16) -> NodeShell {
        crate::fix::paste::ssh(user, port, None)
    }

    fn rendered(diagnosis: &Diagnosis) -> Vec<String> {
        diagnosis.remediation.iter().map(Fix::render).collect()
    }

    /// The incident's log line, as the incident report has it.
    const INCIDENT_LOG: &str = "2026-12-01 10:00:00.000 [INFO][1] startup/startup.go 100: Early log level set to info\n2026-12-01 10:00:00.100 [FATAL][1] Failed to initialize BIRD: could not load existing routes — permission denied on /var/run/calico\n";

    fn incident(shell: NodeShell) -> Findings {
        Findings {
            calico_pod: Some("calico-node-x1".into()),
            fatal_log_line: fatal_calico_log_line(INCIDENT_LOG),
            run_dir: RunDirStat::parse("700 0 0"),
            tmpfiles_content: Some(Some(
                "# kept by the site\nx /run/calico/keep - - - -\nd /run/calico 0700 root root -\n"
                    .into(),
            )),
            ..Findings::new("k8s-worker-03", shell, "kube-system")
        }
    }

    #[test]
    fn a_node_without_ssh_is_fixed_through_kubectl_debug() {
        let shell =
            NodeShell::kubectl_debug("k8s-worker-03", "busybox:1.37.0", "postflight-node-shell");
        let diagnosis =
            diagnose(&incident(shell), &CalicoExpectations::default()).expect("a diagnosis");
        let prefix = "kubectl -n postflight-node-shell debug node/k8s-worker-03 -i --quiet --profile=sysadmin --image=busybox:1.37.0 -- chroot /host";
        assert_eq!(
            rendered(&diagnosis)[..2],
            [
                // Several commands are a shell's, and chroot runs programs: they get one.
                format!(
                    r#"{prefix} sh -c "sed -i -e '\\#^d /run/calico 0700 root root -\$#d' /etc/tmpfiles.d/calico.conf && printf '%s\\n' 'd /run/calico 0755 999 999 -' | tee -a /etc/tmpfiles.d/calico.conf""#
                ),
                format!("{prefix} systemd-tmpfiles --create /etc/tmpfiles.d/calico.conf"),
            ]
        );
    }

    #[test]
    fn the_incident_is_named_with_its_fix_and_prevention() {
        let diagnosis = diagnose(&incident(shell("ops", 22)), &CalicoExpectations::default())
            .expect("a diagnosis");
        assert!(
            diagnosis
                .root_cause
                .contains("tmpfiles.d entry for Calico was replaced (package update?): /etc/tmpfiles.d/calico.conf no longer has `d /run/calico 0755 999 999 -`; /etc/tmpfiles.d/calico.conf has `d /run/calico 0700 root root -` instead"),
            "{}",
            diagnosis.root_cause
        );
        assert_eq!(
            rendered(&diagnosis),
            [
                r#"ssh ops@10.20.0.13 "sudo sed -i -e '\\#^d /run/calico 0700 root root -\$#d' /etc/tmpfiles.d/calico.conf && printf '%s\\n' 'd /run/calico 0755 999 999 -' | sudo tee -a /etc/tmpfiles.d/calico.conf""#,
                "ssh ops@10.20.0.13 sudo systemd-tmpfiles --create /etc/tmpfiles.d/calico.conf",
                "kubectl -n kube-system delete pod calico-node-x1",
            ]
        );
        assert!(diagnosis.prevention.unwrap().contains("provisioning"));
    }

    /// An engineer's ssh that runs the remote command on this machine, as root would.
    fn local_ssh() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join("ssh");
        std::fs::write(
            &ssh,
            "#!/bin/sh\nwhile :; do case \"$1\" in -J|-p) shift 2;; --) shift; break;; *) break;; esac; done\nshift\nexec /bin/sh -c \"$*\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        dir
    }

    #[test]
    fn the_fix_keeps_every_entry_it_did_not_find_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("calico $(touch PWNED) 'x'.conf");
        let kept = "# kept by the site\nx /run/calico/keep - - - -\n";
        std::fs::write(&file, format!("{kept}d  /run/calico 0700 root root -\n")).unwrap();
        let expected = CalicoExpectations {
            tmpfiles: Some(TmpfilesDeclaration {
                file: file.display().to_string(),
                line: "d /run/calico 0755 999 999 -".into(),
            }),
            ..CalicoExpectations::default()
        };
        let findings = Findings {
            tmpfiles_content: Some(Some(std::fs::read_to_string(&file).unwrap())),
            ..incident(shell("root", 22))
        };
        let diagnosis = diagnose(&findings, &expected).expect("a diagnosis");
        let ssh = local_ssh();
        let edit = diagnosis.remediation[0].render();
        let status = std::process::Command::new("sh")
            .args(["-c", &edit])
            .current_dir(dir.path())
            .env("PATH", format!("{}:/usr/bin:/bin", ssh.path().display()))
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{edit}");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!("{kept}d /run/calico 0755 999 999 -\n"),
            "{edit}"
        );
        assert!(!dir.path().join("PWNED").exists());
    }

    /// calico-node as a hardened DaemonSet runs it (uid 999), with no entry declared.
    fn undeclared() -> CalicoExpectations {
        CalicoExpectations {
            access: RunDirAccess::UsableBy(CalicoUser {
                uid: 999,
                gid: Some(999),
                source: "runAsUser of DaemonSet kube-system/calico-node".into(),
            }),
            tmpfiles: None,
            ..CalicoExpectations::default()
        }
    }

    const ADVERSARY: &str = "/etc/tmpfiles.d/00-$(touch${IFS}PWNED)`id`';x.conf";

    #[test]
    fn a_file_that_overrides_the_entry_is_named_with_its_line_and_left_otherwise_alone() {
        let merged = format!(
            "# {ADVERSARY}\nd /run/calico 0700 root root -\nd /run/other 0755 - - -\n\n# /etc/tmpfiles.d/calico.conf\nd /run/calico 0755 999 999 -\n"
        );
        let findings = Findings {
            tmpfiles_content: Some(Some(merged)),
            ..incident(shell("ops", 22))
        };
        let diagnosis = diagnose(&findings, &undeclared()).expect("a diagnosis");
        assert!(
            diagnosis.root_cause.contains(&format!(
                "{ADVERSARY} has an entry for /var/run/calico of its own, `d /run/calico 0700 root root -`"
            )),
            "{}",
            diagnosis.root_cause
        );
        let edit = &diagnosis.remediation[0].commands;
        assert_eq!(
            edit[0].argv,
            [
                "sed",
                "-i",
                "-e",
                "\\#^d /run/calico 0700 root root -$#d",
                ADVERSARY
            ]
        );
        assert_eq!(edit.len(), 1, "nothing is written into the file: {edit:?}");
        assert_eq!(
            diagnosis.remediation[1].commands[0].argv,
            [
                "systemd-tmpfiles",
                "--create",
                "/etc/tmpfiles.d/calico.conf"
            ],
            "calico.conf's own entry is the one applied"
        );
        assert!(rendered(&diagnosis).iter().all(|f| !f.contains("tee")));
        let paste = Paste::new();
        for fix in &diagnosis.remediation {
            assert_pastes_as_intended(&paste, fix);
        }
    }

    #[test]
    fn without_any_good_entry_the_line_goes_into_calicos_own_file() {
        let merged = "# /usr/lib/tmpfiles.d/hardening.conf\nd /run/calico 0700 - - -\n";
        let findings = Findings {
            tmpfiles_content: Some(Some(merged.into())),
            ..incident(shell("ops", 22))
        };
        let diagnosis = diagnose(&findings, &undeclared()).expect("a diagnosis");
        let fixes = rendered(&diagnosis);
        assert_eq!(
            fixes[..3],
            [
                r#"ssh ops@10.20.0.13 sudo sed -i -e "'\\#^d /run/calico 0700 - - -\$#d'" /usr/lib/tmpfiles.d/hardening.conf"#,
                r#"ssh ops@10.20.0.13 "printf '%s\\n' 'd /run/calico 0755 999 999 -' | sudo tee -a /etc/tmpfiles.d/calico.conf""#,
                "ssh ops@10.20.0.13 sudo systemd-tmpfiles --create /etc/tmpfiles.d/calico.conf",
            ]
        );
    }

    #[test]
    fn remediation_reaches_the_node_as_the_inventory_does() {
        let diagnosis = diagnose(
            &incident(shell("root", 2222)),
            &CalicoExpectations::default(),
        )
        .expect("a diagnosis");
        assert_eq!(
            rendered(&diagnosis)[1],
            "ssh -p 2222 root@10.20.0.13 systemd-tmpfiles --create /etc/tmpfiles.d/calico.conf",
            "root needs no sudo; a port other than 22 is named"
        );
    }

    fn shell_through(jump: JumpHost, port: u16) -> NodeShell {
        NodeShell::of(&SshTarget {
            node: "k8s-worker-03".into(),
            host: "10.20.0.13".into(),
            port,
            user: "ops".into(),
            identity_file: None,
            known_hosts: "known_hosts".into(),
            become_method: None,
            jump: Some(jump),
        })
    }

    #[test]
    fn remediation_goes_through_the_bastion_the_inventory_names() {
        let bastion = JumpHost {
            user: "jump".into(),
            host: "bastion.example.com".into(),
            port: 22,
        };
        let diagnosis = diagnose(
            &incident(shell_through(bastion, 2222)),
            &CalicoExpectations::default(),
        )
        .expect("a diagnosis");
        assert_eq!(
            rendered(&diagnosis)[1],
            "ssh -J jump@bastion.example.com:22 -p 2222 ops@10.20.0.13 sudo systemd-tmpfiles --create /etc/tmpfiles.d/calico.conf"
        );
        let ipv6 = JumpHost {
            user: "jump".into(),
            host: "fd00::1".into(),
            port: 2200,
        };
        let diagnosis = diagnose(
            &incident(shell_through(ipv6, 22)),
            &CalicoExpectations::default(),
        )
        .expect("a diagnosis");
        let line = &rendered(&diagnosis)[1];
        assert!(
            line.starts_with("ssh -J 'jump@[fd00::1]:2200' ops@10.20.0.13 "),
            "brackets are quoted for the shell: {line}"
        );
        assert_pastes_as_intended(&Paste::new(), &diagnosis.remediation[1]);
    }

    const BIRD_DENIED: &str =
        "bird: Cannot create control socket /var/run/calico/bird.ctl: Permission denied";
    const BIRD_IN_USE: &str =
        "bird: Cannot create control socket /var/run/calico/bird.ctl: Address in use";
    const PROBE_REFUSED: &str = "Readiness probe failed: calico/node is not ready: BIRD is not ready: Error querying BIRD: unable to connect to BIRDv4 socket: dial unix /var/run/calico/bird.ctl: connect: connection refused";
    const PROBE_DENIED: &str = "Readiness probe failed: calico/node is not ready: BIRD is not ready: Error querying BIRD: unable to connect to BIRDv4 socket: dial unix /var/run/calico/bird.ctl: connect: permission denied";
    const CNI_NODENAME: &str = "FailedCreatePodSandBox: Failed to create pod sandbox: rpc error: code = Unknown desc = failed to setup network for sandbox \"0f3c\": plugin type=\"calico\" failed (add): stat /var/lib/calico/nodename: no such file or directory: check that the calico/node container is running and has mounted /var/lib/calico/";

    #[rstest::rstest]
    #[case::incident_report("2026-12-01 10:00:00.100 [FATAL][1] Failed to initialize BIRD: could not load existing routes — permission denied on /var/run/calico", Signature::RunDirDenied)]
    #[case::lab_stand_in("2026-12-02T05:46:39.123456789Z [FATAL][1] Failed to initialize BIRD: could not load existing routes — permission denied on /var/run/calico", Signature::RunDirDenied)]
    #[case::logrus("time=\"2026-12-01T10:00:00Z\" level=fatal msg=\"Failed to initialize BIRD: permission denied on /run/calico\"", Signature::RunDirDenied)]
    #[case::bird_denied(BIRD_DENIED, Signature::RunDirDenied)]
    #[case::bird_in_use(BIRD_IN_USE, Signature::SocketInUse)]
    #[case::chown("2026-12-01 10:00:00.000 [ERROR][1] hostpath-init/init.go 60: Unable to chown /var/lib/calico/: operation not permitted", Signature::ChownFailed)]
    #[case::chown_fatal(
        "2026-12-01 10:00:00.000 [FATAL][1] Unable to chown /var/lib/calico/",
        Signature::ChownFailed
    )]
    fn real_calicos_fatal_lines_are_recognised(#[case] line: &str, #[case] signature: Signature) {
        let log = format!("2026-12-01 10:00:00.000 [INFO][1] startup/startup.go 100: Early log level set to info\n{line}\n");
        assert_eq!(fatal_calico_log_line(&log).as_deref(), Some(line));
        assert_eq!(signature_of(line), Some(signature));
    }

    #[rstest::rstest]
    #[case::info_line("2026-12-01 10:00:00.000 [INFO][1] startup/startup.go 100: env CALICO_NOTE=permission denied on /var/run/calico")]
    #[case::warning("2026-12-01 10:00:00.000 [WARNING][1] Failed to initialize BIRD: permission denied on /var/run/calico")]
    #[case::bare_env_echo(
        "CALICO_NOTE=[FATAL] Failed to initialize BIRD: permission denied on /var/run/calico"
    )]
    #[case::level_inside_a_value("time=\"2026-12-01T10:00:00Z\" level=info msg=\"level=fatal permission denied on /var/run/calico\"")]
    #[case::bird_echoed_at_info("2026-12-01 10:00:00.000 [INFO][1] env NOTE=bird: Cannot create control socket /var/run/calico/bird.ctl: Address in use")]
    #[case::bird_info("bird: Mesh_10_20_0_12: State changed to up")]
    fn a_marker_outside_calicos_own_error_lines_does_not_count(#[case] line: &str) {
        assert_eq!(fatal_calico_log_line(line), None, "{line}");
    }

    #[test]
    fn the_reported_line_is_the_last_fatal_one_not_an_echo_before_it() {
        // The adversary's case: a DaemonSet env value echoed at startup, then the real
        // FATAL line. The echo once made the diagnosis "something changed it after boot".
        let log = format!(
            "2026-12-01 10:00:00.000 [INFO][1] startup/startup.go 100: CALICO_NOTE=permission denied on /var/run/calico\n\
             2026-12-01 10:00:01.000 [ERROR][1] Failed to initialize BIRD: could not load existing routes — permission denied on /run/calico\n\
             {BIRD_IN_USE}\n\
             2026-12-01 10:00:02.000 [INFO][1] shutting down\n"
        );
        assert_eq!(fatal_calico_log_line(&log).as_deref(), Some(BIRD_IN_USE));
        let findings = Findings {
            fatal_log_line: fatal_calico_log_line(&log),
            run_dir: RunDirStat::parse("755 999 999"),
            tmpfiles_content: Some(Some("d /run/calico 0755 999 999 -\n".into())),
            ..incident(shell("ops", 22))
        };
        let diagnosis = diagnose(&findings, &CalicoExpectations::default()).expect("a diagnosis");
        assert!(
            diagnosis.root_cause.contains("it is in use")
                && !diagnosis.root_cause.contains("changed it after boot"),
            "{}",
            diagnosis.root_cause
        );
        assert!(rendered(&diagnosis)[1].contains("rm -f /var/run/calico/bird.ctl"));
    }

    #[test]
    fn an_echoed_marker_alone_diagnoses_nothing() {
        let log = "2026-12-01 10:00:00.000 [INFO][1] startup/startup.go 100: CALICO_NOTE=permission denied on /var/run/calico\n";
        let findings = Findings {
            fatal_log_line: fatal_calico_log_line(log),
            run_dir: RunDirStat::parse("755 999 999"),
            tmpfiles_content: Some(Some("d /run/calico 0755 999 999 -\n".into())),
            ..incident(shell("ops", 22))
        };
        assert_eq!(findings.fatal_log_line, None);
        assert_eq!(diagnose(&findings, &CalicoExpectations::default()), None);
    }

    fn at(seconds: i64) -> Option<k8s_openapi::jiff::Timestamp> {
        Some(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + seconds).unwrap())
    }

    fn event(message: &str, seconds: i64) -> ProbeEvent {
        ProbeEvent {
            message: message.into(),
            last_seen: at(seconds),
        }
    }

    #[rstest::rstest]
    #[case::refused(PROBE_REFUSED, Signature::BirdNotRunning)]
    #[case::denied(PROBE_DENIED, Signature::RunDirDenied)]
    #[case::liveness(&PROBE_REFUSED.replace("Readiness", "Liveness"), Signature::BirdNotRunning)]
    fn a_probe_that_cannot_reach_birds_socket_is_recognised_from_events(
        #[case] message: &str,
        #[case] signature: Signature,
    ) {
        let line = fatal_probe_event(&[event(message, 10)], at(0));
        assert_eq!(line.as_deref(), Some(message));
        assert_eq!(signature_of(message), Some(signature));
    }

    #[test]
    fn only_the_probes_own_output_since_the_container_started_counts_and_the_newest_wins() {
        let before_start = event(PROBE_DENIED, -5);
        assert_eq!(fatal_probe_event(&[before_start], at(0)), None);
        let not_calicos = event(
            "Readiness probe failed: HTTP probe failed: note=unable to connect to BIRDv4 socket: permission denied",
            10,
        );
        assert_eq!(fatal_probe_event(&[not_calicos], at(0)), None);
        let not_a_probe = event(
            "Created container calico-node: calico/node is not ready: BIRD is not ready: unable to connect to BIRDv4 socket",
            10,
        );
        assert_eq!(fatal_probe_event(&[not_a_probe], at(0)), None);
        let newest = fatal_probe_event(&[event(PROBE_DENIED, 30), event(PROBE_REFUSED, 20)], at(0));
        assert_eq!(newest.as_deref(), Some(PROBE_DENIED));
    }

    #[test]
    fn a_probe_refused_by_bird_sends_the_engineer_to_birds_own_error() {
        let findings = Findings {
            fatal_log_line: Some(PROBE_REFUSED.into()),
            run_dir: RunDirStat::parse("755 999 999"),
            tmpfiles_content: Some(Some("d /run/calico 0755 999 999 -\n".into())),
            ..incident(shell("ops", 22))
        };
        let diagnosis = diagnose(&findings, &CalicoExpectations::default()).expect("a diagnosis");
        assert!(
            diagnosis
                .root_cause
                .contains("BIRD is not running in calico-node"),
            "{}",
            diagnosis.root_cause
        );
        assert_eq!(
            rendered(&diagnosis)[0],
            "kubectl -n kube-system logs calico-node-x1 --tail 100 | grep -i bird"
        );
        // The same probe refused for permission is the incident.
        let denied = Findings {
            fatal_log_line: Some(PROBE_DENIED.into()),
            ..incident(shell("ops", 22))
        };
        let diagnosis = diagnose(&denied, &CalicoExpectations::default()).expect("a diagnosis");
        assert!(diagnosis
            .root_cause
            .contains("tmpfiles.d entry for Calico was replaced"));
    }

    #[test]
    fn a_failed_chown_of_non_privileged_mode_is_named() {
        let findings = Findings {
            fatal_log_line: Some(
                "2026-12-01 10:00:00.000 [ERROR][1] Unable to chown /var/lib/calico/".into(),
            ),
            run_dir: RunDirStat::parse("755 999 999"),
            tmpfiles_content: Some(Some("d /run/calico 0755 999 999 -\n".into())),
            ..incident(shell("ops", 22))
        };
        let diagnosis = diagnose(&findings, &CalicoExpectations::default()).expect("a diagnosis");
        assert!(
            diagnosis.root_cause.contains("non-privileged"),
            "{}",
            diagnosis.root_cause
        );
        assert_eq!(
            rendered(&diagnosis)[1],
            "ssh ops@10.20.0.13 sudo chown -R 999:999 /var/lib/calico"
        );
    }

    #[test]
    fn the_cni_plugin_without_a_nodename_means_calico_node_is_not_running_there() {
        let diagnosis = diagnose_probes(
            "k8s-worker-03",
            "postflight-probe",
            "agnhost",
            &[
                "not Ready in time: container waiting: ContainerCreating".into(),
                CNI_NODENAME.into(),
            ],
        )
        .expect("a diagnosis");
        assert!(
            diagnosis
                .root_cause
                .contains("calico-node has not written /var/lib/calico/nodename there, so it is not running on k8s-worker-03"),
            "{}",
            diagnosis.root_cause
        );
        assert_eq!(signature_of(CNI_NODENAME), Some(Signature::NoNodename));
        let not_the_plugins =
            "not Ready in time: note=stat /var/lib/calico/nodename: no such file or directory";
        assert_eq!(cni_failure(&[not_the_plugins.into()]), None);
        assert_eq!(
            rendered(&diagnosis)[0],
            "kubectl get pods -A -o wide --field-selector spec.nodeName=k8s-worker-03   # is calico-node there, and Running?"
        );
    }

    /// Every diagnosis postflight can make, with every value a node or the cluster
    /// supplies made hostile, through every way onto a node.
    fn every_hostile_diagnosis() -> Vec<Diagnosis> {
        let hostile = "$(touch PWNED)`touch PWNED`;touch PWNED;'\"${IFS}\n-x";
        let shells = [
            NodeShell::Ssh {
                options: vec!["-J".into(), format!("j{hostile}@bastion:22")],
                destination: format!("o{hostile}@10.20.0.13"),
                root: false,
            },
            NodeShell::Ssh {
                options: vec![],
                destination: format!("-root{hostile}"),
                root: true,
            },
            NodeShell::kubectl_debug(hostile, hostile, hostile),
        ];
        let line = "d /run/calico 0700 root root - $(touch PWNED) `id` ';' \"x\" ${IFS}";
        let declared = CalicoExpectations {
            namespace: format!("-kube{hostile}"),
            selector: format!("k8s-app={hostile}"),
            tmpfiles: Some(TmpfilesDeclaration {
                file: format!("/etc/tmpfiles.d/{hostile}.conf"),
                line: "d /run/calico 0755 999 999 -".into(),
            }),
            ..CalicoExpectations::default()
        };
        let undeclared = CalicoExpectations {
            namespace: declared.namespace.clone(),
            selector: declared.selector.clone(),
            ..undeclared()
        };
        let strange_dir = CalicoExpectations {
            run_dir: format!("/var/run/calico{hostile}"),
            ..declared.clone()
        };
        let mut diagnoses = Vec::new();
        for shell in &shells {
            let base = Findings {
                calico_pod: Some(format!("-calico-node{hostile}")),
                calico_namespace: declared.namespace.clone(),
                fatal_log_line: Some("permission denied".into()),
                run_dir: RunDirStat::parse("700 0 0"),
                ..Findings::new(&format!("node{hostile}"), shell.clone(), "")
            };
            let cases = [
                // The declared file has a wrong line, and the adversary's file overrides it.
                (
                    Findings {
                        tmpfiles_content: Some(Some(format!("{line}\n"))),
                        merged_tmpfiles: Some(format!("# {ADVERSARY}\n{line}\n")),
                        ..base.clone()
                    },
                    &declared,
                ),
                // The declared file is missing, and the pod is not known.
                (
                    Findings {
                        tmpfiles_content: Some(None),
                        calico_pod: None,
                        ..base.clone()
                    },
                    &declared,
                ),
                // Nothing declared: the adversary's file has the entry, calico.conf none.
                (
                    Findings {
                        tmpfiles_content: Some(Some(format!("# {ADVERSARY}\n{line}\n"))),
                        ..base.clone()
                    },
                    &undeclared,
                ),
                // The entry is right and the directory is not.
                (
                    Findings {
                        tmpfiles_content: Some(Some("d /run/calico 0755 999 999 -\n".into())),
                        ..base.clone()
                    },
                    &declared,
                ),
                (base.clone(), &strange_dir),
            ];
            let healthy = Findings {
                run_dir: RunDirStat::parse("755 999 999"),
                tmpfiles_content: Some(Some("d /run/calico 0755 999 999 -\n".into())),
                ..base.clone()
            };
            for said in [
                BIRD_IN_USE.to_string(),
                PROBE_REFUSED.to_string(),
                "[ERROR][1] Unable to chown /var/lib/calico/".to_string(),
            ] {
                for calico_pod in [healthy.calico_pod.clone(), None] {
                    let findings = Findings {
                        fatal_log_line: Some(said.clone()),
                        calico_pod,
                        ..healthy.clone()
                    };
                    diagnoses.extend(diagnose(&findings, &strange_dir));
                }
            }
            for (findings, expected) in &cases {
                diagnoses.extend(diagnose(findings, expected));
                diagnoses.extend(diagnose_drift(findings, expected));
            }
            let peer = |address: &str| BgpPeer {
                node: format!("peer{hostile}"),
                address: address.parse().unwrap(),
                shell: shell.clone(),
            };
            let peers = [peer("10.20.0.11"), peer("10.20.0.12"), peer("10.20.0.14")];
            let all_down = SHOW_PROTOCOLS.replace("up     17:43:08.495  Established", "start");
            for protocols in [SHOW_PROTOCOLS, all_down.as_str()] {
                diagnoses.extend(diagnose_bgp(
                    &base.node,
                    shell,
                    protocols,
                    &peers,
                    &strange_dir,
                ));
            }
        }
        diagnoses.extend(diagnose_probes(
            "n",
            hostile,
            hostile,
            &["ErrImagePull".into()],
        ));
        diagnoses.extend(diagnose_probes(
            hostile,
            hostile,
            hostile,
            &[CNI_NODENAME.into()],
        ));
        for shell in &shells {
            diagnoses.push(diagnose_datapath(
                hostile,
                shell,
                &crate::checks::Implicated {
                    node: hostile.into(),
                    fault: crate::checks::Fault::BothWays,
                    failed_out: 1,
                    probed_out: 1,
                    failed_in: 1,
                    probed_in: 1,
                    or_else: vec![hostile.into()],
                },
            ));
        }
        diagnoses
    }

    #[test]
    fn every_fix_postflight_prints_pastes_as_exactly_its_words_whatever_the_node_says() {
        let diagnoses = every_hostile_diagnosis();
        // 3 shells × (4 host-state diagnoses, each twice but one, + 3 signatures with
        // and without the pod's name + 2 BGP + 1 datapath) + 2 for probes.
        assert_eq!(diagnoses.len(), 3 * (4 * 2 + 1 + 3 * 2 + 2 + 1) + 2);
        let paste = Paste::new();
        let mut fixes = 0;
        for diagnosis in &diagnoses {
            assert!(!diagnosis.remediation.is_empty(), "{diagnosis:?}");
            for fix in &diagnosis.remediation {
                assert_pastes_as_intended(&paste, fix);
                fixes += 1;
            }
        }
        assert!(fixes > 60, "{fixes}");
    }

    const SHOW_PROTOCOLS: &str = "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\n\
        device1    Device     ---        up     17:43:07.686\n\
        Mesh_10_20_0_11 BGP   ---        up     17:43:08.495  Established\n\
        Mesh_10_20_0_12 BGP   ---        start  17:43:08.604  Active        Socket: Connection timed out\n\
        Mesh_10_20_0_14 BGP   ---        up     17:43:08.495  Established\n";

    fn peers() -> Vec<BgpPeer> {
        [
            ("k8s-worker-01", "10.20.0.11"),
            ("k8s-worker-02", "10.20.0.12"),
            ("k8s-worker-04", "10.20.0.14"),
        ]
        .into_iter()
        .map(|(node, address)| BgpPeer {
            node: node.into(),
            address: address.parse().unwrap(),
            shell: NodeShell::of(&SshTarget {
                node: node.into(),
                host: address.into(),
                port: 22,
                user: "ops".into(),
                identity_file: None,
                known_hosts: "known_hosts".into(),
                become_method: None,
                jump: None,
            }),
        })
        .collect()
    }

    /// The BGP diagnosis of k8s-worker-03, reached as ops@10.20.0.13, with its peers.
    fn bgp_diagnosis(show_protocols: &str) -> Diagnosis {
        diagnose_bgp(
            "k8s-worker-03",
            &shell("ops", 22),
            show_protocols,
            &peers(),
            &CalicoExpectations::default(),
        )
        .expect("a diagnosis")
    }

    #[test]
    fn a_peer_that_drops_bgp_is_named_and_its_firewall_fixed_not_ours() {
        let diagnosis = bgp_diagnosis(SHOW_PROTOCOLS);
        assert!(
            diagnosis
                .root_cause
                .contains("BGP between k8s-worker-03 and k8s-worker-02 is down")
                && diagnosis.root_cause.contains("on k8s-worker-02's side"),
            "{}",
            diagnosis.root_cause
        );
        let fixes = rendered(&diagnosis);
        assert!(fixes[0].starts_with("ssh ops@10.20.0.12 "), "{fixes:?}");
        assert!(
            fixes.iter().all(|c| !c.contains("10.20.0.13")),
            "nothing points at the node under test: {fixes:?}"
        );
    }

    #[test]
    fn a_node_with_every_session_down_is_its_own_culprit() {
        let all_down = SHOW_PROTOCOLS.replace(
            "up     17:43:08.495  Established",
            "start  17:43:08.604  Active",
        );
        let diagnosis = bgp_diagnosis(&all_down);
        assert!(
            diagnosis
                .root_cause
                .contains("BGP is not established on k8s-worker-03: 3 of 3"),
            "{}",
            diagnosis.root_cause
        );
        assert!(rendered(&diagnosis)[0].starts_with("ssh ops@10.20.0.13 "));
    }

    #[test]
    fn calico_session_names_carry_the_peer_address() {
        assert_eq!(
            session_peer_address("Mesh_10_20_0_12"),
            Some("10.20.0.12".parse().unwrap())
        );
        assert_eq!(
            session_peer_address("Node_192_168_1_1"),
            Some("192.168.1.1".parse().unwrap())
        );
        assert_eq!(session_peer_address("device1"), None);
    }

    #[test]
    fn a_healthy_node_has_no_diagnosis() {
        let findings = Findings {
            run_dir: RunDirStat::parse("755 999 999"),
            tmpfiles_content: Some(Some("d /run/calico 0755 999 999 -".into())),
            ..Findings::new("n", shell("ops", 22), "kube-system")
        };
        assert_eq!(diagnose(&findings, &CalicoExpectations::default()), None);
    }
}
