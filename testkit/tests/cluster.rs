//! The control plane harness against itself: what later tests rely on actually works.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cuebe_testkit::cluster::TestCluster;
use cuebe_testkit::cluster::ack::{AckStandIn, AckStandInOptions, TERMINAL_MESSAGE};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use serde_json::json;

async fn cluster() -> &'static TestCluster {
    match TestCluster::shared().await {
        Ok(c) => c,
        Err(e) => panic!("the test cluster did not start: {e}"),
    }
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = cluster().await;
    panic!("timed out waiting for {what}\n{}", c.log_tails(20));
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]}
            }
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_becomes_available_with_pods_run_by_kwok() {
    let c = cluster().await;
    let ns = c.namespace("avail").await.unwrap();
    let api: Api<Deployment> = Api::namespaced(c.client(), &ns);
    api.create(&PostParams::default(), &deployment("web", 3))
        .await
        .unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.client(), &ns);
    eventually(
        "the Deployment to be Available with 3 ready replicas",
        Duration::from_secs(60),
        || async {
            let d = api.get("web").await.unwrap();

            let s = d.status.unwrap_or_default();
            let available = s.conditions.unwrap_or_default().iter().any(|c| {
                c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("True")
            });
            available && s.ready_replicas == Some(3)
        },
    )
    .await;
    let list = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 3);
    for p in list.items {
        assert_eq!(
            p.spec.unwrap().node_name.as_deref(),
            Some("kwok-node-0"),
            "scheduled onto the kwok node"
        );
        assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn orphan_propagation_leaves_dependents_without_the_owner_reference() {
    let c = cluster().await;
    let ns = c.namespace("orphan").await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(c.client(), &ns);
    let replicasets: Api<ReplicaSet> = Api::namespaced(c.client(), &ns);
    deployments
        .create(&PostParams::default(), &deployment("owner", 1))
        .await
        .unwrap();
    eventually(
        "the Deployment's ReplicaSet",
        Duration::from_secs(30),
        || async {
            !replicasets
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        },
    )
    .await;
    deployments
        .delete("owner", &DeleteParams::orphan())
        .await
        .unwrap();
    eventually(
        "the garbage collector to orphan the ReplicaSet",
        Duration::from_secs(30),
        || async {
            let deployment_gone = deployments.get_opt("owner").await.unwrap().is_none();
            let rs = replicasets
                .list(&ListParams::default())
                .await
                .unwrap()
                .items;
            deployment_gone
                && rs.len() == 1
                && rs[0]
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_none_or(|o| o.is_empty())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_field_managers_applying_the_same_field_conflict() {
    let c = cluster().await;
    let ns = c.namespace("ssa").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), &ns);
    let cm = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"key": v}});
    api.patch(
        "shared",
        &PatchParams::apply("manager-a"),
        &Patch::Apply(cm("a")),
    )
    .await
    .unwrap();
    let err = api
        .patch(
            "shared",
            &PatchParams::apply("manager-b"),
            &Patch::Apply(cm("b")),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}")
    };
    assert_eq!(status.code, 409);
    assert!(status.message.contains("manager-a"), "{}", status.message);
    api.patch(
        "shared",
        &PatchParams::apply("manager-b").force(),
        &Patch::Apply(cm("b")),
    )
    .await
    .unwrap();
    assert_eq!(api.get("shared").await.unwrap().data.unwrap()["key"], "b");
}

fn role_api(c: &TestCluster, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "iam.services.k8s.aws",
        "v1alpha1",
        "Role",
    ));
    Api::namespaced_with(c.client(), ns, &ar)
}

fn role(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "iam.services.k8s.aws/v1alpha1", "kind": "Role",
        "metadata": {"name": name},
        "spec": {"name": format!("aws-{name}"), "assumeRolePolicyDocument": "{}"}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crd_with_a_status_subresource_serves_status() {
    let c = cluster().await;
    let ns = c.namespace("status").await.unwrap();
    let api = role_api(c, &ns);
    api.patch("r", &PatchParams::apply("test"), &Patch::Apply(role("r")))
        .await
        .unwrap();
    // A status written through the main resource is ignored...
    api.patch("r", &PatchParams::default(), &Patch::Merge(json!({"status": {"ackResourceMetadata": {"arn": "x", "ownerAccountID": "1", "region": "r"}}})))
        .await
        .unwrap();
    assert!(
        api.get("r")
            .await
            .unwrap()
            .data
            .pointer("/status/ackResourceMetadata")
            .is_none()
    );
    // ...and one written to /status sticks.
    api.patch_status("r", &PatchParams::default(), &Patch::Merge(json!({"status": {"ackResourceMetadata": {"arn": "arn:x", "ownerAccountID": "1", "region": "r"}}})))
        .await
        .unwrap();
    assert_eq!(
        api.get("r")
            .await
            .unwrap()
            .data
            .pointer("/status/ackResourceMetadata/arn"),
        Some(&json!("arn:x"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ack_stand_in_syncs_roles_and_fails_the_marked_one() {
    let c = cluster().await;
    let ns = c.namespace("ack").await.unwrap();
    let _ack = AckStandIn::spawn(
        c.client(),
        AckStandInOptions {
            delay: Duration::from_millis(200),
            failing: ["broken".to_string()].into(),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
    );
    let api = role_api(c, &ns);
    for name in ["good", "broken"] {
        api.patch(name, &PatchParams::apply("test"), &Patch::Apply(role(name)))
            .await
            .unwrap();
    }
    let condition = |obj: &DynamicObject, t: &str| {
        obj.data
            .pointer("/status/conditions")
            .and_then(|c| c.as_array())
            .and_then(|cs| {
                cs.iter().find(|c| c["type"] == t).map(|c| {
                    (
                        c["status"].as_str().unwrap_or("").to_string(),
                        c["message"].as_str().unwrap_or("").to_string(),
                    )
                })
            })
    };
    eventually(
        "the good Role to be synced with an ARN",
        Duration::from_secs(20),
        || async {
            let r = api.get("good").await.unwrap();
            condition(&r, "ACK.ResourceSynced").is_some_and(|(s, _)| s == "True")
                && r.data.pointer("/status/ackResourceMetadata/arn")
                    == Some(&json!("arn:aws:iam::111122223333:role/aws-good"))
        },
    )
    .await;
    eventually(
        "the broken Role to be Terminal",
        Duration::from_secs(20),
        || async {
            let r = api.get("broken").await.unwrap();
            condition(&r, "ACK.Terminal").is_some_and(|(s, m)| s == "True" && m == TERMINAL_MESSAGE)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn start_up_time_and_peak_memory_are_reported() {
    let c = cluster().await;
    eprintln!(
        "control plane start-up (shared cluster, controllers + CRDs): {:?}",
        c.startup_time()
    );
    let mut total = 0;
    for (name, kib) in c.peak_memory_kib() {
        eprintln!("  peak RSS {name}: {} MiB", kib / 1024);
        total += kib;
    }
    eprintln!("  peak RSS total: {} MiB", total / 1024);
    assert!(total > 0, "components are running and measurable");
    c.check_alive().unwrap();
}
