//! Worker on the real control plane, through the same generic controller as WebService: an
//! existing ServiceAccount is not taken over until the Worker lists it in `spec.adopt`; then
//! the Worker becomes Ready with its HPA, PDB and NetworkPolicy, and deleting it removes them.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use cuebe::inventory::InventoryMode;
use cuebe::status::{AbstractionStatus, NodePhase};
use cuebe_testkit::cluster::TestCluster;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use worker_operator::Worker;

async fn eventually<F, Fut>(what: &str, cluster: &TestCluster, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    cuebe_testkit::eventually::eventually(what, Duration::from_secs(60), check, || async {
        cluster.log_tails(10)
    })
    .await;
}

async fn status(workers: &Api<Worker>, name: &str) -> AbstractionStatus {
    workers
        .get(name)
        .await
        .ok()
        .and_then(|w| w.status)
        .unwrap_or_default()
}

async fn apply(workers: &Api<Worker>, spec: serde_json::Value) {
    let body = json!({
        "apiVersion": "example.com/v1alpha1", "kind": "Worker",
        "metadata": {"name": "thumbnails"}, "spec": spec,
    });
    workers
        .patch(
            "thumbnails",
            &PatchParams::apply("e2e-test").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_adopts_only_what_it_lists_becomes_ready_and_is_deleted_with_its_children() {
    let cluster = TestCluster::shared().await.unwrap();
    let client: Client = cluster.client();
    let ns = cluster.namespace("worker").await.unwrap();
    cluster
        .apply_crds(
            &[cuebe::abstraction::crd::<Worker>()],
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
    let _operator = tokio::spawn(
        cuebe::controller::Operator::<Worker>::new(client.clone())
            .namespace(ns.clone())
            .run(),
    );
    let workers: Api<Worker> = Api::namespaced(client.clone(), &ns);

    // A ServiceAccount with the Worker's name exists already, made by someone else.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let theirs = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "thumbnails", "annotations": {"team": "media"}}});
    accounts
        .patch(
            "thumbnails",
            &PatchParams::apply("kubectl"),
            &Patch::Apply(&theirs),
        )
        .await
        .unwrap();

    let mut spec = json!({
        "image": "registry.example.com/thumbnails:2.4.0",
        "queue": "https://sqs.eu-west-1.amazonaws.com/111122223333/thumbnails",
        "resources": {"cpu": "250m", "memory": "256Mi"},
        "autoscaling": {"minReplicas": 2, "maxReplicas": 6},
    });
    apply(&workers, spec.clone()).await;
    eventually(
        "the ServiceAccount node Blocked, not adopted",
        cluster,
        || async {
            let s = status(&workers, "thumbnails").await;
            s.nodes.get("serviceAccount").is_some_and(|n| {
                n.phase == NodePhase::Blocked
                    && n.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("spec.adopt.resources"))
            }) && s
                .nodes
                .get("deployment")
                .is_some_and(|n| n.phase == NodePhase::Pending)
        },
    )
    .await;
    let sa = accounts.get("thumbnails").await.unwrap();
    assert!(
        !sa.metadata
            .labels
            .unwrap_or_default()
            .contains_key("cuebe.dev/instance"),
        "nothing was written to an object that is not ours"
    );

    spec["adopt"] = json!({"resources": [{"apiVersion": "v1", "kind": "ServiceAccount", "name": "thumbnails"}]});
    apply(&workers, spec).await;
    eventually("the Worker Ready", cluster, || async {
        status(&workers, "thumbnails").await.is_ready()
    })
    .await;
    let ready = status(&workers, "thumbnails").await;
    assert_eq!(ready.ready_nodes, "5/5", "{ready:?}");
    let sa_entry = ready.inventory_entry("serviceAccount").unwrap();
    assert_eq!(sa_entry.mode, InventoryMode::Adopted);
    let sa = accounts.get("thumbnails").await.unwrap();
    assert_eq!(
        sa.metadata
            .annotations
            .unwrap_or_default()
            .get("team")
            .map(String::as_str),
        Some("media"),
        "adoption keeps the fields we do not render"
    );
    // Exactly one Adopted event on the Worker, naming the object (later passes are not adoptions).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let adopted: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|ev| ev.reason.as_deref() == Some("Adopted"))
        .filter_map(|ev| ev.note)
        .collect();
    assert_eq!(
        adopted,
        ["adopted ServiceAccount thumbnails as node serviceAccount"],
        "{adopted:?}"
    );
    let hpa: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    assert_eq!(hpa.get("thumbnails").await.unwrap().spec.max_replicas, 6);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    assert!(pdbs.get_opt("thumbnails").await.unwrap().is_some());

    workers
        .delete("thumbnails", &Default::default())
        .await
        .unwrap();
    eventually("the Worker and its children gone", cluster, || async {
        workers.get_opt("thumbnails").await.unwrap().is_none()
            && hpa.get_opt("thumbnails").await.unwrap().is_none()
            && accounts.get_opt("thumbnails").await.unwrap().is_none()
    })
    .await;
}
