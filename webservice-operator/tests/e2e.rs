//! The WebService operator end to end, on the real control plane (etcd, kube-apiserver,
//! controller-manager, scheduler, kwok) with the ACK stand-in playing AWS.
//!
//! Each test gets its own namespace and its own controller scoped to it.
#![allow(clippy::unwrap_used)]

#[path = "support/module_variant.rs"]
mod module_variant;
use module_variant::module_variant;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cuebe::controller::Operator;
use cuebe::ops::leader::LeaderElection;
use cuebe::status::ConditionType;
use cuebe::status::{AbstractionStatus, NodePhase};
use cuebe_testkit::cluster::TestCluster;
use cuebe_testkit::cluster::ack::{AckStandIn, AckStandInOptions, TERMINAL_MESSAGE};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use serde_json::json;
use webservice_operator::WebService;

struct Env {
    cluster: &'static TestCluster,
    client: Client,
    ns: String,
    controller: tokio::task::JoinHandle<()>,
}

async fn env(prefix: &str) -> Env {
    env_with(prefix, |operator| operator).await
}

/// `env` with the operator configured by `configure`.
async fn env_with(
    prefix: &str,
    configure: impl FnOnce(Operator<WebService>) -> Operator<WebService>,
) -> Env {
    let cluster = match TestCluster::shared().await {
        Ok(c) => c,
        Err(e) => panic!("the test cluster did not start: {e}"),
    };
    let client = cluster.client();
    let ns = cluster.namespace(prefix).await.unwrap();
    let controller = tokio::spawn(
        configure(Operator::<WebService>::new(client.clone()).namespace(ns.clone())).run(),
    );
    install_crd(cluster).await;
    Env {
        cluster,
        client,
        ns,
        controller,
    }
}

async fn install_crd(cluster: &TestCluster) {
    cluster
        .apply_crds(
            &[cuebe::abstraction::crd::<WebService>()],
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
}

impl Env {
    fn webservices(&self) -> Api<WebService> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn apply(&self, name: &str, spec: serde_json::Value) {
        let body = json!({
            "apiVersion": "platform.example.com/v1alpha1", "kind": "WebService",
            "metadata": {"name": name}, "spec": spec,
        });
        self.webservices()
            .patch(
                name,
                &PatchParams::apply("e2e-test").force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap();
    }

    async fn status(&self, name: &str) -> AbstractionStatus {
        self.webservices()
            .get(name)
            .await
            .unwrap()
            .status
            .unwrap_or_default()
    }

    async fn eventually<F, Fut>(&self, what: &str, timeout: Duration, check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        cuebe_testkit::eventually::eventually(what, timeout, check, || async {
            let statuses: Vec<String> = self
                .webservices()
                .list(&Default::default())
                .await
                .map(|l| {
                    l.items
                        .into_iter()
                        .map(|w| serde_json::to_string_pretty(&w.status).unwrap())
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "statuses: {}\n{}",
                statuses.join("\n"),
                self.cluster.log_tails(10)
            )
        })
        .await;
    }

    async fn ready(&self, name: &str) {
        self.eventually(
            &format!("{name} Ready"),
            Duration::from_secs(60),
            || async { self.status(name).await.is_ready() },
        )
        .await;
    }

    /// The ACK stand-in for this test's namespace: synced after `delay`, `failing` Terminal.
    fn ack_stand_in(&self, delay: Duration, failing: &[&str]) -> AckStandIn {
        AckStandIn::spawn(
            self.client.clone(),
            AckStandInOptions {
                delay,
                failing: failing.iter().map(|f| f.to_string()).collect(),
                namespace: Some(self.ns.clone()),
                ..Default::default()
            },
        )
    }

    fn ack(&self, kind: &str) -> Api<DynamicObject> {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "iam.services.k8s.aws",
            "v1alpha1",
            kind,
        ));
        Api::namespaced_with(self.client.clone(), &self.ns, &ar)
    }
}

fn simple() -> serde_json::Value {
    json!({"image": "registry.example.com/web:1.4.2", "resources": {"cpu": "250m", "memory": "256Mi"}})
}

/// The simple spec with `spec.iam` set (IRSA through ACK).
fn with_iam(iam: serde_json::Value) -> serde_json::Value {
    let mut spec = simple();
    spec["iam"] = iam;
    spec
}

#[tokio::test(flavor = "multi_thread")]
async fn a_simple_service_becomes_ready_and_a_resync_writes_nothing() {
    let e = env("simple").await;
    e.apply("web", simple()).await;
    e.ready("web").await;
    let status = e.status("web").await;
    assert_eq!(status.ready_nodes, "4/4");
    for c in [
        ConditionType::Rendered,
        ConditionType::PolicyPassed,
        ConditionType::Ready,
    ] {
        assert_eq!(status.condition(c).unwrap().status, "True", "{c}");
    }
    assert!(status.render_hash.starts_with("sha256:"));
    let ids: Vec<&str> = status
        .inventory
        .iter()
        .map(|i| i.node_id.as_str())
        .collect();
    assert_eq!(ids, ["serviceAccount", "deployment", "service", "pdb"]);
    let d: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    let deploy = d.get("web").await.unwrap();
    let labels = deploy.metadata.labels.unwrap();
    assert_eq!(labels["cuebe.dev/instance"], "web");
    assert_eq!(labels["cuebe.dev/kind"], "WebService");
    let managers: Vec<String> = deploy
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&"cuebe-webservice".to_string()),
        "{managers:?}"
    );

    // Steady state: nothing the operator manages changes while it keeps reconciling.
    let before: Vec<String> = e
        .status("web")
        .await
        .inventory
        .iter()
        .map(|i| i.last_applied_resource_version.clone())
        .collect();
    let rv_before = d.get("web").await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after: Vec<String> = e
        .status("web")
        .await
        .inventory
        .iter()
        .map(|i| i.last_applied_resource_version.clone())
        .collect();
    assert_eq!(before, after, "no object was re-applied");
    assert_eq!(
        rv_before,
        d.get("web").await.unwrap().metadata.resource_version
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn irsa_creates_the_role_first_and_annotates_the_service_account_after_the_arn() {
    let e = env("irsa").await;
    // ACK plays its part only once the state before the ARN is checked: a stand-in started with
    // the instance would race those checks with its own timer (its watch lists the Role that is
    // already there when it starts).
    let spec = with_iam(json!({"policyARNs": ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"]}));
    e.apply("reports", spec).await;
    // Before ACK reports the ARN: the Role exists, the ServiceAccount and Deployment do not.
    e.eventually(
        "the Role to be created and the status to say so",
        Duration::from_secs(20),
        || async {
            e.ack("Role")
                .get_opt("reports-iam")
                .await
                .unwrap()
                .is_some()
                && e.status("reports")
                    .await
                    .nodes
                    .contains_key("serviceAccount")
        },
    )
    .await;
    let status = e.status("reports").await;
    assert_eq!(
        status.nodes["serviceAccount"].phase,
        NodePhase::Pending,
        "{status:?}"
    );
    assert_eq!(
        status.nodes["serviceAccount"].blocked_on,
        ["export:roleArn"]
    );
    assert_eq!(status.nodes["deployment"].phase, NodePhase::Pending);
    let sas: Api<ServiceAccount> = Api::namespaced(e.client.clone(), &e.ns);
    assert!(
        sas.get_opt("reports").await.unwrap().is_none(),
        "no ServiceAccount before the ARN"
    );
    let deployments: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    assert!(
        deployments.get_opt("reports").await.unwrap().is_none(),
        "no Deployment before its ServiceAccount"
    );

    let _ack = e.ack_stand_in(Duration::from_millis(300), &[]);
    e.ready("reports").await;
    let sa = sas.get("reports").await.unwrap();
    let role = e.ack("Role").get("reports-iam").await.unwrap();
    let arn = role
        .data
        .pointer("/status/ackResourceMetadata/arn")
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        sa.metadata.annotations.unwrap()["eks.amazonaws.com/role-arn"],
        arn
    );
    // The ServiceAccount came after the Role turned Ready, the Deployment after the ServiceAccount.
    let status = e.status("reports").await;
    let t = |id: &str| {
        status
            .inventory_entry(id)
            .unwrap()
            .last_ready_transition
            .clone()
            .unwrap()
    };
    assert!(t("iamRole") <= t("serviceAccount") && t("serviceAccount") <= t("deployment"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ack_terminal_puts_the_node_in_error_and_the_instance_stalled() {
    let e = env("terminal").await;
    let _ack = e.ack_stand_in(Duration::from_millis(300), &["denied-iam"]);
    let spec = with_iam(json!({"policyARNs": []}));
    e.apply("denied", spec).await;
    e.eventually(
        "Stalled with ACK's message",
        Duration::from_secs(30),
        || async {
            let s = e.status("denied").await;
            s.condition(ConditionType::Stalled)
                .is_some_and(|c| c.status == "True" && c.message.contains(TERMINAL_MESSAGE))
        },
    )
    .await;
    let s = e.status("denied").await;
    assert_eq!(s.nodes["iamRole"].phase, NodePhase::Error);
    assert!(
        s.nodes["iamRole"]
            .last_error
            .as_deref()
            .unwrap()
            .contains(TERMINAL_MESSAGE)
    );
    assert_eq!(s.condition(ConditionType::Ready).unwrap().status, "False");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_violation_applies_nothing_and_is_in_status() {
    let e = env("policy").await;
    e.apply("bad", json!({"image": "docker.io/library/nginx:1.27", "resources": {"cpu": "1", "memory": "1Gi"}})).await;
    e.eventually("PolicyPassed False", Duration::from_secs(20), || async {
        e.status("bad")
            .await
            .condition(ConditionType::PolicyPassed)
            .is_some_and(|c| c.status == "False")
    })
    .await;
    let s = e.status("bad").await;
    assert_eq!(s.violations[0].path, "spec.image");
    assert_eq!(s.violations[0].rule, "allowed-registries");
    assert!(s.inventory.is_empty());
    let d: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    assert!(d.get_opt("bad").await.unwrap().is_none());
    assert_eq!(s.condition(ConditionType::Stalled).unwrap().status, "True");
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_autoscaling_prunes_the_hpa() {
    let e = env("prune").await;
    let mut spec = simple();
    spec["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 5});
    e.apply("scaled", spec).await;
    e.ready("scaled").await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(e.client.clone(), &e.ns);
    assert!(hpas.get_opt("scaled").await.unwrap().is_some());
    e.apply("scaled", simple()).await;
    e.eventually("the HPA to be pruned", Duration::from_secs(30), || async {
        hpas.get_opt("scaled").await.unwrap().is_none()
    })
    .await;
    // The status written after the prune no longer lists it.
    e.eventually(
        "the inventory to drop the HPA",
        Duration::from_secs(10),
        || async {
            let s = e.status("scaled").await;
            s.is_ready() && s.inventory_entry("hpa").is_none()
        },
    )
    .await;
    // The prune is on the instance's record, as an event naming the object.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(e.client.clone(), &e.ns);
    e.eventually("a Pruned event", Duration::from_secs(10), || async {
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|ev| {
                ev.reason.as_deref() == Some("Pruned")
                    && ev.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("scaled")
                    && ev.note.as_deref()
                        == Some("deleted HorizontalPodAutoscaler scaled: node hpa left the graph")
            })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prune_above_the_threshold_waits_stalled_until_the_annotation_raises_it() {
    let e = env("guard").await;
    let mut spec = simple();
    spec["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 5});
    e.apply("guarded", spec).await;
    e.ready("guarded").await;
    let api = e.webservices();
    let annotate = |value: &'static str| {
        let api = api.clone();
        async move {
            let patch = json!({"metadata": {"annotations": {"cuebe.dev/prune-threshold": value}}});
            api.patch("guarded", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    // 10%: dropping the HPA (one object of six) is more than this instance allows.
    annotate("10").await;
    e.apply("guarded", simple()).await;
    e.eventually(
        "Stalled with reason PruneGuard",
        Duration::from_secs(30),
        || async {
            let s = e.status("guarded").await;
            s.condition(ConditionType::Stalled).is_some_and(|c| {
                c.status == "True"
                    && c.reason == "PruneGuard"
                    && c.message.contains("HorizontalPodAutoscaler guarded")
            })
        },
    )
    .await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(e.client.clone(), &e.ns);
    assert!(
        hpas.get_opt("guarded").await.unwrap().is_some(),
        "nothing is pruned while the guard holds"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(e.client.clone(), &e.ns);
    e.eventually("a PruneGuard event", Duration::from_secs(10), || async {
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|ev| {
                ev.reason.as_deref() == Some("PruneGuard")
                    && ev.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("guarded")
            })
    })
    .await;
    // Raising the threshold (an annotation change, no spec change) lets the prune through.
    annotate("100").await;
    e.eventually("the HPA to be pruned", Duration::from_secs(60), || async {
        hpas.get_opt("guarded").await.unwrap().is_none()
    })
    .await;
    e.ready("guarded").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_written_but_never_recorded_are_pruned_after_a_restart_and_deleted_with_the_instance()
 {
    use cuebe::Abstraction;
    let e = env("unrecorded").await;
    let mut spec = simple();
    spec["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 5});
    e.apply("leaky", spec).await;
    e.ready("leaky").await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(e.client.clone(), &e.ns);
    assert!(hpas.get_opt("leaky").await.unwrap().is_some());

    // The operator dies between applying the HPA and storing the inventory that records it:
    // the HPA carries the instance's labels and the operator's field manager, and the stored
    // inventory does not list it. Meanwhile autoscaling is turned off.
    e.controller.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut status = e.status("leaky").await;
    status.inventory.retain(|i| i.node_id != "hpa");
    let body = json!({"apiVersion": "platform.example.com/v1alpha1", "kind": "WebService", "status": status});
    e.webservices()
        .patch_status(
            "leaky",
            &PatchParams::apply(WebService::FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    e.apply("leaky", simple()).await;
    let _restarted = tokio::spawn(
        Operator::<WebService>::new(e.client.clone())
            .namespace(e.ns.clone())
            .run(),
    );
    e.eventually(
        "the unrecorded HPA to be pruned after the restart",
        Duration::from_secs(30),
        || async { hpas.get_opt("leaky").await.unwrap().is_none() },
    )
    .await;
    e.eventually(
        "leaky Ready without an HPA",
        Duration::from_secs(30),
        || async {
            let s = e.status("leaky").await;
            s.is_ready()
                && s.inventory
                    .iter()
                    .all(|i| i.kind != "HorizontalPodAutoscaler")
        },
    )
    .await;

    // An object written while the operator runs, and never recorded (its store failed): the
    // instance's deletion removes it with the rest.
    let services: Api<Service> = Api::namespaced(e.client.clone(), &e.ns);
    let stray = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "leaky-old", "labels": {"cuebe.dev/instance": "leaky", "cuebe.dev/kind": "WebService"}},
        "spec": {"ports": [{"port": 80}]},
    });
    services
        .patch(
            "leaky-old",
            &PatchParams::apply(WebService::FIELD_MANAGER),
            &Patch::Apply(&stray),
        )
        .await
        .unwrap();
    // Our labels without our field manager: not ours, so it survives the deletion.
    let copied = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "leaky-copy", "labels": {"cuebe.dev/instance": "leaky", "cuebe.dev/kind": "WebService"}},
        "spec": {"ports": [{"port": 80}]},
    });
    services
        .patch(
            "leaky-copy",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&copied),
        )
        .await
        .unwrap();
    e.webservices()
        .delete("leaky", &DeleteParams::default())
        .await
        .unwrap();
    e.eventually("leaky to be deleted", Duration::from_secs(60), || async {
        e.webservices().get_opt("leaky").await.unwrap().is_none()
    })
    .await;
    e.eventually(
        "the unrecorded Service to be deleted with the instance",
        Duration::from_secs(30),
        || async {
            services
                .get_opt("leaky-old")
                .await
                .unwrap()
                .is_none_or(|s| s.metadata.deletion_timestamp.is_some())
        },
    )
    .await;
    assert!(services.get_opt("leaky-copy").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_the_module_cannot_render_is_refused_at_admission_and_the_longest_that_fits_works() {
    let e = env("names").await;
    let too_long = "a".repeat(64);
    for name in [too_long.as_str(), "web.example"] {
        let body = json!({
            "apiVersion": "platform.example.com/v1alpha1", "kind": "WebService",
            "metadata": {"name": name}, "spec": simple(),
        });
        let err = e
            .webservices()
            .patch(name, &PatchParams::apply("e2e-test"), &Patch::Apply(&body))
            .await
            .expect_err("the API server refuses the name");
        let kube::Error::Api(status) = err else {
            panic!("{name}: {err}")
        };
        assert_eq!(status.code, 422, "{name}: {status:?}");
        assert!(
            status.message.contains("metadata.name must be a DNS label"),
            "{name}: {}",
            status.message
        );
        // Nothing was created, so nothing can be half-applied.
        assert!(e.webservices().get_opt(name).await.unwrap().is_none());
    }
    // 63 characters is the longest name that fits every object name and label value.
    let longest = format!("w{}", "x".repeat(62));
    e.apply(&longest, simple()).await;
    e.ready(&longest).await;
    let services: Api<Service> = Api::namespaced(e.client.clone(), &e.ns);
    assert!(services.get_opt(&longest).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_pinned_to_a_published_module_is_ready_and_outlives_its_registry() {
    use cuebe::remote::ModuleFetcher;
    use cuebe_testkit::oci_registry::{LocalRegistry, publish_module};
    let mut registry = LocalRegistry::start().unwrap();
    let module_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cue/platform");
    let reference = publish_module(&registry, &module_dir, "v1.0.0").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let fetcher = || Arc::new(ModuleFetcher::new(Some(cache.path().to_path_buf())));
    let e = env_with("oci", |operator| operator.with_module_fetcher(fetcher())).await;

    let mut spec = simple();
    spec["platformRef"] = json!({"oci": reference});
    e.apply("pinned", spec).await;
    e.ready("pinned").await;
    let status = e.status("pinned").await;
    assert_eq!(status.platform_ref_resolved, reference);
    let resolved = status.condition(ConditionType::ModuleResolved).unwrap();
    assert_eq!(
        (resolved.status.as_str(), resolved.reason.as_str()),
        ("True", "Resolved")
    );
    let verified = status.condition(ConditionType::ModuleVerified).unwrap();
    assert_eq!(
        (verified.status.as_str(), verified.reason.as_str()),
        ("False", "Unverified")
    );
    // The module put in use is on the instance's record.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(e.client.clone(), &e.ns);
    e.eventually("a ModuleLoaded event", Duration::from_secs(10), || async {
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|ev| {
                ev.reason.as_deref() == Some("ModuleLoaded")
                    && ev.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("pinned")
                    && ev
                        .note
                        .as_deref()
                        .is_some_and(|n| n.starts_with(&reference) && n.contains("Unverified"))
            })
    })
    .await;

    // A digest the registry does not have: nothing is applied, and the status says why.
    let (name, _) = reference.rsplit_once('@').unwrap();
    let missing = format!("{name}@sha256:{}", "0".repeat(64));
    let mut spec = simple();
    spec["platformRef"] = json!({"oci": missing});
    e.apply("missing", spec).await;
    e.eventually(
        "missing to say FetchFailed",
        Duration::from_secs(30),
        || async {
            e.status("missing")
                .await
                .condition(ConditionType::ModuleResolved)
                .is_some_and(|c| c.status == "False" && c.reason == "FetchFailed")
        },
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    assert!(deployments.get_opt("missing").await.unwrap().is_none());

    // The registry goes away. The pinned digest is cached: drift is still corrected, also by a
    // restarted operator that has only the disk cache.
    registry.stop();
    deployments
        .delete("pinned", &DeleteParams::default())
        .await
        .unwrap();
    e.eventually(
        "the Deployment recreated without the registry",
        Duration::from_secs(30),
        || async {
            deployments
                .get_opt("pinned")
                .await
                .unwrap()
                .is_some_and(|d| d.metadata.deletion_timestamp.is_none())
        },
    )
    .await;
    e.controller.abort();
    let _restarted = tokio::spawn(
        Operator::<WebService>::new(e.client.clone())
            .namespace(e.ns.clone())
            .with_module_fetcher(fetcher())
            .run(),
    );
    let services: Api<Service> = Api::namespaced(e.client.clone(), &e.ns);
    services
        .delete("pinned", &DeleteParams::default())
        .await
        .unwrap();
    e.eventually(
        "the Service recreated by the restarted operator",
        Duration::from_secs(30),
        || async {
            services
                .get_opt("pinned")
                .await
                .unwrap()
                .is_some_and(|s| s.metadata.deletion_timestamp.is_none())
        },
    )
    .await;
    assert_eq!(e.status("pinned").await.platform_ref_resolved, reference);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hand_edit_is_reverted_and_a_deleted_object_is_recreated() {
    let e = env("drift").await;
    e.apply("web", simple()).await;
    e.ready("web").await;
    let d: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    // `kubectl scale` as another manager.
    let scale = json!({"spec": {"replicas": 7}});
    d.patch("web", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .unwrap();
    e.eventually(
        "replicas reverted to 2",
        Duration::from_secs(20),
        || async { d.get("web").await.unwrap().spec.replicas == Some(2) },
    )
    .await;
    let svcs: Api<Service> = Api::namespaced(e.client.clone(), &e.ns);
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    e.eventually(
        "the Service to be recreated",
        Duration::from_secs(20),
        || async { svcs.get_opt("web").await.unwrap().is_some() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_gateway_api_crds_a_public_service_gets_an_http_route() {
    // The shared cluster has the Gateway API CRDs, so the operator renders an HTTPRoute.
    let e = env("public").await;
    let mut spec = simple();
    spec["exposure"] = json!({"type": "Public", "host": "web.example.com"});
    e.apply("web", spec).await;
    e.ready("web").await;
    let s = e.status("web").await;
    assert!(
        s.inventory_entry("httpRoute").is_some(),
        "{:?}",
        s.inventory
    );
    assert!(s.inventory_entry("networkPolicy").is_some());
    let ingresses: Api<Ingress> = Api::namespaced(e.client.clone(), &e.ns);
    assert!(ingresses.get_opt("web").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_with_delete_removes_children_and_with_orphan_keeps_them_unlabelled() {
    let e = env("delete").await;
    e.apply("gone", simple()).await;
    let mut kept = simple();
    kept["deletionPolicy"] = json!("Orphan");
    e.apply("kept", kept).await;
    e.ready("gone").await;
    e.ready("kept").await;
    e.webservices()
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    e.webservices()
        .delete("kept", &DeleteParams::default())
        .await
        .unwrap();
    let d: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    e.eventually(
        "both WebServices to be gone",
        Duration::from_secs(60),
        || async {
            e.webservices().get_opt("gone").await.unwrap().is_none()
                && e.webservices().get_opt("kept").await.unwrap().is_none()
        },
    )
    .await;
    e.eventually(
        "the Delete instance's Deployment to be gone",
        Duration::from_secs(30),
        || async { d.get_opt("gone").await.unwrap().is_none() },
    )
    .await;
    let orphan = d.get("kept").await.unwrap();
    let labels = orphan.metadata.labels.unwrap_or_default();
    assert!(
        !labels.contains_key("cuebe.dev/instance"),
        "orphaned objects lose the management labels: {labels:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_killed_mid_dag_resumes_with_no_duplicate_or_lost_object() {
    let e = env("restart").await;
    let _ack = e.ack_stand_in(Duration::from_secs(3), &[]);
    let spec = with_iam(json!({"policyARNs": []}));
    e.apply("reports", spec).await;
    e.eventually(
        "the Role to be applied (mid-DAG)",
        Duration::from_secs(20),
        || async {
            e.ack("Role")
                .get_opt("reports-iam")
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;
    e.controller.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _restarted = tokio::spawn(
        cuebe::controller::Operator::<WebService>::new(e.client.clone())
            .namespace(e.ns.clone())
            .run(),
    );
    e.ready("reports").await;
    let s = e.status("reports").await;
    let ids: Vec<&str> = s.inventory.iter().map(|i| i.node_id.as_str()).collect();
    assert_eq!(
        ids,
        ["iamRole", "serviceAccount", "deployment", "service", "pdb"]
    );
    // Exactly one of each object, carrying the instance's label.
    let selector = kube::api::ListParams::default().labels("cuebe.dev/instance=reports");
    assert_eq!(e.ack("Role").list(&selector).await.unwrap().items.len(), 1);
    let d: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    assert_eq!(d.list(&selector).await.unwrap().items.len(), 1);
    let sas: Api<ServiceAccount> = Api::namespaced(e.client.clone(), &e.ns);
    assert_eq!(sas.list(&selector).await.unwrap().items.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ingress_until_the_gateway_api_is_installed_then_an_http_route() {
    use cuebe_testkit::cluster::{ClusterOptions, gateway_api_crds};
    // Its own cluster: the shared one has the Gateway API installed from the start.
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    install_crd(&cluster).await;
    let client = cluster.client();
    let ns = cluster.namespace("ingress").await.unwrap();
    let _controller = tokio::spawn(
        cuebe::controller::Operator::<WebService>::new(client.clone())
            .namespace(ns.clone())
            .rediscover_every(Duration::from_secs(1))
            .run(),
    );
    let api: Api<WebService> = Api::namespaced(client.clone(), &ns);
    let mut spec = simple();
    spec["exposure"] = json!({"type": "Public", "host": "web.example.com", "path": "/app"});
    let body = json!({"apiVersion": "platform.example.com/v1alpha1", "kind": "WebService", "metadata": {"name": "web"}, "spec": spec});
    api.patch("web", &PatchParams::apply("e2e-test"), &Patch::Apply(&body))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = api.get("web").await.unwrap().status.unwrap_or_default();
        if status.is_ready() {
            assert!(status.inventory_entry("ingress").is_some());
            assert!(status.inventory_entry("httpRoute").is_none());
            break;
        }
        assert!(Instant::now() < deadline, "not Ready: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let ing = ingresses.get("web").await.unwrap();
    let rule = &ing.spec.unwrap().rules.unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some("web.example.com"));

    // The platform team installs the Gateway API while the operator runs: without a restart it
    // renders an HTTPRoute instead (a Ready instance is otherwise only requeued after 5 minutes)
    // and prunes the Ingress.
    cluster
        .install_crds(
            &gateway_api_crds(),
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = api.get("web").await.unwrap().status.unwrap_or_default();
        if status.is_ready() && status.inventory_entry("httpRoute").is_some() {
            assert!(status.inventory_entry("ingress").is_none(), "{status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the HTTPRoute did not replace the Ingress: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        ingresses.get_opt("web").await.unwrap().is_none(),
        "the Ingress was not pruned"
    );

    // HTTPRoutes are watched now: one deleted by hand comes back at once, not at the next
    // requeue.
    let routes: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "gateway.networking.k8s.io",
            "v1",
            "HTTPRoute",
        )),
    );
    let before = routes.get("web").await.unwrap().metadata.uid;
    routes
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(route) = routes.get_opt("web").await.unwrap()
            && route.metadata.uid != before
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted HTTPRoute was not recreated within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_rbac_is_enough_to_reconcile_a_public_service() {
    let e = env("rbac").await;
    e.controller.abort();
    // Install deploy/rbac.yaml as a user would (kubectl), then run the operator as its account.
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new(e.cluster.kubectl())
            .arg("--kubeconfig")
            .arg(e.cluster.kubeconfig())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("AlreadyExists"),
            "kubectl {args:?}: {stderr}"
        );
    };
    kubectl(&["create", "namespace", "cuebe-system"]);
    kubectl(&[
        "apply",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml"),
    ]);
    // The shipped Deployment is valid for the API server (a server-side dry run: its image is a
    // placeholder the user replaces).
    kubectl(&[
        "apply",
        "--dry-run=server",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/operator.yaml"),
    ]);
    let operator = e.cluster.impersonating_client(
        "system:serviceaccount:cuebe-system:webservice-operator",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:cuebe-system",
            "system:authenticated",
        ],
    );
    // With leader election, as a replicated Deployment would run it: the Lease is in
    // cuebe-system, where the shipped Role grants it.
    let _controller = tokio::spawn(
        cuebe::controller::Operator::<WebService>::new(operator)
            .namespace(e.ns.clone())
            .leader_election(LeaderElection::new(
                "cuebe-webservice-leader",
                "cuebe-system",
                "rbac-test",
            ))
            .run(),
    );
    let mut spec = simple();
    spec["exposure"] = json!({"type": "Public", "host": "web.example.com"});
    spec["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 4});
    e.apply("web", spec).await;
    e.ready("web").await;
    assert_eq!(e.status("web").await.ready_nodes, "7/7");
    // Deleting it (teardown: reads, deletes, the finalizer's patch) needs nothing more either.
    e.webservices()
        .delete("web", &Default::default())
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    e.eventually(
        "the instance and its Deployment to be gone",
        Duration::from_secs(60),
        || async {
            e.webservices().get_opt("web").await.unwrap().is_none()
                && deployments
                    .get_opt("web")
                    .await
                    .unwrap()
                    .is_none_or(|d| d.metadata.deletion_timestamp.is_some())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_shows_the_graph_phases_and_what_a_node_waits_for() {
    let e = env("explain").await;
    // No ACK: the Role never reports an ARN, so the ServiceAccount waits for it however long
    // the checks below take.
    let spec = with_iam(json!({"policyARNs": []}));
    e.apply("waiting", spec).await;
    e.eventually(
        "the Role to be applied",
        Duration::from_secs(20),
        || async { e.status("waiting").await.nodes.contains_key("iamRole") },
    )
    .await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
        .args(["explain", "waiting", "-n", &e.ns])
        .env("KUBECONFIG", e.cluster.kubeconfig())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("WebService {}/waiting: Ready=False", e.ns)),
        "{text}"
    );
    assert!(text.contains("module: sha256:"), "{text}");
    assert!(
        text.contains("iamRole") && text.contains("Applied"),
        "{text}"
    );
    assert!(text.contains("blocked on: export:roleArn"), "{text}");
    assert!(text.contains("after serviceAccount"), "{text}");
}

/// `GET path` on `addr`: the status code and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of the sample `series` (name and labels, exactly as exposed) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_instances_by_state_reconciles_and_renders() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let e = env_with("metrics", |operator| operator.serve_metrics(listener)).await;
    e.apply("web", simple()).await;
    e.apply("bad", json!({"image": "docker.io/library/nginx:1.27", "resources": {"cpu": "1", "memory": "1Gi"}})).await;
    e.ready("web").await;
    let ready = r#"cuebe_instances{kind="WebService",state="Ready"}"#;
    let policy_failed = r#"cuebe_instances{kind="WebService",state="PolicyFailed"}"#;
    let mut scrape = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let (code, body) = http_get(addr, "/metrics").await;
        assert_eq!(code, 200, "{body}");
        scrape = body;
        if sample(&scrape, ready) == Some(1.0) && sample(&scrape, policy_failed) == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(sample(&scrape, ready), Some(1.0), "{scrape}");
    assert_eq!(sample(&scrape, policy_failed), Some(1.0), "{scrape}");
    assert_eq!(
        sample(
            &scrape,
            r#"cuebe_instances{kind="WebService",state="Stalled"}"#
        ),
        Some(0.0),
        "{scrape}"
    );
    let successes = sample(
        &scrape,
        r#"cuebe_reconciles_total{kind="WebService",result="success"}"#,
    )
    .unwrap_or(0.0);
    assert!(successes >= 2.0, "{scrape}");
    // Two distinct specs were rendered; later reconciles of the same spec are cache hits.
    let misses = sample(
        &scrape,
        r#"cuebe_render_cache_misses_total{kind="WebService"}"#,
    );
    assert!(misses.is_some_and(|m| m >= 2.0), "{scrape}");
    assert!(
        sample(
            &scrape,
            r#"cuebe_render_duration_seconds_count{kind="WebService"}"#
        )
        .is_some_and(|n| n >= 2.0),
        "{scrape}"
    );
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    assert_eq!(http_get(addr, "/readyz").await.0, 200);
    assert_eq!(http_get(addr, "/nothing").await.0, 404);

    // A deleted instance leaves the gauge.
    e.webservices()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    e.eventually(
        "the Ready gauge back to 0",
        Duration::from_secs(30),
        || async { sample(&http_get(addr, "/metrics").await.1, ready) == Some(0.0) },
    )
    .await;
}

/// The content digest a `ModuleResolved=True` message names: `… (module content sha256:…)`.
fn content_digest(status: &AbstractionStatus) -> String {
    let message = &status
        .condition(ConditionType::ModuleResolved)
        .unwrap()
        .message;
    let (_, rest) = message.split_once("module content ").unwrap();
    rest.split([')', ',']).next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_module_load_is_an_event_and_a_metric_and_a_switch_names_the_new_module() {
    use cuebe::remote::ModuleFetcher;
    use cuebe::trust::{ModulePolicy, SourceRule};
    use cuebe_testkit::cosign::SigningKey;
    use cuebe_testkit::oci_registry::{LocalRegistry, publish_module};
    use k8s_openapi::api::events::v1::Event;
    let registry = LocalRegistry::start().unwrap();
    let key = SigningKey::generate();
    let (v1, v2, v3) = (
        module_variant("1.0.0"),
        module_variant("1.1.0"),
        module_variant("1.2.0"),
    );
    let first = publish_module(&registry, v1.path(), "v1.0.0").unwrap();
    let second = publish_module(&registry, v2.path(), "v1.1.0").unwrap();
    let unsigned = publish_module(&registry, v3.path(), "v1.2.0").unwrap();
    key.sign_module(&first).await.unwrap();
    key.sign_module(&second).await.unwrap();
    let policy = ModulePolicy {
        sources: vec![SourceRule {
            pattern: format!("{}/platform.example.com/*", registry.host()),
            deny: false,
            keys: vec![key.public_pem()],
            ..SourceRule::default()
        }],
    };
    let cache = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let e = env_with("audit", |operator| {
        operator
            .serve_metrics(listener)
            .with_module_fetcher(Arc::new(ModuleFetcher::new(Some(
                cache.path().to_path_buf(),
            ))))
            .with_module_policy(policy)
            .unwrap()
    })
    .await;
    let pinned = |reference: &str| {
        let mut spec = simple();
        spec["platformRef"] = json!({"oci": reference});
        spec
    };
    let events: Api<Event> = Api::namespaced(e.client.clone(), &e.ns);
    let module_loaded = || async {
        let mut notes: Vec<String> = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|ev| {
                ev.reason.as_deref() == Some("ModuleLoaded")
                    && ev.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web")
            })
            .map(|ev| ev.note.unwrap_or_default())
            .collect();
        notes.sort();
        notes
    };
    let scrape = || async { http_get(addr, "/metrics").await.1 };
    let in_use = |digest: &str| {
        format!(r#"cuebe_module_instances{{kind="WebService",source="oci",digest="{digest}"}}"#)
    };
    let verified = r#"cuebe_module_loads_total{kind="WebService",source="oci",result="verified",reason="Verified"}"#;

    e.apply("web", pinned(&first)).await;
    e.ready("web").await;
    let status = e.status("web").await;
    let first_digest = content_digest(&status);
    let signed_by = status
        .condition(ConditionType::ModuleVerified)
        .unwrap()
        .message
        .clone();
    assert!(
        signed_by.starts_with("signed by key sha256:"),
        "{signed_by}"
    );
    // The Event names the reference, the content digest, the verification and the key id.
    e.eventually("a ModuleLoaded event", Duration::from_secs(10), || async {
        module_loaded().await.len() == 1
    })
    .await;
    let note = module_loaded().await.remove(0);
    assert!(note.starts_with(&first), "{note}");
    assert!(note.contains(&first_digest), "{note}");
    assert!(note.contains(&format!("Verified: {signed_by}")), "{note}");

    // More passes on the same module (a deleted Deployment is recreated): counted, no new Event.
    let deployments: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    let loads_before = sample(&scrape().await, verified).unwrap_or(0.0);
    deployments
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    e.eventually(
        "the Deployment recreated and the pass counted",
        Duration::from_secs(30),
        || async {
            deployments
                .get_opt("web")
                .await
                .unwrap()
                .is_some_and(|d| d.metadata.deletion_timestamp.is_none())
                && sample(&scrape().await, verified).is_some_and(|n| n > loads_before)
        },
    )
    .await;
    assert_eq!(module_loaded().await, vec![note.clone()]);
    assert_eq!(sample(&scrape().await, &in_use(&first_digest)), Some(1.0));

    // Switched to another module within a minute: an Event of its own names it (kube's
    // recorder would have folded it into the first one's series, keeping the first note).
    e.apply("web", pinned(&second)).await;
    e.eventually(
        "web on the second module",
        Duration::from_secs(30),
        || async { e.status("web").await.platform_ref_resolved == second },
    )
    .await;
    let second_digest = content_digest(&e.status("web").await);
    assert_ne!(first_digest, second_digest);
    e.eventually(
        "a ModuleLoaded event naming the second module",
        Duration::from_secs(10),
        || async {
            module_loaded()
                .await
                .iter()
                .any(|n| n.starts_with(&second) && n.contains(&second_digest))
        },
    )
    .await;
    let notes = module_loaded().await;
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        notes.contains(&note),
        "the first Event kept its note: {notes:?}"
    );
    // The gauge follows the instance to the new digest; the old one's series is gone.
    e.eventually(
        "the gauge on the second digest only",
        Duration::from_secs(10),
        || async {
            let text = scrape().await;
            sample(&text, &in_use(&second_digest)) == Some(1.0)
                && !text.contains(&in_use(&first_digest))
        },
    )
    .await;

    // A refused module: counted by its reason, a Warning Event, the instance stays on the
    // second module (and the gauge with it).
    e.apply("web", pinned(&unsigned)).await;
    let refused = r#"cuebe_module_loads_total{kind="WebService",source="oci",result="refused",reason="SignatureInvalid"}"#;
    e.eventually("the refusal counted", Duration::from_secs(30), || async {
        sample(&scrape().await, refused).is_some_and(|n| n >= 1.0)
    })
    .await;
    let text = scrape().await;
    assert_eq!(sample(&text, &in_use(&second_digest)), Some(1.0), "{text}");
    assert_eq!(e.status("web").await.platform_ref_resolved, second);
    e.eventually(
        "a SignatureInvalid warning",
        Duration::from_secs(10),
        || async {
            events
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .any(|ev| {
                    ev.reason.as_deref() == Some("SignatureInvalid")
                        && ev.type_.as_deref() == Some("Warning")
                        && ev.note.as_deref().is_some_and(|n| n.contains(&unsigned))
                })
        },
    )
    .await;
    assert_eq!(module_loaded().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_leader_election_one_replica_reconciles_and_a_follower_takes_over_when_it_dies() {
    let e = env("leader").await;
    e.controller.abort();
    let lease_name = format!("leader-{}", e.ns);
    let replica = |identity: &str, listener: tokio::net::TcpListener| {
        Operator::<WebService>::new(e.client.clone())
            .namespace(e.ns.clone())
            .leader_election(
                LeaderElection::new(lease_name.clone(), e.ns.clone(), identity)
                    // A lease long enough that a renewal slowed by CI's load never hands the
                    // lead to the follower while the test counts who reconciled.
                    .lease_duration(Duration::from_secs(15))
                    .renew_every(Duration::from_secs(1))
                    .retry_every(Duration::from_millis(250)),
            )
            .serve_metrics(listener)
    };
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(e.client.clone(), &e.ns);
    let holder = || async {
        leases
            .get_opt(&lease_name)
            .await
            .unwrap()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    };
    let listener_a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr_a = listener_a.local_addr().unwrap();
    let a = tokio::spawn(replica("a", listener_a).run());
    e.eventually("replica a to lead", Duration::from_secs(20), || async {
        holder().await.as_deref() == Some("a")
    })
    .await;
    let listener_b = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr_b = listener_b.local_addr().unwrap();
    let _b = tokio::spawn(replica("b", listener_b).run());

    e.apply("web", simple()).await;
    e.ready("web").await;
    let leader = r#"cuebe_leader{kind="WebService"}"#;
    let successes = r#"cuebe_reconciles_total{kind="WebService",result="success"}"#;
    let scrape_a = http_get(addr_a, "/metrics").await.1;
    let scrape_b = http_get(addr_b, "/metrics").await.1;
    assert_eq!(sample(&scrape_a, leader), Some(1.0), "{scrape_a}");
    assert!(
        sample(&scrape_a, successes).is_some_and(|n| n >= 1.0),
        "{scrape_a}"
    );
    // The follower stands by: it has reconciled nothing, yet it is ready (so a rolling update
    // of a replicated operator can proceed).
    assert_eq!(sample(&scrape_b, leader), Some(0.0), "{scrape_b}");
    assert_eq!(
        sample(&scrape_b, successes).unwrap_or(0.0),
        0.0,
        "{scrape_b}"
    );
    assert_eq!(http_get(addr_b, "/readyz").await.0, 200);

    // The leader dies without releasing the Lease; a spec change still gets applied, by b,
    // once the Lease has gone unrenewed for its duration.
    a.abort();
    let mut spec = simple();
    spec["replicas"] = json!(3);
    e.apply("web", spec).await;
    let deployments: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    e.eventually(
        "the follower to apply replicas 3",
        Duration::from_secs(60),
        || async { deployments.get("web").await.unwrap().spec.replicas == Some(3) },
    )
    .await;
    assert_eq!(holder().await.as_deref(), Some("b"));
    let scrape_b = http_get(addr_b, "/metrics").await.1;
    assert_eq!(sample(&scrape_b, leader), Some(1.0), "{scrape_b}");
}

/// Runs `webservice-operator diff -f` on `spec` as the WebService `name` against the test
/// cluster: the exit code and standard output.
fn diff_command(e: &Env, name: &str, spec: &serde_json::Value, extra: &[&str]) -> (i32, String) {
    let manifest = json!({
        "apiVersion": "platform.example.com/v1alpha1", "kind": "WebService",
        "metadata": {"name": name, "namespace": e.ns}, "spec": spec,
    });
    let file = std::env::temp_dir().join(format!("cuebe-diff-{}-{name}.json", e.ns));
    std::fs::write(&file, manifest.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
        .args(["diff", "-f"])
        .arg(&file)
        .args(extra)
        .env("KUBECONFIG", e.cluster.kubeconfig())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_shows_what_an_apply_would_change_and_changes_nothing() {
    let e = env("diff").await;
    let mut scaled = simple();
    scaled["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 5});
    e.apply("web", scaled.clone()).await;
    e.ready("web").await;

    // The spec as applied: nothing to do.
    let (code, out) = diff_command(&e, "web", &scaled, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("0 to create, 0 to update, 0 to prune or release, 5 unchanged"),
        "{out}"
    );

    // Autoscaling off, three replicas: the Deployment gets replicas (from whatever it has now:
    // the API server's default while the HPA has not scaled), the HPA goes.
    let d: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    let replicas_now = d.get("web").await.unwrap().spec.replicas.unwrap();
    let mut fixed = simple();
    fixed["replicas"] = json!(3);
    let (code, out) = diff_command(&e, "web", &fixed, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("    spec.replicas: {replicas_now} -> 3\n")),
        "{out}"
    );
    let line = |node: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{node} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("deployment").ends_with("update (1 fields)"), "{out}");
    assert!(
        line("hpa").ends_with("prune (delete: left the graph)"),
        "{out}"
    );
    assert!(line("service").ends_with("unchanged"), "{out}");

    // A dry run: the cluster is as it was.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(e.client.clone(), &e.ns);
    assert!(hpas.get_opt("web").await.unwrap().is_some());
    assert_eq!(
        d.get("web").await.unwrap().spec.replicas,
        Some(replicas_now)
    );

    // Policy failures: exit 3, nothing to apply.
    let (code, out) = diff_command(
        &e,
        "web",
        &json!({"image": "docker.io/library/nginx:1.27", "resources": {"cpu": "1", "memory": "1Gi"}}),
        &[],
    );
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("allowed-registries"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_modules_the_policy_trusts_are_used_and_a_refused_one_keeps_the_last_good() {
    use cuebe::remote::ModuleFetcher;
    use cuebe::trust::{ModulePolicy, SourceRule};
    use cuebe_testkit::cosign::SigningKey;
    use cuebe_testkit::oci_registry::{LocalRegistry, publish_module};
    let registry = LocalRegistry::start().unwrap();
    let ours = SigningKey::generate();
    let stranger = SigningKey::generate();
    let (v1, v2, v3) = (
        module_variant("1.0.0"),
        module_variant("1.1.0"),
        module_variant("1.2.0"),
    );
    let signed = publish_module(&registry, v1.path(), "v1.0.0").unwrap();
    let unsigned = publish_module(&registry, v2.path(), "v1.1.0").unwrap();
    let foreign = publish_module(&registry, v3.path(), "v1.2.0").unwrap();
    ours.sign_module(&signed).await.unwrap();
    stranger.sign_module(&foreign).await.unwrap();
    let policy = ModulePolicy {
        sources: vec![SourceRule {
            pattern: format!("{}/platform.example.com/*", registry.host()),
            deny: false,
            keys: vec![ours.public_pem()],
            ..SourceRule::default()
        }],
    };
    let cache = tempfile::tempdir().unwrap();
    let e = env_with("trust", |operator| {
        operator
            .with_module_fetcher(Arc::new(ModuleFetcher::new(Some(
                cache.path().to_path_buf(),
            ))))
            .with_module_policy(policy)
            .unwrap()
    })
    .await;
    let pinned = |reference: &str| {
        let mut spec = simple();
        spec["platformRef"] = json!({"oci": reference});
        spec
    };
    let condition = |s: &AbstractionStatus, t: ConditionType| {
        s.condition(t)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
            .unwrap_or_default()
    };

    e.apply("signed", pinned(&signed)).await;
    e.ready("signed").await;
    let (state, reason, message) =
        condition(&e.status("signed").await, ConditionType::ModuleVerified);
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("True", "Verified"),
        "{message}"
    );
    assert!(message.starts_with("signed by key sha256:"), "{message}");

    // Refused, each with its reason, and nothing applied.
    let deployments: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    let elsewhere = format!("oci://127.0.0.1:1/other/module@sha256:{}", "0".repeat(64));
    for (name, reference, reason, text) in [
        (
            "unsigned",
            unsigned.as_str(),
            "SignatureInvalid",
            "no signature found",
        ),
        (
            "foreign",
            foreign.as_str(),
            "SignatureInvalid",
            "not made by any key the policy lists",
        ),
        (
            "elsewhere",
            elsewhere.as_str(),
            "SourceDenied",
            "no rule of the module policy allows",
        ),
    ] {
        e.apply(name, pinned(reference)).await;
        e.eventually(
            &format!("{name} refused with {reason}"),
            Duration::from_secs(30),
            || async {
                let (state, got, message) =
                    condition(&e.status(name).await, ConditionType::ModuleVerified);
                state == "False" && got == reason && message.contains(text)
            },
        )
        .await;
        assert!(
            deployments.get_opt(name).await.unwrap().is_none(),
            "{name}: nothing applied"
        );
    }

    // Moving a running service to an unsigned module is refused; it stays on its last good
    // module, nothing is pruned, and the status says so.
    e.apply("signed", pinned(&unsigned)).await;
    e.eventually(
        "signed kept on its last good module",
        Duration::from_secs(30),
        || async {
            let s = e.status("signed").await;
            let (state, reason, message) = condition(&s, ConditionType::ModuleResolved);
            state == "False"
                && reason == "SignatureInvalid"
                && message.contains("still rendering with the last good module")
                && s.platform_ref_resolved == signed
        },
    )
    .await;
    assert!(deployments.get_opt("signed").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn render_and_diff_preview_a_published_module_before_anyone_pins_it() {
    use cuebe_testkit::cosign::SigningKey;
    use cuebe_testkit::oci_registry::{LocalRegistry, publish_module};
    let e = env("preview").await;
    let registry = LocalRegistry::start().unwrap();
    // A candidate release that names the Service's port differently: visible in the render.
    let candidate = module_variant("1.1.0-rc.1");
    let render_cue = candidate.path().join("webservice/render.cue");
    let text = std::fs::read_to_string(&render_cue).unwrap();
    std::fs::write(
        &render_cue,
        text.replace(
            r#"ports: [{name: "http", port: 80, targetPort: "http", protocol: "TCP"}]"#,
            r#"ports: [{name: "http-rc", port: 80, targetPort: "http", protocol: "TCP"}]"#,
        ),
    )
    .unwrap();
    let reference = publish_module(&registry, candidate.path(), "v1.1.0-rc.1").unwrap();
    // A cache of its own: the fetch below really goes to the registry.
    let cache = tempfile::tempdir().unwrap();
    let render = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
            .args(["render", "-f"])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/webservices/simple.yaml"
            ))
            .args(extra)
            .env("CUEBE_MODULE_CACHE", cache.path())
            .output()
            .unwrap()
    };

    // The embedded module, as before.
    let embedded = render(&[]);
    assert!(embedded.status.success());
    assert!(String::from_utf8_lossy(&embedded.stdout).contains("managed-by: cuebe\n"));

    // The candidate, by reference: fetched, checked, rendered.
    let previewed = render(&["--module", &reference]);
    let stderr = String::from_utf8_lossy(&previewed.stderr).into_owned();
    assert!(previewed.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&previewed.stdout).contains("name: http-rc"));
    assert!(
        stderr.contains(&format!("module: {reference} (Unverified")),
        "{stderr}"
    );

    // A policy that asks for a signature refuses the unsigned candidate: exit 3, the reason.
    let policy = tempfile::NamedTempFile::new().unwrap();
    let key = SigningKey::generate();
    std::fs::write(
        policy.path(),
        format!(
            "sources:\n- pattern: \"{}/*\"\n  keys:\n  - |\n{}",
            registry.host(),
            key.public_pem()
                .lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        ),
    )
    .unwrap();
    let policy_path = policy.path().to_str().unwrap();
    let refused = render(&["--module", &reference, "--module-policy", policy_path]);
    assert_eq!(
        refused.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("SignatureInvalid"));
    // Signed, it passes.
    key.sign_module(&reference).await.unwrap();
    let verified = render(&["--module", &reference, "--module-policy", policy_path]);
    let stderr = String::from_utf8_lossy(&verified.stderr).into_owned();
    assert!(verified.status.success(), "{stderr}");
    assert!(stderr.contains("(Verified: signed by key"), "{stderr}");

    // `diff` against the cluster with the candidate: every object would be created, with its
    // labels; nothing is written.
    let (code, out) = diff_command(&e, "web", &simple(), &["--module", &reference]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("create"), "{out}");
    let deployments: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    assert!(deployments.get_opt("web").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn render_and_diff_preview_a_module_from_git_by_flag_or_by_the_manifest() {
    use cuebe_testkit::git_server::{GitDaemon, GitRepo};
    let e = env("gitpreview").await;
    // A candidate on a branch that names the Service's port differently: visible in the render.
    let candidate = module_variant("git candidate");
    let render_cue = candidate.path().join("webservice/render.cue");
    let text = std::fs::read_to_string(&render_cue).unwrap();
    std::fs::write(
        &render_cue,
        text.replace(
            r#"ports: [{name: "http", port: 80, targetPort: "http", protocol: "TCP"}]"#,
            r#"ports: [{name: "http-git", port: 80, targetPort: "http", protocol: "TCP"}]"#,
        ),
    )
    .unwrap();
    let repo = GitRepo::new("platform").unwrap();
    let commit = repo
        .commit_module("next", candidate.path(), "cue/platform", "candidate")
        .unwrap();
    let mut daemon = GitDaemon::start(&repo).unwrap();
    let url = daemon.url();
    let reference = format!("{url}?ref=next&dir=cue/platform");
    let resolved = format!("{url}@{commit}?dir=cue/platform");
    // A cache of its own: the fetches below really go to the server.
    let cache = tempfile::tempdir().unwrap();
    let render_file = |file: &std::path::Path, extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
            .args(["render", "-f"])
            .arg(file)
            .args(extra)
            .env("CUEBE_MODULE_CACHE", cache.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let simple_yaml = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/webservices/simple.yaml"
    ));
    let render = |extra: &[&str]| render_file(simple_yaml, extra);

    // By the flag: the branch resolved to its commit, the tree read, rendered with.
    let (code, stdout, stderr) = render(&["--module", &reference]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("name: http-git"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "module: {resolved} (Unverified: no policy rule asks for a signature, from next)"
        )),
        "{stderr}"
    );
    // The resolved form, as `status.platformRefResolved` shows it, is the same module.
    let (code, stdout, stderr) = render(&["--module", &resolved]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("name: http-git"), "{stdout}");

    // By the manifest's own platformRef.git, without the flag.
    let mut spec = simple();
    spec["platformRef"] = json!({"git": reference});
    let manifest = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        manifest.path(),
        json!({
            "apiVersion": "platform.example.com/v1alpha1", "kind": "WebService",
            "metadata": {"name": "web"}, "spec": spec,
        })
        .to_string(),
    )
    .unwrap();
    let (code, stdout, stderr) = render_file(manifest.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("name: http-git"), "{stdout}");
    assert!(stderr.contains(&format!("module: {resolved}")), "{stderr}");

    // A policy that denies the repository: exit 3, the reason, nothing fetched.
    let policy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        policy.path(),
        "sources:\n- pattern: \"git://127.0.0.1:*\"\n  deny: true\n",
    )
    .unwrap();
    let policy_path = policy.path().to_str().unwrap();
    let (code, _, stderr) = render(&["--module", &reference, "--module-policy", policy_path]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("SourceDenied"), "{stderr}");
    // A malformed reference names the flag: exit 2.
    let (code, _, stderr) = render(&["--module", "git+http://127.0.0.1/platform.git?ref=main"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--module: plain http is not allowed"),
        "{stderr}"
    );
    // A branch the repository does not have: exit 4.
    let missing = format!("{url}?ref=nowhere&dir=cue/platform");
    let (code, _, stderr) = render(&["--module", &missing]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("FetchFailed"), "{stderr}");

    // `diff` of the manifest naming the branch: every object would be created, with the
    // candidate's labels; nothing is written.
    let (code, out) = diff_command(&e, "web", &spec, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("module: {resolved}")), "{out}");
    assert!(out.contains("create"), "{out}");
    let deployments: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    assert!(deployments.get_opt("web").await.unwrap().is_none());
    // The server gone, `diff` of a moving branch cannot tell: exit 4.
    daemon.stop();
    let (code, out) = diff_command(&e, "web", &spec, &[]);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("FetchFailed"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_tracking_a_git_branch_follows_it_and_outlives_its_server() {
    use cuebe::remote::ModuleFetcher;
    use cuebe_testkit::git_server::{GitDaemon, GitRepo};
    let platform = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cue/platform");
    let repo = GitRepo::new("platform").unwrap();
    let first = repo
        .commit_module("main", &platform, "cue/platform", "platform 1.0.0")
        .unwrap();
    let mut daemon = GitDaemon::start(&repo).unwrap();
    let cache = tempfile::tempdir().unwrap();
    // Branches are resolved again every 2 s here (60 s by default).
    let e = env_with("git", |operator| {
        operator.with_module_fetcher(Arc::new(
            ModuleFetcher::new(Some(cache.path().to_path_buf()))
                .with_git_refresh(Duration::from_secs(2)),
        ))
    })
    .await;
    let url = daemon.url();
    let reference = format!("{url}?ref=main&dir=cue/platform");
    let at = |commit: &str| format!("{url}@{commit}?dir=cue/platform");

    // Exactly one of embedded, oci and git, at admission.
    let both = e
        .webservices()
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "apiVersion": "platform.example.com/v1alpha1", "kind": "WebService",
                "metadata": {"name": "both"},
                "spec": {"image": "registry.example.com/web:1.4.2",
                         "resources": {"cpu": "250m", "memory": "256Mi"},
                         "platformRef": {"embedded": "1.0.0", "git": reference}},
            }))
            .unwrap(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(both.contains("set exactly one of embedded"), "{both}");

    let mut spec = simple();
    spec["platformRef"] = json!({"git": reference});
    e.apply("tracking", spec).await;
    e.ready("tracking").await;
    let status = e.status("tracking").await;
    assert_eq!(status.platform_ref_resolved, at(&first));
    let resolved = status.condition(ConditionType::ModuleResolved).unwrap();
    assert_eq!(
        (resolved.status.as_str(), resolved.reason.as_str()),
        ("True", "Resolved")
    );
    assert!(
        resolved.message.ends_with(", from main)"),
        "{}",
        resolved.message
    );
    let verified = status.condition(ConditionType::ModuleVerified).unwrap();
    assert_eq!(
        (verified.status.as_str(), verified.reason.as_str()),
        ("False", "Unverified")
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(e.client.clone(), &e.ns);
    let loaded = |commit: String| {
        let events = events.clone();
        async move {
            events
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .any(|ev| {
                    ev.reason.as_deref() == Some("ModuleLoaded")
                        && ev.note.as_deref().is_some_and(|n| n.starts_with(&commit))
                })
        }
    };
    e.eventually("a ModuleLoaded event", Duration::from_secs(10), || {
        loaded(at(&first))
    })
    .await;

    // The branch moves to a module that labels every object: the service follows it.
    let labelled = module_variant("1.1.0");
    let render_cue = labelled.path().join("webservice/render.cue");
    let text = std::fs::read_to_string(&render_cue).unwrap();
    std::fs::write(
        &render_cue,
        format!("{text}\n_meta: server: labels: \"platform.example.com/track\": \"main\"\n"),
    )
    .unwrap();
    let second = repo
        .commit_module(
            "main",
            labelled.path(),
            "cue/platform",
            "label every object",
        )
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    let labelled_deployment = || async {
        deployments
            .get_opt("tracking")
            .await
            .unwrap()
            .is_some_and(|d| {
                d.metadata.deletion_timestamp.is_none()
                    && d.metadata
                        .labels
                        .unwrap_or_default()
                        .get("platform.example.com/track")
                        .map(String::as_str)
                        == Some("main")
            })
    };
    e.eventually(
        "the service re-rendered on the branch's new commit",
        Duration::from_secs(60),
        || async {
            e.status("tracking").await.platform_ref_resolved == at(&second)
                && labelled_deployment().await
        },
    )
    .await;
    // The new commit is an Event of its own, beside the first one.
    e.eventually(
        "a ModuleLoaded event naming the new commit",
        Duration::from_secs(10),
        || loaded(at(&second)),
    )
    .await;
    assert!(loaded(at(&first)).await);

    // The server goes away: the branch cannot be resolved, and the service keeps its last
    // good commit from the cache; drift is still corrected.
    daemon.stop();
    deployments
        .delete("tracking", &DeleteParams::default())
        .await
        .unwrap();
    e.eventually(
        "the Deployment recreated without the git server",
        Duration::from_secs(60),
        labelled_deployment,
    )
    .await;
    e.eventually(
        "ModuleResolved to say the branch could not be resolved",
        Duration::from_secs(30),
        || async {
            let s = e.status("tracking").await;
            s.condition(ConditionType::ModuleResolved).is_some_and(|c| {
                c.status == "False"
                    && c.reason == "FetchFailed"
                    && c.message
                        .contains("still rendering with the last good module")
            }) && s.platform_ref_resolved == at(&second)
        },
    )
    .await;
}

/// Applies the approval `approve REF` prints (the operator binary, as a platform team would pipe
/// it to `kubectl apply -f -`), under a name of this test's own: approvals are cluster-scoped.
async fn approve(e: &Env, reference: &str, name: &str) {
    use cuebe::approval::PlatformModuleApproval;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webservice-operator"))
        .args(["approve", reference, "--note", "approved by the e2e test"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut approval: PlatformModuleApproval = serde_norway::from_slice(&out.stdout).unwrap();
    approval.metadata.name = Some(name.to_string());
    let approvals: Api<PlatformModuleApproval> = Api::all(e.client.clone());
    approvals
        .patch(
            name,
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&approval),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unapproved_digest_waits_on_the_last_good_module_until_approved_and_a_revoked_one_is_not_used()
 {
    use cuebe::approval::{PlatformModuleApproval, approval_crd};
    use cuebe::remote::ModuleFetcher;
    use cuebe::trust::{ModulePolicy, SourceRule};
    use cuebe_testkit::oci_registry::{LocalRegistry, publish_module};
    let registry = LocalRegistry::start().unwrap();
    let (v1, v2, v3) = (
        module_variant("approved 1.0.0"),
        module_variant("approved 1.1.0"),
        module_variant("approved 1.2.0"),
    );
    let first = publish_module(&registry, v1.path(), "v1.0.0").unwrap();
    let second = publish_module(&registry, v2.path(), "v1.1.0").unwrap();
    let third = publish_module(&registry, v3.path(), "v1.2.0").unwrap();
    let digest = |reference: &str| reference.rsplit_once('@').unwrap().1.to_string();
    // The CRD first: the operator lists approvals before it reconciles anything.
    let cluster = TestCluster::shared().await.unwrap();
    cluster
        .apply_crds(&[approval_crd()], Instant::now() + Duration::from_secs(30))
        .await
        .unwrap();
    let policy = ModulePolicy {
        sources: vec![SourceRule {
            pattern: format!("{}/platform.example.com/*", registry.host()),
            require_approval: true,
            ..SourceRule::default()
        }],
    };
    let cache = tempfile::tempdir().unwrap();
    let e = env_with("approval", |operator| {
        operator
            .with_module_fetcher(Arc::new(ModuleFetcher::new(Some(
                cache.path().to_path_buf(),
            ))))
            .with_module_policy(policy)
            .unwrap()
    })
    .await;
    let approval_name = |v: &str| format!("{}-{v}", e.ns);
    let pinned = |reference: &str| {
        let mut spec = simple();
        spec["platformRef"] = json!({"oci": reference});
        spec
    };
    let condition = |s: &AbstractionStatus, t: ConditionType| {
        s.condition(t)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
            .unwrap_or_default()
    };
    let deployments: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    let services: Api<Service> = Api::namespaced(e.client.clone(), &e.ns);
    let accounts: Api<ServiceAccount> = Api::namespaced(e.client.clone(), &e.ns);
    let uids = |name: &'static str| {
        let (deployments, services, accounts) =
            (deployments.clone(), services.clone(), accounts.clone());
        async move {
            [
                deployments.get(name).await.unwrap().metadata.uid,
                services.get(name).await.unwrap().metadata.uid,
                accounts.get(name).await.unwrap().metadata.uid,
            ]
        }
    };
    // Refused for want of an approval: ModuleVerified says which digest and how to approve it.
    let not_approved = |name: &'static str, reference: String| {
        let e = &e;
        async move {
            let (state, reason, message) =
                condition(&e.status(name).await, ConditionType::ModuleVerified);
            state == "False"
                && reason == "NotApproved"
                && message.contains(&format!("{} is not approved", digest(&reference)))
                && message.contains("PlatformModuleApproval")
                && message.contains("approve")
        }
    };

    // An approved digest is used.
    approve(&e, &first, &approval_name("v1")).await;
    e.apply("web", pinned(&first)).await;
    e.ready("web").await;
    let before = uids("web").await;

    // Moving to an unapproved digest: refused, the service stays on its last good (approved)
    // module, nothing pruned or replaced.
    e.apply("web", pinned(&second)).await;
    e.eventually(
        "web refused NotApproved, still on the first module",
        Duration::from_secs(30),
        || async {
            let s = e.status("web").await;
            let (state, reason, message) = condition(&s, ConditionType::ModuleResolved);
            not_approved("web", second.clone()).await
                && state == "False"
                && reason == "NotApproved"
                && message.contains(&format!(
                    "still rendering with the last good module {first}"
                ))
                && s.platform_ref_resolved == first
                && s.is_ready()
        },
    )
    .await;
    assert_eq!(uids("web").await, before, "nothing pruned or replaced");
    // A new instance on it has nothing to fall back to: nothing is applied.
    e.apply("fresh", pinned(&second)).await;
    e.eventually(
        "fresh refused NotApproved and stalled",
        Duration::from_secs(30),
        || async {
            let s = e.status("fresh").await;
            not_approved("fresh", second.clone()).await
                && condition(&s, ConditionType::Stalled).0 == "True"
        },
    )
    .await;
    assert!(deployments.get_opt("fresh").await.unwrap().is_none());

    // Approving it reconciles both at once (well within the 5 min a refused instance waits
    // otherwise): applied and Ready, the running service updated in place.
    approve(&e, &second, &approval_name("v2")).await;
    for name in ["web", "fresh"] {
        e.eventually(
            &format!("{name} on the approved second module and Ready"),
            Duration::from_secs(30),
            || async {
                let s = e.status(name).await;
                s.platform_ref_resolved == second
                    && condition(&s, ConditionType::ModuleResolved).0 == "True"
                    && s.is_ready()
            },
        )
        .await;
    }
    assert_eq!(uids("web").await, before, "updated in place");
    let fresh_uids = uids("fresh").await;

    // web moves to a third, unapproved digest and waits on the second; then the second is
    // revoked. A revoked digest is not switched to, nor kept as the fallback: both instances
    // stop applying (Stalled, NotApproved), and nothing they run is pruned.
    e.apply("web", pinned(&third)).await;
    e.eventually(
        "web refused NotApproved, still on the second module",
        Duration::from_secs(30),
        || async {
            let s = e.status("web").await;
            not_approved("web", third.clone()).await && s.platform_ref_resolved == second
        },
    )
    .await;
    let approvals: Api<PlatformModuleApproval> = Api::all(e.client.clone());
    approvals
        .delete(&approval_name("v2"), &DeleteParams::default())
        .await
        .unwrap();
    e.eventually(
        "web stalled: its pinned digest unapproved and its fallback revoked",
        Duration::from_secs(30),
        || async {
            let s = e.status("web").await;
            let (state, reason, message) = condition(&s, ConditionType::ModuleResolved);
            state == "False"
                && reason == "NotApproved"
                && !message.contains("still rendering")
                && condition(&s, ConditionType::Stalled).0 == "True"
        },
    )
    .await;
    e.eventually(
        "fresh stalled: the digest it runs was revoked",
        Duration::from_secs(30),
        || async {
            let s = e.status("fresh").await;
            not_approved("fresh", second.clone()).await
                && condition(&s, ConditionType::Stalled).0 == "True"
        },
    )
    .await;
    assert_eq!(uids("web").await, before, "nothing pruned");
    assert_eq!(uids("fresh").await, fresh_uids, "nothing pruned");

    // Back to the first (still approved): applied again.
    e.apply("web", pinned(&first)).await;
    e.eventually(
        "web back on the first module",
        Duration::from_secs(30),
        || async {
            let s = e.status("web").await;
            s.platform_ref_resolved == first
                && condition(&s, ConditionType::ModuleResolved).0 == "True"
                && s.is_ready()
        },
    )
    .await;
    let _ = approvals
        .delete(&approval_name("v1"), &DeleteParams::default())
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vendored_module_is_ready_with_no_registry_and_its_signature_from_the_layout() {
    use cuebe::remote::ModuleFetcher;
    use cuebe::trust::{ModulePolicy, SourceRule};
    use cuebe_testkit::cosign::SigningKey;
    use cuebe_testkit::oci_registry::write_module_layout;
    // Nothing listens on port 1: a request to the registry would fail the test.
    let source = "127.0.0.1:1/platform.example.com/platform";
    let vendored = tempfile::tempdir().unwrap();
    let layout = vendored.path().join("platform-v1.1.0");
    let module = module_variant("vendored 1.1.0");
    let digest = write_module_layout(module.path(), "v1.1.0", &layout).unwrap();
    let key = SigningKey::generate();
    key.sign_layout(&layout, source, &digest).unwrap();
    let policy = ModulePolicy {
        sources: vec![SourceRule {
            pattern: "127.0.0.1:1/*".into(),
            keys: vec![key.public_pem()],
            ..SourceRule::default()
        }],
    };
    let cache = tempfile::tempdir().unwrap();
    let fetcher = ModuleFetcher::new(Some(cache.path().to_path_buf()))
        .with_vendored_modules(vendored.path())
        .unwrap();
    let e = env_with("vendored", |operator| {
        operator
            .with_module_fetcher(Arc::new(fetcher))
            .with_module_policy(policy)
            .unwrap()
    })
    .await;
    let reference = format!("oci://{source}@{digest}");
    let mut spec = simple();
    spec["platformRef"] = json!({"oci": reference});
    e.apply("web", spec).await;
    e.ready("web").await;
    let s = e.status("web").await;
    assert_eq!(s.platform_ref_resolved, reference);
    let resolved = s.condition(ConditionType::ModuleResolved).unwrap();
    assert_eq!(resolved.status, "True");
    assert!(
        resolved
            .message
            .contains(&format!("vendored in {}", layout.display())),
        "{}",
        resolved.message
    );
    let verified = s.condition(ConditionType::ModuleVerified).unwrap();
    assert_eq!(
        (verified.status.as_str(), verified.reason.as_str()),
        ("True", "Verified"),
        "{}",
        verified.message
    );
    let deployments: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    assert!(deployments.get_opt("web").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_on_signed_git_commits_refuses_an_unsigned_one_and_keeps_the_last_good() {
    use cuebe::remote::ModuleFetcher;
    use cuebe::trust::{ModulePolicy, SourceRule};
    use cuebe_testkit::git_server::{GitHttpsServer, GitRepo, SshSigningKey};
    let platform = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cue/platform");
    let key = SshSigningKey::generate("platform@acme.example");
    let repo = GitRepo::new("platform").unwrap();
    let first = repo
        .commit_module_signed("main", &platform, "cue/platform", "platform 1.0.0", &key)
        .unwrap();
    let server = GitHttpsServer::start(&repo).unwrap();
    let policy = ModulePolicy {
        sources: vec![SourceRule {
            pattern: "git+https://127.0.0.1:*/*".into(),
            allowed_signers: vec![key.allowed_signer()],
            ..SourceRule::default()
        }],
    };
    let cache = tempfile::tempdir().unwrap();
    // HTTPS with the testkit's CA; branches resolved again every 2 s (60 s by default).
    let fetcher = ModuleFetcher::new(Some(cache.path().to_path_buf()))
        .with_git_refresh(Duration::from_secs(2))
        .with_ca_certificates(server.ca_pem().as_bytes())
        .unwrap();
    let e = env_with("signedgit", |operator| {
        operator
            .with_module_fetcher(Arc::new(fetcher))
            .with_module_policy(policy)
            .unwrap()
    })
    .await;
    let url = server.url();
    let at = |commit: &str| format!("{url}@{commit}?dir=cue/platform");
    let mut spec = simple();
    spec["platformRef"] = json!({"git": format!("{url}?ref=main&dir=cue/platform")});
    e.apply("signed", spec).await;
    e.ready("signed").await;
    let status = e.status("signed").await;
    assert_eq!(status.platform_ref_resolved, at(&first));
    let verified = status.condition(ConditionType::ModuleVerified).unwrap();
    assert_eq!(
        (verified.status.as_str(), verified.reason.as_str()),
        ("True", "Verified")
    );
    assert_eq!(
        verified.message,
        format!(
            "signed by key {} (platform@acme.example)",
            key.fingerprint()
        )
    );

    // A module that labels every object, so that which commit is rendered shows in the cluster.
    let labelled = |comment: &str| {
        let dir = module_variant(comment);
        let render_cue = dir.path().join("webservice/render.cue");
        let text = std::fs::read_to_string(&render_cue).unwrap();
        std::fs::write(
            &render_cue,
            format!(
                "{text}\n_meta: server: labels: \"platform.example.com/commit\": \"{comment}\"\n"
            ),
        )
        .unwrap();
        dir
    };
    let deployments: Api<Deployment> = Api::namespaced(e.client.clone(), &e.ns);
    let label = || async {
        deployments
            .get_opt("signed")
            .await
            .unwrap()
            .and_then(|d| d.metadata.labels)
            .and_then(|l| l.get("platform.example.com/commit").cloned())
    };

    // The branch moves to an unsigned commit: refused, and the service stays Ready on the
    // last good commit; nothing of the unsigned module reaches the cluster.
    let unsigned_module = labelled("unsigned");
    let unsigned = repo
        .commit_module("main", unsigned_module.path(), "cue/platform", "unsigned")
        .unwrap();
    e.eventually(
        "the unsigned commit refused with SignatureInvalid",
        Duration::from_secs(60),
        || async {
            let s = e.status("signed").await;
            s.condition(ConditionType::ModuleVerified)
                .is_some_and(|c| c.status == "False" && c.reason == "SignatureInvalid")
                && s.condition(ConditionType::ModuleResolved).is_some_and(|c| {
                    c.status == "False"
                        && c.reason == "SignatureInvalid"
                        && c.message
                            .contains(&format!("commit {unsigned}: not signed"))
                        && c.message.contains(&format!(
                            "still rendering with the last good module {}",
                            at(&first)
                        ))
                })
        },
    )
    .await;
    let status = e.status("signed").await;
    assert_eq!(status.platform_ref_resolved, at(&first));
    assert_eq!(
        status
            .condition(ConditionType::Ready)
            .map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(label().await, None, "the unsigned module was never applied");

    // Moved again, to a signed commit: followed and applied.
    let signed_module = labelled("signed");
    let second = repo
        .commit_module_signed("main", signed_module.path(), "cue/platform", "signed", &key)
        .unwrap();
    e.eventually(
        "the service re-rendered on the new signed commit",
        Duration::from_secs(60),
        || async {
            let s = e.status("signed").await;
            s.platform_ref_resolved == at(&second)
                && s.condition(ConditionType::ModuleVerified)
                    .is_some_and(|c| c.status == "True" && c.reason == "Verified")
                && label().await.as_deref() == Some("signed")
        },
    )
    .await;
}
