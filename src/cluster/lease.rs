//! The cluster-wide reboot lock: a coordination.k8s.io/v1 Lease, the primitive
//! Kubernetes' own leader election uses. One holder at a time; a holder renews it while
//! it works; a holder that dies without releasing it loses it when `leaseDurationSeconds`
//! pass without a renewal. Every write carries the resourceVersion it read, so two runs
//! racing for a free lease cannot both win: the API answers the loser 409 Conflict.

use super::{api_error, Cluster, ClusterError};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use std::time::Duration;

/// Who holds a lease that is not ours, and until when it is theirs without a renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub identity: String,
    pub expires: Option<Timestamp>,
}

/// What one attempt to take the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAttempt {
    Acquired,
    HeldBy(LeaseHolder),
    /// Someone else wrote the lease between our read and our write: read again.
    Raced,
}

/// Who holds the lease at `now`; None when it is free or expired.
pub fn holder_of(lease: &Lease, now: Timestamp) -> Option<LeaseHolder> {
    let spec = lease.spec.as_ref()?;
    let identity = spec.holder_identity.clone().filter(|h| !h.is_empty())?;
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    let expires = renewed.and_then(|t| t.checked_add(duration).ok());
    // An expired lease has no holder: its holder stopped renewing it (killed, crashed).
    match expires {
        Some(expires) if expires <= now => None,
        _ => Some(LeaseHolder { identity, expires }),
    }
}

fn held_spec(holder: &str, duration: Duration, transitions: i32, acquired: Timestamp) -> LeaseSpec {
    let now = Timestamp::now();
    LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(duration.as_secs().clamp(1, i32::MAX as u64) as i32),
        acquire_time: Some(MicroTime(acquired)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

fn conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

impl Cluster {
    fn leases(&self, namespace: &str) -> Api<Lease> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// One attempt to take the lease for `holder`: creates it when missing, takes it over
    /// when free or expired, and reports who holds it otherwise.
    ///
    /// # Errors
    /// The API refuses to read or write the lease (other than a lost race).
    pub async fn try_acquire_lease(
        &self,
        namespace: &str,
        name: &str,
        holder: &str,
        duration: Duration,
    ) -> Result<LeaseAttempt, ClusterError> {
        let api = self.leases(namespace);
        let now = Timestamp::now();
        let current = api
            .get_opt(name)
            .await
            .map_err(api_error(format!("reading lease {namespace}/{name}")))?;
        let Some(mut lease) = current else {
            let mut lease = Lease::default();
            lease.metadata.name = Some(name.into());
            lease.metadata.namespace = Some(namespace.into());
            lease.spec = Some(held_spec(holder, duration, 0, now));
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(LeaseAttempt::Acquired),
                Err(error) if conflict(&error) => Ok(LeaseAttempt::Raced),
                Err(error) => Err(api_error(format!("creating lease {namespace}/{name}"))(
                    error,
                )),
            };
        };
        if let Some(other) = holder_of(&lease, now).filter(|h| h.identity != holder) {
            return Ok(LeaseAttempt::HeldBy(other));
        }
        let transitions = lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_transitions)
            .unwrap_or(0)
            + 1;
        lease.spec = Some(held_spec(holder, duration, transitions, now));
        match api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(LeaseAttempt::Acquired),
            Err(error) if conflict(&error) => Ok(LeaseAttempt::Raced),
            Err(error) => Err(api_error(format!("taking lease {namespace}/{name}"))(error)),
        }
    }

    /// Returns once the lease is no longer held by `identity` (released, deleted or taken
    /// over), as the watch sees it. An expiry without a write produces no event: the
    /// caller also wakes at the holder's expiry time.
    ///
    /// # Caveats
    /// No deadline of its own: wrap it in [`tokio::time::timeout`].
    pub async fn lease_changed_hands(
        &self,
        namespace: &str,
        name: &str,
        identity: &str,
    ) -> Result<(), ClusterError> {
        let config =
            kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}"));
        let action = format!("watching the reboot lock {namespace}/{name}");
        self.watch_until(&action, self.leases(namespace), config, |leases| {
            let still_held = leases
                .first()
                .and_then(|lease| holder_of(lease, Timestamp::now()))
                .is_some_and(|holder| holder.identity == identity);
            (!still_held).then_some(())
        })
        .await
    }

    /// Renews our hold on the lease.
    ///
    /// # Errors
    /// The lease is gone or held by someone else (our hold lapsed), or the API refuses.
    pub async fn renew_lease(
        &self,
        namespace: &str,
        name: &str,
        holder: &str,
    ) -> Result<(), ClusterError> {
        let api = self.leases(namespace);
        let action = format!("renewing lease {namespace}/{name}");
        let mut lease = api.get(name).await.map_err(api_error(action.clone()))?;
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(holder) {
            let now_held_by = spec
                .holder_identity
                .clone()
                .unwrap_or_else(|| "nobody".into());
            return Err(ClusterError::Exec {
                action,
                reason: format!("the lease is now held by {now_held_by}"),
            });
        }
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        api.replace(name, &PostParams::default(), &lease)
            .await
            .map_err(api_error(action))?;
        Ok(())
    }

    /// Gives the lease up, if it is still ours; another run can take it at once.
    ///
    /// # Errors
    /// The API refuses to read or write the lease.
    pub async fn release_lease(
        &self,
        namespace: &str,
        name: &str,
        holder: &str,
    ) -> Result<(), ClusterError> {
        let api = self.leases(namespace);
        let action = format!("releasing lease {namespace}/{name}");
        let Some(mut lease) = api.get_opt(name).await.map_err(api_error(action.clone()))? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(holder) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        api.replace(name, &PostParams::default(), &lease)
            .await
            .map_err(api_error(action))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_seconds_ago: i64, duration: i32) -> Lease {
        let renewed = Timestamp::now()
            .checked_sub(SignedDuration::from_secs(renewed_seconds_ago))
            .unwrap();
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(duration),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_is_held_until_it_expires_and_free_after() {
        let now = Timestamp::now();
        let held = holder_of(&lease(Some("run-a"), 5, 60), now).expect("held");
        assert_eq!(held.identity, "run-a");
        assert!(
            holder_of(&lease(Some("run-a"), 61, 60), now).is_none(),
            "expired: the holder stopped renewing"
        );
        assert!(holder_of(&lease(None, 5, 60), now).is_none(), "released");
        assert!(
            holder_of(&lease(Some(""), 5, 60), now).is_none(),
            "released"
        );
    }
}
