//! End-to-end tests against the local control plane (real kube-apiserver,
//! kube-controller-manager and etcd, RBAC on, pods played by the pod
//! simulator with regtest nodes). The controller runs as a separate process
//! under its own ServiceAccount kubeconfig.
//!
//! Built only with `--features e2e`; run them with `scripts/test.sh`.

mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use bitcoin_controller::api::BitcoinNetwork;
use bitcoin_controller::controller::resources::is_controlled_by;
use harness::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube_client::Api;
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(120);

/// Scenarios 1 and 2 of the blog series: a 3-node network comes up fully
/// meshed with its status filled in, and 101 blocks mined on node 0 reach
/// every node.
#[tokio::test]
async fn create_mesh_and_propagate_blocks() {
    let admin = admin_client().await;
    let _controller = ControllerProcess::start("create", &[]);
    let ns = TestNamespace::create(&admin, "e2e-create").await;
    let net = create_network(&admin, &ns.name, "net", 3).await;

    // Owned objects with controller owner references.
    let sts: Api<StatefulSet> = Api::namespaced(admin.clone(), &ns.name);
    let svc: Api<Service> = Api::namespaced(admin.clone(), &ns.name);
    let (sts, _) = wait_for("StatefulSet net-sts", CONVERGE, || async {
        sts.get_opt("net-sts")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "absent".to_string())
    })
    .await;
    assert!(
        is_controlled_by(&sts.metadata, &net),
        "{:?}",
        sts.metadata.owner_references
    );
    let svc = svc.get("net-svc").await.expect("Service net-svc");
    assert!(is_controlled_by(&svc.metadata, &net));
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("None"));

    // Status: 3 ready nodes with ordinal, IP, pod name and DNS name.
    let nets: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);
    let (status, took) = wait_for("3 ready nodes in the status", CONVERGE, || async {
        let n = nets.get("net").await.map_err(|e| e.to_string())?;
        match n.status {
            Some(s) if s.ready_nodes == 3 && s.nodes.len() == 3 => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    report("create", "3 nodes ready in status", took);
    for (i, node) in status.nodes.iter().enumerate() {
        assert_eq!(node.ordinal, i as i32);
        assert_eq!(node.pod_name, format!("net-sts-{i}"));
        assert_eq!(node.node_name, node.pod_name);
        assert_eq!(
            node.dns_name,
            format!("net-sts-{i}.net-svc.{}.svc.cluster.local", ns.name)
        );
        assert!(node.ip.starts_with("127."), "{node:?}");
    }
    let ips: Vec<String> = status.nodes.iter().map(|n| n.ip.clone()).collect();

    // Every node has exactly the other two added, and is connected to them.
    let nodes = Nodes::for_network(&admin, &ns.name, "net").await;
    let (_, took) = wait_for("full mesh", CONVERGE, || async {
        let mut seen = BTreeMap::new();
        for ip in &ips {
            let mut want: Vec<String> = ips
                .iter()
                .filter(|o| *o != ip)
                .map(|o| format!("{o}:18444"))
                .collect();
            want.sort();
            let added = nodes.added_nodes(ip).await?;
            let mut peers = nodes.peer_ips(ip).await?;
            peers.retain(|p| p != ip);
            let mut want_peers: Vec<String> = ips.iter().filter(|o| *o != ip).cloned().collect();
            want_peers.sort();
            if added != want || peers != want_peers {
                seen.insert(ip.clone(), (added, peers));
            }
        }
        if seen.is_empty() {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;
    report("create", "full mesh (added nodes and peers)", took);

    // Scenario 2: 101 blocks mined on node 0 reach every node.
    nodes
        .call(
            &ips[0],
            "generatetoaddress",
            vec![json!(101), json!(MINING_ADDRESS)],
        )
        .await
        .expect("mine 101 blocks");
    let tip = nodes
        .call(&ips[0], "getbestblockhash", vec![])
        .await
        .expect("tip");
    let (_, took) = wait_for("every node at the same tip", CONVERGE, || async {
        let mut behind = Vec::new();
        for ip in &ips {
            let info = nodes.call(ip, "getblockchaininfo", vec![]).await?;
            if info["bestblockhash"] != tip || info["blocks"] != 101 {
                behind.push(format!(
                    "{ip}: {} {}",
                    info["blocks"], info["bestblockhash"]
                ));
            }
        }
        if behind.is_empty() {
            Ok(())
        } else {
            Err(behind.join(", "))
        }
    })
    .await;
    report("propagation", "101 blocks on every node", took);

    ns.delete().await;
}

/// Scenario 11: the controller's ServiceAccount can do what the controller
/// needs and is refused what it does not, shown by real API answers.
#[tokio::test]
async fn service_account_has_least_privilege() {
    use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
    use kube_client::api::{DeleteParams, ListParams};

    let sa = controller_client().await;
    let forbidden = |r: Result<(), kube_client::Error>, what: &str| match r {
        Err(kube_client::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    };
    // Allowed: what the controller needs.
    let lp = ListParams::default().limit(1);
    Api::<BitcoinNetwork>::all(sa.clone())
        .list(&lp)
        .await
        .expect("list networks");
    Api::<StatefulSet>::all(sa.clone())
        .list(&lp)
        .await
        .expect("list statefulsets");
    Api::<Pod>::all(sa.clone())
        .list(&lp)
        .await
        .expect("list pods");
    // Refused: everything else.
    forbidden(
        Api::<Node>::all(sa.clone()).list(&lp).await.map(drop),
        "list nodes",
    );
    forbidden(
        Api::<Namespace>::all(sa.clone())
            .delete("default", &DeleteParams::default())
            .await
            .map(drop),
        "delete a namespace",
    );
    forbidden(
        Api::<Pod>::namespaced(sa.clone(), "default")
            .delete("anything", &DeleteParams::default())
            .await
            .map(drop),
        "delete a pod",
    );
    forbidden(
        Api::<StatefulSet>::namespaced(sa.clone(), "default")
            .delete("anything", &DeleteParams::default())
            .await
            .map(drop),
        "delete a StatefulSet",
    );
    forbidden(
        Api::<BitcoinNetwork>::namespaced(sa.clone(), "default")
            .delete("anything", &DeleteParams::default())
            .await
            .map(drop),
        "delete a network",
    );
}
