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
    /// Writes (POST, PUT, PATCH, DELETE) during the steady-state window.
    pub steady_writes: u64,
    /// All requests during the steady-state window.
    pub steady_requests: u64,
    /// How long the steady-state window was.
    pub steady_window: Duration,
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

    /// Steady-state writes per minute.
    pub fn steady_writes_per_minute(&self) -> f64 {
        self.steady_writes as f64 * 60.0 / self.steady_window.as_secs_f64().max(1e-3)
    }
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
    tokio::time::sleep(steady_window).await;
    let steady = delta(&kro.requests_by_method().await.unwrap(), &converged);
    let figures = Figures {
        contender: format!("kro (concurrency {concurrency})"),
        n,
        namespace: namespace.clone(),
        all_ready: (ready == n).then_some(waited),
        ready,
        waited,
        requests: delta(&converged, &before),
        detail: BTreeMap::new(),
        steady_writes: writes(&steady),
        steady_requests: steady.values().sum(),
        steady_window,
        rss_kib: kro.rss_kib().unwrap_or(0),
        peak_rss_kib: kro.peak_rss_kib().unwrap_or(0),
        objects: count_objects(&admin, &namespace).await,
    };
    (figures, kro)
}
