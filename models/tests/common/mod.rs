//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use ironbridge_models::{DeviceChoice, ModelRegistry, TorchModel};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The 3 -> 2 linear fixture: y0 = x0 + 2 x1 + 3 x2 + 0.5, y1 = -x0 + 0.5 x1 - 1.
pub fn tiny_model() -> TorchModel {
    let verified = ModelRegistry::open(fixtures().join("tiny"))
        .unwrap()
        .load("1.0.0")
        .unwrap();
    TorchModel::load(&verified, DeviceChoice::Cpu).unwrap()
}

pub fn expected_tiny(row: &[f32]) -> Vec<f32> {
    vec![
        row[0] + 2.0 * row[1] + 3.0 * row[2] + 0.5,
        -row[0] + 0.5 * row[1] - 1.0,
    ]
}

/// A scratch folder removed when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "ironbridge-models-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Copies the tiny fixture to `<scratch>/<version>/`, with its manifest
    /// text passed through `edit`.
    pub fn tiny_copy(&self, version: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
        let source = fixtures().join("tiny/1.0.0");
        let target = self.0.join(version);
        std::fs::create_dir_all(&target).unwrap();
        std::fs::copy(source.join("model.pt"), target.join("model.pt")).unwrap();
        let manifest = std::fs::read_to_string(source.join("manifest.toml")).unwrap();
        std::fs::write(target.join("manifest.toml"), edit(manifest)).unwrap();
        target
    }
}

/// The tiny fixture with a manifest that promises one output more than the
/// model computes: every forward of it fails its output-shape check.
pub fn tiny_with_an_extra_output(scratch: &ScratchDir) -> TorchModel {
    scratch.tiny_copy("1.0.0", |manifest| {
        manifest.replace(
            "name = \"margin\"",
            "name = \"margin\"\n\n[[outputs]]\nname = \"extra\"",
        )
    });
    let verified = ModelRegistry::open(scratch.path())
        .unwrap()
        .load("1.0.0")
        .unwrap();
    TorchModel::load(&verified, DeviceChoice::Cpu).unwrap()
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
