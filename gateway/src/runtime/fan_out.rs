//! The fan-out: hands each scan to every consumer without waiting on any of
//! them, keeps each machine's last values, and asks the models it feeds for
//! a prediction.

use std::collections::HashMap;
use std::sync::Arc;

use ironbridge_connectors::{Record, Scan};
use ironbridge_models::prepare_inputs;
use tokio::sync::mpsc;

use super::build::ServedModel;
use super::predictions::{PredictionRequest, ShadowRequest};
use super::{send_to_sink, FanOutStats};
use crate::features::MachineState;
use crate::modbus_server::PredictionRegisters;
use crate::opcua_server::OpcUaPublisher;

pub(crate) struct FanOut {
    pub(crate) publisher: OpcUaPublisher,
    pub(crate) sink: Option<mpsc::Sender<Record>>,
    /// Told about outages, so Modbus clients see NaN instead of an old value.
    pub(crate) modbus: Option<PredictionRegisters>,
    pub(crate) models: Arc<Vec<ServedModel>>,
    /// machine → indexes of the models it feeds.
    pub(crate) routes: HashMap<Arc<str>, Vec<usize>>,
    /// One per model, same index: where submitted requests wait for answers.
    pub(crate) collectors: Vec<mpsc::Sender<PredictionRequest>>,
    pub(crate) stats: Arc<FanOutStats>,
}

impl FanOut {
    pub(crate) async fn run(self, mut scans: mpsc::Receiver<Scan>) {
        let mut machines: HashMap<Arc<str>, MachineEntry> = HashMap::new();
        while let Some(scan) = scans.recv().await {
            self.stats.scans.inc();
            let scan = Arc::new(scan);
            self.publisher.publish_scan(&scan);
            if let Some(registers) = &self.modbus {
                registers.observe_scan(&scan);
            }
            send_to_sink(&self.sink, Record::Scan(scan.clone()), &self.stats);
            let Some(model_indexes) = self.routes.get(&scan.machine) else {
                continue;
            };
            let entry = machines
                .entry(scan.machine.clone())
                .or_insert_with(|| MachineEntry {
                    state: MachineState::default(),
                    predicted_at: vec![None; model_indexes.len()],
                });
            entry.state.apply(&scan);
            for (k, &i) in model_indexes.iter().enumerate() {
                // Predictions are stamped with their inputs' time, so each
                // (machine, model) gets at most one per acquisition time and
                // never one older than the last: a late or repeated sample
                // must not rewrite a stored prediction with newer inputs.
                if entry.predicted_at[k].is_some_and(|t| scan.acquired_at <= t) {
                    continue;
                }
                if self.request_prediction(i, &entry.state, &scan).await {
                    entry.predicted_at[k] = Some(scan.acquired_at);
                }
            }
        }
        // Dropping `self.sink` and the collectors here lets them drain and stop.
    }

    /// `true` when a request went to the model.
    async fn request_prediction(
        &self,
        index: usize,
        state: &MachineState,
        scan: &Arc<Scan>,
    ) -> bool {
        let model = &self.models[index];
        if !model.features.touches(scan) {
            return false;
        }
        let values = model.features.assemble(state, scan.acquired_at);
        // The version serving now; a swap after this load leaves this
        // request with it, and the answer is tagged with it.
        let serving = model.lifecycle.serving_full();
        let row = match prepare_inputs(&serving.manifest, &values, serving.handle.stats()) {
            Ok(row) => row,
            Err(reason) => {
                tracing::debug!(machine = %scan.machine, model = %model.name, %reason, "prediction skipped");
                return false;
            }
        };
        let inputs = model.monitors_drift.then(|| row.clone());
        let pending = match serving.handle.submit(row) {
            Ok(p) => p,
            Err(e) => {
                let n = model.requests.rejected.count(&e);
                if n.is_power_of_two() {
                    tracing::warn!(model = %model.name, total = n, "inference request refused: {e}");
                }
                return false;
            }
        };
        // The same row to the shadow version, when one runs; its refusals
        // are counted, never logged per row.
        let shadow = model.lifecycle.shadow().and_then(|shadow| {
            let row = prepare_inputs(&shadow.manifest, &values, shadow.handle.stats()).ok()?;
            match shadow.handle.submit(row) {
                Ok(pending) => Some(ShadowRequest {
                    version: shadow.version.clone(),
                    pending,
                }),
                Err(_) => {
                    model.requests.shadow_rejected.inc();
                    None
                }
            }
        });
        let label = model
            .config
            .label_tag
            .as_deref()
            .and_then(|tag| state.good_value(tag));
        let request = PredictionRequest {
            machine: scan.machine.clone(),
            version: serving.version.clone(),
            shadow,
            label,
            inputs,
            inputs_acquired_at: scan.acquired_at,
            pending,
        };
        // Policy: block. The collector does no I/O and the inference queue
        // bounds what is in flight, so this waits only while a batch runs.
        let _ = self.collectors[index].send(request).await;
        true
    }
}

/// What the fan-out keeps per machine.
struct MachineEntry {
    state: MachineState,
    /// Acquisition time of the last prediction requested, per model route.
    predicted_at: Vec<Option<std::time::SystemTime>>,
}
