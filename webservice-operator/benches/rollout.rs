//! What a rollout's preview costs: before a new module moves any instance, the channel's
//! driver renders every instance on the channel with it (and with the module they are on, to
//! count what changes), writing nothing. This bench does exactly those renders for a fleet of
//! N WebServices with the renderer the operator uses (`cuebe::CueRenderer`, its render cache
//! keyed by module digest and input hash, 4 renders at a time as the driver does), no cluster:
//!
//! - **fleet**: the instance controllers' renders of every instance on the current module
//!   before the rollout (the module built once, then N renders), which fill the render cache;
//! - **preview, new module**: N renders with a module that changes every object (a new label),
//!   plus N renders with the current module, which the fleet's renders already cached;
//! - **preview, unchanged module**: the module the fleet is on previewed (target = current):
//!   2N cache hits;
//! - **the same candidate again**: a second preview of the new module (the driver's next pass
//!   while previewing): 2N cache hits;
//! - **preview after a restart**: a fresh renderer (the cache is in memory), new module and
//!   current one both rendered: 2N renders and two module builds.
//!
//! ```sh
//! cargo bench -p webservice-operator --bench rollout             # N = 1000, 3 rounds
//! cargo bench -p webservice-operator --bench rollout -- 200 5    # N, rounds
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;

use cuebe::abstraction::render_input;
use cuebe::module::{ModuleSource, PlatformRef};
use cuebe::renderer::{Capabilities, CueRenderer, RenderInput, Renderer};
use webservice_operator::WebService;

/// N WebServices in 20 namespaces: 7 in 10 internal, 2 Public with autoscaling, 1 with IAM.
fn fleet(n: usize) -> Vec<WebService> {
    (0..n)
        .map(|i| {
            let mut spec = serde_json::json!({
                "image": format!("registry.example.com/svc-{i}:1.{}.0", i % 7),
                "resources": {"cpu": "100m", "memory": "128Mi"},
                "env": [{"name": "INDEX", "value": i.to_string()}, {"name": "LOG_LEVEL", "value": "info"}],
                "platformRef": {"channel": "stable"},
            });
            match i % 10 {
                7 | 8 => {
                    spec["exposure"] = serde_json::json!({"type": "Public", "host": format!("svc-{i}.example.com")});
                    spec["autoscaling"] = serde_json::json!({"minReplicas": 2, "maxReplicas": 5});
                }
                9 => {
                    spec["iam"] = serde_json::json!({"policyARNs": ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"]});
                }
                _ => {}
            }
            serde_json::from_value(serde_json::json!({
                "apiVersion": "platform.example.com/v1alpha1", "kind": "WebService",
                "metadata": {"name": format!("svc-{i}"), "namespace": format!("team-{}", i % 20)},
                "spec": spec,
            }))
            .expect("a valid WebService")
        })
        .collect()
}

/// The embedded module with every object labelled differently: a new digest that changes
/// every object of every instance.
fn relabelled() -> Arc<ModuleSource> {
    let current = webservice_operator::platform_module();
    let mut files = current.files().clone();
    let render = files
        .iter_mut()
        .find(|(path, _)| path.ends_with("webservice/render.cue"))
        .map(|(_, text)| text)
        .expect("the module has webservice/render.cue");
    let patched = render.replace(
        r#""app.kubernetes.io/managed-by": "cuebe""#,
        r#""app.kubernetes.io/managed-by": "cuebe-next""#,
    );
    assert_ne!(*render, patched, "the managed-by label is where it was");
    *render = patched;
    Arc::new(ModuleSource::new(files, current.package()))
}

/// The renderer input as the operator builds it for an instance on a channel: the module
/// sees the reference it renders with in `spec.platformRef`.
fn input(
    object: &WebService,
    reference: &PlatformRef,
    module: Option<Arc<ModuleSource>>,
    capabilities: &Capabilities,
) -> RenderInput {
    let mut input = render_input(object, capabilities.clone(), Default::default());
    input.platform_ref = Some(reference.clone());
    input.module = module;
    if let Some(spec) = input.spec.as_object_mut() {
        spec.insert(
            "platformRef".into(),
            serde_json::to_value(reference).unwrap(),
        );
    }
    input
}

/// Renders every input, 4 at a time (as the driver's preview does); every render must
/// succeed without a blocking violation.
async fn render_all(renderer: &CueRenderer, inputs: &[RenderInput]) -> Duration {
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(inputs)
        .map(|i| renderer.render(i))
        .buffer_unordered(4)
        .collect()
        .await;
    let elapsed = started.elapsed();
    for r in results {
        let plan = r.expect("the instance renders");
        assert!(!plan.graph().has_blocking_violations());
    }
    elapsed
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn per_instance(d: Duration, n: usize) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6 / n as f64)
}

#[derive(Default)]
struct Round {
    fleet: Vec<Duration>,
    preview_new: Vec<Duration>,
    preview_unchanged: Vec<Duration>,
    preview_again: Vec<Duration>,
    preview_restart: Vec<Duration>,
}

#[tokio::main]
async fn main() {
    let mut numbers = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<usize>().ok());
    let n = numbers.next().unwrap_or(1000);
    let rounds = numbers.next().unwrap_or(3).max(1);
    let objects = fleet(n);
    let capabilities = Capabilities::from_names(["ack-iam"]);
    let current = PlatformRef::embedded(webservice_operator::PLATFORM_VERSION);
    let candidate_module = relabelled();
    let candidate = PlatformRef {
        oci: Some(format!(
            "oci://registry.example.com/platform@{}",
            candidate_module.digest()
        )),
        ..PlatformRef::default()
    };
    let on_current: Vec<RenderInput> = objects
        .iter()
        .map(|o| input(o, &current, None, &capabilities))
        .collect();
    let on_candidate: Vec<RenderInput> = objects
        .iter()
        .map(|o| input(o, &candidate, Some(candidate_module.clone()), &capabilities))
        .collect();
    // The preview of a module: the target's render of every instance, then the previous one's.
    let preview_of = |target: &[RenderInput]| -> Vec<RenderInput> {
        target.iter().chain(on_current.iter()).cloned().collect()
    };
    let preview_new = preview_of(&on_candidate);
    let preview_unchanged = preview_of(&on_current);

    let mut r = Round::default();
    let mut misses = (0, 0, 0, 0);
    for _ in 0..rounds {
        let renderer = CueRenderer::new(webservice_operator::platform_modules());
        r.fleet.push(render_all(&renderer, &on_current).await);
        let before = CueRenderer::cache_stats(&renderer);
        r.preview_new
            .push(render_all(&renderer, &preview_new).await);
        let after_new = CueRenderer::cache_stats(&renderer);
        r.preview_unchanged
            .push(render_all(&renderer, &preview_unchanged).await);
        let after_unchanged = CueRenderer::cache_stats(&renderer);
        r.preview_again
            .push(render_all(&renderer, &preview_new).await);
        let after_again = CueRenderer::cache_stats(&renderer);
        misses = (
            after_new.misses - before.misses,
            after_unchanged.misses - after_new.misses,
            after_again.misses - after_unchanged.misses,
            after_new.hits - before.hits,
        );
        let restarted = CueRenderer::new(webservice_operator::platform_modules());
        r.preview_restart
            .push(render_all(&restarted, &preview_new).await);
    }
    let fleet = median(r.fleet);
    let new = median(r.preview_new);
    let unchanged = median(r.preview_unchanged);
    let again = median(r.preview_again);
    let restart = median(r.preview_restart);
    println!(
        "rollout preview, N = {n} WebServices, median of {rounds} rounds (4 renders at a time)"
    );
    println!("| pass | renders (cache misses) | time | per instance | vs preview, new module |");
    println!("| --- | --- | --- | --- | --- |");
    let ratio = |d: Duration| format!("{:.4}x", d.as_secs_f64() / new.as_secs_f64());
    println!(
        "| fleet on the current module (cold, fills the cache) | {n} ({n}) | {} | {} | {} |",
        ms(fleet),
        per_instance(fleet, n),
        ratio(fleet)
    );
    println!(
        "| preview, new module | {} ({}; {} hits) | {} | {} | 1x |",
        2 * n,
        misses.0,
        misses.3,
        ms(new),
        per_instance(new, n)
    );
    println!(
        "| preview, unchanged module | {} ({}) | {} | {} | {} |",
        2 * n,
        misses.1,
        ms(unchanged),
        per_instance(unchanged, n),
        ratio(unchanged)
    );
    println!(
        "| the same candidate previewed again | {} ({}) | {} | {} | {} |",
        2 * n,
        misses.2,
        ms(again),
        per_instance(again, n),
        ratio(again)
    );
    println!(
        "| preview after a restart (empty cache) | {} ({}) | {} | {} | {} |",
        2 * n,
        2 * n,
        ms(restart),
        per_instance(restart, n),
        ratio(restart)
    );
}
