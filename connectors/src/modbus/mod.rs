//! Modbus sources (TCP, RTU on serial lines, RTU over TCP): one poller per
//! machine, yielding [`Scan`](crate::Scan)s.
//!
//! - [`config`]: the machine and its tags, with validation that lists every problem;
//! - [`decode`]: registers and bits to typed values (byte orders, scale, offset);
//! - [`plan`]: which reads a poll makes (neighbouring tags share one request);
//! - [`link`]: how a poller reaches its unit (own TCP connection or shared bus);
//! - [`bus`]: an RTU line shared by several units, one request at a time;
//! - [`source`]: the poller itself (timeouts, backoff, exceptions, counters),
//!   one code path for every transport.

pub mod bus;
pub mod config;
pub mod decode;
pub mod link;
pub mod plan;
pub mod source;

pub use crate::backoff::Backoff;
pub use config::{
    shared_line_problems, BackoffConfig, ByteOrder, DataType, LineMember, ModbusMachineConfig,
    ModbusRtuMachineConfig, ModbusTagConfig, ModbusUnitConfig, Parity, RegisterKind,
    SerialLineSettings,
};
pub use decode::{
    apply_scaling, apply_scaling_in, decode_bit, decode_registers, scaling_form, DecodeFailure,
    ScalingForm,
};
pub use plan::{BlockRead, PlannedTag, ReadPlan};
pub use source::{ModbusSource, ModbusTcpSource};
