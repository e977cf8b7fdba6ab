//! Periodic work beside the data path: model state to OPC UA, counters to
//! the log.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ironbridge_connectors::influx::InfluxSinkStats;
use ironbridge_connectors::SourceStats;
use tokio_util::sync::CancellationToken;

use super::build::ServedModel;
use super::FanOutStats;
use crate::http::GatewayProbe;
use crate::opcua_server::OpcUaPublisher;

/// How often model state (inference counts) is pushed to OPC UA.
const MODEL_STATUS_PERIOD: Duration = Duration::from_secs(1);
/// How often counters are logged.
const STATS_LOG_PERIOD: Duration = Duration::from_secs(60);

pub(crate) async fn publish_model_status(
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
                    publisher.publish_model_versions(&m.manifest.name, &m.lifecycle.versions());
                }
            }
        }
    }
}

/// Publishes a model's state as soon as its versions change (activation,
/// rollback, a folder found), not only at the next periodic update.
pub(crate) async fn publish_on_model_events(
    publisher: OpcUaPublisher,
    models: Arc<Vec<ServedModel>>,
    index: usize,
    cancel: CancellationToken,
) {
    let mut events = models[index].lifecycle.events();
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            event = events.recv() => event,
        };
        if let Err(tokio::sync::broadcast::error::RecvError::Closed) = event {
            return;
        }
        // Lagged: the state is read fresh anyway.
        let m = &models[index];
        publisher.publish_model_status(&m.status());
        publisher.publish_model_versions(&m.manifest.name, &m.lifecycle.versions());
    }
}

/// Publishes the gateway's own health (`Gateway/...`) every second.
pub(crate) async fn publish_gateway_status(
    publisher: OpcUaPublisher,
    probe: GatewayProbe,
    cancel: CancellationToken,
) {
    let started_at = std::time::SystemTime::now();
    let mut tick = tokio::time::interval(MODEL_STATUS_PERIOD);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => publisher.publish_gateway_status(&probe.gateway_status(started_at)),
        }
    }
}

pub(crate) async fn log_stats(
    stats: Arc<FanOutStats>,
    sources: HashMap<String, SourceStats>,
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
                    inference_rejected = ?stats.inference_rejected.by_reason(),
                    inference_failed = stats.inference_failed.load(Ordering::Relaxed),
                    shadow_rejected = stats.shadow_rejected.load(Ordering::Relaxed),
                    "gateway counters"
                );
                for (machine, s) in &sources {
                    tracing::info!(
                        machine = %machine,
                        scans = s.scans(),
                        link_failures = s.link_failures(),
                        reconnects = s.reconnects(),
                        outages = s.outages(),
                        device_errors = s.device_errors(),
                        "source counters"
                    );
                }
                if let Some(s) = &sink {
                    tracing::info!(stats = ?s, "InfluxDB sink counters");
                }
            }
        }
    }
}
