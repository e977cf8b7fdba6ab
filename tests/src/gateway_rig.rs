//! A whole gateway on real parts, for end-to-end tests: the simulated pump
//! (in-process, on a free port), a real victoria-metrics, and the gateway
//! started from a configuration file like a user's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use ironbridge::config::GatewayConfig;
use ironbridge::Gateway;
use ironbridge_simulator::{SimOptions, Simulator};
use tokio_util::sync::CancellationToken;

use crate::paths::repo_root;
use crate::ports::free_port;
use crate::victoria::VictoriaMetrics;

/// The example model the rig serves.
pub const MODEL: &str = "bearing-wear";
pub const MODEL_VERSION: &str = "1.0.0";
pub const MACHINE: &str = "pump-1";

pub struct GatewayRig {
    pub vm: VictoriaMetrics,
    pub simulator: std::sync::Arc<Simulator>,
    pub gateway: Option<Gateway>,
    pub opcua_port: u16,
    /// Where the gateway's Modbus server listens, when enabled.
    pub modbus_server: Option<SocketAddr>,
    pub config_path: PathBuf,
    cancel: CancellationToken,
    simulator_cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

/// What to start besides the example configuration's defaults.
#[derive(Debug, Clone, Default)]
pub struct RigOptions {
    pub poll_ms: u64,
    pub flush_ms: u64,
    /// Enables the example's `[modbus_server]` section with this address
    /// (`127.0.0.1:0` for a port the system chooses).
    pub modbus_server: Option<String>,
}

impl GatewayRig {
    /// Starts victoria-metrics, the simulator and a gateway polling it every
    /// `poll_ms` and flushing to the store every `flush_ms`.
    pub async fn start(poll_ms: u64, flush_ms: u64) -> Result<Self> {
        Self::start_with(RigOptions {
            poll_ms,
            flush_ms,
            ..RigOptions::default()
        })
        .await
    }

    /// Starts victoria-metrics, the simulator and a gateway as `options` say.
    pub async fn start_with(options: RigOptions) -> Result<Self> {
        let vm = VictoriaMetrics::start().await?;
        let cancel = CancellationToken::new();
        let simulator_cancel = cancel.child_token();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let sim_addr = listener.local_addr()?;
        // Fast simulated time so that values (and wear) move during a test.
        let simulator = std::sync::Arc::new(Simulator::new(SimOptions {
            seed: 7,
            time_scale: 600.0,
            ..SimOptions::default()
        })?);
        {
            let simulator = simulator.clone();
            let cancel = simulator_cancel.clone();
            tokio::spawn(async move { simulator.serve(listener, cancel).await });
        }

        let dir = tempfile::tempdir()?;
        let opcua_port = free_port()?;
        let example = std::fs::read_to_string(repo_root().join("config/example.toml"))?;
        let text = rig_config(
            &example,
            &vm.url(),
            &sim_addr.to_string(),
            opcua_port,
            &dir.path().join("pki"),
            &options,
        )?;
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, text)?;
        let config = GatewayConfig::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let gateway = Gateway::start(config, cancel.child_token())
            .await
            .context("gateway start")?;
        Ok(Self {
            vm,
            simulator,
            modbus_server: gateway.modbus_server_addr,
            gateway: Some(gateway),
            opcua_port,
            config_path,
            cancel,
            simulator_cancel,
            _dir: dir,
        })
    }

    pub fn opcua_url(&self) -> String {
        format!("opc.tcp://127.0.0.1:{}/", self.opcua_port)
    }

    /// Stops the simulated pump: its connections close and its port stops
    /// listening, as when the machine loses power.
    pub fn stop_simulator(&self) {
        self.simulator_cancel.cancel();
    }

    /// Stops the gateway (waiting for its final flush) and the simulator.
    pub async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(gateway) = self.gateway.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), gateway.stopped()).await;
        }
    }

    /// Waits until `selector` has at least `n` samples in victoria-metrics.
    pub async fn wait_for_samples(&self, selector: &str, n: usize, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let have: usize = self
                .vm
                .export(selector)
                .await?
                .iter()
                .map(|s| s.samples().len())
                .sum();
            if have >= n {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("{selector}: {have} samples after {within:?}, wanted {n}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for GatewayRig {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The example configuration with this rig's ports and paths: the same file
/// a user starts from, not a hand-written test variant.
fn rig_config(
    example: &str,
    vm_url: &str,
    sim_addr: &str,
    opcua_port: u16,
    pki_dir: &std::path::Path,
    options: &RigOptions,
) -> Result<String> {
    let RigOptions {
        poll_ms,
        flush_ms,
        modbus_server,
    } = options;
    let modbus_server = modbus_server.as_deref();
    let model_dir = repo_root().join("models/examples/bearing-wear");
    let mut out = String::new();
    for line in example.lines() {
        let replaced = match line.trim_start() {
            l if l.starts_with("port = 4840") => format!("port = {opcua_port}"),
            l if l.starts_with("pki_dir =") => {
                format!("pki_dir = {:?}", pki_dir.display().to_string())
            }
            l if l.starts_with("url = \"http://127.0.0.1:8428\"") => format!("url = {vm_url:?}"),
            l if l.starts_with("address = \"127.0.0.1:5020\"") => format!("address = {sim_addr:?}"),
            l if l.starts_with("poll_interval_ms =") => format!("poll_interval_ms = {poll_ms}"),
            l if l.starts_with("flush_interval_ms =") => format!("flush_interval_ms = {flush_ms}"),
            l if l.starts_with("path = \"../models/examples/bearing-wear\"") => {
                format!("path = {:?}", model_dir.display().to_string())
            }
            "# [modbus_server]" if modbus_server.is_some() => "[modbus_server]".to_string(),
            l if l.starts_with("# address = \"127.0.0.1:5502\"") => match modbus_server {
                Some(address) => format!("address = {address:?}"),
                None => line.to_string(),
            },
            _ => line.to_string(),
        };
        out.push_str(&replaced);
        out.push('\n');
    }
    let mut musts = vec![vm_url.to_string(), sim_addr.to_string()];
    if let Some(address) = modbus_server {
        musts.push("\n[modbus_server]\n".to_string());
        musts.push(format!("address = {address:?}"));
    }
    for must in &musts {
        anyhow::ensure!(
            out.contains(must),
            "config/example.toml changed shape: {must} not substituted"
        );
    }
    Ok(out)
}
