//! Model versions from an MLflow Model Registry, from outside: a real
//! `mlflow server` (sqlite, local artifacts), versions published to it
//! with `models/training/publish_to_mlflow.py` the way a data scientist
//! would, and a gateway following `bearing-wear@champion` (on_new =
//! "shadow", polling every second), watched through its OPC UA nodes
//! (python asyncua) and its /metrics.
//!
//! One test on one server, in the order a plant would live it: no alias
//! yet (reported, not fatal), the alias on the version already serving
//! (nothing downloaded), a new version
//! (downloaded, shadow), the alias moved to the next (it follows), a
//! version whose model does not match its manifest (Failed, never served),
//! a registry version that would overwrite a different local folder
//! (refused, counted), the registry gone (serving goes on, reported) and
//! back; then a second gateway with on_new = "activate".

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use ironbridge_tests::gateway_rig::{GatewayRig, RigOptions};
use ironbridge_tests::mlflow::{MlflowServer, PublishOptions};
use ironbridge_tests::model_dirs::{copy_dir, copy_version};
use ironbridge_tests::paths::repo_root;

const MODEL: &str = "bearing-wear";
const ALIAS: &str = "champion";
/// Generous: publishing and loading share two cores with the build.
const WAIT: Duration = Duration::from_secs(120);

/// Waits until every `(path, value)` reads as expected; returns the last
/// answer.
async fn wait_for_nodes(
    rig: &GatewayRig,
    expected: &[(String, &str)],
) -> Result<serde_json::Value> {
    let paths: Vec<String> = expected.iter().map(|(p, _)| p.clone()).collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = rig.read_opcua(&paths).await?;
        if expected
            .iter()
            .all(|(path, value)| answer["reads"][path]["value"] == *value)
        {
            return Ok(answer);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "never read {expected:?}; last answer: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the string node `path` contains `needle`.
async fn wait_for_text(rig: &GatewayRig, path: &str, needle: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = rig.read_opcua(&[path.to_string()]).await?;
        let text = answer["reads"][path]["value"].as_str().unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{path} never said {needle:?}: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn flip_a_byte_of_the_model(folder: &Path) -> Result<()> {
    let model = folder.join("model.pt");
    let mut bytes = std::fs::read(&model)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(&model, bytes)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_follow_the_registry_alias_and_a_bad_one_never_serves() -> Result<()> {
    let mut mlflow = MlflowServer::start().await?;
    let dir = tempfile::tempdir()?;
    let examples = repo_root().join("models/examples");
    let models = dir.path().join("models");
    for model in [MODEL, "spindle-wear"] {
        copy_dir(
            &examples.join(model).join("1.0.0"),
            &models.join("examples").join(model).join("1.0.0"),
        )?;
    }
    let served = models.join("examples").join(MODEL);
    // What the data scientist publishes, outside the gateway's folder.
    let published = dir.path().join("published");
    let original = examples.join(MODEL).join("1.0.0");
    for version in ["1.1.0", "1.2.0", "1.3.0"] {
        copy_version(&original, &published.join(version), "1.0.0", version)?;
    }
    flip_a_byte_of_the_model(&published.join("1.3.0"))?;
    // A different 1.1.0 (same number, other content) for the conflict.
    let other = dir.path().join("other");
    copy_version(&original, &other.join("1.1.0"), "1.0.0", "1.1.0")?;
    let manifest = other.join("1.1.0/manifest.toml");
    let text = std::fs::read_to_string(&manifest)?;
    std::fs::write(
        &manifest,
        text.replacen("description = \"", "description = \"Retrained: ", 1),
    )?;

    let mut rig = GatewayRig::start_with(RigOptions {
        poll_ms: 200,
        flush_ms: 500,
        models_dir: Some(models.clone()),
        bearing_wear_registry: Some(format!(
            "kind = \"mlflow\", url = {:?}, name = {MODEL:?}, alias = {ALIAS:?}, \
             poll_interval_s = 1, on_new = \"shadow\"",
            mlflow.url()
        )),
        ..RigOptions::default()
    })
    .await?;
    let node = |rest: &str| format!("Models/{MODEL}/{rest}");
    let state = |v: &str| node(&format!("Versions/{v}/State"));

    // Nothing registered yet: reported, not fatal, looked at again.
    wait_for_text(&rig, &node("Registry/LastError"), "has no alias").await?;
    assert!(rig.model_metric("ironbridge_registry_errors_total").await? >= 1.0);

    // The alias on the version the gateway starts with; published with the
    // serving flavor, as the training script does.
    let v1 = mlflow
        .publish(
            &original,
            PublishOptions {
                alias: Some(ALIAS),
                serving_flavor: true,
                unchecked: false,
            },
        )
        .await?;
    assert_eq!(v1.version, "1");
    let answer = mlflow.alias(MODEL, ALIAS).await?;
    let tags = answer["model_version"]["tags"].to_string();
    let original_manifest = std::fs::read_to_string(original.join("manifest.toml"))?;
    let lineage: toml::Table = toml::from_str(&original_manifest)?;
    let data_sha = lineage["provenance"]["training_data_sha256"]
        .as_str()
        .context("manifest lineage")?;
    assert!(tags.contains(data_sha), "lineage tags: {tags}");
    assert!(
        answer["model_version"]["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("/ironbridge")),
        "{answer}"
    );

    // The same module as an MLflow pytorch model beside it, for serving.
    let serving = v1
        .source
        .strip_prefix("mlflow-artifacts:/")
        .and_then(|s| s.strip_suffix("ironbridge"))
        .map(|run| format!("{run}model"))
        .context("source under mlflow-artifacts:/")?;
    let listing = reqwest::Client::new()
        .get(format!(
            "{}/api/2.0/mlflow-artifacts/artifacts",
            mlflow.url()
        ))
        .query(&[("path", serving.as_str())])
        .send()
        .await?
        .text()
        .await?;
    assert!(listing.contains("MLmodel"), "{serving}: {listing}");

    // The alias points at what serves already: nothing is downloaded.
    wait_for_nodes(
        &rig,
        &[
            (node("Registry/Alias"), ALIAS),
            (node("Registry/VersionSeen"), "1"),
            (node("Registry/LastError"), ""),
            (node("ActiveVersion"), "1.0.0"),
        ],
    )
    .await?;
    let answer = rig.read_opcua(&[node("Registry/LastSync")]).await?;
    assert_eq!(
        answer["reads"][node("Registry/LastSync")]["status"],
        "Good",
        "{answer}"
    );
    assert_eq!(
        rig.model_metric("ironbridge_registry_downloads_total")
            .await?,
        0.0
    );
    assert!(rig.model_metric("ironbridge_registry_syncs_total").await? >= 1.0);
    assert!(
        rig.model_metric("ironbridge_registry_last_sync_seconds")
            .await?
            > 1.7e9
    );

    // A new version on the alias: downloaded whole, run as the shadow.
    let v2 = mlflow
        .publish(
            &published.join("1.1.0"),
            PublishOptions {
                alias: Some(ALIAS),
                ..PublishOptions::default()
            },
        )
        .await?;
    assert_eq!(v2.version, "2");
    wait_for_nodes(
        &rig,
        &[
            (node("Registry/VersionSeen"), "2"),
            (state("1.1.0"), "Shadow"),
            (node("Shadow/Version"), "1.1.0"),
            (node("ActiveVersion"), "1.0.0"),
        ],
    )
    .await?;
    for file in ["manifest.toml", "model.pt"] {
        assert_eq!(
            std::fs::read(served.join("1.1.0").join(file))?,
            std::fs::read(published.join("1.1.0").join(file))?,
            "{file} differs from what was published"
        );
    }
    let hidden: Vec<_> = std::fs::read_dir(&served)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.file_name())
        .collect();
    assert!(hidden.is_empty(), "staging left behind: {hidden:?}");
    assert_eq!(
        rig.model_metric("ironbridge_registry_downloads_total")
            .await?,
        1.0
    );

    // The alias moved to the next version: it follows.
    let v3 = mlflow
        .publish(&published.join("1.2.0"), PublishOptions::default())
        .await?;
    mlflow.set_alias(MODEL, ALIAS, &v3.version).await?;
    wait_for_nodes(
        &rig,
        &[
            (node("Registry/VersionSeen"), v3.version.as_str()),
            (state("1.2.0"), "Shadow"),
            (state("1.1.0"), "Available"),
            (node("ActiveVersion"), "1.0.0"),
        ],
    )
    .await?;

    // A model file that does not match its manifest: Failed on its hash,
    // never served; the shadow and the active version stay.
    let errors_before = rig.model_metric("ironbridge_registry_errors_total").await?;
    let v4 = mlflow
        .publish(
            &published.join("1.3.0"),
            PublishOptions {
                alias: Some(ALIAS),
                unchecked: true,
                ..PublishOptions::default()
            },
        )
        .await?;
    wait_for_nodes(
        &rig,
        &[
            (node("Registry/VersionSeen"), v4.version.as_str()),
            (state("1.3.0"), "Failed"),
            (node("Shadow/Version"), "1.2.0"),
            (node("ActiveVersion"), "1.0.0"),
        ],
    )
    .await?;
    let answer = rig
        .read_opcua(&[
            node("Versions/1.3.0/FailureReason"),
            node("Registry/LastError"),
        ])
        .await?;
    let failure = answer["reads"][node("Versions/1.3.0/FailureReason")]["value"]
        .as_str()
        .unwrap_or_default();
    assert!(failure.contains("sha256"), "{answer}");
    let last_error = answer["reads"][node("Registry/LastError")]["value"]
        .as_str()
        .unwrap_or_default();
    assert!(last_error.contains("sha256"), "{answer}");
    assert!(rig.model_metric("ironbridge_registry_errors_total").await? > errors_before);

    // A registry version whose folder exists with other content: refused,
    // counted, the folder untouched.
    let before = std::fs::read(served.join("1.1.0/manifest.toml"))?;
    let errors_before = rig.model_metric("ironbridge_registry_errors_total").await?;
    let v5 = mlflow
        .publish(
            &other.join("1.1.0"),
            PublishOptions {
                alias: Some(ALIAS),
                ..PublishOptions::default()
            },
        )
        .await?;
    wait_for_nodes(&rig, &[(node("Registry/VersionSeen"), v5.version.as_str())]).await?;
    wait_for_text(&rig, &node("Registry/LastError"), "not overwritten").await?;
    assert!(rig.model_metric("ironbridge_registry_errors_total").await? > errors_before);
    assert_eq!(std::fs::read(served.join("1.1.0/manifest.toml"))?, before);

    // The registry goes away: serving goes on, the failure is reported.
    let predictions = rig.model_metric("ironbridge_predictions_total").await?;
    let errors_before = rig.model_metric("ironbridge_registry_errors_total").await?;
    mlflow.stop().await?;
    wait_for_text(&rig, &node("Registry/LastError"), &mlflow.url()).await?;
    assert!(rig.model_metric("ironbridge_registry_errors_total").await? > errors_before);
    let deadline = tokio::time::Instant::now() + WAIT;
    while rig.model_metric("ironbridge_predictions_total").await? <= predictions {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no prediction while the registry is away"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_for_nodes(
        &rig,
        &[
            (node("ActiveVersion"), "1.0.0"),
            (node("Shadow/Version"), "1.2.0"),
        ],
    )
    .await?;

    // Back again: the lookups answer again (the alias still names the
    // refused version, so that is what LastError says again).
    let syncs = rig.model_metric("ironbridge_registry_syncs_total").await?;
    mlflow.restart().await?;
    wait_for_text(&rig, &node("Registry/LastError"), "not overwritten").await?;
    assert!(rig.model_metric("ironbridge_registry_syncs_total").await? > syncs);
    rig.stop().await;
    drop(rig);

    // on_new = "activate": a gateway started on 1.0.0 makes the alias's
    // version serve.
    mlflow.set_alias(MODEL, ALIAS, &v2.version).await?;
    let fresh = dir.path().join("fresh");
    for model in [MODEL, "spindle-wear"] {
        copy_dir(
            &examples.join(model).join("1.0.0"),
            &fresh.join("examples").join(model).join("1.0.0"),
        )?;
    }
    let mut rig = GatewayRig::start_with(RigOptions {
        poll_ms: 200,
        flush_ms: 500,
        models_dir: Some(fresh.clone()),
        bearing_wear_registry: Some(format!(
            "kind = \"mlflow\", url = {:?}, name = {MODEL:?}, alias = {ALIAS:?}, \
             poll_interval_s = 1, on_new = \"activate\"",
            mlflow.url()
        )),
        ..RigOptions::default()
    })
    .await?;
    wait_for_nodes(
        &rig,
        &[
            (node("Registry/VersionSeen"), v2.version.as_str()),
            (node("ActiveVersion"), "1.1.0"),
            (state("1.1.0"), "Active"),
            (state("1.0.0"), "Available"),
            (node("Registry/LastError"), ""),
        ],
    )
    .await?;
    assert_eq!(
        rig.model_metric("ironbridge_registry_downloads_total")
            .await?,
        1.0
    );
    rig.stop().await;
    Ok(())
}
