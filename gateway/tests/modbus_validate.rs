//! `ironbridge validate` with a `[modbus_server]` section: the register map
//! is printed before anything runs (and docs/modbus-map.md shows the same
//! map for the example), a bad address is reported with key and line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gateway/ has a parent")
        .to_path_buf()
}

/// The example configuration with its `[modbus_server]` section enabled,
/// `address` set and the model folder made absolute, validated.
fn validate_example_with_modbus(address: &str) -> (String, Output) {
    let example =
        std::fs::read_to_string(repo_root().join("config/example.toml")).expect("read example");
    let mut text = String::new();
    for line in example.lines() {
        let line = match line {
            "# [modbus_server]" => "[modbus_server]".to_string(),
            l if l.starts_with("# address = \"127.0.0.1:5502\"") => {
                format!("address = {address:?}")
            }
            l => l.to_string(),
        };
        text.push_str(&line);
        text.push('\n');
    }
    assert!(
        text.contains("\n[modbus_server]\n"),
        "example changed shape"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let models_dir = repo_root().join("models");
    let text = text.replace(
        "path = \"../models/",
        &format!("path = \"{}/", models_dir.display()),
    );
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, &text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_ironbridge"))
        .args(["validate", "--config"])
        .arg(&file)
        // The example's OPC UA spindle reads its password from here.
        .env("IRONBRIDGE_SPINDLE_PASSWORD", "from-the-environment")
        .env("IRONBRIDGE_ADMIN_PASSWORD", "from-the-environment")
        .output()
        .expect("run");
    (text, out)
}

#[test]
fn validate_prints_the_modbus_map_that_the_docs_show() {
    let (_, out) = validate_example_with_modbus("127.0.0.1:5502");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("64..=127  pump-1 / bearing-wear 1.0.0: bearing_wear@96"),
        "{stdout}"
    );
    let docs = std::fs::read_to_string(repo_root().join("docs/modbus-map.md")).expect("docs");
    for line in stdout
        .lines()
        .skip_while(|l| !l.starts_with("Modbus server on"))
    {
        assert!(
            docs.contains(line),
            "docs/modbus-map.md does not show the printed line {line:?}"
        );
    }
}

#[test]
fn validate_reports_a_bad_modbus_address_with_its_line() {
    let (text, out) = validate_example_with_modbus("plc-gateway:502");
    assert_eq!(out.status.code(), Some(2));
    let report = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .position(|l| l == "address = \"plc-gateway:502\"")
        .map(|i| i + 1)
        .expect("address line");
    assert!(
        report.contains(&format!(":{line}: modbus_server.address")),
        "{report}"
    );
}
