//! Misuse of `#[derive(Abstraction)]` is a compile error that says what to write instead.
#[test]
fn misuse_is_a_compile_error_that_says_what_to_write() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
