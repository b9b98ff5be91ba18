//! Taking, keeping and giving back the cluster-wide reboot lock (a Lease, see
//! `cluster::lease`) around a reboot. The gate holds it from before the preflight to the
//! last verdict, renews it every third of its duration, and releases it on every exit
//! path, Ctrl-C included; a run killed outright loses it when the lease expires.

use super::*;
use crate::cluster::lease::{LeaseAttempt, LeaseObservation, Renewal};
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
    #[error("the reboot lock {namespace}/{name} is held by {holder}{until}; waited {waited}")]
    Held {
        namespace: String,
        name: String,
        holder: String,
        /// ` (until … unless renewed)`, when the holder's lease says.
        until: String,
        waited: String,
    },
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
}

impl LockError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            LockError::Held { .. } => ErrorKind::Timeout,
            LockError::Cluster(error) => error.kind(),
        }
    }
}

/// Takes the lock, waiting (on watch events, and until the holder's record has stood
/// unchanged for its duration by this machine's clock) up to the inventory's
/// `lock.wait`. `lost` is cancelled if the hold ever lapses while the run holds it: the
/// run must stop going on at once.
///
/// # Errors
/// Another run still holds it when the wait ends (the message names the holder), or the
/// API refuses.
pub async fn acquire(
    cluster: &Cluster,
    inventory: &Inventory,
    holder: &str,
    lost_signal: CancellationToken,
) -> Result<HeldLock, LockError> {
    let settings = &inventory.lock;
    let (namespace, name) = (settings.namespace.as_str(), settings.name.as_str());
    let deadline = Instant::now() + settings.wait;
    let mut observation = LeaseObservation::default();
    loop {
        let attempt = cluster
            .try_acquire_lease(namespace, name, holder, settings.duration, &mut observation)
            .await?;
        let other = match attempt {
            LeaseAttempt::Acquired => break,
            LeaseAttempt::Raced => continue,
            LeaseAttempt::HeldBy(other) => other,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(LockError::Held {
                namespace: namespace.into(),
                name: name.into(),
                holder: other.identity,
                until: format!(
                    " (free in {} unless renewed)",
                    humantime::format_duration(Duration::from_secs(other.free_in.as_secs()))
                ),
                waited: humantime::format_duration(settings.wait).to_string(),
            });
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
    let renewer = tokio::spawn(renew_until_stopped(
        cluster.clone(),
        namespace.into(),
        name.into(),
        holder.into(),
        settings.duration,
        lost.clone(),
        lost_signal,
    ));
    Ok(HeldLock {
        cluster: cluster.clone(),
        namespace: namespace.into(),
        name: name.into(),
        holder: holder.into(),
        renewer,
        lost,
    })
}

/// Pause between renewal attempts after one failed: the API may be briefly away (a
/// control-plane restart), and the lease is still ours until it expires.
const RENEW_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Renews the lease every third of its duration. A failed renewal (the API away) is
/// retried every second for as long as the lease is still ours — until its whole
/// duration has passed since the last good renewal, after which another run, counting
/// by its own clock, may take it. Then, or at once when the lease names someone else,
/// the hold is lost: `lost` says how, and `lost_signal` stops the run.
async fn renew_until_stopped(
    cluster: Cluster,
    namespace: String,
    name: String,
    holder: String,
    duration: Duration,
    lost: Arc<Mutex<Option<String>>>,
    lost_signal: CancellationToken,
) {
    let every = duration / 3;
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        loop {
            match cluster.renew_lease(&namespace, &name, &holder).await {
                Ok(Renewal::Renewed) => {
                    renewed = Instant::now();
                    break;
                }
                Ok(Renewal::Raced) => continue,
                Ok(Renewal::Lost(how)) => {
                    *lost.lock().expect("lock state") = Some(how);
                    lost_signal.cancel();
                    return;
                }
                Err(error) if renewed.elapsed() + RENEW_RETRY_PAUSE < duration => {
                    tracing::warn!("renewing the reboot lock, retrying: {error}");
                    tokio::time::sleep(RENEW_RETRY_PAUSE).await;
                }
                Err(error) => {
                    *lost.lock().expect("lock state") = Some(format!(
                        "not renewed for {}: {error}",
                        humantime::format_duration(duration)
                    ));
                    lost_signal.cancel();
                    return;
                }
            }
        }
    }
}
