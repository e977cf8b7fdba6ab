//! Where a batch of lines goes: the [`LineWriter`] seam and its production
//! implementation for the InfluxDB v2 write API.

use std::future::Future;
use std::time::Duration;

use influxdb2::RequestError;

use super::config::InfluxSinkConfig;
use crate::error::ConnectorError;

/// Why a batch was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// Might succeed later (server unreachable, timed out, overloaded, 5xx,
    /// 429): the sink keeps the batch and retries it.
    Retryable(String),
    /// Will never succeed (malformed data, unknown bucket, bad credentials):
    /// the sink drops the batch, counts it and carries on, since retrying it
    /// forever would block everything behind it.
    Rejected(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Retryable(reason) => write!(f, "retryable: {reason}"),
            WriteError::Rejected(reason) => write!(f, "rejected: {reason}"),
        }
    }
}

/// Writes one batch: newline-separated line protocol, nanosecond timestamps.
///
/// This is the seam behind the sink's in-memory buffer. A durable disk spool
/// (a later issue) plugs in here: a writer that appends batches to disk and
/// forwards them to the inner writer, so data survives a restart of the
/// gateway during a long outage.
pub trait LineWriter: Send + Sync + 'static {
    fn write(&self, body: String) -> impl Future<Output = Result<(), WriteError>> + Send;
}

/// Writes through `influxdb2::Client::write_line_protocol` (`POST
/// /api/v2/write`), which InfluxDB 2 and VictoriaMetrics answer.
#[derive(Debug, Clone)]
pub struct InfluxV2Writer {
    client: influxdb2::Client,
    org: String,
    bucket: String,
    request_timeout: Duration,
}

impl InfluxV2Writer {
    /// Reads the token from the environment variable named by `token_env`.
    /// Call after [`InfluxSinkConfig::validate`] reported no problem.
    pub fn new(config: &InfluxSinkConfig) -> Result<Self, ConnectorError> {
        let token = match config.token_env.as_deref() {
            None | Some("") => String::new(),
            Some(name) => std::env::var(name).map_err(|e| {
                ConnectorError::Config(format!("InfluxDB token variable {name} (token_env): {e}"))
            })?,
        };
        // influxdb2 panics on a URL it cannot parse: check it first.
        url::Url::parse(&config.url)
            .map_err(|e| ConnectorError::Config(format!("InfluxDB url {:?}: {e}", config.url)))?;
        let client = influxdb2::ClientBuilder::new(&config.url, &config.org, token)
            .build()
            .map_err(|e| ConnectorError::Config(format!("InfluxDB client: {e}")))?;
        Ok(Self {
            client,
            org: config.org.clone(),
            bucket: config.bucket.clone(),
            request_timeout: config.request_timeout(),
        })
    }
}

impl LineWriter for InfluxV2Writer {
    async fn write(&self, body: String) -> Result<(), WriteError> {
        let request = self
            .client
            .write_line_protocol(&self.org, &self.bucket, body);
        match tokio::time::timeout(self.request_timeout, request).await {
            Err(_) => Err(WriteError::Retryable(format!(
                "no answer within {:?}",
                self.request_timeout
            ))),
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(classify(e)),
        }
    }
}

/// Connection failures, 408, 429 and 5xx are retryable; any other answer
/// (4xx, or a success code other than the 204 InfluxDB sends, which means
/// something else answers) will not get better by retrying.
fn classify(error: RequestError) -> WriteError {
    match error {
        RequestError::ReqwestProcessing { source } => {
            WriteError::Retryable(format!("request failed: {source}"))
        }
        RequestError::Http { status, text } => {
            let code = status.as_u16();
            let reason = format!("HTTP {status}: {}", text.trim());
            if code == 408 || code == 429 || (500..600).contains(&code) {
                WriteError::Retryable(reason)
            } else {
                WriteError::Rejected(reason)
            }
        }
        other => WriteError::Rejected(other.to_string()),
    }
}
