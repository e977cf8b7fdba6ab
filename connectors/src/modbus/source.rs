//! The Modbus poller: one per machine, whatever the transport. It polls its
//! unit through a [`ModbusLink`] (its own TCP connection, or a place on a
//! shared RTU bus), turns each poll into a [`Scan`] and handles Modbus
//! exceptions by their meaning.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_modbus::ExceptionCode;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::error::ConnectorError;
use crate::modbus::bus::{BusMember, Line};
use crate::modbus::config::{
    rtu_over_tcp_problems, ByteOrder, DataType, ModbusMachineConfig, ModbusRtuMachineConfig,
    ModbusTagConfig, ModbusUnitConfig, RegisterKind,
};
use crate::modbus::decode::{
    apply_scaling_in, decode_bit, decode_registers, scaling_form, ScalingForm,
};
use crate::modbus::link::{Block, ModbusLink, Span, TcpLink};
use crate::modbus::plan::{BlockRead, ReadPlan};
use crate::poll_clock::PollClock;
use crate::scan::{Quality, Scan, SourceStatus, TagReading};
use crate::source::{Source, SourceStats};
use crate::validation::Problem;

/// How often a read answered with 05 (acknowledge) or 06 (busy) is asked
/// again within one poll, and how long to wait before each retry. Short: the
/// device said "soon", and a poll should not slip by more than this.
const BUSY_RETRIES: u32 = 3;
const BUSY_RETRY_DELAY: Duration = Duration::from_millis(20);

/// The poller of one Modbus machine. Each machine gets its own source and
/// task, so a dead machine never delays another (on a shared RTU line, a
/// dead unit costs the others at most one request timeout per retry).
#[derive(Debug)]
pub struct ModbusSource {
    /// The unit's settings; its `tags` are not kept (they live on as
    /// `tag_names`, `decodings` and the plan).
    unit: ModbusUnitConfig,
    link: ModbusLink,
    machine: Arc<str>,
    tag_names: Vec<Arc<str>>,
    /// How each tag's registers become its value, by tag index.
    decodings: Vec<TagDecoding>,
    plan: ReadPlan,
    stats: SourceStats,
}

/// What a poll needs of a tag's configuration: 24 bytes a tag, where the
/// whole configuration (names and units included) kept ~75 (BENCHMARKS.md
/// §28).
#[derive(Debug, Clone, Copy)]
struct TagDecoding {
    data_type: DataType,
    byte_order: ByteOrder,
    /// How `scale` and `offset` apply, worked out once.
    scaling: ScalingForm,
    scale: f64,
    offset: f64,
}

// The per-tag figure above, kept.
const _: () = assert!(std::mem::size_of::<TagDecoding>() == 24);

impl TagDecoding {
    fn of(tag: &ModbusTagConfig) -> Self {
        Self {
            data_type: tag.data_type,
            byte_order: tag.byte_order,
            scaling: scaling_form(tag.scale, tag.offset),
            scale: tag.scale,
            offset: tag.offset,
        }
    }
}

/// The name this source had when Modbus meant Modbus TCP only.
pub type ModbusTcpSource = ModbusSource;

/// What is known about one planned read across polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockState {
    /// Answering (or not yet asked).
    Answering,
    /// Answered with this exception last time; asked again every poll.
    Failing(ExceptionCode),
    /// Refused as misconfigured (01/02/03): never asked again, its tags stay
    /// Bad with this exception as their status.
    Refused(ExceptionCode),
}

/// How one poll ended.
enum PollEnd {
    /// Every read got an answer from the device (values or exceptions).
    Scan(Scan),
    /// The unit cannot be read now: the link failed, or a gateway answered
    /// that the unit is not there (with that exception as the tags' status).
    Unreachable(ConnectorError, Option<SourceStatus>),
}

impl ModbusSource {
    /// A Modbus TCP machine. Checks the configuration and plans the reads;
    /// no I/O.
    pub fn new(config: ModbusMachineConfig) -> Result<Self, ConnectorError> {
        refuse(config.validate(&config.name))?;
        let stats = SourceStats::default();
        let link = ModbusLink::Tcp(TcpLink::new(
            Arc::from(config.name.as_str()),
            config.address.clone(),
            config.unit_id,
            Duration::from_millis(config.request_timeout_ms),
            stats.clone(),
        ));
        Self::with_link(config.unit(), link, stats)
    }

    /// A machine on a serial RTU line. Joins the line's bus (shared with the
    /// other machines naming the same `serial`); no I/O.
    pub fn rtu(config: ModbusRtuMachineConfig) -> Result<Self, ConnectorError> {
        refuse(config.validate(&config.name))?;
        let line = Line::Serial {
            path: config.serial.clone(),
            settings: config.line(),
        };
        Self::on_bus(config.unit(), line)
    }

    /// A machine behind a serial device server that passes RTU frames over
    /// TCP. Joins the bus of its `address`; no I/O.
    pub fn rtu_over_tcp(config: ModbusMachineConfig) -> Result<Self, ConnectorError> {
        refuse(rtu_over_tcp_problems(&config, &config.name))?;
        let line = Line::RtuOverTcp {
            address: config.address.clone(),
        };
        Self::on_bus(config.unit(), line)
    }

    fn on_bus(unit: ModbusUnitConfig, line: Line) -> Result<Self, ConnectorError> {
        // Planned before joining, so a refused plan never holds a unit id.
        ReadPlan::build(&unit.tags, unit.max_registers_per_read)?;
        let member = BusMember::join(
            line,
            &unit.name,
            unit.unit_id,
            Duration::from_millis(unit.request_timeout_ms),
        )?;
        Self::with_link(unit, ModbusLink::Bus(member), SourceStats::default())
    }

    fn with_link(
        mut unit: ModbusUnitConfig,
        link: ModbusLink,
        stats: SourceStats,
    ) -> Result<Self, ConnectorError> {
        let plan = ReadPlan::build(&unit.tags, unit.max_registers_per_read)?;
        let tags = std::mem::take(&mut unit.tags);
        Ok(Self {
            machine: Arc::from(unit.name.as_str()),
            tag_names: tags.iter().map(|t| Arc::from(t.name.as_str())).collect(),
            decodings: tags.iter().map(TagDecoding::of).collect(),
            plan,
            stats,
            link,
            unit,
        })
    }

    pub fn stats(&self) -> SourceStats {
        self.stats.clone()
    }

    pub fn plan(&self) -> &ReadPlan {
        &self.plan
    }

    /// Polls until `cancel` fires or `out` is closed.
    ///
    /// Every poll yields one scan with all tags. When the unit cannot be read
    /// (link broken, request timed out, gateway says the unit is absent) one
    /// scan with every tag `Bad` tells consumers; then the unit is asked
    /// again after capped, jittered exponential backoff. Sending awaits a
    /// free slot in `out`.
    pub async fn run(mut self, out: mpsc::Sender<Scan>, cancel: CancellationToken) {
        self.link.start();
        let mut backoff = Backoff::new(self.unit.backoff);
        let mut blocks = vec![BlockState::Answering; self.plan.reads.len()];
        let mut clock = PollClock::new(Duration::from_millis(self.unit.poll_interval_ms));
        // One unreachable-scan per outage, not one per failed attempt.
        let mut in_outage = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = clock.tick() => {}
            }
            self.stats.book_skipped_polls(&mut clock, &self.machine);
            let polled = tokio::select! {
                () = cancel.cancelled() => return,
                polled = self.poll(&mut blocks) => polled,
            };
            match polled {
                PollEnd::Scan(scan) => {
                    if in_outage {
                        in_outage = false;
                        info!(
                            machine = %self.machine,
                            link = %self.link.describe(),
                            attempts = backoff.failures(),
                            "Modbus unit answers again"
                        );
                        // A TCP link counts its own new connections.
                        if matches!(self.link, ModbusLink::Bus(_)) {
                            self.stats.count_reconnect();
                        }
                    }
                    backoff.reset();
                    self.stats.set_up(true);
                    self.stats.count_scan();
                    if !send(&self.machine, scan, &out, &cancel).await {
                        return;
                    }
                }
                PollEnd::Unreachable(failure, status) => {
                    self.stats.set_up(false);
                    if status.is_none() {
                        self.stats.count_link_failure();
                    }
                    let delay = backoff.next_delay();
                    warn!(
                        machine = %self.machine,
                        link = %self.link.describe(),
                        attempt = backoff.failures(),
                        next_delay_ms = delay.as_millis() as u64,
                        error = %failure,
                        "Modbus unit unreachable; retrying"
                    );
                    if !in_outage {
                        in_outage = true;
                        self.stats.count_outage();
                        let scan = self.unreachable_scan(status);
                        if !send(&self.machine, scan, &out, &cancel).await {
                            return;
                        }
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    // Poll right after the backoff, not a whole interval later.
                    clock.reset_immediately();
                }
            }
        }
    }

    /// One poll: every planned read that is not refused, in turn.
    async fn poll(&mut self, blocks: &mut [BlockState]) -> PollEnd {
        let acquired_at = SystemTime::now();
        // Every tag Bad until its block's answer decodes: the scan's one
        // allocation, filled in place (this runs for every poll).
        let mut readings: Vec<TagReading> = self
            .tag_names
            .iter()
            .map(|tag| TagReading::bad(tag.clone(), None))
            .collect();
        for (index, read) in self.plan.reads.iter().enumerate() {
            let span = Span {
                kind: read.kind,
                start: read.start,
                count: read.count,
            };
            if let BlockState::Refused(code) = blocks[index] {
                mark(&mut readings, read, code);
                continue;
            }
            let mut busy_retries = 0;
            let answer = loop {
                let answer = match self.link.read(span).await {
                    Ok(answer) => answer,
                    Err(e) => return PollEnd::Unreachable(e, None),
                };
                match answer {
                    Err(code @ (ExceptionCode::Acknowledge | ExceptionCode::ServerDeviceBusy))
                        if busy_retries < BUSY_RETRIES =>
                    {
                        self.stats.count_device_errors(1);
                        busy_retries += 1;
                        debug!(machine = %self.machine, %span, %code, busy_retries, "device busy; asking again");
                        tokio::time::sleep(BUSY_RETRY_DELAY).await;
                    }
                    answer => break answer,
                }
            };
            let code = match answer {
                Ok(block) => {
                    if let BlockState::Failing(previous) = blocks[index] {
                        info!(machine = %self.machine, %span, %previous, "Modbus read answers again");
                    }
                    blocks[index] = BlockState::Answering;
                    self.decode_block(read, &block, &mut readings);
                    continue;
                }
                Err(code) => code,
            };
            self.stats.count_device_errors(1);
            let exception = self.exception(span, code);
            match code {
                // The request itself is wrong for this device: asking again
                // cannot help, and would cost bus time every poll.
                ExceptionCode::IllegalFunction
                | ExceptionCode::IllegalDataAddress
                | ExceptionCode::IllegalDataValue => {
                    error!(
                        machine = %self.machine,
                        register = read.kind.as_str(),
                        start = read.start,
                        count = read.count,
                        tags = %self.tags_of(read),
                        error = %exception,
                        "configuration error: the device refuses this read; \
                         it is not asked again and its tags stay Bad"
                    );
                    blocks[index] = BlockState::Refused(code);
                    mark(&mut readings, read, code);
                }
                // A gateway in front of the unit says the unit is not there:
                // the whole unit is out, as if its link had failed.
                ExceptionCode::GatewayPathUnavailable | ExceptionCode::GatewayTargetDevice => {
                    return PollEnd::Unreachable(
                        exception,
                        Some(SourceStatus::ModbusException(u8::from(code))),
                    );
                }
                // Anything else (still busy, device failure, ...) may pass:
                // this read's tags are Bad now, and it is asked next poll.
                _ => {
                    // Logged once per change so a failing read does not flood the log.
                    if blocks[index] != BlockState::Failing(code) {
                        warn!(
                            machine = %self.machine,
                            error = %exception,
                            count = read.count,
                            "Modbus exception; tags of this read are Bad"
                        );
                    } else {
                        debug!(machine = %self.machine, error = %exception, "Modbus exception");
                    }
                    blocks[index] = BlockState::Failing(code);
                    mark(&mut readings, read, code);
                }
            }
        }
        PollEnd::Scan(Scan {
            machine: self.machine.clone(),
            acquired_at,
            readings,
        })
    }

    fn exception(&self, span: Span, code: ExceptionCode) -> ConnectorError {
        ConnectorError::DeviceException {
            machine: self.unit.name.clone(),
            function: function_name(span.kind),
            address: span.start,
            exception: code.to_string(),
        }
    }

    /// The names of a read's tags, for a log line.
    fn tags_of(&self, read: &BlockRead) -> String {
        let names: Vec<&str> = read
            .tags
            .iter()
            .map(|t| &*self.tag_names[t.tag_index])
            .collect();
        names.join(",")
    }

    fn decode_block(&self, read: &BlockRead, block: &Block, readings: &mut [TagReading]) {
        for planned in &read.tags {
            // The plan was made from the same tags: every index is there.
            let (Some(tag), Some(name)) = (
                self.decodings.get(planned.tag_index),
                self.tag_names.get(planned.tag_index),
            ) else {
                continue;
            };
            let start = usize::from(planned.offset);
            let end = start + usize::from(planned.width);
            let raw = match block {
                Block::Bits(bits) => bits.get(start).map(|&b| Ok(decode_bit(b))),
                Block::Words(words) => words
                    .get(start..end)
                    .map(|w| decode_registers(w, tag.data_type, tag.byte_order)),
            };
            match raw {
                Some(Ok(raw)) => {
                    if let Some(reading) = readings.get_mut(planned.tag_index) {
                        reading.value =
                            Some(apply_scaling_in(raw, tag.scale, tag.offset, tag.scaling));
                        reading.quality = Quality::Good;
                    }
                }
                // Only a device that answers short (or a planning bug) gets here.
                Some(Err(failure)) => {
                    warn!(machine = %self.machine, tag = %name, ?failure, "cannot decode tag");
                }
                None => {
                    warn!(
                        machine = %self.machine,
                        tag = %name,
                        register = read.kind.as_str(),
                        start = read.start,
                        asked = read.count,
                        "device answered with fewer values than asked for"
                    );
                }
            }
        }
    }

    /// Every tag `Bad`, stamped now: the unit cannot be read.
    fn unreachable_scan(&self, status: Option<SourceStatus>) -> Scan {
        Scan {
            machine: self.machine.clone(),
            acquired_at: SystemTime::now(),
            readings: self
                .tag_names
                .iter()
                .map(|tag| TagReading::bad(tag.clone(), status))
                .collect(),
        }
    }
}

/// `false` when the source should stop (cancelled or receiver gone). Not a
/// method: the source holds a tokio-modbus context, which is not `Sync`, so
/// `&self` must not live across this await.
async fn send(
    machine: &str,
    scan: Scan,
    out: &mpsc::Sender<Scan>,
    cancel: &CancellationToken,
) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        sent = out.send(scan) => {
            if sent.is_err() {
                debug!(machine, "scan receiver closed; stopping");
            }
            sent.is_ok()
        }
    }
}

impl Source for ModbusSource {
    fn machine(&self) -> &str {
        &self.machine
    }

    fn tag_names(&self) -> Vec<Arc<str>> {
        self.tag_names.clone()
    }

    fn stats(&self) -> SourceStats {
        self.stats.clone()
    }

    fn run(
        self: Box<Self>,
        out: mpsc::Sender<Scan>,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        (*self).run(out, cancel).boxed()
    }
}

/// Every problem as one configuration error, or nothing.
fn refuse(problems: Vec<Problem>) -> Result<(), ConnectorError> {
    if problems.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
    Err(ConnectorError::Config(list.join("; ")))
}

/// The read's tags carry `code` as their status (they stay Bad: no value).
fn mark(readings: &mut [TagReading], read: &BlockRead, code: ExceptionCode) {
    for planned in &read.tags {
        if let Some(reading) = readings.get_mut(planned.tag_index) {
            reading.status = Some(SourceStatus::ModbusException(u8::from(code)));
        }
    }
}

fn function_name(kind: RegisterKind) -> &'static str {
    match kind {
        RegisterKind::Holding => "read holding registers",
        RegisterKind::Input => "read input registers",
        RegisterKind::Coil => "read coils",
        RegisterKind::DiscreteInput => "read discrete inputs",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::config::{BackoffConfig, ByteOrder, DataType, ModbusTagConfig};

    fn config(address: String) -> ModbusMachineConfig {
        ModbusMachineConfig {
            name: "press-7".into(),
            address,
            unit_id: 1,
            poll_interval_ms: 50,
            request_timeout_ms: 200,
            backoff: BackoffConfig {
                initial_ms: 20,
                max_ms: 100,
            },
            max_registers_per_read: 125,
            tags: vec![
                ModbusTagConfig {
                    name: "temp_c".into(),
                    register: RegisterKind::Holding,
                    address: 0,
                    data_type: DataType::F32,
                    byte_order: ByteOrder::Abcd,
                    scale: 1.0,
                    offset: 0.0,
                    unit: None,
                },
                ModbusTagConfig {
                    name: "running".into(),
                    register: RegisterKind::Coil,
                    address: 0,
                    data_type: DataType::Bool,
                    byte_order: ByteOrder::Abcd,
                    scale: 1.0,
                    offset: 0.0,
                    unit: None,
                },
            ],
        }
    }

    fn all_bad(scan: &Scan) -> bool {
        scan.readings.len() == 2
            && scan
                .readings
                .iter()
                .all(|r| r.quality == Quality::Bad && r.value.is_none())
    }

    #[test]
    fn invalid_configuration_is_refused_with_every_problem() {
        let mut c = config("nohost".into());
        c.poll_interval_ms = 0;
        let err = ModbusTcpSource::new(c).unwrap_err().to_string();
        assert!(err.contains("press-7.address"), "{err}");
        assert!(err.contains("press-7.poll_interval_ms"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_machine_yields_one_bad_scan_and_stops_on_cancel() {
        // A port nobody listens on any more: connects are refused.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);

        let source = ModbusTcpSource::new(config(address)).unwrap();
        let stats = source.stats();
        let (tx, mut rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(source.run(tx, cancel.clone()));

        let scan = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*scan.machine, "press-7");
        assert!(all_bad(&scan), "{scan:?}");

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
        // Failed attempts do not repeat the unreachable scan.
        assert!(rx.recv().await.is_none());
        assert_eq!(stats.scans(), 0);
        assert_eq!(stats.outages(), 1);
        assert_eq!(stats.reconnects(), 0);
    }

    #[tokio::test]
    async fn a_device_that_never_answers_is_dropped_and_reconnected() {
        // Accepts connections and holds them open without ever answering:
        // the hang tokio-modbus would wait on forever.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (accepted_tx, mut accepted_rx) = mpsc::unbounded_channel();
        let silent_device = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
                let _ = accepted_tx.send(held.len());
            }
        });

        let source = ModbusTcpSource::new(config(address)).unwrap();
        let stats = source.stats();
        let (tx, mut rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(source.run(tx, cancel.clone()));

        let scan = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(all_bad(&scan), "{scan:?}");
        // The timed-out connection is given up and a new one opened.
        let deadline = Duration::from_secs(30);
        loop {
            let connections = tokio::time::timeout(deadline, accepted_rx.recv())
                .await
                .unwrap()
                .unwrap();
            if connections >= 2 {
                break;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while stats.reconnects() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never reconnected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(stats.link_failures() >= 1);

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
        silent_device.abort();
    }
}
