//! Event routing (sample-controller's `enqueueFoo` and `handleObject`):
//! every change that can matter to a network turns into that network's key
//! on the workqueue. Each kind says how its objects lead to networks
//! ([`Route`]); one generic [`EventHandler`] serves them all.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_client::Resource;

use crate::api::{BitcoinNetwork, GROUP, KIND};
use crate::controller::cached::{CachedPod, CachedStatefulSet};
use crate::controller::resources::controller_of;
use crate::informer::{EventHandler, Lister, ObjectKey};
use crate::workqueue::WorkQueue;

/// Routes events of networks and of the objects they own to network keys.
pub struct Router {
    queue: WorkQueue<ObjectKey>,
    networks: Lister<BitcoinNetwork>,
    statefulsets: Lister<CachedStatefulSet>,
}

impl Router {
    pub fn new(
        queue: WorkQueue<ObjectKey>,
        networks: Lister<BitcoinNetwork>,
        statefulsets: Lister<CachedStatefulSet>,
    ) -> Self {
        Router {
            queue,
            networks,
            statefulsets,
        }
    }

    /// The network whose controller reference `meta` carries, if that
    /// network is cached with the same uid (like sample-controller, objects
    /// of a gone or older network of the same name are ignored).
    fn owner_of(&self, meta: &ObjectMeta) -> Option<ObjectKey> {
        let namespace = meta.namespace.as_deref()?;
        let owner = controller_of(meta)?;
        if owner.kind != KIND || owner.api_version.split('/').next() != Some(GROUP) {
            return None;
        }
        let net = self.networks.get(namespace, &owner.name)?;
        (net.metadata.uid.as_ref() == Some(&owner.uid))
            .then(|| ObjectKey::new(namespace, &owner.name))
    }

    /// The network of a pod: the owner of the StatefulSet that controls it.
    fn owner_of_pod(&self, meta: &ObjectMeta) -> Option<ObjectKey> {
        let owner = controller_of(meta)?;
        if owner.kind != "StatefulSet" {
            return None;
        }
        let sts = self
            .statefulsets
            .get(meta.namespace.as_deref()?, &owner.name)?;
        if sts.metadata.uid.as_ref() != Some(&owner.uid) {
            return None;
        }
        self.owner_of(&sts.metadata)
    }

    /// Networks naming Secret `meta` in `spec.secret`.
    fn networks_naming(&self, meta: &ObjectMeta) -> Vec<ObjectKey> {
        let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref())
        else {
            return Vec::new();
        };
        self.networks
            .list_namespaced(namespace)
            .iter()
            .filter(|n| n.spec.secret.as_deref() == Some(name))
            .map(|n| ObjectKey::new(namespace, n.name()))
            .collect()
    }

    /// Queues every network of `namespace`.
    pub fn enqueue_namespace(&self, namespace: &str) {
        for net in self.networks.list_namespaced(namespace) {
            self.queue.add(ObjectKey::from_object(net.as_ref()));
        }
    }
}

/// How the events of one kind of object reach networks.
pub trait Route: Resource<DynamicType = ()> + Send + Sync + Sized {
    /// The networks an event on `obj` concerns.
    fn networks(router: &Router, obj: &Self) -> Vec<ObjectKey>;

    /// Whether an update carries news. For owned objects: a new
    /// resourceVersion (a resync re-delivers the same one).
    fn is_news(old: &Self, new: &Self) -> bool {
        old.meta().resource_version != new.meta().resource_version
    }
}

impl Route for BitcoinNetwork {
    fn networks(_: &Router, net: &Self) -> Vec<ObjectKey> {
        vec![ObjectKey::from_object(net)]
    }

    /// A resync (same resourceVersion) is news: it is what repairs drift in
    /// the nodes' RPC state. A new resourceVersion of the same generation is
    /// not: a status write (the controller's own) or a change of labels or
    /// annotations leaves the desired state as it was.
    fn is_news(old: &Self, new: &Self) -> bool {
        old.metadata.resource_version == new.metadata.resource_version
            || old.metadata.generation != new.metadata.generation
    }
}

impl Route for CachedStatefulSet {
    fn networks(router: &Router, obj: &Self) -> Vec<ObjectKey> {
        router.owner_of(&obj.metadata).into_iter().collect()
    }
}

impl Route for Service {
    fn networks(router: &Router, obj: &Self) -> Vec<ObjectKey> {
        router.owner_of(&obj.metadata).into_iter().collect()
    }
}

impl Route for CachedPod {
    fn networks(router: &Router, obj: &Self) -> Vec<ObjectKey> {
        router.owner_of_pod(&obj.metadata).into_iter().collect()
    }
}

impl Route for Secret {
    /// Its owner (generated credentials, rendered configuration) and every
    /// network naming it.
    fn networks(router: &Router, obj: &Self) -> Vec<ObjectKey> {
        let mut keys = router.networks_naming(&obj.metadata);
        if let Some(key) = router.owner_of(&obj.metadata) {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }
}

impl Router {
    fn enqueue<K: Route>(&self, obj: &K) {
        for key in K::networks(self, obj) {
            self.queue.add(key);
        }
    }
}

impl<K: Route> EventHandler<K> for Router {
    fn on_add(&self, obj: &Arc<K>) {
        self.enqueue(obj.as_ref());
    }

    fn on_update(&self, old: &Arc<K>, new: &Arc<K>) {
        if K::is_news(old, new) {
            self.enqueue(new.as_ref());
        }
    }

    fn on_delete(&self, obj: &Arc<K>) {
        self.enqueue(obj.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BitcoinNetworkSpec;
    use crate::controller::resources::owner_reference;
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn network(name: &str, uid: &str, secret: Option<&str>) -> BitcoinNetwork {
        let mut n = BitcoinNetwork::new(
            name,
            BitcoinNetworkSpec {
                nodes: 3,
                secret: secret.map(Into::into),
                image: None,
                ..Default::default()
            },
        );
        n.metadata.namespace = Some("ns".into());
        n.metadata.uid = Some(uid.into());
        n
    }

    fn meta(name: &str, owner: Option<OwnerReference>, rv: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            owner_references: owner.map(|o| vec![o]),
            resource_version: Some(rv.into()),
            ..ObjectMeta::default()
        }
    }

    fn sts_owner(name: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// A router over network `net` (uid u1), network `other` (uid u2, using
    /// Secret `shared`), and StatefulSet `net-sts` (uid s1) owned by `net`.
    fn router() -> (Router, WorkQueue<ObjectKey>) {
        let net = network("net", "u1", None);
        let other = network("other", "u2", Some("shared"));
        let sts = StatefulSet {
            metadata: meta("net-sts", Some(owner_reference(&net)), "1"),
            ..StatefulSet::default()
        };
        let sts = StatefulSet {
            metadata: ObjectMeta {
                uid: Some("s1".into()),
                ..sts.metadata
            },
            ..sts
        };
        let queue = WorkQueue::new("test");
        let router = Router::new(
            queue.clone(),
            Lister::from_objects([net, other]),
            Lister::from_objects([CachedStatefulSet::from(sts)]),
        );
        (router, queue)
    }

    fn keys(router: &Router, kind: &str, meta: &ObjectMeta) -> Vec<String> {
        let meta = meta.clone();
        let keys = match kind {
            "Service" => Service::networks(
                router,
                &Service {
                    metadata: meta,
                    ..Default::default()
                },
            ),
            "StatefulSet" => CachedStatefulSet::networks(
                router,
                &StatefulSet {
                    metadata: meta,
                    ..Default::default()
                }
                .into(),
            ),
            "Pod" => CachedPod::networks(
                router,
                &CachedPod {
                    metadata: meta,
                    ..Default::default()
                },
            ),
            "Secret" => Secret::networks(
                router,
                &Secret {
                    metadata: meta,
                    ..Default::default()
                },
            ),
            other => panic!("no route for {other}"),
        };
        keys.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn owned_objects_route_to_their_network() {
        let (r, _) = router();
        let owner = owner_reference(&network("net", "u1", None));
        assert_eq!(
            keys(&r, "Service", &meta("net-svc", Some(owner.clone()), "1")),
            ["ns/net"]
        );
        assert_eq!(
            keys(&r, "StatefulSet", &meta("net-sts", Some(owner), "1")),
            ["ns/net"]
        );
    }

    #[test]
    fn pods_route_through_their_statefulset() {
        let (r, _) = router();
        assert_eq!(
            keys(
                &r,
                "Pod",
                &meta("net-sts-0", Some(sts_owner("net-sts", "s1")), "1")
            ),
            ["ns/net"]
        );
        // A StatefulSet that is not cached, or a stale uid: nothing.
        assert!(keys(&r, "Pod", &meta("x-0", Some(sts_owner("x-sts", "s9")), "1")).is_empty());
        assert!(keys(
            &r,
            "Pod",
            &meta("net-sts-0", Some(sts_owner("net-sts", "old")), "1")
        )
        .is_empty());
        // A pod owned directly by a network is not one of ours.
        let owner = owner_reference(&network("net", "u1", None));
        assert!(keys(&r, "Pod", &meta("p", Some(owner), "1")).is_empty());
    }

    #[test]
    fn unrelated_and_stale_owners_are_ignored() {
        let (r, _) = router();
        assert!(keys(&r, "Service", &meta("plain", None, "1")).is_empty());
        // Same name, but an older network (different uid).
        let stale = owner_reference(&network("net", "u0", None));
        assert!(keys(&r, "Service", &meta("net-svc", Some(stale), "1")).is_empty());
        // Owner of another kind.
        assert!(keys(&r, "Service", &meta("s", Some(sts_owner("net", "u1")), "1")).is_empty());
        // A network that is not cached.
        let gone = owner_reference(&network("gone", "u3", None));
        assert!(keys(&r, "Service", &meta("gone-svc", Some(gone), "1")).is_empty());
    }

    #[test]
    fn secrets_route_to_owner_and_to_networks_naming_them() {
        let (r, _) = router();
        assert_eq!(keys(&r, "Secret", &meta("shared", None, "1")), ["ns/other"]);
        let owner = owner_reference(&network("net", "u1", None));
        assert_eq!(
            keys(&r, "Secret", &meta("net", Some(owner), "1")),
            ["ns/net"]
        );
        assert!(keys(&r, "Secret", &meta("unused", None, "1")).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn resync_of_owned_objects_is_skipped_but_networks_are_not() {
        let (r, queue) = router();
        let owner = owner_reference(&network("net", "u1", None));
        let svc = Arc::new(Service {
            metadata: meta("net-svc", Some(owner), "5"),
            ..Service::default()
        });
        EventHandler::<Service>::on_update(&r, &svc, &svc);
        assert_eq!(queue.len(), 0, "a resync of a Service carries no news");

        let changed = Arc::new(Service {
            metadata: meta(
                "net-svc",
                svc.metadata.owner_references.clone().unwrap().pop(),
                "6",
            ),
            ..Service::default()
        });
        EventHandler::<Service>::on_update(&r, &svc, &changed);
        assert_eq!(queue.get().await.unwrap().to_string(), "ns/net");
        queue.done(&ObjectKey::new("ns", "net"));

        let net = Arc::new(network("other", "u2", None));
        EventHandler::<BitcoinNetwork>::on_update(&r, &net, &net);
        assert_eq!(queue.get().await.unwrap().to_string(), "ns/other");
    }

    #[tokio::test(start_paused = true)]
    async fn status_only_updates_of_a_network_are_not_news() {
        let (r, queue) = router();
        let version = |rv: &str, generation: i64| {
            let mut n = network("net", "u1", None);
            n.metadata.resource_version = Some(rv.into());
            n.metadata.generation = Some(generation);
            Arc::new(n)
        };
        // The controller's own status write: new resourceVersion, same
        // generation. No second RPC sweep.
        EventHandler::<BitcoinNetwork>::on_update(&r, &version("1", 1), &version("2", 1));
        assert_eq!(queue.len(), 0);
        // A spec change.
        EventHandler::<BitcoinNetwork>::on_update(&r, &version("2", 1), &version("3", 2));
        assert_eq!(queue.len(), 1);
        let key = queue.get().await.unwrap();
        queue.done(&key);
        // A resync.
        EventHandler::<BitcoinNetwork>::on_update(&r, &version("3", 2), &version("3", 2));
        assert_eq!(queue.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn pod_readiness_change_and_delete_enqueue_at_once() {
        let (r, queue) = router();
        let pod = |rv: &str| {
            Arc::new(CachedPod {
                metadata: meta("net-sts-1", Some(sts_owner("net-sts", "s1")), rv),
                ..CachedPod::default()
            })
        };
        EventHandler::<CachedPod>::on_update(&r, &pod("1"), &pod("2"));
        assert_eq!(queue.len(), 1);
        let key = queue.get().await.unwrap();
        queue.done(&key);
        EventHandler::<CachedPod>::on_delete(&r, &pod("2"));
        assert_eq!(queue.len(), 1);
    }

    #[tokio::test]
    async fn enqueue_namespace_queues_every_network_there() {
        let (r, queue) = router();
        r.enqueue_namespace("elsewhere");
        assert_eq!(queue.len(), 0);
        r.enqueue_namespace("ns");
        let mut got = vec![queue.get().await.unwrap(), queue.get().await.unwrap()];
        got.sort();
        assert_eq!(
            got,
            [ObjectKey::new("ns", "net"), ObjectKey::new("ns", "other")]
        );
        assert_eq!(queue.len(), 0);
    }
}
