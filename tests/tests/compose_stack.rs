//! `docker-compose.yml` and the `Dockerfile`, checked without a Docker
//! engine (there is none on the machines that run this suite): the compose
//! file against the Compose Specification's JSON schema, every file it
//! mounts, the gateway's configuration in the stack accepted by
//! `ironbridge validate` with exactly the environment the stack gives it,
//! the names and ports that tie the services, the data sources and the
//! dashboards together, the Dockerfile's build steps against the scripts a
//! fresh machine runs, and the runtime folder the image ships (the gateway
//! runs from it alone). What this cannot show (images pulled, containers
//! started) the README says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use ironbridge_tests::gateway_process::gateway_binary;
use ironbridge_tests::paths::repo_root;
use serde_json::Value;

const CHECKER: &str = "docker/compose-check/check.mjs";

fn node(args: &[&str]) -> Result<std::process::Output> {
    let root = repo_root();
    ensure!(
        root.join("docker/compose-check/node_modules").exists(),
        "docker/compose-check/node_modules is missing: run scripts/test.sh (it installs it)"
    );
    Command::new("node")
        .args(args)
        .current_dir(&root)
        .output()
        .context("node (Debian's nodejs or the machine's own) must be on PATH")
}

/// The compose file as Compose reads it (merge keys resolved).
fn compose() -> Result<Value> {
    let out = node(&[CHECKER, "--print", "docker-compose.yml"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn service<'a>(compose: &'a Value, name: &str) -> Result<&'a Value> {
    compose["services"]
        .get(name)
        .with_context(|| format!("no service {name:?} in docker-compose.yml"))
}

/// `KEY: value` environment of a service (the map form the file uses).
fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .map(|env| {
            env.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// `(host path, container path)` of every bind mount (`./...:/...`).
fn bind_mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|v| v.starts_with("./"))
        .filter_map(|v| {
            let mut parts = v.split(':');
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

fn command(service: &Value) -> Vec<String> {
    service["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn config_toml() -> Result<toml::Value> {
    let text = std::fs::read_to_string(repo_root().join("config/compose.toml"))?;
    Ok(toml::from_str(&text)?)
}

#[test]
fn the_compose_file_follows_the_compose_specification() -> Result<()> {
    let out = node(&[CHECKER, "docker-compose.yml"])?;
    assert!(
        out.status.success(),
        "docker-compose.yml breaks the Compose Specification's schema:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The check sees a typo in a key, as `docker compose config` would.
    let text = std::fs::read_to_string(repo_root().join("docker-compose.yml"))?;
    let broken = tempfile::Builder::new().suffix(".yml").tempfile()?;
    std::fs::write(
        broken.path(),
        text.replacen("    healthcheck:", "    healthchek:", 1),
    )?;
    let path = broken.path().to_string_lossy().into_owned();
    let out = node(&[CHECKER, &path])?;
    assert!(!out.status.success(), "a misspelt key passed the check");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("healthchek"), "{report}");
    Ok(())
}

#[test]
fn every_mounted_file_exists_and_the_stack_wires_names_and_ports_together() -> Result<()> {
    let root = repo_root();
    let compose = compose()?;
    let services = compose["services"].as_object().context("services")?;
    for (name, svc) in services {
        for (host, _) in bind_mounts(svc) {
            assert!(
                root.join(&host).exists(),
                "service {name} mounts {host}, which does not exist"
            );
        }
        // Nothing listens beyond the host's loopback.
        for port in svc["ports"].as_array().into_iter().flatten() {
            let port = port.as_str().context("ports are strings")?;
            assert!(port.starts_with("127.0.0.1:"), "{name} publishes {port}");
        }
    }
    for wanted in ["influxdb", "grafana", "simulator", "gateway"] {
        service(&compose, wanted)?;
    }

    let config = config_toml()?;
    // The gateway writes to the stack's InfluxDB, into the org and bucket
    // its setup creates.
    let influxdb = environment(service(&compose, "influxdb")?);
    assert_eq!(
        config["influx"]["url"].as_str(),
        Some("http://influxdb:8086")
    );
    assert_eq!(
        config["influx"]["org"].as_str(),
        influxdb.get("DOCKER_INFLUXDB_INIT_ORG").map(String::as_str)
    );
    assert_eq!(
        config["influx"]["bucket"].as_str(),
        influxdb
            .get("DOCKER_INFLUXDB_INIT_BUCKET")
            .map(String::as_str)
    );
    let gateway = service(&compose, "gateway")?;
    let gateway_env = environment(gateway);
    assert_eq!(
        gateway_env.get("INFLUXDB_TOKEN"),
        influxdb.get("DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"),
        "the gateway writes with the token InfluxDB is set up with"
    );
    assert_eq!(
        config["influx"]["token_env"].as_str(),
        Some("INFLUXDB_TOKEN")
    );

    // The machines are the simulator services, on the ports they bind.
    let binds = |svc: &str| -> Result<String> {
        let cmd = command(service(&compose, svc)?);
        let at = cmd
            .iter()
            .position(|a| a == "--bind")
            .with_context(|| format!("{svc} has no --bind"))?;
        let bind = cmd.get(at + 1).context("--bind value")?;
        Ok(bind.rsplit(':').next().unwrap_or_default().to_string())
    };
    let machines = config["machines"].as_array().context("machines")?;
    let machine = |name: &str| machines.iter().find(|m| m["name"].as_str() == Some(name));
    assert_eq!(
        machine("pump-1").and_then(|m| m["address"].as_str()),
        Some(format!("simulator:{}", binds("simulator")?).as_str())
    );
    assert_eq!(
        machine("spindle-1").and_then(|m| m["endpoint"].as_str()),
        Some(format!("opc.tcp://spindle:{}/", binds("spindle")?).as_str())
    );
    assert_eq!(
        environment(service(&compose, "spindle")?).get("IRONBRIDGE_SPINDLE_PASSWORD"),
        gateway_env.get("IRONBRIDGE_SPINDLE_PASSWORD"),
        "the spindle and the gateway share its password"
    );

    // The gateway's published ports are the ones its configuration serves.
    let http_port = config["http"]["address"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .context("[http] address")?
        .to_string();
    let opcua_port = config["opcua"]["port"].as_integer().context("opcua.port")?;
    let published: Vec<&str> = gateway["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(published.contains(&format!("127.0.0.1:{http_port}:{http_port}").as_str()));
    assert!(published.contains(&format!("127.0.0.1:{opcua_port}:{opcua_port}").as_str()));
    let health = gateway["healthcheck"]["test"].to_string();
    assert!(
        health.contains(&format!("http://127.0.0.1:{http_port}/health")),
        "{health}"
    );
    // Prometheus scrapes that port on the gateway service.
    let prometheus_yml = std::fs::read_to_string(root.join("docker/prometheus/prometheus.yml"))?;
    assert!(
        prometheus_yml.contains(&format!("\"gateway:{http_port}\"")),
        "{prometheus_yml}"
    );

    // Grafana: the provisioning mounted where Grafana reads it, the
    // dashboards where the provider looks, and every variable the data
    // sources use set to the stack's services.
    let grafana = service(&compose, "grafana")?;
    let mounts = bind_mounts(grafana);
    assert!(mounts.contains(&(
        "./dashboards/provisioning".into(),
        "/etc/grafana/provisioning".into()
    )));
    let provider =
        std::fs::read_to_string(root.join("dashboards/provisioning/dashboards/ironbridge.yaml"))?;
    let provider_path = provider
        .lines()
        .find_map(|l| l.trim().strip_prefix("path:"))
        .map(str::trim)
        .context("the provider has a path")?;
    assert!(
        mounts.contains(&("./dashboards".into(), provider_path.into())),
        "dashboards not mounted at the provider's path {provider_path}: {mounts:?}"
    );
    let grafana_env = environment(grafana);
    let datasources =
        std::fs::read_to_string(root.join("dashboards/provisioning/datasources/ironbridge.yaml"))?;
    let used = provisioning_variables(&datasources);
    assert_eq!(
        used,
        [
            "IRONBRIDGE_INFLUX_URL",
            "IRONBRIDGE_INFLUX_USER",
            "IRONBRIDGE_INFLUX_PASSWORD",
            "IRONBRIDGE_PROMETHEUS_URL"
        ],
        "the variables the data sources use"
    );
    for var in &used {
        assert!(
            grafana_env.contains_key(var),
            "the data sources need ${{{var}}}; grafana's environment lacks it"
        );
    }
    assert_eq!(
        grafana_env.get("IRONBRIDGE_INFLUX_URL").map(String::as_str),
        Some("http://influxdb:8086")
    );
    assert_eq!(
        grafana_env
            .get("IRONBRIDGE_PROMETHEUS_URL")
            .map(String::as_str),
        Some("http://prometheus:9090")
    );
    // The InfluxQL database the dashboards query is the bucket's DBRP
    // mapping, and Grafana's login is the one the init script creates.
    assert!(
        datasources.contains(&format!(
            "dbName: {}",
            influxdb["DOCKER_INFLUXDB_INIT_BUCKET"]
        )),
        "{datasources}"
    );
    let dbrp = std::fs::read_to_string(root.join("docker/influxdb/dbrp.sh"))?;
    assert!(dbrp.contains("--db \"${DOCKER_INFLUXDB_INIT_BUCKET}\""));
    assert!(dbrp.contains(&format!(
        "--username {}",
        grafana_env["IRONBRIDGE_INFLUX_USER"]
    )));
    assert_eq!(
        influxdb.get("INFLUXDB_GRAFANA_PASSWORD"),
        grafana_env.get("IRONBRIDGE_INFLUX_PASSWORD")
    );
    Ok(())
}

/// The environment variables a provisioning file uses, `$VAR` or `${VAR}`
/// (Grafana expands both), outside comments.
fn provisioning_variables(yaml: &str) -> Vec<String> {
    let mut used = Vec::new();
    for line in yaml.lines() {
        let line = line.split(" #").next().unwrap_or_default();
        if line.trim_start().starts_with('#') {
            continue;
        }
        for part in line.split('$').skip(1) {
            let part = part.strip_prefix('{').unwrap_or(part);
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                used.push(name);
            }
        }
    }
    used
}

/// `ironbridge validate` on the stack's configuration, with only the
/// variables the gateway service sets (dummy values: Compose substitutes
/// the real ones from .env).
fn validate_with_stack_env(binary: &Path, lib_path: &str) -> Result<std::process::Output> {
    let compose = compose()?;
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("LD_LIBRARY_PATH", lib_path)
        .args(["validate", "--config", "config/compose.toml"])
        .current_dir(repo_root());
    for key in environment(service(&compose, "gateway")?).keys() {
        cmd.env(key, "set-by-compose");
    }
    Ok(cmd.output()?)
}

#[test]
fn the_stack_configuration_is_valid_with_the_environment_the_stack_gives() -> Result<()> {
    let lib_path = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let out = validate_with_stack_env(&gateway_binary()?, &lib_path)?;
    assert!(
        out.status.success(),
        "config/compose.toml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The simulators' command lines are ones ironbridge-sim accepts.
    let sim = gateway_binary()?.with_file_name("ironbridge-sim");
    ensure!(
        sim.exists(),
        "{} is not built (cargo test --workspace builds it)",
        sim.display()
    );
    let compose = compose()?;
    for svc in ["simulator", "spindle"] {
        let cmd = command(service(&compose, svc)?);
        let sub = cmd.first().context("a subcommand")?;
        let help = Command::new(&sim).args([sub, "--help"]).output()?;
        assert!(help.status.success(), "ironbridge-sim {sub} --help");
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in cmd.iter().filter(|a| a.starts_with("--")) {
            assert!(
                help.contains(flag.as_str()),
                "{svc}: ironbridge-sim {sub} has no {flag}:\n{help}"
            );
        }
    }
    Ok(())
}

/// The Dockerfile's RUN steps, with continuation lines joined.
fn dockerfile_runs() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile"))?;
    let mut runs = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        match current.as_mut() {
            Some(run) => run.push_str(line.trim_end_matches('\\')),
            None if line.starts_with("RUN ") => {
                current = Some(line.trim_end_matches('\\').to_string());
            }
            None => {}
        }
        if !line.ends_with('\\') {
            if let Some(run) = current.take() {
                runs.push(run);
            }
        }
    }
    Ok(runs)
}

#[test]
fn the_dockerfile_builds_with_the_scripts_a_fresh_machine_runs() -> Result<()> {
    let root = repo_root();
    let runs = dockerfile_runs()?;
    // libtorch comes from setup.sh's pinned torch, never from a pin of its
    // own in the Dockerfile.
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile"))?;
    for forbidden in [
        "pip install",
        "torch==",
        "libtorch-",
        "download.pytorch.org",
    ] {
        assert!(
            !dockerfile.contains(forbidden),
            "the Dockerfile installs torch itself ({forbidden}); use scripts/setup.sh"
        );
    }
    let has = |needle: &str| runs.iter().any(|r| r.contains(needle));
    assert!(has("bash scripts/setup.sh --build-only"), "{runs:#?}");
    assert!(has("bash scripts/collect-runtime.sh"), "{runs:#?}");
    // The same build command as the demo's.
    let demo = std::fs::read_to_string(root.join("scripts/demo.sh"))?;
    let build = demo
        .lines()
        .find(|l| l.trim_start().starts_with("cargo build"))
        .context("demo.sh builds")?
        .trim();
    assert!(
        has(&format!("source scripts/env.sh && {build}")),
        "the Dockerfile does not build as demo.sh does ({build}): {runs:#?}"
    );
    // What it copies exists.
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            if *src != "." {
                assert!(root.join(src).exists(), "COPY {src}: missing");
            }
        }
    }
    // The runtime runs as a user of its own, not root.
    let runtime = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, r)| r)
        .context("a runtime stage")?;
    assert!(runtime.contains("\nUSER ironbridge\n"), "{runtime}");
    Ok(())
}

#[test]
fn the_runtime_folder_the_image_ships_runs_the_gateway_alone() -> Result<()> {
    let out_dir = tempfile::tempdir()?;
    let gateway = gateway_binary()?;
    let status = Command::new("bash")
        .arg(repo_root().join("scripts/collect-runtime.sh"))
        .arg(out_dir.path())
        .arg(&gateway)
        .status()?;
    ensure!(status.success(), "collect-runtime.sh failed");
    let bin: PathBuf = out_dir.path().join("bin/ironbridge");
    let lib = out_dir.path().join("lib");
    let libs: Vec<String> = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(libs.iter().any(|l| l == "libtorch_cpu.so"), "{libs:?}");
    // Nothing from the venv or the build: only the folder's own libraries.
    let out = validate_with_stack_env(&bin, &lib.to_string_lossy())?;
    if !out.status.success() {
        bail!(
            "the gateway does not run from the runtime folder alone:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
