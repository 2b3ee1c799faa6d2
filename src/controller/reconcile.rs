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

use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube_client::api::{ListParams, Patch, PatchParams, PostParams};
use kube_client::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::api::{BitcoinNetwork, CONDITION_DEGRADED};
use crate::bitcoin::{
    derived_salt, is_valid_rpc_user, node_option_lines, random_password, render_bitcoin_conf,
    rpcauth,
};
use crate::controller::connectivity::{self, Endpoint};
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

/// RPC credentials of a network (never logged: no Debug).
struct Credentials {
    user: String,
    password: String,
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
    let (mesh, problem) = match converge(ctx, &net, &pods).await {
        Ok(mesh) => {
            let problem = mesh.problem();
            (mesh, problem)
        }
        Err(Error::Problem(problem)) => (Mesh::default(), Some(problem)),
        Err(err) => return Err(err),
    };

    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let nodes = status::nodes(&net, pods.iter().map(AsRef::as_ref), &mesh.reports);
    let status = status::compute(
        &net,
        nodes,
        mesh.complete,
        problem.as_ref(),
        net.status.as_ref(),
        &now,
    );
    if net.status.as_ref() != Some(&status) {
        let api: Api<BitcoinNetwork> = Api::namespaced(ctx.client.clone(), &key.namespace);
        // The resourceVersion makes the write fail (409) if the network
        // changed since the cached copy this status was computed from.
        let patch = json!({
            "metadata": {"resourceVersion": net.metadata.resource_version},
            "status": status,
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
        return Ok(if mesh.complete {
            Action::Done
        } else {
            Action::RequeueAfter(MESH_POLL)
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
fn network_pods(ctx: &Context, net: &BitcoinNetwork) -> Vec<Arc<Pod>> {
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

/// What the mesh sync found.
#[derive(Default)]
struct Mesh {
    reports: HashMap<String, NodeReport>,
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
async fn converge(ctx: &Context, net: &BitcoinNetwork, pods: &[Arc<Pod>]) -> Result<Mesh, Error> {
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

    if let Some(uid) = sts_uid {
        pod_creation(ctx, net, pods, &uid).await?;
    }
    Ok(mesh(ctx, net, pods, &creds).await)
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
/// returns the live version found.
async fn ensure<K>(
    ctx: &Context,
    net: &BitcoinNetwork,
    cached: Option<Arc<K>>,
    wanted: K,
) -> Result<Option<Arc<K>>, Error>
where
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
async fn apply<K>(
    ctx: &Context,
    net: &BitcoinNetwork,
    live: Option<Arc<K>>,
    wanted: K,
) -> Result<(), Error>
where
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
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            let secret = resources::credentials_secret(net, &user, &password);
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => {
                    let message = format!("created RPC credentials Secret {name}");
                    log::info!("{ns}/{}: {message}", net.name());
                    ctx.recorder
                        .publish(net, EventType::Normal, "SecretCreated", message);
                    return Ok(Credentials { user, password });
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
    pods: &[Arc<Pod>],
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
async fn mesh(ctx: &Context, net: &BitcoinNetwork, pods: &[Arc<Pod>], creds: &Credentials) -> Mesh {
    let ready: Vec<Endpoint> = status::nodes(net, pods.iter().map(AsRef::as_ref), &HashMap::new())
        .into_iter()
        .filter(|n| n.ready)
        .map(|n| Endpoint {
            pod_name: n.pod_name,
            ip: n.ip,
        })
        .collect();
    let mut mesh = Mesh {
        complete: true,
        ready: ready.len(),
        ..Mesh::default()
    };
    for outcome in connectivity::sync(&ctx.rpc, &creds.user, &creds.password, &ready).await {
        for (addrs, reason, verb) in [
            (&outcome.added, "NodeAdded", "added"),
            (&outcome.removed, "NodeRemoved", "removed"),
        ] {
            if !addrs.is_empty() {
                let message = format!("{}: {verb} {}", outcome.pod_name, peer_list(addrs));
                ctx.recorder
                    .publish(net, EventType::Normal, reason, message);
            }
        }
        match outcome.result {
            Ok(report) => {
                mesh.complete &= outcome.added.is_empty()
                    && outcome.removed.is_empty()
                    && connectivity::fully_connected(report.connected_peers, ready.len());
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
            && pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(ip)
            && status::ordinal(net, pod_name).is_some_and(|o| o < desired)
    })
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
