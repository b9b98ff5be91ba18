//! The JUnit XML of a run, written by hand because the shape matters more than a
//! builder's convenience: suite `<properties>` (which run, which cluster, which lock
//! holder), timestamps in whole seconds, the evidence and the fix in the `<failure>`
//! body, and flaky passes marked the way nextest and Maven Surefire mark them.
//!
//! Two dialects, each checked against its schema in the tests:
//! - `jenkins` (the default): what Jenkins, GitLab, GitHub's JUnit actions and nextest
//!   read, valid against the Jenkins xunit plugin's `junit-10.xsd`. Timestamps carry
//!   their zone (`Z`), each testcase keeps its long logs in `<system-out>`, and a pass
//!   that needed a retry carries `<flakyFailure>`.
//! - `ant`: the strict Apache Ant schema, for consumers that validate against it. That
//!   schema forbids a zone in the timestamp (it is written in UTC, as Ant writes it),
//!   output inside a testcase, and any element for a retry: the logs go to the suite's
//!   `<system-out>` and flaky passes to suite properties.
//!
//! Every string from the cluster or a node goes through `hostile::for_xml` and is
//! escaped here, so no log line can break or forge the document.

use super::{details_text, diagnosis_text, evidence_lines, NodeReport, RollingSummary};
use crate::checks::{CheckResult, ErrorKind, Verdict};
use crate::hostile;
use k8s_openapi::jiff::Timestamp;
use std::fmt::Write;
use std::time::Duration;

/// Which JUnit schema the document follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dialect {
    #[default]
    Jenkins,
    Ant,
}

/// The JUnit document for `reports`: one testsuite per node, then, for a rolling
/// update, the summary suite with one testcase per node of the rollout.
pub fn document(
    reports: &[NodeReport],
    rolling: Option<&RollingSummary>,
    suite_prefix: &str,
    dialect: Dialect,
) -> String {
    let hostname = hostname();
    let mut suites = Vec::new();
    for (id, node) in reports.iter().enumerate() {
        suites.push(node_suite(node, id, suite_prefix, &hostname, dialect));
    }
    if let Some(summary) = rolling {
        suites.push(rolling_suite(
            summary,
            reports,
            suites.len(),
            &hostname,
            dialect,
        ));
    }
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    match dialect {
        // The strict Ant schema declares no attribute on <testsuites>.
        Dialect::Ant => xml.push_str("<testsuites>\n"),
        Dialect::Jenkins => {
            let total = |count: fn(&Suite) -> usize| suites.iter().map(count).sum::<usize>();
            let time: Duration = suites.iter().map(|s| s.time).sum();
            // Named for the tool, not the command: a suite is named after the command,
            // and a reader looking for it by name must not find the root first.
            let _ = writeln!(
                xml,
                "<testsuites name=\"postflight\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{}\">",
                total(|s| s.tests),
                total(|s| s.failures),
                total(|s| s.errors),
                seconds(time),
            );
        }
    }
    for suite in &suites {
        xml.push_str(&suite.xml);
    }
    xml.push_str("</testsuites>\n");
    xml
}

/// One rendered testsuite and the counts its parent sums.
struct Suite {
    xml: String,
    tests: usize,
    failures: usize,
    errors: usize,
    time: Duration,
}

struct Counts {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
}

fn counts(results: &[CheckResult]) -> Counts {
    let count = |pick: fn(&Verdict) -> bool| results.iter().filter(|r| pick(&r.verdict)).count();
    Counts {
        tests: results.len(),
        failures: count(|v| matches!(v, Verdict::Failed(_))),
        errors: count(|v| matches!(v, Verdict::Error(_))),
        skipped: count(|v| matches!(v, Verdict::Skipped(_))),
    }
}

#[allow(clippy::too_many_arguments)]
fn suite_open(
    xml: &mut String,
    name: &str,
    id: usize,
    counts: &Counts,
    time: Duration,
    started_at: &str,
    hostname: &str,
    dialect: Dialect,
) {
    let _ = writeln!(
        xml,
        "  <testsuite name=\"{}\" package=\"postflight\" id=\"{id}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\" timestamp=\"{}\" hostname=\"{}\">",
        attribute(name),
        counts.tests,
        counts.failures,
        counts.errors,
        counts.skipped,
        seconds(time),
        timestamp(started_at, dialect),
        attribute(hostname),
    );
}

fn properties(xml: &mut String, properties: &[(&str, String)]) {
    xml.push_str("    <properties>\n");
    for (name, value) in properties {
        let _ = writeln!(
            xml,
            "      <property name=\"{name}\" value=\"{}\"/>",
            attribute(value)
        );
    }
    xml.push_str("    </properties>\n");
}

fn node_suite(
    node: &NodeReport,
    id: usize,
    suite_prefix: &str,
    hostname: &str,
    dialect: Dialect,
) -> Suite {
    let counts = counts(&node.results);
    let time = node.elapsed.max(node.total());
    let mut xml = String::new();
    suite_open(
        &mut xml,
        &format!("{suite_prefix} {}", hostile::for_xml(&node.node)),
        id,
        &counts,
        time,
        &node.started_at,
        hostname,
        dialect,
    );
    let run = &node.run;
    let mut props: Vec<(&str, String)> = vec![("run_id", run.run_id.clone())];
    props.extend(build_properties());
    props.extend([
        ("node", node.node.clone()),
        ("rebooted", node.rebooted.to_string()),
    ]);
    let optional = [
        ("api_server", &run.api_server),
        ("context", &run.context),
        ("lock_holder", &run.lock_holder),
    ];
    props.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| value.clone().map(|v| (name, v))),
    );
    if dialect == Dialect::Ant {
        for result in &node.results {
            for flaky in &result.flaky {
                props.push(("flaky", format!("{}: {flaky}", result.name)));
            }
        }
    }
    properties(&mut xml, &props);

    let classname = attribute(&node.node);
    let mut suite_out = steps_text(node);
    for result in &node.results {
        let _ = write!(
            xml,
            "    <testcase name=\"{}\" classname=\"{classname}\" time=\"{}\"",
            result.name,
            seconds(result.duration)
        );
        let mut children = String::new();
        match &result.verdict {
            Verdict::Passed => {}
            Verdict::Failed(message) => {
                outcome(
                    &mut children,
                    "failure",
                    message,
                    result.name.failure_kind(),
                    &body(result),
                );
            }
            Verdict::Error(message) => {
                // The kind goes in `type`, so a CI server can tell "forbidden" from
                // "unreachable" without parsing the message.
                let kind = result.error_kind.unwrap_or(ErrorKind::Error);
                outcome(
                    &mut children,
                    "error",
                    message,
                    kind.as_str(),
                    &body(result),
                );
            }
            Verdict::Skipped(why) => {
                let _ = writeln!(children, "      <skipped message=\"{}\"/>", attribute(why));
            }
        }
        let details = details_text(result);
        match dialect {
            Dialect::Jenkins => {
                for flaky in &result.flaky {
                    let _ = writeln!(
                        children,
                        "      <flakyFailure message=\"{}\" type=\"flaky\"/>",
                        attribute(flaky)
                    );
                }
                if !details.is_empty() {
                    let _ = writeln!(
                        children,
                        "      <system-out>{}</system-out>",
                        text(&details)
                    );
                }
            }
            Dialect::Ant => {
                if !details.is_empty() {
                    let _ = write!(suite_out, "--- {} ---\n{details}", result.name);
                }
            }
        }
        if children.is_empty() {
            xml.push_str("/>\n");
        } else {
            let _ = write!(xml, ">\n{children}    </testcase>\n");
        }
    }
    suite_close(&mut xml, &suite_out);
    Suite {
        xml,
        tests: counts.tests,
        failures: counts.failures,
        errors: counts.errors,
        time,
    }
}

fn suite_close(xml: &mut String, out: &str) {
    let _ = writeln!(xml, "    <system-out>{}</system-out>", text(out));
    // The strict Ant schema requires the element; nothing is written to it.
    xml.push_str("    <system-err></system-err>\n");
    xml.push_str("  </testsuite>\n");
}

fn outcome(children: &mut String, element: &str, message: &str, kind: &str, body: &str) {
    let _ = writeln!(
        children,
        "      <{element} message=\"{}\" type=\"{kind}\">{}</{element}>",
        attribute(message),
        text(body)
    );
}

/// What a reader of a failure needs first: each observation against its expectation,
/// then the diagnosis and the commands that fix it.
fn body(result: &CheckResult) -> String {
    let mut body = evidence_lines(result);
    if let Some(diagnosis) = &result.diagnosis {
        body.push_str(&diagnosis_text(diagnosis));
    }
    body
}

fn steps_text(node: &NodeReport) -> String {
    let steps: Vec<String> = node
        .steps
        .iter()
        .map(|s| format!("{}: {:.1}s", s.step, s.duration.as_secs_f64()))
        .collect();
    let mut out = format!("steps: {}\n", steps.join(", "));
    if let Some(d) = node.ready_to_verdict {
        let _ = writeln!(out, "node Ready → verdict: {:.1}s", d.as_secs_f64());
    }
    for note in &node.notes {
        let _ = writeln!(out, "{note}");
    }
    out
}

/// The summary testsuite of a rolling update: one testcase per node in order — passed,
/// failed (the node it stopped at) or skipped (not started) — so a CI server shows the
/// rollout at a glance and trends it.
fn rolling_suite(
    summary: &RollingSummary,
    reports: &[NodeReport],
    id: usize,
    hostname: &str,
    dialect: Dialect,
) -> Suite {
    let started_at = reports
        .first()
        .map(|r| r.started_at.clone())
        .unwrap_or_else(|| Timestamp::now().to_string());
    let stopped = summary.stopped_at.is_some() as usize;
    let counts = Counts {
        tests: summary.order.len(),
        failures: stopped,
        errors: 0,
        skipped: summary.order.len() - reports.len().min(summary.order.len()),
    };
    let time: Duration = reports.iter().map(|r| r.elapsed.max(r.total())).sum();
    let mut xml = String::new();
    suite_open(
        &mut xml,
        "postflight rolling",
        id,
        &counts,
        time,
        &started_at,
        hostname,
        dialect,
    );
    let run_ids: Vec<&str> = reports.iter().map(|r| r.run.run_id.as_str()).collect();
    properties(
        &mut xml,
        &[("run_ids", run_ids.join(" "))]
            .into_iter()
            .chain(build_properties())
            .chain([("order", summary.order.join(" "))])
            .collect::<Vec<_>>(),
    );
    for node in &summary.order {
        let name = attribute(node);
        let report = reports.iter().find(|r| &r.node == node);
        let time = report.map(|r| r.elapsed.max(r.total())).unwrap_or_default();
        let _ = write!(
            xml,
            "    <testcase name=\"{name}\" classname=\"rolling\" time=\"{}\"",
            seconds(time)
        );
        match report {
            None => xml.push_str(">\n      <skipped message=\"not started\"/>\n    </testcase>\n"),
            Some(report) if summary.stopped_at.as_ref() == Some(node) => {
                let failing: Vec<&str> = report
                    .results
                    .iter()
                    .filter(|r| !r.passed())
                    .map(|r| r.name.as_str())
                    .collect();
                let mut children = String::new();
                outcome(
                    &mut children,
                    "failure",
                    &format!("the rollout stopped here: {}", failing.join(", ")),
                    "stopped",
                    &format!("{}\n", summary.describe()),
                );
                let _ = write!(xml, ">\n{children}    </testcase>\n");
            }
            Some(_) => xml.push_str("/>\n"),
        }
    }
    suite_close(&mut xml, &format!("{}\n", summary.describe()));
    Suite {
        xml,
        tests: counts.tests,
        failures: counts.failures,
        errors: 0,
        time,
    }
}

/// Whole seconds: sub-second timestamps are noise to a reader and rejected by the strict
/// schema. With the zone (`Z`) by default; the Ant schema forbids one, so there the time
/// is written in UTC without it, as Ant itself writes it.
fn timestamp(started_at: &str, dialect: Dialect) -> String {
    let at: Timestamp = started_at.parse().unwrap_or_else(|_| Timestamp::now());
    let format = match dialect {
        Dialect::Jenkins => "%Y-%m-%dT%H:%M:%SZ",
        Dialect::Ant => "%Y-%m-%dT%H:%M:%S",
    };
    at.strftime(format).to_string()
}

/// Seconds with millisecond precision, as every JUnit reader parses them.
fn seconds(duration: Duration) -> String {
    format!("{:.3}", duration.as_secs_f64())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Text content: legal XML characters only, markup escaped.
fn text(raw: &str) -> String {
    escape(raw, false)
}

/// An attribute value: as text, and line breaks and tabs kept as character references,
/// which a parser would otherwise fold into spaces.
fn attribute(raw: &str) -> String {
    escape(raw, true)
}

fn escape(raw: &str, in_attribute: bool) -> String {
    let legal = hostile::for_xml(raw);
    let mut out = String::with_capacity(legal.len());
    for c in legal.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if in_attribute => out.push_str("&quot;"),
            '\n' if in_attribute => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' if in_attribute => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
    out
}

/// What built this binary, as suite properties (`postflight version` says the same).
fn build_properties() -> impl Iterator<Item = (&'static str, String)> {
    crate::build_info::BUILD
        .properties()
        .into_iter()
        .map(|(name, value)| (name, value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{hostile_reports, sample};
    use std::path::{Path, PathBuf};

    fn rolling_summary() -> RollingSummary {
        RollingSummary {
            order: vec!["k8s-worker-03".into(), "k8s-worker-04".into()],
            stopped_at: Some("k8s-worker-03".into()),
            not_started: vec!["k8s-worker-04".into()],
            interrupted_between_nodes: false,
        }
    }

    fn with_flaky_pass() -> Vec<NodeReport> {
        let mut reports = sample();
        let mut passed = CheckResult::new(
            crate::checks::CheckName::CrossNodePodConnectivity,
            "k8s-worker-03",
            Verdict::Passed,
            vec![],
            Duration::from_millis(700),
        );
        passed.flaky =
            vec!["k8s-worker-03/a → k8s-worker-01/b passed on attempt 2 after: curl: (7)".into()];
        reports[0].results[2] = passed;
        reports
    }

    /// Where CI put the Jenkins xunit plugin's schema (`ci/report-tools.sh`).
    fn jenkins_schema() -> PathBuf {
        let dir = std::env::var_os("POSTFLIGHT_SCHEMA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/opt/postflight-ci/schemas"));
        let path = dir.join("junit-10.xsd");
        assert!(
            path.exists(),
            "{} is missing: run `bash ci/report-tools.sh`",
            path.display()
        );
        path
    }

    fn ant_schema() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemas/junit-ant-strict.xsd")
    }

    /// Validates with xmllint, as CI servers' own schema checks would; its absence fails
    /// the test rather than passing it.
    fn assert_valid(xml: &str, schema: &Path) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("junit.xml");
        std::fs::write(&file, xml).unwrap();
        let output = std::process::Command::new("xmllint")
            .args(["--noout", "--schema"])
            .arg(schema)
            .arg(&file)
            .output()
            .expect("xmllint runs (bash ci/report-tools.sh installs it)");
        assert!(
            output.status.success(),
            "{} rejects the JUnit:\n{}\n{xml}",
            schema.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn every_report_validates_against_the_jenkins_and_the_strict_ant_schema() {
        for reports in [sample(), hostile_reports(), with_flaky_pass()] {
            assert_valid(
                &document(&reports, None, "postflight verify", Dialect::Jenkins),
                &jenkins_schema(),
            );
            assert_valid(
                &document(&reports, None, "postflight verify", Dialect::Ant),
                &ant_schema(),
            );
            let summary = rolling_summary();
            assert_valid(
                &document(
                    &reports,
                    Some(&summary),
                    "postflight rolling",
                    Dialect::Jenkins,
                ),
                &jenkins_schema(),
            );
            assert_valid(
                &document(&reports, Some(&summary), "postflight rolling", Dialect::Ant),
                &ant_schema(),
            );
        }
        // And the schemas are not rubber stamps: each refuses what its rules forbid.
        let jenkins = document(&sample(), None, "postflight verify", Dialect::Jenkins);
        let output = |xml: &str, schema: &Path| {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("junit.xml");
            std::fs::write(&file, xml).unwrap();
            std::process::Command::new("xmllint")
                .args(["--noout", "--schema"])
                .arg(schema)
                .arg(&file)
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(
            !output(&jenkins, &ant_schema()),
            "a zone in the timestamp is not strict Ant"
        );
        assert!(!output(
            &jenkins.replace("time=\"9.000\" timestamp", "time=\"9 s\" timestamp"),
            &jenkins_schema()
        ));
    }

    fn parse(xml: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(xml).expect("well-formed XML")
    }

    #[test]
    fn suites_carry_the_run_the_cluster_and_whole_second_timestamps() {
        let xml = document(&sample(), None, "postflight verify", Dialect::Jenkins);
        let doc = parse(&xml);
        let suite = doc
            .descendants()
            .find(|n| n.has_tag_name("testsuite"))
            .unwrap();
        assert_eq!(suite.attribute("timestamp"), Some("2026-11-24T00:00:00Z"));
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
        let properties: std::collections::BTreeMap<&str, &str> = suite
            .descendants()
            .filter(|n| n.has_tag_name("property"))
            .map(|p| (p.attribute("name").unwrap(), p.attribute("value").unwrap()))
            .collect();
        assert_eq!(properties["run_id"], "0badc0de");
        assert_eq!(properties["postflight_version"], env!("CARGO_PKG_VERSION"));
        let build = crate::build_info::BUILD;
        assert_eq!(properties["postflight_commit"], build.commit);
        assert_eq!(properties["rustc"], build.rustc);
        assert_eq!(properties["kubernetes_api"], build.kubernetes_api);
        assert_eq!(properties["api_server"], "https://198.18.0.1:6443/");
        assert_eq!(properties["context"], "lab");
        assert_eq!(
            properties["lock_holder"],
            "postflight@ci pid 7 run 0badc0de"
        );
        let ant = document(&sample(), None, "postflight verify", Dialect::Ant);
        assert!(ant.contains("timestamp=\"2026-11-24T00:00:00\""), "{ant}");
    }

    #[test]
    fn the_failure_body_holds_the_evidence_and_its_type_says_what_failed() {
        let xml = document(&sample(), None, "postflight verify", Dialect::Jenkins);
        let doc = parse(&xml);
        let cases: Vec<_> = doc
            .descendants()
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
        assert_eq!(cases[1].attribute("time"), Some("1.500"));
        let failure = cases[1]
            .children()
            .find(|n| n.has_tag_name("failure"))
            .unwrap();
        assert_eq!(
            failure.attribute("message"),
            Some("/var/run/calico is 700 0 0 & <bad>")
        );
        assert_eq!(failure.attribute("type"), Some("run_dir_permissions"));
        let body = failure.text().unwrap_or_default();
        assert!(
            body.contains("/var/run/calico: observed 700 0 0 | expected 755 999 999"),
            "{body}"
        );
        let out = cases[1]
            .children()
            .find(|n| n.has_tag_name("system-out"))
            .and_then(|n| n.text())
            .unwrap_or_default();
        assert!(
            out.contains("stat said \"700 0 0\""),
            "the long material: {out}"
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
    }

    #[test]
    fn a_pass_after_a_retry_is_marked_flaky_in_both_dialects() {
        let xml = document(
            &with_flaky_pass(),
            None,
            "postflight verify",
            Dialect::Jenkins,
        );
        let doc = parse(&xml);
        let case = doc
            .descendants()
            .find(|n| n.attribute("name") == Some("cross_node_pod_connectivity"))
            .unwrap();
        assert!(!case
            .children()
            .any(|n| n.has_tag_name("failure") || n.has_tag_name("error")));
        let flaky = case
            .children()
            .find(|n| n.has_tag_name("flakyFailure"))
            .expect("marked flaky");
        assert!(flaky.attribute("message").unwrap().contains("attempt 2"));
        let ant = document(&with_flaky_pass(), None, "postflight verify", Dialect::Ant);
        assert!(
            ant.contains("name=\"flaky\" value=\"cross_node_pod_connectivity: "),
            "{ant}"
        );
    }

    #[test]
    fn hostile_text_neither_breaks_nor_forges_the_junit() {
        for dialect in [Dialect::Jenkins, Dialect::Ant] {
            let xml = document(&hostile_reports(), None, "postflight verify", dialect);
            let doc = parse(&xml);
            let names: Vec<&str> = doc
                .descendants()
                .filter(|n| n.has_tag_name("testcase"))
                .filter_map(|n| n.attribute("name"))
                .collect();
            assert!(!names.contains(&"forged_check"), "{names:?}");
            assert_eq!(names.len(), 3, "{names:?}");
            let out: String = doc
                .descendants()
                .filter(|n| n.has_tag_name("system-out"))
                .flat_map(|n| n.children().filter_map(|c| c.text()))
                .collect();
            assert!(
                out.contains("]]></system-out></testcase><testcase name=\"forged_check\""),
                "the line is kept, as text"
            );
            assert!(out.contains("more bytes not shown"), "the huge log is cut");
            assert!(
                xml.len() < 3 * crate::hostile::MAX_EVIDENCE_BYTES,
                "{} bytes",
                xml.len()
            );
        }
    }

    #[test]
    fn the_rolling_suite_shows_the_rollout_node_by_node() {
        let xml = document(
            &sample(),
            Some(&rolling_summary()),
            "postflight rolling",
            Dialect::Jenkins,
        );
        let doc = parse(&xml);
        // Only the summary suite is named after the command: looked up by name, it is
        // found, not the root.
        assert_eq!(doc.root_element().attribute("name"), Some("postflight"));
        let rolling: Vec<_> = doc
            .descendants()
            .filter(|n| n.attribute("classname") == Some("rolling"))
            .collect();
        assert_eq!(rolling.len(), 2);
        assert!(rolling[0]
            .children()
            .any(|n| n.has_tag_name("failure") && n.attribute("type") == Some("stopped")));
        assert!(rolling[1].children().any(|n| n.has_tag_name("skipped")));
    }
}
