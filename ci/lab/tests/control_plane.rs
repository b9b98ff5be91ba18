//! Proofs that the lab runs Kubernetes' own control plane and enforces what a real
//! cluster enforces: the pinned version, RBAC exactly as `ci/rbac.yaml` grants it, Pod
//! Security, PodDisruptionBudgets through the Eviction API, and 410 Gone after etcd
//! compaction. Each test brings up its own lab and takes it down when it ends.

use postflight_lab::{Lab, LabConfig};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn lab(name: &str, nodes: usize) -> Lab {
    Lab::up(LabConfig::new(name).nodes(nodes))
        .unwrap_or_else(|e| panic!("lab {name} did not come up: {e}"))
}

/// The lab's kubectl (the server's version) with the given kubeconfig.
fn kubectl_as(lab: &Lab, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(lab.paths().kubectl())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn admin(lab: &Lab, args: &[&str], stdin: Option<&str>) -> String {
    let output = kubectl_as(lab, &lab.paths().kubeconfig(), args, stdin);
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_lab_serves_the_pinned_kubernetes_version_with_its_own_controllers() {
    let lab = lab("proof-version", 2);
    let pinned = postflight_lab::controlplane::KUBERNETES_VERSION.trim();
    let version: Value = serde_json::from_str(&admin(&lab, &["version", "-o", "json"], None))
        .expect("kubectl version prints JSON");
    assert_eq!(version["serverVersion"]["gitVersion"], pinned);
    assert_eq!(version["clientVersion"]["gitVersion"], pinned);
    assert_eq!(admin(&lab, &["get", "--raw", "/readyz"], None).trim(), "ok");
    let listing = admin(&lab, &["get", "pods", "-A", "-o", "wide"], None);
    assert_eq!(listing.matches("calico-node-").count(), 2, "{listing}");
    let pods: Value = serde_json::from_str(&admin(
        &lab,
        &[
            "get",
            "pods",
            "-n",
            "kube-system",
            "-l",
            "k8s-app=calico-node",
            "-o",
            "json",
        ],
        None,
    ))
    .unwrap();
    for pod in pods["items"].as_array().unwrap() {
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "DaemonSet", "{pod}");
        assert_eq!(owner["name"], "calico-node");
        // Placed by the real scheduler through the DaemonSet's node affinity.
        assert!(pod["spec"]["affinity"]["nodeAffinity"].is_object(), "{pod}");
    }
}

/// Every (resource, resource name, verb) a role's rules grant, named as `kubectl auth
/// can-i --list` names them.
fn grants(rules: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().into_iter().flatten() {
        let names: Vec<String> = rule["resourceNames"]
            .as_array()
            .map(|n| n.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_else(|| vec![String::new()]);
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                let (resource, group) = (resource.as_str().unwrap(), group.as_str().unwrap());
                let qualified = if group.is_empty() {
                    resource.to_string()
                } else {
                    let (base, sub) = resource
                        .split_once('/')
                        .map_or((resource, ""), |(b, s)| (b, s));
                    let sub = if sub.is_empty() {
                        String::new()
                    } else {
                        format!("/{sub}")
                    };
                    format!("{base}{sub}.{group}")
                };
                for verb in rule["verbs"].as_array().unwrap() {
                    for name in &names {
                        out.insert((
                            qualified.clone(),
                            name.clone(),
                            verb.as_str().unwrap().into(),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// What `kubectl auth can-i --list` says an identity may do in `namespace`: postflight's
/// own, or (`as_bare`) a ServiceAccount nobody bound anything to, which is what every
/// authenticated user may do.
fn can_i(lab: &Lab, namespace: &str, as_bare: bool) -> BTreeSet<(String, String, String)> {
    let mut args = vec!["auth", "can-i", "--list", "--namespace", namespace];
    let kubeconfig = if as_bare {
        args.extend([
            "--as=system:serviceaccount:postflight:unbound",
            "--as-group=system:serviceaccounts",
            "--as-group=system:serviceaccounts:postflight",
            "--as-group=system:authenticated",
        ]);
        lab.paths().kubeconfig()
    } else {
        lab.paths().postflight_kubeconfig()
    };
    let output = kubectl_as(lab, &kubeconfig, &args, None);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut out = BTreeSet::new();
    for line in text.lines().skip(1) {
        let columns: Vec<&str> = line.split_whitespace().collect();
        let resource = columns[0];
        let Some(names_start) = line.find('[') else {
            continue;
        };
        let lists: Vec<&str> = line[names_start..]
            .split(']')
            .map(|s| s.trim().trim_start_matches('['))
            .collect();
        let (urls, names, verbs) = (lists[0], lists[1], lists[2]);
        if !urls.is_empty() || resource.starts_with("selfsubject") {
            continue;
        }
        let names: Vec<&str> = if names.is_empty() {
            vec![""]
        } else {
            names.split_whitespace().collect()
        };
        for verb in verbs.split_whitespace() {
            for name in &names {
                out.insert((resource.to_string(), name.to_string(), verb.to_string()));
            }
        }
    }
    out
}

#[test]
fn postflight_holds_exactly_what_ci_rbac_yaml_grants() {
    let lab = lab("proof-rbac", 1);
    let manifest = postflight_lab::daemon::POSTFLIGHT_RBAC;
    let documents: Vec<Value> = manifest
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str(d).expect("ci/rbac.yaml parses"))
        .collect();
    let cluster_wide: BTreeSet<_> = documents
        .iter()
        .filter(|d| d["kind"] == "ClusterRole")
        .flat_map(|d| grants(&d["rules"]))
        .collect();
    for namespace in ["postflight-probe", "kube-system", "default"] {
        let mut expected = cluster_wide.clone();
        for role in documents
            .iter()
            .filter(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == namespace)
        {
            expected.extend(grants(&role["rules"]));
        }
        let everyone = can_i(&lab, namespace, true);
        let granted: BTreeSet<_> = can_i(&lab, namespace, false)
            .difference(&everyone)
            .cloned()
            .collect();
        assert_eq!(
            granted, expected,
            "postflight's rights in {namespace} differ from ci/rbac.yaml"
        );
    }
    // And nothing beyond: no secrets, no pods created outside the probe namespace.
    for (verb, resource, namespace) in [
        ("get", "secrets", "kube-system"),
        ("create", "pods", "default"),
        ("create", "pods", "kube-system"),
        ("delete", "nodes", "default"),
    ] {
        let output = kubectl_as(
            &lab,
            &lab.paths().postflight_kubeconfig(),
            &["auth", "can-i", verb, resource, "--namespace", namespace],
            None,
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "no",
            "{verb} {resource} in {namespace}"
        );
    }
}

#[test]
fn pod_security_refuses_a_privileged_pod_in_the_probe_namespace() {
    let lab = lab("proof-podsecurity", 1);
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": "postflight-probe"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.37.0", "command": ["sleep", "60"],
                 "securityContext": {"privileged": true}}]},
    });
    let output = kubectl_as(
        &lab,
        &lab.paths().kubeconfig(),
        &["create", "-f", "-"],
        Some(&pod.to_string()),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a privileged pod was admitted");
    assert!(
        stderr.contains("violates PodSecurity \"restricted:latest\"")
            && stderr.contains("privileged"),
        "{stderr}"
    );
}

#[test]
fn an_eviction_a_disruption_budget_forbids_gets_429_from_the_real_server() {
    let lab = lab("proof-eviction", 2);
    admin(
        &lab,
        &[
            "run",
            "guarded",
            "--image=busybox:1.37.0",
            "--labels=app=guarded",
            "--",
            "sleep",
            "3600",
        ],
        None,
    );
    admin(
        &lab,
        &[
            "create",
            "poddisruptionbudget",
            "guarded",
            "--selector=app=guarded",
            "--min-available=1",
        ],
        None,
    );
    wait_for("the disruption controller to count the pod", || {
        let pdb: Value =
            serde_json::from_str(&admin(&lab, &["get", "pdb", "guarded", "-o", "json"], None))
                .unwrap();
        pdb["status"]["currentHealthy"] == 1 && pdb["status"]["disruptionsAllowed"] == 0
    });
    // As postflight: its RBAC allows evictions, the budget forbids this one.
    let kubeconfig = std::fs::read_to_string(lab.paths().postflight_kubeconfig()).unwrap();
    let token = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap();
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": "guarded", "namespace": "default"}});
    let output = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--cacert"])
        .arg(lab.paths().state_dir.join("ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "-H",
            "Content-Type: application/json",
            "-X",
            "POST",
            "-d",
            &eviction.to_string(),
        ])
        .arg(format!(
            "https://{}:{}/api/v1/namespaces/default/pods/guarded/eviction",
            lab.topology().host_ip(),
            lab.ready_report().api_port
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "429", "{body}");
    assert!(body.contains("disruption budget"), "{body}");
}

#[test]
fn compact_etcd_makes_a_resumed_watch_meet_410_gone() {
    let lab = lab("proof-compact", 1);
    let list: Value = serde_json::from_str(&admin(
        &lab,
        &["get", "--raw", "/api/v1/namespaces/kube-system/pods"],
        None,
    ))
    .unwrap();
    let revision = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    admin(&lab, &["create", "configmap", "churn"], None);
    let said = postflight_lab::compact_etcd(lab.name()).unwrap();
    assert!(said.contains("compacted etcd at revision"), "{said}");
    let watch = admin(
        &lab,
        &[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/kube-system/pods?watch=1&resourceVersion={revision}&timeoutSeconds=2"),
        ],
        None,
    );
    assert!(
        watch.contains("\"code\":410") && watch.contains("too old resource version"),
        "{watch}"
    );
}

/// Without Go the control plane cannot be built: `up` fails at once, saying why and
/// what to run, and never falls back to anything simulated.
#[test]
fn up_without_go_fails_with_the_reason_and_the_command() {
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new(postflight_lab::lab_binary(None))
        .args(["up", "--name", "proof-nogo", "--nodes", "1"])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("POSTFLIGHT_LAB_K8S_DIR", empty.path())
        .env_remove("POSTFLIGHT_LAB_K8S_BIN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("Go is not installed") && stderr.contains("bash ci/lab/k8s/build.sh"),
        "{stderr}"
    );
    assert!(
        postflight_lab::state_dir("proof-nogo").is_err(),
        "a lab was registered"
    );
}

/// `pause-api` is a real outage (the process is gone: refused), `--freeze` a hang (the
/// process is stopped: requests time out); both end with the API server serving again.
#[test]
fn pause_api_refuses_and_freeze_hangs_then_both_come_back() {
    let lab = lab("proof-pause", 1);
    let readyz = || {
        kubectl_as(
            &lab,
            &lab.paths().kubeconfig(),
            &["get", "--raw", "/readyz", "--request-timeout=2s"],
            None,
        )
    };
    for (freeze, symptom) in [(false, "was refused"), (true, "")] {
        let said = postflight_lab::pause_api(lab.name(), 4, freeze).unwrap();
        assert!(
            said.contains(if freeze { "frozen" } else { "down" }),
            "{said}"
        );
        let during = readyz();
        let stderr = String::from_utf8_lossy(&during.stderr);
        assert!(
            !during.status.success(),
            "the API answered during the outage"
        );
        if freeze {
            assert!(
                !stderr.contains("connection refused"),
                "a freeze hangs: {stderr}"
            );
        } else {
            assert!(stderr.contains(symptom), "{stderr}");
        }
        wait_for("the API server to serve again", || {
            readyz().status.success()
        });
    }
}
