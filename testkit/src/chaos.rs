//! Chaos runs: an operator, as its own process, rolls out spec changes to many instances while
//! it is killed with SIGKILL and kube-apiserver and etcd are restarted under it; then the
//! operator's invariants are checked from the cluster itself.
//!
//! Owns: the run ([`run`]), its plan ([`ChaosOptions`], [`Workload`]) and what it found
//! ([`ChaosReport`]). It drives the real control plane of a [`TestCluster`] of the caller's own
//! (never [`TestCluster::shared`]: its components are restarted) and the operator binary
//! (`<binary> run --namespace <ns>`, pointed at the cluster by `KUBECONFIG`), so a kill is a real
//! SIGKILL of a real process, never an aborted task.
//!
//! Workflow of [`run`]:
//! 1. install the CRD, make a namespace, start the ACK stand-in (if the workload asks) and the
//!    operator;
//! 2. create the instances (revision 0) and wait until every one has converged (no faults yet);
//!    record the UID of every object in their inventories;
//! 3. the rollout: [`ChaosOptions::waves`] times, move every *changing* instance (all but every
//!    third, which is never touched) to its next revision, and inject this wave's share of the
//!    faults, shuffled by the seeded RNG, each after a random pause: SIGKILL the operator (and
//!    start a new one after another random pause), restart kube-apiserver, restart etcd. Before
//!    each fault the run counts the instances still in progress, to show it struck mid-rollout;
//! 4. with the operator running undisturbed, wait until every instance has converged again
//!    (`Ready=True` and `status.observedGeneration` = `metadata.generation`);
//! 5. check, reading the cluster only:
//!    - **converged**: every instance, as above;
//!    - **nothing lost**: every inventory entry names an existing object with the recorded UID;
//!    - **nothing leaked**: every object carrying the management labels and written by the
//!      operator's field manager is recorded in exactly one inventory, its instance's;
//!    - **nothing duplicated**: no object, UID or node is recorded twice;
//!    - **nothing recreated**: every object recorded at step 2 that no spec change could have
//!      removed (all objects of untouched instances, and the nodes of changed ones outside
//!      [`Workload::recreatable_nodes`]) still exists with the same UID.
//!
//! The faults are a function of the seed: the same seed gives the same order, pauses and
//! waves (timing on a busy machine still differs, so a failure may need a few runs to repeat).
//!
//! ```no_run
//! # async fn demo(workload: cuebe_testkit::chaos::Workload) -> Result<(), Box<dyn std::error::Error>> {
//! use cuebe_testkit::chaos::{self, ChaosOptions};
//! use cuebe_testkit::cluster::{ClusterOptions, TestCluster};
//! let cluster = TestCluster::start(ClusterOptions::default()).await?;
//! let options = ChaosOptions {
//!     instances: 10,
//!     kills: 3,
//!     ..ChaosOptions::new(42, std::env::temp_dir())
//! };
//! let report = chaos::run(&cluster, &workload, &options).await?;
//! println!("{report}");
//! assert!(report.passed());
//! # Ok(()) }
//! ```
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cuebe::executor::{INSTANCE_LABEL, KIND_LABEL};
use cuebe::inventory::InventoryEntry;
use cuebe::status::AbstractionStatus;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::discovery::{Discovery, Scope, verbs};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::cluster::ack::{AckStandIn, AckStandInOptions};
use crate::cluster::{ClusterError, Component, TestCluster};

/// Why a chaos run could not be carried out (a broken invariant is not an error: it is in the
/// [`ChaosReport`]).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// The cluster failed: a component did not come back, or a namespace could not be made.
    #[error("the cluster: {0}")]
    Cluster(#[from] ClusterError),
    /// A request the run needs failed for good.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The error.
        source: kube::Error,
    },
    /// Starting, killing or logging the operator process failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The workload's CRD lacks what the run needs (a group, a served version, names).
    #[error("the workload's CRD: {0}")]
    Crd(String),
    /// The instances did not converge before the faults began, so nothing could be measured.
    #[error("{0} of the instances did not converge before the faults began (operator log: {1})")]
    NoBaseline(usize, PathBuf),
}

/// The spec of instance `i` at revision `r` (0 when created, then one more per wave).
pub type SpecFn = Arc<dyn Fn(usize, u32) -> serde_json::Value + Send + Sync>;

/// What a chaos run rolls out, and with which operator.
#[derive(Clone)]
pub struct Workload {
    /// The operator binary, a [`cuebe_cli`] app: run as `<operator> run --namespace <ns>` with
    /// `KUBECONFIG` set to the cluster's.
    pub operator: PathBuf,
    /// The abstraction's CRD; the run installs it and reads its group, version and names.
    pub crd: CustomResourceDefinition,
    /// The operator's field manager (`Abstraction::FIELD_MANAGER`): an object with the
    /// management labels counts as the operator's when this manager wrote it.
    pub field_manager: String,
    /// The spec of each instance at each revision. Revisions past 0 should change something
    /// (image tags, optional parts on and off) so the rollout applies and prunes objects.
    pub spec: SpecFn,
    /// Node ids a spec change may remove and add back (so their objects may be new): they are
    /// left out of the recreation check for instances whose spec changed.
    pub recreatable_nodes: BTreeSet<String>,
    /// Run the ACK stand-in ([`AckStandIn`]) in the harness, for specs that render ACK objects.
    pub ack: bool,
}

impl fmt::Debug for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workload")
            .field("operator", &self.operator)
            .field("crd", &self.crd.metadata.name)
            .field("field_manager", &self.field_manager)
            .field("recreatable_nodes", &self.recreatable_nodes)
            .field("ack", &self.ack)
            .finish_non_exhaustive()
    }
}

/// How big a chaos run is. [`ChaosOptions::new`] gives the defaults of the full run.
///
/// ```
/// let options = cuebe_testkit::chaos::ChaosOptions::new(7, std::env::temp_dir());
/// assert_eq!((options.instances, options.kills, options.apiserver_restarts, options.etcd_restarts), (200, 20, 5, 1));
/// ```
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// How many instances (named `ws-0000`, `ws-0001`, ...).
    pub instances: usize,
    /// How many times the operator is killed with SIGKILL during the rollout.
    pub kills: u32,
    /// How many times kube-apiserver is restarted during the rollout.
    pub apiserver_restarts: u32,
    /// How many times etcd is restarted during the rollout.
    pub etcd_restarts: u32,
    /// Seeds the RNG that orders the faults, picks the pauses and so on.
    pub seed: u64,
    /// How many spec changes each changing instance goes through.
    pub waves: u32,
    /// How long the instances may take to converge, before the faults and after them.
    pub converge_timeout: Duration,
    /// Where the operator's log (`chaos-operator-<seed>.log`, every process in turn) goes.
    pub log_dir: PathBuf,
    /// `RUST_LOG` of the operator.
    pub operator_log_filter: String,
}

impl ChaosOptions {
    /// The full run: 200 instances, 6 waves, 20 kills, 5 kube-apiserver restarts, 1 etcd
    /// restart, 15 minutes to converge; the operator's log in `log_dir`.
    ///
    /// ```
    /// let options = cuebe_testkit::chaos::ChaosOptions::new(7, "target/chaos");
    /// assert_eq!(options.seed, 7);
    /// ```
    pub fn new(seed: u64, log_dir: impl Into<PathBuf>) -> Self {
        Self {
            instances: 200,
            kills: 20,
            apiserver_restarts: 5,
            etcd_restarts: 1,
            seed,
            waves: 6,
            converge_timeout: Duration::from_secs(900),
            log_dir: log_dir.into(),
            operator_log_filter: "warn,cuebe=info,kube_client::client::builder=off".into(),
        }
    }
}

/// A fault the run injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL of the operator process; a new one was started after the pause.
    KillOperator,
    /// kube-apiserver stopped and started again (same port, same certificates).
    RestartApiServer,
    /// etcd stopped and started again (same data directory).
    RestartEtcd,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::KillOperator => "SIGKILL operator",
            Fault::RestartApiServer => "restart kube-apiserver",
            Fault::RestartEtcd => "restart etcd",
        })
    }
}

/// One injected fault, and what the cluster was doing when it struck.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    /// Which fault.
    pub fault: Fault,
    /// When, from the start of the rollout.
    pub at: Duration,
    /// In which wave (1-based).
    pub wave: u32,
    /// Instances not yet converged just before it (mid-rollout when above 0); `None` if they
    /// could not be listed.
    pub in_progress: Option<usize>,
    /// How long until the component served again (restarts), or until the next operator was
    /// started (kills).
    pub downtime: Duration,
}

/// What a chaos run found. [`ChaosReport::passed`] says whether every invariant held; its
/// [`Display`](fmt::Display) is the summary the bench prints.
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    /// The seed.
    pub seed: u64,
    /// How many instances.
    pub instances: usize,
    /// How many of them had their spec changed in the rollout.
    pub changed_instances: usize,
    /// How many waves of spec changes.
    pub waves: u32,
    /// Every fault, in order.
    pub faults: Vec<FaultRecord>,
    /// How many operator processes ran (the first, plus one after each kill).
    pub operator_starts: u32,
    /// Operator processes that exited without being killed (`pid: status`): a crash.
    pub operator_exits: Vec<String>,
    /// Instances that did not converge in time, with their Ready condition.
    pub not_converged: Vec<String>,
    /// Inventory entries naming no object, or an object with another UID.
    pub lost: Vec<String>,
    /// Objects of the operator's recorded in no inventory, or in another instance's.
    pub leaked: Vec<String>,
    /// Objects, UIDs or nodes recorded more than once.
    pub duplicated: Vec<String>,
    /// Objects no spec change could have removed that now have another UID (or are gone).
    pub recreated: Vec<String>,
    /// How many inventory entries and labelled objects were checked.
    pub objects_checked: usize,
    /// How many objects the recreation check followed from before the rollout.
    pub objects_tracked: usize,
    /// Creating the instances until all converged (before the faults).
    pub initial_converge: Duration,
    /// The rollout with its faults.
    pub rollout: Duration,
    /// From the last fault until every instance converged.
    pub converge_after_faults: Duration,
    /// The whole run.
    pub duration: Duration,
    /// The operator's log.
    pub operator_log: PathBuf,
    /// For each instance named in a failure, the operator's log lines that mention it (the
    /// last 20).
    pub evidence: BTreeMap<String, Vec<String>>,
}

impl ChaosReport {
    /// Whether every invariant held (and the operator never exited by itself).
    ///
    /// ```
    /// assert!(cuebe_testkit::chaos::ChaosReport::default().passed());
    /// ```
    pub fn passed(&self) -> bool {
        self.not_converged.is_empty()
            && self.lost.is_empty()
            && self.leaked.is_empty()
            && self.duplicated.is_empty()
            && self.recreated.is_empty()
            && self.operator_exits.is_empty()
    }

    /// How many faults of a kind were injected (each was survived if the run [`passed`]).
    ///
    /// [`passed`]: ChaosReport::passed
    ///
    /// ```
    /// use cuebe_testkit::chaos::{ChaosReport, Fault};
    /// assert_eq!(ChaosReport::default().count(Fault::KillOperator), 0);
    /// ```
    pub fn count(&self, fault: Fault) -> usize {
        self.faults.iter().filter(|f| f.fault == fault).count()
    }
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        writeln!(f, "chaos run {verdict} (seed {})", self.seed)?;
        writeln!(
            f,
            "  instances: {} ({} changed in {} waves, {} untouched)",
            self.instances,
            self.changed_instances,
            self.waves,
            self.instances - self.changed_instances
        )?;
        for fault in [
            Fault::KillOperator,
            Fault::RestartApiServer,
            Fault::RestartEtcd,
        ] {
            let of: Vec<&FaultRecord> = self.faults.iter().filter(|r| r.fault == fault).collect();
            let mid: Vec<usize> = of.iter().filter_map(|r| r.in_progress).collect();
            let struck_mid = mid.iter().filter(|n| **n > 0).count();
            let downtime = of.iter().map(|r| r.downtime).max().unwrap_or_default();
            writeln!(
                f,
                "  {fault}: {} ({struck_mid} with instances in progress, up to {}; longest took {:.1}s)",
                of.len(),
                mid.iter().max().copied().unwrap_or(0),
                downtime.as_secs_f64()
            )?;
        }
        writeln!(
            f,
            "  operator processes: {}; exited by themselves: {}",
            self.operator_starts,
            self.operator_exits.len()
        )?;
        writeln!(
            f,
            "  objects checked: {}, followed from before the rollout: {}",
            self.objects_checked, self.objects_tracked
        )?;
        writeln!(
            f,
            "  not converged: {}, lost: {}, leaked: {}, duplicated: {}, recreated: {}",
            self.not_converged.len(),
            self.lost.len(),
            self.leaked.len(),
            self.duplicated.len(),
            self.recreated.len()
        )?;
        writeln!(
            f,
            "  time: {:.1}s (initial converge {:.1}s, rollout with faults {:.1}s, converged {:.1}s after the last fault)",
            self.duration.as_secs_f64(),
            self.initial_converge.as_secs_f64(),
            self.rollout.as_secs_f64(),
            self.converge_after_faults.as_secs_f64()
        )?;
        writeln!(f, "  operator log: {}", self.operator_log.display())?;
        for (what, items) in [
            ("operator exited by itself", &self.operator_exits),
            ("not converged", &self.not_converged),
            ("lost", &self.lost),
            ("leaked", &self.leaked),
            ("duplicated", &self.duplicated),
            ("recreated", &self.recreated),
        ] {
            for item in items {
                writeln!(f, "  {what}: {item}")?;
            }
        }
        for (instance, lines) in &self.evidence {
            writeln!(f, "  operator log lines naming {instance}:")?;
            for line in lines {
                writeln!(f, "    {line}")?;
            }
        }
        Ok(())
    }
}

/// The name of instance `i`: fixed width, so one name is never a prefix of another in the log.
fn instance_name(i: usize) -> String {
    format!("ws-{i:04}")
}

/// Every third instance (`ws-0000`, `ws-0003`, ...) keeps its first spec for the whole run.
fn changes(i: usize) -> bool {
    !i.is_multiple_of(3)
}

/// Runs the chaos plan of `options` with `workload` on `cluster` (one of the caller's own) and
/// reports what held. See the module docs for the steps.
///
/// ```no_run
/// # async fn demo(cluster: &cuebe_testkit::cluster::TestCluster, workload: &cuebe_testkit::chaos::Workload) -> Result<(), cuebe_testkit::chaos::ChaosError> {
/// let options = cuebe_testkit::chaos::ChaosOptions::new(1, "target/chaos");
/// let report = cuebe_testkit::chaos::run(cluster, workload, &options).await?;
/// if !report.passed() {
///     eprintln!("{report}");
/// }
/// # Ok(()) }
/// ```
pub async fn run(
    cluster: &TestCluster,
    workload: &Workload,
    options: &ChaosOptions,
) -> Result<ChaosReport, ChaosError> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(options.seed);
    let resource = crd_resource(&workload.crd)?;
    cluster
        .apply_crds(
            std::slice::from_ref(&workload.crd),
            Instant::now() + Duration::from_secs(60),
        )
        .await?;
    let ns = cluster.namespace("chaos").await?;
    let client = cluster.client();
    let instances: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    let _ack = workload.ack.then(|| {
        AckStandIn::spawn(
            client.clone(),
            AckStandInOptions {
                delay: Duration::from_secs(1),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
        )
    });
    std::fs::create_dir_all(&options.log_dir).map_err(|source| ChaosError::Io {
        what: format!("creating {}", options.log_dir.display()),
        source,
    })?;
    let log = options
        .log_dir
        .join(format!("chaos-operator-{}.log", options.seed));
    // A new file per run: the evidence of this run only.
    std::fs::File::create(&log).map_err(|source| ChaosError::Io {
        what: format!("creating {}", log.display()),
        source,
    })?;
    let mut operator = OperatorProcess {
        binary: workload.operator.clone(),
        kubeconfig: cluster.kubeconfig().to_path_buf(),
        namespace: ns.clone(),
        log: log.clone(),
        filter: options.operator_log_filter.clone(),
        child: None,
        starts: 0,
        exits: Vec::new(),
    };
    operator.start()?;
    let mut report = ChaosReport {
        seed: options.seed,
        instances: options.instances,
        changed_instances: (0..options.instances).filter(|i| changes(*i)).count(),
        waves: options.waves,
        operator_log: log.clone(),
        ..Default::default()
    };
    tracing::info!(seed = options.seed, namespace = %ns, log = %log.display(), "chaos run: creating the instances");

    // Step 2: create, converge, and record what exists.
    let all: Vec<usize> = (0..options.instances).collect();
    apply_specs(&instances, &resource, workload, &all, 0).await?;
    let baseline_started = Instant::now();
    let waiting = wait_converged(&instances, options.converge_timeout, &mut operator).await;
    if !waiting.is_empty() {
        return Err(ChaosError::NoBaseline(waiting.len(), log));
    }
    report.initial_converge = baseline_started.elapsed();
    let baseline = inventories(&instances).await?;

    // Step 3: the rollout, with the faults shuffled over its waves.
    let mut faults: Vec<Fault> = std::iter::repeat_n(Fault::KillOperator, options.kills as usize)
        .chain(std::iter::repeat_n(
            Fault::RestartApiServer,
            options.apiserver_restarts as usize,
        ))
        .chain(std::iter::repeat_n(
            Fault::RestartEtcd,
            options.etcd_restarts as usize,
        ))
        .collect();
    faults.shuffle(&mut rng);
    let changing: Vec<usize> = all.iter().copied().filter(|i| changes(*i)).collect();
    let waves = options.waves.max(1);
    let rollout_started = Instant::now();
    let mut last_fault = rollout_started;
    for wave in 1..=waves {
        tracing::info!(wave, "chaos run: applying a wave of spec changes");
        apply_specs(&instances, &resource, workload, &changing, wave).await?;
        let share = fault_share(faults.len(), waves, wave);
        for fault in &faults[share] {
            // A random point: somewhere in the passes this wave (or the last restart) set off.
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..4_000))).await;
            if operator.reap() {
                // It crashed by itself (recorded as a failure); the rollout still needs one.
                operator.start()?;
            }
            let in_progress = in_progress(&instances).await;
            let at = rollout_started.elapsed();
            let struck = Instant::now();
            match fault {
                Fault::KillOperator => {
                    operator.kill()?;
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..1_500))).await;
                    operator.start()?;
                }
                Fault::RestartApiServer => cluster.restart_component(Component::ApiServer).await?,
                Fault::RestartEtcd => cluster.restart_component(Component::Etcd).await?,
            }
            let downtime = struck.elapsed();
            tracing::info!(%fault, wave, ?in_progress, ?downtime, "chaos run: fault injected");
            report.faults.push(FaultRecord {
                fault: *fault,
                at,
                wave,
                in_progress,
                downtime,
            });
            last_fault = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..3_000))).await;
    }
    report.rollout = rollout_started.elapsed();

    // Step 4: converge undisturbed.
    tracing::info!("chaos run: faults over, waiting for every instance to converge");
    report.not_converged =
        wait_converged(&instances, options.converge_timeout, &mut operator).await;
    report.converge_after_faults = last_fault.elapsed();

    // Step 5: the invariants, from the cluster.
    let now = inventories(&instances).await?;
    let changed: BTreeSet<String> = changing.iter().map(|i| instance_name(*i)).collect();
    let checks = check(&client, &ns, workload, &resource, &changed, &baseline, &now).await?;
    report.lost = checks.lost;
    report.leaked = checks.leaked;
    report.duplicated = checks.duplicated;
    report.recreated = checks.recreated;
    report.objects_checked = checks.checked;
    report.objects_tracked = checks.tracked;
    operator.reap();
    operator.stop();
    report.operator_starts = operator.starts;
    report.operator_exits = std::mem::take(&mut operator.exits);
    report.evidence = evidence(&report, &log);
    report.duration = started.elapsed();
    Ok(report)
}

/// The faults of `wave` (1-based) when `total` are spread evenly over `waves`.
fn fault_share(total: usize, waves: u32, wave: u32) -> std::ops::Range<usize> {
    let (waves, wave) = (waves as usize, wave as usize);
    (total * (wave - 1) / waves)..(total * wave / waves)
}

/// The custom resource a CRD defines, at its storage version.
fn crd_resource(crd: &CustomResourceDefinition) -> Result<ApiResource, ChaosError> {
    let spec = &crd.spec;
    let version = spec
        .versions
        .iter()
        .find(|v| v.storage)
        .or_else(|| spec.versions.first())
        .ok_or_else(|| ChaosError::Crd("no version".into()))?;
    let gvk = GroupVersionKind::gvk(&spec.group, &version.name, &spec.names.kind);
    Ok(ApiResource::from_gvk_with_plural(&gvk, &spec.names.plural))
}

/// Server-side applies revision `revision` of the given instances, a few at a time, trying a
/// write again for a while if the API server is away.
async fn apply_specs(
    api: &Api<DynamicObject>,
    resource: &ApiResource,
    workload: &Workload,
    which: &[usize],
    revision: u32,
) -> Result<(), ChaosError> {
    futures::stream::iter(which.iter().copied())
        .map(|i| async move {
            let name = instance_name(i);
            let body = serde_json::json!({
                "apiVersion": resource.api_version, "kind": resource.kind,
                "metadata": {"name": name}, "spec": (workload.spec)(i, revision),
            });
            let mut tries = 0;
            loop {
                match api
                    .patch(
                        &name,
                        &PatchParams::apply("cuebe-chaos").force(),
                        &Patch::Apply(&body),
                    )
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(source) if tries >= 60 => {
                        return Err(ChaosError::Kube {
                            what: format!("applying {name} revision {revision}"),
                            source,
                        });
                    }
                    Err(_) => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
        .buffer_unordered(8)
        .try_collect::<()>()
        .await
}

/// The status of an instance, or the default when it has none (yet).
fn status_of(obj: &DynamicObject) -> AbstractionStatus {
    obj.data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default()
}

/// Ready, and the status is about the current spec.
fn converged(obj: &DynamicObject) -> bool {
    let status = status_of(obj);
    status.is_ready() && status.observed_generation == obj.metadata.generation
}

/// How many instances have not converged; `None` when they cannot be listed.
async fn in_progress(api: &Api<DynamicObject>) -> Option<usize> {
    let list = api.list(&ListParams::default()).await.ok()?;
    Some(list.items.iter().filter(|o| !converged(o)).count())
}

/// Waits until every instance converged, or the timeout; returns the ones that did not (name,
/// generations and Ready condition). Restarts the operator if it exited by itself meanwhile.
async fn wait_converged(
    api: &Api<DynamicObject>,
    timeout: Duration,
    operator: &mut OperatorProcess,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut told = Instant::now();
    loop {
        if operator.reap() {
            // A crash is reported; a new process is still owed a chance to converge.
            let _ = operator.start();
        }
        let pending: Option<Vec<String>> = api.list(&ListParams::default()).await.ok().map(|l| {
            l.items
                .iter()
                .filter(|o| !converged(o))
                .map(describe_pending)
                .collect()
        });
        if let Some(p) = &pending
            && told.elapsed() >= Duration::from_secs(10)
        {
            // A slow convergence shows its pace (and the laggards) in the harness's own log.
            told = Instant::now();
            tracing::info!(pending = p.len(), first = ?p.first(), "chaos run: instances still converging");
        }
        match pending {
            Some(p) if p.is_empty() => return p,
            Some(p) if Instant::now() >= deadline => return p,
            None if Instant::now() >= deadline => {
                return vec!["the instances could not be listed".into()];
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn describe_pending(obj: &DynamicObject) -> String {
    let status = status_of(obj);
    let ready = status
        .condition(cuebe::status::ConditionType::Ready)
        .map(|c| format!("Ready={} {}: {}", c.status, c.reason, c.message))
        .unwrap_or_else(|| "no Ready condition".into());
    format!(
        "{} (generation {:?}, observed {:?}): {ready}",
        obj.metadata.name.as_deref().unwrap_or_default(),
        obj.metadata.generation,
        status.observed_generation
    )
}

/// Every instance's inventory, by instance name.
async fn inventories(
    api: &Api<DynamicObject>,
) -> Result<BTreeMap<String, Vec<InventoryEntry>>, ChaosError> {
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|source| ChaosError::Kube {
            what: "listing the instances".into(),
            source,
        })?;
    Ok(list
        .items
        .iter()
        .map(|o| {
            (
                o.metadata.name.clone().unwrap_or_default(),
                status_of(o).inventory,
            )
        })
        .collect())
}

/// An object's identity: API group, kind, namespace, name (the version does not matter).
type Key = (String, String, String, String);

fn group_of(api_version: &str) -> &str {
    api_version
        .rsplit_once('/')
        .map(|(group, _)| group)
        .unwrap_or("")
}

fn entry_key(e: &InventoryEntry) -> Key {
    (
        group_of(&e.api_version).to_string(),
        e.kind.clone(),
        e.namespace.clone(),
        e.name.clone(),
    )
}

fn show(key: &Key) -> String {
    let (group, kind, ns, name) = key;
    let kind = if group.is_empty() {
        kind.clone()
    } else {
        format!("{kind}.{group}")
    };
    if ns.is_empty() {
        format!("{kind} {name}")
    } else {
        format!("{kind} {ns}/{name}")
    }
}

/// A live object: its UID, its instance label and whether the operator's field manager wrote it.
#[derive(Debug, Clone)]
struct Live {
    uid: String,
    instance: Option<String>,
    ours: bool,
}

#[derive(Debug, Default)]
struct Checks {
    lost: Vec<String>,
    leaked: Vec<String>,
    duplicated: Vec<String>,
    recreated: Vec<String>,
    checked: usize,
    tracked: usize,
}

/// Reads the cluster and checks the invariants of the module docs.
async fn check(
    client: &kube::Client,
    ns: &str,
    workload: &Workload,
    resource: &ApiResource,
    changed: &BTreeSet<String>,
    baseline: &BTreeMap<String, Vec<InventoryEntry>>,
    now: &BTreeMap<String, Vec<InventoryEntry>>,
) -> Result<Checks, ChaosError> {
    let mut checks = Checks::default();
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(|source| ChaosError::Kube {
            what: "discovering the cluster's APIs".into(),
            source,
        })?;

    // Everything in the namespace that carries the management labels, of every kind.
    let selector = format!("{INSTANCE_LABEL},{KIND_LABEL}={}", resource.kind);
    let mut labelled: BTreeMap<Key, Live> = BTreeMap::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced || !caps.supports_operation(verbs::LIST) {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let Ok(list) = api
                .list_metadata(&ListParams::default().labels(&selector))
                .await
            else {
                // Some aggregated or odd kinds refuse LIST; none of them is the operator's.
                continue;
            };
            for obj in list.items {
                let meta = obj.metadata;
                let key = (
                    ar.group.clone(),
                    ar.kind.clone(),
                    ns.to_string(),
                    meta.name.clone().unwrap_or_default(),
                );
                let ours = meta
                    .managed_fields
                    .iter()
                    .flatten()
                    .any(|m| m.manager.as_deref() == Some(workload.field_manager.as_str()));
                labelled.insert(
                    key,
                    Live {
                        uid: meta.uid.unwrap_or_default(),
                        instance: meta.labels.and_then(|mut l| l.remove(INSTANCE_LABEL)),
                        ours,
                    },
                );
            }
        }
    }

    // The live object behind each key the inventories name (now and before the rollout),
    // labelled or not.
    let mut live: BTreeMap<Key, Option<String>> = BTreeMap::new();
    let keys: BTreeSet<Key> = now
        .values()
        .chain(baseline.values())
        .flatten()
        .map(entry_key)
        .collect();
    for key in keys {
        let uid = match labelled.get(&key) {
            Some(l) => Some(l.uid.clone()),
            None => live_uid(client, &discovery, &key).await?,
        };
        live.insert(key, uid);
    }

    // Nothing lost; nothing recorded twice.
    let mut by_key: BTreeMap<Key, Vec<String>> = BTreeMap::new();
    let mut by_uid: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (instance, entries) in now {
        let mut nodes: BTreeMap<&str, usize> = BTreeMap::new();
        for e in entries {
            checks.checked += 1;
            *nodes.entry(e.node_id.as_str()).or_default() += 1;
            let key = entry_key(e);
            let owner = format!("{instance} node {}", e.node_id);
            by_key.entry(key.clone()).or_default().push(owner.clone());
            if !e.uid.is_empty() {
                by_uid.entry(e.uid.clone()).or_default().push(owner.clone());
            }
            match live.get(&key).cloned().flatten() {
                None => checks
                    .lost
                    .push(format!("{} ({owner}): not found", show(&key))),
                Some(uid) if uid != e.uid => checks.lost.push(format!(
                    "{} ({owner}): recorded UID {}, the live object's is {uid}",
                    show(&key),
                    e.uid
                )),
                Some(_) => {}
            }
        }
        for (node, n) in nodes {
            if n > 1 {
                checks
                    .duplicated
                    .push(format!("{instance}: node {node} recorded {n} times"));
            }
        }
    }
    for (key, owners) in &by_key {
        if owners.len() > 1 {
            checks
                .duplicated
                .push(format!("{} recorded by {}", show(key), owners.join(", ")));
        }
    }
    for (uid, owners) in &by_uid {
        if owners.len() > 1 {
            checks
                .duplicated
                .push(format!("UID {uid} recorded by {}", owners.join(", ")));
        }
    }

    // Nothing leaked: every labelled object of the operator's is in its instance's inventory.
    let recorded_by: BTreeMap<&str, &str> = now
        .iter()
        .flat_map(|(instance, entries)| {
            entries
                .iter()
                .map(move |e| (e.uid.as_str(), instance.as_str()))
        })
        .collect();
    for (key, obj) in &labelled {
        if !obj.ours {
            continue;
        }
        checks.checked += 1;
        let label = obj.instance.as_deref().unwrap_or_default();
        match recorded_by.get(obj.uid.as_str()) {
            None => checks.leaked.push(format!(
                "{} (UID {}, labelled for {label}): in no inventory",
                show(key),
                obj.uid
            )),
            Some(owner) if *owner != label => checks.leaked.push(format!(
                "{} (UID {}): labelled for {label}, recorded by {owner}",
                show(key),
                obj.uid
            )),
            Some(_) => {}
        }
    }

    // Nothing recreated: objects no spec change could remove kept their UID.
    for (instance, entries) in baseline {
        for e in entries {
            if changed.contains(instance) && workload.recreatable_nodes.contains(&e.node_id) {
                continue;
            }
            checks.tracked += 1;
            let key = entry_key(e);
            match live.get(&key).cloned().flatten() {
                Some(uid) if uid == e.uid => {}
                Some(uid) => checks.recreated.push(format!(
                    "{} ({instance} node {}): UID {} before the rollout, {uid} now",
                    show(&key),
                    e.node_id,
                    e.uid
                )),
                None => checks.recreated.push(format!(
                    "{} ({instance} node {}): UID {} before the rollout, gone now",
                    show(&key),
                    e.node_id,
                    e.uid
                )),
            }
        }
    }
    Ok(checks)
}

/// The UID of the object at `key`, read directly (for objects without the labels).
async fn live_uid(
    client: &kube::Client,
    discovery: &Discovery,
    key: &Key,
) -> Result<Option<String>, ChaosError> {
    let (group, kind, ns, name) = key;
    let found = discovery
        .groups()
        .find(|g| g.name() == group)
        .and_then(|g| {
            g.recommended_resources()
                .into_iter()
                .find(|(ar, _)| &ar.kind == kind)
        });
    let Some((ar, caps)) = found else {
        // The cluster does not serve the kind (any more): nothing of it exists.
        return Ok(None);
    };
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => Api::namespaced_with(client.clone(), ns, &ar),
        Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    api.get_metadata_opt(name)
        .await
        .map(|o| o.map(|o| o.metadata.uid.unwrap_or_default()))
        .map_err(|source| ChaosError::Kube {
            what: format!("reading {}", show(key)),
            source,
        })
}

/// The operator's log lines that mention each instance named in a failure (the last 20 each).
fn evidence(report: &ChaosReport, log: &Path) -> BTreeMap<String, Vec<String>> {
    let failures = report
        .not_converged
        .iter()
        .chain(&report.lost)
        .chain(&report.leaked)
        .chain(&report.duplicated)
        .chain(&report.recreated);
    let mut names: BTreeSet<String> = BTreeSet::new();
    for failure in failures {
        for word in failure.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
            if word.len() == 7 && word.starts_with("ws-") {
                names.insert(word.to_string());
            }
        }
    }
    // Ten instances are plenty to diagnose from; the rest are in the log.
    let names: Vec<String> = names.into_iter().take(10).collect();
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if names.is_empty() {
        return found;
    }
    let Ok(file) = std::fs::File::open(log) else {
        return found;
    };
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        for name in &names {
            if line.contains(name.as_str()) {
                let lines = found.entry(name.clone()).or_default();
                lines.push(line.clone());
                if lines.len() > 20 {
                    lines.remove(0);
                }
            }
        }
    }
    found
}

/// The operator as a child process: started, SIGKILLed, started again.
struct OperatorProcess {
    binary: PathBuf,
    kubeconfig: PathBuf,
    namespace: String,
    log: PathBuf,
    filter: String,
    child: Option<Child>,
    starts: u32,
    exits: Vec<String>,
}

impl OperatorProcess {
    /// Starts a new operator process, its output appended to the log after a header line.
    fn start(&mut self) -> Result<(), ChaosError> {
        let io = |what: String| move |source| ChaosError::Io { what, source };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io(format!("opening {}", self.log.display())))?;
        self.starts += 1;
        writeln!(file, "=== chaos: operator process #{} starts", self.starts)
            .map_err(io(format!("writing {}", self.log.display())))?;
        let stderr = file
            .try_clone()
            .map_err(io(format!("opening {}", self.log.display())))?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(["run", "--namespace", &self.namespace])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", &self.filter)
            // A file, read by people and grepped for evidence: no colour codes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr);
        // Started like the cluster's components, so it dies with this process too.
        let child = crate::cluster::spawn(cmd)
            .map_err(io(format!("starting {}", self.binary.display())))?;
        tracing::info!(
            pid = child.id(),
            n = self.starts,
            "chaos run: operator started"
        );
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL (std's `Child::kill` on Unix) and reap it.
    fn kill(&mut self) -> Result<(), ChaosError> {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            child.kill().map_err(|source| ChaosError::Io {
                what: format!("sending SIGKILL to the operator (pid {pid})"),
                source,
            })?;
            let _ = child.wait();
            if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(&self.log) {
                let _ = writeln!(
                    file,
                    "=== chaos: operator process #{} SIGKILLed",
                    self.starts
                );
            }
        }
        Ok(())
    }

    /// Whether the process exited by itself (recorded in `exits`); it is then gone.
    fn reap(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                tracing::warn!(pid = child.id(), %status, "chaos run: the operator exited by itself");
                self.exits.push(format!(
                    "process #{} (pid {}): {status}",
                    self.starts,
                    child.id()
                ));
                self.child = None;
                true
            }
            _ => false,
        }
    }

    fn stop(&mut self) {
        let _ = self.kill();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
