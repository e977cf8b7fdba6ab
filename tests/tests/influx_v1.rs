//! The InfluxDB sink with `api = "v1"` against a real InfluxDB 1.x (Debian's
//! `influxdb`, authentication on), read back in InfluxQL: what was written
//! is what a plant's Grafana or Chronograf would query.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ironbridge_connectors::influx::InfluxSinkConfig;
use ironbridge_connectors::{Prediction, Quality, Record, Scan, TagReading, TagValue};
use ironbridge_tests::influxdb1::InfluxDb1;
use ironbridge_tests::sink_rig::{good, init_logs, wait_for, RunningSink, DEADLINE};
use serde_json::{json, Value};

/// 2020-09-13T12:26:40.123456789Z: older than the data's arrival, so only
/// the acquisition time can be stored; nanoseconds must survive.
const T0_NS: i64 = 1_600_000_000_123_456_789;

const USER: &str = "gateway";
const PASSWORD_ENV: &str = "IRONBRIDGE_TEST_INFLUX1_PASSWORD";
const PASSWORD: &str = "gateway-password";

fn at(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.unsigned_abs())
}

fn scan(machine: &str, acquired_at_ns: i64, readings: Vec<TagReading>) -> Record {
    Record::Scan(Arc::new(Scan {
        machine: machine.into(),
        acquired_at: at(acquired_at_ns),
        readings,
    }))
}

/// A database `plant` with a retention policy `long_term` (not the default)
/// and a user who may only write to it.
async fn plant_server() -> Result<InfluxDb1> {
    let server = InfluxDb1::start().await?;
    server.execute("CREATE DATABASE plant").await?;
    server
        .execute("CREATE RETENTION POLICY long_term ON plant DURATION 5200w REPLICATION 1")
        .await?;
    server
        .execute(&format!("CREATE USER {USER} WITH PASSWORD '{PASSWORD}'"))
        .await?;
    server
        .execute(&format!("GRANT WRITE ON plant TO {USER}"))
        .await?;
    std::env::set_var(PASSWORD_ENV, PASSWORD);
    Ok(server)
}

fn config(url: &str) -> InfluxSinkConfig {
    let mut config = InfluxSinkConfig::v1(url, "plant");
    config.retention_policy = Some("long_term".into());
    config.username = Some(USER.into());
    config.password_env = Some(PASSWORD_ENV.into());
    config.flush_interval_ms = 50;
    config.batch_max_lines = 100;
    config.buffer_max_lines = 1000;
    config.request_timeout_ms = 5_000;
    config.backoff.initial_ms = 50;
    config.backoff.max_ms = 400;
    config
}

/// The rows of `query`'s only series as `{column: value}` objects.
async fn rows(server: &InfluxDb1, query: &str) -> Result<Vec<serde_json::Map<String, Value>>> {
    let series = server.query("plant", query).await?;
    let mut out = Vec::new();
    for s in &series {
        let columns = s["columns"].as_array().context("columns")?;
        for values in s["values"].as_array().context("values")? {
            let values = values.as_array().context("row")?;
            let mut row = serde_json::Map::new();
            for (column, value) in columns.iter().zip(values) {
                row.insert(
                    column.as_str().context("column")?.to_string(),
                    value.clone(),
                );
            }
            if let Some(tags) = s["tags"].as_object() {
                row.extend(tags.clone());
            }
            out.push(row);
        }
    }
    Ok(out)
}

#[tokio::test]
async fn lines_read_back_exactly_in_influxql_under_the_retention_policy() -> Result<()> {
    init_logs();
    let server = plant_server().await?;
    let sink = RunningSink::start(config(&server.url()))?;

    // Space, comma, equals sign and a backslash in a tag value.
    let machine = "C:\\press 7,line=2";
    sink.send([
        scan(
            machine,
            T0_NS,
            vec![
                good("temp_c", TagValue::Float(21.5)),
                good("count", TagValue::Int(-3)),
                // Above i64::MAX: 1.x has no unsigned type, so a float.
                good("total", TagValue::UInt(10_000_000_000_000_000_000)),
                good("running", TagValue::Bool(true)),
                good("mode", TagValue::Text("auto \"B\"".into())),
                TagReading {
                    tag: "unreadable".into(),
                    value: None,
                    quality: Quality::Bad,
                    status: None,
                },
            ],
        ),
        scan(
            machine,
            T0_NS + 1,
            vec![good("temp_c", TagValue::Float(-22.75))],
        ),
        Record::Prediction(Arc::new(Prediction {
            machine: machine.into(),
            model: "wear model".into(),
            version: "1.2.0".into(),
            inputs_acquired_at: at(T0_NS),
            outputs: vec![("rul_h".into(), 123.25), ("p_fail".into(), 0.0625)],
        })),
    ])
    .await?;
    wait_for("3 lines written", || sink.stats.lines_written() == 3).await?;

    let process = rows(
        &server,
        r#"SELECT * FROM "plant"."long_term"."process" GROUP BY *"#,
    )
    .await?;
    assert_eq!(
        process,
        [
            json!({
                "time": T0_NS, "machine": machine, "temp_c": 21.5, "count": -3,
                // Stored as a float (below); InfluxDB prints it without
                // an exponent, which JSON reads as an integer.
                "total": 10_000_000_000_000_000_000u64, "running": true, "mode": "auto \"B\"",
            }),
            json!({
                "time": T0_NS + 1, "machine": machine, "temp_c": -22.75, "count": null,
                "total": null, "running": null, "mode": null,
            }),
        ]
        .iter()
        .map(|v| v.as_object().cloned().unwrap_or_default())
        .collect::<Vec<_>>()
    );
    let field_types = rows(
        &server,
        r#"SHOW FIELD KEYS FROM "plant"."long_term"."process""#,
    )
    .await?
    .into_iter()
    .map(|r| (r["fieldKey"].clone(), r["fieldType"].clone()))
    .collect::<Vec<_>>();
    assert_eq!(
        field_types,
        [
            ("count", "integer"),
            ("mode", "string"),
            ("running", "boolean"),
            ("temp_c", "float"),
            ("total", "float"),
        ]
        .map(|(k, t)| (json!(k), json!(t)))
    );
    let predictions = rows(
        &server,
        r#"SELECT * FROM "plant"."long_term"."prediction" GROUP BY *"#,
    )
    .await?;
    assert_eq!(
        predictions,
        [json!({
            "time": T0_NS, "machine": machine, "model": "wear model", "version": "1.2.0",
            "rul_h": 123.25, "p_fail": 0.0625,
        })]
        .iter()
        .map(|v| v.as_object().cloned().unwrap_or_default())
        .collect::<Vec<_>>()
    );
    // Nothing under the database's default policy.
    assert!(
        rows(&server, r#"SELECT * FROM "plant"."autogen"."process""#)
            .await?
            .is_empty()
    );

    let stats = sink.stop().await?;
    assert_eq!(stats.lines_written(), 3);
    assert_eq!(stats.lines_dropped_rejected(), 0);
    Ok(())
}

#[tokio::test]
async fn server_down_buffers_and_restart_delivers_everything() -> Result<()> {
    init_logs();
    let mut server = plant_server().await?;
    let sink = RunningSink::start(config(&server.url()))?;
    let numbered = |i: i64| {
        scan(
            "m",
            T0_NS + i * 1_000_000_000,
            vec![good("seq", TagValue::Int(i))],
        )
    };

    sink.send((0..5).map(numbered)).await?;
    wait_for("first 5 lines written", || sink.stats.lines_written() == 5).await?;
    server.stop().await?;
    sink.send((5..25).map(numbered)).await?;
    wait_for("20 lines buffered after failed writes", || {
        sink.stats.buffered_lines() == 20 && sink.stats.write_failures() >= 2
    })
    .await?;
    server.restart().await?;
    wait_for("all 25 lines written", || sink.stats.lines_written() == 25).await?;

    let stored = rows(
        &server,
        r#"SELECT "seq" FROM "plant"."long_term"."process" WHERE "machine" = 'm'"#,
    )
    .await?;
    let found: Vec<(i64, i64)> = stored
        .iter()
        .map(|r| {
            (
                r["time"].as_i64().unwrap_or(0),
                r["seq"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let expected: Vec<(i64, i64)> = (0..25).map(|i| (T0_NS + i * 1_000_000_000, i)).collect();
    assert_eq!(found, expected);
    let stats = sink.stop().await?;
    assert_eq!(stats.lines_dropped_overflow(), 0);
    assert_eq!(stats.lines_dropped_rejected(), 0);
    Ok(())
}

#[tokio::test]
async fn a_user_not_yet_created_keeps_the_data_until_it_is() -> Result<()> {
    init_logs();
    let server = InfluxDb1::start().await?;
    server.execute("CREATE DATABASE plant").await?;
    server
        .execute("CREATE RETENTION POLICY long_term ON plant DURATION 5200w REPLICATION 1")
        .await?;
    std::env::set_var(PASSWORD_ENV, PASSWORD);
    let sink = RunningSink::start(config(&server.url()))?;
    sink.send((0..3).map(|i| scan("m", T0_NS + i, vec![good("seq", TagValue::Int(i))])))
        .await?;
    wait_for("401 answered and retried", || {
        sink.stats.auth_failures() >= 2
    })
    .await?;
    assert_eq!(sink.stats.buffered_lines(), 3);

    // The administrator creates the user: everything kept arrives.
    server
        .execute(&format!("CREATE USER {USER} WITH PASSWORD '{PASSWORD}'"))
        .await?;
    server
        .execute(&format!("GRANT WRITE ON plant TO {USER}"))
        .await?;
    wait_for("the 3 kept lines written", || {
        sink.stats.lines_written() == 3
    })
    .await?;
    let stored = rows(
        &server,
        r#"SELECT "seq" FROM "plant"."long_term"."process""#,
    )
    .await?;
    assert_eq!(stored.len(), 3, "{stored:?}");
    let stats = sink.stop().await?;
    assert_eq!(stats.lines_dropped_rejected(), 0);
    assert_eq!(stats.lines_lost_at_shutdown(), 0);
    Ok(())
}

#[tokio::test]
async fn a_field_type_conflict_dead_letters_that_line_only() -> Result<()> {
    init_logs();
    let server = plant_server().await?;
    let dir = tempfile::tempdir()?;
    let dead_letter = dir.path().join("influx.lp");
    let mut config = config(&server.url());
    config.dead_letter_path = Some(dead_letter.clone());
    config.flush_interval_ms = 300;
    let sink = RunningSink::start(config)?;
    let seq = |i: i64, value: TagValue| scan("m", T0_NS + i, vec![good("seq", value)]);

    sink.send([seq(0, TagValue::Int(0))]).await?;
    wait_for("the first line written", || sink.stats.lines_written() == 1).await?;
    // A PLC reconfigured: the same tag now reads as text. InfluxDB refuses
    // the line (400, field type conflict) and writes the others.
    sink.send([
        seq(1, TagValue::Int(1)),
        seq(2, TagValue::Int(2)),
        seq(3, TagValue::Text("3".into())),
        seq(4, TagValue::Int(4)),
        seq(5, TagValue::Int(5)),
    ])
    .await?;
    wait_for(
        "the conflicting line dead-lettered, the rest written",
        || sink.stats.lines_dead_lettered() == 1 && sink.stats.lines_written() == 5,
    )
    .await?;
    let stored = rows(
        &server,
        r#"SELECT "seq" FROM "plant"."long_term"."process""#,
    )
    .await?;
    let found: Vec<(i64, i64)> = stored
        .iter()
        .map(|r| {
            (
                r["time"].as_i64().unwrap_or(0),
                r["seq"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(found, [0, 1, 2, 4, 5].map(|i| (T0_NS + i, i)).to_vec());
    let text = std::fs::read_to_string(&dead_letter)?;
    assert!(text.contains("field type conflict"), "{text}");
    assert!(
        text.lines()
            .any(|l| l == format!("process,machine=m seq=\"3\" {}", T0_NS + 3)),
        "{text}"
    );
    sink.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_unknown_database_is_rejected_not_retried() -> Result<()> {
    init_logs();
    let server = plant_server().await?;
    let mut unknown_database = config(&server.url());
    unknown_database.database = Some("no_such_db".into());
    unknown_database.retention_policy = None;
    let sink = RunningSink::start(unknown_database)?;
    sink.send([scan("m", T0_NS, vec![good("seq", TagValue::Int(1))])])
        .await?;
    wait_for("rejection", || sink.stats.batches_rejected() == 1).await?;
    let stats = sink.stop().await?;
    assert_eq!(stats.lines_written(), 0);
    assert_eq!(stats.lines_dropped_rejected(), 1);
    assert_eq!(stats.write_failures(), 0, "a rejection is not retried");
    Ok(())
}

/// The example configuration with `api = "v1"`: the gateway's process
/// values, predictions and lineage land in InfluxDB 1.x.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_gateway_writes_to_influxdb_1x() -> Result<()> {
    use ironbridge_tests::gateway_rig::{
        GatewayRig, InfluxV1Target, RigOptions, MACHINE, MODEL, MODEL_VERSION, SPINDLE,
    };
    init_logs();
    let server = plant_server().await?;
    let mut rig = GatewayRig::start_with(RigOptions {
        poll_ms: 100,
        flush_ms: 100,
        influx_v1: Some(InfluxV1Target {
            url: server.url(),
            database: "plant".into(),
            username: USER.into(),
            password_env: PASSWORD_ENV.into(),
        }),
        ..RigOptions::default()
    })
    .await?;

    let queries = [
        format!(r#"SELECT count("speed_rpm") FROM "process" WHERE "machine" = '{MACHINE}'"#),
        format!(r#"SELECT count("bearing_temp_c") FROM "process" WHERE "machine" = '{SPINDLE}'"#),
        format!(
            r#"SELECT count("bearing_wear") FROM "prediction" WHERE "model" = '{MODEL}' AND "version" = '{MODEL_VERSION}'"#
        ),
    ];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut counts = Vec::new();
        for query in &queries {
            let found = rows(&server, query).await?;
            counts.push(found.first().and_then(|r| r["count"].as_i64()).unwrap_or(0));
        }
        if counts.iter().all(|&n| n >= 3) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "pump, spindle and prediction points: {counts:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let info = rows(&server, r#"SELECT * FROM "gateway_info""#).await?;
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0]["started"], 1, "{info:?}");
    assert_eq!(info[0]["version"], env!("CARGO_PKG_VERSION"), "{info:?}");
    rig.stop().await;
    Ok(())
}
