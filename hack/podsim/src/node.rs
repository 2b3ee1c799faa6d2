//! The simulated Node object: registration, heartbeat, and the binding
//! decision (there is no scheduler; podsim binds what the default scheduler
//! would have bound).

use crate::status::HOST_IP;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube_client::api::{Api, Patch, PatchParams, PostParams};
use kube_client::Client;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const KUBELET_VERSION: &str = "v1.36.3-podsim";
pub const FIELD_MANAGER: &str = "podsim";
const HEARTBEAT: Duration = Duration::from_secs(10);

pub fn labels(node_name: &str) -> BTreeMap<String, String> {
    [
        ("kubernetes.io/hostname", node_name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", std::env::consts::ARCH),
        ("podsim.bitcoin-controller/simulated", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A one-line host fact for nodeInfo; empty when unreadable.
fn host_file(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn conditions(since: &Time, now: &Time) -> serde_json::Value {
    let c = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": since})
    };
    json!([
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "podsim has sufficient memory available"
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "podsim has no disk pressure"
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "podsim has sufficient PID available"
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "podsim is posting ready status"
        ),
    ])
}

/// The full status podsim reports for its Node.
pub fn status_patch(node_name: &str, since: &Time, now: &Time) -> serde_json::Value {
    let resources =
        json!({"cpu": "64", "memory": "256Gi", "pods": "1000", "ephemeral-storage": "1Ti"});
    json!({"status": {
        "conditions": conditions(since, now),
        "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": node_name}],
        "capacity": resources,
        "allocatable": resources,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "architecture": std::env::consts::ARCH,
            "bootID": host_file("/proc/sys/kernel/random/boot_id"),
            "containerRuntimeVersion": "podsim://0.1.0",
            "kernelVersion": host_file("/proc/sys/kernel/osrelease"),
            "kubeProxyVersion": "",
            "kubeletVersion": KUBELET_VERSION,
            "machineID": host_file("/etc/machine-id"),
            "operatingSystem": "linux",
            "osImage": "podsim",
            "systemUUID": "",
        },
    }})
}

/// Only the heartbeat part (conditions), sent every 10 s.
pub fn heartbeat_patch(since: &Time, now: &Time) -> serde_json::Value {
    json!({"status": {"conditions": conditions(since, now)}})
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Creates the Node or brings an existing one in line (labels, no taints),
/// then writes its status.
pub async fn register(
    client: &Client,
    node_name: &str,
    since: &Time,
) -> Result<(), kube_client::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(node_name.to_string()),
            labels: Some(labels(node_name)),
            ..Default::default()
        },
        ..Default::default()
    };
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let patch_params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&pp, &node).await {
        Ok(_) => log::info!("created Node {node_name}"),
        Err(kube_client::Error::Api(s)) if s.code == 409 => {
            let patch = json!({"metadata": {"labels": labels(node_name)}, "spec": {"taints": null, "unschedulable": null}});
            api.patch(node_name, &patch_params, &Patch::Merge(&patch))
                .await?;
            log::info!("updated existing Node {node_name}");
        }
        Err(e) => return Err(e),
    }
    api.patch_status(
        node_name,
        &patch_params,
        &Patch::Merge(status_patch(node_name, since, &now())),
    )
    .await?;
    log::info!("Node {node_name} Ready");
    Ok(())
}

/// Registers the Node (retrying until the API server answers), then keeps
/// its heartbeat fresh until `token` is cancelled. Re-registers if the Node
/// was deleted.
pub async fn run(
    client: Client,
    node_name: String,
    registered: tokio::sync::oneshot::Sender<()>,
    token: CancellationToken,
) {
    let since = now();
    let mut backoff = crate::backoff::Backoff::default();
    loop {
        match register(&client, &node_name, &since).await {
            Ok(()) => break,
            Err(e) => log::warn!("registering Node {node_name}: {e}"),
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    let _ = registered.send(());
    let api: Api<Node> = Api::all(client.clone());
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        match api
            .patch_status(
                &node_name,
                &pp,
                &Patch::Merge(heartbeat_patch(&since, &now())),
            )
            .await
        {
            Ok(_) => log::debug!("heartbeat for Node {node_name}"),
            Err(kube_client::Error::Api(s)) if s.code == 404 => {
                log::warn!("Node {node_name} was deleted; registering it again");
                if let Err(e) = register(&client, &node_name, &since).await {
                    log::warn!("registering Node {node_name}: {e}");
                }
            }
            Err(e) => log::warn!("heartbeat for Node {node_name}: {e}"),
        }
    }
}

/// Would the default scheduler place this pod here? Only pods that are not
/// bound, not being deleted, not finished, not gated, meant for the default
/// scheduler and whose nodeSelector fits this node's labels.
pub fn should_bind(pod: &Pod, node_labels: &BTreeMap<String, String>) -> bool {
    let Some(spec) = &pod.spec else { return false };
    if spec.node_name.as_deref().is_some_and(|n| !n.is_empty())
        || pod.metadata.deletion_timestamp.is_some()
    {
        return false;
    }
    if !matches!(
        spec.scheduler_name.as_deref(),
        None | Some("") | Some("default-scheduler")
    ) {
        return false;
    }
    if matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return false;
    }
    if spec
        .scheduling_gates
        .as_ref()
        .is_some_and(|g| !g.is_empty())
    {
        return false;
    }
    spec.node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node_labels.get(k) == Some(v))
}

/// The Binding the scheduler would POST to `pods/<name>/binding`.
pub fn binding(pod: &Pod, node_name: &str) -> Binding {
    Binding {
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node_name.to_string()),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(
        spec: serde_json::Value,
        extra_meta: serde_json::Value,
        status: serde_json::Value,
    ) -> Pod {
        let mut meta = json!({"name": "p", "namespace": "ns", "uid": "u-1"});
        for (k, v) in extra_meta.as_object().unwrap() {
            meta[k] = v.clone();
        }
        let mut s = json!({"containers": [{"name": "c"}]});
        for (k, v) in spec.as_object().unwrap() {
            s[k] = v.clone();
        }
        serde_json::from_value(json!({"metadata": meta, "spec": s, "status": status})).unwrap()
    }

    #[test]
    fn binding_decision() {
        let l = labels("podsim");
        let none = json!({});
        assert!(should_bind(
            &pod(json!({}), json!({}), json!({"phase": "Pending"})),
            &l
        ));
        assert!(should_bind(
            &pod(
                json!({"schedulerName": "default-scheduler"}),
                json!({}),
                none.clone()
            ),
            &l
        ));
        assert!(should_bind(
            &pod(json!({"nodeName": ""}), json!({}), none.clone()),
            &l
        ));
        assert!(should_bind(
            &pod(
                json!({"nodeSelector": {"kubernetes.io/os": "linux"}}),
                json!({}),
                none.clone()
            ),
            &l
        ));
        assert!(!should_bind(
            &pod(json!({"nodeName": "other"}), json!({}), none.clone()),
            &l
        ));
        assert!(!should_bind(
            &pod(json!({"nodeName": "podsim"}), json!({}), none.clone()),
            &l
        ));
        assert!(!should_bind(
            &pod(
                json!({"schedulerName": "my-scheduler"}),
                json!({}),
                none.clone()
            ),
            &l
        ));
        assert!(!should_bind(
            &pod(
                json!({}),
                json!({"deletionTimestamp": "2026-01-01T00:00:00Z"}),
                none.clone()
            ),
            &l
        ));
        assert!(!should_bind(
            &pod(json!({}), json!({}), json!({"phase": "Succeeded"})),
            &l
        ));
        assert!(!should_bind(
            &pod(
                json!({"schedulingGates": [{"name": "wait"}]}),
                json!({}),
                none.clone()
            ),
            &l
        ));
        assert!(!should_bind(
            &pod(
                json!({"nodeSelector": {"disktype": "ssd"}}),
                json!({}),
                none.clone()
            ),
            &l
        ));
        assert!(!should_bind(
            &pod(
                json!({"nodeSelector": {"kubernetes.io/hostname": "elsewhere"}}),
                json!({}),
                none
            ),
            &l
        ));
    }

    #[test]
    fn binding_targets_the_node() {
        let b = binding(&pod(json!({}), json!({}), json!({})), "podsim");
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(
            v["metadata"],
            json!({"name": "p", "namespace": "ns", "uid": "u-1"})
        );
        assert_eq!(
            v["target"],
            json!({"apiVersion": "v1", "kind": "Node", "name": "podsim"})
        );
    }

    #[test]
    fn node_status_shape() {
        let since = Time("2026-01-01T00:00:00Z".parse().unwrap());
        let now = Time("2026-01-01T00:00:10Z".parse().unwrap());
        let s = &status_patch("podsim", &since, &now)["status"];
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["lastHeartbeatTime"], "2026-01-01T00:00:10Z");
        assert_eq!(ready["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(s["capacity"]["cpu"], "64");
        assert_eq!(s["allocatable"]["memory"], "256Gi");
        assert_eq!(s["capacity"]["pods"], "1000");
        assert_eq!(s["nodeInfo"]["kubeletVersion"], KUBELET_VERSION);
        assert_eq!(
            s["addresses"][0],
            json!({"type": "InternalIP", "address": "127.0.0.1"})
        );
        assert_eq!(
            s["addresses"][1],
            json!({"type": "Hostname", "address": "podsim"})
        );
        // the patch deserializes as a NodeStatus: field names are right
        let typed: k8s_openapi::api::core::v1::NodeStatus =
            serde_json::from_value(s.clone()).unwrap();
        assert_eq!(typed.node_info.unwrap().kubelet_version, KUBELET_VERSION);
        let hb = heartbeat_patch(&since, &now);
        assert_eq!(hb["status"]["conditions"], s["conditions"]);
    }
}
