//! Polls one Modbus TCP machine and turns each poll into a [`Scan`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_modbus::client::{tcp, Context, Reader};
use tokio_modbus::{ExceptionCode, Slave};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::error::ConnectorError;
use crate::modbus::config::{ModbusMachineConfig, RegisterKind};
use crate::modbus::decode::{apply_scaling, decode_bit, decode_registers};
use crate::modbus::plan::{BlockRead, ReadPlan};
use crate::scan::{Quality, Scan, SourceStatus, TagReading, TagValue};
use crate::source::{Source, SourceStats};

/// One machine's poller. Each machine gets its own source and task, so a dead
/// machine never delays another.
#[derive(Debug)]
pub struct ModbusTcpSource {
    config: ModbusMachineConfig,
    machine: Arc<str>,
    tag_names: Vec<Arc<str>>,
    plan: ReadPlan,
    stats: SourceStats,
}

/// The registers or bits of one read.
enum Block {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// Why the polling of one connection ended.
enum LinkEnd {
    Lost(ConnectorError),
    /// Cancelled, or nobody receives scans any more.
    Stop,
}

impl ModbusTcpSource {
    /// Checks the configuration and plans the reads; no I/O.
    pub fn new(config: ModbusMachineConfig) -> Result<Self, ConnectorError> {
        let problems = config.validate(&config.name);
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(ConnectorError::Config(list.join("; ")));
        }
        let plan = ReadPlan::build(&config.tags, config.max_registers_per_read)?;
        Ok(Self {
            machine: Arc::from(config.name.as_str()),
            tag_names: config
                .tags
                .iter()
                .map(|t| Arc::from(t.name.as_str()))
                .collect(),
            plan,
            stats: SourceStats::default(),
            config,
        })
    }

    pub fn stats(&self) -> SourceStats {
        self.stats.clone()
    }

    pub fn plan(&self) -> &ReadPlan {
        &self.plan
    }

    /// Connects, polls and reconnects until `cancel` fires or `out` is closed.
    ///
    /// Every poll yields one scan with all tags. When the link breaks (or a
    /// request times out) one scan with every tag `Bad` tells consumers the
    /// machine is unreachable; then reconnects follow with capped, jittered
    /// exponential backoff. Sending awaits a free slot in `out`.
    pub async fn run(self, out: mpsc::Sender<Scan>, cancel: CancellationToken) {
        let mut backoff = Backoff::new(self.config.backoff);
        let mut ever_connected = false;
        // One unreachable-scan per outage, not one per failed attempt.
        let mut outage_reported = false;
        loop {
            let connected = tokio::select! {
                () = cancel.cancelled() => return,
                connected = self.connect() => connected,
            };
            let failure = match connected {
                Ok(ctx) => {
                    if ever_connected {
                        self.stats.count_reconnect();
                        info!(
                            machine = %self.machine,
                            address = %self.config.address,
                            attempts = backoff.failures(),
                            "Modbus link is back"
                        );
                    } else {
                        info!(machine = %self.machine, address = %self.config.address, "Modbus link up");
                    }
                    ever_connected = true;
                    outage_reported = false;
                    backoff.reset();
                    match self.poll_connection(ctx, &out, &cancel).await {
                        LinkEnd::Stop => return,
                        LinkEnd::Lost(e) => e,
                    }
                }
                Err(e) => e,
            };

            self.stats.count_link_failure();
            let delay = backoff.next_delay();
            warn!(
                machine = %self.machine,
                address = %self.config.address,
                attempt = backoff.failures(),
                next_delay_ms = delay.as_millis() as u64,
                error = %failure,
                "Modbus link down; reconnecting"
            );
            if !outage_reported {
                outage_reported = true;
                self.stats.count_outage();
                if !self.send(self.unreachable_scan(), &out, &cancel).await {
                    return;
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    fn link_error(&self, reason: String) -> ConnectorError {
        ConnectorError::Link {
            machine: self.config.name.clone(),
            reason,
        }
    }

    /// Resolves and connects under the request timeout, trying every address
    /// the host resolves to.
    async fn connect(&self) -> Result<Context, ConnectorError> {
        let timeout = self.request_timeout();
        let slave = Slave(self.config.unit_id);
        let attempt = async {
            let addrs = tokio::net::lookup_host(self.config.address.as_str())
                .await
                .map_err(|e| format!("cannot resolve {}: {e}", self.config.address))?;
            let mut last = format!("{} resolves to no address", self.config.address);
            for addr in addrs {
                match tcp::connect_slave(addr, slave).await {
                    Ok(ctx) => return Ok(ctx),
                    Err(e) => last = format!("cannot connect to {addr}: {e}"),
                }
            }
            Err(last)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(ctx)) => Ok(ctx),
            Ok(Err(reason)) => Err(self.link_error(reason)),
            Err(_) => Err(self.link_error(format!("no connection within {timeout:?}"))),
        }
    }

    /// Polls on one connection until the link fails or the source stops. The
    /// connection is dropped on return: after a timeout a late reply would
    /// otherwise be taken as the answer to the next request.
    async fn poll_connection(
        &self,
        mut ctx: Context,
        out: &mpsc::Sender<Scan>,
        cancel: &CancellationToken,
    ) -> LinkEnd {
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.poll_interval_ms));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Which reads answered with an exception last time, to log changes only.
        let mut failing: Vec<Option<ExceptionCode>> = vec![None; self.plan.reads.len()];
        loop {
            tokio::select! {
                () = cancel.cancelled() => return LinkEnd::Stop,
                _ = ticker.tick() => {}
            }
            let polled = tokio::select! {
                () = cancel.cancelled() => return LinkEnd::Stop,
                polled = self.poll(&mut ctx, &mut failing) => polled,
            };
            match polled {
                Ok(scan) => {
                    self.stats.count_scan();
                    if !self.send(scan, out, cancel).await {
                        return LinkEnd::Stop;
                    }
                }
                Err(e) => return LinkEnd::Lost(e),
            }
        }
    }

    /// One poll: every planned read in turn, each under the request timeout.
    async fn poll(
        &self,
        ctx: &mut Context,
        failing: &mut [Option<ExceptionCode>],
    ) -> Result<Scan, ConnectorError> {
        let timeout = self.request_timeout();
        let acquired_at = SystemTime::now();
        let mut values: Vec<Option<TagValue>> = vec![None; self.tag_names.len()];
        let mut statuses: Vec<Option<SourceStatus>> = vec![None; self.tag_names.len()];
        for (read, was_failing) in self.plan.reads.iter().zip(failing.iter_mut()) {
            let answer = match tokio::time::timeout(timeout, read_block(ctx, read)).await {
                Err(_) => {
                    return Err(self.link_error(format!(
                        "no answer to {} {}+{} within {timeout:?}",
                        read.kind.as_str(),
                        read.start,
                        read.count
                    )))
                }
                // tokio-modbus reports a connection closed by the peer with the
                // thread's last errno, so the text may name an unrelated error.
                Ok(Err(e)) => {
                    return Err(self.link_error(format!(
                        "{} {}+{} failed: {e}",
                        read.kind.as_str(),
                        read.start,
                        read.count
                    )))
                }
                Ok(Ok(answer)) => answer,
            };
            match answer {
                Ok(block) => {
                    if let Some(code) = was_failing.take() {
                        info!(
                            machine = %self.machine,
                            register = read.kind.as_str(),
                            start = read.start,
                            count = read.count,
                            previous = %code,
                            "Modbus read answers again"
                        );
                    }
                    self.decode_block(read, &block, &mut values);
                }
                Err(code) => {
                    self.stats.count_device_errors(1);
                    for planned in &read.tags {
                        statuses[planned.tag_index] =
                            Some(SourceStatus::ModbusException(u8::from(code)));
                    }
                    let error = ConnectorError::DeviceException {
                        machine: self.config.name.clone(),
                        function: function_name(read.kind),
                        address: read.start,
                        exception: code.to_string(),
                    };
                    // Logged once per change so a misconfigured tag does not flood the log.
                    if *was_failing != Some(code) {
                        warn!(
                            machine = %self.machine,
                            count = read.count,
                            error = %error,
                            "Modbus exception; tags of this read are Bad"
                        );
                    } else {
                        debug!(machine = %self.machine, error = %error, "Modbus exception");
                    }
                    *was_failing = Some(code);
                }
            }
        }
        let readings = self
            .tag_names
            .iter()
            .zip(values)
            .zip(statuses)
            .map(|((tag, value), status)| TagReading {
                tag: tag.clone(),
                quality: if value.is_some() {
                    Quality::Good
                } else {
                    Quality::Bad
                },
                value,
                status,
            })
            .collect();
        Ok(Scan {
            machine: self.machine.clone(),
            acquired_at,
            readings,
        })
    }

    fn decode_block(&self, read: &BlockRead, block: &Block, values: &mut [Option<TagValue>]) {
        for planned in &read.tags {
            let tag = &self.config.tags[planned.tag_index];
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
                    values[planned.tag_index] = Some(apply_scaling(raw, tag.scale, tag.offset));
                }
                // Only a device that answers short (or a planning bug) gets here.
                Some(Err(failure)) => {
                    warn!(machine = %self.machine, tag = %tag.name, ?failure, "cannot decode tag");
                }
                None => {
                    warn!(
                        machine = %self.machine,
                        tag = %tag.name,
                        register = read.kind.as_str(),
                        start = read.start,
                        asked = read.count,
                        "device answered with fewer values than asked for"
                    );
                }
            }
        }
    }

    /// Every tag `Bad`, stamped now: the machine cannot be read.
    fn unreachable_scan(&self) -> Scan {
        Scan {
            machine: self.machine.clone(),
            acquired_at: SystemTime::now(),
            readings: self
                .tag_names
                .iter()
                .map(|tag| TagReading::bad(tag.clone(), None))
                .collect(),
        }
    }

    /// `false` when the source should stop (cancelled or receiver gone).
    async fn send(&self, scan: Scan, out: &mpsc::Sender<Scan>, cancel: &CancellationToken) -> bool {
        tokio::select! {
            () = cancel.cancelled() => false,
            sent = out.send(scan) => {
                if sent.is_err() {
                    debug!(machine = %self.machine, "scan receiver closed; stopping");
                }
                sent.is_ok()
            }
        }
    }
}

impl Source for ModbusTcpSource {
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

async fn read_block(
    ctx: &mut Context,
    read: &BlockRead,
) -> Result<Result<Block, ExceptionCode>, tokio_modbus::Error> {
    Ok(match read.kind {
        RegisterKind::Holding => ctx
            .read_holding_registers(read.start, read.count)
            .await?
            .map(Block::Words),
        RegisterKind::Input => ctx
            .read_input_registers(read.start, read.count)
            .await?
            .map(Block::Words),
        RegisterKind::Coil => ctx
            .read_coils(read.start, read.count)
            .await?
            .map(Block::Bits),
        RegisterKind::DiscreteInput => ctx
            .read_discrete_inputs(read.start, read.count)
            .await?
            .map(Block::Bits),
    })
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
