//! The nightly view against a real lab: `mesh` over every ordered pod pair, and the HTML
//! and metrics reports as a browser and promtool read them.

mod common;
use common::*;

/// The pod_mesh verdict of every node, in inventory order.
fn verdicts(run: &Run) -> Vec<(String, String)> {
    run.json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_string(),
                n["results"][0]["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The nodes the mesh names as at fault, from the JSON, with what it read of each.
fn at_fault(run: &Run) -> Vec<(String, serde_json::Value)> {
    run.json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| {
            let result = &n["results"][0];
            result.get("implicated").map(|i| {
                assert_eq!(i["node"], n["node"]);
                (n["node"].as_str().unwrap().to_string(), result.clone())
            })
        })
        .collect()
}

/// The mesh's metrics say the same as its JSON: 1 for each node at fault, 0 for the rest.
fn implicated_in_metrics(metrics: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("postflight_mesh_node_implicated{") && l.ends_with("} 1"))
        .map(|l| {
            l.split("node=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn mesh_passes_on_a_healthy_lab_and_names_the_broken_node_and_why() {
    let lab = lab("pf-mesh", 5);
    let inventory = lab.paths().inventory();
    let reports = tempfile::tempdir().unwrap();
    let html = reports.path().join("mesh.html");
    let metrics = reports.path().join("mesh.prom");
    let mesh = |name: &str| {
        let args = [
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
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_postflight(&inventory, &args, reports.path(), name)
    };
    let run = mesh("mesh");
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
    assert!(at_fault(&run).is_empty());
    assert!(!run.stdout().contains("at fault:"), "{}", run.describe());
    let dom = chromium_dom(&html, None);
    assert_eq!(count_attribute(&dom, "data-state", "passed"), 20, "{dom}");
    assert_eq!(count_attribute(&dom, "data-state", "failed"), 0);
    assert!(!dom.contains("mesh-attribution"));
    assert_promtool_accepts(&metrics);
    assert!(implicated_in_metrics(&metrics).is_empty());
    assert_no_probe_left(&lab);

    // Pod traffic dropped on one node while calico-node stays Ready: that node, and the
    // datapath, not Calico.
    let blocked = "k8s-worker-02";
    lab_cli(&lab, &["block-pod-traffic", "--node", blocked]);
    let run = mesh("blocked");
    assert_eq!(run.code(), 1, "{}", run.describe());
    let failed: Vec<String> = verdicts(&run)
        .into_iter()
        .filter(|(_, verdict)| verdict != "passed")
        .map(|(node, _)| node)
        .collect();
    assert_eq!(
        failed,
        [blocked],
        "only the blocked node fails: {}",
        run.describe()
    );
    let named = at_fault(&run);
    assert_eq!(named.len(), 1, "{}", run.describe());
    let result = &named[0].1;
    assert_eq!(result["implicated"]["fault"], "both_ways");
    let cause = result["diagnosis"]["root_cause"]
        .as_str()
        .unwrap_or_default();
    assert!(
        cause.contains("datapath") && cause.contains("calico-node on k8s-worker-02 is Ready"),
        "{cause}"
    );
    assert_eq!(
        implicated_in_metrics(&reports.path().join("blocked.prom")),
        [blocked]
    );
    assert_no_probe_left(&lab);

    // The incident on a second node: both named, each with its own cause.
    let broken = "k8s-worker-03";
    break_like_the_incident(&lab, broken, std::time::Duration::from_secs(90));
    let run = mesh("two");
    assert_eq!(run.code(), 1, "{}", run.describe());
    let named: Vec<String> = at_fault(&run).into_iter().map(|(node, _)| node).collect();
    assert_eq!(named, [blocked, broken], "{}", run.describe());
    let failed: Vec<String> = verdicts(&run)
        .into_iter()
        .filter(|(_, verdict)| verdict != "passed")
        .map(|(node, _)| node)
        .collect();
    assert_eq!(failed, [blocked, broken], "{}", run.describe());
    lab_cli(&lab, &["block-pod-traffic", "--node", blocked, "--unblock"]);

    // The incident alone: every pair to and from worker-03 fails, and only worker-03
    // fails pod_mesh, with the incident's root cause and fix.
    let run = mesh("incident");
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
    let verdicts = verdicts(&run);
    for (node, verdict) in &verdicts {
        let expected = if node == broken { "failed" } else { "passed" };
        assert_eq!(verdict, expected, "{node}: {}", run.describe());
    }
    assert_eq!(
        run.junit_cases()
            .iter()
            .filter(|(_, _, outcome)| outcome == "failure")
            .count(),
        1,
        "{:?}",
        run.junit_cases()
    );
    let named = at_fault(&run);
    assert_eq!(named.len(), 1);
    let result = &named[0].1;
    let message = result["message"].as_str().unwrap();
    assert!(
        message.contains("every pair to and from it fails") && message.contains("curl: ("),
        "{message}"
    );
    let summary = result["implicated"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!("{broken}: every pair to and from it fails"))
            && summary.contains("; calico-node ")
            && summary.contains("root cause: the tmpfiles.d entry for Calico was replaced"),
        "{summary}"
    );
    let fix = result["diagnosis"]["remediation"].to_string();
    assert!(fix.contains("systemd-tmpfiles --create"), "{fix}");
    let details = result["details"].to_string();
    assert!(details.contains("run_dir_permissions: failed"), "{details}");
    // A healthy node's evidence points at the node at fault.
    let healthy = &run.json["nodes"][0]["results"][0];
    assert_eq!(healthy["verdict"], "passed");
    assert!(
        healthy["evidence"]
            .to_string()
            .contains(&format!("see {broken}'s pod_mesh")),
        "{healthy:#}"
    );
    // The console's closing lines: the counts, then who is at fault (the report files
    // written follow them).
    let stdout = run.stdout();
    let last = stdout
        .lines()
        .skip_while(|l| !l.contains(" passed, "))
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(
        last.starts_with(&format!("at fault: {broken} (")),
        "{}",
        run.describe()
    );
    let dom = chromium_dom(
        &reports.path().join("incident.html"),
        Some(&artifact("mesh-incident.png")),
    );
    assert_eq!(count_attribute(&dom, "data-state", "failed"), 8, "{dom}");
    assert_eq!(count_attribute(&dom, "data-state", "passed"), 12);
    assert_eq!(
        count_attribute(&dom, "data-implicated", broken),
        1,
        "the summary line"
    );
    assert_eq!(
        count_attribute(&dom, "data-implicated", "true"),
        2,
        "its row and column"
    );
    assert!(dom.contains(&format!("data-from=\"{broken}\"")));
    let metrics = reports.path().join("incident.prom");
    assert_promtool_accepts(&metrics);
    assert_eq!(implicated_in_metrics(&metrics), [broken]);
    assert_no_probe_left(&lab);
}

/// The nightly run at the size the issue names: 50 nodes, 2,450 ordered pairs, in one
/// exec per source pod. (How long it takes is the benchmark's business, not a test's.)
/// Simulated kubelets: the scale profile, as 50 real nodes do not fit a 2-core machine.
#[test]
fn mesh_covers_every_pair_of_a_50_node_simulated_lab_with_one_exec_per_node() {
    let lab = simulated_lab("pf-mesh50", 50);
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
