//! One collector task per model: awaits the answers of submitted requests in
//! order and hands each prediction to the OPC UA server, the Modbus registers
//! and the sink (no task per prediction). A shadow version's answer to the
//! same row goes to its own nodes and measurement, and into the gate.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ironbridge_connectors::{GateRecord, Prediction, Record};
use ironbridge_models::{
    Gate, GateConfig, GateDecision, ModelError, ModelLifecycle, PendingPrediction,
};
use tokio::sync::mpsc;

use super::drift::DriftMonitor;
use super::{send_to_sink, FanOutStats, ModelRequestStats};
use crate::modbus_server::PredictionRegisters;
use crate::opcua_server::OpcUaPublisher;

/// How often the gate's statistics are published (and on every decision).
const GATE_PUBLISH_PERIOD: Duration = Duration::from_secs(1);

/// A request the model accepted, waiting for its answer.
pub(crate) struct PredictionRequest {
    pub(crate) machine: Arc<str>,
    /// The version the request was submitted to, which computes the answer.
    pub(crate) version: Arc<str>,
    pub(crate) inputs_acquired_at: SystemTime,
    pub(crate) pending: PendingPrediction,
    /// The same row submitted to the shadow version, if one runs.
    pub(crate) shadow: Option<ShadowRequest>,
    /// The model's label tag at the inputs' time (Good values only).
    pub(crate) label: Option<f64>,
    /// The row given to the model, when its drift is measured.
    pub(crate) inputs: Option<Vec<f32>>,
}

pub(crate) struct ShadowRequest {
    pub(crate) version: Arc<str>,
    pub(crate) pending: PendingPrediction,
}

/// The gate of one model: its configuration and which output it compares.
pub(crate) struct GateSetup {
    pub(crate) config: GateConfig,
    pub(crate) output_index: usize,
}

/// What a collector needs besides its requests.
pub(crate) struct PredictionCollector {
    pub(crate) model: Arc<str>,
    pub(crate) outputs: Vec<Arc<str>>,
    pub(crate) publisher: OpcUaPublisher,
    pub(crate) modbus: Option<PredictionRegisters>,
    pub(crate) sink: Option<mpsc::Sender<Record>>,
    /// For the sink channel's drops.
    pub(crate) stats: Arc<FanOutStats>,
    pub(crate) requests: ModelRequestStats,
    pub(crate) lifecycle: Arc<ModelLifecycle>,
    pub(crate) gate: Option<GateSetup>,
    pub(crate) drift: Option<DriftMonitor>,
}

/// The gate for the shadow version being judged.
struct RunningGate {
    shadow_version: Arc<str>,
    gate: Gate,
    decision: GateDecision,
    published_at: Option<Instant>,
    /// The decision was acted on (auto_promote): once per shadow run.
    acted: bool,
}

impl PredictionCollector {
    /// Runs until the fan-out drops its sender and every answer is in. Each
    /// version's one worker answers in submission order, and requests to a
    /// newly activated version come after those to the old one, so awaiting
    /// in order never waits long behind an answer that is already there.
    pub(crate) async fn run(mut self, mut requests: mpsc::Receiver<PredictionRequest>) {
        let mut running: Option<RunningGate> = None;
        while let Some(request) = requests.recv().await {
            let active = match request.pending.wait_versioned().await {
                Ok((values, fallback)) => {
                    // A remote version's local fallback tags its own answers.
                    let version = fallback.unwrap_or_else(|| request.version.clone());
                    let prediction = Arc::new(self.prediction(
                        &request.machine,
                        version.clone(),
                        request.inputs_acquired_at,
                        &values,
                    ));
                    self.requests.predictions.inc();
                    let drifting = self.observe_drift(
                        &request.machine,
                        &version,
                        request.inputs_acquired_at,
                        request.inputs.as_deref(),
                        &values,
                    );
                    self.publisher
                        .publish_prediction_with(&prediction, drifting);
                    if let Some(registers) = &self.modbus {
                        registers.publish_prediction(&prediction);
                    }
                    send_to_sink(&self.sink, Record::Prediction(prediction), &self.stats);
                    Some(values)
                }
                Err(e) => {
                    self.requests.failed.inc();
                    // A remote engine's outage fails every row until it
                    // answers; its backend logs once per attempt instead.
                    if !matches!(e, ModelError::RemoteUnavailable { .. }) {
                        tracing::warn!(model = %self.model, "inference failed: {e}");
                    }
                    None
                }
            };
            let Some(shadow) = request.shadow else {
                continue;
            };
            let shadow_values = match shadow.pending.wait().await {
                Ok(values) => values,
                Err(e) => {
                    self.requests.failed.inc();
                    if !matches!(e, ModelError::RemoteUnavailable { .. }) {
                        tracing::warn!(model = %self.model, version = %shadow.version, "shadow inference failed: {e}");
                    }
                    continue;
                }
            };
            let prediction = Arc::new(self.prediction(
                &request.machine,
                shadow.version.clone(),
                request.inputs_acquired_at,
                &shadow_values,
            ));
            self.publisher.publish_shadow_prediction(&prediction);
            send_to_sink(
                &self.sink,
                Record::ShadowPrediction(prediction),
                &self.stats,
            );
            if let (Some(setup), Some(active)) = (&self.gate, active) {
                let idx = setup.output_index;
                if let (Some(&a), Some(&s)) = (active.get(idx), shadow_values.get(idx)) {
                    // A new shadow version starts a new gate.
                    if running
                        .as_ref()
                        .is_none_or(|g| g.shadow_version != shadow.version)
                    {
                        running = Some(RunningGate {
                            shadow_version: shadow.version.clone(),
                            gate: Gate::new(setup.config.clone()),
                            decision: GateDecision::Pending,
                            published_at: None,
                            acted: false,
                        });
                    }
                    if let Some(gate) = running.as_mut() {
                        gate.gate.observe(f64::from(a), f64::from(s), request.label);
                        self.after_observation(gate, &request.version);
                    }
                }
            }
        }
    }

    /// Feeds the drift monitor; `true` when this machine's inputs have
    /// drifted (its predictions are then published Uncertain).
    fn observe_drift(
        &mut self,
        machine: &Arc<str>,
        version: &Arc<str>,
        acquired_at: SystemTime,
        inputs: Option<&[f32]>,
        outputs: &[f32],
    ) -> bool {
        let (Some(monitor), Some(inputs)) = (self.drift.as_mut(), inputs) else {
            return false;
        };
        if let Some(update) = monitor.observe(machine, version, acquired_at, inputs, outputs) {
            self.publisher.publish_drift(&self.model, &update.worst);
            for record in update.records {
                send_to_sink(&self.sink, record, &self.stats);
            }
        }
        monitor.is_drifting(machine)
    }

    fn prediction(
        &self,
        machine: &Arc<str>,
        version: Arc<str>,
        inputs_acquired_at: SystemTime,
        values: &[f32],
    ) -> Prediction {
        Prediction {
            machine: machine.clone(),
            model: self.model.clone(),
            version,
            inputs_acquired_at,
            outputs: self
                .outputs
                .iter()
                .cloned()
                .zip(values.iter().map(|&v| f64::from(v)))
                .collect(),
        }
    }

    /// Publishes the gate's statistics now and then, and acts on a decision
    /// when `auto_promote` is set: Pass activates the shadow, Fail stops it.
    fn after_observation(&self, running: &mut RunningGate, active_version: &Arc<str>) {
        let decision = running.gate.decision();
        let changed = decision != running.decision;
        let due = running
            .published_at
            .is_none_or(|t| t.elapsed() >= GATE_PUBLISH_PERIOD);
        if changed || due {
            // The full statistics (the PSI sorts the window) only when
            // published, not for every row.
            let stats = running.gate.stats();
            let record = Arc::new(GateRecord {
                model: self.model.clone(),
                active_version: active_version.clone(),
                shadow_version: running.shadow_version.clone(),
                metric: stats.metric.as_str(),
                samples: stats.samples,
                mean: stats.mean,
                lower: stats.lower,
                upper: stats.upper,
                margin: stats.margin,
                psi: stats.psi,
                decision: stats.decision.as_str(),
                at: SystemTime::now(),
            });
            self.publisher.publish_gate(&record);
            send_to_sink(&self.sink, Record::Gate(record), &self.stats);
            running.published_at = Some(Instant::now());
            if changed {
                tracing::info!(
                    model = %self.model, shadow = %running.shadow_version,
                    decision = stats.decision.as_str(), samples = stats.samples,
                    mean = stats.mean, lower = stats.lower, upper = stats.upper,
                    margin = stats.margin, "gate decision"
                );
            }
        }
        running.decision = decision;
        let auto = self.gate.as_ref().is_some_and(|g| g.config.auto_promote);
        if auto && !running.acted && decision != GateDecision::Pending {
            running.acted = true;
            let lifecycle = self.lifecycle.clone();
            let version = running.shadow_version.to_string();
            // Loading happens in the shadow run already; activation of the
            // shadow is a swap. Still off the collector, which must not wait.
            tokio::task::spawn_blocking(move || {
                let result = match decision {
                    GateDecision::Pass => lifecycle.activate(&version, "gate"),
                    _ => lifecycle.stop_shadow("gate"),
                };
                if let Err(e) = result {
                    tracing::warn!(
                        "the gate's {} of {version} did not happen: {e}",
                        decision.as_str()
                    );
                }
            });
        }
    }
}
