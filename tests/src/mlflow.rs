//! A real MLflow tracking server with its Model Registry (the venv's
//! `mlflow server`: sqlite backend and a local artifact store under a temp
//! dir, on a free loopback port), that tests publish model versions to
//! with `models/training/publish_to_mlflow.py` and can stop to simulate an
//! outage.
//!
//! `mlflow server` starts uvicorn and a job runner as its own children, so
//! the server runs in its own process group and is stopped as a group: no
//! worker outlives the test holding the port.

use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::paths::{repo_root, venv_python};
use crate::ports::free_port;
use crate::process::wait_until_answers;

/// MLflow imports a lot; on a busy 2-core machine its start takes ~6-30 s.
const STARTUP_DEADLINE: Duration = Duration::from_secs(120);
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// What `publish_to_mlflow.py` printed: the registered version.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PublishedVersion {
    pub name: String,
    /// The registry's version number ("1", "2", ...).
    pub version: String,
    pub source: String,
    pub run_id: String,
}

/// How to publish a version folder.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishOptions<'a> {
    /// Point this alias at the new version.
    pub alias: Option<&'a str>,
    /// Also log the MLflow pytorch model (`model/`); slower.
    pub serving_flavor: bool,
    /// Publish even if the model file does not match the manifest.
    pub unchecked: bool,
}

pub struct MlflowServer {
    port: u16,
    /// Holds `mlflow.db`, `artifacts/` and `mlflow.log`.
    dir: tempfile::TempDir,
    child: Option<Child>,
    http: reqwest::Client,
}

impl MlflowServer {
    /// Starts a server and waits until `/health` answers.
    pub async fn start() -> Result<Self> {
        let mut server = Self {
            port: free_port()?,
            dir: tempfile::tempdir()?,
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        };
        server.launch().await?;
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`: the tracking URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Publishes the version folder `folder` (manifest.toml + model file).
    pub async fn publish(
        &self,
        folder: &Path,
        options: PublishOptions<'_>,
    ) -> Result<PublishedVersion> {
        let mut cmd = tokio::process::Command::new(venv_python()?);
        cmd.arg(repo_root().join("models/training/publish_to_mlflow.py"))
            .arg(folder)
            .args(["--mlflow", &self.url()]);
        if let Some(alias) = options.alias {
            cmd.args(["--alias", alias]);
        }
        if !options.serving_flavor {
            cmd.arg("--no-serving-flavor");
        }
        if options.unchecked {
            cmd.arg("--unchecked");
        }
        let out = cmd.output().await?;
        if !out.status.success() {
            bail!(
                "publish_to_mlflow.py {} failed: {}",
                folder.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The JSON is the last line (MLflow may print links before it).
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        serde_json::from_str(last).with_context(|| {
            format!(
                "publish_to_mlflow.py printed {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Points `alias` of registered model `name` at `version` (the REST
    /// call MLflow's UI and client make).
    pub async fn set_alias(&self, name: &str, alias: &str, version: &str) -> Result<()> {
        let response = self
            .http
            .post(format!(
                "{}/api/2.0/mlflow/registered-models/alias",
                self.url()
            ))
            .json(&serde_json::json!({"name": name, "alias": alias, "version": version}))
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "setting {name}@{alias} answered {status}: {}",
                response.text().await?
            );
        }
        Ok(())
    }

    /// The registry's answer for `name`@`alias` (the gateway's lookup).
    pub async fn alias(&self, name: &str, alias: &str) -> Result<serde_json::Value> {
        let response = self
            .http
            .get(format!(
                "{}/api/2.0/mlflow/registered-models/alias",
                self.url()
            ))
            .query(&[("name", name), ("alias", alias)])
            .send()
            .await?;
        Ok(response.json().await?)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server and its workers (SIGTERM to the group, SIGKILL
    /// after a deadline): its port then refuses connections.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal_group(child.id(), "-TERM");
        let until = tokio::time::Instant::now() + STOP_DEADLINE;
        while child.try_wait()?.is_none() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        signal_group(child.id(), "-KILL");
        let _ = child.wait();
        Ok(())
    }

    /// Starts the server again on the same port with the same data.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.launch().await
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mlflow.log")
    }

    fn log_file(&self) -> Result<File> {
        Ok(OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?)
    }

    async fn launch(&mut self) -> Result<()> {
        let mut cmd = Command::new(venv_python()?);
        cmd.args(["-m", "mlflow", "server"])
            .arg("--backend-store-uri")
            .arg(format!(
                "sqlite:///{}",
                self.dir.path().join("mlflow.db").display()
            ))
            .arg("--artifacts-destination")
            .arg(self.dir.path().join("artifacts"))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--workers", "1"])
            // Its temporary files (MLflow's `db_init_lock-<hash>` for each
            // new database, one per server) in its own folder, removed with
            // it, instead of left in /tmp by every run.
            .env("TMPDIR", self.dir.path())
            .stdin(Stdio::null())
            .stdout(self.log_file()?)
            .stderr(self.log_file()?)
            // Its own group, so its workers are stopped with it.
            .process_group(0);
        let child = cmd
            .spawn()
            .context("cannot start mlflow server (run scripts/setup.sh)")?;
        self.child = Some(child);

        let health = format!("{}/health", self.url());
        let log_path = self.log_path();
        let child = &mut self.child;
        let ready = wait_until_answers(
            "mlflow server",
            &self.http,
            &health,
            STARTUP_DEADLINE,
            Duration::from_millis(200),
            || Ok(child.as_mut().and_then(|c| c.try_wait().ok().flatten())),
            || std::fs::read_to_string(&log_path).unwrap_or_default(),
        )
        .await;
        // A server that exited has no group left to stop.
        if self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
        {
            self.child = None;
        }
        ready
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(child.id(), "-KILL");
            let _ = child.wait();
        }
    }
}

/// Sends `signal` to the process group led by `pid` (the server we started).
fn signal_group(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
