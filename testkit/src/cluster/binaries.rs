//! Finding the control plane binaries, or building them with `testkit/controlplane/build.sh`.
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::ClusterError;

/// Why the control plane binaries could not be found or built.
///
/// `Clone` because [`controlplane_bin`] remembers its answer for the whole process: a failed build
/// is not retried by every test.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BinariesError {
    /// `CUEBE_CONTROLPLANE_BIN` names a directory without the binaries.
    #[error("CUEBE_CONTROLPLANE_BIN={dir} has no kube-apiserver")]
    NotInOverride {
        /// The directory.
        dir: PathBuf,
    },
    /// The build script could not be run at all.
    #[error("running {script}: {source}")]
    Run {
        /// The script.
        script: PathBuf,
        /// The error.
        source: Arc<std::io::Error>,
    },
    /// The build script failed; it printed why on stderr.
    #[error("{script} failed ({status}); its messages are above on stderr")]
    Failed {
        /// The script.
        script: PathBuf,
        /// Its exit status.
        status: ExitStatus,
    },
    /// The build script succeeded but the directory it printed has no kube-apiserver.
    #[error("{script} printed {dir:?} as the bin directory, which has no kube-apiserver")]
    Incomplete {
        /// The script.
        script: PathBuf,
        /// What it printed last.
        dir: PathBuf,
    },
}

impl From<BinariesError> for ClusterError {
    fn from(e: BinariesError) -> Self {
        ClusterError::Binaries(e)
    }
}

fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/build.sh")
}

/// Locates the control plane binaries: `CUEBE_CONTROLPLANE_BIN`, else runs
/// `testkit/controlplane/build.sh`, which builds them once into
/// `$CUEBE_CACHE_DIR/controlplane/<key>/bin` (default `~/.cache/cuebe`) and afterwards just
/// prints that directory. A first build takes about half an hour on 2 cores; the script tells on
/// stderr which step it is on.
///
/// The answer is remembered for the process. To build into another cache, use
/// [`controlplane_bin_in`].
pub fn controlplane_bin() -> Result<PathBuf, ClusterError> {
    static BIN: OnceLock<Result<PathBuf, BinariesError>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(dir) = std::env::var_os("CUEBE_CONTROLPLANE_BIN") {
            let dir = PathBuf::from(dir);
            if dir.join("kube-apiserver").is_file() {
                return Ok(dir);
            }
            return Err(BinariesError::NotInOverride { dir });
        }
        run_build_script(None)
    })
    .clone()
    .map_err(ClusterError::Binaries)
}

/// The control plane binaries in the cache directory `cache_dir` (what `CUEBE_CACHE_DIR` would
/// name), building them there first if they are not complete. Ignores `CUEBE_CONTROLPLANE_BIN`
/// and is not remembered: each call runs the build script, which returns at once when the
/// binaries are there.
pub fn controlplane_bin_in(cache_dir: &Path) -> Result<PathBuf, ClusterError> {
    run_build_script(Some(cache_dir)).map_err(ClusterError::Binaries)
}

fn run_build_script(cache_dir: Option<&Path>) -> Result<PathBuf, BinariesError> {
    let script = build_script();
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .stdin(Stdio::null())
        // The script's progress (which step, how long it usually takes) goes straight to the
        // user; only its last stdout line, the bin directory, is ours.
        .stderr(Stdio::inherit());
    if let Some(dir) = cache_dir {
        cmd.env("CUEBE_CACHE_DIR", dir);
    }
    tracing::debug!(script = %script.display(), cache_dir = ?cache_dir, "locating the control plane binaries");
    let started = Instant::now();
    let out = cmd.output().map_err(|source| BinariesError::Run {
        script: script.clone(),
        source: Arc::new(source),
    })?;
    if !out.status.success() {
        return Err(BinariesError::Failed {
            script,
            status: out.status,
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    if !dir.join("kube-apiserver").is_file() {
        return Err(BinariesError::Incomplete { script, dir });
    }
    let took = started.elapsed();
    // A cached lookup takes milliseconds; anything longer was a build worth mentioning.
    if took.as_secs() >= 5 {
        tracing::info!(bin = %dir.display(), took = ?took, "built the control plane binaries");
    }
    Ok(dir)
}
