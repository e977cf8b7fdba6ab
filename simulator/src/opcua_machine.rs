//! The simulated spindle ([`crate::spindle`]) as an OPC UA server.
//!
//! The machine's variables live in [`NAMESPACE_URI`], which is deliberately
//! never at namespace index 2: padding namespaces ([`PADDING_NAMESPACE_URI`],
//! …) are registered before it, as on real machines whose vendor namespaces
//! come first. NodeIds are strings equal to the dotted browse path below
//! Objects (`s=Spindle.Speed`, `s=Spindle.Label.FaultState`); see
//! [`SpindleVariable`] for the list with data types and units.
//!
//! Security: SignAndEncrypt endpoints for Basic256Sha256,
//! Aes128Sha256RsaOaep and Aes256Sha256RsaPss with username/password users;
//! an anonymous SecurityPolicy None endpoint only with
//! [`OpcUaOptions::insecure_endpoint`]. The server certificate is made in
//! [`OpcUaOptions::pki_dir`] on first start.
//!
//! Faults ([`crate::faults`]): a drop stops the server (sessions and
//! connections close, connects are refused) and starts it again with the
//! same namespaces; a restart does the same but changes the number of
//! padding namespaces, so the machine's namespace index moves while its
//! string NodeIds stay; delete-node removes a variable for good.
//!
//! async-opcua's `Server::run_with` consumes both the server and the
//! listener, so every start (after a drop or restart) builds a new server
//! and binds the same address again; the spindle keeps running meanwhile.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use opcua::crypto::{CertificateStore, SecurityPolicy, X509Data};
use opcua::server::address_space::{AccessLevel, AddressSpace, ObjectBuilder, VariableBuilder};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{simple_node_manager, SimpleNodeManager};
use opcua::server::{
    ServerBuilder, ServerEndpoint, ServerHandle, ServerUserToken, ANONYMOUS_USER_TOKEN_ID,
};
use opcua::types::{
    ApplicationDescription, ApplicationType, DataTypeId, DataValue, DateTime, EUInformation,
    LocalizedText, MessageSecurityMode, NodeId, ObjectId, ObjectTypeId, QualifiedName, StatusCode,
    UAString, VariableTypeId, Variant,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::SimError;
use crate::faults::{rebind, Event, FaultClock, FaultSchedule, Protocol};
use crate::spindle::{Spindle, SpindleConfig, SpindleState};

/// Namespace of the spindle's nodes.
pub const NAMESPACE_URI: &str = "urn:ironbridge:sim:spindle";
/// The first namespace registered before the spindle's; later restarts
/// add `urn:ironbridge:sim:padding:2`.
pub const PADDING_NAMESPACE_URI: &str = "urn:ironbridge:sim:padding";
/// Browse name (and NodeId) of the machine object under Objects.
pub const ROOT_NAME: &str = "Spindle";

/// Path of every endpoint; clients connect to `opc.tcp://host:port/`.
const ENDPOINT_PATH: &str = "/";
const PRODUCT_URI: &str = "urn:ironbridge:sim";
const APPLICATION_NAME: &str = "IronBridge simulated spindle";
/// A simulator's self-signed certificate; long enough never to expire
/// under a test, short enough not to pretend the key is forever.
const SERVER_CERT_DAYS: u32 = 5 * 365;
/// Namespace of the UNECE unit codes in EUInformation (OPC UA Part 8).
const UNECE_UNITS_URI: &str = "http://www.opcfoundation.org/UA/units/un/cefact";
/// How long a stopping server may take to close its connections before its
/// task is aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A unit as EUInformation carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineeringUnit {
    /// UNECE Recommendation 20 code (`RPM`, `CEL`, …).
    pub unece_code: &'static str,
    /// What an HMI shows (`rpm`, `°C`, …).
    pub symbol: &'static str,
    pub description: &'static str,
}

impl EngineeringUnit {
    /// The UnitId of OPC UA Part 8: the code's ASCII bytes, big-endian.
    pub fn unit_id(&self) -> i32 {
        self.unece_code
            .bytes()
            .fold(0i32, |id, byte| (id << 8) | i32::from(byte))
    }

    fn eu_information(&self) -> EUInformation {
        EUInformation {
            namespace_uri: UAString::from(UNECE_UNITS_URI),
            unit_id: self.unit_id(),
            display_name: LocalizedText::new("en", self.symbol),
            description: LocalizedText::new("en", self.description),
        }
    }
}

const RPM: EngineeringUnit = EngineeringUnit {
    unece_code: "RPM",
    symbol: "rpm",
    description: "revolutions per minute",
};
const PERCENT: EngineeringUnit = EngineeringUnit {
    unece_code: "P1",
    symbol: "%",
    description: "percent",
};
const AMPERE: EngineeringUnit = EngineeringUnit {
    unece_code: "AMP",
    symbol: "A",
    description: "ampere",
};
const CELSIUS: EngineeringUnit = EngineeringUnit {
    unece_code: "CEL",
    symbol: "°C",
    description: "degree Celsius",
};
const MM_PER_S: EngineeringUnit = EngineeringUnit {
    unece_code: "C16",
    symbol: "mm/s",
    description: "millimetre per second",
};
const HOUR: EngineeringUnit = EngineeringUnit {
    unece_code: "HUR",
    symbol: "h",
    description: "hour",
};
const SECOND: EngineeringUnit = EngineeringUnit {
    unece_code: "SEC",
    symbol: "s",
    description: "second",
};

/// OPC UA data types the spindle's variables use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Boolean,
    Int32,
    UInt32,
    Double,
}

impl ValueKind {
    fn data_type(self) -> DataTypeId {
        match self {
            ValueKind::Boolean => DataTypeId::Boolean,
            ValueKind::Int32 => DataTypeId::Int32,
            ValueKind::UInt32 => DataTypeId::UInt32,
            ValueKind::Double => DataTypeId::Double,
        }
    }
}

/// Every variable the spindle serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpindleVariable {
    Running,
    SpeedSetpoint,
    Speed,
    Load,
    MotorCurrent,
    BearingTemperature,
    Vibration,
    RunHours,
    OvertempAlarm,
    /// Simulated seconds since start (shows `time_scale` at work).
    SimulatedTime,
    /// Ground truth, 0…1: hidden from the sensors, served for judging models.
    LabelBearingDegradation,
    /// Ground truth: 0 healthy, 1 incipient, 2 severe, 3 failed.
    LabelFaultState,
    LabelBearingsReplaced,
}

impl SpindleVariable {
    pub const ALL: [SpindleVariable; 13] = [
        SpindleVariable::Running,
        SpindleVariable::SpeedSetpoint,
        SpindleVariable::Speed,
        SpindleVariable::Load,
        SpindleVariable::MotorCurrent,
        SpindleVariable::BearingTemperature,
        SpindleVariable::Vibration,
        SpindleVariable::RunHours,
        SpindleVariable::OvertempAlarm,
        SpindleVariable::SimulatedTime,
        SpindleVariable::LabelBearingDegradation,
        SpindleVariable::LabelFaultState,
        SpindleVariable::LabelBearingsReplaced,
    ];

    /// The string NodeId (and browse path): `Spindle.Speed`.
    pub fn node_id(self) -> &'static str {
        match self {
            SpindleVariable::Running => "Spindle.Running",
            SpindleVariable::SpeedSetpoint => "Spindle.SpeedSetpoint",
            SpindleVariable::Speed => "Spindle.Speed",
            SpindleVariable::Load => "Spindle.Load",
            SpindleVariable::MotorCurrent => "Spindle.MotorCurrent",
            SpindleVariable::BearingTemperature => "Spindle.BearingTemperature",
            SpindleVariable::Vibration => "Spindle.Vibration",
            SpindleVariable::RunHours => "Spindle.RunHours",
            SpindleVariable::OvertempAlarm => "Spindle.OvertempAlarm",
            SpindleVariable::SimulatedTime => "Spindle.SimulatedTime",
            SpindleVariable::LabelBearingDegradation => "Spindle.Label.BearingDegradation",
            SpindleVariable::LabelFaultState => "Spindle.Label.FaultState",
            SpindleVariable::LabelBearingsReplaced => "Spindle.Label.BearingsReplaced",
        }
    }

    pub fn browse_name(self) -> &'static str {
        let id = self.node_id();
        id.rsplit('.').next().unwrap_or(id)
    }

    fn parent(self) -> &'static str {
        let id = self.node_id();
        id.rsplit_once('.').map_or(ROOT_NAME, |(parent, _)| parent)
    }

    pub fn kind(self) -> ValueKind {
        match self {
            SpindleVariable::Running | SpindleVariable::OvertempAlarm => ValueKind::Boolean,
            SpindleVariable::LabelFaultState => ValueKind::Int32,
            SpindleVariable::LabelBearingsReplaced => ValueKind::UInt32,
            _ => ValueKind::Double,
        }
    }

    pub fn unit(self) -> Option<EngineeringUnit> {
        match self {
            SpindleVariable::SpeedSetpoint | SpindleVariable::Speed => Some(RPM),
            SpindleVariable::Load => Some(PERCENT),
            SpindleVariable::MotorCurrent => Some(AMPERE),
            SpindleVariable::BearingTemperature => Some(CELSIUS),
            SpindleVariable::Vibration => Some(MM_PER_S),
            SpindleVariable::RunHours => Some(HOUR),
            SpindleVariable::SimulatedTime => Some(SECOND),
            _ => None,
        }
    }

    /// NodeId string of the variable's EngineeringUnits property.
    pub fn units_node_id(self) -> String {
        format!("{}.EngineeringUnits", self.node_id())
    }

    pub fn value(self, state: &SpindleState) -> Variant {
        match self {
            SpindleVariable::Running => Variant::from(state.running),
            SpindleVariable::SpeedSetpoint => Variant::from(state.speed_setpoint_rpm),
            SpindleVariable::Speed => Variant::from(state.speed_rpm),
            SpindleVariable::Load => Variant::from(state.load_pct),
            SpindleVariable::MotorCurrent => Variant::from(state.motor_current_a),
            SpindleVariable::BearingTemperature => Variant::from(state.bearing_temp_c),
            SpindleVariable::Vibration => Variant::from(state.vibration_mm_s),
            SpindleVariable::RunHours => Variant::from(state.run_hours),
            SpindleVariable::OvertempAlarm => Variant::from(state.overtemp_alarm),
            SpindleVariable::SimulatedTime => Variant::from(state.time_s),
            SpindleVariable::LabelBearingDegradation => Variant::from(state.bearing_degradation),
            SpindleVariable::LabelFaultState => Variant::from(state.fault_state.code()),
            SpindleVariable::LabelBearingsReplaced => Variant::from(state.bearings_replaced),
        }
    }

    fn by_node_id(node_id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.node_id() == node_id)
    }
}

/// A username/password login. `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct OpcUaUser {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for OpcUaUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpcUaUser")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// async-opcua's own default for a server's concurrent sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 20;

/// How the OPC UA machine runs.
#[derive(Debug, Clone, PartialEq)]
pub struct OpcUaOptions {
    /// Seed of the spindle; the state sequence (per step) depends only on
    /// it, `time_scale`, `step_ms` and `spindle`.
    pub seed: u64,
    /// Simulated seconds per wall-clock second (jobs, heat, degradation).
    pub time_scale: f64,
    /// Wall-clock milliseconds between steps.
    pub step_ms: u64,
    /// Start with stepping paused (see [`OpcUaMachine::resume`]).
    pub start_paused: bool,
    pub spindle: SpindleConfig,
    /// Where the server certificate is made on first start (`own/`,
    /// `private/`) and client certificates are trusted or rejected.
    pub pki_dir: PathBuf,
    /// Logins of the SignAndEncrypt endpoints; at least one.
    pub users: Vec<OpcUaUser>,
    /// Also serve an anonymous SecurityPolicy None endpoint.
    pub insecure_endpoint: bool,
    /// Trust every client certificate (tests: their certificate is new).
    pub trust_client_certs: bool,
    /// Drop, restart and delete-node faults; empty by default.
    pub faults: FaultSchedule,
    /// Sessions the server holds at once (async-opcua's default, 20). A
    /// client cut off by the network leaves its session behind until the
    /// session timeout, as on a real server; a test that cuts thousands of
    /// connections a minute raises this.
    pub max_sessions: usize,
}

impl OpcUaOptions {
    /// Defaults (seed 7, real time, 100 ms steps, secure endpoints only, no
    /// faults) with the certificate in `pki_dir` and one user.
    pub fn new(pki_dir: impl Into<PathBuf>, user: OpcUaUser) -> Self {
        Self {
            seed: 7,
            time_scale: 1.0,
            step_ms: 100,
            start_paused: false,
            spindle: SpindleConfig::default(),
            pki_dir: pki_dir.into(),
            users: vec![user],
            insecure_endpoint: false,
            trust_client_certs: false,
            faults: FaultSchedule::default(),
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }

    /// Simulated seconds per step.
    pub fn step_seconds(&self) -> f64 {
        self.step_ms as f64 / 1000.0 * self.time_scale
    }

    fn validate(&self) -> Result<(), SimError> {
        let invalid = |name: &'static str, reason: String| SimError::InvalidOption { name, reason };
        if self.step_ms == 0 {
            return Err(invalid("step_ms", "must be at least 1".into()));
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(invalid(
                "time_scale",
                format!("must be a positive number, got {}", self.time_scale),
            ));
        }
        if !(0.0..=1.0).contains(&self.spindle.initial_degradation) {
            return Err(invalid(
                "initial_degradation",
                format!(
                    "must be in [0, 1], got {}",
                    self.spindle.initial_degradation
                ),
            ));
        }
        if !(self.spindle.bearing_signature.is_finite() && self.spindle.bearing_signature > 0.0) {
            return Err(invalid(
                "bearing_signature",
                format!(
                    "must be a positive number, got {}",
                    self.spindle.bearing_signature
                ),
            ));
        }
        if self.users.is_empty() {
            return Err(invalid(
                "users",
                "at least one username/password login is needed".into(),
            ));
        }
        for user in &self.users {
            if user.username.trim().is_empty() || user.password.is_empty() {
                return Err(invalid(
                    "users",
                    format!("user {:?} needs a name and a password", user.username),
                ));
            }
        }
        self.faults.check_protocol(Protocol::OpcUa)?;
        for fault in self.faults.faults() {
            if let crate::faults::Fault::DeleteNode { node, .. } = fault {
                if SpindleVariable::by_node_id(node).is_none() {
                    return Err(SimError::Faults(format!(
                        "delete-node: {node:?} is not a variable of the spindle"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// One published step of the spindle.
#[derive(Debug, Clone, PartialEq)]
pub struct SpindleSnapshot {
    /// Steps taken since start (0 = initial state).
    pub step: u64,
    pub state: SpindleState,
}

/// What the server side is doing, for tests and logs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpcUaStatus {
    /// The server is running and accepting connections.
    pub up: bool,
    /// Drop faults begun so far.
    pub drops: u64,
    /// Restart faults begun so far.
    pub restarts: u64,
    /// Index of [`NAMESPACE_URI`] in the running server (the last one while
    /// down).
    pub namespace_index: Option<u16>,
    /// `opc.tcp://host:port/` of the endpoints.
    pub endpoint_url: Option<String>,
    /// NodeIds deleted by delete-node faults.
    pub deleted_nodes: BTreeSet<String>,
}

struct Stepper {
    spindle: Spindle,
    step: u64,
    paused: bool,
}

struct Shared {
    options: OpcUaOptions,
    // Stepping and publishing happen under this lock, so after `pause`
    // returns no further step is published.
    stepper: Mutex<Stepper>,
    snapshots: watch::Sender<Arc<SpindleSnapshot>>,
    status: watch::Sender<OpcUaStatus>,
}

/// The simulated spindle served over OPC UA. Cheap to clone (all clones
/// drive the same machine).
#[derive(Clone)]
pub struct OpcUaMachine {
    shared: Arc<Shared>,
}

impl OpcUaMachine {
    pub fn new(options: OpcUaOptions) -> Result<Self, SimError> {
        options.validate()?;
        let spindle = Spindle::new(options.seed, options.spindle.clone());
        let first = Arc::new(SpindleSnapshot {
            step: 0,
            state: spindle.state().clone(),
        });
        let stepper = Stepper {
            spindle,
            step: 0,
            paused: options.start_paused,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                options,
                stepper: Mutex::new(stepper),
                snapshots: watch::Sender::new(first),
                status: watch::Sender::new(OpcUaStatus::default()),
            }),
        })
    }

    pub fn options(&self) -> &OpcUaOptions {
        &self.shared.options
    }

    /// The state the variables currently show.
    pub fn snapshot(&self) -> Arc<SpindleSnapshot> {
        self.shared.snapshots.borrow().clone()
    }

    /// Notified on every published step.
    pub fn subscribe(&self) -> watch::Receiver<Arc<SpindleSnapshot>> {
        self.shared.snapshots.subscribe()
    }

    /// The server's state: up or down, namespace index, faults so far.
    pub fn status(&self) -> watch::Receiver<OpcUaStatus> {
        self.shared.status.subscribe()
    }

    /// Stops the timed stepping; the variables keep the current values.
    pub fn pause(&self) {
        self.lock_stepper().paused = true;
    }

    /// Restarts the timed stepping.
    pub fn resume(&self) {
        self.lock_stepper().paused = false;
    }

    /// Takes `steps` steps now (paused or not) and returns the snapshot
    /// published after the last one.
    pub fn advance(&self, steps: u64) -> Arc<SpindleSnapshot> {
        let mut stepper = self.lock_stepper();
        for _ in 0..steps {
            self.step_locked(&mut stepper);
        }
        self.snapshot()
    }

    /// Serves OPC UA on `listener` (its address is advertised in the
    /// endpoints) and steps the spindle until `cancel` fires. Makes the
    /// server certificate in the PKI folder first if there is none.
    pub async fn serve(
        &self,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> Result<(), SimError> {
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: "the given listener".into(),
            source,
        })?;
        let host = advertised_host(addr.ip());
        let endpoint_url = format!("opc.tcp://{host}:{}{ENDPOINT_PATH}", addr.port());
        let application_uri = format!("{PRODUCT_URI}:server:{}", hostname());
        ensure_server_certificate(&self.shared.options.pki_dir, &application_uri, &host)?;
        let site = Site {
            addr,
            host,
            endpoint_url,
            application_uri,
        };
        let result = tokio::select! {
            () = self.run_stepping() => Ok(()),
            result = self.run_servers(listener, &site, cancel) => result,
        };
        self.shared.status.send_modify(|status| status.up = false);
        result
    }

    /// Runs one server after the other: each lives until a drop or restart
    /// fault (or `cancel`), then the link stays down as long as the faults
    /// say.
    async fn run_servers(
        &self,
        listener: TcpListener,
        site: &Site,
        cancel: CancellationToken,
    ) -> Result<(), SimError> {
        let clock = FaultClock::start();
        let mut timeline = self.shared.options.faults.timeline();
        let mut snapshots = self.subscribe();
        let mut incarnation = 0u64;
        let mut deleted = BTreeSet::new();
        let mut next_listener = Some(listener);
        loop {
            let listener = match next_listener.take() {
                Some(listener) => listener,
                None => rebind(site.addr).await?,
            };
            let mut server = self.start_server(listener, site, incarnation, &deleted)?;
            self.shared.status.send_modify(|status| {
                status.up = true;
                status.namespace_index = Some(server.namespace_index);
                status.endpoint_url = Some(site.endpoint_url.clone());
            });
            tracing::info!(
                url = %site.endpoint_url,
                namespace_index = server.namespace_index,
                incarnation,
                "OPC UA spindle serving"
            );

            // Up: publish every step, act on due faults.
            let mut down_until = None;
            let mut restart = false;
            while down_until.is_none() {
                tokio::select! {
                    () = cancel.cancelled() => {
                        server.stop().await;
                        return Ok(());
                    }
                    changed = snapshots.changed() => {
                        if changed.is_err() {
                            // The sender lives in `self`; cannot happen.
                            return Ok(());
                        }
                        let snapshot = snapshots.borrow_and_update().clone();
                        server.publish(&snapshot.state, &deleted);
                    }
                    () = clock.sleep_until_s(timeline.next_at()) => {
                        while let Some((at, event)) = timeline.pop_due(clock.now_s()) {
                            self.note_event(at, event, &mut down_until, &mut restart, &mut deleted, Some(&server));
                        }
                    }
                    ended = &mut server.task => {
                        let reason = match ended {
                            Ok(Ok(())) => "stopped by itself".to_string(),
                            Ok(Err(message)) => message,
                            Err(join) => join.to_string(),
                        };
                        return Err(SimError::OpcUa(format!("the server ended unexpectedly: {reason}")));
                    }
                }
            }

            // Down: the listener closes with the server; faults keep coming.
            server.stop().await;
            self.shared.status.send_modify(|status| status.up = false);
            let mut until = down_until.unwrap_or(0.0);
            loop {
                let mut extended = Some(until);
                while let Some((at, event)) = timeline.pop_due(until.max(clock.now_s())) {
                    self.note_event(at, event, &mut extended, &mut restart, &mut deleted, None);
                }
                until = extended.unwrap_or(until);
                if clock.now_s() >= until {
                    break;
                }
                tracing::info!(until_s = until, restart, "OPC UA server down (fault)");
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = clock.sleep_until_s(Some(until)) => {}
                }
            }
            if restart {
                incarnation += 1;
            }
        }
    }

    /// Applies one due fault event: a drop or restart sets (or lengthens)
    /// the outage, a deletion takes the node out of `server` if it runs.
    fn note_event(
        &self,
        at_s: f64,
        event: Event,
        down_until: &mut Option<f64>,
        restart: &mut bool,
        deleted: &mut BTreeSet<String>,
        server: Option<&RunningServer>,
    ) {
        let mut extend = |end: f64| {
            *down_until = Some(down_until.map_or(end, |until| until.max(end)));
        };
        match event {
            Event::Drop { for_s } => {
                tracing::info!(at_s, for_s, "drop fault");
                self.shared.status.send_modify(|status| status.drops += 1);
                extend(at_s + for_s);
            }
            Event::Restart { down_s } => {
                tracing::info!(at_s, down_s, "restart fault");
                self.shared
                    .status
                    .send_modify(|status| status.restarts += 1);
                *restart = true;
                extend(at_s + down_s);
            }
            Event::DeleteNode(node) => {
                tracing::info!(at_s, node, "delete-node fault");
                if let Some(server) = server {
                    server.delete_variable(&node);
                }
                deleted.insert(node.clone());
                self.shared.status.send_modify(|status| {
                    status.deleted_nodes.insert(node);
                });
            }
        }
    }

    /// Builds a server for `incarnation` (its number of padding namespaces
    /// alternates between 1 and 2, so every restart moves the spindle's
    /// namespace index), fills its address space and starts it.
    fn start_server(
        &self,
        listener: TcpListener,
        site: &Site,
        incarnation: u64,
        deleted: &BTreeSet<String>,
    ) -> Result<RunningServer, SimError> {
        let options = &self.shared.options;
        let token = CancellationToken::new();
        let mut builder = ServerBuilder::new()
            .application_name(APPLICATION_NAME)
            .application_uri(site.application_uri.clone())
            .product_uri(PRODUCT_URI)
            .pki_dir(options.pki_dir.clone())
            .create_sample_keypair(false)
            .trust_client_certs(options.trust_client_certs)
            .check_cert_time(true)
            .max_sessions(options.max_sessions)
            .host(site.host.clone())
            .port(site.addr.port())
            .discovery_urls(vec![site.endpoint_url.clone()])
            .token(token.clone());
        let paddings = 1 + incarnation % 2;
        for i in 0..paddings {
            let uri = if i == 0 {
                PADDING_NAMESPACE_URI.to_string()
            } else {
                format!("{PADDING_NAMESPACE_URI}:{}", i + 1)
            };
            builder = builder.with_node_manager(simple_node_manager(
                NamespaceMetadata {
                    namespace_uri: uri,
                    ..Default::default()
                },
                &format!("padding-{i}"),
            ));
        }
        builder = builder.with_node_manager(simple_node_manager(
            NamespaceMetadata {
                namespace_uri: NAMESPACE_URI.to_string(),
                ..Default::default()
            },
            SPINDLE_NODE_MANAGER,
        ));

        let mut user_token_ids = Vec::new();
        for (i, user) in options.users.iter().enumerate() {
            let token_id = format!("user{i}");
            builder = builder.add_user_token(
                token_id.clone(),
                ServerUserToken::user_pass(user.username.clone(), user.password.clone()),
            );
            user_token_ids.push(token_id);
        }
        for (name, policy) in [
            ("Basic256Sha256", SecurityPolicy::Basic256Sha256),
            ("Aes128Sha256RsaOaep", SecurityPolicy::Aes128Sha256RsaOaep),
            ("Aes256Sha256RsaPss", SecurityPolicy::Aes256Sha256RsaPss),
        ] {
            builder = builder.add_endpoint(
                format!("{name}_sign_encrypt"),
                ServerEndpoint::new(
                    ENDPOINT_PATH,
                    policy,
                    MessageSecurityMode::SignAndEncrypt,
                    &user_token_ids,
                ),
            );
        }
        if options.insecure_endpoint {
            // Anonymous only: a password over SecurityPolicy None would
            // travel in clear text.
            builder = builder.add_endpoint(
                "none",
                ServerEndpoint::new_none(ENDPOINT_PATH, &[ANONYMOUS_USER_TOKEN_ID.to_string()]),
            );
        }

        let (server, handle) = builder.build().map_err(SimError::OpcUa)?;
        let node_manager = handle
            .node_managers()
            .get_by_name::<SimpleNodeManager>(SPINDLE_NODE_MANAGER)
            .ok_or_else(|| SimError::OpcUa("the spindle's node manager is missing".into()))?;
        let namespace_index = handle
            .get_namespace_index(NAMESPACE_URI)
            .ok_or_else(|| SimError::OpcUa(format!("namespace {NAMESPACE_URI} is missing")))?;
        {
            let mut space = node_manager.address_space().write();
            build_address_space(&mut space, namespace_index, deleted);
        }
        let task = tokio::spawn(server.run_with(listener));
        let running = RunningServer {
            node_manager,
            handle,
            namespace_index,
            token,
            task,
        };
        // Readable at once, not only after the next step.
        running.publish(&self.snapshot().state, deleted);
        Ok(running)
    }

    async fn run_stepping(&self) {
        let mut ticks = tokio::time::interval(Duration::from_millis(self.shared.options.step_ms));
        // A late tick must not burst several steps: keep the step rate steady.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let mut stepper = self.lock_stepper();
            if !stepper.paused {
                self.step_locked(&mut stepper);
            }
        }
    }

    fn step_locked(&self, stepper: &mut Stepper) {
        let state = stepper
            .spindle
            .step(self.shared.options.step_seconds())
            .clone();
        stepper.step += 1;
        self.shared
            .snapshots
            .send_replace(Arc::new(SpindleSnapshot {
                step: stepper.step,
                state,
            }));
    }

    fn lock_stepper(&self) -> MutexGuard<'_, Stepper> {
        // Every step is published whole or not at all, so a lock poisoned
        // by a panic elsewhere still guards a consistent spindle.
        self.shared
            .stepper
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs an OPC UA spindle with `options` on `listener` until `cancel` fires.
///
/// For access to its state (snapshot, status, pause) create an
/// [`OpcUaMachine`] and call [`OpcUaMachine::serve`] instead.
pub async fn serve_opcua(
    listener: TcpListener,
    options: OpcUaOptions,
    cancel: CancellationToken,
) -> Result<(), SimError> {
    OpcUaMachine::new(options)?.serve(listener, cancel).await
}

const SPINDLE_NODE_MANAGER: &str = "spindle";

/// Where the server listens and what it calls itself.
struct Site {
    addr: SocketAddr,
    host: String,
    endpoint_url: String,
    application_uri: String,
}

/// One started server.
struct RunningServer {
    node_manager: Arc<SimpleNodeManager>,
    handle: ServerHandle,
    namespace_index: u16,
    token: CancellationToken,
    task: JoinHandle<Result<(), String>>,
}

impl RunningServer {
    /// Sets every variable that still exists; subscribers are notified.
    fn publish(&self, state: &SpindleState, deleted: &BTreeSet<String>) {
        let now = DateTime::now();
        let ids: Vec<(SpindleVariable, NodeId)> = SpindleVariable::ALL
            .into_iter()
            .filter(|v| !deleted.contains(v.node_id()))
            .map(|v| (v, NodeId::new(self.namespace_index, v.node_id())))
            .collect();
        let values = ids.iter().map(|(variable, id)| {
            let value = DataValue {
                value: Some(variable.value(state)),
                status: Some(StatusCode::Good),
                source_timestamp: Some(now),
                server_timestamp: Some(now),
                ..DataValue::null()
            };
            (id, None, value)
        });
        if let Err(status) = self
            .node_manager
            .set_values(self.handle.subscriptions(), values)
        {
            // Only nodes this module built (and did not delete) are set.
            tracing::error!(%status, "cannot set the spindle's values");
        }
    }

    fn delete_variable(&self, node: &str) {
        let Some(variable) = SpindleVariable::by_node_id(node) else {
            return;
        };
        let mut space = self.node_manager.address_space().write();
        space.delete(
            &NodeId::new(self.namespace_index, variable.units_node_id()),
            true,
        );
        space.delete(&NodeId::new(self.namespace_index, variable.node_id()), true);
    }

    /// Stops the server: sessions and connections close, the listener is
    /// dropped with the server's task.
    async fn stop(&mut self) {
        self.token.cancel();
        match tokio::time::timeout(STOP_GRACE, &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(message))) => tracing::warn!(message, "OPC UA server stopped with an error"),
            Ok(Err(join)) => tracing::warn!(%join, "OPC UA server task failed"),
            Err(_) => {
                tracing::warn!("OPC UA server did not stop in time; aborting it");
                self.task.abort();
                let _ = (&mut self.task).await;
            }
        }
    }
}

/// Objects/Spindle with its variables, Objects/Spindle/Label with the
/// ground truth; every numeric variable with a unit gets an
/// EngineeringUnits property.
fn build_address_space(space: &mut AddressSpace, ns: u16, deleted: &BTreeSet<String>) {
    let root = NodeId::new(ns, ROOT_NAME);
    ObjectBuilder::new(&root, QualifiedName::new(ns, ROOT_NAME), ROOT_NAME)
        .has_type_definition(ObjectTypeId::BaseObjectType)
        .organized_by(ObjectId::ObjectsFolder)
        .insert(space);
    let label_id = format!("{ROOT_NAME}.Label");
    ObjectBuilder::new(
        &NodeId::new(ns, label_id.as_str()),
        QualifiedName::new(ns, "Label"),
        "Label",
    )
    .description("Ground truth of the simulation, for judging models; no real machine has these")
    .has_type_definition(ObjectTypeId::BaseObjectType)
    .component_of(root.clone())
    .insert(space);

    for variable in SpindleVariable::ALL {
        if deleted.contains(variable.node_id()) {
            continue;
        }
        let id = NodeId::new(ns, variable.node_id());
        let type_definition = if variable.unit().is_some() {
            VariableTypeId::AnalogUnitType
        } else {
            VariableTypeId::BaseDataVariableType
        };
        VariableBuilder::new(
            &id,
            QualifiedName::new(ns, variable.browse_name()),
            variable.browse_name(),
        )
        .data_type(variable.kind().data_type())
        .value_rank(-1)
        .access_level(AccessLevel::CURRENT_READ)
        .user_access_level(AccessLevel::CURRENT_READ)
        .has_type_definition(type_definition)
        .component_of(NodeId::new(ns, variable.parent()))
        .insert(space);
        // An explicit empty value: async-opcua 0.19 reports a DataValue
        // without a value as Good, dropping its status.
        if let Some(opcua::server::address_space::NodeType::Variable(node)) = space.find_mut(&id) {
            node.set_data_value(DataValue {
                value: Some(Variant::Empty),
                status: Some(StatusCode::BadWaitingForInitialData),
                ..DataValue::null()
            });
        }
        if let Some(unit) = variable.unit() {
            let units_id = NodeId::new(ns, variable.units_node_id());
            VariableBuilder::new(
                &units_id,
                QualifiedName::new(0, "EngineeringUnits"),
                "EngineeringUnits",
            )
            .data_type(DataTypeId::EUInformation)
            .value_rank(-1)
            .access_level(AccessLevel::CURRENT_READ)
            .user_access_level(AccessLevel::CURRENT_READ)
            .has_type_definition(VariableTypeId::PropertyType)
            .property_of(id.clone())
            .value(Variant::from(unit.eu_information()))
            .insert(space);
        }
    }
}

/// The host clients should use: the bound address, or this machine's name
/// for a wildcard bind.
fn advertised_host(ip: IpAddr) -> String {
    if ip.is_unspecified() {
        hostname()
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

fn hostname() -> String {
    opcua::crypto::hostname().unwrap_or_else(|_| "localhost".to_string())
}

/// Creates the server's self-signed certificate and key in `pki_dir` unless
/// both exist, and the `trusted/` and `rejected/` folders.
fn ensure_server_certificate(
    pki_dir: &Path,
    application_uri: &str,
    advertised_host: &str,
) -> Result<(), SimError> {
    let fail = |message: String| SimError::Certificate {
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
        application_name: LocalizedText::new("", APPLICATION_NAME),
        application_type: ApplicationType::Server,
        gateway_server_uri: UAString::null(),
        discovery_profile_uri: UAString::null(),
        discovery_urls: None,
    };
    let host = advertised_host
        .trim_start_matches('[')
        .trim_end_matches(']');
    let mut x509 = X509Data::from((description, Some(vec![host.to_string()])));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_ids_follow_part_8() {
        // The examples of OPC UA Part 8, 5.6.3.
        assert_eq!(CELSIUS.unit_id(), 4_408_652);
        assert_eq!(PERCENT.unit_id(), 0x5031);
    }

    #[test]
    fn node_ids_are_unique_dotted_paths_below_the_root() {
        let mut seen = BTreeSet::new();
        for variable in SpindleVariable::ALL {
            assert!(seen.insert(variable.node_id()), "{variable:?} twice");
            assert!(variable.node_id().starts_with("Spindle."));
            assert_eq!(
                format!("{}.{}", variable.parent(), variable.browse_name()),
                variable.node_id()
            );
            assert_eq!(
                SpindleVariable::by_node_id(variable.node_id()),
                Some(variable)
            );
        }
    }

    #[test]
    fn options_need_a_login_and_known_nodes_to_delete() {
        let user = OpcUaUser {
            username: "operator".into(),
            password: "secret".into(),
        };
        let mut options = OpcUaOptions::new("pki", user);
        assert!(options.validate().is_ok());
        options.users[0].password.clear();
        assert!(options.validate().is_err());
        options.users.clear();
        assert!(options.validate().is_err());

        let mut options = OpcUaOptions::new(
            "pki",
            OpcUaUser {
                username: "operator".into(),
                password: "secret".into(),
            },
        );
        options.faults = FaultSchedule::new(vec![crate::faults::Fault::parse_cli(
            "delete-node:node=Spindle.Nothing,at_s=1",
        )
        .unwrap_or_else(|e| panic!("{e}"))]);
        assert!(matches!(options.validate(), Err(SimError::Faults(_))));
        options.faults =
            FaultSchedule::new(vec![crate::faults::Fault::parse_cli("exception:code=2")
                .unwrap_or_else(|e| panic!("{e}"))]);
        assert!(matches!(options.validate(), Err(SimError::Faults(_))));
    }

    #[test]
    fn a_debug_print_hides_the_password() {
        let user = OpcUaUser {
            username: "operator".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{user:?}").contains("hunter2"));
    }
}
