//! Pure computation of a network's status from the pods in the cache and what
//! the nodes last answered over RPC.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;

use crate::api::{BitcoinNetwork, BitcoinNetworkNode, BitcoinNetworkStatus};
use crate::controller::resources::{dns_name, statefulset_name};

/// What one node reported during the last mesh sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeReport {
    pub connected_peers: u32,
    pub blocks: u64,
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
pub fn pod_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    pod.metadata.deletion_timestamp.is_none()
        && status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The status nodes, one per pod of the network's StatefulSet, by ordinal.
pub fn nodes<'a>(
    net: &BitcoinNetwork,
    pods: impl IntoIterator<Item = &'a Pod>,
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
                ip: pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .unwrap_or_default(),
                node_name: name.to_owned(),
                pod_name: name.to_owned(),
                dns_name: dns_name(net, name),
                connected_peers: report.map(|r| r.connected_peers),
                blocks: report.map(|r| r.blocks),
            })
        })
        .collect();
    nodes.sort_by_key(|n| n.ordinal);
    nodes
}

/// The full status for a network.
pub fn compute(net: &BitcoinNetwork, nodes: Vec<BitcoinNetworkNode>) -> BitcoinNetworkStatus {
    BitcoinNetworkStatus {
        ready_nodes: nodes.iter().filter(|n| n.ready).count() as i32,
        nodes,
        observed_generation: net.metadata.generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BitcoinNetworkSpec;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
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

    fn pod(name: &str, ip: Option<&str>, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                pod_ip: ip.map(Into::into),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
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
        assert!(!pod_ready(&Pod::default()));
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
            },
        )]);
        let status = compute(&n, nodes(&n, &pods, &reports));
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
        let status = compute(&n, nodes(&n, &[], &HashMap::new()));
        assert!(status.nodes.is_empty());
        assert_eq!(status.ready_nodes, 0);
    }
}
