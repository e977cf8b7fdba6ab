//! A whole gateway on real parts, for end-to-end tests: the simulated pump
//! (in-process, on a free port), a real victoria-metrics, and the gateway
//! started from a configuration file like a user's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use ironbridge::config::GatewayConfig;
use ironbridge::{Gateway, GatewayError};
use ironbridge_simulator::{OpcUaMachine, OpcUaOptions, OpcUaUser, SimOptions, Simulator};
use tokio_util::sync::CancellationToken;

use crate::paths::repo_root;
use crate::ports::free_port;
use crate::victoria::VictoriaMetrics;

/// For the spindle's first scan to reach the gateway. Generous: both make
/// an RSA key pair first, on a loaded box.
const SPINDLE_START_DEADLINE: Duration = Duration::from_secs(60);

/// The example model the rig serves.
pub const MODEL: &str = "bearing-wear";
pub const MODEL_VERSION: &str = "1.0.0";
pub const MACHINE: &str = "pump-1";
/// The OPC UA machine of the example configuration.
pub const SPINDLE: &str = "spindle-1";
/// The spindle's login, as config/example.toml names it.
pub const SPINDLE_USER: &str = "operator";
pub const SPINDLE_PASSWORD_ENV: &str = "IRONBRIDGE_SPINDLE_PASSWORD";
const SPINDLE_PASSWORD: &str = "rig-spindle-password";

pub struct GatewayRig {
    pub vm: VictoriaMetrics,
    pub simulator: std::sync::Arc<Simulator>,
    /// The simulated OPC UA spindle (in-process, on a free port).
    pub spindle: OpcUaMachine,
    spindle_cancel: CancellationToken,
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
    /// Where the models' folders are (`<dir>/examples/<model>/<version>`);
    /// default: the repository's `models/`.
    pub models_dir: Option<PathBuf>,
    /// `[[opcua.users]]` to add: username, password (set in the environment
    /// as `IRONBRIDGE_TEST_USER_<USERNAME>`), role.
    pub opcua_users: Vec<(String, String, String)>,
    /// `[opcua] trust_client_certs` (the example's is false).
    pub trust_client_certs: bool,
    /// The example's spindle-wear gate with this `min_samples` and
    /// `auto_promote`.
    pub gate: Option<(u64, bool)>,
    /// The simulated pump's mean ambient temperature (default 25 °C): a
    /// hotter plant moves its temperatures away from the training data.
    pub pump_ambient_c: Option<f64>,
    /// `[models.drift] window_s` of the pump's bearing-wear model (default:
    /// the model's, one day), with 40 samples over it.
    pub bearing_wear_drift_window_s: Option<u64>,
    /// `[models.registry]` of the pump's bearing-wear model, as the keys
    /// of an inline table (`kind = "mlflow", url = "...", ...`).
    pub bearing_wear_registry: Option<String>,
    /// Keys added to the pump's bearing-wear `[[models]]` table (e.g.
    /// `backend = "remote"` and its `url`), one per line.
    pub bearing_wear_keys: Option<String>,
    /// The simulated spindle's bearing signature (default 1: the bearings
    /// the example model was trained on).
    pub spindle_bearing_signature: Option<f64>,
    /// Write to this InfluxDB 1.x (`api = "v1"`) instead of the rig's
    /// victoria-metrics.
    pub influx_v1: Option<InfluxV1Target>,
    /// Keys of the example's `[opcua.limits]` to change (e.g.
    /// `max_sessions = 2`, one per line).
    pub opcua_limits: Option<String>,
    /// More pumps as (machine name, `host:port` of a simulated pump), each
    /// a copy of the example's pump-1 (same tags and poll interval) that
    /// also feeds bearing-wear.
    pub more_pumps: Vec<(String, String)>,
}

/// An InfluxDB 1.x for the gateway to write to.
#[derive(Debug, Clone, Default)]
pub struct InfluxV1Target {
    pub url: String,
    pub database: String,
    pub username: String,
    /// Environment variable holding the password (the test sets it).
    pub password_env: String,
}

impl GatewayRig {
    /// Starts victoria-metrics, the simulators and a gateway polling them
    /// every `poll_ms` and flushing to the store every `flush_ms`.
    pub async fn start(poll_ms: u64, flush_ms: u64) -> Result<Self> {
        Self::start_with(RigOptions {
            poll_ms,
            flush_ms,
            ..RigOptions::default()
        })
        .await
    }

    /// Starts victoria-metrics, the simulators and a gateway as `options` say.
    pub async fn start_with(options: RigOptions) -> Result<Self> {
        let vm = VictoriaMetrics::start().await?;
        let cancel = CancellationToken::new();
        let simulator_cancel = cancel.child_token();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let sim_addr = listener.local_addr()?;
        // Fast simulated time so that values (and wear) move during a test.
        let mut sim_options = SimOptions {
            seed: 7,
            time_scale: 600.0,
            ..SimOptions::default()
        };
        if let Some(ambient) = options.pump_ambient_c {
            sim_options.process.ambient_c = ambient;
        }
        let simulator = std::sync::Arc::new(Simulator::new(sim_options)?);
        {
            let simulator = simulator.clone();
            let cancel = simulator_cancel.clone();
            tokio::spawn(async move { simulator.serve(listener, cancel).await });
        }

        let dir = tempfile::tempdir()?;
        let spindle_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let spindle_endpoint = format!("opc.tcp://{}/", spindle_listener.local_addr()?);
        let mut spindle_options = OpcUaOptions::new(
            dir.path().join("spindle-pki"),
            OpcUaUser {
                username: SPINDLE_USER.into(),
                password: SPINDLE_PASSWORD.into(),
            },
        );
        spindle_options.time_scale = 600.0;
        if let Some(signature) = options.spindle_bearing_signature {
            spindle_options.spindle.bearing_signature = signature;
        }
        // The gateway's client certificate is new to it.
        spindle_options.trust_client_certs = true;
        let spindle = OpcUaMachine::new(spindle_options)?;
        let spindle_cancel = cancel.child_token();
        let spindle_task = {
            let spindle = spindle.clone();
            let cancel = spindle_cancel.clone();
            tokio::spawn(async move {
                if let Err(e) = spindle.serve(spindle_listener, cancel).await {
                    tracing::error!("simulated spindle stopped: {e}");
                }
            })
        };
        let started: Result<(Gateway, u16, PathBuf)> = async {
            std::env::set_var(SPINDLE_PASSWORD_ENV, SPINDLE_PASSWORD);
            // The example's admin user (a test that calls model methods adds
            // its own users).
            std::env::set_var("IRONBRIDGE_ADMIN_PASSWORD", "rig-admin-password");
            let example = std::fs::read_to_string(repo_root().join("config/example.toml"))?;
            let vm_url = vm.url();
            let sim_addr = sim_addr.to_string();
            let pki_dir = dir.path().join("pki");
            let config_path = dir.path().join("gateway.toml");
            // The OPC UA port is picked free and bound only later, by the
            // gateway; in between another test's connection may take it as its
            // ephemeral port. So a port found taken is picked again.
            let mut attempts = 0;
            loop {
                attempts += 1;
                let opcua_port = free_port()?;
                let text = rig_config(
                    &example,
                    &RigPlaces {
                        vm_url: &vm_url,
                        sim_addr: &sim_addr,
                        spindle_endpoint: &spindle_endpoint,
                        opcua_port,
                        pki_dir: &pki_dir,
                        options: &options,
                    },
                )?;
                std::fs::write(&config_path, text)?;
                let config =
                    GatewayConfig::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
                let attempt_cancel = cancel.child_token();
                match Gateway::start(config, attempt_cancel.clone()).await {
                    Ok(gateway) => return Ok((gateway, opcua_port, config_path)),
                    Err(GatewayError::Bind { addr, source })
                        if source.kind() == std::io::ErrorKind::AddrInUse && attempts < 5 =>
                    {
                        // What the failed start spawned stops with its token.
                        attempt_cancel.cancel();
                        eprintln!("OPC UA port {addr} was taken meanwhile; picking another");
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context("gateway start")),
                }
            }
        }
        .await;
        // The spindle makes its certificate in this folder when its task
        // first runs, and the gateway its OPC UA client's key pair when it
        // first connects to the spindle (in a blocking task). Either, run
        // after the folder was removed (a test that ends, or a start that
        // fails, before then), would make the folder again and leave it in
        // /tmp. So a failed start waits for the spindle's task to end, and a
        // started rig is returned once the spindle's first scan has arrived.
        let (gateway, opcua_port, config_path) = match started {
            Ok(started) => started,
            Err(e) => {
                cancel.cancel();
                let _ = spindle_task.await;
                return Err(e);
            }
        };
        let rig = Self {
            vm,
            simulator,
            spindle,
            spindle_cancel,
            modbus_server: gateway.modbus_server_addr,
            gateway: Some(gateway),
            opcua_port,
            config_path,
            cancel,
            simulator_cancel,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + SPINDLE_START_DEADLINE;
        while rig.gateway_source_scans(SPINDLE).unwrap_or(0) == 0 {
            if tokio::time::Instant::now() >= deadline {
                rig.cancel.cancel();
                let _ = spindle_task.await;
                anyhow::bail!(
                    "the gateway had no scan from {SPINDLE} within {SPINDLE_START_DEADLINE:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(rig)
    }

    /// The gateway's own count of scans from `machine`.
    pub fn gateway_source_scans(&self, machine: &str) -> Option<u64> {
        self.gateway
            .as_ref()
            .and_then(|g| g.source_stats.get(machine))
            .map(|s| s.scans())
    }

    /// Reads `paths` (below `Objects/IronBridge`) from the gateway's OPC UA
    /// server with the independent asyncua client
    /// (`tests/peers/opcua_client.py`); the answer's `reads` maps each path
    /// to its value and status.
    pub async fn read_opcua(&self, paths: &[String]) -> Result<serde_json::Value> {
        let answer = self.opcua_client(paths, &[]).await?;
        anyhow::ensure!(answer["connected"] == true, "{answer}");
        Ok(answer)
    }

    /// Like [`GatewayRig::read_opcua`] with more arguments for the client,
    /// whether it connected or not.
    pub async fn opcua_client(
        &self,
        paths: &[String],
        extra_args: &[&str],
    ) -> Result<serde_json::Value> {
        let mut args: Vec<String> = vec!["--url".into(), self.opcua_url()];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        for path in paths {
            args.push("--read".into());
            args.push(path.clone());
        }
        let out = tokio::process::Command::new(crate::paths::venv_python()?)
            .arg(repo_root().join("tests/peers/opcua_client.py"))
            .args(&args)
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "opcua_client.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Where the gateway serves /health, /ready and /metrics.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.gateway.as_ref().and_then(|g| g.http_addr)
    }

    /// The value of `name{model="bearing-wear",...}` on the gateway's
    /// /metrics (e.g. `ironbridge_predictions_total`).
    pub async fn model_metric(&self, name: &str) -> Result<f64> {
        let addr = self.http_addr().context("the rig serves /metrics")?;
        let body = reqwest::get(format!("http://{addr}/metrics"))
            .await?
            .text()
            .await?;
        // Other labels (the example's `gateway`) may follow the model's.
        let series = format!("{name}{{model=\"{MODEL}\"");
        body.lines()
            .find_map(|line| line.strip_prefix(&series))
            .and_then(|rest| rest.split_once("} "))
            .and_then(|(_, value)| value.trim().parse().ok())
            .with_context(|| format!("no {series}...}} in /metrics:\n{body}"))
    }

    pub fn opcua_url(&self) -> String {
        format!("opc.tcp://127.0.0.1:{}/", self.opcua_port)
    }

    /// Stops the simulated pump: its connections close and its port stops
    /// listening, as when the machine loses power.
    pub fn stop_simulator(&self) {
        self.simulator_cancel.cancel();
    }

    /// Stops the simulated spindle's server (the machine goes away).
    pub fn stop_spindle(&self) {
        self.spindle_cancel.cancel();
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

/// Where this rig's parts listen, and how fast the gateway polls and flushes.
struct RigPlaces<'a> {
    vm_url: &'a str,
    sim_addr: &'a str,
    spindle_endpoint: &'a str,
    opcua_port: u16,
    pki_dir: &'a std::path::Path,
    options: &'a RigOptions,
}

/// The example configuration with this rig's ports and paths: the same file
/// a user starts from, not a hand-written test variant.
fn rig_config(example: &str, at: &RigPlaces<'_>) -> Result<String> {
    let models_dir = at
        .options
        .models_dir
        .clone()
        .unwrap_or_else(|| repo_root().join("models"));
    let modbus_server = at.options.modbus_server.as_deref();
    let influx_v1 = at.options.influx_v1.as_ref();
    let limits: Vec<(&str, &str)> = at
        .options
        .opcua_limits
        .as_deref()
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k.trim())
        .zip(at.options.opcua_limits.as_deref().unwrap_or("").lines())
        .collect();
    let mut out = String::new();
    for line in example.lines() {
        let limit = limits
            .iter()
            .find(|(key, _)| line.split_once('=').is_some_and(|(k, _)| k.trim() == *key));
        let replaced = match line.trim_start() {
            _ if limit.is_some() => limit.map_or_else(String::new, |(_, l)| l.to_string()),
            l if l.starts_with("port = 4840") => format!("port = {}", at.opcua_port),
            l if l.starts_with("trust_client_certs = false") && at.options.trust_client_certs => {
                "trust_client_certs = true".to_string()
            }
            // Beside the rig's configuration, in its own folder.
            l if l.starts_with("spool_dir =") => "spool_dir = \"spool/influx\"".to_string(),
            l if l.starts_with("dead_letter_path =") => {
                "dead_letter_path = \"dead-letter/influx.lp\"".to_string()
            }
            l if l.starts_with("pki_dir =") => {
                format!("pki_dir = {:?}", at.pki_dir.display().to_string())
            }
            l if l.starts_with("url = \"http://127.0.0.1:8428\"") => match influx_v1 {
                Some(v1) => format!("url = {:?}", v1.url),
                None => format!("url = {:?}", at.vm_url),
            },
            l if l.starts_with("api = \"v2\"") => match influx_v1 {
                Some(v1) => format!(
                    "api = \"v1\"\ndatabase = {:?}\nusername = {:?}\npassword_env = {:?}",
                    v1.database, v1.username, v1.password_env
                ),
                None => line.to_string(),
            },
            l if (l.starts_with("org = ") || l.starts_with("bucket = ")) && influx_v1.is_some() => {
                format!("# {line}")
            }
            l if l.starts_with("address = \"127.0.0.1:5020\"") => {
                format!("address = {:?}", at.sim_addr)
            }
            l if l.starts_with("endpoint = \"opc.tcp://127.0.0.1:4841/\"") => {
                format!("endpoint = {:?}", at.spindle_endpoint)
            }
            l if l.starts_with("poll_interval_ms =") => {
                format!("poll_interval_ms = {}", at.options.poll_ms)
            }
            l if l.starts_with("flush_interval_ms =") => {
                format!("flush_interval_ms = {}", at.options.flush_ms)
            }
            l if l.starts_with("path = \"../models/") => {
                let rest = l
                    .trim_start_matches("path = \"../models/")
                    .trim_end_matches('"');
                format!("path = {:?}", models_dir.join(rest).display().to_string())
            }
            l if l.starts_with("min_samples = 200") && at.options.gate.is_some() => {
                format!("min_samples = {}", at.options.gate.map_or(200, |g| g.0))
            }
            l if l.starts_with("auto_promote = false") && at.options.gate.is_some_and(|g| g.1) => {
                "auto_promote = true".to_string()
            }
            "name = \"bearing-wear\""
                if at.options.bearing_wear_drift_window_s.is_some()
                    || at.options.bearing_wear_registry.is_some()
                    || at.options.bearing_wear_keys.is_some() =>
            {
                let mut lines = line.to_string();
                if let Some(window_s) = at.options.bearing_wear_drift_window_s {
                    lines.push_str(&format!(
                        "\ndrift = {{ window_s = {window_s}, samples = 40 }}"
                    ));
                }
                if let Some(registry) = &at.options.bearing_wear_registry {
                    lines.push_str(&format!("\nregistry = {{ {registry} }}"));
                }
                if let Some(keys) = &at.options.bearing_wear_keys {
                    lines.push('\n');
                    lines.push_str(keys);
                }
                lines
            }
            "machines = [\"pump-1\"]" if !at.options.more_pumps.is_empty() => {
                let names: Vec<&str> = std::iter::once(MACHINE)
                    .chain(at.options.more_pumps.iter().map(|(name, _)| name.as_str()))
                    .collect();
                format!("machines = {names:?}")
            }
            // Port 0: several rigs run at once.
            l if l.starts_with("address = \"127.0.0.1:9184\"") => {
                "address = \"127.0.0.1:0\"".to_string()
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
    if !at.options.more_pumps.is_empty() {
        let pump = pump_block(example)?;
        for (name, address) in &at.options.more_pumps {
            out.push('\n');
            for line in pump.lines() {
                let line = match line.trim_start() {
                    l if l.starts_with("name = \"pump-1\"") => format!("name = {name:?}"),
                    l if l.starts_with("address = \"127.0.0.1:5020\"") => {
                        format!("address = {address:?}")
                    }
                    l if l.starts_with("poll_interval_ms =") => {
                        format!("poll_interval_ms = {}", at.options.poll_ms)
                    }
                    _ => line.to_string(),
                };
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    for (username, password, role) in &at.options.opcua_users {
        let env = format!("IRONBRIDGE_TEST_USER_{}", username.to_uppercase());
        std::env::set_var(&env, password);
        out.push_str(&format!(
            "\n[[opcua.users]]\nusername = {username:?}\npassword_env = {env:?}\nrole = {role:?}\n"
        ));
    }
    let mut musts = vec![
        at.sim_addr.to_string(),
        at.spindle_endpoint.to_string(),
        "address = \"127.0.0.1:0\"".to_string(),
        "spool_dir = \"spool/influx\"".to_string(),
        "dead_letter_path = \"dead-letter/influx.lp\"".to_string(),
    ];
    musts.extend(limits.iter().map(|(_, line)| line.to_string()));
    for (name, address) in &at.options.more_pumps {
        musts.push(format!("\"{name}\""));
        musts.push(format!("address = {address:?}"));
    }
    match influx_v1 {
        Some(v1) => {
            musts.push(v1.url.clone());
            musts.push("api = \"v1\"".to_string());
        }
        None => musts.push(at.vm_url.to_string()),
    }
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

/// The example's `[[machines]]` table of pump-1 with its tags, as written
/// there (up to the next top-level table; comments included).
fn pump_block(example: &str) -> Result<String> {
    let lines: Vec<&str> = example.lines().collect();
    let name = lines
        .iter()
        .position(|l| l.trim() == format!("name = \"{MACHINE}\""))
        .context("config/example.toml changed shape: no pump-1 machine")?;
    let start = lines[..name]
        .iter()
        .rposition(|l| l.trim() == "[[machines]]")
        .context("config/example.toml changed shape: pump-1 outside [[machines]]")?;
    let end = lines[name..]
        .iter()
        .position(|l| l.starts_with('['))
        .map_or(lines.len(), |n| name + n);
    Ok(lines[start..end].join("\n"))
}
