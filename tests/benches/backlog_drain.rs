//! How long a backlog takes to reach a store a round trip away, with
//! requests of one size against the larger ones `backlog_batch_max_lines`
//! allows (BENCHMARKS.md §38), against a real victoria-metrics:
//!
//! the sink holds `LINES` pump-shaped lines while the test proxy refuses
//! connections (an outage); then the proxy passes again, each way
//! `ONE_WAY_MS` late (a store on another site), and the drain is timed
//! from that moment until the last line is acknowledged. Each round runs
//! every delay, buffer (memory, disk spool) and request size, the two
//! sizes in the other order every other round. gzip is on, as it is by
//! default for a store that is not on this host.
//!
//! cargo bench -p ironbridge-tests --bench backlog_drain -- [LINES] [ONE_WAY_MS,...] [ROUNDS]

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ironbridge_connectors::influx::{BufferKind, InfluxSinkConfig};
use ironbridge_connectors::Record;
use ironbridge_tests::sink_rig::{wait_for, RunningSink};
use ironbridge_tests::tcp_proxy::{ProxyMode, TcpProxy};
use ironbridge_tests::victoria::VictoriaMetrics;

// The same pump-shaped scans as the connectors' sink benchmarks.
#[path = "../../connectors/benches/common/pump_scans.rs"]
mod pump_scans;

/// `backlog_batch_max_lines` of "one size": every request as large as
/// `batch_max_lines`, as before the key existed.
const ONE_SIZE: usize = 5000;

struct Drain {
    seconds: f64,
    requests: u64,
    failures: u64,
}

async fn drain(
    vm: &VictoriaMetrics,
    lines: usize,
    one_way_ms: u64,
    buffer: BufferKind,
    backlog_batch_max_lines: Option<usize>,
) -> Result<Drain> {
    let proxy = TcpProxy::start(vm.addr()).await?;
    proxy.set_mode(ProxyMode::Refuse);
    let dir = tempfile::tempdir()?;
    let mut config = InfluxSinkConfig::new(vm.url(), "plant");
    if buffer == BufferKind::Disk {
        config = config.with_spool(dir.path());
    }
    config.url = proxy.url();
    config.buffer_max_lines = lines.max(config.buffer_max_lines);
    config.backlog_batch_max_lines = backlog_batch_max_lines;
    config.gzip = Some(true);
    // The timing starts when the store is back, not when a backoff ends.
    config.backoff.initial_ms = 10;
    config.backoff.max_ms = 10;
    let sink = RunningSink::start(config)?;
    // The same lines (series and times) in every run: the store answers
    // a write of points it already holds as it answers any other.
    sink.send(
        pump_scans::scans(lines)
            .into_iter()
            .map(|s| Record::Scan(std::sync::Arc::new(s))),
    )
    .await?;
    wait_for("the buffer to hold every line", || {
        sink.stats.buffered_lines() == lines as u64
    })
    .await?;
    let requests_before = sink.stats.batches_written();
    let failures_before = sink.stats.write_failures();
    proxy.set_mode(ProxyMode::Delay { one_way_ms });
    let started = Instant::now();
    let deadline = started + Duration::from_secs(900);
    while sink.stats.lines_written() < lines as u64 {
        if Instant::now() > deadline {
            bail!(
                "{} of {lines} lines written after 900 s",
                sink.stats.lines_written()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = sink.stop().await?;
    Ok(Drain {
        seconds,
        requests: stats.batches_written() - requests_before,
        failures: stats.write_failures() - failures_before,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let lines: usize = args.first().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let delays: Vec<u64> = args
        .get(1)
        .map(|list| list.split(',').filter_map(|d| d.parse().ok()).collect())
        .unwrap_or_else(|| vec![0, 10, 50]);
    let rounds: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(2);

    let vm = VictoriaMetrics::start().await?;
    let sizes = [("one size", Some(ONE_SIZE)), ("larger", None)];
    println!("| one way | buffer | request size | round | seconds | lines/s | requests | write failures |");
    println!("|---:|---|---|---:|---:|---:|---:|---:|");
    for round in 0..rounds {
        for &one_way_ms in &delays {
            for buffer in [BufferKind::Memory, BufferKind::Disk] {
                let mut order = sizes;
                if round % 2 == 1 {
                    order.reverse();
                }
                for (name, backlog) in order {
                    let d = drain(&vm, lines, one_way_ms, buffer, backlog).await?;
                    eprintln!(
                        "{{\"one_way_ms\":{one_way_ms},\"buffer\":\"{buffer:?}\",\"requests\":\"{name}\",\
                         \"round\":{round},\"lines\":{lines},\"seconds\":{:.3},\"batches\":{},\"write_failures\":{}}}",
                        d.seconds, d.requests, d.failures
                    );
                    println!(
                        "| {one_way_ms} ms | {buffer:?} | {name} | {} | {:.2} | {:.0} | {} | {} |",
                        round + 1,
                        d.seconds,
                        lines as f64 / d.seconds,
                        d.requests,
                        d.failures
                    );
                }
            }
        }
    }
    Ok(())
}
