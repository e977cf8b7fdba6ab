//! The simulator's error type.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid option {name}: {reason}")]
    InvalidOption { name: &'static str, reason: String },
    #[error("Modbus server stopped: {0}")]
    Serve(#[source] io::Error),
    #[error("writing the recording failed: {0}")]
    Write(#[source] io::Error),
}
