//! Following a model's alias in an MLflow Model Registry
//! (`[models.registry]`, docs/model-lifecycle.md "From an MLflow registry").
//!
//! Every `poll_interval_s` the alias is resolved to a registry version. A
//! version not seen before has its `manifest.toml` read first (it names the
//! edge version and the model file); a version folder already present with
//! the same manifest is not downloaded again, one with a different manifest
//! is refused. A new one is downloaded into a hidden folder (`.registry-*`,
//! which the model registry ignores) and renamed to its version, so the
//! folder watcher never sees half a version. Then the lifecycle takes over
//! as for a folder dropped in by hand: it verifies the sha256 before
//! libtorch reads a byte, and the version becomes the shadow, the serving
//! one, or stays Available, as `on_new` says, audited as user `registry`.
//!
//! The registry being unreachable changes nothing that serves: the sync
//! retries with backoff and says so in `Registry/LastError` and
//! `ironbridge_registry_errors_total`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ironbridge_connectors::{Backoff, BackoffConfig};
use ironbridge_metrics::{Counter, Gauge, MetricsRegistry};
use ironbridge_models::{ModelLifecycle, ModelManifest, VersionState, MANIFEST_FILE};
use tokio_util::sync::CancellationToken;

use crate::config::{OnNewVersion, RegistryConfig};
use crate::mlflow::{MlflowClient, RegistryVersion};
use crate::opcua_server::{OpcUaPublisher, RegistryStatusView};
use crate::GatewayError;

/// Who the audit names for what the registry changes.
pub const REGISTRY_USER: &str = "registry";
/// The staging folder's prefix: a dot-folder, ignored by the model registry.
const STAGING_PREFIX: &str = ".registry-";
/// Retries after a failed sync never wait longer than this (or the poll
/// interval, if longer).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// One model's registry counters (label `model`).
#[derive(Debug, Default, Clone)]
pub struct RegistryStats {
    /// Alias lookups that answered.
    pub syncs: Counter,
    /// Failed lookups and refused versions (unreachable, unknown alias,
    /// unusable manifest, conflicting folder, failed verification).
    pub errors: Counter,
    /// Versions downloaded into the model's folder.
    pub downloads: Counter,
    /// Unix time of the last lookup that answered.
    pub last_sync_seconds: Gauge,
}

impl RegistryStats {
    pub fn register(&self, registry: &MetricsRegistry, model: &str) {
        let labels = || vec![("model", model.to_string())];
        registry.add_counter(
            "ironbridge_registry_syncs",
            "Looks at the model registry's alias that answered.",
            labels(),
            &self.syncs,
        );
        registry.add_counter(
            "ironbridge_registry_errors",
            "Failed looks at the model registry and versions from it that were refused.",
            labels(),
            &self.errors,
        );
        registry.add_counter(
            "ironbridge_registry_downloads",
            "Model versions downloaded from the model registry.",
            labels(),
            &self.downloads,
        );
        registry.add_gauge(
            "ironbridge_registry_last_sync_seconds",
            "Unix time of the last look at the model registry that answered.",
            labels(),
            &self.last_sync_seconds,
        );
    }
}

/// Follows one model's alias until cancelled.
pub(crate) struct RegistrySync {
    pub(crate) model: String,
    pub(crate) config: RegistryConfig,
    pub(crate) client: MlflowClient,
    pub(crate) lifecycle: Arc<ModelLifecycle>,
    pub(crate) publisher: OpcUaPublisher,
    pub(crate) stats: RegistryStats,
}

/// The registry version handled last, so an unchanged alias costs one
/// lookup and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Handled {
    registry_version: String,
    /// Why that version was refused, kept as the last error while the
    /// alias stays on it.
    refused: Option<String>,
}

/// What one sync did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The alias points to the version handled before.
    Unchanged,
    /// The version is not READY yet; looked at again next time.
    NotReady(String),
    /// A version handled now.
    Handled,
}

impl RegistrySync {
    /// The client for `config`, with the token from its environment
    /// variable: a missing token fails the start, not every sync.
    pub(crate) fn client(
        model: &str,
        config: &RegistryConfig,
    ) -> Result<MlflowClient, GatewayError> {
        let token = match &config.token_env {
            Some(env) => match std::env::var(env) {
                Ok(token) if !token.trim().is_empty() => Some(token.trim().to_string()),
                _ => {
                    return Err(GatewayError::MissingRegistryToken {
                        model: model.to_string(),
                        env: env.clone(),
                    })
                }
            },
            None => None,
        };
        MlflowClient::new(&config.url, token)
    }

    pub(crate) async fn run(self, cancel: CancellationToken) {
        let poll = Duration::from_secs(self.config.poll_interval_s.max(1));
        let poll_ms = u64::try_from(poll.as_millis()).unwrap_or(u64::MAX);
        let mut backoff = Backoff::new(BackoffConfig {
            initial_ms: poll_ms,
            max_ms: poll_ms.max(MAX_RETRY_DELAY.as_millis() as u64),
        });
        let mut status = RegistryStatusView::default();
        let mut handled: Option<Handled> = None;
        tracing::info!(
            model = %self.model, registry = %self.client.url(), name = %self.config.name,
            alias = %self.config.alias, on_new = self.config.on_new.as_str(),
            "following the model registry"
        );
        loop {
            // A stalled download must not hold up a shutdown; what it left
            // is a hidden staging folder, replaced by the next attempt.
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                result = self.sync(&mut handled, &mut status) => result,
            };
            let wait = match result {
                Ok(outcome) => {
                    if backoff.failures() > 0 {
                        tracing::info!(model = %self.model, "model registry reachable again");
                    }
                    backoff.reset();
                    status.last_error = match (&outcome, &handled) {
                        (Outcome::NotReady(state), _) => format!(
                            "registry version {} is {state}, not READY yet; waiting",
                            status.version_seen.as_deref().unwrap_or("?")
                        ),
                        (
                            _,
                            Some(Handled {
                                refused: Some(reason),
                                ..
                            }),
                        ) => reason.clone(),
                        _ => String::new(),
                    };
                    poll
                }
                Err(e) => {
                    self.stats.errors.inc();
                    let message = e.to_string();
                    // Logged when it starts failing or the reason changes,
                    // not at every retry.
                    if message != status.last_error {
                        tracing::warn!(model = %self.model, "model registry: {message}");
                    }
                    status.last_error = message;
                    match e {
                        // The registry answered: the alias may be set any
                        // moment, so look again at the usual pace.
                        GatewayError::RegistryAliasUnknown { .. } => {
                            backoff.reset();
                            poll
                        }
                        _ => backoff.next_delay(),
                    }
                }
            };
            self.publisher.publish_registry(&self.model, &status);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One look at the alias and, for a new version, its download and
    /// hand-over. Errors are the lookup's or the download's (retried); a
    /// version refused for what it is stays in `handled`.
    async fn sync(
        &self,
        handled: &mut Option<Handled>,
        status: &mut RegistryStatusView,
    ) -> Result<Outcome, GatewayError> {
        let found = self
            .client
            .version_by_alias(&self.config.name, &self.config.alias)
            .await?;
        let now = SystemTime::now();
        self.stats.syncs.inc();
        self.stats.last_sync_seconds.set(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        status.last_sync = Some(now);
        status.version_seen = Some(found.version.clone());
        if handled
            .as_ref()
            .is_some_and(|h| h.registry_version == found.version)
        {
            return Ok(Outcome::Unchanged);
        }
        if !found.is_ready() {
            return Ok(Outcome::NotReady(found.status));
        }
        let refused = match self.take(&found).await {
            Ok(()) => None,
            Err(Refusal::Retry(e)) => return Err(e),
            Err(Refusal::Version(reason)) => {
                self.stats.errors.inc();
                tracing::warn!(model = %self.model, registry_version = %found.version, "{reason}");
                Some(reason)
            }
        };
        *handled = Some(Handled {
            registry_version: found.version,
            refused,
        });
        Ok(Outcome::Handled)
    }

    /// Brings registry version `found` into the model's folder (unless it
    /// is there already) and hands it to the lifecycle.
    async fn take(&self, found: &RegistryVersion) -> Result<(), Refusal> {
        let name = &self.config.name;
        let manifest_bytes = self
            .client
            .artifact(name, &found.version, MANIFEST_FILE)
            .await
            .map_err(Refusal::from)?;
        let manifest = parse_manifest(name, &found.version, &manifest_bytes)?;
        let dir = self.lifecycle.dir().to_path_buf();
        let target = dir.join(&manifest.version);
        match same_manifest(&target, &manifest_bytes) {
            Ok(Some(true)) => {}
            Ok(Some(false)) => {
                return Err(Refusal::Version(
                    GatewayError::RegistryConflict {
                        dir: target.display().to_string(),
                        version: manifest.version.clone(),
                        registry_version: found.version.clone(),
                    }
                    .to_string(),
                ))
            }
            Ok(None) => {
                let model_bytes = self
                    .client
                    .artifact(name, &found.version, &manifest.file)
                    .await
                    .map_err(Refusal::from)?;
                let (version, file) = (manifest.version.clone(), manifest.file.clone());
                let written = tokio::task::spawn_blocking(move || {
                    install(&dir, &version, &manifest_bytes, &file, &model_bytes)
                })
                .await
                .map_err(|e| Refusal::Version(format!("writing the version panicked: {e}")))?;
                match written {
                    Ok(()) => {}
                    // Someone else put a folder of that name there meanwhile.
                    Err(e) if target.exists() => return Err(Refusal::Version(e.to_string())),
                    Err(e) => return Err(Refusal::Retry(e)),
                }
                self.stats.downloads.inc();
                tracing::info!(
                    model = %self.model, version = %manifest.version,
                    registry_version = %found.version, source = %found.source,
                    run_id = found.run_id.as_deref().unwrap_or("-"),
                    "model version downloaded from the registry"
                );
            }
            Err(e) => return Err(Refusal::Retry(e)),
        }
        self.hand_over(&manifest.version).await
    }

    /// The lifecycle reads the folder again and does what `on_new` says.
    async fn hand_over(&self, version: &str) -> Result<(), Refusal> {
        let lifecycle = self.lifecycle.clone();
        let on_new = self.config.on_new;
        let version = version.to_string();
        // Loading a version blocks (libtorch): off the runtime's workers.
        let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
            lifecycle.rescan().map_err(|e| e.to_string())?;
            let state = lifecycle
                .versions()
                .into_iter()
                .find(|v| v.version == version)
                .map(|v| (v.state, v.failure_reason));
            match state {
                None => Err(format!(
                    "version {version} is not in the model folder after its download"
                )),
                Some((VersionState::Failed, reason)) => Err(format!(
                    "version {version} failed: {}",
                    reason.unwrap_or_default()
                )),
                // Already where it should be (e.g. the version started with).
                Some((VersionState::Active, _)) => Ok(()),
                Some((VersionState::Shadow, _)) if on_new == OnNewVersion::Shadow => Ok(()),
                Some(_) => match on_new {
                    OnNewVersion::Shadow => lifecycle
                        .start_shadow(&version, REGISTRY_USER)
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    OnNewVersion::Activate => lifecycle
                        .activate(&version, REGISTRY_USER)
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    OnNewVersion::None => Ok(()),
                },
            }
        })
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(Refusal::Version(reason)),
            Err(e) => Err(Refusal::Version(format!("the hand-over panicked: {e}"))),
        }
    }
}

/// Why a version was not taken: worth retrying (the registry or the disk
/// failed), or not (the version itself is unusable or conflicts).
enum Refusal {
    Retry(GatewayError),
    Version(String),
}

impl From<GatewayError> for Refusal {
    /// A missing artifact is the version's fault (no IronBridge files in
    /// its source); anything else from the registry may pass.
    fn from(error: GatewayError) -> Self {
        match error {
            GatewayError::RegistryArtifactMissing { .. } => Refusal::Version(error.to_string()),
            other => Refusal::Retry(other),
        }
    }
}

fn parse_manifest(
    name: &str,
    registry_version: &str,
    bytes: &[u8],
) -> Result<ModelManifest, Refusal> {
    let unusable = |message: String| {
        Refusal::Version(
            GatewayError::RegistryManifest {
                name: name.to_string(),
                registry_version: registry_version.to_string(),
                message,
            }
            .to_string(),
        )
    };
    let text = std::str::from_utf8(bytes).map_err(|e| unusable(format!("not UTF-8: {e}")))?;
    let origin = PathBuf::from(format!("mlflow:{name}/{registry_version}/{MANIFEST_FILE}"));
    let manifest = ModelManifest::from_toml(text, &origin).map_err(|e| unusable(e.to_string()))?;
    manifest
        .validate()
        .map_err(|problems| unusable(problems.join("; ")))?;
    // A dot-folder would be ignored as a staging folder.
    if manifest.version.starts_with('.') {
        return Err(unusable(format!(
            "version {:?} must not start with '.'",
            manifest.version
        )));
    }
    Ok(manifest)
}

/// Whether `target` holds exactly `manifest`: `None` when there is no such
/// folder.
fn same_manifest(target: &Path, manifest: &[u8]) -> Result<Option<bool>, GatewayError> {
    match std::fs::read(target.join(MANIFEST_FILE)) {
        Ok(present) => Ok(Some(present == manifest)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !target.exists() => Ok(None),
        // A folder without a readable manifest is not ours to replace.
        Err(_) if target.exists() => Ok(Some(false)),
        Err(source) => Err(GatewayError::RegistryWrite {
            path: target.display().to_string(),
            source,
        }),
    }
}

/// Writes the version into a hidden staging folder of `dir`, flushed to
/// disk, then renames it to `version`: the folder appears whole or not at
/// all. Never replaces an existing folder.
fn install(
    dir: &Path,
    version: &str,
    manifest: &[u8],
    file: &str,
    model: &[u8],
) -> Result<(), GatewayError> {
    let staging = dir.join(format!("{STAGING_PREFIX}{version}"));
    let target = dir.join(version);
    let failed = |path: &Path| {
        let path = path.display().to_string();
        move |source| GatewayError::RegistryWrite { path, source }
    };
    // Left over from an interrupted download: it is ours, start over.
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(failed(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(failed(&staging))?;
    let write = |name: &str, bytes: &[u8]| -> Result<(), GatewayError> {
        use std::io::Write;
        let path = staging.join(name);
        let mut out = std::fs::File::create(&path).map_err(failed(&path))?;
        out.write_all(bytes).map_err(failed(&path))?;
        out.sync_all().map_err(failed(&path))
    };
    let result = write(file, model)
        .and_then(|()| write(MANIFEST_FILE, manifest))
        .and_then(|()| {
            if target.exists() {
                return Err(GatewayError::RegistryWrite {
                    path: target.display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "the version folder appeared during the download",
                    ),
                });
            }
            std::fs::rename(&staging, &target).map_err(failed(&target))
        });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    } else if let Ok(parent) = std::fs::File::open(dir) {
        // The rename itself survives a power cut once the folder is synced.
        let _ = parent.sync_all();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_env_that_is_not_set_fails_the_start() {
        let config = RegistryConfig {
            kind: "mlflow".into(),
            url: "http://127.0.0.1:5000".into(),
            name: "m".into(),
            alias: "champion".into(),
            poll_interval_s: 1,
            token_env: Some("IRONBRIDGE_TEST_REGISTRY_TOKEN_NEVER_SET".into()),
            on_new: OnNewVersion::Shadow,
        };
        assert!(matches!(
            RegistrySync::client("m", &config),
            Err(GatewayError::MissingRegistryToken { env, .. })
                if env == "IRONBRIDGE_TEST_REGISTRY_TOKEN_NEVER_SET"
        ));
        let without = RegistryConfig {
            token_env: None,
            ..config
        };
        assert!(RegistrySync::client("m", &without).is_ok());
    }

    #[test]
    fn install_writes_a_whole_folder_and_never_replaces_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        install(dir.path(), "1.2.0", b"manifest", "model.pt", b"bytes").expect("installed");
        let folder = dir.path().join("1.2.0");
        assert_eq!(
            std::fs::read(folder.join(MANIFEST_FILE)).ok(),
            Some(b"manifest".to_vec())
        );
        assert_eq!(
            std::fs::read(folder.join("model.pt")).ok(),
            Some(b"bytes".to_vec())
        );
        assert!(!dir.path().join(".registry-1.2.0").exists());

        assert!(install(dir.path(), "1.2.0", b"other", "model.pt", b"other").is_err());
        assert_eq!(
            std::fs::read(folder.join(MANIFEST_FILE)).ok(),
            Some(b"manifest".to_vec())
        );
        assert!(!dir.path().join(".registry-1.2.0").exists());

        assert_eq!(same_manifest(&folder, b"manifest").ok(), Some(Some(true)));
        assert_eq!(same_manifest(&folder, b"other").ok(), Some(Some(false)));
        assert_eq!(
            same_manifest(&dir.path().join("9.9.9"), b"manifest").ok(),
            Some(None)
        );
    }

    #[test]
    fn a_manifest_that_does_not_parse_or_names_a_dot_version_is_refused() {
        assert!(matches!(
            parse_manifest("m", "1", b"not = [toml"),
            Err(Refusal::Version(reason)) if reason.contains("registry version 1")
        ));
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../models/examples/bearing-wear/1.0.0")
                .join(MANIFEST_FILE),
        )
        .expect("example manifest");
        assert!(parse_manifest("m", "1", example.as_bytes()).is_ok());
        let dotted = example.replace("version = \"1.0.0\"", "version = \".1.0.0\"");
        assert!(matches!(
            parse_manifest("m", "1", dotted.as_bytes()),
            Err(Refusal::Version(reason)) if reason.contains("'.'")
        ));
    }
}
