//! Children are read from the operator's watch caches, counted the way a cluster admin sees it:
//! the kube-apiserver's own `apiserver_request_total`. Ten instances of the WebService module
//! converge with about one GET per child object (the read that finds it absent before creating
//! it), a resync of all of them (an annotation on each: same render) costs no GET of a child
//! kind at all, and a hand-deleted child is still recreated at once.
//!
//! One test per process: the cluster's request counters are shared by everything in it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cuebe::Abstraction;
use cuebe::status::AbstractionStatus;
use cuebe_testkit::cluster::TestCluster;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, CustomResource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The WebService platform module behind a kind of this test's own.
#[derive(CustomResource, Abstraction, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "cached.example.com",
    version = "v1",
    kind = "CachedService",
    namespaced,
    status = "cuebe::status::AbstractionStatus"
)]
#[abstraction(
    module = "../../cue/platform",
    package = "./webservice",
    field_manager = "cuebe-cached",
    // Service (and PodDisruptionBudget) are left out on purpose: their watches start with the
    // first render, the path every kind a module renders without declaring it takes.
    watches = ["apps/v1/Deployment", "v1/ServiceAccount"]
)]
pub struct CachedServiceSpec {
    pub image: String,
    pub resources: Resources,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema)]
pub struct Resources {
    pub cpu: String,
    pub memory: String,
}

const INSTANCES: usize = 10;

fn ready(status: Option<&AbstractionStatus>) -> bool {
    status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Requests by verb and resource (`GET`, `deployments`), from the API server's
/// `apiserver_request_total`. Only the operator applies children (`APPLY`: Server-Side Apply);
/// the cluster's own controllers update them.
async fn requests(client: &Client) -> BTreeMap<(String, String), u64> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap();
    let mut gets = BTreeMap::new();
    for s in cuebe_testkit::metrics::samples(&text, "apiserver_request_total") {
        let label = |name: &str| s.label(name).unwrap_or_default().to_string();
        *gets.entry((label("verb"), label("resource"))).or_default() += s.value as u64;
    }
    gets
}

/// How many `verb` requests on `resource` were made between two [`requests`].
fn delta(
    after: &BTreeMap<(String, String), u64>,
    before: &BTreeMap<(String, String), u64>,
    verb: &str,
    resource: &str,
) -> u64 {
    let key = (verb.to_string(), resource.to_string());
    after.get(&key).copied().unwrap_or(0) - before.get(&key).copied().unwrap_or(0)
}

/// GETs per child resource, and applies of all of them, between two readings of the counters.
fn gets_and_applies<'a>(
    resources: impl Iterator<Item = &'a &'static str>,
    after: &BTreeMap<(String, String), u64>,
    before: &BTreeMap<(String, String), u64>,
) -> (BTreeMap<&'static str, u64>, u64) {
    let mut gets = BTreeMap::new();
    let mut applies = 0;
    for resource in resources {
        gets.insert(*resource, delta(after, before, "GET", resource));
        applies += delta(after, before, "APPLY", resource);
    }
    (gets, applies)
}

/// The operator's `cuebe_reconciles_total` (every result), from its metrics endpoint.
async fn reconciles(metrics: std::net::SocketAddr) -> u64 {
    let mut stream = tokio::net::TcpStream::connect(metrics).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("cuebe_reconciles_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The child resources the instances own (`resource` plural → `apiVersion`, `kind`), and how
/// many objects of each.
async fn children(client: &Client, ns: &str) -> BTreeMap<&'static str, usize> {
    let selector = ListParams::default().labels("cuebe.dev/kind=CachedService");
    let mut counts = BTreeMap::new();
    for (plural, api_version, kind) in [
        ("deployments", "apps/v1", "Deployment"),
        ("services", "v1", "Service"),
        ("serviceaccounts", "v1", "ServiceAccount"),
        (
            "horizontalpodautoscalers",
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
        ),
        ("poddisruptionbudgets", "policy/v1", "PodDisruptionBudget"),
        ("networkpolicies", "networking.k8s.io/v1", "NetworkPolicy"),
        ("configmaps", "v1", "ConfigMap"),
    ] {
        let gvk = kube::api::GroupVersionKind::gvk(
            api_version.rsplit_once('/').map_or("", |(g, _)| g),
            api_version.rsplit('/').next().unwrap(),
            kind,
        );
        let resource = kube::api::ApiResource::from_gvk(&gvk);
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &resource);
        let n = api.list_metadata(&selector).await.unwrap().items.len();
        if n > 0 {
            counts.insert(plural, n);
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn children_are_read_from_the_watch_caches_not_with_a_get_per_pass() {
    let cluster = TestCluster::shared().await.unwrap();
    let client: Client = cluster.client();
    let ns = cluster.namespace("cached").await.unwrap();
    cluster
        .apply_crds(
            &[cuebe::abstraction::crd::<CachedService>()],
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = listener.local_addr().unwrap();
    let operator = tokio::spawn(
        cuebe::controller::Operator::<CachedService>::new(client.clone())
            .namespace(ns.clone())
            .serve_metrics(listener)
            .run(),
    );
    let api: Api<CachedService> = Api::namespaced(client.clone(), &ns);
    let before_converge = requests(&client).await;
    for i in 0..INSTANCES {
        let name = format!("web-{i}");
        let body = json!({
            "apiVersion": "cached.example.com/v1", "kind": "CachedService",
            "metadata": {"name": name},
            "spec": {"image": "registry.example.com/hello:1.4.2",
                     "resources": {"cpu": "50m", "memory": "64Mi"}},
        });
        api.patch(
            &name,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    }
    let all_ready = || {
        let api = api.clone();
        async move {
            api.list(&ListParams::default())
                .await
                .map(|l| {
                    l.items.len() == INSTANCES && l.items.iter().all(|o| ready(o.status.as_ref()))
                })
                .unwrap_or(false)
        }
    };
    let started = Instant::now();
    cuebe_testkit::eventually::eventually(
        "every instance Ready",
        Duration::from_secs(120),
        all_ready,
        || async { cluster.log_tails(10) },
    )
    .await;
    let converged_in = started.elapsed();
    let after_converge = requests(&client).await;
    let objects = children(&client, &ns).await;
    assert!(
        objects.contains_key("deployments") && objects.contains_key("services"),
        "{objects:?}"
    );
    let mut converge_gets = BTreeMap::new();
    let mut converge_applies = BTreeMap::new();
    for (resource, count) in &objects {
        let gets = delta(&after_converge, &before_converge, "GET", resource);
        converge_gets.insert(*resource, gets);
        // Each object written once: the pass after a write reads our write's answer, not the
        // older object the store may still hold.
        let applies = delta(&after_converge, &before_converge, "APPLY", resource);
        converge_applies.insert(*resource, applies);
        assert!(
            applies <= *count as u64,
            "{applies} applies of {resource} while converging {count} of them"
        );
        // The read that finds it absent before creating it; a few more where the API server's
        // own controllers (the garbage collector checking owners) ask too.
        assert!(
            gets <= (*count as u64) * 3 / 2,
            "{gets} GETs of {resource} while converging {count} of them (all: {converge_gets:?})"
        );
    }
    eprintln!(
        "converged {INSTANCES} instances in {converged_in:?}: children {objects:?}, GETs of them \
         {converge_gets:?}, applies {converge_applies:?}"
    );

    // What the store keeps of a real Deployment (pod template, managed fields) and what it drops.
    let resource = kube::api::ApiResource::erase::<Deployment>(&());
    let whole: kube::api::DynamicObject = Api::namespaced_with(client.clone(), &ns, &resource)
        .get("web-0")
        .await
        .unwrap();
    let mut trimmed = whole.clone();
    cuebe::child_cache::Retained::default().trim(&mut trimmed);
    let bytes = |o: &kube::api::DynamicObject| serde_json::to_vec(o).unwrap().len();
    eprintln!(
        "a Deployment: {} bytes whole, {} kept in the cache",
        bytes(&whole),
        bytes(&trimmed)
    );
    assert!(bytes(&trimmed) * 3 < bytes(&whole));

    // A resync of every instance with the same render: the children are read from the caches.
    // Let the passes that Ready transitions triggered finish first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_resync = requests(&client).await;
    let reconciled_before = reconciles(metrics).await;
    for i in 0..INSTANCES {
        let touch = json!({"metadata": {"annotations": {"e2e.cuebe.dev/touched": "1"}}});
        api.patch(
            &format!("web-{i}"),
            &PatchParams::default(),
            &Patch::Merge(&touch),
        )
        .await
        .unwrap();
    }
    cuebe_testkit::eventually::eventually(
        "every instance reconciled again",
        Duration::from_secs(60),
        || async { reconciles(metrics).await >= reconciled_before + INSTANCES as u64 },
        || async { cluster.log_tails(10) },
    )
    .await;
    assert!(all_ready().await, "an instance left Ready in the resync");
    let after_resync = requests(&client).await;
    let (resync_gets, resync_applies) =
        gets_and_applies(objects.keys(), &after_resync, &before_resync);
    eprintln!(
        "resync of {INSTANCES} instances ({} passes): GETs of children {resync_gets:?}",
        reconciles(metrics).await - reconciled_before
    );
    assert!(
        resync_gets.values().all(|g| *g == 0),
        "a resync read children with GETs: {resync_gets:?}"
    );
    assert_eq!(resync_applies, 0, "a resync with the same render wrote");

    // A change of every instance's render (a new image): each Deployment is applied once, and
    // the passes its rollout triggers read it from the caches. (Our write's answer stands in
    // for a watch that lags behind the next pass; on this idle cluster the watch is usually
    // first, so that rule is held by its table test in cuebe-core, not here.)
    let before_change = requests(&client).await;
    for i in 0..INSTANCES {
        let image = json!({"spec": {"image": "registry.example.com/hello:1.5.0"}});
        api.patch(
            &format!("web-{i}"),
            &PatchParams::default(),
            &Patch::Merge(&image),
        )
        .await
        .unwrap();
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    cuebe_testkit::eventually::eventually(
        "every instance Ready on the new image",
        Duration::from_secs(120),
        || {
            let deployments = deployments.clone();
            async move {
                let updated = deployments
                    .list(&ListParams::default())
                    .await
                    .map(|l| {
                        l.items
                            .iter()
                            .filter(|d| {
                                serde_json::to_string(&d.spec).is_ok_and(|s| s.contains("1.5.0"))
                            })
                            .count()
                    })
                    .unwrap_or(0);
                updated == INSTANCES && all_ready().await
            }
        },
        || async { cluster.log_tails(10) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_change = requests(&client).await;
    let change_applies = delta(&after_change, &before_change, "APPLY", "deployments");
    let change_gets: u64 = objects
        .keys()
        .map(|r| delta(&after_change, &before_change, "GET", r))
        .sum();
    eprintln!(
        "a new image on {INSTANCES} instances: {change_applies} applies of Deployments, \
         {change_gets} GETs of children"
    );
    assert_eq!(change_applies, INSTANCES as u64);
    assert_eq!(change_gets, 0);

    // A restart: the new operator re-verifies every instance from its stores (declared kinds and
    // those it starts watching at the first render alike), with no GET of a child and no write.
    cuebe_testkit::eventually::eventually(
        "every instance Ready on the new image",
        Duration::from_secs(60),
        all_ready,
        || async { cluster.log_tails(10) },
    )
    .await;
    operator.abort();
    let _ = operator.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_restart = requests(&client).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = listener.local_addr().unwrap();
    let _operator = tokio::spawn(
        cuebe::controller::Operator::<CachedService>::new(client.clone())
            .namespace(ns.clone())
            .serve_metrics(listener)
            .run(),
    );
    cuebe_testkit::eventually::eventually(
        "every instance reconciled by the restarted operator",
        Duration::from_secs(60),
        || async { reconciles(metrics).await >= INSTANCES as u64 },
        || async { cluster.log_tails(10) },
    )
    .await;
    let after_restart = requests(&client).await;
    let (restart_gets, restart_applies) =
        gets_and_applies(objects.keys(), &after_restart, &before_restart);
    eprintln!("restart over {INSTANCES} instances: GETs of children {restart_gets:?}");
    assert!(
        restart_gets.values().all(|g| *g == 0),
        "the restarted operator read children with GETs: {restart_gets:?}"
    );
    assert_eq!(restart_applies, 0, "the restarted operator wrote a child");

    // Drift correction still works: a hand-deleted Deployment comes back (the watch removes it
    // from the store, so the pass asks the API server and recreates it).
    let uid = deployments.get("web-3").await.unwrap().metadata.uid;
    deployments
        .delete("web-3", &DeleteParams::default())
        .await
        .unwrap();
    cuebe_testkit::eventually::eventually(
        "the Deployment recreated",
        Duration::from_secs(20),
        || {
            let (deployments, uid) = (deployments.clone(), uid.clone());
            async move {
                deployments
                    .get_opt("web-3")
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|d| d.metadata.uid != uid)
            }
        },
        || async { cluster.log_tails(10) },
    )
    .await;
    cuebe_testkit::eventually::eventually(
        "every instance Ready again",
        Duration::from_secs(60),
        all_ready,
        || async { cluster.log_tails(10) },
    )
    .await;
}
