//! Measures one Modbus RTU bus: 8 units at 19,200 baud on a socat pty pair,
//! answered by the pymodbus serial peer, each machine polled as fast as the
//! bus allows. Prints polls/s against the line's physical limit and the
//! gateway's CPU per value. A measurement, not a test (BENCHMARKS.md says
//! how to read it).
//!
//!   cargo run --release -p ironbridge-tests --example rtu_bus_bench [SECONDS]

use std::time::{Duration, Instant};

use ironbridge_connectors::modbus::{BackoffConfig, ModbusRtuMachineConfig, Parity, RegisterKind};
use ironbridge_connectors::{Quality, SourceConfig};
use ironbridge_tests::modbus_line::{LineMode, LinePeer, PtyPair};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const UNITS: u8 = 8;
const BAUD_RATE: u32 = 19_200;

/// CPU seconds (user + system) this process has used, from /proc.
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start past ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/self/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // USER_HZ is 100 on Linux x86-64.
    Ok(ticks / 100.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20);
    let dir = tempfile::tempdir()?;
    let pty = PtyPair::start(dir.path()).await?;
    let units: Vec<u8> = (1..=UNITS).collect();
    let peer = LinePeer::start(
        &units,
        LineMode::Serial {
            device: &pty.far,
            baud_rate: BAUD_RATE,
        },
    )
    .await?;

    // Each unit: its holding-register tags only (u16, i32, f32 at 0..6),
    // so every poll is exactly one request of 6 registers.
    let mut registers_per_poll = 0u16;
    let mut tags_per_poll = 0usize;
    let (tx, mut rx) = mpsc::channel(1024);
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    for &unit in &units {
        let tags: Vec<_> = peer
            .layout
            .unit(unit)?
            .tags
            .iter()
            .map(|t| t.tag.clone())
            .filter(|t| t.register == RegisterKind::Holding)
            .collect();
        registers_per_poll = tags
            .iter()
            .map(|t| t.address + t.data_type.width())
            .max()
            .unwrap_or(0);
        tags_per_poll = tags.len();
        let source = SourceConfig::ModbusRtu(ModbusRtuMachineConfig {
            name: format!("unit-{unit}"),
            serial: pty.near.display().to_string(),
            baud_rate: BAUD_RATE,
            // Linux ptys here refuse parity; the limit below assumes 8E1.
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
            unit_id: unit,
            // As fast as the bus serves: the poll waits for the bus anyway.
            poll_interval_ms: 1,
            request_timeout_ms: 500,
            backoff: BackoffConfig {
                initial_ms: 100,
                max_ms: 1000,
            },
            max_registers_per_read: 125,
            tags,
        })
        .build()?;
        tasks.push(tokio::spawn(source.run(tx.clone(), cancel.clone())));
    }
    drop(tx);

    // Warm up (the peer's first answers, the bus opening), then measure.
    let warm_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < warm_until {
        let _ = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await;
    }
    let cpu_start = cpu_seconds()?;
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let (mut polls, mut good_values, mut bad_scans) = (0u64, 0u64, 0u64);
    let mut per_unit = vec![0u64; usize::from(UNITS)];
    while Instant::now() < end {
        let Ok(Some(scan)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
        else {
            continue;
        };
        let good = scan
            .readings
            .iter()
            .filter(|r| r.quality == Quality::Good)
            .count() as u64;
        if good == 0 {
            bad_scans += 1;
            continue;
        }
        polls += 1;
        good_values += good;
        if let Some(n) = scan
            .machine
            .strip_prefix("unit-")
            .and_then(|u| u.parse::<usize>().ok())
        {
            per_unit[n - 1] += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu_start;
    cancel.cancel();
    for task in tasks {
        task.await?;
    }

    // The line's limit at 8E1 (11 bits per character): request 8 bytes,
    // response 5 + 2N bytes, and a 3.5-character gap after each frame.
    let char_s = 11.0 / f64::from(BAUD_RATE);
    let response_bytes = 5.0 + 2.0 * f64::from(registers_per_poll);
    let per_request_s = (8.0 + response_bytes) * char_s + 2.0 * 3.5 * char_s;
    let limit = 1.0 / per_request_s;
    println!("units: {UNITS}, baud: {BAUD_RATE}, registers per poll: {registers_per_poll}, tags per poll: {tags_per_poll}");
    println!("measured for {elapsed:.1} s");
    println!(
        "polls/s: {:.1} (per unit: {:?})",
        polls as f64 / elapsed,
        per_unit
    );
    println!(
        "physical limit at 8E1: {limit:.1} polls/s ({:.2} ms per request+response+gaps)",
        per_request_s * 1000.0
    );
    println!("scans with no good value: {bad_scans}");
    println!(
        "gateway CPU: {:.1} % of one core, {:.1} µs per value ({good_values} values)",
        cpu / elapsed * 100.0,
        if good_values > 0 {
            cpu / good_values as f64 * 1e6
        } else {
            0.0
        }
    );
    Ok(())
}
