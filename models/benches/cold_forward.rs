//! What one forward costs when the caches are cold, and who made them cold.
//!
//! cargo bench -p ironbridge-models --bench cold_forward -- [model-version-dir] [rows]
//!
//! At 100 ms polls the gateway's worker sleeps between ticks and runs each
//! tick's forward after ~100 ms asleep. This times the model's own forward
//! (`TorchModel::forward`: the tensor made from the rows, the forward, the
//! outputs copied out; what the service runs) in two families of
//! conditions, interleaved in rounds so that drift hits both alike:
//!
//! - after the thread slept for a gap (0 to 100 ms): what the caches hold
//!   then is whatever the rest of the machine (on a virtual machine: the
//!   host and its other guests) left in them;
//! - right after this process swept N MB of its own memory, without
//!   sleeping: every cache level evicted by us, by a known amount.
//!
//! If a forward after a long sleep costs more than after sweeping more
//! memory than the last-level cache holds, the extra is not the caches'
//! contents alone; on a virtual machine it is what the host does while the
//! virtual CPU is halted (BENCHMARKS.md §36).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use ironbridge_models::{DeviceChoice, TorchModel, VerifiedModel};

/// Rounds; each takes `PER_ROUND` samples of every condition.
const ROUNDS: usize = 5;
const PER_ROUND: usize = 12;
/// Forwards before each round's samples of a condition, unmeasured, so the
/// first sample does not inherit the previous condition's state.
const SETTLE: usize = 2;

#[derive(Clone, Copy)]
enum Before {
    Sleep(Duration),
    Sweep(usize),
}

impl Before {
    fn label(self) -> String {
        match self {
            Before::Sleep(gap) if gap.is_zero() => "back to back".to_owned(),
            Before::Sleep(gap) => format!("after {} µs asleep", gap.as_micros()),
            Before::Sweep(mb) => format!("after sweeping {mb} MB, awake"),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // cargo passes `--bench` to harness-less benches.
    let mut positional = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"));
    let dir = positional
        .next()
        .map(|arg| common::resolve(Path::new(&arg)))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/1.0.0"));
    let rows: usize = match positional.next() {
        Some(arg) => arg
            .parse()
            .map_err(|_| format!("rows: not a count: {arg}"))?,
        None => 1,
    };
    let verified = VerifiedModel::from_version_dir(&dir)?;
    let manifest = verified.manifest();
    println!(
        "model {} {} from {}; {rows} row(s) a forward; libtorch intra-op threads: 1",
        manifest.name,
        manifest.version,
        dir.display()
    );
    tch::set_num_threads(1);
    let row: Vec<f32> = manifest
        .inputs
        .iter()
        .map(|input| ((input.min + input.max) / 2.0) as f32)
        .collect();
    let input: Vec<f32> = row.iter().copied().cycle().take(rows * row.len()).collect();
    let model = TorchModel::load(&verified, DeviceChoice::Cpu)?;

    let conditions: Vec<Before> = [0u64, 200, 1_000, 3_000, 10_000, 30_000, 100_000]
        .into_iter()
        .map(|us| Before::Sleep(Duration::from_micros(us)))
        .chain([8, 32, 128, 256].into_iter().map(Before::Sweep))
        .collect();
    let largest_sweep = conditions
        .iter()
        .filter_map(|c| match c {
            Before::Sweep(mb) => Some(*mb),
            Before::Sleep(_) => None,
        })
        .max()
        .unwrap_or(0);
    // Touched once here so that the sweeps read and write resident pages,
    // not the kernel's zero page or fresh page faults.
    let mut memory = vec![1u8; largest_sweep << 20];

    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); conditions.len()];
    let forward = || -> Result<Duration, Box<dyn std::error::Error>> {
        let start = Instant::now();
        let outputs = model.forward(&input, rows)?;
        let took = start.elapsed();
        std::hint::black_box(outputs);
        Ok(took)
    };
    for _ in 0..ROUNDS {
        for (condition, times) in conditions.iter().zip(samples.iter_mut()) {
            for i in 0..SETTLE + PER_ROUND {
                match *condition {
                    Before::Sleep(gap) if !gap.is_zero() => std::thread::sleep(gap),
                    Before::Sleep(_) => {}
                    Before::Sweep(mb) => sweep(&mut memory[..mb << 20]),
                }
                let took = forward()?;
                if i >= SETTLE {
                    times.push(took);
                }
            }
        }
    }

    println!();
    println!(
        "{:<32} {:>10} {:>10} {:>10}",
        "before the forward", "p10 µs", "median µs", "p90 µs"
    );
    for (condition, times) in conditions.iter().zip(samples.iter_mut()) {
        times.sort();
        let at =
            |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
        println!(
            "{:<32} {:>10.1} {:>10.1} {:>10.1}",
            condition.label(),
            at(0.1),
            at(0.5),
            at(0.9)
        );
    }
    println!(
        "({} samples a condition, {ROUNDS} interleaved rounds)",
        ROUNDS * PER_ROUND
    );
    Ok(())
}

/// One write to every cache line: evicts the caches (and the TLB entries)
/// the forward used, by this process's own doing.
fn sweep(memory: &mut [u8]) {
    for line in memory.chunks_mut(64) {
        line[0] = line[0].wrapping_add(1);
    }
    std::hint::black_box(memory);
}
