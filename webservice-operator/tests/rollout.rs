//! Platform changes rolled out through a `PlatformChannel`, end to end on the real control
//! plane: 20 WebServices per test follow a channel whose module versions are published to a
//! real OCI registry (`cue mod publish`); the operator previews, moves them step by step on
//! their readiness, halts and rolls back.
//!
//! Each test has its own namespace, operator and channel (labelled with the namespace, which is
//! what a namespace-scoped operator drives).
#![allow(clippy::unwrap_used)]

#[path = "support/module_variant.rs"]
mod module_variant;
use module_variant::{module_variant, module_variant_with, stricter_policy};

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cuebe::controller::Operator;
use cuebe::remote::ModuleFetcher;
use cuebe::rollout::{Phase, PlatformChannel};
use cuebe::status::AbstractionStatus;
use cuebe_testkit::cluster::TestCluster;
use cuebe_testkit::oci_registry::{LocalRegistry, publish_module};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use webservice_operator::WebService;

const FLEET: usize = 20;

struct Env {
    cluster: &'static TestCluster,
    client: Client,
    ns: String,
    channel: String,
    controller: tokio::task::JoinHandle<()>,
    cache: tempfile::TempDir,
    _registry: LocalRegistry,
    /// Published module versions by name.
    modules: BTreeMap<&'static str, String>,
}

/// A module that renders the same objects but whose Deployment can never be Ready (its
/// readiness predicate waits for a condition no controller sets).
fn never_ready() -> tempfile::TempDir {
    module_variant_with(
        "never ready",
        "webservice/render.cue",
        // The Deployment's readiness comes from the standard library's defaults per kind.
        "readyWhen: readiness.byKind.Deployment",
        r#"readyWhen: [{type: "ConditionMatch", conditionType: "example.com/NeverSet", status: "True", timeout: "10m"}]"#,
    )
}

fn operator(client: &Client, ns: &str, cache: &std::path::Path) -> Operator<WebService> {
    Operator::<WebService>::new(client.clone())
        .namespace(ns.to_string())
        .with_module_fetcher(Arc::new(ModuleFetcher::new(Some(cache.to_path_buf()))))
}

async fn env(prefix: &str) -> Env {
    let cluster = TestCluster::shared().await.unwrap();
    let client = cluster.client();
    cluster
        .apply_crds(
            &cuebe::abstraction::crds::<WebService>(),
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .unwrap();
    let ns = cluster.namespace(prefix).await.unwrap();
    let registry = LocalRegistry::start().unwrap();
    let mut modules = BTreeMap::new();
    for (name, dir, version) in [
        ("v1", module_variant("1.0.0"), "v1.0.0"),
        ("v2", module_variant("1.1.0"), "v1.1.0"),
        ("never-ready", never_ready(), "v1.2.0"),
        ("strict", stricter_policy(), "v1.3.0"),
    ] {
        modules.insert(
            name,
            publish_module(&registry, dir.path(), version).unwrap(),
        );
    }
    let cache = tempfile::tempdir().unwrap();
    let controller = tokio::spawn(operator(&client, &ns, cache.path()).run());
    Env {
        cluster,
        client,
        channel: format!("{ns}-channel"),
        ns,
        controller,
        cache,
        _registry: registry,
        modules,
    }
}

fn oci(reference: &str) -> serde_json::Value {
    json!({"oci": reference})
}

impl Env {
    fn webservices(&self) -> Api<WebService> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn channels(&self) -> Api<PlatformChannel> {
        Api::all(self.client.clone())
    }

    fn module(&self, name: &str) -> String {
        self.modules[name].clone()
    }

    /// The channel on `module`, with `strategy`.
    async fn channel_on(&self, module: &str, strategy: serde_json::Value) {
        let body = json!({
            "apiVersion": "cuebe.dev/v1alpha1", "kind": "PlatformChannel",
            "metadata": {"name": self.channel, "labels": {"cuebe.dev/namespace": self.ns}},
            "spec": {
                "abstraction": {"group": "platform.example.com", "kind": "WebService"},
                "module": oci(&self.module(module)),
                "strategy": strategy,
            },
        });
        self.channels()
            .patch(
                &self.channel,
                &PatchParams::apply("e2e-test").force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap();
    }

    async fn set_channel(&self, spec: serde_json::Value) {
        self.channels()
            .patch(
                &self.channel,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
            .unwrap();
    }

    async fn channel(&self) -> PlatformChannel {
        self.channels().get(&self.channel).await.unwrap()
    }

    /// The events published on the channel.
    async fn channel_events(&self) -> Vec<k8s_openapi::api::events::v1::Event> {
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(self.client.clone());
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|ev| {
                ev.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(self.channel.as_str())
            })
            .collect()
    }

    async fn phase(&self) -> Option<Phase> {
        self.channel()
            .await
            .status
            .and_then(|s| s.rollout)
            .map(|r| r.phase)
    }

    /// `FLEET` WebServices on the channel; `replicas(i)` for the i-th.
    async fn fleet(&self, replicas: impl Fn(usize) -> u32) {
        for i in 0..FLEET {
            let name = format!("svc-{i:02}");
            let body = json!({
                "apiVersion": "platform.example.com/v1alpha1", "kind": "WebService",
                "metadata": {"name": name},
                "spec": {
                    "image": "registry.example.com/web:1.4.2",
                    "resources": {"cpu": "250m", "memory": "256Mi"},
                    "replicas": replicas(i),
                    "platformRef": {"channel": self.channel},
                },
            });
            self.webservices()
                .patch(
                    &name,
                    &PatchParams::apply("e2e-test").force(),
                    &Patch::Apply(&body),
                )
                .await
                .unwrap();
        }
    }

    async fn statuses(&self) -> BTreeMap<String, AbstractionStatus> {
        self.webservices()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|w| {
                let name = w.metadata.name.clone().unwrap_or_default();
                (name, w.status.unwrap_or_default())
            })
            .collect()
    }

    /// How many instances are Ready on `module` (by reference).
    async fn ready_on(&self, module: &str) -> usize {
        self.statuses()
            .await
            .values()
            .filter(|s| s.module_ref == module && s.is_ready())
            .count()
    }

    async fn eventually<F, Fut>(&self, what: &str, timeout: Duration, check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        cuebe_testkit::eventually::eventually(what, timeout, check, || async {
            let channel = self.channels().get(&self.channel).await.ok();
            let statuses: Vec<String> = self
                .statuses()
                .await
                .iter()
                .map(|(n, s)| {
                    let ready = s.condition(cuebe::status::ConditionType::Ready);
                    format!(
                        "{n}: {} {:?}",
                        s.module_ref,
                        ready.map(|c| (&c.reason, &c.message))
                    )
                })
                .collect();
            format!(
                "channel: {}\ninstances:\n{}\n{}",
                serde_json::to_string_pretty(&channel.and_then(|c| c.status)).unwrap_or_default(),
                statuses.join("\n"),
                self.cluster.log_tails(10)
            )
        })
        .await;
    }

    /// Every instance Ready on `module`.
    async fn all_ready_on(&self, module: &str, timeout: Duration) {
        self.eventually(
            &format!("all {FLEET} instances Ready on {module}"),
            timeout,
            || async { self.ready_on(module).await == FLEET },
        )
        .await;
    }

    /// The UID and resourceVersion of each instance's Service, and its Deployment's UID and
    /// generation (a Deployment's resourceVersion also moves with its status, which other
    /// controllers write).
    async fn fingerprints(&self) -> BTreeMap<String, (String, String, String, i64)> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.ns);
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.ns);
        let mut out = BTreeMap::new();
        for s in services.list(&ListParams::default()).await.unwrap().items {
            let name = s.metadata.name.clone().unwrap_or_default();
            let d = deployments.get(&name).await.unwrap();
            out.insert(
                name,
                (
                    s.metadata.uid.unwrap_or_default(),
                    s.metadata.resource_version.unwrap_or_default(),
                    d.metadata.uid.unwrap_or_default(),
                    d.metadata.generation.unwrap_or_default(),
                ),
            );
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_module_advances_step_by_step_and_survives_an_operator_killed_mid_rollout() {
    let mut e = env("rollout-good").await;
    let steps = json!({"steps": ["1", "25%", "100%"], "pause": "2s", "healthDeadline": "2m"});
    e.channel_on("v1", steps).await;
    e.fleet(|_| 2).await;
    let (v1, v2) = (e.module("v1"), e.module("v2"));
    e.all_ready_on(&v1, Duration::from_secs(180)).await;

    e.set_channel(json!({"module": oci(&v2)})).await;
    // Watch the rollout: a step starts only once every instance moved before it is Ready on
    // the new module; the counts follow the steps (1, then 25% = 5, then all).
    let mut seen: Vec<(u32, usize)> = Vec::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(
            Instant::now() < deadline,
            "the rollout did not complete: {seen:?}"
        );
        let status = e.channel().await.status.unwrap_or_default();
        let Some(rollout) = status.rollout.clone() else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let statuses = e.statuses().await;
        // The channel and the instances are two reads: the driver may start the next step
        // between them, and its instances move. The instances were read under `rollout.step`
        // only if the channel still says so afterwards (steps never go back while the rollout
        // progresses, so a step seen twice held in between).
        let after = e.channel().await.status.unwrap_or_default().rollout;
        let held = after.is_some_and(|a| a.step == rollout.step && a.phase == rollout.phase);
        let on_v2 = statuses.values().filter(|s| s.module_ref == v2).count();
        let ready_on_v2 = statuses
            .values()
            .filter(|s| s.module_ref == v2 && s.is_ready())
            .count();
        match rollout.phase {
            Phase::Progressing | Phase::Paused => {
                let step = rollout.step;
                if seen.last().map(|(s, _)| *s) != Some(step) {
                    // Entering a step: everyone moved by the step before is Ready on v2.
                    let before = match step {
                        0 => 0,
                        1 => 1,
                        _ => 5,
                    };
                    assert!(
                        ready_on_v2 >= before,
                        "step {} started with {ready_on_v2} of {before} moved instances Ready",
                        step + 1
                    );
                    seen.push((step, on_v2));
                }
                let allowed = [1, 5, FLEET][step as usize];
                assert!(
                    !held || on_v2 <= allowed,
                    "step {}: {on_v2} instances on the new module, at most {allowed}",
                    step + 1
                );
                // Kill the operator once the second step is under way; another one resumes.
                if step == 1 && !killed {
                    e.controller.abort();
                    let _ = (&mut e.controller).await;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    e.controller = tokio::spawn(operator(&e.client, &e.ns, e.cache.path()).run());
                    killed = true;
                }
            }
            Phase::Complete => break,
            Phase::Previewing => {
                assert!(
                    !held || on_v2 == 0,
                    "nothing moves before the preview passed: {on_v2} moved"
                );
            }
            other => panic!("the rollout ended {other:?}: {}", rollout.message),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(killed, "the operator was killed mid-rollout");
    // Steps seen in order, never one back. The last one (no pause after it) may pass between
    // two looks under load: its event says it ran.
    let steps_seen: Vec<u32> = seen.iter().map(|(s, _)| *s).collect();
    assert!(
        steps_seen == [0, 1, 2] || steps_seen == [0, 1],
        "every step, in order: {seen:?}"
    );
    let last_step = format!("step 3: {FLEET} of {FLEET} instances on the new module");
    e.eventually("the last step's event", Duration::from_secs(30), || async {
        e.channel_events()
            .await
            .iter()
            .any(|ev| ev.note.as_deref() == Some(last_step.as_str()))
    })
    .await;
    e.all_ready_on(&v2, Duration::from_secs(120)).await;
    let status = e.channel().await.status.unwrap();
    assert_eq!(status.current.and_then(|c| c.oci), Some(v2.clone()));
    assert_eq!(status.updated, format!("{FLEET}/{FLEET}"));
    assert_eq!(status.history[0].outcome, "Complete");

    // Each instance moved once: its revisions are v2 then v1, never v1 again after v2.
    for (name, s) in e.statuses().await {
        let modules: Vec<&str> = s.revisions.iter().map(|r| r.module_ref.as_str()).collect();
        assert_eq!(modules, [v2.as_str(), v1.as_str()], "{name}: {modules:?}");
        assert_eq!(s.revisions[0].outcome, "AllNodesReady", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_failing_policy_for_some_instances_halts_in_the_preview_with_nothing_applied() {
    let e = env("rollout-policy").await;
    e.channel_on("v1", json!({"pause": "1s"})).await;
    // Five of the twenty ask for 2 replicas, which the stricter module refuses.
    e.fleet(|i| if i % 4 == 0 { 2 } else { 4 }).await;
    let v1 = e.module("v1");
    e.all_ready_on(&v1, Duration::from_secs(180)).await;
    let before = e.fingerprints().await;

    e.set_channel(json!({"module": oci(&e.module("strict"))}))
        .await;
    e.eventually(
        "the rollout halted in the preview",
        Duration::from_secs(60),
        || async { e.phase().await == Some(Phase::Halted) },
    )
    .await;
    let rollout = e.channel().await.status.unwrap().rollout.unwrap();
    let preview = rollout.preview.clone().unwrap();
    assert_eq!(
        (preview.instances, preview.failed),
        (FLEET as u32, 5),
        "{preview:?}"
    );
    let failed: Vec<String> = rollout
        .problems
        .iter()
        .map(|p| p.instance.clone())
        .collect();
    let expected: Vec<String> = (0..FLEET)
        .filter(|i| i % 4 == 0)
        .map(|i| format!("{}/svc-{i:02}", e.ns))
        .collect();
    assert_eq!(failed, expected);
    assert!(
        rollout
            .problems
            .iter()
            .all(|p| p.reason == "PolicyViolation"
                && p.message
                    .contains("replicas must be between 3 and 20, got 2")),
        "{:?}",
        rollout.problems
    );
    // Nothing was applied: every instance still on v1, the same objects, untouched.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(e.ready_on(&v1).await, FLEET);
    assert_eq!(e.fingerprints().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_that_never_becomes_ready_halts_and_rolls_back_with_every_other_instance_untouched()
 {
    let e = env("rollout-canary").await;
    e.channel_on("v1", json!({"healthDeadline": "20s", "pause": "1s"}))
        .await;
    e.fleet(|_| 2).await;
    let v1 = e.module("v1");
    let bad = e.module("never-ready");
    e.all_ready_on(&v1, Duration::from_secs(180)).await;
    let before = e.fingerprints().await;

    e.set_channel(json!({"module": oci(&bad)})).await;
    // The canary moves, is not Ready by the deadline: halted and rolled back.
    let canary = std::sync::Mutex::new(None);
    e.eventually(
        "the rollout rolled back",
        Duration::from_secs(90),
        || async {
            for (name, s) in e.statuses().await {
                if s.module_ref == bad {
                    *canary.lock().unwrap() = Some(name);
                }
            }
            e.phase().await == Some(Phase::RolledBack)
        },
    )
    .await;
    let canary = canary
        .into_inner()
        .unwrap()
        .expect("one instance moved to the new module before the halt");
    let rollout = e.channel().await.status.unwrap().rollout.unwrap();
    assert_eq!(
        rollout
            .problems
            .iter()
            .map(|p| p.instance.clone())
            .collect::<Vec<_>>(),
        [format!("{}/{canary}", e.ns)]
    );
    assert_eq!(rollout.problems[0].reason, "NotReady");
    // The canary is back on v1 and Ready there; its revisions show the way there and back,
    // and the render hash of v1 again is the one it had.
    e.all_ready_on(&v1, Duration::from_secs(60)).await;
    let s = e.statuses().await.remove(&canary).unwrap();
    let modules: Vec<&str> = s.revisions.iter().map(|r| r.module_ref.as_str()).collect();
    assert_eq!(modules, [v1.as_str(), bad.as_str(), v1.as_str()]);
    assert_eq!(s.revisions[0].render_hash, s.revisions[2].render_hash);
    // Every other instance: the same objects, never written.
    let after = e.fingerprints().await;
    for (name, print) in &before {
        if *name != canary {
            assert_eq!(after.get(name), Some(print), "{name} was touched");
        }
    }
    // Events on the channel say what happened.
    let reasons: Vec<String> = e
        .channel_events()
        .await
        .into_iter()
        .filter_map(|ev| ev.reason)
        .collect();
    for wanted in [
        "RolloutStarted",
        "StepStarted",
        "RolloutHalted",
        "RolledBack",
    ] {
        assert!(
            reasons.iter().any(|r| r == wanted),
            "no {wanted} event: {reasons:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_holds_a_rollout_resume_continues_it_and_undo_brings_everyone_back() {
    let e = env("rollout-pause").await;
    // A long pause between steps leaves time to undo once half the fleet has moved.
    e.channel_on("v1", json!({"steps": ["1", "50%", "100%"], "pause": "30s"}))
        .await;
    e.fleet(|_| 2).await;
    let (v1, v2) = (e.module("v1"), e.module("v2"));
    e.all_ready_on(&v1, Duration::from_secs(180)).await;

    e.set_channel(json!({"paused": true, "module": oci(&v2)}))
        .await;
    e.eventually(
        "paused after the canary",
        Duration::from_secs(60),
        || async { e.phase().await == Some(Phase::Paused) && e.ready_on(&v2).await == 1 },
    )
    .await;
    // Held: nothing more moves.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(e.phase().await, Some(Phase::Paused));
    let on_v2 = e
        .statuses()
        .await
        .values()
        .filter(|s| s.module_ref == v2)
        .count();
    assert_eq!(on_v2, 1);

    e.set_channel(json!({"paused": false})).await;
    e.eventually("half the fleet on v2", Duration::from_secs(90), || async {
        e.ready_on(&v2).await >= FLEET / 2
    })
    .await;
    assert_eq!(e.phase().await, Some(Phase::Progressing));
    e.set_channel(json!({"undo": true})).await;
    e.eventually("rolled back", Duration::from_secs(30), || async {
        e.phase().await == Some(Phase::RolledBack)
    })
    .await;
    e.all_ready_on(&v1, Duration::from_secs(120)).await;
    let status = e.channel().await.status.unwrap();
    assert_eq!(status.current.and_then(|c| c.oci), Some(v1));
    assert_eq!(status.history[0].outcome, "RolledBack");
}
