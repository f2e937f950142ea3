//! Every kind the module renders is watched, whether or not `watches` lists it: an abstraction
//! that forgot the Service in its `watches` still gets a hand-deleted Service recreated at once
//! (not at the next resync minutes later). And the events of a recovery say what is true now.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cuebe::Abstraction;
use cuebe::status::AbstractionStatus;
use cuebe_testkit::cluster::TestCluster;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, CustomResource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The WebService module behind a kind whose `watches` lists only the Deployment (the
/// ServiceAccount and the Service it renders are forgotten).
#[derive(CustomResource, Abstraction, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "forgetful.example.com",
    version = "v1",
    kind = "ForgetfulService",
    namespaced,
    status = "cuebe::status::AbstractionStatus"
)]
#[abstraction(
    module = "../cue/platform",
    package = "./webservice",
    watches = ["apps/v1/Deployment"]
)]
pub struct ForgetfulServiceSpec {
    pub image: String,
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    pub max_replicas: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema)]
pub struct Resources {
    pub cpu: String,
    pub memory: String,
}

async fn status(api: &Api<ForgetfulService>, name: &str) -> AbstractionStatus {
    api.get(name)
        .await
        .ok()
        .and_then(|o| o.status)
        .unwrap_or_default()
}

fn ready(status: &AbstractionStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rendered_kind_missing_from_watches_is_watched_and_a_deleted_object_comes_back_at_once() {
    let cluster = TestCluster::shared().await.unwrap();
    let client: Client = cluster.client();
    let ns = cluster.namespace("forgetful").await.unwrap();
    cluster
        .apply_crds(
            &[cuebe::abstraction::crd::<ForgetfulService>()],
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
    let _operator = tokio::spawn(
        cuebe::controller::Operator::<ForgetfulService>::new(client.clone())
            .namespace(ns.clone())
            .run(),
    );
    let api: Api<ForgetfulService> = Api::namespaced(client.clone(), &ns);
    let body = json!({
        "apiVersion": "forgetful.example.com/v1", "kind": "ForgetfulService",
        "metadata": {"name": "hello"},
        "spec": {"image": "registry.example.com/hello:1.4.2",
                 "resources": {"cpu": "250m", "memory": "256Mi"}},
    });
    api.patch(
        "hello",
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
    let wait = |what: &'static str| {
        let api = api.clone();
        async move {
            cuebe_testkit::eventually::eventually(
                what,
                Duration::from_secs(60),
                || {
                    let api = api.clone();
                    async move { ready(&status(&api, "hello").await) }
                },
                || async { cluster.log_tails(10) },
            )
            .await;
        }
    };
    wait("the instance Ready").await;

    // Deleted by hand: neither kind is in `watches`, both are watched since the first render.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let service_uid = services.get("hello").await.unwrap().metadata.uid;
    let account_uid = accounts.get("hello").await.unwrap().metadata.uid;
    services
        .delete("hello", &DeleteParams::default())
        .await
        .unwrap();
    accounts
        .delete("hello", &DeleteParams::default())
        .await
        .unwrap();
    // Well inside the Ready resync (minutes): only a watch brings them back this fast.
    cuebe_testkit::eventually::eventually(
        "the Service and ServiceAccount recreated",
        Duration::from_secs(20),
        || {
            let (services, accounts) = (services.clone(), accounts.clone());
            let (service_uid, account_uid) = (service_uid.clone(), account_uid.clone());
            async move {
                let service = services.get_opt("hello").await.ok().flatten();
                let account = accounts.get_opt("hello").await.ok().flatten();
                service.is_some_and(|s| s.metadata.uid != service_uid)
                    && account.is_some_and(|a| a.metadata.uid != account_uid)
            }
        },
        || async { cluster.log_tails(10) },
    )
    .await;
    wait("the instance Ready again").await;

    // A change that adds a node (the HPA): Ready again, and its event says so, not the count
    // of the first Ready (kube's recorder would fold it into the first event and keep its note).
    let first = status(&api, "hello").await.ready_nodes;
    let mut scaled = body.clone();
    scaled["spec"]["autoscaling"] = json!({"maxReplicas": 4});
    api.patch(
        "hello",
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(&scaled),
    )
    .await
    .unwrap();
    cuebe_testkit::eventually::eventually(
        "Ready with the HPA",
        Duration::from_secs(60),
        || {
            let api = api.clone();
            let first = first.clone();
            async move {
                let s = status(&api, "hello").await;
                ready(&s) && s.ready_nodes != first && s.nodes.contains_key("hpa")
            }
        },
        || async { cluster.log_tails(10) },
    )
    .await;
    let now = status(&api, "hello").await;
    let ready_message = now
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    cuebe_testkit::eventually::eventually(
        "a Ready event with the new message",
        Duration::from_secs(20),
        || {
            let events = events.clone();
            let ready_message = ready_message.clone();
            async move {
                events
                    .list(&Default::default())
                    .await
                    .map(|list| {
                        list.items.iter().any(|e| {
                            e.reason.as_deref() == Some("Ready")
                                && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                                    == Some("hello")
                                && e.note.as_deref() == Some(ready_message.as_str())
                        })
                    })
                    .unwrap_or(false)
            }
        },
        || async { cluster.log_tails(10) },
    )
    .await;
}
