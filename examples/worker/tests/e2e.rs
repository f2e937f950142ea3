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

/// The Worker's `queueCredentials` is a reference node: the Worker waits for a Secret someone
/// else creates, never writes, records or deletes it, and a change to it reaches the pods.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_waits_for_the_secret_it_references_and_never_owns_it() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Secret;

    let cluster = TestCluster::shared().await.unwrap();
    let client: Client = cluster.client();
    let ns = cluster.namespace("worker-ref").await.unwrap();
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
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let body = json!({
        "apiVersion": "example.com/v1alpha1", "kind": "Worker",
        "metadata": {"name": "mailer"},
        "spec": {
            "image": "registry.example.com/mailer:1.2.0",
            "queue": "https://sqs.eu-west-1.amazonaws.com/111122223333/mail",
            "queueCredentials": "mail-queue",
        },
    });
    workers
        .patch(
            "mailer",
            &PatchParams::apply("e2e-test"),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();

    // No Secret yet: the reference is Pending naming it, the Deployment waits, nothing else
    // is wrong with the Worker.
    let missing = format!("Secret {ns}/mail-queue does not exist");
    eventually(
        "the Worker Pending on the missing Secret",
        cluster,
        || async {
            let s = status(&workers, "mailer").await;
            let ready = s.condition(cuebe::status::ConditionType::Ready);
            s.nodes.get("queueCredentials").is_some_and(|n| {
                n.phase == NodePhase::Pending
                    && n.blocked_on == [format!("object:Secret/{ns}/mail-queue")]
            }) && ready.is_some_and(|c| c.status == "False" && c.message.contains(&missing))
                && s.nodes
                    .get("deployment")
                    .is_some_and(|n| n.phase == NodePhase::Pending)
                && s.nodes
                    .get("serviceAccount")
                    .is_some_and(|n| n.phase == NodePhase::Ready)
        },
    )
    .await;
    assert!(deployments.get_opt("mailer").await.unwrap().is_none());
    assert!(
        secrets.get_opt("mail-queue").await.unwrap().is_none(),
        "a reference is never created"
    );

    // Someone creates it: the Worker goes on to Ready without an edit of its own.
    let theirs = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "mail-queue", "labels": {"team": "mail"}},
        "stringData": {"QUEUE_USER": "mailer", "QUEUE_PASSWORD": "s3cret"}});
    secrets
        .patch(
            "mail-queue",
            &PatchParams::apply("kubectl"),
            &Patch::Apply(&theirs),
        )
        .await
        .unwrap();
    eventually("the Worker Ready", cluster, || async {
        status(&workers, "mailer").await.is_ready()
    })
    .await;
    let ready = status(&workers, "mailer").await;
    assert_eq!(ready.ready_nodes, "4/4", "{ready:?}");
    assert!(
        ready.inventory.iter().all(|e| e.kind != "Secret"),
        "the referenced Secret is not in the inventory: {:?}",
        ready.inventory
    );
    let secret = secrets.get("mail-queue").await.unwrap();
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.keys().collect::<Vec<_>>(),
        ["team"],
        "no cuebe labels on a referenced object"
    );
    let managers: Vec<String> = secret
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|f| f.manager.clone())
        .collect();
    assert_eq!(managers, ["kubectl"], "only its owner ever wrote it");
    let deployment = deployments.get("mailer").await.unwrap();
    let template = deployment.spec.template;
    let pod = template.spec.clone().unwrap();
    let container = &pod.containers[0];
    let env_from = container.env_from.clone().unwrap_or_default();
    assert_eq!(
        env_from[0].secret_ref.as_ref().map(|r| r.name.as_str()),
        Some("mail-queue")
    );
    let version = |t: &k8s_openapi::api::core::v1::PodTemplateSpec| {
        t.metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("example.com/credentials-version").cloned())
    };
    assert_eq!(version(&template), secret.metadata.resource_version);

    // Rotating the credentials reaches the pods at once (the Ready Worker's resync is 5
    // minutes away: what wakes it is the watch of referenced objects).
    let rotated = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "mail-queue", "labels": {"team": "mail"}},
        "stringData": {"QUEUE_USER": "mailer", "QUEUE_PASSWORD": "rotated"}});
    let rotated = secrets
        .patch(
            "mail-queue",
            &PatchParams::apply("kubectl"),
            &Patch::Apply(&rotated),
        )
        .await
        .unwrap();
    let started = Instant::now();
    eventually(
        "the pods roll to the rotated credentials",
        cluster,
        || async {
            let d = deployments.get("mailer").await.unwrap();
            version(&d.spec.template) == rotated.metadata.resource_version
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "woken by the watch, not a resync: {:?}",
        started.elapsed()
    );

    // Deleting the Worker removes what it wrote and leaves the Secret.
    workers.delete("mailer", &Default::default()).await.unwrap();
    eventually("the Worker and its children gone", cluster, || async {
        workers.get_opt("mailer").await.unwrap().is_none()
            && deployments.get_opt("mailer").await.unwrap().is_none()
    })
    .await;
    let kept = secrets.get("mail-queue").await.unwrap();
    assert_eq!(kept.metadata.uid, secret.metadata.uid, "the Secret is left");
}
