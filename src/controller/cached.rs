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
//! IP and readiness; a `k8s_openapi` `Pod` without its spec would still
//! carry the room of its empty spec and status (2.4 KB).

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
}

impl CachedPod {
    fn new(meta: ObjectMeta, ip: Option<String>, ready: bool) -> Self {
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
        CachedPod {
            metadata,
            ip,
            ready,
        }
    }
}

fn is_true_ready(type_: &str, status: &str) -> bool {
    type_ == "Ready" && status == "True"
}

impl From<Pod> for CachedPod {
    fn from(pod: Pod) -> Self {
        let status = pod.status.unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| is_true_ready(&c.type_, &c.status));
        CachedPod::new(pod.metadata, status.pod_ip, ready)
    }
}

impl<'de> Deserialize<'de> for CachedPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            metadata: ObjectMeta,
            #[serde(default)]
            status: Option<Status>,
        }
        #[derive(Default, Deserialize)]
        struct Status {
            #[serde(default, rename = "podIP")]
            pod_ip: Option<String>,
            #[serde(default)]
            conditions: Vec<Condition>,
        }
        #[derive(Deserialize)]
        struct Condition {
            #[serde(rename = "type")]
            type_: String,
            status: String,
        }
        let wire = Wire::deserialize(deserializer)?;
        let status = wire.status.unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .any(|c| is_true_ready(&c.type_, &c.status));
        Ok(CachedPod::new(wire.metadata, status.pod_ip, ready))
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

    /// From the wire or from a whole `Pod`, the same: the identity, owner,
    /// deletion timestamp and network label of the metadata, the IP, and
    /// whether the Ready condition is True.
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
            };
            let wire: CachedPod =
                serde_json::from_value(serde_json::to_value(&whole).unwrap()).expect("decodes");
            assert_eq!(wire, want);
            assert_eq!(CachedPod::from(whole), want);
        }
        let bare: CachedPod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!((bare.ip, bare.ready), (None, false));
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
