//! Logging set-up (RUST_LOG overrides the default: `info` for the running
//! gateway, `error` for one-shot commands, whose result is their output).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init_logging() {
    init_logging_at("info");
}

/// As [`init_logging`] with another default level.
pub fn init_logging_at(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colours only for a terminal: log files and journald get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
