//! Batched inference: one worker thread per model gathers queued rows into
//! batches and runs one forward per batch.
//!
//! Callers submit rows through a cloneable [`InferenceHandle`], one at a
//! time or several that arrived together; the queue is bounded and full
//! means the newest request is rejected and counted. Dropping every handle
//! stops the worker.
//!
//! A lone row of a fast in-process model skips the queue (unless a batching
//! window `max_wait` is set): when the previous request came at least
//! [`LONE_ROW_GAP`] before or every earlier request's answer has been
//! taken (whoever made it), and nothing is queued, the inference thread is
//! idle and the model's last forward took at most [`INLINE_FORWARD_MAX`],
//! the caller runs the forward itself. Such a row would run alone on the
//! inference thread anyway, and the two thread hand-offs (there and back)
//! cost more than a small model's forward (BENCHMARKS.md §1, §34). Rows
//! submitted closer together while earlier answers are still held queue,
//! so they can share a forward: on issue 10's workload, running every row
//! inline at 10,000 rows/s cost more CPU per value than batching them
//! (BENCHMARKS.md §12).
//!
//! Rows submitted together ([`InferenceHandle::submit_many`], at most
//! `max_batch`) are a batch already: they run on the caller's thread as one
//! forward under the same conditions, except that they need not be lone and
//! the bound applies to the whole forward, estimated from the last timed
//! forward of as many rows or more (in proportion to the rows from a
//! smaller one when none was). Their answers are there at
//! once, with no channel.
//!
//! A batch in one flat buffer ([`InferenceHandle::submit_batch`]) is one
//! request with one answer, the outputs row after row: nothing is allocated
//! per row, so its cost stays close to libtorch's own forward
//! (BENCHMARKS.md §16). When it queues it takes one place in the queue and
//! is never split: the worker adds it to a batch only whole.

use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
pub use ironbridge_metrics::HistogramSnapshot;
use ironbridge_metrics::{Counter, Histogram, MetricsRegistry};
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::sync::{mpsc, oneshot};

use crate::error::ModelError;
use crate::manifest::ModelManifest;
use crate::registry::ModelVersion;
use crate::remote::{RemoteBackend, RemoteModel, RemoteOutcome};
use crate::torch_backend::TorchModel;

/// How a service batches, queues and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferenceOptions {
    /// Most rows run in one forward.
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch, counted from
    /// the first request of the batch. At low request rates this is added
    /// latency; zero runs whatever is queued at once.
    pub max_wait: Duration,
    /// Requests that may wait in the queue; beyond it the newest is rejected.
    pub queue_capacity: usize,
    /// Requests accepted per second (bursts up to the same number); `None`
    /// accepts all.
    pub rate_limit_per_s: Option<NonZeroU32>,
    /// libtorch intra-op threads for this model's forwards: its worker's
    /// and the rows run inline on a caller's thread (OpenMP's count is per
    /// thread; a thread running forwards of several models takes each
    /// model's count before its forward).
    pub intra_op_threads: usize,
}

impl Default for InferenceOptions {
    fn default() -> Self {
        Self {
            max_batch: 64,
            // Zero: no latency floor at low rates, and under load batches
            // still form from what queues while the previous one runs
            // (BENCHMARKS.md: a 5 ms window saved at most a few per cent of
            // CPU, at saturation).
            max_wait: Duration::ZERO,
            queue_capacity: 1024,
            rate_limit_per_s: None,
            intra_op_threads: 1,
        }
    }
}

/// Why [`InferenceHandle::submit`] did not queue a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full; the row was dropped and counted.
    QueueFull,
    /// Over the configured rate; the row was dropped and counted.
    RateLimited,
    /// The row does not have one value per model input.
    RowLength { expected: usize, actual: usize },
    /// A flat batch's length is not a whole number of rows.
    BatchLength { n_inputs: usize, actual: usize },
    /// A flat batch has more rows than the service's `max_batch`.
    TooManyRows { max_batch: usize, actual: usize },
    /// The worker is gone (it panicked); nothing will be answered.
    Stopped,
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::QueueFull => f.write_str("inference queue full; request dropped"),
            SubmitError::RateLimited => {
                f.write_str("inference rate limit reached; request dropped")
            }
            SubmitError::RowLength { expected, actual } => {
                write!(f, "row has {actual} values but the model takes {expected}")
            }
            SubmitError::BatchLength { n_inputs, actual } => write!(
                f,
                "batch has {actual} values, not a whole number of rows of {n_inputs} (the model's inputs)"
            ),
            SubmitError::TooManyRows { max_batch, actual } => write!(
                f,
                "batch has {actual} rows but the service runs at most {max_batch} (max_batch) in one forward"
            ),
            SubmitError::Stopped => f.write_str("inference service stopped"),
        }
    }
}

// A rejection is an outcome callers count and move past, not a failure of
// the crate, so it stays apart from `ModelError`.
impl std::error::Error for SubmitError {}

/// Lifecycle of a model as shown on the OPC UA `State` node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    Loading,
    Serving,
    Failed,
    /// The service shut down because every handle was dropped.
    Stopped,
    /// A remote version whose engine failed its last request (or readiness
    /// check): batches are skipped until it answers again.
    RemoteUnavailable,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Loading => "Loading",
            ModelState::Serving => "Serving",
            ModelState::Failed => "Failed",
            ModelState::Stopped => "Stopped",
            ModelState::RemoteUnavailable => "RemoteUnavailable",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => ModelState::Loading,
            1 => ModelState::Serving,
            2 => ModelState::Failed,
            4 => ModelState::RemoteUnavailable,
            _ => ModelState::Stopped,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            ModelState::Loading => 0,
            ModelState::Serving => 1,
            ModelState::Failed => 2,
            ModelState::Stopped => 3,
            ModelState::RemoteUnavailable => 4,
        }
    }
}

impl fmt::Display for ModelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the OPC UA nodes `Models/<model>/...` show. Version fields are
/// `None` while no version is loaded (a gateway builds this itself for
/// `Loading` and `Failed`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelStatus {
    pub name: String,
    pub active_version: Option<String>,
    pub sha256: Option<String>,
    pub loaded_at: Option<SystemTime>,
    pub state: ModelState,
    /// Why the state is `Failed` or `RemoteUnavailable`, for the plant
    /// engineer.
    pub detail: Option<String>,
    pub inference_count: u64,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Only for a version served by a remote engine.
    pub remote: Option<RemoteEngineStatus>,
}

/// A remote engine as the OPC UA `Models/<model>/Remote/` nodes show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEngineStatus {
    pub url: String,
    /// The last request (or readiness check) was answered.
    pub reachable: bool,
    /// Why the last one failed; `None` once the engine answers again.
    pub last_error: Option<String>,
}

/// Counters of one service; clones share them.
#[derive(Debug, Clone, Default)]
pub struct InferenceStats {
    counters: Arc<Counters>,
}

#[derive(Debug)]
struct Counters {
    requests: Counter,
    inferences: Counter,
    batches: Counter,
    rejected_queue_full: Counter,
    rejected_rate_limited: Counter,
    skipped_missing: Counter,
    skipped_bad_quality: Counter,
    skipped_not_finite: Counter,
    skipped_out_of_range: Counter,
    skipped_input_count: Counter,
    failures: Counter,
    /// Requests to a remote engine that failed (remote versions only).
    remote_errors: Counter,
    /// Rows a remote version's local fallback answered.
    fallback_inferences: Counter,
    /// Rows run on the submitting thread instead of the worker's.
    inline_inferences: Counter,
    /// Seconds per forward call.
    latency: Histogram,
    /// Rows per forward call.
    batch_sizes: Histogram,
}

/// Upper bounds of the forward-call latency buckets, in seconds.
pub const LATENCY_BUCKETS_S: [f64; 13] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Upper bounds of the batch size buckets, in rows.
pub const BATCH_SIZE_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

impl Default for Counters {
    fn default() -> Self {
        Self {
            requests: Counter::default(),
            inferences: Counter::default(),
            batches: Counter::default(),
            rejected_queue_full: Counter::default(),
            rejected_rate_limited: Counter::default(),
            skipped_missing: Counter::default(),
            skipped_bad_quality: Counter::default(),
            skipped_not_finite: Counter::default(),
            skipped_out_of_range: Counter::default(),
            skipped_input_count: Counter::default(),
            failures: Counter::default(),
            remote_errors: Counter::default(),
            fallback_inferences: Counter::default(),
            inline_inferences: Counter::default(),
            latency: Histogram::new(&LATENCY_BUCKETS_S),
            batch_sizes: Histogram::new(&BATCH_SIZE_BUCKETS),
        }
    }
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InferenceStatsSnapshot {
    /// Rows submitted, accepted or not (a flat batch whose length is not
    /// a whole number of rows counts as one).
    pub requests: u64,
    /// Rows run through the model successfully.
    pub inferences: u64,
    /// Forward calls that succeeded.
    pub batches: u64,
    pub rejected_queue_full: u64,
    pub rejected_rate_limited: u64,
    /// Rows not fed to the model by [`prepare_inputs`], by first reason.
    pub skipped_missing: u64,
    pub skipped_bad_quality: u64,
    pub skipped_not_finite: u64,
    pub skipped_out_of_range: u64,
    /// Rows with a different number of values than the model has inputs.
    pub skipped_input_count: u64,
    /// Requests answered with an error (failed forward, bad row length,
    /// stopped service, remote engine failed).
    pub failures: u64,
    /// Requests to a remote engine that failed (connection, timeout, error
    /// status, bad answer); rows skipped during the backoff after a failure
    /// count in `failures` only.
    pub remote_errors: u64,
    /// Rows the local fallback version answered while the engine failed
    /// (not in `inferences`, which counts this version's own rows).
    pub fallback_inferences: u64,
    /// Rows of `inferences` run on the submitting thread, alone, instead
    /// of the worker's (see the module docs).
    pub inline_inferences: u64,
}

impl InferenceStats {
    /// Puts the counters of one model version into `registry`, labelled
    /// `model` and `version` (serving and shadow versions alike).
    pub fn register(&self, registry: &MetricsRegistry, model: &str, version: &str) {
        let c = &*self.counters;
        let labels = || {
            vec![
                ("model", model.to_string()),
                ("version", version.to_string()),
            ]
        };
        registry.add_counter(
            "ironbridge_inferences",
            "Rows run through each model version (serving or shadow).",
            labels(),
            &c.inferences,
        );
        registry.add_counter(
            "ironbridge_inference_batches",
            "Forward calls of each model version that succeeded.",
            labels(),
            &c.batches,
        );
        registry.add_counter(
            "ironbridge_inferences_inline",
            "Rows of each model version run on the submitting thread instead of the inference thread (a lone row, or rows submitted together, of a fast model while that thread is idle).",
            labels(),
            &c.inline_inferences,
        );
        for (reason, counter) in [
            ("missing", &c.skipped_missing),
            ("bad_quality", &c.skipped_bad_quality),
            ("not_finite", &c.skipped_not_finite),
            ("out_of_range", &c.skipped_out_of_range),
            ("input_count", &c.skipped_input_count),
        ] {
            let mut labels = labels();
            labels.push(("reason", reason.to_string()));
            registry.add_counter(
                "ironbridge_inference_rows_skipped",
                "Rows not fed to a model version, by the first reason (an input missing, Bad, not finite, out of the manifest's range).",
                labels,
                counter,
            );
        }
        registry.add_histogram(
            "ironbridge_inference_latency_seconds",
            "Seconds per forward call of each model version.",
            labels(),
            &c.latency,
        );
        registry.add_histogram(
            "ironbridge_inference_batch_size",
            "Rows per forward call of each model version.",
            labels(),
            &c.batch_sizes,
        );
    }

    pub fn snapshot(&self) -> InferenceStatsSnapshot {
        let c = &*self.counters;
        let get = |counter: &Counter| counter.get();
        InferenceStatsSnapshot {
            requests: get(&c.requests),
            inferences: get(&c.inferences),
            batches: get(&c.batches),
            rejected_queue_full: get(&c.rejected_queue_full),
            rejected_rate_limited: get(&c.rejected_rate_limited),
            skipped_missing: get(&c.skipped_missing),
            skipped_bad_quality: get(&c.skipped_bad_quality),
            skipped_not_finite: get(&c.skipped_not_finite),
            skipped_out_of_range: get(&c.skipped_out_of_range),
            skipped_input_count: get(&c.skipped_input_count),
            failures: get(&c.failures),
            remote_errors: get(&c.remote_errors),
            fallback_inferences: get(&c.fallback_inferences),
            inline_inferences: get(&c.inline_inferences),
        }
    }

    /// Seconds per forward call (failed ones included; not the batches a
    /// remote version skips without a request during its backoff).
    pub fn latency(&self) -> HistogramSnapshot {
        self.counters.latency.snapshot()
    }

    /// Rows per forward call.
    pub fn batch_sizes(&self) -> HistogramSnapshot {
        self.counters.batch_sizes.snapshot()
    }
}

/// One input value as the feature assembler found it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InputValue {
    Missing,
    BadQuality,
    Value(f64),
}

/// Why a row was not fed to the model; names the first offending input.
#[derive(Debug, Clone, PartialEq)]
pub enum SkipReason {
    Missing {
        input: String,
    },
    BadQuality {
        input: String,
    },
    NotFinite {
        input: String,
        value: f64,
    },
    OutOfRange {
        input: String,
        unit: String,
        value: f64,
        min: f64,
        max: f64,
    },
    InputCount {
        expected: usize,
        actual: usize,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Missing { input } => write!(f, "input {input} is missing"),
            SkipReason::BadQuality { input } => write!(f, "input {input} has bad quality"),
            SkipReason::NotFinite { input, value } => {
                write!(f, "input {input} is {value}, not a finite number")
            }
            SkipReason::OutOfRange {
                input,
                unit,
                value,
                min,
                max,
            } => write!(
                f,
                "input {input} = {value} {unit} is outside its valid range [{min}, {max}] {unit}"
            ),
            SkipReason::InputCount { expected, actual } => {
                write!(f, "{actual} input values given, the model takes {expected}")
            }
        }
    }
}

/// Turns one row of input values into model input, or says (and counts) why
/// the row must not reach the model: a value that is missing, of bad
/// quality, not finite or outside the manifest's range would make the
/// prediction meaningless. Only the first problem in input order is counted.
pub fn prepare_inputs(
    manifest: &ModelManifest,
    values: &[InputValue],
    stats: &InferenceStats,
) -> Result<Vec<f32>, SkipReason> {
    let c = &*stats.counters;
    if values.len() != manifest.inputs.len() {
        c.skipped_input_count.inc();
        return Err(SkipReason::InputCount {
            expected: manifest.inputs.len(),
            actual: values.len(),
        });
    }
    let mut row = Vec::with_capacity(values.len());
    for (spec, value) in manifest.inputs.iter().zip(values) {
        let input = || spec.name.clone();
        let value = match *value {
            InputValue::Missing => {
                c.skipped_missing.inc();
                return Err(SkipReason::Missing { input: input() });
            }
            InputValue::BadQuality => {
                c.skipped_bad_quality.inc();
                return Err(SkipReason::BadQuality { input: input() });
            }
            InputValue::Value(value) => value,
        };
        if !value.is_finite() {
            c.skipped_not_finite.inc();
            return Err(SkipReason::NotFinite {
                input: input(),
                value,
            });
        }
        if value < spec.min || value > spec.max {
            c.skipped_out_of_range.inc();
            return Err(SkipReason::OutOfRange {
                input: input(),
                unit: spec.unit.clone(),
                value,
                min: spec.min,
                max: spec.max,
            });
        }
        // The model takes float32; the range check above ran on the exact value.
        row.push(value as f32);
    }
    Ok(row)
}

/// Starts batched inference services.
pub struct InferenceService;

impl InferenceService {
    /// Starts the worker thread for `model` and returns the first handle.
    /// The worker stops when the last handle is dropped.
    pub fn spawn(
        model: TorchModel,
        options: InferenceOptions,
    ) -> Result<InferenceHandle, ModelError> {
        spawn_with_start_gate(model, options, None)
    }

    /// Starts the worker thread for a version served by a remote engine:
    /// the same queue, batching, counters and version tagging as
    /// [`Self::spawn`], one engine request per batch. It starts even when
    /// the engine is down (state `RemoteUnavailable`): raw data keeps
    /// flowing, and predictions start once the engine answers.
    pub fn spawn_remote(
        model: RemoteModel,
        options: InferenceOptions,
    ) -> Result<InferenceHandle, ModelError> {
        spawn_with_start_gate(RemoteBackend::new(model), options, None)
    }
}

/// What runs a batch: libtorch in-process or a remote engine. An enum, not
/// a trait object: one match per batch, nothing per row, and the
/// in-process path stays as it was.
enum Backend {
    Torch(Arc<InlineTorch>),
    // Boxed: a remote backend is many times the size of the Arc.
    Remote(Box<RemoteBackend>),
}

impl From<TorchModel> for Backend {
    fn from(model: TorchModel) -> Self {
        Backend::Torch(Arc::new(InlineTorch {
            version: model.version().clone(),
            manifest: model.manifest().clone(),
            model: Mutex::new(model),
            forward_times: ForwardTimes::default(),
            last_request_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        }))
    }
}

/// The longest forward a caller runs on its own thread: a tokio worker may
/// be held this long without starving the tasks behind it.
pub const INLINE_FORWARD_MAX: Duration = Duration::from_micros(500);

/// How long before a row the previous one must have come for the row to be
/// lone: well above [`INLINE_FORWARD_MAX`], so no forward that could have
/// taken it as a batch-mate is still running.
pub const LONE_ROW_GAP: Duration = Duration::from_millis(1);

/// A libtorch model shared by its worker and the callers that run a lone
/// row themselves. The mutex says who runs a forward now: the worker takes
/// it for every batch, a caller only if it is free.
struct InlineTorch {
    version: ModelVersion,
    manifest: ModelManifest,
    model: Mutex<TorchModel>,
    /// How long its forwards took, by rows: empty until the worker ran one
    /// (TorchScript's first runs profile the graph and are slow).
    forward_times: ForwardTimes,
    /// When the newest request came, in ns since `epoch` (0: none yet).
    last_request_ns: AtomicU64,
    epoch: Instant,
}

/// Row-count buckets of [`ForwardTimes`]: 1, 2-3, 4-7, ... 64-127, 128 and more.
const ROW_BUCKETS: usize = 8;

/// The last forward's time in each bucket of row counts, to estimate the
/// next forward's. One "last forward" for all sizes misjudged bursts of
/// varying size: at 100 ms polls a cold 3-row forward of ~200 µs scaled
/// to 10 rows passed [`INLINE_FORWARD_MAX`], so the burst was handed to
/// the worker thread, though a 10-row forward took ~250 µs (BENCHMARKS.md
/// §33). Each time and its rows are read apart: a torn pair only skews
/// one estimate.
#[derive(Default)]
struct ForwardTimes {
    /// ns of the bucket's last forward; 0: none yet.
    ns: [AtomicU64; ROW_BUCKETS],
    rows: [AtomicU64; ROW_BUCKETS],
}

impl ForwardTimes {
    fn bucket(n_rows: u64) -> usize {
        // 1 -> 0, 2-3 -> 1, 4-7 -> 2, ...
        let log2 = n_rows.max(1).ilog2() as usize;
        log2.min(ROW_BUCKETS - 1)
    }

    fn note(&self, took: Duration, n_rows: usize) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        let rows = u64::try_from(n_rows).unwrap_or(u64::MAX).max(1);
        let b = Self::bucket(rows);
        self.rows[b].store(rows, Ordering::Relaxed);
        self.ns[b].store(ns, Ordering::Relaxed);
    }

    /// What a forward of `n_rows` may take: as long as the nearest timed
    /// forward of as many rows or more (fewer rows take no longer), or,
    /// when only smaller ones were timed, the nearest of them scaled by the
    /// rows (an upper bound: a forward's fixed cost does not grow with its
    /// rows). 0: no forward timed yet.
    fn estimate_ns(&self, n_rows: usize) -> u64 {
        let n = u64::try_from(n_rows).unwrap_or(u64::MAX).max(1);
        let timed = |b: usize| {
            let ns = self.ns[b].load(Ordering::Relaxed);
            (ns != 0).then(|| (ns, self.rows[b].load(Ordering::Relaxed).max(1)))
        };
        let own = Self::bucket(n);
        // The nearest bucket of larger forwards first, then the smaller ones.
        let larger = (own..ROW_BUCKETS)
            .filter_map(timed)
            .find(|&(_, rows)| rows >= n);
        if let Some((ns, _)) = larger {
            return ns;
        }
        match (0..=own).rev().filter_map(timed).next() {
            Some((ns, rows)) => ns.saturating_mul(n) / rows,
            None => 0,
        }
    }
}

impl InlineTorch {
    fn lock(&self) -> std::sync::MutexGuard<'_, TorchModel> {
        // A forward that panicked leaves the model as it was: libtorch
        // holds no state of ours between calls.
        self.model
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `n_rows` rows (`rows`, row after row) on the calling thread as
    /// one forward if that is quicker than the queue (see the module docs);
    /// `None`: queue them. A single row must be lone, or come when every
    /// earlier answer has been taken (`answers_taken`); several rows handed
    /// over together are a batch already.
    fn run_inline(
        &self,
        rows: &[f32],
        n_rows: usize,
        queue_empty: bool,
        answers_taken: bool,
        intra_op_threads: i32,
    ) -> Option<(Result<Vec<f32>, ModelError>, Duration)> {
        // One clock read: the request's time is also the forward's start.
        let started = Instant::now();
        // Counted from `epoch` plus one, so that 0 stays "no request yet".
        let now = u64::try_from(started.duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let previous = self.last_request_ns.swap(now, Ordering::Relaxed);
        let lone = previous == 0 || now - previous >= LONE_ROW_GAP.as_nanos() as u64;
        // A burst must fit the bound as a whole, not just its first row.
        let forward = self.forward_times.estimate_ns(n_rows);
        let known_fast = forward != 0 && forward <= INLINE_FORWARD_MAX.as_nanos() as u64;
        if !(queue_empty && known_fast && (lone || answers_taken || n_rows > 1)) {
            return None;
        }
        let model = self.model.try_lock().ok()?;
        crate::torch_backend::use_intra_op_threads(intra_op_threads);
        let result = model.forward(rows, n_rows);
        let took = started.elapsed();
        drop(model);
        self.forward_times.note(took, n_rows);
        Some((result, took))
    }
}

impl From<RemoteBackend> for Backend {
    fn from(backend: RemoteBackend) -> Self {
        Backend::Remote(Box::new(backend))
    }
}

impl Backend {
    fn version(&self) -> &ModelVersion {
        match self {
            Backend::Torch(torch) => &torch.version,
            Backend::Remote(remote) => remote.model().version(),
        }
    }

    fn manifest(&self) -> &ModelManifest {
        match self {
            Backend::Torch(torch) => &torch.manifest,
            Backend::Remote(remote) => remote.model().manifest(),
        }
    }
}

/// `start_gate`, when given, holds the worker before its first receive until
/// a message arrives or the sender is dropped; tests use it to fill the queue
/// deterministically.
fn spawn_with_start_gate(
    backend: impl Into<Backend>,
    options: InferenceOptions,
    start_gate: Option<std::sync::mpsc::Receiver<()>>,
) -> Result<InferenceHandle, ModelError> {
    let backend = backend.into();
    let name = backend.version().name.clone();
    options_problem(&options).map_or(Ok(()), |problem| {
        Err(ModelError::InvalidOptions {
            model: name.clone(),
            problem,
        })
    })?;
    // The worker waits for batch-mates with a timeout; a tokio timer on a
    // private runtime does that without spinning or a second channel type.
    // A remote version's requests run on the same runtime (with I/O): no
    // thread beyond the worker, and the worker is not inside any runtime,
    // so it may block on it.
    let mut clock = tokio::runtime::Builder::new_current_thread();
    clock.enable_time();
    if matches!(backend, Backend::Remote(_)) {
        clock.enable_io();
    }
    let clock = clock.build().map_err(|source| ModelError::Spawn {
        model: name.clone(),
        source,
    })?;
    let (queue, requests) = mpsc::channel(options.queue_capacity);
    let shared = Arc::new(Shared {
        version: backend.version().clone(),
        inputs: backend.manifest().input_names(),
        outputs: backend.manifest().output_names(),
        remote: match &backend {
            Backend::Torch(_) => None,
            Backend::Remote(remote) => Some(RemoteStatus {
                url: remote.model().url().to_owned(),
                last_error: Mutex::new(None),
            }),
        },
        fallback_version: match &backend {
            Backend::Remote(remote) => remote
                .model()
                .fallback()
                .map(|f| Arc::from(f.version().version.as_str())),
            Backend::Torch(_) => None,
        },
        stats: InferenceStats::default(),
        limiter: options
            .rate_limit_per_s
            .map(|per_s| RateLimiter::direct(Quota::per_second(per_s))),
        state: AtomicU8::new(ModelState::Loading.to_u8()),
        answers_untaken: AtomicUsize::new(0),
    });
    // A batching window asks for batches over latency: no row skips it.
    let inline = match &backend {
        Backend::Torch(torch) if options.max_wait.is_zero() => Some(Arc::clone(torch)),
        _ => None,
    };
    let max_batch = options.max_batch;
    let inline_threads = intra_op_threads(&options);
    let worker = Worker {
        backend,
        requests,
        held: None,
        shared: Arc::clone(&shared),
        options,
        clock,
    };
    std::thread::Builder::new()
        .name(format!("infer-{name}"))
        .spawn(move || worker.run(start_gate))
        .map_err(|source| ModelError::Spawn {
            model: name.clone(),
            source,
        })?;
    Ok(InferenceHandle {
        queue,
        shared,
        inline,
        max_batch,
        inline_threads,
    })
}

/// `options.intra_op_threads` as libtorch takes it (validated to fit).
fn intra_op_threads(options: &InferenceOptions) -> i32 {
    i32::try_from(options.intra_op_threads).unwrap_or(1)
}

fn options_problem(options: &InferenceOptions) -> Option<String> {
    if options.max_batch == 0 {
        Some("max_batch must be at least 1".to_owned())
    } else if options.queue_capacity == 0 {
        Some("queue_capacity must be at least 1".to_owned())
    } else if options.queue_capacity > tokio::sync::Semaphore::MAX_PERMITS {
        Some(format!(
            "queue_capacity must be at most {}",
            tokio::sync::Semaphore::MAX_PERMITS
        ))
    } else if options.intra_op_threads == 0 || i32::try_from(options.intra_op_threads).is_err() {
        Some("intra_op_threads must be between 1 and 2^31-1".to_owned())
    } else {
        None
    }
}

/// State shared by the worker, its handles and monitors.
struct Shared {
    version: ModelVersion,
    inputs: Vec<String>,
    outputs: Vec<String>,
    stats: InferenceStats,
    limiter: Option<DefaultDirectRateLimiter>,
    state: AtomicU8,
    /// Requests whose [`PendingPrediction`] is still held: their caller has
    /// not taken the answer yet (see [`UntakenAnswer`]).
    answers_untaken: AtomicUsize,
    /// Only for a version served by a remote engine.
    remote: Option<RemoteStatus>,
    /// The local version a remote one falls back to, if configured.
    fallback_version: Option<Arc<str>>,
}

/// What the OPC UA nodes and the log say of a remote engine.
struct RemoteStatus {
    url: String,
    /// The engine's last failure, until it answers again.
    last_error: Mutex<Option<String>>,
}

impl RemoteStatus {
    fn last_error(&self) -> Option<String> {
        // A poisoned lock only means a panicking writer; the text is whole.
        match self.last_error.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_last_error(&self, error: Option<&str>) {
        let mut guard = match self.last_error.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if guard.as_deref() != error {
            *guard = error.map(str::to_owned);
        }
    }
}

impl Shared {
    fn state(&self) -> ModelState {
        ModelState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, state: ModelState) {
        self.state.store(state.to_u8(), Ordering::Release);
    }

    fn status(&self) -> ModelStatus {
        let state = self.state();
        ModelStatus {
            name: self.version.name.clone(),
            active_version: Some(self.version.version.clone()),
            sha256: Some(self.version.sha256.clone()),
            loaded_at: Some(self.version.loaded_at),
            state,
            detail: match state {
                ModelState::Failed => Some("the inference thread panicked; see the log".to_owned()),
                ModelState::RemoteUnavailable => self.remote.as_ref().and_then(|r| {
                    r.last_error()
                        .map(|e| format!("inference engine {}: {e}", r.url))
                }),
                _ => None,
            },
            inference_count: self.stats.snapshot().inferences,
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            remote: self.remote.as_ref().map(|r| RemoteEngineStatus {
                url: r.url.clone(),
                reachable: state != ModelState::RemoteUnavailable,
                last_error: r.last_error(),
            }),
        }
    }
}

/// Submits rows to one model's service. Clones share the queue; the worker
/// stops once all clones are dropped.
#[derive(Clone)]
pub struct InferenceHandle {
    queue: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    /// An in-process model, for rows run on the caller's thread. Not in
    /// `Shared`: monitors outlive handles and must not keep the model.
    inline: Option<Arc<InlineTorch>>,
    /// The most rows in one forward, on either thread.
    max_batch: usize,
    /// libtorch intra-op threads for a row run on the caller's thread.
    inline_threads: i32,
}

impl fmt::Debug for InferenceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InferenceHandle")
            .field("model", &self.shared.version.name)
            .field("version", &self.shared.version.version)
            .finish_non_exhaustive()
    }
}

impl InferenceHandle {
    /// Queues one row (one value per model input, in manifest order), or
    /// runs it at once on this thread when that is quicker (see the module
    /// docs). Never waits for other requests: a full queue or the rate
    /// limit rejects this one.
    pub fn submit(&self, row: Vec<f32>) -> Result<PendingPrediction, SubmitError> {
        let row = self.admit(row)?;
        if let Some(answer) = self.run_inline(&row, 1) {
            return Ok(self.ready(answer.map(Answer::new)));
        }
        self.enqueue(row, 1)
    }

    /// Submits `rows`, row after row (one value per model input each), as
    /// one request: they run in one forward, and the answer is their
    /// outputs, row after row. At most `max_batch` rows; a length that is
    /// not a whole number of rows is refused. Like [`Self::submit_many`]
    /// the rows run at once on this thread when the inference thread is
    /// idle; otherwise they queue as one request, copied, and the worker
    /// may add other queued rows to their forward. The rate limit counts
    /// every row and takes all or none.
    pub fn submit_batch(&self, rows: &[f32]) -> Result<PendingPrediction, SubmitError> {
        let n_rows = self.admit_batch(rows)?;
        if n_rows == 0 {
            return Ok(self.ready(Ok(Answer::new(Vec::new()))));
        }
        if let Some(answer) = self.run_inline(rows, n_rows) {
            return Ok(self.ready(answer.map(Answer::new)));
        }
        self.enqueue(rows.to_vec(), n_rows)
    }

    /// Submits rows that arrived together (a burst of scans), one answer
    /// per row in the same order, each as [`Self::submit`] would give it.
    /// When the inference thread is idle they run at once on this thread as
    /// one forward: a batch handed over whole, with no thread hand-off;
    /// otherwise each row queues.
    pub fn submit_many(&self, rows: Vec<Vec<f32>>) -> Vec<Result<PendingPrediction, SubmitError>> {
        let admitted: Vec<_> = rows.into_iter().map(|row| self.admit(row)).collect();
        let n_rows = admitted.iter().filter(|row| row.is_ok()).count();
        let inline = match n_rows {
            0 => None,
            1 => admitted
                .iter()
                .find_map(|row| row.as_ref().ok())
                .and_then(|row| self.run_inline(row, 1)),
            _ => {
                let flat: Vec<f32> = admitted
                    .iter()
                    .filter_map(|row| row.as_ref().ok())
                    .flatten()
                    .copied()
                    .collect();
                self.run_inline(&flat, n_rows)
            }
        };
        match inline {
            Some(Ok(values)) => {
                let n_outputs = self.shared.outputs.len().max(1);
                let mut answers = values.chunks_exact(n_outputs);
                admitted
                    .into_iter()
                    .map(|row| {
                        let _ = row?;
                        // One answer per admitted row, in order.
                        let answer = match answers.next() {
                            Some(output) => Ok(Answer::new(output.to_vec())),
                            None => Err(ModelError::ServiceStopped {
                                model: self.shared.version.name.clone(),
                            }),
                        };
                        Ok(self.ready(answer))
                    })
                    .collect()
            }
            Some(Err(error)) => admitted
                .into_iter()
                .map(|row| {
                    let _ = row?;
                    Ok(self.ready(Err(copy_of(&error))))
                })
                .collect(),
            None => admitted
                .into_iter()
                .map(|row| self.enqueue(row?, 1))
                .collect(),
        }
    }

    /// Counts the request and checks its length and the rate limit.
    fn admit(&self, row: Vec<f32>) -> Result<Vec<f32>, SubmitError> {
        let c = &*self.shared.stats.counters;
        c.requests.inc();
        if row.len() != self.shared.inputs.len() {
            c.failures.inc();
            return Err(SubmitError::RowLength {
                expected: self.shared.inputs.len(),
                actual: row.len(),
            });
        }
        if let Some(limiter) = &self.shared.limiter {
            if limiter.check().is_err() {
                c.rejected_rate_limited.inc();
                return Err(SubmitError::RateLimited);
            }
        }
        Ok(row)
    }

    /// Counts a flat batch's rows and checks its length, its size and the
    /// rate limit; the number of rows.
    fn admit_batch(&self, rows: &[f32]) -> Result<usize, SubmitError> {
        let c = &*self.shared.stats.counters;
        let n_inputs = self.shared.inputs.len();
        if n_inputs == 0 || !rows.len().is_multiple_of(n_inputs) {
            c.requests.inc();
            c.failures.inc();
            return Err(SubmitError::BatchLength {
                n_inputs,
                actual: rows.len(),
            });
        }
        let n_rows = rows.len() / n_inputs;
        let n = n_rows as u64;
        c.requests.add(n);
        if n_rows > self.max_batch {
            c.failures.add(n);
            return Err(SubmitError::TooManyRows {
                max_batch: self.max_batch,
                actual: n_rows,
            });
        }
        if let (Some(limiter), Some(cells)) = (
            &self.shared.limiter,
            u32::try_from(n_rows).ok().and_then(NonZeroU32::new),
        ) {
            // Err: more rows than the burst allows at all; Ok(Err): not now.
            if !matches!(limiter.check_n(cells), Ok(Ok(()))) {
                c.rejected_rate_limited.add(n);
                return Err(SubmitError::RateLimited);
            }
        }
        Ok(n_rows)
    }

    /// Runs `n_rows` admitted rows on this thread if the model allows it
    /// now: their outputs, row after row, or `None`: queue them.
    fn run_inline(&self, rows: &[f32], n_rows: usize) -> Option<Result<Vec<f32>, ModelError>> {
        let torch = self.inline.as_ref()?;
        if n_rows > self.max_batch {
            return None;
        }
        // Before the worker serves (its start gate), everything queues.
        let serving = self.shared.state() == ModelState::Serving;
        let queue_empty = serving && self.queue_depth() == 0;
        // A caller that took every answer before asking again has nothing
        // in flight for this row to join.
        let answers_taken = self.shared.answers_untaken.load(Ordering::Relaxed) == 0;
        let (result, took) = torch.run_inline(
            rows,
            n_rows,
            queue_empty,
            answers_taken,
            self.inline_threads,
        )?;
        let c = &*self.shared.stats.counters;
        c.latency.observe(took.as_secs_f64());
        c.batch_sizes.observe(n_rows as f64);
        let n = n_rows as u64;
        match &result {
            Ok(_) => {
                c.batches.inc();
                c.inferences.add(n);
                c.inline_inferences.add(n);
            }
            Err(error) => {
                c.failures.add(n);
                tracing::warn!(model = %self.shared.version.name, rows = n_rows, %error, "inference batch failed");
            }
        }
        Some(result)
    }

    fn ready(&self, answer: Result<Answer, ModelError>) -> PendingPrediction {
        PendingPrediction {
            answer: AnswerSlot::Ready(Some(answer)),
            untaken: UntakenAnswer::new(&self.shared),
        }
    }

    /// Queues `n_rows` admitted rows (`rows`, row after row) as one request.
    fn enqueue(&self, rows: Vec<f32>, n_rows: usize) -> Result<PendingPrediction, SubmitError> {
        let c = &*self.shared.stats.counters;
        let (reply, answer) = oneshot::channel();
        match self.queue.try_send(Request {
            rows,
            n_rows,
            reply,
        }) {
            Ok(()) => Ok(PendingPrediction {
                answer: AnswerSlot::Waiting(answer),
                untaken: UntakenAnswer::new(&self.shared),
            }),
            Err(TrySendError::Full(_)) => {
                c.rejected_queue_full.add(n_rows as u64);
                Err(SubmitError::QueueFull)
            }
            Err(TrySendError::Closed(_)) => {
                c.failures.add(n_rows as u64);
                Err(SubmitError::Stopped)
            }
        }
    }

    pub fn stats(&self) -> &InferenceStats {
        &self.shared.stats
    }

    /// Requests waiting in the queue now (not those in the batch being run).
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Registers this version's counters and its queue depth
    /// (`ironbridge_inference_queue_depth{model,version}`, read at each
    /// snapshot). The registry holds the queue weakly: a version that was
    /// dropped stops its worker and leaves the gauge.
    pub fn register(&self, registry: &MetricsRegistry, model: &str, version: &str) {
        self.shared.stats.register(registry, model, version);
        if self.shared.remote.is_some() {
            registry.add_counter(
                "ironbridge_inference_remote_errors",
                "Requests of each remote model version to its inference engine that failed (connection, timeout, error status, bad answer).",
                vec![
                    ("model", model.to_string()),
                    ("version", version.to_string()),
                ],
                &self.shared.stats.counters.remote_errors,
            );
        }
        if let Some(fallback) = &self.shared.fallback_version {
            registry.add_counter(
                "ironbridge_inference_fallback",
                "Rows of each remote model version answered in-process by its fallback version while the engine failed.",
                vec![
                    ("model", model.to_string()),
                    ("version", version.to_string()),
                    ("fallback", fallback.to_string()),
                ],
                &self.shared.stats.counters.fallback_inferences,
            );
        }
        let queue = self.queue.downgrade();
        let labels = vec![
            ("model", model.to_string()),
            ("version", version.to_string()),
        ];
        registry.add_computed_gauge(
            "ironbridge_inference_queue_depth",
            "Requests waiting in each loaded model version's inference queue.",
            move || {
                queue
                    .upgrade()
                    .map(|q| (labels.clone(), (q.max_capacity() - q.capacity()) as f64))
                    .into_iter()
                    .collect()
            },
        );
    }

    pub fn version(&self) -> &ModelVersion {
        &self.shared.version
    }

    pub fn status(&self) -> ModelStatus {
        self.shared.status()
    }

    /// A view of status and stats that does not keep the worker running.
    pub fn monitor(&self) -> InferenceMonitor {
        InferenceMonitor {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Read-only view of a service (for the OPC UA server and metrics); holding
/// one does not keep the worker alive.
#[derive(Clone)]
pub struct InferenceMonitor {
    shared: Arc<Shared>,
}

impl fmt::Debug for InferenceMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InferenceMonitor")
            .field("model", &self.shared.version.name)
            .field("state", &self.shared.state())
            .finish_non_exhaustive()
    }
}

impl InferenceMonitor {
    pub fn status(&self) -> ModelStatus {
        self.shared.status()
    }

    pub fn stats(&self) -> &InferenceStats {
        &self.shared.stats
    }

    pub fn state(&self) -> ModelState {
        self.shared.state()
    }
}

/// One answered row, and whether the remote version's local fallback
/// computed it (while its engine failed).
struct Answer {
    values: Vec<f32>,
    by_fallback: bool,
}

impl Answer {
    /// The version's own answer.
    fn new(values: Vec<f32>) -> Self {
        Self {
            values,
            by_fallback: false,
        }
    }
}

/// The answer to one request: a row's outputs, or a flat batch's outputs
/// row after row. Await it (or call [`Self::wait`]).
pub struct PendingPrediction {
    answer: AnswerSlot,
    untaken: UntakenAnswer,
}

/// Counts its request's answer as not yet taken (`answers_untaken`) from
/// the request until its [`PendingPrediction`] is dropped.
struct UntakenAnswer(Arc<Shared>);

impl UntakenAnswer {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.answers_untaken.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(shared))
    }
}

impl Drop for UntakenAnswer {
    fn drop(&mut self) {
        self.0.answers_untaken.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A row run on the caller's thread has its answer at once: no channel.
enum AnswerSlot {
    /// `None` once a poll has taken it.
    Ready(Option<Result<Answer, ModelError>>),
    Waiting(oneshot::Receiver<Result<Answer, ModelError>>),
}

impl fmt::Debug for PendingPrediction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingPrediction")
            .field("model", &self.untaken.0.version.name)
            .finish_non_exhaustive()
    }
}

impl PendingPrediction {
    /// The version that computes this answer (the one it was submitted to,
    /// whatever has been swapped in since; a remote version's fallback may
    /// answer for it, which [`Self::wait_versioned`] tells).
    pub fn version(&self) -> &ModelVersion {
        &self.untaken.0.version
    }

    /// The output row (one value per model output, in manifest order; for
    /// a flat batch, every row's, row after row).
    pub async fn wait(self) -> Result<Vec<f32>, ModelError> {
        self.await
    }

    /// The output row, and the fallback version's name when the remote
    /// version's local fallback computed it (`None`: the version it was
    /// submitted to did).
    pub async fn wait_versioned(self) -> Result<(Vec<f32>, Option<Arc<str>>), ModelError> {
        let answer = match self.answer {
            AnswerSlot::Ready(answer) => answer,
            AnswerSlot::Waiting(answer) => answer.await.ok(),
        };
        let answer = match answer {
            Some(answer) => answer?,
            // The worker dropped the reply without answering: it died.
            None => {
                return Err(ModelError::ServiceStopped {
                    model: self.untaken.0.version.name.clone(),
                })
            }
        };
        let by = if answer.by_fallback {
            self.untaken.0.fallback_version.clone()
        } else {
            None
        };
        Ok((answer.values, by))
    }

    /// For callers outside an async context; must not be called inside one.
    pub fn blocking_wait(self) -> Result<Vec<f32>, ModelError> {
        let answer = match self.answer {
            AnswerSlot::Ready(answer) => answer,
            AnswerSlot::Waiting(answer) => answer.blocking_recv().ok(),
        };
        match answer {
            Some(answer) => answer.map(|answer| answer.values),
            // The worker dropped the reply without answering: it died.
            None => Err(ModelError::ServiceStopped {
                model: self.untaken.0.version.name.clone(),
            }),
        }
    }
}

impl Future for PendingPrediction {
    type Output = Result<Vec<f32>, ModelError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = match &mut self.answer {
            AnswerSlot::Ready(answer) => answer.take(),
            AnswerSlot::Waiting(answer) => match Pin::new(answer).poll(cx) {
                Poll::Ready(answer) => answer.ok(),
                Poll::Pending => return Poll::Pending,
            },
        };
        Poll::Ready(match answer {
            Some(answer) => answer.map(|a| a.values),
            // The worker dropped the reply without answering: it died.
            None => Err(ModelError::ServiceStopped {
                model: self.untaken.0.version.name.clone(),
            }),
        })
    }
}

struct Request {
    /// `n_rows` rows, row after row.
    rows: Vec<f32>,
    n_rows: usize,
    reply: oneshot::Sender<Result<Answer, ModelError>>,
}

struct Worker {
    backend: Backend,
    requests: mpsc::Receiver<Request>,
    /// A request received that would have made the last batch larger than
    /// `max_batch`; it starts the next one.
    held: Option<Request>,
    shared: Arc<Shared>,
    options: InferenceOptions,
    clock: tokio::runtime::Runtime,
}

/// Marks the service Stopped when the worker returns, Failed if it panics.
struct StateOnExit(Arc<Shared>);

impl Drop for StateOnExit {
    fn drop(&mut self) {
        let state = if std::thread::panicking() {
            ModelState::Failed
        } else {
            ModelState::Stopped
        };
        self.0.set_state(state);
    }
}

impl Worker {
    fn run(mut self, start_gate: Option<std::sync::mpsc::Receiver<()>>) {
        let _state_on_exit = StateOnExit(Arc::clone(&self.shared));
        // A remote version without a fallback runs no forward on this thread.
        let runs_libtorch = match &self.backend {
            Backend::Torch(_) => true,
            Backend::Remote(remote) => remote.model().fallback().is_some(),
        };
        if runs_libtorch {
            crate::torch_backend::use_intra_op_threads(intra_op_threads(&self.options));
        }
        if let Some(gate) = start_gate {
            // Either a message or a dropped sender opens the gate.
            let _ = gate.recv();
        }
        let state = match &mut self.backend {
            Backend::Torch(_) => ModelState::Serving,
            Backend::Remote(remote) => {
                let ready = remote.probe(&self.clock);
                self.note_remote(ready);
                if ready {
                    ModelState::Serving
                } else {
                    ModelState::RemoteUnavailable
                }
            }
        };
        self.shared.set_state(state);
        tracing::info!(
            model = %self.shared.version.name,
            version = %self.shared.version.version,
            "inference service started"
        );

        let mut batch = Vec::with_capacity(self.options.max_batch);
        let mut rows = Vec::with_capacity(self.options.max_batch * self.shared.inputs.len());
        // `None` from blocking_recv: every handle is gone, so shut down.
        while let Some(first) = self.held.take().or_else(|| self.requests.blocking_recv()) {
            batch.push(first);
            self.gather(&mut batch);
            self.run_batch(&mut batch, &mut rows);
        }
        tracing::info!(model = %self.shared.version.name, "inference service stopped");
    }

    /// Adds queued requests to `batch` until its rows reach `max_batch` or
    /// `max_wait` has passed since its first request arrived. A request
    /// whose rows would not fit waits in `held` for the next batch.
    fn gather(&mut self, batch: &mut Vec<Request>) {
        // A max_wait too large for Instant means no deadline.
        let deadline = Instant::now().checked_add(self.options.max_wait);
        let mut n_rows: usize = batch.iter().map(|r| r.n_rows).sum();
        while n_rows < self.options.max_batch {
            let next = match self.requests.try_recv() {
                Ok(request) => Some(request),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => match deadline {
                    Some(deadline) if Instant::now() >= deadline => None,
                    Some(deadline) => self.clock.block_on(async {
                        tokio::time::timeout_at(deadline.into(), self.requests.recv())
                            .await
                            .ok()
                            .flatten()
                    }),
                    None => self.clock.block_on(self.requests.recv()),
                },
            };
            let Some(request) = next else {
                return;
            };
            if n_rows + request.n_rows > self.options.max_batch {
                self.held = Some(request);
                return;
            }
            n_rows += request.n_rows;
            batch.push(request);
        }
    }

    /// Shows a remote engine's last outcome in the state and status.
    fn note_remote(&self, answered: bool) {
        let (Backend::Remote(remote), Some(status)) = (&self.backend, &self.shared.remote) else {
            return;
        };
        status.set_last_error(remote.last_error());
        self.shared.set_state(if answered {
            ModelState::Serving
        } else {
            ModelState::RemoteUnavailable
        });
    }

    fn run_batch(&mut self, batch: &mut Vec<Request>, rows: &mut Vec<f32>) {
        // Callers that stopped waiting need no answer.
        batch.retain(|request| !request.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        rows.clear();
        let mut n_rows = 0;
        for request in batch.iter() {
            rows.extend_from_slice(&request.rows);
            n_rows += request.n_rows;
        }
        let c = &*self.shared.stats.counters;
        // forward runs under tch::no_grad (grad mode is per thread).
        let started = std::time::Instant::now();
        let (result, attempted) = match &mut self.backend {
            Backend::Torch(torch) => {
                let result = torch.lock().forward(rows, n_rows);
                torch.forward_times.note(started.elapsed(), n_rows);
                (result, true)
            }
            Backend::Remote(remote) => match remote.forward(&self.clock, rows, n_rows) {
                RemoteOutcome::Answered(values) => (Ok(values), true),
                RemoteOutcome::Failed(error) => {
                    c.remote_errors.inc();
                    (Err(error), true)
                }
                // No request was made: nothing to time.
                RemoteOutcome::Waiting(error) => (Err(error), false),
            },
        };
        if attempted {
            c.latency.observe(started.elapsed().as_secs_f64());
            c.batch_sizes.observe(n_rows as f64);
        }
        let mut by_fallback = false;
        let result = match (&self.backend, result) {
            (Backend::Remote(remote), result) => {
                self.note_remote(result.is_ok());
                match (result, remote.model().fallback()) {
                    // The engine failed: the local fallback answers, tagged
                    // with its own version.
                    (Err(_), Some(fallback)) => {
                        by_fallback = true;
                        fallback.forward(rows, n_rows)
                    }
                    (result, _) => result,
                }
            }
            (Backend::Torch(_), result) => result,
        };
        match result {
            Ok(values) => {
                if by_fallback {
                    c.fallback_inferences.add(n_rows as u64);
                } else {
                    c.batches.inc();
                    c.inferences.add(n_rows as u64);
                }
                let n_outputs = self.shared.outputs.len();
                let mut rest = values.as_slice();
                for request in batch.drain(..) {
                    // forward checked the output's shape: the values are
                    // there for every row.
                    let (output, after) =
                        rest.split_at((request.n_rows * n_outputs).min(rest.len()));
                    rest = after;
                    // A caller that gave up meanwhile is no concern.
                    let _ = request.reply.send(Ok(Answer {
                        values: output.to_vec(),
                        by_fallback,
                    }));
                }
            }
            Err(error) => {
                c.failures.add(n_rows as u64);
                // A remote backend logs its engine's failures itself, once
                // per attempt rather than once per batch.
                if !matches!(error, ModelError::RemoteUnavailable { .. }) {
                    tracing::warn!(model = %self.shared.version.name, rows = n_rows, %error, "inference batch failed");
                }
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(copy_of(&error)));
                }
            }
        }
    }
}

/// Every request of a failed batch gets the same error; `ModelError` holds
/// non-cloneable sources in other variants, so copy the ones forward returns.
fn copy_of(error: &ModelError) -> ModelError {
    match error {
        ModelError::InputShape {
            model,
            n_rows,
            n_inputs,
            expected,
            actual,
        } => ModelError::InputShape {
            model: model.clone(),
            n_rows: *n_rows,
            n_inputs: *n_inputs,
            expected: *expected,
            actual: *actual,
        },
        ModelError::OutputShape {
            model,
            expected,
            actual,
        } => ModelError::OutputShape {
            model: model.clone(),
            expected: *expected,
            actual: actual.clone(),
        },
        ModelError::Inference { model, message } => ModelError::Inference {
            model: model.clone(),
            message: message.clone(),
        },
        ModelError::RemoteUnavailable {
            model,
            url,
            message,
        } => ModelError::RemoteUnavailable {
            model: model.clone(),
            url: url.clone(),
            message: message.clone(),
        },
        other => ModelError::Inference {
            model: String::new(),
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::registry::ModelRegistry;
    use crate::torch_backend::DeviceChoice;

    fn tiny_model() -> TorchModel {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny");
        let verified = ModelRegistry::open(dir).unwrap().load("1.0.0").unwrap();
        TorchModel::load(&verified, DeviceChoice::Cpu).unwrap()
    }

    #[tokio::test]
    async fn a_full_queue_rejects_the_newest_request_and_counts_it() {
        let (open_gate, gate) = std::sync::mpsc::channel();
        let options = InferenceOptions {
            queue_capacity: 2,
            max_wait: Duration::ZERO,
            ..InferenceOptions::default()
        };
        let handle = spawn_with_start_gate(tiny_model(), options, Some(gate)).unwrap();
        let registry = MetricsRegistry::new();
        handle.register(&registry, "tiny", "1.0.0");
        let depth = || {
            registry
                .snapshot()
                .into_iter()
                .find(|f| f.name == "ironbridge_inference_queue_depth")
                .and_then(|f| f.series.into_iter().next())
                .map(|s| s.value)
        };
        assert_eq!(depth(), Some(ironbridge_metrics::Value::Gauge(0.0)));

        // The worker is held at its gate, so nothing leaves the queue.
        let first = handle.submit(vec![1.0, 2.0, 3.0]).unwrap();
        let second = handle.submit(vec![0.0, 0.0, 0.0]).unwrap();
        assert_eq!(
            handle.submit(vec![5.0, 5.0, 5.0]).unwrap_err(),
            SubmitError::QueueFull
        );
        assert_eq!(handle.stats().snapshot().rejected_queue_full, 1);
        assert_eq!(handle.queue_depth(), 2);
        assert_eq!(depth(), Some(ironbridge_metrics::Value::Gauge(2.0)));

        open_gate.send(()).unwrap();
        assert_eq!(first.await.unwrap(), vec![14.5, -1.0]);
        assert_eq!(second.await.unwrap(), vec![0.5, -1.0]);
        assert_eq!(handle.queue_depth(), 0);
        // A version that is gone leaves the gauge (the registry holds its
        // queue weakly).
        let stats = handle.stats().snapshot();
        assert_eq!(stats.requests, 3);
        assert_eq!(stats.inferences, 2);
        assert_eq!(stats.rejected_queue_full, 1);
        drop(handle);
        assert_eq!(depth(), None);
    }

    #[tokio::test]
    async fn requests_queued_before_the_worker_starts_run_as_one_batch() {
        let (open_gate, gate) = std::sync::mpsc::channel();
        let options = InferenceOptions {
            max_batch: 8,
            max_wait: Duration::ZERO,
            ..InferenceOptions::default()
        };
        let handle = spawn_with_start_gate(tiny_model(), options, Some(gate)).unwrap();
        let pending: Vec<_> = (0..8)
            .map(|i| handle.submit(vec![i as f32, 0.0, 0.0]).unwrap())
            .collect();
        drop(open_gate);
        for (i, prediction) in pending.into_iter().enumerate() {
            let x = i as f32;
            assert_eq!(prediction.await.unwrap(), vec![x + 0.5, -x - 1.0]);
        }
        let stats = handle.stats().snapshot();
        assert_eq!((stats.batches, stats.inferences), (1, 8));
    }

    #[tokio::test]
    async fn a_queued_flat_batch_is_never_split_and_answers_row_after_row() {
        let (open_gate, gate) = std::sync::mpsc::channel();
        let options = InferenceOptions {
            max_batch: 4,
            max_wait: Duration::ZERO,
            ..InferenceOptions::default()
        };
        let handle = spawn_with_start_gate(tiny_model(), options, Some(gate)).unwrap();
        let row = |x: f32| [x, 0.0, 0.0];
        // 1 + 3 rows fill the first forward; 2 + 1 make the second, since
        // the 2 do not fit in the first.
        let pending = [
            handle.submit(row(0.0).to_vec()).unwrap(),
            handle
                .submit_batch(&[row(1.0), row(2.0), row(3.0)].concat())
                .unwrap(),
            handle.submit_batch(&[row(4.0), row(5.0)].concat()).unwrap(),
            handle.submit(row(6.0).to_vec()).unwrap(),
        ];
        assert_eq!(handle.queue_depth(), 4);
        drop(open_gate);
        let expected =
            |xs: &[f32]| -> Vec<f32> { xs.iter().flat_map(|&x| [x + 0.5, -x - 1.0]).collect() };
        let mut answers = Vec::new();
        for prediction in pending {
            answers.push(prediction.await.unwrap());
        }
        assert_eq!(
            answers,
            [
                expected(&[0.0]),
                expected(&[1.0, 2.0, 3.0]),
                expected(&[4.0, 5.0]),
                expected(&[6.0]),
            ]
        );
        let stats = handle.stats().snapshot();
        assert_eq!((stats.batches, stats.inferences, stats.requests), (2, 7, 7));
        let sizes = handle.stats().batch_sizes();
        assert_eq!((sizes.count, sizes.sum), (2, 7.0));
    }

    #[tokio::test]
    async fn a_flat_batch_runs_on_the_callers_thread_as_one_forward() {
        let handle = InferenceService::spawn(tiny_model(), InferenceOptions::default()).unwrap();
        let rows = [[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [3.0, 0.0, 0.0]].concat();
        // Until a forward was timed short, nothing runs inline (see above).
        let mut tries = 0;
        loop {
            tries += 1;
            assert!(tries < 100, "no flat batch ran on the caller's thread");
            std::thread::sleep(LONE_ROW_GAP * 2);
            let before = handle.stats().snapshot();
            let answer = handle.submit_batch(&rows).unwrap().await.unwrap();
            assert_eq!(answer, vec![1.5, -2.0, 2.5, -3.0, 3.5, -4.0]);
            let after = handle.stats().snapshot();
            assert_eq!(after.inferences - before.inferences, 3);
            assert_eq!(after.batches - before.batches, 1);
            if after.inline_inferences > before.inline_inferences {
                assert_eq!(after.inline_inferences - before.inline_inferences, 3);
                break;
            }
        }
        // No rows: nothing to run, an empty answer.
        assert_eq!(
            handle.submit_batch(&[]).unwrap().await.unwrap(),
            Vec::<f32>::new()
        );
    }

    #[tokio::test]
    async fn a_flat_batch_is_refused_whole_for_its_length_size_or_rate() {
        let options = InferenceOptions {
            max_batch: 4,
            rate_limit_per_s: NonZeroU32::new(2),
            ..InferenceOptions::default()
        };
        let handle = InferenceService::spawn(tiny_model(), options).unwrap();
        assert_eq!(
            handle.submit_batch(&[1.0; 7]).unwrap_err(),
            SubmitError::BatchLength {
                n_inputs: 3,
                actual: 7
            }
        );
        assert_eq!(
            handle.submit_batch(&[1.0; 15]).unwrap_err(),
            SubmitError::TooManyRows {
                max_batch: 4,
                actual: 5
            }
        );
        // 3 rows are more than the limit's burst of 2: refused whole, and
        // they take nothing from it, so 2 rows still pass.
        assert_eq!(
            handle.submit_batch(&[1.0; 9]).unwrap_err(),
            SubmitError::RateLimited
        );
        assert_eq!(
            handle.submit_batch(&[1.0; 6]).unwrap().await.unwrap().len(),
            4
        );
        let stats = handle.stats().snapshot();
        assert_eq!(stats.requests, 1 + 5 + 3 + 2);
        assert_eq!(stats.failures, 1 + 5);
        assert_eq!(stats.rejected_rate_limited, 3);
        assert_eq!(stats.inferences, 2);
        assert!(SubmitError::TooManyRows {
            max_batch: 4,
            actual: 5
        }
        .to_string()
        .contains("max_batch"));
    }

    #[tokio::test]
    async fn a_lone_row_runs_on_the_callers_thread_and_a_burst_queues() {
        let handle = InferenceService::spawn(tiny_model(), InferenceOptions::default()).unwrap();
        let lone_row = || std::thread::sleep(LONE_ROW_GAP * 2);
        // The worker runs the first rows: until a forward was timed short
        // (TorchScript's first runs are slow), nothing runs inline. On a
        // loaded machine a forward may take longer than INLINE_FORWARD_MAX:
        // hence tries, not one row.
        let first = handle.submit(vec![1.0, 2.0, 3.0]).unwrap();
        assert_eq!(first.await.unwrap(), vec![14.5, -1.0]);
        let mut tries = 0;
        while handle.stats().snapshot().inline_inferences == 0 {
            tries += 1;
            assert!(tries < 100, "no lone row ran on the caller's thread");
            lone_row();
            let x = tries as f32;
            let answer = handle.submit(vec![x, 0.0, 0.0]).unwrap().await.unwrap();
            assert_eq!(answer, vec![x + 0.5, -x - 1.0]);
        }

        // A burst: its rows come right behind each other, so at most the
        // first runs inline and the rest queue for the worker (how many
        // share a forward depends on the worker's timing).
        lone_row();
        let before = handle.stats().snapshot();
        let started = Instant::now();
        let pending: Vec<_> = (0..9)
            .map(|i| handle.submit(vec![i as f32, 0.0, 0.0]).unwrap())
            .collect();
        let submitting = started.elapsed();
        for (i, prediction) in pending.into_iter().enumerate() {
            let x = i as f32;
            assert_eq!(prediction.await.unwrap(), vec![x + 0.5, -x - 1.0]);
        }
        let after = handle.stats().snapshot();
        assert_eq!(after.inferences - before.inferences, 9);
        let inline = after.inline_inferences - before.inline_inferences;
        if submitting < LONE_ROW_GAP {
            assert!(inline <= 1, "{after:?}");
        } else {
            // The test thread was held up mid-burst (a loaded machine):
            // a row after the pause is lone again.
            assert!(inline < 9, "{after:?}");
        }
    }

    #[tokio::test]
    async fn a_row_after_every_answer_was_taken_runs_on_the_callers_thread() {
        let handle = InferenceService::spawn(tiny_model(), InferenceOptions::default()).unwrap();
        // Until a forward was timed short, nothing runs inline (see above).
        let mut tries = 0;
        while handle.stats().snapshot().inline_inferences == 0 {
            tries += 1;
            assert!(tries < 100, "no lone row ran on the caller's thread");
            std::thread::sleep(LONE_ROW_GAP * 2);
            handle.submit(vec![1.0, 0.0, 0.0]).unwrap().await.unwrap();
        }
        // Rows back to back, each submitted once the answer before it was
        // taken: nothing is in flight for them to join, so they need not
        // be lone to run on this thread.
        let before = handle.stats().snapshot();
        for i in 0..20 {
            let x = i as f32;
            let answer = handle.submit(vec![x, 0.0, 0.0]).unwrap().await.unwrap();
            assert_eq!(answer, vec![x + 0.5, -x - 1.0]);
        }
        let after = handle.stats().snapshot();
        assert_eq!(after.inferences - before.inferences, 20);
        let inline = after.inline_inferences - before.inline_inferences;
        // A forward timed over INLINE_FORWARD_MAX on a loaded machine sends
        // the next row to the worker; most rows still run here.
        assert!(inline >= 10, "{inline} of 20 rows ran inline: {after:?}");
    }

    #[tokio::test]
    async fn rows_submitted_together_run_as_one_forward_and_answer_in_order() {
        let handle = InferenceService::spawn(tiny_model(), InferenceOptions::default()).unwrap();
        // Until a forward was timed short, nothing runs inline (see above).
        let mut tries = 0;
        loop {
            tries += 1;
            assert!(tries < 100, "no burst ran on the caller's thread");
            std::thread::sleep(LONE_ROW_GAP * 2);
            let before = handle.stats().snapshot();
            let rows = vec![
                vec![1.0, 0.0, 0.0],
                vec![9.0],
                vec![2.0, 0.0, 0.0],
                vec![3.0, 0.0, 0.0],
            ];
            let answers = handle.submit_many(rows);
            assert_eq!(answers.len(), 4);
            let mut answers = answers.into_iter();
            let first = answers.next().unwrap().unwrap();
            assert_eq!(
                answers.next().unwrap().unwrap_err(),
                SubmitError::RowLength {
                    expected: 3,
                    actual: 1
                }
            );
            let rest: Vec<_> = answers.map(Result::unwrap).collect();
            assert_eq!(first.await.unwrap(), vec![1.5, -2.0]);
            for (x, prediction) in [2.0f32, 3.0].into_iter().zip(rest) {
                assert_eq!(prediction.await.unwrap(), vec![x + 0.5, -x - 1.0]);
            }
            let after = handle.stats().snapshot();
            assert_eq!(after.inferences - before.inferences, 3);
            assert_eq!(after.failures - before.failures, 1);
            if after.inline_inferences > before.inline_inferences {
                // The three rows ran inline, together.
                assert_eq!(after.inline_inferences - before.inline_inferences, 3);
                assert_eq!(after.batches - before.batches, 1);
                break;
            }
        }
    }

    #[test]
    fn a_bursts_forward_is_estimated_in_proportion_to_its_rows() {
        let times = ForwardTimes::default();
        assert_eq!(times.estimate_ns(1), 0, "no forward timed yet");
        times.note(Duration::from_micros(100), 1);
        assert_eq!(times.estimate_ns(1), 100_000);
        // Four rows after a one-row forward of 100 µs: up to 400 µs.
        assert_eq!(times.estimate_ns(4), 400_000);
        // Six rows would pass INLINE_FORWARD_MAX: they queue.
        assert!(times.estimate_ns(6) > INLINE_FORWARD_MAX.as_nanos() as u64);
        // After a forward of 64 rows in 40 µs, fewer rows take no longer
        // (one row: as its own last forward, the nearest in size).
        times.note(Duration::from_micros(40), 64);
        assert_eq!(times.estimate_ns(1), 100_000);
        assert_eq!(times.estimate_ns(4), 40_000);
        assert_eq!(times.estimate_ns(64), 40_000);
        assert_eq!(times.estimate_ns(128), 80_000);
    }

    #[test]
    fn a_burst_is_estimated_from_the_nearest_timed_forward_of_its_size_or_more() {
        let times = ForwardTimes::default();
        // Cold forwards at slow polls: 10 rows in 250 µs, then 3 in 220.
        times.note(Duration::from_micros(250), 10);
        times.note(Duration::from_micros(220), 3);
        // The next 10 rows are judged by the 10-row forward, not by the
        // 3-row one scaled (733 µs): they run inline.
        assert_eq!(times.estimate_ns(10), 250_000);
        assert!(times.estimate_ns(10) <= INLINE_FORWARD_MAX.as_nanos() as u64);
        assert_eq!(times.estimate_ns(9), 250_000);
        assert_eq!(times.estimate_ns(3), 220_000);
        // Two rows: the 3-row forward is the nearest of as many or more.
        assert_eq!(times.estimate_ns(2), 220_000);
        // More than any timed forward: scaled from the nearest smaller one.
        assert_eq!(times.estimate_ns(16), 400_000);
        assert_eq!(times.estimate_ns(12), 300_000);
    }

    #[tokio::test]
    async fn a_batching_window_keeps_every_row_on_the_worker() {
        let options = InferenceOptions {
            max_wait: Duration::from_millis(1),
            ..InferenceOptions::default()
        };
        let handle = InferenceService::spawn(tiny_model(), options).unwrap();
        for i in 0..20 {
            let x = i as f32;
            let answer = handle.submit(vec![x, 0.0, 0.0]).unwrap().await.unwrap();
            assert_eq!(answer, vec![x + 0.5, -x - 1.0]);
        }
        let stats = handle.stats().snapshot();
        assert_eq!((stats.inferences, stats.inline_inferences), (20, 0));
    }

    #[tokio::test]
    async fn a_remote_version_falls_back_to_its_local_version_while_the_engine_fails() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny");
        let verified = ModelRegistry::open(dir).unwrap().load("1.0.0").unwrap();
        // A port nobody listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = crate::remote::RemoteOptions {
            url: format!("http://127.0.0.1:{port}"),
            remote_model: "tiny".into(),
            timeout: Duration::from_secs(2),
            token: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            backoff: crate::remote::REMOTE_BACKOFF,
            fallback_version: Some("1.0.0".into()),
        };
        let model = RemoteModel::new(&verified, &options)
            .unwrap()
            .with_fallback(tiny_model());
        let handle = InferenceService::spawn_remote(model, InferenceOptions::default()).unwrap();
        let (values, by) = handle
            .submit(vec![1.0, 2.0, 3.0])
            .unwrap()
            .wait_versioned()
            .await
            .unwrap();
        assert_eq!(values, vec![14.5, -1.0]);
        assert_eq!(by.as_deref(), Some("1.0.0"));
        let stats = handle.stats().snapshot();
        assert_eq!((stats.fallback_inferences, stats.inferences), (1, 0));
        assert_eq!(handle.status().state, ModelState::RemoteUnavailable);
        let remote = handle.status().remote.unwrap();
        assert!(!remote.reachable);
        assert!(remote.last_error.unwrap().contains("cannot connect"));
    }

    #[test]
    fn invalid_options_are_refused_before_starting() {
        let options = InferenceOptions {
            max_batch: 0,
            ..InferenceOptions::default()
        };
        let err = InferenceService::spawn(tiny_model(), options).unwrap_err();
        assert!(err.to_string().contains("max_batch"), "{err}");
    }
}
