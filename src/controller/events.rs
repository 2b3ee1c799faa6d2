//! Kubernetes Events about networks (core/v1, as `kubectl describe` shows them).
//!
//! [`Recorder::publish`] never blocks and never fails a reconcile: it puts the
//! occurrence on a bounded queue (dropping it, counted in
//! [`Recorder::dropped`], when the queue is full) and one recorder task,
//! [`RecorderTask::run`], writes them to the API server one after the other.
//! Because one task sees every occurrence in order, correlation is exact even
//! when many workers publish the same event at once.
//!
//! Occurrences are correlated like client-go's `EventCorrelator` does, so a
//! repeating error does not flood the API server:
//!
//! - the per-object spam filter (`EventSourceObjectSpamFilter`): a token
//!   bucket per involved object holding [`SPAM_BURST`] tokens, refilled by one
//!   every [`SPAM_REFILL`]; an occurrence finding no token is dropped (counted
//!   in [`Recorder::filtered`]). Unlike client-go, the filter runs first, so a
//!   dropped occurrence leaves no trace in the counts below.
//! - the aggregator (`EventAggregator`): once an object has had
//!   [`MAX_SIMILAR`] different messages for one type and reason within
//!   [`SIMILAR_WINDOW`], further ones go into a single Event whose message
//!   starts with `(combined from similar events): `.
//! - the deduplication (`eventLogger`): a repeat of the same event (same
//!   object, type, reason and message) patches count+1 and lastTimestamp of
//!   the existing Event instead of creating a new one; if that Event is gone
//!   (Events expire), a new one is created.
//!
//! Every map is bounded by [`MAX_REMEMBERED`] entries (least recently used
//! ones are forgotten first, after entries that carry no information).
//!
//! A failure to write an Event is one WARN line naming the call and the API
//! server's code and message; it is not retried.
//!
//! # Lifecycle
//!
//! ```text
//! let (recorder, task) = Recorder::with_options(client, RecorderOptions::default());
//! let events = tokio::spawn(task.run(stop.clone()));
//! // ... recorder.clone() into the workers ...
//! stop.cancel(); // or drop every Recorder
//! events.await?; // within options.flush_timeout
//! ```
//!
//! The task ends when `stop` is cancelled or when the last [`Recorder`] is
//! dropped; it then writes what is still queued (publishing after that drops)
//! for at most [`RecorderOptions::flush_timeout`], including the write in
//! flight, and forgets the rest.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube_client::api::{Patch, PatchParams, PostParams};
use kube_client::{Api, Client};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::api::BitcoinNetwork;

const COMPONENT: &str = "bitcoin-controller";
/// Upper bound on the entries of each map of the recorder (client-go's
/// `maxLruCacheEntries`).
const MAX_REMEMBERED: usize = 4096;
/// Different messages of one object, type and reason within
/// [`SIMILAR_WINDOW`] before they are combined (client-go's values).
const MAX_SIMILAR: usize = 10;
const SIMILAR_WINDOW: Duration = Duration::from_secs(600);
const COMBINED: &str = "(combined from similar events)";
/// Events one object may get at once (client-go's `defaultSpamBurst`).
const SPAM_BURST: u32 = 25;
/// Time to earn one more (client-go's `defaultSpamQPS`, 1/300).
const SPAM_REFILL: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Tuning of the recorder; the defaults suit the controller.
#[derive(Clone, Debug)]
pub struct RecorderOptions {
    /// Occurrences queued for the recorder task before `publish` drops.
    pub capacity: usize,
    /// Bound on one API call writing an Event.
    pub request_timeout: Duration,
    /// Bound, from the stop, on writing what is still queued.
    pub flush_timeout: Duration,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        RecorderOptions {
            capacity: 1024,
            request_timeout: Duration::from_secs(10),
            flush_timeout: Duration::from_secs(5),
        }
    }
}

/// A map of at most `cap` entries that forgets least recently used ones.
struct Lru<K, V> {
    map: HashMap<K, (u64, V)>,
    tick: u64,
    cap: usize,
}

impl<K: Eq + Hash, V> Lru<K, V> {
    fn new(cap: usize) -> Self {
        Lru {
            map: HashMap::new(),
            tick: 0,
            cap: cap.max(1),
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let tick = self.next_tick();
        self.map.get_mut(key).map(|(used, value)| {
            *used = tick;
            value
        })
    }

    fn remove(&mut self, key: &K) {
        self.map.remove(key);
    }

    /// Makes room for `key` if it is new and the map is full: forgets first
    /// the entries `worthless` says carry no information, then the least
    /// recently used quarter.
    fn make_room(&mut self, key: &K, worthless: impl Fn(&V) -> bool) {
        if self.map.len() < self.cap || self.map.contains_key(key) {
            return;
        }
        self.map.retain(|_, (_, value)| !worthless(value));
        if self.map.len() < self.cap {
            return;
        }
        let mut used: Vec<u64> = self.map.values().map(|(used, _)| *used).collect();
        let forget = (self.cap / 4).clamp(1, used.len());
        let (_, newest_forgotten, _) = used.select_nth_unstable(forget - 1);
        let newest_forgotten = *newest_forgotten;
        self.map.retain(|_, (used, _)| *used > newest_forgotten);
    }

    /// The entry of `key`, made with `make` if there is none (see
    /// [`Lru::make_room`] for `worthless`).
    fn get_or_insert_with(
        &mut self,
        key: K,
        worthless: impl Fn(&V) -> bool,
        make: impl FnOnce() -> V,
    ) -> &mut V {
        self.make_room(&key, worthless);
        let tick = self.next_tick();
        let slot = self.map.entry(key).or_insert_with(|| (tick, make()));
        slot.0 = tick;
        &mut slot.1
    }

    fn insert(&mut self, key: K, value: V) {
        self.make_room(&key, |_| false);
        let tick = self.next_tick();
        self.map.insert(key, (tick, value));
    }
}

/// The dedup key of an Event: (object uid, type, reason, message).
type Key = (String, EventType, &'static str, String);

/// client-go's `EventAggregator`: tracks the different messages of each
/// (object uid, type, reason) while they keep coming within the window.
/// Pure; the caller gives the time.
struct Aggregator {
    similar: Lru<(String, EventType, &'static str), (Instant, HashSet<String>)>,
}

impl Default for Aggregator {
    fn default() -> Self {
        Aggregator {
            similar: Lru::new(MAX_REMEMBERED),
        }
    }
}

impl Aggregator {
    /// The dedup key and the message of the Event this occurrence goes to.
    fn observe(
        &mut self,
        uid: String,
        type_: EventType,
        reason: &'static str,
        message: String,
        now: Instant,
    ) -> (Key, String) {
        let (last, messages) = self.similar.get_or_insert_with(
            (uid.clone(), type_, reason),
            // A closed window is as good as no entry.
            |(last, _)| now.saturating_duration_since(*last) > SIMILAR_WINDOW,
            || (now, HashSet::new()),
        );
        // The window slides: it ends SIMILAR_WINDOW after the latest one.
        if now.saturating_duration_since(*last) > SIMILAR_WINDOW {
            messages.clear();
        }
        *last = now;
        messages.insert(message.clone());
        if messages.len() < MAX_SIMILAR {
            return ((uid, type_, reason, message.clone()), message);
        }
        // Keep the set from growing past the limit (client-go pops any one).
        if let Some(one) = messages.iter().next().cloned() {
            messages.remove(&one);
        }
        (
            (uid, type_, reason, COMBINED.to_owned()),
            format!("{COMBINED}: {message}"),
        )
    }
}

/// A token bucket of the spam filter, with time as its credit: a token costs
/// [`SPAM_REFILL`] and the bucket holds [`SPAM_BURST`] of them (the integer
/// arithmetic of `Duration` keeps it exact). Pure; the caller gives the time.
#[derive(Debug)]
struct TokenBucket {
    credit: Duration,
    last: Instant,
}

const BUCKET_SIZE: Duration = Duration::from_secs(SPAM_REFILL.as_secs() * SPAM_BURST as u64);

impl TokenBucket {
    fn full(now: Instant) -> Self {
        TokenBucket {
            credit: BUCKET_SIZE,
            last: now,
        }
    }

    fn credit_at(&self, now: Instant) -> Duration {
        (self.credit + now.saturating_duration_since(self.last)).min(BUCKET_SIZE)
    }

    fn is_full(&self, now: Instant) -> bool {
        self.credit_at(now) >= BUCKET_SIZE
    }

    /// Takes a token if there is one.
    fn try_take(&mut self, now: Instant) -> bool {
        self.credit = self.credit_at(now);
        self.last = self.last.max(now);
        let taken = self.credit >= SPAM_REFILL;
        if taken {
            self.credit -= SPAM_REFILL;
        }
        taken
    }
}

/// client-go's `EventSourceObjectSpamFilter`: one token bucket per involved
/// object (the source is always this controller). Pure.
struct SpamFilter {
    buckets: Lru<String, TokenBucket>,
}

impl SpamFilter {
    fn new(cap: usize) -> Self {
        SpamFilter {
            buckets: Lru::new(cap),
        }
    }

    fn allow(&mut self, object: String, now: Instant) -> bool {
        self.buckets
            // A full bucket is as good as no entry.
            .get_or_insert_with(object, |b| b.is_full(now), || TokenBucket::full(now))
            .try_take(now)
    }
}

/// One `publish` call, on its way to the recorder task.
struct Occurrence {
    regarding: ObjectReference,
    type_: EventType,
    reason: &'static str,
    message: String,
}

/// `namespace/name` of an involved object, for logs.
fn object_name(regarding: &ObjectReference) -> String {
    format!(
        "{}/{}",
        regarding.namespace.as_deref().unwrap_or_default(),
        regarding.name.as_deref().unwrap_or_default()
    )
}

#[derive(Default)]
struct Counters {
    dropped: AtomicU64,
    filtered: AtomicU64,
    failed: AtomicU64,
}

/// Records Events on BitcoinNetworks: a cheap handle (clone it freely) on
/// the queue of a [`RecorderTask`].
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Occurrence>,
    counters: Arc<Counters>,
    /// Tells the task, when the last handle is dropped, to flush and end.
    _alive: Arc<DropGuard>,
}

impl Recorder {
    /// A recorder with the default options whose task is spawned on the
    /// current runtime and ends, after flushing, when the last handle is
    /// dropped. Prefer [`Recorder::with_options`], which lets the caller stop
    /// the task and wait for it.
    pub fn new(client: Client) -> Self {
        let (recorder, task) = Recorder::with_options(client, RecorderOptions::default());
        tokio::spawn(task.run(CancellationToken::new()));
        recorder
    }

    /// A recorder and the task that writes its Events; the caller runs the
    /// task (e.g. `tokio::spawn(task.run(stop))`). Nothing is written until
    /// it runs.
    pub fn with_options(client: Client, options: RecorderOptions) -> (Recorder, RecorderTask) {
        let (tx, rx) = mpsc::channel(options.capacity.max(1));
        let orphaned = CancellationToken::new();
        let counters = Arc::<Counters>::default();
        let instance = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| COMPONENT.to_owned());
        let recorder = Recorder {
            tx,
            counters: counters.clone(),
            _alive: Arc::new(orphaned.clone().drop_guard()),
        };
        let task = RecorderTask {
            rx,
            orphaned,
            flush_timeout: options.flush_timeout,
            sink: Sink {
                client,
                instance,
                request_timeout: options.request_timeout,
                seen: Lru::new(MAX_REMEMBERED),
                aggregator: Aggregator::default(),
                spam: SpamFilter::new(MAX_REMEMBERED),
                counters,
            },
        };
        (recorder, task)
    }

    /// Queues an Event; never blocks or fails. When the queue is full (or the
    /// task has stopped) the Event is dropped and counted in
    /// [`Recorder::dropped`]. `reason` is CamelCase; `message` must never
    /// contain credentials.
    pub fn publish(
        &self,
        net: &BitcoinNetwork,
        type_: EventType,
        reason: &'static str,
        message: String,
    ) {
        let occurrence = Occurrence {
            regarding: ObjectReference {
                api_version: Some(crate::api::API_VERSION.to_owned()),
                kind: Some(crate::api::KIND.to_owned()),
                name: net.metadata.name.clone(),
                namespace: net.metadata.namespace.clone(),
                uid: net.metadata.uid.clone(),
                resource_version: net.metadata.resource_version.clone(),
                ..ObjectReference::default()
            },
            type_,
            reason,
            message,
        };
        if let Err(err) = self.tx.try_send(occurrence) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            let (why, occurrence) = match err {
                mpsc::error::TrySendError::Full(o) => ("the event queue is full", o),
                mpsc::error::TrySendError::Closed(o) => ("the event recorder has stopped", o),
            };
            log::debug!(
                "event {} on {} dropped: {why}",
                occurrence.reason,
                object_name(&occurrence.regarding)
            );
        }
    }

    /// Events dropped because the queue was full or the task had stopped,
    /// or left unwritten when the task's flush timed out.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Events dropped by the per-object spam filter.
    pub fn filtered(&self) -> u64 {
        self.counters.filtered.load(Ordering::Relaxed)
    }

    /// Events the API server did not take (each logged once at WARN).
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }
}

/// The one task writing the Events of a [`Recorder`] (see the module docs).
pub struct RecorderTask {
    rx: mpsc::Receiver<Occurrence>,
    /// Cancelled when the last [`Recorder`] is dropped.
    orphaned: CancellationToken,
    flush_timeout: Duration,
    sink: Sink,
}

impl RecorderTask {
    /// Writes queued Events in order until `stop` is cancelled or every
    /// [`Recorder`] is dropped, then flushes the queue for at most the flush
    /// timeout and returns.
    pub async fn run(self, stop: CancellationToken) {
        let RecorderTask {
            mut rx,
            orphaned,
            flush_timeout,
            mut sink,
        } = self;
        let mut stopping = pin!(async {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = orphaned.cancelled() => {}
            }
        });
        // Set once stopping: the end of the flush.
        let mut deadline: Option<Instant> = None;
        let mut unwritten = 0;
        loop {
            let next = match deadline {
                None => tokio::select! {
                    biased;
                    () = &mut stopping => {
                        deadline = Some(Instant::now() + flush_timeout);
                        rx.close();
                        continue;
                    }
                    next = rx.recv() => next,
                },
                Some(deadline) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let Some(occurrence) = next else { break };
            let mut record = pin!(sink.record(occurrence));
            if deadline.is_none() {
                tokio::select! {
                    () = &mut record => continue,
                    () = &mut stopping => {
                        deadline = Some(Instant::now() + flush_timeout);
                        rx.close();
                    }
                }
            }
            if let Some(deadline) = deadline {
                if tokio::time::timeout_at(deadline, record).await.is_err() {
                    unwritten += 1;
                    break;
                }
            }
        }
        unwritten += rx.len();
        if unwritten > 0 {
            sink.counters
                .dropped
                .fetch_add(unwritten as u64, Ordering::Relaxed);
            log::warn!("{unwritten} events not recorded: the recorder stopped and could not write them within {flush_timeout:?}");
        }
    }
}

/// Where the API server's answer went wrong, in one line.
#[derive(Debug, PartialEq)]
enum Cause {
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    Timeout(Duration),
    Other(String),
}

impl Cause {
    fn of(err: kube_client::Error) -> Self {
        match err {
            kube_client::Error::Api(status) => Cause::Api {
                code: status.code,
                reason: status.reason,
                message: status.message,
            },
            // Its details may quote an exec plugin's output.
            kube_client::Error::Auth(_) => {
                Cause::Other("could not authenticate to the API server".to_owned())
            }
            other => Cause::Other(other.to_string()),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Api {
                code,
                reason,
                message,
            } => {
                write!(f, "{code}")?;
                if !reason.is_empty() {
                    write!(f, " {reason}")?;
                }
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            Cause::Timeout(after) => write!(f, "no answer within {after:?}"),
            Cause::Other(message) => f.write_str(message),
        }
    }
}

/// A failed call: what was called and why it failed.
#[derive(Debug)]
struct Failure {
    call: String,
    cause: Cause,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.call, self.cause)
    }
}

/// Where an Event went: (namespace, name) and its count.
#[derive(Clone)]
struct Recorded {
    namespace: String,
    name: String,
    count: i32,
}

/// The state of the recorder task: correlation and the API calls.
struct Sink {
    client: Client,
    instance: String,
    request_timeout: Duration,
    seen: Lru<Key, Recorded>,
    aggregator: Aggregator,
    spam: SpamFilter,
    counters: Arc<Counters>,
}

impl Sink {
    async fn record(&mut self, occurrence: Occurrence) {
        let Occurrence {
            regarding,
            type_,
            reason,
            message,
        } = occurrence;
        let object = object_name(&regarding);
        let now = Instant::now();
        let uid = regarding.uid.clone().unwrap_or_default();
        if !self.spam.allow(format!("{object}/{uid}"), now) {
            self.counters.filtered.fetch_add(1, Ordering::Relaxed);
            log::debug!(
                "event {reason} on {object} dropped: over {SPAM_BURST} events for one object, one more every {SPAM_REFILL:?}"
            );
            return;
        }
        let (key, message) = self.aggregator.observe(uid, type_, reason, message, now);
        if let Err(failure) = self.write(regarding, key, message).await {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "could not record {} event {reason} on {object}: {failure}",
                type_.as_str()
            );
        }
    }

    /// Patches the Event of `key` if there is one, else creates it.
    async fn write(
        &mut self,
        regarding: ObjectReference,
        key: Key,
        message: String,
    ) -> Result<(), Failure> {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        if let Some(previous) = self.seen.get_mut(&key).cloned() {
            let api: Api<Event> = Api::namespaced(self.client.clone(), &previous.namespace);
            let count = previous.count.saturating_add(1);
            // A combined Event shows the latest message.
            let patch = json!({"count": count, "lastTimestamp": now, "message": message});
            let patched = self
                .call(api.patch(
                    &previous.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                ))
                .await;
            match patched {
                Ok(_) => {
                    if let Some(recorded) = self.seen.get_mut(&key) {
                        recorded.count = count;
                    }
                    return Ok(());
                }
                // Expired (Events have a TTL): create a new one.
                Err(Cause::Api { code: 404, .. }) => self.seen.remove(&key),
                Err(cause) => {
                    return Err(Failure {
                        call: format!("patching Event {}/{}", previous.namespace, previous.name),
                        cause,
                    })
                }
            }
        }
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!(
                    "{}.",
                    regarding.name.as_deref().unwrap_or(COMPONENT)
                )),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: regarding,
            reason: Some(key.2.to_owned()),
            message: Some(message),
            type_: Some(key.1.as_str().to_owned()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some(COMPONENT.to_owned()),
                host: None,
            }),
            reporting_component: Some(COMPONENT.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let created = self
            .call(api.create(&PostParams::default(), &event))
            .await
            .map_err(|cause| Failure {
                call: format!("creating Event in namespace {namespace}"),
                cause,
            })?;
        if let Some(name) = created.metadata.name {
            self.seen.insert(
                key,
                Recorded {
                    namespace,
                    name,
                    count: 1,
                },
            );
        }
        Ok(())
    }

    async fn call<T>(
        &self,
        request: impl Future<Output = Result<T, kube_client::Error>>,
    ) -> Result<T, Cause> {
        match tokio::time::timeout(self.request_timeout, request).await {
            Ok(answer) => answer.map_err(Cause::of),
            Err(_) => Err(Cause::Timeout(self.request_timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe(a: &mut Aggregator, message: &str, now: Instant) -> (String, String) {
        let (key, message) = a.observe(
            "uid".into(),
            EventType::Warning,
            "NodeSyncFailed",
            message.into(),
            now,
        );
        (key.3, message)
    }

    #[test]
    fn repeats_keep_their_message_and_key() {
        let mut a = Aggregator::default();
        let t0 = Instant::now();
        for i in 0..50 {
            let (key, message) = observe(&mut a, "same", t0 + Duration::from_secs(i));
            assert_eq!((key.as_str(), message.as_str()), ("same", "same"));
        }
    }

    #[test]
    fn many_different_messages_are_combined_into_one_event() {
        let mut a = Aggregator::default();
        let t0 = Instant::now();
        let mut keys = Vec::new();
        for i in 0..MAX_SIMILAR + 5 {
            let (key, message) = observe(&mut a, &format!("error {i}"), t0);
            if i + 1 < MAX_SIMILAR {
                assert_eq!(message, format!("error {i}"));
            } else {
                assert_eq!(message, format!("{COMBINED}: error {i}"));
            }
            keys.push(key);
        }
        keys.sort();
        keys.dedup();
        // Nine Events of their own, then one combined Event for the rest.
        assert_eq!(keys.len(), MAX_SIMILAR);
        // Another object, type or reason is counted apart.
        let (key, _) = a.observe(
            "other".into(),
            EventType::Warning,
            "NodeSyncFailed",
            "error 99".into(),
            t0,
        );
        assert_eq!(key.3, "error 99");
    }

    #[test]
    fn the_window_slides_with_the_latest_event() {
        let mut a = Aggregator::default();
        let mut now = Instant::now();
        for i in 0..MAX_SIMILAR - 1 {
            // Always within the window of the previous one: still counted.
            now += SIMILAR_WINDOW - Duration::from_secs(1);
            assert_eq!(observe(&mut a, &format!("m{i}"), now).0, format!("m{i}"));
        }
        now += SIMILAR_WINDOW - Duration::from_secs(1);
        assert_eq!(observe(&mut a, "one more", now).0, COMBINED);
        // After a quiet window the count starts over.
        now += SIMILAR_WINDOW + Duration::from_secs(1);
        assert_eq!(observe(&mut a, "fresh", now).0, "fresh");
    }

    #[test]
    fn token_bucket_allows_a_burst_then_one_per_refill() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(t0);
        let secs = Duration::from_secs;
        // (time since t0, tries then, of which allowed)
        let table = [
            (secs(0), 30, 25),
            (secs(299), 1, 0),
            (secs(300), 2, 1),
            (secs(300) + secs(2 * 300), 3, 2),
            // Credit never exceeds the burst, however long the pause.
            (secs(86_400), 30, 25),
            (secs(86_400 + 150), 1, 0),
            (secs(86_400 + 300), 1, 1),
        ];
        for (at, tries, allowed) in table {
            let now = t0 + at;
            let got = (0..tries).filter(|_| bucket.try_take(now)).count();
            assert_eq!(got, allowed, "at {at:?}");
        }
        assert!(!bucket.is_full(t0 + secs(86_400 + 300)));
        assert!(bucket.is_full(t0 + secs(86_400 + 300) + BUCKET_SIZE));
    }

    #[test]
    fn spam_filter_counts_each_object_apart() {
        let t0 = Instant::now();
        let mut filter = SpamFilter::new(MAX_REMEMBERED);
        // (object, tries, allowed)
        let table = [
            ("a", 26, 25),
            ("b", 25, 25),
            ("a", 1, 0),
            ("b", 1, 0),
            ("c", 1, 1),
        ];
        for (object, tries, allowed) in table {
            let got = (0..tries)
                .filter(|_| filter.allow(object.into(), t0))
                .count();
            assert_eq!(got, allowed, "{object}");
        }
    }

    #[test]
    fn spam_filter_forgets_full_buckets_first() {
        let t0 = Instant::now();
        let mut filter = SpamFilter::new(4);
        // "spammer" has spent its burst; three quiet objects have full buckets.
        for _ in 0..SPAM_BURST {
            assert!(filter.allow("spammer".into(), t0));
        }
        for object in ["q1", "q2", "q3"] {
            // One token taken: refilled (full again) after SPAM_REFILL.
            assert!(filter.allow(object.into(), t0));
        }
        let later = t0 + SPAM_REFILL;
        // A fifth object makes room: the full buckets go, the spammer's stays.
        assert!(filter.allow("new".into(), later));
        assert_eq!(filter.buckets.map.len(), 2);
        assert!(filter.allow("spammer".into(), later), "one token earned");
        assert!(!filter.allow("spammer".into(), later), "still limited");
    }

    #[test]
    fn lru_forgets_the_least_recently_used_quarter_at_the_cap() {
        let mut lru = Lru::new(8);
        for i in 0..8 {
            lru.insert(i, i);
        }
        // Use 0 and 1 again: 2 and 3 are now the oldest.
        assert!(lru.get_mut(&0).is_some());
        assert!(lru.get_mut(&1).is_some());
        lru.insert(8, 8);
        assert_eq!(lru.map.len(), 7);
        let mut kept: Vec<i32> = lru.map.keys().copied().collect();
        kept.sort();
        assert_eq!(kept, [0, 1, 4, 5, 6, 7, 8]);
        // Updating a known key makes no room.
        lru.insert(8, 80);
        assert_eq!(lru.map.len(), 7);
        assert_eq!(lru.get_mut(&8), Some(&mut 80));
    }

    #[test]
    fn a_failure_is_one_line_with_the_servers_code_and_message() {
        let status = |code, reason: &str, message: &str| {
            kube_client::Error::Api(
                kube_client::core::Status {
                    code,
                    reason: reason.into(),
                    message: message.into(),
                    ..kube_client::core::Status::default()
                }
                .boxed(),
            )
        };
        let table = [
            (
                status(403, "Forbidden", "events is forbidden: User \"x\" cannot create resource \"events\""),
                "creating Event in namespace ns: 403 Forbidden: events is forbidden: User \"x\" cannot create resource \"events\"",
            ),
            (
                status(500, "", ""),
                "creating Event in namespace ns: 500",
            ),
        ];
        for (err, line) in table {
            let failure = Failure {
                call: "creating Event in namespace ns".into(),
                cause: Cause::of(err),
            };
            assert_eq!(failure.to_string(), line);
        }
        let timeout = Failure {
            call: "patching Event ns/n1.a".into(),
            cause: Cause::Timeout(Duration::from_secs(10)),
        };
        assert_eq!(
            timeout.to_string(),
            "patching Event ns/n1.a: no answer within 10s"
        );
    }

    mod api {
        //! The recorder against a mocked API server. Time is paused, so
        //! [`assert_quiet`] returns only once the recorder is idle.

        use super::*;
        use crate::api::BitcoinNetworkSpec;
        use http::{Request, Response, StatusCode};
        use kube_client::client::Body;
        use serde_json::Value;
        use tokio::task::JoinHandle;
        use tower_test::mock;

        type Handle = mock::Handle<Request<Body>, Response<Body>>;
        type Reply = mock::SendResponse<Response<Body>>;

        const CONFLICT: &str = "ResourceConflict";

        fn network(name: &str) -> BitcoinNetwork {
            let mut net = BitcoinNetwork::new(name, BitcoinNetworkSpec::default());
            net.metadata.namespace = Some("ns".into());
            net.metadata.uid = Some(format!("uid-{name}"));
            net
        }

        fn conflict(recorder: &Recorder, net: &BitcoinNetwork) {
            recorder.publish(
                net,
                EventType::Warning,
                CONFLICT,
                format!(
                    "StatefulSet {}-sts exists and is not owned by it",
                    net.metadata.name.as_deref().unwrap()
                ),
            );
        }

        fn options(capacity: usize) -> RecorderOptions {
            RecorderOptions {
                capacity,
                ..RecorderOptions::default()
            }
        }

        fn mocked(options: RecorderOptions) -> (Recorder, RecorderTask, Handle) {
            let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
            let (recorder, task) = Recorder::with_options(Client::new(service, "default"), options);
            (recorder, task, handle)
        }

        /// The recorder task, running, and the token that stops it.
        fn run(task: RecorderTask) -> (CancellationToken, JoinHandle<()>) {
            let stop = CancellationToken::new();
            (stop.clone(), tokio::spawn(task.run(stop)))
        }

        #[derive(Debug)]
        struct Call {
            method: String,
            path: String,
            content_type: String,
            body: Value,
        }

        async fn next_call(handle: &mut Handle) -> (Call, Reply) {
            let (request, reply) = handle.next_request().await.expect("a request");
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await.unwrap();
            let call = Call {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
                body: serde_json::from_slice(&body).unwrap(),
            };
            (call, reply)
        }

        /// Fails if the recorder makes another call. Paused time only
        /// advances once every task is idle, so this waits for the recorder.
        async fn assert_quiet(handle: &mut Handle) {
            if let Ok(Some((request, _))) =
                tokio::time::timeout(Duration::from_secs(1), handle.next_request()).await
            {
                panic!("unexpected call {} {}", request.method(), request.uri());
            }
        }

        fn json(status: StatusCode, body: &Value) -> Response<Body> {
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap()
        }

        fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
            json(
                StatusCode::from_u16(code).unwrap(),
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "code": code, "reason": reason, "message": message}),
            )
        }

        /// Expects the creation of an Event with count 1 and names it `name`.
        async fn expect_create(handle: &mut Handle, name: &str) -> Call {
            let (call, reply) = next_call(handle).await;
            assert_eq!(
                (call.method.as_str(), call.path.as_str()),
                ("POST", "/api/v1/namespaces/ns/events"),
                "{call:?}"
            );
            assert_eq!(call.body["count"], 1, "{call:?}");
            let mut created = call.body.clone();
            created["metadata"]["name"] = name.into();
            reply.send_response(json(StatusCode::CREATED, &created));
            call
        }

        /// Expects a patch of Event `name` to `count`.
        async fn expect_patch(handle: &mut Handle, name: &str, count: i32) -> Call {
            let (call, reply) = next_call(handle).await;
            assert_eq!(
                (call.method.as_str(), call.path.as_str()),
                (
                    "PATCH",
                    format!("/api/v1/namespaces/ns/events/{name}").as_str()
                ),
                "{call:?}"
            );
            assert_eq!(call.content_type, "application/merge-patch+json");
            assert_eq!(call.body["count"], count, "{call:?}");
            assert!(call.body["lastTimestamp"].is_string(), "{call:?}");
            reply.send_response(json(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "Event", "involvedObject": {},
                        "metadata": {"name": name, "namespace": "ns"}, "count": count}),
            ));
            call
        }

        #[tokio::test(start_paused = true)]
        async fn first_publish_creates_one_event_with_count_1() {
            let (recorder, task, mut handle) = mocked(RecorderOptions::default());
            let (stop, done) = run(task);
            conflict(&recorder, &network("n1"));
            let call = expect_create(&mut handle, "n1.a").await;
            let event: Event = serde_json::from_value(call.body).unwrap();
            assert_eq!(event.metadata.generate_name.as_deref(), Some("n1."));
            assert_eq!(event.type_.as_deref(), Some("Warning"));
            assert_eq!(event.reason.as_deref(), Some(CONFLICT));
            assert_eq!(
                event.message.as_deref(),
                Some("StatefulSet n1-sts exists and is not owned by it")
            );
            assert_eq!(event.involved_object.uid.as_deref(), Some("uid-n1"));
            assert_eq!(event.involved_object.name.as_deref(), Some("n1"));
            assert_eq!(event.involved_object.namespace.as_deref(), Some("ns"));
            assert_eq!(
                event.involved_object.kind.as_deref(),
                Some(crate::api::KIND)
            );
            assert_eq!(event.first_timestamp, event.last_timestamp);
            assert_eq!(
                event.source.and_then(|s| s.component).as_deref(),
                Some(COMPONENT)
            );
            assert_quiet(&mut handle).await;
            stop.cancel();
            done.await.unwrap();
            assert_eq!(
                (recorder.dropped(), recorder.filtered(), recorder.failed()),
                (0, 0, 0)
            );
        }

        #[tokio::test(start_paused = true)]
        async fn concurrent_repeats_patch_one_event_with_increasing_count() {
            let (recorder, task, mut handle) = mocked(RecorderOptions::default());
            let (stop, done) = run(task);
            let net = network("n1");
            let barrier = Arc::new(tokio::sync::Barrier::new(5));
            let publishers: Vec<_> = (0..5)
                .map(|_| {
                    let (recorder, net, barrier) = (recorder.clone(), net.clone(), barrier.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        conflict(&recorder, &net);
                    })
                })
                .collect();
            for publisher in publishers {
                publisher.await.unwrap();
            }
            expect_create(&mut handle, "n1.a").await;
            for count in 2..=5 {
                let call = expect_patch(&mut handle, "n1.a", count).await;
                assert_eq!(
                    call.body["message"],
                    "StatefulSet n1-sts exists and is not owned by it"
                );
            }
            assert_quiet(&mut handle).await;
            stop.cancel();
            done.await.unwrap();
        }

        #[tokio::test(start_paused = true)]
        async fn a_patch_answered_404_creates_a_new_event() {
            let (recorder, task, mut handle) = mocked(RecorderOptions::default());
            let (_stop, _done) = run(task);
            let net = network("n1");
            conflict(&recorder, &net);
            expect_create(&mut handle, "n1.a").await;
            conflict(&recorder, &net);
            let (call, reply) = next_call(&mut handle).await;
            assert_eq!(
                (call.method.as_str(), call.path.as_str()),
                ("PATCH", "/api/v1/namespaces/ns/events/n1.a")
            );
            reply.send_response(status(404, "NotFound", "events \"n1.a\" not found"));
            expect_create(&mut handle, "n1.b").await;
            conflict(&recorder, &net);
            expect_patch(&mut handle, "n1.b", 2).await;
            assert_quiet(&mut handle).await;
            assert_eq!(recorder.failed(), 0);
        }

        #[tokio::test(start_paused = true)]
        async fn different_messages_are_combined_after_ten() {
            let (recorder, task, mut handle) = mocked(RecorderOptions::default());
            let (_stop, _done) = run(task);
            let net = network("n1");
            for i in 0..12 {
                recorder.publish(
                    &net,
                    EventType::Warning,
                    "NodeSyncFailed",
                    format!("n1-sts-0: error {i}"),
                );
            }
            for i in 0..MAX_SIMILAR - 1 {
                let call = expect_create(&mut handle, &format!("n1.{i}")).await;
                assert_eq!(call.body["message"], format!("n1-sts-0: error {i}"));
            }
            let call = expect_create(&mut handle, "n1.combined").await;
            assert_eq!(
                call.body["message"],
                "(combined from similar events): n1-sts-0: error 9"
            );
            for (count, i) in [(2, 10), (3, 11)] {
                let call = expect_patch(&mut handle, "n1.combined", count).await;
                assert_eq!(
                    call.body["message"],
                    format!("(combined from similar events): n1-sts-0: error {i}")
                );
            }
            assert_quiet(&mut handle).await;
        }

        #[tokio::test(start_paused = true)]
        async fn the_spam_filter_drops_after_25_then_allows_one_per_5_minutes() {
            let (recorder, task, mut handle) = mocked(RecorderOptions::default());
            let (_stop, _done) = run(task);
            let (n1, n2) = (network("n1"), network("n2"));
            for _ in 0..30 {
                conflict(&recorder, &n1);
            }
            expect_create(&mut handle, "n1.a").await;
            for count in 2..=25 {
                expect_patch(&mut handle, "n1.a", count).await;
            }
            assert_quiet(&mut handle).await;
            assert_eq!(recorder.filtered(), 5);
            // Another object has its own bucket.
            conflict(&recorder, &n2);
            expect_create(&mut handle, "n2.a").await;
            // One token earned back in five minutes.
            tokio::time::advance(SPAM_REFILL).await;
            conflict(&recorder, &n1);
            conflict(&recorder, &n1);
            expect_patch(&mut handle, "n1.a", 26).await;
            assert_quiet(&mut handle).await;
            assert_eq!(recorder.filtered(), 6);
            assert_eq!((recorder.dropped(), recorder.failed()), (0, 0));
        }

        #[tokio::test(start_paused = true)]
        async fn a_full_queue_drops_without_blocking() {
            let (recorder, task, mut handle) = mocked(options(4));
            let (_stop, _done) = run(task);
            let net = network("n1");
            conflict(&recorder, &net);
            // The API server is slow: the task waits on the first call while
            // the workers publish more than the queue holds.
            let (call, reply) = next_call(&mut handle).await;
            assert_eq!(call.method, "POST");
            let started = std::time::Instant::now();
            for _ in 0..6 {
                conflict(&recorder, &net);
            }
            assert!(started.elapsed() < Duration::from_secs(1));
            assert_eq!(recorder.dropped(), 2);
            let mut created = call.body.clone();
            created["metadata"]["name"] = "n1.a".into();
            reply.send_response(json(StatusCode::CREATED, &created));
            for count in 2..=5 {
                expect_patch(&mut handle, "n1.a", count).await;
            }
            assert_quiet(&mut handle).await;
            assert_eq!(recorder.dropped(), 2);
        }

        #[tokio::test(start_paused = true)]
        async fn a_refused_event_is_counted_and_the_next_one_still_goes_out() {
            let (recorder, task, mut handle) = mocked(RecorderOptions::default());
            let (_stop, _done) = run(task);
            let net = network("n1");
            conflict(&recorder, &net);
            let (call, reply) = next_call(&mut handle).await;
            assert_eq!(call.method, "POST");
            reply.send_response(status(403, "Forbidden", "events is forbidden"));
            // Nothing was recorded, so the repeat creates the Event.
            conflict(&recorder, &net);
            expect_create(&mut handle, "n1.a").await;
            assert_quiet(&mut handle).await;
            assert_eq!(recorder.failed(), 1);
        }

        #[tokio::test(start_paused = true)]
        async fn a_call_without_answer_times_out() {
            let (recorder, task, mut handle) = mocked(RecorderOptions::default());
            let (_stop, _done) = run(task);
            conflict(&recorder, &network("n1"));
            let (_call, _unanswered) = next_call(&mut handle).await;
            conflict(&recorder, &network("n2"));
            // After the request timeout the task moves on to the next one.
            expect_create(&mut handle, "n2.a").await;
            assert_quiet(&mut handle).await;
            assert_eq!(recorder.failed(), 1);
        }

        #[tokio::test(start_paused = true)]
        async fn a_stop_flushes_the_queue_then_ends() {
            let (recorder, task, mut handle) = mocked(RecorderOptions::default());
            for name in ["n1", "n2", "n3"] {
                conflict(&recorder, &network(name));
            }
            let (stop, done) = run(task);
            stop.cancel();
            for name in ["n1", "n2", "n3"] {
                let call = expect_create(&mut handle, &format!("{name}.a")).await;
                assert_eq!(call.body["involvedObject"]["name"], name);
            }
            done.await.unwrap();
            // Published after the end: dropped, without blocking.
            conflict(&recorder, &network("n4"));
            assert_eq!(recorder.dropped(), 1);
        }

        #[tokio::test(start_paused = true)]
        async fn the_flush_is_bounded_in_time() {
            let flush_timeout = Duration::from_secs(5);
            let (recorder, task, mut handle) = mocked(RecorderOptions {
                flush_timeout,
                request_timeout: Duration::from_secs(60),
                ..RecorderOptions::default()
            });
            conflict(&recorder, &network("n1"));
            conflict(&recorder, &network("n2"));
            let (stop, done) = run(task);
            let (_call, _unanswered) = next_call(&mut handle).await;
            let stopped = Instant::now();
            stop.cancel();
            done.await.unwrap();
            assert_eq!(stopped.elapsed(), flush_timeout);
            // The call in flight and the one still queued.
            assert_eq!(recorder.dropped(), 2);
        }

        #[tokio::test(start_paused = true)]
        async fn the_task_ends_when_every_recorder_is_dropped() {
            let (recorder, task, mut handle) = mocked(RecorderOptions::default());
            let (_stop, done) = run(task);
            let other = recorder.clone();
            conflict(&recorder, &network("n1"));
            drop(recorder);
            expect_create(&mut handle, "n1.a").await;
            assert!(!done.is_finished());
            drop(other);
            done.await.unwrap();
        }
    }
}
