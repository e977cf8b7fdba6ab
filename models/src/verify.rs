//! Checking a model version the way the edge will, before it ships
//! (`ironbridge model verify`) and before the gateway activates it (the
//! structural part): docs/model-lifecycle.md, "Verify".
//!
//! - structure: outputs have the manifest's shape at batch 1 and at a
//!   larger batch; every valid input combination tried (each input at its
//!   minimum, middle and maximum, the others in the middle; all at minimum;
//!   all at maximum) gives finite outputs;
//! - robustness: inputs just beyond each range edge, NaN and ±Inf do not
//!   make libtorch fail (the gateway never feeds them, but a model that
//!   crashes on them is fragile); non-finite outputs there are reported;
//! - statistics on labelled rows: MAE and R² with bootstrap confidence
//!   intervals, checked against the manifest's acceptance bounds (the
//!   interval, not the point estimate, must meet them); against another
//!   version, paired non-inferiority of the MAE;
//! - latency: p50/p99 of a forward at batch 1 and at `max_batch`, against
//!   the manifest's `[latency]` budget where it has one.

use std::time::Instant;

use crate::error::ModelError;
use crate::manifest::ModelManifest;
use crate::torch_backend::TorchModel;

/// One check and its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Check {
    fn new(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            passed,
            detail: detail.into(),
        }
    }
}

fn mid(manifest: &ModelManifest) -> Vec<f32> {
    manifest
        .inputs
        .iter()
        .map(|i| ((i.min + i.max) / 2.0) as f32)
        .collect()
}

/// Shape and finite outputs on valid inputs. The gateway runs these before
/// it activates a version.
pub fn structural_checks(model: &TorchModel) -> Vec<Check> {
    let manifest = model.manifest();
    let n_out = manifest.outputs.len();
    let centre = mid(manifest);
    let mut checks = Vec::new();

    let batch = 8usize;
    let rows: Vec<f32> = centre
        .iter()
        .copied()
        .cycle()
        .take(batch * centre.len())
        .collect();
    for (n, rows) in [(1usize, &centre), (batch, &rows)] {
        let check = match model.forward(rows, n) {
            Ok(out) if out.len() == n * n_out => Check::new(
                format!("output shape at batch {n}"),
                true,
                format!("{n} x {n_out}"),
            ),
            Ok(out) => Check::new(
                format!("output shape at batch {n}"),
                false,
                format!("{} values, expected {n} x {n_out}", out.len()),
            ),
            Err(e) => Check::new(format!("output shape at batch {n}"), false, e.to_string()),
        };
        checks.push(check);
    }

    let mut grid: Vec<Vec<f32>> = Vec::new();
    for (j, input) in manifest.inputs.iter().enumerate() {
        for v in [input.min, input.max] {
            let mut row = centre.clone();
            row[j] = v as f32;
            grid.push(row);
        }
    }
    grid.push(manifest.inputs.iter().map(|i| i.min as f32).collect());
    grid.push(manifest.inputs.iter().map(|i| i.max as f32).collect());
    grid.push(centre.clone());
    let flat: Vec<f32> = grid.iter().flatten().copied().collect();
    checks.push(match model.forward(&flat, grid.len()) {
        Ok(out) => {
            let bad = out.iter().filter(|v| !v.is_finite()).count();
            Check::new(
                "finite outputs on valid inputs",
                bad == 0,
                format!(
                    "{} rows at range edges and middle, {bad} non-finite outputs",
                    grid.len()
                ),
            )
        }
        Err(e) => Check::new("finite outputs on valid inputs", false, e.to_string()),
    });
    checks
}

/// Inputs the gateway never feeds (just beyond a range edge, NaN, ±Inf):
/// the forward must not fail. Non-finite outputs are reported, not failed.
pub fn robustness_checks(model: &TorchModel) -> Vec<Check> {
    let manifest = model.manifest();
    let centre = mid(manifest);
    let mut rows: Vec<Vec<f32>> = Vec::new();
    for (j, input) in manifest.inputs.iter().enumerate() {
        let span = (input.max - input.min).abs().max(1e-6);
        for v in [
            input.min - 0.01 * span,
            input.max + 0.01 * span,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let mut row = centre.clone();
            row[j] = v as f32;
            rows.push(row);
        }
    }
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    vec![match model.forward(&flat, rows.len()) {
        Ok(out) => {
            let bad = out.iter().filter(|v| !v.is_finite()).count();
            Check::new(
                "no failure on out-of-range, NaN and Inf inputs",
                true,
                format!(
                    "{} rows; {bad} non-finite outputs (the gateway never feeds such rows)",
                    rows.len()
                ),
            )
        }
        Err(e) => Check::new(
            "no failure on out-of-range, NaN and Inf inputs",
            false,
            e.to_string(),
        ),
    }]
}

/// A point estimate with a two-sided bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// Labelled rows: inputs (row-major) and the truth of one output.
#[derive(Debug, Clone, Default)]
pub struct LabelledRows {
    pub inputs: Vec<f32>,
    pub labels: Vec<f64>,
}

impl LabelledRows {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Predictions of `output` for every row, in batches.
pub fn predict(
    model: &TorchModel,
    rows: &LabelledRows,
    output: usize,
) -> Result<Vec<f64>, ModelError> {
    let n_in = model.manifest().inputs.len();
    let n_out = model.manifest().outputs.len();
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.inputs.chunks(1024 * n_in) {
        let n = chunk.len() / n_in;
        let values = model.forward(chunk, n)?;
        out.extend(values.chunks(n_out).map(|r| f64::from(r[output])));
    }
    Ok(out)
}

/// A small deterministic generator (xorshift64*) for bootstrap resampling:
/// the same data gives the same report.
struct Resampler(u64);

impl Resampler {
    fn index(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

fn mae(pred: &[f64], truth: &[f64], idx: &[usize]) -> f64 {
    idx.iter().map(|&i| (pred[i] - truth[i]).abs()).sum::<f64>() / idx.len() as f64
}

fn r2(pred: &[f64], truth: &[f64], idx: &[usize]) -> f64 {
    let mean = idx.iter().map(|&i| truth[i]).sum::<f64>() / idx.len() as f64;
    let ss_res: f64 = idx.iter().map(|&i| (pred[i] - truth[i]).powi(2)).sum();
    let ss_tot: f64 = idx.iter().map(|&i| (truth[i] - mean).powi(2)).sum();
    1.0 - ss_res / ss_tot
}

/// Bootstrap estimates of `statistic` with `rounds` resamples; the
/// interval holds `confidence` of them (percentile method).
fn bootstrap(
    n: usize,
    rounds: usize,
    confidence: f64,
    statistic: impl Fn(&[usize]) -> f64,
) -> Estimate {
    let all: Vec<usize> = (0..n).collect();
    let value = statistic(&all);
    let mut rng = Resampler(0x9E37_79B9_7F4A_7C15);
    let mut idx = vec![0usize; n];
    let mut values: Vec<f64> = (0..rounds)
        .map(|_| {
            for slot in idx.iter_mut() {
                *slot = rng.index(n);
            }
            statistic(&idx)
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    let at = |q: f64| values[((q * (rounds - 1) as f64).round() as usize).min(rounds - 1)];
    Estimate {
        value,
        low: at(tail),
        high: at(1.0 - tail),
    }
}

/// MAE and R² with bootstrap intervals.
pub fn metrics(
    pred: &[f64],
    truth: &[f64],
    rounds: usize,
    confidence: f64,
) -> (Estimate, Estimate) {
    (
        bootstrap(truth.len(), rounds, confidence, |i| mae(pred, truth, i)),
        bootstrap(truth.len(), rounds, confidence, |i| r2(pred, truth, i)),
    )
}

/// Paired bootstrap of MAE(candidate) − MAE(other) on the same rows.
pub fn mae_difference(
    candidate: &[f64],
    other: &[f64],
    truth: &[f64],
    rounds: usize,
    confidence: f64,
) -> Estimate {
    bootstrap(truth.len(), rounds, confidence, |i| {
        mae(candidate, truth, i) - mae(other, truth, i)
    })
}

/// p50 and p99 of a forward pass of `batch` rows, in milliseconds.
pub fn latency(
    model: &TorchModel,
    batch: usize,
    iterations: usize,
) -> Result<(f64, f64), ModelError> {
    let centre = mid(model.manifest());
    let rows: Vec<f32> = centre
        .iter()
        .copied()
        .cycle()
        .take(batch * centre.len())
        .collect();
    for _ in 0..iterations.min(50) {
        model.forward(&rows, batch)?;
    }
    let mut times: Vec<f64> = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        model.forward(&rows, batch)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((q * (times.len() - 1) as f64).round() as usize).min(times.len() - 1)];
    Ok((at(0.5), at(0.99)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_intervals_hold_the_estimate_and_narrow_with_more_rows() {
        let truth: Vec<f64> = (0..400).map(|i| (i % 17) as f64 / 17.0).collect();
        let pred: Vec<f64> = truth
            .iter()
            .enumerate()
            .map(|(i, t)| t + ((i * 7919) % 100) as f64 / 1000.0 - 0.05)
            .collect();
        let (mae_all, r2_all) = metrics(&pred, &truth, 500, 0.95);
        assert!(mae_all.low <= mae_all.value && mae_all.value <= mae_all.high);
        assert!(r2_all.low <= r2_all.value && r2_all.value <= r2_all.high);
        let (mae_few, _) = metrics(&pred[..40], &truth[..40], 500, 0.95);
        assert!(mae_few.high - mae_few.low > mae_all.high - mae_all.low);
        // The same data, the same report.
        assert_eq!(metrics(&pred, &truth, 500, 0.95).0, mae_all);
    }

    #[test]
    fn a_worse_candidate_shows_a_positive_mae_difference() {
        let truth: Vec<f64> = (0..300).map(|i| (i % 11) as f64 / 11.0).collect();
        let good: Vec<f64> = truth.iter().map(|t| t + 0.01).collect();
        let worse: Vec<f64> = truth.iter().map(|t| t + 0.05).collect();
        let d = mae_difference(&worse, &good, &truth, 300, 0.95);
        assert!((d.value - 0.04).abs() < 1e-9, "{d:?}");
        assert!(d.low > 0.0);
    }
}
