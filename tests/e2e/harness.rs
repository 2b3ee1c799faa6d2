//! Shared pieces of the end-to-end tests: the local control plane's
//! kubeconfigs, a controller process under its own ServiceAccount, test
//! namespaces, polling, and RPC access to the nodes.
//!
//! Lane-aware (`BC_NODE`, which `scripts/local-cluster.sh env` prints): on
//! the podsim lane the tests start the controller as a local process; on the
//! kubelet lane (a real node) the controller already runs in-cluster from
//! `manifests/controller.yaml` (two replicas, leader election), so
//! [`ControllerProcess`] starts nothing, reads the in-cluster controllers'
//! logs, and "kills" the controller by deleting the leader's pod; networks
//! use the node test image.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bitcoin_controller::api::{BitcoinNetwork, BitcoinNetworkSpec};
use bitcoin_controller::bitcoin::{RpcClient, RpcConfig, RPC_PORT};
use bitcoin_controller::controller::resources::{secret_value, PASSWORD_KEY, USER_KEY};
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_client::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube_client::config::{KubeConfigOptions, Kubeconfig};
use kube_client::{Api, Client, Config};
use serde_json::Value;

/// The node test image `scripts/image.sh` builds and imports (kubelet lane).
pub const NODE_IMAGE: &str = "bitcoin-regtest-node:dev";

/// Namespace, name and pod label of the in-cluster controller.
pub const CONTROLLER_NS: &str = "bitcoin-controller";
const CONTROLLER_LEASE: &str = "bitcoin-controller";
const CONTROLLER_PODS: &str = "app.kubernetes.io/name=bitcoin-controller";

/// True on the kubelet lane (`BC_NODE=kubelet`): a real node, the controller
/// in-cluster.
pub fn real_node_lane() -> bool {
    std::env::var("BC_NODE").as_deref() == Ok("kubelet")
}

/// The `spec.image` networks need on this lane: the node test image on the
/// real node (the default image is not on the node, and there is no
/// registry), none (the default) on podsim, which runs no container.
pub fn lane_image() -> Option<String> {
    real_node_lane().then(|| NODE_IMAGE.to_owned())
}

/// Prints what a scenario checks differently on the real node, and why.
pub fn real_node_note(test: &str, note: &str) {
    if real_node_lane() {
        println!("REAL NODE NOTE: {test}: {note}");
    }
}

/// Runs kubectl (the one `local-cluster.sh env` put first on PATH, with its
/// KUBECONFIG); success, stdout, stderr.
pub fn kubectl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .args(args)
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Names of the in-cluster controller's pods (not being deleted).
fn controller_pod_names() -> Vec<String> {
    let (ok, out, err) = kubectl(&[
        "-n",
        CONTROLLER_NS,
        "get",
        "pods",
        "-l",
        CONTROLLER_PODS,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]);
    assert!(ok, "list the controller pods: {err}");
    out.lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [name] => Some(name.to_owned()),
            _ => None,
        })
        .collect()
}

/// The pod holding the controller's Lease, if any.
fn controller_leader() -> Option<String> {
    let (ok, holder, _) = kubectl(&[
        "-n",
        CONTROLLER_NS,
        "get",
        "lease",
        CONTROLLER_LEASE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    if !ok || holder.is_empty() {
        return None;
    }
    kubectl(&[
        "-n",
        CONTROLLER_NS,
        "get",
        "pods",
        "-l",
        CONTROLLER_PODS,
        "-o",
        "name",
    ])
    .1
    .lines()
    .map(|l| l.trim_start_matches("pod/").to_owned())
    .find(|pod| holder.starts_with(pod.as_str()))
}

/// What the in-cluster controller pods have logged in the last `since`
/// (`kubectl logs --since` of each replica, the leader included; the standby
/// logs little). Logs of pods deleted earlier are gone with them.
fn in_cluster_log(since: Duration) -> String {
    let since = format!("--since={}s", since.as_secs() + 2);
    let mut text = String::new();
    for pod in controller_pod_names() {
        let (ok, out, err) = kubectl(&["-n", CONTROLLER_NS, "logs", &since, &pod]);
        assert!(ok, "kubectl logs {pod}: {err}");
        text.push_str(&out);
    }
    text
}

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

/// `args` plus the harness's defaults for flags `args` does not set.
fn with_defaults<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    let defaults = [
        ("--resync-period", "30s"),
        ("--rpc-timeout", "2s"),
        // No fixed ports: several controllers (and suites) run side by side.
        ("--metrics-bind-address", "0"),
        ("--health-probe-bind-address", "0"),
    ];
    for (flag, value) in defaults {
        if !args.contains(&flag) {
            all.extend([flag, value]);
        }
    }
    all
}

/// The controller binary running under the ServiceAccount kubeconfig; killed
/// on drop. Its log goes to `target/e2e-logs/<name>.log`. On the real node
/// (kubelet lane) no process: the in-cluster controller does the work.
pub struct ControllerProcess {
    /// The local process and its log file; `None` on the real node.
    local: Option<(Child, PathBuf)>,
    /// On the real node the log read is what was logged since then.
    started: Instant,
}

impl ControllerProcess {
    /// Starts the controller logging at debug level (or `$E2E_CONTROLLER_LOG`).
    pub fn start(name: &str, extra_args: &[&str]) -> Self {
        let level = std::env::var("E2E_CONTROLLER_LOG").unwrap_or_else(|_| "debug".into());
        Self::start_logging(name, extra_args, &level)
    }

    /// Starts the controller with `RUST_LOG=<rust_log>`. On the real node it
    /// starts nothing (a second controller would only stand by, or fight the
    /// in-cluster one); the in-cluster controller runs with the flags and
    /// log level of manifests/controller.yaml, not `extra_args`/`rust_log`.
    pub fn start_logging(name: &str, extra_args: &[&str], rust_log: &str) -> Self {
        if real_node_lane() {
            println!(
                "{name}: real node: no local controller; the in-cluster one \
                 (manifests/controller.yaml) does the work \
                 (ignored here: args {extra_args:?}, RUST_LOG={rust_log})"
            );
            return ControllerProcess {
                local: None,
                started: Instant::now(),
            };
        }
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_bitcoin-controller"))
            .arg("--kubeconfig")
            .arg(controller_kubeconfig())
            .args(with_defaults(extra_args))
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start the controller binary");
        println!("controller log: {}", log.display());
        ControllerProcess {
            local: Some((child, log)),
            started: Instant::now(),
        }
    }

    /// Everything the controller has logged so far; on the real node what
    /// the in-cluster controller pods have logged since this "start"
    /// (`kubectl logs --since`; the same window as a local process's log).
    pub fn log_text(&self) -> String {
        match &self.local {
            Some((_, log)) => std::fs::read_to_string(log).expect("controller log"),
            None => in_cluster_log(self.started.elapsed()),
        }
    }

    /// Sends SIGKILL (a crash, no graceful shutdown) and reaps the process.
    /// On the real node: deletes the leader's pod (the standby takes the
    /// Lease over, the Deployment starts a new replica).
    pub fn kill(mut self) {
        match self.local.as_mut() {
            Some((child, _)) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            None => {
                let leader = controller_leader().expect("a controller Lease holder");
                println!("real node: deleting the leader pod {leader} instead of a kill");
                let (ok, _, err) = kubectl(&[
                    "-n",
                    CONTROLLER_NS,
                    "delete",
                    "pod",
                    &leader,
                    "--wait=false",
                ]);
                assert!(ok, "delete the leader pod {leader}: {err}");
            }
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let Some((child, log)) = self.local.as_mut() else {
            if std::thread::panicking() {
                let text = in_cluster_log(self.started.elapsed());
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- last lines of the in-cluster controller logs ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
            return;
        };
        let _ = child.kill();
        let _ = child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&*log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- last lines of {} ---", log.display());
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
    /// A namespace where the controller may handle Secrets, as a user sets
    /// one up for networks (`manifests/examples/test-network.yaml`).
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let ns = Self::create_without_secret_access(client, prefix).await;
        grant_secret_access(client, &ns.name).await;
        ns
    }

    /// A namespace where the controller has not been granted Secrets.
    pub async fn create_without_secret_access(client: &Client, prefix: &str) -> Self {
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

/// Binds the ClusterRole `bitcoin-controller-secrets` to the controller's
/// ServiceAccount in `ns` (what `manifests/rbac.yaml` asks users to do).
pub async fn grant_secret_access(client: &Client, ns: &str) {
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("bitcoin-controller-secrets".into()),
            namespace: Some(ns.into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: "bitcoin-controller-secrets".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "bitcoin-controller".into(),
            namespace: Some("bitcoin-controller".into()),
            ..Subject::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("create the Secret RoleBinding");
}

/// Creates a network with `nodes` nodes in `ns` (with the lane's image).
pub async fn create_network(client: &Client, ns: &str, name: &str, nodes: i32) -> BitcoinNetwork {
    create_network_with(
        client,
        ns,
        name,
        BitcoinNetworkSpec {
            nodes,
            ..Default::default()
        },
    )
    .await
}

/// Creates a network with `spec` in `ns`, with the lane's image.
pub async fn create_network_with(
    client: &Client,
    ns: &str,
    name: &str,
    spec: BitcoinNetworkSpec,
) -> BitcoinNetwork {
    let api: Api<BitcoinNetwork> = Api::namespaced(client.clone(), ns);
    let net = BitcoinNetwork::new(
        name,
        BitcoinNetworkSpec {
            image: lane_image(),
            ..spec
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
        self.call_at(ip, RPC_PORT, method, params).await
    }

    /// [`Nodes::call`] at another port (a node port, a forwarded port).
    pub async fn call_at(
        &self,
        host: &str,
        port: u16,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Value, String> {
        let cfg = RpcConfig {
            port,
            ..self.cfg(host)
        };
        self.rpc
            .raw_request(&cfg, method, params)
            .await
            .map_err(|e| format!("{method} on {host}:{port}: {e}"))
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

/// The network's status once `accept` holds for it.
pub async fn wait_for_status<F>(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    accept: F,
) -> (bitcoin_controller::api::BitcoinNetworkStatus, Duration)
where
    F: Fn(&bitcoin_controller::api::BitcoinNetworkStatus) -> bool,
{
    let api: Api<BitcoinNetwork> = Api::namespaced(client.clone(), ns);
    let accept = &accept;
    let api = &api;
    wait_for(what, CONVERGE, || async move {
        let net = api.get(name).await.map_err(|e| e.to_string())?;
        match net.status {
            Some(s) if accept(&s) => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// Status with `n` nodes, all ready.
pub fn all_ready(n: usize) -> impl Fn(&bitcoin_controller::api::BitcoinNetworkStatus) -> bool {
    move |s| s.nodes.len() == n && s.ready_nodes as usize == n && s.nodes.iter().all(|x| x.ready)
}

/// Ready node IPs of a status, by ordinal.
pub fn ips(status: &bitcoin_controller::api::BitcoinNetworkStatus) -> Vec<String> {
    status
        .nodes
        .iter()
        .filter(|n| n.ready)
        .map(|n| n.ip.clone())
        .collect()
}

/// How long to wait for anything to converge.
pub const CONVERGE: Duration = Duration::from_secs(120);

impl Nodes {
    /// Waits until every node in `ips` has exactly the others added and is
    /// connected to them, by its own dial as Core counts an added node
    /// connected (at most 8, Core's limit); returns how long it took.
    pub async fn wait_for_mesh(&self, ips: &[String]) -> Duration {
        self.wait_for_mesh_within(ips, CONVERGE).await
    }

    /// [`Nodes::wait_for_mesh`], failing after `limit`.
    pub async fn wait_for_mesh_within(&self, ips: &[String], limit: Duration) -> Duration {
        let (_, took) = wait_for("full mesh", limit, || async {
            let mut wrong = Vec::new();
            for ip in ips {
                let mut want: Vec<String> = ips.iter().filter(|o| *o != ip).cloned().collect();
                want.sort();
                let want_added: Vec<String> = want.iter().map(|o| format!("{o}:18444")).collect();
                let infos = self
                    .rpc
                    .get_added_node_info(&self.cfg(ip))
                    .await
                    .map_err(|e| format!("getaddednodeinfo on {ip}: {e}"))?;
                let mut added: Vec<String> = infos.iter().map(|i| i.addednode.clone()).collect();
                added.sort();
                let dialled = infos.iter().filter(|i| i.connected).count();
                let mut peers = self.peer_ips(ip).await?;
                peers.retain(|p| p != ip);
                if added != want_added || peers != want || dialled < want.len().min(8) {
                    wrong.push(format!(
                        "{ip}: added {added:?} ({dialled} connected) peers {peers:?}"
                    ));
                }
            }
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(wrong.join("; "))
            }
        })
        .await;
        took
    }

    /// Waits until every node in `ips` has `tip` as its best block.
    pub async fn wait_for_tip(&self, ips: &[String], tip: &Value) -> Duration {
        let (_, took) = wait_for("every node at the same tip", CONVERGE, || async {
            let mut behind = Vec::new();
            for ip in ips {
                let best = self.call(ip, "getbestblockhash", vec![]).await?;
                if &best != tip {
                    behind.push(format!("{ip}: {best}"));
                }
            }
            if behind.is_empty() {
                Ok(())
            } else {
                Err(behind.join(", "))
            }
        })
        .await;
        took
    }

    /// Mines `n` blocks on the node at `ip`; returns the new tip.
    pub async fn mine(&self, ip: &str, n: u32) -> Value {
        self.call(
            ip,
            "generatetoaddress",
            vec![n.into(), MINING_ADDRESS.into()],
        )
        .await
        .expect("mine blocks");
        self.call(ip, "getbestblockhash", vec![])
            .await
            .expect("tip")
    }
}

/// Merges `spec` into the network's spec (a JSON merge patch: `null`
/// removes a field).
pub async fn patch_spec(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    Api::<BitcoinNetwork>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": spec })),
        )
        .await
        .expect("patch spec");
}

/// Waits until an Event with `reason` (and `type_`) about `name` exists.
pub async fn wait_for_event(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    reason: &str,
) -> Event {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
    let (event, _) = wait_for(&format!("{type_} Event {reason}"), CONVERGE, || async {
        let list = events.list(&lp).await.map_err(|e| e.to_string())?;
        list.items
            .iter()
            .find(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some(type_))
            .cloned()
            .ok_or_else(|| {
                format!(
                    "{:?}",
                    list.items
                        .iter()
                        .map(|e| e.reason.clone())
                        .collect::<Vec<_>>()
                )
            })
    })
    .await;
    event
}

/// Sets `BC_RPC_PASSWORD` of the user's Secret `secret` in `ns` to
/// `password`; returns the uids of the pods of `ns` from just before, for
/// [`pods_since`].
pub async fn rotate_password(
    client: &Client,
    ns: &str,
    secret: &str,
    password: &str,
) -> Vec<String> {
    let before = pods_since(client, ns, &[]).await.expect("list pods").0;
    let patch = serde_json::json!({"stringData": {PASSWORD_KEY: password}});
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(secret, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("change the password");
    before.into_iter().filter_map(|p| p.metadata.uid).collect()
}

/// The pods of `ns`, and how many of them are not among the uids `before`.
pub async fn pods_since(
    client: &Client,
    ns: &str,
    before: &[String],
) -> Result<(Vec<Pod>, usize), String> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
        .items;
    let fresh = pods
        .iter()
        .filter(|p| p.metadata.uid.as_ref().is_some_and(|u| !before.contains(u)))
        .count();
    Ok((pods, fresh))
}
