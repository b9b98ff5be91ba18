//! The nightly view against a real lab: `mesh` over every ordered pod pair, and the HTML
//! and metrics reports as a browser and promtool read them.

mod common;
use common::*;

#[test]
fn mesh_passes_on_a_healthy_lab_and_names_every_pair_the_incident_breaks() {
    let lab = lab("pf-mesh", 5);
    let inventory = lab.paths().inventory();
    let reports = tempfile::tempdir().unwrap();
    let html = reports.path().join("mesh.html");
    let metrics = reports.path().join("mesh.prom");
    let extra = |name: &str| {
        [
            "mesh".to_string(),
            "--html".into(),
            reports
                .path()
                .join(format!("{name}.html"))
                .display()
                .to_string(),
            "--metrics".into(),
            reports
                .path()
                .join(format!("{name}.prom"))
                .display()
                .to_string(),
        ]
    };
    let args = extra("mesh");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_postflight(&inventory, &args, reports.path(), "mesh");
    assert_eq!(run.code(), 0, "{}", run.describe());
    let nodes = run.json["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 5);
    let pairs: Vec<&serde_json::Value> = nodes
        .iter()
        .flat_map(|n| n["results"][0]["pairs"].as_array().unwrap())
        .collect();
    assert_eq!(pairs.len(), 20, "every ordered pair of 5 nodes");
    assert!(pairs.iter().all(|p| p["passed"] == true), "{pairs:#?}");
    assert_eq!(run.junit_cases().len(), 5);
    let dom = chromium_dom(&html, None);
    assert_eq!(count_attribute(&dom, "data-state", "passed"), 20, "{dom}");
    assert_eq!(count_attribute(&dom, "data-state", "failed"), 0);
    assert_promtool_accepts(&metrics);
    assert_no_probe_left(&lab);

    // The incident on one node: every pair to and from it fails, and only those.
    let broken = "k8s-worker-03";
    break_like_the_incident(&lab, broken, std::time::Duration::from_secs(90));
    let args = extra("incident");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_postflight(&inventory, &args, reports.path(), "incident");
    assert_eq!(run.code(), 1, "{}", run.describe());
    let failed: Vec<(String, String)> = run.json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["results"][0]["pairs"].as_array().unwrap().clone())
        .filter(|p| p["passed"] == false)
        .map(|p| {
            (
                p["from_node"].as_str().unwrap().to_string(),
                p["to_node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(failed.len(), 8, "{failed:?}");
    assert!(
        failed
            .iter()
            .all(|(from, to)| from == broken || to == broken),
        "{failed:?}"
    );
    // Each failure is named src → dst with the client's own error.
    let message = run.message("pod_mesh");
    assert!(
        message.contains(" → ") && message.contains("curl: ("),
        "{message}"
    );
    let dom = chromium_dom(
        &reports.path().join("incident.html"),
        Some(&artifact("mesh-incident.png")),
    );
    assert_eq!(count_attribute(&dom, "data-state", "failed"), 8, "{dom}");
    assert_eq!(count_attribute(&dom, "data-state", "passed"), 12);
    assert!(dom.contains(&format!("data-from=\"{broken}\"")));
    assert_promtool_accepts(&reports.path().join("incident.prom"));
    assert_no_probe_left(&lab);
}

/// The nightly run at the size the issue names: 50 nodes, 2,450 ordered pairs, in one
/// exec per source pod. (How long it takes is the benchmark's business, not a test's.)
#[test]
fn mesh_covers_every_pair_of_a_50_node_lab_with_one_exec_per_node() {
    let lab = lab("pf-mesh50", 50);
    let reports = tempfile::tempdir().unwrap();
    let html = reports.path().join("mesh50.html");
    let execs_before = api_requests(&lab, &["subresource=\"exec\""]);
    let run = run_postflight(
        &lab.paths().inventory(),
        &["mesh", "--html", html.to_str().unwrap()],
        reports.path(),
        "mesh50",
    );
    assert_eq!(run.code(), 0, "{}", run.describe());
    let execs = api_requests(&lab, &["subresource=\"exec\""]) - execs_before;
    // A source whose failed pairs were tried again spent one more exec on them.
    let retried = run.json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| {
            n["results"][0]["pairs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p.get("earlier_failures").is_some())
        })
        .count();
    assert_eq!(
        execs,
        (50 + retried) as f64,
        "one exec per source pod, none per pair"
    );
    let pairs: usize = run.json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["results"][0]["pairs"].as_array().unwrap().len())
        .sum();
    assert_eq!(pairs, 50 * 49);
    let dom = chromium_dom(&html, Some(&artifact("mesh-50-nodes.png")));
    assert_eq!(count_attribute(&dom, "data-state", "passed"), 2450);
    assert_no_probe_left(&lab);
}
