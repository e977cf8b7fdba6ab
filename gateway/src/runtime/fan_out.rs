//! The fan-out: hands each scan to every consumer without waiting on any of
//! them, keeps each machine's last values, and asks the models it feeds for
//! a prediction.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use ironbridge_connectors::{Record, Scan};
use ironbridge_models::{prepare_inputs, InputValue, PendingPrediction, ServingModel};
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

/// Most scans taken from the channel at once. Their rows go to each model
/// together, as one forward when its inference thread is idle (the
/// default `max_batch`).
const MAX_BURST: usize = 64;

/// Most yields while gathering a burst (see `FanOut::run`).
const GATHER_YIELDS: usize = 4;

impl FanOut {
    pub(crate) async fn run(self, mut scans: mpsc::Receiver<Scan>) {
        let mut machines: HashMap<Arc<str>, MachineEntry> = HashMap::new();
        let mut burst = Vec::with_capacity(MAX_BURST);
        // Per model (same index): rows prepared from this burst's scans.
        let mut rows: Vec<Vec<PreparedRow>> = self.models.iter().map(|_| Vec::new()).collect();
        // Whatever queued while the last burst ran is the next one: under
        // load scans queue and their rows share forwards.
        while scans.recv_many(&mut burst, MAX_BURST).await > 0 {
            // Machines on one poll interval are due at the same tick
            // (`PollClock`): the first scan wakes this task while the other
            // machines' answers are still being read. A yield lets the
            // tasks that are ready run first (and the runtime look at its
            // sockets), so their scans join this burst (one forward per
            // model) instead of each waking the fan-out again. It yields
            // again while a yield brought more scans, a few times at most,
            // so that a steady stream is not held back: the wait is only as
            // long as those tasks run.
            for _ in 0..GATHER_YIELDS {
                if burst.len() == MAX_BURST {
                    break;
                }
                tokio::task::yield_now().await;
                let before = burst.len();
                while burst.len() < MAX_BURST {
                    match scans.try_recv() {
                        Ok(scan) => burst.push(scan),
                        Err(_) => break,
                    }
                }
                if burst.len() == before {
                    break;
                }
            }
            for scan in burst.drain(..) {
                self.take_scan(scan, &mut machines, &mut rows).await;
            }
            self.submit_rows(&mut rows, &mut machines).await;
        }
        // Dropping `self.sink` and the collectors here lets them drain and stop.
    }

    /// Publishes one scan, keeps its values and prepares a row for each
    /// model it feeds.
    async fn take_scan(
        &self,
        scan: Scan,
        machines: &mut HashMap<Arc<str>, MachineEntry>,
        rows: &mut [Vec<PreparedRow>],
    ) {
        self.stats.scans.inc();
        let scan = Arc::new(scan);
        self.publisher.publish_scan(&scan);
        if let Some(registers) = &self.modbus {
            registers.observe_scan(&scan);
        }
        send_to_sink(&self.sink, Record::Scan(scan.clone()), &self.stats);
        let Some(model_indexes) = self.routes.get(&scan.machine) else {
            return;
        };
        // A machine's second scan in a burst: its earlier rows go first, so
        // that a refused one can give back its place (`predicted_at`).
        if machines.get(&scan.machine).is_some_and(|e| e.in_burst) {
            self.submit_rows(rows, machines).await;
        }
        let entry = machines
            .entry(scan.machine.clone())
            .or_insert_with(|| MachineEntry {
                state: MachineState::keeping(self.tags_read(model_indexes)),
                predicted_at: vec![None; model_indexes.len()],
                in_burst: false,
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
            if let Some(row) = self.prepare_row(i, k, entry, &scan) {
                entry.predicted_at[k] = Some(scan.acquired_at);
                entry.in_burst = true;
                rows[i].push(row);
            }
        }
    }

    /// The tags the models at `model_indexes` read: their inputs and
    /// label tags (what a machine's state keeps).
    fn tags_read<'a>(&'a self, model_indexes: &'a [usize]) -> impl Iterator<Item = Arc<str>> + 'a {
        model_indexes.iter().flat_map(|&i| {
            let model = &self.models[i];
            let label = model.config.label_tag.as_deref().map(Arc::from);
            model.features.tags().iter().cloned().chain(label)
        })
    }

    /// The model's inputs from this machine's values now, or `None` when
    /// the scan does not touch them or they cannot make a row.
    fn prepare_row(
        &self,
        index: usize,
        route: usize,
        entry: &MachineEntry,
        scan: &Arc<Scan>,
    ) -> Option<PreparedRow> {
        let model = &self.models[index];
        if !model.features.touches(scan) {
            return None;
        }
        let values = model.features.assemble(&entry.state, scan.acquired_at);
        // The version serving now; a swap after this load leaves this
        // request with it, and the answer is tagged with it.
        let serving = model.lifecycle.serving_full();
        let row = match prepare_inputs(&serving.manifest, &values, serving.handle.stats()) {
            Ok(row) => row,
            Err(reason) => {
                tracing::debug!(machine = %scan.machine, model = %model.name, %reason, "prediction skipped");
                return None;
            }
        };
        let inputs = model.monitors_drift.then(|| row.clone());
        let label = model
            .config
            .label_tag
            .as_deref()
            .and_then(|tag| entry.state.good_value(tag));
        Some(PreparedRow {
            machine: scan.machine.clone(),
            route,
            predicted_before: entry.predicted_at[route],
            acquired_at: scan.acquired_at,
            serving,
            row,
            values,
            label,
            inputs,
        })
    }

    /// Submits the prepared rows, each model's together, and hands the
    /// accepted ones to the models' collectors in order.
    async fn submit_rows(
        &self,
        rows: &mut [Vec<PreparedRow>],
        machines: &mut HashMap<Arc<str>, MachineEntry>,
    ) {
        for (index, prepared) in rows.iter_mut().enumerate() {
            let mut prepared = prepared.drain(..).peekable();
            // Rows prepared for one version go to it together; a swap in
            // the middle of a burst splits them.
            while let Some(first) = prepared.next() {
                let serving = Arc::clone(&first.serving);
                let mut group = vec![first];
                while let Some(next) = prepared.next_if(|r| Arc::ptr_eq(&r.serving, &serving)) {
                    group.push(next);
                }
                let answers = serving.handle.submit_many(
                    group
                        .iter_mut()
                        .map(|r| std::mem::take(&mut r.row))
                        .collect(),
                );
                for (row, answer) in group.into_iter().zip(answers) {
                    // Every machine in the burst has a row here: this
                    // clears them all, without a walk over every machine.
                    let entry = machines.get_mut(&row.machine);
                    match answer {
                        Ok(pending) => {
                            if let Some(entry) = entry {
                                entry.in_burst = false;
                            }
                            self.request_prediction(index, row, pending).await;
                        }
                        Err(e) => {
                            // Not predicted: this acquisition time may be again.
                            if let Some(entry) = entry {
                                entry.in_burst = false;
                                if entry.predicted_at[row.route] == Some(row.acquired_at) {
                                    entry.predicted_at[row.route] = row.predicted_before;
                                }
                            }
                            let model = &self.models[index];
                            let n = model.requests.rejected.count(&e);
                            if n.is_power_of_two() {
                                tracing::warn!(model = %model.name, total = n, "inference request refused: {e}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Submits the row to the shadow version, if one runs, and hands the
    /// request to the model's collector.
    async fn request_prediction(&self, index: usize, row: PreparedRow, pending: PendingPrediction) {
        let model = &self.models[index];
        // The same row to the shadow version, when one runs; its refusals
        // are counted, never logged per row.
        let shadow = model.lifecycle.shadow().and_then(|shadow| {
            let shadow_row =
                prepare_inputs(&shadow.manifest, &row.values, shadow.handle.stats()).ok()?;
            match shadow.handle.submit(shadow_row) {
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
        let request = PredictionRequest {
            machine: row.machine,
            version: row.serving.version.clone(),
            shadow,
            label: row.label,
            inputs: row.inputs,
            inputs_acquired_at: row.acquired_at,
            pending,
        };
        // Policy: block. The collector does no I/O and the inference queue
        // bounds what is in flight, so this waits only while a batch runs.
        let _ = self.collectors[index].send(request).await;
    }
}

/// What the fan-out keeps per machine.
struct MachineEntry {
    state: MachineState,
    /// Acquisition time of the last prediction requested, per model route.
    predicted_at: Vec<Option<std::time::SystemTime>>,
    /// A row of this machine waits in the burst being gathered.
    in_burst: bool,
}

/// One model's row from one scan, waiting for its burst to be submitted.
struct PreparedRow {
    machine: Arc<str>,
    /// Index into the machine's routes.
    route: usize,
    /// The machine's `predicted_at` before this row, restored if refused.
    predicted_before: Option<SystemTime>,
    acquired_at: SystemTime,
    serving: Arc<ServingModel>,
    row: Vec<f32>,
    /// The features the row was made of, for a shadow version's own row.
    values: Vec<InputValue>,
    label: Option<f64>,
    /// The row, when the model's drift is measured.
    inputs: Option<Vec<f32>>,
}
