//! Modbus lines with several units for the RTU tests: a real pseudo-terminal
//! pair made by Debian's `socat`, and a pymodbus server
//! (`tests/peers/modbus_line_server.py`) answering for several unit ids on
//! its far end, or over TCP (RTU or plain framing).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use crate::modbus_peer::PeerTag;
use crate::paths::{peer_script, venv_python};
use crate::process::ChildGuard;

/// How long socat or a peer may take to start (Python imports are slow on
/// a busy 2-core machine).
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Two connected pseudo-terminals: what one end writes, the other reads, as
/// over a serial cable (but without a baud rate: ptys pass bytes at once).
pub struct PtyPair {
    /// The gateway's end.
    pub near: PathBuf,
    /// The peer's end.
    pub far: PathBuf,
    _socat: ChildGuard,
}

impl PtyPair {
    /// Starts `socat` with both ends linked into `dir`; waits for the links.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let near = dir.join("near");
        let far = dir.join("far");
        let mut cmd = Command::new("socat");
        cmd.arg("-d")
            .arg("-d")
            .arg(format!("pty,raw,echo=0,link={}", near.display()))
            .arg(format!("pty,raw,echo=0,link={}", far.display()));
        let mut socat = ChildGuard::spawn(
            "socat (apt-get install socat; scripts/setup.sh does)",
            &mut cmd,
        )?;
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        while !(near.exists() && far.exists()) {
            if let Some(status) = socat.try_exited()? {
                anyhow::bail!("socat exited with {status}");
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("socat made no pty pair within {START_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            near,
            far,
            _socat: socat,
        })
    }
}

/// What the peer serves, as it wrote it.
#[derive(Debug, Clone, Deserialize)]
pub struct LineLayout {
    /// Holding registers exist at `0..holding_size`; beyond: exception 02.
    pub holding_size: u16,
    /// The TCP port bound (TCP modes only).
    pub port: Option<u16>,
    pub units: Vec<UnitLayout>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UnitLayout {
    pub unit: u8,
    /// Tags that always answer.
    pub tags: Vec<PeerTag>,
    /// A tag whose register answers 06 (busy) to two reads out of three.
    pub busy_tag: PeerTag,
}

impl LineLayout {
    pub fn unit(&self, unit: u8) -> anyhow::Result<&UnitLayout> {
        self.units
            .iter()
            .find(|u| u.unit == unit)
            .ok_or_else(|| anyhow::anyhow!("the peer serves no unit {unit}"))
    }
}

/// How the peer is reached.
pub enum LineMode<'a> {
    /// RTU framing on the far end of a pty pair (the peer opens it without
    /// parity: Linux ptys here refuse PARENB).
    Serial { device: &'a Path, baud_rate: u32 },
    /// RTU framing over TCP, as a serial device server speaks it.
    TcpRtu,
    /// Plain Modbus TCP (MBAP header).
    Tcp,
}

/// A running pymodbus server answering for several units; killed on drop.
pub struct LinePeer {
    pub layout: LineLayout,
    control_dir: PathBuf,
    /// Declared before `dir`: fields drop in order, so the server is
    /// stopped before its folder goes (a server still running wrote into
    /// the removed folder and left it in /tmp).
    _child: ChildGuard,
    _dir: tempfile::TempDir,
}

/// What a unit does, set while the peer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitBehaviour {
    Answer,
    /// Never answers, as a unit that is switched off.
    Silent,
    /// Answers everything with exception 0B (gateway target failed).
    GatewayFails,
}

impl LinePeer {
    pub async fn start(units: &[u8], mode: LineMode<'_>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let control_dir = dir.path().join("control");
        std::fs::create_dir(&control_dir)?;
        let layout_path = dir.path().join("layout.json");
        let unit_list: Vec<String> = units.iter().map(u8::to_string).collect();
        let mut cmd = Command::new(venv_python()?);
        cmd.arg("-u")
            .arg(peer_script("modbus_line_server.py"))
            .arg(&layout_path)
            .arg(&control_dir)
            .arg(unit_list.join(","));
        match mode {
            LineMode::Serial { device, baud_rate } => {
                cmd.arg("serial")
                    .arg(device)
                    .arg(baud_rate.to_string())
                    .arg("N");
            }
            LineMode::TcpRtu => {
                cmd.arg("tcp-rtu");
            }
            LineMode::Tcp => {
                cmd.arg("tcp");
            }
        }
        let mut child = ChildGuard::spawn("pymodbus line server", &mut cmd)?;
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        while !layout_path.exists() {
            if let Some(status) = child.try_exited()? {
                anyhow::bail!("pymodbus line server exited with {status}");
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("pymodbus line server not ready after {START_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let text = std::fs::read_to_string(&layout_path)?;
        let layout = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", layout_path.display()))?;
        Ok(Self {
            layout,
            control_dir,
            _dir: dir,
            _child: child,
        })
    }

    /// `127.0.0.1:port` of a TCP-mode peer.
    pub fn address(&self) -> anyhow::Result<String> {
        let port = self
            .layout
            .port
            .ok_or_else(|| anyhow::anyhow!("a serial peer has no address"))?;
        Ok(format!("127.0.0.1:{port}"))
    }

    /// Changes what `unit` does from its next request on.
    pub fn set(&self, unit: u8, behaviour: UnitBehaviour) -> anyhow::Result<()> {
        let path = self.control_dir.join(format!("unit-{unit}"));
        let word = match behaviour {
            UnitBehaviour::Answer => {
                let _ = std::fs::remove_file(&path);
                return Ok(());
            }
            UnitBehaviour::Silent => "silent",
            UnitBehaviour::GatewayFails => "gateway",
        };
        // Written whole, then renamed: the peer never reads half a word.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, word)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }
}
