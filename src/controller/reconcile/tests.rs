//! The reconcile against a fake API server (tower-test), asserting the exact
//! calls it makes: creation, nothing at rest, drift, a foreign object, a
//! refused apply, a missing or invalid Secret, and the salt race.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_client::client::Body;
use kube_client::Client;
use serde_json::{json, Value};

use super::*;
use crate::api::BitcoinNetworkSpec;
use crate::bitcoin::RpcClient;
use crate::controller::cached::{CachedPod, CachedStatefulSet};
use crate::controller::resources::credentials_secret;
use crate::controller::{Context, EventSink, SecretCaches, SecretView};
use crate::informer::Lister;

/// One request the fake API server got.
#[derive(Clone, Debug)]
struct Call {
    method: String,
    path: String,
    query: String,
    body: Value,
}

impl Call {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

type Calls = Arc<Mutex<Vec<Call>>>;

/// A client whose requests `respond` answers (status code, JSON body); every
/// request is recorded.
fn fake_api(respond: impl Fn(&Call) -> (u16, Value) + Send + 'static) -> (Client, Calls) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls: Calls = Arc::default();
    let recorded = calls.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or_default().to_owned();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let call = Call {
                method,
                path,
                query,
                body,
            };
            let (status, answer) = respond(&call);
            recorded.lock().unwrap().push(call);
            send.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(service, "default"), calls)
}

fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": "not found", "reason": "NotFound", "code": 404}),
    )
}

/// The usual answers: writes echo the object, reads of uncached objects
/// find nothing, lists are empty.
fn default_answer(call: &Call) -> (u16, Value) {
    match call.method.as_str() {
        "GET" if call.path.ends_with("/events") => (
            200,
            json!({"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": []}),
        ),
        "GET" => not_found(),
        "POST" => (201, call.body.clone()),
        "PATCH" if call.path.ends_with("/status") => {
            let mut net = serde_json::to_value(network(1)).unwrap();
            net["status"] = call.body["status"].clone();
            (200, net)
        }
        _ => (200, call.body.clone()),
    }
}

#[derive(Default)]
struct Captured(Mutex<Vec<(EventType, &'static str, String)>>);

impl EventSink for Captured {
    fn publish(&self, _: &BitcoinNetwork, type_: EventType, reason: &'static str, message: String) {
        self.0.lock().unwrap().push((type_, reason, message));
    }
}

impl Captured {
    fn reasons(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().iter().map(|e| e.1).collect()
    }
}

/// What the caches hold.
#[derive(Default, Clone)]
struct World {
    statefulsets: Vec<StatefulSet>,
    services: Vec<Service>,
    pods: Vec<CachedPod>,
    secrets: Vec<Secret>,
}

fn network(nodes: i32) -> BitcoinNetwork {
    let mut net = BitcoinNetwork::new(
        "net",
        BitcoinNetworkSpec {
            nodes,
            ..Default::default()
        },
    );
    net.metadata.namespace = Some("ns".into());
    net.metadata.uid = Some("uid-1".into());
    net.metadata.generation = Some(1);
    net.metadata.resource_version = Some("10".into());
    net
}

fn context(client: Client, net: &BitcoinNetwork, world: &World) -> (Context, Arc<Captured>) {
    let events = Arc::new(Captured::default());
    let ctx = Context {
        client,
        networks: Lister::from_objects([net.clone()]),
        statefulsets: Lister::from_objects(
            world
                .statefulsets
                .iter()
                .cloned()
                .map(CachedStatefulSet::from),
        ),
        services: Lister::from_objects(world.services.clone()),
        pods: Lister::from_objects(world.pods.clone()),
        secrets: SecretCaches::fixed(SecretView::from_lister(Lister::from_objects(
            world.secrets.clone(),
        ))),
        rpc: RpcClient::new(Duration::from_millis(200), Duration::from_millis(200)),
        recorder: events.clone(),
    };
    (ctx, events)
}

/// The generated credentials and everything the controller builds from
/// them, as the live objects look after a first reconcile.
fn settled(net: &BitcoinNetwork) -> World {
    let creds = credentials_secret(net, "rpc-user", "secret-password", "mining-key");
    let c = Credentials {
        user: "rpc-user".into(),
        password: "secret-password".into(),
        mining_key: None,
        secret_version: None,
    };
    let conf = bitcoin_conf(net, &c, None);
    let hash = resources::content_hash(conf.as_bytes());
    let pods = (0..net.spec.nodes)
        .map(|i| CachedPod {
            metadata: ObjectMeta {
                name: Some(format!("net-sts-{i}")),
                namespace: Some("ns".into()),
                labels: Some(BTreeMap::from([(
                    NETWORK_LABEL.to_owned(),
                    "net".to_owned(),
                )])),
                ..Default::default()
            },
            // Not ready yet: no RPC in these tests.
            ..Default::default()
        })
        .collect();
    let mut sts = stamp(resources::statefulset(net, &hash));
    sts.metadata.uid = Some("sts-uid".into());
    World {
        statefulsets: vec![sts],
        services: vec![stamp(resources::service(net))],
        pods,
        secrets: vec![creds, stamp(resources::config_secret(net, &conf))],
    }
}

fn lines(calls: &Calls) -> Vec<String> {
    calls.lock().unwrap().iter().map(Call::line).collect()
}

const NS_API: &str = "/api/v1/namespaces/ns";
const APPS: &str = "/apis/apps/v1/namespaces/ns";
const NET: &str =
    "/apis/bitcoincontroller.christianb93.github.com/v1/namespaces/ns/bitcoinnetworks/net";

/// The network with the status the last status write of `calls` set.
fn with_written_status(net: &BitcoinNetwork, calls: &Calls) -> BitcoinNetwork {
    let calls = calls.lock().unwrap();
    let write = calls
        .iter()
        .rev()
        .find(|c| c.path.ends_with("/status"))
        .expect("a status write");
    let mut net = net.clone();
    net.status = Some(serde_json::from_value(write.body["status"].clone()).unwrap());
    net
}

#[tokio::test]
async fn first_reconcile_creates_every_object_once() {
    let net = network(3);
    let (client, calls) = fake_api(default_answer);
    let (ctx, events) = context(client, &net, &World::default());
    let action = reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    // No pod yet: their events bring the network back.
    assert_eq!(action, Action::Done);
    assert_eq!(
        lines(&calls),
        [
            format!("POST {NS_API}/secrets"),
            format!("GET {NS_API}/secrets/net-config"),
            format!("PATCH {NS_API}/secrets/net-config"),
            format!("GET {NS_API}/services/net-svc"),
            format!("PATCH {NS_API}/services/net-svc"),
            format!("GET {APPS}/statefulsets/net-sts"),
            format!("PATCH {APPS}/statefulsets/net-sts"),
            format!("PATCH {NET}/status"),
        ]
    );
    let calls = calls.lock().unwrap();
    for apply in calls
        .iter()
        .filter(|c| c.method == "PATCH" && !c.path.ends_with("/status"))
    {
        assert!(
            apply.query.contains("fieldManager=bitcoin-controller"),
            "{apply:?}"
        );
        assert!(apply.query.contains("force=true"), "{apply:?}");
        assert!(
            apply.body["metadata"]["annotations"][resources::SPEC_HASH_ANNOTATION].is_string(),
            "applied objects carry their stamp: {apply:?}"
        );
    }
    let status = calls.last().unwrap();
    assert!(
        status.query.contains("fieldManager=bitcoin-controller"),
        "{status:?}"
    );
    assert_eq!(
        status.body["metadata"]["resourceVersion"], "10",
        "precondition"
    );
    assert_eq!(status.body["status"]["conditions"][0]["reason"], "Scaling");
    // The password is in the credentials Secret only.
    let password = calls[0].body["data"][PASSWORD_KEY]
        .as_str()
        .unwrap()
        .to_owned();
    for call in calls.iter().skip(1) {
        assert!(!call.body.to_string().contains(&password), "{call:?}");
    }
    assert_eq!(
        events.reasons(),
        ["SecretCreated", "Created", "Created", "Created"]
    );
}

#[tokio::test]
async fn at_rest_nothing_is_written() {
    let net = network(2);
    let world = settled(&net);
    // First pass: the objects are in place; only the status is new.
    let (client, calls) = fake_api(default_answer);
    let (ctx, events) = context(client, &net, &world);
    reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    assert_eq!(lines(&calls), [format!("PATCH {NET}/status")]);
    assert!(events.reasons().is_empty());

    // Second pass with that status cached: not a single call.
    let net = with_written_status(&net, &calls);
    let (client, calls) = fake_api(default_answer);
    let (ctx, events) = context(client, &net, &world);
    reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    assert_eq!(lines(&calls), Vec::<String>::new());
    assert!(events.reasons().is_empty());
}

#[tokio::test]
async fn a_changed_field_that_is_not_replicas_is_applied_back() {
    let net = network(2);
    let mut world = settled(&net);
    let (client, calls) = fake_api(default_answer);
    let (ctx, _) = context(client, &net, &world);
    reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    let net = with_written_status(&net, &calls);

    // Someone raised the memory limit and removed the read-only root.
    let mut sts = serde_json::to_value(&world.statefulsets[0]).unwrap();
    let container = &mut sts["spec"]["template"]["spec"]["containers"][0];
    container["resources"]["limits"]["memory"] = json!("4Gi");
    container["securityContext"]["readOnlyRootFilesystem"] = json!(false);
    world.statefulsets[0] = serde_json::from_value(sts).unwrap();

    let (client, calls) = fake_api(default_answer);
    let (ctx, events) = context(client, &net, &world);
    reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    assert_eq!(
        lines(&calls),
        [format!("PATCH {APPS}/statefulsets/net-sts")]
    );
    let applied = &calls.lock().unwrap()[0].body;
    let container = &applied["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(events.reasons(), ["Updated"]);
}

#[tokio::test]
async fn a_foreign_object_is_left_alone_and_reported_once() {
    let net = network(2);
    let mut world = settled(&net);
    world.services.clear();
    let (client, calls) = fake_api(|call| {
        if call.method == "GET" && call.path.ends_with("/services/net-svc") {
            // Someone else's Service, outside the label-scoped cache.
            return (
                200,
                json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "net-svc", "namespace": "ns", "uid": "x"}}),
            );
        }
        default_answer(call)
    });
    let (ctx, events) = context(client, &net, &world);
    let err = reconcile(&ctx, &ObjectKey::new("ns", "net"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Problem(p) if p.reason == Reason::ResourceConflict),
        "{err}"
    );
    assert_eq!(
        lines(&calls),
        [
            format!("GET {NS_API}/services/net-svc"),
            format!("PATCH {NET}/status")
        ]
    );
    let degraded = calls.lock().unwrap()[1].body["status"]["conditions"][2].clone();
    assert_eq!(degraded["type"], "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "ResourceConflict");
    assert_eq!(events.reasons(), ["ResourceConflict"]);

    // Retried with the status in place: no second Warning, no status write.
    let net = with_written_status(&net, &calls);
    let (client, calls) = fake_api(move |call| {
        if call.method == "GET" {
            return (
                200,
                json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "net-svc", "namespace": "ns", "uid": "x"}}),
            );
        }
        default_answer(call)
    });
    let (ctx, events) = context(client, &net, &world);
    reconcile(&ctx, &ObjectKey::new("ns", "net"))
        .await
        .unwrap_err();
    assert_eq!(lines(&calls), [format!("GET {NS_API}/services/net-svc")]);
    assert!(events.reasons().is_empty());
}

#[tokio::test]
async fn a_refused_apply_is_degraded_with_the_api_servers_message() {
    let net = network(2);
    let mut world = settled(&net);
    world.statefulsets.clear();
    let message = "StatefulSet.apps \"net-sts\" is invalid: spec.template.spec.containers[0].image: Invalid value";
    let (client, calls) = fake_api(move |call| {
        if call.method == "PATCH" && call.path.ends_with("/statefulsets/net-sts") {
            return (
                422,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": message, "reason": "Invalid", "code": 422}),
            );
        }
        default_answer(call)
    });
    let (ctx, events) = context(client, &net, &world);
    let err = reconcile(&ctx, &ObjectKey::new("ns", "net"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Problem(p) if p.reason == Reason::ApplyRejected),
        "{err}"
    );
    assert_eq!(
        lines(&calls),
        [
            format!("GET {APPS}/statefulsets/net-sts"),
            format!("PATCH {APPS}/statefulsets/net-sts"),
            format!("PATCH {NET}/status"),
        ]
    );
    let degraded = calls.lock().unwrap()[2].body["status"]["conditions"][2].clone();
    assert_eq!(degraded["reason"], "ApplyRejected");
    assert!(
        degraded["message"].as_str().unwrap().contains(message),
        "{degraded}"
    );
    assert_eq!(events.reasons(), ["ApplyRejected"]);
}

#[tokio::test]
async fn a_missing_or_invalid_secret_is_reported_and_waits_for_a_change() {
    let mut net = network(2);
    net.spec.secret = Some("mine".into());
    let (client, calls) = fake_api(default_answer);
    let (ctx, events) = context(client, &net, &World::default());
    // No retry with backoff: the Secret's arrival queues the network.
    assert_eq!(
        reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap(),
        Action::Done
    );
    assert_eq!(lines(&calls), [format!("PATCH {NET}/status")]);
    let written = calls.lock().unwrap()[0].body.clone();
    assert_eq!(
        written["status"]["conditions"][2]["reason"],
        "SecretNotFound"
    );
    assert_eq!(events.reasons(), ["SecretNotFound"]);

    let invalid = Secret {
        metadata: ObjectMeta {
            name: Some("mine".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([
            (USER_KEY.to_owned(), "a:b".to_owned()),
            (PASSWORD_KEY.to_owned(), "pw".to_owned()),
        ])),
        ..Default::default()
    };
    let world = World {
        secrets: vec![invalid],
        ..World::default()
    };
    let (client, calls) = fake_api(default_answer);
    let (ctx, events) = context(client, &net, &world);
    reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    assert_eq!(lines(&calls), [format!("PATCH {NET}/status")]);
    let written = calls.lock().unwrap()[0].body.to_string();
    assert!(written.contains("SecretInvalid"), "{written}");
    assert!(!written.contains("\"pw\""), "no credential in the status");
    assert_eq!(events.reasons(), ["SecretInvalid"]);
}

/// The old race: the configuration Secret was applied, its watch event has
/// not arrived, and a reconcile finds no config in the cache. It must not
/// render a new salt (a new hash would roll every pod).
#[tokio::test]
async fn a_config_the_cache_has_not_seen_yet_rolls_nothing() {
    let net = network(2);
    let mut world = settled(&net);
    let (client, calls) = fake_api(default_answer);
    let (ctx, _) = context(client, &net, &world);
    reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    let net = with_written_status(&net, &calls);

    let config = world.secrets.pop().unwrap();
    assert_eq!(config.metadata.name.as_deref(), Some("net-config"));
    let live = serde_json::to_value(&config).unwrap();
    let (client, calls) = fake_api(move |call| {
        if call.method == "GET" && call.path.ends_with("/secrets/net-config") {
            return (200, live.clone());
        }
        default_answer(call)
    });
    let (ctx, events) = context(client, &net, &world);
    reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    assert_eq!(lines(&calls), [format!("GET {NS_API}/secrets/net-config")]);
    assert!(events.reasons().is_empty());

    // Even if the GET finds nothing either (the cache and the API server
    // both behind), the derived salt renders the same configuration: the
    // StatefulSet, whose template carries its hash, is not touched.
    let (client, calls) = fake_api(default_answer);
    let (ctx, _) = context(client, &net, &world);
    reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    assert_eq!(
        lines(&calls),
        [
            format!("GET {NS_API}/secrets/net-config"),
            format!("PATCH {NS_API}/secrets/net-config"),
        ]
    );
}

#[tokio::test]
async fn a_salt_from_an_older_controller_is_kept_while_it_matches() {
    let net = network(1);
    let c = Credentials {
        user: "u".into(),
        password: "p".into(),
        mining_key: None,
        secret_version: None,
    };
    let old = render_bitcoin_conf(
        &rpcauth("u", "p", &[9; 16]),
        &node_option_lines(None, resources::memory_limit_bytes(&net)),
    );
    let live = resources::config_secret(&net, &old);
    assert_eq!(bitcoin_conf(&net, &c, Some(&live)), old);
    // New credentials: the old line no longer matches, the salt is derived.
    let c2 = Credentials {
        user: "u".into(),
        password: "new".into(),
        mining_key: None,
        secret_version: None,
    };
    assert_eq!(
        bitcoin_conf(&net, &c2, Some(&live)),
        bitcoin_conf(&net, &c2, None)
    );
    assert_ne!(bitcoin_conf(&net, &c2, None), old);
}

#[tokio::test]
async fn pods_that_cannot_be_created_are_reported_with_the_reason() {
    let net = network(2);
    let mut world = settled(&net);
    world.pods.clear();
    let message = "create Pod net-sts-0 in StatefulSet net-sts failed error: Pod \"net-sts-0\" is invalid: metadata.labels: Invalid value";
    let (client, calls) = fake_api(move |call| {
        if call.method == "GET" && call.path.ends_with("/events") {
            return (
                200,
                json!({"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": [
                    {"metadata": {"name": "e1", "namespace": "ns"}, "reason": "FailedCreate", "message": message,
                     "involvedObject": {"kind": "StatefulSet", "name": "net-sts", "uid": "sts-uid"},
                     "lastTimestamp": "2026-12-03T08:00:00Z"},
                    {"metadata": {"name": "e0", "namespace": "ns"}, "reason": "FailedCreate", "message": "older sts",
                     "involvedObject": {"kind": "StatefulSet", "name": "net-sts", "uid": "old-uid"},
                     "lastTimestamp": "2026-12-03T08:01:00Z"}
                ]}),
            );
        }
        default_answer(call)
    });
    let (ctx, events) = context(client, &net, &world);
    let err = reconcile(&ctx, &ObjectKey::new("ns", "net"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Problem(p) if p.reason == Reason::PodCreationFailed),
        "{err}"
    );
    let calls = calls.lock().unwrap();
    assert_eq!(calls[0].line(), format!("GET {NS_API}/events"));
    assert!(
        calls[0].query.contains("involvedObject.name%3Dnet-sts")
            || calls[0].query.contains("involvedObject.name=net-sts"),
        "{:?}",
        calls[0]
    );
    let degraded = calls[1].body["status"]["conditions"][2].clone();
    assert_eq!(degraded["reason"], "PodCreationFailed");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("metadata.labels"),
        "{degraded}"
    );
    assert_eq!(events.reasons(), ["PodCreationFailed"]);
}

/// Pods that exist but cannot start: Degraded with the first one's reason,
/// one Warning Event, and no retry (the pods' changes queue the network).
/// A pod being scaled away does not count; once the pods start, the problem
/// is gone.
#[tokio::test]
async fn pods_that_cannot_start_are_degraded_with_the_kubelets_reason() {
    let net = network(2);
    let mut world = settled(&net);
    let unschedulable = "Unschedulable: 0/1 nodes are available: 1 Insufficient memory.";
    world.pods[1].stuck = Some(unschedulable.into());
    world.pods[0].stuck = Some(crate::controller::cached::PULL_FAILED.into());
    let mut leaving = world.pods[1].clone();
    leaving.metadata.name = Some("net-sts-2".into());
    world.pods.push(leaving);
    let (client, calls) = fake_api(default_answer);
    let (ctx, events) = context(client, &net, &world);
    assert_eq!(
        reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap(),
        Action::Done
    );
    assert_eq!(lines(&calls), [format!("PATCH {NET}/status")]);
    let degraded = calls.lock().unwrap()[0].body["status"]["conditions"][2].clone();
    assert_eq!(degraded["reason"], "PodNotStarting");
    assert_eq!(
        degraded["message"],
        format!(
            "pod net-sts-0 cannot start: {} (1 more pod cannot start)",
            crate::controller::cached::PULL_FAILED
        )
    );
    assert_eq!(events.reasons(), ["PodNotStarting"]);

    // Reported already: neither a write nor another Event.
    let reported = with_written_status(&net, &calls);
    let (client, calls) = fake_api(default_answer);
    let (ctx, events) = context(client, &reported, &world);
    reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    assert_eq!(lines(&calls), Vec::<String>::new());
    assert!(events.reasons().is_empty());

    // The pods start: Degraded is False again.
    for pod in &mut world.pods {
        pod.stuck = None;
    }
    let (client, calls) = fake_api(default_answer);
    let (ctx, _) = context(client, &reported, &world);
    reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    let written = calls.lock().unwrap()[0].body["status"]["conditions"][2].clone();
    assert_eq!(written["status"], "False", "{written}");
}

#[test]
fn failed_create_is_cleared_by_a_later_successful_create() {
    let event = |reason: &str, at: &str| -> k8s_openapi::api::core::v1::Event {
        serde_json::from_value(
            json!({"metadata": {"name": at}, "reason": reason, "message": reason,
            "involvedObject": {"uid": "u"}, "lastTimestamp": at}),
        )
        .unwrap()
    };
    let failed = event("FailedCreate", "2026-12-03T08:00:00Z");
    let ok = event("SuccessfulCreate", "2026-12-03T08:00:05Z");
    assert_eq!(
        failed_create(std::slice::from_ref(&failed), "u").as_deref(),
        Some("FailedCreate")
    );
    assert_eq!(failed_create(&[failed.clone(), ok], "u"), None);
    assert_eq!(failed_create(&[failed], "other"), None);
}

#[tokio::test]
async fn an_invalid_name_is_degraded_before_anything_is_created() {
    let mut net = network(1);
    net.metadata.name = Some("n".repeat(60));
    let (client, calls) = fake_api(default_answer);
    let (ctx, events) = context(client, &net, &World::default());
    let key = ObjectKey::new("ns", net.name());
    assert_eq!(reconcile(&ctx, &key).await.unwrap(), Action::Done);
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].path.ends_with("/status"));
    assert_eq!(
        calls[0].body["status"]["conditions"][2]["reason"],
        "InvalidSpec"
    );
    assert_eq!(events.reasons(), ["InvalidSpec"]);
}

/// A node that fails RPC because it is on its way out (its ordinal is no
/// longer wanted after a scale-down) is not the network's problem; a node
/// that is still wanted is.
#[tokio::test]
async fn only_nodes_still_wanted_count_as_rpc_failures() {
    let net = network(1);
    let mut world = settled(&network(2));
    // Both pods ready at addresses nothing listens on: every RPC fails.
    for (i, pod) in world.pods.iter_mut().enumerate() {
        pod.ip = Some(format!("127.77.0.{}", i + 1));
        pod.ready = true;
    }
    // The cached objects were built for 2 nodes: the StatefulSet is applied
    // down to 1, the rest stays.
    let (client, _calls) = fake_api(default_answer);
    let (ctx, _) = context(client, &net, &world);
    let err = reconcile(&ctx, &ObjectKey::new("ns", "net"))
        .await
        .unwrap_err();
    let Error::Problem(problem) = err else {
        panic!("{err}")
    };
    assert_eq!(problem.reason, Reason::NodeSyncFailed);
    assert!(
        problem
            .message
            .starts_with("1 of 2 ready nodes did not answer RPC; first: net-sts-0:"),
        "{}",
        problem.message
    );
}

/// A status computed from a cached network the API server has moved past
/// (409) is retried quietly, not reported as a failure.
#[tokio::test]
async fn a_status_write_on_a_stale_network_is_retried() {
    let net = network(2);
    let world = settled(&net);
    let (client, _calls) = fake_api(|call| {
        if call.path.ends_with("/status") {
            return (
                409,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "the object has been modified", "reason": "Conflict", "code": 409}),
            );
        }
        default_answer(call)
    });
    let (ctx, events) = context(client, &net, &world);
    let err = reconcile(&ctx, &ObjectKey::new("ns", "net"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Stale(_)), "{err}");
    assert_eq!(err.metric_label(), "Stale");
    assert!(events.reasons().is_empty());
}

/// A network deleted after the cache read it (or whose delete the cache
/// missed): the status write finds it gone (404), and that ends the
/// reconcile, with no error, retry or Event.
#[tokio::test]
async fn a_status_write_on_a_deleted_network_ends_the_reconcile() {
    let net = network(2);
    let world = settled(&net);
    let (client, calls) = fake_api(|call| {
        if call.path.ends_with("/status") {
            return not_found();
        }
        default_answer(call)
    });
    let (ctx, events) = context(client, &net, &world);
    let action = reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    assert_eq!(action, Action::Done);
    assert!(events.reasons().is_empty());
    assert_eq!(
        lines(&calls)
            .iter()
            .filter(|l| l.contains("/status"))
            .count(),
        1,
        "one status write, not retried"
    );
}

/// Node options are part of the rendered configuration, so changing one
/// changes the config hash on the pod template: the pods roll.
#[tokio::test]
async fn node_options_reach_the_config_and_roll_the_pods() {
    let c = Credentials {
        user: "u".into(),
        password: "p".into(),
        mining_key: None,
        secret_version: None,
    };
    let mut net = network(1);
    let plain = bitcoin_conf(&net, &c, None);
    net.spec.config = Some(txindex_config(Some(true)));
    let with_txindex = bitcoin_conf(&net, &c, None);
    assert!(
        with_txindex.ends_with("port=18444\ndbcache=211\nmaxmempool=147\ntxindex=1\n"),
        "{with_txindex}"
    );
    net.spec.config = Some(txindex_config(Some(false)));
    let without = bitcoin_conf(&net, &c, None);
    assert!(
        without.ends_with("maxmempool=147\ntxindex=0\n"),
        "{without}"
    );
    let template_hash = |conf: &str| {
        let sts = resources::statefulset(&net, &resources::content_hash(conf.as_bytes()));
        sts.spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[resources::CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let hashes = [
        template_hash(&plain),
        template_hash(&with_txindex),
        template_hash(&without),
    ];
    assert_ne!(hashes[0], hashes[1]);
    assert_ne!(hashes[1], hashes[2]);
    assert_ne!(hashes[0], hashes[2]);
}

fn txindex_config(txindex: Option<bool>) -> crate::api::NodeConfig {
    crate::api::NodeConfig {
        txindex,
        ..Default::default()
    }
}

/// `spec.service`: the `N-rpc` Service is created once, routed to node 0
/// (no node ready yet), shown in status.rpc with its node port once it
/// exists, not written again at rest, re-routed by one write when node 0
/// is not ready but node 1 is, and deleted (only the very object seen, by
/// uid) when `spec.service` is removed.
#[tokio::test]
async fn the_rpc_service_follows_spec_service() {
    use crate::api::{RpcAccess, RpcServiceSpec, ServiceType};
    let plain = network(2);
    let mut world = settled(&plain);
    let mut net = plain.clone();
    net.spec.service = Some(RpcServiceSpec {
        type_: ServiceType::NodePort,
    });

    // Created: one GET (not in the cache), one apply.
    let (client, calls) = fake_api(default_answer);
    let (ctx, events) = context(client, &net, &world);
    reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    assert_eq!(
        lines(&calls),
        [
            format!("GET {NS_API}/services/net-rpc"),
            format!("PATCH {NS_API}/services/net-rpc"),
            format!("PATCH {NET}/status"),
        ]
    );
    let applied = calls.lock().unwrap()[1].body.clone();
    assert_eq!(applied["spec"]["type"], "NodePort");
    assert_eq!(
        applied["spec"]["selector"][resources::POD_NAME_LABEL],
        "net-sts-0"
    );
    assert_eq!(events.reasons(), ["Created"]);
    // Not in the cache yet: no status.rpc (its add event brings the
    // network back).
    let net = with_written_status(&net, &calls);
    assert_eq!(net.status.as_ref().unwrap().rpc, None);

    // In the cache, with the node port the API server allocated: status.rpc
    // says how to connect, and nothing else is written.
    let mut svc: Service = serde_json::from_value(applied).unwrap();
    svc.metadata.uid = Some("rpc-uid".into());
    svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = Some(30123);
    world.services.push(svc);
    let (client, calls) = fake_api(default_answer);
    let (ctx, _) = context(client, &net, &world);
    reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    assert_eq!(lines(&calls), [format!("PATCH {NET}/status")]);
    let net = with_written_status(&net, &calls);
    assert_eq!(
        net.status.as_ref().unwrap().rpc,
        Some(RpcAccess {
            service: "net-rpc".into(),
            port: 18443,
            node_port: Some(30123),
            credentials_secret: "net".into(),
            node: Some(0),
        })
    );
    let (client, calls) = fake_api(default_answer);
    let (ctx, _) = context(client, &net, &world);
    reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    assert_eq!(lines(&calls), Vec::<String>::new(), "at rest");

    // Node 1 ready, node 0 not: one write moves the selector (the RPC of
    // node 1 fails here, nothing listens at its address).
    let mut moved = world.clone();
    moved.pods[1].ip = Some("127.77.0.2".into());
    moved.pods[1].ready = true;
    let (client, calls) = fake_api(default_answer);
    let (ctx, _) = context(client, &net, &moved);
    let _ = reconcile(&ctx, &ObjectKey::new("ns", "net")).await;
    let writes: Vec<Call> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.path.ends_with("/services/net-rpc"))
        .cloned()
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(
        writes[0].body["spec"]["selector"][resources::POD_NAME_LABEL],
        "net-sts-1"
    );

    // spec.service removed: one DELETE of that very Service (by uid), and
    // status.rpc goes.
    let mut removed = net.clone();
    removed.spec.service = None;
    let (client, calls) = fake_api(default_answer);
    let (ctx, events) = context(client, &removed, &world);
    reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    assert_eq!(
        lines(&calls),
        [
            format!("DELETE {NS_API}/services/net-rpc"),
            format!("PATCH {NET}/status"),
        ]
    );
    assert_eq!(
        calls.lock().unwrap()[0].body["preconditions"]["uid"],
        "rpc-uid"
    );
    assert_eq!(events.reasons(), ["Deleted"]);
    let removed = with_written_status(&removed, &calls);
    assert_eq!(removed.status.as_ref().unwrap().rpc, None);

    // A Service of that name the network does not control is never deleted.
    world.services.last_mut().unwrap().metadata.owner_references = None;
    let (client, calls) = fake_api(default_answer);
    let (ctx, _) = context(client, &removed, &world);
    reconcile(&ctx, &ObjectKey::new("ns", "net")).await.unwrap();
    assert_eq!(lines(&calls), Vec::<String>::new());
}

/// A merge patch removes what the new status no longer has (an omitted key
/// would stay as stored), at any depth; lists are replaced whole.
#[test]
fn the_status_patch_nulls_removed_fields() {
    let table = [
        (json!(null), json!({"a": 1}), json!({"a": 1})),
        (
            json!({"a": 1, "rpc": {"port": 1, "nodePort": 2}}),
            json!({"a": 1, "rpc": {"port": 1}}),
            json!({"a": 1, "rpc": {"port": 1, "nodePort": null}}),
        ),
        (
            json!({"a": 1, "rpc": {"port": 1}}),
            json!({"a": 2}),
            json!({"a": 2, "rpc": null}),
        ),
        (
            json!({"nodes": [{"x": 1, "y": 2}]}),
            json!({"nodes": [{"x": 1}]}),
            json!({"nodes": [{"x": 1}]}),
        ),
    ];
    for (old, new, want) in table {
        assert_eq!(merge_patch(&old, &new), want, "{old} -> {new}");
    }
}
