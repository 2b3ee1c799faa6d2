//! `spec.storage` end to end: what admission refuses (a size that is not
//! one, and any change of the storage of an existing network but
//! `retain`), the claims the StatefulSet controller makes from the claim
//! template and their fate when the network goes (both lanes), and on the
//! real node (`real_node_` scenario) a chain that survives a pod deletion
//! and a password rotation.
//!
//! On podsim nothing provisions volumes, so the claims stay Pending; podsim
//! runs the pods anyway (it reads only the bitcoin.conf volume), so the
//! network is Ready. On the kubelet lane the claims bind to the local
//! PersistentVolumes `scripts/local-cluster.sh up` made (docs/local-cluster.md).

use std::time::{Duration, Instant};

use bitcoin_controller::api::{BitcoinNetwork, BitcoinNetworkSpec, Storage};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube_client::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube_client::{Api, Client};
use serde_json::{json, Value};

use crate::harness::*;

async fn create_stored_network(
    client: &Client,
    ns: &str,
    name: &str,
    nodes: i32,
    secret: Option<&str>,
    storage: Storage,
) {
    let api: Api<BitcoinNetwork> = Api::namespaced(client.clone(), ns);
    let net = BitcoinNetwork::new(
        name,
        BitcoinNetworkSpec {
            nodes,
            image: lane_image(),
            secret: secret.map(str::to_owned),
            storage: Some(storage),
            ..Default::default()
        },
    );
    api.create(&PostParams::default(), &net)
        .await
        .expect("create network");
}

/// Names of the network's claims (`data-<name>-sts-<ordinal>`), sorted,
/// with their phases.
async fn claims(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!(
        "bitcoincontroller.christianb93.github.com/network={name}"
    ));
    let mut out: Vec<(String, String)> = api
        .list(&lp)
        .await
        .expect("list claims")
        .items
        .into_iter()
        .map(|c| {
            let phase = c.status.and_then(|s| s.phase).unwrap_or_default();
            (c.metadata.name.unwrap_or_default(), phase)
        })
        .collect();
    out.sort();
    out
}

fn claim_names(name: &str, nodes: usize) -> Vec<String> {
    (0..nodes).map(|i| format!("data-{name}-sts-{i}")).collect()
}

/// Waits until the network's claims are exactly `want` (names), and on the
/// real node also Bound.
async fn wait_for_claims(client: &Client, ns: &str, name: &str, want: &[String]) -> Duration {
    let bound = real_node_lane() && !want.is_empty();
    let (_, took) = wait_for(&format!("claims {want:?}"), CONVERGE, || async {
        let have = claims(client, ns, name).await;
        let names: Vec<String> = have.iter().map(|(n, _)| n.clone()).collect();
        if names == want && (!bound || have.iter().all(|(_, p)| p == "Bound")) {
            Ok(())
        } else {
            Err(format!("{have:?}"))
        }
    })
    .await;
    took
}

async fn delete_network(client: &Client, ns: &str, name: &str) {
    Api::<BitcoinNetwork>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::foreground())
        .await
        .expect("delete network");
}

/// Sends `patch` (a JSON merge patch of the network) and returns the API
/// server's refusal message, or `None` if it accepted it.
async fn refusal(client: &Client, ns: &str, name: &str, patch: Value) -> Option<String> {
    let api: Api<BitcoinNetwork> = Api::namespaced(client.clone(), ns);
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => None,
        Err(kube_client::Error::Api(s)) => Some(s.message),
        Err(e) => panic!("patching {name}: {e}"),
    }
}

/// Storage cannot be added, removed or changed (size, class) on an
/// existing network, with a message saying why and what to do; `retain`
/// may change, and the StatefulSet's claim retention policy follows it.
/// (What is refused at creation is in `invalid_specs_are_refused`.)
#[tokio::test]
async fn storage_is_fixed_at_creation() {
    let admin = admin_client().await;
    let _controller = ControllerProcess::start("storage-admission", &[]);
    let ns = TestNamespace::create(&admin, "e2e-storage-adm").await;
    let storage = Storage {
        size: Some("64Mi".into()),
        ..Storage::default()
    };
    create_stored_network(&admin, &ns.name, "kept", 1, None, storage).await;
    create_network(&admin, &ns.name, "plain", 1).await;
    let immutable = "spec.storage cannot be added, removed or changed (size, storageClassName) \
                     on an existing network";
    let changes = [
        (
            "kept",
            "grow",
            json!({"spec": {"storage": {"size": "128Mi"}}}),
        ),
        (
            "kept",
            "class",
            json!({"spec": {"storage": {"storageClassName": "other"}}}),
        ),
        ("kept", "remove", json!({"spec": {"storage": null}})),
        (
            "plain",
            "add",
            json!({"spec": {"storage": {"size": "1Gi"}}}),
        ),
    ];
    for (name, what, patch) in changes {
        let message = refusal(&admin, &ns.name, name, patch)
            .await
            .unwrap_or_else(|| panic!("{what}: the API server accepted it"));
        println!("{what}: refused: {message}");
        assert!(message.contains(immutable), "{what}: {message}");
        assert!(
            message.contains("Create a new network"),
            "{what}: {message}"
        );
    }
    // Unchanged storage in a patch of something else is fine.
    let accepted = refusal(
        &admin,
        &ns.name,
        "kept",
        json!({"spec": {"nodes": 2, "storage": {"size": "64Mi"}}}),
    )
    .await;
    assert_eq!(accepted, None);

    let statefulsets: Api<StatefulSet> = Api::namespaced(admin.clone(), &ns.name);
    let policy = || async {
        let sts = statefulsets
            .get("kept-sts")
            .await
            .map_err(|e| e.to_string())?;
        let spec = sts.spec.unwrap_or_default();
        let p = spec
            .persistent_volume_claim_retention_policy
            .unwrap_or_default();
        Ok::<_, String>((
            p.when_deleted.unwrap_or_default(),
            p.when_scaled.unwrap_or_default(),
            spec.volume_claim_templates.map_or(0, |t| t.len()),
        ))
    };
    let want = ("Delete".to_owned(), "Delete".to_owned(), 1);
    wait_for("retention policy Delete", CONVERGE, || async {
        let have = policy().await?;
        (have == want).then_some(()).ok_or(format!("{have:?}"))
    })
    .await;
    let accepted = refusal(
        &admin,
        &ns.name,
        "kept",
        json!({"spec": {"storage": {"retain": true}}}),
    )
    .await;
    assert_eq!(accepted, None, "retain may change");
    let want = ("Retain".to_owned(), "Retain".to_owned(), 1);
    let (_, took) = wait_for("retention policy Retain", CONVERGE, || async {
        let have = policy().await?;
        (have == want).then_some(()).ok_or(format!("{have:?}"))
    })
    .await;
    report("storage-admission", "retention policy follows retain", took);
    ns.delete().await;
}

/// The StatefulSet controller makes one claim per node from the claim
/// template (bound on the real node, Pending on podsim), the network is
/// Ready, and deleting it deletes the claims with `retain` false, keeps
/// them with `retain` true.
#[tokio::test]
async fn storage_claims_follow_the_network() {
    let admin = admin_client().await;
    let _controller = ControllerProcess::start("storage-claims", &[]);
    let ns = TestNamespace::create(&admin, "e2e-storage").await;
    let small = |retain| Storage {
        size: Some("64Mi".into()),
        retain: Some(retain),
        ..Storage::default()
    };
    create_stored_network(&admin, &ns.name, "gone", 2, None, small(false)).await;
    create_stored_network(&admin, &ns.name, "kept", 1, None, small(true)).await;
    for (name, nodes) in [("gone", 2), ("kept", 1)] {
        let took = wait_for_claims(&admin, &ns.name, name, &claim_names(name, nodes)).await;
        report("storage-claims", &format!("{name}: claims made"), took);
        let (_, took) =
            wait_for_status(&admin, &ns.name, name, "nodes ready", all_ready(nodes)).await;
        report("storage-claims", &format!("{name}: ready"), took);
    }
    println!("claims: {:?}", claims(&admin, &ns.name, "gone").await);

    for name in ["gone", "kept"] {
        delete_network(&admin, &ns.name, name).await;
    }
    let took = wait_for_claims(&admin, &ns.name, "gone", &[]).await;
    report("storage-claims", "retain false: claims deleted", took);
    claim_outlives_network(&admin, &ns.name, "kept").await;
    ns.delete().await;
}

/// Once the StatefulSet of the deleted 1-node network `name` (retain true)
/// is gone, its claim is still there (still Bound on the real node); then
/// the test deletes it.
async fn claim_outlives_network(client: &Client, ns: &str, name: &str) {
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let sts = format!("{name}-sts");
    wait_for(&format!("{sts} deleted"), CONVERGE, || async {
        match statefulsets.get_opt(&sts).await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let kept = claims(client, ns, name).await;
    let names: Vec<String> = kept.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, claim_names(name, 1), "retain true keeps the claim");
    if real_node_lane() {
        assert_eq!(kept[0].1, "Bound", "{kept:?}");
    }
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .delete(&names[0], &DeleteParams::default())
        .await
        .expect("delete the kept claim");
    wait_for_claims(client, ns, name, &[]).await;
}

fn user_secret(name: &str, password: &str) -> Secret {
    let data = [("BC_RPC_USER", "alice"), ("BC_RPC_PASSWORD", password)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..Secret::default()
    }
}

/// The block count of every node in `ips`.
async fn heights(nodes: &Nodes, ips: &[String]) -> Result<Vec<i64>, String> {
    let mut out = Vec::new();
    for ip in ips {
        let count = nodes.call(ip, "getblockcount", vec![]).await?;
        out.push(count.as_i64().ok_or("getblockcount is no number")?);
    }
    Ok(out)
}

/// Real node: a 3-node network with storage mines 101 blocks. A deleted
/// pod comes back with its chain (loaded from its volume before it has
/// any peer: its first answer and its log say so); a password rotation
/// rolls every pod and every node keeps its height; deleting the network
/// deletes its claims (retain false), while a network with retain true
/// leaves its claim behind.
#[tokio::test]
async fn real_node_storage_keeps_the_chain() {
    if !real_node_lane() {
        println!("real_node_storage_keeps_the_chain: needs the real-node lane (BC_NODE=kubelet): nothing to do");
        return;
    }
    let admin = admin_client().await;
    let _controller = ControllerProcess::start("storage-node", &[]);
    let ns = TestNamespace::create(&admin, "e2e-storage-node").await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    secrets
        .create(
            &PostParams::default(),
            &user_secret("creds", "first-password-0123456789"),
        )
        .await
        .unwrap();
    let storage = Storage {
        size: Some("64Mi".into()),
        ..Storage::default()
    };
    create_stored_network(&admin, &ns.name, "net", 3, Some("creds"), storage).await;
    let took = wait_for_claims(&admin, &ns.name, "net", &claim_names("net", 3)).await;
    report("storage-node", "3 claims bound", took);
    let (status, took) =
        wait_for_status(&admin, &ns.name, "net", "3 ready nodes", all_ready(3)).await;
    report("storage-node", "3 nodes with storage ready", took);
    let nodes = Nodes::for_network(&admin, &ns.name, "creds").await;
    let node_ips = ips(&status);
    nodes.wait_for_mesh(&node_ips).await;
    let tip = nodes.mine(&node_ips[0], 101).await;
    let took = nodes.wait_for_tip(&node_ips, &tip).await;
    report("storage-node", "101 blocks on every node", took);

    // Delete pod 1: it comes back with its chain, before it has peers.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let old_uid = pods.get("net-sts-1").await.unwrap().metadata.uid;
    let deleted = Instant::now();
    pods.delete("net-sts-1", &DeleteParams::default())
        .await
        .expect("delete pod 1");
    let ((height, peers), _) = wait_for("pod 1 answers RPC again", CONVERGE, || async {
        let pod = pods.get("net-sts-1").await.map_err(|e| e.to_string())?;
        if pod.metadata.uid == old_uid {
            return Err("the old pod is still there".into());
        }
        let ip = pod.status.and_then(|s| s.pod_ip).ok_or("no pod IP yet")?;
        let info = nodes.call(&ip, "getblockchaininfo", vec![]).await?;
        let peers = nodes.call(&ip, "getpeerinfo", vec![]).await?;
        Ok((
            info["blocks"].as_i64().unwrap_or(-1),
            peers.as_array().map_or(0, Vec::len),
        ))
    })
    .await;
    let took = deleted.elapsed();
    println!("pod 1's first answer: height {height}, {peers} peers");
    report("storage-node", "deleted pod 1 back at its height", took);
    assert!(height >= 101, "pod 1 came back at height {height}");
    let (ok, log, err) = kubectl(&["logs", "-n", &ns.name, "net-sts-1"]);
    assert!(ok, "kubectl logs: {err}");
    let loaded = log
        .lines()
        .find(|l| l.contains("loaded ") && l.contains(" blocks from "))
        .unwrap_or_else(|| panic!("no 'loaded N blocks' line in pod 1's log:\n{log}"));
    println!("pod 1's log: {loaded}");
    assert!(loaded.contains("height 101"), "{loaded}");

    // Rotate the password: every pod rolls, every node keeps its height.
    let before = rotate_password(&admin, &ns.name, "creds", "second-password-9876543210").await;
    let rotated = Instant::now();
    let new_nodes = Nodes::for_network(&admin, &ns.name, "creds").await;
    let (heights_after, _) = wait_for(
        "every pod rolled and every node at height 101",
        Duration::from_secs(240),
        || async {
            let (_, fresh) = pods_since(&admin, &ns.name, &before).await?;
            let nets: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);
            let s = nets
                .get("net")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            if fresh != 3 || !all_ready(3)(&s) {
                return Err(format!("{fresh} of 3 pods new, {} ready", s.ready_nodes));
            }
            let h = heights(&new_nodes, &ips(&s)).await?;
            if h.iter().all(|h| *h == 101) {
                Ok(h)
            } else {
                Err(format!("heights {h:?}"))
            }
        },
    )
    .await;
    println!("heights after the rotation: {heights_after:?}");
    report(
        "storage-node",
        "rotation rolled every pod, every node at height 101",
        rotated.elapsed(),
    );

    // retain false: the claims go with the network. retain true: they stay.
    let kept = Storage {
        size: Some("64Mi".into()),
        retain: Some(true),
        ..Storage::default()
    };
    create_stored_network(&admin, &ns.name, "kept", 1, None, kept).await;
    wait_for_claims(&admin, &ns.name, "kept", &claim_names("kept", 1)).await;
    wait_for_status(&admin, &ns.name, "kept", "1 ready node", all_ready(1)).await;
    delete_network(&admin, &ns.name, "net").await;
    delete_network(&admin, &ns.name, "kept").await;
    let took = wait_for_claims(&admin, &ns.name, "net", &[]).await;
    report("storage-node", "retain false: claims deleted", took);
    claim_outlives_network(&admin, &ns.name, "kept").await;
    ns.delete().await;
}
