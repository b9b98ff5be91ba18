//! Reports of a run: JUnit XML (one testsuite per node, one testcase per check with
//! classname = node, `<failure>` for a broken node and `<error>` for a check that could not
//! run), JSON, and the console summary. Files are written atomically — a temporary file
//! in the same directory, then a rename — so a reader never sees half a report.

use crate::checks::{CheckResult, Verdict};
use crate::diagnose::Diagnosis;
use crate::hostile;
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("rendering JUnit: {0}")]
    Junit(String),
}

/// A timed step of a run (a wait, an action), for trending.
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    pub step: String,
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
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

fn junit_duration(duration: Duration) -> junit_report::Duration {
    junit_report::Duration::milliseconds(duration.as_millis().min(i64::MAX as u128) as i64)
}

fn diagnosis_text(diagnosis: &Diagnosis) -> String {
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
    let mut text = String::new();
    for evidence in &result.evidence {
        text.push_str(&format!(
            "{}: observed {} | expected {}\n",
            evidence.what, evidence.observed, evidence.expected
        ));
    }
    for detail in &result.details {
        text.push_str(detail);
        if !detail.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

pub fn junit(reports: &[NodeReport], suite_prefix: &str) -> junit_report::Report {
    let mut report = junit_report::Report::new();
    for node in reports {
        // Everything below may carry text from the cluster or a node: attributes go
        // through for_xml, CDATA through for_cdata, so no log line can break or forge
        // the document.
        let node_name = hostile::for_xml(&node.node);
        let mut suite = junit_report::TestSuite::new(&format!("{suite_prefix} {node_name}"));
        for result in &node.results {
            let time = junit_duration(result.duration);
            let name = result.name.as_str();
            let mut case = match &result.verdict {
                Verdict::Passed => junit_report::TestCase::success(name, time),
                Verdict::Failed(message) => junit_report::TestCase::failure(
                    name,
                    time,
                    "failure",
                    &hostile::for_xml(message),
                ),
                Verdict::Error(message) => {
                    // The kind goes in `type`, so a CI server can tell "forbidden" from
                    // "unreachable" without parsing the message.
                    let kind = result.error_kind.unwrap_or(crate::checks::ErrorKind::Error);
                    junit_report::TestCase::error(
                        name,
                        time,
                        kind.as_str(),
                        &hostile::for_xml(message),
                    )
                }
                Verdict::Skipped(why) => junit_report::TestCase::skipped_with_cause(
                    name,
                    "skipped",
                    &hostile::for_xml(why),
                ),
            };
            case.set_classname(&node_name);
            case.set_system_out(&hostile::for_cdata(&evidence_text(result)));
            suite.add_testcase(case);
        }
        let steps: Vec<String> = node
            .steps
            .iter()
            .map(|s| format!("{}: {:.1}s", s.step, s.duration.as_secs_f64()))
            .collect();
        let mut out = format!("steps: {}\n", steps.join(", "));
        if let Some(d) = node.ready_to_verdict {
            out.push_str(&format!("node Ready → verdict: {:.1}s\n", d.as_secs_f64()));
        }
        for note in &node.notes {
            out.push_str(note);
            out.push('\n');
        }
        suite.set_system_out(&hostile::for_cdata(&out));
        report.add_testsuite(suite);
    }
    report
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

pub fn write_junit(
    path: &Path,
    reports: &[NodeReport],
    suite_prefix: &str,
) -> Result<(), ReportError> {
    let mut xml = Vec::new();
    junit(reports, suite_prefix)
        .write_xml(&mut xml)
        .map_err(|e| ReportError::Junit(e.to_string()))?;
    write_atomically(path, &xml)
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

    /// The summary testsuite: one testcase per node in order — passed, failed (the node
    /// it stopped at) or skipped (not started) — so a CI server shows the rollout at a
    /// glance and trends it.
    pub fn junit_suite(&self, reports: &[NodeReport]) -> junit_report::TestSuite {
        let mut suite = junit_report::TestSuite::new("postflight rolling");
        for node in &self.order {
            let report = reports.iter().find(|r| &r.node == node);
            let mut case = match report {
                None => junit_report::TestCase::skipped(node),
                Some(report) if self.stopped_at.as_ref() == Some(node) => {
                    let failing: Vec<&str> = report
                        .results
                        .iter()
                        .filter(|r| !r.passed())
                        .map(|r| r.name.as_str())
                        .collect();
                    let message = format!("the rollout stopped here: {}", failing.join(", "));
                    junit_report::TestCase::failure(
                        node,
                        junit_duration(report.total()),
                        "stopped",
                        &message,
                    )
                }
                Some(report) => {
                    junit_report::TestCase::success(node, junit_duration(report.total()))
                }
            };
            case.set_classname("rolling");
            suite.add_testcase(case);
        }
        suite.set_system_out(&format!("{}\n", self.describe()));
        suite
    }
}

/// The JUnit of a rolling update: one testsuite per node verified, then the summary.
pub fn write_junit_rolling(
    path: &Path,
    reports: &[NodeReport],
    summary: &RollingSummary,
) -> Result<(), ReportError> {
    let mut junit = junit(reports, "postflight rolling");
    junit.add_testsuite(summary.junit_suite(reports));
    let mut xml = Vec::new();
    junit
        .write_xml(&mut xml)
        .map_err(|e| ReportError::Junit(e.to_string()))?;
    write_atomically(path, &xml)
}

pub fn write_json_rolling(
    path: &Path,
    reports: &[NodeReport],
    summary: &RollingSummary,
) -> Result<(), ReportError> {
    let mut document = json_document(reports);
    document["rolling"] = serde_json::to_value(summary).expect("a summary serialises");
    let json = serde_json::to_vec_pretty(&document).expect("reports serialise");
    write_atomically(path, &json)
}

/// The version of the JSON report's shape (`schema/report-v1.schema.json`).
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// The JSON report: versioned, so that a pipeline reading it can tell what it reads.
pub fn json_document(reports: &[NodeReport]) -> serde_json::Value {
    serde_json::json!({
        "schema_version": JSON_SCHEMA_VERSION,
        "postflight_version": env!("CARGO_PKG_VERSION"),
        "nodes": reports,
        "exit_code": exit_code(reports),
    })
}

pub fn write_json(path: &Path, reports: &[NodeReport]) -> Result<(), ReportError> {
    let json = serde_json::to_vec_pretty(&json_document(reports)).expect("reports serialise");
    write_atomically(path, &json)
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
            node.node,
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
    out
}

fn shorten(message: &str) -> String {
    match message.char_indices().nth(CONSOLE_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}… (see below)", &message[..cut]),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{CheckName, Evidence};

    fn sample() -> Vec<NodeReport> {
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
                duration: Duration::from_secs(3),
            }],
            ready_to_verdict: Some(Duration::from_secs(4)),
            interrupted: false,
            notes: vec![],
        }]
    }

    /// What a hostile pod or node can put into a report: a log line that ends CDATA and
    /// forges a testcase, XML-illegal control characters, terminal escape sequences that
    /// set the title and clear the screen, and a log far larger than any report needs.
    fn hostile_reports() -> Vec<NodeReport> {
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
    fn hostile_text_neither_breaks_nor_forges_the_junit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junit.xml");
        write_junit(&path, &hostile_reports(), "postflight verify").unwrap();
        let xml = std::fs::read_to_string(&path).unwrap();
        let document = roxmltree::Document::parse(&xml).expect("the JUnit stays well-formed");
        let names: Vec<&str> = document
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .filter_map(|n| n.attribute("name"))
            .collect();
        assert!(!names.contains(&"forged_check"), "{names:?}");
        assert_eq!(names.len(), 3, "{names:?}");
        let out: String = document
            .descendants()
            .filter(|n| n.has_tag_name("system-out"))
            .flat_map(|n| n.children().filter_map(|c| c.text()))
            .collect();
        assert!(
            out.contains("]]></system-out></testcase><testcase name=\"forged_check\""),
            "the line is kept, as text"
        );
        assert!(
            out.contains("more bytes not shown"),
            "the huge log is cut with a marker"
        );
        assert!(
            xml.len() < 3 * crate::hostile::MAX_EVIDENCE_BYTES,
            "{} bytes",
            xml.len()
        );
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
        write_json(&path, &hostile_reports()).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let details = json["nodes"][0]["results"][1]["details"].to_string();
        assert!(details.contains("forged_check"), "kept as data");
    }

    fn schema() -> jsonschema::Validator {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../schema/report-v1.schema.json"))
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
        write_junit(&path, &sample(), "postflight verify").unwrap();
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
    fn junit_parses_back_with_the_right_names_counts_and_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/junit.xml");
        write_junit(&path, &sample(), "postflight verify").unwrap();
        let xml = std::fs::read_to_string(&path).unwrap();
        let document = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let suite = document
            .descendants()
            .find(|n| n.has_tag_name("testsuite"))
            .unwrap();
        assert_eq!(
            suite.attribute("name"),
            Some("postflight verify k8s-worker-03")
        );
        assert_eq!(
            (
                suite.attribute("tests"),
                suite.attribute("failures"),
                suite.attribute("errors")
            ),
            (Some("3"), Some("1"), Some("1"))
        );
        let cases: Vec<_> = suite
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        let names: Vec<_> = cases.iter().map(|c| c.attribute("name").unwrap()).collect();
        assert_eq!(
            names,
            [
                "node_ready_after_reboot",
                "run_dir_permissions",
                "cross_node_pod_connectivity"
            ]
        );
        assert!(cases
            .iter()
            .all(|c| c.attribute("classname") == Some("k8s-worker-03")));
        let failure = cases[1]
            .children()
            .find(|n| n.has_tag_name("failure"))
            .unwrap();
        assert_eq!(
            failure.attribute("message"),
            Some("/var/run/calico is 700 0 0 & <bad>")
        );
        assert_eq!(cases[1].attribute("time"), Some("1.5"));
        let out = cases[1]
            .children()
            .find(|n| n.has_tag_name("system-out"))
            .unwrap()
            .text()
            .unwrap_or_default()
            .to_string();
        assert!(
            out.contains("observed 700 0 0 | expected 755 999 999"),
            "{out}"
        );
        let error = cases[2]
            .children()
            .find(|n| n.has_tag_name("error"))
            .expect("an <error>");
        assert_eq!(
            error.attribute("type"),
            Some("timeout"),
            "the kind, for CI to sort by"
        );
        assert!(!dir.path().join("out").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".tmp")));
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
