//! The renderer: a pure function from (module, instance, capabilities, observed exports) to a
//! [`Graph`].
//!
//! Owns: [`CueRenderer`] (the CUE renderer; the async `Renderer` trait over it lives in the
//! runtime crate, which owns threads), the module protocol
//! between cuebe and a platform module, and the two caches (built module per digest, rendered
//! graph per digest and input hash).
//!
//! # The module protocol
//!
//! The entry package of a platform module is evaluated with one value filled at `input`:
//!
//! ```text
//! input: {
//!     metadata:     {name: string, namespace: string, labels: [string]: string}
//!     spec:         {...}                  // the custom resource's spec
//!     capabilities: [string]: bool         // e.g. "gateway-api": true, "ack-iam": true
//!     exports:      [string]: _            // observed export values, only those seen so far
//! }
//! ```
//!
//! and must define:
//!
//! ```text
//! module:     {name: string, version: string}          // static
//! exports?:   [name=string]: {node: string, path: string}  // static: where each export is read
//! nodes:      [id=string]: {object, dependsOn?, readyWhen?, applyPolicy?, deletionPolicy?, needs?: [...string]}
//! violations?: [...{path, rule, message, severity?}]
//! ```
//!
//! A node whose `object` is not concrete because an export it `needs` is not observed yet is
//! *pending on* that export; so is every node downstream of it. Any other non-concrete field is a
//! module error that names the node and the path.
//!
//! # Invariants
//!
//! - Same module digest, input and observed export values: byte-identical graph and
//!   `renderHash` (keys are hashed in canonical, sorted order).
//! - Observed objects contribute only the export values the module declares, so status churn on
//!   a live object does not invalidate the render cache.
//! - Evaluation blocks the calling thread: async callers run [`CueRenderer::render_blocking`]
//!   on a blocking thread and may first ask [`CueRenderer::cached`] on their own.
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::graph::{Export, GRAPH_VERSION, Graph, GraphError, GraphMetadata, Node, Violation};
use crate::instance::Instance;
use crate::module::{ModuleSet, ModuleSource, PlatformRef, UnknownModule};
use crate::plan::Plan;
use cuebe_cue_sys::module::{
    CueError, CueErrorKind, CueErrors, ExportRequest, Exported, Fill, LoadedModule,
};

/// What the cluster offers, as capability names (`gateway-api`, `ack-iam`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Capabilities(pub BTreeSet<String>);

impl Capabilities {
    /// Gateway API CRDs (HTTPRoute) are installed.
    pub const GATEWAY_API: &'static str = "gateway-api";
    /// ACK IAM CRDs (`iam.services.k8s.aws` Role, Policy) are installed.
    pub const ACK_IAM: &'static str = "ack-iam";

    /// From names; empty names are ignored.
    pub fn from_names<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        Self(
            names
                .into_iter()
                .map(|s| s.as_ref().trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    }

    /// True when the capability is present.
    pub fn has(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// Everything a render depends on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RenderInput {
    /// The instance (the renderer reads its name, namespace and labels).
    pub instance: Instance,
    /// The custom resource's `spec`, as JSON.
    pub spec: Value,
    /// Which module version; `None` is the newest embedded one.
    pub platform_ref: Option<PlatformRef>,
    /// The module itself, when the caller fetched it (a published module named by
    /// `platform_ref.oci`): it is rendered instead of resolving `platform_ref` among the
    /// embedded modules. Caches stay keyed by the module's content digest.
    pub module: Option<Arc<ModuleSource>>,
    /// What the cluster offers.
    pub capabilities: Capabilities,
    /// Live objects by node id; only the declared export values are read from them.
    pub observed: BTreeMap<String, Value>,
}

/// One problem with the instance's input, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// e.g. `spec.replicas`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a render failed. Policy violations are not errors: they come back in [`Graph::violations`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum RenderError {
    /// `spec.platformRef` names no embedded module.
    #[error(transparent)]
    UnknownModule(#[from] UnknownModule),
    /// The module does not load (syntax error, bad import). A module bug.
    #[error("platform module {digest} does not load:\n{errors}")]
    ModuleLoad {
        /// The module's digest.
        digest: String,
        /// CUE's errors, with positions.
        errors: CueErrors,
    },
    /// The input does not satisfy the module's schema (unknown field, wrong type, missing field).
    #[error("invalid input:\n{}", errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    InvalidInput {
        /// One entry per field.
        errors: Vec<FieldError>,
    },
    /// The module evaluated to something that is not a valid graph (conflict, non-concrete value
    /// outside a pending node, wrong shape). A module bug.
    #[error("platform module error:\n{0}")]
    Module(CueErrors),
    /// The rendered graph breaks a Graph invariant (cycle, unknown dependency, ...).
    #[error("invalid graph:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    InvalidGraph(Vec<GraphError>),
    /// The evaluation exceeded its wall-clock limit, or earlier ones did and still run.
    ///
    /// CUE cannot interrupt an evaluation, so a timed-out one keeps running in the bridge. At
    /// most `cuebe_cue_sys::module::MAX_ABANDONED_EVALUATIONS` per module may; beyond that the
    /// module refuses new evaluations at once (`still_running` says how many are pending) rather
    /// than leak one goroutine per render.
    #[error(
        "platform module evaluation exceeded {limit:?}; the module may not terminate{}",
        if *still_running == 0 { String::new() } else {
            format!(" ({still_running} timed-out evaluations of it are still running; no new one starts until one ends)")
        }
    )]
    Timeout {
        /// The limit (`CueRendererOptions::eval_timeout`).
        limit: Duration,
        /// Timed-out evaluations of this module still running in the bridge.
        still_running: usize,
    },
    /// The blocking evaluation task failed (it panicked or was cancelled). Should never happen.
    #[error("renderer task failed: {0}")]
    Task(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The CUE bridge answered outside its contract (a bug in cuebe). Should never happen.
    #[error("the CUE bridge broke its contract: {0}")]
    Bridge(&'static str),
}

impl RenderError {
    /// A short machine-readable reason, for status conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownModule(_) => "UnknownPlatformModule",
            Self::ModuleLoad { .. } => "ModuleLoadFailed",
            Self::InvalidInput { .. } => "InvalidSpec",
            Self::Module(_) => "ModuleError",
            Self::InvalidGraph(_) => "InvalidGraph",
            Self::Timeout { .. } => "RenderTimeout",
            Self::Task(_) | Self::Bridge(_) => "InternalError",
        }
    }
}

/// Counters of a render cache since the renderer was created.
///
/// ```
/// use cuebe_core::render::CueRenderer;
/// use cuebe_core::module::ModuleSet;
/// let renderer = CueRenderer::new(ModuleSet::default());
/// let stats = renderer.cache_stats();
/// assert_eq!((stats.hits, stats.misses, stats.entries), (0, 0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenderCacheStats {
    /// Renders answered from the cache.
    pub hits: u64,
    /// Renders that had to evaluate CUE.
    pub misses: u64,
    /// Renders held now.
    pub entries: usize,
    /// Their estimated heap bytes (bounded by [`CueRendererOptions::render_cache_bytes`]).
    pub bytes: usize,
    /// Evaluations that exceeded the time limit and still run in the bridge (CUE cannot stop
    /// them). Bounded per module by `cuebe_cue_sys::module::MAX_ABANDONED_EVALUATIONS`.
    pub abandoned_evaluations: usize,
    /// Platform modules loaded and evaluated for their static facts (once per digest, however
    /// many renders ask for it at the same time).
    pub modules_built: u64,
}

/// Static facts a module declares, read once per digest.
#[derive(Debug, Clone, Default, Deserialize)]
struct ModuleInfo {
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: String,
}

#[derive(Debug, Clone, Deserialize)]
struct ExportDecl {
    node: String,
    path: String,
}

#[derive(Debug)]
struct BuiltModule {
    module: LoadedModule,
    label: String,
    exports: BTreeMap<String, ExportDecl>,
}

/// A map bounded in entries and in (estimated) bytes, with first-in-first-out eviction.
#[derive(Debug)]
struct RenderCache {
    map: HashMap<(String, [u8; 32]), (Arc<Plan>, usize)>,
    order: VecDeque<(String, [u8; 32])>,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
}

impl RenderCache {
    fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            max_bytes,
            bytes: 0,
        }
    }

    fn get(&self, key: &(String, [u8; 32])) -> Option<Arc<Plan>> {
        self.map.get(key).map(|(plan, _)| plan.clone())
    }

    fn insert(&mut self, key: (String, [u8; 32]), plan: Arc<Plan>) {
        let weight = plan_heap_bytes(&plan);
        // A render larger than the whole budget would evict everything and stay alone.
        if self.capacity == 0 || weight > self.max_bytes {
            return;
        }
        match self.map.insert(key.clone(), (plan, weight)) {
            Some((_, old)) => self.bytes -= old,
            None => self.order.push_back(key),
        }
        self.bytes += weight;
        while self.order.len() > self.capacity || self.bytes > self.max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, w)) = self.map.remove(&old) {
                self.bytes -= w;
            }
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
        self.bytes = 0;
    }
}

/// Estimated heap bytes of a cached render: its objects' JSON values (each value, string and map
/// entry with its allocation), the node ids and edges, and a fixed share for the compiled
/// predicates. An estimate, not an allocator count: it keeps the cache's memory proportional to
/// what it holds, so the byte bound means what it says within a small factor.
fn plan_heap_bytes(plan: &Plan) -> usize {
    const PER_NODE: usize = 512;
    plan.graph()
        .nodes
        .iter()
        .map(|node| {
            PER_NODE
                + node.id.len()
                + node.depends_on.iter().map(String::len).sum::<usize>()
                + node.object.as_ref().map_or(0, value_heap_bytes)
        })
        .sum::<usize>()
        + std::mem::size_of::<Plan>()
}

/// Heap bytes of a JSON value: the value itself, string bytes, and per map entry the key and a
/// B-tree slot.
fn value_heap_bytes(value: &Value) -> usize {
    let own = std::mem::size_of::<Value>();
    own + match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(value_heap_bytes).sum(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| k.len() + std::mem::size_of::<String>() + 16 + value_heap_bytes(v))
            .sum(),
        _ => 0,
    }
}

/// Tuning for [`CueRenderer`].
#[derive(Debug, Clone)]
pub struct CueRendererOptions {
    /// Wall-clock limit of one evaluation.
    pub eval_timeout: Duration,
    /// Rendered graphs kept in memory.
    pub render_cache_capacity: usize,
    /// Estimated bytes the kept renders may take (the oldest are dropped first). With 10,000
    /// instances the entry bound alone would let the cache grow with the fleet; a render that
    /// is not cached costs one CUE evaluation (a few ms), not correctness.
    pub render_cache_bytes: usize,
    /// Built copies of a module that may evaluate at once (default: one per core, so renders
    /// of many instances use every core).
    pub evaluators_per_module: usize,
    /// Largest `spec` (as canonical JSON) a render accepts. CUE's evaluation time and memory
    /// grow faster than the input (30,000 env entries took a render past 10 s and the operator
    /// past 1 GiB), so one oversized instance must not starve or crash the operator serving
    /// all the others: it is refused, naming `spec` and the limit.
    pub max_spec_bytes: usize,
}

/// Default [`CueRendererOptions::render_cache_bytes`]: 16 MiB, about 1,100 WebService renders.
///
/// Why not more: the cache drops the oldest first, and an instance comes back in the order it
/// was last seen (every 5 minutes when Ready), so a fleet larger than the cache misses on every
/// resync whatever its size; what the cache must hold is the working set of a convergence (64
/// reconciles at once, a few passes each). Beyond that, bytes spent here are the operator's memory
/// budget at 10,000 instances. A fleet of a few thousand that wants its resyncs free of renders
/// (one CUE evaluation, a few ms each) raises it.
pub const DEFAULT_RENDER_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Default [`CueRendererOptions::max_spec_bytes`]: 256 KiB, far above any hand-written spec
/// (a WebService with 3,000 env entries is about 120 KiB).
pub const DEFAULT_MAX_SPEC_BYTES: usize = 256 * 1024;

impl Default for CueRendererOptions {
    fn default() -> Self {
        Self {
            eval_timeout: Duration::from_secs(10),
            render_cache_capacity: 4096,
            render_cache_bytes: DEFAULT_RENDER_CACHE_BYTES,
            evaluators_per_module: std::thread::available_parallelism()
                .map(std::num::NonZero::get)
                .unwrap_or(2),
            max_spec_bytes: DEFAULT_MAX_SPEC_BYTES,
        }
    }
}

#[derive(Debug)]
struct Inner {
    modules: ModuleSet,
    options: CueRendererOptions,
    built: Mutex<HashMap<String, Arc<BuiltModule>>>,
    /// One lock per digest being built: renders that need a module nobody has built yet wait
    /// for the first one's build instead of each building it (at start, every instance's first
    /// render arrives at once: a chaos run logged ~100 builds of one module per start).
    building: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    cache: Mutex<RenderCache>,
    modules_built: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The renderer backed by CUE, evaluated in-process.
///
/// ```no_run
/// use cuebe_core::instance::Instance;
/// use cuebe_core::render::{CueRenderer, RenderInput};
/// use cuebe_core::module::{ModuleSet, ModuleSource};
///
/// let module = ModuleSource::from_dir("cue/platform", "./webservice")?;
/// let renderer = CueRenderer::new(ModuleSet::single("1.0.0", module));
/// let graph = renderer.render_blocking(&RenderInput {
///     instance: Instance { name: "web".into(), namespace: "apps".into(), ..Default::default() },
///     spec: serde_json::json!({"image": "registry.example.com/web:1"}),
///     ..Default::default()
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct CueRenderer {
    inner: Arc<Inner>,
}

impl CueRenderer {
    /// A renderer over these embedded modules, with default options.
    pub fn new(modules: ModuleSet) -> Self {
        Self::with_options(modules, CueRendererOptions::default())
    }

    /// A renderer with explicit options.
    pub fn with_options(modules: ModuleSet, options: CueRendererOptions) -> Self {
        let (capacity, max_bytes) = (options.render_cache_capacity, options.render_cache_bytes);
        Self {
            inner: Arc::new(Inner {
                modules,
                options,
                built: Mutex::new(HashMap::new()),
                building: Mutex::new(HashMap::new()),
                modules_built: AtomicU64::new(0),
                cache: Mutex::new(RenderCache::new(capacity, max_bytes)),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            }),
        }
    }

    /// The embedded modules.
    pub fn modules(&self) -> &ModuleSet {
        &self.inner.modules
    }

    /// Builds (or returns the cached build of) the module an input asks for. Useful to pay the
    /// cold cost at start-up.
    pub fn preload(&self, platform_ref: Option<&PlatformRef>) -> Result<String, RenderError> {
        let source = self.inner.modules.resolve(platform_ref)?.source.clone();
        let digest = source.digest().to_string();
        self.inner.built_module(&source)?;
        Ok(digest)
    }

    /// Renders on the calling thread (for CLIs, tests and benches).
    pub fn render_blocking(&self, input: &RenderInput) -> Result<Arc<Plan>, RenderError> {
        let prepared = self.inner.prepare(input)?;
        if let Some(hit) = self.inner.lookup(&prepared, true) {
            return Ok(hit);
        }
        self.inner.render(prepared)
    }

    /// The exact value filled at `input` for this instance (after resolving observed exports):
    /// what to hand the `cue` CLI to reproduce a render outside the operator.
    pub fn module_input(&self, input: &RenderInput) -> Result<Value, RenderError> {
        Ok(self.inner.prepare(input)?.input_value)
    }

    /// Drops every cached render (not the built modules).
    pub fn clear_render_cache(&self) {
        let mut cache = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cache.clear();
    }
}

impl CueRenderer {
    /// The render of `input` when it is in the render cache and its module is built already;
    /// `None` otherwise. Never evaluates CUE nor builds a module, so an async caller may ask
    /// on its own thread before handing a miss to a blocking thread.
    pub fn cached(&self, input: &RenderInput) -> Result<Option<Arc<Plan>>, RenderError> {
        let inner = &self.inner;
        let source = match &input.module {
            Some(fetched) => fetched.clone(),
            None => inner
                .modules
                .resolve(input.platform_ref.as_ref())?
                .source
                .clone(),
        };
        let built_now = inner
            .built
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(source.digest())
            .cloned();
        let Some(built) = built_now else {
            return Ok(None);
        };
        let prepared = inner.prepare_with(input, source, built)?;
        Ok(inner.lookup(&prepared, false))
    }

    /// How the render cache has done since the renderer was created.
    pub fn cache_stats(&self) -> RenderCacheStats {
        let (entries, bytes) = {
            let cache = self
                .inner
                .cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (cache.map.len(), cache.bytes)
        };
        let abandoned_evaluations = self
            .inner
            .built
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|b| b.module.abandoned_evaluations())
            .sum();
        RenderCacheStats {
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            entries,
            bytes,
            abandoned_evaluations,
            modules_built: self.inner.modules_built.load(Ordering::Relaxed),
        }
    }
}

/// An input ready to evaluate: the module, the exact value for `input`, and its hash.
struct Prepared {
    built: Arc<BuiltModule>,
    digest: String,
    input_value: Value,
    input_hash: [u8; 32],
    namespace: String,
    exports: Vec<Export>,
}

impl Inner {
    fn built_module(&self, source: &Arc<ModuleSource>) -> Result<Arc<BuiltModule>, RenderError> {
        let digest = source.digest().to_string();
        let cached = || {
            self.built
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&digest)
                .cloned()
        };
        if let Some(b) = cached() {
            return Ok(b);
        }
        let build_lock = self
            .building
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(digest.clone())
            .or_default()
            .clone();
        let _building = build_lock.lock().unwrap_or_else(PoisonError::into_inner);
        // Built by the render we waited for (a failed build is not cached: this one tries).
        if let Some(b) = cached() {
            return Ok(b);
        }
        let started = std::time::Instant::now();
        let module = LoadedModule::load(source.module_files(), self.options.evaluators_per_module)
            .map_err(|errors| RenderError::ModuleLoad {
                digest: digest.clone(),
                errors,
            })?;
        let results = module
            .eval(
                &[],
                &[
                    ExportRequest::optional("module"),
                    ExportRequest::optional("exports"),
                ],
                self.options.eval_timeout,
            )
            .map_err(|e| timeout_or(e, &module, self.options.eval_timeout, RenderError::Module))?;
        let info: ModuleInfo = decode_static(results.first(), "module")?;
        let exports: BTreeMap<String, ExportDecl> = decode_static(results.get(1), "exports")?;
        let label = match (info.name.is_empty(), info.version.is_empty()) {
            (false, false) => format!("{}@{}", info.name, info.version),
            (false, true) => info.name,
            _ => String::new(),
        };
        tracing::info!(%digest, module = %label, elapsed = ?started.elapsed(), "built platform module");
        self.modules_built.fetch_add(1, Ordering::Relaxed);
        let built = Arc::new(BuiltModule {
            module,
            label,
            exports,
        });
        self.built
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(digest, built.clone());
        Ok(built)
    }

    fn prepare(&self, input: &RenderInput) -> Result<Prepared, RenderError> {
        let source = match &input.module {
            Some(fetched) => fetched.clone(),
            None => self
                .modules
                .resolve(input.platform_ref.as_ref())?
                .source
                .clone(),
        };
        let built = self.built_module(&source)?;
        self.prepare_with(input, source, built)
    }

    fn prepare_with(
        &self,
        input: &RenderInput,
        source: Arc<ModuleSource>,
        built: Arc<BuiltModule>,
    ) -> Result<Prepared, RenderError> {
        // The name ends up in object names and label values: one the module cannot render is
        // refused before anything is evaluated, let alone applied.
        if let Some(message) = crate::instance::name_problem(&input.instance.name) {
            return Err(RenderError::InvalidInput {
                errors: vec![FieldError {
                    field: "metadata.name".into(),
                    message,
                }],
            });
        }
        let mut export_values = Map::new();
        let mut exports = Vec::with_capacity(built.exports.len());
        for (name, decl) in &built.exports {
            let value = input
                .observed
                .get(&decl.node)
                .and_then(|obj| lookup_dotted(obj, &decl.path))
                .filter(|v| !v.is_null())
                .cloned();
            if let Some(v) = &value {
                export_values.insert(name.clone(), v.clone());
            }
            exports.push(Export {
                name: name.clone(),
                node: decl.node.clone(),
                path: decl.path.clone(),
                value,
            });
        }
        let capabilities: Map<String, Value> = input
            .capabilities
            .0
            .iter()
            .map(|c| (c.clone(), Value::Bool(true)))
            .collect();
        let input_value = json!({
            "metadata": {
                "name": input.instance.name,
                "namespace": input.instance.namespace,
                "labels": input.instance.labels,
            },
            "spec": input.spec,
            "capabilities": capabilities,
            "exports": export_values,
        });
        let spec_bytes = canonical_json(&input.spec).len();
        if spec_bytes > self.options.max_spec_bytes {
            return Err(RenderError::InvalidInput {
                errors: vec![FieldError {
                    field: "spec".into(),
                    message: format!(
                        "is {} KiB; a render accepts at most {} KiB (the operator's render limit \
                         keeps one instance from starving the others); split the workload or \
                         move bulk data into a ConfigMap it mounts",
                        spec_bytes.div_ceil(1024),
                        self.options.max_spec_bytes / 1024
                    ),
                }],
            });
        }
        let mut h = Sha256::new();
        h.update(canonical_json(&input_value));
        Ok(Prepared {
            built,
            digest: source.digest().to_string(),
            input_value,
            input_hash: h.finalize().into(),
            namespace: input.instance.namespace.clone(),
            exports,
        })
    }

    /// Looks `p` up in the render cache; counts a hit, and a miss when `count_miss` (a miss
    /// is counted once, by the call that goes on to render).
    fn lookup(&self, p: &Prepared, count_miss: bool) -> Option<Arc<Plan>> {
        let hit = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(p.digest.clone(), p.input_hash));
        if hit.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        } else if count_miss {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    fn render(&self, p: Prepared) -> Result<Arc<Plan>, RenderError> {
        let timeout = self.options.eval_timeout;
        let results = p
            .built
            .module
            .eval(
                &[Fill {
                    path: "input",
                    value: &p.input_value,
                }],
                &[
                    ExportRequest::validate("input"),
                    ExportRequest::optional("violations"),
                    ExportRequest::split("nodes", 2),
                ],
                timeout,
            )
            .map_err(|e| timeout_or(e, &p.built.module, timeout, RenderError::Module))?;
        let mut results = results.into_iter();
        let (Some(input), Some(violations), Some(nodes)) =
            (results.next(), results.next(), results.next())
        else {
            return Err(RenderError::Bridge("it returned too few results"));
        };
        if let Exported::Errors(errors) = input {
            return Err(input_errors(errors));
        }
        let violations: Vec<Violation> = match violations {
            Exported::Absent => vec![],
            Exported::Value(v) => serde_json::from_value(v).map_err(|e| {
                module_error(
                    "violations",
                    format!("not a list of {{path, rule, message, severity?}}: {e}"),
                )
            })?,
            Exported::Errors(errors) => return Err(RenderError::Module(CueErrors(errors))),
            Exported::Fields(_) => return Err(module_error("violations", "must be a list".into())),
        };
        let blocked = violations
            .iter()
            .any(|v| v.severity == crate::graph::Severity::Error);
        let nodes = assemble_nodes(nodes, &p.exports, blocked)?;
        for n in &nodes {
            if let Some(unknown) = n
                .pending_on
                .iter()
                .find(|e| !p.exports.iter().any(|x| &x.name == *e))
            {
                return Err(module_error(
                    &format!("nodes.{}.needs", n.id),
                    format!("names {unknown:?}, which is not declared under `exports`"),
                ));
            }
        }
        let mut graph = Graph {
            graph_version: GRAPH_VERSION.to_string(),
            metadata: GraphMetadata {
                platform_ref_resolved: p.digest.clone(),
                module: p.built.label.clone(),
                render_hash: String::new(),
            },
            nodes,
            exports: p.exports,
            violations,
        };
        graph.metadata.render_hash = render_hash(&p.digest, &p.input_hash, &graph);
        // A graph whose policy blocks it is never executed: it is kept for the status and the
        // CLI without the executor's validation.
        let graph = Arc::new(if blocked {
            Plan::blocked(graph)
        } else {
            Plan::new(graph, &p.namespace).map_err(RenderError::InvalidGraph)?
        });
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((p.digest, p.input_hash), graph.clone());
        Ok(graph)
    }
}

fn timeout_or(
    errors: CueErrors,
    module: &LoadedModule,
    timeout: Duration,
    other: impl FnOnce(CueErrors) -> RenderError,
) -> RenderError {
    if errors.is_timeout() {
        RenderError::Timeout {
            limit: timeout,
            still_running: module.abandoned_evaluations(),
        }
    } else {
        other(errors)
    }
}

fn module_error(path: &str, message: String) -> RenderError {
    RenderError::Module(CueErrors(vec![CueError {
        message,
        path: path.to_string(),
        positions: vec![],
        kind: CueErrorKind::Eval,
    }]))
}

fn decode_static<T: for<'de> Deserialize<'de> + Default>(
    result: Option<&Exported>,
    path: &str,
) -> Result<T, RenderError> {
    match result {
        None | Some(Exported::Absent) => Ok(T::default()),
        Some(Exported::Value(v)) => serde_json::from_value(v.clone())
            .map_err(|e| module_error(path, format!("unexpected shape: {e}"))),
        Some(Exported::Errors(errors)) => Err(RenderError::Module(CueErrors(errors.clone()))),
        Some(Exported::Fields(_)) => Err(module_error(path, "unexpected split result".into())),
    }
}

/// Maps CUE's errors on `input` to field errors a user understands.
fn input_errors(errors: Vec<CueError>) -> RenderError {
    let mut out: Vec<FieldError> = Vec::new();
    for e in errors {
        // CUE heads a failed disjunction with a summary; the lines after it say what conflicts.
        if e.message.contains("errors in empty disjunction") {
            continue;
        }
        let field = e.path.strip_prefix("input.").unwrap_or(&e.path).to_string();
        let message = if e.kind == CueErrorKind::Incomplete {
            "required field is missing".to_string()
        } else if e.message.contains("field not allowed") {
            "unknown field (not in the schema)".to_string()
        } else {
            e.message.clone()
        };
        // One message per field: the last one CUE gives is against the field's declared type.
        match out.iter_mut().find(|f| f.field == field) {
            Some(existing) => existing.message = message,
            None => out.push(FieldError { field, message }),
        }
    }
    RenderError::InvalidInput { errors: out }
}

fn lookup_dotted<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .filter(|s| !s.is_empty())
        .try_fold(v, |cur, key| cur.get(key))
}

fn assemble_nodes(
    nodes: Exported,
    exports: &[Export],
    blocked: bool,
) -> Result<Vec<Node>, RenderError> {
    let fields = match nodes {
        Exported::Fields(f) => f,
        Exported::Errors(errors) => return Err(RenderError::Module(CueErrors(errors))),
        Exported::Absent => {
            return Err(module_error("nodes", "the module defines no nodes".into()));
        }
        Exported::Value(_) => {
            return Err(module_error(
                "nodes",
                "must be a struct keyed by node id".into(),
            ));
        }
    };
    let missing_exports: BTreeSet<&str> = exports
        .iter()
        .filter(|e| e.value.is_none())
        .map(|e| e.name.as_str())
        .collect();
    let mut out = Vec::with_capacity(fields.len());
    for (id, node) in fields {
        let Exported::Fields(parts) = node else {
            if let Exported::Errors(errors) = node {
                return Err(RenderError::Module(CueErrors(errors)));
            }
            return Err(module_error(
                &format!("nodes.{id}"),
                "must be a struct".into(),
            ));
        };
        let mut body = Map::new();
        let mut object_errors = None;
        let mut needs: Vec<String> = Vec::new();
        for (field, item) in parts {
            match (field.as_str(), item) {
                ("object", Exported::Errors(errors)) => object_errors = Some(errors),
                ("needs", Exported::Value(v)) => {
                    needs = serde_json::from_value(v).map_err(|e| {
                        module_error(
                            &format!("nodes.{id}.needs"),
                            format!("must be a list of export names: {e}"),
                        )
                    })?;
                }
                (_, Exported::Value(v)) => {
                    body.insert(field, v);
                }
                (_, Exported::Absent) => {}
                (_, Exported::Errors(errors)) => {
                    if blocked {
                        continue;
                    }
                    return Err(RenderError::Module(CueErrors(errors)));
                }
                (_, Exported::Fields(_)) => {}
            }
        }
        body.insert("id".into(), Value::String(id.clone()));
        let mut node: Node = crate::graph::decode(Value::Object(body), &format!("nodes.{id}"))
            .map_err(|e| module_error(&e.path, e.message))?;
        let waiting: Vec<String> = needs
            .iter()
            .filter(|n| missing_exports.contains(n.as_str()))
            .cloned()
            .collect();
        if let Some(errors) = object_errors {
            if waiting.is_empty() {
                if blocked {
                    // Policy already failed; the object is incomplete because the input is bad.
                    continue;
                }
                return Err(RenderError::Module(CueErrors(errors)));
            }
            node.object = None;
        }
        node.pending_on = waiting;
        out.push(node);
    }
    propagate_pending(&mut out);
    Ok(out)
}

/// A node downstream of a pending node waits for the same exports.
fn propagate_pending(nodes: &mut [Node]) {
    loop {
        let pending: HashMap<String, Vec<String>> = nodes
            .iter()
            .filter(|n| n.is_pending())
            .map(|n| (n.id.clone(), n.pending_on.clone()))
            .collect();
        let mut changed = false;
        for n in nodes.iter_mut() {
            for d in n.depends_on.clone() {
                if let Some(upstream) = pending.get(&d) {
                    for e in upstream {
                        if !n.pending_on.contains(e) {
                            n.pending_on.push(e.clone());
                            changed = true;
                        }
                    }
                }
            }
        }
        if !changed {
            return;
        }
    }
}

fn render_hash(digest: &str, input_hash: &[u8; 32], graph: &Graph) -> String {
    let mut h = Sha256::new();
    h.update(digest.as_bytes());
    h.update([0]);
    h.update(input_hash);
    h.update([0]);
    let output =
        json!({"nodes": graph.nodes, "violations": graph.violations, "exports": graph.exports});
    h.update(canonical_json(&output));
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// JSON with object keys sorted at every level: the stable form that hashes are taken over.
///
/// ```
/// let a = cuebe_core::render::canonical_json(&serde_json::json!({"b": 1, "a": [{"d": 2, "c": 3}]}));
/// assert_eq!(a, br#"{"a":[{"c":3,"d":2}],"b":1}"#);
/// ```
pub fn canonical_json(v: &Value) -> Vec<u8> {
    fn write(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push(b'{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend(serde_json::to_vec(k).unwrap_or_default());
                    out.push(b':');
                    write(&map[k], out);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(item, out);
                }
                out.push(b']');
            }
            scalar => out.extend(serde_json::to_vec(scalar).unwrap_or_default()),
        }
    }
    let mut out = Vec::new();
    write(v, &mut out);
    out
}

#[cfg(test)]
mod cache_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::graph::tests::{graph, node};

    /// A render of `n` ConfigMaps, each with `payload` bytes of data.
    fn plan(n: usize, payload: usize) -> Arc<Plan> {
        let nodes = (0..n)
            .map(|i| {
                let mut node = node(&format!("config{i}"), &[]);
                if let Some(object) = node.object.as_mut() {
                    object["data"] = serde_json::json!({"value": "x".repeat(payload)});
                }
                node
            })
            .collect();
        Arc::new(Plan::new(graph(nodes), "apps").unwrap())
    }

    fn key(i: u8) -> (String, [u8; 32]) {
        ("sha256:m".into(), [i; 32])
    }

    #[test]
    fn the_cache_keeps_to_its_byte_budget_dropping_the_oldest_first() {
        let one = plan_heap_bytes(&plan(3, 10_000));
        assert!(
            one > 30_000,
            "the estimate counts the objects' bytes: {one}"
        );
        // Room for two such renders, not three.
        let mut cache = RenderCache::new(100, one * 2 + one / 2);
        for i in 0..3 {
            cache.insert(key(i), plan(3, 10_000));
        }
        assert!(cache.get(&key(0)).is_none(), "the oldest was dropped");
        assert!(cache.get(&key(1)).is_some() && cache.get(&key(2)).is_some());
        assert_eq!(cache.bytes, one * 2);
        // Replacing an entry does not count it twice.
        cache.insert(key(2), plan(3, 10_000));
        assert_eq!((cache.map.len(), cache.bytes), (2, one * 2));
        cache.clear();
        assert_eq!((cache.map.len(), cache.bytes), (0, 0));
    }

    #[test]
    fn the_entry_bound_still_holds_and_an_oversized_render_is_not_kept() {
        let mut cache = RenderCache::new(2, usize::MAX);
        for i in 0..5 {
            cache.insert(key(i), plan(1, 10));
        }
        assert_eq!(cache.map.len(), 2);
        let mut small = RenderCache::new(100, 1_000);
        small.insert(key(0), plan(3, 10_000));
        assert_eq!((small.map.len(), small.bytes), (0, 0));
    }
}
