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

/// Builds `package@version` (a Go command's package path) as `binary` under `<cache>/<dir>/`,
/// unless it is there already, from a scratch module that requires it and repeats its module's
/// `replaces` (`old=new@version`): for a module whose go.mod has replace directives, which
/// `go install pkg@version` refuses. The error is what `go` printed.
pub(crate) fn go_build_in_module(
    package: &str,
    version: &str,
    replaces: &[&str],
    dir: &str,
    binary: &str,
) -> Result<PathBuf, String> {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = BUILD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let bin = crate::cue_cli::cache_dir().join(dir).join(binary);
    if bin.is_file() {
        return Ok(bin);
    }
    let scratch = tempfile::tempdir().map_err(|e| format!("a scratch module: {e}"))?;
    let go = std::env::var("GO").unwrap_or_else(|_| "go".into());
    let run = |args: &[&str]| -> Result<(), String> {
        let out = Command::new(&go)
            .args(args)
            .current_dir(scratch.path())
            .env("CGO_ENABLED", "0")
            .output()
            .map_err(|e| format!("cannot run go: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`go {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(&["mod", "init", "cuebe.invalid/build"])?;
    for replace in replaces {
        run(&["mod", "edit", &format!("-replace={replace}")])?;
    }
    run(&["get", &format!("{package}@{version}")])?;
    let out = bin.display().to_string();
    run(&["build", "-o", &out, package])?;
    if !bin.is_file() {
        return Err(format!("`go build {package}` wrote no {out}"));
    }
    Ok(bin)
}

/// The directory of `module@version` in the Go module cache (`go mod download -json`, run
/// outside any module so only that module is fetched), to read files it ships that are not Go
/// code (CRDs, say). The error is what `go` printed.
pub(crate) fn go_module_dir(module: &str, version: &str) -> Result<PathBuf, String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("a scratch directory: {e}"))?;
    let out = Command::new(std::env::var("GO").unwrap_or_else(|_| "go".into()))
        .args(["mod", "download", "-json", &format!("{module}@{version}")])
        .current_dir(scratch.path())
        // Outside a module whatever GOFLAGS or a go.work up the tree say.
        .env("GO111MODULE", "on")
        .env("GOWORK", "off")
        .output()
        .map_err(|e| format!("cannot run go: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`go mod download -json {module}@{version}` failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("`go mod download -json {module}@{version}` printed no JSON: {e}"))?;
    answer
        .get("Dir")
        .and_then(serde_json::Value::as_str)
        .map(PathBuf::from)
        .filter(|dir| dir.is_dir())
        .ok_or_else(|| {
            format!("`go mod download -json {module}@{version}` named no directory: {answer}")
        })
}
