//! Keeps every ready node of a network connected to every other ready node
//! (the original controller's `syncNodes`).
//!
//! The diff is pure; [`sync`] applies it over JSON-RPC, all nodes of one
//! network concurrently with a bound. A node that fails or times out is
//! reported and does not stop the others.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use futures::stream::{self, StreamExt};

use crate::bitcoin::{AddedNodeInfo, RpcClient, RpcConfig, RpcError, P2P_PORT, RPC_PORT};
use crate::controller::status::NodeReport;

/// Bitcoin Core opens outbound connections to at most this many added nodes
/// at once (`MAX_ADDNODE_CONNECTIONS`); the rest stay added and are used when
/// a connection drops.
pub const MAX_ADDNODE_CONNECTIONS: usize = 8;

/// Whether a node reporting `connected` added peers in a network of `ready`
/// ready nodes is as connected as Bitcoin Core will make it.
pub fn fully_connected(connected: u32, ready: usize) -> bool {
    connected as usize >= ready.saturating_sub(1).min(MAX_ADDNODE_CONNECTIONS)
}

/// How many nodes of one network are synced at the same time.
const CONCURRENCY: usize = 8;

/// A ready node: its pod name and IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub pod_name: String,
    pub ip: String,
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

/// The wanted added-node set of `me`: every other ready node of the network.
pub fn wanted_peers(me: &Endpoint, ready: &[Endpoint]) -> BTreeSet<String> {
    ready
        .iter()
        .filter(|e| e.pod_name != me.pod_name && e.ip != me.ip)
        .map(Endpoint::peer_address)
        .collect()
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
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub result: Result<NodeReport, RpcError>,
}

/// Brings every ready node's added-node list to the wanted state.
pub async fn sync(
    rpc: &RpcClient,
    user: &str,
    password: &str,
    ready: &[Endpoint],
) -> Vec<NodeOutcome> {
    stream::iter(ready.iter().cloned())
        .map(|node| async move {
            let cfg = RpcConfig {
                host: node.ip.clone(),
                port: RPC_PORT,
                user: user.to_owned(),
                password: password.to_owned(),
            };
            let mut outcome = NodeOutcome {
                pod_name: node.pod_name.clone(),
                added: Vec::new(),
                removed: Vec::new(),
                result: Ok(NodeReport::default()),
            };
            outcome.result = sync_node(rpc, &cfg, &wanted_peers(&node, ready), &mut outcome).await;
            outcome
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(pod: &str, ip: &str) -> Endpoint {
        Endpoint {
            pod_name: pod.into(),
            ip: ip.into(),
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
            wanted_peers(&ready[0], &ready),
            set(&["127.0.0.3:18444", "127.0.0.4:18444"])
        );
        assert!(wanted_peers(&ready[0], &ready[..1]).is_empty());
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
        assert!(fully_connected(0, 1));
        assert!(fully_connected(2, 3));
        assert!(!fully_connected(1, 3));
        assert!(fully_connected(8, 20));
        assert!(!fully_connected(7, 20));
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(ep("a", "fd00::1").peer_address(), "[fd00::1]:18444");
        assert_eq!(normalize("[fd00::1]"), "[fd00::1]:18444");
        assert_eq!(normalize("fd00::1"), "[fd00::1]:18444");
    }
}
