//! Kubernetes' own tests say the lab is a cluster: its e2e test binary, built from the
//! lab's one Go module at the pinned version (`ci/lab/k8s/conformance`), runs the
//! `[Conformance]` and `[NodeConformance]` tests below against a 3-node lab of real nodes.
//! Every test listed must pass; the README's "The lab" section lists them too.

use postflight_lab::{Lab, LabConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The tests, by the words of their Ginkgo names (matched as literal text), with what
/// each proves about the lab's nodes.
const TESTS: &[(&str, &str)] = &[
    ("[sig-node] Pods should get a host IP", "the Node's addresses reach pod status"),
    ("[sig-node] Pods should be submitted and removed", "graceful deletion by the kubelet"),
    ("[sig-node] Pods should support remote command execution over websockets", "exec through the kubelet's own streaming server"),
    ("[sig-node] Pods should support retrieving logs from the container over websockets", "logs through the kubelet"),
    ("[sig-node] Probing container should be restarted with a exec \"cat /tmp/health\" liveness probe", "exec probes, restarts and restart counts"),
    ("[sig-node] Probing container with readiness probe should not be ready before initial delay and never restart", "readiness timing"),
    ("[sig-node] Probing container with readiness probe that fails should never be ready and never restart", "a failing readiness probe"),
    ("[sig-node] InitContainer should invoke init containers on a RestartNever pod", "init containers, in order"),
    ("[sig-node] InitContainer should invoke init containers on a RestartAlways pod", "init containers before a long-running one"),
    ("[sig-node] InitContainer should not start app containers and fail the pod if init containers fail on a RestartNever pod", "a failed init container fails the pod"),
    ("[sig-node] Kubelet when scheduling a busybox command in a pod should print the output to logs", "container logs"),
    ("[sig-node] Kubelet when scheduling a busybox command that always fails in a pod should have an terminated reason", "terminated state and reason"),
    ("[sig-node] Kubelet when scheduling a busybox command that always fails in a pod should be possible to delete", "deleting a crash-looping pod"),
    ("[sig-node] Container Runtime blackbox test on terminated container should report termination message from log output if TerminationMessagePolicy FallbackToLogsOnError is set", "termination messages from the runtime"),
    ("[sig-node] Variable Expansion should allow composing env vars into new env vars", "environment"),
    ("[sig-node] Variable Expansion should allow substituting values in a container's command", "environment in commands"),
    ("[sig-node] Downward API should provide pod name, namespace and IP address as env vars", "the downward API: pod IP"),
    ("[sig-node] Downward API should provide host IP as an env var", "the downward API: host IP"),
    ("[sig-node] Downward API should provide pod UID as env vars", "the downward API: pod UID"),
    ("[sig-node] Security Context When creating a container with runAsUser should run the container with uid 65534", "runAsUser through runc"),
    ("[sig-node] Container Lifecycle Hook when create a pod with lifecycle hook should execute poststart exec hook properly", "lifecycle hooks, pod to pod over HTTP"),
    ("[sig-storage] HostPath should give a volume the correct mode", "hostPath volumes"),
    ("[sig-storage] EmptyDir volumes should support (root,0644,default)", "emptyDir on the node's disk"),
    ("[sig-storage] EmptyDir volumes should support (root,0644,tmpfs)", "emptyDir as tmpfs"),
    ("[sig-storage] Downward API volume should provide podname only", "downward API volumes"),
    ("[sig-storage] ConfigMap should be consumable from pods in volume", "ConfigMap volumes"),
    ("[sig-storage] Secrets should be consumable from pods in volume", "Secret volumes"),
    ("[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http", "pod to pod across nodes (CNI and BIRD's routes)"),
    ("[sig-network] Networking Granular Checks: Pods should function for node-pod communication: http", "node to pod across nodes"),
];

/// The e2e binary: `POSTFLIGHT_E2E_TEST` (ci/test.sh builds it), or built here.
fn e2e_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("POSTFLIGHT_E2E_TEST") {
        return path.into();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("e2e.test")
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "building Kubernetes' e2e tests failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A regular expression that matches `text` literally (Go's RE2 syntax).
fn literal(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\\' | '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$' => {
                format!("\\{c}")
            }
            c => c.to_string(),
        })
        .collect()
}

#[test]
fn kubernetes_conformance_tests_pass_on_a_lab_of_real_nodes() {
    let binary = e2e_binary();
    let lab = Lab::up(LabConfig::new("proof-conformance").nodes(3))
        .unwrap_or_else(|e| panic!("lab proof-conformance did not come up: {e}"));
    let reports = tempfile::tempdir().unwrap();
    let junit = reports.path().join("junit.xml");
    let focus = TESTS
        .iter()
        .map(|(name, _)| literal(name))
        .collect::<Vec<_>>()
        .join("|");
    let out = Command::new(&binary)
        .arg(format!("--kubeconfig={}", lab.paths().kubeconfig().display()))
        .arg(format!("--kubectl-path={}", lab.paths().kubectl().display()))
        .arg("--provider=skeleton")
        .arg(format!("--report-dir={}", reports.path().display()))
        .arg(format!("--ginkgo.focus={focus}"))
        // Names above are prefixes of tests behind feature gates the lab leaves at their
        // defaults, and of serial or slow variants: not conformance, not run.
        .arg("--ginkgo.skip=\\[Feature:|\\[FeatureGate:|\\[Alpha\\]|\\[Beta\\]|\\[Serial\\]|\\[Slow\\]|\\[Disruptive\\]|\\[Flaky\\]")
        .arg(format!("--ginkgo.junit-report={}", junit.display()))
        .arg("--ginkgo.no-color")
        .arg("--ginkgo.timeout=40m")
        .output()
        .expect("the e2e binary runs");
    let log = String::from_utf8_lossy(&out.stdout);
    let xml = std::fs::read_to_string(&junit)
        .unwrap_or_else(|e| panic!("no JUnit from the e2e tests ({e}): {log}"));
    let doc = roxmltree::Document::parse(&xml).expect("Ginkgo writes XML");
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    for case in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
        let name = case.attribute("name").unwrap_or_default();
        let status = case.attribute("status").unwrap_or_default();
        match status {
            "passed" => passed.push(name.to_string()),
            "skipped" | "pending" => {}
            _ => failed.push(format!("{name}: {status}")),
        }
    }
    let missing: Vec<&str> = TESTS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !passed.iter().any(|p| p.contains(name)))
        .collect();
    assert!(
        failed.is_empty() && missing.is_empty(),
        "conformance: {} passed; failed {failed:#?}; not passed {missing:#?}\n{}",
        passed.len(),
        log.lines()
            .rev()
            .take(200)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(passed.len() >= 20, "{passed:#?}");
    assert!(out.status.success(), "{log}");
}
