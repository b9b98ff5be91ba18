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

/// Waits for a Job to finish and says how: "Complete" or "Failed".
fn job_outcome(lab: &postflight_lab::Lab, job: &str) -> String {
    let started = std::time::Instant::now();
    loop {
        let conditions = kubectl(
            lab,
            &[
                "-n",
                "postflight",
                "get",
                "job",
                job,
                "-o",
                "jsonpath={range .status.conditions[?(@.status==\"True\")]}{.type} {end}",
            ],
        );
        for outcome in ["Complete", "Failed"] {
            if conditions.split_whitespace().any(|c| c == outcome) {
                return outcome.to_string();
            }
        }
        assert!(
            started.elapsed().as_secs() < 180,
            "job {job} did not finish: {}",
            kubectl(lab, &["-n", "postflight", "describe", "job", job])
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn the_nightly_cronjob_runs_postflight_in_the_cluster_and_fails_on_a_drifted_node() {
    let lab = lab("pf-cronjob", 3);
    let state = lab.paths().state_dir.clone();
    // The time bomb on one node, which the nightly sweep must find.
    let drifted = "k8s-worker-02";
    lab.os_update(drifted, true).unwrap();

    // The inventory as a user puts it into the ConfigMap: no `cluster:` section, so
    // postflight uses the pod's in-cluster credentials; SSH material from the Secret.
    let inventory: String = std::fs::read_to_string(lab.paths().inventory())
        .unwrap()
        .lines()
        .filter(|line| {
            !line.starts_with("cluster:")
                && !line.starts_with("  kubeconfig:")
                && !line.starts_with("  context:")
        })
        .map(|line| {
            line.replace(
                "identity_file: ssh/id_ed25519",
                "identity_file: /etc/postflight-ssh/id_ed25519",
            )
            .replace(
                "known_hosts: ssh/known_hosts",
                "known_hosts: /etc/postflight-ssh/known_hosts",
            )
        })
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(!inventory.contains("kubeconfig"), "{inventory}");
    let inventory_file = state.join("in-cluster-inventory.yaml");
    std::fs::write(&inventory_file, &inventory).unwrap();

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
    kubectl(
        &lab,
        &[
            "-n",
            "postflight",
            "create",
            "secret",
            "generic",
            "postflight-ssh",
            &format!(
                "--from-file=id_ed25519={}",
                state.join("ssh/id_ed25519").display()
            ),
            &format!(
                "--from-file=known_hosts={}",
                lab.paths().known_hosts().display()
            ),
        ],
    );
    kubectl(
        &lab,
        &[
            "-n",
            "postflight",
            "create",
            "job",
            "nightly-now",
            "--from=cronjob/postflight-nightly",
        ],
    );
    let outcome = job_outcome(&lab, "nightly-now");
    let log = kubectl(&lab, &["-n", "postflight", "logs", "job/nightly-now"]);
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
