//! Hostile traffic against the running gateway's OPC UA server: garbage,
//! oversized and malformed OPC UA TCP messages from raw sockets, messages
//! before a secure channel, half-open and churning connections, wrong
//! passwords in a loop, writes to read-only nodes. After each, an
//! independent client (asyncua) still reads correct values.
//!
//! One gateway for the whole sequence: what one attack leaves behind must
//! not hurt the next client either.

use std::time::Duration;

use anyhow::{Context, Result};
use ironbridge_tests::gateway_rig::{GatewayRig, RigOptions, MACHINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the server may take to close a connection it refuses; generous
/// (its hello timeout is 5 s), conditions are awaited, never timed.
const CLOSE_DEADLINE: Duration = Duration::from_secs(30);

/// An OPC UA TCP message: type (`HEL`, `OPN`, `MSG`...), chunk `F`, size,
/// body.
fn message(kind: &[u8; 3], body: &[u8]) -> Vec<u8> {
    let mut out = kind.to_vec();
    out.push(b'F');
    out.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// A Hello with these buffer sizes and limits (OPC UA Part 6, 7.1.2.3).
fn hello(receive: u32, send: u32, max_message: u32, max_chunks: u32, url: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&0u32.to_le_bytes()); // protocol version
    body.extend_from_slice(&receive.to_le_bytes());
    body.extend_from_slice(&send.to_le_bytes());
    body.extend_from_slice(&max_message.to_le_bytes());
    body.extend_from_slice(&max_chunks.to_le_bytes());
    body.extend_from_slice(&(url.len() as i32).to_le_bytes());
    body.extend_from_slice(url.as_bytes());
    message(b"HEL", &body)
}

/// Sends `bytes`, then reads until the server closes; returns what it sent
/// back. Fails if the server keeps the connection open past the deadline.
async fn send_and_wait_for_close(addr: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    // The server may close while we are still writing: that is an answer.
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(CLOSE_DEADLINE, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    anyhow::ensure!(read.is_ok(), "the server kept the connection open");
    Ok(answer)
}

/// An answer to a refused message is nothing or an Error message (`ERRF`).
fn refused(answer: &[u8]) -> bool {
    answer.is_empty() || answer.starts_with(b"ERRF") || answer.starts_with(b"ACKF")
}

async fn still_serving(rig: &GatewayRig, after: &str) -> Result<()> {
    let speed = format!("Machines/{MACHINE}/Tags/speed_rpm");
    let answer = rig
        .read_opcua(&["Gateway/Version".to_string(), speed.clone()])
        .await
        .with_context(|| format!("no legitimate read after {after}"))?;
    let reads = &answer["reads"];
    anyhow::ensure!(
        reads["Gateway/Version"]["value"] == env!("CARGO_PKG_VERSION")
            && reads[&speed]["is_good"] == true,
        "after {after}: {answer}"
    );
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_traffic_leaves_the_server_serving() -> Result<()> {
    let mut rig = GatewayRig::start_with(RigOptions {
        poll_ms: 200,
        flush_ms: 200,
        trust_client_certs: true,
        // Long enough that the attempts below (a Python client each) all
        // fall within the first lockout.
        opcua_limits: Some("login_lockout_ms = 20000".into()),
        ..RigOptions::default()
    })
    .await?;
    let url = rig.opcua_url();
    let addr = url
        .trim_start_matches("opc.tcp://")
        .trim_end_matches('/')
        .to_string();
    still_serving(&rig, "start").await?;
    let rss_start = rss_kib();

    // Garbage instead of a Hello.
    let garbage: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let answer = send_and_wait_for_close(&addr, &garbage).await?;
    assert!(refused(&answer), "garbage: {answer:?}");
    still_serving(&rig, "garbage").await?;

    // A Hello whose header claims 4 GiB.
    let mut huge = b"HELF".to_vec();
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    huge.extend_from_slice(&[0u8; 64]);
    let answer = send_and_wait_for_close(&addr, &huge).await?;
    assert!(refused(&answer), "oversized Hello: {answer:?}");
    still_serving(&rig, "an oversized Hello header").await?;

    // A valid Hello asking for absurd buffers, then a chunk far beyond
    // what the server accepted.
    let mut bytes = hello(u32::MAX, u32::MAX, 0, 0, &url);
    let mut chunk = b"MSGF".to_vec();
    chunk.extend_from_slice(&(64 * 1024 * 1024u32).to_le_bytes());
    chunk.extend_from_slice(&[0u8; 1024]);
    bytes.extend_from_slice(&chunk);
    let answer = send_and_wait_for_close(&addr, &bytes).await?;
    assert!(refused(&answer), "oversized chunk: {answer:?}");
    still_serving(&rig, "an oversized chunk").await?;

    // A service message before any secure channel is open.
    let mut bytes = hello(65_536, 65_536, 0, 0, &url);
    bytes.extend_from_slice(&message(
        b"MSG",
        &[1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0],
    ));
    let answer = send_and_wait_for_close(&addr, &bytes).await?;
    assert!(refused(&answer), "message before a channel: {answer:?}");
    still_serving(&rig, "a message before a secure channel").await?;

    // An OpenSecureChannel that is truncated, and one that is malformed.
    for (what, body) in [
        ("truncated", {
            let mut m = b"OPNF".to_vec();
            m.extend_from_slice(&1000u32.to_le_bytes());
            m.extend_from_slice(&[0u8; 20]);
            m
        }),
        ("malformed", message(b"OPN", &[0xFF; 200])),
    ] {
        let mut bytes = hello(65_536, 65_536, 0, 0, &url);
        bytes.extend_from_slice(&body);
        let answer = send_and_wait_for_close(&addr, &bytes).await?;
        assert!(refused(&answer), "{what} OpenSecureChannel: {answer:?}");
        still_serving(&rig, &format!("a {what} OpenSecureChannel")).await?;
    }

    // Hundreds of half-open connections (connected, silent) held while a
    // client reads; the server closes them after its hello timeout.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(&addr).await?);
    }
    still_serving(&rig, "300 half-open connections").await?;
    let rss_half_open = rss_kib();
    let closed = tokio::time::timeout(CLOSE_DEADLINE, async {
        for stream in &mut silent {
            let mut buf = [0u8; 64];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept half-open connections");
    drop(silent);

    // Churn: connect, say Hello, hang up, 300 times.
    for _ in 0..300 {
        let mut stream = TcpStream::connect(&addr).await?;
        let _ = stream.write_all(&hello(65_536, 65_536, 0, 0, &url)).await;
    }
    still_serving(&rig, "300 churning connections").await?;

    // Wrong passwords in a loop over SignAndEncrypt: after 5 the address is
    // locked out (even the right password is refused from it), another
    // address still gets in (no lockout of others), and the locked one gets
    // in again once its lockout has passed.
    let pki = tempfile::tempdir()?;
    let pki_dir = pki.path().display().to_string();
    std::env::set_var("IRONBRIDGE_TEST_WRONG_PASSWORD", "not-the-password");
    std::env::set_var("IRONBRIDGE_TEST_RIGHT_PASSWORD", "rig-admin-password");
    let admin_login = |password_env: &'static str, from: &'static str| {
        let pki_dir = pki_dir.clone();
        let rig = &rig;
        async move {
            rig.opcua_client(
                &["Gateway/Version".to_string()],
                &[
                    "--policy",
                    "Basic256Sha256",
                    "--client-pki",
                    &pki_dir,
                    "--user",
                    "admin",
                    "--password-env",
                    password_env,
                    "--source-address",
                    from,
                ],
            )
            .await
        }
    };
    for attempt in 0..8 {
        let answer = admin_login("IRONBRIDGE_TEST_WRONG_PASSWORD", "127.0.0.1").await?;
        assert_eq!(answer["connected"], false, "attempt {attempt}: {answer}");
    }
    let answer = admin_login("IRONBRIDGE_TEST_RIGHT_PASSWORD", "127.0.0.1").await?;
    assert_eq!(answer["connected"], false, "locked out: {answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("BadUserAccessDenied")),
        "{answer}"
    );
    let answer = admin_login("IRONBRIDGE_TEST_RIGHT_PASSWORD", "127.0.0.2").await?;
    assert_eq!(answer["connected"], true, "another address: {answer}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = admin_login("IRONBRIDGE_TEST_RIGHT_PASSWORD", "127.0.0.1").await?;
        if answer["connected"] == true {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the lockout did not end: {answer}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Writes to read-only nodes are refused and change nothing.
    let speed = format!("Machines/{MACHINE}/Tags/speed_rpm");
    let answer = rig
        .opcua_client(
            &["Gateway/Version".to_string()],
            &["--write", &speed, "--write", "Gateway/Version"],
        )
        .await?;
    for (node, status) in answer["write"].as_object().context("write")? {
        assert_ne!(status, "Good", "{node} was written: {answer}");
    }
    still_serving(&rig, "writes to read-only nodes").await?;

    let rss_end = rss_kib();
    eprintln!(
        "memory of the test process (gateway, simulators, this test): start {rss_start} KiB, \
         with 300 half-open connections {rss_half_open} KiB, end {rss_end} KiB"
    );
    rig.stop().await;
    Ok(())
}
