//! The InfluxDB sink against a real VictoriaMetrics (InfluxDB v2 write API),
//! with faults injected around it: stopped and restarted, cut off by a
//! proxy, answering 4xx.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use ironbridge_connectors::influx::{
    BatchBody, InfluxSinkConfig, InfluxWriter, LineWriter, WriteError,
};
use ironbridge_connectors::{Prediction, Quality, Record, Scan, TagReading, TagValue};
use ironbridge_tests::sink_rig::{good, init_logs, wait_for, RunningSink, DEADLINE};
use ironbridge_tests::tcp_proxy::{ProxyMode, TcpProxy};
use ironbridge_tests::victoria::{ExportedSeries, VictoriaMetrics};

/// 2020-09-13T12:26:40.123456789Z: old, so the data can only carry the
/// acquisition time, never the time it was sent.
const T0_NS: u64 = 1_600_000_000_123_456_789;
const T0_MS: i64 = 1_600_000_000_123;

fn at(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn scan(machine: &str, acquired_at_ns: u64, readings: Vec<TagReading>) -> Record {
    Record::Scan(Arc::new(Scan {
        machine: machine.into(),
        acquired_at: at(acquired_at_ns),
        readings,
    }))
}

/// Scan number `i` of machine `m`: one reading `seq = i`, one second apart.
fn numbered_scan(i: u64) -> Record {
    numbered_scan_of("m", i)
}

/// The same for `machine`.
fn numbered_scan_of(machine: &str, i: u64) -> Record {
    scan(
        machine,
        T0_NS + i * 1_000_000_000,
        vec![good("seq", TagValue::Int(i as i64))],
    )
}

fn numbered_sample(i: u64) -> (i64, f64) {
    (T0_MS + i as i64 * 1000, i as f64)
}

/// Short intervals so the tests move quickly; behaviour does not depend on
/// them.
fn config(url: &str) -> InfluxSinkConfig {
    let mut config = InfluxSinkConfig::new(url, "plant");
    config.org = "acme".into();
    config.flush_interval_ms = 50;
    config.batch_max_lines = 100;
    config.buffer_max_lines = 1000;
    config.request_timeout_ms = 5_000;
    config.backoff.initial_ms = 50;
    config.backoff.max_ms = 400;
    config
}

/// Polls the server until the export of `selector` has `samples` samples.
async fn wait_for_export(
    vm: &VictoriaMetrics,
    selector: &str,
    samples: usize,
) -> Result<Vec<ExportedSeries>> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let series = vm.export(selector).await?;
        let found: usize = series.iter().map(|s| s.values.len()).sum();
        if found == samples {
            return Ok(series);
        }
        if found > samples || tokio::time::Instant::now() >= deadline {
            bail!("expected {samples} samples of {selector}, found {found}: {series:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Metric name, labels other than the name, samples.
type SeriesView<'a> = (String, Vec<(&'a str, &'a str)>, Vec<(i64, f64)>);

fn only_series(series: &[ExportedSeries]) -> Result<&ExportedSeries> {
    match series {
        [one] => Ok(one),
        _ => bail!("expected one series, got {series:#?}"),
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> Result<T> {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(value) => Ok(value),
        Err(_) => bail!("gave up waiting for: {what}"),
    }
}

#[tokio::test]
async fn scans_and_predictions_arrive_with_acquisition_times_exact_values_and_escaping(
) -> Result<()> {
    init_logs();
    let vm = VictoriaMetrics::start().await?;
    let sink = RunningSink::start(config(&vm.url()))?;

    // Space, comma, equals sign and a backslash: all must survive.
    let machine = "C:\\press 7,line=2";
    let readings = vec![
        good("temp_c", TagValue::Float(21.5)),
        good("count", TagValue::Int(-3)),
        // Above i64::MAX, so written as a float; 1e19 is exact in both f64
        // and VictoriaMetrics' decimal storage.
        good("total", TagValue::UInt(10_000_000_000_000_000_000)),
        good("running", TagValue::Bool(true)),
        good("flow rate,l=min", TagValue::Float(0.125)),
        good("tiny", TagValue::Float(1.5e-7)),
        TagReading {
            tag: "unreadable".into(),
            value: None,
            quality: Quality::Bad,
            status: None,
        },
        TagReading {
            tag: "shaky".into(),
            value: Some(TagValue::Int(7)),
            quality: Quality::Uncertain,
            status: None,
        },
        good("broken", TagValue::Float(f64::NAN)),
    ];
    let prediction = Prediction {
        machine: machine.into(),
        model: "wear model".into(),
        version: "1.2.0".into(),
        inputs_acquired_at: at(T0_NS),
        outputs: vec![("rul_h".into(), 123.25), ("p_fail".into(), 0.0625)],
    };
    sink.send([
        scan(machine, T0_NS, readings),
        scan(
            machine,
            T0_NS + 1_000_000_000,
            vec![good("temp_c", TagValue::Float(-22.75))],
        ),
        // No good value: no line at all.
        scan(
            "mill-2",
            T0_NS,
            vec![TagReading {
                tag: "temp_c".into(),
                value: None,
                quality: Quality::Bad,
                status: None,
            }],
        ),
        Record::Prediction(Arc::new(prediction)),
    ])
    .await?;

    wait_for("3 lines written", || sink.stats.lines_written() == 3).await?;
    let series = wait_for_export(&vm, r#"{__name__=~"(process|prediction)_.*"}"#, 9).await?;
    let found: Vec<SeriesView> = series
        .iter()
        .map(|s| {
            let labels = s
                .metric
                .iter()
                .filter(|(k, _)| *k != "__name__")
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            (s.name().to_string(), labels, s.samples())
        })
        .collect();
    let process = |name: &str, samples: Vec<(i64, f64)>| {
        (name.to_string(), vec![("machine", machine)], samples)
    };
    let predicted = |name: &str, value: f64| {
        (
            name.to_string(),
            vec![
                ("machine", machine),
                ("model", "wear model"),
                ("version", "1.2.0"),
            ],
            vec![(T0_MS, value)],
        )
    };
    let mut expected = vec![
        process("process_count", vec![(T0_MS, -3.0)]),
        process("process_flow rate,l=min", vec![(T0_MS, 0.125)]),
        process("process_running", vec![(T0_MS, 1.0)]),
        process(
            "process_temp_c",
            vec![(T0_MS, 21.5), (T0_MS + 1000, -22.75)],
        ),
        process("process_tiny", vec![(T0_MS, 1.5e-7)]),
        process("process_total", vec![(T0_MS, 1e19)]),
        predicted("prediction_p_fail", 0.0625),
        predicted("prediction_rul_h", 123.25),
    ];
    let mut found = found;
    found.sort_by(|a, b| a.0.cmp(&b.0));
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(found, expected);

    let stats = sink.stop().await?;
    assert_eq!(stats.lines_written(), 3);
    assert_eq!(stats.lines_dropped_overflow(), 0);
    assert_eq!(stats.lines_dropped_rejected(), 0);
    assert_eq!(stats.buffered_lines(), 0);
    Ok(())
}

#[tokio::test]
async fn server_down_buffers_and_restart_delivers_everything() -> Result<()> {
    init_logs();
    let mut vm = VictoriaMetrics::start().await?;
    let sink = RunningSink::start(config(&vm.url()))?;

    sink.send((0..5).map(numbered_scan)).await?;
    wait_for("first 5 lines written", || sink.stats.lines_written() == 5).await?;

    vm.stop().await?;
    sink.send((5..25).map(numbered_scan)).await?;
    wait_for("20 lines buffered after failed writes", || {
        sink.stats.buffered_lines() == 20 && sink.stats.write_failures() >= 2
    })
    .await?;
    assert_eq!(sink.stats.lines_written(), 5);

    vm.restart().await?;
    wait_for("all 25 lines written", || sink.stats.lines_written() == 25).await?;
    assert_eq!(sink.stats.buffered_lines(), 0);

    let series = wait_for_export(&vm, r#"process_seq{machine="m"}"#, 25).await?;
    let expected: Vec<(i64, f64)> = (0..25).map(numbered_sample).collect();
    assert_eq!(only_series(&series)?.samples(), expected);

    let stats = sink.stop().await?;
    assert_eq!(stats.lines_dropped_overflow(), 0);
    assert_eq!(stats.lines_dropped_rejected(), 0);
    Ok(())
}

#[tokio::test]
async fn full_buffer_while_unreachable_drops_oldest_and_delivers_newest() -> Result<()> {
    init_logs();
    let vm = VictoriaMetrics::start().await?;
    let proxy = TcpProxy::start(vm.addr()).await?;
    proxy.set_mode(ProxyMode::Refuse);
    let mut config = config(&proxy.url());
    config.buffer_max_lines = 10;
    config.batch_max_lines = 4;
    let sink = RunningSink::start(config)?;

    sink.send((0..25).map(numbered_scan)).await?;
    // Lines evicted from a batch being written are counted once that write
    // has failed, hence waiting for the count rather than reading it.
    wait_for("15 oldest lines dropped, 10 buffered", || {
        sink.stats.lines_dropped_overflow() == 15 && sink.stats.buffered_lines() == 10
    })
    .await?;
    assert!(sink.stats.write_failures() >= 1);
    assert_eq!(sink.stats.lines_written(), 0);

    proxy.set_mode(ProxyMode::PassThrough);
    wait_for("10 newest lines written", || {
        sink.stats.lines_written() == 10
    })
    .await?;

    let series = wait_for_export(&vm, r#"process_seq{machine="m"}"#, 10).await?;
    let expected: Vec<(i64, f64)> = (15..25).map(numbered_sample).collect();
    assert_eq!(only_series(&series)?.samples(), expected);

    let stats = sink.stop().await?;
    assert_eq!(stats.lines_dropped_overflow(), 15);
    assert_eq!(stats.lines_dropped_rejected(), 0);
    Ok(())
}

#[tokio::test]
async fn blackholed_server_times_out_and_everything_arrives_after() -> Result<()> {
    init_logs();
    let vm = VictoriaMetrics::start().await?;
    let proxy = TcpProxy::start(vm.addr()).await?;
    let mut config = config(&proxy.url());
    // Each attempt into the blackhole ends at this deadline.
    config.request_timeout_ms = 300;
    let sink = RunningSink::start(config)?;

    sink.send((0..3).map(numbered_scan)).await?;
    wait_for("first 3 lines written", || sink.stats.lines_written() == 3).await?;

    // Also cuts the pooled keep-alive connection the writer used so far.
    proxy.set_mode(ProxyMode::Blackhole);
    sink.send((3..10).map(numbered_scan)).await?;
    wait_for("7 lines buffered after timed-out writes", || {
        sink.stats.buffered_lines() == 7 && sink.stats.write_failures() >= 2
    })
    .await?;

    proxy.set_mode(ProxyMode::PassThrough);
    wait_for("all 10 lines written", || sink.stats.lines_written() == 10).await?;
    let series = wait_for_export(&vm, r#"process_seq{machine="m"}"#, 10).await?;
    let expected: Vec<(i64, f64)> = (0..10).map(numbered_sample).collect();
    assert_eq!(only_series(&series)?.samples(), expected);

    let stats = sink.stop().await?;
    assert_eq!(stats.lines_dropped_overflow(), 0);
    Ok(())
}

/// `gzip` unset sends plain bodies to a store on this host; `gzip = true`
/// compresses them. The store keeps the same points either way.
#[tokio::test]
async fn bodies_go_plain_to_a_loopback_store_unless_gzip_is_set() -> Result<()> {
    init_logs();
    let vm = VictoriaMetrics::start().await?;
    let mut bytes_sent = Vec::new();
    for (gzip, machine) in [(None, "plain"), (Some(true), "gzipped")] {
        let proxy = TcpProxy::start(vm.addr()).await?;
        let mut config = config(&proxy.url());
        config.gzip = gzip;
        let sink = RunningSink::start(config)?;
        sink.send((0..500).map(|i| {
            scan(
                machine,
                T0_NS + i * 1_000_000_000,
                vec![good("seq", TagValue::Int(i as i64))],
            )
        }))
        .await?;
        wait_for("500 lines written", || sink.stats.lines_written() == 500).await?;
        sink.stop().await?;
        // Stopping the sink drops its client, which closes the connection.
        wait_for("the sink's connection closed", || {
            proxy.bytes_to_upstream() > 0
        })
        .await?;
        bytes_sent.push(proxy.bytes_to_upstream());
        let series =
            wait_for_export(&vm, &format!(r#"process_seq{{machine="{machine}"}}"#), 500).await?;
        assert_eq!(
            only_series(&series)?.samples(),
            (0..500).map(numbered_sample).collect::<Vec<_>>()
        );
    }
    // 500 lines of ~60 bytes: plain, the bodies alone are ~30 kB.
    let [plain, gzipped] = bytes_sent[..] else {
        bail!("two runs, got {bytes_sent:?}");
    };
    assert!(plain > 500 * 50, "plain: {plain} bytes");
    assert!(
        gzipped * 3 < plain,
        "gzipped: {gzipped} bytes, plain: {plain}"
    );
    Ok(())
}

#[tokio::test]
async fn a_refused_line_goes_to_the_dead_letter_file_and_the_sink_carries_on() -> Result<()> {
    init_logs();
    // VictoriaMetrics answers 400 to a plain body that is one line longer
    // than -influx.maxLineSize; every other line here is far shorter. (Such
    // a line among others, or in a gzip body, it skips and answers 204: a
    // loss only its log shows. Splitting a batch to find the refused line
    // is tested against InfluxDB 1.x, which refuses what it cannot store:
    // influx_v1.rs.)
    let vm = VictoriaMetrics::start_with_args(&["-influx.maxLineSize=300"]).await?;
    let dir = tempfile::tempdir()?;
    let dead_letter = dir.path().join("dead-letter").join("influx.lp");
    let mut config = config(&vm.url());
    config.dead_letter_path = Some(dead_letter.clone());
    config.gzip = Some(false);
    let sink = RunningSink::start(config)?;

    let wide: Vec<TagReading> = (0..60)
        .map(|i| good(&format!("wide_{i}"), TagValue::Int(i)))
        .collect();
    sink.send([scan("m", T0_NS, wide)]).await?;
    wait_for("the oversized line dead-lettered", || {
        sink.stats.lines_dead_lettered() == 1
    })
    .await?;
    assert_eq!(
        sink.stats.buffered_lines(),
        0,
        "a refused line is not retried"
    );

    sink.send((0..3).map(numbered_scan)).await?;
    wait_for("the next 3 lines written", || {
        sink.stats.lines_written() == 3
    })
    .await?;
    let series = wait_for_export(&vm, r#"process_seq{machine="m"}"#, 3).await?;
    let expected: Vec<(i64, f64)> = (0..3).map(numbered_sample).collect();
    assert_eq!(only_series(&series)?.samples(), expected);
    // The refused line after the server's answer, to be fixed and replayed
    // by hand.
    let text = std::fs::read_to_string(&dead_letter)?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("# ") && lines[0].contains("HTTP 400"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("process,machine=m wide_0=0i,"),
        "{text}"
    );

    let stats = sink.stop().await?;
    assert_eq!(stats.lines_dead_lettered(), 1);
    assert_eq!(stats.lines_dropped_rejected(), 0);
    assert_eq!(stats.write_failures(), 0);
    Ok(())
}

#[tokio::test]
async fn wrong_credentials_keep_the_data_and_are_retried() -> Result<()> {
    init_logs();
    // With basic auth required, VictoriaMetrics answers the client's
    // `Authorization: Token ...` with 401.
    let vm =
        VictoriaMetrics::start_with_args(&["-httpAuth.username=plant", "-httpAuth.password=pw"])
            .await?;
    let mut config = config(&vm.url());
    // Any non-empty token is wrong here. PATH is always set, and reading it
    // avoids setting a variable while other tests' threads read the
    // environment.
    config.token_env = Some("PATH".into());
    let sink = RunningSink::start(config)?;

    sink.send((0..5).map(numbered_scan)).await?;
    wait_for("401 answered and retried", || {
        sink.stats.auth_failures() >= 3
    })
    .await?;
    assert_eq!(
        sink.stats.buffered_lines(),
        5,
        "kept for when credentials are fixed"
    );
    assert_eq!(sink.stats.lines_dropped_rejected(), 0);

    let stats = sink.stop().await?;
    assert_eq!(stats.lines_written(), 0);
    // No disk spool here: what was kept in memory is lost at shutdown, and
    // counted.
    assert_eq!(stats.lines_lost_at_shutdown(), 5);
    Ok(())
}

#[tokio::test]
async fn cancel_drains_the_channel_and_flushes() -> Result<()> {
    init_logs();
    let vm = VictoriaMetrics::start().await?;
    let mut config = config(&vm.url());
    // Nothing would be written for an hour but for the shutdown flush.
    config.flush_interval_ms = 3_600_000;
    config.batch_max_lines = 1000;
    let sink = RunningSink::start(config)?;

    sink.send((0..50).map(numbered_scan)).await?;
    let stats = within("sink stop", sink.stop()).await??;
    assert_eq!(stats.lines_written(), 50);
    assert_eq!(stats.batches_written(), 1);
    assert_eq!(stats.buffered_lines(), 0);

    let series = wait_for_export(&vm, r#"process_seq{machine="m"}"#, 50).await?;
    let expected: Vec<(i64, f64)> = (0..50).map(numbered_sample).collect();
    assert_eq!(only_series(&series)?.samples(), expected);
    Ok(())
}

/// Stopping while the server is unreachable: what could not be delivered is
/// counted as lost (the buffer is in memory), none of it is hidden.
#[tokio::test]
async fn lines_undeliverable_at_shutdown_are_counted() -> Result<()> {
    init_logs();
    let mut vm = VictoriaMetrics::start().await?;
    let sink = RunningSink::start(config(&vm.url()))?;
    sink.send((0..5).map(numbered_scan)).await?;
    wait_for("first 5 lines written", || sink.stats.lines_written() == 5).await?;

    vm.stop().await?;
    sink.send((5..35).map(numbered_scan)).await?;
    wait_for("30 lines buffered", || sink.stats.buffered_lines() == 30).await?;
    let stats = within("sink stop", sink.stop()).await??;
    assert_eq!(stats.lines_written(), 5);
    assert_eq!(stats.lines_lost_at_shutdown(), 30);
    assert_eq!(stats.buffered_lines(), 0);
    Ok(())
}

/// The real writer behind a fault injector: answers chosen by the test come
/// back as if the server had sent them (for answers neither
/// victoria-metrics nor InfluxDB can be made to give on cue: 503 with
/// Retry-After, 413), everything else reaches the real server.
struct FaultInjector {
    inner: InfluxWriter,
    /// Answered instead of writing, one per call, while any are left.
    next_faults: std::sync::Mutex<std::collections::VecDeque<WriteError>>,
    /// Batches of more lines than this are answered 413.
    max_lines: usize,
    /// When each call came, and how many lines it carried.
    calls: std::sync::Mutex<Vec<(tokio::time::Instant, usize)>>,
}

/// The sink's handle on the shared injector.
struct Injected(Arc<FaultInjector>);

impl LineWriter for Injected {
    async fn write(&self, body: BatchBody) -> Result<(), WriteError> {
        let this = &self.0;
        let lines = body.line_count();
        if let Ok(mut calls) = this.calls.lock() {
            calls.push((tokio::time::Instant::now(), lines));
        }
        let fault = this.next_faults.lock().ok().and_then(|mut f| f.pop_front());
        if let Some(fault) = fault {
            return Err(fault);
        }
        if lines > this.max_lines {
            return Err(WriteError::TooLarge("HTTP 413: request too large".into()));
        }
        this.inner.write(body).await
    }
}

fn start_injected(
    config: InfluxSinkConfig,
    faults: Vec<WriteError>,
    max_lines: usize,
) -> Result<(RunningSink, Arc<FaultInjector>)> {
    let injector = Arc::new(FaultInjector {
        inner: InfluxWriter::new(&config)?,
        next_faults: std::sync::Mutex::new(faults.into()),
        max_lines,
        calls: std::sync::Mutex::new(Vec::new()),
    });
    let sink = RunningSink::start_with(config, Injected(injector.clone()))?;
    Ok((sink, injector))
}

#[tokio::test]
async fn throttled_writes_wait_for_retry_after() -> Result<()> {
    init_logs();
    let vm = VictoriaMetrics::start().await?;
    // Backoff alone would retry after 50 ms.
    let retry_after = Duration::from_millis(1500);
    let (sink, injector) = start_injected(
        config(&vm.url()),
        vec![WriteError::Throttled {
            reason: "HTTP 503: busy".into(),
            retry_after,
        }],
        usize::MAX,
    )?;
    sink.send((0..5).map(numbered_scan)).await?;
    wait_for("5 lines written", || sink.stats.lines_written() == 5).await?;
    let calls = injector.calls.lock().map(|c| c.clone()).unwrap_or_default();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let waited = calls[1].0 - calls[0].0;
    assert!(waited >= retry_after, "retried after {waited:?}");
    let series = wait_for_export(&vm, r#"process_seq{machine="m"}"#, 5).await?;
    assert_eq!(
        only_series(&series)?.samples(),
        (0..5).map(numbered_sample).collect::<Vec<_>>()
    );
    let stats = sink.stop().await?;
    assert_eq!(stats.write_failures(), 1);
    Ok(())
}

#[tokio::test]
async fn too_large_batches_are_split_until_they_fit() -> Result<()> {
    init_logs();
    let vm = VictoriaMetrics::start().await?;
    let mut config = config(&vm.url());
    config.flush_interval_ms = 300;
    // 20 lines in one batch, the server takes at most 6 per request.
    let (sink, injector) = start_injected(config, Vec::new(), 6)?;
    sink.send((0..20).map(numbered_scan)).await?;
    wait_for("20 lines written", || sink.stats.lines_written() == 20).await?;
    let series = wait_for_export(&vm, r#"process_seq{machine="m"}"#, 20).await?;
    assert_eq!(
        only_series(&series)?.samples(),
        (0..20).map(numbered_sample).collect::<Vec<_>>()
    );
    let calls = injector.calls.lock().map(|c| c.clone()).unwrap_or_default();
    assert_eq!(calls[0].1, 20, "{calls:?}");
    assert!(calls.iter().skip(1).any(|c| c.1 <= 6), "{calls:?}");
    let stats = sink.stop().await?;
    assert_eq!(stats.lines_dead_lettered(), 0);
    assert!(stats.batches_split() >= 2);
    Ok(())
}

/// A backlog (here, 1,000 lines held back by an outage) goes in requests of
/// up to `backlog_batch_max_lines`, by default four times
/// `batch_max_lines`: with one request out at a time, fewer requests drain
/// it sooner. The first request after the outage is of at most
/// `batch_max_lines` (no pace measured yet). Set to `batch_max_lines`,
/// every request stays at that size. Both buffers: the memory one and the
/// disk spool.
#[tokio::test]
async fn a_backlog_goes_in_larger_requests_up_to_backlog_batch_max_lines() -> Result<()> {
    init_logs();
    let vm = VictoriaMetrics::start().await?;
    let proxy = TcpProxy::start(vm.addr()).await?;
    let spool = tempfile::tempdir()?;
    const BACKLOG: u64 = 1000;
    let rounds = [
        ("memory-default", false, None),
        ("memory-flat", false, Some(100)),
        ("disk-default", true, None),
        ("disk-flat", true, Some(100)),
    ];
    for (machine, on_disk, backlog_setting) in rounds {
        let mut config = config(&proxy.url());
        config.buffer_max_lines = 2 * BACKLOG as usize;
        config.backlog_batch_max_lines = backlog_setting;
        if on_disk {
            config = config.with_spool(spool.path().join(machine));
        }
        let largest_allowed = config.backlog_batch_lines();
        assert_eq!(config.batch_max_lines, 100);

        proxy.set_mode(ProxyMode::Refuse);
        let (sink, injector) = start_injected(config, Vec::new(), usize::MAX)?;
        sink.send((0..BACKLOG).map(|i| numbered_scan_of(machine, i)))
            .await?;
        wait_for("the backlog buffered behind failed writes", || {
            sink.stats.buffered_lines() == BACKLOG && sink.stats.write_failures() >= 1
        })
        .await?;

        proxy.set_mode(ProxyMode::PassThrough);
        wait_for("the backlog written", || {
            sink.stats.lines_written() == BACKLOG
        })
        .await?;
        let selector = format!(r#"process_seq{{machine="{machine}"}}"#);
        let series = wait_for_export(&vm, &selector, BACKLOG as usize).await?;
        let expected: Vec<(i64, f64)> = (0..BACKLOG).map(numbered_sample).collect();
        assert_eq!(only_series(&series)?.samples(), expected, "{machine}");

        let calls = injector.calls.lock().map(|c| c.clone()).unwrap_or_default();
        let largest = calls.iter().map(|c| c.1).max().unwrap_or(0);
        let stats = sink.stop().await?;
        let requests = stats.batches_written();
        if backlog_setting.is_none() {
            assert_eq!(largest_allowed, 400);
            // The lines sit in at most two pieces (what the first failed
            // write took, and the rest): one request of at most 100, then
            // requests of 400 but where a piece ends.
            assert_eq!(largest, 400, "{machine}: {calls:?}");
            assert!(requests <= 5, "{machine}: {requests} requests: {calls:?}");
        } else {
            assert_eq!(largest_allowed, 100);
            assert!(largest <= 100, "{machine}: {calls:?}");
            assert!(requests >= 10, "{machine}: {requests} requests: {calls:?}");
        }
        assert_eq!(stats.lines_dropped_overflow(), 0, "{machine}");
    }
    Ok(())
}

/// Over a thin link (a remote store: here, 10 kB/s to victoria-metrics) a
/// backlog's requests stay at what the link carries in a quarter of
/// `request_timeout_ms`, and never below `batch_max_lines`: 400 lines would
/// take longer than the timeout and be retried for ever; 100 (the floor)
/// take under a third of it. Nothing times out.
#[tokio::test]
async fn a_backlog_over_a_thin_link_goes_in_requests_that_fit_the_timeout() -> Result<()> {
    init_logs();
    let vm = VictoriaMetrics::start().await?;
    let proxy = TcpProxy::start(vm.addr()).await?;
    proxy.set_mode(ProxyMode::Slow {
        client_bytes_per_sec: 10_000,
    });
    let mut config = config(&proxy.url());
    // ~55 bytes a line: 100 lines ~0.6 s, 400 ~2.3 s.
    config.request_timeout_ms = 2_000;
    let allowed = config.backlog_batch_lines();
    assert_eq!((config.batch_max_lines, allowed), (100, 400));
    let (sink, injector) = start_injected(config, Vec::new(), usize::MAX)?;
    const LINES: u64 = 600;
    sink.send((0..LINES).map(|i| numbered_scan_of("thin-link", i)))
        .await?;
    wait_for("the backlog written", || {
        sink.stats.lines_written() == LINES || sink.stats.write_failures() > 0
    })
    .await?;
    let calls = injector.calls.lock().map(|c| c.clone()).unwrap_or_default();
    assert_eq!(sink.stats.write_failures(), 0, "{calls:?}");
    assert!(calls.iter().all(|c| c.1 <= 100), "{calls:?}");
    let series =
        wait_for_export(&vm, r#"process_seq{machine="thin-link"}"#, LINES as usize).await?;
    let expected: Vec<(i64, f64)> = (0..LINES).map(numbered_sample).collect();
    assert_eq!(only_series(&series)?.samples(), expected);
    sink.stop().await?;
    Ok(())
}
