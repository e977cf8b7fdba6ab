//! Model lifecycle costs on real libtorch (BENCHMARKS.md, "Model versions"):
//!
//! - activation: time of the `activate` call (verify, load, warm up, start,
//!   swap) and from the call to the first answer computed by the new
//!   version, while rows arrive at a steady rate;
//! - the swap under load: rows refused or unanswered across it (the target
//!   is none), and the largest gap between consecutive answers around it;
//! - shadow overhead: process CPU per served prediction with and without a
//!   shadow version answering the same rows.
//!
//! cargo bench -p ironbridge-models --bench lifecycle -- [model-version-dir] [rows-per-s]
//!
//! The model defaults to models/examples/bearing-wear/1.0.0, the rate to
//! 1000 rows/s. A second version is a copy of it under another version name
//! (same bytes, so both compute the same; what is measured is the
//! machinery). Output: one JSON object per measurement, then a summary.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ironbridge_models::{
    InferenceOptions, LifecycleOptions, ModelLifecycle, PendingPrediction, VerifiedModel,
};

const SWAPS: usize = 5;
const SHADOW_SECONDS: u64 = 10;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let source = args
        .first()
        .map(|a| common::resolve(Path::new(a)))
        .unwrap_or_else(|| common::resolve(Path::new("models/examples/bearing-wear/1.0.0")));
    let rate: u64 = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(1000);
    let verified = VerifiedModel::from_version_dir(&source)?;
    let manifest = verified.manifest().clone();
    let version = manifest.version.clone();
    let other = format!("{version}-copy");

    let dir =
        std::env::temp_dir().join(format!("ironbridge-lifecycle-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_version(&source, &dir.join(&version), &version, &version)?;
    copy_version(&source, &dir.join(&other), &version, &other)?;

    let options = LifecycleOptions {
        device: Default::default(),
        inference: InferenceOptions {
            max_batch: 64,
            max_wait: Duration::ZERO,
            queue_capacity: 4096,
            rate_limit_per_s: None,
            intra_op_threads: 1,
        },
        metrics: Default::default(),
        remote: None,
    };
    let lifecycle = std::sync::Arc::new(ModelLifecycle::start(
        &manifest.name,
        &dir,
        &version,
        options,
    )?);
    let row: Vec<f32> = manifest
        .inputs
        .iter()
        .map(|i| ((i.min + i.max) / 2.0) as f32)
        .collect();
    println!(
        "model {} {} from {}; {rate} rows/s; libtorch threads 1",
        manifest.name,
        version,
        source.display()
    );

    // The same load without a swap: how large gaps between answers are
    // anyway on this machine.
    let baseline = run_with_swap(&lifecycle, &row, rate, None)?;
    println!(
        "{{\"swap\": null, \"rows\": {}, \"refused\": {}, \"failed\": {}, \"max_gap_ms\": {:.2}, \"median_gap_ms\": {:.3}}}",
        baseline.rows, baseline.refused, baseline.failed, baseline.max_gap_ms, baseline.median_gap_ms
    );

    // Activation and the swap under load, SWAPS times back and forth.
    let mut activation_ms = Vec::new();
    let mut first_answer_ms = Vec::new();
    let mut worst_gap_ms: f64 = 0.0;
    let mut typical_gap_ms = Vec::new();
    let mut refused_total = 0u64;
    let mut failed_total = 0u64;
    let mut rows_total = 0u64;
    for i in 0..SWAPS {
        let target = if i % 2 == 0 { &other } else { &version };
        let run = run_with_swap(&lifecycle, &row, rate, Some(target))?;
        println!(
            "{{\"swap\": {i}, \"to\": \"{target}\", \"activate_call_ms\": {:.1}, \"call_to_first_new_answer_ms\": {:.1}, \"rows\": {}, \"refused\": {}, \"failed\": {}, \"max_gap_ms\": {:.2}, \"median_gap_ms\": {:.3}}}",
            run.activate_ms, run.first_new_ms, run.rows, run.refused, run.failed, run.max_gap_ms, run.median_gap_ms
        );
        activation_ms.push(run.activate_ms);
        first_answer_ms.push(run.first_new_ms);
        worst_gap_ms = worst_gap_ms.max(run.max_gap_ms);
        typical_gap_ms.push(run.median_gap_ms);
        refused_total += run.refused;
        failed_total += run.failed;
        rows_total += run.rows;
    }

    // Shadow overhead: the same steady rate, without and with a shadow.
    let without = cpu_per_prediction(&lifecycle, &row, rate, false)?;
    lifecycle.start_shadow(
        if &*lifecycle.serving().version == version.as_str() {
            &other
        } else {
            &version
        },
        "bench",
    )?;
    let with = cpu_per_prediction(&lifecycle, &row, rate, true)?;
    lifecycle.stop_shadow("bench")?;
    println!(
        "{{\"shadow\": false, \"cpu_us_per_prediction\": {:.1}, \"predictions\": {}}}",
        without.0, without.1
    );
    println!(
        "{{\"shadow\": true, \"cpu_us_per_prediction\": {:.1}, \"predictions\": {}}}",
        with.0, with.1
    );

    activation_ms.sort_by(f64::total_cmp);
    first_answer_ms.sort_by(f64::total_cmp);
    typical_gap_ms.sort_by(f64::total_cmp);
    println!(
        "summary: activate call median {:.1} ms (min {:.1}, max {:.1}); call to first answer of the new version median {:.1} ms (max {:.1}); {rows_total} rows across {SWAPS} swaps: {refused_total} refused, {failed_total} failed; largest gap between answers {worst_gap_ms:.2} ms (median gap {:.3} ms; without a swap the largest was {:.2} ms); CPU per prediction {:.1} us without a shadow, {:.1} us with one ({:.2}x)",
        activation_ms[SWAPS / 2],
        activation_ms[0],
        activation_ms[SWAPS - 1],
        first_answer_ms[SWAPS / 2],
        first_answer_ms[SWAPS - 1],
        typical_gap_ms[SWAPS / 2],
        baseline.max_gap_ms,
        without.0,
        with.0,
        with.0 / without.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

struct SwapRun {
    activate_ms: f64,
    first_new_ms: f64,
    rows: u64,
    refused: u64,
    failed: u64,
    max_gap_ms: f64,
    median_gap_ms: f64,
}

/// Rows at `rate` for 3 s; with a `target`, `activate(target)` on another
/// thread after 1 s while they go on.
fn run_with_swap(
    lifecycle: &std::sync::Arc<ModelLifecycle>,
    row: &[f32],
    rate: u64,
    target: Option<&str>,
) -> Result<SwapRun, Box<dyn std::error::Error>> {
    let (tx, rx) = mpsc::channel::<(PendingPrediction, String)>();
    let answers = std::thread::spawn(move || {
        // (answered at, version); None for a failed answer.
        let mut out: Vec<Option<(Instant, String)>> = Vec::new();
        for (pending, version) in rx {
            out.push(
                pending
                    .blocking_wait()
                    .ok()
                    .map(|_| (Instant::now(), version)),
            );
        }
        out
    });
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now();
    let mut next = start;
    let mut refused = 0u64;
    let mut rows = 0u64;
    let mut swap: Option<std::thread::JoinHandle<(Instant, Result<f64, String>)>> = None;
    while start.elapsed() < Duration::from_secs(3)
        || swap.as_ref().is_some_and(|s| !s.is_finished())
    {
        if let (None, Some(target)) = (&swap, target) {
            if start.elapsed() < Duration::from_secs(1) {
                // not yet
            } else {
                let lifecycle = lifecycle.clone();
                let target = target.to_string();
                swap = Some(std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let result = lifecycle
                        .activate(&target, "bench")
                        .map(|_| t0.elapsed().as_secs_f64() * 1e3)
                        .map_err(|e| e.to_string());
                    (t0, result)
                }));
            }
        }
        let serving = lifecycle.serving_full();
        match serving.handle.submit(row.to_vec()) {
            Ok(p) => {
                let _ = tx.send((p, serving.version.to_string()));
            }
            Err(_) => refused += 1,
        }
        rows += 1;
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    drop(tx);
    let answered = answers.join().map_err(|_| "answer thread panicked")?;
    let failed = answered.iter().filter(|a| a.is_none()).count() as u64;
    let ok: Vec<&(Instant, String)> = answered.iter().flatten().collect();
    let (activate_ms, first_new_ms) = match (swap, target) {
        (Some(swap), Some(target)) => {
            let (t0, activate) = swap.join().map_err(|_| "swap thread panicked")?;
            let first_new_ms = ok
                .iter()
                .find(|(at, v)| v == target && *at >= t0)
                .map(|(at, _)| at.duration_since(t0).as_secs_f64() * 1e3)
                .ok_or("no answer from the new version")?;
            (activate?, first_new_ms)
        }
        _ => (0.0, 0.0),
    };
    let mut gaps: Vec<f64> = ok
        .windows(2)
        .map(|w| w[1].0.saturating_duration_since(w[0].0).as_secs_f64() * 1e3)
        .collect();
    let max_gap_ms = gaps.iter().copied().fold(0.0, f64::max);
    gaps.sort_by(f64::total_cmp);
    let median_gap_ms = gaps.get(gaps.len() / 2).copied().unwrap_or(0.0);
    Ok(SwapRun {
        activate_ms,
        first_new_ms,
        rows,
        refused,
        failed,
        max_gap_ms,
        median_gap_ms,
    })
}

/// Process CPU (user + system) per served prediction over SHADOW_SECONDS
/// at `rate`; with `shadow` every row also goes to the shadow version.
fn cpu_per_prediction(
    lifecycle: &ModelLifecycle,
    row: &[f32],
    rate: u64,
    shadow: bool,
) -> Result<(f64, u64), Box<dyn std::error::Error>> {
    let (tx, rx) = mpsc::channel::<(PendingPrediction, Option<PendingPrediction>)>();
    let answers = std::thread::spawn(move || {
        let mut n = 0u64;
        for (active, shadow) in rx {
            if active.blocking_wait().is_ok() {
                n += 1;
            }
            if let Some(s) = shadow {
                let _ = s.blocking_wait();
            }
        }
        n
    });
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let cpu0 = process_cpu_s()?;
    let start = Instant::now();
    let mut next = start;
    while start.elapsed() < Duration::from_secs(SHADOW_SECONDS) {
        let serving = lifecycle.serving_full();
        let active = serving.handle.submit(row.to_vec());
        let shadow_answer = if shadow {
            lifecycle
                .shadow()
                .and_then(|s| s.handle.submit(row.to_vec()).ok())
        } else {
            None
        };
        if let Ok(active) = active {
            let _ = tx.send((active, shadow_answer));
        }
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    drop(tx);
    let n = answers.join().map_err(|_| "answer thread panicked")?;
    let cpu = process_cpu_s()? - cpu0;
    Ok((cpu / n.max(1) as f64 * 1e6, n))
}

/// user + system CPU seconds of this process, from /proc/self/stat.
fn process_cpu_s() -> Result<f64, Box<dyn std::error::Error>> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').ok_or("unexpected /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).ok_or("no utime")?.parse()?;
    let stime: f64 = fields.get(12).ok_or("no stime")?.parse()?;
    // Clock ticks; 100 per second on Linux.
    Ok((utime + stime) / 100.0)
}

fn copy_version(
    from: &Path,
    to: &Path,
    from_version: &str,
    to_version: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    let manifest = std::fs::read_to_string(to.join("manifest.toml"))?;
    std::fs::write(
        to.join("manifest.toml"),
        manifest.replace(
            &format!("version = \"{from_version}\""),
            &format!("version = \"{to_version}\""),
        ),
    )?;
    Ok(())
}
