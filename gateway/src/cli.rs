//! The command line: `ironbridge run|validate --config FILE`,
//! `ironbridge discover URL`, `ironbridge model activate|rollback|shadow|unshadow`,
//! `--version`.

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
    /// Browse an OPC UA server and print a ready-to-paste [[machines]] block
    /// with every readable variable.
    Discover {
        /// The server's endpoint, e.g. opc.tcp://10.0.0.5:4840/
        endpoint: String,
        /// Security policy: Basic256Sha256, Aes128Sha256RsaOaep,
        /// Aes256Sha256RsaPss, or None (with --mode None).
        #[arg(long, default_value = "Basic256Sha256")]
        security: String,
        /// Message security mode: SignAndEncrypt, Sign or None.
        #[arg(long, default_value = "SignAndEncrypt")]
        mode: String,
        /// Log in with this user; the password comes from --password-env.
        #[arg(long)]
        username: Option<String>,
        /// Environment variable holding the password.
        #[arg(long, default_value = "IRONBRIDGE_PASSWORD")]
        password_env: String,
        /// Trust the server's certificate without an operator moving it
        /// from the PKI folder's rejected/ to trusted/.
        #[arg(long)]
        trust_server_cert: bool,
        /// The client PKI folder (own certificate, trusted servers).
        #[arg(long, default_value = "pki/client")]
        pki_dir: PathBuf,
        /// Stop browsing after this many nodes.
        #[arg(long, default_value_t = 20_000)]
        max_nodes: usize,
    },
    /// Change which version of a model serves, on a running gateway (an
    /// OPC UA client calling Models/<model>/Activate or Rollback; the user
    /// needs the admin role).
    Model {
        #[command(subcommand)]
        action: ModelSubcommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelSubcommand {
    /// Verify, load, warm up and swap in a version; the active one keeps
    /// serving if it fails.
    Activate {
        #[command(flatten)]
        target: ModelTarget,
        /// The version folder to activate.
        #[arg(long)]
        version: String,
    },
    /// Return to the previously active version at once.
    Rollback {
        #[command(flatten)]
        target: ModelTarget,
    },
    /// Run a version beside the active one on the same inputs, unpublished,
    /// judged by the model's gate.
    Shadow {
        #[command(flatten)]
        target: ModelTarget,
        #[arg(long)]
        version: String,
    },
    /// Stop the shadow run.
    Unshadow {
        #[command(flatten)]
        target: ModelTarget,
    },
    /// Check a version folder the way the edge will (for CI/CD): manifest
    /// and sha256, libtorch load, output shape, robustness, statistics on
    /// labelled data with bootstrap intervals, latency. Exit 0 pass, 1
    /// fail, 2 unusable input.
    Verify {
        /// The version folder (`<model>/<version>/`).
        dir: PathBuf,
        /// Labelled rows: CSV with a header naming every model input and
        /// the label column.
        #[arg(long)]
        data: Option<PathBuf>,
        /// The label column (default: the model's first output's name).
        #[arg(long)]
        label: Option<String>,
        /// Another version folder to compare against (paired
        /// non-inferiority of the MAE on --data).
        #[arg(long)]
        against: Option<PathBuf>,
        /// How much worse than --against the MAE may be.
        #[arg(long, default_value_t = 0.0)]
        margin: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Which gateway and model, and how to log in.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelTarget {
    /// The gateway's OPC UA endpoint, e.g. opc.tcp://gateway:4840/
    #[arg(long)]
    pub endpoint: String,
    /// The model's name (its `[[models]] name`).
    #[arg(long)]
    pub model: String,
    /// An OPC UA user with the admin role; the password comes from
    /// --password-env.
    #[arg(long)]
    pub username: String,
    #[arg(long, default_value = "IRONBRIDGE_PASSWORD")]
    pub password_env: String,
    /// Security policy of the channel (always SignAndEncrypt).
    #[arg(long, default_value = "Basic256Sha256")]
    pub security: String,
    /// Trust the gateway's certificate without an operator moving it from
    /// the PKI folder's rejected/ to trusted/.
    #[arg(long)]
    pub trust_server_cert: bool,
    /// The client PKI folder (own certificate, trusted servers).
    #[arg(long, default_value = "pki/client")]
    pub pki_dir: PathBuf,
}
