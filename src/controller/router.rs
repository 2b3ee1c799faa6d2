//! Event routing (sample-controller's `enqueueFoo` and `handleObject`):
//! every change that can matter to a network turns into that network's key
//! on the workqueue.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_client::Resource;

use crate::api::{BitcoinNetwork, GROUP, KIND};
use crate::controller::resources::controller_of;
use crate::informer::{EventHandler, Lister, ObjectKey};
use crate::workqueue::WorkQueue;

/// Routes events of networks and of the objects they own to network keys.
pub struct Router {
    queue: WorkQueue<ObjectKey>,
    networks: Lister<BitcoinNetwork>,
    statefulsets: Lister<StatefulSet>,
}

impl Router {
    pub fn new(
        queue: WorkQueue<ObjectKey>,
        networks: Lister<BitcoinNetwork>,
        statefulsets: Lister<StatefulSet>,
    ) -> Self {
        Router {
            queue,
            networks,
            statefulsets,
        }
    }

    /// The networks an event on an object of kind `kind` concerns: the one that
    /// controls it (for a Pod: the one that controls its StatefulSet), and for
    /// a Secret also every network naming it in `spec.secret`.
    pub fn networks_for(&self, kind: &str, meta: &ObjectMeta) -> Vec<ObjectKey> {
        let Some(namespace) = meta.namespace.as_deref() else {
            return Vec::new();
        };
        let mut keys = Vec::new();
        if kind == "Secret" {
            let name = meta.name.as_deref().unwrap_or_default();
            keys.extend(
                self.networks
                    .list_namespaced(namespace)
                    .iter()
                    .filter(|n| n.spec.secret.as_deref() == Some(name))
                    .map(|n| ObjectKey::new(namespace, n.name())),
            );
        }
        if let Some(key) = self.owning_network(kind, namespace, meta) {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }

    fn owning_network(&self, kind: &str, namespace: &str, meta: &ObjectMeta) -> Option<ObjectKey> {
        let mut owner = controller_of(meta)?.clone();
        if kind == "Pod" {
            if owner.kind != "StatefulSet" {
                return None;
            }
            let sts = self.statefulsets.get(namespace, &owner.name)?;
            if sts.metadata.uid.as_ref() != Some(&owner.uid) {
                return None;
            }
            owner = controller_of(&sts.metadata)?.clone();
        }
        if owner.kind != KIND || owner.api_version.split('/').next() != Some(GROUP) {
            return None;
        }
        // Like sample-controller: ignore objects whose owner is gone or is an
        // older network of the same name.
        let net = self.networks.get(namespace, &owner.name)?;
        (net.metadata.uid.as_ref() == Some(&owner.uid))
            .then(|| ObjectKey::new(namespace, &owner.name))
    }

    fn enqueue<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        let meta = obj.meta();
        if K::kind(&()) == KIND {
            self.queue.add(ObjectKey::new(
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            ));
            return;
        }
        for key in self.networks_for(&K::kind(&()), meta) {
            self.queue.add(key);
        }
    }
}

impl<K> EventHandler<K> for Router
where
    K: Resource<DynamicType = ()> + Send + Sync,
{
    fn on_add(&self, obj: &Arc<K>) {
        self.enqueue(obj.as_ref());
    }

    fn on_update(&self, old: &Arc<K>, new: &Arc<K>) {
        // Networks are reconciled on every update, periodic resyncs included:
        // that is what repairs drift in the nodes' RPC state. For owned
        // objects a resync (same resourceVersion) carries no news.
        if K::kind(&()) != KIND && old.meta().resource_version == new.meta().resource_version {
            return;
        }
        self.enqueue(new.as_ref());
    }

    fn on_delete(&self, obj: &Arc<K>) {
        self.enqueue(obj.as_ref());
    }
}
