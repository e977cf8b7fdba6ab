//! One RTU line shared by several units: a serial port, or a TCP socket to a
//! serial device server that passes RTU frames through.
//!
//! RTU has no transaction ids and the line is half duplex, so exactly one
//! request may be in flight: a bus task owns the port and serves the units'
//! requests one at a time, keeping the inter-frame gap between frames. Each
//! unit stays its own source; it holds a [`BusMember`], its place on the bus.
//!
//! Buses are found by line in a process-wide registry, so the gateway builds
//! each machine on its own (`SourceConfig::build`) and machines that name the
//! same `serial` (or RTU-over-TCP `address`) meet on one bus without the
//! runtime knowing about lines.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_modbus::client::{rtu, Context};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::Slave;
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};
use tracing::{debug, info, warn};

use crate::error::ConnectorError;
use crate::modbus::config::{Parity, SerialLineSettings};
use crate::modbus::link::{read_span, Answer, Span};

/// Where an RTU line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A serial device and its settings.
    Serial {
        path: String,
        settings: SerialLineSettings,
    },
    /// `host:port` of a device server speaking RTU frames over TCP.
    RtuOverTcp { address: String },
}

impl Line {
    fn name(&self) -> &str {
        match self {
            Line::Serial { path, .. } => path,
            Line::RtuOverTcp { address } => address,
        }
    }

    /// Registry key: the line's place, without its settings (two machines
    /// naming one device with different settings are an error, not two buses).
    fn key(&self) -> LineKey {
        (matches!(self, Line::Serial { .. }), self.name().to_string())
    }

    /// Silence kept between the end of one frame and the next request. Over
    /// TCP the device server times its own serial side.
    fn inter_frame_gap(&self) -> Duration {
        match self {
            Line::Serial { settings, .. } => settings.inter_frame_gap(),
            Line::RtuOverTcp { .. } => Duration::ZERO,
        }
    }
}

/// A line's registry key: serial or TCP, and the path or address.
type LineKey = (bool, String);

/// Lines with at least one live member.
static REGISTRY: Mutex<Option<HashMap<LineKey, Weak<Bus>>>> = Mutex::new(None);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind, still valid.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One line: the queue into its task and the units on it.
#[derive(Debug)]
struct Bus {
    line: Line,
    units: Mutex<Vec<(u8, String)>>,
    requests: mpsc::Sender<BusRequest>,
    /// Taken by the first member that runs, which starts the bus task.
    idle_receiver: Mutex<Option<mpsc::Receiver<BusRequest>>>,
}

#[derive(Debug)]
struct BusRequest {
    unit_id: u8,
    span: Span,
    timeout: Duration,
    reply: oneshot::Sender<Result<Answer, String>>,
}

/// A unit's place on a shared line. Dropping it frees the unit id; when the
/// last member of a line is gone, the bus task ends and closes the port.
#[derive(Debug)]
pub struct BusMember {
    bus: Arc<Bus>,
    machine: String,
    unit_id: u8,
    timeout: Duration,
}

impl BusMember {
    /// Joins the line (creating its bus if this is the first unit). No I/O.
    /// Refused when the line is already open with other settings, or the unit
    /// id is taken on it.
    pub fn join(
        line: Line,
        machine: &str,
        unit_id: u8,
        timeout: Duration,
    ) -> Result<Self, ConnectorError> {
        let mut registry = lock(&REGISTRY);
        let registry = registry.get_or_insert_with(HashMap::new);
        registry.retain(|_, bus| bus.strong_count() > 0);
        let bus = match registry.get(&line.key()).and_then(Weak::upgrade) {
            Some(bus) => {
                if let (
                    Line::Serial { settings: ours, .. },
                    Line::Serial {
                        settings: theirs, ..
                    },
                ) = (&line, &bus.line)
                {
                    if let Some((key, mine, first)) = ours.first_difference(theirs) {
                        return Err(ConnectorError::Config(format!(
                            "{machine}.{key}: {mine} differs from {first} of the line {} already open",
                            line.name()
                        )));
                    }
                }
                bus
            }
            None => {
                // Each unit has at most one request outstanding.
                let (requests, receiver) = mpsc::channel(256);
                let bus = Arc::new(Bus {
                    line: line.clone(),
                    units: Mutex::new(Vec::new()),
                    requests,
                    idle_receiver: Mutex::new(Some(receiver)),
                });
                registry.insert(line.key(), Arc::downgrade(&bus));
                bus
            }
        };
        {
            let mut units = lock(&bus.units);
            if let Some((_, other)) = units.iter().find(|(u, _)| *u == unit_id) {
                return Err(ConnectorError::Config(format!(
                    "{machine}.unit_id: unit {unit_id} is already machine {other:?} on the line {}",
                    line.name()
                )));
            }
            units.push((unit_id, machine.to_string()));
        }
        Ok(Self {
            bus,
            machine: machine.to_string(),
            unit_id,
            timeout,
        })
    }

    /// Starts the line's bus task unless another member already did.
    pub fn start(&self) {
        if let Some(receiver) = lock(&self.bus.idle_receiver).take() {
            tokio::spawn(run_bus(self.bus.line.clone(), receiver));
        }
    }

    pub fn line_name(&self) -> &str {
        self.bus.line.name()
    }

    /// One read: waits for the bus (however long other units take), then at
    /// most the request timeout for this unit's answer.
    pub async fn read(&self, span: Span) -> Result<Answer, ConnectorError> {
        let (reply, answer) = oneshot::channel();
        let request = BusRequest {
            unit_id: self.unit_id,
            span,
            timeout: self.timeout,
            reply,
        };
        let link_error = |reason: String| ConnectorError::Link {
            machine: self.machine.clone(),
            reason,
        };
        self.bus
            .requests
            .send(request)
            .await
            .map_err(|_| link_error(format!("the bus task of {} ended", self.line_name())))?;
        answer
            .await
            .map_err(|_| link_error(format!("the bus task of {} ended", self.line_name())))?
            .map_err(link_error)
    }
}

impl Drop for BusMember {
    fn drop(&mut self) {
        lock(&self.bus.units).retain(|(u, _)| *u != self.unit_id);
    }
}

/// The open port of a line: the tokio-modbus RTU context reads and writes it,
/// and the bus keeps a second handle to discard late bytes between requests
/// (the context owns its transport and offers no way to do that).
struct OpenPort {
    ctx: Context,
    port: SharedPort,
}

#[derive(Clone)]
struct SharedPort(Arc<Mutex<PortStream>>);

enum PortStream {
    Serial(SerialStream),
    Tcp(TcpStream),
}

// Only the bus task touches the port, one user at a time (the context while
// a request runs, the drain between requests), so the lock is never
// contended; it only makes the second handle possible.
impl AsyncRead for SharedPort {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut *lock(&self.0) {
            PortStream::Serial(s) => Pin::new(s).poll_read(cx, buf),
            PortStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SharedPort {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut *lock(&self.0) {
            PortStream::Serial(s) => Pin::new(s).poll_write(cx, buf),
            PortStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match &mut *lock(&self.0) {
            PortStream::Serial(s) => Pin::new(s).poll_flush(cx),
            PortStream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match &mut *lock(&self.0) {
            PortStream::Serial(s) => Pin::new(s).poll_shutdown(cx),
            PortStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Longest a drain may take before the port is closed and reopened instead:
/// a line that never falls silent is broken or shared with another master.
const MAX_DRAIN: Duration = Duration::from_secs(1);

/// Why a request failed, and what that means for the port.
enum Failure {
    /// The port itself failed: close it, reopen on the next request.
    Port(String),
    /// No usable answer (timeout, CRC error, answer from another unit): the
    /// port works, but late or stray bytes must be discarded first.
    Answer(String),
}

/// Serves requests one at a time until every member is gone.
async fn run_bus(line: Line, mut requests: mpsc::Receiver<BusRequest>) {
    let gap = line.inter_frame_gap();
    let mut open: Option<OpenPort> = None;
    let mut quiet_since = Instant::now();
    info!(
        line = line.name(),
        gap_us = gap.as_micros() as u64,
        "RTU bus started"
    );
    while let Some(request) = requests.recv().await {
        // The unit stopped waiting (its source was cancelled): skip the read.
        if request.reply.is_closed() {
            continue;
        }
        let port = match &mut open {
            Some(port) => port,
            None => match open_port(&line, request.timeout).await {
                Ok(port) => {
                    info!(line = line.name(), "RTU line open");
                    open.insert(port)
                }
                Err(reason) => {
                    let _ = request.reply.send(Err(reason));
                    continue;
                }
            },
        };
        tokio::time::sleep_until(quiet_since + gap).await;
        discard_pending(&port.port);
        port.ctx.set_slave(Slave(request.unit_id));
        let outcome =
            match tokio::time::timeout(request.timeout, read_span(&mut port.ctx, request.span))
                .await
            {
                Ok(Ok(answer)) => Ok(answer),
                Err(_) => Err(Failure::Answer(format!(
                    "unit {} gave no answer to {} within {:?}",
                    request.unit_id, request.span, request.timeout
                ))),
                Ok(Err(tokio_modbus::Error::Transport(e))) => Err(Failure::Port(format!(
                    "{} to unit {} failed on {}: {e}",
                    request.span,
                    request.unit_id,
                    line.name()
                ))),
                Ok(Err(tokio_modbus::Error::Protocol(e))) => Err(Failure::Answer(format!(
                    "unit {} answered {} with an unusable frame: {e}",
                    request.unit_id, request.span
                ))),
            };
        let reply = match outcome {
            Ok(answer) => Ok(answer),
            Err(Failure::Answer(reason)) => {
                // A late reply must never be taken as the answer to a later
                // request: wait until the line has been silent for a while,
                // discarding whatever arrives.
                let quiet = request.timeout.min(Duration::from_millis(50)).max(gap * 2);
                match drain_until_quiet(&port.port, quiet).await {
                    Ok(discarded) if discarded > 0 => {
                        debug!(line = line.name(), discarded, "discarded late bytes");
                    }
                    Ok(_) => {}
                    Err(drain_failure) => {
                        warn!(line = line.name(), error = %drain_failure, "closing the RTU line");
                        open = None;
                    }
                }
                Err(reason)
            }
            Err(Failure::Port(reason)) => {
                warn!(line = line.name(), error = %reason, "closing the RTU line");
                open = None;
                Err(reason)
            }
        };
        quiet_since = Instant::now();
        let _ = request.reply.send(reply);
    }
    info!(line = line.name(), "RTU bus stopped: no unit left on it");
}

async fn open_port(line: &Line, timeout: Duration) -> Result<OpenPort, String> {
    let stream = match line {
        Line::Serial { path, settings } => {
            let port = tokio_serial::new(path.as_str(), settings.baud_rate)
                .parity(match settings.parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .data_bits(match settings.data_bits {
                    5 => tokio_serial::DataBits::Five,
                    6 => tokio_serial::DataBits::Six,
                    7 => tokio_serial::DataBits::Seven,
                    _ => tokio_serial::DataBits::Eight,
                })
                .stop_bits(if settings.stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                })
                .open_native_async()
                .map_err(|e| format!("cannot open {path}: {e}"))?;
            // Whatever the line said before we listened is nobody's answer.
            let _ = port.clear(tokio_serial::ClearBuffer::All);
            PortStream::Serial(port)
        }
        Line::RtuOverTcp { address } => {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(address.as_str()))
                .await
                .map_err(|_| format!("no connection to {address} within {timeout:?}"))?
                .map_err(|e| format!("cannot connect to {address}: {e}"))?;
            // Frames are small and each waits for its answer: send at once.
            let _ = stream.set_nodelay(true);
            PortStream::Tcp(stream)
        }
    };
    let port = SharedPort(Arc::new(Mutex::new(stream)));
    Ok(OpenPort {
        ctx: rtu::attach(port.clone()),
        port,
    })
}

/// Drops bytes that already arrived unasked (no waiting).
fn discard_pending(port: &SharedPort) {
    let mut reader = port.clone();
    let mut buf = [0u8; 256];
    while let Some(Ok(n)) = reader.read(&mut buf).now_or_never() {
        if n == 0 {
            break;
        }
    }
}

/// Reads and drops bytes until none came for `quiet`; the count dropped.
/// Fails if the line never falls silent or the port fails.
async fn drain_until_quiet(port: &SharedPort, quiet: Duration) -> Result<usize, String> {
    if let PortStream::Serial(serial) = &*lock(&port.0) {
        // Bytes the driver already holds go at once.
        let _ = serial.clear(tokio_serial::ClearBuffer::Input);
    }
    let mut reader = port.clone();
    let mut buf = [0u8; 256];
    let mut discarded = 0;
    let give_up = Instant::now() + MAX_DRAIN;
    loop {
        if Instant::now() >= give_up {
            return Err(format!(
                "the line kept sending for {MAX_DRAIN:?} after a failed request"
            ));
        }
        match tokio::time::timeout(quiet, reader.read(&mut buf)).await {
            Err(_) => return Ok(discarded),
            Ok(Ok(0)) => return Err("the peer closed the connection".into()),
            Ok(Ok(n)) => discarded += n,
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::config::Parity;

    fn serial(path: &str, baud_rate: u32) -> Line {
        Line::Serial {
            path: path.into(),
            settings: SerialLineSettings {
                baud_rate,
                parity: Parity::Even,
                data_bits: 8,
                stop_bits: 1,
            },
        }
    }

    const T: Duration = Duration::from_millis(100);

    #[test]
    fn members_of_one_line_share_a_bus_and_their_unit_ids_are_unique() {
        let a = BusMember::join(serial("/dev/test-bus-a", 19200), "m1", 1, T).unwrap();
        let b = BusMember::join(serial("/dev/test-bus-a", 19200), "m2", 2, T).unwrap();
        assert!(Arc::ptr_eq(&a.bus, &b.bus));
        let err = BusMember::join(serial("/dev/test-bus-a", 19200), "m3", 2, T)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m3.unit_id") && err.contains("\"m2\""),
            "{err}"
        );
        let err = BusMember::join(serial("/dev/test-bus-a", 9600), "m4", 4, T)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m4.baud_rate") && err.contains("9600"),
            "{err}"
        );
        // Another line is another bus.
        let c = BusMember::join(serial("/dev/test-bus-b", 9600), "m5", 2, T).unwrap();
        assert!(!Arc::ptr_eq(&a.bus, &c.bus));
        // A freed unit id can be taken again; a line with no member is gone.
        drop(b);
        let b2 = BusMember::join(serial("/dev/test-bus-a", 19200), "m2", 2, T).unwrap();
        drop((a, b2));
        let fresh = BusMember::join(serial("/dev/test-bus-a", 9600), "m6", 1, T).unwrap();
        assert_eq!(fresh.bus.line, serial("/dev/test-bus-a", 9600));
    }

    #[test]
    fn inter_frame_gap_follows_the_spec() {
        let at = |baud_rate, parity| {
            SerialLineSettings {
                baud_rate,
                parity,
                data_bits: 8,
                stop_bits: 1,
            }
            .inter_frame_gap()
        };
        // 3.5 characters of 11 bits at 9600 baud.
        assert_eq!(at(9600, Parity::Even), Duration::from_micros(4010));
        assert_eq!(at(19200, Parity::Even), Duration::from_micros(2005));
        // 10 bits per character without parity.
        assert_eq!(at(19200, Parity::None), Duration::from_micros(1822));
        assert_eq!(at(38400, Parity::Even), Duration::from_micros(1750));
        assert_eq!(at(115_200, Parity::None), Duration::from_micros(1750));
    }
}
