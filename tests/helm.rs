//! The Helm chart (deploy/helm/postflight) as a user installs it: `helm lint` and `helm
//! template` accept it, a value of the wrong type is refused by name, its RBAC is exactly
//! what `postflight rbac` prints for the same inventory (so the two cannot drift apart),
//! and on a lab `helm install` runs the nightly Job to completion and `helm uninstall`
//! leaves nothing behind. Helm is built from its Go module in the lab's module
//! (`bash ci/lab/k8s/build.sh helm`, POSTFLIGHT_HELM).

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/postflight")
}

fn helm() -> Command {
    let helm = std::env::var("POSTFLIGHT_HELM")
        .expect("POSTFLIGHT_HELM names the helm binary (ci/test.sh builds it: bash ci/lab/k8s/build.sh helm)");
    let mut command = Command::new(helm);
    // Helm keeps its caches and repositories under these: a test's own, not the machine's.
    let home = std::env::temp_dir().join("postflight-helm-home");
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    command
}

fn ok(output: Output, what: &str) -> String {
    assert!(output.status.success(), "{what}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The objects of a multi-document YAML stream, as JSON values.
fn objects(yaml: &str) -> Vec<Value> {
    let mut values = Vec::new();
    for document in serde_saphyr::from_multiple::<Value>(yaml).expect("the YAML parses") {
        if !document.is_null() {
            values.push(document);
        }
    }
    values
}

/// What an RBAC object grants, without what Helm or the comments add: kind, name,
/// namespace, rules, roleRef, subjects, and a namespace's Pod Security labels.
fn grants(objects: &[Value]) -> Vec<Value> {
    let mut kept: Vec<Value> = objects
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("Namespace" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding")
            )
        })
        .map(|o| {
            let labels: serde_json::Map<String, Value> = o["metadata"]["labels"]
                .as_object()
                .map(|l| {
                    l.iter()
                        .filter(|(k, _)| k.starts_with("pod-security.kubernetes.io/"))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            serde_json::json!({
                "kind": o["kind"],
                "name": o["metadata"]["name"],
                "namespace": o["metadata"]["namespace"],
                "labels": labels,
                "rules": o["rules"],
                "roleRef": o["roleRef"],
                "subjects": o["subjects"],
            })
        })
        .collect();
    kept.sort_by_key(|v| v.to_string());
    kept
}

fn template(args: &[&str]) -> Output {
    helm()
        .arg("template")
        .arg("nightly")
        .arg(chart())
        .args(["--namespace", "postflight", "--set", "inventory=nodes: []"])
        .args(args)
        .output()
        .expect("helm runs")
}

#[test]
fn helm_lints_the_chart_and_refuses_a_value_of_the_wrong_type_by_name() {
    ok(
        helm()
            .arg("lint")
            .arg("--strict")
            .arg(chart())
            .args(["--set", "inventory=nodes: []"])
            .output()
            .unwrap(),
        "helm lint",
    );
    let rendered = ok(template(&[]), "helm template");
    let kinds: Vec<String> = objects(&rendered)
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect();
    for kind in [
        "ServiceAccount",
        "ConfigMap",
        "CronJob",
        "ClusterRole",
        "Namespace",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    for (flag, value, name) in [
        (
            "--set-json",
            "nodeShell.enabled=\"yes\"",
            "/nodeShell/enabled",
        ),
        ("--set", "command=reboot", "/command"),
        (
            "--set-json",
            "failedJobsHistoryLimit=\"three\"",
            "/failedJobsHistoryLimit",
        ),
    ] {
        let refused = template(&[flag, value]);
        let said = String::from_utf8_lossy(&refused.stderr).to_string();
        assert!(!refused.status.success(), "{value} is refused");
        assert!(said.contains(name), "the error names {name}: {said}");
    }
    let no_inventory = helm()
        .arg("template")
        .arg("x")
        .arg(chart())
        .output()
        .unwrap();
    assert!(!no_inventory.status.success());
    assert!(String::from_utf8_lossy(&no_inventory.stderr).contains("set inventory"));
}

/// The chart's values for an inventory: its namespaces and lock, and whether it uses
/// node shells.
fn values_for(inventory: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(inventory).unwrap();
    let parsed: Value = serde_saphyr::from_str(&text).unwrap();
    let or = |value: &Value, default: &str| value.as_str().unwrap_or(default).to_string();
    let shells = text.contains("node-shell");
    vec![
        format!(
            "probe.namespace={}",
            or(&parsed["probe"]["namespace"], "postflight-probe")
        ),
        format!(
            "lock.namespace={}",
            or(&parsed["lock"]["namespace"], "kube-system")
        ),
        format!(
            "lock.name={}",
            or(&parsed["lock"]["name"], "postflight-reboot-lock")
        ),
        format!("nodeShell.enabled={shells}"),
        format!(
            "nodeShell.namespace={}",
            or(&parsed["node_shell"]["namespace"], "postflight-node-shell")
        ),
    ]
}

#[test]
fn the_charts_rbac_is_exactly_what_postflight_rbac_prints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for inventory in [
        "inventory/example-staging.yaml",
        "inventory/example-kind.yaml",
    ] {
        let inventory = root.join(inventory);
        let printed = ok(
            Command::new(POSTFLIGHT)
                .arg("--inventory")
                .arg(&inventory)
                .args(["rbac", "--service-account", "nightly-ns/postflight"])
                .output()
                .unwrap(),
            "postflight rbac",
        );
        let mut args = vec!["--namespace".to_string(), "nightly-ns".into()];
        for value in values_for(&inventory) {
            args.push("--set".into());
            args.push(value);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let rendered = ok(template(&args), "helm template");
        let (chart, cli) = (grants(&objects(&rendered)), grants(&objects(&printed)));
        assert!(!cli.is_empty());
        assert_eq!(
            serde_json::to_string_pretty(&chart).unwrap(),
            serde_json::to_string_pretty(&cli).unwrap(),
            "{} : the chart grants what `postflight rbac` prints",
            inventory.display()
        );
    }
}

#[test]
fn helm_install_runs_the_nightly_job_and_uninstall_leaves_nothing() {
    let lab = lab("pf-helm", 3);
    let kubeconfig = lab.paths().kubeconfig();
    let inventory_file = in_cluster_inventory(&lab, "helm-inventory.yaml");
    // The lab gives postflight its identity the way `postflight rbac | kubectl apply`
    // does; the chart is to bring its own, as on a cluster that has none yet.
    let rbac = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/rbac.yaml");
    kubectl(
        &lab,
        &["delete", "-f", rbac.to_str().unwrap(), "--wait=true"],
    );
    kubectl(
        &lab,
        &["-n", "postflight", "delete", "serviceaccount", "postflight"],
    );
    create_ssh_secret(&lab, "postflight");
    let started = std::time::Instant::now();
    ok(
        helm()
            .args(["install", "nightly"])
            .arg(chart())
            .args(["--namespace", "postflight", "--wait", "--timeout", "2m"])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--set-file")
            .arg(format!("inventory={}", inventory_file.display()))
            .output()
            .unwrap(),
        "helm install",
    );
    let (outcome, log) = run_cronjob_now(&lab, "postflight", "nightly-nightly", "helm-now");
    assert_eq!(outcome, "Complete", "{log}");
    assert!(log.contains("9 passed, 0 failed, 0 could not run"), "{log}");
    eprintln!(
        "helm install → Job Complete: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    kubectl(
        &lab,
        &[
            "-n",
            "postflight",
            "delete",
            "job",
            "helm-now",
            "--wait=true",
        ],
    );
    ok(
        helm()
            .args([
                "uninstall",
                "nightly",
                "--namespace",
                "postflight",
                "--wait",
            ])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .output()
            .unwrap(),
        "helm uninstall",
    );
    for (kind, name, namespace) in [
        ("clusterrole", "postflight", None),
        ("clusterrolebinding", "postflight", None),
        ("namespace", "postflight-probe", None),
        ("serviceaccount", "postflight", Some("postflight")),
        ("cronjob", "nightly-nightly", Some("postflight")),
        ("role", "postflight-lock", Some("kube-system")),
    ] {
        let mut args = vec!["get", kind, name, "--ignore-not-found", "-o", "name"];
        if let Some(namespace) = namespace {
            args.extend(["-n", namespace]);
        }
        // A namespace being deleted still answers for a moment: wait for it to go.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !kubectl(&lab, &args).trim().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{kind} {name} left behind"
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }
    assert_no_probe_left(&lab);
}
