//! A verified TorchScript model loaded into libtorch.

use std::io::Cursor;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use tch::{CModule, Device, Kind, Tensor};

use crate::error::ModelError;
use crate::manifest::ModelManifest;
use crate::registry::{ModelVersion, VerifiedModel};

/// Sets libtorch's intra-op threads for the calling thread, once per thread
/// (again only when `threads` changes). OpenMP keeps this count per thread,
/// and MKL's GEMM follows it: a thread that never set it forks a team of
/// one thread per core even for a forward of a few rows, and that team then
/// spins on the other cores after every forward. The inference worker and
/// every thread that runs a row inline call this before their forward.
pub(crate) fn use_intra_op_threads(threads: i32) {
    thread_local! {
        static SET: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
    }
    SET.with(|set| {
        if set.get() != threads {
            tch::set_num_threads(threads);
            set.set(threads);
        }
    });
}

/// Keeps oneDNN (inside libtorch) from writing `/tmp/perf-<pid>.map`.
///
/// oneDNN announces every kernel it generates to a profiler. On aarch64
/// its default is Linux perf's map file, written for each process that
/// runs a forward and never removed: a gateway on an ARM edge box would
/// leave one in `/tmp` at every start and every `ironbridge model verify`.
/// (On x86-64 the default is VTune's interface, a no-op without VTune.)
/// Unless the user chose a setting (`ONEDNN_JIT_PROFILE`, or the older
/// `DNNL_JIT_PROFILE`), this sets `ONEDNN_JIT_PROFILE=0`, which oneDNN
/// reads when it generates its first kernel.
///
/// It changes the process's environment, which is sound only while no
/// other thread runs: call it first thing in `main`.
pub fn turn_off_onednn_jit_profiling() {
    if std::env::var_os("ONEDNN_JIT_PROFILE").is_none()
        && std::env::var_os("DNNL_JIT_PROFILE").is_none()
    {
        std::env::set_var("ONEDNN_JIT_PROFILE", "0");
    }
}

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
    /// The last forward's input tensor, refilled in place when the next
    /// forward has as many rows: a new tensor costs a trip through
    /// libtorch's dispatcher (`torch::zeros`), about 8 % of a 64-row
    /// forward of the example model (BENCHMARKS.md §16).
    input: Mutex<Option<ReusedInput>>,
}

/// An input tensor made by [`TorchModel::input_tensor`] on the CPU, and
/// where its values were then.
#[derive(Debug)]
struct ReusedInput {
    n_rows: usize,
    tensor: Tensor,
    /// Its data pointer when it was made: a module may have changed the
    /// tensor in place (`unsqueeze_`, `t_`, `set_`), and then it is not
    /// refilled but made anew.
    data: usize,
}

impl ReusedInput {
    /// Copies `rows` into the tensor, on the CPU, after
    /// [`Self::is_as_made`] with their shape.
    fn refill(&mut self, rows: &[f32]) {
        // `is_as_made` found the tensor's data pointer equal to this one:
        // asking libtorch again would cost a call.
        let data = std::ptr::with_exposed_provenance_mut::<f32>(self.data);
        // SAFETY: the tensor was made by `input_tensor` on the CPU (the
        // caller checks the device), and `is_as_made` checked that it is
        // still a contiguous float tensor of `rows.len()` values over the
        // same memory, so `data` points to that many aligned f32s that
        // libtorch owns. libtorch reads a tensor only inside a forward, and
        // the model's forwards run under the lock the caller holds, so
        // nothing reads them while they are written; a module that kept a
        // reference sees the new rows, as after an in-place op.
        unsafe { std::ptr::copy_nonoverlapping(rows.as_ptr(), data, rows.len()) };
    }

    /// Still a contiguous float tensor of `shape` over the memory it was
    /// made with.
    fn is_as_made(&self, shape: [i64; 2]) -> bool {
        self.tensor.data_ptr().addr() == self.data
            && self.tensor.size() == shape
            && self.tensor.is_contiguous()
            && matches!(self.tensor.f_kind(), Ok(Kind::Float))
    }
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
            input: Mutex::new(None),
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
        let shape = self.input_shape(rows, n_rows)?;
        // One libtorch call makes the tensor in its shape: each further op
        // (a view, a move to the CPU it is on) would be another trip
        // through libtorch's dispatcher on every forward.
        // Sized once: collecting a flat_map grows the vector step by step.
        let mut bytes = Vec::with_capacity(rows.len() * 4);
        for value in rows {
            bytes.extend_from_slice(&value.to_ne_bytes());
        }
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

    /// The `[n_rows, n_inputs]` shape of `rows`, or why they have not got it.
    fn input_shape(&self, rows: &[f32], n_rows: usize) -> Result<[i64; 2], ModelError> {
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
        Ok([to_i64(n_rows), to_i64(n_inputs)])
    }

    /// Runs `n_rows` row-major input rows and returns `n_rows x n_outputs`
    /// values, row-major. Fails if the model's output shape differs from
    /// what the manifest promises.
    pub fn forward(&self, rows: &[f32], n_rows: usize) -> Result<Vec<f32>, ModelError> {
        let shape = self.input_shape(rows, n_rows)?;
        if n_rows == 0 {
            return Ok(Vec::new());
        }
        // Held for the whole forward: the tensor is refilled only when no
        // forward reads it. A forward that panicked left it whole.
        let mut reused = self.input.lock().unwrap_or_else(PoisonError::into_inner);
        let input = match reused.take() {
            // A CUDA tensor's memory is the device's: made anew every time.
            Some(mut input)
                if self.device == Device::Cpu
                    && input.n_rows == n_rows
                    && input.is_as_made(shape) =>
            {
                input.refill(rows);
                reused.insert(input)
            }
            _ => {
                let tensor = self.input_tensor(rows, n_rows)?;
                let data = tensor.data_ptr().expose_provenance();
                reused.insert(ReusedInput {
                    n_rows,
                    tensor,
                    data,
                })
            }
        };
        // Grad mode is per thread; no_grad here keeps callers on any thread
        // from building autograd graphs.
        let output = tch::no_grad(|| self.module.forward_ts(&[&input.tensor]))
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
        if n_values > 0
            && output.device() == Device::Cpu
            && output.is_contiguous()
            && matches!(output.f_kind(), Ok(Kind::Float))
        {
            // Read where it lies: libtorch's own copy (`copy_data`) first
            // moves the tensor to the CPU through its dispatcher, a no-op
            // here that cost a lone row 0.3-0.5 µs more when caches are
            // cold (BENCHMARKS.md §17).
            let data = output.data_ptr().cast::<f32>().cast_const();
            // SAFETY: `output` is a contiguous float tensor on the CPU of
            // shape [n_rows, n_outputs] (checked above), so `data` (which
            // includes its storage offset) points to `n_values` > 0 aligned
            // f32s. libtorch keeps them alive while `output` is held, and
            // nothing writes them meanwhile: even if they are the module's
            // own memory or the input's, no other forward of this model runs
            // while `reused`'s lock is held.
            return Ok(unsafe { std::slice::from_raw_parts(data, n_values) }.to_vec());
        }
        let mut values = vec![0f32; n_values];
        // Otherwise libtorch copies it out (to the CPU first if needed),
        // converting another kind to float.
        let copied = match output.f_copy_data(&mut values, n_values) {
            Err(tch::TchError::Kind(_)) => output
                .f_to_kind(Kind::Float)
                .and_then(|t| t.f_copy_data(&mut values, n_values)),
            copied => copied,
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
