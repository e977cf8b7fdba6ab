//! A machine that goes away and comes back, seen through the whole gateway
//! by an independent OPC UA client: its tags turn Bad (never an old value
//! shown as fresh), the gateway reconnects and values resume, while a second
//! machine's tags stay Good throughout. The machines are pymodbus servers.

use std::time::Duration;

use anyhow::{Context, Result};
use ironbridge::config::{GatewayConfig, MachineConfig};
use ironbridge::opcua_server::OpcUaServerConfig;
use ironbridge::Gateway;
use ironbridge_connectors::modbus::{BackoffConfig, ModbusMachineConfig, RegisterKind};
use ironbridge_tests::modbus_peer::ModbusPeer;
use ironbridge_tests::paths::{repo_root, venv_python};
use ironbridge_tests::ports::free_port;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A machine reading the first few holding-register tags the peer serves.
fn machine(name: &str, peer: &ModbusPeer) -> ModbusMachineConfig {
    let tags = peer
        .layout
        .tags
        .iter()
        .map(|t| t.tag.clone())
        .filter(|t| {
            t.register == RegisterKind::Holding
                && u32::from(t.address) + u32::from(t.data_type.width())
                    <= u32::from(peer.layout.holding_size)
        })
        .take(3)
        .collect();
    ModbusMachineConfig {
        name: name.to_string(),
        address: peer.address(),
        unit_id: 1,
        poll_interval_ms: 200,
        request_timeout_ms: 500,
        backoff: BackoffConfig {
            initial_ms: 100,
            max_ms: 1000,
        },
        max_registers_per_read: 125,
        tags,
    }
}

/// Status name of each node path, as the asyncua client reads it.
async fn read_statuses(url: &str, paths: &[String]) -> Result<Vec<(String, bool)>> {
    let mut cmd = tokio::process::Command::new(venv_python()?);
    cmd.arg(repo_root().join("tests/peers/opcua_client.py"))
        .args(["--url", url]);
    for p in paths {
        cmd.args(["--read", p]);
    }
    let out = cmd.output().await?;
    anyhow::ensure!(
        out.status.success(),
        "opcua_client.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout)?;
    paths
        .iter()
        .map(|p| {
            let r = &answer["reads"][p];
            Ok((
                r["status"].as_str().context("status")?.to_string(),
                r["is_good"].as_bool().context("is_good")?,
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_machine_turns_bad_and_recovers_while_another_keeps_flowing() -> Result<()> {
    let mut peer_a = ModbusPeer::start().await?;
    let peer_b = ModbusPeer::start().await?;
    let a = machine("machine-a", &peer_a);
    let b = machine("machine-b", &peer_b);
    let tag_a = format!("Machines/machine-a/Tags/{}", a.tags[0].name);
    let tag_b = format!("Machines/machine-b/Tags/{}", b.tags[0].name);
    let paths = [tag_a.clone(), tag_b.clone()];

    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let url = format!("opc.tcp://127.0.0.1:{port}/");
    let config = GatewayConfig {
        file: dir.path().join("gateway.toml"),
        source_sha256: String::new(),
        gateway: Default::default(),
        runtime: Default::default(),
        opcua: OpcUaServerConfig {
            port,
            pki_dir: dir.path().join("pki"),
            insecure_loopback_endpoint: true,
            ..OpcUaServerConfig::default()
        },
        influx: None,
        modbus_server: None,
        http: None,
        machines: vec![MachineConfig::ModbusTcp(a), MachineConfig::ModbusTcp(b)],
        models: Vec::new(),
    };
    let cancel = CancellationToken::new();
    let gateway = Gateway::start(config, cancel.clone()).await?;
    let stats_a = gateway.source_stats["machine-a"].clone();
    let stats_b = gateway.source_stats["machine-b"].clone();

    // Polls until `want(a_status, a_good)` holds, checking every time that
    // machine B stays Good.
    let wait_for = |label: &'static str, want: fn(&str, bool) -> bool| {
        let url = url.clone();
        let paths = paths.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let statuses = read_statuses(&url, &paths).await?;
                let (status_a, good_a) = &statuses[0];
                let (status_b, good_b) = &statuses[1];
                assert!(
                    *good_b,
                    "machine B went {status_b} while waiting for: {label}"
                );
                if want(status_a, *good_a) {
                    return Ok::<_, anyhow::Error>(());
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "{label}: machine A still {status_a}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    wait_for("both machines Good", |_, good| good).await?;
    peer_a.stop();
    wait_for("machine A Bad", |status, good| {
        !good && status == "BadNoCommunication"
    })
    .await?;
    let b_polls_during_outage = stats_b.scans();
    peer_a.restart().await?;
    wait_for("machine A Good again", |_, good| good).await?;

    assert!(stats_a.reconnects() >= 1, "machine A never reconnected");
    assert!(stats_a.link_failures() >= 1);
    assert_eq!(stats_b.link_failures(), 0, "machine B lost polls");
    assert!(stats_b.scans() > b_polls_during_outage);

    cancel.cancel();
    gateway.stopped().await;
    Ok(())
}
