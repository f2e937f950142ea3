//! Converges N WebServices on the local control plane and prints the figures, side by side with
//! the baseline: the same rendered objects applied with `kubectl apply --server-side` in
//! dependency order.
//!
//! ```sh
//! cargo bench -p webservice-operator --bench converge                  # N = 100 and 500
//! cargo bench -p webservice-operator --bench converge -- 1000          # other sizes
//! cargo bench -p webservice-operator --bench converge -- 10000 --no-baseline --steady-secs=120
//! cargo bench -p webservice-operator --bench converge -- 1000 --concurrent-reconciles=16
//! ```
//!
//! Each timed run (the operator's, the baseline's, the gating bursts) starts once the control
//! plane is quiet (under 30 requests a second to the API server over 4 s), so that no run pays
//! for the controllers still working through the one before it; the wait and the watches open
//! at that moment are printed.
//!
//! Printed per N:
//! - time to all Ready, and the baseline's time with the ratio (unless `--no-baseline`);
//! - what each convergence cost the API server: its CPU seconds and where its request time went
//!   (by verb and resource, every client's requests);
//! - API requests by verb made by the operator while converging (a counting layer on its client);
//! - the operator's memory: the bench process's RSS (the operator runs in-process) before it
//!   started and once all are Ready, with the render cache's entries and estimated bytes;
//! - restart: a new operator over the converged instances: the time until each has been
//!   reconciled once (re-verified), and its requests (target: 0 writes, 0 GETs of children),
//!   beside its floor: N × one render alone (nothing cached) / the cores;
//! - steady state: requests per minute over `--steady-secs` (default 60) with nothing changing
//!   (a Ready instance is resynced every 5 minutes);
//! - watch-driven gating: for 30 extra WebServices with 2 replicas (a PodDisruptionBudget gated
//!   on the Deployment), the time from the bench seeing a Deployment become Available to it
//!   seeing the PDB created, both through watches (p50 / p95 / max).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/counting_client.rs"]
mod counting;
use counting::Counts;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cuebe::renderer::Capabilities;
use cuebe_testkit::cluster::{ClusterOptions, TestCluster};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use webservice_operator::WebService;

fn counting_client(cluster: &TestCluster, counts: Counts) -> Client {
    counting::counting_client(cluster.kubeconfig(), counts)
}

/// Resident memory of this process now (`VmRSS`), in MiB.
fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// The process's memory by owner, in MiB: the CUE evaluators' Go runtime (from the operator's
/// metrics) and Rust's allocator (glibc's own accounting: in use, and free but still held).
fn memory_breakdown(metrics: &str) -> String {
    let go = |class: &str| {
        sample(
            metrics,
            "cuebe_cue_go_memory_bytes",
            &[&format!("class=\"{class}\"")],
        ) / 1048576.0
    };
    // SAFETY: mallinfo2 only reads glibc's allocator statistics.
    let info = unsafe { libc::mallinfo2() };
    let mib = |bytes: usize| bytes as f64 / 1048576.0;
    format!(
        "Go runtime resident {:.1} MiB (live heap {:.1}, goal {:.1}); malloc in use {:.1} MiB, free but held {:.1} MiB (arenas {:.1}, mmapped {:.1})",
        go("resident"),
        go("heap_live"),
        go("heap_goal"),
        mib(info.uordblks + info.hblkhd),
        mib(info.fordblks),
        mib(info.arena),
        mib(info.hblkhd),
    )
}

fn spec() -> serde_json::Value {
    serde_json::json!({"image": "registry.example.com/web:1.4.2", "replicas": 1, "resources": {"cpu": "50m", "memory": "64Mi"}})
}

/// The operator's own metrics, read the way Prometheus would.
async fn scrape(addr: SocketAddr) -> String {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let _ = stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await;
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    text
}

/// The values of the samples of `name` whose labels contain every one of `labels`.
fn samples<'a>(text: &'a str, name: &'a str, labels: &'a [&str]) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(move |l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

/// The value of the first sample of `name` whose labels contain every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    samples(text, name, labels).next().unwrap_or(0.0)
}

/// The API server's own metrics: the sum of the samples of `series` whose labels contain
/// every one of `labels`; `None` when the scrape failed or has no such sample.
async fn apiserver_metric(cluster: &TestCluster, series: &str, labels: &[&str]) -> Option<f64> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = cluster.client().request_text(request).await.ok()?;
    let found: Vec<f64> = samples(&text, series, labels).collect();
    (!found.is_empty()).then(|| found.iter().sum())
}

/// What the API server has spent so far: its CPU seconds, and the time it took over the
/// requests it answered by verb and resource (`apiserver_request_duration_seconds_sum`), for
/// every client. Two snapshots around a run give what that run cost the API server.
struct ApiserverSpent {
    cpu_seconds: f64,
    by_request: BTreeMap<String, f64>,
}

async fn apiserver_spent(cluster: &TestCluster) -> Option<ApiserverSpent> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = cluster.client().request_text(request).await.ok()?;
    let mut by_request = BTreeMap::new();
    for s in cuebe_testkit::metrics::samples(&text, "apiserver_request_duration_seconds_sum") {
        let label = |name: &str| s.label(name).unwrap_or_default();
        let (verb, resource, sub) = (label("verb"), label("resource"), label("subresource"));
        let key = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        *by_request.entry(key).or_insert(0.0) += s.value;
    }
    Some(ApiserverSpent {
        cpu_seconds: sample(&text, "process_cpu_seconds_total", &[]),
        by_request,
    })
}

/// What the API server spent between two snapshots, or why it cannot be said.
fn spent_between(before: Option<ApiserverSpent>, after: Option<ApiserverSpent>) -> String {
    match (before, after) {
        (Some(before), Some(after)) => after.since(&before),
        _ => "unavailable (a scrape of the API server's metrics failed)".to_string(),
    }
}

impl ApiserverSpent {
    /// What was spent between `before` and `self`: CPU seconds, and the requests that took
    /// most of the API server's time (watches left out: they stay open for the whole run).
    fn since(&self, before: &ApiserverSpent) -> String {
        let mut spent: Vec<(&String, f64)> = self
            .by_request
            .iter()
            .filter(|(k, _)| !k.starts_with("WATCH"))
            .map(|(k, v)| (k, v - before.by_request.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, v)| *v > 0.0)
            .collect();
        spent.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = spent.iter().map(|(_, v)| v).sum();
        let top: Vec<String> = spent
            .iter()
            .take(10)
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect();
        format!(
            "{:.1} CPU-seconds; request time {total:.1} s, most in: {}",
            self.cpu_seconds - before.cpu_seconds,
            top.join(", ")
        )
    }
}

/// Requests the API server has answered so far.
async fn apiserver_requests(cluster: &TestCluster) -> Option<f64> {
    apiserver_metric(cluster, "apiserver_request_total{", &[]).await
}

/// Waits until the control plane is quiet: fewer than 30 requests a second reach the API
/// server over 4 s (kwok's heartbeats and the controllers' leases are a few). A timed run that
/// starts while the controllers still work through the run before it (its pods, endpoint
/// slices, Deployment statuses) pays for that run; each run starts from the same quiet. Gives
/// up after two minutes and says so. Returns how long it waited.
async fn settle(cluster: &TestCluster) -> Duration {
    let started = Instant::now();
    let mut before = apiserver_requests(cluster).await;
    loop {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let now = apiserver_requests(cluster).await;
        // A failed scrape (or counters that went back) says nothing: look again.
        let rate = match (before, now) {
            (Some(b), Some(n)) if n >= b => (n - b) / 4.0,
            _ => f64::INFINITY,
        };
        if rate < 30.0 {
            // Watches left open by a run before would cost every later write: none should be.
            let watches = apiserver_metric(
                cluster,
                "apiserver_longrunning_requests{",
                &["verb=\"WATCH\""],
            )
            .await
            .unwrap_or_default();
            println!("  (control plane quiet: {rate:.0} requests/s, {watches} watches open)");
            return started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(120) {
            println!(
                "  (the control plane still served {rate:.0} requests/s after 2 min; starting anyway)"
            );
            return started.elapsed();
        }
        before = now;
    }
}

struct Running {
    task: tokio::task::JoinHandle<()>,
    metrics: SocketAddr,
}

async fn start_operator(cluster: &TestCluster, ns: &str, counts: Counts) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = listener.local_addr().unwrap();
    let client = counting_client(cluster, counts);
    let mut operator = cuebe::controller::Operator::<WebService>::new(client)
        .namespace(ns.to_string())
        .serve_metrics(listener);
    if let Some(n) = concurrent_reconciles() {
        operator = operator.concurrent_reconciles(n);
    }
    let task = tokio::spawn(async move {
        let _ = operator.run().await;
    });
    Running { task, metrics }
}

/// Waits until the operator's metric `name` (the first sample with `label`) reaches `n`, read
/// from its own `/metrics` every `poll` (no list of 10,000 objects every poll).
async fn wait_for_metric(op: &Running, name: &str, label: &str, n: usize, poll: Duration) {
    let started = Instant::now();
    loop {
        let text = scrape(op.metrics).await;
        let value = sample(&text, name, &[label]) as usize;
        if value >= n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "{name}{label}: {value}/{n} after an hour"
        );
        tokio::time::sleep(poll).await;
    }
}

/// Waits until the operator reports `n` instances Ready (its `cuebe_instances` gauge).
async fn wait_all_ready(op: &Running, n: usize) {
    let ready = "state=\"Ready\"";
    wait_for_metric(op, "cuebe_instances{", ready, n, Duration::from_millis(500)).await;
}

async fn create_instances(cluster: &TestCluster, ns: &str, n: usize, spec: serde_json::Value) {
    let api: Api<WebService> = Api::namespaced(cluster.client(), ns);
    futures::stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let (api, spec) = (api.clone(), spec.clone());
            async move {
                let name = format!("svc-{i}");
                let body = serde_json::json!({"apiVersion": "platform.example.com/v1alpha1", "kind": "WebService", "metadata": {"name": name}, "spec": spec});
                api.patch(&name, &PatchParams::apply("bench"), &Patch::Apply(&body))
                    .await
                    .unwrap();
            }
        })
        .await;
}

struct OperatorFigures {
    converge: Duration,
    converge_counts: BTreeMap<String, u64>,
    converge_apiserver: String,
    rss_before: u64,
    rss_ready: u64,
    cache: String,
    memory: String,
    restart: Duration,
    restart_counts: BTreeMap<String, u64>,
    memory_after_restart: String,
    steady: Duration,
    steady_counts: BTreeMap<String, u64>,
}

async fn operator_run(cluster: &TestCluster, n: usize, steady: Duration) -> OperatorFigures {
    let ns = cluster.namespace(&format!("op{n}")).await.unwrap();
    let counts: Counts = Arc::default();
    let rss_before = rss_mib();
    let settled = settle(cluster).await;
    println!(
        "  (operator run starts after {:.0}s of settling)",
        settled.as_secs_f64()
    );
    let op = start_operator(cluster, &ns, counts.clone()).await;
    let spent_before = apiserver_spent(cluster).await;
    let started = Instant::now();
    create_instances(cluster, &ns, n, spec()).await;
    wait_all_ready(&op, n).await;
    let converge = started.elapsed();
    let converge_apiserver = spent_between(spent_before, apiserver_spent(cluster).await);
    let converge_counts = std::mem::take(&mut *counts.lock().unwrap());
    let rss_ready = rss_mib();
    let text = scrape(op.metrics).await;
    let cache = format!(
        "{} renders, {:.1} MiB estimated",
        sample(&text, "cuebe_render_cache_entries", &[]),
        sample(&text, "cuebe_render_cache_bytes", &[]) / 1048576.0
    );
    let mut memory = memory_breakdown(&text);
    heap_profile_now();
    if let Some(dir) = go_heap_profile_dir() {
        // The metric's live heap is the last collection's; the profile collects first, so the
        // figure read after it is what the evaluators really keep.
        let path = dir.join(format!("go-heap-{n}.pprof"));
        cuebe::cue::write_go_heap_profile(&path).expect("Go heap profile written");
        let live = cuebe::cue::bridge_memory().heap_live as f64 / 1048576.0;
        memory.push_str(&format!(
            "; Go live heap after a forced collection {live:.1} MiB (profile {})",
            path.display()
        ));
    }

    // Restart: a new operator re-verifies every converged instance. (Said as it begins, for a
    // profiler to attach to this part alone.)
    println!("  (restart begins)");
    op.task.abort();
    let _ = op.task.await;
    counts.lock().unwrap().clear();
    let started = Instant::now();
    let op = start_operator(cluster, &ns, counts.clone()).await;
    // Every instance reconciled once by the new operator.
    let success = "result=\"success\"";
    wait_for_metric(
        &op,
        "cuebe_reconciles_total{",
        success,
        n,
        Duration::from_millis(200),
    )
    .await;
    let restart = started.elapsed();
    // Late requests of the restart's passes count towards it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restart_counts = std::mem::take(&mut *counts.lock().unwrap());
    // The first operator is gone and the second holds the same instances: about the same
    // memory as before shows the dropped one freed its stores and evaluators.
    let memory_after_restart = memory_breakdown(&scrape(op.metrics).await);

    tokio::time::sleep(steady).await;
    let steady_counts = std::mem::take(&mut *counts.lock().unwrap());
    op.task.abort();
    let _ = op.task.await;
    OperatorFigures {
        converge,
        converge_counts,
        converge_apiserver,
        rss_before,
        rss_ready,
        memory,
        cache,
        restart,
        restart_counts,
        memory_after_restart,
        steady,
        steady_counts,
    }
}

/// Time from a Deployment seen Available to its PodDisruptionBudget seen created (both through
/// watches of the bench), for `n` WebServices with 2 replicas: p50, p95, max in ms; and the
/// time from creating the instances to all of them Ready, in ms.
async fn gating_latency(cluster: &TestCluster, n: usize) -> (u128, u128, u128, u128) {
    let ns = cluster.namespace("gating").await.unwrap();
    let available: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let created: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let deployments: Api<Deployment> = Api::namespaced(cluster.client(), &ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.client(), &ns);
    let seen = available.clone();
    let watch_deployments = tokio::spawn(async move {
        let mut events = watcher(deployments, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Ok(Some(d)) = events.try_next().await {
            if is_available(&d) {
                let name = d.metadata.name.clone().unwrap_or_default();
                seen.lock()
                    .unwrap()
                    .entry(name)
                    .or_insert_with(Instant::now);
            }
        }
    });
    let seen = created.clone();
    let watch_pdbs = tokio::spawn(async move {
        let mut events = watcher(pdbs, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Ok(Some(p)) = events.try_next().await {
            let name = p.metadata.name.clone().unwrap_or_default();
            seen.lock()
                .unwrap()
                .entry(name)
                .or_insert_with(Instant::now);
        }
    });
    let counts: Counts = Arc::default();
    let op = start_operator(cluster, &ns, counts).await;
    let mut two = spec();
    two["replicas"] = serde_json::json!(2);
    let started = Instant::now();
    create_instances(cluster, &ns, n, two).await;
    wait_all_ready(&op, n).await;
    let all_ready = started.elapsed().as_millis();
    op.task.abort();
    watch_deployments.abort();
    watch_pdbs.abort();
    let available = available.lock().unwrap().clone();
    let created = created.lock().unwrap().clone();
    // The Deployment and its PDB share the instance's name.
    let mut delays: Vec<u128> = created
        .iter()
        .filter_map(|(name, at)| {
            Some(
                at.saturating_duration_since(*available.get(name)?)
                    .as_millis(),
            )
        })
        .collect();
    delays.sort_unstable();
    let pick = |q: f64| {
        delays
            .get(((delays.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    (pick(0.5), pick(0.95), pick(1.0), all_ready)
}

fn writes(counts: &BTreeMap<String, u64>) -> u64 {
    counts
        .iter()
        .filter(|(k, _)| {
            !k.ends_with("accessreviews")
                && ["POST", "PUT", "PATCH", "DELETE"]
                    .iter()
                    .any(|v| k.starts_with(v))
        })
        .map(|(_, n)| n)
        .sum()
}

fn per_minute(counts: &BTreeMap<String, u64>, over: Duration) -> BTreeMap<String, f64> {
    counts
        .iter()
        .map(|(k, v)| (k.clone(), *v as f64 * 60.0 / over.as_secs_f64()))
        .collect()
}

fn gets_of_children(counts: &BTreeMap<String, u64>) -> u64 {
    counts.get("GET children").copied().unwrap_or(0)
}

fn kubectl_apply(cluster: &TestCluster, docs: &[serde_json::Value]) {
    let mut child = Command::new(cluster.kubectl())
        .args(["--kubeconfig"])
        .arg(cluster.kubeconfig())
        .args([
            "apply",
            "--server-side",
            "--field-manager=baseline",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for d in docs {
        writeln!(stdin, "---\n{}", serde_json::to_string(d).unwrap()).unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "kubectl apply failed");
}

/// One render of the bench's WebService with nothing cached, in ms: the mean over `samples`
/// distinct instances rendered one after another on a renderer of their own (its first render,
/// which loads the module, not counted). A restart renders every instance once with an empty
/// cache, so it cannot take less than N × this / the cores.
fn render_alone_ms(samples: usize) -> f64 {
    let renderer = cuebe::CueRenderer::new(webservice_operator::platform_modules());
    let input = |i: usize| render_input(&format!("alone-{i}"), "render-alone");
    renderer.render_blocking(&input(samples)).unwrap();
    let started = Instant::now();
    for i in 0..samples {
        renderer.render_blocking(&input(i)).unwrap();
    }
    started.elapsed().as_secs_f64() * 1000.0 / samples as f64
}

/// What the renderer gets for the bench's WebService `name` in `namespace`.
fn render_input(name: &str, namespace: &str) -> cuebe::renderer::RenderInput {
    let ws: WebService = serde_json::from_value(serde_json::json!({
        "apiVersion": "platform.example.com/v1alpha1", "kind": "WebService",
        "metadata": {"name": name, "namespace": namespace}, "spec": spec()
    }))
    .unwrap();
    cuebe::abstraction::render_input(&ws, Capabilities::default(), BTreeMap::new())
}

async fn baseline_run(cluster: &TestCluster, n: usize) -> (Duration, String) {
    let ns = cluster.namespace(&format!("kubectl{n}")).await.unwrap();
    // The same objects the operator applies, rendered offline by the same renderer.
    let renderer = cuebe::CueRenderer::new(webservice_operator::platform_modules());
    let mut waves: Vec<Vec<serde_json::Value>> = Vec::new();
    for i in 0..n {
        let graph = renderer
            .render_blocking(&render_input(&format!("svc-{i}"), &ns))
            .unwrap();
        for (w, ids) in graph.waves().iter().enumerate() {
            if waves.len() <= w {
                waves.push(Vec::new());
            }
            for id in ids {
                waves[w].extend(graph.node(id).and_then(|n| n.object.clone()));
            }
        }
    }
    let settled = settle(cluster).await;
    println!(
        "  (baseline run starts after {:.0}s of settling)",
        settled.as_secs_f64()
    );
    let spent_before = apiserver_spent(cluster).await;
    let started = Instant::now();
    let deployments: Api<Deployment> = Api::namespaced(cluster.client(), &ns);
    for wave in &waves {
        kubectl_apply(cluster, wave);
        // Gate the next wave on this one's Deployments, as the operator's readiness gates do.
        if wave.iter().any(|o| o["kind"] == "Deployment") {
            wait_all_available(&deployments, n).await;
        }
    }
    let took = started.elapsed();
    (
        took,
        spent_between(spent_before, apiserver_spent(cluster).await),
    )
}

/// Whether a Deployment's `Available` condition is True.
fn is_available(d: &Deployment) -> bool {
    d.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("True")
            })
        })
}

/// Waits until `n` Deployments are Available, through one watch as `kubectl wait` would: the
/// baseline's wait must not load the API server with what the operator's run does not have
/// (until 2026-12-03 it listed every Deployment every 250 ms: at 1,000, a list of 1,000
/// Deployments four times a second).
async fn wait_all_available(deployments: &Api<Deployment>, n: usize) {
    let mut available = std::collections::HashSet::new();
    let mut events = watcher(deployments.clone(), watcher::Config::default()).boxed();
    while let Some(event) = events.try_next().await.unwrap() {
        match event {
            // A new list replaces what the watch said so far.
            watcher::Event::Init => available.clear(),
            watcher::Event::InitApply(d) | watcher::Event::Apply(d) => {
                let name = d.metadata.name.clone().unwrap_or_default();
                if is_available(&d) {
                    available.insert(name);
                } else {
                    available.remove(&name);
                }
            }
            watcher::Event::Delete(d) => {
                available.remove(&d.metadata.name.clone().unwrap_or_default());
            }
            watcher::Event::InitDone => {}
        }
        if available.len() == n {
            return;
        }
    }
}

/// With `--features dhat-heap`, every allocation is recorded; the profile is written when the
/// first operator has every instance Ready (what it holds then is what memory per instance is).
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[cfg(feature = "dhat-heap")]
static PROFILER: Mutex<Option<dhat::Profiler>> = Mutex::new(None);

/// Writes the heap profile (once), with every instance of the first size Ready.
fn heap_profile_now() {
    #[cfg(feature = "dhat-heap")]
    if let Some(profiler) = PROFILER.lock().unwrap().take() {
        drop(profiler);
        println!("  heap profile written to dhat-heap.json (what is live now: the `eb` figures)");
    }
}

/// `--concurrent-reconciles=N`: how many instances the operator reconciles at once, when not
/// its default.
fn concurrent_reconciles() -> Option<u16> {
    std::env::args().find_map(|a| a.strip_prefix("--concurrent-reconciles=")?.parse().ok())
}

/// `--go-heap-profile=DIR`: where to write a pprof heap profile of the CUE evaluators' Go
/// runtime at each size, once every instance is Ready.
fn go_heap_profile_dir() -> Option<std::path::PathBuf> {
    std::env::args().find_map(|a| Some(a.strip_prefix("--go-heap-profile=")?.into()))
}

fn main() {
    #[cfg(feature = "dhat-heap")]
    {
        *PROFILER.lock().unwrap() = Some(dhat::Profiler::new_heap());
    }
    // The operator's logs on stderr when asked for (`RUST_LOG=cuebe_runtime=debug`).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![100, 500];
    }
    let baseline = !args.iter().any(|a| a == "--no-baseline");
    let steady = Duration::from_secs(
        args.iter()
            .find_map(|a| a.strip_prefix("--steady-secs=")?.parse().ok())
            .unwrap_or(60),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await.expect("control plane starts");
        cluster
            .apply_crds(&[cuebe::abstraction::crd::<WebService>()], Instant::now() + Duration::from_secs(30))
            .await
            .unwrap();
        println!(
            "converge bench: {} (start-up {:.1}s), operator reconciles {} at once",
            cluster.server(),
            cluster.startup_time().as_secs_f64(),
            concurrent_reconciles().unwrap_or(cuebe::controller::DEFAULT_CONCURRENT_RECONCILES)
        );
        for n in sizes {
            println!("N = {n}");
            let f = operator_run(&cluster, n, steady).await;
            println!("  operator: all Ready in {:.1}s", f.converge.as_secs_f64());
            println!(
                "  operator API requests while converging: {:?} (writes {}, GETs of children {} = {:.2} per instance)",
                f.converge_counts,
                writes(&f.converge_counts),
                gets_of_children(&f.converge_counts),
                gets_of_children(&f.converge_counts) as f64 / n as f64
            );
            println!("  API server while the operator converged: {}", f.converge_apiserver);
            println!(
                "  bench process RSS (operator in-process): {} MiB before the operator, {} MiB with all Ready (+{} MiB); render cache {}",
                f.rss_before,
                f.rss_ready,
                f.rss_ready.saturating_sub(f.rss_before),
                f.cache
            );
            println!("  where the RSS is: {}", f.memory);
            println!(
                "  restart: every instance re-verified in {:.1}s; requests {:?} (writes {}, GETs of children {})",
                f.restart.as_secs_f64(),
                f.restart_counts,
                writes(&f.restart_counts),
                gets_of_children(&f.restart_counts)
            );
            let render_ms = render_alone_ms(200);
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            let floor = n as f64 * render_ms / 1000.0 / cores as f64;
            println!(
                "  restart against its floor: one render alone {render_ms:.2} ms; N x render / cores = {floor:.1}s on {cores} cores; restart / floor = {:.2}",
                f.restart.as_secs_f64() / floor
            );
            println!("  after the restart (the first operator dropped): {}", f.memory_after_restart);
            println!(
                "  steady state over {}s, requests per minute: {:?}",
                f.steady.as_secs(),
                per_minute(&f.steady_counts, f.steady)
            );
            if baseline {
                let (base, base_apiserver) = baseline_run(&cluster, n).await;
                println!("  baseline (kubectl apply --server-side, waves gated on Available): {:.1}s", base.as_secs_f64());
                println!("  API server while the baseline converged: {base_apiserver}");
                println!("  ratio operator/baseline: {:.2}", f.converge.as_secs_f64() / base.as_secs_f64());
            }
        }
        // Few instances at once (the operator idle otherwise), then a burst of 30 on two cores
        // shared with the control plane: what is the executor's own delay, what is load.
        for n in [3, 30] {
            settle(&cluster).await;
            let (p50, p95, max, all_ready) = gating_latency(&cluster, n).await;
            println!("watch-driven gating (Deployment Available -> PDB created, {n} instances): p50 {p50} ms, p95 {p95} ms, max {max} ms; all Ready {all_ready} ms after they were created");
        }
    });
}
