//! Raw libtorch forward vs. the full inference-service path, batch 1 and 64
//! (rows submitted one by one, and 64 handed over together).
//!
//! cargo bench -p ironbridge-models --bench inference -- [model-version-dir]
//!
//! The directory defaults to the tiny test fixture. Each case is warmed up,
//! then timed over several rounds; the table shows the median round.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ironbridge_models::{
    DeviceChoice, InferenceHandle, InferenceOptions, InferenceService, TorchModel, VerifiedModel,
};

const WARM_UP: usize = 200;
const ITERATIONS: usize = 2000;
const ROUNDS: usize = 5;
/// Calls per round of the lone-row cases (each after a pause of 2 ms).
const LONE_ITERATIONS: usize = 300;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // cargo passes `--bench` to harness-less benches; the only positional
    // argument is the model folder.
    let dir = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with("--"))
        .map(|arg| resolve(Path::new(&arg)))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/1.0.0"));
    let verified = VerifiedModel::from_version_dir(&dir)?;
    let manifest = verified.manifest();
    println!(
        "model {} {} ({} inputs -> {} outputs) from {}",
        manifest.name,
        manifest.version,
        manifest.inputs.len(),
        manifest.outputs.len(),
        dir.display()
    );
    tch::set_num_threads(1);
    println!(
        "libtorch intra-op threads: {}; {ITERATIONS} iterations x {ROUNDS} rounds, median round",
        tch::get_num_threads()
    );

    let n_inputs = manifest.inputs.len();
    // Mid-range values: a valid row for any manifest.
    let row: Vec<f32> = manifest
        .inputs
        .iter()
        .map(|input| ((input.min + input.max) / 2.0) as f32)
        .collect();

    let raw_model = TorchModel::load(&verified, DeviceChoice::Cpu)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let mut table = Vec::new();
    // A lone request (the previous one long gone, as at one machine's poll
    // rate): the service runs it on the caller's thread. Timed per call,
    // the gaps between calls left out; raw forward timed the same way,
    // since caches cool in the gaps too.
    {
        let input = raw_model.input_tensor(&row, 1)?;
        let module = raw_model.module();
        let raw = measure_lone(LONE_ITERATIONS, || {
            tch::no_grad(|| module.forward_ts(&[&input])).map(drop)
        })?;
        table.push(Line::new("raw forward_ts, lone", 1, raw, raw));
        let handle = InferenceService::spawn(
            TorchModel::load(&verified, DeviceChoice::Cpu)?,
            InferenceOptions::default(),
        )?;
        let service = measure_lone(LONE_ITERATIONS, || {
            runtime.block_on(submit_and_await(&handle, &row, 1))
        })?;
        let stats = handle.stats().snapshot();
        table.push(
            Line::new("service, lone rows", 1, service, raw)
                .batches(stats.batches as f64 / stats.inferences as f64),
        );
        println!(
            "lone rows run on the caller's thread: {} of {}",
            stats.inline_inferences, stats.inferences
        );
    }
    for batch in [1usize, 64] {
        let rows: Vec<f32> = row.iter().copied().cycle().take(batch * n_inputs).collect();
        let input = raw_model.input_tensor(&rows, batch)?;
        let module = raw_model.module();
        let raw = measure(ITERATIONS, || {
            tch::no_grad(|| module.forward_ts(&[&input])).map(drop)
        })?;
        table.push(Line::new("raw forward_ts", batch, raw, raw));

        // max_wait 0 (the default) adds no deliberate wait: this is the
        // service's own overhead. 5 ms shows what a batching window costs a
        // lone request, and what it buys 64 concurrent ones.
        for (label, max_wait, iterations) in [
            ("service, max_wait 0", Duration::ZERO, ITERATIONS),
            (
                "service, max_wait 5ms",
                Duration::from_millis(5),
                ITERATIONS / 10,
            ),
        ] {
            let options = InferenceOptions {
                max_batch: 64,
                max_wait,
                ..InferenceOptions::default()
            };
            let (service, batches_per_call) =
                measure_service(&verified, options, &runtime, &row, batch, iterations)?;
            table.push(Line::new(label, batch, service, raw).batches(batches_per_call));
        }
        // The rows handed over whole, as the gateway's fan-out hands the
        // rows of the scans that queued together. Timed in rounds
        // alternating with the raw forward (the ratio is what matters, and
        // this machine's speed drifts between cases).
        if batch > 1 {
            let handle = InferenceService::spawn(
                TorchModel::load(&verified, DeviceChoice::Cpu)?,
                InferenceOptions::default(),
            )?;
            let (raw, service) = measure_pair(
                ITERATIONS,
                || {
                    tch::no_grad(|| module.forward_ts(&[&input]))
                        .map(drop)
                        .map_err(Into::into)
                },
                || runtime.block_on(submit_many_and_await(&handle, &row, batch)),
            )?;
            let stats = handle.stats().snapshot();
            table.push(Line::new("raw forward_ts (paired)", batch, raw, raw));
            table.push(
                Line::new("service, submit_many", batch, service, raw)
                    .batches(stats.batches as f64 / (stats.inferences as f64 / batch as f64)),
            );
        }
    }

    println!();
    println!(
        "{:<24} {:>5} {:>12} {:>11} {:>13} {:>13}",
        "path", "batch", "µs/call", "µs/row", "service/raw", "forwards/call"
    );
    for line in &table {
        println!(
            "{:<24} {:>5} {:>12.1} {:>11.2} {:>13} {:>13}",
            line.path,
            line.batch,
            line.per_call_us,
            line.per_call_us / line.batch as f64,
            if line.path.starts_with("raw") {
                "-".to_owned()
            } else {
                format!("{:.2}x", line.per_call_us / line.raw_us)
            },
            line.batches_per_call
                .map_or("-".to_owned(), |b| format!("{b:.2}")),
        );
    }
    Ok(())
}

struct Line {
    path: &'static str,
    batch: usize,
    per_call_us: f64,
    raw_us: f64,
    batches_per_call: Option<f64>,
}

impl Line {
    fn new(path: &'static str, batch: usize, per_call: Duration, raw: Duration) -> Self {
        Self {
            path,
            batch,
            per_call_us: per_call.as_secs_f64() * 1e6,
            raw_us: raw.as_secs_f64() * 1e6,
            batches_per_call: None,
        }
    }

    fn batches(mut self, per_call: f64) -> Self {
        self.batches_per_call = Some(per_call);
        self
    }
}

/// Like [`measure`], with a pause of twice `LONE_ROW_GAP` before each call
/// that is not timed.
fn measure_lone<E>(
    iterations: usize,
    mut call: impl FnMut() -> Result<(), E>,
) -> Result<Duration, E> {
    let gap = ironbridge_models::LONE_ROW_GAP * 2;
    measure_rounds(|| {
        let mut took = Duration::ZERO;
        for _ in 0..iterations {
            std::thread::sleep(gap);
            let start = Instant::now();
            call()?;
            took += start.elapsed();
        }
        Ok(took / iterations as u32)
    })
}

/// Median over rounds of what `round` returns, after one round to warm up.
fn measure_rounds<E>(mut round: impl FnMut() -> Result<Duration, E>) -> Result<Duration, E> {
    round()?;
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        rounds.push(round()?);
    }
    rounds.sort();
    Ok(rounds[ROUNDS / 2])
}

/// Median over rounds of the mean time per call.
fn measure<E>(iterations: usize, mut call: impl FnMut() -> Result<(), E>) -> Result<Duration, E> {
    for _ in 0..WARM_UP.min(iterations) {
        call()?;
    }
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..iterations {
            call()?;
        }
        rounds.push(start.elapsed() / iterations as u32);
    }
    rounds.sort();
    Ok(rounds[ROUNDS / 2])
}

/// Medians over rounds of two calls' mean times, the rounds alternating
/// (a, b, a, b, ...) so that both see the machine in the same state.
fn measure_pair(
    iterations: usize,
    mut a: impl FnMut() -> Result<(), Box<dyn std::error::Error>>,
    mut b: impl FnMut() -> Result<(), Box<dyn std::error::Error>>,
) -> Result<(Duration, Duration), Box<dyn std::error::Error>> {
    for _ in 0..WARM_UP.min(iterations) {
        a()?;
        b()?;
    }
    // Twice the rounds, each half as long: the same calls as `measure`.
    let per_round = (iterations / 2).max(1);
    let mut rounds = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS * 2 {
        let calls: [&mut dyn FnMut() -> Result<(), Box<dyn std::error::Error>>; 2] =
            [&mut a, &mut b];
        for (call, rounds) in calls.into_iter().zip(rounds.iter_mut()) {
            let start = Instant::now();
            for _ in 0..per_round {
                call()?;
            }
            rounds.push(start.elapsed() / per_round as u32);
        }
    }
    let [mut rounds_a, mut rounds_b] = rounds;
    rounds_a.sort();
    rounds_b.sort();
    Ok((rounds_a[ROUNDS], rounds_b[ROUNDS]))
}

/// Times submit-and-await of `batch` rows through a fresh service; also
/// returns how many forwards ran per call.
fn measure_service(
    verified: &VerifiedModel,
    options: InferenceOptions,
    runtime: &tokio::runtime::Runtime,
    row: &[f32],
    batch: usize,
    iterations: usize,
) -> Result<(Duration, f64), Box<dyn std::error::Error>> {
    let handle = InferenceService::spawn(TorchModel::load(verified, DeviceChoice::Cpu)?, options)?;
    let per_call = measure(iterations, || {
        runtime.block_on(submit_and_await(&handle, row, batch))
    })?;
    let stats = handle.stats().snapshot();
    Ok((
        per_call,
        stats.batches as f64 / (stats.inferences as f64 / batch as f64),
    ))
}

async fn submit_and_await(
    handle: &InferenceHandle,
    row: &[f32],
    batch: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    // All rows are queued before any answer is awaited, as concurrent
    // callers would do.
    let mut pending = Vec::with_capacity(batch);
    for _ in 0..batch {
        pending.push(handle.submit(row.to_vec())?);
    }
    for prediction in pending {
        prediction.await?;
    }
    Ok(())
}

async fn submit_many_and_await(
    handle: &InferenceHandle,
    row: &[f32],
    batch: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let rows = (0..batch).map(|_| row.to_vec()).collect();
    for prediction in handle.submit_many(rows) {
        prediction?.await?;
    }
    Ok(())
}

/// Relative paths are tried from the current directory (cargo runs benches
/// in the package folder), then from the workspace root.
fn resolve(path: &Path) -> PathBuf {
    if path.is_absolute() || path.exists() {
        return path.to_path_buf();
    }
    let from_workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    if from_workspace.exists() {
        from_workspace
    } else {
        path.to_path_buf()
    }
}
