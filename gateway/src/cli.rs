//! The command line: `ironbridge run|validate --config FILE`, `--version`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Version string with the git commit the binary was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("IRONBRIDGE_GIT_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "ironbridge",
    version = VERSION,
    about = "Edge gateway: reads machines over Modbus, runs TorchScript models, writes InfluxDB and serves OPC UA"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway until SIGINT/SIGTERM.
    Run {
        /// The gateway's TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration and list every problem; starts nothing.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
}
