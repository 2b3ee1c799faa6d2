//! Operations end to end: Events and conditions through a network's life,
//! the scale subresource and printer columns, the metrics endpoint, the
//! health probes, leader election with failover, and graceful shutdown.
//!
//! These tests start the controller themselves (not through the harness)
//! because they need its metrics and health ports, SIGTERM and exit codes.
//! Each process gets free ports on 127.0.0.1. Durations are printed
//! (`OPS ...` lines), never asserted beyond generous timeouts.

use std::collections::BTreeMap;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bitcoin_controller::api::{BitcoinNetwork, BitcoinNetworkStatus, GROUP, VERSION};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube_client::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube_client::{Api, Client};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::harness::*;

const LEASE_NAMESPACE: &str = "bitcoin-controller";
const LEASE_NAME: &str = "bitcoin-controller";

fn say(what: &str, took: Duration) {
    println!("OPS {what}: {:.2}s", took.as_secs_f64());
}

// ------------------------------------------------------------ processes

/// A private copy of the controller binary. Cargo's target directory may be
/// shared with other checkouts whose builds replace the binary at its
/// uplifted path; a copy taken right after this build stays ours.
fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let built = PathBuf::from(env!("CARGO_BIN_EXE_bitcoin-controller"));
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ops-bin");
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join(format!("bitcoin-controller-{}", std::process::id()));
        std::fs::copy(&built, &copy).expect("copy the controller binary");
        let help = Command::new(&copy).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.contains("--leader-elect") && help.contains("--metrics-bind-address"),
            "{} is not this checkout's build (another build replaced it?); rebuild and rerun",
            built.display()
        );
        copy
    })
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One controller process with its own metrics and health ports.
struct Controller {
    name: String,
    child: Child,
    log: PathBuf,
    metrics: u16,
    health: u16,
}

impl Controller {
    fn start(name: &str, extra: &[&str]) -> Self {
        let kubeconfig = std::env::var("BC_CONTROLLER_KUBECONFIG")
            .expect("BC_CONTROLLER_KUBECONFIG (eval \"$(scripts/local-cluster.sh env)\")");
        Self::start_with_kubeconfig(name, Path::new(&kubeconfig), extra)
    }

    fn start_with_kubeconfig(name: &str, kubeconfig: &Path, extra: &[&str]) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-logs");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("ops-{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let (metrics, health) = (free_port(), free_port());
        let child = Command::new(binary())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--resync-period", "30s", "--rpc-timeout", "2s"])
            .arg(format!("--metrics-bind-address=127.0.0.1:{metrics}"))
            .arg(format!("--health-probe-bind-address=127.0.0.1:{health}"))
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("E2E_CONTROLLER_LOG")
                    .unwrap_or_else(|_| "info,bitcoin_controller=debug".into()),
            )
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start the controller");
        println!(
            "controller {name}: pid {}, metrics :{metrics}, health :{health}, log {}",
            child.id(),
            log.display()
        );
        Self {
            name: name.to_owned(),
            child,
            log,
            metrics,
            health,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the log that say a network is being reconciled.
    fn reconciling_lines(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("reconciling "))
            .map(str::to_owned)
            .collect()
    }

    /// The identity this process campaigns with (from its log).
    async fn identity(&self) -> String {
        let (id, _) = wait_for(
            &format!("{}: leader election identity in the log", self.name),
            CONVERGE,
            || async {
                self.log_text()
                    .lines()
                    .find_map(|l| {
                        l.contains("trying to acquire lease")
                            .then(|| l.rsplit(" as ").next().map(str::to_owned))
                            .flatten()
                    })
                    .ok_or_else(|| "not yet".to_owned())
            },
        )
        .await;
        id
    }

    async fn get(&self, port: u16, path: &str) -> Result<(u16, String), String> {
        http_get(port, path).await
    }

    async fn scrape(&self) -> String {
        let (status, body) = self.get(self.metrics, "/metrics").await.expect("scrape");
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn wait_ready(&self) -> Duration {
        let (_, took) = wait_for(&format!("{}: /readyz 200", self.name), CONVERGE, || async {
            match self.get(self.health, "/readyz").await {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        took
    }

    fn sigterm(&self) {
        self.signal("TERM");
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} {}", self.child.id());
    }

    /// SIGKILL: a crash, nothing is released.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let (status, _) = wait_for(&format!("{} to exit", self.name), timeout, || {
            let status = self.child.try_wait();
            async move {
                match status {
                    Ok(Some(status)) => Ok(status),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
        status
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- last lines of {} ---", self.log.display());
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// A plain HTTP GET to 127.0.0.1:`port`; status and body.
async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    Ok((status, body.to_owned()))
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

/// Sum of every sample of metric `name` (any labels).
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ------------------------------------------------------------ cluster state

fn condition<'a>(status: &'a BitcoinNetworkStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

fn condition_is(
    type_: &'static str,
    want: &'static str,
    reason: Option<&'static str>,
) -> impl Fn(&BitcoinNetworkStatus) -> bool {
    move |s| {
        condition(s, type_).is_some_and(|c| {
            c.status == want
                && reason.is_none_or(|r| c.reason == r)
                && c.observed_generation.is_some()
        })
    }
}

/// Event reasons about network `name` in `ns`, with their counts.
async fn event_reasons(client: &Client, ns: &str, name: &str) -> BTreeMap<String, i32> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
    let mut reasons = BTreeMap::new();
    for e in events.list(&lp).await.expect("list events").items {
        *reasons.entry(e.reason.unwrap_or_default()).or_insert(0) += e.count.unwrap_or(1);
    }
    reasons
}

async fn lease(client: &Client) -> Option<Lease> {
    Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE)
        .get_opt(LEASE_NAME)
        .await
        .expect("read the Lease")
}

fn holder(lease: &Option<Lease>) -> String {
    lease
        .as_ref()
        .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
        .unwrap_or_default()
}

/// Starts each leader election test from no Lease at all.
async fn delete_lease(client: &Client) {
    let api = Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE);
    let _ = api.delete(LEASE_NAME, &DeleteParams::default()).await;
    wait_for("the old Lease to be gone", CONVERGE, || async {
        match api.get_opt(LEASE_NAME).await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

async fn wait_for_holder(client: &Client, identity: &str, timeout: Duration) -> Duration {
    let (_, took) = wait_for(&format!("Lease held by {identity}"), timeout, || async {
        let l = lease(client).await;
        if holder(&l) == identity {
            Ok(())
        } else {
            Err(format!("holder {:?}", holder(&l)))
        }
    })
    .await;
    took
}

/// `kubectl get` through the API: the network as the server's Table.
async fn table_row(client: &Client, ns: &str, name: &str) -> (Vec<String>, Vec<Value>) {
    let req = http::Request::get(format!(
        "/apis/{GROUP}/{VERSION}/namespaces/{ns}/bitcoinnetworks/{name}"
    ))
    .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    .body(Vec::new())
    .unwrap();
    let table: Value = client.request(req).await.expect("Table");
    let columns = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    let cells = table["rows"][0]["cells"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    (columns, cells)
}

// ------------------------------------------------------------ scenarios

/// A network's life as `kubectl describe` and `kubectl get` show it:
/// Created and NodeAdded Events and Ready=True after create; the scale
/// subresource (what `kubectl scale` uses) changes spec.nodes and the
/// network follows, up and down (NodeRemoved); a lost pod is replaced and
/// re-meshed; a missing Secret gives a SecretNotFound Warning and
/// Degraded=True, and the network recovers when the spec is fixed.
#[tokio::test]
async fn ops_events_conditions_and_scale_subresource() {
    let admin = admin_client().await;
    let _controller = Controller::start("lifecycle", &[]);
    let ns = TestNamespace::create(&admin, "e2e-ops-life").await;
    let nets: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);
    create_network(&admin, &ns.name, "net", 2).await;

    let (status, took) = wait_for_status(&admin, &ns.name, "net", "Ready=True with 2 nodes", |s| {
        all_ready(2)(s) && condition_is("Ready", "True", Some("NetworkReady"))(s)
    })
    .await;
    say("create: Ready=True with 2 nodes", took);
    assert!(condition_is("Degraded", "False", None)(&status));
    assert!(condition_is("Progressing", "False", None)(&status));
    for reason in ["Created", "NodeAdded"] {
        wait_for_event(&admin, &ns.name, "net", "Normal", reason).await;
    }

    // Printer columns, computed by the API server.
    let (columns, cells) = table_row(&admin, &ns.name, "net").await;
    println!("kubectl get bcn: {columns:?} {cells:?}");
    assert_eq!(
        columns,
        ["Name", "Nodes", "Ready", "Blocks", "Status", "Age"]
    );
    assert_eq!(cells[0], "net");
    assert_eq!(cells[1], 2);
    assert_eq!(cells[2], 2);
    assert!(cells[3].is_i64(), "Blocks: {}", cells[3]);
    assert_eq!(cells[4], "NetworkReady");

    // Scale up with `kubectl scale` (the kubectl of the local control plane,
    // first on PATH after `local-cluster.sh env`), which uses the scale
    // subresource.
    let start = Instant::now();
    let out = std::process::Command::new("kubectl")
        .args([
            "-n",
            &ns.name,
            "scale",
            "bitcoinnetwork/net",
            "--replicas=3",
        ])
        .output()
        .expect("run kubectl (scripts/local-cluster.sh env puts it on PATH)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl scale: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("kubectl scale: {}", said.trim());
    assert_eq!(nets.get("net").await.unwrap().spec.nodes, 3);
    let (status, _) = wait_for_status(&admin, &ns.name, "net", "3 ready nodes", |s| {
        all_ready(3)(s) && condition_is("Ready", "True", None)(s)
    })
    .await;
    say("kubectl scale 2 -> 3: Ready=True", start.elapsed());
    let nodes = Nodes::for_network(&admin, &ns.name, "net").await;
    nodes.wait_for_mesh(&ips(&status)).await;
    let scale = nets.get_scale("net").await.expect("read the scale");
    let scale_status = scale.status.expect("scale status");
    assert_eq!(scale_status.replicas, 3, "status.readyNodes");
    println!(
        "scale subresource: status.selector = {:?}",
        scale_status.selector
    );

    // Scale down through the scale subresource's API: the removed node's
    // address leaves the others' lists.
    let start = Instant::now();
    nets.patch_scale(
        "net",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await
    .expect("scale down");
    let (status, _) = wait_for_status(&admin, &ns.name, "net", "2 ready nodes", |s| {
        all_ready(2)(s) && condition_is("Ready", "True", None)(s)
    })
    .await;
    nodes.wait_for_mesh(&ips(&status)).await;
    wait_for_event(&admin, &ns.name, "net", "Normal", "NodeRemoved").await;
    say(
        "scale subresource 3 -> 2: meshed, NodeRemoved",
        start.elapsed(),
    );

    // Pod loss: a new pod with a new address, re-meshed.
    let start = Instant::now();
    let old_ip = status.nodes[0].ip.clone();
    let removed_before = event_reasons(&admin, &ns.name, "net").await["NodeRemoved"];
    Api::<Pod>::namespaced(admin.clone(), &ns.name)
        .delete("net-sts-0", &DeleteParams::default())
        .await
        .expect("delete pod 0");
    let (status, _) = wait_for_status(&admin, &ns.name, "net", "pod 0 back with a new IP", |s| {
        all_ready(2)(s) && s.nodes[0].ip != old_ip && condition_is("Ready", "True", None)(s)
    })
    .await;
    nodes.wait_for_mesh(&ips(&status)).await;
    wait_for(
        "another NodeRemoved (the old address)",
        CONVERGE,
        || async {
            let n = event_reasons(&admin, &ns.name, "net").await["NodeRemoved"];
            if n > removed_before {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        },
    )
    .await;
    say("pod loss: replaced and meshed", start.elapsed());

    // A Secret that does not exist: Warning and Degraded, then recovery.
    let start = Instant::now();
    nets.patch(
        "net",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"secret": "no-such-secret"}})),
    )
    .await
    .unwrap();
    let event = wait_for_event(&admin, &ns.name, "net", "Warning", "SecretNotFound").await;
    assert!(event.message.unwrap_or_default().contains("no-such-secret"));
    let (status, _) = wait_for_status(
        &admin,
        &ns.name,
        "net",
        "Degraded=True SecretNotFound",
        |s| {
            condition_is("Degraded", "True", Some("SecretNotFound"))(s)
                && condition_is("Ready", "False", Some("SecretNotFound"))(s)
        },
    )
    .await;
    let generation = nets.get("net").await.unwrap().metadata.generation;
    assert_eq!(
        condition(&status, "Degraded").unwrap().observed_generation,
        generation
    );
    say("bad secret: Degraded=True", start.elapsed());
    let start = Instant::now();
    nets.patch(
        "net",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"secret": null}})),
    )
    .await
    .unwrap();
    wait_for_status(&admin, &ns.name, "net", "recovered", |s| {
        condition_is("Degraded", "False", None)(s) && condition_is("Ready", "True", None)(s)
    })
    .await;
    say("secret fixed: Ready=True again", start.elapsed());
    println!("events: {:?}", event_reasons(&admin, &ns.name, "net").await);

    ns.delete().await;
}

/// The metrics endpoint serves the workqueue, reconcile, reflector and RPC
/// metrics, and their values move when a network is reconciled.
#[tokio::test]
async fn ops_metrics_move_with_reconciles() {
    let admin = admin_client().await;
    let controller = Controller::start("metrics", &[]);
    controller.wait_ready().await;
    let before = controller.scrape().await;
    for name in [
        "workqueue_depth{name=\"bitcoinnetworks\"}",
        "workqueue_adds_total{name=\"bitcoinnetworks\"}",
        "workqueue_retries_total{name=\"bitcoinnetworks\"}",
        "workqueue_queue_duration_seconds_count{name=\"bitcoinnetworks\"}",
        "workqueue_work_duration_seconds_count{name=\"bitcoinnetworks\"}",
        "workqueue_unfinished_work_seconds{name=\"bitcoinnetworks\"}",
        "workqueue_longest_running_processor_seconds{name=\"bitcoinnetworks\"}",
        "bitcoin_controller_reconcile_total{result=\"success\"}",
        "bitcoin_controller_reconcile_duration_seconds_count",
        "bitcoin_controller_reflector_lists_total{resource=\"pods\"}",
        "bitcoin_controller_reflector_watches_total{resource=\"bitcoinnetworks\"}",
        "bitcoin_controller_reflector_relists_total{resource=\"secrets\"}",
        "bitcoin_controller_leader",
    ] {
        assert!(sample(&before, name).is_some(), "{name} missing:\n{before}");
    }
    assert_eq!(sample(&before, "bitcoin_controller_leader"), Some(1.0));
    // Labelled by reason: present (with no sample) before the first error.
    assert!(
        before.contains("# TYPE bitcoin_controller_reconcile_errors counter"),
        "{before}"
    );
    for resource in ["bitcoinnetworks", "statefulsets", "services", "pods"] {
        let lists = sample(
            &before,
            &format!("bitcoin_controller_reflector_lists_total{{resource=\"{resource}\"}}"),
        );
        assert!(lists >= Some(1.0), "{resource}: {lists:?}");
    }

    let ns = TestNamespace::create(&admin, "e2e-ops-metrics").await;
    create_network(&admin, &ns.name, "net", 2).await;
    let (_, took) = wait_for_status(&admin, &ns.name, "net", "2 ready nodes", |s| {
        all_ready(2)(s) && condition_is("Ready", "True", None)(s)
    })
    .await;
    say("metrics: network ready", took);
    let after = controller.scrape().await;
    // Secrets are listed per namespace, once it holds a network.
    let lists = sample(
        &after,
        "bitcoin_controller_reflector_lists_total{resource=\"secrets\"}",
    );
    assert!(lists >= Some(1.0), "secrets: {lists:?}");

    let moved = |series: &str| {
        let (b, a) = (
            sample(&before, series).unwrap_or(0.0),
            sample(&after, series).unwrap_or(0.0),
        );
        println!("OPS metric {series}: {b} -> {a}");
        assert!(a > b, "{series} did not grow: {b} -> {a}");
    };
    moved("workqueue_adds_total{name=\"bitcoinnetworks\"}");
    moved("workqueue_queue_duration_seconds_count{name=\"bitcoinnetworks\"}");
    moved("workqueue_work_duration_seconds_count{name=\"bitcoinnetworks\"}");
    moved("bitcoin_controller_reconcile_duration_seconds_count");
    moved("bitcoin_controller_reflector_watch_events_total{resource=\"pods\"}");
    moved("bitcoin_controller_rpc_requests_total{method=\"getaddednodeinfo\",outcome=\"success\"}");
    moved("bitcoin_controller_rpc_duration_seconds_count{method=\"getaddednodeinfo\"}");
    moved("bitcoin_controller_rpc_requests_total{method=\"addnode\",outcome=\"success\"}");
    let reconciles = |t: &str| sum_of(t, "bitcoin_controller_reconcile_total");
    assert!(reconciles(&after) > reconciles(&before));
    println!(
        "OPS metric bitcoin_controller_reconcile_total (all results): {} -> {}",
        reconciles(&before),
        reconciles(&after)
    );
    ns.delete().await;
}

/// Forwards TCP connections to `upstream` while open. While closed it
/// accepts and drops new connections, and closing it cuts the forwarded
/// ones: like an API server that is not (or no longer) reachable.
struct Gate {
    port: u16,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, _) = watch::channel(false);
        let task = tokio::spawn({
            let open = open.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !*open.borrow() {
                        continue; // dropped: connection closed
                    }
                    let upstream = upstream.clone();
                    let mut closed = open.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                            _ = closed.wait_for(|open| !*open) => {}
                        }
                    });
                }
            }
        });
        Self { port, open, task }
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }

    /// A copy of the controller's kubeconfig that reaches the API server
    /// through this gate.
    fn kubeconfig(&self, name: &str) -> PathBuf {
        let (text, upstream) = controller_kubeconfig();
        let path =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ops-{name}.kubeconfig"));
        std::fs::write(
            &path,
            text.replace(
                &format!("https://{upstream}"),
                &format!("https://127.0.0.1:{}", self.port),
            ),
        )
        .unwrap();
        path
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.set_open(false);
        self.task.abort();
    }
}

/// The controller's kubeconfig and its API server's `host:port`.
fn controller_kubeconfig() -> (String, String) {
    let path = std::env::var("BC_CONTROLLER_KUBECONFIG").expect("BC_CONTROLLER_KUBECONFIG");
    let text = std::fs::read_to_string(path).unwrap();
    let upstream = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .expect("server in kubeconfig")
        .trim()
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    (text, upstream)
}

/// `/readyz` answers 503 while the caches cannot sync (the API server is
/// unreachable) and 200 once they have; `/healthz` is 200 throughout.
#[tokio::test]
async fn ops_readyz_is_503_until_caches_sync() {
    let gate = Gate::start(controller_kubeconfig().1).await;
    let gated = gate.kubeconfig("readyz");
    let controller = Controller::start_with_kubeconfig("readyz", &gated, &[]);
    let started = Instant::now();
    let (body, _) = wait_for(
        "/readyz 503 while the API server is unreachable",
        CONVERGE,
        || async {
            match controller.get(controller.health, "/readyz").await {
                Ok((503, body)) => Ok(body),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    println!("/readyz before sync:\n{body}");
    assert!(body.contains("not synced"), "{body}");
    // Stays unready while the API server stays away.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _) = controller.get(controller.health, "/readyz").await.unwrap();
    assert_eq!(status, 503);
    let (status, body) = controller.get(controller.health, "/healthz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let metrics = controller.scrape().await;
    assert!(
        sum_of(&metrics, "bitcoin_controller_reflector_failures_total") > 0.0,
        "failed lists are counted"
    );

    gate.set_open(true);
    let opened = Instant::now();
    let took = controller.wait_ready().await;
    say(
        "readyz: 503 -> 200 after the API server became reachable",
        took,
    );
    println!(
        "OPS readyz: unready for {:.2}s in all",
        (opened.elapsed() + (opened - started)).as_secs_f64()
    );
    let (_, body) = controller.get(controller.health, "/readyz").await.unwrap();
    assert!(body.contains("readyz check passed"), "{body}");
}

/// Two controllers with `--leader-elect`: the first leads and reconciles,
/// the second stands by (ready, no reconciles). After SIGKILL of the leader
/// the standby takes the lease once it expires and reconciles; the network
/// keeps converging. Never do both reconcile at once.
#[tokio::test]
async fn ops_leader_failover_after_kill() {
    let admin = admin_client().await;
    delete_lease(&admin).await;
    let mut a = Controller::start("leader-a", &["--leader-elect"]);
    let a_id = a.identity().await;
    let took = wait_for_holder(&admin, &a_id, CONVERGE).await;
    say("failover: first process acquired the new Lease", took);
    a.wait_ready().await;
    let b = Controller::start("leader-b", &["--leader-elect=true"]);
    let b_id = b.identity().await;
    assert_ne!(a_id, b_id);
    wait_for("b to see a holding the lease", CONVERGE, || async {
        if b.log_text().contains(&format!("held by {a_id}")) {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await;
    b.wait_ready().await;
    assert_eq!(
        sample(&a.scrape().await, "bitcoin_controller_leader"),
        Some(1.0)
    );
    assert_eq!(
        sample(&b.scrape().await, "bitcoin_controller_leader"),
        Some(0.0)
    );

    let ns = TestNamespace::create(&admin, "e2e-ops-failover").await;
    let nets: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);
    create_network(&admin, &ns.name, "net", 2).await;
    wait_for_status(&admin, &ns.name, "net", "2 ready nodes", all_ready(2)).await;
    assert!(!a.reconciling_lines().is_empty(), "the leader reconciles");
    assert_eq!(
        b.reconciling_lines(),
        Vec::<String>::new(),
        "the standby must not reconcile"
    );
    assert_eq!(holder(&lease(&admin).await), a_id);

    // Crash the leader.
    a.kill9();
    let killed = Instant::now();
    let reconciles_of_a = a.reconciling_lines().len();
    let took = wait_for_holder(&admin, &b_id, Duration::from_secs(60)).await;
    say(
        "failover: SIGKILL of the leader -> standby holds the Lease",
        took,
    );
    let (_, took_reconcile) = wait_for("b to reconcile", Duration::from_secs(60), || async {
        if b.reconciling_lines().is_empty() {
            Err("no reconcile yet".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
    say(
        "failover: SIGKILL of the leader -> first reconcile by the new leader",
        killed.elapsed().max(took_reconcile),
    );
    let b_log = b.log_text();
    let became = b_log
        .find("became leader")
        .expect("b logged becoming leader");
    let first_reconcile = b_log.find("reconciling ").unwrap();
    assert!(became < first_reconcile, "b reconciled before it led");
    assert_eq!(a.reconciling_lines().len(), reconciles_of_a, "a is dead");
    let l = lease(&admin).await.unwrap();
    println!(
        "Lease after failover: holder {:?}, transitions {:?}",
        holder(&Some(l.clone())),
        l.spec.as_ref().and_then(|s| s.lease_transitions)
    );

    // The new leader does the work: scale up and converge.
    let start = Instant::now();
    nets.patch_scale(
        "net",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    let (status, _) = wait_for_status(&admin, &ns.name, "net", "3 ready nodes", all_ready(3)).await;
    Nodes::for_network(&admin, &ns.name, "net")
        .await
        .wait_for_mesh(&ips(&status))
        .await;
    say(
        "failover: new leader scaled 2 -> 3 and meshed",
        start.elapsed(),
    );
    assert_eq!(
        sample(&b.scrape().await, "bitcoin_controller_leader"),
        Some(1.0)
    );
    ns.delete().await;
}

/// SIGTERM: the leader finishes, releases the Lease and exits 0; the standby
/// takes over at its next retry instead of waiting for the lease to expire.
/// A last process shut down alone leaves the Lease without a holder.
#[tokio::test]
async fn ops_sigterm_releases_the_lease_and_exits_zero() {
    let admin = admin_client().await;
    delete_lease(&admin).await;
    let mut a = Controller::start("term-a", &["--leader-elect"]);
    let a_id = a.identity().await;
    wait_for_holder(&admin, &a_id, CONVERGE).await;
    let mut b = Controller::start("term-b", &["--leader-elect"]);
    let b_id = b.identity().await;
    wait_for("b to stand by", CONVERGE, || async {
        if b.log_text().contains(&format!("held by {a_id}")) {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await;

    a.sigterm();
    let termed = Instant::now();
    let status = a.wait_exit(Duration::from_secs(60)).await;
    say("sigterm: leader exited", termed.elapsed());
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        a.log_text().contains("released lease"),
        "a released the lease"
    );
    wait_for_holder(&admin, &b_id, Duration::from_secs(60)).await;
    say(
        "sigterm: SIGTERM of the leader -> standby holds the Lease",
        termed.elapsed(),
    );

    b.sigterm();
    let status = b.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    let l = lease(&admin).await.expect("the Lease stays");
    let spec = l.spec.unwrap_or_default();
    assert_eq!(spec.holder_identity, None, "released: no holder");
    assert_eq!(spec.lease_duration_seconds, Some(1));
    println!("Lease after the last SIGTERM: {spec:?}");
}

/// A leader that can no longer reach the API server gives up within the
/// renew deadline (10 s) and exits non-zero, before its lease expires for
/// the standby (15 s after the last renewal it saw): never two leaders.
#[tokio::test]
async fn ops_leader_that_cannot_renew_exits_before_the_standby_takes_over() {
    let admin = admin_client().await;
    delete_lease(&admin).await;
    let gate = Gate::start(controller_kubeconfig().1).await;
    gate.set_open(true);
    let mut a =
        Controller::start_with_kubeconfig("cut-a", &gate.kubeconfig("cut-a"), &["--leader-elect"]);
    let a_id = a.identity().await;
    wait_for_holder(&admin, &a_id, CONVERGE).await;
    let b = Controller::start("cut-b", &["--leader-elect"]);
    let b_id = b.identity().await;
    wait_for("b to stand by", CONVERGE, || async {
        if b.log_text().contains(&format!("held by {a_id}")) {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await;

    gate.set_open(false);
    let cut = Instant::now();
    let status = a.wait_exit(Duration::from_secs(60)).await;
    let a_exited = cut.elapsed();
    say("cut off: leader gave up and exited", a_exited);
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert!(a.log_text().contains("leader election lost"), "a says why");
    assert_eq!(holder(&lease(&admin).await), a_id, "a could not release it");
    wait_for_holder(&admin, &b_id, Duration::from_secs(60)).await;
    let b_leads = cut.elapsed();
    say("cut off: standby holds the Lease", b_leads);
    assert!(a_exited < b_leads, "a stopped before b took over");
}

/// A leader frozen past its renew deadline (SIGSTOP) acts on nothing when it
/// wakes up (SIGCONT): by its own clock its lease may be someone else's, so
/// its workers wait for a renewal, which finds the standby holding the
/// Lease, and it exits non-zero without a single reconcile from its stale
/// caches.
#[tokio::test]
async fn ops_a_paused_leader_reconciles_nothing_when_it_resumes() {
    let admin = admin_client().await;
    delete_lease(&admin).await;
    let mut a = Controller::start("pause-a", &["--leader-elect"]);
    let a_id = a.identity().await;
    wait_for_holder(&admin, &a_id, CONVERGE).await;
    a.wait_ready().await;
    let b = Controller::start("pause-b", &["--leader-elect"]);
    let b_id = b.identity().await;
    b.wait_ready().await;

    let ns = TestNamespace::create(&admin, "e2e-ops-pause").await;
    let nets: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);
    create_network(&admin, &ns.name, "net", 2).await;
    wait_for_status(&admin, &ns.name, "net", "2 ready nodes", all_ready(2)).await;
    assert!(!a.reconciling_lines().is_empty(), "the leader reconciles");

    a.signal("STOP");
    let stopped = Instant::now();
    let took = wait_for_holder(&admin, &b_id, Duration::from_secs(60)).await;
    say("pause: standby holds the Lease of the frozen leader", took);
    // Work the frozen leader will hear about when it wakes up.
    nets.patch(
        "net",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"nodes": 3}})),
    )
    .await
    .unwrap();
    wait_for_status(&admin, &ns.name, "net", "3 ready nodes", all_ready(3)).await;
    let before = a.reconciling_lines().len();
    a.signal("CONT");
    say("pause: frozen for", stopped.elapsed());
    let status = a.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1), "{status:?}");
    let after = a.reconciling_lines();
    assert_eq!(
        after.len(),
        before,
        "no reconcile after the resume: {:?}",
        &after[before..]
    );
    assert!(
        a.log_text().contains("leader election lost"),
        "a says why it stopped"
    );
    ns.delete().await;
}

/// Runs `scripts/local-cluster.sh <command>` on the suite's cluster.
fn local_cluster(command: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/local-cluster.sh");
    let out = Command::new(&script)
        .arg(command)
        .output()
        .expect("run scripts/local-cluster.sh");
    assert!(
        out.status.success(),
        "local-cluster.sh {command} failed (is BC_CLUSTER_DIR the suite's cluster? eval \"$(scripts/local-cluster.sh env)\"):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// While the controller cannot reach it, the API server restarts (its watch
/// cache starts over) and etcd is compacted; meanwhile one network is
/// deleted (the garbage collector removes its objects), one is scaled and
/// one is created. Back in touch, the controller's watches resume from
/// resourceVersions that are gone: 410, relist. The relist delivers the
/// deletion, the scale and the creation; the deleted network's objects are
/// never created again, not even for a moment (the workers wait until every
/// cache has relisted instead of acting on a half-fresh view).
#[tokio::test]
async fn ops_relist_after_an_api_server_restart_and_compaction() {
    let admin = admin_client().await;
    let ns = TestNamespace::create(&admin, "e2e-ops-relist").await;
    let nets: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(admin.clone(), &ns.name);
    let gate = Gate::start(controller_kubeconfig().1).await;
    gate.set_open(true);
    let controller = Controller::start_with_kubeconfig("relist", &gate.kubeconfig("relist"), &[]);
    controller.wait_ready().await;
    for name in ["gone", "grows"] {
        create_network(&admin, &ns.name, name, 1).await;
    }
    for name in ["gone", "grows"] {
        wait_for_status(&admin, &ns.name, name, "1 ready node", all_ready(1)).await;
    }
    let relists_before = sum_of(
        &controller.scrape().await,
        "bitcoin_controller_reflector_relists_total",
    );

    gate.set_open(false);
    let cut = Instant::now();
    local_cluster("restart-apiserver");
    say("relist: kube-apiserver restarted", cut.elapsed());
    nets.delete("gone", &DeleteParams::default()).await.unwrap();
    wait_for(
        "the garbage collector removed gone's StatefulSet",
        CONVERGE,
        || {
            let sets = sets.clone();
            async move {
                match sets.get_opt("gone-sts").await {
                    Ok(None) => Ok(()),
                    other => Err(format!("{:?}", other.map(|s| s.map(|s| s.metadata.uid)))),
                }
            }
        },
    )
    .await;
    nets.patch(
        "grows",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"nodes": 2}})),
    )
    .await
    .unwrap();
    create_network(&admin, &ns.name, "new", 1).await;
    local_cluster("compact-etcd");
    // Every StatefulSet the controller writes from here on is seen.
    let from = sets.list(&ListParams::default()).await.unwrap();
    let from = from.metadata.resource_version.unwrap();

    gate.set_open(true);
    let opened = Instant::now();
    wait_for_status(&admin, &ns.name, "new", "1 ready node", all_ready(1)).await;
    wait_for_status(&admin, &ns.name, "grows", "2 ready nodes", all_ready(2)).await;
    say(
        "relist: created and scaled networks converged after the cut",
        opened.elapsed(),
    );
    let relists = sum_of(
        &controller.scrape().await,
        "bitcoin_controller_reflector_relists_total",
    ) - relists_before;
    assert!(relists >= 1.0, "the watches resumed with 410 and relisted");
    println!("OPS relist: {relists} relists after the API server came back");

    // Collect every StatefulSet event since the cut: gone's never comes back.
    let events = sets
        .watch(&kube_client::api::WatchParams::default().timeout(5), &from)
        .await
        .unwrap();
    let events: Vec<_> = futures::TryStreamExt::try_collect(events).await.unwrap();
    let names: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            kube_client::api::WatchEvent::Added(s) | kube_client::api::WatchEvent::Modified(s) => {
                s.metadata.name.clone()
            }
            _ => None,
        })
        .collect();
    println!("OPS relist: StatefulSet events since the cut: {names:?}");
    assert!(names.iter().any(|n| n == "new-sts"), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "gone-sts"),
        "the deleted network's StatefulSet was created again: {names:?}"
    );
    assert!(sets.get_opt("gone-sts").await.unwrap().is_none());
    ns.delete().await;
}

/// Periodic mining across a leader failover: two controllers with
/// `--leader-elect`, a network with `interval: 4s`; SIGKILL of the leader
/// mid-way. The chain gets no block twice (no two blocks less than the
/// interval apart, none arriving together) and after the standby takes over
/// it mines one block, not the ones "missed" while no one led.
#[tokio::test]
async fn ops_interval_mining_across_a_leader_failover() {
    use crate::mining::{create_mining_network, has_condition, watch_blocks};
    use bitcoin_controller::api::MiningSpec;

    let admin = admin_client().await;
    delete_lease(&admin).await;
    let mut a = Controller::start("mining-leader-a", &["--leader-elect"]);
    let a_id = a.identity().await;
    wait_for_holder(&admin, &a_id, CONVERGE).await;
    let b = Controller::start("mining-leader-b", &["--leader-elect"]);
    let b_id = b.identity().await;
    b.wait_ready().await;

    let ns = TestNamespace::create(&admin, "e2e-ops-mining").await;
    let interval = 4;
    create_mining_network(
        &admin,
        &ns.name,
        "net",
        2,
        MiningSpec {
            initial_blocks: Some(20),
            interval: Some(format!("{interval}s")),
            ..Default::default()
        },
    )
    .await;
    let (status, _) = wait_for_status(
        &admin,
        &ns.name,
        "net",
        "Ready",
        has_condition("Ready", "True"),
    )
    .await;
    let ips = ips(&status);
    let nodes = Nodes::for_network(&admin, &ns.name, "net").await;
    // Blocks under the first leader.
    let (before, bursts_before) =
        watch_blocks(&nodes, &ips[1], Duration::from_secs(3 * interval + 2)).await;

    a.kill9();
    let killed = Instant::now();
    let took = wait_for_holder(&admin, &b_id, Duration::from_secs(60)).await;
    say("mining failover: SIGKILL -> standby holds the Lease", took);
    // Blocks under the new leader, the takeover included.
    let (after, bursts_after) =
        watch_blocks(&nodes, &ips[1], Duration::from_secs(4 * interval)).await;
    say("mining failover: observed for", killed.elapsed());

    let mut blocks = before.clone();
    blocks.extend(after.iter().filter(|(h, _)| *h > before.last().unwrap().0));
    let gaps: Vec<u64> = blocks.windows(2).map(|w| w[1].1 - w[0].1).collect();
    println!("OPS mining failover: blocks (height, time) {blocks:?}; gaps {gaps:?}");
    assert!(
        bursts_before.is_empty() && bursts_after.is_empty(),
        "blocks arrived together: {bursts_before:?} {bursts_after:?}"
    );
    assert!(
        before.last().unwrap().0 > before[0].0,
        "the first leader mined: {before:?}"
    );
    assert!(
        after.last().unwrap().0 > before.last().unwrap().0,
        "the new leader mined: {after:?}"
    );
    // No block less than the interval (minus the 1 s of block times)
    // after the one before it, across the failover too.
    for (i, gap) in gaps.iter().enumerate() {
        assert!(
            *gap + 1 >= interval,
            "gap {gap}s (block {i}) < interval {interval}s: {blocks:?}"
        );
    }
    assert!(
        !b.reconciling_lines().is_empty(),
        "the new leader reconciled"
    );
    ns.delete().await;
}
