//! `ironbridge-sim`: run the simulated pump as a Modbus TCP server, or record
//! its process as CSV training data.

use std::fs::File;
use std::io::BufWriter;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ironbridge_simulator::{record, ProcessConfig, RecordOptions, SimOptions, Simulator};
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
    },
    /// Run the process faster than real time and write a CSV recording.
    Record {
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Simulated hours to record.
        #[arg(long, default_value_t = 2000.0)]
        duration_h: f64,
        /// Simulated seconds between rows.
        #[arg(long, default_value_t = 60.0)]
        step_s: f64,
        #[arg(long)]
        out: PathBuf,
    },
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
            };
            tokio::runtime::Runtime::new()
                .context("starting the async runtime")?
                .block_on(run_server(bind, options))
        }
        Command::Record {
            seed,
            duration_h,
            step_s,
            out,
        } => {
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let file = File::create(&out).with_context(|| format!("creating {}", out.display()))?;
            let options = RecordOptions {
                seed,
                duration_s: duration_h * 3600.0,
                step_s,
                process: ProcessConfig::default(),
            };
            let summary = record(&options, BufWriter::new(file))?;
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
    tracing::info!(address = %listener.local_addr()?, unit_id = simulator.options().unit_id, "serving the simulated pump");
    let cancel = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            cancel.cancel();
        }
    });
    simulator.serve(listener, cancel).await?;
    Ok(())
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
