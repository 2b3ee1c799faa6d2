//! The controller: informers feed event handlers, handlers enqueue network
//! keys, workers reconcile them (see `docs/architecture.md`).

pub mod connectivity;
mod events;
mod reconcile;
pub mod resources;
pub mod router;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube_client::config::{KubeConfigOptions, Kubeconfig};
use kube_client::{Api, Client, Config};
use tokio_util::sync::CancellationToken;

use crate::api::BitcoinNetwork;
use crate::bitcoin::RpcClient;
use crate::informer::{wait_for_cache_sync, Informer, Lister, ObjectKey};
use crate::workqueue::WorkQueue;

pub use events::{EventType, Recorder};
pub use reconcile::{reconcile, Action, Error};
pub use router::Router;

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
    pub secrets: Lister<Secret>,
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

/// Runs the controller until SIGINT or SIGTERM.
pub async fn run(opts: Options) -> Result<(), Box<dyn std::error::Error>> {
    let client = client(&opts).await?;
    let ns = opts.namespace.as_deref();
    let resync = (!opts.resync_period.is_zero()).then_some(opts.resync_period);
    let queue: WorkQueue<ObjectKey> = WorkQueue::new("bitcoinnetworks");

    let mut networks = Informer::new(api::<BitcoinNetwork>(&client, ns), resync);
    let mut statefulsets = Informer::new(api::<StatefulSet>(&client, ns), resync);
    let mut services = Informer::new(api::<Service>(&client, ns), resync);
    let mut pods = Informer::new(api::<Pod>(&client, ns), resync);
    let mut secrets = Informer::new(api::<Secret>(&client, ns), resync);

    let router = Arc::new(Router::new(
        queue.clone(),
        networks.lister(),
        statefulsets.lister(),
    ));
    networks.add_event_handler(router.clone());
    statefulsets.add_event_handler(router.clone());
    services.add_event_handler(router.clone());
    pods.add_event_handler(router.clone());
    secrets.add_event_handler(router);

    let ctx = Arc::new(Context {
        client: client.clone(),
        networks: networks.lister(),
        statefulsets: statefulsets.lister(),
        services: services.lister(),
        pods: pods.lister(),
        secrets: secrets.lister(),
        rpc: RpcClient::new(opts.rpc_timeout, opts.rpc_timeout),
        recorder: Recorder::new(client),
    });
    let synced = [
        networks.synced(),
        statefulsets.synced(),
        services.synced(),
        pods.synced(),
        secrets.synced(),
    ];

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
    let informer_stop = CancellationToken::new();
    let mut informers = tokio::task::JoinSet::new();
    informers.spawn(networks.run(informer_stop.clone()));
    informers.spawn(statefulsets.run(informer_stop.clone()));
    informers.spawn(services.run(informer_stop.clone()));
    informers.spawn(pods.run(informer_stop.clone()));
    informers.spawn(secrets.run(informer_stop.clone()));

    log::info!("waiting for caches to sync");
    if wait_for_cache_sync(&synced, &stop).await {
        log::info!("caches synced; starting {} workers", opts.workers);
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..opts.workers.max(1) {
            workers.spawn(worker(ctx.clone(), queue.clone()));
        }
        stop.cancelled().await;
        log::info!("shutting down: finishing work in progress");
        if tokio::time::timeout(Duration::from_secs(30), queue.shut_down_with_drain())
            .await
            .is_err()
        {
            log::warn!("work in progress did not finish within 30s");
        }
        workers.shutdown().await;
    }
    queue.shut_down();
    informer_stop.cancel();
    informers.shutdown().await;
    log::info!("stopped");
    Ok(())
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
async fn worker(ctx: Arc<Context>, queue: WorkQueue<ObjectKey>) {
    while let Some(key) = queue.get().await {
        match reconcile(&ctx, &key).await {
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
