//! A verified TorchScript model loaded into libtorch.

use std::io::Cursor;
use std::time::SystemTime;

use tch::{CModule, Device, Kind, Tensor};

use crate::error::ModelError;
use crate::manifest::ModelManifest;
use crate::registry::{ModelVersion, VerifiedModel};

/// Where the model runs. CUDA is used only when configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    /// CUDA device by index.
    Cuda(usize),
}

impl DeviceChoice {
    /// The libtorch device, after checking that a configured CUDA device exists.
    pub fn to_device(self) -> Result<Device, ModelError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(index) => {
                if !tch::Cuda::is_available() {
                    return Err(ModelError::CudaUnavailable {
                        index,
                        reason: "libtorch finds no CUDA device on this machine".to_owned(),
                    });
                }
                let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
                if index >= count {
                    return Err(ModelError::CudaUnavailable {
                        index,
                        reason: format!("this machine has {count} CUDA device(s)"),
                    });
                }
                Ok(Device::Cuda(index))
            }
        }
    }
}

/// A TorchScript module in eval mode with the manifest it was verified against.
#[derive(Debug)]
pub struct TorchModel {
    module: CModule,
    manifest: ModelManifest,
    device: Device,
    version: ModelVersion,
}

impl TorchModel {
    /// Loads the verified bytes (never the file again, which could have
    /// changed since it was hashed) onto `device`.
    pub fn load(model: &VerifiedModel, device: DeviceChoice) -> Result<Self, ModelError> {
        let device = device.to_device()?;
        let load_error = |e: tch::TchError| ModelError::TorchLoad {
            path: model.file_path(),
            message: e.to_string(),
        };
        let mut module = CModule::load_data_on_device(&mut Cursor::new(model.bytes()), device)
            .map_err(load_error)?;
        module.f_set_eval().map_err(load_error)?;
        Ok(Self {
            module,
            manifest: model.manifest().clone(),
            device,
            version: ModelVersion::new(model, SystemTime::now()),
        })
    }

    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    pub fn version(&self) -> &ModelVersion {
        &self.version
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn n_inputs(&self) -> usize {
        self.manifest.inputs.len()
    }

    pub fn n_outputs(&self) -> usize {
        self.manifest.outputs.len()
    }

    /// The libtorch module itself, for measurements that bypass this crate
    /// (see `benches/inference.rs`). Call it under `tch::no_grad`.
    pub fn module(&self) -> &CModule {
        &self.module
    }

    /// Builds the `[n_rows, n_inputs]` float32 input tensor on the model's
    /// device from row-major values.
    pub fn input_tensor(&self, rows: &[f32], n_rows: usize) -> Result<Tensor, ModelError> {
        let n_inputs = self.n_inputs();
        let expected = n_rows.saturating_mul(n_inputs);
        if rows.len() != expected {
            return Err(ModelError::InputShape {
                model: self.version.name.clone(),
                n_rows,
                n_inputs,
                expected,
                actual: rows.len(),
            });
        }
        let shape = [to_i64(n_rows), to_i64(n_inputs)];
        // One libtorch call makes the tensor in its shape: each further op
        // (a view, a move to the CPU it is on) would be another trip
        // through libtorch's dispatcher on every forward.
        let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let input = Tensor::f_from_data_size(&bytes, &shape, Kind::Float)
            .map_err(|e| self.inference_error(e))?;
        if self.device == Device::Cpu {
            Ok(input)
        } else {
            input
                .f_to_device(self.device)
                .map_err(|e| self.inference_error(e))
        }
    }

    /// Runs `n_rows` row-major input rows and returns `n_rows x n_outputs`
    /// values, row-major. Fails if the model's output shape differs from
    /// what the manifest promises.
    pub fn forward(&self, rows: &[f32], n_rows: usize) -> Result<Vec<f32>, ModelError> {
        let input = self.input_tensor(rows, n_rows)?;
        if n_rows == 0 {
            return Ok(Vec::new());
        }
        // Grad mode is per thread; no_grad here keeps callers on any thread
        // from building autograd graphs.
        let output = tch::no_grad(|| self.module.forward_ts(&[input]))
            .map_err(|e| self.inference_error(e))?;

        let expected = [to_i64(n_rows), to_i64(self.n_outputs())];
        let actual = output.size();
        if actual != expected {
            return Err(ModelError::OutputShape {
                model: self.version.name.clone(),
                expected,
                actual,
            });
        }
        let n_values = n_rows * self.n_outputs();
        let mut values = vec![0f32; n_values];
        // A float output is copied out as it is (libtorch's copy moves it
        // to the CPU first if needed); others are converted.
        let copied = if matches!(output.f_kind(), Ok(Kind::Float)) {
            output.f_copy_data(&mut values, n_values)
        } else {
            output
                .f_to_kind(Kind::Float)
                .and_then(|t| t.f_copy_data(&mut values, n_values))
        };
        copied.map_err(|e| self.inference_error(e))?;
        Ok(values)
    }

    fn inference_error(&self, e: tch::TchError) -> ModelError {
        ModelError::Inference {
            model: self.version.name.clone(),
            message: e.to_string(),
        }
    }
}

// Row and column counts come from in-memory slices, far below i64::MAX.
fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
