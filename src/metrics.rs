//! Prometheus metrics of the controller (prometheus-client), served at
//! `--metrics-bind-address` in the OpenMetrics text format.
//!
//! - workqueue: client-go's names and `name` label (`workqueue_depth`,
//!   `workqueue_adds_total`, `workqueue_queue_duration_seconds`,
//!   `workqueue_work_duration_seconds`, `workqueue_unfinished_work_seconds`,
//!   `workqueue_longest_running_processor_seconds`, `workqueue_retries_total`);
//! - reconciles: `bitcoin_controller_reconcile_total{result}`,
//!   `bitcoin_controller_reconcile_errors_total`,
//!   `bitcoin_controller_reconcile_duration_seconds`;
//! - reflectors: `bitcoin_controller_reflector_{lists,watches,relists,failures,watch_events}_total{resource}`;
//! - bitcoind JSON-RPC: `bitcoin_controller_rpc_requests_total{method,outcome}`,
//!   `bitcoin_controller_rpc_duration_seconds{method}`;
//! - leader election: `bitcoin_controller_leader` (1 while this process leads
//!   or runs without leader election).
//!
//! The hot paths (queue hooks, reflector hooks) use metric handles resolved
//! once per queue or resource: an atomic add, or a short lock for histograms.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::bitcoin::RpcMetrics;
use crate::informer::ReflectorMetrics;
use crate::workqueue::{QueueMetrics, UnfinishedWorkProbe};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn queue_histogram() -> Histogram {
    // client-go: 10 ns .. 1000 s, by powers of ten.
    Histogram::new(exponential_buckets(1e-8, 10.0, 12))
}

fn rpc_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn reconcile_histogram() -> Histogram {
    // 5 ms .. ~82 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// How a reconcile ended, the `result` label of
/// `bitcoin_controller_reconcile_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileResult {
    /// Done; nothing to do until something changes.
    Success,
    /// Done for now; look again after a delay.
    RequeueAfter,
    /// Failed (with the reason's metric label); retried with backoff.
    Error(&'static str),
}

impl ReconcileResult {
    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::RequeueAfter => "requeue_after",
            Self::Error(_) => "error",
        }
    }
}

/// Every metric of the controller. Cheap to clone (handles share state).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    queue_depth: Family<QueueLabels, Gauge>,
    queue_adds: Family<QueueLabels, Counter>,
    queue_retries: Family<QueueLabels, Counter>,
    queue_latency: HistogramFamily<QueueLabels>,
    work_duration: HistogramFamily<QueueLabels>,
    unfinished: Arc<UnfinishedWorkCollector>,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_errors: Family<ReasonLabels, Counter>,
    reconcile_duration: Histogram,
    reflector: [Family<ResourceLabels, Counter>; 6],
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: HistogramFamily<MethodLabels>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered (and no samples yet).
    pub fn new() -> Self {
        let mut r = Registry::default();
        let queue_depth = Family::default();
        let queue_adds = Family::default();
        let queue_retries = Family::default();
        let queue_latency: HistogramFamily<QueueLabels> =
            Family::new_with_constructor(queue_histogram);
        let work_duration: HistogramFamily<QueueLabels> =
            Family::new_with_constructor(queue_histogram);
        let unfinished = Arc::new(UnfinishedWorkCollector::default());
        r.register(
            "workqueue_depth",
            "Items ready to be handed to a worker",
            queue_depth.clone(),
        );
        r.register(
            "workqueue_adds",
            "Items accepted by the queue (adds of an item already waiting are not counted)",
            queue_adds.clone(),
        );
        r.register(
            "workqueue_queue_duration_seconds",
            "Seconds an item waited in the queue before a worker took it",
            queue_latency.clone(),
        );
        r.register(
            "workqueue_work_duration_seconds",
            "Seconds a worker spent on an item, from taking it to marking it done",
            work_duration.clone(),
        );
        r.register(
            "workqueue_retries",
            "Items re-added through the rate limiter after a failure",
            queue_retries.clone(),
        );
        r.register_collector(Box::new(unfinished.clone()));

        let reconciles = Family::default();
        let reconcile_errors = Family::default();
        let reconcile_duration = reconcile_histogram();
        r.register(
            "bitcoin_controller_reconcile",
            "Reconciles of BitcoinNetworks by result (success, requeue_after, error)",
            reconciles.clone(),
        );
        r.register(
            "bitcoin_controller_reconcile_errors",
            "Reconciles of BitcoinNetworks that failed, by reason (a Degraded reason, KubeApi, CacheNotSynced or Panic)",
            reconcile_errors.clone(),
        );
        r.register(
            "bitcoin_controller_reconcile_duration_seconds",
            "How long one reconcile of a BitcoinNetwork takes",
            reconcile_duration.clone(),
        );

        let reflector: [Family<ResourceLabels, Counter>; 6] = Default::default();
        for (family, (name, help)) in reflector.iter().zip([
            ("lists", "Complete lists (all pages) by resource"),
            ("watches", "Watch calls by resource"),
            (
                "relists",
                "Lists again because the watched resourceVersion expired (410 Gone)",
            ),
            (
                "failures",
                "Failed list or watch attempts, retried with backoff",
            ),
            (
                "watch_events",
                "Added, modified and deleted watch events by resource",
            ),
            (
                "handler_panics",
                "Event handlers that panicked (caught; the informer goes on)",
            ),
        ]) {
            r.register(
                format!("bitcoin_controller_reflector_{name}"),
                help,
                family.clone(),
            );
        }

        let rpc_requests = Family::default();
        let rpc_duration: HistogramFamily<MethodLabels> =
            Family::new_with_constructor(rpc_histogram);
        r.register(
            "bitcoin_controller_rpc_requests",
            "JSON-RPC calls to bitcoind nodes by method and outcome (success or the kind of error)",
            rpc_requests.clone(),
        );
        r.register(
            "bitcoin_controller_rpc_duration_seconds",
            "Latency of JSON-RPC calls to bitcoind nodes by method",
            rpc_duration.clone(),
        );

        let leader = Gauge::default();
        r.register(
            "bitcoin_controller_leader",
            "1 while this process runs the workers (it holds the lease, or leader election is off)",
            leader.clone(),
        );

        for result in [
            ReconcileResult::Success,
            ReconcileResult::RequeueAfter,
            ReconcileResult::Error(""),
        ] {
            // Present (at 0) from the start, so rates work before the first error.
            let _ = reconciles.get_or_create(&ResultLabels {
                result: result.label(),
            });
        }
        for reason in crate::controller::Error::METRIC_LABELS {
            let _ = reconcile_errors.get_or_create(&ReasonLabels { reason });
        }

        Self {
            registry: Arc::new(r),
            queue_depth,
            queue_adds,
            queue_retries,
            queue_latency,
            work_duration,
            unfinished,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            reflector,
            rpc_requests,
            rpc_duration,
            leader,
        }
    }

    /// Every metric in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The hook for a workqueue named `name`.
    pub fn workqueue(&self, name: &str) -> WorkqueueMetrics {
        let labels = QueueLabels {
            name: name.to_owned(),
        };
        WorkqueueMetrics {
            name: name.to_owned(),
            depth: self.queue_depth.get_or_create(&labels).clone(),
            adds: self.queue_adds.get_or_create(&labels).clone(),
            retries: self.queue_retries.get_or_create(&labels).clone(),
            latency: self.queue_latency.get_or_create(&labels).clone(),
            work_duration: self.work_duration.get_or_create(&labels).clone(),
            unfinished: self.unfinished.clone(),
        }
    }

    /// The hook for the reflector of `resource` (e.g. `pods`).
    pub fn reflector(&self, resource: &str) -> Arc<dyn ReflectorMetrics> {
        let labels = ResourceLabels {
            resource: resource.to_owned(),
        };
        let [lists, watches, relists, failures, events, handler_panics] = self
            .reflector
            .each_ref()
            .map(|f| f.get_or_create(&labels).clone());
        Arc::new(ResourceReflectorMetrics {
            lists,
            watches,
            relists,
            failures,
            events,
            handler_panics,
        })
    }

    /// The hook for the bitcoind RPC client.
    pub fn rpc(&self) -> Arc<dyn RpcMetrics> {
        Arc::new(self.clone())
    }

    /// Records one reconcile.
    pub fn reconciled(&self, result: ReconcileResult, took: Duration) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.label(),
            })
            .inc();
        if let ReconcileResult::Error(reason) = result {
            self.reconcile_errors
                .get_or_create(&ReasonLabels { reason })
                .inc();
        }
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Sets `bitcoin_controller_leader`.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
}

impl RpcMetrics for Metrics {
    fn observe(&self, method: &str, outcome: &'static str, elapsed: Duration) {
        self.rpc_requests
            .get_or_create(&RpcLabels {
                method: method.to_owned(),
                outcome,
            })
            .inc();
        self.rpc_duration
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// [`QueueMetrics`] of one workqueue.
pub struct WorkqueueMetrics {
    name: String,
    depth: Gauge,
    adds: Counter,
    retries: Counter,
    latency: Histogram,
    work_duration: Histogram,
    unfinished: Arc<UnfinishedWorkCollector>,
}

impl QueueMetrics for WorkqueueMetrics {
    fn add(&self) {
        self.adds.inc();
    }
    fn depth(&self, depth: usize) {
        self.depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
    }
    fn get(&self, waited: Duration) {
        self.latency.observe(waited.as_secs_f64());
    }
    fn done(&self, worked: Duration) {
        self.work_duration.observe(worked.as_secs_f64());
    }
    fn retry(&self) {
        self.retries.inc();
    }
    fn unfinished_work_probe(&self, probe: UnfinishedWorkProbe) {
        self.unfinished
            .probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((self.name.clone(), probe));
    }
}

/// [`ReflectorMetrics`] of one resource.
struct ResourceReflectorMetrics {
    lists: Counter,
    watches: Counter,
    relists: Counter,
    failures: Counter,
    events: Counter,
    handler_panics: Counter,
}

impl ReflectorMetrics for ResourceReflectorMetrics {
    fn list(&self) {
        self.lists.inc();
    }
    fn watch(&self) {
        self.watches.inc();
    }
    fn relist(&self) {
        self.relists.inc();
    }
    fn failure(&self) {
        self.failures.inc();
    }
    fn watch_event(&self) {
        self.events.inc();
    }
    fn handler_panic(&self) {
        self.handler_panics.inc();
    }
}

/// Measures the work in progress of every queue at scrape time.
#[derive(Debug, Default)]
struct UnfinishedWorkCollector {
    probes: Mutex<Vec<(String, UnfinishedWorkProbe)>>,
}

impl Collector for UnfinishedWorkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let measured: Vec<(QueueLabels, f64, f64)> = self
            .probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|(name, probe)| {
                let work = probe.measure()?;
                Some((
                    QueueLabels { name: name.clone() },
                    work.total.as_secs_f64(),
                    work.longest.as_secs_f64(),
                ))
            })
            .collect();
        for (metric, help, pick) in [
            (
                "workqueue_unfinished_work_seconds",
                "Seconds spent so far on the items workers hold now, summed (not yet in \
                 work_duration; a steady rise means a stuck worker)",
                0,
            ),
            (
                "workqueue_longest_running_processor_seconds",
                "Seconds spent so far on the item a worker has held longest",
                1,
            ),
        ] {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
            for (labels, total, longest) in &measured {
                let value = if pick == 0 { *total } else { *longest };
                ConstGauge::new(value).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workqueue::{ItemExponentialFailureRateLimiter, WorkQueue};

    /// The value of the sample `line_start` (name and labels) in `text`.
    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
            .and_then(|v| v.split(' ').next()?.parse().ok())
    }

    #[tokio::test(start_paused = true)]
    async fn workqueue_metrics_use_client_go_names_and_move() {
        let metrics = Metrics::new();
        let q = WorkQueue::with_metrics(
            "networks",
            ItemExponentialFailureRateLimiter::new(
                Duration::from_millis(5),
                Duration::from_secs(1),
            ),
            metrics.workqueue("networks"),
        );
        q.add("a");
        q.add("b");
        q.add("a");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let a = q.get().await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let text = metrics.encode();
        let l = "{name=\"networks\"}";
        assert_eq!(
            sample(&text, &format!("workqueue_adds_total{l}")),
            Some(2.0)
        );
        assert_eq!(sample(&text, &format!("workqueue_depth{l}")), Some(1.0));
        assert_eq!(
            sample(&text, &format!("workqueue_unfinished_work_seconds{l}")),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("workqueue_longest_running_processor_seconds{l}")
            ),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, &format!("workqueue_queue_duration_seconds_count{l}")),
            Some(1.0)
        );
        q.done(&a);
        q.add_rate_limited("a");
        let text = metrics.encode();
        assert_eq!(
            sample(&text, &format!("workqueue_work_duration_seconds_count{l}")),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, &format!("workqueue_work_duration_seconds_sum{l}")),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, &format!("workqueue_retries_total{l}")),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, &format!("workqueue_unfinished_work_seconds{l}")),
            Some(0.0)
        );
        drop(q);
        let text = metrics.encode();
        assert_eq!(
            sample(&text, &format!("workqueue_unfinished_work_seconds{l}")),
            None,
            "a dropped queue is no longer reported"
        );
    }

    #[test]
    fn every_metric_name_is_exported() {
        let metrics = Metrics::new();
        let _queue: WorkQueue<u32> = WorkQueue::with_metrics(
            "networks",
            ItemExponentialFailureRateLimiter::new(
                Duration::from_millis(5),
                Duration::from_secs(1),
            ),
            metrics.workqueue("networks"),
        );
        let reflector = metrics.reflector("pods");
        reflector.list();
        reflector.watch();
        reflector.relist();
        reflector.failure();
        reflector.watch_event();
        reflector.watch_event();
        metrics.reconciled(ReconcileResult::Success, Duration::from_millis(30));
        metrics.reconciled(
            ReconcileResult::Error("NodeSyncFailed"),
            Duration::from_millis(10),
        );
        let rpc = metrics.rpc();
        rpc.observe("getaddednodeinfo", "success", Duration::from_millis(3));
        rpc.observe("addnode", "timeout", Duration::from_secs(2));
        metrics.set_leader(true);

        let text = metrics.encode();
        for name in [
            "workqueue_depth{name=\"networks\"} 0",
            "workqueue_adds_total{name=\"networks\"} 0",
            "workqueue_retries_total{name=\"networks\"} 0",
            "workqueue_queue_duration_seconds_bucket{le=\"1e-8\",name=\"networks\"} 0",
            "workqueue_work_duration_seconds_count{name=\"networks\"} 0",
            "workqueue_unfinished_work_seconds{name=\"networks\"} 0",
            "workqueue_longest_running_processor_seconds{name=\"networks\"} 0",
            "bitcoin_controller_reconcile_total{result=\"success\"} 1",
            "bitcoin_controller_reconcile_total{result=\"error\"} 1",
            "bitcoin_controller_reconcile_errors_total{reason=\"NodeSyncFailed\"} 1",
            "bitcoin_controller_reconcile_duration_seconds_count 2",
            "bitcoin_controller_reflector_lists_total{resource=\"pods\"} 1",
            "bitcoin_controller_reflector_watches_total{resource=\"pods\"} 1",
            "bitcoin_controller_reflector_relists_total{resource=\"pods\"} 1",
            "bitcoin_controller_reflector_failures_total{resource=\"pods\"} 1",
            "bitcoin_controller_reflector_watch_events_total{resource=\"pods\"} 2",
            "bitcoin_controller_rpc_requests_total{method=\"getaddednodeinfo\",outcome=\"success\"} 1",
            "bitcoin_controller_rpc_requests_total{method=\"addnode\",outcome=\"timeout\"} 1",
            "bitcoin_controller_rpc_duration_seconds_count{method=\"addnode\"} 1",
            "bitcoin_controller_leader 1",
            "# TYPE workqueue_unfinished_work_seconds gauge",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} missing in\n{text}"
            );
        }
    }
}
