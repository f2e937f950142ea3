//! [kro](https://kro.run), the Kube Resource Orchestrator, as a peer to measure cuebe against:
//! its controller built from its Go module at a pinned version into the testkit's cache
//! (`~/.cache/cuebe/kro-VERSION/controller`, with its CRDs next to it) the first time it is
//! needed — about two minutes on two cores with a warm Go module cache, instant after that — and
//! run as a child process against a [`TestCluster`]'s kubeconfig.
//!
//! It runs as kro's Helm chart runs it (log level info, no development logging), except that
//! leader election is off (one replica, and no lease renewals among the writes a bench counts)
//! and its metrics and health probes listen on free loopback ports. [`KroOptions::concurrency`]
//! is `--dynamic-controller-concurrent-reconciles`, the knob a user raises for many instances
//! (kro's default is 1).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use cuebe_testkit::cluster::{ClusterOptions, TestCluster};
//! use cuebe_testkit::kro::{Kro, KroOptions};
//!
//! let cluster = TestCluster::start(ClusterOptions::default()).await?;
//! let kro = Kro::start(&cluster, KroOptions { concurrency: 16, ..KroOptions::default() }).await?;
//! let rgd: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string("rgd.yaml")?)?;
//! kro.apply_resource_graph_definition(&cluster.client(), &rgd, Duration::from_secs(60)).await?;
//! // ... create instances of the kind it defines, then:
//! let requests = kro.requests_by_method().await?; // {"GET": 120, "PATCH": 40, ...}
//! let rss_kib = kro.rss_kib();
//! # Ok(()) }
//! ```
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};

use crate::cluster::TestCluster;

/// The Go module kro's controller is built from.
pub const KRO_MODULE: &str = "github.com/kubernetes-sigs/kro";

/// The kro version built (its go.mod needs Go 1.26).
pub const KRO_VERSION: &str = "v0.9.4";

/// kro's own CRDs, as its Helm chart ships them (paths inside the module).
const KRO_CRDS: [&str; 2] = [
    "helm/crds/kro.run_resourcegraphdefinitions.yaml",
    "helm/crds/internal.kro.run_graphrevisions.yaml",
];

/// Why kro could not be built, started or asked.
#[derive(Debug, thiserror::Error)]
pub enum KroError {
    /// Building the controller or fetching its module failed (the message is what `go` said).
    #[error("building kro {KRO_VERSION}: {0}")]
    Build(String),
    /// Installing kro's CRDs into the cluster failed.
    #[error("installing kro's CRDs: {0}")]
    Crds(#[source] crate::cluster::ClusterError),
    /// The controller could not be started, or was not ready in time (the message has its log).
    #[error("starting kro: {0}")]
    Start(String),
    /// kro refused the ResourceGraphDefinition, or did not accept it in time.
    #[error("ResourceGraphDefinition {name}: {message}")]
    ResourceGraphDefinition {
        /// Its name.
        name: String,
        /// Why (kro's conditions when it said something).
        message: String,
    },
    /// kro's metrics endpoint did not answer as expected.
    #[error("kro metrics: {0}")]
    Metrics(String),
}

/// Path to kro's controller [`KRO_VERSION`], building it on first use (`go install`, static).
pub fn kro_binary() -> Result<PathBuf, KroError> {
    crate::go_install::go_install(
        &format!("{KRO_MODULE}/cmd/controller"),
        KRO_VERSION,
        &cache_subdir(),
        "controller",
    )
    .map_err(KroError::Build)
}

/// kro's CRD files (ResourceGraphDefinition, GraphRevision), copied from its module into the
/// cache next to the binary on first use.
pub fn kro_crd_files() -> Result<Vec<PathBuf>, KroError> {
    // One copy at a time per process even when tests ask concurrently.
    static COPY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = COPY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = crate::cue_cli::cache_dir()
        .join(cache_subdir())
        .join("crds");
    let files: Vec<PathBuf> = KRO_CRDS
        .iter()
        .map(|path| dir.join(file_name(path)))
        .collect();
    if files.iter().all(|f| f.is_file()) {
        return Ok(files);
    }
    let module =
        crate::go_install::go_module_dir(KRO_MODULE, KRO_VERSION).map_err(KroError::Build)?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| KroError::Build(format!("{}: {e}", dir.display())))?;
    for (path, file) in KRO_CRDS.iter().zip(&files) {
        let from = module.join(path);
        // Through a temporary name: a reader never sees half a file.
        let partial = file.with_extension("partial");
        std::fs::copy(&from, &partial)
            .and_then(|_| std::fs::rename(&partial, file))
            .map_err(|e| KroError::Build(format!("copying {}: {e}", from.display())))?;
    }
    Ok(files)
}

fn cache_subdir() -> String {
    format!("kro-{KRO_VERSION}")
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// How to run kro.
#[derive(Debug, Clone)]
pub struct KroOptions {
    /// `--dynamic-controller-concurrent-reconciles`: instances reconciled in parallel
    /// (kro's default, and its Helm chart's, is 1).
    pub concurrency: usize,
    /// More arguments, appended last (e.g. `--client-qps=200`).
    pub extra_args: Vec<String>,
    /// How long kro may take to answer its readiness probe.
    pub start_timeout: Duration,
}

impl Default for KroOptions {
    fn default() -> Self {
        Self {
            concurrency: 1,
            extra_args: Vec::new(),
            start_timeout: Duration::from_secs(60),
        }
    }
}

/// A running kro controller; killed when dropped.
#[derive(Debug)]
pub struct Kro {
    child: std::sync::Mutex<Child>,
    pid: u32,
    metrics_port: u16,
    log: PathBuf,
    // Holds the log file.
    _dir: tempfile::TempDir,
}

impl Kro {
    /// Builds kro if needed, installs its CRDs into `cluster`, and starts it against the
    /// cluster's kubeconfig (admin credentials); returns once its readiness probe answers.
    pub async fn start(cluster: &TestCluster, options: KroOptions) -> Result<Self, KroError> {
        let (binary, crds) = tokio::task::spawn_blocking(|| Ok((kro_binary()?, kro_crd_files()?)))
            .await
            .map_err(|e| KroError::Build(format!("the build task: {e}")))??;
        cluster
            .install_crds(&crds, Instant::now() + Duration::from_secs(30))
            .await
            .map_err(KroError::Crds)?;
        let port = || {
            crate::cluster::free_port().map_err(|e| KroError::Start(format!("no free port: {e}")))
        };
        let (metrics_port, probe_port) = (port()?, port()?);
        let dir = tempfile::Builder::new()
            .prefix("cuebe-kro-")
            .tempdir()
            .map_err(|e| KroError::Start(e.to_string()))?;
        let log = dir.path().join("kro.log");
        let out = std::fs::File::create(&log).map_err(|e| KroError::Start(e.to_string()))?;
        let err = out
            .try_clone()
            .map_err(|e| KroError::Start(e.to_string()))?;
        let mut command = Command::new(&binary);
        command
            .arg(format!("--kubeconfig={}", cluster.kubeconfig().display()))
            .arg(format!("--metrics-bind-address=127.0.0.1:{metrics_port}"))
            .arg(format!(
                "--health-probe-bind-address=127.0.0.1:{probe_port}"
            ))
            .arg(format!(
                "--dynamic-controller-concurrent-reconciles={}",
                options.concurrency
            ))
            // As kro's Helm chart runs it (config.logLevel, config.development).
            .args(["--zap-log-level=info", "--zap-devel=false"])
            .args(&options.extra_args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // Spawned as the cluster's components are: it dies with this process even on a kill.
        let child = crate::cluster::spawn(command)
            .map_err(|e| KroError::Start(format!("{}: {e}", binary.display())))?;
        let kro = Self {
            pid: child.id(),
            child: std::sync::Mutex::new(child),
            metrics_port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + options.start_timeout;
        loop {
            if http_get(probe_port, "/readyz").await.is_ok() {
                return Ok(kro);
            }
            if let Some(status) = kro.exited() {
                return Err(KroError::Start(format!(
                    "exited with {status}; last lines of its log:\n{}",
                    kro.log_tail(40)
                )));
            }
            if Instant::now() > deadline {
                return Err(KroError::Start(format!(
                    "not ready after {:?}; last lines of its log:\n{}",
                    options.start_timeout,
                    kro.log_tail(40)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The controller's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its resident memory now (`VmRSS`), KiB; `None` once it is gone.
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmRSS")
    }

    /// Its peak resident memory (`VmHWM`), KiB; `None` once it is gone.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmHWM")
    }

    /// Applies a ResourceGraphDefinition (server-side apply, as `kubectl apply --server-side`
    /// would) and waits until kro reports it Ready: its CRD is served and its instances are
    /// reconciled. Fails at once, with kro's message, when kro does not accept the graph.
    pub async fn apply_resource_graph_definition(
        &self,
        client: &Client,
        rgd: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(), KroError> {
        let name = rgd
            .pointer("/metadata/name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string();
        let refused = |message: String| KroError::ResourceGraphDefinition {
            name: name.clone(),
            message,
        };
        if name.is_empty() {
            return Err(refused("metadata.name is required".into()));
        }
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource_graph_definition());
        api.patch(
            &name,
            &PatchParams::apply("cuebe-testkit").force(),
            &Patch::Apply(rgd),
        )
        .await
        .map_err(|e| refused(format!("applying it: {e}")))?;
        let deadline = Instant::now() + timeout;
        loop {
            let status = api
                .get(&name)
                .await
                .ok()
                .and_then(|o| o.data.get("status").cloned())
                .unwrap_or_default();
            let condition = |kind: &str| {
                status
                    .get("conditions")
                    .and_then(serde_json::Value::as_array)
                    .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
                    .cloned()
            };
            if condition("Ready").is_some_and(|c| c["status"] == "True") {
                return Ok(());
            }
            if let Some(c) = condition("GraphAccepted").filter(|c| c["status"] == "False") {
                return Err(refused(format!(
                    "kro did not accept the graph: {}: {}",
                    c["reason"].as_str().unwrap_or_default(),
                    c["message"].as_str().unwrap_or_default()
                )));
            }
            if let Some(exit) = self.exited() {
                return Err(refused(format!(
                    "kro exited with {exit}; last lines of its log:\n{}",
                    self.log_tail(40)
                )));
            }
            if Instant::now() > deadline {
                return Err(refused(format!(
                    "not Ready after {timeout:?}; its status: {status}; last lines of kro's log:\n{}",
                    self.log_tail(20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// kro's Prometheus metrics, as text.
    pub async fn metrics(&self) -> Result<String, KroError> {
        http_get(self.metrics_port, "/metrics")
            .await
            .map_err(KroError::Metrics)
    }

    /// Requests kro has sent to the API server since it started, by HTTP method (client-go's
    /// `rest_client_requests_total`, summed over status codes and hosts; a watch counts as a
    /// GET).
    pub async fn requests_by_method(&self) -> Result<BTreeMap<String, u64>, KroError> {
        let text = self.metrics().await?;
        let counts = requests_by_method(&text);
        if counts.is_empty() {
            return Err(KroError::Metrics(
                "no rest_client_requests_total samples (is this kro's metrics endpoint?)".into(),
            ));
        }
        Ok(counts)
    }

    /// Its log so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

impl Drop for Kro {
    fn drop(&mut self) {
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `kro.run/v1alpha1` `ResourceGraphDefinition` (cluster-scoped).
fn resource_graph_definition() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kro.run", "v1alpha1", "ResourceGraphDefinition"),
        "resourcegraphdefinitions",
    )
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Sums `rest_client_requests_total` samples of a Prometheus text exposition by their `method`
/// label.
///
/// ```
/// let text = "# TYPE rest_client_requests_total counter\n\
///     rest_client_requests_total{code=\"200\",host=\"127.0.0.1:6443\",method=\"GET\"} 12\n\
///     rest_client_requests_total{code=\"404\",host=\"127.0.0.1:6443\",method=\"GET\"} 3\n\
///     rest_client_requests_total{code=\"201\",host=\"127.0.0.1:6443\",method=\"PATCH\"} 4\n";
/// let counts = cuebe_testkit::kro::requests_by_method(text);
/// assert_eq!(counts["GET"], 15);
/// assert_eq!(counts["PATCH"], 4);
/// ```
pub fn requests_by_method(metrics: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for s in crate::metrics::samples(metrics, "rest_client_requests_total") {
        if let Some(method) = s.label("method") {
            *counts.entry(method.to_string()).or_insert(0) += s.value as u64;
        }
    }
    counts
}

/// GET `http://127.0.0.1:PORT/PATH`; the body when the status is 2xx.
pub(crate) async fn http_get(port: u16, path: &str) -> Result<String, String> {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://127.0.0.1:{port}{path}")
        .parse()
        .map_err(|e| format!("{path}: {e}"))?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
        .await
        .map_err(|_| format!("GET {path}: no answer in 10 s"))?
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?
        .to_bytes();
    let body = String::from_utf8_lossy(&bytes).into_owned();
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("GET {path}: {status}: {body}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_summed_by_method_over_codes_and_hosts() {
        let text = "# HELP rest_client_requests_total Number of HTTP requests\n\
            # TYPE rest_client_requests_total counter\n\
            rest_client_requests_total{code=\"200\",host=\"127.0.0.1:1\",method=\"GET\"} 7\n\
            rest_client_requests_total{code=\"200\",host=\"127.0.0.1:2\",method=\"GET\"} 1.5e+01\n\
            rest_client_requests_total{code=\"409\",host=\"127.0.0.1:1\",method=\"PATCH\"} 2\n\
            rest_client_request_duration_seconds_count{host=\"x\",verb=\"GET\"} 99\n\
            rest_client_requests_total{code=\"200\"} 5\n";
        let counts = requests_by_method(text);
        assert_eq!(
            counts,
            BTreeMap::from([("GET".to_string(), 22), ("PATCH".to_string(), 2)])
        );
    }

    #[test]
    fn proc_status_fields_are_read_in_kib() {
        let rss = proc_status_kib(std::process::id(), "VmRSS");
        assert!(rss.is_some_and(|kib| kib > 0), "{rss:?}");
        assert_eq!(proc_status_kib(std::process::id(), "NoSuchField"), None);
    }
}
