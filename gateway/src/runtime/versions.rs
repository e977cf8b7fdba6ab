//! Model versions while running: the model folders are read again every
//! few seconds (new versions become Available, vanished ones Retired), and
//! every lifecycle event becomes a `model_event` point.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ironbridge_connectors::{ModelEventRecord, Record};
use ironbridge_models::{ModelEvent, ModelEventKind, ModelLifecycle};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::{send_to_sink, FanOutStats};

/// How often the model folders are read again. A folder listing and, for a
/// new folder, one small manifest: cheap enough to poll, and it works on
/// every filesystem (inotify does not on network shares).
pub(crate) const RESCAN_PERIOD: Duration = Duration::from_secs(2);

/// Reads every model's folder every [`RESCAN_PERIOD`] until cancelled. An
/// unreadable folder is logged when it turns unreadable, not every time.
pub(crate) async fn watch_version_folders(
    models: Vec<Arc<ModelLifecycle>>,
    cancel: CancellationToken,
) {
    let mut failing = vec![false; models.len()];
    let mut tick = tokio::time::interval(RESCAN_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (i, model) in models.iter().enumerate() {
            let lifecycle = model.clone();
            // Directory reads block; keep them off the runtime's workers.
            let result = tokio::task::spawn_blocking(move || lifecycle.rescan()).await;
            match result {
                Ok(Ok(_events)) => failing[i] = false,
                Ok(Err(e)) => {
                    if !failing[i] {
                        tracing::warn!(model = %model.name(), "cannot read the model folder: {e}");
                    }
                    failing[i] = true;
                }
                Err(e) => tracing::error!(model = %model.name(), "model folder scan panicked: {e}"),
            }
        }
    }
}

/// Writes each of `model`'s lifecycle events to the store as a
/// `model_event` point, until cancelled. `first` (the activation at start)
/// goes first.
pub(crate) async fn record_model_events(
    mut events: broadcast::Receiver<ModelEvent>,
    first: ModelEvent,
    sink: mpsc::Sender<Record>,
    stats: Arc<FanOutStats>,
    cancel: CancellationToken,
) {
    let sink = Some(sink);
    send_to_sink(&sink, record_of(&first), &stats);
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(event) => send_to_sink(&sink, record_of(&event), &stats),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    model = %first.model,
                    lost = n,
                    "model events came faster than they were stored; the log has them all"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The event that records which version a start activated.
pub(crate) fn started(lifecycle: &ModelLifecycle) -> ModelEvent {
    ModelEvent {
        model: lifecycle.name().to_string(),
        event: ModelEventKind::Activated,
        version: lifecycle.serving().version.to_string(),
        previous: None,
        user: "config".to_string(),
        reason: None,
    }
}

fn record_of(event: &ModelEvent) -> Record {
    Record::ModelEvent(Arc::new(ModelEventRecord {
        model: Arc::from(event.model.as_str()),
        event: event.event.as_str(),
        version: event.version.clone(),
        previous: event.previous.clone(),
        user: event.user.clone(),
        reason: event.reason.clone(),
        at: SystemTime::now(),
    }))
}
