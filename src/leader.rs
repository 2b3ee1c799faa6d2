//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's
//! rules, so that of several replicas only one runs the workers.
//!
//! - A candidate reads the Lease. It takes it when there is none, when it
//!   has no holder (released), or when the record has not changed for the
//!   lease duration as measured on the candidate's own clock since it first
//!   saw that record (clocks of different machines are never compared, so a
//!   candidate that starts while a stale lease exists waits one lease
//!   duration). Writes carry the resourceVersion that was read, so of two
//!   candidates only one wins (the other gets 409 Conflict).
//! - The leader renews every retry period. If it has not renewed for the
//!   renew deadline (shorter than the lease duration, so it stops before
//!   anyone may take over), or finds the lease held by someone else, it has
//!   lost: [`LeaderElection::run`] returns [`LostLease`] and the process
//!   exits non-zero, as client-go's callers do.
//! - On graceful shutdown the leader releases the lease (no holder, a
//!   one-second duration), so a standby takes over at its next retry.
//!
//! [`Elector`] holds the decisions as a pure state machine over a clock the
//! caller passes in; [`LeaderElection`] does the API calls.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube_client::api::PostParams;
use kube_client::{Api, Client};
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Default name of the Lease.
pub const DEFAULT_LEASE_NAME: &str = "bitcoin-controller";
/// Namespace of the Lease when neither the flag nor `POD_NAMESPACE` names one.
pub const DEFAULT_NAMESPACE: &str = "bitcoin-controller";

/// Timing of the election (client-go's defaults for controllers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a lease is valid after its holder last renewed it, as the
    /// other candidates observe it.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up.
    pub renew_deadline: Duration,
    /// Time between two attempts to acquire or renew.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The fields of a Lease the election reads and writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The holder's identity; empty when nobody holds the lease.
    pub holder: String,
    pub lease_duration_seconds: i32,
    pub acquire_time: Option<Timestamp>,
    pub renew_time: Option<Timestamp>,
    pub transitions: i32,
}

impl Record {
    pub fn from_spec(spec: &LeaseSpec) -> Self {
        Self {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            lease_duration_seconds: spec.lease_duration_seconds.unwrap_or_default(),
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or_default(),
        }
    }

    /// The spec to write; other fields of an existing spec are kept.
    pub fn apply_to(&self, spec: &mut LeaseSpec) {
        spec.holder_identity = (!self.holder.is_empty()).then(|| self.holder.clone());
        spec.lease_duration_seconds = Some(self.lease_duration_seconds);
        spec.acquire_time = self.acquire_time.map(MicroTime);
        spec.renew_time = self.renew_time.map(MicroTime);
        spec.lease_transitions = Some(self.transitions);
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.lease_duration_seconds).unwrap_or(0))
    }
}

/// What to do after reading the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write this record: create the Lease if there is none, else update it
    /// with the resourceVersion that was read.
    Write(Record),
    /// Someone else holds the lease; it may be taken after `expires_in` if
    /// it does not change meanwhile.
    Wait {
        holder: String,
        expires_in: Duration,
    },
}

/// The pure part of the election: what this candidate last observed and
/// what it decides from a freshly read record.
#[derive(Debug)]
pub struct Elector {
    identity: String,
    timing: Timing,
    /// The last record seen and when (on our clock) it was first seen.
    observed: Option<(Record, Instant)>,
}

impl Elector {
    pub fn new(identity: String, timing: Timing) -> Self {
        Self {
            identity,
            timing,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Decides from the record just read (`None`: there is no Lease) at
    /// `now` (our clock) and `wall` (the time written into the lease).
    pub fn decide(&mut self, current: Option<&Record>, now: Instant, wall: Timestamp) -> Decision {
        let Some(current) = current else {
            return Decision::Write(self.acquired(None, wall));
        };
        let seen_at = match &self.observed {
            Some((record, at)) if record == current => *at,
            _ => {
                self.observed = Some((current.clone(), now));
                now
            }
        };
        if current.holder == self.identity {
            return Decision::Write(Record {
                renew_time: Some(wall),
                lease_duration_seconds: self.lease_seconds(),
                ..current.clone()
            });
        }
        let expires_at = seen_at + current.duration();
        if !current.holder.is_empty() && now < expires_at {
            return Decision::Wait {
                holder: current.holder.clone(),
                expires_in: expires_at - now,
            };
        }
        Decision::Write(self.acquired(Some(current), wall))
    }

    /// Records that `record` was written at `now`.
    pub fn written(&mut self, record: Record, now: Instant) {
        self.observed = Some((record, now));
    }

    /// The record that releases the lease, if `current` is ours: no holder,
    /// a one-second duration, so the next candidate takes it at once.
    pub fn release(&self, current: &Record, wall: Timestamp) -> Option<Record> {
        (current.holder == self.identity).then(|| Record {
            holder: String::new(),
            lease_duration_seconds: 1,
            acquire_time: Some(wall),
            renew_time: Some(wall),
            transitions: current.transitions,
        })
    }

    fn acquired(&self, previous: Option<&Record>, wall: Timestamp) -> Record {
        Record {
            holder: self.identity.clone(),
            lease_duration_seconds: self.lease_seconds(),
            acquire_time: Some(wall),
            renew_time: Some(wall),
            transitions: previous.map_or(0, |p| p.transitions + 1),
        }
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// This process's identity: `POD_NAME` or the host name, plus a random
/// suffix so that a restarted process is never mistaken for its predecessor.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "bitcoin-controller".to_owned());
    format!("{base}_{:08x}", rand::random::<u32>())
}

/// The namespace of the Lease: `POD_NAMESPACE`, else [`DEFAULT_NAMESPACE`].
pub fn default_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

/// The leader lost its lease; it must stop at once.
#[derive(Debug, thiserror::Error)]
#[error("leader election lost: {0}")]
pub struct LostLease(String);

/// Whether this process may act as the leader, as its election loop last
/// knew it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// Not leading.
    Standby,
    /// Leading, but only until this instant (the last renewal plus the renew
    /// deadline) unless renewed again: by its own clock, a leader that has
    /// not renewed in time may already have been replaced.
    Until(Instant),
    /// No leader election: always leading.
    Always,
}

impl Leadership {
    /// Whether work may start at `now`.
    pub fn is_valid_at(self, now: Instant) -> bool {
        match self {
            Leadership::Standby => false,
            Leadership::Until(until) => now < until,
            Leadership::Always => true,
        }
    }

    /// Waits until work may start; never returns once the sender is gone
    /// while not leading.
    pub async fn wait_valid(rx: &mut watch::Receiver<Leadership>) {
        loop {
            let current = *rx.borrow_and_update();
            if current.is_valid_at(Instant::now()) {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// Result of one attempt.
enum Attempt {
    Leading,
    HeldBy {
        holder: String,
        expires_in: Duration,
    },
}

/// Leader election against the API server.
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    namespace: String,
    elector: Elector,
    timing: Timing,
    /// The Lease as we last wrote it (its resourceVersion guards the release).
    ours: Option<Lease>,
}

impl LeaderElection {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: String,
        timing: Timing,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            elector: Elector::new(identity, timing),
            timing,
            ours: None,
        }
    }

    pub fn identity(&self) -> &str {
        self.elector.identity()
    }

    /// Campaigns until it leads, then publishes in `leading` until when it
    /// leads, after each renewal. Returns
    /// `Ok` after releasing the lease once `release` fires (or at once if it
    /// fires before this process leads), and [`LostLease`] if leadership is
    /// lost.
    pub async fn run(
        mut self,
        leading: watch::Sender<Leadership>,
        release: CancellationToken,
    ) -> Result<(), LostLease> {
        let lease = format!("{}/{}", self.namespace, self.name);
        log::info!(
            "leader election: trying to acquire lease {lease} as {}",
            self.identity()
        );
        let mut last_holder = String::new();
        let mut renewed = loop {
            let started = Instant::now();
            match timeout(self.timing.renew_deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Leading)) => break started,
                Ok(Ok(Attempt::HeldBy { holder, expires_in })) => {
                    if holder != last_holder {
                        log::info!(
                            "leader election: lease {lease} is held by {holder} \
                             (expires in {expires_in:?} unless renewed); standing by"
                        );
                        last_holder = holder;
                    }
                }
                Ok(Err(err)) => log::warn!("leader election: acquiring {lease}: {err}"),
                Err(_) => log::warn!(
                    "leader election: acquiring {lease}: no answer within {:?}",
                    self.timing.renew_deadline
                ),
            }
            let pause = self
                .timing
                .retry_period
                .mul_f64(1.0 + rand::random_range(0.0..0.2));
            tokio::select! {
                _ = release.cancelled() => return Ok(()),
                _ = sleep(pause) => {}
            }
        };
        log::info!(
            "leader election: became leader: acquired lease {lease} as {}",
            self.identity()
        );
        leading.send_replace(Leadership::Until(renewed + self.timing.renew_deadline));
        loop {
            tokio::select! {
                _ = release.cancelled() => {
                    self.release().await;
                    return Ok(());
                }
                _ = sleep(self.timing.retry_period) => {}
            }
            let started = Instant::now();
            let left = self.timing.renew_deadline.saturating_sub(renewed.elapsed());
            match timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Leading)) => {
                    renewed = started;
                    leading.send_replace(Leadership::Until(renewed + self.timing.renew_deadline));
                }
                Ok(Ok(Attempt::HeldBy { holder, .. })) => {
                    return Err(LostLease(format!("lease {lease} is now held by {holder}")))
                }
                Ok(Err(err)) => log::warn!("leader election: renewing {lease}: {err}"),
                Err(_) => log::warn!("leader election: renewing {lease}: no answer in time"),
            }
            if renewed.elapsed() >= self.timing.renew_deadline {
                return Err(LostLease(format!(
                    "lease {lease} not renewed within {:?}",
                    self.timing.renew_deadline
                )));
            }
        }
    }

    /// One read and, if the decision is to write, one create or update.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube_client::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let now = Instant::now();
        let record = current
            .as_ref()
            .map(|l| Record::from_spec(l.spec.as_ref().unwrap_or(&LeaseSpec::default())));
        let wanted = match self.elector.decide(record.as_ref(), now, Timestamp::now()) {
            Decision::Wait { holder, expires_in } => {
                return Ok(Attempt::HeldBy { holder, expires_in })
            }
            Decision::Write(wanted) => wanted,
        };
        let written = match current {
            None => {
                let mut spec = LeaseSpec::default();
                wanted.apply_to(&mut spec);
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await?
            }
            Some(mut lease) => {
                // `replace` sends the resourceVersion that was read: a
                // concurrent writer makes this fail with 409 Conflict.
                wanted.apply_to(lease.spec.get_or_insert_with(LeaseSpec::default));
                lease.metadata.managed_fields = None;
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await?
            }
        };
        self.elector.written(wanted, now);
        self.ours = Some(written);
        Ok(Attempt::Leading)
    }

    /// Gives the lease up so a standby can take it at once. Best effort: on
    /// a conflict someone else already changed it.
    async fn release(&mut self) {
        let Some(mut lease) = self.ours.take() else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let Some(released) = self
            .elector
            .release(&Record::from_spec(spec), Timestamp::now())
        else {
            return;
        };
        released.apply_to(spec);
        lease.metadata.managed_fields = None;
        let params = PostParams::default();
        let call = self.api.replace(&self.name, &params, &lease);
        match timeout(self.timing.renew_deadline, call).await {
            Ok(Ok(_)) => log::info!(
                "leader election: released lease {}/{}",
                self.namespace,
                self.name
            ),
            Ok(Err(err)) => log::warn!("leader election: releasing the lease: {err}"),
            Err(_) => log::warn!("leader election: releasing the lease: no answer in time"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn wall(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn held_by(holder: &str, renewed: i64, transitions: i32) -> Record {
        Record {
            holder: holder.into(),
            lease_duration_seconds: 15,
            acquire_time: Some(wall(0)),
            renew_time: Some(wall(renewed)),
            transitions,
        }
    }

    fn me() -> Elector {
        Elector::new("me".into(), Timing::default())
    }

    #[test]
    fn no_lease_is_created_with_us_as_holder() {
        let t0 = Instant::now();
        let d = me().decide(None, t0, wall(5));
        assert_eq!(
            d,
            Decision::Write(Record {
                holder: "me".into(),
                lease_duration_seconds: 15,
                acquire_time: Some(wall(5)),
                renew_time: Some(wall(5)),
                transitions: 0,
            })
        );
    }

    #[test]
    fn a_lease_nobody_renews_is_taken_after_the_lease_duration_on_our_clock() {
        let t0 = Instant::now();
        let mut e = me();
        // The renew time in the record is far in the past, but only our own
        // clock counts: a first sighting starts the wait.
        let stale = held_by("other", -1000, 3);
        assert_eq!(
            e.decide(Some(&stale), t0, wall(0)),
            Decision::Wait {
                holder: "other".into(),
                expires_in: 15 * S
            }
        );
        assert_eq!(
            e.decide(Some(&stale), t0 + 14 * S, wall(14)),
            Decision::Wait {
                holder: "other".into(),
                expires_in: S
            }
        );
        let Decision::Write(taken) = e.decide(Some(&stale), t0 + 15 * S, wall(15)) else {
            panic!("expected to take over");
        };
        assert_eq!(taken.holder, "me");
        assert_eq!(taken.transitions, 4);
        assert_eq!(taken.acquire_time, Some(wall(15)));
        assert_eq!(taken.renew_time, Some(wall(15)));
    }

    #[test]
    fn every_renewal_restarts_the_wait() {
        let t0 = Instant::now();
        let mut e = me();
        assert!(matches!(
            e.decide(Some(&held_by("other", 0, 0)), t0, wall(0)),
            Decision::Wait { .. }
        ));
        // Renewed at t0+10s: valid until t0+25s.
        let renewed = held_by("other", 10, 0);
        assert_eq!(
            e.decide(Some(&renewed), t0 + 10 * S, wall(10)),
            Decision::Wait {
                holder: "other".into(),
                expires_in: 15 * S
            }
        );
        assert_eq!(
            e.decide(Some(&renewed), t0 + 24 * S, wall(24)),
            Decision::Wait {
                holder: "other".into(),
                expires_in: S
            }
        );
        assert!(matches!(
            e.decide(Some(&renewed), t0 + 25 * S, wall(25)),
            Decision::Write(_)
        ));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let t0 = Instant::now();
        let other = Elector::new("other".into(), Timing::default());
        let released = other
            .release(&held_by("other", 10, 2), wall(11))
            .expect("other holds it");
        assert_eq!(released.holder, "");
        assert_eq!(released.lease_duration_seconds, 1);
        assert_eq!(released.transitions, 2);
        let Decision::Write(taken) = me().decide(Some(&released), t0, wall(11)) else {
            panic!("a lease without holder is free");
        };
        assert_eq!((taken.holder.as_str(), taken.transitions), ("me", 3));
        // And the empty holder round-trips through the API type as absent.
        let mut spec = LeaseSpec::default();
        released.apply_to(&mut spec);
        assert_eq!(spec.holder_identity, None);
        assert_eq!(Record::from_spec(&spec), released);
    }

    #[test]
    fn the_holder_renews_keeping_acquire_time_and_transitions() {
        let t0 = Instant::now();
        let mut e = me();
        let ours = held_by("me", 4, 7);
        let Decision::Write(renewed) = e.decide(Some(&ours), t0, wall(6)) else {
            panic!("we hold it");
        };
        assert_eq!(
            renewed,
            Record {
                renew_time: Some(wall(6)),
                ..ours
            }
        );
    }

    #[test]
    fn only_the_holder_releases() {
        assert_eq!(me().release(&held_by("other", 0, 0), wall(1)), None);
        assert!(me().release(&held_by("me", 0, 0), wall(1)).is_some());
    }

    #[test]
    fn after_writing_the_lease_a_standby_sees_it_from_then_on() {
        // Two candidates alternate on one record store, as the API server
        // would hold it; only one ever leads at a time.
        let t0 = Instant::now();
        let (mut a, mut b) = (
            Elector::new("a".into(), Timing::default()),
            Elector::new("b".into(), Timing::default()),
        );
        let mut store: Option<Record> = None;
        let mut leaders = Vec::new();
        for step in 0..30u32 {
            let now = t0 + step * S;
            let w = wall(i64::from(step));
            // a renews every 2 s until it crashes at 10 s.
            if step < 10 && step % 2 == 0 {
                if let Decision::Write(r) = a.decide(store.as_ref(), now, w) {
                    a.written(r.clone(), now);
                    store = Some(r);
                }
            }
            if step % 2 == 1 {
                if let Decision::Write(r) = b.decide(store.as_ref(), now, w) {
                    b.written(r.clone(), now);
                    store = Some(r);
                }
            }
            leaders.push(store.as_ref().map(|r| r.holder.clone()).unwrap_or_default());
        }
        // a held it from 0 s; its last renewal at 8 s is seen by b at 9 s,
        // so the lease expires for b at 9 + 15 = 24 s; b tries at odd steps: 25 s.
        let first_b = leaders.iter().position(|h| h == "b").unwrap();
        assert_eq!(first_b, 25);
        assert!(leaders[..first_b].iter().all(|h| h == "a"));
        assert_eq!(store.unwrap().transitions, 1);
    }
}
