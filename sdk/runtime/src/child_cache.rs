//! The watch caches of child objects: what the executor reads instead of one GET per object per
//! pass.
//!
//! Why: every pass used to read each node's live object from the API server, so a resync of
//! 10,000 Ready instances cost tens of thousands of GETs for nothing. The controller already
//! watches each child kind (to react to drift and readiness); [`ChildCache`] keeps what those
//! watches deliver in one store per kind and the executor reads from it. A GET remains only
//! where the cache cannot answer ([`cuebe_core::plan::read_source`]): the kind is not listed yet
//! or not watchable, the store is trimmed of a field a render reads, or the object is not in the
//! store (deleted, or existing without our labels: adoption and the UID checks need the truth).
//!
//! What a cached object keeps ([`Retained`]): `apiVersion`, `kind`, the metadata the executor
//! reads (name, namespace, uid, resourceVersion, generation, deletionTimestamp, the
//! `cuebe.dev/*` labels, the managers of `managedFields` without their field sets), the whole
//! `status`, the spec fields the built-in readiness reads ([`KEPT_FIELDS`]) and every export path
//! a render declares on the kind. Annotations, the rest of the spec, `data`/`binaryData`,
//! owner references are dropped in the watch itself, before the store: memory is part of the
//! operator's budget. A kind with a CEL readiness predicate is kept whole (CEL binds the whole
//! object); so is every kind when the operator replaces the readiness semantics
//! ([`ChildCache::keep_whole_objects`]). When a render asks more of a kind than its store keeps,
//! the kind is listed again with the wider set and read with GETs until that list is in.
//!
//! Our own writes: a Server-Side Apply answers with the object as written; until the watch
//! delivers that resourceVersion the cache answers with it ([`cuebe_core::plan::remember_own_write`]),
//! so the pass right after a write does not see the older object and write again.
//!
//! How a store keeps an object ([`CachedObject`]): the fields its key and the searches read
//! (name, namespace, resourceVersion, uid, the instance label) inline, the trimmed object as
//! compact JSON decoded on each read. Why: a trimmed Deployment held as a `DynamicObject` is
//! about 5 KB of small maps and strings, as JSON well under 1 KB, and the child stores were the
//! largest memory per instance (three to eight objects each); a read decodes in microseconds
//! and a pass reads each object once.
//!
//! Lifecycle: the controller starts the kinds of `WATCHES` with each run and a rendered kind at
//! its first render ([`ChildCache::watch`]), and stops them all when the run ends (an API change,
//! a lost lease). Each watch feeds the controller's trigger after its store took the event, so
//! the pass an event triggers finds that event in the store.
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use cuebe_core::graph::{Graph, ReadinessPredicate};
use cuebe_core::inventory::LabelledObject;
use cuebe_core::plan::{
    CacheView, OWN_WRITE_TTL, ReadSource, WatchDelivery, read_source, remember_own_write,
    settles_own_write,
};
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::{Api, ApiResource, DynamicObject, ObjectMeta};
use kube::runtime::reflector::{self, Lookup, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Map, Value};

use crate::executor::KIND_LABEL;
use crate::store_ready::store_ready;

/// Fields every cached object keeps besides `apiVersion`, `kind` and the metadata the executor
/// reads: what [`cuebe_core::readiness::DefaultReadiness`] judges by.
pub const KEPT_FIELDS: &[&str] = &[
    "status",
    "spec.replicas",
    "spec.updateStrategy",
    "spec.suspend",
    "spec.schedule",
    "spec.type",
];

/// Metadata every cached object keeps (besides the `cuebe.dev/*` labels and the managers of
/// `managedFields`).
const KEPT_METADATA: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.resourceVersion",
    "metadata.generation",
    "metadata.deletionTimestamp",
];

/// The labels a cached object keeps: the management labels (`cuebe.dev/instance`, `…/kind`,
/// `…/namespace`).
const KEPT_LABEL_PREFIX: &str = "cuebe.dev/";

/// What a cached object of a kind keeps beyond what every one keeps: export paths, or the whole
/// object.
///
/// ```
/// use cuebe::child_cache::Retained;
/// let kept = Retained::default().with_path("spec.clusterIP");
/// assert!(kept.keeps("status.loadBalancer.ingress") && kept.keeps("spec.clusterIP"));
/// assert!(!kept.keeps("spec.ports"));
/// assert!(Retained::whole().covers(&kept) && !kept.covers(&Retained::whole()));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retained {
    whole: bool,
    /// Dotted paths kept besides [`KEPT_FIELDS`].
    paths: BTreeSet<String>,
}

/// `path` is `prefix` or inside it (dotted, whole segments).
fn is_within(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.'))
}

impl Retained {
    /// Whole objects, untrimmed.
    pub fn whole() -> Self {
        Self {
            whole: true,
            paths: BTreeSet::new(),
        }
    }

    /// Also keeps the dotted `path` (an export's, `status.ackResourceMetadata.arn`). A path in
    /// the metadata beyond what is always kept (an annotation, a label) keeps whole objects.
    pub fn with_path(mut self, path: &str) -> Self {
        if self.keeps(path) {
            return self;
        }
        if is_within(path, "metadata") {
            return Self::whole();
        }
        self.paths.insert(path.to_string());
        self
    }

    /// Whether a cached object holds the dotted `path` (when the live object has it).
    pub fn keeps(&self, path: &str) -> bool {
        self.whole
            || path == "apiVersion"
            || path == "kind"
            || KEPT_FIELDS
                .iter()
                .chain(KEPT_METADATA)
                .any(|kept| is_within(path, kept))
            || self.paths.iter().any(|kept| is_within(path, kept))
    }

    /// Whether objects trimmed by `self` hold everything `other` keeps.
    pub fn covers(&self, other: &Retained) -> bool {
        self.whole || (!other.whole && other.paths.iter().all(|p| self.keeps(p)))
    }

    /// Keeps what `other` keeps too; returns whether that kept more.
    fn widen(&mut self, other: &Retained) -> bool {
        if self.covers(other) {
            return false;
        }
        if other.whole {
            *self = Self::whole();
        } else {
            for path in &other.paths {
                *self = std::mem::take(self).with_path(path);
            }
        }
        true
    }

    /// Drops from `object` everything this does not keep (in place, before the store takes it).
    pub fn trim(&self, object: &mut DynamicObject) {
        if self.whole {
            return;
        }
        let meta = std::mem::take(&mut object.metadata);
        let labels = meta.labels.map(|labels| {
            labels
                .into_iter()
                .filter(|(key, _)| key.starts_with(KEPT_LABEL_PREFIX))
                .collect::<BTreeMap<_, _>>()
        });
        // Only who manages it (adoption asks whether our field manager is one of them): the
        // field sets are most of an object's metadata.
        let managers = meta.managed_fields.map(|entries| {
            entries
                .into_iter()
                .map(|entry| ManagedFieldsEntry {
                    manager: entry.manager,
                    operation: entry.operation,
                    ..ManagedFieldsEntry::default()
                })
                .collect()
        });
        object.metadata = ObjectMeta {
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            resource_version: meta.resource_version,
            generation: meta.generation,
            deletion_timestamp: meta.deletion_timestamp,
            labels: labels.filter(|l| !l.is_empty()),
            managed_fields: managers,
            ..ObjectMeta::default()
        };
        let data = std::mem::take(&mut object.data);
        let mut kept = Value::Object(Map::new());
        for path in KEPT_FIELDS
            .iter()
            .copied()
            .chain(self.paths.iter().map(String::as_str))
        {
            copy_path(&data, &mut kept, path);
        }
        object.data = kept;
    }
}

/// Copies the value at the dotted `path` of `from` (if any) to the same place in `to`.
fn copy_path(from: &Value, to: &mut Value, path: &str) {
    let segments: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
    let Some(found) = segments.iter().try_fold(from, |value, key| value.get(key)) else {
        return;
    };
    let Some((last, parents)) = segments.split_last() else {
        return;
    };
    let mut cursor = to;
    for key in parents {
        let Some(object) = cursor.as_object_mut() else {
            return;
        };
        cursor = object
            .entry(*key)
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if let Some(object) = cursor.as_object_mut() {
        object.insert((*last).to_string(), found.clone());
    }
}

/// What the renders of `graph` read of each kind (`apiVersion`, `kind`) beyond what every
/// cached object keeps: whole objects for a kind with a CEL readiness predicate, and each
/// export's path on its node's kind.
pub fn needs_of(graph: &Graph) -> BTreeMap<(String, String), Retained> {
    let mut needs: BTreeMap<(String, String), Retained> = BTreeMap::new();
    for node in &graph.nodes {
        let Some(object) = &node.object else {
            continue;
        };
        let text = |field: &str| object.get(field).and_then(Value::as_str);
        let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) else {
            continue;
        };
        let need = needs
            .entry((api_version.to_string(), kind.to_string()))
            .or_default();
        if node
            .ready_when
            .iter()
            .any(|p| matches!(p, ReadinessPredicate::Cel { .. }))
        {
            *need = Retained::whole();
        }
        for export in graph.exports.iter().filter(|e| e.node == node.id) {
            *need = std::mem::take(need).with_path(&export.path);
        }
    }
    needs
}

/// A child object as its kind's store keeps it: what the store's key and the searches read
/// inline, the rest of the trimmed object as compact JSON (see the module's documentation).
///
/// ```
/// use cuebe::child_cache::CachedObject;
/// let object: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
///     "apiVersion": "v1", "kind": "Service",
///     "metadata": {"name": "web", "namespace": "apps", "resourceVersion": "7",
///                  "labels": {"cuebe.dev/instance": "web"}},
///     "spec": {"type": "ClusterIP"}
/// })).unwrap();
/// let cached = CachedObject::new(&object);
/// assert_eq!(cached.instance(), Some("web"));
/// assert_eq!(cached.object().map(|o| o.data), Some(object.data));
/// ```
#[derive(Debug, Clone)]
pub struct CachedObject {
    name: Box<str>,
    namespace: Option<Box<str>>,
    resource_version: Option<Box<str>>,
    uid: Option<Box<str>>,
    /// The `cuebe.dev/instance` label: which instance's children a sweep looks for.
    instance: Option<Box<str>>,
    /// The whole (trimmed) object, `serde_json::to_vec`.
    json: Box<[u8]>,
}

impl CachedObject {
    /// Keeps `object` (trimmed already: this keeps all of it).
    pub fn new(object: &DynamicObject) -> Self {
        let meta = &object.metadata;
        let boxed = |s: &Option<String>| s.as_deref().map(Box::from);
        let json = match serde_json::to_vec(object) {
            Ok(json) => json.into_boxed_slice(),
            // A `DynamicObject` always serializes (string keys only); were it ever not to, the
            // object reads as absent and is read with a GET.
            Err(error) => {
                tracing::warn!(%error, name = ?meta.name, "cannot keep a watched object in its store");
                Box::default()
            }
        };
        Self {
            name: meta.name.as_deref().unwrap_or_default().into(),
            namespace: boxed(&meta.namespace),
            resource_version: boxed(&meta.resource_version),
            uid: boxed(&meta.uid),
            instance: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(crate::executor::INSTANCE_LABEL))
                .map(|v| Box::from(v.as_str())),
            json,
        }
    }

    /// The object as it was kept; `None` if it cannot be read back (then it counts as absent).
    pub fn object(&self) -> Option<DynamicObject> {
        match serde_json::from_slice(&self.json) {
            Ok(object) => Some(object),
            Err(error) => {
                tracing::warn!(%error, name = %self.name, "a watched object's stored copy is unreadable");
                None
            }
        }
    }

    /// Its `cuebe.dev/instance` label.
    pub fn instance(&self) -> Option<&str> {
        self.instance.as_deref()
    }

    /// Its `metadata.resourceVersion`.
    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }
}

/// The store's keys carry the kind as one shared `Arc` (a `DynamicObject` key clones the kind's
/// five strings into every key).
impl Lookup for CachedObject {
    type DynamicType = Arc<ApiResource>;

    fn kind(dyntype: &Self::DynamicType) -> Cow<'_, str> {
        Cow::Borrowed(&dyntype.kind)
    }

    fn group(dyntype: &Self::DynamicType) -> Cow<'_, str> {
        Cow::Borrowed(&dyntype.group)
    }

    fn version(dyntype: &Self::DynamicType) -> Cow<'_, str> {
        Cow::Borrowed(&dyntype.version)
    }

    fn api_version(dyntype: &Self::DynamicType) -> Cow<'_, str> {
        Cow::Borrowed(&dyntype.api_version)
    }

    fn plural(dyntype: &Self::DynamicType) -> Cow<'_, str> {
        Cow::Borrowed(&dyntype.plural)
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        self.resource_version.as_deref().map(Cow::Borrowed)
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        self.uid.as_deref().map(Cow::Borrowed)
    }
}

/// A watch event as the store takes it.
fn cached_event(event: &watcher::Event<DynamicObject>) -> watcher::Event<CachedObject> {
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(CachedObject::new(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(CachedObject::new(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(CachedObject::new(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Which objects of one kind's store carry each instance's label: kept from the same watch
/// events as the store, so a sweep ([`ChildCache::labelled`]) finds an instance's objects
/// without scanning every object of the kind. Why: one scan per instance made an operator's
/// start quadratic in the fleet (every instance is swept once after a start): at 3,000
/// instances the scans were 15 % of the restart's CPU, holding the cache's lock meanwhile.
///
/// Keyed by a hash of (namespace, instance label) rather than the strings, to keep it small
/// (about 100 bytes per instance and kind): a reader checks each object's own fields in the
/// store, so a collision costs one lookup, never a wrong answer. A name stays listed under an
/// instance whose label the object later loses until the next list; the same check drops it.
#[derive(Debug, Default)]
struct InstanceIndex {
    names: HashMap<u64, Vec<Box<str>>>,
    /// What the watch lists again; it replaces `names` when the list is complete, at the same
    /// event as the store swaps in its own.
    relisting: HashMap<u64, Vec<Box<str>>>,
}

impl InstanceIndex {
    fn key(namespace: &str, instance: &str) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        BuildHasherDefault::<DefaultHasher>::default().hash_one((namespace, instance))
    }

    fn key_of(object: &CachedObject) -> Option<u64> {
        Some(Self::key(object.namespace.as_deref()?, object.instance()?))
    }

    fn insert(into: &mut HashMap<u64, Vec<Box<str>>>, object: &CachedObject) {
        let Some(key) = Self::key_of(object) else {
            return;
        };
        let names = into.entry(key).or_default();
        if !names.contains(&object.name) {
            names.push(object.name.clone());
        }
    }

    /// Takes one watch event, as the store does.
    fn apply(&mut self, event: &watcher::Event<CachedObject>) {
        match event {
            watcher::Event::Apply(object) => Self::insert(&mut self.names, object),
            watcher::Event::Delete(object) => {
                let Some(key) = Self::key_of(object) else {
                    return;
                };
                if let Some(names) = self.names.get_mut(&key) {
                    names.retain(|n| *n != object.name);
                    if names.is_empty() {
                        self.names.remove(&key);
                    }
                }
            }
            watcher::Event::Init => self.relisting = HashMap::new(),
            watcher::Event::InitApply(object) => Self::insert(&mut self.relisting, object),
            watcher::Event::InitDone => self.names = std::mem::take(&mut self.relisting),
        }
    }

    /// The names of the objects labelled with `instance` in `namespace` (and maybe a few
    /// others: see the type's documentation).
    fn names_of(&self, namespace: &str, instance: &str) -> Vec<Box<str>> {
        self.names
            .get(&Self::key(namespace, instance))
            .cloned()
            .unwrap_or_default()
    }
}

/// What a read needs of a cached object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Identity, labels and managers only (prune, teardown).
    Metadata,
    /// Everything the renders read of the kind (readiness, exports).
    Fields,
}

/// One child object, as the executor names it.
#[derive(Debug, Clone, Copy)]
pub struct ChildRef<'a> {
    /// `apiVersion`.
    pub api_version: &'a str,
    /// `kind`.
    pub kind: &'a str,
    /// Its namespace (ignored for a cluster-scoped kind).
    pub namespace: &'a str,
    /// `metadata.name`.
    pub name: &'a str,
}

/// Tells the controller that a watched child changed (it maps the object to its instance).
pub type Trigger = Arc<dyn Fn(&DynamicObject) + Send + Sync>;

/// `apiVersion`, `kind`.
type KindKey = (String, String);
/// `apiVersion`, `kind`, namespace ("" when cluster-scoped), name.
type ObjectKey = (String, String, String, String);

/// The stores of the child kinds the controller watches, and the answers of our own writes the
/// watches have not delivered yet. Cheap to clone (one shared state).
///
/// ```no_run
/// # async fn f(client: kube::Client, resource: kube::api::ApiResource) {
/// use cuebe::child_cache::ChildCache;
/// let cache = ChildCache::new(client.clone(), None, "WebService");
/// cache.watch(&resource, true, true);
/// let executor = cuebe::executor::SsaExecutor::new(client, "cuebe-webservice")
///     .with_child_cache(cache);
/// # }
/// ```
#[derive(Clone)]
pub struct ChildCache {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ChildCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildCache")
            .field("instance_kind", &self.shared.instance_kind)
            .field("namespace", &self.shared.namespace)
            .finish_non_exhaustive()
    }
}

struct Shared {
    client: kube::Client,
    /// The operator's namespace, when it watches one only.
    namespace: Option<String>,
    /// The `cuebe.dev/kind` label value the watches select.
    instance_kind: String,
    whole_objects: AtomicBool,
    /// More the watches select (a shard's label): the stores then hold only part of the
    /// labelled objects.
    narrowed_by: std::sync::OnceLock<String>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    kinds: HashMap<KindKey, KindCache>,
    own_writes: HashMap<ObjectKey, OwnWrite>,
    trigger: Option<Trigger>,
    next_id: u64,
}

#[derive(Default)]
struct KindCache {
    /// What the renders read of the kind (grows only).
    wanted: Retained,
    watch: Option<KindWatch>,
}

struct KindWatch {
    resource: Arc<ApiResource>,
    namespaced: bool,
    /// The store reads are answered from.
    active: Reflector,
    /// A store keeping more, listing; it replaces `active` once listed.
    widening: Option<Reflector>,
}

struct Reflector {
    id: u64,
    store: Store<CachedObject>,
    /// The store's objects by instance.
    by_instance: Arc<Mutex<InstanceIndex>>,
    kept: Retained,
    synced: Arc<AtomicBool>,
    /// When its watch started: a pass waits for its first list only so long after that.
    started: Instant,
    _task: WatchTask,
}

/// How long after a kind's watch starts a pass waits for the watch's first list rather than
/// reading that kind with GETs ([`ChildCache::wait_first_lists`]). A list of thousands of
/// objects takes a second or two; a kind that can never be listed (no permission) costs this
/// once, after a start.
pub const FIRST_LIST_WAIT: Duration = Duration::from_secs(10);

/// Our write's answer, standing in for the object until the watch delivers it.
struct OwnWrite {
    object: Arc<DynamicObject>,
    resource_version: String,
    at: Instant,
}

/// Aborts a spawned watch when dropped.
struct WatchTask(tokio::task::JoinHandle<()>);

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn object_key(kind: &KindKey, namespaced: bool, namespace: &str, name: &str) -> ObjectKey {
    (
        kind.0.clone(),
        kind.1.clone(),
        if namespaced {
            namespace.to_string()
        } else {
            String::new()
        },
        name.to_string(),
    )
}

impl KindWatch {
    fn object_ref(&self, namespace: &str, name: &str) -> ObjectRef<CachedObject> {
        let key = ObjectRef::new_with(name, self.resource.clone());
        if self.namespaced {
            key.within(namespace)
        } else {
            key
        }
    }
}

impl ChildCache {
    /// A cache whose watches select the children of instances of `instance_kind` (the
    /// `cuebe.dev/kind` label) in `namespace`, or in every namespace. Nothing is watched until
    /// [`ChildCache::watch`].
    pub fn new(client: kube::Client, namespace: Option<String>, instance_kind: &str) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                namespace,
                instance_kind: instance_kind.to_string(),
                whole_objects: AtomicBool::new(false),
                narrowed_by: std::sync::OnceLock::new(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Keeps whole objects, untrimmed, in watches started from now on: for readiness semantics
    /// of your own (they may read any field), at the cost of memory.
    pub fn keep_whole_objects(self, yes: bool) -> Self {
        self.shared.whole_objects.store(yes, Ordering::Relaxed);
        self
    }

    /// Narrows every watch to objects matching `selector` as well (a label selector, e.g. a
    /// shard's: see [`crate::ops::shard`]); `None` leaves them as they are. Set once, before
    /// the first watch. The stores then hold only part of an instance's labelled objects, so
    /// [`ChildCache::labelled`] leaves that question to the API server.
    pub fn within_selector(self, selector: Option<String>) -> Self {
        if let Some(selector) = selector {
            let _ = self.shared.narrowed_by.set(selector);
        }
        self
    }

    /// Sets what a change of a watched child calls (`None`: nothing).
    pub fn set_trigger(&self, trigger: Option<Trigger>) {
        lock(&self.shared.state).trigger = trigger;
    }

    /// Whether `apiVersion`/`kind` is watched.
    pub fn is_watched(&self, api_version: &str, kind: &str) -> bool {
        lock(&self.shared.state)
            .kinds
            .get(&(api_version.to_string(), kind.to_string()))
            .is_some_and(|k| k.watch.is_some())
    }

    /// Starts the watch and store of `resource` unless one runs; returns whether it started
    /// one. `declared`: the abstraction's `WATCHES` lists it (else it is a kind a render has:
    /// that is logged, so the list can be completed).
    pub fn watch(&self, resource: &ApiResource, namespaced: bool, declared: bool) -> bool {
        let key = (resource.api_version.clone(), resource.kind.clone());
        let mut state = lock(&self.shared.state);
        if state.kinds.get(&key).is_some_and(|k| k.watch.is_some()) {
            return false;
        }
        if !declared {
            tracing::info!(
                instance_kind = %self.shared.instance_kind,
                api_version = %resource.api_version,
                kind = %resource.kind,
                "watching a kind the module renders that `watches` does not list (add it to start \
                 the watch with the controller)"
            );
        }
        let kept = self.kept_for(&state, &key);
        let resource = Arc::new(resource.clone());
        let active = self.spawn(&mut state, &key, &resource, namespaced, kept, false);
        state.kinds.entry(key).or_default().watch = Some(KindWatch {
            resource,
            namespaced,
            active,
            widening: None,
        });
        true
    }

    /// Records what renders read of a kind (see [`needs_of`]); a watched kind whose store
    /// keeps less is listed again keeping it all (read with GETs until that list is in).
    pub fn require(&self, api_version: &str, kind: &str, need: &Retained) {
        let key = (api_version.to_string(), kind.to_string());
        let mut state = lock(&self.shared.state);
        let entry = state.kinds.entry(key.clone()).or_default();
        if !entry.wanted.widen(need) {
            return;
        }
        let Some(watch) = &entry.watch else {
            return;
        };
        let (resource, namespaced) = (watch.resource.clone(), watch.namespaced);
        let kept = self.kept_for(&state, &key);
        let covered = state
            .kinds
            .get(&key)
            .and_then(|k| k.watch.as_ref())
            .is_some_and(|w| {
                w.active.kept.covers(&kept)
                    || w.widening.as_ref().is_some_and(|r| r.kept.covers(&kept))
            });
        if covered {
            return;
        }
        tracing::info!(%api_version, %kind, "a render reads more of this kind than its cache keeps: listing it again");
        let widening = self.spawn(&mut state, &key, &resource, namespaced, kept, true);
        if let Some(watch) = state.kinds.get_mut(&key).and_then(|k| k.watch.as_mut()) {
            watch.widening = Some(widening);
        }
    }

    /// Stops every watch and forgets their stores and our writes (the next run starts them
    /// again). What renders read of each kind is kept.
    pub fn stop(&self) {
        let mut state = lock(&self.shared.state);
        for kind in state.kinds.values_mut() {
            kind.watch = None;
        }
        state.own_writes.clear();
        state.trigger = None;
    }

    fn kept_for(&self, state: &State, key: &KindKey) -> Retained {
        if self.shared.whole_objects.load(Ordering::Relaxed) {
            return Retained::whole();
        }
        state
            .kinds
            .get(key)
            .map(|k| k.wanted.clone())
            .unwrap_or_default()
    }

    fn spawn(
        &self,
        state: &mut State,
        key: &KindKey,
        resource: &Arc<ApiResource>,
        namespaced: bool,
        kept: Retained,
        widening: bool,
    ) -> Reflector {
        state.next_id += 1;
        let id = state.next_id;
        let client = self.shared.client.clone();
        let api: Api<DynamicObject> = match (&self.shared.namespace, namespaced) {
            (Some(ns), true) => Api::namespaced_with(client, ns, resource.as_ref()),
            _ => Api::all_with(client, resource.as_ref()),
        };
        let mut writer = reflector::store::Writer::<CachedObject>::new(resource.clone());
        let store = writer.as_reader();
        let by_instance = Arc::new(Mutex::new(InstanceIndex::default()));
        let index = by_instance.clone();
        let synced = Arc::new(AtomicBool::new(false));
        let mut selector = format!("{KIND_LABEL}={}", self.shared.instance_kind);
        if let Some(narrower) = self.shared.narrowed_by.get() {
            selector = format!("{selector},{narrower}");
        }
        let trim = kept.clone();
        let events = watcher(api, watcher::Config::default().labels(&selector))
            .default_backoff()
            .modify(move |object| trim.trim(object))
            // What `reflect` does, with the store keeping each object compactly; the handler
            // below still sees the event as delivered, after the store took it.
            .map_ok(move |event| {
                let cached = cached_event(&event);
                writer.apply_watcher_event(&cached);
                lock(&index).apply(&cached);
                event
            });
        let handler = EventHandler {
            shared: Arc::downgrade(&self.shared),
            key: key.clone(),
            namespaced,
            id,
            synced: synced.clone(),
            // A wider list of a kind already watched: its objects did not change, only what
            // the store keeps of them; the running watch reports changes meanwhile.
            quiet_listing: widening,
            listed_once: false,
        };
        let what = format!("{}/{}", resource.api_version, resource.kind);
        let lost = synced.clone();
        let mut handler = handler;
        let task = tokio::spawn(follow(
            events,
            what,
            "cannot watch a child kind: its objects are read with a GET each and changes to them \
             are seen only at the next pass (grant list and watch on it)",
            move |event| handler.handle(event),
            // Maybe stale: read from the API server until the watch delivers again (it resumes
            // from where it was, or lists again).
            move || lost.store(false, Ordering::Relaxed),
        ));
        Reflector {
            id,
            store,
            by_instance,
            kept,
            synced,
            started: Instant::now(),
            _task: WatchTask(task),
        }
    }

    /// Waits until the stores of the kinds watched now have their first list, each for at most
    /// what is left of [`FIRST_LIST_WAIT`] since its watch started. Right after a start every
    /// store is still listing: a pass that read meanwhile would GET each child the list brings a
    /// moment later (an operator restart over thousands of instances, all at once). Returns at
    /// once when everything is listed, or once the wait is over.
    pub async fn wait_first_lists(&self) {
        let listing: Vec<(Store<CachedObject>, Instant)> = {
            let state = lock(&self.shared.state);
            state
                .kinds
                .values()
                .filter_map(|k| k.watch.as_ref())
                .filter(|w| !w.active.synced.load(Ordering::Relaxed))
                .map(|w| (w.active.store.clone(), w.active.started + FIRST_LIST_WAIT))
                .collect()
        };
        for (store, until) in listing {
            // A store that lists again after a failure was ready before: this returns at once.
            let _ = tokio::time::timeout_at(until.into(), store_ready(&store)).await;
        }
    }

    /// Where to read `child` from, and the object when the cache answers
    /// ([`cuebe_core::plan::read_source`]).
    pub fn lookup(
        &self,
        child: ChildRef<'_>,
        need: Need,
    ) -> (ReadSource, Option<Arc<DynamicObject>>) {
        let key = (child.api_version.to_string(), child.kind.to_string());
        let mut state = lock(&self.shared.state);
        let Some(kind) = state.kinds.get(&key) else {
            return (ReadSource::Api, None);
        };
        let Some(watch) = &kind.watch else {
            return (ReadSource::Api, None);
        };
        let active = &watch.active;
        let keeps_needed_fields = match need {
            Need::Metadata => true,
            Need::Fields => active.kept.covers(&kind.wanted),
        };
        // Decoded below, only if it is the answer, and after the lock: every pass reads
        // through this one lock.
        let kept = active
            .store
            .get(&watch.object_ref(child.namespace, child.name));
        let synced = active.synced.load(Ordering::Relaxed);
        let object = object_key(&key, watch.namespaced, child.namespace, child.name);
        let expired = state
            .own_writes
            .get(&object)
            .is_some_and(|w| w.at.elapsed() >= OWN_WRITE_TTL);
        if expired {
            state.own_writes.remove(&object);
        }
        let own = state.own_writes.get(&object).map(|w| w.object.clone());
        let view = CacheView {
            synced,
            keeps_needed_fields,
            own_write_pending: own.is_some(),
            in_store: kept.is_some(),
        };
        let source = read_source(view);
        drop(state);
        match source {
            ReadSource::OwnWrite => (ReadSource::OwnWrite, own),
            // A stored copy that cannot be read back counts as absent: read with a GET.
            ReadSource::Cache => match kept.and_then(|k| k.object()) {
                Some(object) => (ReadSource::Cache, Some(Arc::new(object))),
                None => (ReadSource::Api, None),
            },
            ReadSource::Api => (ReadSource::Api, None),
        }
    }

    /// The resourceVersion the store shows for `child` (`Some(None)`: absent), or `None` when
    /// the kind's store is not listed: what [`ChildCache::wrote`] compares with after a write.
    pub fn version_of(&self, child: ChildRef<'_>) -> Option<Option<String>> {
        self.stored_version(child, false)
    }

    /// The resourceVersion the watch delivered last for `child` (`Some(None)`: absent), or
    /// `None` while the kind's store is not listed or while the answer of our own write of it
    /// still waits for the watch: what a second look at a waiting node compares with
    /// ([`cuebe_core::plan::judge_again`]). Until the watch passes our write the store shows an
    /// older object, which is no news.
    pub fn delivered_version(&self, child: ChildRef<'_>) -> Option<Option<String>> {
        self.stored_version(child, true)
    }

    /// What the listed store shows for `child`, under one look at the lock; `None` when it is
    /// not listed, or (`unless_own_write`) while our own write's answer is pending.
    fn stored_version(
        &self,
        child: ChildRef<'_>,
        unless_own_write: bool,
    ) -> Option<Option<String>> {
        let key = (child.api_version.to_string(), child.kind.to_string());
        let state = lock(&self.shared.state);
        let watch = state.kinds.get(&key)?.watch.as_ref()?;
        if !watch.active.synced.load(Ordering::Relaxed) {
            return None;
        }
        if unless_own_write {
            let object = object_key(&key, watch.namespaced, child.namespace, child.name);
            if state.own_writes.contains_key(&object) {
                return None;
            }
        }
        Some(
            watch
                .active
                .store
                .get(&watch.object_ref(child.namespace, child.name))
                .and_then(|o| o.resource_version().map(String::from)),
        )
    }

    /// Our write of `child` answered `applied`; `before` is [`ChildCache::version_of`] just
    /// before the write. Remembers the answer until the watch delivers it (see
    /// [`cuebe_core::plan::remember_own_write`]).
    pub fn wrote(
        &self,
        child: ChildRef<'_>,
        before: Option<Option<String>>,
        applied: &DynamicObject,
    ) {
        let (Some(before), Some(written)) = (before, applied.metadata.resource_version.as_deref())
        else {
            return;
        };
        let key = (child.api_version.to_string(), child.kind.to_string());
        let mut state = lock(&self.shared.state);
        let Some(watch) = state.kinds.get(&key).and_then(|k| k.watch.as_ref()) else {
            return;
        };
        let now = watch
            .active
            .store
            .get(&watch.object_ref(child.namespace, child.name))
            .and_then(|o| o.resource_version().map(String::from));
        if !remember_own_write(before.as_deref(), now.as_deref(), written) {
            return;
        }
        let mut object = applied.clone();
        watch.active.kept.trim(&mut object);
        let object_key = object_key(&key, watch.namespaced, child.namespace, child.name);
        state.own_writes.insert(
            object_key,
            OwnWrite {
                object: Arc::new(object),
                resource_version: written.to_string(),
                at: Instant::now(),
            },
        );
    }

    /// The objects of `apiVersion`/`kind` in `namespace` labelled with instance `name`, from
    /// the store; `None` when the kind's store is not listed, or holds only some of them
    /// ([`ChildCache::within_selector`]): ask the API server.
    pub fn labelled(
        &self,
        api_version: &str,
        kind: &str,
        name: &str,
        namespace: &str,
        field_manager: &str,
    ) -> Option<Vec<LabelledObject>> {
        // An instance just moved to this shard still has children labelled for the old one.
        if self.shared.narrowed_by.get().is_some() {
            return None;
        }
        let key = (api_version.to_string(), kind.to_string());
        let state = lock(&self.shared.state);
        let watch = state.kinds.get(&key)?.watch.as_ref()?;
        if !watch.active.synced.load(Ordering::Relaxed) {
            return None;
        }
        let names = lock(&watch.active.by_instance).names_of(namespace, name);
        let found: Vec<Arc<CachedObject>> = names
            .iter()
            .filter_map(|n| watch.active.store.get(&watch.object_ref(namespace, n)))
            .filter(|o| o.namespace.as_deref() == Some(namespace) && o.instance() == Some(name))
            .collect();
        drop(state);
        // Read back whole or not at all: a sweep that missed an object would leave it behind.
        let objects: Option<Vec<DynamicObject>> = found.iter().map(|o| o.object()).collect();
        Some(
            objects?
                .into_iter()
                .map(|o| LabelledObject {
                    api_version: api_version.to_string(),
                    kind: kind.to_string(),
                    namespace: o.metadata.namespace.clone().unwrap_or_default(),
                    name: o.metadata.name.clone().unwrap_or_default(),
                    uid: o.metadata.uid.clone().unwrap_or_default(),
                    managed_by_us: o
                        .metadata
                        .managed_fields
                        .iter()
                        .flatten()
                        .any(|f| f.manager.as_deref() == Some(field_manager)),
                })
                .collect(),
        )
    }

    /// How many objects the stores hold (all kinds), for tests and metrics.
    pub fn len(&self) -> usize {
        lock(&self.shared.state)
            .kinds
            .values()
            .filter_map(|k| k.watch.as_ref())
            .map(|w| w.active.store.len())
            .sum()
    }

    /// Whether the stores hold no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Handles the events of one kind's watch after its store took them.
struct EventHandler {
    shared: Weak<Shared>,
    key: KindKey,
    namespaced: bool,
    id: u64,
    synced: Arc<AtomicBool>,
    quiet_listing: bool,
    /// The first list is in (before it, the store is empty, not current).
    listed_once: bool,
}

impl EventHandler {
    fn handle(&mut self, event: watcher::Event<DynamicObject>) -> Flow {
        let Some(shared) = self.shared.upgrade() else {
            return Flow::Stop;
        };
        if self.listed_once {
            // Delivering again after a failure: the watch resumed where it was.
            self.synced.store(true, Ordering::Relaxed);
        }
        let touched = match &event {
            watcher::Event::Apply(object) => {
                self.delivered(&shared, object, false);
                Some(object)
            }
            watcher::Event::Delete(object) => {
                self.delivered(&shared, object, true);
                Some(object)
            }
            watcher::Event::InitApply(object) => (!self.quiet_listing).then_some(object),
            watcher::Event::Init => None,
            watcher::Event::InitDone => {
                self.listed(&shared);
                None
            }
        };
        if let Some(object) = touched {
            let trigger = lock(&shared.state).trigger.clone();
            if let Some(trigger) = trigger {
                trigger(object);
            }
        }
        Flow::Continue
    }

    fn delivered(&self, shared: &Shared, object: &DynamicObject, deleted: bool) {
        let key = object_key(
            &self.key,
            self.namespaced,
            object.metadata.namespace.as_deref().unwrap_or_default(),
            object.metadata.name.as_deref().unwrap_or_default(),
        );
        let mut state = lock(&shared.state);
        let settled = state.own_writes.get(&key).is_some_and(|w| {
            let delivered = if deleted {
                WatchDelivery::Deleted
            } else {
                WatchDelivery::Applied(
                    object
                        .metadata
                        .resource_version
                        .as_deref()
                        .unwrap_or_default(),
                )
            };
            settles_own_write(&w.resource_version, delivered)
        });
        if settled {
            state.own_writes.remove(&key);
        }
    }

    /// A list is in: the store is what the server has; a wider store replaces the one it widens.
    fn listed(&mut self, shared: &Shared) {
        self.synced.store(true, Ordering::Relaxed);
        self.listed_once = true;
        self.quiet_listing = false;
        let mut state = lock(&shared.state);
        let (api_version, kind) = &self.key;
        state.own_writes.retain(|(v, k, _, _), write| {
            !(v == api_version
                && k == kind
                && settles_own_write(&write.resource_version, WatchDelivery::Relisted))
        });
        let id = self.id;
        if let Some(watch) = state
            .kinds
            .get_mut(&self.key)
            .and_then(|k| k.watch.as_mut())
            && watch.widening.as_ref().is_some_and(|w| w.id == id)
            && let Some(wider) = watch.widening.take()
        {
            // Drops (and so stops) the narrower watch.
            watch.active = wider;
        }
    }
}

/// Whether a watch goes on.
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// Runs a watch stream (with its backoff already applied) until it ends or `on_item` says stop
/// (the controller it feeds is gone): warns once per outage — the first error after a success —
/// with `outage` and the error, and calls `on_error` on every error.
pub(crate) async fn follow<S, T, E>(
    events: S,
    what: String,
    outage: &'static str,
    mut on_item: impl FnMut(T) -> Flow,
    mut on_error: impl FnMut(),
) where
    S: Stream<Item = Result<T, E>>,
    E: Display,
{
    let mut events = std::pin::pin!(events);
    let mut warned = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(item) => {
                warned = false;
                if let Flow::Stop = on_item(item) {
                    return;
                }
            }
            Err(error) => {
                on_error();
                if warned {
                    tracing::debug!(kind = %what, %error, "watch failed again");
                } else {
                    warned = true;
                    tracing::warn!(kind = %what, %error, "{outage}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> DynamicObject {
        serde_json::from_value(value).unwrap_or_else(|e| panic!("not an object: {e}"))
    }

    fn labelled(namespace: Option<&str>, name: &str, instance: Option<&str>) -> CachedObject {
        let mut labels = serde_json::Map::new();
        if let Some(instance) = instance {
            labels.insert(crate::executor::INSTANCE_LABEL.into(), instance.into());
        }
        let mut metadata = json!({"name": name, "labels": labels});
        if let Some(namespace) = namespace {
            metadata["namespace"] = namespace.into();
        }
        CachedObject::new(&object(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": metadata}),
        ))
    }

    fn names(index: &InstanceIndex, namespace: &str, instance: &str) -> Vec<String> {
        let mut names: Vec<String> = index
            .names_of(namespace, instance)
            .iter()
            .map(|n| n.to_string())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_instance_index_follows_the_watch_events_as_the_store_does() {
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        let web = |name: &str| labelled(Some("apps"), name, Some("web"));
        let mut index = InstanceIndex::default();
        for event in [
            Apply(web("web")),
            Apply(web("web-sa")),
            Apply(web("web")),
            Apply(labelled(Some("apps"), "api", Some("api"))),
            Apply(labelled(Some("other"), "web", Some("web"))),
            Apply(labelled(Some("apps"), "stray", None)),
            Apply(labelled(None, "cluster-wide", Some("web"))),
        ] {
            index.apply(&event);
        }
        // Each instance's own objects, once each; the same instance name in another namespace,
        // an object without the label and a cluster-scoped one are not among them.
        assert_eq!(names(&index, "apps", "web"), ["web", "web-sa"]);
        assert_eq!(names(&index, "apps", "api"), ["api"]);
        assert_eq!(names(&index, "other", "web"), ["web"]);
        assert!(names(&index, "apps", "nobody").is_empty());

        index.apply(&Delete(web("web-sa")));
        assert_eq!(names(&index, "apps", "web"), ["web"]);
        index.apply(&Delete(labelled(Some("apps"), "api", Some("api"))));
        assert!(names(&index, "apps", "api").is_empty());

        // A list again: the old answers stand until it is complete, then only what it listed.
        index.apply(&Init);
        index.apply(&InitApply(web("web-pdb")));
        assert_eq!(names(&index, "apps", "web"), ["web"]);
        index.apply(&InitApply(web("web")));
        index.apply(&InitDone);
        assert_eq!(names(&index, "apps", "web"), ["web", "web-pdb"]);
        assert!(names(&index, "other", "web").is_empty());
    }

    #[test]
    fn trimming_keeps_what_the_executor_reads_and_drops_the_rest() {
        let whole_deployment = object(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "apps", "uid": "u-1", "resourceVersion": "42",
                "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"cuebe.dev/instance": "web", "cuebe.dev/kind": "WebService",
                           "app.kubernetes.io/name": "web"},
                "annotations": {"deployment.kubernetes.io/revision": "3",
                                "kubectl.kubernetes.io/last-applied-configuration": "{…}"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "o"}],
                "finalizers": ["example.com/keep"],
                "managedFields": [
                    {"manager": "cuebe-webservice", "operation": "Apply", "apiVersion": "apps/v1",
                     "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
                    {"manager": "kube-controller-manager", "operation": "Update",
                     "subresource": "status", "fieldsV1": {"f:status": {}}}
                ]
            },
            "spec": {
                "replicas": 2,
                "strategy": {"type": "RollingUpdate"},
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "web", "image": "web:1",
                                                      "env": [{"name": "A", "value": "b"}]}]}}
            },
            "status": {"observedGeneration": 3, "replicas": 2, "availableReplicas": 2,
                       "updatedReplicas": 2,
                       "conditions": [{"type": "Available", "status": "True"}]}
        }));
        let mut deployment = whole_deployment.clone();
        Retained::default().trim(&mut deployment);
        let kept = serde_json::to_value(&deployment).unwrap();
        assert_eq!(
            kept,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {
                    "name": "web", "namespace": "apps", "uid": "u-1", "resourceVersion": "42",
                    "generation": 3,
                    "labels": {"cuebe.dev/instance": "web", "cuebe.dev/kind": "WebService"},
                    "managedFields": [
                        {"manager": "cuebe-webservice", "operation": "Apply"},
                        {"manager": "kube-controller-manager", "operation": "Update"}
                    ]
                },
                "spec": {"replicas": 2},
                "status": {"observedGeneration": 3, "replicas": 2, "availableReplicas": 2,
                           "updatedReplicas": 2,
                           "conditions": [{"type": "Available", "status": "True"}]}
            })
        );
        // The built-in readiness judges the trimmed object as it judges the whole one.
        let predicates = cuebe_core::readiness::CompiledPredicate::compile_all(&[
            ReadinessPredicate::DeploymentAvailable { timeout: None },
        ])
        .unwrap();
        use cuebe_core::readiness::Readiness;
        let judge = |live: &Value| {
            cuebe_core::readiness::DefaultReadiness
                .evaluate(&predicates, live)
                .unwrap()
        };
        let verdict = judge(&kept);
        assert!(verdict.ready, "{verdict:?}");
        assert_eq!(
            verdict,
            judge(&serde_json::to_value(&whole_deployment).unwrap())
        );
        // Each kept byte counts at 10,000 instances: what is dropped here is most of it.
        let size = |v: &Value| serde_json::to_vec(v).unwrap().len();
        assert!(
            size(&kept) * 2 < size(&serde_json::to_value(&whole_deployment).unwrap()),
            "trimmed {} of {} bytes",
            size(&kept),
            size(&serde_json::to_value(&whole_deployment).unwrap())
        );

        // A Secret keeps nothing of its data.
        let mut secret = object(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "creds", "namespace": "apps", "resourceVersion": "7",
                         "labels": {"cuebe.dev/kind": "WebService"}},
            "type": "Opaque",
            "data": {"password": "aHVudGVyMg=="},
            "stringData": {"token": "t"}
        }));
        Retained::default().trim(&mut secret);
        assert_eq!(
            serde_json::to_value(&secret).unwrap(),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "creds", "namespace": "apps", "resourceVersion": "7",
                                "labels": {"cuebe.dev/kind": "WebService"}}})
        );

        // An export path is kept; a whole store keeps everything.
        let mut service = object(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "annotations": {"a": "b"}},
            "spec": {"type": "ClusterIP", "clusterIP": "10.0.0.7", "ports": [{"port": 80}]}
        }));
        let whole = service.clone();
        let mut untouched = whole.clone();
        Retained::whole().trim(&mut untouched);
        assert_eq!(
            serde_json::to_value(&untouched).unwrap(),
            serde_json::to_value(&whole).unwrap()
        );
        Retained::default()
            .with_path("spec.clusterIP")
            .trim(&mut service);
        assert_eq!(
            serde_json::to_value(&service).unwrap(),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                   "spec": {"type": "ClusterIP", "clusterIP": "10.0.0.7"}})
        );
    }

    #[test]
    fn what_renders_read_decides_what_a_store_keeps() {
        let graph: Graph = serde_json::from_value(json!({
            "graphVersion": "cuebe.dev/v1alpha1",
            "metadata": {"platformRefResolved": "sha256:0", "renderHash": "sha256:0"},
            "nodes": [
                {"id": "sa", "object": {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web"}}},
                {"id": "svc", "object": {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}},
                {"id": "queue", "readyWhen": [{"type": "Cel", "expression": "self.spec.ready == true"}],
                 "object": {"apiVersion": "example.com/v1", "kind": "Queue", "metadata": {"name": "q"}}},
                {"id": "role", "object": {"apiVersion": "iam.services.k8s.aws/v1alpha1", "kind": "Role", "metadata": {"name": "r"}}}
            ],
            "exports": [
                {"name": "ip", "node": "svc", "path": "spec.clusterIP"},
                {"name": "arn", "node": "role", "path": "status.ackResourceMetadata.arn"}
            ]
        }))
        .unwrap();
        let needs = needs_of(&graph);
        let need = |v: &str, k: &str| needs[&(v.to_string(), k.to_string())].clone();
        assert_eq!(need("v1", "ServiceAccount"), Retained::default());
        assert_eq!(
            need("v1", "Service"),
            Retained::default().with_path("spec.clusterIP")
        );
        assert_eq!(need("example.com/v1", "Queue"), Retained::whole());
        // Under status: kept anyway.
        assert_eq!(
            need("iam.services.k8s.aws/v1alpha1", "Role"),
            Retained::default()
        );
        // Widening: a store keeping less than wanted is replaced; one keeping it all is not.
        let mut kept = Retained::default();
        assert!(!kept.widen(&Retained::default()));
        assert!(kept.widen(&need("v1", "Service")));
        assert!(!kept.widen(&need("v1", "Service")));
        assert!(kept.widen(&Retained::whole()));
        assert_eq!(kept, Retained::whole());
        // A metadata path beyond what is always kept (an annotation) keeps whole objects.
        assert_eq!(
            Retained::default().with_path("metadata.annotations.example"),
            Retained::whole()
        );
        assert!(Retained::default().keeps("metadata.uid"));
    }
}
