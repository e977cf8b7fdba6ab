//! `tests/peers/opcua_probe.py`: an independent OPC UA client (python
//! asyncua) that looks at an OPC UA server from outside and reports in JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::opcua_peer::{EngineeringUnit, PeerValue};
use crate::paths::{peer_script, venv_python};

/// Generous: a bound on a hung probe, never a performance limit.
const PROBE_DEADLINE: Duration = Duration::from_secs(90);

/// What the probe does. `Default`: SignAndEncrypt with Basic256Sha256,
/// anonymous, nothing read.
#[derive(Debug, Clone)]
pub struct ProbeRequest {
    pub url: String,
    /// asyncua policy name (`Basic256Sha256`, `Aes128Sha256RsaOaep`,
    /// `Aes256Sha256RsaPss`) or `None`.
    pub policy: String,
    /// Where the probe keeps its self-signed certificate (made on first use,
    /// `probe_cert.der` / `probe_key.pem`).
    pub client_pki: Option<PathBuf>,
    /// A client certificate (DER) and key (PEM) to use as they are instead.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Pin the server certificate (else taken from the endpoints).
    pub server_cert: Option<PathBuf>,
    pub app_uri: Option<String>,
    pub user: Option<(String, String)>,
    /// `nsu=...;s=...` ids read in every round.
    pub read: Vec<String>,
    /// Variables whose EngineeringUnits property is read.
    pub unit: Vec<String>,
    /// Read rounds; each after the first waits until `change_node` changed.
    pub rounds: u32,
    pub change_node: Option<String>,
    /// Wait until this node reads BadNodeIdUnknown.
    pub wait_gone: Option<String>,
    /// Also try to log in with this password (same user).
    pub try_password: Option<String>,
    pub try_anonymous: bool,
    /// Also force a session over SecurityPolicy None.
    pub try_insecure: bool,
}

impl ProbeRequest {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            policy: "Basic256Sha256".to_string(),
            client_pki: None,
            client_cert: None,
            server_cert: None,
            app_uri: None,
            user: None,
            read: Vec::new(),
            unit: Vec::new(),
            rounds: 1,
            change_node: None,
            wait_gone: None,
            try_password: None,
            try_anonymous: false,
            try_insecure: false,
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--url".to_string(),
            self.url.clone(),
            "--policy".into(),
            self.policy.clone(),
            "--rounds".into(),
            self.rounds.to_string(),
        ];
        let mut opt = |name: &str, value: &Option<String>| {
            if let Some(v) = value {
                args.push(name.to_string());
                args.push(v.clone());
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        opt("--client-pki", &path(&self.client_pki));
        opt("--server-cert", &path(&self.server_cert));
        opt("--app-uri", &self.app_uri);
        opt("--change-node", &self.change_node);
        opt("--wait-gone", &self.wait_gone);
        opt("--try-password", &self.try_password);
        if let Some((cert, key)) = &self.client_cert {
            opt("--client-cert", &Some(cert.display().to_string()));
            opt("--client-key", &Some(key.display().to_string()));
        }
        if let Some((user, password)) = &self.user {
            opt("--user", &Some(user.clone()));
            opt("--password", &Some(password.clone()));
        }
        for node in &self.read {
            args.extend(["--read".into(), node.clone()]);
        }
        for node in &self.unit {
            args.extend(["--unit".into(), node.clone()]);
        }
        if self.try_anonymous {
            args.push("--try-anonymous".into());
        }
        if self.try_insecure {
            args.push("--try-insecure".into());
        }
        args
    }

    /// Runs the probe and parses its report; fails if the probe itself
    /// failed (a refused connection is a report, not a failure).
    pub async fn run(&self) -> anyhow::Result<ProbeReport> {
        let mut cmd = tokio::process::Command::new(venv_python()?);
        cmd.arg(peer_script("opcua_probe.py"))
            .args(self.args())
            .kill_on_drop(true);
        let out = tokio::time::timeout(PROBE_DEADLINE, cmd.output())
            .await
            .map_err(|_| {
                anyhow::anyhow!("opcua_probe.py still running after {PROBE_DEADLINE:?}")
            })??;
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(out.status.success(), "opcua_probe.py failed: {stderr}");
        serde_json::from_slice(&out.stdout).map_err(|e| {
            anyhow::anyhow!(
                "opcua_probe.py answered no report ({e}): {}\n{stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// The probe's answer.
#[derive(Debug, Clone, Deserialize)]
pub struct ProbeReport {
    /// GetEndpoints, without a session.
    pub endpoints: Vec<ProbeEndpoint>,
    pub connected: bool,
    pub error: Option<String>,
    #[serde(default)]
    pub namespace_array: Vec<String>,
    /// One map per round: node id as requested -> what was read.
    #[serde(default)]
    pub rounds: Vec<BTreeMap<String, ProbeRead>>,
    #[serde(default)]
    pub units: BTreeMap<String, EngineeringUnit>,
    pub gone: Option<bool>,
    pub attempts: BTreeMap<String, ProbeAttempt>,
}

impl ProbeReport {
    /// Index of `uri` in the namespace array the probe read.
    pub fn namespace_index(&self, uri: &str) -> Option<usize> {
        self.namespace_array.iter().position(|u| u == uri)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProbeEndpoint {
    pub url: String,
    pub policy_uri: String,
    /// `None`, `Sign` or `SignAndEncrypt`.
    pub mode: String,
    /// `Anonymous`, `UserName`, `Certificate`.
    pub user_tokens: Vec<String>,
    pub server_cert_sha1: Option<String>,
    pub application_uri: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProbeRead {
    pub value: PeerValue,
    pub variant_type: Option<String>,
    /// Status name, e.g. `Good`, `BadNodeIdUnknown`.
    pub status: String,
    pub status_code: u32,
    pub source_timestamp_us: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProbeAttempt {
    pub connected: bool,
    pub error: Option<String>,
    /// For the forced None session: the step the server refused.
    pub refused_at: Option<String>,
}
