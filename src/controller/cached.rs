//! What the caches keep of networks, pods and StatefulSets: what the
//! controller reads, no more. The caches are most of its memory, and they
//! grow with the networks (`cargo run --release --example cache_sizes`
//! prints the heap bytes of one object of each kind).
//!
//! A network is kept without `kubectl apply`'s copy of its last applied
//! configuration (an annotation as big as the spec, which nothing reads).
//!
//! A StatefulSet is kept as its metadata, typed, and its spec as JSON text.
//! The controller reads a live StatefulSet's metadata (owner, uid, the spec
//! hash) and compares its spec as JSON with the wanted one (drift repair,
//! [`resources::needs_apply`](super::resources::needs_apply)); nothing reads
//! its status. A `k8s_openapi` `StatefulSet` costs about 17 KB of heap,
//! mostly the room of every optional field of its containers, probes and
//! pod spec; this about a fifth of that.
//!
//! A pod is kept as its identity, owner, deletion timestamp, network label,
//! IP, readiness and, while it cannot start, why; a `k8s_openapi` `Pod`
//! without its spec would still carry the room of its empty spec and status
//! (2.4 KB).

use std::borrow::Cow;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use kube_client::Resource;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};

use crate::api::BitcoinNetwork;
use crate::controller::resources::NETWORK_LABEL;

/// The annotation `kubectl apply` keeps the applied object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the network cache keeps of a network.
pub fn cached_network(mut net: BitcoinNetwork) -> BitcoinNetwork {
    if let Some(annotations) = net.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            net.metadata.annotations = None;
        }
    }
    net
}

/// A Pod as cached: read from the API like a `Pod` (same resource).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedPod {
    /// Name, namespace, uid, resourceVersion, owner references, deletion
    /// timestamp, and of the labels the network label only.
    pub metadata: ObjectMeta,
    /// `status.podIP`.
    pub ip: Option<String>,
    /// The pod's `Ready` condition is `True`.
    pub ready: bool,
    /// Why the pod cannot start, in the scheduler's or the kubelet's words,
    /// while that lasts (see [`stuck`]).
    pub stuck: Option<Box<str>>,
}

/// The longest message of the scheduler or the kubelet a pod keeps.
const STUCK_MESSAGE_MAX: usize = 300;

/// What an image pull that keeps failing says: the kubelet's message
/// changes with every attempt (and the back-off), and a status that changes
/// with it would be written again at each one.
pub const PULL_FAILED: &str =
    "ErrImagePull: the image cannot be pulled (kubectl describe pod shows the registry's answer)";

/// What a container that keeps exiting says, for the same reason.
pub const CRASH_LOOP: &str =
    "CrashLoopBackOff: the container keeps exiting (kubectl logs --previous shows why)";

/// The restarts after which a crashing container counts as stuck: a node
/// killed once (a test, an upgrade) is not.
const CRASH_LOOP_RESTARTS: i32 = 3;

/// The kubelet's waiting reasons that mean the container will not start
/// until something changes, with their message.
const CANNOT_START: [&str; 5] = [
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

#[derive(Default, Deserialize)]
struct WireStatus {
    #[serde(default, rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(default)]
    conditions: Vec<WireCondition>,
    #[serde(default, rename = "containerStatuses")]
    container_statuses: Vec<WireContainer>,
}

#[derive(Deserialize)]
struct WireCondition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct WireContainer {
    #[serde(default, rename = "restartCount")]
    restart_count: i32,
    #[serde(default)]
    state: Option<WireState>,
}

#[derive(Deserialize)]
struct WireState {
    #[serde(default)]
    waiting: Option<WireWaiting>,
}

#[derive(Deserialize)]
struct WireWaiting {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Why a pod with this status cannot start, if it cannot: the scheduler
/// found no node for it, or the kubelet cannot pull its image, create or
/// run its container, or the container keeps crashing. A pod that is merely
/// on its way (pulling, creating, a first restart) is not stuck.
fn stuck(status: &WireStatus) -> Option<Box<str>> {
    let said = |reason: &str, message: Option<&str>| -> Box<str> {
        let message = message.unwrap_or("").trim();
        let mut cut = message.len().min(STUCK_MESSAGE_MAX);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        let more = if cut < message.len() { "..." } else { "" };
        format!("{reason}: {}{more}", &message[..cut]).into()
    };
    let unschedulable = status.conditions.iter().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(c) = unschedulable {
        return Some(said("Unschedulable", c.message.as_deref()));
    }
    status.container_statuses.iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        match waiting.reason.as_deref()? {
            "ErrImagePull" | "ImagePullBackOff" => Some(PULL_FAILED.into()),
            "CrashLoopBackOff" if c.restart_count >= CRASH_LOOP_RESTARTS => Some(CRASH_LOOP.into()),
            reason if CANNOT_START.contains(&reason) => {
                Some(said(reason, waiting.message.as_deref()))
            }
            _ => None,
        }
    })
}

fn is_true_ready(c: &WireCondition) -> bool {
    c.type_ == "Ready" && c.status == "True"
}

impl<'de> Deserialize<'de> for CachedPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            metadata: ObjectMeta,
            #[serde(default)]
            status: Option<WireStatus>,
        }
        let Wire {
            metadata: meta,
            status,
        } = Wire::deserialize(deserializer)?;
        let status = status.unwrap_or_default();
        let metadata = ObjectMeta {
            labels: meta.labels.and_then(|mut labels| {
                let network = labels.remove_entry(NETWORK_LABEL)?;
                Some([network].into())
            }),
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            resource_version: meta.resource_version,
            owner_references: meta.owner_references,
            deletion_timestamp: meta.deletion_timestamp,
            ..ObjectMeta::default()
        };
        Ok(CachedPod {
            metadata,
            ready: status.conditions.iter().any(is_true_ready),
            stuck: stuck(&status),
            ip: status.pod_ip,
        })
    }
}

/// A StatefulSet as cached: read from the API like a `StatefulSet` (same
/// resource), kept as metadata plus the spec's JSON text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedStatefulSet {
    pub metadata: ObjectMeta,
    /// `spec`, compact JSON (`null` when there is none).
    spec: Box<str>,
}

impl CachedStatefulSet {
    /// The spec as JSON.
    pub fn spec(&self) -> Value {
        serde_json::from_str(&self.spec).unwrap_or(Value::Null)
    }
}

impl From<StatefulSet> for CachedStatefulSet {
    fn from(sts: StatefulSet) -> Self {
        CachedStatefulSet {
            metadata: sts.metadata,
            spec: serde_json::to_string(&sts.spec)
                .expect("a spec serializes")
                .into(),
        }
    }
}

impl<'de> Deserialize<'de> for CachedStatefulSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            metadata: ObjectMeta,
            #[serde(default)]
            spec: Value,
        }
        let wire = Wire::deserialize(deserializer)?;
        Ok(CachedStatefulSet {
            metadata: wire.metadata,
            spec: wire.spec.to_string().into(),
        })
    }
}

/// As the API serves it (without the status), so that it compares with a
/// wanted `StatefulSet` as JSON.
impl Serialize for CachedStatefulSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        json!({
            "apiVersion": StatefulSet::api_version(&()),
            "kind": StatefulSet::kind(&()),
            "metadata": self.metadata,
            "spec": self.spec(),
        })
        .serialize(serializer)
    }
}

/// `Resource` for a compact cached type: the API identity of the kind it
/// stands for (so it is listed and watched at that kind's path), its own
/// metadata.
macro_rules! resource_as {
    ($cached:ty, $kind:ty) => {
        impl Resource for $cached {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                <$kind>::kind(&())
            }
            fn group(_: &()) -> Cow<'_, str> {
                <$kind>::group(&())
            }
            fn version(_: &()) -> Cow<'_, str> {
                <$kind>::version(&())
            }
            fn api_version(_: &()) -> Cow<'_, str> {
                <$kind>::api_version(&())
            }
            fn plural(_: &()) -> Cow<'_, str> {
                <$kind>::plural(&())
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

resource_as!(CachedPod, Pod);
resource_as!(CachedStatefulSet, StatefulSet);

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSetSpec;

    fn sts() -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("net-sts".into()),
                uid: Some("u1".into()),
                ..ObjectMeta::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(3),
                service_name: Some("net-svc".into()),
                ..StatefulSetSpec::default()
            }),
            status: None,
        }
    }

    /// Read from what the API server sends, the cached copy serializes as
    /// the StatefulSet did, less its status.
    #[test]
    fn reads_like_a_statefulset_without_its_status() {
        let mut served = serde_json::to_value(sts()).unwrap();
        served["status"] = json!({"replicas": 3, "readyReplicas": 2});
        let cached: CachedStatefulSet = serde_json::from_value(served).unwrap();
        assert_eq!(cached.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(cached.spec()["replicas"], 3);
        assert_eq!(
            serde_json::to_value(&cached).unwrap(),
            serde_json::to_value(sts()).unwrap()
        );
        assert_eq!(cached, CachedStatefulSet::from(sts()));
    }

    #[test]
    fn a_cached_network_drops_the_last_applied_configuration_only() {
        let mut net = BitcoinNetwork::new("net", Default::default());
        net.metadata.annotations = Some([(LAST_APPLIED.to_owned(), "{}".to_owned())].into());
        assert_eq!(cached_network(net.clone()).metadata.annotations, None);
        let other = ("team".to_owned(), "a".to_owned());
        net.metadata
            .annotations
            .as_mut()
            .unwrap()
            .extend([other.clone()]);
        assert_eq!(
            cached_network(net).metadata.annotations,
            Some([other].into())
        );
    }

    /// Of a whole `Pod` as the API serves it: the identity, owner, deletion
    /// timestamp and network label of the metadata, the IP, and whether the
    /// Ready condition is True.
    #[test]
    fn a_cached_pod_keeps_what_the_controller_reads() {
        use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
        let owner = OwnerReference {
            kind: "StatefulSet".into(),
            name: "net-sts".into(),
            uid: "s1".into(),
            controller: Some(true),
            ..Default::default()
        };
        let kept = ObjectMeta {
            name: Some("net-sts-1".into()),
            namespace: Some("ns".into()),
            uid: Some("p1".into()),
            resource_version: Some("7".into()),
            owner_references: Some(vec![owner]),
            deletion_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
            labels: Some([(NETWORK_LABEL.to_owned(), "net".to_owned())].into()),
            ..ObjectMeta::default()
        };
        let mut metadata = ObjectMeta {
            generate_name: Some("net-sts-".into()),
            annotations: Some([("a".to_owned(), "b".to_owned())].into()),
            ..kept.clone()
        };
        for label in [
            "controller-revision-hash",
            "statefulset.kubernetes.io/pod-name",
        ] {
            let labels = metadata.labels.as_mut().unwrap();
            labels.insert(label.to_owned(), "x".to_owned());
        }
        let condition = |type_: &str, status: &str| PodCondition {
            type_: type_.into(),
            status: status.into(),
            ..Default::default()
        };
        for (ready, conditions) in [
            (
                true,
                vec![
                    condition("PodScheduled", "True"),
                    condition("Ready", "True"),
                ],
            ),
            (
                false,
                vec![
                    condition("ContainersReady", "True"),
                    condition("Ready", "False"),
                ],
            ),
            (false, vec![]),
        ] {
            let whole = Pod {
                metadata: metadata.clone(),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "bitcoind".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                status: Some(PodStatus {
                    pod_ip: Some("10.0.0.7".into()),
                    phase: Some("Running".into()),
                    conditions: Some(conditions),
                    ..Default::default()
                }),
            };
            let want = CachedPod {
                metadata: kept.clone(),
                ip: Some("10.0.0.7".into()),
                ready,
                stuck: None,
            };
            let wire: CachedPod =
                serde_json::from_value(serde_json::to_value(&whole).unwrap()).expect("decodes");
            assert_eq!(wire, want);
        }
        let bare: CachedPod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!((bare.ip, bare.ready), (None, false));
    }

    fn stuck_of(status: Value) -> Option<String> {
        let pod: CachedPod =
            serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap();
        pod.stuck.map(String::from)
    }

    fn waiting(reason: &str, message: &str, restarts: i32) -> Value {
        json!({"containerStatuses": [{
            "name": "bitcoind",
            "restartCount": restarts,
            "state": {"waiting": {"reason": reason, "message": message}},
        }]})
    }

    /// Unschedulable, an image that cannot be pulled, a container that cannot
    /// be created or keeps crashing: the pod says why, in words that stay the
    /// same from one retry to the next. On its way, it says nothing.
    #[test]
    fn a_pod_that_cannot_start_says_why() {
        let unschedulable = json!({"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient memory.",
        }]});
        assert_eq!(
            stuck_of(unschedulable).as_deref(),
            Some("Unschedulable: 0/1 nodes are available: 1 Insufficient memory.")
        );
        for reason in ["ErrImagePull", "ImagePullBackOff"] {
            let message = format!("{reason}: back-off 20s pulling image \"nope:1\"");
            assert_eq!(
                stuck_of(waiting(reason, &message, 0)).as_deref(),
                Some(PULL_FAILED)
            );
        }
        assert_eq!(
            stuck_of(waiting(
                "CreateContainerConfigError",
                "secret \"s\" not found",
                0
            ))
            .as_deref(),
            Some("CreateContainerConfigError: secret \"s\" not found")
        );
        assert_eq!(
            stuck_of(waiting("CrashLoopBackOff", "back-off 10s", 2)),
            None
        );
        assert_eq!(
            stuck_of(waiting("CrashLoopBackOff", "back-off 40s", 3)).as_deref(),
            Some(CRASH_LOOP)
        );
        // On its way: scheduled and pulling, or not yet looked at.
        assert_eq!(stuck_of(waiting("ContainerCreating", "", 0)), None);
        assert_eq!(
            stuck_of(json!({"conditions": [{"type": "PodScheduled", "status": "True"}]})),
            None
        );
        assert_eq!(stuck_of(json!({})), None);
        // A long message is cut, on a character boundary.
        let long = "é".repeat(400);
        let said = stuck_of(waiting("RunContainerError", &long, 0)).unwrap();
        assert!(said.ends_with("..."), "{said}");
        assert!(said.len() <= "RunContainerError: ...".len() + STUCK_MESSAGE_MAX);
    }

    #[test]
    fn is_the_pods_and_statefulsets_resource() {
        assert_eq!(
            CachedPod::url_path(&(), Some("ns")),
            Pod::url_path(&(), Some("ns"))
        );
        assert_eq!(
            CachedStatefulSet::url_path(&(), Some("ns")),
            StatefulSet::url_path(&(), Some("ns"))
        );
    }
}
