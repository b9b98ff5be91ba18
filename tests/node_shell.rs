//! The node-shell transport end to end, on a lab whose nodes are reached through the
//! Kubernetes API alone (`inventory-node-shell.yaml`: no SSH, no host addresses), with
//! postflight holding only the RBAC it prints for that inventory.

mod common;

use common::*;
use postflight_lab::Lab;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Applies, as the cluster's admin, what `postflight rbac` prints for `inventory`.
fn grant_printed_rbac(lab: &Lab, inventory: &Path) -> String {
    let printed = Command::new(POSTFLIGHT)
        .arg("--inventory")
        .arg(inventory)
        .arg("rbac")
        .output()
        .expect("postflight rbac runs");
    assert!(printed.status.success(), "{printed:?}");
    let manifest = String::from_utf8(printed.stdout).unwrap();
    let mut apply = Command::new(lab.paths().kubectl())
        .arg("--kubeconfig")
        .arg(lab.paths().kubeconfig())
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let applied = apply.wait_with_output().unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    manifest
}

/// Waits (a little: their grace period is a second) until no shell pod is left, and
/// fails naming those that stay.
fn assert_no_shell_pod_left(lab: &Lab, after: &str) {
    let started = std::time::Instant::now();
    loop {
        let left = shell_pods(lab);
        if left.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "shell pods left after {after}: {left}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The pods in the node-shell namespace, by name.
fn shell_pods(lab: &Lab) -> String {
    kubectl(
        lab,
        &[
            "get",
            "pods",
            "-n",
            "postflight-node-shell",
            "--ignore-not-found",
            "-o",
            "name",
        ],
    )
}

#[test]
fn a_lab_reached_only_through_node_shells_is_verified_rebooted_and_swept() {
    let lab = lab("pf-shell", 3);
    let inventory = lab.paths().node_shell_inventory();
    let text = std::fs::read_to_string(&inventory).unwrap();
    assert!(
        !text.contains("\n    host: ") && !text.contains("\nssh:"),
        "no SSH at all: {text}"
    );
    let reports = tempfile::tempdir().unwrap();

    // The shipped RBAC does not cover node shells: the run is refused before it makes
    // anything, naming what is missing.
    let refused = verify(&inventory, "k8s-worker-01", false, reports.path());
    assert_eq!(refused.code(), 3, "{}", refused.describe());
    assert!(
        refused
            .stdout()
            .contains("create pods/exec (in namespace postflight-node-shell)"),
        "{}",
        refused.describe()
    );
    assert_no_shell_pod_left(&lab, "the run");

    let manifest = grant_printed_rbac(&lab, &inventory);
    assert!(
        manifest.contains("pod-security.kubernetes.io/enforce: privileged"),
        "{manifest}"
    );

    let node = "k8s-worker-02";
    let before = boot_id(&lab, node);
    let run = verify(&inventory, node, true, reports.path());
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert!(
        run.junit_cases()
            .iter()
            .all(|(_, _, kind)| kind == "passed"),
        "{}",
        run.junit
    );
    assert_ne!(
        boot_id(&lab, node),
        before,
        "the reboot went through the shell"
    );
    // The host checks passed, so the shell read the node: a check that could not run
    // is an error, never a pass.
    assert_eq!(run.verdict("run_dir_permissions"), "passed");
    assert_no_shell_pod_left(&lab, "no shell pod outlives its run");
    assert_nothing_left(&lab, node);
    assert_no_secrets(&lab, &run);

    let swept = drift(&inventory, reports.path());
    assert_eq!(swept.code(), 0, "{}", swept.describe());
    assert_no_shell_pod_left(&lab, "drift deletes its shells");
    let diagnosed = diagnose(&inventory, "k8s-worker-01", reports.path());
    assert_eq!(diagnosed.code(), 0, "{}", diagnosed.describe());
    assert_no_shell_pod_left(&lab, "diagnose deletes its shell");

    // Ctrl-C while the node is down: the shells go with the rest of the cleanup.
    let junit = reports.path().join("interrupted.xml");
    let child = spawn_reboot_with(&inventory, node, &junit);
    wait_for_node_down(&lab, node);
    nix_kill(child.id(), "INT");
    let output = child.wait_with_output();
    assert_eq!(output.status.code(), Some(130), "{output:?}");
    assert_no_shell_pod_left(&lab, "Ctrl-C deletes the shells");
    // The node comes back by itself; the test leaves the lab as it found it.
    let started = std::time::Instant::now();
    while node_field(
        &lab,
        node,
        "{.status.conditions[?(@.type==\"Ready\")].status}",
    ) != "True"
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{node} never came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_incident_is_caught_through_a_node_shell_with_the_evidence_ssh_gives() {
    let lab = lab("pf-shell-incident", 3);
    let shells = lab.paths().node_shell_inventory();
    grant_printed_rbac(&lab, &shells);
    let node = "k8s-worker-02";
    lab.os_update(node, true).unwrap();
    let reports = tempfile::tempdir().unwrap();
    let run = verify(&shells, node, true, reports.path());
    assert_eq!(run.code(), 1, "{}", run.describe());
    for check in [
        "calico_node_ready",
        "run_dir_permissions",
        "tmpfiles_config_present",
        "cross_node_pod_connectivity",
    ] {
        assert_eq!(run.verdict(check), "failed", "{check}: {}", run.describe());
    }
    let evidence = run.message("run_dir_permissions");
    assert!(evidence.contains("700 0 0"), "{evidence}");
    // The fix is pasted where SSH does not reach: through kubectl debug.
    let fix = run.result("run_dir_permissions")["diagnosis"]["remediation"].to_string();
    assert!(
        fix.contains("kubectl -n postflight-node-shell debug node/k8s-worker-02"),
        "{fix}"
    );
    assert!(!fix.contains("ssh "), "{fix}");
    assert_no_shell_pod_left(&lab, "the run");

    // The node as it is now, read both ways: the same evidence, word for word.
    let through_shell = diagnose(&shells, node, reports.path());
    let over_ssh = diagnose(&lab.paths().inventory(), node, reports.path());
    for check in ["tmpfiles_config_present", "run_dir_permissions"] {
        assert_eq!(through_shell.verdict(check), "failed");
        assert_eq!(
            through_shell.message(check),
            over_ssh.message(check),
            "{check}"
        );
    }
    assert_no_shell_pod_left(&lab, "the run");
}

/// Nodes that are containers, as kind's are: a restart keeps the host's boot ID, so the
/// reboot is sent from here with the lab's own `reboot` (as `docker restart {node}`) and
/// proven by the node's new PID 1, read through the node shell.
#[test]
fn container_nodes_are_restarted_from_here_and_proven_by_their_new_pid_1() {
    let lab = Lab::up(
        postflight_lab::LabConfig::new("pf-container")
            .nodes(3)
            .node_kind(postflight_lab::topology::NodeKind::Container),
    )
    .unwrap_or_else(|e| panic!("lab pf-container: {e}"));
    let inventory = lab.paths().node_shell_inventory();
    let text = std::fs::read_to_string(&inventory).unwrap();
    assert!(
        text.contains("runs_on: local") && text.contains("--node {node}"),
        "{text}"
    );
    grant_printed_rbac(&lab, &inventory);
    let reports = tempfile::tempdir().unwrap();
    let node = "k8s-worker-01";
    let before = boot_id(&lab, node);
    let run = verify(&inventory, node, true, reports.path());
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert_eq!(
        boot_id(&lab, node),
        before,
        "a container keeps its host's boot ID"
    );
    let names: Vec<String> = run
        .junit_cases()
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    assert!(names.contains(&"node_restarted".to_string()), "{names:?}");
    assert!(!names.contains(&"boot_id_changed".to_string()), "{names:?}");
    // The report says what proved the restart.
    let evidence = run.result("node_restarted")["evidence"].to_string();
    assert!(
        evidence.contains("PID 1 started") && evidence.contains("unchanged"),
        "{evidence}"
    );
    assert_no_shell_pod_left(&lab, "the run");
    assert_nothing_left(&lab, node);

    let swept = drift(&inventory, reports.path());
    assert_eq!(swept.code(), 0, "{}", swept.describe());
    let diagnosed = diagnose(&inventory, node, reports.path());
    assert_eq!(diagnosed.code(), 0, "{}", diagnosed.describe());
    assert_no_shell_pod_left(&lab, "the run");
}
