//! Edition 2021 (B28): builds and tests the user crate in `tests/edition2021/`, whose
//! `#[preserve_context]` functions hold borrows that an edition 2021 `impl Trait` captures
//! only when the rewrite names them. Runs a nested `cargo test` in its own target directory,
//! as trybuild does.

use std::path::PathBuf;
use std::process::Command;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
            PathBuf::from,
        )
        .join("tests")
        .join("edition2021")
}

#[test]
fn preserve_context_compiles_and_runs_in_an_edition_2021_crate() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/edition2021/Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args(["test", "--locked", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir())
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the edition 2021 crate failed:\n{stderr}\n{stdout}"
    );
    assert!(
        stdout.contains("test result: ok. 2 passed"),
        "its tests did not run:\n{stdout}"
    );
}
