//! The IronBridge gateway: configuration, wiring, supervision, the OPC UA
//! server and the (optional) Modbus TCP server of predictions. `main.rs` only parses the command line and calls into this library.
//!
//! Data moves one way (see `runtime`): sources → fan-out → feature assembly →
//! inference → sinks (InfluxDB, OPC UA, Modbus registers).

pub mod cli;
pub mod config;
pub mod discover;
pub mod error;
pub mod features;
pub mod http;
pub mod mlflow;
pub mod modbus_server;
pub mod model_cli;
pub mod model_verify;
pub mod opcua_server;
pub mod runtime;
pub mod scan_layout;
pub mod shutdown;
pub mod telemetry;

pub use error::GatewayError;
pub use runtime::Gateway;
