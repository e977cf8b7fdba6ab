//! Modbus RTU and RTU over TCP against pymodbus: several units on one line
//! (a real socat pty pair, or one TCP connection), a silent unit that must
//! not stall the others, and Modbus exceptions handled by their meaning — on
//! RTU and on plain Modbus TCP alike.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use ironbridge::config::GatewayConfig;
use ironbridge_connectors::modbus::{
    BackoffConfig, DataType, ModbusMachineConfig, ModbusRtuMachineConfig, ModbusTagConfig, Parity,
    RegisterKind,
};
use ironbridge_connectors::{Quality, Scan, SourceConfig, SourceStats, SourceStatus};
use ironbridge_tests::modbus_line::{LineMode, LinePeer, PtyPair, UnitBehaviour, UnitLayout};
use ironbridge_tests::modbus_peer::PeerTag;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Generous: waiting for a condition, never a performance bound.
const DEADLINE: Duration = Duration::from_secs(60);
const BAUD_RATE: u32 = 19_200;

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("ironbridge_connectors=debug")
        .with_test_writer()
        .try_init();
}

fn tags(peer_tags: &[PeerTag]) -> Vec<ModbusTagConfig> {
    peer_tags.iter().map(|t| t.tag.clone()).collect()
}

/// A holding register past the end of the peer's table: exception 02.
fn missing_tag(holding_size: u16) -> ModbusTagConfig {
    ModbusTagConfig {
        name: "not_on_the_device".into(),
        register: RegisterKind::Holding,
        // With a gap after the peer's tags, so it is a read of its own.
        address: holding_size + 10,
        data_type: DataType::U16,
        byte_order: Default::default(),
        scale: 1.0,
        offset: 0.0,
        unit: None,
    }
}

fn rtu_machine(name: &str, serial: &Path, unit_id: u8, tags: Vec<ModbusTagConfig>) -> SourceConfig {
    SourceConfig::ModbusRtu(ModbusRtuMachineConfig {
        name: name.into(),
        serial: serial.display().to_string(),
        baud_rate: BAUD_RATE,
        // Linux ptys here refuse parity (EINVAL on PARENB); a pty carries
        // bytes, not bits, so parity would change nothing on it anyway.
        parity: Parity::None,
        data_bits: 8,
        stop_bits: 1,
        unit_id,
        poll_interval_ms: 50,
        request_timeout_ms: 300,
        backoff: BackoffConfig {
            initial_ms: 100,
            max_ms: 800,
        },
        max_registers_per_read: 125,
        tags,
    })
}

fn tcp_machine(
    name: &str,
    address: &str,
    unit_id: u8,
    tags: Vec<ModbusTagConfig>,
) -> ModbusMachineConfig {
    ModbusMachineConfig {
        name: name.into(),
        address: address.into(),
        unit_id,
        poll_interval_ms: 50,
        request_timeout_ms: 300,
        backoff: BackoffConfig {
            initial_ms: 100,
            max_ms: 800,
        },
        max_registers_per_read: 125,
        tags,
    }
}

/// Sources built the gateway's way (`SourceConfig::build`, one per machine)
/// and running, with their counters by machine name.
struct Running {
    rx: mpsc::Receiver<Scan>,
    stats: HashMap<String, SourceStats>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    fn start(machines: Vec<SourceConfig>) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(256);
        let cancel = CancellationToken::new();
        let mut stats = HashMap::new();
        let mut sources = Vec::new();
        for machine in machines {
            let name = machine.name().to_string();
            let source = machine
                .build()
                .with_context(|| format!("building {name}"))?;
            stats.insert(name, source.stats());
            sources.push(source);
        }
        let tasks = sources
            .into_iter()
            .map(|s| tokio::spawn(s.run(tx.clone(), cancel.clone())))
            .collect();
        Ok(Self {
            rx,
            stats,
            cancel,
            tasks,
        })
    }

    fn stats(&self, machine: &str) -> &SourceStats {
        &self.stats[machine]
    }

    async fn next(&mut self, until: Instant) -> anyhow::Result<Scan> {
        match tokio::time::timeout_at(until, self.rx.recv()).await {
            Ok(Some(scan)) => Ok(scan),
            Ok(None) => bail!("the sources stopped"),
            Err(_) => bail!("no scan before the deadline"),
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        for task in self.tasks {
            tokio::time::timeout(DEADLINE, task).await??;
        }
        Ok(())
    }
}

/// Every tag of `expected` is in `scan`, Good, with exactly the peer's value.
fn check_values(scan: &Scan, expected: &[PeerTag]) -> anyhow::Result<()> {
    let mut wrong = Vec::new();
    for peer_tag in expected {
        let name = &peer_tag.tag.name;
        let reading = scan
            .reading(name)
            .with_context(|| format!("{name} missing from the scan of {}", scan.machine))?;
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
        bail!(
            "{}: {} wrong tags:\n{}",
            scan.machine,
            wrong.len(),
            wrong.join("\n")
        )
    }
}

fn all_bad_with(scan: &Scan, status: Option<SourceStatus>) -> bool {
    scan.readings
        .iter()
        .all(|r| r.quality == Quality::Bad && r.value.is_none() && r.status == status)
}

fn unit(peer: &LinePeer, unit: u8) -> &UnitLayout {
    peer.layout.unit(unit).expect("unit served by the peer")
}

#[tokio::test]
async fn rtu_units_keep_their_poll_rate_while_a_silent_unit_is_bad_and_it_comes_back(
) -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let pty = PtyPair::start(dir.path()).await?;
    let peer = LinePeer::start(
        &[1, 2, 3],
        LineMode::Serial {
            device: &pty.far,
            baud_rate: BAUD_RATE,
        },
    )
    .await?;
    peer.set(3, UnitBehaviour::Silent)?;
    let expected: HashMap<&str, &[PeerTag]> = [
        ("rtu-1", unit(&peer, 1).tags.as_slice()),
        ("rtu-2", unit(&peer, 2).tags.as_slice()),
        ("rtu-3", unit(&peer, 3).tags.as_slice()),
    ]
    .into();
    let mut running = Running::start(
        [1u8, 2, 3]
            .iter()
            .map(|&u| {
                rtu_machine(
                    &format!("rtu-{u}"),
                    &pty.near,
                    u,
                    tags(&unit(&peer, u).tags),
                )
            })
            .collect(),
    )?;

    // Phase 1: the silent unit turns Bad; the others deliver exact values
    // all along, and keep doing so while it is retried with backoff.
    let until = Instant::now() + DEADLINE;
    let mut live_scans: HashMap<String, usize> = HashMap::new();
    let mut silent_bad = false;
    loop {
        let scan = running.next(until).await?;
        if &*scan.machine == "rtu-3" {
            assert!(all_bad_with(&scan, None), "the silent unit: {scan:?}");
            assert!(!silent_bad, "one unreachable scan per outage: {scan:?}");
            silent_bad = true;
            continue;
        }
        check_values(&scan, expected[&*scan.machine])?;
        if silent_bad {
            *live_scans.entry(scan.machine.to_string()).or_default() += 1;
        }
        let retried = running.stats("rtu-3").link_failures() >= 3;
        if retried && live_scans.values().filter(|&&n| n >= 10).count() == 2 {
            break;
        }
    }
    let silent = running.stats("rtu-3");
    assert_eq!(silent.scans(), 0);
    assert_eq!(silent.outages(), 1);

    // Phase 2: the unit answers again and is picked up without help.
    peer.set(3, UnitBehaviour::Answer)?;
    let until = Instant::now() + DEADLINE;
    loop {
        let scan = running.next(until).await?;
        if &*scan.machine == "rtu-3" {
            check_values(&scan, expected["rtu-3"])?;
            break;
        }
        check_values(&scan, expected[&*scan.machine])?;
    }
    assert_eq!(running.stats("rtu-3").reconnects(), 1);
    for live in ["rtu-1", "rtu-2"] {
        assert_eq!(running.stats(live).link_failures(), 0, "{live}");
        assert_eq!(running.stats(live).device_errors(), 0, "{live}");
    }
    running.stop().await
}

#[tokio::test]
async fn rtu_illegal_address_is_reported_once_and_busy_is_retried() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let pty = PtyPair::start(dir.path()).await?;
    let peer = LinePeer::start(
        &[7, 8],
        LineMode::Serial {
            device: &pty.far,
            baud_rate: BAUD_RATE,
        },
    )
    .await?;
    let mut with_missing = tags(&unit(&peer, 7).tags);
    with_missing.push(missing_tag(peer.layout.holding_size));
    let busy = &unit(&peer, 8).busy_tag;
    let mut with_busy = tags(&unit(&peer, 8).tags);
    with_busy.push(busy.tag.clone());
    let mut running = Running::start(vec![
        rtu_machine("misconfigured", &pty.near, 7, with_missing),
        rtu_machine("busy", &pty.near, 8, with_busy),
    ])?;

    let until = Instant::now() + DEADLINE;
    let (mut misconfigured_scans, mut busy_scans) = (0, 0);
    while misconfigured_scans < 10 || busy_scans < 5 {
        let scan = running.next(until).await?;
        if &*scan.machine == "misconfigured" {
            // The refused block's tag is Bad with the exception; the other
            // blocks of the same unit are Good.
            let missing = scan.reading("not_on_the_device").context("tag missing")?;
            assert_eq!(missing.quality, Quality::Bad);
            assert_eq!(missing.value, None);
            assert_eq!(missing.status, Some(SourceStatus::ModbusException(2)));
            check_values(&scan, &unit(&peer, 7).tags)?;
            misconfigured_scans += 1;
        } else {
            // Busy twice, then the value: retried within the poll.
            check_values(&scan, std::slice::from_ref(busy))?;
            check_values(&scan, &unit(&peer, 8).tags)?;
            busy_scans += 1;
        }
    }
    // Reported (and asked) once, however many polls followed.
    assert_eq!(running.stats("misconfigured").device_errors(), 1);
    assert!(running.stats("busy").device_errors() >= 2 * 5);
    for machine in ["misconfigured", "busy"] {
        assert_eq!(running.stats(machine).link_failures(), 0, "{machine}");
    }
    running.stop().await
}

#[tokio::test]
async fn rtu_over_tcp_serves_several_units_and_a_gateway_exception_backs_one_off(
) -> anyhow::Result<()> {
    init_logs();
    let peer = LinePeer::start(&[1, 2, 3], LineMode::TcpRtu).await?;
    let address = peer.address()?;
    peer.set(3, UnitBehaviour::Silent)?;
    let machine = |name: &str, u: u8| {
        SourceConfig::ModbusRtuOverTcp(tcp_machine(name, &address, u, tags(&unit(&peer, u).tags)))
    };
    let mut running = Running::start(vec![
        machine("gw-1", 1),
        machine("gw-2", 2),
        machine("gw-3", 3),
    ])?;
    let expected = |name: &str| -> &[PeerTag] {
        let u = name
            .trim_start_matches("gw-")
            .parse()
            .expect("unit in the name");
        &unit(&peer, u).tags
    };

    // The silent unit is Bad while the two others answer exactly.
    let until = Instant::now() + DEADLINE;
    let mut live_after_bad = 0;
    let mut silent_bad = false;
    while live_after_bad < 10 || running.stats("gw-3").link_failures() < 2 {
        let scan = running.next(until).await?;
        if &*scan.machine == "gw-3" {
            assert!(all_bad_with(&scan, None), "{scan:?}");
            silent_bad = true;
        } else {
            check_values(&scan, expected(&scan.machine))?;
            live_after_bad += usize::from(silent_bad);
        }
    }

    // Exception 0B from "the gateway": unit 2 is Bad as a whole, with the
    // exception as status, and backed off; unit 1 goes on.
    peer.set(2, UnitBehaviour::GatewayFails)?;
    let until = Instant::now() + DEADLINE;
    let gateway_failed = Some(SourceStatus::ModbusException(0x0B));
    loop {
        let scan = running.next(until).await?;
        match &*scan.machine {
            "gw-2" if all_bad_with(&scan, gateway_failed) => break,
            "gw-3" => bail!("the silent unit sent a second scan: {scan:?}"),
            name => check_values(&scan, expected(name))?,
        }
    }
    let until = Instant::now() + DEADLINE;
    let mut gw1_during = 0;
    while gw1_during < 10 || running.stats("gw-2").device_errors() < 3 {
        let scan = running.next(until).await?;
        match &*scan.machine {
            "gw-1" => {
                check_values(&scan, expected("gw-1"))?;
                gw1_during += 1;
            }
            other => bail!("{other} sent a scan while out: {scan:?}"),
        }
    }
    // The gateway answered: that is no link failure.
    assert_eq!(running.stats("gw-2").link_failures(), 0);

    // Both come back by themselves.
    peer.set(2, UnitBehaviour::Answer)?;
    peer.set(3, UnitBehaviour::Answer)?;
    let until = Instant::now() + DEADLINE;
    let mut back = (false, false);
    while back != (true, true) {
        let scan = running.next(until).await?;
        check_values(&scan, expected(&scan.machine))?;
        match &*scan.machine {
            "gw-2" => back.0 = true,
            "gw-3" => back.1 = true,
            _ => {}
        }
    }
    assert_eq!(running.stats("gw-1").link_failures(), 0);
    assert_eq!(running.stats("gw-1").device_errors(), 0);
    running.stop().await
}

#[tokio::test]
async fn tcp_exceptions_are_handled_by_meaning() -> anyhow::Result<()> {
    init_logs();
    let peer = LinePeer::start(&[1, 2], LineMode::Tcp).await?;
    let address = peer.address()?;
    let mut with_missing = tags(&unit(&peer, 1).tags);
    with_missing.push(missing_tag(peer.layout.holding_size));
    let busy = &unit(&peer, 1).busy_tag;
    peer.set(2, UnitBehaviour::GatewayFails)?;
    let mut running = Running::start(vec![
        SourceConfig::ModbusTcp(tcp_machine("misconfigured", &address, 1, with_missing)),
        SourceConfig::ModbusTcp(tcp_machine("busy", &address, 1, vec![busy.tag.clone()])),
        SourceConfig::ModbusTcp(tcp_machine(
            "behind-gateway",
            &address,
            2,
            tags(&unit(&peer, 2).tags),
        )),
    ])?;

    let until = Instant::now() + DEADLINE;
    let (mut misconfigured, mut busy_scans, mut gateway_bad) = (0, 0, false);
    while misconfigured < 10
        || busy_scans < 5
        || !gateway_bad
        || running.stats("behind-gateway").device_errors() < 3
    {
        let scan = running.next(until).await?;
        match &*scan.machine {
            "misconfigured" => {
                let missing = scan.reading("not_on_the_device").context("tag missing")?;
                assert_eq!(missing.status, Some(SourceStatus::ModbusException(2)));
                assert_eq!(missing.quality, Quality::Bad);
                check_values(&scan, &unit(&peer, 1).tags)?;
                misconfigured += 1;
            }
            "busy" => {
                check_values(&scan, std::slice::from_ref(busy))?;
                busy_scans += 1;
            }
            _ => {
                assert!(!gateway_bad, "one unreachable scan per outage: {scan:?}");
                assert!(
                    all_bad_with(&scan, Some(SourceStatus::ModbusException(0x0B))),
                    "{scan:?}"
                );
                gateway_bad = true;
            }
        }
    }
    assert_eq!(running.stats("misconfigured").device_errors(), 1);
    assert!(running.stats("busy").device_errors() >= 2 * 5);
    let behind = running.stats("behind-gateway");
    // The TCP link itself was fine throughout: kept, not rebuilt.
    assert_eq!(behind.link_failures(), 0);
    assert_eq!(behind.reconnects(), 0);
    assert_eq!(behind.outages(), 1);

    peer.set(2, UnitBehaviour::Answer)?;
    let until = Instant::now() + DEADLINE;
    loop {
        let scan = running.next(until).await?;
        if &*scan.machine == "behind-gateway" {
            check_values(&scan, &unit(&peer, 2).tags)?;
            break;
        }
    }
    for machine in ["misconfigured", "busy"] {
        assert_eq!(running.stats(machine).link_failures(), 0, "{machine}");
    }
    running.stop().await
}

#[test]
fn machines_on_one_line_must_agree_and_have_distinct_unit_ids() {
    let text = r#"
[[machines]]
name = "boiler"
protocol = "modbus-rtu"
serial = "/dev/ttyUSB0"
unit_id = 1
tags = [{ name = "t", register = "holding", address = 0, type = "u16" }]

[[machines]]
name = "chiller"
protocol = "modbus-rtu"
serial = "/dev/ttyUSB0"
baud_rate = 9600
unit_id = 2
tags = [{ name = "t", register = "holding", address = 0, type = "u16" }]

[[machines]]
name = "pump"
protocol = "modbus-rtu"
serial = "/dev/ttyUSB0"
unit_id = 1
tags = [{ name = "t", register = "holding", address = 0, type = "u16" }]

[[machines]]
name = "other-line"
protocol = "modbus-rtu"
serial = "/dev/ttyUSB1"
parity = "none"
unit_id = 1
tags = [{ name = "t", register = "holding", address = 0, type = "u16" }]

[[machines]]
name = "behind-server-a"
protocol = "modbus-rtu-over-tcp"
address = "10.0.0.9:4001"
unit_id = 4
tags = [{ name = "t", register = "holding", address = 0, type = "u16" }]

[[machines]]
name = "behind-server-b"
protocol = "modbus-rtu-over-tcp"
address = "10.0.0.9:4001"
unit_id = 4
tags = [{ name = "t", register = "holding", address = 0, type = "u16" }]
"#;
    let err = GatewayConfig::parse(text, Path::new("rtu.toml")).unwrap_err();
    // Only the machines matter here (the file has no OPC UA users either).
    let found: Vec<(&str, &str, Option<usize>)> = err
        .problems
        .iter()
        .filter(|p| p.path.starts_with("machines"))
        .map(|p| (p.path.as_str(), p.message.as_str(), p.line))
        .collect();
    assert_eq!(found.len(), 3, "{err}");
    let (path, message, line) = found[0];
    assert_eq!(path, "machines[1].baud_rate");
    assert!(
        message.contains("9600") && message.contains("\"boiler\""),
        "{message}"
    );
    assert_eq!(line, Some(13));
    let (path, message, _) = found[1];
    assert_eq!(path, "machines[2].unit_id");
    assert!(
        message.contains("\"boiler\"") && message.contains("/dev/ttyUSB0"),
        "{message}"
    );
    let (path, message, _) = found[2];
    assert_eq!(path, "machines[5].unit_id");
    assert!(message.contains("\"behind-server-a\""), "{message}");

    // The defaults and every key parse; a lone machine is fine.
    let text = r#"
[opcua]
insecure_loopback_endpoint = true

[[machines]]
name = "boiler"
protocol = "modbus-rtu"
serial = "/dev/ttyUSB0"
baud_rate = 9600
parity = "odd"
data_bits = 8
stop_bits = 2
unit_id = 17
poll_interval_ms = 200
request_timeout_ms = 150
backoff = { initial_ms = 100, max_ms = 5000 }
max_registers_per_read = 32
tags = [{ name = "t", register = "holding", address = 0, type = "u16" }]
"#;
    let config = GatewayConfig::parse(text, Path::new("rtu.toml")).expect("valid");
    match &config.machines[0] {
        SourceConfig::ModbusRtu(c) => {
            assert_eq!(
                (c.baud_rate, c.parity, c.data_bits, c.stop_bits, c.unit_id),
                (9600, Parity::Odd, 8, 2, 17)
            );
        }
        other => panic!("{other:?}"),
    }
}
