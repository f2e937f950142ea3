//! Golden tests of the Worker module: every file in `tests/golden/cases` is rendered and its
//! Graph, violations or error compared with `tests/golden/snapshots`.
#![allow(clippy::unwrap_used)]

use cuebe::Abstraction;
use cuebe_testkit::golden::GoldenSuite;
use worker_operator::Worker;

#[test]
fn worker_module_golden_cases() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
    let modules = Worker::modules();
    let module = modules.resolve(None).unwrap().source.as_ref().clone();
    let count = GoldenSuite::new(module, format!("{dir}/cases"))
        .snapshots(format!("{dir}/snapshots"))
        .run()
        .expect("golden cases run");
    assert_eq!(count, 10, "every golden case ran");
}
