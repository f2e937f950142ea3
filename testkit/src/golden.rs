//! Golden-file tests of a platform module: one input file in, one insta snapshot out.
//!
//! A platform team points [`GoldenSuite`] at its module and a folder of cases; every case file
//! becomes one snapshot of the rendered Graph (or of the violations, or of the error). A change
//! to the module that changes any output shows up as a snapshot diff in review.
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

/// Runs every `*.yaml` case in a folder against a module and snapshots each outcome.
///
/// ```no_run
/// use cuebe::module::ModuleSource;
/// use cuebe_testkit::golden::GoldenSuite;
///
/// let module = ModuleSource::from_dir("../cue/platform", "./webservice").unwrap();
/// GoldenSuite::new(module, "tests/golden/cases")
///     .snapshots("tests/golden/snapshots")
///     .run()
///     .unwrap();
/// ```
#[derive(Debug)]
pub struct GoldenSuite {
    module: ModuleSource,
    cases: PathBuf,
    snapshots: Option<PathBuf>,
}

impl GoldenSuite {
    /// A suite over `module` with the cases in `cases`.
    pub fn new(module: ModuleSource, cases: impl Into<PathBuf>) -> Self {
        Self {
            module,
            cases: cases.into(),
            snapshots: None,
        }
    }

    /// Where snapshots are kept (default: `<cases>/../snapshots`).
    pub fn snapshots(mut self, dir: impl Into<PathBuf>) -> Self {
        self.snapshots = Some(dir.into());
        self
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
        let module = if case.module_overlay.is_empty() {
            self.module.clone()
        } else {
            self.module.with_files(case.module_overlay.clone())
        };
        let meta = case
            .resource
            .get("metadata")
            .cloned()
            .unwrap_or(Value::Null);
        let spec = case.resource.get("spec").cloned().unwrap_or(Value::Null);
        let platform_ref: Option<PlatformRef> = spec
            .get("platformRef")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| bad(format!("resource.spec.platformRef: {e}")))?;
        let input = RenderInput {
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
                    .map_err(|e| bad(format!("resource.metadata.labels: {e}")))?
                    .unwrap_or_default(),
                ..Default::default()
            },
            spec,
            platform_ref: platform_ref.clone(),
            module: None,
            capabilities: Capabilities::from_names(&case.capabilities),
            observed: case.observed,
        };
        let version = platform_ref
            .and_then(|r| r.embedded)
            .unwrap_or_else(|| "0.0.0".into());
        let renderer = CueRenderer::new(ModuleSet::single(version, module));
        Ok(match renderer.render_blocking(&input) {
            Ok(g) if g.has_blocking_violations() => GoldenOutcome::Violations(g.violations.clone()),
            Ok(g) => GoldenOutcome::Graph(serde_json::to_value(g.graph()).unwrap_or(Value::Null)),
            Err(e) => GoldenOutcome::Error(e.to_string()),
        })
    }

    /// Snapshots every case (one snapshot per file, named after it). Panics like any insta
    /// assertion when a snapshot differs.
    pub fn run(&self) -> Result<usize, GoldenError> {
        let files = self.case_files()?;
        let snapshots = self
            .snapshots
            .clone()
            .unwrap_or_else(|| self.cases.join("..").join("snapshots"));
        let snapshots = std::path::absolute(&snapshots).unwrap_or(snapshots);
        for path in &files {
            let outcome = self.outcome(path)?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut settings = insta::Settings::clone_current();
            settings.set_snapshot_path(&snapshots);
            settings.set_prepend_module_to_snapshot(false);
            settings.set_input_file(path);
            // Digests change with any edit of the module; the objects are what reviewers read.
            settings.add_redaction(".graph.metadata.platformRefResolved", "[module digest]");
            settings.add_redaction(".graph.metadata.renderHash", "[render hash]");
            settings.add_filter(r"sha256:[0-9a-f]{64}", "[digest]");
            // As plain JSON data, so the redaction selectors see maps rather than enum variants.
            let outcome = serde_json::to_value(&outcome).unwrap_or(Value::Null);
            settings.bind(|| insta::assert_yaml_snapshot!(name, outcome));
        }
        Ok(files.len())
    }
}
