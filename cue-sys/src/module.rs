//! Safe access to CUE through the in-process Go bridge: the only place that calls [`crate::ffi`].
//!
//! Owns: turning a module's in-memory files into a [`LoadedModule`] that can be evaluated
//! many times, from many threads, with a wall-clock limit per evaluation.
//!
//! Workflow:
//! 1. [`LoadedModule::load`] builds the module once (the "cold" cost) and keeps it behind a handle.
//! 2. [`LoadedModule::eval`] fills JSON values at paths and exports the requested paths.
//!
//! Invariants:
//! - CUE values are not safe for concurrent use, so one handle serves one evaluation at a time.
//!   The module keeps a small pool of separately built handles and grows it on demand up to
//!   [`LoadedModule::max_handles`]; callers beyond that wait for a free handle.
//! - A handle whose evaluation exceeded its time limit is discarded (the Go side marks it
//!   poisoned); the next evaluation builds a fresh one. CUE cannot interrupt an evaluation, so
//!   the discarded one keeps running on its goroutine until it ends, perhaps never. At most
//!   [`MAX_ABANDONED_EVALUATIONS`] of a module's evaluations may be in that state: beyond it,
//!   evaluations fail at once with a timeout error that says so, instead of starting another
//!   goroutine that would never end. A module that does not terminate costs a bounded amount.
//! - The calls block: from async code run them inside `tokio::task::spawn_blocking`.
use std::ffi::{CStr, CString};
use std::fmt;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A position inside a CUE module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// File path relative to the module root.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub col: u32,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// What kind of failure a [`CueError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CueErrorKind {
    /// The value is in conflict (wrong type, failed constraint, field not allowed, ...).
    Eval,
    /// The value is not concrete (a required field is missing, a reference is unresolved).
    Incomplete,
    /// The module could not be loaded (syntax error, bad import, missing `cue.mod`).
    Load,
    /// The evaluation exceeded its wall-clock limit.
    Timeout,
    /// The Go side panicked; the panic was caught and reported.
    Panic,
    /// The request to the bridge was malformed (a bug in cuebe).
    Request,
}

/// One structured CUE error: message, CUE path and positions in the module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CueError {
    /// CUE's message, without the path prefix.
    pub message: String,
    /// Dotted CUE path of the failing value, empty when CUE gives none.
    #[serde(default)]
    pub path: String,
    /// Where in the module the error comes from.
    #[serde(default)]
    pub positions: Vec<Position>,
    /// What kind of failure this is.
    pub kind: CueErrorKind,
}

impl fmt::Display for CueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(p) = self.positions.first() {
            write!(f, " ({p})")?;
        }
        Ok(())
    }
}

/// A list of [`CueError`]s, displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CueErrors(pub Vec<CueError>);

impl fmt::Display for CueErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CueErrors {}

impl CueErrors {
    /// True when any error is a timeout.
    pub fn is_timeout(&self) -> bool {
        self.0.iter().any(|e| e.kind == CueErrorKind::Timeout)
    }
}

/// A value to place at a CUE path before evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Fill<'a> {
    /// CUE path, e.g. `input`.
    pub path: &'a str,
    /// JSON value to unify there.
    pub value: &'a Value,
}

/// A path to export after evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct ExportRequest<'a> {
    /// CUE path; empty for the root.
    pub path: &'a str,
    /// Export struct fields one by one this many levels deep, so a non-concrete field is reported
    /// without failing its siblings.
    pub split: u32,
    /// A missing path is [`Exported::Absent`] instead of an error.
    pub optional: bool,
    /// Only check that the value is concrete; a concrete result is `Exported::Value(Null)`.
    #[serde(rename = "validateOnly")]
    pub validate_only: bool,
}

impl<'a> ExportRequest<'a> {
    /// Export `path` whole.
    pub fn whole(path: &'a str) -> Self {
        Self {
            path,
            split: 0,
            optional: false,
            validate_only: false,
        }
    }

    /// Export `path` whole, or [`Exported::Absent`] when it does not exist.
    pub fn optional(path: &'a str) -> Self {
        Self {
            optional: true,
            ..Self::whole(path)
        }
    }

    /// Export `path` field by field, `levels` deep.
    pub fn split(path: &'a str, levels: u32) -> Self {
        Self {
            split: levels,
            ..Self::whole(path)
        }
    }

    /// Only check that `path` is concrete.
    pub fn validate(path: &'a str) -> Self {
        Self {
            validate_only: true,
            ..Self::whole(path)
        }
    }
}

/// One exported result, mirroring the requested split.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "RawExported")]
pub enum Exported {
    /// A concrete value.
    Value(Value),
    /// Errors that kept the value from being concrete.
    Errors(Vec<CueError>),
    /// Fields of a split struct, in the module's order.
    Fields(Vec<(String, Exported)>),
    /// The path does not exist.
    Absent,
}

impl Exported {
    /// The bridge returns a wholly concrete value whole even when a split was asked for (one
    /// export is much cheaper than one per field): split it here, `levels` deep, keeping the
    /// module's field order.
    fn split(self, levels: u32) -> Self {
        match self {
            Exported::Value(Value::Object(map)) if levels > 0 => Exported::Fields(
                map.into_iter()
                    .map(|(name, v)| (name, Exported::Value(v).split(levels - 1)))
                    .collect(),
            ),
            // A struct with a non-concrete field comes split one level, its fields whole.
            Exported::Fields(fields) if levels > 0 => Exported::Fields(
                fields
                    .into_iter()
                    .map(|(name, item)| (name, item.split(levels - 1)))
                    .collect(),
            ),
            other => other,
        }
    }
}

#[derive(Deserialize)]
struct RawExported {
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    errors: Vec<CueError>,
    #[serde(default)]
    fields: Option<Vec<RawField>>,
    #[serde(default)]
    absent: bool,
}

#[derive(Deserialize)]
struct RawField {
    name: String,
    item: RawExported,
}

impl From<RawExported> for Exported {
    fn from(raw: RawExported) -> Self {
        if raw.absent {
            Exported::Absent
        } else if !raw.errors.is_empty() {
            Exported::Errors(raw.errors)
        } else if let Some(fields) = raw.fields {
            Exported::Fields(
                fields
                    .into_iter()
                    .map(|f| (f.name, Exported::from(f.item)))
                    .collect(),
            )
        } else {
            Exported::Value(raw.value.unwrap_or(Value::Null))
        }
    }
}

#[derive(Serialize)]
struct LoadRequest<'a> {
    files: &'a std::collections::BTreeMap<String, String>,
    package: &'a str,
    deps: &'a [DependencyModule],
}

#[derive(Deserialize)]
struct LoadResponse {
    #[serde(default)]
    handle: u64,
    #[serde(default)]
    errors: Vec<CueError>,
}

#[derive(Serialize)]
struct EvalRequest<'a> {
    fills: &'a [Fill<'a>],
    exports: &'a [ExportRequest<'a>],
    #[serde(rename = "timeoutMs")]
    timeout_ms: u64,
}

#[derive(Deserialize)]
struct EvalResponse {
    #[serde(default)]
    results: Vec<Exported>,
    #[serde(default)]
    errors: Vec<CueError>,
}

/// Calls one bridge function with a JSON request and decodes its JSON answer.
fn call_bridge<T: for<'de> Deserialize<'de>>(
    request: &impl Serialize,
    f: impl FnOnce(*const std::ffi::c_char) -> *mut std::ffi::c_char,
) -> Result<T, CueErrors> {
    let request_error = |message: String| {
        CueErrors(vec![CueError {
            message,
            path: String::new(),
            positions: vec![],
            kind: CueErrorKind::Request,
        }])
    };
    let body = serde_json::to_vec(request).map_err(|e| request_error(e.to_string()))?;
    let body = CString::new(body).map_err(|e| request_error(e.to_string()))?;
    let raw = f(body.as_ptr());
    if raw.is_null() {
        return Err(request_error("the CUE bridge returned no answer".into()));
    }
    // SAFETY: the bridge returns a NUL-terminated string from C.CString that stays valid until
    // we free it below, exactly once.
    let decoded = unsafe { CStr::from_ptr(raw) }.to_bytes().to_vec();
    // SAFETY: `raw` came from the bridge's allocator and is not used after this.
    unsafe { crate::ffi::cuebe_string_free(raw) };
    serde_json::from_slice(&decoded)
        .map_err(|e| request_error(format!("undecodable answer from the CUE bridge: {e}")))
}

struct Handle(u64);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: freeing a handle is always safe; unknown ids are ignored by the bridge.
        unsafe { crate::ffi::cuebe_module_free(self.0) };
    }
}

fn build_handle(source: &ModuleFiles) -> Result<Handle, CueErrors> {
    let request = LoadRequest {
        files: &source.files,
        package: &source.package,
        deps: &source.dependencies,
    };
    // SAFETY: the pointer is a valid NUL-terminated string for the duration of the call.
    let resp: LoadResponse =
        call_bridge(&request, |p| unsafe { crate::ffi::cuebe_module_load(p) })?;
    if !resp.errors.is_empty() {
        return Err(CueErrors(resp.errors));
    }
    Ok(Handle(resp.handle))
}

struct Pool {
    idle: Vec<Handle>,
    total: usize,
    /// Handles (already freed) whose timed-out evaluation may still be running in the bridge.
    abandoned: Vec<u64>,
}

/// How many evaluations of one module may still be running after their callers gave up on them
/// (timeouts) before the module refuses new evaluations. Each holds a goroutine and the memory of
/// its evaluation; a module that never terminates would otherwise leak one per render.
pub const MAX_ABANDONED_EVALUATIONS: usize = 2;

/// How many goroutines the bridge's Go runtime runs now. Abandoned evaluations each keep one;
/// tests and diagnostics use this to see that they are bounded.
pub fn bridge_goroutines() -> i64 {
    // SAFETY: takes no arguments and only reads the Go runtime's counter.
    unsafe { crate::ffi::cuebe_goroutines() }
}

/// The memory of the bridge's Go runtime (the CUE evaluators), in bytes. The Go heap is outside
/// Rust's allocator: without these figures a process's RSS cannot be told apart.
///
/// ```
/// let memory = cuebe_cue_sys::module::bridge_memory();
/// assert!(memory.mapped >= memory.released);
/// assert!(memory.heap_goal >= memory.heap_live);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GoMemory {
    /// Heap objects the last collection found reachable.
    pub heap_live: u64,
    /// The heap size at which the next collection starts (`GOGC`, bounded by the memory limit).
    pub heap_goal: u64,
    /// Everything the Go runtime mapped (heap, stacks, its own structures).
    pub mapped: u64,
    /// Of `mapped`, what was returned to the operating system (not resident).
    pub released: u64,
}

impl GoMemory {
    /// What the Go runtime holds resident at most: mapped minus released.
    pub fn resident(&self) -> u64 {
        self.mapped.saturating_sub(self.released)
    }
}

/// Reads [`GoMemory`] from the bridge's Go runtime, without stopping it.
pub fn bridge_memory() -> GoMemory {
    let mut out = [0u64; 4];
    // SAFETY: the bridge writes exactly 4 values into the array it is given.
    unsafe { crate::ffi::cuebe_go_memory(out.as_mut_ptr()) };
    GoMemory {
        heap_live: out[0],
        heap_goal: out[1],
        mapped: out[2],
        released: out[3],
    }
}

/// Collects the bridge's Go garbage, then writes a pprof heap profile of what stays (the CUE
/// evaluators' memory by allocation site) to `path`; read it with `go tool pprof -top PATH`.
/// A diagnostic for memory investigations: it stops the Go world for one collection.
///
/// ```no_run
/// let path = std::env::temp_dir().join("cue-heap.pprof");
/// cuebe_cue_sys::module::write_go_heap_profile(&path)?;
/// // Afterwards the live heap figure is exact, not the last collection's.
/// let live = cuebe_cue_sys::module::bridge_memory().heap_live;
/// # let _ = live;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn write_go_heap_profile(path: &std::path::Path) -> std::io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: the pointer is a valid NUL-terminated string for the duration of the call; a
    // returned string is owned by C's allocator and released here, once.
    let error = unsafe { crate::ffi::cuebe_go_heap_profile(c_path.as_ptr()) };
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: non-null returns are NUL-terminated strings from C.CString.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: released once, with the bridge's own free.
    unsafe { crate::ffi::cuebe_string_free(error) };
    Err(std::io::Error::other(message))
}

fn still_running(handle: u64) -> bool {
    // SAFETY: takes a plain integer; unknown handles answer 0.
    unsafe { crate::ffi::cuebe_module_abandoned(handle) != 0 }
}

/// A module's files, held in memory (path relative to the module root → content), the package
/// to evaluate (e.g. `./webservice`) and the modules its `deps` may be resolved from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFiles {
    /// The files.
    pub files: std::collections::BTreeMap<String, String>,
    /// The entry package.
    pub package: String,
    /// The only modules a dependency (`deps` in `cue.mod/module.cue`) is resolved from: the
    /// bridge serves these from memory and refuses any other, so a load never touches the
    /// network.
    pub dependencies: Vec<DependencyModule>,
}

/// One version of a CUE module a loaded module may depend on, held in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DependencyModule {
    /// The module path with its major version, as `deps` names it: `cuebe.dev/lib@v0`.
    pub module: String,
    /// The full version `deps` asks for: `v0.1.0`.
    pub version: String,
    /// Its files (path relative to its root → content), `cue.mod/module.cue` included.
    pub files: std::collections::BTreeMap<String, String>,
}

/// A CUE module built in-process and ready to evaluate.
///
/// ```no_run
/// use cuebe_cue_sys::module::{ExportRequest, Fill, LoadedModule, ModuleFiles};
///
/// let source = ModuleFiles {
///     files: [
///         ("cue.mod/module.cue", "module: \"example.com/m@v0\"\nlanguage: version: \"v0.17.1\"\n"),
///         ("m.cue", "package m\ninput: n: int\nout: input.n * 2\n"),
///     ]
///     .into_iter()
///     .map(|(p, c)| (p.to_string(), c.to_string()))
///     .collect(),
///     package: ".".into(),
///     dependencies: Vec::new(),
/// };
/// let module = LoadedModule::load(source, 2)?;
/// let input = serde_json::json!({"n": 21});
/// let out = module.eval(
///     &[Fill { path: "input", value: &input }],
///     &[ExportRequest::whole("out")],
///     std::time::Duration::from_secs(5),
/// )?;
/// # Ok::<(), cuebe_cue_sys::module::CueErrors>(())
/// ```
pub struct LoadedModule {
    source: ModuleFiles,
    pool: Mutex<Pool>,
    freed: Condvar,
    max_handles: usize,
}

impl fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedModule")
            .field("package", &self.source.package)
            .field("max_handles", &self.max_handles)
            .finish()
    }
}

impl LoadedModule {
    /// Builds the module once; more copies are built lazily, up to `max_handles`, when
    /// evaluations overlap.
    pub fn load(source: ModuleFiles, max_handles: usize) -> Result<Self, CueErrors> {
        let first = build_handle(&source)?;
        Ok(Self {
            source,
            pool: Mutex::new(Pool {
                idle: vec![first],
                total: 1,
                abandoned: Vec::new(),
            }),
            freed: Condvar::new(),
            max_handles: max_handles.max(1),
        })
    }

    /// The module's files.
    pub fn source(&self) -> &ModuleFiles {
        &self.source
    }

    /// How many evaluations may run at once.
    pub fn max_handles(&self) -> usize {
        self.max_handles
    }

    /// Evaluations of this module that exceeded their limit and are still running.
    pub fn abandoned_evaluations(&self) -> usize {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        pool.abandoned.retain(|&id| still_running(id));
        pool.abandoned.len()
    }

    fn acquire(&self) -> Result<Handle, CueErrors> {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        pool.abandoned.retain(|&id| still_running(id));
        if pool.abandoned.len() >= MAX_ABANDONED_EVALUATIONS {
            return Err(CueErrors(vec![CueError {
                message: format!(
                    "{} earlier evaluations of this module exceeded their time limit and are \
                     still running; no new evaluation starts until one ends (the module may \
                     not terminate: fix it, or raise the evaluation time limit)",
                    pool.abandoned.len()
                ),
                path: String::new(),
                positions: vec![],
                kind: CueErrorKind::Timeout,
            }]));
        }
        loop {
            if let Some(h) = pool.idle.pop() {
                return Ok(h);
            }
            if pool.total < self.max_handles {
                pool.total += 1;
                drop(pool);
                return build_handle(&self.source).inspect_err(|_| {
                    let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
                    pool.total -= 1;
                    self.freed.notify_one();
                });
            }
            pool = self
                .freed
                .wait(pool)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn release(&self, handle: Handle) {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        pool.idle.push(handle);
        self.freed.notify_one();
    }

    /// Gives up on a handle whose evaluation timed out: it is freed (the bridge ends its worker
    /// once the evaluation ends) and remembered until then.
    fn abandon(&self, handle: Handle) {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        pool.total -= 1;
        pool.abandoned.push(handle.0);
        drop(handle);
        self.freed.notify_one();
    }

    /// Fills `fills`, then exports each of `exports` in order. Blocks the calling thread.
    ///
    /// The outer error is for failures of the whole evaluation (timeout, a fill that does not
    /// parse, a panic); errors of an exported value come back inside its [`Exported`].
    pub fn eval(
        &self,
        fills: &[Fill<'_>],
        exports: &[ExportRequest<'_>],
        timeout: Duration,
    ) -> Result<Vec<Exported>, CueErrors> {
        let handle = self.acquire()?;
        let request = EvalRequest {
            fills,
            exports,
            timeout_ms: u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        };
        let id = handle.0;
        // SAFETY: the pointer is a valid NUL-terminated string for the duration of the call, and
        // this thread holds the handle exclusively.
        let result: Result<EvalResponse, CueErrors> = call_bridge(&request, |p| unsafe {
            crate::ffi::cuebe_module_eval(id, p)
        });
        match result {
            Ok(resp) if !resp.errors.is_empty() => {
                let errors = CueErrors(resp.errors);
                // A timed-out handle is poisoned on the Go side: never reuse it.
                if errors.is_timeout() {
                    self.abandon(handle);
                } else {
                    self.release(handle);
                }
                Err(errors)
            }
            Ok(resp) => {
                self.release(handle);
                Ok(resp
                    .results
                    .into_iter()
                    .zip(exports)
                    .map(|(result, request)| result.split(request.split))
                    .collect())
            }
            Err(e) => {
                self.release(handle);
                Err(e)
            }
        }
    }
}
