//! Shared harness of the simulator's integration tests: the repository's
//! Python peers, a server certificate made once per test binary, and
//! in-process machines.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use ironbridge_simulator::{OpcUaMachine, OpcUaOptions, OpcUaStatus, OpcUaUser, SimError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Guards against a hung peer or server; not a performance bound.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

pub const USER: &str = "operator";
pub const PASSWORD: &str = "spindle-test-password";
/// Where the Python peer finds the password (never on its command line).
pub const PASSWORD_ENV: &str = "IRONBRIDGE_SIM_TEST_PASSWORD";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The project's Python (asyncua, pymodbus), made by `scripts/setup.sh`.
/// Tests fail with this hint rather than skip.
pub fn venv_python() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (the README's test command does)",
        python.display()
    );
    python
}

pub fn peer_script(name: &str) -> PathBuf {
    repo_root().join("tests/peers").join(name)
}

/// Runs the asyncua peer `sim_opcua_client.py` with `args` (and the test
/// password in its environment) and returns the JSON it printed.
pub async fn opcua_peer(args: &[String]) -> serde_json::Value {
    let mut command = tokio::process::Command::new(venv_python());
    command
        .arg(peer_script("sim_opcua_client.py"))
        .args(args)
        .env(PASSWORD_ENV, PASSWORD)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let output = tokio::time::timeout(HANG_GUARD, command.output())
        .await
        .expect("the peer hung")
        .expect("the peer starts");
    assert!(output.status.success(), "peer failed: {:?}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON from the peer: {stdout}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("peer JSON {line}: {e}"))
}

/// Peer arguments for a SignAndEncrypt session with the test login.
pub fn secure_args(url: &str, policy: &str, client_pki: &Path) -> Vec<String> {
    [
        "--url",
        url,
        "--policy",
        policy,
        "--client-pki",
        &client_pki.display().to_string(),
        "--user",
        USER,
        "--password-env",
        PASSWORD_ENV,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A PKI folder holding a copy of one server key pair per test binary.
///
/// RSA key generation takes seconds in a debug build, so the pair is made
/// once (by a real machine, as a user's first start would) and kept in
/// Cargo's per-target temporary folder; each test then gets its own folder
/// with its own trusted/ and rejected/.
pub fn server_pki(dir: &Path) -> PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let template = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sim-opcua-server-pki");
        if template.join("own/cert.der").exists() && template.join("private/private.pem").exists() {
            return template;
        }
        // Own thread and runtime: the caller may be inside a test's runtime.
        let made = std::thread::spawn(move || {
            let staging = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("staging dir");
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async {
                let running = start_opcua(opcua_options(staging.path())).await;
                running.stop().await;
            });
            // Atomic: a concurrent test binary sees all of it or nothing.
            let staged = staging.keep();
            if std::fs::rename(&staged, &template).is_err() {
                // Another binary won the race; its pair serves as well.
                let _ = std::fs::remove_dir_all(&staged);
            }
            template
        });
        made.join().expect("making the server certificate")
    });
    let pki = dir.join("pki");
    for (folder, file) in [("own", "cert.der"), ("private", "private.pem")] {
        std::fs::create_dir_all(pki.join(folder)).expect("pki folder");
        std::fs::copy(
            template.join(folder).join(file),
            pki.join(folder).join(file),
        )
        .expect("copy the server key pair");
    }
    pki
}

/// Options of a fast machine (10 simulated minutes per second, 50 ms
/// steps) that trusts the test client's new certificate.
pub fn opcua_options(pki_dir: &Path) -> OpcUaOptions {
    let mut options = OpcUaOptions::new(
        pki_dir,
        OpcUaUser {
            username: USER.into(),
            password: PASSWORD.into(),
        },
    );
    options.time_scale = 600.0;
    options.step_ms = 50;
    options.trust_client_certs = true;
    options
}

pub struct RunningOpcUa {
    pub machine: OpcUaMachine,
    pub address: SocketAddr,
    pub status: watch::Receiver<OpcUaStatus>,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), SimError>>,
}

/// Starts an OPC UA machine on a free loopback port and waits until its
/// server runs.
pub async fn start_opcua(options: OpcUaOptions) -> RunningOpcUa {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("local address");
    let machine = OpcUaMachine::new(options).expect("valid options");
    let mut status = machine.status();
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (machine, cancel) = (machine.clone(), cancel.clone());
        async move { machine.serve(listener, cancel).await }
    });
    tokio::time::timeout(HANG_GUARD, status.wait_for(|s| s.up))
        .await
        .expect("the server starts")
        .expect("the machine runs");
    RunningOpcUa {
        machine,
        address,
        status,
        cancel,
        task,
    }
}

impl RunningOpcUa {
    pub fn url(&self) -> String {
        format!("opc.tcp://{}/", self.address)
    }

    /// Waits until the status satisfies `condition` and returns it.
    pub async fn wait_for(&mut self, condition: impl FnMut(&OpcUaStatus) -> bool) -> OpcUaStatus {
        tokio::time::timeout(HANG_GUARD, self.status.wait_for(condition))
            .await
            .expect("the status never got there")
            .expect("the machine runs")
            .clone()
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(HANG_GUARD, self.task)
            .await
            .expect("the machine stops")
            .expect("machine task")
            .expect("machine ended cleanly");
    }
}
