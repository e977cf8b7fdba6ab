//! A real MLServer (1.7.1, with its MLflow runtime, from the project's venv)
//! serving an IronBridge model version over the Open Inference Protocol, on
//! free loopback ports with its files under a temp dir; tests stop and
//! restart it to simulate an engine outage.
//!
//! The version folder is turned into an MLflow pytorch model by
//! `models/training/mlflow_model.py` (the same function the registry uses),
//! once per version folder while a server uses it: the conversion imports
//! torch and MLflow, which takes seconds.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::paths::{repo_root, venv_python};
use crate::ports::free_port;
use crate::process::{wait_until_answers, ChildGuard};

// MLServer's own startup (imports, model load) takes ~3 s alone; a loaded
// two-core machine stretches that.
const STARTUP_DEADLINE: Duration = Duration::from_secs(120);
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// The MLflow models made in this test binary, by version folder. Weak: a
/// model's folder is removed when the last server using it is dropped (a
/// static is never dropped, so a strong reference here left every folder
/// in /tmp after each run); a server started while another still holds it
/// shares it.
type Converted = tokio::sync::Mutex<HashMap<PathBuf, Weak<tempfile::TempDir>>>;
static CONVERTED: OnceLock<Converted> = OnceLock::new();

/// An MLflow pytorch model made from `version_dir` (manifest.toml + model
/// file), made once for the servers that use it at the same time.
pub async fn mlflow_model(version_dir: &Path) -> Result<Arc<tempfile::TempDir>> {
    let mut converted = CONVERTED.get_or_init(Default::default).lock().await;
    if let Some(dir) = converted.get(version_dir).and_then(Weak::upgrade) {
        return Ok(dir);
    }
    let dir = Arc::new(tempfile::tempdir()?);
    let out = tokio::process::Command::new(venv_python()?)
        .arg(repo_root().join("models/training/mlflow_model.py"))
        .arg(version_dir)
        .arg(dir.path().join("model"))
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "mlflow_model.py {} failed: {}",
            version_dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    converted.insert(version_dir.to_path_buf(), Arc::downgrade(&dir));
    Ok(dir)
}

pub struct MlServer {
    http_port: u16,
    /// Declared before `dir`: fields drop in order, so the server is
    /// stopped before its folder goes (a server still running wrote into
    /// the removed folder and left it in /tmp).
    child: Option<ChildGuard>,
    /// Holds `model-settings.json`, `settings.json` and `mlserver.log`.
    dir: tempfile::TempDir,
    model: String,
    http: reqwest::Client,
    /// The converted model's folder, when the model is not a registry's.
    _mlflow: Option<Arc<tempfile::TempDir>>,
    /// `MLFLOW_TRACKING_URI`, when the model comes from a registry.
    tracking_uri: Option<String>,
}

impl MlServer {
    /// Serves `version_dir` as model `name` and waits until
    /// `/v2/models/<name>/ready` answers 200.
    pub async fn start(version_dir: &Path, name: &str) -> Result<Self> {
        let mlflow = mlflow_model(version_dir).await?;
        let uri = mlflow.path().join("model").display().to_string();
        Self::serve(&uri, name, Some(mlflow), None).await
    }

    /// Serves `model_uri` of the MLflow registry at `tracking_uri` (e.g.
    /// `models:/bearing-wear@champion`: what the alias points to, fetched by
    /// MLflow's own client at load) as model `name`.
    pub async fn start_from_registry(
        tracking_uri: &str,
        model_uri: &str,
        name: &str,
    ) -> Result<Self> {
        Self::serve(model_uri, name, None, Some(tracking_uri.to_string())).await
    }

    async fn serve(
        uri: &str,
        name: &str,
        mlflow: Option<Arc<tempfile::TempDir>>,
        tracking_uri: Option<String>,
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("model-settings.json"),
            serde_json::json!({
                "name": name,
                "implementation": "mlserver_mlflow.MLflowRuntime",
                "parameters": { "uri": uri },
            })
            .to_string(),
        )?;
        let http_port = free_port()?;
        std::fs::write(
            dir.path().join("settings.json"),
            serde_json::json!({
                "http_port": http_port,
                "grpc_port": free_port()?,
                "metrics_port": free_port()?,
                // Inference in the main process: one process to stop.
                "parallel_workers": 0,
                "host": "127.0.0.1",
            })
            .to_string(),
        )?;
        let mut server = Self {
            http_port,
            dir,
            model: name.to_string(),
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            _mlflow: mlflow,
            tracking_uri,
        };
        server.launch().await?;
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`: the engine's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server (SIGTERM, then SIGKILL after a deadline); its port
    /// then refuses connections.
    pub async fn stop(&mut self) -> Result<()> {
        match self.child.take() {
            Some(child) => child.terminate(STOP_DEADLINE).await,
            None => Ok(()),
        }
    }

    /// Starts the server again on the same port.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.launch().await
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mlserver.log")
    }

    fn log_file(&self) -> Result<File> {
        Ok(OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?)
    }

    async fn launch(&mut self) -> Result<()> {
        let python = venv_python()?;
        let bin = python
            .parent()
            .context("the venv's python has no folder")?
            .to_path_buf();
        // The `mlserver` script's shebang and its workers want the venv first
        // on PATH.
        let path = match std::env::var_os("PATH") {
            Some(path) => {
                let mut dirs = vec![bin.clone()];
                dirs.extend(std::env::split_paths(&path));
                std::env::join_paths(dirs)?
            }
            None => bin.clone().into_os_string(),
        };
        let mut cmd = Command::new(bin.join("mlserver"));
        cmd.arg("start")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .env("PATH", path)
            // Its temporary files (a registry model's artifacts fetched at
            // load, among others) in its own folder, removed with it.
            .env("TMPDIR", self.dir.path())
            .envs(self.tracking_uri.iter().map(|u| ("MLFLOW_TRACKING_URI", u)))
            .stdout(self.log_file()?)
            .stderr(self.log_file()?);
        let mut child = ChildGuard::spawn("mlserver", &mut cmd)
            .context("mlserver not installed? run scripts/setup.sh")?;
        let ready = format!("{}/v2/models/{}/ready", self.url(), self.model);
        wait_until_answers(
            "mlserver",
            &self.http,
            &ready,
            STARTUP_DEADLINE,
            Duration::from_millis(100),
            || child.try_exited(),
            || self.log(),
        )
        .await?;
        self.child = Some(child);
        Ok(())
    }
}
