//! End-to-end tests against the local control plane (real kube-apiserver,
//! kube-controller-manager and etcd, RBAC on). On the podsim lane pods are
//! played by the pod simulator with regtest nodes and the controller runs as
//! a separate process under its own ServiceAccount kubeconfig; on the
//! kubelet lane (a real node) the same scenarios run against real pods of
//! the node test image, with the controller in-cluster (see harness.rs).
//! `ops` stays podsim-only: it controls local controller processes.
//!
//! Built only with `--features e2e`; run them with `scripts/test.sh`.

mod access;
mod harness;
mod mesh;
mod mining;
mod node;
mod ops;
mod options;
mod secrets;
mod storage;

use std::time::Duration;

use bitcoin_controller::api::BitcoinNetwork;
use bitcoin_controller::controller::resources::is_controlled_by;
use harness::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube_client::api::PostParams;
use kube_client::Api;
use serde_json::json;

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
    let (status, took) =
        wait_for_status(&admin, &ns.name, "net", "3 ready nodes", all_ready(3)).await;
    report("create", "3 nodes ready in status", took);
    for (i, node) in status.nodes.iter().enumerate() {
        assert_eq!(node.ordinal, i as i32);
        assert_eq!(node.pod_name, format!("net-sts-{i}"));
        assert_eq!(node.node_name, node.pod_name);
        assert_eq!(
            node.dns_name,
            format!("net-sts-{i}.net-svc.{}.svc.cluster.local", ns.name)
        );
        assert!(node.ip.starts_with(&pod_ip_prefix()), "{node:?}");
    }
    let ips = ips(&status);

    // Every node has exactly the other two added, and is connected to them.
    let nodes = Nodes::for_network(&admin, &ns.name, "net").await;
    report(
        "create",
        "full mesh (added nodes and peers)",
        nodes.wait_for_mesh(&ips).await,
    );

    // Scenario 2: 101 blocks mined on node 0 reach every node.
    let tip = nodes.mine(&ips[0], 101).await;
    report(
        "propagation",
        "101 blocks on every node",
        nodes.wait_for_tip(&ips, &tip).await,
    );
    for ip in &ips {
        assert_eq!(nodes.call(ip, "getblockcount", vec![]).await.unwrap(), 101);
    }

    ns.delete().await;
}

/// What pod IPs start with on this lane: podsim's loopback addresses, or the
/// real node's pod subnet (the node address is its .1).
fn pod_ip_prefix() -> String {
    if real_node_lane() {
        let node_ip = std::env::var("BC_NODE_IP").expect("BC_NODE_IP on the kubelet lane");
        let (net, _) = node_ip.rsplit_once('.').expect("an IPv4 node address");
        format!("{net}.")
    } else {
        "127.".to_owned()
    }
}

/// Scenario 11: the controller's ServiceAccount can do what the controller
/// needs and is refused what it does not, shown by real API answers.
#[tokio::test]
async fn service_account_has_least_privilege() {
    use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
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
    // Services may be deleted (the N-rpc Service when spec.service goes):
    // a missing one is 404, not 403.
    match Api::<Service>::namespaced(sa.clone(), "default")
        .delete("bc-e2e-no-such-service", &DeleteParams::default())
        .await
    {
        Err(kube_client::Error::Api(s)) if s.code == 404 => {}
        other => panic!("delete a Service: expected 404 (allowed, absent), got {other:?}"),
    }
    // Secrets only where a namespace granted them (the harness's test
    // namespaces bind bitcoin-controller-secrets, as users do).
    // The API server authorizes from an RBAC cache fed by a watch: a
    // RoleBinding just created may not be in it yet (403 for a moment).
    // Poll, bounded, until the grant takes effect.
    let granted = TestNamespace::create(&admin_client().await, "e2e-rbac").await;
    let secrets = Api::<Secret>::namespaced(sa.clone(), &granted.name);
    let (_, took) = wait_for(
        "list Secrets in a namespace that granted them",
        Duration::from_secs(30),
        || async { secrets.list(&lp).await.map(drop).map_err(|e| e.to_string()) },
    )
    .await;
    println!(
        "Secrets readable {:.2}s after the RoleBinding",
        took.as_secs_f64()
    );
    granted.delete().await;
    // Refused: everything else.
    forbidden(
        Api::<Secret>::all(sa.clone()).list(&lp).await.map(drop),
        "list Secrets of every namespace",
    );
    forbidden(
        Api::<Secret>::namespaced(sa.clone(), "kube-system")
            .list(&lp)
            .await
            .map(drop),
        "list Secrets in kube-system",
    );
    forbidden(
        Api::<Secret>::namespaced(sa.clone(), "default")
            .get("anything")
            .await
            .map(drop),
        "read a Secret in a namespace that did not grant it",
    );
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

/// Scenario 3: deleting pod 0 brings a replacement with a new address that is
/// added both ways and syncs to the tip; the old address is gone everywhere.
#[tokio::test]
async fn pod_loss_is_repaired() {
    use k8s_openapi::api::core::v1::Pod;
    use kube_client::api::DeleteParams;

    let admin = admin_client().await;
    let _controller = ControllerProcess::start("pod-loss", &[]);
    let ns = TestNamespace::create(&admin, "e2e-podloss").await;
    create_network(&admin, &ns.name, "net", 3).await;
    let (status, _) = wait_for_status(&admin, &ns.name, "net", "3 ready nodes", all_ready(3)).await;
    let before = ips(&status);
    let nodes = Nodes::for_network(&admin, &ns.name, "net").await;
    nodes.wait_for_mesh(&before).await;
    let tip = nodes.mine(&before[1], 20).await;
    nodes.wait_for_tip(&before, &tip).await;

    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    pods.delete("net-sts-0", &DeleteParams::default())
        .await
        .expect("delete pod 0");
    let old_ip = before[0].clone();
    let (status, took) = wait_for_status(
        &admin,
        &ns.name,
        "net",
        "pod 0 replaced with a new address",
        |s| all_ready(3)(s) && s.nodes[0].ip != old_ip,
    )
    .await;
    report("pod-loss", "replacement ready in status", took);
    let after = ips(&status);
    let took = nodes.wait_for_mesh(&after).await;
    report(
        "pod-loss",
        "replacement meshed both ways, old address removed",
        took,
    );
    let took = nodes.wait_for_tip(&after, &tip).await;
    report("pod-loss", "replacement synced to the tip", took);
    for ip in &after {
        let added = nodes.added_nodes(ip).await.unwrap();
        assert!(
            !added.iter().any(|a| a.starts_with(&format!("{old_ip}:"))),
            "{ip} still has {old_ip}: {added:?}"
        );
    }
    ns.delete().await;
}

/// Scenario 4: scaling the network up to 4 and down to 2.
#[tokio::test]
async fn scale_up_and_down() {
    use kube_client::api::{Patch, PatchParams};

    let admin = admin_client().await;
    let _controller = ControllerProcess::start("scale", &[]);
    let ns = TestNamespace::create(&admin, "e2e-scale").await;
    create_network(&admin, &ns.name, "net", 3).await;
    let (status, _) = wait_for_status(&admin, &ns.name, "net", "3 ready nodes", all_ready(3)).await;
    let nodes = Nodes::for_network(&admin, &ns.name, "net").await;
    nodes.wait_for_mesh(&ips(&status)).await;
    let tip = nodes.mine(&ips(&status)[0], 15).await;

    let nets: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);
    let scale = |n: i32| {
        let nets = nets.clone();
        async move {
            nets.patch(
                "net",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"nodes": n}})),
            )
            .await
            .expect("scale network");
        }
    };
    scale(4).await;
    let (status, took) =
        wait_for_status(&admin, &ns.name, "net", "4 ready nodes", all_ready(4)).await;
    report("scale", "up to 4: ready in status", took);
    let four = ips(&status);
    let took = nodes.wait_for_mesh(&four).await;
    report("scale", "up to 4: meshed", took);
    let took = nodes.wait_for_tip(&four, &tip).await;
    report("scale", "up to 4: new node synced", took);

    scale(2).await;
    let (status, took) = wait_for_status(&admin, &ns.name, "net", "2 nodes", all_ready(2)).await;
    report("scale", "down to 2: status", took);
    let two = ips(&status);
    assert_eq!(two, four[..2].to_vec());
    let took = nodes.wait_for_mesh(&two).await;
    report(
        "scale",
        "down to 2: removed nodes gone from the added lists",
        took,
    );
    // Nodes that fail RPC because they are being removed are no problem of
    // the network: no Warning, never Degraded.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(admin.clone(), &ns.name);
    // On the real node the kubelet warns too (e.g. `Unhealthy`: a readiness
    // probe that ran before bitcoind answered); those are not the
    // network's and are only printed.
    let (kubelet_warnings, warnings): (Vec<_>, Vec<_>) = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .partition(|e| {
            real_node_lane()
                && e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("kubelet")
        });
    for e in &kubelet_warnings {
        println!(
            "kubelet Warning (not the network's): {:?} {:?}: {:?}",
            e.involved_object.name, e.reason, e.message
        );
    }
    let warnings: Vec<_> = warnings
        .into_iter()
        .map(|e| format!("{:?}: {:?}", e.reason, e.message))
        .collect();
    assert_eq!(
        warnings,
        Vec::<String>::new(),
        "no Warning on an ordinary scale-down"
    );
    ns.delete().await;
}

/// Scenario 5: a StatefulSet scaled by hand is put back at once (the
/// controller runs with a 10 minute resync, so only events can do it).
#[tokio::test]
async fn drift_is_put_back_without_resync() {
    use kube_client::api::{Patch, PatchParams};

    let admin = admin_client().await;
    let _controller = ControllerProcess::start("drift", &["--resync-period", "10m"]);
    real_node_note(
        "drift_is_put_back_without_resync",
        "the in-cluster controller resyncs every 30s (manifests/controller.yaml), \
         so here the test shows the put-back, not that events alone did it (podsim shows that)",
    );
    let ns = TestNamespace::create(&admin, "e2e-drift").await;
    create_network(&admin, &ns.name, "net", 3).await;
    wait_for_status(&admin, &ns.name, "net", "3 ready nodes", all_ready(3)).await;

    let sts: Api<StatefulSet> = Api::namespaced(admin.clone(), &ns.name);
    sts.patch(
        "net-sts",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .expect("scale by hand");
    let (_, took) = wait_for("replicas back to 3", CONVERGE, || async {
        let s = sts.get("net-sts").await.map_err(|e| e.to_string())?;
        match s.spec.and_then(|s| s.replicas) {
            Some(3) => Ok(()),
            other => Err(format!("replicas {other:?}")),
        }
    })
    .await;
    // CONVERGE (2 min) is far below the 10 min resync: only the
    // StatefulSet's update event can have done this.
    report("drift", "hand-scaled StatefulSet put back", took);
    let (_, took) =
        wait_for_status(&admin, &ns.name, "net", "3 ready nodes again", all_ready(3)).await;
    report("drift", "network back to 3 ready nodes", took);
    ns.delete().await;
}

/// Scenario 6: deleting the network removes everything it owns through the
/// garbage collector, for foreground and background propagation.
#[tokio::test]
async fn delete_cascades() {
    use k8s_openapi::api::core::v1::{Pod, Secret};
    use kube_client::api::{DeleteParams, ListParams};

    let admin = admin_client().await;
    let _controller = ControllerProcess::start("delete", &[]);
    let ns = TestNamespace::create(&admin, "e2e-delete").await;
    for (name, params) in [
        ("fg", DeleteParams::foreground()),
        ("bg", DeleteParams::background()),
    ] {
        create_network(&admin, &ns.name, name, 2).await;
        wait_for_status(&admin, &ns.name, name, "2 ready nodes", all_ready(2)).await;
        let nets: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);
        nets.delete(name, &params).await.expect("delete network");
        let selector = format!("bitcoincontroller.christianb93.github.com/network={name}");
        let lp = ListParams::default().labels(&selector);
        let (_, took) = wait_for("every owned object gone", CONVERGE, || async {
            let count = |n: usize, what: &str| {
                if n == 0 {
                    String::new()
                } else {
                    format!("{n} {what} ")
                }
            };
            let left = [
                count(
                    Api::<StatefulSet>::namespaced(admin.clone(), &ns.name)
                        .list(&lp)
                        .await
                        .map_err(|e| e.to_string())?
                        .items
                        .len(),
                    "statefulsets",
                ),
                count(
                    Api::<Service>::namespaced(admin.clone(), &ns.name)
                        .list(&lp)
                        .await
                        .map_err(|e| e.to_string())?
                        .items
                        .len(),
                    "services",
                ),
                count(
                    Api::<Secret>::namespaced(admin.clone(), &ns.name)
                        .list(&lp)
                        .await
                        .map_err(|e| e.to_string())?
                        .items
                        .len(),
                    "secrets",
                ),
                count(
                    Api::<Pod>::namespaced(admin.clone(), &ns.name)
                        .list(&lp)
                        .await
                        .map_err(|e| e.to_string())?
                        .items
                        .len(),
                    "pods",
                ),
                count(
                    usize::from(
                        nets.get_opt(name)
                            .await
                            .map_err(|e| e.to_string())?
                            .is_some(),
                    ),
                    "networks",
                ),
            ]
            .concat();
            if left.is_empty() {
                Ok(())
            } else {
                Err(left)
            }
        })
        .await;
        report("delete", &format!("{name}: everything owned is gone"), took);
    }
    ns.delete().await;
}

/// Scenario 7: the controller killed in the middle of a scale converges after
/// a restart, with no duplicates and no stale added nodes. On the real node
/// the leader's pod is deleted instead: the standby replica takes over (and
/// the Deployment replaces the pod).
#[tokio::test]
async fn restart_mid_scale_converges() {
    use k8s_openapi::api::core::v1::Secret;
    use kube_client::api::{ListParams, Patch, PatchParams};

    let admin = admin_client().await;
    let controller = ControllerProcess::start("restart-1", &[]);
    let ns = TestNamespace::create(&admin, "e2e-restart").await;
    create_network(&admin, &ns.name, "net", 3).await;
    let (status, _) = wait_for_status(&admin, &ns.name, "net", "3 ready nodes", all_ready(3)).await;
    let nodes = Nodes::for_network(&admin, &ns.name, "net").await;
    nodes.wait_for_mesh(&ips(&status)).await;

    let nets: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);
    nets.patch(
        "net",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"nodes": 5}})),
    )
    .await
    .expect("scale up");
    // Let the scale start, then crash the controller.
    let sts: Api<StatefulSet> = Api::namespaced(admin.clone(), &ns.name);
    wait_for("StatefulSet scaled to 5", CONVERGE, || async {
        let s = sts.get("net-sts").await.map_err(|e| e.to_string())?;
        if s.spec.and_then(|s| s.replicas) == Some(5) {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await;
    controller.kill();
    // While it is down, scale down again: the restarted controller must both
    // finish and undo work it never saw.
    nets.patch(
        "net",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"nodes": 4}})),
    )
    .await
    .expect("scale down while the controller is down");

    let _controller = ControllerProcess::start("restart-2", &[]);
    let (status, took) =
        wait_for_status(&admin, &ns.name, "net", "4 ready nodes", all_ready(4)).await;
    report("restart", "4 nodes ready after the restart", took);
    let took = nodes.wait_for_mesh(&ips(&status)).await;
    report("restart", "mesh of 4, no stale added nodes", took);
    let selector = "bitcoincontroller.christianb93.github.com/network=net";
    let lp = ListParams::default().labels(selector);
    assert_eq!(sts.list(&lp).await.unwrap().items.len(), 1);
    assert_eq!(
        Api::<Service>::namespaced(admin.clone(), &ns.name)
            .list(&lp)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    // The credentials and the rendered configuration, once each.
    assert_eq!(
        Api::<Secret>::namespaced(admin.clone(), &ns.name)
            .list(&lp)
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    ns.delete().await;
}

/// Scenario 8: two networks of the same name in two namespaces form two
/// separate meshes.
#[tokio::test]
async fn networks_are_isolated() {
    let admin = admin_client().await;
    let _controller = ControllerProcess::start("isolation", &[]);
    let a = TestNamespace::create(&admin, "e2e-iso-a").await;
    let b = TestNamespace::create(&admin, "e2e-iso-b").await;
    create_network(&admin, &a.name, "net", 3).await;
    create_network(&admin, &b.name, "net", 3).await;
    let (sa, _) = wait_for_status(&admin, &a.name, "net", "a: 3 ready", all_ready(3)).await;
    let (sb, _) = wait_for_status(&admin, &b.name, "net", "b: 3 ready", all_ready(3)).await;
    let (ia, ib) = (ips(&sa), ips(&sb));
    let na = Nodes::for_network(&admin, &a.name, "net").await;
    let nb = Nodes::for_network(&admin, &b.name, "net").await;
    report("isolation", "mesh a", na.wait_for_mesh(&ia).await);
    report("isolation", "mesh b", nb.wait_for_mesh(&ib).await);
    // Different credentials per network, and no cross-network entries.
    for ip in &ia {
        assert!(
            nb.call(ip, "getblockcount", vec![]).await.is_err(),
            "b's credentials work on a's node {ip}"
        );
        let added = na.added_nodes(ip).await.unwrap();
        assert!(
            added
                .iter()
                .all(|x| !ib.iter().any(|o| x.starts_with(&format!("{o}:")))),
            "{ip}: {added:?}"
        );
    }
    for ip in &ib {
        let added = nb.added_nodes(ip).await.unwrap();
        assert!(
            added
                .iter()
                .all(|x| !ia.iter().any(|o| x.starts_with(&format!("{o}:")))),
            "{ip}: {added:?}"
        );
    }
    a.delete().await;
    b.delete().await;
}

/// Scenario 9: invalid specs are refused by the API server with a clear
/// message; valid networks are unaffected.
#[tokio::test]
async fn invalid_specs_are_refused() {
    let admin = admin_client().await;
    let _controller = ControllerProcess::start("bad-input", &[]);
    let ns = TestNamespace::create(&admin, "e2e-bad").await;
    create_network(&admin, &ns.name, "good", 2).await;

    // POSTed as kubectl does, with strict server-side field validation.
    let url = format!(
        "/apis/bitcoincontroller.christianb93.github.com/v1/namespaces/{}/bitcoinnetworks?fieldValidation=Strict",
        ns.name
    );
    let long_name = "n".repeat(60);
    const SIZE: &str = "spec.storage.size must be a positive quantity of bytes";
    let cases = [
        (
            "negative",
            json!({"nodes": -1}),
            "should be greater than or equal to 0",
        ),
        (
            "too-many",
            json!({"nodes": 101}),
            "should be less than or equal to 100",
        ),
        (
            "wrong-type",
            json!({"nodes": "three"}),
            "must be of type integer",
        ),
        ("missing", json!({}), "spec.nodes: Required value"),
        (
            "unknown-field",
            json!({"nodes": 1, "replicas": 3}),
            "unknown field \"spec.replicas\"",
        ),
        // Names whose objects could not exist: the pods' revision label
        // would pass 63 characters; the Service name must be a DNS-1035 label.
        (
            long_name.as_str(),
            json!({"nodes": 1}),
            "metadata.name may have at most 48 characters",
        ),
        ("1net", json!({"nodes": 1}), "must be a DNS-1035 label"),
        (
            "bad-image",
            json!({"nodes": 1, "image": " bitcoin/bitcoin:29.0"}),
            "spec.image must be an image reference",
        ),
        (
            "partition-range",
            json!({"nodes": 3, "partitions": [[0, 1], [3]]}),
            "spec.partitions: every ordinal must be less than spec.nodes",
        ),
        (
            "partition-twice",
            json!({"nodes": 3, "partitions": [[0, 1], [1, 2]]}),
            "spec.partitions: an ordinal may be in one group only",
        ),
        (
            "partition-repeat",
            json!({"nodes": 3, "partitions": [[0, 0]]}),
            "spec.partitions[0][1]: Duplicate value: 0",
        ),
        (
            "partition-groups",
            json!({"nodes": 3, "partitions": [[0], [1], [2], [0], [1], [2], [0], [1], [2], [0], [1]]}),
            "spec.partitions: Too many: 11: must have at most 10 items",
        ),
        // spec.storage: a size must be a positive quantity, a class a name.
        (
            "size-zero",
            json!({"nodes": 1, "storage": {"size": "0"}}),
            SIZE,
        ),
        (
            "size-neg",
            json!({"nodes": 1, "storage": {"size": "-1Gi"}}),
            SIZE,
        ),
        (
            "size-words",
            json!({"nodes": 1, "storage": {"size": "a lot"}}),
            SIZE,
        ),
        (
            "size-unit",
            json!({"nodes": 1, "storage": {"size": "1GB"}}),
            SIZE,
        ),
        (
            "bad-class",
            json!({"nodes": 1, "storage": {"storageClassName": "Fast SSD"}}),
            "spec.storage.storageClassName must be the name of a StorageClass",
        ),
        (
            "storage-field",
            json!({"nodes": 1, "storage": {"sizeGi": 1}}),
            "unknown field \"spec.storage.sizeGi\"",
        ),
    ];
    for (name, spec, expected) in cases {
        let body = json!({
            "apiVersion": "bitcoincontroller.christianb93.github.com/v1",
            "kind": "BitcoinNetwork",
            "metadata": {"name": name},
            "spec": spec,
        });
        let request = http::Request::post(&url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap();
        match admin.request::<serde_json::Value>(request).await {
            Err(kube_client::Error::Api(s)) => {
                println!("{name}: refused with {}: {}", s.code, s.message);
                assert!(
                    s.message.contains(expected),
                    "{name}: message {:?} lacks {expected:?}",
                    s.message
                );
            }
            other => panic!("{name}: expected the API server to refuse it, got {other:?}"),
        }
    }

    let (_, took) = wait_for_status(
        &admin,
        &ns.name,
        "good",
        "the valid network is ready",
        all_ready(2),
    )
    .await;
    report("bad-input", "valid network ready beside refused ones", took);
    ns.delete().await;
}

/// Scenario 10: a node whose RPC hangs slows only its own network; another
/// network created at the same time converges as fast as without the fault,
/// and the hung node's peers stay connected to each other. The fault: podsim's
/// `rpc-hang` annotation, or on the real node the test image's `bc-fault
/// rpc-hang on` in the pod (its readiness probe then fails too).
#[tokio::test]
async fn slow_node_only_slows_its_own_network() {
    use k8s_openapi::api::core::v1::Pod;
    use kube_client::api::{Patch, PatchParams};

    let admin = admin_client().await;
    let _controller = ControllerProcess::start("slow-node", &["--workers", "2"]);
    let ns = TestNamespace::create(&admin, "e2e-slow").await;

    // Baseline: how long a 3-node network takes without any fault.
    create_network(&admin, &ns.name, "baseline", 3).await;
    let (_, baseline) =
        wait_for_status(&admin, &ns.name, "baseline", "baseline ready", all_ready(3)).await;
    report("slow-node", "baseline network ready (no fault)", baseline);

    create_network(&admin, &ns.name, "sick", 3).await;
    let (status, _) = wait_for_status(&admin, &ns.name, "sick", "sick ready", all_ready(3)).await;
    let sick_ips = ips(&status);
    if real_node_lane() {
        real_node_note(
            "slow_node_only_slows_its_own_network",
            "the in-cluster controller runs --workers=4 (manifests/controller.yaml), not 2",
        );
        let (ok, _, err) = kubectl(&[
            "exec",
            "-n",
            &ns.name,
            "sick-sts-1",
            "--",
            "bc-fault",
            "-datadir=/data",
            "rpc-hang",
            "on",
        ]);
        assert!(ok, "inject the RPC hang with bc-fault: {err}");
    } else {
        let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
        pods.patch(
            "sick-sts-1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"podsim.bitcoin-controller/rpc-hang": "true"}}}),
            ),
        )
        .await
        .expect("inject the RPC hang");
    }
    // Make the sick network reconcile while the node hangs.
    Api::<BitcoinNetwork>::namespaced(admin.clone(), &ns.name)
        .patch(
            "sick",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"poke": "1"}}})),
        )
        .await
        .expect("poke");
    create_network(&admin, &ns.name, "healthy", 3).await;
    let (_, took) =
        wait_for_status(&admin, &ns.name, "healthy", "healthy ready", all_ready(3)).await;
    report(
        "slow-node",
        "healthy network ready while another has a hung node",
        took,
    );
    assert!(
        took < baseline + Duration::from_secs(15),
        "healthy network took {took:?} against a baseline of {baseline:?}"
    );
    // The hung node's peers are still connected to each other.
    let nodes = Nodes::for_network(&admin, &ns.name, "sick").await;
    let others = [sick_ips[0].clone(), sick_ips[2].clone()];
    for (ip, other) in [(&others[0], &others[1]), (&others[1], &others[0])] {
        let peers = nodes.peer_ips(ip).await.expect("peers of a healthy node");
        assert!(peers.contains(other), "{ip} lost {other}: {peers:?}");
    }
    let (_, took) = wait_for_status(
        &admin,
        &ns.name,
        "sick",
        "hung node reported not ready",
        |s| s.nodes.len() == 3 && !s.nodes[1].ready && s.ready_nodes == 2,
    )
    .await;
    report("slow-node", "hung node dropped from the mesh", took);
    ns.delete().await;
}

/// A network the API server refuses to serve (a ResourceQuota forbids its
/// Service, then its pods) says why in its status and in one Warning Event,
/// and recovers once the quota is gone. Before, it stayed at "Scaling" with
/// the reason only in the controller's log.
#[tokio::test]
async fn refusals_of_owned_objects_and_pods_are_degraded() {
    use k8s_openapi::api::core::v1::{Event, ResourceQuota};

    let admin = admin_client().await;
    let controller = ControllerProcess::start("refusals", &[]);
    let ns = TestNamespace::create(&admin, "e2e-refused").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(admin.clone(), &ns.name);
    // The local control plane runs no resourcequota controller, which would
    // fill in the quota's status; quota admission enforces what the status
    // says, so the test writes it.
    let add_quota = |name: &'static str, resource: &'static str| {
        let quotas = quotas.clone();
        async move {
            let quota: ResourceQuota = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"hard": {resource: "0"}},
            }))
            .unwrap();
            quotas.create(&PostParams::default(), &quota).await.unwrap();
            let status = json!({"status": {"hard": {resource: "0"}, "used": {resource: "0"}}});
            quotas
                .patch_status(
                    name,
                    &Default::default(),
                    &kube_client::api::Patch::Merge(status),
                )
                .await
                .unwrap();
        }
    };
    let degraded = |reason: &'static str| {
        move |s: &bitcoin_controller::api::BitcoinNetworkStatus| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == reason)
        }
    };
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns.name);
    let warnings = |reason: &'static str| {
        let events = events.clone();
        async move {
            events
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .collect::<Vec<_>>()
        }
    };

    // The Service is refused.
    add_quota("no-services", "services").await;
    let expect_degraded = |reason: &'static str, object: &'static str, step: &'static str| {
        let admin = admin.clone();
        let ns = ns.name.clone();
        async move {
            let (status, took) =
                wait_for_status(&admin, &ns, "net", reason, degraded(reason)).await;
            report("refused", step, took);
            let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded");
            let message = &degraded.unwrap().message;
            println!("Degraded: {message}");
            assert!(
                message.contains(object) && message.contains("forbidden"),
                "{message}"
            );
            wait_for_event(&admin, &ns, "net", "Warning", reason).await;
        }
    };
    create_network(&admin, &ns.name, "net", 2).await;
    expect_degraded(
        "ApplyRejected",
        "net-svc",
        "Service refused by a quota: Degraded",
    )
    .await;

    // The pods are refused: the StatefulSet controller's FailedCreate.
    add_quota("no-pods", "pods").await;
    quotas
        .delete("no-services", &Default::default())
        .await
        .unwrap();
    expect_degraded(
        "PodCreationFailed",
        "net-sts",
        "pods refused by a quota: Degraded",
    )
    .await;
    assert_eq!(
        warnings("ApplyRejected").await.len(),
        1,
        "one Event object per problem"
    );

    quotas.delete("no-pods", &Default::default()).await.unwrap();
    let (_, took) = wait_for_status(&admin, &ns.name, "net", "2 ready nodes", all_ready(2)).await;
    report("refused", "recovered after the quotas went", took);
    let ns_name = ns.name.clone();
    ns.delete().await;

    // Quiet, useful logs: one line per failure with the API server's
    // words, never a dump of a whole Status.
    // (Debug lines, which this test's controller also writes, may dump.)
    // On the real node the in-cluster controller also logs, meanwhile, about
    // other scenarios' namespaces (being deleted): only this scenario's
    // lines are judged there; longer lines about others are printed.
    let log = controller.log_text();
    let (operator_lines, others): (Vec<&str>, Vec<&str>) = log
        .lines()
        .filter(|l| {
            [" INFO ", " WARN ", " ERROR "]
                .iter()
                .any(|level| l.contains(level))
        })
        .partition(|l| !real_node_lane() || l.contains(&ns_name));
    for line in others.iter().filter(|l| l.len() >= 600) {
        real_node_note(
            "refusals_of_owned_objects_and_pods_are_degraded",
            &format!(
                "not this scenario's, not judged: a log line of {} characters: {line}",
                line.len()
            ),
        );
    }
    let dumps: Vec<&&str> = operator_lines
        .iter()
        .filter(|l| l.contains("Status {"))
        .collect();
    assert_eq!(dumps, Vec::<&&str>::new(), "no debug dumps of a Status");
    let warnings = operator_lines
        .iter()
        .filter(|l| l.contains(" WARN "))
        .count();
    println!("controller WARN lines: {warnings}");
    let longest = operator_lines
        .iter()
        .map(|l| l.len())
        .max()
        .unwrap_or_default();
    println!("longest controller log line: {longest} characters");
    assert!(longest < 600, "a log line of {longest} characters");
}

/// Something else's StatefulSet under the network's name: one
/// ResourceConflict Event whose count rises, never several Event objects.
#[tokio::test]
async fn a_foreign_object_gives_one_warning_event() {
    use k8s_openapi::api::core::v1::Event;

    let admin = admin_client().await;
    let _controller = ControllerProcess::start("foreign", &[]);
    let ns = TestNamespace::create(&admin, "e2e-foreign").await;
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "net-sts"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "other"}},
            "serviceName": "other",
            "template": {
                "metadata": {"labels": {"app": "other"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        },
    }))
    .unwrap();
    Api::<StatefulSet>::namespaced(admin.clone(), &ns.name)
        .create(&PostParams::default(), &sts)
        .await
        .unwrap();
    create_network(&admin, &ns.name, "net", 1).await;
    wait_for_event(&admin, &ns.name, "net", "Warning", "ResourceConflict").await;
    // Several retries happen meanwhile (backoff from 5 ms).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns.name);
    let conflicts: Vec<_> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ResourceConflict"))
        .collect();
    println!(
        "ResourceConflict Events: {:?}",
        conflicts
            .iter()
            .map(|e| (e.count, e.message.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(conflicts.len(), 1, "one Event object");
    ns.delete().await;
}
