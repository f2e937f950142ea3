//! What a rollout costs over applying the same module change directly, on the local control
//! plane: N WebServices move from one published module to another
//!
//! - **direct**: every instance pins the new digest at once (`platformRef.oci`, what a GitOps
//!   commit changing all of them does; the baseline);
//! - **channel, one step**: the instances follow a `PlatformChannel` whose strategy is
//!   `steps: ["100%"]`, `pause: 0s` (the preview, then everyone);
//! - **channel, four steps**: `steps: ["1", "10%", "50%", "100%"]`, `pause: 0s` (the default
//!   steps; every step waits for its instances to be Ready).
//!
//! Printed: time from the change to every instance Ready on the new module, and the ratio to
//! direct.
//!
//! ```sh
//! cargo bench -p webservice-operator --bench rollout_overhead         # N = 50
//! cargo bench -p webservice-operator --bench rollout_overhead -- 100
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/support/module_variant.rs"]
mod module_variant;
use module_variant::module_variant;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cuebe::controller::Operator;
use cuebe::remote::ModuleFetcher;
use cuebe_testkit::cluster::{ClusterOptions, TestCluster};
use cuebe_testkit::oci_registry::{LocalRegistry, publish_module};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use webservice_operator::WebService;

async fn ready_on(api: &Api<WebService>, module: &str) -> usize {
    api.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .filter_map(|w| w.status.as_ref())
                .filter(|s| s.module_ref == module && s.is_ready())
                .count()
        })
        .unwrap_or(0)
}

async fn wait_all(api: &Api<WebService>, module: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(900);
    while ready_on(api, module).await < n {
        assert!(Instant::now() < deadline, "not all Ready on {module}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn apply(api: &Api<WebService>, name: &str, platform_ref: serde_json::Value) {
    let body = json!({
        "apiVersion": "platform.example.com/v1alpha1", "kind": "WebService",
        "metadata": {"name": name},
        "spec": {
            "image": "registry.example.com/web:1.4.2",
            "resources": {"cpu": "250m", "memory": "256Mi"},
            "platformRef": platform_ref,
        },
    });
    api.patch(
        name,
        &PatchParams::apply("bench").force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
}

/// One scenario in its own namespace with its own operator; returns the time from the change
/// to all Ready on `v2`.
async fn scenario(
    cluster: &TestCluster,
    client: &Client,
    n: usize,
    strategy: Option<serde_json::Value>,
    v1: &str,
    v2: &str,
) -> Duration {
    let ns = cluster.namespace("bench-rollout").await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let operator = tokio::spawn(
        Operator::<WebService>::new(client.clone())
            .namespace(ns.clone())
            .with_module_fetcher(Arc::new(ModuleFetcher::new(Some(
                cache.path().to_path_buf(),
            ))))
            .run(),
    );
    let api: Api<WebService> = Api::namespaced(client.clone(), &ns);
    let channels: Api<cuebe::rollout::PlatformChannel> = Api::all(client.clone());
    let channel = format!("{ns}-channel");
    if let Some(strategy) = &strategy {
        let body = json!({
            "apiVersion": "cuebe.dev/v1alpha1", "kind": "PlatformChannel",
            "metadata": {"name": channel, "labels": {"cuebe.dev/namespace": ns}},
            "spec": {
                "abstraction": {"group": "platform.example.com", "kind": "WebService"},
                "module": {"oci": v1},
                "strategy": strategy,
            },
        });
        channels
            .patch(
                &channel,
                &PatchParams::apply("bench").force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap();
    }
    let on = |module: &str| match &strategy {
        Some(_) => json!({"channel": channel}),
        None => json!({"oci": module}),
    };
    for i in 0..n {
        apply(&api, &format!("svc-{i:03}"), on(v1)).await;
    }
    wait_all(&api, v1, n).await;
    let started = Instant::now();
    match &strategy {
        Some(_) => {
            channels
                .patch(
                    &channel,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"module": {"oci": v2}}})),
                )
                .await
                .unwrap();
        }
        None => {
            for i in 0..n {
                apply(&api, &format!("svc-{i:03}"), on(v2)).await;
            }
        }
    }
    wait_all(&api, v2, n).await;
    let took = started.elapsed();
    operator.abort();
    took
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
        let client = cluster.client();
        cluster
            .apply_crds(
                &cuebe::abstraction::crds::<WebService>(),
                Instant::now() + Duration::from_secs(30),
            )
            .await
            .unwrap();
        let registry = LocalRegistry::start().unwrap();
        let (a, b) = (module_variant("1.0.0"), module_variant("1.1.0"));
        let v1 = publish_module(&registry, a.path(), "v1.0.0").unwrap();
        let v2 = publish_module(&registry, b.path(), "v1.1.0").unwrap();
        println!("rollout overhead, {n} WebServices, one module change (2 cores)");
        let direct = scenario(&cluster, &client, n, None, &v1, &v2).await;
        println!("  direct (every instance pins the new digest): {direct:.1?}");
        let one = scenario(
            &cluster,
            &client,
            n,
            Some(json!({"steps": ["100%"], "pause": "0s"})),
            &v1,
            &v2,
        )
        .await;
        println!(
            "  channel, one step (preview, then all):       {one:.1?}  ({:.2}x direct)",
            one.as_secs_f64() / direct.as_secs_f64()
        );
        let four = scenario(
            &cluster,
            &client,
            n,
            Some(json!({"steps": ["1", "10%", "50%", "100%"], "pause": "0s"})),
            &v1,
            &v2,
        )
        .await;
        println!(
            "  channel, four steps (1, 10%, 50%, 100%):     {four:.1?}  ({:.2}x direct)",
            four.as_secs_f64() / direct.as_secs_f64()
        );
    });
}
