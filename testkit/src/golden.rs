//! Golden-file tests of a platform module: one input file in, one insta snapshot out.
//!
//! [`GoldenSuite::for_abstraction`] finds an abstraction's cases (`tests/golden/cases/*.yaml`) and
//! snapshots (`tests/golden/snapshots`) by convention; every case file becomes one snapshot of
//! the rendered Graph (or of the violations, the error, or the rejection of the resource by the
//! Rust type). A change to the module that changes any output shows up as a snapshot diff in
//! review.
//!
//! Each case's resource is read as the abstraction's Rust type first (the type the CRD is
//! generated from), so a case the API would refuse — an unknown field, a wrong type — is
//! snapshotted as [`GoldenOutcome::Rejected`] naming the field, and never reaches CUE: the
//! module is tested on the inputs it can actually receive.
//!
//! A case file is YAML:
//!
//! ```yaml
//! # what the cluster offers (optional)
//! capabilities: [ack-iam]
//! # live objects by node id, for observed exports (optional)
//! observed:
//!   iamRole: {status: {ackResourceMetadata: {arn: "arn:aws:iam::1:role/x"}}}
//! # extra or replaced module files, e.g. to prove output policy catches a bad render (optional)
//! moduleOverlay:
//!   webservice/zz_overlay.cue: |
//!     package webservice
//!     nodes: deployment: object: spec: template: spec: hostNetwork: true
//! # the custom resource (its metadata and spec are used)
//! resource:
//!   apiVersion: platform.example.com/v1alpha1
//!   kind: WebService
//!   metadata: {name: web, namespace: apps}
//!   spec: {image: registry.example.com/web:1.0.0}
//! ```
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cuebe::Abstraction;
use cuebe::module::{ModuleSet, ModuleSource, PlatformRef};
use cuebe::renderer::{Capabilities, CueRenderer, RenderInput};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One golden case, as read from its file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GoldenCase {
    /// Capability names.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Live objects by node id.
    #[serde(default)]
    pub observed: BTreeMap<String, Value>,
    /// Module files to add or replace for this case.
    #[serde(default)]
    pub module_overlay: BTreeMap<String, String>,
    /// The custom resource.
    pub resource: Value,
}

/// What a case produced; this is what gets snapshotted.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum GoldenOutcome {
    /// A graph without blocking violations.
    Graph(Value),
    /// Policy violations.
    Violations(Vec<cuebe::Violation>),
    /// A render error, as the user would read it.
    Error(String),
    /// The resource does not parse as the abstraction's Rust type (what `kubectl apply` with the
    /// CRD, admission and the CLI refuse), with the field: CUE never saw it.
    Rejected(String),
}

/// Why a suite could not run (not a snapshot mismatch: insta reports those).
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    /// The cases folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A case file is malformed.
    #[error("{path}: {message}")]
    Case {
        /// The case file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The folder has no cases, so the suite would test nothing.
    #[error("{0}: no *.yaml cases found")]
    Empty(PathBuf),
}

/// Builds a case's renderer input from its resource through the abstraction's Rust type.
type TypedInput = dyn Fn(&Path, &Value, Capabilities, BTreeMap<String, Value>) -> Result<RenderInput, String>
    + Send
    + Sync;

/// Runs every `*.yaml` case in a folder against a module and snapshots each outcome.
///
/// For an abstraction, one call (cases in `tests/golden/cases`, snapshots in
/// `tests/golden/snapshots`, both under the crate being tested):
///
/// ```no_run
/// use cuebe_testkit::golden::GoldenSuite;
///
/// // In a test of your abstraction's crate: `GoldenSuite::for_abstraction::<WebService>()`.
/// fn golden_cases<A: cuebe::Abstraction>() {
///     let cases = GoldenSuite::for_abstraction::<A>().run().expect("golden cases run");
///     assert!(cases > 0);
/// }
/// ```
///
/// Snapshots follow insta's conventions (`INSTA_UPDATE`): a changed output fails the test and
/// leaves `<case>.snap.new` for `cargo insta review`. A case that has no snapshot yet gets its
/// `<case>.snap` written on the first run, outside CI, and passes: the new file is what you
/// review (in `git diff`), with nothing to rename or delete. In CI (`CI` set) a missing snapshot
/// fails. Every case runs before the suite fails, so one run reports all of them.
///
/// Redaction: the module's digest (it changes with any edit of the module) reads
/// `[module digest]`, wherever it appears, and `renderHash` reads `[render hash]`. Every other
/// value — image digests included — is snapshotted as rendered.
#[derive(Clone)]
pub struct GoldenSuite {
    modules: ModuleSet,
    /// Untyped suites accept any embedded version name for the one module they have.
    untyped_version: Option<String>,
    cases: PathBuf,
    snapshots: Option<PathBuf>,
    typed: Option<Arc<TypedInput>>,
}

impl std::fmt::Debug for GoldenSuite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoldenSuite")
            .field("modules", &self.modules.versions().collect::<Vec<_>>())
            .field("cases", &self.cases)
            .field("snapshots", &self.snapshots)
            .field("typed", &self.typed.is_some())
            .finish()
    }
}

/// The crate under test: cargo sets `CARGO_MANIFEST_DIR` for test processes (and runs them in
/// that directory).
fn crate_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default()
}

impl GoldenSuite {
    /// The suite of abstraction `A`: its embedded modules ([`Abstraction::modules`]), the cases
    /// in `tests/golden/cases` and the snapshots in `tests/golden/snapshots` of the crate under
    /// test. Each case's `resource` is parsed as `A` (apiVersion, kind and spec, unknown fields
    /// refused) and rendered exactly as the controller renders it.
    pub fn for_abstraction<A: Abstraction>() -> Self {
        let golden = crate_dir().join("tests").join("golden");
        let typed: Arc<TypedInput> = Arc::new(|_path, resource, capabilities, observed| {
            let object: A = parse_resource(resource)?;
            Ok(cuebe::abstraction::render_input(
                &object,
                capabilities,
                observed,
            ))
        });
        Self {
            modules: A::modules(),
            untyped_version: None,
            cases: golden.join("cases"),
            snapshots: Some(golden.join("snapshots")),
            typed: Some(typed),
        }
    }

    /// A suite over one module with the cases in `cases`, without a Rust type: the resource's
    /// spec goes to CUE as written. For a module that has no abstraction crate yet; prefer
    /// [`GoldenSuite::for_abstraction`].
    pub fn new(module: ModuleSource, cases: impl Into<PathBuf>) -> Self {
        Self {
            modules: ModuleSet::single("0.0.0", module),
            untyped_version: Some("0.0.0".into()),
            cases: cases.into(),
            snapshots: None,
            typed: None,
        }
    }

    /// Reads the cases from `dir` instead.
    pub fn cases(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cases = dir.into();
        self
    }

    /// Where snapshots are kept (default: `<cases>/../snapshots`).
    pub fn snapshots(mut self, dir: impl Into<PathBuf>) -> Self {
        self.snapshots = Some(dir.into());
        self
    }

    /// The snapshot folder.
    pub fn snapshot_dir(&self) -> PathBuf {
        let dir = self
            .snapshots
            .clone()
            .unwrap_or_else(|| self.cases.join("..").join("snapshots"));
        std::path::absolute(&dir).unwrap_or(dir)
    }

    /// The case files, sorted.
    pub fn case_files(&self) -> Result<Vec<PathBuf>, GoldenError> {
        let io = |source| GoldenError::Io {
            path: self.cases.clone(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.cases)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(GoldenError::Empty(self.cases.clone()));
        }
        Ok(files)
    }

    /// Renders one case.
    pub fn outcome(&self, path: &Path) -> Result<GoldenOutcome, GoldenError> {
        self.outcome_and_digests(path).map(|(outcome, _)| outcome)
    }

    /// Renders one case; also returns the digests of the modules it may have rendered with.
    fn outcome_and_digests(
        &self,
        path: &Path,
    ) -> Result<(GoldenOutcome, Vec<String>), GoldenError> {
        let bad = |message: String| GoldenError::Case {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|source| GoldenError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let case: GoldenCase = serde_norway::from_str(&text).map_err(|e| bad(e.to_string()))?;
        // cue/load skips `*_test.cue` files: such an overlay would silently change nothing.
        if let Some(name) = case
            .module_overlay
            .keys()
            .find(|name| name.ends_with("_test.cue"))
        {
            return Err(bad(format!(
                "moduleOverlay.{name}: CUE ignores files ending in _test.cue; rename it (e.g. zz_overlay.cue)"
            )));
        }
        let capabilities = Capabilities::from_names(&case.capabilities);
        let input = match &self.typed {
            Some(typed) => match typed(path, &case.resource, capabilities, case.observed) {
                Ok(input) => input,
                Err(message) => return Ok((GoldenOutcome::Rejected(message), Vec::new())),
            },
            None => untyped_input(&case.resource, capabilities, case.observed).map_err(bad)?,
        };
        let modules = match &self.untyped_version {
            // The one module answers to whatever embedded version the case names.
            Some(default) => {
                let version = input
                    .platform_ref
                    .as_ref()
                    .and_then(|r| r.embedded.clone())
                    .unwrap_or_else(|| default.clone());
                let module = self.modules.resolve(None).map_err(|e| bad(e.to_string()))?;
                ModuleSet::single(version, (*module.source).clone())
            }
            None => self.modules.clone(),
        };
        let modules = if case.module_overlay.is_empty() {
            modules
        } else {
            match modules.resolve(input.platform_ref.as_ref()) {
                Ok(m) => ModuleSet::single(
                    m.version.clone(),
                    m.source.with_files(case.module_overlay.clone()),
                ),
                Err(e) => return Ok((GoldenOutcome::Error(e.to_string()), Vec::new())),
            }
        };
        let digests = modules
            .versions()
            .filter_map(|v| {
                let r = cuebe::module::PlatformRef::embedded(v);
                modules
                    .resolve(Some(&r))
                    .ok()
                    .map(|m| m.source.digest().to_string())
            })
            .collect();
        let renderer = CueRenderer::new(modules);
        let outcome = match renderer.render_blocking(&input) {
            Ok(g) if g.has_blocking_violations() => GoldenOutcome::Violations(g.violations.clone()),
            Ok(g) => GoldenOutcome::Graph(serde_json::to_value(g.graph()).unwrap_or(Value::Null)),
            Err(e) => GoldenOutcome::Error(e.to_string()),
        };
        Ok((outcome, digests))
    }

    /// Snapshots every case (one snapshot per file, named after it). Runs every case, then
    /// panics like an insta assertion, naming each case whose snapshot differs (or, in CI, is
    /// missing). Returns how many cases ran.
    pub fn run(&self) -> Result<usize, GoldenError> {
        let files = self.case_files()?;
        let snapshots = self.snapshot_dir();
        let mut failed = Vec::new();
        let mut written = Vec::new();
        for path in &files {
            let (outcome, digests) = self.outcome_and_digests(path)?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let snapshot = snapshots.join(format!("{name}.snap"));
            let existed = snapshot.exists();
            let mut settings = insta::Settings::clone_current();
            settings.set_snapshot_path(&snapshots);
            settings.set_prepend_module_to_snapshot(false);
            settings.set_input_file(path);
            // The module digest changes with any edit of the module, and renderHash with it;
            // the objects are what reviewers read. Image digests are part of the objects.
            settings.add_redaction(".graph.metadata.platformRefResolved", "[module digest]");
            settings.add_redaction(".graph.metadata.renderHash", "[render hash]");
            // As plain JSON data, so the redaction selectors see maps rather than enum variants.
            let mut outcome = serde_json::to_value(&outcome).unwrap_or(Value::Null);
            redact_strings(&mut outcome, &digests, "[module digest]");
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                settings.bind(|| insta::assert_yaml_snapshot!(name.as_str(), outcome))
            }));
            if result.is_ok() {
                continue;
            }
            if !existed && accept_new_snapshots() {
                let pending = snapshots.join(format!("{name}.snap.new"));
                if std::fs::rename(&pending, &snapshot).is_ok() {
                    written.push(snapshot.display().to_string());
                    continue;
                }
            }
            failed.push(name);
        }
        if !written.is_empty() {
            tracing::warn!(snapshots = ?written, "new golden snapshots written: review them");
            // Beside insta's own report, which names the `.snap.new` this renamed.
            eprintln!(
                "golden: wrote {} new snapshot(s) for review:\n  {}",
                written.len(),
                written.join("\n  ")
            );
        }
        if !failed.is_empty() {
            panic!(
                "golden cases whose snapshot differs or is missing: {} (review the .snap.new files \
                 with `cargo insta review`, or rerun with INSTA_UPDATE=always to accept them)",
                failed.join(", ")
            );
        }
        Ok(files.len())
    }
}

/// Reads a case's resource as `A`, as the API server and the CLI would: the apiVersion and kind
/// must be `A`'s, and an error names the field (`spec.replicas: invalid type: ...`).
fn parse_resource<A: Abstraction>(resource: &Value) -> Result<A, String> {
    let field = |name: &str| {
        resource
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let (api_version, kind) = (A::api_version(&()), A::kind(&()));
    if field("apiVersion") != api_version || field("kind") != kind {
        return Err(format!(
            "expected apiVersion: {api_version} and kind: {kind}, found {:?} {:?}",
            field("apiVersion"),
            field("kind")
        ));
    }
    serde_path_to_error::deserialize(resource).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })
}

/// Whether a case without a snapshot gets one written and passes: insta's default
/// (`INSTA_UPDATE` unset or `auto`) outside CI. `INSTA_UPDATE=always`/`unseen` write it
/// themselves; `new` keeps the `.snap.new` for review; `no` and CI fail.
fn accept_new_snapshots() -> bool {
    let ci = match std::env::var("CI").ok().as_deref() {
        Some("false" | "0" | "") => false,
        None => std::env::var_os("TF_BUILD").is_some(),
        Some(_) => true,
    };
    let update = std::env::var("INSTA_UPDATE").ok();
    !ci && matches!(update.as_deref(), None | Some("auto"))
}

/// Replaces each needle in every string of `value`.
fn redact_strings(value: &mut Value, needles: &[String], with: &str) {
    match value {
        Value::String(s) => {
            for needle in needles.iter().filter(|n| !n.is_empty()) {
                if s.contains(needle.as_str()) {
                    *s = s.replace(needle.as_str(), with);
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| redact_strings(v, needles, with)),
        Value::Object(map) => map
            .values_mut()
            .for_each(|v| redact_strings(v, needles, with)),
        _ => {}
    }
}

/// The renderer input of an untyped case: the resource's metadata and spec as written.
fn untyped_input(
    resource: &Value,
    capabilities: Capabilities,
    observed: BTreeMap<String, Value>,
) -> Result<RenderInput, String> {
    let meta = resource.get("metadata").cloned().unwrap_or(Value::Null);
    let spec = resource.get("spec").cloned().unwrap_or(Value::Null);
    let platform_ref: Option<PlatformRef> = spec
        .get("platformRef")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| format!("resource.spec.platformRef: {e}"))?;
    Ok(RenderInput {
        instance: cuebe::instance::Instance {
            name: meta
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            namespace: meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string(),
            labels: meta
                .get("labels")
                .cloned()
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| format!("resource.metadata.labels: {e}"))?
                .unwrap_or_default(),
            ..Default::default()
        },
        spec,
        platform_ref,
        module: None,
        capabilities,
        observed,
    })
}
