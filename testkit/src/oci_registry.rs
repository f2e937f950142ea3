//! A real OCI registry on loopback (go-containerregistry's `registry` command, built from the Go
//! module proxy into a cache outside the clone the first time it is needed), and publishing a
//! platform module to it with the real `cue mod publish`.
//!
//! ```no_run
//! # fn f() -> Result<(), cuebe_testkit::oci_registry::RegistryError> {
//! use cuebe_testkit::oci_registry::{LocalRegistry, publish_module};
//! let registry = LocalRegistry::start()?;
//! let reference = publish_module(&registry, "cue/platform".as_ref(), "v1.0.0")?;
//! assert!(reference.starts_with("oci://127.0.0.1:"));
//! # Ok(()) }
//! ```
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The go-containerregistry version whose `registry` command is used.
pub const REGISTRY_VERSION: &str = "v0.22.1";

/// Why the registry could not be built, started or published to.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `go` could not be run, or `go install` failed.
    #[error("installing go-containerregistry's registry {REGISTRY_VERSION}: {0}")]
    Install(String),
    /// The registry did not start.
    #[error("starting the registry: {0}")]
    Start(String),
    /// `cue mod publish` failed.
    #[error("cue mod publish: {0}")]
    Publish(String),
}

/// Path to the `registry` binary, installing it on first use (a few seconds with a warm Go
/// module cache).
pub fn registry_binary() -> Result<PathBuf, RegistryError> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let bin_dir = crate::cue_cli::cache_dir().join(format!("registry-{REGISTRY_VERSION}"));
    let bin = bin_dir.join("registry");
    if bin.is_file() {
        return Ok(bin);
    }
    let out = Command::new(std::env::var("GO").unwrap_or_else(|_| "go".into()))
        .args([
            "install",
            &format!("github.com/google/go-containerregistry/cmd/registry@{REGISTRY_VERSION}"),
        ])
        .env("GOBIN", &bin_dir)
        .env("CGO_ENABLED", "0")
        .output()
        .map_err(|e| RegistryError::Install(format!("cannot run go: {e}")))?;
    if !out.status.success() || !bin.is_file() {
        return Err(RegistryError::Install(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(bin)
}

/// A registry process on 127.0.0.1, storing in memory; killed when dropped.
#[derive(Debug)]
pub struct LocalRegistry {
    child: Option<Child>,
    port: u16,
    /// Whether the standard library is published here already.
    standard_library: std::sync::Mutex<bool>,
}

impl LocalRegistry {
    /// Starts a registry on a port the kernel picks (no race with other processes).
    pub fn start() -> Result<Self, RegistryError> {
        let bin = registry_binary()?;
        let mut child = Command::new(bin)
            .args(["-port", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RegistryError::Start(e.to_string()))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| RegistryError::Start("no stderr".into()))?;
        // It logs "serving on port N" once listening, then one line per request: keep reading
        // (and dropping) so it never blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .split("serving on port ")
                    .nth(1)
                    .and_then(|p| p.trim().parse::<u16>().ok())
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(port) => Ok(Self {
                child: Some(child),
                port,
                standard_library: std::sync::Mutex::new(false),
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(RegistryError::Start(
                    "it did not report its port within 20 s".into(),
                ))
            }
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the registry (everything it held is gone: it stores in memory).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A copy of `module_dir` that `cue mod publish` accepts: its `cue.mod/module.cue` gets
/// `source: kind: "self"` when it has no `source` (publishing needs one; `self` needs no VCS).
/// The copy lives as long as the returned directory.
fn publishable_copy(module_dir: &Path) -> Result<(tempfile::TempDir, PathBuf), RegistryError> {
    let fail = |m: String| RegistryError::Publish(m);
    let work = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
    let copy = work.path().join("module");
    copy_dir(module_dir, &copy)
        .map_err(|e| fail(format!("copying {}: {e}", module_dir.display())))?;
    let module_file = copy.join("cue.mod/module.cue");
    let text = std::fs::read_to_string(&module_file).map_err(|e| fail(e.to_string()))?;
    if !text.contains("source:") {
        std::fs::write(&module_file, format!("{text}source: kind: \"self\"\n"))
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok((work, copy))
}

/// Publishes every version of cuebe's standard library the SDK ships ([`cuebe::stdlib`]) to
/// `registry` with the real `cue mod publish` (once per registry): what lets the `cue` CLI
/// resolve a platform module's `deps: "cuebe.dev/lib@v0"` from it, and publish such a module.
/// [`publish_module`] and [`write_module_layout`] call it for a module that depends on it.
///
/// ```no_run
/// # fn f() -> Result<(), cuebe_testkit::oci_registry::RegistryError> {
/// let registry = cuebe_testkit::oci_registry::LocalRegistry::start()?;
/// cuebe_testkit::oci_registry::publish_standard_library(&registry)?;
/// // CUE_REGISTRY=<registry.host()> cue export ./webservice … now resolves cuebe.dev/lib.
/// # Ok(()) }
/// ```
pub fn publish_standard_library(registry: &LocalRegistry) -> Result<(), RegistryError> {
    let fail = |m: String| RegistryError::Publish(m);
    let mut published = registry
        .standard_library
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *published {
        return Ok(());
    }
    let cue = crate::cue_cli::cue_binary().map_err(|e| fail(e.to_string()))?;
    for lib in cuebe::stdlib::versions() {
        let work = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
        let root = work.path().join("lib");
        lib.write_to(&root)
            .map_err(|e| fail(format!("writing the standard library: {e}")))?;
        let out = Command::new(&cue)
            .current_dir(&root)
            .args(["mod", "publish", lib.version])
            .env("CUE_REGISTRY", registry.host())
            .env("CUE_CACHE_DIR", work.path().join("cue-cache"))
            .output()
            .map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            return Err(fail(format!(
                "publishing {}@{}: {}",
                lib.module,
                lib.version,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    *published = true;
    Ok(())
}

/// Whether the module at `module_dir` depends on cuebe's standard library (its
/// `cue.mod/module.cue` names it in `deps`).
fn needs_standard_library(module_dir: &Path) -> bool {
    std::fs::read_to_string(module_dir.join("cue.mod/module.cue"))
        .is_ok_and(|text| text.contains(cuebe::stdlib::MODULE))
}

/// Publishes the CUE module at `module_dir` as `version` (e.g. `v1.0.0`) to `registry` with the
/// real `cue mod publish`, and returns the reference that pins it:
/// `oci://127.0.0.1:PORT/<module path without major version>@sha256:<manifest digest>`.
///
/// The module is copied first and, when its `cue.mod/module.cue` has no `source` field, given
/// `source: kind: "self"` (publishing needs one; `self` needs no VCS). A module that depends on
/// cuebe's standard library gets it published to the same registry first
/// ([`publish_standard_library`]): `cue mod publish` resolves every dependency.
pub fn publish_module(
    registry: &LocalRegistry,
    module_dir: &Path,
    version: &str,
) -> Result<String, RegistryError> {
    let fail = |m: String| RegistryError::Publish(m);
    if needs_standard_library(module_dir) {
        publish_standard_library(registry)?;
    }
    let cue = crate::cue_cli::cue_binary().map_err(|e| fail(e.to_string()))?;
    let (work, copy) = publishable_copy(module_dir)?;
    let run = |extra: &[&str]| {
        Command::new(&cue)
            .current_dir(&copy)
            .args(["mod", "publish", version])
            .args(extra)
            .env("CUE_REGISTRY", registry.host())
            .env("CUE_CACHE_DIR", work.path().join("cue-cache"))
            .output()
            .map_err(|e| fail(e.to_string()))
    };
    // --json describes the publish (reference and digest) without pushing; the digest of a
    // `source: self` module is a pure function of its files, so the push below matches it.
    let described = run(&["--json"])?;
    if !described.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&described.stderr).into_owned(),
        ));
    }
    let pushed = run(&[])?;
    if !pushed.status.success() {
        return Err(fail(String::from_utf8_lossy(&pushed.stderr).into_owned()));
    }
    let json: serde_json::Value = serde_json::from_slice(&described.stdout)
        .map_err(|e| fail(format!("unreadable --json output: {e}")))?;
    let reference = json
        .get("ref")
        .and_then(|r| r.as_str())
        .ok_or_else(|| fail("no ref in --json output".into()))?;
    // host/repo:tag@sha256:... → oci://host/repo@sha256:...
    let (name, digest) = reference
        .rsplit_once('@')
        .ok_or_else(|| fail(format!("no digest in {reference}")))?;
    let repo = name.rsplit_once(':').map_or(name, |(repo, _tag)| repo);
    Ok(format!("oci://{repo}@{digest}"))
}

/// Writes the CUE module at `module_dir` as `version` into a new OCI image layout at `out`
/// (which must not exist) with the real `cue mod publish VERSION --out`: what a platform team
/// vendors for an air-gapped cluster (`--vendored-modules`). Returns the manifest digest
/// (`sha256:…`), which is what `oci://REGISTRY/REPO@sha256:…` pins whatever the registry.
///
/// The module is given `source: kind: "self"` as in [`publish_module`], so the same files give
/// the same digest as a publish to a registry.
///
/// ```no_run
/// # fn f() -> Result<(), cuebe_testkit::oci_registry::RegistryError> {
/// let dir = tempfile::tempdir().map_err(|e| cuebe_testkit::oci_registry::RegistryError::Publish(e.to_string()))?;
/// let digest = cuebe_testkit::oci_registry::write_module_layout(
///     "cue/platform".as_ref(), "v1.0.0", &dir.path().join("platform-v1.0.0"))?;
/// assert!(digest.starts_with("sha256:"));
/// # Ok(()) }
/// ```
pub fn write_module_layout(
    module_dir: &Path,
    version: &str,
    out: &Path,
) -> Result<String, RegistryError> {
    let fail = |m: String| RegistryError::Publish(m);
    let cue = crate::cue_cli::cue_binary().map_err(|e| fail(e.to_string()))?;
    let (work, copy) = publishable_copy(module_dir)?;
    // --out writes nothing to a registry, but CUE still resolves the module's dependencies from
    // one: a registry holding the standard library when the module needs it, else one named
    // where nothing listens.
    let deps_registry = if needs_standard_library(module_dir) {
        let registry = LocalRegistry::start()?;
        publish_standard_library(&registry)?;
        Some(registry)
    } else {
        None
    };
    let registry_host = deps_registry
        .as_ref()
        .map_or_else(|| "127.0.0.1:1".to_string(), LocalRegistry::host);
    let written = Command::new(&cue)
        .current_dir(&copy)
        .args(["mod", "publish", version, "--out"])
        .arg(out)
        .env("CUE_REGISTRY", registry_host)
        .env("CUE_CACHE_DIR", work.path().join("cue-cache"))
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !written.status.success() {
        return Err(fail(String::from_utf8_lossy(&written.stderr).into_owned()));
    }
    let index: serde_json::Value = std::fs::read(out.join("index.json"))
        .map_err(|e| fail(format!("{}: {e}", out.display())))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| fail(e.to_string())))?;
    index
        .pointer("/manifests/0/digest")
        .and_then(|d| d.as_str())
        .map(str::to_string)
        .ok_or_else(|| fail(format!("{}: index.json lists no manifest", out.display())))
}

/// Copies every manifest and blob of the image layouts `from` into the layout `into` (creating
/// it), merging their `index.json` entries: several modules in one layout, as `oras copy
/// --to-oci-layout` or `skopeo copy` build one.
pub fn merge_layouts(from: &[&Path], into: &Path) -> std::io::Result<()> {
    let blobs = into.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs)?;
    std::fs::write(
        into.join("oci-layout"),
        br#"{"imageLayoutVersion": "1.0.0"}"#,
    )?;
    let mut manifests = Vec::new();
    for layout in from {
        for blob in std::fs::read_dir(layout.join("blobs").join("sha256"))? {
            let blob = blob?;
            std::fs::copy(blob.path(), blobs.join(blob.file_name()))?;
        }
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)
                .map_err(std::io::Error::other)?;
        if let Some(list) = index.get("manifests").and_then(|m| m.as_array()) {
            manifests.extend(list.iter().cloned());
        }
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    std::fs::write(
        into.join("index.json"),
        serde_json::to_vec_pretty(&index).map_err(std::io::Error::other)?,
    )
}

/// Copies a directory tree (the module fixtures the registry and the git server publish).
pub(crate) fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// What a [`TamperingRegistry`] corrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Every blob it serves (the module zip, `module.cue`, the config) has one byte flipped.
    Blobs,
    /// Every manifest it serves has one byte flipped.
    Manifests,
}

/// A registry in front of a [`LocalRegistry`] that serves what it serves, with one byte of
/// every blob (or manifest) flipped: content that does not match the digest it is asked for,
/// as a compromised registry or mirror would serve. Proves that fetched content is re-hashed.
/// Stopped when dropped.
///
/// ```no_run
/// # async fn f() -> Result<(), cuebe_testkit::oci_registry::RegistryError> {
/// use cuebe_testkit::oci_registry::{LocalRegistry, Tamper, TamperingRegistry};
/// let honest = LocalRegistry::start()?;
/// let evil = TamperingRegistry::start(&honest, Tamper::Blobs).await?;
/// // `oci://{evil.host()}/…@sha256:…` now serves wrong bytes for every digest.
/// # let _ = evil.host();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TamperingRegistry {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TamperingRegistry {
    /// Starts it on a port the kernel picks, forwarding to `upstream`.
    pub async fn start(upstream: &LocalRegistry, tamper: Tamper) -> Result<Self, RegistryError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| RegistryError::Start(e.to_string()))?;
        let port = listener
            .local_addr()
            .map_err(|e| RegistryError::Start(e.to_string()))?
            .port();
        let upstream = upstream.host();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        forward(upstream.clone(), tamper, request)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { port, task })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TamperingRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards one request to the honest registry and corrupts the answer when it is a blob (or a
/// manifest) served in full.
async fn forward(
    upstream: String,
    tamper: Tamper,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::{BodyExt, Full};
    let failed = |message: String| {
        let mut response = hyper::Response::new(Full::new(bytes::Bytes::from(message)));
        *response.status_mut() = http::StatusCode::BAD_GATEWAY;
        Ok(response)
    };
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let corrupt = request.method() == http::Method::GET
        && match tamper {
            Tamper::Blobs => path.contains("/blobs/sha256:"),
            Tamper::Manifests => path.contains("/manifests/"),
        };
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return failed("could not read the request".into());
    };
    let mut forwarded = hyper::Request::builder()
        .method(parts.method)
        .uri(format!("http://{upstream}{path}"));
    for (name, value) in parts
        .headers
        .iter()
        .filter(|(n, _)| *n != http::header::HOST)
    {
        forwarded = forwarded.header(name, value);
    }
    let Ok(forwarded) = forwarded.body(Full::new(body)) else {
        return failed("could not build the request".into());
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let response = match client.request(forwarded).await {
        Ok(r) => r,
        Err(e) => return failed(e.to_string()),
    };
    let (parts, body) = response.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return failed("could not read the registry's answer".into());
    };
    let mut bytes = body.to_vec();
    if corrupt
        && parts.status == http::StatusCode::OK
        && let Some(last) = bytes.last_mut()
    {
        // Same length, different content: only a hash can tell.
        *last ^= 0x01;
    }
    Ok(hyper::Response::from_parts(
        parts,
        Full::new(bytes::Bytes::from(bytes)),
    ))
}
