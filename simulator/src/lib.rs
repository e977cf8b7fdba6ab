//! Simulated retrofitted machines for IronBridge.
//!
//! - A centrifugal pump whose bearing wears out ([`process`]), exposed as a
//!   read-only Modbus TCP device ([`server`]) with a register map of mixed
//!   types and byte orders ([`registers`]), and recordable faster than real
//!   time as training data ([`record`](mod@record)).
//! - A machine-tool spindle whose bearings degrade ([`spindle`]), exposed
//!   as an OPC UA server with a ground-truth label ([`opcua_machine`]),
//!   recordable the same way ([`record_spindle`]).
//! - Network faults for both on a schedule ([`faults`]).
//! - Register banks ([`register_bank`]): bare f32 holding registers, new on
//!   every read, the load of the performance benchmark.
//!
//! Start it in-process (e.g. from a test):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ironbridge_simulator::{SimOptions, Simulator};
//! use tokio_util::sync::CancellationToken;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let address = listener.local_addr()?;
//! let sim = Simulator::new(SimOptions { seed: 7, unit_id: 1, ..SimOptions::default() })?;
//! let cancel = CancellationToken::new();
//! let task = tokio::spawn({
//!     let (sim, cancel) = (sim.clone(), cancel.clone());
//!     async move { sim.serve(listener, cancel).await }
//! });
//! // ... poll `address` with a Modbus client; `sim.snapshot()` is the truth ...
//! cancel.cancel();
//! task.await??;
//! # Ok(()) }
//! ```

pub mod error;
pub mod faults;
pub mod opcua_machine;
pub mod process;
pub mod record;
pub mod register_bank;
pub mod registers;
pub mod server;
pub mod spindle;

pub use error::SimError;
pub use faults::{Fault, FaultSchedule, LinkStatus, Protocol, Window, SCHEDULE_HELP};
pub use opcua_machine::{
    serve_opcua, EngineeringUnit, OpcUaMachine, OpcUaOptions, OpcUaStatus, OpcUaUser,
    SpindleSnapshot, SpindleVariable, ValueKind, DEFAULT_MAX_SESSIONS, NAMESPACE_URI,
    PADDING_NAMESPACE_URI,
};
pub use process::{Process, ProcessConfig, ProcessState};
pub use record::{
    record, record_spindle, RecordOptions, RecordSummary, SpindleRecordOptions, CSV_HEADER,
    SPINDLE_COLUMNS, SPINDLE_CSV_HEADER,
};
pub use register_bank::{bank_value, serve_register_banks, MAX_BANK_F32};
pub use registers::{
    ByteOrder, ClientReadings, RegisterImage, Table, TagSpec, ValueType, REGISTER_MAP,
};
pub use server::{serve, SimOptions, Simulator, Snapshot};
pub use spindle::{FaultState, Spindle, SpindleConfig, SpindleState};
