//! `postflight inventory from-kind`, against a stand-in for the `kind` command that prints
//! what `kind get nodes` prints (this machine has no Docker engine to run real kind):
//! the inventory it writes loads and needs no address, no SSH and no known_hosts.

mod common;

use common::POSTFLIGHT;
use std::path::Path;
use std::process::Command;

/// A `kind` on PATH that lists these node containers for the cluster `calico`, as kind
/// does: one name a line, the HA load balancer among them.
fn stand_in_kind(dir: &Path) {
    let script = dir.join("kind");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$*\" = 'get nodes --name calico' ] || { echo \"ERROR: unknown cluster\" >&2; exit 1; }\n\
         printf 'calico-control-plane\\ncalico-external-load-balancer\\ncalico-worker\\ncalico-worker2\\n'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn kubeconfig(dir: &Path, context: &str) -> std::path::PathBuf {
    let file = dir.join("kubeconfig");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {context}\n  cluster:\n    server: https://127.0.0.1:6443\n\
             contexts:\n- name: {context}\n  context:\n    cluster: {context}\n    user: {context}\n\
             users:\n- name: {context}\n  user: {{}}\ncurrent-context: {context}\n"
        ),
    )
    .unwrap();
    file
}

fn from_kind(dir: &Path, kubeconfig: &Path, path: &str) -> std::process::Output {
    Command::new(POSTFLIGHT)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["inventory", "from-kind", "--name", "calico", "--output"])
        .arg(dir.join("kind.yaml"))
        .env("PATH", path)
        .output()
        .unwrap()
}

#[test]
fn from_kind_writes_an_inventory_of_node_shells_that_loads_as_written() {
    let dir = tempfile::tempdir().unwrap();
    stand_in_kind(dir.path());
    let config = kubeconfig(dir.path(), "kind-calico");
    let path = format!("{}:/usr/bin:/bin", dir.path().display());
    let output = from_kind(dir.path(), &config, &path);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let text = std::fs::read_to_string(dir.path().join("kind.yaml")).unwrap();
    assert!(!text.contains("load-balancer"), "not a node: {text}");
    assert!(!text.contains("host:") && !text.contains("ssh:"), "{text}");
    assert!(text.contains("command: docker restart {node}"), "{text}");
    let check = Command::new(POSTFLIGHT)
        .arg("check-inventory")
        .arg(dir.path().join("kind.yaml"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("valid, 3 nodes"),
        "{check:?}"
    );
}

#[test]
fn from_kind_says_what_is_missing_a_kind_binary_or_the_clusters_context() {
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), "kind-other");
    let no_kind = from_kind(dir.path(), &config, "/nonexistent");
    assert_eq!(no_kind.status.code(), Some(2), "{no_kind:?}");
    assert!(
        String::from_utf8_lossy(&no_kind.stderr).contains("go install sigs.k8s.io/kind"),
        "{no_kind:?}"
    );
    stand_in_kind(dir.path());
    let path = format!("{}:/usr/bin:/bin", dir.path().display());
    let no_context = from_kind(dir.path(), &config, &path);
    assert_eq!(no_context.status.code(), Some(2), "{no_context:?}");
    assert!(
        String::from_utf8_lossy(&no_context.stderr)
            .contains("kind export kubeconfig --name calico"),
        "{no_context:?}"
    );
    assert!(!dir.path().join("kind.yaml").exists());
}
