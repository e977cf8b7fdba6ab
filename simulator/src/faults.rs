//! Faults a simulated machine can be told to show: a link that drops, slow
//! replies, Modbus exceptions, an OPC UA server that restarts with its
//! namespaces reordered, and an OPC UA node that vanishes.
//!
//! Faults are scheduled in wall-clock seconds since the machine started
//! serving (not simulated time: they are about the network, and a test with
//! `time_scale = 3600` still wants a 2 s drop to last 2 s).
//!
//! # Schedule format
//!
//! A TOML file (`--faults FILE`) holds one `[[fault]]` table per fault; the
//! same keys can be given on the command line as
//! `--fault KIND:key=value,key=value` (repeatable). Unknown kinds and keys
//! are errors. Times are seconds (fractions allowed), counted from the start
//! of serving.
//!
//! Timing keys shared by the kinds that last a while:
//! `at_s` (first start), `for_s` (duration of each occurrence) and
//! `every_s` (period; without it the fault happens once). A fault with
//! neither `every_s` nor `for_s` lasts from `at_s` on.
//!
//! | kind | protocols | keys |
//! |---|---|---|
//! | `drop` | both | `for_s` (required), `every_s`, `at_s` (default `every_s`, else required). Modbus: the listener closes and every client connection is closed; new connections are refused until the drop ends. OPC UA: the server stops (sessions close, connections are refused) and comes back with the same namespaces. |
//! | `slow` | Modbus | `delay_ms` (required), `unit_id` (only requests to this unit id), `at_s` (default 0), `for_s`, `every_s`. Every matching reply is delayed; a connection answers its requests in order, so later requests wait too. |
//! | `exception` | Modbus | `code` (required, 1–255, e.g. 2 IllegalDataAddress, 4 ServerDeviceFailure, 6 ServerDeviceBusy), `table` (`holding`, `input`, `coil`, `discrete_input`; default: every table), `first`, `last` (inclusive address range; default: the whole table), `percent` (share of matching requests, default 100; drawn from a generator seeded by the machine's seed), `unit_id`, `at_s`, `for_s`, `every_s`. A read that touches the range is answered with the exception. |
//! | `restart` | OPC UA | `at_s` (default `every_s`, else required), `every_s`, `down_s` (default 0). The server stops and starts again after `down_s` with one padding namespace more or less before the machine's, so the machine's namespace index changes while its string NodeIds stay. |
//! | `delete-node` | OPC UA | `node` (string NodeId, e.g. `Spindle.Vibration`, with or without `s=`), `at_s` (required). The variable (and its properties) disappears for good, also across restarts. |
//!
//! Example (`faults.toml`):
//!
//! ```toml
//! # Modbus: the link drops for 2 s every 30 s, starting at 10 s.
//! [[fault]]
//! kind = "drop"
//! at_s = 10
//! for_s = 2
//! every_s = 30
//!
//! # Modbus: holding 100..110 answer IllegalDataAddress; 5 % of all reads get busy.
//! [[fault]]
//! kind = "exception"
//! table = "holding"
//! first = 100
//! last = 110
//! code = 2
//!
//! [[fault]]
//! kind = "exception"
//! code = 6
//! percent = 5
//!
//! # Modbus: replies to unit 1 take 800 ms between 60 s and 90 s.
//! [[fault]]
//! kind = "slow"
//! delay_ms = 800
//! unit_id = 1
//! at_s = 60
//! for_s = 30
//! ```
//!
//! and on the command line:
//! `--fault drop:at_s=10,for_s=2,every_s=30 --fault restart:at_s=20,down_s=1`
//! `--fault delete-node:node=Spindle.Vibration,at_s=45`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpListener;

use crate::error::SimError;
use crate::registers::Table;

/// The schedule format in brief, for `--help`.
pub const SCHEDULE_HELP: &str = "\
Fault schedule: a TOML file (--faults FILE) with one [[fault]] table per fault,
or --fault KIND:key=value,... (repeatable). Times are wall-clock seconds since
serving started. Timing keys: at_s (first start), for_s (duration), every_s
(period; without it: once). Kinds:
  drop         both    for_s, every_s, at_s (default every_s): close every
                       connection and refuse new ones during the window
  slow         Modbus  delay_ms, unit_id, at_s (default 0), for_s, every_s:
                       delay every matching reply
  exception    Modbus  code (e.g. 2, 4, 6), table (holding|input|coil|
                       discrete_input), first, last, percent (default 100),
                       unit_id, at_s, for_s, every_s: answer matching reads
                       with the exception
  restart      OPC UA  at_s (default every_s), every_s, down_s (default 0):
                       restart with the machine's namespace at another index
  delete-node  OPC UA  node (e.g. Spindle.Vibration), at_s: delete the variable
Example: --fault drop:at_s=10,for_s=2,every_s=30 --fault exception:table=holding,first=100,last=110,code=2
docs/simulator.md has the file format with an example.";

/// Which machine a schedule is for; each protocol supports some kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    ModbusTcp,
    OpcUa,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::ModbusTcp => "Modbus TCP",
            Protocol::OpcUa => "OPC UA",
        }
    }
}

/// When a fault is active: from `at_s` for `for_s` seconds, repeated every
/// `every_s` seconds. Without `for_s` an occurrence never ends; without
/// `every_s` there is one occurrence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub at_s: f64,
    pub for_s: Option<f64>,
    pub every_s: Option<f64>,
}

impl Window {
    /// Always active.
    pub const ALWAYS: Window = Window {
        at_s: 0.0,
        for_s: None,
        every_s: None,
    };

    /// Start of the `index`-th occurrence (`None` past the last one).
    pub fn start(&self, index: u64) -> Option<f64> {
        match self.every_s {
            // Computed from the index, never by adding periods up, so that
            // rounding cannot make an occurrence happen twice.
            Some(every) => Some(self.at_s + index as f64 * every),
            None if index == 0 => Some(self.at_s),
            None => None,
        }
    }

    /// Whether the fault is active at `t_s`.
    pub fn contains(&self, t_s: f64) -> bool {
        if t_s < self.at_s {
            return false;
        }
        let Some(duration) = self.for_s else {
            return true;
        };
        let since_start = match self.every_s {
            Some(every) => (t_s - self.at_s) % every,
            None => t_s - self.at_s,
        };
        since_start < duration
    }

    fn validate(&self, what: &str) -> Result<(), String> {
        let positive = |name: &str, value: Option<f64>| match value {
            Some(v) if !(v.is_finite() && v > 0.0) => {
                Err(format!("{what}: {name} must be a positive number, got {v}"))
            }
            _ => Ok(()),
        };
        if !(self.at_s.is_finite() && self.at_s >= 0.0) {
            return Err(format!("{what}: at_s must be 0 or more, got {}", self.at_s));
        }
        positive("for_s", self.for_s)?;
        positive("every_s", self.every_s)?;
        if let (Some(duration), Some(every)) = (self.for_s, self.every_s) {
            if duration >= every {
                return Err(format!(
                    "{what}: for_s ({duration}) must be shorter than every_s ({every})"
                ));
            }
        }
        Ok(())
    }
}

/// One fault, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The link goes down during each occurrence of the window.
    Drop { window: Window },
    /// Replies (to `unit_id` only, if set) are delayed while active.
    Slow {
        delay: Duration,
        unit_id: Option<u8>,
        window: Window,
    },
    /// Reads touching `first..=last` of `table` (any table if `None`) are
    /// answered with exception `code`, for `percent` % of them.
    Exception {
        code: u8,
        table: Option<Table>,
        first: u16,
        last: u16,
        percent: f64,
        unit_id: Option<u8>,
        window: Window,
    },
    /// The OPC UA server stops at each occurrence and starts again after
    /// `window.for_s` (0 if `None`) with its namespaces reordered.
    Restart { window: Window },
    /// The OPC UA variable with string NodeId `node` is deleted at `at_s`.
    DeleteNode { node: String, at_s: f64 },
}

impl Fault {
    /// Parses one `KIND:key=value,...` command-line fault.
    pub fn parse_cli(spec: &str) -> Result<Self, SimError> {
        let invalid = |reason: String| SimError::Faults(format!("--fault {spec:?}: {reason}"));
        let (kind, rest) = match spec.split_once(':') {
            Some((kind, rest)) => (kind.trim(), rest),
            None => (spec.trim(), ""),
        };
        let mut table = toml::Table::new();
        table.insert("kind".into(), toml::Value::String(kind.to_string()));
        for pair in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| invalid(format!("{pair:?} is not key=value")))?;
            let key = key.trim();
            if table.contains_key(key) {
                return Err(invalid(format!("{key} is given twice")));
            }
            table.insert(key.to_string(), cli_value(value.trim()));
        }
        let raw: RawFault = table.try_into().map_err(|e| invalid(e.message().into()))?;
        raw.validate().map_err(invalid)
    }

    /// Kinds this protocol cannot show are refused rather than ignored.
    fn supported_by(&self, protocol: Protocol) -> bool {
        match self {
            Fault::Drop { .. } => true,
            Fault::Slow { .. } | Fault::Exception { .. } => protocol == Protocol::ModbusTcp,
            Fault::Restart { .. } | Fault::DeleteNode { .. } => protocol == Protocol::OpcUa,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Fault::Drop { .. } => "drop",
            Fault::Slow { .. } => "slow",
            Fault::Exception { .. } => "exception",
            Fault::Restart { .. } => "restart",
            Fault::DeleteNode { .. } => "delete-node",
        }
    }
}

/// A number, a boolean, or else a string: what a TOML file would have held.
fn cli_value(text: &str) -> toml::Value {
    if let Ok(i) = text.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(f) = text.parse::<f64>() {
        toml::Value::Float(f)
    } else if let Ok(b) = text.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(text.to_string())
    }
}

/// Every fault a machine shows. Empty by default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultSchedule {
    faults: Vec<Fault>,
}

impl FaultSchedule {
    pub fn new(faults: Vec<Fault>) -> Self {
        Self { faults }
    }

    /// Parses a schedule file's text (see the [module docs](self)).
    pub fn from_toml(text: &str) -> Result<Self, SimError> {
        let file: RawScheduleFile =
            toml::from_str(text).map_err(|e| SimError::Faults(e.to_string()))?;
        let faults = file
            .fault
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                raw.validate()
                    .map_err(|reason| SimError::Faults(format!("fault[{i}]: {reason}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { faults })
    }

    /// Reads and parses a schedule file.
    pub fn from_file(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::ReadFaults {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            SimError::Faults(message) => SimError::Faults(format!("{}: {message}", path.display())),
            other => other,
        })
    }

    pub fn push(&mut self, fault: Fault) {
        self.faults.push(fault);
    }

    pub fn faults(&self) -> &[Fault] {
        &self.faults
    }

    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    /// Refuses faults the protocol cannot show (e.g. a Modbus exception on
    /// the OPC UA machine).
    pub fn check_protocol(&self, protocol: Protocol) -> Result<(), SimError> {
        let unsupported: Vec<_> = self
            .faults
            .iter()
            .filter(|f| !f.supported_by(protocol))
            .map(Fault::kind)
            .collect();
        if unsupported.is_empty() {
            Ok(())
        } else {
            Err(SimError::Faults(format!(
                "the {} machine cannot show fault kind(s) {}",
                protocol.name(),
                unsupported.join(", ")
            )))
        }
    }

    /// The longest delay of the slow faults active at `t_s` for `unit_id`.
    pub fn reply_delay(&self, t_s: f64, unit_id: u8) -> Option<Duration> {
        self.faults
            .iter()
            .filter_map(|fault| match fault {
                Fault::Slow {
                    delay,
                    unit_id: only,
                    window,
                } if only.is_none_or(|u| u == unit_id) && window.contains(t_s) => Some(*delay),
                _ => None,
            })
            .max()
    }

    /// The exception faults active at `t_s` for a read of `count` items at
    /// `address` of `table`, as (code, percent).
    pub fn exceptions_for(
        &self,
        t_s: f64,
        unit_id: u8,
        table: Table,
        address: u16,
        count: u16,
    ) -> impl Iterator<Item = (u8, f64)> + '_ {
        let read_last = u32::from(address) + u32::from(count.max(1)) - 1;
        self.faults.iter().filter_map(move |fault| match fault {
            Fault::Exception {
                code,
                table: only_table,
                first,
                last,
                percent,
                unit_id: only_unit,
                window,
            } => {
                let touches =
                    u32::from(address) <= u32::from(*last) && u32::from(*first) <= read_last;
                let applies = only_table.is_none_or(|t| t == table)
                    && only_unit.is_none_or(|u| u == unit_id)
                    && touches
                    && window.contains(t_s);
                applies.then_some((*code, *percent))
            }
            _ => None,
        })
    }

    /// The point events (drop starts, restarts, deletions) in time order.
    pub(crate) fn timeline(&self) -> Timeline {
        let sources = self
            .faults
            .iter()
            .filter_map(|fault| {
                let (window, event) = match fault {
                    Fault::Drop { window } => (
                        *window,
                        Event::Drop {
                            for_s: window.for_s.unwrap_or(0.0),
                        },
                    ),
                    Fault::Restart { window } => (
                        *window,
                        Event::Restart {
                            down_s: window.for_s.unwrap_or(0.0),
                        },
                    ),
                    Fault::DeleteNode { node, at_s } => (
                        Window {
                            at_s: *at_s,
                            for_s: None,
                            every_s: None,
                        },
                        Event::DeleteNode(node.clone()),
                    ),
                    Fault::Slow { .. } | Fault::Exception { .. } => return None,
                };
                Some(EventSource {
                    window,
                    event,
                    next_index: 0,
                })
            })
            .collect();
        Timeline { sources }
    }
}

/// Something that happens at an instant.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// The link goes down for `for_s` seconds.
    Drop {
        for_s: f64,
    },
    /// The server restarts after `down_s` seconds.
    Restart {
        down_s: f64,
    },
    DeleteNode(String),
}

#[derive(Debug, Clone)]
struct EventSource {
    window: Window,
    event: Event,
    next_index: u64,
}

/// The pending occurrences of every point event. Each source counts its
/// occurrences, so an event is handed out exactly once however late it is
/// asked for.
#[derive(Debug, Clone)]
pub(crate) struct Timeline {
    sources: Vec<EventSource>,
}

impl Timeline {
    /// When the earliest pending event happens.
    pub(crate) fn next_at(&self) -> Option<f64> {
        self.sources
            .iter()
            .filter_map(|s| s.window.start(s.next_index))
            .min_by(f64::total_cmp)
    }

    /// Takes the earliest pending event if it happens at or before `t_s`.
    pub(crate) fn pop_due(&mut self, t_s: f64) -> Option<(f64, Event)> {
        let (index, at) = self
            .sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.window.start(s.next_index).map(|at| (i, at)))
            .min_by(|a, b| a.1.total_cmp(&b.1))?;
        if at > t_s {
            return None;
        }
        let source = &mut self.sources[index];
        source.next_index += 1;
        Some((at, source.event.clone()))
    }
}

/// Whether a machine's link is up, and how often it went down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// The listener is bound and connections are served.
    pub up: bool,
    /// Drops begun so far (a drop that starts while the link is already
    /// down only lengthens the outage and is counted too).
    pub drops: u64,
}

/// Seconds since serving started: the time base of every fault.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FaultClock {
    origin: tokio::time::Instant,
}

impl FaultClock {
    pub(crate) fn start() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }

    pub(crate) fn now_s(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    /// Sleeps until `t_s` on this clock; forever for `None` (or a time too
    /// far away to represent).
    pub(crate) async fn sleep_until_s(&self, t_s: Option<f64>) {
        let deadline = t_s
            .and_then(|t| Duration::try_from_secs_f64(t.max(0.0)).ok())
            .and_then(|d| self.origin.checked_add(d));
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    }
}

/// Binds `addr` again after a drop or restart. The port was ours a moment
/// ago, but another socket (e.g. a client's ephemeral port) may hold it
/// briefly, so binding is retried for a few seconds before giving up.
pub(crate) async fn rebind(addr: SocketAddr) -> Result<TcpListener, SimError> {
    const ATTEMPTS: u32 = 50;
    let mut attempt = 1;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(source) if attempt >= ATTEMPTS => {
                return Err(SimError::Bind {
                    addr: addr.to_string(),
                    source,
                })
            }
            Err(err) => {
                tracing::warn!(%addr, %err, attempt, "cannot bind again yet; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// `[[fault]]` tables of a schedule file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheduleFile {
    #[serde(default)]
    fault: Vec<RawFault>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum RawFault {
    Drop(RawDrop),
    Slow(RawSlow),
    Exception(RawException),
    Restart(RawRestart),
    DeleteNode(RawDeleteNode),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrop {
    at_s: Option<f64>,
    for_s: f64,
    every_s: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlow {
    delay_ms: u64,
    unit_id: Option<u8>,
    #[serde(default)]
    at_s: f64,
    for_s: Option<f64>,
    every_s: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawTable {
    Holding,
    Input,
    Coil,
    DiscreteInput,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawException {
    code: u8,
    table: Option<RawTable>,
    first: Option<u16>,
    last: Option<u16>,
    percent: Option<f64>,
    unit_id: Option<u8>,
    #[serde(default)]
    at_s: f64,
    for_s: Option<f64>,
    every_s: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestart {
    at_s: Option<f64>,
    every_s: Option<f64>,
    #[serde(default)]
    down_s: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeleteNode {
    node: String,
    at_s: f64,
}

/// A repeating fault starts after its first period unless told otherwise.
fn first_start(kind: &str, at_s: Option<f64>, every_s: Option<f64>) -> Result<f64, String> {
    at_s.or(every_s)
        .ok_or_else(|| format!("{kind}: at_s or every_s is required"))
}

impl RawFault {
    fn validate(self) -> Result<Fault, String> {
        let fault = match self {
            RawFault::Drop(raw) => {
                let window = Window {
                    at_s: first_start("drop", raw.at_s, raw.every_s)?,
                    for_s: Some(raw.for_s),
                    every_s: raw.every_s,
                };
                window.validate("drop")?;
                Fault::Drop { window }
            }
            RawFault::Slow(raw) => {
                let window = Window {
                    at_s: raw.at_s,
                    for_s: raw.for_s,
                    every_s: raw.every_s,
                };
                window.validate("slow")?;
                Fault::Slow {
                    delay: Duration::from_millis(raw.delay_ms),
                    unit_id: raw.unit_id,
                    window,
                }
            }
            RawFault::Exception(raw) => {
                let window = Window {
                    at_s: raw.at_s,
                    for_s: raw.for_s,
                    every_s: raw.every_s,
                };
                window.validate("exception")?;
                if raw.code == 0 {
                    return Err("exception: code must be 1 to 255".into());
                }
                let percent = raw.percent.unwrap_or(100.0);
                if !(percent > 0.0 && percent <= 100.0) {
                    return Err(format!(
                        "exception: percent must be in (0, 100], got {percent}"
                    ));
                }
                let first = raw.first.unwrap_or(0);
                let last = raw.last.unwrap_or(u16::MAX);
                if first > last {
                    return Err(format!("exception: first ({first}) is after last ({last})"));
                }
                Fault::Exception {
                    code: raw.code,
                    table: raw.table.map(|t| match t {
                        RawTable::Holding => Table::Holding,
                        RawTable::Input => Table::Input,
                        RawTable::Coil => Table::Coil,
                        RawTable::DiscreteInput => Table::DiscreteInput,
                    }),
                    first,
                    last,
                    percent,
                    unit_id: raw.unit_id,
                    window,
                }
            }
            RawFault::Restart(raw) => {
                if !(raw.down_s.is_finite() && raw.down_s >= 0.0) {
                    return Err(format!(
                        "restart: down_s must be 0 or more, got {}",
                        raw.down_s
                    ));
                }
                let window = Window {
                    at_s: first_start("restart", raw.at_s, raw.every_s)?,
                    for_s: (raw.down_s > 0.0).then_some(raw.down_s),
                    every_s: raw.every_s,
                };
                window.validate("restart")?;
                Fault::Restart { window }
            }
            RawFault::DeleteNode(raw) => {
                let node = raw.node.trim();
                let node = node.strip_prefix("s=").unwrap_or(node).to_string();
                if node.is_empty() {
                    return Err("delete-node: node is empty".into());
                }
                Window {
                    at_s: raw.at_s,
                    for_s: None,
                    every_s: None,
                }
                .validate("delete-node")?;
                Fault::DeleteNode {
                    node,
                    at_s: raw.at_s,
                }
            }
        };
        Ok(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(spec: &str) -> Fault {
        Fault::parse_cli(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    #[test]
    fn cli_and_file_give_the_same_faults() {
        let file = FaultSchedule::from_toml(
            r#"
            [[fault]]
            kind = "drop"
            at_s = 10
            for_s = 2.5
            every_s = 30

            [[fault]]
            kind = "exception"
            table = "holding"
            first = 100
            last = 110
            code = 2

            [[fault]]
            kind = "slow"
            delay_ms = 800
            unit_id = 1

            [[fault]]
            kind = "restart"
            every_s = 20
            down_s = 1

            [[fault]]
            kind = "delete-node"
            node = "s=Spindle.Vibration"
            at_s = 45
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let from_cli = FaultSchedule::new(vec![
            cli("drop:at_s=10,for_s=2.5,every_s=30"),
            cli("exception:table=holding,first=100,last=110,code=2"),
            cli("slow:delay_ms=800,unit_id=1"),
            cli("restart:every_s=20,down_s=1"),
            cli("delete-node:node=Spindle.Vibration,at_s=45"),
        ]);
        assert_eq!(file, from_cli);
        assert_eq!(
            file.faults()[3],
            Fault::Restart {
                window: Window {
                    at_s: 20.0,
                    for_s: Some(1.0),
                    every_s: Some(20.0)
                }
            }
        );
    }

    #[test]
    fn mistakes_are_refused_with_the_reason() {
        for (spec, expected) in [
            ("drop:for_s=2", "at_s or every_s is required"),
            ("drop:at_s=1", "for_s"),
            ("drop:at_s=1,for_s=5,every_s=5", "shorter than every_s"),
            ("drop:at_s=1,for_s=1,colour=red", "colour"),
            ("explode:at_s=1", "explode"),
            ("exception:code=0", "code must be"),
            ("exception:code=2,percent=0", "percent"),
            ("exception:code=2,first=9,last=3", "after last"),
            ("exception:code=2,table=registers", "registers"),
            ("slow:delay_ms=-5", "delay_ms"),
            ("drop:at_s", "not key=value"),
            ("drop:at_s=1,at_s=2", "twice"),
        ] {
            let message = match Fault::parse_cli(spec) {
                Ok(fault) => panic!("{spec} was accepted as {fault:?}"),
                Err(e) => e.to_string(),
            };
            assert!(message.contains(expected), "{spec}: {message}");
        }
        let file_error = FaultSchedule::from_toml("[[fault]]\nkind = \"drop\"\nfor_s = 1\n");
        assert!(
            matches!(&file_error, Err(SimError::Faults(m)) if m.contains("fault[0]")),
            "{file_error:?}"
        );
        assert!(FaultSchedule::from_toml("[[faults]]\nkind = \"drop\"\n").is_err());
    }

    #[test]
    fn each_protocol_refuses_the_kinds_it_cannot_show() {
        let modbus_only = FaultSchedule::new(vec![cli("exception:code=6")]);
        assert!(modbus_only.check_protocol(Protocol::ModbusTcp).is_ok());
        assert!(modbus_only.check_protocol(Protocol::OpcUa).is_err());
        let opcua_only = FaultSchedule::new(vec![cli("restart:at_s=3")]);
        assert!(opcua_only.check_protocol(Protocol::OpcUa).is_ok());
        assert!(opcua_only.check_protocol(Protocol::ModbusTcp).is_err());
        let both = FaultSchedule::new(vec![cli("drop:every_s=3,for_s=1")]);
        assert!(both.check_protocol(Protocol::OpcUa).is_ok());
        assert!(both.check_protocol(Protocol::ModbusTcp).is_ok());
    }

    #[test]
    fn windows_repeat_from_their_first_start() {
        let window = Window {
            at_s: 10.0,
            for_s: Some(2.0),
            every_s: Some(30.0),
        };
        let active: Vec<f64> = [0.0, 9.9, 10.0, 11.9, 12.0, 39.9, 40.0, 41.5, 42.0]
            .into_iter()
            .filter(|&t| window.contains(t))
            .collect();
        assert_eq!(active, [10.0, 11.9, 40.0, 41.5]);
        assert_eq!(window.start(0), Some(10.0));
        assert_eq!(window.start(3), Some(100.0));
        let once = Window {
            at_s: 5.0,
            for_s: None,
            every_s: None,
        };
        assert!(!once.contains(4.0) && once.contains(5.0) && once.contains(1e9));
        assert_eq!(once.start(1), None);
        assert!(Window::ALWAYS.contains(0.0));
    }

    #[test]
    fn slow_and_exception_faults_match_their_requests() {
        let schedule = FaultSchedule::new(vec![
            cli("slow:delay_ms=100,unit_id=2"),
            cli("slow:delay_ms=300,unit_id=2,at_s=5,for_s=1"),
            cli("exception:table=holding,first=100,last=110,code=2"),
            cli("exception:code=6,percent=50,at_s=1"),
        ]);
        assert_eq!(schedule.reply_delay(0.0, 1), None);
        assert_eq!(
            schedule.reply_delay(0.0, 2),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            schedule.reply_delay(5.5, 2),
            Some(Duration::from_millis(300))
        );

        let at = |t: f64, table: Table, address: u16, count: u16| -> Vec<(u8, f64)> {
            schedule
                .exceptions_for(t, 1, table, address, count)
                .collect()
        };
        assert_eq!(at(0.0, Table::Holding, 95, 5), []);
        assert_eq!(at(0.0, Table::Holding, 95, 6), [(2, 100.0)]);
        assert_eq!(at(0.0, Table::Holding, 110, 1), [(2, 100.0)]);
        assert_eq!(at(0.0, Table::Holding, 111, 10), []);
        assert_eq!(at(0.0, Table::Input, 100, 1), []);
        assert_eq!(at(2.0, Table::Input, 0, 1), [(6, 50.0)]);
    }

    #[test]
    fn the_timeline_hands_out_each_occurrence_once_in_order() {
        let schedule = FaultSchedule::new(vec![
            cli("drop:at_s=1,for_s=0.5,every_s=2"),
            cli("restart:at_s=2,down_s=0.25"),
            cli("delete-node:node=Spindle.Speed,at_s=4"),
            cli("slow:delay_ms=5"),
        ]);
        let mut timeline = schedule.timeline();
        assert_eq!(timeline.next_at(), Some(1.0));
        assert_eq!(timeline.pop_due(0.5), None);
        let mut seen = Vec::new();
        while let Some(event) = timeline.pop_due(5.5) {
            seen.push(event);
        }
        assert_eq!(
            seen,
            [
                (1.0, Event::Drop { for_s: 0.5 }),
                (2.0, Event::Restart { down_s: 0.25 }),
                (3.0, Event::Drop { for_s: 0.5 }),
                (4.0, Event::DeleteNode("Spindle.Speed".into())),
                (5.0, Event::Drop { for_s: 0.5 }),
            ]
        );
        assert_eq!(timeline.next_at(), Some(7.0));
    }
}
