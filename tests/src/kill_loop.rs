//! The kill -9 loop: the `ironbridge` binary reading a [`CounterDevice`]
//! (every scan numbered) while victoria-metrics is cut off by a proxy,
//! killed with SIGKILL and restarted again and again; then the server comes
//! back and the test counts, scan by scan, what reached the store. Used by
//! the durable-delivery test (a few kills) and its benchmark (20 kills over
//! 10 minutes).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::counter_device::CounterDevice;
use crate::gateway_process::{data_only_config, GatewayProcess};
use crate::sink_rig::{wait_for, DEADLINE};
use crate::tcp_proxy::{ProxyMode, TcpProxy};
use crate::victoria::VictoriaMetrics;

/// The `seq` values stored for `machine`, and how many samples carried
/// them (a replay after a crash may write a line twice).
pub async fn stored_seqs(vm: &VictoriaMetrics, machine: &str) -> Result<(BTreeSet<u64>, usize)> {
    vm.force_flush().await?;
    let series = vm
        .export(&format!("process_seq{{machine=\"{machine}\"}}"))
        .await?;
    let samples: Vec<(i64, f64)> = series.iter().flat_map(|s| s.samples()).collect();
    Ok((
        samples.iter().map(|(_, v)| *v as u64).collect(),
        samples.len(),
    ))
}

/// What one kill -9 loop found.
#[derive(Debug)]
pub struct KillLoopReport {
    pub kills: usize,
    /// The last scan the device had answered at each kill.
    pub kill_points: Vec<u64>,
    /// Scans the device answered (each carries its own number).
    pub scans_served: u64,
    pub scans_stored: u64,
    /// Scans lost, each within `window` scans before a kill.
    pub lost_in_fsync_window: u64,
    /// Scans lost elsewhere (must be 0).
    pub lost_elsewhere: Vec<u64>,
    /// Samples beyond one per scan (batches written again after a kill).
    pub written_twice: usize,
}

/// Runs the gateway against `device` with victoria-metrics cut off by a
/// proxy, kills it with SIGKILL `kills` times (restarting it each time)
/// every `life`, then lets the server back and stops the gateway
/// gracefully once everything arrived.
pub async fn kill_loop(kills: usize, life: Duration, window: u64) -> Result<KillLoopReport> {
    let vm = VictoriaMetrics::start().await?;
    let proxy = TcpProxy::start(vm.addr()).await?;
    proxy.set_mode(ProxyMode::Refuse);
    let device = CounterDevice::start().await?;
    let dir = tempfile::tempdir()?;
    let influx = format!(
        "url = \"{}\"\nbucket = \"plant\"\nflush_interval_ms = 200\nbackoff = {{ initial_ms = 100, max_ms = 500 }}\n",
        proxy.url()
    );
    let text = data_only_config(
        &dir.path().join("pki"),
        &influx,
        &device.machine_config("counter", 50),
    )?;
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, text)?;
    let log_path = dir.path().join("gateway.log");

    let mut kill_points = Vec::new();
    for _ in 0..kills {
        let mut gateway = GatewayProcess::spawn(&config_path, &log_path)?;
        let started = device.served();
        wait_for("the gateway to poll the device", || {
            device.served() >= started + 10
        })
        .await?;
        tokio::time::sleep(life).await;
        if gateway.has_exited()? {
            bail!("the gateway exited on its own:\n{}", gateway.log());
        }
        gateway.kill();
        // A request the gateway sent just before it died may still wait
        // in the device's socket, to be answered (and numbered) after the
        // kill: the kill point is read once the device has seen the
        // connection end, or that scan would count as lost elsewhere.
        wait_for(
            "the device to see the killed gateway's connection end",
            || device.connections() == 0,
        )
        .await?;
        kill_points.push(u64::from(device.served()));
    }

    // The last life: the server is back and the spool drains.
    proxy.set_mode(ProxyMode::PassThrough);
    let gateway = GatewayProcess::spawn(&config_path, &log_path)?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let target = kill_points.last().copied().unwrap_or(0);
    loop {
        // The spool is first in, first out, one batch at a time: once a
        // scan of this life is stored, every spooled one before it is too.
        let (seqs, _) = stored_seqs(&vm, "counter").await?;
        if seqs.iter().any(|&s| s > target + 20) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the spooled scans did not arrive: {} of {target} stored\n{}",
                seqs.range(..=target).count(),
                gateway.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gateway.terminate(Duration::from_secs(10)).await?;
    let served = u64::from(device.served());
    drop(device);
    let (seqs, samples) = stored_seqs(&vm, "counter").await?;

    let mut report = KillLoopReport {
        kills,
        kill_points: kill_points.clone(),
        scans_served: served,
        scans_stored: seqs.len() as u64,
        lost_in_fsync_window: 0,
        lost_elsewhere: Vec::new(),
        written_twice: samples - seqs.len(),
    };
    for seq in 1..=served {
        if seqs.contains(&seq) {
            continue;
        }
        // A scan answered just before a kill may not have reached the spool.
        let near_a_kill = kill_points.iter().any(|&k| seq <= k && seq + window > k);
        // The last scans: answered as the gateway stopped polling.
        let at_the_end = seq + window > served;
        if near_a_kill || at_the_end {
            report.lost_in_fsync_window += 1;
        } else {
            report.lost_elsewhere.push(seq);
        }
    }
    if !report.lost_elsewhere.is_empty() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        eprintln!("gateway log:\n{log}");
    }
    Ok(report)
}
