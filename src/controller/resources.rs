//! Pure builders for the objects a network owns, the check of a spec against
//! what those objects allow, and the test that decides whether a live object
//! must be applied again.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, ExecAction, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, Secret, SecretVolumeSource, SecurityContext, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube_client::Resource;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::api::{BitcoinNetwork, Storage, API_VERSION, GROUP, KIND};
use crate::bitcoin::{extra_line_problem, P2P_PORT, RPC_PORT};
use crate::controller::cached::CachedStatefulSet;
use crate::controller::mining::MINING_KEY;

/// Label carrying the network name on every object and pod of a network.
pub const NETWORK_LABEL: &str = "bitcoincontroller.christianb93.github.com/network";
/// Pod template annotation: hash of the rendered bitcoin.conf, so a credential
/// change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "bitcoincontroller.christianb93.github.com/config-hash";
/// Key of the rendered configuration in the config Secret.
pub const CONFIG_KEY: &str = "bitcoin.conf";
/// Keys of the credentials Secret (those of the original controller).
pub const USER_KEY: &str = "BC_RPC_USER";
pub const PASSWORD_KEY: &str = "BC_RPC_PASSWORD";

const CONTAINER: &str = "bitcoind";
const CONF_DIR: &str = "/etc/bitcoin";
const DATA_DIR: &str = "/data";
/// The data volume: an emptyDir, or with `spec.storage` the claim template
/// whose claims are `data-<statefulset>-<ordinal>`.
const DATA_VOLUME: &str = "data";
/// uid/gid of the `bitcoin` user in the Bitcoin Core images.
const BITCOIN_UID: i64 = 1000;

pub fn service_name(net: &BitcoinNetwork) -> String {
    format!("{}-svc", net.name())
}

pub fn statefulset_name(net: &BitcoinNetwork) -> String {
    format!("{}-sts", net.name())
}

/// The Service apps connect to (`spec.service`), see [`rpc_service`].
pub fn rpc_service_name(net: &BitcoinNetwork) -> String {
    format!("{}-rpc", net.name())
}

pub fn config_secret_name(net: &BitcoinNetwork) -> String {
    format!("{}-config", net.name())
}

/// The Secret holding the RPC user and password: `spec.secret`, or one named
/// after the network that the controller generates.
pub fn credentials_secret_name(net: &BitcoinNetwork) -> String {
    match net.spec.secret.as_deref() {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => net.name().to_owned(),
    }
}

/// Whether the credentials Secret is generated (and owned) by the controller.
pub fn generates_credentials(net: &BitcoinNetwork) -> bool {
    net.spec.secret.as_deref().is_none_or(str::is_empty)
}

/// Stable DNS name of a pod through the network's headless Service.
pub fn dns_name(net: &BitcoinNetwork, pod_name: &str) -> String {
    format!(
        "{pod_name}.{}.{}.svc.cluster.local",
        service_name(net),
        net.namespace()
    )
}

pub fn labels(net: &BitcoinNetwork) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "bitcoind".to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "bitcoin-controller".to_owned(),
        ),
        (NETWORK_LABEL.to_owned(), net.name().to_owned()),
    ])
}

fn selector_labels(net: &BitcoinNetwork) -> BTreeMap<String, String> {
    BTreeMap::from([(NETWORK_LABEL.to_owned(), net.name().to_owned())])
}

/// Controller owner reference to the network: the garbage collector deletes the
/// object with the network, and `handle_object` routes its events back to it.
pub fn owner_reference(net: &BitcoinNetwork) -> OwnerReference {
    OwnerReference {
        api_version: API_VERSION.to_owned(),
        kind: KIND.to_owned(),
        name: net.name().to_owned(),
        uid: net.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `meta` carries a controller reference to this very network (same uid).
pub fn is_controlled_by(meta: &ObjectMeta, net: &BitcoinNetwork) -> bool {
    controller_of(meta).is_some_and(|o| {
        o.kind == KIND
            && o.api_version.split('/').next() == Some(GROUP)
            && Some(&o.uid) == net.metadata.uid.as_ref()
    })
}

/// The controller owner reference of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_deref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

fn object_meta(net: &BitcoinNetwork, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: net.metadata.namespace.clone(),
        labels: Some(labels(net)),
        owner_references: Some(vec![owner_reference(net)]),
        ..ObjectMeta::default()
    }
}

/// Short content hash used in annotations.
pub fn content_hash(data: &[u8]) -> String {
    hex::encode(&Sha256::digest(data)[..8])
}

/// Annotation on every applied object: the hash of the object as this
/// controller version builds it (see [`stamp`]).
pub const SPEC_HASH_ANNOTATION: &str = "bitcoincontroller.christianb93.github.com/spec-hash";
/// Label selector of everything the controller creates (objects and pods):
/// the informers cache only these.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=bitcoin-controller";

/// Longest network name whose objects can all exist: the pods of StatefulSet
/// `<name>-sts` carry the label `controller-revision-hash:
/// <name>-sts-<hash>`, with a hash of up to 10 characters, and label values
/// are limited to 63 characters.
pub const MAX_NAME_LENGTH: usize = 63 - "-sts-".len() - 10;

/// Why the spec (or name) of a network cannot work, for networks stored
/// before the CRD refused such values (the schema refuses them now).
pub fn spec_problem(net: &BitcoinNetwork) -> Option<String> {
    let name = net.name();
    if name.len() > MAX_NAME_LENGTH {
        return Some(format!(
            "metadata.name is {} characters; it may have at most {MAX_NAME_LENGTH} characters, \
             because the label controller-revision-hash=<name>-sts-<hash> of the network's pods \
             must fit in 63",
            name.len()
        ));
    }
    if !is_dns1035_label(name) {
        return Some(format!(
            "metadata.name {name:?} must be a DNS-1035 label (lowercase letters, digits and '-', \
             starting with a letter and ending with a letter or digit), because the Service \
             {name}-svc must be one"
        ));
    }
    if let Some(image) = net.spec.image.as_deref().filter(|i| !is_image_reference(i)) {
        return Some(format!(
            "spec.image {image:?} is not an image reference such as {}: letters, digits and \
             . _ / : @ - only, starting with a letter or digit, no whitespace",
            crate::api::DEFAULT_IMAGE
        ));
    }
    let config = net.spec.config.as_ref()?;
    if let Some(fee) = config
        .fallback_fee
        .as_deref()
        .filter(|f| !is_fallback_fee(f))
    {
        return Some(format!(
            "spec.config.fallbackFee {fee:?} is not a decimal amount in BTC/kvB such as \
             \"0.0002\" (at most 7 integer digits and 8 decimals)"
        ));
    }
    config.extra.iter().enumerate().find_map(|(i, line)| {
        extra_line_problem(line).map(|p| format!("spec.config.extra[{i}] {line:?}: {p}"))
    })
}

/// The CRD's pattern of `spec.config.fallbackFee`
/// ([`crate::api::FALLBACK_FEE_PATTERN`]).
pub fn is_fallback_fee(s: &str) -> bool {
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (s, None),
    };
    let digits =
        |d: &str, max: usize| (1..=max).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit());
    digits(int, 7) && frac.is_none_or(|f| digits(f, 8))
}

/// The CRD's rule for `spec.image` (empty means the default image).
pub fn is_image_reference(s: &str) -> bool {
    s.is_empty()
        || (s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._/:@-".contains(c)))
}

fn is_dns1035_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// `obj` with [`SPEC_HASH_ANNOTATION`] set to the hash of its content
/// (without that annotation). Two builds of the same wanted object carry the
/// same stamp; a controller version that builds it differently does not.
pub fn stamp<K: Resource + Serialize>(mut obj: K) -> K {
    if let Some(annotations) = obj.meta_mut().annotations.as_mut() {
        annotations.remove(SPEC_HASH_ANNOTATION);
        if annotations.is_empty() {
            obj.meta_mut().annotations = None;
        }
    }
    let json = serde_json::to_vec(&obj).expect("objects serialize");
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(SPEC_HASH_ANNOTATION.to_owned(), content_hash(&json));
    obj
}

/// Whether `live` must be applied again to become `wanted` (a [`stamp`]ed
/// object): its stamp differs (a controller version that wants something
/// else, including fields it no longer sets), or a field `wanted` sets has
/// another value on `live` (someone changed a field the controller owns).
/// What `live` has beyond `wanted` (defaults, status, others' labels or
/// containers) is not drift.
pub fn needs_apply<L, K>(live: &L, wanted: &K) -> bool
where
    L: Resource + Serialize,
    K: Resource + Serialize,
{
    fn stamp_of(meta: &ObjectMeta) -> Option<&String> {
        meta.annotations.as_ref()?.get(SPEC_HASH_ANNOTATION)
    }
    if stamp_of(live.meta()) != stamp_of(wanted.meta()) {
        return true;
    }
    let (Ok(live), Ok(wanted)) = (serde_json::to_value(live), serde_json::to_value(wanted)) else {
        return true;
    };
    !covers(&live, &wanted)
}

/// Whether `have` holds every value of `want`: objects recursively, lists of
/// objects with a `name` matched by name (as server-side apply merges them),
/// other lists element by element.
fn covers(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(have), Value::Object(want)) => want
            .iter()
            .all(|(k, w)| have.get(k).is_some_and(|h| covers(h, w))),
        (Value::Array(have), Value::Array(want)) => {
            let named = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_owned);
            if !want.is_empty() && want.iter().all(|w| named(w).is_some()) {
                want.iter().all(|w| {
                    have.iter()
                        .find(|h| named(h) == named(w))
                        .is_some_and(|h| covers(h, w))
                })
            } else {
                have.len() == want.len() && have.iter().zip(want).all(|(h, w)| covers(h, w))
            }
        }
        (have, want) => have == want,
    }
}

/// The ports of both Services: `rpc` 18443 and `p2p` 18444, to the
/// container ports of those names.
fn service_ports() -> Vec<ServicePort> {
    let port = |name: &str, number: u16| ServicePort {
        name: Some(name.to_owned()),
        port: i32::from(number),
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    };
    vec![port("rpc", RPC_PORT), port("p2p", P2P_PORT)]
}

/// The headless Service giving every node a stable DNS name.
pub fn service(net: &BitcoinNetwork) -> Service {
    Service {
        metadata: object_meta(net, service_name(net)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            // Nodes must resolve each other before they are Ready.
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(net)),
            ports: Some(service_ports()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Label the StatefulSet controller puts on each of its pods, with the
/// pod's name: what selects one node.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";

/// The Service apps connect to (`spec.service`): the RPC and P2P ports of
/// the node with ordinal `node` (selected by its pod name), of the type
/// `spec.service.type` asks for. With NodePort the API server allocates
/// the node ports; they are not set here, so they are no drift.
pub fn rpc_service(net: &BitcoinNetwork, spec: &crate::api::RpcServiceSpec, node: i32) -> Service {
    let mut selector = selector_labels(net);
    selector.insert(
        POD_NAME_LABEL.to_owned(),
        format!("{}-{node}", statefulset_name(net)),
    );
    Service {
        metadata: object_meta(net, rpc_service_name(net)),
        spec: Some(ServiceSpec {
            type_: Some(spec.type_.as_str().to_owned()),
            selector: Some(selector),
            ports: Some(service_ports()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The Secret holding the rendered bitcoin.conf (with an `rpcauth=` line, never
/// the password), mounted into every pod.
pub fn config_secret(net: &BitcoinNetwork, bitcoin_conf: &str) -> Secret {
    Secret {
        metadata: object_meta(net, config_secret_name(net)),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_owned(),
            ByteString(bitcoin_conf.as_bytes().to_vec()),
        )])),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    }
}

/// The generated credentials Secret, used when `spec.secret` is empty.
pub fn credentials_secret(
    net: &BitcoinNetwork,
    user: &str,
    password: &str,
    mining_key: &str,
) -> Secret {
    Secret {
        metadata: object_meta(net, credentials_secret_name(net)),
        data: Some(BTreeMap::from([
            (USER_KEY.to_owned(), ByteString(user.as_bytes().to_vec())),
            (
                PASSWORD_KEY.to_owned(),
                ByteString(password.as_bytes().to_vec()),
            ),
            (
                MINING_KEY.to_owned(),
                ByteString(mining_key.as_bytes().to_vec()),
            ),
        ])),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    }
}

/// Reads a UTF-8 value from a Secret's data (or stringData, for objects not
/// yet round-tripped through the API server).
pub fn secret_value<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return std::str::from_utf8(&v.0).ok();
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(String::as_str)
}

/// Resources of the bitcoind container: `spec.resources`, or the defaults
/// (requests cpu 50m, memory 128Mi; limits cpu 1, memory 512Mi).
pub fn container_resources(net: &BitcoinNetwork) -> ResourceRequirements {
    if let Some(resources) = &net.spec.resources {
        return resources.clone();
    }
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    ResourceRequirements {
        requests: Some(quantities("50m", "128Mi")),
        limits: Some(quantities("1", "512Mi")),
        ..ResourceRequirements::default()
    }
}

/// The memory limit of the bitcoind container in bytes (what sizes its
/// caches, see [`crate::bitcoin::cache_sizes`]); `None` without one, or
/// when it is not a quantity (then the API server refuses the StatefulSet
/// anyway).
pub fn memory_limit_bytes(net: &BitcoinNetwork) -> Option<u64> {
    let limits = container_resources(net).limits?;
    quantity_bytes(&limits.get("memory")?.0)
}

/// A Kubernetes quantity (`512Mi`, `1G`, `1.5Gi`, `1e9`, `128974848000m`)
/// as a whole number, rounded down; `None` for a negative or malformed one.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let binary = |power: i32| Some(1024f64.powi(power));
    let factor = match suffix {
        "" => Some(1.0),
        "m" => Some(1e-3),
        "k" => Some(1e3),
        "M" => Some(1e6),
        "G" => Some(1e9),
        "T" => Some(1e12),
        "P" => Some(1e15),
        "E" => Some(1e18),
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        exp => {
            let exp = exp.strip_prefix(['e', 'E'])?;
            Some(10f64.powi(exp.parse::<i32>().ok()?))
        }
    }?;
    // `as` saturates: an absurdly large limit is u64::MAX bytes.
    Some((value * factor).floor() as u64)
}

/// The StatefulSet running the nodes. `config_hash` is the hash of the rendered
/// bitcoin.conf; it lands on the pod template so a change rolls the pods.
pub fn statefulset(net: &BitcoinNetwork, config_hash: &str) -> StatefulSet {
    let conf = format!("-conf={CONF_DIR}/{CONFIG_KEY}");
    let datadir = format!("-datadir={DATA_DIR}");
    let port = |name: &str, number: u16| ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(number),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    };
    let container = Container {
        name: CONTAINER.to_owned(),
        image: Some(net.image().to_owned()),
        command: Some(vec!["bitcoind".to_owned(), conf.clone(), datadir.clone()]),
        ports: Some(vec![port("rpc", RPC_PORT), port("p2p", P2P_PORT)]),
        // The CLI authenticates with the cookie bitcoind writes into the data
        // directory, so the probe needs no password.
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    "bitcoin-cli".to_owned(),
                    conf,
                    datadir,
                    "getnetworkinfo".to_owned(),
                ]),
            }),
            initial_delay_seconds: Some(2),
            period_seconds: Some(3),
            timeout_seconds: Some(3),
            success_threshold: Some(1),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: Some(container_resources(net)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".to_owned(),
                mount_path: CONF_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: DATA_VOLUME.to_owned(),
                mount_path: DATA_DIR.to_owned(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let mut template_labels = labels(net);
    template_labels.extend(selector_labels(net));
    StatefulSet {
        metadata: object_meta(net, statefulset_name(net)),
        spec: Some(StatefulSetSpec {
            replicas: Some(net.spec.nodes),
            service_name: Some(service_name(net)),
            // All nodes start at once: a network of n nodes comes up in the
            // time of one.
            pod_management_policy: Some("Parallel".to_owned()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(net)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_owned(),
                        config_hash.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(PodSecurityContext {
                        run_as_user: Some(BITCOIN_UID),
                        run_as_group: Some(BITCOIN_UID),
                        fs_group: Some(BITCOIN_UID),
                        ..PodSecurityContext::default()
                    }),
                    automount_service_account_token: Some(false),
                    volumes: Some(
                        vec![Volume {
                            name: "config".to_owned(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(config_secret_name(net)),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        }]
                        .into_iter()
                        .chain(net.spec.storage.is_none().then(|| Volume {
                            name: DATA_VOLUME.to_owned(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        }))
                        .collect(),
                    ),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: net
                .spec
                .storage
                .as_ref()
                .map(|storage| vec![data_claim_template(net, storage)]),
            persistent_volume_claim_retention_policy: net
                .spec
                .storage
                .as_ref()
                .map(claim_retention_policy),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// The claim template of the data volume (`spec.storage`). `volumeMode`
/// is written out as the API server defaults it, so the live StatefulSet
/// covers what is built.
fn data_claim_template(net: &BitcoinNetwork, storage: &Storage) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.to_owned()),
            labels: Some(labels(net)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(storage.size().to_owned()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            storage_class_name: storage.storage_class_name.clone(),
            volume_mode: Some("Filesystem".to_owned()),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// `retain` false (the default): the claims go with the network and with
/// the nodes a scale-down removes; true: they stay in both cases.
fn claim_retention_policy(storage: &Storage) -> StatefulSetPersistentVolumeClaimRetentionPolicy {
    let policy = if storage.retain == Some(true) {
        "Retain"
    } else {
        "Delete"
    };
    StatefulSetPersistentVolumeClaimRetentionPolicy {
        when_deleted: Some(policy.to_owned()),
        when_scaled: Some(policy.to_owned()),
    }
}

/// The built StatefulSet `wanted` with the claim templates of `live` where
/// those do not cover the built ones: claim templates cannot change after
/// creation, and the API server keeps a size in its canonical form (1024Mi
/// as 1Gi), so applying the built ones again would be refused or would
/// fight over the spelling. Where they cover them (the usual case), the
/// built ones stay, and so does the stamp. Admission refuses a change of
/// `spec.storage` but for `retain`, which the retention policy follows.
pub fn keep_claim_templates(
    mut wanted: StatefulSet,
    live: Option<&CachedStatefulSet>,
) -> StatefulSet {
    let Some(live) = live else { return wanted };
    let have = live
        .spec()
        .get_mut("volumeClaimTemplates")
        .map_or(Value::Null, Value::take);
    let want = wanted
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or(Value::Null);
    if !covers(&have, &want) {
        if let Some(spec) = wanted.spec.as_mut() {
            spec.volume_claim_templates = serde_json::from_value(have).ok();
        }
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BitcoinNetworkSpec;
    use serde_json::{json, Value};

    fn net(nodes: i32) -> BitcoinNetwork {
        let mut net = BitcoinNetwork::new(
            "my-network",
            BitcoinNetworkSpec {
                nodes,
                ..Default::default()
            },
        );
        net.metadata.namespace = Some("ns1".into());
        net.metadata.uid = Some("uid-1".into());
        net
    }

    #[test]
    fn names_follow_the_original_controller() {
        let n = net(3);
        assert_eq!(service_name(&n), "my-network-svc");
        assert_eq!(statefulset_name(&n), "my-network-sts");
        assert_eq!(
            dns_name(&n, "my-network-sts-0"),
            "my-network-sts-0.my-network-svc.ns1.svc.cluster.local"
        );
    }

    #[test]
    fn credentials_secret_defaults_to_the_network_name() {
        let mut n = net(1);
        assert_eq!(credentials_secret_name(&n), "my-network");
        assert!(generates_credentials(&n));
        n.spec.secret = Some(String::new());
        assert!(generates_credentials(&n));
        n.spec.secret = Some("mine".into());
        assert_eq!(credentials_secret_name(&n), "mine");
        assert!(!generates_credentials(&n));
    }

    #[test]
    fn owned_objects_carry_a_controller_reference() {
        let n = net(3);
        for meta in [
            service(&n).metadata,
            statefulset(&n, "h").metadata,
            config_secret(&n, "x").metadata,
            credentials_secret(&n, "u", "p", "k").metadata,
        ] {
            assert!(is_controlled_by(&meta, &n), "{meta:?}");
            assert_eq!(meta.namespace.as_deref(), Some("ns1"));
            assert_eq!(meta.labels.as_ref().unwrap()[NETWORK_LABEL], "my-network");
        }
        let mut other = net(3);
        other.metadata.uid = Some("uid-2".into());
        assert!(!is_controlled_by(&service(&n).metadata, &other));
    }

    #[test]
    fn service_is_headless_with_named_ports() {
        let svc = service(&net(3));
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        let ports: Vec<_> = spec
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port))
            .collect();
        assert_eq!(ports, vec![("rpc".into(), 18443), ("p2p".into(), 18444)]);
    }

    #[test]
    fn rpc_service_routes_to_one_node_with_named_ports() {
        use crate::api::{RpcServiceSpec, ServiceType};
        let n = net(3);
        for type_ in [ServiceType::ClusterIP, ServiceType::NodePort] {
            let svc = rpc_service(&n, &RpcServiceSpec { type_ }, 2);
            assert_eq!(svc.metadata.name.as_deref(), Some("my-network-rpc"));
            assert!(is_controlled_by(&svc.metadata, &n));
            assert_eq!(
                svc.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
                "bitcoin-controller",
                "the Service informer selects on it"
            );
            let spec = svc.spec.unwrap();
            assert_eq!(spec.type_.as_deref(), Some(type_.as_str()));
            // Not headless, and no node port of its own: the API server
            // allocates both, so neither is drift.
            assert_eq!(spec.cluster_ip, None);
            let selector = spec.selector.unwrap();
            assert_eq!(
                selector,
                BTreeMap::from([
                    (NETWORK_LABEL.to_owned(), "my-network".to_owned()),
                    (POD_NAME_LABEL.to_owned(), "my-network-sts-2".to_owned()),
                ])
            );
            let ports: Vec<_> = spec
                .ports
                .unwrap()
                .into_iter()
                .map(|p| (p.name.unwrap(), p.port, p.target_port, p.node_port))
                .collect();
            assert_eq!(
                ports,
                vec![
                    (
                        "rpc".into(),
                        18443,
                        Some(IntOrString::String("rpc".into())),
                        None
                    ),
                    (
                        "p2p".into(),
                        18444,
                        Some(IntOrString::String("p2p".into())),
                        None
                    ),
                ]
            );
        }
        // Another serving node or type is drift (one write); an allocated
        // node port or cluster IP is not.
        let spec = RpcServiceSpec {
            type_: ServiceType::NodePort,
        };
        let wanted = stamp(rpc_service(&n, &spec, 0));
        let mut live = serde_json::to_value(&wanted).unwrap();
        live["spec"]["clusterIP"] = json!("10.96.0.7");
        live["spec"]["ports"][0]["nodePort"] = json!(30123);
        let live: Service = serde_json::from_value(live).unwrap();
        assert!(!needs_apply(&live, &wanted));
        assert!(needs_apply(&live, &stamp(rpc_service(&n, &spec, 1))));
        let cluster_ip = RpcServiceSpec {
            type_: ServiceType::ClusterIP,
        };
        assert!(needs_apply(&live, &stamp(rpc_service(&n, &cluster_ip, 0))));
    }

    #[test]
    fn statefulset_runs_bitcoind_with_the_rendered_config() {
        let n = net(3);
        let sts = statefulset(&n, "abc");
        let spec = sts.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("my-network-svc"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        let template_meta = spec.template.metadata.unwrap();
        assert_eq!(
            template_meta.annotations.unwrap()[CONFIG_HASH_ANNOTATION],
            "abc"
        );
        // The selector must match the template labels.
        let selector = spec.selector.match_labels.unwrap();
        let template_labels = template_meta.labels.unwrap();
        assert!(selector
            .iter()
            .all(|(k, v)| template_labels.get(k) == Some(v)));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some(crate::api::DEFAULT_IMAGE));
        let probe = c.readiness_probe.as_ref().unwrap().exec.as_ref().unwrap();
        assert_eq!(
            probe.command.as_ref().unwrap().last().unwrap(),
            "getnetworkinfo"
        );
        let volumes = pod.volumes.unwrap();
        assert_eq!(
            volumes[0].secret.as_ref().unwrap().secret_name.as_deref(),
            Some("my-network-config")
        );
        // No credential of any kind in the pod spec.
        let text = serde_json::to_string(&pod.containers).unwrap();
        assert!(!text.contains("rpcpassword") && !text.contains("BC_RPC"));
    }

    fn with_storage(storage: Option<Storage>) -> BitcoinNetwork {
        let mut n = net(3);
        n.spec.storage = storage;
        n
    }

    /// Without `spec.storage` the StatefulSet is what it always was (an
    /// emptyDir, no claims, no retention policy): existing networks do not
    /// roll. With it, the data volume is a claim template and `retain`
    /// picks the retention policy.
    #[test]
    fn storage_turns_the_data_volume_into_a_claim_template() {
        // The claim's size, class and retention policy; None: an emptyDir.
        type Claim = Option<(&'static str, Option<&'static str>, &'static str)>;
        let table: [(Option<Storage>, Claim); 5] = [
            (None, None),
            (Some(Storage::default()), Some(("1Gi", None, "Delete"))),
            (
                Some(Storage {
                    size: Some("5Gi".into()),
                    storage_class_name: Some("local".into()),
                    retain: Some(false),
                }),
                Some(("5Gi", Some("local"), "Delete")),
            ),
            (
                Some(Storage {
                    retain: Some(true),
                    ..Storage::default()
                }),
                Some(("1Gi", None, "Retain")),
            ),
            (
                Some(Storage {
                    size: Some("300Mi".into()),
                    retain: None,
                    ..Storage::default()
                }),
                Some(("300Mi", None, "Delete")),
            ),
        ];
        for (storage, want) in table {
            let spec = statefulset(&with_storage(storage.clone()), "h")
                .spec
                .unwrap();
            let pod = spec.template.spec.as_ref().unwrap();
            let volumes: Vec<&Volume> = pod.volumes.iter().flatten().collect();
            let data = volumes.iter().find(|v| v.name == DATA_VOLUME);
            // The container mounts "data" either way.
            let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
            assert!(mounts
                .iter()
                .any(|m| m.name == DATA_VOLUME && m.mount_path == DATA_DIR));
            let Some((size, class, policy)) = want else {
                assert!(data.unwrap().empty_dir.is_some(), "{storage:?}");
                assert_eq!(spec.volume_claim_templates, None);
                assert_eq!(spec.persistent_volume_claim_retention_policy, None);
                continue;
            };
            assert!(
                data.is_none(),
                "{storage:?}: a claim template replaces the emptyDir"
            );
            let templates = spec.volume_claim_templates.unwrap();
            assert_eq!(templates.len(), 1);
            let claim = &templates[0];
            assert_eq!(claim.metadata.name.as_deref(), Some(DATA_VOLUME));
            assert_eq!(
                claim.metadata.labels.as_ref().unwrap()[NETWORK_LABEL],
                "my-network"
            );
            let claim_spec = claim.spec.as_ref().unwrap();
            assert_eq!(
                claim_spec.access_modes.as_deref(),
                Some(&["ReadWriteOnce".to_owned()][..])
            );
            let requests = claim_spec.resources.as_ref().unwrap().requests.as_ref();
            assert_eq!(requests.unwrap()["storage"], Quantity(size.into()));
            assert_eq!(claim_spec.storage_class_name.as_deref(), class);
            let retention = spec.persistent_volume_claim_retention_policy.unwrap();
            assert_eq!(retention.when_deleted.as_deref(), Some(policy));
            assert_eq!(retention.when_scaled.as_deref(), Some(policy));
        }
    }

    /// The apply never touches the claim templates of a live StatefulSet:
    /// the built ones are kept where the live ones cover them (stamp and
    /// all, so nothing is applied), the live ones are used where they do
    /// not (a size the API server spelled canonically, or templates that
    /// differ), and a StatefulSet still to be created gets the built ones.
    #[test]
    fn the_apply_keeps_the_claim_templates_of_a_live_statefulset() {
        let storage = |size: &str, retain| {
            with_storage(Some(Storage {
                size: Some(size.into()),
                retain: Some(retain),
                ..Storage::default()
            }))
        };
        let built = statefulset(&storage("1Gi", false), "h");
        // Not created yet: what is built.
        assert_eq!(keep_claim_templates(built.clone(), None), built);

        // Live as the API server stores it: defaults and a status added.
        let mut stored = serde_json::to_value(stamp(built.clone())).unwrap();
        let template = &mut stored["spec"]["volumeClaimTemplates"][0];
        template["apiVersion"] = json!("v1");
        template["kind"] = json!("PersistentVolumeClaim");
        template["status"] = json!({"phase": "Pending"});
        let live: CachedStatefulSet = serde_json::from_value(stored.clone()).unwrap();
        let wanted = stamp(keep_claim_templates(built.clone(), Some(&live)));
        assert_eq!(wanted, stamp(built.clone()));
        assert!(!needs_apply(&live, &wanted));

        // Asked as 1024Mi, stored as 1Gi: the live spelling is applied,
        // once (then the stamps agree).
        let built_1024 = statefulset(&storage("1024Mi", false), "h");
        let wanted = stamp(keep_claim_templates(built_1024.clone(), Some(&live)));
        let templates = |s: &StatefulSet| s.spec.as_ref().unwrap().volume_claim_templates.clone();
        assert_eq!(
            serde_json::to_value(templates(&wanted)).unwrap(),
            live.spec()["volumeClaimTemplates"]
        );
        let mut applied = serde_json::to_value(&wanted).unwrap();
        applied["spec"]["volumeClaimTemplates"] = stored["spec"]["volumeClaimTemplates"].clone();
        let live_after: CachedStatefulSet = serde_json::from_value(applied).unwrap();
        let again = stamp(keep_claim_templates(built_1024, Some(&live_after)));
        assert!(!needs_apply(&live_after, &again));

        // retain changes the retention policy, and only that.
        let retained = stamp(keep_claim_templates(
            statefulset(&storage("1Gi", true), "h"),
            Some(&live),
        ));
        assert!(needs_apply(&live, &retained));
        assert_eq!(templates(&retained), templates(&built));
        let policy = retained.spec.as_ref().unwrap();
        let policy = policy.persistent_volume_claim_retention_policy.as_ref();
        assert_eq!(policy.unwrap().when_deleted.as_deref(), Some("Retain"));

        // A live StatefulSet without claims (an emptyDir network) keeps none.
        let plain = CachedStatefulSet::from(stamp(statefulset(&net(3), "h")));
        let wanted = keep_claim_templates(statefulset(&storage("1Gi", false), "h"), Some(&plain));
        assert_eq!(templates(&wanted), None);
    }

    #[test]
    fn every_owned_field_counts_as_drift_and_defaults_do_not() {
        let n = net(3);
        let wanted = stamp(statefulset(&n, "h1"));
        let live = wanted.clone();
        assert!(!needs_apply(&live, &wanted));

        // What the API server adds (defaults, status, other managers'
        // labels and containers) is not drift.
        let mut defaulted = serde_json::to_value(&wanted).unwrap();
        defaulted["spec"]["revisionHistoryLimit"] = json!(10);
        defaulted["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] =
            json!("/dev/termination-log");
        defaulted["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar", "image": "busybox"}));
        defaulted["metadata"]["labels"]["team"] = json!("a");
        defaulted["status"] = json!({"replicas": 3});
        let defaulted: StatefulSet = serde_json::from_value(defaulted).unwrap();
        assert!(!needs_apply(&defaulted, &wanted));

        // Any field the controller sets, changed by someone else, is drift:
        // not only replicas and the image, also resources, security
        // context, probe timings, volumes, ports and template labels.
        type Edit = (&'static str, fn(&mut Value));
        let edits: [Edit; 9] = [
            ("replicas", |v| v["spec"]["replicas"] = json!(5)),
            ("image", |v| {
                v["spec"]["template"]["spec"]["containers"][0]["image"] = json!("x:1")
            }),
            ("resources", |v| {
                v["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] =
                    json!("2Gi")
            }),
            ("securityContext", |v| {
                v["spec"]["template"]["spec"]["containers"][0]["securityContext"]
                    ["readOnlyRootFilesystem"] = json!(false)
            }),
            ("probe timing", |v| {
                v["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSeconds"] =
                    json!(60)
            }),
            ("volume", |v| {
                v["spec"]["template"]["spec"]["volumes"][1] =
                    json!({"name": "data", "hostPath": {"path": "/tmp"}})
            }),
            ("port", |v| {
                v["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] =
                    json!(1)
            }),
            ("template label", |v| {
                v["spec"]["template"]["metadata"]["labels"][NETWORK_LABEL] = json!("other")
            }),
            ("removed mount", |v| {
                v["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
                    .as_array_mut()
                    .unwrap()
                    .pop();
            }),
        ];
        for (what, edit) in edits {
            let mut v = serde_json::to_value(&wanted).unwrap();
            edit(&mut v);
            let edited: StatefulSet = serde_json::from_value(v).unwrap();
            assert!(needs_apply(&edited, &wanted), "{what} not detected");
        }

        // A new controller version that wants something else (here: one field
        // less) applies once, recognised by the hash.
        let mut older = serde_json::to_value(&wanted).unwrap();
        older["spec"]["template"]["spec"]["containers"][0]["workingDir"] = json!("/old");
        let mut older: StatefulSet = serde_json::from_value(older).unwrap();
        older.metadata.annotations = None;
        let older = stamp(older);
        assert!(needs_apply(&older, &wanted));

        let svc = stamp(service(&n));
        assert!(!needs_apply(&svc, &svc));
        let mut changed = svc.clone();
        changed.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 1;
        assert!(needs_apply(&changed, &svc));
    }

    #[test]
    fn the_stamp_is_a_hash_of_the_content() {
        let n = net(3);
        let a = stamp(statefulset(&n, "h1"));
        let b = stamp(statefulset(&n, "h1"));
        let c = stamp(statefulset(&n, "h2"));
        let hash = |s: &StatefulSet| {
            s.metadata.annotations.as_ref().unwrap()[SPEC_HASH_ANNOTATION].clone()
        };
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(hash(&a), hash(&c));
        // Stamping twice gives the same stamp.
        assert_eq!(hash(&stamp(a.clone())), hash(&a));
    }

    #[test]
    fn names_whose_children_cannot_exist_are_refused() {
        let named = |name: &str| {
            let mut n = net(1);
            n.metadata.name = Some(name.into());
            spec_problem(&n)
        };
        assert_eq!(named("my-network"), None);
        assert_eq!(named(&"a".repeat(MAX_NAME_LENGTH)), None);
        let long = named(&"a".repeat(MAX_NAME_LENGTH + 1)).unwrap();
        assert!(long.contains("at most 48 characters"), "{long}");
        for bad in ["1net", "my.net", "net-"] {
            let msg = named(bad).unwrap();
            assert!(msg.contains("DNS-1035"), "{bad}: {msg}");
        }
        let mut n = net(1);
        n.spec.image = Some(" bitcoin/bitcoin:29.0".into());
        assert!(spec_problem(&n).unwrap().contains("spec.image"));
        n.spec.image = Some("bitcoin/bitcoin:29.0".into());
        assert_eq!(spec_problem(&n), None);
    }

    #[test]
    fn secret_values_read_data_and_string_data() {
        let s = credentials_secret(&net(1), "alice", "pw", "key");
        assert_eq!(secret_value(&s, USER_KEY), Some("alice"));
        let s = Secret {
            string_data: Some(BTreeMap::from([(PASSWORD_KEY.into(), "x".into())])),
            ..Secret::default()
        };
        assert_eq!(secret_value(&s, PASSWORD_KEY), Some("x"));
        assert_eq!(secret_value(&s, USER_KEY), None);
    }

    #[test]
    fn fallback_fee_pattern() {
        for ok in ["0", "0.0002", "1", "0.00000001", "1234567.12345678"] {
            assert!(is_fallback_fee(ok), "{ok}");
        }
        for bad in [
            "",
            ".1",
            "1.",
            "0.000000001",
            "12345678",
            "-1",
            "1e-4",
            "0,1",
            " 0.1",
            "0.1.2",
        ] {
            assert!(!is_fallback_fee(bad), "{bad:?}");
        }
    }

    #[test]
    fn node_options_the_crd_refuses_are_invalid_specs() {
        let mut n = net(1);
        n.spec.config = Some(crate::api::NodeConfig {
            txindex: Some(true),
            fallback_fee: Some("0.0002".into()),
            extra: vec!["peerbloomfilters=1".into()],
            ..Default::default()
        });
        assert_eq!(spec_problem(&n), None);
        n.spec.config.as_mut().unwrap().fallback_fee = Some("1e-4".into());
        assert!(spec_problem(&n)
            .unwrap()
            .starts_with("spec.config.fallbackFee \"1e-4\""));
        let config = n.spec.config.as_mut().unwrap();
        config.fallback_fee = None;
        config.extra.push("rpcbind=::".into());
        assert_eq!(
            spec_problem(&n).unwrap(),
            "spec.config.extra[1] \"rpcbind=::\": rpcbind is set by the controller and cannot be \
             changed"
        );
    }

    #[test]
    fn quantities_in_bytes() {
        let table: &[(&str, Option<u64>)] = &[
            ("512Mi", Some(512 << 20)),
            ("1Gi", Some(1 << 30)),
            ("1.5Gi", Some(1536 << 20)),
            ("1G", Some(1_000_000_000)),
            ("500M", Some(500_000_000)),
            ("128974848", Some(128_974_848)),
            ("128974848000m", Some(128_974_848)),
            ("129e6", Some(129_000_000)),
            ("1E3", Some(1000)),
            ("+2Ki", Some(2048)),
            ("-1Gi", None),
            ("", None),
            ("Gi", None),
            ("1.2.3Mi", None),
            ("12MB", None),
            ("1e", None),
        ];
        for &(q, want) in table {
            assert_eq!(quantity_bytes(q), want, "{q:?}");
        }
    }

    #[test]
    fn resources_default_or_from_the_spec() {
        let mut n = net(1);
        let limit = |n: &BitcoinNetwork| {
            let sts = statefulset(n, "h");
            let pod = sts.spec.unwrap().template.spec.unwrap();
            pod.containers[0].resources.clone().unwrap()
        };
        // Absent: the defaults of earlier versions, and a 512Mi limit.
        let defaults = limit(&n);
        assert_eq!(defaults.limits.as_ref().unwrap()["memory"].0, "512Mi");
        assert_eq!(defaults.requests.as_ref().unwrap()["cpu"].0, "50m");
        assert_eq!(memory_limit_bytes(&n), Some(512 << 20));
        // Given: used whole.
        let mine = ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("2Gi".to_owned()),
            )])),
            ..ResourceRequirements::default()
        };
        n.spec.resources = Some(mine.clone());
        assert_eq!(limit(&n), mine);
        assert_eq!(memory_limit_bytes(&n), Some(2 << 30));
        // Without a memory limit bitcoind keeps its own cache sizes.
        n.spec.resources = Some(ResourceRequirements {
            requests: mine.limits.clone(),
            ..ResourceRequirements::default()
        });
        assert_eq!(memory_limit_bytes(&n), None);
    }
}
