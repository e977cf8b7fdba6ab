//! What the health and metrics endpoints read: the gateway's own counters
//! and states, taken fresh at each request (no copy to keep in step).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ironbridge_connectors::influx::InfluxSinkStats;
use ironbridge_connectors::SourceStats;
use ironbridge_models::HistogramSnapshot;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use serde::Serialize;

use crate::opcua_server::GatewayStatusView;
use crate::runtime::{FanOutStats, ServedModel};

/// Read-only handles on everything the endpoints report.
#[derive(Clone)]
pub struct GatewayProbe {
    pub(crate) started: Instant,
    pub(crate) sources: BTreeMap<String, SourceStats>,
    pub(crate) sink: Option<InfluxSinkStats>,
    pub(crate) models: Arc<Vec<ServedModel>>,
    pub(crate) fan_out: Arc<FanOutStats>,
    pub(crate) opcua: Option<crate::opcua_server::OpcUaPublisher>,
}

impl std::fmt::Debug for GatewayProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayProbe")
            .field("sources", &self.sources.keys())
            .finish_non_exhaustive()
    }
}

/// One component that is not working, for `/ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotReady {
    /// `machine <name>`, `influx`, `model <name>`.
    pub component: String,
    pub reason: String,
}

impl GatewayProbe {
    /// `Gateway/...` in OPC UA: the same state as `/ready`.
    pub fn gateway_status(&self, started_at: std::time::SystemTime) -> GatewayStatusView {
        GatewayStatusView {
            started_at,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            not_ready: self
                .not_ready()
                .into_iter()
                .map(|n| format!("{}: {}", n.component, n.reason))
                .collect(),
            machines_up: self
                .sources
                .iter()
                .map(|(m, s)| (m.clone(), s.is_up()))
                .collect(),
            sink_state: match &self.sink {
                None => "Off",
                Some(s) if s.is_unauthorized() => "Unauthorized",
                Some(s) if s.is_failing() => "Failing",
                Some(_) => "Delivering",
            },
            sink_buffered_lines: self
                .sink
                .as_ref()
                .map_or(0, InfluxSinkStats::buffered_lines),
        }
    }

    /// Every component that is not working now; empty when all are.
    pub fn not_ready(&self) -> Vec<NotReady> {
        let mut out = Vec::new();
        for (machine, stats) in &self.sources {
            if !stats.is_up() {
                out.push(NotReady {
                    component: format!("machine {machine}"),
                    reason: "not answering (no link, session or answer)".into(),
                });
            }
        }
        if let Some(sink) = &self.sink {
            if sink.is_failing() {
                out.push(NotReady {
                    component: "influx".into(),
                    reason: format!(
                        "writes failing; {} lines kept for a retry",
                        sink.buffered_lines()
                    ),
                });
            }
        }
        for model in self.models.iter() {
            let status = model.status();
            if !matches!(status.state.as_str(), "Serving" | "Drifting") {
                out.push(NotReady {
                    component: format!("model {}", status.name),
                    reason: format!("state {}", status.state),
                });
            }
        }
        out
    }
}

/// Labels of a per-machine or per-model series.
type Labels = Vec<(&'static str, String)>;

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, HistogramSnapshot)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in series {
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
    }
    Ok(())
}

impl Collector for GatewayProbe {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        gauge(
            e,
            "ironbridge_build_info",
            "The gateway's version and commit (value 1).",
            [(
                vec![
                    ("version", env!("CARGO_PKG_VERSION").to_string()),
                    ("commit", env!("IRONBRIDGE_GIT_COMMIT").to_string()),
                ],
                1.0,
            )],
        )?;
        gauge(
            e,
            "ironbridge_uptime_seconds",
            "Seconds since the gateway started.",
            [(Vec::new(), self.started.elapsed().as_secs_f64())],
        )?;
        if let Some(opcua) = &self.opcua {
            gauge(
                e,
                "ironbridge_opcua_sessions",
                "Sessions open on the gateway's OPC UA server.",
                [(Vec::new(), opcua.session_count() as f64)],
            )?;
        }

        let machine = |m: &String| vec![("machine", m.clone())];
        let per_source = |f: fn(&SourceStats) -> u64| {
            self.sources
                .iter()
                .map(move |(m, s)| (machine(m), f(s)))
                .collect::<Vec<_>>()
        };
        counter(
            e,
            "ironbridge_source_scans",
            "Scans delivered with data from the machine.",
            per_source(SourceStats::scans),
        )?;
        counter(
            e,
            "ironbridge_source_link_failures",
            "Connection attempts or open links that failed.",
            per_source(SourceStats::link_failures),
        )?;
        counter(
            e,
            "ironbridge_source_reconnects",
            "Links re-established after one was lost.",
            per_source(SourceStats::reconnects),
        )?;
        counter(
            e,
            "ironbridge_source_outages",
            "Periods of unreachability (once per outage, not per retry).",
            per_source(SourceStats::outages),
        )?;
        counter(
            e,
            "ironbridge_source_device_errors",
            "Answers without a usable value (Modbus exceptions, OPC UA bad statuses).",
            per_source(SourceStats::device_errors),
        )?;
        gauge(
            e,
            "ironbridge_source_up",
            "1 while the machine answers, 0 while it does not.",
            self.sources
                .iter()
                .map(|(m, s)| (machine(m), if s.is_up() { 1.0 } else { 0.0 })),
        )?;

        let fan_out = &self.fan_out;
        counter(
            e,
            "ironbridge_scans",
            "Scans the fan-out handed on (every machine).",
            [(Vec::new(), fan_out.scans.load(Ordering::Relaxed))],
        )?;
        counter(
            e,
            "ironbridge_shadow_rejected",
            "Rows a shadow version's queue or rate limit refused.",
            [(Vec::new(), fan_out.shadow_rejected.load(Ordering::Relaxed))],
        )?;
        counter(
            e,
            "ironbridge_predictions",
            "Predictions made (every model, every machine).",
            [(Vec::new(), fan_out.predictions.load(Ordering::Relaxed))],
        )?;
        counter(
            e,
            "ironbridge_inference_rejected",
            "Inference requests the serving version refused, by reason.",
            fan_out
                .inference_rejected
                .by_reason()
                .map(|(reason, n)| (vec![("reason", reason.to_string())], n)),
        )?;
        counter(
            e,
            "ironbridge_inference_failed",
            "Inference requests whose forward call failed.",
            [(Vec::new(), fan_out.inference_failed.load(Ordering::Relaxed))],
        )?;
        let statuses: Vec<_> = self.models.iter().map(|m| m.status()).collect();
        counter(
            e,
            "ironbridge_inferences",
            "Rows run through the serving version of each model.",
            statuses.iter().map(|s| {
                (
                    vec![
                        ("model", s.name.clone()),
                        ("version", s.active_version.clone()),
                    ],
                    s.inference_count,
                )
            }),
        )?;
        gauge(
            e,
            "ironbridge_model_state",
            "1 for each model's serving version and its state (Serving, Drifting, Failed...).",
            statuses.iter().map(|s| {
                (
                    vec![
                        ("model", s.name.clone()),
                        ("version", s.active_version.clone()),
                        ("state", s.state.clone()),
                    ],
                    1.0,
                )
            }),
        )?;

        let serving: Vec<_> = self
            .models
            .iter()
            .map(|m| m.lifecycle.serving_full())
            .collect();
        let model_labels = |v: &Arc<ironbridge_models::ServingModel>| {
            vec![
                ("model", v.manifest.name.clone()),
                ("version", v.manifest.version.clone()),
            ]
        };
        histogram(
            e,
            "ironbridge_inference_latency_seconds",
            "Seconds per forward call of each model's serving version.",
            serving
                .iter()
                .map(|v| (model_labels(v), v.handle.stats().latency())),
        )?;
        histogram(
            e,
            "ironbridge_inference_batch_size",
            "Rows per forward call of each model's serving version.",
            serving
                .iter()
                .map(|v| (model_labels(v), v.handle.stats().batch_sizes())),
        )?;

        if let Some(sink) = &self.sink {
            counter(
                e,
                "ironbridge_sink_lines_written",
                "Lines InfluxDB accepted.",
                [(Vec::new(), sink.lines_written())],
            )?;
            counter(
                e,
                "ironbridge_sink_batches_written",
                "Batches InfluxDB accepted.",
                [(Vec::new(), sink.batches_written())],
            )?;
            counter(
                e,
                "ironbridge_sink_batches_split",
                "Batches split in two after a 400, 422 or 413.",
                [(Vec::new(), sink.batches_split())],
            )?;
            counter(
                e,
                "ironbridge_sink_write_failures",
                "Write attempts that failed and kept their batch for a retry.",
                [(Vec::new(), sink.write_failures())],
            )?;
            counter(
                e,
                "ironbridge_sink_auth_failures",
                "Writes answered 401 or 403 (batch kept).",
                [(Vec::new(), sink.auth_failures())],
            )?;
            let reason = |r: &str| vec![("reason", r.to_string())];
            counter(
                e,
                "ironbridge_sink_points_dropped",
                "Lines that will never reach InfluxDB, by reason.",
                [
                    (reason("overflow"), sink.lines_dropped_overflow()),
                    (reason("rejected"), sink.lines_dropped_rejected()),
                    (reason("dead_letter"), sink.lines_dead_lettered()),
                    (reason("unencodable"), sink.records_unencodable()),
                    (reason("shutdown"), sink.lines_lost_at_shutdown()),
                    (
                        reason("channel_full"),
                        fan_out.sink_channel_full.load(Ordering::Relaxed),
                    ),
                ],
            )?;
            gauge(
                e,
                "ironbridge_sink_buffered_lines",
                "Lines waiting in the outage buffer.",
                [(Vec::new(), sink.buffered_lines() as f64)],
            )?;
            gauge(
                e,
                "ironbridge_spool_bytes",
                "Bytes the InfluxDB disk spool takes (0 with buffer = \"memory\").",
                [(Vec::new(), sink.spool_bytes() as f64)],
            )?;
            counter(
                e,
                "ironbridge_spool_corrupt_regions",
                "Corrupt spool records cut out into the spool's quarantine/ folder.",
                [(Vec::new(), sink.spool_corrupt_regions())],
            )?;
            counter(
                e,
                "ironbridge_spool_errors",
                "Spool reads and writes that failed (not counting a full disk).",
                [(Vec::new(), sink.spool_errors())],
            )?;
            counter(
                e,
                "ironbridge_spool_lines_recovered",
                "Lines found in the spool at start, delivered first.",
                [(Vec::new(), sink.lines_recovered())],
            )?;
            gauge(
                e,
                "ironbridge_sink_up",
                "1 while InfluxDB takes data, 0 while writes fail.",
                [(Vec::new(), if sink.is_failing() { 0.0 } else { 1.0 })],
            )?;
        }
        Ok(())
    }
}
