//! Simulator → gateway → real victoria-metrics, with the example model.
//!
//! What a plant engineer would check: process values and predictions arrive,
//! stamped with acquisition times, labelled with the model version, and each
//! stored prediction is what torch itself computes from the stored inputs of
//! the same timestamp with the same model file.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use ironbridge_models::{ModelManifest, ModelRegistry};
use ironbridge_simulator::{SimOptions, Simulator};
use ironbridge_tests::gateway_rig::{
    GatewayRig, RigOptions, MACHINE, MODEL, MODEL_VERSION, SPINDLE,
};
use ironbridge_tests::paths::{repo_root, venv_python};
use tokio_util::sync::CancellationToken;

/// `[gateway] name` in config/example.toml.
const GATEWAY_NAME: &str = "gateway-1";

/// Predictions compared with torch's, absolute (outputs are in [0, 1]).
const TOLERANCE: f64 = 1e-5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_in_the_store_equal_torch_on_the_stored_inputs() -> Result<()> {
    let started = std::time::SystemTime::now();
    let mut rig = GatewayRig::start(200, 500).await?;
    let prediction_selector = &format!("{{__name__=~\"prediction_.*\",machine=\"{MACHINE}\"}}");
    rig.wait_for_samples(prediction_selector, 20, Duration::from_secs(60))
        .await?;
    rig.stop().await;

    let manifest = example_manifest()?;
    let (rows, stored) = stored_predictions(&rig, &manifest, MACHINE).await?;
    assert!(rows.len() >= 20, "only {} predictions", rows.len());

    // Acquisition times, not send times: scans are ~200 ms apart while
    // batches are flushed every 500 ms, so there are more distinct stamps
    // than batches could have given, all after the test started.
    let start_ms = started.duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let distinct: std::collections::BTreeSet<i64> = stored.iter().map(|(ts, _)| *ts).collect();
    assert_eq!(
        distinct.len(),
        stored.len(),
        "two predictions share a timestamp"
    );
    assert!(distinct.iter().all(|&ts| ts >= start_ms));

    let reference = torch_reference(&rows)?;
    let worst = assert_match_torch(MACHINE, &stored, &reference);
    // The predictions are not all the same number (a model fed constants, or
    // a stuck pipeline, would pass the comparison trivially).
    let first = stored[0].1;
    assert!(
        stored.iter().any(|(_, v)| (v - first).abs() > 1e-6),
        "predictions never change"
    );
    eprintln!(
        "{} predictions match torch; worst difference {worst:e}",
        stored.len()
    );
    Ok(())
}

/// Pumps polled at the same interval are read at the same ticks, and the
/// fan-out hands their rows to the model together: rows share forwards,
/// and every pump's stored predictions are still torch on that pump's own
/// stored inputs (a forward's answers go back to the right machines).
// One worker thread: the gateway (in-process here) runs as the binary does
// with `[runtime] worker_threads = 1`, its polls, fan-out bursts and sink
// on one thread (the pumps and the rig share it too).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn pumps_polled_together_share_forwards_and_keep_their_own_predictions() -> Result<()> {
    let pumps = CancellationToken::new();
    let mut more_pumps = Vec::new();
    for (n, seed) in [(2, 11), (3, 12), (4, 13)] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        more_pumps.push((format!("pump-{n}"), listener.local_addr()?.to_string()));
        // Another seed: each pump's values are its own.
        let pump = Simulator::new(SimOptions {
            seed,
            time_scale: 600.0,
            ..SimOptions::default()
        })?;
        let stop = pumps.clone();
        tokio::spawn(async move { pump.serve(listener, stop).await });
    }
    let mut rig = GatewayRig::start_with(RigOptions {
        poll_ms: 200,
        flush_ms: 500,
        more_pumps: more_pumps.clone(),
        ..RigOptions::default()
    })
    .await?;
    let machines: Vec<String> = std::iter::once(MACHINE.to_string())
        .chain(more_pumps.into_iter().map(|(name, _)| name))
        .collect();
    for machine in &machines {
        let selector = format!("{{__name__=~\"prediction_.*\",machine=\"{machine}\"}}");
        rig.wait_for_samples(&selector, 20, Duration::from_secs(60))
            .await?;
    }
    let predictions = rig.model_metric("ironbridge_predictions_total").await?;
    let forwards = rig
        .model_metric("ironbridge_inference_batches_total")
        .await?;
    rig.stop().await;
    pumps.cancel();

    // Rows shared forwards, so the check below covers answers of bursts.
    // How many share depends on scheduling (2.6 rows a forward on this
    // one worker, 1.6-1.9 on two; 1.2 with a timer per machine and no
    // yield in the fan-out): the benchmark measures that, BENCHMARKS.md
    // §14 and §18.
    assert!(
        forwards < predictions,
        "{predictions} predictions in {forwards} forwards"
    );

    let manifest = example_manifest()?;
    // All pumps' rows go to torch in one run; each pump's stored
    // predictions, with where its rows start.
    let mut rows = Vec::new();
    let mut per_pump = Vec::new();
    for machine in &machines {
        let (machine_rows, stored) = stored_predictions(&rig, &manifest, machine).await?;
        assert!(machine_rows.len() >= 20, "{machine}: {machine_rows:?}");
        per_pump.push((machine, rows.len(), stored));
        rows.extend(machine_rows);
    }
    let reference = torch_reference(&rows)?;
    // The pumps' answers differ by more than the tolerance, so an answer
    // given to the wrong pump would not match torch on that pump's inputs.
    let firsts: Vec<f64> = per_pump
        .iter()
        .map(|(_, first, _)| reference[*first][0])
        .collect();
    for (a, x) in firsts.iter().enumerate() {
        for y in &firsts[a + 1..] {
            assert!(
                (x - y).abs() > TOLERANCE,
                "two pumps' first predictions are too close to tell apart: {firsts:?}"
            );
        }
    }
    for (machine, first, stored) in &per_pump {
        assert_match_torch(machine, stored, &reference[*first..*first + stored.len()]);
    }
    eprintln!(
        "{} predictions of {} pumps match torch (first ones {firsts:?}); \
         {predictions} predictions in {forwards} forwards",
        rows.len(),
        machines.len()
    );
    Ok(())
}

/// The example model's manifest (config/example.toml serves this version).
fn example_manifest() -> Result<ModelManifest> {
    Ok(
        ModelRegistry::open(repo_root().join("models/examples").join(MODEL))?
            .load(MODEL_VERSION)?
            .manifest()
            .clone(),
    )
}

/// Asserts that each stored prediction (timestamp ms, value) of `machine`
/// is within [`TOLERANCE`] of torch's answer on the same row; returns the
/// largest difference.
fn assert_match_torch(machine: &str, stored: &[(i64, f64)], reference: &[Vec<f64>]) -> f64 {
    let mut worst: f64 = 0.0;
    for ((ts, value), want) in stored.iter().zip(reference) {
        let diff = (value - want[0]).abs();
        worst = worst.max(diff);
        assert!(
            diff <= TOLERANCE,
            "{machine}'s prediction at {ts}: stored {value}, torch {}, diff {diff}",
            want[0]
        );
    }
    worst
}

/// The machine's stored predictions as (timestamp ms, value), each with the
/// row of its inputs as stored at exactly its timestamp; checks the labels
/// every stored point of the machine carries.
async fn stored_predictions(
    rig: &GatewayRig,
    manifest: &ModelManifest,
    machine: &str,
) -> Result<(Vec<Vec<f64>>, Vec<(i64, f64)>)> {
    // Process values by tag, then by timestamp (ms).
    let mut process: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    for series in rig
        .vm
        .export(&format!(
            "{{__name__=~\"process_.*\",machine=\"{machine}\"}}"
        ))
        .await?
    {
        assert_eq!(series.label("machine"), Some(machine));
        // config/example.toml's `[gateway] name`, on every point.
        assert_eq!(series.label("gateway"), Some(GATEWAY_NAME));
        let tag = series
            .name()
            .strip_prefix("process_")
            .context("process series name")?
            .to_string();
        process.entry(tag).or_default().extend(series.samples());
    }
    for input in &manifest.inputs {
        assert!(
            process.contains_key(&input.name),
            "no process values stored for model input {} of {machine}",
            input.name
        );
    }

    let predictions = rig
        .vm
        .export(&format!(
            "{{__name__=~\"prediction_.*\",machine=\"{machine}\"}}"
        ))
        .await?;
    assert_eq!(predictions.len(), manifest.outputs.len());
    let mut rows = Vec::new();
    let mut stored = Vec::new();
    for series in &predictions {
        assert_eq!(series.label("machine"), Some(machine));
        assert_eq!(series.label("model"), Some(MODEL));
        assert_eq!(series.label("version"), Some(MODEL_VERSION));
        assert_eq!(series.label("gateway"), Some(GATEWAY_NAME));
        assert_eq!(
            series.name(),
            format!("prediction_{}", manifest.outputs[0].name)
        );
        for (ts, value) in series.samples() {
            // The prediction carries the acquisition time of its inputs:
            // every input has a stored value at exactly that timestamp.
            let row: Vec<f64> = manifest
                .inputs
                .iter()
                .map(|i| {
                    process[&i.name].get(&ts).copied().with_context(|| {
                        format!(
                            "{machine}'s prediction at {ts} has no {} input stored at the same time",
                            i.name
                        )
                    })
                })
                .collect::<Result<_>>()?;
            rows.push(row);
            stored.push((ts, value));
        }
    }
    Ok((rows, stored))
}

/// Python torch's outputs for `rows`, from the same model file.
fn torch_reference(rows: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
    let model = repo_root()
        .join("models/examples")
        .join(MODEL)
        .join(MODEL_VERSION)
        .join("model.pt");
    let request = serde_json::json!({ "model": model, "rows": rows });
    let mut child = Command::new(venv_python()?)
        .arg(repo_root().join("tests/peers/torch_predict.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    serde_json::to_writer(child.stdin.take().context("stdin")?, &request)?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "torch_predict.py failed");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let outputs: Vec<Vec<f64>> = serde_json::from_value(reply["outputs"].clone())?;
    anyhow::ensure!(outputs.len() == rows.len());
    Ok(outputs)
}

/// An independent OPC UA client (Python asyncua) against the whole gateway:
/// the contract's paths exist, the model nodes name the served version and
/// the sha256 of the file on disk, and a subscription to a prediction
/// receives new values stamped with acquisition times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_client_sees_model_version_and_live_predictions() -> Result<()> {
    use sha2::{Digest, Sha256};

    let mut rig = GatewayRig::start(200, 1000).await?;
    rig.wait_for_samples(
        &format!("{{__name__=~\"prediction_.*\",machine=\"{MACHINE}\"}}"),
        3,
        Duration::from_secs(60),
    )
    .await?;
    let version_dir = repo_root()
        .join("models/examples")
        .join(MODEL)
        .join(MODEL_VERSION);
    let manifest = example_manifest()?;
    let file_sha = hex::encode(Sha256::digest(std::fs::read(
        version_dir.join(&manifest.file),
    )?));
    let output = &manifest.outputs[0].name;
    let prediction = format!("Machines/{MACHINE}/Predictions/{MODEL}/{output}");
    let model_nodes = format!("Models/{MODEL}");

    let mut args: Vec<String> = vec!["--url".into(), rig.opcua_url(), "--browse".into()];
    for read in [
        format!("{model_nodes}/ActiveVersion"),
        format!("{model_nodes}/Sha256"),
        format!("{model_nodes}/State"),
        format!("{model_nodes}/InferenceCount"),
        format!("{model_nodes}/Inputs"),
        format!("Machines/{MACHINE}/Predictions/{MODEL}/ModelVersion"),
        format!("Machines/{MACHINE}/Tags/speed_rpm"),
    ] {
        args.push("--read".into());
        args.push(read);
    }
    args.extend([
        "--subscribe".into(),
        prediction.clone(),
        "--count".into(),
        "3".into(),
        // "At the publishing interval", as many HMIs ask.
        "--sampling-interval".into(),
        "-1".into(),
    ]);
    let out = tokio::process::Command::new(venv_python()?)
        .arg(repo_root().join("tests/peers/opcua_client.py"))
        .args(&args)
        .output()
        .await?;
    rig.stop().await;
    anyhow::ensure!(
        out.status.success(),
        "opcua_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(answer["connected"], true, "{answer}");

    let paths: Vec<&str> = answer["tree"]
        .as_array()
        .context("tree")?
        .iter()
        .filter_map(|n| n["path"].as_str())
        .collect();
    let config = ironbridge::config::GatewayConfig::load(&rig.config_path)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pump = config
        .machines
        .iter()
        .find(|m| m.name() == MACHINE)
        .context("the pump in the example config")?;
    let mut expected: Vec<String> = pump
        .tag_names()
        .iter()
        .map(|t| format!("Machines/{MACHINE}/Tags/{t}"))
        .collect();
    expected.push(prediction.clone());
    expected.push(format!(
        "Machines/{MACHINE}/Predictions/{MODEL}/ModelVersion"
    ));
    for node in [
        "ActiveVersion",
        "Sha256",
        "LoadedAt",
        "State",
        "InferenceCount",
        "Inputs",
        "Outputs",
    ] {
        expected.push(format!("{model_nodes}/{node}"));
    }
    for path in &expected {
        assert!(
            paths.contains(&path.as_str()),
            "{path} not browsable: {paths:?}"
        );
    }
    for node in answer["tree"].as_array().context("tree")? {
        assert_eq!(node["namespace_uri"], "urn:ironbridge:gateway");
        assert_eq!(node["node_id"], node["path"], "string NodeId = browse path");
    }

    let read = |path: String| answer["reads"][&path].clone();
    assert_eq!(
        read(format!("{model_nodes}/ActiveVersion"))["value"],
        MODEL_VERSION
    );
    assert_eq!(
        read(format!("{model_nodes}/Sha256"))["value"],
        manifest.sha256.as_str()
    );
    assert_eq!(manifest.sha256, file_sha, "manifest hash is the file's");
    assert_eq!(read(format!("{model_nodes}/State"))["value"], "Serving");
    assert!(read(format!("{model_nodes}/InferenceCount"))["value"].as_u64() > Some(0));
    assert_eq!(
        read(format!(
            "Machines/{MACHINE}/Predictions/{MODEL}/ModelVersion"
        ))["value"],
        MODEL_VERSION
    );
    let speed = read(format!("Machines/{MACHINE}/Tags/speed_rpm"));
    assert_eq!(speed["is_good"], true, "{speed}");

    let updates = answer["subscription"].as_array().context("subscription")?;
    assert!(updates.len() >= 3, "{updates:?}");
    let stamps: std::collections::BTreeSet<i64> = updates
        .iter()
        .filter_map(|u| u["source_timestamp_us"].as_i64())
        .collect();
    assert!(
        stamps.len() >= 3,
        "prediction updates need distinct acquisition times: {updates:?}"
    );
    for u in updates {
        let v = u["value"].as_f64().context("prediction value")?;
        assert!(
            (0.0..=1.0).contains(&v),
            "wear prediction {v} outside [0, 1]"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opcua_machine_reaches_the_store_and_the_gateways_opcua_server() -> Result<()> {
    use ironbridge_simulator::SpindleVariable;
    use opcua::types::Variant;

    let mut rig = GatewayRig::start(200, 200).await?;
    let selector = format!("process_bearing_temp_c{{machine=\"{SPINDLE}\"}}");
    rig.wait_for_samples(&selector, 5, Duration::from_secs(60))
        .await?;
    // The spindle's own model predicts from what the OPC UA source read.
    rig.wait_for_samples(
        &format!(
            "prediction_bearing_degradation{{machine=\"{SPINDLE}\",model=\"spindle-wear\",version=\"1.0.0\"}}"
        ),
        3,
        Duration::from_secs(60),
    )
    .await?;

    // Paused, the spindle's value must show up as it is, in the store and
    // on the gateway's own OPC UA node.
    rig.spindle.pause();
    let snapshot = rig.spindle.snapshot();
    let Variant::Double(expected) = SpindleVariable::BearingTemperature.value(&snapshot.state)
    else {
        anyhow::bail!("the spindle's temperature is not a Double");
    };
    let node = format!("Machines/{SPINDLE}/Tags/bearing_temp_c");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut samples: Vec<(i64, f64)> = rig
            .vm
            .export(&selector)
            .await?
            .iter()
            .flat_map(|s| s.samples())
            .collect();
        samples.sort_by_key(|(t, _)| *t);
        // Every value keeps its own acquisition time: two different values
        // at one timestamp would overwrite each other in InfluxDB.
        if let Some(pair) = samples
            .windows(2)
            .find(|pair| pair[0].0 == pair[1].0 && pair[0].1 != pair[1].1)
        {
            anyhow::bail!("two values of one tag stored at one timestamp: {pair:?}");
        }
        let stored = samples.last().map(|(_, v)| *v);
        let answer = rig.read_opcua(std::slice::from_ref(&node)).await?;
        let served = answer["reads"][&node].clone();
        let close = |v: f64| (v - expected).abs() <= 1e-9 * expected.abs().max(1.0);
        if stored.is_some_and(close)
            && served["is_good"] == true
            && served["value"].as_f64().is_some_and(close)
        {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "spindle temperature {expected} not seen: stored {:?}, served {served}",
            &samples[samples.len().saturating_sub(6)..]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The spindle goes away: its tags on the gateway turn Bad, the pump's
    // stay Good.
    rig.stop_spindle();
    let pump_node = format!("Machines/{MACHINE}/Tags/speed_rpm");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = rig.read_opcua(&[node.clone(), pump_node.clone()]).await?;
        let served = &answer["reads"][&node];
        if served["is_good"] == false {
            assert_eq!(served["status"], "BadNoCommunication", "{served}");
            assert_eq!(answer["reads"][&pump_node]["is_good"], true, "{answer}");
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the spindle's tag never turned Bad: {served}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rig.stop().await;
    Ok(())
}
