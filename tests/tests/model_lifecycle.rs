//! Model versions on a running gateway, from outside: an independent OPC UA
//! client (python asyncua) calls `Models/<model>/Activate` and `Rollback`
//! as different users; the gateway reads the simulated pump and writes to a
//! real victoria-metrics. A version folder dropped in while running shows
//! up, a tampered one fails without disturbing the serving version, a
//! non-admin is refused, and after an activation the stored predictions
//! carry the new version.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use ironbridge::discover::OpcUaClientArgs;
use ironbridge::model_cli::{self, ModelAction, ModelCommandError};
use ironbridge_tests::gateway_rig::{GatewayRig, RigOptions};
use ironbridge_tests::model_dirs::{copy_dir, copy_version};
use ironbridge_tests::paths::{repo_root, venv_python};

const MODEL: &str = "bearing-wear";
const MACHINE: &str = "pump-1";
const ADMIN: (&str, &str) = ("alice", "admin-password-for-tests");
const OPERATOR: (&str, &str) = ("olga", "operator-password-for-tests");

/// Runs the asyncua client as `user` over SignAndEncrypt.
async fn client(
    rig: &GatewayRig,
    pki: &Path,
    user: (&str, &str),
    reads: &[String],
    calls: &[String],
) -> Result<serde_json::Value> {
    let env = "IRONBRIDGE_TEST_LIFECYCLE_CLIENT_PASSWORD";
    let mut args: Vec<String> = vec![
        "--url".into(),
        rig.opcua_url(),
        "--policy".into(),
        "Basic256Sha256".into(),
        "--client-pki".into(),
        pki.display().to_string(),
        "--user".into(),
        user.0.into(),
        "--password-env".into(),
        env.into(),
    ];
    for read in reads {
        args.extend(["--read".into(), read.clone()]);
    }
    for call in calls {
        args.extend(["--call".into(), call.clone()]);
    }
    let out = tokio::process::Command::new(venv_python()?)
        .arg(repo_root().join("tests/peers/opcua_client.py"))
        .args(&args)
        .env(env, user.1)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "opcua_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    anyhow::ensure!(answer["connected"] == true, "{answer}");
    Ok(answer)
}

fn call_statuses(answer: &serde_json::Value) -> Vec<String> {
    answer["calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|c| c["status"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_activated_by_an_admin_and_a_tampered_one_never_serves() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let models = dir.path().join("models");
    let examples = repo_root().join("models/examples");
    for model in [MODEL, "spindle-wear"] {
        copy_dir(
            &examples.join(model).join("1.0.0"),
            &models.join("examples").join(model).join("1.0.0"),
        )?;
    }
    let versions = models.join("examples").join(MODEL);
    copy_version(
        &versions.join("1.0.0"),
        &versions.join("1.1.0"),
        "1.0.0",
        "1.1.0",
    )?;
    let mut rig = GatewayRig::start_with(RigOptions {
        poll_ms: 200,
        flush_ms: 500,
        models_dir: Some(models.clone()),
        opcua_users: vec![
            (ADMIN.0.into(), ADMIN.1.into(), "admin".into()),
            (OPERATOR.0.into(), OPERATOR.1.into(), "operator".into()),
        ],
        trust_client_certs: true,
        ..RigOptions::default()
    })
    .await?;
    let pki = dir.path().join("client-pki");
    let model_nodes = format!("Models/{MODEL}");
    let activate = |version: &str| format!("{model_nodes}/Activate={version}");
    rig.wait_for_samples(
        &format!("prediction_bearing_wear{{machine=\"{MACHINE}\",version=\"1.0.0\"}}"),
        3,
        Duration::from_secs(60),
    )
    .await?;

    // Lineage: the start is recorded with the build and the configuration.
    let config_sha = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(std::fs::read(&rig.config_path)?))
    };
    rig.wait_for_samples(
        &format!(
            "gateway_info_started{{version=\"{}\",config_sha256=\"{config_sha}\"}}",
            env!("CARGO_PKG_VERSION")
        ),
        1,
        Duration::from_secs(30),
    )
    .await?;

    // Observers and operators may look, not change.
    let answer = client(&rig, &pki, OPERATOR, &[], &[activate("1.1.0")]).await?;
    assert_eq!(call_statuses(&answer), ["BadUserAccessDenied"], "{answer}");

    // A tampered version dropped in while running: found, fails at
    // activation on its hash, 1.0.0 keeps serving.
    copy_version(
        &versions.join("1.0.0"),
        &versions.join("1.2.0"),
        "1.0.0",
        "1.2.0",
    )?;
    let model_file = std::fs::read_dir(versions.join("1.2.0"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "pt"))
        .context("model file")?;
    let mut bytes = std::fs::read(&model_file)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(&model_file, bytes)?;
    let state_of = |v: &str| format!("{model_nodes}/Versions/{v}/State");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client(&rig, &pki, OPERATOR, &[state_of("1.2.0")], &[]).await?;
        if answer["reads"][state_of("1.2.0")]["value"] == "Available" {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "1.2.0 never showed up: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let failure = format!("{model_nodes}/Versions/1.2.0/FailureReason");
    let active = format!("{model_nodes}/ActiveVersion");
    let answer = client(
        &rig,
        &pki,
        ADMIN,
        &[],
        &[activate("9.9.9"), activate("1.2.0")],
    )
    .await?;
    assert_eq!(
        call_statuses(&answer),
        ["BadInvalidArgument", "BadInvalidState"],
        "{answer}"
    );
    let answer = client(
        &rig,
        &pki,
        ADMIN,
        &[state_of("1.2.0"), failure.clone(), active.clone()],
        &[],
    )
    .await?;
    assert_eq!(answer["reads"][state_of("1.2.0")]["value"], "Failed");
    let reason = answer["reads"][&failure]["value"].as_str().unwrap_or("");
    assert!(reason.contains("sha256"), "{answer}");
    assert_eq!(answer["reads"][&active]["value"], "1.0.0");

    // The admin activates 1.1.0: it serves, and the store gets its
    // predictions under its version.
    let swap_started = std::time::SystemTime::now();
    let answer = client(&rig, &pki, ADMIN, &[], &[activate("1.1.0")]).await?;
    let swap_done = std::time::SystemTime::now();
    assert_eq!(call_statuses(&answer), ["Good"], "{answer}");
    let answer = client(
        &rig,
        &pki,
        OPERATOR,
        &[
            active.clone(),
            state_of("1.1.0"),
            state_of("1.0.0"),
            format!("Machines/{MACHINE}/Predictions/{MODEL}/ModelVersion"),
        ],
        &[],
    )
    .await?;
    assert_eq!(answer["reads"][&active]["value"], "1.1.0", "{answer}");
    assert_eq!(answer["reads"][state_of("1.1.0")]["value"], "Active");
    assert_eq!(answer["reads"][state_of("1.0.0")]["value"], "Available");
    rig.wait_for_samples(
        &format!("prediction_bearing_wear{{machine=\"{MACHINE}\",version=\"1.1.0\"}}"),
        3,
        Duration::from_secs(60),
    )
    .await?;
    no_scan_without_a_prediction_across_the_swap(&rig, &versions, swap_started, swap_done).await?;

    // Rollback returns to 1.0.0.
    let answer = client(&rig, &pki, ADMIN, &[], &[format!("{model_nodes}/Rollback")]).await?;
    assert_eq!(call_statuses(&answer), ["Good"], "{answer}");
    let answer = client(&rig, &pki, OPERATOR, std::slice::from_ref(&active), &[]).await?;
    assert_eq!(answer["reads"][&active]["value"], "1.0.0", "{answer}");

    // The same from the command line's code (`ironbridge model ...`).
    let cli = |user: (&str, &str), action: ModelAction| {
        let env = format!("IRONBRIDGE_TEST_CLI_PASSWORD_{}", user.0.to_uppercase());
        std::env::set_var(&env, user.1);
        let args = OpcUaClientArgs {
            endpoint: rig.opcua_url(),
            security: "Aes256Sha256RsaPss".into(),
            mode: "SignAndEncrypt".into(),
            username: Some(user.0.into()),
            password_env: env,
            trust_server_cert: true,
            pki_dir: dir.path().join("cli-pki"),
        };
        tokio::task::spawn_blocking(move || model_cli::run(&args, MODEL, &action))
    };
    let activate_1_1 = || ModelAction::Activate {
        version: "1.1.0".into(),
    };
    match cli(OPERATOR, activate_1_1()).await? {
        Err(ModelCommandError::Refused(message)) => {
            assert!(message.contains("admin"), "{message}")
        }
        other => panic!("an operator must be refused: {other:?}"),
    }
    match cli(ADMIN, activate_1_1()).await? {
        Ok(outcome) => {
            assert_eq!(
                (outcome.before.as_str(), outcome.after.as_str()),
                ("1.0.0", "1.1.0")
            )
        }
        Err(e) => panic!("{e:?}"),
    }
    match cli(
        ADMIN,
        ModelAction::Activate {
            version: "1.2.0".into(),
        },
    )
    .await?
    {
        Err(ModelCommandError::Refused(message)) => {
            assert!(message.contains("sha256"), "{message}")
        }
        other => panic!("1.2.0 must fail: {other:?}"),
    }
    match cli(ADMIN, ModelAction::Rollback).await? {
        Ok(outcome) => assert_eq!(outcome.after, "1.0.0"),
        Err(e) => panic!("{e:?}"),
    }

    // Every change reached the store as a model_event point (victoria-metrics
    // keeps their times; the text needs InfluxDB): the start, 1.2.0 found,
    // its two failures, two activations and two rollbacks at least.
    rig.wait_for_samples(
        &format!("model_event_event{{model=\"{MODEL}\"}}"),
        8,
        Duration::from_secs(30),
    )
    .await?;

    rig.stop().await;
    Ok(())
}

/// `to` as a copy of version `from` whose model adds `offset` to every
/// output: a worse model, made with torch itself (the project's venv).
fn offset_version(
    from: &Path,
    to: &Path,
    from_version: &str,
    to_version: &str,
    offset: f64,
) -> Result<()> {
    copy_version(from, to, from_version, to_version)?;

    let out = std::process::Command::new(venv_python()?)
        .arg(repo_root().join("tests/peers/offset_model.py"))
        .arg(from)
        .arg(to)
        .arg(offset.to_string())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "making {to_version} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The gate on live, labelled data (the simulated spindle's ground truth):
/// a shadow that is clearly worse fails and is stopped; one as good as the
/// active version passes and is promoted; shadow predictions and the gate's
/// statistics reach the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_stops_a_worse_shadow_and_promotes_an_equal_one() -> Result<()> {
    const SPINDLE_MODEL: &str = "spindle-wear";
    let dir = tempfile::tempdir()?;
    let models = dir.path().join("models");
    let examples = repo_root().join("models/examples");
    for model in [MODEL, SPINDLE_MODEL] {
        copy_dir(
            &examples.join(model).join("1.0.0"),
            &models.join("examples").join(model).join("1.0.0"),
        )?;
    }
    let versions = models.join("examples").join(SPINDLE_MODEL);
    copy_version(
        &versions.join("1.0.0"),
        &versions.join("1.1.0"),
        "1.0.0",
        "1.1.0",
    )?;
    offset_version(
        &versions.join("1.0.0"),
        &versions.join("1.2.0"),
        "1.0.0",
        "1.2.0",
        0.3,
    )?;
    let mut rig = GatewayRig::start_with(RigOptions {
        poll_ms: 200,
        flush_ms: 500,
        models_dir: Some(models.clone()),
        opcua_users: vec![(ADMIN.0.into(), ADMIN.1.into(), "admin".into())],
        trust_client_certs: true,
        gate: Some((30, true)),
        ..RigOptions::default()
    })
    .await?;
    let pki = dir.path().join("client-pki");
    let nodes = format!("Models/{SPINDLE_MODEL}");
    let gate = |name: &str| format!("{nodes}/Gate/{name}");
    let reads = [
        format!("{nodes}/ActiveVersion"),
        format!("{nodes}/Shadow/Version"),
        gate("ShadowVersion"),
        gate("Samples"),
        gate("Decision"),
        gate("Mean"),
    ];

    // A worse shadow: Fail, and auto_promote stops it.
    let answer = client(
        &rig,
        &pki,
        ADMIN,
        &[],
        &[format!("{nodes}/StartShadow=1.2.0")],
    )
    .await?;
    assert_eq!(call_statuses(&answer), ["Good"], "{answer}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let answer = loop {
        let answer = client(&rig, &pki, ADMIN, &reads, &[]).await?;
        let r = &answer["reads"];
        if r[gate("ShadowVersion")]["value"] == "1.2.0"
            && r[gate("Decision")]["value"] == "Fail"
            && r[format!("{nodes}/Shadow/Version")]["value"] == ""
        {
            break answer;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no Fail for 1.2.0: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        answer["reads"][format!("{nodes}/ActiveVersion")]["value"],
        "1.0.0"
    );
    assert!(
        answer["reads"][gate("Samples")]["value"].as_u64() >= Some(30),
        "{answer}"
    );
    assert!(
        answer["reads"][gate("Mean")]["value"].as_f64() > Some(0.02),
        "{answer}"
    );
    rig.wait_for_samples(
        "prediction_shadow_bearing_degradation{model=\"spindle-wear\",version=\"1.2.0\"}",
        10,
        Duration::from_secs(30),
    )
    .await?;

    // An equal shadow (the same weights): Pass, and it is promoted.
    let answer = client(
        &rig,
        &pki,
        ADMIN,
        &[],
        &[format!("{nodes}/StartShadow=1.1.0")],
    )
    .await?;
    assert_eq!(call_statuses(&answer), ["Good"], "{answer}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let answer = client(&rig, &pki, ADMIN, &reads, &[]).await?;
        let r = &answer["reads"];
        if r[format!("{nodes}/ActiveVersion")]["value"] == "1.1.0" {
            assert_eq!(r[gate("Decision")]["value"], "Pass", "{answer}");
            assert_eq!(
                r[format!("{nodes}/Shadow/Version")]["value"],
                "",
                "{answer}"
            );
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "1.1.0 never promoted: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    rig.wait_for_samples(
        "gate_samples{model=\"spindle-wear\",shadow_version=\"1.1.0\"}",
        1,
        Duration::from_secs(30),
    )
    .await?;
    rig.wait_for_samples(
        "prediction_bearing_degradation{model=\"spindle-wear\",version=\"1.1.0\"}",
        3,
        Duration::from_secs(30),
    )
    .await?;
    rig.stop().await;
    Ok(())
}

/// Drift: the simulated pump in a plant 45 °C hotter than the one its model
/// was trained in. Its bearing temperature leaves the training
/// distribution: the store gets `drift` points above the threshold, the
/// model's State says Drifting and its predictions turn Uncertain (the value
/// is still there). The window is seconds here (`window_s = 4`) instead of
/// the default day, so every input of a short run looks drifted; only the
/// heated one is asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_unlike_the_training_data_are_flagged_as_drift() -> Result<()> {
    let mut rig = GatewayRig::start_with(RigOptions {
        poll_ms: 50,
        flush_ms: 500,
        pump_ambient_c: Some(70.0),
        bearing_wear_drift_window_s: Some(4),
        ..RigOptions::default()
    })
    .await?;
    let selector = format!(
        "drift_psi{{machine=\"{MACHINE}\",model=\"{MODEL}\",version=\"1.0.0\",input=\"bearing_temp_c\"}}"
    );
    rig.wait_for_samples(&selector, 1, Duration::from_secs(90))
        .await?;
    let series = rig.vm.export(&selector).await?;
    let psi = series
        .iter()
        .flat_map(|s| s.samples())
        .map(|(_, v)| v)
        .next_back()
        .context("a drift sample")?;
    assert!(psi > 0.25, "bearing_temp_c PSI {psi}");

    // The State node is republished every second (and on version events):
    // it follows the drift flag within that period, so read until it does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let answer = tokio::process::Command::new(venv_python()?)
            .arg(repo_root().join("tests/peers/opcua_client.py"))
            .args([
                "--url".to_string(),
                rig.opcua_url(),
                "--read".into(),
                format!("Models/{MODEL}/State"),
                "--read".into(),
                format!("Models/{MODEL}/Drift/bearing_temp_c"),
                "--read".into(),
                format!("Machines/{MACHINE}/Predictions/{MODEL}/bearing_wear"),
            ])
            .output()
            .await?;
        anyhow::ensure!(
            answer.status.success(),
            "{}",
            String::from_utf8_lossy(&answer.stderr)
        );
        let answer: serde_json::Value = serde_json::from_slice(&answer.stdout)?;
        if answer["reads"][format!("Models/{MODEL}/State")]["value"] == "Drifting"
            || tokio::time::Instant::now() > deadline
        {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let read = |path: String| answer["reads"][&path].clone();
    assert_eq!(
        read(format!("Models/{MODEL}/State"))["value"],
        "Drifting",
        "{answer}"
    );
    assert!(
        read(format!("Models/{MODEL}/Drift/bearing_temp_c"))["value"].as_f64() > Some(0.25),
        "{answer}"
    );
    let prediction = read(format!(
        "Machines/{MACHINE}/Predictions/{MODEL}/bearing_wear"
    ));
    assert_eq!(prediction["status"], "Uncertain", "{answer}");
    assert!(
        prediction["value"].as_f64().is_some(),
        "the value stays: {answer}"
    );
    rig.stop().await;
    Ok(())
}

/// The README's "Updating a model", end to end: the spindle gets bearings
/// that wear differently; a recording of them trains 1.1.0 with the
/// training script; `model verify` finds it non-inferior to 1.0.0 (better)
/// on that recording; dropped into the running gateway's model folder it is
/// found, run as shadow on the live spindle, passes the gate on the
/// spindle's measured truth and is promoted; its predictions reach the
/// store under its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_loop_record_train_verify_shadow_gate_promote() -> Result<()> {
    const SPINDLE_MODEL: &str = "spindle-wear";
    const SIGNATURE: f64 = 1.6;
    let dir = tempfile::tempdir()?;

    // 1. Record the new bearings (2000 simulated hours, a row every 240 s).
    let recording = dir.path().join("spindle-signature-1.6.csv");
    {
        let options = ironbridge_simulator::SpindleRecordOptions {
            seed: 7,
            duration_s: 2000.0 * 3600.0,
            step_s: 240.0,
            spindle: ironbridge_simulator::SpindleConfig {
                bearing_signature: SIGNATURE,
                ..Default::default()
            },
        };
        let file = std::io::BufWriter::new(std::fs::File::create(&recording)?);
        ironbridge_simulator::record_spindle(&options, file)?;
    }

    // 2. Train 1.1.0 on it with the training script (published only if it
    //    meets its acceptance bounds).
    let models = dir.path().join("models");
    let examples = repo_root().join("models/examples");
    for model in [MODEL, SPINDLE_MODEL] {
        copy_dir(
            &examples.join(model).join("1.0.0"),
            &models.join("examples").join(model).join("1.0.0"),
        )?;
    }
    let staging = dir.path().join("trained");
    copy_dir(
        &examples.join(SPINDLE_MODEL).join("1.0.0"),
        &staging.join("1.0.0"),
    )?;
    let trained = tokio::process::Command::new(venv_python()?)
        .arg(repo_root().join("models/training/train_bearing_model.py"))
        .args(["--machine", "spindle", "--version", "1.1.0", "--data"])
        .arg(&recording)
        .arg("--out")
        .arg(&staging)
        // torch's compiled-kernel cache, in the test's folder instead of
        // /tmp/torchinductor_<user>, which would outlive the test.
        .env("TORCHINDUCTOR_CACHE_DIR", dir.path().join("torchinductor"))
        .output()
        .await?;
    anyhow::ensure!(
        trained.status.success(),
        "training failed: {}",
        String::from_utf8_lossy(&trained.stderr)
    );

    // 3. Verify it as the edge will, against 1.0.0, on the new recording.
    let request = ironbridge::model_verify::VerifyRequest {
        dir: staging.join("1.1.0"),
        data: Some(recording.clone()),
        label: None,
        against: Some(staging.join("1.0.0")),
        margin: 0.0,
    };
    let report = tokio::task::spawn_blocking(move || ironbridge::model_verify::run(&request))
        .await?
        .map_err(anyhow::Error::msg)?;
    assert!(report.passed(), "{}", report.text());

    // 4. The gateway runs 1.0.0 on the spindle with the new bearings.
    let mut rig = GatewayRig::start_with(RigOptions {
        poll_ms: 200,
        flush_ms: 500,
        models_dir: Some(models.clone()),
        opcua_users: vec![(ADMIN.0.into(), ADMIN.1.into(), "admin".into())],
        trust_client_certs: true,
        gate: Some((30, true)),
        spindle_bearing_signature: Some(SIGNATURE),
        ..RigOptions::default()
    })
    .await?;
    let pki = dir.path().join("client-pki");
    let nodes = format!("Models/{SPINDLE_MODEL}");

    // 5. Drop 1.1.0 in (staged under a dot name, then renamed whole).
    let versions = models.join("examples").join(SPINDLE_MODEL);
    copy_dir(&staging.join("1.1.0"), &versions.join(".1.1.0"))?;
    std::fs::rename(versions.join(".1.1.0"), versions.join("1.1.0"))?;
    let state = format!("{nodes}/Versions/1.1.0/State");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client(&rig, &pki, ADMIN, std::slice::from_ref(&state), &[]).await?;
        if answer["reads"][&state]["value"] == "Available" {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "1.1.0 not found: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 6. Shadow it; the gate (auto_promote) decides on live labelled data.
    let answer = client(
        &rig,
        &pki,
        ADMIN,
        &[],
        &[format!("{nodes}/StartShadow=1.1.0")],
    )
    .await?;
    assert_eq!(call_statuses(&answer), ["Good"], "{answer}");
    let reads = [
        format!("{nodes}/ActiveVersion"),
        format!("{nodes}/Gate/Decision"),
        format!("{nodes}/Gate/Mean"),
        format!("{nodes}/Gate/Samples"),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let answer = client(&rig, &pki, ADMIN, &reads, &[]).await?;
        let r = &answer["reads"];
        if r[&reads[0]]["value"] == "1.1.0" {
            assert_eq!(r[&reads[1]]["value"], "Pass", "{answer}");
            break;
        }
        anyhow::ensure!(
            r[&reads[1]]["value"] != "Fail",
            "1.1.0 failed the gate: {answer}"
        );
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "1.1.0 not promoted: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    rig.wait_for_samples(
        "prediction_bearing_degradation{model=\"spindle-wear\",version=\"1.1.0\"}",
        3,
        Duration::from_secs(30),
    )
    .await?;
    rig.stop().await;
    Ok(())
}

/// Around an activation (2 s either side), every scan of the pump whose
/// inputs the model takes (all present, Good, in range) has a prediction
/// stamped with the same acquisition time, and the predictions' version
/// changes from 1.0.0 to 1.1.0 exactly once: no scan is lost to the swap
/// and each prediction names the version that was serving.
async fn no_scan_without_a_prediction_across_the_swap(
    rig: &GatewayRig,
    versions: &Path,
    swap_started: std::time::SystemTime,
    swap_done: std::time::SystemTime,
) -> Result<()> {
    use std::collections::{BTreeMap, HashMap};
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    };
    let (from, to) = (ms(swap_started) - 2000, ms(swap_done) + 2000);
    // Let the window's last scans reach the store.
    while ms(std::time::SystemTime::now()) < to + 1500 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let manifest = ironbridge_models::ModelRegistry::open(versions)?
        .load("1.0.0")?
        .manifest()
        .clone();
    let mut scans: BTreeMap<i64, HashMap<String, f64>> = BTreeMap::new();
    for series in rig
        .vm
        .export(&format!(
            "{{__name__=~\"process_.*\",machine=\"{MACHINE}\"}}"
        ))
        .await?
    {
        let tag = series.name().trim_start_matches("process_").to_string();
        for (t, v) in series.samples() {
            if (from..=to).contains(&t) {
                scans.entry(t).or_default().insert(tag.clone(), v);
            }
        }
    }
    let mut predictions: BTreeMap<i64, String> = BTreeMap::new();
    for series in rig
        .vm
        .export(&format!("prediction_bearing_wear{{machine=\"{MACHINE}\"}}"))
        .await?
    {
        let version = series.label("version").unwrap_or("?").to_string();
        for (t, _) in series.samples() {
            if (from..=to).contains(&t) {
                predictions.insert(t, version.clone());
            }
        }
    }
    let mut fed = 0;
    for (t, values) in &scans {
        let takes = manifest.inputs.iter().all(|i| {
            values
                .get(&i.name)
                .is_some_and(|v| *v >= i.min && *v <= i.max)
        });
        if takes {
            fed += 1;
            anyhow::ensure!(
                predictions.contains_key(t),
                "the scan at {t} ms ({values:?}) has no prediction; predictions: {predictions:?}"
            );
        }
    }
    anyhow::ensure!(fed >= 10, "only {fed} scans in the window around the swap");
    let mut order: Vec<&str> = predictions.values().map(String::as_str).collect();
    order.dedup();
    anyhow::ensure!(
        order == ["1.0.0", "1.1.0"],
        "versions in time order across the swap: {order:?}"
    );
    Ok(())
}
