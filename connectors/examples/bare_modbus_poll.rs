//! The floor under a Modbus TCP gateway: one tokio worker, a tokio-modbus
//! client per device reading its f32 holding registers every POLL_MS (each
//! on its own tokio interval, all started together), decoding them, and
//! nothing else: no model, no store, no OPC UA, no metrics. Run beside the
//! gateway by `scripts/bench_stages.py`, which measures its CPU as it
//! measures the gateway's (BENCHMARKS.md §33).
//!
//! `cargo run --release --example bare_modbus_poll -- POLL_MS F32_VALUES STATS_FILE ADDR...`
//! (F32_VALUES per device, read as the gateway plans them: 62 a read). It
//! writes its counters to STATS_FILE once it listens for SIGUSR1, and
//! again on each SIGUSR1, as the reference Python gateway does:
//! `{"dumps": D, "scans": N}` (D counts the writes, N the scans completed).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_modbus::client::{tcp, Reader};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let poll_ms: u64 = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("POLL_MS"))?
        .parse()?;
    let f32_values: u16 = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("F32_VALUES"))?
        .parse()?;
    // (first register, count) of each read: at most 62 f32 (124 registers).
    let reads: Vec<(u16, u16)> = (0..f32_values)
        .step_by(62)
        .map(|k| (2 * k, 2 * (f32_values - k).min(62)))
        .collect();
    let stats_file = args.next().ok_or_else(|| anyhow::anyhow!("STATS_FILE"))?;
    let addresses: Vec<SocketAddr> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    let scans = Arc::new(AtomicU64::new(0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut signals =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
        let counted = scans.clone();
        let write_stats = move |dumps: u64| {
            let text = format!(
                "{{\"dumps\": {dumps}, \"scans\": {}}}",
                counted.load(Ordering::Relaxed)
            );
            let partial = format!("{stats_file}.tmp");
            std::fs::write(&partial, text).and_then(|()| std::fs::rename(&partial, &stats_file))
        };
        write_stats(0)?;
        tokio::spawn(async move {
            let mut dumps = 0;
            while signals.recv().await.is_some() {
                dumps += 1;
                if let Err(e) = write_stats(dumps) {
                    eprintln!("cannot write the stats file: {e}");
                }
            }
        });
        let mut tasks = Vec::new();
        for address in addresses {
            let reads = reads.clone();
            tasks.push(tokio::spawn(poll_device(
                address,
                reads,
                poll_ms,
                scans.clone(),
            )));
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    })
}

/// Reads `reads` from the device at `address` every `poll_ms`, counting
/// each completed scan in `scans`, until a read fails.
async fn poll_device(
    address: SocketAddr,
    reads: Vec<(u16, u16)>,
    poll_ms: u64,
    scans: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut ctx = tcp::connect(address).await?;
    let mut grid = tokio::time::interval(Duration::from_millis(poll_ms));
    grid.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sum = 0f64;
    loop {
        grid.tick().await;
        for &(first, count) in &reads {
            let words = ctx.read_holding_registers(first, count).await??;
            // Decode as the gateway does (big-endian word order).
            for pair in words.chunks_exact(2) {
                let bits = (u32::from(pair[0]) << 16) | u32::from(pair[1]);
                sum += f64::from(f32::from_bits(bits));
            }
        }
        std::hint::black_box(sum);
        scans.fetch_add(1, Ordering::Relaxed);
    }
}
