//! The `BitcoinNetwork` custom resource and its CRD.
//!
//! The group, version, kind and the original spec/status fields are those of the
//! original Go controller, so manifests written for it keep working. Fields added
//! here are optional.

mod crd;

pub use crd::crd;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
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
    /// Splits the network into groups of nodes that connect only among
    /// themselves, e.g. [[0, 1], [2]], so that each group can mine its own
    /// chain (reorganisation tests). Each group lists node ordinals, each
    /// below spec.nodes and in one group only; nodes no group names form
    /// one more group. At most 10 groups. Absent or []: one full mesh.
    /// Removing it heals the network: every node connects to every other
    /// again and all follow the chain with the most work.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<Vec<i32>>,
    /// A Service `<name>-rpc` through which apps reach the network's RPC
    /// (18443) and P2P (18444) ports. It routes to one node, the serving
    /// node, because wallets and the mempool are per node. Absent: no such
    /// Service (the headless `<name>-svc` still names every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<RpcServiceSpec>,
    /// Blocks the controller mines: up to a height, then one every
    /// interval. Absent: the controller mines nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mining: Option<MiningSpec>,
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

/// Upper bound on `spec.mining.initialBlocks`, enforced by the CRD schema.
pub const MAX_INITIAL_BLOCKS: i64 = 100_000;

/// Pattern of a regtest address in `spec.mining.address`: bech32 with the
/// `bcrt` prefix (lowercase), or base58 starting with m, n (P2PKH) or 2
/// (P2SH). The controller checks the checksum.
pub const REGTEST_ADDRESS_PATTERN: &str =
    "^(bcrt1[02-9ac-hj-np-z]{8,87}|[mn2][1-9A-HJ-NP-Za-km-z]{25,34})$";

/// Pattern of `spec.mining.interval`: hours, minutes and seconds, e.g.
/// `30s`, `5m`, `1h30m` (a Go duration without fractions or smaller units).
pub const INTERVAL_PATTERN: &str = "^([0-9]+[hms])+$";

/// What the controller mines (`spec.mining`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MiningSpec {
    /// Mine until the mining node's active chain is at least this high
    /// (101 makes the first block reward spendable). A level, not a count:
    /// blocks already on the chain, whoever mined them, count. Ready waits
    /// for it. Absent: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_INITIAL_BLOCKS))]
    pub initial_blocks: Option<i64>,
    /// Then mine one block whenever the newest block on the chain is this
    /// old (hours, minutes, seconds, e.g. 30s, 5m, 1h30m; at least 1s). The
    /// time comes from the chain's tip, so a controller restart or a new
    /// leader neither skips nor repeats a block. Absent: no periodic
    /// mining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub interval: Option<String>,
    /// Regtest address the block rewards go to (bcrt1..., m..., n... or
    /// 2...). Absent: an address of a key the controller generates per
    /// network and keeps in the generated credentials Secret (key
    /// BC_MINING_KEY, WIF); with spec.secret that Secret must hold
    /// BC_MINING_KEY, else the network is Degraded (MiningKeyMissing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 90))]
    pub address: Option<String>,
    /// Ordinal of the node that mines. Absent: 0. When that node is not
    /// ready (or not part of the network), the lowest ready ordinal mines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 99))]
    pub node: Option<i32>,
}

/// `spec.service`: how apps reach the network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RpcServiceSpec {
    /// ClusterIP (reachable inside the cluster) or NodePort (also on every
    /// node's address, at a port the API server allocates; status.rpc.nodePort
    /// shows it).
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
}

/// Type of the `<name>-rpc` Service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
        }
    }
}

/// Most groups `spec.partitions` may have (a bound that keeps its CEL
/// rules' cost within the API server's budget).
pub const MAX_PARTITIONS: usize = 10;

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
    /// `Ready` (the network is usable: every node ready, connected and
    /// Synced, and the height at least spec.mining.initialBlocks; wait for
    /// it with `kubectl wait --for=condition=Ready bitcoinnetwork/NAME`),
    /// `Synced` (every ready node reports the same best block),
    /// `Progressing` (nodes are starting, stopping, connecting, syncing or
    /// blocks are being mined) and `Degraded` (something needs the user: a
    /// missing Secret, a name conflict, nodes that do not answer, mining
    /// that fails).
    /// The reason of `Degraded` names the problem (e.g. SecretNotFound,
    /// SecretAccessDenied, ResourceConflict, NodeSyncFailed) and its message
    /// says what to do; `kubectl describe` shows the matching Events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// One entry per group of spec.partitions (the nodes no group names
    /// last), with the best chain its ready nodes reported; present only
    /// while the network is partitioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<PartitionStatus>>,
    /// How an app connects (present with spec.service, once its Service
    /// exists): the Service, the RPC port, and the Secret holding the RPC
    /// user and password (keys BC_RPC_USER, BC_RPC_PASSWORD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<RpcAccess>,
    /// Height of the mining node's active chain (spec.mining.node, or the
    /// lowest ready ordinal), as it reported at the last reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<i64>,
    /// Hash of the mining node's best block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_block_hash: Option<String>,
    /// What the controller mines, with spec.mining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mining: Option<MiningStatus>,
}

/// The chain of one group of a partitioned network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    /// Ordinals of the group's nodes.
    pub nodes: Vec<i32>,
    /// Height of the highest chain a ready node of the group reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<i64>,
    /// Hash of that chain's tip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_block_hash: Option<String>,
}

/// `status.rpc`: where the network's RPC is served for apps. Never holds a
/// credential, only the name of the Secret that does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RpcAccess {
    /// Name of the Service (`<name>-rpc`, in the network's namespace).
    pub service: String,
    /// RPC port of the Service (18443).
    pub port: i32,
    /// Port of the RPC on every node's address (type NodePort only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i32>,
    /// Secret with the RPC credentials: keys BC_RPC_USER and BC_RPC_PASSWORD.
    pub credentials_secret: String,
    /// Ordinal of the node the Service routes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<i32>,
}

/// Mining by the controller (`status.mining`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MiningStatus {
    /// The address block rewards go to: spec.mining.address, or the
    /// address of the generated key (BC_MINING_KEY in the credentials
    /// Secret).
    pub address: String,
    /// Time of the newest block on the mining node's chain (its header
    /// time, whoever mined it); with spec.mining.interval the next block is
    /// due at this time plus the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_block_time: Option<Time>,
    /// Blocks the controller has mined for this network, as recorded with
    /// its status writes (a block mined by a controller that stopped before
    /// writing the status is on the chain but not counted).
    #[serde(default)]
    pub blocks_mined: i64,
}

/// Condition types of a network.
pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_PROGRESSING: &str = "Progressing";
pub const CONDITION_DEGRADED: &str = "Degraded";
pub const CONDITION_SYNCED: &str = "Synced";

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
    /// Hash of the best block the node last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_block_hash: Option<String>,
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
            ..Default::default()
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
