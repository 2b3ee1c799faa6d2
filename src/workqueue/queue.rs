//! The queue itself: dedup, processing set, delayed adds, shutdown.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::metrics::{NoopMetrics, QueueMetrics, UnfinishedWork, UnfinishedWorkProbe};
use super::rate_limiter::{default_controller_rate_limiter, RateLimiter};

/// A work queue with the semantics of client-go's rate-limited queue, for
/// async workers.
///
/// - An item is queued at most once: adding an item that is already waiting
///   does nothing (the *dirty* set).
/// - An item is handed to at most one worker at a time: adding an item while
///   a worker holds it marks it dirty, and it is queued again when the worker
///   calls [`done`](Self::done) (the *processing* set).
/// - [`add_after`](Self::add_after) holds items until their deadline; an item
///   added with several delays becomes ready at the earliest one.
/// - After [`shut_down`](Self::shut_down), adds are ignored, delayed items are
///   dropped, [`get`](Self::get) still hands out what is already queued and
///   returns `None` once the queue is empty.
///
/// Delays are checked lazily by waiting [`get`](Self::get) calls, each
/// sleeping until the earliest deadline, so the queue needs no background
/// task, works with a paused tokio clock, and leaves nothing running when it
/// is dropped. Cloning is cheap and gives another handle to the same queue.
pub struct WorkQueue<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<T> {
    name: String,
    state: Mutex<State<T>>,
    /// Woken when an item becomes ready (one waiter), and when the earliest
    /// deadline moves earlier or the queue shuts down (all waiters).
    ready: Notify,
    /// Woken when the processing set becomes empty.
    idle: Notify,
    limiter: Box<dyn RateLimiter<T>>,
    metrics: Box<dyn QueueMetrics>,
}

struct State<T> {
    /// Items ready to be handed out, in order.
    queue: VecDeque<T>,
    /// Items that need processing, with the instant they were first added.
    dirty: HashMap<T, Instant>,
    /// Items held by workers, with the instant they were handed out.
    processing: HashMap<T, Instant>,
    /// Delayed items: the deadline and sequence number of each item's live
    /// timer. Timers superseded by an earlier deadline stay in `timers`
    /// until they surface and are skipped.
    waiting: HashMap<T, (Instant, u64)>,
    timers: BinaryHeap<Reverse<Timer<T>>>,
    next_seq: u64,
    shutting_down: bool,
}

/// A delayed add; ordered by deadline, then by the order of the calls.
struct Timer<T> {
    at: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Timer<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<T> Eq for Timer<T> {}

impl<T> PartialOrd for Timer<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Timer<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl<T: Clone + Eq + Hash> State<T> {
    /// Marks `item` dirty and queues it unless a worker holds it. Returns
    /// whether it was queued.
    fn add(&mut self, item: T, now: Instant, metrics: &dyn QueueMetrics) -> bool {
        if self.shutting_down || self.dirty.contains_key(&item) {
            return false;
        }
        metrics.add();
        self.dirty.insert(item.clone(), now);
        if self.processing.contains_key(&item) {
            return false;
        }
        self.queue.push_back(item);
        metrics.depth(self.queue.len());
        true
    }

    /// Moves every delayed item whose deadline has passed into the queue.
    /// Returns whether anything was queued.
    fn fire_due(&mut self, now: Instant, metrics: &dyn QueueMetrics) -> bool {
        let mut queued = false;
        while self.timers.peek().is_some_and(|t| t.0.at <= now) {
            let Reverse(timer) = self.timers.pop().expect("peeked");
            if self.is_live(&timer) {
                self.waiting.remove(&timer.item);
                queued |= self.add(timer.item, now, metrics);
            }
        }
        queued
    }

    /// The earliest live deadline, discarding superseded timers on top.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse(timer)) = self.timers.peek() {
            if self.is_live(timer) {
                return Some(timer.at);
            }
            self.timers.pop();
        }
        None
    }

    /// The items held by workers at `now`.
    fn unfinished_work(&self, now: Instant) -> UnfinishedWork {
        let mut work = UnfinishedWork::default();
        for &started in self.processing.values() {
            let running = now.saturating_duration_since(started);
            work.in_flight += 1;
            work.total += running;
            work.longest = work.longest.max(running);
        }
        work
    }

    fn is_live(&self, timer: &Timer<T>) -> bool {
        self.waiting.get(&timer.item).map(|&(_, seq)| seq) == Some(timer.seq)
    }
}

impl<T> WorkQueue<T>
where
    T: Clone + Eq + Hash + Send + Sync + Debug + 'static,
{
    /// A queue using [`default_controller_rate_limiter`].
    pub fn new(name: &str) -> Self {
        Self::with_rate_limiter(name, default_controller_rate_limiter())
    }

    /// A queue whose [`add_rate_limited`](Self::add_rate_limited) asks `rl`.
    pub fn with_rate_limiter(name: &str, rl: impl RateLimiter<T> + 'static) -> Self {
        Self::with_metrics(name, rl, NoopMetrics)
    }

    /// A queue that reports to `metrics` as well.
    pub fn with_metrics(
        name: &str,
        rl: impl RateLimiter<T> + 'static,
        metrics: impl QueueMetrics + 'static,
    ) -> Self {
        let queue = Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    dirty: HashMap::new(),
                    processing: HashMap::new(),
                    waiting: HashMap::new(),
                    timers: BinaryHeap::new(),
                    next_seq: 0,
                    shutting_down: false,
                }),
                ready: Notify::new(),
                idle: Notify::new(),
                limiter: Box::new(rl),
                metrics: Box::new(metrics),
            }),
        };
        let weak = Arc::downgrade(&queue.inner);
        queue
            .inner
            .metrics
            .unfinished_work_probe(UnfinishedWorkProbe::new(move || {
                let inner = weak.upgrade()?;
                let st = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
                Some(st.unfinished_work(Instant::now()))
            }));
        queue
    }

    /// The items held by workers right now and how long they have been
    /// processed (see [`UnfinishedWork`]).
    pub fn unfinished_work(&self) -> UnfinishedWork {
        self.state().unfinished_work(Instant::now())
    }

    fn state(&self) -> MutexGuard<'_, State<T>> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item`. Does nothing if it is already waiting or the queue is
    /// shutting down; if a worker holds it, it is queued again at
    /// [`done`](Self::done).
    pub fn add(&self, item: T) {
        let queued = self.state().add(item, Instant::now(), &*self.inner.metrics);
        if queued {
            self.inner.ready.notify_one();
        }
    }

    /// Queues `item` once `delay` has passed; a zero delay is a plain
    /// [`add`](Self::add). If `item` is already delayed, the earlier deadline
    /// wins.
    pub fn add_after(&self, item: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(item);
        }
        let at = Instant::now() + delay;
        let mut st = self.state();
        if st.shutting_down || st.waiting.get(&item).is_some_and(|&(old, _)| old <= at) {
            return;
        }
        let earliest = st.next_deadline().is_none_or(|next| at < next);
        let seq = st.next_seq;
        st.next_seq += 1;
        st.waiting.insert(item.clone(), (at, seq));
        st.timers.push(Reverse(Timer { at, seq, item }));
        drop(st);
        if earliest {
            // Waiting getters sleep until the old earliest deadline: let them
            // all look again.
            self.inner.ready.notify_waiters();
        }
    }

    /// Queues `item` after the delay the rate limiter chooses for it.
    pub fn add_rate_limited(&self, item: T) {
        let delay = self.inner.limiter.when(&item);
        self.inner.metrics.retry();
        self.add_after(item, delay);
    }

    /// Tells the rate limiter that `item` succeeded: its backoff starts over.
    /// This does not remove the item from the queue.
    pub fn forget(&self, item: &T) {
        self.inner.limiter.forget(item);
    }

    /// How many times `item` went through the rate limiter since it was last
    /// forgotten.
    pub fn num_requeues(&self, item: &T) -> u32 {
        self.inner.limiter.num_requeues(item)
    }

    /// Waits for the next item and hands it to the caller, who must call
    /// [`done`](Self::done) with it when finished. Returns `None` once the
    /// queue is shutting down and nothing is left in it.
    ///
    /// Cancel safe: dropping the future never loses an item.
    pub async fn get(&self) -> Option<T> {
        loop {
            // Created before looking at the state, so a wakeup between the
            // look and the wait is not lost.
            let notified = self.inner.ready.notified();
            let deadline = {
                let mut st = self.state();
                let now = Instant::now();
                if !st.shutting_down {
                    st.fire_due(now, &*self.inner.metrics);
                }
                if let Some(item) = st.queue.pop_front() {
                    let metrics = &*self.inner.metrics;
                    metrics.depth(st.queue.len());
                    if let Some(added) = st.dirty.remove(&item) {
                        metrics.get(now - added);
                    }
                    st.processing.insert(item.clone(), now);
                    return Some(item);
                }
                if st.shutting_down {
                    return None;
                }
                st.next_deadline()
            };
            // Every idle getter sleeps at most until the earliest deadline it
            // saw; a later `add_after` that moves the deadline earlier wakes
            // them all, so due items are never left waiting for a getter.
            match deadline {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `item`, handed out by [`get`](Self::get), as finished. If it
    /// was added again meanwhile, it goes back into the queue. Calling this
    /// for an item no worker holds does nothing.
    pub fn done(&self, item: &T) {
        let now = Instant::now();
        let mut st = self.state();
        let Some(started) = st.processing.remove(item) else {
            return;
        };
        let metrics = &*self.inner.metrics;
        metrics.done(now - started);
        let requeued = st.dirty.contains_key(item);
        if requeued {
            st.queue.push_back(item.clone());
            metrics.depth(st.queue.len());
        }
        let idle = st.processing.is_empty();
        drop(st);
        if requeued {
            self.inner.ready.notify_one();
        }
        if idle {
            self.inner.idle.notify_waiters();
        }
    }

    /// Number of items ready to be handed out (delayed items count once
    /// their deadline has passed; items held by workers do not count).
    pub fn len(&self) -> usize {
        let mut st = self.state();
        let queued = !st.shutting_down && st.fire_due(Instant::now(), &*self.inner.metrics);
        let len = st.queue.len();
        drop(st);
        if queued {
            self.inner.ready.notify_one();
        }
        len
    }

    /// Whether no item is ready to be handed out.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops accepting items and drops delayed ones. Waiting
    /// [`get`](Self::get) calls return `None`; items already queued are
    /// still handed out first.
    pub fn shut_down(&self) {
        let mut st = self.state();
        st.shutting_down = true;
        st.waiting.clear();
        st.timers.clear();
        drop(st);
        self.inner.ready.notify_waiters();
    }

    /// Like [`shut_down`](Self::shut_down), then waits until every item
    /// handed out has been marked [`done`](Self::done).
    pub async fn shut_down_with_drain(&self) {
        self.shut_down();
        loop {
            let idle = self.inner.idle.notified();
            if self.state().processing.is_empty() {
                return;
            }
            idle.await;
        }
    }

    /// Whether [`shut_down`](Self::shut_down) has been called.
    pub fn is_shutting_down(&self) -> bool {
        self.state().shutting_down
    }

    /// The name given at construction (used to label metrics and logs).
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workqueue::ItemExponentialFailureRateLimiter;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    const MS: Duration = Duration::from_millis(1);

    /// A queue whose rate limiter is a plain 5 ms .. 1 s exponential backoff.
    fn exp_queue() -> WorkQueue<&'static str> {
        WorkQueue::with_rate_limiter(
            "test",
            ItemExponentialFailureRateLimiter::new(5 * MS, Duration::from_secs(1)),
        )
    }

    /// Asserts that `get` has nothing to hand out for a while.
    async fn assert_nothing_for(q: &WorkQueue<&'static str>, wait: Duration) {
        let got = tokio::time::timeout(wait, q.get()).await;
        assert!(got.is_err(), "expected nothing, got {got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn duplicate_adds_are_queued_once() {
        let q = WorkQueue::new("dedup");
        assert_eq!(q.name(), "dedup");
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.get().await, Some("a"));
        assert_eq!(q.get().await, Some("b"));
        assert!(q.is_empty());
        assert_nothing_for(&q, Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn item_added_while_processing_returns_only_after_done() {
        let q = WorkQueue::new("processing");
        q.add("a");
        assert_eq!(q.get().await, Some("a"));
        q.add("a");
        q.add("a");
        assert_eq!(q.len(), 0, "held by a worker, so not ready");
        assert_nothing_for(&q, Duration::from_secs(1)).await;
        q.done(&"a");
        assert_eq!(q.len(), 1);
        assert_eq!(q.get().await, Some("a"));
        q.done(&"a");
        assert_nothing_for(&q, Duration::from_secs(1)).await;
        // A stray done for an item nobody holds changes nothing.
        q.done(&"a");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_getter_is_woken_by_done_requeue() {
        let q = WorkQueue::new("requeue");
        q.add("a");
        assert_eq!(q.get().await, Some("a"));
        q.add("a");
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.get().await }
        });
        tokio::time::sleep(10 * MS).await;
        assert!(!waiter.is_finished());
        q.done(&"a");
        assert_eq!(waiter.await.unwrap(), Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_releases_items_in_deadline_order() {
        let q = WorkQueue::new("delay");
        let start = Instant::now();
        q.add_after("c", 30 * MS);
        q.add_after("a", 10 * MS);
        q.add_after("b", 20 * MS);
        assert!(q.is_empty());
        for (want, at) in [("a", 10), ("b", 20), ("c", 30)] {
            assert_eq!(q.get().await, Some(want));
            assert_eq!(start.elapsed(), at * MS, "{want}");
            q.done(&want);
        }
        // Zero delay is a plain add.
        q.add_after("now", Duration::ZERO);
        assert_eq!(q.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_earliest_deadline_wins() {
        let q = WorkQueue::new("earliest");
        let start = Instant::now();
        q.add_after("a", 50 * MS);
        q.add_after("a", 10 * MS);
        q.add_after("a", 100 * MS);
        assert_eq!(q.get().await, Some("a"));
        assert_eq!(start.elapsed(), 10 * MS);
        q.done(&"a");
        // The superseded timers do not bring it back.
        assert_nothing_for(&q, Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn earlier_add_after_wakes_a_sleeping_getter() {
        let q = WorkQueue::new("wake");
        let start = Instant::now();
        q.add_after("late", Duration::from_secs(10));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { (q.get().await, start.elapsed()) }
        });
        tokio::time::sleep(MS).await;
        q.add_after("soon", 5 * MS);
        assert_eq!(waiter.await.unwrap(), (Some("soon"), 6 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_item_shows_in_len_after_deadline_without_getter() {
        let q = WorkQueue::new("len");
        q.add_after("a", 10 * MS);
        assert_eq!(q.len(), 0);
        tokio::time::sleep(10 * MS).await;
        assert_eq!(q.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn add_rate_limited_backs_off_and_forget_resets() {
        let q = exp_queue();
        for want in [5, 10, 20] {
            let start = Instant::now();
            q.add_rate_limited("a");
            assert_eq!(q.get().await, Some("a"));
            assert_eq!(start.elapsed(), want * MS);
            q.done(&"a");
        }
        assert_eq!(q.num_requeues(&"a"), 3);
        q.forget(&"a");
        assert_eq!(q.num_requeues(&"a"), 0);
        let start = Instant::now();
        q.add_rate_limited("a");
        assert_eq!(q.get().await, Some("a"));
        assert_eq!(start.elapsed(), 5 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn shut_down_wakes_all_waiters_and_rejects_adds() {
        let q = WorkQueue::new("shutdown");
        q.add_after("delayed", 10 * MS);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move { q.get().await })
            })
            .collect();
        tokio::time::sleep(MS).await;
        q.shut_down();
        assert!(q.is_shutting_down());
        for w in waiters {
            assert_eq!(w.await.unwrap(), None);
        }
        q.add("a");
        q.add_after("b", MS);
        q.add_rate_limited("c");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            q.is_empty(),
            "no adds after shutdown, delayed items dropped"
        );
        assert_eq!(q.get().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn shut_down_still_hands_out_queued_items() {
        let q = WorkQueue::new("leftovers");
        q.add("a");
        q.add("b");
        q.shut_down();
        assert_eq!(q.get().await, Some("a"));
        assert_eq!(q.get().await, Some("b"));
        assert_eq!(q.get().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_in_flight_items() {
        let q = WorkQueue::new("drain");
        q.add("a");
        q.add("b");
        assert_eq!(q.get().await, Some("a"));
        let drain = tokio::spawn({
            let q = q.clone();
            async move { q.shut_down_with_drain().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(q.is_shutting_down());
        assert!(!drain.is_finished(), "a is still being processed");
        q.add("c"); // rejected
        assert_eq!(q.get().await, Some("b"));
        q.done(&"a");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!drain.is_finished(), "b is still being processed");
        q.done(&"b");
        tokio::time::timeout(MS, drain)
            .await
            .expect("drain finishes once all items are done")
            .unwrap();
        assert_eq!(q.get().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_with_nothing_in_flight_returns_at_once() {
        let q: WorkQueue<&str> = WorkQueue::new("idle");
        tokio::time::timeout(MS, q.shut_down_with_drain())
            .await
            .expect("nothing to wait for");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_workers_never_share_a_key() {
        let q: WorkQueue<u32> = WorkQueue::new("workers");
        let in_flight = Arc::new(Mutex::new(HashSet::new()));
        let runs = Arc::new(Mutex::new(HashMap::<u32, u32>::new()));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (q, in_flight, runs) = (q.clone(), in_flight.clone(), runs.clone());
                tokio::spawn(async move {
                    while let Some(key) = q.get().await {
                        assert!(in_flight.lock().unwrap().insert(key), "{key} twice");
                        let n = {
                            let mut runs = runs.lock().unwrap();
                            let n = runs.entry(key).or_insert(0);
                            *n += 1;
                            *n
                        };
                        if n == 1 {
                            // Re-added while held: must wait for done.
                            q.add(key);
                        }
                        tokio::time::sleep(MS * (1 + key % 3)).await;
                        in_flight.lock().unwrap().remove(&key);
                        q.done(&key);
                    }
                })
            })
            .collect();
        for key in 0..40 {
            q.add(key);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        q.shut_down_with_drain().await;
        for w in workers {
            w.await.unwrap();
        }
        let runs = runs.lock().unwrap();
        assert_eq!(runs.len(), 40);
        assert!(runs.values().all(|&n| n == 2), "{runs:?}");
    }

    #[derive(Default)]
    struct Recorder {
        adds: AtomicUsize,
        retries: AtomicUsize,
        depth: AtomicUsize,
        waited_ms: AtomicUsize,
        worked_ms: AtomicUsize,
        probe: Mutex<Option<UnfinishedWorkProbe>>,
    }

    impl QueueMetrics for Arc<Recorder> {
        fn add(&self) {
            self.adds.fetch_add(1, SeqCst);
        }
        fn depth(&self, depth: usize) {
            self.depth.store(depth, SeqCst);
        }
        fn get(&self, waited: Duration) {
            self.waited_ms
                .fetch_add(waited.as_millis() as usize, SeqCst);
        }
        fn done(&self, worked: Duration) {
            self.worked_ms
                .fetch_add(worked.as_millis() as usize, SeqCst);
        }
        fn retry(&self) {
            self.retries.fetch_add(1, SeqCst);
        }
        fn unfinished_work_probe(&self, probe: UnfinishedWorkProbe) {
            *self.probe.lock().unwrap() = Some(probe);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_hook_sees_adds_depth_latencies_and_retries() {
        let rec = Arc::new(Recorder::default());
        let q = WorkQueue::with_metrics(
            "metrics",
            ItemExponentialFailureRateLimiter::new(5 * MS, Duration::from_secs(1)),
            rec.clone(),
        );
        q.add("a");
        q.add("a"); // deduplicated: not counted
        q.add("b");
        assert_eq!(rec.adds.load(SeqCst), 2);
        assert_eq!(rec.depth.load(SeqCst), 2);
        tokio::time::sleep(7 * MS).await;
        let a = q.get().await.unwrap();
        assert_eq!(rec.depth.load(SeqCst), 1);
        assert_eq!(rec.waited_ms.load(SeqCst), 7);
        tokio::time::sleep(3 * MS).await;
        q.done(&a);
        assert_eq!(rec.worked_ms.load(SeqCst), 3);
        q.add_rate_limited("c");
        assert_eq!(rec.retries.load(SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn probe_measures_work_in_progress_until_the_queue_is_dropped() {
        let rec = Arc::new(Recorder::default());
        let q = WorkQueue::with_metrics(
            "unfinished",
            ItemExponentialFailureRateLimiter::new(5 * MS, Duration::from_secs(1)),
            rec.clone(),
        );
        let measure = || rec.probe.lock().unwrap().as_ref().unwrap().measure();
        assert_eq!(measure(), Some(UnfinishedWork::default()));
        q.add("a");
        q.add("b");
        let a = q.get().await.unwrap();
        tokio::time::sleep(30 * MS).await;
        let b = q.get().await.unwrap();
        tokio::time::sleep(10 * MS).await;
        let want = UnfinishedWork {
            in_flight: 2,
            total: 50 * MS,
            longest: 40 * MS,
        };
        assert_eq!(measure(), Some(want));
        assert_eq!(q.unfinished_work(), want);
        q.done(&a);
        assert_eq!(
            measure(),
            Some(UnfinishedWork {
                in_flight: 1,
                total: 10 * MS,
                longest: 10 * MS,
            })
        );
        q.done(&b);
        assert_eq!(measure(), Some(UnfinishedWork::default()));
        drop(q);
        assert_eq!(measure(), None, "the probe does not keep the queue alive");
    }
}
