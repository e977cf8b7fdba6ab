//! Checks, for every finite f32, what the InfluxDB sink relies on when it
//! writes an f32 value in its own shortest form (`12.345`, not the widened
//! `12.345000267028809`): the store reads that text as an f64, and the f64
//! narrowed to f32 must be the same f32, so that a stored input recomputes
//! its prediction exactly. It holds for every finite f32 but the pair
//! `±7.038531e-26` (bits 0x15AE43FD), which the sink writes widened.
//!
//! Both steps are exactly specified (ryu: the shortest text that reads back
//! as the f32, the closest of those; the parse: correctly rounded), so one
//! run settles it; run it again when `ryu` changes major version:
//!
//! ```sh
//! cargo run --release -p ironbridge-connectors --example f32_text_narrows_back
//! ```
//!
//! About a minute on two cores.

use std::sync::atomic::{AtomicU64, Ordering};

// The one positive finite f32 whose shortest text narrows back to its
// neighbour (its negative is the other): the sink's own constant, so that
// this check and the sink cannot disagree.
use ironbridge_connectors::influx::line_protocol::F32_TEXT_NARROWS_TO_NEIGHBOUR as NARROWS_TO_NEIGHBOUR;

fn main() {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let checked = AtomicU64::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for first in 0..threads {
            let (checked, failures) = (&checked, &failures);
            scope.spawn(move || {
                let mut buffer = ryu::Buffer::new();
                let mut count = 0u64;
                // The positive half; a negative f32's text is its
                // magnitude's with a minus, and parsing is symmetric.
                let mut bits = first;
                while bits < 0x7F80_0000 {
                    let f = f32::from_bits(bits);
                    let text = buffer.format_finite(f);
                    let back = text.parse::<f64>().map(|wide| wide as f32);
                    if back.map(f32::to_bits) != Ok(bits) {
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((bits, text.to_string()));
                    }
                    count += 1;
                    bits += threads;
                }
                checked.fetch_add(count, Ordering::Relaxed);
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    println!(
        "{} positive finite f32 checked; narrowed back to another f32: {failures:?}",
        checked.into_inner()
    );
    let expected = vec![(NARROWS_TO_NEIGHBOUR, "7.038531e-26".to_string())];
    if failures != expected {
        eprintln!("expected only {expected:?}: the sink's exception is out of date");
        std::process::exit(1);
    }
}
