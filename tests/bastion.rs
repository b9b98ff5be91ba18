//! End to end: nodes reachable only through a bastion (`ssh.jump`). The lab makes one
//! node the bastion (`postflight-lab bastion`): every other node drops SSH from anywhere
//! else. Each test brings up its own lab and takes it down when it ends, also when it
//! fails (the lab handle's Drop); what a test writes lives in the lab's state directory
//! or a temporary directory, and goes with them. They need root, like the lab itself.

mod common;

use common::*;
use postflight_lab::Lab;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BASTION: &str = "k8s-worker-01";
const BEHIND: &str = "k8s-worker-02";

/// Makes `BASTION` the only way in over SSH, with the lab's CLI; returns the inventory
/// that jumps through it.
fn behind_bastion(lab: &Lab) -> PathBuf {
    lab_cli(lab, &["bastion", "--node", BASTION]);
    let inventory = lab.paths().bastion_inventory();
    let text = std::fs::read_to_string(&inventory).unwrap();
    let bastion_ip = lab.topology().node(BASTION).unwrap().ip;
    assert!(
        text.contains(&format!("jump: root@{bastion_ip}:22")),
        "{text}"
    );
    inventory
}

fn ssh_port(lab: &Lab, node: &str) -> SocketAddr {
    SocketAddr::new(lab.topology().node(node).unwrap().ip.into(), 22)
}

/// Whether a TCP connection to the node's SSH port from here is accepted within 2s.
fn ssh_port_answers(lab: &Lab, node: &str) -> bool {
    TcpStream::connect_timeout(&ssh_port(lab, node), Duration::from_secs(2)).is_ok()
}

/// A copy of `inventory` with its text edited, next to it (relative paths still hold).
fn edited(inventory: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let copy = inventory.with_file_name(name);
    std::fs::write(&copy, edit(std::fs::read_to_string(inventory).unwrap())).unwrap();
    copy
}

#[test]
fn nodes_behind_a_bastion_are_verified_rebooted_and_swept_through_it() {
    let lab = lab("pf-bastion", 3);
    let inventory = behind_bastion(&lab);
    let reports = tempfile::tempdir().unwrap();

    // Direct SSH to a node behind the bastion is dropped; the bastion still answers, so
    // it is the rule that stops it, not a lab that is down.
    assert!(ssh_port_answers(&lab, BASTION));
    assert!(
        !ssh_port_answers(&lab, BEHIND),
        "{BEHIND} took SSH directly"
    );
    let direct = edited(&lab.paths().inventory(), "inventory-direct.yaml", |text| {
        text.replace("timeouts:\n", "timeouts:\n  ssh: 3s\n")
    });
    let started = Instant::now();
    let run = verify(&direct, BEHIND, false, reports.path());
    assert_eq!(run.code(), 3, "could not run is exit 3: {}", run.describe());
    let behind_ip = lab.topology().node(BEHIND).unwrap().ip;
    assert!(
        run.stdout()
            .contains(&format!("cannot connect to {behind_ip}:22")),
        "{}",
        run.describe()
    );
    eprintln!(
        "direct verify of {BEHIND} gave up after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Through the bastion: the checks' SSH and the reboot command itself.
    let before = boot_id(&lab, BEHIND);
    let started = Instant::now();
    let run = verify(&inventory, BEHIND, true, reports.path());
    assert_eq!(run.code(), 0, "{}", run.describe());
    eprintln!(
        "verify --reboot through the bastion took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_ne!(boot_id(&lab, BEHIND), before, "the node really rebooted");
    assert_eq!(run.verdict("run_dir_permissions"), "passed");
    assert_eq!(run.verdict("tmpfiles_config_present"), "passed");
    assert!(
        !ssh_port_answers(&lab, BEHIND),
        "the rule outlives the node's reboot"
    );

    // Every node at once: the control plane through the bastion, the bastion directly.
    let started = Instant::now();
    let run = drift(&inventory, reports.path());
    assert_eq!(run.code(), 0, "{}", run.describe());
    let swept: Vec<&str> = run.json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|node| node["node"].as_str())
        .collect();
    assert_eq!(swept.len(), 3, "{}", run.describe());
    eprintln!(
        "drift of 3 nodes (2 through the bastion) took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_nothing_left(&lab, BEHIND);
}

/// A known_hosts in which the bastion's entry is changed to another key, or removed.
fn tampered_known_hosts(lab: &Lab, bastion_key: Option<&str>) -> String {
    let ip = lab.topology().node(BASTION).unwrap().ip.to_string();
    std::fs::read_to_string(lab.paths().known_hosts())
        .unwrap()
        .lines()
        .filter_map(|line| match line.split_whitespace().next() {
            Some(host) if host == ip => bastion_key.map(|key| format!("{host} {key}\n")),
            _ => Some(format!("{line}\n")),
        })
        .collect()
}

#[test]
fn a_bastion_whose_host_key_is_wrong_or_unknown_is_refused_and_nothing_runs() {
    let lab = lab("pf-bastion-key", 3);
    let inventory = behind_bastion(&lab);
    let state = lab.paths().state_dir.clone();
    let impostor = impostor_key(&state);
    let bastion = format!("root@{}:22", lab.topology().node(BASTION).unwrap().ip);
    let before = boot_id(&lab, BEHIND);
    let reports = tempfile::tempdir().unwrap();

    for (file, key, said) in [
        (
            "changed_known_hosts",
            Some(impostor.clone()),
            format!("HOST KEY MISMATCH for the bastion {bastion}"),
        ),
        (
            "unknown_known_hosts",
            None,
            format!("host key of the bastion {bastion} is not in"),
        ),
    ] {
        std::fs::write(state.join(file), tampered_known_hosts(&lab, key.as_deref())).unwrap();
        let tampered = edited(&inventory, &format!("{file}.yaml"), |text| {
            text.replace(
                "known_hosts: ssh/known_hosts",
                &format!("known_hosts: {file}"),
            )
        });
        let run = verify(&tampered, BEHIND, true, reports.path());
        assert_eq!(run.code(), 3, "could not run is exit 3: {}", run.describe());
        assert!(run.stdout().contains(&said), "{said}: {}", run.describe());
        let ssh = vec!["ssh".to_string()];
        assert_eq!(run.error_kinds(), (ssh.clone(), ssh), "{}", run.junit);
    }
    // Nothing reached the node: it never rebooted.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(boot_id(&lab, BEHIND), before);
    assert_no_probe_left(&lab);
}
