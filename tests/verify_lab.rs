//! End to end: the `postflight` binary against real labs (ci/lab). Each test brings up
//! its own lab and takes it down when it ends, also when it fails (the lab handle's Drop).
//! They need root, like the lab itself.

mod common;

use common::*;
use postflight_lab::topology::CalicoProfile;
use rstest::rstest;
use std::path::{Path, PathBuf};
use std::process::Command;

const ALL_CHECKS: [&str; 9] = [
    "cluster_healthy_before_reboot",
    "node_ready_after_reboot",
    "boot_id_changed",
    "calico_node_ready",
    "calico_node_not_crashlooping",
    "tmpfiles_config_present",
    "run_dir_permissions",
    "same_node_pod_connectivity",
    "cross_node_pod_connectivity",
];

#[test]
fn a_healthy_reboot_passes_every_check() {
    let lab = lab("pf-healthy", 5);
    let reports = tempfile::tempdir().unwrap();
    let node = "k8s-worker-03";
    let before = boot_id(&lab, node);
    let run = verify(&lab.paths().inventory(), node, true, reports.path());
    assert_eq!(run.code(), 0, "{}", run.describe());
    let cases = run.junit_cases();
    let names: Vec<&str> = cases.iter().map(|(name, _, _)| name.as_str()).collect();
    assert_eq!(names, ALL_CHECKS, "{}", run.junit);
    assert!(
        cases
            .iter()
            .all(|(_, class, kind)| class == node && kind == "passed"),
        "{cases:?}"
    );
    let after = boot_id(&lab, node);
    assert_ne!(before, after, "the node really rebooted");
    assert_eq!(
        run.result("boot_id_changed")["evidence"][0]["observed"],
        after.as_str()
    );
    let cross = run.result("cross_node_pod_connectivity")["evidence"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(cross, 8, "to and from each of the 4 other nodes");
    assert!(
        run.stdout().contains("node Ready → verdict"),
        "{}",
        run.describe()
    );
    // One set of probe pods for the whole run: the node's two rode the reboot out in
    // new containers rather than being made again after it.
    let created = pods_created_by_postflight(&lab);
    assert_eq!(
        created.len(),
        6,
        "one pod a node and a second on {node}: {created:?}"
    );
    assert_eq!(
        created.iter().filter(|name| name.contains(node)).count(),
        2,
        "{created:?}"
    );
    assert_nothing_left(&lab, node);
}

/// Calico as people install it, each with the lab's default inventory (no `calico:`
/// section): the manifest's root calico-node in kube-system and the operator's in
/// calico-system pass, and the tmpfiles.d check is skipped with its reason, since nobody
/// declares an entry. The hardened site is `a_healthy_reboot_passes_every_check`.
#[rstest]
#[case::stock("pf-stock", CalicoProfile::Stock, "kube-system")]
#[case::operator("pf-operator", CalicoProfile::Operator, "calico-system")]
fn every_calico_install_passes_with_a_default_inventory(
    #[case] name: &str,
    #[case] profile: CalicoProfile,
    #[case] namespace: &str,
) {
    let lab = lab_with_calico(name, 3, profile);
    let inventory = std::fs::read_to_string(lab.paths().inventory()).unwrap();
    assert!(!inventory.contains("calico:"), "{inventory}");
    let reports = tempfile::tempdir().unwrap();
    let node = "k8s-worker-02";
    let run = verify(&lab.paths().inventory(), node, true, reports.path());
    assert_eq!(run.code(), 0, "{}", run.describe());
    let cases = run.junit_cases();
    for (check, _, kind) in &cases {
        let expected = if check == "tmpfiles_config_present" {
            "skipped"
        } else {
            "passed"
        };
        assert_eq!(kind, expected, "{check}: {}", run.describe());
    }
    assert!(
        run.message("tmpfiles_config_present")
            .contains("no tmpfiles.d entry on the node"),
        "{}",
        run.describe()
    );
    let evidence = &run.result("run_dir_permissions")["evidence"][0];
    assert_eq!(evidence["observed"], "755 0 0");
    assert!(
        evidence["expected"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("DaemonSet {namespace}/calico-node")),
        "{evidence}"
    );
    assert!(run.stdout().contains("1 skipped"), "{}", run.describe());
    assert_nothing_left(&lab, node);
}

#[test]
fn the_incident_fails_with_evidence_and_its_fix_passes() {
    let lab = lab("pf-incident", 5);
    let reports = tempfile::tempdir().unwrap();
    let node = "k8s-worker-03";
    let inventory = lab.paths().inventory();
    lab.os_update(node, true).unwrap();
    let html = reports.path().join("incident.html");
    let metrics = reports.path().join("incident.prom");
    let run = verify_with(
        &inventory,
        node,
        &[
            "--reboot",
            "--html",
            html.to_str().unwrap(),
            "--metrics",
            metrics.to_str().unwrap(),
        ],
        reports.path(),
    );
    assert_eq!(run.code(), 1, "{}", run.describe());
    // The page a person opens the next morning, as a browser builds it: the five failed
    // checks, the pod pairs to and from the node marked, the phases on the timeline.
    let dom = chromium_dom(&html, Some(&artifact("verify-incident.png")));
    assert_eq!(dom.matches("class=\"check failed\"").count(), 5, "{dom}");
    assert_eq!(count_attribute(&dom, "data-state", "failed"), 8, "{dom}");
    for phase in [
        "take the reboot lock",
        "preflight: is the cluster whole?",
        "issue the reboot",
        "wait for the node to be Ready on a new boot",
        "wait for calico-node Ready",
        "probe pod connectivity",
    ] {
        assert!(dom.contains(phase), "{phase} on the timeline");
    }
    assert!(dom.contains(
        "bird: Cannot create control socket /var/run/calico/bird.ctl: Permission denied"
    ));
    assert_promtool_accepts(&metrics);
    let exposition = std::fs::read_to_string(&metrics).unwrap();
    assert!(exposition.contains(&format!(
        "postflight_check_passed{{command=\"verify\",node=\"{node}\",check=\"run_dir_permissions\"}} 0"
    )));
    assert!(exposition.contains("postflight_reboot_duration_seconds{"));

    assert_eq!(
        run.verdict("node_ready_after_reboot"),
        "passed",
        "{}",
        run.describe()
    );
    assert_eq!(run.verdict("boot_id_changed"), "passed");
    assert_eq!(run.verdict("calico_node_ready"), "failed");
    assert!(
        run.message("calico_node_ready").contains(
            "bird: Cannot create control socket /var/run/calico/bird.ctl: Permission denied"
        ),
        "{}",
        run.describe()
    );
    assert_eq!(run.verdict("calico_node_not_crashlooping"), "failed");
    assert_eq!(run.verdict("tmpfiles_config_present"), "failed");
    // The lab's inventory declares nothing: the node's own entry is judged against the
    // user calico-node's DaemonSet runs it as.
    let tmpfiles = run.result("tmpfiles_config_present")["evidence"][0]["observed"]
        .as_str()
        .unwrap_or_default();
    assert!(
        tmpfiles.starts_with("700 0 0")
            && tmpfiles.contains("/etc/tmpfiles.d/calico.conf: `d /run/calico 0700 root root -`"),
        "{tmpfiles}"
    );
    assert_eq!(run.verdict("run_dir_permissions"), "failed");
    let evidence = &run.result("run_dir_permissions")["evidence"][0];
    assert_eq!(evidence["observed"], "700 0 0");
    assert!(
        evidence["expected"]
            .as_str()
            .unwrap_or_default()
            .starts_with("usable by uid 999 (runAsUser of DaemonSet kube-system/calico-node)"),
        "{evidence}"
    );
    assert_eq!(
        run.verdict("same_node_pod_connectivity"),
        "passed",
        "{}",
        run.describe()
    );
    assert_eq!(run.verdict("cross_node_pod_connectivity"), "failed");
    let cross = run.message("cross_node_pod_connectivity");
    for other in [
        "k8s-control-01",
        "k8s-worker-01",
        "k8s-worker-02",
        "k8s-worker-04",
    ] {
        assert!(
            cross.contains(&format!("{node}/pf-")) && cross.contains(&format!("→ {other}/pf-")),
            "{cross}"
        );
        assert!(cross.contains(&format!("{other}/pf-")), "{cross}");
    }
    assert!(
        cross.contains("curl: ("),
        "the failure carries the client's own error: {cross}"
    );
    let diagnosis = &run.result("run_dir_permissions")["diagnosis"]["root_cause"];
    assert!(
        diagnosis
            .as_str()
            .unwrap_or_default()
            .contains("tmpfiles.d entry for Calico was replaced"),
        "{diagnosis}"
    );
    let failures: Vec<String> = run
        .junit_cases()
        .into_iter()
        .filter(|(_, _, kind)| kind == "failure")
        .map(|(name, _, _)| name)
        .collect();
    assert_eq!(failures.len(), 5, "{failures:?}");
    let ready_to_verdict = run.json["nodes"][0]["ready_to_verdict"]
        .as_f64()
        .expect("measured");
    assert!(
        ready_to_verdict < 60.0,
        "verdict took {ready_to_verdict} s after the node was Ready"
    );
    assert!(
        run.stdout().contains("node Ready → verdict"),
        "{}",
        run.describe()
    );
    assert_nothing_left(&lab, node);
    assert_no_secrets(&lab, &run);
    assert_no_probe_left(&lab);

    // `diagnose` finds the same root cause without rebooting anything.
    let diagnosis = diagnose(&inventory, node, reports.path());
    assert_eq!(diagnosis.code(), 1, "{}", diagnosis.describe());
    for check in [
        "calico_node_ready",
        "tmpfiles_config_present",
        "run_dir_permissions",
        "run_dir_after_next_boot",
    ] {
        assert_eq!(
            diagnosis.verdict(check),
            "failed",
            "{check}: {}",
            diagnosis.describe()
        );
    }
    let root_cause = diagnosis.result("run_dir_permissions")["diagnosis"]["root_cause"]
        .as_str()
        .unwrap_or_default();
    assert!(
        root_cause.contains("tmpfiles.d entry for Calico was replaced"),
        "{}",
        diagnosis.describe()
    );
    assert!(
        diagnosis.stdout().contains(
            "bird: Cannot create control socket /var/run/calico/bird.ctl: Permission denied"
        ),
        "the log line is in the evidence"
    );
    assert_no_secrets(&lab, &diagnosis);

    // The fix exactly as the diagnosis prints it, pasted by an engineer whose ssh knows
    // the lab's key and host keys (as ~/.ssh/config would) and whose kubectl points at
    // the lab. Then the node verifies clean, and stays clean across another reboot.
    let remediation: Vec<String> = run.result("run_dir_permissions")["diagnosis"]["remediation"]
        .as_array()
        .expect("the diagnosis carries its commands")
        .iter()
        .map(|command| command.as_str().unwrap().to_string())
        .collect();
    assert_eq!(remediation.len(), 3, "{remediation:?}");
    let engineer = tempfile::tempdir().unwrap();
    let ssh = engineer.path().join("ssh");
    std::fs::write(
        &ssh,
        format!(
            "#!/bin/sh\nexec /usr/bin/ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes \"$@\"\n",
            lab.paths().ssh_key().display(),
            lab.paths().known_hosts().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        engineer.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for command in &remediation {
        let output = Command::new("sh")
            .args(["-c", command])
            .env("PATH", &path)
            .env("KUBECONFIG", lab.paths().kubeconfig())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let run = verify(&inventory, node, false, reports.path());
    assert_eq!(run.code(), 0, "{}", run.describe());
    let run = verify(&inventory, node, true, reports.path());
    assert_eq!(run.code(), 0, "{}", run.describe());
}

/// A known_hosts file that does not vouch for the node's real key.
enum Tampering {
    /// The node's entry carries another key: a man in the middle, or a reinstalled node.
    KeyChanged,
    /// The node has no entry at all.
    NodeUnknown,
}

#[rstest]
#[case::changed_key(Tampering::KeyChanged, "HOST KEY MISMATCH")]
#[case::unknown_host(Tampering::NodeUnknown, "is not in")]
fn a_host_key_that_does_not_match_is_refused_and_nothing_runs(
    #[case] tampering: Tampering,
    #[case] said: &str,
) {
    let name = match tampering {
        Tampering::KeyChanged => "pf-hostkey-a",
        Tampering::NodeUnknown => "pf-hostkey-b",
    };
    let lab = lab(name, 3);
    let node = "k8s-worker-01";
    let ip = lab.topology().node(node).unwrap().ip.to_string();
    let state = lab.paths().state_dir.clone();
    let real = std::fs::read_to_string(lab.paths().known_hosts()).unwrap();
    let impostor = impostor_key(&state);
    let tampered: String = real
        .lines()
        .filter_map(|line| {
            let host = line.split_whitespace().next().unwrap_or_default();
            let this_node = host == ip || host.starts_with(&format!("[{ip}]"));
            match (this_node, &tampering) {
                (false, _) => Some(format!("{line}\n")),
                (true, Tampering::KeyChanged) => Some(format!("{host} {impostor}\n")),
                (true, Tampering::NodeUnknown) => None,
            }
        })
        .collect();
    assert_ne!(tampered, real);
    let known_hosts = state.join("tampered_known_hosts");
    std::fs::write(&known_hosts, tampered).unwrap();
    let inventory_text = std::fs::read_to_string(lab.paths().inventory())
        .unwrap()
        .replace(
            "known_hosts: ssh/known_hosts",
            "known_hosts: tampered_known_hosts",
        );
    let inventory: PathBuf = state.join("tampered-inventory.yaml");
    std::fs::write(&inventory, inventory_text).unwrap();
    let before = boot_id(&lab, node);

    let reports = tempfile::tempdir().unwrap();
    let run = verify(&inventory, node, true, reports.path());
    assert_eq!(run.code(), 3, "could not run is exit 3: {}", run.describe());
    assert!(run.stdout().contains(said), "{}", run.describe());
    let ssh = vec!["ssh".to_string()];
    assert_eq!(run.error_kinds(), (ssh.clone(), ssh), "{}", run.junit);
    // The preflight (API side only) passes; everything that needs the node could not run.
    assert_eq!(run.verdict("cluster_healthy_before_reboot"), "passed");
    assert!(
        run.junit_cases()
            .iter()
            .filter(|(name, _, _)| name != "cluster_healthy_before_reboot")
            .all(|(_, _, kind)| kind == "error"),
        "{}",
        run.junit
    );
    // Nothing ran on the node: it did not reboot.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(boot_id(&lab, node), before);
    assert_no_probe_left(&lab);
}

#[test]
fn an_unknown_node_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.yaml");
    std::fs::write(
        &inventory,
        "ssh:\n  known_hosts: known_hosts\nnodes:\n  - name: k8s-worker-01\n    host: 198.18.0.11\n",
    )
    .unwrap();
    let output = Command::new(POSTFLIGHT)
        .arg("--inventory")
        .arg(&inventory)
        .args(["verify", "--node", "k8s-worker-09"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not in the inventory"));
}

#[test]
fn check_inventory_points_at_the_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("bad.yaml");
    std::fs::write(
        &inventory,
        "nodes:\n  - name: k8s-worker-01\n    host: 198.18.0.11\n    prot: 22\n",
    )
    .unwrap();
    let output = Command::new(POSTFLIGHT)
        .arg("check-inventory")
        .arg(&inventory)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:4:5", inventory.display())),
        "{stderr}"
    );
    // The kind example reaches its nodes through node shells: it needs no known_hosts
    // and is valid as written.
    let kind = Command::new(POSTFLIGHT)
        .arg("check-inventory")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("inventory/example-kind.yaml"))
        .output()
        .unwrap();
    assert!(kind.status.success(), "{kind:?}");
    // The SSH examples are valid as written, once the known_hosts they name exists:
    // without it no host key could be verified, and check-inventory says so.
    let known_hosts = dir.path().join("known_hosts");
    let example = "inventory/example-staging.yaml";
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(example)).unwrap();
    let copy = dir.path().join(Path::new(example).file_name().unwrap());
    let check = || {
        Command::new(POSTFLIGHT)
            .arg("check-inventory")
            .arg(&copy)
            .output()
            .unwrap()
    };
    let written = text.replace(
        "/etc/postflight/ssh/known_hosts",
        &known_hosts.to_string_lossy(),
    );
    std::fs::write(&copy, written).unwrap();
    let _ = std::fs::remove_file(&known_hosts);
    let missing = check();
    assert_eq!(missing.status.code(), Some(2), "{example}");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("does not exist"),
        "{example}: {}",
        String::from_utf8_lossy(&missing.stderr)
    );
    std::fs::write(&known_hosts, "").unwrap();
    let output = check();
    assert!(
        output.status.success(),
        "{example}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn an_interrupted_run_exits_130_and_still_writes_its_report() {
    let lab = lab("pf-interrupt", 3);
    let node = "k8s-worker-01";
    let reports = tempfile::tempdir().unwrap();
    let junit = reports.path().join("junit.xml");
    let child = spawn_reboot(&lab, node, &junit);
    // Interrupt while it waits for the node, as Ctrl-C in a terminal would.
    wait_for_node_down(&lab, node);
    nix_kill(child.id(), "INT");
    let output = child.wait_with_output();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let junit =
        std::fs::read_to_string(&junit).expect("the JUnit report is written when interrupted");
    assert!(junit.contains("the run was interrupted"), "{junit}");
    assert_nothing_left(&lab, node);
}

#[test]
fn a_probe_image_that_cannot_run_is_an_error_not_a_failure() {
    let lab = lab("pf-badimage", 3);
    let node = "k8s-worker-01";
    let state = lab.paths().state_dir.clone();
    let inventory_text = std::fs::read_to_string(lab.paths().inventory())
        .unwrap()
        .replace(
            "image: registry.k8s.io/e2e-test-images/agnhost:2.53",
            "image: registry.example/no-such/probe:1.0",
        );
    let inventory = state.join("bad-image-inventory.yaml");
    std::fs::write(&inventory, inventory_text).unwrap();
    let reports = tempfile::tempdir().unwrap();
    let run = verify(&inventory, node, false, reports.path());
    assert_eq!(
        run.code(),
        3,
        "the network could not be tested, so: could not run: {}",
        run.describe()
    );
    for check in ["same_node_pod_connectivity", "cross_node_pod_connectivity"] {
        assert_eq!(run.verdict(check), "error", "{}", run.describe());
        assert!(
            run.message(check).contains("ErrImagePull")
                || run.message(check).contains("ImagePullBackOff"),
            "{}",
            run.describe()
        );
    }
    assert_eq!(run.verdict("calico_node_ready"), "passed");
    let kinds: Vec<String> = run
        .junit_cases()
        .into_iter()
        .map(|(_, _, kind)| kind)
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "error").count(),
        2,
        "{kinds:?}"
    );
    let root_cause = run.result("cross_node_pod_connectivity")["diagnosis"]["root_cause"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        root_cause.contains("could not pull registry.example/no-such/probe:1.0"),
        "{}",
        run.describe()
    );
    assert_no_probe_left(&lab);
}

#[test]
fn drift_names_exactly_the_nodes_that_will_break_at_their_next_reboot() {
    let lab = lab("pf-drift", 5);
    for node in ["k8s-worker-02", "k8s-worker-04"] {
        lab.os_update(node, true).unwrap();
    }
    // A node that does not answer: an address of the lab's own block that nobody holds.
    let first_ip = lab.topology().node("k8s-worker-01").unwrap().ip.octets();
    let nobody = format!("{}.{}.{}.250", first_ip[0], first_ip[1], first_ip[2]);
    let inventory_text = std::fs::read_to_string(lab.paths().inventory())
        .unwrap()
        .replace(
            "probe:\n",
            &format!("  - name: k8s-worker-99\n    host: {nobody}\nprobe:\n"),
        );
    let inventory = lab.paths().state_dir.join("drift-inventory.yaml");
    std::fs::write(&inventory, inventory_text).unwrap();
    let boot_ids: Vec<String> = lab.node_names().iter().map(|n| boot_id(&lab, n)).collect();

    let reports = tempfile::tempdir().unwrap();
    let run = drift(&inventory, reports.path());
    assert_eq!(run.code(), 1, "{}", run.describe());
    let cases = run.junit_cases();
    let failing: std::collections::BTreeSet<&str> = cases
        .iter()
        .filter(|(_, _, kind)| kind == "failure")
        .map(|(_, node, _)| node.as_str())
        .collect();
    assert_eq!(
        failing.into_iter().collect::<Vec<_>>(),
        ["k8s-worker-02", "k8s-worker-04"],
        "{cases:?}"
    );
    let errors: Vec<&(String, String, String)> = cases
        .iter()
        .filter(|(_, _, kind)| kind == "error")
        .collect();
    assert_eq!(
        errors.len(),
        3,
        "every check of the unreachable node, and only those: {cases:?}"
    );
    assert!(
        errors.iter().all(|(_, node, _)| node == "k8s-worker-99"),
        "{cases:?}"
    );
    for (check, node, kind) in &cases {
        if node == "k8s-worker-02" || node == "k8s-worker-04" {
            let expected = if check == "run_dir_permissions" {
                "passed"
            } else {
                "failure"
            };
            assert_eq!(
                kind, expected,
                "{check} on {node}: the live directory is still fine, the next boot is not"
            );
        }
    }
    assert!(
        run.stdout().contains("breaks at its next reboot"),
        "{}",
        run.describe()
    );
    // Nothing was rebooted.
    let after: Vec<String> = lab.node_names().iter().map(|n| boot_id(&lab, n)).collect();
    assert_eq!(boot_ids, after);
}

#[test]
fn a_degraded_cluster_is_refused_and_nothing_is_rebooted() {
    let lab = lab("pf-degraded", 5);
    // Another node already carries the incident: calico-node crash-loops on it.
    let broken = "k8s-worker-02";
    break_like_the_incident(&lab, broken, std::time::Duration::from_secs(60));
    let node = "k8s-worker-03";
    let before = boot_id(&lab, node);
    let reports = tempfile::tempdir().unwrap();
    let run = verify(&lab.paths().inventory(), node, true, reports.path());
    assert_eq!(run.code(), 3, "refused is exit 3: {}", run.describe());
    assert_eq!(run.verdict("cluster_healthy_before_reboot"), "error");
    let why = run.message("cluster_healthy_before_reboot");
    assert!(why.contains(&format!("on {broken} is not Ready")), "{why}");
    assert!(
        run.junit_cases().iter().all(|(_, _, kind)| kind == "error"),
        "{}",
        run.junit
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(boot_id(&lab, node), before, "nothing was rebooted");
    assert_nothing_left(&lab, node);
}

#[test]
fn a_protected_node_is_not_rebooted_unless_named() {
    let lab = lab("pf-protected", 3);
    let node = "k8s-control-01";
    let before = boot_id(&lab, node);
    let output = Command::new(POSTFLIGHT)
        .arg("--inventory")
        .arg(lab.paths().inventory())
        .args(["verify", "--node", node, "--reboot"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("--allow-protected"));
    assert_eq!(boot_id(&lab, node), before);
}

#[test]
fn a_second_run_is_blocked_by_the_reboot_lock_and_names_its_holder() {
    let lab = lab("pf-lock", 4);
    let reports = tempfile::tempdir().unwrap();
    let first = Background::spawn(
        Command::new(POSTFLIGHT)
            .arg("--inventory")
            .arg(lab.paths().inventory())
            .args(["verify", "--node", "k8s-worker-01", "--reboot"])
            .stdout(std::process::Stdio::piped()),
    );
    let started = std::time::Instant::now();
    let holder = loop {
        let holder = Command::new(lab.paths().kubectl())
            .arg("--kubeconfig")
            .arg(lab.paths().kubeconfig())
            .args([
                "get",
                "lease",
                "-n",
                "kube-system",
                "postflight-reboot-lock",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .output()
            .unwrap();
        let holder = String::from_utf8_lossy(&holder.stdout).trim().to_string();
        if !holder.is_empty() {
            break holder;
        }
        assert!(
            started.elapsed().as_secs() < 30,
            "the first run never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // The second run waits 1 s, not the default 5 minutes, then gives up.
    let inventory = lab.paths().state_dir.join("impatient-inventory.yaml");
    let text = std::fs::read_to_string(lab.paths().inventory()).unwrap();
    std::fs::write(&inventory, format!("{text}lock:\n  wait: 1s\n")).unwrap();
    let before = boot_id(&lab, "k8s-worker-02");
    let second = verify(&inventory, "k8s-worker-02", true, reports.path());
    assert_eq!(second.code(), 3, "{}", second.describe());
    assert!(
        second.stdout().contains(&format!("is held by {holder}")),
        "{}",
        second.describe()
    );
    assert_eq!(
        boot_id(&lab, "k8s-worker-02"),
        before,
        "the second run rebooted nothing"
    );
    let first = first.wait_with_output();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    assert_eq!(lock_holder(&lab), "", "released when the first run ended");
}

/// GETs of Lease objects the API server has served, from its own metrics.
fn lease_gets(lab: &postflight_lab::Lab) -> f64 {
    api_requests(lab, &["resource=\"leases\"", "verb=\"GET\""])
}

/// Waiting for a lock someone else holds is a watch, not a poll: over a 5 s wait the
/// API server serves a handful of Lease GETs, where a poll loop made thousands.
#[test]
fn waiting_for_the_lock_watches_instead_of_polling() {
    let lab = lab("pf-lock-watch", 3);
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "postflight-reboot-lock", "namespace": "kube-system"},
        // Renewed just now: a renewTime older than the duration would free it at once.
        "spec": {"holderIdentity": "another pipeline", "leaseDurationSeconds": 3600,
                 "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now())},
    });
    let manifest = lab.paths().state_dir.join("held-lease.json");
    std::fs::write(&manifest, lease.to_string()).unwrap();
    kubectl(&lab, &["create", "-f", manifest.to_str().unwrap()]);
    let inventory = lab.paths().state_dir.join("waiting-inventory.yaml");
    let text = std::fs::read_to_string(lab.paths().inventory()).unwrap();
    std::fs::write(&inventory, format!("{text}lock:\n  wait: 5s\n")).unwrap();
    let reports = tempfile::tempdir().unwrap();
    let before = lease_gets(&lab);
    let run = verify(&inventory, "k8s-worker-01", true, reports.path());
    let gets = lease_gets(&lab) - before;
    assert_eq!(run.code(), 3, "{}", run.describe());
    assert!(
        run.stdout().contains("is held by another pipeline"),
        "{}",
        run.describe()
    );
    assert!(
        gets < 30.0,
        "{gets} Lease GETs in a 5 s wait: a poll, not a watch"
    );
    eprintln!("Lease GETs during a 5 s wait for the lock: {gets}");
}

/// A run killed without releasing the lock (SIGKILL, a lost runner) leaves a lease that
/// nobody renews: the next run waits for it to expire by its duration, then proceeds.
#[test]
fn a_stale_lock_from_a_killed_run_expires_and_the_next_run_proceeds() {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    let lab = lab("pf-stale-lock", 4);
    let lease_duration = 4;
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let stale = Lease {
        metadata: ObjectMeta {
            name: Some("postflight-reboot-lock".into()),
            namespace: Some("kube-system".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("postflight on a runner that was killed".into()),
            lease_duration_seconds: Some(lease_duration),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..LeaseSpec::default()
        }),
    };
    let manifest = lab.paths().state_dir.join("stale-lease.json");
    std::fs::write(&manifest, serde_json::to_string(&stale).unwrap()).unwrap();
    kubectl(
        &lab,
        &[
            "create",
            "--validate=false",
            "-f",
            manifest.to_str().unwrap(),
        ],
    );
    let reports = tempfile::tempdir().unwrap();
    let run = verify(
        &lab.paths().inventory(),
        "k8s-worker-01",
        true,
        reports.path(),
    );
    assert_eq!(run.code(), 0, "{}", run.describe());
    let waited = run.step_seconds("take the reboot lock");
    // It did wait: the lease was not taken over before it expired.
    assert!(
        waited >= 1.0,
        "waited only {waited} s for a {lease_duration} s lease to expire"
    );
    assert_eq!(lock_holder(&lab), "", "released when the run ended");
}

/// Someone deletes the probe namespace between two nodes of a rolling update (a cleanup
/// job, a GitOps prune), and their provisioning puts it back with postflight's Role a
/// little later. The next node's run waits out the Terminating namespace and the
/// re-provisioning instead of failing, and the rollout of 3 nodes passes.
#[test]
fn a_rolling_update_waits_out_its_probe_namespace_being_deleted_between_nodes() {
    let lab = lab("pf-roll-ns", 4);
    let nodes = ["k8s-worker-01", "k8s-worker-02", "k8s-worker-03"];
    let reports = tempfile::tempdir().unwrap();
    let json = reports.path().join("rolling.json");
    let rollout = Background::spawn(
        Command::new(POSTFLIGHT)
            .arg("--inventory")
            .arg(lab.paths().inventory())
            .args([
                "rolling",
                "--nodes",
                &nodes.join(","),
                "--soak",
                "2s",
                "--json",
            ])
            .arg(&json)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    let rbac = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/rbac.yaml");
    let hold = "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"hold\",\"namespace\":\"postflight-probe\",\"finalizers\":[\"postflight.test/hold\"]}}";
    let hold_file = lab.paths().state_dir.join("hold.json");
    std::fs::write(&hold_file, hold).unwrap();
    // The update takes the lock once and holds it from its first node to its last, soaks
    // included, so that no other pipeline reboots a node while one settles.
    let mut holders = std::collections::BTreeSet::new();
    let nodes_done = || {
        std::fs::read_to_string(&json)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|so_far| so_far["nodes"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    for gap in 1..nodes.len() {
        // Between nodes: the node before has its verdict on disk, everything its run
        // made is gone, the lock is still held, and the next waits out the soak.
        let started = std::time::Instant::now();
        loop {
            let holder = lock_holder(&lab);
            if !holder.is_empty() {
                holders.insert(holder.clone());
            }
            if nodes_done() == gap {
                assert!(!holder.is_empty(), "the lock was let go during the soak");
                break;
            }
            assert!(
                started.elapsed().as_secs() < 120,
                "node {gap} did not finish"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // The reports are already on disk with the nodes done so far: a rollout killed
        // now would still leave them.
        if gap == 1 {
            let so_far: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
            assert_eq!(
                so_far["nodes"].as_array().map(Vec::len),
                Some(1),
                "{so_far}"
            );
            assert_eq!(
                so_far["rolling"]["not_started"],
                serde_json::json!(["k8s-worker-02", "k8s-worker-03"])
            );
        }
        // A finalizer keeps the namespace Terminating past the soak, so the next run
        // finds it Terminating, then gone, then provisioned again.
        kubectl(&lab, &["create", "-f", hold_file.to_str().unwrap()]);
        kubectl(
            &lab,
            &["delete", "namespace", "postflight-probe", "--wait=false"],
        );
        std::thread::sleep(std::time::Duration::from_secs(4));
        kubectl(
            &lab,
            &[
                "patch",
                "configmap",
                "hold",
                "-n",
                "postflight-probe",
                "--type=merge",
                "-p",
                "{\"metadata\":{\"finalizers\":null}}",
            ],
        );
        kubectl(
            &lab,
            &[
                "wait",
                "--for=delete",
                "namespace/postflight-probe",
                "--timeout=60s",
            ],
        );
        kubectl(&lab, &["apply", "-f", rbac.to_str().unwrap()]);
    }
    let output = rollout.wait_with_output();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("every node passed"), "{stdout}");
    assert_eq!(
        holders.len(),
        1,
        "one holder for the whole update: {holders:?}"
    );
    assert_eq!(lock_holder(&lab), "", "released when the update ended");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for (index, node) in nodes.iter().enumerate().skip(1) {
        let preflight = json["nodes"][index]["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .find(|step| step["step"] == "preflight: is the cluster whole?")
            .and_then(|step| step["duration"].as_f64())
            .expect("the preflight is timed");
        assert!(
            preflight >= 1.0,
            "{node}'s preflight took {preflight} s: it did not wait for the namespace"
        );
    }
    for node in nodes {
        assert_nothing_left(&lab, node);
    }
}

#[test]
fn a_rolling_update_stops_at_the_first_node_that_fails() {
    let lab = lab("pf-rolling", 5);
    lab.os_update("k8s-worker-02", true).unwrap();
    let untouched = boot_id(&lab, "k8s-worker-03");
    let reports = tempfile::tempdir().unwrap();
    let junit = reports.path().join("rolling.xml");
    let json = reports.path().join("rolling.json");
    let output = Command::new(POSTFLIGHT)
        .arg("--inventory")
        .arg(lab.paths().inventory())
        .args([
            "rolling",
            "--nodes",
            "k8s-worker-01,k8s-worker-02,k8s-worker-03",
            "--drain",
            "--junit",
        ])
        .arg(&junit)
        .arg("--json")
        .arg(&json)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("STOPPED at k8s-worker-02; not started: k8s-worker-03"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        json["rolling"]["order"],
        serde_json::json!(["k8s-worker-01", "k8s-worker-02", "k8s-worker-03"])
    );
    assert_eq!(json["rolling"]["stopped_at"], "k8s-worker-02");
    let junit = std::fs::read_to_string(&junit).unwrap();
    let document = roxmltree::Document::parse(&junit).unwrap();
    let suites: Vec<&str> = document
        .descendants()
        .filter(|n| n.has_tag_name("testsuite"))
        .filter_map(|n| n.attribute("name"))
        .collect();
    assert_eq!(
        suites,
        [
            "postflight rolling k8s-worker-01",
            "postflight rolling k8s-worker-02",
            "postflight rolling"
        ],
        "a suite per node verified, then the summary"
    );
    let summary = document
        .descendants()
        .find(|n| n.attribute("name") == Some("postflight rolling"))
        .unwrap();
    let kinds: Vec<(String, bool, bool)> = summary
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|case| {
            (
                case.attribute("name").unwrap().to_string(),
                case.children().any(|c| c.has_tag_name("failure")),
                case.children().any(|c| c.has_tag_name("skipped")),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("k8s-worker-01".to_string(), false, false),
            ("k8s-worker-02".to_string(), true, false),
            ("k8s-worker-03".to_string(), false, true)
        ]
    );
    assert_eq!(
        boot_id(&lab, "k8s-worker-03"),
        untouched,
        "the rollout stopped before k8s-worker-03"
    );
    assert_eq!(lock_holder(&lab), "");
    // Drained, passed: back in service. Drained, failed: stays out until someone fixes it.
    assert!(!cordoned(&lab, "k8s-worker-01"));
    assert!(
        cordoned(&lab, "k8s-worker-02"),
        "a failed node stays cordoned"
    );
    assert!(stdout.contains("k8s-worker-02 stays cordoned"), "{stdout}");
    // One set of probe pods for the whole update, made at its first gate (two on each
    // node it will reboot), reused by the next, and deleted when it stopped.
    let created = pods_created_by_postflight(&lab);
    assert_eq!(created.len(), 5 + 3, "{created:?}");
    assert_no_probe_left(&lab);
}

/// A permission missing from postflight's RBAC ends the run before it acts: the access
/// review names the verb, the resource and where, and nothing is locked or cordoned.
#[test]
fn a_missing_permission_fails_before_anything_is_touched_and_names_it() {
    let lab = lab("pf-rbac-missing", 3);
    let node = "k8s-worker-02";
    let before = boot_id(&lab, node);
    // Take `create pods/eviction` out of postflight's ClusterRole, as a hand-trimmed
    // manifest would.
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ci/rbac.yaml")).unwrap();
    let trimmed = manifest.replace(
        "  - apiGroups: [\"\"]\n    resources: [\"pods/eviction\"]\n    verbs: [\"create\"]\n",
        "",
    );
    assert_ne!(trimmed, manifest, "the eviction rule is in ci/rbac.yaml");
    let applied = Command::new(lab.paths().kubectl())
        .arg("--kubeconfig")
        .arg(lab.paths().kubeconfig())
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(trimmed.as_bytes())?;
            child.wait()
        })
        .unwrap();
    assert!(applied.success());
    let reports = tempfile::tempdir().unwrap();
    let run = verify_with(
        &lab.paths().inventory(),
        node,
        &["--reboot", "--drain"],
        reports.path(),
    );
    assert_eq!(run.code(), 3, "{}", run.describe());
    let message = run.message("node_ready_after_reboot");
    assert!(
        message.contains("postflight may not create pods/eviction (cluster-wide)")
            && message.contains("postflight rbac"),
        "{}",
        run.describe()
    );
    let forbidden = vec!["forbidden".to_string()];
    assert_eq!(
        run.error_kinds(),
        (forbidden.clone(), forbidden),
        "{}",
        run.junit
    );
    assert!(!cordoned(&lab, node), "the node was cordoned");
    assert_eq!(lock_holder(&lab), "", "the lock was taken");
    assert_eq!(boot_id(&lab, node), before, "the node was rebooted");
    assert_no_probe_left(&lab);
}

/// kubectl's conventions: `--kubeconfig` and `--context` over the inventory's; a context
/// that is not there is a usage error, said in one line.
#[test]
fn context_and_kubeconfig_flags_pick_the_cluster_as_kubectl_does() {
    let lab = lab("pf-context", 2);
    let node = "k8s-worker-01";
    let postflight = std::fs::read_to_string(lab.paths().postflight_kubeconfig()).unwrap();
    // A second context first, pointing nowhere: only --context selects the lab's.
    let two_contexts = postflight
        .replace(
            "contexts:\n",
            "contexts:\n- name: elsewhere\n  context:\n    cluster: elsewhere\n    user: postflight\n",
        )
        .replace(
            "clusters:\n",
            "clusters:\n- name: elsewhere\n  cluster:\n    server: https://127.0.0.1:1\n",
        )
        .replace(
            &format!("current-context: postflight-lab-{}", lab.name()),
            "current-context: elsewhere",
        );
    let reports = tempfile::tempdir().unwrap();
    let kubeconfig = reports.path().join("two-contexts.kubeconfig");
    std::fs::write(&kubeconfig, two_contexts).unwrap();
    // An inventory without cluster settings: the flags alone say where the cluster is.
    let inventory_text = std::fs::read_to_string(lab.paths().inventory()).unwrap();
    let mut without_cluster = String::new();
    let mut skipping = false;
    for line in inventory_text.lines() {
        if line.starts_with("cluster:") {
            skipping = true;
            continue;
        }
        if skipping && line.starts_with("  ") {
            continue;
        }
        skipping = false;
        without_cluster.push_str(line);
        without_cluster.push('\n');
    }
    let inventory = lab.paths().state_dir.join("no-cluster.yaml");
    std::fs::write(&inventory, without_cluster).unwrap();
    let context = format!("postflight-lab-{}", lab.name());
    let kubeconfig_arg = kubeconfig.to_string_lossy().to_string();
    let picked = run_postflight(
        &inventory,
        &[
            "--kubeconfig",
            &kubeconfig_arg,
            "--context",
            &context,
            "verify",
            "--node",
            node,
        ],
        reports.path(),
        "picked",
    );
    assert_eq!(picked.code(), 0, "{}", picked.describe());
    let wrong = Command::new(POSTFLIGHT)
        .arg("--inventory")
        .arg(&inventory)
        .args([
            "--kubeconfig",
            &kubeconfig_arg,
            "--context",
            "no-such-context",
        ])
        .args(["verify", "--node", node])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no-such-context"), "{stderr}");
}

/// An API server that does not answer is one line naming the server and the cause, exit 3,
/// with no line per check and no note about cleanup that had nothing to clean.
#[test]
fn an_unreachable_api_server_is_one_line_naming_it() {
    let reports = tempfile::tempdir().unwrap();
    let kubeconfig = reports.path().join("closed-port.kubeconfig");
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: closed\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\n\
         users:\n- name: nobody\n  user:\n    token: not-a-secret\ncontexts:\n- name: closed\n  context:\n    cluster: closed\n    user: nobody\ncurrent-context: closed\n",
    )
    .unwrap();
    let inventory = Path::new(env!("CARGO_MANIFEST_DIR")).join("inventory/example-staging.yaml");
    let kubeconfig_arg = kubeconfig.to_string_lossy().to_string();
    let run = run_postflight(
        &inventory,
        &[
            "--kubeconfig",
            &kubeconfig_arg,
            "--context",
            "closed",
            "verify",
            "--node",
            "k8s-worker-03",
        ],
        reports.path(),
        "unreachable",
    );
    assert_eq!(run.code(), 3, "{}", run.describe());
    let stdout = run.stdout();
    let mentions: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("cannot reach the API server"))
        .collect();
    assert_eq!(mentions.len(), 1, "{stdout}");
    assert!(
        mentions[0].contains("https://127.0.0.1:1/: connection refused"),
        "{stdout}"
    );
    assert!(!stdout.contains("note:"), "{stdout}");
    let unreachable = vec!["unreachable".to_string()];
    assert_eq!(
        run.error_kinds(),
        (unreachable.clone(), unreachable),
        "{}",
        run.junit
    );
    assert!(
        run.junit.contains("cannot reach the API server"),
        "{}",
        run.junit
    );
}
