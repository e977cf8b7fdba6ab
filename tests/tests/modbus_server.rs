//! The gateway's Modbus TCP server, read by an independent client (pymodbus,
//! decoding with Python's `struct` from docs/modbus-map.md) while the
//! simulated pump feeds the example model:
//!
//! - the prediction registers hold the very prediction victoria-metrics
//!   stored for the same machine, model and acquisition time, and the
//!   version registers the manifest's version;
//! - writes and every function but 04 are refused with exception 01, reads
//!   outside the map with 02, reads over 125 registers with 03;
//! - an unreachable pump turns its block to NaN with status 2, still naming
//!   the time of its last prediction;
//! - a taken port fails `Gateway::start`, naming the address.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use ironbridge_models::ModelRegistry;
use ironbridge_tests::gateway_rig::{GatewayRig, RigOptions, MACHINE, MODEL, MODEL_VERSION};
use ironbridge_tests::paths::{peer_script, repo_root, venv_python};
use serde_json::Value;

/// The pump's predictions (the example's spindle has its own model).
const PREDICTIONS: &str = "{__name__=~\"prediction_.*\",machine=\"pump-1\"}";
/// Status register values (docs/modbus-map.md).
const STATUS_CURRENT: u64 = 1;
const STATUS_MACHINE_UNREACHABLE: u64 = 2;
/// Generous deadlines for a busy 2-core machine; they bound waiting, they
/// are not asserted on.
const DEADLINE: Duration = Duration::from_secs(60);

async fn start_rig() -> Result<GatewayRig> {
    GatewayRig::start_with(RigOptions {
        poll_ms: 200,
        flush_ms: 500,
        modbus_server: Some("127.0.0.1:0".to_string()),
        ..RigOptions::default()
    })
    .await
}

/// Runs tests/peers/modbus_client.py against `addr` and returns its answer.
async fn modbus_client(addr: SocketAddr, args: &[&str]) -> Result<Value> {
    let out = tokio::process::Command::new(venv_python()?)
        .arg(peer_script("modbus_client.py"))
        .args(["--host", &addr.ip().to_string()])
        .args(["--port", &addr.port().to_string()])
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "modbus_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout)?;
    anyhow::ensure!(answer["connected"] == true, "not connected: {answer}");
    Ok(answer)
}

/// Reads the whole map until `done` accepts the pump's block.
async fn wait_for_block(addr: SocketAddr, done: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let answer = modbus_client(addr, &["--map"]).await?;
        let block = answer["map"]["blocks"][0].clone();
        if done(&block) {
            return Ok(answer);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "block never reached the expected state: {block}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The stored prediction of `output` at exactly `timestamp_ms`, waiting for
/// the sink's flush to bring it.
async fn stored_prediction(rig: &GatewayRig, output: &str, timestamp_ms: i64) -> Result<f64> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        for series in rig.vm.export(PREDICTIONS).await? {
            if series.name() == format!("prediction_{output}")
                && series.label("machine") == Some(MACHINE)
                && series.label("model") == Some(MODEL)
                && series.label("version") == Some(MODEL_VERSION)
            {
                if let Some((_, value)) = series
                    .samples()
                    .into_iter()
                    .find(|&(t, _)| t == timestamp_ms)
                {
                    return Ok(value);
                }
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no stored prediction at {timestamp_ms}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_registers_hold_the_stored_prediction_and_the_manifest_version() -> Result<()> {
    let mut rig = start_rig().await?;
    let addr = rig
        .modbus_server
        .context("the rig enables the Modbus server")?;
    assert_ne!(addr.port(), 0, "the actual port, not the one asked for");
    let manifest = ModelRegistry::open(repo_root().join("models/examples").join(MODEL))?
        .load(MODEL_VERSION)?
        .manifest()
        .clone();

    let answer = wait_for_block(addr, |b| b["status"] == STATUS_CURRENT).await?;
    let directory = &answer["map"]["directory"];
    assert_eq!(directory["magic"], 0x4942);
    assert_eq!(directory["layout_version"], 1);
    assert_eq!(
        directory["block_count"], 2,
        "two machines, a model each (pump, spindle)"
    );
    assert_eq!(directory["block_size"], 64);
    assert_eq!(directory["first_block_address"], 64);
    assert_eq!(directory["max_outputs"], 16);

    let block = &answer["map"]["blocks"][0];
    eprintln!("block 0 as the client decoded it: {block}");
    assert_eq!(block["address"], 64);
    assert_eq!(block["version"], manifest.version.as_str());
    assert_eq!(block["machine_index"], 0);
    assert_eq!(block["model_index"], 0);
    assert_eq!(block["outage_reported_ms"], 0);
    assert_eq!(block["output_count"], manifest.outputs.len());
    assert!(block["sequence"].as_u64().context("sequence")? >= 1);
    let acquired_ms = block["inputs_acquired_ms"].as_i64().context("time")?;
    assert!(
        directory["gateway_clock_ms"].as_i64().context("clock")? >= acquired_ms,
        "a prediction from the future: {answer}"
    );
    for unused in block["unused_outputs"].as_array().context("unused")? {
        assert_eq!(unused["nan"], true, "{unused}");
    }

    for (output, registers) in manifest
        .outputs
        .iter()
        .zip(block["outputs"].as_array().context("outputs")?)
    {
        let stored = stored_prediction(&rig, &output.name, acquired_ms).await?;
        let bits = registers["bits"].as_u64().context("bits")?;
        // The model computes f32; the store holds it as a float64, the
        // registers as the f32 itself: the same number.
        assert_eq!(
            u64::from((stored as f32).to_bits()),
            bits,
            "{}: registers {registers}, stored {stored}",
            output.name
        );
    }
    rig.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_server_refuses_writes_other_functions_and_reads_outside_the_map() -> Result<()> {
    let mut rig = start_rig().await?;
    let addr = rig
        .modbus_server
        .context("the rig enables the Modbus server")?;
    // Two blocks: the map is registers 0..192.
    let requests = [
        ("write_register:64:1", 1),
        ("write_registers:64:1/2", 1),
        ("read_holding:0:1", 1),
        ("read_coils:0:1", 1),
        ("read_discrete:0:1", 1),
        ("read_input:192:1", 2),
        ("read_input:164:64", 2),
        ("read_input:65000:10", 2),
        ("raw_read_input:0:126", 3),
    ];
    let mut args = Vec::new();
    for (request, _) in &requests {
        args.extend(["--request", request]);
    }
    // In-map reads, for contrast: the last register, and 125 at once by the
    // raw client too.
    args.extend(["--request", "read_input:191:1"]);
    args.extend(["--request", "raw_read_input:0:125"]);
    let answer = modbus_client(addr, &args).await?;
    rig.stop().await;

    let answers = answer["requests"].as_array().context("requests")?;
    for ((request, exception), got) in requests.iter().zip(answers) {
        assert_eq!(got["request"], *request);
        assert_eq!(got["exception"], *exception, "{request}: {got}");
    }
    let last = &answers[requests.len()];
    assert_eq!(
        last["registers"].as_array().map(Vec::len),
        Some(1),
        "{last}"
    );
    let raw = &answers[requests.len() + 1];
    assert_eq!(
        raw["registers"].as_array().map(Vec::len),
        Some(125),
        "{raw}"
    );
    assert_eq!(raw["registers"][0], 0x4942);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_pump_turns_its_block_to_nan_with_status_2() -> Result<()> {
    let mut rig = start_rig().await?;
    let addr = rig
        .modbus_server
        .context("the rig enables the Modbus server")?;
    wait_for_block(addr, |b| b["status"] == STATUS_CURRENT).await?;

    rig.stop_simulator();
    let answer = wait_for_block(addr, |b| b["status"] == STATUS_MACHINE_UNREACHABLE).await?;
    let block = &answer["map"]["blocks"][0];
    for output in block["outputs"].as_array().context("outputs")? {
        assert_eq!(output["nan"], true, "{block}");
    }
    assert_eq!(block["version"], MODEL_VERSION, "the version stays");
    let acquired_ms = block["inputs_acquired_ms"].as_i64().context("time")?;
    let outage_ms = block["outage_reported_ms"].as_i64().context("outage")?;
    assert!(outage_ms > acquired_ms, "{block}");

    // The block still names a real prediction (the last one it got, made
    // from values read before the outage): the store has it.
    stored_prediction(&rig, "bearing_wear", acquired_ms).await?;
    rig.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_modbus_port_fails_the_start_naming_the_address() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = taken.local_addr()?.to_string();
    let result = GatewayRig::start_with(RigOptions {
        poll_ms: 200,
        flush_ms: 500,
        modbus_server: Some(address.clone()),
        ..RigOptions::default()
    })
    .await;
    let Err(err) = result else {
        anyhow::bail!("the gateway started on a taken port");
    };
    let message = format!("{err:#}");
    assert!(
        message.contains("Modbus server cannot listen on") && message.contains(&address),
        "{message}"
    );
    Ok(())
}
