//! WebServices through cuebe and the same objects through kro, measured the same way: shared by
//! `benches/kro_side_by_side.rs` (the full run) and `tests/kro_smoke.rs` (the small one in the
//! default test suite), which include this file.
//!
//! One run: a fresh namespace, N instances created (server-side apply, 8 at a time), time until
//! every instance's `Ready` condition is True (a WebService's, and a kro instance's: kro's own
//! "primary condition to monitor"), the controller's API requests by HTTP method during that
//! time, then its writes during a steady-state window, and its resident memory at the end.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cuebe_testkit::cluster::TestCluster;
use cuebe_testkit::kro::{Kro, KroOptions};
use futures::StreamExt as _;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};

/// The ResourceGraphDefinition: what a default WebService renders, as kro expresses it.
pub const KRO_RGD: &str = include_str!("../../benches/kro/webservice-rgd.yaml");

/// The kind it defines.
pub fn kro_instance_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("bench.cuebe.dev", "v1alpha1", "KroWebService"),
        "krowebservices",
    )
}

/// The WebService kind.
pub fn webservice_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("platform.example.com", "v1alpha1", "WebService"),
        "webservices",
    )
}

/// Every instance's spec, on both sides: a default WebService (two replicas, so a PDB too; port
/// 8080) with small requests so that 1,000 of them fit on the kwok node.
pub fn spec() -> serde_json::Value {
    serde_json::json!({
        "image": "registry.example.com/web:1.4.2",
        "resources": {"cpu": "50m", "memory": "64Mi"},
    })
}

/// The instance `name` of `resource` in `namespace`.
pub fn instance(resource: &ApiResource, namespace: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec(),
    })
}

/// What one contender did for one N.
#[derive(Debug, Clone)]
pub struct Figures {
    /// e.g. "kro (concurrency 16)".
    pub contender: String,
    /// Instances.
    pub n: usize,
    /// The namespace they are in.
    pub namespace: String,
    /// From the first create until every instance was Ready; `None` when they were not by the
    /// deadline.
    pub all_ready: Option<Duration>,
    /// How many were Ready at the end of the wait.
    pub ready: usize,
    /// How long the wait lasted.
    pub waited: Duration,
    /// The controller's API requests while converging, by HTTP method (a watch is a GET).
    pub requests: BTreeMap<String, u64>,
    /// A finer breakdown where the contender has one (cuebe: by verb and what was asked).
    pub detail: BTreeMap<String, u64>,
    /// The steady-state window after all Ready, sampled every 5 s: (since all Ready, the
    /// controller's writes (POST, PUT, PATCH, DELETE) since then, all its requests since then).
    pub steady: Vec<(Duration, u64, u64)>,
    /// Writes the API server served during the steady-state window, from every client (the
    /// control plane's own, a kwok node's heartbeats, say, included), by verb and resource: where
    /// the controller's steady-state writes go.
    pub steady_apiserver_writes: BTreeMap<String, u64>,
    /// The controller's resident memory at the end (VmRSS), KiB.
    pub rss_kib: u64,
    /// Its peak resident memory (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// The objects in the namespace by kind, once converged (Deployments, Services,
    /// ServiceAccounts other than `default`, PodDisruptionBudgets).
    pub objects: BTreeMap<String, usize>,
}

impl Figures {
    /// Writes while converging.
    pub fn writes(&self) -> u64 {
        writes(&self.requests)
    }

    /// Every request while converging.
    pub fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }

    /// How long the steady-state window was.
    pub fn steady_window(&self) -> Duration {
        self.steady.last().map_or(Duration::ZERO, |s| s.0)
    }

    /// Writes in the whole steady-state window.
    pub fn steady_writes(&self) -> u64 {
        self.steady.last().map_or(0, |s| s.1)
    }

    /// Requests in the whole steady-state window.
    pub fn steady_requests(&self) -> u64 {
        self.steady.last().map_or(0, |s| s.2)
    }

    /// Writes per minute over the whole steady-state window (from all Ready on).
    pub fn steady_writes_per_minute(&self) -> f64 {
        per_minute(self.steady_writes(), self.steady_window())
    }

    /// Writes per minute over the window's second half: what is left once what was still
    /// queued when the last instance turned Ready has run.
    pub fn settled_writes_per_minute(&self) -> f64 {
        let half = self.steady_window() / 2;
        let Some(mid) = self.steady.iter().find(|s| s.0 >= half) else {
            return 0.0;
        };
        per_minute(
            self.steady_writes() - mid.1,
            self.steady_window().saturating_sub(mid.0),
        )
    }

    /// Writes per 5 s sample of the window.
    pub fn steady_writes_per_sample(&self) -> Vec<u64> {
        self.steady.windows(2).map(|w| w[1].1 - w[0].1).collect()
    }
}

fn per_minute(count: u64, over: Duration) -> f64 {
    if over.is_zero() {
        0.0
    } else {
        count as f64 * 60.0 / over.as_secs_f64()
    }
}

/// Samples a controller's cumulative requests by method every 5 s for `window`, from `start`
/// (its counts when the last instance turned Ready): (since then, writes since then, requests
/// since then), the first at zero.
pub async fn observe_steady<F, Fut>(
    window: Duration,
    start: &BTreeMap<String, u64>,
    mut counts: F,
) -> Vec<(Duration, u64, u64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BTreeMap<String, u64>>,
{
    let began = Instant::now();
    let mut samples = vec![(Duration::ZERO, 0, 0)];
    while began.elapsed() < window {
        tokio::time::sleep((window - began.elapsed()).min(Duration::from_secs(5))).await;
        let since = delta(&counts().await, start);
        samples.push((began.elapsed(), writes(&since), since.values().sum()));
    }
    samples
}

/// POST, PUT, PATCH and DELETE.
pub fn writes(by_method: &BTreeMap<String, u64>) -> u64 {
    by_method
        .iter()
        .filter(|(m, _)| ["POST", "PUT", "PATCH", "DELETE"].contains(&m.as_str()))
        .map(|(_, n)| n)
        .sum()
}

/// `after - before`, per key.
pub fn delta(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// The requests the API server has served since it started, by verb and resource
/// (`apiserver_request_total`, summed over codes, groups and versions), e.g. `APPLY deployments`,
/// `PUT krowebservices/status`.
pub async fn apiserver_requests(client: &Client) -> BTreeMap<String, u64> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a GET of a fixed path");
    let text = client
        .request_text(request)
        .await
        .unwrap_or_else(|e| panic!("the API server's /metrics: {e}"));
    let mut counts = BTreeMap::new();
    for s in cuebe_testkit::metrics::samples(&text, "apiserver_request_total") {
        let (Some(verb), Some(resource)) = (s.label("verb"), s.label("resource")) else {
            continue;
        };
        let value = s.value;
        let key = match s.label("subresource").filter(|sub| !sub.is_empty()) {
            Some(sub) => format!("{verb} {resource}/{sub}"),
            None => format!("{verb} {resource}"),
        };
        *counts.entry(key).or_insert(0) += value as u64;
    }
    counts
}

/// The writes among [`apiserver_requests`] keys (every verb but GET, LIST, WATCH).
pub fn apiserver_writes(counts: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    counts
        .iter()
        .filter(|(k, _)| {
            let verb = k.split(' ').next().unwrap_or_default();
            !["GET", "LIST", "WATCH", "CONNECT"].contains(&verb)
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// Creates `n` instances `svc-0` … (server-side apply, 8 requests in flight).
pub async fn create_instances(client: &Client, resource: &ApiResource, namespace: &str, n: usize) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let name = format!("svc-{i}");
            let body = instance(resource, namespace, &name);
            async move {
                api.patch(&name, &PatchParams::apply("bench"), &Patch::Apply(&body))
                    .await
                    .unwrap_or_else(|e| panic!("creating {name}: {e}"));
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
}

/// How many instances of `resource` in `namespace` have `Ready` True.
pub async fn ready_count(client: &Client, resource: &ApiResource, namespace: &str) -> usize {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    let Ok(list) = api.list(&ListParams::default()).await else {
        return 0;
    };
    list.items
        .iter()
        .filter(|o| {
            o.data
                .pointer("/status/conditions")
                .and_then(serde_json::Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .count()
}

/// Waits until `n` instances are Ready or `timeout` passes: (Ready, how long it waited).
/// Polls once a second for large N, so the poll itself weighs little on the API server.
pub async fn wait_all_ready(
    client: &Client,
    resource: &ApiResource,
    namespace: &str,
    n: usize,
    started: Instant,
    timeout: Duration,
) -> (usize, Duration) {
    let every = if n > 200 {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(250)
    };
    loop {
        let ready = ready_count(client, resource, namespace).await;
        if ready == n || started.elapsed() > timeout {
            return (ready, started.elapsed());
        }
        tokio::time::sleep(every).await;
    }
}

/// The objects in `namespace` by kind (what both contenders create per instance).
pub async fn count_objects(client: &Client, namespace: &str) -> BTreeMap<String, usize> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Service, ServiceAccount};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let lp = ListParams::default();
    let mut counts = BTreeMap::new();
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    let services = Api::<Service>::namespaced(client.clone(), namespace);
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), namespace);
    counts.insert(
        "Deployment".to_string(),
        deployments.list(&lp).await.map_or(0, |l| l.items.len()),
    );
    counts.insert(
        "Service".to_string(),
        services.list(&lp).await.map_or(0, |l| l.items.len()),
    );
    counts.insert(
        "ServiceAccount".to_string(),
        accounts.list(&lp).await.map_or(0, |l| {
            l.items
                .iter()
                .filter(|a| a.metadata.name.as_deref() != Some("default"))
                .count()
        }),
    );
    counts.insert(
        "PodDisruptionBudget".to_string(),
        pdbs.list(&lp).await.map_or(0, |l| l.items.len()),
    );
    counts
}

/// The ResourceGraphDefinition as JSON.
pub fn kro_rgd() -> serde_json::Value {
    serde_norway::from_str(KRO_RGD).expect("benches/kro/webservice-rgd.yaml is YAML")
}

/// kro at `concurrency` on `cluster`: N instances of the RGD's kind converged, then a
/// steady-state window. kro runs from the start of the run to its end; the requests counted are
/// those between the first create and all Ready (kro's start-up and the RGD's processing are
/// not counted, as the cuebe operator's start-up is not).
pub async fn kro_run(
    cluster: &TestCluster,
    n: usize,
    concurrency: usize,
    steady_window: Duration,
    timeout: Duration,
) -> (Figures, Kro) {
    let kro = Kro::start(
        cluster,
        KroOptions {
            concurrency,
            ..KroOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let admin = cluster.client();
    kro.apply_resource_graph_definition(&admin, &kro_rgd(), Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let namespace = cluster.namespace("kro").await.unwrap();
    let resource = kro_instance_resource();
    let before = kro.requests_by_method().await.unwrap();
    let started = Instant::now();
    create_instances(&admin, &resource, &namespace, n).await;
    let (ready, waited) = wait_all_ready(&admin, &resource, &namespace, n, started, timeout).await;
    let converged = kro.requests_by_method().await.unwrap();
    let served = apiserver_requests(&admin).await;
    let steady = observe_steady(steady_window, &converged, || async {
        kro.requests_by_method().await.unwrap()
    })
    .await;
    let steady_apiserver_writes =
        apiserver_writes(&delta(&apiserver_requests(&admin).await, &served));
    let figures = Figures {
        contender: format!("kro (concurrency {concurrency})"),
        n,
        namespace: namespace.clone(),
        all_ready: (ready == n).then_some(waited),
        ready,
        waited,
        requests: delta(&converged, &before),
        detail: BTreeMap::new(),
        steady,
        steady_apiserver_writes,
        rss_kib: kro.rss_kib().unwrap_or(0),
        peak_rss_kib: kro.peak_rss_kib().unwrap_or(0),
        objects: count_objects(&admin, &namespace).await,
    };
    (figures, kro)
}
