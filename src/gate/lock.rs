//! Taking, keeping and giving back the cluster-wide reboot lock (a Lease, see
//! `cluster::lease`) around a reboot. The gate holds it from before the preflight to the
//! last verdict, renews it every third of its duration, and releases it on every exit
//! path, Ctrl-C included; a run killed outright loses it when the lease expires.

use super::*;
use crate::cluster::lease::LeaseAttempt;
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
        self.cluster
            .release_lease(&self.namespace, &self.name, &self.holder)
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

/// Takes the lock, waiting (on watch events and on the holder's expiry) up to the
/// inventory's `lock.wait`.
///
/// # Errors
/// Another run still holds it when the wait ends (the message names the holder), or the
/// API refuses.
pub async fn acquire(
    cluster: &Cluster,
    inventory: &Inventory,
    holder: &str,
) -> Result<HeldLock, LockError> {
    let settings = &inventory.lock;
    let (namespace, name) = (settings.namespace.as_str(), settings.name.as_str());
    let deadline = Instant::now() + settings.wait;
    loop {
        let attempt = cluster
            .try_acquire_lease(namespace, name, holder, settings.duration)
            .await?;
        let other = match attempt {
            LeaseAttempt::Acquired => break,
            LeaseAttempt::Raced => continue,
            LeaseAttempt::HeldBy(other) => other,
        };
        let now = Instant::now();
        if now >= deadline {
            let until = other
                .expires
                .map(|t| format!(" (until {t} unless renewed)"))
                .unwrap_or_default();
            return Err(LockError::Held {
                namespace: namespace.into(),
                name: name.into(),
                holder: other.identity,
                until,
                waited: humantime::format_duration(settings.wait).to_string(),
            });
        }
        let until_expiry = other
            .expires
            .and_then(|t| {
                Duration::try_from(t.duration_since(k8s_openapi::jiff::Timestamp::now())).ok()
            })
            .unwrap_or(settings.duration);
        let wake = (now + until_expiry).min(deadline);
        tokio::select! {
            changed = cluster.lease_changed_hands(namespace, name, &other.identity) => {
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
        settings.duration / 3,
        lost.clone(),
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

async fn renew_until_stopped(
    cluster: Cluster,
    namespace: String,
    name: String,
    holder: String,
    every: Duration,
    lost: Arc<Mutex<Option<String>>>,
) {
    // Renewals happen every third of the lease's duration, so the last good one leaves
    // two more periods before the lease is anybody's.
    let duration = every * 3;
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        loop {
            match cluster.renew_lease(&namespace, &name, &holder).await {
                Ok(()) => {
                    renewed = Instant::now();
                    break;
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
                    return;
                }
            }
        }
    }
}
