//! What a published module costs the operator, side by side with the embedded module it
//! replaces: the first render of an instance pinned to `oci://…` (cold: fetch from the local
//! registry, check every digest, verify the cosign signature, load; warm: the same digest from
//! the disk cache after a restart, and from memory within one process), against the first
//! render of the same module embedded in the binary.
//!
//! ```sh
//! cargo bench -p webservice-operator --bench module_fetch          # 20 rounds
//! cargo bench -p webservice-operator --bench module_fetch -- 50    # other counts
//! ```
//!
//! Each round uses a fresh renderer (no render cache), so every figure includes one CUE
//! evaluation of the WebService module.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cuebe::module::OciReference;
use cuebe::remote::ModuleFetcher;
use cuebe::renderer::{CueRenderer, RenderInput, Renderer};
use cuebe::trust::{ModulePolicy, SourceRule};
use cuebe_testkit::cosign::SigningKey;
use cuebe_testkit::oci_registry::{LocalRegistry, publish_module};

fn input(module: Option<Arc<cuebe::ModuleSource>>) -> RenderInput {
    RenderInput {
        instance: cuebe::instance::Instance {
            kind: "WebService".into(),
            name: "web".into(),
            namespace: "apps".into(),
            ..Default::default()
        },
        spec: serde_json::json!({"image": "registry.example.com/web:1.4.2",
            "resources": {"cpu": "250m", "memory": "256Mi"}}),
        module,
        observed: BTreeMap::new(),
        ..Default::default()
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let registry = LocalRegistry::start().expect("the registry starts");
    let platform = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cue/platform");
    let reference = publish_module(&registry, &platform, "v1.0.0").expect("published");
    let key = SigningKey::generate();
    key.sign_module(&reference).await.expect("signed");
    let policy = ModulePolicy {
        sources: vec![SourceRule {
            pattern: format!("{}/*", registry.host()),
            deny: false,
            keys: vec![key.public_pem()],
            ..SourceRule::default()
        }],
    };
    let pinned = OciReference::parse(&reference).unwrap();
    let package = "./webservice";

    let mut embedded = Vec::new();
    let mut cold = Vec::new();
    let mut warm_disk = Vec::new();
    let mut warm_memory = Vec::new();
    let disk = tempfile::tempdir().unwrap();
    let resident = ModuleFetcher::new(None);
    resident
        .fetch_trusted(&pinned, package, &policy)
        .await
        .unwrap();
    for _ in 0..rounds {
        let started = Instant::now();
        let renderer = CueRenderer::new(webservice_operator::platform_modules());
        renderer.render(&input(None)).await.unwrap();
        embedded.push(started.elapsed());

        // Cold: an empty cache, so manifest, blobs and signature come from the registry.
        let empty = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let fetcher = ModuleFetcher::new(Some(empty.path().to_path_buf()));
        let (module, _) = fetcher
            .fetch_trusted(&pinned, package, &policy)
            .await
            .unwrap();
        let renderer = CueRenderer::new(webservice_operator::platform_modules());
        renderer.render(&input(Some(module))).await.unwrap();
        cold.push(started.elapsed());
        // Keep one populated disk cache for the warm rounds.
        if warm_disk.is_empty() {
            let seeded = ModuleFetcher::new(Some(disk.path().to_path_buf()));
            seeded
                .fetch_trusted(&pinned, package, &policy)
                .await
                .unwrap();
        }

        // Warm from disk: a restarted operator (new fetcher), no network.
        let started = Instant::now();
        let fetcher = ModuleFetcher::new(Some(disk.path().to_path_buf()));
        let (module, _) = fetcher
            .cached_trusted(&pinned, package, &policy)
            .expect("cached and verified offline");
        let renderer = CueRenderer::new(webservice_operator::platform_modules());
        renderer.render(&input(Some(module))).await.unwrap();
        warm_disk.push(started.elapsed());

        // Warm in memory: the same process, already verified.
        let started = Instant::now();
        let (module, _) = resident
            .fetch_trusted(&pinned, package, &policy)
            .await
            .unwrap();
        let renderer = CueRenderer::new(webservice_operator::platform_modules());
        renderer.render(&input(Some(module))).await.unwrap();
        warm_memory.push(started.elapsed());
    }
    let base = median(embedded.clone());
    println!("first render of one instance, median of {rounds} rounds (fresh renderer each)");
    println!("| path | median | vs embedded |");
    println!("| --- | --- | --- |");
    for (name, samples) in [
        ("embedded module (baseline)", embedded),
        ("published, cold: fetch + digests + signature + load", cold),
        ("published, warm from the disk cache (restart)", warm_disk),
        ("published, warm in memory", warm_memory),
    ] {
        let m = median(samples);
        println!(
            "| {name} | {:.1} ms | {:.2}x |",
            m.as_secs_f64() * 1000.0,
            m.as_secs_f64() / base.as_secs_f64()
        );
    }
}
