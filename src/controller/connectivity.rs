//! Keeps every ready node of a network connected to every other ready node
//! of its group (the original controller's `syncNodes`; one group unless
//! `spec.partitions` splits the network).
//!
//! The decisions (what to add, remove, dial at once, disconnect) are pure;
//! [`sync`] applies them over JSON-RPC, all nodes of one network
//! concurrently with a bound. A node that fails or times out is reported
//! and does not stop the others.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use futures::stream::{self, StreamExt};

use crate::bitcoin::{AddedNodeInfo, PeerInfo, RpcClient, RpcConfig, RpcError, P2P_PORT, RPC_PORT};
use crate::controller::partition::group_of;
use crate::controller::status::NodeReport;

/// Bitcoin Core opens outbound connections to at most this many added nodes
/// at once (`MAX_ADDNODE_CONNECTIONS`); the rest stay added and are used when
/// a connection drops.
pub const MAX_ADDNODE_CONNECTIONS: usize = 8;

/// Whether a node reporting `connected` of its `wanted` added peers
/// connected is as connected as Bitcoin Core will make it.
pub fn fully_connected(connected: u32, wanted: usize) -> bool {
    connected as usize >= wanted.min(MAX_ADDNODE_CONNECTIONS)
}

/// How many nodes of one network are synced at the same time.
const CONCURRENCY: usize = 8;

/// A node: its pod name, IP and ordinal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub pod_name: String,
    pub ip: String,
    pub ordinal: i32,
}

impl Endpoint {
    /// The P2P address other nodes use in `addnode`.
    pub fn peer_address(&self) -> String {
        peer_address(&self.ip)
    }
}

fn peer_address(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, P2P_PORT).to_string(),
        Err(_) => format!("{ip}:{P2P_PORT}"),
    }
}

/// Normalizes an added-node entry: a bare host gets the regtest P2P port.
fn normalize(added: &str) -> String {
    if added.parse::<SocketAddr>().is_ok() {
        return added.to_owned();
    }
    let host = added.trim_start_matches('[').trim_end_matches(']');
    peer_address(host)
}

/// What to change on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Addresses to `addnode ... add`.
    pub add: Vec<String>,
    /// Entries (as the node reported them) to `addnode ... remove`.
    pub remove: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// The wanted added-node set of `me`: every other ready node of its group
/// (of the network, when `groups` is empty).
pub fn wanted_peers(me: &Endpoint, ready: &[Endpoint], groups: &[Vec<i32>]) -> BTreeSet<String> {
    let mine = group_of(groups, me.ordinal);
    ready
        .iter()
        .filter(|e| e.pod_name != me.pod_name && e.ip != me.ip)
        .filter(|e| group_of(groups, e.ordinal) == mine)
        .map(Endpoint::peer_address)
        .collect()
}

/// The wanted peers to dial at once with `addnode ... onetry`: those the
/// node had added before this sync (so its own added-node loop had its
/// chance) that are not connected, at most as many as the node has free
/// added-node slots. After a failed dial Bitcoin Core waits a minute before
/// it dials an added node again; `onetry` dials at once, and does not take
/// one of Core's slots, hence the limit.
pub fn nudges(added: &[AddedNodeInfo], wanted: &BTreeSet<String>) -> Vec<String> {
    let state: HashMap<String, bool> = added
        .iter()
        .map(|a| (normalize(&a.addednode), a.connected))
        .collect();
    let connected = wanted
        .iter()
        .filter(|w| state.get(*w) == Some(&true))
        .count();
    let free = wanted
        .len()
        .min(MAX_ADDNODE_CONNECTIONS)
        .saturating_sub(connected);
    wanted
        .iter()
        .filter(|w| state.get(*w) == Some(&false))
        .take(free)
        .cloned()
        .collect()
}

/// The node's connections into another group, as `disconnectnode` takes
/// them (the `addr` of `getpeerinfo`): peers whose IP is a node of a group
/// other than `mine` (`group_by_ip`). `addnode remove` alone keeps a live
/// connection in Core.
pub fn cross_group(
    peers: &[PeerInfo],
    mine: usize,
    group_by_ip: &HashMap<IpAddr, usize>,
) -> Vec<String> {
    peers
        .iter()
        .filter(|p| {
            peer_ip(&p.addr)
                .and_then(|ip| group_by_ip.get(&ip))
                .is_some_and(|g| *g != mine)
        })
        .map(|p| p.addr.clone())
        .collect()
}

/// The IP of a `getpeerinfo` address (`ip:port`, `[v6]:port`), IPv4-mapped
/// IPv6 addresses as IPv4.
fn peer_ip(addr: &str) -> Option<IpAddr> {
    let ip = match addr.parse::<SocketAddr>() {
        Ok(sa) => sa.ip(),
        Err(_) => addr.parse::<IpAddr>().ok()?,
    };
    Some(ip.to_canonical())
}

/// Diff between what a node has added and what it should have. Anything not
/// wanted is removed: the controller owns the added-node list.
pub fn diff(added: &[AddedNodeInfo], wanted: &BTreeSet<String>) -> Diff {
    let have: BTreeSet<String> = added.iter().map(|a| normalize(&a.addednode)).collect();
    Diff {
        add: wanted.difference(&have).cloned().collect(),
        remove: added
            .iter()
            .filter(|a| !wanted.contains(&normalize(&a.addednode)))
            .map(|a| a.addednode.clone())
            .collect(),
    }
}

/// Result of syncing one node.
#[derive(Debug)]
pub struct NodeOutcome {
    pub pod_name: String,
    /// How many peers the node should have (the other ready nodes of its group).
    pub wanted: usize,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Peers dialled with `addnode ... onetry`.
    pub tried: Vec<String>,
    /// Connections into other groups closed with `disconnectnode`.
    pub disconnected: Vec<String>,
    pub result: Result<NodeReport, RpcError>,
}

/// Brings every ready node's added-node list to the wanted state, dials the
/// wanted peers that are not connected, and (when `groups` partitions the
/// network) closes connections between groups. `nodes`: every node with an
/// IP, ready or not, to tell which group a connection leads to.
///
/// Two rounds over the nodes: first every added-node list, then the
/// disconnects. A node whose connection is closed while it still has the
/// other side added would dial it again (its added-node loop), and the
/// nodes are synced concurrently, so no connection across groups is closed
/// before every node has dropped the other groups from its list.
pub async fn sync(
    rpc: &RpcClient,
    user: &str,
    password: &str,
    ready: &[Endpoint],
    nodes: &[Endpoint],
    groups: &[Vec<i32>],
) -> Vec<NodeOutcome> {
    let cfg = |node: &Endpoint| RpcConfig {
        host: node.ip.clone(),
        port: RPC_PORT,
        user: user.to_owned(),
        password: password.to_owned(),
    };
    let mut outcomes: Vec<(Endpoint, NodeOutcome)> = stream::iter(ready.iter().cloned())
        .map(|node| async move {
            let wanted = wanted_peers(&node, ready, groups);
            let mut outcome = NodeOutcome {
                pod_name: node.pod_name.clone(),
                wanted: wanted.len(),
                added: Vec::new(),
                removed: Vec::new(),
                tried: Vec::new(),
                disconnected: Vec::new(),
                result: Ok(NodeReport::default()),
            };
            outcome.result = sync_node(rpc, &cfg(&node), &wanted, &mut outcome).await;
            (node, outcome)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    if groups.is_empty() {
        return outcomes.into_iter().map(|(_, o)| o).collect();
    }
    let group_by_ip: HashMap<IpAddr, usize> = nodes
        .iter()
        .filter_map(|n| {
            let ip = n.ip.parse::<IpAddr>().ok()?.to_canonical();
            Some((ip, group_of(groups, n.ordinal)))
        })
        .collect();
    let group_by_ip = &group_by_ip;
    stream::iter(outcomes.iter_mut().filter(|(_, o)| o.result.is_ok()))
        .for_each_concurrent(CONCURRENCY, |(node, outcome)| async move {
            let mine = group_of(groups, node.ordinal);
            if let Err(e) = cut(rpc, &cfg(node), mine, group_by_ip, outcome).await {
                outcome.result = Err(e);
            }
        })
        .await;
    outcomes.into_iter().map(|(_, o)| o).collect()
}

/// One node's added-node list and dials; its report.
async fn sync_node(
    rpc: &RpcClient,
    cfg: &RpcConfig,
    wanted: &BTreeSet<String>,
    outcome: &mut NodeOutcome,
) -> Result<NodeReport, RpcError> {
    let added = rpc.get_added_node_info(cfg).await?;
    let diff = diff(&added, wanted);
    for addr in &diff.add {
        rpc.add_node(cfg, addr).await?;
        outcome.added.push(addr.clone());
    }
    for addr in &diff.remove {
        rpc.remove_node(cfg, addr).await?;
        outcome.removed.push(addr.clone());
    }
    for addr in nudges(&added, wanted) {
        rpc.try_node(cfg, &addr).await?;
        outcome.tried.push(addr);
    }
    let connected: HashMap<String, bool> = added
        .iter()
        .map(|a| (normalize(&a.addednode), a.connected))
        .collect();
    let connected_peers = wanted
        .iter()
        .filter(|w| connected.get(*w).copied().unwrap_or(false))
        .count() as u32;
    let chain = rpc.get_blockchain_info(cfg).await?;
    Ok(NodeReport {
        connected_peers,
        blocks: chain.blocks,
        best_block_hash: chain.bestblockhash,
        time: chain.time,
    })
}

/// Closes the node's connections into groups other than `mine`.
async fn cut(
    rpc: &RpcClient,
    cfg: &RpcConfig,
    mine: usize,
    group_by_ip: &HashMap<IpAddr, usize>,
    outcome: &mut NodeOutcome,
) -> Result<(), RpcError> {
    let peers = rpc.get_peer_info(cfg).await?;
    for addr in cross_group(&peers, mine, group_by_ip) {
        rpc.disconnect_node(cfg, &addr).await?;
        outcome.disconnected.push(addr);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ep(pod: &str, ip: &str) -> Endpoint {
        let ordinal = pod.bytes().next().map_or(0, |b| i32::from(b - b'a'));
        Endpoint {
            pod_name: pod.into(),
            ip: ip.into(),
            ordinal,
        }
    }

    fn added(entries: &[&str]) -> Vec<AddedNodeInfo> {
        entries
            .iter()
            .map(|a| AddedNodeInfo {
                addednode: (*a).into(),
                connected: true,
                addresses: vec![],
            })
            .collect()
    }

    /// Added entries, `!` marking a disconnected one.
    fn added_state(entries: &[&str]) -> Vec<AddedNodeInfo> {
        entries
            .iter()
            .map(|a| AddedNodeInfo {
                addednode: a.trim_start_matches('!').into(),
                connected: !a.starts_with('!'),
                addresses: vec![],
            })
            .collect()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn wanted_is_every_other_ready_node() {
        let ready = [
            ep("a", "127.0.0.2"),
            ep("b", "127.0.0.3"),
            ep("c", "127.0.0.4"),
        ];
        assert_eq!(
            wanted_peers(&ready[0], &ready, &[]),
            set(&["127.0.0.3:18444", "127.0.0.4:18444"])
        );
        assert!(wanted_peers(&ready[0], &ready[..1], &[]).is_empty());
    }

    #[test]
    fn wanted_is_the_other_ready_nodes_of_the_group() {
        // a=0, b=1, c=2, d=3; d is in no group: the group of the rest.
        let ready = [
            ep("a", "127.0.0.2"),
            ep("b", "127.0.0.3"),
            ep("c", "127.0.0.4"),
            ep("d", "127.0.0.5"),
        ];
        let groups = crate::controller::partition::groups(&[vec![0, 1], vec![2]], 4);
        let cases: [(usize, &[&str]); 4] = [
            (0, &["127.0.0.3:18444"]),
            (1, &["127.0.0.2:18444"]),
            (2, &[]),
            (3, &[]),
        ];
        for (me, want) in cases {
            assert_eq!(wanted_peers(&ready[me], &ready, &groups), set(want), "{me}");
        }
        // Ready nodes only: without b, a has no peer.
        let some = [ready[0].clone(), ready[2].clone()];
        assert!(wanted_peers(&some[0], &some, &groups).is_empty());
    }

    #[test]
    fn nudges_table() {
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str]);
        let cases: &[Case] = &[
            // (added before the sync, `!` = not connected; wanted; onetry)
            (&[], &[], &[]),
            // Just added (not in the list before): Core's loop dials it.
            (&[], &["127.0.0.3:18444"], &[]),
            (&["127.0.0.3:18444"], &["127.0.0.3:18444"], &[]),
            // Added, not connected: dialled at once.
            (
                &["!127.0.0.3:18444"],
                &["127.0.0.3:18444"],
                &["127.0.0.3:18444"],
            ),
            // A bare IP entry is the same node.
            (&["!127.0.0.3"], &["127.0.0.3:18444"], &["127.0.0.3:18444"]),
            // Not wanted any more (being removed): never dialled.
            (&["!127.0.0.9:18444"], &["127.0.0.3:18444"], &[]),
            (
                &["!127.0.0.3:18444", "127.0.0.4:18444", "!127.0.0.5:18444"],
                &["127.0.0.3:18444", "127.0.0.4:18444", "127.0.0.5:18444"],
                &["127.0.0.3:18444", "127.0.0.5:18444"],
            ),
        ];
        for (have, want, tried) in cases {
            assert_eq!(
                nudges(&added_state(have), &set(want)),
                tried.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{have:?} -> {want:?}"
            );
        }
    }

    #[test]
    fn nudges_fill_only_free_addnode_slots() {
        // 12 wanted, 6 connected, 6 not: Core connects at most 8 added
        // nodes, so 2 are dialled.
        let addrs: Vec<String> = (10..22).map(|i| format!("127.0.0.{i}:18444")).collect();
        let have: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| if i < 6 { a.clone() } else { format!("!{a}") })
            .collect();
        let have: Vec<&str> = have.iter().map(String::as_str).collect();
        let want: BTreeSet<String> = addrs.iter().cloned().collect();
        assert_eq!(nudges(&added_state(&have), &want), addrs[6..8].to_vec());
        // 8 connected: none.
        let full: Vec<&str> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if i < 8 {
                    a.as_str()
                } else {
                    "!127.0.0.99:18444"
                }
            })
            .collect();
        assert!(nudges(&added_state(&full), &want).is_empty());
    }

    #[test]
    fn cross_group_table() {
        let by_ip: HashMap<IpAddr, usize> = [
            ("127.0.0.2", 0),
            ("127.0.0.3", 0),
            ("127.0.0.4", 1),
            ("fd00::5", 1),
        ]
        .into_iter()
        .map(|(ip, g)| (ip.parse().unwrap(), g))
        .collect();
        let peers = |addrs: &[&str]| -> Vec<PeerInfo> {
            addrs
                .iter()
                .map(|a| PeerInfo { addr: (*a).into() })
                .collect()
        };
        type Case<'a> = (usize, &'a [&'a str], &'a [&'a str]);
        let cases: &[Case] = &[
            // (my group, getpeerinfo addrs, disconnected)
            (0, &[], &[]),
            // Outbound (the dialled name) and inbound (ephemeral port) alike.
            (
                0,
                &["127.0.0.3:18444", "127.0.0.4:18444", "127.0.0.4:40112"],
                &["127.0.0.4:18444", "127.0.0.4:40112"],
            ),
            (
                1,
                &["127.0.0.3:18444", "[fd00::5]:18444"],
                &["127.0.0.3:18444"],
            ),
            // IPv4-mapped IPv6 is the IPv4 node.
            (
                1,
                &["[::ffff:127.0.0.2]:5000"],
                &["[::ffff:127.0.0.2]:5000"],
            ),
            // Connections to addresses that are not the network's nodes stay.
            (0, &["10.1.2.3:18444", "garbage"], &[]),
        ];
        for (mine, have, gone) in cases {
            assert_eq!(
                cross_group(&peers(have), *mine, &by_ip),
                gone.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{mine} {have:?}"
            );
        }
    }

    #[test]
    fn diff_table() {
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], &'a [&'a str]);
        let cases: &[Case] = &[
            // (added, wanted, expected add, expected remove)
            (&[], &[], &[], &[]),
            (&[], &["127.0.0.3:18444"], &["127.0.0.3:18444"], &[]),
            (&["127.0.0.3:18444"], &["127.0.0.3:18444"], &[], &[]),
            // A bare IP counts as the same node on the default port.
            (&["127.0.0.3"], &["127.0.0.3:18444"], &[], &[]),
            // Gone nodes are removed, with the entry exactly as reported.
            (
                &["127.0.0.3:18444", "127.0.0.9"],
                &["127.0.0.3:18444", "127.0.0.4:18444"],
                &["127.0.0.4:18444"],
                &["127.0.0.9"],
            ),
            // A node on another port is not the wanted node.
            (
                &["127.0.0.3:1"],
                &["127.0.0.3:18444"],
                &["127.0.0.3:18444"],
                &["127.0.0.3:1"],
            ),
            (&["127.0.0.3:18444"], &[], &[], &["127.0.0.3:18444"]),
        ];
        for (have, want, add, remove) in cases {
            let d = diff(&added(have), &set(want));
            assert_eq!(
                d.add,
                set(add).into_iter().collect::<Vec<_>>(),
                "{have:?} -> {want:?}"
            );
            assert_eq!(
                d.remove,
                remove.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{have:?} -> {want:?}"
            );
            assert_eq!(d.is_empty(), add.is_empty() && remove.is_empty());
        }
    }

    #[test]
    fn full_connectivity_respects_cores_addnode_limit() {
        assert!(fully_connected(0, 0));
        assert!(fully_connected(2, 2));
        assert!(!fully_connected(1, 2));
        assert!(fully_connected(8, 19));
        assert!(!fully_connected(7, 19));
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(ep("a", "fd00::1").peer_address(), "[fd00::1]:18444");
        assert_eq!(normalize("[fd00::1]"), "[fd00::1]:18444");
        assert_eq!(normalize("fd00::1"), "[fd00::1]:18444");
    }

    /// What a fake node was asked: (node, method, first parameter).
    type Calls = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

    /// A fake node at `ip`:18443, fully meshed with `others`, answering the
    /// calls of a sync (after `delay`) and recording them in `calls`.
    async fn fake_node(ip: &str, others: Vec<String>, delay: Duration, calls: Calls) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind((ip, RPC_PORT)).await.unwrap();
        let ip = ip.to_owned();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (ip, others, calls) = (ip.clone(), others.clone(), calls.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let body = loop {
                        let mut chunk = [0u8; 4096];
                        let n = stream.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some((head, body)) = text.split_once("\r\n\r\n") else {
                            continue;
                        };
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break body.to_owned();
                        }
                    };
                    let request: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let method = request["method"].as_str().unwrap().to_owned();
                    tokio::time::sleep(delay).await;
                    let first = request["params"][0].as_str().unwrap_or_default().to_owned();
                    calls
                        .lock()
                        .unwrap()
                        .push((ip.clone(), method.clone(), first));
                    let peer = |o: &String| format!("{o}:{P2P_PORT}");
                    let result = match method.as_str() {
                        "getaddednodeinfo" => serde_json::Value::from(
                            others
                                .iter()
                                .map(|o| serde_json::json!({"addednode": peer(o), "connected": true, "addresses": []}))
                                .collect::<Vec<_>>(),
                        ),
                        "getpeerinfo" => serde_json::Value::from(
                            others
                                .iter()
                                .map(|o| serde_json::json!({"addr": peer(o)}))
                                .collect::<Vec<_>>(),
                        ),
                        "getblockchaininfo" => serde_json::json!({"chain": "regtest", "blocks": 0, "headers": 0, "bestblockhash": "00"}),
                        _ => serde_json::Value::Null,
                    };
                    let body =
                        serde_json::json!({"result": result, "error": null, "id": request["id"]})
                            .to_string();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
    }

    /// Splitting a meshed network: no connection is closed before every
    /// node has dropped the other group from its added nodes, even when one
    /// node answers slowly (a node whose connection is closed while the
    /// other side is still added would dial it again).
    #[tokio::test]
    async fn a_partition_closes_connections_only_after_every_list_is_cut() {
        let ips = ["127.88.0.1", "127.88.0.2", "127.88.0.3"];
        let calls = Calls::default();
        for (i, ip) in ips.iter().enumerate() {
            let others = ips
                .iter()
                .filter(|o| *o != ip)
                .map(|o| o.to_string())
                .collect();
            let delay = Duration::from_millis(if i == 2 { 300 } else { 0 });
            fake_node(ip, others, delay, calls.clone()).await;
        }
        let nodes: Vec<Endpoint> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| Endpoint {
                pod_name: format!("net-sts-{i}"),
                ip: ip.to_string(),
                ordinal: i as i32,
            })
            .collect();
        let rpc = RpcClient::new(Duration::from_secs(2), Duration::from_secs(5));
        let outcomes = sync(&rpc, "u", "p", &nodes, &nodes, &[vec![0, 1], vec![2]]).await;
        for o in &outcomes {
            assert!(o.result.is_ok(), "{}: {:?}", o.pod_name, o.result);
        }
        let calls = calls.lock().unwrap().clone();
        let removes: Vec<_> = calls.iter().filter(|(_, m, _)| m == "addnode").collect();
        assert_eq!(removes.len(), 4, "each side drops the other: {calls:?}");
        let last_remove = calls.iter().rposition(|(_, m, _)| m == "addnode").unwrap();
        let first_cut = calls
            .iter()
            .position(|(_, m, _)| m == "disconnectnode")
            .expect("connections cut");
        assert!(
            last_remove < first_cut,
            "a connection was cut before every list was: {calls:?}"
        );
    }
}
