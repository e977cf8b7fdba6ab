//! Starting the server (endpoints, certificates, users) and the publisher
//! that pushes scans, predictions and model status into its nodes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ironbridge_connectors::{
    poll_clock, GateRecord, Prediction, Quality, Scan, SourceStatus, TagValue,
};
use ironbridge_models::{ModelLifecycle, VersionInfo};
use opcua::crypto::{CertificateStore, SecurityPolicy, X509Data};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::login_throttle::LoginThrottleConfig;
use opcua::server::node_manager::memory::{InMemoryNodeManager, InMemoryNodeManagerBuilder};
use opcua::server::{
    ServerBuilder, ServerEndpoint, ServerUserToken, SubscriptionCache, ANONYMOUS_USER_TOKEN_ID,
};
use opcua::types::{
    ApplicationDescription, ApplicationType, DataTypeId, DataValue, DateTime, LocalizedText,
    MessageSecurityMode, NodeId, StatusCode, UAString, Variant,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::address_space::{self, AddressSpaceLayout, NodeIndex, VersionNodes, NAMESPACE_URI};
use super::config::{password_from_env, OpcUaServerConfig};
use super::hot_values::{HotGroup, HotValues};
use super::nodes::{GatewayNodes, GatewayNodesBuilder, ModelControl, SharedHotValues};
use super::tag_nodes::{TagNodes, TagTable};

type GatewayNodeManager = InMemoryNodeManager<GatewayNodes>;
use crate::scan_layout::ScanLayout;
use crate::GatewayError;

/// Path of every endpoint; clients connect to `opc.tcp://host:port/`.
const ENDPOINT_PATH: &str = "/";
const PRODUCT_URI: &str = "urn:ironbridge";
/// The self-signed server certificate made on first start. OPC UA tools
/// expect to re-trust a server now and then; 5 years keeps that rare without
/// pretending the key is forever. Renew by deleting `own/` and `private/`.
const SERVER_CERT_DAYS: u32 = 5 * 365;

/// A model's state as shown under `Models/<model>`. The gateway fills it
/// from the model registry.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelStatusView {
    pub name: String,
    pub active_version: String,
    pub sha256: String,
    pub loaded_at: SystemTime,
    pub state: String,
    pub inference_count: u64,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// The version running as shadow, if any.
    pub shadow_version: Option<String>,
    /// `Models/<model>/Remote/Reachable | LastError`, for a model with
    /// `backend = "remote"`.
    pub remote: Option<RemoteStatusView>,
}

/// A remote inference engine's reachability, for `Models/<model>/Remote/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteStatusView {
    pub reachable: bool,
    /// Empty while the engine answers.
    pub last_error: String,
}

/// What a model's registry sync last saw, for `Models/<model>/Registry/`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryStatusView {
    /// The last time the alias was resolved (none yet: the node stays
    /// BadWaitingForInitialData).
    pub last_sync: Option<SystemTime>,
    /// The registry's version number the alias pointed to then.
    pub version_seen: Option<String>,
    /// Why the last sync or version failed; empty when it worked.
    pub last_error: String,
}

/// The gateway's own health for `Gateway/...` (what `/ready` says).
#[derive(Debug, Clone)]
pub struct GatewayStatusView {
    pub started_at: SystemTime,
    pub uptime_seconds: f64,
    /// `component: reason` for each component that is not working.
    pub not_ready: Vec<String>,
    pub machines_up: Vec<(String, bool)>,
    /// Delivering, Failing, Unauthorized or Off (no `[influx]`).
    pub sink_state: &'static str,
    pub sink_buffered_lines: u64,
}

/// Pushes values into the server's nodes; subscribed clients are notified.
/// Cheap to clone; every method is synchronous and only takes a short lock,
/// so it can be called from the gateway's fan-out task.
#[derive(Clone)]
pub struct OpcUaPublisher {
    inner: Arc<PublisherInner>,
}

struct PublisherInner {
    node_manager: Arc<GatewayNodeManager>,
    /// The server's own state (diagnostics: the session count).
    server_info: Arc<opcua::server::ServerInfo>,
    subscriptions: Arc<SubscriptionCache>,
    index: NodeIndex,
    /// The namespace of every IronBridge node (for nodes added later).
    ns: u16,
    /// model → version → its nodes, added as version folders are found.
    versions: Mutex<HashMap<String, HashMap<String, VersionNodes>>>,
    /// Every machine's tag variables (served by `tag_nodes`).
    tags: Arc<TagTable>,
    /// machine → the tag slot of each reading, by tag order (taken by the
    /// fan-out only, so never contended).
    scan_layouts: HashMap<String, Mutex<ScanLayout>>,
    /// machine → model → the slots of its prediction variables.
    prediction_slots: HashMap<String, HashMap<String, PredictionSlots>>,
    /// Values that had no node (a machine, tag, model or output the layout
    /// does not know): counted, not fatal.
    unknown_values: AtomicU64,
}

/// The hot slots of one machine's predictions of one model.
struct PredictionSlots {
    values: Arc<HotGroup>,
    /// output → its slot; `ModelVersion` is the last slot.
    outputs: HashMap<String, usize>,
    model_version: usize,
}

impl std::fmt::Debug for OpcUaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpcUaPublisher")
            .field("unknown_values", &self.unknown_values())
            .finish_non_exhaustive()
    }
}

/// Starts the server: validates `config` and `layout`, makes the server
/// certificate on first start, binds `host:port` and serves until `cancel`
/// fires. The returned task ends when the server has stopped (an error
/// while serving is logged there).
pub async fn start(
    config: &OpcUaServerConfig,
    layout: &AddressSpaceLayout,
    models: &[Arc<ModelLifecycle>],
    cancel: CancellationToken,
) -> Result<(OpcUaPublisher, JoinHandle<()>), GatewayError> {
    let problems = config.validate("opcua");
    if !problems.is_empty() {
        return Err(GatewayError::OpcUaConfig(problems));
    }
    layout.validate().map_err(GatewayError::OpcUaLayout)?;

    let hostname = opcua::crypto::hostname().unwrap_or_else(|_| "localhost".to_string());
    // Clients use the host in the endpoint URLs the server hands out, so a
    // wildcard bind address must be replaced by a name they can reach.
    let advertised_host = if is_wildcard(&config.host) {
        hostname.clone()
    } else {
        config.host.clone()
    };
    let application_uri = format!("urn:ironbridge:gateway:{hostname}");
    ensure_server_certificate(config, &application_uri, &advertised_host)?;

    let mut builder = ServerBuilder::new()
        .application_name(config.application_name.clone())
        .application_uri(application_uri)
        .product_uri(PRODUCT_URI)
        .pki_dir(config.pki_dir.clone())
        .create_sample_keypair(false)
        .trust_client_certs(config.trust_client_certs)
        .check_cert_time(true)
        .host(advertised_host.clone())
        .port(config.port)
        .discovery_urls(vec![format!(
            "opc.tcp://{advertised_host}:{}{ENDPOINT_PATH}",
            config.port
        )])
        .token(cancel.child_token())
        .max_sessions(config.limits.max_sessions)
        .max_message_size(config.limits.max_message_size)
        .max_chunk_count(config.limits.max_chunk_count)
        // Failed logins throttled per client address (our patch of
        // async-opcua-server, third_party/README.md).
        .login_throttle(LoginThrottleConfig {
            free_failures: config.limits.failed_logins_before_lockout,
            lockout: Duration::from_millis(config.limits.login_lockout_ms),
            max_lockout: Duration::from_millis(config.limits.max_login_lockout_ms),
            ..LoginThrottleConfig::default()
        })
        // The session count for ironbridge_opcua_sessions.
        .diagnostics_enabled(true)
        // A data change waits in its monitored item until the next tick:
        // the tick bounds how soon a subscriber sees it.
        .subscription_poll_interval_ms(config.limits.min_publishing_interval_ms)
        // The ticks a quarter of a tick after the polls' grid (our patch
        // of async-opcua-server, third_party/README.md): a value polled
        // on the grid and set within that quarter leaves at the next
        // tick, not up to a whole tick later.
        .subscription_tick_phase(subscription_tick_phase(
            config.limits.min_publishing_interval_ms,
        ));
    {
        let subscriptions = &mut builder.limits_mut().subscriptions;
        let shortest = config.limits.min_publishing_interval_ms as f64;
        subscriptions.min_publishing_interval_ms = shortest;
        subscriptions.min_sampling_interval_ms = shortest;
        subscriptions.max_subscriptions_per_session = config.limits.max_subscriptions_per_session;
        subscriptions.max_monitored_items_per_sub =
            config.limits.max_monitored_items_per_subscription;
    }

    let mut secure_token_ids = Vec::new();
    let mut roles = HashMap::new();
    let mut user_tokens = std::collections::BTreeMap::new();
    for (i, user) in config.users.iter().enumerate() {
        let password =
            password_from_env(&user.password_env).ok_or_else(|| GatewayError::MissingPassword {
                username: user.username.clone(),
                env: user.password_env.clone(),
            })?;
        let token_id = format!("user{i}");
        roles.insert(token_id.clone(), (user.username.clone(), user.role));
        let token = ServerUserToken::user_pass(user.username.clone(), password);
        user_tokens.insert(token_id.clone(), token.clone());
        builder = builder.add_user_token(token_id.clone(), token);
        secure_token_ids.push(token_id);
    }
    if config.allow_anonymous {
        secure_token_ids.push(ANONYMOUS_USER_TOKEN_ID.to_string());
    }
    // Logins are checked by our authenticator (constant-time passwords),
    // over the same users the builder knows.
    builder = builder.with_authenticator(Arc::new(super::auth::GatewayAuthenticator::new(
        user_tokens,
    )));
    let control = Arc::new(ModelControl::new(roles));
    let hot = SharedHotValues::default();
    // Before the in-memory manager, which claims the whole namespace: the
    // tag variables are answered here first (see `tag_nodes`).
    let tag_table: Arc<OnceLock<Arc<TagTable>>> = Arc::default();
    {
        let tag_table = tag_table.clone();
        builder =
            builder.with_node_manager(move |_: opcua::server::node_manager::ServerContext| {
                TagNodes::new(tag_table)
            });
    }
    builder = builder.with_node_manager(InMemoryNodeManagerBuilder::new(GatewayNodesBuilder::new(
        NamespaceMetadata {
            namespace_uri: NAMESPACE_URI.to_string(),
            ..Default::default()
        },
        "ironbridge",
        control.clone(),
        hot.clone(),
    )));
    for policy_name in &config.security_policies {
        let policy = secure_policy(policy_name).ok_or_else(|| {
            // validate() refused unknown names already; kept for safety.
            GatewayError::OpcUaBuild(format!("unknown security policy {policy_name:?}"))
        })?;
        builder = builder.add_endpoint(
            format!("{policy_name}_sign_encrypt"),
            ServerEndpoint::new(
                ENDPOINT_PATH,
                policy,
                MessageSecurityMode::SignAndEncrypt,
                &secure_token_ids,
            ),
        );
    }
    if config.insecure_loopback_endpoint {
        // Anonymous only: a password over SecurityPolicy None would travel
        // in clear text.
        builder = builder.add_endpoint(
            "none",
            ServerEndpoint::new_none(ENDPOINT_PATH, &[ANONYMOUS_USER_TOKEN_ID.to_string()]),
        );
    }

    let (server, handle) = builder.build().map_err(GatewayError::OpcUaBuild)?;
    let node_manager = handle
        .node_managers()
        .get_of_type::<GatewayNodeManager>()
        .ok_or_else(|| GatewayError::OpcUaBuild("the IronBridge node manager is missing".into()))?;
    let ns = handle
        .get_namespace_index(NAMESPACE_URI)
        .ok_or_else(|| GatewayError::OpcUaBuild(format!("namespace {NAMESPACE_URI} missing")))?;
    let index = {
        let mut space = node_manager.address_space().write();
        address_space::build(&mut space, ns, layout)
    };
    control.set_methods(
        models
            .iter()
            .filter_map(|m| index.models.get(m.name()).map(|nodes| (m, nodes)))
            .flat_map(|(m, nodes)| {
                nodes
                    .methods
                    .iter()
                    .map(|(method, id)| (id.clone(), (m.clone(), *method)))
            })
            .collect(),
    );

    // Bound here (not inside the library) so a busy port fails `start`.
    let bind_addr = format!("{}:{}", bind_host(&config.host), config.port);
    let listener = TcpListener::bind(&bind_addr)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: bind_addr.clone(),
            source,
        })?;
    tracing::info!(
        addr = %bind_addr,
        policies = ?config.security_policies,
        insecure_loopback_endpoint = config.insecure_loopback_endpoint,
        "OPC UA server listening"
    );
    tokio::spawn(super::rejected::keep_bounded(
        config.pki_dir.join("rejected"),
        super::rejected::RejectedLimits {
            max_files: config.rejected_certs_max,
            max_bytes: config.rejected_certs_max_bytes,
        },
        cancel.child_token(),
    ));
    let task = tokio::spawn(async move {
        match server.run_with(listener).await {
            Ok(()) => tracing::info!("OPC UA server stopped"),
            Err(message) => {
                tracing::error!(error = %GatewayError::OpcUaRun(message), "OPC UA server failed")
            }
        }
    });

    let tags = Arc::new(TagTable::new(
        ns,
        layout
            .machines
            .iter()
            .map(|m| (m.name.as_str(), m.tags.as_slice())),
    ));
    // Set once; `start` is the only writer.
    let _ = tag_table.set(tags.clone());
    let scan_layouts = layout
        .machines
        .iter()
        .map(|m| (m.name.clone(), Mutex::new(ScanLayout::default())))
        .collect();
    let mut hot_values = HotValues::default();
    let prediction_slots = index
        .predictions
        .iter()
        .map(|(machine, models)| {
            let models = models
                .iter()
                .map(|(model, nodes)| {
                    let mut outputs = HashMap::new();
                    let mut slot_nodes = Vec::with_capacity(nodes.outputs.len() + 1);
                    for (output, node) in &nodes.outputs {
                        outputs.insert(output.clone(), slot_nodes.len());
                        slot_nodes.push(node.clone());
                    }
                    let model_version = slot_nodes.len();
                    slot_nodes.push(nodes.model_version.clone());
                    let slots = PredictionSlots {
                        values: hot_values.add_group(slot_nodes),
                        outputs,
                        model_version,
                    };
                    (model.clone(), slots)
                })
                .collect();
            (machine.clone(), models)
        })
        .collect();
    // Set once; `start` is the only writer.
    let _ = hot.set(hot_values);
    let publisher = OpcUaPublisher {
        inner: Arc::new(PublisherInner {
            node_manager,
            server_info: handle.info().clone(),
            subscriptions: handle.subscriptions().clone(),
            index,
            ns,
            versions: Mutex::new(HashMap::new()),
            tags,
            scan_layouts,
            prediction_slots,
            unknown_values: AtomicU64::new(0),
        }),
    };
    Ok((publisher, task))
}

impl OpcUaPublisher {
    /// Sessions open on the gateway's OPC UA server now (from the server's
    /// diagnostics summary, which the server keeps enabled for this).
    pub fn session_count(&self) -> u64 {
        use opcua::types::{VariableId, Variant};
        let value =
            self.inner.server_info.diagnostics.get(
                VariableId::Server_ServerDiagnostics_ServerDiagnosticsSummary_CurrentSessionCount,
            );
        match value.and_then(|v| v.value) {
            Some(Variant::UInt32(n)) => u64::from(n),
            _ => 0,
        }
    }

    /// Sets every tag of the scan: value, SourceTimestamp = acquisition time,
    /// StatusCode from the quality.
    pub fn publish_scan(&self, scan: &Scan) {
        let inner = &self.inner;
        let (Some(tags), Some(layout)) = (
            inner.tags.machine(&scan.machine),
            inner.scan_layouts.get(&*scan.machine),
        ) else {
            inner.count_unknown(scan.readings.len());
            return;
        };
        let mut layout = match layout.lock() {
            Ok(guard) => guard,
            // It only caches lookups; a panic elsewhere cannot leave it
            // inconsistent.
            Err(poisoned) => poisoned.into_inner(),
        };
        let slots = layout.slots(scan, |tag| tags.index_of(tag));
        let source_timestamp = Some(ua_date_time(scan.acquired_at));
        let server_timestamp = Some(DateTime::now());
        let mut updates = Vec::with_capacity(scan.readings.len());
        for (reading, slot) in scan.readings.iter().zip(slots) {
            let Some(i) = *slot else {
                inner.count_unknown(1);
                continue;
            };
            updates.push((
                i,
                DataValue {
                    // Never `None`: async-opcua 0.19 reads a value-less
                    // DataValue as Good, dropping its status.
                    value: Some(reading.value.as_ref().map_or(Variant::Empty, variant_of)),
                    status: Some(status_of(
                        reading.quality,
                        reading.value.is_some(),
                        reading.status,
                    )),
                    source_timestamp,
                    server_timestamp,
                    ..DataValue::null()
                },
                // Tag variables start as BaseDataType (see `address_space`);
                // the first value, and a change of type, declares it.
                reading.value.as_ref().map(data_type_of),
            ));
        }
        tags.store(&inner.tags, updates, &inner.subscriptions);
    }

    /// Sets the outputs of one prediction (SourceTimestamp = acquisition
    /// time of its inputs) and the version that made them.
    pub fn publish_prediction(&self, prediction: &Prediction) {
        self.publish_prediction_with(prediction, false);
    }

    /// As [`Self::publish_prediction`]; `drifting` (the inputs have moved
    /// away from the training distribution) marks the outputs Uncertain:
    /// the value is still there, a client sees it is less trustworthy.
    pub fn publish_prediction_with(&self, prediction: &Prediction, drifting: bool) {
        let inner = &self.inner;
        let Some(slots) = inner
            .prediction_slots
            .get(&*prediction.machine)
            .and_then(|models| models.get(&*prediction.model))
        else {
            inner.count_unknown(prediction.outputs.len());
            return;
        };
        let source_timestamp = Some(ua_date_time(prediction.inputs_acquired_at));
        let server_timestamp = Some(DateTime::now());
        let good = |value: Variant| DataValue {
            value: Some(value),
            status: Some(StatusCode::Good),
            source_timestamp,
            server_timestamp,
            ..DataValue::null()
        };
        let output_status = if drifting {
            StatusCode::Uncertain
        } else {
            StatusCode::Good
        };
        let mut updates = Vec::with_capacity(prediction.outputs.len() + 1);
        for (output, value) in &prediction.outputs {
            match slots.outputs.get(&**output) {
                Some(&slot) => updates.push((
                    slot,
                    DataValue {
                        status: Some(output_status),
                        ..good(Variant::from(*value))
                    },
                )),
                None => inner.count_unknown(1),
            }
        }
        updates.push((
            slots.model_version,
            good(Variant::from(prediction.version.to_string())),
        ));
        inner.store_hot(&slots.values, updates);
    }

    /// Sets the `Models/<model>` variables.
    pub fn publish_gateway_status(&self, status: &GatewayStatusView) {
        let inner = &self.inner;
        let nodes = &inner.index.gateway;
        let now = DateTime::now();
        let good = |value: Variant| status_now(value, StatusCode::Good, now);
        let mut updates = vec![
            (
                &nodes.started_at,
                good(Variant::from(ua_date_time(status.started_at))),
            ),
            (
                &nodes.uptime_seconds,
                good(Variant::from(status.uptime_seconds)),
            ),
            (
                &nodes.ready,
                good(Variant::from(status.not_ready.is_empty())),
            ),
            (
                &nodes.not_ready,
                good(address_space::string_array(&status.not_ready)),
            ),
            (&nodes.sink_state, good(Variant::from(status.sink_state))),
            (
                &nodes.sink_buffered_lines,
                good(Variant::from(status.sink_buffered_lines)),
            ),
        ];
        for (machine, up) in &status.machines_up {
            match nodes.machines_up.get(machine) {
                Some(node) => updates.push((node, good(Variant::from(*up)))),
                None => inner.count_unknown(1),
            }
        }
        inner.set_values(updates);
    }

    pub fn publish_model_status(&self, status: &ModelStatusView) {
        let inner = &self.inner;
        let Some(nodes) = inner.index.models.get(&status.name) else {
            inner.count_unknown(1);
            return;
        };
        let now = DateTime::now();
        let good = |value: Variant| status_now(value, StatusCode::Good, now);
        let mut values = vec![
            (
                &nodes.active_version,
                good(Variant::from(status.active_version.clone())),
            ),
            (&nodes.sha256, good(Variant::from(status.sha256.clone()))),
            (
                &nodes.loaded_at,
                good(Variant::from(ua_date_time(status.loaded_at))),
            ),
            (&nodes.state, good(Variant::from(status.state.clone()))),
            (
                &nodes.inference_count,
                good(Variant::from(status.inference_count)),
            ),
            (
                &nodes.inputs,
                good(address_space::string_array(&status.inputs)),
            ),
            (
                &nodes.outputs,
                good(address_space::string_array(&status.outputs)),
            ),
            (
                &nodes.shadow_version,
                good(Variant::from(
                    status.shadow_version.clone().unwrap_or_default(),
                )),
            ),
        ];
        if let (Some(remote_nodes), Some(remote)) = (&nodes.remote, &status.remote) {
            values.push((
                &remote_nodes.reachable,
                good(Variant::from(remote.reachable)),
            ));
            values.push((
                &remote_nodes.last_error,
                good(Variant::from(remote.last_error.clone())),
            ));
        }
        inner.set_values(values);
    }

    /// Sets `Models/<model>/Shadow/<machine>/<output>`: a shadow version's
    /// outputs, stamped with its inputs' acquisition time.
    pub fn publish_shadow_prediction(&self, prediction: &Prediction) {
        let inner = &self.inner;
        let Some(outputs) = inner
            .index
            .models
            .get(&*prediction.model)
            .and_then(|m| m.shadow_outputs.get(&*prediction.machine))
        else {
            inner.count_unknown(prediction.outputs.len());
            return;
        };
        let at = ua_date_time(prediction.inputs_acquired_at);
        let now = DateTime::now();
        let updates = prediction
            .outputs
            .iter()
            .filter_map(|(name, value)| {
                outputs.get(&**name).map(|node| {
                    (
                        node,
                        DataValue {
                            value: Some(Variant::from(*value)),
                            status: Some(StatusCode::Good),
                            source_timestamp: Some(at),
                            server_timestamp: Some(now),
                            ..DataValue::null()
                        },
                    )
                })
            })
            .collect();
        inner.set_values(updates);
    }

    /// Sets `Models/<model>/Drift/<name>` (an input's or output's PSI).
    pub fn publish_drift(&self, model: &str, psi: &[(String, f64)]) {
        let inner = &self.inner;
        let Some(nodes) = inner.index.models.get(model).map(|m| &m.drift) else {
            inner.count_unknown(psi.len());
            return;
        };
        let now = DateTime::now();
        let updates = psi
            .iter()
            .filter_map(|(name, value)| {
                nodes.get(name).map(|node| {
                    (
                        node,
                        status_now(Variant::from(*value), StatusCode::Good, now),
                    )
                })
            })
            .collect();
        inner.set_values(updates);
    }

    /// Sets `Models/<model>/Registry/...` (the alias is set at start).
    pub fn publish_registry(&self, model: &str, status: &RegistryStatusView) {
        let inner = &self.inner;
        let Some(nodes) = inner
            .index
            .models
            .get(model)
            .and_then(|m| m.registry.as_ref())
        else {
            inner.count_unknown(1);
            return;
        };
        let now = DateTime::now();
        let good = |value: Variant| status_now(value, StatusCode::Good, now);
        let mut updates = vec![(
            &nodes.last_error,
            good(Variant::from(status.last_error.clone())),
        )];
        if let Some(at) = status.last_sync {
            updates.push((&nodes.last_sync, good(Variant::from(ua_date_time(at)))));
        }
        if let Some(version) = &status.version_seen {
            updates.push((&nodes.version_seen, good(Variant::from(version.clone()))));
        }
        inner.set_values(updates);
    }

    /// Sets `Models/<model>/Gate/...`.
    pub fn publish_gate(&self, gate: &GateRecord) {
        let inner = &self.inner;
        let Some(nodes) = inner.index.models.get(&*gate.model).map(|m| &m.gate) else {
            inner.count_unknown(1);
            return;
        };
        let now = DateTime::now();
        let value = |value: Variant| status_now(value, StatusCode::Good, now);
        // A bound that is not finite yet (too few samples) is not a value.
        let number = |x: f64| {
            if x.is_finite() {
                value(Variant::from(x))
            } else {
                status_now(Variant::Empty, StatusCode::UncertainInitialValue, now)
            }
        };
        inner.set_values(vec![
            (
                &nodes.shadow_version,
                value(Variant::from(gate.shadow_version.to_string())),
            ),
            (&nodes.metric, value(Variant::from(gate.metric))),
            (&nodes.samples, value(Variant::from(gate.samples))),
            (&nodes.mean, number(gate.mean)),
            (&nodes.lower, number(gate.lower)),
            (&nodes.upper, number(gate.upper)),
            (&nodes.margin, number(gate.margin)),
            (&nodes.psi, number(gate.psi.unwrap_or(f64::NAN))),
            (&nodes.decision, value(Variant::from(gate.decision))),
        ]);
    }

    /// Sets `Models/<model>/Versions/<version>/...`, adding the nodes of
    /// versions seen for the first time.
    pub fn publish_model_versions(&self, model: &str, versions: &[VersionInfo]) {
        let inner = &self.inner;
        let Some(model_nodes) = inner.index.models.get(model) else {
            inner.count_unknown(1);
            return;
        };
        let mut known = match inner.versions.lock() {
            Ok(guard) => guard,
            // Only a cache of inserted nodes; still right after a panic.
            Err(poisoned) => poisoned.into_inner(),
        };
        let known = known.entry(model.to_string()).or_default();
        let missing: Vec<&VersionInfo> = versions
            .iter()
            .filter(|v| !known.contains_key(&v.version))
            .collect();
        if !missing.is_empty() {
            let mut space = inner.node_manager.address_space().write();
            for info in missing {
                let nodes = address_space::add_version(
                    &mut space,
                    inner.ns,
                    model,
                    &model_nodes.versions,
                    &info.version,
                );
                known.insert(info.version.clone(), nodes);
            }
        }
        let now = DateTime::now();
        let good = |value: Variant| status_now(value, StatusCode::Good, now);
        let text = |value: &Option<String>| good(Variant::from(value.clone().unwrap_or_default()));
        let mut updates = Vec::with_capacity(versions.len() * 7);
        for info in versions {
            let Some(nodes) = known.get(&info.version) else {
                continue;
            };
            let created_at = info
                .created_at
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map_or_else(|| good(Variant::Empty), |t| good(Variant::from(t)));
            let acceptance: Vec<String> = info
                .acceptance
                .iter()
                .map(|(name, metric)| format!("{name}={}", metric.value))
                .collect();
            updates.push((&nodes.state, good(Variant::from(info.state.as_str()))));
            updates.push((&nodes.sha256, text(&info.sha256)));
            updates.push((&nodes.created_at, created_at));
            updates.push((
                &nodes.training_data_sha256,
                text(&info.training_data_sha256),
            ));
            updates.push((&nodes.code_commit, text(&info.code_commit)));
            updates.push((
                &nodes.acceptance,
                good(address_space::string_array(&acceptance)),
            ));
            updates.push((&nodes.failure_reason, text(&info.failure_reason)));
        }
        inner.set_values(updates);
    }

    /// Values dropped because the layout has no node for them (for metrics).
    pub fn unknown_values(&self) -> u64 {
        self.inner.unknown_values.load(Ordering::Relaxed)
    }
}

/// A value with its status, stamped `now` as both source and server time
/// (for values the gateway itself produces: model state, gate, drift).
fn status_now(value: Variant, status: StatusCode, now: DateTime) -> DataValue {
    DataValue {
        value: Some(value),
        status: Some(status),
        source_timestamp: Some(now),
        server_timestamp: Some(now),
        ..DataValue::null()
    }
}

impl PublisherInner {
    fn count_unknown(&self, n: usize) {
        self.unknown_values.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Stores `(slot, value)` pairs in `group`; sets those whose node is
    /// watched in the address space now (see `hot_values`).
    fn store_hot(&self, group: &HotGroup, updates: Vec<(usize, DataValue)>) {
        let mut direct = Vec::new();
        group.store(updates, &mut direct);
        if !direct.is_empty() {
            self.set_values(direct);
        }
    }

    fn set_values(&self, updates: Vec<(&NodeId, DataValue)>) {
        let values = updates.into_iter().map(|(node, value)| (node, None, value));
        if let Err(status) = self.node_manager.set_values(&self.subscriptions, values) {
            // Only nodes built from the layout are set, so this is a bug.
            tracing::error!(%status, "cannot set OPC UA values");
        }
    }
}

/// An instant of the subscription ticks' grid: the polls' grid
/// ([`poll_clock::grid_epoch`]) plus a quarter of the tick. Polls whose
/// interval is a multiple of the tick then land a quarter of a tick before
/// one (room for the device's answer and the fan-out).
fn subscription_tick_phase(tick_ms: u64) -> std::time::Instant {
    let quarter = Duration::from_millis(tick_ms) / 4;
    (poll_clock::grid_epoch() + quarter).into_std()
}

fn secure_policy(name: &str) -> Option<SecurityPolicy> {
    match name {
        "Basic256Sha256" => Some(SecurityPolicy::Basic256Sha256),
        "Aes128Sha256RsaOaep" => Some(SecurityPolicy::Aes128Sha256RsaOaep),
        "Aes256Sha256RsaPss" => Some(SecurityPolicy::Aes256Sha256RsaPss),
        _ => None,
    }
}

fn is_wildcard(host: &str) -> bool {
    matches!(host.trim(), "0.0.0.0" | "::" | "[::]")
}

/// `host` in the form `TcpListener::bind` takes with a port appended.
fn bind_host(host: &str) -> String {
    let host = host.trim();
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Creates the server's self-signed certificate and key in `pki_dir` unless
/// both exist, and the `trusted/` and `rejected/` folders.
fn ensure_server_certificate(
    config: &OpcUaServerConfig,
    application_uri: &str,
    advertised_host: &str,
) -> Result<(), GatewayError> {
    let pki_dir = &config.pki_dir;
    let fail = |message: String| GatewayError::Certificate {
        pki_dir: pki_dir.display().to_string(),
        message,
    };
    let store = CertificateStore::new(pki_dir);
    store.ensure_pki_path().map_err(fail)?;
    let cert_path = store.own_certificate_path();
    let key_path = store.own_private_key_path();
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            store.read_own_cert().map_err(fail)?;
            store.read_own_pkey().map_err(fail)?;
            return Ok(());
        }
        (false, false) => {}
        // Never overwrite half a key pair: clients may trust the certificate.
        _ => {
            return Err(fail(format!(
                "only one of {} and {} exists; restore the other or delete both to make a new pair",
                cert_path.display(),
                key_path.display()
            )))
        }
    }
    let description = ApplicationDescription {
        application_uri: UAString::from(application_uri),
        product_uri: UAString::from(PRODUCT_URI),
        application_name: LocalizedText::new("", &config.application_name),
        application_type: ApplicationType::Server,
        gateway_server_uri: UAString::null(),
        discovery_profile_uri: UAString::null(),
        discovery_urls: None,
    };
    let mut x509 = X509Data::from((description, Some(vec![advertised_host.to_string()])));
    x509.certificate_duration_days = SERVER_CERT_DAYS;
    store
        .create_and_store_application_instance_cert(&x509, false)
        .map_err(fail)?;
    restrict_to_owner(&key_path).map_err(|e| fail(format!("{}: {e}", key_path.display())))?;
    tracing::info!(cert = %cert_path.display(), "created the OPC UA server certificate");
    Ok(())
}

/// The library writes the private key with the process umask (often
/// world-readable).
#[cfg(unix)]
fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn restrict_to_owner(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// OPC UA DateTime (100 ns ticks since 1601) from a SystemTime.
pub(crate) fn ua_date_time(t: SystemTime) -> DateTime {
    const TICKS_1601_TO_1970: i64 = 116_444_736_000_000_000;
    let ticks_since_1970 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos() / 100).unwrap_or(i64::MAX / 2),
        Err(before) => -i64::try_from(before.duration().as_nanos() / 100).unwrap_or(0),
    };
    DateTime::from(TICKS_1601_TO_1970.saturating_add(ticks_since_1970).max(0))
}

fn variant_of(value: &TagValue) -> Variant {
    match value {
        TagValue::Bool(b) => Variant::from(*b),
        TagValue::Int(i) => Variant::from(*i),
        TagValue::UInt(u) => Variant::from(*u),
        TagValue::Float(f) => Variant::from(*f),
        // Served as Double, as every float tag always was.
        TagValue::Float32(f) => Variant::from(f64::from(*f)),
        TagValue::Text(t) => Variant::from(t.to_string()),
    }
}

fn data_type_of(value: &TagValue) -> DataTypeId {
    match value {
        TagValue::Bool(_) => DataTypeId::Boolean,
        TagValue::Int(_) => DataTypeId::Int64,
        TagValue::UInt(_) => DataTypeId::UInt64,
        TagValue::Float(_) | TagValue::Float32(_) => DataTypeId::Double,
        TagValue::Text(_) => DataTypeId::String,
    }
}

/// OPC UA status of a tag reading: the machine's own OPC UA status where it
/// gave one (so an HMI sees `Uncertain_SensorNotAccurate`, not a generic
/// code), else one derived from the quality.
pub(crate) fn status_of(
    quality: Quality,
    has_value: bool,
    source_status: Option<SourceStatus>,
) -> StatusCode {
    if let Some(SourceStatus::OpcUa(bits)) = source_status {
        let status = StatusCode::from(bits);
        // Only where it agrees with the quality the gateway decided on.
        let agrees = match quality {
            Quality::Good => status.is_good() && has_value,
            Quality::Uncertain => status.is_uncertain(),
            Quality::Bad => status.is_bad(),
        };
        if agrees {
            return status;
        }
    }
    match (quality, has_value) {
        (Quality::Good, true) => StatusCode::Good,
        // Read, but the device flagged it (e.g. a Modbus exception).
        (Quality::Uncertain, _) => StatusCode::Uncertain,
        // Unreachable: no value, and no old value passed off as current.
        (Quality::Bad, _) | (Quality::Good, false) => StatusCode::BadNoCommunication,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn opcua_quality_maps_to_status_codes() {
        assert_eq!(status_of(Quality::Good, true, None), StatusCode::Good);
        assert!(status_of(Quality::Uncertain, true, None).is_uncertain());
        assert!(status_of(Quality::Bad, false, None).is_bad());
        assert!(status_of(Quality::Good, false, None).is_bad());
        // The machine's own status passes through.
        let own = |s: StatusCode| Some(SourceStatus::OpcUa(s.bits()));
        assert_eq!(
            status_of(
                Quality::Uncertain,
                true,
                own(StatusCode::UncertainSensorNotAccurate)
            ),
            StatusCode::UncertainSensorNotAccurate
        );
        assert_eq!(
            status_of(Quality::Bad, false, own(StatusCode::BadNodeIdUnknown)),
            StatusCode::BadNodeIdUnknown
        );
        // A Modbus exception has no OPC UA code of its own.
        assert!(status_of(Quality::Bad, false, Some(SourceStatus::ModbusException(2))).is_bad());
    }

    #[test]
    fn opcua_date_time_keeps_the_instant() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let ua = ua_date_time(t);
        assert_eq!(ua.as_chrono().timestamp_micros(), 1_700_000_000_123_456);
        assert_eq!(ua_date_time(UNIX_EPOCH).as_chrono().timestamp(), 0);
    }

    #[test]
    fn opcua_bind_host_brackets_ipv6() {
        assert_eq!(bind_host("::1"), "[::1]");
        assert_eq!(bind_host("[::1]"), "[::1]");
        assert_eq!(bind_host("0.0.0.0"), "0.0.0.0");
    }
}
