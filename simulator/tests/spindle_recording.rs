//! The spindle's CSV recording: deterministic per seed, one column per
//! variable the OPC UA machine serves holding exactly the served value, and
//! a plausible degradation over several bearing lifetimes.

use ironbridge_simulator::{
    record_spindle, Spindle, SpindleConfig, SpindleRecordOptions, SpindleVariable, SPINDLE_COLUMNS,
    SPINDLE_CSV_HEADER,
};
use opcua::types::Variant;

const STEP_S: f64 = 240.0;

fn recording(seed: u64, hours: f64) -> String {
    let options = SpindleRecordOptions {
        seed,
        duration_s: hours * 3600.0,
        step_s: STEP_S,
        spindle: SpindleConfig::default(),
    };
    let mut out = Vec::new();
    record_spindle(&options, &mut out).expect("recording into memory");
    String::from_utf8(out).expect("CSV is UTF-8")
}

fn column(name: &str) -> usize {
    SPINDLE_COLUMNS
        .iter()
        .position(|(column, ..)| *column == name)
        .unwrap_or_else(|| panic!("no column {name}"))
}

fn rows(csv: &str) -> Vec<Vec<f64>> {
    csv.lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<f64> = line
                .split(',')
                .map(|f| f.parse().expect("numeric field"))
                .collect();
            assert_eq!(fields.len(), SPINDLE_COLUMNS.len(), "row {line}");
            fields
        })
        .collect()
}

#[test]
fn same_seed_records_identical_csv_and_other_seeds_differ() {
    let first = recording(7, 300.0);
    assert_eq!(first, recording(7, 300.0));
    assert_ne!(first, recording(8, 300.0));
}

#[test]
fn csv_has_the_spindle_header_and_one_row_per_step() {
    let csv = recording(7, 10.0);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(SPINDLE_CSV_HEADER));
    let rows = rows(&csv);
    assert_eq!(rows.len(), 10 * 15 + 1, "rows for t = 0, 240 s, …, 10 h");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[column("t_s")], i as f64 * STEP_S);
    }
}

/// Every column holds what an OPC UA client reads from its variable at
/// that step: doubles exactly (to the bit), apart from the two columns
/// documented as rounded.
#[test]
fn columns_hold_the_values_the_opc_ua_machine_serves() {
    let csv = recording(11, 200.0);
    let mut spindle = Spindle::new(11, SpindleConfig::default());
    for (i, line) in csv.lines().skip(1).enumerate() {
        if i > 0 {
            spindle.step(STEP_S);
        }
        let state = spindle.state();
        for (field, (name, variable, decimals)) in line.split(',').zip(SPINDLE_COLUMNS) {
            let served = variable.value(state);
            match (served, decimals) {
                (Variant::Double(v), None) => {
                    let read: f64 = field.parse().expect("a double");
                    assert_eq!(
                        read.to_bits(),
                        v.to_bits(),
                        "{name} at row {i}: {field} vs {v}"
                    );
                }
                (Variant::Double(v), Some(d)) => {
                    assert_eq!(field, format!("{v:.d$}"), "{name} at row {i}");
                }
                (Variant::Boolean(b), _) => {
                    assert_eq!(field, if b { "1" } else { "0" }, "{name} at row {i}")
                }
                (Variant::Int32(v), _) => assert_eq!(field, v.to_string(), "{name} at row {i}"),
                (Variant::UInt32(v), _) => assert_eq!(field, v.to_string(), "{name} at row {i}"),
                (other, _) => panic!("{name}: unexpected {other:?}"),
            }
        }
    }
    // The label's rounding keeps 6 decimals, as the pump's wear column.
    assert!(SPINDLE_COLUMNS
        .iter()
        .any(|(name, v, d)| *name == "bearing_degradation"
            && *v == SpindleVariable::LabelBearingDegradation
            && *d == Some(6)));
}

#[test]
fn degradation_rises_between_replacements_over_several_lifetimes() {
    let rows = rows(&recording(7, 2000.0));
    let (degradation, replaced) = (column("bearing_degradation"), column("bearings_replaced"));
    let fault_state = column("fault_state");
    let mut replacements = 0;
    for pair in rows.windows(2) {
        if pair[1][degradation] < pair[0][degradation] {
            // A replacement only follows failed bearings.
            assert_eq!(pair[0][degradation], 1.0);
            assert_eq!(pair[0][fault_state], 3.0, "failed while replaced");
            assert!(pair[1][degradation] < 0.03);
            assert_eq!(pair[1][replaced], pair[0][replaced] + 1.0);
            replacements += 1;
        }
    }
    assert!(
        replacements >= 4,
        "only {replacements} bearing sets replaced in 2000 h"
    );
}

#[test]
fn vibration_and_temperature_of_the_running_spindle_rise_with_degradation() {
    let rows = rows(&recording(7, 2000.0));
    let running: Vec<&Vec<f64>> = rows
        .iter()
        .filter(|r| r[column("running")] == 1.0)
        .collect();
    let correlation = |a: usize, b: usize| {
        let n = running.len() as f64;
        let mean = |c: usize| running.iter().map(|r| r[c]).sum::<f64>() / n;
        let (ma, mb) = (mean(a), mean(b));
        let cov = running
            .iter()
            .map(|r| (r[a] - ma) * (r[b] - mb))
            .sum::<f64>()
            / n;
        let sd =
            |c: usize, m: f64| (running.iter().map(|r| (r[c] - m).powi(2)).sum::<f64>() / n).sqrt();
        cov / (sd(a, ma) * sd(b, mb))
    };
    let degradation = column("bearing_degradation");
    let vibration = correlation(column("vibration_mm_s"), degradation);
    let temperature = correlation(column("bearing_temp_c"), degradation);
    assert!(vibration > 0.5, "vibration correlation {vibration}");
    assert!(temperature > 0.3, "temperature correlation {temperature}");

    let stopped = rows.iter().filter(|r| r[column("running")] == 0.0);
    for row in stopped {
        assert_eq!(row[column("speed_rpm")], 0.0);
        assert_eq!(row[column("motor_current_a")], 0.0);
    }
}

#[test]
fn invalid_steps_are_refused() {
    let options = SpindleRecordOptions {
        step_s: 0.0,
        ..SpindleRecordOptions::default()
    };
    let err = record_spindle(&options, Vec::new()).unwrap_err();
    assert!(err.to_string().contains("step_s"), "{err}");
}
