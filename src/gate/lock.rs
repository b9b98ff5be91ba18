//! Taking, keeping and giving back the cluster-wide reboot lock (a Lease, see
//! `cluster::lease`) around a reboot. The gate holds it from before the preflight to the
//! last verdict, renews it every third of its duration — but never past the longest the
//! run's own work can last — and releases it on every exit path, Ctrl-C included; a run
//! killed outright loses it when the lease expires. A rolling update keeps it from its
//! first node to its last, soaks included.

use super::*;
use crate::cluster::lease::{LeaseAttempt, LeaseHolder, LeaseObservation, LeaseRule, Renewal};
use std::sync::Arc;

/// A lock this run holds. Release it with [`HeldLock::release`]; dropping it only stops
/// the renewals, and the lease then expires on its own.
pub struct HeldLock {
    cluster: Cluster,
    namespace: String,
    name: String,
    holder: String,
    renewer: tokio::task::JoinHandle<()>,
    /// Set by the renewer when the hold lapsed: the report must say so.
    lost: Arc<Mutex<Option<String>>>,
    /// Cancelled by the renewer when the hold lapses.
    lost_signal: CancellationToken,
    /// The renewer renews up to here and no further: past it, the work the lock
    /// protects has overrun every deadline it has, and the lock is let go.
    renew_until: Arc<Mutex<Instant>>,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl HeldLock {
    /// Why the hold lapsed during the run, if it did.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().expect("lock state").clone()
    }

    /// Cancelled when the hold lapses: whoever works under the lock stops then.
    pub fn lost_signal(&self) -> CancellationToken {
        self.lost_signal.clone()
    }

    /// The holder identity the lease names.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Keeps renewing for `work` from now, and no longer: the lock is never held past
    /// the work it protects.
    pub fn hold_for(&self, work: Duration) {
        *self.renew_until.lock().expect("lock state") = Instant::now() + work;
    }

    /// Gives the lock back so that the next run can start at once.
    ///
    /// # Errors
    /// The API refused the release; the lease then expires by its duration.
    pub async fn release(self) -> Result<(), cluster::ClusterError> {
        self.renewer.abort();
        super::verify::while_unreachable(&self.cluster, || {
            self.cluster
                .release_lease(&self.namespace, &self.name, &self.holder)
        })
        .await
    }
}

/// Who this run is, as the lease names its holder: enough for an operator to find it.
pub fn holder_identity(run_id: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_else(|_| "unknown-host".into());
    format!(
        "postflight@{} pid {} run {run_id}",
        host.trim(),
        std::process::id()
    )
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the reboot lock {namespace}/{name} is held by {holder} ({renewed}; {frees}); waited {waited}. If that run is gone, free the lock now: `{delete}`")]
    Held {
        namespace: String,
        name: String,
        holder: String,
        /// When the holder last renewed it, as its lease says.
        renewed: String,
        /// When it frees unless renewed, by this machine's clock.
        frees: String,
        waited: String,
        /// The command that frees it, quoted for a shell.
        delete: String,
    },
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
}

/// The command that deletes the lock's Lease, each word quoted for a POSIX shell.
pub fn delete_lease_command(namespace: &str, name: &str) -> String {
    let quote = |word: &str| shell_escape::unix::escape(word.into()).into_owned();
    format!(
        "kubectl -n {} delete lease {}",
        quote(namespace),
        quote(name)
    )
}

/// Whole seconds, for a person.
fn seconds(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(duration.as_secs()))
}

/// The refusal of a run that waited `waited` for a lock `other` still holds at
/// `wall_now`.
fn held_error(
    namespace: &str,
    name: &str,
    other: LeaseHolder,
    wall_now: Timestamp,
    waited: Duration,
) -> LockError {
    let renewed = match other.renewed_at {
        Some(at) => {
            let ago = Duration::try_from(wall_now.duration_since(at)).unwrap_or_default();
            format!("renewed at {at}, {} ago", seconds(ago))
        }
        None => "no renewTime".into(),
    };
    let frees_at = wall_now
        .checked_add(Duration::from_secs(other.free_in.as_secs()))
        .map(|t| t.to_string())
        .unwrap_or_default();
    LockError::Held {
        namespace: namespace.into(),
        name: name.into(),
        holder: other.identity,
        renewed,
        frees: format!(
            "frees at {frees_at}, in {}, unless renewed",
            seconds(other.free_in)
        ),
        waited: humantime::format_duration(waited).to_string(),
        delete: delete_lease_command(namespace, name),
    }
}

/// How this run judges a lease someone else holds, from the inventory.
pub fn lease_rule(inventory: &Inventory) -> LeaseRule {
    LeaseRule {
        default_duration: inventory.lock.duration,
        clock_skew: inventory.lock.clock_skew,
    }
}

impl LockError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            LockError::Held { .. } => ErrorKind::Timeout,
            LockError::Cluster(error) => error.kind(),
        }
    }
}

/// Takes the lock, waiting (on watch events, until the holder's `renewTime` is older
/// than its duration and the clock-skew allowance, or until its record has stood
/// unchanged for its duration by this machine's clock) up to the inventory's
/// `lock.wait`. It is renewed for `work` from when it is taken, and no longer (see
/// [`HeldLock::hold_for`]). `lost_signal` is cancelled if the hold ever lapses while the
/// run holds it: the run must stop going on at once.
///
/// # Errors
/// Another run still holds it when the wait ends (the message names the holder, its
/// renewTime, when it frees and how to delete it), or the API refuses.
pub async fn acquire(
    cluster: &Cluster,
    inventory: &Inventory,
    holder: &str,
    work: Duration,
    lost_signal: CancellationToken,
) -> Result<HeldLock, LockError> {
    let settings = &inventory.lock;
    let (namespace, name) = (settings.namespace.as_str(), settings.name.as_str());
    let rule = lease_rule(inventory);
    let deadline = Instant::now() + settings.wait;
    let mut observation = LeaseObservation::default();
    loop {
        let attempt = cluster
            .try_acquire_lease(
                namespace,
                name,
                holder,
                settings.duration,
                &rule,
                &mut observation,
            )
            .await?;
        let other = match attempt {
            LeaseAttempt::Acquired => break,
            LeaseAttempt::Raced => continue,
            LeaseAttempt::HeldBy(other) => other,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(held_error(
                namespace,
                name,
                other,
                Timestamp::now(),
                settings.wait,
            ));
        }
        let wake = (now + other.free_in).min(deadline);
        tokio::select! {
            changed = cluster.lease_record_changed(namespace, name, observation.record()) => {
                changed?;
            }
            () = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    let lost = Arc::new(Mutex::new(None));
    let renew_until = Arc::new(Mutex::new(Instant::now() + work));
    let renewer = tokio::spawn(renew_until_stopped(
        Renewer {
            cluster: cluster.clone(),
            namespace: namespace.into(),
            name: name.into(),
            holder: holder.into(),
            duration: settings.duration,
            renew_until: renew_until.clone(),
        },
        lost.clone(),
        lost_signal.clone(),
    ));
    Ok(HeldLock {
        cluster: cluster.clone(),
        namespace: namespace.into(),
        name: name.into(),
        holder: holder.into(),
        renewer,
        lost,
        lost_signal,
        renew_until,
    })
}

/// A rolling update's hold on the lock between its nodes: the first node's run takes
/// it, each run hands it back here when it ends instead of releasing it, the next node's
/// run takes it up, and the update releases it after its last node. So a soak keeps
/// every other pipeline from rebooting a node.
#[derive(Default)]
pub struct LockSlot(Mutex<Option<HeldLock>>);

impl LockSlot {
    pub fn take(&self) -> Option<HeldLock> {
        self.0.lock().expect("lock slot").take()
    }

    pub fn put(&self, held: HeldLock) {
        *self.0.lock().expect("lock slot") = Some(held);
    }

    /// Renews what is held for `work` from now (a soak), and says how a loss would be
    /// signalled.
    pub fn hold_for(&self, work: Duration) -> Option<(CancellationToken, String)> {
        let slot = self.0.lock().expect("lock slot");
        slot.as_ref().map(|held| {
            held.hold_for(work);
            (held.lost_signal(), held.holder().to_string())
        })
    }

    /// Why the hold lapsed, if it did.
    pub fn lost(&self) -> Option<String> {
        self.0.lock().expect("lock slot").as_ref()?.lost()
    }

    /// Gives back whatever is held.
    ///
    /// # Errors
    /// As [`HeldLock::release`].
    pub async fn release(&self) -> Result<(), cluster::ClusterError> {
        match self.take() {
            Some(held) => held.release().await,
            None => Ok(()),
        }
    }
}

/// What the renewer renews, and until when.
struct Renewer {
    cluster: Cluster,
    namespace: String,
    name: String,
    holder: String,
    duration: Duration,
    renew_until: Arc<Mutex<Instant>>,
}

/// Pause between renewal attempts after one failed: the API may be briefly away (a
/// control-plane restart), and the lease is still ours until it expires.
const RENEW_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Renews the lease every third of its duration, until the run's own deadline
/// (`renew_until`): a run stuck past every deadline of its work — a transport that never
/// returns — must not keep every other pipeline out. A failed renewal (the API away) is
/// retried every second for as long as the lease is still ours — until its whole
/// duration has passed since the last good renewal, after which another run, counting
/// by its own clock, may take it. Then, or at once when the lease names someone else,
/// or when the deadline passes, the hold is lost: `lost` says how, and `lost_signal`
/// stops the run.
async fn renew_until_stopped(
    renewer: Renewer,
    lost: Arc<Mutex<Option<String>>>,
    lost_signal: CancellationToken,
) {
    let Renewer {
        cluster,
        namespace,
        name,
        holder,
        duration,
        renew_until,
    } = renewer;
    let lose = |how: String| {
        *lost.lock().expect("lock state") = Some(how);
        lost_signal.cancel();
    };
    let every = duration / 3;
    let mut renewed = Instant::now();
    loop {
        let until = *renew_until.lock().expect("lock state");
        tokio::time::sleep_until((Instant::now() + every).min(until).into()).await;
        // The deadline may have been moved on meanwhile (the next node of a rolling
        // update took the lock up): then this is only an early renewal.
        if Instant::now() >= *renew_until.lock().expect("lock state") {
            return lose(format!(
                "the run's own deadline passed with its work unfinished, so the lock is no longer renewed; it frees {} after its last renewal",
                humantime::format_duration(duration)
            ));
        }
        loop {
            match cluster.renew_lease(&namespace, &name, &holder).await {
                Ok(Renewal::Renewed) => {
                    renewed = Instant::now();
                    break;
                }
                Ok(Renewal::Raced) => continue,
                Ok(Renewal::Lost(how)) => return lose(how),
                Err(error) if renewed.elapsed() + RENEW_RETRY_PAUSE < duration => {
                    tracing::warn!("renewing the reboot lock, retrying: {error}");
                    tokio::time::sleep(RENEW_RETRY_PAUSE).await;
                }
                Err(error) => {
                    return lose(format!(
                        "not renewed for {}: {error}",
                        humantime::format_duration(duration)
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::mock::{mocked, status_json};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    const LEASE_PATH: &str =
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/postflight-reboot-lock";
    const LEASES_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";

    #[test]
    fn the_refusal_names_the_holder_its_renew_time_when_it_frees_and_the_delete_command() {
        let renewed: Timestamp = "2026-11-26T00:00:00Z".parse().unwrap();
        let now = renewed.checked_add(Duration::from_secs(30)).unwrap();
        let holder = LeaseHolder {
            identity: "postflight@ci-7 pid 4242 run 0badc0de".into(),
            renewed_at: Some(renewed),
            free_in: Duration::from_millis(90_400),
        };
        let error = held_error(
            "kube-system",
            "postflight-reboot-lock",
            holder,
            now,
            Duration::from_secs(60),
        );
        assert_eq!(
            error.to_string(),
            "the reboot lock kube-system/postflight-reboot-lock is held by postflight@ci-7 pid 4242 run 0badc0de (renewed at 2026-11-26T00:00:00Z, 30s ago; frees at 2026-11-26T00:02:00Z, in 1m 30s, unless renewed); waited 1m. If that run is gone, free the lock now: `kubectl -n kube-system delete lease postflight-reboot-lock`"
        );
        assert_eq!(error.kind(), ErrorKind::Timeout);
        let without = held_error(
            "kube-system",
            "l",
            LeaseHolder {
                identity: "x".into(),
                renewed_at: None,
                free_in: Duration::from_secs(5),
            },
            now,
            Duration::from_secs(1),
        );
        assert!(without.to_string().contains("(no renewTime;"), "{without}");
    }

    #[test]
    fn the_delete_command_quotes_what_a_shell_would_read() {
        assert_eq!(
            delete_lease_command("kube-system", "postflight-reboot-lock"),
            "kubectl -n kube-system delete lease postflight-reboot-lock"
        );
        assert_eq!(
            delete_lease_command("ops team", "lock;$(id)"),
            "kubectl -n 'ops team' delete lease 'lock;$(id)'"
        );
    }

    fn lease_json(renewed: Timestamp) -> String {
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "postflight-reboot-lock", "namespace": "kube-system",
                         "resourceVersion": "7"},
            "spec": {"holderIdentity": "postflight@gone pid 1 run dead", "leaseDurationSeconds": 300,
                     "renewTime": MicroTime(renewed)},
        })
        .to_string()
    }

    fn lease_list(lease: String) -> String {
        format!(
            r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"LeaseList","metadata":{{"resourceVersion":"7"}},"items":[{lease}]}}"#
        )
    }

    /// A lease renewed an hour ago by a run that was killed: an hour is more than its
    /// 300 s and the minute's skew.
    fn stale_lease_api(method: &str, path: &str) -> (u16, String) {
        let renewed = Timestamp::now()
            .checked_sub(Duration::from_secs(3600))
            .unwrap();
        match (method, path) {
            ("GET" | "PUT", LEASE_PATH) => (200, lease_json(renewed)),
            ("GET", LEASES_PATH) => (200, lease_list(lease_json(renewed))),
            _ => (404, status_json(404, "NotFound", "no such thing")),
        }
    }

    /// A lease its holder renewed a moment ago.
    fn live_lease_api(method: &str, path: &str) -> (u16, String) {
        let renewed = Timestamp::now()
            .checked_sub(Duration::from_secs(2))
            .unwrap();
        match (method, path) {
            ("GET", LEASE_PATH) => (200, lease_json(renewed)),
            ("GET", LEASES_PATH) => (200, lease_list(lease_json(renewed))),
            _ => (404, status_json(404, "NotFound", "no such thing")),
        }
    }

    /// A lease that already names this run (as after its takeover): renewals go through.
    fn own_lease_api(method: &str, path: &str) -> (u16, String) {
        let lease = lease_json(Timestamp::now()).replace("postflight@gone pid 1 run dead", HERE);
        match (method, path) {
            ("GET" | "PUT", LEASE_PATH) => (200, lease),
            _ => (404, status_json(404, "NotFound", "no such thing")),
        }
    }

    const HERE: &str = "postflight@here pid 2 run new";

    fn inventory() -> Inventory {
        Inventory::parse(
            "ssh:\n  known_hosts: k\nnodes:\n  - name: a\n    host: 198.18.0.11\nlock:\n  wait: 1s\n",
            std::path::Path::new("/inventory.yaml"),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_lease_whose_holder_stopped_renewing_long_ago_is_taken_over_at_once() {
        let started = Instant::now();
        let held = acquire(
            &mocked(stale_lease_api),
            &inventory(),
            "postflight@here pid 2 run new",
            Duration::from_secs(60),
            CancellationToken::new(),
        )
        .await
        .expect("taken over");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "it did not wait"
        );
        assert_eq!(held.holder(), "postflight@here pid 2 run new");
    }

    #[tokio::test]
    async fn a_lease_renewed_a_moment_ago_is_not_taken_and_the_refusal_says_how_to_free_it() {
        let error = acquire(
            &mocked(live_lease_api),
            &inventory(),
            "postflight@here pid 2 run new",
            Duration::from_secs(60),
            CancellationToken::new(),
        )
        .await
        .err()
        .expect("held");
        let said = error.to_string();
        assert!(
            said.contains("is held by postflight@gone pid 1 run dead (renewed at 20"),
            "{said}"
        );
        assert!(said.contains(", 2s ago; frees at "), "{said}");
        assert!(
            said.ends_with("`kubectl -n kube-system delete lease postflight-reboot-lock`"),
            "{said}"
        );
    }

    /// The renewer's deadline, what it says when it stops, and its stop signal.
    type Renewing = (
        Arc<Mutex<Instant>>,
        Arc<Mutex<Option<String>>>,
        CancellationToken,
    );

    /// Renews a lease of `duration` in the background, as `acquire` does, up to `until`.
    fn renewer(duration: Duration, until: Instant) -> Renewing {
        let renew_until = Arc::new(Mutex::new(until));
        let lost = Arc::new(Mutex::new(None));
        let signal = CancellationToken::new();
        tokio::spawn(renew_until_stopped(
            Renewer {
                cluster: mocked(own_lease_api),
                namespace: "kube-system".into(),
                name: "postflight-reboot-lock".into(),
                holder: HERE.into(),
                duration,
                renew_until: renew_until.clone(),
            },
            lost.clone(),
            signal.clone(),
        ));
        (renew_until, lost, signal)
    }

    /// The renewer stops at the run's own deadline and says so; the run stops with it.
    /// (Milliseconds stand for the minutes of a real lease.)
    #[tokio::test]
    async fn a_run_past_its_own_deadline_stops_renewing_the_lease() {
        let started = Instant::now();
        let (_, lost, signal) = renewer(
            Duration::from_millis(300),
            started + Duration::from_millis(350),
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            !signal.is_cancelled(),
            "renewed up to the deadline: {:?}",
            lost.lock().unwrap()
        );
        tokio::time::timeout(Duration::from_secs(2), signal.cancelled())
            .await
            .expect("the renewals stop");
        assert!(started.elapsed() >= Duration::from_millis(350));
        let how = lost.lock().unwrap().clone().unwrap_or_default();
        assert!(how.contains("the run's own deadline passed"), "{how}");
    }

    #[tokio::test]
    async fn a_deadline_moved_on_keeps_the_renewals_going() {
        let started = Instant::now();
        let (until, lost, signal) = renewer(
            Duration::from_millis(300),
            started + Duration::from_millis(150),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        *until.lock().unwrap() = started + Duration::from_secs(5);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!signal.is_cancelled(), "{:?}", lost.lock().unwrap());
    }
}
