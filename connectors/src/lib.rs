//! Sources and sinks of IronBridge and the records that flow between them.
//!
//! Every source kind (`modbus`, `opcua`) has the same inner shape and
//! implements [`Source`]; [`SourceConfig`] builds one from a machine's
//! configuration.
//!
//! Data moves one way: a source produces [`Scan`]s (one poll of one machine),
//! the gateway turns scans into model inputs, the inference service answers
//! with [`Prediction`]s, and sinks receive both.

pub mod backoff;
pub mod error;
pub mod influx;
pub mod modbus;
pub mod opcua;
pub mod poll_clock;
pub mod scan;
pub mod source;
pub mod validation;

pub use backoff::{Backoff, BackoffConfig};
pub use error::ConnectorError;
pub use poll_clock::PollClock;
pub use scan::{
    DriftRecord, GateRecord, GatewayInfoRecord, ModelEventRecord, Prediction, Quality, Record,
    Scan, SourceStatus, TagReading, TagValue,
};
pub use source::{Source, SourceConfig, SourceStats};
pub use validation::Problem;
