//! Reports of a run: JUnit XML (one testsuite per node, one testcase per check with
//! classname = node, `<failure>` for a broken node and `<error>` for a check that could not
//! run), JSON, and the console summary. Files are written atomically — a temporary file
//! in the same directory, then a rename — so a reader never sees half a report.

use crate::checks::{CheckResult, Verdict};
use crate::diagnose::Diagnosis;
use crate::hostile;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod html;
mod junit;
mod metrics;
pub use junit::Dialect as JunitDialect;
pub use metrics::MESH_STEP;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("--{first} and --{second} name the same file {path}: one report would overwrite the other; give each its own path")]
    SamePath {
        first: &'static str,
        second: &'static str,
        path: String,
    },
}

/// `path` made absolute against `cwd`, with `.` and `..` resolved and the directory it
/// is in followed through symlinks where it exists: two spellings of one file compare
/// equal.
fn normalised(path: &Path, cwd: &Path) -> PathBuf {
    use std::path::Component;
    let mut absolute = PathBuf::new();
    for component in cwd.join(path).components() {
        match component {
            Component::ParentDir => {
                absolute.pop();
            }
            Component::CurDir => {}
            other => absolute.push(other),
        }
    }
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|dir| dir.join(name))
            .unwrap_or(absolute),
        _ => absolute,
    }
}

/// A timed step of a run (a wait, an action), for trending and for the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    pub step: String,
    /// From the start of the node's run to the start of this step.
    #[serde(serialize_with = "seconds")]
    pub started_after: Duration,
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
}

/// Who ran a node's verification and against what: the suite properties of its JUnit,
/// so a report found later says which run, which cluster and which lock holder it was.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RunIdentity {
    /// Names the run's probe pods and its lock holder.
    pub run_id: String,
    /// As the kubeconfig names it; absent when the run never needed the API.
    pub api_server: Option<String>,
    /// The kubeconfig context, or `in-cluster` for a service account's token.
    pub context: Option<String>,
    /// The holder identity written into the reboot lock's Lease, when the run took it.
    pub lock_holder: Option<String>,
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64((duration.as_secs_f64() * 1000.0).round() / 1000.0)
}

fn optional_seconds<S: serde::Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(d) => seconds(d, serializer),
        None => serializer.serialize_none(),
    }
}

/// Everything one node's verification produced.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub node: String,
    pub rebooted: bool,
    pub started_at: String,
    pub results: Vec<CheckResult>,
    pub steps: Vec<StepTiming>,
    /// From the node being Ready (after the reboot) to the last verdict.
    #[serde(serialize_with = "optional_seconds")]
    pub ready_to_verdict: Option<Duration>,
    pub interrupted: bool,
    pub notes: Vec<String>,
    pub run: RunIdentity,
    /// The node's whole run, from its first step to its report.
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
}

impl NodeReport {
    pub fn failed(&self) -> bool {
        self.results
            .iter()
            .any(|r| matches!(r.verdict, Verdict::Failed(_)))
    }
    pub fn errored(&self) -> bool {
        self.results
            .iter()
            .any(|r| matches!(r.verdict, Verdict::Error(_)))
    }
    pub fn total(&self) -> Duration {
        self.steps.iter().map(|s| s.duration).sum()
    }
}

/// Exit codes, as documented: 0 all passed · 1 a check failed · 3 a check could not run
/// · 130 interrupted. (2, usage or inventory error, is the binary's.)
pub fn exit_code(reports: &[NodeReport]) -> u8 {
    if reports.iter().any(|r| r.interrupted) {
        130
    } else if reports.iter().any(NodeReport::failed) {
        1
    } else if reports.iter().any(NodeReport::errored) {
        3
    } else {
        0
    }
}

pub(crate) fn diagnosis_text(diagnosis: &Diagnosis) -> String {
    let mut text = format!("diagnosis: {}\n", diagnosis.root_cause);
    if !diagnosis.remediation.is_empty() {
        text.push_str("fix:\n");
        for command in &diagnosis.remediation {
            text.push_str(&format!("  {command}\n"));
        }
    }
    if let Some(prevention) = &diagnosis.prevention {
        text.push_str(&format!("prevent: {prevention}\n"));
    }
    text
}

/// The evidence of one check as plain text: what was observed, what was expected, the
/// collected material and the diagnosis.
pub fn evidence_text(result: &CheckResult) -> String {
    let mut text = observations_text(result);
    if let Some(diagnosis) = &result.diagnosis {
        text.push_str(&diagnosis_text(diagnosis));
    }
    text
}

/// Longest check message on a console line; the evidence below it has the rest.
const CONSOLE_MESSAGE_CHARS: usize = 200;

fn observations_text(result: &CheckResult) -> String {
    let mut text = evidence_lines(result);
    text.push_str(&details_text(result));
    text
}

/// Each observation against its expectation, one a line.
pub(crate) fn evidence_lines(result: &CheckResult) -> String {
    let mut text = String::new();
    for evidence in &result.evidence {
        text.push_str(&format!(
            "{}: observed {} | expected {}\n",
            evidence.what, evidence.observed, evidence.expected
        ));
    }
    text
}

/// The long material: log tails and command output, each ending its line.
pub(crate) fn details_text(result: &CheckResult) -> String {
    let mut text = String::new();
    for detail in &result.details {
        text.push_str(detail);
        if !detail.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

/// Writes `contents` to `path` atomically.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), ReportError> {
    let error = |source| ReportError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(error)?;
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(error)?;
    // A temporary file is created 0600; a report is for the pipeline and its readers.
    file.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(error)?;
    file.write_all(contents).map_err(error)?;
    file.as_file().sync_all().map_err(error)?;
    file.persist(path).map_err(|e| error(e.error))?;
    Ok(())
}

/// The report files a run was asked for, written together at every verdict.
#[derive(Debug, Clone, Default)]
pub struct ReportFiles {
    pub junit: Option<PathBuf>,
    pub junit_dialect: JunitDialect,
    pub json: Option<PathBuf>,
    pub html: Option<PathBuf>,
    pub metrics: Option<PathBuf>,
}

impl ReportFiles {
    /// Refuses two reports given one file, which would silently keep only the last.
    ///
    /// # Errors
    /// Two of the paths are one file once normalised.
    pub fn check_distinct(&self) -> Result<(), ReportError> {
        let cwd = std::env::current_dir().unwrap_or_default();
        let given = [
            ("junit", &self.junit),
            ("json", &self.json),
            ("html", &self.html),
            ("metrics", &self.metrics),
        ];
        let paths: Vec<(&'static str, &PathBuf, PathBuf)> = given
            .into_iter()
            .filter_map(|(flag, path)| path.as_ref().map(|p| (flag, p, normalised(p, &cwd))))
            .collect();
        for (index, (first, path, normal)) in paths.iter().enumerate() {
            if let Some((second, ..)) = paths[index + 1..].iter().find(|(_, _, n)| n == normal) {
                return Err(ReportError::SamePath {
                    first,
                    second,
                    path: path.display().to_string(),
                });
            }
        }
        Ok(())
    }

    /// Writes every asked-for report, each atomically, and says what it wrote.
    ///
    /// # Errors
    /// A file could not be written; the ones before it were.
    pub fn write(
        &self,
        reports: &[NodeReport],
        rolling: Option<&RollingSummary>,
        title: &str,
    ) -> Result<Vec<String>, ReportError> {
        let mut written = Vec::new();
        if let Some(path) = &self.junit {
            let xml = junit::document(reports, rolling, title, self.junit_dialect);
            write_atomically(path, xml.as_bytes())?;
            written.push(format!("JUnit: {}", path.display()));
        }
        if let Some(path) = &self.json {
            let mut document = json_document(reports);
            if let Some(summary) = rolling {
                document["rolling"] = serde_json::to_value(summary).expect("a summary serialises");
            }
            let json = serde_json::to_vec_pretty(&document).expect("reports serialise");
            write_atomically(path, &json)?;
            written.push(format!("JSON: {}", path.display()));
        }
        if let Some(path) = &self.html {
            write_atomically(path, html::document(reports, rolling, title).as_bytes())?;
            written.push(format!("HTML: {}", path.display()));
        }
        if let Some(path) = &self.metrics {
            write_atomically(path, metrics::exposition(reports, title).as_bytes())?;
            written.push(format!("metrics: {}", path.display()));
        }
        Ok(written)
    }
}

/// Each node's report as it stood last, in the order the nodes started: what a run
/// that must end at once (a second Ctrl-C) still writes.
#[derive(Debug, Default)]
pub struct ReportsSoFar(std::sync::Mutex<Vec<NodeReport>>);

impl ReportsSoFar {
    /// Keeps `report` in place of its node's earlier one.
    pub fn keep(&self, report: NodeReport) {
        let mut reports = self.0.lock().expect("reports so far");
        match reports.iter_mut().find(|r| r.node == report.node) {
            Some(earlier) => *earlier = report,
            None => reports.push(report),
        }
    }

    pub fn reports(&self) -> Vec<NodeReport> {
        self.0.lock().expect("reports so far").clone()
    }

    /// Writes every asked-for report from what is known, each marked interrupted, and
    /// says what it wrote.
    ///
    /// # Errors
    /// As [`ReportFiles::write`].
    pub fn write(&self, files: &ReportFiles, title: &str) -> Result<Vec<String>, ReportError> {
        let mut reports = self.reports();
        for report in &mut reports {
            report.interrupted = true;
        }
        files.write(&reports, None, title)
    }
}

/// How far a rolling update got: its order, the node it stopped at (the first that did
/// not pass), and the nodes it never started.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RollingSummary {
    pub order: Vec<String>,
    pub stopped_at: Option<String>,
    pub not_started: Vec<String>,
    /// Ctrl-C or SIGTERM between two nodes (in a soak): no node was left half-done.
    pub interrupted_between_nodes: bool,
}

impl RollingSummary {
    /// One line for a person: the order, with where it stopped.
    pub fn describe(&self) -> String {
        let order = self.order.join(" → ");
        match &self.stopped_at {
            Some(node) => format!(
                "rolling update {order}: STOPPED at {node}; not started: {}",
                if self.not_started.is_empty() {
                    "none".to_string()
                } else {
                    self.not_started.join(", ")
                }
            ),
            None if self.interrupted_between_nodes => format!(
                "rolling update {order}: INTERRUPTED between nodes; not started: {}",
                self.not_started.join(", ")
            ),
            None => format!("rolling update {order}: every node passed"),
        }
    }
}

/// The version of the JSON report's shape (`schema/report-v1.schema.json`).
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// The JSON report: versioned, so that a pipeline reading it can tell what it reads.
pub fn json_document(reports: &[NodeReport]) -> serde_json::Value {
    serde_json::json!({
        "schema_version": JSON_SCHEMA_VERSION,
        "postflight_version": env!("CARGO_PKG_VERSION"),
        "build": crate::build_info::BUILD,
        "nodes": reports,
        "exit_code": exit_code(reports),
    })
}

/// The console summary: one line per check with ✔/✘/! and its time, then the evidence
/// of what did not pass and the diagnosis. Colour only when `color` is set.
pub fn console(reports: &[NodeReport], color: bool) -> String {
    let paint = |code: &str, text: &str| {
        if color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    let mut out = String::new();
    for node in reports {
        out.push_str(&format!(
            "{}{}\n",
            hostile::for_terminal(&node.node),
            if node.rebooted { " (rebooted)" } else { "" }
        ));
        // A run that could not start (the API unreachable, a permission missing) fails
        // every check for one reason: say it once, not once per check.
        let shared_error = match node.results.as_slice() {
            [first, rest @ ..] => match &first.verdict {
                Verdict::Error(message)
                    if rest
                        .iter()
                        .all(|r| matches!(&r.verdict, Verdict::Error(m) if m == message)) =>
                {
                    Some(message)
                }
                _ => None,
            },
            [] => None,
        };
        if let Some(message) = shared_error.filter(|_| node.results.len() > 1) {
            out.push_str(&format!(
                "  {} none of the {} checks could run: {}\n",
                paint("33", "!"),
                node.results.len(),
                hostile::for_terminal(message)
            ));
        }
        for result in node
            .results
            .iter()
            .filter(|_| shared_error.is_none() || node.results.len() == 1)
        {
            let safe = |m: &str| hostile::for_terminal(&shorten(m)).into_owned();
            let (mark, message) = match &result.verdict {
                Verdict::Passed => (paint("32", "✔"), String::new()),
                Verdict::Failed(m) => (paint("31", "✘"), format!(" — {}", safe(m))),
                Verdict::Error(m) => (paint("33", "!"), format!(" — could not run: {}", safe(m))),
                Verdict::Skipped(m) => (paint("2", "-"), format!(" — skipped: {}", safe(m))),
            };
            out.push_str(&format!(
                "  {mark} {:<30} {:>6.1}s{message}\n",
                result.name.as_str(),
                result.duration.as_secs_f64()
            ));
        }
        for result in node
            .results
            .iter()
            .filter(|r| !r.passed() && (shared_error.is_none() || node.results.len() == 1))
        {
            let text = observations_text(result);
            if !text.is_empty() {
                out.push_str(&format!("  {}:\n", result.name));
                for line in hostile::for_terminal(&text).lines() {
                    out.push_str(&format!("    {line}\n"));
                }
            }
        }
        // Several checks share one root cause; say it once.
        let mut diagnoses: Vec<&Diagnosis> = Vec::new();
        for diagnosis in node.results.iter().filter_map(|r| r.diagnosis.as_ref()) {
            if !diagnoses.contains(&diagnosis) {
                diagnoses.push(diagnosis);
            }
        }
        for diagnosis in diagnoses {
            for line in hostile::for_terminal(&diagnosis_text(diagnosis)).lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
        let steps: Vec<String> = node
            .steps
            .iter()
            .map(|s| format!("{} {:.1}s", s.step, s.duration.as_secs_f64()))
            .collect();
        out.push_str(&format!("  timings: {}\n", steps.join(" · ")));
        if let Some(d) = node.ready_to_verdict {
            out.push_str(&format!(
                "  node Ready → verdict: {:.1}s\n",
                d.as_secs_f64()
            ));
        }
        for note in &node.notes {
            out.push_str(&format!("  note: {}\n", hostile::for_terminal(note)));
        }
    }
    let passed: usize = reports
        .iter()
        .map(|r| {
            r.results
                .iter()
                .filter(|c| c.verdict == Verdict::Passed)
                .count()
        })
        .sum();
    let skipped: usize = reports
        .iter()
        .map(|r| {
            r.results
                .iter()
                .filter(|c| matches!(c.verdict, Verdict::Skipped(_)))
                .count()
        })
        .sum();
    let skipped = if skipped > 0 {
        format!(", {skipped} skipped")
    } else {
        String::new()
    };
    let failed: usize = reports
        .iter()
        .map(|r| {
            r.results
                .iter()
                .filter(|c| matches!(c.verdict, Verdict::Failed(_)))
                .count()
        })
        .sum();
    let errors: usize = reports
        .iter()
        .map(|r| {
            r.results
                .iter()
                .filter(|c| matches!(c.verdict, Verdict::Error(_)))
                .count()
        })
        .sum();
    out.push_str(&format!(
        "{passed} passed, {failed} failed, {errors} could not run{skipped}\n"
    ));
    // The mesh's answer to "which node?" closes the output, where a pager's reader
    // looks first.
    let implicated: Vec<String> = reports
        .iter()
        .flat_map(|r| &r.results)
        .filter_map(|r| r.implicated.as_ref())
        .map(|i| format!("{} ({})", i.matrix.node, i.matrix.describe()))
        .collect();
    if !implicated.is_empty() {
        out.push_str(&format!(
            "at fault: {}\n",
            hostile::for_terminal(&implicated.join("; "))
        ));
    }
    out
}

fn shorten(message: &str) -> String {
    match message.char_indices().nth(CONSOLE_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}… (see below)", &message[..cut]),
        None => message.to_string(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::checks::{CheckName, Evidence};

    pub(super) fn sample() -> Vec<NodeReport> {
        let mut failing = CheckResult::new(
            CheckName::RunDirPermissions,
            "k8s-worker-03",
            Verdict::Failed("/var/run/calico is 700 0 0 & <bad>".into()),
            vec![Evidence::new("/var/run/calico", "700 0 0", "755 999 999")],
            Duration::from_millis(1500),
        );
        failing.details.push("stat said \"700 0 0\"".into());
        vec![NodeReport {
            node: "k8s-worker-03".into(),
            rebooted: true,
            started_at: "2026-11-24T00:00:00Z".into(),
            results: vec![
                CheckResult::new(
                    CheckName::NodeReadyAfterReboot,
                    "k8s-worker-03",
                    Verdict::Passed,
                    vec![],
                    Duration::from_millis(10),
                ),
                failing,
                CheckResult::error(
                    CheckName::CrossNodePodConnectivity,
                    "k8s-worker-03",
                    crate::checks::ErrorKind::Timeout,
                    "probe pod never scheduled",
                    Duration::from_secs(2),
                ),
            ],
            steps: vec![StepTiming {
                step: "reboot".into(),
                started_after: Duration::from_millis(200),
                duration: Duration::from_secs(3),
            }],
            ready_to_verdict: Some(Duration::from_secs(4)),
            interrupted: false,
            notes: vec![],
            run: RunIdentity {
                run_id: "0badc0de".into(),
                api_server: Some("https://198.18.0.1:6443/".into()),
                context: Some("lab".into()),
                lock_holder: Some("postflight@ci pid 7 run 0badc0de".into()),
            },
            elapsed: Duration::from_secs(9),
        }]
    }

    /// What a hostile pod or node can put into a report: a log line that ends CDATA and
    /// forges a testcase, XML-illegal control characters, terminal escape sequences that
    /// set the title and clear the screen, and a log far larger than any report needs.
    pub(super) fn hostile_reports() -> Vec<NodeReport> {
        let mut reports = sample();
        let result = &mut reports[0].results[1];
        result.details.push(
            "[FATAL] x ]]></system-out></testcase><testcase name=\"forged_check\" classname=\"k8s-worker-03\"/><testcase name=\"y\"><system-out><![CDATA[".into(),
        );
        result
            .details
            .push("bell \u{7} nul-ish \u{1} \u{1b}]0;pwned\u{7}\u{1b}[2J".into());
        result
            .details
            .push("A".repeat(crate::hostile::MAX_EVIDENCE_BYTES * 4));
        result.verdict = Verdict::Failed("calico-node says \u{1b}[31mOK\u{1b}[0m \u{2}".into());
        reports[0].results[1] = reports[0].results[1].clone().bounded();
        reports[0]
            .notes
            .push("note from the cluster ]]> \u{1b}[H".into());
        reports
    }

    #[test]
    fn hostile_text_never_reaches_the_terminal_as_control_characters() {
        let text = console(&hostile_reports(), false);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(!text.contains('\u{7}'), "{text}");
        assert!(text.contains("\\x1b]0;pwned"), "{text}");
        // Our own colours still work when asked for.
        assert!(console(&hostile_reports(), true).contains("\u{1b}[31m✘"));
    }

    #[test]
    fn hostile_text_keeps_the_json_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        ReportFiles {
            json: Some(path.clone()),
            ..ReportFiles::default()
        }
        .write(&hostile_reports(), None, "postflight verify")
        .unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let details = json["nodes"][0]["results"][1]["details"].to_string();
        assert!(details.contains("forged_check"), "kept as data");
    }

    /// A mesh of three nodes whose third is at fault, its name hostile.
    pub(super) fn mesh_reports() -> Vec<NodeReport> {
        use crate::checks::{attribute, judge_pod_mesh, Implication, ProbeOutcome};
        let nodes = [
            "k8s-w1".to_string(),
            "k8s-w2".into(),
            "w3\u{1b}]0;pwned\u{7}<b>".into(),
        ];
        let outcome = |from: &str, to: &str| ProbeOutcome {
            from_node: from.into(),
            from_pod: format!("p-{from}"),
            to_node: to.into(),
            to_pod: format!("p-{to}"),
            url: "http://198.19.0.9:8080/".into(),
            result: if from == nodes[2] || to == nodes[2] {
                Err("curl: (7) Failed to connect".into())
            } else {
                Ok(200)
            },
            attempts: 1,
            earlier_failures: Vec::new(),
        };
        let outcomes: Vec<Vec<ProbeOutcome>> = nodes
            .iter()
            .map(|from| {
                nodes
                    .iter()
                    .filter(|to| *to != from)
                    .map(|to| outcome(from, to))
                    .collect()
            })
            .collect();
        let pairs: Vec<_> = outcomes
            .iter()
            .flatten()
            .map(ProbeOutcome::pair_result)
            .collect();
        let attribution = attribute(&nodes, &pairs);
        let template = sample().remove(0);
        nodes
            .iter()
            .zip(&outcomes)
            .map(|(node, outcomes)| {
                let (verdict, evidence) = judge_pod_mesh(node, outcomes, &attribution);
                let mut result = CheckResult::new(
                    CheckName::PodMesh,
                    node,
                    verdict,
                    evidence,
                    Duration::from_millis(300),
                );
                result.pairs = outcomes.iter().map(ProbeOutcome::pair_result).collect();
                result.implicated = attribution.implicated(node).map(|i| Implication {
                    matrix: i.clone(),
                    summary: format!(
                        "{node}: {}; calico-node is in CrashLoopBackOff",
                        i.describe()
                    ),
                });
                NodeReport {
                    node: node.clone(),
                    rebooted: false,
                    results: vec![result],
                    ..template.clone()
                }
            })
            .collect()
    }

    #[test]
    fn a_mesh_names_the_node_at_fault_alike_in_json_console_and_html() {
        let reports = mesh_reports();
        let verdicts: Vec<&str> = reports
            .iter()
            .map(|r| if r.failed() { "failed" } else { "passed" })
            .collect();
        assert_eq!(
            verdicts,
            ["passed", "passed", "failed"],
            "only the node at fault fails"
        );
        let json = json_document(&reports);
        assert_valid(&json);
        assert_eq!(
            json["nodes"][2]["results"][0]["implicated"]["fault"],
            "both_ways"
        );
        assert!(json["nodes"][0]["results"][0].get("implicated").is_none());
        let console = console(&reports, false);
        let last = console.lines().last().unwrap();
        assert!(
            last.starts_with("at fault: w3") && last.contains("every pair to and from it fails"),
            "{console}"
        );
        assert!(!console.contains('\u{1b}'), "escaped for the terminal");
        let page = html::document(&reports, None, "postflight mesh");
        assert_eq!(page.matches("<li data-implicated=").count(), 1, "{page}");
        assert!(page.contains("calico-node is in CrashLoopBackOff"));
        assert!(
            page.contains("&lt;b&gt;") && !page.contains('\u{7}'),
            "escaped for HTML"
        );
        assert!(!page.contains('\u{1b}'));
        // Its row and its column are marked: two headers, and the 4 cells on them.
        assert_eq!(page.matches("data-implicated=\"true\"").count(), 2);
        assert_eq!(page.matches("cell failed implicated").count(), 4);
        assert_eq!(page.matches("cell passed implicated").count(), 0);
    }

    fn schema() -> jsonschema::Validator {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../schema/report-v1.schema.json"))
                .expect("the schema is JSON");
        jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
    }

    fn assert_valid(document: &serde_json::Value) {
        let errors: Vec<String> = schema()
            .iter_errors(document)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}\n{document:#}");
    }

    #[test]
    fn the_json_report_follows_its_published_schema() {
        assert_valid(&json_document(&sample()));
        assert_valid(&json_document(&hostile_reports()));
        let mut rolling = json_document(&sample());
        rolling["rolling"] = serde_json::to_value(RollingSummary {
            order: vec!["k8s-worker-03".into(), "k8s-worker-04".into()],
            stopped_at: Some("k8s-worker-03".into()),
            not_started: vec!["k8s-worker-04".into()],
            interrupted_between_nodes: false,
        })
        .unwrap();
        assert_valid(&rolling);
        // And the schema is not a rubber stamp.
        let mut wrong = json_document(&sample());
        wrong["nodes"][0]["results"][0]["verdict"] = serde_json::json!("green");
        assert!(!schema().is_valid(&wrong));
    }

    #[test]
    fn reports_are_readable_by_the_pipeline_0644() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junit.xml");
        ReportFiles {
            junit: Some(path.clone()),
            ..ReportFiles::default()
        }
        .write(&sample(), None, "postflight verify")
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{mode:o}");
    }

    #[test]
    fn a_run_that_could_not_start_says_why_once_not_per_check() {
        let mut reports = sample();
        let why = "cannot reach the API server https://10.0.0.1:6443/: connection refused";
        reports[0].results = [
            CheckName::NodeReadyAfterReboot,
            CheckName::CalicoNodeReady,
            CheckName::CrossNodePodConnectivity,
        ]
        .into_iter()
        .map(|name| {
            CheckResult::error(
                name,
                "k8s-worker-03",
                crate::checks::ErrorKind::Unreachable,
                why,
                Duration::ZERO,
            )
        })
        .collect();
        let text = console(&reports, false);
        assert_eq!(text.matches(why).count(), 1, "{text}");
        assert!(text.contains("none of the 3 checks could run"), "{text}");
        assert!(!text.contains("node_ready_after_reboot"), "{text}");
        assert!(
            text.contains("0 passed, 0 failed, 3 could not run"),
            "{text}"
        );
        // Different reasons are still told check by check.
        reports[0].results[1] = CheckResult::error(
            CheckName::CalicoNodeReady,
            "k8s-worker-03",
            crate::checks::ErrorKind::Error,
            "other",
            Duration::ZERO,
        );
        let text = console(&reports, false);
        assert!(text.contains("calico_node_ready"), "{text}");
        assert!(!text.contains("none of the"), "{text}");
    }

    #[test]
    fn two_reports_given_one_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path();
        std::fs::create_dir(cwd.join("out")).unwrap();
        std::os::unix::fs::symlink(cwd.join("out"), cwd.join("link")).unwrap();
        let files = |junit: &str, json: &str| ReportFiles {
            junit: Some(cwd.join(junit)),
            json: Some(PathBuf::from(json)),
            ..ReportFiles::default()
        };
        let same = |junit: &str, json: &str| {
            let files = files(junit, json);
            let cwd_path = |p: &PathBuf| normalised(p, cwd);
            cwd_path(files.junit.as_ref().unwrap()) == cwd_path(files.json.as_ref().unwrap())
        };
        assert!(same("out/r.xml", "out/r.xml"));
        assert!(same("out/r.xml", "./out/../out/r.xml"));
        assert!(
            same("out/r.xml", "link/r.xml"),
            "through a symlinked directory"
        );
        assert!(!same("out/r.xml", "out/r.json"));
        let refused = ReportFiles {
            junit: Some("r".into()),
            html: Some("./r".into()),
            ..ReportFiles::default()
        }
        .check_distinct()
        .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "--junit and --html name the same file r: one report would overwrite the other; give each its own path"
        );
        assert!(ReportFiles {
            junit: Some("r.xml".into()),
            json: Some("r.json".into()),
            ..ReportFiles::default()
        }
        .check_distinct()
        .is_ok());
    }

    #[test]
    fn exit_codes_follow_the_design() {
        let mut reports = sample();
        assert_eq!(exit_code(&reports), 1);
        reports[0].results.remove(1);
        assert_eq!(exit_code(&reports), 3);
        reports[0].results.remove(1);
        assert_eq!(exit_code(&reports), 0);
        reports[0].interrupted = true;
        assert_eq!(exit_code(&reports), 130);
    }

    #[test]
    fn console_marks_each_check_and_respects_no_color() {
        let text = console(&sample(), false);
        assert!(text.contains("✔ node_ready_after_reboot"), "{text}");
        assert!(text.contains("✘ run_dir_permissions"), "{text}");
        assert!(!text.contains('\x1b'));
        assert!(console(&sample(), true).contains('\x1b'));
    }
}
