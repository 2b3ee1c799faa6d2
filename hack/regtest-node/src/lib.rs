//! A small Bitcoin regtest node for tests: Bitcoin Core's JSON-RPC dialect for
//! the methods the controller and the demo use, and the real Bitcoin P2P
//! protocol (rust-bitcoin messages, regtest genesis, real proof of work), so
//! blocks propagate between nodes and to other implementations.

mod chain;
mod config;
mod http;
mod net;
mod rpc;
mod store;

pub use config::{Config, ConfigError, RpcAuth};

use bitcoin::{Block, ScriptBuf};
use chain::{Chain, TipChange};
use net::Net;
use rand::RngCore;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The one error type of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `bitcoin.conf` could not be used (bitcoind would refuse to start).
    #[error("Error reading configuration file: {0}")]
    Config(String),
    /// A JSON-RPC error with Bitcoin Core's code and message.
    #[error("RPC error {code}: {message}")]
    Rpc { code: i32, message: String },
    /// A header or block broke a consensus rule (Core's reject reason).
    #[error("invalid block: {0}")]
    Invalid(&'static str),
    /// A peer broke the P2P protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// How to run a node.
pub struct NodeOptions {
    /// Address both the RPC and the P2P listener bind to; outbound P2P
    /// connections use it as their source address too.
    pub bind_ip: IpAddr,
    pub config: Config,
    /// If set, the RPC cookie is written to `<datadir>/regtest/.cookie`.
    pub datadir: Option<PathBuf>,
}

/// State shared by the RPC server, the P2P code and the node handle.
/// Code that needs both locks takes `chain` before `net`.
pub(crate) struct Shared {
    config: Config,
    bind_ip: IpAddr,
    rpc_addr: SocketAddr,
    p2p_addr: SocketAddr,
    cookie: String,
    started: Instant,
    chain: Mutex<Chain>,
    /// The chain on disk when the node has a data directory. Appended
    /// under the `chain` lock so the file order is the arrival order.
    store: Option<Mutex<store::BlockStore>>,
    net: Mutex<Net>,
    /// Fault injection: while true the RPC server answers nothing.
    rpc_hang: watch::Sender<bool>,
    /// Cancelled when the node stops (by [`Node::stop`] or RPC `stop`).
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Connection slots for added nodes (Core's MAX_ADDNODE_CONNECTIONS).
    addnode_slots: Arc<Semaphore>,
    /// When the added-node loop dials (Core's timing outside tests).
    added_timing: net::AddedTiming,
    /// Core's network activity switch (RPC `setnetworkactive`): while false
    /// no peer connection is made, accepted or kept.
    network_active: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn new(
        config: Config,
        bind_ip: IpAddr,
        rpc_addr: SocketAddr,
        p2p_addr: SocketAddr,
        cookie: String,
        chain: Chain,
        store: Option<store::BlockStore>,
    ) -> Shared {
        Shared {
            config,
            bind_ip,
            rpc_addr,
            p2p_addr,
            cookie,
            started: Instant::now(),
            chain: Mutex::new(chain),
            store: store.map(Mutex::new),
            net: Mutex::new(Net::default()),
            rpc_hang: watch::Sender::new(false),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            addnode_slots: Arc::new(Semaphore::new(net::MAX_ADDNODE_CONNECTIONS)),
            added_timing: net::AddedTiming::CORE,
            network_active: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Validate and store a block (on disk too, if it is new to us).
    fn accept_block(&self, block: Block) -> Result<TipChange, Error> {
        let hash = block.block_hash();
        let mut chain = self.chain.lock().unwrap();
        let had = chain.has_block(&hash);
        let change = chain.accept_block(block, unix_time() as u32)?;
        if !had {
            if let Some(block) = chain.get(&hash).and_then(|e| e.block.as_ref()) {
                self.persist(block);
            }
        }
        Ok(change)
    }

    /// Mine one block on the tip (see [`Chain::mine`]) and store it.
    fn mine(&self, script: &ScriptBuf, max_tries: &mut u64) -> Option<(Block, TipChange)> {
        let mut chain = self.chain.lock().unwrap();
        let mined = chain.mine(script, unix_time() as u32, max_tries);
        if let Some((block, _)) = &mined {
            self.persist(block);
        }
        mined
    }

    /// Append to the block file. A node that cannot write its chain stops,
    /// as Core does, rather than run on with a chain it would lose.
    fn persist(&self, block: &Block) {
        let Some(store) = &self.store else { return };
        let mut store = store.lock().unwrap();
        if let Err(e) = store.append(block) {
            log::error!(
                "cannot write block {} to {}: {e}; shutting down",
                block.block_hash(),
                store.path().display()
            );
            self.shutdown.cancel();
        }
    }

    /// fsync the block files if anything was written since the last time.
    fn sync_store(&self) {
        let Some(store) = &self.store else { return };
        let mut store = store.lock().unwrap();
        if let Err(e) = store.sync() {
            log::error!("cannot sync {}: {e}; shutting down", store.path().display());
            self.shutdown.cancel();
        }
    }
}

/// A running regtest node.
pub struct Node {
    shared: Arc<Shared>,
    cookie_file: Option<PathBuf>,
}

impl Node {
    /// Bind RPC and P2P on `bind_ip` and start serving. `::` is one
    /// dual-stack socket per port, as Bitcoin Core binds `rpcbind=::`
    /// (see [`listen`]).
    pub async fn start(opts: NodeOptions) -> std::io::Result<Node> {
        Self::start_with(opts, net::AddedTiming::CORE).await
    }

    async fn start_with(opts: NodeOptions, timing: net::AddedTiming) -> std::io::Result<Node> {
        if opts.config.chain() != "regtest" {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "only regtest is supported, the configuration selects {}",
                    opts.config.chain()
                ),
            ));
        }
        let rpc = listen(opts.bind_ip, opts.config.rpc_port(), dual_stack).await?;
        let p2p = listen(opts.bind_ip, opts.config.p2p_port(), dual_stack).await?;
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let cookie = format!("__cookie__:{}", hex::encode(secret));
        // Like bitcoind, write a cookie file only when no rpcpassword is set;
        // the cookie is accepted either way.
        let cookie_file = match &opts.datadir {
            Some(dir) if opts.config.uses_cookie() => Some(write_cookie(dir, &cookie)?),
            _ => None,
        };
        let (chain, store) = match &opts.datadir {
            Some(dir) => {
                let started = Instant::now();
                let (chain, store, report) = store::open(dir)?;
                log::info!(
                    "loaded {} blocks from {} in {} ms: height {}, tip {}{}",
                    report.blocks,
                    store.path().display(),
                    started.elapsed().as_millis(),
                    chain.height(),
                    chain.tip_hash(),
                    match report.orphans {
                        0 => String::new(),
                        n => format!(" ({n} stored blocks wait for their parent)"),
                    }
                );
                (chain, Some(store))
            }
            None => (Chain::new(), None),
        };
        let mut shared = Shared::new(
            opts.config,
            opts.bind_ip,
            rpc.local_addr()?,
            p2p.local_addr()?,
            cookie,
            chain,
            store,
        );
        shared.added_timing = timing;
        let shared = Arc::new(shared);
        log::info!(
            "regtest node: RPC on {}, P2P on {}",
            shared.rpc_addr,
            shared.p2p_addr
        );
        shared.tasks.spawn(http::serve(shared.clone(), rpc));
        shared.tasks.spawn(net::listen(shared.clone(), p2p));
        if shared.store.is_some() {
            shared.tasks.spawn(sync_store_every_second(shared.clone()));
        }
        for node in shared.config.add_nodes().to_vec() {
            net::add_node(&shared, &node);
        }
        shared
            .tasks
            .spawn(net::open_added_connections(shared.clone()));
        Ok(Node {
            shared,
            cookie_file,
        })
    }

    pub fn rpc_addr(&self) -> SocketAddr {
        self.shared.rpc_addr
    }

    pub fn p2p_addr(&self) -> SocketAddr {
        self.shared.p2p_addr
    }

    /// `__cookie__:<64 hex>`, valid as RPC Basic-auth `user:password`.
    pub fn cookie(&self) -> &str {
        &self.shared.cookie
    }

    /// Fault injection: while `hang` is true the RPC server keeps accepting
    /// connections but answers no request; clearing it lets them proceed.
    pub fn set_rpc_hang(&self, hang: bool) {
        self.shared.rpc_hang.send_replace(hang);
    }

    /// Resolves once the node is shutting down (e.g. after RPC `stop`).
    pub async fn stopped(&self) {
        self.shared.shutdown.cancelled().await
    }

    /// Close the listeners and every peer connection, remove the cookie file.
    pub async fn stop(self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        self.shared.sync_store();
        if let Some(file) = &self.cookie_file {
            let _ = std::fs::remove_file(file);
        }
        log::info!("regtest node on {} stopped", self.shared.rpc_addr);
    }
}

/// fsync new blocks once a second until the node stops.
async fn sync_store_every_second(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => shared.sync_store(),
        }
    }
}

/// Dropping a node without [`Node::stop`] still shuts it down (in the
/// background, leaving the cookie file behind).
impl Drop for Node {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

/// A listener on `ip:port`. For `::` a dual-stack socket (IPV6_V6ONLY off,
/// so IPv4 clients arrive as IPv4-mapped addresses), made by `dual`; if the
/// machine has no IPv6 (the socket family is not supported, or `::` is not
/// an address here) it listens on 0.0.0.0 instead and logs a warning.
async fn listen(
    ip: IpAddr,
    port: u16,
    dual: impl FnOnce(u16) -> std::io::Result<std::net::TcpListener>,
) -> std::io::Result<TcpListener> {
    if ip != IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        return TcpListener::bind((ip, port)).await;
    }
    match dual(port) {
        Ok(listener) => TcpListener::from_std(listener),
        Err(e)
            if e.raw_os_error() == Some(libc::EAFNOSUPPORT)
                || e.kind() == std::io::ErrorKind::AddrNotAvailable =>
        {
            log::warn!("no IPv6 here ({e}): listening on 0.0.0.0:{port} instead of [::]:{port}");
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await
        }
        Err(e) => Err(e),
    }
}

/// A non-blocking dual-stack listener on `[::]:port`.
fn dual_stack(port: u16) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn write_cookie(datadir: &std::path::Path, cookie: &str) -> std::io::Result<PathBuf> {
    let dir = datadir.join("regtest");
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(".cookie.tmp");
    let file = dir.join(".cookie");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(&mut opts.open(&tmp)?, cookie.as_bytes())?;
    std::fs::rename(&tmp, &file)?;
    Ok(file)
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod test_util {
    use super::*;

    /// A valid regtest (bcrt1) P2WPKH address.
    pub const REGTEST_ADDR: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";

    /// Shared state without listeners, for calling RPC handlers directly.
    pub async fn node_shared() -> Arc<Shared> {
        let config = Config::parse("regtest=1\n").unwrap();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        Arc::new(Shared::new(
            config,
            addr.ip(),
            addr,
            addr,
            "__cookie__:00".into(),
            Chain::new(),
            None,
        ))
    }

    /// A running node on `ip` with ephemeral ports and rpcauth for user/pass.
    pub async fn start_node(ip: &str, user: &str, pass: &str) -> (Node, tempfile::TempDir) {
        let salt = "00112233445566778899aabbccddeeff";
        let text = format!(
            "regtest=1\nrpcauth={user}:{salt}${}\n",
            RpcAuth::digest(salt, pass)
        );
        let mut config = Config::parse(&text).unwrap();
        config.set_ports(0, 0);
        let dir = tempfile::tempdir().unwrap();
        let opts = NodeOptions {
            bind_ip: ip.parse().unwrap(),
            config,
            datadir: Some(dir.path().to_path_buf()),
        };
        (Node::start(opts).await.unwrap(), dir)
    }

    /// A node on `ip` with the default regtest ports, as in a pod.
    pub async fn start_at(ip: &str) -> Node {
        start_timed(ip, net::AddedTiming::CORE).await
    }

    /// [`start_at`] with the added-node loop on other timing than Core's.
    pub async fn start_timed(ip: &str, timing: net::AddedTiming) -> Node {
        let _ = env_logger::builder().is_test(true).try_init();
        let opts = NodeOptions {
            bind_ip: ip.parse().unwrap(),
            config: Config::parse("regtest=1\n").unwrap(),
            datadir: None,
        };
        Node::start_with(opts, timing).await.unwrap()
    }

    /// Call an RPC method on a node, bypassing HTTP.
    pub fn rpc(
        node: &Node,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        rpc::execute(&node.shared, method, &params)
    }

    /// Poll `cond` every 50 ms for up to `secs` seconds.
    pub async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + std::time::Duration::from_secs(secs);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        cond()
    }
}

#[cfg(test)]
mod listen_tests {
    use super::test_util::start_node;
    use super::*;
    use std::io::{Read, Write};

    /// `getblockcount` over HTTP to `addr` with the node's cookie.
    fn http_call(addr: SocketAddr, cookie: &str) -> String {
        use base64::Engine;
        let body = r#"{"jsonrpc":"1.0","id":1,"method":"getblockcount","params":[]}"#;
        let auth = base64::engine::general_purpose::STANDARD.encode(cookie);
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    /// On `::` one socket serves both families, as Core's `rpcbind=::`.
    /// (This machine has IPv6 loopback; without it the node would fall
    /// back to 0.0.0.0 and the `::1` call here would fail.)
    #[tokio::test(flavor = "multi_thread")]
    async fn rpc_on_the_unspecified_ipv6_address_serves_both_families() {
        let (node, _dir) = start_node("::", "u", "p").await;
        let port = node.rpc_addr().port();
        assert_eq!(node.rpc_addr().ip(), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let cookie = node.cookie().to_owned();
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let cookie = cookie.clone();
            let answer =
                tokio::task::spawn_blocking(move || http_call(SocketAddr::new(ip, port), &cookie))
                    .await
                    .unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "via {ip}: {answer}");
            assert!(answer.contains(r#""result":0"#), "via {ip}: {answer}");
        }
        node.stop().await;
    }

    /// An IPv4 peer of a node listening on `::` is an IPv4 peer (as in
    /// Core), not `::ffff:a.b.c.d`, in `getpeerinfo` and the added-node
    /// view, so a mesh of such nodes reads like one of IPv4 nodes.
    #[tokio::test(flavor = "multi_thread")]
    async fn ipv4_peers_of_a_dual_stack_node_show_as_ipv4() {
        use super::test_util::{eventually, rpc};
        let (dual, _dir) = start_node("::", "u", "p").await;
        let (v4, _dir4) = start_node("127.0.0.1", "u", "p").await;
        let target = format!("127.0.0.1:{}", dual.p2p_addr().port());
        rpc(&v4, "addnode", serde_json::json!([target, "onetry"])).unwrap();
        assert!(
            eventually(10, || {
                rpc(&dual, "getpeerinfo", serde_json::json!([]))
                    .unwrap()
                    .as_array()
                    .is_some_and(|peers| !peers.is_empty())
            })
            .await
        );
        let peers = rpc(&dual, "getpeerinfo", serde_json::json!([])).unwrap();
        for peer in peers.as_array().unwrap() {
            let addr = peer["addr"].as_str().unwrap();
            assert!(addr.starts_with("127.0.0.1:"), "{peer}");
            assert!(
                peer["addrbind"].as_str().unwrap().starts_with("127.0.0.1:"),
                "{peer}"
            );
        }
        v4.stop().await;
        dual.stop().await;
    }

    /// Without IPv6 (the dual-stack socket cannot be made) the listener
    /// falls back to 0.0.0.0; other errors are not hidden.
    #[tokio::test]
    async fn without_ipv6_the_listener_falls_back_to_ipv4() {
        let unspecified = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let no_family = |_| Err(std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
        let listener = listen(unspecified, 0, no_family).await.unwrap();
        assert_eq!(listener.local_addr().unwrap().ip(), Ipv4Addr::UNSPECIFIED);
        let no_address = |_| Err(std::io::Error::from(std::io::ErrorKind::AddrNotAvailable));
        let listener = listen(unspecified, 0, no_address).await.unwrap();
        assert!(listener.local_addr().unwrap().is_ipv4());
        let in_use = |_| Err(std::io::Error::from(std::io::ErrorKind::AddrInUse));
        let err = listen(unspecified, 0, in_use).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        // Any other address is bound as given.
        let listener = listen(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, |_| unreachable!())
            .await
            .unwrap();
        assert_eq!(listener.local_addr().unwrap().ip(), Ipv4Addr::LOCALHOST);
    }

    /// The chain of a node with a data directory survives a restart, and
    /// the restarted node serves it before it has any peer.
    #[tokio::test]
    async fn a_restarted_node_keeps_its_chain() {
        use super::test_util::{rpc, REGTEST_ADDR};
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        let start = || {
            let mut config = Config::parse("regtest=1\n").unwrap();
            config.set_ports(0, 0);
            Node::start(NodeOptions {
                bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                config,
                datadir: Some(dir.path().to_path_buf()),
            })
        };
        let node = start().await.unwrap();
        rpc(&node, "generatetoaddress", json!([101, REGTEST_ADDR])).unwrap();
        let tip = rpc(&node, "getbestblockhash", json!([])).unwrap();
        node.stop().await;
        let node = start().await.unwrap();
        assert_eq!(rpc(&node, "getblockcount", json!([])).unwrap(), json!(101));
        assert_eq!(rpc(&node, "getbestblockhash", json!([])).unwrap(), tip);
        node.stop().await;
    }
}
