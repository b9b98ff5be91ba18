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

/// Who holds a lease that is not ours, when they last renewed it, and how long it stays
/// theirs without a renewal, by this machine's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub identity: String,
    /// The holder's own `renewTime`, as it wrote it (its clock, not ours).
    pub renewed_at: Option<Timestamp>,
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

/// How this run judges a lease someone else holds: the duration it counts for when the
/// lease states none, and how far the holder's clock may be from ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRule {
    /// A lease without `leaseDurationSeconds` is held this long (the inventory's
    /// `lock.duration`): a holder that wrote none still holds it.
    pub default_duration: Duration,
    /// How far apart two runners' wall clocks may be (`lock.clock_skew`): a `renewTime`
    /// older than the lease's duration and this much more frees it.
    pub clock_skew: Duration,
}

/// The part of a lease that changes when its holder renews, hands over or releases it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: String,
    renew_time: Option<Timestamp>,
    acquire_time: Option<Timestamp>,
    transitions: Option<i32>,
    /// As the lease states it; None when it states none (or a non-positive one).
    duration: Option<Duration>,
}

impl LeaseRecord {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        LeaseRecord {
            holder: spec.holder_identity.unwrap_or_default(),
            renew_time: spec.renew_time.map(|t| t.0),
            acquire_time: spec.acquire_time.map(|t| t.0),
            transitions: spec.lease_transitions,
            duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
        }
    }

    /// How long the lease stays its holder's without a renewal.
    pub fn duration(&self, rule: &LeaseRule) -> Duration {
        self.duration.unwrap_or(rule.default_duration)
    }

    /// The holder's last `renewTime`.
    pub fn renewed_at(&self) -> Option<Timestamp> {
        self.renew_time
    }
}

/// What this run has seen of the lease, and when it last saw it change, by its own
/// monotonic clock.
///
/// A held lease is free once either says so:
/// - its `renewTime` is older, by this machine's wall clock, than its duration plus the
///   clock-skew allowance: its holder stopped renewing long ago (SIGKILLed, OOM-killed),
///   however recently this run first looked;
/// - or, as client-go's leader election decides it, its record has stood unchanged for
///   its whole duration since this run first saw it so. That needs no clock agreement
///   at all, and frees a lease whose holder's clock runs ahead of ours.
///
/// A holder whose clock is behind ours by more than the allowance may lose its lease
/// early; the allowance (a minute by default) is what keeps runners with a sane NTP
/// setup well clear of that.
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

    /// Who holds the lease at `now` (monotonic) and `wall_now` (this machine's clock):
    /// None when it is released, when its `renewTime` is older than its duration and the
    /// skew allowance, or when its record has not changed for its whole duration since
    /// this run saw it change.
    pub fn holder(
        &self,
        now: std::time::Instant,
        wall_now: Timestamp,
        rule: &LeaseRule,
    ) -> Option<LeaseHolder> {
        let record = self.record.as_ref().filter(|r| !r.holder.is_empty())?;
        let duration = record.duration(rule);
        let observed_free_in = (self.changed_at? + duration).saturating_duration_since(now);
        let free_in = match record.renew_time {
            Some(renewed) => {
                let stale_after = duration + rule.clock_skew;
                let age = wall_now.duration_since(renewed);
                // A renewTime in our future (the holder's clock is ahead): its age is
                // negative, and only our own observation can free it.
                let age = Duration::try_from(age).unwrap_or(Duration::ZERO);
                observed_free_in.min(stale_after.saturating_sub(age))
            }
            None => observed_free_in,
        };
        (!free_in.is_zero()).then(|| LeaseHolder {
            identity: record.holder.clone(),
            renewed_at: record.renew_time,
            free_in,
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
        rule: &LeaseRule,
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
            .holder(std::time::Instant::now(), Timestamp::now(), rule)
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

    /// The lease as it is now, if it exists.
    ///
    /// # Errors
    /// The API refuses to read it.
    pub async fn lease(&self, namespace: &str, name: &str) -> Result<Option<Lease>, ClusterError> {
        self.leases(namespace)
            .get_opt(name)
            .await
            .map_err(api_error(format!("reading lease {namespace}/{name}")))
    }

    /// Frees a lease whose holder is dead, if it still names `dead_holder` as read: the
    /// write carries the resourceVersion read, so a lease that a live run took meanwhile
    /// is never touched. Whether it was freed.
    ///
    /// # Errors
    /// The API refuses to read or write it.
    pub async fn free_dead_lease(
        &self,
        namespace: &str,
        name: &str,
        dead_holder: &str,
    ) -> Result<bool, ClusterError> {
        let api = self.leases(namespace);
        let action = format!("freeing lease {namespace}/{name}");
        let Some(mut lease) = api.get_opt(name).await.map_err(api_error(action.clone()))? else {
            return Ok(false);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(dead_holder) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        match api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(error) if conflict(&error) => Ok(false),
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
    use rstest::rstest;
    use std::time::Instant;

    const RULE: LeaseRule = LeaseRule {
        default_duration: Duration::from_secs(300),
        clock_skew: Duration::from_secs(60),
    };

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

    fn at(wall: &str) -> Timestamp {
        wall.parse().unwrap()
    }

    /// When a lease someone else holds counts as free, by its `renewTime` against our
    /// wall clock (duration + skew), the moment we first see it.
    #[rstest]
    #[case::renewed_just_now("2026-11-26T00:00:00Z", 60, Some(120))]
    #[case::within_its_duration("2026-11-25T23:59:30Z", 60, Some(90))]
    #[case::past_its_duration_but_within_the_skew("2026-11-25T23:58:30Z", 60, Some(30))]
    #[case::past_duration_and_skew("2026-11-25T23:57:59Z", 60, None)]
    #[case::a_year_old("2025-11-26T00:00:00Z", 60, None)]
    // The holder's clock ahead of ours: only our own observation frees it.
    #[case::renewed_in_our_future("2026-11-26T00:10:00Z", 60, Some(60))]
    #[case::a_long_lease("2026-11-25T23:00:00Z", 7200, Some(60 + 3600))]
    fn a_lease_is_free_once_its_renew_time_is_older_than_its_duration_and_the_skew(
        #[case] renewed: &str,
        #[case] duration: i32,
        #[case] free_in: Option<u64>,
    ) {
        let now = Instant::now();
        let mut seen = LeaseObservation::default();
        seen.observe(&lease(Some("run-a"), renewed, duration), now);
        let held = seen.holder(now, at("2026-11-26T00:00:00Z"), &RULE);
        let expected_free_in =
            free_in.map(|s| Duration::from_secs(s).min(Duration::from_secs(duration as u64)));
        assert_eq!(
            held.as_ref().map(|h| h.free_in),
            expected_free_in,
            "{held:?}"
        );
        if let Some(held) = held {
            assert_eq!(held.identity, "run-a");
            assert_eq!(held.renewed_at, Some(at(renewed)));
        }
    }

    #[rstest]
    #[case::no_skew_allowed(0, "2026-11-25T23:58:59Z", false)]
    #[case::a_minute(60, "2026-11-25T23:58:59Z", true)]
    #[case::ten_minutes(600, "2026-11-25T23:50:01Z", true)]
    #[case::ten_minutes_past(600, "2026-11-25T23:48:59Z", false)]
    fn the_skew_allowance_is_the_inventorys(
        #[case] skew: u64,
        #[case] renewed: &str,
        #[case] held: bool,
    ) {
        let rule = LeaseRule {
            clock_skew: Duration::from_secs(skew),
            ..RULE
        };
        let now = Instant::now();
        let mut seen = LeaseObservation::default();
        seen.observe(&lease(Some("run-a"), renewed, 60), now);
        assert_eq!(
            seen.holder(now, at("2026-11-26T00:00:00Z"), &rule)
                .is_some(),
            held
        );
    }

    #[test]
    fn a_held_lease_also_frees_after_standing_unchanged_for_its_duration_by_our_clock() {
        let start = Instant::now();
        let wall = at("2026-11-26T00:00:00Z");
        let mut seen = LeaseObservation::default();
        // Its renewTime is in our future (the holder's clock runs ahead): only our own
        // count can free it.
        seen.observe(&lease(Some("run-a"), "2026-11-26T01:00:00Z", 60), start);
        let held = seen
            .holder(start, wall, &RULE)
            .expect("held when first seen");
        assert_eq!(
            (held.identity.as_str(), held.free_in),
            ("run-a", Duration::from_secs(60))
        );
        let later = |s| start + Duration::from_secs(s);
        assert!(seen.holder(later(59), wall, &RULE).is_some());
        assert!(
            seen.holder(later(60), wall, &RULE).is_none(),
            "unchanged for 60 s"
        );
    }

    #[test]
    fn a_renewal_restarts_the_count_and_a_release_frees_it_at_once() {
        let start = Instant::now();
        let wall = at("2026-11-26T00:00:50Z");
        let mut seen = LeaseObservation::default();
        seen.observe(&lease(Some("run-a"), "2026-11-26T00:00:00Z", 60), start);
        let later = start + Duration::from_secs(50);
        seen.observe(&lease(Some("run-a"), "2026-11-26T00:00:50Z", 60), later);
        assert!(
            seen.holder(start + Duration::from_secs(100), wall, &RULE)
                .is_some(),
            "renewed at 50 s"
        );
        seen.observe(
            &lease(Some("run-a"), "2026-11-26T00:00:50Z", 60),
            later + Duration::from_secs(30),
        );
        assert!(
            seen.holder(later + Duration::from_secs(61), wall, &RULE)
                .is_none(),
            "the same record again is no renewal"
        );
        seen.observe(&lease(None, "2026-11-26T00:00:50Z", 60), later);
        assert!(seen.holder(later, wall, &RULE).is_none(), "released");
        seen.observe(&lease(Some(""), "2026-11-26T00:00:50Z", 60), later);
        assert!(seen.holder(later, wall, &RULE).is_none(), "released");
    }

    /// A lease that states no duration (or 0, or a negative one) is not free at once: it
    /// is held for the inventory's `lock.duration`.
    #[rstest]
    #[case::none(None)]
    #[case::zero(Some(0))]
    #[case::negative(Some(-5))]
    fn a_lease_without_a_duration_is_held_for_the_inventorys(#[case] duration: Option<i32>) {
        let now = Instant::now();
        let wall = at("2026-11-26T00:00:00Z");
        let mut lease = lease(Some("run-a"), "2026-11-25T23:58:00Z", 1);
        lease.spec.as_mut().unwrap().lease_duration_seconds = duration;
        let mut seen = LeaseObservation::default();
        seen.observe(&lease, now);
        let held = seen.holder(now, wall, &RULE).expect("held");
        // 300 s of duration from our first look; by renewTime, 300 + 60 - 120.
        assert_eq!(held.free_in, Duration::from_secs(240));
        let later = Duration::from_secs(240);
        assert!(seen
            .holder(now + later, wall.checked_add(later).unwrap(), &RULE)
            .is_none());
        // Without a renewTime either, our own count alone.
        lease.spec.as_mut().unwrap().renew_time = None;
        let mut seen = LeaseObservation::default();
        seen.observe(&lease, now);
        assert_eq!(
            seen.holder(now, wall, &RULE).map(|h| h.free_in),
            Some(Duration::from_secs(300))
        );
    }
}
