//! What wakes an instance when an object one of its `Reference` nodes reads changes.
//!
//! A referenced object (a Secret the app needs, a shared ConfigMap) carries no management
//! labels — cuebe never writes it — so the label-filtered child watches never see it. Without
//! this, creating a missing Secret was noticed at the instance's next requeue (5 s while it
//! waits), and a change to a present one (rotated credentials, an exported value) only at the
//! resync of a Ready instance (5 min).
//!
//! How, cheaply: every pass tells [`ReferenceWatches::track`] which objects the instance's graph
//! references; the first reference of a kind starts one metadata-only watch of that kind (in the
//! operator's namespace, or cluster-wide), and every object it sees is looked up in the readers
//! index and wakes exactly the instances that read it (through the controller's
//! `reconcile_on`). Nothing is cached: the watch streams metadata and the index holds names.
//! An instance whose graph no longer references anything is dropped from the index; the watch of
//! a kind runs until the controller restarts.
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use futures::channel::mpsc::UnboundedSender;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};

use super::AbortOnDrop;
use crate::abstraction::Abstraction;
use crate::child_cache::Flow;

/// A referenced object: API group, kind, namespace ("" when cluster-scoped), name.
type ObjectKey = (String, String, String, String);

/// Which instances (`R`: an `ObjectRef` of the instance kind) read which objects.
struct Readers<R> {
    by_object: HashMap<ObjectKey, HashSet<R>>,
    by_instance: HashMap<R, Vec<ObjectKey>>,
}

impl<R: Clone + Eq + std::hash::Hash> Readers<R> {
    fn new() -> Self {
        Self {
            by_object: HashMap::new(),
            by_instance: HashMap::new(),
        }
    }

    /// `instance` reads exactly `objects` now (none: it is forgotten).
    fn set(&mut self, instance: &R, objects: Vec<ObjectKey>) {
        for key in self.by_instance.remove(instance).unwrap_or_default() {
            if let Some(readers) = self.by_object.get_mut(&key) {
                readers.remove(instance);
                if readers.is_empty() {
                    self.by_object.remove(&key);
                }
            }
        }
        for key in &objects {
            self.by_object
                .entry(key.clone())
                .or_default()
                .insert(instance.clone());
        }
        if !objects.is_empty() {
            self.by_instance.insert(instance.clone(), objects);
        }
    }
}

/// The referenced objects' watches of one run of the controller (dropped, and so stopped, when
/// the controller restarts; the restart reconciles every instance, which tracks again).
pub(super) struct ReferenceWatches<A: Abstraction> {
    client: kube::Client,
    namespace: Option<String>,
    readers: std::sync::Arc<Mutex<Readers<ObjectRef<A>>>>,
    /// One watch per referenced kind (`apiVersion`, `kind`).
    started: Mutex<HashMap<(String, String), AbortOnDrop<()>>>,
    triggers: UnboundedSender<ObjectRef<A>>,
}

impl<A: Abstraction> ReferenceWatches<A> {
    pub(super) fn new(
        client: kube::Client,
        namespace: Option<String>,
        triggers: UnboundedSender<ObjectRef<A>>,
    ) -> Self {
        Self {
            client,
            namespace,
            readers: std::sync::Arc::new(Mutex::new(Readers::new())),
            started: Mutex::new(HashMap::new()),
            triggers,
        }
    }

    /// Records that `instance` reads exactly `objects` now (each with its kind's resource and
    /// whether it is namespaced, its namespace and name), starting the watch of any kind not
    /// watched yet. An empty list forgets the instance.
    pub(super) fn track(
        &self,
        instance: &ObjectRef<A>,
        objects: Vec<(ApiResource, bool, String, String)>,
    ) {
        let keys = objects
            .iter()
            .map(|(resource, namespaced, namespace, name)| {
                (
                    resource.group.clone(),
                    resource.kind.clone(),
                    if *namespaced {
                        namespace.clone()
                    } else {
                        String::new()
                    },
                    name.clone(),
                )
            })
            .collect();
        self.readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set(instance, keys);
        for (resource, namespaced, _, _) in &objects {
            self.ensure(resource, *namespaced);
        }
    }

    fn ensure(&self, resource: &ApiResource, namespaced: bool) {
        let key = (resource.api_version.clone(), resource.kind.clone());
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        if started.contains_key(&key) {
            return;
        }
        // Metadata only: nothing of a Secret's data comes to the operator through this watch.
        let api: Api<PartialObjectMeta<DynamicObject>> = match (&self.namespace, namespaced) {
            (Some(ns), true) => Api::namespaced_with(self.client.clone(), ns, resource),
            _ => Api::all_with(self.client.clone(), resource),
        };
        let (group, kind) = (resource.group.clone(), resource.kind.clone());
        let readers = self.readers.clone();
        let triggers = self.triggers.clone();
        let what = format!("{}/{}", resource.api_version, resource.kind);
        tracing::debug!(kind = %what, "watching referenced objects of a kind");
        let events = watcher(api, watcher::Config::default())
            .default_backoff()
            .touched_objects();
        let task = tokio::spawn(crate::child_cache::follow(
            events,
            what,
            "cannot watch referenced objects: a change to one is seen only at the instance's next \
             pass (grant list and watch on the kind)",
            move |object: PartialObjectMeta<DynamicObject>| {
                let key = (
                    group.clone(),
                    kind.clone(),
                    if namespaced {
                        object.metadata.namespace.clone().unwrap_or_default()
                    } else {
                        String::new()
                    },
                    object.metadata.name.clone().unwrap_or_default(),
                );
                let woken: Vec<ObjectRef<A>> = readers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .by_object
                    .get(&key)
                    .map(|set| set.iter().cloned().collect())
                    .unwrap_or_default();
                for instance in woken {
                    if triggers.unbounded_send(instance).is_err() {
                        // The controller is gone.
                        return Flow::Stop;
                    }
                }
                Flow::Continue
            },
            || {},
        ));
        started.insert(key, AbortOnDrop(task));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ("".into(), "Secret".into(), "apps".into(), name.into())
    }

    #[test]
    fn readers_follow_what_each_instance_references_now() {
        let mut readers: Readers<&str> = Readers::new();
        readers.set(&"a", vec![key("creds"), key("shared")]);
        readers.set(&"b", vec![key("shared")]);
        assert_eq!(readers.by_object[&key("shared")].len(), 2);
        // a stops referencing `creds`: a change to it wakes nobody.
        readers.set(&"a", vec![key("shared")]);
        assert!(!readers.by_object.contains_key(&key("creds")));
        // Forgetting b leaves a as the only reader of `shared`.
        readers.set(&"b", vec![]);
        assert_eq!(readers.by_object[&key("shared")], HashSet::from(["a"]));
        assert!(!readers.by_instance.contains_key(&"b"));
    }
}
