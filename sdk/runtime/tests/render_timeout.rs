//! A platform module that does not terminate: renders time out, and the evaluations CUE cannot
//! stop stay bounded. Its own test binary, so that no other test starts goroutines meanwhile.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use cuebe::renderer::{CueRendererOptions, RenderError, RenderInput};
use cuebe::{CueRenderer, ModuleSet, ModuleSource};
use serde_json::json;

fn platform() -> ModuleSource {
    ModuleSource::from_dir(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../cue/platform"),
        "./webservice",
    )
    .expect("cue/platform is readable")
}

fn input(spec: serde_json::Value) -> RenderInput {
    RenderInput {
        instance: cuebe::instance::Instance {
            name: "web".into(),
            namespace: "apps".into(),
            labels: BTreeMap::new(),
            ..Default::default()
        },
        spec,
        ..Default::default()
    }
}

#[test]
fn a_module_that_does_not_terminate_times_out_and_leaks_a_bounded_number_of_evaluations() {
    use cuebe::cue::{MAX_ABANDONED_EVALUATIONS, bridge_goroutines};
    let looping = platform().with_files([(
        "webservice/loop.cue",
        "package webservice\nimport \"list\"\n_spin: [for i in list.Range(0, 100000, 1) for j in list.Range(0, 100000 + len(input.metadata.name), 1) if false {i}]\nnodes: service: object: metadata: annotations: x: \"\\(len(_spin))\"\n",
    )]);
    let limit = Duration::from_millis(800);
    let c = CueRenderer::with_options(
        ModuleSet::single("1.0.0", looping),
        CueRendererOptions {
            eval_timeout: limit,
            evaluators_per_module: 1,
            ..Default::default()
        },
    );
    let goroutines_before = bridge_goroutines();
    // Renders of different inputs (no cache hit). CUE cannot stop an evaluation, so each timed
    // out one keeps running; the first MAX_ABANDONED_EVALUATIONS time out after the limit, every
    // later one is refused at once instead of starting another evaluation that never ends.
    let renders = MAX_ABANDONED_EVALUATIONS + 4;
    for i in 0..renders {
        let started = std::time::Instant::now();
        let err = c
            .render_blocking(&input(
                json!({"image": format!("registry.example.com/web:{i}")}),
            ))
            .unwrap_err();
        let took = started.elapsed();
        let RenderError::Timeout {
            limit: l,
            still_running,
        } = &err
        else {
            panic!("render {i}: {err}")
        };
        assert_eq!(*l, limit);
        assert_eq!(err.reason(), "RenderTimeout");
        assert!(err.to_string().contains("may not terminate"), "{err}");
        if i < MAX_ABANDONED_EVALUATIONS {
            assert!(took >= limit, "render {i} returned after {took:?}");
            assert_eq!(*still_running, i + 1, "render {i}: {err}");
        } else {
            assert!(
                took < limit,
                "render {i} waited {took:?}: it started another evaluation"
            );
            assert_eq!(
                *still_running, MAX_ABANDONED_EVALUATIONS,
                "render {i}: {err}"
            );
            assert!(err.to_string().contains("still running"), "{err}");
        }
    }
    assert_eq!(
        c.cache_stats().abandoned_evaluations,
        MAX_ABANDONED_EVALUATIONS
    );
    // The leak is bounded: one goroutine per abandoned evaluation (plus the idle worker of a
    // handle the module load built), not one per render.
    let grown = bridge_goroutines() - goroutines_before;
    assert!(
        grown <= i64::try_from(MAX_ABANDONED_EVALUATIONS).unwrap() + 1,
        "{renders} timed-out renders left {grown} more goroutines"
    );
}
