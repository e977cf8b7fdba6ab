//! `scripts/fleet_sim.py` (behind `scripts/fleet-sim.sh`), run as a user
//! would with two gateways on this suite's debug binaries: a real
//! victoria-metrics, a real `mlflow server`, two simulated pumps. Both
//! gateways must start on the registry's 1.0.0, write to the one store
//! (each point tagged with its gateway), and serve 1.1.0 through their
//! gates after the alias moves; the report must say so.

use std::process::Command;

use anyhow::{ensure, Context, Result};
use ironbridge_tests::gateway_process::gateway_binary;
use ironbridge_tests::paths::repo_root;
use serde_json::Value;

#[test]
fn two_gateways_follow_the_alias_through_their_gates() -> Result<()> {
    let bin_dir = gateway_binary()?
        .parent()
        .context("binary folder")?
        .to_path_buf();
    ensure!(
        bin_dir.join("ironbridge-sim").exists(),
        "ironbridge-sim is not built in {} (cargo test --workspace builds it)",
        bin_dir.display()
    );
    let work = tempfile::tempdir()?;
    let out = Command::new("python3")
        .arg(repo_root().join("scripts/fleet_sim.py"))
        .arg("2")
        .args([
            "--window-s",
            "4",
            "--gate-samples",
            "10",
            "--poll-ms",
            "250",
        ])
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--keep")
        .arg(work.path())
        .output()
        .context("python3")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "fleet_sim.py failed:\n{stderr}");
    let report: Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .context("no report")?,
    )?;
    assert_eq!(report["gateways"], 2, "{report}");
    // Both serve the new version, and the gate had to see its samples
    // first: 10 pairs at 4 predictions a second take more than 2 s.
    assert_eq!(report["rollout_s"]["served"], 2, "{report}");
    let all = report["rollout_s"]["all"]
        .as_f64()
        .context("rollout time")?;
    assert!(all > 2.0, "promoted before the gate's samples: {report}");
    // Both gateways wrote: the store took their pumps' values and
    // predictions, and each gateway burnt some CPU.
    assert!(
        report["store_rows_per_s"].as_f64().unwrap_or(0.0) > 10.0,
        "{report}"
    );
    assert!(
        report["cpu_per_gateway_pct"]["median"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "{report}"
    );
    // One store, two gateways told apart by their tag.
    assert_eq!(
        report["gateways_in_store"],
        serde_json::json!(["fleet-000", "fleet-001"]),
        "{report}"
    );
    // Each fetched the new version into its own model folder.
    for gateway in ["gw-000", "gw-001"] {
        let log = std::fs::read_to_string(work.path().join(gateway).join("gateway.log"))?;
        ensure!(!log.contains("panicked"), "{gateway} panicked:\n{log}");
        let folder = work.path().join(gateway).join("models/bearing-wear/1.1.0");
        ensure!(
            folder.join("manifest.toml").exists() && folder.join("model.pt").exists(),
            "{gateway}: 1.1.0 was not downloaded into its model folder"
        );
    }
    Ok(())
}
