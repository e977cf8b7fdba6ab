//! The server's `rejected/` certificate folder, bounded. Every client with a
//! certificate the server does not trust leaves a file there (for an
//! administrator to move to `trusted/`); anything on the plant network can
//! connect, so without a bound a scanner fills the disk. Every
//! [`SWEEP_PERIOD`] the oldest files beyond `rejected_certs_max` files or
//! `rejected_certs_max_bytes` bytes are deleted, and the deletion is logged.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// How often the folder is checked. Between checks it can grow by what
/// handshakes manage in this time (a few kilobytes each).
pub const SWEEP_PERIOD: Duration = Duration::from_secs(5);

/// The limits of the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectedLimits {
    pub max_files: usize,
    pub max_bytes: u64,
}

/// Deletes the oldest files of `dir` until it is within `limits`; returns
/// how many were deleted. A folder that does not exist is within limits.
pub fn sweep(dir: &Path, limits: RejectedLimits) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            files.push((modified, meta.len(), entry.path()));
        }
    }
    // Newest first: what is kept is what an administrator most likely
    // looks for (the client that just failed to connect).
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut kept_bytes = 0u64;
    let mut deleted = 0;
    for (i, (_, len, path)) in files.iter().enumerate() {
        if i < limits.max_files && kept_bytes + len <= limits.max_bytes {
            kept_bytes += len;
            continue;
        }
        match std::fs::remove_file(path) {
            Ok(()) => deleted += 1,
            // Moved to trusted/ by an administrator meanwhile: fine.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// Sweeps `dir` every [`SWEEP_PERIOD`] until cancelled.
pub async fn keep_bounded(dir: PathBuf, limits: RejectedLimits, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_PERIOD);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let target = dir.clone();
        match tokio::task::spawn_blocking(move || sweep(&target, limits)).await {
            Ok(Ok(0)) => failing = false,
            Ok(Ok(n)) => {
                failing = false;
                tracing::warn!(
                    deleted = n,
                    dir = %dir.display(),
                    max_files = limits.max_files,
                    max_bytes = limits.max_bytes,
                    "rejected client certificates beyond the limit deleted (oldest first)"
                );
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(dir = %dir.display(), "cannot bound the rejected certificates: {e}");
                }
                failing = true;
            }
            Err(e) => tracing::error!("rejected-certificate sweep panicked: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_files_go_first_until_both_limits_hold() {
        let dir = tempfile::tempdir().expect("temp dir");
        for i in 0..10u64 {
            let path = dir.path().join(format!("cert-{i}.der"));
            std::fs::write(&path, vec![0u8; 100]).expect("write");
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(t))
                .expect("mtime");
        }
        let limits = RejectedLimits {
            max_files: 6,
            max_bytes: 450,
        };
        assert_eq!(sweep(dir.path(), limits).expect("sweep"), 6);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["cert-6.der", "cert-7.der", "cert-8.der", "cert-9.der"]
        );
        assert_eq!(sweep(dir.path(), limits).expect("sweep"), 0);
        assert_eq!(sweep(&dir.path().join("absent"), limits).expect("sweep"), 0);
    }
}
