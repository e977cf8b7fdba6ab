//! The InfluxDB sink task: records in, batches of line protocol out, through
//! outages.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ironbridge_metrics::{Counter, Gauge, MetricsRegistry};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::buffer::{BatchOutcome, LineBuffer, OutageBuffer};
use super::config::{BufferKind, InfluxSinkConfig, SpoolFsync};
use super::line_protocol::encode_record_tagged_into;
use super::spool::{is_disk_full, DiskSpool, FsyncPolicy};
use super::writer::{LineWriter, WriteError};
use crate::backoff::Backoff;
use crate::error::ConnectorError;
use crate::scan::Record;

/// Records taken from the queue before one commit to the spool (one write,
/// one fsync with `spool_fsync = "batch"`).
const MAX_RECORDS_PER_COMMIT: usize = 4096;

/// How long the final flush on shutdown may take: long enough for a few
/// batches to a reachable server, short enough not to hold up a restart.
pub const SHUTDOWN_FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// A backlog's larger request is sized to take at most this share of
/// `request_timeout_ms` at the last write's pace: room for a store that
/// slows down as the request grows.
const BACKLOG_SHARE_OF_TIMEOUT: f64 = 0.25;

/// Warnings about lost lines repeat at most this often (with running totals),
/// so a long outage does not flood the log.
const LOSS_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The longest Retry-After honoured; a server asking for more is retried
/// after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The family of every line that will never reach InfluxDB, by `reason`.
pub const POINTS_DROPPED: &str = "ironbridge_sink_points_dropped";
pub const POINTS_DROPPED_HELP: &str = "Lines that will never reach InfluxDB, by reason.";

/// Counters of one sink, cheap to clone and read from anywhere (metrics,
/// health, tests): handles of the gateway's metrics facade, put into its
/// registry by [`InfluxSinkStats::register`].
#[derive(Debug, Clone, Default)]
pub struct InfluxSinkStats(Arc<StatsCounters>);

#[derive(Debug, Default)]
struct StatsCounters {
    lines_written: Counter,
    batches_written: Counter,
    write_failures: Counter,
    batches_rejected: Counter,
    lines_dropped_overflow: Counter,
    lines_dropped_rejected: Counter,
    records_unencodable: Counter,
    buffered_lines: Gauge,
    lines_lost_at_shutdown: Counter,
    lines_dead_lettered: Counter,
    auth_failures: Counter,
    batches_split: Counter,
    spool_bytes: Gauge,
    spool_corrupt_regions: Counter,
    spool_errors: Counter,
    lines_recovered: Counter,
    lines_kept_at_shutdown: Counter,
    /// 1 while the last write attempt failed and its batch waits for a
    /// retry.
    failing: Gauge,
    /// 1 while the last answer was 401 or 403.
    unauthorized: Gauge,
}

impl InfluxSinkStats {
    /// Puts these counters into `registry` (the points dropped go into
    /// `ironbridge_sink_points_dropped{reason}`, where the gateway adds its
    /// own `channel_full`).
    pub fn register(&self, registry: &MetricsRegistry) {
        let c = &*self.0;
        let counters: [(&'static str, &'static str, &Counter); 10] = [
            (
                "ironbridge_sink_lines_written",
                "Lines InfluxDB accepted.",
                &c.lines_written,
            ),
            (
                "ironbridge_sink_batches_written",
                "Batches InfluxDB accepted.",
                &c.batches_written,
            ),
            (
                "ironbridge_sink_batches_split",
                "Batches split in two after a 400, 422 or 413.",
                &c.batches_split,
            ),
            (
                "ironbridge_sink_batches_rejected",
                "Batches InfluxDB refused for good (their lines are dropped, reason rejected).",
                &c.batches_rejected,
            ),
            (
                "ironbridge_sink_write_failures",
                "Write attempts that failed and kept their batch for a retry.",
                &c.write_failures,
            ),
            (
                "ironbridge_sink_auth_failures",
                "Writes answered 401 or 403 (batch kept).",
                &c.auth_failures,
            ),
            (
                "ironbridge_spool_corrupt_regions",
                "Corrupt spool records cut out into the spool's quarantine/ folder.",
                &c.spool_corrupt_regions,
            ),
            (
                "ironbridge_spool_errors",
                "Spool reads and writes that failed (not counting a full disk).",
                &c.spool_errors,
            ),
            (
                "ironbridge_spool_lines_recovered",
                "Lines found in the spool at start, delivered first.",
                &c.lines_recovered,
            ),
            (
                "ironbridge_spool_lines_kept_at_shutdown",
                "Lines left in the spool at shutdown for the next start.",
                &c.lines_kept_at_shutdown,
            ),
        ];
        for (name, help, counter) in counters {
            registry.add_counter(name, help, Vec::new(), counter);
        }
        for (reason, counter) in [
            ("overflow", &c.lines_dropped_overflow),
            ("rejected", &c.lines_dropped_rejected),
            ("dead_letter", &c.lines_dead_lettered),
            ("unencodable", &c.records_unencodable),
            ("shutdown", &c.lines_lost_at_shutdown),
        ] {
            registry.add_counter(
                POINTS_DROPPED,
                POINTS_DROPPED_HELP,
                vec![("reason", reason.to_string())],
                counter,
            );
        }
        registry.add_gauge(
            "ironbridge_sink_buffered_lines",
            "Lines waiting in the outage buffer.",
            Vec::new(),
            &c.buffered_lines,
        );
        registry.add_gauge(
            "ironbridge_spool_bytes",
            "Bytes the InfluxDB disk spool takes (0 with buffer = \"memory\").",
            Vec::new(),
            &c.spool_bytes,
        );
        let failing = c.failing.clone();
        registry.add_computed_gauge(
            "ironbridge_sink_up",
            "1 while InfluxDB takes data, 0 while writes fail.",
            move || vec![(Vec::new(), if failing.get_bool() { 0.0 } else { 1.0 })],
        );
        registry.add_gauge(
            "ironbridge_sink_unauthorized",
            "1 while InfluxDB refuses the credentials (401/403; data kept), an alarm.",
            Vec::new(),
            &c.unauthorized,
        );
    }

    /// Lines the server accepted.
    pub fn lines_written(&self) -> u64 {
        self.0.lines_written.get()
    }
    /// Batches the server accepted.
    pub fn batches_written(&self) -> u64 {
        self.0.batches_written.get()
    }
    /// Write attempts that failed in a retryable way (unreachable, timeout,
    /// 5xx, 429, 401/403); the batch was kept.
    pub fn write_failures(&self) -> u64 {
        self.0.write_failures.get()
    }
    /// Batches the server refused for good (4xx).
    pub fn batches_rejected(&self) -> u64 {
        self.0.batches_rejected.get()
    }
    /// Oldest lines dropped because the buffer was full.
    pub fn lines_dropped_overflow(&self) -> u64 {
        self.0.lines_dropped_overflow.get()
    }
    /// Lines in batches the server refused for good.
    pub fn lines_dropped_rejected(&self) -> u64 {
        self.0.lines_dropped_rejected.get()
    }
    /// Records that line protocol cannot carry (e.g. a line break in a name).
    pub fn records_unencodable(&self) -> u64 {
        self.0.records_unencodable.get()
    }
    /// Lines waiting in memory now (gauge).
    pub fn buffered_lines(&self) -> u64 {
        self.0.buffered_lines.get_u64()
    }
    /// Lines still buffered in memory when the sink stopped (the server
    /// unreachable or the final flush out of time): lost. (A disk spool
    /// keeps them: [`InfluxSinkStats::lines_kept_at_shutdown`].)
    pub fn lines_lost_at_shutdown(&self) -> u64 {
        self.0.lines_lost_at_shutdown.get()
    }

    /// Lines the server refused one by one (400/422, or 413 alone), put in
    /// the dead-letter file (or, past its limit or without one, only
    /// logged).
    pub fn lines_dead_lettered(&self) -> u64 {
        self.0.lines_dead_lettered.get()
    }
    /// Writes answered 401 or 403; their batches were kept.
    pub fn auth_failures(&self) -> u64 {
        self.0.auth_failures.get()
    }
    /// Batches split in two after a 400, 422 or 413 to isolate what the
    /// server refused.
    pub fn batches_split(&self) -> u64 {
        self.0.batches_split.get()
    }

    /// Bytes the disk spool takes now (gauge; 0 with a memory buffer).
    pub fn spool_bytes(&self) -> u64 {
        self.0.spool_bytes.get_u64()
    }
    /// Corrupt regions of the spool cut out into its `quarantine/` folder.
    pub fn spool_corrupt_regions(&self) -> u64 {
        self.0.spool_corrupt_regions.get()
    }
    /// Spool reads and writes that failed for another reason than a full
    /// disk (a write's lines are then dropped and counted as overflow).
    pub fn spool_errors(&self) -> u64 {
        self.0.spool_errors.get()
    }
    /// Lines found in the spool at start, delivered first.
    pub fn lines_recovered(&self) -> u64 {
        self.0.lines_recovered.get()
    }
    /// Lines left in the spool when the sink stopped, for the next start.
    pub fn lines_kept_at_shutdown(&self) -> u64 {
        self.0.lines_kept_at_shutdown.get()
    }

    /// Whether the last write attempt failed in a way that keeps the data
    /// (unreachable, 5xx, 401/403...): the server is not taking data now.
    pub fn is_failing(&self) -> bool {
        self.0.failing.get_bool()
    }

    /// Whether the last answer was 401 or 403 (credentials refused).
    pub fn is_unauthorized(&self) -> bool {
        self.0.unauthorized.get_bool()
    }
}

/// Writes scans and predictions to InfluxDB in batches.
///
/// Lines accumulate in a bounded outage buffer, a disk spool or memory
/// ([`OutageBuffer`]); a batch is written when `batch_max_lines` are
/// buffered or the oldest has waited `flush_interval_ms`, and holds up to
/// `backlog_batch_max_lines` while more than `batch_max_lines` wait
/// (within what the last write's pace carries in a quarter of
/// `request_timeout_ms`). Every answer has its action ([`WriteError`]): a
/// batch that failed in a retryable way (or with 401/403, raised as an
/// alarm) stays at the head of the buffer and is retried with capped
/// exponential backoff and jitter, no sooner than a Retry-After, while new
/// records keep being accepted; when the buffer is full the oldest lines are
/// dropped and counted. A batch refused for its content (400, 422, 413) is
/// split in halves until the refused line is alone, which goes to the
/// dead-letter file. A batch rejected otherwise is logged with the server's
/// answer, counted and dropped.
pub struct InfluxSink;

impl InfluxSink {
    /// Starts the sink task, after opening the spool (with
    /// `buffer = "disk"`), whose recovered lines are delivered first. It
    /// ends when `cancel` fires or every sender of `rx` is gone: it then
    /// takes what is already in `rx`, tries a final flush for at most
    /// [`SHUTDOWN_FLUSH_DEADLINE`], and leaves what is left in the spool
    /// (or, in memory, logs and counts it as lost).
    ///
    /// Fails only if the spool folder cannot be used (permissions, another
    /// process holds it); never because of what is in it.
    pub fn spawn<W: LineWriter>(
        config: InfluxSinkConfig,
        writer: W,
        rx: mpsc::Receiver<Record>,
        cancel: CancellationToken,
    ) -> Result<(InfluxSinkStats, JoinHandle<()>), ConnectorError> {
        let stats = InfluxSinkStats::default();
        let buffer = match (config.buffer, &config.spool_dir) {
            (BufferKind::Disk, Some(dir)) => {
                let fsync = match config.spool_fsync {
                    SpoolFsync::Batch => FsyncPolicy::EveryCommit,
                    SpoolFsync::IntervalMs => {
                        FsyncPolicy::Interval(Duration::from_millis(config.spool_fsync_interval_ms))
                    }
                };
                let (spool, recovery) = match DiskSpool::open(dir, config.spool_max_bytes, fsync) {
                    Ok(opened) => opened,
                    // A full disk is a full spool, not a reason to stop the
                    // gateway: buffer in memory until the next start.
                    Err(e) if is_disk_full(&e) => {
                        stats.0.spool_errors.inc();
                        tracing::error!(
                            spool = %dir.display(),
                            error = %e,
                            buffer_max_lines = config.buffer_max_lines,
                            "ALARM: the disk of the InfluxDB spool is full; buffering in memory \
                             until the gateway restarts (lines still in the spool wait for then)"
                        );
                        let buffer = OutageBuffer::Memory(LineBuffer::new(config.buffer_max_lines));
                        return Ok(Self::start(config, writer, rx, cancel, stats, buffer));
                    }
                    Err(e) => {
                        return Err(ConnectorError::Spool {
                            dir: dir.display().to_string(),
                            reason: e.to_string(),
                        })
                    }
                };
                stats.0.lines_recovered.add(recovery.lines as u64);
                stats
                    .0
                    .spool_corrupt_regions
                    .add(recovery.corrupt_regions as u64);
                if recovery.lines > 0 || recovery.corrupt_regions > 0 || recovery.torn_bytes > 0 {
                    tracing::info!(
                        spool = %dir.display(),
                        lines = recovery.lines,
                        corrupt_regions = recovery.corrupt_regions,
                        torn_bytes = recovery.torn_bytes,
                        ack_lost = recovery.ack_lost,
                        "InfluxDB spool opened with lines from before; they are delivered first"
                    );
                }
                OutageBuffer::Disk(Box::new(spool))
            }
            (BufferKind::Disk, None) => {
                return Err(ConnectorError::Config(
                    "influx.spool_dir: required with buffer = \"disk\"".into(),
                ))
            }
            (BufferKind::Memory, _) => {
                OutageBuffer::Memory(LineBuffer::new(config.buffer_max_lines))
            }
        };
        Ok(Self::start(config, writer, rx, cancel, stats, buffer))
    }

    fn start<W: LineWriter>(
        config: InfluxSinkConfig,
        writer: W,
        rx: mpsc::Receiver<Record>,
        cancel: CancellationToken,
        stats: InfluxSinkStats,
        buffer: OutageBuffer,
    ) -> (InfluxSinkStats, JoinHandle<()>) {
        let task = SinkTask {
            buffer,
            backoff: Backoff::new(config.backoff),
            config,
            writer: Arc::new(writer),
            stats: stats.clone(),
            flush_at: None,
            retry_at: None,
            overflow_warned_at: None,
            unencodable_warned_at: None,
            spool_error_warned_at: None,
            split_limit: None,
            write_started: None,
            write_pace: None,
            dead_letter_bytes: None,
            auth_alarm: false,
        };
        task.update_gauge();
        let handle = tokio::spawn(task.run(rx, cancel));
        (stats, handle)
    }
}

type WriteFuture = Pin<Box<dyn Future<Output = Result<(), WriteError>> + Send>>;

struct SinkTask<W> {
    config: InfluxSinkConfig,
    writer: Arc<W>,
    buffer: OutageBuffer,
    stats: InfluxSinkStats,
    /// When the buffered lines are due even if no full batch has gathered.
    flush_at: Option<Instant>,
    /// Set after a retryable failure: no write before then.
    retry_at: Option<Instant>,
    /// Retry delays; its failure count is the number of failed attempts
    /// since the last write that reached the server.
    backoff: Backoff,
    overflow_warned_at: Option<Instant>,
    unencodable_warned_at: Option<Instant>,
    spool_error_warned_at: Option<Instant>,
    /// While isolating a refused line: the size of the next batches.
    split_limit: Option<usize>,
    /// When the batch being written was sent.
    write_started: Option<Instant>,
    /// Lines a second the last write carried, from its send to its 2xx;
    /// `None` until one succeeds and again after a failure. Bounds the
    /// larger requests of a backlog.
    write_pace: Option<f64>,
    /// Size of the dead-letter file, read on first use.
    dead_letter_bytes: Option<u64>,
    /// A 401/403 alarm is raised (logged once until a write succeeds).
    auth_alarm: bool,
}

impl<W: LineWriter> SinkTask<W> {
    async fn run(mut self, mut rx: mpsc::Receiver<Record>, cancel: CancellationToken) {
        let mut in_flight: Option<WriteFuture> = None;
        loop {
            let next_write = match in_flight {
                Some(_) => None,
                None => self.next_write_at(),
            };
            let sync_at = self.buffer.sync_due_at().map(Instant::from_std);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                result = await_if_some(in_flight.as_mut()) => {
                    in_flight = None;
                    self.settle(result);
                }
                record = rx.recv() => match record {
                    Some(record) => {
                        self.accept(&record);
                        // Whatever else is queued goes in the same commit.
                        for _ in 1..MAX_RECORDS_PER_COMMIT {
                            match rx.try_recv() {
                                Ok(record) => self.accept(&record),
                                Err(_) => break,
                            }
                        }
                        self.commit();
                    }
                    None => break,
                },
                _ = sleep_until_if_some(sync_at) => {
                    let buffer = &mut self.buffer;
                    if let Err(e) = off_the_runtime(true, || buffer.sync()) {
                        self.spool_error(&e, 0);
                    }
                }
                _ = sleep_until_if_some(next_write) => {
                    in_flight = self.start_write();
                }
            }
        }
        while let Ok(record) = rx.try_recv() {
            self.accept(&record);
        }
        self.commit();
        self.final_flush(in_flight).await;
    }

    fn accept(&mut self, record: &Record) {
        let point_tags = &self.config.point_tags;
        match self
            .buffer
            .push_with(|out| encode_record_tagged_into(record, point_tags, out))
        {
            Ok(Some(dropped)) => {
                if self.flush_at.is_none() {
                    self.flush_at = Some(Instant::now() + self.config.flush_interval());
                }
                self.count_overflow(dropped);
            }
            Ok(None) => {}
            Err(e) => {
                self.stats.0.records_unencodable.inc();
                self.update_gauge();
                if due(&mut self.unencodable_warned_at) {
                    tracing::warn!(
                        error = %e,
                        total = self.stats.records_unencodable(),
                        "InfluxDB sink skips a record it cannot encode"
                    );
                }
            }
        }
    }

    /// Makes the accepted lines durable (disk spool); a full disk makes
    /// room by dropping the oldest lines, like a full spool.
    fn commit(&mut self) {
        let buffer = &mut self.buffer;
        let outcome = off_the_runtime(buffer.is_on_disk(), || buffer.commit());
        self.count_overflow(outcome.evicted + outcome.dropped);
        if let Some(error) = outcome.error {
            self.spool_error(&error, outcome.dropped);
        }
        self.update_gauge();
    }

    fn spool_error(&mut self, error: &std::io::Error, lines_dropped: usize) {
        self.stats.0.spool_errors.inc();
        if due(&mut self.spool_error_warned_at) {
            tracing::error!(
                error = %error,
                lines_dropped,
                total_errors = self.stats.spool_errors(),
                "InfluxDB spool cannot write or read its folder"
            );
        }
    }

    fn next_write_at(&self) -> Option<Instant> {
        if self.buffer.is_empty() {
            None
        } else if self.retry_at.is_some() {
            self.retry_at
        } else if self.buffer.len() >= self.config.batch_max_lines {
            Some(Instant::now())
        } else {
            // Lines left over from a full batch have waited long enough.
            Some(self.flush_at.unwrap_or_else(Instant::now))
        }
    }

    /// Lines in the next batch: fewer while a refused line is being
    /// isolated, more while more than a batch waits. One request is out at
    /// a time, so a backlog behind a busy store drains faster in fewer,
    /// larger requests (BENCHMARKS.md §37).
    fn next_batch_lines(&self) -> usize {
        match self.split_limit {
            Some(limit) => limit,
            None if self.buffer.len() > self.config.batch_max_lines => self.backlog_batch_lines(),
            None => self.config.batch_max_lines,
        }
    }

    /// A backlog's batch: up to `backlog_batch_max_lines`, but only as many
    /// lines as the last write's pace carries in a quarter of
    /// `request_timeout_ms`, and `batch_max_lines` until a write has
    /// succeeded since the last failure. A thin link to a remote store is
    /// not given a request it cannot carry in time (which would time out,
    /// and be retried, for ever).
    fn backlog_batch_lines(&self) -> usize {
        let batch = self.config.batch_max_lines;
        let Some(pace) = self.write_pace else {
            return batch;
        };
        let in_time = pace * self.config.request_timeout().as_secs_f64() * BACKLOG_SHARE_OF_TIMEOUT;
        // `as` saturates: an unmeasurably fast write gives usize::MAX.
        (in_time as usize).clamp(batch, self.config.backlog_batch_lines().max(batch))
    }

    fn start_write(&mut self) -> Option<WriteFuture> {
        let body = match self.buffer.start_batch(self.next_batch_lines()) {
            Ok(body) => body,
            Err(e) => {
                // Reading the spool failed: try again later, as after a
                // failed write.
                self.spool_error(&e, 0);
                self.retry_at = Some(Instant::now() + self.backoff.next_delay());
                None
            }
        };
        self.update_gauge();
        let body = body?;
        self.retry_at = None;
        self.flush_at = None;
        self.write_started = Some(Instant::now());
        let writer = Arc::clone(&self.writer);
        Some(Box::pin(async move { writer.write(body).await }))
    }

    /// Books the outcome of the batch being written. Returns whether the
    /// failure was retryable.
    fn settle(&mut self, result: Result<(), WriteError>) -> bool {
        let stats = self.stats.clone();
        let counters = &stats.0;
        let batch_len = self.buffer.batch_len();
        let keeps_data = matches!(
            result,
            Err(WriteError::Retryable(_)
                | WriteError::Throttled { .. }
                | WriteError::Unauthorized(_))
        );
        counters.failing.set_bool(keeps_data);
        counters
            .unauthorized
            .set_bool(matches!(result, Err(WriteError::Unauthorized(_))));
        let took = self.write_started.take().map(|started| started.elapsed());
        self.write_pace = match (&result, took) {
            (Ok(()), Some(took)) => Some(batch_len as f64 / took.as_secs_f64()),
            _ => None,
        };
        let retryable = match result {
            Ok(()) => {
                let settled = self.buffer.finish_batch(BatchOutcome::Delivered);
                counters.lines_written.add(settled.settled as u64);
                counters.batches_written.inc();
                if self.backoff.failures() > 0 {
                    tracing::info!(
                        failed_attempts = self.backoff.failures(),
                        buffered = self.buffer.len(),
                        "InfluxDB write succeeded again"
                    );
                }
                self.backoff.reset();
                if self.auth_alarm {
                    self.auth_alarm = false;
                    tracing::info!("InfluxDB accepts the gateway's credentials again");
                }
                false
            }
            Err(WriteError::BadLines(reason) | WriteError::TooLarge(reason)) if batch_len > 1 => {
                // Halve until the refused line is alone; the good halves
                // are written on the way (a line written twice overwrites
                // itself: same series, same timestamp).
                let settled = self.buffer.finish_batch(BatchOutcome::Failed);
                self.count_overflow(settled.dropped_overflow);
                counters.batches_split.inc();
                let half = batch_len.div_ceil(2);
                tracing::debug!(lines = batch_len, next = half, server_answer = %reason, "InfluxDB refused a batch; splitting it");
                self.split_limit = Some(half);
                false
            }
            Err(WriteError::BadLines(reason) | WriteError::TooLarge(reason)) => {
                let line = self.buffer.single_batch_line();
                let settled = self.buffer.finish_batch(BatchOutcome::Rejected);
                counters.lines_dead_lettered.add(settled.settled as u64);
                if let Some(line) = line {
                    self.dead_letter(&line, &reason);
                }
                self.split_limit = None;
                self.backoff.reset();
                false
            }
            Err(WriteError::Rejected(reason)) => {
                let settled = self.buffer.finish_batch(BatchOutcome::Rejected);
                counters.lines_dropped_rejected.add(settled.settled as u64);
                counters.batches_rejected.inc();
                tracing::error!(
                    lines = settled.settled,
                    total_rejected = self.stats.lines_dropped_rejected(),
                    server_answer = %reason,
                    "InfluxDB rejected a batch; its lines are dropped"
                );
                self.backoff.reset();
                false
            }
            Err(
                error @ (WriteError::Retryable(_)
                | WriteError::Throttled { .. }
                | WriteError::Unauthorized(_)),
            ) => {
                let settled = self.buffer.finish_batch(BatchOutcome::Failed);
                counters.write_failures.inc();
                self.count_overflow(settled.dropped_overflow);
                let mut delay = self.backoff.next_delay();
                if let WriteError::Throttled { retry_after, .. } = &error {
                    // The server's word, within reason.
                    delay = delay.max((*retry_after).min(MAX_RETRY_AFTER));
                }
                self.retry_at = Some(Instant::now() + delay);
                if let WriteError::Unauthorized(reason) = &error {
                    counters.auth_failures.inc();
                    if !self.auth_alarm {
                        self.auth_alarm = true;
                        tracing::error!(
                            server_answer = %reason,
                            buffered = self.buffer.len(),
                            "ALARM: InfluxDB refuses the gateway's credentials; data is kept and \
                             retried, and lost only when the buffer overflows"
                        );
                    }
                }
                tracing::warn!(
                    error = %error,
                    attempt = self.backoff.failures(),
                    retry_in = ?delay,
                    buffered = self.buffer.len(),
                    "InfluxDB write failed; the batch is kept and retried"
                );
                true
            }
        };
        if !self.buffer.is_empty() && self.flush_at.is_none() {
            self.flush_at = Some(Instant::now());
        }
        self.update_gauge();
        retryable
    }

    /// Appends a refused line to the dead-letter file after a comment with
    /// the time and the server's answer; past the file's limit (or without
    /// one) the line is only logged.
    fn dead_letter(&mut self, line: &str, reason: &str) {
        let written = self.config.dead_letter_path.as_deref().and_then(|path| {
            let size = *self.dead_letter_bytes.get_or_insert_with(|| {
                std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
            });
            let answer = reason.replace(['\n', '\r'], " ");
            let entry = format!(
                "# {} {answer}\n{line}\n",
                httpdate::fmt_http_date(std::time::SystemTime::now())
            );
            if size + entry.len() as u64 > self.config.dead_letter_max_bytes {
                return None;
            }
            match append(path, &entry) {
                Ok(()) => {
                    self.dead_letter_bytes = Some(size + entry.len() as u64);
                    Some(path)
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot write the dead-letter file");
                    None
                }
            }
        });
        match written {
            Some(path) => tracing::error!(
                server_answer = %reason,
                dead_letter = %path.display(),
                total = self.stats.lines_dead_lettered(),
                "InfluxDB refused a line; it is in the dead-letter file"
            ),
            None => tracing::error!(
                server_answer = %reason,
                line,
                total = self.stats.lines_dead_lettered(),
                "InfluxDB refused a line; dropped (no room in a dead-letter file)"
            ),
        }
    }

    fn count_overflow(&mut self, dropped: usize) {
        if dropped == 0 {
            return;
        }
        self.stats.0.lines_dropped_overflow.add(dropped as u64);
        if due(&mut self.overflow_warned_at) {
            tracing::warn!(
                total_dropped = self.stats.lines_dropped_overflow(),
                buffer_max_lines = self.config.buffer_max_lines,
                "InfluxDB sink buffer is full; dropping the oldest lines"
            );
        }
    }

    fn update_gauge(&self) {
        let counters = &self.stats.0;
        counters.buffered_lines.set_u64(self.buffer.len() as u64);
        counters.spool_bytes.set_u64(self.buffer.spool_bytes());
    }

    /// Waits for the write under way, then writes what is left until the
    /// buffer is empty, a retryable failure, or the deadline.
    async fn final_flush(&mut self, in_flight: Option<WriteFuture>) {
        let flushed = tokio::time::timeout(SHUTDOWN_FLUSH_DEADLINE, async {
            if let Some(write) = in_flight {
                self.settle(write.await);
            }
            while let Ok(Some(body)) = self.buffer.start_batch(self.next_batch_lines()) {
                let result = self.writer.write(body).await;
                if self.settle(result) {
                    break;
                }
            }
        })
        .await;
        // A write cut off by the deadline counts as failed.
        let settled = self.buffer.finish_batch(BatchOutcome::Failed);
        let closed = self.buffer.close();
        let lost = closed.lost + settled.dropped_overflow;
        self.stats.0.lines_lost_at_shutdown.add(lost as u64);
        self.stats.0.lines_kept_at_shutdown.add(closed.kept as u64);
        if let Some(error) = &closed.error {
            self.spool_error(error, closed.lost);
        }
        self.update_gauge();
        if lost > 0 {
            tracing::warn!(
                lines = lost,
                deadline_reached = flushed.is_err(),
                "InfluxDB sink stopped with lines that could not be delivered"
            );
        }
        if closed.kept > 0 {
            tracing::info!(
                lines = closed.kept,
                deadline_reached = flushed.is_err(),
                "InfluxDB sink stopped; undelivered lines stay in the spool for the next start"
            );
        } else if lost == 0 {
            tracing::info!(
                lines_written = self.stats.lines_written(),
                "InfluxDB sink stopped with everything delivered"
            );
        }
    }
}

fn append(path: &std::path::Path, entry: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(entry.as_bytes())
}

/// Runs `io` (a write or an fsync to the spool, which can take tens of ms
/// on an SD card) so that it does not hold up the runtime's other tasks:
/// on a multi-threaded runtime they move to another worker meanwhile. On a
/// current-thread runtime (tests) it simply runs.
fn off_the_runtime<T>(blocks: bool, io: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if blocks && multi_thread {
        tokio::task::block_in_place(io)
    } else {
        io()
    }
}

/// True (and restarts the interval) if the last warning is old enough.
fn due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    match *last {
        Some(at) if now.duration_since(at) < LOSS_WARNING_INTERVAL => false,
        _ => {
            *last = Some(now);
            true
        }
    }
}

async fn await_if_some(write: Option<&mut WriteFuture>) -> Result<(), WriteError> {
    match write {
        Some(write) => write.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_if_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
