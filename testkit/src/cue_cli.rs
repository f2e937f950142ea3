//! The official `cue` command at the same version as the in-process bridge, built from the Go
//! module proxy into a cache outside the clone the first time it is needed.
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cuelang.org/go version the bridge (`cue-sys/go/go.mod`) pins.
pub const CUE_VERSION: &str = "v0.17.1";

/// Why the CLI is not available.
#[derive(Debug, thiserror::Error)]
pub enum CueCliError {
    /// `go` could not be run.
    #[error("cannot run `go` to install cue {version}: {source}")]
    NoGo {
        /// The version wanted.
        version: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// `go install` failed.
    #[error("`go install cuelang.org/go/cmd/cue@{version}` failed: {stderr}")]
    Install {
        /// The version wanted.
        version: &'static str,
        /// What go printed.
        stderr: String,
    },
    /// `cue` could not be run.
    #[error("cannot run {cue}: {source}")]
    Run {
        /// The binary.
        cue: String,
        /// The error.
        source: std::io::Error,
    },
    /// `cue export` failed.
    #[error("cue export failed: {stderr}")]
    Export {
        /// What cue printed.
        stderr: String,
    },
}

/// `$CUEBE_CACHE_DIR`, else `$XDG_CACHE_HOME/cuebe` (or `~/.cache/cuebe`): where the tools
/// the testkit installs are kept.
pub(crate) fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CUEBE_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("cuebe")
}

/// Path to `cue` [`CUE_VERSION`], installing it on first use.
///
/// ```no_run
/// let cue = cuebe_testkit::cue_cli::cue_binary()?;
/// let out = std::process::Command::new(cue).arg("version").output()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn cue_binary() -> Result<PathBuf, CueCliError> {
    // One install per process even when tests ask concurrently.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let bin_dir = cache_dir().join(format!("cue-{CUE_VERSION}"));
    let bin = bin_dir.join("cue");
    if bin.is_file() {
        return Ok(bin);
    }
    let out = Command::new(std::env::var("GO").unwrap_or_else(|_| "go".into()))
        .args(["install", &format!("cuelang.org/go/cmd/cue@{CUE_VERSION}")])
        .env("GOBIN", &bin_dir)
        .env("CGO_ENABLED", "0")
        .output()
        .map_err(|source| CueCliError::NoGo {
            version: CUE_VERSION,
            source,
        })?;
    if !out.status.success() || !bin.is_file() {
        return Err(CueCliError::Install {
            version: CUE_VERSION,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(bin)
}

/// `cue export PACKAGE INPUT -e EXPR --out json` in `dir` (the module root): the JSON it prints.
///
/// ```no_run
/// # fn f(module_root: &std::path::Path) -> Result<(), cuebe_testkit::cue_cli::CueCliError> {
/// let cue = cuebe_testkit::cue_cli::cue_binary()?;
/// let json = cuebe_testkit::cue_cli::export(&cue, module_root, "./webservice", "input.json".as_ref(), "nodes")?;
/// # Ok(()) }
/// ```
pub fn export(
    cue: &Path,
    dir: &Path,
    package: &str,
    input: &Path,
    expr: &str,
) -> Result<Vec<u8>, CueCliError> {
    run_export(
        Command::new(cue)
            .current_dir(dir)
            .args(["export", package])
            .arg(input)
            .args(["-e", expr, "--out", "json"]),
        cue,
    )
}

/// [`export`] of a module with dependencies: `cue` resolves them from the OCI registry at
/// `registry` (`host:port`, as `CUE_REGISTRY`), with a module cache of its own for this call (a
/// shared cache would keep a module version fetched from another registry).
///
/// ```no_run
/// # fn f(module_root: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
/// let registry = cuebe_testkit::oci_registry::LocalRegistry::start()?;
/// cuebe_testkit::oci_registry::publish_standard_library(&registry)?;
/// let cue = cuebe_testkit::cue_cli::cue_binary()?;
/// let json = cuebe_testkit::cue_cli::export_with_registry(
///     &cue, module_root, "./webservice", "input.json".as_ref(), "nodes", &registry.host())?;
/// # Ok(()) }
/// ```
pub fn export_with_registry(
    cue: &Path,
    dir: &Path,
    package: &str,
    input: &Path,
    expr: &str,
    registry: &str,
) -> Result<Vec<u8>, CueCliError> {
    let cache = tempfile::tempdir().map_err(|source| CueCliError::Run {
        cue: cue.display().to_string(),
        source,
    })?;
    run_export(
        Command::new(cue)
            .current_dir(dir)
            .args(["export", package])
            .arg(input)
            .args(["-e", expr, "--out", "json"])
            .env("CUE_REGISTRY", registry)
            .env("CUE_CACHE_DIR", cache.path()),
        cue,
    )
}

fn run_export(command: &mut Command, cue: &Path) -> Result<Vec<u8>, CueCliError> {
    let out = command.output().map_err(|source| CueCliError::Run {
        cue: cue.display().to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(CueCliError::Export {
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(out.stdout)
}
