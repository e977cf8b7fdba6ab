//! Register banks: Modbus TCP devices that are nothing but `N` f32 values in
//! holding registers, new on every read. The load of the performance
//! benchmark (`benchmarks/`): every scan carries new values, and the device
//! costs as little CPU as a device can, since it shares the cores with the
//! gateway it feeds.
//!
//! Value `k` (registers `2k`, `2k + 1`, big-endian words, ABCD) of a device
//! at its `n`-th answered read (from 0, per device, over all connections) is
//! [`bank_value`]`(k, n)`: `k + (n mod 1000) / 1000`, so it stays inside
//! `[k, k + 1)` (a model's valid input range can hold it) and differs from
//! the previous read's. Any unit id is answered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use crate::error::SimError;

/// Most f32 values of one bank. Up to 62 fit one read (125 registers is
/// the largest Modbus read); a larger bank is read in several. 4096 keeps
/// every value's steps of 1/1000 apart in f32 (its resolution near 4096 is
/// 1/2048).
pub const MAX_BANK_F32: u16 = 4096;

/// Value `k` of a bank at its `read`-th read (see the module docs).
pub fn bank_value(k: u16, read: u64) -> f32 {
    f32::from(k) + (read % 1000) as f32 / 1000.0
}

/// One device: `f32_count` values, a read counter shared by its connections.
#[derive(Clone)]
struct BankService {
    f32_count: u16,
    reads: Arc<AtomicU64>,
}

impl BankService {
    fn read(&self, address: u16, count: u16) -> Result<Response, ExceptionCode> {
        let registers = 2 * u32::from(self.f32_count);
        let end = u32::from(address) + u32::from(count);
        if count == 0 || count > 125 || end > registers {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let read = self.reads.fetch_add(1, Ordering::Relaxed);
        let words = (address..address + count)
            .map(|register| {
                let bits = bank_value(register / 2, read).to_bits();
                if register % 2 == 0 {
                    (bits >> 16) as u16
                } else {
                    bits as u16
                }
            })
            .collect();
        Ok(Response::ReadHoldingRegisters(words))
    }
}

impl Service for BankService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        std::future::ready(match request.request {
            Request::ReadHoldingRegisters(address, count) => self.read(address, count),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// Serves one bank of `f32_count` values on each listener until `cancel`
/// fires.
pub async fn serve_register_banks(
    listeners: Vec<TcpListener>,
    f32_count: u16,
    cancel: CancellationToken,
) -> Result<(), SimError> {
    if f32_count == 0 || f32_count > MAX_BANK_F32 {
        return Err(SimError::InvalidOption {
            name: "f32",
            reason: format!("must be 1 to {MAX_BANK_F32}, got {f32_count}"),
        });
    }
    let mut banks = tokio::task::JoinSet::new();
    for listener in listeners {
        let service = BankService {
            f32_count,
            reads: Arc::default(),
        };
        banks.spawn(async move {
            let new_service = move |_peer| Ok(Some(service.clone()));
            let on_connected = |stream, peer| {
                let new_service = new_service.clone();
                async move { accept_tcp_connection(stream, peer, new_service) }
            };
            let on_process_error = |err| tracing::debug!(%err, "bank connection ended");
            Server::new(listener)
                .serve(&on_connected, on_process_error)
                .await
        });
    }
    tokio::select! {
        () = cancel.cancelled() => Ok(()),
        Some(ended) = banks.join_next() => match ended {
            Ok(result) => result.map_err(SimError::Serve),
            Err(panic) => Err(SimError::Serve(std::io::Error::other(panic))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_in_their_unit_interval_and_change_every_read() {
        for k in [0, 7, 61, MAX_BANK_F32 - 1] {
            for read in [0, 1, 999, 1000, 123_456] {
                let v = bank_value(k, read);
                assert!(
                    (f32::from(k)..f32::from(k) + 1.0).contains(&v),
                    "{k} {read} {v}"
                );
                assert_ne!(v, bank_value(k, read + 1));
            }
        }
    }

    #[test]
    fn reads_beyond_the_bank_are_refused() {
        let bank = BankService {
            f32_count: 62,
            reads: Arc::default(),
        };
        assert!(bank.read(0, 124).is_ok());
        assert_eq!(bank.read(0, 125), Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(bank.read(123, 2), Err(ExceptionCode::IllegalDataAddress));
        // Refused reads are not counted: this is the bank's second read.
        let Ok(Response::ReadHoldingRegisters(words)) = bank.read(2, 2) else {
            panic!("a read inside the bank");
        };
        let bits = (u32::from(words[0]) << 16) | u32::from(words[1]);
        assert_eq!(f32::from_bits(bits), bank_value(1, 1));
    }
}
