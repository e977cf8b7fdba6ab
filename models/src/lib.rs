//! IronBridge models: manifests, the on-disk registry of model versions, the
//! libtorch backend and the batched inference service.
//!
//! The path of a model from disk to a prediction:
//!
//! 1. [`ModelRegistry::open`] lists the versions in a model folder
//!    (`<model-dir>/<version>/{manifest.toml, model.pt}`, format in
//!    `docs/manifest-format.md`).
//! 2. [`ModelRegistry::load`] validates the manifest, reads the TorchScript
//!    file and checks its sha256 over the exact bytes, giving a
//!    [`VerifiedModel`]. libtorch can crash on crafted files, so nothing
//!    reaches it before this check.
//! 3. [`TorchModel::load`] hands those verified bytes to libtorch (CPU, or a
//!    CUDA device when configured and present), in eval mode.
//! 4. [`InferenceService::spawn`] runs the model on its own thread, batching
//!    rows submitted through an [`InferenceHandle`]; [`prepare_inputs`] keeps
//!    missing, bad-quality, non-finite and out-of-range values away from it.
//!    [`InferenceService::spawn_remote`] runs the same queue and batches on a
//!    serving engine instead ([`KserveV2Client`], `backend = "remote"`,
//!    `docs/remote-inference.md`).

mod drift;
mod error;
mod gate;
mod lifecycle;
mod manifest;
mod registry;
mod remote;
mod service;
mod torch_backend;
pub mod verify;

pub use drift::{ReferenceBins, SlidingWindow};
pub use error::ModelError;
pub use gate::{normal_quantile, Gate, GateConfig, GateDecision, GateMetric, GateStats};
pub use lifecycle::{
    LifecycleOptions, ModelEvent, ModelEventKind, ModelLifecycle, ServingModel, VersionInfo,
    VersionState, EVENT_BUFFER,
};
pub use manifest::{
    AcceptanceMetric, InputSpec, LatencyBudget, ModelManifest, OutputSpec, Provenance,
    MANIFEST_FILE,
};
pub use registry::{ModelRegistry, ModelVersion, VerifiedModel};
pub use remote::{
    parse_infer_response, KserveV2Client, RemoteModel, RemoteOptions, KSERVE_V2, REMOTE_BACKOFF,
};
pub use service::{
    prepare_inputs, HistogramSnapshot, InferenceHandle, InferenceMonitor, InferenceOptions,
    InferenceService, InferenceStats, InferenceStatsSnapshot, InputValue, ModelState, ModelStatus,
    PendingPrediction, RemoteEngineStatus, SkipReason, SubmitError, INLINE_FORWARD_MAX,
    LONE_ROW_GAP,
};
pub use torch_backend::{turn_off_onednn_jit_profiling, DeviceChoice, TorchModel};
