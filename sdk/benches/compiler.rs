//! Compiler benchmarks on the WebService platform module (`cue/platform`).
//!
//! - `cold_module_load`: build the module from its files (what the first render of a digest pays).
//! - `warm_render/<scenario>`: module built, render cache off: a full CUE evaluation and export.
//! - `cached_hit/<scenario>`: the same input again: hashing the input and a cache lookup.
//! - `cue_cli_export/<scenario>`: the baseline, `cue export` of the same module and input by the
//!   official CLI (same version), as a process.
use std::collections::BTreeMap;
use std::hint::black_box;
use std::process::Command;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use cuebe::compiler::{Capabilities, CompileInput, CueCompilerOptions, InstanceMeta};
use cuebe::cue::LoadedModule;
use cuebe::{CueCompiler, ModuleSet, ModuleSource};
use serde_json::json;

fn platform() -> ModuleSource {
    ModuleSource::from_dir(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../cue/platform"),
        "./webservice",
    )
    .expect("cue/platform is readable")
}

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

fn benches(c: &mut Criterion) {
    let module = platform();
    c.bench_function("cold_module_load", |b| {
        b.iter(|| black_box(LoadedModule::load(module.clone(), 1).expect("module loads")))
    });

    let uncached = CueCompiler::with_options(
        ModuleSet::single("1.0.0", module.clone()),
        CueCompilerOptions {
            render_cache_capacity: 0,
            ..Default::default()
        },
    );
    let cached = CueCompiler::new(ModuleSet::single("1.0.0", module.clone()));
    let mut warm = c.benchmark_group("warm_render");
    for (name, input) in scenarios() {
        uncached.compile_blocking(&input).expect("renders");
        warm.bench_function(name, |b| {
            b.iter(|| black_box(uncached.compile_blocking(&input).expect("renders")))
        });
    }
    warm.finish();

    // The CUE evaluation alone (fill + export through the bridge), without cuebe's assembly,
    // validation and hashing: the difference to warm_render is cuebe's own overhead.
    let loaded = LoadedModule::load(module.clone(), 1).expect("module loads");
    let mut bridge = c.benchmark_group("bridge_eval");
    for (name, input) in scenarios() {
        let value = uncached.module_input(&input).expect("input");
        let fills = [cuebe::cue::Fill {
            path: "input",
            value: &value,
        }];
        let exports = [
            cuebe::cue::ExportRequest::validate("input"),
            cuebe::cue::ExportRequest::optional("violations"),
            cuebe::cue::ExportRequest::split("nodes", 2),
        ];
        bridge.bench_function(name, |b| {
            b.iter(|| {
                black_box(
                    loaded
                        .eval(&fills, &exports, Duration::from_secs(10))
                        .expect("evaluates"),
                )
            })
        });
    }
    bridge.finish();

    let mut hit = c.benchmark_group("cached_hit");
    for (name, input) in scenarios() {
        cached.compile_blocking(&input).expect("renders");
        hit.bench_function(name, |b| {
            b.iter(|| black_box(cached.compile_blocking(&input).expect("renders")))
        });
    }
    hit.finish();

    let cue = cuebe_testkit::cue_cli::cue_binary().expect("cue CLI for the baseline");
    let dir = std::env::temp_dir().join(format!("cuebe-bench-{}", std::process::id()));
    for (path, content) in module.files() {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().expect("file has a parent")).expect("mkdir");
        std::fs::write(p, content).expect("write module file");
    }
    let mut cli = c.benchmark_group("cue_cli_export");
    cli.sample_size(20)
        .measurement_time(Duration::from_secs(10));
    for (name, input) in scenarios() {
        let value = uncached.module_input(&input).expect("input");
        let file = dir.join(format!("{name}.json"));
        std::fs::write(
            &file,
            serde_json::to_vec(&json!({"input": value})).expect("json"),
        )
        .expect("write input");
        cli.bench_function(name, |b| {
            b.iter(|| {
                let out = Command::new(&cue)
                    .current_dir(&dir)
                    .args(["export", "./webservice"])
                    .arg(&file)
                    .args(["-e", "nodes", "--out", "json"])
                    .output()
                    .expect("cue runs");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                black_box(out.stdout)
            })
        });
    }
    cli.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(compiler, benches);
criterion_main!(compiler);
