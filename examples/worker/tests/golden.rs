//! Golden tests of the Worker module: every file in `tests/golden/cases` is read as a `Worker`,
//! rendered, and its Graph, violations, error or rejection compared with `tests/golden/snapshots`.

use cuebe_testkit::golden::GoldenSuite;
use worker_operator::Worker;

#[test]
fn worker_module_golden_cases() {
    let count = GoldenSuite::for_abstraction::<Worker>()
        .run()
        .expect("golden cases run");
    assert_eq!(count, 10, "every golden case ran");
}

/// The `Worker` Rust type (its CRD) and the module's CUE `#WorkerSpec` describe the same spec.
#[test]
fn crd_and_cue_schema_agree() {
    if let Err(e) = cuebe_testkit::spec::check_schema_agrees::<Worker>() {
        panic!("{e}");
    }
}
