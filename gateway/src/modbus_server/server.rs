//! Binding the listener (before anything else starts) and serving the
//! register image over Modbus TCP until the gateway's token is cancelled.

use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use super::config::ModbusServerConfig;
use super::map::RegisterMap;
use super::registers::PredictionRegisters;
use crate::GatewayError;

/// Pause before accepting again after the listener failed (out of file
/// descriptors, usually): such errors pass, and the rest of the gateway
/// keeps running meanwhile.
const ACCEPT_RETRY: Duration = Duration::from_secs(1);

/// A bound, not yet serving, Modbus server and the registers it serves.
/// Binding comes first so that a taken port fails `Gateway::start` before
/// any machine is read.
#[derive(Debug)]
pub struct ModbusServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    registers: PredictionRegisters,
    unit_id: Option<u8>,
}

impl ModbusServer {
    /// Validates `config`, binds its address and builds the image of `map`.
    /// A non-loopback address is allowed but logged as a warning: Modbus has
    /// no authentication.
    pub async fn bind(
        config: &ModbusServerConfig,
        map: &RegisterMap,
    ) -> Result<Self, GatewayError> {
        let problems = config.validate("modbus_server");
        if !problems.is_empty() {
            return Err(GatewayError::ModbusServerConfig(problems));
        }
        let addr = config.socket_addr().map_err(|message| {
            // validate() has refused this already; kept so no path panics.
            GatewayError::ModbusServerConfig(vec![ironbridge_connectors::Problem::new(
                "modbus_server.address",
                message,
            )])
        })?;
        let listener =
            TcpListener::bind(addr)
                .await
                .map_err(|source| GatewayError::ModbusServerBind {
                    addr: addr.to_string(),
                    source,
                })?;
        let local_addr =
            listener
                .local_addr()
                .map_err(|source| GatewayError::ModbusServerBind {
                    addr: addr.to_string(),
                    source,
                })?;
        if !addr.ip().is_loopback() {
            tracing::warn!(
                address = %local_addr,
                "Modbus server listens beyond loopback: Modbus has no authentication, so \
                 anyone who can reach this address can read the predictions"
            );
        }
        tracing::info!(
            address = %local_addr,
            blocks = map.blocks.len(),
            "Modbus server listening (input registers, read-only)"
        );
        Ok(Self {
            listener,
            local_addr,
            registers: PredictionRegisters::new(map),
            unit_id: config.unit_id,
        })
    }

    /// The address it listens on (with the actual port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The handle the gateway writes predictions through.
    pub fn registers(&self) -> PredictionRegisters {
        self.registers.clone()
    }

    /// Serves until `cancel` fires; open connections are closed then. The
    /// task ends when the server has stopped.
    pub fn serve(self, cancel: CancellationToken) -> JoinHandle<()> {
        let service = PredictionService {
            registers: self.registers,
            unit_id: self.unit_id,
        };
        let local_addr = self.local_addr;
        let server = Server::new(self.listener);
        tokio::spawn(async move {
            let new_service = move |_peer| Ok(Some(service.clone()));
            let on_connected = |stream, peer| {
                let new_service = new_service.clone();
                async move { accept_tcp_connection(stream, peer, new_service) }
            };
            let on_process_error =
                |err| tracing::debug!(%err, "Modbus client connection ended with an error");
            loop {
                // Dropping `serve` (on cancel) closes every connection it
                // accepted.
                tokio::select! {
                    () = cancel.cancelled() => break,
                    result = server.serve(&on_connected, on_process_error) => {
                        if let Err(err) = result {
                            tracing::error!(address = %local_addr, %err, "Modbus server cannot accept connections; retrying");
                        }
                    }
                }
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_RETRY) => {}
                }
            }
            tracing::debug!(address = %local_addr, "Modbus server stopped");
        })
    }
}

/// One client connection's view: read-only, function 04 only.
#[derive(Clone)]
struct PredictionService {
    registers: PredictionRegisters,
    unit_id: Option<u8>,
}

impl PredictionService {
    fn answer(&self, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        match *request {
            Request::ReadInputRegisters(address, count) => self
                .registers
                .read_input_registers(address, count)
                .map(Response::ReadInputRegisters),
            // Only input registers exist, and nothing is writable: holding
            // registers, coils, discrete inputs, every write and every other
            // function are "not supported here" (01), which tells an HMI
            // configured for function 03 what is wrong.
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

impl Service for PredictionService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        if self.unit_id.is_some_and(|unit| unit != request.slave) {
            // As a gateway does for a device it has not got: the client
            // fails at once instead of waiting for a timeout.
            return ready(Err(ExceptionCode::GatewayTargetDevice));
        }
        ready(self.answer(&request.request))
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::modbus_server::map::{MapMachine, MapModel};

    fn map() -> RegisterMap {
        RegisterMap::new(
            vec![MapMachine {
                name: "pump-1".into(),
                tag_count: 1,
            }],
            &[MapModel {
                name: "bearing-wear".into(),
                version: "1.0.0".into(),
                outputs: vec!["bearing_wear".into()],
                machines: vec!["pump-1".into()],
            }],
        )
        .expect("map")
    }

    fn config(address: &str, unit_id: Option<u8>) -> ModbusServerConfig {
        ModbusServerConfig {
            address: address.to_string(),
            unit_id,
        }
    }

    #[tokio::test]
    async fn a_taken_address_fails_with_the_address_in_the_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr").to_string();
        let err = ModbusServer::bind(&config(&addr, None), &map())
            .await
            .expect_err("port is taken");
        assert!(
            matches!(err, GatewayError::ModbusServerBind { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(&addr), "{err}");
    }

    #[tokio::test]
    async fn an_invalid_address_is_refused_before_binding() {
        let err = ModbusServer::bind(&config("localhost:5502", None), &map())
            .await
            .expect_err("not a literal address");
        assert!(err.to_string().contains("modbus_server.address"), "{err}");
    }

    #[test]
    fn only_input_registers_are_served_and_nothing_is_writable() {
        let service = PredictionService {
            registers: PredictionRegisters::new(&map()),
            unit_id: None,
        };
        assert!(matches!(
            service.answer(&Request::ReadInputRegisters(0, 2)),
            Ok(Response::ReadInputRegisters(words)) if words == [0x4942, 1]
        ));
        for request in [
            Request::ReadHoldingRegisters(0, 1),
            Request::ReadCoils(0, 1),
            Request::ReadDiscreteInputs(0, 1),
            Request::WriteSingleRegister(0, 1),
            Request::WriteMultipleRegisters(0, Cow::Owned(vec![1, 2])),
            Request::WriteSingleCoil(0, true),
            Request::MaskWriteRegister(0, 0, 0),
            Request::ReadWriteMultipleRegisters(0, 1, 0, Cow::Owned(vec![1])),
            Request::ReportServerId,
            Request::Custom(0x41, Cow::Owned(vec![])),
        ] {
            assert_eq!(
                service.answer(&request),
                Err(ExceptionCode::IllegalFunction),
                "{request:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_configured_unit_id_is_the_only_one_answered() {
        let service = PredictionService {
            registers: PredictionRegisters::new(&map()),
            unit_id: Some(7),
        };
        let request = |slave| SlaveRequest {
            slave,
            request: Request::ReadInputRegisters(0, 1),
        };
        assert!(service.call(request(7)).await.is_ok());
        assert_eq!(
            service.call(request(1)).await,
            Err(ExceptionCode::GatewayTargetDevice)
        );
    }
}
