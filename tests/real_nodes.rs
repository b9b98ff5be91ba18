//! End to end on real nodes: the lab's nodes run Kubernetes' own kubelet, containerd 2
//! with Debian's runc, the standard CNI plugins and BIRD 1.6 in the calico-node
//! stand-in, so every verdict here rests on what a real kubelet reports. Each test brings
//! up its own lab and takes it down when it ends, also when it fails.

mod common;

use common::*;

fn pod_ip(lab: &postflight_lab::Lab, namespace: &str, name: &str) -> String {
    kubectl(
        lab,
        &[
            "-n",
            namespace,
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.status.podIP}",
        ],
    )
}

#[test]
fn a_real_node_reboots_on_a_new_boot_and_passes_then_the_incident_fails_with_birds_own_error() {
    let lab = lab("pf-real", 3);
    let node = "k8s-worker-02";
    let runtime = node_field(&lab, node, "{.status.nodeInfo.containerRuntimeVersion}");
    assert_eq!(runtime, "containerd://2.4.2", "a real container runtime");
    let kubelet = node_field(&lab, node, "{.status.nodeInfo.kubeletVersion}");
    assert_eq!(kubelet, "v1.37.2");

    let reports = tempfile::tempdir().unwrap();
    let before = boot_id(&lab, node);
    let run = verify(&lab.paths().inventory(), node, true, reports.path());
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert_ne!(boot_id(&lab, node), before, "the node really rebooted");
    assert_no_probe_left(&lab);

    // calico-node on the node: the real kubelet restarted it on the new boot, with the
    // container the power cut ended as its last state.
    let pod = kubectl(
        &lab,
        &[
            "-n",
            "kube-system",
            "get",
            "pods",
            "-l",
            "k8s-app=calico-node",
            "--field-selector",
            &format!("spec.nodeName={node}"),
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    );
    let restarts = kubectl(
        &lab,
        &[
            "-n",
            "kube-system",
            "get",
            "pod",
            &pod,
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ],
    );
    assert!(
        restarts.trim().parse::<u32>().unwrap() >= 1,
        "restarts: {restarts}"
    );
    let last = kubectl(
        &lab,
        &[
            "-n",
            "kube-system",
            "get",
            "pod",
            &pod,
            "-o",
            "jsonpath={.status.containerStatuses[0].lastState.terminated.reason}",
        ],
    );
    assert_eq!(last, "Unknown", "a container that died with its node");

    // A pod on the node gets a new sandbox and a new address after a reboot, as on a
    // real kubelet (IPAM on the node's disk still holds the old one).
    kubectl(
        &lab,
        &[
            "run",
            "ip-witness",
            "--image=registry.k8s.io/e2e-test-images/agnhost:2.53",
            "--image-pull-policy=Never",
            "--restart=Always",
            &format!("--overrides={{\"spec\":{{\"nodeName\":\"{node}\"}}}}"),
            "--",
            "pause",
        ],
    );
    kubectl(
        &lab,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/ip-witness",
            "--timeout=60s",
        ],
    );
    let first_ip = pod_ip(&lab, "default", "ip-witness");
    let booted = boot_id(&lab, node);
    lab_cli(&lab, &["reboot", "--node", node]);
    // A real node can be back before the node-lifecycle controller notices it went: its
    // boot ID is what says it rebooted.
    let started = std::time::Instant::now();
    while boot_id(&lab, node) == booted {
        assert!(
            started.elapsed().as_secs() < 90,
            "{node} never came back on a new boot"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    kubectl(
        &lab,
        &[
            "wait",
            "--for=condition=Ready",
            &format!("node/{node}"),
            "--timeout=60s",
        ],
    );
    // Its status says the new boot's sandbox once the kubelet has restarted it.
    let started = std::time::Instant::now();
    while kubectl(
        &lab,
        &[
            "get",
            "pod",
            "ip-witness",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}/{.status.containerStatuses[0].ready}",
        ],
    ) != "1/true"
    {
        assert!(started.elapsed().as_secs() < 90, "ip-witness never restarted");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let second_ip = pod_ip(&lab, "default", "ip-witness");
    assert!(!first_ip.is_empty() && !second_ip.is_empty());
    assert_ne!(first_ip, second_ip, "a new sandbox, a new pod IP");
    kubectl(&lab, &["delete", "pod", "ip-witness", "--grace-period=1"]);

    // The cluster whole again (calico-node back on the node) before the next gate.
    kubectl(
        &lab,
        &[
            "-n",
            "kube-system",
            "rollout",
            "status",
            "ds/calico-node",
            "--timeout=90s",
        ],
    );

    // The incident: BIRD cannot make its control socket, and says so itself.
    lab_cli(&lab, &["os-update", "--node", node, "--clobber-tmpfiles"]);
    let run = verify(&lab.paths().inventory(), node, true, reports.path());
    assert_eq!(run.code(), 1, "{}", run.describe());
    for check in [
        "calico_node_ready",
        "run_dir_permissions",
        "tmpfiles_config_present",
    ] {
        assert_eq!(run.verdict(check), "failed", "{check}: {}", run.describe());
    }
    let evidence = run.result("calico_node_ready")["evidence"].to_string();
    assert!(
        evidence.contains(
            "bird: Cannot create control socket /var/run/calico/bird.ctl: Permission denied"
        ),
        "{evidence}"
    );
    assert_no_probe_left(&lab);
}
