//! The `ironbridge` binary as a child process, for what only a process can
//! show: kill -9, restarts, the exit of `run`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::ports::free_port;
use crate::process::ChildGuard;

/// The `ironbridge` binary built beside the running test (cargo builds it
/// for the gateway's own integration tests; `cargo build -p ironbridge`
/// otherwise).
pub fn gateway_binary() -> Result<PathBuf> {
    // <target>/<profile>/deps/<test binary> -> <target>/<profile>/ironbridge
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target folder")?;
    let bin = profile_dir.join("ironbridge");
    if !bin.exists() {
        bail!(
            "{} is not built: run `cargo build -p ironbridge` (cargo test --workspace builds it)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A configuration for a gateway that only moves data: an OPC UA server on
/// a free port (anonymous: no test here logs in), the health endpoint on
/// a port of the system's choosing, `influx` and `machines` as given.
pub fn data_only_config(pki_dir: &Path, influx: &str, machines: &str) -> Result<String> {
    Ok(format!(
        r#"
[opcua]
port = {port}
pki_dir = "{pki}"
allow_anonymous = true

[http]
address = "127.0.0.1:0"

[influx]
{influx}
{machines}
"#,
        port = free_port()?,
        pki = pki_dir.display(),
    ))
}

/// A running `ironbridge run --config FILE`, its output appended to a log
/// file (shown by [`GatewayProcess::log`]).
pub struct GatewayProcess {
    child: ChildGuard,
    log_path: PathBuf,
}

impl GatewayProcess {
    pub fn spawn(config: &Path, log_path: &Path) -> Result<Self> {
        let log = File::options().create(true).append(true).open(log_path)?;
        let child = ChildGuard::spawn(
            "ironbridge",
            Command::new(gateway_binary()?)
                .args(["run", "--config"])
                .arg(config)
                .env("RUST_LOG", "info,ironbridge_connectors=debug")
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log)),
        )?;
        Ok(Self {
            child,
            log_path: log_path.to_path_buf(),
        })
    }

    /// kill -9: no signal handler, no final flush.
    pub fn kill(mut self) {
        self.child.stop();
    }

    /// SIGTERM, then up to `deadline` for a graceful stop.
    pub async fn terminate(self, deadline: Duration) -> Result<()> {
        self.child.terminate(deadline).await
    }

    pub fn has_exited(&mut self) -> Result<bool> {
        Ok(self.child.try_exited()?.is_some())
    }

    /// Everything the gateway printed so far (all its lives).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}
