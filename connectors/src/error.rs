//! The one error type of this crate.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConnectorError {
    /// The link to a device is broken or timed out (reconnect).
    #[error("link to {machine} failed: {reason}")]
    Link { machine: String, reason: String },
    /// The device answered, with a Modbus exception (keep the link).
    #[error("{machine} answered {function} at address {address} with exception {exception}")]
    DeviceException {
        machine: String,
        function: &'static str,
        address: u16,
        exception: String,
    },
    #[error("InfluxDB write failed: {0}")]
    InfluxWrite(String),
    /// The disk spool's folder cannot be used (not its content: damage is
    /// quarantined, never a reason to fail).
    #[error("InfluxDB spool folder {dir} cannot be used: {reason}")]
    Spool { dir: String, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A record that line protocol cannot carry (e.g. a line break in a
    /// machine name, a timestamp beyond 2262).
    #[error("record cannot be written as line protocol: {0}")]
    Unencodable(String),
}
