//! What a batch costs the InfluxDB sink before it leaves (BENCHMARKS.md,
//! "InfluxDB sink: line protocol and gzip"): encoding scans as line
//! protocol, and gzip-compressing the body (`[influx] gzip = true`, the
//! default), per line, side by side in one run.
//!
//! cargo bench -p ironbridge-connectors --bench sink_body -- [lines-per-batch]
//!
//! Scans look like the example pump's: 8 tags (floats, integers, a bool)
//! on one machine, 200 ms apart, values drifting. Output: min and median
//! of 30 rounds, per line, and the compressed size.

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use ironbridge_connectors::influx::line_protocol::encode_scan;
use ironbridge_connectors::influx::writer::gzip;
use ironbridge_connectors::{Quality, Scan, TagReading, TagValue};

const ROUNDS: usize = 30;

fn scans(n: usize) -> Vec<Scan> {
    let machine: Arc<str> = Arc::from("pump-1");
    let tag = |name: &str, value: TagValue| TagReading {
        tag: Arc::from(name),
        value: Some(value),
        quality: Quality::Good,
        status: None,
    };
    (0..n)
        .map(|i| {
            let x = i as f64;
            Scan {
                machine: machine.clone(),
                acquired_at: UNIX_EPOCH + Duration::from_millis(1_764_547_200_000 + 200 * i as u64),
                readings: vec![
                    tag(
                        "speed_rpm",
                        TagValue::Float(1480.0 + (x * 0.37).sin() * 12.5),
                    ),
                    tag(
                        "motor_current_a",
                        TagValue::Float(31.2 + (x * 0.11).cos() * 0.8),
                    ),
                    tag("run_seconds", TagValue::UInt(86_400 + i as u64 / 5)),
                    tag(
                        "discharge_pressure_bar",
                        TagValue::Float(6.1 + (x * 0.05).sin() * 0.2),
                    ),
                    tag("bearing_temp_c", TagValue::Float(41.0 + x * 0.001)),
                    tag(
                        "vibration_mm_s",
                        TagValue::Float(2.35 + (x * 0.9).sin() * 0.3),
                    ),
                    tag("flow_m3_h", TagValue::Float(118.4 + (x * 0.2).cos() * 3.0)),
                    tag("running", TagValue::Bool(true)),
                ],
            }
        })
        .collect()
}

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
    let scans = scans(lines);
    let mut encode = Vec::new();
    let mut compress = Vec::new();
    let mut sizes = (0, 0);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let mut body = String::with_capacity(lines * 200);
        for scan in &scans {
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
        "{{\"lines\":{lines},\"encode_ns_per_line\":{{\"min\":{encode_min:.0},\"median\":{encode_median:.0}}},\
         \"gzip_ns_per_line\":{{\"min\":{gzip_min:.0},\"median\":{gzip_median:.0}}},\
         \"body_bytes\":{},\"gzip_bytes\":{},\"ratio\":{:.2},\"gzip_over_encode\":{:.2}}}",
        sizes.0,
        sizes.1,
        sizes.0 as f64 / sizes.1 as f64,
        gzip_median / encode_median
    );
    Ok(())
}
