//! The `ironbridge-sim` binary: ready lines with the real port for a bind
//! to port 0, the OPC UA machine reached through them, fault flags.

mod common;

use std::process::Stdio;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn sim() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ironbridge-sim"));
    command
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    command
}

/// Reads stdout until the `listening on ...` line and returns it (log
/// lines may come first: both go to stdout).
async fn ready_line(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let wait = async {
        while let Some(line) = lines.next_line().await.expect("stdout") {
            if let Some(rest) = line.strip_prefix("listening on ") {
                return rest.to_string();
            }
        }
        panic!("the simulator exited without a ready line");
    };
    let line = tokio::time::timeout(HANG_GUARD, wait)
        .await
        .expect("no ready line");
    // Keep draining, so the simulator never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    line
}

#[tokio::test]
async fn serve_opcua_reports_its_port_and_serves_the_spindle() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = server_pki(dir.path());
    let mut child = sim()
        .args(["serve-opcua", "--bind", "127.0.0.1:0", "--seed", "3"])
        .args([
            "--time-scale",
            "600",
            "--trust-client-certs",
            "--user",
            USER,
        ])
        .args(["--password-env", PASSWORD_ENV, "--pki-dir"])
        .arg(&pki)
        .args(["--fault", "delete-node:node=Spindle.Load,at_s=3600"])
        .env(PASSWORD_ENV, PASSWORD)
        .spawn()
        .expect("start the simulator");
    let ready = ready_line(&mut child).await;
    // opc.tcp://127.0.0.1:PORT/ (namespace urn:ironbridge:sim:spindle at index 3)
    let url = ready.split_whitespace().next().expect("url").to_string();
    assert!(url.starts_with("opc.tcp://127.0.0.1:"), "{ready}");
    assert!(!url.ends_with(":0/"), "the real port: {ready}");
    assert!(
        ready.contains("urn:ironbridge:sim:spindle at index 3"),
        "{ready}"
    );

    let mut args = secure_args(&url, "Basic256Sha256", &dir.path().join("client"));
    args.extend(["--read".into(), "Spindle.Speed".into()]);
    let reply = opcua_peer(&args).await;
    assert_eq!(reply["connected"], true, "{reply}");
    assert_eq!(reply["namespace_index"], 3);
    assert_eq!(reply["samples"][0]["Spindle.Speed"]["status"], "Good");
    child.kill().await.expect("stop the simulator");
}

#[tokio::test]
async fn serve_reports_its_port_and_bad_faults_are_refused_with_the_reason() {
    let mut child = sim()
        .args(["serve", "--bind", "127.0.0.1:0"])
        .args([
            "--fault",
            "exception:table=holding,first=100,last=110,code=2",
        ])
        .spawn()
        .expect("start the simulator");
    let ready = ready_line(&mut child).await;
    assert!(ready.starts_with("127.0.0.1:"), "{ready}");
    assert!(!ready.ends_with(":0"), "the real port: {ready}");
    child.kill().await.expect("stop the simulator");

    let refused = sim()
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--fault",
            "drop:for_s=2,colour=red",
        ])
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("run the simulator");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("colour"), "{stderr}");

    let wrong_machine = sim()
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--fault",
            "restart:at_s=1",
        ])
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("run the simulator");
    assert!(!wrong_machine.status.success());
    let stderr = String::from_utf8_lossy(&wrong_machine.stderr);
    assert!(stderr.contains("restart"), "{stderr}");
}

#[tokio::test]
async fn serve_opcua_needs_the_password_in_its_variable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = sim()
        .args(["serve-opcua", "--bind", "127.0.0.1:0", "--pki-dir"])
        .arg(dir.path().join("pki"))
        .args(["--password-env", "IRONBRIDGE_SIM_TEST_UNSET_PASSWORD"])
        .env_remove("IRONBRIDGE_SIM_TEST_UNSET_PASSWORD")
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("run the simulator");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("IRONBRIDGE_SIM_TEST_UNSET_PASSWORD"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_registers_reports_each_device_and_changes_every_read() {
    use tokio_modbus::prelude::*;

    let mut child = sim()
        .args(["serve-registers", "--bind", "127.0.0.1:0"])
        .args(["--devices", "3", "--f32", "62"])
        .spawn()
        .expect("start the simulator");
    let ready = ready_line(&mut child).await;
    let addresses: Vec<std::net::SocketAddr> = ready
        .split_whitespace()
        .map(|a| a.parse().expect("an address"))
        .collect();
    assert_eq!(addresses.len(), 3, "{ready}");

    for address in addresses {
        let mut ctx = tokio::time::timeout(HANG_GUARD, tcp::connect_slave(address, Slave(1)))
            .await
            .expect("connect hung")
            .expect("connect");
        let first = read_bank(&mut ctx).await;
        let second = read_bank(&mut ctx).await;
        assert_eq!(first.len(), 62);
        // Each device counts its own reads: its first two are reads 0 and 1.
        for (k, (a, b)) in first.iter().zip(&second).enumerate() {
            let k = u16::try_from(k).expect("62 values");
            assert_eq!(*a, ironbridge_simulator::bank_value(k, 0));
            assert_eq!(*b, ironbridge_simulator::bank_value(k, 1));
        }
        let beyond = ctx.read_holding_registers(124, 2).await.expect("link");
        assert_eq!(beyond, Err(ExceptionCode::IllegalDataAddress));
    }
    child.kill().await.expect("stop the simulator");
}

/// One whole bank (124 registers) as 62 f32 values (ABCD).
async fn read_bank(ctx: &mut tokio_modbus::client::Context) -> Vec<f32> {
    use tokio_modbus::prelude::*;
    let words = tokio::time::timeout(HANG_GUARD, ctx.read_holding_registers(0, 124))
        .await
        .expect("reply")
        .expect("link")
        .expect("registers");
    words
        .chunks(2)
        .map(|w| f32::from_bits((u32::from(w[0]) << 16) | u32::from(w[1])))
        .collect()
}
