//! Level-based reconcile of one network (sample-controller's `syncHandler`),
//! as one pipeline:
//!
//! 1. **resolve**: the network, its pods and owned objects from the caches
//!    (a live GET when a cache misses an owned object, so a foreign object
//!    of that name is still found), and its RPC credentials;
//! 2. **validate**: a spec whose objects could not exist is a problem;
//! 3. **build**: every owned object, whole, from pure builders, stamped with
//!    the hash of its content;
//! 4. **apply**: server-side apply of each object whose live version lacks
//!    the stamp or differs in a field the controller sets; nothing at rest;
//! 5. **observe**: pods that cannot be created, and the nodes' mesh over
//!    JSON-RPC;
//! 6. **status**: computed from all of the above, written only when it
//!    changed, with the resourceVersion it was computed from.
//!
//! Every failure on the way ends in the status: a refusal of the API server
//! or a problem the user has to fix becomes `Degraded` with its reason (and
//! one Warning Event); a transient failure (API server unreachable, write
//! conflict) is retried with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube_client::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube_client::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::api::{BitcoinNetwork, MiningStatus, CONDITION_DEGRADED, CONDITION_SYNCED};
use crate::bitcoin::{
    derived_salt, is_valid_rpc_user, node_option_lines, random_password, render_bitcoin_conf,
    rpcauth, RpcConfig, RPC_PORT,
};
use crate::controller::cached::CachedPod;
use crate::controller::connectivity::{self, Endpoint};
use crate::controller::mining::{self, Plan, MINING_KEY};
use crate::controller::partition;
use crate::controller::problem::{
    describe, is_rejection, status_code, Error, Problem, Reason, Retry,
};
use crate::controller::resources::{
    self, is_controlled_by, secret_value, stamp, CONFIG_KEY, NETWORK_LABEL, PASSWORD_KEY, USER_KEY,
};
use crate::controller::secrets::{SecretAccess, SecretView};
use crate::controller::status::{self, NodeReport};
use crate::controller::{Context, EventType};
use crate::informer::ObjectKey;

/// Field manager of the controller's writes.
pub const FIELD_MANAGER: &str = "bitcoin-controller";
/// How soon to look again while the mesh is still forming.
const MESH_POLL: Duration = Duration::from_secs(2);
/// How long a reconcile waits for a namespace's first Secret lists.
const SECRET_CACHE_PATIENCE: Duration = Duration::from_secs(5);

/// What the worker does with the key after a successful reconcile.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Done,
    RequeueAfter(Duration),
}

/// How long one `generatetoaddress` call may take (hundreds of blocks on
/// Bitcoin Core take seconds).
const GENERATE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a reconcile that mined waits for the other nodes to have the
/// new block, so that the status it writes shows them synced (one write
/// per mined block, not a Synced=False write and then a Synced=True one).
const PROPAGATION_WAIT: Duration = Duration::from_secs(3);

/// RPC credentials of a network, and the mining key of its credentials
/// Secret (never logged: no Debug).
struct Credentials {
    user: String,
    password: String,
    /// `BC_MINING_KEY` (WIF), if the Secret has one.
    mining_key: Option<String>,
    /// The Secret's resourceVersion, the precondition of adding a mining
    /// key to it.
    secret_version: Option<String>,
}

/// Reconciles the network `key`.
pub async fn reconcile(ctx: &Context, key: &ObjectKey) -> Result<Action, Error> {
    let Some(net) = ctx.networks.get(&key.namespace, &key.name) else {
        log::debug!("{key}: network is gone, nothing to do");
        ctx.secrets.release(&key.namespace, &key.name);
        return Ok(Action::Done);
    };
    if net.metadata.deletion_timestamp.is_some() {
        log::debug!("{key}: network is being deleted, the garbage collector takes it from here");
        ctx.secrets.release(&key.namespace, &key.name);
        return Ok(Action::Done);
    }
    log::debug!(
        "{key}: reconciling generation {} at resourceVersion {}",
        net.metadata.generation.unwrap_or_default(),
        net.metadata.resource_version.as_deref().unwrap_or_default()
    );
    let pods = network_pods(ctx, &net);
    let (mut mesh, mut problem) = match converge(ctx, &net, &pods).await {
        Ok(mesh) => {
            let problem = mesh.problem();
            (mesh, problem)
        }
        Err(Error::Problem(problem)) => (Mesh::default(), Some(problem)),
        Err(err) => return Err(err),
    };
    problem = problem.or_else(|| stuck_pods(&net, &pods));
    let mined = mine(ctx, &net, &pods, &mut mesh).await;
    problem = problem.or(mined.problem);

    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let nodes = status::nodes(&net, pods.iter().map(AsRef::as_ref), &mesh.reports);
    let groups = partition::groups(&net.spec.partitions, net.spec.nodes);
    let partitions = partition::status(&groups, &nodes, &mesh.reports);
    let mining = mined.address.map(|address| {
        let miner = mining::network_mining_node(&net, &nodes)
            .and_then(|o| nodes.iter().find(|n| n.ordinal == o))
            .and_then(|n| mesh.reports.get(&n.pod_name));
        let previous = net.status.as_ref().and_then(|s| s.mining.as_ref());
        MiningStatus {
            last_block_time: miner
                .and_then(|r| k8s_openapi::jiff::Timestamp::from_second(r.time as i64).ok())
                .map(Time)
                .or_else(|| previous.and_then(|p| p.last_block_time.clone())),
            blocks_mined: previous.map_or(0, |p| p.blocks_mined) + mined.blocks as i64,
            address,
        }
    });
    let mut status = status::compute(
        &net,
        nodes,
        mesh.complete,
        mining,
        problem.as_ref(),
        net.status.as_ref(),
        &now,
    );
    status.partitions = partitions;
    let rpc_service = ctx
        .services
        .get(&key.namespace, &resources::rpc_service_name(&net));
    status.rpc = status::rpc_access(&net, rpc_service.as_deref());
    let synced = status
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION_SYNCED && c.status == "True");
    if net.status.as_ref() != Some(&status) {
        let api: Api<BitcoinNetwork> = Api::namespaced(ctx.client.clone(), &key.namespace);
        // The resourceVersion makes the write fail (409) if the network
        // changed since the cached copy this status was computed from.
        // A merge patch leaves every key it omits as stored: a field the
        // new status no longer has (status.rpc, its nodePort) is nulled.
        let stored = serde_json::to_value(&net.status).unwrap_or_default();
        let wanted = serde_json::to_value(&status).unwrap_or_default();
        let patch = json!({
            "metadata": {"resourceVersion": net.metadata.resource_version},
            "status": merge_patch(&stored, &wanted),
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match api.patch_status(net.name(), &params, &Patch::Merge(patch)).await {
            Ok(_) => {}
            Err(e) if status_code(&e) == Some(409) => {
                return Err(Error::Stale(format!(
                    "status of network {key} computed from resourceVersion {}, which is no longer current",
                    net.metadata.resource_version.as_deref().unwrap_or_default()
                )))
            }
            Err(e) if status_code(&e) == Some(404) => {
                // Deleted after the cache read, or the cache missed the
                // delete (a watch on a dead connection): either way nothing
                // is left to do, and the network cache watches again.
                log::debug!("{key}: network is gone from the API server, refreshing the cache");
                ctx.networks.request_rewatch();
                return Ok(Action::Done);
            }
            Err(e) => return Err(Error::kube(format!("writing the status of network {key}"), e)),
        }
        log::debug!(
            "{key}: status written ({} of {} nodes ready)",
            status.ready_nodes,
            status.nodes.len()
        );
    }

    let Some(problem) = problem else {
        // Look again soon while the mesh forms or nodes catch up, and when
        // the next block is due.
        let forming = (!mesh.complete || !synced).then_some(MESH_POLL);
        return Ok(match forming.into_iter().chain(mined.look_again).min() {
            Some(after) => Action::RequeueAfter(after),
            None => Action::Done,
        });
    };
    // One Warning Event and one log line per problem, not one per retry.
    if already_reported(&net, &problem) {
        log::debug!("{key}: still {problem}");
    } else {
        log::warn!("{key}: {problem}");
        ctx.recorder.publish(
            &net,
            EventType::Warning,
            problem.reason.as_str(),
            problem.message.clone(),
        );
    }
    match problem.reason.retry() {
        Retry::OnChange => Ok(Action::Done),
        Retry::Backoff => Err(Error::Problem(problem)),
    }
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`: `new`,
/// with `null` for every object key `old` has and `new` lacks, at any
/// depth (lists are replaced whole).
fn merge_patch(old: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut patch: serde_json::Map<String, Value> = new
                .iter()
                .map(|(k, v)| {
                    let v = old.get(k).map_or_else(|| v.clone(), |o| merge_patch(o, v));
                    (k.clone(), v)
                })
                .collect();
            for k in old.keys().filter(|k| !new.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        (_, new) => new.clone(),
    }
}

/// Whether the network's status already shows `problem` as Degraded.
fn already_reported(net: &BitcoinNetwork, problem: &Problem) -> bool {
    net.status.iter().flat_map(|s| &s.conditions).any(|c| {
        c.type_ == CONDITION_DEGRADED
            && c.status == "True"
            && c.reason == problem.reason.as_str()
            && c.message == problem.message
    })
}

/// The pods of the network's StatefulSet, from the namespace's pods.
fn network_pods(ctx: &Context, net: &BitcoinNetwork) -> Vec<Arc<CachedPod>> {
    ctx.pods
        .list_namespaced(net.namespace())
        .into_iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(NETWORK_LABEL))
                .map(String::as_str)
                == Some(net.name())
        })
        .collect()
}

/// The wanted pods that cannot start, as one problem: the first by name
/// says why (the scheduler's or the kubelet's words), the count says how
/// many.
fn stuck_pods(net: &BitcoinNetwork, pods: &[Arc<CachedPod>]) -> Option<Problem> {
    let mut stuck: Vec<(&str, &str)> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let name = p.metadata.name.as_deref()?;
            let wanted = status::ordinal(net, name).is_some_and(|o| o < net.spec.nodes);
            Some((name, p.stuck.as_deref().filter(|_| wanted)?))
        })
        .collect();
    stuck.sort_unstable();
    let (name, why) = stuck.first()?;
    let others = match stuck.len() - 1 {
        0 => String::new(),
        1 => " (1 more pod cannot start)".to_owned(),
        n => format!(" ({n} more pods cannot start)"),
    };
    Some(Problem::new(
        Reason::PodNotStarting,
        format!("pod {name} cannot start: {why}{others}"),
    ))
}

/// What the mesh sync found.
#[derive(Default)]
struct Mesh {
    reports: HashMap<String, NodeReport>,
    /// The credentials the nodes were reached with.
    creds: Option<Credentials>,
    /// Where mined blocks go, with `spec.mining`: the address, or why
    /// there is none.
    mining_address: Option<Result<String, Problem>>,
    /// Every ready node has all others added and is fully connected.
    complete: bool,
    /// Nodes that did not sync and are still wanted, with the error.
    failures: Vec<String>,
    ready: usize,
}

impl Mesh {
    fn problem(&self) -> Option<Problem> {
        let first = self.failures.first()?;
        Some(Problem::new(
            Reason::NodeSyncFailed,
            format!(
                "{} of {} ready nodes did not answer RPC; first: {first}",
                self.failures.len(),
                self.ready
            ),
        ))
    }
}

/// Validates, builds and applies the owned objects, then syncs the mesh.
async fn converge(
    ctx: &Context,
    net: &BitcoinNetwork,
    pods: &[Arc<CachedPod>],
) -> Result<Mesh, Error> {
    if let Some(message) = resources::spec_problem(net) {
        return Err(Error::Problem(Problem::new(Reason::InvalidSpec, message)));
    }
    let ns = net.namespace();
    let secrets = secret_view(ctx, net).await?;
    let creds = credentials(ctx, &secrets, net).await?;

    let config_name = resources::config_secret_name(net);
    let live_config = live(ctx, ns, &config_name, secrets.get(ns, &config_name)).await?;
    let conf = bitcoin_conf(net, &creds, live_config.as_deref());
    let config_hash = resources::content_hash(conf.as_bytes());
    apply(
        ctx,
        net,
        live_config,
        stamp(resources::config_secret(net, &conf)),
    )
    .await?;

    let svc = resources::service_name(net);
    ensure(
        ctx,
        net,
        ctx.services.get(ns, &svc),
        resources::service(net),
    )
    .await?;
    let sts = resources::statefulset_name(net);
    let cached = ctx.statefulsets.get(ns, &sts);
    let wanted = resources::keep_claim_templates(
        resources::statefulset(net, &config_hash),
        cached.as_deref(),
    );
    let sts_uid = ensure(ctx, net, cached, wanted)
        .await?
        .and_then(|live| live.metadata.uid.clone());

    expose(ctx, net, pods).await?;

    if let Some(uid) = sts_uid {
        pod_creation(ctx, net, pods, &uid).await?;
    }
    let mut mesh = mesh(ctx, net, pods, &creds).await;
    mesh.mining_address = match net.spec.mining {
        Some(_) => Some(mining_address(ctx, net, &creds).await?),
        None => None,
    };
    mesh.creds = Some(creds);
    Ok(mesh)
}

/// The Service apps connect to: applied while `spec.service` asks for it,
/// routed to the mining node ([`mining::network_mining_node`]: one node,
/// because a wallet, the mempool and the `addnode` list are per node, so
/// `createwallet` then `getbalance` must reach the same node); deleted when
/// `spec.service` is removed. Its selector changes (one write) only when
/// the mining node does; with no node ready it names the preferred one.
/// The Service is found in the cache only: it carries the managed-by
/// label like every owned object, and its events reach the network through
/// its owner reference, so a Service the cache has not seen yet is
/// deleted when its add event arrives, without a GET on every reconcile.
async fn expose(ctx: &Context, net: &BitcoinNetwork, pods: &[Arc<CachedPod>]) -> Result<(), Error> {
    let ns = net.namespace();
    let name = resources::rpc_service_name(net);
    let cached = ctx.services.get(ns, &name);
    let Some(spec) = net.spec.service.as_ref() else {
        return match cached.filter(|svc| is_controlled_by(&svc.metadata, net)) {
            Some(svc) => delete_owned(ctx, net, svc.as_ref()).await,
            None => Ok(()),
        };
    };
    let nodes = status::nodes(net, pods.iter().map(AsRef::as_ref), &HashMap::new());
    let node = mining::network_mining_node(net, &nodes).unwrap_or(mining::preferred_node(net));
    ensure(ctx, net, cached, resources::rpc_service(net, spec, node)).await?;
    Ok(())
}

/// Deletes `obj`, an object the network controls, on the condition that it
/// is still the object with that uid (a newer one of the same name is left
/// for the next reconcile to judge). Gone already: nothing to do.
async fn delete_owned<K>(ctx: &Context, net: &BitcoinNetwork, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
{
    let kind = K::kind(&());
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), net.namespace());
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: obj.meta().uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {}
        Err(e) if matches!(status_code(&e), Some(404 | 409)) => {
            log::debug!(
                "{}/{}: {kind} {name} already gone or replaced: {}",
                net.namespace(),
                net.name(),
                describe(&e)
            );
            return Ok(());
        }
        Err(e) if is_rejection(&e) => {
            return Err(Error::Problem(Problem::new(
                Reason::ApplyRejected,
                format!(
                    "the API server refused to delete {kind} {name}: {}",
                    describe(&e)
                ),
            )))
        }
        Err(e) => return Err(Error::kube(format!("deleting {kind} {name}"), e)),
    }
    let what = format!("deleted {kind} {name}");
    log::info!("{}/{}: {what}", net.namespace(), net.name());
    ctx.recorder
        .publish(net, EventType::Normal, "Deleted", what);
    Ok(())
}

/// The live object `name`: the cached one, else what a GET finds (an object
/// outside the label-scoped caches, or one the cache has not seen yet).
async fn live<K>(
    ctx: &Context,
    ns: &str,
    name: &str,
    cached: Option<Arc<K>>,
) -> Result<Option<Arc<K>>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
{
    if cached.is_some() {
        return Ok(cached);
    }
    let kind = K::kind(&());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    match api.get_opt(name).await {
        Ok(found) => Ok(found.map(Arc::new)),
        Err(e) if is_rejection(&e) => Err(Error::Problem(Problem::new(
            Reason::ApplyRejected,
            format!("reading {kind} {name}: {}", describe(&e)),
        ))),
        Err(e) => Err(Error::kube(format!("reading {kind} {name}"), e)),
    }
}

/// Looks up the live version of `wanted` and [`apply`]s it, stamped;
/// returns the live version found (as the cache keeps that kind, `L`).
async fn ensure<L, K>(
    ctx: &Context,
    net: &BitcoinNetwork,
    cached: Option<Arc<L>>,
    wanted: K,
) -> Result<Option<Arc<L>>, Error>
where
    L: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
{
    let name = wanted.meta().name.clone().unwrap_or_default();
    let found = live(ctx, net.namespace(), &name, cached).await?;
    apply(ctx, net, found.clone(), stamp(wanted)).await?;
    Ok(found)
}

/// Makes `live` what `wanted` says: server-side apply of the whole object
/// when it is missing or [`resources::needs_apply`]; an object of that name
/// this network does not control is left alone and reported.
async fn apply<L, K>(
    ctx: &Context,
    net: &BitcoinNetwork,
    live: Option<Arc<L>>,
    wanted: K,
) -> Result<(), Error>
where
    L: Resource + Serialize,
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
{
    let kind = K::kind(&());
    let name = wanted.meta().name.clone().unwrap_or_default();
    let verb = match live.as_deref() {
        None => "Created",
        Some(have) if !is_controlled_by(have.meta(), net) => {
            return Err(Error::Problem(Problem::new(
                Reason::ResourceConflict,
                format!("{kind} {name} already exists and is not controlled by this network"),
            )))
        }
        Some(have) if resources::needs_apply(have, &wanted) => "Updated",
        Some(_) => return Ok(()),
    };
    // `force` takes back fields another manager changed (e.g. a
    // hand-scaled StatefulSet).
    let api: Api<K> = Api::namespaced(ctx.client.clone(), net.namespace());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    if let Err(e) = api.patch(&name, &params, &Patch::Apply(&wanted)).await {
        return Err(if is_rejection(&e) {
            Error::Problem(Problem::new(
                Reason::ApplyRejected,
                format!("the API server refused {kind} {name}: {}", describe(&e)),
            ))
        } else {
            Error::kube(format!("applying {kind} {name}"), e)
        });
    }
    let what = format!("{} {kind} {name}", verb.to_lowercase());
    log::info!("{}/{}: {what}", net.namespace(), net.name());
    ctx.recorder.publish(net, EventType::Normal, verb, what);
    Ok(())
}

/// The network's Secrets, once the caches have them.
async fn secret_view(ctx: &Context, net: &BitcoinNetwork) -> Result<SecretView, Error> {
    let ns = net.namespace();
    match ctx.secrets.access(net, SECRET_CACHE_PATIENCE).await {
        SecretAccess::Ready(view) => Ok(view),
        SecretAccess::Denied(refusal) => Err(Error::Problem(Problem::new(
            Reason::SecretAccessDenied,
            format!(
                "no access to Secrets in namespace {ns} ({refusal}); grant it with: kubectl create \
                 rolebinding bitcoin-controller-secrets -n {ns} --clusterrole=bitcoin-controller-secrets \
                 --serviceaccount=bitcoin-controller:bitcoin-controller"
            ),
        ))),
        SecretAccess::Pending(failure) => Err(Error::CacheNotSynced(format!(
            "the Secret caches of namespace {ns} have not synced yet{}",
            failure.map(|f| format!(" (last list: {f})")).unwrap_or_default()
        ))),
    }
}

/// Reads the network's RPC credentials, creating the generated Secret when
/// `spec.secret` is empty.
async fn credentials(
    ctx: &Context,
    secrets: &SecretView,
    net: &BitcoinNetwork,
) -> Result<Credentials, Error> {
    let ns = net.namespace();
    let name = resources::credentials_secret_name(net);
    let generated = resources::generates_credentials(net);
    let secret = match secrets.get(ns, &name) {
        Some(secret) => secret,
        None if generated => {
            // Create, never apply: a Secret the cache has not seen yet (or a
            // foreign one) must not get a new password; a conflict says so.
            let user = format!("rpc-{}", &random_password()[..8].to_lowercase());
            let password = random_password();
            let mining_key = mining::new_mining_key();
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            let secret = resources::credentials_secret(net, &user, &password, &mining_key);
            match api.create(&PostParams::default(), &secret).await {
                Ok(created) => {
                    let message = format!("created RPC credentials Secret {name}");
                    log::info!("{ns}/{}: {message}", net.name());
                    ctx.recorder
                        .publish(net, EventType::Normal, "SecretCreated", message);
                    return Ok(Credentials {
                        user,
                        password,
                        mining_key: Some(mining_key),
                        secret_version: created.metadata.resource_version,
                    });
                }
                Err(e) if status_code(&e) == Some(409) => {
                    match live::<Secret>(ctx, ns, &name, None).await? {
                        Some(existing) => existing,
                        None => return Err(Error::kube(format!("creating Secret {name}"), e)),
                    }
                }
                Err(e) if is_rejection(&e) => {
                    return Err(Error::Problem(Problem::new(
                        Reason::ApplyRejected,
                        format!("the API server refused Secret {name}: {}", describe(&e)),
                    )))
                }
                Err(e) => return Err(Error::kube(format!("creating Secret {name}"), e)),
            }
        }
        None => {
            return Err(Error::Problem(Problem::new(
                Reason::SecretNotFound,
                format!("Secret {name} named in spec.secret does not exist in namespace {ns}"),
            )))
        }
    };
    if generated && !is_controlled_by(&secret.metadata, net) {
        return Err(Error::Problem(Problem::new(
            Reason::ResourceConflict,
            format!("Secret {name} already exists and is not controlled by this network"),
        )));
    }
    match (
        secret_value(&secret, USER_KEY),
        secret_value(&secret, PASSWORD_KEY),
    ) {
        (Some(user), Some(password)) if is_valid_rpc_user(user) && !password.is_empty() => {
            Ok(Credentials {
                user: user.to_owned(),
                password: password.to_owned(),
                mining_key: secret_value(&secret, MINING_KEY).map(str::to_owned),
                secret_version: secret.metadata.resource_version.clone(),
            })
        }
        _ => Err(Error::Problem(Problem::new(
            Reason::SecretInvalid,
            format!(
                "Secret {name} needs a valid {USER_KEY} (no ':', '#' or whitespace) and a non-empty {PASSWORD_KEY}"
            ),
        ))),
    }
}

/// The rendered `bitcoin.conf`. The salt of the live configuration is kept
/// while its `rpcauth` line still matches the credentials (networks created
/// before salts were derived keep their pods); otherwise the salt is
/// derived from the network's uid and the credentials, so it is the same on
/// every reconcile whatever the caches hold.
fn bitcoin_conf(net: &BitcoinNetwork, creds: &Credentials, live: Option<&Secret>) -> String {
    let kept = live
        .and_then(|s| secret_value(s, CONFIG_KEY))
        .and_then(|conf| {
            let line = conf
                .lines()
                .find_map(|l| l.trim().strip_prefix("rpcauth="))?;
            let salt = salt_of(line)?;
            (rpcauth(&creds.user, &creds.password, &salt) == line).then_some(salt)
        });
    let salt = kept.unwrap_or_else(|| {
        derived_salt(
            net.metadata.uid.as_deref().unwrap_or_default(),
            &creds.user,
            &creds.password,
        )
    });
    render_bitcoin_conf(
        &rpcauth(&creds.user, &creds.password, &salt),
        &node_option_lines(net.spec.config.as_ref(), resources::memory_limit_bytes(net)),
    )
}

/// The salt of an `rpcauth` value (`user:<salt hex>$<hmac hex>`).
fn salt_of(value: &str) -> Option<[u8; 16]> {
    let salt_hex = value.split_once(':')?.1.split_once('$')?.0;
    hex::decode(salt_hex).ok()?.try_into().ok()
}

/// When pods of the StatefulSet (uid `sts_uid`) are missing and its latest
/// creation attempt failed, the StatefulSet controller's reason
/// (`FailedCreate`, e.g. an invalid label or a refused pod spec) is the
/// network's problem. Costs a read only while pods are missing.
async fn pod_creation(
    ctx: &Context,
    net: &BitcoinNetwork,
    pods: &[Arc<CachedPod>],
    sts_uid: &str,
) -> Result<(), Error> {
    let desired = net.spec.nodes;
    let existing = pods
        .iter()
        .filter_map(|p| status::ordinal(net, p.metadata.name.as_deref()?))
        .filter(|o| *o < desired)
        .count();
    if existing >= usize::try_from(desired).unwrap_or_default() {
        return Ok(());
    }
    let sts = resources::statefulset_name(net);
    let api: Api<Event> = Api::namespaced(ctx.client.clone(), net.namespace());
    let params = ListParams::default().fields(&format!(
        "involvedObject.kind=StatefulSet,involvedObject.name={sts}"
    ));
    let events = match api.list(&params).await {
        Ok(list) => list.items,
        Err(e) => {
            log::debug!(
                "{}/{}: listing the Events of StatefulSet {sts}: {}",
                net.namespace(),
                net.name(),
                describe(&e)
            );
            return Ok(());
        }
    };
    if let Some(message) = failed_create(&events, sts_uid) {
        return Err(Error::Problem(Problem::new(
            Reason::PodCreationFailed,
            format!("pods of StatefulSet {sts} cannot be created: {message}"),
        )));
    }
    Ok(())
}

/// The message of the latest `FailedCreate` Event of the StatefulSet, if no
/// pod was created after it.
fn failed_create(events: &[Event], sts_uid: &str) -> Option<String> {
    let latest = |reason: &str| {
        events
            .iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.involved_object.uid.as_deref() == Some(sts_uid)
            })
            .max_by_key(|e| event_time(e))
    };
    let failed = latest("FailedCreate")?;
    match latest("SuccessfulCreate") {
        Some(ok) if event_time(ok) >= event_time(failed) => None,
        _ => failed.message.clone(),
    }
}

fn event_time(e: &Event) -> Option<k8s_openapi::jiff::Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
}

/// Syncs the added-node lists of the ready nodes.
async fn mesh(
    ctx: &Context,
    net: &BitcoinNetwork,
    pods: &[Arc<CachedPod>],
    creds: &Credentials,
) -> Mesh {
    // Every node with an IP (to tell where a connection leads), and the
    // ready ones, which get synced.
    let mut all = Vec::new();
    let mut ready = Vec::new();
    for n in status::nodes(net, pods.iter().map(AsRef::as_ref), &HashMap::new()) {
        if n.ip.is_empty() {
            continue;
        }
        let endpoint = Endpoint {
            pod_name: n.pod_name,
            ip: n.ip,
            ordinal: n.ordinal,
        };
        if n.ready {
            ready.push(endpoint.clone());
        }
        all.push(endpoint);
    }
    let groups = partition::groups(&net.spec.partitions, net.spec.nodes);
    let mut mesh = Mesh {
        complete: true,
        ready: ready.len(),
        ..Mesh::default()
    };
    let outcomes = connectivity::sync(
        &ctx.rpc,
        &creds.user,
        &creds.password,
        &ready,
        &all,
        &groups,
    )
    .await;
    for outcome in outcomes {
        for (addrs, reason, verb) in [
            (&outcome.added, "NodeAdded", "added"),
            (&outcome.removed, "NodeRemoved", "removed"),
            (
                &outcome.disconnected,
                "NodeDisconnected",
                "disconnected from",
            ),
        ] {
            if !addrs.is_empty() {
                let message = format!("{}: {verb} {}", outcome.pod_name, peer_list(addrs));
                ctx.recorder
                    .publish(net, EventType::Normal, reason, message);
            }
        }
        if !outcome.tried.is_empty() {
            log::info!(
                "{}/{}: {} dials {} at once (addnode onetry): added but not connected",
                net.namespace(),
                net.name(),
                outcome.pod_name,
                peer_list(&outcome.tried)
            );
        }
        match outcome.result {
            Ok(report) => {
                mesh.complete &= outcome.added.is_empty()
                    && outcome.removed.is_empty()
                    && outcome.disconnected.is_empty()
                    && connectivity::fully_connected(report.connected_peers, outcome.wanted);
                mesh.reports.insert(outcome.pod_name, report);
            }
            Err(err) => {
                mesh.complete = false;
                let ip = ready
                    .iter()
                    .find(|e| e.pod_name == outcome.pod_name)
                    .map(|e| e.ip.as_str())
                    .unwrap_or_default();
                if still_wanted(ctx, net, &outcome.pod_name, ip) {
                    mesh.failures.push(format!("{}: {err}", outcome.pod_name));
                } else {
                    // A pod that is going away (scale-down, deletion, a new
                    // IP) fails its RPC by design: not the network's problem.
                    log::debug!(
                        "{}/{}: node {} went away during its sync: {err}",
                        net.namespace(),
                        net.name(),
                        outcome.pod_name
                    );
                }
            }
        }
    }
    mesh
}

/// Whether the node `pod_name` at `ip` is, after its RPC failed, still a
/// ready node the network wants, by the caches as they are now.
fn still_wanted(ctx: &Context, net: &BitcoinNetwork, pod_name: &str, ip: &str) -> bool {
    let ns = net.namespace();
    let desired = ctx.networks.get(ns, net.name()).map_or(0, |n| n.spec.nodes);
    ctx.pods.get(ns, pod_name).is_some_and(|pod| {
        status::pod_ready(&pod)
            && pod.ip.as_deref() == Some(ip)
            && status::ordinal(net, pod_name).is_some_and(|o| o < desired)
    })
}

/// The address mined blocks go to: `spec.mining.address`, else the
/// address of the credentials Secret's mining key. A generated Secret
/// without one (made before mining existed) gets one, written with its
/// resourceVersion as precondition so that two controllers cannot give it
/// two keys; a user's Secret (`spec.secret`) is never written.
async fn mining_address(
    ctx: &Context,
    net: &BitcoinNetwork,
    creds: &Credentials,
) -> Result<Result<String, Problem>, Error> {
    let spec = net.spec.mining.as_ref();
    if let Some(address) = spec.and_then(|m| m.address.as_deref()) {
        return Ok(mining::check_address(address)
            .map(|()| address.to_owned())
            .map_err(|e| {
                Problem::new(
                    Reason::InvalidSpec,
                    format!("spec.mining.address {address} is not a valid regtest address: {e}"),
                )
            }));
    }
    let name = resources::credentials_secret_name(net);
    if let Some(key) = &creds.mining_key {
        return Ok(mining::address_of_key(key).map_err(|e| {
            Problem::new(
                Reason::SecretInvalid,
                format!(
                    "{MINING_KEY} in Secret {name} {e}; set spec.mining.address or a regtest \
                     private key in WIF"
                ),
            )
        }));
    }
    if !resources::generates_credentials(net) {
        return Ok(Err(Problem::new(
            Reason::MiningKeyMissing,
            format!(
                "spec.mining.address is not set and Secret {name} (spec.secret) has no \
                 {MINING_KEY}: set spec.mining.address to a regtest address, or add \
                 {MINING_KEY} (a regtest private key in WIF) to the Secret"
            ),
        )));
    }
    let key = mining::new_mining_key();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), net.namespace());
    let patch = json!({
        "metadata": {"resourceVersion": creds.secret_version},
        "stringData": {MINING_KEY: key},
    });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => {}
        Err(e) if status_code(&e) == Some(409) => {
            return Err(Error::Stale(format!(
                "Secret {name} changed while a mining key was added to it"
            )))
        }
        Err(e) if is_rejection(&e) => {
            return Ok(Err(Problem::new(
                Reason::ApplyRejected,
                format!(
                    "the API server refused {MINING_KEY} in Secret {name}: {}",
                    describe(&e)
                ),
            )))
        }
        Err(e) => {
            return Err(Error::kube(
                format!("adding {MINING_KEY} to Secret {name}"),
                e,
            ))
        }
    }
    let message = format!("added a mining key ({MINING_KEY}) to Secret {name}");
    log::info!("{}/{}: {message}", net.namespace(), net.name());
    ctx.recorder
        .publish(net, EventType::Normal, "MiningKeyCreated", message);
    Ok(mining::address_of_key(&key).map_err(|e| Problem::new(Reason::SecretInvalid, e)))
}

/// What the mining step did.
#[derive(Default)]
struct Mined {
    /// Where blocks go (with `spec.mining` and a usable address).
    address: Option<String>,
    /// Blocks mined in this reconcile.
    blocks: u64,
    /// When the next block is due, or more blocks are to be mined.
    look_again: Option<Duration>,
    problem: Option<Problem>,
}

/// The mining step: [`mining::decide`] on what the nodes reported, then one
/// `generatetoaddress` call on the mining node when blocks are due, and the
/// nodes' reports read again once they have the new tip.
async fn mine(
    ctx: &Context,
    net: &BitcoinNetwork,
    pods: &[Arc<CachedPod>],
    mesh: &mut Mesh,
) -> Mined {
    let (Some(spec), Some(address)) = (&net.spec.mining, &mesh.mining_address) else {
        return Mined::default();
    };
    let address = match address {
        Ok(address) => address.clone(),
        Err(problem) => {
            return Mined {
                problem: Some(problem.clone()),
                ..Mined::default()
            }
        }
    };
    let mut mined = Mined {
        address: Some(address.clone()),
        ..Mined::default()
    };
    let plan = match Plan::of(spec) {
        Ok(plan) => plan,
        Err(message) => {
            mined.problem = Some(Problem::new(Reason::InvalidSpec, message));
            return mined;
        }
    };
    let Some(creds) = &mesh.creds else {
        return mined;
    };
    let all = status::nodes(net, pods.iter().map(AsRef::as_ref), &mesh.reports);
    // With spec.partitions the mining node mines in its own group: only
    // that group's chains count, and only its nodes can get the block.
    let groups = partition::groups(&net.spec.partitions, net.spec.nodes);
    let mining_node = mining::network_mining_node(net, &all);
    let group = mining_node.map(|o| partition::group_of(&groups, o));
    let nodes: Vec<_> = all
        .into_iter()
        .filter(|n| Some(partition::group_of(&groups, n.ordinal)) == group)
        .collect();
    let miner = nodes
        .iter()
        .find(|n| Some(n.ordinal) == mining_node)
        .filter(|n| mesh.reports.contains_key(&n.pod_name));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let observed = mining::Observed {
        miner: miner.map(|n| {
            let r = &mesh.reports[&n.pod_name];
            mining::Tip {
                height: r.blocks,
                time: r.time,
            }
        }),
        best_height: nodes
            .iter()
            .filter_map(|n| mesh.reports.get(&n.pod_name))
            .map(|r| r.blocks)
            .max()
            .unwrap_or(0),
        now_ms,
    };
    let decision = mining::decide(&plan, &observed);
    mined.look_again = decision.look_again;
    let Some(miner) = miner.filter(|_| decision.mine > 0) else {
        return mined;
    };
    let key = format!("{}/{}", net.namespace(), net.name());
    let cfg = rpc_config(&miner.ip, creds);
    let hashes = match ctx
        .rpc
        .generate_to_address(&cfg, decision.mine, &address, GENERATE_TIMEOUT)
        .await
    {
        Ok(hashes) => hashes,
        Err(e) => {
            mined.look_again = None;
            mined.problem = Some(Problem::new(
                Reason::MiningFailed,
                format!(
                    "generatetoaddress {} on {} failed: {e}",
                    decision.mine, miner.pod_name
                ),
            ));
            return mined;
        }
    };
    mined.blocks = hashes.len() as u64;
    let height = observed.miner.map_or(0, |t| t.height) + mined.blocks;
    let message = format!(
        "mined {} block{} on {} (height {height})",
        mined.blocks,
        if mined.blocks == 1 { "" } else { "s" },
        miner.pod_name
    );
    log::info!("{key}: {message}");
    if decision.mine > 1 {
        // The initial blocks; a periodic block is shown by the status alone.
        ctx.recorder
            .publish(net, EventType::Normal, "BlocksMined", message);
    }
    if let Some(tip) = hashes.last() {
        await_propagation(ctx, net, &nodes, &mut mesh.reports, creds, tip).await;
    }
    mined
}

fn rpc_config(ip: &str, creds: &Credentials) -> RpcConfig {
    RpcConfig {
        host: ip.to_owned(),
        port: RPC_PORT,
        user: creds.user.clone(),
        password: creds.password.clone(),
    }
}

/// Reads every reporting node's chain again until all have `tip` or
/// [`PROPAGATION_WAIT`] passed, updating their reports.
async fn await_propagation(
    ctx: &Context,
    net: &BitcoinNetwork,
    nodes: &[crate::api::BitcoinNetworkNode],
    reports: &mut HashMap<String, NodeReport>,
    creds: &Credentials,
    tip: &str,
) {
    let started = tokio::time::Instant::now();
    loop {
        let reading = nodes
            .iter()
            .filter(|n| {
                reports
                    .get(&n.pod_name)
                    .is_some_and(|r| r.best_block_hash != tip)
            })
            .map(|n| async move {
                let info = ctx.rpc.get_blockchain_info(&rpc_config(&n.ip, creds)).await;
                (n.pod_name.clone(), info)
            });
        let readings = futures::future::join_all(reading).await;
        if readings.is_empty() {
            return;
        }
        for (pod, info) in readings {
            match (info, reports.get_mut(&pod)) {
                (Ok(info), Some(report)) => {
                    report.blocks = info.blocks;
                    report.best_block_hash = info.bestblockhash;
                    report.time = info.time;
                }
                (Err(e), _) => log::debug!(
                    "{}/{}: reading the chain of {pod} after mining: {e}",
                    net.namespace(),
                    net.name()
                ),
                _ => {}
            }
        }
        let behind = reports.values().any(|r| r.best_block_hash != tip);
        if !behind || started.elapsed() >= PROPAGATION_WAIT {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many peers an Event names before it only counts the rest.
const PEERS_NAMED: usize = 5;

/// `peer A`, `peers A, B` or `peers A, B, C, D, E and 3 more`: one Event per
/// node and sync, short even in a big network.
fn peer_list(addrs: &[String]) -> String {
    let named = addrs[..addrs.len().min(PEERS_NAMED)].join(", ");
    match addrs.len() {
        1 => format!("peer {named}"),
        n if n <= PEERS_NAMED => format!("peers {named}"),
        n => format!("peers {named} and {} more", n - PEERS_NAMED),
    }
}

#[cfg(test)]
mod tests;
