//! Heap bytes one cached object costs, per kind, as the controller's
//! informers keep it (after managedFields are dropped and the informer's
//! transform ran). Counts allocations, so the numbers are exact for this
//! build; they do not include allocator overhead or fragmentation.
//!
//!     cargo run --release --example cache_sizes
//!
//! The Pod is the network's pod template with what the API server, the
//! StatefulSet controller and a kubelet add (defaults, the service account
//! volume, tolerations, a running container's status, five conditions).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use bitcoin_controller::api::BitcoinNetwork;
use bitcoin_controller::controller::cached::{CachedPod, CachedStatefulSet};
use bitcoin_controller::controller::resources;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Average heap bytes of `transform(object)` over many decoded copies.
fn cached_size<K: DeserializeOwned>(json: &str, transform: fn(K) -> K) -> isize {
    const COPIES: isize = 1000;
    let before = LIVE.load(Ordering::Relaxed);
    let kept: Vec<Box<K>> = (0..COPIES)
        .map(|_| Box::new(transform(serde_json::from_str(json).expect("decodes"))))
        .collect();
    let bytes = (LIVE.load(Ordering::Relaxed) - before) / COPIES;
    drop(kept);
    bytes
}

fn bench_pod(net: &BitcoinNetwork, sts: &StatefulSet) -> Value {
    let template = sts.spec.clone().expect("spec").template;
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": template.metadata, "spec": template.spec});
    let name = format!("{}-1", resources::statefulset_name(net));
    let meta = &mut pod["metadata"];
    meta["name"] = json!(name);
    meta["generateName"] = json!(format!("{}-", resources::statefulset_name(net)));
    meta["namespace"] = json!("bench-n1000");
    meta["uid"] = json!("6a9e1f0c-2b3d-4e5f-8a7b-9c0d1e2f3a4b");
    meta["resourceVersion"] = json!("1234567");
    meta["creationTimestamp"] = json!("2026-12-07T01:00:00Z");
    meta["labels"]["controller-revision-hash"] = json!("bench-net-123-sts-5d8f9c7b6d");
    meta["labels"]["statefulset.kubernetes.io/pod-name"] = json!(name);
    meta["labels"]["apps.kubernetes.io/pod-index"] = json!("1");
    meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet",
        "name": "bench-net-123-sts", "uid": "1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b",
        "controller": true, "blockOwnerDeletion": true}]);
    let spec = &mut pod["spec"];
    for (key, value) in [
        ("hostname", json!(name)),
        ("subdomain", json!(resources::service_name(net))),
        ("nodeName", json!("podsim")),
        ("serviceAccountName", json!("default")),
        ("serviceAccount", json!("default")),
        ("dnsPolicy", json!("ClusterFirst")),
        ("restartPolicy", json!("Always")),
        ("schedulerName", json!("default-scheduler")),
        ("enableServiceLinks", json!(true)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
        ("priority", json!(0)),
        ("terminationGracePeriodSeconds", json!(30)),
        (
            "tolerations",
            json!([
            {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready",
             "operator": "Exists", "tolerationSeconds": 300},
            {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable",
             "operator": "Exists", "tolerationSeconds": 300}]),
        ),
    ] {
        spec[key] = value;
    }
    spec["volumes"]
        .as_array_mut()
        .expect("volumes")
        .push(json!({
        "name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"items": [{"key": "ca.crt", "path": "ca.crt"}],
                           "name": "kube-root-ca.crt"}},
            {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1",
                "fieldPath": "metadata.namespace"}, "path": "namespace"}]}}]}}));
    let container = &mut spec["containers"][0];
    container["terminationMessagePath"] = json!("/dev/termination-log");
    container["terminationMessagePolicy"] = json!("File");
    container["imagePullPolicy"] = json!("IfNotPresent");
    container["volumeMounts"]
        .as_array_mut()
        .expect("mounts")
        .push(
            json!({"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                     "name": "kube-api-access-x7k2p", "readOnly": true}),
        );
    let condition = |type_: &str| {
        json!({"type": type_, "status": "True", "lastProbeTime": null,
               "lastTransitionTime": "2026-12-07T01:00:03Z"})
    };
    let conditions = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    .map(condition);
    pod["status"] = json!({"phase": "Running", "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}], "podIP": "127.2.3.4", "podIPs": [{"ip": "127.2.3.4"}],
        "qosClass": "Burstable", "startTime": "2026-12-07T01:00:01Z",
        "conditions": conditions,
        "containerStatuses": [{"name": "bitcoind", "image": "bitcoin/bitcoin:29.0",
            "imageID": format!("docker.io/bitcoin/bitcoin@sha256:{}", "0".repeat(64)),
            "containerID": format!("containerd://{}", "1".repeat(64)),
            "ready": true, "started": true, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-12-07T01:00:02Z"}}, "lastState": {}}]});
    pod
}

fn main() {
    let mut net = BitcoinNetwork::new("bench-net-123", Default::default());
    net.spec.nodes = 3;
    net.metadata.namespace = Some("bench-n1000".into());
    net.metadata.uid = Some("0d8f7a2c-7c1e-4c55-9f4e-2b1d1d3f4a55".into());
    let sts = resources::stamp(resources::statefulset(&net, "5f3c2a1b9d8e7f60"));
    let svc = resources::stamp(resources::service(&net));
    let pod = bench_pod(&net, &sts).to_string();
    let sts = serde_json::to_string(&sts).expect("encodes");
    let svc = serde_json::to_string(&svc).expect("encodes");

    println!(
        "{:<28} {:>10} {:>12}",
        "cached object", "JSON bytes", "heap bytes"
    );
    let rows: [(&str, &str, isize); 5] = [
        ("Pod, whole", &pod, cached_size::<Pod>(&pod, |p| p)),
        (
            "Pod, as cached",
            &pod,
            cached_size::<CachedPod>(&pod, |p| p),
        ),
        (
            "StatefulSet, whole",
            &sts,
            cached_size::<StatefulSet>(&sts, |s| s),
        ),
        (
            "StatefulSet, as cached",
            &sts,
            cached_size::<CachedStatefulSet>(&sts, |s| s),
        ),
        ("Service", &svc, cached_size::<Service>(&svc, |s| s)),
    ];
    for (what, json, bytes) in rows {
        println!("{what:<28} {:>10} {bytes:>12}", json.len());
    }
}
