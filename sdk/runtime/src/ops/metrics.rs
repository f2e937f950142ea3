//! What an operator reports about itself: Prometheus metrics, and health for probes.
//!
//! [`OperatorMetrics`] is what the controller records into (reconciles, renders, the state of
//! every instance, restarts on API changes); [`serve`] answers HTTP on a listener:
//!
//! | path | answer |
//! | --- | --- |
//! | `/metrics` | the metrics, OpenMetrics text format |
//! | `/healthz` | `200 ok` while the process serves |
//! | `/readyz` | `200 ok` once the controller's watches run, `503` before (and while it restarts) |
//!
//! Every metric carries the abstraction's kind as the label `kind`.
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::renderer::Renderer;
use crate::status::AbstractionStatus;

/// Where an instance stands, as its status says (the `state` label of `cuebe_instances`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceState {
    /// `Ready=True`.
    Ready,
    /// Applied or applying, not Ready yet and not stalled.
    Progressing,
    /// `Stalled=True`: a node failed for good (e.g. ACK reported a terminal error).
    Stalled,
    /// `PolicyPassed=False`: nothing is applied.
    PolicyFailed,
    /// `Rendered=False`: the spec or the module failed to render.
    RenderFailed,
}

impl InstanceState {
    const ALL: [InstanceState; 5] = [
        InstanceState::Ready,
        InstanceState::Progressing,
        InstanceState::Stalled,
        InstanceState::PolicyFailed,
        InstanceState::RenderFailed,
    ];

    /// The state a status describes.
    ///
    /// ```
    /// use cuebe::ops::metrics::InstanceState;
    /// use cuebe::status::{AbstractionStatus, ConditionType};
    /// let mut status = AbstractionStatus::default();
    /// status.set_condition(ConditionType::Ready, true, "AllNodesReady", "3/3", Some(1), "2026-01-01T00:00:00Z");
    /// assert_eq!(InstanceState::of(&status), InstanceState::Ready);
    /// ```
    pub fn of(status: &AbstractionStatus) -> Self {
        use crate::status::ConditionType;
        let is = |t: ConditionType, value: &str| {
            status
                .condition(t)
                .is_some_and(|c| c.status.as_str() == value)
        };
        if is(ConditionType::Rendered, "False") {
            Self::RenderFailed
        } else if is(ConditionType::PolicyPassed, "False") {
            Self::PolicyFailed
        } else if is(ConditionType::Stalled, "True") {
            Self::Stalled
        } else if is(ConditionType::Ready, "True") {
            Self::Ready
        } else {
            Self::Progressing
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Progressing => "Progressing",
            Self::Stalled => "Stalled",
            Self::PolicyFailed => "PolicyFailed",
            Self::RenderFailed => "RenderFailed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// Where a published platform module comes from (the `source` label of the module metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleOrigin {
    /// `spec.platformRef.oci`: a module `cue mod publish` pushed to an OCI registry.
    Oci,
    /// `spec.platformRef.git`: a module in a git repository, at a commit.
    Git,
}

impl ModuleOrigin {
    /// The label value: `oci` or `git`.
    ///
    /// ```
    /// assert_eq!(cuebe::ops::metrics::ModuleOrigin::Git.as_str(), "git");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oci => "oci",
            Self::Git => "git",
        }
    }
}

/// How one reconcile pass resolved an instance's published module (the `result` and `reason`
/// labels of `cuebe_module_loads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleLoad {
    /// In use, signed by a key the module policy lists.
    Verified,
    /// In use without a signature: no policy rule asks for one.
    Unverified,
    /// Not used: the policy or the content checks refused it. The reason is the status
    /// condition's (`SourceDenied`, `SignatureInvalid`, `DigestMismatch`, `NotACueModule`, …).
    Refused(&'static str),
    /// Not fetched: the registry or git server could not be reached (`FetchFailed`); the
    /// instance keeps its last good module when it has one.
    Failed(&'static str),
}

impl ModuleLoad {
    fn labels(self, origin: ModuleOrigin) -> ModuleLoadLabels {
        let (result, reason) = match self {
            Self::Verified => ("verified", "Verified"),
            Self::Unverified => ("unverified", "Unverified"),
            Self::Refused(reason) => ("refused", reason),
            Self::Failed(reason) => ("failed", reason),
        };
        ModuleLoadLabels {
            source: origin.as_str(),
            result,
            reason,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleLoadLabels {
    source: &'static str,
    result: &'static str,
    reason: &'static str,
}

/// One published module in use: its content digest (few at a time, see
/// [`OperatorMetrics::module_in_use`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleInUseLabels {
    source: &'static str,
    digest: String,
}

/// The metrics of one operator (one abstraction kind).
///
/// | metric | type | what |
/// | --- | --- | --- |
/// | `cuebe_reconciles_total{result}` | counter | reconciles, `result` = `success` or `error` |
/// | `cuebe_reconcile_duration_seconds` | histogram | one reconcile, render to status write |
/// | `cuebe_render_duration_seconds` | histogram | one render (a cache hit included) |
/// | `cuebe_render_cache_hits_total`, `cuebe_render_cache_misses_total` | counter | the renderer's render cache |
/// | `cuebe_render_cache_entries` | gauge | renders the cache holds |
/// | `cuebe_render_cache_bytes` | gauge | their estimated heap bytes (bounded, 16 MiB by default) |
/// | `cuebe_cue_go_memory_bytes{class}` | gauge | the CUE evaluators' Go runtime: `heap_live`, `heap_goal`, `resident` |
/// | `cuebe_render_abandoned_evaluations` | gauge | timed-out CUE evaluations still running (bounded per module) |
/// | `cuebe_instances{state}` | gauge | instances by [`InstanceState`] |
/// | `cuebe_controller_restarts_total` | counter | restarts because the cluster's APIs changed |
/// | `cuebe_leader` | gauge | 1 while this replica reconciles, 0 while it stands by |
/// | `cuebe_prune_paused` | gauge | 1 while the fleet prune guard holds instances back (see [`crate::executor::FleetPruneGuard`]) |
/// | `cuebe_prune_held_total` | counter | prune attempts the fleet prune guard held back |
/// | `cuebe_module_loads_total{source,result,reason}` | counter | published modules resolved by a reconcile pass (see [`ModuleLoad`]) |
/// | `cuebe_module_instances{source,digest}` | gauge | instances rendering with each published module, by content digest |
///
/// ```
/// use cuebe::ops::metrics::OperatorMetrics;
/// let metrics = OperatorMetrics::new("WebService", None);
/// metrics.reconciled(true, std::time::Duration::from_millis(12));
/// let text = metrics.encode().expect("metrics encode");
/// assert!(text.contains("cuebe_reconciles_total{kind=\"WebService\",result=\"success\"} 1"));
/// ```
pub struct OperatorMetrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_seconds: Histogram,
    render_seconds: Histogram,
    instances: Family<StateLabels, Gauge>,
    restarts: Counter,
    leading: Gauge,
    states: Mutex<HashMap<String, InstanceState>>,
    module_loads: Family<ModuleLoadLabels, Counter>,
    module_instances: Family<ModuleInUseLabels, Gauge>,
    /// The published module each instance (by UID) renders with.
    modules_in_use: Mutex<HashMap<String, ModuleInUseLabels>>,
    watching: AtomicBool,
    standing_by: AtomicBool,
}

impl std::fmt::Debug for OperatorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorMetrics").finish_non_exhaustive()
    }
}

impl OperatorMetrics {
    /// Metrics for the abstraction `kind`; with a renderer, its render cache is reported too.
    pub fn new(kind: &str, renderer: Option<Arc<dyn Renderer>>) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "cuebe",
            [("kind".into(), kind.to_string().into())].into_iter(),
        );
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles of an instance, by result",
            reconciles.clone(),
        );
        // 1 ms to ~4 min: a reconcile waits on the API server.
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.5, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile, render to status write",
            reconcile_seconds.clone(),
        );
        // 10 µs (a cache hit) to ~10 s (the evaluation limit).
        let render_seconds = Histogram::new(exponential_buckets(0.00001, 3.0, 13));
        registry.register(
            "render_duration_seconds",
            "Duration of one render of an instance into its Graph, cache hits included",
            render_seconds.clone(),
        );
        let instances = Family::<StateLabels, Gauge>::default();
        for state in InstanceState::ALL {
            // Present at zero, so that a dashboard sees every state before it happens.
            let _ = instances.get_or_create(&StateLabels {
                state: state.label(),
            });
        }
        registry.register(
            "instances",
            "Instances by state (Ready, Progressing, Stalled, PolicyFailed, RenderFailed)",
            instances.clone(),
        );
        let restarts = Counter::default();
        registry.register(
            "controller_restarts",
            "Controller restarts because the cluster's capabilities or served kinds changed",
            restarts.clone(),
        );
        let leading = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica reconciles (always, without leader election), 0 while it stands by",
            leading.clone(),
        );
        let module_loads = Family::<ModuleLoadLabels, Counter>::default();
        registry.register(
            "module_loads",
            "Published platform modules resolved by a reconcile pass, by source (oci, git), result (verified, unverified, refused, failed) and reason",
            module_loads.clone(),
        );
        let module_instances = Family::<ModuleInUseLabels, Gauge>::default();
        registry.register(
            "module_instances",
            "Instances rendering with each published platform module, by source and content digest",
            module_instances.clone(),
        );
        if let Some(renderer) = renderer {
            registry.register_collector(Box::new(RenderCacheCollector(renderer)));
        }
        registry.register_collector(Box::new(GoMemoryCollector));
        Self {
            registry,
            reconciles,
            reconcile_seconds,
            render_seconds,
            instances,
            restarts,
            leading,
            states: Mutex::new(HashMap::new()),
            module_loads,
            module_instances,
            modules_in_use: Mutex::new(HashMap::new()),
            watching: AtomicBool::new(false),
            standing_by: AtomicBool::new(false),
        }
    }

    /// Reports the fleet prune guard's state at each scrape (`cuebe_prune_paused`,
    /// `cuebe_prune_held_total`).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use cuebe::executor::FleetPruneGuard;
    /// use cuebe::ops::metrics::OperatorMetrics;
    /// let guard = Arc::new(Mutex::new(FleetPruneGuard::default()));
    /// let metrics = OperatorMetrics::new("WebService", None).with_fleet_prune_guard(guard);
    /// assert!(metrics.encode().unwrap().contains("cuebe_prune_paused{kind=\"WebService\"} 0"));
    /// ```
    pub fn with_fleet_prune_guard(
        mut self,
        guard: Arc<Mutex<crate::executor::FleetPruneGuard>>,
    ) -> Self {
        self.registry
            .register_collector(Box::new(FleetPruneCollector(guard)));
        self
    }

    /// Adds the rollout drivers' metrics (`cuebe_rollout_*`).
    ///
    /// ```
    /// use cuebe::ops::metrics::OperatorMetrics;
    /// use cuebe::rollout::RolloutMetrics;
    /// let rollouts = RolloutMetrics::default();
    /// let metrics = OperatorMetrics::new("WebService", None).with_rollouts(&rollouts);
    /// rollouts.observe("stable", &[], &Default::default());
    /// assert!(metrics.encode().unwrap().contains("cuebe_rollout_step{kind=\"WebService\",channel=\"stable\"} 0"));
    /// ```
    pub fn with_rollouts(mut self, rollouts: &crate::rollout::RolloutMetrics) -> Self {
        rollouts.register(&mut self.registry);
        self
    }

    /// Records one reconcile.
    pub fn reconciled(&self, success: bool, took: Duration) {
        let result = if success { "success" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    /// Records one render.
    pub fn rendered(&self, took: Duration) {
        self.render_seconds.observe(took.as_secs_f64());
    }

    /// Records the state of the instance `uid` from the status just written.
    pub fn instance_state(&self, uid: &str, state: InstanceState) {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let before = states.insert(uid.to_string(), state);
        if before == Some(state) {
            return;
        }
        if let Some(before) = before {
            self.instances
                .get_or_create(&StateLabels {
                    state: before.label(),
                })
                .dec();
        }
        self.instances
            .get_or_create(&StateLabels {
                state: state.label(),
            })
            .inc();
    }

    /// Forgets the instance `uid` (it is gone).
    pub fn instance_gone(&self, uid: &str) {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(before) = states.remove(uid) {
            self.instances
                .get_or_create(&StateLabels {
                    state: before.label(),
                })
                .dec();
        }
        drop(states);
        self.module_in_use(uid, None);
    }

    /// Records how a reconcile pass resolved a published module from `origin`: one count of
    /// `cuebe_module_loads_total` per pass, so that a module refused or not fetched keeps
    /// counting (and alerting) for as long as an instance names it.
    ///
    /// ```
    /// use cuebe::ops::metrics::{ModuleLoad, ModuleOrigin, OperatorMetrics};
    /// let metrics = OperatorMetrics::new("WebService", None);
    /// metrics.module_loaded(ModuleOrigin::Oci, ModuleLoad::Refused("SignatureInvalid"));
    /// let text = metrics.encode().expect("metrics encode");
    /// assert!(text.contains(r#"cuebe_module_loads_total{kind="WebService",source="oci",result="refused",reason="SignatureInvalid"} 1"#));
    /// ```
    pub fn module_loaded(&self, origin: ModuleOrigin, load: ModuleLoad) {
        self.module_loads.get_or_create(&load.labels(origin)).inc();
    }

    /// Records the published module the instance `uid` renders with (`None`: an embedded one,
    /// or none); true when that changed for this process. A digest no instance uses any more
    /// leaves `cuebe_module_instances`, so its series are the modules in use now: a few at a
    /// time (one per release being rolled out), however many instances there are.
    ///
    /// ```
    /// use cuebe::ops::metrics::{ModuleOrigin, OperatorMetrics};
    /// let metrics = OperatorMetrics::new("WebService", None);
    /// assert!(metrics.module_in_use("uid-1", Some((ModuleOrigin::Git, "sha256:ab12"))));
    /// assert!(!metrics.module_in_use("uid-1", Some((ModuleOrigin::Git, "sha256:ab12"))));
    /// let series = r#"cuebe_module_instances{kind="WebService",source="git",digest="sha256:ab12"}"#;
    /// assert!(metrics.encode().expect("metrics encode").contains(&format!("{series} 1")));
    /// assert!(metrics.module_in_use("uid-1", None));
    /// assert!(!metrics.encode().expect("metrics encode").contains(series));
    /// ```
    pub fn module_in_use(&self, uid: &str, module: Option<(ModuleOrigin, &str)>) -> bool {
        let now = module.map(|(origin, digest)| ModuleInUseLabels {
            source: origin.as_str(),
            digest: digest.to_string(),
        });
        let mut in_use = self
            .modules_in_use
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = match &now {
            Some(labels) => in_use.insert(uid.to_string(), labels.clone()),
            None => in_use.remove(uid),
        };
        if before == now {
            return false;
        }
        if let Some(before) = before {
            let gauge = self.module_instances.get_or_create(&before);
            if gauge.dec() <= 1 {
                drop(gauge);
                self.module_instances.remove(&before);
            }
        }
        if let Some(now) = now {
            self.module_instances.get_or_create(&now).inc();
        }
        true
    }

    /// Records a restart of the controller because the cluster's APIs changed.
    pub fn restarted(&self) {
        self.restarts.inc();
    }

    /// Whether the controller's watches are running.
    pub fn set_watching(&self, watching: bool) {
        self.watching.store(watching, Ordering::Relaxed);
        if watching {
            self.leading.set(1);
        }
    }

    /// With leader election: whether this replica leads (`false`: it stands by).
    pub fn set_leading(&self, leading: bool) {
        self.standing_by.store(!leading, Ordering::Relaxed);
        self.leading.set(i64::from(leading));
    }

    /// What `/readyz` answers: the watches run, or this replica is a follower standing by (a
    /// follower is ready too, or a rolling update of a replicated operator would never finish).
    pub fn is_ready(&self) -> bool {
        self.watching.load(Ordering::Relaxed) || self.standing_by.load(Ordering::Relaxed)
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Reads the renderer's render cache counters at each scrape.
struct RenderCacheCollector(Arc<dyn Renderer>);

impl std::fmt::Debug for RenderCacheCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RenderCacheCollector")
    }
}

impl Collector for RenderCacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = self.0.cache_stats() else {
            return Ok(());
        };
        for (name, help, value) in [
            (
                "render_cache_hits",
                "Renders answered from the render cache",
                stats.hits,
            ),
            (
                "render_cache_misses",
                "Renders that evaluated CUE",
                stats.misses,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let entries = ConstGauge::new(i64::try_from(stats.entries).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "render_cache_entries",
            "Renders the render cache holds",
            None,
            entries.metric_type(),
        )?;
        entries.encode(metric)?;
        let bytes = ConstGauge::new(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "render_cache_bytes",
            "Estimated heap bytes of the renders the render cache holds (bounded by the renderer's option)",
            None,
            bytes.metric_type(),
        )?;
        bytes.encode(metric)?;
        let abandoned =
            ConstGauge::new(i64::try_from(stats.abandoned_evaluations).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "render_abandoned_evaluations",
            "CUE evaluations that exceeded the time limit and still run (a module that may not terminate)",
            None,
            abandoned.metric_type(),
        )?;
        abandoned.encode(metric)
    }
}

/// Reads the memory of the CUE evaluators' Go runtime at each scrape: it is outside Rust's
/// allocator, and without it an operator's RSS cannot be told apart.
#[derive(Debug)]
struct GoMemoryCollector;

impl Collector for GoMemoryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let memory = cuebe_core::cue::bridge_memory();
        let mut family = encoder.encode_descriptor(
            "cue_go_memory_bytes",
            "Memory of the CUE evaluators' Go runtime: heap_live (reachable at the last collection), heap_goal (next collection), resident (mapped and not returned to the OS)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (class, value) in [
            ("heap_live", memory.heap_live),
            ("heap_goal", memory.heap_goal),
            ("resident", memory.resident()),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let labels = [("class", class)];
            let labelled = family.encode_family(&labels)?;
            gauge.encode(labelled)?;
        }
        Ok(())
    }
}

/// Reads the fleet prune guard at each scrape.
#[derive(Debug)]
struct FleetPruneCollector(Arc<Mutex<crate::executor::FleetPruneGuard>>);

impl Collector for FleetPruneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (paused, held) = {
            let guard = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (
                guard.paused(cuebe_core::clock::Timestamp::now()),
                guard.held_total(),
            )
        };
        let gauge = ConstGauge::new(i64::from(paused));
        let metric = encoder.encode_descriptor(
            "prune_paused",
            "1 while the fleet prune guard holds instances' pruning back (many instances losing objects at once)",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)?;
        let counter = ConstCounter::new(held);
        let metric = encoder.encode_descriptor(
            "prune_held",
            "Prune attempts the fleet prune guard held back",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

/// Answers `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped.
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// use std::sync::Arc;
/// let metrics = Arc::new(cuebe::ops::metrics::OperatorMetrics::new("WebService", None));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// tokio::spawn(cuebe::ops::metrics::serve(listener, metrics));
/// # Ok(()) }
/// ```
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<OperatorMetrics>) {
    serve_with(listener, metrics, HEADER_READ_TIMEOUT).await
}

async fn serve_with(
    listener: tokio::net::TcpListener,
    metrics: Arc<OperatorMetrics>,
    header_read_timeout: Duration,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(%error, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&request, &metrics)) }
            });
            // A client that never finishes its request headers must not hold a connection
            // (and a task) for ever.
            if let Err(error) = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "metrics endpoint: connection ended");
            }
        });
    }
}

fn answer(request: &Request<Incoming>, metrics: &OperatorMetrics) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        response
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    match request.uri().path() {
        "/metrics" => match metrics.encode() {
            Ok(text) => reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(_) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                "the metrics could not be encoded\n".into(),
            ),
        },
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" if metrics.is_ready() => reply(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "the controller is not watching yet\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_disconnected() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(OperatorMetrics::new("WebService", None));
        let server = tokio::spawn(serve_with(listener, metrics, Duration::from_millis(300)));

        // A slow (or hostile) client: half a request line, then silence.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "the server still holds the connection after 5 s"
        );

        // A normal client is still served.
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        ok.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        server.abort();
    }
}
