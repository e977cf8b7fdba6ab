//! Remote inference: a batch sent to a serving engine (MLServer, KServe,
//! Triton...) over the Open Inference Protocol ("KServe v2") on HTTP/JSON,
//! instead of run in-process by libtorch (docs/remote-inference.md).
//!
//! One batch is one request, `POST {url}/v2/models/{model}/infer`, whose one
//! input tensor `input-0` is `[rows, n_inputs]` FP32, row-major; the
//! answer's `outputs[0]` must be `[rows, n_outputs]` FP32. Anything else is
//! an error that names what differed.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use ironbridge_connectors::{Backoff, BackoffConfig};
use reqwest_influx as reqwest;
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::manifest::ModelManifest;
use crate::registry::{ModelVersion, VerifiedModel};
use crate::torch_backend::TorchModel;

/// The only protocol so far: the Open Inference Protocol over HTTP/JSON.
pub const KSERVE_V2: &str = "kserve-v2";

/// The name of the one input tensor of a request.
const INPUT_TENSOR: &str = "input-0";

/// Retries after the engine failed: first after 500 ms, at most every 30 s.
pub const REMOTE_BACKOFF: BackoffConfig = BackoffConfig {
    initial_ms: 500,
    max_ms: 30_000,
};

/// Where and how to reach the engine that serves a model version.
#[derive(Clone)]
pub struct RemoteOptions {
    /// The engine's base URL (`http://host:port` or `https://...`).
    pub url: String,
    /// The model's name on the engine.
    pub remote_model: String,
    /// Longest a request (connect, send, answer) may take.
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// PEM CA certificate(s) trusted for the engine, beside the system's.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub backoff: BackoffConfig,
    /// A version folder beside the served one, run in-process by libtorch
    /// while the engine fails; its predictions carry its own version.
    pub fallback_version: Option<String>,
}

// By hand: the token must never reach a log line.
impl fmt::Debug for RemoteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteOptions")
            .field("url", &self.url)
            .field("remote_model", &self.remote_model)
            .field("timeout", &self.timeout)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("fallback_version", &self.fallback_version)
            .finish_non_exhaustive()
    }
}

/// An HTTP/JSON client of one model on an Open Inference Protocol engine.
/// Async: it runs on the inference worker's own current-thread runtime.
#[derive(Debug, Clone)]
pub struct KserveV2Client {
    http: reqwest::Client,
    infer_url: String,
    ready_url: String,
    token: Option<String>,
}

impl KserveV2Client {
    /// Builds the client (reads the TLS files); `model` names the gateway's
    /// model in errors.
    pub fn new(model: &str, options: &RemoteOptions) -> Result<Self, ModelError> {
        let setup = |message: String| ModelError::RemoteSetup {
            model: model.to_owned(),
            message,
        };
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })
        };
        let mut builder = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            // The connection's task runs only while the worker waits on a
            // request, so a connection the engine closed while idle can
            // look alive at checkout; dropping idle ones before common
            // server keep-alive timeouts (uvicorn's: 5 s) avoids that race.
            .pool_idle_timeout(Duration::from_secs(3));
        if let Some(ca) = &options.tls_ca {
            let pem = read(ca)?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| setup(format!("tls_ca {}: {e}", ca.display())))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        match (&options.tls_cert, &options.tls_key) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    setup(format!(
                        "tls_cert {} / tls_key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => return Err(setup("tls_cert and tls_key go together".to_owned())),
        }
        let http = builder.build().map_err(|e| setup(e.to_string()))?;
        let base = format!(
            "{}/v2/models/{}",
            options.url.trim_end_matches('/'),
            options.remote_model
        );
        Ok(Self {
            http,
            infer_url: format!("{base}/infer"),
            ready_url: format!("{base}/ready"),
            token: options.token.clone(),
        })
    }

    pub fn infer_url(&self) -> &str {
        &self.infer_url
    }

    fn with_token(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `GET .../ready`: Ok when the engine answers 200.
    pub async fn ready(&self) -> Result<(), String> {
        let response = self
            .with_token(self.http.get(&self.ready_url))
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "{} answered {status} (model not ready)",
                self.ready_url
            ))
        }
    }

    /// Runs `n_rows` row-major rows of `n_inputs` values; returns `n_rows x
    /// n_outputs` values, row-major.
    pub async fn infer(
        &self,
        rows: &[f32],
        n_rows: usize,
        n_inputs: usize,
        n_outputs: usize,
    ) -> Result<Vec<f32>, String> {
        let body = serde_json::to_vec(&InferRequest {
            inputs: [RequestTensor {
                name: INPUT_TENSOR,
                shape: [n_rows, n_inputs],
                datatype: "FP32",
                data: rows,
            }],
        })
        .map_err(|e| format!("cannot encode the request: {e}"))?;
        let response = self
            .with_token(self.http.post(&self.infer_url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| transport_error(&e))?;
        if !status.is_success() {
            return Err(format!(
                "{} answered {status}: {}",
                self.infer_url,
                excerpt(&body)
            ));
        }
        parse_infer_response(&body, n_rows, n_outputs)
    }
}

/// The reason of a failed request without reqwest's nested wording.
fn transport_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut message = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    message
}

/// The start of an error body, on one line (engines answer with whole
/// Python tracebacks).
fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 300;
    let text = String::from_utf8_lossy(body);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > MAX {
        format!("{}...", line.chars().take(MAX).collect::<String>())
    } else {
        line
    }
}

#[derive(Serialize)]
struct InferRequest<'a> {
    inputs: [RequestTensor<'a>; 1],
}

#[derive(Serialize)]
struct RequestTensor<'a> {
    name: &'static str,
    shape: [usize; 2],
    datatype: &'static str,
    data: &'a [f32],
}

#[derive(Deserialize)]
struct InferResponse {
    #[serde(default)]
    outputs: Vec<ResponseTensor>,
}

#[derive(Deserialize)]
struct ResponseTensor {
    #[serde(default)]
    name: String,
    shape: Vec<i64>,
    datatype: String,
    // serde_json turns JSON numbers into f32 (nearest); a nested array or a
    // string is a parse error that names the position.
    data: Vec<f32>,
}

/// Checks an infer answer strictly against what the manifest promises:
/// `outputs[0]` of shape `[n_rows, n_outputs]`, datatype FP32, one value
/// per element, flat and row-major.
pub fn parse_infer_response(
    body: &[u8],
    n_rows: usize,
    n_outputs: usize,
) -> Result<Vec<f32>, String> {
    let answer: InferResponse = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not an inference response: {e}"))?;
    let Some(output) = answer.outputs.into_iter().next() else {
        return Err("the answer has no outputs".to_owned());
    };
    if output.datatype != "FP32" {
        return Err(format!(
            "output {:?} has datatype {}, expected FP32",
            output.name, output.datatype
        ));
    }
    let expected = [to_i64(n_rows), to_i64(n_outputs)];
    if output.shape != expected {
        return Err(format!(
            "output {:?} has shape {:?}, expected {expected:?} (rows x outputs of the manifest)",
            output.name, output.shape
        ));
    }
    if output.data.len() != n_rows * n_outputs {
        return Err(format!(
            "output {:?} of shape {:?} carries {} values",
            output.name,
            output.shape,
            output.data.len()
        ));
    }
    Ok(output.data)
}

// Row and column counts come from in-memory slices, far below i64::MAX.
fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A model version served by a remote engine: the verified version folder
/// (its manifest gives the inputs and outputs) and the client.
#[derive(Debug)]
pub struct RemoteModel {
    client: KserveV2Client,
    manifest: ModelManifest,
    version: ModelVersion,
    url: String,
    backoff: BackoffConfig,
    // Boxed: a TorchModel is large and most remote versions have none.
    fallback: Option<Box<TorchModel>>,
}

impl RemoteModel {
    pub fn new(model: &VerifiedModel, options: &RemoteOptions) -> Result<Self, ModelError> {
        let manifest = model.manifest().clone();
        let client = KserveV2Client::new(&manifest.name, options)?;
        Ok(Self {
            client,
            version: ModelVersion::new(model, SystemTime::now()),
            manifest,
            url: options.url.clone(),
            backoff: options.backoff,
            fallback: None,
        })
    }

    /// Answers in-process with `fallback` (same inputs and outputs, checked
    /// by the caller) while the engine fails.
    pub fn with_fallback(mut self, fallback: TorchModel) -> Self {
        self.fallback = Some(Box::new(fallback));
        self
    }

    pub fn fallback(&self) -> Option<&TorchModel> {
        self.fallback.as_deref()
    }

    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    pub fn version(&self) -> &ModelVersion {
        &self.version
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// What the inference worker runs a remote model with: the client, and
/// when it may try the engine again after a failure.
#[derive(Debug)]
pub(crate) struct RemoteBackend {
    model: RemoteModel,
    backoff: Backoff,
    /// While set and in the future, batches fail at once without a request:
    /// the queue keeps draining (and dropping newest when full) instead of
    /// waiting on a dead engine.
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

/// The outcome of one remote batch, for the worker's counters and state.
pub(crate) enum RemoteOutcome {
    Answered(Vec<f32>),
    /// A request was made and failed (counted as a remote error).
    Failed(ModelError),
    /// No request: the engine failed recently and the backoff has not
    /// passed.
    Waiting(ModelError),
}

impl RemoteBackend {
    pub(crate) fn new(model: RemoteModel) -> Self {
        let backoff = Backoff::new(model.backoff);
        Self {
            model,
            backoff,
            retry_at: None,
            last_error: None,
        }
    }

    pub(crate) fn model(&self) -> &RemoteModel {
        &self.model
    }

    pub(crate) fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Asks the engine whether the model is ready; a failure starts the
    /// backoff like a failed batch.
    pub(crate) fn probe(&mut self, runtime: &tokio::runtime::Runtime) -> bool {
        match runtime.block_on(self.model.client.ready()) {
            Ok(()) => {
                self.recovered();
                true
            }
            Err(message) => {
                self.failed(message);
                false
            }
        }
    }

    pub(crate) fn forward(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        rows: &[f32],
        n_rows: usize,
    ) -> RemoteOutcome {
        if let Some(at) = self.retry_at {
            if Instant::now() < at {
                return RemoteOutcome::Waiting(self.unavailable(format!(
                    "not retried before the backoff passes; last error: {}",
                    self.last_error.as_deref().unwrap_or("none")
                )));
            }
        }
        let n_inputs = self.model.manifest.inputs.len();
        let n_outputs = self.model.manifest.outputs.len();
        match runtime.block_on(self.model.client.infer(rows, n_rows, n_inputs, n_outputs)) {
            Ok(values) => {
                self.recovered();
                RemoteOutcome::Answered(values)
            }
            Err(message) => {
                let error = self.unavailable(message.clone());
                self.failed(message);
                RemoteOutcome::Failed(error)
            }
        }
    }

    fn recovered(&mut self) {
        if self.retry_at.take().is_some() {
            tracing::info!(
                model = %self.model.version.name,
                version = %self.model.version.version,
                url = %self.model.url,
                "inference engine answers again"
            );
        }
        self.backoff.reset();
        self.last_error = None;
    }

    fn failed(&mut self, message: String) {
        let delay = self.backoff.next_delay();
        tracing::warn!(
            model = %self.model.version.name,
            version = %self.model.version.version,
            url = %self.model.url,
            error = %message,
            retry_in_ms = delay.as_millis() as u64,
            "inference engine failed; predictions are skipped until it answers"
        );
        self.retry_at = Instant::now().checked_add(delay);
        self.last_error = Some(message);
    }

    fn unavailable(&self, message: String) -> ModelError {
        ModelError::RemoteUnavailable {
            model: self.model.version.name.clone(),
            url: self.model.url.clone(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mlserver_answer_is_parsed() {
        let body = br#"{"model_name":"bearing-wear","id":"x","parameters":{"content_type":"np"},
            "outputs":[{"name":"output-1","shape":[2,1],"datatype":"FP32",
            "parameters":{"content_type":"np"},"data":[1.0,0.8143941164016724]}]}"#;
        assert_eq!(
            parse_infer_response(body, 2, 1).unwrap(),
            vec![1.0, 0.814_394_1]
        );
    }

    #[test]
    fn a_wrong_shape_is_refused() {
        let body =
            br#"{"outputs":[{"name":"o","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#;
        let err = parse_infer_response(body, 2, 1).unwrap_err();
        assert!(err.contains("shape [2, 2], expected [2, 1]"), "{err}");
        let body = br#"{"outputs":[{"name":"o","shape":[2,1],"datatype":"FP32","data":[1,2,3]}]}"#;
        let err = parse_infer_response(body, 2, 1).unwrap_err();
        assert!(err.contains("carries 3 values"), "{err}");
        let body = br#"{"outputs":[{"name":"o","shape":[2],"datatype":"FP32","data":[1,2]}]}"#;
        let err = parse_infer_response(body, 2, 1).unwrap_err();
        assert!(err.contains("shape [2]"), "{err}");
    }

    #[test]
    fn a_wrong_datatype_is_refused() {
        let body = br#"{"outputs":[{"name":"o","shape":[1,1],"datatype":"FP64","data":[1.0]}]}"#;
        let err = parse_infer_response(body, 1, 1).unwrap_err();
        assert!(err.contains("datatype FP64, expected FP32"), "{err}");
        let body = br#"{"outputs":[{"name":"o","shape":[1,1],"datatype":"FP32","data":["a"]}]}"#;
        let err = parse_infer_response(body, 1, 1).unwrap_err();
        assert!(err.contains("not an inference response"), "{err}");
    }

    #[test]
    fn missing_outputs_are_refused() {
        for body in [&br#"{"model_name":"m"}"#[..], br#"{"outputs":[]}"#] {
            let err = parse_infer_response(body, 1, 1).unwrap_err();
            assert!(err.contains("no outputs"), "{err}");
        }
        let err = parse_infer_response(b"<html>502</html>", 1, 1).unwrap_err();
        assert!(err.contains("not an inference response"), "{err}");
    }

    #[test]
    fn the_request_is_one_row_major_fp32_tensor() {
        let rows = [1.0f32, 2.5, 3.0, 4.0, 5.0, 6.0];
        let body = serde_json::to_string(&InferRequest {
            inputs: [RequestTensor {
                name: INPUT_TENSOR,
                shape: [2, 3],
                datatype: "FP32",
                data: &rows,
            }],
        })
        .unwrap();
        assert_eq!(
            body,
            r#"{"inputs":[{"name":"input-0","shape":[2,3],"datatype":"FP32","data":[1.0,2.5,3.0,4.0,5.0,6.0]}]}"#
        );
    }

    /// A one-connection-at-a-time HTTP server answering each request with
    /// the next canned `(status line, body)`; returns its URL and the
    /// requests it read (head and body).
    fn canned_engine(
        answers: Vec<(&'static str, String)>,
    ) -> (String, std::sync::mpsc::Receiver<String>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (seen, requests) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut answers = answers.into_iter();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut reader = BufReader::new(stream);
                // Keep-alive: several requests may come on one connection.
                loop {
                    let mut head = String::new();
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    if head.is_empty() {
                        break;
                    }
                    let mut body = vec![0; length];
                    let _ = reader.read_exact(&mut body);
                    let _ = seen.send(format!("{head}{}", String::from_utf8_lossy(&body)));
                    let Some((status, answer)) = answers.next() else {
                        return;
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = reader.get_mut().write_all(reply.as_bytes());
                }
            }
        });
        (url, requests)
    }

    fn tiny(url: String, token: Option<&str>) -> RemoteBackend {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny");
        let verified = crate::registry::ModelRegistry::open(dir)
            .unwrap()
            .load("1.0.0")
            .unwrap();
        let options = RemoteOptions {
            url,
            remote_model: "tiny-on-engine".into(),
            timeout: Duration::from_secs(5),
            token: token.map(str::to_owned),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            fallback_version: None,
            // Long enough that the second batch surely falls in it.
            backoff: BackoffConfig {
                initial_ms: 60_000,
                max_ms: 60_000,
            },
        };
        RemoteBackend::new(RemoteModel::new(&verified, &options).unwrap())
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_batch_is_one_request_with_the_token_and_the_answer_is_checked() {
        let ok = r#"{"outputs":[{"name":"o","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#;
        let (url, requests) = canned_engine(vec![("200 OK", ok.to_owned())]);
        let mut backend = tiny(url, Some("t0ken"));
        let rt = runtime();
        match backend.forward(&rt, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2) {
            RemoteOutcome::Answered(values) => assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0]),
            _ => panic!("not answered: {:?}", backend.last_error()),
        }
        let request = requests.recv().unwrap();
        assert!(
            request.starts_with("POST /v2/models/tiny-on-engine/infer HTTP/1.1"),
            "{request}"
        );
        let lower = request.to_ascii_lowercase();
        assert!(lower.contains("authorization: bearer t0ken"), "{request}");
        assert!(
            lower.contains("content-type: application/json"),
            "{request}"
        );
        assert!(
            request.ends_with(
                r#"{"inputs":[{"name":"input-0","shape":[2,3],"datatype":"FP32","data":[1.0,2.0,3.0,4.0,5.0,6.0]}]}"#
            ),
            "{request}"
        );
    }

    #[test]
    fn a_failed_request_starts_a_backoff_in_which_batches_fail_without_a_request() {
        let (url, requests) = canned_engine(vec![(
            "503 Service Unavailable",
            "{\"error\":\"model loading\"}".to_owned(),
        )]);
        let mut backend = tiny(url, None);
        let rt = runtime();
        match backend.forward(&rt, &[1.0, 2.0, 3.0], 1) {
            RemoteOutcome::Failed(e) => {
                let e = e.to_string();
                assert!(e.contains("503") && e.contains("model loading"), "{e}");
            }
            _ => panic!("a 503 must fail the batch"),
        }
        assert!(backend.last_error().is_some());
        assert!(requests.recv().is_ok());
        match backend.forward(&rt, &[1.0, 2.0, 3.0], 1) {
            RemoteOutcome::Waiting(e) => assert!(e.to_string().contains("backoff"), "{e}"),
            _ => panic!("the batch after a failure must wait for the backoff"),
        }
        assert!(
            requests.try_recv().is_err(),
            "no request during the backoff"
        );
    }

    #[test]
    fn a_bad_answer_and_a_refused_connection_fail_the_batch() {
        let bad = r#"{"outputs":[{"name":"o","shape":[1,2],"datatype":"INT64","data":[1,2]}]}"#;
        let (url, _requests) = canned_engine(vec![("200 OK", bad.to_owned())]);
        let rt = runtime();
        match tiny(url, None).forward(&rt, &[1.0, 2.0, 3.0], 1) {
            RemoteOutcome::Failed(e) => assert!(e.to_string().contains("INT64"), "{e}"),
            _ => panic!("a wrong datatype must fail the batch"),
        }
        // A port nobody listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        match tiny(format!("http://127.0.0.1:{port}"), None).forward(&rt, &[1.0, 2.0, 3.0], 1) {
            RemoteOutcome::Failed(e) => assert!(e.to_string().contains("cannot connect"), "{e}"),
            _ => panic!("a refused connection must fail the batch"),
        }
    }

    #[test]
    fn the_token_stays_out_of_debug_output() {
        let options = RemoteOptions {
            url: "http://127.0.0.1:1".into(),
            remote_model: "m".into(),
            timeout: Duration::from_secs(1),
            token: Some("secret-token".into()),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            backoff: REMOTE_BACKOFF,
            fallback_version: None,
        };
        assert!(!format!("{options:?}").contains("secret-token"));
    }
}
