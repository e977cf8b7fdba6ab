//! The aarch64 edge build (`scripts/build-aarch64.sh`, which
//! `scripts/test.sh` runs first) run here under qemu-user: the version, the
//! example configuration validated, and the example model verified, which is
//! real libtorch inference on the emulated CPU.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use ironbridge_tests::paths::repo_root;

/// `<target>/aarch64-unknown-linux-gnu/release/<bin>`, beside the target
/// folder this test was built in.
fn aarch64_binary(bin: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target_dir = exe
        .ancestors()
        .nth(3)
        .context("test binary has no target folder")?;
    let path = target_dir
        .join("aarch64-unknown-linux-gnu/release")
        .join(bin);
    if !path.exists() {
        bail!(
            "{} is not built: run scripts/build-aarch64.sh (scripts/test.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// What one run under qemu-aarch64 gave.
struct Aarch64Run {
    ok: bool,
    /// stdout + stderr.
    text: String,
    /// The process's id (qemu-user runs the binary in its own process).
    pid: u32,
}

/// Runs `bin` under qemu-aarch64 with the aarch64 libtorch.
fn run_aarch64(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Aarch64Run> {
    let path = aarch64_binary(bin)?;
    // The ELF header says what the binary is built for: e_machine 183 is
    // AArch64.
    let header = std::fs::read(&path)?;
    anyhow::ensure!(
        header.get(..4) == Some(b"\x7fELF".as_slice())
            && header.get(18..20) == Some([183u8, 0].as_slice()),
        "{} is not an aarch64 ELF binary",
        path.display()
    );
    let root = repo_root();
    let child = Command::new("qemu-aarch64")
        .arg(&path)
        .args(args)
        .current_dir(&root)
        .env_remove("LD_LIBRARY_PATH")
        .env("QEMU_LD_PREFIX", "/usr/aarch64-linux-gnu")
        .env("LD_LIBRARY_PATH", root.join(".aarch64/runtime"))
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("qemu-aarch64 (scripts/build-aarch64.sh installs it)")?;
    let pid = child.id();
    let output = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(Aarch64Run {
        ok: output.status.success(),
        text,
        pid,
    })
}

#[test]
fn the_aarch64_gateway_reports_its_version_and_validates_the_example() -> Result<()> {
    let Aarch64Run { ok, text: out, .. } = run_aarch64("ironbridge", &["--version"], &[])?;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("ironbridge {} (commit", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    let Aarch64Run { ok, text: out, .. } = run_aarch64(
        "ironbridge",
        &["validate", "--config", "config/example.toml"],
        &[
            ("IRONBRIDGE_ADMIN_PASSWORD", "edge-admin"),
            ("IRONBRIDGE_SPINDLE_PASSWORD", "edge-spindle"),
        ],
    )?;
    assert!(ok, "{out}");
    assert!(out.contains("valid (2 machine(s), 2 model(s))"), "{out}");
    let Aarch64Run { ok, text: out, .. } = run_aarch64("ironbridge-sim", &["--help"], &[])?;
    assert!(ok && out.contains("Usage: ironbridge-sim"), "{out}");
    Ok(())
}

#[test]
fn the_aarch64_gateway_runs_the_example_model_on_libtorch() -> Result<()> {
    let Aarch64Run { ok, text: out, pid } = run_aarch64(
        "ironbridge",
        &["model", "verify", "models/examples/bearing-wear/1.0.0"],
        &[],
    )?;
    eprintln!("{out}");
    assert!(ok, "{out}");
    for line in [
        "[pass] libtorch loads it: CPU",
        "[pass] output shape at batch 8: 8 x 1",
        "[pass] finite outputs on valid inputs",
        "verdict: pass",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    // On aarch64 libtorch's oneDNN writes a perf map of its kernels by
    // default; the gateway turns that off, so that an edge box's /tmp does
    // not gain a file at every start.
    let perf_map = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    let left = perf_map.exists();
    let _ = std::fs::remove_file(&perf_map);
    assert!(!left, "{} was left behind", perf_map.display());
    Ok(())
}
