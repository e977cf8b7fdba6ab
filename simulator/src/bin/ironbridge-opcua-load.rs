//! `ironbridge-opcua-load`: an OPC UA server for load benchmarks
//! (`scripts/bench_opcua.py`).
//!
//! Serves `--variables` Double variables `nsu=urn:ironbridge:bench;s=V0000`,
//! `s=V0001`, … (Objects/Bench) and changes every one of them every
//! `--interval-ms`: one `set_values` batch per tick, all with the same fresh
//! SourceTimestamp, so a subscriber with a 100 ms sampling interval should
//! get `variables × 1000 / interval_ms` changes per second.
//!
//! Security: a SignAndEncrypt Basic256Sha256 endpoint with one
//! username/password login (the password from an environment variable);
//! with `--insecure` also an anonymous SecurityPolicy None endpoint. The
//! server certificate is made in `--pki-dir` on first start.
//!
//! Prints `listening on opc.tcp://HOST:PORT/ ...` once it accepts
//! connections, and one JSON line of counters (`{"ticks": ...}`) on stdout
//! when stopped by SIGTERM or Ctrl-C.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use opcua::crypto::{CertificateStore, SecurityPolicy, X509Data};
use opcua::server::address_space::{AccessLevel, ObjectBuilder, VariableBuilder};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{simple_node_manager, SimpleNodeManager};
use opcua::server::{ServerBuilder, ServerEndpoint, ServerUserToken, ANONYMOUS_USER_TOKEN_ID};
use opcua::types::{
    ApplicationDescription, ApplicationType, DataTypeId, DataValue, DateTime, LocalizedText,
    MessageSecurityMode, NodeId, ObjectId, ObjectTypeId, QualifiedName, StatusCode, UAString,
    Variant,
};
use tokio_util::sync::CancellationToken;

/// Namespace of the load variables.
const NAMESPACE_URI: &str = "urn:ironbridge:bench";
const PRODUCT_URI: &str = "urn:ironbridge:bench";
const APPLICATION_NAME: &str = "IronBridge OPC UA load server";
const NODE_MANAGER: &str = "bench";
const FOLDER: &str = "Bench";
const CERT_DAYS: u32 = 365;

/// OPC UA load server: N Double variables changing every interval.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on; port 0 picks a free port (the ready line says
    /// which).
    #[arg(long, default_value = "127.0.0.1:4850")]
    bind: SocketAddr,
    /// Number of variables (V0000 …).
    #[arg(long, default_value_t = 1000)]
    variables: usize,
    /// Milliseconds between changes of every variable.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Folder of the server certificate (made on first start) and of
    /// trusted/rejected client certificates.
    #[arg(long)]
    pki_dir: PathBuf,
    /// Username of the login on the SignAndEncrypt endpoint.
    #[arg(long, default_value = "bench")]
    user: String,
    /// Environment variable holding the login's password.
    #[arg(long, default_value = "IRONBRIDGE_BENCH_OPCUA_PASSWORD")]
    password_env: String,
    /// Also serve an anonymous endpoint without security.
    #[arg(long)]
    insecure: bool,
    /// Trust every client certificate.
    #[arg(long)]
    trust_client_certs: bool,
    /// Most value changes in one publish response (the server's cap on
    /// what a client asks for); 0, async-opcua's default, is no cap: every
    /// change queued since the last publish goes in one response.
    #[arg(long, default_value_t = 0)]
    max_notifications_per_publish: u64,
    /// Append every tick's SourceTimestamp (Unix milliseconds, one a line)
    /// to this file, so a benchmark can count the changes made in its
    /// window.
    #[arg(long)]
    tick_log: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    if args.variables == 0 || args.interval_ms == 0 {
        bail!("--variables and --interval-ms must be at least 1");
    }
    let password = std::env::var(&args.password_env)
        .ok()
        .filter(|p| !p.is_empty())
        .with_context(|| {
            format!(
                "set the password of OPC UA user {:?} in ${}",
                args.user, args.password_env
            )
        })?;
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(run(args, password))
}

/// Node ids `V0000` …, wide enough for `n`.
fn variable_names(n: usize) -> Vec<String> {
    let width = n.saturating_sub(1).to_string().len().max(4);
    (0..n).map(|i| format!("V{i:0width$}")).collect()
}

async fn run(args: Args, password: String) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    let addr = listener.local_addr()?;
    let host = addr.ip().to_string();
    let endpoint_url = format!("opc.tcp://{host}:{}/", addr.port());
    let application_uri = format!("{PRODUCT_URI}:server");
    ensure_certificate(&args.pki_dir, &application_uri, &host)?;

    let cancel = CancellationToken::new();
    let mut builder = ServerBuilder::new()
        .application_name(APPLICATION_NAME)
        .application_uri(application_uri)
        .product_uri(PRODUCT_URI)
        .pki_dir(args.pki_dir.clone())
        .create_sample_keypair(false)
        .trust_client_certs(args.trust_client_certs)
        .check_cert_time(true)
        .host(host)
        .port(addr.port())
        .discovery_urls(vec![endpoint_url.clone()])
        .token(cancel.clone())
        .with_node_manager(simple_node_manager(
            NamespaceMetadata {
                namespace_uri: NAMESPACE_URI.to_string(),
                ..Default::default()
            },
            NODE_MANAGER,
        ))
        .add_user_token("bench", ServerUserToken::user_pass(args.user, password))
        .add_endpoint(
            "basic256sha256_sign_encrypt",
            ServerEndpoint::new(
                "/",
                SecurityPolicy::Basic256Sha256,
                MessageSecurityMode::SignAndEncrypt,
                &["bench".to_string()],
            ),
        );
    if args.insecure {
        // Anonymous only: a password would travel in clear text.
        builder = builder.add_endpoint(
            "none",
            ServerEndpoint::new_none("/", &[ANONYMOUS_USER_TOKEN_ID.to_string()]),
        );
    }
    // One client monitors every variable in one subscription, created in
    // one call.
    let limits = builder.limits_mut();
    limits.subscriptions.max_monitored_items_per_sub = limits
        .subscriptions
        .max_monitored_items_per_sub
        .max(args.variables);
    limits.operational.max_monitored_items_per_call = limits
        .operational
        .max_monitored_items_per_call
        .max(args.variables);

    limits.subscriptions.max_notifications_per_publish = args.max_notifications_per_publish;

    let (server, handle) = builder.build().map_err(anyhow::Error::msg)?;
    let node_manager = handle
        .node_managers()
        .get_by_name::<SimpleNodeManager>(NODE_MANAGER)
        .context("the bench node manager is missing")?;
    let ns = handle
        .get_namespace_index(NAMESPACE_URI)
        .with_context(|| format!("namespace {NAMESPACE_URI} is missing"))?;
    let names = variable_names(args.variables);
    let ids: Vec<NodeId> = names
        .iter()
        .map(|name| NodeId::new(ns, name.as_str()))
        .collect();
    {
        let mut space = node_manager.address_space().write();
        let folder = NodeId::new(ns, FOLDER);
        ObjectBuilder::new(&folder, QualifiedName::new(ns, FOLDER), FOLDER)
            .has_type_definition(ObjectTypeId::FolderType)
            .organized_by(ObjectId::ObjectsFolder)
            .insert(&mut *space);
        for (id, name) in ids.iter().zip(&names) {
            VariableBuilder::new(id, QualifiedName::new(ns, name.as_str()), name.as_str())
                .data_type(DataTypeId::Double)
                .value_rank(-1)
                .access_level(AccessLevel::CURRENT_READ)
                .user_access_level(AccessLevel::CURRENT_READ)
                .organized_by(folder.clone())
                .value(Variant::from(0.0f64))
                .insert(&mut *space);
        }
    }

    let mut serving = tokio::spawn(server.run_with(listener));
    println!(
        "listening on {endpoint_url} (namespace {NAMESPACE_URI} at index {ns}, {} variables every {} ms)",
        ids.len(),
        args.interval_ms
    );

    let stop = {
        let cancel = cancel.clone();
        async move {
            shutdown_signal().await;
            cancel.cancel();
        }
    };
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(Duration::from_millis(args.interval_ms));
    // A late tick must not burst several batches.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick_log = match &args.tick_log {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let mut stats = Stats::default();
    let started = Instant::now();
    loop {
        tokio::select! {
            () = &mut stop => break,
            ended = &mut serving => {
                let reason = match ended {
                    Ok(Ok(())) => "stopped by itself".to_string(),
                    Ok(Err(message)) => message,
                    Err(join) => join.to_string(),
                };
                bail!("the server ended unexpectedly: {reason}");
            }
            _ = ticks.tick() => {
                let begin = Instant::now();
                let at = set_all(&node_manager, &handle, &ids, stats.ticks);
                stats.note(begin.elapsed());
                if let Some(log) = tick_log.as_mut() {
                    writeln!(log, "{}", at.as_chrono().timestamp_millis())?;
                    log.flush()?;
                }
            }
        }
    }
    match tokio::time::timeout(Duration::from_secs(5), &mut serving).await {
        Ok(Ok(Err(message))) => tracing::warn!(message, "server stopped with an error"),
        Ok(_) => {}
        Err(_) => serving.abort(),
    }
    println!("{}", stats.json(started.elapsed(), ids.len()));
    Ok(())
}

/// Gives every variable a new value (`tick + i / n`, never the previous
/// one) with one SourceTimestamp, in one batch; subscribers are notified.
/// Returns the timestamp.
fn set_all(
    node_manager: &Arc<SimpleNodeManager>,
    handle: &opcua::server::ServerHandle,
    ids: &[NodeId],
    tick: u64,
) -> DateTime {
    let now = DateTime::now();
    let n = ids.len() as f64;
    let values = ids.iter().enumerate().map(|(i, id)| {
        let value = DataValue {
            value: Some(Variant::from(tick as f64 + i as f64 / n)),
            status: Some(StatusCode::Good),
            source_timestamp: Some(now),
            server_timestamp: Some(now),
            ..DataValue::null()
        };
        (id, None, value)
    });
    if let Err(status) = node_manager.set_values(handle.subscriptions(), values) {
        tracing::error!(%status, "cannot set the values");
    }
    now
}

/// Counters printed at the end.
#[derive(Default)]
struct Stats {
    ticks: u64,
    set_total: Duration,
    set_max: Duration,
}

impl Stats {
    fn note(&mut self, took: Duration) {
        self.ticks += 1;
        self.set_total += took;
        self.set_max = self.set_max.max(took);
    }

    fn json(&self, ran: Duration, variables: usize) -> String {
        let mean_us = self.set_total.as_secs_f64() * 1e6 / self.ticks.max(1) as f64;
        format!(
            "{{\"ticks\": {}, \"seconds\": {:.1}, \"values_set\": {}, \"set_values_mean_us\": {:.0}, \"set_values_max_us\": {}}}",
            self.ticks,
            ran.as_secs_f64(),
            self.ticks * variables as u64,
            mean_us,
            self.set_max.as_micros()
        )
    }
}

/// Makes the server's self-signed certificate in `pki_dir` unless one is
/// there.
fn ensure_certificate(pki_dir: &Path, application_uri: &str, host: &str) -> anyhow::Result<()> {
    let store = CertificateStore::new(pki_dir);
    store.ensure_pki_path().map_err(anyhow::Error::msg)?;
    if store.own_certificate_path().exists() && store.own_private_key_path().exists() {
        return Ok(());
    }
    let description = ApplicationDescription {
        application_uri: UAString::from(application_uri),
        product_uri: UAString::from(PRODUCT_URI),
        application_name: LocalizedText::new("", APPLICATION_NAME),
        application_type: ApplicationType::Server,
        gateway_server_uri: UAString::null(),
        discovery_profile_uri: UAString::null(),
        discovery_urls: None,
    };
    let mut x509 = X509Data::from((description, Some(vec![host.to_string()])));
    x509.certificate_duration_days = CERT_DAYS;
    store
        .create_and_store_application_instance_cert(&x509, false)
        .map_err(anyhow::Error::msg)?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_zero_padded_and_grow_with_n() {
        assert_eq!(variable_names(3), ["V0000", "V0001", "V0002"]);
        assert_eq!(variable_names(10_001)[10_000], "V10000");
        assert_eq!(variable_names(10_000)[9_999], "V9999");
    }
}
