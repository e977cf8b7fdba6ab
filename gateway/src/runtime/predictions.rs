//! One collector task per model: awaits the answers of submitted requests in
//! order and hands each prediction to the OPC UA server, the Modbus registers
//! and the sink (no task per prediction).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use ironbridge_connectors::{Prediction, Record};
use ironbridge_models::PendingPrediction;
use tokio::sync::mpsc;

use super::{send_to_sink, FanOutStats};
use crate::modbus_server::PredictionRegisters;
use crate::opcua_server::OpcUaPublisher;

/// A request the model accepted, waiting for its answer.
pub(crate) struct PredictionRequest {
    pub(crate) machine: Arc<str>,
    /// The version the request was submitted to, which computes the answer.
    pub(crate) version: Arc<str>,
    pub(crate) inputs_acquired_at: SystemTime,
    pub(crate) pending: PendingPrediction,
}

/// What a collector needs besides its requests.
pub(crate) struct PredictionCollector {
    pub(crate) model: Arc<str>,
    pub(crate) outputs: Vec<Arc<str>>,
    pub(crate) publisher: OpcUaPublisher,
    pub(crate) modbus: Option<PredictionRegisters>,
    pub(crate) sink: Option<mpsc::Sender<Record>>,
    pub(crate) stats: Arc<FanOutStats>,
}

impl PredictionCollector {
    /// Runs until the fan-out drops its sender and every answer is in. Each
    /// version's one worker answers in submission order, and requests to a
    /// newly activated version come after those to the old one, so awaiting
    /// in order never waits long behind an answer that is already there.
    pub(crate) async fn run(self, mut requests: mpsc::Receiver<PredictionRequest>) {
        while let Some(request) = requests.recv().await {
            match request.pending.wait().await {
                Ok(values) => {
                    let prediction = Arc::new(Prediction {
                        machine: request.machine,
                        model: self.model.clone(),
                        version: request.version,
                        inputs_acquired_at: request.inputs_acquired_at,
                        outputs: self
                            .outputs
                            .iter()
                            .cloned()
                            .zip(values.into_iter().map(f64::from))
                            .collect(),
                    });
                    self.stats.predictions.fetch_add(1, Ordering::Relaxed);
                    self.publisher.publish_prediction(&prediction);
                    if let Some(registers) = &self.modbus {
                        registers.publish_prediction(&prediction);
                    }
                    send_to_sink(&self.sink, Record::Prediction(prediction), &self.stats);
                }
                Err(e) => {
                    self.stats.inference_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(model = %self.model, "inference failed: {e}");
                }
            }
        }
    }
}
