//! Misuse of `#[derive(Abstraction)]` is a compile error that says what to write instead.
#[test]
fn misuse_is_a_compile_error_that_says_what_to_write() {
    // trybuild compiles each fixture in a project of its own under the target directory
    // (`<target>/tests/trybuild/cuebe-macros`), and a relative `module` path is resolved from
    // that project's manifest: the fixtures that reach the workspace's CUE module name it as
    // `../../../../cue/platform`. That leads to the module only from the workspace's own
    // `target/`, so trybuild builds there whatever `CARGO_TARGET_DIR` says (a target directory
    // elsewhere made two fixtures fail with "cannot read CUE module directory").
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the macros crate is inside the workspace");
    // SAFETY: no other thread reads or writes the environment meanwhile: this binary has one
    // test, and trybuild starts its cargo processes after this line.
    unsafe { std::env::set_var("CARGO_TARGET_DIR", workspace.join("target")) };
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
