//! `[http]`: /health, /ready and /metrics of the example gateway, scraped
//! by a real Prometheus (Debian's `prometheus`), and the same state under
//! `Gateway/` in OPC UA.

use std::time::Duration;

use anyhow::{Context, Result};
use ironbridge_tests::gateway_rig::{GatewayRig, MACHINE, MODEL, SPINDLE};
use ironbridge_tests::prometheus::Prometheus;

const DEADLINE: Duration = Duration::from_secs(60);

async fn get(url: &str) -> Result<(u16, String)> {
    let response = reqwest::get(url).await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// Polls `probe` until it returns `Some`; fails with `what` after
/// [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(found) = probe().await? {
            return Ok(found);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_gateway_and_ready_names_what_stops() -> Result<()> {
    let mut rig = GatewayRig::start(200, 200).await?;
    let addr = rig.http_addr().context("the example serves [http]")?;
    assert!(addr.ip().is_loopback());
    let base = format!("http://{addr}");

    let (status, body) = get(&format!("{base}/health")).await?;
    assert_eq!(status, 200, "{body}");

    // Ready once both machines answer, the store takes data and the models
    // serve.
    eventually("/ready 200", || async {
        let (status, body) = get(&format!("{base}/ready")).await?;
        Ok((status == 200).then_some(body))
    })
    .await?;

    let prometheus = Prometheus::scraping(&[addr]).await?;
    let scans = eventually("scans scraped", || async {
        let found = prometheus
            .query(&format!(
                r#"ironbridge_source_scans_total{{machine="{MACHINE}"}}"#
            ))
            .await?;
        Ok(found.first().map(|(_, v)| *v).filter(|v| *v > 0.0))
    })
    .await?;
    // Prometheus holds what the gateway counted (it only grows after).
    let now = rig.gateway_source_scans(MACHINE).context("pump stats")?;
    assert!(scans <= now as f64, "scraped {scans}, gateway {now}");
    for (query, wanted) in [
        (
            format!(r#"ironbridge_source_up{{machine="{SPINDLE}"}}"#),
            1.0,
        ),
        (
            format!(r#"ironbridge_source_up{{machine="{MACHINE}"}}"#),
            1.0,
        ),
        ("ironbridge_sink_up".to_string(), 1.0),
        (
            format!(r#"ironbridge_model_state{{model="{MODEL}",state="Serving"}}"#),
            1.0,
        ),
        (
            r#"ironbridge_sink_points_dropped_total{reason="overflow"}"#.to_string(),
            0.0,
        ),
        // One series per model; none refused here.
        ("sum(ironbridge_shadow_rejected_total)".to_string(), 0.0),
    ] {
        let found = prometheus.query(&query).await?;
        assert_eq!(
            found.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            [wanted],
            "{query}: {found:?}\n{}",
            prometheus.log()
        );
    }
    let fan_out_scans = prometheus.query("ironbridge_scans_total").await?;
    assert!(
        fan_out_scans.first().is_some_and(|(_, v)| *v > 0.0),
        "{fan_out_scans:?}"
    );
    // `[gateway] name` labels every series, as it tags every point.
    let named = prometheus
        .query("ironbridge_sink_lines_written_total")
        .await?;
    assert!(
        named
            .first()
            .is_some_and(|(labels, _)| labels["gateway"] == "gateway-1"),
        "{named:?}"
    );
    let written = prometheus
        .query("ironbridge_sink_lines_written_total")
        .await?;
    assert!(
        written.first().is_some_and(|(_, v)| *v > 0.0),
        "{written:?}"
    );

    // Inference histograms: every forward call counted once in each, and
    // the rows in the batch sizes sum to the model's inferences.
    eventually("forward calls counted", || async {
        let found = prometheus
            .query(&format!(
                r#"ironbridge_inference_latency_seconds_count{{model="{MODEL}"}}"#
            ))
            .await?;
        Ok(found.first().filter(|(_, v)| *v > 0.0).map(|_| ()))
    })
    .await?;
    // One scrape answers both sides of each difference.
    let calls = prometheus
        .query(&format!(
            r#"ironbridge_inference_latency_seconds_count{{model="{MODEL}"}} - on(model, version) ironbridge_inference_batch_size_count{{model="{MODEL}"}}"#
        ))
        .await?;
    assert_eq!(
        calls.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        [0.0],
        "one observation per forward call in both"
    );
    let rows = prometheus
        .query(&format!(
            r#"ironbridge_inference_batch_size_sum{{model="{MODEL}"}} - on(model, version) ironbridge_inferences_total{{model="{MODEL}"}}"#
        ))
        .await?;
    assert_eq!(
        rows.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        [0.0],
        "rows in batches = inferences (no failure here)"
    );

    // One facade: the log line and /metrics show the same series (every
    // counter that is logged is exported, and nothing is exported that the
    // log leaves out), from one snapshot of the gateway's registry.
    let registry = rig
        .gateway
        .as_ref()
        .context("gateway running")?
        .metrics
        .clone();
    let (_, body) = get(&format!("{base}/metrics")).await?;
    let logged = logged_series(&ironbridge_metrics::log_lines(&registry.snapshot()));
    let exported = exported_series(&body);
    assert_eq!(logged, exported, "log vs /metrics\n{body}");
    for wanted in [
        format!(
            "ironbridge_source_notifications_dropped_total|gateway=gateway-1,machine={MACHINE}"
        ),
        format!("ironbridge_source_polls_skipped_total|gateway=gateway-1,machine={MACHINE}"),
        "ironbridge_sink_unauthorized|gateway=gateway-1".to_string(),
        "ironbridge_sink_points_dropped_total|gateway=gateway-1,reason=channel_full".to_string(),
    ] {
        assert!(exported.contains(&wanted), "{wanted} not in\n{body}");
    }
    // Rows a model did not get, by reason, per version.
    assert!(
        exported.iter().any(
            |s| s.starts_with("ironbridge_inference_rows_skipped_total|")
                && s.contains(&format!("model={MODEL}"))
                && s.contains("reason=out_of_range")
        ),
        "{body}"
    );

    // The same state in OPC UA, beside the machines.
    let gateway_nodes = [
        "Gateway/Version".to_string(),
        "Gateway/Name".to_string(),
        "Gateway/Ready".to_string(),
        "Gateway/NotReady".to_string(),
        "Gateway/UptimeSeconds".to_string(),
        format!("Gateway/Machines/{SPINDLE}/Up"),
        "Gateway/Sink/State".to_string(),
    ];
    let answer = eventually("Gateway/Ready true in OPC UA", || async {
        let answer = rig.read_opcua(&gateway_nodes).await?;
        Ok((answer["reads"]["Gateway/Ready"]["value"] == true).then_some(answer))
    })
    .await?;
    let reads = &answer["reads"];
    assert_eq!(
        reads["Gateway/Version"]["value"],
        env!("CARGO_PKG_VERSION"),
        "{answer}"
    );
    // config/example.toml's `[gateway] name`.
    assert_eq!(reads["Gateway/Name"]["value"], "gateway-1", "{answer}");
    assert_eq!(
        reads[format!("Gateway/Machines/{SPINDLE}/Up")]["value"],
        true,
        "{answer}"
    );
    assert_eq!(
        reads["Gateway/Sink/State"]["value"], "Delivering",
        "{answer}"
    );
    assert!(
        reads["Gateway/UptimeSeconds"]["value"]
            .as_f64()
            .is_some_and(|u| u > 0.0),
        "{answer}"
    );

    // An HMI's session shows in ironbridge_opcua_sessions while it is open,
    // and leaves it when it closes.
    let sessions = || async {
        let (_, body) = get(&format!("{base}/metrics")).await?;
        let value = body
            .lines()
            .find(|l| l.starts_with("ironbridge_opcua_sessions"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("no ironbridge_opcua_sessions in {body}"))?;
        anyhow::Ok(value)
    };
    let speed = format!("Machines/{MACHINE}/Tags/speed_rpm");
    let hmi_args = ["--subscribe", &speed, "--count", "25"];
    let hmi = rig.opcua_client(&[], &hmi_args);
    let seen_open = async {
        eventually("a session counted", || async {
            Ok((sessions().await? >= 1.0).then_some(()))
        })
        .await
    };
    let (hmi, seen_open) = tokio::join!(hmi, seen_open);
    let hmi = hmi?;
    assert_eq!(hmi["connected"], true, "{hmi}");
    seen_open?;
    eventually("the session no longer counted", || async {
        Ok((sessions().await? == 0.0).then_some(()))
    })
    .await?;

    // The spindle goes away: /ready names it, Prometheus sees it down.
    rig.stop_spindle();
    let body = eventually("/ready 503", || async {
        let (status, body) = get(&format!("{base}/ready")).await?;
        Ok((status == 503).then_some(body))
    })
    .await?;
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(answer["ready"], false, "{answer}");
    let components: Vec<&str> = answer["not_ready"]
        .as_array()
        .context("not_ready")?
        .iter()
        .filter_map(|n| n["component"].as_str())
        .collect();
    assert_eq!(components, [format!("machine {SPINDLE}")], "{answer}");
    let answer = eventually("Gateway/Ready false in OPC UA", || async {
        let answer = rig.read_opcua(&gateway_nodes).await?;
        Ok((answer["reads"]["Gateway/Ready"]["value"] == false).then_some(answer))
    })
    .await?;
    let reads = &answer["reads"];
    // config/example.toml's `[gateway] name`.
    assert_eq!(reads["Gateway/Name"]["value"], "gateway-1", "{answer}");
    assert_eq!(
        reads[format!("Gateway/Machines/{SPINDLE}/Up")]["value"],
        false,
        "{answer}"
    );
    let spindle_named = format!("machine {SPINDLE}:");
    assert!(
        reads["Gateway/NotReady"]["value"]
            .as_array()
            .is_some_and(|a| a
                .iter()
                .any(|v| v.as_str().is_some_and(|s| s.starts_with(&spindle_named)))),
        "{answer}"
    );
    eventually("spindle down in Prometheus", || async {
        let found = prometheus
            .query(&format!(r#"ironbridge_source_up{{machine="{SPINDLE}"}}"#))
            .await?;
        Ok(found.first().filter(|(_, v)| *v == 0.0).map(|_| ()))
    })
    .await?;

    let (status, _) = get(&format!("{base}/nothing-here")).await?;
    assert_eq!(status, 404);
    rig.stop().await;
    Ok(())
}

/// `name|label=value,...` (labels sorted) of every series in the log lines
/// (`name{reason=x}=v` entries grouped under `machine=a,...`).
fn logged_series(lines: &[(String, String)]) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for (group, values) in lines {
        for entry in values.split(' ') {
            let Some((series, _value)) = entry.rsplit_once('=') else {
                continue;
            };
            let (name, own) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}').replace("}{", ",")),
                None => (series, String::new()),
            };
            let mut labels: Vec<&str> = group
                .split(',')
                .chain(own.split(','))
                .filter(|l| !l.is_empty())
                .collect();
            labels.sort_unstable();
            out.insert(format!("{name}|{}", labels.join(",")));
        }
    }
    out
}

/// The same form for every sample line of an OpenMetrics body (histogram
/// buckets left out: the log gives a histogram's count and sum).
fn exported_series(body: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if name.ends_with("_bucket") || name.ends_with("_created") {
            continue;
        }
        let mut labels: Vec<String> = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| l.replace('"', ""))
            .collect();
        labels.sort_unstable();
        out.insert(format!("{name}|{}", labels.join(",")));
    }
    out
}
