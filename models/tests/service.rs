mod common;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use common::{expected_tiny, tiny_model, ScratchDir};
use ironbridge_models::{
    prepare_inputs, InferenceOptions, InferenceService, InferenceStats, InputValue, ModelError,
    ModelState, SkipReason, SubmitError,
};

/// Long enough that a batch never closes by time in these tests.
const GENEROUS: Duration = Duration::from_secs(3600);

fn row(i: usize) -> Vec<f32> {
    let x = i as f32;
    vec![x, 0.5 * x, 4.0 - x]
}

#[tokio::test]
async fn service_answers_equal_the_raw_forward() {
    let reference = tiny_model();
    let handle = InferenceService::spawn(tiny_model(), InferenceOptions::default()).unwrap();
    let rows: Vec<Vec<f32>> = (0..10).map(row).collect();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let direct = reference.forward(&flat, rows.len()).unwrap();

    for (i, input) in rows.into_iter().enumerate() {
        let answer = handle.submit(input).unwrap().await.unwrap();
        assert_eq!(answer, direct[2 * i..2 * i + 2]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_are_answered_correctly_in_one_batch() {
    const N: usize = 48;
    // The batch closes only when it is full, so all N rows share one forward
    // however the submits interleave.
    let options = InferenceOptions {
        max_batch: N,
        max_wait: GENEROUS,
        ..InferenceOptions::default()
    };
    let handle = InferenceService::spawn(tiny_model(), options).unwrap();
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let handle = handle.clone();
            tokio::spawn(async move {
                let answer = handle.submit(row(i)).unwrap().await.unwrap();
                (i, answer)
            })
        })
        .collect();
    for task in tasks {
        let (i, answer) = task.await.unwrap();
        assert_eq!(answer, expected_tiny(&row(i)), "row {i}");
    }
    let stats = handle.stats().snapshot();
    assert_eq!(stats.requests, N as u64);
    assert_eq!(stats.inferences, N as u64);
    assert_eq!(stats.batches, 1);
    assert_eq!(stats.failures, 0);
}

#[tokio::test]
async fn rate_limited_requests_are_rejected_and_counted() {
    let options = InferenceOptions {
        rate_limit_per_s: NonZeroU32::new(3),
        ..InferenceOptions::default()
    };
    let handle = InferenceService::spawn(tiny_model(), options).unwrap();
    let mut accepted = Vec::new();
    let mut limited = 0;
    for i in 0..50 {
        match handle.submit(row(i)) {
            Ok(pending) => accepted.push((i, pending)),
            Err(SubmitError::RateLimited) => limited += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    // A burst of 3 is allowed; 50 submits take far less than the 16 s it
    // would take to earn the rest.
    assert!(accepted.len() >= 3, "accepted {}", accepted.len());
    assert!(limited > 0);
    for (i, pending) in accepted {
        assert_eq!(pending.await.unwrap(), expected_tiny(&row(i)));
    }
    let stats = handle.stats().snapshot();
    assert_eq!(stats.requests, 50);
    assert_eq!(stats.rejected_rate_limited, limited);
    assert_eq!(stats.inferences + stats.rejected_rate_limited, 50);
}

#[tokio::test]
async fn rows_of_the_wrong_length_are_refused_at_submit() {
    let handle = InferenceService::spawn(tiny_model(), InferenceOptions::default()).unwrap();
    assert_eq!(
        handle.submit(vec![1.0]).unwrap_err(),
        SubmitError::RowLength {
            expected: 3,
            actual: 1
        }
    );
}

#[tokio::test]
async fn a_failing_batch_answers_every_request_with_the_error() {
    let scratch = ScratchDir::new("service-outputs");
    let model = common::tiny_with_an_extra_output(&scratch);
    let options = InferenceOptions {
        max_batch: 2,
        max_wait: GENEROUS,
        ..InferenceOptions::default()
    };
    let handle = InferenceService::spawn(model, options).unwrap();
    let first = handle.submit(row(1)).unwrap();
    let second = handle.submit(row(2)).unwrap();
    for pending in [first, second] {
        let err = pending.await.unwrap_err();
        assert!(matches!(err, ModelError::OutputShape { .. }), "{err:?}");
    }
    let stats = handle.stats().snapshot();
    assert_eq!((stats.failures, stats.batches, stats.inferences), (2, 0, 0));
}

#[tokio::test]
async fn status_shows_what_the_opc_ua_nodes_need() {
    let handle = InferenceService::spawn(tiny_model(), InferenceOptions::default()).unwrap();
    handle.submit(row(1)).unwrap().await.unwrap();
    handle.submit(row(2)).unwrap().await.unwrap();
    let status = handle.status();
    assert_eq!(status.name, "tiny");
    assert_eq!(status.active_version.as_deref(), Some("1.0.0"));
    assert_eq!(
        status.sha256.as_deref(),
        Some(handle.version().sha256.as_str())
    );
    assert_eq!(status.loaded_at, Some(handle.version().loaded_at));
    assert_eq!(status.state, ModelState::Serving);
    assert_eq!(status.inference_count, 2);
    assert_eq!(status.inputs, ["speed_rpm", "temp_c", "vibration_mm_s"]);
    assert_eq!(status.outputs, ["wear", "margin"]);
}

#[test]
fn the_worker_stops_when_every_handle_is_dropped() {
    let handle = InferenceService::spawn(tiny_model(), InferenceOptions::default()).unwrap();
    let second = handle.clone();
    let monitor = handle.monitor();
    assert_eq!(
        second.submit(row(3)).unwrap().blocking_wait().unwrap(),
        expected_tiny(&row(3))
    );
    drop(handle);
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(30);
    while monitor.state() != ModelState::Stopped {
        assert!(
            Instant::now() < deadline,
            "worker still {:?}",
            monitor.state()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(monitor.status().inference_count, 1);
}

#[test]
fn bad_inputs_are_skipped_with_a_reason_and_counted() {
    let model = tiny_model();
    let manifest = model.manifest();
    let stats = InferenceStats::default();
    let v = InputValue::Value;

    assert_eq!(
        prepare_inputs(manifest, &[v(100.0), v(20.0), v(1.5)], &stats),
        Ok(vec![100.0, 20.0, 1.5])
    );
    assert_eq!(
        prepare_inputs(manifest, &[v(100.0), InputValue::Missing, v(1.5)], &stats),
        Err(SkipReason::Missing {
            input: "temp_c".into()
        })
    );
    assert_eq!(
        prepare_inputs(manifest, &[InputValue::BadQuality, v(20.0), v(1.5)], &stats),
        Err(SkipReason::BadQuality {
            input: "speed_rpm".into()
        })
    );
    let not_finite = prepare_inputs(manifest, &[v(100.0), v(20.0), v(f64::NAN)], &stats);
    assert!(
        matches!(&not_finite, Err(SkipReason::NotFinite { input, .. }) if input == "vibration_mm_s"),
        "{not_finite:?}"
    );
    assert!(prepare_inputs(manifest, &[v(f64::INFINITY), v(20.0), v(1.5)], &stats).is_err());

    let out_of_range = prepare_inputs(manifest, &[v(4000.5), v(20.0), v(1.5)], &stats).unwrap_err();
    assert_eq!(
        out_of_range.to_string(),
        "input speed_rpm = 4000.5 rpm is outside its valid range [0, 4000] rpm"
    );
    // Bounds are inclusive.
    assert!(prepare_inputs(manifest, &[v(4000.0), v(-40.0), v(0.0)], &stats).is_ok());
    assert!(matches!(
        prepare_inputs(manifest, &[v(1.0)], &stats),
        Err(SkipReason::InputCount {
            expected: 3,
            actual: 1
        })
    ));

    let counted = stats.snapshot();
    assert_eq!(counted.skipped_missing, 1);
    assert_eq!(counted.skipped_bad_quality, 1);
    assert_eq!(counted.skipped_not_finite, 2);
    assert_eq!(counted.skipped_out_of_range, 1);
    assert_eq!(counted.skipped_input_count, 1);
    assert_eq!(counted.inferences, 0);
}
