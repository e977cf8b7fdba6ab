mod common;

use common::{fixtures, ScratchDir};
use ironbridge_models::{DeviceChoice, ModelError, ModelRegistry, TorchModel};

const TINY_SHA256: &str = "108853465cd3401da5814981f6d92e8b1de53aa36577052be1e5b3930a684542";

#[test]
fn the_tiny_fixture_lists_and_verifies() {
    let registry = ModelRegistry::open(fixtures().join("tiny")).unwrap();
    assert_eq!(registry.versions(), vec!["1.0.0".to_owned()]);
    let model = registry.load("1.0.0").unwrap();
    let manifest = model.manifest();
    assert_eq!(manifest.name, "tiny");
    assert_eq!(manifest.sha256, TINY_SHA256);
    assert_eq!(
        manifest.input_names(),
        ["speed_rpm", "temp_c", "vibration_mm_s"]
    );
    assert_eq!(manifest.output_names(), ["wear", "margin"]);
    assert_eq!(model.file_path(), fixtures().join("tiny/1.0.0/model.pt"));
}

#[test]
fn a_tampered_model_is_refused_before_libtorch_sees_it() {
    let registry = ModelRegistry::open(fixtures().join("tampered")).unwrap();
    // The refusal comes from the registry: there is no VerifiedModel, so
    // TorchModel::load cannot even be called.
    let err = registry.load("1.0.0").unwrap_err();
    let message = err.to_string();
    match err {
        ModelError::HashMismatch {
            path,
            expected,
            actual,
        } => {
            assert_eq!(path, fixtures().join("tampered/1.0.0/model.pt"));
            assert_eq!(expected, TINY_SHA256);
            assert_ne!(actual, expected);
            assert!(message.contains(&expected), "{message}");
            assert!(message.contains(&actual), "{message}");
            assert!(message.contains("refusing to load"), "{message}");
            assert!(message.contains("model.pt"), "{message}");
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }
}

#[test]
fn an_unknown_version_names_the_available_ones() {
    let registry = ModelRegistry::open(fixtures().join("tiny")).unwrap();
    let err = registry.load("2.0.0").unwrap_err();
    assert!(matches!(err, ModelError::VersionNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("available: 1.0.0"), "{err}");
}

#[test]
fn versions_sort_numerically_and_skip_hidden_folders() {
    let scratch = ScratchDir::new("sort");
    for version in ["1.10.0", "1.9.0", ".staging", "0.1.0"] {
        std::fs::create_dir(scratch.path().join(version)).unwrap();
    }
    std::fs::write(scratch.path().join("README"), "not a version").unwrap();
    let registry = ModelRegistry::open(scratch.path()).unwrap();
    assert_eq!(registry.versions(), ["0.1.0", "1.9.0", "1.10.0"]);
}

#[test]
fn the_folder_name_must_equal_the_manifest_version() {
    let scratch = ScratchDir::new("mismatch");
    scratch.tiny_copy("1.0.1", |manifest| manifest);
    let registry = ModelRegistry::open(scratch.path()).unwrap();
    let err = registry.load("1.0.1").unwrap_err();
    match &err {
        ModelError::VersionMismatch {
            manifest_version,
            folder_version,
            ..
        } => {
            assert_eq!(manifest_version, "1.0.0");
            assert_eq!(folder_version, "1.0.1");
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
}

#[test]
fn an_invalid_manifest_lists_every_problem_with_the_file() {
    let scratch = ScratchDir::new("invalid");
    scratch.tiny_copy("1.0.0", |manifest| {
        manifest
            .replace("file = \"model.pt\"", "file = \"../tiny/1.0.0/model.pt\"")
            .replace("max = 4000.0", "max = -1.0")
    });
    let err = ModelRegistry::open(scratch.path())
        .unwrap()
        .load("1.0.0")
        .unwrap_err();
    match &err {
        ModelError::ManifestInvalid { path, problems } => {
            assert_eq!(path, &scratch.path().join("1.0.0/manifest.toml"));
            assert_eq!(problems.len(), 2, "{problems:#?}");
        }
        other => panic!("expected ManifestInvalid, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("file:"), "{message}");
    assert!(
        message.contains("min (0) is greater than max (-1)"),
        "{message}"
    );
}

#[test]
fn a_missing_model_file_is_an_io_error_naming_it() {
    let scratch = ScratchDir::new("nofile");
    let dir = scratch.tiny_copy("1.0.0", |manifest| manifest);
    std::fs::remove_file(dir.join("model.pt")).unwrap();
    let err = ModelRegistry::open(scratch.path())
        .unwrap()
        .load("1.0.0")
        .unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("model.pt"), "{err}");
}

#[test]
fn a_verified_copy_loads_into_libtorch() {
    let scratch = ScratchDir::new("copy");
    scratch.tiny_copy("1.0.0", |manifest| manifest);
    let verified = ModelRegistry::open(scratch.path())
        .unwrap()
        .load("1.0.0")
        .unwrap();
    let model = TorchModel::load(&verified, DeviceChoice::Cpu).unwrap();
    assert_eq!(model.version().sha256, TINY_SHA256);
    assert_eq!(model.version().version, "1.0.0");
}
