//! The run as Prometheus text exposition, for node_exporter's textfile collector: a
//! nightly job writes it, node_exporter serves it, and a dashboard trends it over nights.
//! Every series carries the command (`verify`, `mesh`, …) so that runs of different
//! commands written to different files never collide.

use super::NodeReport;
use crate::checks::Verdict;
use std::fmt::Write;
use std::time::Duration;

/// The steps between the reboot being sent and the node being Ready on a new boot.
const REBOOT_STEPS: [&str; 2] = [
    "wait for the node to go down",
    "wait for the node to be Ready on a new boot",
];

/// The step of `mesh` that probes every pair.
pub const MESH_STEP: &str = "probe the pod mesh";

pub fn exposition(reports: &[NodeReport], title: &str) -> String {
    let command = title.strip_prefix("postflight ").unwrap_or(title);
    let command = label(command);
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        if samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{command=\"{command}\"{labels}}} {value}");
        }
    };

    let started = reports
        .iter()
        .filter_map(|r| r.started_at.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .min()
        .map(|at| at.as_second() as f64);
    family(
        "postflight_run_timestamp_seconds",
        "gauge",
        "When the run started, in seconds since the Unix epoch.",
        started.into_iter().map(|at| (String::new(), at)).collect(),
    );
    family(
        "postflight_run_exit_code",
        "gauge",
        "The run's exit code: 0 passed, 1 a check failed, 3 a check could not run, 130 interrupted.",
        vec![(String::new(), f64::from(super::exit_code(reports)))],
    );
    let each_check = |value: &dyn Fn(&crate::checks::CheckResult) -> f64| {
        reports
            .iter()
            .flat_map(|node| {
                node.results.iter().map(move |result| {
                    (
                        format!(",node=\"{}\",check=\"{}\"", label(&node.node), result.name),
                        value(result),
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    family(
        "postflight_check_passed",
        "gauge",
        "1 if the check passed or had nothing to judge, 0 if it failed or could not run.",
        each_check(&|r| f64::from(u8::from(r.passed()))),
    );
    let mut statuses = Vec::new();
    for node in reports {
        for result in &node.results {
            let actual = match result.verdict {
                Verdict::Passed if !result.flaky.is_empty() => "flaky",
                Verdict::Passed => "passed",
                Verdict::Failed(_) => "failed",
                Verdict::Error(_) => "error",
                Verdict::Skipped(_) => "skipped",
            };
            for status in ["passed", "flaky", "failed", "error", "skipped"] {
                statuses.push((
                    format!(
                        ",node=\"{}\",check=\"{}\",status=\"{status}\"",
                        label(&node.node),
                        result.name
                    ),
                    f64::from(u8::from(status == actual)),
                ));
            }
        }
    }
    family(
        "postflight_check_status",
        "gauge",
        "The check's verdict: 1 on the status it had, 0 on the others (flaky: passed after a retry).",
        statuses,
    );
    family(
        "postflight_check_duration_seconds",
        "gauge",
        "How long the check took.",
        each_check(&|r| r.duration.as_secs_f64()),
    );
    let per_node = |value: &dyn Fn(&NodeReport) -> Option<Duration>| {
        reports
            .iter()
            .filter_map(|node| {
                value(node).map(|d| (format!(",node=\"{}\"", label(&node.node)), d.as_secs_f64()))
            })
            .collect::<Vec<_>>()
    };
    family(
        "postflight_reboot_duration_seconds",
        "gauge",
        "From the reboot being sent to the node being Ready on a new boot.",
        per_node(&|node| {
            let steps: Vec<Duration> = node
                .steps
                .iter()
                .filter(|s| REBOOT_STEPS.contains(&s.step.as_str()))
                .map(|s| s.duration)
                .collect();
            (steps.len() == REBOOT_STEPS.len()).then(|| steps.iter().sum())
        }),
    );
    family(
        "postflight_ready_to_verdict_seconds",
        "gauge",
        "From the node being Ready to the last verdict.",
        per_node(&|node| node.ready_to_verdict),
    );
    family(
        "postflight_mesh_duration_seconds",
        "gauge",
        "How long probing every ordered pod pair took.",
        per_node(&|node| {
            node.steps
                .iter()
                .find(|s| s.step == MESH_STEP)
                .map(|s| s.duration)
        }),
    );
    let mut pairs = Vec::new();
    for node in reports {
        let mut counts = [("passed", 0u32), ("flaky", 0), ("failed", 0)];
        for pair in node.results.iter().flat_map(|r| &r.pairs) {
            let index = match (pair.passed, pair.flaky()) {
                (true, false) => 0,
                (true, true) => 1,
                (false, _) => 2,
            };
            counts[index].1 += 1;
        }
        if counts.iter().any(|(_, count)| *count > 0) {
            for (state, count) in counts {
                pairs.push((
                    format!(",node=\"{}\",state=\"{state}\"", label(&node.node)),
                    f64::from(count),
                ));
            }
        }
    }
    family(
        "postflight_pod_pairs",
        "gauge",
        "Pod pairs the node's checks probed, by outcome.",
        pairs,
    );
    family(
        "postflight_mesh_node_implicated",
        "gauge",
        "1 if the pod mesh names the node as the one at fault (its pairs fail both ways, or every pair from or to it), 0 if not.",
        reports
            .iter()
            .flat_map(|node| {
                node.results
                    .iter()
                    .filter(|r| r.name == crate::checks::CheckName::PodMesh)
                    .map(move |r| {
                        (
                            format!(",node=\"{}\"", label(&node.node)),
                            f64::from(u8::from(r.implicated.is_some())),
                        )
                    })
            })
            .collect(),
    );
    family(
        "postflight_step_duration_seconds",
        "gauge",
        "How long each step of the node's run took.",
        reports
            .iter()
            .flat_map(|node| {
                node.steps.iter().map(move |step| {
                    (
                        format!(
                            ",node=\"{}\",step=\"{}\"",
                            label(&node.node),
                            label(&step.step)
                        ),
                        step.duration.as_secs_f64(),
                    )
                })
            })
            .collect(),
    );
    out
}

/// A label value as the exposition format escapes it; a node name from the cluster
/// cannot end the value or start another series.
fn label(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{hostile_reports, sample};

    /// promtool, from Debian's prometheus package (ci/report-tools.sh), as the textfile
    /// collector's users lint their files. Its absence fails the test.
    fn promtool_check(text: &str) -> (bool, String) {
        use std::io::Write as _;
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool runs (bash ci/report-tools.sh installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    }

    #[test]
    fn the_exposition_passes_promtool_and_says_what_each_check_did() {
        for reports in [sample(), hostile_reports()] {
            let text = exposition(&reports, "postflight verify");
            let (ok, said) = promtool_check(&text);
            assert!(ok && said.trim().is_empty(), "promtool: {said}\n{text}");
        }
        let text = exposition(&sample(), "postflight verify");
        assert!(text.contains(
            "postflight_check_passed{command=\"verify\",node=\"k8s-worker-03\",check=\"run_dir_permissions\"} 0"
        ), "{text}");
        assert!(text.contains(
            "postflight_check_status{command=\"verify\",node=\"k8s-worker-03\",check=\"cross_node_pod_connectivity\",status=\"error\"} 1"
        ), "{text}");
        assert!(
            text.contains(
                "postflight_ready_to_verdict_seconds{command=\"verify\",node=\"k8s-worker-03\"} 4"
            ),
            "{text}"
        );
        assert!(
            text.contains("postflight_run_timestamp_seconds{command=\"verify\"} 1795478400"),
            "{text}"
        );
        // A broken file is refused: the check above is not a rubber stamp.
        assert!(!promtool_check("postflight_x{node=\"a} 1\n").0);
    }

    #[test]
    fn the_mesh_says_which_node_is_at_fault_for_every_node() {
        let text = exposition(&crate::report::tests::mesh_reports(), "postflight mesh");
        let (ok, said) = promtool_check(&text);
        assert!(ok && said.trim().is_empty(), "promtool: {said}\n{text}");
        let implicated: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("postflight_mesh_node_implicated{"))
            .collect();
        assert_eq!(implicated.len(), 3, "{text}");
        assert!(implicated[0].ends_with("node=\"k8s-w1\"} 0"), "{text}");
        assert!(
            implicated[2].starts_with("postflight_mesh_node_implicated{command=\"mesh\",node=\"w3")
                && implicated[2].ends_with("} 1"),
            "{text}"
        );
        let verify = exposition(&crate::report::tests::sample(), "postflight verify");
        assert!(
            !verify.contains("postflight_mesh_node_implicated"),
            "only mesh has it"
        );
    }

    #[test]
    fn a_hostile_node_name_stays_inside_its_label() {
        assert_eq!(label("a\"} 1\nevil{x=\"y"), "a\\\"} 1\\nevil{x=\\\"y");
    }
}
