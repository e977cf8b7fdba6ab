//! Rows run on the caller's thread use the model's `intra_op_threads`.
//! A test binary of its own: it counts the process's threads, which other
//! tests running beside it in one process would change.

mod common;

use common::fixtures;
use ironbridge_models::{
    DeviceChoice, InferenceOptions, InferenceService, ModelRegistry, TorchModel, LONE_ROW_GAP,
};

fn threads_of_this_process() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| tasks.count())
        .unwrap_or(0)
}

/// OpenMP keeps the intra-op thread count per thread, and MKL's matrix
/// product follows the calling thread's. A caller's thread (a tokio worker
/// in the gateway) that never set it ran each inline forward of a few rows
/// on a team of one thread per core, whose threads then spun on the other
/// cores after every forward. On a one-core machine there is no team
/// either way.
#[test]
fn inline_forwards_start_no_thread_team() {
    let verified = ModelRegistry::open(fixtures().join("tiny-hidden"))
        .unwrap()
        .load("1.0.0")
        .unwrap();
    let model = TorchModel::load(&verified, DeviceChoice::Cpu).unwrap();
    let options = InferenceOptions {
        intra_op_threads: 1,
        ..InferenceOptions::default()
    };
    let handle = InferenceService::spawn(model, options).unwrap();
    // Six rows: small enough to run inline, big enough for MKL to use a
    // team when the thread allows it (one row is not).
    let rows: Vec<f32> = (0..18).map(|i| i as f32 * 0.25).collect();
    // The worker runs the first forwards (TorchScript profiles them);
    // its answer is the one every later forward must give.
    let expected = handle.submit_batch(&rows).unwrap().blocking_wait().unwrap();
    assert_eq!(expected.len(), 12);
    let caller = std::thread::spawn(move || {
        let before = threads_of_this_process();
        for _ in 0..100 {
            std::thread::sleep(LONE_ROW_GAP * 2);
            let answer = handle.submit_batch(&rows).unwrap().blocking_wait().unwrap();
            assert_eq!(answer, expected);
        }
        let inline = handle.stats().snapshot().inline_inferences;
        (before, threads_of_this_process(), inline)
    });
    let (before, after, inline) = caller.join().unwrap();
    assert!(inline > 0, "no forward ran on the caller's thread");
    assert_eq!(
        after, before,
        "inline forwards started threads: {before} before, {after} after"
    );
}
