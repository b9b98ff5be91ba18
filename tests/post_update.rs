//! The post-update cluster suite: the checks of `postflight verify` as a test suite that
//! users point at their own cluster, one test per check, sharing the library code the
//! command line uses.
//!
//! ```text
//! POSTFLIGHT_INVENTORY=inventory/staging.yaml POSTFLIGHT_NODE=k8s-worker-03 \
//!   [POSTFLIGHT_REBOOT=1] [POSTFLIGHT_JUNIT=out/junit.xml] cargo test --test post_update
//! ```
//!
//! With POSTFLIGHT_REBOOT=1 the node is rebooted once, before any check runs. JUnit goes
//! to POSTFLIGHT_JUNIT (default target/postflight/junit.xml), rewritten after every test
//! so that it holds every check that ran. Without POSTFLIGHT_INVENTORY at build time
//! (build.rs) every test is ignored with the reason, so an unpointed `cargo test` never
//! counts a cluster check as passed; run with `--ignored` but unpointed, each test fails
//! saying it was not pointed at a cluster.

use postflight::checks::{judge_node_ready, CheckName, CheckResult, Verdict};
use postflight::cluster::Cluster;
use postflight::expectations::CalicoExpectations;
use postflight::gate::{self, ProbePlan, RebootBaseline};
use postflight::inventory::Inventory;
use postflight::report::{self, NodeReport, StepTiming};
use rstest::{fixture, rstest};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// What the environment points the suite at.
struct Target {
    inventory: Inventory,
    node: String,
    reboot: bool,
}

impl Target {
    fn from_env() -> Option<Target> {
        let path = std::env::var_os("POSTFLIGHT_INVENTORY")?;
        let inventory = Inventory::load(&PathBuf::from(path)).unwrap_or_else(|e| panic!("{e}"));
        let node =
            std::env::var("POSTFLIGHT_NODE").expect("POSTFLIGHT_NODE names the node to verify");
        assert!(
            inventory.node(&node).is_some(),
            "{node} is not in {}",
            inventory.file.display()
        );
        let reboot = std::env::var("POSTFLIGHT_REBOOT").is_ok_and(|v| !v.is_empty() && v != "0");
        Some(Target {
            inventory,
            node,
            reboot,
        })
    }
}

static TARGET: OnceLock<Option<Target>> = OnceLock::new();

/// Why every test is ignored in a build that was not pointed at a cluster.
const NOT_POINTED: &str = "not pointed at a cluster: set POSTFLIGHT_INVENTORY and POSTFLIGHT_NODE \
                           (and POSTFLIGHT_REBOOT=1 to reboot first)";

/// The reboot, done once for the whole suite before any check runs.
struct RebootPhase {
    results: Vec<CheckResult>,
    steps: Vec<StepTiming>,
    baseline: Option<RebootBaseline>,
}

static REBOOT: OnceLock<RebootPhase> = OnceLock::new();

static RESULTS: Mutex<Vec<CheckResult>> = Mutex::new(Vec::new());

#[fixture]
fn target() -> &'static Target {
    TARGET
        .get_or_init(Target::from_env)
        .as_ref()
        .unwrap_or_else(|| panic!("{NOT_POINTED}; nothing was checked"))
}

/// The kube client for the inventory's cluster.
#[fixture]
async fn cluster(target: &'static Target) -> Cluster {
    gate::connect(&target.inventory)
        .await
        .unwrap_or_else(|e| panic!("connecting to the cluster: {e}"))
}

/// The node's host, as the inventory reaches it (SSH with its host key verified, or a
/// node shell), and then the node shells of `run_id` deleted, whatever `use_it` found.
async fn with_node_access<T, F, Fut>(target: &'static Target, cluster: &Cluster, use_it: F) -> T
where
    F: FnOnce(gate::NodeAccess) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let inventory = &target.inventory;
    let entry = inventory
        .node(&target.node)
        .expect("the node is in the inventory");
    let run_id = gate::new_run_id();
    let access = gate::node_access(inventory, entry, Some(cluster), &run_id)
        .unwrap_or_else(|e| panic!("COULD NOT RUN: {e}"));
    let found = use_it(access).await;
    if inventory.uses_node_shell() {
        cluster
            .delete_node_shells(&inventory.node_shell.namespace, &[&run_id])
            .await
            .unwrap_or_else(|e| panic!("the node shells of run {run_id} were not deleted: {e}"));
    }
    found
}

fn junit_path() -> PathBuf {
    std::env::var_os("POSTFLIGHT_JUNIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/postflight/junit.xml")
        })
}

/// Reboots the node the first time a test asks (when POSTFLIGHT_REBOOT is set); every
/// test waits for it. It runs on a runtime of its own because each test has one.
fn reboot_phase(target: &'static Target) -> &'static RebootPhase {
    REBOOT.get_or_init(|| {
        if !target.reboot {
            return RebootPhase {
                results: Vec::new(),
                steps: Vec::new(),
                baseline: None,
            };
        }
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("a runtime for the reboot");
            runtime.block_on(async {
                let cluster = gate::connect(&target.inventory)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let calico = expectations(target, &cluster).await;
                let (results, steps, baseline) = with_node_access(target, &cluster, |access| {
                    let (calico, cluster) = (&calico, &cluster);
                    async move {
                        gate::reboot_node(
                            &target.inventory,
                            calico,
                            cluster,
                            &*access.transport,
                            &target.node,
                        )
                        .await
                    }
                })
                .await;
                RebootPhase {
                    results,
                    steps,
                    baseline,
                }
            })
        })
        .join()
        .expect("the reboot phase does not panic")
    })
}

/// What the checks hold calico-node to: the inventory's `calico:` values, the rest read
/// from its DaemonSet, as a run resolves them.
async fn expectations(target: &Target, cluster: &Cluster) -> CalicoExpectations {
    gate::calico_expectations(cluster, &target.inventory.calico)
        .await
        .unwrap_or_else(|e| panic!("COULD NOT RUN: {e}"))
}

/// Records a result in the suite's JUnit and fails the test unless it passed.
fn conclude(target: &Target, result: CheckResult) {
    let verdict = result.verdict.clone();
    let evidence = report::evidence_text(&result);
    {
        let mut results = RESULTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        results.push(result);
        results.sort_by_key(|r| r.name);
        let phase = REBOOT.get();
        let node_report = NodeReport {
            node: target.node.clone(),
            rebooted: target.reboot,
            started_at: k8s_openapi::jiff::Timestamp::now().to_string(),
            results: results.clone(),
            steps: phase.map(|p| p.steps.clone()).unwrap_or_default(),
            ready_to_verdict: None,
            interrupted: false,
            notes: Vec::new(),
            run: Default::default(),
            elapsed: Default::default(),
        };
        report::ReportFiles {
            junit: Some(junit_path()),
            ..Default::default()
        }
        .write(&[node_report], None, "postflight post_update")
        .expect("JUnit written");
    }
    match verdict {
        Verdict::Passed => {}
        Verdict::Failed(message) => panic!("FAILED: {message}\n{evidence}"),
        Verdict::Error(message) => panic!("COULD NOT RUN: {message}\n{evidence}"),
        Verdict::Skipped(why) => eprintln!("{}: skipped: {why}", target.node),
    }
}

/// The reboot phase's own result for `check`, when it has one: its two checks, or an
/// error for a check that cannot run because the node did not come back.
fn from_reboot(target: &'static Target, check: CheckName) -> Option<CheckResult> {
    reboot_phase(target)
        .results
        .iter()
        .find(|r| r.name == check)
        .cloned()
}

/// One check of the suite: taken from the reboot phase when that phase decided it (its
/// own two checks, or errors because the node did not come back); otherwise run now.
async fn suite_check<Run>(
    target: &'static Target,
    check: CheckName,
    run: impl FnOnce(&'static Target) -> Run,
) where
    Run: std::future::Future<Output = CheckResult>,
{
    match from_reboot(target, check) {
        Some(result) => conclude(target, result),
        None => conclude(target, run(target).await),
    }
}

#[rstest]
#[tokio::test]
#[cfg_attr(
    not(postflight_cluster),
    ignore = "not pointed at a cluster: set POSTFLIGHT_INVENTORY"
)]
async fn node_ready_after_reboot(target: &'static Target, #[future(awt)] cluster: Cluster) {
    suite_check(
        target,
        CheckName::NodeReadyAfterReboot,
        |target| async move {
            let started = Instant::now();
            let node = cluster
                .node(&target.node)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let (verdict, evidence) = judge_node_ready(&node);
            CheckResult::new(
                CheckName::NodeReadyAfterReboot,
                &target.node,
                verdict,
                evidence,
                started.elapsed(),
            )
        },
    )
    .await;
}

#[rstest]
#[tokio::test]
#[cfg_attr(
    not(postflight_cluster),
    ignore = "not pointed at a cluster: set POSTFLIGHT_INVENTORY"
)]
async fn boot_id_changed(target: &'static Target) {
    match from_reboot(target, CheckName::BootIdChanged) {
        Some(result) => conclude(target, result),
        None => eprintln!("boot_id_changed: not applicable, POSTFLIGHT_REBOOT is not set (the node was not rebooted)"),
    }
}

async fn calico_results(target: &'static Target, cluster: &Cluster) -> gate::CalicoResults {
    let phase = reboot_phase(target);
    let since = gate::crashloop_window_start(phase.baseline.as_ref());
    let baseline = phase.baseline.as_ref().map(|b| &b.calico);
    let deadline = target.inventory.timeouts.calico_ready;
    gate::check_calico(
        cluster,
        &expectations(target, cluster).await,
        &target.node,
        baseline,
        since,
        deadline,
    )
    .await
}

#[rstest]
#[tokio::test]
#[cfg_attr(
    not(postflight_cluster),
    ignore = "not pointed at a cluster: set POSTFLIGHT_INVENTORY"
)]
async fn calico_node_ready(target: &'static Target, #[future(awt)] cluster: Cluster) {
    suite_check(target, CheckName::CalicoNodeReady, |target| async move {
        calico_results(target, &cluster).await.ready
    })
    .await;
}

#[rstest]
#[tokio::test]
#[cfg_attr(
    not(postflight_cluster),
    ignore = "not pointed at a cluster: set POSTFLIGHT_INVENTORY"
)]
async fn calico_node_not_crashlooping(target: &'static Target, #[future(awt)] cluster: Cluster) {
    suite_check(
        target,
        CheckName::CalicoNodeNotCrashlooping,
        |target| async move { calico_results(target, &cluster).await.crashloop },
    )
    .await;
}

async fn host_results(target: &'static Target) -> gate::HostResults {
    let inventory = &target.inventory;
    let cluster = gate::connect(inventory)
        .await
        .unwrap_or_else(|e| panic!("COULD NOT RUN: connecting to the cluster: {e}"));
    let calico = expectations(target, &cluster).await;
    with_node_access(target, &cluster, |access| {
        let calico = &calico;
        async move {
            gate::check_host(
                &*access.transport,
                &target.node,
                calico,
                inventory.timeouts.ssh,
            )
            .await
        }
    })
    .await
}

#[rstest]
#[tokio::test]
#[cfg_attr(
    not(postflight_cluster),
    ignore = "not pointed at a cluster: set POSTFLIGHT_INVENTORY"
)]
async fn tmpfiles_config_present(target: &'static Target) {
    suite_check(
        target,
        CheckName::TmpfilesConfigPresent,
        |target| async move { host_results(target).await.tmpfiles },
    )
    .await;
}

#[rstest]
#[tokio::test]
#[cfg_attr(
    not(postflight_cluster),
    ignore = "not pointed at a cluster: set POSTFLIGHT_INVENTORY"
)]
async fn run_dir_permissions(target: &'static Target) {
    suite_check(target, CheckName::RunDirPermissions, |target| async move {
        host_results(target).await.run_dir
    })
    .await;
}

/// Both connectivity checks, on probe pods of their own that are deleted before the
/// verdict is asserted, so a failing test leaves nothing behind.
async fn connectivity(target: &'static Target, cluster: &Cluster) -> (CheckResult, CheckResult) {
    let inventory = &target.inventory;
    let others: Vec<String> = inventory
        .node_names()
        .into_iter()
        .filter(|n| *n != target.node)
        .collect();
    let plan = ProbePlan::new(&gate::new_run_id(), &target.node, &others);
    let calico_ready = calico_results(target, cluster).await.ready.passed();
    let fleet = gate::start_probes(cluster, inventory, &plan).await;
    let results = gate::check_connectivity(cluster, inventory, &plan, fleet, calico_ready).await;
    if let Err(error) = cluster
        .delete_probes(
            &inventory.probe.namespace,
            &[&plan.run_id],
            plan.requests.len(),
        )
        .await
    {
        eprintln!(
            "warning: probe pods of run {} were not deleted: {error}",
            plan.run_id
        );
    }
    results
}

#[rstest]
#[tokio::test]
#[cfg_attr(
    not(postflight_cluster),
    ignore = "not pointed at a cluster: set POSTFLIGHT_INVENTORY"
)]
async fn same_node_pod_connectivity(target: &'static Target, #[future(awt)] cluster: Cluster) {
    suite_check(
        target,
        CheckName::SameNodePodConnectivity,
        |target| async move { connectivity(target, &cluster).await.0 },
    )
    .await;
}

#[rstest]
#[tokio::test]
#[cfg_attr(
    not(postflight_cluster),
    ignore = "not pointed at a cluster: set POSTFLIGHT_INVENTORY"
)]
async fn cross_node_pod_connectivity(target: &'static Target, #[future(awt)] cluster: Cluster) {
    suite_check(
        target,
        CheckName::CrossNodePodConnectivity,
        |target| async move { connectivity(target, &cluster).await.1 },
    )
    .await;
}
