//! What a batch costs the InfluxDB sink before it leaves (BENCHMARKS.md,
//! "InfluxDB sink: line protocol and gzip"): encoding scans as line
//! protocol, and gzip-compressing the body (`[influx] gzip = true`, the
//! default), per line, side by side in one run.
//!
//! cargo bench -p ironbridge-connectors --bench sink_body -- [lines-per-batch]
//!
//! Two shapes of scan, one JSON line each: the example pump's (8 tags:
//! floats, integers, a bool; 200 ms apart, values drifting) and issue 10's
//! workload (62 f32 registers widened to f64, about 1.5 KB a line). Output:
//! min and median of 30 rounds, per line, and the compressed size.

use std::time::{Duration, Instant};

use ironbridge_connectors::influx::line_protocol::encode_scan;
use ironbridge_connectors::influx::writer::gzip;

#[path = "common/pump_scans.rs"]
mod pump_scans;
use ironbridge_connectors::Scan;
use pump_scans::{register_scans, scans};

const ROUNDS: usize = 30;

fn stats(mut samples: Vec<Duration>, lines: usize) -> (f64, f64) {
    samples.sort();
    let per_line = |d: Duration| d.as_secs_f64() * 1e9 / lines as f64;
    (per_line(samples[0]), per_line(samples[samples.len() / 2]))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lines: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    for (shape, scans) in [
        ("pump, 8 tags", scans(lines)),
        ("62 f32 registers", register_scans(lines, 62)),
    ] {
        measure(shape, &scans)?;
    }
    Ok(())
}

fn measure(shape: &str, scans: &[Scan]) -> Result<(), Box<dyn std::error::Error>> {
    let lines = scans.len();
    let mut encode = Vec::new();
    let mut compress = Vec::new();
    let mut sizes = (0, 0);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let mut body = String::with_capacity(lines * 200);
        for scan in scans {
            if let Some(line) = encode_scan(scan)? {
                body.push_str(&line);
                body.push('\n');
            }
        }
        encode.push(started.elapsed());
        let started = Instant::now();
        let compressed = gzip(body.as_bytes())?;
        compress.push(started.elapsed());
        sizes = (body.len(), compressed.len());
    }
    let (encode_min, encode_median) = stats(encode, lines);
    let (gzip_min, gzip_median) = stats(compress, lines);
    println!(
        "{{\"shape\":\"{shape}\",\"lines\":{lines},\"encode_ns_per_line\":{{\"min\":{encode_min:.0},\"median\":{encode_median:.0}}},\
         \"gzip_ns_per_line\":{{\"min\":{gzip_min:.0},\"median\":{gzip_median:.0}}},\
         \"body_bytes\":{},\"gzip_bytes\":{},\"ratio\":{:.2},\"gzip_over_encode\":{:.2}}}",
        sizes.0,
        sizes.1,
        sizes.0 as f64 / sizes.1 as f64,
        gzip_median / encode_median
    );
    Ok(())
}
