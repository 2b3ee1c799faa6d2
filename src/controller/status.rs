//! Pure computation of a network's status from the pods in the cache and what
//! the nodes last answered over RPC.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Service;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{
    BitcoinNetwork, BitcoinNetworkNode, BitcoinNetworkStatus, MiningStatus, RpcAccess, ServiceType,
    CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY, CONDITION_SYNCED,
};
use crate::bitcoin::RPC_PORT;
use crate::controller::cached::CachedPod;
use crate::controller::mining::network_mining_node;
use crate::controller::partition;
use crate::controller::problem::Problem;
use crate::controller::resources::{
    credentials_secret_name, dns_name, is_controlled_by, statefulset_name, NETWORK_LABEL,
    POD_NAME_LABEL,
};

/// What one node reported during the last mesh sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeReport {
    pub connected_peers: u32,
    pub blocks: u64,
    pub best_block_hash: String,
    /// Header time of the best block (UNIX seconds).
    pub time: u64,
}

/// Ordinal of a pod of the network's StatefulSet (`<name>-sts-<ordinal>`).
pub fn ordinal(net: &BitcoinNetwork, pod_name: &str) -> Option<i32> {
    pod_name
        .strip_prefix(&statefulset_name(net))?
        .strip_prefix('-')?
        .parse()
        .ok()
        .filter(|n: &i32| *n >= 0)
}

/// A node is ready when its pod is Ready, has an IP and is not being deleted.
pub fn pod_ready(pod: &CachedPod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.ip.as_deref().is_some_and(|ip| !ip.is_empty())
        && pod.ready
}

/// The status nodes, one per pod of the network's StatefulSet, by ordinal.
pub fn nodes<'a>(
    net: &BitcoinNetwork,
    pods: impl IntoIterator<Item = &'a CachedPod>,
    reports: &HashMap<String, NodeReport>,
) -> Vec<BitcoinNetworkNode> {
    let mut nodes: Vec<_> = pods
        .into_iter()
        .filter_map(|pod| {
            let name = pod.metadata.name.as_deref()?;
            let ordinal = ordinal(net, name)?;
            let report = reports.get(name);
            Some(BitcoinNetworkNode {
                ordinal,
                ready: pod_ready(pod),
                ip: pod.ip.clone().unwrap_or_default(),
                node_name: name.to_owned(),
                pod_name: name.to_owned(),
                dns_name: dns_name(net, name),
                connected_peers: report
                    .map(|r| i32::try_from(r.connected_peers).unwrap_or(i32::MAX)),
                blocks: report.map(|r| i64::try_from(r.blocks).unwrap_or(i64::MAX)),
                best_block_hash: report.map(|r| r.best_block_hash.clone()),
            })
        })
        .collect();
    nodes.sort_by_key(|n| n.ordinal);
    nodes
}

/// `status.rpc`: how an app connects, from the live `N-rpc` Service
/// `svc`. Present only while `spec.service` asks for the Service and the
/// network's own Service of that name exists (so status never points at
/// a Service that is not there, or at someone else's). The node port is
/// the one the API server allocated for `rpc`; the node, the ordinal its
/// selector names.
pub fn rpc_access(net: &BitcoinNetwork, svc: Option<&Service>) -> Option<RpcAccess> {
    let wanted = net.spec.service.as_ref()?;
    let svc = svc.filter(|s| is_controlled_by(&s.metadata, net))?;
    let spec = svc.spec.as_ref();
    let node_port = (wanted.type_ == ServiceType::NodePort)
        .then(|| {
            spec?
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some("rpc"))?
                .node_port
        })
        .flatten();
    let node = spec
        .and_then(|s| s.selector.as_ref()?.get(POD_NAME_LABEL))
        .and_then(|pod| ordinal(net, pod));
    Some(RpcAccess {
        service: svc.metadata.name.clone().unwrap_or_default(),
        port: i32::from(RPC_PORT),
        node_port,
        credentials_secret: credentials_secret_name(net),
        node,
    })
}

/// How many nodes a condition message names before it only counts them.
const NODES_NAMED: usize = 5;

fn node_list(names: &[String]) -> String {
    let named = names[..names.len().min(NODES_NAMED)].join(", ");
    match names.len() {
        n if n <= NODES_NAMED => named,
        n => format!("{named} and {} more", n - NODES_NAMED),
    }
}

/// The `Synced` condition: whether every ready node reported the same best
/// block as its reference, the mining node (`miner`) or else the highest
/// node; its reason and message. With `groups` (`spec.partitions`) each
/// group is judged on its own: partitioned nodes are meant to differ.
pub fn synced(
    nodes: &[BitcoinNetworkNode],
    miner: Option<i32>,
    groups: &[Vec<i32>],
) -> (bool, &'static str, String) {
    let ready: Vec<&BitcoinNetworkNode> = nodes.iter().filter(|n| n.ready).collect();
    let silent: Vec<String> = ready
        .iter()
        .filter(|n| n.best_block_hash.is_none())
        .map(|n| n.pod_name.clone())
        .collect();
    if !silent.is_empty() {
        return (
            false,
            "NotReported",
            format!(
                "ready nodes did not report their best block: {}",
                node_list(&silent)
            ),
        );
    }
    let mut behind = Vec::new();
    let mut references = Vec::new();
    for group in 0..groups.len().max(1) {
        let members: Vec<&BitcoinNetworkNode> = ready
            .iter()
            .filter(|n| partition::group_of(groups, n.ordinal) == group)
            .copied()
            .collect();
        let Some(reference) = members
            .iter()
            .find(|n| Some(n.ordinal) == miner)
            .or_else(|| members.iter().max_by_key(|n| n.blocks))
            .copied()
        else {
            continue;
        };
        behind.extend(
            members
                .iter()
                .filter(|n| n.best_block_hash != reference.best_block_hash)
                .map(|n| format!("{} at {}", n.pod_name, n.blocks.unwrap_or_default())),
        );
        references.push(reference);
    }
    let Some(first) = references.first() else {
        return (true, "InSync", "no node is ready".to_owned());
    };
    match (behind.is_empty(), groups.is_empty()) {
        (true, true) => (
            true,
            "InSync",
            format!("all {} ready nodes have the same best block", ready.len()),
        ),
        (true, false) => (
            true,
            "InSync",
            format!(
                "the ready nodes of each of the {} groups have their group's best block",
                references.len()
            ),
        ),
        (false, true) => (
            false,
            "TipsDiffer",
            format!(
                "{} of {} ready nodes are not at the best block of {} (height {}): {}",
                behind.len(),
                ready.len(),
                first.pod_name,
                first.blocks.unwrap_or_default(),
                node_list(&behind)
            ),
        ),
        (false, false) => (
            false,
            "TipsDiffer",
            format!(
                "{} of {} ready nodes are not at their group's best block: {}",
                behind.len(),
                ready.len(),
                node_list(&behind)
            ),
        ),
    }
}

/// The full status for a network. `mesh_complete`: every ready node has all
/// the others added and is as connected as Bitcoin Core will make it.
/// `mining`: what the controller mines (with `spec.mining`). Conditions keep
/// their `lastTransitionTime` from `previous` while their status does not
/// change.
pub fn compute(
    net: &BitcoinNetwork,
    nodes: Vec<BitcoinNetworkNode>,
    mesh_complete: bool,
    mining: Option<MiningStatus>,
    problem: Option<&Problem>,
    previous: Option<&BitcoinNetworkStatus>,
    now: &Time,
) -> BitcoinNetworkStatus {
    let desired = net.spec.nodes;
    let ready = nodes.iter().filter(|n| n.ready).count() as i32;
    let total = nodes.len() as i32;
    let all_ready = ready == desired && total == desired;
    let miner = network_mining_node(net, &nodes);
    let tip = nodes.iter().find(|n| Some(n.ordinal) == miner);
    let height = tip.and_then(|n| n.blocks);
    let best_block_hash = tip.and_then(|n| n.best_block_hash.clone());
    let groups = partition::groups(&net.spec.partitions, desired);
    let (is_synced, synced_reason, synced_message) = synced(&nodes, miner, &groups);
    let initial_blocks = net
        .spec
        .mining
        .as_ref()
        .and_then(|m| m.initial_blocks)
        .unwrap_or(0);
    let high_enough = initial_blocks <= 0 || height.is_some_and(|h| h >= initial_blocks);
    let is_ready = problem.is_none() && all_ready && mesh_complete && is_synced && high_enough;

    let (ready_reason, ready_message) = match problem {
        Some(p) => (p.reason.as_str(), p.message.clone()),
        None if total != desired => ("Scaling", format!("{total} of {desired} nodes exist")),
        None if !all_ready => (
            "NodesNotReady",
            format!("{ready} of {desired} nodes are ready"),
        ),
        None if !mesh_complete => (
            "Connecting",
            "nodes are still being connected to each other".to_owned(),
        ),
        None if !is_synced => (synced_reason, synced_message.clone()),
        None if !high_enough => (
            "Mining",
            match height {
                Some(h) => format!("height {h} of initialBlocks {initial_blocks}"),
                None => format!("no ready node to mine the {initial_blocks} initial blocks on"),
            },
        ),
        None => (
            "NetworkReady",
            format!("all {desired} nodes are ready, connected and synced"),
        ),
    };
    let (progressing_reason, progressing_message) = match problem {
        Some(p) => (
            p.reason.as_str(),
            "waiting for the problem in the Degraded condition to be fixed".to_owned(),
        ),
        None if is_ready => ("Stable", "the network is in its desired state".to_owned()),
        None => (ready_reason, ready_message.clone()),
    };
    let (degraded_reason, degraded_message) = match problem {
        Some(p) => (p.reason.as_str(), p.message.clone()),
        None => ("AsExpected", "no problem found".to_owned()),
    };

    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" }.to_owned();
        let last_transition_time = previous
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message,
            observed_generation: net.metadata.generation,
            last_transition_time,
        }
    };
    BitcoinNetworkStatus {
        ready_nodes: ready,
        nodes,
        observed_generation: net.metadata.generation,
        selector: Some(format!("{NETWORK_LABEL}={}", net.name())),
        height,
        best_block_hash,
        mining,
        conditions: vec![
            condition(CONDITION_READY, is_ready, ready_reason, ready_message),
            condition(
                CONDITION_PROGRESSING,
                problem.is_none() && !is_ready,
                progressing_reason,
                progressing_message,
            ),
            condition(
                CONDITION_DEGRADED,
                problem.is_some(),
                degraded_reason,
                degraded_message,
            ),
            condition(CONDITION_SYNCED, is_synced, synced_reason, synced_message),
        ],
        ..BitcoinNetworkStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BitcoinNetworkSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn net() -> BitcoinNetwork {
        let mut n = BitcoinNetwork::new(
            "net",
            BitcoinNetworkSpec {
                nodes: 3,
                ..Default::default()
            },
        );
        n.metadata.namespace = Some("ns".into());
        n.metadata.generation = Some(4);
        n
    }

    fn pod(name: &str, ip: Option<&str>, ready: bool) -> CachedPod {
        CachedPod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ip: ip.map(Into::into),
            ready,
            stuck: None,
        }
    }

    #[test]
    fn ordinals_come_from_statefulset_pod_names() {
        let n = net();
        assert_eq!(ordinal(&n, "net-sts-0"), Some(0));
        assert_eq!(ordinal(&n, "net-sts-12"), Some(12));
        assert_eq!(ordinal(&n, "net-sts-"), None);
        assert_eq!(ordinal(&n, "other-sts-1"), None);
        assert_eq!(ordinal(&n, "net-sts-x"), None);
        assert_eq!(ordinal(&n, "net-sts-1-extra"), None);
    }

    #[test]
    fn readiness_needs_condition_ip_and_no_deletion() {
        assert!(pod_ready(&pod("a", Some("127.0.0.2"), true)));
        assert!(!pod_ready(&pod("a", Some("127.0.0.2"), false)));
        assert!(!pod_ready(&pod("a", None, true)));
        let mut deleting = pod("a", Some("127.0.0.2"), true);
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert!(!pod_ready(&deleting));
        assert!(!pod_ready(&CachedPod::default()));
    }

    #[test]
    fn status_lists_pods_by_ordinal_with_reports() {
        let n = net();
        let pods = [
            pod("net-sts-2", None, false),
            pod("net-sts-0", Some("127.0.0.2"), true),
            pod("net-sts-1", Some("127.0.0.3"), true),
            pod("unrelated", Some("127.0.0.9"), true),
        ];
        let reports = HashMap::from([(
            "net-sts-0".to_owned(),
            NodeReport {
                connected_peers: 1,
                blocks: 101,
                best_block_hash: "h101".into(),
                time: 0,
            },
        )]);
        let status = compute(
            &n,
            nodes(&n, &pods, &reports),
            true,
            None,
            None,
            None,
            &now(),
        );
        assert_eq!(status.ready_nodes, 2);
        assert_eq!(status.observed_generation, Some(4));
        let got: Vec<_> = status
            .nodes
            .iter()
            .map(|n| (n.ordinal, n.ready, n.ip.as_str(), n.pod_name.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, true, "127.0.0.2", "net-sts-0"),
                (1, true, "127.0.0.3", "net-sts-1"),
                (2, false, "", "net-sts-2"),
            ]
        );
        assert_eq!(status.nodes[0].blocks, Some(101));
        assert_eq!(status.nodes[0].connected_peers, Some(1));
        assert_eq!(status.nodes[1].blocks, None);
        assert_eq!(status.nodes[0].node_name, "net-sts-0");
        assert_eq!(
            status.nodes[0].dns_name,
            "net-sts-0.net-svc.ns.svc.cluster.local"
        );
    }

    #[test]
    fn empty_network_has_empty_status() {
        let n = net();
        let mut n = n;
        n.spec.nodes = 0;
        let status = compute(
            &n,
            nodes(&n, &[], &HashMap::new()),
            true,
            None,
            None,
            None,
            &now(),
        );
        assert!(status.nodes.is_empty());
        assert_eq!(status.ready_nodes, 0);
        assert_eq!(cond(&status, "Ready"), ("True", "NetworkReady"));
    }

    fn now() -> Time {
        Time("2026-01-01T00:00:00Z".parse().unwrap())
    }

    fn later() -> Time {
        Time("2026-01-01T00:01:00Z".parse().unwrap())
    }

    fn cond<'a>(s: &'a BitcoinNetworkStatus, t: &str) -> (&'a str, &'a str) {
        let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    /// Reports of the nodes `pods`, all at `height` with hash `h<height>`.
    fn at(pods: &[CachedPod], height: u64) -> HashMap<String, NodeReport> {
        pods.iter()
            .map(|p| {
                (
                    p.metadata.name.clone().unwrap(),
                    NodeReport {
                        connected_peers: 2,
                        blocks: height,
                        best_block_hash: format!("h{height}"),
                        time: 0,
                    },
                )
            })
            .collect()
    }

    fn ready3() -> [CachedPod; 3] {
        [
            pod("net-sts-0", Some("127.0.0.2"), true),
            pod("net-sts-1", Some("127.0.0.3"), true),
            pod("net-sts-2", Some("127.0.0.4"), true),
        ]
    }

    #[test]
    fn conditions_table() {
        let ready3 = ready3();
        let problem = Problem::new(
            crate::controller::problem::Reason::SecretNotFound,
            "Secret s not found",
        );
        let synced = at(&ready3, 101);
        let mut node2_behind = synced.clone();
        node2_behind.insert(
            "net-sts-2".into(),
            at(&ready3[2..], 100)["net-sts-2"].clone(),
        );
        let mut node1_silent = synced.clone();
        node1_silent.remove("net-sts-1");
        let low = at(&ready3, 50);
        // (pods, reports, mesh complete, initialBlocks, problem)
        //   -> (Ready, Synced, Progressing, Degraded)
        type Case<'a> = (
            &'a [CachedPod],
            &'a HashMap<String, NodeReport>,
            bool,
            Option<i64>,
            Option<&'a Problem>,
            [(&'a str, &'a str); 4],
        );
        let cases: Vec<Case> = vec![
            (
                &ready3,
                &synced,
                true,
                None,
                None,
                [
                    ("True", "NetworkReady"),
                    ("True", "InSync"),
                    ("False", "Stable"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                &ready3,
                &synced,
                true,
                Some(101),
                None,
                [
                    ("True", "NetworkReady"),
                    ("True", "InSync"),
                    ("False", "Stable"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                &ready3,
                &low,
                true,
                Some(101),
                None,
                [
                    ("False", "Mining"),
                    ("True", "InSync"),
                    ("True", "Mining"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                &ready3,
                &node2_behind,
                true,
                None,
                None,
                [
                    ("False", "TipsDiffer"),
                    ("False", "TipsDiffer"),
                    ("True", "TipsDiffer"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                &ready3,
                &node1_silent,
                true,
                None,
                None,
                [
                    ("False", "NotReported"),
                    ("False", "NotReported"),
                    ("True", "NotReported"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                &ready3,
                &synced,
                false,
                None,
                None,
                [
                    ("False", "Connecting"),
                    ("True", "InSync"),
                    ("True", "Connecting"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                &ready3[..2],
                &synced,
                true,
                None,
                None,
                [
                    ("False", "Scaling"),
                    ("True", "InSync"),
                    ("True", "Scaling"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                &[],
                &synced,
                true,
                Some(101),
                Some(&problem),
                [
                    ("False", "SecretNotFound"),
                    ("True", "InSync"),
                    ("False", "SecretNotFound"),
                    ("True", "SecretNotFound"),
                ],
            ),
        ];
        for (pods, reports, mesh, initial, problem, want) in cases {
            let mut n = net(); // 3 nodes desired
            n.spec.mining = initial.map(|i| crate::api::MiningSpec {
                initial_blocks: Some(i),
                ..Default::default()
            });
            let s = compute(
                &n,
                nodes(&n, pods, reports),
                mesh,
                None,
                problem,
                None,
                &now(),
            );
            let got = [
                cond(&s, "Ready"),
                cond(&s, "Synced"),
                cond(&s, "Progressing"),
                cond(&s, "Degraded"),
            ];
            assert_eq!(
                got,
                want,
                "pods {} mesh {mesh} initialBlocks {initial:?} problem {problem:?}",
                pods.len()
            );
            assert!(s
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(4)));
        }
        let n = net();
        let mut not_ready = ready3.clone();
        not_ready[2] = pod("net-sts-2", None, false);
        let s = compute(
            &n,
            nodes(&n, &not_ready, &synced),
            true,
            None,
            None,
            None,
            &now(),
        );
        assert_eq!(cond(&s, "Ready"), ("False", "NodesNotReady"));
        let degraded = compute(&n, vec![], true, None, Some(&problem), None, &now());
        let c = degraded
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .unwrap();
        assert_eq!(c.message, "Secret s not found");
    }

    /// status.height and bestBlockHash are the mining node's: spec.mining.node
    /// when it is ready, else the lowest ready ordinal. A node that is
    /// behind names itself in the Synced message.
    #[test]
    fn synced_is_judged_per_group_when_partitioned() {
        let node = |ordinal: i32, hash: &str, blocks: i64| BitcoinNetworkNode {
            ordinal,
            ready: true,
            pod_name: format!("n-sts-{ordinal}"),
            best_block_hash: Some(hash.to_owned()),
            blocks: Some(blocks),
            ..BitcoinNetworkNode::default()
        };
        let split = vec![vec![0, 1], vec![2]];
        type Row = (
            &'static [(i32, &'static str, i64)],
            Vec<Vec<i32>>,
            bool,
            &'static str,
        );
        let table: Vec<Row> = vec![
            // One mesh: every node must have the mining node's block.
            (
                &[(0, "a", 5), (1, "a", 5), (2, "b", 10)],
                vec![],
                false,
                "TipsDiffer",
            ),
            (
                &[(0, "a", 5), (1, "a", 5), (2, "a", 5)],
                vec![],
                true,
                "InSync",
            ),
            // Partitioned: each group agrees within itself.
            (
                &[(0, "a", 5), (1, "a", 5), (2, "b", 10)],
                split.clone(),
                true,
                "InSync",
            ),
            (
                &[(0, "a", 5), (1, "c", 4), (2, "b", 10)],
                split.clone(),
                false,
                "TipsDiffer",
            ),
            // Node 2 alone in its group, so never behind.
            (
                &[(0, "a", 5), (1, "a", 5), (2, "z", 1)],
                split,
                true,
                "InSync",
            ),
        ];
        for (nodes, groups, want, reason) in table {
            let nodes: Vec<_> = nodes.iter().map(|&(o, h, b)| node(o, h, b)).collect();
            let (got, got_reason, message) = synced(&nodes, Some(0), &groups);
            assert_eq!((got, got_reason), (want, reason), "{groups:?}: {message}");
        }
    }

    #[test]
    fn height_is_the_mining_nodes() {
        let mut pods = ready3().to_vec();
        let mut reports = at(&pods, 7);
        reports.insert("net-sts-1".into(), at(&pods[1..2], 8)["net-sts-1"].clone());
        let mut n = net();
        let height = |n: &BitcoinNetwork, pods: &[CachedPod]| {
            let s = compute(n, nodes(n, pods, &reports), true, None, None, None, &now());
            (s.height, s.best_block_hash.clone(), s)
        };
        let (h, hash, s) = height(&n, &pods);
        assert_eq!((h, hash.as_deref()), (Some(7), Some("h7")));
        let synced = s.conditions.iter().find(|c| c.type_ == "Synced").unwrap();
        assert_eq!(
            synced.message,
            "1 of 3 ready nodes are not at the best block of net-sts-0 (height 7): net-sts-1 at 8"
        );
        n.spec.mining = Some(crate::api::MiningSpec {
            node: Some(1),
            ..Default::default()
        });
        assert_eq!(height(&n, &pods).0, Some(8));
        pods[1] = pod("net-sts-1", Some("127.0.0.3"), false);
        pods[0] = pod("net-sts-0", Some("127.0.0.2"), false);
        assert_eq!(height(&n, &pods).0, Some(7), "net-sts-2, the lowest ready");
    }

    /// A status computed again from the same observation is equal (no
    /// write at rest), mining status included.
    #[test]
    fn same_chain_same_status() {
        let pods = ready3();
        let mut n = net();
        n.spec.mining = Some(crate::api::MiningSpec {
            initial_blocks: Some(101),
            interval: Some("30s".into()),
            ..Default::default()
        });
        let mining = MiningStatus {
            address: "bcrt1q".into(),
            last_block_time: Some(now()),
            blocks_mined: 101,
        };
        let first = compute(
            &n,
            nodes(&n, &pods, &at(&pods, 101)),
            true,
            Some(mining.clone()),
            None,
            None,
            &now(),
        );
        let again = compute(
            &n,
            nodes(&n, &pods, &at(&pods, 101)),
            true,
            Some(mining),
            None,
            Some(&first),
            &later(),
        );
        assert_eq!(first, again);
        assert_eq!(cond(&first, "Ready"), ("True", "NetworkReady"));
    }

    #[test]
    fn transition_time_changes_only_with_the_status() {
        let n = net();
        let pods = ready3();
        let reports = at(&pods, 0);
        let first = compute(
            &n,
            nodes(&n, &pods, &reports),
            false,
            None,
            None,
            None,
            &now(),
        );
        // Same condition statuses a minute later: times are kept, so the
        // status is equal and not written again.
        let again = compute(
            &n,
            nodes(&n, &pods, &reports),
            false,
            None,
            None,
            Some(&first),
            &later(),
        );
        assert_eq!(first, again);
        // Ready flips: its time moves, Degraded's stays.
        let ready = compute(
            &n,
            nodes(&n, &pods, &reports),
            true,
            None,
            None,
            Some(&first),
            &later(),
        );
        let time = |s: &BitcoinNetworkStatus, t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(time(&ready, "Ready"), later());
        assert_eq!(time(&ready, "Degraded"), now());
    }

    #[test]
    fn rpc_access_only_with_spec_service_and_the_networks_own_service() {
        use crate::api::{RpcServiceSpec, ServiceType};
        use crate::controller::resources::{owner_reference, rpc_service};
        let mut n = net();
        n.metadata.uid = Some("uid-1".into());
        let spec = RpcServiceSpec {
            type_: ServiceType::NodePort,
        };
        let mut svc = rpc_service(&n, &spec, 1);
        svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = Some(31001);
        svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[1].node_port = Some(31002);
        // No spec.service: nothing, whatever exists.
        assert_eq!(rpc_access(&n, Some(&svc)), None);
        n.spec.service = Some(spec);
        // Not (yet) there: nothing.
        assert_eq!(rpc_access(&n, None), None);
        let want = RpcAccess {
            service: "net-rpc".into(),
            port: 18443,
            node_port: Some(31001),
            credentials_secret: "net".into(),
            node: Some(1),
        };
        assert_eq!(rpc_access(&n, Some(&svc)), Some(want.clone()));
        // The credentials Secret the user named.
        n.spec.secret = Some("mine".into());
        assert_eq!(
            rpc_access(&n, Some(&svc)).unwrap().credentials_secret,
            "mine"
        );
        n.spec.secret = None;
        // ClusterIP: no node port, even while the live one still has it.
        n.spec.service = Some(RpcServiceSpec {
            type_: ServiceType::ClusterIP,
        });
        assert_eq!(
            rpc_access(&n, Some(&svc)),
            Some(RpcAccess {
                node_port: None,
                ..want
            })
        );
        // Someone else's Service of that name: nothing.
        let mut other = n.clone();
        other.metadata.uid = Some("uid-2".into());
        svc.metadata.owner_references = Some(vec![owner_reference(&other)]);
        assert_eq!(rpc_access(&n, Some(&svc)), None);
    }
}
