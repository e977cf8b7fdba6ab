//! The way a poller reaches its unit: its own Modbus TCP connection, or a
//! place on a shared RTU bus. Both answer a read the tokio-modbus way: the
//! outer `Result` is the link (broken, timed out), the inner one the device
//! (values, or a Modbus exception).

use std::sync::Arc;
use std::time::Duration;

use tokio_modbus::client::{tcp, Context, Reader};
use tokio_modbus::{ExceptionCode, Slave};
use tracing::info;

use crate::error::ConnectorError;
use crate::modbus::bus::BusMember;
use crate::modbus::config::RegisterKind;
use crate::source::SourceStats;

/// The registers or bits of one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// What one read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub kind: RegisterKind,
    pub start: u16,
    pub count: u16,
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}+{}", self.kind.as_str(), self.start, self.count)
    }
}

/// A device's answer to one read.
pub type Answer = Result<Block, ExceptionCode>;

/// How a poller reaches its unit.
#[derive(Debug)]
pub enum ModbusLink {
    /// `modbus-tcp`: a connection of its own, opened on first use and dropped
    /// whenever a request fails.
    Tcp(TcpLink),
    /// `modbus-rtu` and `modbus-rtu-over-tcp`: one place on a line shared
    /// with the other units on it.
    Bus(BusMember),
}

impl ModbusLink {
    /// Starts whatever runs beside the poller (the bus task of a shared line).
    pub fn start(&self) {
        if let ModbusLink::Bus(member) = self {
            member.start();
        }
    }

    /// One read under the request timeout.
    pub async fn read(&mut self, span: Span) -> Result<Answer, ConnectorError> {
        match self {
            ModbusLink::Tcp(link) => link.read(span).await,
            ModbusLink::Bus(member) => member.read(span).await,
        }
    }

    /// Where the unit is, for logs: `host:port` or the serial device.
    pub fn describe(&self) -> &str {
        match self {
            ModbusLink::Tcp(link) => &link.target.address,
            ModbusLink::Bus(member) => member.line_name(),
        }
    }
}

/// A Modbus TCP connection to one unit.
pub struct TcpLink {
    target: TcpTarget,
    stats: SourceStats,
    ctx: Option<Context>,
    ever_connected: bool,
}

impl std::fmt::Debug for TcpLink {
    // tokio-modbus' context has no Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpLink")
            .field("address", &self.target.address)
            .field("unit_id", &self.target.unit_id)
            .field("connected", &self.ctx.is_some())
            .finish()
    }
}

impl TcpLink {
    /// No I/O: the connection opens on the first read.
    pub fn new(
        machine: Arc<str>,
        address: String,
        unit_id: u8,
        timeout: Duration,
        stats: SourceStats,
    ) -> Self {
        Self {
            target: TcpTarget {
                machine,
                address,
                unit_id,
                timeout,
            },
            stats,
            ctx: None,
            ever_connected: false,
        }
    }

    async fn read(&mut self, span: Span) -> Result<Answer, ConnectorError> {
        let target = &self.target;
        let timeout = target.timeout;
        let ctx = match &mut self.ctx {
            Some(ctx) => ctx,
            None => {
                let ctx = target.connect().await?;
                if self.ever_connected {
                    self.stats.count_reconnect();
                    info!(machine = %target.machine, address = %target.address, "Modbus link is back");
                } else {
                    info!(machine = %target.machine, address = %target.address, "Modbus link up");
                }
                self.ever_connected = true;
                self.ctx.insert(ctx)
            }
        };
        let failure = match tokio::time::timeout(timeout, read_span(ctx, span)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Err(_) => format!("no answer to {span} within {timeout:?}"),
            // tokio-modbus reports a connection closed by the peer with the
            // thread's last errno, so the text may name an unrelated error.
            Ok(Err(e)) => format!("{span} failed: {e}"),
        };
        // After a timeout a late reply would be taken as the answer to the
        // next request (Modbus TCP clients here do not match transaction
        // ids across requests): only a new connection is safe.
        self.ctx = None;
        Err(self.target.link_error(failure))
    }
}

/// Where a TCP link goes: kept apart from the connection, which is not
/// `Sync`, so that connecting can borrow it across awaits.
#[derive(Debug)]
struct TcpTarget {
    machine: Arc<str>,
    address: String,
    unit_id: u8,
    timeout: Duration,
}

impl TcpTarget {
    /// Resolves the address anew (a DNS name may move) and connects, all
    /// under the request timeout.
    async fn connect(&self) -> Result<Context, ConnectorError> {
        let timeout = self.timeout;
        let slave = Slave(self.unit_id);
        let attempt = async {
            let addrs = tokio::net::lookup_host(self.address.as_str())
                .await
                .map_err(|e| format!("cannot resolve {}: {e}", self.address))?;
            let mut last = format!("{} resolves to no address", self.address);
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

    fn link_error(&self, reason: String) -> ConnectorError {
        ConnectorError::Link {
            machine: self.machine.to_string(),
            reason,
        }
    }
}

/// One read on a tokio-modbus context (TCP or RTU alike).
pub async fn read_span(ctx: &mut Context, span: Span) -> Result<Answer, tokio_modbus::Error> {
    let Span { kind, start, count } = span;
    Ok(match kind {
        RegisterKind::Holding => ctx
            .read_holding_registers(start, count)
            .await?
            .map(Block::Words),
        RegisterKind::Input => ctx
            .read_input_registers(start, count)
            .await?
            .map(Block::Words),
        RegisterKind::Coil => ctx.read_coils(start, count).await?.map(Block::Bits),
        RegisterKind::DiscreteInput => ctx
            .read_discrete_inputs(start, count)
            .await?
            .map(Block::Bits),
    })
}
