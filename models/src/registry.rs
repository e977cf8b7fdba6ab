//! A model folder on disk: one subfolder per version, each checked against
//! its manifest's sha256 before anything hands the bytes to libtorch.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::error::ModelError;
use crate::manifest::{ModelManifest, MANIFEST_FILE};

/// A model folder whose subfolders are versions (`<dir>/<version>/manifest.toml`).
#[derive(Debug, Clone)]
pub struct ModelRegistry {
    dir: PathBuf,
    versions: Vec<String>,
}

impl ModelRegistry {
    /// Lists the versions under `dir`. Hidden subfolders (names starting with
    /// '.') are ignored, so a version can be staged as `.1.2.0` and renamed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, ModelError> {
        let dir = dir.into();
        let io_error = |source| ModelError::Io {
            path: dir.clone(),
            source,
        };
        let mut versions = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            if !entry.file_type().map_err(io_error)?.is_dir() {
                continue;
            }
            // A folder name that is not UTF-8 cannot equal a manifest version.
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !name.starts_with('.') {
                versions.push(name);
            }
        }
        versions.sort_by(|a, b| compare_versions(a, b));
        Ok(Self { dir, versions })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Version folder names in display order: numeric parts compare as
    /// numbers, so 1.10.0 sorts after 1.9.0 (no semver pre-release rules).
    pub fn versions(&self) -> Vec<String> {
        self.versions.clone()
    }

    /// Reads and validates the manifest of `version`, reads the model file and
    /// checks its sha256. Nothing here touches libtorch.
    pub fn load(&self, version: &str) -> Result<VerifiedModel, ModelError> {
        if !self.versions.iter().any(|v| v == version) {
            return Err(ModelError::VersionNotFound {
                dir: self.dir.clone(),
                version: version.to_owned(),
                available: self.versions.clone(),
            });
        }
        VerifiedModel::from_version_dir(&self.dir.join(version))
    }
}

/// A model version whose file bytes matched its manifest's sha256. Only
/// [`ModelRegistry::load`] / [`VerifiedModel::from_version_dir`] create one,
/// so holding one means the check ran.
#[derive(Clone)]
pub struct VerifiedModel {
    manifest: ModelManifest,
    dir: PathBuf,
    bytes: Vec<u8>,
}

impl VerifiedModel {
    /// Verifies one version folder (`<model-dir>/<version>/`) directly.
    pub fn from_version_dir(dir: &Path) -> Result<Self, ModelError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = ModelManifest::from_file(&manifest_path)?;

        let folder_version = dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if manifest.version != folder_version {
            return Err(ModelError::VersionMismatch {
                path: manifest_path,
                manifest_version: manifest.version,
                folder_version,
            });
        }

        // `file` is validated as a plain file name, so this stays in `dir`.
        let path = dir.join(&manifest.file);
        let bytes = std::fs::read(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != manifest.sha256 {
            return Err(ModelError::HashMismatch {
                path,
                expected: manifest.sha256,
                actual,
            });
        }
        Ok(Self {
            manifest,
            dir: dir.to_path_buf(),
            bytes,
        })
    }

    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    /// The version folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the TorchScript file.
    pub fn file_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.file)
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::fmt::Debug for VerifiedModel {
    // The bytes are opaque and large; show their size instead.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedModel")
            .field("manifest", &self.manifest)
            .field("dir", &self.dir)
            .field("bytes", &format_args!("{} bytes", self.bytes.len()))
            .finish()
    }
}

/// Which model version is loaded, for logs, predictions and OPC UA nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelVersion {
    pub name: String,
    pub version: String,
    pub sha256: String,
    /// When libtorch finished loading it.
    pub loaded_at: SystemTime,
}

impl ModelVersion {
    pub fn new(model: &VerifiedModel, loaded_at: SystemTime) -> Self {
        Self {
            name: model.manifest.name.clone(),
            version: model.manifest.version.clone(),
            sha256: model.manifest.sha256.clone(),
            loaded_at,
        }
    }
}

/// Orders version strings by their dot/dash separated parts, numerically
/// where both parts are numbers.
pub(crate) fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts =
        |s: &'_ str| -> Vec<String> { s.split(['.', '-', '+']).map(str::to_owned).collect() };
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let ordering = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(nx), Ok(ny)) => nx.cmp(&ny),
            _ => x.cmp(y),
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    pa.len().cmp(&pb.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::compare_versions;

    #[test]
    fn versions_sort_numerically() {
        let mut versions = vec!["1.10.0", "1.9.0", "0.2", "2.0.0", "1.9.1"];
        versions.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(versions, ["0.2", "1.9.0", "1.9.1", "1.10.0", "2.0.0"]);
    }
}
