//! Drift of a model's inputs and outputs from its training distribution,
//! per machine, over a sliding window of the rows it was given (the PSI
//! math and the reference bins are in the models crate, `drift`).
//!
//! Rows are sampled evenly over the configured time span (`window_s`, one
//! row every `window_s / samples` seconds of acquisition time), so the
//! window shows the machine's usual range of operation rather than its
//! last minutes. Once half of the span is covered, every [`DRIFT_PERIOD`]
//! each machine gets a PSI per column with a reference in the serving
//! version's manifest: written as
//! `drift` points, the largest across machines shown at
//! `Models/<model>/Drift/<name>`. Above the threshold the machine's
//! predictions are published Uncertain and the model's State shows
//! `Drifting`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ironbridge_connectors::{DriftRecord, Record};
use ironbridge_models::{ModelLifecycle, ModelManifest, ReferenceBins, SlidingWindow};

use crate::config::DriftConfig;

/// How often drift is computed per machine.
pub(crate) const DRIFT_PERIOD: Duration = Duration::from_secs(5);

/// The reference bins of one version, by column (`None`: no quantiles).
struct References {
    inputs: Vec<(String, Option<ReferenceBins>)>,
    outputs: Vec<(String, Option<ReferenceBins>)>,
}

impl References {
    fn of(manifest: &ModelManifest) -> Self {
        let bins = |q: &Option<Vec<f64>>| q.as_deref().and_then(ReferenceBins::from_quantiles);
        Self {
            inputs: manifest
                .inputs
                .iter()
                .map(|i| (i.name.clone(), bins(&i.quantiles)))
                .collect(),
            outputs: manifest
                .outputs
                .iter()
                .map(|o| (o.name.clone(), bins(&o.quantiles)))
                .collect(),
        }
    }
}

struct MachineDrift {
    version: Arc<str>,
    references: Arc<References>,
    inputs: Vec<SlidingWindow>,
    outputs: Vec<SlidingWindow>,
    evaluated_at: Instant,
    drifting: bool,
    /// The latest PSI per column name.
    psi: Vec<(String, f64)>,
    /// Acquisition time of the first and the last sampled row.
    first_sample: SystemTime,
    last_sample: Option<SystemTime>,
}

/// The drift of one model on each of its machines.
pub(crate) struct DriftMonitor {
    model: Arc<str>,
    config: DriftConfig,
    lifecycle: Arc<ModelLifecycle>,
    machines: HashMap<Arc<str>, MachineDrift>,
    /// Whether any machine drifts (the model's State shows it).
    flag: Arc<AtomicBool>,
}

/// What one evaluation produced.
pub(crate) struct DriftUpdate {
    pub(crate) records: Vec<Record>,
    /// The largest PSI per column across machines.
    pub(crate) worst: Vec<(String, f64)>,
}

impl DriftMonitor {
    pub(crate) fn new(
        model: Arc<str>,
        config: DriftConfig,
        lifecycle: Arc<ModelLifecycle>,
        flag: Arc<AtomicBool>,
    ) -> Self {
        Self {
            model,
            config,
            lifecycle,
            machines: HashMap::new(),
            flag,
        }
    }

    /// Whether `machine`'s latest evaluation was above the threshold.
    pub(crate) fn is_drifting(&self, machine: &str) -> bool {
        self.machines.get(machine).is_some_and(|m| m.drifting)
    }

    /// One answered row. Returns an update when an evaluation ran.
    pub(crate) fn observe(
        &mut self,
        machine: &Arc<str>,
        version: &Arc<str>,
        acquired_at: SystemTime,
        inputs: &[f32],
        outputs: &[f32],
    ) -> Option<DriftUpdate> {
        let window = self.config.samples;
        let span = Duration::from_secs(self.config.window_s);
        let sample_every = span / u32::try_from(window.max(1)).unwrap_or(u32::MAX);
        let state = match self.machines.get_mut(machine) {
            Some(state) if &state.version == version => state,
            _ => {
                // A new version has its own training distribution: start over
                // (only for the serving version; a late answer of the old one
                // after a swap is not counted).
                let serving = self.lifecycle.serving_full();
                if &serving.version != version {
                    return None;
                }
                let references = Arc::new(References::of(&serving.manifest));
                self.machines.insert(
                    machine.clone(),
                    MachineDrift {
                        version: version.clone(),
                        inputs: (0..references.inputs.len())
                            .map(|_| SlidingWindow::new(window))
                            .collect(),
                        outputs: (0..references.outputs.len())
                            .map(|_| SlidingWindow::new(window))
                            .collect(),
                        references,
                        evaluated_at: Instant::now(),
                        drifting: false,
                        psi: Vec::new(),
                        first_sample: acquired_at,
                        last_sample: None,
                    },
                );
                self.machines.get_mut(machine)?
            }
        };
        let due = state.last_sample.is_none_or(|last| {
            acquired_at.duration_since(last).unwrap_or_default() >= sample_every
        });
        if due {
            for (w, &v) in state.inputs.iter_mut().zip(inputs) {
                w.push(f64::from(v));
            }
            for (w, &v) in state.outputs.iter_mut().zip(outputs) {
                w.push(f64::from(v));
            }
            state.last_sample = Some(acquired_at);
        }
        // Judged once half of the span is covered (and 20 rows at least).
        let covered = acquired_at
            .duration_since(state.first_sample)
            .unwrap_or_default();
        let rows = state.inputs.first().map_or(0, SlidingWindow::len);
        if covered < span / 2 || rows < 20 || state.evaluated_at.elapsed() < DRIFT_PERIOD {
            return None;
        }
        state.evaluated_at = Instant::now();
        let at = SystemTime::now();
        let mut records = Vec::new();
        let mut psi_now = Vec::new();
        let columns = state
            .references
            .inputs
            .iter()
            .zip(&state.inputs)
            .map(|(r, w)| ("input", r, w))
            .chain(
                state
                    .references
                    .outputs
                    .iter()
                    .zip(&state.outputs)
                    .map(|(r, w)| ("output", r, w)),
            );
        for (kind, (name, bins), window) in columns {
            let Some(psi) = bins.as_ref().and_then(|b| b.psi(window.values())) else {
                continue;
            };
            psi_now.push((name.clone(), psi));
            records.push(Record::Drift(Arc::new(DriftRecord {
                machine: machine.clone(),
                model: self.model.clone(),
                version: version.clone(),
                kind,
                name: name.clone(),
                psi,
                at,
            })));
        }
        let drifting = psi_now.iter().any(|(_, p)| *p > self.config.threshold);
        if drifting != state.drifting {
            let worst = psi_now
                .iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(n, p)| format!("{n} (PSI {p:.3})"))
                .unwrap_or_default();
            if drifting {
                tracing::warn!(model = %self.model, %machine, threshold = self.config.threshold,
                    "inputs have drifted from the training distribution: {worst}");
            } else {
                tracing::info!(model = %self.model, %machine, "drift back below the threshold");
            }
        }
        state.drifting = drifting;
        state.psi = psi_now;
        self.flag.store(
            self.machines.values().any(|m| m.drifting),
            Ordering::Relaxed,
        );
        let mut worst: HashMap<&str, f64> = HashMap::new();
        for m in self.machines.values() {
            for (name, p) in &m.psi {
                let entry = worst.entry(name.as_str()).or_insert(*p);
                *entry = entry.max(*p);
            }
        }
        let worst = worst.into_iter().map(|(n, p)| (n.to_string(), p)).collect();
        Some(DriftUpdate { records, worst })
    }
}
