//! The versions of one model and the one that serves: activation that is
//! atomic and gap-free, rollback to the previous version at once, and a
//! state per version folder (docs/model-lifecycle.md).
//!
//! The serving version lives in an [`ArcSwap`]: the fan-out loads it for
//! every request without a lock, and a swap never blocks it. A request
//! submitted to the old version before the swap is answered by the old
//! version (its worker drains its queue before it stops), and every answer
//! says which version computed it ([`PendingPrediction::version`]).
//!
//! Activation is: verify (sha256 of the exact bytes, before libtorch sees
//! them), load, warm up with one forward pass, start its inference service,
//! swap. A version that fails any step is marked Failed with the reason and
//! the serving version keeps serving.
//!
//! [`PendingPrediction::version`]: crate::PendingPrediction::version

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::{ArcSwap, ArcSwapOption};
use ironbridge_metrics::MetricsRegistry;
use tokio::sync::broadcast;

use crate::error::ModelError;
use crate::manifest::{AcceptanceMetric, ModelManifest, MANIFEST_FILE};
use crate::registry::{compare_versions, ModelRegistry, VerifiedModel};
use crate::remote::{RemoteModel, RemoteOptions};
use crate::service::{InferenceHandle, InferenceOptions, InferenceService};
use crate::torch_backend::{DeviceChoice, TorchModel};

/// State of one version folder, as the OPC UA `State` node shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// Present, not serving; may be activated.
    Available,
    /// Serving the machine's predictions.
    Active,
    /// Running beside the active version without publishing.
    Shadow,
    /// Failed to verify, load or warm up (see `failure_reason`).
    Failed,
    /// Its folder is gone.
    Retired,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Available => "Available",
            VersionState::Active => "Active",
            VersionState::Shadow => "Shadow",
            VersionState::Failed => "Failed",
            VersionState::Retired => "Retired",
        }
    }
}

impl std::fmt::Display for VersionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the gateway knows of one version folder. Manifest fields are `None`
/// when the manifest could not be read (the reason is in `failure_reason`).
#[derive(Debug, Clone, PartialEq)]
pub struct VersionInfo {
    pub version: String,
    pub state: VersionState,
    pub sha256: Option<String>,
    pub created_at: Option<String>,
    pub training_data_sha256: Option<String>,
    pub code_commit: Option<String>,
    pub acceptance: BTreeMap<String, AcceptanceMetric>,
    pub failure_reason: Option<String>,
}

impl VersionInfo {
    fn from_folder(dir: &Path, version: &str) -> Self {
        let mut info = VersionInfo {
            version: version.to_owned(),
            state: VersionState::Available,
            sha256: None,
            created_at: None,
            training_data_sha256: None,
            code_commit: None,
            acceptance: BTreeMap::new(),
            failure_reason: None,
        };
        // Only the manifest is read here; the model file is hashed when the
        // version is activated.
        match ModelManifest::from_file(&dir.join(version).join(MANIFEST_FILE)) {
            Ok(manifest) => info.fill(&manifest),
            Err(e) => {
                info.state = VersionState::Failed;
                info.failure_reason = Some(e.to_string());
            }
        }
        info
    }

    fn fill(&mut self, manifest: &ModelManifest) {
        self.sha256 = Some(manifest.sha256.clone());
        self.created_at = Some(manifest.created_at.clone());
        self.training_data_sha256 = Some(manifest.provenance.training_data_sha256.clone());
        self.code_commit = Some(manifest.provenance.code_commit.clone());
        self.acceptance = manifest.acceptance.clone();
    }
}

/// The version that serves: its inference service and the manifest its
/// inputs are checked against.
#[derive(Debug)]
pub struct ServingModel {
    pub handle: InferenceHandle,
    pub manifest: Arc<ModelManifest>,
    pub version: Arc<str>,
}

/// One audited lifecycle event (a log line and an InfluxDB `model_event`
/// point in the gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEvent {
    pub model: String,
    pub event: ModelEventKind,
    pub version: String,
    /// The version that served before (activations and rollbacks).
    pub previous: Option<String>,
    /// Who asked (an OPC UA user name, `config` at start).
    pub user: String,
    /// Why a version failed.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelEventKind {
    Activated,
    RolledBack,
    Failed,
    /// A new version folder appeared.
    Discovered,
    /// A version folder disappeared.
    Retired,
    ShadowStarted,
    ShadowStopped,
}

impl ModelEventKind {
    /// The `event` field of the `model_event` point.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelEventKind::Activated => "activated",
            ModelEventKind::RolledBack => "rolled_back",
            ModelEventKind::Failed => "failed",
            ModelEventKind::Discovered => "discovered",
            ModelEventKind::Retired => "retired",
            ModelEventKind::ShadowStarted => "shadow_started",
            ModelEventKind::ShadowStopped => "shadow_stopped",
        }
    }
}

/// How every version of the model is run.
#[derive(Debug, Clone)]
pub struct LifecycleOptions {
    pub device: DeviceChoice,
    pub inference: InferenceOptions,
    /// Where each loaded version's counters go (labels `model`, `version`).
    pub metrics: MetricsRegistry,
    /// Every version is run by this remote engine instead of libtorch
    /// (`backend = "remote"`); `None` runs them in-process.
    pub remote: Option<RemoteOptions>,
}

/// The versions of one model folder and the slot that serves.
pub struct ModelLifecycle {
    name: String,
    dir: PathBuf,
    options: LifecycleOptions,
    serving: ArcSwap<ServingModel>,
    books: Mutex<Books>,
    /// Runs beside the serving version, unpublished; `None` most of the time.
    shadow: ArcSwapOption<ServingModel>,
    /// Activations, rollbacks and rescans one at a time (a load takes a
    /// while; the serving slot is never locked by it).
    changes: Mutex<()>,
    events: broadcast::Sender<ModelEvent>,
}

/// Lifecycle events a slow receiver may fall behind by.
pub const EVENT_BUFFER: usize = 256;

struct Books {
    versions: Vec<VersionInfo>,
    /// Kept loaded so a rollback is a swap, not a load.
    previous: Option<Arc<ServingModel>>,
}

impl std::fmt::Debug for ModelLifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelLifecycle")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .field("serving", &self.serving.load().version)
            .finish_non_exhaustive()
    }
}

impl ModelLifecycle {
    /// Lists the versions in `dir` and activates `version`; the gateway does
    /// not start without it.
    pub fn start(
        name: &str,
        dir: impl Into<PathBuf>,
        version: &str,
        options: LifecycleOptions,
    ) -> Result<Self, ModelError> {
        let dir = dir.into();
        let registry = ModelRegistry::open(&dir)?;
        let verified = registry.load(version)?;
        let serving = prepare(&verified, &options)?;
        let versions = registry
            .versions()
            .iter()
            .map(|v| {
                let mut info = VersionInfo::from_folder(&dir, v);
                if v == version {
                    info.state = VersionState::Active;
                    info.fill(verified.manifest());
                }
                info
            })
            .collect();
        Ok(Self {
            name: name.to_owned(),
            dir,
            options,
            serving: ArcSwap::from_pointee(serving),
            shadow: ArcSwapOption::empty(),
            books: Mutex::new(Books {
                versions,
                previous: None,
            }),
            changes: Mutex::new(()),
            events: broadcast::channel(EVENT_BUFFER).0,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The serving version: cheap, lock-free, for every request.
    pub fn serving(&self) -> arc_swap::Guard<Arc<ServingModel>> {
        self.serving.load()
    }

    /// The serving version as an owned `Arc` (one atomic increment), to
    /// keep across an `.await`.
    pub fn serving_full(&self) -> Arc<ServingModel> {
        self.serving.load_full()
    }

    /// Every version folder known, in version order.
    pub fn versions(&self) -> Vec<VersionInfo> {
        self.books().versions.clone()
    }

    /// Reads the folder again: new version folders become Available (or
    /// Failed when their manifest is unusable), vanished ones Retired. The
    /// serving version keeps serving even if its folder goes: it was loaded
    /// from verified bytes.
    pub fn rescan(&self) -> Result<Vec<ModelEvent>, ModelError> {
        let _one_at_a_time = self.lock_changes();
        let found = ModelRegistry::open(&self.dir)?.versions();
        let mut events = Vec::new();
        let mut books = self.books();
        for version in &found {
            if books.versions.iter().any(|v| &v.version == version) {
                continue;
            }
            let info = VersionInfo::from_folder(&self.dir, version);
            events.push(self.event(
                if info.state == VersionState::Failed {
                    ModelEventKind::Failed
                } else {
                    ModelEventKind::Discovered
                },
                version,
                None,
                "folder",
                info.failure_reason.clone(),
            ));
            books.versions.push(info);
        }
        for info in &mut books.versions {
            let gone = !found.contains(&info.version);
            // A running version (active or shadow) keeps running from its
            // verified bytes; only idle ones retire.
            let running = matches!(info.state, VersionState::Active | VersionState::Shadow);
            if gone && !running && info.state != VersionState::Retired {
                info.state = VersionState::Retired;
                events.push(self.event(
                    ModelEventKind::Retired,
                    &info.version,
                    None,
                    "folder",
                    None,
                ));
            } else if !gone && info.state == VersionState::Retired {
                // The folder came back: it is read afresh.
                *info = VersionInfo::from_folder(&self.dir, &info.version);
            }
        }
        books
            .versions
            .sort_by(|a, b| compare_versions(&a.version, &b.version));
        Ok(events)
    }

    /// Verifies, loads and warms up `version`, then makes it the serving
    /// one. Blocking (libtorch loads the file): call it off the async
    /// runtime. On failure the serving version is unchanged and the version
    /// is marked Failed with the reason, which the error carries too. A
    /// version running as the shadow is promoted as it is (already loaded
    /// and warm), and the shadow slot is emptied.
    pub fn activate(&self, version: &str, user: &str) -> Result<ModelEvent, ModelError> {
        let _one_at_a_time = self.lock_changes();
        let current = self.serving.load_full();
        if &*current.version == version {
            return Err(ModelError::AlreadyActive {
                model: self.name.clone(),
                version: version.to_owned(),
            });
        }
        let promoted = match self.shadow.load_full() {
            Some(shadow) if &*shadow.version == version => {
                self.shadow.store(None);
                Some(shadow)
            }
            _ => None,
        };
        let serving = match promoted {
            Some(shadow) => shadow,
            None => Arc::new(self.load_candidate(version, user, &current)?),
        };
        let manifest = serving.manifest.clone();
        self.serving.store(serving);
        self.set_state(version, VersionState::Active, None, Some(manifest.as_ref()));
        self.set_state(&current.version, VersionState::Available, None, None);
        self.books().previous = Some(current.clone());
        Ok(self.event(
            ModelEventKind::Activated,
            version,
            Some(current.version.to_string()),
            user,
            None,
        ))
    }

    /// Runs `version` beside the serving one on the same inputs, without
    /// publishing its outputs as the machine's predictions (see
    /// [`ModelLifecycle::shadow`]). Loads it like an activation; a shadow
    /// already running is replaced.
    pub fn start_shadow(&self, version: &str, user: &str) -> Result<ModelEvent, ModelError> {
        let _one_at_a_time = self.lock_changes();
        let current = self.serving.load_full();
        if &*current.version == version {
            return Err(ModelError::AlreadyActive {
                model: self.name.clone(),
                version: version.to_owned(),
            });
        }
        if let Some(running) = self.shadow.load_full() {
            if &*running.version == version {
                return Ok(self.event(ModelEventKind::ShadowStarted, version, None, user, None));
            }
        }
        let shadow = Arc::new(self.load_candidate(version, user, &current)?);
        let manifest = shadow.manifest.clone();
        if let Some(replaced) = self.shadow.swap(Some(shadow)) {
            self.set_state(&replaced.version, VersionState::Available, None, None);
        }
        self.set_state(version, VersionState::Shadow, None, Some(manifest.as_ref()));
        Ok(self.event(
            ModelEventKind::ShadowStarted,
            version,
            Some(current.version.to_string()),
            user,
            None,
        ))
    }

    /// Stops the shadow run; its version becomes Available again.
    pub fn stop_shadow(&self, user: &str) -> Result<ModelEvent, ModelError> {
        let _one_at_a_time = self.lock_changes();
        let Some(shadow) = self.shadow.swap(None) else {
            return Err(ModelError::NoShadow {
                model: self.name.clone(),
            });
        };
        self.set_state(&shadow.version, VersionState::Available, None, None);
        Ok(self.event(
            ModelEventKind::ShadowStopped,
            &shadow.version,
            None,
            user,
            None,
        ))
    }

    /// The shadow version, if one runs: the fan-out gives it the same rows
    /// as the serving one.
    pub fn shadow(&self) -> Option<Arc<ServingModel>> {
        self.shadow.load_full()
    }

    /// Checks that `version` is known, verifies it, checks its interface
    /// against the serving one, loads and warms it up. A failure marks it
    /// Failed (with an event) and is returned as `ActivationFailed`.
    fn load_candidate(
        &self,
        version: &str,
        user: &str,
        current: &ServingModel,
    ) -> Result<ServingModel, ModelError> {
        let known: Vec<String> = self
            .books()
            .versions
            .iter()
            .map(|v| v.version.clone())
            .collect();
        if !known.iter().any(|v| v == version) {
            return Err(ModelError::VersionNotFound {
                dir: self.dir.clone(),
                version: version.to_owned(),
                available: known,
            });
        }
        let prepared = VerifiedModel::from_version_dir(&self.dir.join(version))
            .map_err(|e| e.to_string())
            .and_then(|verified| {
                same_interface(&current.manifest, verified.manifest())?;
                prepare(&verified, &self.options).map_err(|e| e.to_string())
            });
        prepared.map_err(|reason| {
            self.set_state(version, VersionState::Failed, Some(reason.clone()), None);
            self.event(
                ModelEventKind::Failed,
                version,
                Some(current.version.to_string()),
                user,
                Some(reason.clone()),
            );
            ModelError::ActivationFailed {
                model: self.name.clone(),
                version: version.to_owned(),
                reason,
            }
        })
    }

    /// Swaps the previously serving version back in, at once (it stayed
    /// loaded).
    pub fn rollback(&self, user: &str) -> Result<ModelEvent, ModelError> {
        let _one_at_a_time = self.lock_changes();
        let Some(previous) = self.books().previous.take() else {
            return Err(ModelError::NoPreviousVersion {
                model: self.name.clone(),
            });
        };
        let current = self.serving.swap(previous.clone());
        self.set_state(&previous.version, VersionState::Active, None, None);
        self.set_state(&current.version, VersionState::Available, None, None);
        self.books().previous = Some(current.clone());
        Ok(self.event(
            ModelEventKind::RolledBack,
            &previous.version,
            Some(current.version.to_string()),
            user,
            None,
        ))
    }

    fn set_state(
        &self,
        version: &str,
        state: VersionState,
        reason: Option<String>,
        manifest: Option<&ModelManifest>,
    ) {
        let mut books = self.books();
        if let Some(info) = books.versions.iter_mut().find(|v| v.version == version) {
            info.state = state;
            info.failure_reason = reason;
            if let Some(manifest) = manifest {
                info.fill(manifest);
            }
        }
    }

    fn event(
        &self,
        event: ModelEventKind,
        version: &str,
        previous: Option<String>,
        user: &str,
        reason: Option<String>,
    ) -> ModelEvent {
        let event = ModelEvent {
            model: self.name.clone(),
            event,
            version: version.to_owned(),
            previous,
            user: user.to_owned(),
            reason,
        };
        match event.event {
            ModelEventKind::Failed => tracing::warn!(
                model = %event.model, version = %event.version, user = %event.user,
                reason = event.reason.as_deref().unwrap_or(""), "model version failed"
            ),
            kind => tracing::info!(
                model = %event.model, version = %event.version, user = %event.user,
                previous = event.previous.as_deref().unwrap_or("-"), "model {}", kind.as_str()
            ),
        }
        // Nobody listening (no store configured) is fine: the log has it.
        let _ = self.events.send(event.clone());
        event
    }

    /// Every lifecycle event from now on. Policy when a receiver falls more
    /// than [`EVENT_BUFFER`] events behind: it loses the oldest (and is told
    /// so by `RecvError::Lagged`); the log line of each event stays.
    pub fn events(&self) -> broadcast::Receiver<ModelEvent> {
        self.events.subscribe()
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        // A panic while holding the lock leaves consistent data (every
        // update is a single assignment): carry on with it.
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_changes(&self) -> MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Loads verified bytes into libtorch, warms it up with the non-statistical
/// checks of `ironbridge model verify` (outputs of the manifest's shape at
/// batch 1 and 8, finite on valid inputs at the range edges and middle, no
/// libtorch failure on inputs beyond them), and starts the inference
/// service.
///
/// A remote version skips libtorch and the warm-up (the engine runs the
/// model); its folder was still verified, so the version tag on its
/// predictions names the exact bytes the engine is meant to serve.
fn prepare(
    verified: &VerifiedModel,
    options: &LifecycleOptions,
) -> Result<ServingModel, ModelError> {
    let manifest = verified.manifest();
    if let Some(remote) = &options.remote {
        let mut model = RemoteModel::new(verified, remote)?;
        if let Some(fallback) = &remote.fallback_version {
            model = model.with_fallback(load_fallback(verified, fallback, options)?);
        }
        let handle = InferenceService::spawn_remote(model, options.inference.clone())?;
        handle.register(&options.metrics, &manifest.name, &manifest.version);
        return Ok(ServingModel {
            handle,
            version: Arc::from(manifest.version.as_str()),
            manifest: Arc::new(manifest.clone()),
        });
    }
    let torch = load_warm(verified, options)?;
    let handle = InferenceService::spawn(torch, options.inference.clone())?;
    handle.register(&options.metrics, &manifest.name, &manifest.version);
    Ok(ServingModel {
        handle,
        version: Arc::from(manifest.version.as_str()),
        manifest: Arc::new(manifest.clone()),
    })
}

/// A remote version's fallback: the version folder `fallback` beside it,
/// verified, of the same interface, loaded and warmed up.
fn load_fallback(
    remote: &VerifiedModel,
    fallback: &str,
    options: &LifecycleOptions,
) -> Result<TorchModel, ModelError> {
    let manifest = remote.manifest();
    let setup = |message: String| ModelError::RemoteSetup {
        model: manifest.name.clone(),
        message: format!("fallback_version {fallback}: {message}"),
    };
    let dir = remote
        .dir()
        .parent()
        .ok_or_else(|| setup("the version folder has no parent folder".to_owned()))?
        .join(fallback);
    let verified = VerifiedModel::from_version_dir(&dir).map_err(|e| setup(e.to_string()))?;
    same_interface(manifest, verified.manifest()).map_err(setup)?;
    load_warm(&verified, options).map_err(|e| setup(e.to_string()))
}

/// Loads verified bytes into libtorch and runs the warm-up checks.
fn load_warm(
    verified: &VerifiedModel,
    options: &LifecycleOptions,
) -> Result<TorchModel, ModelError> {
    let manifest = verified.manifest();
    let torch = TorchModel::load(verified, options.device)?;
    let failed: Vec<String> = crate::verify::structural_checks(&torch)
        .into_iter()
        .chain(crate::verify::robustness_checks(&torch))
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if !failed.is_empty() {
        return Err(ModelError::Inference {
            model: manifest.name.clone(),
            message: format!("warm-up checks failed: {}", failed.join("; ")),
        });
    }
    Ok(torch)
}

/// A version swapped in while running must read the same inputs and give
/// the same outputs: the feature map, the OPC UA nodes and the Modbus
/// registers were built for them. Another interface needs a restart.
fn same_interface(active: &ModelManifest, candidate: &ModelManifest) -> Result<(), String> {
    if candidate.name != active.name {
        return Err(format!(
            "its manifest names model {:?}, not {:?}",
            candidate.name, active.name
        ));
    }
    if candidate.input_names() != active.input_names() {
        return Err(format!(
            "its inputs {:?} differ from the active version's {:?} (a new interface needs a restart)",
            candidate.input_names(),
            active.input_names()
        ));
    }
    if candidate.output_names() != active.output_names() {
        return Err(format!(
            "its outputs {:?} differ from the active version's {:?} (a new interface needs a restart)",
            candidate.output_names(),
            active.output_names()
        ));
    }
    Ok(())
}
