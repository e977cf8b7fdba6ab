//! Where a batch of lines goes: the [`LineWriter`] seam and its production
//! implementations for the InfluxDB v2 and 1.x write APIs.

use std::future::Future;
use std::time::Duration;

use influxdb2::RequestError;

use super::config::{InfluxApi, InfluxSinkConfig};
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

/// Writes through the InfluxDB 1.x API: `POST <url>/write?db=…[&rp=…]&precision=ns`,
/// with HTTP basic authentication when a user is configured (never the `u=`
/// and `p=` query parameters, which end up in proxy and server logs).
#[derive(Debug, Clone)]
pub struct InfluxV1Writer {
    http: reqwest_influx::Client,
    write_url: reqwest_influx::Url,
    credentials: Option<(String, String)>,
    request_timeout: Duration,
}

impl InfluxV1Writer {
    /// Reads the password from the environment variable named by
    /// `password_env`. Call after [`InfluxSinkConfig::validate`] reported no
    /// problem.
    pub fn new(config: &InfluxSinkConfig) -> Result<Self, ConnectorError> {
        let database = config.database.as_deref().ok_or_else(|| {
            ConnectorError::Config("InfluxDB 1.x needs a database (database)".into())
        })?;
        let credentials = match (&config.username, config.password_env.as_deref()) {
            (Some(user), Some(name)) => {
                let password = std::env::var(name).map_err(|e| {
                    ConnectorError::Config(format!(
                        "InfluxDB password variable {name} (password_env): {e}"
                    ))
                })?;
                Some((user.clone(), password))
            }
            _ => None,
        };
        let mut write_url = reqwest_influx::Url::parse(&config.url)
            .and_then(|base| base.join("/write"))
            .map_err(|e| ConnectorError::Config(format!("InfluxDB url {:?}: {e}", config.url)))?;
        {
            let mut query = write_url.query_pairs_mut();
            query.append_pair("db", database);
            if let Some(rp) = &config.retention_policy {
                query.append_pair("rp", rp);
            }
            query.append_pair("precision", "ns");
        }
        let http = reqwest_influx::Client::builder()
            .build()
            .map_err(|e| ConnectorError::Config(format!("InfluxDB client: {e}")))?;
        Ok(Self {
            http,
            write_url,
            credentials,
            request_timeout: config.request_timeout(),
        })
    }
}

impl LineWriter for InfluxV1Writer {
    async fn write(&self, body: String) -> Result<(), WriteError> {
        let mut request = self
            .http
            .post(self.write_url.clone())
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body);
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        let send = async {
            let response = request.send().await?;
            let status = response.status();
            // The reason is in the JSON body ({"error": "..."}) and in the
            // X-Influxdb-Error header; the body is enough for the log.
            let text = response.text().await.unwrap_or_default();
            Ok::<_, reqwest_influx::Error>((status.as_u16(), text))
        };
        match tokio::time::timeout(self.request_timeout, send).await {
            Err(_) => Err(WriteError::Retryable(format!(
                "no answer within {:?}",
                self.request_timeout
            ))),
            Ok(Err(e)) => Err(WriteError::Retryable(format!("request failed: {e}"))),
            Ok(Ok((code, _))) if (200..300).contains(&code) => Ok(()),
            Ok(Ok((code, text))) => Err(classify_status(code, &text)),
        }
    }
}

/// The writer a configuration asks for (`api`).
#[derive(Debug, Clone)]
pub enum InfluxWriter {
    V2(InfluxV2Writer),
    V1(InfluxV1Writer),
}

impl InfluxWriter {
    /// Reads the token or password from the environment. Call after
    /// [`InfluxSinkConfig::validate`] reported no problem.
    pub fn new(config: &InfluxSinkConfig) -> Result<Self, ConnectorError> {
        Ok(match config.api {
            InfluxApi::V2 => InfluxWriter::V2(InfluxV2Writer::new(config)?),
            InfluxApi::V1 => InfluxWriter::V1(InfluxV1Writer::new(config)?),
        })
    }
}

impl LineWriter for InfluxWriter {
    async fn write(&self, body: String) -> Result<(), WriteError> {
        match self {
            InfluxWriter::V2(writer) => writer.write(body).await,
            InfluxWriter::V1(writer) => writer.write(body).await,
        }
    }
}

/// 408, 429 and 5xx are retryable; any other status will not get better by
/// retrying (both APIs answer a success with 204).
fn classify_status(code: u16, text: &str) -> WriteError {
    let reason = format!("HTTP {code}: {}", text.trim());
    if code == 408 || code == 429 || (500..600).contains(&code) {
        WriteError::Retryable(reason)
    } else {
        WriteError::Rejected(reason)
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
        RequestError::Http { status, text } => classify_status(status.as_u16(), &text),
        other => WriteError::Rejected(other.to_string()),
    }
}
