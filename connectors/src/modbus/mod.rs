//! Modbus TCP source: polls one machine per task and yields [`Scan`](crate::Scan)s.
//!
//! - [`config`]: the machine and its tags, with validation that lists every problem;
//! - [`decode`]: registers and bits to typed values (byte orders, scale, offset);
//! - [`plan`]: which reads a poll makes (neighbouring tags share one request);
//! - [`source`]: the poller itself (timeouts, reconnects, counters).

pub mod config;
pub mod decode;
pub mod plan;
pub mod source;

pub use crate::backoff::Backoff;
pub use config::{
    BackoffConfig, ByteOrder, DataType, ModbusMachineConfig, ModbusTagConfig, RegisterKind,
};
pub use decode::{apply_scaling, decode_bit, decode_registers, DecodeFailure};
pub use plan::{BlockRead, PlannedTag, ReadPlan};
pub use source::ModbusTcpSource;
