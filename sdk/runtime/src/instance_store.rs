//! What the controller keeps of every instance between passes: the instance store (kube's
//! reflector) without what no pass reads, and each instance's status kept apart, compactly.
//!
//! Why apart: a status held as [`AbstractionStatus`] is several kilobytes of small strings,
//! vectors and a map per instance (conditions, per-node states, the inventory, revisions), and
//! the store holds every instance for the life of the process. As JSON it is a third of that;
//! a pass decodes it once. At 10,000 instances that is the difference between fitting the
//! memory budget and not.
//!
//! The instance in the store keeps no status ([`Abstraction::take_abstraction_status`]); read an
//! instance's status with [`InstanceStatuses::status_of`], never from the stored object.
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use kube::runtime::watcher;

use crate::abstraction::Abstraction;
use crate::status::AbstractionStatus;

/// The statuses of the instances the instance watch delivered, by UID, as compact JSON.
///
/// ```
/// use cuebe::instance_store::InstanceStatuses;
/// use cuebe::status::AbstractionStatus;
/// let statuses = InstanceStatuses::default();
/// let status = AbstractionStatus { ready_nodes: "4/4".into(), ..Default::default() };
/// statuses.keep("uid-1", Some(&status));
/// assert_eq!(statuses.get("uid-1"), Some(status));
/// statuses.keep("uid-1", None);
/// assert_eq!(statuses.get("uid-1"), None);
/// ```
#[derive(Debug, Default)]
pub struct InstanceStatuses {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    by_uid: HashMap<String, Box<[u8]>>,
    /// UIDs a relist delivered so far (between `Init` and `InitDone`): what it did not deliver
    /// was deleted meanwhile and is forgotten when it ends.
    relisted: Option<HashSet<String>>,
}

impl InstanceStatuses {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `status` as the status of instance `uid` (`None`: it has none).
    pub fn keep(&self, uid: &str, status: Option<&AbstractionStatus>) {
        let compact = status.and_then(|s| match serde_json::to_vec(s) {
            Ok(json) => Some(json.into_boxed_slice()),
            // Cannot happen (plain data); were it to, the pass starts from an empty status and
            // writes the status anew, as for a new instance.
            Err(error) => {
                tracing::warn!(%error, uid, "cannot keep an instance's status");
                None
            }
        });
        let mut state = self.state();
        match compact {
            Some(json) => state.by_uid.insert(uid.to_string(), json),
            None => state.by_uid.remove(uid),
        };
    }

    /// The status kept for instance `uid`.
    pub fn get(&self, uid: &str) -> Option<AbstractionStatus> {
        let json = self.state().by_uid.get(uid).cloned()?;
        match serde_json::from_slice(&json) {
            Ok(status) => Some(status),
            Err(error) => {
                tracing::warn!(%error, uid, "an instance's kept status is unreadable");
                None
            }
        }
    }

    /// The status of `object`: the one kept for it, else the object's own (an instance that
    /// did not come through the instance watch).
    pub fn status_of<A: Abstraction>(&self, object: &A) -> Option<AbstractionStatus> {
        object
            .meta()
            .uid
            .as_deref()
            .and_then(|uid| self.get(uid))
            .or_else(|| object.abstraction_status().cloned())
    }

    /// How many statuses are kept.
    pub fn len(&self) -> usize {
        self.state().by_uid.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every status (a new instance watch lists them again).
    pub fn clear(&self) {
        let mut state = self.state();
        state.by_uid.clear();
        state.relisted = None;
    }

    /// Takes the statuses out of the instances of `event` (before the store takes them) and
    /// keeps them here; a deleted instance's status goes, and so does that of every instance a
    /// relist no longer delivers. Also drops what no pass reads (managedFields, kubectl's
    /// last-applied annotation).
    pub fn take_from<A: Abstraction>(&self, event: &mut watcher::Event<A>) {
        match event {
            watcher::Event::Apply(object) => {
                self.take(object, false);
            }
            watcher::Event::InitApply(object) => {
                self.take(object, true);
            }
            watcher::Event::Delete(object) => {
                trim_instance(object);
                let _ = object.take_abstraction_status();
                if let Some(uid) = &object.meta().uid {
                    self.state().by_uid.remove(uid);
                }
            }
            watcher::Event::Init => self.state().relisted = Some(HashSet::new()),
            watcher::Event::InitDone => {
                let mut state = self.state();
                if let Some(listed) = state.relisted.take() {
                    state.by_uid.retain(|uid, _| listed.contains(uid));
                }
            }
        }
    }

    fn take<A: Abstraction>(&self, object: &mut A, listing: bool) {
        trim_instance(object);
        let status = object.take_abstraction_status();
        let Some(uid) = object.meta().uid.clone() else {
            return;
        };
        // What does not implement taking (a hand-written `Abstraction`) keeps its status in
        // the object, where `status_of` finds it.
        if status.is_some() || object.abstraction_status().is_none() {
            self.keep(&uid, status.as_ref());
        }
        if listing && let Some(listed) = self.state().relisted.as_mut() {
            listed.insert(uid);
        }
    }
}

/// What the instance store drops of an instance besides its status: fields no pass reads, which
/// would otherwise stay in memory for every instance (managedFields alone is about a third of a
/// WebService with its status; `kubectl apply` without `--server-side` adds a whole copy in an
/// annotation).
pub(crate) fn trim_instance<A: Abstraction>(object: &mut A) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}
