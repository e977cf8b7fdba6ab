//! The Grafana dashboards of `dashboards/`, tested rather than hoped for.
//!
//! A gateway (the example configuration) reads the simulated pump and
//! spindle and writes to a real InfluxDB 1.x; a real Prometheus scrapes its
//! /metrics. A shadow version of the spindle's model runs and passes the
//! gate (so predictions by two versions, shadow predictions, gate points and
//! a version change exist), and the pump's model sees drift. Then every
//! template-variable query, every panel query and every annotation query of
//! every dashboard runs against those servers, expanded as Grafana expands
//! it (`ironbridge_tests::grafana`), with each variable at "All" and then at
//! each of its values alone, and must return the series the panel is meant
//! to show: the right measurement (or metric), the right tags (labels) and
//! values that are not all empty. No Grafana server runs here: the
//! dashboards' JSON is checked against Grafana's published schema
//! (@grafana/schema) instead, which must also reject a broken one.
//!
//! `IRONBRIDGE_DASHBOARD_PREVIEW=<file>` writes every query's answer to that
//! file for `scripts/preview-dashboards.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use ironbridge_tests::gateway_rig::{GatewayRig, InfluxV1Target, RigOptions};
use ironbridge_tests::grafana::{self, TimeRange};
use ironbridge_tests::influxdb1::{InfluxDb1, ADMIN_PASSWORD, ADMIN_USER};
use ironbridge_tests::model_dirs::{copy_dir, copy_version};
use ironbridge_tests::paths::{repo_root, venv_python};
use ironbridge_tests::prometheus::Prometheus;
use serde_json::{json, Value};

/// The database and data source uids the provisioning names.
const DATABASE: &str = "ironbridge";
const INFLUX_UID: &str = "ironbridge-influxdb";
const PROMETHEUS_UID: &str = "ironbridge-prometheus";

/// Each dashboard file and the uid it must keep (links and bookmarks use it).
const DASHBOARDS: &[(&str, &str)] = &[
    ("plant-overview.json", "ironbridge-plant-overview"),
    ("model-lifecycle.json", "ironbridge-model-lifecycle"),
    ("gateway-health.json", "ironbridge-gateway-health"),
];

/// config/example.toml's `[gateway] name`: a tag on every point, a label
/// on every series.
const GATEWAY: &str = "gateway-1";
/// What every series of every query carries besides its own tags: a
/// fleet's panels keep gateways apart.
const FLEET_TAG: (&str, &[&str]) = ("gateway", &[GATEWAY]);
const PUMP: &str = "pump-1";
const SPINDLE: &str = "spindle-1";
const PUMP_MODEL: &str = "bearing-wear";
const SPINDLE_MODEL: &str = "spindle-wear";
const ADMIN: (&str, &str) = ("dashboards-admin", "admin-password-for-dashboards");

/// What one query must return. `tags`: tags (labels) every series
/// carries; where values are listed, the values seen across the series
/// with every variable at "All" must be exactly those.
struct Expect {
    dashboard: &'static str,
    /// The panel's title; `annotation: <name>` for an annotation.
    panel: &'static str,
    ref_id: &'static str,
    /// InfluxDB: the measurement of every series. Prometheus: the metric
    /// the expression reads (aggregations drop the name from the answer).
    series: &'static str,
    tags: &'static [(&'static str, &'static [&'static str])],
    /// (column, value) that some row must hold.
    contains: &'static [(&'static str, &'static str)],
}

const BOTH_MACHINES: &[&str] = &[PUMP, SPINDLE];
const BOTH_MODELS: &[&str] = &[PUMP_MODEL, SPINDLE_MODEL];
const VERSIONS: &[&str] = &["1.0.0", "1.1.0"];
const ANY: &[&str] = &[];

const fn e(
    dashboard: &'static str,
    panel: &'static str,
    ref_id: &'static str,
    series: &'static str,
    tags: &'static [(&'static str, &'static [&'static str])],
) -> Expect {
    Expect {
        dashboard,
        panel,
        ref_id,
        series,
        tags,
        contains: &[],
    }
}

const PLANT: &str = "ironbridge-plant-overview";
const LIFECYCLE: &str = "ironbridge-model-lifecycle";
const HEALTH: &str = "ironbridge-gateway-health";

/// Every query of every dashboard, and what it must show. A panel query
/// without an entry, or an entry without its query, fails the test.
const EXPECTED: &[Expect] = &[
    // Plant overview (InfluxDB).
    e(
        PLANT,
        "Latest predictions",
        "A",
        "prediction",
        &[
            ("machine", BOTH_MACHINES),
            ("model", BOTH_MODELS),
            ("version", VERSIONS),
        ],
    ),
    e(
        PLANT,
        "Predictions",
        "A",
        "prediction",
        &[
            ("machine", BOTH_MACHINES),
            ("model", BOTH_MODELS),
            ("version", VERSIONS),
        ],
    ),
    e(
        PLANT,
        "Speed",
        "A",
        "process",
        &[("machine", BOTH_MACHINES)],
    ),
    e(PLANT, "Load", "A", "process", &[("machine", &[SPINDLE])]),
    e(
        PLANT,
        "Motor current",
        "A",
        "process",
        &[("machine", BOTH_MACHINES)],
    ),
    e(
        PLANT,
        "Bearing temperature",
        "A",
        "process",
        &[("machine", BOTH_MACHINES)],
    ),
    e(
        PLANT,
        "Vibration",
        "A",
        "process",
        &[("machine", BOTH_MACHINES)],
    ),
    e(
        PLANT,
        "Discharge pressure",
        "A",
        "process",
        &[("machine", &[PUMP])],
    ),
    e(PLANT, "Flow", "A", "process", &[("machine", &[PUMP])]),
    e(PLANT, "Run time", "A", "process", &[("machine", &[PUMP])]),
    e(
        PLANT,
        "Running and alarms",
        "A",
        "process",
        &[("machine", BOTH_MACHINES)],
    ),
    e(
        PLANT,
        "Running and alarms",
        "B",
        "process",
        &[("machine", &[PUMP])],
    ),
    Expect {
        contains: &[("event", "activated")],
        ..e(
            PLANT,
            "annotation: Active model version changed",
            "Anno",
            "model_event",
            &[("model", BOTH_MODELS)],
        )
    },
    // Model lifecycle (InfluxDB, then Prometheus).
    e(
        LIFECYCLE,
        "Predictions by model version",
        "A",
        "prediction",
        &[("model", BOTH_MODELS), ("version", VERSIONS)],
    ),
    e(
        LIFECYCLE,
        "Shadow against active",
        "A",
        "prediction",
        &[
            ("machine", BOTH_MACHINES),
            ("model", BOTH_MODELS),
            ("version", VERSIONS),
        ],
    ),
    e(
        LIFECYCLE,
        "Shadow against active",
        "B",
        "prediction_shadow",
        &[
            ("machine", &[SPINDLE]),
            ("model", &[SPINDLE_MODEL]),
            ("version", &["1.1.0"]),
        ],
    ),
    e(
        LIFECYCLE,
        "Gate statistics",
        "A",
        "gate",
        &[("model", &[SPINDLE_MODEL]), ("shadow_version", &["1.1.0"])],
    ),
    Expect {
        contains: &[("decision", "Pass")],
        ..e(
            LIFECYCLE,
            "Gate decisions",
            "A",
            "gate",
            &[
                ("model", &[SPINDLE_MODEL]),
                ("active_version", ANY),
                ("shadow_version", &["1.1.0"]),
            ],
        )
    },
    e(
        LIFECYCLE,
        "Drift (PSI) per input",
        "A",
        "drift",
        // Only the pump's model judges drift within seconds here.
        &[
            ("machine", &[PUMP]),
            ("model", &[PUMP_MODEL]),
            ("input", ANY),
        ],
    ),
    e(
        LIFECYCLE,
        "Inferences per second",
        "A",
        "ironbridge_inferences_total",
        &[("model", BOTH_MODELS), ("version", VERSIONS)],
    ),
    e(
        LIFECYCLE,
        "Rejections and failures",
        "A",
        "ironbridge_inference_rejected_total",
        &[
            ("model", BOTH_MODELS),
            (
                "reason",
                &["queue_full", "rate_limited", "row_length", "stopped"],
            ),
        ],
    ),
    e(
        LIFECYCLE,
        "Rejections and failures",
        "B",
        "ironbridge_inference_failed_total",
        &[("model", BOTH_MODELS)],
    ),
    e(
        LIFECYCLE,
        "Rejections and failures",
        "C",
        "ironbridge_shadow_rejected_total",
        &[("model", BOTH_MODELS)],
    ),
    e(
        LIFECYCLE,
        "Model state",
        "A",
        "ironbridge_model_state",
        &[
            ("model", BOTH_MODELS),
            ("version", VERSIONS),
            ("state", ANY),
        ],
    ),
    Expect {
        contains: &[("event", "activated")],
        ..e(
            LIFECYCLE,
            "annotation: Active model version changed",
            "Anno",
            "model_event",
            &[("model", BOTH_MODELS)],
        )
    },
    // Gateway health (Prometheus).
    e(
        HEALTH,
        "Scans per second",
        "A",
        "ironbridge_source_scans_total",
        &[("machine", BOTH_MACHINES)],
    ),
    e(
        HEALTH,
        "Connection state",
        "A",
        "ironbridge_source_up",
        &[("machine", BOTH_MACHINES)],
    ),
    e(HEALTH, "Connection state", "B", "ironbridge_sink_up", &[]),
    e(
        HEALTH,
        "Reconnects, outages and link failures",
        "A",
        "ironbridge_source_reconnects_total",
        &[("machine", BOTH_MACHINES)],
    ),
    e(
        HEALTH,
        "Reconnects, outages and link failures",
        "B",
        "ironbridge_source_outages_total",
        &[("machine", BOTH_MACHINES)],
    ),
    e(
        HEALTH,
        "Reconnects, outages and link failures",
        "C",
        "ironbridge_source_link_failures_total",
        &[("machine", BOTH_MACHINES)],
    ),
    e(
        HEALTH,
        "Inference latency",
        "A",
        "ironbridge_inference_latency_seconds_bucket",
        &[("model", BOTH_MODELS)],
    ),
    e(
        HEALTH,
        "Inference latency",
        "B",
        "ironbridge_inference_latency_seconds_bucket",
        &[("model", BOTH_MODELS)],
    ),
    e(
        HEALTH,
        "Inference batch size",
        "A",
        "ironbridge_inference_batch_size_count",
        &[("model", BOTH_MODELS)],
    ),
    e(
        HEALTH,
        "Inference batch size",
        "B",
        "ironbridge_inference_batch_size_bucket",
        &[("model", BOTH_MODELS)],
    ),
    e(
        HEALTH,
        "Sink backlog",
        "A",
        "ironbridge_sink_buffered_lines",
        &[],
    ),
    e(HEALTH, "Spool size", "A", "ironbridge_spool_bytes", &[]),
    e(
        HEALTH,
        "Inference queue depth",
        "A",
        "ironbridge_inference_queue_depth",
        &[("model", BOTH_MODELS), ("version", VERSIONS)],
    ),
    e(
        HEALTH,
        "Lines written and write failures",
        "A",
        "ironbridge_sink_lines_written_total",
        &[],
    ),
    e(
        HEALTH,
        "Lines written and write failures",
        "B",
        "ironbridge_sink_write_failures_total",
        &[],
    ),
    e(
        HEALTH,
        "Points dropped by reason",
        "A",
        "ironbridge_sink_points_dropped_total",
        &[(
            "reason",
            &[
                "overflow",
                "rejected",
                "dead_letter",
                "unencodable",
                "shutdown",
                "channel_full",
            ],
        )],
    ),
];

/// Each template variable and the values its query must find.
const VARIABLES: &[(&str, &str, &[&str])] = &[
    (PLANT, "gateway", &[GATEWAY]),
    (PLANT, "machine", BOTH_MACHINES),
    (LIFECYCLE, "gateway", &[GATEWAY]),
    (LIFECYCLE, "model", BOTH_MODELS),
    (HEALTH, "gateway", &[GATEWAY]),
    (HEALTH, "machine", BOTH_MACHINES),
];

fn dashboards_dir() -> PathBuf {
    repo_root().join("dashboards")
}

fn load_dashboards() -> Result<Vec<(String, Value)>> {
    DASHBOARDS
        .iter()
        .map(|(file, _)| {
            let path = dashboards_dir().join(file);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let dashboard: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            Ok((file.to_string(), dashboard))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The schema check (node, @grafana/schema; dashboards/schema-check/).

/// Runs `check.mjs` on `files`: its exit status and per-file errors.
fn schema_check(files: &[PathBuf]) -> Result<(bool, Value)> {
    let dir = dashboards_dir().join("schema-check");
    ensure!(
        dir.join("node_modules/@grafana/schema").is_dir(),
        "{} has no node_modules: run scripts/test.sh (it installs them with npm ci)",
        dir.display()
    );
    let out = std::process::Command::new("node")
        .arg(dir.join("check.mjs"))
        .args(files)
        .output()
        .context("node not installed? run scripts/test.sh")?;
    let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "check.mjs printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    ensure!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "check.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), report))
}

#[test]
fn the_dashboards_match_grafanas_dashboard_schema() -> Result<()> {
    let files: Vec<PathBuf> = DASHBOARDS
        .iter()
        .map(|(file, _)| dashboards_dir().join(file))
        .collect();
    let (ok, report) = schema_check(&files)?;
    assert!(ok, "{report:#}");
    for file in &files {
        assert_eq!(report[file.display().to_string()], json!([]), "{report:#}");
    }

    // Stable uids, and only the provisioned data sources.
    let provisioning =
        std::fs::read_to_string(dashboards_dir().join("provisioning/datasources/ironbridge.yaml"))?;
    for ((file, dashboard), (_, uid)) in load_dashboards()?.iter().zip(DASHBOARDS) {
        assert_eq!(dashboard["uid"], *uid, "{file}");
        let mut refs = Vec::new();
        collect_datasource_uids(dashboard, &mut refs);
        for used in refs {
            assert!(
                [INFLUX_UID, PROMETHEUS_UID].contains(&used.as_str()),
                "{file} uses data source {used}"
            );
            assert!(
                provisioning.contains(&format!("uid: {used}")),
                "{used} is not provisioned"
            );
        }
    }
    Ok(())
}

fn collect_datasource_uids(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(uid) = map
                .get("datasource")
                .and_then(|d| d.get("uid"))
                .and_then(Value::as_str)
            {
                out.push(uid.to_string());
            }
            map.values().for_each(|v| collect_datasource_uids(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_datasource_uids(v, out)),
        _ => {}
    }
}

/// The schema check is not a formality: each of these breaks one rule of
/// Grafana's schema, and each must be reported where it is.
#[test]
fn a_broken_dashboard_fails_the_schema_check() -> Result<()> {
    let (_, plant) = load_dashboards()?
        .into_iter()
        .next()
        .context("no dashboard")?;
    type Break = fn(&mut Value) -> Option<()>;
    let breaks: &[(&str, Break, &str)] = &[
        (
            "width-as-text",
            |d| {
                d["panels"][0]["gridPos"]["w"] = json!("wide");
                Some(())
            },
            "/panels/0/gridPos/w",
        ),
        (
            "no-schema-version",
            |d| d.as_object_mut()?.remove("schemaVersion").map(|_| ()),
            "schemaVersion",
        ),
        (
            "unknown-variable-type",
            |d| {
                d["templating"]["list"][0]["type"] = json!("dropdown");
                Some(())
            },
            "/templating/list/0/type",
        ),
        (
            "misspelt-key",
            |d| {
                let panel = d["panels"][1].as_object_mut()?;
                let grid = panel.remove("gridPos")?;
                panel.insert("gridpos".into(), grid);
                Some(())
            },
            "gridpos",
        ),
    ];
    let dir = tempfile::tempdir()?;
    let mut files = Vec::new();
    for (name, damage, _) in breaks {
        let mut broken = plant.clone();
        damage(&mut broken).with_context(|| format!("{name}: nothing to break"))?;
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec(&broken)?)?;
        files.push(path);
    }
    let (ok, report) = schema_check(&files)?;
    assert!(!ok, "broken dashboards passed: {report:#}");
    for ((name, _, needle), path) in breaks.iter().zip(&files) {
        let errors = report[path.display().to_string()].to_string();
        assert!(
            errors.contains(needle),
            "{name}: {needle} not reported in {errors}"
        );
    }
    Ok(())
}

/// Grafana's unit for each unit the example configuration gives a tag.
const GRAFANA_UNITS: &[(&str, &str)] = &[
    ("rpm", "rotrpm"),
    ("A", "amp"),
    ("°C", "celsius"),
    ("mm/s", "suffix: mm/s"),
    ("bar", "pressurebar"),
    ("m³/h", "suffix: m³/h"),
    ("%", "percent"),
    ("s", "s"),
];

/// The Plant overview shows every process value the example configuration
/// gives a unit, in that unit.
#[test]
fn every_process_value_with_a_unit_has_a_panel_in_that_unit() -> Result<()> {
    let config: toml::Value = toml::from_str(&std::fs::read_to_string(
        repo_root().join("config/example.toml"),
    )?)?;
    let dashboards = load_dashboards()?;
    let (_, plant) = dashboards
        .iter()
        .find(|(_, d)| d["uid"] == PLANT)
        .context("no Plant overview")?;
    // Field -> the unit of the panel that reads it from `process`.
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    for panel in plant["panels"].as_array().context("panels")? {
        let unit = panel["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .unwrap_or("")
            .to_string();
        for target in panel["targets"].as_array().context("targets")? {
            let query = target["query"].as_str().unwrap_or("");
            if !query.contains(r#"FROM "process""#) {
                continue;
            }
            for call in [r#"mean(""#, r#"last(""#] {
                for piece in query.split(call).skip(1) {
                    if let Some((field, _)) = piece.split_once('"') {
                        shown.insert(field.to_string(), unit.clone());
                    }
                }
            }
        }
    }
    let mut checked = 0;
    // toml's Index panics on a missing key: `get` instead.
    let list = |v: &toml::Value, key: &str| v.get(key).and_then(|l| l.as_array()).cloned();
    for machine in list(&config, "machines").context("machines")? {
        for tag in list(&machine, "tags").context("tags")? {
            let text = |key: &str| tag.get(key).and_then(|v| v.as_str().map(str::to_string));
            let (Some(name), Some(unit)) = (text("name"), text("unit")) else {
                continue;
            };
            let wanted = GRAFANA_UNITS
                .iter()
                .find(|(u, _)| *u == unit.as_str())
                .with_context(|| format!("no Grafana unit known for {unit:?} ({name})"))?
                .1;
            assert_eq!(
                shown.get(&name).map(String::as_str),
                Some(wanted),
                "{name} ({unit}) on the Plant overview"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} tags with units");
    Ok(())
}

// ---------------------------------------------------------------------------
// The expansion, against Grafana's own examples.

#[test]
fn macros_expand_as_grafana_expands_them() -> Result<()> {
    let range = TimeRange {
        from_ms: 1_700_000_000_000,
        to_ms: 1_700_000_600_000,
    };
    let all = vec![(
        "machine".to_string(),
        vec!["pump-1".to_string(), "line.2/a".to_string()],
    )];
    // 10 minutes over a full-width panel (1920 points): 312 ms, rounded to
    // 200 ms, raised to the data source's 1 s minimum.
    let panel = json!({"gridPos": {"w": 24}});
    let interval = grafana::panel_interval_ms(&panel, range, 1_000);
    assert_eq!(interval, 1_000);
    assert_eq!(grafana::panel_interval_ms(&panel, range, 1), 200);
    let q = grafana::expand_influxql(
        r#"SELECT mean("x") FROM "process" WHERE ("machine" =~ /^$machine$/) AND $timeFilter GROUP BY time($__interval) fill(none)"#,
        range,
        interval,
        &all,
    )?;
    assert_eq!(
        q,
        r#"SELECT mean("x") FROM "process" WHERE ("machine" =~ /^(pump-1|line\.2\/a)$/) AND time >= 1700000000000ms and time <= 1700000600000ms GROUP BY time(1s) fill(none)"#
    );
    // Grafana's Prometheus test: ['a|bc', 'de|f'] -> (a\\|bc|de\\|f).
    let pipes = vec![(
        "v".to_string(),
        vec!["a|bc".to_string(), "de|f".to_string()],
    )];
    let p = grafana::expand_promql(
        r#"rate(x{l=~"$v"}[$__rate_interval]) / $__range"#,
        range,
        15_000,
        15_000,
        &pipes,
    )?;
    assert_eq!(p.expr, r#"rate(x{l=~"(a\\|bc|de\\|f)"}[1m0s]) / 600s"#);
    assert_eq!(
        (p.step_ms, p.start_s, p.end_s),
        (15_000, 1_699_999_995, 1_700_000_595)
    );
    assert_eq!(grafana::go_duration(75_000), "1m15s");
    assert_eq!(grafana::go_duration(3_600_000), "1h0m0s");
    assert_eq!(grafana::format_interval(90_000), "1m");
    assert_eq!(grafana::round_interval(12_000.0), 10_000);
    // A macro nobody expands is an error, not a silent pass.
    assert!(grafana::expand_influxql("SELECT $__unknown", range, 1, &all).is_err());
    Ok(())
}

// ---------------------------------------------------------------------------
// Every query against real servers.

/// One series of an answer, InfluxDB's or Prometheus's, in one shape.
#[derive(Debug, Clone, serde::Serialize)]
struct Series {
    name: String,
    tags: BTreeMap<String, String>,
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

impl Series {
    /// Some row holds a value (not null, not NaN) outside the time column.
    fn has_values(&self) -> bool {
        self.rows.iter().any(|row| {
            row.iter()
                .zip(&self.columns)
                .any(|(v, c)| c != "time" && !v.is_null())
        })
    }
}

struct Servers {
    influx: InfluxDb1,
    prometheus: Prometheus,
    http: reqwest::Client,
    range: TimeRange,
    influx_min_interval_ms: i64,
    scrape_interval_ms: i64,
}

impl Servers {
    async fn influxql(&self, query: &str) -> Result<Vec<Series>> {
        // As Grafana's data source is provisioned: POST, epoch=ms.
        let body: Value = self
            .http
            .post(format!("{}/query", self.influx.url()))
            .basic_auth(ADMIN_USER, Some(ADMIN_PASSWORD))
            .form(&[("db", DATABASE), ("q", query), ("epoch", "ms")])
            .send()
            .await?
            .json()
            .await?;
        let result = &body["results"][0];
        if let Some(error) = result.get("error").or(body.get("error")) {
            bail!("InfluxDB refused {query:?}: {error}");
        }
        let mut out = Vec::new();
        for s in result["series"].as_array().cloned().unwrap_or_default() {
            out.push(Series {
                name: s["name"].as_str().unwrap_or("").to_string(),
                tags: s["tags"]
                    .as_object()
                    .map(|t| {
                        t.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                columns: s["columns"]
                    .as_array()
                    .context("columns")?
                    .iter()
                    .map(|c| c.as_str().unwrap_or("").to_string())
                    .collect(),
                rows: s["values"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| r.as_array().cloned().unwrap_or_default())
                    .collect(),
            });
        }
        Ok(out)
    }

    async fn prometheus_api(&self, path: &str, params: &[(&str, String)]) -> Result<Value> {
        let body: Value = self
            .http
            .post(format!("{}/api/v1/{path}", self.prometheus.url()))
            .form(params)
            .send()
            .await?
            .json()
            .await?;
        ensure!(body["status"] == "success", "{path} {params:?}: {body}");
        Ok(body["data"].clone())
    }

    async fn promql(&self, request: &grafana::PromRequest) -> Result<Vec<Series>> {
        let data = self
            .prometheus_api(
                "query_range",
                &[
                    ("query", request.expr.clone()),
                    ("start", request.start_s.to_string()),
                    ("end", request.end_s.to_string()),
                    ("step", format!("{}ms", request.step_ms)),
                ],
            )
            .await?;
        let mut out = Vec::new();
        for s in data["result"].as_array().cloned().unwrap_or_default() {
            let tags: BTreeMap<String, String> = s["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let rows = s["values"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|pair| {
                    let t = pair[0].as_f64().map_or(Value::Null, |t| json!(t * 1000.0));
                    let v = pair[1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .filter(|v| v.is_finite())
                        .map_or(Value::Null, |v| json!(v));
                    vec![t, v]
                })
                .collect();
            out.push(Series {
                name: tags.get("__name__").cloned().unwrap_or_default(),
                tags,
                columns: vec!["time".into(), "value".into()],
                rows,
            });
        }
        Ok(out)
    }

    /// Runs a panel's (or annotation's) query with the variables as
    /// selected: the expanded query and its answer.
    async fn run(
        &self,
        panel: &Value,
        target: &Value,
        vars: grafana::Selection<'_>,
    ) -> Result<(String, Vec<Series>, bool)> {
        let uid = target["datasource"]["uid"]
            .as_str()
            .or(panel["datasource"]["uid"].as_str())
            .context("query without a data source")?;
        match uid {
            INFLUX_UID => {
                let raw = target["query"].as_str().context("InfluxQL without query")?;
                ensure!(
                    target["rawQuery"] == true,
                    "only raw InfluxQL is run here: {target}"
                );
                let interval =
                    grafana::panel_interval_ms(panel, self.range, self.influx_min_interval_ms);
                let query = grafana::expand_influxql(raw, self.range, interval, vars)?;
                let answer = self.influxql(&query).await?;
                Ok((query, answer, false))
            }
            PROMETHEUS_UID => {
                let expr = target["expr"].as_str().context("PromQL without expr")?;
                let interval =
                    grafana::panel_interval_ms(panel, self.range, self.scrape_interval_ms);
                let request = grafana::expand_promql(
                    expr,
                    self.range,
                    interval,
                    self.scrape_interval_ms,
                    vars,
                )?;
                let answer = self.promql(&request).await?;
                Ok((request.expr, answer, true))
            }
            other => bail!("unknown data source {other}"),
        }
    }

    /// A template variable's values, from its query with the variables
    /// before it (`earlier`) at their selection, as Grafana chains them.
    async fn variable_values(
        &self,
        variable: &Value,
        earlier: grafana::Selection<'_>,
    ) -> Result<Vec<String>> {
        let query = variable["query"].as_str().context("variable query")?;
        let mut values = BTreeSet::new();
        match variable["datasource"]["uid"].as_str() {
            Some(INFLUX_UID) => {
                // Grafana sends it as a raw query through the same backend.
                let query = grafana::expand_influxql(query, self.range, 1, earlier)?;
                for s in self.influxql(&query).await? {
                    let at = s
                        .columns
                        .iter()
                        .position(|c| c == "value")
                        .context("SHOW TAG VALUES answers key, value")?;
                    for row in &s.rows {
                        if let Some(v) = row.get(at).and_then(Value::as_str) {
                            values.insert(v.to_string());
                        }
                    }
                }
            }
            Some(PROMETHEUS_UID) => {
                // label_values(metric, label): the label's values on the
                // metric's series within the time range.
                let inner = query
                    .strip_prefix("label_values(")
                    .and_then(|q| q.strip_suffix(')'))
                    .context("only label_values(metric, label) is modelled")?;
                let (metric, label) = inner.rsplit_once(',').context("label_values(m, l)")?;
                let metric = grafana::replace_variables(metric, &|name| {
                    earlier.iter().find(|(n, _)| n == name).map(|(_, values)| {
                        grafana::regex_values(values, grafana::prometheus_regex_escape)
                    })
                });
                grafana::ensure_expanded(&metric)?;
                // GET: Prometheus takes no POST on this endpoint.
                let body: Value = self
                    .http
                    .get(format!(
                        "{}/api/v1/label/{}/values",
                        self.prometheus.url(),
                        label.trim()
                    ))
                    .query(&[
                        ("match[]", metric.trim().to_string()),
                        ("start", (self.range.from_ms / 1000).to_string()),
                        ("end", (self.range.to_ms / 1000).to_string()),
                    ])
                    .send()
                    .await?
                    .json()
                    .await?;
                ensure!(body["status"] == "success", "{query}: {body}");
                let data = &body["data"];
                for v in data.as_array().cloned().unwrap_or_default() {
                    if let Some(v) = v.as_str() {
                        values.insert(v.to_string());
                    }
                }
            }
            other => bail!("variable on unknown data source {other:?}"),
        }
        Ok(values.into_iter().collect())
    }
}

/// Every query of a dashboard: (panel JSON, title, query JSON, refId).
fn queries(dashboard: &Value) -> Vec<(Value, String, Value, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().cloned().unwrap_or_default() {
        let title = panel["title"].as_str().unwrap_or("").to_string();
        for target in panel["targets"].as_array().cloned().unwrap_or_default() {
            let ref_id = target["refId"].as_str().unwrap_or("").to_string();
            out.push((panel.clone(), title.clone(), target, ref_id));
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let title = format!("annotation: {}", annotation["name"].as_str().unwrap_or(""));
        let mut target = annotation["target"].clone();
        target["datasource"] = annotation["datasource"].clone();
        let ref_id = target["refId"].as_str().unwrap_or("").to_string();
        // Annotations have no panel: the full width's interval.
        out.push((json!({"gridPos": {"w": 24}}), title, target, ref_id));
    }
    out
}

/// Checks one answer against its expectation; `narrowed`: the variable
/// (named as the tag it filters) and the one value selected, if not All.
fn check(
    expect: &Expect,
    query: &str,
    answer: &[Series],
    is_prometheus: bool,
    narrowed: Option<(&str, &str)>,
) -> Result<()> {
    let what = format!(
        "{} / {} / {} ({query})",
        expect.dashboard, expect.panel, expect.ref_id
    );
    // With one value selected, only that value may come back; none at all
    // if the panel never shows it ("No data", as Grafana would say).
    let tags: Vec<(&str, &[&str])> = expect
        .tags
        .iter()
        .copied()
        .chain(std::iter::once(FLEET_TAG))
        .collect();
    if let Some((tag, value)) = narrowed {
        let wanted = tags
            .iter()
            .find(|(t, _)| *t == tag)
            .with_context(|| format!("{what}: filters on ${tag} but expects no {tag} tag"))?
            .1;
        if !wanted.is_empty() && !wanted.contains(&value) {
            ensure!(
                answer.is_empty(),
                "{what}: {tag}={value} must be empty: {answer:?}"
            );
            return Ok(());
        }
        for s in answer {
            ensure!(
                s.tags.get(tag).map(String::as_str) == Some(value),
                "{what}: a series with {tag}={:?} while {value} alone is selected",
                s.tags.get(tag)
            );
        }
    }
    ensure!(!answer.is_empty(), "{what}: no series");
    if is_prometheus {
        ensure!(
            query.contains(expect.series),
            "{what}: does not read {}",
            expect.series
        );
    }
    for s in answer {
        if !is_prometheus {
            ensure!(
                s.name == expect.series,
                "{what}: series from {:?}, wanted {}",
                s.name,
                expect.series
            );
        }
        ensure!(s.has_values(), "{what}: only empty values in {s:?}");
        for (tag, _) in &tags {
            ensure!(
                s.tags.get(*tag).is_some_and(|v| !v.is_empty()),
                "{what}: a series without tag {tag}: {:?}",
                s.tags
            );
        }
    }
    if narrowed.is_none() {
        for (tag, wanted) in tags.iter().filter(|(_, w)| !w.is_empty()) {
            let seen: BTreeSet<&str> = answer
                .iter()
                .filter_map(|s| s.tags.get(*tag).map(String::as_str))
                .collect();
            let wanted: BTreeSet<&str> = wanted.iter().copied().collect();
            ensure!(
                seen == wanted,
                "{what}: {tag} values {seen:?}, wanted {wanted:?}"
            );
        }
    }
    for (column, value) in expect.contains {
        let found = answer.iter().any(|s| {
            let at = s.columns.iter().position(|c| c == column);
            at.is_some_and(|at| s.rows.iter().any(|r| r.get(at) == Some(&json!(value))))
        });
        ensure!(found, "{what}: no row with {column} = {value}: {answer:?}");
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Calls OPC UA methods on the gateway as the admin (python asyncua).
async fn admin_call(rig: &GatewayRig, pki: &Path, call: &str) -> Result<Value> {
    let env = "IRONBRIDGE_TEST_DASHBOARDS_CLIENT_PASSWORD";
    let out = tokio::process::Command::new(venv_python()?)
        .arg(repo_root().join("tests/peers/opcua_client.py"))
        .args(["--url", &rig.opcua_url(), "--policy", "Basic256Sha256"])
        .arg("--client-pki")
        .arg(pki)
        .args(["--user", ADMIN.0, "--password-env", env, "--call", call])
        .env(env, ADMIN.1)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "opcua_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(answer["calls"][0]["status"] == "Good", "{call}: {answer}");
    Ok(answer)
}

/// Polls an InfluxQL count until it is positive.
async fn wait_for_points(servers: &Servers, what: &str, query: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let found = servers
            .influxql(query)
            .await
            .map(|s| s.iter().any(Series::has_values))
            .unwrap_or(false);
        if found {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what} ({query})\n{}",
            servers.influx.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_the_series_it_shows() -> Result<()> {
    let started_ms = now_ms();
    let dashboards = load_dashboards()?;
    let provisioning =
        std::fs::read_to_string(dashboards_dir().join("provisioning/datasources/ironbridge.yaml"))?;
    let min_interval = |uid: &str, default: &str| -> Result<i64> {
        let text = grafana::provisioned_time_interval(&provisioning, uid)?;
        grafana::parse_interval(text.as_deref().unwrap_or(default))
    };
    // Grafana's Prometheus default scrape interval is 15 s when none is set.
    let scrape_interval_ms = min_interval(PROMETHEUS_UID, "15s")?;
    let influx_min_interval_ms = min_interval(INFLUX_UID, "1ms")?;

    // InfluxDB 1.x with the database the provisioning names and a user
    // that may only write to it.
    let influx = InfluxDb1::start().await?;
    influx
        .execute(&format!("CREATE DATABASE {DATABASE}"))
        .await?;
    influx
        .execute("CREATE USER gateway WITH PASSWORD 'gateway-password'")
        .await?;
    influx
        .execute(&format!("GRANT WRITE ON {DATABASE} TO gateway"))
        .await?;
    let password_env = "IRONBRIDGE_TEST_DASHBOARDS_INFLUX_PASSWORD";
    std::env::set_var(password_env, "gateway-password");

    // The example models, and a 1.1.0 of the spindle's (the same weights,
    // so it passes the gate) to run as shadow.
    let dir = tempfile::tempdir()?;
    let models = dir.path().join("models");
    let examples = repo_root().join("models/examples");
    for model in [PUMP_MODEL, SPINDLE_MODEL] {
        copy_dir(
            &examples.join(model).join("1.0.0"),
            &models.join("examples").join(model).join("1.0.0"),
        )?;
    }
    let spindle_versions = models.join("examples").join(SPINDLE_MODEL);
    copy_version(
        &spindle_versions.join("1.0.0"),
        &spindle_versions.join("1.1.0"),
        "1.0.0",
        "1.1.0",
    )?;

    let mut rig = GatewayRig::start_with(RigOptions {
        poll_ms: 200,
        flush_ms: 500,
        models_dir: Some(models),
        opcua_users: vec![(ADMIN.0.into(), ADMIN.1.into(), "admin".into())],
        trust_client_certs: true,
        // The example's 200 pairs: the shadow runs for some seconds.
        gate: Some((200, true)),
        // Drift judged over seconds instead of a day: the pump's inputs
        // get PSI points within the test.
        bearing_wear_drift_window_s: Some(4),
        influx_v1: Some(InfluxV1Target {
            url: influx.url(),
            database: DATABASE.into(),
            username: "gateway".into(),
            password_env: password_env.into(),
        }),
        ..RigOptions::default()
    })
    .await?;
    let http_addr = rig.http_addr().context("the example serves [http]")?;
    let prometheus = Prometheus::scraping(&[http_addr]).await?;
    let scraping_since = tokio::time::Instant::now();
    let mut servers = Servers {
        influx,
        prometheus,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        range: TimeRange {
            from_ms: started_ms,
            to_ms: now_ms(),
        },
        influx_min_interval_ms,
        scrape_interval_ms,
    };

    // Data for every panel: predictions of both models, then a shadow
    // that passes the gate and is promoted, and drift.
    wait_for_points(
        &servers,
        "predictions of the spindle's model",
        &format!("SELECT count(*) FROM prediction WHERE model = '{SPINDLE_MODEL}'"),
    )
    .await?;
    admin_call(
        &rig,
        &dir.path().join("client-pki"),
        &format!("Models/{SPINDLE_MODEL}/StartShadow=1.1.0"),
    )
    .await?;
    for (what, query) in [
        (
            "shadow predictions",
            "SELECT count(*) FROM prediction_shadow".to_string(),
        ),
        (
            "the gate's Pass",
            "SELECT count(samples) FROM gate WHERE decision = 'Pass'".to_string(),
        ),
        (
            "predictions of the promoted 1.1.0",
            format!("SELECT count(*) FROM prediction WHERE model = '{SPINDLE_MODEL}' AND version = '1.1.0'"),
        ),
        ("drift points", "SELECT count(psi) FROM drift".to_string()),
    ] {
        wait_for_points(&servers, what, &query).await?;
    }
    // Prometheus has scraped the promoted version's counters, and rates
    // have a few samples after it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while servers
        .prometheus
        .query(&format!(
            r#"ironbridge_inferences_total{{model="{SPINDLE_MODEL}",version="1.1.0"}}"#
        ))
        .await?
        .is_empty()
    {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "Prometheus never saw 1.1.0:\n{}",
            servers.prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Grafana floors the range's end to the step (15 s): a minute of
    // scrapes leaves several steps whose rate windows hold samples.
    tokio::time::sleep_until(scraping_since + Duration::from_secs(60)).await;
    servers.range.to_ms = now_ms();

    // Every query, every dashboard.
    let mut used = BTreeSet::new();
    let mut preview = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for (file, dashboard) in &dashboards {
        let uid = dashboard["uid"].as_str().context("uid")?;
        // Template variables: their queries, and their values.
        let mut options: Vec<(String, Vec<String>)> = Vec::new();
        for variable in dashboard["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let name = variable["name"].as_str().context("variable name")?;
            let values = servers.variable_values(&variable, &options).await?;
            let (_, _, wanted) = VARIABLES
                .iter()
                .find(|(d, n, _)| *d == uid && *n == name)
                .with_context(|| format!("{file}: no expectation for variable {name}"))?;
            if values != *wanted {
                failures.push(format!(
                    "{file}: ${name} found {values:?}, wanted {wanted:?}"
                ));
            }
            ensure!(
                variable["includeAll"] == true && variable["multi"] == true,
                "{file}: ${name} is expected multi-value with All"
            );
            options.push((name.to_string(), values));
        }
        let mut panels_preview = Vec::new();
        for (panel, title, target, ref_id) in queries(dashboard) {
            let Some(at) = EXPECTED
                .iter()
                .position(|x| x.dashboard == uid && x.panel == title && x.ref_id == ref_id)
            else {
                failures.push(format!("{file}: no expectation for {title} / {ref_id}"));
                continue;
            };
            used.insert(at);
            let expect = &EXPECTED[at];
            // Every variable at All.
            let (query, answer, is_prometheus) = servers.run(&panel, &target, &options).await?;
            if let Err(e) = check(expect, &query, &answer, is_prometheus, None) {
                failures.push(format!("{e:#}"));
            }
            panels_preview.push(json!({
                "panel": title, "refId": ref_id, "query": query, "series": answer,
            }));
            // Each variable's values alone.
            let text = target["query"]
                .as_str()
                .or(target["expr"].as_str())
                .unwrap_or("");
            for (name, values) in &options {
                if !text.contains(&format!("${name}")) {
                    // Data carrying the variable's tag must follow it.
                    if expect.tags.iter().any(|(tag, _)| tag == name) || name == FLEET_TAG.0 {
                        failures.push(format!("{file}: {title} / {ref_id} ignores ${name}"));
                    }
                    continue;
                }
                for value in values {
                    let selection: Vec<(String, Vec<String>)> = options
                        .iter()
                        .map(|(n, all)| {
                            if n == name {
                                (n.clone(), vec![value.clone()])
                            } else {
                                (n.clone(), all.clone())
                            }
                        })
                        .collect();
                    let (query, answer, is_prometheus) =
                        servers.run(&panel, &target, &selection).await?;
                    if let Err(e) =
                        check(expect, &query, &answer, is_prometheus, Some((name, value)))
                    {
                        failures.push(format!("{e:#}"));
                    }
                }
            }
        }
        preview.push(json!({
            "file": file, "uid": uid,
            "range": {"from_ms": servers.range.from_ms, "to_ms": servers.range.to_ms},
            "variables": options, "queries": panels_preview,
        }));
    }
    for (at, expect) in EXPECTED.iter().enumerate() {
        if !used.contains(&at) {
            failures.push(format!(
                "{} / {} / {}: expected, but no such query",
                expect.dashboard, expect.panel, expect.ref_id
            ));
        }
    }
    if let Ok(path) = std::env::var("IRONBRIDGE_DASHBOARD_PREVIEW") {
        std::fs::write(&path, serde_json::to_vec(&json!({"dashboards": preview}))?)?;
    }
    rig.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
