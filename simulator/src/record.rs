//! Faster-than-real-time recording of the process as CSV training data.
//!
//! Sensor columns hold what a Modbus client reads (decoded from the
//! register image: 0.1 °C, 1 µm/s, f32 rounding), so a model trained on a
//! recording sees the same numbers the gateway will feed it.

use std::io::Write;

use crate::error::SimError;
use crate::process::{Process, ProcessConfig};
use crate::registers::{ClientReadings, RegisterImage};

/// Header of the recording; one row per step.
pub const CSV_HEADER: &str =
    "t_s,speed_rpm,motor_current_a,bearing_temp_c,vibration_mm_s,discharge_pressure_bar,running,bearing_wear";

#[derive(Debug, Clone, PartialEq)]
pub struct RecordOptions {
    pub seed: u64,
    /// Simulated duration; rows are written for t = 0, step, 2·step, … ≤ duration.
    pub duration_s: f64,
    /// Simulated seconds between rows.
    pub step_s: f64,
    pub process: ProcessConfig,
}

impl Default for RecordOptions {
    fn default() -> Self {
        Self {
            seed: 7,
            duration_s: 2000.0 * 3600.0,
            step_s: 60.0,
            process: ProcessConfig::default(),
        }
    }
}

/// What a recording contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSummary {
    pub rows: u64,
    /// Bearings that reached full wear and were replaced during the recording.
    pub bearings_replaced: u32,
}

/// Runs the process for `options.duration_s` and writes CSV to `out`.
pub fn record<W: Write>(options: &RecordOptions, mut out: W) -> Result<RecordSummary, SimError> {
    if !(options.step_s.is_finite() && options.step_s > 0.0) {
        return Err(SimError::InvalidOption {
            name: "step_s",
            reason: format!("must be a positive number, got {}", options.step_s),
        });
    }
    if !(options.duration_s.is_finite() && options.duration_s >= 0.0) {
        return Err(SimError::InvalidOption {
            name: "duration_s",
            reason: format!("must be a non-negative number, got {}", options.duration_s),
        });
    }
    let steps = (options.duration_s / options.step_s).floor() as u64;
    let mut process = Process::new(options.seed, options.process.clone());

    writeln!(out, "{CSV_HEADER}").map_err(SimError::Write)?;
    for step in 0..=steps {
        if step > 0 {
            process.step(options.step_s);
        }
        let state = process.state();
        let read = ClientReadings::decode(&RegisterImage::from_state(state));
        // Scaled integer registers are printed at their resolution, so the
        // text is the decimal the raw value stands for (no 65.30000000000001).
        writeln!(
            out,
            "{},{},{},{:.1},{:.3},{},{},{:.6}",
            state.time_s,
            read.speed_rpm,
            read.motor_current_a,
            read.bearing_temp_c,
            read.vibration_mm_s,
            read.discharge_pressure_bar,
            u8::from(read.running),
            state.bearing_wear,
        )
        .map_err(SimError::Write)?;
    }
    out.flush().map_err(SimError::Write)?;
    Ok(RecordSummary {
        rows: steps + 1,
        bearings_replaced: process.state().bearings_replaced,
    })
}
