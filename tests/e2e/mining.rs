//! Using a network (`spec.mining`, `Synced`, `Ready`): mining to
//! `initialBlocks` exactly once across a controller kill, `kubectl wait` on
//! Ready with the real kubectl, periodic mining at the interval, Synced
//! when a node is cut off and back, admission of the mining fields, a
//! user's Secret without a mining key, and the controller's API writes at
//! rest with and without an interval (benchmark lines, `MINING ...`).
//!
//! Lane-aware like the rest: on the kubelet lane the controller is the
//! in-cluster one (a "kill" deletes the leader pod) and the nodes run the
//! node test image (regtest-node, which has `setnetworkactive`). The
//! leader-failover scenario is in `ops.rs` (it starts two processes).

use std::time::{Duration, Instant};

use bitcoin_controller::api::{
    BitcoinNetwork, BitcoinNetworkSpec, BitcoinNetworkStatus, MiningSpec,
};
use bitcoin_controller::controller::mining::{address_of_key, MINING_KEY};
use bitcoin_controller::controller::resources::secret_value;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube_client::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube_client::{Api, Client};
use serde_json::{json, Value};

use crate::harness::*;
use crate::options::admit;

fn say(what: &str, value: impl std::fmt::Display) {
    println!("MINING {what}: {value}");
}

/// Creates a network of `nodes` nodes with `mining` (and the lane's image).
pub async fn create_mining_network(
    client: &Client,
    ns: &str,
    name: &str,
    nodes: i32,
    mining: MiningSpec,
) -> BitcoinNetwork {
    let spec = BitcoinNetworkSpec {
        nodes,
        mining: Some(mining),
        ..Default::default()
    };
    create_network_with(client, ns, name, spec).await
}

pub fn condition_status(s: &BitcoinNetworkStatus, type_: &str) -> Option<(String, String)> {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

pub fn has_condition(
    type_: &'static str,
    status: &'static str,
) -> impl Fn(&BitcoinNetworkStatus) -> bool {
    move |s| condition_status(s, type_).is_some_and(|(st, _)| st == status)
}

/// `kubectl wait --for=condition=Ready bitcoinnetwork/NAME`, the real
/// binary; how long it took and what it printed.
fn kubectl_wait_ready(ns: &str, name: &str, timeout: &str) -> (Duration, String) {
    let started = Instant::now();
    let (ok, out, err) = kubectl(&[
        "wait",
        "-n",
        ns,
        "--for=condition=Ready",
        &format!("bitcoinnetwork/{name}"),
        &format!("--timeout={timeout}"),
    ]);
    assert!(ok, "kubectl wait failed: {out}{err}");
    (started.elapsed(), out)
}

/// Heights of the nodes at `ips`, by RPC.
async fn heights(nodes: &Nodes, ips: &[String]) -> Vec<u64> {
    let mut out = Vec::new();
    for ip in ips {
        let count = nodes.call(ip, "getblockcount", vec![]).await.unwrap();
        out.push(count.as_u64().unwrap());
    }
    out
}

/// `initialBlocks: 101` on 3 nodes: `kubectl wait` returns once every node
/// is at 101 with the same tip, the blocks pay the address of the generated
/// key (which stays out of status and Events), and a controller killed and
/// started again mines nothing more. Prints the time from create to `kubectl
/// wait` returning (the benchmark line of issue 12).
#[tokio::test]
async fn initial_blocks_then_kubectl_wait_and_nothing_more_after_a_kill() {
    let admin = admin_client().await;
    let controller = ControllerProcess::start("mining-initial", &[]);
    let ns = TestNamespace::create(&admin, "e2e-mining").await;
    let created = Instant::now();
    create_mining_network(
        &admin,
        &ns.name,
        "net",
        3,
        MiningSpec {
            initial_blocks: Some(101),
            ..Default::default()
        },
    )
    .await;
    let (_, out) = kubectl_wait_ready(&ns.name, "net", "120s");
    let took = created.elapsed();
    say(
        "3 nodes, initialBlocks 101: create -> kubectl wait returned (s)",
        format!("{:.2}", took.as_secs_f64()),
    );
    assert_eq!(
        out.trim(),
        "bitcoinnetwork.bitcoincontroller.christianb93.github.com/net condition met"
    );

    let api: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);
    let status = api.get("net").await.unwrap().status.unwrap();
    assert_eq!(status.height, Some(101), "{status:?}");
    assert_eq!(condition_status(&status, "Synced").unwrap().0, "True");
    let ips = ips(&status);
    let nodes = Nodes::for_network(&admin, &ns.name, "net").await;
    assert_eq!(heights(&nodes, &ips).await, vec![101, 101, 101]);
    let tip = nodes
        .call(&ips[0], "getbestblockhash", vec![])
        .await
        .unwrap();
    assert_eq!(status.best_block_hash.as_deref(), tip.as_str());
    for node in &status.nodes {
        assert_eq!(node.blocks, Some(101));
        assert_eq!(node.best_block_hash.as_deref(), tip.as_str());
    }

    // The address is the generated key's; the key is nowhere else.
    let secret: Secret = Api::namespaced(admin.clone(), &ns.name)
        .get("net")
        .await
        .unwrap();
    let key = secret_value(&secret, MINING_KEY).expect("BC_MINING_KEY in the generated Secret");
    let mining = status.mining.clone().expect("status.mining");
    assert_eq!(mining.address, address_of_key(key).unwrap());
    assert!(mining.address.starts_with("bcrt1q"), "{}", mining.address);
    assert_eq!(mining.blocks_mined, 101);
    assert!(mining.last_block_time.is_some());
    let status_json = serde_json::to_string(&status).unwrap();
    assert!(
        !status_json.contains(key),
        "the mining key is in the status"
    );
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns.name);
    let events = events.list(&ListParams::default()).await.unwrap();
    for e in &events.items {
        assert!(
            !e.message.as_deref().unwrap_or_default().contains(key),
            "the mining key is in an Event"
        );
    }
    assert!(
        !controller.log_text().contains(key),
        "the mining key is in the log"
    );
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("BlocksMined")),
        "a BlocksMined Event"
    );

    // A new controller (a crash and restart, or a new leader) finds the
    // height reached and mines nothing. A spec change that changes nothing
    // (the default mining node, named) makes sure it reconciles.
    controller.kill();
    let _controller = ControllerProcess::start("mining-initial-again", &[]);
    let touched = api
        .patch(
            "net",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mining": {"node": 0}}})),
        )
        .await
        .unwrap();
    let generation = touched.metadata.generation;
    wait_for_status(
        &admin,
        &ns.name,
        "net",
        "the new controller's status",
        |s| s.observed_generation == generation,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(heights(&nodes, &ips).await, vec![101, 101, 101]);
    let status = api.get("net").await.unwrap().status.unwrap();
    assert_eq!(status.height, Some(101));
    assert_eq!(condition_status(&status, "Ready").unwrap().0, "True");
    ns.delete().await;
}

/// `initialBlocks` is a height, not a count, across controller kills. A
/// controller killed while it mines 1500 initial blocks (three
/// generatetoaddress calls of 500) leaves a height the next one tops up to
/// exactly 1500. regtest-node mines 500 blocks in well under a second, so
/// that kill usually comes after the last call; the height it left is
/// printed, not asserted. The mid-way state is then made for certain: with
/// the controller down, `initialBlocks` goes to 2700, so the next
/// controller starts at 1500 of 2700 (a chain another controller mined
/// part of) and must mine exactly the 1200 missing, in three calls.
#[tokio::test]
async fn initial_blocks_are_a_height_across_controller_kills() {
    let admin = admin_client().await;
    let controller = ControllerProcess::start("mining-midway", &[]);
    let ns = TestNamespace::create(&admin, "e2e-mining-kill").await;
    create_mining_network(
        &admin,
        &ns.name,
        "net",
        2,
        MiningSpec {
            initial_blocks: Some(1500),
            ..Default::default()
        },
    )
    .await;
    let (status, _) = wait_for_status(&admin, &ns.name, "net", "2 ready nodes", all_ready(2)).await;
    let ips = ips(&status);
    let nodes = Nodes::for_network(&admin, &ns.name, "net").await;
    let (first, _) = wait_for("mining to start", CONVERGE, || async {
        match heights(&nodes, &ips[..1]).await[0] {
            0 => Err("height 0".to_owned()),
            h => Ok(h),
        }
    })
    .await;
    controller.kill();
    // The call in flight when the controller died still completes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left = heights(&nodes, &ips[..1]).await[0];
    say("height first seen while mining 1500", first);
    say("height the killed controller left", left);
    assert!(
        left <= 1500 && left % 500 == 0,
        "height {left} after the kill"
    );
    let controller = ControllerProcess::start("mining-midway-again", &[]);
    ready_at(
        &admin,
        &ns.name,
        &nodes,
        &ips,
        1500,
        "restart after the kill",
    )
    .await;

    // Mid-way for certain: 1500 of 2700 when the next controller starts.
    controller.kill();
    patch_spec(
        &admin,
        &ns.name,
        "net",
        json!({"mining": {"initialBlocks": 2700}}),
    )
    .await;
    let _controller = ControllerProcess::start("mining-midway-third", &[]);
    ready_at(
        &admin,
        &ns.name,
        &nodes,
        &ips,
        2700,
        "start at 1500 of 2700",
    )
    .await;
    ns.delete().await;
}

/// Waits until network `net` is Ready at `height`, says how long that took,
/// and checks that 3 s later every node in `ips` is still at exactly that
/// height (nothing mined twice).
async fn ready_at(
    client: &Client,
    ns: &str,
    nodes: &Nodes,
    ips: &[String],
    height: u64,
    what: &str,
) {
    let (_, took) = wait_for_status(client, ns, "net", &format!("Ready at {height}"), |s| {
        s.height == Some(height as i64) && has_condition("Ready", "True")(s)
    })
    .await;
    say(
        &format!("{what} -> Ready at {height} (s)"),
        format!("{:.2}", took.as_secs_f64()),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(heights(nodes, ips).await, vec![height; ips.len()]);
}

/// Block times (header `time`) of the chain at `ip` as heights appear,
/// polled every 200 ms for `window`: (height, time) pairs, and heights that
/// arrived two or more at once (a burst: a duplicate).
pub async fn watch_blocks(
    nodes: &Nodes,
    ip: &str,
    window: Duration,
) -> (Vec<(u64, u64)>, Vec<u64>) {
    let started = Instant::now();
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut bursts = Vec::new();
    while started.elapsed() < window {
        if let Ok(info) = nodes.call(ip, "getblockchaininfo", vec![]).await {
            let height = info["blocks"].as_u64().unwrap();
            let time = info["time"].as_u64().unwrap();
            match seen.last() {
                Some(&(h, _)) if h == height => {}
                Some(&(h, _)) if height > h + 1 => {
                    bursts.push(height);
                    seen.push((height, time));
                }
                _ => seen.push((height, time)),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (seen, bursts)
}

/// Scrapes the API server's `apiserver_request_total` and sums the write
/// verbs (POST, PUT, PATCH, DELETE) per `resource[/subresource]`.
pub async fn api_writes(client: &Client) -> std::collections::BTreeMap<String, f64> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client
        .request_text(request)
        .await
        .expect("apiserver /metrics");
    let mut writes = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        if !matches!(label("verb").as_str(), "POST" | "PUT" | "PATCH" | "DELETE") {
            continue;
        }
        let mut resource = label("resource");
        let sub = label("subresource");
        if !sub.is_empty() {
            resource = format!("{resource}/{sub}");
        }
        *writes.entry(resource).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    writes
}

/// Writes only the controller makes in this cluster (kube-controller-manager
/// writes statefulsets/status, podsim pods/status; Events are shared, so
/// the controller's own are counted from the namespace).
const CONTROLLER_WRITES: [&str; 4] = [
    "bitcoinnetworks/status",
    "statefulsets",
    "services",
    "secrets",
];

fn delta(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> (f64, String) {
    let mut total = 0.0;
    let mut parts = Vec::new();
    for r in CONTROLLER_WRITES {
        let d = after.get(r).copied().unwrap_or(0.0) - before.get(r).copied().unwrap_or(0.0);
        total += d;
        parts.push(format!("{r} {d}"));
    }
    (total, parts.join(", "))
}

/// Events the controller wrote about networks in `ns` (each Event's count:
/// a repeat is a write too).
async fn controller_event_writes(client: &Client, ns: &str) -> i32 {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.reporting_component.as_deref() == Some("bitcoin-controller"))
        .map(|e| e.count.unwrap_or(1))
        .sum()
}

/// The paths (`status.nodes[1].connectedPeers`) at which `new` differs
/// from `old`; lists of the same length are compared item by item.
fn changed_paths(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
            for k in keys {
                let (a, b) = (
                    o.get(k).unwrap_or(&Value::Null),
                    n.get(k).unwrap_or(&Value::Null),
                );
                changed_paths(&format!("{path}.{k}"), a, b, out);
            }
        }
        (Value::Array(o), Value::Array(n)) if o.len() == n.len() => {
            for (i, (a, b)) in o.iter().zip(n).enumerate() {
                changed_paths(&format!("{path}[{i}]"), a, b, out);
            }
        }
        (a, b) if a != b => out.push(path.to_owned()),
        _ => {}
    }
}

/// Every write to the stored network `name` for `window` (a watch from
/// its current resourceVersion, so no write is missed), each as the
/// status paths it changed (empty: a change outside status). Only this
/// network's writes count, whatever else the cluster is doing (earlier
/// tests' namespaces may still be going away).
async fn writes_to(api: &Api<BitcoinNetwork>, name: &str, window: Duration) -> Vec<Vec<String>> {
    let net = api.get(name).await.expect("get the network");
    let mut rv = net.metadata.resource_version.clone().unwrap();
    let mut last = serde_json::to_value(&net.status).unwrap();
    let mut writes = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    // A watch may last at most 290 s: watch again from the last version.
    while tokio::time::Instant::now() < deadline {
        let left = deadline - tokio::time::Instant::now();
        let params = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(left.as_secs().clamp(1, 290) as u32);
        let mut events = api
            .watch(&params, &rv)
            .await
            .expect("watch the network")
            .boxed();
        let _ = tokio::time::timeout(left, async {
            while let Some(event) = events.try_next().await.expect("watch the network") {
                match event {
                    WatchEvent::Modified(n) => {
                        let now = serde_json::to_value(&n.status).unwrap();
                        let mut paths = Vec::new();
                        changed_paths("status", &last, &now, &mut paths);
                        writes.push(paths);
                        last = now;
                        rv = n.metadata.resource_version.unwrap();
                    }
                    WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                    other => panic!("unexpected watch event on network {name}: {other:?}"),
                }
            }
        })
        .await;
    }
    writes
}

/// How long the windows at rest last: `BC_MINING_REST_SECS` (the issue's
/// benchmark is 300 s; CI uses the default).
fn rest_window() -> Duration {
    Duration::from_secs(
        std::env::var("BC_MINING_REST_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(45),
    )
}

/// Periodic mining: blocks come at the interval (block times at least the
/// interval minus a second apart, never two at once, at most the interval
/// plus one resync); without an interval nothing writes to the network at
/// rest, and the controller posts no Event. Prints the writes of both
/// windows: to the network (with the status paths of any write that did
/// not come with a new block) and cluster-wide.
#[tokio::test]
async fn interval_mining_and_writes_at_rest() {
    let admin = admin_client().await;
    let _controller = ControllerProcess::start("mining-interval", &[]);
    let ns = TestNamespace::create(&admin, "e2e-mining-rest").await;
    let window = rest_window();

    // Without interval: nothing at rest.
    create_mining_network(
        &admin,
        &ns.name,
        "still",
        3,
        MiningSpec {
            initial_blocks: Some(101),
            ..Default::default()
        },
    )
    .await;
    kubectl_wait_ready(&ns.name, "still", "120s");
    // Let the last Events and the mesh settle before counting.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let api: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);
    let events_before = controller_event_writes(&admin, &ns.name).await;
    let before = api_writes(&admin).await;
    let still_writes = writes_to(&api, "still", window).await;
    let after = api_writes(&admin).await;
    let events_after = controller_event_writes(&admin, &ns.name).await;
    let (writes, rows) = delta(&before, &after);
    say(
        &format!(
            "API writes in {} s at rest, 3 nodes, no interval (cluster-wide)",
            window.as_secs()
        ),
        format!("{writes} ({rows}; Events {})", events_after - events_before),
    );
    say("writes to the network at rest", still_writes.len());
    assert!(
        still_writes.is_empty(),
        "writes to network still at rest, as the status paths each changed: {still_writes:?}"
    );
    assert_eq!(events_after, events_before, "Events at rest");

    // With an interval of 5 s.
    let interval = 5;
    create_mining_network(
        &admin,
        &ns.name,
        "ticking",
        3,
        MiningSpec {
            initial_blocks: Some(101),
            interval: Some(format!("{interval}s")),
            ..Default::default()
        },
    )
    .await;
    kubectl_wait_ready(&ns.name, "ticking", "120s");
    let status = api.get("ticking").await.unwrap().status.unwrap();
    let ips = ips(&status);
    let nodes = Nodes::for_network(&admin, &ns.name, "ticking").await;
    let before = api_writes(&admin).await;
    let events_before = controller_event_writes(&admin, &ns.name).await;
    let ((blocks, bursts), ticking_writes) = tokio::join!(
        watch_blocks(&nodes, &ips[0], window),
        writes_to(&api, "ticking", window)
    );
    let after = api_writes(&admin).await;
    let events_after = controller_event_writes(&admin, &ns.name).await;
    let (writes, rows) = delta(&before, &after);
    let mined = blocks.last().unwrap().0 - blocks[0].0;
    say(
        &format!(
            "API writes in {} s, 3 nodes, interval {interval}s (cluster-wide)",
            window.as_secs()
        ),
        format!(
            "{writes} ({rows}; Events {}) for {mined} blocks",
            events_after - events_before
        ),
    );
    let without_block: Vec<&Vec<String>> = ticking_writes
        .iter()
        .filter(|paths| !paths.iter().any(|p| p == "status.height"))
        .collect();
    say(
        "writes to the network with an interval",
        format!(
            "{} for {mined} blocks; without a new height: {without_block:?}",
            ticking_writes.len()
        ),
    );
    let gaps: Vec<u64> = blocks.windows(2).map(|w| w[1].1 - w[0].1).collect();
    say("block time gaps (s)", format!("{gaps:?}"));
    assert!(
        bursts.is_empty(),
        "blocks arrived together at heights {bursts:?}"
    );
    assert!(mined >= 2, "blocks mined in {window:?}: {blocks:?}");
    // The first gap may start at a tip ahead of the clock (blocks mined in
    // one burst get increasing times); the others follow the interval.
    for gap in &gaps[1..] {
        assert!(
            (interval - 1..=interval + 30).contains(gap),
            "gap {gap}s with interval {interval}s: {gaps:?}"
        );
    }
    say(
        "status writes per mined block",
        format!("{:.2}", ticking_writes.len() as f64 / mined as f64),
    );
    ns.delete().await;
}

/// Synced turns False when a node is cut off (`setnetworkactive false`,
/// RPC still up, so its pod stays Ready) and a block is mined elsewhere,
/// and True again once it is back; Ready follows.
#[tokio::test]
async fn synced_flips_when_a_node_is_cut_off_and_back() {
    let admin = admin_client().await;
    let _controller = ControllerProcess::start("mining-synced", &[]);
    let ns = TestNamespace::create(&admin, "e2e-synced").await;
    create_mining_network(
        &admin,
        &ns.name,
        "net",
        3,
        MiningSpec {
            initial_blocks: Some(5),
            ..Default::default()
        },
    )
    .await;
    kubectl_wait_ready(&ns.name, "net", "120s");
    let api: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);
    let status = api.get("net").await.unwrap().status.unwrap();
    let ips = ips(&status);
    let nodes = Nodes::for_network(&admin, &ns.name, "net").await;

    assert_eq!(
        nodes
            .call(&ips[2], "setnetworkactive", vec![false.into()])
            .await
            .unwrap(),
        Value::Bool(false)
    );
    nodes.mine(&ips[0], 1).await;
    let (status, took) = wait_for_status(
        &admin,
        &ns.name,
        "net",
        "Synced False",
        has_condition("Synced", "False"),
    )
    .await;
    say(
        "node cut off, block mined -> Synced False (s)",
        format!("{:.2}", took.as_secs_f64()),
    );
    let synced = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Synced")
        .unwrap();
    assert_eq!(synced.reason, "TipsDiffer");
    assert!(
        synced.message.contains("net-sts-2 at 5"),
        "{}",
        synced.message
    );
    assert_eq!(condition_status(&status, "Ready").unwrap().0, "False");
    assert_eq!(status.nodes[2].blocks, Some(5));
    assert!(status.nodes[2].ready, "the cut-off node's pod stays Ready");

    nodes
        .call(&ips[2], "setnetworkactive", vec![true.into()])
        .await
        .unwrap();
    let (status, took) = wait_for_status(&admin, &ns.name, "net", "Synced and Ready again", |s| {
        has_condition("Synced", "True")(s) && has_condition("Ready", "True")(s)
    })
    .await;
    say(
        "node back -> Synced and Ready (s)",
        format!("{:.2}", took.as_secs_f64()),
    );
    assert_eq!(status.height, Some(6));
    assert!(status.nodes.iter().all(|n| n.blocks == Some(6)));
    ns.delete().await;
}

/// The API server refuses mining fields that cannot work, with a message
/// naming the field; a network with a user's Secret that has no mining key
/// and no address is Degraded (MiningKeyMissing, one Warning Event) until
/// an address is set; a generated Secret without a mining key (from before
/// mining) gets one when mining is turned on.
#[tokio::test]
async fn mining_fields_are_checked() {
    let admin = admin_client().await;
    let _controller = ControllerProcess::start("mining-admission", &[]);
    let ns = TestNamespace::create(&admin, "e2e-mining-bad").await;
    let address_message = "spec.mining.address must be a regtest address";
    let interval_message = "spec.mining.interval must be a duration of at least 1s";
    let cases = [
        (
            json!({"address": "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"}),
            address_message,
        ),
        (
            json!({"address": "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"}),
            address_message,
        ),
        (
            json!({"address": "BCRT1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KYGT080"}),
            address_message,
        ),
        (json!({"address": "bcrt1qbad address"}), address_message),
        (json!({"address": "x"}), address_message),
        (json!({"interval": "0s"}), interval_message),
        (json!({"interval": "30"}), interval_message),
        (json!({"interval": "1.5h"}), interval_message),
        (json!({"interval": "500ms"}), interval_message),
        (json!({"interval": "soon"}), interval_message),
        (json!({"initialBlocks": -1}), "spec.mining.initialBlocks"),
        (
            json!({"initialBlocks": 100001}),
            "spec.mining.initialBlocks",
        ),
        (json!({"node": 100}), "spec.mining.node"),
        (json!({"node": -1}), "spec.mining.node"),
    ];
    for (mining, expected) in cases {
        let spec = json!({"nodes": 1, "mining": mining});
        match admit(&admin, &ns.name, spec).await {
            Err((_, message)) => {
                println!("{mining}: refused: {message}");
                assert!(
                    message.contains(expected),
                    "{mining}: {message:?} lacks {expected:?}"
                );
            }
            Ok(()) => panic!("{mining}: admitted"),
        }
    }
    for mining in [
        json!({}),
        json!({"initialBlocks": 101, "interval": "30s", "node": 2}),
        json!({"interval": "1h30m", "address": "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"}),
        json!({"address": "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn"}),
        json!({"address": "2MzQwSSnBHWHqSAqtTVQ6v47XtaisrJa1Vc"}),
    ] {
        admit(
            &admin,
            &ns.name,
            json!({"nodes": 1, "mining": mining.clone()}),
        )
        .await
        .unwrap_or_else(|(_, m)| panic!("{mining}: refused: {m}"));
    }

    // A user's Secret without BC_MINING_KEY, and no address.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "mine"},
        "stringData": {"BC_RPC_USER": "alice", "BC_RPC_PASSWORD": "wonderland-1"},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let api: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);
    let net = BitcoinNetwork::new(
        "keyless",
        BitcoinNetworkSpec {
            nodes: 1,
            secret: Some("mine".into()),
            image: lane_image(),
            mining: Some(MiningSpec {
                initial_blocks: Some(3),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    api.create(&PostParams::default(), &net).await.unwrap();
    let (status, _) = wait_for_status(
        &admin,
        &ns.name,
        "keyless",
        "Degraded MiningKeyMissing",
        |s| condition_status(s, "Degraded") == Some(("True".into(), "MiningKeyMissing".into())),
    )
    .await;
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert!(
        degraded.message.contains("spec.mining.address"),
        "{}",
        degraded.message
    );
    assert!(
        degraded.message.contains("BC_MINING_KEY"),
        "{}",
        degraded.message
    );
    wait_for_event(&admin, &ns.name, "keyless", "Warning", "MiningKeyMissing").await;
    let secret = secrets.get("mine").await.unwrap();
    assert_eq!(
        secret_value(&secret, MINING_KEY),
        None,
        "the user's Secret is not written"
    );

    api.patch(
        "keyless",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"mining": {"address": MINING_ADDRESS}}})),
    )
    .await
    .unwrap();
    kubectl_wait_ready(&ns.name, "keyless", "120s");
    let status = api.get("keyless").await.unwrap().status.unwrap();
    assert_eq!(status.height, Some(3));
    assert_eq!(status.mining.unwrap().address, MINING_ADDRESS);
    let warnings = Api::<Event>::namespaced(admin.clone(), &ns.name)
        .list(&ListParams::default().fields("involvedObject.name=keyless,type=Warning"))
        .await
        .unwrap();
    let counts: Vec<i32> = warnings
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("MiningKeyMissing"))
        .map(|e| e.count.unwrap_or(1))
        .collect();
    assert_eq!(counts, vec![1], "one Warning Event for the missing key");

    // A generated Secret from before mining existed (no BC_MINING_KEY):
    // turning mining on gives it a key, whose address the blocks pay.
    create_network(&admin, &ns.name, "older", 1).await;
    wait_for_status(
        &admin,
        &ns.name,
        "older",
        "Ready",
        has_condition("Ready", "True"),
    )
    .await;
    secrets
        .patch(
            "older",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {MINING_KEY: null}})),
        )
        .await
        .unwrap();
    api.patch(
        "older",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"mining": {"initialBlocks": 2}}})),
    )
    .await
    .unwrap();
    kubectl_wait_ready(&ns.name, "older", "120s");
    let status = api.get("older").await.unwrap().status.unwrap();
    let secret = secrets.get("older").await.unwrap();
    let key = secret_value(&secret, MINING_KEY).expect("a mining key added to the older Secret");
    assert_eq!(status.mining.unwrap().address, address_of_key(key).unwrap());
    assert_eq!(status.height, Some(2));
    wait_for_event(&admin, &ns.name, "older", "Normal", "MiningKeyCreated").await;
    ns.delete().await;
}
