//! podsim: plays kubelet for one simulated Node against a real API server.
//! See README.md.

mod backoff;
mod ipalloc;
mod net;
mod node;
mod podwatch;
mod probe;
mod runtime;
mod sim;
mod status;
mod volumes;
mod worker;

use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube_client::config::{KubeConfigOptions, Kubeconfig};
use kube_client::{Api, Client};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Pod simulator: plays kubelet for one simulated Node, running a regtest node per bitcoin pod"
)]
struct Args {
    /// kubeconfig of a user allowed to manage nodes, pods (and their
    /// binding/status subresources), and to read secrets and configmaps.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Name of the Node to register and serve.
    #[arg(long)]
    node_name: String,
    /// Where pod addresses (ips.json) and node data (pods/<uid>) live.
    #[arg(long)]
    state_dir: PathBuf,
    /// Pod addresses are <prefix>.x.y (127.N) or <prefix>.y (127.N.N).
    #[arg(long, default_value = "127.1")]
    ip_prefix: String,
}

async fn client(path: &PathBuf) -> Result<Client, String> {
    let kubeconfig =
        Kubeconfig::read_from(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let config =
        kube_client::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
    Client::try_from(config).map_err(|e| format!("client: {e}"))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: stopping"),
        _ = term.recv() => log::info!("SIGTERM: stopping"),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    if let Err(e) = run(args).await {
        log::error!("{e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let prefix = ipalloc::Prefix::parse(&args.ip_prefix).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(args.state_dir.join("pods"))
        .map_err(|e| format!("state dir {}: {e}", args.state_dir.display()))?;
    let client = client(&args.kubeconfig).await?;
    let ips = ipalloc::IpStore::open(&args.state_dir, prefix.clone());
    log::info!(
        "podsim {} for Node {}: pod addresses {prefix}.x.y, state in {} ({} known pod addresses)",
        env!("CARGO_PKG_VERSION"),
        args.node_name,
        args.state_dir.display(),
        ips.len()
    );
    let ctx = Arc::new(worker::Ctx {
        client: client.clone(),
        node_labels: node::labels(&args.node_name),
        node_name: args.node_name.clone(),
        state_dir: args.state_dir.clone(),
        ips: Mutex::new(ips),
    });

    let token = CancellationToken::new();
    let (registered_tx, registered_rx) = tokio::sync::oneshot::channel();
    let node_task = tokio::spawn(node::run(
        client.clone(),
        args.node_name.clone(),
        registered_tx,
        token.clone(),
    ));

    let signal = shutdown_signal();
    tokio::pin!(signal);
    tokio::select! {
        _ = &mut signal => {
            token.cancel();
            let _ = node_task.await;
            return Ok(());
        }
        _ = registered_rx => {}
    }

    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let watch_task = tokio::spawn(podwatch::run(Api::<Pod>::all(client), tx, token.clone()));
    let sim_task = tokio::spawn(sim::run(ctx, rx, token.clone()));

    signal.await;
    token.cancel();
    if tokio::time::timeout(Duration::from_secs(30), sim_task)
        .await
        .is_err()
    {
        log::warn!("pods did not stop within 30s");
    }
    let _ = watch_task.await;
    let _ = node_task.await;
    log::info!("bye");
    Ok(())
}
