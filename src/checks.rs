//! The checks: each turns what was observed on the cluster and the node into a verdict
//! with evidence (observed vs expected). They decide; they do no I/O, print nothing and
//! never exit, so every verdict is unit-testable. The names are stable: they are the
//! JUnit testcase names CI servers trend across runs.

use crate::diagnose::Diagnosis;
use crate::expectations::{CalicoExpectations, TmpfilesDeclaration};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde::Serialize;
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum CheckName {
    ClusterHealthyBeforeReboot,
    NodeDrained,
    NodeReadyAfterReboot,
    BootIdChanged,
    CalicoNodeReady,
    CalicoNodeNotCrashlooping,
    TmpfilesConfigPresent,
    RunDirPermissions,
    RunDirAfterNextBoot,
    BgpSessionsEstablished,
    SameNodePodConnectivity,
    CrossNodePodConnectivity,
}

impl CheckName {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::ClusterHealthyBeforeReboot => "cluster_healthy_before_reboot",
            CheckName::NodeDrained => "node_drained",
            CheckName::NodeReadyAfterReboot => "node_ready_after_reboot",
            CheckName::BootIdChanged => "boot_id_changed",
            CheckName::CalicoNodeReady => "calico_node_ready",
            CheckName::CalicoNodeNotCrashlooping => "calico_node_not_crashlooping",
            CheckName::TmpfilesConfigPresent => "tmpfiles_config_present",
            CheckName::RunDirPermissions => "run_dir_permissions",
            CheckName::RunDirAfterNextBoot => "run_dir_after_next_boot",
            CheckName::BgpSessionsEstablished => "bgp_sessions_established",
            CheckName::SameNodePodConnectivity => "same_node_pod_connectivity",
            CheckName::CrossNodePodConnectivity => "cross_node_pod_connectivity",
        }
    }

    /// The checks of `verify`, in report order.
    pub fn for_verify(reboot: bool) -> Vec<CheckName> {
        use CheckName::*;
        let mut names = if reboot {
            vec![
                ClusterHealthyBeforeReboot,
                NodeReadyAfterReboot,
                BootIdChanged,
            ]
        } else {
            vec![NodeReadyAfterReboot]
        };
        names.extend([
            CalicoNodeReady,
            CalicoNodeNotCrashlooping,
            TmpfilesConfigPresent,
            RunDirPermissions,
            SameNodePodConnectivity,
            CrossNodePodConnectivity,
        ]);
        names
    }
}

impl fmt::Display for CheckName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Passed; Failed — the node is broken; Error — the check could not run, so nothing is
/// known about what it checks (JUnit `<error>`, exit code 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "message", rename_all = "snake_case")]
pub enum Verdict {
    Passed,
    Failed(String),
    Error(String),
    /// Nothing to judge here, and why: not a pass, not a fault.
    Skipped(String),
}

/// What kind of trouble kept a check from running, for a CI server to sort errors by:
/// the JUnit `type` of an `<error>`, and `error_kind` in the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The API server could not be reached at all.
    Unreachable,
    /// The credentials were refused (401), or postflight may not do what it needs (403,
    /// a missing RBAC rule).
    Forbidden,
    /// Something the run needs does not exist (404): the node, calico-node's DaemonSet.
    NotFound,
    /// A deadline passed before the check could be decided.
    Timeout,
    /// The node could not be reached or used over SSH: connection, host key, login.
    Ssh,
    /// The run refused to act, or was refused: a degraded cluster, a reboot command that
    /// exited non-zero, an eviction a PodDisruptionBudget blocked.
    Refused,
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// The reboot lock lapsed while the run held it (an API outage longer than the
    /// lease, or another run took it over): the run stopped there.
    LockLost,
    /// Anything else; the message says what.
    Error,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Ssh => "ssh",
            ErrorKind::Refused => "refused",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::LockLost => "lock_lost",
            ErrorKind::Error => "error",
        }
    }

    /// The kind of an HTTP status the API server answered with.
    pub fn of_status(code: u16) -> Self {
        match code {
            401 | 403 => ErrorKind::Forbidden,
            404 => ErrorKind::NotFound,
            408 | 504 => ErrorKind::Timeout,
            409 | 422 | 429 => ErrorKind::Refused,
            _ => ErrorKind::Error,
        }
    }
}

/// Why something could not be observed: what kind of trouble, and what was said. The
/// typed errors of the cluster and host modules become this where a check records them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Unobserved {
    pub kind: ErrorKind,
    pub message: String,
}

impl Unobserved {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Unobserved {
            kind,
            message: message.into(),
        }
    }
}

impl From<&crate::cluster::ClusterError> for Unobserved {
    fn from(error: &crate::cluster::ClusterError) -> Self {
        Unobserved::new(error.kind(), error.to_string())
    }
}

impl From<&crate::host::HostError> for Unobserved {
    fn from(error: &crate::host::HostError) -> Self {
        Unobserved::new(error.kind(), error.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    pub what: String,
    pub observed: String,
    pub expected: String,
}

impl Evidence {
    pub fn new(
        what: impl Into<String>,
        observed: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        Evidence {
            what: what.into(),
            observed: observed.into(),
            expected: expected.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: CheckName,
    pub node: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub evidence: Vec<Evidence>,
    /// Further material for a reader: log tails, command output.
    pub details: Vec<String>,
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    pub diagnosis: Option<Diagnosis>,
    /// Set with an error verdict: why the check could not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64((duration.as_secs_f64() * 1000.0).round() / 1000.0)
}

impl CheckResult {
    pub fn new(
        name: CheckName,
        node: &str,
        verdict: Verdict,
        evidence: Vec<Evidence>,
        duration: Duration,
    ) -> Self {
        CheckResult {
            name,
            node: node.into(),
            verdict,
            evidence,
            details: Vec::new(),
            duration,
            diagnosis: None,
            error_kind: None,
        }
    }
    /// An error verdict for a check that could not run because of `why`.
    pub fn unobserved(name: CheckName, node: &str, why: &Unobserved, duration: Duration) -> Self {
        Self::error(name, node, why.kind, why.message.clone(), duration)
    }
    pub fn error(
        name: CheckName,
        node: &str,
        kind: ErrorKind,
        message: impl Into<String>,
        duration: Duration,
    ) -> Self {
        let mut result = Self::new(
            name,
            node,
            Verdict::Error(message.into()),
            Vec::new(),
            duration,
        );
        result.error_kind = Some(kind);
        result
    }
    /// The result with every piece of text from the cluster or a node cut to
    /// `hostile::MAX_EVIDENCE_BYTES`, with a marker: a log of any size cannot blow up a
    /// report.
    pub fn bounded(mut self) -> Self {
        use crate::hostile::{truncate, MAX_EVIDENCE_BYTES};
        let bound = |text: &mut String| {
            if text.len() > MAX_EVIDENCE_BYTES {
                *text = truncate(text, MAX_EVIDENCE_BYTES).into_owned();
            }
        };
        match &mut self.verdict {
            Verdict::Failed(m) | Verdict::Error(m) | Verdict::Skipped(m) => bound(m),
            Verdict::Passed => {}
        }
        for evidence in &mut self.evidence {
            bound(&mut evidence.observed);
        }
        self.details.iter_mut().for_each(bound);
        self
    }

    /// Nothing is wrong: it passed, or there was nothing to judge.
    pub fn passed(&self) -> bool {
        matches!(self.verdict, Verdict::Passed | Verdict::Skipped(_))
    }
}

pub type Judgement = (Verdict, Vec<Evidence>);

pub fn judge_node_ready(node: &Node) -> Judgement {
    let condition = crate::cluster::describe_ready_condition(node);
    let evidence = vec![Evidence::new("Ready condition", &condition, "Ready=True")];
    if crate::cluster::node_ready(node) {
        (Verdict::Passed, evidence)
    } else {
        (
            Verdict::Failed(format!("node is not Ready: {condition}")),
            evidence,
        )
    }
}

pub fn judge_boot_id(before: &str, after: &str) -> Judgement {
    let evidence = vec![Evidence::new(
        "bootID",
        after,
        format!("different from {before}"),
    )];
    if before != after && !after.is_empty() {
        (Verdict::Passed, evidence)
    } else {
        (
            Verdict::Failed(format!(
                "boot ID is still {before}: the node did not reboot"
            )),
            evidence,
        )
    }
}

/// What was seen of calico-node on the node when waiting for it ended.
#[derive(Debug, Clone, Default)]
pub struct CalicoObservation {
    pub pod: Option<Pod>,
    /// A known fatal line from its logs, which ends the wait at once.
    pub fatal_log_line: Option<String>,
    /// The wait hit its deadline.
    pub timed_out: Option<Duration>,
}

fn container_summary(pod: &Pod) -> String {
    let Some(status) = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
    else {
        return "no container status".into();
    };
    let state = status.state.as_ref();
    let state = if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
        format!("waiting ({})", waiting.reason.clone().unwrap_or_default())
    } else if let Some(terminated) = state.and_then(|s| s.terminated.as_ref()) {
        format!("terminated (exit {})", terminated.exit_code)
    } else if state.and_then(|s| s.running.as_ref()).is_some() {
        "running".into()
    } else {
        "unknown".into()
    };
    // The last termination says how the previous container died: the evidence an
    // operator reads next to `kubectl logs --previous`.
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| {
            let when = t
                .finished_at
                .as_ref()
                .map(|f| format!(" at {}", f.0))
                .unwrap_or_default();
            format!(
                ", last exit {} ({}){when}",
                t.exit_code,
                t.reason.clone().unwrap_or_default()
            )
        })
        .unwrap_or_default();
    format!(
        "{state}, ready={}, restarts={}{last}",
        status.ready, status.restart_count
    )
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

pub fn judge_calico_ready(observation: &CalicoObservation, node: &str) -> Judgement {
    let Some(pod) = &observation.pod else {
        let message = format!("no calico-node pod on {node}");
        return (
            Verdict::Failed(message),
            vec![Evidence::new("calico-node pod", "none", "one, Ready")],
        );
    };
    let mut evidence = vec![Evidence::new(
        format!("pod {}", pod_name(pod)),
        container_summary(pod),
        "running, ready=true",
    )];
    if let Some(line) = &observation.fatal_log_line {
        evidence.push(Evidence::new("log", line.as_str(), "no fatal error"));
        return (
            Verdict::Failed(format!("calico-node {} is failing: {line}", pod_name(pod))),
            evidence,
        );
    }
    if crate::cluster::pod_ready(pod) {
        return (Verdict::Passed, evidence);
    }
    let waited = observation
        .timed_out
        .map(|d| format!(" within {}", humantime::format_duration(d)))
        .unwrap_or_default();
    (
        Verdict::Failed(format!(
            "calico-node {} did not become Ready{waited}: {}",
            pod_name(pod),
            container_summary(pod)
        )),
        evidence,
    )
}

/// A crash loop: the container waits in CrashLoopBackOff, or it last died with an error
/// after the node became Ready (a restart caused by the reboot itself does not count).
pub fn judge_crashloop(
    pod: Option<&Pod>,
    ready_since: Option<&k8s_openapi::jiff::Timestamp>,
) -> Judgement {
    let Some(pod) = pod else {
        return (
            Verdict::Failed("no calico-node pod on the node".into()),
            vec![Evidence::new("calico-node pod", "none", "one")],
        );
    };
    let evidence = vec![Evidence::new(
        format!("pod {}", pod_name(pod)),
        container_summary(pod),
        "running, not restarting",
    )];
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first());
    let Some(status) = status else {
        return (
            Verdict::Failed("calico-node has no container status".into()),
            evidence,
        );
    };
    let waiting = status
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone());
    if waiting.as_deref() == Some("CrashLoopBackOff") {
        return (
            Verdict::Failed(format!(
                "calico-node {} is in CrashLoopBackOff after {} restarts",
                pod_name(pod),
                status.restart_count
            )),
            evidence,
        );
    }
    if let Some(terminated) = status
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .filter(|t| t.exit_code != 0)
    {
        let message = format!(
            "calico-node {} exited with code {} and is not running",
            pod_name(pod),
            terminated.exit_code
        );
        return (Verdict::Failed(message), evidence);
    }
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    if let Some(last) = last.filter(|t| t.exit_code != 0 && t.reason.as_deref() == Some("Error")) {
        let after_ready = match (last.finished_at.as_ref(), ready_since) {
            (Some(finished), Some(since)) => finished.0 >= *since,
            _ => true,
        };
        if after_ready {
            return (
                Verdict::Failed(format!(
                    "calico-node {} restarted after exiting with code {}",
                    pod_name(pod),
                    last.exit_code
                )),
                evidence,
            );
        }
    }
    (Verdict::Passed, evidence)
}

/// `tmpfiles_config_present` where the inventory declares the entry: the file exists and
/// has the declared line (whitespace between fields does not matter, as systemd-tmpfiles
/// reads it).
pub fn judge_tmpfiles(
    content: Option<&str>,
    declared: &TmpfilesDeclaration,
    run_dir: &str,
) -> Judgement {
    let file = &declared.file;
    let want = normalise(&declared.line);
    let Some(content) = content else {
        return (
            Verdict::Failed(format!("{file} does not exist")),
            vec![Evidence::new(
                file.as_str(),
                "missing",
                format!("contains `{want}`"),
            )],
        );
    };
    let lines: Vec<String> = content
        .lines()
        .map(normalise)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let observed = if lines.is_empty() {
        "(empty)".to_string()
    } else {
        lines.join(" | ")
    };
    let evidence = vec![Evidence::new(
        file.as_str(),
        observed,
        format!("contains `{want}`"),
    )];
    if !lines.contains(&want) {
        return (Verdict::Failed(format!("{file} lacks `{want}`")), evidence);
    }
    // Another entry for the same directory in the same file contradicts it:
    // systemd-tmpfiles applies the first one and only warns about the rest.
    let run_dir = canonical_run_path(run_dir);
    let contradicting: Vec<String> = parse_tmpfiles(content)
        .into_iter()
        .filter(|entry| {
            canonical_run_path(&entry.path) == run_dir && normalise(&entry.line) != want
        })
        .map(|entry| entry.line)
        .collect();
    if contradicting.is_empty() {
        (Verdict::Passed, evidence)
    } else {
        let message = format!(
            "{file} has `{want}` but also `{}`, which contradicts it",
            contradicting.join("`, `")
        );
        (Verdict::Failed(message), evidence)
    }
}

/// One line of a tmpfiles.d configuration, and the file it came from (as
/// `systemd-tmpfiles --cat-config` names it in a `# /path` header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfilesEntry {
    pub kind: String,
    pub path: String,
    pub mode: String,
    pub user: String,
    pub group: String,
    pub line: String,
    pub source: Option<String>,
}

/// Parses tmpfiles.d lines (`type path mode user group age argument`), skipping comments.
pub fn parse_tmpfiles(text: &str) -> Vec<TmpfilesEntry> {
    let mut source = None;
    let mut entries = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(header) = line.strip_prefix("# /") {
            if !header.contains(' ') {
                source = Some(format!("/{header}"));
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or("-").to_string();
        entries.push(TmpfilesEntry {
            kind: field(0),
            path: field(1),
            mode: field(2),
            user: field(3),
            group: field(4),
            line: normalise(line),
            source: source.clone(),
        });
    }
    entries
}

/// /var/run is a symlink to /run on every systemd host; tmpfiles.d may name either.
pub fn canonical_run_path(path: &str) -> String {
    let path = path.trim_end_matches('/');
    match path.strip_prefix("/var/run") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/run{rest}"),
        _ => path.to_string(),
    }
}

/// A user or group field as a number: `-` and `root` are 0, digits are themselves; a
/// name is kept as written, since only the node could resolve it.
fn numeric_owner(field: &str) -> Result<u32, String> {
    match field {
        "-" | "root" => Ok(0),
        other => other.parse().map_err(|_| other.to_string()),
    }
}

/// The entry systemd-tmpfiles applies to the run directory, from its merged configuration
/// (`--cat-config`): the first directory entry for the path wins.
pub fn effective_tmpfiles_entry(merged_config: &str, run_dir: &str) -> Option<TmpfilesEntry> {
    let run_dir = canonical_run_path(run_dir);
    parse_tmpfiles(merged_config).into_iter().find(|e| {
        canonical_run_path(&e.path) == run_dir
            && matches!(e.kind.trim_end_matches('!'), "d" | "D" | "v" | "q" | "Q")
    })
}

impl TmpfilesEntry {
    /// The directory this entry makes, as `stat` would show it; Err: the line names a
    /// user or group by name, which only the node could resolve.
    pub fn stat(&self) -> Result<RunDirStat, String> {
        // tmpfiles.d(5): a directory's mode defaults to 0755, its owner to root.
        let mode = if self.mode == "-" {
            "755".to_string()
        } else {
            let digits = self.mode.trim_start_matches('~').trim_start_matches('0');
            if digits.is_empty() { "0" } else { digits }.to_string()
        };
        match (numeric_owner(&self.user), numeric_owner(&self.group)) {
            (Ok(uid), Ok(gid)) => Ok(RunDirStat { mode, uid, gid }),
            _ => Err(format!("{mode} {} {}", self.user, self.group)),
        }
    }

    /// ` (from /etc/tmpfiles.d/calico.conf: `d /run/calico …`)`
    fn provenance(&self) -> String {
        self.source
            .as_deref()
            .map(|s| format!(" (from {s}: `{}`)", self.line))
            .unwrap_or_else(|| format!(" (`{}`)", self.line))
    }
}

/// How an entry's directory measures up: the stat it makes (in words) and why it falls
/// short, if it does.
fn judge_entry(
    entry: &TmpfilesEntry,
    expected: &CalicoExpectations,
) -> (String, Result<(), String>) {
    match entry.stat() {
        Ok(stat) => (stat.to_string(), expected.judge_access(&stat)),
        Err(named) => (
            named.clone(),
            Err(format!(
                "it names its owner as `{}`/`{}`, which postflight does not resolve: declare the entry in the inventory (calico.tmpfiles_file, calico.tmpfiles_line)",
                entry.user, entry.group
            )),
        ),
    }
}

/// `tmpfiles_config_present` where the inventory declares nothing: the node's own entry
/// for the run directory, if it has one, must make it usable by calico-node. With no
/// entry there is nothing to judge (calico-node's hostPath volume creates the directory),
/// and the check says so.
pub fn judge_node_tmpfiles(merged_config: &str, expected: &CalicoExpectations) -> Judgement {
    let what = format!("tmpfiles.d entry for {}", expected.run_dir);
    let Some(entry) = effective_tmpfiles_entry(merged_config, &expected.run_dir) else {
        return (
            Verdict::Skipped(format!(
                "no tmpfiles.d entry on the node names {}, and the inventory declares none (calico.tmpfiles_file): calico-node's hostPath volume creates the directory",
                expected.run_dir
            )),
            vec![Evidence::new(what, "none", "an entry, where the site declares one")],
        );
    };
    let (made, judged) = judge_entry(&entry, expected);
    let evidence = vec![Evidence::new(
        what,
        format!("{made}{}", entry.provenance()),
        expected.wanted(),
    )];
    match judged {
        Ok(()) => (Verdict::Passed, evidence),
        Err(why) => (
            Verdict::Failed(format!(
                "the node's tmpfiles.d entry makes {} as {made}{}: {why}",
                expected.run_dir,
                entry.provenance()
            )),
            evidence,
        ),
    }
}

/// `run_dir_after_next_boot`: what systemd-tmpfiles will make of the run directory at the
/// next boot, from its merged configuration (`--cat-config`). This finds the incident's
/// fault on nodes that have not rebooted yet.
pub fn judge_next_boot(merged_config: &str, expected: &CalicoExpectations) -> Judgement {
    let what = format!("{} after the next boot (mode uid gid)", expected.run_dir);
    let Some(entry) = effective_tmpfiles_entry(merged_config, &expected.run_dir) else {
        if expected.tmpfiles.is_some() {
            let message = format!(
                "no tmpfiles.d entry creates {}: after the next boot it will not exist",
                expected.run_dir
            );
            return (
                Verdict::Failed(message),
                vec![Evidence::new(what, "not created", expected.wanted())],
            );
        }
        // Nothing creates it at boot: calico-node's hostPath volume (DirectoryOrCreate)
        // makes it root-owned, mode 0755, when the pod starts.
        let by_kubelet = RunDirStat {
            mode: "755".into(),
            uid: 0,
            gid: 0,
        };
        let evidence = vec![Evidence::new(
            what,
            format!("{by_kubelet} (no tmpfiles.d entry: made by calico-node's hostPath volume)"),
            expected.wanted(),
        )];
        return match expected.judge_access(&by_kubelet) {
            Ok(()) => (Verdict::Passed, evidence),
            Err(why) => (
                Verdict::Failed(format!(
                    "no tmpfiles.d entry creates {}, so after the next boot it is made as {by_kubelet}: {why}; calico-node will fail on this node's next reboot",
                    expected.run_dir
                )),
                evidence,
            ),
        };
    };
    let (made, judged) = judge_entry(&entry, expected);
    let evidence = vec![Evidence::new(
        what,
        format!("{made}{}", entry.provenance()),
        expected.wanted(),
    )];
    match judged {
        Ok(()) => (Verdict::Passed, evidence),
        Err(why) => {
            let message = format!(
                "at the next boot systemd-tmpfiles will make {} as {made}{}: {why}; calico-node will fail on this node's next reboot",
                expected.run_dir,
                entry.provenance()
            );
            (Verdict::Failed(message), evidence)
        }
    }
}

/// One BGP session as BIRD's `show protocols` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpSession {
    pub name: String,
    pub state: String,
    pub info: String,
}

impl BgpSession {
    pub fn established(&self) -> bool {
        self.info.starts_with("Established")
    }
}

/// The BGP sessions in `birdcl show protocols` output (`Name Proto Table State Since
/// Info`); other protocols (device, kernel, static) are not sessions.
pub fn parse_bgp_sessions(show_protocols: &str) -> Vec<BgpSession> {
    show_protocols
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 5 && fields[1] == "BGP").then(|| BgpSession {
                name: fields[0].into(),
                state: fields[3].into(),
                info: fields
                    .get(5..)
                    .map(|rest| rest.join(" "))
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// `bgp_sessions_established`: BIRD on the node has every BGP session Established, as
/// calico-node's `-bird-ready` demands. None: BIRD's control socket did not answer.
pub fn judge_bgp(show_protocols: Option<&str>, socket: &str) -> Judgement {
    let Some(output) = show_protocols else {
        let message = format!("BIRD does not answer on {socket}: calico-node has not started it");
        return (
            Verdict::Failed(message),
            vec![Evidence::new(
                "BIRD",
                "not running",
                "running, sessions Established",
            )],
        );
    };
    let sessions = parse_bgp_sessions(output);
    if sessions.is_empty() {
        let message = "BIRD runs but has no BGP session: the node peers with nobody".to_string();
        return (
            Verdict::Failed(message),
            vec![Evidence::new(
                "BGP sessions",
                "none",
                "one per peer, Established",
            )],
        );
    }
    let evidence = sessions
        .iter()
        .map(|s| {
            Evidence::new(
                format!("BGP {}", s.name),
                format!("{} {}", s.state, s.info).trim_end().to_string(),
                "up Established",
            )
        })
        .collect();
    let down: Vec<String> = sessions
        .iter()
        .filter(|s| !s.established())
        .map(|s| format!("{} ({} {})", s.name, s.state, s.info).replace(" )", ")"))
        .collect();
    if down.is_empty() {
        (Verdict::Passed, evidence)
    } else {
        let message = format!(
            "{} of {} BGP sessions are not Established: {}",
            down.len(),
            sessions.len(),
            down.join(", ")
        );
        (Verdict::Failed(message), evidence)
    }
}

fn normalise(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The run directory as `stat -c '%a %u %g'` printed it; None when it does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDirStat {
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
}

impl RunDirStat {
    pub fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let (mode, uid, gid) = (
            words.next()?,
            words.next()?.parse().ok()?,
            words.next()?.parse().ok()?,
        );
        Some(RunDirStat {
            mode: mode.into(),
            uid,
            gid,
        })
    }
}

impl fmt::Display for RunDirStat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.mode, self.uid, self.gid)
    }
}

pub fn judge_run_dir(stat: Option<&RunDirStat>, expected: &CalicoExpectations) -> Judgement {
    let what = format!("{} (mode uid gid)", expected.run_dir);
    match stat {
        None => (
            Verdict::Failed(format!("{} does not exist", expected.run_dir)),
            vec![Evidence::new(what, "missing", expected.wanted())],
        ),
        Some(stat) => {
            let evidence = vec![Evidence::new(what, stat.to_string(), expected.wanted())];
            match expected.judge_access(stat) {
                Ok(()) => (Verdict::Passed, evidence),
                Err(why) => (
                    Verdict::Failed(format!("{} is {stat}, {why}", expected.run_dir)),
                    evidence,
                ),
            }
        }
    }
}

/// One probe: a curl from one probe pod to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeOutcome {
    pub from_node: String,
    pub from_pod: String,
    pub to_node: String,
    pub to_pod: String,
    pub url: String,
    /// Ok(HTTP status) or Err(what the client said).
    pub result: Result<u16, String>,
    pub attempts: u32,
}

impl ProbeOutcome {
    pub fn succeeded(&self) -> bool {
        matches!(self.result, Ok(code) if (200..400).contains(&code))
    }
    pub fn describe(&self) -> String {
        let outcome = match &self.result {
            Ok(code) => format!("HTTP {code}"),
            Err(error) => error.clone(),
        };
        format!(
            "{}/{} → {}/{} ({}): {outcome}",
            self.from_node, self.from_pod, self.to_node, self.to_pod, self.url
        )
    }
}

pub fn judge_connectivity(outcomes: &[ProbeOutcome], what: &str) -> Judgement {
    if outcomes.is_empty() {
        return (
            Verdict::Error(format!("no {what} probe could run")),
            Vec::new(),
        );
    }
    let failed: Vec<&ProbeOutcome> = outcomes.iter().filter(|o| !o.succeeded()).collect();
    let evidence = outcomes
        .iter()
        .map(|o| {
            let pair = format!(
                "{}/{} → {}/{} ({})",
                o.from_node, o.from_pod, o.to_node, o.to_pod, o.url
            );
            let observed = match &o.result {
                Ok(code) => format!("HTTP {code}"),
                Err(error) => error.clone(),
            };
            let tries = if o.attempts > 1 {
                format!(" after {} attempts", o.attempts)
            } else {
                String::new()
            };
            Evidence::new(pair, format!("{observed}{tries}"), "HTTP 2xx or 3xx")
        })
        .collect();
    if failed.is_empty() {
        (Verdict::Passed, evidence)
    } else {
        let lines: Vec<String> = failed.iter().map(|o| o.describe()).collect();
        (
            Verdict::Failed(format!(
                "{} of {} {what} probes failed: {}",
                failed.len(),
                outcomes.len(),
                lines.join("; ")
            )),
            evidence,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expectations() -> CalicoExpectations {
        CalicoExpectations::default()
    }

    fn declared() -> TmpfilesDeclaration {
        expectations()
            .tmpfiles
            .expect("the hardened site declares its entry")
    }

    /// calico-node as the stock manifest runs it (root), or as a hardened DaemonSet does
    /// (uid 999), with no entry declared in the inventory.
    fn undeclared(uid: u32) -> CalicoExpectations {
        CalicoExpectations {
            access: crate::expectations::RunDirAccess::UsableBy(crate::expectations::CalicoUser {
                uid,
                gid: Some(uid),
                source: "runAsUser of DaemonSet kube-system/calico-node".into(),
            }),
            tmpfiles: None,
            ..CalicoExpectations::default()
        }
    }

    #[test]
    fn without_a_declaration_the_nodes_own_entry_is_judged_or_the_check_skipped() {
        let (verdict, _) = judge_node_tmpfiles(
            "# /usr/lib/tmpfiles.d/x.conf\nd /run/x - - - -\n",
            &undeclared(0),
        );
        assert!(
            matches!(verdict, Verdict::Skipped(ref why) if why.contains("no tmpfiles.d entry")),
            "{verdict:?}"
        );
        let clobbered = "# /etc/tmpfiles.d/calico.conf\nd /run/calico 0700 root root -\n";
        let (verdict, evidence) = judge_node_tmpfiles(clobbered, &undeclared(999));
        assert!(
            matches!(verdict, Verdict::Failed(ref m) if m.contains("700 0 0") && m.contains("uid 999")),
            "{verdict:?}"
        );
        assert!(evidence[0].observed.contains("/etc/tmpfiles.d/calico.conf"));
        assert_eq!(
            judge_node_tmpfiles(clobbered, &undeclared(0)).0,
            Verdict::Passed
        );
        let named = "d /run/calico 0755 calico calico -\n";
        assert!(
            matches!(judge_node_tmpfiles(named, &undeclared(999)).0, Verdict::Failed(ref m) if m.contains("calico.tmpfiles_line"))
        );
    }

    #[test]
    fn with_no_entry_the_next_boot_is_what_the_hostpath_volume_makes() {
        assert_eq!(judge_next_boot("", &undeclared(0)).0, Verdict::Passed);
        assert!(
            matches!(judge_next_boot("", &undeclared(999)).0, Verdict::Failed(ref m) if m.contains("755 0 0"))
        );
    }

    #[test]
    fn run_dir_verdicts_carry_observed_and_expected() {
        let (verdict, evidence) =
            judge_run_dir(RunDirStat::parse("700 0 0\n").as_ref(), &expectations());
        assert!(
            matches!(verdict, Verdict::Failed(ref m) if m.contains("700 0 0") && m.contains("755 999 999")),
            "{verdict:?}"
        );
        assert_eq!(
            (evidence[0].observed.as_str(), evidence[0].expected.as_str()),
            ("700 0 0", "755 999 999")
        );
        assert_eq!(
            judge_run_dir(RunDirStat::parse("755 999 999").as_ref(), &expectations()).0,
            Verdict::Passed
        );
        assert!(matches!(
            judge_run_dir(None, &expectations()).0,
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn tmpfiles_line_matches_regardless_of_spacing_and_comments() {
        let good = "# Calico\nd   /run/calico  0755 999 999 -\n";
        assert_eq!(
            judge_tmpfiles(Some(good), &declared(), "/var/run/calico").0,
            Verdict::Passed
        );
        let clobbered = "d /run/calico 0700 root root -\n";
        let (verdict, evidence) = judge_tmpfiles(Some(clobbered), &declared(), "/var/run/calico");
        assert!(matches!(verdict, Verdict::Failed(_)));
        assert_eq!(evidence[0].observed, "d /run/calico 0700 root root -");
        assert!(
            matches!(judge_tmpfiles(None, &declared(), "/var/run/calico").0, Verdict::Failed(ref m) if m.contains("does not exist"))
        );
    }

    #[test]
    fn connectivity_failure_names_every_failed_pair_with_the_client_error() {
        let ok = ProbeOutcome {
            from_node: "w3".into(),
            from_pod: "p3".into(),
            to_node: "w2".into(),
            to_pod: "p2".into(),
            url: "http://198.19.0.2:8080/".into(),
            result: Ok(200),
            attempts: 1,
        };
        let bad = ProbeOutcome {
            to_node: "w1".into(),
            to_pod: "p1".into(),
            url: "http://198.19.0.1:8080/".into(),
            result: Err("curl: (28) timeout".into()),
            ..ok.clone()
        };
        let (verdict, _) = judge_connectivity(&[ok.clone(), bad], "cross-node");
        let Verdict::Failed(message) = verdict else {
            panic!("{verdict:?}")
        };
        assert!(
            message.contains("w3/p3 → w1/p1 (http://198.19.0.1:8080/): curl: (28) timeout"),
            "{message}"
        );
        assert!(!message.contains("w2/p2"));
        assert_eq!(judge_connectivity(&[ok], "cross-node").0, Verdict::Passed);
        assert!(matches!(
            judge_connectivity(&[], "cross-node").0,
            Verdict::Error(_)
        ));
    }

    #[test]
    fn a_contradicting_second_entry_fails_the_tmpfiles_check() {
        let both = "d /run/calico 0755 999 999 -\nd /var/run/calico 0700 root root -\n";
        let (verdict, _) = judge_tmpfiles(Some(both), &declared(), "/var/run/calico");
        assert!(
            matches!(verdict, Verdict::Failed(ref m) if m.contains("contradicts")),
            "{verdict:?}"
        );
    }

    #[test]
    fn the_next_boot_follows_the_first_entry_of_the_merged_configuration() {
        let healthy = "# /etc/tmpfiles.d/calico.conf\nd /run/calico 0755 999 999 -\n\n# /usr/lib/tmpfiles.d/x.conf\nd /run/x 0755 - - -\n";
        assert_eq!(judge_next_boot(healthy, &expectations()).0, Verdict::Passed);
        let clobbered = "# /etc/tmpfiles.d/calico.conf\nd /run/calico 0700 root root -\n";
        let (verdict, evidence) = judge_next_boot(clobbered, &expectations());
        assert!(
            matches!(verdict, Verdict::Failed(ref m) if m.contains("700 0 0") && m.contains("/etc/tmpfiles.d/calico.conf")),
            "{verdict:?}"
        );
        assert!(evidence[0].observed.starts_with("700 0 0"), "{evidence:?}");
        let shadowed = "# /etc/tmpfiles.d/00-hardening.conf\nd /var/run/calico 0700 - - -\n# /etc/tmpfiles.d/calico.conf\nd /run/calico 0755 999 999 -\n";
        assert!(matches!(
            judge_next_boot(shadowed, &expectations()).0,
            Verdict::Failed(_)
        ));
        assert!(
            matches!(judge_next_boot("", &expectations()).0, Verdict::Failed(ref m) if m.contains("will not exist"))
        );
    }

    #[test]
    fn bgp_sessions_are_read_from_show_protocols() {
        let output = "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\n\
            device1    Device     ---        up     17:43:07.686\n\
            Mesh_0     BGP        ---        up     17:43:08.495  Established\n\
            Mesh_1     BGP        ---        start  17:43:08.604  Active        Socket: Connection refused\n";
        let sessions = parse_bgp_sessions(output);
        assert_eq!(sessions.len(), 2);
        let (verdict, evidence) = judge_bgp(Some(output), "/var/run/calico/bird.ctl");
        let Verdict::Failed(message) = verdict else {
            panic!("{verdict:?}")
        };
        assert!(
            message.contains("1 of 2")
                && message.contains("Mesh_1 (start Active Socket: Connection refused)"),
            "{message}"
        );
        assert_eq!(evidence.len(), 2);
        assert!(
            matches!(judge_bgp(None, "/s").0, Verdict::Failed(ref m) if m.contains("does not answer"))
        );
        let healthy = output.replace(
            "start  17:43:08.604  Active        Socket: Connection refused",
            "up 17:43:08.604 Established",
        );
        assert_eq!(judge_bgp(Some(&healthy), "/s").0, Verdict::Passed);
    }

    #[test]
    fn boot_id_must_change() {
        assert_eq!(judge_boot_id("a", "b").0, Verdict::Passed);
        assert!(matches!(judge_boot_id("a", "a").0, Verdict::Failed(_)));
    }
}
