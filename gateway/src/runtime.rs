//! Wiring and supervision: starts every component of a validated
//! configuration and stops them in order.
//!
//! ```text
//!  ModbusTcpSource ─┐ scans (bounded, block)
//!  ModbusTcpSource ─┴──────────▶ fan-out ─▶ OPC UA publisher (latest value wins: coalesce)
//!                                   ├─────▶ InfluxSink channel (bounded: drop newest, counted)
//!                                   └─────▶ feature assembly ─▶ InferenceService (bounded queue:
//!                                                reject newest, counted; governor rate limit)
//!                                                  └─▶ prediction ─▶ OPC UA + InfluxSink
//! ```
//!
//! Shutdown: one `CancellationToken` stops the sources; their dropped senders
//! end the fan-out, whose dropped senders let the InfluxDB sink drain and
//! flush before it exits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ironbridge_connectors::influx::{InfluxSink, InfluxSinkStats, InfluxV2Writer};
use ironbridge_connectors::modbus::{ModbusSourceStats, ModbusTcpSource};
use ironbridge_connectors::{Prediction, Record, Scan};
use ironbridge_models::{
    prepare_inputs, DeviceChoice, InferenceHandle, InferenceOptions, InferenceService,
    ModelManifest, ModelRegistry, TorchModel,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{DeviceSetting, GatewayConfig, MachineConfig, ModelConfig};
use crate::features::FeatureMap;
use crate::opcua_server::{
    self, AddressSpaceLayout, MachineLayout, ModelLayout, ModelStatusView, OpcUaPublisher,
};
use crate::GatewayError;

/// Scans waiting for the fan-out. Sources block when it is full; the fan-out
/// does no I/O, so it only fills if the process is starved.
const SCAN_CHANNEL: usize = 1024;
/// Records waiting for the InfluxDB sink task (which has its own, larger,
/// buffer for outages). Full: the newest record is dropped and counted.
const SINK_CHANNEL: usize = 4096;
/// How often model state (inference counts) is pushed to OPC UA.
const MODEL_STATUS_PERIOD: Duration = Duration::from_secs(1);
/// How often counters are logged.
const STATS_LOG_PERIOD: Duration = Duration::from_secs(60);
/// How long shutdown waits for the sink's final flush.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Counters of the gateway's own hand-offs.
#[derive(Debug, Default)]
pub struct FanOutStats {
    pub scans: AtomicU64,
    pub predictions: AtomicU64,
    /// Records dropped because the InfluxDB sink's channel was full.
    pub sink_channel_full: AtomicU64,
    /// Prediction requests the inference queue refused (queue full or rate).
    pub inference_rejected: AtomicU64,
    /// Inference requests that failed inside the model.
    pub inference_failed: AtomicU64,
}

/// One served model.
struct ServedModel {
    config: ModelConfig,
    manifest: ModelManifest,
    loaded_at: SystemTime,
    handle: InferenceHandle,
    features: FeatureMap,
    output_names: Vec<Arc<str>>,
}

impl ServedModel {
    fn status(&self) -> ModelStatusView {
        ModelStatusView {
            name: self.manifest.name.clone(),
            active_version: self.manifest.version.clone(),
            sha256: self.manifest.sha256.clone(),
            loaded_at: self.loaded_at,
            state: "Serving".to_string(),
            inference_count: self.handle.stats().snapshot().inferences,
            inputs: self
                .manifest
                .inputs
                .iter()
                .map(|i| i.name.clone())
                .collect(),
            outputs: self
                .manifest
                .outputs
                .iter()
                .map(|o| o.name.clone())
                .collect(),
        }
    }
}

/// A running gateway.
pub struct Gateway {
    tasks: JoinSet<()>,
    sink_task: Option<tokio::task::JoinHandle<()>>,
    opcua_task: tokio::task::JoinHandle<()>,
    pub stats: Arc<FanOutStats>,
    pub source_stats: HashMap<String, ModbusSourceStats>,
    pub sink_stats: Option<InfluxSinkStats>,
    /// Where the OPC UA server listens.
    pub opcua_endpoint: String,
}

impl Gateway {
    /// Loads the models, starts the OPC UA server, the InfluxDB sink and one
    /// source per machine. Fails before reading any machine if a model does
    /// not verify or the OPC UA server cannot start.
    pub async fn start(
        config: GatewayConfig,
        cancel: CancellationToken,
    ) -> Result<Self, GatewayError> {
        let models = load_models(&config)?;
        let layout = layout(&config, &models);
        let (publisher, opcua_task) =
            opcua_server::start(&config.opcua, &layout, cancel.child_token()).await?;
        let opcua_endpoint = format!("opc.tcp://{}:{}/", config.opcua.host, config.opcua.port);
        for m in &models {
            publisher.publish_model_status(&m.status());
        }
        let models = Arc::new(models);

        let (sink_tx, sink_task, sink_stats) = match &config.influx {
            Some(influx) => {
                let writer = InfluxV2Writer::new(influx).map_err(|e| GatewayError::Machine {
                    machine: "influx".into(),
                    source: e,
                })?;
                let (tx, rx) = mpsc::channel(SINK_CHANNEL);
                // The sink is not cancelled with the rest: it stops when the
                // fan-out drops its sender, after draining.
                let (stats, task) =
                    InfluxSink::spawn(influx.clone(), writer, rx, CancellationToken::new());
                (Some(tx), Some(task), Some(stats))
            }
            None => (None, None, None),
        };

        let stats = Arc::new(FanOutStats::default());
        let mut tasks = JoinSet::new();
        let (scan_tx, scan_rx) = mpsc::channel::<Scan>(SCAN_CHANNEL);
        let mut source_stats = HashMap::new();
        for machine in &config.machines {
            match machine {
                MachineConfig::ModbusTcp(c) => {
                    let source =
                        ModbusTcpSource::new(c.clone()).map_err(|e| GatewayError::Machine {
                            machine: c.name.clone(),
                            source: e,
                        })?;
                    source_stats.insert(c.name.clone(), source.stats());
                    tasks.spawn(source.run(scan_tx.clone(), cancel.child_token()));
                }
            }
        }
        drop(scan_tx);

        let fan_out = FanOut {
            publisher: publisher.clone(),
            sink: sink_tx,
            models: models.clone(),
            stats: stats.clone(),
        };
        tasks.spawn(fan_out.run(scan_rx));
        tasks.spawn(publish_model_status(
            publisher,
            models,
            cancel.child_token(),
        ));
        tasks.spawn(log_stats(
            stats.clone(),
            source_stats.clone(),
            sink_stats.clone(),
            cancel.child_token(),
        ));

        tracing::info!(
            machines = config.machines.len(),
            models = config.models.len(),
            opcua = %opcua_endpoint,
            influx = config.influx.as_ref().map(|i| i.url.as_str()).unwrap_or("(none)"),
            "gateway running"
        );
        Ok(Self {
            tasks,
            sink_task,
            opcua_task,
            stats,
            source_stats,
            sink_stats,
            opcua_endpoint,
        })
    }

    /// Waits until every task has stopped after the token was cancelled.
    pub async fn stopped(mut self) {
        while self.tasks.join_next().await.is_some() {}
        if let Some(sink) = self.sink_task.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, sink).await.is_err() {
                tracing::warn!(
                    "InfluxDB sink did not finish its final flush in {SHUTDOWN_GRACE:?}"
                );
            }
        }
        let _ = self.opcua_task.await;
    }
}

fn load_models(config: &GatewayConfig) -> Result<Vec<ServedModel>, GatewayError> {
    config
        .models
        .iter()
        .map(|model| {
            let err = |source| GatewayError::Model {
                model: model.name.clone(),
                source: Box::new(source),
            };
            let verified = ModelRegistry::open(config.model_dir(model))
                .and_then(|r| r.load(&model.version))
                .map_err(err)?;
            let manifest = verified.manifest().clone();
            let device = match model.device_setting() {
                Some(DeviceSetting::Cuda(i)) => DeviceChoice::Cuda(i),
                _ => DeviceChoice::Cpu,
            };
            let torch = TorchModel::load(&verified, device).map_err(err)?;
            let options = InferenceOptions {
                max_batch: model.max_batch,
                max_wait: Duration::from_millis(model.max_wait_ms),
                queue_capacity: model.queue_capacity,
                rate_limit_per_s: model.rate_limit_per_s.and_then(std::num::NonZeroU32::new),
                intra_op_threads: model.intra_op_threads,
            };
            let handle = InferenceService::spawn(torch, options).map_err(err)?;
            let features = FeatureMap::new(
                manifest
                    .inputs
                    .iter()
                    .map(|i| model.tag_for_input(&i.name).to_string())
                    .collect(),
            );
            tracing::info!(
                model = %manifest.name,
                version = %manifest.version,
                sha256 = %manifest.sha256,
                "model verified and loaded"
            );
            Ok(ServedModel {
                config: model.clone(),
                output_names: manifest
                    .outputs
                    .iter()
                    .map(|o| Arc::from(o.name.as_str()))
                    .collect(),
                loaded_at: SystemTime::now(),
                manifest,
                handle,
                features,
            })
        })
        .collect()
}

fn layout(config: &GatewayConfig, models: &[ServedModel]) -> AddressSpaceLayout {
    AddressSpaceLayout {
        machines: config
            .machines
            .iter()
            .map(|m| MachineLayout {
                name: m.name().to_string(),
                tags: m.tag_names().into_iter().map(str::to_string).collect(),
            })
            .collect(),
        models: models
            .iter()
            .map(|m| ModelLayout {
                name: m.manifest.name.clone(),
                inputs: m.manifest.inputs.iter().map(|i| i.name.clone()).collect(),
                outputs: m.manifest.outputs.iter().map(|o| o.name.clone()).collect(),
                machines: m.config.machines.clone(),
            })
            .collect(),
    }
}

/// Hands each scan to every consumer without waiting on any of them.
struct FanOut {
    publisher: OpcUaPublisher,
    sink: Option<mpsc::Sender<Record>>,
    models: Arc<Vec<ServedModel>>,
    stats: Arc<FanOutStats>,
}

impl FanOut {
    async fn run(self, mut scans: mpsc::Receiver<Scan>) {
        while let Some(scan) = scans.recv().await {
            self.stats.scans.fetch_add(1, Ordering::Relaxed);
            let scan = Arc::new(scan);
            self.publisher.publish_scan(&scan);
            send_to_sink(&self.sink, Record::Scan(scan.clone()), &self.stats);
            for model in self.models.iter() {
                if model.config.machines.iter().any(|m| **m == *scan.machine) {
                    self.request_prediction(model, &scan);
                }
            }
        }
        // Dropping `self.sink` here lets the sink drain and stop.
    }

    fn request_prediction(&self, model: &ServedModel, scan: &Arc<Scan>) {
        let values = model.features.assemble(scan);
        let stats = model.handle.stats();
        let row = match prepare_inputs(&model.manifest, &values, stats) {
            Ok(row) => row,
            Err(reason) => {
                tracing::debug!(machine = %scan.machine, model = %model.manifest.name, %reason, "prediction skipped");
                return;
            }
        };
        let pending = match model.handle.submit(row) {
            Ok(p) => p,
            Err(e) => {
                let n = self
                    .stats
                    .inference_rejected
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                if n.is_power_of_two() {
                    tracing::warn!(model = %model.manifest.name, total = n, "inference request refused: {e}");
                }
                return;
            }
        };
        let publisher = self.publisher.clone();
        let sink = self.sink.clone();
        let stats = self.stats.clone();
        let machine = scan.machine.clone();
        let acquired_at = scan.acquired_at;
        let model_name: Arc<str> = Arc::from(model.manifest.name.as_str());
        let version: Arc<str> = Arc::from(model.manifest.version.as_str());
        let outputs = model.output_names.clone();
        tokio::spawn(async move {
            match pending.await {
                Ok(values) => {
                    let prediction = Arc::new(Prediction {
                        machine,
                        model: model_name,
                        version,
                        inputs_acquired_at: acquired_at,
                        outputs: outputs
                            .into_iter()
                            .zip(values.into_iter().map(f64::from))
                            .collect(),
                    });
                    stats.predictions.fetch_add(1, Ordering::Relaxed);
                    publisher.publish_prediction(&prediction);
                    send_to_sink(&sink, Record::Prediction(prediction), &stats);
                }
                Err(e) => {
                    stats.inference_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(model = %model_name, "inference failed: {e}");
                }
            }
        });
    }
}

/// Policy when the sink's channel is full: drop the newest record and count
/// it (the sink has its own bounded buffer for outages; a full channel means
/// the sink task itself is stalled).
fn send_to_sink(sink: &Option<mpsc::Sender<Record>>, record: Record, stats: &FanOutStats) {
    let Some(sink) = sink else { return };
    if let Err(mpsc::error::TrySendError::Full(_)) = sink.try_send(record) {
        let n = stats.sink_channel_full.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(total = n, "InfluxDB sink channel full: record dropped");
        }
    }
}

async fn publish_model_status(
    publisher: OpcUaPublisher,
    models: Arc<Vec<ServedModel>>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(MODEL_STATUS_PERIOD);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                for m in models.iter() {
                    publisher.publish_model_status(&m.status());
                }
            }
        }
    }
}

async fn log_stats(
    stats: Arc<FanOutStats>,
    sources: HashMap<String, ModbusSourceStats>,
    sink: Option<InfluxSinkStats>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(STATS_LOG_PERIOD);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                tracing::info!(
                    scans = stats.scans.load(Ordering::Relaxed),
                    predictions = stats.predictions.load(Ordering::Relaxed),
                    sink_channel_full = stats.sink_channel_full.load(Ordering::Relaxed),
                    inference_rejected = stats.inference_rejected.load(Ordering::Relaxed),
                    inference_failed = stats.inference_failed.load(Ordering::Relaxed),
                    "gateway counters"
                );
                for (machine, s) in &sources {
                    tracing::info!(machine = %machine, stats = ?s, "source counters");
                }
                if let Some(s) = &sink {
                    tracing::info!(stats = ?s, "InfluxDB sink counters");
                }
            }
        }
    }
}
