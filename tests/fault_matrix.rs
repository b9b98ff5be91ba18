//! The fault matrix: what `verify --reboot` does when the cluster misbehaves in the ways
//! a gate that reboots production nodes must survive. Each test breaks a lab with one of
//! its knobs, asserts the exact verdict and exit code, and that no lease (nor cordon) is
//! left behind. Labs are taken down when a test ends, also when it fails.

mod common;

use common::*;
use postflight_lab::Lab;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The lab's inventory with extra YAML appended (later keys win only where they are
/// new; each test appends sections the lab's inventory does not have).
fn inventory_with(lab: &Lab, file: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(lab.paths().inventory()).unwrap();
    let path = lab.paths().state_dir.join(file);
    std::fs::write(&path, edit(text)).unwrap();
    path
}

fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_node_that_never_comes_back_fails_at_the_ready_deadline_naming_its_last_condition() {
    let lab = lab("pf-holddown", 4);
    let node = "k8s-worker-03";
    lab_cli(&lab, &["hold", "--node", node]);
    // Longer than the controller manager's node-monitor grace period (8 s in the lab):
    // the kubelet went with its node, so by the deadline the node is Unknown.
    let inventory = inventory_with(&lab, "short-ready.yaml", |text| {
        text.replace("node_ready: 120s", "node_ready: 15s")
    });
    let reports = tempfile::tempdir().unwrap();
    let run = verify(&inventory, node, true, reports.path());
    assert_eq!(run.code(), 1, "{}", run.describe());
    assert_eq!(run.verdict("node_ready_after_reboot"), "failed");
    let message = run.message("node_ready_after_reboot");
    assert!(message.contains("within 15s"), "{message}");
    assert!(
        message.contains(
            "last seen: Ready=Unknown (NodeStatusUnknown: Kubelet stopped posting node status.)"
        ),
        "{message}"
    );
    assert_eq!(run.verdict("boot_id_changed"), "failed");
    // It went down: it did not come back, which is not "it did not reboot".
    let boot = run.message("boot_id_changed");
    assert!(
        boot.contains("went down after the reboot command and did not come back within 15s")
            && !boot.contains("did not reboot"),
        "{boot}"
    );
    assert_eq!(
        run.verdict("calico_node_ready"),
        "error",
        "not run: the node did not come back"
    );
    lab_cli(&lab, &["hold", "--node", node, "--release"]);
    assert_nothing_left(&lab, node);
}

/// A permission taken away mid-run: when the node watch is re-established (the API
/// server restarts onto a compacted etcd) it gets 403, and the wait ends at once with an
/// error naming it, instead of retrying until the node's deadline.
#[test]
fn a_403_on_a_watch_ends_the_wait_at_once() {
    let lab = lab("pf-watch403", 3);
    let node = "k8s-worker-02";
    lab_cli(&lab, &["hold", "--node", node]);
    let reports = tempfile::tempdir().unwrap();
    let junit = reports.path().join("junit.xml");
    let child = spawn_reboot(&lab, node, &junit);
    wait_for_node_down(&lab, node);
    kubectl(
        &lab,
        &[
            "patch",
            "clusterrole",
            "postflight",
            "--type=json",
            "-p",
            r#"[{"op": "replace", "path": "/rules/0/verbs", "value": ["get"]}]"#,
        ],
    );
    lab_cli(&lab, &["compact-etcd"]);
    let output = child.wait_with_output();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(output.status.code(), Some(3), "{stdout}");
    let junit = std::fs::read_to_string(&junit).unwrap();
    assert!(
        junit.contains("watching node k8s-worker-02: the API server answered 403"),
        "{junit}"
    );
    assert!(
        !junit.contains("within 2m"),
        "it waited for the deadline: {junit}"
    );
    lab_cli(&lab, &["hold", "--node", node, "--release"]);
    assert_eq!(lock_holder(&lab), "", "the reboot lock is released");
    assert_no_probe_left(&lab);
}

/// Why a reboot cannot be sent to a node.
enum Unreachable {
    /// The node's known_hosts entry carries another key.
    HostKeyChanged,
    /// The known_hosts file the inventory names is gone.
    KnownHostsMissing,
    /// Nothing listens on the node's SSH port.
    SshdDown,
}

/// A reboot that cannot be sent never costs a drain: the transport proves it reaches the
/// node first, so nothing is cordoned, nothing evicted, nothing rebooted, nothing locked.
#[rstest::rstest]
#[case::host_key_changed(Unreachable::HostKeyChanged, "pf-unsent-key", "HOST KEY MISMATCH")]
#[case::known_hosts_missing(
    Unreachable::KnownHostsMissing,
    "pf-unsent-kh",
    "cannot read known_hosts"
)]
#[case::sshd_down(Unreachable::SshdDown, "pf-unsent-sshd", "cannot connect")]
fn a_reboot_that_cannot_be_sent_drains_nothing(
    #[case] why: Unreachable,
    #[case] name: &str,
    #[case] said: &str,
) {
    let lab = lab(name, 3);
    let node = "k8s-worker-02";
    let before = boot_id(&lab, node);
    let state = lab.paths().state_dir.clone();
    let inventory = inventory_with(&lab, "unsent.yaml", |text| match why {
        Unreachable::HostKeyChanged => {
            let key = impostor_key(&state);
            let ip = lab.topology().node(node).unwrap().ip.to_string();
            let real = std::fs::read_to_string(lab.paths().known_hosts()).unwrap();
            let tampered: String = real
                .lines()
                .map(|l| {
                    if l.starts_with(&format!("{ip} ")) {
                        format!("{ip} {key}")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            std::fs::write(state.join("tampered_known_hosts"), tampered + "\n").unwrap();
            text.replace(
                "known_hosts: ssh/known_hosts",
                "known_hosts: tampered_known_hosts",
            )
        }
        Unreachable::KnownHostsMissing => text.replace(
            "known_hosts: ssh/known_hosts",
            "known_hosts: ssh/gone_known_hosts",
        ),
        Unreachable::SshdDown => text.replace("  port: 22\n", "  port: 2\n"),
    });
    let reports = tempfile::tempdir().unwrap();
    let run = verify_with(&inventory, node, &["--reboot", "--drain"], reports.path());
    assert_eq!(run.code(), 3, "{}", run.describe());
    let drained = run.message("node_drained");
    assert!(
        drained.contains("not drained: the reboot could not be sent") && drained.contains(said),
        "{}",
        run.describe()
    );
    assert!(
        !cordoned(&lab, node),
        "{node} was cordoned for a reboot never sent"
    );
    assert_eq!(boot_id(&lab, node), before);
    assert_nothing_left(&lab, node);
}

/// Ctrl-C starts a clean stop; while that cleanup waits on an API server that hangs, a
/// second Ctrl-C ends the run at once with exit 130, saying what may be left and how to
/// undo it — and the report is still written, with what was known, marked interrupted.
#[test]
fn ctrl_c_twice_skips_the_cleanup_and_exits_130_at_once() {
    let lab = lab("pf-ctrlc2", 3);
    let node = "k8s-worker-01";
    let reports = tempfile::tempdir().unwrap();
    let junit = reports.path().join("junit.xml");
    let child = Background::spawn(
        Command::new(POSTFLIGHT)
            .arg("--inventory")
            .arg(lab.paths().inventory())
            .args(["verify", "--node", node, "--reboot", "--junit"])
            .arg(&junit)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    wait_for_node_down(&lab, node);
    // Frozen, not down: every cleanup request hangs instead of failing fast.
    lab_cli(&lab, &["pause-api", "--seconds", "40", "--freeze"]);
    nix_kill(child.id(), "INT");
    // The first stop is under way: it cannot reach the API server to clean up.
    std::thread::sleep(Duration::from_secs(2));
    nix_kill(child.id(), "INT");
    let output = child.wait_with_output();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted again: cleanup skipped")
            && stderr.contains("kubectl -n postflight-probe delete pod")
            && stderr.contains("the reboot lock kube-system/postflight-reboot-lock"),
        "{stderr}"
    );
    // The report is written, with what was known: the checks that never had a verdict
    // are errors of kind `interrupted`.
    let junit = std::fs::read_to_string(&junit).expect("the JUnit is written on a second Ctrl-C");
    assert!(
        junit_error_types(&junit).iter().any(|t| t == "interrupted"),
        "{junit}"
    );
    let document = roxmltree::Document::parse(&junit).expect("the JUnit parses");
    assert!(
        document.descendants().any(|n| n.has_tag_name("property")
            && n.attribute("name") == Some("rebooted")
            && n.attribute("value") == Some("true")),
        "the reboot was sent before the signals: {junit}"
    );
    assert!(stderr.contains("the interrupted run's JUnit: "), "{stderr}");
    // It did not wait for the API server to come back.
    let api = Command::new(lab.paths().kubectl())
        .arg("--kubeconfig")
        .arg(lab.paths().kubeconfig())
        .args(["get", "--raw", "/readyz", "--request-timeout=2s"])
        .output()
        .unwrap();
    assert!(!api.status.success(), "the API server was already back");
}

/// Blocks BGP on `node` and returns once its calico-node has turned unready (BIRD notices
/// when its hold timer, 9 s in the lab, runs out), with an inventory whose calico and
/// connectivity deadlines are short: waiting cannot mend BGP.
fn block_bgp(lab: &Lab, node: &str) -> PathBuf {
    lab_cli(lab, &["block-bgp", "--node", node]);
    wait_until(
        &format!("calico-node on {node} to turn unready"),
        Duration::from_secs(60),
        || {
            kubectl(lab, &["get", "pods", "-n", "kube-system", "-o", "wide"])
                .lines()
                .any(|l| l.contains(node) && l.contains("0/1"))
        },
    );
    inventory_with(lab, "short-calico.yaml", |text| {
        text.replace("calico_ready: 90s", "calico_ready: 10s")
            .replace("connectivity: 30s", "connectivity: 5s")
    })
}

#[test]
fn blocked_bgp_fails_calico_and_the_diagnosis_says_bgp() {
    let lab = lab("pf-bgp", 4);
    let node = "k8s-worker-03";
    let inventory = block_bgp(&lab, node);
    let reports = tempfile::tempdir().unwrap();
    let run = verify(&inventory, node, false, reports.path());
    assert_eq!(run.code(), 1, "{}", run.describe());
    assert_eq!(run.verdict("calico_node_ready"), "failed");
    assert_eq!(
        run.verdict("run_dir_permissions"),
        "passed",
        "not the incident"
    );
    assert_eq!(
        run.verdict("tmpfiles_config_present"),
        "passed",
        "not the incident"
    );
    assert_eq!(run.verdict("cross_node_pod_connectivity"), "failed");
    let root_cause = run.result("calico_node_ready")["diagnosis"]["root_cause"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        root_cause.contains("BGP is not established on k8s-worker-03"),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout().contains("birdcl show protocols"),
        "the BGP state is in the evidence: {}",
        run.describe()
    );
    lab_cli(&lab, &["block-bgp", "--node", node, "--unblock"]);
    assert_nothing_left(&lab, node);
}

/// BGP blocked on a peer, not on the node under test: the node's other sessions are
/// Established, so the diagnosis names the peer and sends the fix to the peer's firewall,
/// not to the node that was checked.
#[test]
fn bgp_blocked_on_a_peer_is_blamed_on_that_peer() {
    let lab = lab("pf-bgp-peer", 4);
    let (culprit, node) = ("k8s-worker-02", "k8s-worker-03");
    let inventory = block_bgp(&lab, culprit);
    let reports = tempfile::tempdir().unwrap();
    let run = verify(&inventory, node, false, reports.path());
    assert_eq!(run.code(), 1, "{}", run.describe());
    assert_eq!(run.verdict("cross_node_pod_connectivity"), "failed");
    let diagnosis = &run.result("cross_node_pod_connectivity")["diagnosis"];
    let root_cause = diagnosis["root_cause"].as_str().unwrap_or_default();
    assert!(
        root_cause.contains(&format!("BGP between {node} and {culprit} is down"))
            && root_cause.contains(&format!("on {culprit}'s side")),
        "{}",
        run.describe()
    );
    let culprit_ip = lab.topology().node(culprit).unwrap().ip.to_string();
    let node_ip = lab.topology().node(node).unwrap().ip.to_string();
    let fixes: Vec<&str> = diagnosis["remediation"]
        .as_array()
        .expect("fix commands")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert!(fixes[0].contains(&format!("@{culprit_ip} ")), "{fixes:?}");
    assert!(
        fixes.iter().all(|c| !c.contains(&format!("@{node_ip} "))),
        "no fix points at the node under test: {fixes:?}"
    );
    lab_cli(&lab, &["block-bgp", "--node", culprit, "--unblock"]);
    assert_nothing_left(&lab, node);
}

#[test]
fn an_api_outage_during_the_wait_is_ridden_out() {
    let lab = lab("pf-apipause", 4);
    let node = "k8s-worker-03";
    let reports = tempfile::tempdir().unwrap();
    let junit = reports.path().join("junit.xml");
    let child = spawn_reboot(&lab, node, &junit);
    wait_for_node_down(&lab, node);
    let paused = Instant::now();
    lab_cli(&lab, &["pause-api", "--seconds", "20"]);
    let output = child.wait_with_output();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        paused.elapsed() >= Duration::from_secs(20),
        "the run cannot finish while the API is away: {stdout}"
    );
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let junit = std::fs::read_to_string(&junit).unwrap();
    assert!(
        !junit.contains("<failure") && !junit.contains("<error"),
        "{junit}"
    );
    assert_nothing_left(&lab, node);
}

/// An API outage longer than the reboot lock's lease while the rebooted node is still
/// being verified: the run's renewals fail for the lease's whole duration, so another
/// run could take the lock. The run stops there, with a lock_lost error, and leaves its
/// drained node cordoned; a second run started during the outage reboots nothing.
#[test]
fn an_outage_longer_than_the_lease_stops_the_run_and_a_second_run_reboots_nothing() {
    let lab = lab("pf-lease-lost", 4);
    let (node, other) = ("k8s-worker-03", "k8s-worker-02");
    let inventory = inventory_with(&lab, "short-lease.yaml", |text| {
        text.replace("node_ready: 120s", "node_ready: 15s")
            .replace("calico_ready: 90s", "calico_ready: 120s")
            + "lock:\n  duration: 15s\n"
    });
    let (before, other_before) = (boot_id(&lab, node), boot_id(&lab, other));
    let reports = tempfile::tempdir().unwrap();
    let junit = reports.path().join("first.xml");
    // The node is held down through its reboot, so that BGP can be blocked on it before
    // it boots: calico-node then never turns Ready and the run waits on it.
    lab_cli(&lab, &["hold", "--node", node]);
    let first = Background::spawn(
        Command::new(POSTFLIGHT)
            .arg("--inventory")
            .arg(&inventory)
            .args(["verify", "--node", node, "--reboot", "--drain", "--junit"])
            .arg(&junit)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    wait_for_node_down(&lab, node);
    wait_for_power_off(&lab, node);
    lab_cli(&lab, &["block-bgp", "--node", node]);
    lab_cli(&lab, &["hold", "--node", node, "--release"]);
    wait_until("the node to boot again", Duration::from_secs(60), || {
        boot_id(&lab, node) != before
    });
    let outage = {
        let name = lab.name().to_string();
        std::thread::spawn(move || {
            let status = Command::new(postflight_lab::lab_binary(None))
                .args(["pause-api", "--seconds", "30", "--name", &name])
                .status()
                .unwrap();
            assert!(status.success());
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let second = Command::new(POSTFLIGHT)
        .arg("--inventory")
        .arg(&inventory)
        .args(["verify", "--node", other, "--reboot"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let second_out = String::from_utf8_lossy(&second.stdout).to_string();
    assert_eq!(second.status.code(), Some(3), "{second_out}");
    assert!(
        second_out.contains("cannot reach the API server"),
        "{second_out}"
    );

    let first = first.wait_with_output();
    outage.join().unwrap();
    wait_until("the API server to be back", Duration::from_secs(60), || {
        Command::new(lab.paths().kubectl())
            .arg("--kubeconfig")
            .arg(lab.paths().kubeconfig())
            .args(["get", "--raw", "/readyz"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let stdout = String::from_utf8_lossy(&first.stdout).to_string();
    eprintln!("the first run said:\n{stdout}");
    assert_eq!(first.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("the reboot lock was lost"), "{stdout}");
    assert!(
        stdout.contains(&format!("{node} stays cordoned")),
        "{stdout}"
    );
    let junit = std::fs::read_to_string(&junit).unwrap();
    assert!(
        junit_error_types(&junit).iter().any(|t| t == "lock_lost"),
        "{junit}"
    );
    assert_eq!(
        boot_id(&lab, other),
        other_before,
        "the second run rebooted nothing"
    );
    assert!(
        cordoned(&lab, node),
        "the first run's node stays out of service"
    );
    assert_eq!(
        lock_holder(&lab),
        "",
        "the lost lease is given back once nobody holds it: {stdout}"
    );
    assert_no_probe_left(&lab);
    lab_cli(&lab, &["block-bgp", "--node", node, "--unblock"]);
    kubectl(&lab, &["uncordon", node]);
}

/// A node that dies instead of shutting down (`systemctl reboot --force --force`, a
/// power cut): it never reports NotReady, so the reboot is proven by its new boot ID
/// alone, and the verdict is as for a clean reboot.
#[test]
fn an_unclean_reboot_is_proven_by_the_new_boot() {
    let lab = lab("pf-unclean", 4);
    let node = "k8s-worker-03";
    let inventory = inventory_with(&lab, "unclean.yaml", |text| {
        text.replace(
            "command: systemctl reboot\n",
            "command: systemctl reboot --force --force\n",
        )
    });
    let before = boot_id(&lab, node);
    let reports = tempfile::tempdir().unwrap();
    let run = verify(&inventory, node, true, reports.path());
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert_ne!(boot_id(&lab, node), before, "the node really rebooted");
    assert_eq!(
        run.result("boot_id_changed")["evidence"][0]["observed"],
        boot_id(&lab, node).as_str()
    );
    assert!(
        run.junit_cases()
            .iter()
            .all(|(_, _, kind)| kind == "passed"),
        "{}",
        run.junit
    );
    assert_nothing_left(&lab, node);
}

/// Reboots `node` with `verify --reboot`, holding it down through the reboot so that
/// `fault` can break it before it boots; returns what the run printed and its JUnit,
/// after asserting the JUnit parses.
fn reboot_into_a_fault(
    lab: &Lab,
    node: &str,
    fault: impl FnOnce(),
) -> (std::process::Output, String) {
    let reports = tempfile::tempdir().unwrap();
    let junit = reports.path().join("junit.xml");
    lab_cli(lab, &["hold", "--node", node]);
    let child = spawn_reboot(lab, node, &junit);
    wait_for_node_down(lab, node);
    wait_for_power_off(lab, node);
    fault();
    let output = child.wait_with_output();
    let junit = std::fs::read_to_string(&junit).unwrap();
    roxmltree::Document::parse(&junit).expect("the JUnit parses");
    (output, junit)
}

/// The verdict of a run that should pass: exit 0 and no <failure> or <error>.
fn assert_passed(output: &std::process::Output, junit: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        !junit.contains("<failure") && !junit.contains("<error"),
        "{junit}"
    );
}

/// The rebooted node's NIC stays down for a minute as it comes back (a link that takes
/// its time after a driver update): its kubelet cannot report, so the node is not Ready
/// on its new boot until the NIC is up. The gate waits it out within its deadline and
/// the verdict is as for a clean reboot.
#[test]
fn a_nic_down_for_a_minute_as_the_node_comes_back_is_ridden_out() {
    let lab = lab("pf-nic-down", 4);
    let node = "k8s-worker-03";
    let (output, junit) = reboot_into_a_fault(&lab, node, || {
        lab_cli(&lab, &["nic", "--node", node]);
        lab_cli(&lab, &["hold", "--node", node, "--release"]);
        std::thread::sleep(Duration::from_secs(60));
        lab_cli(&lab, &["nic", "--node", node, "--up"]);
    });
    assert_passed(&output, &junit);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let waited: f64 = stdout
        .split(" · ")
        .find_map(|step| {
            step.trim()
                .strip_prefix("wait for the node to be Ready on a new boot ")
        })
        .and_then(|s| s.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("the wait is timed: {stdout}"));
    assert!(
        waited >= 50.0,
        "the node was Ready after {waited} s with its NIC down: {stdout}"
    );
    // A CI log is never silent through a long wait: a heartbeat names what is awaited.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let heartbeats = stderr
        .lines()
        .filter(|l| {
            l.contains("still waiting: k8s-worker-03: wait for the node to be Ready on a new boot")
        })
        .count();
    assert!(
        heartbeats >= 4,
        "{heartbeats} heartbeats in a minute's wait:\n{stderr}"
    );
    assert!(
        stderr.contains("k8s-worker-03: issue the reboot: "),
        "each step as it finishes:\n{stderr}"
    );
    assert_nothing_left(&lab, node);
}

/// 30 % of the rebooted node's pod traffic lost at random as it comes back (a failing
/// NIC, a congested uplink). Pod-to-pod TCP gets through it with retransmissions and the
/// probes' retries, so the gate does not flap: the verdict is a pass.
#[test]
fn thirty_percent_pod_packet_loss_is_ridden_out_without_flapping() {
    let lab = lab("pf-loss", 4);
    let node = "k8s-worker-03";
    let (output, junit) = reboot_into_a_fault(&lab, node, || {
        lab_cli(
            &lab,
            &["lose-pod-traffic", "--node", node, "--percent", "30"],
        );
        lab_cli(&lab, &["hold", "--node", node, "--release"]);
    });
    lab_cli(&lab, &["lose-pod-traffic", "--node", node, "--stop"]);
    assert_passed(&output, &junit);
    assert_nothing_left(&lab, node);
}

/// etcd compacted while the node is down: every watch postflight holds breaks, resumes
/// from a revision that no longer exists, gets 410 Gone and must relist — and the verdict
/// is still right.
#[test]
fn an_etcd_compaction_while_the_node_is_down_is_ridden_out() {
    let lab = lab("pf-compact", 4);
    let node = "k8s-worker-03";
    let reports = tempfile::tempdir().unwrap();
    let junit = reports.path().join("junit.xml");
    let child = spawn_reboot(&lab, node, &junit);
    wait_for_node_down(&lab, node);
    let said = lab_cli(&lab, &["compact-etcd"]);
    assert!(said.contains("compacted etcd at revision"), "{said}");
    let output = child.wait_with_output();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let junit = std::fs::read_to_string(&junit).unwrap();
    assert!(
        !junit.contains("<failure") && !junit.contains("<error"),
        "{junit}"
    );
    assert_nothing_left(&lab, node);
}

#[test]
fn a_denied_reboot_command_fails_and_nothing_is_rebooted() {
    let lab = lab("pf-denied", 4);
    let node = "k8s-worker-03";
    let inventory = inventory_with(&lab, "denied.yaml", |text| {
        text.replace(
            "command: systemctl reboot",
            "command: \"echo 'Failed to reboot: Access denied' >&2; exit 1\"",
        )
    });
    let before = boot_id(&lab, node);
    let reports = tempfile::tempdir().unwrap();
    // Drained first, so that the cordon is there to be undone: a node the reboot never
    // reached is as it was and goes back into service.
    let run = verify_with(&inventory, node, &["--reboot", "--drain"], reports.path());
    assert_eq!(run.code(), 1, "{}", run.describe());
    assert_eq!(run.verdict("node_drained"), "passed");
    assert_eq!(run.verdict("node_ready_after_reboot"), "failed");
    assert!(
        run.stdout()
            .contains("k8s-worker-03 was not rebooted, so it is uncordoned again"),
        "{}",
        run.describe()
    );
    let message = run.message("node_ready_after_reboot");
    assert!(
        message.contains("was refused (exit 1): Failed to reboot: Access denied"),
        "{message}"
    );
    assert_eq!(
        run.verdict("calico_node_ready"),
        "error",
        "not run: the node was not rebooted"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(boot_id(&lab, node), before, "nothing was rebooted");
    assert_nothing_left(&lab, node);
}

/// A pod of the user's on `node`, and optionally a disruption budget that forbids
/// evicting it.
fn user_pod(lab: &Lab, node: &str, guarded: bool) {
    let manifest = lab.paths().state_dir.join("user-pod.json");
    let mut items = vec![serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "checkout", "namespace": "default", "labels": {"app": "checkout"}},
        "spec": {"nodeName": node, "containers": [{"name": "web", "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                 "args": ["netexec", "--http-port=8080"]}]},
    })];
    if guarded {
        items.push(serde_json::json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "checkout", "namespace": "default"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "checkout"}}},
        }));
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(&manifest, list.to_string()).unwrap();
    // The lab serves no OpenAPI schema for kubectl to validate against.
    kubectl(
        lab,
        &[
            "create",
            "--validate=false",
            "-f",
            manifest.to_str().unwrap(),
        ],
    );
    wait_until(
        "the user's pod to be Ready",
        Duration::from_secs(30),
        || {
            kubectl(
                lab,
                &[
                    "get",
                    "pod",
                    "checkout",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ],
            ) == "True"
        },
    );
}

#[test]
fn a_drain_blocked_by_a_disruption_budget_stops_before_the_reboot_and_uncordons() {
    let lab = lab("pf-pdb", 4);
    let node = "k8s-worker-03";
    user_pod(&lab, node, true);
    let inventory = inventory_with(&lab, "short-drain.yaml", |text| {
        text.replace(
            "  connectivity: 30s\n",
            "  connectivity: 30s\n  drain: 6s\n",
        )
    });
    let before = boot_id(&lab, node);
    let reports = tempfile::tempdir().unwrap();
    let run = verify_with(&inventory, node, &["--reboot", "--drain"], reports.path());
    assert_eq!(run.code(), 3, "{}", run.describe());
    assert_eq!(run.verdict("node_drained"), "error");
    let why = run.message("node_drained");
    assert!(
        why.contains("default/checkout") && why.contains("disruption budget"),
        "{why}"
    );
    assert!(
        why.contains("not rebooted and is uncordoned again"),
        "{why}"
    );
    assert_eq!(boot_id(&lab, node), before, "nothing was rebooted");
    assert_eq!(
        kubectl(&lab, &["get", "pod", "checkout", "-o", "name"]),
        "pod/checkout",
        "the guarded pod stays"
    );
    assert_nothing_left(&lab, node);
}

#[test]
fn a_drained_node_that_passes_is_uncordoned() {
    let lab = lab("pf-drain", 4);
    let node = "k8s-worker-03";
    user_pod(&lab, node, false);
    let reports = tempfile::tempdir().unwrap();
    let run = verify_with(
        &lab.paths().inventory(),
        node,
        &["--reboot", "--drain"],
        reports.path(),
    );
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert_eq!(
        run.result("node_drained")["evidence"][0]["observed"],
        "1",
        "the user's pod was evicted"
    );
    let gone = kubectl(
        &lab,
        &["get", "pod", "checkout", "--ignore-not-found", "-o", "name"],
    );
    assert_eq!(gone, "");
    assert_nothing_left(&lab, node);
}

#[test]
fn a_node_cordoned_before_the_run_is_left_cordoned() {
    let lab = lab("pf-precordon", 4);
    let node = "k8s-worker-03";
    // An operator cordoned the node earlier: `kubectl cordon` sets the same field.
    kubectl(
        &lab,
        &[
            "patch",
            "node",
            node,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"unschedulable":true}}"#,
        ],
    );
    let reports = tempfile::tempdir().unwrap();
    let run = verify_with(
        &lab.paths().inventory(),
        node,
        &["--reboot", "--drain"],
        reports.path(),
    );
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert!(
        run.stdout()
            .contains("k8s-worker-03 was already cordoned before this run; it is left cordoned"),
        "{}",
        run.describe()
    );
    assert!(
        cordoned(&lab, node),
        "the operator's cordon is theirs to lift"
    );
    assert_eq!(lock_holder(&lab), "", "the reboot lock is released");
    assert_no_probe_left(&lab);
}

/// A node whose pods cannot reach any other node while calico-node stays Ready (a host
/// firewall's FORWARD policy of DROP): only the preflight's pod probes can see it. In a
/// small cluster they cover every pair; a large one (17 nodes: over the full-mesh limit)
/// gets the linear set, which must catch it as well.
#[rstest::rstest]
#[case::full_mesh("pf-fwd-mesh", 5)]
#[case::linear_set("pf-fwd-linear", 17)]
fn pod_traffic_dropped_elsewhere_is_refused_before_the_reboot(
    #[case] name: &str,
    #[case] nodes: usize,
) {
    let lab = lab(name, nodes);
    let blocked = "k8s-worker-02";
    lab_cli(&lab, &["block-pod-traffic", "--node", blocked]);
    let node = "k8s-worker-03";
    let before = boot_id(&lab, node);
    let inventory = inventory_with(&lab, "short-connectivity.yaml", |text| {
        text.replace("connectivity: 30s", "connectivity: 5s")
    });
    let reports = tempfile::tempdir().unwrap();
    let run = verify(&inventory, node, true, reports.path());
    assert_eq!(run.code(), 3, "refused is exit 3: {}", run.describe());
    assert_eq!(run.verdict("cluster_healthy_before_reboot"), "error");
    let why = run.message("cluster_healthy_before_reboot");
    assert!(
        why.contains(&format!("{blocked}/")) && why.contains("curl: ("),
        "the refusal names the failing pairs with curl's error: {why}"
    );
    assert!(
        !why.contains("is not Ready"),
        "calico-node and the nodes are Ready: {why}"
    );
    assert_eq!(boot_id(&lab, node), before, "nothing was rebooted");
    lab_cli(&lab, &["block-pod-traffic", "--node", blocked, "--unblock"]);
    assert_nothing_left(&lab, node);
}

/// A `stat` on the node that never ends: 128 MiB at once, then a line a second forever,
/// touching a file in the node's /run when it starts and each time it prints (a writer
/// whose reader is gone dies on its next line, and stops touching it).
const STALLING_STAT: &str = "#!/bin/sh\n\
    touch /var/lib/postflight-stall-started\n\
    head -c 134217728 /dev/zero | tr '\\0' y\n\
    while :; do echo still statting; touch /var/lib/postflight-stall-alive; sleep 1; done\n";

/// The largest resident set `pid` had, sampled until it exits (in KiB).
fn peak_rss_kib(pid: u32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let rss = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0);
            peak = peak.max(rss);
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    })
}

/// Waits for a background run to end, at most `limit`; kills it and fails if it does not.
fn ends_within(child: Background, limit: Duration) -> std::process::Output {
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()));
    match receiver.recv_timeout(limit) {
        Ok(output) => output,
        Err(_) => {
            nix_kill(pid, "KILL");
            panic!("postflight (pid {pid}) did not exit within {limit:?}");
        }
    }
}

/// The transport stall: a node command that keeps printing can no longer hold a run, nor
/// the reboot lock. With `--reboot --drain`, the host check that runs it ends in error at
/// `timeouts.ssh` however much it prints, with postflight's memory bounded; the node
/// command is ended with its channel; the Lease is released and the run exits. And Ctrl-C
/// during such a stall ends the process within 2 s, its report written; and `drift`
/// over such a node exits once its report is written.
#[test]
fn a_node_command_that_never_ends_is_cut_at_its_deadline_and_ctrl_c_still_exits() {
    let lab = lab("pf-stall", 3);
    let node = "k8s-worker-02";
    let spec = lab.topology().node(node).unwrap();
    let paths = postflight_lab::node::NodePaths::new(lab.topology(), spec);
    // The node's own /usr/local/bin, first in sshd's PATH: `env LC_ALL=C stat` finds it.
    let stat = paths.bin.join("stat");
    std::fs::write(&stat, STALLING_STAT).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stat, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The markers on the node's disk, which this side sees as the node's directory.
    let disk = postflight_lab::realnode::RealPaths::new(lab.topology(), spec).var_lib;
    let (started_marker, alive_marker) = (
        disk.join("postflight-stall-started"),
        disk.join("postflight-stall-alive"),
    );
    let with_ssh_timeout = |file: &str, timeout: &str| {
        inventory_with(&lab, file, |text| {
            text.replace(
                "  connectivity: 30s\n",
                &format!("  connectivity: 30s\n  ssh: {timeout}\n"),
            )
        })
    };
    let reports = tempfile::tempdir().unwrap();
    let (junit, json) = (
        reports.path().join("stall-junit.xml"),
        reports.path().join("stall.json"),
    );
    let run = |inventory: &std::path::Path, flags: &[&str]| {
        Background::spawn(
            Command::new(POSTFLIGHT)
                .arg("--inventory")
                .arg(inventory)
                .args(["verify", "--node", node])
                .args(flags)
                .arg("--junit")
                .arg(&junit)
                .arg("--json")
                .arg(&json)
                .env("NO_COLOR", "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped()),
        )
    };

    let child = run(
        &with_ssh_timeout("short-ssh.yaml", "8s"),
        &["--reboot", "--drain"],
    );
    let peak = peak_rss_kib(child.id());
    let output = ends_within(child, Duration::from_secs(300));
    let ended = std::time::SystemTime::now();
    let peak_mib = peak.join().unwrap() / 1024;
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).unwrap();
    let describe = format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let result = |check: &str| {
        report["nodes"][0]["results"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == check).cloned())
            .unwrap_or_else(|| panic!("no {check}: {describe}"))
    };
    assert_eq!(output.status.code(), Some(3), "{describe}");
    let run_dir = result("run_dir_permissions");
    assert_eq!(run_dir["verdict"], "error", "{describe}");
    let message = run_dir["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("stat") && message.contains("did not finish within 8s"),
        "{message}"
    );
    // The same connection carried the node's other commands as usual.
    assert_eq!(
        result("tmpfiles_config_present")["verdict"],
        "passed",
        "{describe}"
    );
    // The deadline counted from the command's start, whatever it printed meanwhile.
    let stalled_for = ended
        .duration_since(
            std::fs::metadata(&started_marker)
                .unwrap()
                .modified()
                .unwrap(),
        )
        .unwrap();
    eprintln!("the run ended {stalled_for:?} after the stall began (timeouts.ssh: 8s)");
    assert!(
        stalled_for < Duration::from_secs(8 + 6),
        "ended {stalled_for:?} after the stall began: {describe}"
    );
    // 128 MiB came through: an uncapped read alone would hold more than that.
    eprintln!("postflight's peak RSS through the stall: {peak_mib} MiB");
    assert!(peak_mib < 100, "peak RSS {peak_mib} MiB: {describe}");
    assert_eq!(lock_holder(&lab), "", "the reboot lock is released");
    // A rebooted node whose checks did not all pass stays out of service, and says so.
    assert!(cordoned(&lab, node), "{describe}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&format!("kubectl uncordon {node}")),
        "{describe}"
    );
    assert_no_probe_left(&lab);
    // The node's command went with its channel: it stops printing.
    let alive = |marker: &std::path::Path| std::fs::metadata(marker).and_then(|m| m.modified());
    let last = alive(&alive_marker).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        alive(&alive_marker).unwrap(),
        last,
        "the node's stat still runs"
    );
    kubectl(&lab, &["uncordon", node]);

    // Ctrl-C in the middle of a stall, with a deadline far away.
    std::fs::remove_file(&started_marker).unwrap();
    std::fs::remove_file(&json).unwrap();
    let child = run(&with_ssh_timeout("long-ssh.yaml", "120s"), &[]);
    wait_until("the node's stat to start", Duration::from_secs(60), || {
        started_marker.exists()
    });
    std::thread::sleep(Duration::from_secs(1));
    let interrupted = std::time::Instant::now();
    nix_kill(child.id(), "INT");
    let output = ends_within(child, Duration::from_secs(10));
    let took = interrupted.elapsed();
    eprintln!("Ctrl-C during the stall: exited after {took:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        took < Duration::from_secs(2),
        "exited {took:?} after Ctrl-C: {stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the report is written"))
            .unwrap();
    assert_eq!(report["nodes"][0]["node"], node, "{report}");
    assert_eq!(report["nodes"][0]["interrupted"], true, "{report}");
    roxmltree::Document::parse(&std::fs::read_to_string(&junit).unwrap()).unwrap();
    let last = alive(&alive_marker).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        alive(&alive_marker).unwrap(),
        last,
        "the node's stat still runs"
    );

    // drift reads every node in one batch each: the stalled one errs at its deadline,
    // and the process exits once its report is written, its SSH worker or not.
    std::fs::remove_file(&json).unwrap();
    let started = std::time::Instant::now();
    let child = Background::spawn(
        Command::new(POSTFLIGHT)
            .arg("--inventory")
            .arg(with_ssh_timeout("short-ssh.yaml", "8s"))
            .args(["drift", "--json"])
            .arg(&json)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    let output = ends_within(child, Duration::from_secs(60));
    eprintln!(
        "drift with one stalled node: exited after {:?}",
        started.elapsed()
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("drift's report")).unwrap();
    assert_eq!(output.status.code(), Some(3), "{report}");
    let stalled = report["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"] == node))
        .expect("the stalled node is reported");
    assert!(
        stalled.to_string().contains("did not finish within 8s"),
        "{stalled}"
    );
    std::fs::remove_file(&stat).unwrap();
    assert_nothing_left(&lab, node);
}

/// The reboot lock's Lease as a run killed outright leaves it: held by `holder`, last
/// renewed `renewed_ago` ago, with a duration of `duration` seconds.
fn leave_lease(lab: &Lab, holder: &str, renewed_ago: Duration, duration: i32) {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let renewed = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(renewed_ago)
        .unwrap();
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "postflight-reboot-lock", "namespace": "kube-system"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                 "renewTime": MicroTime(renewed), "acquireTime": MicroTime(renewed)},
    });
    let manifest = lab.paths().state_dir.join("left-lease.json");
    std::fs::write(&manifest, lease.to_string()).unwrap();
    kubectl(
        lab,
        &[
            "apply",
            "--validate=false",
            "-f",
            manifest.to_str().unwrap(),
        ],
    );
}

/// A run SIGKILLed while it held the lock leaves a Lease nobody renews. One renewed a
/// moment ago still holds (the refusal names the holder, its renewTime and the command
/// that frees it); once its renewTime is older than its duration and the skew
/// allowance, the next run takes it over at once — it does not wait out lock.wait, and
/// says it freed it.
#[test]
fn a_stale_lease_is_taken_over_by_its_renew_time_and_a_fresh_one_holds() {
    let lab = lab("pf-stale-renew", 3);
    let node = "k8s-worker-01";
    let killed = "postflight@runner-9 pid 4242 run 0dead000";
    let inventory = inventory_with(&lab, "impatient.yaml", |text| {
        text + "lock:\n  wait: 2s\n  duration: 10m\n"
    });
    let before = boot_id(&lab, node);
    leave_lease(&lab, killed, Duration::from_secs(5), 600);
    let reports = tempfile::tempdir().unwrap();
    let held = verify(&inventory, node, true, reports.path());
    assert_eq!(held.code(), 3, "{}", held.describe());
    let said = held.stdout();
    assert!(
        said.contains(&format!("is held by {killed} (renewed at "))
            && said.contains("s ago; frees at "),
        "{}",
        held.describe()
    );
    assert!(
        said.contains("`kubectl -n kube-system delete lease postflight-reboot-lock`"),
        "{}",
        held.describe()
    );
    assert_eq!(
        held.json["nodes"][0]["rebooted"], false,
        "refused by the lock"
    );
    assert_eq!(boot_id(&lab, node), before, "nothing was rebooted");
    // The same holder, gone for longer than 10 min and the minute's skew.
    leave_lease(&lab, killed, Duration::from_secs(15 * 60), 600);
    let reports = tempfile::tempdir().unwrap();
    let run = verify(&inventory, node, true, reports.path());
    assert_eq!(run.code(), 0, "{}", run.describe());
    let waited = run.step_seconds("take the reboot lock");
    assert!(
        waited < 1.0,
        "it waited {waited} s for a dead holder's lease"
    );
    assert!(
        run.stdout().contains(&format!(
            "freed the reboot lock kube-system/postflight-reboot-lock, left held by {killed}"
        )),
        "{}",
        run.describe()
    );
    assert_ne!(boot_id(&lab, node), before, "the run rebooted its node");
    assert_nothing_left(&lab, node);
}

/// A rolling update holds the reboot lock through its soak: a second pipeline's
/// `verify --reboot` of another node during the soak is refused by the lock and reboots
/// nothing. Ctrl-C in the soak then ends the update between nodes and gives the lock back.
#[test]
fn a_soak_holds_the_lock_so_a_second_pipeline_reboots_nothing() {
    let lab = lab("pf-soak-lock", 4);
    let (first, second, other) = ("k8s-worker-01", "k8s-worker-02", "k8s-worker-03");
    let reports = tempfile::tempdir().unwrap();
    let json = reports.path().join("rolling.json");
    let rollout = Background::spawn(
        Command::new(POSTFLIGHT)
            .arg("--inventory")
            .arg(lab.paths().inventory())
            .args(["rolling", "--nodes", &format!("{first},{second}")])
            .args(["--soak", "5m", "--json"])
            .arg(&json)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    wait_until("the first node to pass", Duration::from_secs(180), || {
        std::fs::read_to_string(&json)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|so_far| so_far["nodes"].as_array().map(Vec::len) == Some(1))
    });
    let holder = lock_holder(&lab);
    assert!(!holder.is_empty(), "the lock is held through the soak");
    let (other_before, second_before) = (boot_id(&lab, other), boot_id(&lab, second));
    let impatient = inventory_with(&lab, "impatient.yaml", |text| text + "lock:\n  wait: 2s\n");
    let checked = tempfile::tempdir().unwrap();
    let refused = verify(&impatient, other, true, checked.path());
    assert_eq!(refused.code(), 3, "{}", refused.describe());
    assert!(
        refused.stdout().contains(&format!("is held by {holder}")),
        "{}",
        refused.describe()
    );
    assert_eq!(
        boot_id(&lab, other),
        other_before,
        "the second pipeline rebooted nothing"
    );
    nix_kill(rollout.id(), "INT");
    let output = rollout.wait_with_output();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(output.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("INTERRUPTED between nodes"), "{stdout}");
    assert_eq!(
        boot_id(&lab, second),
        second_before,
        "not rebooted after Ctrl-C"
    );
    assert_eq!(lock_holder(&lab), "", "the update gave the lock back");
    assert_no_probe_left(&lab);
}
