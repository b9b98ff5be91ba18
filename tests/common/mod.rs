//! What the end-to-end test crates share: labs, runs of the `postflight` binary with
//! their reports, and the assertions that nothing was left behind.
#![allow(dead_code)] // each test crate uses its own subset

use postflight_lab::topology::CalicoProfile;
use postflight_lab::{Lab, LabConfig};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

pub const POSTFLIGHT: &str = env!("CARGO_BIN_EXE_postflight");

/// A lab of real nodes: Kubernetes' kubelet, containerd, runc, CNI and BIRD 1.6.
pub fn lab(name: &str, nodes: usize) -> Lab {
    Lab::up(LabConfig::new(name).nodes(nodes)).unwrap_or_else(|e| panic!("lab {name}: {e}"))
}

/// A lab whose Calico is installed as `profile` installs it.
pub fn lab_with_calico(name: &str, nodes: usize, profile: CalicoProfile) -> Lab {
    Lab::up(LabConfig::new(name).nodes(nodes).calico(profile))
        .unwrap_or_else(|e| panic!("lab {name}: {e}"))
}

/// One run of `postflight verify`, with its reports.
pub struct Run {
    pub output: Output,
    pub junit: String,
    pub json: Value,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into()
    }
    pub fn describe(&self) -> String {
        format!(
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code(),
            self.stdout(),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }
    pub fn result(&self, check: &str) -> &Value {
        self.json["nodes"][0]["results"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == check))
            .unwrap_or_else(|| panic!("no result for {check}: {}", self.describe()))
    }
    pub fn verdict(&self, check: &str) -> &str {
        self.result(check)["verdict"].as_str().unwrap_or_default()
    }
    pub fn message(&self, check: &str) -> &str {
        self.result(check)["message"].as_str().unwrap_or_default()
    }
    /// How long the first node's step named `step` took, in seconds.
    pub fn step_seconds(&self, step: &str) -> f64 {
        self.json["nodes"][0]["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .find(|s| s["step"] == step)
            .and_then(|s| s["duration"].as_f64())
            .unwrap_or_else(|| panic!("the step {step:?} is timed: {}", self.describe()))
    }
    /// The `type` of every `<error>` in the JUnit file, and of every `error_kind` in the
    /// JSON, deduplicated: what kind of trouble kept checks from running.
    pub fn error_kinds(&self) -> (Vec<String>, Vec<String>) {
        let mut junit = junit_error_types(&self.junit);
        junit.dedup();
        let mut json: Vec<String> = self.json["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|node| node["results"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["error_kind"].as_str().map(String::from))
            .collect();
        json.dedup();
        (junit, json)
    }
    /// (testcase name, kind) for every testcase in the JUnit file: kind is "passed",
    /// "failure", "error" or "skipped".
    pub fn junit_cases(&self) -> Vec<(String, String, String)> {
        let document = roxmltree::Document::parse(&self.junit).expect("JUnit is well-formed XML");
        document
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .map(|case| {
                let kind = ["failure", "error", "skipped"]
                    .into_iter()
                    .find(|k| case.children().any(|c| c.has_tag_name(*k)))
                    .unwrap_or("passed");
                (
                    case.attribute("name").unwrap_or_default().to_string(),
                    case.attribute("classname").unwrap_or_default().to_string(),
                    kind.to_string(),
                )
            })
            .collect()
    }
}

pub fn verify(inventory: &Path, node: &str, reboot: bool, reports: &Path) -> Run {
    verify_with(
        inventory,
        node,
        if reboot { &["--reboot"] } else { &[] },
        reports,
    )
}

/// Runs `postflight verify` on a node with extra flags, with JSON and JUnit reports.
pub fn verify_with(inventory: &Path, node: &str, flags: &[&str], reports: &Path) -> Run {
    let mut args = vec!["verify", "--node", node];
    args.extend_from_slice(flags);
    run_postflight(inventory, &args, reports, node)
}

/// Runs `postflight --inventory INVENTORY ARGS --junit … --json …` and reads both reports
/// back (named after `report_name` in `reports`).
pub fn run_postflight(inventory: &Path, args: &[&str], reports: &Path, report_name: &str) -> Run {
    let junit = reports.join(format!("{report_name}-junit.xml"));
    let json = reports.join(format!("{report_name}.json"));
    let _ = std::fs::remove_file(&junit);
    let output = Command::new(POSTFLIGHT)
        .arg("--inventory")
        .arg(inventory)
        .args(args)
        .arg("--junit")
        .arg(&junit)
        .arg("--json")
        .arg(&json)
        .env("NO_COLOR", "1")
        .output()
        .expect("postflight runs");
    let junit = std::fs::read_to_string(&junit).unwrap_or_else(|e| {
        panic!(
            "no JUnit written ({e}): exit {:?}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout)
        )
    });
    // Every run's reports are well-formed, whatever the verdict.
    roxmltree::Document::parse(&junit)
        .unwrap_or_else(|e| panic!("the JUnit does not parse ({e}):\n{junit}"));
    assert_junit_follows_xunit_schema(&reports.join(format!("{report_name}-junit.xml")));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written"))
        .expect("JSON parses");
    assert_follows_schema(&json);
    Run {
        output,
        junit,
        json,
    }
}

/// A real run's JUnit is valid against the Jenkins xunit plugin's schema, which CI put
/// in place (ci/report-tools.sh).
pub fn assert_junit_follows_xunit_schema(junit: &Path) {
    let schema = std::env::var_os("POSTFLIGHT_SCHEMA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/opt/postflight-ci/schemas".into())
        .join("junit-10.xsd");
    let output = Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(&schema)
        .arg(junit)
        .output()
        .expect("xmllint runs (bash ci/report-tools.sh installs it)");
    assert!(
        output.status.success(),
        "{} rejects {}: {}",
        schema.display(),
        junit.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The JSON report of a real run follows the schema postflight publishes.
pub fn assert_follows_schema(json: &Value) {
    let schema: Value = serde_json::from_str(include_str!("../../schema/report-v1.schema.json"))
        .expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let errors: Vec<String> = validator
        .iter_errors(json)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "the JSON report breaks its schema: {errors:#?}"
    );
}

pub fn kubectl(lab: &Lab, args: &[&str]) -> String {
    let output = Command::new(lab.paths().kubectl())
        .arg("--kubeconfig")
        .arg(lab.paths().kubeconfig())
        .args(args)
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// One field of a Node, read by kubectl with a JSONPath such as `{.spec.unschedulable}`.
pub fn node_field(lab: &Lab, node: &str, jsonpath: &str) -> String {
    kubectl(
        lab,
        &["get", "node", node, "-o", &format!("jsonpath={jsonpath}")],
    )
}

pub fn boot_id(lab: &Lab, node: &str) -> String {
    node_field(lab, node, "{.status.nodeInfo.bootID}")
}

/// Whether the node is cordoned (`spec.unschedulable`).
pub fn cordoned(lab: &Lab, node: &str) -> bool {
    node_field(lab, node, "{.spec.unschedulable}") == "true"
}

/// Nothing of postflight's is left in the cluster: no probe pod. (The probe namespace
/// belongs to the RBAC setup, which provisions it; postflight never deletes it.)
pub fn assert_no_probe_left(lab: &Lab) {
    let leftovers = kubectl(
        lab,
        &[
            "get",
            "pods",
            "-A",
            "-l",
            "app.kubernetes.io/managed-by=postflight",
            "-o",
            "name",
        ],
    );
    assert_eq!(leftovers, "", "probe pods left behind");
}

/// The secrets postflight holds — its ServiceAccount's bearer token and the SSH private
/// key — appear in no report and no output: canaries that any leak would carry.
pub fn assert_no_secrets(lab: &Lab, run: &Run) {
    let kubeconfig = std::fs::read_to_string(lab.paths().postflight_kubeconfig()).unwrap();
    let token = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("postflight's kubeconfig has a token");
    let key = std::fs::read_to_string(lab.paths().ssh_key()).unwrap();
    let key_lines: Vec<&str> = key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect();
    assert!(!key_lines.is_empty());
    let outputs = [
        run.junit.clone(),
        run.json.to_string(),
        run.stdout(),
        String::from_utf8_lossy(&run.output.stderr).to_string(),
    ];
    for output in outputs {
        assert!(
            !output.contains(token),
            "the API token leaked into a report"
        );
        for line in &key_lines {
            assert!(
                !output.contains(line),
                "SSH key material leaked into a report"
            );
        }
    }
}

pub fn nix_kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs `postflight diagnose` on a node, with JSON and JUnit reports.
pub fn diagnose(inventory: &Path, node: &str, reports: &Path) -> Run {
    run_postflight(
        inventory,
        &["diagnose", "--node", node],
        reports,
        "diagnose",
    )
}

/// Runs `postflight drift` with JSON and JUnit reports.
pub fn drift(inventory: &Path, reports: &Path) -> Run {
    run_postflight(inventory, &["drift"], reports, "drift")
}

/// Who holds the reboot lock now ("" when nobody does, or no run ever took it).
pub fn lock_holder(lab: &Lab) -> String {
    kubectl(
        lab,
        &[
            "get",
            "lease",
            "-n",
            "kube-system",
            "postflight-reboot-lock",
            "--ignore-not-found",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    )
}

/// No lease held, and the node schedulable: the run left nothing behind.
pub fn assert_nothing_left(lab: &Lab, node: &str) {
    assert_eq!(lock_holder(lab), "", "the reboot lock is released");
    assert!(!cordoned(lab, node), "{node} is not left cordoned");
    assert_no_probe_left(lab);
}

/// Runs a `postflight-lab` knob against the lab and returns what it printed.
pub fn lab_cli(lab: &Lab, args: &[&str]) -> String {
    let binary = postflight_lab::lab_binary(None);
    let output = Command::new(&binary)
        .args(args)
        .args(["--name", lab.name()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "postflight-lab {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A fresh ed25519 public key that no lab host has, as `type base64` (what follows the
/// host in a known_hosts line), made in `dir`: for a known_hosts entry that must not match.
pub fn impostor_key(dir: &Path) -> String {
    let private = dir.join("impostor");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&private)
        .output()
        .expect("ssh-keygen runs");
    assert!(keygen.status.success(), "{keygen:?}");
    let public = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Starts `postflight verify --reboot` on a node in the background, writing JUnit to
/// `junit`; for tests that act on the cluster while it waits.
pub fn spawn_reboot(lab: &Lab, node: &str, junit: &Path) -> Background {
    spawn_reboot_with(&lab.paths().inventory(), node, junit)
}

/// As [`spawn_reboot`], with another of the lab's inventories.
pub fn spawn_reboot_with(inventory: &Path, node: &str, junit: &Path) -> Background {
    Background::spawn(
        Command::new(POSTFLIGHT)
            .arg("--inventory")
            .arg(inventory)
            .args(["verify", "--node", node, "--reboot", "--junit"])
            .arg(junit)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    )
}

/// A process a test started in the background. If the test ends first (a failed
/// assertion), the process is killed: no run outlives its test and its lab.
pub struct Background(Option<std::process::Child>);

impl Background {
    pub fn spawn(command: &mut Command) -> Self {
        Background(Some(command.spawn().expect("the process starts")))
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    pub fn wait_with_output(mut self) -> Output {
        self.0
            .take()
            .expect("running")
            .wait_with_output()
            .expect("the process ends")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Returns once the node is down (within a minute): its power is off, or it is no longer
/// Ready. A real kubelet reports nothing as its node shuts down (it has no graceful node
/// shutdown here), so a quick reboot can be over before the Node says anything.
pub fn wait_for_node_down(lab: &Lab, node: &str) {
    let started = std::time::Instant::now();
    let up = || {
        node_field(
            lab,
            node,
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        ) == "True"
            && !powered_off(lab, node)
    };
    while up() {
        assert!(started.elapsed().as_secs() < 60, "{node} never went down");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Whether the lab says the node's power is off (`postflight-lab status`).
pub fn powered_off(lab: &Lab, node: &str) -> bool {
    let output = Command::new(postflight_lab::lab_binary(None))
        .args(["status", "--name", lab.name()])
        .output()
        .expect("postflight-lab status runs");
    String::from_utf8_lossy(&output.stdout).lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.get(1) == Some(&node) && words.windows(2).any(|w| w == ["power", "off"])
    })
}

/// Returns once a node that is held down has finished powering off: a fault applied to
/// its network namespace before that would be killed with the node's processes.
pub fn wait_for_power_off(lab: &Lab, node: &str) {
    let started = std::time::Instant::now();
    while !powered_off(lab, node) {
        assert!(
            started.elapsed().as_secs() < 60,
            "{node} never finished powering off"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Loads an HTML report in a real headless Chromium (Debian's, installed by
/// ci/report-tools.sh) and returns the DOM as the browser built it. With `screenshot`,
/// also renders the page at 1400 px wide into that PNG, kept as a CI artifact.
pub fn chromium_dom(html: &Path, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", html.canonicalize().unwrap().display());
    // The flags keep Chromium off the network (the page must need none) and quiet.
    let base = |command: &mut Command| {
        command.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ]);
        command.arg(format!("--user-data-dir={}", profile.path().display()));
    };
    let mut dump = Command::new("chromium");
    base(&mut dump);
    let output = dump
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("chromium runs (bash ci/report-tools.sh installs it)");
    assert!(
        output.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    if let Some(png) = screenshot {
        std::fs::create_dir_all(png.parent().unwrap()).unwrap();
        let mut shot = Command::new("chromium");
        base(&mut shot);
        let status = shot
            .arg("--window-size=1400,2400")
            .arg(format!("--screenshot={}", png.display()))
            .arg(&url)
            .output()
            .expect("chromium runs");
        assert!(status.status.success() && png.exists(), "no screenshot");
    }
    String::from_utf8(output.stdout).expect("the DOM is UTF-8")
}

/// Where tests keep what CI should show besides their verdict: screenshots.
pub fn artifact(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-artifacts")
        .join(name)
}

/// promtool's lint of a metrics file, as node_exporter's textfile collector users run it.
pub fn assert_promtool_accepts(metrics: &Path) {
    let output = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(metrics).expect("metrics written"))
        .output()
        .expect("promtool runs (bash ci/report-tools.sh installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

/// How many elements of the DOM carry `attribute="value"`.
pub fn count_attribute(dom: &str, attribute: &str, value: &str) -> usize {
    dom.matches(&format!("{attribute}=\"{value}\"")).count()
}

/// The API server's own count of requests (`apiserver_request_total`) whose labels
/// contain every one of `labels`, e.g. `resource="pods"`, `subresource="exec"`.
/// The pods postflight's ServiceAccount created on the lab, by name, from the API
/// server's audit log of that account (each request once, however many stages it logged).
pub fn pods_created_by_postflight(lab: &Lab) -> Vec<String> {
    let log = lab
        .paths()
        .state_dir
        .join("control-plane/postflight-audit.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut seen = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let reference = &event["objectRef"];
        let created = event["verb"] == "create"
            && reference["resource"] == "pods"
            && reference["subresource"].is_null()
            && event["responseStatus"]["code"] == 201;
        if created {
            seen.insert(
                event["auditID"].as_str().unwrap_or_default().to_string(),
                reference["name"].as_str().unwrap_or_default().to_string(),
            );
        }
    }
    let mut names: Vec<String> = seen.into_values().collect();
    names.sort();
    names
}

pub fn api_requests(lab: &Lab, labels: &[&str]) -> f64 {
    kubectl(lab, &["get", "--raw", "/metrics"])
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{") && labels.iter().all(|x| l.contains(x))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The incident on `node`: the OS update that clobbers its tmpfiles.d entry, a reboot,
/// and calico-node crash-looping on it, within `within`.
pub fn break_like_the_incident(lab: &Lab, node: &str, within: std::time::Duration) {
    lab.os_update(node, true).unwrap();
    lab.reboot(node).unwrap();
    let started = std::time::Instant::now();
    while !kubectl(lab, &["get", "pods", "-n", "kube-system", "-o", "wide"])
        .lines()
        .any(|l| l.contains(node) && l.contains("CrashLoopBackOff"))
    {
        assert!(
            started.elapsed() < within,
            "calico-node on {node} never crash-looped"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The lab's inventory as a user puts it into a ConfigMap for postflight in a pod: no
/// `cluster:` section (the pod's in-cluster credentials are used), and the SSH key and
/// known_hosts where the Secret is mounted. Written into the lab's state folder as
/// `name`; returns its path.
pub fn in_cluster_inventory(lab: &Lab, name: &str) -> std::path::PathBuf {
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
    let file = lab.paths().state_dir.join(name);
    std::fs::write(&file, &inventory).unwrap();
    file
}

/// The Secret `postflight-ssh` in `namespace`, with the lab's SSH key and known_hosts, as
/// the manifests and the chart mount it.
pub fn create_ssh_secret(lab: &Lab, namespace: &str) {
    kubectl(
        lab,
        &[
            "-n",
            namespace,
            "create",
            "secret",
            "generic",
            "postflight-ssh",
            &format!(
                "--from-file=id_ed25519={}",
                lab.paths().state_dir.join("ssh/id_ed25519").display()
            ),
            &format!(
                "--from-file=known_hosts={}",
                lab.paths().known_hosts().display()
            ),
        ],
    );
}

/// Waits for a Job in `namespace` to finish and says how: "Complete" or "Failed".
pub fn job_outcome(lab: &Lab, namespace: &str, job: &str) -> String {
    let started = std::time::Instant::now();
    loop {
        let conditions = kubectl(
            lab,
            &[
                "-n",
                namespace,
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
            kubectl(lab, &["-n", namespace, "describe", "job", job])
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// The `type` of every `<error>` in a JUnit document, in order.
pub fn junit_error_types(junit: &str) -> Vec<String> {
    roxmltree::Document::parse(junit)
        .expect("JUnit is well-formed XML")
        .descendants()
        .filter(|n| n.has_tag_name("error"))
        .filter_map(|n| n.attribute("type").map(String::from))
        .collect()
}

/// Starts a Job from `cronjob` in `namespace` now, waits for it, and returns how it
/// ended ("Complete" or "Failed") with its log.
pub fn run_cronjob_now(lab: &Lab, namespace: &str, cronjob: &str, job: &str) -> (String, String) {
    kubectl(
        lab,
        &[
            "-n",
            namespace,
            "create",
            "job",
            job,
            &format!("--from=cronjob/{cronjob}"),
        ],
    );
    let outcome = job_outcome(lab, namespace, job);
    let log = kubectl(lab, &["-n", namespace, "logs", &format!("job/{job}")]);
    (outcome, log)
}

/// A lab of simulated kubelets: only the scale profile, the sizes a 2-core machine cannot
/// carry as real nodes (as kwok's kubelets are for Kubernetes' own scale tests).
pub fn simulated_lab(name: &str, nodes: usize) -> Lab {
    Lab::up(
        LabConfig::new(name)
            .nodes(nodes)
            .kubelet(postflight_lab::topology::KubeletKind::Simulated),
    )
    .unwrap_or_else(|e| panic!("lab {name}: {e}"))
}
