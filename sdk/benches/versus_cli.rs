//! Warm render against the `cue` CLI, interleaved: `cargo bench -p cuebe --bench versus_cli`.
//!
//! criterion (`benches/compiler.rs`) runs the warm renders and the CLI baseline minutes apart; on
//! a shared machine whose speed drifts by up to 2x over minutes, the ratio of two such medians
//! says as much about the drift as about cuebe. Here every round times a burst of warm renders
//! and one CLI export of the same scenario back to back, so each round's ratio is taken under the
//! same conditions; the figure reported is the median of the per-round ratios.
//!
//! Environment: `CUEBE_BENCH_ROUNDS` (default 30), `CUEBE_BENCH_BURST` (warm renders per round,
//! default 20).
#![allow(clippy::print_stdout)] // a bench binary prints its figures
use std::collections::BTreeMap;
use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use cuebe::compiler::{Capabilities, CompileInput, CueCompilerOptions, InstanceMeta};
use cuebe::{CueCompiler, ModuleSet, ModuleSource};
use serde_json::json;

fn scenarios() -> Vec<(&'static str, CompileInput)> {
    let meta = InstanceMeta {
        name: "web".into(),
        namespace: "apps".into(),
        labels: BTreeMap::new(),
    };
    let base = json!({"image": "registry.example.com/web:1.4.2", "resources": {"cpu": "250m", "memory": "256Mi"}});
    let mut public = base.clone();
    public["exposure"] = json!({"type": "Public", "host": "web.example.com"});
    public["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 10});
    let mut irsa = base.clone();
    irsa["iam"] = json!({"policyARNs": ["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"], "inlinePolicy": "{\"Version\":\"2012-10-17\"}"});
    let observed = BTreeMap::from([(
        "iamRole".to_string(),
        json!({"status": {"ackResourceMetadata": {"arn": "arn:aws:iam::111122223333:role/apps-web"}}}),
    )]);
    vec![
        (
            "simple",
            CompileInput {
                instance: meta.clone(),
                spec: base,
                ..Default::default()
            },
        ),
        (
            "public",
            CompileInput {
                instance: meta.clone(),
                spec: public,
                capabilities: Capabilities::from_names(["gateway-api"]),
                ..Default::default()
            },
        ),
        (
            "irsa",
            CompileInput {
                instance: meta,
                spec: irsa,
                capabilities: Capabilities::from_names(["ack-iam"]),
                observed,
                ..Default::default()
            },
        ),
    ]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let rounds = env_usize("CUEBE_BENCH_ROUNDS", 30).max(1);
    let burst = env_usize("CUEBE_BENCH_BURST", 20).max(1);
    let module = ModuleSource::from_dir(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../cue/platform"),
        "./webservice",
    )
    .expect("cue/platform is readable");
    let compiler = CueCompiler::with_options(
        ModuleSet::single("1.0.0", module.clone()),
        CueCompilerOptions {
            render_cache_capacity: 0,
            ..Default::default()
        },
    );
    let cue = cuebe_testkit::cue_cli::cue_binary().expect("cue CLI for the baseline");
    let dir = std::env::temp_dir().join(format!("cuebe-versus-{}", std::process::id()));
    for (path, content) in module.files() {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().expect("file has a parent")).expect("mkdir");
        std::fs::write(p, content).expect("write module file");
    }

    println!(
        "{rounds} rounds; each: {burst} warm renders, then one `cue export`, per scenario (ms)"
    );
    println!(
        "{:<8} {:>12} {:>12} {:>12} {:>14}",
        "scenario", "warm p50", "warm min", "CLI p50", "ratio (p50)"
    );
    for (name, input) in scenarios() {
        let value = compiler.module_input(&input).expect("input");
        let file = dir.join(format!("{name}.json"));
        std::fs::write(
            &file,
            serde_json::to_vec(&json!({"input": value})).expect("json"),
        )
        .expect("write input");
        // Warm up: module built, CPU caches and the Go heap settled.
        for _ in 0..burst {
            black_box(compiler.compile_blocking(&input).expect("renders"));
        }
        let mut warm_all = Vec::new();
        let mut cli_all = Vec::new();
        let mut ratios = Vec::new();
        for _ in 0..rounds {
            let mut warm = Vec::with_capacity(burst);
            for _ in 0..burst {
                let t = Instant::now();
                black_box(compiler.compile_blocking(&input).expect("renders"));
                warm.push(ms(t.elapsed()));
            }
            let t = Instant::now();
            let out = Command::new(&cue)
                .current_dir(&dir)
                .args(["export", "./webservice"])
                .arg(&file)
                .args(["-e", "nodes", "--out", "json"])
                .output()
                .expect("cue runs");
            let cli = ms(t.elapsed());
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let warm_p50 = median(&mut warm);
            ratios.push(cli / warm_p50);
            warm_all.extend(warm);
            cli_all.push(cli);
        }
        let warm_min = warm_all.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "{:<8} {:>12.2} {:>12.2} {:>12.1} {:>13.1}x",
            name,
            median(&mut warm_all),
            warm_min,
            median(&mut cli_all),
            median(&mut ratios)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
