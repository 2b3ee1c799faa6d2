//! `regtest-node --conf FILE --bind IP [--datadir DIR]`

use clap::Parser;
use regtest_node::{Config, Node, NodeOptions};
use std::net::IpAddr;
use std::path::PathBuf;

/// A small Bitcoin regtest node speaking Bitcoin Core's RPC dialect.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// bitcoin.conf to read.
    #[arg(long)]
    conf: PathBuf,
    /// Address to bind RPC and P2P to.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Data directory; the RPC cookie goes to <datadir>/regtest/.cookie.
    #[arg(long)]
    datadir: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.conf)
        .map_err(|e| format!("cannot read {}: {e}", args.conf.display()))?;
    let node = Node::start(NodeOptions {
        bind_ip: args.bind,
        config: Config::parse(&text)?,
        datadir: args.datadir,
    })
    .await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT received"),
        _ = term.recv() => log::info!("SIGTERM received"),
        _ = node.stopped() => log::info!("stop requested over RPC"),
    }
    node.stop().await;
    Ok(())
}
