//! The generic controller: render each instance of an [`Abstraction`] into its Graph and
//! execute it.
//!
//! Workflow of one reconcile (inside the abstraction's finalizer):
//! 1. render the spec with the cluster's capabilities and the exports observed on live objects
//!    (from the inventory); a render error or a policy violation stops here — nothing is applied
//!    and the status says why;
//! 2. execute the Graph; when a pass observes an export that a pending node waits for (an IAM
//!    role's ARN), re-render and execute again in the same reconcile;
//! 3. store the inventory and write the status, only when it changed; publish an event for each
//!    transition.
//!
//! Children are watched by the `cuebe.dev/kind=<Kind>` label, so a Ready transition or a hand
//! deletion reaches the instance at once rather than at the next requeue; what those watches
//! deliver is kept, trimmed, in the [`crate::child_cache`] the executor reads instead of a GET
//! per object per pass.
//!
//! The cluster's capabilities and served child kinds are asked again periodically; a change
//! restarts the controller (watches included), which reconciles every instance with the new set.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::RwLock;

use cuebe_core::clock::{Clock, SystemClock};
use cuebe_core::status::{ConditionType, EventNote, PassVerdict, summarize, transitions};

use crate::abstraction::{Abstraction, instance_of, render_input};
use crate::child_cache::ChildCache;
use crate::discovery::{Discovery, parse_watch};
use crate::executor::{Change, Executor, INSTANCE_LABEL, KIND_LABEL, Outcome, SsaExecutor};
use crate::inventory::{Inventory, StatusInventory};
use crate::lifecycle::{Adopter, ExplicitAdopter};
use crate::ops::leader::LeaderElection;
use crate::ops::metrics::{InstanceState, ModuleLoad, ModuleOrigin, OperatorMetrics};
use crate::readiness::{DefaultReadiness, Readiness};
use crate::renderer::{Capabilities, CueRenderer, Renderer};
use crate::status::AbstractionStatus;

/// Why a reconcile failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Writing status failed.
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    /// The inventory could not be read or stored.
    #[error("inventory: {0}")]
    Inventory(#[from] crate::inventory::InventoryError),
    /// Deleting the managed objects failed.
    #[error("deleting: {0}")]
    Teardown(#[source] crate::executor::ExecuteError),
    /// Looking for objects the instance wrote but never recorded failed.
    #[error("looking for unrecorded objects: {0}")]
    Sweep(#[source] crate::executor::ExecuteError),
    /// Deletion is in progress: some managed objects are not gone yet (not a failure).
    #[error("deleting: waiting for managed objects to be deleted")]
    TeardownInProgress,
    /// Handing a drained instance back to the sharder (removing its shard labels) failed.
    #[error("handing the instance back to the sharder: {0}")]
    Handover(#[source] kube::Error),
    /// The finalizer protocol failed (adding or removing the finalizer).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<ReconcileError>>),
}

/// An operator for one abstraction: the controller with its parts, each swappable.
///
/// ```no_run
/// # async fn f<A: cuebe::Abstraction>(client: kube::Client) {
/// use std::sync::Arc;
/// cuebe::controller::Operator::<A>::new(client.clone())
///     // Keep the inventory in a ConfigMap instead of the status.
///     .with_inventory(Arc::new(cuebe::inventory::ConfigMapInventory::new(client, A::FIELD_MANAGER)))
///     .run()
///     .await;
/// # }
/// ```
pub struct Operator<A: Abstraction> {
    client: Client,
    renderer: Option<Arc<dyn Renderer>>,
    #[cfg(feature = "remote-modules")]
    module_fetcher: Arc<crate::remote::ModuleFetcher>,
    #[cfg_attr(not(feature = "remote-modules"), allow(dead_code))]
    module_policy: Arc<crate::trust::ModulePolicy>,
    executor: Option<Arc<dyn Executor>>,
    readiness: Arc<dyn Readiness>,
    /// Readiness semantics of the caller's own: they may read any field, so the child cache
    /// keeps whole objects.
    custom_readiness: bool,
    adopter: Arc<dyn Adopter>,
    inventory: Arc<dyn Inventory>,
    namespace: Option<String>,
    shutdown_on_signal: bool,
    rediscover_every: Duration,
    metrics_listener: Option<tokio::net::TcpListener>,
    leader_election: Option<LeaderElection>,
    shard: Option<crate::ops::shard::Shard>,
    clock: Arc<dyn Clock>,
    fleet_prune_guard: Arc<std::sync::Mutex<crate::executor::FleetPruneGuard>>,
    cluster_scoped_allowed: Vec<String>,
    admission: Option<crate::admission::AdmissionWebhook>,
    concurrent_reconciles: u16,
    _kind: std::marker::PhantomData<fn() -> A>,
}

/// How many instances are reconciled at once unless [`Operator::concurrent_reconciles`] says
/// otherwise. Unbounded, every instance of a fleet starts its pass at once after a start or a
/// module change: with thousands of them the API server queues (or times out) thousands of
/// requests, and the retries of those timeouts keep it there. 64 passes in flight keep a
/// two-core control plane busy already.
pub const DEFAULT_CONCURRENT_RECONCILES: u16 = 64;

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
    /// The default operator: [`CueRenderer`] over `A::modules()`, [`SsaExecutor`] with
    /// [`DefaultReadiness`] and [`ExplicitAdopter`], [`StatusInventory`]; all namespaces.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            renderer: None,
            #[cfg(feature = "remote-modules")]
            module_fetcher: Arc::new(crate::remote::ModuleFetcher::new(Some(
                crate::remote::default_cache_dir(),
            ))),
            module_policy: Arc::new(crate::trust::ModulePolicy::default()),
            executor: None,
            readiness: Arc::new(DefaultReadiness),
            custom_readiness: false,
            adopter: Arc::new(ExplicitAdopter),
            inventory: Arc::new(StatusInventory),
            namespace: None,
            shutdown_on_signal: false,
            rediscover_every: DEFAULT_REDISCOVERY_INTERVAL,
            metrics_listener: None,
            admission: None,
            leader_election: None,
            shard: None,
            clock: Arc::new(SystemClock),
            fleet_prune_guard: Arc::default(),
            cluster_scoped_allowed: Vec::new(),
            concurrent_reconciles: DEFAULT_CONCURRENT_RECONCILES,
            _kind: std::marker::PhantomData,
        }
    }

    /// At most `n` instances are reconciled at once (default
    /// [`DEFAULT_CONCURRENT_RECONCILES`]); the others wait in the queue, each instance still
    /// reconciled by one pass at a time. `0` means no limit.
    ///
    /// ```no_run
    /// # fn f<A: cuebe::Abstraction>(client: kube::Client) {
    /// let operator = cuebe::controller::Operator::<A>::new(client).concurrent_reconciles(16);
    /// # }
    /// ```
    pub fn concurrent_reconciles(mut self, n: u16) -> Self {
        self.concurrent_reconciles = n;
        self
    }

    /// Cluster-scoped kinds the module may render (`Kind.group`, `Kind` for the core group);
    /// every other cluster-scoped object is refused before anything of its graph is written.
    /// Applies to the default executor ([`SsaExecutor::allow_cluster_scoped`]).
    ///
    /// ```no_run
    /// # fn f<A: cuebe::Abstraction>(client: kube::Client) {
    /// let operator = cuebe::controller::Operator::<A>::new(client)
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

    /// At most `limit` instances may prune objects per `window` (default 50 per 10 minutes);
    /// the others wait, Progressing with reason `PrunePaused`, and `cuebe_prune_paused` is 1.
    /// See [`crate::executor::FleetPruneGuard`]. Applies to the default executor.
    ///
    /// ```no_run
    /// # fn f<A: cuebe::Abstraction>(client: kube::Client) {
    /// let operator = cuebe::controller::Operator::<A>::new(client)
    ///     .fleet_prune_limit(200, std::time::Duration::from_secs(300));
    /// # }
    /// ```
    pub fn fleet_prune_limit(self, limit: usize, window: Duration) -> Self {
        *self
            .fleet_prune_guard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            crate::executor::FleetPruneGuard::new(limit, window);
        self
    }

    /// Replaces the clock readiness timeouts and condition times are taken from (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The client the operator runs with (e.g. to build an inventory in
    /// `cuebe_cli::App::configure`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sets which published modules are trusted (see [`crate::trust`]): denied sources, and
    /// the keys whose cosign signature a source's modules must carry. Checked here, so that a
    /// policy mistake stops the operator at start rather than refusing modules later.
    pub fn with_module_policy(
        mut self,
        policy: crate::trust::ModulePolicy,
    ) -> Result<Self, crate::trust::InvalidPolicy> {
        policy.validate()?;
        self.module_policy = Arc::new(policy);
        Ok(self)
    }

    /// Replaces where published modules (`spec.platformRef.oci`) are fetched and cached
    /// (default: [`crate::remote::default_cache_dir`] on disk).
    #[cfg(feature = "remote-modules")]
    pub fn with_module_fetcher(mut self, fetcher: Arc<crate::remote::ModuleFetcher>) -> Self {
        self.module_fetcher = fetcher;
        self
    }

    /// Replaces the renderer.
    pub fn with_renderer(mut self, renderer: Arc<dyn Renderer>) -> Self {
        self.renderer = Some(renderer);
        self
    }

    /// Replaces the executor (then [`Operator::with_readiness`] and
    /// [`Operator::with_adopter`] are the executor's business).
    pub fn with_executor(mut self, executor: Arc<dyn Executor>) -> Self {
        self.executor = Some(executor);
        self
    }

    /// Replaces the readiness semantics of the default executor. They may read any field of a
    /// child, so its watch cache then keeps whole objects (more memory; see
    /// [`crate::child_cache`]).
    pub fn with_readiness(mut self, readiness: Arc<dyn Readiness>) -> Self {
        self.readiness = readiness;
        self.custom_readiness = true;
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
    /// [`crate::ops::metrics`]). The caller binds it, so a taken port is the caller's error to report.
    pub fn serve_metrics(mut self, listener: tokio::net::TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// Serves the validating admission webhook (see [`crate::admission`]) on every replica,
    /// leader or not: the API server asks it before storing an instance.
    pub fn admission_webhook(mut self, webhook: crate::admission::AdmissionWebhook) -> Self {
        self.admission = Some(webhook);
        self
    }

    /// Reconciles only while this replica holds the election's Lease (see [`crate::ops::leader`]),
    /// so several replicas can run. Without it, every replica reconciles. Replaces
    /// [`Operator::sharded`]: a replica either leads or is one shard of several.
    pub fn leader_election(mut self, election: LeaderElection) -> Self {
        self.leader_election = Some(election);
        self.shard = None;
        self
    }

    /// Reconciles, while this replica holds its shard Lease, only the instances the sharder
    /// assigned to it (see [`crate::ops::shard`]): several replicas share the fleet. Replaces
    /// [`Operator::leader_election`].
    ///
    /// The rollout driver (which moves a [`crate::rollout::PlatformChannel`] from wave to
    /// wave) needs the whole fleet and does not run on a shard: instances still follow their
    /// channel's status, but channels do not move from wave to wave while the operator is
    /// sharded.
    pub fn sharded(mut self, shard: crate::ops::shard::Shard) -> Self {
        self.shard = Some(shard);
        self.leader_election = None;
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
        let renderer = self
            .renderer
            .clone()
            .unwrap_or_else(|| Arc::new(CueRenderer::new(A::modules())));
        let rollout_metrics = crate::rollout::RolloutMetrics::default();
        let metrics = Arc::new(
            OperatorMetrics::new(&kind, Some(renderer.clone()))
                .with_fleet_prune_guard(self.fleet_prune_guard.clone())
                .with_rollouts(&rollout_metrics),
        );
        // Dropped (and so stopped) when `run` returns.
        let _metrics_server = self.metrics_listener.take().map(|listener| {
            AbortOnDrop(tokio::spawn(crate::ops::metrics::serve(
                listener,
                metrics.clone(),
            )))
        });
        let discovery = Discovery::default();
        // Approvals are read only when the policy asks for them: no watch, and no RBAC on
        // them needed, otherwise. Dropped (and so stopped) when `run` returns.
        #[cfg(feature = "remote-modules")]
        let (approvals, _approvals_watch) = if self.module_policy.any_requires_approval() {
            let (approvals, driver) = crate::approval::Approvals::watch(client.clone());
            (
                Some(Arc::new(approvals)),
                Some(AbortOnDrop(tokio::spawn(driver))),
            )
        } else {
            (None, None)
        };
        let reporter = Reporter {
            controller: A::FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let children = ChildCache::new(client.clone(), self.namespace.clone(), &kind)
            .keep_whole_objects(self.custom_readiness)
            .within_selector(self.shard.as_ref().map(crate::ops::shard::Shard::selector));
        let ctx = Arc::new(Context::<A> {
            recorders: NoteRecorders::new(client.clone(), reporter.clone()),
            reporter,
            executor: self.executor.clone().unwrap_or_else(|| {
                Arc::new(
                    SsaExecutor::new(client.clone(), A::FIELD_MANAGER)
                        .with_readiness(self.readiness.clone())
                        .with_adopter(self.adopter.clone())
                        .with_discovery(discovery.clone())
                        .with_fleet_prune_guard(self.fleet_prune_guard.clone())
                        .allow_cluster_scoped(self.cluster_scoped_allowed.clone())
                        .with_child_cache(children.clone())
                        .carry_instance_label(
                            self.shard
                                .as_ref()
                                .map(crate::ops::shard::Shard::shard_label),
                        ),
                )
            }),
            children,
            renderer,
            #[cfg(feature = "remote-modules")]
            module_fetcher: self.module_fetcher.clone(),
            #[cfg(feature = "remote-modules")]
            module_policy: self.module_policy.clone(),
            #[cfg(feature = "remote-modules")]
            approvals: approvals.clone(),
            metrics: metrics.clone(),
            rollout_metrics,
            channels: channel_driver::ChannelBook::default(),
            channel_nudges: std::sync::Mutex::new(None),
            inventory: self.inventory.clone(),
            client: client.clone(),
            capabilities: RwLock::new(Capabilities::default()),
            discovery,
            clock: self.clock.clone(),
            written: std::sync::Mutex::new(std::collections::HashMap::new()),
            statuses: crate::instance_store::InstanceStatuses::default(),
            failures: std::sync::Mutex::new(RetryBook::default()),
            watched: std::sync::RwLock::new(Vec::new()),
            swept: std::sync::Mutex::new(std::collections::HashSet::new()),
            seen: std::sync::Mutex::new(std::collections::HashSet::new()),
            reference_watches: std::sync::Mutex::new(None),
            shard: self.shard.clone(),
            _kind: std::marker::PhantomData,
        });
        // The admission webhook answers on every replica, leader or not. Dropped (and so
        // stopped) when `run` returns.
        let _admission = self.admission.take().map(|webhook| {
            AbortOnDrop(tokio::spawn(serve_admission(
                webhook,
                ctx.clone(),
                self.rediscover_every,
            )))
        });
        let stop: Trigger = stop_signal(self.shutdown_on_signal).shared();
        // An approval not listed yet is not a refusal: nothing is reconciled before the first
        // list (a missing CRD or RBAC is logged by the watch and retried).
        #[cfg(feature = "remote-modules")]
        if let Some(approvals) = &approvals {
            tracing::info!(
                "the module policy asks for approvals: reading PlatformModuleApprovals first"
            );
            tokio::select! {
                () = approvals.ready() => {}
                () = stop.clone() => return,
            }
        }
        let election = match (&self.shard, &self.leader_election) {
            (Some(shard), _) => {
                tracing::info!(ring = %shard.ring(), identity = %shard.identity(), "sharding: reconciling the instances assigned to this shard");
                Some(shard.election())
            }
            (None, election) => election.clone(),
        };
        let Some(election) = election else {
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
            // Losing the lease stops writing at once: the controller (and every reconcile in
            // flight in it) is dropped, not drained, because another replica may lead already.
            tokio::select! {
                () = self.run_controller(&ctx, &metrics, &stop, &lost) => {}
                () = lost.clone() => {
                    tracing::warn!(%kind, "lost the lease: reconciles in flight were cancelled");
                }
            }
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
        // Dropping this future (a lost lease) stops the child watches too.
        let _stop_children = StopChildren(ctx.children.clone());
        loop {
            let apis = tokio::select! {
                apis = ServedApis::discover_until_ok::<A>(client) => apis,
                () = stop.clone() => return,
                () = lost.clone() => return,
            };
            *ctx.capabilities.write().await = apis.capabilities.clone();
            // One discovery cache: the executor applies with what this round found.
            ctx.discovery.adopt(&apis.discovery);
            *ctx.watched
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = apis
                .watched
                .iter()
                .map(|(_, r)| (r.api_version.clone(), r.kind.clone()))
                .collect();
            // Another replica may have led meanwhile: what it wrote is not known here.
            ctx.swept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
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
            // The instance store keeps every instance for the life of the process: without
            // what nothing here reads (managedFields, a client-side apply's copy of the object)
            // and without its status, kept apart (`ctx.statuses`).
            let (instances_reader, instances_writer) = kube::runtime::reflector::store::<A>();
            // A shard watches (and so caches and reconciles) only what was assigned to it.
            let instance_watch = match &ctx.shard {
                Some(shard) => watcher::Config::default().labels(&shard.selector()),
                None => watcher::Config::default(),
            };
            // Statuses are kept apart, compactly (`instance_store`): listed again with the watch.
            ctx.statuses.clear();
            let status_ctx = ctx.clone();
            // Whether the instance store has had its first list, for the channel driver: it
            // must not wait on the store's own readiness, which kube's applier waits on too
            // and which wakes only the last of its waiters (see `store_ready`).
            let (instances_listed_tx, instances_listed) = tokio::sync::watch::channel(false);
            let instance_events = watcher(api.clone(), instance_watch)
                .default_backoff()
                .map_ok(move |mut event| {
                    status_ctx.statuses.take_from(&mut event);
                    event
                })
                .reflect(instances_writer)
                .map_ok(move |event| {
                    if matches!(event, watcher::Event::InitDone) {
                        instances_listed_tx.send_replace(true);
                    }
                    event
                })
                .applied_objects();
            let mut controller = Controller::for_stream(instance_events, instances_reader)
                .with_config(
                    kube::runtime::controller::Config::default()
                        .concurrency(self.concurrent_reconciles),
                )
                // A lost lease is not waited for here: `run` drops this future at once.
                .graceful_shutdown_on(stop.clone())
                .graceful_shutdown_on(changed_rx.map(|_| ()));
            // Channels: instances follow their channel's status, and the driver moves rollouts
            // (only when the PlatformChannel CRD is installed).
            let channels: Api<crate::rollout::PlatformChannel> = Api::all(client.clone());
            let channels_served = match channels.list(&ListParams::default().limit(1)).await {
                Ok(_) => true,
                Err(error) => {
                    tracing::info!(%error, "PlatformChannel is not served: rollouts are off (install the CRD the `crd` command prints)");
                    false
                }
            };
            let instances = controller.store();
            let mut driver = None;
            if channels_served && ctx.shard.is_some() {
                tracing::warn!(
                    "sharded: this replica does not drive PlatformChannel rollouts (the driver needs the whole fleet); instances still follow their channel's status"
                );
            }
            if channels_served {
                let mapper_ctx = ctx.clone();
                let mapper_store = instances.clone();
                controller = controller.watches(
                    channels.clone(),
                    watcher::Config::default(),
                    move |channel| {
                        channel_driver::instances_moved_by(&mapper_ctx, &mapper_store, channel)
                    },
                );
            }
            if channels_served && ctx.shard.is_none() {
                let state = Arc::new(channel_driver::Driver {
                    ctx: ctx.clone(),
                    instances: instances.clone(),
                    instances_listed: instances_listed.clone(),
                    written: std::sync::Mutex::new(std::collections::HashMap::new()),
                });
                // One driver per channel: an operator limited to a namespace drives only the
                // channels labelled with it; a cluster-wide one drives the others.
                let label = cuebe_core::NAMESPACE_LABEL;
                let driven = match &self.namespace {
                    Some(ns) => watcher::Config::default().labels(&format!("{label}={ns}")),
                    None => watcher::Config::default().labels(&format!("!{label}")),
                };
                let (nudge, nudged) = futures::channel::mpsc::unbounded();
                *ctx.channel_nudges
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(nudge);
                driver = Some(
                    Controller::new(channels, driven)
                        // A nudge comes right after an instance's status write; the cache the
                        // driver reads from sees that write a moment later.
                        .with_config(
                            kube::runtime::controller::Config::default()
                                .debounce(Duration::from_millis(500)),
                        )
                        .reconcile_on(nudged)
                        .graceful_shutdown_on(stop.clone())
                        .run(
                            channel_driver::drive_channel::<A>,
                            channel_driver::driver_error_policy::<A>,
                            state,
                        )
                        .for_each(|result| async move {
                            if let Err(e) = result {
                                tracing::debug!(error = %e, "rollout driver error");
                            }
                        }),
                );
            }
            // A referenced object (never labelled by us) changing reconciles its readers.
            let (referenced_tx, referenced_rx) = futures::channel::mpsc::unbounded();
            *ctx.reference_watches
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(Arc::new(reference_watches::ReferenceWatches::new(
                    client.clone(),
                    self.namespace.clone(),
                    referenced_tx,
                )));
            controller = controller.reconcile_on(referenced_rx);
            // An approval arriving (or revoked) reconciles the instances that checked its digest.
            #[cfg(feature = "remote-modules")]
            if let Some(approvals) = &ctx.approvals {
                controller = controller.reconcile_on(approvals.triggers());
            }
            // Child kinds: the kinds of `WATCHES` from now on, the others the module renders from
            // their first render (`watch_rendered_kinds`). Each watch fills the kind's store the
            // executor reads, then wakes the instance the changed object belongs to.
            let (children_tx, children_rx) = futures::channel::mpsc::unbounded();
            ctx.children.stop();
            ctx.children.set_trigger(Some({
                let kind = kind.clone();
                Arc::new(move |object: &DynamicObject| {
                    if let Some(owner) = owner_of::<A>(object, &kind) {
                        // Closed: the controller is gone, and `stop` ends this watch.
                        let _ = children_tx.unbounded_send(owner);
                    }
                })
            }));
            for (_, resource) in &apis.watched {
                match ctx
                    .discovery
                    .resource(client, &resource.api_version, &resource.kind)
                    .await
                {
                    Ok(Some((resource, namespaced))) => {
                        ctx.children.watch(&resource, namespaced, true);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::debug!(kind = %resource.kind, %error, "discovery failed; the kind is watched after a later render");
                    }
                }
            }
            controller = controller.reconcile_on(children_rx);
            metrics.set_watching(true);
            let instance_controller = controller
                .run(reconcile::<A>, error_policy::<A>, ctx.clone())
                .for_each(|result| async move {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "reconcile error");
                    }
                });
            // The driver lives as long as the instance controller it reads from.
            let driver = async move {
                if let Some(driver) = driver {
                    driver.await;
                }
                futures::future::pending::<()>().await;
            };
            tokio::select! {
                () = instance_controller => {}
                () = driver => {}
            }
            metrics.set_watching(false);
            // Stops the child watches; the next run starts them again (rendered kinds as it
            // renders).
            ctx.children.stop();
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

/// Stops the child watches when dropped.
struct StopChildren(ChildCache);

impl Drop for StopChildren {
    fn drop(&mut self) {
        self.0.stop();
    }
}

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
    /// What the round learned (the executor's cache takes it over when the controller starts).
    discovery: Discovery,
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
        let served = Discovery::round();
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
            discovery: served,
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
    /// Publishes the instances' events (one recorder per note: see [`NoteRecorders`]).
    recorders: NoteRecorders,
    /// Who publishes the events.
    reporter: Reporter,
    renderer: Arc<dyn Renderer>,
    #[cfg(feature = "remote-modules")]
    module_fetcher: Arc<crate::remote::ModuleFetcher>,
    #[cfg(feature = "remote-modules")]
    module_policy: Arc<crate::trust::ModulePolicy>,
    /// The cluster's module approvals, read when the policy asks for any (`requireApproval`).
    #[cfg(feature = "remote-modules")]
    approvals: Option<Arc<crate::approval::Approvals<ObjectRef<A>>>>,
    metrics: Arc<OperatorMetrics>,
    /// `cuebe_rollout_*`.
    rollout_metrics: crate::rollout::RolloutMetrics,
    /// The channels seen, for instances on a channel.
    channels: channel_driver::ChannelBook,
    /// Wakes the rollout driver of a channel when one of its instances changes readiness or
    /// module (set while a driver runs).
    channel_nudges: std::sync::Mutex<
        Option<futures::channel::mpsc::UnboundedSender<ObjectRef<crate::rollout::PlatformChannel>>>,
    >,
    executor: Arc<dyn Executor>,
    inventory: Arc<dyn Inventory>,
    /// What the cluster offers, as last discovered (a change restarts the controller).
    capabilities: RwLock<Capabilities>,
    /// What the API server serves, shared with the default executor.
    discovery: Discovery,
    clock: Arc<dyn Clock>,
    /// Consecutive failed reconciles per instance (by namespace/name) and the last error's
    /// text, for exponential backoff and one warning per change of error.
    failures: std::sync::Mutex<RetryBook>,
    /// The status last written per instance (by UID). The watch cache can lag behind our own
    /// writes; starting from what we wrote avoids repeating writes and events.
    written: std::sync::Mutex<std::collections::HashMap<String, AbstractionStatus>>,
    /// The statuses of the instances in the instance store (which keeps none).
    statuses: crate::instance_store::InstanceStatuses,
    /// Child kinds the controller watches (`apiVersion`, `kind`), as last discovered: where a
    /// sweep for unrecorded objects looks.
    watched: std::sync::RwLock<Vec<(String, String)>>,
    /// The watches of child kinds and their stores (what the default executor reads).
    children: ChildCache,
    /// Instances (by UID) whose inventory this process knows to list everything they wrote:
    /// swept since it started, or new to it with nothing written before.
    swept: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Instances (by UID) this process has reconciled at least once.
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
    /// What wakes an instance when an object its `Reference` nodes read changes (set while the
    /// controller runs).
    reference_watches: std::sync::Mutex<Option<Arc<reference_watches::ReferenceWatches<A>>>>,
    /// This replica's place in a controller ring, when sharded.
    shard: Option<crate::ops::shard::Shard>,
    _kind: std::marker::PhantomData<fn() -> A>,
}

impl<A: Abstraction> Context<A> {
    async fn capabilities(&self) -> Capabilities {
        self.capabilities.read().await.clone()
    }
}

/// Runs the admission webhook for `A`: renders each instance the API server sends, with the
/// capabilities the cluster offers (asked here too: a follower has no controller asking) and
/// no cluster reads, and answers with [`crate::admission::verdict`].
async fn serve_admission<A: Abstraction>(
    webhook: crate::admission::AdmissionWebhook,
    ctx: Arc<Context<A>>,
    rediscover_every: Duration,
) {
    let crd = A::crd();
    let served = crate::admission::Served {
        plural: crd.spec.names.plural.clone(),
        group: crd.spec.group.clone(),
        versions: crd
            .spec
            .versions
            .iter()
            .filter(|v| v.served)
            .map(|v| v.name.clone())
            .collect(),
    };
    let capabilities = Arc::new(RwLock::new(None::<Capabilities>));
    let discovering = {
        let (client, capabilities) = (ctx.client.clone(), capabilities.clone());
        async move {
            loop {
                match crate::discovery::discover_capabilities(&client, &A::capability_probes())
                    .await
                {
                    Ok(found) => *capabilities.write().await = Some(found),
                    Err(error) => {
                        tracing::debug!(%error, "admission webhook: capability discovery failed")
                    }
                }
                tokio::time::sleep(rediscover_every).await;
            }
        }
    };
    let _discovering = AbortOnDrop(tokio::spawn(discovering));
    let client = ctx.client.clone();
    let validate: crate::admission::Validate = Arc::new(move |object: DynamicObject| {
        let ctx = ctx.clone();
        let capabilities = capabilities.clone();
        Box::pin(async move { admission_verdict(&ctx, object, capabilities).await })
    });
    crate::admission::serve(webhook, client, served, validate).await;
}

/// The verdict on one object: decode it as `A`, find its module (embedded, or its channel's
/// embedded one), render with no observed values and ask the core.
async fn admission_verdict<A: Abstraction>(
    ctx: &Context<A>,
    object: DynamicObject,
    capabilities: Arc<RwLock<Option<Capabilities>>>,
) -> crate::admission::AdmissionVerdict {
    use crate::admission::{AdmissionVerdict, verdict};
    let kind = A::kind(&()).into_owned();
    let value = match serde_json::to_value(&object) {
        Ok(v) => v,
        Err(e) => return AdmissionVerdict::admit_unchecked(e),
    };
    let instance: A = match serde_path_to_error::deserialize(value) {
        Ok(instance) => instance,
        Err(e) => {
            return AdmissionVerdict {
                allowed: false,
                message: Some(format!("{}: {}", e.path(), e.inner())),
                warnings: Vec::new(),
            };
        }
    };
    let Some(capabilities) = capabilities.read().await.clone() else {
        return AdmissionVerdict::admit_unchecked("the cluster's capabilities are not known yet");
    };
    let platform_ref = match channel_driver::effective_ref(ctx, &instance).await {
        Ok(r) => r,
        Err(no_module) => return AdmissionVerdict::admit_unchecked(no_module.message),
    };
    if platform_ref
        .as_ref()
        .is_some_and(|r| r.oci.is_some() || r.git.is_some())
    {
        return AdmissionVerdict::admit_unchecked(
            "the instance renders with a published module, fetched and verified after admission",
        );
    }
    let mut input = render_input(&instance, capabilities, BTreeMap::new());
    input.platform_ref = platform_ref;
    let rendered = ctx.renderer.render(&input).await;
    verdict(&kind, rendered.as_ref().map(|plan| plan.graph()))
}

/// Event recorders, one per distinct note.
///
/// kube's recorder folds an event into the one it published on the same object in the last 6
/// minutes with the same type, reason and action — not note: it counts up that event's series
/// and keeps the first note. A Ready after recovery would read "3/3 nodes" for 2/2, a second
/// `ModuleLoaded` would name the first module. With a recorder per note, the same note folds
/// into a series and a different one is an event of its own (`transitions` makes events only on
/// changes, so this does not multiply them).
struct NoteRecorders {
    client: Client,
    reporter: Reporter,
    by_note: std::sync::Mutex<std::collections::HashMap<String, Recorder>>,
}

impl NoteRecorders {
    /// Distinct notes kept; past it the map starts over (an event then becomes a new object
    /// instead of counting up a series: harmless).
    const CAPACITY: usize = 1024;

    fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            by_note: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn for_note(&self, note: &str) -> Recorder {
        let mut by_note = self
            .by_note
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if by_note.len() >= Self::CAPACITY && !by_note.contains_key(note) {
            by_note.clear();
        }
        by_note
            .entry(note.to_string())
            .or_insert_with(|| Recorder::new(self.client.clone(), self.reporter.clone()))
            .clone()
    }
}

/// Publishes one event on the instance.
async fn publish<A: Abstraction>(ctx: &Context<A>, object: &A, note: EventNote) {
    let recorder = ctx
        .recorders
        .for_note(note.note.as_deref().unwrap_or_default());
    let event = KubeEvent {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason,
        note: note.note,
        action: note.action,
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
        tracing::debug!(error = %e, "could not publish an event");
    }
}

/// One event per object the pass adopted, pruned or released: the instance's audit trail of
/// what the operator did beyond applying.
async fn publish_changes<A: Abstraction>(ctx: &Context<A>, object: &A, changes: &[Change]) {
    for change in changes {
        let (reason, action) = change.action.event();
        let note = EventNote {
            warning: false,
            reason: reason.into(),
            note: Some(change.to_string()),
            action: action.into(),
        };
        publish(ctx, object, note).await;
    }
}

/// The latest known status of an instance: what we last wrote, unless the cache is newer.
fn known_status<A: Abstraction>(ctx: &Context<A>, object: &A) -> AbstractionStatus {
    let uid = object.meta().uid.clone().unwrap_or_default();
    let mut written = ctx
        .written
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cached = ctx.statuses.status_of(object);
    match written.get(&uid) {
        Some(ours)
            if cached
                .as_ref()
                .is_some_and(|c| c.observed_generation > ours.observed_generation) =>
        {
            cached.unwrap_or_default()
        }
        // The watch delivered our write: the cache answers from now on, and the copy goes (a
        // copy of every instance's status would double the memory the instance store holds).
        Some(ours) if cached.as_ref() == Some(ours) => {
            written.remove(&uid);
            cached.unwrap_or_default()
        }
        Some(ours) => ours.clone(),
        None => cached.unwrap_or_default(),
    }
}

/// Writes the status (when it changed) under a `status write` span.
async fn write_status<A: Abstraction>(
    ctx: &Context<A>,
    api: &Api<A>,
    object: &A,
    status: &AbstractionStatus,
) -> Result<(), ReconcileError> {
    let span = crate::spans::status_write();
    let written = tracing::Instrument::instrument(
        patch_changed_status(ctx, api, object, status),
        span.clone(),
    )
    .await;
    if let Err(error) = &written {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", error.to_string());
    }
    written
}

async fn patch_changed_status<A: Abstraction>(
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
    tracing::Span::current().record("cuebe.status.written", true);
    // A step of a rollout ends when its instances are Ready on the new module: tell the
    // channel's driver now rather than at its next look.
    let moved = |s: &AbstractionStatus| {
        (
            s.module_ref.clone(),
            s.is_ready(),
            s.condition(ConditionType::Stalled)
                .map(|c| c.status.clone()),
        )
    };
    if !status.channel.is_empty()
        && moved(&previous) != moved(status)
        && let Some(nudge) = ctx
            .channel_nudges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
    {
        let _ = nudge.unbounded_send(ObjectRef::new(&status.channel));
    }
    // Events go out after the status they describe is stored: a refused status write publishes
    // nothing that the status does not say.
    for note in transitions(&previous, status) {
        publish(ctx, object, note).await;
    }
    ctx.written
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(
            object.meta().uid.clone().unwrap_or_default(),
            status.clone(),
        );
    Ok(())
}

/// Hands the pass's inventory (kept in `status.inventory` while reconciling) to the
/// [`Inventory`], which decides what stays in the status.
async fn store_inventory<A: Abstraction>(
    ctx: &Context<A>,
    instance: &crate::instance::Instance,
    status: &mut AbstractionStatus,
) -> Result<(), ReconcileError> {
    let entries = std::mem::take(&mut status.inventory);
    ctx.inventory.store(instance, &entries, status).await?;
    Ok(())
}

/// What an instance's `platformRef` resolved to before rendering.
enum Published {
    /// An embedded module (or none named): the renderer resolves it.
    Embedded,
    /// A published module, fetched and checked, with its canonical reference, and how soon
    /// to look again when the reference may move (a git branch or tag).
    #[cfg_attr(not(feature = "remote-modules"), allow(dead_code))]
    Module(Arc<crate::module::ModuleSource>, String, Option<Duration>),
    /// Nothing to render with yet: the status says why; retry after this long.
    Unavailable(Duration),
}

// Rollouts: which module an instance on a channel renders with, and the driver of channels.
#[path = "channel_driver.rs"]
mod channel_driver;
#[path = "reference_watches.rs"]
mod reference_watches;

/// The module a reference names, for a render outside an instance's pass (a rollout's
/// preview): `None` for an embedded version (the renderer resolves it), the fetched and
/// verified module for a published one.
async fn module_of_ref<A: Abstraction>(
    ctx: &Context<A>,
    object: &A,
    reference: &crate::module::PlatformRef,
) -> Result<Option<Arc<crate::module::ModuleSource>>, String> {
    if reference.embedded.is_some() {
        return A::modules()
            .resolve(Some(reference))
            .map(|_| None)
            .map_err(|e| e.to_string());
    }
    let remote = match (reference.oci_reference(), reference.git_reference()) {
        (Some(r), _) => r.map(RemoteRef::Oci).map_err(|e| e.to_string())?,
        (_, Some(r)) => r.map(RemoteRef::Git).map_err(|e| e.to_string())?,
        _ => return Err(format!("{reference}: not a module")),
    };
    #[cfg(feature = "remote-modules")]
    {
        let modules = A::modules();
        let package = modules.entry_package().unwrap_or(".");
        fetch_remote(ctx, object, &remote, package)
            .await
            .map(|f| Some(f.module))
            .map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "remote-modules"))]
    {
        let _ = (ctx, object);
        Err(format!(
            "{remote}: this operator was built without the remote-modules feature of cuebe"
        ))
    }
}

/// A module the instance names outside the operator: an OCI digest or a git reference.
#[cfg_attr(not(feature = "remote-modules"), allow(dead_code))]
enum RemoteRef {
    Oci(crate::module::OciReference),
    Git(crate::module::GitReference),
}

impl std::fmt::Display for RemoteRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Oci(r) => r.fmt(f),
            Self::Git(r) => r.fmt(f),
        }
    }
}

/// Fetches the published module the instance pins (`oci`) or the git reference it names
/// (`git`), if any. A module that cannot be fetched or fails its checks is never rendered; the
/// instance keeps rendering with the last good module it was on (from the cache, without the
/// network) and the status says so.
async fn resolve_published<A: Abstraction>(
    ctx: &Context<A>,
    object: &A,
    platform_ref: Option<&crate::module::PlatformRef>,
    previous: &AbstractionStatus,
    status: &mut AbstractionStatus,
    generation: Option<i64>,
    now: &str,
) -> Published {
    let parsed = match platform_ref {
        Some(r) if r.oci.is_some() => r
            .oci_reference()
            .map(|p| p.map(RemoteRef::Oci).map_err(|e| (e.to_string(), "oci"))),
        Some(r) => r
            .git_reference()
            .map(|p| p.map(RemoteRef::Git).map_err(|e| (e.to_string(), "git"))),
        None => None,
    };
    let uid = object.meta().uid.as_deref().unwrap_or_default();
    // What this instance waits on is what this pass checks (see `check_approval`).
    #[cfg(feature = "remote-modules")]
    if let Some(approvals) = &ctx.approvals {
        approvals.forget(&ObjectRef::from_obj(object));
    }
    let Some(reference) = parsed else {
        ctx.metrics.module_in_use(uid, None);
        // Back on an embedded module: conditions about a published one would be stale.
        status.conditions.retain(|c| {
            c.type_ != ConditionType::ModuleResolved.as_str()
                && c.type_ != ConditionType::ModuleVerified.as_str()
        });
        return Published::Embedded;
    };
    let reference = match reference {
        Ok(r) => r,
        Err((message, field)) => {
            ctx.metrics.module_in_use(uid, None);
            let origin = if field == "oci" {
                ModuleOrigin::Oci
            } else {
                ModuleOrigin::Git
            };
            ctx.metrics
                .module_loaded(origin, ModuleLoad::Refused("InvalidReference"));
            status.stop_before_apply(
                ConditionType::ModuleResolved,
                "InvalidReference",
                &message,
                &format!("fix spec.platformRef.{field}"),
                generation,
                now,
            );
            return Published::Unavailable(Duration::from_secs(300));
        }
    };
    fetch_published(ctx, object, &reference, previous, status, generation, now).await
}

#[cfg(not(feature = "remote-modules"))]
async fn fetch_published<A: Abstraction>(
    _ctx: &Context<A>,
    _object: &A,
    reference: &RemoteRef,
    _previous: &AbstractionStatus,
    status: &mut AbstractionStatus,
    generation: Option<i64>,
    now: &str,
) -> Published {
    status.stop_before_apply(
        ConditionType::ModuleResolved,
        "RemoteModulesDisabled",
        &format!(
            "{reference}: this operator was built without the remote-modules feature of cuebe"
        ),
        "pin an embedded version, or run an operator built with remote modules",
        generation,
        now,
    );
    Published::Unavailable(Duration::from_secs(300))
}

/// A module fetched for an instance, whichever the source.
#[cfg(feature = "remote-modules")]
struct Fetched {
    module: Arc<crate::module::ModuleSource>,
    verification: crate::remote::Verification,
    /// The canonical reference (`status.platformRefResolved`).
    resolved: String,
    /// Why no signature was needed, for `ModuleVerified`.
    unverified_because: String,
    /// Look again this soon: the reference names a git branch or tag.
    recheck: Option<Duration>,
}

#[cfg(feature = "remote-modules")]
async fn fetch_remote<A: Abstraction>(
    ctx: &Context<A>,
    object: &A,
    reference: &RemoteRef,
    package: &str,
) -> Result<Fetched, crate::remote::FetchError> {
    let fetcher = &ctx.module_fetcher;
    match reference {
        RemoteRef::Oci(r) => {
            // Before any request: an unapproved digest is not fetched.
            let source = format!("{}/{}", r.registry, r.repository);
            check_approval(ctx, object, &source, &r.digest, &r.to_string())?;
            let (module, verification) = fetcher
                .fetch_trusted(r, package, &ctx.module_policy)
                .await?;
            Ok(Fetched {
                module,
                verification,
                resolved: r.to_string(),
                unverified_because: "the module policy asks no signature for this source: the module was accepted because it is pinned by digest and every digest matched".into(),
                recheck: None,
            })
        }
        RemoteRef::Git(r) => {
            let (fetched, verification) = fetcher
                .fetch_git_trusted(r, package, &ctx.module_policy)
                .await?;
            // The commit is known once the ref is resolved; nothing is used before this.
            check_approval(
                ctx,
                object,
                &r.repository.to_string(),
                &fetched.resolved.commit,
                &fetched.resolved.to_string(),
            )?;
            Ok(Fetched {
                module: fetched.module,
                verification,
                resolved: fetched.resolved.to_string(),
                unverified_because: format!(
                    "the module policy asks no signature for this source: the module was accepted as the tree of commit {}, which git names by its hash",
                    fetched.resolved.commit
                ),
                recheck: fetched.moving.then(|| fetcher.git_refresh()),
            })
        }
    }
}

/// The approval gate (`requireApproval`) for one digest the instance would use (an OCI
/// manifest digest or a git commit): `Ok` when the policy asks for none or an approval lists
/// it. The digest is recorded as one the instance waits on, so that a change of its approval
/// reconciles the instance at once.
#[cfg(feature = "remote-modules")]
fn check_approval<A: Abstraction>(
    ctx: &Context<A>,
    object: &A,
    source: &str,
    digest: &str,
    shown: &str,
) -> Result<(), crate::remote::FetchError> {
    match &ctx.approvals {
        Some(approvals) => approvals.check(
            &ObjectRef::from_obj(object),
            &ctx.module_policy,
            source,
            digest,
            shown,
        ),
        None => Ok(()),
    }
}

/// The module the instance rendered with last, if it was a published one (OCI or git) still
/// in the cache and the current policy still trusts it: what it keeps rendering with when its
/// reference cannot be used. Never the network.
#[cfg(feature = "remote-modules")]
fn last_good<A: Abstraction>(
    ctx: &Context<A>,
    object: &A,
    reference: &RemoteRef,
    previous: &AbstractionStatus,
    package: &str,
) -> Option<(String, Arc<crate::module::ModuleSource>)> {
    let fetcher = &ctx.module_fetcher;
    let previous = &previous.platform_ref_resolved;
    if let Ok(good) = crate::module::OciReference::parse(previous) {
        if matches!(reference, RemoteRef::Oci(r) if *r == good) {
            return None;
        }
        let source = format!("{}/{}", good.registry, good.repository);
        return fetcher
            .cached_trusted(&good, package, &ctx.module_policy)
            // A revoked approval revokes the fallback too.
            .filter(|_| {
                check_approval(ctx, object, &source, &good.digest, &good.to_string()).is_ok()
            })
            .map(|(m, _)| (good.to_string(), m));
    }
    // A git reference's last good commit may be the one its branch still names (the server is
    // down): that is exactly the fallback wanted.
    let good = crate::module::ResolvedGitReference::parse(previous)?;
    fetcher
        .cached_git_trusted(&good, package, &ctx.module_policy)
        .filter(|_| {
            let source = good.repository.to_string();
            check_approval(ctx, object, &source, &good.commit, &good.to_string()).is_ok()
        })
        .map(|(m, _)| (good.to_string(), m))
}

#[cfg(feature = "remote-modules")]
async fn fetch_published<A: Abstraction>(
    ctx: &Context<A>,
    object: &A,
    reference: &RemoteRef,
    previous: &AbstractionStatus,
    status: &mut AbstractionStatus,
    generation: Option<i64>,
    now: &str,
) -> Published {
    let modules = A::modules();
    let package = modules.entry_package().unwrap_or(".");
    match fetch_remote(ctx, object, reference, package).await {
        Ok(fetched) => {
            let Fetched {
                module,
                verification,
                resolved,
                unverified_because,
                recheck,
            } = fetched;
            // A git branch or tag says which ref it came from: the resolved form names only
            // the commit.
            let from = match reference {
                RemoteRef::Git(r) if recheck.is_some() => format!(", from {}", r.revision),
                RemoteRef::Oci(r) => ctx
                    .module_fetcher
                    .vendored_layout(&r.digest)
                    .map(|layout| format!(", vendored in {}", layout.display()))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            status.set_condition(
                ConditionType::ModuleResolved,
                true,
                "Resolved",
                format!("{resolved} (module content {}{from})", module.digest()),
                generation,
                now,
            );
            match &verification {
                crate::remote::Verification::Signed { key } => status.set_condition(
                    ConditionType::ModuleVerified,
                    true,
                    "Verified",
                    format!("signed by key {key}"),
                    generation,
                    now,
                ),
                crate::remote::Verification::Unverified => status.set_condition(
                    ConditionType::ModuleVerified,
                    false,
                    "Unverified",
                    unverified_because,
                    generation,
                    now,
                ),
            }
            audit_module_in_use(ctx, object, reference, &resolved, &module, &verification);
            Published::Module(module, resolved, recheck)
        }
        Err(error) => {
            audit_module_refused(ctx, object, reference, &error);
            if matches!(
                error,
                crate::remote::FetchError::SourceDenied { .. }
                    | crate::remote::FetchError::SignatureInvalid { .. }
                    | crate::remote::FetchError::NotApproved { .. }
            ) {
                status.set_condition(
                    ConditionType::ModuleVerified,
                    false,
                    error.reason(),
                    error.to_string(),
                    generation,
                    now,
                );
            }
            // Nothing breaks because a registry or git server is down or served bad content,
            // nor is a module the policy no longer trusts used (see `last_good`).
            let uid = object.meta().uid.as_deref().unwrap_or_default();
            match last_good(ctx, object, reference, previous, package) {
                Some((good, module)) => {
                    let origin = if good.starts_with("oci://") {
                        ModuleOrigin::Oci
                    } else {
                        ModuleOrigin::Git
                    };
                    ctx.metrics
                        .module_in_use(uid, Some((origin, module.digest())));
                    status.set_condition(
                        ConditionType::ModuleResolved,
                        false,
                        error.reason(),
                        format!("{error}; still rendering with the last good module {good}"),
                        generation,
                        now,
                    );
                    // A git server that is down is asked again when the ref is due anyway, and
                    // so is a branch or tag whose commit was refused (unsigned, say): it may
                    // move to one that is good.
                    let retry = matches!(reference, RemoteRef::Git(r)
                        if error.is_transient()
                            || matches!(r.revision, crate::module::GitRevision::Name(_)))
                    .then(|| ctx.module_fetcher.git_refresh());
                    Published::Module(module, good, retry)
                }
                None if error.is_transient() => {
                    ctx.metrics.module_in_use(uid, None);
                    status.set_condition(
                        ConditionType::ModuleResolved,
                        false,
                        error.reason(),
                        error.to_string(),
                        generation,
                        now,
                    );
                    status.set_condition(
                        ConditionType::Ready,
                        false,
                        error.reason(),
                        error.to_string(),
                        generation,
                        now,
                    );
                    status.set_condition(
                        ConditionType::Progressing,
                        true,
                        error.reason(),
                        "retrying the fetch; nothing is applied until the module is available",
                        generation,
                        now,
                    );
                    status.set_condition(
                        ConditionType::Stalled,
                        false,
                        error.reason(),
                        "",
                        generation,
                        now,
                    );
                    Published::Unavailable(Duration::from_secs(15))
                }
                None => {
                    ctx.metrics.module_in_use(uid, None);
                    status.stop_before_apply(
                        ConditionType::ModuleResolved,
                        error.reason(),
                        &error.to_string(),
                        match &error {
                            crate::remote::FetchError::NotApproved { .. } => {
                                "the module policy requires approval of this digest: approve it (a PlatformModuleApproval listing it, as the message says), or pin an approved module"
                            }
                            crate::remote::FetchError::SourceDenied { .. }
                            | crate::remote::FetchError::SignatureInvalid { .. } => {
                                "the module policy refuses this module: sign it with a key the policy lists, pin another module, or change the policy"
                            }
                            _ if matches!(reference, RemoteRef::Git(_)) => {
                                "the content was refused; fix the module in the repository, or name another ref or dir"
                            }
                            _ => "the content was refused; publish the module again and pin its digest",
                        },
                        generation,
                        now,
                    );
                    Published::Unavailable(Duration::from_secs(300))
                }
            }
        }
    }
}

#[cfg(feature = "remote-modules")]
impl RemoteRef {
    fn origin(&self) -> ModuleOrigin {
        match self {
            Self::Oci(_) => ModuleOrigin::Oci,
            Self::Git(_) => ModuleOrigin::Git,
        }
    }
}

/// The audit trail of a published module a pass renders with, besides the `ModuleLoaded`
/// Event (`transitions`): a count of `cuebe_module_loads_total`, the gauge of modules in use,
/// and a log line with the source, digest, verification and signer key id (at info when the
/// instance's module changed for this process, at debug on every later pass).
#[cfg(feature = "remote-modules")]
fn audit_module_in_use<A: Abstraction>(
    ctx: &Context<A>,
    object: &A,
    reference: &RemoteRef,
    resolved: &str,
    module: &crate::module::ModuleSource,
    verification: &crate::remote::Verification,
) {
    let (load, verified, key) = match verification {
        crate::remote::Verification::Signed { key } => {
            (ModuleLoad::Verified, "Verified", key.as_str())
        }
        crate::remote::Verification::Unverified => (ModuleLoad::Unverified, "Unverified", ""),
    };
    let origin = reference.origin();
    ctx.metrics.module_loaded(origin, load);
    let uid = object.meta().uid.as_deref().unwrap_or_default();
    let changed = ctx
        .metrics
        .module_in_use(uid, Some((origin, module.digest())));
    let instance = format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    );
    let source = origin.as_str();
    if changed {
        tracing::info!(%instance, source, %reference, %resolved, digest = %module.digest(), verification = verified, key, "platform module loaded");
    } else {
        tracing::debug!(%instance, source, %reference, %resolved, digest = %module.digest(), verification = verified, key, "platform module in use");
    }
}

/// The audit trail of a published module a pass could not use: a count of
/// `cuebe_module_loads_total` (`refused`, or `failed` when the source could not be reached)
/// and a warning with the source, reference and reason.
#[cfg(feature = "remote-modules")]
fn audit_module_refused<A: Abstraction>(
    ctx: &Context<A>,
    object: &A,
    reference: &RemoteRef,
    error: &crate::remote::FetchError,
) {
    let load = if error.is_transient() {
        ModuleLoad::Failed(error.reason())
    } else {
        ModuleLoad::Refused(error.reason())
    };
    let origin = reference.origin();
    ctx.metrics.module_loaded(origin, load);
    let instance = format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    );
    let source = origin.as_str();
    tracing::warn!(%instance, source, %reference, %error, reason = error.reason(), "platform module not usable");
}

/// Starts a watch of every kind `graph` renders that is not watched yet, and tells the child
/// cache what the graph reads of each kind (see [`crate::child_cache::needs_of`]); a kind the
/// cluster does not serve is left to the apply to report.
///
/// Why every rendered kind: drift correction and readiness are driven by the child watches. A
/// kind missing from `WATCHES` (forgotten, or a new kind a module version starts rendering)
/// would otherwise be unwatched: a hand-deleted object not recreated, readiness changes unseen
/// until the next resync, and every read of it a GET.
async fn watch_rendered_kinds<A: Abstraction>(ctx: &Context<A>, graph: &cuebe_core::graph::Graph) {
    let needs = crate::child_cache::needs_of(graph);
    // A referenced object carries none of our labels, so a label-filtered watch of its kind
    // would see nothing of it: `reference_watches` wakes its readers.
    let written: std::collections::BTreeSet<(&str, &str)> = graph
        .nodes
        .iter()
        .filter(|n| !n.is_reference())
        .filter_map(|n| n.object.as_ref())
        .filter_map(|o| Some((o.get("apiVersion")?.as_str()?, o.get("kind")?.as_str()?)))
        .collect();
    for ((api_version, kind), need) in &needs {
        ctx.children.require(api_version, kind, need);
    }
    for (api_version, kind) in written {
        if ctx.children.is_watched(api_version, kind) {
            continue;
        }
        match ctx.discovery.resource(&ctx.client, api_version, kind).await {
            Ok(Some((resource, namespaced))) => {
                if ctx.children.watch(&resource, namespaced, false) {
                    let mut watched = ctx
                        .watched
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let key = (api_version.to_string(), kind.to_string());
                    if !watched.contains(&key) {
                        watched.push(key);
                    }
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(%api_version, %kind, %error, "discovery failed; the kind is watched after a later render");
            }
        }
    }
}

/// The kinds a sweep looks at: every watched kind, every kind of the inventory and of `plan`.
fn sweep_kinds<A: Abstraction>(
    ctx: &Context<A>,
    inventory: &[crate::inventory::InventoryEntry],
    plan: Option<&crate::plan::Plan>,
) -> Vec<(String, String)> {
    let mut kinds: Vec<(String, String)> = ctx
        .watched
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let rendered = plan
        .into_iter()
        .flat_map(|p| p.graph().nodes.iter())
        .filter_map(|n| {
            let o = n.object.as_ref()?;
            Some((
                o.get("apiVersion")?.as_str()?.to_string(),
                o.get("kind")?.as_str()?.to_string(),
            ))
        });
    let recorded = inventory
        .iter()
        .map(|e| (e.api_version.clone(), e.kind.clone()));
    for kind in rendered.chain(recorded) {
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds
}

/// Objects this instance wrote but never recorded (see
/// [`cuebe_core::inventory::unrecorded_entries`]), as inventory entries; `plan` gives a still
/// rendered object its node back.
async fn sweep_unrecorded<A: Abstraction>(
    ctx: &Context<A>,
    instance: &crate::instance::Instance,
    inventory: &[crate::inventory::InventoryEntry],
    plan: Option<&crate::plan::Plan>,
) -> Result<Vec<crate::inventory::InventoryEntry>, crate::executor::ExecuteError> {
    let kinds = sweep_kinds(ctx, inventory, plan);
    let found = ctx.executor.labelled(instance, &kinds).await?;
    let node_of = |group: &str, kind: &str, name: &str| {
        plan?.graph().nodes.iter().find_map(|n| {
            let o = n.object.as_ref()?;
            let api_version = o.get("apiVersion")?.as_str()?;
            let same = api_version.rsplit_once('/').map_or("", |(g, _)| g) == group
                && o.get("kind")?.as_str()? == kind
                && o.pointer("/metadata/name")?.as_str()? == name;
            same.then(|| n.id.clone())
        })
    };
    let recovered = cuebe_core::inventory::unrecorded_entries(inventory, &found, node_of);
    for entry in &recovered {
        tracing::warn!(
            instance = %format!("{}/{}", instance.namespace, instance.name),
            kind = %entry.kind, name = %entry.name, node = %entry.node_id,
            "found an object this instance wrote but never recorded (the operator stopped between \
             applying it and storing the inventory); it is managed again"
        );
    }
    Ok(recovered)
}

async fn apply<A: Abstraction>(
    object: Arc<A>,
    ctx: Arc<Context<A>>,
) -> Result<Action, ReconcileError> {
    let ns = object.namespace().unwrap_or_else(|| "default".into());
    let api: Api<A> = Api::namespaced(ctx.client.clone(), &ns);
    let generation = object.meta().generation;
    let pass_time = ctx.clock.now();
    let now = pass_time.to_string();
    let previous = known_status(&ctx, &object);
    let mut status = previous.clone();
    status.observed_generation = generation;
    let capabilities = ctx.capabilities().await;
    let instance = instance_of(object.as_ref());
    status.inventory = ctx.inventory.load(&instance, &previous).await?;
    // Was everything this instance wrote recorded? Unknown after a start, a change of leader,
    // or a pass that did not finish storing its inventory; then this pass sweeps by label.
    let uid = object.meta().uid.clone().unwrap_or_default();
    let known_complete = ctx
        .swept
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&uid);
    let first_sight = ctx
        .seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(uid.clone());
    let nothing_written_before =
        previous.observed_generation.is_none() && status.inventory.is_empty();
    // A new instance this process meets before anything was written for it has nothing to find.
    let new_and_untouched = first_sight && nothing_written_before;
    let mut sweep_pending = !(known_complete || new_and_untouched);

    // An instance on a channel renders with the module the channel's rollout gives it.
    let platform_ref = match channel_driver::effective_ref(&ctx, object.as_ref()).await {
        Ok(r) => r,
        Err(no_module) => {
            status.stop_before_apply(
                ConditionType::ModuleResolved,
                no_module.reason,
                &no_module.message,
                &no_module.hint,
                generation,
                &now,
            );
            store_inventory(&ctx, &instance, &mut status).await?;
            write_status(&ctx, &api, &object, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
    };
    status.channel = object
        .platform_ref()
        .and_then(|r| r.channel)
        .unwrap_or_default();
    // Said before rendering: a channel's driver must see which module a failure belongs to.
    status.module_ref = match &platform_ref {
        Some(r) => r.to_string(),
        None => format!(
            "embedded:{}",
            A::modules().versions().last().unwrap_or_default()
        ),
    };
    let mut rendered_ref = platform_ref.clone();
    let (published, published_ref, recheck) = match resolve_published(
        &ctx,
        object.as_ref(),
        platform_ref.as_ref(),
        &previous,
        &mut status,
        generation,
        &now,
    )
    .await
    {
        Published::Embedded => (None, None, None),
        Published::Module(module, reference, recheck) => {
            // Kept on its last good module (the one asked for is unusable): say which it is,
            // and render exactly as before (the module sees the reference it renders with, so
            // the render hash is the one that module gave).
            let fell_back = status
                .condition(ConditionType::ModuleResolved)
                .is_some_and(|c| c.status == "False");
            if fell_back {
                status.module_ref = reference.clone();
                rendered_ref = Some(if reference.starts_with("oci://") {
                    crate::module::PlatformRef {
                        oci: Some(reference.clone()),
                        ..Default::default()
                    }
                } else {
                    crate::module::PlatformRef {
                        git: Some(reference.clone()),
                        ..Default::default()
                    }
                });
            }
            (Some(module), Some(reference), recheck)
        }
        Published::Unavailable(retry) => {
            store_inventory(&ctx, &instance, &mut status).await?;
            write_status(&ctx, &api, &object, &status).await?;
            return Ok(Action::requeue(retry));
        }
    };

    // Observed exports come from the live objects of the inventory.
    let mut observed: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut last_exec: Option<Outcome> = None;
    // The plan the last execution ran (its readiness timeouts set the next look).
    let mut last_plan = None;
    for _round in 0..3 {
        let mut input = render_input(object.as_ref(), capabilities.clone(), observed.clone());
        input.platform_ref = platform_ref.clone();
        channel_driver::show_module_ref(&mut input, rendered_ref.as_ref(), object.as_ref());
        input.module = published.clone();
        let started = std::time::Instant::now();
        let render_span = crate::spans::render();
        let rendered =
            tracing::Instrument::instrument(ctx.renderer.render(&input), render_span.clone()).await;
        crate::spans::record_render(
            render_span,
            rendered.as_deref().map_err(|e| (e.reason(), e)),
        );
        ctx.metrics.rendered(started.elapsed());
        let plan = match rendered {
            Ok(p) => p,
            Err(e) => {
                status.stop_before_apply(
                    ConditionType::Rendered,
                    e.reason(),
                    &e.to_string(),
                    "fix the spec or the module",
                    generation,
                    &now,
                );
                store_inventory(&ctx, &instance, &mut status).await?;
                write_status(&ctx, &api, &object, &status).await?;
                // A timeout may pass (CPU pressure, or earlier evaluations still running): look
                // again with the stall backoff. Other render errors wait for a change.
                if matches!(e, crate::renderer::RenderError::Timeout { .. }) {
                    let key = format!("{}/{}", instance.namespace, instance.name);
                    let delay = ctx
                        .failures
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .stalled(&key);
                    return Ok(Action::requeue(delay));
                }
                return Ok(Action::await_change());
            }
        };
        let graph = plan.graph();
        watch_rendered_kinds(&ctx, graph).await;
        // Just after a start (or a new kind's first render) the stores are listing: read from
        // them once listed rather than GET what the list brings a moment later.
        ctx.children.wait_first_lists().await;
        // A published module is named by its canonical reference; an embedded one by digest.
        status.platform_ref_resolved = published_ref
            .clone()
            .unwrap_or_else(|| graph.metadata.platform_ref_resolved.clone());
        status.render_hash = graph.metadata.render_hash.clone();
        status.violations = graph.violations.clone();
        status.set_condition(
            ConditionType::Rendered,
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
            status.stop_before_apply(
                ConditionType::PolicyPassed,
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
        status.set_condition(
            ConditionType::PolicyPassed,
            true,
            "PolicyPassed",
            "",
            generation,
            &now,
        );

        track_references(&ctx, object.as_ref(), graph).await;
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
                    // A Reference node's object is never in the inventory: read it where the
                    // graph names it.
                    None => match graph
                        .node(&export.node)
                        .and_then(|n| cuebe_core::plan::reference_address(n, &instance.namespace))
                    {
                        Some(address) => ctx.executor.live(&address).await.ok().flatten(),
                        None => None,
                    },
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
        if sweep_pending {
            let recovered = sweep_unrecorded(&ctx, &instance, &status.inventory, Some(&plan))
                .await
                .map_err(ReconcileError::Sweep)?;
            status.inventory.extend(recovered);
            sweep_pending = false;
        }
        let outcome = ctx
            .executor
            .execute(&instance, &plan, &status, pass_time)
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
        last_plan = Some(plan.clone());
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
    let verdict = summarize(&mut status, &outcome, generation, &now);
    let outcome_reason = status
        .condition(ConditionType::Ready)
        .map(|c| c.reason.clone())
        .unwrap_or_default();
    let (module_ref, resolved, render_hash) = (
        status.module_ref.clone(),
        status.platform_ref_resolved.clone(),
        status.render_hash.clone(),
    );
    status.record_revision(&module_ref, &resolved, &render_hash, &outcome_reason, &now);
    write_status(&ctx, &api, &object, &status).await?;
    if !sweep_pending {
        // The stored inventory lists everything written so far.
        ctx.swept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(uid);
    }
    let key = format!("{}/{}", instance.namespace, instance.name);
    let mut book = ctx
        .failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if verdict != PassVerdict::Stalled {
        book.not_stalled(&key);
    }
    if verdict != PassVerdict::Retrying {
        book.not_retrying(&key);
    }
    Ok(match verdict {
        // A git branch or tag may move: look again when it is due to be resolved again.
        PassVerdict::Ready => Action::requeue(recheck.map_or(Duration::from_secs(300), |d| {
            d.min(Duration::from_secs(300))
        })),
        PassVerdict::Stalled => Action::requeue(book.stalled(&key)),
        // The fleet guard's window is minutes long: asking every few seconds would only cost.
        PassVerdict::PrunePaused => Action::requeue(Duration::from_secs(60)),
        PassVerdict::Retrying => Action::requeue(book.retrying(&key)),
        // Child changes wake it through the watches; this is for a readiness timeout expiring.
        PassVerdict::Progressing => {
            let timeouts = |id: &str| last_plan.as_ref()?.readiness_timeout(id);
            let recheck = cuebe_core::plan::progressing_recheck(&status.nodes, timeouts, pass_time);
            // The safety net, spread so that a fleet started together is not looked at together.
            Action::requeue(if recheck == cuebe_core::plan::PROGRESSING_RECHECK {
                spread(recheck, &key)
            } else {
                recheck
            })
        }
        PassVerdict::Blocked => Action::requeue(Duration::from_secs(5)),
    })
}

/// Tells the reference watches which objects the instance's `Reference` nodes read now (see
/// [`reference_watches`]).
async fn track_references<A: Abstraction>(
    ctx: &Context<A>,
    object: &A,
    graph: &cuebe_core::graph::Graph,
) {
    let Some(watches) = ctx
        .reference_watches
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
    else {
        return;
    };
    let namespace = object.namespace().unwrap_or_default();
    let mut objects = Vec::new();
    for node in graph.nodes.iter().filter(|n| n.is_reference()) {
        let Some(address) = cuebe_core::plan::reference_address(node, &namespace) else {
            continue;
        };
        match ctx
            .discovery
            .resource(&ctx.client, &address.api_version, &address.kind)
            .await
        {
            Ok(Some((resource, namespaced))) => {
                objects.push((resource, namespaced, address.namespace, address.name));
            }
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(kind = %address.kind, %error, "discovery failed; the reference is watched after a later render");
            }
        }
    }
    watches.track(&ObjectRef::from_obj(object), objects);
}

async fn cleanup<A: Abstraction>(
    object: Arc<A>,
    ctx: Arc<Context<A>>,
) -> Result<Action, ReconcileError> {
    let instance = instance_of(object.as_ref());
    let status = known_status(&ctx, &object);
    let mut inventory = ctx.inventory.load(&instance, &status).await?;
    // Deleting an instance removes what it wrote, recorded or not: an object applied just
    // before the operator stopped, and never stored in the inventory, goes too.
    let recovered = sweep_unrecorded(&ctx, &instance, &inventory, None)
        .await
        .map_err(ReconcileError::Sweep)?;
    inventory.extend(recovered);
    let done = ctx
        .executor
        .teardown(&instance, &inventory, object.deletion_policy())
        .await
        .map_err(ReconcileError::Teardown)?;
    if done {
        ctx.inventory.forget(&instance).await?;
        if let Some(watches) = ctx
            .reference_watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            watches.track(&ObjectRef::from_obj(object.as_ref()), Vec::new());
        }
        #[cfg(feature = "remote-modules")]
        if let Some(approvals) = &ctx.approvals {
            approvals.forget(&ObjectRef::from_obj(object.as_ref()));
        }
        let uid = object.meta().uid.clone().unwrap_or_default();
        ctx.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .forget(&format!("{}/{}", instance.namespace, instance.name));
        for set in [&ctx.swept, &ctx.seen] {
            set.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&uid);
        }
        ctx.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&uid);
        ctx.metrics
            .instance_gone(object.meta().uid.as_deref().unwrap_or_default());
        Ok(Action::await_change())
    } else {
        // Returning an error keeps the finalizer until every object is gone.
        Err(ReconcileError::TeardownInProgress)
    }
}

async fn reconcile<A: Abstraction>(
    object: Arc<A>,
    ctx: Arc<Context<A>>,
) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    let ns = object.namespace().unwrap_or_else(|| "default".into());
    let key = format!("{ns}/{}", object.name_any());
    let api: Api<A> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(shard) = &ctx.shard {
        match shard.decide(object.labels()) {
            crate::ops::shard::ShardDecision::Reconcile => {}
            crate::ops::shard::ShardDecision::Drain => {
                return drain(&api, &object, shard, &ctx, &key).await;
            }
            // Moved away between the watch event and this pass: the new shard has it.
            crate::ops::shard::ShardDecision::NotOurs => return Ok(Action::await_change()),
        }
    }
    tracing::debug!(instance = %key, "pass started");
    let span = crate::spans::reconcile(
        &A::kind(&()),
        &ns,
        &object.name_any(),
        object.meta().generation,
    );
    let reconciled = object.clone();
    let result = tracing::Instrument::instrument(
        finalizer(&api, A::FINALIZER, object, |event| async {
            match event {
                Event::Apply(object) => apply(object, ctx.clone()).await,
                Event::Cleanup(object) => cleanup(object, ctx.clone()).await,
            }
        }),
        span.clone(),
    )
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => ReconcileError::Finalizer(Box::new(other)),
    });
    if !span.is_disabled() {
        // What this pass left: the status it wrote (a deletion has none worth naming).
        let status = reconciled
            .meta()
            .deletion_timestamp
            .is_none()
            .then(|| known_status(&ctx, reconciled.as_ref()));
        crate::spans::record_reconcile(&span, status.as_ref(), result.as_ref().map(|_| ()));
    }
    ctx.metrics.reconciled(result.is_ok(), started.elapsed());
    tracing::debug!(instance = %key, ok = result.is_ok(), "pass ended");
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .succeeded(&key);
    }
    result
}

/// Lets an instance go as the sharder asked: no pass, and the shard and drain labels removed
/// (which is the acknowledgement the sharder waits for before it assigns the instance to its
/// new shard). The removal carries the resourceVersion this replica saw, as the protocol's
/// reference shard does: a pass queued before the watch delivered the hand-over must not strip
/// the label the new shard got meanwhile. What this replica remembered of the instance is
/// forgotten: whoever owns it next may write what this replica never hears of.
async fn drain<A: Abstraction>(
    api: &Api<A>,
    object: &A,
    shard: &crate::ops::shard::Shard,
    ctx: &Context<A>,
    key: &str,
) -> Result<Action, ReconcileError> {
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": object.resource_version(),
        "labels": {shard.shard_label(): null, shard.drain_label(): null},
    }});
    match api
        .patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {}
        // Deleted meanwhile: nothing left to hand over. Changed meanwhile (handed over
        // already, or relabelled): the watch delivers what it is now.
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
            return Ok(Action::await_change());
        }
        Err(source) => return Err(ReconcileError::Handover(source)),
    }
    if let Some(uid) = object.uid() {
        ctx.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&uid);
        ctx.swept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&uid);
        // Counted by its new shard from now on.
        ctx.metrics.instance_gone(&uid);
    }
    ctx.failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .forget(key);
    let reference = ObjectRef::from_obj(object);
    if let Some(watches) = ctx
        .reference_watches
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
    {
        watches.track(&reference, Vec::new());
    }
    #[cfg(feature = "remote-modules")]
    if let Some(approvals) = &ctx.approvals {
        approvals.forget(&reference);
    }
    tracing::info!(instance = %key, ring = %shard.ring(), "drained: handed back to the sharder for another shard");
    Ok(Action::await_change())
}

/// Retries a failed reconcile with exponential backoff per instance (a permanent error — RBAC
/// Forbidden, a module that does not load — must not loop at a fixed rate), and warns once per
/// change of error rather than at every retry.
fn error_policy<A: Abstraction>(
    object: Arc<A>,
    error: &ReconcileError,
    ctx: Arc<Context<A>>,
) -> Action {
    let key = format!(
        "{}/{}",
        object.namespace().unwrap_or_else(|| "default".into()),
        object.name_any()
    );
    let teardown = matches!(error, ReconcileError::TeardownInProgress);
    let retry = ctx
        .failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .failed(&key, &error.to_string(), teardown);
    let (failures, delay) = (retry.failures, retry.delay);
    if retry.warn {
        tracing::warn!(instance = %key, %error, failures, retry_in = ?delay, "reconcile failed");
    } else {
        tracing::debug!(instance = %key, %error, failures, retry_in = ?delay, "reconcile failed again");
    }
    Action::requeue(delay)
}

/// What to do after a failed reconcile: when to retry and whether to warn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retry {
    /// Consecutive failures of this instance, this one included.
    failures: u32,
    delay: Duration,
    /// Warn (rather than debug): the first failure, or a different error than the last one.
    warn: bool,
}

/// Consecutive failures per instance (`namespace/name`) and the last error's text: the state
/// the error policy decides from. Kept apart from the controller so the decision is a function
/// over data with table tests.
#[derive(Debug, Default)]
struct RetryBook {
    failures: std::collections::HashMap<String, (u32, String)>,
    /// Consecutive Stalled passes per instance.
    stalls: std::collections::HashMap<String, u32>,
    /// Consecutive passes per instance that ended with an API call to retry.
    retries: std::collections::HashMap<String, u32>,
}

impl RetryBook {
    /// A permanent error (RBAC Forbidden, a module that does not load) backs off exponentially
    /// (2 s doubling up to 5 min) instead of looping at a fixed rate; deletion waiting for its
    /// objects to go is progress, so it starts fast (0.5 s doubling up to 30 s) and never warns.
    fn failed(&mut self, key: &str, error: &str, teardown_in_progress: bool) -> Retry {
        let entry = self
            .failures
            .entry(key.to_string())
            .or_insert((0, String::new()));
        entry.0 = entry.0.saturating_add(1);
        let changed = entry.1 != error;
        if changed {
            entry.1 = error.to_string();
        }
        let failures = entry.0;
        let delay = if teardown_in_progress {
            retry_delay(
                failures,
                Duration::from_millis(500),
                Duration::from_secs(30),
            )
        } else {
            retry_delay(failures, Duration::from_secs(2), Duration::from_secs(300))
        };
        Retry {
            failures,
            delay,
            warn: changed && !teardown_in_progress,
        }
    }

    /// A reconcile succeeded: the next failure starts from the shortest delay and warns again.
    fn succeeded(&mut self, key: &str) {
        self.failures.remove(key);
    }

    /// When to look again at an instance whose pass ended Stalled (a terminal failure: an
    /// invalid object, a forbidden write, a failed cloud resource). Nothing changes by itself,
    /// and a change of spec or of a child triggers a pass anyway, so 30 s doubling up to 10 min.
    fn stalled(&mut self, key: &str) -> Duration {
        let n = self.stalls.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        retry_delay(*n, Duration::from_secs(30), Duration::from_secs(600))
    }

    /// The instance's pass did not stall: the next stall starts from 30 s again.
    fn not_stalled(&mut self, key: &str) {
        self.stalls.remove(key);
    }

    /// When to look again at an instance whose pass ended with a failed API call (a timeout,
    /// a 5xx, a 429): 5 s doubling up to 5 min, spread ±25 % by instance. At a fixed 5 s, an
    /// overloaded API server that times out the writes of 10,000 instances got all of them
    /// again every 5 s, all at once, and never recovered (measured: 93,000 timed-out applies
    /// of Services in 10 minutes).
    fn retrying(&mut self, key: &str) -> Duration {
        let n = self.retries.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        spread(
            retry_delay(*n, Duration::from_secs(5), Duration::from_secs(300)),
            key,
        )
    }

    /// The instance's pass needed no retry: the next one starts from 5 s again.
    fn not_retrying(&mut self, key: &str) {
        self.retries.remove(key);
    }

    /// The instance is gone: a new one of the same name starts with a clean record.
    fn forget(&mut self, key: &str) {
        self.failures.remove(key);
        self.stalls.remove(key);
        self.retries.remove(key);
    }
}

/// `delay` scaled into 75–125 % by a hash of `key`: instances that failed together (one API
/// server outage) come back spread out, each at its own steady offset.
fn spread(delay: Duration, key: &str) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    let permille = 750 + (hasher.finish() % 501) as u32;
    delay * permille / 1000
}

/// `base · 2^(failures-1)`, at most `cap`.
fn retry_delay(failures: u32, base: Duration, cap: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    base.saturating_mul(1u32 << exponent).min(cap)
}

fn owner_of<A: Abstraction>(obj: &DynamicObject, kind: &str) -> Option<ObjectRef<A>> {
    let labels = obj.metadata.labels.as_ref()?;
    if labels.get(KIND_LABEL).map(String::as_str) != Some(kind) {
        return None;
    }
    let name = labels.get(INSTANCE_LABEL)?;
    Some(ObjectRef::new(name).within(obj.metadata.namespace.as_deref().unwrap_or("default")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_reconciles_back_off_per_instance_and_warn_once_per_change_of_error() {
        let secs = Duration::from_secs;
        let ms = Duration::from_millis;
        let mut book = RetryBook::default();
        // (instance, error, teardown in progress) → (failures, delay, warn)
        type Step<'a> = (&'a str, &'a str, bool, (u32, Duration, bool));
        let steps: [Step<'_>; 10] = [
            (
                "a/web",
                "Forbidden: delete deployments",
                false,
                (1, secs(2), true),
            ),
            (
                "a/web",
                "Forbidden: delete deployments",
                false,
                (2, secs(4), false),
            ),
            (
                "a/web",
                "Forbidden: delete deployments",
                false,
                (3, secs(8), false),
            ),
            // Another instance has its own count.
            (
                "b/api",
                "Forbidden: delete deployments",
                false,
                (1, secs(2), true),
            ),
            // A different error warns again but keeps backing off.
            ("a/web", "module does not load", false, (4, secs(16), true)),
            ("a/web", "module does not load", false, (5, secs(32), false)),
            // Deletion in progress starts fast and never warns.
            (
                "c/gone",
                "waiting for objects to go",
                true,
                (1, ms(500), false),
            ),
            (
                "c/gone",
                "waiting for objects to go",
                true,
                (2, secs(1), false),
            ),
            (
                "c/gone",
                "waiting for objects to go",
                true,
                (3, secs(2), false),
            ),
            (
                "b/api",
                "Forbidden: delete deployments",
                false,
                (2, secs(4), false),
            ),
        ];
        for (i, (key, error, teardown, (failures, delay, warn))) in steps.into_iter().enumerate() {
            let got = book.failed(key, error, teardown);
            assert_eq!(
                got,
                Retry {
                    failures,
                    delay,
                    warn
                },
                "step {i}: {key} {error}"
            );
        }
        // A success resets the instance: the next failure is the first again.
        book.succeeded("a/web");
        let again = book.failed("a/web", "module does not load", false);
        assert_eq!(
            (again.failures, again.delay, again.warn),
            (1, secs(2), true)
        );
        // Stalled passes back off on their own count, from 30 s to 10 min, and reset.
        let stalls: Vec<u64> = (0..7).map(|_| book.stalled("e/bad").as_secs()).collect();
        assert_eq!(stalls, [30, 60, 120, 240, 480, 600, 600]);
        book.not_stalled("e/bad");
        assert_eq!(book.stalled("e/bad"), secs(30));
        // The cap holds however long it fails.
        let mut last = Duration::ZERO;
        for _ in 0..40 {
            last = book.failed("d/stuck", "Forbidden", false).delay;
        }
        assert_eq!(last, secs(300));
    }

    #[test]
    fn passes_that_must_retry_an_api_call_back_off_spread_by_instance() {
        let mut book = RetryBook::default();
        let secs = |d: Duration| d.as_secs_f64();
        // Each instance doubles from 5 s to at most 5 min, within ±25 % of the nominal delay.
        for key in ["team/web-0", "team/web-1", "other/api"] {
            for (n, nominal) in [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
                .into_iter()
                .enumerate()
            {
                let delay = secs(book.retrying(key));
                assert!(
                    (nominal * 0.75..=nominal * 1.25).contains(&delay),
                    "{key}, retry {}: {delay} s for a nominal {nominal} s",
                    n + 1
                );
            }
        }
        // A pass that needed no retry starts the next retry from 5 s again.
        book.not_retrying("team/web-0");
        assert!(secs(book.retrying("team/web-0")) <= 6.25);
        assert!(secs(book.retrying("team/web-1")) > 200.0);
        // A fleet failing at once comes back spread out, not in one burst.
        let firsts: std::collections::BTreeSet<u128> = (0..100)
            .map(|i| book.retrying(&format!("fleet/svc-{i}")).as_millis())
            .collect();
        assert!(firsts.len() > 90, "{} distinct delays of 100", firsts.len());
        assert!(
            firsts.first().copied().unwrap_or(0) >= 3_750
                && firsts.last().copied().unwrap_or(0) <= 6_250,
            "{firsts:?}"
        );
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let base = Duration::from_secs(2);
        let cap = Duration::from_secs(300);
        let delays: Vec<u64> = (1..=10)
            .map(|n| retry_delay(n, base, cap).as_secs())
            .collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(retry_delay(u32::MAX, base, cap), cap);
    }
}
