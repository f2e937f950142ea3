//! The generic controller: compile each instance of an [`Abstraction`] into its Graph and
//! execute it.
//!
//! Workflow of one reconcile (inside the abstraction's finalizer):
//! 1. compile the spec with the cluster's capabilities and the exports observed on live objects
//!    (from the inventory); a compile error or a policy violation stops here — nothing is applied
//!    and the status says why;
//! 2. execute the Graph; when a pass observes an export that a pending node waits for (an IAM
//!    role's ARN), re-render and execute again in the same reconcile;
//! 3. store the inventory and write the status, only when it changed; publish an event for each
//!    transition.
//!
//! Children are watched by the `cuebe.dev/kind=<Kind>` label, so a Ready transition or a hand
//! deletion reaches the instance at once rather than at the next requeue.
//!
//! The cluster's capabilities and served child kinds are asked again periodically; a change
//! restarts the controller (watches included), which reconciles every instance with the new set.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::RwLock;

use crate::abstraction::{Abstraction, ServedKinds, compile_input, instance_of, parse_watch};
use crate::compiler::{Capabilities, Compiler, CueCompiler};
use crate::executor::{
    Change, ChangeAction, Executor, INSTANCE_LABEL, KIND_LABEL, Outcome, SsaExecutor, age_of, now,
};
use crate::leader::LeaderElection;
use crate::lifecycle::{Adopter, ExplicitAdopter, Inventory, StatusInventory};
use crate::metrics::{InstanceState, OperatorMetrics};
use crate::readiness::{DefaultReadiness, Readiness};
use crate::status::{AbstractionStatus, NodePhase};

/// Why a reconcile failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Writing status failed.
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    /// The inventory could not be read or stored.
    #[error("inventory: {0}")]
    Inventory(#[from] crate::lifecycle::InventoryError),
    /// Deletion is still in progress or failed.
    #[error("deleting: {0}")]
    Teardown(String),
    /// The finalizer protocol failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

/// An operator for one abstraction: the controller with its parts, each swappable.
///
/// ```no_run
/// # async fn f<A: cuebe::Abstraction>(client: kube::Client) {
/// use std::sync::Arc;
/// cuebe::controller::Operator::<A>::new(client.clone())
///     // Keep the inventory in a ConfigMap instead of the status.
///     .with_inventory(Arc::new(cuebe::lifecycle::ConfigMapInventory::new(client, A::FIELD_MANAGER)))
///     .run()
///     .await;
/// # }
/// ```
pub struct Operator<A: Abstraction> {
    client: Client,
    compiler: Option<Arc<dyn Compiler>>,
    executor: Option<Arc<dyn Executor>>,
    readiness: Arc<dyn Readiness>,
    adopter: Arc<dyn Adopter>,
    inventory: Arc<dyn Inventory>,
    namespace: Option<String>,
    shutdown_on_signal: bool,
    rediscover_every: Duration,
    metrics_listener: Option<tokio::net::TcpListener>,
    leader_election: Option<LeaderElection>,
    _kind: std::marker::PhantomData<fn() -> A>,
}

/// How often the operator asks the API server which optional APIs and watched kinds it serves,
/// unless [`Operator::rediscover_every`] says otherwise.
pub const DEFAULT_REDISCOVERY_INTERVAL: Duration = Duration::from_secs(30);

impl<A: Abstraction> std::fmt::Debug for Operator<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("kind", &A::kind(&()))
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl<A: Abstraction> Operator<A> {
    /// The default operator: [`CueCompiler`] over `A::modules()`, [`SsaExecutor`] with
    /// [`DefaultReadiness`] and [`ExplicitAdopter`], [`StatusInventory`]; all namespaces.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            compiler: None,
            executor: None,
            readiness: Arc::new(DefaultReadiness),
            adopter: Arc::new(ExplicitAdopter),
            inventory: Arc::new(StatusInventory),
            namespace: None,
            shutdown_on_signal: false,
            rediscover_every: DEFAULT_REDISCOVERY_INTERVAL,
            metrics_listener: None,
            leader_election: None,
            _kind: std::marker::PhantomData,
        }
    }

    /// The client the operator runs with (e.g. to build an inventory in
    /// [`crate::cli::App::configure`]).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Replaces the compiler.
    pub fn with_compiler(mut self, compiler: Arc<dyn Compiler>) -> Self {
        self.compiler = Some(compiler);
        self
    }

    /// Replaces the executor (then [`Operator::with_readiness`] and
    /// [`Operator::with_adopter`] are the executor's business).
    pub fn with_executor(mut self, executor: Arc<dyn Executor>) -> Self {
        self.executor = Some(executor);
        self
    }

    /// Replaces the readiness semantics of the default executor.
    pub fn with_readiness(mut self, readiness: Arc<dyn Readiness>) -> Self {
        self.readiness = readiness;
        self
    }

    /// Replaces the adoption policy of the default executor.
    pub fn with_adopter(mut self, adopter: Arc<dyn Adopter>) -> Self {
        self.adopter = adopter;
        self
    }

    /// Replaces where the inventory is kept.
    pub fn with_inventory(mut self, inventory: Arc<dyn Inventory>) -> Self {
        self.inventory = inventory;
        self
    }

    /// Watches one namespace only.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Stops on SIGINT or SIGTERM (finishing reconciles in flight).
    pub fn shutdown_on_signal(mut self, yes: bool) -> Self {
        self.shutdown_on_signal = yes;
        self
    }

    /// How often to ask the API server which capabilities ([`Abstraction::capability_probes`])
    /// and which of [`Abstraction::WATCHES`] it serves (default
    /// [`DEFAULT_REDISCOVERY_INTERVAL`]). When either changes (say the Gateway API CRDs were
    /// installed), the controller restarts its watches and reconciles every instance again.
    pub fn rediscover_every(mut self, interval: Duration) -> Self {
        self.rediscover_every = interval.max(Duration::from_millis(100));
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `listener` while the operator runs (see
    /// [`crate::metrics`]). The caller binds it, so a taken port is the caller's error to report.
    pub fn serve_metrics(mut self, listener: tokio::net::TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// Reconciles only while this replica holds the election's Lease (see [`crate::leader`]),
    /// so several replicas can run. Without it, every replica reconciles.
    pub fn leader_election(mut self, election: LeaderElection) -> Self {
        self.leader_election = Some(election);
        self
    }

    /// The default executor for an abstraction (what `explain` reads live objects with).
    pub fn default_executor(client: Client) -> SsaExecutor {
        SsaExecutor::new(client, A::FIELD_MANAGER)
    }

    /// Runs the controller until it is stopped (by a signal, with
    /// [`Operator::shutdown_on_signal`]) or its watches end.
    ///
    /// The watched kinds are those of [`Abstraction::WATCHES`] the cluster serves. Every
    /// [`Operator::rediscover_every`] the served APIs are asked again; when the capabilities or
    /// the served watched kinds changed, the controller finishes the reconciles in flight and
    /// starts again with the new set, which reconciles every instance with the new capabilities.
    pub async fn run(mut self) {
        let client = self.client.clone();
        let kind = A::kind(&()).into_owned();
        let compiler = self
            .compiler
            .clone()
            .unwrap_or_else(|| Arc::new(CueCompiler::new(A::modules())));
        let metrics = Arc::new(OperatorMetrics::new(&kind, Some(compiler.clone())));
        // Dropped (and so stopped) when `run` returns.
        let _metrics_server = self.metrics_listener.take().map(|listener| {
            AbortOnDrop(tokio::spawn(crate::metrics::serve(
                listener,
                metrics.clone(),
            )))
        });
        let ctx = Arc::new(Context::<A> {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: A::FIELD_MANAGER.into(),
                    instance: std::env::var("POD_NAME").ok(),
                },
            ),
            executor: self.executor.clone().unwrap_or_else(|| {
                Arc::new(
                    SsaExecutor::new(client.clone(), A::FIELD_MANAGER)
                        .with_readiness(self.readiness.clone())
                        .with_adopter(self.adopter.clone()),
                )
            }),
            compiler,
            metrics: metrics.clone(),
            inventory: self.inventory.clone(),
            client: client.clone(),
            capabilities: RwLock::new(Capabilities::default()),
            written: std::sync::Mutex::new(std::collections::HashMap::new()),
            _kind: std::marker::PhantomData,
        });
        let stop: Trigger = stop_signal(self.shutdown_on_signal).shared();
        let Some(election) = self.leader_election.clone() else {
            self.run_controller(
                &ctx,
                &metrics,
                &stop,
                &futures::future::pending().boxed().shared(),
            )
            .await;
            return;
        };
        loop {
            metrics.set_leading(false);
            tokio::select! {
                () = election.acquire(&client) => {}
                () = stop.clone() => return,
            }
            metrics.set_leading(true);
            // What another leader wrote meanwhile is newer than what this replica remembers.
            ctx.written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
            let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
            let holding = AbortOnDrop(tokio::spawn({
                let election = election.clone();
                let client = client.clone();
                async move {
                    election.hold(&client).await;
                    let _ = lost_tx.send(());
                }
            }));
            let lost: Trigger = lost_rx.map(|_| ()).boxed().shared();
            self.run_controller(&ctx, &metrics, &stop, &lost).await;
            drop(holding);
            metrics.set_leading(false);
            if lost.peek().is_none() {
                // Stopped (by a signal, or the watches ended): let a follower take over now.
                if let Err(error) = election.release(&client).await {
                    tracing::warn!(%error, "leader election: could not release the lease");
                }
                return;
            }
            tracing::warn!(%kind, "lost the leadership: stopped reconciling, waiting to lead again");
        }
    }

    /// Runs the controller until `stop` or `lost` fires or its watches end, restarting it
    /// whenever the cluster's APIs change.
    async fn run_controller(
        &self,
        ctx: &Arc<Context<A>>,
        metrics: &Arc<OperatorMetrics>,
        stop: &Trigger,
        lost: &Trigger,
    ) {
        let client = &self.client;
        let kind = A::kind(&()).into_owned();
        let api: Api<A> = match &self.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let children = watcher::Config::default().labels(&format!("{KIND_LABEL}={kind}"));
        loop {
            let apis = tokio::select! {
                apis = ServedApis::discover_until_ok::<A>(client) => apis,
                () = stop.clone() => return,
                () = lost.clone() => return,
            };
            *ctx.capabilities.write().await = apis.capabilities.clone();
            tracing::info!(
                %kind,
                capabilities = ?apis.capabilities,
                watched = ?apis.watched.iter().map(|(entry, _)| *entry).collect::<Vec<_>>(),
                "starting the controller"
            );
            let (changed_tx, changed_rx) = tokio::sync::oneshot::channel::<()>();
            let mut rediscovery = AbortOnDrop(tokio::spawn(watch_for_api_changes::<A>(
                client.clone(),
                apis.clone(),
                self.rediscover_every,
                changed_tx,
            )));
            let mut controller = Controller::new(api.clone(), watcher::Config::default())
                .graceful_shutdown_on(stop.clone())
                .graceful_shutdown_on(lost.clone())
                .graceful_shutdown_on(changed_rx.map(|_| ()));
            metrics.set_watching(true);
            for (_, resource) in &apis.watched {
                let child_api: Api<DynamicObject> = match &self.namespace {
                    Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
                    None => Api::all_with(client.clone(), resource),
                };
                let kind = kind.clone();
                controller = controller.watches_with(
                    child_api,
                    resource.clone(),
                    children.clone(),
                    move |obj| owner_of::<A>(&obj, &kind),
                );
            }
            controller
                .run(reconcile::<A>, error_policy::<A>, ctx.clone())
                .for_each(|result| async move {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "reconcile error");
                    }
                })
                .await;
            metrics.set_watching(false);
            rediscovery.0.abort();
            // The poller ends only once it has seen a change; anything else stopped the
            // controller for good.
            let restart = matches!((&mut rediscovery.0).await, Ok(true));
            if !restart || stop.peek().is_some() || lost.peek().is_some() {
                return;
            }
            metrics.restarted();
            tracing::info!(%kind, "the cluster's APIs changed: restarting the controller");
        }
    }
}

/// A shutdown trigger several controllers (one after another) can wait on.
type Trigger = futures::future::Shared<futures::future::BoxFuture<'static, ()>>;

/// Aborts a spawned task when dropped (so dropping `run`'s future stops everything it started).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the cluster serves that changes how the controller runs: the capabilities the module
/// renders for and the watched child kinds.
#[derive(Clone, Debug)]
struct ServedApis {
    capabilities: Capabilities,
    watched: Vec<(&'static str, ApiResource)>,
}

impl PartialEq for ServedApis {
    fn eq(&self, other: &Self) -> bool {
        self.capabilities == other.capabilities
            && self
                .watched
                .iter()
                .map(|(e, _)| e)
                .eq(other.watched.iter().map(|(e, _)| e))
    }
}

impl ServedApis {
    async fn discover<A: Abstraction>(client: &Client) -> Result<Self, kube::Error> {
        let mut served = ServedKinds::default();
        let mut watched = Vec::new();
        for entry in A::WATCHES {
            let Some(gvk) = parse_watch(entry) else {
                tracing::warn!(%entry, "not a group/version/Kind; not watched");
                continue;
            };
            match served.get(client, &gvk).await? {
                Some(resource) => watched.push((*entry, resource)),
                None => tracing::trace!(%entry, "not served by this cluster; not watched"),
            }
        }
        let capabilities = served.capabilities(client, &A::capability_probes()).await?;
        Ok(Self {
            capabilities,
            watched,
        })
    }

    /// Discovery, retried until the API server answers: rendering without knowing the
    /// capabilities could render (and prune towards) the wrong objects.
    async fn discover_until_ok<A: Abstraction>(client: &Client) -> Self {
        let mut delay = Duration::from_millis(500);
        loop {
            match Self::discover::<A>(client).await {
                Ok(apis) => return apis,
                Err(error) => {
                    tracing::warn!(%error, ?delay, "discovering the cluster's APIs failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// Asks for the served APIs every `every`; returns `true` (after telling `changed`) once they
/// differ from `known`. A failed discovery keeps what was known.
async fn watch_for_api_changes<A: Abstraction>(
    client: Client,
    known: ServedApis,
    every: Duration,
    changed: tokio::sync::oneshot::Sender<()>,
) -> bool {
    loop {
        tokio::time::sleep(every).await;
        match ServedApis::discover::<A>(&client).await {
            Ok(now) if now != known => {
                tracing::info!(
                    before = ?known.capabilities,
                    after = ?now.capabilities,
                    watched = ?now.watched.iter().map(|(entry, _)| *entry).collect::<Vec<_>>(),
                    "the cluster's APIs changed"
                );
                let _ = changed.send(());
                return true;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "rediscovering the cluster's APIs failed; keeping what was known");
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM when `enabled`, never otherwise.
fn stop_signal(enabled: bool) -> futures::future::BoxFuture<'static, ()> {
    if !enabled {
        return futures::future::pending().boxed();
    }
    async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; stopping on SIGINT only");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("signal received: finishing the reconciles in flight");
    }
    .boxed()
}

/// Shared state of the controller.
struct Context<A: Abstraction> {
    client: Client,
    recorder: Recorder,
    compiler: Arc<dyn Compiler>,
    metrics: Arc<OperatorMetrics>,
    executor: Arc<dyn Executor>,
    inventory: Arc<dyn Inventory>,
    /// What the cluster offers, as last discovered (a change restarts the controller).
    capabilities: RwLock<Capabilities>,
    /// The status last written per instance (by UID). The watch cache can lag behind our own
    /// writes; starting from what we wrote avoids repeating writes and events.
    written: std::sync::Mutex<std::collections::HashMap<String, AbstractionStatus>>,
    _kind: std::marker::PhantomData<fn() -> A>,
}

impl<A: Abstraction> Context<A> {
    async fn capabilities(&self) -> Capabilities {
        self.capabilities.read().await.clone()
    }
}

/// One event per object the pass adopted, pruned or released: the instance's audit trail of
/// what the operator did beyond applying.
async fn publish_changes<A: Abstraction>(ctx: &Context<A>, object: &A, changes: &[Change]) {
    let reference = object.object_ref(&());
    for change in changes {
        let (reason, action) = match change.action {
            ChangeAction::Adopted => ("Adopted", "Adopt"),
            ChangeAction::Pruned => ("Pruned", "Prune"),
            ChangeAction::Released => ("Released", "Prune"),
        };
        let event = KubeEvent {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(change.to_string()),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, "could not publish an event");
        }
    }
}

/// Events for what changed between two statuses: the instance's Ready/Stalled/policy
/// transitions and each node failing or being blocked. A node turning Ready is not an event of
/// its own (it is in the status, and at hundreds of instances the writes add up).
fn transitions(previous: &AbstractionStatus, current: &AbstractionStatus) -> Vec<KubeEvent> {
    let event = |type_: EventType, reason: &str, note: Option<String>, action: &str| KubeEvent {
        type_,
        reason: reason.to_string(),
        note,
        action: action.to_string(),
        secondary: None,
    };
    let flipped = |t: &str, to: &str| {
        let now = current.condition(t).map(|c| c.status.as_str());
        let before = previous.condition(t).map(|c| c.status.as_str());
        now == Some(to) && before != Some(to)
    };
    let message = |t: &str| current.condition(t).map(|c| c.message.clone());
    let mut events = Vec::new();
    if flipped("Rendered", "False") {
        events.push(event(
            EventType::Warning,
            "RenderFailed",
            message("Rendered"),
            "Render",
        ));
    }
    if flipped("PolicyPassed", "False") {
        events.push(event(
            EventType::Warning,
            "PolicyViolation",
            message("PolicyPassed"),
            "Render",
        ));
    }
    for (id, node) in &current.nodes {
        if previous.nodes.get(id).map(|n| n.phase) == Some(node.phase) {
            continue;
        }
        match node.phase {
            NodePhase::Error | NodePhase::Blocked => events.push(event(
                EventType::Warning,
                if node.phase == NodePhase::Error {
                    "NodeFailed"
                } else {
                    "NodeBlocked"
                },
                Some(format!(
                    "{id}: {}",
                    node.last_error.clone().unwrap_or_default()
                )),
                "Apply",
            )),
            _ => {}
        }
    }
    if flipped("Ready", "True") {
        events.push(event(
            EventType::Normal,
            "Ready",
            message("Ready"),
            "Reconcile",
        ));
    }
    if flipped("Stalled", "True") {
        events.push(event(
            EventType::Warning,
            "Stalled",
            message("Stalled"),
            "Reconcile",
        ));
    }
    events
}

/// The latest known status of an instance: what we last wrote, unless the cache is newer.
fn known_status<A: Abstraction>(ctx: &Context<A>, object: &A) -> AbstractionStatus {
    let uid = object.meta().uid.clone().unwrap_or_default();
    let written = ctx
        .written
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match (written.get(&uid), object.abstraction_status()) {
        (Some(ours), Some(cached)) if cached.observed_generation > ours.observed_generation => {
            cached.clone()
        }
        (Some(ours), _) => ours.clone(),
        (None, cached) => cached.cloned().unwrap_or_default(),
    }
}

async fn write_status<A: Abstraction>(
    ctx: &Context<A>,
    api: &Api<A>,
    object: &A,
    status: &AbstractionStatus,
) -> Result<(), ReconcileError> {
    let uid = object.meta().uid.clone().unwrap_or_default();
    ctx.metrics.instance_state(&uid, InstanceState::of(status));
    let previous = known_status(ctx, object);
    if &previous == status {
        return Ok(());
    }
    let reference = object.object_ref(&());
    for event in transitions(&previous, status) {
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, "could not publish an event");
        }
    }
    let body = serde_json::json!({
        "apiVersion": A::api_version(&()),
        "kind": A::kind(&()),
        "status": status,
    });
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(A::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(ReconcileError::Status)?;
    ctx.written
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(
            object.meta().uid.clone().unwrap_or_default(),
            status.clone(),
        );
    Ok(())
}

/// The instance cannot proceed until its spec or module changes: `failed` (Rendered or
/// PolicyPassed) is False, Ready and Progressing are False and Stalled is True, all with `reason`.
fn stop_before_apply(
    status: &mut AbstractionStatus,
    failed: &str,
    reason: &str,
    message: &str,
    next_step: &str,
    generation: Option<i64>,
    now: &str,
) {
    status.set_condition(failed, false, reason, message, generation, now);
    status.set_condition("Ready", false, reason, message, generation, now);
    status.set_condition("Progressing", false, reason, next_step, generation, now);
    status.set_condition("Stalled", true, reason, message, generation, now);
}

/// Hands the pass's inventory (kept in `status.inventory` while reconciling) to the
/// [`Inventory`], which decides what stays in the status.
async fn store_inventory<A: Abstraction>(
    ctx: &Context<A>,
    instance: &crate::lifecycle::Instance,
    status: &mut AbstractionStatus,
) -> Result<(), ReconcileError> {
    let entries = std::mem::take(&mut status.inventory);
    ctx.inventory.store(instance, &entries, status).await?;
    Ok(())
}

async fn apply<A: Abstraction>(
    object: Arc<A>,
    ctx: Arc<Context<A>>,
) -> Result<Action, ReconcileError> {
    let ns = object.namespace().unwrap_or_else(|| "default".into());
    let api: Api<A> = Api::namespaced(ctx.client.clone(), &ns);
    let generation = object.meta().generation;
    let now = now();
    let previous = known_status(&ctx, &object);
    let mut status = previous.clone();
    status.observed_generation = generation;
    let capabilities = ctx.capabilities().await;
    let instance = instance_of(object.as_ref());
    status.inventory = ctx.inventory.load(&instance, &previous).await?;

    // Observed exports come from the live objects of the inventory.
    let mut observed: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut last_exec: Option<Outcome> = None;
    for _round in 0..3 {
        let input = compile_input(object.as_ref(), capabilities.clone(), observed.clone());
        let started = std::time::Instant::now();
        let compiled = ctx.compiler.compile(&input).await;
        ctx.metrics.rendered(started.elapsed());
        let graph = match compiled {
            Ok(g) => g,
            Err(e) => {
                stop_before_apply(
                    &mut status,
                    "Rendered",
                    e.reason(),
                    &e.to_string(),
                    "fix the spec or the module",
                    generation,
                    &now,
                );
                store_inventory(&ctx, &instance, &mut status).await?;
                write_status(&ctx, &api, &object, &status).await?;
                return Ok(Action::await_change());
            }
        };
        status.platform_ref_resolved = graph.metadata.platform_ref_resolved.clone();
        status.render_hash = graph.metadata.render_hash.clone();
        status.violations = graph.violations.clone();
        status.set_condition(
            "Rendered",
            true,
            "Rendered",
            format!("{} nodes", graph.nodes.len()),
            generation,
            &now,
        );
        if graph.has_blocking_violations() {
            let message = graph
                .violations
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            stop_before_apply(
                &mut status,
                "PolicyPassed",
                "PolicyViolation",
                &message,
                "nothing is applied while policy fails",
                generation,
                &now,
            );
            store_inventory(&ctx, &instance, &mut status).await?;
            write_status(&ctx, &api, &object, &status).await?;
            return Ok(Action::await_change());
        }
        status.set_condition("PolicyPassed", true, "PolicyPassed", "", generation, &now);

        // Read the exports a pending node waits for from the objects applied so far.
        let mut newly_observed = false;
        for export in graph.exports.iter().filter(|e| e.value.is_none()) {
            let live = match last_exec
                .as_ref()
                .and_then(|o| o.live.get(&export.node).cloned())
            {
                Some(l) => Some(l),
                None => match status.inventory_entry(&export.node) {
                    Some(entry) => ctx.executor.live(entry).await.ok().flatten(),
                    None => None,
                },
            };
            if let Some(live) = live
                && !observed.contains_key(&export.node)
            {
                observed.insert(export.node.clone(), live);
                newly_observed = true;
            }
        }
        if newly_observed && last_exec.is_none() {
            // Re-render with the values before applying anything.
            continue;
        }
        let outcome = ctx
            .executor
            .execute(&instance, &graph, &status, &now, &|t| age_of(t))
            .await;
        status.nodes = outcome.nodes.clone();
        status.inventory = outcome.inventory.clone();
        publish_changes(&ctx, object.as_ref(), &outcome.changes).await;
        let pending_export = graph.nodes.iter().any(|n| n.is_pending());
        let export_now_visible = graph.exports.iter().filter(|e| e.value.is_none()).any(|e| {
            outcome
                .live
                .get(&e.node)
                .and_then(|o| e.path.split('.').try_fold(o, |cur, k| cur.get(k)))
                .is_some_and(|v| !v.is_null())
        });
        last_exec = Some(outcome);
        if pending_export && export_now_visible {
            if let Some(o) = &last_exec {
                for e in &graph.exports {
                    if let Some(live) = o.live.get(&e.node) {
                        observed.insert(e.node.clone(), live.clone());
                    }
                }
            }
            continue;
        }
        break;
    }
    store_inventory(&ctx, &instance, &mut status).await?;
    let Some(outcome) = last_exec else {
        write_status(&ctx, &api, &object, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(2)));
    };
    let total = status.nodes.len();
    let ready = status
        .nodes
        .values()
        .filter(|n| n.phase == NodePhase::Ready)
        .count();
    status.ready_nodes = format!("{ready}/{total}");
    let failing = |phase: NodePhase| -> Vec<String> {
        status
            .nodes
            .iter()
            .filter(|(_, n)| n.phase == phase)
            .map(|(id, n)| format!("{id}: {}", n.last_error.clone().unwrap_or_default()))
            .collect()
    };
    let blocked = failing(NodePhase::Blocked);
    let retrying = failing(NodePhase::Error);
    if let Some(stalled) = &outcome.stalled {
        status.set_condition(
            "Ready",
            false,
            "NodeFailed",
            stalled.clone(),
            generation,
            &now,
        );
        status.set_condition(
            "Progressing",
            false,
            "NodeFailed",
            stalled.clone(),
            generation,
            &now,
        );
        status.set_condition(
            "Stalled",
            true,
            "NodeFailed",
            stalled.clone(),
            generation,
            &now,
        );
    } else if outcome.ready {
        status.set_condition(
            "Ready",
            true,
            "AllNodesReady",
            format!("{ready}/{total} nodes ready"),
            generation,
            &now,
        );
        status.set_condition("Progressing", false, "AllNodesReady", "", generation, &now);
        status.clear_condition("Stalled");
    } else if !retrying.is_empty() {
        // API errors (a full service range, a webhook outage) are retried, not terminal.
        let message = retrying.join("; ");
        status.set_condition(
            "Ready",
            false,
            "ApplyFailed",
            message.clone(),
            generation,
            &now,
        );
        status.set_condition("Progressing", true, "Retrying", message, generation, &now);
        status.clear_condition("Stalled");
    } else if !blocked.is_empty() {
        status.set_condition(
            "Ready",
            false,
            "NodeBlocked",
            blocked.join("; "),
            generation,
            &now,
        );
        status.set_condition(
            "Progressing",
            false,
            "NodeBlocked",
            blocked.join("; "),
            generation,
            &now,
        );
        status.clear_condition("Stalled");
    } else {
        let waiting: Vec<String> = status
            .nodes
            .iter()
            .filter(|(_, n)| n.phase != NodePhase::Ready)
            .map(|(id, n)| format!("{id}: {}", n.ready_details.clone().unwrap_or_default()))
            .collect();
        status.set_condition(
            "Ready",
            false,
            "Progressing",
            waiting.join("; "),
            generation,
            &now,
        );
        status.set_condition(
            "Progressing",
            true,
            "Progressing",
            format!("{ready}/{total} nodes ready"),
            generation,
            &now,
        );
        status.clear_condition("Stalled");
    }
    write_status(&ctx, &api, &object, &status).await?;
    Ok(if outcome.ready {
        Action::requeue(Duration::from_secs(300))
    } else if outcome.stalled.is_some() {
        Action::requeue(Duration::from_secs(60))
    } else {
        Action::requeue(Duration::from_secs(5))
    })
}

async fn cleanup<A: Abstraction>(
    object: Arc<A>,
    ctx: Arc<Context<A>>,
) -> Result<Action, ReconcileError> {
    let instance = instance_of(object.as_ref());
    let status = object.abstraction_status().cloned().unwrap_or_default();
    let inventory = ctx.inventory.load(&instance, &status).await?;
    let done = ctx
        .executor
        .teardown(&inventory, object.deletion_policy())
        .await
        .map_err(|e| ReconcileError::Teardown(e.to_string()))?;
    if done {
        ctx.inventory.forget(&instance).await?;
        ctx.metrics
            .instance_gone(object.meta().uid.as_deref().unwrap_or_default());
        Ok(Action::await_change())
    } else {
        // Returning an error keeps the finalizer until every object is gone.
        Err(ReconcileError::Teardown(
            "waiting for managed objects to be deleted".into(),
        ))
    }
}

async fn reconcile<A: Abstraction>(
    object: Arc<A>,
    ctx: Arc<Context<A>>,
) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    let ns = object.namespace().unwrap_or_else(|| "default".into());
    let api: Api<A> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, A::FINALIZER, object, |event| async {
        match event {
            Event::Apply(object) => apply(object, ctx.clone()).await,
            Event::Cleanup(object) => cleanup(object, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => ReconcileError::Finalizer(other.to_string()),
    });
    ctx.metrics.reconciled(result.is_ok(), started.elapsed());
    result
}

fn error_policy<A: Abstraction>(
    _object: Arc<A>,
    error: &ReconcileError,
    _ctx: Arc<Context<A>>,
) -> Action {
    match error {
        ReconcileError::Teardown(_) => Action::requeue(Duration::from_millis(500)),
        _ => {
            tracing::warn!(%error, "reconcile failed");
            Action::requeue(Duration::from_secs(2))
        }
    }
}

fn owner_of<A: Abstraction>(obj: &DynamicObject, kind: &str) -> Option<ObjectRef<A>> {
    let labels = obj.metadata.labels.as_ref()?;
    if labels.get(KIND_LABEL).map(String::as_str) != Some(kind) {
        return None;
    }
    let name = labels.get(INSTANCE_LABEL)?;
    Some(ObjectRef::new(name).within(obj.metadata.namespace.as_deref().unwrap_or("default")))
}
