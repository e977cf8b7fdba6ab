//! The Modbus TCP source against pymodbus servers: exact values in every type
//! and byte order, device exceptions, and machines that go away and return.

use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use ironbridge_connectors::modbus::{
    BackoffConfig, ByteOrder, DataType, ModbusMachineConfig, ModbusTagConfig, ModbusTcpSource,
    RegisterKind,
};
use ironbridge_connectors::{Quality, Scan, SourceStats};
use ironbridge_tests::counter_device::CounterDevice;
use ironbridge_tests::modbus_peer::{ModbusPeer, PeerLayout};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Generous: waiting for a condition, never a performance bound.
const DEADLINE: Duration = Duration::from_secs(30);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("ironbridge_connectors=debug")
        .with_test_writer()
        .try_init();
}

fn machine(name: &str, address: String, tags: Vec<ModbusTagConfig>) -> ModbusMachineConfig {
    ModbusMachineConfig {
        name: name.into(),
        address,
        unit_id: 1,
        poll_interval_ms: 50,
        request_timeout_ms: 500,
        backoff: BackoffConfig {
            initial_ms: 50,
            max_ms: 400,
        },
        // Small, so that a poll is several reads even where tags touch.
        max_registers_per_read: 16,
        tags,
    }
}

fn layout_tags(layout: &PeerLayout) -> Vec<ModbusTagConfig> {
    layout.tags.iter().map(|t| t.tag.clone()).collect()
}

/// Every expected tag of `layout` is in `scan`, Good, with exactly the
/// peer's value; lists every mismatch.
fn check_values(scan: &Scan, layout: &PeerLayout) -> anyhow::Result<()> {
    let mut wrong = Vec::new();
    for peer_tag in &layout.tags {
        let name = &peer_tag.tag.name;
        let reading = scan
            .reading(name)
            .with_context(|| format!("{name} missing from the scan"))?;
        let ok = reading.quality == Quality::Good
            && reading
                .value
                .as_ref()
                .is_some_and(|v| peer_tag.expected.matches(v));
        if !ok {
            wrong.push(format!(
                "{name}: expected {:?}, got {:?} ({:?})",
                peer_tag.expected, reading.value, reading.quality
            ));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        bail!("{} wrong tags:\n{}", wrong.len(), wrong.join("\n"))
    }
}

fn all_good(scan: &Scan) -> bool {
    scan.readings
        .iter()
        .all(|r| r.quality == Quality::Good && r.value.is_some())
}

fn all_bad(scan: &Scan) -> bool {
    scan.readings
        .iter()
        .all(|r| r.quality == Quality::Bad && r.value.is_none())
}

async fn next_scan(rx: &mut mpsc::Receiver<Scan>, until: Instant) -> anyhow::Result<Scan> {
    match tokio::time::timeout_at(until, rx.recv()).await {
        Ok(Some(scan)) => Ok(scan),
        Ok(None) => bail!("the sources stopped"),
        Err(_) => bail!("no scan before the deadline"),
    }
}

fn spawn(
    config: ModbusMachineConfig,
    out: mpsc::Sender<Scan>,
    cancel: &CancellationToken,
) -> anyhow::Result<(SourceStats, tokio::task::JoinHandle<()>)> {
    let source = ModbusTcpSource::new(config)?;
    let stats = source.stats();
    Ok((stats, tokio::spawn(source.run(out, cancel.clone()))))
}

#[tokio::test]
async fn reads_every_type_in_every_byte_order_exactly() -> anyhow::Result<()> {
    init_logs();
    let peer = ModbusPeer::start().await?;
    let config = machine("press-7", peer.address(), layout_tags(&peer.layout));
    let source = ModbusTcpSource::new(config)?;
    // The layout has gaps and the read limit is small: several requests per poll.
    assert!(source.plan().reads.len() > 8, "{:?}", source.plan());
    let stats = source.stats();
    let (tx, mut rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(source.run(tx, cancel.clone()));

    let until = Instant::now() + DEADLINE;
    for _ in 0..3 {
        let scan = next_scan(&mut rx, until).await?;
        assert_eq!(&*scan.machine, "press-7");
        assert_eq!(scan.readings.len(), peer.layout.tags.len());
        check_values(&scan, &peer.layout)?;
    }
    cancel.cancel();
    tokio::time::timeout(DEADLINE, task).await??;
    assert!(stats.scans() >= 3);
    assert_eq!(stats.link_failures(), 0);
    assert_eq!(stats.device_errors(), 0);
    Ok(())
}

#[tokio::test]
async fn a_device_exception_marks_only_its_tags_bad_and_keeps_the_link() -> anyhow::Result<()> {
    init_logs();
    let peer = ModbusPeer::start().await?;
    let mut tags = layout_tags(&peer.layout);
    let mut missing = tags[0].clone();
    missing.name = "not_on_the_device".into();
    missing.register = RegisterKind::Holding;
    // Past the peer's holding registers, with a gap so it is a read of its own.
    missing.address = peer.layout.holding_size + 10;
    tags.push(missing);
    let (tx, mut rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let (stats, task) = spawn(machine("lathe-2", peer.address(), tags), tx, &cancel)?;

    let until = Instant::now() + DEADLINE;
    for _ in 0..3 {
        let scan = next_scan(&mut rx, until).await?;
        let reading = scan
            .reading("not_on_the_device")
            .context("tag missing from the scan")?;
        assert_eq!(reading.quality, Quality::Bad);
        assert_eq!(reading.value, None);
        check_values(&scan, &peer.layout)?;
    }
    cancel.cancel();
    tokio::time::timeout(DEADLINE, task).await??;
    // Exception 02 (illegal data address) is a configuration error: reported
    // once, and the read is not made again.
    assert_eq!(stats.device_errors(), 1);
    assert_eq!(stats.link_failures(), 0);
    assert_eq!(stats.reconnects(), 0);
    Ok(())
}

/// Machines on one poll interval are read at the same ticks even when they
/// start apart, so their answers reach the gateway close together (and can
/// share a burst and a model forward). Each keeps its own link and task.
#[tokio::test]
async fn machines_on_one_interval_are_polled_at_the_same_ticks() -> anyhow::Result<()> {
    init_logs();
    let device = CounterDevice::start().await?;
    let seq = ModbusTagConfig {
        name: "seq".into(),
        register: RegisterKind::Holding,
        address: 0,
        data_type: DataType::U32,
        byte_order: ByteOrder::Abcd,
        scale: 1.0,
        offset: 0.0,
        unit: None,
    };
    let period = Duration::from_millis(200);
    let config = |name: &str| {
        let mut c = machine(name, device.addr().to_string(), vec![seq.clone()]);
        c.poll_interval_ms = period.as_millis() as u64;
        c
    };
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let (_, task_a) = spawn(config("press-1"), tx.clone(), &cancel)?;
    // With a timer of its own, press-2 would poll 90 ms after press-1.
    tokio::time::sleep(Duration::from_millis(90)).await;
    let (_, task_b) = spawn(config("press-2"), tx, &cancel)?;

    // Each machine's first poll is at its start; the ones after on the ticks.
    let mut times: [Vec<SystemTime>; 2] = [Vec::new(), Vec::new()];
    let until = Instant::now() + DEADLINE;
    while times.iter().any(|t| t.len() < 7) {
        let scan = next_scan(&mut rx, until).await?;
        assert!(all_good(&scan), "{scan:?}");
        let i = usize::from(&*scan.machine == "press-2");
        times[i].push(scan.acquired_at);
    }
    cancel.cancel();
    tokio::time::timeout(DEADLINE, task_a).await??;
    tokio::time::timeout(DEADLINE, task_b).await??;

    // How far each of press-2's polls is from press-1's nearest one.
    let mut gaps: Vec<Duration> = times[1][1..]
        .iter()
        .map(|b| {
            times[0][1..]
                .iter()
                .map(|a| a.duration_since(*b).unwrap_or_else(|e| e.duration()))
                .min()
                .unwrap_or(Duration::MAX)
        })
        .collect();
    gaps.sort();
    // The median, so one poll a loaded machine delayed does not decide.
    let median = gaps[gaps.len() / 2];
    assert!(
        median < Duration::from_millis(45),
        "press-2's polls are {median:?} from press-1's (all: {gaps:?})"
    );
    Ok(())
}

#[tokio::test]
async fn a_machine_that_goes_away_turns_bad_and_recovers_without_disturbing_another(
) -> anyhow::Result<()> {
    init_logs();
    let mut peer_a = ModbusPeer::start().await?;
    let peer_b = ModbusPeer::start().await?;
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let (stats_a, task_a) = spawn(
        machine("machine-a", peer_a.address(), layout_tags(&peer_a.layout)),
        tx.clone(),
        &cancel,
    )?;
    let (stats_b, task_b) = spawn(
        machine("machine-b", peer_b.address(), layout_tags(&peer_b.layout)),
        tx,
        &cancel,
    )?;

    // Every scan of B, through all phases, must be Good with the right values.
    let mut b_scans = 0usize;
    let check_b = |scan: &Scan, b_scans: &mut usize| -> anyhow::Result<()> {
        check_values(scan, &peer_b.layout).context("machine-b")?;
        *b_scans += 1;
        Ok(())
    };

    // Phase 1: both machines answer.
    let until = Instant::now() + DEADLINE;
    let mut a_good = false;
    let mut b_seen_at_start = false;
    while !(a_good && b_seen_at_start) {
        let scan = next_scan(&mut rx, until).await?;
        match &*scan.machine {
            "machine-a" => {
                check_values(&scan, &peer_a.layout)?;
                a_good = true;
            }
            _ => {
                check_b(&scan, &mut b_scans)?;
                b_seen_at_start = true;
            }
        }
    }

    // Phase 2: A loses power. Its tags turn Bad; B keeps arriving Good.
    peer_a.stop();
    let until = Instant::now() + DEADLINE;
    loop {
        let scan = next_scan(&mut rx, until).await?;
        if &*scan.machine == "machine-b" {
            check_b(&scan, &mut b_scans)?;
        } else if all_bad(&scan) {
            break;
        } else {
            // Polls already in flight before the kill may still be Good.
            assert!(all_good(&scan), "machine-a half good: {scan:?}");
        }
    }
    let b_before_outage = b_scans;
    let until = Instant::now() + DEADLINE;
    while b_scans < b_before_outage + 5 {
        let scan = next_scan(&mut rx, until).await?;
        if &*scan.machine == "machine-b" {
            check_b(&scan, &mut b_scans)?;
        } else {
            // While A is down it sends nothing but its unreachable scan.
            assert!(all_bad(&scan), "machine-a while down: {scan:?}");
        }
    }

    // Phase 3: A comes back on the same port; the source reconnects.
    peer_a.restart().await?;
    let until = Instant::now() + DEADLINE;
    loop {
        let scan = next_scan(&mut rx, until).await?;
        if &*scan.machine == "machine-b" {
            check_b(&scan, &mut b_scans)?;
        } else if all_good(&scan) {
            check_values(&scan, &peer_a.layout)?;
            break;
        } else {
            assert!(all_bad(&scan), "machine-a half good: {scan:?}");
        }
    }

    cancel.cancel();
    tokio::time::timeout(DEADLINE, task_a).await??;
    tokio::time::timeout(DEADLINE, task_b).await??;
    assert!(stats_a.reconnects() >= 1);
    assert!(stats_a.link_failures() >= 1);
    assert_eq!(stats_b.reconnects(), 0);
    assert_eq!(stats_b.link_failures(), 0);
    Ok(())
}

/// A gateway that does not take the scans (here: nobody reads them) holds
/// the poll loop; the ticks that pass meanwhile get no poll and are counted
/// as skipped, and polling goes on on the grid afterwards.
#[tokio::test]
async fn ticks_passed_over_while_the_gateway_is_busy_are_counted_as_skipped() -> anyhow::Result<()>
{
    init_logs();
    let peer = ModbusPeer::start().await?;
    let config = machine("press-9", peer.address(), layout_tags(&peer.layout));
    let interval = Duration::from_millis(config.poll_interval_ms);
    // Room for one scan: the second poll waits for a free slot.
    let (tx, mut rx) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let (stats, task) = spawn(config, tx, &cancel)?;
    let until = Instant::now() + DEADLINE;
    next_scan(&mut rx, until).await?;
    assert_eq!(stats.polls_skipped(), 0, "nothing held the polls yet");

    // Nobody takes the scans for 8 intervals.
    tokio::time::sleep(interval * 8).await;
    for _ in 0..3 {
        next_scan(&mut rx, until).await?;
    }
    // Of the ~8 ticks of the stall, the one whose scan filled the slot,
    // the one whose poll waited for it and the one polled late, at once,
    // got polls; the other ~5 were passed over. (A few more if polls
    // themselves overran on a loaded machine; never one per late poll.)
    let skipped = stats.polls_skipped();
    assert!((4..=10).contains(&skipped), "skipped {skipped}");
    cancel.cancel();
    tokio::time::timeout(DEADLINE, task).await??;
    Ok(())
}
