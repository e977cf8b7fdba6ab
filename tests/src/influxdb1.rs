//! A real InfluxDB 1.x server (Debian's `influxdb` package, `influxd` 1.6)
//! on free loopback ports, with its data under a temp dir, authentication on
//! and one administrator, that tests can stop and restart to simulate
//! outages and query in InfluxQL.

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::ports::free_port;
use crate::process::{wait_until_answers, ChildGuard};

const BINARY: &str = "influxd";
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// The administrator every server starts with.
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-password";

pub struct InfluxDb1 {
    http_port: u16,
    /// The meta service's port (1.x binds one even when alone).
    rpc_port: u16,
    /// Declared before `dir`: fields drop in order, so the server is
    /// stopped before its folder goes (a server still running wrote into
    /// the removed folder and left it in /tmp).
    child: Option<ChildGuard>,
    /// Holds `influxdb.conf`, `meta/`, `data/`, `wal/` and `influxd.log`.
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl InfluxDb1 {
    /// Starts a server with authentication on, creates the administrator
    /// ([`ADMIN_USER`]) and waits until it answers.
    pub async fn start() -> Result<Self> {
        let mut server = Self {
            http_port: free_port()?,
            rpc_port: free_port()?,
            dir: tempfile::tempdir()?,
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        };
        server.write_config()?;
        server.launch().await?;
        // With authentication on and no user yet, 1.x accepts exactly this.
        server
            .post_query(
                None,
                &format!(
                    "CREATE USER {ADMIN_USER} WITH PASSWORD '{ADMIN_PASSWORD}' WITH ALL PRIVILEGES"
                ),
            )
            .await?;
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    /// Runs a statement that changes something (`CREATE DATABASE`, `CREATE
    /// USER`, `GRANT`...) as the administrator.
    pub async fn execute(&self, statement: &str) -> Result<()> {
        self.post_query(Some((ADMIN_USER, ADMIN_PASSWORD)), statement)
            .await
    }

    /// Runs an InfluxQL query in `database` as the administrator, with
    /// nanosecond timestamps; returns the series of the first statement
    /// (empty when it found nothing).
    pub async fn query(&self, database: &str, query: &str) -> Result<Vec<serde_json::Value>> {
        let response = self
            .http
            .get(format!("{}/query", self.url()))
            .basic_auth(ADMIN_USER, Some(ADMIN_PASSWORD))
            .query(&[("db", database), ("q", query), ("epoch", "ns")])
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        let result = &body["results"][0];
        if !status.is_success() || result.get("error").is_some() || body.get("error").is_some() {
            bail!("query {query:?} answered {status}: {body}");
        }
        Ok(result["series"].as_array().cloned().unwrap_or_default())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server gracefully (SIGTERM), falling back to SIGKILL after
    /// a deadline. The port is then closed: clients get "connection refused".
    pub async fn stop(&mut self) -> Result<()> {
        match self.child.take() {
            Some(child) => child.terminate(STOP_DEADLINE).await,
            None => Ok(()),
        }
    }

    /// Starts the server again on the same ports with the same data.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.launch().await
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn post_query(&self, credentials: Option<(&str, &str)>, statement: &str) -> Result<()> {
        let mut request = self
            .http
            .post(format!("{}/query", self.url()))
            .form(&[("q", statement)]);
        if let Some((user, password)) = credentials {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        if !status.is_success() || body["results"][0].get("error").is_some() {
            bail!("{statement:?} answered {status}: {body}");
        }
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("influxd.log")
    }

    fn log_file(&self) -> Result<File> {
        Ok(OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("influxdb.conf")
    }

    fn write_config(&self) -> Result<()> {
        let dir = self.dir.path();
        // Everything else (UDP, Graphite, OpenTSDB, collectd) is off by
        // default; reporting and the _internal database are switched off.
        let text = format!(
            r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{meta}"
[data]
  dir = "{data}"
  wal-dir = "{wal}"
  query-log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{http}"
  auth-enabled = true
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"#,
            rpc = self.rpc_port,
            http = self.http_port,
            meta = dir.join("meta").display(),
            data = dir.join("data").display(),
            wal = dir.join("wal").display(),
        );
        std::fs::write(self.config_path(), text)?;
        Ok(())
    }

    async fn launch(&mut self) -> Result<()> {
        let mut cmd = Command::new(BINARY);
        cmd.arg("-config")
            .arg(self.config_path())
            .stdout(self.log_file()?)
            .stderr(self.log_file()?);
        let mut child = ChildGuard::spawn(BINARY, &mut cmd)
            .with_context(|| format!("{BINARY} not installed? run scripts/setup.sh"))?;

        let ping = format!("{}/ping", self.url());
        wait_until_answers(
            BINARY,
            &self.http,
            &ping,
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
