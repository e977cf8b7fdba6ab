//! The disk spool against real parts: a real victoria-metrics behind a
//! fault proxy, the `ironbridge` binary killed with SIGKILL in a loop during
//! an outage, and a small filesystem that fills up.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use ironbridge_connectors::influx::InfluxSinkConfig;
use ironbridge_connectors::{Record, Scan, TagValue};
use ironbridge_tests::kill_loop::{kill_loop, stored_seqs};
use ironbridge_tests::sink_rig::{good, init_logs, wait_for, RunningSink};
use ironbridge_tests::small_fs::SmallFilesystem;
use ironbridge_tests::tcp_proxy::{ProxyMode, TcpProxy};
use ironbridge_tests::victoria::VictoriaMetrics;

/// 2020-09-13T12:26:40Z, one scan a second from there.
const T0_NS: u64 = 1_600_000_000_000_000_000;
const T0_MS: i64 = 1_600_000_000_000;

/// Scan `i` of machine `m`: `seq = i`, padded so lines are ~`pad` bytes
/// longer (to fill a disk sooner).
fn numbered_scan(i: u64, pad: usize) -> Record {
    let mut readings = vec![good("seq", TagValue::Int(i as i64))];
    if pad > 0 {
        readings.push(good("padding", TagValue::Text("x".repeat(pad).into())));
    }
    Record::Scan(Arc::new(Scan {
        machine: "m".into(),
        acquired_at: UNIX_EPOCH + Duration::from_nanos(T0_NS + i * 1_000_000_000),
        readings,
    }))
}

fn config(url: &str) -> InfluxSinkConfig {
    let mut config = InfluxSinkConfig::new(url, "plant");
    config.flush_interval_ms = 50;
    config.batch_max_lines = 500;
    config.request_timeout_ms = 5_000;
    config.backoff.initial_ms = 50;
    config.backoff.max_ms = 400;
    config
}

#[tokio::test]
async fn an_outage_outlives_a_restart_of_the_sink_in_the_spool() -> Result<()> {
    init_logs();
    let vm = VictoriaMetrics::start().await?;
    let proxy = TcpProxy::start(vm.addr()).await?;
    proxy.set_mode(ProxyMode::Refuse);
    let spool = tempfile::tempdir()?;

    let sink = RunningSink::start(config(&proxy.url()).with_spool(spool.path()))?;
    sink.send((0..500).map(|i| numbered_scan(i, 0))).await?;
    wait_for("500 lines spooled and a write refused", || {
        sink.stats.buffered_lines() == 500 && sink.stats.write_failures() > 0
    })
    .await?;
    assert!(
        sink.stats.spool_bytes() > 500 * 20,
        "{}",
        sink.stats.spool_bytes()
    );
    let stats = sink.stop().await?;
    assert_eq!(stats.lines_kept_at_shutdown(), 500);
    assert_eq!(stats.lines_lost_at_shutdown(), 0);
    assert_eq!(stats.lines_written(), 0);

    // The server is back; a new sink (a new process, as far as the spool
    // knows) delivers the old lines first, then the new ones.
    proxy.set_mode(ProxyMode::PassThrough);
    let sink = RunningSink::start(config(&proxy.url()).with_spool(spool.path()))?;
    assert_eq!(sink.stats.lines_recovered(), 500);
    sink.send((500..600).map(|i| numbered_scan(i, 0))).await?;
    wait_for("600 lines written", || sink.stats.lines_written() == 600).await?;
    let series = vm.export(r#"process_seq{machine="m"}"#).await?;
    let samples: Vec<(i64, f64)> = series.iter().flat_map(|s| s.samples()).collect();
    let expected: Vec<(i64, f64)> = (0..600)
        .map(|i| (T0_MS + i as i64 * 1000, i as f64))
        .collect();
    assert_eq!(samples, expected, "every line once, in order, exact");
    let stats = sink.stop().await?;
    assert_eq!(stats.lines_kept_at_shutdown(), 0);
    assert_eq!(stats.buffered_lines(), 0);

    // Delivered lines are gone from the disk: the next start finds nothing.
    let sink = RunningSink::start(config(&vm.url()).with_spool(spool.path()))?;
    assert_eq!(sink.stats.lines_recovered(), 0);
    sink.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_filesystem_that_fills_up_drops_the_oldest_lines_and_keeps_the_sink_running() -> Result<()>
{
    init_logs();
    let vm = VictoriaMetrics::start().await?;
    let proxy = TcpProxy::start(vm.addr()).await?;
    proxy.set_mode(ProxyMode::Refuse);
    // 16 MiB of disk under a spool allowed 1 GiB: the disk is full first.
    let disk = SmallFilesystem::mount(16 * 1024)?;
    let mut config = config(&proxy.url()).with_spool(disk.path().join("spool"));
    config.spool_max_bytes = 1 << 30;
    let sink = RunningSink::start(config.clone())?;

    // ~300 bytes a line: 100 000 lines are about twice the disk.
    const SENT: u64 = 100_000;
    sink.send((0..SENT).map(|i| numbered_scan(i, 250))).await?;
    wait_for("every line spooled or dropped", || {
        sink.stats.buffered_lines() + sink.stats.lines_dropped_overflow() == SENT
    })
    .await?;
    let dropped = sink.stats.lines_dropped_overflow();
    assert!(dropped > 0, "the disk should have filled up");
    assert!(
        sink.stats.buffered_lines() > 10_000,
        "most of the disk is used"
    );
    assert!(!sink.task.is_finished(), "the sink keeps running");

    // The server comes back: the newest lines, in order, the last included.
    proxy.set_mode(ProxyMode::PassThrough);
    wait_for("the spool to drain", || sink.stats.buffered_lines() == 0).await?;
    let (seqs, samples) = stored_seqs(&vm, "m").await?;
    let first = SENT - seqs.len() as u64;
    assert_eq!(
        seqs,
        (first..SENT).collect::<BTreeSet<_>>(),
        "a contiguous run of the newest lines"
    );
    assert_eq!(samples, seqs.len(), "no line written twice");
    assert_eq!(first, dropped, "dropped + delivered = sent");
    let stats = sink.stop().await?;
    assert_eq!(stats.lines_written(), SENT - dropped);
    Ok(())
}

#[tokio::test]
async fn a_disk_already_full_at_start_buffers_in_memory_instead_of_failing() -> Result<()> {
    init_logs();
    let vm = VictoriaMetrics::start().await?;
    let disk = SmallFilesystem::mount(64)?;
    // Something else took every block.
    {
        use std::io::Write as _;
        let mut filler = std::fs::File::create(disk.path().join("filler"))?;
        while filler.write_all(&[0u8; 4096]).is_ok() {}
    }
    let sink = RunningSink::start(config(&vm.url()).with_spool(disk.path().join("spool")))?;
    sink.send((0..100).map(|i| numbered_scan(i, 0))).await?;
    wait_for("100 lines written", || sink.stats.lines_written() == 100).await?;
    assert!(sink.stats.spool_errors() >= 1, "the full disk is reported");
    assert_eq!(sink.stats.spool_bytes(), 0, "buffering in memory");
    let (seqs, _) = stored_seqs(&vm, "m").await?;
    assert_eq!(seqs, (0..100).collect(), "every line delivered");
    sink.stop().await?;
    Ok(())
}

#[tokio::test]
async fn kill_9_in_a_loop_during_an_outage_loses_nothing_beyond_the_fsync_window() -> Result<()> {
    init_logs();
    // 5 kills, about a second of scans each (20 a second), during one
    // outage. With spool_fsync = "batch" a scan is on disk before the sink
    // takes the next: a kill can only catch the few still on their way.
    let report = kill_loop(5, Duration::from_secs(1), 10).await?;
    eprintln!("{report:#?}");
    assert!(report.scans_served > 5 * 20, "{report:#?}");
    assert!(report.lost_elsewhere.is_empty(), "{report:#?}");
    assert!(
        report.lost_in_fsync_window <= 5 * 10,
        "at most the window at each kill: {report:#?}"
    );
    Ok(())
}
