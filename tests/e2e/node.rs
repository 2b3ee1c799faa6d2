//! End-to-end tests that need a real node: the kubelet lane of
//! `scripts/local-cluster.sh` (`BC_NODE=kubelet`: containerd, kubelet,
//! kube-scheduler, kube-proxy, the CNI bridge, CoreDNS), with the controller
//! running in-cluster from `manifests/controller.yaml` and the networks on
//! the node test image (`scripts/image.sh`: regtest-node behind `bitcoind`
//! and `bitcoin-cli`), so the pods' real command, mounts and exec readiness
//! probe run.
//!
//! On the podsim lane these tests return at once (they say so); scripts/test.sh
//! runs them on the kubelet lane.

use std::process::Command;
use std::time::{Duration, Instant};

use bitcoin_controller::api::{BitcoinNetwork, BitcoinNetworkSpec};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube_client::api::{DeleteParams, ListParams, PostParams};
use kube_client::{Api, Client};
use serde_json::{json, Value};

use crate::harness::*;

const CONF: &str = "-conf=/etc/bitcoin/bitcoin.conf";
const DATADIR: &str = "-datadir=/data";

/// True on the kubelet lane; otherwise prints why the test does nothing.
pub(crate) fn real_node(test: &str) -> bool {
    let lane = std::env::var("BC_NODE").unwrap_or_default();
    if lane == "kubelet" {
        true
    } else {
        println!(
            "{test}: needs the real-node lane (BC_NODE=kubelet), this is '{lane}': nothing to do"
        );
        false
    }
}

async fn create_node_network(client: &Client, ns: &str, name: &str, nodes: i32) -> BitcoinNetwork {
    let api: Api<BitcoinNetwork> = Api::namespaced(client.clone(), ns);
    let net = BitcoinNetwork::new(
        name,
        BitcoinNetworkSpec {
            nodes,
            image: Some(NODE_IMAGE.to_owned()),
            ..Default::default()
        },
    );
    api.create(&PostParams::default(), &net)
        .await
        .expect("create network")
}

async fn set_nodes(client: &Client, ns: &str, name: &str, nodes: i32) {
    patch_spec(client, ns, name, json!({ "nodes": nodes })).await;
}

fn container_id(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.clone())
        .unwrap_or_default()
}

fn restart_count(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

/// The host pid of a container's init process, from containerd.
fn container_pid(id: &str) -> u32 {
    let address = std::env::var("BC_CONTAINERD_ADDRESS").expect("BC_CONTAINERD_ADDRESS");
    let out = Command::new("ctr")
        .args(["--address", &address, "-n", "k8s.io", "task", "ls"])
        .output()
        .expect("ctr task ls");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id)).then(|| f.next().and_then(|p| p.parse().ok()))?
        })
        .unwrap_or_else(|| panic!("no task {id} in:\n{text}"))
}

/// The guard rule's drop counter for pod traffic leaving the bridge.
fn guard_drops() -> u64 {
    let out = Command::new("nft")
        .args(["-a", "list", "ruleset"])
        .output()
        .expect("nft list ruleset");
    assert!(
        out.status.success(),
        "nft list ruleset: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let counters: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("pod traffic leaving the pod bridge"))
        .filter_map(|l| {
            let rest = l.split("packets ").nth(1)?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .collect();
    assert!(
        !counters.is_empty(),
        "no guard rule with a counter in:\n{text}"
    );
    counters.iter().sum()
}

/// What decides whether the host forwards a pod's packet at all: the
/// forwarding switch, and the kernel's count of packets it dropped for a
/// destination it would not forward to (`Ip: InAddrErrors`).
fn forwarding_state() -> String {
    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip: "));
    let (names, values) = (ip.next().unwrap_or(""), ip.next().unwrap_or(""));
    let addr_errors = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InAddrErrors")
        .map_or("?", |(_, v)| v);
    format!("ip_forward={}, InAddrErrors={addr_errors}", forward.trim())
}

/// The host's link to a pod address: the pod bridge.
fn pod_bridge(pod_ip: &str) -> String {
    let route = host_route(pod_ip);
    let dev = route.split_whitespace().skip_while(|w| *w != "dev").nth(1);
    dev.unwrap_or_else(|| panic!("no dev in {route:?}"))
        .to_owned()
}

/// A link's MAC address.
fn bridge_address(link: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{link}/address"))
        .expect("the link's address")
        .trim()
        .to_owned()
}

/// The host's route to an address (`ip route get`), for a failure message.
fn host_route(to: &str) -> String {
    Command::new("ip")
        .args(["route", "get", to])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("ip route get: {e}"))
}

/// Create a 3-node network on the real node: Ready and meshed, blocks
/// propagate; the containers are containerd's; pod DNS names resolve
/// through CoreDNS to the status IPs; `kubectl logs` and `kubectl exec
/// bitcoin-cli` work; a pod's traffic to an outside address is dropped;
/// scale up and down; cascade delete.
#[tokio::test]
async fn real_node_network_lifecycle() {
    if !real_node("real_node_network_lifecycle") {
        return;
    }
    let admin = admin_client().await;
    let ns = TestNamespace::create(&admin, "node-life").await;
    let created = Instant::now();
    create_node_network(&admin, &ns.name, "net", 3).await;
    let (status, _) = wait_for_status(&admin, &ns.name, "net", "3 ready nodes", all_ready(3)).await;
    report(
        "node-create",
        "3 real pods ready in status",
        created.elapsed(),
    );
    let nodes = Nodes::for_network(&admin, &ns.name, "net").await;
    let ips = ips(&status);
    nodes.wait_for_mesh(&ips).await;
    report("node-create", "full mesh", created.elapsed());
    let tip = nodes.mine(&ips[0], 101).await;
    let took = nodes.wait_for_tip(&ips, &tip).await;
    report("node-create", "101 blocks on every node", took);

    // Real containers, on the real node.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let node_name = std::env::var("BC_NODE_NAME").unwrap_or_else(|_| "bc-node".into());
    for i in 0..3 {
        let pod = pods.get(&format!("net-sts-{i}")).await.expect("pod");
        let id = container_id(&pod);
        println!("net-sts-{i}: {id}");
        assert!(id.starts_with("containerd://"), "{id}");
        assert_eq!(
            pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some(node_name.as_str())
        );
    }

    // DNS: every node's name resolves, from inside a pod, to its status IP.
    let start = Instant::now();
    for node in &status.nodes {
        assert_eq!(
            node.dns_name,
            format!(
                "net-sts-{}.net-svc.{}.svc.cluster.local",
                node.ordinal, ns.name
            )
        );
        let (resolved, took) = wait_for(&format!("{} in DNS", node.dns_name), CONVERGE, || async {
            let (ok, out, err) = kubectl(&[
                "exec",
                "-n",
                &ns.name,
                "net-sts-0",
                "--",
                "getent",
                "hosts",
                &node.dns_name,
            ]);
            let ip = out.split_whitespace().next().unwrap_or_default().to_owned();
            if ok && ip == node.ip {
                Ok(out)
            } else {
                Err(format!("{out} {err}"))
            }
        })
        .await;
        print!(
            "getent hosts (in net-sts-0, {:.2}s): {resolved}",
            took.as_secs_f64()
        );
    }
    report(
        "node-dns",
        "3 pod DNS names resolve to the status IPs",
        start.elapsed(),
    );

    // kubectl logs and exec (apiserver -> kubelet -> containerd).
    let (ok, logs, err) = kubectl(&["logs", "-n", &ns.name, "net-sts-0"]);
    assert!(ok, "{err}");
    assert!(logs.contains("regtest node: RPC on"), "{logs}");
    println!(
        "kubectl logs net-sts-0 (first line): {}",
        logs.lines().next().unwrap_or("")
    );
    let (ok, info, err) = kubectl(&[
        "exec",
        "-n",
        &ns.name,
        "net-sts-0",
        "--",
        "bitcoin-cli",
        CONF,
        DATADIR,
        "getblockchaininfo",
    ]);
    assert!(ok, "{err}");
    let info: Value = serde_json::from_str(&info).expect("getblockchaininfo JSON");
    assert_eq!(info["chain"], "regtest");
    assert_eq!(info["blocks"], 101);
    println!(
        "kubectl exec net-sts-0 -- bitcoin-cli getblockchaininfo: chain {} blocks {} bestblockhash {}",
        info["chain"], info["blocks"], info["bestblockhash"]
    );

    // Egress: a pod's connection to an address outside the machine is
    // dropped by the guard rule before it leaves (192.0.2.1, TEST-NET-1).
    let before = guard_drops();
    let state_before = forwarding_state();
    let (ok, _, err) = kubectl(&[
        "exec",
        "-n",
        &ns.name,
        "net-sts-0",
        "--",
        "bitcoin-cli",
        "-rpcconnect=192.0.2.1",
        "-rpcclienttimeout=3",
        CONF,
        DATADIR,
        "getnetworkinfo",
    ]);
    let after = guard_drops();
    let state_after = forwarding_state();
    let route = host_route("192.0.2.1");
    println!(
        "egress to 192.0.2.1 from net-sts-0: ok={ok}, guard drop counter {before} -> {after}; {}",
        err.lines().next().unwrap_or("")
    );
    assert!(!ok, "a pod reached 192.0.2.1");
    assert!(
        after > before,
        "the guard rule did not drop the packets: before {state_before}, after {state_after}; host route: {route}"
    );

    // Scale up to 4, then down to 2. The pods' gateway, the bridge, keeps
    // its own address meanwhile: one that followed its ports would change
    // when the pod whose port gave it goes, and the other pods would lose
    // their way off the subnet until they asked again.
    let bridge = pod_bridge(&ips_of(&status)[0]);
    let bridge_mac = bridge_address(&bridge);
    let start = Instant::now();
    set_nodes(&admin, &ns.name, "net", 4).await;
    let (status, _) = wait_for_status(&admin, &ns.name, "net", "4 ready nodes", all_ready(4)).await;
    nodes.wait_for_mesh(&ips_of(&status)).await;
    report("node-scale", "3 -> 4 ready and meshed", start.elapsed());
    let start = Instant::now();
    set_nodes(&admin, &ns.name, "net", 2).await;
    let (status, _) = wait_for_status(&admin, &ns.name, "net", "2 ready nodes", all_ready(2)).await;
    nodes.wait_for_mesh(&ips_of(&status)).await;
    report("node-scale", "4 -> 2 ready and meshed", start.elapsed());
    println!(
        "pod bridge {bridge}: address {bridge_mac} before and {} after the scaling",
        bridge_address(&bridge)
    );
    assert_eq!(
        bridge_address(&bridge),
        bridge_mac,
        "the bridge changed its address"
    );
    let assigned = std::fs::read_to_string(format!("/sys/class/net/{bridge}/addr_assign_type"))
        .expect("addr_assign_type");
    // 3: NET_ADDR_SET, an address the kernel does not replace.
    assert_eq!(assigned.trim(), "3", "the bridge's address is its own");

    // Cascade delete: the garbage collector removes what the network owns,
    // the kubelet stops the containers.
    let start = Instant::now();
    Api::<BitcoinNetwork>::namespaced(admin.clone(), &ns.name)
        .delete("net", &DeleteParams::default())
        .await
        .expect("delete network");
    let sts: Api<StatefulSet> = Api::namespaced(admin.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    wait_for("owned objects and pods gone", CONVERGE, || async {
        let left_sts = sts.get_opt("net-sts").await.map_err(|e| e.to_string())?;
        let left_pods = pods
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        let left_secret = secrets
            .get_opt("net-config")
            .await
            .map_err(|e| e.to_string())?;
        if left_sts.is_none() && left_pods == 0 && left_secret.is_none() {
            Ok(())
        } else {
            Err(format!(
                "sts {:?}, {left_pods} pods, config secret {}",
                left_sts.map(|s| s.metadata.name),
                left_secret.is_some()
            ))
        }
    })
    .await;
    report(
        "node-delete",
        "StatefulSet, Secrets and pods gone",
        start.elapsed(),
    );
    ns.delete().await;
}

fn ips_of(status: &bitcoin_controller::api::BitcoinNetworkStatus) -> Vec<String> {
    ips(status)
}

/// Kill bitcoind in a container (SIGKILL from the host, as an OOM kill
/// would): the kubelet restarts the container, the pod turns Ready again and
/// the controller re-meshes the node (Core forgets RPC-added nodes on
/// restart).
#[tokio::test]
async fn real_node_container_restart() {
    if !real_node("real_node_container_restart") {
        return;
    }
    let admin = admin_client().await;
    let ns = TestNamespace::create(&admin, "node-restart").await;
    create_node_network(&admin, &ns.name, "net", 3).await;
    let (status, _) = wait_for_status(&admin, &ns.name, "net", "3 ready nodes", all_ready(3)).await;
    let nodes = Nodes::for_network(&admin, &ns.name, "net").await;
    let ips = ips(&status);
    nodes.wait_for_mesh(&ips).await;

    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let pod = pods.get("net-sts-1").await.expect("pod");
    let id = container_id(&pod);
    let pid = container_pid(id.trim_start_matches("containerd://"));
    let restarts = restart_count(&pod);
    println!("killing bitcoind of net-sts-1 ({id}, host pid {pid}) with SIGKILL");
    let killed = Instant::now();
    let ok = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let (pod, _) = wait_for("net-sts-1 restarted", CONVERGE, || async {
        let pod = pods.get("net-sts-1").await.map_err(|e| e.to_string())?;
        if restart_count(&pod) > restarts && container_id(&pod) != id {
            Ok(pod)
        } else {
            Err(format!("restarts {}", restart_count(&pod)))
        }
    })
    .await;
    report(
        "node-restart",
        "kubelet restarted the container",
        killed.elapsed(),
    );
    println!(
        "net-sts-1 now {} (restartCount {})",
        container_id(&pod),
        restart_count(&pod)
    );
    let (status, _) = wait_for_status(&admin, &ns.name, "net", "3 ready nodes", all_ready(3)).await;
    report(
        "node-restart",
        "pod Ready again in status",
        killed.elapsed(),
    );
    nodes.wait_for_mesh(&ips_of(&status)).await;
    report("node-restart", "mesh back", killed.elapsed());
    // The restarted node syncs the chain from its peers again.
    let tip = nodes.mine(&ips[0], 3).await;
    nodes.wait_for_tip(&ips_of(&status), &tip).await;
    report(
        "node-restart",
        "blocks reach the restarted node",
        killed.elapsed(),
    );
    ns.delete().await;
}

async fn lease_holder(client: &Client) -> String {
    Api::<Lease>::namespaced(client.clone(), CONTROLLER_NS)
        .get_opt("bitcoin-controller")
        .await
        .expect("read the Lease")
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .unwrap_or_default()
}

async fn ready_controller_pods(client: &Client) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), CONTROLLER_NS)
        .list(&ListParams::default().labels("app.kubernetes.io/name=bitcoin-controller"))
        .await
        .expect("list controller pods")
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

/// The controller runs in-cluster from manifests/controller.yaml: two Ready
/// replicas from the locally built image; deleting the leader's pod moves
/// the Lease to the other replica (the deleted one releases it on SIGTERM),
/// and the Deployment is back to two Ready replicas; a network created after
/// the failover converges.
#[tokio::test]
async fn real_node_controller_in_cluster_failover() {
    if !real_node("real_node_controller_in_cluster_failover") {
        return;
    }
    let admin = admin_client().await;
    let (pods, _) = wait_for("2 Ready controller pods", CONVERGE, || async {
        let pods = ready_controller_pods(&admin).await;
        if pods.len() == 2 {
            Ok(pods)
        } else {
            Err(format!("{} ready", pods.len()))
        }
    })
    .await;
    for pod in &pods {
        let status = pod.status.as_ref().unwrap();
        let c = &status.container_statuses.as_ref().unwrap()[0];
        println!(
            "controller pod {}: image {} imageID {} {} on {}",
            pod.metadata.name.as_deref().unwrap_or(""),
            c.image,
            c.image_id,
            c.container_id.as_deref().unwrap_or(""),
            pod.spec
                .as_ref()
                .unwrap()
                .node_name
                .as_deref()
                .unwrap_or("")
        );
        assert_eq!(c.image, "docker.io/library/bitcoin-controller:latest");
        assert!(c
            .container_id
            .as_deref()
            .unwrap_or("")
            .starts_with("containerd://"));
    }
    let (holder, _) = wait_for("a Lease holder", CONVERGE, || async {
        let h = lease_holder(&admin).await;
        if h.is_empty() {
            Err("no holder".to_owned())
        } else {
            Ok(h)
        }
    })
    .await;
    let leader = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .find(|n| holder.starts_with(n.as_str()))
        .unwrap_or_else(|| panic!("holder {holder} is none of the pods"));
    println!("leader: pod {leader} (Lease holder {holder})");

    let start = Instant::now();
    Api::<Pod>::namespaced(admin.clone(), CONTROLLER_NS)
        .delete(&leader, &DeleteParams::default())
        .await
        .expect("delete the leader pod");
    let (new_holder, _) = wait_for("another Lease holder", CONVERGE, || async {
        let h = lease_holder(&admin).await;
        if !h.is_empty() && !h.starts_with(leader.as_str()) {
            Ok(h)
        } else {
            Err(format!("holder {h:?}"))
        }
    })
    .await;
    report(
        "node-failover",
        "Lease taken over after the leader pod was deleted",
        start.elapsed(),
    );
    println!("new leader: {new_holder}");
    wait_for("Deployment back to 2 Ready replicas", CONVERGE, || async {
        let d = Api::<Deployment>::namespaced(admin.clone(), CONTROLLER_NS)
            .get("bitcoin-controller")
            .await
            .map_err(|e| e.to_string())?;
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        if ready == 2 && ready_controller_pods(&admin).await.len() == 2 {
            Ok(())
        } else {
            Err(format!("{ready} ready"))
        }
    })
    .await;
    report("node-failover", "2 Ready replicas again", start.elapsed());

    // The new leader works.
    let ns = TestNamespace::create(&admin, "node-failover").await;
    let created = Instant::now();
    create_node_network(&admin, &ns.name, "net", 2).await;
    let (status, _) = wait_for_status(&admin, &ns.name, "net", "2 ready nodes", all_ready(2)).await;
    let nodes = Nodes::for_network(&admin, &ns.name, "net").await;
    nodes.wait_for_mesh(&ips(&status)).await;
    report(
        "node-failover",
        "network under the new leader ready and meshed",
        created.elapsed(),
    );
    ns.delete().await;
}

/// The real-node form of podsim's hung-node fault: `bc-fault rpc-hang on` in
/// one pod makes its bitcoind stop answering RPC (the readiness probe fails,
/// the controller's calls time out); another network still converges, and
/// the hung network recovers once the fault is cleared.
#[tokio::test]
async fn real_node_hung_node_slows_only_its_network() {
    if !real_node("real_node_hung_node_slows_only_its_network") {
        return;
    }
    let admin = admin_client().await;
    let ns = TestNamespace::create(&admin, "node-hung").await;
    create_node_network(&admin, &ns.name, "hung", 2).await;
    let (status, _) =
        wait_for_status(&admin, &ns.name, "hung", "2 ready nodes", all_ready(2)).await;
    let (ok, _, err) = kubectl(&[
        "exec",
        "-n",
        &ns.name,
        "hung-sts-1",
        "--",
        "bc-fault",
        DATADIR,
        "rpc-hang",
        "on",
    ]);
    assert!(ok, "{err}");
    let start = Instant::now();
    create_node_network(&admin, &ns.name, "other", 2).await;
    let (other, _) =
        wait_for_status(&admin, &ns.name, "other", "2 ready nodes", all_ready(2)).await;
    let nodes = Nodes::for_network(&admin, &ns.name, "other").await;
    nodes.wait_for_mesh(&ips(&other)).await;
    report(
        "node-hung",
        "other network ready and meshed beside a hung node",
        start.elapsed(),
    );
    // The probe of the hung pod fails: it leaves the ready set.
    let (_, took) = wait_for_status(&admin, &ns.name, "hung", "hung node not ready", |s| {
        s.nodes.iter().any(|n| n.ordinal == 1 && !n.ready)
    })
    .await;
    report("node-hung", "hung pod reported not ready", took);
    let (ok, _, err) = kubectl(&[
        "exec",
        "-n",
        &ns.name,
        "hung-sts-1",
        "--",
        "bc-fault",
        DATADIR,
        "rpc-hang",
        "off",
    ]);
    assert!(ok, "{err}");
    let start = Instant::now();
    let (status2, _) =
        wait_for_status(&admin, &ns.name, "hung", "2 ready nodes", all_ready(2)).await;
    let hung_nodes = Nodes::for_network(&admin, &ns.name, "hung").await;
    hung_nodes.wait_for_mesh(&ips(&status2)).await;
    report(
        "node-hung",
        "recovered after the fault cleared",
        start.elapsed(),
    );
    assert_eq!(ips(&status).len(), 2);
    tokio::time::sleep(Duration::from_millis(10)).await;
    ns.delete().await;
}

/// The `Degraded` condition of a status, if it is True with `reason` and its
/// message contains `text`.
fn degraded_with(
    reason: &'static str,
    text: &'static str,
) -> impl Fn(&bitcoin_controller::api::BitcoinNetworkStatus) -> bool {
    move |s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Degraded"
                && c.status == "True"
                && c.reason == reason
                && c.message.contains(text)
        })
    }
}

/// The Warning Events with `reason` about `name`: occurrences, messages.
async fn warnings(client: &Client, ns: &str, name: &str, reason: &str) -> (i32, Vec<String>) {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
    let list = events.list(&lp).await.expect("list Events").items;
    let mine: Vec<_> = list
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some("Warning"))
        .collect();
    (
        mine.iter().map(|e| e.count.unwrap_or(1)).sum(),
        mine.iter().filter_map(|e| e.message.clone()).collect(),
    )
}

/// Pods that Kubernetes cannot start are in the status with Kubernetes' own
/// reason, one Warning Event per problem (not one per kubelet retry): an
/// image no registry serves, then more memory than the node has. Fixed, the
/// network is Ready and no longer Degraded.
#[tokio::test]
async fn real_node_a_pod_that_cannot_start_is_degraded_with_why() {
    if !real_node("real_node_a_pod_that_cannot_start_is_degraded_with_why") {
        return;
    }
    let admin = admin_client().await;
    let ns = TestNamespace::create(&admin, "node-stuck").await;
    let api: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);
    let net = BitcoinNetwork::new(
        "stuck",
        BitcoinNetworkSpec {
            nodes: 1,
            image: Some("bitcoin-regtest-node:absent".to_owned()),
            ..Default::default()
        },
    );
    api.create(&PostParams::default(), &net)
        .await
        .expect("create network");

    let start = Instant::now();
    let (status, _) = wait_for_status(
        &admin,
        &ns.name,
        "stuck",
        "Degraded PodNotStarting: the image cannot be pulled",
        degraded_with("PodNotStarting", "cannot be pulled"),
    )
    .await;
    report(
        "node-stuck",
        "unpullable image -> Degraded",
        start.elapsed(),
    );
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded");
    println!("Degraded: {}", degraded.map_or("", |c| c.message.as_str()));
    // The kubelet retries the pull with back-off meanwhile.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (count, messages) = warnings(&admin, &ns.name, "stuck", "PodNotStarting").await;
    println!("PodNotStarting Warning Events after 20 s of pull retries: {count} {messages:?}");
    assert_eq!(count, 1, "one Warning Event for the problem: {messages:?}");

    let start = Instant::now();
    patch_spec(
        &admin,
        &ns.name,
        "stuck",
        json!({"image": NODE_IMAGE, "resources": {"requests": {"memory": "100Ti"}}}),
    )
    .await;
    let (status, _) = wait_for_status(
        &admin,
        &ns.name,
        "stuck",
        "Degraded PodNotStarting: Unschedulable",
        degraded_with("PodNotStarting", "Unschedulable"),
    )
    .await;
    report("node-stuck", "100Ti requested -> Degraded", start.elapsed());
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded");
    let message = degraded.map_or("", |c| c.message.as_str());
    println!("Degraded: {message}");
    assert!(message.contains("Insufficient memory"), "{message}");

    let start = Instant::now();
    patch_spec(&admin, &ns.name, "stuck", json!({"resources": null})).await;
    let (status, _) =
        wait_for_status(&admin, &ns.name, "stuck", "1 ready node", all_ready(1)).await;
    report("node-stuck", "fixed -> 1 ready node", start.elapsed());
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded");
    assert_eq!(
        degraded.map(|c| c.status.as_str()),
        Some("False"),
        "{degraded:?}"
    );
    let (count, messages) = warnings(&admin, &ns.name, "stuck", "PodNotStarting").await;
    println!("PodNotStarting Warning Events in all: {count} {messages:?}");
    assert_eq!(count, 2, "one per problem: {messages:?}");
    ns.delete().await;
}
