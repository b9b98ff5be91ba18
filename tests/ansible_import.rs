//! End to end: `postflight inventory from-ansible` with the real `ansible-inventory`
//! (ansible-core, installed by `ci/linters.sh`), on the fixture inventories in
//! `tests/fixtures/ansible/` — INI, YAML, and variables in group_vars/ and host_vars/ —
//! and on one written for a lab, whose import then verifies a node of it. A missing
//! ansible-inventory fails these tests: an import that did not run must never read as a
//! pass. The lab test needs root, like the lab itself.

mod common;

use common::*;
use postflight::inventory::{Become, Inventory};
use serde_json::json;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The directory that holds `ansible-inventory`: PATH's, or else where ci/linters.sh
/// links it.
fn ansible_bin_dir() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let installed = std::env::var_os("POSTFLIGHT_LINTERS_BIN").map_or_else(
        || PathBuf::from("/opt/postflight-linters/bin"),
        PathBuf::from,
    );
    std::env::split_paths(&path)
        .chain([installed.clone()])
        .find(|dir| dir.join("ansible-inventory").is_file())
        .unwrap_or_else(|| {
            panic!(
                "ansible-inventory is neither on PATH nor in {}: install it with \
                 `bash ci/linters.sh` (or point POSTFLIGHT_LINTERS_BIN at the directory \
                 it installed it in)",
                installed.display()
            )
        })
}

/// PATH with ansible-inventory's directory first.
fn path_with_ansible() -> OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(
        [ansible_bin_dir()]
            .into_iter()
            .chain(std::env::split_paths(&path)),
    )
    .expect("PATH joins")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ansible")
        .join(name)
}

fn postflight(args: &[&std::ffi::OsStr], path: &OsString, directory: &Path) -> Output {
    Command::new(POSTFLIGHT)
        .args(args)
        .env("PATH", path)
        .env("NO_COLOR", "1")
        .env_remove("POSTFLIGHT_INVENTORY")
        .current_dir(directory)
        .output()
        .expect("postflight runs")
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// An import written into `directory`, checked by `postflight check-inventory`, and
/// read back; with what the import said on stderr.
struct Imported {
    file: PathBuf,
    inventory: Inventory,
    stderr: String,
}

fn import(source: &Path, flags: &[&str], directory: &Path) -> Imported {
    let file = directory.join("postflight.yaml");
    let known_hosts = directory.join("known_hosts");
    std::fs::write(&known_hosts, "").unwrap();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "inventory".as_ref(),
        "from-ansible".as_ref(),
        "-i".as_ref(),
        source.as_os_str(),
        "--known-hosts".as_ref(),
        "known_hosts".as_ref(),
        "--output".as_ref(),
        file.as_os_str(),
    ];
    args.extend(flags.iter().map(std::ffi::OsStr::new));
    let output = postflight(&args, &path_with_ansible(), directory);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(output.stdout.is_empty(), "{}", describe(&output));
    let check = postflight(
        &["check-inventory".as_ref(), file.as_os_str()],
        &path_with_ansible(),
        directory,
    );
    assert_eq!(check.status.code(), Some(0), "{}", describe(&check));
    let inventory = Inventory::load(&file).unwrap();
    assert_eq!(
        inventory.ssh.known_hosts, known_hosts,
        "the path given is resolved where it was given"
    );
    Imported {
        file,
        inventory,
        stderr: String::from_utf8_lossy(&output.stderr).into(),
    }
}

/// (name, host, port, user, identity file, become, protected) of each node, in order.
type NodeFields = (String, String, u16, String, Option<PathBuf>, bool, bool);

fn node_fields(inventory: &Inventory) -> Vec<NodeFields> {
    inventory
        .nodes
        .iter()
        .map(|node| {
            let target = inventory
                .ssh_target(node)
                .expect("an imported node is reached over SSH");
            (
                target.node,
                target.host,
                target.port,
                target.user,
                target.identity_file,
                target.become_method == Some(Become::Sudo),
                node.protected,
            )
        })
        .collect()
}

fn fields(
    name: &str,
    host: &str,
    port: u16,
    user: &str,
    identity_file: Option<&str>,
    become_sudo: bool,
    protected: bool,
) -> NodeFields {
    (
        name.into(),
        host.into(),
        port,
        user.into(),
        identity_file.map(PathBuf::from),
        become_sudo,
        protected,
    )
}

#[test]
fn an_ini_inventory_imports_the_groups_hosts_and_names_what_it_left_out() {
    let directory = tempfile::tempdir().unwrap();
    let imported = import(
        &fixture("ini/hosts.ini"),
        &["--group", "k8s", "--protected-group", "control_plane"],
        directory.path(),
    );
    let key = Some("/etc/postflight/ssh/id_ed25519");
    assert_eq!(
        node_fields(&imported.inventory),
        [
            fields("k8s-control-01", "10.20.0.10", 22, "ops", key, true, true),
            fields("k8s-worker-01", "10.20.0.11", 22, "ops", key, true, false),
            fields("k8s-worker-02", "10.20.0.12", 2222, "ops", key, true, false),
        ]
    );
    let text = std::fs::read_to_string(&imported.file).unwrap();
    assert!(!text.contains("bastion"), "outside the group:\n{text}");
    assert!(!text.contains("python"), "{text}");
    assert!(
        imported.stderr.contains(
            "ansible_python_interpreter (on k8s-control-01, k8s-worker-01, k8s-worker-02)"
        ),
        "{}",
        imported.stderr
    );
    assert!(
        imported
            .stderr
            .contains("rack (on k8s-worker-01, k8s-worker-02)"),
        "{}",
        imported.stderr
    );
}

#[test]
fn a_yaml_inventory_names_its_nodes_with_the_node_name_variable() {
    let directory = tempfile::tempdir().unwrap();
    let imported = import(
        &fixture("yaml/hosts.yml"),
        &["--group", "cluster", "--protected-group", "masters"],
        directory.path(),
    );
    assert_eq!(
        node_fields(&imported.inventory),
        [
            fields(
                "k8s-control-01",
                "192.0.2.10",
                22,
                "admin",
                None,
                false,
                true
            ),
            fields(
                "k8s-worker-01",
                "192.0.2.11",
                22,
                "admin",
                None,
                true,
                false
            ),
            fields(
                "k8s-worker-02",
                "192.0.2.12",
                2200,
                "maintenance",
                None,
                false,
                false
            ),
        ]
    );
    assert!(
        !imported.stderr.contains("k8s_node_name"),
        "{}",
        imported.stderr
    );
}

#[test]
fn variables_from_group_vars_and_host_vars_are_imported() {
    let directory = tempfile::tempdir().unwrap();
    let imported = import(
        &fixture("vars-directories"),
        &["--group", "k8s", "--protected-group", "k8s_control"],
        directory.path(),
    );
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
    let key = home.join(".ssh/k8s_ed25519");
    let key = key.to_str();
    assert_eq!(
        node_fields(&imported.inventory),
        [
            fields(
                "k8s-control-01",
                "10.30.0.10",
                22,
                "deploy",
                key,
                true,
                true
            ),
            fields(
                "k8s-worker-01",
                "10.30.0.11",
                22,
                "deploy",
                key,
                true,
                false
            ),
            fields(
                "k8s-worker-02",
                "10.30.0.12",
                22,
                "deploy",
                key,
                true,
                false
            ),
            fields(
                "k8s-worker-03",
                "10.30.0.13",
                2222,
                "maintenance",
                key,
                true,
                false
            ),
        ]
    );
    // What all four share is said once, under ssh:.
    assert_eq!(imported.inventory.ssh.become_method, Some(Become::Sudo));
    assert!(imported.stderr.contains("ntp_servers (on k8s-control-01"));
}

#[test]
fn an_unknown_group_is_refused_naming_the_groups_there_are() {
    let directory = tempfile::tempdir().unwrap();
    let output = postflight(
        &[
            "inventory".as_ref(),
            "from-ansible".as_ref(),
            "-i".as_ref(),
            fixture("ini/hosts.ini").as_os_str(),
            "--known-hosts".as_ref(),
            "known_hosts".as_ref(),
            "--group".as_ref(),
            "wokers".as_ref(),
        ],
        &path_with_ansible(),
        directory.path(),
    );
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "there is no group \"wokers\"; the groups are: all, control_plane, k8s, ungrouped, workers"
        ),
        "{}",
        describe(&output)
    );
}

#[test]
fn without_ansible_inventory_on_path_the_error_says_what_to_install() {
    let directory = tempfile::tempdir().unwrap();
    let output = postflight(
        &[
            "inventory".as_ref(),
            "from-ansible".as_ref(),
            "-i".as_ref(),
            fixture("ini/hosts.ini").as_os_str(),
            "--known-hosts".as_ref(),
            "known_hosts".as_ref(),
        ],
        &directory.path().as_os_str().to_owned(),
        directory.path(),
    );
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("pip install ansible-core"),
        "{}",
        describe(&output)
    );
}

/// The Ansible inventory a site would keep for the lab: the hosts by group, their
/// connection variables in group_vars/, and one variable postflight does not use.
fn write_ansible_inventory_for(lab_inventory: &Inventory, directory: &Path) -> PathBuf {
    let source = directory.join("ansible");
    std::fs::create_dir_all(source.join("group_vars")).unwrap();
    let hosts = |protected: bool| {
        let hosts: serde_json::Map<String, serde_json::Value> = lab_inventory
            .nodes
            .iter()
            .filter(|node| node.protected == protected)
            .map(|node| {
                (
                    node.name.value.clone(),
                    json!({"ansible_host": node.host.as_ref().expect("the lab's hosts").value}),
                )
            })
            .collect();
        json!({ "hosts": hosts })
    };
    let hosts = json!({"all": {"children": {"k8s": {"children": {
        "control_plane": hosts(true),
        "workers": hosts(false),
    }}}}});
    let ssh = &lab_inventory.ssh;
    let group_vars = json!({
        "ansible_user": ssh.user,
        "ansible_port": ssh.port,
        "ansible_ssh_private_key_file": ssh.identity_file.as_ref().expect("the lab has a key"),
        "ansible_python_interpreter": "/usr/bin/python3",
    });
    std::fs::write(
        source.join("hosts.yml"),
        serde_saphyr::to_string(&hosts).unwrap(),
    )
    .unwrap();
    std::fs::write(
        source.join("group_vars/k8s.yml"),
        serde_saphyr::to_string(&group_vars).unwrap(),
    )
    .unwrap();
    source
}

#[test]
fn an_imported_ansible_inventory_verifies_a_lab_node() {
    let lab = lab("pf-ansible", 3);
    let lab_inventory = Inventory::load(&lab.paths().inventory()).unwrap();
    let directory = tempfile::tempdir().unwrap();
    let source = write_ansible_inventory_for(&lab_inventory, directory.path());
    let file = directory.path().join("postflight.yaml");
    let kubeconfig = lab_inventory
        .cluster
        .kubeconfig
        .clone()
        .expect("kubeconfig");
    let context = lab_inventory.cluster.context.clone().expect("context");
    let output = postflight(
        &[
            "--kubeconfig".as_ref(),
            kubeconfig.as_os_str(),
            "--context".as_ref(),
            context.as_ref(),
            "inventory".as_ref(),
            "from-ansible".as_ref(),
            "--inventory-source".as_ref(),
            source.as_os_str(),
            "--group".as_ref(),
            "k8s".as_ref(),
            "--protected-group".as_ref(),
            "control_plane".as_ref(),
            "--known-hosts".as_ref(),
            lab_inventory.ssh.known_hosts.as_os_str(),
            "--output".as_ref(),
            file.as_os_str(),
        ],
        &path_with_ansible(),
        directory.path(),
    );
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let imported = Inventory::load(&file).unwrap();
    let by_name = |inventory: &Inventory| {
        let mut nodes: Vec<_> = inventory
            .nodes
            .iter()
            .map(|node| {
                let target = inventory.ssh_target(node).expect("reached over SSH");
                (target, node.protected)
            })
            .collect();
        nodes.sort_by(|a, b| a.0.node.cmp(&b.0.node));
        nodes
    };
    assert_eq!(
        by_name(&imported),
        by_name(&lab_inventory),
        "every node reached as the lab's own inventory reaches it"
    );
    assert_eq!(imported.cluster.kubeconfig, Some(kubeconfig));
    assert_eq!(imported.cluster.context, Some(context));

    let worker = lab_inventory
        .nodes
        .iter()
        .find(|node| !node.protected)
        .map(|node| node.name.value.clone())
        .expect("the lab has a worker");
    let reports = tempfile::tempdir().unwrap();
    let run = verify(&file, &worker, false, reports.path());
    assert_eq!(run.code(), 0, "{}", run.describe());
    assert_eq!(
        run.verdict("calico_node_ready"),
        "passed",
        "{}",
        run.describe()
    );
}
