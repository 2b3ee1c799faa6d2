//! The informer's cache: objects by `namespace/name`, shared with [`Lister`]s.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use dashmap::DashMap;
use kube_client::Resource;

/// Identifies a cached object: `namespace/name`, or just `name` for
/// cluster-scoped objects (whose namespace is the empty string).
///
/// This is the key format of client-go's `MetaNamespaceKeyFunc`, so keys
/// printed with [`Display`](fmt::Display) are what a workqueue carries and
/// [`FromStr`] turns back into a key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// Object name.
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts; pass `""` as namespace for cluster-scoped objects.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of an object, from its metadata.
    pub fn from_object<K: Resource>(obj: &K) -> Self {
        let meta = obj.meta();
        Self::new(
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// A string that is neither `namespace/name` nor `name`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid object key {0:?}: expected \"namespace/name\" or \"name\"")]
pub struct InvalidObjectKey(pub String);

impl FromStr for ObjectKey {
    type Err = InvalidObjectKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (namespace, name) = s.split_once('/').unwrap_or(("", s));
        if name.is_empty() || name.contains('/') {
            return Err(InvalidObjectKey(s.to_owned()));
        }
        Ok(Self::new(namespace, name))
    }
}

/// A change of the store, to be delivered to the event handlers.
#[derive(Debug)]
pub(super) enum Change<K> {
    Added(Arc<K>),
    Updated { old: Arc<K>, new: Arc<K> },
    Deleted(Arc<K>),
}

type Map<K> = DashMap<ObjectKey, Arc<K>>;

/// The writable side of the cache; only the informer task holds it.
pub(super) struct Store<K> {
    map: Arc<Map<K>>,
}

impl<K: Resource> Store<K> {
    pub(super) fn new() -> Self {
        Self {
            map: Arc::new(DashMap::new()),
        }
    }

    pub(super) fn lister(&self) -> Lister<K> {
        Lister {
            map: Arc::clone(&self.map),
        }
    }

    /// Stores `new`; an update if an object with its key was cached.
    pub(super) fn apply(&self, new: Arc<K>) -> Change<K> {
        match self
            .map
            .insert(ObjectKey::from_object(&*new), Arc::clone(&new))
        {
            Some(old) => Change::Updated { old, new },
            None => Change::Added(new),
        }
    }

    /// Removes the object; the change carries `last`, the final state
    /// reported by the server.
    pub(super) fn delete(&self, last: Arc<K>) -> Change<K> {
        self.map.remove(&ObjectKey::from_object(&*last));
        Change::Deleted(last)
    }

    /// Makes the store hold exactly `objects` (a fresh list) and returns what
    /// changed: new keys are added, a changed resourceVersion is an update,
    /// and cached objects missing from the list are deleted with their last
    /// known state (tombstones). Unchanged objects produce no change. Deletes
    /// come first, then the rest in list order.
    ///
    /// Readers on other threads may see the store half-way through.
    pub(super) fn replace(&self, objects: Vec<Arc<K>>) -> Vec<Change<K>> {
        let fresh: Vec<(ObjectKey, Arc<K>)> = objects
            .into_iter()
            .map(|obj| (ObjectKey::from_object(&*obj), obj))
            .collect();
        let keep: HashSet<&ObjectKey> = fresh.iter().map(|(key, _)| key).collect();
        let vanished: Vec<ObjectKey> = self
            .map
            .iter()
            .filter(|e| !keep.contains(e.key()))
            .map(|e| e.key().clone())
            .collect();
        let mut changes = Vec::new();
        for key in vanished {
            if let Some((_, old)) = self.map.remove(&key) {
                changes.push(Change::Deleted(old));
            }
        }
        for (key, new) in fresh {
            match self.map.insert(key, Arc::clone(&new)) {
                None => changes.push(Change::Added(new)),
                Some(old) if old.meta().resource_version != new.meta().resource_version => {
                    changes.push(Change::Updated { old, new })
                }
                Some(_) => {}
            }
        }
        changes
    }

    /// Every cached object, for a resync.
    pub(super) fn snapshot(&self) -> Vec<Arc<K>> {
        self.map.iter().map(|e| Arc::clone(e.value())).collect()
    }
}

/// Read-only view of an informer's cache; cheap to clone and share.
///
/// Returned objects are shared with the cache: never mutate them in place
/// (clone the inner value to build an update).
pub struct Lister<K> {
    map: Arc<Map<K>>,
}

impl<K> Clone for Lister<K> {
    fn clone(&self) -> Self {
        Self {
            map: Arc::clone(&self.map),
        }
    }
}

impl<K: Resource> Lister<K> {
    /// A lister over a fixed set of objects, for tests of code that reads
    /// caches.
    pub fn from_objects(objects: impl IntoIterator<Item = K>) -> Self {
        let store = Store::new();
        for obj in objects {
            store.apply(Arc::new(obj));
        }
        store.lister()
    }
}

impl<K> Lister<K> {
    /// The cached object `namespace/name` (namespace `""` for
    /// cluster-scoped objects).
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.map
            .get(&ObjectKey::new(namespace, name))
            .map(|e| Arc::clone(e.value()))
    }

    /// Every cached object, in no particular order.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.map.iter().map(|e| Arc::clone(e.value())).collect()
    }

    /// The cached objects of one namespace, in no particular order.
    pub fn list_namespaced(&self, namespace: &str) -> Vec<Arc<K>> {
        self.map
            .iter()
            .filter(|e| e.key().namespace == namespace)
            .map(|e| Arc::clone(e.value()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn cm(ns: &str, name: &str, rv: &str) -> Arc<ConfigMap> {
        Arc::new(ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn describe(changes: &[Change<ConfigMap>]) -> Vec<String> {
        let d = |o: &Arc<ConfigMap>| {
            let rv = o.metadata.resource_version.clone().unwrap_or_default();
            format!("{}@{rv}", ObjectKey::from_object(&**o))
        };
        let mut out: Vec<String> = changes
            .iter()
            .map(|c| match c {
                Change::Added(o) => format!("add {}", d(o)),
                Change::Updated { old, new } => format!("update {} -> {}", d(old), d(new)),
                Change::Deleted(o) => format!("delete {}", d(o)),
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn key_display_and_parse_round_trip() {
        let k = ObjectKey::new("ns", "a");
        assert_eq!(k.to_string(), "ns/a");
        assert_eq!("ns/a".parse::<ObjectKey>(), Ok(k));
        let cluster = ObjectKey::new("", "node-1");
        assert_eq!(cluster.to_string(), "node-1");
        assert_eq!("node-1".parse::<ObjectKey>(), Ok(cluster));
        for bad in ["", "ns/", "a/b/c"] {
            assert_eq!(bad.parse::<ObjectKey>(), Err(InvalidObjectKey(bad.into())));
        }
    }

    #[test]
    fn replace_reports_adds_updates_and_tombstones() {
        let store = Store::new();
        store.replace(vec![
            cm("ns", "same", "1"),
            cm("ns", "changed", "1"),
            cm("ns", "gone", "3"),
        ]);
        let changes = store.replace(vec![
            cm("ns", "same", "1"),
            cm("ns", "changed", "2"),
            cm("ns", "new", "4"),
        ]);
        assert_eq!(
            describe(&changes),
            [
                "add ns/new@4",
                "delete ns/gone@3",
                "update ns/changed@1 -> ns/changed@2"
            ]
        );
        let mut names: Vec<String> = store
            .lister()
            .list()
            .iter()
            .map(|o| o.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["changed", "new", "same"]);
    }

    #[test]
    fn lister_get_and_list_namespaced() {
        let store = Store::new();
        store.apply(cm("a", "x", "1"));
        store.apply(cm("b", "x", "2"));
        store.apply(cm("b", "y", "3"));
        let lister = store.lister();
        let got = lister.get("b", "x").unwrap();
        assert_eq!(got.metadata.resource_version.as_deref(), Some("2"));
        assert!(lister.get("c", "x").is_none());
        assert_eq!(lister.list().len(), 3);
        assert_eq!(lister.list_namespaced("b").len(), 2);
        store.delete(cm("b", "x", "4"));
        assert!(lister.get("b", "x").is_none());
    }
}
