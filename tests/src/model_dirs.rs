//! Model folders for tests: copies of the example versions, renamed.

use std::path::Path;

use anyhow::{ensure, Result};

/// Copies the files of folder `from` into `to` (created).
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// `to` as a copy of version folder `from` under another version name (the
/// same model file: its sha256 in the manifest stays right).
pub fn copy_version(from: &Path, to: &Path, from_version: &str, to_version: &str) -> Result<()> {
    copy_dir(from, to)?;
    let manifest = std::fs::read_to_string(to.join("manifest.toml"))?;
    let edited = manifest.replace(
        &format!("version = \"{from_version}\""),
        &format!("version = \"{to_version}\""),
    );
    ensure!(edited != manifest, "manifest version not found");
    std::fs::write(to.join("manifest.toml"), edited)?;
    Ok(())
}
