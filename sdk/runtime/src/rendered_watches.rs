//! Watches of the child kinds the module renders, started the first time a render has one that
//! [`Abstraction::WATCHES`] does not list.
//!
//! Why: drift correction and readiness are driven by the child watches. A kind missing from
//! `WATCHES` (forgotten, or a new kind a module version starts rendering) used to be silently
//! unwatched: a hand-deleted object was not recreated and readiness changes went unseen until
//! the next resync. `WATCHES` is now what is watched from the start; everything else the module
//! renders is watched from its first render on, the same way (label-filtered by
//! `cuebe.dev/kind`), feeding the controller through `reconcile_on`.
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};

use super::{AbortOnDrop, owner_of};
use crate::abstraction::Abstraction;

/// The watches started for rendered kinds during one run of the controller (dropped, and so
/// stopped, when the controller restarts).
pub(super) struct RenderedKindWatches<A: Abstraction> {
    client: kube::Client,
    namespace: Option<String>,
    /// The instance kind (`cuebe.dev/kind` label value).
    kind: String,
    /// `apiVersion/kind` watched since the start (the served entries of `WATCHES`).
    declared: Vec<(String, String)>,
    started: Mutex<HashMap<(String, String), AbortOnDrop<()>>>,
    triggers: UnboundedSender<ObjectRef<A>>,
}

impl<A: Abstraction> RenderedKindWatches<A> {
    pub(super) fn new(
        client: kube::Client,
        namespace: Option<String>,
        kind: String,
        declared: Vec<(String, String)>,
        triggers: UnboundedSender<ObjectRef<A>>,
    ) -> Self {
        Self {
            client,
            namespace,
            kind,
            declared,
            started: Mutex::new(HashMap::new()),
            triggers,
        }
    }

    /// Whether `(apiVersion, kind)` is watched (declared, or started for a render).
    pub(super) fn is_watched(&self, api_version: &str, kind: &str) -> bool {
        let key = (api_version.to_string(), kind.to_string());
        self.declared.contains(&key)
            || self
                .started
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(&key)
    }

    /// Starts a watch of `resource` unless one runs. Returns whether it started one.
    pub(super) fn ensure(&self, resource: &ApiResource) -> bool {
        let key = (resource.api_version.clone(), resource.kind.clone());
        if self.declared.contains(&key) {
            return false;
        }
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        if started.contains_key(&key) {
            return false;
        }
        tracing::info!(
            instance_kind = %self.kind,
            api_version = %resource.api_version,
            kind = %resource.kind,
            "watching a kind the module renders that `watches` does not list (add it to start \
             the watch with the controller)"
        );
        let api: Api<DynamicObject> = match &self.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, resource),
            None => Api::all_with(self.client.clone(), resource),
        };
        let selector = format!("{}={}", crate::executor::KIND_LABEL, self.kind);
        let instance_kind = self.kind.clone();
        let triggers = self.triggers.clone();
        let what = format!("{}/{}", resource.api_version, resource.kind);
        let task = tokio::spawn(async move {
            let mut warned = false;
            let mut events = watcher(api, watcher::Config::default().labels(&selector))
                .default_backoff()
                .touched_objects()
                .boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(object) => {
                        warned = false;
                        if let Some(owner) = owner_of::<A>(&object, &instance_kind)
                            && triggers.unbounded_send(owner).is_err()
                        {
                            // The controller is gone.
                            return;
                        }
                    }
                    Err(error) if !warned => {
                        warned = true;
                        tracing::warn!(kind = %what, %error, "cannot watch a rendered kind: changes to its objects are seen only at the next pass (grant list and watch on it)");
                    }
                    Err(error) => {
                        tracing::debug!(kind = %what, %error, "watch of a rendered kind failed again")
                    }
                }
            }
        });
        started.insert(key, AbortOnDrop(task));
        true
    }
}
