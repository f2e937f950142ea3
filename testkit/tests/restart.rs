//! Stopping and starting one component of a running cluster keeps its data, its ports and its
//! clients working. Its own test binary: it restarts the components of its own cluster, which
//! the other tests of a binary would feel.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cuebe_testkit::cluster::{ClusterOptions, Component, TestCluster};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name}, "data": {"written": name}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_apiserver_and_etcd_restart_with_their_data_ports_and_clients() {
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    let ns = cluster.namespace("restart").await.unwrap();
    // One client for the whole test: it must keep working across the restarts.
    let client = cluster.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let before = cms
        .create(&PostParams::default(), &config_map("before"))
        .await
        .unwrap();
    let uid = before.metadata.uid.clone().unwrap();
    let port = cluster.port("kube-apiserver");

    // kube-apiserver: stopped, it is not a crash; started, it serves on the same port.
    cluster.stop_component(Component::ApiServer).await.unwrap();
    assert!(!cluster.is_running(Component::ApiServer));
    cluster.check_alive().unwrap();
    assert!(
        cluster
            .log_tails(1)
            .contains("kube-apiserver, stopped by the test"),
        "{}",
        cluster.log_tails(1)
    );
    assert!(cms.get("before").await.is_err(), "no API server to answer");
    cluster.start_component(Component::ApiServer).await.unwrap();
    assert_eq!(cluster.port("kube-apiserver"), port);
    assert_eq!(
        cms.get("before").await.unwrap().metadata.uid.as_deref(),
        Some(uid.as_str())
    );
    cms.create(&PostParams::default(), &config_map("after-apiserver"))
        .await
        .unwrap();

    // etcd: its data directory is kept, and kube-apiserver is ready again when it returns.
    let started = Instant::now();
    cluster.restart_component(Component::Etcd).await.unwrap();
    println!(
        "etcd restarted and kube-apiserver ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for name in ["before", "after-apiserver"] {
        let cm = cms.get(name).await.unwrap();
        assert_eq!(cm.data.unwrap()["written"], name);
    }
    assert_eq!(
        cms.get("before").await.unwrap().metadata.uid.as_deref(),
        Some(uid.as_str())
    );
    cms.create(&PostParams::default(), &config_map("after-etcd"))
        .await
        .unwrap();
    assert_eq!(cms.list(&Default::default()).await.unwrap().items.len(), 4); // + kube-root-ca.crt

    // A crash (SIGKILL) is survived the same way, and the restart is idempotent.
    cluster.kill_component(Component::ApiServer).await.unwrap();
    cluster.kill_component(Component::ApiServer).await.unwrap();
    cluster.start_component(Component::ApiServer).await.unwrap();
    cluster.start_component(Component::ApiServer).await.unwrap();
    assert!(cms.get("after-etcd").await.is_ok());

    // kwok v0.8.0 can abort on a data race in its CEL type registry ("concurrent map writes");
    // the cluster starts it again rather than failing the test that happened to be running.
    let kwok_log = cluster.workdir().join("kwok.log");
    let crashed = cluster.pid(Component::Kwok).unwrap();
    append(&kwok_log, "fatal error: concurrent map writes\n");
    kill_9(crashed);
    // Polled the way a test's waits poll it: the exit shows once every thread of kwok is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.pid(Component::Kwok) == Some(crashed) {
        cluster.check_alive().unwrap();
        assert!(Instant::now() < deadline, "kwok was not started again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cluster.pid(Component::Kwok).is_some(),
        "kwok runs as a new process"
    );

    // The controllers outlived both restarts, and kwok its crash: a Deployment made now becomes
    // Available.
    cluster.check_alive().unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client, &ns);
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]}
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    cuebe_testkit::eventually::eventually(
        "the Deployment made after the restarts to be Available",
        Duration::from_secs(60),
        || async {
            deployments
                .get("web")
                .await
                .ok()
                .and_then(|d| d.status)
                .and_then(|s| s.available_replicas)
                == Some(1)
        },
        || async { cluster.log_tails(20) },
    )
    .await;
    cluster.check_alive().unwrap();

    // Any other exit of kwok is a failure the test sees, with kwok named.
    kill_9(cluster.pid(Component::Kwok).unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let died = loop {
        if let Err(died) = cluster.check_alive() {
            break died.to_string();
        }
        assert!(Instant::now() < deadline, "kwok's exit was never reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(died.contains("kwok"), "{died}");
}

fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

fn kill_9(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_the_cluster_never_started_cannot_be_stopped_or_started() {
    let cluster = TestCluster::start(ClusterOptions::api_only())
        .await
        .unwrap();
    let err = cluster
        .stop_component(Component::Scheduler)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("kube-scheduler was not started"),
        "{err}"
    );
    assert!(cluster.start_component(Component::Kwok).await.is_err());
    assert!(!cluster.is_running(Component::Scheduler));
    assert!(cluster.is_running(Component::Etcd));
}
