//! The executor: applies a [`Plan`] to the cluster in dependency order and reports node state.
//!
//! Owns: the I/O of a pass — Server-Side Apply under the operator's field manager, reading live
//! objects (from the controller's watch caches where they can answer, see
//! [`crate::child_cache`]; else one GET), deleting and releasing — and nothing else: every
//! decision (the frontier, where to read from, whether to write, adoption, readiness against the
//! clock, what may be pruned) is a pure function of [`cuebe_core::plan`], table-tested there. It
//! never evaluates CUE.
//!
//! Workflow of [`Executor::execute`] (one reconcile pass): [`Pass::start`]; start applying what
//! [`Pass::take_startable`] gives, [`Pass::record`] each result as it comes and take again;
//! meanwhile (every 50 ms while applies are in flight) another look from the watch cache at
//! what [`Pass::take_rejudgeable`] gives (a Ready verdict is recorded, and its dependents
//! start); once nothing is startable or in flight, [`prune_plan`] says what leaves (only from a
//! complete, healthy pass), last applied first.
//! Deletion and pruning use the stored inventory only, so a module that no longer renders can
//! never block cleanup.
use std::collections::BTreeMap;
use std::sync::Arc;

pub use cuebe_core::plan::{Change, ChangeAction, FleetPruneGuard, Outcome};
use cuebe_core::plan::{
    EntryUpdate, LiveMeta, NodeResult, Pass, Plan, ReadSource, WriteDecision,
    cluster_scope_refusal, confirm_before_adopting, entry_policy, is_recorded_object, is_unchanged,
    missing_reference, needs_read, prune_plan, reference_scope_refusal, second_look_applies,
    starting_inventory, write_decision,
};
pub use cuebe_core::{INSTANCE_LABEL, KIND_LABEL, NAMESPACE_LABEL};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::access::AccessReviews;
use crate::child_cache::{ChildCache, ChildRef, Need};
use crate::discovery::Discovery;
use crate::graph::{ConflictPolicy, DeletionPolicy, Node};
use crate::instance::{Instance, PruneThreshold};
use crate::inventory::{InventoryEntry, InventoryMode};
use crate::lifecycle::{AdoptDecision, AdoptRequest, Adopter, ExplicitAdopter};
use crate::readiness::{DefaultReadiness, Readiness};
use crate::renderer::canonical_json;
use crate::status::{AbstractionStatus, NodeStatus};
use cuebe_core::inventory::{LabelledObject, foreign_owner};

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The API server does not serve the object's kind.
    #[error("{api_version} {kind} is not served by this cluster")]
    UnknownKind {
        /// apiVersion.
        api_version: String,
        /// kind.
        kind: String,
    },
    /// Discovery failed: the API server could not say which kinds it serves.
    #[error("discovering {api_version}: {source}")]
    Discovery {
        /// apiVersion asked for.
        api_version: String,
        /// The error.
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

/// Applies a [`Plan`] to the cluster: one pass per reconcile, deletion from the inventory.
///
/// [`SsaExecutor`] is the default. Wrap it to add behaviour around it (metrics, dry runs)
/// without forking it:
///
/// ```
/// use cuebe::executor::{ExecuteError, Executor, Outcome, SsaExecutor, Timestamp};
/// use cuebe::instance::Instance;
/// use cuebe::inventory::LabelledObject;
/// use cuebe::graph::DeletionPolicy;
/// use cuebe::plan::Plan;
/// use cuebe::inventory::InventoryEntry;
/// use cuebe::status::AbstractionStatus;
///
/// /// Counts the writes of every pass.
/// struct CountingExecutor { inner: SsaExecutor, writes: std::sync::atomic::AtomicUsize }
///
/// #[async_trait::async_trait]
/// impl Executor for CountingExecutor {
///     async fn execute(&self, instance: &Instance, plan: &Plan, previous: &AbstractionStatus,
///         now: Timestamp) -> Outcome {
///         let outcome = self.inner.execute(instance, plan, previous, now).await;
///         self.writes.fetch_add(outcome.writes, std::sync::atomic::Ordering::Relaxed);
///         outcome
///     }
///     async fn live(&self, entry: &InventoryEntry) -> Result<Option<serde_json::Value>, ExecuteError> {
///         self.inner.live(entry).await
///     }
///     async fn teardown(&self, instance: &Instance, inventory: &[InventoryEntry], policy: DeletionPolicy) -> Result<bool, ExecuteError> {
///         self.inner.teardown(instance, inventory, policy).await
///     }
///     async fn labelled(&self, instance: &Instance, kinds: &[(String, String)]) -> Result<Vec<LabelledObject>, ExecuteError> {
///         self.inner.labelled(instance, kinds).await
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// One reconcile pass over `plan`. `previous` is the status from the last pass (its
    /// `inventory` is the loaded inventory); `now` is the time readiness timeouts are judged
    /// against (read once from the controller's clock).
    async fn execute(
        &self,
        instance: &Instance,
        plan: &Plan,
        previous: &AbstractionStatus,
        now: Timestamp,
    ) -> Outcome;

    /// Reads the live object of an inventory entry (`None` when it is gone).
    async fn live(&self, entry: &InventoryEntry) -> Result<Option<Value>, ExecuteError>;

    /// Removes everything in an inventory, last applied first, under the instance's `policy`;
    /// an entry whose node asked for `Orphan` (`InventoryEntry::deletion_policy`) is orphaned
    /// whatever `policy` says. Returns true once every deleted object is gone (orphaned ones are
    /// only unlabelled). An object that now carries another instance's management labels is
    /// released from the inventory, never deleted ([`cuebe_core::inventory::foreign_owner`]).
    async fn teardown(
        &self,
        instance: &Instance,
        inventory: &[InventoryEntry],
        policy: DeletionPolicy,
    ) -> Result<bool, ExecuteError>;

    /// The objects of `kinds` (`apiVersion`, `kind`) in the instance's namespace that carry its
    /// management labels, for [`cuebe_core::inventory::unrecorded_entries`]: how the controller
    /// finds objects a pass wrote but never recorded (the operator died between the apply and
    /// the inventory's store). Required, with no default: a wrapper that forgot to forward it
    /// would silently turn that safety net off.
    async fn labelled(
        &self,
        instance: &Instance,
        kinds: &[(String, String)],
    ) -> Result<Vec<LabelledObject>, ExecuteError>;
}

pub use cuebe_core::clock::Timestamp;

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
    discovery: Discovery,
    fleet_prune_guard: Arc<std::sync::Mutex<FleetPruneGuard>>,
    access: AccessReviews,
    cluster_scoped_allowed: Arc<[String]>,
    /// The controller's watch caches of child kinds, read instead of a GET where they can
    /// answer (see [`crate::child_cache`]).
    children: Option<ChildCache>,
    /// A label of the instance every object it applies carries as well (a shard's assignment).
    carried_label: Option<String>,
}

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

/// Whether an API error will come back on every retry ([`cuebe_core::plan::is_permanent_refusal`]).
fn is_permanent(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if cuebe_core::plan::is_permanent_refusal(s.code, &s.message))
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
    /// adoption policy, and a discovery cache of its own.
    pub fn new(client: Client, field_manager: impl Into<String>) -> Self {
        Self {
            client: client.clone(),
            field_manager: field_manager.into(),
            readiness: Arc::new(DefaultReadiness),
            adopter: Arc::new(ExplicitAdopter),
            discovery: Discovery::default(),
            fleet_prune_guard: Arc::default(),
            access: AccessReviews::new(client),
            cluster_scoped_allowed: Arc::from([]),
            children: None,
            carried_label: None,
        }
    }

    /// Reads child objects from `cache` where it can answer (steady state: no request at all)
    /// instead of a GET per object per pass; the [`crate::controller::Operator`] sets the one
    /// its watches fill. Without it every read is a GET.
    ///
    /// ```no_run
    /// # fn f(client: kube::Client) {
    /// let cache = cuebe::child_cache::ChildCache::new(client.clone(), None, "WebService");
    /// let executor = cuebe::executor::SsaExecutor::new(client, "cuebe-webservice")
    ///     .with_child_cache(cache);
    /// # }
    /// ```
    pub fn with_child_cache(mut self, cache: ChildCache) -> Self {
        self.children = Some(cache);
        self
    }

    /// Copies the instance's label `key` (when it has one) onto every object it applies: a
    /// sharded operator carries the instance's shard assignment to its children, so the shard
    /// that owns the instance watches them too (see [`crate::ops::shard`]). `None`: nothing
    /// carried.
    ///
    /// ```no_run
    /// # fn f(client: kube::Client) {
    /// let executor = cuebe::executor::SsaExecutor::new(client, "cuebe-webservice")
    ///     .carry_instance_label(Some("shard.alpha.sharding.timebertt.dev/webservices".into()));
    /// # }
    /// ```
    pub fn carry_instance_label(mut self, key: Option<String>) -> Self {
        self.carried_label = key;
        self
    }

    /// Cluster-scoped kinds its instances may write, as `Kind.group` (`Kind` for the core
    /// group). Any other cluster-scoped kind a graph renders is Blocked before anything of the
    /// graph is written ([`cuebe_core::plan::cluster_scope_refusal`]).
    ///
    /// ```no_run
    /// # fn f(client: kube::Client) {
    /// let executor = cuebe::executor::SsaExecutor::new(client, "cuebe-tenant")
    ///     .allow_cluster_scoped(["ClusterRole.rbac.authorization.k8s.io"]);
    /// # }
    /// ```
    pub fn allow_cluster_scoped(
        mut self,
        kinds: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.cluster_scoped_allowed = kinds.into_iter().map(Into::into).collect();
        self
    }

    /// Replaces the fleet prune guard (by default 50 instances may prune per 10 minutes; see
    /// [`FleetPruneGuard`]). Share one guard between executors of the same abstraction.
    ///
    /// ```no_run
    /// # fn f(client: kube::Client) {
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// use cuebe::executor::{FleetPruneGuard, SsaExecutor};
    /// let guard = Arc::new(Mutex::new(FleetPruneGuard::new(200, Duration::from_secs(300))));
    /// let executor = SsaExecutor::new(client, "cuebe-example").with_fleet_prune_guard(guard);
    /// # }
    /// ```
    pub fn with_fleet_prune_guard(mut self, guard: Arc<std::sync::Mutex<FleetPruneGuard>>) -> Self {
        self.fleet_prune_guard = guard;
        self
    }

    /// The fleet prune guard this executor consults (the operator's metrics read it).
    pub fn fleet_prune_guard(&self) -> Arc<std::sync::Mutex<FleetPruneGuard>> {
        self.fleet_prune_guard.clone()
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

    /// Shares the operator's discovery cache (so a controller restart on API changes also
    /// refreshes where this executor applies each kind).
    pub fn with_discovery(mut self, discovery: Discovery) -> Self {
        self.discovery = discovery;
        self
    }

    /// The discovery cache it applies with (share it to ask the server once).
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
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
        Ok(self.resolve(api_version, kind, namespace).await?.0)
    }

    /// The API of a kind, and whether it is namespaced.
    async fn resolve(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
    ) -> Result<(Api<DynamicObject>, bool), ExecuteError> {
        let found = self
            .discovery
            .resource(&self.client, api_version, kind)
            .await
            .map_err(|source| ExecuteError::Discovery {
                api_version: api_version.to_string(),
                source,
            })?;
        let Some((ar, namespaced)) = found else {
            return Err(ExecuteError::UnknownKind {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
            });
        };
        Ok(if namespaced {
            (
                Api::namespaced_with(self.client.clone(), namespace, &ar),
                true,
            )
        } else {
            (Api::all_with(self.client.clone(), &ar), false)
        })
    }

    /// Before a pass writes anything: the nodes whose kind this instance may not write — a
    /// cluster-scoped kind the abstraction does not allow, or a verb the operator's RBAC
    /// lacks — each Blocked with the reason. Kinds discovery cannot resolve are left to the
    /// apply, which reports them.
    /// A `Reference` node's kind is only read: the read verbs are checked for it, and a
    /// cluster-scoped kind needs the allow-list all the same.
    async fn preflight(&self, instance: &Instance, plan: &Plan) -> BTreeMap<String, NodeStatus> {
        let mut verdicts: BTreeMap<(String, String, bool), Option<String>> = BTreeMap::new();
        let mut refused = BTreeMap::new();
        for node in &plan.graph().nodes {
            let Some(object) = node.object.as_ref().filter(|_| !node.is_pending()) else {
                continue;
            };
            let (api_version, kind, _) = identity_of(object);
            let key = (api_version.clone(), kind.clone(), node.is_reference());
            if !verdicts.contains_key(&key) {
                let verdict = self
                    .kind_refusal(instance, &api_version, &kind, node.is_reference())
                    .await;
                verdicts.insert(key.clone(), verdict);
            }
            if let Some(Some(message)) = verdicts.get(&key) {
                let done = if node.is_reference() {
                    "not read"
                } else {
                    "not written"
                };
                refused.insert(
                    node.id.clone(),
                    NodeStatus::blocked(message.clone(), Some(done.into())),
                );
            }
        }
        refused
    }

    async fn kind_refusal(
        &self,
        instance: &Instance,
        api_version: &str,
        kind: &str,
        reference: bool,
    ) -> Option<String> {
        let (ar, namespaced) = self
            .discovery
            .resource(&self.client, api_version, kind)
            .await
            .ok()
            .flatten()?;
        let scope_refusal = if reference {
            reference_scope_refusal
        } else {
            cluster_scope_refusal
        };
        if !namespaced
            && let Some(refusal) = scope_refusal(&ar.group, kind, &self.cluster_scoped_allowed)
        {
            return Some(refusal);
        }
        let namespace = namespaced.then_some(instance.namespace.as_str());
        let verbs: &[&'static str] = if reference {
            &crate::access::REFERENCE_VERBS
        } else {
            &crate::access::NEEDED_VERBS
        };
        let verb = self
            .access
            .missing_among(verbs, &ar.group, &ar.plural, namespace)
            .await?;
        let resource = if ar.group.is_empty() {
            ar.plural.clone()
        } else {
            format!("{}.{}", ar.plural, ar.group)
        };
        let place = match namespace {
            Some(ns) => format!("in namespace {ns}"),
            None => "cluster-wide".into(),
        };
        Some(format!(
            "forbidden: the operator may not {verb} {resource} {place} (a SelfSubjectAccessReview \
             said no); grant it to the operator's service account (its ClusterRole); nothing of \
             the graph was written"
        ))
    }

    async fn read_live(
        &self,
        entry: &InventoryEntry,
        need: Need,
    ) -> Result<Option<Value>, ExecuteError> {
        let api = self
            .api_for(&entry.api_version, &entry.kind, &entry.namespace)
            .await?;
        let (live, _) = self
            .read_child(&api, child_of(entry), need)
            .await
            .map_err(|source| ExecuteError::Api {
                what: format!("reading {} {}", entry.kind, entry.name),
                source,
            })?;
        Ok(live)
    }

    /// Reads one child object: from the watch cache or our own write's answer where they can
    /// answer ([`cuebe_core::plan::read_source`]), else with a GET.
    async fn read_child(
        &self,
        api: &Api<DynamicObject>,
        child: ChildRef<'_>,
        need: Need,
    ) -> Result<(Option<Value>, ReadSource), kube::Error> {
        if let Some(cache) = &self.children {
            let (source, cached) = cache.lookup(child, need);
            if source != ReadSource::Api {
                let live = cached.and_then(|o| serde_json::to_value(&*o).ok());
                return Ok((live, source));
            }
        }
        let live = api.get_opt(child.name).await?;
        Ok((
            live.and_then(|o| serde_json::to_value(o).ok()),
            ReadSource::Api,
        ))
    }

    async fn pass<'p>(
        &self,
        instance: &Instance,
        plan: &'p Plan,
        previous: &AbstractionStatus,
        now: Timestamp,
    ) -> Outcome {
        // A node that renders another object than the one recorded (a rename) gets the new
        // one; the old one is pruned with the entries that left the graph.
        let inventory = starting_inventory(plan, &previous.inventory);
        if let Some(cache) = &self.children {
            // What this plan reads of each kind (CEL predicates, export paths) must be in the
            // cached objects before the cache answers for the kind.
            for ((api_version, kind), need) in crate::child_cache::needs_of(plan.graph()) {
                cache.require(&api_version, &kind, &need);
            }
        }
        let mut pass = Pass::start(plan, &inventory);
        let refused = self.preflight(instance, plan).await;
        if !refused.is_empty() {
            pass.refuse(refused);
            return pass.finish();
        }
        // The reconcile's span: each node's apply and readiness spans are its children.
        let reconcile_span = tracing::Span::current();
        // Each node starts as soon as its own dependencies are Ready, while others are still
        // in flight: a Deployment that needs only its ServiceAccount is not held back by the
        // Service beside it, whose create the API server serializes (ClusterIP allocation) and
        // which takes seconds when many are created at once.
        let apply = |node: &'p Node, entry: Option<InventoryEntry>| {
            let span = crate::spans::apply(node);
            let applied = tracing::Instrument::instrument(
                self.apply_node(instance, plan, node, previous, entry, now, &reconcile_span),
                span.clone(),
            );
            async move {
                let result = applied.await;
                crate::spans::record_apply(&span, node, &result);
                (node, result)
            }
        };
        let delivered = |entry: &InventoryEntry| {
            self.children
                .as_ref()
                .and_then(|cache| cache.delivered_version(child_of(entry)))
        };
        let mut in_flight = futures::stream::FuturesUnordered::new();
        loop {
            for node in pass.take_startable() {
                in_flight.push(apply(node, pass.entry(&node.id).cloned()));
            }
            // A look, from the watch cache and without a request, at the nodes still waiting
            // whose objects the watch changed since they were judged: a Deployment that
            // turned Available while the Service beside it still waits for its ClusterIP is
            // Ready now, so what depends on it starts without waiting for the Service, and
            // the instance is not written Progressing now and Ready a moment later. Only a
            // Ready verdict is recorded.
            let mut promoted = false;
            for node in pass.take_rejudgeable(delivered) {
                let entry = pass.entry(&node.id).cloned();
                if let Some(ready) =
                    self.second_look(plan, node, previous, entry, now, &reconcile_span)
                {
                    pass.record(&node.id, ready);
                    promoted = true;
                }
            }
            if promoted {
                // Their dependents may start now.
                continue;
            }
            let busy = !in_flight.is_empty();
            let next = if self.children.is_some() && busy {
                // While applies are in flight, look again every LOOK_AGAIN_EVERY.
                tokio::select! {
                    next = futures::StreamExt::next(&mut in_flight) => next,
                    () = tokio::time::sleep(LOOK_AGAIN_EVERY) => continue,
                }
            } else {
                futures::StreamExt::next(&mut in_flight).await
            };
            let Some((node, result)) = next else {
                break;
            };
            pass.record(&node.id, result);
        }
        pass.close();
        let ids: Vec<&str> = plan.graph().nodes.iter().map(|n| n.id.as_str()).collect();
        let prune = prune_plan(
            &ids,
            &inventory,
            |id| pass.nodes().get(id).map(|s| s.phase),
            &PruneThreshold::of(instance),
        );
        if let Some(message) = prune.guarded {
            tracing::warn!(instance = %instance.name, namespace = %instance.namespace, %message, "prune guard: nothing pruned");
            pass.prune_guarded(message);
            return pass.into_outcome();
        }
        if let Some(reason) = &prune.held_back {
            tracing::debug!(instance = %instance.name, %reason, "pruning held back");
        }
        let deletes = prune
            .entries
            .iter()
            .any(|(_, policy)| *policy == DeletionPolicy::Delete);
        if deletes {
            let key = format!("{}/{}", instance.namespace, instance.name);
            let admitted = self
                .fleet_prune_guard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .admit(&key, now);
            if let Err(message) = admitted {
                tracing::warn!(instance = %instance.name, namespace = %instance.namespace, %message, "fleet prune guard: pruning paused");
                pass.prune_paused(message);
                return pass.into_outcome();
            }
        }
        for (entry, policy) in prune.entries {
            match self.read_live(&entry, Need::Metadata).await {
                Ok(Some(live)) => {
                    if let Some(owner) = foreign_owner(&live, instance) {
                        tracing::warn!(kind = %entry.kind, name = %entry.name, %owner,
                            "left the graph and is managed by another instance; released, not deleted");
                        pass.pruned(&entry, None);
                        continue;
                    }
                }
                Ok(None) => {
                    pass.pruned(&entry, None);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(node = %entry.node_id, error = %e, "prune failed; will retry");
                    continue;
                }
            }
            match self.remove(&entry, policy).await {
                Ok(wrote) => pass.pruned(
                    &entry,
                    wrote.then_some(match policy {
                        DeletionPolicy::Delete => ChangeAction::Pruned,
                        DeletionPolicy::Orphan => ChangeAction::Released,
                    }),
                ),
                Err(e) => {
                    tracing::warn!(node = %entry.node_id, error = %e, "prune failed; will retry")
                }
            }
        }
        pass.into_outcome()
    }

    // The reconcile span parents the readiness span (a sibling of this node's apply span).
    #[allow(clippy::too_many_arguments)]
    async fn apply_node(
        &self,
        instance: &Instance,
        plan: &Plan,
        node: &Node,
        previous: &AbstractionStatus,
        entry: Option<InventoryEntry>,
        now: Timestamp,
        reconcile_span: &tracing::Span,
    ) -> NodeResult {
        let error =
            |message: String| NodeResult::unwritten(NodeStatus::error(message), entry.clone());
        let Some(mut object) = node.object.clone() else {
            return error("no object (pending)".into());
        };
        if node.is_reference() {
            return self
                .read_reference(instance, plan, node, &object, previous, now, reconcile_span)
                .await;
        }
        let (api_version, kind, name) = identity_of(&object);
        let api = match self.resolve(&api_version, &kind, &instance.namespace).await {
            Ok((api, namespaced)) => {
                stamp_labels(
                    &mut object,
                    instance,
                    namespaced,
                    self.carried_label.as_deref(),
                );
                api
            }
            Err(e) => return error(e.to_string()),
        };
        let child = ChildRef {
            api_version: &api_version,
            kind: &kind,
            namespace: &instance.namespace,
            name: &name,
        };
        let hash = object_hash(&object);
        let read_failed = |e: kube::Error| NodeResult {
            terminal: is_permanent(&e),
            ..error(format!("reading {kind} {name}: {}", api_message(&e)))
        };
        let mut existing = None;
        if needs_read(node.apply_policy.mode, entry.as_ref(), &hash) {
            let (mut live, source) = match self.read_child(&api, child, Need::Fields).await {
                Ok(read) => read,
                Err(e) => return read_failed(e),
            };
            let meta = live.as_ref().map(LiveMeta::of);
            if live.is_some()
                && confirm_before_adopting(
                    source,
                    is_recorded_object(entry.as_ref(), meta.as_ref()),
                )
            {
                // Not the object the inventory recorded: the adoption policy decides on the
                // whole object as the server has it, not on a trimmed copy.
                live = match api.get_opt(&name).await {
                    Ok(o) => o.and_then(|o| serde_json::to_value(o).ok()),
                    Err(e) => return read_failed(e),
                };
            }
            existing = live;
        }
        if let Some(owner) = existing
            .as_ref()
            .and_then(|live| foreign_owner(live, instance))
        {
            // Never take an object from another instance, recorded or not: two instances whose
            // modules render one name would otherwise overwrite each other on every pass.
            return NodeResult::unwritten(
                NodeStatus::blocked(
                    format!(
                        "{kind} {name} is managed by {owner} (its {INSTANCE_LABEL} and {KIND_LABEL} \
                         labels): two instances render the same object; rename one of them"
                    ),
                    Some("not written: another instance owns it".into()),
                ),
                entry,
            );
        }
        let existing_meta = existing.as_ref().map(LiveMeta::of);
        let unchanged = is_unchanged(entry.as_ref(), existing_meta.as_ref(), &hash);
        let mut adopted = false;
        if let Some(live) = existing
            .as_ref()
            .filter(|_| !is_recorded_object(entry.as_ref(), existing_meta.as_ref()))
        {
            let request = AdoptRequest {
                instance,
                node,
                existing: live,
                field_manager: &self.field_manager,
            };
            match self.adopter.decide(&request) {
                AdoptDecision::Ours => {}
                AdoptDecision::Adopt => adopted = true,
                AdoptDecision::Refuse(message) => {
                    return NodeResult::unwritten(
                        NodeStatus::blocked(
                            message,
                            Some("not adopted: nothing was written".into()),
                        ),
                        entry,
                    );
                }
            }
        }
        let mut writes = 0;
        let live = match (
            write_decision(node.apply_policy.mode, existing.is_some(), unchanged),
            existing,
        ) {
            (WriteDecision::Keep, Some(live)) => live,
            (WriteDecision::MissingReference, _) => {
                // Unreachable: a Reference node is read in `read_reference`, never here.
                return NodeResult::unwritten(
                    missing_reference(&kind, &instance.namespace, &name),
                    None,
                );
            }
            (WriteDecision::NothingToAdopt, _) => {
                return NodeResult::unwritten(
                    NodeStatus::blocked(
                        format!("AdoptOnly: no existing {kind} {name} to adopt"),
                        None,
                    ),
                    entry,
                );
            }
            _ => {
                let mut params = PatchParams::apply(&self.field_manager);
                if node.apply_policy.conflict_policy == ConflictPolicy::Force {
                    params = params.force();
                }
                writes += 1;
                // What the cache shows just before the write, to tell afterwards whether its
                // watch has delivered anything since.
                let before = self.children.as_ref().and_then(|c| c.version_of(child));
                match api.patch(&name, &params, &Patch::Apply(&object)).await {
                    Ok(applied) => {
                        if let Some(cache) = &self.children {
                            cache.wrote(child, before, &applied);
                        }
                        serde_json::to_value(applied).unwrap_or(Value::Null)
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        return NodeResult {
                            writes,
                            ..NodeResult::unwritten(
                                NodeStatus::blocked(
                                    describe_conflict(&status),
                                    Some("conflictPolicy: Fail — nothing was overwritten".into()),
                                ),
                                entry,
                            )
                        };
                    }
                    Err(e) => {
                        // A refusal that will repeat (invalid, immutable, too large, forbidden)
                        // stalls the instance with the server's message; others are retried.
                        return NodeResult {
                            terminal: is_permanent(&e),
                            ..error(format!("applying {kind} {name}: {}", api_message(&e)))
                        };
                    }
                }
            }
        };
        let live_meta = LiveMeta::of(&live);
        let new_entry = EntryUpdate {
            node,
            previous: entry.as_ref(),
            identity: (&api_version, &kind, &name),
            namespace: live
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            live: &live_meta,
            hash,
            adopted,
            wrote: writes > 0,
        }
        .entry();
        self.judge_live(
            plan,
            node,
            previous,
            new_entry,
            live,
            now,
            reconcile_span,
            writes,
        )
    }

    /// Judges `live`, the object of `node` as this pass left or found it, by its readiness
    /// predicates against the clock.
    // The reconcile span parents the readiness span (a sibling of this node's apply span).
    #[allow(clippy::too_many_arguments)]
    fn judge_live(
        &self,
        plan: &Plan,
        node: &Node,
        previous: &AbstractionStatus,
        mut new_entry: InventoryEntry,
        live: Value,
        now: Timestamp,
        reconcile_span: &tracing::Span,
        writes: usize,
    ) -> NodeResult {
        let predicates = plan.predicates(&node.id);
        let readiness_span = crate::spans::readiness(reconcile_span, node);
        let _judging = readiness_span.enter();
        let verdict = match self.readiness.evaluate(&predicates, &live) {
            Ok(v) => v,
            Err(e) => {
                crate::spans::record_readiness(&readiness_span, &NodeStatus::error(e.to_string()));
                // A predicate that cannot be evaluated is a module bug: retrying will not help.
                return NodeResult {
                    status: NodeStatus::error(e.to_string()),
                    terminal: true,
                    entry: Some(new_entry),
                    live: None,
                    writes,
                };
            }
        };
        let timeout = plan.readiness_timeout(&node.id);
        let previous_node = previous.nodes.get(&node.id);
        let (status, terminal) = cuebe_core::plan::judge(&verdict, previous_node, timeout, now);
        crate::spans::record_readiness(&readiness_span, &status);
        let was_ready = previous_node.is_some_and(|s| s.phase == crate::status::NodePhase::Ready);
        if status.phase == crate::status::NodePhase::Ready && !was_ready {
            new_entry.last_ready_transition = Some(now.to_string());
        }
        NodeResult {
            terminal,
            status,
            entry: Some(new_entry),
            live: Some(live),
            writes,
        }
    }

    /// A second look at `node`, judged not Ready earlier in this pass, from the watch cache:
    /// `Some` only when the cache holds the watch's own copy of the object the inventory
    /// records, unchanged since our apply ([`second_look_applies`]), and its readiness gate
    /// passes now. Makes no request.
    // The reconcile span parents the readiness span, as for a node's first judgement.
    fn second_look(
        &self,
        plan: &Plan,
        node: &Node,
        previous: &AbstractionStatus,
        entry: Option<InventoryEntry>,
        now: Timestamp,
        reconcile_span: &tracing::Span,
    ) -> Option<NodeResult> {
        let (cache, entry) = (self.children.as_ref()?, entry?);
        let (source, cached) = cache.lookup(child_of(&entry), Need::Fields);
        let live = serde_json::to_value(&*cached?).ok()?;
        let meta = LiveMeta::of(&live);
        let recorded = is_recorded_object(Some(&entry), Some(&meta));
        let unchanged = is_unchanged(Some(&entry), Some(&meta), &entry.last_applied_hash);
        if !second_look_applies(source, recorded, unchanged) {
            return None;
        }
        let judged = self.judge_live(plan, node, previous, entry, live, now, reconcile_span, 0);
        (judged.status.phase == crate::status::NodePhase::Ready).then_some(judged)
    }

    /// A `Reference` node: read the object, nothing else — no labels, no adoption, no tenancy
    /// check (referencing another instance's object is what a shared ConfigMap is for), no
    /// inventory entry. Missing: Pending, naming it. Present: judged by its `readyWhen`, and its
    /// live object feeds the exports.
    // The reconcile span parents the readiness span (a sibling of this node's apply span).
    #[allow(clippy::too_many_arguments)]
    async fn read_reference(
        &self,
        instance: &Instance,
        plan: &Plan,
        node: &Node,
        object: &Value,
        previous: &AbstractionStatus,
        now: Timestamp,
        reconcile_span: &tracing::Span,
    ) -> NodeResult {
        let (api_version, kind, name) = identity_of(object);
        let failed = |message: String, terminal: bool| NodeResult {
            terminal,
            ..NodeResult::unwritten(NodeStatus::error(message), None)
        };
        let (api, namespaced) = match self.resolve(&api_version, &kind, &instance.namespace).await {
            Ok(resolved) => resolved,
            Err(e) => return failed(e.to_string(), false),
        };
        let live = match api.get_opt(&name).await {
            Ok(Some(o)) => serde_json::to_value(o).unwrap_or(Value::Null),
            Ok(None) => {
                let namespace = if namespaced {
                    instance.namespace.as_str()
                } else {
                    ""
                };
                return NodeResult::unwritten(missing_reference(&kind, namespace, &name), None);
            }
            Err(e) => {
                return failed(
                    format!("reading {kind} {name}: {}", api_message(&e)),
                    is_permanent(&e),
                );
            }
        };
        let predicates = plan.predicates(&node.id);
        let readiness_span = crate::spans::readiness(reconcile_span, node);
        let _judging = readiness_span.enter();
        let verdict = match self.readiness.evaluate(&predicates, &live) {
            Ok(v) => v,
            Err(e) => {
                crate::spans::record_readiness(&readiness_span, &NodeStatus::error(e.to_string()));
                return failed(e.to_string(), true);
            }
        };
        let timeout = plan.readiness_timeout(&node.id);
        let (status, terminal) =
            cuebe_core::plan::judge(&verdict, previous.nodes.get(&node.id), timeout, now);
        crate::spans::record_readiness(&readiness_span, &status);
        NodeResult {
            terminal,
            status,
            entry: None,
            live: Some(live),
            writes: 0,
        }
    }

    /// What applying `object` for `instance` would do, asked of the API server without writing
    /// anything: a server-side apply with `dryRun=All` under this executor's field manager
    /// (forced, as a `Force` node is), next to the object as it is now.
    ///
    /// ```no_run
    /// # async fn f(client: kube::Client, instance: cuebe::instance::Instance) -> Result<(), cuebe::executor::ExecuteError> {
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
        let (api, namespaced) = self
            .resolve(&api_version, &kind, &instance.namespace)
            .await?;
        stamp_labels(
            &mut object,
            instance,
            namespaced,
            self.carried_label.as_deref(),
        );
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
        instance: &Instance,
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
                    if let Some(live) = self.read_live(entry, Need::Metadata).await? {
                        let uid = live.pointer("/metadata/uid").and_then(Value::as_str);
                        if !entry.uid.is_empty() && uid != Some(entry.uid.as_str()) {
                            // Someone replaced our object with one of the same name: it is not
                            // ours to delete, and a UID-preconditioned delete would fail for
                            // ever.
                            tracing::warn!(kind = %entry.kind, name = %entry.name,
                                "replaced by an object this instance did not create; released, not deleted");
                            continue;
                        }
                        if let Some(owner) = foreign_owner(&live, instance) {
                            // Another instance wrote it since (a name both render): theirs now.
                            tracing::warn!(kind = %entry.kind, name = %entry.name, %owner,
                                "managed by another instance; released, not deleted");
                            continue;
                        }
                        self.remove(entry, DeletionPolicy::Delete).await?;
                        all_gone = false;
                        // Wave by wave: wait for this object before the ones it depends on.
                        break;
                    }
                }
                DeletionPolicy::Orphan => {
                    // Unlabel only our own object: a same-name replacement is not ours to touch.
                    let live = self.read_live(entry, Need::Metadata).await?;
                    let uid = live
                        .as_ref()
                        .and_then(|l| l.pointer("/metadata/uid"))
                        .and_then(Value::as_str);
                    let foreign = live.as_ref().and_then(|l| foreign_owner(l, instance));
                    if live.is_some()
                        && foreign.is_none()
                        && (entry.uid.is_empty() || uid == Some(entry.uid.as_str()))
                    {
                        self.remove(entry, DeletionPolicy::Orphan).await?;
                    }
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
        plan: &Plan,
        previous: &AbstractionStatus,
        now: Timestamp,
    ) -> Outcome {
        self.pass(instance, plan, previous, now).await
    }

    async fn live(&self, entry: &InventoryEntry) -> Result<Option<Value>, ExecuteError> {
        self.read_live(entry, Need::Fields).await
    }

    async fn teardown(
        &self,
        instance: &Instance,
        inventory: &[InventoryEntry],
        policy: DeletionPolicy,
    ) -> Result<bool, ExecuteError> {
        self.remove_all(instance, inventory, policy).await
    }

    async fn labelled(
        &self,
        instance: &Instance,
        kinds: &[(String, String)],
    ) -> Result<Vec<LabelledObject>, ExecuteError> {
        let selector = format!(
            "{INSTANCE_LABEL}={},{KIND_LABEL}={}",
            instance.name, instance.kind
        );
        // resourceVersion=0: answered from the API server's watch cache, not etcd.
        let params = kube::api::ListParams::default()
            .labels(&selector)
            .match_any();
        let mut found = Vec::new();
        for (api_version, kind) in kinds {
            // A listed store knows every labelled object of the kind: no request.
            if let Some(cached) = self.children.as_ref().and_then(|c| {
                c.labelled(
                    api_version,
                    kind,
                    &instance.name,
                    &instance.namespace,
                    &self.field_manager,
                )
            }) {
                found.extend(cached);
                continue;
            }
            let api = match self.api_for(api_version, kind, &instance.namespace).await {
                Ok(api) => api,
                // A kind the cluster no longer serves has no objects to find.
                Err(ExecuteError::UnknownKind { .. }) => continue,
                Err(e) => return Err(e),
            };
            let list = api
                .list_metadata(&params)
                .await
                .map_err(|source| ExecuteError::Api {
                    what: format!("listing {kind} labelled {selector}"),
                    source,
                })?;
            for item in list.items {
                let meta = item.metadata;
                // Only this instance's namespace: the labels name the instance but not its
                // namespace, so an object elsewhere (or cluster-scoped) may be another
                // instance's of the same name.
                if meta.namespace.as_deref() != Some(instance.namespace.as_str()) {
                    continue;
                }
                let managed_by_us = meta
                    .managed_fields
                    .iter()
                    .flatten()
                    .any(|f| f.manager.as_deref() == Some(self.field_manager.as_str()));
                found.push(LabelledObject {
                    api_version: api_version.clone(),
                    kind: kind.clone(),
                    namespace: meta.namespace.unwrap_or_default(),
                    name: meta.name.unwrap_or_default(),
                    uid: meta.uid.unwrap_or_default(),
                    managed_by_us,
                });
            }
        }
        Ok(found)
    }
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

/// How often a pass with applies still in flight looks at its waiting nodes again in the watch
/// cache (a few map lookups, no request): a dependent starts at most this long after the watch
/// shows its dependency Ready, instead of after the slowest apply of the pass (a Service
/// waits seconds for its ClusterIP when hundreds are created at once).
const LOOK_AGAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// The watch cache's key for the object an inventory entry records.
fn child_of(entry: &InventoryEntry) -> ChildRef<'_> {
    ChildRef {
        api_version: &entry.api_version,
        kind: &entry.kind,
        namespace: &entry.namespace,
        name: &entry.name,
    }
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

/// Puts the instance labels on an object, as every apply does (they drive the child watches),
/// and the instance's own `carried` label when it has one.
fn stamp_labels(object: &mut Value, instance: &Instance, namespaced: bool, carried: Option<&str>) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(INSTANCE_LABEL.into(), Value::String(instance.name.clone()));
            labels.insert(KIND_LABEL.into(), Value::String(instance.kind.clone()));
            if !namespaced {
                labels.insert(
                    NAMESPACE_LABEL.into(),
                    Value::String(instance.namespace.clone()),
                );
            }
            if let Some((key, value)) = carried.and_then(|key| instance.labels.get_key_value(key)) {
                labels.insert(key.clone(), Value::String(value.clone()));
            }
        }
    }
}

/// How long ago an RFC 3339 time was (by the system clock).
pub fn age_of(timestamp: &str) -> Option<std::time::Duration> {
    cuebe_core::clock::elapsed_since(timestamp, Timestamp::now())
}

/// The current time, RFC 3339.
pub fn now() -> String {
    Timestamp::now().to_string()
}
