//! InfluxDB sink: scans and predictions as line protocol (see README.md's
//! contract), batched, buffered in memory through outages, written over the
//! InfluxDB v2 or 1.x write API.

mod batch;
pub mod buffer;
pub mod config;
pub mod line_protocol;
pub mod sink;
pub mod spool;
pub mod writer;

pub use batch::BatchBody;
pub use config::{BackoffConfig, BufferKind, InfluxApi, InfluxSinkConfig, SpoolFsync};
pub use sink::{InfluxSink, InfluxSinkStats, POINTS_DROPPED, POINTS_DROPPED_HELP};
pub use writer::{InfluxWriter, LineWriter, WriteError};
