//! cuebe side by side with kro: N instances of the same objects (what a default WebService
//! renders: ServiceAccount, Deployment, Service, PodDisruptionBudget) through the WebService
//! operator, through kro at its defaults and through kro tuned
//! (`--dynamic-controller-concurrent-reconciles`), each on a fresh local control plane.
//!
//! ```sh
//! cargo bench -p webservice-operator --bench kro_side_by_side               # N = 100
//! cargo bench -p webservice-operator --bench kro_side_by_side -- --n 1000   # or CUEBE_KRO_BENCH_N=1000
//! cargo bench -p webservice-operator --bench kro_side_by_side -- --smoke    # N = 3, 3 s steady state
//! ```
//!
//! Options: `--n N` (repeatable; `CUEBE_KRO_BENCH_N=100,1000`), `--steady SECS` (the
//! steady-state window, default 60; `CUEBE_KRO_BENCH_STEADY_SECS`), `--tuned C` (kro's tuned
//! concurrency, default 16), `--only cuebe,kro,kro-tuned`, `--timeout SECS` (how long one
//! contender may take to converge, default 900; past it the row says how many were Ready).
//!
//! Printed per N, as a Markdown table with ratios against cuebe: time from the first create to
//! every instance's `Ready` condition True; the controller's API requests by HTTP method while
//! converging (cuebe: counted by a layer on its client; kro: its own client-go
//! `rest_client_requests_total`; a watch is a GET on both sides); its writes per minute in the
//! steady state that follows (nothing changes; kro and the operator keep running); its resident
//! memory at the end and at its peak. Both controllers run as their own processes (the operator
//! is this bench re-executed as a child, `Operator::<WebService>` on a counting client, as
//! `webservice-operator run` builds it), watch every namespace, and run without leader election.
//! kro runs with its Helm chart's settings (log level info) otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/counting_client.rs"]
mod counting_client;
#[path = "../tests/support/side_by_side.rs"]
mod side_by_side;
use counting_client::{Counts, counting_client};

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cuebe_testkit::cluster::{ClusterOptions, TestCluster};
use cuebe_testkit::kro::{KRO_VERSION, proc_status_kib};
use side_by_side::{Figures, count_objects, create_instances, delta, wait_all_ready};
use webservice_operator::WebService;

/// The hidden flag that makes this binary the cuebe operator process.
const CHILD_FLAG: &str = "--cuebe-operator-child";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    Cuebe,
    KroDefault,
    KroTuned,
}

impl Contender {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "cuebe" => Some(Self::Cuebe),
            "kro" => Some(Self::KroDefault),
            "kro-tuned" => Some(Self::KroTuned),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Args {
    sizes: Vec<usize>,
    steady: Duration,
    tuned: usize,
    timeout: Duration,
    contenders: Vec<Contender>,
}

fn parse_args() -> Args {
    let env_sizes: Vec<usize> = std::env::var("CUEBE_KRO_BENCH_N")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_default();
    let mut args = Args {
        sizes: env_sizes,
        steady: Duration::from_secs(
            std::env::var("CUEBE_KRO_BENCH_STEADY_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(60),
        ),
        tuned: 16,
        timeout: Duration::from_secs(900),
        contenders: vec![Contender::Cuebe, Contender::KroDefault, Contender::KroTuned],
    };
    let mut smoke = false;
    let mut it = std::env::args().skip(1);
    let number = |flag: &str, value: Option<String>| -> u64 {
        value
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} takes a whole number"))
    };
    let mut sizes = Vec::new();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // cargo bench passes --bench to every harness = false target.
            "--bench" => {}
            "--smoke" => smoke = true,
            "--n" => sizes.push(number("--n", it.next()) as usize),
            "--steady" => args.steady = Duration::from_secs(number("--steady", it.next())),
            "--tuned" => args.tuned = number("--tuned", it.next()) as usize,
            "--timeout" => args.timeout = Duration::from_secs(number("--timeout", it.next())),
            "--only" => {
                let list = it.next().unwrap_or_default();
                args.contenders = list
                    .split(',')
                    .map(|c| {
                        Contender::parse(c).unwrap_or_else(|| {
                            panic!("--only: {c:?} is not one of cuebe, kro, kro-tuned")
                        })
                    })
                    .collect();
            }
            other => match other.parse() {
                Ok(n) => sizes.push(n),
                Err(_) => panic!("unknown argument {other:?} (see the bench's docs)"),
            },
        }
    }
    if !sizes.is_empty() {
        args.sizes = sizes;
    }
    if smoke {
        args.sizes = vec![3];
        args.steady = Duration::from_secs(3);
    }
    if args.sizes.is_empty() {
        args.sizes = vec![100];
    }
    args
}

// ---- the cuebe operator as a child process -------------------------------------------------

/// The child: runs the operator on every namespace, says `ready` once it watches WebServices,
/// then answers each line on stdin with its counts as one JSON line; exits when stdin closes
/// (the bench ended, however it ended).
fn cuebe_operator_child(kubeconfig: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let counts: Counts = Arc::default();
    runtime.block_on(async {
        let client = counting_client(kubeconfig, counts.clone());
        tokio::spawn(cuebe::controller::Operator::<WebService>::new(client).run());
        let deadline = Instant::now() + Duration::from_secs(60);
        while !counts.lock().unwrap().contains_key("WATCH webservices") {
            assert!(
                Instant::now() < deadline,
                "the operator never watched WebServices"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        let snapshot = counts.lock().unwrap().clone();
        writeln!(out, "{}", serde_json::to_string(&snapshot).unwrap()).unwrap();
        out.flush().unwrap();
    }
    drop(runtime);
}

struct CuebeOperator {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl CuebeOperator {
    fn start(kubeconfig: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg(CHILD_FLAG)
            .arg(kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the operator child did not start");
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Its counts so far (verb and what → requests).
    fn counts(&mut self) -> BTreeMap<String, u64> {
        tokio::task::block_in_place(|| {
            let stdin = self.stdin.as_mut().unwrap();
            writeln!(stdin, "counts").unwrap();
            stdin.flush().unwrap();
            let mut line = String::new();
            self.stdout.read_line(&mut line).unwrap();
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for CuebeOperator {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `WATCH webservices` → `GET`, `PATCH status` → `PATCH`: by HTTP method, as kro counts.
fn by_method(detail: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut methods = BTreeMap::new();
    for (key, n) in detail {
        let verb = key.split(' ').next().unwrap_or(key);
        let method = if verb == "WATCH" { "GET" } else { verb };
        *methods.entry(method.to_string()).or_insert(0) += n;
    }
    methods
}

async fn cuebe_run(
    cluster: &TestCluster,
    n: usize,
    steady_window: Duration,
    timeout: Duration,
) -> Figures {
    cluster
        .apply_crds(
            &[cuebe::abstraction::crd::<WebService>()],
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
    let mut operator = CuebeOperator::start(cluster.kubeconfig());
    let admin = cluster.client();
    let namespace = cluster.namespace("cuebe").await.unwrap();
    let resource = side_by_side::webservice_resource();
    let before = operator.counts();
    let started = Instant::now();
    create_instances(&admin, &resource, &namespace, n).await;
    let (ready, waited) = wait_all_ready(&admin, &resource, &namespace, n, started, timeout).await;
    let converged = operator.counts();
    let served = side_by_side::apiserver_requests(&admin).await;
    let start = by_method(&converged);
    let steady = side_by_side::observe_steady(steady_window, &start, || {
        let counts = by_method(&operator.counts());
        async move { counts }
    })
    .await;
    let steady_apiserver_writes = side_by_side::apiserver_writes(&delta(
        &side_by_side::apiserver_requests(&admin).await,
        &served,
    ));
    let detail = delta(&converged, &before);
    Figures {
        contender: "cuebe".into(),
        n,
        namespace: namespace.clone(),
        all_ready: (ready == n).then_some(waited),
        ready,
        waited,
        requests: by_method(&detail),
        detail,
        steady,
        steady_apiserver_writes,
        rss_kib: proc_status_kib(operator.pid(), "VmRSS").unwrap_or(0),
        peak_rss_kib: proc_status_kib(operator.pid(), "VmHWM").unwrap_or(0),
        objects: count_objects(&admin, &namespace).await,
    }
}

// ---- the table -------------------------------------------------------------------------------

fn ratio(value: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => format!("{:.2}", value / b),
        _ => "–".into(),
    }
}

fn print_table(n: usize, rows: &[Figures]) {
    let cuebe = rows.iter().find(|r| r.contender == "cuebe");
    let objects = rows
        .first()
        .map(|r| {
            r.objects
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    println!();
    println!("N = {n} (objects: {objects})");
    println!();
    println!(
        "| contender | all Ready | × cuebe | requests while converging (GET / POST / PUT / PATCH / DELETE) | writes | × cuebe | steady-state writes/min: whole window (second half) | RSS at end (peak), MiB | × cuebe |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in rows {
        let secs = r.all_ready.map(|d| d.as_secs_f64());
        let ready = match secs {
            Some(s) => format!("{s:.1} s"),
            None => format!(
                "{}/{} Ready after {:.0} s",
                r.ready,
                r.n,
                r.waited.as_secs_f64()
            ),
        };
        let by = |m: &str| r.requests.get(m).copied().unwrap_or(0);
        println!(
            "| {} | {ready} | {} | {} ({} / {} / {} / {} / {}) | {} | {} | {:.1} ({:.1}) | {:.0} ({:.0}) | {} |",
            r.contender,
            secs.map_or("–".into(), |s| ratio(
                s,
                cuebe.and_then(|c| c.all_ready).map(|d| d.as_secs_f64())
            )),
            r.total_requests(),
            by("GET"),
            by("POST"),
            by("PUT"),
            by("PATCH"),
            by("DELETE"),
            r.writes(),
            ratio(r.writes() as f64, cuebe.map(|c| c.writes() as f64)),
            r.steady_writes_per_minute(),
            r.settled_writes_per_minute(),
            r.rss_kib as f64 / 1024.0,
            r.peak_rss_kib as f64 / 1024.0,
            ratio(r.rss_kib as f64, cuebe.map(|c| c.rss_kib as f64)),
        );
    }
    println!();
    for r in rows {
        println!(
            "{}: steady state {} requests in {:.0} s ({} writes; per 5 s: {:?}); the API server's writes then (all clients): {:?}{}",
            r.contender,
            r.steady_requests(),
            r.steady_window().as_secs_f64(),
            r.steady_writes(),
            r.steady_writes_per_sample(),
            r.steady_apiserver_writes,
            if r.detail.is_empty() {
                String::new()
            } else {
                format!("; while converging, by what: {:?}", r.detail)
            }
        );
    }
}

fn main() {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some(CHILD_FLAG) {
        let kubeconfig = argv.next().expect("the child is given a kubeconfig");
        cuebe_operator_child(Path::new(&kubeconfig));
        return;
    }
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "kro side by side: kro {KRO_VERSION}, sizes {:?}, steady-state window {} s, kro tuned at concurrency {}, convergence timeout {} s",
        args.sizes,
        args.steady.as_secs(),
        args.tuned,
        args.timeout.as_secs()
    );
    runtime.block_on(async {
        for &n in &args.sizes {
            let mut rows = Vec::new();
            for &contender in &args.contenders {
                // A fresh control plane per contender: kro watches every namespace, and the
                // previous contender's pods would still be on the node.
                let run_started = Instant::now();
                let cluster = TestCluster::start(ClusterOptions::default())
                    .await
                    .expect("control plane starts");
                let figures = match contender {
                    Contender::Cuebe => cuebe_run(&cluster, n, args.steady, args.timeout).await,
                    Contender::KroDefault | Contender::KroTuned => {
                        let concurrency = if contender == Contender::KroTuned {
                            args.tuned
                        } else {
                            1
                        };
                        let (figures, kro) = side_by_side::kro_run(
                            &cluster,
                            n,
                            concurrency,
                            args.steady,
                            args.timeout,
                        )
                        .await;
                        drop(kro);
                        figures
                    }
                };
                println!(
                    "  {} at N = {n}: {} ({} of {n} Ready in {:.1} s; run took {:.0} s with the cluster)",
                    figures.contender,
                    if figures.all_ready.is_some() { "converged" } else { "NOT converged" },
                    figures.ready,
                    figures.waited.as_secs_f64(),
                    run_started.elapsed().as_secs_f64()
                );
                rows.push(figures);
                drop(cluster);
            }
            print_table(n, &rows);
        }
    });
}
