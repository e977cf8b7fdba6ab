//! Model versions at run time, on real libtorch: activation without a gap,
//! every answer tagged with the version that computed it, rollback, a
//! tampered version refused while the active one serves, folders found and
//! retired while running.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{expected_tiny, fixtures, ScratchDir};
use ironbridge_models::{
    InferenceOptions, LifecycleOptions, ModelError, ModelEventKind, ModelLifecycle, VersionState,
};

/// 1.1.0 of the fixture: every weight and bias of 1.0.0 doubled.
fn expected_next(row: &[f32]) -> Vec<f32> {
    expected_tiny(row).into_iter().map(|v| 2.0 * v).collect()
}

fn options() -> LifecycleOptions {
    LifecycleOptions {
        device: Default::default(),
        inference: InferenceOptions {
            max_batch: 16,
            max_wait: Duration::from_millis(1),
            queue_capacity: 4096,
            ..InferenceOptions::default()
        },
        metrics: Default::default(),
        remote: None,
    }
}

/// A model folder with 1.0.0 and 1.1.0 (other weights, same interface).
fn two_versions(label: &str) -> ScratchDir {
    let scratch = ScratchDir::new(label);
    scratch.tiny_copy("1.0.0", |m| m);
    copy_dir(
        &fixtures().join("tiny-next/1.1.0"),
        &scratch.path().join("1.1.0"),
    );
    scratch
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn state_of(lifecycle: &ModelLifecycle, version: &str) -> VersionState {
    lifecycle
        .versions()
        .into_iter()
        .find(|v| v.version == version)
        .unwrap_or_else(|| panic!("no version {version}"))
        .state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_under_load_misses_no_request_and_each_answer_names_its_version() {
    let scratch = two_versions("swap");
    let lifecycle = std::sync::Arc::new(
        ModelLifecycle::start("tiny", scratch.path(), "1.0.0", options()).unwrap(),
    );
    let mut events = lifecycle.events();

    // A steady stream of requests, as the fan-out makes them; the swap
    // happens in the middle of it.
    let swapper = {
        let lifecycle = lifecycle.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tokio::task::spawn_blocking(move || lifecycle.activate("1.1.0", "tester"))
                .await
                .unwrap()
        })
    };
    let mut pending = Vec::new();
    let mut k = 0u32;
    while !swapper.is_finished() || k < 2000 {
        let row = vec![k as f32 % 4000.0, 20.0 + (k % 50) as f32, (k % 30) as f32];
        let serving = lifecycle.serving();
        let p = serving
            .handle
            .submit(row.clone())
            .expect("every request is accepted across the swap");
        pending.push((row, p));
        k += 1;
        if k.is_multiple_of(20) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let event = swapper.await.unwrap().expect("1.1.0 activates");
    assert_eq!(event.event, ModelEventKind::Activated);
    assert_eq!(event.previous.as_deref(), Some("1.0.0"));
    assert_eq!(event.user, "tester");

    let mut seen = Vec::new();
    for (row, p) in pending {
        let version = p.version().version.clone();
        let out = p.await.expect("every request is answered");
        let want = match version.as_str() {
            "1.0.0" => expected_tiny(&row),
            "1.1.0" => expected_next(&row),
            other => panic!("answer from {other}"),
        };
        for (got, want) in out.iter().zip(&want) {
            assert!(
                (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                "{version}: {row:?} gave {out:?}, that version computes {want:?}"
            );
        }
        if seen.last() != Some(&version) {
            seen.push(version);
        }
    }
    // Old version until the swap, the new one after it, never back.
    assert_eq!(seen, ["1.0.0", "1.1.0"]);
    assert_eq!(state_of(&lifecycle, "1.1.0"), VersionState::Active);
    assert_eq!(state_of(&lifecycle, "1.0.0"), VersionState::Available);
    let audited = events.recv().await.unwrap();
    assert_eq!(audited, event);
}

#[test]
fn rollback_returns_to_the_previous_version_at_once() {
    let scratch = two_versions("rollback");
    let lifecycle = ModelLifecycle::start("tiny", scratch.path(), "1.0.0", options()).unwrap();
    assert!(matches!(
        lifecycle.rollback("op"),
        Err(ModelError::NoPreviousVersion { .. })
    ));
    lifecycle.activate("1.1.0", "op").unwrap();
    let event = lifecycle.rollback("op").unwrap();
    assert_eq!(event.event, ModelEventKind::RolledBack);
    assert_eq!(event.version, "1.0.0");
    assert_eq!(event.previous.as_deref(), Some("1.1.0"));
    let row = [100.0, 30.0, 4.0];
    let serving = lifecycle.serving();
    assert_eq!(&*serving.version, "1.0.0");
    let out = serving.handle.submit(row.to_vec()).unwrap().blocking_wait();
    assert_eq!(out.unwrap(), expected_tiny(&row));
    assert_eq!(state_of(&lifecycle, "1.0.0"), VersionState::Active);
    assert_eq!(state_of(&lifecycle, "1.1.0"), VersionState::Available);
    // The rolled-back-from version stays loaded: rolling back again returns to it.
    assert_eq!(lifecycle.rollback("op").unwrap().version, "1.1.0");
    assert_eq!(&*lifecycle.serving().version, "1.1.0");
}

#[test]
fn a_tampered_version_is_failed_before_libtorch_and_the_active_one_keeps_serving() {
    let scratch = two_versions("tampered");
    let tampered = scratch.path().join("1.2.0");
    copy_dir(&fixtures().join("tiny-next/1.1.0"), &tampered);
    let manifest = std::fs::read_to_string(tampered.join("manifest.toml")).unwrap();
    std::fs::write(
        tampered.join("manifest.toml"),
        manifest.replace("version = \"1.1.0\"", "version = \"1.2.0\""),
    )
    .unwrap();
    let mut bytes = std::fs::read(tampered.join("model.pt")).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(tampered.join("model.pt"), bytes).unwrap();

    let lifecycle = ModelLifecycle::start("tiny", scratch.path(), "1.0.0", options()).unwrap();
    let mut events = lifecycle.events();
    match lifecycle.activate("1.2.0", "op") {
        Err(ModelError::ActivationFailed {
            version, reason, ..
        }) => {
            assert_eq!(version, "1.2.0");
            assert!(reason.contains("sha256"), "{reason}");
        }
        other => panic!("expected a failed activation, got {other:?}"),
    }
    let info = lifecycle
        .versions()
        .into_iter()
        .find(|v| v.version == "1.2.0")
        .unwrap();
    assert_eq!(info.state, VersionState::Failed);
    assert!(info.failure_reason.unwrap().contains("sha256"));
    let event = events.try_recv().unwrap();
    assert_eq!(event.event, ModelEventKind::Failed);
    assert_eq!(event.version, "1.2.0");

    let row = [1.0, 2.0, 3.0];
    let serving = lifecycle.serving();
    assert_eq!(&*serving.version, "1.0.0");
    assert_eq!(
        serving
            .handle
            .submit(row.to_vec())
            .unwrap()
            .blocking_wait()
            .unwrap(),
        expected_tiny(&row)
    );
    assert_eq!(state_of(&lifecycle, "1.0.0"), VersionState::Active);
}

#[test]
fn a_version_with_other_inputs_or_an_unknown_one_is_refused() {
    let scratch = two_versions("interface");
    scratch.tiny_copy("2.0.0", |m| {
        m.replace("version = \"1.0.0\"", "version = \"2.0.0\"")
            .replace("name = \"temp_c\"", "name = \"oil_temp_c\"")
    });
    let lifecycle = ModelLifecycle::start("tiny", scratch.path(), "1.0.0", options()).unwrap();
    match lifecycle.activate("2.0.0", "op") {
        Err(ModelError::ActivationFailed { reason, .. }) => {
            assert!(reason.contains("inputs"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        lifecycle.activate("9.9.9", "op"),
        Err(ModelError::VersionNotFound { .. })
    ));
    assert!(matches!(
        lifecycle.activate("1.0.0", "op"),
        Err(ModelError::AlreadyActive { .. })
    ));
    assert_eq!(&*lifecycle.serving().version, "1.0.0");
}

#[test]
fn folders_that_appear_are_found_and_those_that_go_are_retired() {
    let scratch = ScratchDir::new("rescan");
    scratch.tiny_copy("1.0.0", |m| m);
    let lifecycle = ModelLifecycle::start("tiny", scratch.path(), "1.0.0", options()).unwrap();
    assert_eq!(lifecycle.versions().len(), 1);
    assert!(lifecycle.rescan().unwrap().is_empty(), "nothing new");

    copy_dir(
        &fixtures().join("tiny-next/1.1.0"),
        &scratch.path().join("1.1.0"),
    );
    std::fs::create_dir_all(scratch.path().join("1.3.0")).unwrap();
    std::fs::write(scratch.path().join("1.3.0/manifest.toml"), "name = ").unwrap();
    let events = lifecycle.rescan().unwrap();
    let kinds: Vec<_> = events
        .iter()
        .map(|e| (e.version.as_str(), e.event))
        .collect();
    assert_eq!(
        kinds,
        [
            ("1.1.0", ModelEventKind::Discovered),
            ("1.3.0", ModelEventKind::Failed)
        ]
    );
    let next = lifecycle
        .versions()
        .into_iter()
        .find(|v| v.version == "1.1.0")
        .unwrap();
    assert_eq!(next.state, VersionState::Available);
    assert_eq!(
        next.sha256.as_deref().map(str::len),
        Some(64),
        "metadata read from the manifest"
    );
    assert_eq!(state_of(&lifecycle, "1.3.0"), VersionState::Failed);

    std::fs::remove_dir_all(scratch.path().join("1.1.0")).unwrap();
    let events = lifecycle.rescan().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, ModelEventKind::Retired);
    assert_eq!(state_of(&lifecycle, "1.1.0"), VersionState::Retired);
    // The serving version keeps serving without its folder.
    std::fs::remove_dir_all(scratch.path().join("1.0.0")).unwrap();
    assert!(lifecycle.rescan().unwrap().is_empty());
    assert_eq!(state_of(&lifecycle, "1.0.0"), VersionState::Active);
}

#[test]
fn a_shadow_runs_beside_the_active_version_and_is_promoted_without_a_reload() {
    let scratch = two_versions("shadow");
    let options = options();
    let metrics = options.metrics.clone();
    let lifecycle = ModelLifecycle::start("tiny", scratch.path(), "1.0.0", options).unwrap();
    assert!(lifecycle.shadow().is_none());
    assert!(matches!(
        lifecycle.stop_shadow("op"),
        Err(ModelError::NoShadow { .. })
    ));
    assert!(matches!(
        lifecycle.start_shadow("1.0.0", "op"),
        Err(ModelError::AlreadyActive { .. })
    ));
    let event = lifecycle.start_shadow("1.1.0", "op").unwrap();
    assert_eq!(event.event, ModelEventKind::ShadowStarted);
    assert_eq!(state_of(&lifecycle, "1.1.0"), VersionState::Shadow);

    // Both answer the same row, each with its own weights.
    let row = [10.0, 20.0, 3.0];
    let shadow = lifecycle.shadow().expect("a shadow runs");
    assert_eq!(&*shadow.version, "1.1.0");
    let shadow_out = shadow
        .handle
        .submit(row.to_vec())
        .unwrap()
        .blocking_wait()
        .unwrap();
    assert_eq!(shadow_out, expected_next(&row));
    let active_out = lifecycle
        .serving()
        .handle
        .submit(row.to_vec())
        .unwrap()
        .blocking_wait()
        .unwrap();
    assert_eq!(active_out, expected_tiny(&row));
    // Each version counts its own rows under its own labels (what
    // /metrics shows as ironbridge_inferences_total{model,version}).
    let inferences: Vec<(String, u64)> = metrics
        .snapshot()
        .into_iter()
        .filter(|f| f.name == "ironbridge_inferences")
        .flat_map(|f| f.series)
        .map(|s| {
            let version = s.labels.iter().find(|(k, _)| *k == "version");
            let n = match s.value {
                ironbridge_metrics::Value::Counter(n) => n,
                _ => u64::MAX,
            };
            (version.map_or(String::new(), |(_, v)| v.clone()), n)
        })
        .collect();
    // Loading runs warm-up rows through each version: at least our one.
    assert_eq!(
        inferences
            .iter()
            .map(|(v, _)| v.as_str())
            .collect::<Vec<_>>(),
        ["1.0.0", "1.1.0"]
    );
    for (version, n) in &inferences {
        let stats = if version == "1.0.0" {
            lifecycle.serving().handle.stats().snapshot()
        } else {
            shadow.handle.stats().snapshot()
        };
        assert_eq!(*n, stats.inferences, "{version}");
        assert!(*n >= 1, "{version}");
    }

    // Promotion swaps the running shadow in: the very same service.
    lifecycle.activate("1.1.0", "gate").unwrap();
    let serving = lifecycle.serving_full();
    assert!(
        std::sync::Arc::ptr_eq(&serving, &shadow),
        "promoted, not reloaded"
    );
    assert!(lifecycle.shadow().is_none());
    assert_eq!(state_of(&lifecycle, "1.1.0"), VersionState::Active);
    assert_eq!(state_of(&lifecycle, "1.0.0"), VersionState::Available);

    // A shadow can be stopped.
    lifecycle.start_shadow("1.0.0", "op").unwrap();
    let event = lifecycle.stop_shadow("op").unwrap();
    assert_eq!(event.event, ModelEventKind::ShadowStopped);
    assert_eq!(event.version, "1.0.0");
    assert_eq!(state_of(&lifecycle, "1.0.0"), VersionState::Available);
    assert!(lifecycle.shadow().is_none());
}
