//! The mesh beyond "everyone adds everyone": partitions for reorg tests
//! (`spec.partitions`) and a restarted node meshed again at once.

use std::time::Instant;

use bitcoin_controller::api::{BitcoinNetwork, BitcoinNetworkStatus, PartitionStatus};
use kube_client::api::{Patch, PatchParams};
use kube_client::{Api, Client};
use serde_json::{json, Value};

use crate::harness::*;

/// Another regtest address (P2PKH), so that two groups mining from the same
/// parent in the same second do not make identical blocks.
const OTHER_ADDRESS: &str = "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn";

async fn set_partitions(client: &Client, ns: &str, name: &str, partitions: Value) {
    Api::<BitcoinNetwork>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "partitions": partitions } })),
        )
        .await
        .expect("patch spec.partitions");
}

impl Nodes {
    /// The IPs (sorted) of the peers of the node at `ip` that are in `others`.
    async fn peers_among(&self, ip: &str, others: &[&String]) -> Result<Vec<String>, String> {
        let mut peers = self.peer_ips(ip).await?;
        peers.retain(|p| others.contains(&p));
        Ok(peers)
    }
}

/// `kubectl get` and `kubectl describe` of the network, printed for the
/// README's partition section.
fn show(ns: &str, name: &str) {
    for args in [
        vec!["get", "bcn", name, "-n", ns],
        vec!["describe", "bcn", name, "-n", ns],
    ] {
        let (ok, out, err) = kubectl(&args);
        assert!(ok, "kubectl {args:?}: {err}");
        println!("$ kubectl {}\n{out}", args.join(" "));
    }
}

/// Issue 13: partition a 3-node network into [[0, 1], [2]]; each side mines
/// its own chain (5 blocks on node 0, 10 on node 2); the groups report
/// different tips in `status.partitions` and have no connection to each
/// other; removing `spec.partitions` heals the mesh and nodes 0 and 1
/// reorganise to node 2's longer chain.
#[tokio::test]
async fn partition_mines_apart_and_heals_to_the_most_work_chain() {
    let admin = admin_client().await;
    let _controller = ControllerProcess::start("partition", &[]);
    let ns = TestNamespace::create(&admin, "e2e-partition").await;
    create_network(&admin, &ns.name, "net", 3).await;
    let (status, _) = wait_for_status(&admin, &ns.name, "net", "3 ready nodes", all_ready(3)).await;
    let ips = ips(&status);
    let nodes = Nodes::for_network(&admin, &ns.name, "net").await;
    nodes.wait_for_mesh(&ips).await;

    // Split: 0 and 1 against 2.
    let split = Instant::now();
    set_partitions(&admin, &ns.name, "net", json!([[0, 1], [2]])).await;
    let (_, took) = wait_for("the groups cut apart", CONVERGE, || async {
        let a = nodes.peers_among(&ips[0], &[&ips[1], &ips[2]]).await?;
        let b = nodes.peers_among(&ips[1], &[&ips[0], &ips[2]]).await?;
        let c = nodes.peers_among(&ips[2], &[&ips[0], &ips[1]]).await?;
        let added = [
            nodes.added_nodes(&ips[0]).await?,
            nodes.added_nodes(&ips[1]).await?,
            nodes.added_nodes(&ips[2]).await?,
        ];
        let want_added = [
            vec![format!("{}:18444", ips[1])],
            vec![format!("{}:18444", ips[0])],
            vec![],
        ];
        if a == [ips[1].clone()] && b == [ips[0].clone()] && c.is_empty() && added == want_added {
            Ok(())
        } else {
            Err(format!("peers {a:?} {b:?} {c:?}, added {added:?}"))
        }
    })
    .await;
    report("partition", "groups [[0,1],[2]] cut apart", took);
    assert!(split.elapsed() >= took);

    // Each side mines its own chain.
    let tip_a = nodes.mine(&ips[0], 5).await;
    nodes
        .call(
            &ips[2],
            "generatetoaddress",
            vec![10.into(), OTHER_ADDRESS.into()],
        )
        .await
        .expect("mine on node 2");
    let tip_b = nodes
        .call(&ips[2], "getbestblockhash", vec![])
        .await
        .unwrap();
    assert_ne!(tip_a, tip_b);
    nodes.wait_for_tip(&ips[..2], &tip_a).await;
    let want = vec![
        PartitionStatus {
            nodes: vec![0, 1],
            height: Some(5),
            best_block_hash: tip_a.as_str().map(str::to_owned),
        },
        PartitionStatus {
            nodes: vec![2],
            height: Some(10),
            best_block_hash: tip_b.as_str().map(str::to_owned),
        },
    ];
    let expected = want.clone();
    let (_, took) = wait_for_status(
        &admin,
        &ns.name,
        "net",
        "status.partitions with each group's tip",
        move |s: &BitcoinNetworkStatus| s.partitions.as_ref() == Some(&expected),
    )
    .await;
    report("partition", "status.partitions shows both tips", took);
    // Still apart: no connection across the groups on either side.
    for (ip, others) in [
        (&ips[0], vec![&ips[2]]),
        (&ips[1], vec![&ips[2]]),
        (&ips[2], vec![&ips[0], &ips[1]]),
    ] {
        let across = nodes.peers_among(ip, &others).await.unwrap();
        assert!(across.is_empty(), "{ip} is connected to {across:?}");
    }
    assert_eq!(
        nodes
            .call(&ips[2], "getbestblockhash", vec![])
            .await
            .unwrap(),
        tip_b
    );
    show(&ns.name, "net");

    // Heal: one mesh again, everyone on node 2's chain (more work).
    let heal = Instant::now();
    set_partitions(&admin, &ns.name, "net", Value::Null).await;
    let took = nodes.wait_for_tip(&ips, &tip_b).await;
    report("partition", "healed: every node on the most-work tip", took);
    nodes.wait_for_mesh(&ips).await;
    report("partition", "healed: full mesh", heal.elapsed());
    wait_for_status(
        &admin,
        &ns.name,
        "net",
        "no status.partitions, every node at height 10",
        |s: &BitcoinNetworkStatus| {
            s.partitions.is_none() && s.nodes.iter().all(|n| n.blocks == Some(10))
        },
    )
    .await;
    // A real reorganisation on 0 and 1: their block 5 is node 2's now.
    let b5 = nodes
        .call(&ips[2], "getblockhash", vec![5.into()])
        .await
        .unwrap();
    assert_ne!(b5, tip_a);
    for ip in &ips[..2] {
        assert_eq!(
            nodes
                .call(ip, "getblockhash", vec![5.into()])
                .await
                .unwrap(),
            b5,
            "{ip} left node 0's chain"
        );
    }
    show(&ns.name, "net");
    ns.delete().await;
}
