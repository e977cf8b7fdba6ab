//! Where the repository, its venv and its example artifacts are.

use std::path::PathBuf;

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The project's Python (with torch, asyncua, pymodbus), made by
/// `scripts/setup.sh`. Tests fail with this hint rather than skip.
pub fn venv_python() -> anyhow::Result<PathBuf> {
    let python = repo_root().join(".venv/bin/python");
    if python.exists() {
        Ok(python)
    } else {
        anyhow::bail!(
            "{} is missing: run scripts/setup.sh (the README's test command does)",
            python.display()
        )
    }
}

/// Python peer scripts used by the tests.
pub fn peer_script(name: &str) -> PathBuf {
    repo_root().join("tests/peers").join(name)
}
