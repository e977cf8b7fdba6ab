//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while reading, verifying, loading or running
/// a model. Messages are written for the person who reads the gateway log:
/// they name the file, the version or the model involved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("manifest {path} cannot be parsed: {source}")]
    ManifestParse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },

    #[error("manifest {path} is invalid:\n  - {}", problems.join("\n  - "))]
    ManifestInvalid {
        path: PathBuf,
        problems: Vec<String>,
    },

    #[error(
        "model folder {dir} has no version {version} (available: {})",
        list_or_none(available)
    )]
    VersionNotFound {
        dir: PathBuf,
        version: String,
        available: Vec<String>,
    },

    #[error(
        "manifest {path} says version {manifest_version} but lies in folder {folder_version}; \
         the folder name must equal the version"
    )]
    VersionMismatch {
        path: PathBuf,
        manifest_version: String,
        folder_version: String,
    },

    #[error(
        "model file {path} has sha256 {actual} but its manifest says {expected}; refusing to load"
    )]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error(
        "CUDA device {index} is configured but {reason}; configure the CPU or a present device"
    )]
    CudaUnavailable { index: usize, reason: String },

    #[error("libtorch could not load model file {path}: {message}")]
    TorchLoad { path: PathBuf, message: String },

    #[error("model {model}: {expected} values expected ({n_rows} rows of {n_inputs} inputs), got {actual}")]
    InputShape {
        model: String,
        n_rows: usize,
        n_inputs: usize,
        expected: usize,
        actual: usize,
    },

    #[error("model {model} returned a tensor of shape {actual:?}; its manifest promises {expected:?} (rows x outputs)")]
    OutputShape {
        model: String,
        expected: [i64; 2],
        actual: Vec<i64>,
    },

    // A String rather than the TchError: one failed batch answers every
    // request in it, so the error has to be reproducible per request.
    #[error("model {model}: inference failed: {message}")]
    Inference { model: String, message: String },

    #[error("invalid inference options for model {model}: {problem}")]
    InvalidOptions { model: String, problem: String },

    #[error("cannot start the inference thread for model {model}: {source}")]
    Spawn {
        model: String,
        #[source]
        source: std::io::Error,
    },

    #[error("the inference service for model {model} stopped before answering")]
    ServiceStopped { model: String },

    #[error("model {model}: version {version} is already active")]
    AlreadyActive { model: String, version: String },

    #[error("model {model}: no previous version to roll back to")]
    NoPreviousVersion { model: String },

    #[error("model {model}: no shadow version is running")]
    NoShadow { model: String },

    #[error("model {model}: the remote inference client cannot be set up: {message}")]
    RemoteSetup { model: String, message: String },

    // A String like `Inference`: one failed request answers every row of
    // its batch.
    #[error("model {model}: the inference engine at {url} failed: {message}")]
    RemoteUnavailable {
        model: String,
        url: String,
        message: String,
    },

    #[error("model {model}: version {version} failed, the active version keeps serving: {reason}")]
    ActivationFailed {
        model: String,
        version: String,
        reason: String,
    },
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}
