//! The InfluxDB sink running in the test process against a real server
//! (victoria-metrics or InfluxDB 1.x), with the helpers the sink tests
//! share.

use std::time::Duration;

use anyhow::{bail, Result};
use ironbridge_connectors::influx::{
    InfluxSink, InfluxSinkConfig, InfluxSinkStats, InfluxWriter, LineWriter,
};
use ironbridge_connectors::{Quality, Record, TagReading, TagValue};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous: conditions are awaited, never timed.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The connectors' logs in the test output (shown for a failing test).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("ironbridge_connectors=debug")
        .with_test_writer()
        .try_init();
}

/// A Good reading of `tag`.
pub fn good(tag: &str, value: TagValue) -> TagReading {
    TagReading {
        tag: tag.into(),
        value: Some(value),
        quality: Quality::Good,
        status: None,
    }
}

/// A sink task fed through its channel.
pub struct RunningSink {
    pub tx: mpsc::Sender<Record>,
    pub stats: InfluxSinkStats,
    pub cancel: CancellationToken,
    pub task: JoinHandle<()>,
}

impl RunningSink {
    /// Starts the sink with the production writer for `config` (which must
    /// be valid).
    pub fn start(config: InfluxSinkConfig) -> Result<Self> {
        let problems = config.validate("influx");
        assert!(problems.is_empty(), "{problems:?}");
        let writer = InfluxWriter::new(&config)?;
        Self::start_with(config, writer)
    }

    /// Starts the sink with `writer` in front of the server.
    pub fn start_with<W: LineWriter>(config: InfluxSinkConfig, writer: W) -> Result<Self> {
        let (tx, rx) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        let (stats, task) = InfluxSink::spawn(config, writer, rx, cancel.clone())?;
        Ok(Self {
            tx,
            stats,
            cancel,
            task,
        })
    }

    pub async fn send(&self, records: impl IntoIterator<Item = Record>) -> Result<()> {
        for record in records {
            self.tx.send(record).await?;
        }
        Ok(())
    }

    /// Cancels the sink and waits for its final flush.
    pub async fn stop(self) -> Result<InfluxSinkStats> {
        self.cancel.cancel();
        self.task.await?;
        Ok(self.stats)
    }
}

/// Polls `condition` until it holds; fails with `what` after [`DEADLINE`].
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            bail!("gave up waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
