//! A Modbus TCP device whose holding registers 0-1 hold a sequence number
//! (u32, big-endian words) that goes up by one on every read: each scan of
//! it carries a number of its own, so a test can tell exactly which scans
//! reached the store and which were lost.
//!
//! The device is the data source, not the part under test; it runs on
//! tokio-modbus's server, like the pump simulator.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

pub struct CounterDevice {
    addr: SocketAddr,
    served: Arc<AtomicU32>,
    /// See [`CounterService::alive`].
    alive: Arc<AtomicU32>,
    cancel: CancellationToken,
}

struct CounterService {
    served: Arc<AtomicU32>,
    /// Services alive: the server's template and one per open connection
    /// (tokio-modbus drops a connection's service when it ends).
    alive: Arc<AtomicU32>,
}

impl Clone for CounterService {
    fn clone(&self) -> Self {
        self.alive.fetch_add(1, Ordering::SeqCst);
        Self {
            served: self.served.clone(),
            alive: self.alive.clone(),
        }
    }
}

impl Drop for CounterService {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Service for CounterService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let answer = match request.request {
            Request::ReadHoldingRegisters(0, 2) => {
                let seq = self.served.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(Response::ReadHoldingRegisters(vec![
                    (seq >> 16) as u16,
                    seq as u16,
                ]))
            }
            _ => Err(ExceptionCode::IllegalDataAddress),
        };
        Box::pin(std::future::ready(answer))
    }
}

impl CounterDevice {
    /// Starts the device on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU32::new(0));
        let alive = Arc::new(AtomicU32::new(1));
        let cancel = CancellationToken::new();
        let service = CounterService {
            served: served.clone(),
            alive: alive.clone(),
        };
        let stop = cancel.clone();
        tokio::spawn(async move {
            let new_service = move |_peer| Ok(Some(service.clone()));
            let on_connected = |stream, peer| {
                let new_service = new_service.clone();
                async move { accept_tcp_connection(stream, peer, new_service) }
            };
            let on_process_error = |err| tracing::debug!(%err, "counter device connection ended");
            let server = Server::new(listener);
            tokio::select! {
                _ = server.serve(&on_connected, on_process_error) => {}
                () = stop.cancelled() => {}
            }
        });
        Ok(Self {
            addr,
            served,
            alive,
            cancel,
        })
    }

    /// Connections open now. A connection ends after the device has
    /// answered every request that reached it before the peer went away
    /// (TCP delivers them before the end), so once a killed client's
    /// connection is gone, [`Self::served`] counts every scan it asked for.
    pub fn connections(&self) -> u32 {
        // The server keeps one service as the template for new connections.
        self.alive.load(Ordering::SeqCst).saturating_sub(1)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The last sequence number handed out (0: none yet).
    pub fn served(&self) -> u32 {
        self.served.load(Ordering::SeqCst)
    }

    /// The `[[machines]]` block of a gateway reading the counter as tag
    /// `seq` every `poll_ms`.
    pub fn machine_config(&self, name: &str, poll_ms: u64) -> String {
        format!(
            r#"
[[machines]]
name = "{name}"
protocol = "modbus-tcp"
address = "{addr}"
unit_id = 1
poll_interval_ms = {poll_ms}
request_timeout_ms = 1000
backoff = {{ initial_ms = 100, max_ms = 1000 }}
  [[machines.tags]]
  name = "seq"
  register = "holding"
  address = 0
  type = "u32"
  byte_order = "ABCD"
"#,
            addr = self.addr
        )
    }
}

impl Drop for CounterDevice {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
