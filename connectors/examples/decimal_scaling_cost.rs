//! What a Modbus integer register at a decimal scale costs per value, from
//! the decoded integer to the text the InfluxDB sink writes (ryu's
//! shortest f64): `raw * scale + offset` in floating point against the
//! decimal scaling the source applies (`apply_scaling_in`, the f64 nearest
//! to the exact result). Both run over every i16 value, alternating, in one
//! process; it prints nanoseconds and characters per value and how many
//! values differ:
//!
//! ```sh
//! cargo run --release -p ironbridge-connectors --example decimal_scaling_cost
//! ```

use std::hint::black_box;
use std::time::Instant;

use ironbridge_connectors::modbus::{apply_scaling_in, scaling_form};
use ironbridge_connectors::TagValue;

/// Passes over the 65,536 values per timed run, and runs per way.
const PASSES: usize = 40;
const RUNS: usize = 5;

fn main() {
    for (scale, offset) in [(0.1, 0.0), (0.01, 0.0), (0.001, 0.0), (0.1, 273.15)] {
        let form = scaling_form(scale, offset);
        let floating = |raw: i16| f64::from(raw) * scale + offset;
        let decimal =
            |raw: i16| match apply_scaling_in(TagValue::Int(i64::from(raw)), scale, offset, form) {
                TagValue::Float(v) => v,
                _ => f64::NAN,
            };
        let (mut differ, mut chars_floating, mut chars_decimal) = (0usize, 0usize, 0usize);
        let mut text = ryu::Buffer::new();
        for raw in i16::MIN..=i16::MAX {
            let (a, b) = (floating(raw), decimal(raw));
            differ += usize::from(a != b);
            chars_floating += text.format(a).len();
            chars_decimal += text.format(b).len();
        }
        // [way][formatted]: the best nanoseconds a value of RUNS runs.
        let mut best = [[f64::INFINITY; 2]; 2];
        for _ in 0..RUNS {
            for formatted in [false, true] {
                for (way, best) in best.iter_mut().enumerate() {
                    let started = Instant::now();
                    let mut sink = 0usize;
                    for _ in 0..PASSES {
                        for raw in i16::MIN..=i16::MAX {
                            let value = if way == 0 {
                                floating(black_box(raw))
                            } else {
                                decimal(black_box(raw))
                            };
                            sink += if formatted {
                                text.format(value).len()
                            } else {
                                black_box(value).to_bits() as usize
                            };
                        }
                    }
                    black_box(sink);
                    let ns = started.elapsed().as_nanos() as f64 / (PASSES * 65_536) as f64;
                    let best = &mut best[usize::from(formatted)];
                    *best = best.min(ns);
                }
            }
        }
        let n = 65_536.0;
        println!(
            "scale {scale}, offset {offset} ({form:?}): {:.1} % of i16 values differ; \
             characters {:.2} -> {:.2}; ns a value (best of {RUNS}): scaled {:.1} -> {:.1}, \
             scaled and formatted {:.1} -> {:.1} ({:.2}x)",
            differ as f64 / n * 100.0,
            chars_floating as f64 / n,
            chars_decimal as f64 / n,
            best[0][0],
            best[1][0],
            best[0][1],
            best[1][1],
            best[1][1] / best[0][1],
        );
    }
}
