//! Raw libtorch forward vs. the full inference-service path, batch 1 and 64
//! (rows submitted one by one, 64 handed over together as rows, and 64 in
//! one flat buffer).
//!
//! cargo bench -p ironbridge-models --bench inference -- [model-version-dir]
//!
//! The directory defaults to the tiny test fixture. Each case is warmed up,
//! then timed over several rounds; the table shows the median round. The
//! cases compared with the raw forward side by side alternate with it
//! (round by round for 64 rows, call by call for lone rows), and their
//! ratio or difference is the median over those pairs.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use ironbridge_models::{
    DeviceChoice, InferenceHandle, InferenceOptions, InferenceService, TorchModel, VerifiedModel,
};

const WARM_UP: usize = 200;
const ITERATIONS: usize = 2000;
const ROUNDS: usize = 5;
/// Rounds of the alternating cases, each of a tenth of `ITERATIONS` calls.
const ALTERNATING_ROUNDS: usize = 100;
/// Pairs of lone calls that warm up (each call after a pause of 2 ms);
/// `ROUNDS` times as many are timed.
const LONE_ITERATIONS: usize = 300;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // cargo passes `--bench` to harness-less benches; the only positional
    // argument is the model folder.
    let dir = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with("--"))
        .map(|arg| common::resolve(Path::new(&arg)))
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
    // the gaps between calls left out, alternating call by call with the
    // raw forward, which is timed the same way since caches cool in the
    // gaps too. The answer is taken with `blocking_wait` (it is there at
    // once, so nothing blocks), as a caller inside a task takes it with
    // one poll; entering a runtime's `block_on` for each call would add
    // the harness's own cost (timed below for comparison).
    let mut lone = Vec::new();
    {
        let input = raw_model.input_tensor(&row, 1)?;
        let module = raw_model.module();
        let raw = || -> Result<(), Box<dyn std::error::Error>> {
            tch::no_grad(|| module.forward_ts(&[&input]))
                .map(drop)
                .map_err(Into::into)
        };
        let handle = InferenceService::spawn(
            TorchModel::load(&verified, DeviceChoice::Cpu)?,
            InferenceOptions::default(),
        )?;
        // Its own instance, as the service has: sharing the raw forward's
        // module would find its memory warmed by the raw call beside it.
        let model = TorchModel::load(&verified, DeviceChoice::Cpu)?;
        let cases: [(&'static str, Call); 4] = [
            // The model's own forward alone, to tell its part (the tensor
            // in, the output copied out) from the service's bookkeeping.
            ("TorchModel::forward, lone", &mut || {
                model.forward(&row, 1).map(drop).map_err(Into::into)
            }),
            ("service, submit_batch, lone", &mut || {
                handle.submit_batch(&row)?.blocking_wait()?;
                Ok(())
            }),
            // The caller's own row vector included.
            ("service, submit, lone", &mut || {
                handle.submit(row.to_vec())?.blocking_wait()?;
                Ok(())
            }),
            ("service, submit, block_on", &mut || {
                runtime.block_on(submit_and_await(&handle, &row, 1))
            }),
        ];
        for (path, case) in cases {
            let (raw_time, time, difference) = measure_lone_pair(raw, case)?;
            if lone.is_empty() {
                table.push(Line::new("raw forward_ts, lone", 1, raw_time, raw_time));
            }
            table.push(Line::new(path, 1, time, raw_time));
            lone.push((path, difference));
        }
        let stats = handle.stats().snapshot();
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
        // The rows handed over whole: as rows (the gateway's fan-out hands
        // the rows of the scans that queued together so), and in one flat
        // buffer. Timed in rounds alternating with the raw forward and the
        // model's own forward (tensor made from the rows, outputs copied
        // out), since the ratio is what matters and this machine's speed
        // drifts between cases.
        if batch > 1 {
            let spawn = || {
                InferenceService::spawn(
                    TorchModel::load(&verified, DeviceChoice::Cpu)?,
                    InferenceOptions::default(),
                )
            };
            let (many, flat) = (spawn()?, spawn()?);
            let n_outputs = batch * manifest.outputs.len();
            let times = measure_alternating(
                ITERATIONS,
                &mut [
                    &mut || {
                        tch::no_grad(|| module.forward_ts(&[&input]))
                            .map(drop)
                            .map_err(Into::into)
                    },
                    &mut || {
                        raw_model
                            .forward(&rows, batch)
                            .map(drop)
                            .map_err(Into::into)
                    },
                    &mut || runtime.block_on(submit_many_and_await(&many, &row, batch)),
                    &mut || runtime.block_on(submit_batch_and_await(&flat, &rows, n_outputs)),
                ],
            )?;
            let raw = times[0].0;
            let forwards = |handle: &InferenceHandle| {
                let stats = handle.stats().snapshot();
                stats.batches as f64 / (stats.inferences as f64 / batch as f64)
            };
            table.push(Line::new("raw forward_ts (paired)", batch, raw, raw));
            let paired = |path, (time, ratio): (Duration, f64)| {
                Line::new(path, batch, time, raw).ratio(ratio)
            };
            table.push(paired("TorchModel::forward", times[1]));
            table.push(paired("service, submit_many", times[2]).batches(forwards(&many)));
            table.push(paired("service, submit_batch", times[3]).batches(forwards(&flat)));
        }
    }

    println!();
    println!(
        "{:<28} {:>5} {:>12} {:>11} {:>13} {:>13}",
        "path", "batch", "µs/call", "µs/row", "service/raw", "forwards/call"
    );
    for line in &table {
        println!(
            "{:<28} {:>5} {:>12.1} {:>11.2} {:>13} {:>13}",
            line.path,
            line.batch,
            line.per_call_us,
            line.per_call_us / line.batch as f64,
            if line.path.starts_with("raw") {
                "-".to_owned()
            } else {
                format!(
                    "{:.2}x",
                    line.ratio.unwrap_or(line.per_call_us / line.raw_us)
                )
            },
            line.batches_per_call
                .map_or("-".to_owned(), |b| format!("{b:.2}")),
        );
    }
    println!("lone rows, median of the pairs' differences from the raw forward beside them:");
    for (path, difference) in lone {
        println!("  {path:<28} {:+.1} µs", difference * 1e6);
    }
    Ok(())
}

struct Line {
    path: &'static str,
    batch: usize,
    per_call_us: f64,
    raw_us: f64,
    batches_per_call: Option<f64>,
    /// Against the raw forward, when measured round by round.
    ratio: Option<f64>,
}

impl Line {
    fn new(path: &'static str, batch: usize, per_call: Duration, raw: Duration) -> Self {
        Self {
            path,
            batch,
            per_call_us: per_call.as_secs_f64() * 1e6,
            raw_us: raw.as_secs_f64() * 1e6,
            batches_per_call: None,
            ratio: None,
        }
    }

    fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = Some(ratio);
        self
    }

    fn batches(mut self, per_call: f64) -> Self {
        self.batches_per_call = Some(per_call);
        self
    }
}

/// Two calls alternating call by call, each after a pause of twice
/// `LONE_ROW_GAP` that is not timed: the median call of each, and the
/// median over the pairs of the second's time minus the first's, in
/// seconds. The first `LONE_ITERATIONS` pairs warm up.
fn measure_lone_pair(
    mut a: impl FnMut() -> Result<(), Box<dyn std::error::Error>>,
    mut b: impl FnMut() -> Result<(), Box<dyn std::error::Error>>,
) -> Result<(Duration, Duration, f64), Box<dyn std::error::Error>> {
    let gap = ironbridge_models::LONE_ROW_GAP * 2;
    let timed = |call: &mut dyn FnMut() -> Result<(), Box<dyn std::error::Error>>| {
        std::thread::sleep(gap);
        let start = Instant::now();
        call()?;
        Ok::<_, Box<dyn std::error::Error>>(start.elapsed())
    };
    let pairs = LONE_ITERATIONS * ROUNDS;
    let (mut times_a, mut times_b, mut differences) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..LONE_ITERATIONS + pairs {
        // The order flips every pair: the second call of a pair runs
        // warmer than the first (by about 2 µs on this machine).
        let (took_a, took_b) = if i % 2 == 0 {
            (timed(&mut a)?, timed(&mut b)?)
        } else {
            let took_b = timed(&mut b)?;
            (timed(&mut a)?, took_b)
        };
        if i >= LONE_ITERATIONS {
            times_a.push(took_a);
            times_b.push(took_b);
            differences.push(took_b.as_secs_f64() - took_a.as_secs_f64());
        }
    }
    times_a.sort();
    times_b.sort();
    differences.sort_by(f64::total_cmp);
    Ok((
        times_a[pairs / 2],
        times_b[pairs / 2],
        differences[pairs / 2],
    ))
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

type Call<'a> = &'a mut dyn FnMut() -> Result<(), Box<dyn std::error::Error>>;

/// Several calls timed in alternating rounds (a, b, c, c, b, a, a, b, ...),
/// so that all see the machine in the same states and none always follows
/// the same one. For each call: the median round's mean time per call, and
/// the median over rounds of its time against the first call's in the same
/// round (robust to the machine's speed drifting between rounds).
fn measure_alternating(
    iterations: usize,
    calls: &mut [Call<'_>],
) -> Result<Vec<(Duration, f64)>, Box<dyn std::error::Error>> {
    for _ in 0..WARM_UP.min(iterations) {
        for call in calls.iter_mut() {
            call()?;
        }
    }
    // Many short rounds: each call sees every phase of the drift, and the
    // medians drop the rounds a neighbour spoilt.
    let per_round = (iterations / 10).max(1);
    let mut rounds = vec![Vec::with_capacity(ALTERNATING_ROUNDS); calls.len()];
    for round in 0..ALTERNATING_ROUNDS {
        let mut order: Vec<usize> = (0..calls.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let start = Instant::now();
            for _ in 0..per_round {
                calls[i]()?;
            }
            rounds[i].push(start.elapsed() / per_round as u32);
        }
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let first = rounds[0].clone();
    Ok(rounds
        .into_iter()
        .map(|times| {
            let ratios = times
                .iter()
                .zip(&first)
                .map(|(t, f)| t.as_secs_f64() / f.as_secs_f64())
                .collect();
            let mut sorted = times;
            sorted.sort();
            (sorted[ALTERNATING_ROUNDS / 2], median(ratios))
        })
        .collect())
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

async fn submit_batch_and_await(
    handle: &InferenceHandle,
    rows: &[f32],
    n_outputs: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let outputs = handle.submit_batch(rows)?.await?;
    if outputs.len() != n_outputs {
        return Err(format!("{} outputs, not {n_outputs}", outputs.len()).into());
    }
    Ok(())
}
