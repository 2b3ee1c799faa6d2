//! Secret caches, one per namespace that holds networks.
//!
//! The controller may read Secrets only in the namespaces where it was given
//! the right (a RoleBinding to the `bitcoin-controller-secrets` ClusterRole,
//! see `manifests/rbac.yaml`), so it cannot watch Secrets cluster-wide.
//! Instead a namespace's Secret informer starts with the first reconcile of a
//! network there and stops once no network is left in it. A namespace whose
//! list is refused (403) is reported to the reconcile, which puts it in the
//! network's status; the informer keeps retrying with backoff, and once it
//! syncs every network of the namespace is queued again.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use k8s_openapi::api::core::v1::Secret;
use kube_client::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::controller::Router;
use crate::informer::{Informer, Lister, ReflectorMetrics, SyncedFlag};

/// What the Secret cache of a namespace can give right now.
pub enum SecretAccess {
    /// Synced: read from it.
    Ready(Lister<Secret>),
    /// The API server refused the list: the message says who and where.
    Denied(String),
    /// Still listing (or failing for another reason, retried with backoff).
    Pending(Option<String>),
}

struct Cache {
    lister: Lister<Secret>,
    synced: SyncedFlag,
    stop: CancellationToken,
}

/// The per-namespace Secret informers.
pub struct SecretCaches {
    client: Client,
    resync: Option<Duration>,
    metrics: Arc<dyn ReflectorMetrics>,
    router: Arc<Router>,
    /// Parent of every cache's stop token: stops them all on shutdown.
    stop: CancellationToken,
    caches: DashMap<String, Cache>,
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
            client,
            resync,
            metrics,
            router,
            stop,
            caches: DashMap::new(),
        }
    }

    /// The Secret cache of `namespace`, started if it is not running. Waits
    /// up to `patience` for the outcome of its first list.
    pub async fn access(&self, namespace: &str, patience: Duration) -> SecretAccess {
        let (lister, synced) = {
            let cache = self
                .caches
                .entry(namespace.to_owned())
                .or_insert_with(|| self.start(namespace));
            (cache.lister.clone(), cache.synced.clone())
        };
        // A first list normally takes milliseconds.
        let _ = tokio::time::timeout(patience, synced.wait_for_first_list()).await;
        if synced.is_synced() {
            return SecretAccess::Ready(lister);
        }
        match synced.list_failure() {
            Some(failure) if failure.forbidden => SecretAccess::Denied(failure.message),
            failure => SecretAccess::Pending(failure.map(|f| f.message)),
        }
    }

    /// Stops the cache of `namespace` (when its last network is gone).
    pub fn release(&self, namespace: &str) {
        if let Some((_, cache)) = self.caches.remove(namespace) {
            log::info!("no network left in namespace {namespace}: stopping its Secret informer");
            cache.stop.cancel();
        }
    }

    fn start(&self, namespace: &str) -> Cache {
        log::info!("starting the Secret informer of namespace {namespace}");
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let mut informer = Informer::new(api, self.resync).with_metrics(self.metrics.clone());
        informer.add_event_handler(self.router.clone());
        let cache = Cache {
            lister: informer.lister(),
            synced: informer.synced(),
            stop: self.stop.child_token(),
        };
        let stop = cache.stop.clone();
        let synced = cache.synced.clone();
        let router = self.router.clone();
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
