//! postflight as a pod: the nightly CronJob users apply (`ci/pipelines/kubernetes-cronjob.yml`),
//! run on a real-control-plane lab with nothing but in-cluster credentials — its
//! ServiceAccount's token, which the RBAC of `postflight rbac` binds — and the
//! inventory and SSH key it mounts. Needs root, like the lab.

mod common;

use common::*;
use std::path::Path;

fn manifest() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/pipelines/kubernetes-cronjob.yml")
}

#[test]
fn the_nightly_cronjob_runs_postflight_in_the_cluster_and_fails_on_a_drifted_node() {
    let lab = lab("pf-cronjob", 3);
    // The time bomb on one node, which the nightly sweep must find.
    let drifted = "k8s-worker-02";
    lab.os_update(drifted, true).unwrap();

    // The inventory as a user puts it into the ConfigMap: no `cluster:` section, so
    // postflight uses the pod's in-cluster credentials; SSH material from the Secret.
    let inventory_file = in_cluster_inventory(&lab, "in-cluster-inventory.yaml");

    kubectl(&lab, &["apply", "-f", manifest().to_str().unwrap()]);
    kubectl(
        &lab,
        &[
            "-n",
            "postflight",
            "create",
            "configmap",
            "postflight-inventory",
            &format!("--from-file=inventory.yaml={}", inventory_file.display()),
        ],
    );
    create_ssh_secret(&lab, "postflight");
    let (outcome, log) = run_cronjob_now(&lab, "postflight", "postflight-nightly", "nightly-now");
    // The drifted node fails the Job, for alerting on failed Jobs; the others pass.
    assert_eq!(outcome, "Failed", "{log}");
    assert!(
        log.contains(drifted) && log.contains("breaks at its next reboot"),
        "{log}"
    );
    assert!(log.contains("7 passed, 2 failed, 0 could not run"), "{log}");
    assert!(!log.contains("could not run:"), "{log}");

    // It ran as the manifest says: the restricted pod, as postflight's ServiceAccount.
    let pod = kubectl(
        &lab,
        &[
            "-n",
            "postflight",
            "get",
            "pods",
            "-l",
            "job-name=nightly-now",
            "-o",
            "jsonpath={.items[0].spec.serviceAccountName} {.items[0].status.phase}",
        ],
    );
    assert_eq!(pod, "postflight Failed");
    assert_no_probe_left(&lab);
}
