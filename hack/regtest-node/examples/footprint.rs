//! Footprint of idle nodes: starts N nodes in this process (default 100) on
//! 127.87.1.1.. with the default regtest ports, as the pod simulator would,
//! links them in a ring with `addnode`, mines 101 blocks on node 0, waits
//! until every node has the same best block, then measures resident memory
//! and CPU time while everything idles.
//!
//! ```sh
//! cargo run --release -p regtest-node --example footprint -- [NODES] [IDLE_SECS]
//! ```

use base64::Engine;
use regtest_node::{Config, Node, NodeOptions};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Resident set size of this process in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// User + system CPU time of this process in clock ticks (1/100 s on Linux).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses): utime is the
    // 12th and stime the 13th of them.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

async fn rpc(addr: SocketAddr, cookie: &str, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(cookie);
    let req = format!(
        "POST / HTTP/1.1\r\nAuthorization: Basic {auth}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (_, body) = out.split_once("\r\n\r\n").unwrap();
    serde_json::from_str::<Value>(body).unwrap()["result"].clone()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(100, |a| a.parse().unwrap());
    let idle_secs: u64 = args.next().map_or(30, |a| a.parse().unwrap());
    assert!((2..=250).contains(&n), "between 2 and 250 nodes");

    let rss_before = rss_kib();
    let mut nodes = Vec::with_capacity(n);
    for i in 1..=n {
        let opts = NodeOptions {
            bind_ip: format!("127.87.1.{i}").parse().unwrap(),
            config: Config::parse("regtest=1\n").unwrap(),
            datadir: None,
        };
        nodes.push(Node::start(opts).await.expect("start node"));
    }
    let rss_started = rss_kib();
    println!("{n} nodes started: RSS {rss_before} KiB -> {rss_started} KiB");

    // Ring: node i adds node i+1, so every node has one outbound and one
    // inbound peer, with their ping timers and reconnect tasks.
    for (i, node) in nodes.iter().enumerate() {
        let next = format!("127.87.1.{}", (i + 1) % n + 1);
        rpc(
            node.rpc_addr(),
            node.cookie(),
            "addnode",
            json!([next, "add"]),
        )
        .await;
    }
    let started = Instant::now();
    loop {
        let mut connected = 0;
        for node in &nodes {
            let count = rpc(
                node.rpc_addr(),
                node.cookie(),
                "getconnectioncount",
                json!([]),
            )
            .await;
            connected += usize::from(count == 2);
        }
        if connected == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("ring of {n} connected in {:?}", started.elapsed());

    let started = Instant::now();
    let (addr, cookie) = (nodes[0].rpc_addr(), nodes[0].cookie());
    let mined = rpc(
        addr,
        cookie,
        "generatetoaddress",
        json!([101, "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"]),
    )
    .await;
    let best = mined.as_array().unwrap().last().unwrap().clone();
    loop {
        let mut synced = 0;
        for node in &nodes {
            synced += usize::from(
                rpc(
                    node.rpc_addr(),
                    node.cookie(),
                    "getbestblockhash",
                    json!([]),
                )
                .await
                    == best,
            );
        }
        if synced == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "101 blocks mined on node 0 reached all {n} nodes in {:?}",
        started.elapsed()
    );

    // Let allocator and connection buffers settle, then measure idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_idle, cpu0, t0) = (rss_kib(), cpu_ticks(), Instant::now());
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (cpu1, elapsed) = (cpu_ticks(), t0.elapsed());
    let cpu_secs = (cpu1 - cpu0) as f64 / 100.0;
    println!(
        "idle: RSS {rss_idle} KiB total, {:.0} KiB per node above the empty process",
        (rss_idle - rss_before) as f64 / n as f64
    );
    println!(
        "idle: CPU {cpu_secs:.2} s over {:.1} s = {:.3}% of one core for {n} nodes ({:.4}% per node)",
        elapsed.as_secs_f64(),
        100.0 * cpu_secs / elapsed.as_secs_f64(),
        100.0 * cpu_secs / elapsed.as_secs_f64() / n as f64
    );
    for node in nodes {
        node.stop().await;
    }
}
