//! A small client of the MLflow Model Registry's REST API: which version an
//! alias points to, and the artifacts of a version, by name and version
//! (`/model-versions/get-artifact`, which works for every artifact store
//! the server reads, not only proxied `mlflow-artifacts:` ones).
//!
//! Only what the gateway needs of MLflow: the contract is that a version's
//! artifact folder holds IronBridge's `manifest.toml` and the TorchScript
//! file it names (docs/model-lifecycle.md, "From an MLflow registry").

use std::time::Duration;

// The workspace's one HTTP client (the InfluxDB writer's), under its
// workspace name.
use reqwest_influx as reqwest;
use serde::Deserialize;

use crate::GatewayError;

/// A connection that does not open in this time is a failed sync (retried
/// with backoff), not a hung one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A bound on one request, model downloads included: a stalled transfer
/// ends and is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Artifacts larger than this are refused rather than buffered: an edge
/// box has little memory, and a TorchScript model for a machine is far
/// smaller.
pub const MAX_ARTIFACT_BYTES: usize = 1 << 30;
/// The alias lookup's JSON is a few hundred bytes; more is not MLflow.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Registry error bodies quoted in an error message are cut to this.
const MAX_QUOTED_BODY: usize = 300;

/// One model version as the registry describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RegistryVersion {
    pub name: String,
    /// The registry's version number ("1", "2", ...), not the manifest's.
    pub version: String,
    /// Where its artifacts are (e.g. `mlflow-artifacts:/0/<run>/artifacts/ironbridge`).
    #[serde(default)]
    pub source: String,
    /// `READY` once its artifacts are registered; `PENDING_REGISTRATION`
    /// or `FAILED_REGISTRATION` otherwise.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub run_id: Option<String>,
}

impl RegistryVersion {
    /// Its artifacts may be read.
    pub fn is_ready(&self) -> bool {
        self.status == "READY"
    }
}

/// MLflow's error body (`{"error_code": ..., "message": ...}`).
#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    error_code: String,
    #[serde(default)]
    message: String,
}

/// MLflow 3 answers an unknown model with 404 RESOURCE_DOES_NOT_EXIST but
/// an unknown alias of a known model with 400 INVALID_PARAMETER_VALUE
/// ("Registered model alias ... not found."): both mean "nothing there".
fn names_nothing(status: reqwest::StatusCode, body: &[u8]) -> bool {
    if status == reqwest::StatusCode::NOT_FOUND {
        return true;
    }
    serde_json::from_slice::<ErrorAnswer>(body).is_ok_and(|e| {
        e.error_code == "RESOURCE_DOES_NOT_EXIST"
            || (e.error_code == "INVALID_PARAMETER_VALUE"
                && e.message.contains("alias")
                && e.message.contains("not found"))
    })
}

#[derive(Deserialize)]
struct AliasAnswer {
    model_version: RegistryVersion,
}

/// The MLflow server at one URL, with an optional bearer token.
#[derive(Clone)]
pub struct MlflowClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl std::fmt::Debug for MlflowClient {
    // Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl MlflowClient {
    pub fn new(url: &str, token: Option<String>) -> Result<Self, GatewayError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("ironbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GatewayError::Registry {
                url: url.to_string(),
                message: format!("cannot make an HTTP client: {e}"),
            })?;
        Ok(Self {
            http,
            base: url.trim().trim_end_matches('/').to_string(),
            token,
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// The version `alias` of registered model `name` points to.
    /// [`GatewayError::RegistryAliasUnknown`] when the model or the alias
    /// does not exist (MLflow answers 404).
    pub async fn version_by_alias(
        &self,
        name: &str,
        alias: &str,
    ) -> Result<RegistryVersion, GatewayError> {
        let url = format!("{}/api/2.0/mlflow/registered-models/alias", self.base);
        let response = self
            .get(&url)
            .query(&[("name", name), ("alias", alias)])
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let body = self.body(response, MAX_ANSWER_BYTES).await?;
        if !status.is_success() {
            if names_nothing(status, &body) {
                return Err(GatewayError::RegistryAliasUnknown {
                    url: self.base.clone(),
                    name: name.to_string(),
                    alias: alias.to_string(),
                });
            }
            return Err(self.answered(status, &body));
        }
        let answer: AliasAnswer =
            serde_json::from_slice(&body).map_err(|e| GatewayError::Registry {
                url: self.base.clone(),
                message: format!("unexpected answer to the alias lookup: {e}"),
            })?;
        Ok(answer.model_version)
    }

    /// The artifact at `path` (relative to the version's source folder) of
    /// version `version` of registered model `name`;
    /// [`GatewayError::RegistryArtifactMissing`] when there is none (MLflow
    /// answers 404 for a missing file or version).
    pub async fn artifact(
        &self,
        name: &str,
        version: &str,
        path: &str,
    ) -> Result<Vec<u8>, GatewayError> {
        let url = format!("{}/model-versions/get-artifact", self.base);
        let response = self
            .get(&url)
            .query(&[("path", path), ("name", name), ("version", version)])
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let body = self.body(response, MAX_ARTIFACT_BYTES).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(GatewayError::RegistryArtifactMissing {
                name: name.to_string(),
                registry_version: version.to_string(),
                path: path.to_string(),
            });
        }
        if !status.is_success() {
            let mut error = self.answered(status, &body);
            if let GatewayError::Registry { message, .. } = &mut error {
                *message = format!("artifact {path} of {name} version {version}: {message}");
            }
            return Err(error);
        }
        Ok(body)
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.get(url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Reads a body up to `limit` bytes; a larger one is refused.
    async fn body(
        &self,
        mut response: reqwest::Response,
        limit: usize,
    ) -> Result<Vec<u8>, GatewayError> {
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(self.too_large(limit));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.unreachable(&e))? {
            if body.len() + chunk.len() > limit {
                return Err(self.too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn too_large(&self, limit: usize) -> GatewayError {
        GatewayError::Registry {
            url: self.base.clone(),
            message: format!("an answer is larger than {limit} bytes; refused"),
        }
    }

    fn unreachable(&self, error: &reqwest::Error) -> GatewayError {
        // The source chain says why (refused, timed out, TLS...).
        let mut message = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        GatewayError::Registry {
            url: self.base.clone(),
            message,
        }
    }

    fn answered(&self, status: reqwest::StatusCode, body: &[u8]) -> GatewayError {
        let text = String::from_utf8_lossy(body);
        let quoted: String = text.chars().take(MAX_QUOTED_BODY).collect();
        GatewayError::Registry {
            url: self.base.clone(),
            message: format!("answered {status}: {}", quoted.trim()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_model_or_alias_reads_as_nothing_there() {
        let bad_request = reqwest::StatusCode::BAD_REQUEST;
        // What MLflow 3.17 answers.
        assert!(names_nothing(
            bad_request,
            br#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "Registered model alias nope not found."}"#
        ));
        assert!(names_nothing(
            reqwest::StatusCode::NOT_FOUND,
            br#"{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Registered Model with name=x not found"}"#
        ));
        assert!(!names_nothing(
            bad_request,
            br#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "Missing value for required parameter 'name'."}"#
        ));
        assert!(!names_nothing(bad_request, b"<html>proxy error</html>"));
    }

    #[test]
    fn the_alias_answer_is_read_as_mlflow_3_writes_it() {
        let answer = br#"{"model_version": {"name": "bearing-wear", "version": "1",
            "source": "mlflow-artifacts:/1/abc/artifacts/ironbridge", "run_id": "abc",
            "status": "READY", "tags": [{"key": "k", "value": "v"}], "aliases": ["champion"]}}"#;
        let parsed: AliasAnswer = serde_json::from_slice(answer).expect("parses");
        assert_eq!(parsed.model_version.version, "1");
        assert!(parsed.model_version.is_ready());
        assert_eq!(parsed.model_version.run_id.as_deref(), Some("abc"));
    }
}
