//! Level-based reconcile of one network (sample-controller's `syncHandler`):
//! read the network from the cache, make the owned objects match, write the
//! status when it changed, and sync the nodes' added-node lists.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube_client::api::{Patch, PatchParams, PostParams};
use kube_client::{Api, Resource};
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;

use crate::api::BitcoinNetwork;
use crate::bitcoin::{
    is_valid_rpc_user, random_password, random_salt, render_bitcoin_conf, rpcauth,
};
use crate::controller::connectivity::{self, Endpoint};
use crate::controller::resources::{
    self, is_controlled_by, secret_value, CONFIG_KEY, NETWORK_LABEL, PASSWORD_KEY, USER_KEY,
};
use crate::controller::status::{self, NodeReport, Problem};
use crate::controller::{Context, EventType, SecretAccess};
use crate::informer::{Lister, ObjectKey};

/// Field manager of the controller's server-side applies.
const FIELD_MANAGER: &str = "bitcoin-controller";
/// How soon to look again while the mesh is still forming.
const MESH_POLL: Duration = Duration::from_secs(2);

/// What the worker does with the key after a successful reconcile.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Done,
    RequeueAfter(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube_client::Error),
    /// Something the user has to fix; also in the status and an Event.
    #[error("{}: {}", .0.reason, .0.message)]
    Blocked(Problem),
    /// A cache the reconcile needs is still filling; retried with backoff.
    #[error("{0}")]
    CacheNotSynced(String),
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
        if ctx.networks.list_namespaced(&key.namespace).is_empty() {
            ctx.secrets.release(&key.namespace);
        }
        return Ok(Action::Done);
    };
    if net.metadata.deletion_timestamp.is_some() {
        log::debug!("{key}: network is being deleted, the garbage collector takes it from here");
        return Ok(Action::Done);
    }
    log::info!(
        "reconciling {key} (generation {}, resourceVersion {})",
        net.metadata.generation.unwrap_or_default(),
        net.metadata.resource_version.as_deref().unwrap_or_default()
    );

    let pods: Vec<_> = ctx
        .pods
        .list_namespaced(&key.namespace)
        .into_iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(NETWORK_LABEL))
                .map(String::as_str)
                == Some(net.name())
        })
        .collect();
    let (mesh, problem) = match converge(ctx, &net, &pods).await {
        Ok(mesh) => {
            let problem = mesh.problem();
            (mesh, problem)
        }
        Err(Error::Blocked(problem)) => (Mesh::default(), Some(problem)),
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
        api.patch_status(
            net.name(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
        log::debug!(
            "{key}: status updated ({} of {} nodes ready)",
            status.ready_nodes,
            status.nodes.len()
        );
    }

    match problem {
        None if mesh.complete => Ok(Action::Done),
        None => Ok(Action::RequeueAfter(MESH_POLL)),
        Some(problem) => {
            log::warn!("{key}: {}: {}", problem.reason, problem.message);
            ctx.recorder.publish(
                &net,
                EventType::Warning,
                problem.reason,
                problem.message.clone(),
            );
            // A Secret that appears or changes, or a Secret cache that syncs,
            // brings the network back through its own events; everything else
            // is retried with backoff.
            if matches!(
                problem.reason,
                SECRET_NOT_FOUND | SECRET_INVALID | SECRET_ACCESS_DENIED
            ) {
                Ok(Action::Done)
            } else {
                Err(Error::Blocked(problem))
            }
        }
    }
}

const SECRET_NOT_FOUND: &str = "SecretNotFound";
const SECRET_INVALID: &str = "SecretInvalid";
const SECRET_ACCESS_DENIED: &str = "SecretAccessDenied";
/// How long a reconcile waits for a namespace's first Secret list.
const SECRET_CACHE_PATIENCE: Duration = Duration::from_secs(5);

/// What the mesh sync found.
#[derive(Default)]
struct Mesh {
    reports: HashMap<String, NodeReport>,
    /// Every ready node has all others added and is fully connected.
    complete: bool,
    /// Nodes that did not sync, with the error.
    failures: Vec<String>,
    ready: usize,
}

impl Mesh {
    fn problem(&self) -> Option<Problem> {
        let first = self.failures.first()?;
        Some(Problem {
            reason: "NodeSyncFailed",
            message: format!(
                "{} of {} ready nodes did not answer RPC; first: {first}",
                self.failures.len(),
                self.ready
            ),
        })
    }
}

/// Makes the owned objects match the network and syncs the mesh.
async fn converge(ctx: &Context, net: &BitcoinNetwork, pods: &[Arc<Pod>]) -> Result<Mesh, Error> {
    let ns = net.namespace();
    let secrets = secret_cache(ctx, ns).await?;
    let creds = credentials(ctx, &secrets, net).await?;
    let config_hash = ensure_config(ctx, &secrets, net, &creds).await?;
    ensure(
        ctx,
        net,
        "Service",
        ctx.services.get(ns, &resources::service_name(net)),
        resources::service(net),
        resources::service_drifted,
    )
    .await?;
    ensure(
        ctx,
        net,
        "StatefulSet",
        ctx.statefulsets.get(ns, &resources::statefulset_name(net)),
        resources::statefulset(net, &config_hash),
        resources::statefulset_drifted,
    )
    .await?;

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
                log::warn!(
                    "{}/{}: node {} did not sync: {err}",
                    ns,
                    net.name(),
                    outcome.pod_name
                );
                mesh.complete = false;
                mesh.failures.push(format!("{}: {err}", outcome.pod_name));
            }
        }
    }
    Ok(mesh)
}

/// The Secret cache of namespace `ns`, once synced.
async fn secret_cache(ctx: &Context, ns: &str) -> Result<Lister<Secret>, Error> {
    match ctx.secrets.access(ns, SECRET_CACHE_PATIENCE).await {
        SecretAccess::Ready(lister) => Ok(lister),
        SecretAccess::Denied(refusal) => Err(Error::Blocked(Problem {
            reason: SECRET_ACCESS_DENIED,
            message: format!(
                "the controller may not read Secrets in namespace {ns}: bind the ClusterRole \
                 bitcoin-controller-secrets to its ServiceAccount there (kubectl create rolebinding \
                 bitcoin-controller-secrets -n {ns} --clusterrole=bitcoin-controller-secrets \
                 --serviceaccount=bitcoin-controller:bitcoin-controller); the API server said: {refusal}"
            ),
        })),
        SecretAccess::Pending(failure) => Err(Error::CacheNotSynced(format!(
            "the Secret cache of namespace {ns} has not synced yet{}",
            failure.map(|f| format!(" (last list: {f})")).unwrap_or_default()
        ))),
    }
}

/// Reads the network's RPC credentials, creating the generated Secret when
/// `spec.secret` is empty.
async fn credentials(
    ctx: &Context,
    secrets: &Lister<Secret>,
    net: &BitcoinNetwork,
) -> Result<Credentials, Error> {
    let ns = net.namespace();
    let name = resources::credentials_secret_name(net);
    let secret = match secrets.get(ns, &name) {
        Some(secret) => secret,
        None if resources::generates_credentials(net) => {
            let user = format!("rpc-{}", &random_password()[..8].to_lowercase());
            let password = random_password();
            // Create, never apply: an existing Secret (one the cache has not
            // seen yet) must not get a new password.
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            api.create(
                &PostParams::default(),
                &resources::credentials_secret(net, &user, &password),
            )
            .await?;
            ctx.recorder.publish(
                net,
                EventType::Normal,
                "SecretCreated",
                format!("created RPC credentials Secret {name}"),
            );
            return Ok(Credentials { user, password });
        }
        None => {
            return Err(Error::Blocked(Problem {
                reason: SECRET_NOT_FOUND,
                message: format!(
                    "Secret {name} named in spec.secret does not exist in namespace {ns}"
                ),
            }))
        }
    };
    if resources::generates_credentials(net) && !is_controlled_by(&secret.metadata, net) {
        return Err(conflict("Secret", &name));
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
        _ => Err(Error::Blocked(Problem {
            reason: SECRET_INVALID,
            message: format!(
                "Secret {name} needs a valid {USER_KEY} (no ':', '#' or whitespace) and a non-empty {PASSWORD_KEY}"
            ),
        })),
    }
}

/// Ensures the configuration Secret (bitcoin.conf with an `rpcauth=` line)
/// matches the credentials; returns the hash of the configuration. An existing
/// salt is kept, so the configuration (and the pods) change only when the
/// credentials do.
async fn ensure_config(
    ctx: &Context,
    secrets: &Lister<Secret>,
    net: &BitcoinNetwork,
    creds: &Credentials,
) -> Result<String, Error> {
    let name = resources::config_secret_name(net);
    let existing = secrets.get(net.namespace(), &name);
    let existing_conf = existing
        .as_deref()
        .and_then(|s| secret_value(s, CONFIG_KEY));
    let salt = existing_conf.and_then(salt_of).unwrap_or_else(random_salt);
    let conf = render_bitcoin_conf(&rpcauth(&creds.user, &creds.password, &salt));
    ensure(
        ctx,
        net,
        "Secret",
        existing.clone(),
        resources::config_secret(net, &conf),
        |have: &Secret, want: &Secret| {
            secret_value(have, CONFIG_KEY) != secret_value(want, CONFIG_KEY)
                || resources::labels_drifted(&have.metadata, &want.metadata)
        },
    )
    .await?;
    Ok(resources::content_hash(conf.as_bytes()))
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

/// The salt of the `rpcauth=` line of a rendered configuration.
fn salt_of(conf: &str) -> Option<[u8; 16]> {
    let value = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("rpcauth="))?;
    let salt_hex = value.split_once(':')?.1.split_once('$')?.0;
    hex::decode(salt_hex).ok()?.try_into().ok()
}

/// Makes an owned object match `wanted`: creates it when missing, applies it
/// when the fields the controller owns drifted, and leaves an object of that
/// name that this network does not control alone (reported as a Warning).
async fn ensure<K>(
    ctx: &Context,
    net: &BitcoinNetwork,
    kind: &'static str,
    existing: Option<std::sync::Arc<K>>,
    wanted: K,
    drifted: impl Fn(&K, &K) -> bool,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let name = wanted.meta().name.clone().unwrap_or_default();
    let reason = match existing.as_deref() {
        None => "Created",
        Some(have) if !is_controlled_by(have.meta(), net) => return Err(conflict(kind, &name)),
        Some(have) if drifted(have, &wanted) => "Updated",
        Some(_) => return Ok(()),
    };
    // Server-side apply: creates or updates, and `force` takes back fields
    // another manager changed (e.g. a hand-scaled StatefulSet).
    let api: Api<K> = Api::namespaced(ctx.client.clone(), net.namespace());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(&wanted)).await?;
    log::info!(
        "{}/{}: {} {kind} {name}",
        net.namespace(),
        net.name(),
        reason.to_lowercase()
    );
    ctx.recorder.publish(
        net,
        EventType::Normal,
        reason,
        format!("{} {kind} {name}", reason.to_lowercase()),
    );
    Ok(())
}

/// An object the network needs exists under that name but belongs to
/// someone else: left alone and reported.
fn conflict(kind: &str, name: &str) -> Error {
    Error::Blocked(Problem {
        reason: "ResourceConflict",
        message: format!("{kind} {name} already exists and is not controlled by this network"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_lists_stay_short() {
        let addrs: Vec<String> = (1..=8).map(|i| format!("10.0.0.{i}:18444")).collect();
        assert_eq!(peer_list(&addrs[..1]), "peer 10.0.0.1:18444");
        assert_eq!(
            peer_list(&addrs[..2]),
            "peers 10.0.0.1:18444, 10.0.0.2:18444"
        );
        assert_eq!(
            peer_list(&addrs),
            "peers 10.0.0.1:18444, 10.0.0.2:18444, 10.0.0.3:18444, 10.0.0.4:18444, \
             10.0.0.5:18444 and 3 more"
        );
    }

    #[test]
    fn salt_round_trips_through_the_rendered_config() {
        let salt = [7u8; 16];
        let conf = render_bitcoin_conf(&rpcauth("user", "pw", &salt));
        assert_eq!(salt_of(&conf), Some(salt));
        assert_eq!(salt_of("regtest=1\n"), None);
        assert_eq!(salt_of("rpcauth=user:zz$00\n"), None);
    }
}
