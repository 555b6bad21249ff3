//! Misuse of `#[contextvars::main]` and `#[contextvars::test]`, caught at compile time: each
//! `tests/ui/hooks/<mistake>.rs` makes one mistake, and its reviewed `.stderr` shows the one
//! error a user reads, on the offending tokens. Without `--cfg tokio_unstable`, a correct use
//! is one error naming the flag (`tests/ui/hooks/no-cfg/`): the workspace builds with the cfg
//! (`.cargo/config.toml`), so CI runs that case in a user's crate of its own (`.ci/run`).
//! Regenerate with `TRYBUILD=overwrite cargo test --all-features --test test_hooks_ui`, then
//! read every line.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/hooks/*.rs");
}
