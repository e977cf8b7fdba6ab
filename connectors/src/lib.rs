//! Sources and sinks of IronBridge and the records that flow between them.
//!
//! Data moves one way: a source produces [`Scan`]s (one poll of one machine),
//! the gateway turns scans into model inputs, the inference service answers
//! with [`Prediction`]s, and sinks receive both.

pub mod backoff;
pub mod error;
pub mod influx;
pub mod modbus;
pub mod scan;
pub mod validation;

pub use backoff::{Backoff, BackoffConfig};
pub use error::ConnectorError;
pub use scan::{Prediction, Quality, Record, Scan, TagReading, TagValue};
pub use validation::Problem;
