//! Shared by the model benches (a folder, so cargo does not take it for a
//! bench of its own).

use std::path::{Path, PathBuf};

/// A model folder given on the command line: as given when it exists, else
/// from the workspace root (cargo runs benches in the package's folder,
/// and the paths in BENCHMARKS.md are the repository's).
pub fn resolve(path: &Path) -> PathBuf {
    if path.is_absolute() || path.exists() {
        return path.to_path_buf();
    }
    let from_workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    if from_workspace.exists() {
        from_workspace
    } else {
        path.to_path_buf()
    }
}
