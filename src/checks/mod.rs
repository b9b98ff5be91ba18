//! The checks: each turns what was observed on the cluster and the node into a verdict
//! with evidence (observed vs expected). They decide; they do no I/O, print nothing and
//! never exit, so every verdict is unit-testable. The names are stable: they are the
//! JUnit testcase names CI servers trend across runs.
//!
//! This module owns what a result is; its submodules judge one subject each: the node,
//! calico-node, the tmpfiles.d entry and run directory, BGP, and pod connectivity.

use serde::Serialize;
use std::fmt;
use std::time::Duration;

mod bgp;
mod calico;
mod connectivity;
mod mesh;
mod node;
mod tmpfiles;

pub use crate::expectations::{canonical_run_path, RunDirStat};
pub use bgp::{judge_bgp, parse_bgp_sessions, BgpSession};
pub use calico::{judge_calico_ready, judge_crashloop, CalicoObservation};
pub use connectivity::{flaky_pairs, judge_connectivity, PairResult, ProbeOutcome};
pub use mesh::{attribute, judge_pod_mesh, Fault, Implicated, MeshAttribution};
pub use node::{
    judge_boot_id, judge_boot_id_not_back, judge_node_ready, judge_restart, ProcessStart,
};
pub use tmpfiles::{
    effective_tmpfiles_entry, judge_next_boot, judge_node_tmpfiles, judge_run_dir, judge_tmpfiles,
    parse_tmpfiles, TmpfilesEntry,
};

/// A known root cause behind failed checks, with the commands that fix it. The diagnosis
/// module finds it; a result carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    pub root_cause: String,
    pub remediation: Vec<crate::fix::Fix>,
    pub prevention: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum CheckName {
    ClusterHealthyBeforeReboot,
    NodeDrained,
    NodeReadyAfterReboot,
    BootIdChanged,
    /// A node that is a container: it restarted (its PID 1 is a new process), its boot
    /// ID being its host's.
    NodeRestarted,
    CalicoNodeReady,
    CalicoNodeNotCrashlooping,
    TmpfilesConfigPresent,
    RunDirPermissions,
    RunDirAfterNextBoot,
    BgpSessionsEstablished,
    SameNodePodConnectivity,
    CrossNodePodConnectivity,
    /// `mesh`: this node's probe pod reaches every other node's.
    PodMesh,
}

impl CheckName {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::ClusterHealthyBeforeReboot => "cluster_healthy_before_reboot",
            CheckName::NodeDrained => "node_drained",
            CheckName::NodeReadyAfterReboot => "node_ready_after_reboot",
            CheckName::BootIdChanged => "boot_id_changed",
            CheckName::NodeRestarted => "node_restarted",
            CheckName::CalicoNodeReady => "calico_node_ready",
            CheckName::CalicoNodeNotCrashlooping => "calico_node_not_crashlooping",
            CheckName::TmpfilesConfigPresent => "tmpfiles_config_present",
            CheckName::RunDirPermissions => "run_dir_permissions",
            CheckName::RunDirAfterNextBoot => "run_dir_after_next_boot",
            CheckName::BgpSessionsEstablished => "bgp_sessions_established",
            CheckName::SameNodePodConnectivity => "same_node_pod_connectivity",
            CheckName::CrossNodePodConnectivity => "cross_node_pod_connectivity",
            CheckName::PodMesh => "pod_mesh",
        }
    }

    /// What kind of fault a failure of this check is: the `type` of its JUnit
    /// `<failure>`, for a CI server to group failures by.
    pub fn failure_kind(self) -> &'static str {
        match self {
            CheckName::ClusterHealthyBeforeReboot => "cluster_degraded",
            CheckName::NodeDrained => "drain_incomplete",
            CheckName::NodeReadyAfterReboot => "node_not_ready",
            CheckName::BootIdChanged | CheckName::NodeRestarted => "not_rebooted",
            CheckName::CalicoNodeReady => "calico_not_ready",
            CheckName::CalicoNodeNotCrashlooping => "calico_crashloop",
            CheckName::TmpfilesConfigPresent | CheckName::RunDirAfterNextBoot => "tmpfiles_drift",
            CheckName::RunDirPermissions => "run_dir_permissions",
            CheckName::BgpSessionsEstablished => "bgp_down",
            CheckName::SameNodePodConnectivity
            | CheckName::CrossNodePodConnectivity
            | CheckName::PodMesh => "pod_unreachable",
        }
    }

    /// The checks of `verify`, in report order. A machine's reboot is proven by its new
    /// boot ID, a container's restart by its new PID 1.
    pub fn for_verify(reboot: bool, kind: crate::inventory::NodeKind) -> Vec<CheckName> {
        use CheckName::*;
        let restart_proof = match kind {
            crate::inventory::NodeKind::Machine => BootIdChanged,
            crate::inventory::NodeKind::Container => NodeRestarted,
        };
        let mut names = if reboot {
            vec![
                ClusterHealthyBeforeReboot,
                NodeReadyAfterReboot,
                restart_proof,
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
    /// The node's shell pod could not be started or entered (its image, Pod Security,
    /// a missing permission in its namespace).
    NodeShell,
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
            ErrorKind::NodeShell => "node_shell",
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
    /// The pod pairs a connectivity check probed, each with its outcome: the cells of
    /// the report's heat map.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<PairResult>,
    /// What passed only after a retry. A pass that needed one is flaky, and the report
    /// says so rather than showing plain green.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flaky: Vec<String>,
    /// `pod_mesh` only: the pair matrix names this node as the one at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub implicated: Option<Implication>,
}

/// A node the mesh blames, as its report says it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Implication {
    #[serde(flatten)]
    pub matrix: Implicated,
    /// One line: the node, what the matrix shows, calico-node's state, the root cause.
    pub summary: String,
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
            pairs: Vec::new(),
            flaky: Vec::new(),
            implicated: None,
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
        for pair in &mut self.pairs {
            bound(&mut pair.observed);
            pair.earlier_failures.iter_mut().for_each(bound);
        }
        self.flaky.iter_mut().for_each(bound);
        if let Some(implication) = &mut self.implicated {
            bound(&mut implication.summary);
        }
        self
    }

    /// Nothing is wrong: it passed, or there was nothing to judge.
    pub fn passed(&self) -> bool {
        matches!(self.verdict, Verdict::Passed | Verdict::Skipped(_))
    }
}

pub type Judgement = (Verdict, Vec<Evidence>);
