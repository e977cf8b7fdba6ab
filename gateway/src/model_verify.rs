//! `ironbridge model verify DIR`: checks a model version folder the way the
//! edge will, for a CI/CD pipeline (the checks themselves are in
//! `ironbridge_models::verify`; the gateway runs the structural part before
//! every activation).
//!
//! Exit status: 0 every check passed, 1 a check failed, 2 unusable input
//! (no such folder, an unreadable or unsuitable CSV).

use std::path::{Path, PathBuf};

use ironbridge_models::verify::{self, Check, LabelledRows};
use ironbridge_models::{DeviceChoice, ModelManifest, TorchModel, VerifiedModel};
use serde_json::json;

/// Bootstrap resamples for the confidence intervals.
const BOOTSTRAP_ROUNDS: usize = 1000;
/// Two-sided confidence of the metric intervals (and one-sided 97.5 % of a
/// non-inferiority bound).
const CONFIDENCE: f64 = 0.95;
/// Timed forward passes per batch size.
const LATENCY_ITERATIONS: usize = 300;

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct VerifyRequest {
    pub dir: PathBuf,
    /// Labelled rows: a CSV with a header naming every model input and the
    /// label column.
    pub data: Option<PathBuf>,
    /// The label column (default: the model's first output's name).
    pub label: Option<String>,
    /// Another version folder of the same model to compare against.
    pub against: Option<PathBuf>,
    /// How much worse the MAE may be than `against`'s.
    pub margin: f64,
}

/// Every check with its outcome.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub dir: PathBuf,
    pub model: Option<String>,
    pub version: Option<String>,
    pub checks: Vec<Check>,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The report for a person.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} {} ({})\n",
            self.model.as_deref().unwrap_or("?"),
            self.version.as_deref().unwrap_or("?"),
            self.dir.display()
        );
        for c in &self.checks {
            out.push_str(&format!(
                "  [{}] {}: {}\n",
                if c.passed { "pass" } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        out.push_str(if self.passed() {
            "verdict: pass\n"
        } else {
            "verdict: FAIL\n"
        });
        out
    }

    /// The report for a pipeline.
    pub fn json(&self) -> String {
        json!({
            "dir": self.dir.display().to_string(),
            "model": self.model,
            "version": self.version,
            "passed": self.passed(),
            "checks": self.checks.iter().map(|c| json!({
                "name": c.name, "passed": c.passed, "detail": c.detail,
            })).collect::<Vec<_>>(),
        })
        .to_string()
    }
}

/// Runs every check. `Err` is unusable input (exit 2); a failed check is in
/// the report (exit 1).
pub fn run(request: &VerifyRequest) -> Result<VerifyReport, String> {
    if !request.dir.is_dir() {
        return Err(format!("{} is not a version folder", request.dir.display()));
    }
    let mut report = VerifyReport {
        dir: request.dir.clone(),
        model: None,
        version: None,
        checks: Vec::new(),
    };
    let Some(model) = load(&request.dir, &mut report.checks, "") else {
        return Ok(report);
    };
    let manifest = model.manifest().clone();
    report.model = Some(manifest.name.clone());
    report.version = Some(manifest.version.clone());
    report.checks.extend(verify::structural_checks(&model));
    report.checks.extend(verify::robustness_checks(&model));

    if let Some(data) = &request.data {
        let label = request
            .label
            .clone()
            .unwrap_or_else(|| manifest.outputs[0].name.clone());
        let output = manifest
            .outputs
            .iter()
            .position(|o| o.name == label)
            .unwrap_or(0);
        let rows = read_rows(data, &manifest, &label)?;
        if rows.len() < 30 {
            return Err(format!(
                "{}: {} usable rows (every input in range, a finite label); need 30 at least",
                data.display(),
                rows.len()
            ));
        }
        statistics(
            &model,
            &manifest,
            &rows,
            output,
            request,
            &mut report.checks,
        )?;
    } else if request.against.is_some() {
        return Err("--against compares on labelled rows: give --data".to_string());
    }
    latency_checks(&model, &manifest, &mut report.checks);
    Ok(report)
}

/// Verifies the folder (manifest, sha256) and loads it into libtorch,
/// recording both as checks. `None` when either fails.
fn load(dir: &Path, checks: &mut Vec<Check>, what: &str) -> Option<TorchModel> {
    let verified = match VerifiedModel::from_version_dir(dir) {
        Ok(v) => {
            checks.push(check(
                format!("{what}manifest and sha256"),
                true,
                format!("sha256 {} matches the file", v.manifest().sha256),
            ));
            v
        }
        Err(e) => {
            checks.push(check(
                format!("{what}manifest and sha256"),
                false,
                e.to_string(),
            ));
            return None;
        }
    };
    match TorchModel::load(&verified, DeviceChoice::Cpu) {
        Ok(model) => {
            checks.push(check(format!("{what}libtorch loads it"), true, "CPU"));
            Some(model)
        }
        Err(e) => {
            checks.push(check(
                format!("{what}libtorch loads it"),
                false,
                e.to_string(),
            ));
            None
        }
    }
}

fn check(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        passed,
        detail: detail.into(),
    }
}

/// The rows the gateway would feed: every input finite and in range, and a
/// finite label.
fn read_rows(path: &Path, manifest: &ModelManifest, label: &str) -> Result<LabelledRows, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| format!("{}: empty", path.display()))?
        .split(',')
        .map(str::trim)
        .collect();
    let column = |name: &str| {
        header.iter().position(|h| *h == name).ok_or_else(|| {
            format!(
                "{}: no column {name:?} (header: {})",
                path.display(),
                header.join(",")
            )
        })
    };
    let inputs: Vec<usize> = manifest
        .inputs
        .iter()
        .map(|i| column(&i.name))
        .collect::<Result<_, _>>()?;
    let label_column = column(label)?;
    let mut rows = LabelledRows::default();
    'rows: for (n, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let value = |i: usize| -> Result<f64, String> {
            fields
                .get(i)
                .ok_or_else(|| format!("{}: line {} is short", path.display(), n + 2))?
                .parse::<f64>()
                .map_err(|e| format!("{}: line {}: {e}", path.display(), n + 2))
        };
        let mut row = Vec::with_capacity(inputs.len());
        for (spec, &i) in manifest.inputs.iter().zip(&inputs) {
            let v = value(i)?;
            if !(v.is_finite() && v >= spec.min && v <= spec.max) {
                continue 'rows;
            }
            row.push(v as f32);
        }
        let y = value(label_column)?;
        if !y.is_finite() {
            continue;
        }
        rows.inputs.extend(row);
        rows.labels.push(y);
    }
    Ok(rows)
}

fn statistics(
    model: &TorchModel,
    manifest: &ModelManifest,
    rows: &LabelledRows,
    output: usize,
    request: &VerifyRequest,
    checks: &mut Vec<Check>,
) -> Result<(), String> {
    let pred = verify::predict(model, rows, output).map_err(|e| e.to_string())?;
    let (mae, r2) = verify::metrics(&pred, &rows.labels, BOOTSTRAP_ROUNDS, CONFIDENCE);
    let n = rows.len();
    for (name, estimate) in [("mae", mae), ("r2", r2)] {
        let interval = format!(
            "{name} {:.4} ({:.0} % interval {:.4}–{:.4}, {n} rows, {BOOTSTRAP_ROUNDS} bootstrap resamples)",
            estimate.value,
            CONFIDENCE * 100.0,
            estimate.low,
            estimate.high
        );
        match manifest.acceptance.get(name) {
            Some(bound) => {
                // The whole interval must meet the bound, not only the point.
                let max_ok = bound.max.is_none_or(|m| estimate.high <= m);
                let min_ok = bound.min.is_none_or(|m| estimate.low >= m);
                let limits = match (bound.min, bound.max) {
                    (Some(lo), Some(hi)) => format!("within [{lo}, {hi}]"),
                    (Some(lo), None) => format!(">= {lo}"),
                    (None, Some(hi)) => format!("<= {hi}"),
                    (None, None) => "no bound".to_string(),
                };
                checks.push(check(
                    format!("acceptance {name} {limits}"),
                    max_ok && min_ok,
                    interval,
                ));
            }
            None => checks.push(check(
                format!("{name} (no bound in the manifest)"),
                true,
                interval,
            )),
        }
    }
    for name in manifest.acceptance.keys() {
        if name != "mae" && name != "r2" {
            checks.push(check(
                format!("acceptance {name}"),
                true,
                "not recomputed (only mae and r2 are)",
            ));
        }
    }
    if let Some(other_dir) = &request.against {
        let mut load_checks = Vec::new();
        let Some(other) = load(other_dir, &mut load_checks, "against: ") else {
            checks.extend(load_checks);
            return Ok(());
        };
        let same_inputs = other.manifest().input_names() == manifest.input_names();
        if !same_inputs {
            return Err(format!(
                "{} reads other inputs ({:?}) than {} ({:?})",
                other_dir.display(),
                other.manifest().input_names(),
                request.dir.display(),
                manifest.input_names()
            ));
        }
        let other_pred = verify::predict(&other, rows, output).map_err(|e| e.to_string())?;
        // Two-sided 95 % interval: its upper end is a one-sided 97.5 % bound.
        let d = verify::mae_difference(
            &pred,
            &other_pred,
            &rows.labels,
            BOOTSTRAP_ROUNDS,
            CONFIDENCE,
        );
        checks.push(check(
            format!(
                "non-inferior to {} {} (MAE at most {} worse)",
                other.manifest().name,
                other.manifest().version,
                request.margin
            ),
            d.high <= request.margin,
            format!(
                "MAE difference {:+.4} (interval {:+.4} to {:+.4}; negative is better)",
                d.value, d.low, d.high
            ),
        ));
    }
    Ok(())
}

fn latency_checks(model: &TorchModel, manifest: &ModelManifest, checks: &mut Vec<Check>) {
    let max_batch = manifest.latency.as_ref().map_or(64, |l| l.max_batch.max(1));
    for (batch, budget) in [
        (1, manifest.latency.as_ref().map(|l| l.p99_ms_batch_1)),
        (
            max_batch,
            manifest.latency.as_ref().map(|l| l.p99_ms_max_batch),
        ),
    ] {
        let name = format!("latency at batch {batch}");
        match verify::latency(model, batch, LATENCY_ITERATIONS) {
            Ok((p50, p99)) => {
                let measured = format!("p50 {p50:.3} ms, p99 {p99:.3} ms on this machine");
                match budget {
                    Some(b) => checks.push(check(
                        format!("{name} (p99 budget {b} ms)"),
                        p99 <= b,
                        measured,
                    )),
                    None => checks.push(check(
                        format!("{name} (no budget in the manifest)"),
                        true,
                        measured,
                    )),
                }
            }
            Err(e) => checks.push(check(name, false, e.to_string())),
        }
    }
}
