//! Pure: the groups of a partitioned network (`spec.partitions`) and what
//! `status.partitions` says about each.

use std::collections::HashMap;

use crate::api::{BitcoinNetworkNode, PartitionStatus};
use crate::controller::status::NodeReport;

/// The groups the nodes `0..nodes` mesh in: each group of `partitions` (its
/// ordinals below `nodes`, in the order given), then one group of the
/// ordinals no group names, if any. Empty when `partitions` is: one full
/// mesh, no groups.
pub fn groups(partitions: &[Vec<i32>], nodes: i32) -> Vec<Vec<i32>> {
    if partitions.is_empty() {
        return Vec::new();
    }
    let mut groups: Vec<Vec<i32>> = partitions
        .iter()
        .map(|g| {
            g.iter()
                .copied()
                .filter(|o| (0..nodes).contains(o))
                .collect()
        })
        .collect();
    let rest: Vec<i32> = (0..nodes)
        .filter(|o| !partitions.iter().any(|g| g.contains(o)))
        .collect();
    if !rest.is_empty() {
        groups.push(rest);
    }
    groups
}

/// Index of the group of `ordinal` (the first that names it). Without
/// groups every node is in group 0.
pub fn group_of(groups: &[Vec<i32>], ordinal: i32) -> usize {
    groups
        .iter()
        .position(|g| g.contains(&ordinal))
        .unwrap_or(0)
}

/// `status.partitions`: per group, the highest chain its ready nodes
/// reported (on equal height the lowest ordinal's); `None` when the network
/// is not partitioned. A group whose nodes reported nothing has no height.
pub fn status(
    groups: &[Vec<i32>],
    nodes: &[BitcoinNetworkNode],
    reports: &HashMap<String, NodeReport>,
) -> Option<Vec<PartitionStatus>> {
    if groups.is_empty() {
        return None;
    }
    let tip_of = |ordinal: i32| {
        let node = nodes.iter().find(|n| n.ordinal == ordinal && n.ready)?;
        let report = reports.get(&node.pod_name)?;
        Some((report.blocks, report.best_block_hash.clone()))
    };
    let entries = groups
        .iter()
        .map(|group| {
            let mut sorted = group.clone();
            sorted.sort_unstable();
            // Highest first; on a tie the lowest ordinal (max_by_key keeps
            // the last maximum, so walk the ordinals from the highest).
            let best = sorted
                .iter()
                .rev()
                .filter_map(|o| tip_of(*o))
                .max_by_key(|(height, _)| *height);
            PartitionStatus {
                nodes: sorted,
                height: best
                    .as_ref()
                    .map(|(h, _)| i64::try_from(*h).unwrap_or(i64::MAX)),
                best_block_hash: best.map(|(_, hash)| hash),
            }
        })
        .collect();
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_table() {
        type Case<'a> = (&'a [&'a [i32]], i32, &'a [&'a [i32]]);
        let cases: &[Case] = &[
            // (spec.partitions, spec.nodes, groups)
            (&[], 3, &[]),
            (&[&[0, 1], &[2]], 3, &[&[0, 1], &[2]]),
            // Unnamed nodes form one more group.
            (&[&[0]], 3, &[&[0], &[1, 2]]),
            (&[&[2], &[0]], 4, &[&[2], &[0], &[1, 3]]),
            // Ordinals of nodes that do not exist (scaled down) are left out.
            (&[&[0, 5], &[1]], 2, &[&[0], &[1]]),
            // Everything named: no extra group.
            (&[&[1, 0]], 2, &[&[1, 0]]),
        ];
        for (partitions, nodes, want) in cases {
            let partitions: Vec<Vec<i32>> = partitions.iter().map(|g| g.to_vec()).collect();
            let want: Vec<Vec<i32>> = want.iter().map(|g| g.to_vec()).collect();
            assert_eq!(
                groups(&partitions, *nodes),
                want,
                "{partitions:?} of {nodes}"
            );
        }
    }

    #[test]
    fn group_of_table() {
        let g = groups(&[vec![0, 1], vec![2]], 4);
        assert_eq!([0, 1, 2, 3].map(|o| group_of(&g, o)), [0, 0, 1, 2], "{g:?}");
        assert_eq!(group_of(&[], 7), 0, "no partitions: one group");
    }

    fn node(ordinal: i32, ready: bool) -> BitcoinNetworkNode {
        BitcoinNetworkNode {
            ordinal,
            ready,
            pod_name: format!("n-sts-{ordinal}"),
            ..Default::default()
        }
    }

    fn report(blocks: u64, hash: &str) -> NodeReport {
        NodeReport {
            blocks,
            best_block_hash: hash.into(),
            ..Default::default()
        }
    }

    #[test]
    fn status_table() {
        let nodes = [node(0, true), node(1, true), node(2, true), node(3, false)];
        let reports: HashMap<String, NodeReport> = [
            ("n-sts-0", report(105, "a5")),
            ("n-sts-1", report(104, "a4")),
            ("n-sts-2", report(110, "b10")),
            ("n-sts-3", report(200, "stale")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let entry = |nodes: &[i32], tip: Option<(i64, &str)>| PartitionStatus {
            nodes: nodes.to_vec(),
            height: tip.map(|t| t.0),
            best_block_hash: tip.map(|t| t.1.to_owned()),
        };
        type Case<'a> = (&'a [&'a [i32]], Option<Vec<PartitionStatus>>);
        let cases: Vec<Case> = vec![
            // Not partitioned: no status.partitions.
            (&[], None),
            // The highest chain of each group; node 3 is not ready, so its
            // report does not count and its group has no chain.
            (
                &[&[1, 0], &[2]],
                Some(vec![
                    entry(&[0, 1], Some((105, "a5"))),
                    entry(&[2], Some((110, "b10"))),
                    entry(&[3], None),
                ]),
            ),
            // Everyone in one named group: the best of all ready nodes.
            (
                &[&[0, 1, 2, 3]],
                Some(vec![entry(&[0, 1, 2, 3], Some((110, "b10")))]),
            ),
        ];
        for (partitions, want) in cases {
            let partitions: Vec<Vec<i32>> = partitions.iter().map(|g| g.to_vec()).collect();
            let g = groups(&partitions, 4);
            assert_eq!(status(&g, &nodes, &reports), want, "{partitions:?}");
        }
        // Equal heights: the lowest ordinal's tip.
        let tie: HashMap<String, NodeReport> =
            [("n-sts-0", report(7, "x")), ("n-sts-1", report(7, "y"))]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
        let g = groups(&[vec![1, 0]], 2);
        assert_eq!(
            status(&g, &nodes[..2], &tie),
            Some(vec![entry(&[0, 1], Some((7, "x")))])
        );
    }
}
