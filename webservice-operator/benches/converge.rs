//! Converges N WebServices on the local control plane and prints the figures, side by side with
//! the baseline: the same rendered objects applied with `kubectl apply --server-side` in
//! dependency order.
//!
//! ```sh
//! cargo bench -p webservice-operator --bench converge            # N = 100 and 500
//! cargo bench -p webservice-operator --bench converge -- 50      # other sizes
//! ```
//!
//! Printed per N: time to all Ready, API requests by verb made by the operator, operator peak
//! RSS (the bench process, which runs the operator in-process), writes during a steady-state
//! resync (a restarted operator reconciling everything that is already converged; target 0), and
//! the baseline's time, with the ratio.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cuebe::renderer::Capabilities;
use cuebe_testkit::cluster::{ClusterOptions, TestCluster};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::client::ClientBuilder;
use webservice_operator::WebService;

type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

fn counting_client(cluster: &TestCluster, counts: Counts) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(cluster.kubeconfig()).unwrap();
    let config = futures::executor::block_on(kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    ))
    .unwrap();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
        let path = req.uri().path();
        let what = if path.ends_with("/status") {
            "status"
        } else if path.contains("/events") {
            "events"
        } else if path.contains("/webservices") {
            "webservices"
        } else {
            "children"
        };
        let verb = if watch {
            format!("WATCH {what}")
        } else {
            format!("{} {what}", req.method())
        };
        *counts.lock().unwrap().entry(verb).or_default() += 1;
        req
    });
    ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&layer)
        .build()
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

fn spec() -> serde_json::Value {
    serde_json::json!({"image": "registry.example.com/web:1.4.2", "replicas": 1, "resources": {"cpu": "50m", "memory": "64Mi"}})
}

async fn wait_all_ready(api: &Api<WebService>, n: usize) -> Duration {
    let started = Instant::now();
    loop {
        let list = api.list(&ListParams::default()).await.unwrap();
        let ready = list
            .items
            .iter()
            .filter(|w| w.status.as_ref().is_some_and(|s| s.is_ready()))
            .count();
        if ready == n {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "only {ready}/{n} Ready after 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn writes(counts: &BTreeMap<String, u64>) -> u64 {
    counts
        .iter()
        .filter(|(k, _)| {
            ["POST", "PUT", "PATCH", "DELETE"]
                .iter()
                .any(|v| k.starts_with(v))
        })
        .map(|(_, n)| n)
        .sum()
}

async fn operator_run(cluster: &TestCluster, n: usize) -> (Duration, BTreeMap<String, u64>, u64) {
    let ns = cluster.namespace(&format!("op{n}")).await.unwrap();
    let counts: Counts = Arc::default();
    let client = counting_client(cluster, counts.clone());
    let controller = tokio::spawn(
        cuebe::controller::Operator::<WebService>::new(client.clone())
            .namespace(ns.clone())
            .run(),
    );
    let admin = cluster.client();
    let api: Api<WebService> = Api::namespaced(admin.clone(), &ns);
    let started = Instant::now();
    for i in 0..n {
        let body = serde_json::json!({"apiVersion": "platform.example.com/v1alpha1", "kind": "WebService", "metadata": {"name": format!("svc-{i}")}, "spec": spec()});
        api.patch(
            &format!("svc-{i}"),
            &PatchParams::apply("bench"),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    }
    wait_all_ready(&api, n).await;
    let converge = started.elapsed();
    let converge_counts = counts.lock().unwrap().clone();

    // Steady-state resync: a restarted operator reconciles every converged instance.
    controller.abort();
    counts.lock().unwrap().clear();
    let client = counting_client(cluster, counts.clone());
    let restarted = tokio::spawn(
        cuebe::controller::Operator::<WebService>::new(client)
            .namespace(ns.clone())
            .run(),
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    let resync_writes = writes(&counts.lock().unwrap());
    restarted.abort();
    (converge, converge_counts, resync_writes)
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

async fn baseline_run(cluster: &TestCluster, n: usize) -> Duration {
    let ns = cluster.namespace(&format!("kubectl{n}")).await.unwrap();
    // The same objects the operator applies, rendered offline by the same renderer.
    let renderer = cuebe::CueRenderer::new(webservice_operator::platform_modules());
    let mut waves: Vec<Vec<serde_json::Value>> = Vec::new();
    for i in 0..n {
        let ws: WebService = serde_json::from_value(serde_json::json!({
            "apiVersion": "platform.example.com/v1alpha1", "kind": "WebService",
            "metadata": {"name": format!("svc-{i}"), "namespace": ns}, "spec": spec()
        }))
        .unwrap();
        let input = cuebe::abstraction::render_input(&ws, Capabilities::default(), BTreeMap::new());
        let graph = renderer.render_blocking(&input).unwrap();
        for (w, ids) in graph.waves().iter().enumerate() {
            if waves.len() <= w {
                waves.push(Vec::new());
            }
            for id in ids {
                waves[w].extend(graph.node(id).and_then(|n| n.object.clone()));
            }
        }
    }
    let started = Instant::now();
    let deployments: Api<Deployment> = Api::namespaced(cluster.client(), &ns);
    for wave in &waves {
        kubectl_apply(cluster, wave);
        // Gate the next wave on this one's Deployments, as the operator's readiness gates do.
        if wave.iter().any(|o| o["kind"] == "Deployment") {
            loop {
                let list = deployments.list(&ListParams::default()).await.unwrap();
                let available = list
                    .items
                    .iter()
                    .filter(|d| {
                        d.status.as_ref().is_some_and(|s| {
                            s.conditions.as_ref().is_some_and(|cs| {
                                cs.iter().any(|c| {
                                    c.type_.as_deref() == Some("Available")
                                        && c.status.as_deref() == Some("True")
                                })
                            })
                        })
                    })
                    .count();
                if available == n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    started.elapsed()
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 500]
    } else {
        sizes
    };
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
        let rss_before = peak_rss_mib();
        println!("converge bench: {} (start-up {:.1}s)", cluster.server(), cluster.startup_time().as_secs_f64());
        for n in sizes {
            let (op, counts, resync) = operator_run(&cluster, n).await;
            let base = baseline_run(&cluster, n).await;
            println!("N = {n}");
            println!("  operator: all Ready in {:.1}s", op.as_secs_f64());
            println!("  operator API requests by verb: {counts:?} (writes: {})", writes(&counts));
            println!("  operator peak RSS (bench process, operator in-process): {} MiB (before: {rss_before} MiB)", peak_rss_mib());
            println!("  steady-state resync writes: {resync}");
            println!("  baseline (kubectl apply --server-side, waves gated on Available): {:.1}s", base.as_secs_f64());
            println!("  ratio operator/baseline: {:.2}", op.as_secs_f64() / base.as_secs_f64());
        }
    });
}
