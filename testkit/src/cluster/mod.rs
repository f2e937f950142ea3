//! A real Kubernetes control plane on loopback, for tests and for `dev`.
//!
//! Owns: starting etcd, kube-apiserver and (optionally) kube-controller-manager, kube-scheduler
//! and kwok from the pinned binaries that `testkit/controlplane/build.sh` builds; the certificates
//! and kubeconfig; installing CRDs; and stopping every process.
//!
//! Workflow of [`TestCluster::start`]:
//! 1. find the binaries (`CUEBE_CONTROLPLANE_BIN`, or build them: cached after the first time).
//!    Building is not bounded by [`ClusterOptions::start_timeout`], which starts counting after it;
//! 2. generate a CA, serving and admin certificates and a service-account key;
//! 3. start etcd, then kube-apiserver (RBAC on), and wait for `/readyz`;
//! 4. with controllers: start kube-controller-manager (garbage collector, deployment, replicaset,
//!    statefulset, daemonset, job, cronjob, namespace, service-account and a few more: every kind
//!    cuebe judges by its status has its controller), kube-scheduler and kwok, create a Node that
//!    kwok manages, and wait until it is Ready;
//! 5. install the CRDs asked for and wait until they are Established.
//!
//! Every component is given loopback ports picked just before it starts. A picked port can be
//! taken by another process before the component binds it, so each component must be seen
//! listening on its ports before the next step; one that failed with "address already in use" is
//! restarted on new ports (a few times, logged at warn). A component starts only once everything
//! it connects to listens, so a restart never strands a dependent on an old port (the kubeconfig
//! is rewritten when kube-apiserver moves, before anything reads it).
//!
//! Safety rules:
//! - every process is started with `PR_SET_PDEATHSIG`, from a thread that lives as long as the
//!   test process, so no component outlives the process that started it, even on a panic or kill;
//! - [`Drop`] stops every component (SIGTERM, then SIGKILL) and removes the working directory
//!   unless `CUEBE_KEEP_CLUSTER=1`;
//! - a component that exits is named, with the tail of its log, the next time the cluster is
//!   checked ([`TestCluster::check_alive`]) and in every start-up error.
pub mod ack;
mod binaries;
pub(crate) mod pki;
mod ports;

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub use binaries::{BinariesError, controlplane_bin, controlplane_bin_in};
pub use pki::Pki;
pub use ports::{PORT_NAMES, PortPicker, free_port};

/// Why the cluster could not start or be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The control plane binaries are missing and could not be built.
    #[error("control plane binaries unavailable: {0}")]
    Binaries(#[source] BinariesError),
    /// A background task of the start-up failed (it panicked or was cancelled).
    #[error("{what}: {source}")]
    Task {
        /// What the task was doing.
        what: String,
        /// The error.
        source: tokio::task::JoinError,
    },
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// Certificate generation failed (should never happen).
    #[error("generating certificates: {0}")]
    Pki(String),
    /// A component could not bind its ports however often they were picked again.
    #[error(
        "{component} could not bind its ports: another process had one of them at each of its {attempts} starts; last lines of its log ({log}):\n{tail}"
    )]
    PortsTaken {
        /// Which component.
        component: String,
        /// How many times it was started.
        attempts: u32,
        /// Path of its log.
        log: String,
        /// The last lines of the log.
        tail: String,
    },
    /// A component that this cluster never started (say kube-scheduler, with
    /// [`ClusterOptions::api_only`]) was asked to stop or start.
    #[error("{component} was not started with this cluster")]
    NotStarted {
        /// Which component.
        component: String,
    },
    /// A component exited. Its log tail is included.
    #[error("{component} exited ({status}); last lines of its log ({log}):\n{tail}")]
    ComponentDied {
        /// Which component.
        component: String,
        /// Its exit status.
        status: String,
        /// Path of its log.
        log: String,
        /// The last lines of the log.
        tail: String,
    },
    /// Something did not become ready in time.
    #[error("timed out after {after:?} waiting for {what}{}", tails.as_deref().map(|t| format!("\n{t}")).unwrap_or_default())]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
        /// Log tails of the components involved.
        tails: Option<String>,
    },
    /// A Kubernetes API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The error.
        source: kube::Error,
    },
    /// The generated kubeconfig could not be loaded (should never happen).
    #[error("kubeconfig {path}: {message}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A CRD file could not be read or parsed.
    #[error("CRD {path}: {message}")]
    Crd {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Called with the kubeconfig path as soon as the API server answers `/readyz`.
pub type ApiReadyHook = std::sync::Arc<dyn Fn(&Path) + Send + Sync>;

/// What to start.
#[derive(Clone)]
pub struct ClusterOptions {
    /// Start kube-controller-manager, kube-scheduler and kwok (so Deployments become Available
    /// and the garbage collector works). Without them only etcd and kube-apiserver run.
    pub controllers: bool,
    /// CRD files (YAML, one or more documents each) to install and wait for.
    pub crds: Vec<PathBuf>,
    /// How long starting the processes may take before it fails. It counts from when the
    /// binaries are there: a first build of the control plane (about half an hour on 2 cores) is
    /// not part of it.
    pub start_timeout: Duration,
    /// Told the kubeconfig path as soon as the API server is ready, before the controllers and
    /// CRDs (so `dev` can print it early).
    pub on_api_ready: Option<ApiReadyHook>,
    /// Where to find or build the binaries: `None` for [`controlplane_bin`]
    /// (`CUEBE_CONTROLPLANE_BIN`, else the default cache), `Some(dir)` for
    /// [`controlplane_bin_in`]`(dir)` (a cache directory as `CUEBE_CACHE_DIR` would name it).
    pub cache_dir: Option<PathBuf>,
    /// Picks each listener's loopback port; `None` for [`free_port`]. Tests hand out a port they
    /// hold to check that a component whose port was taken is restarted on another.
    pub port_picker: Option<PortPicker>,
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("controllers", &self.controllers)
            .field("crds", &self.crds)
            .field("start_timeout", &self.start_timeout)
            .field("cache_dir", &self.cache_dir)
            .field("port_picker", &self.port_picker.as_ref().map(|_| "custom"))
            .finish_non_exhaustive()
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            controllers: true,
            crds: Vec::new(),
            start_timeout: Duration::from_secs(90),
            on_api_ready: None,
            cache_dir: None,
            port_picker: None,
        }
    }
}

impl ClusterOptions {
    /// Only etcd and kube-apiserver.
    pub fn api_only() -> Self {
        Self {
            controllers: false,
            ..Self::default()
        }
    }

    /// Adds CRD files.
    pub fn with_crds(mut self, crds: impl IntoIterator<Item = PathBuf>) -> Self {
        self.crds.extend(crds);
        self
    }
}

/// The CRD files in a directory, sorted.
pub fn crd_files(dir: impl AsRef<Path>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.as_ref())
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// `shared/` next to the repository (the ACK and Gateway API CRDs live there).
pub fn shared_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CUEBE_SHARED_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// The ACK IAM CRDs (`Role`, `Policy`, ...).
pub fn ack_iam_crds() -> Vec<PathBuf> {
    crd_files(shared_dir().join("crds/ack-iam"))
}

/// The Gateway API standard-channel CRDs.
pub fn gateway_api_crds() -> Vec<PathBuf> {
    crd_files(shared_dir().join("crds/gateway-api"))
}

/// One process of the control plane, in start order. A test stops and starts one with
/// [`TestCluster::stop_component`], [`TestCluster::start_component`] and
/// [`TestCluster::restart_component`].
///
/// ```
/// use cuebe_testkit::cluster::Component;
/// assert_eq!(Component::ApiServer.name(), "kube-apiserver");
/// assert_eq!(Component::ALL.len(), 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// etcd, the store (its data directory is kept across a restart).
    Etcd,
    /// kube-apiserver.
    ApiServer,
    /// kube-controller-manager (only with [`ClusterOptions::controllers`]).
    ControllerManager,
    /// kube-scheduler (only with [`ClusterOptions::controllers`]).
    Scheduler,
    /// kwok, which plays the kubelet of the fake Node (only with [`ClusterOptions::controllers`]).
    Kwok,
}

impl Component {
    /// Every component, in start order.
    ///
    /// ```
    /// use cuebe_testkit::cluster::Component;
    /// assert_eq!(Component::ALL.first(), Some(&Component::Etcd));
    /// ```
    pub const ALL: [Component; 5] = [
        Component::Etcd,
        Component::ApiServer,
        Component::ControllerManager,
        Component::Scheduler,
        Component::Kwok,
    ];

    /// The binary's name, which also names its log (`<name>.log` in the working directory).
    ///
    /// ```
    /// assert_eq!(cuebe_testkit::cluster::Component::Etcd.name(), "etcd");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::ApiServer => "kube-apiserver",
            Component::ControllerManager => "kube-controller-manager",
            Component::Scheduler => "kube-scheduler",
            Component::Kwok => "kwok",
        }
    }

    /// The listeners it binds, by the names a [`PortPicker`] is called with.
    fn port_names(self) -> &'static [&'static str] {
        match self {
            Component::Etcd => &["etcd", "etcd-peer"],
            Component::ApiServer => &["kube-apiserver"],
            Component::ControllerManager => &["kube-controller-manager"],
            Component::Scheduler => &["kube-scheduler"],
            Component::Kwok => &["kwok"],
        }
    }
}

/// How long [`TestCluster::stop_component`] waits after SIGTERM before it sends SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long [`TestCluster::start_component`] waits for a component to serve again.
const RESTART_TIMEOUT: Duration = Duration::from_secs(90);

/// How many times a component is started before a taken port fails the start-up. Each retry
/// picks new ports, so more than one collision in a row means something hoards ports.
const MAX_PORT_ATTEMPTS: u32 = 5;

struct Process {
    kind: Component,
    child: Child,
    log: PathBuf,
    /// 1 for the first start, +1 for each restart after its port was taken.
    attempt: u32,
    /// Stopped on purpose ([`TestCluster::stop_component`]): its exit is not a crash.
    stopped: bool,
    /// How often it was started again after a crash [`restart_after_crash`] forgives.
    crash_restarts: u32,
    /// Where this process's output starts in `log` (the log goes on across restarts), so that
    /// its exit is judged by what it wrote, not by an earlier process's last words.
    log_start: u64,
}

/// How often a crash [`restart_after_crash`] forgives is forgiven for one component.
const MAX_CRASH_RESTARTS: u32 = 3;

/// Whether a component that exited on its own is started again instead of failing the cluster.
///
/// Only kwok, and only for the data race kwok v0.8.0 has in its CEL type registry (easycel's
/// `typeTraitMap` is written without a lock when the node and pod controllers first build their
/// CEL environments at the same time; the Go runtime aborts with "concurrent map writes"). kwok
/// plays a kubelet and keeps no state of its own, so a new process picks up where the old one
/// stopped. Every other exit is a real failure and is reported with the log's tail.
fn restart_after_crash(kind: Component, log_tail: &str, restarts_so_far: u32) -> bool {
    kind == Component::Kwok
        && restarts_so_far < MAX_CRASH_RESTARTS
        && log_tail.contains("fatal error: concurrent map writes")
}

/// The port of each listener, by [`PORT_NAMES`] name.
#[derive(Debug, Default)]
struct Ports(std::collections::BTreeMap<&'static str, u16>);

impl Ports {
    /// The port of a listener; 0 only if it was never picked, which `start` rules out (every
    /// component's ports are picked before it is launched).
    fn get(&self, name: &str) -> u16 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Picks (again) the ports of a component's listeners.
    fn pick(&mut self, picker: &PortPicker, kind: Component) -> Result<(), ClusterError> {
        for &name in kind.port_names() {
            let port = picker(name).map_err(|source| ClusterError::Io {
                what: format!("picking a loopback port for {name}"),
                source,
            })?;
            self.0.insert(name, port);
        }
        Ok(())
    }

    /// The API server URL for kube-apiserver's current port.
    fn api_server(&self) -> String {
        format!("https://127.0.0.1:{}", self.get("kube-apiserver"))
    }
}

/// Whether a component is ready for the next start-up step.
enum Listening {
    /// It listens on all its ports.
    Yes,
    /// Still starting.
    NotYet,
    /// It could not bind: another process has one of its ports.
    PortTaken,
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Children are spawned from one thread that lives as long as the process: `PR_SET_PDEATHSIG`
/// fires when the *thread* that forked exits, so spawning from a test's own thread would kill
/// the cluster when that test ends.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("cuebe-cluster-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_with_parent_death_signal(&mut cmd));
                }
            })
            .ok();
        Mutex::new(tx)
    })
}

#[allow(unsafe_code)]
fn spawn_with_parent_death_signal(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

pub(crate) fn spawn(cmd: Command) -> std::io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the spawner thread did not answer"))?
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    tail_from(path, 0, n)
}

/// The last `n` lines of a file written at or after byte `start`.
fn tail_from(path: &Path, start: u64, n: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024).max(start)));
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running control plane. Dropping it stops every process.
///
/// ```no_run
/// # async fn demo() -> Result<(), cuebe_testkit::cluster::ClusterError> {
/// use cuebe_testkit::cluster::{ClusterOptions, TestCluster};
/// let cluster = TestCluster::start(ClusterOptions::default()).await?;
/// let ns = cluster.namespace("my-test").await?;
/// let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(cluster.client(), &ns);
/// # Ok(()) }
/// ```
pub struct TestCluster {
    dir: Option<tempfile::TempDir>,
    workdir: PathBuf,
    bin: PathBuf,
    kubeconfig: PathBuf,
    config: Config,
    components: Mutex<Vec<Process>>,
    startup: Duration,
    server: String,
    pki: Pki,
    ports: Ports,
    picker: PortPicker,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("server", &self.server)
            .field("kubeconfig", &self.kubeconfig)
            .finish()
    }
}

impl TestCluster {
    /// Starts a control plane. See the module docs for what runs.
    pub async fn start(options: ClusterOptions) -> Result<Self, ClusterError> {
        let cache_dir = options.cache_dir.clone();
        let bin = tokio::task::spawn_blocking(move || match cache_dir {
            Some(dir) => controlplane_bin_in(&dir),
            None => controlplane_bin(),
        })
        .await
        .map_err(|source| ClusterError::Task {
            what: "locating the control plane binaries".into(),
            source,
        })??;
        // The deadline starts once the binaries are there: a first build takes about half an
        // hour and reports its own progress; `start_timeout` is about starting the processes.
        let started = Instant::now();
        let deadline = started + options.start_timeout;
        let dir = tempfile::Builder::new()
            .prefix("cuebe-cluster-")
            .tempdir()
            .map_err(|source| ClusterError::Io {
                what: "creating the cluster's working directory".into(),
                source,
            })?;
        let workdir = dir.path().to_path_buf();
        // Statics (the shared cluster) are never dropped and a killed test never runs Drop:
        // a detached watchdog removes the working directory once this process is gone. The
        // components themselves die with the process (PR_SET_PDEATHSIG).
        if std::env::var_os("CUEBE_KEEP_CLUSTER").is_none() {
            let _ = Command::new("sh")
                .arg("-c")
                .arg("while kill -0 \"$0\" 2>/dev/null; do sleep 1; done; sleep 1; rm -rf \"$1\"")
                .arg(std::process::id().to_string())
                .arg(&workdir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
        }
        let pki = Pki::generate(&workdir)?;
        let picker = options
            .port_picker
            .clone()
            .unwrap_or_else(ports::default_picker);
        let mut ports = Ports::default();
        ports.pick(&picker, Component::Etcd)?;
        ports.pick(&picker, Component::ApiServer)?;
        let server = ports.api_server();
        let kubeconfig = workdir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &pki)?;
        let mut cluster = Self {
            dir: Some(dir),
            workdir: workdir.clone(),
            bin,
            kubeconfig: kubeconfig.clone(),
            config: config_from(&kubeconfig).await?,
            components: Mutex::new(Vec::new()),
            startup: Duration::ZERO,
            server,
            pki,
            ports,
            picker,
        };

        // One step at a time, each listening before the next starts: kube-apiserver is given
        // etcd's final port, and the controllers read the kubeconfig only once it names
        // kube-apiserver's final port.
        cluster.launch(Component::Etcd)?;
        cluster.settle(&[Component::Etcd], deadline).await?;
        cluster.launch(Component::ApiServer)?;
        cluster.settle(&[Component::ApiServer], deadline).await?;
        cluster.wait_readyz(deadline).await?;
        if let Some(hook) = &options.on_api_ready {
            hook(&kubeconfig);
        }

        if options.controllers {
            let controllers = [
                Component::ControllerManager,
                Component::Scheduler,
                Component::Kwok,
            ];
            for kind in controllers {
                cluster.ports.pick(&cluster.picker, kind)?;
                cluster.launch(kind)?;
            }
            cluster.create_node().await?;
            cluster.settle(&controllers, deadline).await?;
            cluster.wait_node_ready(deadline).await?;
            cluster.wait_default_service_account(deadline).await?;
        }
        cluster.install_crds(&options.crds, deadline).await?;
        cluster.startup = started.elapsed();
        tracing::info!(server = %cluster.server, startup = ?cluster.startup, "test cluster ready");
        Ok(cluster)
    }

    /// One cluster per test process, started on first use with controllers and the ACK and
    /// Gateway API CRDs; tests isolate themselves with [`TestCluster::namespace`].
    ///
    /// It lives until the process exits (its components die with the process).
    pub async fn shared() -> Result<&'static TestCluster, ClusterError> {
        static SHARED: tokio::sync::OnceCell<TestCluster> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_try_init(|| async {
                let crds: Vec<PathBuf> = ack_iam_crds()
                    .into_iter()
                    .chain(gateway_api_crds())
                    .collect();
                TestCluster::start(ClusterOptions::default().with_crds(crds)).await
            })
            .await
    }

    /// Rewrites the kubeconfig for kube-apiserver's current port and makes the clients use it.
    async fn point_kubeconfig_at_api_port(&mut self) -> Result<(), ClusterError> {
        self.server = self.ports.api_server();
        write_kubeconfig(&self.kubeconfig, &self.server, &self.pki)?;
        self.config = config_from(&self.kubeconfig).await?;
        Ok(())
    }

    /// The command line of a component, from the current ports.
    fn args(&self, kind: Component) -> Vec<String> {
        let w = |p: &Path| p.display().to_string();
        let port = |name: &str| self.ports.get(name);
        let (workdir, pki) = (&self.workdir, &self.pki);
        let kc = w(&self.kubeconfig);
        match kind {
            Component::Etcd => {
                let (client, peer) = (port("etcd"), port("etcd-peer"));
                vec![
                    "--name=default".into(),
                    format!("--data-dir={}", w(&workdir.join("etcd"))),
                    format!("--listen-client-urls=http://127.0.0.1:{client}"),
                    format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                    format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                    format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                    format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
                    "--unsafe-no-fsync=true".into(),
                    "--log-level=warn".into(),
                ]
            }
            Component::ApiServer => vec![
                format!("--etcd-servers=http://127.0.0.1:{}", port("etcd")),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                // The endpoint reconciler refuses loopback addresses; nothing here needs the
                // `kubernetes` Service endpoints.
                "--endpoint-reconciler-type=none".into(),
                format!("--secure-port={}", port("kube-apiserver")),
                format!("--cert-dir={}", w(workdir)),
                format!("--tls-cert-file={}", w(&pki.serving_cert)),
                format!("--tls-private-key-file={}", w(&pki.serving_key)),
                format!("--client-ca-file={}", w(&pki.ca_cert)),
                // Filling the request-header settings keeps the controllers' delegated
                // authentication from logging a missing CA bundle every few seconds.
                format!("--requestheader-client-ca-file={}", w(&pki.ca_cert)),
                "--requestheader-allowed-names=front-proxy-client".into(),
                "--requestheader-username-headers=X-Remote-User".into(),
                "--requestheader-group-headers=X-Remote-Group".into(),
                "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", w(&pki.sa_pub)),
                format!("--service-account-signing-key-file={}", w(&pki.sa_key)),
                // Large enough for benches with hundreds of Services.
                "--service-cluster-ip-range=10.0.0.0/16".into(),
                "--authorization-mode=RBAC".into(),
                "--allow-privileged=true".into(),
                // New Nodes get a not-ready taint that only the node-lifecycle controller removes;
                // kwok's Node is Ready at once, so skip the taint instead of running that
                // controller (which would also evict pods on a missed heartbeat).
                "--disable-admission-plugins=TaintNodesByCondition".into(),
                "--enable-priority-and-fairness=false".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ],
            Component::ControllerManager => vec![
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", port("kube-controller-manager")),
                "--leader-elect=false".into(),
                "--controllers=garbage-collector-controller,deployment-controller,replicaset-controller,statefulset-controller,daemonset-controller,job-controller,cronjob-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,endpointslice-controller,disruption-controller,root-ca-certificate-publisher-controller,pod-garbage-collector-controller".into(),
                format!("--service-account-private-key-file={}", w(&pki.sa_key)),
                format!("--root-ca-file={}", w(&pki.ca_cert)),
                "--use-service-account-credentials=false".into(),
                "--concurrent-deployment-syncs=10".into(),
                "--concurrent-replicaset-syncs=10".into(),
                "--concurrent-gc-syncs=10".into(),
                "--kube-api-qps=200".into(),
                "--kube-api-burst=400".into(),
            ],
            Component::Scheduler => vec![
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", port("kube-scheduler")),
                "--leader-elect=false".into(),
            ],
            Component::Kwok => vec![
                format!("--kubeconfig={kc}"),
                format!("--config={}", w(&self.bin.join("kwok-stages.yaml"))),
                "--manage-all-nodes=false".into(),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                format!("--server-address=127.0.0.1:{}", port("kwok")),
                "--node-ip=127.0.0.1".into(),
                "--cidr=10.244.0.0/16".into(),
            ],
        }
    }

    /// Starts a component (first start: `attempt` 1) with the current ports; its output goes to
    /// `<name>.log` in the working directory, appended to it after a deliberate stop (`append`)
    /// so the log of the run before the restart is kept.
    fn spawn_component(
        &self,
        kind: Component,
        attempt: u32,
        append: bool,
    ) -> Result<Process, ClusterError> {
        let log = self.workdir.join(format!("{}.log", kind.name()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&log)
            .map_err(|source| ClusterError::Io {
                what: format!("opening {}", log.display()),
                source,
            })?;
        let log_start = if append {
            file.metadata().map(|m| m.len()).unwrap_or(0)
        } else {
            0
        };
        let err_file = file.try_clone().map_err(|source| ClusterError::Io {
            what: format!("opening {}", log.display()),
            source,
        })?;
        let binary = self.bin.join(kind.name());
        let mut cmd = Command::new(&binary);
        cmd.args(self.args(kind))
            .current_dir(&self.workdir)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err_file);
        let child = spawn(cmd).map_err(|source| ClusterError::Io {
            what: format!("starting {}", binary.display()),
            source,
        })?;
        Ok(Process {
            kind,
            child,
            log,
            attempt,
            stopped: false,
            crash_restarts: 0,
            log_start,
        })
    }

    fn launch(&mut self, kind: Component) -> Result<(), ClusterError> {
        let component = self.spawn_component(kind, 1, false)?;
        self.components
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .push(component);
        Ok(())
    }

    /// Waits until each of `kinds` listens on its ports, restarting one on new ports when another
    /// process took one of them between the pick and its bind.
    async fn settle(&mut self, kinds: &[Component], deadline: Instant) -> Result<(), ClusterError> {
        let started = Instant::now();
        loop {
            let mut waiting = Vec::new();
            for &kind in kinds {
                match self.listening(kind)? {
                    Listening::Yes => {}
                    Listening::NotYet => waiting.push(kind.name()),
                    Listening::PortTaken => {
                        self.restart_on_new_ports(kind).await?;
                        waiting.push(kind.name());
                    }
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.timeout(
                    &format!("{} to listen on their ports", waiting.join(", ")),
                    started.elapsed(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether a component listens on its ports; an error if it exited for another reason than
    /// a taken port.
    fn listening(&self, kind: Component) -> Result<Listening, ClusterError> {
        let wanted: Vec<u16> = kind
            .port_names()
            .iter()
            .map(|n| self.ports.get(n))
            .collect();
        let mut components = self
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(c) = components.iter_mut().find(|c| c.kind == kind) else {
            return Ok(Listening::NotYet);
        };
        if let Ok(Some(status)) = c.child.try_wait() {
            if ports::says_port_taken(&c.log) {
                return Ok(Listening::PortTaken);
            }
            if self.restarted_after_crash(c, &status)? {
                return Ok(Listening::NotYet);
            }
            return Err(ClusterError::ComponentDied {
                component: kind.name().to_string(),
                status: status.to_string(),
                log: c.log.display().to_string(),
                tail: tail(&c.log, 30),
            });
        }
        let pid = c.child.id();
        // Without readable socket tables nothing can be checked: a live process is taken as
        // listening, and a taken port shows up as an exited component later.
        let all = wanted
            .iter()
            .all(|&p| ports::listens(pid, p).unwrap_or(true));
        if all {
            Ok(Listening::Yes)
        } else if ports::says_port_taken(&c.log) {
            // Still running but failing (a component may log the bind error before it exits).
            Ok(Listening::PortTaken)
        } else {
            Ok(Listening::NotYet)
        }
    }

    /// Stops a component whose port was taken and starts it again on newly picked ports. The
    /// failed attempt's log is kept as `<name>.port-taken-<attempt>.log`.
    async fn restart_on_new_ports(&mut self, kind: Component) -> Result<(), ClusterError> {
        let components = self
            .components
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(index) = components.iter().position(|c| c.kind == kind) else {
            return Ok(());
        };
        let failed = &mut components[index];
        let attempt = failed.attempt;
        let _ = failed.child.kill();
        let _ = failed.child.wait();
        if attempt >= MAX_PORT_ATTEMPTS {
            return Err(ClusterError::PortsTaken {
                component: kind.name().to_string(),
                attempts: attempt,
                log: failed.log.display().to_string(),
                tail: tail(&failed.log, 30),
            });
        }
        let kept = self
            .workdir
            .join(format!("{}.port-taken-{attempt}.log", kind.name()));
        let _ = std::fs::rename(&failed.log, &kept);
        let old: Vec<u16> = kind
            .port_names()
            .iter()
            .map(|n| self.ports.get(n))
            .collect();
        self.ports.pick(&self.picker, kind)?;
        let new: Vec<u16> = kind
            .port_names()
            .iter()
            .map(|n| self.ports.get(n))
            .collect();
        tracing::warn!(
            component = kind.name(),
            ?old,
            ?new,
            attempt = attempt + 1,
            log = %kept.display(),
            "another process took a port of this component before it could bind it; restarting it on new ports"
        );
        match kind {
            // etcd settles before kube-apiserver starts, so its data holds nothing yet; what a
            // failed start left there would make the next one resume a member with the old
            // peer URL.
            Component::Etcd => {
                let _ = std::fs::remove_dir_all(self.workdir.join("etcd"));
            }
            Component::ApiServer => self.point_kubeconfig_at_api_port().await?,
            Component::ControllerManager | Component::Scheduler | Component::Kwok => {}
        }
        let component = self.spawn_component(kind, attempt + 1, false)?;
        self.components
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)[index] = component;
        Ok(())
    }

    /// Stops one component, keeping its data and ports: SIGTERM, then SIGKILL if it has not
    /// exited after 10 s. Until [`TestCluster::start_component`] starts it again,
    /// [`TestCluster::check_alive`] does not report it and [`TestCluster::log_tails`] marks it
    /// stopped. Stopping a stopped component does nothing.
    ///
    /// Use a cluster of your own ([`TestCluster::start`]), not [`TestCluster::shared`]: the other
    /// tests of the binary share the shared one.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cuebe_testkit::cluster::ClusterError> {
    /// use cuebe_testkit::cluster::{ClusterOptions, Component, TestCluster};
    /// let cluster = TestCluster::start(ClusterOptions::api_only()).await?;
    /// cluster.stop_component(Component::ApiServer).await?;
    /// // ... requests fail with "connection refused" ...
    /// cluster.start_component(Component::ApiServer).await?; // `/readyz` answers again
    /// # Ok(()) }
    /// ```
    pub async fn stop_component(&self, component: Component) -> Result<(), ClusterError> {
        self.halt(component, libc::SIGTERM, STOP_GRACE).await
    }

    /// Kills one component with SIGKILL (a crash: no graceful shutdown), keeping its data and
    /// ports; otherwise as [`TestCluster::stop_component`].
    ///
    /// ```no_run
    /// # async fn demo(cluster: &cuebe_testkit::cluster::TestCluster) -> Result<(), cuebe_testkit::cluster::ClusterError> {
    /// use cuebe_testkit::cluster::Component;
    /// cluster.kill_component(Component::Etcd).await?;
    /// cluster.start_component(Component::Etcd).await?; // healthy, and kube-apiserver ready
    /// # Ok(()) }
    /// ```
    pub async fn kill_component(&self, component: Component) -> Result<(), ClusterError> {
        self.halt(component, libc::SIGKILL, Duration::ZERO).await
    }

    /// Starts a component stopped by [`TestCluster::stop_component`] or
    /// [`TestCluster::kill_component`] again, with the same arguments: the same ports (so
    /// kubeconfigs and clients keep working), certificates and, for etcd, data directory. Its
    /// log goes on in the same file. Returns once it serves again: etcd answers `/health` (and
    /// kube-apiserver, if it runs, `/readyz`); kube-apiserver answers `/readyz`; the others
    /// listen on their ports. Starting a running component does nothing.
    ///
    /// Fails with [`ClusterError::PortsTaken`] if another process took one of its ports
    /// meanwhile and kept it (its ports cannot move without breaking its clients), and with
    /// [`ClusterError::Timeout`] after 90 s.
    ///
    /// ```no_run
    /// # async fn demo(cluster: &cuebe_testkit::cluster::TestCluster) -> Result<(), cuebe_testkit::cluster::ClusterError> {
    /// use cuebe_testkit::cluster::Component;
    /// cluster.stop_component(Component::Etcd).await?;
    /// cluster.start_component(Component::Etcd).await?;
    /// # Ok(()) }
    /// ```
    pub async fn start_component(&self, component: Component) -> Result<(), ClusterError> {
        let started = Instant::now();
        let deadline = started + RESTART_TIMEOUT;
        let Some(stopped) = self.is_stopped(component) else {
            return Err(ClusterError::NotStarted {
                component: component.name().to_string(),
            });
        };
        if !stopped {
            return Ok(());
        }
        let mut attempt = 1;
        loop {
            let process = self.spawn_component(component, 1, true)?;
            self.replace_process(process);
            match self.wait_listening(component, deadline).await? {
                Listening::Yes => break,
                Listening::NotYet => {
                    return Err(self.timeout(
                        &format!("{} to listen on its ports again", component.name()),
                        started.elapsed(),
                    ));
                }
                Listening::PortTaken if attempt >= MAX_PORT_ATTEMPTS => {
                    self.halt(component, libc::SIGKILL, Duration::ZERO).await?;
                    let log = self.workdir.join(format!("{}.log", component.name()));
                    return Err(ClusterError::PortsTaken {
                        component: component.name().to_string(),
                        attempts: attempt,
                        tail: tail(&log, 30),
                        log: log.display().to_string(),
                    });
                }
                Listening::PortTaken => {
                    // The port must stay (clients know it): wait for whoever holds it to let
                    // go, usually a connection of ours the kernel had given it to.
                    tracing::warn!(
                        component = component.name(),
                        attempt,
                        "a port of this component is taken; starting it again on the same port"
                    );
                    self.halt(component, libc::SIGKILL, Duration::ZERO).await?;
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        match component {
            Component::Etcd => {
                self.wait_etcd_healthy(deadline).await?;
                if self.is_stopped(Component::ApiServer) == Some(false) {
                    self.wait_readyz(deadline).await?;
                }
            }
            Component::ApiServer => self.wait_readyz(deadline).await?,
            Component::ControllerManager | Component::Scheduler | Component::Kwok => {}
        }
        tracing::info!(
            component = component.name(),
            after = ?started.elapsed(),
            "component serving again"
        );
        Ok(())
    }

    /// [`TestCluster::stop_component`], then [`TestCluster::start_component`]: returns once the
    /// component serves again.
    ///
    /// ```no_run
    /// # async fn demo(cluster: &cuebe_testkit::cluster::TestCluster) -> Result<(), cuebe_testkit::cluster::ClusterError> {
    /// use cuebe_testkit::cluster::Component;
    /// cluster.restart_component(Component::ApiServer).await?;
    /// let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(cluster.client());
    /// namespaces.list(&Default::default()).await.expect("the same client works again");
    /// # Ok(()) }
    /// ```
    pub async fn restart_component(&self, component: Component) -> Result<(), ClusterError> {
        self.stop_component(component).await?;
        self.start_component(component).await
    }

    /// Whether a component was started and is not stopped by the test. A component that
    /// crashed still counts as running here; [`TestCluster::check_alive`] reports it.
    ///
    /// ```no_run
    /// # fn demo(cluster: &cuebe_testkit::cluster::TestCluster) {
    /// use cuebe_testkit::cluster::Component;
    /// assert!(cluster.is_running(Component::Etcd));
    /// # }
    /// ```
    pub fn is_running(&self, component: Component) -> bool {
        self.is_stopped(component) == Some(false)
    }

    /// The process id of a component that was started and is not stopped by the test, for
    /// faults injected from outside (a signal the testkit does not send itself).
    ///
    /// ```no_run
    /// # fn demo(cluster: &cuebe_testkit::cluster::TestCluster) {
    /// use cuebe_testkit::cluster::Component;
    /// assert!(cluster.pid(Component::Etcd).is_some());
    /// # }
    /// ```
    pub fn pid(&self, component: Component) -> Option<u32> {
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|p| p.kind == component && !p.stopped)
            .map(|p| p.child.id())
    }

    /// `None` if the component was never started, else whether the test stopped it.
    fn is_stopped(&self, component: Component) -> Option<bool> {
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|p| p.kind == component)
            .map(|p| p.stopped)
    }

    fn replace_process(&self, process: Process) {
        let mut components = self
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = components.iter_mut().find(|p| p.kind == process.kind) {
            *slot = process;
        }
    }

    /// Sends `signal` to a running component, waits `grace` for it to exit, then kills it, and
    /// marks it stopped.
    async fn halt(
        &self,
        component: Component,
        signal: libc::c_int,
        grace: Duration,
    ) -> Result<(), ClusterError> {
        {
            let mut components = self
                .components
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(p) = components.iter_mut().find(|p| p.kind == component) else {
                return Err(ClusterError::NotStarted {
                    component: component.name().to_string(),
                });
            };
            if p.stopped {
                return Ok(());
            }
            // Marked before the signal: from here on its exit is ours, not a crash.
            p.stopped = true;
            if let Ok(None) = p.child.try_wait() {
                #[allow(unsafe_code)]
                // SAFETY: sending a signal to our own child process, not yet reaped (try_wait
                // just saw it running), so the pid is still its own.
                unsafe {
                    libc::kill(p.child.id() as libc::pid_t, signal);
                }
            }
        }
        let deadline = Instant::now() + grace;
        loop {
            {
                let mut components = self
                    .components
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Some(p) = components.iter_mut().find(|p| p.kind == component) {
                    if let Ok(Some(_)) = p.child.try_wait() {
                        break;
                    }
                    if Instant::now() >= deadline {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(
            component = component.name(),
            signal,
            "component stopped by the test"
        );
        Ok(())
    }

    /// Polls [`TestCluster::listening`] until the component listens, its port is taken, or the
    /// deadline passes (`NotYet`).
    async fn wait_listening(
        &self,
        component: Component,
        deadline: Instant,
    ) -> Result<Listening, ClusterError> {
        loop {
            match self.listening(component)? {
                Listening::NotYet if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return Ok(other),
            }
        }
    }

    async fn wait_etcd_healthy(&self, deadline: Instant) -> Result<(), ClusterError> {
        let started = Instant::now();
        let port = self.ports.get("etcd");
        loop {
            self.check_alive()?;
            if etcd_healthy(port).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.timeout("etcd /health", started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails, naming the component and showing its log tail, if any component has exited.
    pub fn check_alive(&self) -> Result<(), ClusterError> {
        let mut components = self
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A component stopped on purpose is not a crash; it is reported again once started.
        for c in components.iter_mut().filter(|c| !c.stopped) {
            if let Ok(Some(status)) = c.child.try_wait() {
                if self.restarted_after_crash(c, &status)? {
                    continue;
                }
                return Err(ClusterError::ComponentDied {
                    component: c.kind.name().to_string(),
                    status: status.to_string(),
                    log: c.log.display().to_string(),
                    tail: tail(&c.log, 30),
                });
            }
        }
        Ok(())
    }

    /// Starts `process` again in place when its crash is one [`restart_after_crash`] forgives;
    /// `false` when the exit must be reported.
    fn restarted_after_crash(
        &self,
        process: &mut Process,
        status: &std::process::ExitStatus,
    ) -> Result<bool, ClusterError> {
        let log_tail = tail_from(&process.log, process.log_start, 60);
        if !restart_after_crash(process.kind, &log_tail, process.crash_restarts) {
            return Ok(false);
        }
        tracing::warn!(
            component = process.kind.name(),
            %status,
            restarts = process.crash_restarts + 1,
            "component crashed on a known upstream data race; starting it again"
        );
        let mut fresh = self.spawn_component(process.kind, process.attempt, true)?;
        fresh.crash_restarts = process.crash_restarts + 1;
        *process = fresh;
        Ok(true)
    }

    /// The last `n` lines of every component's log, headed by its name.
    pub fn log_tails(&self, n: usize) -> String {
        let components = self
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        components
            .iter()
            .map(|c| {
                format!(
                    "--- {}{} ({})\n{}",
                    c.kind.name(),
                    if c.stopped {
                        ", stopped by the test"
                    } else {
                        ""
                    },
                    c.log.display(),
                    tail(&c.log, n)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn timeout(&self, what: &str, after: Duration) -> ClusterError {
        ClusterError::Timeout {
            what: what.to_string(),
            after,
            tails: Some(self.log_tails(15)),
        }
    }

    async fn wait_readyz(&self, deadline: Instant) -> Result<(), ClusterError> {
        let started = Instant::now();
        loop {
            self.check_alive()?;
            let req = http::Request::get("/readyz").body(Vec::new());
            if let Ok(req) = req
                && let Ok(body) = self.client().request_text(req).await
                && body.trim() == "ok"
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.timeout("kube-apiserver /readyz", started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One simulated node with room for 20,000 pods of 50m CPU and 64Mi each: the converge
    /// bench runs 10,000 WebServices of one replica (a node of 5,000 pods, or of 256 CPUs,
    /// left the pods beyond it Pending and their Deployments never Available).
    async fn create_node(&self) -> Result<(), ClusterError> {
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": "kwok-node-0",
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": "kwok-node-0",
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok"
                }
            },
            "spec": {},
            "status": {
                "allocatable": {"cpu": "1000", "memory": "2Ti", "pods": "20000"},
                "capacity": {"cpu": "1000", "memory": "2Ti", "pods": "20000"}
            }
        }))
        .map_err(|e| ClusterError::Pki(e.to_string()))?;
        Api::<Node>::all(self.client())
            .create(&PostParams::default(), &node)
            .await
            .map_err(|source| ClusterError::Kube {
                what: "creating the kwok Node".into(),
                source,
            })?;
        Ok(())
    }

    async fn wait_node_ready(&self, deadline: Instant) -> Result<(), ClusterError> {
        let nodes: Api<Node> = Api::all(self.client());
        let started = Instant::now();
        loop {
            self.check_alive()?;
            if let Ok(node) = nodes.get("kwok-node-0").await {
                let ready = node
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                if ready {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(self.timeout("the kwok Node to become Ready", started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_default_service_account(&self, deadline: Instant) -> Result<(), ClusterError> {
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client(), "default");
        let started = Instant::now();
        loop {
            self.check_alive()?;
            if sas.get_opt("default").await.ok().flatten().is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.timeout(
                    "the service-account controller to create default/default",
                    started.elapsed(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Installs CRD files (server-side apply) and waits until each is Established.
    pub async fn install_crds(
        &self,
        files: &[PathBuf],
        deadline: Instant,
    ) -> Result<(), ClusterError> {
        let mut crds = Vec::new();
        for path in files {
            let bad = |message: String| ClusterError::Crd {
                path: path.display().to_string(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
            for doc in serde_norway::Deserializer::from_str(&text) {
                let value: serde_json::Value =
                    serde::Deserialize::deserialize(doc).map_err(|e| bad(e.to_string()))?;
                if !value.is_null() {
                    crds.push(serde_json::from_value(value).map_err(|e| bad(e.to_string()))?);
                }
            }
        }
        self.apply_crds(&crds, deadline).await
    }

    /// Applies CRD objects (server-side apply) and waits until each is Established.
    pub async fn apply_crds(
        &self,
        crds: &[CustomResourceDefinition],
        deadline: Instant,
    ) -> Result<(), ClusterError> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client());
        let mut names = Vec::new();
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(
                &name,
                &PatchParams::apply("cuebe-testkit").force(),
                &Patch::Apply(crd),
            )
            .await
            .map_err(|source| ClusterError::Kube {
                what: format!("installing CRD {name}"),
                source,
            })?;
            names.push(name);
        }
        let started = Instant::now();
        for name in names {
            loop {
                let established = api
                    .get(&name)
                    .await
                    .ok()
                    .and_then(|c| c.status)
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(
                        self.timeout(&format!("CRD {name} to be Established"), started.elapsed())
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Creates a fresh namespace `<prefix>-<n>` and returns its name.
    pub async fn namespace(&self, prefix: &str) -> Result<String, ClusterError> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id() % 100_000);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .map_err(|e| ClusterError::Pki(e.to_string()))?;
        Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &ns)
            .await
            .map_err(|source| ClusterError::Kube {
                what: format!("creating namespace {name}"),
                source,
            })?;
        Ok(name)
    }

    /// Deletes a namespace (not waiting for it to go).
    pub async fn delete_namespace(&self, name: &str) -> Result<(), ClusterError> {
        Api::<Namespace>::all(self.client())
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ())
            .map_err(|source| ClusterError::Kube {
                what: format!("deleting namespace {name}"),
                source,
            })
    }

    /// An admin client, bound to the calling tokio runtime (each `#[tokio::test]` has its own
    /// runtime, so a client is never shared across tests).
    pub fn client(&self) -> Client {
        #[allow(clippy::expect_used)]
        Client::try_from(self.config.clone())
            .expect("the generated kubeconfig always yields a client")
    }

    /// A client that acts as `user` (e.g. `system:serviceaccount:ns:name`) through impersonation,
    /// to test what an RBAC manifest really allows.
    pub fn impersonating_client(&self, user: &str, groups: &[&str]) -> Client {
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(user.to_string());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        #[allow(clippy::expect_used)]
        Client::try_from(config).expect("the generated kubeconfig always yields a client")
    }

    /// The kubeconfig file (admin credentials).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The API server's loopback address (what a [`crate::fault::FaultProxy`] relays to).
    pub fn api_addr(&self) -> std::net::SocketAddr {
        let port = self.config.cluster_url.port_u16().unwrap_or(443);
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// An admin client whose every request goes through `proxy`, so a test can freeze or cut
    /// the path between it and the real API server. The server's certificate names 127.0.0.1,
    /// so TLS verifies as on the direct path.
    pub fn client_via(&self, proxy: &crate::fault::FaultProxy) -> Client {
        let mut config = self.config.clone();
        let url = format!("https://{}", proxy.addr());
        #[allow(clippy::expect_used)]
        {
            config.cluster_url = url.parse().expect("a socket address makes a valid URI");
            Client::try_from(config).expect("the generated kubeconfig always yields a client")
        }
    }

    /// The `kubectl` of the same release.
    pub fn kubectl(&self) -> PathBuf {
        self.bin.join("kubectl")
    }

    /// Where logs, certificates and etcd data live.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// How long [`TestCluster::start`] took, from when the binaries were there (finding or
    /// building them is not counted).
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The loopback port a listener ended up on, by [`PORT_NAMES`] name (`None` for an unknown
    /// name or a component that was not started).
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports.0.get(name).copied()
    }

    /// Peak resident memory (VmHWM) of each component, in KiB.
    pub fn peak_memory_kib(&self) -> Vec<(&'static str, u64)> {
        let components = self
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        components
            .iter()
            .filter(|c| !c.stopped)
            .map(|c| {
                let status = std::fs::read_to_string(format!("/proc/{}/status", c.child.id()))
                    .unwrap_or_default();
                let kib = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                    .unwrap_or(0);
                (c.kind.name(), kib)
            })
            .collect()
    }

    /// Stops every component now (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&self) {
        let mut components = self
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Reverse start order: controllers first, etcd last. A component stopped by the test was
        // reaped already: its pid may belong to another process by now.
        for c in components.iter_mut().rev().filter(|c| !c.stopped) {
            #[allow(unsafe_code)]
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(c.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in components.iter_mut().rev().filter(|c| !c.stopped) {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
        components.clear();
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("CUEBE_KEEP_CLUSTER").is_some()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            tracing::warn!(
                "cuebe-testkit: kept the cluster's files in {}",
                kept.display()
            );
        }
    }
}

/// Whether etcd answers `/health` with `"health":"true"` on its client port. A raw HTTP/1.0
/// request: etcd's client URL is plain HTTP on loopback, and this is the only request made.
async fn etcd_healthy(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    match tokio::time::timeout(Duration::from_secs(2), ask).await {
        Ok(Ok(body)) => String::from_utf8_lossy(&body).contains("\"health\":\"true\""),
        _ => false,
    }
}

fn write_kubeconfig(path: &Path, server: &str, pki: &Pki) -> Result<(), ClusterError> {
    let body = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: cuebe\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: cuebe-admin\n  user:\n    client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: cuebe\n  context:\n    cluster: cuebe\n    user: cuebe-admin\n    namespace: default\ncurrent-context: cuebe\n",
        ca = pki.ca_cert.display(),
        cert = pki.admin_cert.display(),
        key = pki.admin_key.display(),
    );
    std::fs::write(path, body).map_err(|source| ClusterError::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}

async fn config_from(kubeconfig: &Path) -> Result<Config, ClusterError> {
    let config_error = |e: kube::config::KubeconfigError| ClusterError::Config {
        path: kubeconfig.display().to_string(),
        message: e.to_string(),
    };
    let kc = Kubeconfig::read_from(kubeconfig).map_err(config_error)?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(config_error)?;
    // No read timeout (kube's own default). A watch on a kind with no changes receives nothing
    // until the server ends it (kube's watcher asks for `timeoutSeconds=290`; bookmarks come
    // about once a minute at best), so any read timeout under that cut every idle watch with an
    // error and sent the controllers' watches into backoff together. kube's watcher already
    // detects a dead watch connection itself (no event for the watch timeout + 5 s), and every
    // wait in this crate has its own deadline.
    config.read_timeout = None;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RACE: &str =
        "msg=\"Watch nodes\"\nfatal error: concurrent map writes\n\ngoroutine 15 [running]:";

    #[test]
    fn only_kwok_on_its_known_race_and_only_a_few_times_is_started_again() {
        let cases = [
            (Component::Kwok, RACE, 0, true),
            (Component::Kwok, RACE, MAX_CRASH_RESTARTS - 1, true),
            (Component::Kwok, RACE, MAX_CRASH_RESTARTS, false),
            (Component::Kwok, "error: unknown flag --cidr", 0, false),
            (Component::ApiServer, RACE, 0, false),
            (Component::Etcd, RACE, 0, false),
        ];
        for (kind, log, restarts, expected) in cases {
            assert_eq!(
                restart_after_crash(kind, log, restarts),
                expected,
                "{kind:?} after {restarts} restarts with log {log:?}"
            );
        }
    }
}
