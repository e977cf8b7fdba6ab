//! Faster-than-real-time recording of a machine's process as CSV training
//! data, so a model trained on a recording sees the same numbers the
//! gateway will feed it:
//!
//! - the pump ([`record`]): sensor columns hold what a Modbus client reads
//!   (decoded from the register image: 0.1 °C, 1 µm/s, f32 rounding);
//! - the spindle ([`record_spindle`]): one column per variable the OPC UA
//!   machine serves, taken from the same [`SpindleVariable::value`] the
//!   server publishes.

use std::io::Write;

use opcua::types::Variant;

use crate::error::SimError;
use crate::opcua_machine::SpindleVariable;
use crate::process::{Process, ProcessConfig};
use crate::registers::{ClientReadings, RegisterImage};
use crate::spindle::{Spindle, SpindleConfig};

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
    let steps = step_count(options.duration_s, options.step_s)?;
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

/// Steps after the first row, for rows at t = 0, step, 2·step, … ≤ duration.
fn step_count(duration_s: f64, step_s: f64) -> Result<u64, SimError> {
    if !(step_s.is_finite() && step_s > 0.0) {
        return Err(SimError::InvalidOption {
            name: "step_s",
            reason: format!("must be a positive number, got {step_s}"),
        });
    }
    if !(duration_s.is_finite() && duration_s >= 0.0) {
        return Err(SimError::InvalidOption {
            name: "duration_s",
            reason: format!("must be a non-negative number, got {duration_s}"),
        });
    }
    Ok((duration_s / step_s).floor() as u64)
}

/// The spindle recording's columns: CSV name, the OPC UA variable it holds,
/// and the decimals it is rounded to (`None`: the served double exactly, as
/// the shortest decimal that reads back as the same double — the sensors'
/// own digits, since the spindle quantizes to them).
///
/// Column names are the tag names a gateway configuration gives these
/// variables (snake_case with the unit), so a model trained on them takes
/// its inputs under the same names.
pub const SPINDLE_COLUMNS: [(&str, SpindleVariable, Option<usize>); 13] = [
    ("t_s", SpindleVariable::SimulatedTime, None),
    ("running", SpindleVariable::Running, None),
    ("speed_setpoint_rpm", SpindleVariable::SpeedSetpoint, None),
    ("speed_rpm", SpindleVariable::Speed, None),
    ("load_pct", SpindleVariable::Load, None),
    ("motor_current_a", SpindleVariable::MotorCurrent, None),
    ("bearing_temp_c", SpindleVariable::BearingTemperature, None),
    ("vibration_mm_s", SpindleVariable::Vibration, None),
    // Operating hours are never rounded by the machine; 0.36 s is plenty.
    ("run_hours", SpindleVariable::RunHours, Some(4)),
    ("overtemp_alarm", SpindleVariable::OvertempAlarm, None),
    // The ground truth, as precise as the pump's `bearing_wear`.
    (
        "bearing_degradation",
        SpindleVariable::LabelBearingDegradation,
        Some(6),
    ),
    ("fault_state", SpindleVariable::LabelFaultState, None),
    (
        "bearings_replaced",
        SpindleVariable::LabelBearingsReplaced,
        None,
    ),
];

/// Header of the spindle recording ([`SPINDLE_COLUMNS`] joined).
pub const SPINDLE_CSV_HEADER: &str = "t_s,running,speed_setpoint_rpm,speed_rpm,load_pct,\
motor_current_a,bearing_temp_c,vibration_mm_s,run_hours,overtemp_alarm,\
bearing_degradation,fault_state,bearings_replaced";

#[derive(Debug, Clone, PartialEq)]
pub struct SpindleRecordOptions {
    pub seed: u64,
    /// Simulated duration; rows are written for t = 0, step, 2·step, … ≤ duration.
    pub duration_s: f64,
    /// Simulated seconds between rows (and the spindle's step: its job
    /// schedule changes at step boundaries, like the served machine's).
    pub step_s: f64,
    pub spindle: SpindleConfig,
}

impl Default for SpindleRecordOptions {
    fn default() -> Self {
        Self {
            seed: 7,
            duration_s: 2000.0 * 3600.0,
            step_s: 60.0,
            spindle: SpindleConfig::default(),
        }
    }
}

/// Runs the spindle for `options.duration_s` and writes CSV to `out`.
pub fn record_spindle<W: Write>(
    options: &SpindleRecordOptions,
    mut out: W,
) -> Result<RecordSummary, SimError> {
    let steps = step_count(options.duration_s, options.step_s)?;
    let mut spindle = Spindle::new(options.seed, options.spindle.clone());

    writeln!(out, "{SPINDLE_CSV_HEADER}").map_err(SimError::Write)?;
    let mut row = String::new();
    for step in 0..=steps {
        if step > 0 {
            spindle.step(options.step_s);
        }
        let state = spindle.state();
        row.clear();
        for (i, (_, variable, decimals)) in SPINDLE_COLUMNS.iter().enumerate() {
            if i > 0 {
                row.push(',');
            }
            push_value(&mut row, &variable.value(state), *decimals);
        }
        writeln!(out, "{row}").map_err(SimError::Write)?;
    }
    out.flush().map_err(SimError::Write)?;
    Ok(RecordSummary {
        rows: steps + 1,
        bearings_replaced: spindle.state().bearings_replaced,
    })
}

fn push_value(row: &mut String, value: &Variant, decimals: Option<usize>) {
    use std::fmt::Write as _;
    // Writing into a String cannot fail.
    let _ = match (value, decimals) {
        (Variant::Boolean(b), _) => write!(row, "{}", u8::from(*b)),
        (Variant::Double(v), Some(d)) => write!(row, "{v:.d$}"),
        (Variant::Double(v), None) => write!(row, "{v}"),
        (Variant::Int32(v), _) => write!(row, "{v}"),
        (Variant::UInt32(v), _) => write!(row, "{v}"),
        (other, _) => unreachable!("the spindle serves no {other:?}"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spindle_header_names_every_column_once() {
        let names: Vec<&str> = SPINDLE_COLUMNS.iter().map(|(name, ..)| *name).collect();
        assert_eq!(SPINDLE_CSV_HEADER, names.join(","));
        let mut variables: Vec<&str> = SPINDLE_COLUMNS
            .iter()
            .map(|(_, v, _)| v.node_id())
            .collect();
        variables.sort_unstable();
        let mut served: Vec<&str> = SpindleVariable::ALL.iter().map(|v| v.node_id()).collect();
        served.sort_unstable();
        assert_eq!(variables, served, "one column per served variable");
    }
}
