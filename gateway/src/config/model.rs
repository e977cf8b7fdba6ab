//! `[[models]]`: which model version to serve, for which machines, and how
//! its inference service batches and limits work.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ironbridge_connectors::Problem;
use ironbridge_models::{GateConfig, GateMetric};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Must equal the manifest's `name`.
    pub name: String,
    /// Folder holding one sub-folder per version (relative paths are taken
    /// from the configuration file's folder).
    pub path: PathBuf,
    /// The version to serve (a sub-folder of `path`).
    pub version: String,
    /// Machines whose scans feed this model.
    pub machines: Vec<String>,
    /// Manifest input name → machine tag name, where they differ. Inputs not
    /// listed read the tag of the same name.
    #[serde(default)]
    pub input_tags: BTreeMap<String, String>,
    /// "cpu" (default), "cuda" or "cuda:N".
    #[serde(default = "default_device")]
    pub device: String,
    /// libtorch intra-op threads; 1 is fastest for small models and leaves
    /// the other core to I/O.
    #[serde(default = "default_threads")]
    pub intra_op_threads: usize,
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long a request may wait for others to join its batch. 0 (the
    /// default) runs whatever is queued at once; batches still form under
    /// load. A larger value trades latency for fewer, fuller batches.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// Requests waiting for the model; when full, new requests are rejected
    /// and counted (policy: drop newest).
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Upper bound on requests per second (none by default).
    #[serde(default)]
    pub rate_limit_per_s: Option<u32>,
    /// An input whose latest value was acquired longer than this before the
    /// scan that triggers a prediction counts as missing. None by default:
    /// an OPC UA subscription sends a value only when it changes, so an old
    /// value can be the current one.
    #[serde(default)]
    pub max_input_age_ms: Option<u64>,
    /// A tag carrying the measured truth of the model's (gated) output, e.g.
    /// wear measured at inspection; the gate's `mae` compares against it.
    #[serde(default)]
    pub label_tag: Option<String>,
    /// The statistical gate a shadow version must pass (`[models.gate]`).
    #[serde(default)]
    pub gate: Option<GateConfig>,
    /// Drift of the inputs and outputs from the training distribution
    /// (`[models.drift]`); measured with these defaults when absent, for a
    /// model whose manifest has quantiles.
    #[serde(default)]
    pub drift: DriftConfig,
    /// "local" (default): libtorch in this process. "remote": a serving
    /// engine over `protocol` at `url` (docs/remote-inference.md); `path`
    /// and `version` still name the verified version folder whose manifest
    /// gives the inputs and outputs.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// The engine's base URL (remote only), e.g. `http://10.0.0.5:8080`.
    #[serde(default)]
    pub url: Option<String>,
    /// "kserve-v2" (default; the Open Inference Protocol over HTTP/JSON).
    #[serde(default)]
    pub protocol: Option<String>,
    /// Longest one request to the engine may take (default 2000 ms).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Environment variable holding a bearer token for the engine.
    #[serde(default)]
    pub token_env: Option<String>,
    /// PEM CA certificate(s) trusted for the engine (https), beside the
    /// system's.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS (https).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The model's name on the engine (default: `name`).
    #[serde(default)]
    pub remote_model: Option<String>,
    /// A version folder under `path` run in-process (libtorch) while the
    /// engine fails; its predictions carry its own version. None: the
    /// predictions are skipped and counted meanwhile.
    #[serde(default)]
    pub fallback_version: Option<String>,
    /// New versions from an MLflow Model Registry (`[models.registry]`);
    /// none by default: only the folder's versions are known.
    #[serde(default)]
    pub registry: Option<RegistryConfig>,
}

/// `[models.registry]`: which registered model and alias to follow, and
/// what to do with a version the alias moves to (docs/model-lifecycle.md,
/// "From an MLflow registry").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Only "mlflow" for now; named so another registry can come without
    /// renaming keys.
    pub kind: String,
    /// The MLflow tracking server, e.g. "http://mlflow.plant:5000".
    pub url: String,
    /// The registered model's name in MLflow.
    pub name: String,
    /// The alias to follow (e.g. "champion").
    pub alias: String,
    /// Seconds between two looks at the alias (default 30).
    #[serde(default = "default_poll_interval_s")]
    pub poll_interval_s: u64,
    /// An environment variable holding a bearer token, when the server
    /// wants one (none by default).
    #[serde(default)]
    pub token_env: Option<String>,
    /// What a new version becomes (default "shadow").
    #[serde(default)]
    pub on_new: OnNewVersion,
}

/// What the gateway does with a version the alias moved to, once it is in
/// the model's folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNewVersion {
    /// Runs it beside the serving version (the gate, if configured, judges
    /// it). The default: nothing from outside serves unseen.
    #[default]
    Shadow,
    /// Makes it the serving version at once.
    Activate,
    /// Only downloads it (Available, for an admin to activate).
    None,
}

impl OnNewVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            OnNewVersion::Shadow => "shadow",
            OnNewVersion::Activate => "activate",
            OnNewVersion::None => "none",
        }
    }
}

/// The registry kinds the gateway can follow.
pub const REGISTRY_KINDS: &[&str] = &["mlflow"];

fn default_poll_interval_s() -> u64 {
    30
}

impl RegistryConfig {
    /// Problems of this table at key path `path` (`models[0].registry`).
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !REGISTRY_KINDS.contains(&self.kind.as_str()) {
            problems.push(Problem::new(
                format!("{path}.kind"),
                format!(
                    "unknown registry kind {:?}; expected one of: {}",
                    self.kind,
                    REGISTRY_KINDS.join(", ")
                ),
            ));
        }
        let url = self.url.trim();
        if url.is_empty() {
            problems.push(Problem::new(format!("{path}.url"), "must not be empty"));
        } else if !(url.starts_with("http://") || url.starts_with("https://")) {
            problems.push(Problem::new(
                format!("{path}.url"),
                format!("{url:?} must start with http:// or https://"),
            ));
        }
        for (key, value) in [("name", &self.name), ("alias", &self.alias)] {
            if value.trim().is_empty() {
                problems.push(Problem::new(format!("{path}.{key}"), "must not be empty"));
            }
        }
        if self.poll_interval_s == 0 {
            problems.push(Problem::new(
                format!("{path}.poll_interval_s"),
                "must be at least 1",
            ));
        }
        if self
            .token_env
            .as_deref()
            .is_some_and(|e| e.trim().is_empty())
        {
            problems.push(Problem::new(
                format!("{path}.token_env"),
                "must name an environment variable (leave it out for no token)",
            ));
        }
        problems
    }
}

/// Which backend runs a model's batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendSetting {
    Local,
    Remote,
}

/// Default for `timeout_ms`: an engine on the plant network answers a small
/// batch in milliseconds; two seconds leaves room for a loaded one without
/// holding the queue long.
pub const DEFAULT_REMOTE_TIMEOUT_MS: u64 = 2000;

/// `[models.drift]`. A PSI against the training distribution only means
/// something over a period that shows the machine's usual range of
/// operation (jobs, speeds, the daily temperature cycle): over a few minutes
/// of one job every input looks drifted. So the window is a time span,
/// sampled evenly, and nothing is judged before it is half full.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// PSI above which a column counts as drifted (0.25: the usual
    /// "significant shift").
    pub threshold: f64,
    /// The span of operation the PSI covers, in seconds of acquisition
    /// time (default one day).
    pub window_s: u64,
    /// Rows kept per machine over that span (one every window_s / samples
    /// seconds).
    pub samples: usize,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            threshold: 0.25,
            window_s: 86_400,
            samples: 1000,
        }
    }
}

fn default_backend() -> String {
    "local".to_string()
}
fn default_device() -> String {
    "cpu".to_string()
}
fn default_threads() -> usize {
    1
}
fn default_max_batch() -> usize {
    64
}
fn default_max_wait_ms() -> u64 {
    0
}
fn default_queue_capacity() -> usize {
    1024
}

/// The device a model runs on, parsed from `device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSetting {
    Cpu,
    Cuda(usize),
}

impl ModelConfig {
    pub fn device_setting(&self) -> Option<DeviceSetting> {
        match self.device.as_str() {
            "cpu" => Some(DeviceSetting::Cpu),
            "cuda" => Some(DeviceSetting::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSetting::Cuda),
        }
    }

    pub fn backend_setting(&self) -> Option<BackendSetting> {
        match self.backend.as_str() {
            "local" => Some(BackendSetting::Local),
            "remote" => Some(BackendSetting::Remote),
            _ => None,
        }
    }

    /// The engine's name of this model.
    pub fn remote_model_name(&self) -> &str {
        self.remote_model.as_deref().unwrap_or(&self.name)
    }

    /// The manifest input name → tag name mapping for `inputs`.
    pub fn tag_for_input<'a>(&'a self, input: &'a str) -> &'a str {
        self.input_tags
            .get(input)
            .map(String::as_str)
            .unwrap_or(input)
    }

    /// Checks that need nothing but this section.
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            problems.push(Problem::new(
                format!("{path}.name"),
                format!(
                    "model name {:?} must be non-empty and use only letters, digits, '_' and '-'",
                    self.name
                ),
            ));
        }
        if self.version.is_empty() {
            problems.push(Problem::new(format!("{path}.version"), "must not be empty"));
        }
        if !(self.drift.threshold.is_finite() && self.drift.threshold > 0.0) {
            problems.push(Problem::new(
                format!("{path}.drift.threshold"),
                "must be a number > 0",
            ));
        }
        if self.drift.window_s == 0 {
            problems.push(Problem::new(
                format!("{path}.drift.window_s"),
                "must be at least 1",
            ));
        }
        if self.drift.samples < 20 {
            problems.push(Problem::new(
                format!("{path}.drift.samples"),
                "must be at least 20 (10 bins need rows to compare)",
            ));
        }
        if let Some(gate) = &self.gate {
            for (key, message) in gate.problems() {
                problems.push(Problem::new(format!("{path}.gate.{key}"), message));
            }
            if gate.metric == GateMetric::Mae && self.label_tag.is_none() {
                problems.push(Problem::new(
                    format!("{path}.gate.metric"),
                    "\"mae\" compares against the measured truth: set the model's label_tag \
                     (or use \"disagreement\")",
                ));
            }
        }
        if let Some(registry) = &self.registry {
            problems.extend(registry.validate(&format!("{path}.registry")));
        }
        if self.machines.is_empty() {
            problems.push(Problem::new(
                format!("{path}.machines"),
                "lists no machine: a model needs at least one machine to feed it",
            ));
        }
        if self.device_setting().is_none() {
            problems.push(Problem::new(
                format!("{path}.device"),
                format!(
                    "unknown device {:?}: use \"cpu\", \"cuda\" or \"cuda:N\"",
                    self.device
                ),
            ));
        }
        for (key, value, min) in [
            ("intra_op_threads", self.intra_op_threads, 1),
            ("max_batch", self.max_batch, 1),
            ("queue_capacity", self.queue_capacity, 1),
        ] {
            if value < min {
                problems.push(Problem::new(
                    format!("{path}.{key}"),
                    format!("must be at least {min}"),
                ));
            }
        }
        if self.max_input_age_ms == Some(0) {
            problems.push(Problem::new(
                format!("{path}.max_input_age_ms"),
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        if self.rate_limit_per_s == Some(0) {
            problems.push(Problem::new(
                format!("{path}.rate_limit_per_s"),
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        match self.backend_setting() {
            Some(BackendSetting::Local) => problems.extend(self.remote_keys_given(path)),
            Some(BackendSetting::Remote) => problems.extend(self.remote_problems(path)),
            None => problems.push(Problem::new(
                format!("{path}.backend"),
                format!(
                    "unknown backend {:?}: use \"local\" or \"remote\"",
                    self.backend
                ),
            )),
        }
        problems
    }

    /// Remote keys on a local model: a forgotten `backend = "remote"`, most
    /// likely, and otherwise silently unused.
    fn remote_keys_given(&self, path: &str) -> Vec<Problem> {
        [
            ("url", self.url.is_some()),
            ("protocol", self.protocol.is_some()),
            ("timeout_ms", self.timeout_ms.is_some()),
            ("token_env", self.token_env.is_some()),
            ("tls_ca", self.tls_ca.is_some()),
            ("tls_cert", self.tls_cert.is_some()),
            ("tls_key", self.tls_key.is_some()),
            ("remote_model", self.remote_model.is_some()),
            ("fallback_version", self.fallback_version.is_some()),
        ]
        .into_iter()
        .filter(|(_, given)| *given)
        .map(|(key, _)| {
            Problem::new(
                format!("{path}.{key}"),
                "applies to backend = \"remote\" only (this model's backend is \"local\")",
            )
        })
        .collect()
    }

    fn remote_problems(&self, path: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let at = |key: &str| format!("{path}.{key}");
        let mut https = false;
        match self.url.as_deref() {
            None => problems.push(Problem::new(
                at("url"),
                "required with backend = \"remote\" (the engine's base URL, e.g. \"http://10.0.0.5:8080\")",
            )),
            Some(text) => match url::Url::parse(text) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                    https = url.scheme() == "https";
                    if url.query().is_some() || url.fragment().is_some() {
                        problems.push(Problem::new(
                            at("url"),
                            "must be the engine's base URL, without query or fragment",
                        ));
                    }
                    if !url.username().is_empty() || url.password().is_some() {
                        problems.push(Problem::new(
                            at("url"),
                            "must not carry credentials: use token_env",
                        ));
                    }
                }
                Ok(_) => problems.push(Problem::new(
                    at("url"),
                    format!("{text:?} is not an http:// or https:// URL"),
                )),
                Err(e) => problems.push(Problem::new(
                    at("url"),
                    format!("{text:?} is not a URL: {e}"),
                )),
            },
        }
        if let Some(protocol) = self.protocol.as_deref() {
            if protocol != ironbridge_models::KSERVE_V2 {
                problems.push(Problem::new(
                    at("protocol"),
                    format!(
                        "unknown protocol {protocol:?}: only \"{}\" (the Open Inference Protocol over HTTP/JSON)",
                        ironbridge_models::KSERVE_V2
                    ),
                ));
            }
        }
        if self.timeout_ms == Some(0) {
            problems.push(Problem::new(at("timeout_ms"), "must be at least 1"));
        }
        if let Some(name) = self.token_env.as_deref() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                problems.push(Problem::new(
                    at("token_env"),
                    format!("{name:?} is not an environment variable name"),
                ));
            } else if std::env::var(name).map_or(true, |v| v.is_empty()) {
                problems.push(Problem::new(
                    at("token_env"),
                    format!("environment variable {name} is not set (or empty)"),
                ));
            }
        }
        for (key, given) in [
            ("tls_ca", self.tls_ca.is_some()),
            ("tls_cert", self.tls_cert.is_some()),
            ("tls_key", self.tls_key.is_some()),
        ] {
            if given && !https {
                problems.push(Problem::new(at(key), "needs an https:// url"));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => problems.push(Problem::new(at("tls_key"), "required with tls_cert")),
            (None, Some(_)) => problems.push(Problem::new(at("tls_cert"), "required with tls_key")),
            _ => {}
        }
        if let Some(name) = self.remote_model.as_deref() {
            // It becomes a URL path segment.
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                || name.starts_with('.')
            {
                problems.push(Problem::new(
                    at("remote_model"),
                    format!(
                        "{name:?} must be non-empty and use only letters, digits, '_', '-' and '.'"
                    ),
                ));
            }
        }
        if let Some(fallback) = self.fallback_version.as_deref() {
            if fallback.is_empty() || fallback == self.version {
                problems.push(Problem::new(
                    at("fallback_version"),
                    "must name another version folder of the model (run in-process while the engine fails)",
                ));
            }
        }
        if self.device != "cpu" {
            problems.push(Problem::new(
                at("device"),
                "applies to backend = \"local\" only (the engine chooses its own device)",
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry_model(registry: &str) -> ModelConfig {
        let text = format!(
            "name = \"m\"\npath = \"m\"\nversion = \"1.0.0\"\nmachines = [\"a\"]\n\
             [registry]\n{registry}"
        );
        toml::from_str(&text).expect("test config parses")
    }

    fn problem_paths(registry: &str) -> Vec<String> {
        registry_model(registry)
            .validate("models[0]")
            .into_iter()
            .map(|p| p.path)
            .collect()
    }

    const GOOD: &str = "kind = \"mlflow\"\nurl = \"http://127.0.0.1:5000\"\n\
                        name = \"bearing-wear\"\nalias = \"champion\"\n";

    #[test]
    fn registry_defaults_are_a_shadow_every_30_s_without_a_token() {
        let config = registry_model(GOOD);
        assert!(config.validate("models[0]").is_empty());
        let registry = config.registry.expect("registry read");
        assert_eq!(registry.poll_interval_s, 30);
        assert_eq!(registry.on_new, OnNewVersion::Shadow);
        assert_eq!(registry.token_env, None);
    }

    #[test]
    fn registry_on_new_takes_the_three_words() {
        for (word, expected) in [
            ("shadow", OnNewVersion::Shadow),
            ("activate", OnNewVersion::Activate),
            ("none", OnNewVersion::None),
        ] {
            let config = registry_model(&format!("{GOOD}on_new = {word:?}\n"));
            assert_eq!(config.registry.map(|r| r.on_new), Some(expected));
        }
        let text = format!(
            "name = \"m\"\npath = \"m\"\nversion = \"1\"\nmachines = [\"a\"]\n\
             [registry]\n{GOOD}on_new = \"promote\"\n"
        );
        assert!(toml::from_str::<ModelConfig>(&text).is_err());
    }

    #[test]
    fn registry_problems_name_their_keys() {
        let bad = "kind = \"sagemaker\"\nurl = \"\"\nname = \" \"\nalias = \"\"\n\
                   poll_interval_s = 0\ntoken_env = \"\"\n";
        assert_eq!(
            problem_paths(bad),
            [
                "models[0].registry.kind",
                "models[0].registry.url",
                "models[0].registry.name",
                "models[0].registry.alias",
                "models[0].registry.poll_interval_s",
                "models[0].registry.token_env",
            ]
        );
        let no_scheme = GOOD.replace("http://", "");
        assert_eq!(problem_paths(&no_scheme), ["models[0].registry.url"]);
    }

    #[test]
    fn registry_refuses_unknown_keys() {
        let text = format!(
            "name = \"m\"\npath = \"m\"\nversion = \"1\"\nmachines = [\"a\"]\n\
             [registry]\n{GOOD}stage = \"Production\"\n"
        );
        assert!(toml::from_str::<ModelConfig>(&text).is_err());
    }

    fn model(extra: &str) -> ModelConfig {
        let text = format!(
            "name = \"bearing-wear\"\npath = \"m\"\nversion = \"1.0.0\"\nmachines = [\"pump-1\"]\n{extra}"
        );
        match toml::from_str(&text) {
            Ok(model) => model,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    fn problems(extra: &str) -> Vec<String> {
        model(extra)
            .validate("models[0]")
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn a_local_model_needs_no_remote_keys() {
        let m = model("");
        assert_eq!(m.backend_setting(), Some(BackendSetting::Local));
        assert!(problems("").is_empty());
    }

    #[test]
    fn a_remote_model_with_its_keys_is_valid() {
        let m = model(
            "backend = \"remote\"\nurl = \"http://127.0.0.1:8080\"\nprotocol = \"kserve-v2\"\ntimeout_ms = 500\nremote_model = \"bw\"",
        );
        assert_eq!(m.backend_setting(), Some(BackendSetting::Remote));
        assert_eq!(m.remote_model_name(), "bw");
        assert!(m.validate("models[0]").is_empty());
        assert_eq!(
            model("backend = \"remote\"\nurl = \"https://engine:8443/\"").remote_model_name(),
            "bearing-wear"
        );
    }

    #[test]
    fn remote_keys_are_checked() {
        let all = |extra: &str| problems(extra).join("\n");
        let p = all("backend = \"remote\"");
        assert!(p.contains("models[0].url") && p.contains("required"), "{p}");
        let p = all("backend = \"remote\"\nurl = \"ftp://x\"");
        assert!(p.contains("not an http:// or https:// URL"), "{p}");
        let p = all("backend = \"remote\"\nurl = \"http://x\"\ntimeout_ms = 0");
        assert!(p.contains("models[0].timeout_ms"), "{p}");
        let p = all("backend = \"remote\"\nurl = \"http://x\"\nprotocol = \"grpc\"");
        assert!(
            p.contains("models[0].protocol") && p.contains("unknown protocol"),
            "{p}"
        );
        let p = all("backend = \"remote\"\nurl = \"http://x\"\ntls_ca = \"ca.pem\"");
        assert!(p.contains("models[0].tls_ca") && p.contains("https"), "{p}");
        let p = all("backend = \"remote\"\nurl = \"https://x\"\ntls_cert = \"c.pem\"");
        assert!(
            p.contains("models[0].tls_key") && p.contains("required"),
            "{p}"
        );
        let p = all("backend = \"remote\"\nurl = \"http://x\"\ntoken_env = \"IRONBRIDGE_TEST_UNSET_TOKEN_VAR\"");
        assert!(
            p.contains("models[0].token_env") && p.contains("not set"),
            "{p}"
        );
        let p = all("backend = \"remote\"\nurl = \"http://x\"\nfallback_version = \"1.0.0\"");
        assert!(p.contains("models[0].fallback_version"), "{p}");
        assert!(
            all("backend = \"remote\"\nurl = \"http://x\"\nfallback_version = \"0.9.0\"")
                .is_empty()
        );
        let p = all("backend = \"remote\"\nurl = \"http://x\"\nremote_model = \"a/b\"");
        assert!(p.contains("models[0].remote_model"), "{p}");
        let p = all("backend = \"grpc\"");
        assert!(
            p.contains("models[0].backend") && p.contains("unknown backend"),
            "{p}"
        );
    }

    #[test]
    fn remote_keys_on_a_local_model_are_refused() {
        let p = problems("url = \"http://x\"\ntimeout_ms = 100");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p.iter().all(|p| p.contains("backend = \"remote\" only")),
            "{p:?}"
        );
        assert!(p[0].contains("models[0].url"), "{p:?}");
    }
}
