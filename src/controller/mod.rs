//! The controller: informers feed event handlers, handlers enqueue network
//! keys, workers reconcile them (see `docs/architecture.md`).

pub mod connectivity;
mod events;
mod reconcile;
pub mod resources;
pub mod router;
mod secrets;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube_client::config::{KubeConfigOptions, Kubeconfig};
use kube_client::{Api, Client, Config};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::BitcoinNetwork;
use crate::bitcoin::RpcClient;
use crate::informer::{wait_for_cache_sync, Informer, Lister, ObjectKey, SyncedFlag};
use crate::leader::{self, LeaderElection, LostLease, Timing};
use crate::metrics::{Metrics, ReconcileResult};
use crate::server::{self, Health, SyncCheck};
use crate::workqueue::{default_controller_rate_limiter, WorkQueue};

pub use events::{EventType, Recorder};
pub use reconcile::{reconcile, Action, Error};
pub use router::Router;
pub use secrets::{SecretAccess, SecretCaches};

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

/// Everything a reconcile reads and writes through.
pub struct Context {
    pub client: Client,
    pub networks: Lister<BitcoinNetwork>,
    pub statefulsets: Lister<StatefulSet>,
    pub services: Lister<Service>,
    pub pods: Lister<Pod>,
    pub secrets: SecretCaches,
    pub rpc: RpcClient,
    pub recorder: Recorder,
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

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube_client::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// How long in-flight reconciles may take to finish on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the controller until SIGINT or SIGTERM (then returns `Ok` after
/// finishing the work in progress and releasing the lease), or until the
/// leader lease is lost (then returns an error at once).
pub async fn run(opts: Options) -> Result<(), Box<dyn std::error::Error>> {
    let client = client(&opts).await?;
    let ns = opts.namespace.as_deref();
    let resync = (!opts.resync_period.is_zero()).then_some(opts.resync_period);
    let metrics = Metrics::new();
    let queue: WorkQueue<ObjectKey> = WorkQueue::with_metrics(
        "bitcoinnetworks",
        default_controller_rate_limiter(),
        metrics.workqueue("bitcoinnetworks"),
    );

    let mut networks = informer::<BitcoinNetwork>(&client, ns, resync, &metrics);
    let mut statefulsets = informer::<StatefulSet>(&client, ns, resync, &metrics);
    let mut services = informer::<Service>(&client, ns, resync, &metrics);
    let mut pods = informer::<Pod>(&client, ns, resync, &metrics);

    let router = Arc::new(Router::new(
        queue.clone(),
        networks.lister(),
        statefulsets.lister(),
    ));
    networks.add_event_handler(router.clone());
    statefulsets.add_event_handler(router.clone());
    services.add_event_handler(router.clone());
    pods.add_event_handler(router.clone());

    let informer_stop = CancellationToken::new();
    let ctx = Arc::new(Context {
        client: client.clone(),
        networks: networks.lister(),
        statefulsets: statefulsets.lister(),
        services: services.lister(),
        pods: pods.lister(),
        secrets: SecretCaches::new(
            client.clone(),
            resync,
            metrics.reflector("secrets"),
            router,
            informer_stop.clone(),
        ),
        rpc: RpcClient::new(opts.rpc_timeout, opts.rpc_timeout).with_metrics(metrics.rpc()),
        recorder: Recorder::new(client.clone()),
    });
    let synced = [
        networks.synced(),
        statefulsets.synced(),
        services.synced(),
        pods.synced(),
    ];
    let health = Health::new(
        ["bitcoinnetworks", "statefulsets", "services", "pods"]
            .into_iter()
            .zip(&synced)
            .map(|(name, flag)| (name.to_owned(), sync_check(flag.clone())))
            .collect(),
    );

    // Bind before anything else starts, so a taken port fails at once.
    let servers_stop = CancellationToken::new();
    let mut servers = tokio::task::JoinSet::new();
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
    let mut informers = tokio::task::JoinSet::new();
    informers.spawn(networks.run(informer_stop.clone()));
    informers.spawn(statefulsets.run(informer_stop.clone()));
    informers.spawn(services.run(informer_stop.clone()));
    informers.spawn(pods.run(informer_stop.clone()));

    // Without leader election this process leads from the start. With it,
    // the campaign runs while the caches fill, and a standby keeps its
    // caches warm (and reports ready) so it can take over quickly.
    let (leading_tx, mut leading) = watch::channel(!opts.leader_elect);
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

    log::info!("waiting for caches to sync");
    let mut run_workers = wait_for_cache_sync(&synced, &stop).await;
    if run_workers {
        log::info!("caches synced");
        if !*leading.borrow() {
            log::info!("waiting to become leader");
        }
        run_workers = tokio::select! {
            _ = stop.cancelled() => false,
            _ = leading.wait_for(|leading| *leading) => true,
            lost = lost_lease(&mut election) => return Err(lost.into()),
        };
    }
    if run_workers {
        metrics.set_leader(true);
        log::info!("starting {} workers", opts.workers);
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..opts.workers.max(1) {
            workers.spawn(worker(ctx.clone(), queue.clone(), metrics.clone()));
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            // Another process may lead now: stop at once, finish nothing.
            lost = lost_lease(&mut election) => return Err(lost.into()),
        }
        health.set_shutting_down();
        log::info!("shutting down: finishing work in progress");
        tokio::select! {
            drained = tokio::time::timeout(DRAIN_TIMEOUT, queue.shut_down_with_drain()) => {
                if drained.is_err() {
                    log::warn!("work in progress did not finish within {DRAIN_TIMEOUT:?}");
                }
            }
            lost = lost_lease(&mut election) => return Err(lost.into()),
        }
        workers.shutdown().await;
    }
    health.set_shutting_down();
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
    queue.shut_down();
    informer_stop.cancel();
    informers.shutdown().await;
    servers_stop.cancel();
    servers.shutdown().await;
    log::info!("stopped");
    Ok(())
}

/// An informer over `K` in `namespace` (all when `None`), reporting its
/// reflector's counters under the resource's plural name.
fn informer<K>(
    client: &Client,
    namespace: Option<&str>,
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
    Informer::new(api::<K>(client, namespace), resync)
        .with_metrics(metrics.reflector(&K::plural(&())))
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

/// Takes keys off the queue until it shuts down (sample-controller's
/// `processNextWorkItem`).
async fn worker(ctx: Arc<Context>, queue: WorkQueue<ObjectKey>, metrics: Metrics) {
    while let Some(key) = queue.get().await {
        let started = Instant::now();
        let result = reconcile(&ctx, &key).await;
        metrics.reconciled(
            match &result {
                Ok(Action::Done) => ReconcileResult::Success,
                Ok(Action::RequeueAfter(_)) => ReconcileResult::RequeueAfter,
                Err(_) => ReconcileResult::Error,
            },
            started.elapsed(),
        );
        match result {
            Ok(Action::Done) => queue.forget(&key),
            Ok(Action::RequeueAfter(after)) => {
                queue.forget(&key);
                queue.add_after(key.clone(), after);
            }
            Err(err) => {
                log::warn!(
                    "reconciling {key} failed (retry {}): {err}",
                    queue.num_requeues(&key) + 1
                );
                queue.add_rate_limited(key.clone());
            }
        }
        queue.done(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
