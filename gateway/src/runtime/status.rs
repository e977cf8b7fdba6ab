//! Periodic work beside the data path: model state to OPC UA, counters to
//! the log.

use std::sync::Arc;
use std::time::Duration;

use ironbridge_metrics::MetricsRegistry;
use tokio_util::sync::CancellationToken;

use super::build::ServedModel;
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

/// Every minute, the registry's values in the log, one line per label set
/// (`metrics machine=press-1: ironbridge_source_scans_total=1200 ...`), under
/// the names `/metrics` gives them.
pub(crate) async fn log_stats(metrics: MetricsRegistry, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(STATS_LOG_PERIOD);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                for (labels, values) in ironbridge_metrics::log_lines(&metrics.snapshot()) {
                    tracing::info!("metrics {labels}: {values}");
                }
            }
        }
    }
}
