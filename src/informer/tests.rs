//! Reflector and informer tests against a fake API that the test answers
//! call by call, on a paused clock.

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::{unbounded, UnboundedSender};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube_client::api::{ListParams, WatchEvent};
use kube_client::core::watch::{Bookmark, BookmarkMeta};
use kube_client::core::{ListMeta, ObjectList, Status, TypeMeta};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::reflector::{
    Backoff, PAGE_SIZE, SETTLE, SETTLE_MAX, WATCH_JITTER_SECS, WATCH_TIMEOUT_SECS,
};
use super::*;

type Cm = ConfigMap;
type Reply<T> = oneshot::Sender<Result<T, kube_client::Error>>;
type Feed = UnboundedSender<Result<WatchEvent<Cm>, kube_client::Error>>;

/// A call the informer made; the test answers it through `reply`.
enum Call {
    List {
        params: ListParams,
        reply: Reply<ObjectList<Cm>>,
    },
    Watch {
        rv: String,
        timeout_secs: u32,
        reply: Reply<WatchStream<Cm>>,
    },
}

struct FakeSource(mpsc::UnboundedSender<Call>);

/// The test's answer; a call the test never answers stays pending.
async fn answer<T>(
    rx: oneshot::Receiver<Result<T, kube_client::Error>>,
) -> Result<T, kube_client::Error> {
    match rx.await {
        Ok(result) => result,
        Err(_) => std::future::pending().await,
    }
}

impl ListerWatcher<Cm> for FakeSource {
    fn list<'a>(
        &'a self,
        params: &'a ListParams,
    ) -> BoxFuture<'a, Result<ObjectList<Cm>, kube_client::Error>> {
        let (reply, rx) = oneshot::channel();
        let _ = self.0.send(Call::List {
            params: params.clone(),
            reply,
        });
        answer(rx).boxed()
    }

    fn watch<'a>(
        &'a self,
        resource_version: &'a str,
        timeout_secs: u32,
    ) -> BoxFuture<'a, Result<WatchStream<Cm>, kube_client::Error>> {
        let (reply, rx) = oneshot::channel();
        let _ = self.0.send(Call::Watch {
            rv: resource_version.to_owned(),
            timeout_secs,
            reply,
        });
        answer(rx).boxed()
    }
}

/// Records what handlers receive, as `add ns/name@rv`,
/// `update ns/name@rv -> ns/name@rv`, `resync ns/name@rv` (update with the
/// very same object) and `delete ns/name@rv`.
struct Recorder(mpsc::UnboundedSender<String>);

fn describe(obj: &Cm) -> String {
    let rv = obj.metadata.resource_version.as_deref().unwrap_or("");
    format!("{}@{rv}", ObjectKey::from_object(obj))
}

impl EventHandler<Cm> for Recorder {
    fn on_add(&self, obj: &Arc<Cm>) {
        let _ = self.0.send(format!("add {}", describe(obj)));
    }
    fn on_update(&self, old: &Arc<Cm>, new: &Arc<Cm>) {
        let seen = if Arc::ptr_eq(old, new) {
            format!("resync {}", describe(new))
        } else {
            format!("update {} -> {}", describe(old), describe(new))
        };
        let _ = self.0.send(seen);
    }
    fn on_delete(&self, obj: &Arc<Cm>) {
        let _ = self.0.send(format!("delete {}", describe(obj)));
    }
}

/// Virtual time a test waits for the informer before failing.
const PATIENCE: Duration = Duration::from_secs(3600);

struct Harness {
    calls: mpsc::UnboundedReceiver<Call>,
    seen: mpsc::UnboundedReceiver<String>,
    lister: Lister<Cm>,
    synced: SyncedFlag,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

fn start(resync: Option<Duration>) -> Harness {
    start_with_metrics(resync, Arc::new(NoopReflectorMetrics))
}

fn start_with_metrics(resync: Option<Duration>, metrics: Arc<dyn ReflectorMetrics>) -> Harness {
    start_with(resync, metrics, |cm| cm, vec![])
}

/// An informer caching what `transform` makes of each object, whose
/// handlers are `first`, then the recorder.
fn start_with(
    resync: Option<Duration>,
    metrics: Arc<dyn ReflectorMetrics>,
    transform: fn(Cm) -> Cm,
    first: Vec<Arc<dyn EventHandler<Cm>>>,
) -> Harness {
    let (calls_tx, calls) = mpsc::unbounded_channel();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let mut informer = Informer::new(FakeSource(calls_tx), resync)
        .with_metrics(metrics)
        .with_transform(transform);
    for handler in first {
        informer.add_event_handler(handler);
    }
    informer.add_event_handler(Arc::new(Recorder(seen_tx)));
    let cancel = CancellationToken::new();
    Harness {
        calls,
        seen,
        lister: informer.lister(),
        synced: informer.synced(),
        cancel: cancel.clone(),
        task: tokio::spawn(informer.run(cancel)),
    }
}

impl Harness {
    async fn next_call(&mut self) -> Call {
        timeout(PATIENCE, self.calls.recv())
            .await
            .expect("no call from the informer")
            .expect("informer gone")
    }

    async fn expect_list(&mut self) -> (ListParams, Reply<ObjectList<Cm>>) {
        match self.next_call().await {
            Call::List { params, reply } => (params, reply),
            Call::Watch { rv, .. } => panic!("expected a list, got a watch from {rv}"),
        }
    }

    async fn expect_watch(&mut self) -> (String, u32, Reply<WatchStream<Cm>>) {
        match self.next_call().await {
            Call::Watch {
                rv,
                timeout_secs,
                reply,
            } => (rv, timeout_secs, reply),
            Call::List { .. } => panic!("expected a watch, got a list"),
        }
    }

    /// Answers the next call, a list, with one page.
    async fn serve_list(&mut self, rv: &str, items: Vec<Cm>) {
        let (_, reply) = self.expect_list().await;
        reply.send(Ok(page(rv, items, None))).unwrap();
    }

    /// Answers the next call, a watch, with a stream fed through the
    /// returned sender (dropping it ends the stream); also returns the
    /// resourceVersion watched from.
    async fn open_watch(&mut self) -> (String, Feed) {
        let (rv, _, reply) = self.expect_watch().await;
        let (feed, events) = unbounded();
        reply.send(Ok(events.boxed())).map_err(drop).unwrap();
        (rv, feed)
    }

    /// The next `n` handler calls, sorted.
    async fn seen(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let next = timeout(PATIENCE, self.seen.recv()).await;
            out.push(next.expect("no handler call").expect("informer gone"));
        }
        out.sort();
        out
    }

    fn nothing_seen(&mut self) {
        if let Ok(extra) = self.seen.try_recv() {
            panic!("unexpected handler call: {extra}");
        }
    }

    fn cached(&self, name: &str) -> Option<String> {
        self.lister.get("default", name).map(|o| describe(&o))
    }

    /// Cancels and checks that `run` returns without any time passing.
    async fn stop(self) {
        self.cancel.cancel();
        timeout(Duration::from_millis(1), self.task)
            .await
            .expect("run kept going after cancel")
            .expect("informer task panicked");
    }
}

fn cm(name: &str, rv: &str) -> Cm {
    ConfigMap {
        metadata: ObjectMeta {
            namespace: Some("default".into()),
            name: Some(name.into()),
            resource_version: Some(rv.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn page(rv: &str, items: Vec<Cm>, next: Option<&str>) -> ObjectList<Cm> {
    ObjectList {
        types: TypeMeta {
            api_version: "v1".into(),
            kind: "ConfigMapList".into(),
        },
        metadata: ListMeta {
            resource_version: Some(rv.into()),
            continue_: next.map(Into::into),
            ..Default::default()
        },
        items,
    }
}

fn status(code: u16, reason: &str) -> Box<Status> {
    Status::failure("test", reason).with_code(code).boxed()
}

fn api_error(code: u16, reason: &str) -> kube_client::Error {
    kube_client::Error::Api(status(code, reason))
}

fn bookmark(rv: &str) -> WatchEvent<Cm> {
    WatchEvent::Bookmark(Bookmark {
        types: TypeMeta {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
        },
        metadata: BookmarkMeta {
            resource_version: rv.into(),
            annotations: Default::default(),
        },
    })
}

/// Asserts `gap` is a backoff delay of `base` with its jitter.
fn assert_backoff(gap: Duration, base: Duration) {
    let max = base.mul_f64(1.0 + Backoff::JITTER);
    assert!(
        base <= gap && gap <= max,
        "{gap:?} not in {base:?}..={max:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn initial_list_reads_all_pages_then_syncs() {
    let mut h = start(None);
    let (first, reply) = h.expect_list().await;
    assert_eq!(first.limit, Some(PAGE_SIZE));
    assert_eq!(first.continue_token, None);
    reply
        .send(Ok(page(
            "10",
            vec![cm("a", "1"), cm("b", "2")],
            Some("next-1"),
        )))
        .unwrap();

    let (second, reply) = h.expect_list().await;
    assert_eq!(second.limit, Some(PAGE_SIZE));
    assert_eq!(second.continue_token.as_deref(), Some("next-1"));
    assert!(!h.synced.is_synced(), "synced before the last page");
    reply
        .send(Ok(page("10", vec![cm("c", "3")], None)))
        .unwrap();

    assert_eq!(
        h.seen(3).await,
        ["add default/a@1", "add default/b@2", "add default/c@3"]
    );
    let cancel = CancellationToken::new();
    assert!(wait_for_cache_sync(&[h.synced.clone()], &cancel).await);
    assert_eq!(h.lister.list().len(), 3);

    let (rv, timeout_secs, _reply) = h.expect_watch().await;
    assert_eq!(rv, "10");
    assert!((WATCH_TIMEOUT_SECS..WATCH_TIMEOUT_SECS + WATCH_JITTER_SECS).contains(&timeout_secs));
}

#[tokio::test(start_paused = true)]
async fn watch_events_reach_store_and_handlers() {
    let mut h = start(None);
    h.serve_list("1", vec![]).await;
    let (rv, feed) = h.open_watch().await;
    assert_eq!(rv, "1");

    feed.unbounded_send(Ok(WatchEvent::Added(cm("b", "2"))))
        .unwrap();
    assert_eq!(h.seen(1).await, ["add default/b@2"]);
    assert_eq!(h.cached("b").as_deref(), Some("default/b@2"));

    feed.unbounded_send(Ok(WatchEvent::Modified(cm("b", "3"))))
        .unwrap();
    assert_eq!(h.seen(1).await, ["update default/b@2 -> default/b@3"]);
    assert_eq!(h.cached("b").as_deref(), Some("default/b@3"));

    feed.unbounded_send(Ok(WatchEvent::Deleted(cm("b", "4"))))
        .unwrap();
    assert_eq!(h.seen(1).await, ["delete default/b@4"]);
    assert_eq!(h.cached("b"), None);
}

#[tokio::test(start_paused = true)]
async fn bookmark_moves_resource_version_without_touching_store() {
    let mut h = start(None);
    h.serve_list("1", vec![cm("a", "1")]).await;
    assert_eq!(h.seen(1).await, ["add default/a@1"]);
    let (_, feed) = h.open_watch().await;

    feed.unbounded_send(Ok(bookmark("7"))).unwrap();
    drop(feed);
    let (rv, _, _reply) = h.expect_watch().await;
    assert_eq!(rv, "7");
    h.nothing_seen();
    assert_eq!(h.lister.list().len(), 1);
    assert_eq!(h.cached("a").as_deref(), Some("default/a@1"));
}

#[tokio::test(start_paused = true)]
async fn gone_error_event_relists_with_tombstones_and_updates() {
    let mut h = start(None);
    h.serve_list("1", vec![cm("a", "1"), cm("b", "1"), cm("same", "1")])
        .await;
    h.seen(3).await;
    let (_, feed) = h.open_watch().await;

    let t0 = Instant::now();
    feed.unbounded_send(Ok(WatchEvent::Error(status(410, "Expired"))))
        .unwrap();
    h.serve_list("5", vec![cm("a", "2"), cm("c", "3"), cm("same", "1")])
        .await;
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "a 410 relists without backoff"
    );

    assert_eq!(
        h.seen(3).await,
        [
            "add default/c@3",
            "delete default/b@1",
            "update default/a@1 -> default/a@2"
        ]
    );
    let (rv, _, _reply) = h.expect_watch().await;
    assert_eq!(rv, "5");
    h.nothing_seen();
    assert_eq!(h.cached("b"), None);
    assert_eq!(h.cached("a").as_deref(), Some("default/a@2"));
}

#[tokio::test(start_paused = true)]
async fn gone_api_error_relists_from_watch_call_and_stream() {
    let mut h = start(None);
    h.serve_list("1", vec![]).await;

    let (_, _, reply) = h.expect_watch().await;
    reply
        .send(Err(api_error(410, "Expired")))
        .map_err(drop)
        .unwrap();
    h.serve_list("2", vec![]).await;

    let (rv, feed) = h.open_watch().await;
    assert_eq!(rv, "2");
    feed.unbounded_send(Err(api_error(410, "Gone"))).unwrap();
    h.serve_list("3", vec![]).await;
    let (rv, _, _reply) = h.expect_watch().await;
    assert_eq!(rv, "3");
}

#[tokio::test(start_paused = true)]
async fn stream_end_rewatches_from_last_resource_version() {
    let mut h = start(None);
    h.serve_list("1", vec![]).await;
    let (_, feed) = h.open_watch().await;

    let t0 = Instant::now();
    feed.unbounded_send(Ok(WatchEvent::Added(cm("a", "3"))))
        .unwrap();
    drop(feed);
    let (rv, _, _reply) = h.expect_watch().await;
    assert_eq!(rv, "3");
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "no backoff after a normal end"
    );
    assert_eq!(h.seen(1).await, ["add default/a@3"]);
}

#[tokio::test(start_paused = true)]
async fn idle_watch_is_abandoned_and_rewatched() {
    let mut h = start(None);
    h.serve_list("1", vec![]).await;
    let (_, _feed) = h.open_watch().await;

    let t0 = Instant::now();
    let (rv, _, _reply) = h.expect_watch().await;
    assert_eq!(rv, "1");
    assert_eq!(t0.elapsed(), DEFAULT_IDLE_TIMEOUT);
}

/// A watch that went silent on a dead connection is dropped as soon as a
/// reader finds the cache behind the API server, not after the idle
/// timeout; the new watch starts from the last resourceVersion seen.
#[tokio::test(start_paused = true)]
async fn a_rewatch_request_ends_a_silent_watch_at_once() {
    let mut h = start(None);
    h.serve_list("1", vec![]).await;
    let (_, feed) = h.open_watch().await;
    feed.unbounded_send(Ok(WatchEvent::Added(cm("a", "4"))))
        .unwrap();
    assert_eq!(h.seen(1).await, ["add default/a@4"]);

    let t0 = Instant::now();
    h.lister.request_rewatch();
    let (rv, _, _reply) = h.expect_watch().await;
    assert_eq!(rv, "4");
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert!(
        h.synced.is_fresh(),
        "a rewatch does not make the cache stale"
    );
}

/// The API server sends a bookmark about once a minute on every watch: such
/// a watch is quiet but alive, and is kept.
#[tokio::test(start_paused = true)]
async fn a_watch_with_a_bookmark_every_minute_is_kept() {
    let mut h = start(None);
    h.serve_list("1", vec![]).await;
    let (_, feed) = h.open_watch().await;
    for rv in 2..12 {
        tokio::time::sleep(Duration::from_secs(61)).await;
        feed.unbounded_send(Ok(bookmark(&rv.to_string()))).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.calls.try_recv().is_err(), "the watch was dropped");
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_is_configurable() {
    let (calls_tx, mut calls) = mpsc::unbounded_channel();
    let informer =
        Informer::new(FakeSource(calls_tx), None).with_idle_timeout(Duration::from_secs(10));
    tokio::spawn(informer.run(CancellationToken::new()));

    // A list that never answers is given up after the idle timeout, then
    // retried after a backoff.
    let t0 = Instant::now();
    assert!(matches!(calls.recv().await, Some(Call::List { .. })));
    assert!(matches!(calls.recv().await, Some(Call::List { .. })));
    assert_backoff(t0.elapsed() - Duration::from_secs(10), Backoff::INITIAL);
}

#[tokio::test(start_paused = true)]
async fn managed_fields_are_stripped() {
    let with_managed_fields = |name: &str| {
        let mut obj = cm(name, "1");
        obj.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl".into()),
            ..Default::default()
        }]);
        obj
    };
    let mut h = start(None);
    h.serve_list("1", vec![with_managed_fields("listed")]).await;
    let (_, feed) = h.open_watch().await;
    feed.unbounded_send(Ok(WatchEvent::Added(with_managed_fields("watched"))))
        .unwrap();
    h.seen(2).await;

    for name in ["listed", "watched"] {
        let obj = h.lister.get("default", name).unwrap();
        assert_eq!(obj.metadata.managed_fields, None, "{name}");
    }
}

/// Listed and watched objects alike are cached, and handed to handlers,
/// as the transform made them.
#[tokio::test(start_paused = true)]
async fn the_transform_shapes_what_is_cached_and_delivered() {
    struct Data(mpsc::UnboundedSender<Option<String>>);
    impl EventHandler<Cm> for Data {
        fn on_add(&self, obj: &Arc<Cm>) {
            let _ = self.0.send(obj.data.as_ref().map(|d| format!("{d:?}")));
        }
        fn on_update(&self, _: &Arc<Cm>, _: &Arc<Cm>) {}
        fn on_delete(&self, _: &Arc<Cm>) {}
    }
    let with_data = |name: &str| {
        let mut obj = cm(name, "1");
        obj.data = Some([("big".to_owned(), "x".repeat(1000))].into());
        obj
    };
    let (data_tx, mut data) = mpsc::unbounded_channel();
    let mut h = start_with(
        None,
        Arc::new(NoopReflectorMetrics),
        |mut cm: Cm| {
            cm.data = None;
            cm
        },
        vec![Arc::new(Data(data_tx)) as Arc<dyn EventHandler<Cm>>],
    );
    h.serve_list("1", vec![with_data("listed")]).await;
    let (_, feed) = h.open_watch().await;
    feed.unbounded_send(Ok(WatchEvent::Added(with_data("watched"))))
        .unwrap();
    h.seen(2).await;
    for name in ["listed", "watched"] {
        assert_eq!(h.lister.get("default", name).unwrap().data, None, "{name}");
        assert_eq!(data.recv().await, Some(None), "{name}");
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn resync_redelivers_every_object_as_same_update() {
    let period = Duration::from_secs(30);
    let mut h = start(Some(period));
    h.serve_list("1", vec![cm("a", "1"), cm("b", "1")]).await;
    h.seen(2).await;
    let t0 = Instant::now();

    for round in 1..=2 {
        assert_eq!(
            h.seen(2).await,
            ["resync default/a@1", "resync default/b@1"]
        );
        assert_eq!(t0.elapsed(), period * round);
    }
}

#[tokio::test(start_paused = true)]
async fn list_errors_back_off_with_growing_jittered_delays() {
    let mut h = start(None);
    let mut last = Instant::now();
    let mut gaps = Vec::new();
    for _ in 0..4 {
        let (_, reply) = h.expect_list().await;
        gaps.push(last.elapsed());
        last = Instant::now();
        reply.send(Err(api_error(500, "InternalError"))).unwrap();
    }
    assert!(!h.synced.is_synced());
    h.serve_list("1", vec![]).await;
    h.synced.wait().await;

    assert_eq!(gaps[0], Duration::ZERO, "first list at once");
    for (gap, base_ms) in gaps[1..].iter().zip([800, 1600, 3200]) {
        assert_backoff(*gap, Duration::from_millis(base_ms));
    }
}

#[tokio::test(start_paused = true)]
async fn list_failures_are_visible_until_a_list_succeeds() {
    let mut h = start(None);
    assert_eq!(h.synced.list_failure(), None);
    let (_, reply) = h.expect_list().await;
    let refusal = Status::failure(
        "configmaps is forbidden: User \"x\" cannot list",
        "Forbidden",
    )
    .with_code(403);
    reply
        .send(Err(kube_client::Error::Api(refusal.boxed())))
        .unwrap();
    h.synced.wait_for_first_list().await;
    assert!(!h.synced.is_synced());
    let (_, reply) = h.expect_list().await;
    let failure = h.synced.list_failure().expect("a failure after a 403");
    assert!(failure.forbidden, "{failure:?}");
    // The API server's own message, nothing else.
    assert_eq!(
        failure.message,
        "configmaps is forbidden: User \"x\" cannot list"
    );

    reply.send(Err(api_error(500, "InternalError"))).unwrap();
    let (_, reply) = h.expect_list().await;
    let failure = h.synced.list_failure().expect("a failure after a 500");
    assert!(!failure.forbidden, "{failure:?}");

    reply.send(Ok(page("1", vec![], None))).unwrap();
    h.synced.wait().await;
    assert_eq!(h.synced.list_failure(), None);
}

#[tokio::test(start_paused = true)]
async fn watch_errors_back_off_then_rewatch() {
    let mut h = start(None);
    h.serve_list("1", vec![]).await;

    // A watch closed at once without any event is a failure; twice in a
    // row, the delay doubles.
    let (_, feed) = h.open_watch().await;
    drop(feed);
    let t0 = Instant::now();
    let (_, feed) = h.open_watch().await;
    assert_backoff(t0.elapsed(), Backoff::INITIAL);
    drop(feed);
    let t0 = Instant::now();
    let (_, feed) = h.open_watch().await;
    assert_backoff(t0.elapsed(), Backoff::INITIAL * 2);

    // So is an error event other than 410; the watch resumes where it was.
    // The event before it proved the watch works, so the delay starts over.
    feed.unbounded_send(Ok(WatchEvent::Added(cm("a", "2"))))
        .unwrap();
    feed.unbounded_send(Ok(WatchEvent::Error(status(500, "InternalError"))))
        .unwrap();
    let t0 = Instant::now();
    let (rv, _, _reply) = h.expect_watch().await;
    assert_eq!(rv, "2");
    assert_backoff(t0.elapsed(), Backoff::INITIAL);
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_to_max_and_reset_starts_over() {
    let mut backoff = Backoff::new();
    assert_backoff(backoff.delay(), Backoff::INITIAL);
    assert_backoff(backoff.delay(), Backoff::INITIAL * 2);
    // A 403 waits its fixed delay and does not move the exponential one.
    assert_backoff(backoff.forbidden_delay(), Backoff::FORBIDDEN);
    assert_backoff(backoff.delay(), Backoff::INITIAL * 4);
    for _ in 0..10 {
        backoff.delay();
    }
    assert_backoff(backoff.delay(), Backoff::MAX);

    backoff.reset();
    assert_backoff(backoff.delay(), Backoff::INITIAL);
}

#[tokio::test(start_paused = true)]
async fn backoff_starts_over_once_a_list_succeeds() {
    let mut h = start(None);
    for _ in 0..4 {
        let (_, reply) = h.expect_list().await;
        reply.send(Err(api_error(500, "InternalError"))).unwrap();
    }
    // The fifth attempt came after 0.8 + 1.6 + 3.2 + 6.4 s; it succeeds.
    h.serve_list("1", vec![]).await;

    // The next failure waits the initial delay, not 12.8 s.
    let (_, _, reply) = h.expect_watch().await;
    reply
        .send(Err(api_error(500, "InternalError")))
        .map_err(drop)
        .unwrap();
    let t0 = Instant::now();
    let (_, _, _reply) = h.expect_watch().await;
    assert_backoff(t0.elapsed(), Backoff::INITIAL);
}

#[tokio::test(start_paused = true)]
async fn forbidden_is_retried_after_a_fixed_delay_without_growing_backoff() {
    let mut h = start(None);
    let mut last = Instant::now();
    let mut gaps = Vec::new();
    // As an API server that boots answers: errors, then 403s while RBAC
    // loads, then another error.
    for code in [500, 403, 403, 403, 403, 500] {
        let (_, reply) = h.expect_list().await;
        gaps.push(last.elapsed());
        last = Instant::now();
        let reason = if code == 403 {
            "Forbidden"
        } else {
            "InternalError"
        };
        reply.send(Err(api_error(code, reason))).unwrap();
    }
    let (_, _reply) = h.expect_list().await;
    gaps.push(last.elapsed());

    assert_eq!(gaps[0], Duration::ZERO);
    assert_backoff(gaps[1], Backoff::INITIAL);
    for gap in &gaps[2..6] {
        assert_backoff(*gap, Backoff::FORBIDDEN);
    }
    // The 403s did not grow the exponential delay: one doubling since.
    assert_backoff(gaps[6], Backoff::INITIAL * 2);

    // A watch refused with a 403 waits the same fixed delay.
    let mut h = start(None);
    h.serve_list("1", vec![]).await;
    let (_, _, reply) = h.expect_watch().await;
    reply
        .send(Err(api_error(403, "Forbidden")))
        .map_err(drop)
        .unwrap();
    let t0 = Instant::now();
    let (_, _, _reply) = h.expect_watch().await;
    assert_backoff(t0.elapsed(), Backoff::FORBIDDEN);
}

#[tokio::test(start_paused = true)]
async fn cancel_stops_run_promptly() {
    // While watching.
    let mut h = start(Some(Duration::from_secs(30)));
    h.serve_list("1", vec![]).await;
    let (_, _feed) = h.open_watch().await;
    h.stop().await;

    // While backing off after a failed list.
    let mut h = start(None);
    let (_, reply) = h.expect_list().await;
    reply.send(Err(api_error(500, "InternalError"))).unwrap();
    tokio::task::yield_now().await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn wait_for_cache_sync_needs_all_flags_or_returns_false_on_cancel() {
    let (a, b) = (SyncedFlag::new(), SyncedFlag::new());
    a.set();
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        canceller.cancel();
    });
    assert!(!wait_for_cache_sync(&[a.clone(), b.clone()], &cancel).await);

    let cancel = CancellationToken::new();
    let setter = b.clone();
    tokio::spawn(async move { setter.set() });
    assert!(wait_for_cache_sync(&[a, b], &cancel).await);
}

#[derive(Default)]
struct Counts {
    lists: std::sync::atomic::AtomicUsize,
    watches: std::sync::atomic::AtomicUsize,
    relists: std::sync::atomic::AtomicUsize,
    failures: std::sync::atomic::AtomicUsize,
    events: std::sync::atomic::AtomicUsize,
}

impl Counts {
    fn get(&self) -> [usize; 5] {
        use std::sync::atomic::Ordering::SeqCst;
        [
            self.lists.load(SeqCst),
            self.watches.load(SeqCst),
            self.relists.load(SeqCst),
            self.failures.load(SeqCst),
            self.events.load(SeqCst),
        ]
    }
}

impl ReflectorMetrics for Counts {
    fn list(&self) {
        self.lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn watch(&self) {
        self.watches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn relist(&self) {
        self.relists
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn failure(&self) {
        self.failures
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn watch_event(&self) {
        self.events
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn metrics_count_lists_watches_relists_failures_and_events() {
    let counts = Arc::new(Counts::default());
    let mut h = start_with_metrics(None, counts.clone());
    // [lists, watches, relists, failures, events]
    let (_, reply) = h.expect_list().await;
    reply.send(Err(api_error(500, "InternalError"))).unwrap();
    h.serve_list("1", vec![cm("a", "1")]).await;
    h.seen(1).await;
    assert_eq!(
        counts.get(),
        [1, 1, 0, 1, 0],
        "the watch call follows at once"
    );

    let (_, feed) = h.open_watch().await;
    feed.unbounded_send(Ok(WatchEvent::Modified(cm("a", "2"))))
        .unwrap();
    feed.unbounded_send(Ok(WatchEvent::Deleted(cm("a", "3"))))
        .unwrap();
    feed.unbounded_send(Ok(bookmark("4"))).unwrap();
    h.seen(2).await;
    feed.unbounded_send(Ok(WatchEvent::Error(status(410, "Expired"))))
        .unwrap();
    h.serve_list("5", vec![]).await;
    let (_, _, _reply) = h.expect_watch().await;
    assert_eq!(counts.get(), [2, 2, 1, 1, 2], "bookmarks are not events");
}

/// Panics on every object named `bad`.
struct PanicsOnBad;

impl PanicsOnBad {
    fn check(&self, obj: &Cm) {
        if obj.metadata.name.as_deref() == Some("bad") {
            panic!("handler bug on {}", describe(obj));
        }
    }
}

impl EventHandler<Cm> for PanicsOnBad {
    fn on_add(&self, obj: &Arc<Cm>) {
        self.check(obj);
    }
    fn on_update(&self, _: &Arc<Cm>, new: &Arc<Cm>) {
        self.check(new);
    }
    fn on_delete(&self, obj: &Arc<Cm>) {
        self.check(obj);
    }
}

#[derive(Default)]
struct PanicCount(std::sync::atomic::AtomicUsize);

impl ReflectorMetrics for PanicCount {
    fn handler_panic(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn panicking_handler_does_not_stop_the_informer() {
    let panics = Arc::new(PanicCount::default());
    let mut h = start_with(
        Some(Duration::from_secs(30)),
        panics.clone(),
        |cm| cm,
        vec![Arc::new(PanicsOnBad) as Arc<dyn EventHandler<Cm>>],
    );
    h.serve_list("1", vec![cm("bad", "1"), cm("a", "1")]).await;
    // The handler after the panicking one still gets every change.
    assert_eq!(h.seen(2).await, ["add default/a@1", "add default/bad@1"]);

    let (_, feed) = h.open_watch().await;
    feed.unbounded_send(Ok(WatchEvent::Modified(cm("bad", "2"))))
        .unwrap();
    feed.unbounded_send(Ok(WatchEvent::Added(cm("b", "3"))))
        .unwrap();
    feed.unbounded_send(Ok(WatchEvent::Deleted(cm("a", "4"))))
        .unwrap();
    assert_eq!(
        h.seen(3).await,
        [
            "add default/b@3",
            "delete default/a@4",
            "update default/bad@1 -> default/bad@2"
        ]
    );
    assert_eq!(h.cached("bad").as_deref(), Some("default/bad@2"));
    assert_eq!(h.cached("b").as_deref(), Some("default/b@3"));
    assert_eq!(h.cached("a"), None);

    // Resync goes through the same guard.
    assert_eq!(
        h.seen(2).await,
        ["resync default/b@3", "resync default/bad@2"]
    );
    assert_eq!(panics.0.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert!(!h.task.is_finished());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn fresh_after_a_list_and_through_normal_watch_ends() {
    let mut h = start(None);
    assert!(!h.synced.is_fresh(), "fresh before any list");
    h.serve_list("1", vec![]).await;
    h.synced.wait().await;
    assert!(h.synced.is_fresh());

    // A watch the server ends after its timeout.
    let (_, feed) = h.open_watch().await;
    tokio::time::sleep(Duration::from_secs(WATCH_TIMEOUT_SECS.into())).await;
    drop(feed);
    // Ends after events.
    let (_, feed) = h.open_watch().await;
    feed.unbounded_send(Ok(WatchEvent::Added(cm("a", "2"))))
        .unwrap();
    drop(feed);
    // Goes silent past the idle timeout.
    let (_, _feed) = h.open_watch().await;
    let (rv, _, _reply) = h.expect_watch().await;
    assert_eq!(rv, "2");
    assert!(h.synced.is_fresh());
}

#[tokio::test(start_paused = true)]
async fn failed_watch_is_not_fresh_until_a_new_watch_settles() {
    let mut h = start(None);
    h.serve_list("1", vec![]).await;
    let (_, feed) = h.open_watch().await;
    feed.unbounded_send(Err(api_error(500, "InternalError")))
        .unwrap();

    // Not fresh from the failure, through the backoff.
    let (_, _, reply) = h.expect_watch().await;
    assert!(!h.synced.is_fresh());
    assert!(h.synced.is_synced(), "readiness does not flap");
    let (feed, events) = unbounded();
    reply.send(Ok(events.boxed())).map_err(drop).unwrap();
    let t0 = Instant::now();

    // The backlog arrives; the cache is fresh once the stream went quiet.
    tokio::time::sleep(SETTLE / 2).await;
    feed.unbounded_send(Ok(WatchEvent::Added(cm("a", "2"))))
        .unwrap();
    h.seen(1).await;
    assert!(!h.synced.is_fresh());
    h.synced.wait_fresh().await;
    assert_eq!(t0.elapsed(), SETTLE / 2 + SETTLE);

    // A bookmark settles a new watch at once.
    feed.unbounded_send(Ok(WatchEvent::Error(status(500, "InternalError"))))
        .unwrap();
    let (_, feed) = h.open_watch().await;
    assert!(!h.synced.is_fresh());
    let t0 = Instant::now();
    feed.unbounded_send(Ok(bookmark("3"))).unwrap();
    h.synced.wait_fresh().await;
    assert_eq!(t0.elapsed(), Duration::ZERO);

    // A stream too busy to go quiet settles after SETTLE_MAX.
    feed.unbounded_send(Ok(WatchEvent::Error(status(500, "InternalError"))))
        .unwrap();
    let (_, feed) = h.open_watch().await;
    let t0 = Instant::now();
    let busy = tokio::spawn(async move {
        for i in 0.. {
            tokio::time::sleep(SETTLE / 4).await;
            if feed
                .unbounded_send(Ok(WatchEvent::Modified(cm("a", &format!("{}", 10 + i)))))
                .is_err()
            {
                break;
            }
        }
    });
    h.synced.wait_fresh().await;
    assert_eq!(t0.elapsed(), SETTLE_MAX);
    busy.abort();
}

#[tokio::test(start_paused = true)]
async fn gone_keeps_the_cache_stale_until_the_relist_completes() {
    let mut h = start(None);
    h.serve_list("1", vec![cm("a", "1")]).await;
    h.seen(1).await;

    // The API server went away: the watch fails.
    let (_, feed) = h.open_watch().await;
    drop(feed);
    assert!(h.synced.is_fresh());
    let (_, _, reply) = h.expect_watch().await;
    assert!(!h.synced.is_fresh());
    // It is back with a compacted history: the new watch is accepted, then
    // answers 410 at once, before it could settle.
    let (feed, events) = unbounded();
    reply.send(Ok(events.boxed())).map_err(drop).unwrap();
    feed.unbounded_send(Ok(WatchEvent::Error(status(410, "Expired"))))
        .unwrap();

    // The relist fails once: still not fresh, still synced.
    let (_, reply) = h.expect_list().await;
    assert!(!h.synced.is_fresh());
    reply.send(Err(api_error(500, "InternalError"))).unwrap();
    let (_, reply) = h.expect_list().await;
    assert!(!h.synced.is_fresh());
    assert!(h.synced.is_synced());

    // The relist that completes makes it fresh, with the changes delivered.
    reply.send(Ok(page("9", vec![], None))).unwrap();
    h.synced.wait_fresh().await;
    assert_eq!(h.seen(1).await, ["delete default/a@1"]);
    assert_eq!(h.cached("a"), None);
}

#[tokio::test(start_paused = true)]
async fn wait_for_fresh_needs_every_flag_fresh_at_once() {
    let (a, b) = (SyncedFlag::new(), SyncedFlag::new());
    a.set();
    let cancel = CancellationToken::new();

    // b turns fresh just as a turns stale, then a turns fresh again.
    let (a2, b2) = (a.clone(), b.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        a2.set_fresh(false);
        b2.set();
        tokio::time::sleep(Duration::from_secs(1)).await;
        a2.set_fresh(true);
    });
    let t0 = Instant::now();
    assert!(wait_for_fresh(&[a.clone(), b.clone()], &cancel).await);
    assert_eq!(t0.elapsed(), Duration::from_secs(2));
    assert!(a.is_fresh() && b.is_fresh());

    // At once when all are fresh.
    assert!(wait_for_fresh(&[a.clone(), b.clone()], &cancel).await);
    assert_eq!(t0.elapsed(), Duration::from_secs(2));

    // False on cancel.
    b.set_fresh(false);
    let canceller = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        canceller.cancel();
    });
    assert!(!wait_for_fresh(&[a, b], &cancel).await);
}

mod selectors {
    use super::*;
    use http::{Request, Response};
    use kube_client::client::Body;
    use kube_client::{Api, Client};

    /// An `Api` over a mocked API server, and the handle that answers it.
    fn mocked() -> (
        Api<Cm>,
        tower_test::mock::Handle<Request<Body>, Response<Body>>,
    ) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (
            Api::namespaced(Client::new(service, "default"), "ns"),
            handle,
        )
    }

    /// Makes one list call and one watch call through `source` and returns
    /// the query strings the server received.
    async fn queries(
        source: impl ListerWatcher<Cm>,
        mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    ) -> (String, String) {
        let server = tokio::spawn(async move {
            let mut queries = Vec::new();
            for body in [
                serde_json::to_vec(&page("5", vec![], None)).unwrap(),
                Vec::new(),
            ] {
                let (request, respond) = handle.next_request().await.expect("a request");
                queries.push(request.uri().query().unwrap_or_default().to_owned());
                respond.send_response(Response::new(Body::from(body)));
            }
            queries
        });
        let params = ListParams::default().limit(PAGE_SIZE);
        source.list(&params).await.expect("list");
        let _ = source.watch("5", 300).await.expect("watch");
        let queries = server.await.unwrap();
        (queries[0].clone(), queries[1].clone())
    }

    fn decoded(query: &str) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = query
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let v = v
                    .replace("%3D", "=")
                    .replace("%2C", ",")
                    .replace("%21", "!");
                (k.to_owned(), v)
            })
            .collect();
        pairs.sort();
        pairs
    }

    fn has(query: &str, key: &str, value: &str) -> bool {
        decoded(query).iter().any(|(k, v)| k == key && v == value)
    }

    #[tokio::test]
    async fn api_source_sends_selectors_with_list_and_watch() {
        let (api, handle) = mocked();
        let source = ApiSource::new(api)
            .label_selector("a=b,c!=d")
            .field_selector("metadata.name=x");
        let (list, watch) = queries(source, handle).await;
        for query in [&list, &watch] {
            assert!(has(query, "labelSelector", "a=b,c!=d"), "{query}");
            assert!(has(query, "fieldSelector", "metadata.name=x"), "{query}");
        }
        assert!(has(&list, "limit", &PAGE_SIZE.to_string()), "{list}");
        assert!(has(&watch, "watch", "true"), "{watch}");
        assert!(has(&watch, "allowWatchBookmarks", "true"), "{watch}");
        assert!(has(&watch, "resourceVersion", "5"), "{watch}");
        assert!(has(&watch, "timeoutSeconds", "300"), "{watch}");
    }

    #[tokio::test]
    async fn plain_api_and_unset_selectors_send_none() {
        let (api, handle) = mocked();
        let (list, watch) = queries(api, handle).await;
        let (api, handle) = mocked();
        let (list2, watch2) = queries(ApiSource::new(api), handle).await;
        for query in [&list, &watch, &list2, &watch2] {
            assert!(!query.contains("Selector"), "{query}");
        }
        assert!(has(&watch2, "allowWatchBookmarks", "true"), "{watch2}");
    }

    #[tokio::test]
    async fn list_params_keep_the_reflectors_paging() {
        let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Cm> = Api::namespaced(Client::new(service, "default"), "ns");
        let source = ApiSource::new(api).label_selector("a=b");
        let page = ListParams::default().limit(7).continue_token("next");
        let params = source.list_params(&page);
        assert_eq!(params.limit, Some(7));
        assert_eq!(params.continue_token.as_deref(), Some("next"));
        assert_eq!(params.label_selector.as_deref(), Some("a=b"));
        assert_eq!(params.field_selector, None);
        let params = source.watch_params(300);
        assert_eq!(params.label_selector.as_deref(), Some("a=b"));
        assert!(params.bookmarks);
    }
}
