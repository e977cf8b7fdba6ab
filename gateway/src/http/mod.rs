//! Health and metrics over HTTP (`[http]`, loopback by default):
//!
//! - `GET /health`: 200 while the process runs (liveness).
//! - `GET /ready`: 200 when every machine answers, InfluxDB takes data and
//!   every model serves; 503 otherwise, with JSON naming what is not.
//! - `GET /metrics`: the counters and states in the OpenMetrics text format
//!   (which Prometheus scrapes), names `ironbridge_*` (README.md, "Health
//!   and metrics").
//!
//! Every value is read from the gateway's own counters at request time; the
//! log's periodic counters read the same ones.

mod config;
mod probe;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{HttpConfig, DEFAULT_ADDRESS};
pub use probe::{GatewayProbe, NotReady};

use crate::error::GatewayError;

/// A bound, not yet serving, health and metrics server.
pub struct HttpServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl HttpServer {
    /// Binds the configured address, so a taken port fails the start.
    pub async fn bind(config: &HttpConfig) -> Result<Self, GatewayError> {
        let addr = config
            .socket_addr()
            .map_err(|_| GatewayError::HttpConfig(config.validate("http")))?;
        let bind_error = |source| GatewayError::HttpBind {
            addr: addr.to_string(),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        if !local_addr.ip().is_loopback() {
            tracing::warn!(%local_addr, "health and metrics are served beyond loopback");
        }
        Ok(Self {
            listener,
            local_addr,
        })
    }

    /// Where it listens (the actual port if 0 was configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `cancel` fires; each connection in its own task.
    pub fn serve(self, probe: GatewayProbe, cancel: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = cancel.cancelled() => return,
                    accepted = self.listener.accept() => accepted,
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: pause, go on.
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let probe = probe.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let probe = probe.clone();
                        async move { Ok::<_, Infallible>(answer(&probe, &request)) }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        // A client that sends nothing is not kept forever.
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        result = connection => {
                            if let Err(e) = result {
                                tracing::debug!(error = %e, "HTTP connection ended with an error");
                            }
                        }
                    }
                });
            }
        })
    }
}

fn answer(probe: &GatewayProbe, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match request.uri().path() {
        "/health" => respond(
            StatusCode::OK,
            "application/json",
            r#"{"status":"alive"}"#.into(),
        ),
        "/ready" => {
            let not_ready = probe.not_ready();
            let body = serde_json::json!({
                "ready": not_ready.is_empty(),
                "not_ready": not_ready,
            })
            .to_string();
            let status = if not_ready.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            respond(status, "application/json", body)
        }
        "/metrics" => {
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register_collector(Box::new(probe.clone()));
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &registry) {
                Ok(()) => respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "metrics could not be encoded\n".into(),
                ),
            }
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /health, /ready or /metrics\n".into(),
        ),
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
