//! A pymodbus TCP server (`tests/peers/modbus_server.py`) as a test's machine,
//! and the layout it serves: tags with the values the peer itself computed.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ironbridge_connectors::modbus::ModbusTagConfig;
use ironbridge_connectors::TagValue;
use serde::Deserialize;

use crate::paths::{peer_script, venv_python};
use crate::process::ChildGuard;

/// How long a peer may take to start listening (Python imports are slow on a
/// busy 2-core machine).
const START_DEADLINE: Duration = Duration::from_secs(30);

/// What the peer serves, as it wrote it.
#[derive(Debug, Clone, Deserialize)]
pub struct PeerLayout {
    /// The port the peer bound (it writes the layout only once it listens).
    pub port: u16,
    /// Holding registers exist at `0..holding_size`; reads beyond answer
    /// with an exception (illegal data address).
    pub holding_size: u16,
    pub tags: Vec<PeerTag>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PeerTag {
    /// Deserialized by the connector's own config type, so the layout is
    /// also a check that a user's tag description parses.
    pub tag: ModbusTagConfig,
    pub expected: ExpectedValue,
}

/// A value as the peer computed it.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedValue {
    Bool(bool),
    Int(i64),
    Uint(u64),
    /// `bits` makes the comparison exact; `value` is for reading.
    Float {
        bits: u64,
        value: f64,
    },
}

impl ExpectedValue {
    /// Exact equality, same variant (a float never equals an integer).
    pub fn matches(&self, value: &TagValue) -> bool {
        match (*self, value) {
            (ExpectedValue::Bool(e), TagValue::Bool(v)) => e == *v,
            (ExpectedValue::Int(e), TagValue::Int(v)) => e == *v,
            (ExpectedValue::Uint(e), TagValue::UInt(v)) => e == *v,
            (ExpectedValue::Float { bits, .. }, TagValue::Float(v)) => bits == v.to_bits(),
            // An f32 register: the peer states it widened.
            (ExpectedValue::Float { bits, .. }, TagValue::Float32(v)) => {
                bits == f64::from(*v).to_bits()
            }
            _ => false,
        }
    }
}

/// A running pymodbus server on a loopback port; killed when dropped.
pub struct ModbusPeer {
    port: u16,
    layout_path: PathBuf,
    /// Declared before `dir`: fields drop in order, so the server is
    /// stopped before its folder goes (a server still running wrote into
    /// the removed folder and left it in /tmp).
    child: Option<ChildGuard>,
    _dir: tempfile::TempDir,
    pub layout: PeerLayout,
}

impl ModbusPeer {
    /// Starts a peer on a port the kernel chooses and waits until it listens.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut peer = Self {
            port: 0,
            layout_path: dir.path().join("layout.json"),
            _dir: dir,
            child: None,
            layout: PeerLayout {
                port: 0,
                holding_size: 0,
                tags: Vec::new(),
            },
        };
        peer.restart().await?;
        Ok(peer)
    }

    /// `127.0.0.1:port`, as a machine's `address`.
    pub fn address(&self) -> String {
        self.socket_addr().to_string()
    }

    fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Kills the server (SIGKILL): its connections drop as with a machine
    /// that lost power.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop();
        }
    }

    /// Starts the server (again, on the same port) and waits until it
    /// listens: the peer writes its layout file only after binding, so the
    /// file's appearance is the readiness signal, not a connect to a port
    /// some other process might hold.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let _ = std::fs::remove_file(&self.layout_path);
        let mut cmd = Command::new(venv_python()?);
        cmd.arg("-u")
            .arg(peer_script("modbus_server.py"))
            .arg(self.port.to_string())
            .arg(&self.layout_path);
        let mut child = ChildGuard::spawn("pymodbus server", &mut cmd)?;
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        while !self.layout_path.exists() {
            if let Some(status) = child.try_exited()? {
                anyhow::bail!("pymodbus server exited with {status}");
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("pymodbus server not listening after {START_DEADLINE:?}");
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
