mod common;

use common::{expected_tiny, tiny_model, ScratchDir};
use ironbridge_models::{DeviceChoice, ModelError, ModelRegistry, TorchModel};

#[test]
fn forward_matches_the_hand_computed_outputs() {
    let model = tiny_model();
    let rows = [
        [1.0, 2.0, 3.0],  // 1 + 4 + 9 + 0.5 = 14.5;  -1 + 1 - 1 = -1
        [0.0, 0.0, 0.0],  // 0.5; -1
        [-1.0, 0.5, 2.0], // -1 + 1 + 6 + 0.5 = 6.5; 1 + 0.25 - 1 = 0.25
    ];
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let outputs = model.forward(&flat, rows.len()).unwrap();
    assert_eq!(outputs, vec![14.5, -1.0, 0.5, -1.0, 6.5, 0.25]);
    let by_formula: Vec<f32> = rows.iter().flat_map(|r| expected_tiny(r)).collect();
    assert_eq!(outputs, by_formula);
}

#[test]
fn each_forward_sees_its_own_rows_when_the_shape_repeats() {
    // The input tensor of one shape is reused: every forward must answer
    // for its own rows, whatever ran before it.
    let model = tiny_model();
    let batches: [&[[f32; 3]]; 5] = [
        &[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]],
        &[[-1.0, 0.5, 2.0], [4.0, -3.0, 0.25]],
        &[[7.0, 1.0, -2.0]],
        &[[2.0, 2.0, 2.0], [-5.0, 1.5, 0.0]],
        &[[3.0, -1.0, 1.0]],
    ];
    for rows in batches {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let by_formula: Vec<f32> = rows.iter().flat_map(|r| expected_tiny(r)).collect();
        assert_eq!(model.forward(&flat, rows.len()).unwrap(), by_formula);
    }
}

#[test]
fn a_module_that_changes_its_input_in_place_still_gets_each_forwards_rows() {
    // This fixture zeroes and transposes its input after answering: the
    // reused tensor is then not what it was, and must not be refilled.
    let verified = ModelRegistry::open(common::fixtures().join("tiny-inplace"))
        .unwrap()
        .load("1.0.0")
        .unwrap();
    let model = TorchModel::load(&verified, DeviceChoice::Cpu).unwrap();
    for rows in [
        [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]],
        [[-1.0, 0.5, 2.0], [4.0, -3.0, 0.25]],
        [[7.0, 1.0, -2.0], [2.0, 2.0, 2.0]],
    ] {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let by_formula: Vec<f32> = rows.iter().flat_map(|r| expected_tiny(r)).collect();
        assert_eq!(model.forward(&flat, rows.len()).unwrap(), by_formula);
    }
}

#[test]
fn outputs_that_are_not_contiguous_float_come_out_in_row_order() {
    // A contiguous float output is read where it lies; these fixtures
    // answer as `tiny` in a transposed view and in float64, which must be
    // copied out (and converted) instead.
    let rows = [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-1.0, 0.5, 2.0]];
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let by_formula: Vec<f32> = rows.iter().flat_map(|r| expected_tiny(r)).collect();
    for fixture in ["tiny-strided", "tiny-double"] {
        let verified = ModelRegistry::open(common::fixtures().join(fixture))
            .unwrap()
            .load("1.0.0")
            .unwrap();
        let model = TorchModel::load(&verified, DeviceChoice::Cpu).unwrap();
        assert_eq!(
            model.forward(&flat, rows.len()).unwrap(),
            by_formula,
            "{fixture}"
        );
        assert_eq!(
            model.forward(&flat[..3], 1).unwrap(),
            expected_tiny(&rows[0]),
            "{fixture}, one row"
        );
    }
}

#[test]
fn forward_of_zero_rows_is_empty() {
    assert_eq!(tiny_model().forward(&[], 0).unwrap(), Vec::<f32>::new());
}

#[test]
fn rows_of_the_wrong_length_are_refused() {
    let err = tiny_model().forward(&[1.0, 2.0, 3.0, 4.0], 1).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::InputShape {
                expected: 3,
                actual: 4,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn an_output_shape_other_than_the_manifest_promises_is_an_error() {
    let scratch = ScratchDir::new("outputs");
    let model = common::tiny_with_an_extra_output(&scratch);
    let err = model.forward(&[1.0, 2.0, 3.0], 1).unwrap_err();
    match &err {
        ModelError::OutputShape {
            expected, actual, ..
        } => {
            assert_eq!(expected, &[1, 3]);
            assert_eq!(actual, &vec![1, 2]);
        }
        other => panic!("expected OutputShape, got {other:?}"),
    }
}

#[test]
fn cuda_is_refused_clearly_when_absent() {
    if tch::Cuda::is_available() {
        return; // this check is about machines without a GPU
    }
    let verified = ModelRegistry::open(common::fixtures().join("tiny"))
        .unwrap()
        .load("1.0.0")
        .unwrap();
    let err = TorchModel::load(&verified, DeviceChoice::Cuda(0)).unwrap_err();
    assert!(
        matches!(err, ModelError::CudaUnavailable { index: 0, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("CUDA device 0 is configured"),
        "{err}"
    );
}

#[test]
fn the_raw_module_gives_the_same_answer() {
    let model = tiny_model();
    let input = model.input_tensor(&[1.0, 2.0, 3.0], 1).unwrap();
    let output = tch::no_grad(|| model.module().forward_ts(&[input])).unwrap();
    let values: Vec<f32> = Vec::try_from(output.flatten(0, -1)).unwrap();
    assert_eq!(values, vec![14.5, -1.0]);
}
