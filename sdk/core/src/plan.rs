//! The plan: a validated [`Graph`] as the executor walks it, and the decisions of one pass.
//!
//! Owns: [`Plan`] (immutable, built once per render and cached with it: an id index, the apply
//! order, the teardown order and each node's readiness predicates compiled once), [`Pass`] (the
//! fresh state of one reconcile pass over a plan), the per-node decisions ([`needs_read`],
//! [`read_source`]: the watch cache, our own write's answer or a GET, [`write_decision`],
//! [`judge`]) and the prune plan ([`prune_plan`]). Everything here is a function over data: the
//! runtime's executor does the API calls and asks.
//!
//! Workflow of a pass (the executor's loop):
//! 1. [`Pass::start`]: nodes pending on an export are `Pending` and never applied;
//! 2. [`Pass::take_startable`]: nodes whose dependencies are all Ready and not yet started; the
//!    executor starts applying them and [`Pass::record`]s each result as it comes, then takes
//!    again — a node starts once its own dependencies are Ready, not when a whole wave is done,
//!    and a chain of quickly-ready nodes does not wait for a requeue per wave; meanwhile
//!    [`Pass::take_rejudgeable`]: waiting nodes whose watch delivered a change, looked at
//!    again from the cache ([`second_look_applies`]), a Ready verdict recorded;
//! 3. [`Pass::finish`]: unreached nodes are `Pending` on the dependencies that are not Ready;
//! 4. [`prune_plan`]: what may be pruned — nothing unless the pass was complete and healthy.
//!
//! Safety rules (the invariants the table tests below hold):
//! - never prunes while a node is pending, blocked or failed;
//! - nothing to do, nothing written: an object whose rendered hash matches the inventory and
//!   whose spec generation (or, without one, `resourceVersion`) is the one our last apply left is
//!   not applied again;
//! - an expired readiness timeout stays expired (the first time a node was seen waiting is
//!   kept);
//! - a `Reference` node's object is only read: never written, adopted or labelled, never in the
//!   inventory (so never pruned or deleted); while it is missing the node is `Pending`, naming
//!   it, and its dependents wait. An object the inventory recorded for a node that is now a
//!   reference is released (unlabelled, dropped from the inventory), never deleted.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::clock::{Timestamp, elapsed_since};
use crate::graph::{ApplyMode, DeletionPolicy, Graph, GraphError, Node};
use crate::instance::{PRUNE_THRESHOLD_ANNOTATION, PruneThreshold};
use crate::inventory::{InventoryEntry, InventoryMode};
use crate::readiness::{CompiledPredicate, Verdict};
use crate::status::{Health, NodePhase, NodeStatus};

/// A validated graph, ready to walk.
///
/// ```
/// use cuebe_core::graph::Graph;
/// use cuebe_core::plan::Plan;
/// let graph: Graph = serde_json::from_value(serde_json::json!({
///     "graphVersion": "cuebe.dev/v1alpha1",
///     "metadata": {"platformRefResolved": "sha256:0", "renderHash": "sha256:0"},
///     "nodes": [
///         {"id": "sa", "object": {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web"}}},
///         {"id": "deploy", "dependsOn": ["sa"], "readyWhen": [{"type": "Cel", "expression": "self.status.ready == true"}],
///          "object": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}}
///     ]
/// })).unwrap();
/// let plan = Plan::new(graph, "apps").unwrap();
/// assert_eq!(plan.apply_order().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["sa", "deploy"]);
/// assert_eq!(plan.teardown_order().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["deploy", "sa"]);
/// ```
#[derive(Debug, Clone)]
pub struct Plan {
    graph: Graph,
    index: HashMap<String, usize>,
    apply_order: Vec<usize>,
    predicates: Vec<Arc<[CompiledPredicate]>>,
}

impl Plan {
    /// Validates `graph` for an instance in `namespace` ([`Graph::validate`]) and compiles its
    /// predicates (a CEL expression that does not compile is an error here, not at run time).
    pub fn new(graph: Graph, namespace: &str) -> Result<Self, Vec<GraphError>> {
        graph.validate(namespace)?;
        let mut errors = Vec::new();
        let mut predicates = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            let mut compiled = Vec::with_capacity(node.ready_when.len());
            for (index, p) in node.ready_when.iter().enumerate() {
                match CompiledPredicate::compile(p) {
                    Ok(c) => compiled.push(c),
                    Err(message) => errors.push(GraphError::InvalidPredicate {
                        node: node.id.clone(),
                        index,
                        message,
                    }),
                }
            }
            predicates.push(Arc::from(compiled));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self::indexed(graph, predicates))
    }

    /// A plan for a graph whose policy violations block it: never executed, so not validated;
    /// predicates that do not compile are left out.
    pub fn blocked(graph: Graph) -> Self {
        let predicates = graph
            .nodes
            .iter()
            .map(|n| {
                let compiled: Vec<CompiledPredicate> = n
                    .ready_when
                    .iter()
                    .filter_map(|p| CompiledPredicate::compile(p).ok())
                    .collect();
                Arc::from(compiled)
            })
            .collect();
        Self::indexed(graph, predicates)
    }

    fn indexed(graph: Graph, predicates: Vec<Arc<[CompiledPredicate]>>) -> Self {
        let index: HashMap<String, usize> = graph
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        let apply_order = graph
            .waves()
            .into_iter()
            .flatten()
            .filter_map(|id| index.get(&id).copied())
            .collect();
        Self {
            graph,
            index,
            apply_order,
            predicates,
        }
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.index.get(id).map(|&i| &self.graph.nodes[i])
    }

    /// The compiled readiness predicates of a node (empty for an unknown id).
    pub fn predicates(&self, id: &str) -> Arc<[CompiledPredicate]> {
        self.index
            .get(id)
            .map(|&i| self.predicates[i].clone())
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// The smallest readiness timeout of node `id`'s predicates, if any has one: how long the
    /// node may stay Applied before it is reported failed.
    pub fn readiness_timeout(&self, id: &str) -> Option<Duration> {
        self.predicates(id).iter().filter_map(|p| p.timeout).min()
    }

    /// Nodes in apply order: every node after all of its dependencies.
    pub fn apply_order(&self) -> impl DoubleEndedIterator<Item = &Node> {
        self.apply_order.iter().map(|&i| &self.graph.nodes[i])
    }

    /// Nodes in teardown order: every node before its dependencies.
    pub fn teardown_order(&self) -> impl Iterator<Item = &Node> {
        self.apply_order().rev()
    }
}

/// A plan reads as the graph it validated (a validated newtype, like `String` for `str`), so
/// code that only looks at the graph does not need to know it holds a plan.
impl std::ops::Deref for Plan {
    type Target = Graph;

    fn deref(&self) -> &Graph {
        &self.graph
    }
}

/// A plan's wire form is its graph (the artifact `render` prints and goldens record).
impl serde::Serialize for Plan {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.graph.serialize(serializer)
    }
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

impl ChangeAction {
    /// The event reason and action for this change.
    pub fn event(self) -> (&'static str, &'static str) {
        match self {
            Self::Adopted => ("Adopted", "Adopt"),
            Self::Pruned => ("Pruned", "Prune"),
            Self::Released => ("Released", "Prune"),
        }
    }
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
            ChangeAction::Released if node_id.starts_with(REFERENCED_PREFIX) => {
                let node = node_id[REFERENCED_PREFIX.len()..]
                    .strip_suffix(&format!("/{kind}/{name}"))
                    .unwrap_or(node_id);
                write!(
                    f,
                    "released {kind} {name}: its node {node} now only references it"
                )
            }
            ChangeAction::Released => write!(
                f,
                "released {kind} {name}: node {node_id} left the graph and its deletionPolicy is Orphan"
            ),
        }
    }
}

/// What one pass produced.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Node states by id.
    pub nodes: BTreeMap<String, NodeStatus>,
    /// The inventory after this pass, in apply order.
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
    /// The prune guard held this pass's pruning back (its message, naming what would go): the
    /// instance is Stalled with reason `PruneGuard`.
    pub prune_guard: Option<String>,
    /// Pruning is paused for the whole abstraction by the [`FleetPruneGuard`] (its message):
    /// the instance waits, Progressing with reason `PrunePaused`.
    pub prune_paused: Option<String>,
}

/// What applying one node gave.
#[derive(Debug, Clone)]
pub struct NodeResult {
    /// The node's state.
    pub status: NodeStatus,
    /// The error will not go away by retrying (a terminal condition, an expired timeout, a
    /// broken predicate); API errors are retried.
    pub terminal: bool,
    /// The node's inventory entry after the apply (or the one it had).
    pub entry: Option<InventoryEntry>,
    /// The live object, when the node was applied or observed.
    pub live: Option<Value>,
    /// Writes made.
    pub writes: usize,
}

impl NodeResult {
    /// A result that wrote nothing and keeps `entry`.
    pub fn unwritten(status: NodeStatus, entry: Option<InventoryEntry>) -> Self {
        Self {
            status,
            terminal: false,
            entry,
            live: None,
            writes: 0,
        }
    }
}

/// The state of one pass over a plan: what is decided, what is Ready, the inventory so far.
///
/// ```
/// use cuebe_core::graph::Graph;
/// use cuebe_core::plan::{NodeResult, Pass, Plan};
/// use cuebe_core::status::NodeStatus;
/// let graph: Graph = serde_json::from_value(serde_json::json!({
///     "graphVersion": "cuebe.dev/v1alpha1",
///     "metadata": {"platformRefResolved": "sha256:0", "renderHash": "sha256:0"},
///     "nodes": [
///         {"id": "a", "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}},
///         {"id": "b", "dependsOn": ["a"], "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}}}
///     ]
/// })).unwrap();
/// let plan = Plan::new(graph, "apps").unwrap();
/// let mut pass = Pass::start(&plan, &[]);
/// assert_eq!(pass.frontier().iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["a"]);
/// pass.record("a", NodeResult::unwritten(NodeStatus::applied("waiting", "2026-01-01T00:00:00Z"), None));
/// assert!(pass.frontier().is_empty()); // b waits for a to be Ready
/// let outcome = pass.finish();
/// assert_eq!(outcome.nodes["b"].blocked_on, ["a"]);
/// assert!(!outcome.ready);
/// ```
#[derive(Debug)]
pub struct Pass<'p> {
    plan: &'p Plan,
    done: HashSet<String>,
    /// Handed out by [`Pass::take_startable`] and not recorded yet: being applied.
    started: HashSet<String>,
    /// For each node [`Pass::take_rejudgeable`] handed out: the version the watch had
    /// delivered then (a node is looked at again only when the watch delivers another).
    looked_at: HashMap<String, String>,
    ready: HashSet<String>,
    inventory: BTreeMap<String, InventoryEntry>,
    out: Outcome,
}

impl<'p> Pass<'p> {
    /// A fresh pass over `plan`, starting from the stored `inventory`. Nodes pending on an
    /// export are decided at once (`Pending`, never applied).
    pub fn start(plan: &'p Plan, inventory: &[InventoryEntry]) -> Self {
        let mut pass = Self {
            plan,
            done: HashSet::new(),
            started: HashSet::new(),
            looked_at: HashMap::new(),
            ready: HashSet::new(),
            inventory: inventory
                .iter()
                .map(|e| (e.node_id.clone(), e.clone()))
                .collect(),
            out: Outcome::default(),
        };
        for node in plan.graph.nodes.iter().filter(|n| n.is_pending()) {
            let blocked_on = node
                .pending_on
                .iter()
                .map(|e| format!("export:{e}"))
                .collect();
            let details = format!("waiting for {}", node.pending_on.join(", "));
            pass.out
                .nodes
                .insert(node.id.clone(), NodeStatus::pending(blocked_on, details));
            pass.done.insert(node.id.clone());
        }
        pass
    }

    /// The nodes to apply now: not decided yet, every dependency Ready.
    pub fn frontier(&self) -> Vec<&'p Node> {
        self.plan
            .apply_order()
            .filter(|n| {
                !self.done.contains(&n.id) && n.depends_on.iter().all(|d| self.ready.contains(d))
            })
            .collect()
    }

    /// The nodes of the [`Pass::frontier`] not handed out yet, marked as being applied: what the
    /// executor starts now, while other nodes may still be in flight. A node starts as soon as
    /// its own dependencies are Ready, never waiting for a sibling it does not depend on (a
    /// Deployment that needs only its ServiceAccount is applied while the Service beside it
    /// still waits for its ClusterIP). Empty, with nothing in flight, ends the walk.
    ///
    /// ```
    /// # use cuebe_core::graph::Graph;
    /// # use cuebe_core::plan::{NodeResult, Pass, Plan};
    /// # use cuebe_core::status::NodeStatus;
    /// # let graph: Graph = serde_json::from_value(serde_json::json!({
    /// #     "graphVersion": "cuebe.dev/v1alpha1",
    /// #     "metadata": {"platformRefResolved": "sha256:0", "renderHash": "sha256:0"},
    /// #     "nodes": [
    /// #         {"id": "sa", "object": {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "a"}}},
    /// #         {"id": "svc", "object": {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}}},
    /// #         {"id": "deploy", "dependsOn": ["sa"], "object": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a"}}}
    /// #     ]
    /// # })).unwrap();
    /// let plan = Plan::new(graph, "apps").unwrap();
    /// let mut pass = Pass::start(&plan, &[]);
    /// let ids = |nodes: Vec<&cuebe_core::graph::Node>| nodes.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
    /// assert_eq!(ids(pass.take_startable()), ["sa", "svc"]);
    /// pass.record("sa", NodeResult::unwritten(NodeStatus::ready("exists"), None));
    /// // The Service is still being applied: the Deployment starts anyway.
    /// assert_eq!(ids(pass.take_startable()), ["deploy"]);
    /// assert!(pass.take_startable().is_empty());
    /// ```
    pub fn take_startable(&mut self) -> Vec<&'p Node> {
        let startable: Vec<&'p Node> = self
            .frontier()
            .into_iter()
            .filter(|n| !self.started.contains(&n.id))
            .collect();
        self.started.extend(startable.iter().map(|n| n.id.clone()));
        startable
    }

    /// Nodes this pass applied or kept whose readiness gate had not passed when they were
    /// judged, and whose object the watch has delivered in another version since
    /// (`delivered(entry)`: the version the watch delivered last, see [`judge_again`]) — each
    /// handed out once per delivered version. While other nodes are still being applied and
    /// when nothing is left to start, the executor takes a second look at these from the watch
    /// cache ([`second_look_applies`]) and records only a Ready verdict: a Deployment that
    /// turns Available while a slower sibling (a Service waiting for its ClusterIP) is still
    /// being applied is Ready at once — its dependents are applied without waiting for the
    /// sibling, and the instance is written Ready in this pass instead of `Progressing` now
    /// and `Ready` a moment later.
    ///
    /// ```
    /// # use cuebe_core::graph::Graph;
    /// # use cuebe_core::plan::{NodeResult, Pass, Plan};
    /// # use cuebe_core::status::NodeStatus;
    /// # let graph: Graph = serde_json::from_value(serde_json::json!({
    /// #     "graphVersion": "cuebe.dev/v1alpha1",
    /// #     "metadata": {"platformRefResolved": "sha256:0", "renderHash": "sha256:0"},
    /// #     "nodes": [{"id": "deploy", "object": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a"}}}]
    /// # })).unwrap();
    /// # let plan = Plan::new(graph, "apps").unwrap();
    /// # let entry: cuebe_core::inventory::InventoryEntry = serde_json::from_value(serde_json::json!({
    /// #     "nodeId": "deploy", "apiVersion": "apps/v1", "kind": "Deployment", "namespace": "apps", "name": "a", "mode": "Managed"})).unwrap();
    /// let mut pass = Pass::start(&plan, &[]);
    /// pass.take_startable();
    /// pass.record("deploy", NodeResult {
    ///     entry: Some(entry),
    ///     live: Some(serde_json::json!({"metadata": {"resourceVersion": "7"}})),
    ///     ..NodeResult::unwritten(NodeStatus::applied("0/1 replicas available", "2026-01-01T00:00:00Z"), None)
    /// });
    /// // The watch delivered version 9: one look, and no other until it delivers another.
    /// assert_eq!(pass.take_rejudgeable(|_| Some(Some("9".into()))).len(), 1);
    /// assert!(pass.take_rejudgeable(|_| Some(Some("9".into()))).is_empty());
    /// assert_eq!(pass.take_rejudgeable(|_| Some(Some("10".into()))).len(), 1);
    /// ```
    pub fn take_rejudgeable(
        &mut self,
        delivered: impl Fn(&InventoryEntry) -> Option<Option<String>>,
    ) -> Vec<&'p Node> {
        let mut again = Vec::new();
        for node in self.plan.apply_order() {
            if self.out.nodes.get(&node.id).map(|s| s.phase) != Some(NodePhase::Applied) {
                continue;
            }
            // A Reference node has no inventory entry: never looked at again.
            let Some(entry) = self.inventory.get(&node.id) else {
                continue;
            };
            let judged = self
                .out
                .live
                .get(&node.id)
                .and_then(|live| live.pointer("/metadata/resourceVersion"))
                .and_then(Value::as_str);
            let Some(Some(version)) = delivered(entry) else {
                continue;
            };
            let looked = self.looked_at.get(&node.id).map(String::as_str);
            if judge_again(judged, Some(Some(&version))) && looked != Some(version.as_str()) {
                self.looked_at.insert(node.id.clone(), version);
                again.push(node);
            }
        }
        again
    }

    /// The inventory entry of a node as the pass knows it now.
    pub fn entry(&self, node_id: &str) -> Option<&InventoryEntry> {
        self.inventory.get(node_id)
    }

    /// Records what applying `node_id` gave. A `Reference` node's object never enters the
    /// inventory, whatever the result carries.
    pub fn record(&mut self, node_id: &str, result: NodeResult) {
        self.started.remove(node_id);
        self.done.insert(node_id.to_string());
        self.out.writes += result.writes;
        let reference = self.plan.node(node_id).is_some_and(Node::is_reference);
        if let Some(entry) = result.entry.filter(|_| !reference) {
            let was_adopted = self
                .inventory
                .get(node_id)
                .is_some_and(|e| e.mode == InventoryMode::Adopted);
            if entry.mode == InventoryMode::Adopted && !was_adopted {
                self.out.changes.push(Change {
                    node_id: node_id.to_string(),
                    kind: entry.kind.clone(),
                    name: entry.name.clone(),
                    action: ChangeAction::Adopted,
                });
            }
            self.inventory.insert(node_id.to_string(), entry);
        }
        if let Some(live) = result.live {
            self.out.live.insert(node_id.to_string(), live);
        }
        if result.status.phase == NodePhase::Ready {
            self.ready.insert(node_id.to_string());
        }
        if result.status.phase == NodePhase::Error && result.terminal && self.out.stalled.is_none()
        {
            self.out.stalled = result
                .status
                .last_error
                .clone()
                .map(|e| format!("{node_id}: {e}"));
        }
        self.out.nodes.insert(node_id.to_string(), result.status);
    }

    /// Records that an inventory entry was pruned (deleted or released) or found gone.
    pub fn pruned(&mut self, entry: &InventoryEntry, action: Option<ChangeAction>) {
        self.inventory.remove(&entry.node_id);
        if let Some(action) = action {
            self.out.writes += 1;
            self.out.changes.push(Change {
                node_id: entry.node_id.clone(),
                kind: entry.kind.clone(),
                name: entry.name.clone(),
                action,
            });
        }
    }

    /// Ends the pass before anything is written: the `refused` nodes (a kind the operator may
    /// not write, or may not render at all) get their status, and every other node not decided
    /// yet is `Pending`, not applied, so that an instance is never half-applied because of a
    /// permission found missing halfway through its graph.
    ///
    /// ```
    /// # use cuebe_core::graph::Graph;
    /// # use cuebe_core::plan::{Pass, Plan};
    /// # use cuebe_core::status::{NodePhase, NodeStatus};
    /// # let graph: Graph = serde_json::from_value(serde_json::json!({
    /// #     "graphVersion": "cuebe.dev/v1alpha1",
    /// #     "metadata": {"platformRefResolved": "sha256:0", "renderHash": "sha256:0"},
    /// #     "nodes": [
    /// #         {"id": "a", "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}},
    /// #         {"id": "b", "object": {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "b"}}}
    /// #     ]
    /// # })).unwrap();
    /// let plan = Plan::new(graph, "apps").unwrap();
    /// let mut pass = Pass::start(&plan, &[]);
    /// pass.refuse([("b".to_string(), NodeStatus::blocked("may not patch secrets", None))].into());
    /// let outcome = pass.finish();
    /// assert_eq!(outcome.nodes["b"].phase, NodePhase::Blocked);
    /// assert_eq!(outcome.nodes["a"].phase, NodePhase::Pending); // not applied either
    /// assert_eq!(outcome.nodes["a"].blocked_on, ["b"]);
    /// ```
    pub fn refuse(&mut self, refused: BTreeMap<String, NodeStatus>) {
        let ids: Vec<String> = refused.keys().cloned().collect();
        for (id, status) in refused {
            let entry = self.inventory.get(&id).cloned();
            self.record(&id, NodeResult::unwritten(status, entry));
        }
        let details = format!(
            "not applied: {} cannot be written, and nothing of the graph is written until it can",
            ids.join(", ")
        );
        for node in self.plan.apply_order() {
            if self.done.insert(node.id.clone()) {
                self.out.nodes.insert(
                    node.id.clone(),
                    NodeStatus::pending(ids.clone(), details.clone()),
                );
            }
        }
    }

    /// Records that the prune guard held this pass's pruning back ([`PrunePlan::guarded`]).
    pub fn prune_guarded(&mut self, message: String) {
        self.out.prune_guard = Some(message);
    }

    /// Records that the [`FleetPruneGuard`] paused this pass's pruning.
    pub fn prune_paused(&mut self, message: String) {
        self.out.prune_paused = Some(message);
    }

    /// Ends the walk: nodes never reached are `Pending` on the dependencies that are not
    /// Ready. Call before [`prune_plan`] and [`Pass::into_outcome`].
    pub fn finish(mut self) -> Outcome {
        self.close();
        self.into_outcome()
    }

    /// Marks the unreached nodes (see [`Pass::finish`]) and keeps the pass open for pruning.
    pub fn close(&mut self) {
        for node in self.plan.apply_order() {
            if self.done.contains(&node.id) {
                continue;
            }
            let waiting: Vec<String> = node
                .depends_on
                .iter()
                .filter(|d| !self.ready.contains(*d))
                .cloned()
                .collect();
            let details = format!("waiting for {} to be Ready", waiting.join(", "));
            self.out
                .nodes
                .insert(node.id.clone(), NodeStatus::pending(waiting, details));
        }
        self.out.ready = self
            .plan
            .graph
            .nodes
            .iter()
            .all(|n| self.ready.contains(&n.id));
    }

    /// Node states decided so far.
    pub fn nodes(&self) -> &BTreeMap<String, NodeStatus> {
        &self.out.nodes
    }

    /// The outcome, the inventory in apply order (graph order first, then leftovers).
    pub fn into_outcome(mut self) -> Outcome {
        let mut ordered = Vec::with_capacity(self.inventory.len());
        for n in &self.plan.graph.nodes {
            if let Some(e) = self.inventory.remove(&n.id) {
                ordered.push(e);
            }
        }
        ordered.extend(self.inventory.into_values());
        self.out.inventory = ordered;
        self.out
    }
}

/// The stored inventory as a pass starts from it. An entry whose node now renders another
/// object (the module renamed it, or moved it to another API group) is re-keyed
/// `replaced:<node>/<Kind>/<name>`, an id no node has: the pass applies the new object for the
/// node, and the old one is pruned like a node that left the graph — after a healthy pass, so
/// the replacement is Ready first. Otherwise the old object would stay in the cluster, recorded
/// nowhere. A change of version within the API group (`apps/v1beta1` → `apps/v1`) is the same
/// object.
///
/// ```
/// # use cuebe_core::graph::Graph;
/// # use cuebe_core::plan::{Plan, starting_inventory};
/// # use cuebe_core::inventory::InventoryEntry;
/// # let graph: Graph = serde_json::from_value(serde_json::json!({
/// #     "graphVersion": "cuebe.dev/v1alpha1",
/// #     "metadata": {"platformRefResolved": "sha256:0", "renderHash": "sha256:0"},
/// #     "nodes": [{"id": "config", "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings-v2"}}}]
/// # })).unwrap();
/// let plan = Plan::new(graph, "apps").unwrap(); // node `config` renders ConfigMap settings-v2
/// let stored: InventoryEntry = serde_json::from_value(serde_json::json!({"nodeId": "config",
///     "apiVersion": "v1", "kind": "ConfigMap", "name": "settings", "mode": "Managed"})).unwrap();
/// let start = starting_inventory(&plan, &[stored]);
/// assert_eq!(start[0].node_id, "replaced:config/ConfigMap/settings");
/// ```
///
/// An entry whose node is now a `Reference` (the module stopped managing the object and only
/// reads it) is re-keyed `referenced:<node>/<Kind>/<name>` with `deletionPolicy: Orphan`: it
/// is released (unlabelled and dropped from the inventory) after a healthy pass, never
/// deleted — the node still reads that very object.
pub fn starting_inventory(plan: &Plan, stored: &[InventoryEntry]) -> Vec<InventoryEntry> {
    let group = |api_version: &str| {
        api_version
            .rsplit_once('/')
            .map_or("", |(g, _)| g)
            .to_string()
    };
    stored
        .iter()
        .map(|entry| {
            if plan.node(&entry.node_id).is_some_and(Node::is_reference) {
                return InventoryEntry {
                    node_id: format!(
                        "{REFERENCED_PREFIX}{}/{}/{}",
                        entry.node_id, entry.kind, entry.name
                    ),
                    deletion_policy: Some(DeletionPolicy::Orphan),
                    ..entry.clone()
                };
            }
            let rendered = plan.node(&entry.node_id).and_then(|n| n.object.as_ref());
            let Some(object) = rendered else {
                // Not in the graph (pruned as usual), or pending on an export: nothing to compare.
                return entry.clone();
            };
            let field = |p: &str| {
                object
                    .pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            };
            let same = group(field("/apiVersion")) == group(&entry.api_version)
                && field("/kind") == entry.kind
                && field("/metadata/name") == entry.name;
            if same {
                entry.clone()
            } else {
                InventoryEntry {
                    node_id: format!("replaced:{}/{}/{}", entry.node_id, entry.kind, entry.name),
                    ..entry.clone()
                }
            }
        })
        .collect()
}

/// The node-id prefix of an inventory entry whose node became a `Reference`
/// ([`starting_inventory`]).
pub const REFERENCED_PREFIX: &str = "referenced:";

/// What a pass may prune: entries of the stored inventory whose node left the graph, last
/// applied first, each with how it goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrunePlan {
    /// Entries to delete or release, in that order.
    pub entries: Vec<(InventoryEntry, DeletionPolicy)>,
    /// Why nothing is pruned although entries left the graph (`None` when pruning goes ahead
    /// or there is nothing to prune).
    pub held_back: Option<String>,
    /// Set when the prune guard held the pass back (its message, also in `held_back`): the
    /// render would delete more of the inventory than the instance's threshold allows. The
    /// instance is Stalled with reason `PruneGuard` until the render changes or the threshold
    /// is raised.
    pub guarded: Option<String>,
}

/// The prune rule, shared by the executor and `diff`: only a complete, healthy pass (every node
/// of the graph Ready or Applied) prunes; an entry whose node left the graph is deleted, or
/// released when its node asked for `Orphan`; entries already `Orphaned` are left alone.
///
/// The prune guard: a pass that would delete more than `threshold` percent of the instance's
/// inventory (a module bug that drops nodes, a spec emptied by mistake) deletes nothing and
/// says which objects would go ([`PrunePlan::guarded`]). Releasing (`Orphan`) leaves objects
/// in place, so it does not count.
///
/// `phase_of` says where each node of the graph ended the pass (`None`: not decided).
///
/// ```
/// use cuebe_core::graph::DeletionPolicy;
/// use cuebe_core::instance::PruneThreshold;
/// use cuebe_core::plan::prune_plan;
/// use cuebe_core::inventory::{InventoryEntry, InventoryMode};
/// use cuebe_core::status::NodePhase;
/// let entry = |id: &str| InventoryEntry { node_id: id.into(), api_version: "v1".into(), kind: "ConfigMap".into(),
///     namespace: "apps".into(), name: id.into(), uid: "u".into(), mode: InventoryMode::Managed,
///     last_applied_hash: String::new(), last_applied_resource_version: String::new(),
///     last_applied_generation: None, last_ready_transition: None, deletion_policy: None };
/// let ready = |_: &str| Some(NodePhase::Ready);
/// let half = PruneThreshold::Percent(50);
/// let plan = prune_plan(&["kept"], &[entry("kept"), entry("gone")], ready, &half);
/// assert_eq!(plan.entries, [(entry("gone"), DeletionPolicy::Delete)]);
/// // Dropping two objects of three is more than half: the guard holds.
/// let plan = prune_plan(&["kept"], &[entry("kept"), entry("a"), entry("b")], ready, &half);
/// assert!(plan.entries.is_empty());
/// assert!(plan.guarded.unwrap().contains("ConfigMap a"));
/// ```
pub fn prune_plan(
    graph_ids: &[&str],
    inventory: &[InventoryEntry],
    phase_of: impl Fn(&str) -> Option<NodePhase>,
    threshold: &PruneThreshold,
) -> PrunePlan {
    let in_graph: HashSet<&str> = graph_ids.iter().copied().collect();
    let stale: Vec<(InventoryEntry, DeletionPolicy)> = inventory
        .iter()
        .rev()
        .filter(|e| !in_graph.contains(e.node_id.as_str()) && e.mode != InventoryMode::Orphaned)
        .map(|e| (e.clone(), entry_policy(e, DeletionPolicy::Delete)))
        .collect();
    if stale.is_empty() {
        return PrunePlan::default();
    }
    let unhealthy: Vec<String> = graph_ids
        .iter()
        .filter(|id| !matches!(phase_of(id), Some(NodePhase::Ready | NodePhase::Applied)))
        .map(|id| id.to_string())
        .collect();
    if !unhealthy.is_empty() {
        return PrunePlan {
            held_back: Some(format!(
                "not pruned while {} {} not Ready or Applied",
                unhealthy.join(", "),
                if unhealthy.len() == 1 { "is" } else { "are" }
            )),
            ..PrunePlan::default()
        };
    }
    if let Some(message) = prune_guard(inventory, &stale, threshold) {
        return PrunePlan {
            entries: Vec::new(),
            held_back: Some(message.clone()),
            guarded: Some(message),
        };
    }
    PrunePlan {
        entries: stale,
        ..PrunePlan::default()
    }
}

/// The guard's verdict: `Some(message)` when deleting the `Delete` entries of `stale` would
/// take more than `threshold` of the live inventory.
fn prune_guard(
    inventory: &[InventoryEntry],
    stale: &[(InventoryEntry, DeletionPolicy)],
    threshold: &PruneThreshold,
) -> Option<String> {
    let deleting: Vec<&InventoryEntry> = stale
        .iter()
        .filter(|(_, policy)| *policy == DeletionPolicy::Delete)
        .map(|(e, _)| e)
        .collect();
    if deleting.is_empty() {
        return None;
    }
    let managed = inventory
        .iter()
        .filter(|e| e.mode != InventoryMode::Orphaned)
        .count();
    let percent = match threshold {
        PruneThreshold::Invalid(message) => return Some(message.clone()),
        PruneThreshold::Percent(p) => usize::from(*p),
    };
    if deleting.len() * 100 <= percent * managed {
        return None;
    }
    let names: Vec<String> = deleting
        .iter()
        .map(|e| format!("{} {}", e.kind, e.name))
        .collect();
    Some(format!(
        "this render would delete {} of the {managed} objects of the instance ({}), more than \
         the prune threshold of {percent}%; nothing was pruned. If that is intended, set the \
         annotation {PRUNE_THRESHOLD_ANNOTATION}: \"100\" on the instance; otherwise fix the \
         spec or the module",
        deleting.len(),
        names.join(", "),
    ))
}

/// What removing one inventory object means: the instance's `Orphan` keeps everything;
/// otherwise a node that asked to be orphaned is released and the rest follow the instance.
///
/// ```
/// use cuebe_core::graph::DeletionPolicy::{Delete, Orphan};
/// use cuebe_core::plan::entry_policy;
/// # let mut e: cuebe_core::inventory::InventoryEntry = serde_json::from_value(serde_json::json!({
/// #   "nodeId": "n", "apiVersion": "v1", "kind": "ConfigMap", "name": "n", "mode": "Managed"})).unwrap();
/// assert_eq!(entry_policy(&e, Delete), Delete);
/// e.deletion_policy = Some(Orphan);
/// assert_eq!(entry_policy(&e, Delete), Orphan);
/// ```
pub fn entry_policy(entry: &InventoryEntry, instance: DeletionPolicy) -> DeletionPolicy {
    match (instance, entry.deletion_policy) {
        (DeletionPolicy::Orphan, _) | (_, Some(DeletionPolicy::Orphan)) => DeletionPolicy::Orphan,
        _ => DeletionPolicy::Delete,
    }
}

/// Identity and bookkeeping fields of a live object, as the decisions need them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveMeta {
    /// `metadata.uid`.
    pub uid: Option<String>,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.resourceVersion`.
    pub resource_version: Option<String>,
}

impl LiveMeta {
    /// Reads the fields from a live object as JSON.
    pub fn of(live: &Value) -> Self {
        let text = |p: &str| live.pointer(p).and_then(Value::as_str).map(str::to_string);
        Self {
            uid: text("/metadata/uid"),
            generation: live.pointer("/metadata/generation").and_then(Value::as_i64),
            resource_version: text("/metadata/resourceVersion"),
        }
    }
}

/// Whether the executor must read the live object before deciding: only when it can save the
/// write (same rendered hash as last time) or the mode needs to know whether the object exists
/// (no record of it yet, or `CreateOnly`/`AdoptOnly`).
pub fn needs_read(mode: ApplyMode, entry: Option<&InventoryEntry>, hash: &str) -> bool {
    let same_render = entry.is_some_and(|e| e.last_applied_hash == hash);
    let recorded = entry.is_some_and(|e| e.mode != InventoryMode::Orphaned);
    same_render || !recorded || mode != ApplyMode::CreateOrUpdate
}

/// The live object is exactly what our last apply left: same rendered hash, and its spec
/// generation (or, for objects without one, its `resourceVersion`) unchanged since. A
/// controller's status update does not count as a change.
pub fn is_unchanged(entry: Option<&InventoryEntry>, live: Option<&LiveMeta>, hash: &str) -> bool {
    match (entry, live) {
        (Some(e), Some(live)) if e.last_applied_hash == hash => {
            match (e.last_applied_generation, live.generation) {
                (Some(applied), Some(current)) => applied == current,
                _ => {
                    live.resource_version.as_deref()
                        == Some(e.last_applied_resource_version.as_str())
                }
            }
        }
        _ => false,
    }
}

/// The live object is the very one the inventory recorded (a recreated one has a new UID); an
/// unknown existing object goes to the adoption policy.
pub fn is_recorded_object(entry: Option<&InventoryEntry>, live: Option<&LiveMeta>) -> bool {
    let Some(e) = entry.filter(|e| e.mode != InventoryMode::Orphaned) else {
        return false;
    };
    live.is_some_and(|l| e.uid.is_empty() || l.uid.as_deref() == Some(e.uid.as_str()))
}

/// What to do about a node's object once its existence is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteDecision {
    /// Apply it (Server-Side Apply).
    Apply,
    /// Leave it as it is: unchanged since our last apply, or `CreateOnly` and present.
    Keep,
    /// `AdoptOnly` and there is nothing to adopt: the node is Blocked.
    NothingToAdopt,
    /// `Reference` and the object does not exist: the node is Pending
    /// ([`missing_reference`]); cuebe never creates it.
    MissingReference,
}

/// Decides whether to write, from the node's mode, whether the object exists and whether it is
/// unchanged since our last apply.
///
/// | mode           | exists | unchanged | decision       |
/// |----------------|--------|-----------|----------------|
/// | any            | yes    | yes       | Keep           |
/// | CreateOnly     | yes    | no        | Keep           |
/// | AdoptOnly      | no     | —         | NothingToAdopt |
/// | Reference      | yes    | —         | Keep           |
/// | Reference      | no     | —         | MissingReference |
/// | otherwise      |        |           | Apply          |
pub fn write_decision(mode: ApplyMode, exists: bool, unchanged: bool) -> WriteDecision {
    match (mode, exists) {
        (ApplyMode::Reference, true) => WriteDecision::Keep,
        (ApplyMode::Reference, false) => WriteDecision::MissingReference,
        (_, true) if unchanged => WriteDecision::Keep,
        (ApplyMode::CreateOnly, true) => WriteDecision::Keep,
        (ApplyMode::AdoptOnly, false) => WriteDecision::NothingToAdopt,
        _ => WriteDecision::Apply,
    }
}

/// Where the executor reads a child object from ([`read_source`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSource {
    /// The answer of our own last write of it, which the watch has not delivered yet.
    OwnWrite,
    /// The operator's watch cache of the kind (no request).
    Cache,
    /// One GET from the API server.
    Api,
}

/// What the operator's watch cache can say about one child object, for [`read_source`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheView {
    /// The kind's store has listed once and its watch runs (false for a kind not watched, or
    /// one the operator may not list and watch).
    pub synced: bool,
    /// The store keeps every field the renders read of this kind (objects are trimmed: a CEL
    /// predicate needs whole objects, an export its path).
    pub keeps_needed_fields: bool,
    /// Our own write's answer is remembered and the watch has not delivered it yet.
    pub own_write_pending: bool,
    /// The object is in the store.
    pub in_store: bool,
}

/// Where to read a child object from.
///
/// | synced | keeps fields | own write pending | in store | read from |
/// |--------|--------------|-------------------|----------|-----------|
/// | no     | —            | —                 | —        | Api       |
/// | yes    | no           | —                 | —        | Api       |
/// | yes    | yes          | yes               | —        | OwnWrite  |
/// | yes    | yes          | no                | yes      | Cache     |
/// | yes    | yes          | no                | no       | Api       |
///
/// Absent from the store is asked of the API server: the store only holds objects labelled
/// with the instance kind, so it cannot tell a deleted object from one that exists without our
/// labels (which adoption and the UID checks must see).
///
/// ```
/// use cuebe_core::plan::{CacheView, ReadSource, read_source};
/// let steady = CacheView { synced: true, keeps_needed_fields: true, own_write_pending: false, in_store: true };
/// assert_eq!(read_source(steady), ReadSource::Cache);
/// assert_eq!(read_source(CacheView { in_store: false, ..steady }), ReadSource::Api);
/// ```
pub fn read_source(view: CacheView) -> ReadSource {
    match view {
        CacheView { synced: false, .. }
        | CacheView {
            keeps_needed_fields: false,
            ..
        } => ReadSource::Api,
        CacheView {
            own_write_pending: true,
            ..
        } => ReadSource::OwnWrite,
        CacheView { in_store: true, .. } => ReadSource::Cache,
        CacheView { .. } => ReadSource::Api,
    }
}

/// Whether a node judged not Ready on the object at `judged` (its resourceVersion) is worth a
/// second look before the pass ends ([`Pass::take_rejudgeable`]): only when `delivered` — the
/// version the kind's watch delivered last, `None` while the store is not listed or while the
/// answer of our own write still waits for the watch — is another version: the watch
/// delivered a change since (a Deployment's status turning Available). resourceVersions are
/// compared for equality only, never ordered; [`second_look_applies`] then says whether the
/// cached object may be judged at all.
///
/// ```
/// use cuebe_core::plan::judge_again;
/// assert!(judge_again(Some("7"), Some(Some("9"))));
/// assert!(!judge_again(Some("7"), Some(Some("7"))));
/// assert!(!judge_again(Some("7"), None)); // not listed, or our write not delivered yet
/// ```
pub fn judge_again(judged: Option<&str>, delivered: Option<Option<&str>>) -> bool {
    match delivered {
        Some(Some(now)) => judged != Some(now),
        Some(None) | None => false,
    }
}

/// Whether the executor's second look at a waiting node may judge the object the watch cache
/// gives (`source`): only the watch's own copy ([`ReadSource::Cache`]: no request made, not
/// our write's answer), of the object the inventory records (`recorded`: same UID), unchanged
/// since our apply (`unchanged`: [`is_unchanged`], so nothing would be written). Anything else
/// keeps the first judgement for the next pass, which reads and writes as usual; and only a
/// Ready verdict replaces the first one, so a second look never makes a pass's result worse.
///
/// ```
/// use cuebe_core::plan::{ReadSource, second_look_applies};
/// assert!(second_look_applies(ReadSource::Cache, true, true));
/// assert!(!second_look_applies(ReadSource::Cache, true, false)); // changed: the next pass applies it
/// assert!(!second_look_applies(ReadSource::Api, true, true)); // would be a GET
/// ```
pub fn second_look_applies(source: ReadSource, recorded: bool, unchanged: bool) -> bool {
    source == ReadSource::Cache && recorded && unchanged
}

/// How long our own write's answer stands in for the watch at most (a watch that stalls
/// silently must not hide the object's later changes for ever).
pub const OWN_WRITE_TTL: Duration = Duration::from_secs(180);

/// Whether to remember the answer of our write (resourceVersion `written`) until the watch
/// delivers it: only when the store for that object still shows what it showed just before the
/// write (`before`, `now`: its resourceVersion, `None` when absent) — nothing was delivered
/// since, so the watch has not passed our write — and it does not show `written` already.
/// resourceVersions are compared for equality only, never ordered.
///
/// ```
/// use cuebe_core::plan::remember_own_write;
/// assert!(remember_own_write(Some("10"), Some("10"), "12"));
/// // The watch delivered something meanwhile (ours, or a later change): trust the store.
/// assert!(!remember_own_write(Some("10"), Some("13"), "12"));
/// ```
pub fn remember_own_write(before: Option<&str>, now: Option<&str>, written: &str) -> bool {
    before == now && now != Some(written)
}

/// What a kind's watch delivered, for [`settles_own_write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchDelivery<'a> {
    /// The object at this resourceVersion (added or modified).
    Applied(&'a str),
    /// The object was deleted.
    Deleted,
    /// The watch listed the kind again: the store is what the server has now.
    Relisted,
}

/// Whether a remembered write (its resourceVersion `remembered`) is settled by what the watch
/// delivered: its very version, a deletion, a relist. A version other than ours (a change
/// made before our write, delivered late) leaves it standing.
///
/// ```
/// use cuebe_core::plan::{WatchDelivery, settles_own_write};
/// assert!(settles_own_write("12", WatchDelivery::Applied("12")));
/// assert!(!settles_own_write("12", WatchDelivery::Applied("11")));
/// ```
pub fn settles_own_write(remembered: &str, delivered: WatchDelivery<'_>) -> bool {
    match delivered {
        WatchDelivery::Applied(version) => version == remembered,
        WatchDelivery::Deleted | WatchDelivery::Relisted => true,
    }
}

/// Whether an object read from the cache (or our own write's answer) must be read again from
/// the API server before deciding: when it is not the object the inventory recorded, the
/// adoption policy decides about it, and it sees the whole object as the server has it (the
/// cached copy is trimmed).
pub fn confirm_before_adopting(source: ReadSource, recorded: bool) -> bool {
    source != ReadSource::Api && !recorded
}

/// Where a `Reference` node's object is read from, in the shape the runtime's
/// `Executor::live` reads (apiVersion, kind, namespace, name): for reading its exports before
/// a pass. Never stored: a referenced object is never in the inventory. `None` for a node that
/// is not a reference or whose object is not rendered yet (pending on an export).
///
/// ```
/// use cuebe_core::graph::Node;
/// use cuebe_core::plan::reference_address;
/// let node: Node = serde_json::from_value(serde_json::json!({"id": "credentials",
///     "applyPolicy": {"mode": "Reference"},
///     "object": {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "queue"}}})).unwrap();
/// let address = reference_address(&node, "apps").unwrap();
/// assert_eq!((address.kind.as_str(), address.namespace.as_str(), address.name.as_str()), ("Secret", "apps", "queue"));
/// ```
pub fn reference_address(node: &Node, namespace: &str) -> Option<InventoryEntry> {
    let object = node.object.as_ref().filter(|_| node.is_reference())?;
    let text = |p: &str| {
        object
            .pointer(p)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Some(InventoryEntry {
        node_id: node.id.clone(),
        api_version: text("/apiVersion")?,
        kind: text("/kind")?,
        namespace: text("/metadata/namespace").unwrap_or_else(|| namespace.to_string()),
        name: text("/metadata/name")?,
        uid: String::new(),
        mode: InventoryMode::Managed,
        last_applied_hash: String::new(),
        last_applied_resource_version: String::new(),
        last_applied_generation: None,
        last_ready_transition: None,
        deletion_policy: None,
    })
}

/// The status of a `Reference` node whose object does not exist: `Pending` on
/// `object:<Kind>/<namespace>/<name>` (`object:<Kind>/<name>` when cluster-scoped), with a
/// message naming the object, so whoever reads the instance's status knows what to create.
/// Its dependents wait for it like for any node that is not Ready.
///
/// ```
/// use cuebe_core::plan::missing_reference;
/// let status = missing_reference("Secret", "apps", "queue-credentials");
/// assert_eq!(status.blocked_on, ["object:Secret/apps/queue-credentials"]);
/// assert!(status.ready_details.unwrap().contains("Secret apps/queue-credentials does not exist"));
/// ```
pub fn missing_reference(kind: &str, namespace: &str, name: &str) -> NodeStatus {
    let (path, shown) = if namespace.is_empty() {
        (format!("{kind}/{name}"), format!("{kind} {name}"))
    } else {
        (
            format!("{kind}/{namespace}/{name}"),
            format!("{kind} {namespace}/{name}"),
        )
    };
    NodeStatus::pending(
        vec![format!("object:{path}")],
        format!(
            "{shown} does not exist: this node only references it (cuebe reads it and never \
             creates it); the nodes that depend on it wait until it is created"
        ),
    )
}

/// How long an instance whose nodes are on their way to Ready waits for its next pass when
/// nothing else wakes it: [`PROGRESSING_RECHECK`], or less when a waiting node's readiness
/// timeout expires sooner (just after it, so that pass reports the node failed).
///
/// Why not a few seconds: every change of a child object reaches the instance through the
/// watches at once (a Deployment becoming Available wakes its WebService), so this pass is for
/// what no watch reports — a timeout expiring — and a safety net. At 10,000 instances a fixed
/// 5 s look again filled the work queue with instances still waiting (about 34 passes per
/// instance, 540 wanted per second against ~94 served) and starved the ones not yet seen.
/// `timeout` gives a node's readiness timeout ([`Plan::readiness_timeout`]).
///
/// ```
/// use std::collections::BTreeMap;
/// use std::time::Duration;
/// use cuebe_core::plan::{progressing_recheck, PROGRESSING_RECHECK};
/// use cuebe_core::status::NodeStatus;
/// let now = "2026-01-01T00:10:00Z".parse().unwrap();
/// let nodes = BTreeMap::from([("deployment".to_string(), NodeStatus::applied("0/1 available", "2026-01-01T00:09:50Z"))]);
/// // No timeout: the safety net.
/// assert_eq!(progressing_recheck(&nodes, |_| None, now), PROGRESSING_RECHECK);
/// // A 20 s timeout of which 10 s are gone: just after the other 10.
/// assert_eq!(progressing_recheck(&nodes, |_| Some(Duration::from_secs(20)), now), Duration::from_secs(11));
/// ```
pub fn progressing_recheck(
    nodes: &BTreeMap<String, NodeStatus>,
    timeout: impl Fn(&str) -> Option<Duration>,
    now: Timestamp,
) -> Duration {
    nodes
        .iter()
        .filter(|(_, status)| status.phase == NodePhase::Applied)
        .filter_map(|(id, status)| {
            let limit = timeout(id)?;
            let waited = elapsed_since(status.waiting_since.as_deref()?, now)?;
            Some(limit.saturating_sub(waited) + TIMEOUT_GRACE)
        })
        .fold(PROGRESSING_RECHECK, Duration::min)
}

/// The longest an instance on its way to Ready waits for a pass when no watch event and no
/// readiness timeout comes first (see [`progressing_recheck`]).
pub const PROGRESSING_RECHECK: Duration = Duration::from_secs(30);

/// How long after a readiness timeout the pass that reports it runs (the timeout is judged
/// with `>`: a pass exactly at it would still see the node waiting).
const TIMEOUT_GRACE: Duration = Duration::from_secs(1);

/// Judges an applied node against its readiness verdict and the clock: Ready, still Applied
/// (waiting since the first time it was seen waiting), or Error when the controller reports a
/// terminal failure or the smallest predicate timeout has expired. Returns the status and
/// whether the failure is terminal.
///
/// The node's health comes with it and never changes its phase; a health the object cannot
/// tell right now ([`Health::Unknown`]: a CronJob's run in progress) keeps the last judgement
/// from `previous`, so a failed run stays reported while the next one runs.
///
/// ```
/// use std::time::Duration;
/// use cuebe_core::plan::judge;
/// use cuebe_core::readiness::Verdict;
/// use cuebe_core::status::{NodePhase, NodeStatus};
/// let waiting = Verdict { ready: false, details: "0/1 available".into(), terminal: None, health: None };
/// let now = "2026-01-01T00:10:00Z".parse().unwrap();
/// let before = NodeStatus::applied("0/1 available", "2026-01-01T00:00:00Z");
/// let (status, terminal) = judge(&waiting, Some(&before), Some(Duration::from_secs(300)), now);
/// assert_eq!(status.phase, NodePhase::Error);
/// assert!(terminal);
/// ```
pub fn judge(
    verdict: &Verdict,
    previous: Option<&NodeStatus>,
    timeout: Option<Duration>,
    now: Timestamp,
) -> (NodeStatus, bool) {
    let (status, terminal) = judge_readiness(verdict, previous, timeout, now);
    let Some(judged) = &verdict.health else {
        return (status, terminal);
    };
    let last = previous.and_then(|p| {
        p.health
            .filter(|h| *h != Health::Unknown)
            .map(|h| (h, p.health_details.clone().unwrap_or_default()))
    });
    let (health, details) = match (judged.health, last) {
        (Health::Unknown, Some(last)) => last,
        (health, _) => (health, judged.details.clone()),
    };
    (status.with_health(health, details), terminal)
}

fn judge_readiness(
    verdict: &Verdict,
    previous: Option<&NodeStatus>,
    timeout: Option<Duration>,
    now: Timestamp,
) -> (NodeStatus, bool) {
    if let Some(terminal) = &verdict.terminal {
        return (
            NodeStatus::error(terminal.clone()).with_details(verdict.details.clone()),
            true,
        );
    }
    if verdict.ready {
        return (NodeStatus::ready(verdict.details.clone()), false);
    }
    // An expired timeout stays expired: keep the first time the node was seen waiting.
    let since = previous
        .filter(|s| matches!(s.phase, NodePhase::Applied | NodePhase::Error))
        .and_then(|s| s.waiting_since.clone())
        .unwrap_or_else(|| now.to_string());
    match (timeout, elapsed_since(&since, now)) {
        (Some(t), Some(waited)) if waited > t => (
            NodeStatus::error(format!("not ready after {t:?}: {}", verdict.details))
                .with_details(verdict.details.clone())
                .waiting_since(since),
            true,
        ),
        _ => (NodeStatus::applied(verdict.details.clone(), since), false),
    }
}

/// The inventory entry a node has after this pass applied (or kept) its object.
///
/// What our last apply left (`resourceVersion`, `generation`) is kept when this pass wrote
/// nothing, so later status updates by the object's controller are not mistaken for our
/// writes; a node newly Ready records the transition time.
#[derive(Debug, Clone)]
pub struct EntryUpdate<'a> {
    /// The node.
    pub node: &'a Node,
    /// Its entry before this pass.
    pub previous: Option<&'a InventoryEntry>,
    /// apiVersion, kind and name of the object.
    pub identity: (&'a str, &'a str, &'a str),
    /// The live object's namespace.
    pub namespace: String,
    /// The live object's identity fields.
    pub live: &'a LiveMeta,
    /// The rendered object's hash.
    pub hash: String,
    /// This pass took the object over.
    pub adopted: bool,
    /// This pass wrote the object.
    pub wrote: bool,
}

impl EntryUpdate<'_> {
    /// The new entry.
    pub fn entry(self) -> InventoryEntry {
        let previous = self.previous;
        let mode = match self.node.apply_policy.mode {
            _ if self.adopted => InventoryMode::Adopted,
            ApplyMode::AdoptOnly => InventoryMode::Adopted,
            _ => previous
                .map(|e| e.mode)
                .filter(|m| *m != InventoryMode::Orphaned)
                .unwrap_or(InventoryMode::Managed),
        };
        let (api_version, kind, name) = self.identity;
        InventoryEntry {
            node_id: self.node.id.clone(),
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            namespace: self.namespace,
            name: name.to_string(),
            uid: self.live.uid.clone().unwrap_or_default(),
            mode,
            last_applied_hash: self.hash,
            last_applied_resource_version: match previous {
                Some(e) if !self.wrote && !e.last_applied_resource_version.is_empty() => {
                    e.last_applied_resource_version.clone()
                }
                _ => self.live.resource_version.clone().unwrap_or_default(),
            },
            last_applied_generation: match previous {
                Some(e) if !self.wrote && e.last_applied_generation.is_some() => {
                    e.last_applied_generation
                }
                _ => self.live.generation,
            },
            last_ready_transition: previous.and_then(|e| e.last_ready_transition.clone()),
            deletion_policy: self.node.deletion_policy,
        }
    }
}

/// The fleet-level prune guard: at most `limit` instances of an abstraction may prune in any
/// `window`. A module change that drops objects from many instances at once (a bad release, a
/// removed capability) then deletes from a few instances and holds the rest back, loudly (the
/// runtime reports it in events and the `cuebe_prune_paused` metric), instead of deleting
/// across the fleet in one resync. An instance that pruned within the window may prune again
/// (its next steps are not new damage).
///
/// ```
/// use std::time::Duration;
/// use cuebe_core::plan::FleetPruneGuard;
/// let mut guard = FleetPruneGuard::new(2, Duration::from_secs(600));
/// let t = |s: &str| s.parse().unwrap();
/// assert!(guard.admit("apps/a", t("2026-01-01T00:00:00Z")).is_ok());
/// assert!(guard.admit("apps/b", t("2026-01-01T00:01:00Z")).is_ok());
/// assert!(guard.admit("apps/c", t("2026-01-01T00:02:00Z")).is_err()); // paused
/// assert!(guard.admit("apps/c", t("2026-01-01T00:10:30Z")).is_ok());  // a's turn has passed
/// ```
#[derive(Debug, Clone)]
pub struct FleetPruneGuard {
    limit: usize,
    window: Duration,
    /// Instances that pruned, with when they first did within the window (oldest first).
    recent: std::collections::VecDeque<(String, Timestamp)>,
    last_held: Option<Timestamp>,
    held_total: u64,
}

impl FleetPruneGuard {
    /// The default: 50 instances per 10 minutes.
    pub const DEFAULT_LIMIT: usize = 50;
    /// The default window.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);

    /// A guard letting `limit` instances prune per `window` (a `limit` of 0 pauses all pruning).
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            window,
            recent: std::collections::VecDeque::new(),
            last_held: None,
            held_total: 0,
        }
    }

    fn expire(&mut self, now: Timestamp) {
        while let Some((_, at)) = self.recent.front() {
            match Duration::try_from(now.duration_since(*at)).ok() {
                Some(age) if age < self.window => break,
                // Expired (or from a clock that went back: not worth keeping).
                _ => {
                    self.recent.pop_front();
                }
            }
        }
    }

    /// May `instance` (namespace/name) prune now? `Err` says why not, for its status.
    pub fn admit(&mut self, instance: &str, now: Timestamp) -> Result<(), String> {
        self.expire(now);
        if self.recent.iter().any(|(key, _)| key == instance) {
            return Ok(());
        }
        if self.recent.len() < self.limit {
            self.recent.push_back((instance.to_string(), now));
            return Ok(());
        }
        self.last_held = Some(now);
        self.held_total += 1;
        Err(format!(
            "pruning is paused: {} instances already pruned objects in the last {}s (the fleet \
             prune limit); objects that left this instance's graph stay until the window \
             passes. Many instances losing objects at once is what a bad module release looks \
             like: check the module before raising the limit",
            self.recent.len(),
            self.window.as_secs()
        ))
    }

    /// Whether an instance was held back within the last window.
    pub fn paused(&self, now: Timestamp) -> bool {
        self.last_held
            .and_then(|at| Duration::try_from(now.duration_since(at)).ok())
            .is_some_and(|age| age < self.window)
    }

    /// Prune attempts held back since the start.
    pub fn held_total(&self) -> u64 {
        self.held_total
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }
}

impl Default for FleetPruneGuard {
    fn default() -> Self {
        Self::new(Self::DEFAULT_LIMIT, Self::DEFAULT_WINDOW)
    }
}

/// Why an instance may not render an object of a cluster-scoped kind, unless the abstraction
/// allows it: an instance belongs to its namespace, and a cluster-scoped object (a
/// ClusterRole, a Namespace, a webhook) reaches every tenant. `allowed` lists kinds as
/// `Kind.group` (`Kind` for the core group), as `kubectl api-resources` spells them.
///
/// ```
/// use cuebe_core::plan::cluster_scope_refusal;
/// let allowed = ["ClusterRole.rbac.authorization.k8s.io".to_string()];
/// assert_eq!(cluster_scope_refusal("rbac.authorization.k8s.io", "ClusterRole", &allowed), None);
/// let refusal = cluster_scope_refusal("", "Namespace", &allowed).unwrap();
/// assert!(refusal.contains("Namespace is cluster-scoped"));
/// ```
pub fn cluster_scope_refusal(group: &str, kind: &str, allowed: &[String]) -> Option<String> {
    let name = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    if allowed.contains(&name) {
        return None;
    }
    Some(format!(
        "{name} is cluster-scoped: an instance may only write objects in its own namespace \
         unless the operator allows the kind (Operator::allow_cluster_scoped([\"{name}\"])); \
         nothing of the graph was written"
    ))
}

/// [`cluster_scope_refusal`] for a `Reference` node: reading a cluster-scoped object is
/// reaching outside the instance's namespace too (a tenant could gate on, or export from, any
/// object of the kind), so the same allow-list decides.
///
/// ```
/// use cuebe_core::plan::reference_scope_refusal;
/// let refusal = reference_scope_refusal("storage.k8s.io", "StorageClass", &[]).unwrap();
/// assert!(refusal.contains("may only reference objects in its own namespace"));
/// assert_eq!(reference_scope_refusal("storage.k8s.io", "StorageClass", &["StorageClass.storage.k8s.io".into()]), None);
/// ```
pub fn reference_scope_refusal(group: &str, kind: &str, allowed: &[String]) -> Option<String> {
    cluster_scope_refusal(group, kind, allowed)?;
    let name = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    Some(format!(
        "{name} is cluster-scoped: an instance may only reference objects in its own namespace \
         unless the operator allows the kind (Operator::allow_cluster_scoped([\"{name}\"])); \
         nothing of the graph was written"
    ))
}

/// Whether the API server's refusal of a write will come back on every retry: then the node
/// fails terminally (the instance is Stalled with the server's message and retried slowly),
/// instead of being retried every few seconds for ever.
///
/// Permanent: the object is invalid (422: a bad value, an immutable field changed), malformed
/// (400), too large (413, or etcd's "request is too large"), or the operator may not write it
/// (403: RBAC must change first) or the server does not allow the verb (405). Everything else
/// — conflicts, throttling (429), timeouts, an unavailable server or webhook (5xx) — may pass.
///
/// ```
/// use cuebe_core::plan::is_permanent_refusal;
/// assert!(is_permanent_refusal(422, "Service \"web\" is invalid: spec.clusterIP: field is immutable"));
/// assert!(!is_permanent_refusal(503, "the server is currently unable to handle the request"));
/// ```
pub fn is_permanent_refusal(code: u16, message: &str) -> bool {
    match code {
        // A ResourceQuota refusal passes once quota is freed: retried, not stalled.
        403 if message.contains("exceeded quota") => false,
        400 | 403 | 405 | 413 | 415 | 422 => true,
        500 => message.contains("request is too large"),
        _ => false,
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
