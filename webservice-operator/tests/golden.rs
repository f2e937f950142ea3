//! Golden tests of the embedded platform module: every file in `tests/golden/cases` is rendered
//! and its Graph, violations or error compared with `tests/golden/snapshots`.
use cuebe_testkit::golden::GoldenSuite;

#[test]
fn platform_module_golden_cases() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
    let count = GoldenSuite::new(webservice_operator::platform_module(), format!("{dir}/cases"))
        .snapshots(format!("{dir}/snapshots"))
        .run()
        .expect("golden cases run");
    assert!(count >= 17, "expected every golden case to run, ran {count}");
}
