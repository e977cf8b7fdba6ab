//! The example models in `models/examples/`, as the gateway would load
//! them: through the registry (sha256 of the exact bytes checked against
//! the manifest) into libtorch. Each is run on the holdout bearing lifetime
//! of its committed training recording, and must reproduce the acceptance
//! metrics its manifest records — what `models/training/check_model.py`
//! checks from Python, here through `tch`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ironbridge_models::{DeviceChoice, ModelManifest, ModelRegistry, TorchModel};
use sha2::{Digest, Sha256};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the models crate sits in the workspace")
        .to_path_buf()
}

fn load(name: &str, version: &str) -> TorchModel {
    let registry = ModelRegistry::open(repo_root().join("models/examples").join(name)).unwrap();
    assert!(registry.versions().contains(&version.to_string()));
    let verified = registry.load(version).unwrap();
    TorchModel::load(&verified, DeviceChoice::Cpu).unwrap()
}

/// The training recording named by the manifest, verified against its
/// sha256, as columns by header name.
fn recording(manifest: &ModelManifest) -> HashMap<String, Vec<f64>> {
    let path = repo_root().join(&manifest.provenance.training_data);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        manifest.provenance.training_data_sha256,
        "{} differs from the data the model was trained on",
        path.display()
    );
    let text = String::from_utf8(bytes).unwrap();
    let mut lines = text.lines();
    let names: Vec<&str> = lines.next().expect("header").split(',').collect();
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for line in lines {
        for (column, field) in columns.iter_mut().zip(line.split(',')) {
            column.push(field.parse().expect("numeric field"));
        }
    }
    names.into_iter().map(str::to_string).zip(columns).collect()
}

struct Holdout {
    rows: Vec<f32>,
    truth: Vec<f64>,
}

/// The rows of the last bearing lifetime that ran to failure (a lifetime
/// ends where the label drops) which the gateway would feed the model: the
/// machine running and every input within its manifest range. The same
/// selection as `split()` in models/training/train_bearing_model.py.
fn holdout(manifest: &ModelManifest, data: &HashMap<String, Vec<f64>>) -> Holdout {
    let label = &data[&manifest.outputs[0].name];
    let mut life = vec![0usize; label.len()];
    for i in 1..label.len() {
        life[i] = life[i - 1] + usize::from(label[i] < label[i - 1]);
    }
    let last_failed = (0..label.len())
        .filter(|&i| label[i] >= 1.0)
        .map(|i| life[i])
        .max()
        .expect("a failed bearing in the recording");
    let mut held = Holdout {
        rows: Vec::new(),
        truth: Vec::new(),
    };
    for i in (0..label.len()).filter(|&i| life[i] == last_failed && data["running"][i] == 1.0) {
        let row: Vec<f64> = manifest.inputs.iter().map(|s| data[&s.name][i]).collect();
        if row
            .iter()
            .zip(&manifest.inputs)
            .all(|(v, s)| (s.min..=s.max).contains(v))
        {
            held.rows.extend(row.iter().map(|&v| v as f32));
            held.truth.push(label[i]);
        }
    }
    held
}

fn mae_and_r2(pred: &[f64], truth: &[f64]) -> (f64, f64) {
    let n = truth.len() as f64;
    let mean = truth.iter().sum::<f64>() / n;
    let mae = pred
        .iter()
        .zip(truth)
        .map(|(p, t)| (p - t).abs())
        .sum::<f64>()
        / n;
    let ss_res: f64 = pred.iter().zip(truth).map(|(p, t)| (p - t).powi(2)).sum();
    let ss_tot: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
    (mae, 1.0 - ss_res / ss_tot)
}

/// Runs the example on its holdout and compares with the manifest.
fn reproduces_its_acceptance_metrics(name: &str, inputs: &[&str], output: &str) {
    let model = load(name, "1.0.0");
    let manifest = model.manifest().clone();
    assert_eq!(manifest.name, name);
    assert_eq!(manifest.input_names(), inputs);
    assert_eq!(manifest.output_names(), [output]);

    let data = recording(&manifest);
    let held = holdout(&manifest, &data);
    assert!(held.truth.len() > 1000, "{} holdout rows", held.truth.len());
    let pred: Vec<f64> = model
        .forward(&held.rows, held.truth.len())
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    assert!(pred.iter().all(|p| (0.0..=1.0).contains(p)));
    let (mae, r2) = mae_and_r2(&pred, &held.truth);

    // The manifest rounds to 6 decimals; libtorch here and in Python may
    // differ in the last float32 bits.
    for (metric, measured) in [("mae", mae), ("r2", r2)] {
        let recorded = &manifest.acceptance[metric];
        assert!(
            (recorded.value - measured).abs() < 1e-5,
            "{name} {metric}: libtorch gives {measured}, the manifest says {}",
            recorded.value
        );
        assert!(recorded.min.is_none_or(|min| measured >= min));
        assert!(recorded.max.is_none_or(|max| measured <= max));
    }
}

#[test]
fn the_pump_example_reproduces_its_acceptance_metrics() {
    reproduces_its_acceptance_metrics(
        "bearing-wear",
        &[
            "speed_rpm",
            "motor_current_a",
            "bearing_temp_c",
            "vibration_mm_s",
            "discharge_pressure_bar",
        ],
        "bearing_wear",
    );
}

#[test]
fn the_spindle_example_reproduces_its_acceptance_metrics() {
    reproduces_its_acceptance_metrics(
        "spindle-wear",
        &[
            "speed_rpm",
            "load_pct",
            "motor_current_a",
            "bearing_temp_c",
            "vibration_mm_s",
        ],
        "bearing_degradation",
    );
}

#[test]
fn the_spindle_example_tells_new_bearings_from_worn_ones() {
    let model = load("spindle-wear", "1.0.0");
    // The same cut (12 000 rpm, 50 % cutting load, 22 °C ambient) on new
    // and on nearly failed bearings, computed with simulator/src/spindle.rs's
    // physics: bearing drag adds load and current, friction adds heat, the
    // defect adds vibration.
    let rows: [f32; 10] = [
        12_000.0, 53.5, 20.98, 37.7, 1.09, // degradation 0.05
        12_000.0, 62.0, 23.36, 56.5, 4.88, // degradation 0.9
    ];
    let out = model.forward(&rows, 2).unwrap();
    assert!(out[0] < 0.25, "new bearings read {}", out[0]);
    assert!(out[1] > 0.7, "worn bearings read {}", out[1]);
}
