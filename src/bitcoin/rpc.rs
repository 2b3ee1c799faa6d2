//! A small client for Bitcoin Core's JSON-RPC interface, covering the calls
//! the controller makes.

use std::error::Error as _;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// `addnode ... add` for a node that is already in the list.
pub const RPC_NODE_ALREADY_ADDED: i64 = -23;
/// `addnode ... remove` for a node that is not in the list.
pub const RPC_NODE_NOT_ADDED: i64 = -24;
/// `disconnectnode` for a peer that is not connected.
pub const RPC_NODE_NOT_CONNECTED: i64 = -29;

/// Where a node's RPC interface is and how to log in.
#[derive(Clone)]
pub struct RpcConfig {
    /// Host name or IP address (IPv6 without brackets is fine).
    pub host: String,
    /// RPC port, normally [`RPC_PORT`](super::RPC_PORT).
    pub port: u16,
    /// RPC user name.
    pub user: String,
    /// RPC password; never shown by `Debug`.
    pub password: String,
}

impl fmt::Debug for RpcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl RpcConfig {
    fn url(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("http://[{}]:{}/", self.host, self.port)
        } else {
            format!("http://{}:{}/", self.host, self.port)
        }
    }
}

/// Why an RPC call failed. No message carries credentials: they travel in
/// an `Authorization` header, never in the URL.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// No complete answer within the connect or request timeout.
    #[error("RPC request timed out")]
    Timeout,
    /// The TCP connection could not be made.
    #[error("cannot connect to RPC server: {0}")]
    Connect(String),
    /// The connection failed after it was made (for example, closed
    /// before an answer arrived), or the request could not be built.
    #[error("RPC transport error: {0}")]
    Transport(String),
    /// The server rejected the user name or password (HTTP 401).
    #[error("RPC server rejected the credentials (HTTP 401)")]
    Unauthorized,
    /// An HTTP error status without a JSON-RPC error in the body.
    #[error("RPC server answered HTTP {0}")]
    Http(u16),
    /// The node answered with a JSON-RPC error.
    #[error("RPC error {code}: {message}")]
    Rpc {
        /// Bitcoin Core's error code, e.g. [`RPC_NODE_ALREADY_ADDED`].
        code: i64,
        /// The node's error message.
        message: String,
    },
    /// The answer was not the JSON that was expected.
    #[error("cannot decode RPC response: {0}")]
    Decode(String),
}

impl RpcError {
    /// A short, fixed name of the kind of failure, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect(_) => "connect",
            Self::Transport(_) => "transport",
            Self::Unauthorized => "unauthorized",
            Self::Http(_) => "http",
            Self::Rpc { .. } => "rpc_error",
            Self::Decode(_) => "decode",
        }
    }

    fn from_reqwest(err: reqwest::Error) -> Self {
        if err.is_timeout() {
            return Self::Timeout;
        }
        let connect = err.is_connect();
        // reqwest's own message is terse; the causes say what happened.
        let err = err.without_url();
        let mut msg = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            msg.push_str(": ");
            msg.push_str(&cause.to_string());
            source = cause.source();
        }
        if connect {
            Self::Connect(msg)
        } else {
            Self::Transport(msg)
        }
    }
}

/// One entry of `getaddednodeinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedNodeInfo {
    /// The node as given to `addnode`.
    pub addednode: String,
    /// Whether the node is connected.
    #[serde(default)]
    pub connected: bool,
    /// The connections to it (empty when not connected).
    #[serde(default)]
    pub addresses: Vec<AddedNodeAddress>,
}

/// A connection to an added node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedNodeAddress {
    /// `ip:port` of the connection.
    pub address: String,
    /// Direction of the connection, `"inbound"` or `"outbound"` (empty if
    /// the node did not say).
    #[serde(default)]
    pub connected: String,
}

/// The part of one `getpeerinfo` entry the controller uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// `ip:port` of the peer as the node names it (for an outbound
    /// connection the string it dialled); `disconnectnode` takes it.
    pub addr: String,
}

/// The parts of `getnetworkinfo` the controller uses; other fields are
/// ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// Numeric version, e.g. `270000`.
    pub version: i64,
    /// User agent, e.g. `/Satoshi:27.0.0/`.
    pub subversion: String,
    /// P2P protocol version.
    pub protocolversion: i64,
    /// Number of peer connections.
    pub connections: i64,
}

/// The parts of `getblockchaininfo` the controller uses; other fields are
/// ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockchainInfo {
    /// `main`, `test`, `signet` or `regtest`.
    pub chain: String,
    /// Height of the best validated chain.
    pub blocks: u64,
    /// Height of the best known header chain.
    pub headers: u64,
    /// Hash of the best block.
    pub bestblockhash: String,
    /// Header time of the best block (UNIX seconds; Core 23 and later).
    #[serde(default)]
    pub time: u64,
    /// Median time of the last 11 blocks (UNIX seconds).
    #[serde(default)]
    pub mediantime: u64,
}

/// The JSON-RPC 1.0 answer: either `result` or `error` is set.
#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    result: Value,
    #[serde(default)]
    error: Option<ReplyError>,
}

#[derive(Deserialize)]
struct ReplyError {
    code: i64,
    #[serde(default)]
    message: String,
}

/// Observes every RPC call an [`RpcClient`] makes (see
/// [`RpcClient::with_metrics`]).
pub trait RpcMetrics: Send + Sync {
    /// `method` finished after `elapsed` with `outcome`: `"success"` or an
    /// [`RpcError::kind`]. A JSON-RPC error that a typed call treats as
    /// success (e.g. -23 for `addnode ... add`) is still `"rpc_error"` here:
    /// it is what the node answered.
    fn observe(&self, method: &str, outcome: &'static str, elapsed: Duration);
}

/// A JSON-RPC client for Bitcoin Core nodes. One client serves any number
/// of nodes (each call names its [`RpcConfig`]); clones share one HTTP
/// connection pool.
#[derive(Clone)]
pub struct RpcClient {
    http: reqwest::Client,
    next_id: Arc<AtomicU64>,
    metrics: Option<Arc<dyn RpcMetrics>>,
}

impl RpcClient {
    /// A client that gives up on connecting after `connect_timeout` and on
    /// a whole call (connect, send, answer) after `request_timeout`. It never
    /// uses a proxy: nodes are reached directly.
    ///
    /// # Panics
    /// If the HTTP client cannot be built (only on a broken system setup).
    pub fn new(connect_timeout: Duration, request_timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            // No idle connection is kept: each call opens its own. A
            // resync visits every node of every network within seconds, so
            // kept connections pile up (a socket and its buffers each) and
            // the controller's resident size rose with them at every resync
            // (600 networks: from 41 to 66-68 MiB, and back after the idle
            // timeout). Without them it stays at 35 MiB. A connection on the
            // pod network costs well under a millisecond to open, and
            // Bitcoin Core's RPC server drops idle ones after 30 s anyway.
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .expect("building the HTTP client");
        Self {
            http,
            next_id: Arc::new(AtomicU64::new(1)),
            metrics: None,
        }
    }

    /// The same client, reporting every call to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<dyn RpcMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Calls `method` with `params` and returns its `result`.
    ///
    /// Bitcoin Core reports JSON-RPC errors with HTTP 500 (404 for an
    /// unknown method) and the error in the body, so the body is read
    /// whatever the status; 401 comes with an empty body.
    pub async fn raw_request(
        &self,
        cfg: &RpcConfig,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Value, RpcError> {
        let Some(metrics) = &self.metrics else {
            return self.request(cfg, method, params).await;
        };
        let started = std::time::Instant::now();
        let result = self.request(cfg, method, params).await;
        let outcome = result.as_ref().map_or_else(RpcError::kind, |_| "success");
        metrics.observe(method, outcome, started.elapsed());
        result
    }

    async fn request(
        &self,
        cfg: &RpcConfig,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Value, RpcError> {
        self.request_with(cfg, method, params, None).await
    }

    async fn request_with(
        &self,
        cfg: &RpcConfig,
        method: &str,
        params: Vec<Value>,
        timeout: Option<Duration>,
    ) -> Result<Value, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let envelope = json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params});
        let mut request = self
            .http
            .post(cfg.url())
            .basic_auth(&cfg.user, Some(&cfg.password))
            .json(&envelope);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await.map_err(RpcError::from_reqwest)?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(RpcError::Unauthorized);
        }
        let body = response.bytes().await.map_err(RpcError::from_reqwest)?;
        match serde_json::from_slice::<Reply>(&body) {
            Ok(Reply { error: Some(e), .. }) => Err(RpcError::Rpc {
                code: e.code,
                message: e.message,
            }),
            Ok(reply) if status.is_success() => Ok(reply.result),
            Err(e) if status.is_success() => Err(RpcError::Decode(e.to_string())),
            _ => Err(RpcError::Http(status.as_u16())),
        }
    }

    async fn call<R: DeserializeOwned>(
        &self,
        cfg: &RpcConfig,
        method: &str,
        params: Vec<Value>,
    ) -> Result<R, RpcError> {
        let result = self.raw_request(cfg, method, params).await?;
        serde_json::from_value(result).map_err(|e| RpcError::Decode(format!("{method}: {e}")))
    }

    /// `addnode <node> add`; a node that is already added counts as success.
    pub async fn add_node(&self, cfg: &RpcConfig, node: &str) -> Result<(), RpcError> {
        self.addnode(cfg, node, "add", RPC_NODE_ALREADY_ADDED).await
    }

    /// `addnode <node> remove`; a node that was not added counts as success.
    pub async fn remove_node(&self, cfg: &RpcConfig, node: &str) -> Result<(), RpcError> {
        self.addnode(cfg, node, "remove", RPC_NODE_NOT_ADDED).await
    }

    /// `addnode <node> onetry`: Core dials the node at once, where its
    /// added-node loop may wait a minute after a failed attempt.
    pub async fn try_node(&self, cfg: &RpcConfig, node: &str) -> Result<(), RpcError> {
        self.raw_request(cfg, "addnode", vec![json!(node), json!("onetry")])
            .await
            .map(drop)
    }

    /// `disconnectnode <address>`; a peer that is not connected counts as
    /// success.
    pub async fn disconnect_node(&self, cfg: &RpcConfig, address: &str) -> Result<(), RpcError> {
        match self
            .raw_request(cfg, "disconnectnode", vec![json!(address)])
            .await
        {
            Ok(_) => Ok(()),
            Err(RpcError::Rpc { code, .. }) if code == RPC_NODE_NOT_CONNECTED => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `getpeerinfo`: the node's connections.
    pub async fn get_peer_info(&self, cfg: &RpcConfig) -> Result<Vec<PeerInfo>, RpcError> {
        self.call(cfg, "getpeerinfo", vec![]).await
    }

    async fn addnode(
        &self,
        cfg: &RpcConfig,
        node: &str,
        command: &str,
        already_done: i64,
    ) -> Result<(), RpcError> {
        match self
            .raw_request(cfg, "addnode", vec![json!(node), json!(command)])
            .await
        {
            Ok(_) => Ok(()),
            Err(RpcError::Rpc { code, .. }) if code == already_done => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `getaddednodeinfo`: the nodes added with `addnode` and their
    /// connections.
    pub async fn get_added_node_info(
        &self,
        cfg: &RpcConfig,
    ) -> Result<Vec<AddedNodeInfo>, RpcError> {
        self.call(cfg, "getaddednodeinfo", vec![]).await
    }

    /// `getnetworkinfo`.
    pub async fn get_network_info(&self, cfg: &RpcConfig) -> Result<NetworkInfo, RpcError> {
        self.call(cfg, "getnetworkinfo", vec![]).await
    }

    /// `getblockchaininfo`.
    pub async fn get_blockchain_info(&self, cfg: &RpcConfig) -> Result<BlockchainInfo, RpcError> {
        self.call(cfg, "getblockchaininfo", vec![]).await
    }

    /// `generatetoaddress <blocks> <address>`: the hashes of the blocks
    /// mined. Mining many blocks takes longer than other calls, so this
    /// call may take up to `timeout` instead of the client's request
    /// timeout.
    pub async fn generate_to_address(
        &self,
        cfg: &RpcConfig,
        blocks: u64,
        address: &str,
        timeout: Duration,
    ) -> Result<Vec<String>, RpcError> {
        let method = "generatetoaddress";
        let started = std::time::Instant::now();
        let result = self
            .request_with(
                cfg,
                method,
                vec![json!(blocks), json!(address)],
                Some(timeout),
            )
            .await;
        if let Some(metrics) = &self.metrics {
            let outcome = result.as_ref().map_or_else(RpcError::kind, |_| "success");
            metrics.observe(method, outcome, started.elapsed());
        }
        serde_json::from_value(result?).map_err(|e| RpcError::Decode(format!("{method}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const USER: &str = "rpcuser";
    const PASSWORD: &str = "s3cr3t-Pa55word";
    /// `Basic ` + base64("rpcuser:s3cr3t-Pa55word"), made with
    /// `python3 -c 'import base64; print(base64.b64encode(b"rpcuser:s3cr3t-Pa55word"))'`.
    const AUTH: &str = "Basic cnBjdXNlcjpzM2NyM3QtUGE1NXdvcmQ=";

    /// What the test server saw of one request.
    #[derive(Debug, Clone)]
    struct Seen {
        authorization: Option<String>,
        body: Value,
    }

    /// How the test server answers: `Some((status, body))`, or `None` to
    /// close the connection without a word.
    type Answer = Option<(u16, String)>;

    /// Reads one HTTP/1.1 request (headers, then a Content-Length body).
    async fn read_request(stream: &mut TcpStream) -> Option<Seen> {
        let mut buf = Vec::new();
        let header_end = loop {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8(buf[..header_end].to_vec()).ok()?;
        let header = |name: &str| {
            head.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let len: usize = header("content-length")?.parse().ok()?;
        while buf.len() < header_end + len {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(Seen {
            authorization: header("authorization"),
            body: serde_json::from_slice(&buf[header_end..header_end + len]).ok()?,
        })
    }

    /// A server on 127.0.0.1 answering every request with `answer`; it
    /// records what it saw in the returned log.
    async fn serve(
        answer: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    ) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let seen_log = log.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (answer, log) = (answer.clone(), seen_log.clone());
                tokio::spawn(async move {
                    let Some(seen) = read_request(&mut stream).await else {
                        return;
                    };
                    log.lock().unwrap().push(seen.clone());
                    if let Some((status, body)) = answer(&seen) {
                        let response = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                    }
                });
            }
        });
        (addr, log)
    }

    /// A server that accepts connections and never answers.
    async fn serve_silence() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        addr
    }

    fn reply(status: u16, id: &Value, result: Value, error: Value) -> Answer {
        Some((
            status,
            json!({"result": result, "error": error, "id": id}).to_string(),
        ))
    }

    /// Answers like Bitcoin Core 27 with `rpcauth` for USER/PASSWORD, where
    /// 10.0.0.1 is already added and nothing else is.
    fn core(seen: &Seen) -> Answer {
        if seen.authorization.as_deref() != Some(AUTH) {
            return Some((401, String::new()));
        }
        let b = &seen.body;
        let id = &b["id"];
        let ok = |result| reply(200, id, result, Value::Null);
        let err = |status, code: i64, message: &str| {
            reply(
                status,
                id,
                Value::Null,
                json!({"code": code, "message": message}),
            )
        };
        let node = b["params"][0].as_str().unwrap_or_default();
        match (b["method"].as_str().unwrap(), b["params"][1].as_str()) {
            ("addnode", Some("add")) if node == "10.0.0.1" => {
                err(500, -23, "Error: Node already added")
            }
            ("addnode", Some("add")) if node == "bad" => err(500, -8, "Invalid IP"),
            ("addnode", Some("remove")) if node != "10.0.0.1" => err(
                500,
                -24,
                "Error: Node could not be removed. It has not been added previously.",
            ),
            ("addnode", _) => ok(Value::Null),
            ("getaddednodeinfo", _) => ok(json!([
                {"addednode": "10.0.0.1", "connected": true, "extra": 1,
                 "addresses": [{"address": "10.0.0.1:18444", "connected": "outbound"},
                               {"address": "10.0.0.1:18445"}]},
                {"addednode": "10.0.0.2", "connected": false, "addresses": []},
                {"addednode": "10.0.0.3"}
            ])),
            ("getnetworkinfo", _) => ok(json!({
                "version": 270000, "subversion": "/Satoshi:27.0.0/", "protocolversion": 70016,
                "localservices": "0000000000000409", "connections": 2,
                "connections_in": 1, "connections_out": 1, "networks": []
            })),
            ("getblockchaininfo", _) => ok(json!({
                "chain": "regtest", "blocks": 101, "headers": 101,
                "bestblockhash": "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206",
                "difficulty": 4.6e-10, "time": 1296688602, "mediantime": 1296688602,
                "initialblockdownload": false
            })),
            ("generatetoaddress", Some("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080")) => {
                ok(json!(vec![
                    "00ab";
                    b["params"][0].as_u64().unwrap() as usize
                ]))
            }
            ("generatetoaddress", _) => err(500, -5, "Error: Invalid address"),
            _ => err(404, -32601, "Method not found"),
        }
    }

    fn cfg(addr: SocketAddr) -> RpcConfig {
        RpcConfig {
            host: addr.ip().to_string(),
            port: addr.port(),
            user: USER.into(),
            password: PASSWORD.into(),
        }
    }

    fn client() -> RpcClient {
        RpcClient::new(Duration::from_secs(2), Duration::from_secs(5))
    }

    #[tokio::test]
    async fn sends_a_json_rpc_1_0_envelope_with_basic_auth() {
        let (addr, log) = serve(core).await;
        let c = client();
        c.get_network_info(&cfg(addr)).await.unwrap();
        c.raw_request(&cfg(addr), "addnode", vec![json!("10.0.0.5"), json!("add")])
            .await
            .unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2);
        for seen in log.iter() {
            assert_eq!(seen.authorization.as_deref(), Some(AUTH));
            assert_eq!(seen.body["jsonrpc"], "1.0");
            assert!(seen.body["id"].is_u64(), "{:?}", seen.body);
        }
        assert_eq!(log[0].body["method"], "getnetworkinfo");
        assert_eq!(log[0].body["params"], json!([]));
        assert_eq!(log[1].body["params"], json!(["10.0.0.5", "add"]));
        assert_ne!(log[0].body["id"], log[1].body["id"]);
    }

    #[tokio::test]
    async fn typed_calls_decode_and_ignore_extra_fields() {
        let (addr, _) = serve(core).await;
        let (c, cfg) = (client(), cfg(addr));
        assert_eq!(
            c.get_blockchain_info(&cfg).await.unwrap(),
            BlockchainInfo {
                chain: "regtest".into(),
                blocks: 101,
                headers: 101,
                bestblockhash: "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
                    .into(),
                time: 1_296_688_602,
                mediantime: 1_296_688_602,
            }
        );
        let regtest = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
        let long = Duration::from_secs(30);
        assert_eq!(
            c.generate_to_address(&cfg, 2, regtest, long).await.unwrap(),
            vec!["00ab".to_owned(), "00ab".to_owned()]
        );
        assert!(matches!(
            c.generate_to_address(&cfg, 1, "x", long).await,
            Err(RpcError::Rpc { code: -5, .. })
        ));
        assert_eq!(
            c.get_network_info(&cfg).await.unwrap(),
            NetworkInfo {
                version: 270000,
                subversion: "/Satoshi:27.0.0/".into(),
                protocolversion: 70016,
                connections: 2,
            }
        );
        let added = c.get_added_node_info(&cfg).await.unwrap();
        let addr = |address: &str, connected: &str| AddedNodeAddress {
            address: address.into(),
            connected: connected.into(),
        };
        assert_eq!(
            added,
            [
                AddedNodeInfo {
                    addednode: "10.0.0.1".into(),
                    connected: true,
                    addresses: vec![
                        addr("10.0.0.1:18444", "outbound"),
                        addr("10.0.0.1:18445", "")
                    ],
                },
                AddedNodeInfo {
                    addednode: "10.0.0.2".into(),
                    connected: false,
                    addresses: vec![],
                },
                AddedNodeInfo {
                    addednode: "10.0.0.3".into(),
                    connected: false,
                    addresses: vec![],
                },
            ]
        );
    }

    #[tokio::test]
    async fn addnode_treats_already_in_wanted_state_as_success() {
        let (addr, _) = serve(core).await;
        let (c, cfg) = (client(), cfg(addr));
        c.add_node(&cfg, "10.0.0.5").await.unwrap();
        c.add_node(&cfg, "10.0.0.1").await.unwrap(); // -23
        c.remove_node(&cfg, "10.0.0.1").await.unwrap();
        c.remove_node(&cfg, "10.0.0.5").await.unwrap(); // -24
                                                        // -24 means success only for remove, and other codes never do.
        let raw = c
            .raw_request(&cfg, "addnode", vec![json!("10.0.0.5"), json!("remove")])
            .await;
        assert!(
            matches!(raw, Err(RpcError::Rpc { code: -24, .. })),
            "{raw:?}"
        );
        match c.add_node(&cfg, "bad").await {
            Err(RpcError::Rpc { code, message }) => {
                assert_eq!((code, message.as_str()), (-8, "Invalid IP"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn rpc_errors_are_read_from_error_statuses() {
        let (addr, _) = serve(core).await;
        match client()
            .raw_request(&cfg(addr), "nosuchmethod", vec![])
            .await
        {
            Err(RpcError::Rpc { code, message }) => {
                assert_eq!((code, message.as_str()), (-32601, "Method not found"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn wrong_password_is_unauthorized() {
        let (addr, _) = serve(core).await;
        let mut cfg = cfg(addr);
        cfg.password = "wrong".into();
        let err = client().get_network_info(&cfg).await.unwrap_err();
        assert!(matches!(err, RpcError::Unauthorized), "{err:?}");
    }

    #[tokio::test]
    async fn non_json_answers_map_to_http_or_decode() {
        let (addr, _) = serve(|_| Some((503, "<html>busy</html>".into()))).await;
        let err = client().get_network_info(&cfg(addr)).await.unwrap_err();
        assert!(matches!(err, RpcError::Http(503)), "{err:?}");

        let (addr, _) = serve(|_| Some((200, "not json".into()))).await;
        let err = client().get_network_info(&cfg(addr)).await.unwrap_err();
        assert!(matches!(err, RpcError::Decode(_)), "{err:?}");

        // Valid JSON-RPC, but the result has the wrong shape.
        let (addr, _) = serve(|s| reply(200, &s.body["id"], json!([1]), Value::Null)).await;
        let err = client().get_network_info(&cfg(addr)).await.unwrap_err();
        assert!(matches!(err, RpcError::Decode(_)), "{err:?}");
    }

    #[tokio::test]
    async fn silent_server_times_out_within_the_request_timeout() {
        let addr = serve_silence().await;
        let c = RpcClient::new(Duration::from_secs(2), Duration::from_millis(200));
        let start = Instant::now();
        let err = c.get_network_info(&cfg(addr)).await.unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, RpcError::Timeout), "{err:?}");
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[derive(Default)]
    struct Observed(Mutex<Vec<(String, &'static str)>>);

    impl RpcMetrics for Observed {
        fn observe(&self, method: &str, outcome: &'static str, elapsed: Duration) {
            assert!(elapsed < Duration::from_secs(5));
            self.0.lock().unwrap().push((method.to_owned(), outcome));
        }
    }

    #[tokio::test]
    async fn metrics_see_every_call_with_its_outcome() {
        let (addr, _) = serve(core).await;
        let observed = Arc::new(Observed::default());
        let c = client().with_metrics(observed.clone());
        let cfg = cfg(addr);
        c.get_network_info(&cfg).await.unwrap();
        c.add_node(&cfg, "10.0.0.1").await.unwrap(); // -23: success for the caller
        c.raw_request(&cfg, "nosuchmethod", vec![])
            .await
            .unwrap_err();
        let refused = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        c.get_blockchain_info(&super::tests::cfg(refused))
            .await
            .unwrap_err();
        let got = observed.0.lock().unwrap().clone();
        let want: Vec<(String, &str)> = vec![
            ("getnetworkinfo".into(), "success"),
            ("addnode".into(), "rpc_error"),
            ("nosuchmethod".into(), "rpc_error"),
            ("getblockchaininfo".into(), "connect"),
        ];
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn refused_connection_and_dropped_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = client().get_network_info(&cfg(addr)).await.unwrap_err();
        assert!(matches!(err, RpcError::Connect(_)), "{err:?}");

        let (addr, _) = serve(|_| None).await;
        let err = client().get_network_info(&cfg(addr)).await.unwrap_err();
        assert!(matches!(err, RpcError::Transport(_)), "{err:?}");
    }

    #[tokio::test]
    async fn no_message_reveals_the_password() {
        let (good, _) = serve(core).await;
        let (busy, _) = serve(|_| Some((503, String::new()))).await;
        let (garbage, _) = serve(|_| Some((200, "{".into()))).await;
        let (hangup, _) = serve(|_| None).await;
        let silent = serve_silence().await;
        let refused = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let c = RpcClient::new(Duration::from_secs(2), Duration::from_millis(200));
        let mut wrong = cfg(good);
        wrong.password = format!("{PASSWORD}-wrong");
        let errors = [
            c.get_network_info(&wrong).await.unwrap_err(),
            c.raw_request(&cfg(good), "nosuchmethod", vec![])
                .await
                .unwrap_err(),
            c.get_network_info(&cfg(busy)).await.unwrap_err(),
            c.get_network_info(&cfg(garbage)).await.unwrap_err(),
            c.get_network_info(&cfg(hangup)).await.unwrap_err(),
            c.get_network_info(&cfg(silent)).await.unwrap_err(),
            c.get_network_info(&cfg(refused)).await.unwrap_err(),
        ];
        let kinds: Vec<_> = errors
            .iter()
            .map(|e| {
                format!("{e:?}")
                    .split(['(', ' '])
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "Unauthorized",
                "Rpc",
                "Http",
                "Decode",
                "Transport",
                "Timeout",
                "Connect"
            ]
        );
        for e in &errors {
            for text in [e.to_string(), format!("{e:?}")] {
                assert!(!text.contains(PASSWORD), "{text}");
            }
        }
        let shown = format!("{:?}", cfg(good));
        assert!(!shown.contains(PASSWORD), "{shown}");
        assert!(
            shown.contains(USER) && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let mut c = cfg("127.0.0.1:18443".parse().unwrap());
        assert_eq!(c.url(), "http://127.0.0.1:18443/");
        c.host = "fd00::1".into();
        assert_eq!(c.url(), "http://[fd00::1]:18443/");
        c.host = "bitcoin-0.net-svc.default.svc.cluster.local".into();
        assert_eq!(
            c.url(),
            "http://bitcoin-0.net-svc.default.svc.cluster.local:18443/"
        );
    }
}
