//! The `BitcoinNetwork` custom resource and its CRD.
//!
//! The group, version, kind and the original spec/status fields are those of the
//! original Go controller, so manifests written for it keep working. Fields added
//! here are optional.

mod crd;

pub use crd::crd;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "bitcoincontroller.christianb93.github.com";
pub const VERSION: &str = "v1";
pub const KIND: &str = "BitcoinNetwork";
pub const PLURAL: &str = "bitcoinnetworks";
pub const API_VERSION: &str = "bitcoincontroller.christianb93.github.com/v1";

/// Upper bound on `spec.nodes`, enforced by the CRD schema.
pub const MAX_NODES: i32 = 100;

/// Default container image for the nodes.
pub const DEFAULT_IMAGE: &str = "bitcoin/bitcoin:29.0";

/// A private Bitcoin regtest network: `spec.nodes` bitcoind nodes that the
/// controller keeps fully meshed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BitcoinNetwork {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: BitcoinNetworkSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BitcoinNetworkStatus>,
}

fn api_version() -> String {
    API_VERSION.to_owned()
}

fn kind() -> String {
    KIND.to_owned()
}

impl BitcoinNetwork {
    pub fn new(name: &str, spec: BitcoinNetworkSpec) -> Self {
        BitcoinNetwork {
            api_version: api_version(),
            kind: kind(),
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        }
    }

    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or_default()
    }

    /// The image the nodes run: `spec.image`, or [`DEFAULT_IMAGE`].
    pub fn image(&self) -> &str {
        match self.spec.image.as_deref() {
            Some(image) if !image.is_empty() => image,
            _ => DEFAULT_IMAGE,
        }
    }
}

impl k8s_openapi::Resource for BitcoinNetwork {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = KIND;
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = PLURAL;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for BitcoinNetwork {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Desired state of a network.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BitcoinNetworkSpec {
    /// Number of bitcoind nodes in the network, 0 to 100. The scale
    /// subresource maps to it: `kubectl scale bitcoinnetwork/NAME --replicas=N`.
    #[schemars(range(min = 0, max = MAX_NODES))]
    pub nodes: i32,
    /// Name of a Secret in the network's namespace holding the RPC credentials
    /// (keys BC_RPC_USER and BC_RPC_PASSWORD). When empty, the controller
    /// creates a Secret named after the network. Either way the namespace must
    /// bind the ClusterRole bitcoin-controller-secrets to the controller's
    /// ServiceAccount, else the network reports SecretAccessDenied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub secret: Option<String>,
    /// Container image running bitcoind (and bitcoin-cli for the readiness
    /// probe); both must be on PATH. Defaults to bitcoin/bitcoin:29.0. An
    /// image reference: letters, digits and . _ / : @ - only, no whitespace.
    /// Changing it rolls the nodes' pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub image: Option<String>,
    /// Options of the nodes' bitcoind, written under [regtest] in their
    /// bitcoin.conf. Changing them rolls the nodes' pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<NodeConfig>,
    /// Compute resources of the bitcoind container (requests and limits of
    /// cpu and memory). Absent: requests cpu 50m, memory 128Mi; limits cpu 1,
    /// memory 512Mi. Given, it replaces those defaults whole. The memory
    /// limit sizes bitcoind's caches (dbcache, maxmempool) so that the node
    /// stays inside it; without a memory limit bitcoind keeps its own
    /// defaults (450 MiB dbcache, 300 MB mempool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Persistent storage for each node's data directory (its chain), so
    /// that a node resumes at its height after a pod deletion, a node
    /// restart or a password rotation. Each node gets a
    /// PersistentVolumeClaim data-<name>-sts-<ordinal>. Absent: an emptyDir
    /// (the chain is lost with the pod). Fixed at creation: it cannot be
    /// added, removed or changed later, except spec.storage.retain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
}

/// Size of a node's claim when `spec.storage.size` is absent.
pub const DEFAULT_STORAGE_SIZE: &str = "1Gi";

/// Persistent storage of the nodes (`spec.storage`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Size of each node's PersistentVolumeClaim, a Kubernetes quantity
    /// such as 1Gi or 500Mi. Absent: 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub size: Option<String>,
    /// StorageClass of the claims. Absent: the cluster's default
    /// StorageClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,
    /// Keep the claims (and so the chains) when the network is deleted or
    /// scaled down; a network created again with the same name, or scaled
    /// up again, finds them. Absent or false: the claims are deleted with
    /// the network and on scale-down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<bool>,
}

impl Storage {
    /// `size`, or [`DEFAULT_STORAGE_SIZE`].
    pub fn size(&self) -> &str {
        self.size.as_deref().unwrap_or(DEFAULT_STORAGE_SIZE)
    }
}

/// Maximum number of `spec.config.extra` lines, and the maximum length of
/// one (bounds that keep the CEL rules' cost within the API server's budget).
pub const MAX_EXTRA_LINES: usize = 64;
pub const MAX_EXTRA_LINE_LENGTH: usize = 256;

/// Pattern of `spec.config.fallbackFee`: a decimal amount in BTC per 1000
/// virtual bytes with at most 8 decimals (Bitcoin Core's precision) and at
/// most 7 integer digits (so it stays below Core's 21 million BTC maximum).
pub const FALLBACK_FEE_PATTERN: &str = r"^[0-9]{1,7}(\.[0-9]{1,8})?$";

/// Options of a node's bitcoind (`spec.config`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfig {
    /// Maintain a full transaction index (bitcoind -txindex), so that
    /// getrawtransaction finds any transaction. Absent: bitcoind's default
    /// (off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txindex: Option<bool>,
    /// Fee rate in BTC/kvB that the wallet uses when it has no fee estimate
    /// (bitcoind -fallbackfee), as a decimal string such as "0.0002"; "0"
    /// disables the fallback. Regtest has no fee estimates, so wallets need
    /// it to send. Absent: bitcoind's default (0, disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = FALLBACK_FEE_PATTERN), length(max = 16))]
    pub fallback_fee: Option<String>,
    /// Maintain the compact block filter index (bitcoind -blockfilterindex,
    /// BIP 157/158 basic filters), e.g. for light clients or
    /// getblockfilter. Absent: bitcoind's default (off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blockfilterindex: Option<bool>,
    /// Further bitcoin.conf lines (key=value), written under [regtest]
    /// after the controller's own, e.g. "peerbloomfilters=1". Refused at
    /// admission: keys the controller sets or that would break the pod or
    /// its RPC access (rpcauth, rpcbind, port, datadir, addnode, ...; the
    /// message names the key), keys with a typed field here (txindex,
    /// fallbackfee, blockfilterindex), and lines that are not one
    /// key=value line (no '=', a leading '-', a [section] header, a
    /// section prefix such as main.key, control characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<String>,
}

/// Observed state of a network, written by the controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BitcoinNetworkStatus {
    /// One entry per pod of the network's StatefulSet, by ordinal.
    #[serde(default)]
    pub nodes: Vec<BitcoinNetworkNode>,
    /// Number of nodes whose pod is Ready.
    #[serde(default)]
    pub ready_nodes: i32,
    /// The metadata.generation this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Label selector of the network's pods, in string form (for the scale
    /// subresource and autoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// `Ready` (every node ready and connected), `Progressing` (nodes are
    /// starting, stopping or connecting) and `Degraded` (something needs the
    /// user: a missing Secret, a name conflict, nodes that do not answer).
    /// The reason of `Degraded` names the problem (e.g. SecretNotFound,
    /// SecretAccessDenied, ResourceConflict, NodeSyncFailed) and its message
    /// says what to do; `kubectl describe` shows the matching Events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Condition types of a network.
pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_PROGRESSING: &str = "Progressing";
pub const CONDITION_DEGRADED: &str = "Degraded";

/// One bitcoind node of a network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BitcoinNetworkNode {
    /// Ordinal of the pod in the StatefulSet (0..n-1).
    pub ordinal: i32,
    /// Whether the pod is Ready, i.e. bitcoind answers RPC.
    pub ready: bool,
    /// Pod IP; empty until the pod has one.
    #[serde(default)]
    pub ip: String,
    /// Name of the node; the pod name (kept for compatibility with the original controller).
    pub node_name: String,
    /// Name of the pod running the node.
    pub pod_name: String,
    /// Stable DNS name of the node through the headless Service.
    pub dns_name: String,
    /// Number of other nodes of the network this node is connected to, as its
    /// `getaddednodeinfo` last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_peers: Option<i32>,
    /// Block height the node last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_manifest_deserializes() {
        // A manifest written for the original Go controller.
        let net: BitcoinNetwork = serde_json::from_value(serde_json::json!({
            "apiVersion": "bitcoincontroller.christianb93.github.com/v1",
            "kind": "BitcoinNetwork",
            "metadata": {"name": "my-network"},
            "spec": {"nodes": 4, "secret": "my-secret"}
        }))
        .unwrap();
        assert_eq!(net.name(), "my-network");
        assert_eq!(net.spec.nodes, 4);
        assert_eq!(net.spec.secret.as_deref(), Some("my-secret"));
        assert_eq!(net.image(), DEFAULT_IMAGE);
    }

    #[test]
    fn status_uses_original_field_names() {
        let status = BitcoinNetworkStatus {
            nodes: vec![BitcoinNetworkNode {
                ordinal: 0,
                ready: true,
                ip: "10.0.0.1".into(),
                node_name: "n-sts-0".into(),
                pod_name: "n-sts-0".into(),
                dns_name: "n-sts-0.n-svc.default.svc.cluster.local".into(),
                ..Default::default()
            }],
            ready_nodes: 1,
            observed_generation: Some(2),
            selector: None,
            conditions: vec![],
        };
        let v = serde_json::to_value(&status).unwrap();
        let node = &v["nodes"][0];
        for key in ["ordinal", "ready", "ip", "nodeName", "dnsName"] {
            assert!(node.get(key).is_some(), "missing {key} in {node}");
        }
        assert_eq!(v["readyNodes"], 1);
        assert_eq!(v["observedGeneration"], 2);
    }

    #[test]
    fn new_sets_type_meta() {
        let v =
            serde_json::to_value(BitcoinNetwork::new("a", BitcoinNetworkSpec::default())).unwrap();
        assert_eq!(v["apiVersion"], API_VERSION);
        assert_eq!(v["kind"], KIND);
        assert!(v.get("status").is_none());
    }
}
