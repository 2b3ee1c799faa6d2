//! Shared pieces of the end-to-end tests: the local control plane's
//! kubeconfigs, a controller process under its own ServiceAccount, test
//! namespaces, polling, and RPC access to the nodes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bitcoin_controller::api::{BitcoinNetwork, BitcoinNetworkSpec};
use bitcoin_controller::bitcoin::{RpcClient, RpcConfig, RPC_PORT};
use bitcoin_controller::controller::resources::{secret_value, PASSWORD_KEY, USER_KEY};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_client::api::{DeleteParams, PostParams};
use kube_client::config::{KubeConfigOptions, Kubeconfig};
use kube_client::{Api, Client, Config};
use serde_json::Value;

/// A regtest address (BIP 173 test vector) to mine to.
pub const MINING_ADDRESS: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the end-to-end tests need the local control plane. \
             Run them with scripts/test.sh, or start it with `scripts/local-cluster.sh up` \
             and `eval \"$(scripts/local-cluster.sh env)\"`."
        )
    })
}

/// Admin client for the local control plane (`KUBECONFIG`).
pub async fn admin_client() -> Client {
    client_for(PathBuf::from(required_env("KUBECONFIG"))).await
}

/// Client with the controller's own ServiceAccount credentials.
pub async fn controller_client() -> Client {
    client_for(controller_kubeconfig()).await
}

fn controller_kubeconfig() -> PathBuf {
    PathBuf::from(required_env("BC_CONTROLLER_KUBECONFIG"))
}

async fn client_for(path: PathBuf) -> Client {
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("reading kubeconfig {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig");
    Client::try_from(config).expect("client")
}

/// The controller binary running under the ServiceAccount kubeconfig; killed
/// on drop. Its log goes to `target/e2e-logs/<name>.log`.
pub struct ControllerProcess {
    child: Child,
    log: PathBuf,
}

impl ControllerProcess {
    pub fn start(name: &str, extra_args: &[&str]) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_bitcoin-controller"))
            .arg("--kubeconfig")
            .arg(controller_kubeconfig())
            .args(["--resync-period", "30s", "--rpc-timeout", "2s"])
            .args(extra_args)
            .env(
                "RUST_LOG",
                std::env::var("E2E_CONTROLLER_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start the controller binary");
        println!("controller log: {}", log.display());
        ControllerProcess { child, log }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- last lines of {} ---", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A namespace of its own for one test; deleted by [`TestNamespace::delete`].
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{}", std::process::id() % 100_000);
        let api: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("bitcoin-controller/e2e".to_owned(), "true".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        TestNamespace {
            name,
            client: client.clone(),
        }
    }

    pub async fn delete(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _ = api.delete(&self.name, &DeleteParams::default()).await;
    }
}

/// Creates a network with `nodes` nodes in `ns`.
pub async fn create_network(client: &Client, ns: &str, name: &str, nodes: i32) -> BitcoinNetwork {
    let api: Api<BitcoinNetwork> = Api::namespaced(client.clone(), ns);
    let net = BitcoinNetwork::new(
        name,
        BitcoinNetworkSpec {
            nodes,
            ..Default::default()
        },
    );
    api.create(&PostParams::default(), &net)
        .await
        .expect("create network")
}

/// Polls `check` every 250 ms until it returns `Some`, or panics after
/// `timeout` with `what` and the last observation.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut last = String::from("(not checked yet)");
    while start.elapsed() < timeout {
        match check().await {
            Ok(value) => return (value, start.elapsed()),
            Err(observed) => last = observed,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}; last observed: {last}");
}

/// Prints a convergence time in a form the test log makes easy to find.
pub fn report(scenario: &str, step: &str, took: Duration) {
    println!(
        "CONVERGENCE {scenario}: {step} took {:.2}s",
        took.as_secs_f64()
    );
}

/// RPC access to the nodes of a network, with the credentials from its Secret.
pub struct Nodes {
    rpc: RpcClient,
    user: String,
    password: String,
}

impl Nodes {
    pub async fn for_network(client: &Client, ns: &str, secret: &str) -> Self {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let secret = api.get(secret).await.expect("credentials Secret");
        Nodes {
            rpc: RpcClient::new(Duration::from_secs(2), Duration::from_secs(5)),
            user: secret_value(&secret, USER_KEY).expect("user").to_owned(),
            password: secret_value(&secret, PASSWORD_KEY)
                .expect("password")
                .to_owned(),
        }
    }

    fn cfg(&self, ip: &str) -> RpcConfig {
        RpcConfig {
            host: ip.to_owned(),
            port: RPC_PORT,
            user: self.user.clone(),
            password: self.password.clone(),
        }
    }

    pub async fn call(&self, ip: &str, method: &str, params: Vec<Value>) -> Result<Value, String> {
        self.rpc
            .raw_request(&self.cfg(ip), method, params)
            .await
            .map_err(|e| format!("{method} on {ip}: {e}"))
    }

    /// The node's added-node entries, sorted.
    pub async fn added_nodes(&self, ip: &str) -> Result<Vec<String>, String> {
        let infos = self
            .rpc
            .get_added_node_info(&self.cfg(ip))
            .await
            .map_err(|e| format!("getaddednodeinfo on {ip}: {e}"))?;
        let mut added: Vec<String> = infos.into_iter().map(|i| i.addednode).collect();
        added.sort();
        Ok(added)
    }

    /// Addresses (ip:port) of the node's connected peers.
    pub async fn peer_ips(&self, ip: &str) -> Result<Vec<String>, String> {
        let peers = self.call(ip, "getpeerinfo", vec![]).await?;
        let mut ips: Vec<String> = peers
            .as_array()
            .ok_or("getpeerinfo is not an array")?
            .iter()
            .filter_map(|p| p["addr"].as_str())
            .filter_map(|a| a.rsplit_once(':').map(|(ip, _)| ip.to_owned()))
            .collect();
        ips.sort();
        ips.dedup();
        Ok(ips)
    }
}
