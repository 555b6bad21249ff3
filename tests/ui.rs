//! The compile-fail suite (S7): each `tests/ui/<mistake>.rs` makes one mistake, and its
//! reviewed `.stderr` shows the error a user reads, on the user's tokens.
//! Regenerate with `TRYBUILD=overwrite cargo test --test ui`, then read every line.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
