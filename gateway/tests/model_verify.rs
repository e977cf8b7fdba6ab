//! `ironbridge model verify` as a CI/CD pipeline runs it: the published
//! example model against its recording passes; a tampered file, a worse
//! version compared with `--against`, and unusable input fail with their
//! exit codes (0 pass, 1 fail, 2 unusable).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gateway/ has a parent")
        .to_path_buf()
}

fn verify(args: &[&str]) -> (Output, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_ironbridge"))
        .args(["model", "verify"])
        .args(args)
        .arg("--json")
        .output()
        .expect("run ironbridge");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, json)
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with(name)))
        })
        .unwrap_or_else(|| panic!("no check {name:?} in {report}"))
}

fn copy_version(from: &Path, to: &Path, from_version: &str, to_version: &str) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("read") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
    let manifest = std::fs::read_to_string(to.join("manifest.toml")).expect("manifest");
    std::fs::write(
        to.join("manifest.toml"),
        manifest.replace(
            &format!("version = \"{from_version}\""),
            &format!("version = \"{to_version}\""),
        ),
    )
    .expect("write");
}

#[test]
fn the_published_example_passes_on_its_recording() {
    let root = repo_root();
    let model = root.join("models/examples/bearing-wear/1.0.0");
    let data = root.join("models/training/data/pump-seed-7.csv");
    let (out, report) = verify(&[model.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["passed"], true);
    assert_eq!(report["version"], "1.0.0");
    for name in [
        "manifest and sha256",
        "libtorch loads it",
        "output shape at batch 1",
        "finite outputs on valid inputs",
        "no failure on out-of-range",
        "acceptance mae",
        "acceptance r2",
        "latency at batch 1",
    ] {
        assert_eq!(check(&report, name)["passed"], true, "{name}: {report}");
    }
    let mae = check(&report, "acceptance mae")["detail"]
        .as_str()
        .unwrap_or("");
    assert!(mae.contains("interval"), "an interval, not a point: {mae}");
}

#[test]
fn a_tampered_file_fails_before_libtorch() {
    let tampered = repo_root().join("models/tests/fixtures/tampered/1.0.0");
    let (out, report) = verify(&[tampered.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let sha = check(&report, "manifest and sha256");
    assert_eq!(sha["passed"], false);
    assert!(
        sha["detail"].as_str().unwrap_or("").contains("sha256"),
        "{report}"
    );
    assert!(
        report["checks"].as_array().map_or(0, Vec::len) == 1,
        "nothing after a failed hash (libtorch never reads it): {report}"
    );
}

#[test]
fn against_a_copy_it_is_non_inferior_and_a_worse_version_is_not() {
    let root = repo_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let base = root.join("models/examples/bearing-wear/1.0.0");
    let copy = dir.path().join("1.1.0");
    copy_version(&base, &copy, "1.0.0", "1.1.0");
    let worse = dir.path().join("1.2.0");
    copy_version(&base, &worse, "1.0.0", "1.2.0");
    // A model that adds 0.1 to every output, made with torch itself.
    let made = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/peers/offset_model.py"))
        .arg(&base)
        .arg(&worse)
        .arg("0.1")
        .output()
        .expect("run python");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let data = root.join("models/training/data/pump-seed-7.csv");
    let args = |candidate: &Path| {
        vec![
            candidate.to_str().unwrap().to_string(),
            "--data".into(),
            data.to_str().unwrap().to_string(),
            "--against".into(),
            base.to_str().unwrap().to_string(),
            "--margin".into(),
            "0.005".into(),
        ]
    };
    let run = |candidate: &Path| {
        let a = args(candidate);
        verify(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (out, report) = run(&copy);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(check(&report, "non-inferior")["passed"], true, "{report}");

    let (out, report) = run(&worse);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let ni = check(&report, "non-inferior");
    assert_eq!(ni["passed"], false, "{report}");
}

#[test]
fn unusable_input_exits_2_with_the_reason() {
    let root = repo_root();
    let model = root.join("models/examples/bearing-wear/1.0.0");
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("rows.csv");
    std::fs::write(&csv, "t_s,speed_rpm\n0,1000\n").expect("write");
    let (out, _) = verify(&[model.to_str().unwrap(), "--data", csv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no column \"motor_current_a\""), "{stderr}");

    let (out, _) = verify(&[dir.path().join("missing").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}
