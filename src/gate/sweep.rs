//! Sweeping what dead runs left: a run SIGKILLed or OOM-killed cannot delete its probe
//! pods, its node-shell pods (privileged) or give back its Lease. A later run that may
//! reboot finds them before it starts, deletes what is certainly dead, and says so.
//!
//! A run is certainly dead when the Lease names it and its `renewTime` is older than
//! the lease's duration and the clock-skew allowance (the rule `cluster::lease` frees a
//! lease by): then its pods go, whatever their age, and the lease is freed. A pod whose
//! run never held the lease (a verify without a reboot, a rolling update's shared probe
//! set) is dead once it is older than the longest a run can last by the inventory's
//! deadlines — but only while no live run holds the lease, since a rolling update that
//! holds it may outlive one node's deadlines with its shared pods. A live run's pods are
//! never touched.

use super::*;
use crate::cluster::lease::{LeaseRecord, LeaseRule};
use k8s_openapi::api::coordination::v1::Lease;

/// One of postflight's pods, as the sweep sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPod {
    pub namespace: String,
    pub name: String,
    pub run_id: String,
    pub created: Option<Timestamp>,
    /// `probe pod` or `node shell pod`.
    pub what: &'static str,
}

/// The reboot lock as the sweep judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Absent, or released.
    Free,
    /// Held by a run that may be alive.
    Live { holder: String },
    /// Its holder stopped renewing it longer ago than its duration and the skew.
    Dead { holder: String, renewed: Timestamp },
}

/// The run id a lease holder names (`postflight@HOST pid N run ID`), if it is one of ours.
pub fn holder_run_id(holder: &str) -> Option<&str> {
    holder
        .starts_with("postflight@")
        .then(|| holder.rsplit_once(" run ").map(|(_, id)| id))
        .flatten()
        .filter(|id| !id.is_empty())
}

/// Judges the lease at `now` by `rule` alone: a sweep acts before it has watched anything.
pub fn lease_state(lease: Option<&Lease>, now: Timestamp, rule: &LeaseRule) -> LeaseState {
    let Some(record) = lease.map(LeaseRecord::of) else {
        return LeaseState::Free;
    };
    if record.holder.is_empty() {
        return LeaseState::Free;
    }
    let stale_after = record.duration(rule) + rule.clock_skew;
    match record.renewed_at() {
        Some(renewed)
            if Duration::try_from(now.duration_since(renewed))
                .is_ok_and(|age| age > stale_after) =>
        {
            LeaseState::Dead {
                holder: record.holder,
                renewed,
            }
        }
        _ => LeaseState::Live {
            holder: record.holder,
        },
    }
}

/// What a sweep deletes, each with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepPlan {
    pub pods: Vec<(RunPod, String)>,
    /// Free the lease: its holder is dead.
    pub free_lease: bool,
}

/// Decides what of `pods` and the lease is certainly dead at `now`.
pub fn plan_sweep(
    pods: &[RunPod],
    lease: &LeaseState,
    now: Timestamp,
    longest_run: Duration,
    clock_skew: Duration,
) -> SweepPlan {
    let dead_run = match lease {
        LeaseState::Dead { holder, renewed } => holder_run_id(holder).map(|id| {
            (
                id,
                format!("its run {id} held the reboot lock and stopped renewing it at {renewed}"),
            )
        }),
        _ => None,
    };
    let someone_live = matches!(lease, LeaseState::Live { .. });
    let old_after = longest_run + clock_skew;
    let mut plan = SweepPlan {
        pods: Vec::new(),
        free_lease: matches!(lease, LeaseState::Dead { .. }),
    };
    for pod in pods {
        if let Some((id, why)) = &dead_run {
            if pod.run_id == *id {
                plan.pods.push((pod.clone(), why.clone()));
                continue;
            }
        }
        let age = pod
            .created
            .and_then(|created| Duration::try_from(now.duration_since(created)).ok());
        if let Some(age) = age.filter(|age| *age > old_after && !someone_live) {
            plan.pods.push((
                pod.clone(),
                format!(
                    "created {} ago, longer than any run can last ({})",
                    humantime::format_duration(Duration::from_secs(age.as_secs())),
                    humantime::format_duration(longest_run)
                ),
            ));
        }
    }
    plan
}

/// The pods of postflight's runs in `namespace`.
async fn run_pods(
    cluster: &Cluster,
    namespace: &str,
    what: &'static str,
    app: Option<&str>,
) -> Result<Vec<RunPod>, cluster::ClusterError> {
    let mut selector = format!(
        "{}={},{}",
        cluster::MANAGED_BY_LABEL.0,
        cluster::MANAGED_BY_LABEL.1,
        cluster::probes::RUN_LABEL
    );
    if let Some(app) = app {
        selector.push_str(&format!(",app.kubernetes.io/name={app}"));
    }
    let params = kube::api::ListParams::default().labels(&selector);
    let pods = match cluster.pods(namespace).list_metadata(&params).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(error) => {
            return Err(cluster::api_error(format!(
                "listing postflight's pods in {namespace}"
            ))(error))
        }
    };
    Ok(pods
        .into_iter()
        .filter_map(|pod| {
            let meta = pod.metadata;
            let run_id = meta.labels?.get(cluster::probes::RUN_LABEL)?.clone();
            Some(RunPod {
                namespace: namespace.to_string(),
                name: meta.name?,
                run_id,
                created: meta.creation_timestamp.map(|t| t.0),
                what,
            })
        })
        .collect())
}

/// Finds and deletes what dead runs left (see the module), and returns what it did, one
/// line each, for the report's notes.
///
/// # Errors
/// The API refused to list or read; what was deleted before is said in the error.
pub(super) async fn sweep(cluster: &Cluster, inventory: &Inventory) -> Result<Vec<String>, String> {
    let settings = &inventory.lock;
    let lease = cluster
        .lease(&settings.namespace, &settings.name)
        .await
        .map_err(|e| e.to_string())?;
    let rule = lock::lease_rule(inventory);
    let state = lease_state(lease.as_ref(), Timestamp::now(), &rule);
    let mut pods = run_pods(cluster, &inventory.probe.namespace, "probe pod", None)
        .await
        .map_err(|e| e.to_string())?;
    if inventory.uses_node_shell() {
        pods.extend(
            run_pods(
                cluster,
                &inventory.node_shell.namespace,
                "node shell pod",
                Some(crate::node_shell::SHELL_POD_APP),
            )
            .await
            .map_err(|e| e.to_string())?,
        );
    }
    let plan = plan_sweep(
        &pods,
        &state,
        Timestamp::now(),
        longest_run(inventory),
        settings.clock_skew,
    );
    let mut said = Vec::new();
    for (pod, why) in plan.pods {
        // A node shell's privileged process is given its second to stop, as its spec
        // asks; a probe pod holds nothing.
        let grace = if pod.what == "node shell pod" { 1 } else { 0 };
        match cluster.delete_pod(&pod.namespace, &pod.name, grace).await {
            Ok(()) => said.push(format!(
                "deleted {} {}/{} left by a run that is gone: {why}",
                pod.what, pod.namespace, pod.name
            )),
            Err(error) => said.push(format!(
                "could not delete {} {}/{} left by a run that is gone ({why}): {error}",
                pod.what, pod.namespace, pod.name
            )),
        }
    }
    if let (true, LeaseState::Dead { holder, renewed }) = (plan.free_lease, &state) {
        match cluster
            .free_dead_lease(&settings.namespace, &settings.name, holder)
            .await
        {
            Ok(true) => said.push(format!(
                "freed the reboot lock {}/{}, left held by {holder}, last renewed at {renewed}",
                settings.namespace, settings.name
            )),
            Ok(false) => {}
            Err(error) => said.push(format!(
                "could not free the reboot lock left by {holder}: {error}"
            )),
        }
    }
    Ok(said)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use rstest::rstest;

    const RULE: LeaseRule = LeaseRule {
        default_duration: Duration::from_secs(300),
        clock_skew: Duration::from_secs(60),
    };
    const LONGEST: Duration = Duration::from_secs(1800);
    const SKEW: Duration = Duration::from_secs(60);

    fn now() -> Timestamp {
        "2026-11-26T12:00:00Z".parse().unwrap()
    }

    fn ago(seconds: u64) -> Timestamp {
        now().checked_sub(Duration::from_secs(seconds)).unwrap()
    }

    fn pod(name: &str, run: &str, age: u64) -> RunPod {
        RunPod {
            namespace: "postflight-probe".into(),
            name: name.into(),
            run_id: run.into(),
            created: Some(ago(age)),
            what: "probe pod",
        }
    }

    fn lease(holder: &str, renewed_ago: u64) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(ago(renewed_ago))),
                lease_duration_seconds: Some(300),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const DEAD: &str = "postflight@ci-3 pid 77 run deadbeef";
    const LIVE: &str = "postflight@ci-4 pid 78 run 0a11fe00";

    #[rstest]
    #[case::absent(None, "free")]
    #[case::renewed_a_minute_ago(Some(lease(LIVE, 60)), "live")]
    #[case::within_duration_and_skew(Some(lease(LIVE, 359)), "live")]
    #[case::past_duration_and_skew(Some(lease(DEAD, 361)), "dead")]
    #[case::released(Some(lease("", 9999)), "free")]
    fn the_lease_is_judged_by_its_renew_time(#[case] lease: Option<Lease>, #[case] state: &str) {
        let judged = lease_state(lease.as_ref(), now(), &RULE);
        let said = match judged {
            LeaseState::Free => "free",
            LeaseState::Live { .. } => "live",
            LeaseState::Dead { .. } => "dead",
        };
        assert_eq!(said, state, "{judged:?}");
    }

    fn names(plan: &SweepPlan) -> Vec<&str> {
        plan.pods.iter().map(|(pod, _)| pod.name.as_str()).collect()
    }

    #[test]
    fn a_dead_holders_pods_go_at_once_and_its_lease_is_freed() {
        let pods = [
            pod("pf-deadbeef-a", "deadbeef", 400),
            pod("pf-cafe-a", "cafe0000", 30),
        ];
        let state = lease_state(Some(&lease(DEAD, 400)), now(), &RULE);
        let plan = plan_sweep(&pods, &state, now(), LONGEST, SKEW);
        assert_eq!(names(&plan), ["pf-deadbeef-a"]);
        assert!(plan.free_lease);
        assert!(
            plan.pods[0].1.contains("its run deadbeef held the reboot lock and stopped renewing it at 2026-11-26T11:53:20Z"),
            "{plan:?}"
        );
    }

    #[test]
    fn old_pods_go_only_while_no_live_run_holds_the_lock() {
        let pods = [
            pod("pf-old", "0ld00000", 1800 + 61),
            pod("pf-young", "y0un9000", 1800 + 59),
        ];
        let free = plan_sweep(&pods, &LeaseState::Free, now(), LONGEST, SKEW);
        assert_eq!(names(&free), ["pf-old"]);
        assert!(!free.free_lease);
        assert!(
            free.pods[0]
                .1
                .contains("longer than any run can last (30m)"),
            "{free:?}"
        );
        // A live holder may be a rolling update whose shared pods outlive one node's
        // deadlines: nothing is swept by age then.
        let live = lease_state(Some(&lease(LIVE, 10)), now(), &RULE);
        let plan = plan_sweep(&pods, &live, now(), LONGEST, SKEW);
        assert_eq!(plan, SweepPlan::default());
    }

    #[test]
    fn a_live_holders_pods_are_never_touched() {
        let pods = [pod("pf-0a11fe00-a", "0a11fe00", 99_999)];
        let live = lease_state(Some(&lease(LIVE, 10)), now(), &RULE);
        assert!(plan_sweep(&pods, &live, now(), LONGEST, SKEW)
            .pods
            .is_empty());
    }

    #[test]
    fn a_pod_without_a_creation_time_is_not_judged_by_age() {
        let mut unknown = pod("pf-x", "x", 0);
        unknown.created = None;
        assert!(
            plan_sweep(&[unknown], &LeaseState::Free, now(), LONGEST, SKEW)
                .pods
                .is_empty()
        );
    }

    #[rstest]
    #[case::ours("postflight@ci-3 pid 77 run deadbeef", Some("deadbeef"))]
    #[case::a_hostname_with_run_in_it("postflight@run host pid 77 run deadbeef", Some("deadbeef"))]
    #[case::not_ours("another pipeline", None)]
    #[case::no_id("postflight@ci pid 7 run ", None)]
    fn the_holder_names_its_run(#[case] holder: &str, #[case] run: Option<&str>) {
        assert_eq!(holder_run_id(holder), run);
    }

    const LEASE_PATH: &str =
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/postflight-reboot-lock";

    /// A cluster where run deadbeef died holding the lock an hour ago, leaving a probe
    /// pod, and run 0a11fe00 has a young probe pod; deleting the young one would fail.
    fn api(method: &str, path: &str) -> (u16, String) {
        let renewed = Timestamp::now()
            .checked_sub(Duration::from_secs(3600))
            .unwrap();
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "postflight-reboot-lock", "namespace": "kube-system", "resourceVersion": "9"},
            "spec": {"holderIdentity": DEAD, "leaseDurationSeconds": 300, "renewTime": MicroTime(renewed)},
        });
        let pod = |name: &str, run: &str| {
            serde_json::json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": name, "namespace": "postflight-probe",
                             "creationTimestamp": Timestamp::now().to_string(),
                             "labels": {"app.kubernetes.io/managed-by": "postflight", "postflight.io/run": run}},
            })
        };
        match (method, path) {
            ("GET" | "PUT", LEASE_PATH) => (200, lease.to_string()),
            ("GET", "/api/v1/namespaces/postflight-probe/pods") => (
                200,
                serde_json::json!({
                    "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {},
                    "items": [pod("pf-deadbeef-a", "deadbeef"), pod("pf-0a11fe00-a", "0a11fe00")],
                })
                .to_string(),
            ),
            ("DELETE", "/api/v1/namespaces/postflight-probe/pods/pf-deadbeef-a") => (
                200,
                serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pf-deadbeef-a"}})
                    .to_string(),
            ),
            _ => (500, crate::cluster::mock::status_json(500, "InternalError", &format!("not this: {method} {path}"))),
        }
    }

    #[tokio::test]
    async fn a_dead_runs_pods_are_deleted_its_lease_freed_and_both_said() {
        let inventory = Inventory::parse(
            "ssh:\n  known_hosts: k\nnodes:\n  - name: a\n    host: 198.18.0.11\n",
            std::path::Path::new("/inventory.yaml"),
        )
        .unwrap();
        let said = sweep(&crate::cluster::mock::mocked(api), &inventory)
            .await
            .unwrap();
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(
            said[0].starts_with("deleted probe pod postflight-probe/pf-deadbeef-a left by a run that is gone: its run deadbeef held the reboot lock"),
            "{said:?}"
        );
        assert!(
            said[1].starts_with("freed the reboot lock kube-system/postflight-reboot-lock, left held by postflight@ci-3 pid 77 run deadbeef, last renewed at "),
            "{said:?}"
        );
    }
}
