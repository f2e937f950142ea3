//! The events a rollout leaves on its channel, on the real control plane: one per step, halt,
//! rollback and completion, each with its own note (`kubectl describe platformchannel` is how
//! a person follows a rollout).
#![allow(clippy::unwrap_used)]

#[path = "support/module_variant.rs"]
mod module_variant;
use module_variant::module_variant;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cuebe::controller::Operator;
use cuebe::remote::ModuleFetcher;
use cuebe::rollout::{Phase, PlatformChannel};
use cuebe_testkit::cluster::TestCluster;
use cuebe_testkit::oci_registry::{LocalRegistry, publish_module};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use webservice_operator::WebService;

/// The notes of the events on `channel`, oldest first.
async fn notes(client: &kube::Client, channel: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(client.clone());
    let mut found: Vec<_> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(channel))
        .map(|e| {
            let at = e
                .event_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            (at, e.note.unwrap_or_default())
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, note)| note).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_step_and_every_rollout_has_an_event_of_its_own() {
    let cluster = TestCluster::shared().await.unwrap();
    let client = cluster.client();
    cluster
        .apply_crds(
            &cuebe::abstraction::crds::<WebService>(),
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
    let ns = cluster.namespace("rollout-events").await.unwrap();
    let registry = LocalRegistry::start().unwrap();
    let next = publish_module(&registry, module_variant("events 1.1.0").path(), "v1.1.0").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let controller = tokio::spawn(
        Operator::<WebService>::new(client.clone())
            .namespace(ns.clone())
            .with_module_fetcher(Arc::new(ModuleFetcher::new(Some(
                cache.path().to_path_buf(),
            ))))
            .run(),
    );
    let name = format!("{ns}-events");
    let channels: Api<PlatformChannel> = Api::all(client.clone());
    let channel = json!({
        "apiVersion": "cuebe.dev/v1alpha1", "kind": "PlatformChannel",
        "metadata": {"name": name, "labels": {"cuebe.dev/namespace": ns}},
        "spec": {
            "abstraction": {"group": "platform.example.com", "kind": "WebService"},
            "module": {"embedded": "1.0.0"},
            "strategy": {"steps": ["1"], "pause": "0s", "healthDeadline": "2m"},
        },
    });
    channels
        .patch(
            &name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&channel),
        )
        .await
        .unwrap();
    let webservices: Api<WebService> = Api::namespaced(client.clone(), &ns);
    for service in ["a", "b", "c"] {
        let body = json!({
            "apiVersion": "platform.example.com/v1alpha1", "kind": "WebService",
            "metadata": {"name": service},
            "spec": {"image": "registry.example.com/web:1.4.2",
                "resources": {"cpu": "100m", "memory": "64Mi"},
                "platformRef": {"channel": name}},
        });
        webservices
            .patch(
                service,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap();
    }
    let all_ready = || async {
        let list = webservices.list(&ListParams::default()).await.unwrap();
        list.items.len() == 3
            && list
                .items
                .iter()
                .all(|w| w.status.as_ref().is_some_and(|s| s.is_ready()))
    };
    let phase = || async {
        channels
            .get(&name)
            .await
            .unwrap()
            .status
            .and_then(|s| s.rollout)
            .map(|r| r.phase)
    };
    cuebe_testkit::eventually::eventually(
        "3 WebServices Ready on the channel",
        Duration::from_secs(90),
        all_ready,
        || async { cluster.log_tails(10) },
    )
    .await;

    // Two steps (the canary, then the implied 100%), then back by a second rollout: within
    // minutes, so kube's recorder would fold each into the first of its reason.
    let roll_out = |module: serde_json::Value| {
        let channels = channels.clone();
        let name = name.clone();
        async move {
            channels
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"module": module}})),
                )
                .await
                .unwrap();
        }
    };
    roll_out(json!({"embedded": null, "oci": next})).await;
    cuebe_testkit::eventually::eventually(
        "the rollout to the published module Complete",
        Duration::from_secs(120),
        || async { phase().await == Some(Phase::Complete) && all_ready().await },
        || async { format!("{:?}", channels.get(&name).await.map(|c| c.status)) },
    )
    .await;
    roll_out(json!({"oci": null, "embedded": "1.0.0"})).await;
    cuebe_testkit::eventually::eventually(
        "the rollout back to the embedded module Complete",
        Duration::from_secs(120),
        || async {
            let status = channels
                .get(&name)
                .await
                .unwrap()
                .status
                .unwrap_or_default();
            status.history.len() == 2 && status.phase == "Complete"
        },
        || async { format!("{:?}", channels.get(&name).await.map(|c| c.status)) },
    )
    .await;

    let wanted = [
        "the channel starts on embedded:1.0.0".to_string(),
        format!("rolling out {next}: previewing every instance first"),
        "step 1: 1 of 3 instances on the new module".to_string(),
        "step 2: 3 of 3 instances on the new module".to_string(),
        format!("every instance is on {next}"),
        "rolling out embedded:1.0.0: previewing every instance first".to_string(),
        "every instance is on embedded:1.0.0".to_string(),
    ];
    // The driver writes a pass's status before it publishes that pass's events: the last
    // event may still be on its way when the status says Complete.
    let seen = std::sync::Mutex::new(Vec::new());
    cuebe_testkit::eventually::eventually(
        "an event for every transition",
        Duration::from_secs(30),
        || async {
            let notes = notes(&client, &name).await;
            let all = wanted.iter().all(|w| notes.contains(w));
            *seen.lock().unwrap() = notes;
            all
        },
        || async { format!("wanted {wanted:#?}\nseen {:#?}", seen.lock().unwrap()) },
    )
    .await;
    let notes = seen.into_inner().unwrap();
    assert_eq!(
        notes.iter().filter(|n| n.starts_with("step 1:")).count(),
        2,
        "one canary step per rollout: {notes:#?}"
    );
    controller.abort();
    channels.delete(&name, &Default::default()).await.unwrap();
}
