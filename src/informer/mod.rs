//! Informers: local caches of API objects kept current by a reflector, with
//! event handlers and periodic resync, in the style of client-go's
//! `SharedIndexInformer` (one informer per kind, shared by the controller).
//!
//! The reflector lists every object (page by page), swaps the result into
//! the cache in one step, then watches from the list's resourceVersion. A
//! watch that the server ends, or that stays silent longer than the idle
//! timeout, is resumed from the last resourceVersion seen (events and
//! bookmarks advance it); a `410 Gone` means that version is too old, so the
//! reflector lists again. [`ApiSource`] narrows both calls with a label and
//! a field selector.
//!
//! Failures are retried after an exponential backoff (800 ms doubling to
//! 30 s, with jitter) that starts over as soon as a list succeeds or a watch
//! delivers something; a 403, which an API server answers while it boots
//! and RBAC is not loaded yet, is retried after a fixed ~2 s instead and
//! does not grow the backoff. Each failure is logged as one line: the call,
//! the kind and, for an API error, the status code and the server's message.
//!
//! The cache is indexed by namespace: [`Lister::list_namespaced`] costs the
//! objects of that namespace only.
//!
//! [`SyncedFlag`] tells two things: *synced* (a first list completed; it
//! stays true, for readiness) and *fresh* (the cache is current as far as
//! the reflector knows). A cache stops being fresh when a list or watch call
//! fails or a 410 forces a relist, and is fresh again once a list completed,
//! or once a re-established watch has settled: gone quiet for 1 s (its
//! backlog delivered), sent a bookmark, or run 5 s on a busy stream. Not
//! on the watch call alone: a server back from a restart with a compacted
//! history accepts the call and sends the 410 as its first event. A normal
//! end of a watch, or a rewatch after the idle timeout, does not touch it.
//! [`wait_for_fresh`] lets consumers hold work until several caches are
//! fresh at once, so no decision mixes a relisted cache with one that has
//! not relisted yet.
//!
//! Handlers run on the informer task right after the cache changed, so they
//! must be cheap (enqueue a key and return). A handler that panics is
//! logged and skipped for that change; the informer goes on.

mod reflector;
mod source;
mod store;

#[cfg(test)]
mod tests;

use std::any::Any;
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use kube_client::Resource;
use log::{debug, error, info};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

pub use source::{ApiSource, ListerWatcher, WatchStream};
pub use store::{InvalidObjectKey, Lister, ObjectKey};

use store::{Change, Store};

/// Default for [`Informer::with_idle_timeout`]. The API server's watch cache
/// sends a bookmark on every watch about once a minute (k8s.io/apiserver's
/// cacher, `bookmarkFrequency`), so a watch silent for two and a half
/// minutes is on a connection that died without a word (no FIN or RST, as
/// after a network outage): it is dropped and resumed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(150);

/// Receives the changes of an informer's cache.
///
/// Called synchronously on the informer task after the cache was updated;
/// implementations should only enqueue work.
pub trait EventHandler<K>: Send + Sync {
    /// An object appeared.
    fn on_add(&self, obj: &Arc<K>);
    /// An object changed; on resync `old` and `new` are the same object.
    fn on_update(&self, old: &Arc<K>, new: &Arc<K>);
    /// An object went away; `obj` is its last known state.
    fn on_delete(&self, obj: &Arc<K>);
}

/// Counters a reflector reports, one implementation per informer (so the
/// implementation knows the resource). Every method defaults to doing
/// nothing; they are called on the informer task, so keep them cheap.
pub trait ReflectorMetrics: Send + Sync {
    /// A complete list (every page) replaced the cache.
    fn list(&self) {}
    /// A watch call was made.
    fn watch(&self) {}
    /// The watch's resourceVersion was too old (410 Gone): listing again.
    fn relist(&self) {}
    /// A list or watch attempt failed and will be retried after a backoff.
    fn failure(&self) {}
    /// A watch event (added, modified, deleted; not bookmarks) arrived.
    fn watch_event(&self) {}
    /// An event handler panicked (the informer logged it and went on).
    fn handler_panic(&self) {}
}

/// Records nothing; the default.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopReflectorMetrics;

impl ReflectorMetrics for NoopReflectorMetrics {}

/// Why the latest list failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListFailure {
    /// The API server refused the list (403): the credentials lack the right.
    pub forbidden: bool,
    pub message: String,
}

/// Whether an informer has completed its first list, whether its cache is
/// current (fresh), and why the latest list failed if it did. Cheap to
/// clone.
#[derive(Clone)]
pub struct SyncedFlag {
    tx: Arc<watch::Sender<SyncState>>,
}

#[derive(Default)]
struct SyncState {
    synced: bool,
    fresh: bool,
    list_failure: Option<ListFailure>,
}

impl SyncedFlag {
    fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(SyncState::default())),
        }
    }

    /// A list completed: synced and fresh.
    fn set(&self) {
        self.tx.send_replace(SyncState {
            synced: true,
            fresh: true,
            list_failure: None,
        });
    }

    fn set_list_failure(&self, failure: ListFailure) {
        self.tx.send_modify(|s| {
            s.fresh = false;
            s.list_failure = Some(failure);
        });
    }

    /// Marks the cache current (true) or possibly behind (false); wakes
    /// waiters only on a change.
    fn set_fresh(&self, fresh: bool) {
        self.tx.send_if_modified(|s| {
            let changed = s.fresh != fresh;
            s.fresh = fresh;
            changed
        });
    }

    /// True once the cache holds a full list; it stays true.
    pub fn is_synced(&self) -> bool {
        self.tx.borrow().synced
    }

    /// True while the cache is current as far as the reflector knows: a
    /// list completed, or the watch is running, and no list or watch call
    /// failed since. False before the first list, from a failure or a 410
    /// until the next list completes or a new watch has settled.
    pub fn is_fresh(&self) -> bool {
        self.tx.borrow().fresh
    }

    /// Why the latest list failed; `None` once a list succeeded.
    pub fn list_failure(&self) -> Option<ListFailure> {
        self.tx.borrow().list_failure.clone()
    }

    /// Waits until [`is_synced`](Self::is_synced) is true.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = rx.wait_for(|s| s.synced).await;
    }

    /// Waits until the first list has either succeeded or failed.
    pub async fn wait_for_first_list(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|s| s.synced || s.list_failure.is_some()).await;
    }

    /// Waits until [`is_fresh`](Self::is_fresh) is true.
    pub async fn wait_fresh(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|s| s.fresh).await;
    }
}

/// Waits until every flag is synced; false if `cancel` fires first.
pub async fn wait_for_cache_sync(flags: &[SyncedFlag], cancel: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => false,
        _ = futures::future::join_all(flags.iter().map(SyncedFlag::wait)) => true,
    }
}

/// Waits until every flag is fresh at the same time (checked in one pass,
/// after the last wait); false if `cancel` fires first. Returns at once when
/// all are fresh already.
pub async fn wait_for_fresh(flags: &[SyncedFlag], cancel: &CancellationToken) -> bool {
    let all_fresh = async {
        while let Some(behind) = flags.iter().find(|flag| !flag.is_fresh()) {
            behind.wait_fresh().await;
        }
    };
    tokio::select! {
        biased;
        _ = cancel.cancelled() => false,
        _ = all_fresh => true,
    }
}

/// A cache of one kind of object, kept current by a reflector, with event
/// handlers and an optional periodic resync.
pub struct Informer<K> {
    source: Box<dyn ListerWatcher<K>>,
    store: Store<K>,
    handlers: Vec<Arc<dyn EventHandler<K>>>,
    resync_period: Option<Duration>,
    idle_timeout: Duration,
    synced: SyncedFlag,
    kind: String,
    metrics: Arc<dyn ReflectorMetrics>,
    transform: fn(K) -> K,
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// An informer fed by `source`. With `resync_period` set, every cached
    /// object is re-delivered as `on_update(obj, obj)` at that period.
    pub fn new(source: impl ListerWatcher<K> + 'static, resync_period: Option<Duration>) -> Self {
        Self {
            source: Box::new(source),
            store: Store::new(),
            handlers: Vec::new(),
            resync_period: resync_period.filter(|p| !p.is_zero()),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            synced: SyncedFlag::new(),
            kind: K::kind(&()).into_owned(),
            metrics: Arc::new(NoopReflectorMetrics),
            transform: std::convert::identity,
        }
    }

    /// Caches `transform(obj)` instead of each object as received (after
    /// managedFields are dropped): the place to drop what the consumers
    /// never read, as client-go's `SetTransform`. Handlers and listers see
    /// the transformed objects only.
    pub fn with_transform(mut self, transform: fn(K) -> K) -> Self {
        self.transform = transform;
        self
    }

    /// Reports the reflector's lists, watches, relists, failures and watch
    /// events to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<dyn ReflectorMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// How long the reflector waits for any one API response (a list page,
    /// a watch call, the next watch event) before giving up on it; default
    /// [`DEFAULT_IDLE_TIMEOUT`]. A silent watch is resumed, a slow list or
    /// watch call counts as a failure. Keep it well above the one-minute
    /// bookmark period.
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// A read-only view of the cache.
    pub fn lister(&self) -> Lister<K> {
        self.store.lister()
    }

    /// Registers a handler; call before [`run`](Self::run).
    pub fn add_event_handler(&mut self, handler: Arc<dyn EventHandler<K>>) {
        self.handlers.push(handler);
    }

    /// The flag that turns true after the first complete list.
    pub fn synced(&self) -> SyncedFlag {
        self.synced.clone()
    }

    /// Runs the reflector (and the resync timer) until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        info!("{} informer: starting", self.kind);
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = self.reflect() => {}
            _ = self.resync() => {}
        }
        info!("{} informer: stopped", self.kind);
    }

    /// Delivers a cache change to every handler. A handler that panics is
    /// logged and skipped; the others still get the change.
    fn notify(&self, change: &Change<K>) {
        for handler in &self.handlers {
            let delivered = catch_unwind(AssertUnwindSafe(|| match change {
                Change::Added(obj) => handler.on_add(obj),
                Change::Updated { old, new } => handler.on_update(old, new),
                Change::Deleted(obj) => handler.on_delete(obj),
            }));
            if let Err(panic) = delivered {
                self.metrics.handler_panic();
                let (what, obj) = match change {
                    Change::Added(obj) => ("add", obj),
                    Change::Updated { new, .. } => ("update", new),
                    Change::Deleted(obj) => ("delete", obj),
                };
                error!(
                    "{} informer: event handler panicked on {what} of {}: {}",
                    self.kind,
                    ObjectKey::from_object(&**obj),
                    panic_message(&*panic)
                );
            }
        }
    }

    /// Re-delivers every cached object as an update, each resync period
    /// once synced; never returns.
    async fn resync(&self) {
        let Some(period) = self.resync_period else {
            return std::future::pending().await;
        };
        self.synced.wait().await;
        let mut ticks = interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let objects = self.store.snapshot();
            debug!(
                "{} informer: resync of {} objects",
                self.kind,
                objects.len()
            );
            for obj in objects {
                self.notify(&Change::Updated {
                    old: Arc::clone(&obj),
                    new: obj,
                });
            }
        }
    }
}

/// The message a panic was raised with, if it was a string.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(message) = panic.downcast_ref::<&str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "(no message)"
    }
}
