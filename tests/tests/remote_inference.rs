//! `backend = "remote"` against a real serving engine: MLServer 1.7.1 with
//! its MLflow runtime serves the example bearing-wear model (made an MLflow
//! model by `models/training/mlflow_model.py`), spoken to over the Open
//! Inference Protocol (KServe v2, HTTP/JSON).
//!
//! - Through the inference service: the remote answers equal libtorch's
//!   in-process ones on the same rows, batch by batch.
//! - Through a whole gateway reading the simulated pump: predictions flow,
//!   and the stored ones equal libtorch's on the stored inputs;
//!   with the engine stopped they are skipped and counted, the model's OPC UA
//!   State reads RemoteUnavailable and `Remote/Reachable`, `Remote/LastError`
//!   say why; with the engine back they resume. With `fallback_version` the
//!   local version answers meanwhile, tagged with its own version.
//! - `tls_ca`, `tls_cert`, `tls_key` against an engine requiring mutual TLS.
//! - MLServer loading the model from a real MLflow registry (the run the
//!   alias points to) answers as libtorch does.

use std::time::Duration;

use anyhow::{Context, Result};
use ironbridge_metrics::{MetricsRegistry, Value};
use ironbridge_models::{
    InferenceOptions, LifecycleOptions, ModelLifecycle, ModelState, RemoteOptions, REMOTE_BACKOFF,
};
use ironbridge_tests::gateway_rig::{GatewayRig, RigOptions, MACHINE, MODEL, MODEL_VERSION};
use ironbridge_tests::mlflow::{MlflowServer, PublishOptions};
use ironbridge_tests::mlserver::MlServer;
use ironbridge_tests::model_dirs::{copy_dir, copy_version};
use ironbridge_tests::paths::repo_root;

fn example_dir() -> std::path::PathBuf {
    repo_root().join("models/examples").join(MODEL)
}

fn options(remote: Option<RemoteOptions>) -> LifecycleOptions {
    LifecycleOptions {
        device: Default::default(),
        inference: InferenceOptions {
            max_batch: 16,
            ..InferenceOptions::default()
        },
        metrics: MetricsRegistry::new(),
        remote,
    }
}

fn remote_options(url: String) -> RemoteOptions {
    RemoteOptions {
        url,
        remote_model: MODEL.to_string(),
        timeout: Duration::from_secs(5),
        token: None,
        tls_ca: None,
        tls_cert: None,
        tls_key: None,
        backoff: REMOTE_BACKOFF,
        fallback_version: None,
    }
}

/// Rows spread over each input's valid range (the manifest's), middle and
/// edges included.
fn rows(manifest: &ironbridge_models::ModelManifest, n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            manifest
                .inputs
                .iter()
                .enumerate()
                .map(|(j, input)| {
                    // A different walk per input, so rows are not collinear.
                    let t = ((i * (j + 3)) % n) as f64 / (n - 1) as f64;
                    (input.min + t * (input.max - input.min)) as f32
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_predictions_equal_in_process_ones() -> Result<()> {
    let engine = MlServer::start(&example_dir().join(MODEL_VERSION), MODEL).await?;
    remote_answers_equal_in_process_ones(&engine).await
}

/// The engine loads the model of the run the registry's alias points to,
/// as `publish_to_mlflow.py` logged it (the `model/` artifact beside the
/// gateway's files), through MLflow's own client: the fleet's registry and
/// serving engine hold the same version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_serves_the_version_the_registry_alias_points_to() -> Result<()> {
    let registry = MlflowServer::start().await?;
    let published = registry
        .publish(
            &example_dir().join(MODEL_VERSION),
            PublishOptions {
                alias: Some("champion"),
                serving_flavor: true,
                unchecked: false,
            },
        )
        .await?;
    assert_eq!(published.version, "1", "{published:?}");
    // The registered version's source is the gateway's folder
    // (`ironbridge/`); the serving flavor sits beside it in the same run.
    let answer = registry.alias(MODEL, "champion").await?;
    let run_id = answer["model_version"]["run_id"]
        .as_str()
        .context("the alias's version names its run")?;
    assert_eq!(run_id, published.run_id);
    let engine =
        MlServer::start_from_registry(&registry.url(), &format!("runs:/{run_id}/model"), MODEL)
            .await?;
    remote_answers_equal_in_process_ones(&engine).await
}

/// 40 rows through a remote and a local lifecycle of the same version
/// folder: the engine's answers equal libtorch's within 1e-5.
async fn remote_answers_equal_in_process_ones(engine: &MlServer) -> Result<()> {
    let remote_lifecycle_options = options(Some(remote_options(engine.url())));
    let remote_metrics = remote_lifecycle_options.metrics.clone();
    let remote = ModelLifecycle::start(
        MODEL,
        example_dir(),
        MODEL_VERSION,
        remote_lifecycle_options,
    )?;
    let local = ModelLifecycle::start(MODEL, example_dir(), MODEL_VERSION, options(None))?;
    let remote_serving = remote.serving_full();
    let local_serving = local.serving_full();
    let rows = rows(&remote_serving.manifest, 40);

    // Submitted together, so rows are batched (several per request).
    let pending: Vec<_> = rows
        .iter()
        .map(|row| -> Result<_> {
            Ok((
                remote_serving.handle.submit(row.clone())?,
                local_serving.handle.submit(row.clone())?,
            ))
        })
        .collect::<Result<_>>()?;
    for (row, (remote_answer, local_answer)) in rows.iter().zip(pending) {
        assert_eq!(remote_answer.version().version, MODEL_VERSION);
        let remote_values = remote_answer.wait().await.context("remote prediction")?;
        let local_values = local_answer.wait().await.context("in-process prediction")?;
        assert_eq!(remote_values.len(), local_values.len());
        for (r, l) in remote_values.iter().zip(&local_values) {
            assert!(
                (r - l).abs() <= 1e-5,
                "row {row:?}: remote {remote_values:?}, in-process {local_values:?}\n{}",
                engine.log()
            );
        }
    }
    let stats = remote_serving.handle.stats().snapshot();
    assert_eq!(stats.inferences, 40);
    assert_eq!(stats.remote_errors, 0);
    assert!(stats.batches >= 3, "16 rows at most per request: {stats:?}");
    assert_eq!(remote_serving.handle.status().state, ModelState::Serving);
    // Only a remote version has this series: the answers above came from
    // the engine, not from a libtorch fallback.
    assert!(
        remote_metrics
            .snapshot()
            .iter()
            .any(|f| f.name == "ironbridge_inference_remote_errors"),
        "the remote version registers its engine error counter"
    );
    Ok(())
}

/// The gateway's stored predictions of `version` (made by the engine) equal
/// libtorch's in-process answers on the inputs stored at the same
/// timestamps (each prediction carries its inputs' acquisition time).
/// Returns how many were compared.
async fn stored_predictions_equal_in_process(rig: &GatewayRig, version: &str) -> Result<usize> {
    use std::collections::BTreeMap;
    let verified = ironbridge_models::ModelRegistry::open(example_dir())?.load(MODEL_VERSION)?;
    let torch = ironbridge_models::TorchModel::load(&verified, Default::default())?;
    let manifest = verified.manifest();
    // Predictions first: the gateway is still running, and a scan's
    // process line is written no later than its prediction, so every
    // prediction read here has its inputs in the store by the next read.
    let predictions = rig
        .vm
        .export(&format!(
            "prediction_bearing_wear{{machine=\"{MACHINE}\",version=\"{version}\"}}"
        ))
        .await?;
    let mut process: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    for series in rig
        .vm
        .export(&format!(
            "{{__name__=~\"process_.*\",machine=\"{MACHINE}\"}}"
        ))
        .await?
    {
        let tag = series.name().trim_start_matches("process_").to_string();
        process.entry(tag).or_default().extend(series.samples());
    }
    let mut rows = Vec::new();
    let mut stored = Vec::new();
    for series in predictions {
        for (ts, value) in series.samples() {
            for input in &manifest.inputs {
                let value = process
                    .get(&input.name)
                    .and_then(|values| values.get(&ts))
                    .with_context(|| format!("no {} stored at {ts}", input.name))?;
                // The gateway feeds the model float32, as here.
                rows.push(*value as f32);
            }
            stored.push(value);
        }
    }
    let in_process = torch.forward(&rows, stored.len())?;
    for (i, (stored, local)) in stored.iter().zip(&in_process).enumerate() {
        assert!(
            (stored - f64::from(*local)).abs() <= 1e-5,
            "prediction {i}: stored (remote) {stored}, in-process {local}"
        );
    }
    Ok(stored.len())
}

/// The value of a counter series in the gateway's registry, 0 if absent.
fn counter(metrics: &MetricsRegistry, name: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .snapshot()
        .into_iter()
        .filter(|family| family.name == name)
        .flat_map(|family| family.series)
        .filter(|series| {
            labels
                .iter()
                .all(|(k, v)| series.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|series| match series.value {
            Value::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

async fn model_state(rig: &GatewayRig) -> Result<String> {
    let path = format!("Models/{MODEL}/State");
    let answer = rig.read_opcua(std::slice::from_ref(&path)).await?;
    Ok(answer["reads"][&path]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// `Models/<model>/Remote/{Url, Reachable, LastError}`.
async fn remote_nodes(rig: &GatewayRig) -> Result<(String, Option<bool>, String)> {
    let paths: Vec<String> = ["Url", "Reachable", "LastError"]
        .iter()
        .map(|n| format!("Models/{MODEL}/Remote/{n}"))
        .collect();
    let answer = rig.read_opcua(&paths).await?;
    let value = |i: usize| answer["reads"][&paths[i]]["value"].clone();
    Ok((
        value(0).as_str().unwrap_or_default().to_string(),
        value(1).as_bool(),
        value(2).as_str().unwrap_or_default().to_string(),
    ))
}

async fn wait_for_state(rig: &GatewayRig, want: &str, within: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let state = model_state(rig).await?;
        if state == want {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "Models/{MODEL}/State reads {state:?} after {within:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_skips_and_counts_predictions_while_the_engine_is_down() -> Result<()> {
    // The engine's failures and recovery in the output of a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("ironbridge_models=info,ironbridge=warn")
        .with_test_writer()
        .try_init();
    let mut engine = MlServer::start(&example_dir().join(MODEL_VERSION), MODEL).await?;
    let rig = GatewayRig::start_with(RigOptions {
        poll_ms: 200,
        flush_ms: 500,
        bearing_wear_keys: Some(format!(
            "backend = \"remote\"\nurl = {:?}\nprotocol = \"kserve-v2\"\ntimeout_ms = 2000",
            engine.url()
        )),
        ..RigOptions::default()
    })
    .await?;
    let metrics = rig
        .gateway
        .as_ref()
        .context("the rig runs a gateway")?
        .metrics
        .clone();
    let series =
        format!("prediction_bearing_wear{{machine=\"{MACHINE}\",version=\"{MODEL_VERSION}\"}}");
    rig.wait_for_samples(&series, 3, Duration::from_secs(60))
        .await
        .with_context(|| engine.log())?;
    wait_for_state(&rig, "Serving", Duration::from_secs(10)).await?;
    assert_eq!(
        remote_nodes(&rig).await?,
        (engine.url(), Some(true), String::new())
    );
    let compared = stored_predictions_equal_in_process(&rig, MODEL_VERSION).await?;
    assert!(compared >= 3, "{compared} stored predictions compared");
    let version_labels = [("model", MODEL), ("version", MODEL_VERSION)];
    assert_eq!(
        counter(
            &metrics,
            "ironbridge_inference_remote_errors",
            &version_labels
        ),
        0
    );

    // Engine down: connection refused. Rows are skipped and counted, the
    // state shows it, raw values keep flowing.
    engine.stop().await?;
    wait_for_state(&rig, "RemoteUnavailable", Duration::from_secs(30)).await?;
    let remote_errors = counter(
        &metrics,
        "ironbridge_inference_remote_errors",
        &version_labels,
    );
    assert!(remote_errors >= 1, "remote errors counted: {remote_errors}");
    let (url, reachable, last_error) = remote_nodes(&rig).await?;
    assert_eq!((url, reachable), (engine.url(), Some(false)));
    assert!(last_error.contains("cannot connect"), "{last_error}");
    // Let a few more scans arrive while the backoff skips requests.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failed = counter(&metrics, "ironbridge_inference_failed", &[("model", MODEL)]);
    assert!(failed >= 2, "skipped predictions counted: {failed}");
    let before = rig.vm.export(&series).await?;
    let stored_before: usize = before.iter().map(|s| s.samples().len()).sum();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = rig.vm.export(&series).await?;
    let stored_during: usize = during.iter().map(|s| s.samples().len()).sum();
    // At most the batch that was in flight when the engine stopped.
    assert!(
        stored_during <= stored_before + 1,
        "no predictions while the engine is down: {stored_before} then {stored_during}"
    );

    // Engine back on the same port: the next attempt after the backoff
    // succeeds and predictions resume.
    engine.restart().await?;
    wait_for_state(&rig, "Serving", Duration::from_secs(60)).await?;
    assert_eq!(
        remote_nodes(&rig).await?,
        (engine.url(), Some(true), String::new())
    );
    rig.wait_for_samples(&series, stored_during + 3, Duration::from_secs(60))
        .await?;
    let after = counter(
        &metrics,
        "ironbridge_inference_remote_errors",
        &version_labels,
    );
    assert!(after >= remote_errors);
    Ok(())
}

/// With `fallback_version`, the local version answers while the engine is
/// down (its predictions tagged with its own version), and the remote one
/// takes over again when the engine is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_version_serves_while_the_engine_is_down() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let models = dir.path().join("models");
    for model in [MODEL, "spindle-wear"] {
        copy_dir(
            &example_dir().with_file_name(model).join(MODEL_VERSION),
            &models.join("examples").join(model).join(MODEL_VERSION),
        )?;
    }
    let versions = models.join("examples").join(MODEL);
    copy_version(
        &versions.join(MODEL_VERSION),
        &versions.join("0.9.0"),
        MODEL_VERSION,
        "0.9.0",
    )?;
    let mut engine = MlServer::start(&example_dir().join(MODEL_VERSION), MODEL).await?;
    let rig = GatewayRig::start_with(RigOptions {
        poll_ms: 200,
        flush_ms: 500,
        models_dir: Some(models),
        bearing_wear_keys: Some(format!(
            "backend = \"remote\"\nurl = {:?}\nfallback_version = \"0.9.0\"",
            engine.url()
        )),
        ..RigOptions::default()
    })
    .await?;
    let metrics = rig
        .gateway
        .as_ref()
        .context("the rig runs a gateway")?
        .metrics
        .clone();
    let series = |version: &str| {
        format!("prediction_bearing_wear{{machine=\"{MACHINE}\",version=\"{version}\"}}")
    };
    rig.wait_for_samples(&series(MODEL_VERSION), 3, Duration::from_secs(60))
        .await
        .with_context(|| engine.log())?;
    let fallback_labels = [("model", MODEL), ("fallback", "0.9.0")];
    assert_eq!(
        counter(&metrics, "ironbridge_inference_fallback", &fallback_labels),
        0
    );

    engine.stop().await?;
    rig.wait_for_samples(&series("0.9.0"), 3, Duration::from_secs(60))
        .await?;
    assert_eq!(model_state(&rig).await?, "RemoteUnavailable");
    assert!(counter(&metrics, "ironbridge_inference_fallback", &fallback_labels) >= 3);
    let remote_before: usize = rig
        .vm
        .export(&series(MODEL_VERSION))
        .await?
        .iter()
        .map(|s| s.samples().len())
        .sum();

    engine.restart().await?;
    wait_for_state(&rig, "Serving", Duration::from_secs(60)).await?;
    rig.wait_for_samples(
        &series(MODEL_VERSION),
        remote_before + 3,
        Duration::from_secs(60),
    )
    .await?;
    Ok(())
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate (EC
/// P-256, PKCS#8 keys) made with the openssl command line in `dir`.
fn make_pki(dir: &std::path::Path) -> Result<()> {
    let run = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("openssl not installed?")?;
        anyhow::ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=ironbridge-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca)?;
    for (who, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        ),
        (
            "client",
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        ),
    ] {
        std::fs::write(dir.join(format!("{who}.ext")), ext)?;
        let (key, csr, pem, ext_file, subj) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
            format!("/CN={who}"),
        );
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        run(&req)?;
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext_file,
        ])?;
    }
    Ok(())
}

/// `tls_ca`, `tls_cert` and `tls_key` against an HTTPS engine that
/// requires a client certificate (`tests/peers/kserve_tls_engine.py`;
/// MLServer itself serves plain HTTP, TLS sits in front of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_ca_and_the_client_certificate() -> Result<()> {
    use ironbridge_models::KserveV2Client;
    use ironbridge_tests::ports::free_port;
    use ironbridge_tests::process::ChildGuard;

    let dir = tempfile::tempdir()?;
    let pki = dir.path();
    make_pki(pki)?;
    let port = free_port()?;
    let _engine = ChildGuard::spawn(
        "kserve_tls_engine.py",
        std::process::Command::new(ironbridge_tests::paths::venv_python()?)
            .arg(ironbridge_tests::paths::peer_script("kserve_tls_engine.py"))
            .args(["--port", &port.to_string()])
            .arg("--cert")
            .arg(pki.join("server.pem"))
            .arg("--key")
            .arg(pki.join("server.key"))
            .arg("--client-ca")
            .arg(pki.join("ca.pem")),
    )?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the TLS engine does not listen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let options = |ca: bool, client: bool| RemoteOptions {
        tls_ca: ca.then(|| pki.join("ca.pem")),
        tls_cert: client.then(|| pki.join("client.pem")),
        tls_key: client.then(|| pki.join("client.key")),
        ..remote_options(format!("https://127.0.0.1:{port}"))
    };

    let client = KserveV2Client::new(MODEL, &options(true, true))?;
    client
        .ready()
        .await
        .map_err(|e| anyhow::anyhow!("ready: {e}"))?;
    let sums = client
        .infer(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3, 1)
        .await
        .map_err(|e| anyhow::anyhow!("infer: {e}"))?;
    assert_eq!(sums, vec![6.0, 15.0]);

    // Without a client certificate the engine refuses the handshake.
    let no_identity = KserveV2Client::new(MODEL, &options(true, false))?;
    let err = no_identity.infer(&[1.0, 2.0, 3.0], 1, 3, 1).await;
    assert!(err.is_err(), "{err:?}");
    // Without the CA the engine's certificate is not trusted.
    let no_ca = KserveV2Client::new(MODEL, &options(false, true))?;
    let err = no_ca
        .infer(&[1.0, 2.0, 3.0], 1, 3, 1)
        .await
        .expect_err("an unknown issuer must not be trusted");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    Ok(())
}
