//! An asyncua OPC UA server (`tests/peers/opcua_server.py`) as a test's
//! machine, and the layout it serves: variables with the value rules the peer
//! itself follows, its namespace index, its certificate.
//!
//! Like [`crate::modbus_peer`]: the peer binds, then writes its layout file;
//! the file's appearance is the readiness signal. Restarts keep the port and
//! the server certificate (a client that trusted the machine once keeps
//! trusting it), and may change the options (another namespace position, a
//! variable gone, a user, ...).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ironbridge_connectors::{Quality, TagValue};
use serde::Deserialize;

use crate::paths::{peer_script, venv_python};
use crate::process::ChildGuard;

/// How long a peer may take to start listening (Python imports and asyncua's
/// standard address space are slow on a busy 2-core machine).
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a SIGTERM may take before the peer is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// The URI of the machine's namespace; its index is the peer's
/// `namespace_position` option.
pub const MACHINE_NAMESPACE: &str = "urn:ironbridge:test:machine";

/// How the peer is started. `Default`: anonymous only, secure endpoints
/// only, any client certificate accepted, namespace at index 3, every
/// variable present.
#[derive(Debug, Clone)]
pub struct OpcUaPeerOptions {
    /// Index of [`MACHINE_NAMESPACE`] in the server's namespace array (>= 2;
    /// padding namespaces fill the indexes below).
    pub namespace_position: u16,
    /// `(user, password)`: the only login accepted; anonymous refused.
    pub user: Option<(String, String)>,
    /// Only an X.509 user identity with the certificate the peer keeps in
    /// this directory (`user_cert.der`, key `user_key.pem`, made if absent)
    /// is accepted; anonymous and user names refused.
    pub user_cert_dir: Option<PathBuf>,
    /// Also offer SecurityPolicy None (and accept sessions on it).
    pub insecure: bool,
    /// Accept only the client certificates in this directory (exact DER/PEM
    /// files, re-read for every session) whose SAN URI is the client's
    /// ApplicationUri. `None`: any client certificate.
    pub trusted_client_certs: Option<PathBuf>,
    /// Variables to leave out, as `s=Line.Blob`, `i=5001` or `nsu=...;s=...`.
    pub omit_nodes: Vec<String>,
    /// Variables to delete `delete_after` after the peer is ready.
    pub delete_nodes: Vec<String>,
    pub delete_after: Option<Duration>,
    /// Make a new server key and certificate at this start.
    pub regenerate_cert: bool,
    /// The server's ApplicationUri (default `urn:ironbridge:test:opcua-server`).
    pub app_uri: Option<String>,
    /// Period of the changing values (default 50 ms).
    pub tick_ms: Option<u64>,
}

impl Default for OpcUaPeerOptions {
    fn default() -> Self {
        Self {
            namespace_position: 3,
            user: None,
            user_cert_dir: None,
            insecure: false,
            trusted_client_certs: None,
            omit_nodes: Vec::new(),
            delete_nodes: Vec::new(),
            delete_after: None,
            regenerate_cert: false,
            app_uri: None,
            tick_ms: None,
        }
    }
}

impl OpcUaPeerOptions {
    /// Default options with a user/password login.
    pub fn with_user(user: &str, password: &str) -> Self {
        Self {
            user: Some((user.to_string(), password.to_string())),
            ..Self::default()
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--namespace-position".to_string(),
            self.namespace_position.to_string(),
        ];
        if let Some((user, password)) = &self.user {
            args.extend(["--user".into(), user.clone()]);
            args.extend(["--password".into(), password.clone()]);
        }
        if let Some(dir) = &self.user_cert_dir {
            args.extend(["--user-cert".into(), dir.display().to_string()]);
        }
        if self.insecure {
            args.push("--insecure".into());
        }
        if let Some(dir) = &self.trusted_client_certs {
            args.push("--trusted-client-certs".into());
            args.push(dir.display().to_string());
        }
        for node in &self.omit_nodes {
            args.extend(["--omit-node".into(), node.clone()]);
        }
        for node in &self.delete_nodes {
            args.extend(["--delete-node".into(), node.clone()]);
        }
        if let Some(after) = self.delete_after {
            args.extend(["--delete-after-s".into(), after.as_secs_f64().to_string()]);
        }
        if self.regenerate_cert {
            args.push("--regenerate-cert".into());
        }
        if let Some(uri) = &self.app_uri {
            args.extend(["--app-uri".into(), uri.clone()]);
        }
        if let Some(ms) = self.tick_ms {
            args.extend(["--tick-ms".into(), ms.to_string()]);
        }
        args
    }
}

/// What the peer serves, as it wrote it.
#[derive(Debug, Clone, Deserialize)]
pub struct OpcUaLayout {
    /// The port the peer bound (it writes the layout only once it listens).
    pub port: u16,
    /// `opc.tcp://127.0.0.1:PORT/ironbridge/machine`.
    pub endpoint_url: String,
    /// The server's ApplicationUri (namespace 1, and the certificate's SAN URI).
    pub application_uri: String,
    pub namespace_uri: String,
    pub namespace_index: u16,
    pub namespace_array: Vec<String>,
    pub security: PeerSecurity,
    /// The server certificate (DER), the same across restarts.
    pub server_cert: PathBuf,
    /// SHA-1 of the certificate's DER, the OPC UA thumbprint, lower-case hex.
    pub server_cert_sha1: String,
    /// Whether this start made a new certificate.
    pub server_cert_created: bool,
    /// Period of the changing values: tick `k` is about `k * tick_ms` after
    /// the start (a rate, never a bound a test may assert).
    pub tick_ms: u64,
    pub pid: u32,
    /// Every variable the peer knows, including omitted ones (`present`
    /// false), in a fixed order.
    pub nodes: Vec<OpcUaNode>,
}

impl OpcUaLayout {
    /// The variable named `name` (`Line.Speed`, ...).
    pub fn node(&self, name: &str) -> anyhow::Result<&OpcUaNode> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow::anyhow!("the peer serves no {name}"))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PeerSecurity {
    /// asyncua names: `Basic256Sha256`, `Aes128Sha256RsaOaep`, `Aes256Sha256RsaPss`.
    pub policies: Vec<String>,
    /// The same as OPC UA policy URIs, as in the endpoints.
    pub policy_uris: Vec<String>,
    /// `SignAndEncrypt`, for every secure endpoint.
    pub mode: String,
    /// SecurityPolicy None offered too.
    pub insecure: bool,
    pub user: Option<String>,
    /// The X.509 user certificate (DER) and key (PEM) the peer accepts, with
    /// `--user-cert`.
    pub user_cert: Option<PathBuf>,
    pub user_key: Option<PathBuf>,
    /// Anonymous login accepted (exactly when no user is configured).
    pub anonymous: bool,
    pub client_certs: ClientCerts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCerts {
    /// Any client certificate is accepted, unchecked.
    Any,
    /// Only those in `trusted_client_certs`.
    Trusted,
}

/// One variable of the machine.
#[derive(Debug, Clone, Deserialize)]
pub struct OpcUaNode {
    /// `Line.Speed`.
    pub name: String,
    /// Browse names from the Objects folder: `Line/Speed`.
    pub browse_path: String,
    /// `nsu=urn:ironbridge:test:machine;s=Line.Speed`: stable across
    /// restarts whatever the namespace index.
    pub node_id: String,
    /// `ns=3;s=Line.Speed`: valid for this start only.
    pub node_id_ns: String,
    /// OPC UA built-in type name: `Double`, `Float`, `UInt32`, `Int64`,
    /// `Int32`, `Int16`, `UInt16`, `Boolean`, `String`, `ByteString`.
    pub data_type: String,
    /// The `EngineeringUnits` property, if the variable has one.
    pub unit: Option<EngineeringUnit>,
    pub rule: ValueRule,
    pub status: PeerStatus,
    /// A SourceTimestamp the peer set explicitly (µs since the Unix epoch);
    /// `None`: the peer's clock at the write.
    pub source_timestamp_us: Option<i64>,
    /// Served at this start (not omitted).
    pub present: bool,
    /// Deleted this long after the layout was written.
    pub delete_after_s: Option<f64>,
}

/// EUInformation (OPC UA Part 8), e.g. UNECE `CEL` for degree Celsius.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EngineeringUnit {
    pub namespace_uri: String,
    pub unit_id: i32,
    pub display_name: String,
    pub description: String,
}

/// The StatusCode a variable reads with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PeerStatus {
    /// `Good`, `UncertainSensorNotAccurate`, `BadSensorFailure`.
    pub name: String,
    pub code: u32,
}

impl PeerStatus {
    /// The severity bits of the code (Part 4 7.39).
    pub fn quality(&self) -> Quality {
        match self.code >> 30 {
            0 => Quality::Good,
            1 => Quality::Uncertain,
            _ => Quality::Bad,
        }
    }
}

/// How a variable's value follows the peer's tick `k` (0 at the start,
/// +1 every `tick_ms`). Sawtooth offset and step are exact binary fractions,
/// so `offset + step * (k % period_ticks)` has the same bits here as there.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueRule {
    Constant(PeerValue),
    Sawtooth {
        offset: f64,
        step: f64,
        period_ticks: u64,
    },
    /// `start + step * k` (a UInt32 here).
    Counter {
        start: u64,
        step: u64,
    },
}

impl ValueRule {
    /// The value at tick `k`.
    pub fn value_at(&self, k: u64) -> PeerValue {
        match self {
            ValueRule::Constant(v) => v.clone(),
            ValueRule::Sawtooth {
                offset,
                step,
                period_ticks,
            } => PeerValue::float(offset + step * (k % period_ticks) as f64),
            ValueRule::Counter { start, step } => PeerValue::Uint(start + step * k),
        }
    }

    /// The tick (modulo the period for a sawtooth) at which the peer serves
    /// `value`, if it ever does.
    pub fn tick_of(&self, value: &PeerValue) -> Option<u64> {
        match (self, value) {
            (ValueRule::Constant(c), v) => (c == v).then_some(0),
            (ValueRule::Sawtooth { period_ticks, .. }, PeerValue::Float { .. }) => {
                (0..*period_ticks).find(|k| self.value_at(*k) == *value)
            }
            (ValueRule::Counter { start, step }, PeerValue::Uint(v)) => {
                (*v >= *start && (v - start) % step == 0).then(|| (v - start) / step)
            }
            _ => None,
        }
    }
}

/// A value as the peer serves it (and as the probe reports it).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerValue {
    Bool(bool),
    Int(i64),
    Uint(u64),
    /// Double, or Float widened; `bits` makes the comparison exact.
    Float {
        bits: u64,
        value: f64,
    },
    String(String),
    BytesHex(String),
    /// No value (a Bad status nulls it).
    Null,
    /// Any other type, as text (only the probe reports this).
    Other(String),
}

impl PeerValue {
    pub fn float(x: f64) -> Self {
        PeerValue::Float {
            bits: x.to_bits(),
            value: x,
        }
    }

    /// Exact equality with what a source read, same kind (a float never
    /// equals an integer). Strings, byte strings and null match nothing: a
    /// tag value is a number or a bool.
    pub fn matches(&self, value: &TagValue) -> bool {
        match (self, value) {
            (PeerValue::Bool(e), TagValue::Bool(v)) => e == v,
            (PeerValue::Int(e), TagValue::Int(v)) => e == v,
            (PeerValue::Uint(e), TagValue::UInt(v)) => e == v,
            (PeerValue::Float { bits, .. }, TagValue::Float(v)) => *bits == v.to_bits(),
            // A Float variable: the peer states it widened.
            (PeerValue::Float { bits, .. }, TagValue::Float32(v)) => {
                *bits == f64::from(*v).to_bits()
            }
            (PeerValue::String(e), TagValue::Text(v)) => e.as_str() == &**v,
            _ => false,
        }
    }
}

/// A running asyncua server on a loopback port; killed when dropped.
pub struct OpcUaPeer {
    port: u16,
    /// Declared before `dir`: fields drop in order, so the server is
    /// stopped before its folder goes (a server still running wrote into
    /// the removed folder and left it in /tmp).
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
    layout_path: PathBuf,
    cert_dir: PathBuf,
    options: OpcUaPeerOptions,
    pub layout: OpcUaLayout,
}

impl OpcUaPeer {
    /// Starts a peer on a port the kernel chooses and waits until it listens.
    pub async fn start(options: OpcUaPeerOptions) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let layout_path = dir.path().join("layout.json");
        let cert_dir = dir.path().join("server-pki");
        let mut peer = Self {
            port: 0,
            dir,
            layout_path,
            cert_dir,
            options,
            child: None,
            layout: OpcUaLayout {
                port: 0,
                endpoint_url: String::new(),
                application_uri: String::new(),
                namespace_uri: String::new(),
                namespace_index: 0,
                namespace_array: Vec::new(),
                security: PeerSecurity {
                    policies: Vec::new(),
                    policy_uris: Vec::new(),
                    mode: String::new(),
                    insecure: false,
                    user: None,
                    user_cert: None,
                    user_key: None,
                    anonymous: false,
                    client_certs: ClientCerts::Any,
                },
                server_cert: PathBuf::new(),
                server_cert_sha1: String::new(),
                server_cert_created: false,
                tick_ms: 0,
                pid: 0,
                nodes: Vec::new(),
            },
        };
        peer.launch().await?;
        Ok(peer)
    }

    /// `opc.tcp://127.0.0.1:PORT/ironbridge/machine`.
    pub fn endpoint(&self) -> &str {
        &self.layout.endpoint_url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server certificate (DER), kept across restarts.
    pub fn server_cert(&self) -> &Path {
        &self.layout.server_cert
    }

    pub fn options(&self) -> &OpcUaPeerOptions {
        &self.options
    }

    /// A directory that lives as long as the peer, for a test's client
    /// certificates, trust lists, ...
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL): its connections drop as with a machine
    /// that lost power.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop();
        }
    }

    /// Stops the server cleanly (SIGTERM: asyncua closes its sessions and
    /// sockets) and returns whether it exited successfully; killed after a
    /// deadline.
    pub async fn terminate(&mut self) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(false);
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = tokio::time::Instant::now() + STOP_DEADLINE;
            while tokio::time::Instant::now() < deadline {
                if let Some(status) = child.try_exited()? {
                    return Ok(status.success());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        child.stop();
        Ok(false)
    }

    /// Starts the server again, same port, same certificate, same options.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch().await
    }

    /// Starts the server again on the same port with the same certificate,
    /// but with other options (e.g. the namespace moved, a variable gone).
    pub async fn restart_with(&mut self, options: OpcUaPeerOptions) -> anyhow::Result<()> {
        self.stop();
        self.options = options;
        self.launch().await
    }

    /// Starts the server and waits until it listens: the peer writes its
    /// layout file only after binding, so the file's appearance is the
    /// readiness signal, not a connect to a port another process might hold.
    async fn launch(&mut self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(&self.layout_path);
        let mut cmd = Command::new(venv_python()?);
        cmd.arg("-u")
            .arg(peer_script("opcua_server.py"))
            .arg(self.port.to_string())
            .arg(&self.layout_path)
            .arg("--cert-dir")
            .arg(&self.cert_dir)
            .args(self.options.args());
        let mut child = ChildGuard::spawn("asyncua server", &mut cmd)?;
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        while !self.layout_path.exists() {
            if let Some(status) = child.try_exited()? {
                anyhow::bail!("asyncua server exited with {status}");
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("asyncua server not listening after {START_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let text = std::fs::read_to_string(&self.layout_path)?;
        self.layout = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.layout_path.display()))?;
        self.port = self.layout.port;
        self.child = Some(child);
        Ok(())
    }
}
