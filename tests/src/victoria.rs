//! A real VictoriaMetrics server (Debian's `victoria-metrics`, which accepts
//! the InfluxDB v2 write API) on a free loopback port, with its data under a
//! temp dir, that tests can stop and restart to simulate outages.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::ports::free_port;
use crate::process::{wait_until_answers, ChildGuard};

const BINARY: &str = "victoria-metrics";
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// One series from `/api/v1/export`: labels (the metric name under
/// `__name__`), values, and timestamps in milliseconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ExportedSeries {
    pub metric: BTreeMap<String, String>,
    pub values: Vec<f64>,
    pub timestamps: Vec<i64>,
}

impl ExportedSeries {
    pub fn name(&self) -> &str {
        self.metric.get("__name__").map_or("", String::as_str)
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        self.metric.get(name).map(String::as_str)
    }

    /// `(timestamp ms, value)` pairs in time order.
    pub fn samples(&self) -> Vec<(i64, f64)> {
        let mut samples: Vec<(i64, f64)> = self
            .timestamps
            .iter()
            .copied()
            .zip(self.values.iter().copied())
            .collect();
        samples.sort_by_key(|&(t, _)| t);
        samples
    }
}

pub struct VictoriaMetrics {
    port: u16,
    /// Declared before `dir`: fields drop in order, so the server is
    /// stopped before its folder goes (a server still running wrote into
    /// the removed folder and left it in /tmp).
    child: Option<ChildGuard>,
    /// Holds `data/` (the storage) and `victoria-metrics.log`.
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
    http: reqwest::Client,
}

impl VictoriaMetrics {
    /// Starts a server and waits until `/health` answers.
    pub async fn start() -> Result<Self> {
        Self::start_with_args(&[]).await
    }

    /// Like [`VictoriaMetrics::start`] with extra command-line flags (e.g.
    /// `-influx.maxLineSize=200`), kept across restarts.
    pub async fn start_with_args(extra_args: &[&str]) -> Result<Self> {
        let mut server = Self {
            port: free_port()?,
            dir: tempfile::tempdir()?,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        };
        server.launch().await?;
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`: the URL for an InfluxDB v2 client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server gracefully (SIGTERM, so everything it acknowledged is
    /// on disk), falling back to SIGKILL after a deadline. The port is then
    /// closed: clients get "connection refused".
    pub async fn stop(&mut self) -> Result<()> {
        match self.child.take() {
            Some(child) => child.terminate(STOP_DEADLINE).await,
            None => Ok(()),
        }
    }

    /// Starts the server again on the same port with the same data.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.launch().await
    }

    /// Makes recently written data visible to reads (`/internal/force_flush`).
    pub async fn force_flush(&self) -> Result<()> {
        let response = self
            .http
            .get(format!("{}/internal/force_flush", self.url()))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("force_flush answered {}", response.status());
        }
        Ok(())
    }

    /// All samples of the series matching `selector` (e.g.
    /// `{__name__=~"process_.*"}`), sorted by name and labels. Flushes first,
    /// so data acknowledged before the call is included.
    pub async fn export(&self, selector: &str) -> Result<Vec<ExportedSeries>> {
        self.force_flush().await?;
        let response = self
            .http
            .post(format!("{}/api/v1/export", self.url()))
            .form(&[("match[]", selector)])
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("export of {selector} answered {status}: {text}");
        }
        let mut series = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str::<ExportedSeries>(line)
                    .with_context(|| format!("export line {line:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        series.sort_by(|a, b| a.metric.cmp(&b.metric));
        Ok(series)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("victoria-metrics.log")
    }

    fn log_file(&self) -> Result<File> {
        Ok(OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?)
    }

    async fn launch(&mut self) -> Result<()> {
        let mut cmd = Command::new(BINARY);
        cmd.arg(format!("-httpListenAddr={}", self.addr()))
            .arg(format!(
                "-storageDataPath={}",
                self.dir.path().join("data").display()
            ))
            // Tests write timestamps far in the past; the default retention
            // (one month) would silently drop them.
            .arg("-retentionPeriod=100y")
            .args(&self.extra_args)
            .stdout(self.log_file()?)
            .stderr(self.log_file()?);
        let mut child = ChildGuard::spawn(BINARY, &mut cmd)
            .with_context(|| format!("{BINARY} not installed? run scripts/setup.sh"))?;

        let health = format!("{}/health", self.url());
        wait_until_answers(
            BINARY,
            &self.http,
            &health,
            STARTUP_DEADLINE,
            Duration::from_millis(50),
            || child.try_exited(),
            || self.log(),
        )
        .await?;
        self.child = Some(child);
        Ok(())
    }
}
