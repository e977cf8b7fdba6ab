//! Where a batch of lines goes: the [`LineWriter`] seam and its production
//! implementation for the InfluxDB v2 and 1.x write APIs.

use std::future::Future;
use std::time::Duration;

use super::batch::BatchBody;
use super::config::{InfluxApi, InfluxSinkConfig};
use crate::error::ConnectorError;

/// Why a batch was not written, and so what the sink does with it (the
/// stated action for every server answer, README.md "Delivery").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// Might succeed later (server unreachable, timed out, 408, 5xx, 429 or
    /// 503 without Retry-After): the sink keeps the batch and retries it
    /// with backoff.
    Retryable(String),
    /// 429 or 503 with a Retry-After: kept, retried no sooner than that.
    Throttled {
        reason: String,
        retry_after: Duration,
    },
    /// 401 or 403: kept and retried with backoff (credentials get fixed;
    /// the data must not be lost meanwhile), raised as an alarm.
    Unauthorized(String),
    /// 400 or 422: some line is refused. The sink splits the batch until the
    /// refused line is alone, and puts that one in the dead-letter file.
    BadLines(String),
    /// 413: the body is too large. The sink splits the batch; a single line
    /// too large for the server goes to the dead-letter file.
    TooLarge(String),
    /// Will never succeed (unknown database or bucket, other 4xx): the sink
    /// drops the batch, counts it and carries on, since retrying it forever
    /// would block everything behind it.
    Rejected(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Retryable(reason) => write!(f, "retryable: {reason}"),
            WriteError::Throttled {
                reason,
                retry_after,
            } => write!(f, "throttled for {retry_after:?}: {reason}"),
            WriteError::Unauthorized(reason) => write!(f, "unauthorized: {reason}"),
            WriteError::BadLines(reason) => write!(f, "refused lines: {reason}"),
            WriteError::TooLarge(reason) => write!(f, "too large: {reason}"),
            WriteError::Rejected(reason) => write!(f, "rejected: {reason}"),
        }
    }
}

/// Writes one batch: newline-separated line protocol, nanosecond timestamps.
///
/// The seam between the sink (its outage buffer, batching and the action
/// for each answer) and the server; tests plug their own writers in here.
pub trait LineWriter: Send + Sync + 'static {
    fn write(&self, body: BatchBody) -> impl Future<Output = Result<(), WriteError>> + Send;
}

/// How requests authenticate.
#[derive(Clone)]
enum Auth {
    None,
    /// v2: `Authorization: Token <token>`.
    Token(String),
    /// v1: HTTP basic authentication (never the `u=` and `p=` query
    /// parameters, which end up in proxy and server logs).
    Basic {
        user: String,
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret itself.
        f.write_str(match self {
            Auth::None => "None",
            Auth::Token(_) => "Token(..)",
            Auth::Basic { .. } => "Basic(..)",
        })
    }
}

/// Writes batches over HTTP to either write API (`[influx] api`):
/// `POST <url>/api/v2/write?org=…&bucket=…&precision=ns` with a token, or
/// `POST <url>/write?db=…[&rp=…]&precision=ns` with a user. The body is
/// gzip-compressed as [`InfluxSinkConfig::gzips_bodies`] says.
///
/// Our own client (reqwest, which influxdb2 used underneath) rather than the
/// influxdb2 crate: its write call returns only status and text, and the
/// sink needs the Retry-After header and to choose the body's encoding.
#[derive(Debug, Clone)]
pub struct InfluxWriter {
    http: reqwest_influx::Client,
    write_url: reqwest_influx::Url,
    auth: Auth,
    gzip: bool,
    request_timeout: Duration,
}

impl InfluxWriter {
    /// Reads the token (`token_env`, v2) or password (`password_env`, v1)
    /// from the environment. Call after [`InfluxSinkConfig::validate`]
    /// reported no problem.
    pub fn new(config: &InfluxSinkConfig) -> Result<Self, ConnectorError> {
        let secret = |name: &str, key: &str| {
            std::env::var(name)
                .map_err(|e| ConnectorError::Config(format!("InfluxDB {key} variable {name}: {e}")))
        };
        let base = reqwest_influx::Url::parse(&config.url)
            .map_err(|e| ConnectorError::Config(format!("InfluxDB url {:?}: {e}", config.url)))?;
        let mut write_url = base
            .join(config.api.write_path())
            .map_err(|e| ConnectorError::Config(format!("InfluxDB url {:?}: {e}", config.url)))?;
        let auth = match config.api {
            InfluxApi::V2 => {
                write_url
                    .query_pairs_mut()
                    .append_pair("org", &config.org)
                    .append_pair("bucket", &config.bucket)
                    .append_pair("precision", "ns");
                match config.token_env.as_deref() {
                    None | Some("") => Auth::None,
                    Some(name) => match secret(name, "token_env")? {
                        token if token.is_empty() => Auth::None,
                        token => Auth::Token(token),
                    },
                }
            }
            InfluxApi::V1 => {
                let database = config.database.as_deref().ok_or_else(|| {
                    ConnectorError::Config("InfluxDB 1.x needs a database (database)".into())
                })?;
                {
                    let mut query = write_url.query_pairs_mut();
                    query.append_pair("db", database);
                    if let Some(rp) = &config.retention_policy {
                        query.append_pair("rp", rp);
                    }
                    query.append_pair("precision", "ns");
                }
                match (&config.username, config.password_env.as_deref()) {
                    (Some(user), Some(name)) => Auth::Basic {
                        user: user.clone(),
                        password: secret(name, "password_env")?,
                    },
                    _ => Auth::None,
                }
            }
        };
        let http = reqwest_influx::Client::builder()
            .build()
            .map_err(|e| ConnectorError::Config(format!("InfluxDB client: {e}")))?;
        Ok(Self {
            http,
            write_url,
            auth,
            gzip: config.gzips_bodies(),
            request_timeout: config.request_timeout(),
        })
    }

    /// The URL batches are posted to (without credentials, which never sit
    /// in it).
    pub fn write_url(&self) -> &str {
        self.write_url.as_str()
    }

    /// Whether it gzips the bodies it posts.
    pub fn gzips(&self) -> bool {
        self.gzip
    }
}

impl LineWriter for InfluxWriter {
    async fn write(&self, body: BatchBody) -> Result<(), WriteError> {
        let mut request = self
            .http
            .post(self.write_url.clone())
            .header("Content-Type", "text/plain; charset=utf-8");
        request = if self.gzip {
            match gzip(body.as_bytes()) {
                Ok(compressed) => request.header("Content-Encoding", "gzip").body(compressed),
                // Compressing into memory cannot fail short of allocation;
                // sending plain is still correct.
                Err(_) => request.body(body.into_bytes()),
            }
        } else {
            request.body(body.into_bytes())
        };
        request = match &self.auth {
            Auth::None => request,
            Auth::Token(token) => request.header("Authorization", format!("Token {token}")),
            Auth::Basic { user, password } => request.basic_auth(user, Some(password)),
        };
        let send = async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("Retry-After")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            // The reason is in the JSON body ({"error": "..."} in 1.x,
            // {"code": ..., "message": ...} in 2.x).
            let text = response.text().await.unwrap_or_default();
            Ok::<_, reqwest_influx::Error>((status, retry_after, text))
        };
        match tokio::time::timeout(self.request_timeout, send).await {
            Err(_) => Err(WriteError::Retryable(format!(
                "no answer within {:?}",
                self.request_timeout
            ))),
            Ok(Err(e)) => Err(WriteError::Retryable(format!("request failed: {e}"))),
            Ok(Ok((code, _, _))) if (200..300).contains(&code) => Ok(()),
            Ok(Ok((code, retry_after, text))) => Err(classify_status(code, retry_after, &text)),
        }
    }
}

/// The request body as the writer sends it when it compresses.
pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    // Level 2 of zlib-rs: on the example pump's lines about the size of
    // miniz_oxide's level 1 (zlib-rs's level 1 sends 40 % more), on 62 f32
    // registers a body 2.4x smaller, compressed 1.7x faster, than
    // miniz_oxide's level 1; a fraction of the CPU of the default level
    // (BENCHMARKS.md §16).
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::new(2),
    );
    encoder.write_all(body)?;
    encoder.finish()
}

/// Retry-After in seconds (`120`); the HTTP-date form is taken as "now"
/// when it is in the past, and ignored when it cannot be read.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// The stated action for each status (see [`WriteError`]).
fn classify_status(code: u16, retry_after: Option<Duration>, text: &str) -> WriteError {
    let reason = format!("HTTP {code}: {}", text.trim());
    match (code, retry_after) {
        (429 | 503, Some(retry_after)) => WriteError::Throttled {
            reason,
            retry_after,
        },
        (401 | 403, _) => WriteError::Unauthorized(reason),
        (400 | 422, _) => WriteError::BadLines(reason),
        (413, _) => WriteError::TooLarge(reason),
        (408 | 429, _) | (500..=599, _) => WriteError::Retryable(reason),
        _ => WriteError::Rejected(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_its_action() {
        let after = Some(Duration::from_secs(3));
        assert!(matches!(
            classify_status(503, after, ""),
            WriteError::Throttled { retry_after, .. } if retry_after == Duration::from_secs(3)
        ));
        assert!(matches!(
            classify_status(429, after, ""),
            WriteError::Throttled { .. }
        ));
        assert!(matches!(
            classify_status(429, None, ""),
            WriteError::Retryable(_)
        ));
        assert!(matches!(
            classify_status(503, None, ""),
            WriteError::Retryable(_)
        ));
        assert!(matches!(
            classify_status(500, after, ""),
            WriteError::Retryable(_)
        ));
        assert!(matches!(
            classify_status(408, None, ""),
            WriteError::Retryable(_)
        ));
        assert!(matches!(
            classify_status(401, None, ""),
            WriteError::Unauthorized(_)
        ));
        assert!(matches!(
            classify_status(403, None, ""),
            WriteError::Unauthorized(_)
        ));
        assert!(matches!(
            classify_status(400, None, ""),
            WriteError::BadLines(_)
        ));
        assert!(matches!(
            classify_status(422, None, ""),
            WriteError::BadLines(_)
        ));
        assert!(matches!(
            classify_status(413, None, ""),
            WriteError::TooLarge(_)
        ));
        assert!(
            matches!(classify_status(404, None, "db"), WriteError::Rejected(r) if r.contains("db"))
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let later =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
        let parsed = parse_retry_after(&later).unwrap_or_default();
        assert!(parsed > Duration::from_secs(3500), "{parsed:?}");
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let body = "process,machine=m x=1i 1\n".repeat(100);
        let compressed = gzip(body.as_bytes()).unwrap();
        assert!(compressed.len() < body.len() / 10);
        let mut back = String::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, body);
    }
}
