//! Golden tests of the module: every file in `tests/golden/cases` is rendered and its Graph,
//! violations or error compared with `tests/golden/snapshots` (written on the first run; review
//! them, then commit them).
use cuebe::Abstraction;
use cuebe_testkit::golden::GoldenSuite;
use __crate_ident__::__Kind__;

#[test]
fn golden_cases() -> Result<(), Box<dyn std::error::Error>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
    let modules = __Kind__::modules();
    let module = modules.resolve(None)?.source.as_ref().clone();
    let count = GoldenSuite::new(module, format!("{dir}/cases"))
        .snapshots(format!("{dir}/snapshots"))
        .run()?;
    assert_eq!(count, 2, "every golden case ran");
    Ok(())
}
