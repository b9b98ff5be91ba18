//! The lab's proof, against real labs and with the independent clients a user would
//! use: the machine's kubectl and OpenSSH. Each test brings up its own lab (several run at
//! once, which is itself part of the proof) and takes it down on drop, also on failure.

use postflight_lab::{Lab, LabConfig};
use rstest::rstest;
use serde_json::Value;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";
/// How long the lab may take for what a real cluster does in minutes (reboot, restart
/// back-off); generous so a loaded CI machine does not flake.
const SETTLE: Duration = Duration::from_secs(90);

fn lab(name: &str, nodes: usize) -> Lab {
    Lab::up(LabConfig::new(name).nodes(nodes))
        .unwrap_or_else(|e| panic!("lab {name} did not come up: {e}"))
}

fn kubectl(lab: &Lab, args: &[&str]) -> Output {
    Command::new(lab.paths().kubectl())
        .arg("--kubeconfig")
        .arg(lab.paths().kubeconfig())
        .args(args)
        .output()
        .expect("kubectl runs")
}

fn kubectl_ok(lab: &Lab, args: &[&str]) -> String {
    let out = kubectl(lab, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl_json(lab: &Lab, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl_ok(lab, &all)).expect("kubectl prints JSON")
}

fn ssh(lab: &Lab, node: &str, command: &str) -> Output {
    let ip = lab
        .topology()
        .node(node)
        .expect("node exists")
        .ip
        .to_string();
    Command::new("ssh")
        .arg("-i")
        .arg(lab.paths().ssh_key())
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            lab.paths().known_hosts().display()
        ))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
        ])
        .arg(format!("root@{ip}"))
        .arg(command)
        .output()
        .expect("ssh runs")
}

/// No process of this machine has `pattern` in its command line (`pgrep -f`).
fn assert_no_process_matching(pattern: &str) {
    let processes = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    assert!(
        processes.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&processes.stdout)
    );
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < SETTLE,
            "timed out after {SETTLE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    started.elapsed()
}

fn create_web_pod(lab: &Lab, name: &str, node: &str) -> String {
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "containers": [{"name": "web", "image": AGNHOST, "args": ["netexec", "--http-port=8080"]}]},
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), pod.to_string()).unwrap();
    kubectl_ok(
        lab,
        &[
            "create",
            "--validate=false",
            "-f",
            &file.path().to_string_lossy(),
        ],
    );
    let mut ip = String::new();
    wait_for(&format!("pod {name} Ready"), || {
        let pod = kubectl_json(lab, &["get", "pod", name]);
        ip = pod["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    ip
}

/// `kubectl exec <from> -- curl http://<ip>:8080/hostname`: the HTTP status, 0 on failure.
fn curl_status(lab: &Lab, from: &str, ip: &str) -> u16 {
    let url = format!("http://{ip}:8080/hostname");
    let out = kubectl(
        lab,
        &[
            "exec",
            from,
            "--",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "3",
            &url,
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// `postflight-lab SUBCOMMAND --name LAB --node NODE ARGS`: a knob of the lab, as a user
/// turns it; what it printed.
fn knob(lab: &Lab, subcommand: &str, node: &str, args: &[&str]) -> String {
    let out = Command::new(postflight_lab::lab_binary(None))
        .args([subcommand, "--name", lab.name(), "--node", node])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "postflight-lab {subcommand}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn calico_pod_on(lab: &Lab, node: &str) -> Value {
    let pods = kubectl_json(
        lab,
        &[
            "get",
            "pods",
            "-n",
            "kube-system",
            "-l",
            "k8s-app=calico-node",
            "--field-selector",
            &format!("spec.nodeName={node}"),
        ],
    );
    pods["items"][0].clone()
}

fn ready(object: &Value) -> bool {
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

#[test]
fn five_node_lab_looks_like_a_cluster_to_kubectl() {
    let lab = lab("proof-kubectl", 5);
    let nodes = kubectl_ok(&lab, &["get", "nodes", "-o", "wide"]);
    let rows: Vec<&str> = nodes.lines().skip(1).collect();
    assert_eq!(rows.len(), 5, "{nodes}");
    assert!(
        rows.iter()
            .all(|r| r.split_whitespace().nth(1) == Some("Ready")),
        "{nodes}"
    );
    assert!(
        nodes.contains("INTERNAL-IP")
            && nodes.contains("k8s-worker-03")
            && nodes.contains("198.18."),
        "{nodes}"
    );
    let pods = kubectl_ok(&lab, &["get", "pods", "-n", "kube-system", "-o", "wide"]);
    let calico: Vec<&str> = pods.lines().filter(|l| l.contains("calico-node")).collect();
    assert_eq!(calico.len(), 5, "{pods}");
    for row in calico {
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&columns[1..3], ["1/1", "Running"], "{row}");
    }
    let daemonset = kubectl_json(
        &lab,
        &["get", "daemonset", "-n", "kube-system", "calico-node"],
    );
    assert_eq!(daemonset["status"]["numberReady"], 5);
}

#[test]
fn kubectl_exec_curl_reaches_a_pod_on_another_node() {
    let lab = lab("proof-exec", 5);
    create_web_pod(&lab, "client", "k8s-worker-03");
    let server_ip = create_web_pod(&lab, "server", "k8s-worker-01");
    assert_eq!(curl_status(&lab, "client", &server_ip), 200);
    let out = kubectl(
        &lab,
        &[
            "exec",
            "client",
            "--",
            "sh",
            "-c",
            "echo to-stderr >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "exit codes pass through exec");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"));
}

#[test]
fn reboot_over_ssh_drops_the_session_changes_boot_id_and_recovers() {
    let lab = lab("proof-reboot", 5);
    let node = "k8s-worker-03";
    let client_ip = create_web_pod(&lab, "client", node);
    let server_ip = create_web_pod(&lab, "server", "k8s-worker-01");
    assert!(!client_ip.is_empty());
    let before = kubectl_json(&lab, &["get", "node", node]);
    let boot_id = before["status"]["nodeInfo"]["bootID"]
        .as_str()
        .unwrap()
        .to_string();
    let on_node = ssh(&lab, node, "cat /proc/sys/kernel/random/boot_id");
    assert_eq!(
        String::from_utf8_lossy(&on_node.stdout).trim(),
        boot_id,
        "the node's own boot_id is the Node's bootID"
    );

    let started = Instant::now();
    let session = ssh(&lab, node, "systemctl reboot");
    assert_eq!(
        session.status.code(),
        Some(255),
        "the SSH session drops with the machine"
    );
    wait_for("the node to go NotReady", || {
        !ready(&kubectl_json(&lab, &["get", "node", node]))
    });
    wait_for("the node to be Ready on a new boot", || {
        let node = kubectl_json(&lab, &["get", "node", node]);
        ready(&node) && node["status"]["nodeInfo"]["bootID"].as_str() != Some(&boot_id)
    });
    wait_for("calico-node Ready again", || {
        ready(&calico_pod_on(&lab, node))
    });
    wait_for("the client pod Ready again", || {
        ready(&kubectl_json(&lab, &["get", "pod", "client"]))
    });
    wait_for("cross-node curl to work again", || {
        curl_status(&lab, "client", &server_ip) == 200
    });
    eprintln!(
        "reboot → calico Ready → cross-node curl: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let after = ssh(
        &lab,
        node,
        "cat /proc/sys/kernel/random/boot_id; stat -c '%a %u %g' /var/run/calico",
    );
    let after = String::from_utf8_lossy(&after.stdout).to_string();
    assert!(
        !after.contains(&boot_id) && after.contains("755 999 999"),
        "{after}"
    );
}

/// The unclean reboot knob does what it says: `systemctl reboot --force --force` on a
/// node is a power cut — its processes die without SIGTERM — while a plain `systemctl
/// reboot` gives every process SIGTERM and a grace period first, as systemd's last stage
/// does. Either way the node comes back on a new boot. (Neither reports a shutdown to the
/// API: the kubelet's graceful node shutdown needs logind, which a lab node has not.) A
/// pod that writes a mark on the node's disk when it is told to stop tells them apart.
#[rstest]
#[case::clean("systemctl reboot", true)]
#[case::unclean("systemctl reboot --force --force", false)]
fn an_unclean_reboot_gives_no_process_sigterm(#[case] command: &str, #[case] sigterm: bool) {
    let lab = lab(
        if sigterm {
            "proof-clean"
        } else {
            "proof-unclean"
        },
        3,
    );
    let node = "k8s-worker-02";
    let boot_id = |n: &Value| {
        n["status"]["nodeInfo"]["bootID"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // kube-system: Pod Security exempts it, and the mark needs a hostPath volume (the
    // lab's fresh node disk: nothing there yet). The kubelet may start the container
    // again after the reboot, so it never removes a mark.
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "told-to-stop", "namespace": "kube-system"},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "c", "image": "busybox:1.37.0",
                "command": ["sh", "-c", "trap 'echo SIGTERM > /mark/told; exit 0' TERM; touch /mark/started; while :; do sleep 0.2; done"],
                "volumeMounts": [{"name": "mark", "mountPath": "/mark"}],
            }],
            "volumes": [{"name": "mark", "hostPath": {"path": "/var/lib/proof-mark", "type": "DirectoryOrCreate"}}],
        },
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), pod.to_string()).unwrap();
    kubectl_ok(&lab, &["create", "-f", &file.path().to_string_lossy()]);
    let spec = lab.topology().node(node).unwrap();
    let mark = postflight_lab::realnode::RealPaths::new(lab.topology(), spec)
        .var_lib
        .join("proof-mark");
    wait_for("the pod to start on the node", || {
        mark.join("started").exists()
    });
    let before = boot_id(&kubectl_json(&lab, &["get", "node", node]));
    let session = ssh(&lab, node, command);
    assert_eq!(
        session.status.code(),
        Some(255),
        "the SSH session drops with the machine"
    );
    wait_for("the node to be Ready on a new boot", || {
        let seen = kubectl_json(&lab, &["get", "node", node]);
        ready(&seen) && boot_id(&seen) != before
    });
    assert_eq!(
        mark.join("told").exists(),
        sigterm,
        "a clean reboot gives SIGTERM, a power cut does not"
    );
}

/// The NIC knob does what it says: with the node's NIC down, its kubelet's heartbeats
/// stop (the node goes Unknown), SSH cannot reach it and pods elsewhere cannot reach its
/// pods; with the NIC back, all three return.
#[test]
fn a_nic_down_cuts_the_node_off_and_up_brings_it_back() {
    let lab = lab("proof-nic", 3);
    let node = "k8s-worker-02";
    let server_ip = create_web_pod(&lab, "server", node);
    create_web_pod(&lab, "client", "k8s-worker-01");
    assert_eq!(curl_status(&lab, "client", &server_ip), 200);
    let nic = |up: bool| {
        knob(&lab, "nic", node, if up { &["--up"] } else { &[] });
    };
    nic(false);
    let ready_status = || {
        kubectl_json(&lab, &["get", "node", node])["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .map(|c| c["status"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    wait_for("the node to go Unknown", || ready_status() == "Unknown");
    assert_ne!(
        ssh(&lab, node, "true").status.code(),
        Some(0),
        "SSH reaches a node with its NIC down"
    );
    assert_eq!(
        curl_status(&lab, "client", &server_ip),
        0,
        "a pod on it still answered"
    );
    nic(true);
    wait_for("the node to be Ready again", || ready_status() == "True");
    assert_eq!(ssh(&lab, node, "true").status.code(), Some(0));
    wait_for("cross-node curl to work again", || {
        curl_status(&lab, "client", &server_ip) == 200
    });
}

/// The packet-loss knob does what it says: with 30 % set on a node, the share of pod
/// packets crossing its uplink that its rules drop is about 30 % (read back from the
/// rules' own counters after real traffic), and cross-node traffic still gets through.
#[test]
fn lossy_pod_traffic_drops_about_the_share_it_says() {
    let lab = lab("proof-loss", 3);
    let node = "k8s-worker-02";
    let server_ip = create_web_pod(&lab, "server", node);
    create_web_pod(&lab, "client", "k8s-worker-01");
    knob(&lab, "lose-pod-traffic", node, &["--percent", "30"]);
    let script = format!(
        "ok=0; for i in $(seq 40); do curl -s -o /dev/null --max-time 3 http://{server_ip}:8080/hostname && ok=$((ok+1)); done; echo $ok"
    );
    let answered: u32 = String::from_utf8_lossy(
        &kubectl(&lab, &["exec", "client", "--", "sh", "-c", &script]).stdout,
    )
    .trim()
    .parse()
    .unwrap_or(0);
    let rules = knob(
        &lab,
        "node-exec",
        node,
        &["--", "nft", "list", "table", "inet", "postflight_lab_loss"],
    );
    let counted: Vec<f64> = rules
        .split("counter packets ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(counted.len(), 4, "{rules}");
    let (all, dropped) = (counted[0] + counted[2], counted[1] + counted[3]);
    let share = dropped / all;
    assert!(all >= 200.0, "too little traffic to judge: {rules}");
    assert!(
        (0.15..=0.45).contains(&share),
        "{share:.2} of {all} packets dropped: {rules}"
    );
    assert!(
        answered >= 10,
        "TCP still gets requests through: {answered}/40"
    );
    knob(&lab, "lose-pod-traffic", node, &["--stop"]);
    wait_for("cross-node curl to work again", || {
        curl_status(&lab, "client", &server_ip) == 200
    });
}

#[test]
fn the_incident_reproduces_and_the_fix_repairs_it() {
    let lab = lab("proof-incident", 5);
    let node = "k8s-worker-03";
    create_web_pod(&lab, "client", node);
    let server_ip = create_web_pod(&lab, "server", "k8s-worker-01");
    create_web_pod(&lab, "neighbour", node);
    lab.os_update(node, true).unwrap();
    let untouched = ssh(&lab, node, "stat -c '%a %u %g' /var/run/calico");
    assert_eq!(
        String::from_utf8_lossy(&untouched.stdout).trim(),
        "755 999 999",
        "nothing changes before the reboot"
    );
    let boot_id = kubectl_json(&lab, &["get", "node", node])["status"]["nodeInfo"]["bootID"]
        .as_str()
        .unwrap()
        .to_string();
    lab.reboot(node).unwrap();
    wait_for("the node back on a new boot", || {
        let n = kubectl_json(&lab, &["get", "node", node]);
        ready(&n) && n["status"]["nodeInfo"]["bootID"].as_str() != Some(&boot_id)
    });
    wait_for("calico-node in CrashLoopBackOff with restarts", || {
        let pod = calico_pod_on(&lab, node);
        let status = &pod["status"]["containerStatuses"][0];
        status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            && status["restartCount"].as_u64().unwrap_or(0) >= 2
    });
    let calico = calico_pod_on(&lab, node);
    let calico_name = calico["metadata"]["name"].as_str().unwrap().to_string();
    let listing = kubectl_ok(&lab, &["get", "pods", "-n", "kube-system", "-o", "wide"]);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(&calico_name) && l.contains("CrashLoopBackOff")),
        "{listing}"
    );
    let previous = kubectl_ok(
        &lab,
        &["logs", "-n", "kube-system", &calico_name, "--previous"],
    );
    assert!(
        previous.contains(
            "bird: Cannot create control socket /var/run/calico/bird.ctl: Permission denied"
        ),
        "{previous}"
    );
    let stat = ssh(&lab, node, "stat -c '%a %u %g' /var/run/calico");
    assert_eq!(String::from_utf8_lossy(&stat.stdout).trim(), "700 0 0");
    wait_for("the client pod Ready after the reboot", || {
        ready(&kubectl_json(&lab, &["get", "pod", "client"]))
    });
    // The reboot gave every pod on the node a new sandbox, and so a new IP.
    let mut neighbour_ip = String::new();
    wait_for("the neighbour pod Ready after the reboot", || {
        let pod = kubectl_json(&lab, &["get", "pod", "neighbour"]);
        neighbour_ip = pod["status"]["podIP"].as_str().unwrap_or_default().into();
        ready(&pod) && pod["status"]["containerStatuses"][0]["restartCount"] == 1
    });
    wait_for("cross-node traffic from the node to fail", || {
        curl_status(&lab, "client", &server_ip) == 0
    });
    assert_eq!(
        curl_status(&lab, "client", &neighbour_ip),
        200,
        "same-node traffic still works"
    );
    for other in [
        "k8s-control-01",
        "k8s-worker-01",
        "k8s-worker-02",
        "k8s-worker-04",
    ] {
        // Still running, never restarted; not Ready, as real calico-node is not while
        // one of its BGP peers is down (Calico's readiness wants every peer Established).
        let pod = calico_pod_on(&lab, other);
        let status = &pod["status"]["containerStatuses"][0];
        assert!(
            status["state"]["running"].is_object() && status["restartCount"] == 0,
            "calico-node on {other} keeps running: {status}"
        );
    }

    // The fix from the incident report.
    let fix = ssh(
        &lab,
        node,
        "echo 'd /run/calico 0755 999 999 -' > /etc/tmpfiles.d/calico.conf && systemd-tmpfiles --create /etc/tmpfiles.d/calico.conf && stat -c '%a %u %g' /var/run/calico",
    );
    assert_eq!(
        String::from_utf8_lossy(&fix.stdout).trim(),
        "755 999 999",
        "{}",
        String::from_utf8_lossy(&fix.stderr)
    );
    kubectl_ok(&lab, &["delete", "pod", "-n", "kube-system", &calico_name]);
    wait_for("a new calico-node Ready on the node", || {
        let pod = calico_pod_on(&lab, node);
        pod["metadata"]["name"].as_str() != Some(&calico_name) && ready(&pod)
    });
    wait_for("cross-node curl to work after the fix", || {
        curl_status(&lab, "client", &server_ip) == 200
    });
}

/// The real API server's authentication: a request without credentials is anonymous and
/// RBAC forbids it (403); a token nobody issued is refused outright (401).
#[rstest]
#[case::no_token(None, "403")]
#[case::wrong_token(Some("not-the-token"), "401")]
fn the_api_server_refuses_requests_without_a_valid_identity(
    #[case] token: Option<&str>,
    #[case] expected: &str,
) {
    let lab = lab(
        if token.is_some() {
            "proof-auth-wrong"
        } else {
            "proof-auth-none"
        },
        1,
    );
    let port = lab.ready_report().api_port;
    let ca = lab.paths().state_dir.join("ca.crt");
    let mut curl = Command::new("curl");
    curl.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca)
        .arg(format!(
            "https://{}:{port}/api/v1/nodes",
            lab.topology().host_ip()
        ));
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let code = String::from_utf8(curl.output().unwrap().stdout).unwrap();
    assert_eq!(code, expected);
}

#[test]
fn two_labs_run_side_by_side_and_down_leaves_nothing_behind() {
    let first = lab("proof-side-a", 2);
    let second = lab("proof-side-b", 2);
    assert_ne!(first.topology().block, second.topology().block);
    for lab in [&first, &second] {
        assert_eq!(
            kubectl_json(lab, &["get", "nodes"])["items"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
    let prefixes: Vec<String> = [&first, &second]
        .iter()
        .map(|l| l.topology().prefix())
        .collect();
    let state_dirs = [
        first.paths().state_dir.clone(),
        second.paths().state_dir.clone(),
    ];
    first.down();
    second.down();
    let netns = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let links = String::from_utf8(
        Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    for prefix in &prefixes {
        assert!(
            !netns.lines().any(|l| l.starts_with(&format!("{prefix}-"))),
            "namespaces left: {netns}"
        );
        assert!(
            !links.contains(&format!("{prefix}-host")),
            "veth left: {links}"
        );
        // A real node's cgroup, in every v1 hierarchy.
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let left: Vec<String> = std::fs::read_dir(hierarchy.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("postflight-lab-{prefix}-")))
                .collect();
            assert!(left.is_empty(), "cgroups left in {hierarchy:?}: {left:?}");
        }
    }
    for dir in &state_dirs {
        assert!(
            !mounts.contains(&dir.to_string_lossy().to_string()),
            "mounts left under {}",
            dir.display()
        );
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert_no_process_matching(&dir.to_string_lossy());
    }
}

/// A part a real node needs that is not there fails `up` at once, naming the part and the
/// fix, and leaves nothing of the lab behind.
#[test]
fn up_without_runc_fails_at_once_naming_it_and_leaves_nothing() {
    let name = "proof-no-runc";
    let out = Command::new(env!("CARGO_BIN_EXE_postflight-lab"))
        .args(["up", "--name", name, "--nodes", "2"])
        .env("POSTFLIGHT_LAB_RUNC", "/nonexistent/runc")
        .output()
        .expect("postflight-lab runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("a real lab node needs runc")
            && stderr.contains("POSTFLIGHT_LAB_RUNC=/nonexistent/runc is not an executable")
            && stderr.contains("apt-get install -y runc"),
        "{stderr}"
    );
    let status = Command::new(env!("CARGO_BIN_EXE_postflight-lab"))
        .args(["status", "--name", name])
        .output()
        .unwrap();
    assert!(!status.status.success(), "no lab {name} is registered");
    let state_dir = std::path::Path::new("/tmp/postflight-lab").join(name);
    assert!(!state_dir.exists(), "{} left behind", state_dir.display());
    assert_no_process_matching(&format!("--name {name} "));
}

/// A kubelet that dies is restarted by the node's init a second later, as systemd's
/// `Restart=always` restarts it on a machine; its containers live on under containerd, so
/// its pods keep running without a restart and the node stays (or is again) Ready.
#[test]
fn a_kubelet_that_dies_is_restarted_and_its_pods_keep_running() {
    let lab = lab("proof-kubelet-dies", 2);
    let node = "k8s-worker-01";
    create_web_pod(&lab, "web", node);
    let kubelet_pid = || {
        let out = ssh(&lab, node, "pgrep -f ' kubelet --config'");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let before = kubelet_pid();
    assert!(!before.is_empty(), "the node runs a kubelet");
    let killed = ssh(&lab, node, &format!("kill -9 {before}"));
    assert!(killed.status.success(), "{killed:?}");
    wait_for("a new kubelet on the node", || {
        let now = kubelet_pid();
        !now.is_empty() && now != before
    });
    wait_for("the node Ready with its kubelet back", || {
        ready(&kubectl_json(&lab, &["get", "node", node]))
    });
    let pod = kubectl_json(&lab, &["get", "pod", "web"]);
    assert!(ready(&pod), "{pod}");
    assert_eq!(
        pod["status"]["containerStatuses"][0]["restartCount"], 0,
        "the container outlived its kubelet: {pod}"
    );
}
