//! The control plane harness against itself: what later tests rely on actually works.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cuebe_testkit::cluster::ack::{AckStandIn, AckStandInOptions, TERMINAL_MESSAGE};
use cuebe_testkit::cluster::{ClusterOptions, PORT_NAMES, PortPicker, TestCluster, free_port};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::runtime::watcher;
use serde_json::json;

async fn cluster() -> &'static TestCluster {
    match TestCluster::shared().await {
        Ok(c) => c,
        Err(e) => panic!("the test cluster did not start: {e}"),
    }
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    cuebe_testkit::eventually::eventually(what, timeout, check, || async {
        cluster().await.log_tails(20)
    })
    .await;
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

/// A first build of the control plane must not count against the start deadline: binaries built
/// into an empty cache (about a minute with Go's build cache warm, half an hour without), then a
/// start that has to fit into 40 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_whose_binaries_are_built_first_still_starts_within_its_deadline() {
    // Well above a start-up (5-20 s, with other tests running), well below the build.
    let start_timeout = Duration::from_secs(40);
    let cache = tempfile::Builder::new()
        .prefix("cuebe-fresh-cache-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let began = Instant::now();
    let cluster = TestCluster::start(ClusterOptions {
        start_timeout,
        cache_dir: Some(cache.path().to_path_buf()),
        ..ClusterOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the cluster with freshly built binaries did not start: {e}"));
    let total = began.elapsed();
    let build = total.saturating_sub(cluster.startup_time());
    eprintln!(
        "fresh cache: binaries built in about {:.0?}, cluster started in {:.1?}",
        build,
        cluster.startup_time()
    );
    if build < start_timeout {
        // Then this run does not tell a deadline that includes the build from one that does not.
        eprintln!("fresh cache: the build was quicker than start_timeout; this run proves little");
    }
    assert!(
        cluster.kubectl().starts_with(cache.path()),
        "the binaries come from the fresh cache, not {}",
        cluster.kubectl().display()
    );
    assert!(cluster.startup_time() < start_timeout);
    Api::<Node>::all(cluster.client())
        .get("kwok-node-0")
        .await
        .unwrap();
    cluster.check_alive().unwrap();
    // The components run from the cache: stop them before it goes.
    drop(cluster);
}

/// A watch on a kind without matching objects receives nothing for minutes; it must stay open
/// (no error, no backoff) and still deliver the first object at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_without_objects_stays_open_past_a_minute_and_delivers_at_once() {
    let c = cluster().await;
    let ns = c.namespace("idle-watch").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), &ns);
    // The namespace has kube-root-ca.crt; the selector makes the watched set empty.
    let selector = "cuebe.test/idle-watch=yes";
    let mut events = watcher(api.clone(), watcher::Config::default().labels(selector)).boxed();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
            Ok(Some(Ok(watcher::Event::Init))) => {}
            Ok(Some(Ok(watcher::Event::InitDone))) => break,
            other => panic!("expected the empty initial list, got {other:?}"),
        }
    }
    // Past the first bookmark (about a minute after the watch starts) and past the 60 s read
    // timeout the clients once had, well short of the watch's own 290 s.
    let idle = Duration::from_secs(80);
    let idle_started = Instant::now();
    if let Ok(item) = tokio::time::timeout(idle, events.next()).await {
        panic!(
            "the idle watch must stay silent, but after {:.1?} it yielded {item:?}",
            idle_started.elapsed()
        );
    }
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "after-idle", "labels": {"cuebe.test/idle-watch": "yes"}},
        "data": {"k": "v"}
    }))
    .unwrap();
    let created = Instant::now();
    api.create(&PostParams::default(), &cm).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
        Ok(Some(Ok(watcher::Event::Apply(obj)))) => {
            assert_eq!(obj.metadata.name.as_deref(), Some("after-idle"));
        }
        other => panic!("expected the new ConfigMap within 5 s, got {other:?}"),
    }
    eprintln!(
        "idle watch: {:.0?} silent, then delivered in {:.0?}",
        idle,
        created.elapsed()
    );
}

/// A picker that hands out `taken` the first time each listener is asked for, then free ports;
/// it counts the picks by listener.
fn first_pick_taken(taken: u16) -> (PortPicker, Arc<Mutex<HashMap<String, u32>>>) {
    let picks: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let counted = picks.clone();
    let picker: PortPicker = Arc::new(move |name: &str| {
        let mut picks = counted.lock().unwrap();
        let n = picks.entry(name.to_string()).or_default();
        *n += 1;
        if *n == 1 { Ok(taken) } else { free_port() }
    });
    (picker, picks)
}

/// Every component (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok) is
/// first given a port this test holds, as if another process took it after the pick: each must
/// be restarted on a new port, and the cluster start anyway.
#[tokio::test(flavor = "multi_thread")]
async fn components_whose_port_was_taken_are_restarted_on_new_ports() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    let (picker, picks) = first_pick_taken(taken);
    let cluster = TestCluster::start(ClusterOptions {
        port_picker: Some(picker),
        // Restarts add a few seconds; the point here is that it starts at all.
        start_timeout: Duration::from_secs(120),
        ..ClusterOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the cluster did not get past the taken port: {e}"));
    for &name in PORT_NAMES {
        assert_ne!(
            cluster.port(name),
            Some(taken),
            "{name} moved off the taken port"
        );
        assert!(cluster.port(name).is_some(), "{name} has a port");
        assert_eq!(
            picks.lock().unwrap().get(name).copied(),
            Some(2),
            "{name}: picked, found taken, picked again"
        );
    }
    // Clients and the kubeconfig follow kube-apiserver to its new port.
    let api_port = cluster.port("kube-apiserver").unwrap();
    assert_eq!(cluster.server(), format!("https://127.0.0.1:{api_port}"));
    let kubeconfig = std::fs::read_to_string(cluster.kubeconfig()).unwrap();
    assert!(
        kubeconfig.contains(&format!("server: https://127.0.0.1:{api_port}")),
        "{kubeconfig}"
    );
    // The controllers work: start-up waited for kwok's Node and the service-account controller,
    // and nothing died since.
    Api::<Node>::all(cluster.client())
        .get("kwok-node-0")
        .await
        .unwrap();
    cluster.check_alive().unwrap();
    let failed = cluster
        .workdir()
        .join("kube-controller-manager.port-taken-1.log");
    let failed = std::fs::read_to_string(&failed).unwrap_or_default();
    assert!(
        failed.contains("address already in use"),
        "the first kube-controller-manager failed on the taken port:\n{failed}"
    );
    drop(held);
}

/// Two clusters picking ports at the same moment (as parallel test binaries do) both come up.
#[tokio::test(flavor = "multi_thread")]
async fn two_clusters_started_at_once_both_come_up() {
    let options = || ClusterOptions {
        // Two clusters share 2 cores here; the point is that both start, not how fast.
        start_timeout: Duration::from_secs(180),
        ..ClusterOptions::default()
    };
    let (a, b) = tokio::join!(TestCluster::start(options()), TestCluster::start(options()));
    let a = a.unwrap_or_else(|e| panic!("the first cluster did not start: {e}"));
    let b = b.unwrap_or_else(|e| panic!("the second cluster did not start: {e}"));
    eprintln!(
        "two clusters at once: started in {:.1?} and {:.1?}",
        a.startup_time(),
        b.startup_time()
    );
    assert_ne!(a.server(), b.server());
    let mut ports: Vec<u16> = PORT_NAMES
        .iter()
        .flat_map(|n| [a.port(n), b.port(n)])
        .flatten()
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        ports.len(),
        2 * PORT_NAMES.len(),
        "every listener on its own port"
    );
    for c in [&a, &b] {
        c.check_alive().unwrap();
        Api::<Node>::all(c.client())
            .get("kwok-node-0")
            .await
            .unwrap();
    }
}
