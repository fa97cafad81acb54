//! The official Python SDK for the interop tests: the venv's interpreter (`UID2_PYTHON`, set by
//! `scripts/lib/python-venv.sh`), the repository root for its scripts, and a scratch folder.

use std::path::PathBuf;

pub fn python() -> String {
    std::env::var("UID2_PYTHON").expect(
        "UID2_PYTHON is not set: run scripts/test.sh, or `source scripts/lib/python-venv.sh` first",
    )
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/interop/<name>`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = repo().join("target").join("interop");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}
