//! RPC credentials end to end: generated and user-provided Secrets, password
//! rotation, a missing Secret, and no plain password anywhere it must not be.

use std::collections::BTreeMap;
use std::time::Duration;

use bitcoin_controller::api::{BitcoinNetwork, BitcoinNetworkSpec};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube_client::api::{ListParams, PostParams};
use kube_client::{Api, Client};

use crate::harness::*;

fn user_secret(name: &str, user: &str, password: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            (
                "BC_RPC_USER".to_owned(),
                ByteString(user.as_bytes().to_vec()),
            ),
            (
                "BC_RPC_PASSWORD".to_owned(),
                ByteString(password.as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    }
}

async fn create_network_with_secret(
    client: &Client,
    ns: &str,
    name: &str,
    nodes: i32,
    secret: &str,
) {
    let api: Api<BitcoinNetwork> = Api::namespaced(client.clone(), ns);
    let net = BitcoinNetwork::new(
        name,
        BitcoinNetworkSpec {
            nodes,
            secret: Some(secret.into()),
            image: lane_image(),
            ..Default::default()
        },
    );
    api.create(&PostParams::default(), &net)
        .await
        .expect("create network");
}

/// Fails if `password` (plain or base64) appears in any StatefulSet, the
/// configuration Secret, the network (status included), an Event of the
/// namespace, or the controller's log.
async fn assert_password_nowhere(client: &Client, ns: &str, password: &str, controller_log: &str) {
    let b64 = ByteString(password.as_bytes().to_vec());
    let b64 = serde_json::to_value(&b64)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let lp = ListParams::default();
    let mut places: Vec<(String, String)> = vec![
        (
            "StatefulSets".into(),
            serde_json::to_string(
                &Api::<StatefulSet>::namespaced(client.clone(), ns)
                    .list(&lp)
                    .await
                    .unwrap()
                    .items,
            )
            .unwrap(),
        ),
        (
            "Pods".into(),
            serde_json::to_string(
                &Api::<Pod>::namespaced(client.clone(), ns)
                    .list(&lp)
                    .await
                    .unwrap()
                    .items,
            )
            .unwrap(),
        ),
        (
            "networks".into(),
            serde_json::to_string(
                &Api::<BitcoinNetwork>::namespaced(client.clone(), ns)
                    .list(&lp)
                    .await
                    .unwrap()
                    .items,
            )
            .unwrap(),
        ),
        (
            "Events".into(),
            serde_json::to_string(
                &Api::<Event>::namespaced(client.clone(), ns)
                    .list(&lp)
                    .await
                    .unwrap()
                    .items,
            )
            .unwrap(),
        ),
        ("controller log".into(), controller_log.to_owned()),
    ];
    for secret in Api::<Secret>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .unwrap()
        .items
    {
        if secret
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.ends_with("-config"))
        {
            let conf = secret
                .data
                .as_ref()
                .and_then(|d| d.get("bitcoin.conf"))
                .expect("bitcoin.conf");
            let conf = String::from_utf8(conf.0.clone()).unwrap();
            assert!(conf.contains("rpcauth="), "no rpcauth line in {conf}");
            places.push((format!("Secret {}", secret.metadata.name.unwrap()), conf));
        }
    }
    if real_node_lane() {
        // The in-cluster controller logs at RUST_LOG=info: no per-reconcile
        // lines, but never nothing (startup, leader election).
        assert!(
            !controller_log.trim().is_empty(),
            "the in-cluster controller log looks empty"
        );
        println!(
            "checked {} lines of in-cluster controller log",
            controller_log.lines().count()
        );
    } else {
        assert!(
            controller_log.contains("reconciling"),
            "the controller log looks empty"
        );
    }
    for (place, text) in places {
        assert!(
            !text.contains(password),
            "the plain password appears in {place}"
        );
        assert!(
            !text.contains(&b64),
            "the base64 password appears in {place}"
        );
    }
}

/// A generated Secret works end to end, and its password is nowhere else,
/// not even in the controller's log at the most verbose level.
#[tokio::test]
async fn generated_secret_stays_secret() {
    let admin = admin_client().await;
    let controller = ControllerProcess::start_logging("secret-generated", &[], "trace");
    real_node_note(
        "generated_secret_stays_secret",
        "the in-cluster controller's log is checked at its RUST_LOG=info \
         (manifests/controller.yaml); the trace-level check is podsim's",
    );
    let ns = TestNamespace::create(&admin, "e2e-secret-gen").await;
    create_network(&admin, &ns.name, "net", 2).await;
    let (status, took) =
        wait_for_status(&admin, &ns.name, "net", "2 ready nodes", all_ready(2)).await;
    report("secret-generated", "ready with generated credentials", took);
    let nodes = Nodes::for_network(&admin, &ns.name, "net").await;
    nodes.wait_for_mesh(&ips(&status)).await;

    let secret = Api::<Secret>::namespaced(admin.clone(), &ns.name)
        .get("net")
        .await
        .unwrap();
    let password = String::from_utf8(secret.data.unwrap()["BC_RPC_PASSWORD"].0.clone()).unwrap();
    assert!(password.len() >= 32, "weak generated password");
    assert_password_nowhere(&admin, &ns.name, &password, &controller.log_text()).await;
    ns.delete().await;
}

/// A user-provided Secret works; rotating its password rolls the pods and the
/// controller keeps syncing with the new credentials.
#[tokio::test]
async fn user_secret_and_rotation() {
    let admin = admin_client().await;
    let controller = ControllerProcess::start("secret-rotation", &[]);
    let ns = TestNamespace::create(&admin, "e2e-secret-rot").await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    secrets
        .create(
            &PostParams::default(),
            &user_secret("creds", "alice", "first-password-0123456789"),
        )
        .await
        .unwrap();
    create_network_with_secret(&admin, &ns.name, "net", 3, "creds").await;
    let (status, took) =
        wait_for_status(&admin, &ns.name, "net", "3 ready nodes", all_ready(3)).await;
    report("secret-user", "ready with a user-provided Secret", took);
    let nodes = Nodes::for_network(&admin, &ns.name, "creds").await;
    nodes.wait_for_mesh(&ips(&status)).await;
    let before = rotate_password(&admin, &ns.name, "creds", "second-password-9876543210").await;
    let (status, took) = wait_for(
        "every pod rolled to the new configuration",
        CONVERGE,
        || async {
            let (list, fresh) = pods_since(&admin, &ns.name, &before).await?;
            let mut pod_ips: Vec<String> = list
                .iter()
                .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                .collect();
            pod_ips.sort();
            let nets: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);
            let s = nets
                .get("net")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            let mut status_ips = ips(&s);
            status_ips.sort();
            // The status must describe the new pods, not the ones just replaced.
            if fresh == 3 && all_ready(3)(&s) && status_ips == pod_ips {
                Ok(s)
            } else {
                Err(format!(
                    "{fresh} of 3 pods new; status {status_ips:?}, pods {pod_ips:?}"
                ))
            }
        },
    )
    .await;
    report(
        "secret-rotation",
        "pods rolled after the password change",
        took,
    );
    let new_nodes = Nodes::for_network(&admin, &ns.name, "creds").await;
    let took = new_nodes.wait_for_mesh(&ips(&status)).await;
    report(
        "secret-rotation",
        "mesh synced with the new credentials",
        took,
    );
    assert!(
        nodes
            .call(&ips(&status)[0], "getblockcount", vec![])
            .await
            .is_err(),
        "the old password still works"
    );
    for password in ["first-password-0123456789", "second-password-9876543210"] {
        // The user's own Secret holds it, but nothing the controller writes does.
        assert_password_nowhere(&admin, &ns.name, password, &controller.log_text()).await;
    }
    ns.delete().await;
}

/// Waits until network `net` in `ns` is Degraded for `reason` and a Warning
/// Event says so, and checks that no StatefulSet runs meanwhile (nothing runs
/// with a default password). Returns the condition's message.
async fn wait_until_blocked(admin: &Client, ns: &str, reason: &str) -> (String, Duration) {
    let (status, took) = wait_for_status(admin, ns, "net", &format!("Degraded: {reason}"), |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == reason)
    })
    .await;
    wait_for_event(admin, ns, "net", "Warning", reason).await;
    assert!(Api::<StatefulSet>::namespaced(admin.clone(), ns)
        .get_opt("net-sts")
        .await
        .unwrap()
        .is_none());
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded");
    (degraded.unwrap().message.clone(), took)
}

/// Waits until network `net` in `ns` has 2 ready nodes and is no longer
/// Degraded.
async fn wait_until_recovered(
    admin: &Client,
    ns: &str,
    what: &str,
) -> (bitcoin_controller::api::BitcoinNetworkStatus, Duration) {
    wait_for_status(admin, ns, "net", what, |s| {
        all_ready(2)(s)
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.status == "False")
    })
    .await
}

/// A missing Secret is reported in the status and as an Event, and the
/// network recovers by itself when the Secret appears.
#[tokio::test]
async fn missing_secret_is_reported_then_recovered() {
    let admin = admin_client().await;
    let _controller = ControllerProcess::start("secret-missing", &[]);
    let ns = TestNamespace::create(&admin, "e2e-secret-missing").await;
    create_network_with_secret(&admin, &ns.name, "net", 2, "later").await;
    let (message, took) = wait_until_blocked(&admin, &ns.name, "SecretNotFound").await;
    report("secret-missing", "reported in the status", took);
    assert!(message.contains("later"), "{message}");

    Api::<Secret>::namespaced(admin.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &user_secret("later", "bob", "a-password-that-came-later"),
        )
        .await
        .unwrap();
    let (_, took) = wait_until_recovered(&admin, &ns.name, "ready after the Secret appeared").await;
    report(
        "secret-missing",
        "recovered after the Secret appeared",
        took,
    );
    ns.delete().await;
}

/// A namespace where the controller was not granted Secrets: the network says
/// so in its status and an Event (and nothing runs), then converges once the
/// RoleBinding exists, without any change to the network.
#[tokio::test]
async fn namespace_without_secret_access_is_reported_then_recovered() {
    let admin = admin_client().await;
    let _controller = ControllerProcess::start("secret-access", &[]);
    let ns = TestNamespace::create_without_secret_access(&admin, "e2e-secret-access").await;
    create_network(&admin, &ns.name, "net", 2).await;
    let (message, took) = wait_until_blocked(&admin, &ns.name, "SecretAccessDenied").await;
    report("secret-access", "reported in the status", took);
    assert!(
        message.contains("bitcoin-controller-secrets") && message.contains(&ns.name),
        "{message}"
    );

    grant_secret_access(&admin, &ns.name).await;
    let (status, took) =
        wait_until_recovered(&admin, &ns.name, "ready after the RoleBinding appeared").await;
    report("secret-access", "recovered after the RoleBinding", took);
    let nodes = Nodes::for_network(&admin, &ns.name, "net").await;
    let took = nodes.wait_for_mesh(&ips(&status)).await;
    report("secret-access", "mesh of 2", took);
    ns.delete().await;
}
