//! Secret caches, per namespace that holds networks, holding only the
//! Secrets the controller needs.
//!
//! The controller may read Secrets only in the namespaces where it was given
//! the right (a RoleBinding to the `bitcoin-controller-secrets` ClusterRole,
//! see `manifests/rbac.yaml`), so it cannot watch Secrets cluster-wide. In
//! each namespace with networks it runs one informer over the Secrets it
//! owns (label selector `app.kubernetes.io/managed-by=bitcoin-controller`)
//! and one informer per Secret a network names in `spec.secret` (field
//! selector `metadata.name=<name>`): unrelated Secrets never reach its
//! memory.
//!
//! Lifetimes are reference counted under the namespace entry's lock: each
//! reconcile registers its network (and the Secret it names) before it
//! reads, and the reconcile that finds a network gone unregisters it; the
//! last one out stops the namespace's informers. Registration and release
//! take the same lock, so a network created while the last one goes either
//! keeps the caches alive or starts new ones, never uses stopped ones.
//!
//! A namespace whose list is refused (403) is reported to the reconcile,
//! which puts it in the network's status; the informers keep retrying, and
//! once they sync every network of the namespace is queued again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use k8s_openapi::api::core::v1::Secret;
use kube_client::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::api::BitcoinNetwork;
use crate::controller::resources::{
    credentials_secret_name, generates_credentials, MANAGED_BY_SELECTOR,
};
use crate::controller::Router;
use crate::informer::{ApiSource, Informer, Lister, ReflectorMetrics, SyncedFlag};

/// What the Secret caches of a namespace can give right now.
pub enum SecretAccess {
    /// Synced: read from it.
    Ready(SecretView),
    /// The API server refused the list: the message says who and where.
    Denied(String),
    /// Still listing (or failing for another reason, retried with backoff).
    Pending(Option<String>),
}

/// The Secrets one network may use: those the controller owns in its
/// namespace and the one it names.
#[derive(Clone)]
pub struct SecretView {
    owned: Lister<Secret>,
    named: Option<Lister<Secret>>,
}

impl SecretView {
    /// A view over fixed Secrets (tests).
    pub fn from_lister(lister: Lister<Secret>) -> Self {
        SecretView {
            owned: lister,
            named: None,
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.owned
            .get(namespace, name)
            .or_else(|| self.named.as_ref()?.get(namespace, name))
    }
}

struct Cache {
    lister: Lister<Secret>,
    synced: SyncedFlag,
    stop: CancellationToken,
}

/// The caches of one namespace and who uses them.
struct Namespace {
    owned: Cache,
    /// Caches of Secrets named in `spec.secret`, by Secret name.
    named: HashMap<String, Cache>,
    /// Every registered network, with the Secret it names.
    networks: HashMap<String, Option<String>>,
}

impl Namespace {
    /// Stops the caches of named Secrets no registered network names.
    fn prune(&mut self) {
        let networks = &self.networks;
        self.named.retain(|name, cache| {
            let used = networks.values().any(|n| n.as_deref() == Some(name));
            if !used {
                cache.stop.cancel();
            }
            used
        });
    }

    fn stop(&self) {
        self.owned.stop.cancel();
        for cache in self.named.values() {
            cache.stop.cancel();
        }
    }
}

enum Mode {
    Live {
        client: Client,
        resync: Option<Duration>,
        metrics: Arc<dyn ReflectorMetrics>,
        router: Arc<Router>,
        /// Parent of every cache's stop token: stops them all on shutdown.
        stop: CancellationToken,
    },
    Fixed(SecretView),
}

/// The per-namespace Secret informers.
pub struct SecretCaches {
    mode: Mode,
    namespaces: DashMap<String, Namespace>,
}

impl SecretCaches {
    pub fn new(
        client: Client,
        resync: Option<Duration>,
        metrics: Arc<dyn ReflectorMetrics>,
        router: Arc<Router>,
        stop: CancellationToken,
    ) -> Self {
        SecretCaches {
            mode: Mode::Live {
                client,
                resync,
                metrics,
                router,
                stop,
            },
            namespaces: DashMap::new(),
        }
    }

    /// Caches that always answer with `view` and start nothing (tests).
    pub fn fixed(view: SecretView) -> Self {
        SecretCaches {
            mode: Mode::Fixed(view),
            namespaces: DashMap::new(),
        }
    }

    /// Registers `net` and returns its Secrets, starting the caches it needs.
    /// Waits up to `patience` for the outcome of their first lists.
    pub async fn access(&self, net: &BitcoinNetwork, patience: Duration) -> SecretAccess {
        if let Mode::Fixed(view) = &self.mode {
            return SecretAccess::Ready(view.clone());
        }
        let namespace = net.namespace();
        let named = (!generates_credentials(net)).then(|| credentials_secret_name(net));
        let caches: Vec<(Lister<Secret>, SyncedFlag)> = {
            let mut ns = self
                .namespaces
                .entry(namespace.to_owned())
                .or_insert_with(|| Namespace {
                    owned: self.start(namespace, None),
                    named: HashMap::new(),
                    networks: HashMap::new(),
                });
            ns.networks.insert(net.name().to_owned(), named.clone());
            if let Some(name) = &named {
                if !ns.named.contains_key(name) {
                    let cache = self.start(namespace, Some(name));
                    ns.named.insert(name.clone(), cache);
                }
            }
            ns.prune();
            std::iter::once(&ns.owned)
                .chain(named.as_ref().and_then(|n| ns.named.get(n)))
                .map(|c| (c.lister.clone(), c.synced.clone()))
                .collect()
        };
        // A first list normally takes milliseconds.
        let first_lists =
            futures::future::join_all(caches.iter().map(|(_, s)| s.wait_for_first_list()));
        let _ = tokio::time::timeout(patience, first_lists).await;
        let mut pending = None;
        for (_, synced) in &caches {
            if synced.is_synced() {
                continue;
            }
            match synced.list_failure() {
                Some(failure) if failure.forbidden => return SecretAccess::Denied(failure.message),
                failure => pending = Some(failure.map(|f| f.message)),
            }
        }
        if let Some(failure) = pending {
            return SecretAccess::Pending(failure);
        }
        let mut listers = caches.into_iter().map(|(l, _)| l);
        SecretAccess::Ready(SecretView {
            owned: listers.next().expect("the owned cache"),
            named: listers.next(),
        })
    }

    /// Unregisters network `name` of `namespace` (it is gone); the last one
    /// out stops the namespace's caches.
    pub fn release(&self, namespace: &str, name: &str) {
        if let Entry::Occupied(mut entry) = self.namespaces.entry(namespace.to_owned()) {
            let ns = entry.get_mut();
            if ns.networks.remove(name).is_none() {
                return;
            }
            ns.prune();
            if ns.networks.is_empty() {
                log::info!(
                    "no network left in namespace {namespace}: stopping its Secret informers"
                );
                ns.stop();
                entry.remove();
            }
        }
    }

    /// Namespaces with running caches, and how many caches (tests, metrics).
    pub fn running(&self) -> Vec<(String, usize)> {
        let mut out: Vec<_> = self
            .namespaces
            .iter()
            .map(|e| (e.key().clone(), 1 + e.value().named.len()))
            .collect();
        out.sort();
        out
    }

    /// Starts an informer over the owned Secrets of `namespace` (`named`
    /// `None`) or over the one Secret `named`.
    fn start(&self, namespace: &str, named: Option<&str>) -> Cache {
        let Mode::Live {
            client,
            resync,
            metrics,
            router,
            stop,
        } = &self.mode
        else {
            unreachable!("fixed caches start nothing");
        };
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let source = match named {
            None => {
                log::info!("starting the informer of owned Secrets in namespace {namespace}");
                ApiSource::new(api).label_selector(MANAGED_BY_SELECTOR)
            }
            Some(name) => {
                log::info!("starting the informer of Secret {namespace}/{name}");
                ApiSource::new(api).field_selector(format!("metadata.name={name}"))
            }
        };
        let mut informer = Informer::new(source, *resync).with_metrics(metrics.clone());
        informer.add_event_handler(router.clone());
        let cache = Cache {
            lister: informer.lister(),
            synced: informer.synced(),
            stop: stop.child_token(),
        };
        let stop = cache.stop.clone();
        let synced = cache.synced.clone();
        let router = router.clone();
        let ns = namespace.to_owned();
        tokio::spawn(async move {
            // Networks that waited for access (or for the first list) need no
            // Secret event to be looked at again.
            let requeue = async {
                synced.wait().await;
                router.enqueue_namespace(&ns);
                std::future::pending::<()>().await
            };
            tokio::select! {
                _ = informer.run(stop) => {}
                _ = requeue => {}
            }
        });
        cache
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BitcoinNetworkSpec;
    use crate::informer::ObjectKey;
    use crate::workqueue::WorkQueue;
    use http::{Request, Response};
    use kube_client::client::Body;

    /// Caches whose lists never answer: enough to see what runs.
    fn caches() -> (
        SecretCaches,
        tower_test::mock::Handle<Request<Body>, Response<Body>>,
    ) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let router = Arc::new(Router::new(
            WorkQueue::<ObjectKey>::new("test"),
            Lister::from_objects(Vec::<BitcoinNetwork>::new()),
            Lister::from_objects(Vec::new()),
        ));
        let caches = SecretCaches::new(
            client,
            None,
            Arc::new(crate::informer::NoopReflectorMetrics),
            router,
            CancellationToken::new(),
        );
        (caches, handle)
    }

    fn net(name: &str, secret: Option<&str>) -> BitcoinNetwork {
        let mut n = BitcoinNetwork::new(
            name,
            BitcoinNetworkSpec {
                nodes: 1,
                secret: secret.map(Into::into),
                image: None,
                ..Default::default()
            },
        );
        n.metadata.namespace = Some("ns".into());
        n
    }

    #[tokio::test]
    async fn caches_live_while_a_network_uses_them() {
        let (caches, _api) = caches();
        let patience = Duration::ZERO;
        caches.access(&net("a", None), patience).await;
        caches.access(&net("b", Some("creds")), patience).await;
        assert_eq!(
            caches.running(),
            [("ns".to_owned(), 2)],
            "owned + one named"
        );
        caches.release("ns", "b");
        assert_eq!(
            caches.running(),
            [("ns".to_owned(), 1)],
            "nobody names creds"
        );
        caches.release("ns", "gone");
        caches.release("ns", "a");
        assert!(caches.running().is_empty());
        // A network that changes its Secret moves its hold.
        caches.access(&net("c", Some("x")), patience).await;
        caches.access(&net("c", Some("y")), patience).await;
        assert_eq!(caches.running(), [("ns".to_owned(), 2)]);
    }

    /// The old race: "no network left, release" against a network created at
    /// that moment. Whatever the interleaving, a registered network finds
    /// running caches, and the namespace's caches stop with the last one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn release_and_access_race_leaves_no_network_on_stopped_caches() {
        let (caches, _api) = caches();
        let caches = Arc::new(caches);
        for round in 0..200 {
            let old = format!("old-{round}");
            caches.access(&net(&old, None), Duration::ZERO).await;
            let releasing = {
                let caches = caches.clone();
                tokio::spawn(async move { caches.release("ns", &old) })
            };
            let new = format!("new-{round}");
            let accessing = {
                let caches = caches.clone();
                let n = net(&new, None);
                tokio::spawn(async move { caches.access(&n, Duration::ZERO).await })
            };
            releasing.await.unwrap();
            accessing.await.unwrap();
            let ns = caches
                .namespaces
                .get("ns")
                .expect("the new network holds the namespace");
            assert!(
                !ns.owned.stop.is_cancelled(),
                "round {round}: caches stopped under a network"
            );
            assert_eq!(ns.networks.len(), 1);
            drop(ns);
            caches.release("ns", &new);
            assert!(caches.running().is_empty());
        }
    }
}
