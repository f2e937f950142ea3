//! Warm render against the `cue` CLI, interleaved: `cargo bench -p cuebe --bench versus_cli`.
//!
//! criterion (`benches/renderer.rs`) runs the warm renders and the CLI baseline minutes apart; on
//! a shared machine whose speed drifts by up to 2x over minutes, the ratio of two such medians
//! says as much about the drift as about cuebe. Here every round times a burst of warm renders
//! and one CLI export of the same scenario back to back, so each round's ratio is taken under the
//! same conditions; the figure reported is the median of the per-round ratios.
//!
//! Environment: `CUEBE_BENCH_ROUNDS` (default 30), `CUEBE_BENCH_BURST` (warm renders per round,
//! default 20).
#![allow(clippy::print_stdout)] // a bench binary prints its figures
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{CliBaseline, platform, scenarios};
use cuebe::renderer::CueRendererOptions;
use cuebe::{CueRenderer, ModuleSet};

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
    let module = platform();
    let renderer = CueRenderer::with_options(
        ModuleSet::single("1.0.0", module.clone()),
        CueRendererOptions {
            render_cache_capacity: 0,
            ..Default::default()
        },
    );
    let baseline = CliBaseline::new(&module, &renderer, "versus");

    println!(
        "{rounds} rounds; each: {burst} warm renders, then one `cue export`, per scenario (ms)"
    );
    println!(
        "{:<8} {:>12} {:>12} {:>12} {:>14}",
        "scenario", "warm p50", "warm min", "CLI p50", "ratio (p50)"
    );
    for (name, input) in scenarios() {
        // Warm up: module built, CPU caches and the Go heap settled.
        for _ in 0..burst {
            black_box(renderer.render_blocking(&input).expect("renders"));
        }
        let mut warm_all = Vec::new();
        let mut cli_all = Vec::new();
        let mut ratios = Vec::new();
        for _ in 0..rounds {
            let mut warm = Vec::with_capacity(burst);
            for _ in 0..burst {
                let t = Instant::now();
                black_box(renderer.render_blocking(&input).expect("renders"));
                warm.push(ms(t.elapsed()));
            }
            let t = Instant::now();
            black_box(baseline.export(name));
            let cli = ms(t.elapsed());
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
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
