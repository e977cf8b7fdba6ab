//! The `ironbridge` binary as a user runs it: `validate` and `--version`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn ironbridge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ironbridge"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gateway/ has a parent")
        .to_path_buf()
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// The line (1-based) of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in config"))
}

#[test]
fn version_names_the_commit() {
    let out = ironbridge().arg("--version").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ironbridge 0."), "{text}");
    let commit = text
        .split("(commit ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or("");
    assert!(
        commit.len() >= 7 && commit.chars().take(7).all(|c| c.is_ascii_hexdigit()),
        "no commit in {text:?}"
    );
}

#[test]
fn the_example_configuration_validates() {
    let example = repo_root().join("config/example.toml");
    // The spindle's password comes from the service's environment.
    let out = ironbridge()
        .args(["validate", "--config"])
        .arg(&example)
        .env("IRONBRIDGE_SPINDLE_PASSWORD", "from-the-environment")
        .env("IRONBRIDGE_ADMIN_PASSWORD", "from-the-environment")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without it, validate names the key that needs it.
    let out = ironbridge()
        .args(["validate", "--config"])
        .arg(&example)
        .env_remove("IRONBRIDGE_SPINDLE_PASSWORD")
        .env("IRONBRIDGE_ADMIN_PASSWORD", "from-the-environment")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("machines[1].password_env")
            && stderr.contains("IRONBRIDGE_SPINDLE_PASSWORD"),
        "{stderr}"
    );
}

#[test]
fn validate_lists_every_problem_with_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model_dir = repo_root().join("models/tests/fixtures/tampered");
    let text = format!(
        r#"
[gateway]
name = "line 3"
tags = {{ machine = "x" }}

[opcua]
port = 4840
surprise = true

[[machines]]
name = "press-7"
protocol = "modbus-tcp"
address = "127.0.0.1:502"
poll_interval_ms = 0
  [[machines.tags]]
  name = "temp_c"
  register = "holding"
  address = 65535
  type = "f32"

[[machines]]
name = "press-7"
protocol = "modbus-tcp"
address = "127.0.0.1:503"
  [[machines.tags]]
  name = "speed"
  register = "holding"
  address = 0
  type = "f32"
  byte_order = "XYZW"

[[machines]]
name = "lathe-2"
protocol = "profibus"

[[models]]
name = "tiny"
path = "{model}"
version = "1.0.0"
machines = ["press-7", "mill-9"]
"#,
        model = model_dir.display()
    );
    let config = write_config(dir.path(), &text);
    let out = ironbridge()
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(
        !out.status.success(),
        "a broken config must fail validation"
    );
    let report = String::from_utf8_lossy(&out.stderr).to_string();
    let file = config.display().to_string();
    let expect = |needle: &str, path: &str| {
        let line = line_of(&text, needle);
        let want = format!("{file}:{line}: {path}");
        assert!(
            report.contains(&want),
            "expected a problem at {want:?} in:\n{report}"
        );
    };
    expect("name = \"line 3\"", "gateway.name");
    expect("tags = {", "gateway.tags.machine");
    expect("surprise", "opcua.surprise");
    expect("poll_interval_ms = 0", "machines[0].poll_interval_ms");
    expect("address = 65535", "machines[0].tags[0].address");
    expect("byte_order = \"XYZW\"", "machines[1].tags[0].byte_order");
    expect("protocol = \"profibus\"", "machines[2].protocol");
    expect("version = \"1.0.0\"", "models[0].version");
    expect("\"mill-9\"", "models[0].machines[1]");
    // The second "press-7" is a duplicate name.
    let second = text
        .match_indices("name = \"press-7\"")
        .nth(1)
        .map(|(i, _)| i)
        .expect("two");
    let line = text[..second].lines().count() + 1;
    assert!(
        report.contains(&format!("{file}:{line}: machines[1].name")),
        "duplicate machine name not reported at line {line}:\n{report}"
    );
    assert!(
        report.contains("sha256"),
        "hash mismatch not explained:\n{report}"
    );
}

#[test]
fn validate_reports_a_toml_syntax_error_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "[opcua]\nport = 4840\n[[machines]\nname = \"x\"\n";
    let config = write_config(dir.path(), text);
    let out = ironbridge()
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        report.contains(&format!("{}:3:", config.display())),
        "{report}"
    );
}

#[test]
fn run_refuses_a_broken_configuration_before_starting_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "[nonsense]\nx = 1\n");
    let out = ironbridge()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonsense"));
}

/// The example with the pump's model served remotely: `extra` keys are
/// added to its `[[models]]` table; model paths made absolute.
fn remote_example(extra: &str) -> String {
    let models = repo_root().join("models");
    std::fs::read_to_string(repo_root().join("config/example.toml"))
        .expect("read example")
        .replace(
            "path = \"../models/",
            &format!("path = \"{}/", models.display()),
        )
        .replacen(
            "name = \"bearing-wear\"",
            &format!("name = \"bearing-wear\"\nbackend = \"remote\"\n{extra}"),
            1,
        )
}

#[test]
fn validate_checks_a_remote_model_and_its_fallback_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let validate = |text: &str| {
        let config = write_config(dir.path(), text);
        ironbridge()
            .args(["validate", "--config"])
            .arg(&config)
            .env("IRONBRIDGE_SPINDLE_PASSWORD", "from-the-environment")
            .env("IRONBRIDGE_ADMIN_PASSWORD", "from-the-environment")
            .output()
            .expect("run")
    };
    let out = validate(&remote_example("url = \"http://10.0.0.5:8080\""));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = remote_example(
        "url = \"http://10.0.0.5:8080\"\ntimeout_ms = 0\nfallback_version = \"9.9.9\"",
    );
    let out = validate(&text);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("models[0].timeout_ms") && stderr.contains("models[0].fallback_version"),
        "{stderr}"
    );
    assert!(stderr.contains("9.9.9"), "{stderr}");
    let out = validate(&remote_example(""));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("models[0].url"), "{stderr}");
}

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET path` over plain HTTP/1.0: the body, or None while nothing listens.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// `[runtime] worker_threads` sets the binary's async worker threads, as
/// `/metrics` reports them; absent, one, or what `TOKIO_WORKER_THREADS`
/// says when it is set.
#[test]
fn run_starts_the_runtime_with_the_configured_worker_threads() {
    // (the key, TOKIO_WORKER_THREADS, the threads expected)
    for (key, env, threads) in [
        (Some(1), None, 1),
        (Some(3), Some("2"), 3),
        (None, None, 1),
        (None, Some("2"), 2),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let http_port = free_port();
        let runtime = key
            .map(|n| format!("[runtime]\nworker_threads = {n}\n"))
            .unwrap_or_default();
        let text = format!(
            r#"
{runtime}

[opcua]
port = {opcua_port}
pki_dir = "{pki}"
insecure_loopback_endpoint = true

[http]
address = "127.0.0.1:{http_port}"
"#,
            opcua_port = free_port(),
            pki = dir.path().join("pki").display(),
        );
        let config = write_config(dir.path(), &text);
        let mut command = ironbridge();
        command
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("TOKIO_WORKER_THREADS")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(env) = env {
            command.env("TOKIO_WORKER_THREADS", env);
        }
        let mut child = command.spawn().expect("run");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let reported = loop {
            let value = http_get(http_port, "/metrics").and_then(|body| {
                body.lines()
                    .find(|l| l.starts_with("ironbridge_runtime_worker_threads"))
                    .and_then(|l| l.rsplit_once(' '))
                    .and_then(|(_, v)| v.trim().parse::<f64>().ok())
            });
            if let Some(value) = value {
                break Some(value);
            }
            if std::time::Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            reported,
            Some(threads as f64),
            "worker_threads = {key:?}, TOKIO_WORKER_THREADS = {env:?}"
        );
    }
}
