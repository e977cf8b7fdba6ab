//! A small filesystem of its own (tmpfs), to fill up: what a full disk does
//! to the spool. Mounting needs root (or CAP_SYS_ADMIN), which the test
//! machines and CI have; without it the test fails and says so.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

pub struct SmallFilesystem {
    dir: tempfile::TempDir,
}

impl SmallFilesystem {
    /// Mounts a tmpfs of `kib` KiB on a new temporary folder.
    pub fn mount(kib: u64) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={kib}k,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()?;
        if !output.status.success() {
            bail!(
                "cannot mount a {kib} KiB tmpfs on {} (the full-disk test needs root): {}",
                dir.path().display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        // Lazy: a file still open elsewhere must not keep the mount around.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
