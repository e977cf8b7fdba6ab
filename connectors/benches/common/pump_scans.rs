//! Scans shaped like the example pump's, for the sink benchmarks: 8 tags
//! (floats, integers, a bool) on one machine, 200 ms apart, values drifting.

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
