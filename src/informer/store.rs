//! The informer's cache: objects by namespace, then name, shared with
//! [`Lister`]s.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use kube_client::Resource;
use tokio::sync::Notify;

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

/// The cached objects, indexed by namespace then name, so one namespace is
/// read without visiting the others.
struct Index<K> {
    by_namespace: HashMap<String, HashMap<String, Arc<K>>>,
    len: usize,
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Self {
            by_namespace: HashMap::new(),
            len: 0,
        }
    }
}

impl<K> Index<K> {
    fn get(&self, namespace: &str, name: &str) -> Option<&Arc<K>> {
        self.by_namespace.get(namespace)?.get(name)
    }

    fn values(&self) -> impl Iterator<Item = &Arc<K>> {
        self.by_namespace.values().flat_map(HashMap::values)
    }

    /// Stores `obj` under `key`, returning what was there.
    fn insert(&mut self, key: ObjectKey, obj: Arc<K>) -> Option<Arc<K>> {
        let old = self
            .by_namespace
            .entry(key.namespace)
            .or_default()
            .insert(key.name, obj);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes and returns the object `namespace/name`; a namespace left
    /// without objects is dropped from the index.
    fn remove(&mut self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let objects = self.by_namespace.get_mut(namespace)?;
        let old = objects.remove(name)?;
        if objects.is_empty() {
            self.by_namespace.remove(namespace);
        }
        self.len -= 1;
        Some(old)
    }
}

type Shared<K> = Arc<RwLock<Index<K>>>;

/// Reads the index. Nothing panics while holding the lock (handlers run
/// outside it), so a poisoned lock still holds a consistent index.
fn read<K>(index: &RwLock<Index<K>>) -> RwLockReadGuard<'_, Index<K>> {
    index.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<K>(index: &RwLock<Index<K>>) -> RwLockWriteGuard<'_, Index<K>> {
    index.write().unwrap_or_else(PoisonError::into_inner)
}

/// The writable side of the cache; only the informer task holds it.
pub(super) struct Store<K> {
    index: Shared<K>,
    rewatch: Arc<Notify>,
}

impl<K: Resource> Store<K> {
    pub(super) fn new() -> Self {
        Self {
            index: Arc::new(RwLock::new(Index::default())),
            rewatch: Arc::new(Notify::new()),
        }
    }

    pub(super) fn lister(&self) -> Lister<K> {
        Lister {
            index: Arc::clone(&self.index),
            rewatch: Arc::clone(&self.rewatch),
        }
    }

    /// Completes when a reader called [`Lister::request_rewatch`] (once per
    /// batch of requests made while nobody waited).
    pub(super) async fn rewatch_requested(&self) {
        self.rewatch.notified().await;
    }

    /// Stores `new`; an update if an object with its key was cached.
    pub(super) fn apply(&self, new: Arc<K>) -> Change<K> {
        let key = ObjectKey::from_object(&*new);
        match write(&self.index).insert(key, Arc::clone(&new)) {
            Some(old) => Change::Updated { old, new },
            None => Change::Added(new),
        }
    }

    /// Removes the object; the change carries `last`, the final state
    /// reported by the server.
    pub(super) fn delete(&self, last: Arc<K>) -> Change<K> {
        let key = ObjectKey::from_object(&*last);
        write(&self.index).remove(&key.namespace, &key.name);
        Change::Deleted(last)
    }

    /// Makes the store hold exactly `objects` (a fresh list) and returns what
    /// changed: new keys are added, a changed resourceVersion is an update,
    /// and cached objects missing from the list are deleted with their last
    /// known state (tombstones). Unchanged objects produce no change. Deletes
    /// come first, then the rest in list order.
    ///
    /// The new contents are built aside and swapped in under one write
    /// lock, so a reader sees either the old store or the new one, never a
    /// mix; the changes are then worked out against the old contents,
    /// outside the lock.
    pub(super) fn replace(&self, objects: Vec<Arc<K>>) -> Vec<Change<K>> {
        let mut fresh = Index::default();
        for obj in &objects {
            fresh.insert(ObjectKey::from_object(&**obj), Arc::clone(obj));
        }
        let mut old = std::mem::replace(&mut *write(&self.index), fresh);

        let mut changed = Vec::new();
        for new in objects {
            let meta = new.meta();
            let namespace = meta.namespace.as_deref().unwrap_or_default();
            let name = meta.name.as_deref().unwrap_or_default();
            match old.remove(namespace, name) {
                None => changed.push(Change::Added(new)),
                Some(old) if old.meta().resource_version != new.meta().resource_version => {
                    changed.push(Change::Updated { old, new })
                }
                Some(_) => {}
            }
        }
        // What is left of the old contents was not in the list.
        let mut changes: Vec<Change<K>> = old
            .by_namespace
            .into_values()
            .flat_map(HashMap::into_values)
            .map(Change::Deleted)
            .collect();
        changes.append(&mut changed);
        changes
    }

    /// Every cached object, for a resync.
    pub(super) fn snapshot(&self) -> Vec<Arc<K>> {
        read(&self.index).values().cloned().collect()
    }
}

/// Read-only view of an informer's cache; cheap to clone and share.
///
/// Reads take a shared lock for as long as they copy out `Arc`s; a relist
/// is swapped in whole, so a reader never sees it half done.
///
/// Returned objects are shared with the cache: never mutate them in place
/// (clone the inner value to build an update).
pub struct Lister<K> {
    index: Shared<K>,
    rewatch: Arc<Notify>,
}

impl<K> Clone for Lister<K> {
    fn clone(&self) -> Self {
        Self {
            index: Arc::clone(&self.index),
            rewatch: Arc::clone(&self.rewatch),
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
        read(&self.index).get(namespace, name).cloned()
    }

    /// Every cached object, in no particular order.
    pub fn list(&self) -> Vec<Arc<K>> {
        read(&self.index).values().cloned().collect()
    }

    /// The cached objects of one namespace, in no particular order. Costs
    /// the number of objects in that namespace, not the size of the cache.
    pub fn list_namespaced(&self, namespace: &str) -> Vec<Arc<K>> {
        read(&self.index)
            .by_namespace
            .get(namespace)
            .map(|objects| objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many objects are cached.
    pub fn len(&self) -> usize {
        read(&self.index).len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tells the reflector that the cache is behind the API server (an API
    /// call found gone an object the cache still holds): it ends its current
    /// watch and watches again from its last resourceVersion, which delivers
    /// what the old watch missed if that connection had silently died, or
    /// lists again after a 410. Cheap; requests made while one is pending
    /// count once.
    pub fn request_rewatch(&self) {
        self.rewatch.notify_one();
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
        assert_eq!(lister.len(), 2);
    }

    fn names(objects: &[Arc<ConfigMap>]) -> Vec<String> {
        let mut names: Vec<String> = objects
            .iter()
            .map(|o| ObjectKey::from_object(&**o).to_string())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn namespace_index_serves_one_namespace_and_forgets_empty_ones() {
        let store = Store::new();
        for i in 0..50 {
            store.apply(cm(&format!("other-{i}"), "x", "1"));
        }
        store.apply(cm("a", "x", "1"));
        store.apply(cm("a", "y", "1"));
        store.apply(cm("", "cluster-wide", "1"));
        let lister = store.lister();
        assert_eq!(names(&lister.list_namespaced("a")), ["a/x", "a/y"]);
        assert_eq!(names(&lister.list_namespaced("")), ["cluster-wide"]);
        assert!(lister.list_namespaced("none").is_empty());
        assert_eq!(lister.len(), 53);
        assert_eq!(lister.list().len(), 53);

        // The index holds one entry per namespace that has objects: the
        // last delete of a namespace drops it.
        store.delete(cm("a", "x", "2"));
        store.delete(cm("a", "y", "2"));
        assert!(lister.list_namespaced("a").is_empty());
        assert!(!read(&store.index).by_namespace.contains_key("a"));
        // Deleting what is not cached changes nothing.
        store.delete(cm("a", "x", "3"));
        assert_eq!(lister.len(), 51);

        // A relist rebuilds the index.
        store.replace(vec![cm("b", "z", "1")]);
        assert_eq!(read(&store.index).by_namespace.len(), 1);
        assert_eq!(names(&lister.list()), ["b/z"]);
        assert_eq!(lister.len(), 1);
        assert!(!lister.is_empty());
        store.replace(vec![]);
        assert!(lister.is_empty());
    }

    #[test]
    fn replace_is_seen_whole_or_not_at_all() {
        // Two generations of 200 objects over 20 namespaces, with disjoint
        // names: a reader racing the relists must always find exactly one
        // generation, complete.
        let generation = |g: u32| -> Vec<Arc<ConfigMap>> {
            (0..200)
                .map(|i| cm(&format!("ns-{}", i % 20), &format!("g{g}-{i}"), "1"))
                .collect()
        };
        let store = Store::new();
        store.replace(generation(0));
        let lister = store.lister();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = std::thread::spawn({
            let done = Arc::clone(&done);
            move || {
                let mut reads = 0u32;
                while !done.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                    let all = lister.list();
                    assert_eq!(all.len(), 200, "a half-replaced store");
                    let first = all[0].metadata.name.as_deref().unwrap();
                    let prefix = &first[..first.find('-').unwrap()];
                    assert!(
                        all.iter()
                            .all(|o| o.metadata.name.as_deref().unwrap().starts_with(prefix)),
                        "two generations mixed"
                    );
                    assert_eq!(lister.list_namespaced("ns-3").len(), 10);
                    assert_eq!(lister.len(), 200);
                    reads += 1;
                }
                reads
            }
        });
        for round in 1..=300 {
            let changes = store.replace(generation(round % 2));
            // Every old object is a tombstone, every new one an add.
            assert_eq!(changes.len(), 400);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().expect("reader saw a torn store") > 0);
    }

    #[test]
    fn replace_puts_tombstones_first_then_list_order() {
        let store = Store::new();
        store.replace(vec![cm("ns", "gone", "1"), cm("ns", "kept", "1")]);
        let changes = store.replace(vec![
            cm("ns", "z-new", "2"),
            cm("ns", "kept", "3"),
            cm("ns", "a-new", "2"),
        ]);
        let order: Vec<String> = changes
            .iter()
            .map(|c| match c {
                Change::Added(o) => format!("add {}", o.metadata.name.as_deref().unwrap()),
                Change::Updated { new, .. } => {
                    format!("update {}", new.metadata.name.as_deref().unwrap())
                }
                Change::Deleted(o) => format!("delete {}", o.metadata.name.as_deref().unwrap()),
            })
            .collect();
        assert_eq!(
            order,
            ["delete gone", "add z-new", "update kept", "add a-new"]
        );
    }
}
