//! What the health and metrics endpoints read: the gateway's own counters
//! and states, taken fresh at each request (no copy to keep in step).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use ironbridge_connectors::influx::InfluxSinkStats;
use ironbridge_connectors::SourceStats;
use ironbridge_metrics::{MetricKind, MetricsRegistry, Value};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use serde::Serialize;

use crate::opcua_server::GatewayStatusView;
use crate::runtime::ServedModel;

/// Read-only handles on everything the endpoints report.
#[derive(Clone)]
pub struct GatewayProbe {
    /// Every series `/metrics` shows.
    pub(crate) metrics: MetricsRegistry,
    pub(crate) started: Instant,
    pub(crate) sources: BTreeMap<String, SourceStats>,
    pub(crate) sink: Option<InfluxSinkStats>,
    pub(crate) models: Arc<Vec<ServedModel>>,
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

/// The Prometheus exporter: encodes the registry's snapshot, nothing else
/// (every value comes from the metrics facade, as the log's).
impl Collector for GatewayProbe {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in self.metrics.snapshot() {
            let kind = match family.kind {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Gauge => MetricType::Gauge,
                MetricKind::Histogram => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            for series in &family.series {
                let mut labeled = metric.encode_family(&series.labels)?;
                match &series.value {
                    Value::Counter(n) => ConstCounter::new(*n).encode(labeled)?,
                    Value::Gauge(v) => ConstGauge::new(*v).encode(labeled)?,
                    Value::Histogram(h) => {
                        labeled.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?
                    }
                }
            }
        }
        Ok(())
    }
}
