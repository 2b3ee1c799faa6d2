//! The controller: informers feed event handlers, handlers enqueue network
//! keys, workers reconcile them (see `docs/architecture.md`).

pub mod cached;
pub mod connectivity;
mod events;
pub mod mining;
pub mod partition;
pub mod problem;
mod reconcile;
pub mod resources;
pub mod router;
mod secrets;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Service;
use kube_client::config::{KubeConfigOptions, Kubeconfig};
use kube_client::{Api, Client, Config};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::BitcoinNetwork;
use crate::bitcoin::RpcClient;
use crate::controller::cached::{CachedPod, CachedStatefulSet};
use crate::informer::{
    wait_for_cache_sync, wait_for_fresh, ApiSource, Informer, Lister, ObjectKey, SyncedFlag,
};
use crate::leader::{self, LeaderElection, Leadership, LostLease, Timing};
use crate::metrics::{Metrics, ReconcileResult};
use crate::server::{self, Health, SyncCheck};
use crate::workqueue::{default_controller_rate_limiter, WorkQueue};

pub use events::{EventType, Recorder, RecorderOptions, RecorderTask};
pub use problem::{Error, Problem, Reason};
pub use reconcile::{reconcile, Action, FIELD_MANAGER};
pub use router::Router;
pub use secrets::{SecretAccess, SecretCaches, SecretView};

/// Command-line options of `bitcoin-controller run`.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Path to a kubeconfig. Without it: in-cluster config, else $KUBECONFIG or ~/.kube/config.
    #[arg(long, global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, global = true)]
    pub namespace: Option<String>,
    /// Number of networks reconciled concurrently.
    #[arg(long, global = true, default_value_t = 4)]
    pub workers: usize,
    /// Period after which every cached object is re-delivered to the handlers
    /// (e.g. 30s, 1m; 0 disables).
    #[arg(long, global = true, default_value = "30s", value_parser = parse_duration)]
    pub resync_period: Duration,
    /// Timeout for one JSON-RPC call to a bitcoind node.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub rpc_timeout: Duration,
    /// Address of the Prometheus metrics endpoint `/metrics` (e.g. :8080,
    /// 127.0.0.1:8080; 0 disables it).
    #[arg(long, global = true, default_value = ":8080", value_parser = parse_bind_address)]
    pub metrics_bind_address: BindAddress,
    /// Address of the health probe endpoints `/healthz` and `/readyz`
    /// (0 disables them).
    #[arg(long, global = true, default_value = ":8081", value_parser = parse_bind_address)]
    pub health_probe_bind_address: BindAddress,
    /// Run the workers only while holding the leader Lease, so that several
    /// replicas can run with one active.
    #[arg(
        long,
        global = true,
        default_value_t = false,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else bitcoin-controller).
    #[arg(long, global = true)]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, global = true, default_value = leader::DEFAULT_LEASE_NAME)]
    pub leader_election_id: String,
}

/// A listen address; `None` when the endpoint is disabled (`0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindAddress(pub Option<SocketAddr>);

fn parse_bind_address(s: &str) -> Result<BindAddress, String> {
    server::parse_bind_address(s).map(BindAddress)
}

/// Parses durations such as `500ms`, `30s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 500ms, 5m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration unit in {s:?}: use ms, s, m or h")),
    }
}

/// Where a reconcile sends its Events: the [`Recorder`], or a capture in
/// tests.
pub trait EventSink: Send + Sync {
    /// Records an Event about `net`; never blocks, never fails. `message`
    /// must never contain credentials.
    fn publish(
        &self,
        net: &BitcoinNetwork,
        type_: EventType,
        reason: &'static str,
        message: String,
    );
}

impl EventSink for Recorder {
    fn publish(
        &self,
        net: &BitcoinNetwork,
        type_: EventType,
        reason: &'static str,
        message: String,
    ) {
        Recorder::publish(self, net, type_, reason, message);
    }
}

/// Everything a reconcile reads and writes through.
pub struct Context {
    pub client: Client,
    pub networks: Lister<BitcoinNetwork>,
    pub statefulsets: Lister<CachedStatefulSet>,
    pub services: Lister<Service>,
    pub pods: Lister<CachedPod>,
    pub secrets: SecretCaches,
    pub rpc: RpcClient,
    pub recorder: Arc<dyn EventSink>,
}

async fn client(opts: &Options) -> Result<Client, Box<dyn std::error::Error>> {
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| format!("reading kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
        }
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// How long in-flight reconciles may take to finish on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The four informers every reconcile reads, with their sync flags.
struct Informers {
    networks: Informer<BitcoinNetwork>,
    statefulsets: Informer<CachedStatefulSet>,
    services: Informer<Service>,
    pods: Informer<CachedPod>,
}

impl Informers {
    const NAMES: [&'static str; 4] = ["bitcoinnetworks", "statefulsets", "services", "pods"];

    /// Networks (all of them) and the owned kinds (only what carries the
    /// controller's managed-by label).
    fn new(client: &Client, opts: &Options, metrics: &Metrics) -> Self {
        let ns = opts.namespace.as_deref();
        let resync = (!opts.resync_period.is_zero()).then_some(opts.resync_period);
        Informers {
            networks: informer(client, ns, None, resync, metrics)
                .with_transform(cached::cached_network),
            statefulsets: informer(
                client,
                ns,
                Some(resources::MANAGED_BY_SELECTOR),
                resync,
                metrics,
            ),
            services: informer(
                client,
                ns,
                Some(resources::MANAGED_BY_SELECTOR),
                resync,
                metrics,
            ),
            pods: informer(
                client,
                ns,
                Some(resources::MANAGED_BY_SELECTOR),
                resync,
                metrics,
            ),
        }
    }

    fn flags(&self) -> [SyncedFlag; 4] {
        [
            self.networks.synced(),
            self.statefulsets.synced(),
            self.services.synced(),
            self.pods.synced(),
        ]
    }

    fn route_to(&mut self, router: &Arc<Router>) {
        self.networks.add_event_handler(router.clone());
        self.statefulsets.add_event_handler(router.clone());
        self.services.add_event_handler(router.clone());
        self.pods.add_event_handler(router.clone());
    }

    /// Runs every informer in `tasks`, each named after its resource.
    fn spawn(self, tasks: &mut JoinSet<&'static str>, stop: &CancellationToken) {
        let [n, s, v, p] = Self::NAMES;
        tasks.spawn(self.networks.run(stop.clone()).map(move |()| n));
        tasks.spawn(self.statefulsets.run(stop.clone()).map(move |()| s));
        tasks.spawn(self.services.run(stop.clone()).map(move |()| v));
        tasks.spawn(self.pods.run(stop.clone()).map(move |()| p));
    }
}

/// What a worker waits for before it starts a reconcile: its leadership
/// valid by its own clock, and every cache current (none is retrying or
/// relisting after a failure, so no reconcile acts on a network the API
/// server deleted while a cache was behind).
#[derive(Clone)]
struct Gate {
    leadership: watch::Receiver<Leadership>,
    caches: Arc<[SyncedFlag]>,
    stop: CancellationToken,
}

impl Gate {
    /// False when the controller stops first.
    async fn open(&mut self) -> bool {
        if self.stop.is_cancelled() {
            return false;
        }
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => false,
            _ = async {
                loop {
                    Leadership::wait_valid(&mut self.leadership).await;
                    if !wait_for_fresh(&self.caches, &self.stop).await {
                        return;
                    }
                    // Waiting for the caches takes time: check the lease again.
                    if self.leadership.borrow().is_valid_at(Instant::now()) {
                        return;
                    }
                }
            } => !self.stop.is_cancelled(),
        }
    }
}

/// Runs the controller until SIGINT or SIGTERM (then returns `Ok` after
/// finishing the work in progress and releasing the lease), or until
/// something it cannot work without fails: the lease is lost, an informer
/// or worker task died (then returns an error at once, and the process
/// exits non-zero so that Kubernetes restarts it).
pub async fn run(opts: Options) -> Result<(), Box<dyn std::error::Error>> {
    let client = client(&opts).await?;
    let resync = (!opts.resync_period.is_zero()).then_some(opts.resync_period);
    let metrics = Metrics::new();
    let queue: WorkQueue<ObjectKey> = WorkQueue::with_metrics(
        "bitcoinnetworks",
        default_controller_rate_limiter(),
        metrics.workqueue("bitcoinnetworks"),
    );

    let mut informers = Informers::new(&client, &opts, &metrics);
    let router = Arc::new(Router::new(
        queue.clone(),
        informers.networks.lister(),
        informers.statefulsets.lister(),
    ));
    informers.route_to(&router);
    let flags = informers.flags();
    let informer_stop = CancellationToken::new();
    let events_stop = CancellationToken::new();
    let (recorder, recorder_task) =
        Recorder::with_options(client.clone(), RecorderOptions::default());
    let recorder_task = tokio::spawn(recorder_task.run(events_stop.clone()));
    let ctx = Arc::new(Context {
        client: client.clone(),
        networks: informers.networks.lister(),
        statefulsets: informers.statefulsets.lister(),
        services: informers.services.lister(),
        pods: informers.pods.lister(),
        secrets: SecretCaches::new(
            client.clone(),
            resync,
            metrics.reflector("secrets"),
            router,
            informer_stop.clone(),
        ),
        rpc: RpcClient::new(opts.rpc_timeout, opts.rpc_timeout).with_metrics(metrics.rpc()),
        recorder: Arc::new(recorder),
    });
    let health = Health::new(
        Informers::NAMES
            .into_iter()
            .zip(&flags)
            .map(|(name, flag)| (name.to_owned(), sync_check(flag.clone())))
            .collect(),
    );

    // Bind before anything else starts, so a taken port fails at once.
    let servers_stop = CancellationToken::new();
    let mut servers = JoinSet::new();
    if let Some(addr) = opts.metrics_bind_address.0 {
        let listener = server::bind(addr, "metrics server").await?;
        let handler = server::metrics_handler(metrics.clone());
        servers.spawn(server::serve(listener, handler, servers_stop.clone()));
    }
    if let Some(addr) = opts.health_probe_bind_address.0 {
        let listener = server::bind(addr, "health probe server").await?;
        let handler = server::health_handler(health.clone());
        servers.spawn(server::serve(listener, handler, servers_stop.clone()));
    }

    // `stop` fires on SIGINT/SIGTERM; informers keep running (on their own
    // token) while the workers drain.
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            stop.cancel();
        }
    });
    let mut tasks: JoinSet<&'static str> = JoinSet::new();
    informers.spawn(&mut tasks, &informer_stop);
    crate::memory::spawn_trimmer();

    // Without leader election this process leads from the start. With it,
    // the campaign runs while the caches fill, and a standby keeps its
    // caches warm (and reports ready) so it can take over quickly.
    let initial = if opts.leader_elect {
        Leadership::Standby
    } else {
        Leadership::Always
    };
    let (leading_tx, leading) = watch::channel(initial);
    let release = CancellationToken::new();
    let mut election = opts.leader_elect.then(|| {
        let namespace = opts
            .leader_election_namespace
            .clone()
            .unwrap_or_else(leader::default_namespace);
        let election = LeaderElection::new(
            client.clone(),
            &namespace,
            &opts.leader_election_id,
            leader::default_identity(),
            Timing::default(),
        );
        tokio::spawn(election.run(leading_tx, release.clone()))
    });

    // Everything up to the drain runs against `fatal`: a lost lease or a
    // dead task ends the process at once.
    let work = async {
        log::info!("waiting for caches to sync");
        if !wait_for_cache_sync(&flags, &stop).await {
            return Ok(());
        }
        log::info!("caches synced");
        let mut until_leading = leading.clone();
        if !until_leading.borrow().is_valid_at(Instant::now()) {
            log::info!("waiting to become leader");
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = until_leading.wait_for(|l| *l != Leadership::Standby) => {}
        }
        metrics.set_leader(true);
        log::info!("starting {} workers", opts.workers);
        let gate = Gate {
            leadership: leading.clone(),
            caches: Arc::new(flags.clone()),
            stop: stop.clone(),
        };
        let mut workers = JoinSet::new();
        for _ in 0..opts.workers.max(1) {
            let ctx = ctx.clone();
            workers.spawn(worker(
                queue.clone(),
                metrics.clone(),
                gate.clone(),
                move |key| {
                    let ctx = ctx.clone();
                    async move { reconcile(&ctx, &key).await }
                },
            ));
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            ended = workers.join_next() => return Err(match ended {
                Some(Err(err)) if err.is_panic() => {
                    format!("a worker panicked: {}", panic_message(err.into_panic()))
                }
                _ => "a worker ended unexpectedly".to_owned(),
            }),
        }
        health.set_shutting_down();
        log::info!("shutting down: finishing work in progress");
        if tokio::time::timeout(DRAIN_TIMEOUT, queue.shut_down_with_drain())
            .await
            .is_err()
        {
            log::warn!("work in progress did not finish within {DRAIN_TIMEOUT:?}");
        }
        workers.shutdown().await;
        Ok(())
    };
    let fatal = async {
        tokio::select! {
            lost = lost_lease(&mut election) => lost,
            ended = tasks.join_next() => match ended {
                Some(Err(err)) if err.is_panic() => {
                    format!("an informer panicked: {}", panic_message(err.into_panic()))
                }
                Some(Ok(name)) => format!("the {name} informer ended unexpectedly"),
                Some(Err(err)) => format!("an informer failed: {err}"),
                None => std::future::pending().await,
            },
        }
    };
    let failure = tokio::select! {
        done = work => done.err(),
        why = fatal => Some(why),
    };
    if let Some(why) = failure {
        health.set_failed(why.clone());
        metrics.set_leader(false);
        return Err(why.into());
    }

    health.set_shutting_down();
    queue.shut_down();
    // Release the lease (if held) only now that no worker runs.
    release.cancel();
    if let Some(election) = election {
        match election.await {
            Ok(Ok(())) => {}
            Ok(Err(lost)) => return Err(lost.into()),
            Err(err) => return Err(format!("leader election task: {err}").into()),
        }
    }
    metrics.set_leader(false);
    // What the last reconciles recorded goes out (bounded in time).
    events_stop.cancel();
    let _ = recorder_task.await;
    informer_stop.cancel();
    tasks.shutdown().await;
    servers_stop.cancel();
    servers.shutdown().await;
    log::info!("stopped");
    Ok(())
}

/// An informer over `K` in `namespace` (all when `None`), optionally only
/// over objects matching `labels`, reporting its reflector's counters under
/// the resource's plural name.
fn informer<K>(
    client: &Client,
    namespace: Option<&str>,
    labels: Option<&str>,
    resync: Option<Duration>,
    metrics: &Metrics,
) -> Informer<K>
where
    K: kube_client::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut source = ApiSource::new(api);
    if let Some(labels) = labels {
        source = source.label_selector(labels);
    }
    Informer::new(source, resync).with_metrics(metrics.reflector(&K::plural(&())))
}

fn sync_check(flag: SyncedFlag) -> SyncCheck {
    Arc::new(move || flag.is_synced())
}

/// Resolves when the election task ends before it was asked to release,
/// which only happens when the lease is lost; never without election.
async fn lost_lease(election: &mut Option<JoinHandle<Result<(), LostLease>>>) -> String {
    let Some(task) = election.as_mut() else {
        return std::future::pending().await;
    };
    let outcome = task.await;
    *election = None;
    match outcome {
        Ok(Err(lost)) => lost.to_string(),
        Ok(Ok(())) => "leader election ended unexpectedly".to_owned(),
        Err(err) => format!("leader election task: {err}"),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Marks the key done when dropped: after the reconcile, after a panic in
/// it, or when the worker task is cancelled.
struct Processing<'a> {
    queue: &'a WorkQueue<ObjectKey>,
    key: ObjectKey,
}

impl Drop for Processing<'_> {
    fn drop(&mut self) {
        self.queue.done(&self.key);
    }
}

/// Takes keys off the queue until it shuts down (sample-controller's
/// `processNextWorkItem`) and hands each to `reconcile` once the gate is
/// open. A panicking reconcile costs its key one backoff, not the worker.
async fn worker<F, Fut>(queue: WorkQueue<ObjectKey>, metrics: Metrics, mut gate: Gate, reconcile: F)
where
    F: Fn(ObjectKey) -> Fut,
    Fut: std::future::Future<Output = Result<Action, Error>>,
{
    while let Some(key) = queue.get().await {
        let processing = Processing { queue: &queue, key };
        let key = &processing.key;
        if !gate.open().await {
            continue;
        }
        let started = Instant::now();
        let result = std::panic::AssertUnwindSafe(reconcile(key.clone()))
            .catch_unwind()
            .await;
        let took = started.elapsed();
        match result {
            Ok(Ok(Action::Done)) => {
                metrics.reconciled(ReconcileResult::Success, took);
                queue.forget(key);
            }
            Ok(Ok(Action::RequeueAfter(after))) => {
                metrics.reconciled(ReconcileResult::RequeueAfter, took);
                queue.forget(key);
                queue.add_after(key.clone(), after);
            }
            Ok(Err(err)) => {
                metrics.reconciled(ReconcileResult::Error(err.metric_label()), took);
                let retry = queue.num_requeues(key) + 1;
                // Problems are logged by the reconcile, once each.
                if matches!(err, Error::Stale(_) | Error::Problem(_)) {
                    log::debug!("{key}: {err} (retry {retry})");
                } else {
                    log::warn!("{key}: {err} (retry {retry})");
                }
                queue.add_rate_limited(key.clone());
            }
            Err(panic) => {
                metrics.reconciled(ReconcileResult::Error(problem::PANIC_LABEL), took);
                log::error!(
                    "{key}: reconcile panicked: {}; retrying with backoff",
                    panic_message(panic)
                );
                queue.add_rate_limited(key.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn open_gate() -> (Gate, watch::Sender<Leadership>) {
        let (tx, rx) = watch::channel(Leadership::Always);
        let gate = Gate {
            leadership: rx,
            caches: Arc::new([]),
            stop: CancellationToken::new(),
        };
        (gate, tx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_reconcile_costs_one_backoff_not_the_worker() {
        let queue = WorkQueue::new("test");
        let (gate, _tx) = open_gate();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let worker = tokio::spawn(worker(
            queue.clone(),
            Metrics::new(),
            gate,
            move |key: ObjectKey| {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    if key.name == "boom" && n == 0 {
                        panic!("bug in reconcile");
                    }
                    Ok(Action::Done)
                }
            },
        ));
        queue.add(ObjectKey::new("ns", "boom"));
        // The key is retried after its backoff, by the same (only) worker,
        // and other keys keep flowing.
        tokio::time::sleep(Duration::from_secs(1)).await;
        queue.add(ObjectKey::new("ns", "other"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "boom, boom again, other");
        assert_eq!(queue.len(), 0);
        assert!(!worker.is_finished());
        // Nothing is left marked as processing: a new add is handed out.
        queue.add(ObjectKey::new("ns", "boom"));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        queue.shut_down();
        worker.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_lease_lapsed_starts_nothing_until_it_renewed() {
        let queue = WorkQueue::new("test");
        let (mut gate, tx) = open_gate();
        let renewed = Instant::now();
        tx.send_replace(Leadership::Until(renewed + Duration::from_secs(10)));
        gate.leadership = tx.subscribe();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let worker = tokio::spawn(worker(queue.clone(), Metrics::new(), gate, move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
            async { Ok(Action::Done) }
        }));
        queue.add(ObjectKey::new("ns", "a"));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // The process stood still (SIGSTOP) past the renew deadline: by its
        // own clock the lease may be someone else's now.
        tokio::time::sleep(Duration::from_secs(16)).await;
        queue.add(ObjectKey::new("ns", "b"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "no reconcile on a lapsed lease"
        );

        // It renews: work goes on.
        tx.send_replace(Leadership::Until(Instant::now() + Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        queue.shut_down();
        worker.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn workers_hold_while_a_cache_is_not_fresh() {
        assert!(Leadership::Always.is_valid_at(Instant::now()));
        assert!(!Leadership::Standby.is_valid_at(Instant::now()));
        let (gate, _tx) = open_gate();
        let stop = gate.stop.clone();
        let mut gate = gate;
        // No caches: open at once; stopped: closed.
        assert!(gate.open().await);
        stop.cancel();
        assert!(!gate.open().await);
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: Options,
    }

    fn parse(args: &[&str]) -> Options {
        Cli::try_parse_from(std::iter::once("bitcoin-controller").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .opts
    }

    #[test]
    fn operations_flags_follow_controller_runtime() {
        let o = parse(&[]);
        assert_eq!(
            o.metrics_bind_address.0,
            Some("0.0.0.0:8080".parse().unwrap())
        );
        assert_eq!(
            o.health_probe_bind_address.0,
            Some("0.0.0.0:8081".parse().unwrap())
        );
        assert!(!o.leader_elect);
        assert_eq!(o.leader_election_namespace, None);
        assert_eq!(o.leader_election_id, "bitcoin-controller");

        let o = parse(&[
            "--metrics-bind-address=0",
            "--health-probe-bind-address",
            "127.0.0.1:9000",
            "--leader-elect",
            "--leader-election-namespace=ops",
            "--leader-election-id=other",
        ]);
        assert_eq!(o.metrics_bind_address.0, None);
        assert_eq!(
            o.health_probe_bind_address.0,
            Some("127.0.0.1:9000".parse().unwrap())
        );
        assert!(o.leader_elect);
        assert_eq!(o.leader_election_namespace.as_deref(), Some("ops"));
        assert_eq!(o.leader_election_id, "other");

        assert!(parse(&["--leader-elect=true"]).leader_elect);
        assert!(!parse(&["--leader-elect=false"]).leader_elect);
        assert!(Cli::try_parse_from(["x", "--metrics-bind-address=8080"]).is_err());
        // As with Go's boolean flags, a value needs `=`: a following word is
        // not taken as the value.
        assert!(Cli::try_parse_from(["x", "--leader-elect", "false"]).is_err());
    }
}
