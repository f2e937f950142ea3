//! The executor: applies a [`Graph`] to the cluster in dependency order and reports node state.
//!
//! Owns: Server-Side Apply under the operator's field manager, readiness gating, the inventory,
//! pruning and deletion from the inventory. It never evaluates CUE.
//!
//! Workflow of [`Executor::execute`] (one reconcile pass):
//! 1. nodes pending on an export are `Pending` and never applied;
//! 2. the frontier — nodes whose dependencies are all Ready — is applied concurrently; each
//!    applied object is judged by its `readyWhen` predicates;
//! 3. while a pass makes nodes Ready, the next frontier is applied in the same pass (a chain of
//!    quickly-ready nodes does not wait for a requeue per wave);
//! 4. only when every node rendered, applied and none failed, objects whose node left the graph
//!    are pruned (deleted with a UID precondition, or orphaned), in reverse apply order.
//!
//! Safety rules:
//! - never prunes while a node is pending, blocked or failed;
//! - nothing to do, nothing written: an object whose rendered hash matches the inventory and
//!   whose spec generation (or, without one, `resourceVersion`) is the one left by the last apply
//!   is not applied again — its controller's status updates do not cause writes;
//! - a conflict under `conflictPolicy: Fail` overwrites nothing; the node is Blocked and its
//!   status names the other manager and the fields;
//! - deletion and pruning use the stored inventory only, so a module that no longer renders can
//!   never block cleanup.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
    Preconditions,
};
use kube::discovery::{self, Scope};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::compiler::canonical_json;
use crate::graph::{ApplyMode, ConflictPolicy, DeletionPolicy, Graph, Node};
pub use crate::lifecycle::Instance;
use crate::lifecycle::{AdoptDecision, AdoptRequest, Adopter, ExplicitAdopter};
use crate::readiness::{DefaultReadiness, Readiness};
use crate::status::{AbstractionStatus, InventoryEntry, InventoryMode, NodePhase, NodeStatus};

/// Label naming the instance that manages an object.
pub const INSTANCE_LABEL: &str = "cuebe.dev/instance";
/// Label naming the instance's kind.
pub const KIND_LABEL: &str = "cuebe.dev/kind";

/// Turns a stored RFC 3339 timestamp into an age (see [`age_of`]); tests pass a fake clock.
pub type ElapsedSince = dyn Fn(&str) -> Option<Duration> + Sync;

/// What one pass produced.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Node states by id.
    pub nodes: BTreeMap<String, NodeStatus>,
    /// The inventory after this pass.
    pub inventory: Vec<InventoryEntry>,
    /// Live objects of the nodes applied or observed in this pass, by node id.
    pub live: BTreeMap<String, Value>,
    /// Every node is Ready.
    pub ready: bool,
    /// A node failed terminally (its message).
    pub stalled: Option<String>,
    /// Writes made (applies, deletes).
    pub writes: usize,
    /// What the pass did to objects beyond applying them (the controller makes each an event).
    pub changes: Vec<Change>,
}

/// An object taken over, deleted or let go by a pass: worth telling the instance's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The node the object belongs (or belonged) to.
    pub node_id: String,
    /// The object's kind.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// What happened.
    pub action: ChangeAction,
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeAction {
    /// An existing object was taken over (the instance listed it, or its node is `AdoptOnly`).
    Adopted,
    /// Its node left the graph and the object was deleted.
    Pruned,
    /// Its node left the graph with `deletionPolicy: Orphan`: the object was left in place,
    /// without the management labels.
    Released,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            node_id,
            kind,
            name,
            action,
        } = self;
        match action {
            ChangeAction::Adopted => write!(f, "adopted {kind} {name} as node {node_id}"),
            ChangeAction::Pruned => {
                write!(f, "deleted {kind} {name}: node {node_id} left the graph")
            }
            ChangeAction::Released => write!(
                f,
                "released {kind} {name}: node {node_id} left the graph and its deletionPolicy is Orphan"
            ),
        }
    }
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The API server does not serve the object's kind.
    #[error("{api_version} {kind} is not served by this cluster: {source}")]
    UnknownKind {
        /// apiVersion.
        api_version: String,
        /// kind.
        kind: String,
        /// The discovery error.
        source: kube::Error,
    },
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The error.
        source: kube::Error,
    },
}

/// Applies a [`Graph`] to the cluster: one pass per reconcile, deletion from the inventory.
///
/// [`SsaExecutor`] is the default. Wrap it to add behaviour around it (metrics, dry runs)
/// without forking it:
///
/// ```
/// use std::time::Duration;
/// use cuebe::executor::{ElapsedSince, ExecuteError, Executor, Instance, Outcome, SsaExecutor};
/// use cuebe::graph::{DeletionPolicy, Graph};
/// use cuebe::status::{AbstractionStatus, InventoryEntry};
///
/// /// Counts the writes of every pass.
/// struct CountingExecutor { inner: SsaExecutor, writes: std::sync::atomic::AtomicUsize }
///
/// #[async_trait::async_trait]
/// impl Executor for CountingExecutor {
///     async fn execute(&self, instance: &Instance, graph: &Graph, previous: &AbstractionStatus,
///         now: &str, elapsed_since: &ElapsedSince) -> Outcome {
///         let outcome = self.inner.execute(instance, graph, previous, now, elapsed_since).await;
///         self.writes.fetch_add(outcome.writes, std::sync::atomic::Ordering::Relaxed);
///         outcome
///     }
///     async fn live(&self, entry: &InventoryEntry) -> Result<Option<serde_json::Value>, ExecuteError> {
///         self.inner.live(entry).await
///     }
///     async fn teardown(&self, inventory: &[InventoryEntry], policy: DeletionPolicy) -> Result<bool, ExecuteError> {
///         self.inner.teardown(inventory, policy).await
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// One reconcile pass over `graph`. `previous` is the status from the last pass (its
    /// `inventory` is the loaded inventory); `now` is the current time (RFC 3339) and
    /// `elapsed_since` turns a stored timestamp into an age.
    async fn execute(
        &self,
        instance: &Instance,
        graph: &Graph,
        previous: &AbstractionStatus,
        now: &str,
        elapsed_since: &ElapsedSince,
    ) -> Outcome;

    /// Reads the live object of an inventory entry (`None` when it is gone).
    async fn live(&self, entry: &InventoryEntry) -> Result<Option<Value>, ExecuteError>;

    /// Removes everything in an inventory, last applied first, under the instance's `policy`;
    /// an entry whose node asked for `Orphan` (`InventoryEntry::deletion_policy`) is orphaned
    /// whatever `policy` says. Returns true once every deleted object is gone (orphaned ones are
    /// only unlabelled).
    async fn teardown(
        &self,
        inventory: &[InventoryEntry],
        policy: DeletionPolicy,
    ) -> Result<bool, ExecuteError>;
}

/// The default [`Executor`]: Server-Side Apply under one field manager. Cheap to clone.
///
/// ```no_run
/// # async fn f(client: kube::Client) {
/// use std::sync::Arc;
/// let executor = cuebe::executor::SsaExecutor::new(client, "cuebe-example")
///     .with_readiness(Arc::new(cuebe::readiness::DefaultReadiness))
///     .with_adopter(Arc::new(cuebe::lifecycle::ExplicitAdopter));
/// # }
/// ```
#[derive(Clone)]
pub struct SsaExecutor {
    client: Client,
    field_manager: String,
    readiness: Arc<dyn Readiness>,
    adopter: Arc<dyn Adopter>,
    resources: Arc<Mutex<ResourceCache>>,
}

/// (apiVersion, kind) → (resource, namespaced), from discovery.
type ResourceCache = HashMap<(String, String), (ApiResource, bool)>;

impl std::fmt::Debug for SsaExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsaExecutor")
            .field("field_manager", &self.field_manager)
            .finish()
    }
}

fn object_hash(object: &Value) -> String {
    let mut h = Sha256::new();
    h.update(canonical_json(object));
    format!("sha256:{}", hex::encode(h.finalize()))
}

fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// The API server's own message for an API error (what a user should read in status), else the
/// error itself.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!(
            "{} ({}, HTTP {})",
            status.message, status.reason, status.code
        ),
        other => other.to_string(),
    }
}

/// Reads a field-manager conflict (HTTP 409 from an apply) into "manager: fields".
fn describe_conflict(status: &kube::core::Status) -> String {
    let fields: Vec<String> = status
        .details
        .as_ref()
        .map(|d| {
            d.causes
                .iter()
                .map(|c| format!("{} ({})", c.field, c.message))
                .collect()
        })
        .unwrap_or_default();
    if fields.is_empty() {
        status.message.clone()
    } else {
        format!("conflict with another field manager: {}", fields.join("; "))
    }
}

impl SsaExecutor {
    /// An executor applying as `field_manager`, with the default readiness semantics and
    /// adoption policy.
    pub fn new(client: Client, field_manager: impl Into<String>) -> Self {
        Self {
            client,
            field_manager: field_manager.into(),
            readiness: Arc::new(DefaultReadiness),
            adopter: Arc::new(ExplicitAdopter),
            resources: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Replaces the readiness semantics.
    pub fn with_readiness(mut self, readiness: Arc<dyn Readiness>) -> Self {
        self.readiness = readiness;
        self
    }

    /// Replaces the adoption policy.
    pub fn with_adopter(mut self, adopter: Arc<dyn Adopter>) -> Self {
        self.adopter = adopter;
        self
    }

    /// The field manager it applies with.
    pub fn field_manager(&self) -> &str {
        &self.field_manager
    }

    async fn api_for(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
    ) -> Result<Api<DynamicObject>, ExecuteError> {
        let key = (api_version.to_string(), kind.to_string());
        let cached = self
            .resources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned();
        let (ar, namespaced) = match cached {
            Some(found) => found,
            None => {
                let (group, version) = split_api_version(api_version);
                let gvk = GroupVersionKind::gvk(group, version, kind);
                let (ar, caps) =
                    discovery::pinned_kind(&self.client, &gvk)
                        .await
                        .map_err(|source| ExecuteError::UnknownKind {
                            api_version: api_version.to_string(),
                            kind: kind.to_string(),
                            source,
                        })?;
                let found = (ar, caps.scope == Scope::Namespaced);
                self.resources
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key, found.clone());
                found
            }
        };
        Ok(if namespaced {
            Api::namespaced_with(self.client.clone(), namespace, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        })
    }

    async fn read_live(&self, entry: &InventoryEntry) -> Result<Option<Value>, ExecuteError> {
        let api = self
            .api_for(&entry.api_version, &entry.kind, &entry.namespace)
            .await?;
        let obj = api
            .get_opt(&entry.name)
            .await
            .map_err(|source| ExecuteError::Api {
                what: format!("reading {} {}", entry.kind, entry.name),
                source,
            })?;
        Ok(obj.and_then(|o| serde_json::to_value(o).ok()))
    }

    async fn pass(
        &self,
        instance: &Instance,
        graph: &Graph,
        previous: &AbstractionStatus,
        now: &str,
        elapsed_since: &ElapsedSince,
    ) -> Outcome {
        let mut out = Outcome::default();
        let mut ready: HashSet<String> = HashSet::new();
        let mut done: HashSet<String> = HashSet::new();
        let mut inventory: BTreeMap<String, InventoryEntry> = previous
            .inventory
            .iter()
            .map(|e| (e.node_id.clone(), e.clone()))
            .collect();
        for node in graph.nodes.iter().filter(|n| n.is_pending()) {
            out.nodes.insert(
                node.id.clone(),
                NodeStatus {
                    phase: NodePhase::Pending,
                    blocked_on: node
                        .pending_on
                        .iter()
                        .map(|e| format!("export:{e}"))
                        .collect(),
                    last_error: None,
                    ready_details: Some(format!("waiting for {}", node.pending_on.join(", "))),
                    waiting_since: None,
                },
            );
            done.insert(node.id.clone());
        }
        loop {
            let frontier: Vec<&Node> = graph
                .nodes
                .iter()
                .filter(|n| !done.contains(&n.id) && n.depends_on.iter().all(|d| ready.contains(d)))
                .collect();
            if frontier.is_empty() {
                break;
            }
            let results = futures::future::join_all(frontier.iter().map(|node| {
                self.apply_node(
                    instance,
                    node,
                    previous,
                    inventory.get(&node.id).cloned(),
                    now,
                    elapsed_since,
                )
            }))
            .await;
            for (node, result) in frontier.iter().zip(results) {
                done.insert(node.id.clone());
                out.writes += result.writes;
                if let Some(entry) = result.entry {
                    let was_adopted = inventory
                        .get(&node.id)
                        .is_some_and(|e| e.mode == InventoryMode::Adopted);
                    if entry.mode == InventoryMode::Adopted && !was_adopted {
                        out.changes.push(Change {
                            node_id: node.id.clone(),
                            kind: entry.kind.clone(),
                            name: entry.name.clone(),
                            action: ChangeAction::Adopted,
                        });
                    }
                    inventory.insert(node.id.clone(), entry);
                }
                if let Some(live) = result.live {
                    out.live.insert(node.id.clone(), live);
                }
                if result.status.phase == NodePhase::Ready {
                    ready.insert(node.id.clone());
                }
                if result.status.phase == NodePhase::Error
                    && result.terminal
                    && out.stalled.is_none()
                {
                    out.stalled = result
                        .status
                        .last_error
                        .clone()
                        .map(|e| format!("{}: {e}", node.id));
                }
                out.nodes.insert(node.id.clone(), result.status);
            }
        }
        for node in &graph.nodes {
            if !done.contains(&node.id) {
                let waiting: Vec<String> = node
                    .depends_on
                    .iter()
                    .filter(|d| !ready.contains(*d))
                    .cloned()
                    .collect();
                out.nodes.insert(
                    node.id.clone(),
                    NodeStatus {
                        phase: NodePhase::Pending,
                        ready_details: Some(format!(
                            "waiting for {} to be Ready",
                            waiting.join(", ")
                        )),
                        blocked_on: waiting,
                        last_error: None,
                        waiting_since: None,
                    },
                );
            }
        }
        out.ready = graph.nodes.iter().all(|n| ready.contains(&n.id));

        // Prune only from a complete, healthy pass.
        let healthy = graph.nodes.iter().all(|n| {
            out.nodes
                .get(&n.id)
                .is_some_and(|s| matches!(s.phase, NodePhase::Ready | NodePhase::Applied))
        });
        let in_graph: HashSet<&str> = graph.nodes.iter().map(|n| n.id.as_str()).collect();
        let stale: Vec<InventoryEntry> = previous
            .inventory
            .iter()
            .rev()
            .filter(|e| !in_graph.contains(e.node_id.as_str()) && e.mode != InventoryMode::Orphaned)
            .cloned()
            .collect();
        if healthy {
            for entry in stale {
                let policy = entry_policy(&entry, DeletionPolicy::Delete);
                match self.remove(&entry, policy).await {
                    Ok(wrote) => {
                        out.writes += usize::from(wrote);
                        inventory.remove(&entry.node_id);
                        if wrote {
                            out.changes.push(Change {
                                node_id: entry.node_id.clone(),
                                kind: entry.kind.clone(),
                                name: entry.name.clone(),
                                action: match policy {
                                    DeletionPolicy::Delete => ChangeAction::Pruned,
                                    DeletionPolicy::Orphan => ChangeAction::Released,
                                },
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(node = %entry.node_id, error = %e, "prune failed; will retry")
                    }
                }
            }
        }
        // Keep the inventory in apply order: graph order first, then leftovers.
        let mut ordered: Vec<InventoryEntry> = Vec::new();
        for n in &graph.nodes {
            if let Some(e) = inventory.remove(&n.id) {
                ordered.push(e);
            }
        }
        ordered.extend(inventory.into_values());
        out.inventory = ordered;
        out
    }

    async fn apply_node(
        &self,
        instance: &Instance,
        node: &Node,
        previous: &AbstractionStatus,
        entry: Option<InventoryEntry>,
        now: &str,
        elapsed_since: &ElapsedSince,
    ) -> NodeResult {
        let error = |message: String| NodeResult {
            status: NodeStatus {
                phase: NodePhase::Error,
                blocked_on: vec![],
                last_error: Some(message),
                ready_details: None,
                waiting_since: None,
            },
            entry: entry.clone(),
            live: None,
            writes: 0,
            terminal: false,
        };
        let Some(mut object) = node.object.clone() else {
            return error("no object (pending)".into());
        };
        let (api_version, kind, name) = identity_of(&object);
        stamp_labels(&mut object, instance);
        let api = match self.api_for(&api_version, &kind, &instance.namespace).await {
            Ok(api) => api,
            Err(e) => return error(e.to_string()),
        };
        let hash = object_hash(&object);
        let mut writes = 0;
        // Read first only when it can save the write (same rendered hash as last time) or the
        // mode needs to know whether the object exists.
        let same_render = entry.as_ref().is_some_and(|e| e.last_applied_hash == hash);
        // An object we have no record of may exist already: the adopter decides about it.
        let recorded = entry
            .as_ref()
            .is_some_and(|e| e.mode != InventoryMode::Orphaned);
        let needs_read =
            same_render || !recorded || node.apply_policy.mode != ApplyMode::CreateOrUpdate;
        let existing = if needs_read {
            match api.get_opt(&name).await {
                Ok(o) => o,
                Err(e) => return error(format!("reading {kind} {name}: {}", api_message(&e))),
            }
        } else {
            None
        };
        // Unchanged since our last apply: the spec generation (or, for objects without one, the
        // resourceVersion) is what we left. A controller's status update does not count.
        let unchanged = match (&entry, &existing) {
            (Some(e), Some(live)) if same_render => {
                match (e.last_applied_generation, live.metadata.generation) {
                    (Some(applied), Some(current)) => applied == current,
                    _ => {
                        live.metadata.resource_version.as_deref()
                            == Some(e.last_applied_resource_version.as_str())
                    }
                }
            }
            _ => false,
        };
        // Ours only if it is the very object we recorded (a recreated one has a new UID).
        let known = recorded
            && existing.as_ref().is_some_and(|live| {
                entry.as_ref().is_some_and(|e| {
                    e.uid.is_empty() || live.metadata.uid.as_deref() == Some(e.uid.as_str())
                })
            });
        let mut adopted = false;
        if let Some(live) = existing.as_ref().filter(|_| !known) {
            let live_json = serde_json::to_value(live).unwrap_or(Value::Null);
            let request = AdoptRequest {
                instance,
                node,
                existing: &live_json,
                field_manager: &self.field_manager,
            };
            match self.adopter.decide(&request) {
                AdoptDecision::Ours => {}
                AdoptDecision::Adopt => adopted = true,
                AdoptDecision::Refuse(message) => {
                    return NodeResult {
                        status: NodeStatus {
                            phase: NodePhase::Blocked,
                            blocked_on: vec![],
                            last_error: Some(message),
                            ready_details: Some("not adopted: nothing was written".into()),
                            waiting_since: None,
                        },
                        entry,
                        live: None,
                        writes: 0,
                        terminal: false,
                    };
                }
            }
        }
        let live = match (node.apply_policy.mode, existing) {
            (_, Some(live)) if unchanged => live,
            (ApplyMode::CreateOnly, Some(live)) => live,
            (ApplyMode::AdoptOnly, None) => {
                return NodeResult {
                    status: NodeStatus {
                        phase: NodePhase::Blocked,
                        blocked_on: vec![],
                        last_error: Some(format!("AdoptOnly: no existing {kind} {name} to adopt")),
                        ready_details: None,
                        waiting_since: None,
                    },
                    entry,
                    live: None,
                    writes: 0,
                    terminal: false,
                };
            }
            _ => {
                let mut params = PatchParams::apply(&self.field_manager);
                if node.apply_policy.conflict_policy == ConflictPolicy::Force {
                    params = params.force();
                }
                writes += 1;
                match api.patch(&name, &params, &Patch::Apply(&object)).await {
                    Ok(applied) => applied,
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        return NodeResult {
                            status: NodeStatus {
                                phase: NodePhase::Blocked,
                                blocked_on: vec![],
                                last_error: Some(describe_conflict(&status)),
                                ready_details: Some(
                                    "conflictPolicy: Fail — nothing was overwritten".into(),
                                ),
                                waiting_since: None,
                            },
                            entry,
                            live: None,
                            writes,
                            terminal: false,
                        };
                    }
                    Err(e) => return error(format!("applying {kind} {name}: {}", api_message(&e))),
                }
            }
        };
        let live_json = serde_json::to_value(&live).unwrap_or(Value::Null);
        let previous_node = previous.nodes.get(&node.id);
        let was_ready = previous_node.is_some_and(|s| s.phase == NodePhase::Ready);
        let mode = match node.apply_policy.mode {
            _ if adopted => InventoryMode::Adopted,
            ApplyMode::AdoptOnly => InventoryMode::Adopted,
            _ => entry
                .as_ref()
                .map(|e| e.mode)
                .filter(|m| *m != InventoryMode::Orphaned)
                .unwrap_or(InventoryMode::Managed),
        };
        let mut new_entry = InventoryEntry {
            node_id: node.id.clone(),
            api_version,
            kind,
            namespace: live.metadata.namespace.clone().unwrap_or_default(),
            name,
            uid: live.metadata.uid.clone().unwrap_or_default(),
            mode,
            last_applied_hash: hash,
            // What our last apply left; a pass that skipped the apply keeps it, so later status
            // updates by the object's controller are not mistaken for our writes.
            last_applied_resource_version: match (&entry, writes) {
                (Some(e), 0) if !e.last_applied_resource_version.is_empty() => {
                    e.last_applied_resource_version.clone()
                }
                _ => live.metadata.resource_version.clone().unwrap_or_default(),
            },
            last_applied_generation: match (&entry, writes) {
                (Some(e), 0) if e.last_applied_generation.is_some() => e.last_applied_generation,
                _ => live.metadata.generation,
            },
            last_ready_transition: entry.as_ref().and_then(|e| e.last_ready_transition.clone()),
            deletion_policy: node.deletion_policy,
        };
        let verdict = match self.readiness.evaluate(&node.ready_when, &live_json) {
            Ok(v) => v,
            Err(e) => {
                // A predicate that cannot be evaluated is a module bug: retrying will not help.
                return NodeResult {
                    entry: Some(new_entry),
                    terminal: true,
                    ..error(e.to_string())
                };
            }
        };
        let status = if let Some(terminal) = verdict.terminal {
            NodeStatus {
                phase: NodePhase::Error,
                blocked_on: vec![],
                last_error: Some(terminal),
                ready_details: Some(verdict.details),
                waiting_since: None,
            }
        } else if verdict.ready {
            if !was_ready {
                new_entry.last_ready_transition = Some(now.to_string());
            }
            NodeStatus {
                phase: NodePhase::Ready,
                blocked_on: vec![],
                last_error: None,
                ready_details: Some(verdict.details),
                waiting_since: None,
            }
        } else {
            // An expired timeout stays expired: keep the first time the node was seen waiting.
            let since = previous_node
                .filter(|s| matches!(s.phase, NodePhase::Applied | NodePhase::Error))
                .and_then(|s| s.waiting_since.clone())
                .unwrap_or_else(|| now.to_string());
            let timeout = node
                .ready_when
                .iter()
                .filter_map(|p| p.timeout().ok().flatten())
                .min();
            match (timeout, elapsed_since(&since)) {
                (Some(t), Some(waited)) if waited > t => NodeStatus {
                    phase: NodePhase::Error,
                    blocked_on: vec![],
                    last_error: Some(format!("not ready after {t:?}: {}", verdict.details)),
                    ready_details: Some(verdict.details),
                    waiting_since: Some(since),
                },
                _ => NodeStatus {
                    phase: NodePhase::Applied,
                    blocked_on: vec![],
                    last_error: None,
                    ready_details: Some(verdict.details),
                    waiting_since: Some(since),
                },
            }
        };
        NodeResult {
            terminal: status.phase == NodePhase::Error,
            status,
            entry: Some(new_entry),
            live: Some(live_json),
            writes,
        }
    }

    /// What applying `object` for `instance` would do, asked of the API server without writing
    /// anything: a server-side apply with `dryRun=All` under this executor's field manager
    /// (forced, as a `Force` node is), next to the object as it is now.
    ///
    /// ```no_run
    /// # async fn f(client: kube::Client, instance: cuebe::lifecycle::Instance) -> Result<(), cuebe::executor::ExecuteError> {
    /// let executor = cuebe::executor::SsaExecutor::new(client, "cuebe-webservice");
    /// let object = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
    ///     "metadata": {"name": "settings", "namespace": "apps"}, "data": {"mode": "fast"}});
    /// let preview = executor.preview(&instance, &object).await?;
    /// println!("exists: {}, would be: {}", preview.live.is_some(), preview.applied);
    /// # Ok(()) }
    /// ```
    pub async fn preview(
        &self,
        instance: &Instance,
        object: &Value,
    ) -> Result<Preview, ExecuteError> {
        let mut object = object.clone();
        let (api_version, kind, name) = identity_of(&object);
        stamp_labels(&mut object, instance);
        let api = self
            .api_for(&api_version, &kind, &instance.namespace)
            .await?;
        let live = api
            .get_opt(&name)
            .await
            .map_err(|source| ExecuteError::Api {
                what: format!("reading {kind} {name}"),
                source,
            })?;
        let params = PatchParams::apply(&self.field_manager).force().dry_run();
        let applied = api
            .patch(&name, &params, &Patch::Apply(&object))
            .await
            .map_err(|source| ExecuteError::Api {
                what: format!("dry-run applying {kind} {name}"),
                source,
            })?;
        Ok(Preview {
            live: live.map(|l| serde_json::to_value(l).unwrap_or(Value::Null)),
            applied: serde_json::to_value(applied).unwrap_or(Value::Null),
        })
    }

    /// Deletes (with a UID precondition) or orphans one inventory object. Returns whether it
    /// wrote anything; a missing object is already done.
    pub async fn remove(
        &self,
        entry: &InventoryEntry,
        policy: DeletionPolicy,
    ) -> Result<bool, ExecuteError> {
        let api = self
            .api_for(&entry.api_version, &entry.kind, &entry.namespace)
            .await?;
        match policy {
            DeletionPolicy::Delete => {
                let params = DeleteParams {
                    preconditions: (!entry.uid.is_empty()).then(|| Preconditions {
                        uid: Some(entry.uid.clone()),
                        resource_version: None,
                    }),
                    propagation_policy: Some(kube::api::PropagationPolicy::Background),
                    ..DeleteParams::default()
                };
                match api.delete(&entry.name, &params).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
                    Err(source) => Err(ExecuteError::Api {
                        what: format!("deleting {} {}", entry.kind, entry.name),
                        source,
                    }),
                }
            }
            DeletionPolicy::Orphan => {
                let patch = serde_json::json!({"metadata": {"labels": {INSTANCE_LABEL: null, KIND_LABEL: null}}});
                match api
                    .patch(&entry.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
                    Err(source) => Err(ExecuteError::Api {
                        what: format!("orphaning {} {}", entry.kind, entry.name),
                        source,
                    }),
                }
            }
        }
    }

    async fn remove_all(
        &self,
        inventory: &[InventoryEntry],
        policy: DeletionPolicy,
    ) -> Result<bool, ExecuteError> {
        let mut all_gone = true;
        for entry in inventory.iter().rev() {
            if entry.mode == InventoryMode::Orphaned {
                continue;
            }
            match entry_policy(entry, policy) {
                DeletionPolicy::Delete => {
                    if self.read_live(entry).await?.is_some() {
                        self.remove(entry, DeletionPolicy::Delete).await?;
                        all_gone = false;
                        // Wave by wave: wait for this object before the ones it depends on.
                        break;
                    }
                }
                DeletionPolicy::Orphan => {
                    self.remove(entry, DeletionPolicy::Orphan).await?;
                }
            }
        }
        Ok(all_gone)
    }
}

#[async_trait::async_trait]
impl Executor for SsaExecutor {
    async fn execute(
        &self,
        instance: &Instance,
        graph: &Graph,
        previous: &AbstractionStatus,
        now: &str,
        elapsed_since: &ElapsedSince,
    ) -> Outcome {
        self.pass(instance, graph, previous, now, elapsed_since)
            .await
    }

    async fn live(&self, entry: &InventoryEntry) -> Result<Option<Value>, ExecuteError> {
        self.read_live(entry).await
    }

    async fn teardown(
        &self,
        inventory: &[InventoryEntry],
        policy: DeletionPolicy,
    ) -> Result<bool, ExecuteError> {
        self.remove_all(inventory, policy).await
    }
}

/// What removing one inventory object means: the instance's `Orphan` keeps everything; otherwise
/// a node that asked to be orphaned is released and the rest follow the instance.
fn entry_policy(entry: &InventoryEntry, instance: DeletionPolicy) -> DeletionPolicy {
    match (instance, entry.deletion_policy) {
        (DeletionPolicy::Orphan, _) | (_, Some(DeletionPolicy::Orphan)) => DeletionPolicy::Orphan,
        _ => DeletionPolicy::Delete,
    }
}

struct NodeResult {
    status: NodeStatus,
    /// The error will not go away by retrying (a terminal condition, an expired timeout);
    /// API errors are retried.
    terminal: bool,
    entry: Option<InventoryEntry>,
    live: Option<Value>,
    writes: usize,
}

/// An object before and after a dry-run apply (see [`SsaExecutor::preview`]).
#[derive(Debug, Clone)]
pub struct Preview {
    /// The object as it is, if it exists.
    pub live: Option<Value>,
    /// The object as it would be after the apply (API server defaults and other managers'
    /// fields included).
    pub applied: Value,
}

/// apiVersion, kind and metadata.name of a rendered object (empty when missing: the Graph was
/// validated before).
fn identity_of(object: &Value) -> (String, String, String) {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    (
        text(object.get("apiVersion")),
        text(object.get("kind")),
        text(object.pointer("/metadata/name")),
    )
}

/// Puts the instance labels on an object, as every apply does (they drive the child watches).
fn stamp_labels(object: &mut Value, instance: &Instance) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(INSTANCE_LABEL.into(), Value::String(instance.name.clone()));
            labels.insert(KIND_LABEL.into(), Value::String(instance.kind.clone()));
        }
    }
}

/// Parses an RFC 3339 time and returns how long ago it was.
pub fn age_of(timestamp: &str) -> Option<Duration> {
    let then: k8s_openapi::jiff::Timestamp = timestamp.parse().ok()?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let span = now.duration_since(then);
    Duration::try_from(span).ok()
}

/// The current time, RFC 3339.
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}
