//! The cluster-wide reboot lock: a coordination.k8s.io/v1 Lease, the primitive
//! Kubernetes' own leader election uses. One holder at a time; a holder renews it while
//! it works; a holder that dies without releasing it loses it when `leaseDurationSeconds`
//! pass without a renewal. Every write carries the resourceVersion it read, so two runs
//! racing for a free lease cannot both win: the API answers the loser 409 Conflict.

use super::{api_error, Cluster, ClusterError};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use std::time::Duration;

/// Who holds a lease that is not ours, and how long it stays theirs without a renewal,
/// by this machine's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub identity: String,
    pub free_in: Duration,
}

/// What one attempt to take the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAttempt {
    Acquired,
    HeldBy(LeaseHolder),
    /// Someone else wrote the lease between our read and our write: read again.
    Raced,
}

/// What one renewal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// Someone wrote the lease between our read and our write.
    Raced,
    /// The lease is gone or names another holder: how.
    Lost(String),
}

/// The part of a lease that changes when its holder renews, hands over or releases it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: String,
    renew_time: Option<Timestamp>,
    acquire_time: Option<Timestamp>,
    transitions: Option<i32>,
    pub duration: Duration,
}

impl LeaseRecord {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        LeaseRecord {
            holder: spec.holder_identity.unwrap_or_default(),
            renew_time: spec.renew_time.map(|t| t.0),
            acquire_time: spec.acquire_time.map(|t| t.0),
            transitions: spec.lease_transitions,
            duration: Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
            ),
        }
    }
}

/// What this run has seen of the lease, and when it last saw it change, by its own
/// monotonic clock. As client-go's leader election decides it: a held lease is free only
/// once its record has stood unchanged for its whole duration since we first saw it so.
/// The holder's `renewTime` is never compared with this machine's wall clock, so clock
/// skew between two runners cannot free a lease early.
#[derive(Debug, Clone, Default)]
pub struct LeaseObservation {
    record: Option<LeaseRecord>,
    changed_at: Option<std::time::Instant>,
}

impl LeaseObservation {
    /// Takes in the lease as read at `now`.
    pub fn observe(&mut self, lease: &Lease, now: std::time::Instant) {
        let record = LeaseRecord::of(lease);
        if self.record.as_ref() != Some(&record) {
            self.record = Some(record);
            self.changed_at = Some(now);
        }
    }

    pub fn record(&self) -> Option<&LeaseRecord> {
        self.record.as_ref()
    }

    /// Who holds the lease at `now`: None when it is released, or when its record has
    /// not changed for its whole duration (its holder stopped renewing: killed, cut off).
    pub fn holder(&self, now: std::time::Instant) -> Option<LeaseHolder> {
        let record = self.record.as_ref().filter(|r| !r.holder.is_empty())?;
        let held_until = self.changed_at? + record.duration;
        (held_until > now).then(|| LeaseHolder {
            identity: record.holder.clone(),
            free_in: held_until - now,
        })
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
        observation: &mut LeaseObservation,
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
        observation.observe(&lease, std::time::Instant::now());
        if let Some(other) = observation
            .holder(std::time::Instant::now())
            .filter(|h| h.identity != holder)
        {
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

    /// Returns once the lease's record differs from `seen` (renewed, handed over,
    /// released, deleted), as the watch sees it: waiting for the lock is a watch, not a
    /// poll. An expiry without a write produces no event: the caller also wakes when the
    /// record would have stood unchanged for its duration.
    ///
    /// # Caveats
    /// No deadline of its own: wrap it in [`tokio::time::timeout`].
    pub async fn lease_record_changed(
        &self,
        namespace: &str,
        name: &str,
        seen: Option<&LeaseRecord>,
    ) -> Result<(), ClusterError> {
        let config =
            kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}"));
        let action = format!("watching the reboot lock {namespace}/{name}");
        self.watch_until(&action, self.leases(namespace), config, |leases| {
            let now = leases.first().map(LeaseRecord::of);
            (now.as_ref() != seen).then_some(())
        })
        .await
    }

    /// Renews our hold on the lease.
    ///
    /// # Errors
    /// The API refuses or does not answer: the hold may still be good, try again.
    pub async fn renew_lease(
        &self,
        namespace: &str,
        name: &str,
        holder: &str,
    ) -> Result<Renewal, ClusterError> {
        let api = self.leases(namespace);
        let action = format!("renewing lease {namespace}/{name}");
        let Some(mut lease) = api.get_opt(name).await.map_err(api_error(action.clone()))? else {
            return Ok(Renewal::Lost(format!(
                "the lease {namespace}/{name} was deleted"
            )));
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(holder) {
            let now_held_by = spec
                .holder_identity
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "nobody".into());
            return Ok(Renewal::Lost(format!(
                "the lease {namespace}/{name} is now held by {now_held_by}"
            )));
        }
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Renewal::Renewed),
            // Written by someone else between our read and our write: read again.
            Err(error) if conflict(&error) => Ok(Renewal::Raced),
            Err(error) => Err(api_error(action)(error)),
        }
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
    use std::time::Instant;

    fn lease(holder: Option<&str>, renewed: &str, duration: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: Some(MicroTime(renewed.parse().unwrap())),
                lease_duration_seconds: Some(duration),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_held_lease_frees_only_after_standing_unchanged_for_its_duration_by_our_clock() {
        let start = Instant::now();
        let mut seen = LeaseObservation::default();
        // Its renewTime is a year in the past by our wall clock: skew, not expiry.
        seen.observe(&lease(Some("run-a"), "2025-11-26T00:00:00Z", 60), start);
        let held = seen.holder(start).expect("held when first seen");
        assert_eq!(
            (held.identity.as_str(), held.free_in),
            ("run-a", Duration::from_secs(60))
        );
        assert!(seen.holder(start + Duration::from_secs(59)).is_some());
        assert!(
            seen.holder(start + Duration::from_secs(60)).is_none(),
            "unchanged for 60 s"
        );
    }

    #[test]
    fn a_renewal_restarts_the_count_and_a_release_frees_it_at_once() {
        let start = Instant::now();
        let mut seen = LeaseObservation::default();
        seen.observe(&lease(Some("run-a"), "2026-11-26T00:00:00Z", 60), start);
        let later = start + Duration::from_secs(50);
        seen.observe(&lease(Some("run-a"), "2026-11-26T00:00:50Z", 60), later);
        assert!(
            seen.holder(start + Duration::from_secs(100)).is_some(),
            "renewed at 50 s"
        );
        seen.observe(
            &lease(Some("run-a"), "2026-11-26T00:00:50Z", 60),
            later + Duration::from_secs(30),
        );
        assert!(
            seen.holder(later + Duration::from_secs(61)).is_none(),
            "the same record again is no renewal"
        );
        seen.observe(&lease(None, "2026-11-26T00:00:50Z", 60), later);
        assert!(seen.holder(later).is_none(), "released");
        seen.observe(&lease(Some(""), "2026-11-26T00:00:50Z", 60), later);
        assert!(seen.holder(later).is_none(), "released");
    }
}
