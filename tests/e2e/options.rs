//! Node options (`spec.config`): what the CRD's rules refuse at admission,
//! checked against the real API server and against the controller's own
//! copy of those rules; and options that reach `bitcoin.conf` and roll the
//! pods when they change.

use bitcoin_controller::api::{BitcoinNetwork, BitcoinNetworkSpec, NodeConfig, MAX_EXTRA_LINES};
use bitcoin_controller::bitcoin::{extra_line_problem, OWNED_KEYS, TYPED_KEYS};
use bitcoin_controller::controller::resources::{
    content_hash, is_fallback_fee, secret_value, CONFIG_HASH_ANNOTATION, CONFIG_KEY, NETWORK_LABEL,
};
use k8s_openapi::api::apps::v1::StatefulSet;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, ResourceRequirements, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube_client::api::{ListParams, Patch, PatchParams, PostParams};
use kube_client::{Api, Client};
use serde_json::{json, Value};

use crate::harness::*;

/// POSTs a network with `spec` as kubectl does (strict field validation),
/// as a dry run: nothing is stored. `Err` is the API server's refusal.
pub async fn admit(client: &Client, ns: &str, spec: Value) -> Result<(), (u16, String)> {
    let url = format!(
        "/apis/bitcoincontroller.christianb93.github.com/v1/namespaces/{ns}/bitcoinnetworks?fieldValidation=Strict&dryRun=All"
    );
    let body = json!({
        "apiVersion": "bitcoincontroller.christianb93.github.com/v1",
        "kind": "BitcoinNetwork",
        "metadata": {"name": "options"},
        "spec": spec,
    });
    let request = http::Request::post(&url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    match client.request::<Value>(request).await {
        Ok(_) => Ok(()),
        Err(kube_client::Error::Api(s)) => Err((s.code, s.message)),
        Err(e) => panic!("POST failed without an answer from the API server: {e}"),
    }
}

/// Every owned key (and its negation), every typed key and a table of
/// malformed and good lines: the API server refuses exactly the lines the
/// controller's `extra_line_problem` refuses, with its message (which names
/// the key); fallbackFee follows its pattern; the list is bounded.
#[tokio::test]
async fn node_options_are_checked_at_admission() {
    let admin = admin_client().await;
    let ns = TestNamespace::create(&admin, "e2e-opt-adm").await;

    let mut lines: Vec<String> = Vec::new();
    for key in OWNED_KEYS {
        lines.push(format!("{key}=1"));
        lines.push(format!("no{key}=1"));
    }
    for (key, _) in TYPED_KEYS {
        lines.push(format!("{key}=1"));
    }
    lines.extend(
        [
            " rpcbind = ::",
            "-txindex=1",
            "[main]",
            " [regtest]",
            "txindex",
            "peerbloomfilters",
            "",
            "a=1\nrpcbind=0.0.0.0",
            "a=1\r",
            "main.rpcbind=1",
            "regtest.maxconnections=1",
            "RPCBIND=1",
            "=1",
            "#x=1",
            // Good ones.
            "peerbloomfilters=1",
            "  maxconnections = 20  ",
            "uacomment=a=b",
            "debug=net # comment",
            "maxconnections=\t20",
            "notxindexfoo=1",
        ]
        .map(str::to_owned),
    );
    let (mut refused, mut accepted) = (0, 0);
    for line in &lines {
        let want = extra_line_problem(line);
        let got = admit(
            &admin,
            &ns.name,
            json!({"nodes": 1, "config": {"extra": ["peerbloomfilters=1", line]}}),
        )
        .await;
        match (&want, &got) {
            (None, Ok(())) => accepted += 1,
            (Some(problem), Err((code, message))) => {
                println!("{line:?}: refused with {code}: {message}");
                assert_eq!(*code, 422, "{line:?}: {message}");
                assert!(
                    message.contains("spec.config.extra[1]") && message.contains(problem.as_str()),
                    "{line:?}: the API server's message {message:?} lacks {problem:?}"
                );
                refused += 1;
            }
            _ => panic!("{line:?}: the controller says {want:?}, the API server {got:?}"),
        }
    }
    // Every owned key and its negation, every typed key and the 14
    // malformed lines are refused; the 6 good ones pass.
    assert_eq!(refused, 2 * OWNED_KEYS.len() + TYPED_KEYS.len() + 14);
    assert_eq!(accepted, 6);
    // The messages name the key, e.g. for rpcbind:
    let (_, message) = admit(
        &admin,
        &ns.name,
        json!({"nodes": 1, "config": {"extra": ["rpcauth=x:y$z"]}}),
    )
    .await
    .unwrap_err();
    assert!(
        message.contains("rpcauth is set by the controller"),
        "{message}"
    );

    for fee in [
        "0",
        "0.0002",
        "1",
        "0.00000001",
        "0.000000001",
        "1e-4",
        "-1",
        ".1",
        "0,1",
        "12345678",
    ] {
        let got = admit(
            &admin,
            &ns.name,
            json!({"nodes": 1, "config": {"fallbackFee": fee}}),
        )
        .await;
        match got {
            Ok(()) => assert!(is_fallback_fee(fee), "fallbackFee {fee:?} was accepted"),
            Err((code, message)) => {
                println!("fallbackFee {fee:?}: refused with {code}: {message}");
                assert!(!is_fallback_fee(fee), "fallbackFee {fee:?}: {message}");
                assert!(message.contains("spec.config.fallbackFee"), "{message}");
            }
        }
    }
    for (field, value) in [("txindex", json!("yes")), ("blockfilterindex", json!(1))] {
        let (_, message) = admit(
            &admin,
            &ns.name,
            json!({"nodes": 1, "config": {field: value}}),
        )
        .await
        .unwrap_err();
        assert!(message.contains("must be of type boolean"), "{message}");
    }
    let too_many: Vec<String> = (0..=MAX_EXTRA_LINES)
        .map(|i| format!("uacomment=c{i}"))
        .collect();
    let (_, message) = admit(
        &admin,
        &ns.name,
        json!({"nodes": 1, "config": {"extra": too_many}}),
    )
    .await
    .unwrap_err();
    assert!(message.contains("must have at most 64 items"), "{message}");
    // A good configuration with every typed field is admitted.
    admit(
        &admin,
        &ns.name,
        json!({"nodes": 1, "config": {
            "txindex": true, "fallbackFee": "0.0002", "blockfilterindex": false,
            "extra": ["peerbloomfilters=1"],
        }}),
    )
    .await
    .unwrap();
    ns.delete().await;
}

/// The `[regtest]` section of a rendered `bitcoin.conf`.
fn regtest_section(conf: &str) -> Vec<&str> {
    conf.lines()
        .skip_while(|l| *l != "[regtest]")
        .skip(1)
        .collect()
}

/// A configuration with every typed field and two extra lines, and a 1Gi
/// memory limit, reach the config Secret under `[regtest]` (with the cache
/// sizes of that limit) and the container, and the nodes run with them
/// (`getindexinfo`); changing
/// `spec.config.txindex` changes the configuration and its hash on the pod
/// template, the pods roll to the new hash, and the new nodes run without
/// the transaction index.
#[tokio::test]
async fn node_options_reach_bitcoin_conf_and_roll_the_pods() {
    let admin = admin_client().await;
    let _controller = ControllerProcess::start("options", &[]);
    let ns = TestNamespace::create(&admin, "e2e-opt").await;
    let networks: Api<BitcoinNetwork> = Api::namespaced(admin.clone(), &ns.name);
    let net = BitcoinNetwork::new(
        "opts",
        BitcoinNetworkSpec {
            nodes: 2,
            image: lane_image(),
            config: Some(NodeConfig {
                txindex: Some(true),
                fallback_fee: Some("0.0002".into()),
                blockfilterindex: Some(true),
                extra: vec!["peerbloomfilters=1".into(), "maxconnections=40".into()],
            }),
            resources: Some(ResourceRequirements {
                limits: Some(BTreeMap::from([(
                    "memory".to_owned(),
                    Quantity("1Gi".to_owned()),
                )])),
                ..ResourceRequirements::default()
            }),
            ..Default::default()
        },
    );
    networks
        .create(&PostParams::default(), &net)
        .await
        .expect("create network");
    let (status, took) = wait_for_status(
        &admin,
        &ns.name,
        "opts",
        "2 nodes ready with the options",
        all_ready(2),
    )
    .await;
    report("options", "2 nodes ready with every typed option", took);
    // The running nodes have the indexes on (getindexinfo lists the enabled
    // ones, in Core and in regtest-node alike).
    let nodes = Nodes::for_network(&admin, &ns.name, "opts").await;
    for ip in ips(&status) {
        let info = nodes.call(&ip, "getindexinfo", vec![]).await.unwrap();
        assert!(
            info.get("txindex").is_some() && info.get("basic block filter index").is_some(),
            "{ip}: {info}"
        );
    }

    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    let conf_of = |s: &Secret| secret_value(s, CONFIG_KEY).unwrap_or_default().to_owned();
    let conf = conf_of(&secrets.get("opts-config").await.unwrap());
    let section = regtest_section(&conf);
    for line in [
        // Sized from the 1Gi memory limit: Core's defaults.
        "dbcache=450",
        "maxmempool=300",
        "txindex=1",
        "fallbackfee=0.0002",
        "blockfilterindex=1",
        "peerbloomfilters=1",
        "maxconnections=40",
    ] {
        assert!(
            section.contains(&line),
            "{line} not under [regtest]:\n{conf}"
        );
    }

    let statefulsets: Api<StatefulSet> = Api::namespaced(admin.clone(), &ns.name);
    let template_hash = |sts: &StatefulSet| {
        sts.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
            .unwrap_or_default()
    };
    let sts = statefulsets.get("opts-sts").await.unwrap();
    let container = &sts
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(
        container
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap()["memory"],
        Quantity("1Gi".to_owned()),
        "spec.resources is the bitcoind container's"
    );
    let before = template_hash(&sts);
    assert_eq!(before, content_hash(conf.as_bytes()));

    networks
        .patch(
            "opts",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"config": {"txindex": false}}})),
        )
        .await
        .expect("patch spec.config.txindex");
    let (after, took) = wait_for(
        "a new config hash on the pod template",
        CONVERGE,
        || async {
            let conf = conf_of(
                &secrets
                    .get("opts-config")
                    .await
                    .map_err(|e| e.to_string())?,
            );
            let hash = template_hash(
                &statefulsets
                    .get("opts-sts")
                    .await
                    .map_err(|e| e.to_string())?,
            );
            if regtest_section(&conf).contains(&"txindex=0")
                && hash == content_hash(conf.as_bytes())
            {
                Ok(hash)
            } else {
                Err(format!("template hash {hash}, config:\n{conf}"))
            }
        },
    )
    .await;
    assert_ne!(after, before);
    report("options", "txindex=false rendered, new template hash", took);

    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let selector = format!("{NETWORK_LABEL}=opts");
    let (_, took) = wait_for(
        "both pods rolled to the new hash and Ready",
        CONVERGE,
        || {
            let (pods, selector, after) = (&pods, &selector, &after);
            async move {
                let list = pods
                    .list(&ListParams::default().labels(selector))
                    .await
                    .map_err(|e| e.to_string())?;
                let state: Vec<(String, String, bool)> = list
                    .items
                    .iter()
                    .map(|p| {
                        let hash = p
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
                            .unwrap_or_default();
                        let ready = p
                            .status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            });
                        (p.metadata.name.clone().unwrap_or_default(), hash, ready)
                    })
                    .collect();
                let rolled = state.len() == 2
                    && state.iter().all(|(_, hash, ready)| hash == after && *ready)
                    && list
                        .items
                        .iter()
                        .all(|p| p.metadata.deletion_timestamp.is_none());
                if rolled {
                    Ok(())
                } else {
                    Err(format!("{state:?}"))
                }
            }
        },
    )
    .await;
    report("options", "pods rolled to the new configuration", took);
    let (status, _) = wait_for_status(
        &admin,
        &ns.name,
        "opts",
        "the network ready again after the roll",
        all_ready(2),
    )
    .await;
    for ip in ips(&status) {
        let info = nodes.call(&ip, "getindexinfo", vec![]).await.unwrap();
        assert!(info.get("txindex").is_none(), "{ip}: {info}");
        assert!(
            info.get("basic block filter index").is_some(),
            "{ip}: {info}"
        );
    }
    ns.delete().await;
}
