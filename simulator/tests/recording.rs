//! The CSV recording: deterministic per seed, and a plausible degradation.

use ironbridge_simulator::{record, ProcessConfig, RecordOptions, CSV_HEADER};

fn recording(seed: u64, hours: f64) -> String {
    let options = RecordOptions {
        seed,
        duration_s: hours * 3600.0,
        step_s: 300.0,
        process: ProcessConfig::default(),
    };
    let mut out = Vec::new();
    record(&options, &mut out).expect("recording into memory");
    String::from_utf8(out).expect("CSV is UTF-8")
}

struct Row {
    running: bool,
    vibration_mm_s: f64,
    bearing_wear: f64,
}

fn rows(csv: &str) -> Vec<Row> {
    csv.lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<f64> = line
                .split(',')
                .map(|f| f.parse().expect("numeric field"))
                .collect();
            assert_eq!(fields.len(), 8, "row {line}");
            Row {
                running: fields[6] == 1.0,
                vibration_mm_s: fields[4],
                bearing_wear: fields[7],
            }
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
fn csv_has_the_training_header_and_one_row_per_step() {
    let csv = recording(7, 10.0);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(CSV_HEADER));
    assert_eq!(lines.count(), 10 * 12 + 1, "rows for t = 0, 300 s, …, 10 h");
}

#[test]
fn wear_rises_between_replacements_and_covers_several_lifetimes() {
    let rows = rows(&recording(7, 2000.0));
    let mut replacements = 0;
    for pair in rows.windows(2) {
        if pair[1].bearing_wear < pair[0].bearing_wear {
            // A replacement only follows a failed bearing.
            assert_eq!(pair[0].bearing_wear, 1.0);
            assert!(pair[1].bearing_wear < 0.05);
            replacements += 1;
        }
    }
    assert!(
        replacements >= 3,
        "only {replacements} bearings replaced in 2000 h"
    );
}

#[test]
fn vibration_of_the_running_pump_correlates_with_wear() {
    let rows = rows(&recording(7, 2000.0));
    let running: Vec<&Row> = rows.iter().filter(|r| r.running).collect();
    let n = running.len() as f64;
    let mean = |f: &dyn Fn(&Row) -> f64| running.iter().map(|r| f(r)).sum::<f64>() / n;
    let (mv, mw) = (mean(&|r| r.vibration_mm_s), mean(&|r| r.bearing_wear));
    let cov = mean(&|r| (r.vibration_mm_s - mv) * (r.bearing_wear - mw));
    let sd_v = mean(&|r| (r.vibration_mm_s - mv).powi(2)).sqrt();
    let sd_w = mean(&|r| (r.bearing_wear - mw).powi(2)).sqrt();
    let correlation = cov / (sd_v * sd_w);
    assert!(correlation > 0.5, "correlation {correlation}");
}
