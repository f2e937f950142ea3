//! The kro side of `benches/kro_side_by_side.rs` at a size for the default test suite: kro's
//! controller (built from its pinned Go module once, cached after) accepts the
//! ResourceGraphDefinition in `benches/kro/`, three instances become Ready through it, and what
//! it created is what the WebService platform module renders for the same spec (every field the
//! module sets, with the same value), so the bench compares the same work.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/side_by_side.rs"]
mod side_by_side;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cuebe::renderer::Capabilities;
use cuebe_testkit::cluster::{ClusterOptions, TestCluster};
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use webservice_operator::WebService;

/// Where `live` lacks a field `rendered` sets, or has another value there (JSON pointers).
/// Labels saying who manages the object are allowed to differ (cuebe's module says cuebe, kro
/// says kro); fields the API server adds are ignored.
fn differences(rendered: &serde_json::Value, live: &serde_json::Value, at: &str) -> Vec<String> {
    match (rendered, live) {
        (serde_json::Value::Object(want), serde_json::Value::Object(have)) => want
            .iter()
            .filter(|(k, _)| k.as_str() != "app.kubernetes.io/managed-by")
            .flat_map(|(k, v)| match have.get(k) {
                Some(h) => differences(v, h, &format!("{at}/{k}")),
                None => vec![format!("{at}/{k} missing")],
            })
            .collect(),
        (serde_json::Value::Array(want), serde_json::Value::Array(have))
            if want.len() == have.len() =>
        {
            want.iter()
                .zip(have)
                .enumerate()
                .flat_map(|(i, (w, h))| differences(w, h, &format!("{at}/{i}")))
                .collect()
        }
        (want, have) if want == have => Vec::new(),
        (want, have) => vec![format!("{at}: module renders {want}, kro made {have}")],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kro_makes_the_objects_of_a_default_webservice_and_its_instances_become_ready() {
    let started = Instant::now();
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    let (figures, kro) = side_by_side::kro_run(
        &cluster,
        3,
        1,
        Duration::from_secs(2),
        Duration::from_secs(120),
    )
    .await;
    println!("{figures:?}");
    assert_eq!(
        figures.ready,
        3,
        "only {} of 3 kro instances Ready after {:?}; kro's log:\n{}",
        figures.ready,
        figures.waited,
        kro.log_tail(40)
    );
    let per_kind = BTreeMap::from(
        [
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
        ]
        .map(|k| (k.to_string(), 3)),
    );
    assert_eq!(figures.objects, per_kind);
    assert!(
        figures.writes() >= 12,
        "kro reported {:?} while creating 12 objects",
        figures.requests
    );
    assert!(figures.rss_kib > 0 && figures.peak_rss_kib >= figures.rss_kib);

    // What kro made for svc-0 is what the platform module renders for the same spec.
    let ws: WebService = serde_json::from_value(side_by_side::instance(
        &side_by_side::webservice_resource(),
        &figures.namespace,
        "svc-0",
    ))
    .unwrap();
    let input = cuebe::abstraction::render_input(&ws, Capabilities::default(), BTreeMap::new());
    let graph = cuebe::CueRenderer::new(webservice_operator::platform_modules())
        .render_blocking(&input)
        .unwrap();
    let mut kinds = Vec::new();
    for object in graph.nodes.iter().filter_map(|n| n.object.as_ref()) {
        let kind = object["kind"].as_str().unwrap();
        let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", object["apiVersion"].as_str().unwrap()),
        };
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let api: Api<DynamicObject> =
            Api::namespaced_with(cluster.client(), &figures.namespace, &resource);
        let live = api
            .get(object["metadata"]["name"].as_str().unwrap())
            .await
            .unwrap_or_else(|e| panic!("kro made no {kind} svc-0: {e}"));
        let live = serde_json::to_value(live).unwrap();
        let diffs = differences(object, &live, "");
        assert!(
            diffs.is_empty(),
            "{kind} svc-0 differs:\n{}",
            diffs.join("\n")
        );
        kinds.push(kind.to_string());
    }
    kinds.sort();
    assert_eq!(kinds, per_kind.keys().cloned().collect::<Vec<_>>());
    println!("smoke test took {:.1}s", started.elapsed().as_secs_f64());
}
