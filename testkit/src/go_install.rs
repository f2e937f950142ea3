//! `go install MODULE/CMD@VERSION` into the testkit's cache, once per binary and process.
use std::path::PathBuf;
use std::process::Command;

/// Installs `package@version` (a Go command's package path) as `binary` under
/// `<cache>/<dir>/`, unless it is there already; returns its path. `CGO_ENABLED=0`: the tools
/// are static and run anywhere, also inside an image. The error is what `go` printed.
pub(crate) fn go_install(
    package: &str,
    version: &str,
    dir: &str,
    binary: &str,
) -> Result<PathBuf, String> {
    // One install at a time per process even when tests ask concurrently.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let bin_dir = crate::cue_cli::cache_dir().join(dir);
    let bin = bin_dir.join(binary);
    if bin.is_file() {
        return Ok(bin);
    }
    let out = Command::new(std::env::var("GO").unwrap_or_else(|_| "go".into()))
        .args(["install", &format!("{package}@{version}")])
        .env("GOBIN", &bin_dir)
        .env("CGO_ENABLED", "0")
        .output()
        .map_err(|e| format!("cannot run go: {e}"))?;
    if !out.status.success() || !bin.is_file() {
        return Err(format!(
            "`go install {package}@{version}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(bin)
}
