//! A real Prometheus (Debian's `prometheus`) on a free loopback port that
//! scrapes given targets every second, and answers PromQL.

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::ports::free_port;
use crate::process::ChildGuard;

const BINARY: &str = "prometheus";
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

pub struct Prometheus {
    port: u16,
    /// Declared before `dir`: fields drop in order, so the server is
    /// stopped before its folder goes (a server still running wrote into
    /// the removed folder and left it in /tmp).
    _child: ChildGuard,
    /// Holds `prometheus.yml`, `data/` and `prometheus.log`.
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts a server scraping `targets` (`host:port`, path `/metrics`)
    /// every second, and waits until it is ready.
    pub async fn scraping(targets: &[SocketAddr]) -> Result<Self> {
        let port = free_port()?;
        let dir = tempfile::tempdir()?;
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: ironbridge\n    static_configs:\n      - targets: [{list}]\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let log = |dir: &tempfile::TempDir| -> Result<File> {
            Ok(OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join("prometheus.log"))?)
        };
        let mut cmd = Command::new(BINARY);
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log(&dir)?)
            .stderr(log(&dir)?);
        let mut child = ChildGuard::spawn(BINARY, &mut cmd)
            .with_context(|| format!("{BINARY} not installed? run scripts/setup.sh"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let ready = format!("http://127.0.0.1:{port}/-/ready");
        let deadline = tokio::time::Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(status) = child.try_exited()? {
                bail!(
                    "{BINARY} exited with {status}:\n{}",
                    std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
                );
            }
            if let Ok(response) = http.get(&ready).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{BINARY} not ready within {STARTUP_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            port,
            dir,
            _child: child,
            http,
        })
    }

    /// `http://127.0.0.1:<port>`, for the HTTP API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The instant vector of a PromQL query: `(labels, value)` per series.
    pub async fn query(&self, promql: &str) -> Result<Vec<(serde_json::Value, f64)>> {
        let body: serde_json::Value = self
            .http
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", promql)])
            .send()
            .await?
            .json()
            .await?;
        if body["status"] != "success" {
            bail!("query {promql:?}: {body}");
        }
        let mut out = Vec::new();
        for series in body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let value = series["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .context("sample value")?;
            out.push((series["metric"].clone(), value));
        }
        Ok(out)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }
}
