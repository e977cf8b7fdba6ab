//! Scans for the sink benchmarks: shaped like the example pump's (8 tags:
//! floats, integers, a bool) on one machine, 200 ms apart, values drifting;
//! and like issue 10's workload (62 f32 registers, widened to f64).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ironbridge_connectors::{Quality, Scan, TagReading, TagValue};

pub fn scans(n: usize) -> Vec<Scan> {
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

/// `n` scans of `tags` f32 registers each (`r00`, `r01`, ...), 100 ms apart,
/// as a Modbus source widens them: most need 16-17 digits.
#[allow(dead_code)] // Not every bench that includes this file uses it.
pub fn register_scans(n: usize, tags: usize) -> Vec<Scan> {
    let machine: Arc<str> = Arc::from("machine-01");
    let names: Vec<Arc<str>> = (0..tags).map(|t| Arc::from(format!("r{t:02}"))).collect();
    (0..n)
        .map(|i| Scan {
            machine: machine.clone(),
            acquired_at: UNIX_EPOCH + Duration::from_millis(1_764_547_200_000 + 100 * i as u64),
            readings: names
                .iter()
                .enumerate()
                .map(|(t, name)| TagReading {
                    tag: name.clone(),
                    value: Some(TagValue::Float(f64::from(
                        (t as f32) * 1.5 + ((i + t) as f32 * 0.1).sin(),
                    ))),
                    quality: Quality::Good,
                    status: None,
                })
                .collect(),
        })
        .collect()
}
