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
    #[error("invalid fault schedule: {0}")]
    Faults(String),
    #[error("reading the fault schedule {path}: {source}")]
    ReadFaults {
        path: String,
        #[source]
        source: io::Error,
    },
    /// Binding (or, after a drop or restart, binding again) failed.
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("OPC UA server certificate in {pki_dir}: {message}")]
    Certificate { pki_dir: String, message: String },
    #[error("OPC UA server: {0}")]
    OpcUa(String),
}
