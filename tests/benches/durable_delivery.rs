//! The durable-delivery figures of BENCHMARKS.md ("InfluxDB disk spool"),
//! against real parts:
//!
//! 1. the kill loop: the `ironbridge` binary reading a device that numbers
//!    every scan (20 a second), victoria-metrics cut off by a proxy, killed
//!    with SIGKILL and restarted `K` times `S` seconds apart (default 20 x
//!    30 s: a 10-minute outage); then the server comes back and every scan
//!    is looked for in the store;
//! 2. the replay rate: a sink with a spool of `N` lines (default 200 000,
//!    pump-shaped) written while the server was cut off, timed from the
//!    moment the server is back until the last line is acknowledged.
//!
//! cargo build --release -p ironbridge
//! cargo bench -p ironbridge-tests --bench durable_delivery -- [KxS] [N]

use std::time::{Duration, Instant};

use anyhow::Result;
use ironbridge_connectors::influx::InfluxSinkConfig;
use ironbridge_connectors::Record;
use ironbridge_tests::kill_loop::kill_loop;
use ironbridge_tests::sink_rig::{wait_for, RunningSink};
use ironbridge_tests::tcp_proxy::{ProxyMode, TcpProxy};
use ironbridge_tests::victoria::VictoriaMetrics;

// The same pump-shaped scans as the connectors' sink benchmarks.
#[path = "../../connectors/benches/common/pump_scans.rs"]
mod pump_scans;

async fn replay_rate(lines: u64) -> Result<()> {
    let vm = VictoriaMetrics::start().await?;
    let proxy = TcpProxy::start(vm.addr()).await?;
    proxy.set_mode(ProxyMode::Refuse);
    let dir = tempfile::tempdir()?;
    // The defaults of a configuration file, but for the short retry delay
    // (so the measurement starts when the server is back, not when the
    // backoff ends).
    let mut config = InfluxSinkConfig::new(vm.url(), "plant").with_spool(dir.path());
    config.url = proxy.url();
    config.backoff.initial_ms = 10;
    config.backoff.max_ms = 10;
    let sink = RunningSink::start(config)?;
    let scans = pump_scans::scans(lines as usize);
    sink.send(
        scans
            .into_iter()
            .map(|s| Record::Scan(std::sync::Arc::new(s))),
    )
    .await?;
    wait_for("the spool to hold every line", || {
        sink.stats.buffered_lines() == lines
    })
    .await?;
    let spool_bytes = sink.stats.spool_bytes();
    let started = Instant::now();
    proxy.set_mode(ProxyMode::PassThrough);
    let deadline = Instant::now() + Duration::from_secs(600);
    while sink.stats.lines_written() < lines && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let written = sink.stats.lines_written();
    println!(
        "{{\"replay_lines\":{written},\"of\":{lines},\"spool_bytes\":{spool_bytes},\"seconds\":{:.2},\"lines_per_s\":{:.0}}}",
        elapsed.as_secs_f64(),
        written as f64 / elapsed.as_secs_f64()
    );
    sink.stop().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (kills, seconds) = args
        .first()
        .and_then(|spec| spec.split_once('x'))
        .and_then(|(k, s)| Some((k.parse().ok()?, s.parse().ok()?)))
        .unwrap_or((20, 30));
    let lines = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(200_000);

    replay_rate(lines).await?;

    let started = Instant::now();
    let report = kill_loop(kills, Duration::from_secs(seconds), 10).await?;
    println!(
        "{{\"kills\":{kills},\"seconds_apart\":{seconds},\"outage_s\":{:.0},\"scans_served\":{},\"scans_stored\":{},\
         \"lost_in_fsync_window\":{},\"lost_elsewhere\":{},\"written_twice\":{}}}",
        started.elapsed().as_secs_f64(),
        report.scans_served,
        report.scans_stored,
        report.lost_in_fsync_window,
        report.lost_elsewhere.len(),
        report.written_twice
    );
    Ok(())
}
