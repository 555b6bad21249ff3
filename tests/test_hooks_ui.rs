//! Misuse of `#[contextvars::main]` and `#[contextvars::test]`, caught at compile time: each
//! `tests/ui/hooks/<mistake>.rs` makes one mistake, and its reviewed `.stderr` shows the one
//! error a user reads, on the offending tokens. Without `--cfg tokio_unstable`, a correct use
//! is one error naming the flag (`tests/ui/hooks/no-cfg/`).
//! Regenerate with `TRYBUILD=overwrite cargo test --test test_hooks_ui`, then read every line.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/hooks/*.rs");
    #[cfg(not(tokio_unstable))]
    cases.compile_fail("tests/ui/hooks/no-cfg/*.rs");
}
