//! Edition 2021 (B28): builds `tests/edition2021/lib.rs` as a user crate of edition 2021
//! and runs its tests. Its `#[preserve_context]` functions hold borrows that an edition 2021
//! `impl Trait` captures only when the rewrite names them. Like trybuild, the test writes
//! the crate's manifest under the target directory, next to a copy of the workspace's
//! `Cargo.lock` (same versions, no network), and runs a nested `cargo test` there.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const MANIFEST: &str = r#"[package]
name = "contextvars-edition2021"
version = "0.0.0"
edition = "2021"
publish = false

[lib]
path = {lib}

[dependencies]
contextvars = { path = {root} }
tokio = { version = "1.40", features = ["rt", "rt-multi-thread", "macros"] }

[workspace]
"#;

fn project_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("tests")
        .join("edition2021")
}

/// A TOML string holding `path`.
fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

#[test]
fn preserve_context_compiles_and_runs_in_an_edition_2021_crate() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let project = project_dir(&root);
    fs::create_dir_all(&project).unwrap();
    let manifest = MANIFEST
        .replace("{lib}", &toml_path(&root.join("tests/edition2021/lib.rs")))
        .replace("{root}", &toml_path(&root));
    fs::write(project.join("Cargo.toml"), manifest).unwrap();
    if root.join("Cargo.lock").exists() {
        fs::copy(root.join("Cargo.lock"), project.join("Cargo.lock")).unwrap();
    }

    let output = Command::new(env!("CARGO"))
        .arg("test")
        .arg("--manifest-path")
        .arg(project.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(project.join("target"))
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
