//! Golden tests of the module: every file in `tests/golden/cases` is read as a `__Kind__` (unknown
//! fields refused, as the API server would), rendered as the controller renders it, and its
//! Graph, violations or error compared with `tests/golden/snapshots` (written on the first run;
//! review them, then commit them).
use cuebe_testkit::golden::GoldenSuite;
use __crate_ident__::__Kind__;

#[test]
fn golden_cases() -> Result<(), Box<dyn std::error::Error>> {
    let count = GoldenSuite::for_abstraction::<__Kind__>().run()?;
    assert_eq!(count, 2, "every golden case ran");
    Ok(())
}

/// The Rust type (the CRD: admission, `kubectl explain`) and the module's CUE `#Spec` describe the
/// same spec: fields, types, required-ness, bounds and the defaults the CRD's descriptions show.
#[test]
fn crd_and_cue_schema_agree() {
    if let Err(e) = cuebe_testkit::spec::check_schema_agrees::<__Kind__>() {
        panic!("{e}");
    }
}
