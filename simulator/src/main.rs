//! `ironbridge-sim`: run the simulated pump as a Modbus TCP server or the
//! simulated spindle as an OPC UA server (both optionally with network
//! faults), serve register banks (the performance benchmark's devices), or
//! record either machine's process as CSV training data.

use std::fs::File;
use std::io::BufWriter;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use ironbridge_simulator::{
    record, record_spindle, serve_register_banks, Fault, FaultSchedule, OpcUaMachine, OpcUaOptions,
    OpcUaUser, ProcessConfig, RecordOptions, SimOptions, Simulator, SpindleConfig,
    SpindleRecordOptions, NAMESPACE_URI, SCHEDULE_HELP,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the pump over Modbus TCP until Ctrl-C or SIGTERM.
    ///
    /// Prints `listening on HOST:PORT` on stdout once bound.
    #[command(after_help = SCHEDULE_HELP)]
    Serve {
        #[arg(long, default_value = "127.0.0.1:5020")]
        bind: SocketAddr,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long, default_value_t = 1)]
        unit_id: u8,
        /// Simulated seconds per real second (e.g. 3600: one hour per second).
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        /// Real milliseconds between process steps.
        #[arg(long, default_value_t = 100)]
        step_ms: u64,
        /// Bearing wear at start, in [0, 1].
        #[arg(long, default_value_t = 0.05)]
        initial_wear: f64,
        #[command(flatten)]
        faults: FaultArgs,
    },
    /// Serve the spindle over OPC UA until Ctrl-C or SIGTERM.
    ///
    /// SignAndEncrypt endpoints (Basic256Sha256, Aes128Sha256RsaOaep,
    /// Aes256Sha256RsaPss) with one username/password login; variables in
    /// namespace urn:ironbridge:sim:spindle (never index 2), string NodeIds
    /// such as Spindle.Speed. Prints `listening on opc.tcp://HOST:PORT/ ...`
    /// on stdout once the server accepts connections.
    #[command(after_help = SCHEDULE_HELP)]
    ServeOpcua {
        /// Address to listen on; port 0 picks a free port (the ready line
        /// says which).
        #[arg(long, default_value = "127.0.0.1:4841")]
        bind: SocketAddr,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Simulated seconds per real second (e.g. 3600: one hour per second).
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        /// Real milliseconds between process steps.
        #[arg(long, default_value_t = 100)]
        step_ms: u64,
        /// Bearing degradation at start, in [0, 1].
        #[arg(long, default_value_t = 0.05)]
        initial_degradation: f64,
        /// How strongly bearing damage shows in vibration and heat (1: the
        /// bearings the example model was trained on; e.g. 1.6 for a make
        /// that wears differently).
        #[arg(long, default_value_t = 1.0)]
        bearing_signature: f64,
        /// Folder of the server certificate (made on first start) and of
        /// trusted/rejected client certificates.
        #[arg(long)]
        pki_dir: PathBuf,
        /// Username of the login.
        #[arg(long, default_value = "operator")]
        user: String,
        /// Environment variable holding the login's password (never a
        /// flag: command lines are visible to every local user).
        #[arg(long, default_value = "IRONBRIDGE_SIM_OPCUA_PASSWORD")]
        password_env: String,
        /// Also serve an anonymous endpoint without security.
        #[arg(long)]
        insecure_endpoint: bool,
        /// Trust every client certificate (else unknown ones are rejected
        /// into PKI_DIR/rejected until moved to trusted/).
        #[arg(long)]
        trust_client_certs: bool,
        #[command(flatten)]
        faults: FaultArgs,
    },
    /// Serve register banks over Modbus TCP until Ctrl-C or SIGTERM: each
    /// device holds F32 float values (holding registers 0.., ABCD) that
    /// change on every read; value k at a device's n-th read is
    /// k + (n mod 1000) / 1000. The performance benchmark's machines.
    ///
    /// Prints `listening on ADDR ADDR ...` (one per device) once bound.
    ServeRegisters {
        /// Where the first device listens; the others take the following
        /// ports, or with port 0 a free port each.
        #[arg(long, default_value = "127.0.0.1:5020")]
        bind: SocketAddr,
        #[arg(long, default_value_t = 10)]
        devices: u16,
        /// f32 values per device (1-4096; up to 62 are one read of at most
        /// 124 registers, more take a read per 125 registers).
        #[arg(long = "f32", default_value_t = 62)]
        f32_count: u16,
    },
    /// Run a machine's process faster than real time and write a CSV
    /// recording (sensor values as the machine's protocol serves them, plus
    /// the ground-truth label).
    Record {
        /// Which machine: the pump's columns are what a Modbus client
        /// decodes, the spindle's one per OPC UA variable (docs/simulator.md).
        #[arg(long, value_enum, default_value_t = MachineKind::Pump)]
        machine: MachineKind,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Simulated hours to record.
        #[arg(long, default_value_t = 2000.0)]
        duration_h: f64,
        /// Simulated seconds between rows.
        #[arg(long, default_value_t = 60.0)]
        step_s: f64,
        /// The spindle's bearing signature (see serve-opcua); spindle only.
        #[arg(long, default_value_t = 1.0)]
        bearing_signature: f64,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MachineKind {
    /// The centrifugal pump (`serve`).
    Pump,
    /// The motor spindle (`serve-opcua`).
    Spindle,
}

/// Fault injection options shared by both machines.
#[derive(clap::Args)]
struct FaultArgs {
    /// One fault, `KIND:key=value,...` (repeatable), e.g.
    /// `drop:at_s=10,for_s=2,every_s=30`; see below.
    #[arg(long = "fault", value_name = "SPEC")]
    specs: Vec<String>,
    /// A TOML fault schedule (`[[fault]]` tables); see below.
    #[arg(long = "faults", value_name = "FILE")]
    file: Option<PathBuf>,
}

impl FaultArgs {
    fn schedule(&self) -> anyhow::Result<FaultSchedule> {
        let mut schedule = match &self.file {
            Some(path) => FaultSchedule::from_file(path)?,
            None => FaultSchedule::default(),
        };
        for spec in &self.specs {
            schedule.push(Fault::parse_cli(spec)?);
        }
        Ok(schedule)
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Serve {
            bind,
            seed,
            unit_id,
            time_scale,
            step_ms,
            initial_wear,
            faults,
        } => {
            let options = SimOptions {
                seed,
                unit_id,
                time_scale,
                step_ms,
                start_paused: false,
                process: ProcessConfig {
                    initial_wear,
                    ..ProcessConfig::default()
                },
                faults: faults.schedule()?,
            };
            tokio::runtime::Runtime::new()
                .context("starting the async runtime")?
                .block_on(run_server(bind, options))
        }
        Command::ServeOpcua {
            bind,
            seed,
            time_scale,
            step_ms,
            initial_degradation,
            bearing_signature,
            pki_dir,
            user,
            password_env,
            insecure_endpoint,
            trust_client_certs,
            faults,
        } => {
            let password = std::env::var(&password_env)
                .ok()
                .filter(|p| !p.is_empty())
                .with_context(|| {
                    format!("set the password of OPC UA user {user:?} in ${password_env}")
                })?;
            let options = OpcUaOptions {
                seed,
                time_scale,
                step_ms,
                start_paused: false,
                spindle: SpindleConfig {
                    initial_degradation,
                    bearing_signature,
                    ..SpindleConfig::default()
                },
                pki_dir,
                users: vec![OpcUaUser {
                    username: user,
                    password,
                }],
                insecure_endpoint,
                trust_client_certs,
                faults: faults.schedule()?,
                max_sessions: ironbridge_simulator::DEFAULT_MAX_SESSIONS,
            };
            if insecure_endpoint && !bind.ip().is_loopback() {
                tracing::warn!(%bind, "the endpoint without security is reachable from the network");
            }
            tokio::runtime::Runtime::new()
                .context("starting the async runtime")?
                .block_on(run_opcua_server(bind, options))
        }
        Command::ServeRegisters {
            bind,
            devices,
            f32_count,
        } => {
            // One thread: the banks share the cores with the gateway under
            // test, and answering a read is a few hundred nanoseconds.
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(run_register_banks(bind, devices, f32_count))
        }
        Command::Record {
            machine,
            seed,
            duration_h,
            step_s,
            bearing_signature,
            out,
        } => {
            if machine == MachineKind::Pump && bearing_signature != 1.0 {
                anyhow::bail!("--bearing-signature applies to --machine spindle only");
            }
            if !(bearing_signature.is_finite() && bearing_signature > 0.0) {
                anyhow::bail!(
                    "--bearing-signature must be a positive number, got {bearing_signature}"
                );
            }
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let file = File::create(&out).with_context(|| format!("creating {}", out.display()))?;
            let duration_s = duration_h * 3600.0;
            let summary = match machine {
                MachineKind::Pump => {
                    let options = RecordOptions {
                        seed,
                        duration_s,
                        step_s,
                        process: ProcessConfig::default(),
                    };
                    record(&options, BufWriter::new(file))?
                }
                MachineKind::Spindle => {
                    let options = SpindleRecordOptions {
                        seed,
                        duration_s,
                        step_s,
                        spindle: SpindleConfig {
                            bearing_signature,
                            ..SpindleConfig::default()
                        },
                    };
                    record_spindle(&options, BufWriter::new(file))?
                }
            };
            tracing::info!(
                rows = summary.rows,
                bearings_replaced = summary.bearings_replaced,
                out = %out.display(),
                "recording written"
            );
            Ok(())
        }
    }
}

async fn run_server(bind: SocketAddr, options: SimOptions) -> anyhow::Result<()> {
    let simulator = Simulator::new(options)?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, unit_id = simulator.options().unit_id, "serving the simulated pump");
    // The ready line scripts and tests wait for (the port, when bound to 0).
    println!("listening on {address}");
    simulator.serve(listener, cancel_on_signal()).await?;
    Ok(())
}

async fn run_register_banks(bind: SocketAddr, devices: u16, f32_count: u16) -> anyhow::Result<()> {
    anyhow::ensure!(devices > 0, "--devices must be at least 1");
    let mut listeners = Vec::with_capacity(devices.into());
    for i in 0..devices {
        let mut addr = bind;
        if bind.port() != 0 {
            let port = bind.port().checked_add(i).context("ports beyond 65535")?;
            addr.set_port(port);
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        listeners.push(listener);
    }
    let addresses = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    tracing::info!(devices, f32_count, "serving register banks");
    println!("listening on {}", addresses.join(" "));
    serve_register_banks(listeners, f32_count, cancel_on_signal()).await?;
    Ok(())
}

async fn run_opcua_server(bind: SocketAddr, options: OpcUaOptions) -> anyhow::Result<()> {
    let machine = OpcUaMachine::new(options)?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    let mut status = machine.status();
    let mut serving = tokio::spawn({
        let machine = machine.clone();
        let cancel = cancel_on_signal();
        async move { machine.serve(listener, cancel).await }
    });
    // Ready once the server runs (certificate made, address space built),
    // not merely once the port is bound.
    tokio::select! {
        ready = status.wait_for(|s| s.up) => {
            let ready = ready.context("the OPC UA machine stopped")?.clone();
            println!(
                "listening on {} (namespace {NAMESPACE_URI} at index {})",
                ready.endpoint_url.as_deref().unwrap_or("?"),
                ready.namespace_index.map_or_else(|| "?".to_string(), |i| i.to_string()),
            );
        }
        ended = &mut serving => {
            ended.context("the OPC UA machine panicked")??;
            return Ok(());
        }
    }
    serving.await.context("the OPC UA machine panicked")??;
    Ok(())
}

/// A token cancelled by Ctrl-C or SIGTERM.
fn cancel_on_signal() -> CancellationToken {
    let cancel = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            cancel.cancel();
        }
    });
    cancel
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
