//! A published module that turns out bad never reaches the cluster, and going back needs no
//! network: end to end on the real control plane, with a registry that serves wrong bytes for
//! a digest and the real registry stopped.
#![allow(clippy::unwrap_used)]

#[path = "support/module_variant.rs"]
mod module_variant;
use module_variant::module_variant;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cuebe::controller::Operator;
use cuebe::remote::ModuleFetcher;
use cuebe::status::{AbstractionStatus, ConditionType};
use cuebe_testkit::cluster::TestCluster;
use cuebe_testkit::oci_registry::{LocalRegistry, Tamper, TamperingRegistry, publish_module};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use webservice_operator::WebService;

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_module_is_refused_with_nothing_pruned_and_an_earlier_digest_comes_back_offline()
{
    let cluster = TestCluster::shared().await.unwrap();
    let client = cluster.client();
    cluster
        .apply_crds(
            &cuebe::abstraction::crds::<WebService>(),
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
    let ns = cluster.namespace("fallback").await.unwrap();
    let mut registry = LocalRegistry::start().unwrap();
    let (a, b, c) = (
        module_variant("1.0.0"),
        module_variant("1.1.0"),
        module_variant("1.2.0"),
    );
    let v1 = publish_module(&registry, a.path(), "v1.0.0").unwrap();
    let v2 = publish_module(&registry, b.path(), "v1.1.0").unwrap();
    let v3 = publish_module(&registry, c.path(), "v1.2.0").unwrap();
    let evil = TamperingRegistry::start(&registry, Tamper::Blobs)
        .await
        .unwrap();
    let tampered = v3.replace(&registry.host(), &evil.host());
    let cache = tempfile::tempdir().unwrap();
    let _operator = tokio::spawn(
        Operator::<WebService>::new(client.clone())
            .namespace(ns.clone())
            .with_module_fetcher(Arc::new(ModuleFetcher::new(Some(
                cache.path().to_path_buf(),
            ))))
            .run(),
    );
    let api: Api<WebService> = Api::namespaced(client.clone(), &ns);
    let pin = |reference: &str| {
        json!({
            "apiVersion": "platform.example.com/v1alpha1", "kind": "WebService",
            "metadata": {"name": "web"},
            "spec": {
                "image": "registry.example.com/web:1.4.2",
                "resources": {"cpu": "250m", "memory": "256Mi"},
                "platformRef": {"oci": reference},
            },
        })
    };
    let apply = |reference: String| {
        let api = api.clone();
        let body = pin(&reference);
        async move {
            api.patch(
                "web",
                &PatchParams::apply("e2e-test").force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap();
        }
    };
    let status = || async { api.get("web").await.unwrap().status.unwrap_or_default() };
    let wait = |what: &'static str,
                check: Box<dyn Fn(&AbstractionStatus) -> bool + Send + Sync>| {
        async move {
            cuebe_testkit::eventually::eventually(
                what,
                Duration::from_secs(90),
                || async { check(&status().await) },
                || async {
                    format!(
                        "{:#?}\n{}",
                        status().await.conditions,
                        cluster.log_tails(10)
                    )
                },
            )
            .await;
        }
    };
    let ready_on = |reference: String| -> Box<dyn Fn(&AbstractionStatus) -> bool + Send + Sync> {
        Box::new(move |s| s.is_ready() && s.platform_ref_resolved == reference)
    };

    apply(v1.clone()).await;
    wait("Ready on v1", ready_on(v1.clone())).await;
    apply(v2.clone()).await;
    wait("Ready on v2", ready_on(v2.clone())).await;
    let objects = || async {
        let mut uids = BTreeMap::new();
        let d: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let s: Api<Service> = Api::namespaced(client.clone(), &ns);
        let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        uids.insert(
            "Deployment",
            d.get("web").await.unwrap().metadata.uid.unwrap(),
        );
        uids.insert("Service", s.get("web").await.unwrap().metadata.uid.unwrap());
        uids.insert(
            "ServiceAccount",
            sa.get("web").await.unwrap().metadata.uid.unwrap(),
        );
        uids
    };
    let before = objects().await;

    // A registry that serves other bytes for v3's digest: refused, the instance stays on v2.
    apply(tampered.clone()).await;
    wait(
        "DigestMismatch, still on v2",
        Box::new({
            let v2 = v2.clone();
            move |s| {
                s.condition(ConditionType::ModuleResolved)
                    .is_some_and(|c| c.status == "False" && c.reason == "DigestMismatch")
                    && s.platform_ref_resolved == v2
            }
        }),
    )
    .await;
    let s = status().await;
    assert!(
        s.is_ready(),
        "still Ready on its last good module: {:#?}",
        s.conditions
    );
    let resolved = s.condition(ConditionType::ModuleResolved).unwrap();
    assert!(resolved.message.contains(&v2), "{}", resolved.message);
    assert_eq!(objects().await, before, "nothing pruned or recreated");

    // The registry goes away; pinning v1 again is served from the cache.
    drop(evil);
    registry.stop();
    apply(v1.clone()).await;
    wait("Ready on v1 again, offline", ready_on(v1.clone())).await;
    let s = status().await;
    assert_eq!(
        s.condition(ConditionType::ModuleResolved)
            .map(|c| (c.status.as_str(), c.reason.as_str())),
        Some(("True", "Resolved"))
    );
    assert_eq!(objects().await, before, "the same objects, back on v1");
    // Its revisions show the way: v1, v2, v1 again with v1's render hash.
    let hashes: Vec<(&str, &str)> = s
        .revisions
        .iter()
        .map(|r| (r.resolved.as_str(), r.render_hash.as_str()))
        .collect();
    assert_eq!(hashes.len(), 3, "{hashes:?}");
    assert_eq!((hashes[0].0, hashes[2].0), (v1.as_str(), v1.as_str()));
    assert_eq!(
        hashes[0].1, hashes[2].1,
        "going back renders the same Graph"
    );
    assert_eq!(hashes[1].0, v2.as_str());
}
