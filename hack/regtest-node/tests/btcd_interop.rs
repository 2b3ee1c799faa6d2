//! Interop with btcd, an independent full node written in Go: blocks our
//! node mines must sync to btcd, and blocks btcd mines must sync to us.
//!
//! Needs `BTCD_BIN`; build it with `hack/btcd/build.sh`, which prints the path:
//!
//! ```sh
//! BTCD_BIN=$(hack/btcd/build.sh) cargo test -p regtest-node --test btcd_interop -- --nocapture
//! ```
//!
//! btcd on regtest only syncs from peers on 127.0.0.1, so both nodes use it,
//! with ephemeral ports.

use base64::Engine;
use regtest_node::{Config, Node, NodeOptions};
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A regtest P2WPKH address; both nodes accept bcrt1 addresses.
const MINING_ADDR: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
const BTCD_USER: &str = "interop";
const BTCD_PASS: &str = "interop-pass";

fn btcd_bin() -> PathBuf {
    let hint = "set BTCD_BIN to a btcd binary: build one with `hack/btcd/build.sh` \
                (it prints the path), e.g. BTCD_BIN=$(hack/btcd/build.sh) cargo test -p regtest-node --test btcd_interop";
    let bin = std::env::var_os("BTCD_BIN").unwrap_or_else(|| panic!("BTCD_BIN is not set: {hint}"));
    let bin = PathBuf::from(bin);
    assert!(
        bin.is_file(),
        "BTCD_BIN={} does not exist: {hint}",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// JSON-RPC 1.0 over HTTP with Basic auth; returns `result` or the error.
async fn rpc(addr: SocketAddr, auth: &str, method: &str, params: Value) -> Result<Value, String> {
    let body = json!({"jsonrpc": "1.0", "id": 1, "method": method, "params": params}).to_string();
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let auth = base64::engine::general_purpose::STANDARD.encode(auth);
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let response = String::from_utf8_lossy(&response);
    let (_, body) = response.split_once("\r\n\r\n").ok_or("no HTTP body")?;
    let v: Value = serde_json::from_str(body.trim()).map_err(|e| format!("{e}: {body}"))?;
    match &v["error"] {
        Value::Null => Ok(v["result"].clone()),
        e => Err(e.to_string()),
    }
}

/// Kills btcd when the test ends, however it ends.
struct Btcd {
    child: Child,
    rpc: SocketAddr,
    p2p: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Btcd {
    fn start(connect: SocketAddr) -> Btcd {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("btcd.conf");
        std::fs::write(&conf, "").unwrap();
        let rpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let p2p: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("stdout.log")).unwrap();
        let child = Command::new(btcd_bin())
            .arg("--regtest")
            .arg(format!("--configfile={}", conf.display()))
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg(format!("--logdir={}", dir.path().join("logs").display()))
            .arg(format!("--listen={p2p}"))
            .arg(format!("--rpclisten={rpc}"))
            .arg(format!("--rpcuser={BTCD_USER}"))
            .arg(format!("--rpcpass={BTCD_PASS}"))
            .arg("--notls")
            .arg("--nodnsseed")
            .arg("--noonion")
            .arg(format!("--connect={connect}"))
            .arg(format!("--miningaddr={MINING_ADDR}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start btcd");
        Btcd {
            child,
            rpc,
            p2p,
            _dir: dir,
        }
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        rpc(
            self.rpc,
            &format!("{BTCD_USER}:{BTCD_PASS}"),
            method,
            params,
        )
        .await
    }

    fn log_tail(&self) -> String {
        let path = self._dir.path().join("stdout.log");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Btcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll until `f` yields Some, or panic after `secs` seconds.
async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_flow_both_ways_between_regtest_node_and_btcd() {
    let bin = btcd_bin();
    let _ = env_logger::builder().is_test(true).try_init();
    let mut config = Config::parse("regtest=1\n").unwrap();
    config.set_ports(0, 0);
    let node = Node::start(NodeOptions {
        bind_ip: "127.0.0.1".parse().unwrap(),
        config,
        datadir: None,
    })
    .await
    .unwrap();
    let ours = |method: &'static str, params: Value| {
        let (addr, cookie) = (node.rpc_addr(), node.cookie().to_string());
        async move { rpc(addr, &cookie, method, params).await }
    };

    let btcd = Btcd::start(node.p2p_addr());
    eprintln!(
        "btcd {} on p2p {} rpc {}",
        bin.display(),
        btcd.p2p,
        btcd.rpc
    );
    wait_for(30, "btcd RPC", || async {
        btcd.call("getblockcount", json!([])).await.ok()
    })
    .await;
    // Our node dials btcd too, so both our inbound and outbound paths talk to it.
    ours("addnode", json!([btcd.p2p.to_string(), "add"]))
        .await
        .unwrap();
    let peers = wait_for(30, "two btcd connections", || async {
        let peers = ours("getpeerinfo", json!([])).await.ok()?;
        let handshaken = peers
            .as_array()?
            .iter()
            .filter(|p| p["version"] != 0)
            .count();
        (handshaken == 2).then_some(peers)
    })
    .await;
    let subver = peers[0]["subver"].as_str().unwrap().to_string();
    eprintln!("connected to btcd ({subver}) in both directions");
    assert!(subver.contains("btcd"), "{subver}");

    // Direction 1: we mine, btcd follows.
    let started = Instant::now();
    let mined = ours("generatetoaddress", json!([101, MINING_ADDR]))
        .await
        .unwrap();
    let our_best = mined.as_array().unwrap().last().unwrap().clone();
    let btcd_best = wait_for(60, "btcd to reach our best block", || async {
        let best = btcd.call("getbestblockhash", json!([])).await.ok()?;
        (best == our_best).then_some(best)
    })
    .await;
    let to_btcd = started.elapsed();
    assert_eq!(
        btcd.call("getblockcount", json!([])).await.unwrap(),
        101,
        "{}",
        btcd.log_tail()
    );
    eprintln!("101 blocks mined by regtest-node reached btcd in {to_btcd:?} (best {btcd_best})");

    // Direction 2: btcd mines (its `generate` RPC), we follow.
    let started = Instant::now();
    let generated = btcd
        .call("generate", json!([5]))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", btcd.log_tail()));
    let btcd_best = generated.as_array().unwrap().last().unwrap().clone();
    wait_for(60, "our node to reach btcd's best block", || async {
        let best = ours("getbestblockhash", json!([])).await.ok()?;
        (best == btcd_best).then_some(())
    })
    .await;
    let from_btcd = started.elapsed();
    assert_eq!(ours("getblockcount", json!([])).await.unwrap(), 106);
    eprintln!("5 blocks mined by btcd reached regtest-node in {from_btcd:?} (best {btcd_best})");

    drop(btcd);
    node.stop().await;
}
