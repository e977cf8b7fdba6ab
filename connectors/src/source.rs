//! The one shape every source kind has, so the gateway wires machines without
//! knowing their protocol.
//!
//! A source kind is a folder below `connectors/` (`modbus/`, `opcua/`) with
//! its configuration, its planning/decoding where it applies, and a type that
//! implements [`Source`]. [`SourceConfig`] turns a validated machine
//! configuration into a boxed source; nothing else in the gateway names a
//! protocol.

use std::sync::Arc;

use futures::future::BoxFuture;
use ironbridge_metrics::{Counter, Gauge, MetricsRegistry};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::ConnectorError;
use crate::modbus::{
    shared_line_problems, LineMember, ModbusMachineConfig, ModbusRtuMachineConfig, ModbusSource,
};
use crate::opcua::{OpcUaMachineConfig, OpcUaSource};
use crate::poll_clock::PollClock;
use crate::scan::Scan;
use crate::validation::Problem;

/// A machine reader. `run` produces [`Scan`]s until `cancel` fires or the
/// receiver is gone; it retries a lost link by itself (with backoff) and
/// reports an unreachable machine as one scan with every tag Bad per outage.
pub trait Source: Send + 'static {
    /// The machine's name (the `machine` tag and the OPC UA folder).
    fn machine(&self) -> &str;
    /// Every tag this source can deliver, in configuration order.
    fn tag_names(&self) -> Vec<Arc<str>>;
    /// Counters, readable while the source runs.
    fn stats(&self) -> SourceStats;
    /// Runs the source. Sending awaits a free slot in `out` (policy: block).
    fn run(
        self: Box<Self>,
        out: mpsc::Sender<Scan>,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, ()>;
}

/// Counters every source keeps, whatever its protocol: handles of the
/// gateway's metrics facade (`ironbridge_metrics`), registered with the
/// machine's name by [`SourceStats::register`]. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SourceStats {
    scans: Counter,
    link_failures: Counter,
    reconnects: Counter,
    outages: Counter,
    device_errors: Counter,
    notifications_dropped: Counter,
    polls_skipped: Counter,
    /// 1 while the machine answers (a scan got through, or a session is
    /// open).
    up: Gauge,
}

impl SourceStats {
    /// Puts these counters into `registry` as the series of `machine`.
    pub fn register(&self, registry: &MetricsRegistry, machine: &str) {
        let labels = || vec![("machine", machine.to_string())];
        let counters: [(&'static str, &'static str, &Counter); 7] = [
            (
                "ironbridge_source_scans",
                "Scans delivered with data from the machine.",
                &self.scans,
            ),
            (
                "ironbridge_source_link_failures",
                "Connection attempts or open links that failed.",
                &self.link_failures,
            ),
            (
                "ironbridge_source_reconnects",
                "Links re-established after one was lost.",
                &self.reconnects,
            ),
            (
                "ironbridge_source_outages",
                "Periods of unreachability (once per outage, not per retry).",
                &self.outages,
            ),
            (
                "ironbridge_source_device_errors",
                "Answers without a usable value (Modbus exceptions, OPC UA bad statuses).",
                &self.device_errors,
            ),
            (
                "ironbridge_source_notifications_dropped",
                "OPC UA notifications dropped because the gateway did not take them fast enough.",
                &self.notifications_dropped,
            ),
            (
                "ironbridge_source_polls_skipped",
                "Poll ticks that got no poll because polls ran late: the device answers slower \
                 than poll_interval_ms, or the gateway is short of CPU ([runtime] worker_threads).",
                &self.polls_skipped,
            ),
        ];
        for (name, help, counter) in counters {
            registry.add_counter(name, help, labels(), counter);
        }
        registry.add_gauge(
            "ironbridge_source_up",
            "1 while the machine answers, 0 while it does not.",
            labels(),
            &self.up,
        );
    }

    /// Scans delivered with data from the machine (a poll whose requests all
    /// got an answer, or one notification batch).
    pub fn scans(&self) -> u64 {
        self.scans.get()
    }
    /// Connection attempts or open links that failed (broken link, timeout,
    /// closed session).
    pub fn link_failures(&self) -> u64 {
        self.link_failures.get()
    }
    /// Links re-established after one was lost (the first connect is not
    /// counted).
    pub fn reconnects(&self) -> u64 {
        self.reconnects.get()
    }
    /// Periods of unreachability: counted once when a link is lost (or the
    /// first connect fails), not once per retry.
    pub fn outages(&self) -> u64 {
        self.outages.get()
    }
    /// Answers the device gave that carry no usable value: Modbus exception
    /// codes, OPC UA bad status codes of single values.
    pub fn device_errors(&self) -> u64 {
        self.device_errors.get()
    }
    /// OPC UA notifications (each one or more scans) dropped because the
    /// gateway did not take them fast enough (Modbus polls wait instead).
    pub fn notifications_dropped(&self) -> u64 {
        self.notifications_dropped.get()
    }

    /// Poll ticks that got no poll because polls ran late (a poll that took
    /// longer than the interval, or a gateway too busy to start it).
    pub fn polls_skipped(&self) -> u64 {
        self.polls_skipped.get()
    }

    /// Whether the machine answers now: set when a link or session is
    /// up (or a poll got an answer), cleared when it is lost. False until
    /// the first contact.
    pub fn is_up(&self) -> bool {
        self.up.get_bool()
    }
    pub fn set_up(&self, up: bool) {
        self.up.set_bool(up);
    }

    pub fn count_scan(&self) {
        self.scans.inc();
    }
    pub fn count_link_failure(&self) {
        self.link_failures.inc();
    }
    pub fn count_reconnect(&self) {
        self.reconnects.inc();
    }
    pub fn count_outage(&self) {
        self.outages.inc();
    }
    pub fn count_device_errors(&self, n: u64) {
        self.device_errors.add(n);
    }
    /// Counts `n` skipped poll ticks; true when the total reached a new
    /// power of two (1, 2, 4, ...): the moments worth a warning.
    fn count_polls_skipped(&self, n: u64) -> bool {
        let total = self.polls_skipped.add_get(n);
        let before = total - n;
        before.leading_zeros() != total.leading_zeros()
    }

    /// Books the ticks `clock` passed over since the last call, with a
    /// warning each time their total reaches a power of two.
    pub fn book_skipped_polls(&self, clock: &mut PollClock, machine: &str) {
        let skipped = clock.take_skipped();
        if skipped > 0 && self.count_polls_skipped(skipped) {
            tracing::warn!(
                machine,
                polls_skipped = self.polls_skipped(),
                poll_interval_ms = clock.period().as_millis() as u64,
                "poll ticks skipped: polls take longer than poll_interval_ms (a slow device, \
                 or a gateway short of CPU: see [runtime] worker_threads)"
            );
        }
    }
    /// Counts a dropped notification; returns the total (to warn at powers of two).
    pub fn count_notification_dropped(&self) -> u64 {
        self.notifications_dropped.inc_get()
    }
}

/// A machine's configuration, by protocol (the `protocol` key of a
/// `[[machines]]` table).
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// `protocol = "modbus-tcp"`
    ModbusTcp(ModbusMachineConfig),
    /// `protocol = "modbus-rtu"`: a unit on a serial line.
    ModbusRtu(ModbusRtuMachineConfig),
    /// `protocol = "modbus-rtu-over-tcp"`: a unit behind a serial device
    /// server that passes RTU frames over TCP.
    ModbusRtuOverTcp(ModbusMachineConfig),
    /// `protocol = "opcua"`
    OpcUa(OpcUaMachineConfig),
}

impl SourceConfig {
    /// The `protocol` values a machine may name.
    pub const PROTOCOLS: &'static [&'static str] =
        &["modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp", "opcua"];

    pub fn name(&self) -> &str {
        match self {
            SourceConfig::ModbusTcp(c) | SourceConfig::ModbusRtuOverTcp(c) => &c.name,
            SourceConfig::ModbusRtu(c) => &c.name,
            SourceConfig::OpcUa(c) => &c.name,
        }
    }

    pub fn protocol(&self) -> &'static str {
        match self {
            SourceConfig::ModbusTcp(_) => "modbus-tcp",
            SourceConfig::ModbusRtu(_) => "modbus-rtu",
            SourceConfig::ModbusRtuOverTcp(_) => "modbus-rtu-over-tcp",
            SourceConfig::OpcUa(_) => "opcua",
        }
    }

    /// Tag names in configuration order.
    pub fn tag_names(&self) -> Vec<&str> {
        match self {
            SourceConfig::ModbusTcp(c) | SourceConfig::ModbusRtuOverTcp(c) => {
                c.tags.iter().map(|t| t.name.as_str()).collect()
            }
            SourceConfig::ModbusRtu(c) => c.tags.iter().map(|t| t.name.as_str()).collect(),
            SourceConfig::OpcUa(c) => c.tags.iter().map(|t| t.name.as_str()).collect(),
        }
    }

    /// Every problem of this machine at key paths below `path`. Reads no
    /// file and opens no socket (an OPC UA password is looked up in the
    /// environment, so that a missing secret is caught before start).
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        match self {
            SourceConfig::ModbusTcp(c) => c.validate(path),
            SourceConfig::ModbusRtu(c) => c.validate(path),
            SourceConfig::ModbusRtuOverTcp(c) => {
                crate::modbus::config::rtu_over_tcp_problems(c, path)
            }
            SourceConfig::OpcUa(c) => c.validate(path),
        }
    }

    /// Problems between machines: those sharing an RTU line must agree on
    /// its settings and use different unit ids. `machines` are `(key path,
    /// machine)`, e.g. `("machines[2]", ...)`.
    pub fn validate_together<'a>(
        machines: impl IntoIterator<Item = (String, &'a SourceConfig)>,
    ) -> Vec<Problem> {
        shared_line_problems(
            machines
                .into_iter()
                .filter_map(|(path, machine)| match machine {
                    SourceConfig::ModbusRtu(c) => Some((path, LineMember::Serial(c))),
                    SourceConfig::ModbusRtuOverTcp(c) => Some((path, LineMember::RtuOverTcp(c))),
                    SourceConfig::ModbusTcp(_) | SourceConfig::OpcUa(_) => None,
                }),
        )
    }

    /// The source for this machine; checks the configuration again and
    /// plans its reads, but opens no socket. Machines on one RTU line get
    /// sources that share that line's bus (found by `serial` path or
    /// `address`); building one whose line settings or unit id clash with a
    /// live source on the same line fails.
    pub fn build(self) -> Result<Box<dyn Source>, ConnectorError> {
        Ok(match self {
            SourceConfig::ModbusTcp(c) => Box::new(ModbusSource::new(c)?),
            SourceConfig::ModbusRtu(c) => Box::new(ModbusSource::rtu(c)?),
            SourceConfig::ModbusRtuOverTcp(c) => Box::new(ModbusSource::rtu_over_tcp(c)?),
            SourceConfig::OpcUa(c) => Box::new(OpcUaSource::new(c)?),
        })
    }
}
