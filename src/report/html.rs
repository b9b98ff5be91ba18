//! The run as one self-contained HTML page, for the nightly job's artifact and for the
//! person who opens it the next morning: per node, the timeline of the run's phases;
//! for connectivity and mesh, an N×N heat map of pod pairs, each cell with its evidence;
//! and every check with its evidence, diagnosis and fix.
//!
//! The page fetches nothing (no scripts, fonts or images from anywhere) and is laid out
//! for 1400 px. Everything from the cluster or a node goes through `hostile::for_html`.

use super::{NodeReport, RollingSummary};
use crate::checks::{Implication, PairResult, Verdict};
use crate::hostile::for_html as escape;
use std::collections::BTreeMap;
use std::fmt::Write;

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1360px; color: #1d2330; background: #fafbfc; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; } h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: #5b6475; } .meta code { color: #1d2330; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; font-size: 12px; color: #fff; vertical-align: middle; }
.badge.passed, .legend i.passed { background: #1f883d; } .badge.failed, .legend i.failed { background: #cf222e; } .badge.error { background: #bf8700; } .badge.skipped { background: #8c959f; } .badge.flaky, .legend i.flaky { background: #8250df; }
tr.check.failed td { background: #ffebe9; } tr.check.error td { background: #fff8c5; } tr.check.flaky td { background: #fbefff; }
li.pair.failed { color: #a40e26; } li.pair.flaky { color: #6639ba; }
section.node, section#heatmap, section#rolling { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 12px 18px 18px; margin: 18px 0; }
.timeline { display: grid; grid-template-columns: 320px 1fr 70px; gap: 3px 10px; align-items: center; }
.timeline .track { position: relative; height: 16px; background: #f0f2f5; border-radius: 3px; }
.timeline .bar { position: absolute; top: 0; bottom: 0; min-width: 3px; border-radius: 3px; background: #57606a; }
.bar.lock { background: #6e7781; } .bar.preflight { background: #0969da; } .bar.drain { background: #9a6700; } .bar.reboot { background: #cf222e; }
.bar.down { background: #a40e26; } .bar.ready { background: #1a7f37; } .bar.calico { background: #fb8500; } .bar.probe { background: #8250df; } .bar.cleanup { background: #8c959f; }
.timeline .marker { position: absolute; top: -3px; bottom: -3px; width: 3px; background: #1d2330; }
.timeline .took { text-align: right; font-variant-numeric: tabular-nums; color: #5b6475; }
table.checks { border-collapse: collapse; width: 100%; margin-top: 8px; }
table.checks th, table.checks td { border-top: 1px solid #d0d7de; padding: 6px 8px; text-align: left; vertical-align: top; }
table.checks td.time { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
pre { white-space: pre-wrap; word-break: break-word; margin: 4px 0; font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; background: #f6f8fa; padding: 6px 8px; border-radius: 4px; }
ul.evidence { margin: 4px 0; padding-left: 18px; } .fix { color: #0a3069; }
table.heatmap { border-collapse: separate; border-spacing: 2px; }
table.heatmap th { font-weight: 500; font-size: 12px; color: #5b6475; padding: 2px 6px; white-space: nowrap; }
table.heatmap th.to { writing-mode: vertical-rl; transform: rotate(180deg); height: 120px; text-align: left; }
table.heatmap td { width: var(--cell); height: var(--cell); padding: 0; border-radius: 3px; text-align: center; color: #fff; font-size: 11px; line-height: var(--cell); }
.scroll { overflow-x: auto; }
table.heatmap th.implicated { color: #cf222e; font-weight: 700; } td.cell.implicated { box-shadow: inset 0 0 0 2px #6e1b1b; }
ul.attribution { color: #6e1b1b; font-weight: 600; }
td.cell.passed { background: #2da44e; } td.cell.failed { background: #cf222e; } td.cell.flaky { background: #8250df; } td.cell.none { background: #eaeef2; }
.legend span { margin-right: 14px; } .legend i { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -1px; margin-right: 4px; }
"#;

pub fn document(reports: &[NodeReport], rolling: Option<&RollingSummary>, title: &str) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=1400\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(title)
    );
    header(&mut page, reports, title);
    if let Some(summary) = rolling {
        rolling_section(&mut page, summary, reports);
    }
    let pairs: Vec<&PairResult> = reports
        .iter()
        .flat_map(|r| &r.results)
        .flat_map(|r| &r.pairs)
        .collect();
    if !pairs.is_empty() {
        let implicated: Vec<&Implication> = reports
            .iter()
            .flat_map(|r| &r.results)
            .filter_map(|r| r.implicated.as_ref())
            .collect();
        heat_map(&mut page, &pairs, &implicated);
    }
    for node in reports {
        node_section(&mut page, node);
    }
    page.push_str("</body>\n</html>\n");
    page
}

fn verdict_class(verdict: &Verdict, flaky: bool) -> &'static str {
    match verdict {
        Verdict::Passed if flaky => "flaky",
        Verdict::Passed => "passed",
        Verdict::Failed(_) => "failed",
        Verdict::Error(_) => "error",
        Verdict::Skipped(_) => "skipped",
    }
}

fn node_class(node: &NodeReport) -> &'static str {
    if node.failed() {
        "failed"
    } else if node.errored() {
        "error"
    } else {
        "passed"
    }
}

fn header(page: &mut String, reports: &[NodeReport], title: &str) {
    let count = |class: &str| {
        reports
            .iter()
            .flat_map(|r| &r.results)
            .filter(|r| verdict_class(&r.verdict, !r.flaky.is_empty()) == class)
            .count()
    };
    let code = super::exit_code(reports);
    let _ = write!(
        page,
        "<header>\n<h1>{} <span class=\"badge {}\" id=\"exit-code\" data-exit-code=\"{code}\">exit {code}</span></h1>\n",
        escape(title),
        match code {
            0 => "passed",
            1 => "failed",
            _ => "error",
        }
    );
    let _ = writeln!(
        page,
        "<p class=\"meta\" id=\"summary\" data-passed=\"{}\" data-flaky=\"{}\" data-failed=\"{}\" data-error=\"{}\" data-skipped=\"{}\">{} passed · {} flaky · {} failed · {} could not run · {} skipped</p>",
        count("passed"),
        count("flaky"),
        count("failed"),
        count("error"),
        count("skipped"),
        count("passed"),
        count("flaky"),
        count("failed"),
        count("error"),
        count("skipped"),
    );
    let build = crate::build_info::BUILD;
    let mut facts = vec![format!(
        "postflight <code>{}</code> (<code>{}</code>)",
        build.version,
        escape(build.commit)
    )];
    if let Some(first) = reports.first() {
        facts.push(format!(
            "started <code>{}</code>",
            escape(&first.started_at)
        ));
        if let Some(server) = &first.run.api_server {
            facts.push(format!("API server <code>{}</code>", escape(server)));
        }
        if let Some(context) = &first.run.context {
            facts.push(format!("context <code>{}</code>", escape(context)));
        }
    }
    let mut runs: Vec<String> = reports
        .iter()
        .map(|r| escape(&r.run.run_id))
        .filter(|id| !id.is_empty())
        .collect();
    runs.dedup();
    if !runs.is_empty() {
        facts.push(format!("run <code>{}</code>", runs.join(" ")));
    }
    let _ = writeln!(
        page,
        "<p class=\"meta\">{}</p>\n</header>",
        facts.join(" · ")
    );
}

fn rolling_section(page: &mut String, summary: &RollingSummary, reports: &[NodeReport]) {
    page.push_str("<section id=\"rolling\">\n<h2>Rolling update</h2>\n<p>");
    let steps: Vec<String> = summary
        .order
        .iter()
        .map(|node| {
            let class = match reports.iter().find(|r| &r.node == node) {
                None => "skipped",
                Some(report) => node_class(report),
            };
            format!("<span class=\"badge {class}\">{}</span>", escape(node))
        })
        .collect();
    let _ = writeln!(
        page,
        "{}</p>\n<p>{}</p>\n</section>",
        steps.join(" → "),
        escape(&summary.describe())
    );
}

/// Pod pairs folded to node pairs: a cell is failed if any of its pod pairs failed,
/// flaky if all passed but one needed a retry. The rows and columns of nodes the mesh
/// implicates are marked, and what it found of each is said above the map.
fn heat_map(page: &mut String, pairs: &[&PairResult], implicated: &[&Implication]) {
    let mut nodes: Vec<&str> = pairs
        .iter()
        .flat_map(|p| [p.from_node.as_str(), p.to_node.as_str()])
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    let mut cells: BTreeMap<(&str, &str), Vec<&PairResult>> = BTreeMap::new();
    for pair in pairs {
        cells
            .entry((pair.from_node.as_str(), pair.to_node.as_str()))
            .or_default()
            .push(pair);
    }
    let state = |pairs: &[&PairResult]| {
        if pairs.iter().any(|p| !p.passed) {
            "failed"
        } else if pairs.iter().any(|p| p.flaky()) {
            "flaky"
        } else {
            "passed"
        }
    };
    let _ = writeln!(
        page,
        "<section id=\"heatmap\" data-nodes=\"{}\">\n<h2>Pod pairs</h2>\n<p class=\"legend\"><span><i class=\"passed\"></i>answered</span><span><i class=\"flaky\"></i>answered after a retry</span><span><i class=\"failed\"></i>failed</span><span><i style=\"background:#eaeef2\"></i>not probed</span> Rows send, columns receive; hover a cell for its evidence.</p>",
        nodes.len()
    );
    let failed = pairs.iter().filter(|p| !p.passed).count();
    let flaky = pairs.iter().filter(|p| p.flaky()).count();
    let _ = writeln!(
        page,
        "<p id=\"pair-summary\" data-pairs=\"{}\" data-failed=\"{failed}\" data-flaky=\"{flaky}\">{} pod pairs: {failed} failed, {flaky} answered only after a retry.</p>",
        pairs.len(),
        pairs.len()
    );
    if !implicated.is_empty() {
        page.push_str("<ul id=\"mesh-attribution\" class=\"attribution\">\n");
        for implication in implicated {
            let _ = writeln!(
                page,
                "<li data-implicated=\"{}\">{}</li>",
                escape(&implication.matrix.node),
                escape(&implication.summary)
            );
        }
        page.push_str("</ul>\n");
    } else if failed > 0 {
        page.push_str("<p id=\"mesh-attribution\" class=\"attribution\">No single node is at fault: the failed pairs fit no node's pattern (see each failing node's pod_mesh).</p>\n");
    }
    let marked = |node: &str| implicated.iter().any(|i| i.matrix.node == node);
    // Cells shrink with the cluster, so that 64 nodes still fit 1400 px.
    let cell = (1100 / nodes.len().max(1)).clamp(8, 22);
    let _ = write!(
        page,
        "<div class=\"scroll\"><table class=\"heatmap\" style=\"--cell:{cell}px\">\n<tr><th></th>"
    );
    let mark = |node: &str| {
        if marked(node) {
            " implicated\" data-implicated=\"true"
        } else {
            ""
        }
    };
    for to in &nodes {
        let _ = write!(page, "<th class=\"to{}\">{}</th>", mark(to), escape(to));
    }
    page.push_str("</tr>\n");
    for from in &nodes {
        let _ = write!(
            page,
            "<tr><th class=\"from{}\">{}</th>",
            mark(from),
            escape(from)
        );
        for to in &nodes {
            match cells.get(&(*from, *to)) {
                None => page.push_str("<td class=\"cell none\" data-state=\"none\"></td>"),
                Some(pairs) => {
                    let state = state(pairs);
                    let evidence: Vec<String> = pairs.iter().map(|p| pair_line(p)).collect();
                    let edge = if marked(from) || marked(to) {
                        " implicated"
                    } else {
                        ""
                    };
                    let _ = write!(
                        page,
                        "<td class=\"cell {state}{edge}\" data-state=\"{state}\" data-from=\"{}\" data-to=\"{}\" title=\"{}\">{}</td>",
                        escape(from),
                        escape(to),
                        escape(&evidence.join("\n")),
                        match state {
                            "failed" => "✘",
                            "flaky" => "~",
                            _ => "",
                        }
                    );
                }
            }
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</table></div>\n");
    let failing: Vec<&&PairResult> = pairs.iter().filter(|p| !p.passed || p.flaky()).collect();
    if !failing.is_empty() {
        page.push_str("<h3>Pairs that failed or needed a retry</h3>\n<ul class=\"evidence\" id=\"failing-pairs\">\n");
        for pair in failing {
            let _ = writeln!(
                page,
                "<li class=\"pair {}\">{}</li>",
                if pair.passed { "flaky" } else { "failed" },
                escape(&pair_line(pair))
            );
        }
        page.push_str("</ul>\n");
    }
    page.push_str("</section>\n");
}

fn pair_line(pair: &PairResult) -> String {
    let mut line = format!("{}: {}", pair.label(), pair.observed);
    if pair.attempts > 1 {
        let _ = write!(line, " (attempt {})", pair.attempts);
    }
    if !pair.earlier_failures.is_empty() {
        let _ = write!(line, "; before: {}", pair.earlier_failures.join("; "));
    }
    line
}

/// What kind of phase a step is, for its colour on the timeline.
fn phase_class(step: &str) -> &'static str {
    let step = step.to_ascii_lowercase();
    let kinds = [
        ("lock", "lock"),
        ("preflight", "preflight"),
        ("drain", "drain"),
        ("cordon", "drain"),
        ("issue the reboot", "reboot"),
        ("go down", "down"),
        ("ready on a new boot", "ready"),
        ("calico", "calico"),
        ("probe", "probe"),
        ("delete", "cleanup"),
        ("release", "cleanup"),
    ];
    kinds
        .iter()
        .find(|(keyword, _)| step.contains(keyword))
        .map_or("other", |(_, class)| class)
}

fn node_section(page: &mut String, node: &NodeReport) {
    let class = node_class(node);
    let _ = write!(
        page,
        "<section class=\"node\" data-node=\"{}\" data-verdict=\"{class}\">\n<h2>{}{} <span class=\"badge {class}\">{class}</span></h2>\n",
        escape(&node.node),
        escape(&node.node),
        if node.rebooted { " (rebooted)" } else { "" },
    );
    // The timeline: each step where it happened within the node's run.
    let span = node
        .steps
        .iter()
        .map(|s| s.started_after + s.duration)
        .max()
        .unwrap_or_default()
        .max(node.elapsed)
        .as_secs_f64()
        .max(0.001);
    page.push_str("<h3>Timeline</h3>\n<div class=\"timeline\">\n");
    for step in &node.steps {
        let left = step.started_after.as_secs_f64() / span * 100.0;
        let width = step.duration.as_secs_f64() / span * 100.0;
        let _ = writeln!(
            page,
            "<div class=\"label\">{}</div><div class=\"track\"><div class=\"bar {}\" style=\"left:{left:.2}%;width:{width:.2}%\" title=\"{} s after the start, took {:.1} s\"></div></div><div class=\"took\">{:.1} s</div>",
            escape(&step.step),
            phase_class(&step.step),
            format_args!("{:.1}", step.started_after.as_secs_f64()),
            step.duration.as_secs_f64(),
            step.duration.as_secs_f64(),
        );
    }
    let verdict_label = match node.ready_to_verdict {
        Some(d) => format!("verdict ({:.1} s after Ready)", d.as_secs_f64()),
        None => "verdict".into(),
    };
    let _ = writeln!(
        page,
        "<div class=\"label\"><b>{verdict_label}</b></div><div class=\"track\"><div class=\"marker\" style=\"left:calc({:.2}% - 3px)\"></div></div><div class=\"took\">{:.1} s</div>\n</div>",
        node.elapsed.as_secs_f64() / span * 100.0,
        node.elapsed.as_secs_f64(),
    );
    // The checks, with what was seen and what fixes it.
    page.push_str("<h3>Checks</h3>\n<table class=\"checks\">\n<tr><th>check</th><th>verdict</th><th>time</th><th>what was seen</th><th>diagnosis and fix</th></tr>\n");
    for result in &node.results {
        let class = verdict_class(&result.verdict, !result.flaky.is_empty());
        let mut seen = String::new();
        if let Verdict::Failed(message) | Verdict::Error(message) | Verdict::Skipped(message) =
            &result.verdict
        {
            let _ = write!(seen, "<div>{}</div>", escape(message));
        }
        let shown: Vec<_> = if result.passed() && result.evidence.len() > 6 {
            Vec::new()
        } else {
            result.evidence.iter().collect()
        };
        if !shown.is_empty() {
            seen.push_str("<ul class=\"evidence\">");
            for evidence in shown {
                let _ = write!(
                    seen,
                    "<li>{}: observed <b>{}</b>, expected {}</li>",
                    escape(&evidence.what),
                    escape(&evidence.observed),
                    escape(&evidence.expected)
                );
            }
            seen.push_str("</ul>");
        }
        for flaky in &result.flaky {
            let _ = write!(
                seen,
                "<div class=\"flaky-note\">flaky: {}</div>",
                escape(flaky)
            );
        }
        if !result.details.is_empty() {
            let _ = write!(
                seen,
                "<details><summary>logs and output</summary><pre>{}</pre></details>",
                escape(&result.details.join("\n"))
            );
        }
        let mut fix = String::new();
        if let Some(diagnosis) = &result.diagnosis {
            let _ = write!(fix, "<div>{}</div>", escape(&diagnosis.root_cause));
            if !diagnosis.remediation.is_empty() {
                let _ = write!(
                    fix,
                    "<pre class=\"fix\">{}</pre>",
                    escape(
                        &diagnosis
                            .remediation
                            .iter()
                            .map(crate::fix::Fix::render)
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                );
            }
            if let Some(prevention) = &diagnosis.prevention {
                let _ = write!(fix, "<div>prevent: {}</div>", escape(prevention));
            }
        }
        let _ = writeln!(
            page,
            "<tr class=\"check {class}\" data-check=\"{}\" data-verdict=\"{class}\"><td><code>{}</code></td><td><span class=\"badge {class}\">{class}</span></td><td class=\"time\">{:.1} s</td><td>{seen}</td><td>{fix}</td></tr>",
            result.name,
            result.name,
            result.duration.as_secs_f64(),
        );
    }
    page.push_str("</table>\n");
    if !node.notes.is_empty() {
        page.push_str("<h3>Notes</h3>\n<ul>\n");
        for note in &node.notes {
            let _ = writeln!(page, "<li>{}</li>", escape(note));
        }
        page.push_str("</ul>\n");
    }
    page.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{hostile_reports, sample};

    #[test]
    fn the_page_fetches_nothing_and_escapes_what_the_cluster_said() {
        let page = document(&hostile_reports(), None, "postflight verify");
        for fetch in ["<script", "src=", "href=", "@import", "url("] {
            assert!(!page.contains(fetch), "{fetch} in the page");
        }
        assert!(!page.contains("<testcase name=\"forged_check\""), "escaped");
        assert!(page.contains("&lt;testcase name=&quot;forged_check&quot;"));
        assert!(!page.contains('\u{1b}'));
    }

    #[test]
    fn the_heat_map_marks_failing_pairs_and_keeps_their_evidence() {
        let mut reports = sample();
        let pair = |from: &str, to: &str, passed: bool, earlier: &[&str]| PairResult {
            from_node: from.into(),
            from_pod: format!("p-{from}"),
            to_node: to.into(),
            to_pod: format!("p-{to}"),
            passed,
            observed: if passed {
                "HTTP 200".into()
            } else {
                "curl: (28) Connection timed out".into()
            },
            attempts: earlier.len() as u32 + 1,
            earlier_failures: earlier.iter().map(|e| e.to_string()).collect(),
        };
        reports[0].results[2].pairs = vec![
            pair("w1", "w2", true, &[]),
            pair("w2", "w1", false, &[]),
            pair("w1", "w1", true, &["curl: (7) refused"]),
        ];
        let page = document(&reports, None, "postflight mesh");
        assert_eq!(page.matches("data-state=\"failed\"").count(), 1);
        assert_eq!(page.matches("data-state=\"flaky\"").count(), 1);
        assert_eq!(page.matches("data-state=\"none\"").count(), 1, "w2 → w2");
        assert!(page.contains("data-from=\"w2\" data-to=\"w1\" title=\"w2/p-w2 → w1/p-w1: curl: (28) Connection timed out\""), "{page}");
    }

    #[test]
    fn steps_get_the_colour_of_their_phase() {
        assert_eq!(phase_class("take the reboot lock"), "lock");
        assert_eq!(phase_class("issue the reboot"), "reboot");
        assert_eq!(phase_class("wait for the node to go down"), "down");
        assert_eq!(
            phase_class("wait for the node to be Ready on a new boot"),
            "ready"
        );
        assert_eq!(phase_class("wait for calico-node Ready"), "calico");
        assert_eq!(phase_class("probe pod connectivity"), "probe");
    }
}
