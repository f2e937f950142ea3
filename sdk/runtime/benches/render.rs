//! Renderer benchmarks on the WebService platform module (`cue/platform`).
//!
//! - `cold_module_load`: build the module from its files (what the first render of a digest pays).
//! - `warm_render/<scenario>`: module built, render cache off: a full CUE evaluation and export.
//! - `cached_hit/<scenario>`: the same input again: hashing the input and a cache lookup.
//! - `cue_cli_export/<scenario>`: the baseline, `cue export` of the same module and input by the
//!   official CLI (same version), as a process.
mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{CliBaseline, platform, scenarios};
use criterion::{Criterion, criterion_group, criterion_main};
use cuebe::cue::LoadedModule;
use cuebe::renderer::CueRendererOptions;
use cuebe::{CueRenderer, ModuleSet};

fn benches(c: &mut Criterion) {
    let module = platform();
    c.bench_function("cold_module_load", |b| {
        b.iter(|| black_box(LoadedModule::load(module.module_files(), 1).expect("module loads")))
    });

    let uncached = CueRenderer::with_options(
        ModuleSet::single("1.0.0", module.clone()),
        CueRendererOptions {
            render_cache_capacity: 0,
            ..Default::default()
        },
    );
    let cached = CueRenderer::new(ModuleSet::single("1.0.0", module.clone()));
    let mut warm = c.benchmark_group("warm_render");
    for (name, input) in scenarios() {
        uncached.render_blocking(&input).expect("renders");
        warm.bench_function(name, |b| {
            b.iter(|| black_box(uncached.render_blocking(&input).expect("renders")))
        });
    }
    warm.finish();

    // The CUE evaluation alone (fill + export through the bridge), without cuebe's assembly,
    // validation and hashing: the difference to warm_render is cuebe's own overhead.
    let loaded = LoadedModule::load(module.module_files(), 1).expect("module loads");
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
        cached.render_blocking(&input).expect("renders");
        hit.bench_function(name, |b| {
            b.iter(|| black_box(cached.render_blocking(&input).expect("renders")))
        });
    }
    hit.finish();

    let baseline = CliBaseline::new(&module, &uncached, "bench");
    let mut cli = c.benchmark_group("cue_cli_export");
    cli.sample_size(20)
        .measurement_time(Duration::from_secs(10));
    for (name, _) in scenarios() {
        cli.bench_function(name, |b| b.iter(|| black_box(baseline.export(name))));
    }
    cli.finish();
}

criterion_group!(render, benches);
criterion_main!(render);
