//! The `sharder` of [kubernetes-controller-sharding](https://github.com/timebertt/kubernetes-controller-sharding),
//! built from its Go module at a pinned version into the testkit's cache
//! (`~/.cache/cuebe/sharder-VERSION/sharder`, with its `ControllerRing` CRD next to it) the first
//! time it is needed, and run as a child process against a [`TestCluster`]'s kubeconfig: it
//! assigns the objects of a `ControllerRing` to the shards whose Leases it sees, through its
//! mutating webhook and its controller.
//!
//! Run as its host-mode configuration runs it, except: leader election off (one sharder), its
//! health probe on a free loopback port, metrics off, a resync every 30 s, and a serving
//! certificate from a CA of its own (the webhook configuration it writes carries that CA). Its
//! webhook server always listens on port 9443 (the sharder has no setting for it), so one
//! sharder runs on a machine at a time: [`Sharder::start`] waits for the port.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use cuebe_testkit::cluster::{ClusterOptions, TestCluster};
//! use cuebe_testkit::sharder::Sharder;
//!
//! let cluster = TestCluster::start(ClusterOptions::default()).await?;
//! let sharder = Sharder::start(&cluster).await?;
//! let ring = serde_json::json!({
//!     "apiVersion": "sharding.timebertt.dev/v1alpha1",
//!     "kind": "ControllerRing",
//!     "metadata": {"name": "webservices"},
//!     "spec": {"resources": [{"group": "platform.example.com", "resource": "webservices"}]},
//! });
//! sharder.apply_ring(&cluster.client(), &ring).await?;
//! // ... start the shards (replicas of an operator), then wait for them:
//! sharder.wait_for_shards(&cluster.client(), "webservices", 3, std::time::Duration::from_secs(60)).await?;
//! # Ok(()) }
//! ```
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};

use crate::cluster::TestCluster;

/// The Go module the sharder is built from.
pub const SHARDER_MODULE: &str = "github.com/timebertt/kubernetes-controller-sharding";

/// The version built. (The module proxy lists no versions of this module, but serves this one.)
pub const SHARDER_VERSION: &str = "v0.11.0";

/// The port the sharder's webhook server listens on, on every interface (not configurable).
pub const WEBHOOK_PORT: u16 = 9443;

/// The `ControllerRing` CRD (path inside the module).
const RING_CRD: &str = "config/crds/sharding.timebertt.dev_controllerrings.yaml";

/// Why the sharder could not be built, started or asked.
#[derive(Debug, thiserror::Error)]
pub enum SharderError {
    /// Building it or fetching its module failed (the message is what `go` said).
    #[error("building the sharder {SHARDER_VERSION}: {0}")]
    Build(String),
    /// Installing its CRD failed.
    #[error("installing the ControllerRing CRD: {0}")]
    Crd(#[source] crate::cluster::ClusterError),
    /// It could not be started, or was not ready in time (the message has its log).
    #[error("starting the sharder: {0}")]
    Start(String),
    /// A `ControllerRing` could not be applied or did not become what was awaited.
    #[error("ControllerRing {name}: {message}")]
    Ring {
        /// Its name.
        name: String,
        /// What went wrong.
        message: String,
    },
}

/// Path to the sharder [`SHARDER_VERSION`], building it on first use. Built in a scratch
/// module: `go install …@version` asks the proxy for the module's version list (to warn of a
/// deprecation), which this proxy refuses.
pub fn sharder_binary() -> Result<PathBuf, SharderError> {
    crate::go_install::go_build_in_module(
        &format!("{SHARDER_MODULE}/cmd/sharder"),
        SHARDER_VERSION,
        &[],
        &format!("sharder-{SHARDER_VERSION}"),
        "sharder",
    )
    .map_err(SharderError::Build)
}

/// The `ControllerRing` CRD file, copied from the module into the cache on first use.
pub fn controller_ring_crd() -> Result<PathBuf, SharderError> {
    static COPY: Mutex<()> = Mutex::new(());
    let _guard = COPY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let file = crate::cue_cli::cache_dir()
        .join(format!("sharder-{SHARDER_VERSION}"))
        .join("controllerrings.yaml");
    if file.is_file() {
        return Ok(file);
    }
    let module = crate::go_install::go_module_dir(SHARDER_MODULE, SHARDER_VERSION)
        .map_err(SharderError::Build)?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| SharderError::Build(format!("{}: {e}", dir.display())))?;
    }
    let partial = file.with_extension("partial");
    std::fs::copy(module.join(RING_CRD), &partial)
        .and_then(|_| std::fs::rename(&partial, &file))
        .map_err(|e| SharderError::Build(format!("copying {RING_CRD}: {e}")))?;
    Ok(file)
}

/// `sharding.timebertt.dev/v1alpha1` `ControllerRing` (cluster-scoped).
pub fn controller_ring() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("sharding.timebertt.dev", "v1alpha1", "ControllerRing"),
        "controllerrings",
    )
}

/// A running sharder; killed when dropped.
#[derive(Debug)]
pub struct Sharder {
    child: Mutex<Child>,
    log: PathBuf,
    // Holds the certificates, the configuration and the log.
    _dir: tempfile::TempDir,
}

impl Sharder {
    /// Builds the sharder if needed, installs the `ControllerRing` CRD into `cluster`, and
    /// starts it against the cluster's kubeconfig (admin credentials) once port
    /// [`WEBHOOK_PORT`] is free; returns once its readiness probe answers.
    pub async fn start(cluster: &TestCluster) -> Result<Self, SharderError> {
        let (binary, crd) =
            tokio::task::spawn_blocking(|| Ok((sharder_binary()?, controller_ring_crd()?)))
                .await
                .map_err(|e| SharderError::Build(format!("the build task: {e}")))??;
        cluster
            .install_crds(&[crd], Instant::now() + Duration::from_secs(30))
            .await
            .map_err(SharderError::Crd)?;
        let start = |e: &dyn std::fmt::Display| SharderError::Start(e.to_string());
        let dir = tempfile::Builder::new()
            .prefix("cuebe-sharder-")
            .tempdir()
            .map_err(|e| start(&e))?;
        // A CA of its own and a serving certificate for localhost and 127.0.0.1.
        let pki = crate::cluster::pki::Pki::generate(dir.path()).map_err(|e| start(&e))?;
        let ca = std::fs::read(&pki.ca_cert).map_err(|e| start(&e))?;
        let probe_port = crate::cluster::free_port().map_err(|e| start(&e))?;
        let config = serde_json::json!({
            "apiVersion": "config.sharding.timebertt.dev/v1alpha1",
            "kind": "SharderConfig",
            "leaderElection": {"leaderElect": false},
            "health": {"bindAddress": format!("127.0.0.1:{probe_port}")},
            "metrics": {"bindAddress": "0"},
            "controller": {"sharder": {"syncPeriod": "30s"}},
            "webhook": {
                "server": {
                    "certDir": dir.path(),
                    "certName": "apiserver.crt",
                    "keyName": "apiserver.key",
                },
                "config": {
                    "clientConfig": {
                        "url": format!("https://127.0.0.1:{WEBHOOK_PORT}/"),
                        "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca),
                    },
                },
            },
        });
        let config_file = dir.path().join("config.json");
        std::fs::write(&config_file, config.to_string()).map_err(|e| start(&e))?;
        wait_for_port(WEBHOOK_PORT, Duration::from_secs(300)).await?;
        let log = dir.path().join("sharder.log");
        let out = std::fs::File::create(&log).map_err(|e| start(&e))?;
        let err = out.try_clone().map_err(|e| start(&e))?;
        let mut command = Command::new(&binary);
        command
            .arg(format!("--config={}", config_file.display()))
            .arg("--zap-log-level=info")
            // The sharder reads no --kubeconfig flag, only the variable.
            .env("KUBECONFIG", cluster.kubeconfig())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = crate::cluster::spawn(command)
            .map_err(|e| SharderError::Start(format!("{}: {e}", binary.display())))?;
        let sharder = Self {
            child: Mutex::new(child),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if crate::kro::http_get(probe_port, "/readyz").await.is_ok() {
                return Ok(sharder);
            }
            if let Some(status) = sharder.exited() {
                return Err(SharderError::Start(format!(
                    "exited with {status}; last lines of its log:\n{}",
                    sharder.log_tail(40)
                )));
            }
            if Instant::now() > deadline {
                return Err(SharderError::Start(format!(
                    "not ready after 60 s; last lines of its log:\n{}",
                    sharder.log_tail(40)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Applies a `ControllerRing` (server-side apply) and waits until the sharder has
    /// reconciled it (`Ready=True` for its generation): its webhook configuration is written.
    pub async fn apply_ring(
        &self,
        client: &Client,
        ring: &serde_json::Value,
    ) -> Result<(), SharderError> {
        let name = ring
            .pointer("/metadata/name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string();
        let failed = |message: String| SharderError::Ring {
            name: name.clone(),
            message,
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &controller_ring());
        let applied = api
            .patch(
                &name,
                &PatchParams::apply("cuebe-testkit").force(),
                &Patch::Apply(ring),
            )
            .await
            .map_err(|e| failed(format!("applying it: {e}")))?;
        let generation = applied.metadata.generation;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = api
                .get(&name)
                .await
                .ok()
                .and_then(|o| o.data.get("status").cloned())
                .unwrap_or_default();
            let ready = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if ready && status["observedGeneration"].as_i64() == generation {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(failed(format!(
                    "not Ready after 60 s (status: {status}); last lines of the sharder's log:\n{}",
                    self.log_tail(30)
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the ring `name` counts `shards` available shards.
    pub async fn wait_for_shards(
        &self,
        client: &Client,
        name: &str,
        shards: i64,
        timeout: Duration,
    ) -> Result<(), SharderError> {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &controller_ring());
        let deadline = Instant::now() + timeout;
        loop {
            let available = api.get(name).await.ok().and_then(|o| {
                o.data
                    .pointer("/status/availableShards")
                    .and_then(serde_json::Value::as_i64)
            });
            if available == Some(shards) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(SharderError::Ring {
                    name: name.to_string(),
                    message: format!(
                        "{available:?} available shards after {timeout:?}, not {shards}; last lines of the sharder's log:\n{}",
                        self.log_tail(30)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        crate::cluster::tail(&self.log, n)
    }

    /// How it exited, if it did.
    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .try_wait()
            .ok()
            .flatten()
    }
}

impl Drop for Sharder {
    fn drop(&mut self) {
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Waits until nothing listens on `port` (another test's sharder is done with it).
async fn wait_for_port(port: u16, timeout: Duration) -> Result<(), SharderError> {
    let deadline = Instant::now() + timeout;
    loop {
        match std::net::TcpListener::bind(("0.0.0.0", port)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(SharderError::Start(format!(
                    "port {port} (the sharder's webhook) still taken after {timeout:?}: {e}"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
