//! Wiring and supervision: builds every component of a validated
//! configuration (`build`), then only wires them together and starts them.
//!
//! ```text
//!  Source (any protocol) ─┐ scans (bounded, block)
//!  Source (any protocol) ─┴────▶ fan-out ─▶ OPC UA publisher (latest value wins: coalesce)
//!                                  │  ├───▶ InfluxSink channel (bounded: drop newest, counted)
//!                                  │  └───▶ last-value cache ─▶ feature assembly ─▶ InferenceService
//!                                  │          (bounded queue: reject newest, counted; governor rate limit)
//!                                  └──────▶ prediction collector per model (bounded, block)
//!                                                └─▶ prediction ─▶ OPC UA + InfluxSink
//!                                                    (+ Modbus registers, when configured)
//! ```
//!
//! - [`build`]: models, sources and the sink writer, each built (and
//!   failing) on its own before anything runs;
//! - [`fan_out`]: the scan hand-off, the per-machine last-value cache and
//!   the prediction requests;
//! - [`predictions`]: one collector per model turns answers into predictions;
//! - [`status`]: model state to OPC UA, counters to the log;
//! - [`versions`]: model folders read again while running, lifecycle
//!   events to the store (`model_event`);
//! - [`registry_sync`]: new versions from an MLflow Model Registry
//!   (`[models.registry]`) into the model folders and the lifecycle.
//!
//! Shutdown: one `CancellationToken` stops the sources; their dropped senders
//! end the fan-out, whose dropped senders let the collectors and then the
//! InfluxDB sink drain and flush before they exit.

mod build;
pub(crate) use build::ServedModel;
mod drift;
mod fan_out;
mod predictions;
pub mod registry_sync;
mod status;
mod versions;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ironbridge_connectors::influx::{
    InfluxSink, InfluxSinkStats, POINTS_DROPPED, POINTS_DROPPED_HELP,
};
use ironbridge_connectors::{GatewayInfoRecord, Record, Scan, SourceStats};
use ironbridge_metrics::{Counter, MetricsRegistry};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;
use crate::http::{GatewayProbe, HttpServer};
use crate::modbus_server::ModbusServer;
use crate::opcua_server;
use crate::GatewayError;
use build::Components;
use fan_out::FanOut;
use predictions::{GateSetup, PredictionCollector};

/// Scans waiting for the fan-out. Sources block when it is full; the fan-out
/// does no I/O, so it only fills if the process is starved.
const SCAN_CHANNEL: usize = 1024;
/// Records waiting for the InfluxDB sink task (which has its own, larger,
/// buffer for outages). Full: the newest record is dropped and counted.
const SINK_CHANNEL: usize = 4096;
/// How long shutdown waits for the sink's final flush.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Counters of the gateway's own hand-offs (handles of the metrics facade,
/// put into the registry by [`FanOutStats::register`]).
#[derive(Debug, Default)]
pub struct FanOutStats {
    pub scans: Counter,
    /// Records dropped because the InfluxDB sink's channel was full.
    pub sink_channel_full: Counter,
}

impl FanOutStats {
    pub fn register(&self, registry: &MetricsRegistry) {
        registry.add_counter(
            "ironbridge_scans",
            "Scans the fan-out handed on (every machine).",
            Vec::new(),
            &self.scans,
        );
        registry.add_counter(
            POINTS_DROPPED,
            POINTS_DROPPED_HELP,
            vec![("reason", "channel_full".to_string())],
            &self.sink_channel_full,
        );
    }
}

/// What became of one model's prediction requests (label `model`): kept by
/// the fan-out, which submits them, and the model's collector, which takes
/// the answers.
#[derive(Debug, Default, Clone)]
pub struct ModelRequestStats {
    /// Predictions made by the serving version.
    pub predictions: Counter,
    /// Requests the serving version refused, by reason.
    pub rejected: InferenceRefusals,
    /// Requests (serving or shadow) whose forward call failed.
    pub failed: Counter,
    /// Rows the shadow version's queue or rate limit refused.
    pub shadow_rejected: Counter,
}

impl ModelRequestStats {
    pub fn register(&self, registry: &MetricsRegistry, model: &str) {
        let labels = || vec![("model", model.to_string())];
        registry.add_counter(
            "ironbridge_predictions",
            "Predictions made by each model's serving version.",
            labels(),
            &self.predictions,
        );
        registry.add_counter(
            "ironbridge_shadow_rejected",
            "Rows a shadow version's queue or rate limit refused.",
            labels(),
            &self.shadow_rejected,
        );
        registry.add_counter(
            "ironbridge_inference_failed",
            "Inference requests whose forward call failed (serving or shadow).",
            labels(),
            &self.failed,
        );
        for (reason, counter) in self.rejected.counters() {
            let mut labels = labels();
            labels.push(("reason", reason.to_string()));
            registry.add_counter(
                "ironbridge_inference_rejected",
                "Inference requests the serving version refused, by reason.",
                labels,
                counter,
            );
        }
    }
}

/// Inference requests the serving version refused, one counter per reason
/// (`ironbridge_inference_rejected_total{model,reason}`).
#[derive(Debug, Default, Clone)]
pub struct InferenceRefusals {
    /// The bounded queue was full (the newest request is refused).
    pub queue_full: Counter,
    /// Over the model's `max_rate`.
    pub rate_limited: Counter,
    /// The row did not have one value per model input.
    pub row_length: Counter,
    /// The inference worker is gone.
    pub stopped: Counter,
}

impl InferenceRefusals {
    /// Counts `error`; returns the total over every reason.
    pub fn count(&self, error: &ironbridge_models::SubmitError) -> u64 {
        use ironbridge_models::SubmitError;
        let counter = match error {
            SubmitError::QueueFull => &self.queue_full,
            SubmitError::RateLimited => &self.rate_limited,
            // The gateway submits rows; a flat batch's shape errors are
            // the same mistake, counted with them.
            SubmitError::RowLength { .. }
            | SubmitError::BatchLength { .. }
            | SubmitError::TooManyRows { .. } => &self.row_length,
            SubmitError::Stopped => &self.stopped,
        };
        counter.inc();
        self.total()
    }

    /// Each reason, as the `reason` label names it, with its counter.
    fn counters(&self) -> [(&'static str, &Counter); 4] {
        [
            ("queue_full", &self.queue_full),
            ("rate_limited", &self.rate_limited),
            ("row_length", &self.row_length),
            ("stopped", &self.stopped),
        ]
    }

    /// Each reason, as the `reason` label names it, with its count.
    pub fn by_reason(&self) -> [(&'static str, u64); 4] {
        self.counters().map(|(reason, c)| (reason, c.get()))
    }

    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }
}

/// A running gateway.
pub struct Gateway {
    tasks: JoinSet<()>,
    /// Stop after the fan-out (they drain what it handed them).
    collectors: JoinSet<()>,
    sink_task: Option<tokio::task::JoinHandle<()>>,
    opcua_task: tokio::task::JoinHandle<()>,
    modbus_task: Option<tokio::task::JoinHandle<()>>,
    pub stats: Arc<FanOutStats>,
    pub source_stats: HashMap<String, SourceStats>,
    pub sink_stats: Option<InfluxSinkStats>,
    /// Every counter above and the models' own, as /metrics shows them.
    pub metrics: MetricsRegistry,
    /// Where the OPC UA server listens.
    pub opcua_endpoint: String,
    /// Where the Modbus server listens (the actual port if 0 was configured).
    pub modbus_server_addr: Option<SocketAddr>,
    /// Where health and metrics are served (the actual port if 0 was
    /// configured).
    pub http_addr: Option<SocketAddr>,
    http_task: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    /// Builds every component (models verified and loaded, sources planned),
    /// starts the OPC UA server, the InfluxDB sink and one task per source.
    /// Fails before reading any machine if a component cannot be built or
    /// the OPC UA server cannot start.
    pub async fn start(
        config: GatewayConfig,
        cancel: CancellationToken,
    ) -> Result<Self, GatewayError> {
        // The one place every counter is registered (README, "Health and
        // metrics"): /metrics and the log read it.
        // `[gateway] name` labels every series, as it tags every point.
        let metrics = match &config.gateway.name {
            Some(name) => MetricsRegistry::with_constant_labels(vec![("gateway", name.clone())]),
            None => MetricsRegistry::new(),
        };
        register_gateway_metrics(&metrics);
        let Components {
            models,
            sources,
            influx,
            layout,
            register_map,
        } = Components::build(&config, &metrics)?;

        let lifecycles: Vec<_> = models.iter().map(|m| m.lifecycle.clone()).collect();
        // Made now, so a missing token fails the start before anything runs.
        let registry_clients = models
            .iter()
            .filter_map(|m| m.config.registry.as_ref().map(|r| (m, r)))
            .map(|(m, r)| {
                registry_sync::RegistrySync::client(&m.config.name, r)
                    .map(|client| (m.lifecycle.clone(), r.clone(), client))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Bound before the OPC UA server starts, so a taken port fails the
        // start with nothing else listening yet.
        let modbus_server = match (&config.modbus_server, &register_map) {
            (Some(c), Some(map)) => Some(ModbusServer::bind(c, map).await?),
            _ => None,
        };

        let http_server = match &config.http {
            Some(c) => Some(HttpServer::bind(c).await?),
            None => None,
        };
        let http_addr = http_server.as_ref().map(HttpServer::local_addr);

        let (publisher, opcua_task) =
            opcua_server::start(&config.opcua, &layout, &lifecycles, cancel.child_token()).await?;
        let opcua_endpoint = format!("opc.tcp://{}:{}/", config.opcua.host, config.opcua.port);
        for m in &models {
            publisher.publish_model_status(&m.status());
            publisher.publish_model_versions(&m.manifest.name, &m.lifecycle.versions());
        }
        let modbus_registers = modbus_server.as_ref().map(ModbusServer::registers);
        let modbus_server_addr = modbus_server.as_ref().map(ModbusServer::local_addr);
        let modbus_task = modbus_server.map(|s| s.serve(cancel.child_token()));

        let (sink_tx, sink_task, sink_stats) = match (&config.influx, influx) {
            (Some(influx_config), Some(writer)) => {
                let (tx, rx) = mpsc::channel(SINK_CHANNEL);
                // The sink is not cancelled with the rest: it stops when the
                // fan-out and the collectors drop their senders, after draining.
                let (stats, task) =
                    InfluxSink::spawn(influx_config.clone(), writer, rx, CancellationToken::new())
                        .map_err(GatewayError::Sink)?;
                stats.register(&metrics);
                (Some(tx), Some(task), Some(stats))
            }
            _ => (None, None, None),
        };

        let stats = Arc::new(FanOutStats::default());
        stats.register(&metrics);
        // Lineage: which build with which configuration wrote what follows.
        send_to_sink(
            &sink_tx,
            Record::GatewayInfo(Arc::new(GatewayInfoRecord {
                version: env!("CARGO_PKG_VERSION").to_string(),
                commit: env!("IRONBRIDGE_GIT_COMMIT").to_string(),
                config_sha256: config.source_sha256.clone(),
                started_at: std::time::SystemTime::now(),
            })),
            &stats,
        );
        let mut collectors = JoinSet::new();
        let mut collector_txs = Vec::with_capacity(models.len());
        for model in &models {
            // Room for every request the inference queue can hold plus the
            // batch being run: the fan-out rarely waits here.
            let (tx, rx) = mpsc::channel(model.config.queue_capacity + model.config.max_batch);
            collector_txs.push(tx);
            let gate = model.config.gate.clone().map(|config| GateSetup {
                output_index: config
                    .output
                    .as_ref()
                    .and_then(|o| model.output_names.iter().position(|n| &**n == o))
                    .unwrap_or(0),
                config,
            });
            let drift = model.monitors_drift.then(|| {
                drift::DriftMonitor::new(
                    model.name.clone(),
                    model.config.drift.clone(),
                    model.lifecycle.clone(),
                    model.drifting.clone(),
                )
            });
            let collector = PredictionCollector {
                model: model.name.clone(),
                lifecycle: model.lifecycle.clone(),
                gate,
                drift,
                outputs: model.output_names.clone(),
                requests: model.requests.clone(),
                publisher: publisher.clone(),
                modbus: modbus_registers.clone(),
                sink: sink_tx.clone(),
                stats: stats.clone(),
            };
            collectors.spawn(collector.run(rx));
        }

        let mut tasks = JoinSet::new();
        let (scan_tx, scan_rx) = mpsc::channel::<Scan>(SCAN_CHANNEL);
        let mut source_stats = HashMap::new();
        for source in sources {
            let source_stats_of = source.stats();
            source_stats_of.register(&metrics, source.machine());
            source_stats.insert(source.machine().to_string(), source_stats_of);
            tasks.spawn(source.run(scan_tx.clone(), cancel.child_token()));
        }
        drop(scan_tx);

        for (lifecycle, config, client) in registry_clients {
            let model = lifecycle.name().to_string();
            let stats = registry_sync::RegistryStats::default();
            stats.register(&metrics, &model);
            let sync = registry_sync::RegistrySync {
                model,
                config,
                client,
                lifecycle,
                publisher: publisher.clone(),
                stats,
            };
            tasks.spawn(sync.run(cancel.child_token()));
        }
        tasks.spawn(versions::watch_version_folders(
            lifecycles,
            cancel.child_token(),
        ));
        if let Some(sink) = &sink_tx {
            for m in &models {
                tasks.spawn(versions::record_model_events(
                    m.lifecycle.events(),
                    versions::started(&m.lifecycle),
                    sink.clone(),
                    stats.clone(),
                    cancel.child_token(),
                ));
            }
        }

        let models = Arc::new(models);
        let fan_out = FanOut {
            publisher: publisher.clone(),
            sink: sink_tx,
            modbus: modbus_registers,
            routes: build::routes(&models),
            models: models.clone(),
            collectors: collector_txs,
            stats: stats.clone(),
        };
        tasks.spawn(fan_out.run(scan_rx));
        for index in 0..models.len() {
            tasks.spawn(status::publish_on_model_events(
                publisher.clone(),
                models.clone(),
                index,
                cancel.child_token(),
            ));
        }
        register_model_states(&metrics, &models);
        {
            let publisher = publisher.clone();
            metrics.add_computed_gauge(
                "ironbridge_opcua_sessions",
                "Sessions open on the gateway's OPC UA server.",
                move || vec![(Vec::new(), publisher.session_count() as f64)],
            );
        }
        let probe = GatewayProbe {
            metrics: metrics.clone(),
            started: std::time::Instant::now(),
            sources: source_stats
                .iter()
                .map(|(m, s)| (m.clone(), s.clone()))
                .collect(),
            sink: sink_stats.clone(),
            models: models.clone(),
        };
        tasks.spawn(status::publish_gateway_status(
            publisher.clone(),
            probe.clone(),
            cancel.child_token(),
        ));
        let http_task = http_server.map(|server| server.serve(probe, cancel.child_token()));
        tasks.spawn(status::publish_model_status(
            publisher,
            models,
            cancel.child_token(),
        ));
        tasks.spawn(status::log_stats(metrics.clone(), cancel.child_token()));

        release_freed_heap();
        tracing::info!(
            machines = config.machines.len(),
            models = config.models.len(),
            opcua = %opcua_endpoint,
            modbus = %modbus_server_addr.map_or_else(|| "(none)".to_string(), |a| a.to_string()),
            http = %http_addr.map_or_else(|| "(none)".to_string(), |a| format!("http://{a}/metrics")),
            influx = config.influx.as_ref().map(|i| i.url.as_str()).unwrap_or("(none)"),
            "gateway running"
        );
        Ok(Self {
            tasks,
            collectors,
            sink_task,
            opcua_task,
            modbus_task,
            stats,
            source_stats,
            sink_stats,
            metrics,
            opcua_endpoint,
            modbus_server_addr,
            http_addr,
            http_task,
        })
    }

    /// Waits until every task has stopped after the token was cancelled.
    pub async fn stopped(mut self) {
        while self.tasks.join_next().await.is_some() {}
        while self.collectors.join_next().await.is_some() {}
        if let Some(sink) = self.sink_task.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, sink).await.is_err() {
                tracing::warn!(
                    "InfluxDB sink did not finish its final flush in {SHUTDOWN_GRACE:?}"
                );
            }
        }
        let _ = self.opcua_task.await;
        if let Some(modbus) = self.modbus_task.take() {
            let _ = modbus.await;
        }
        if let Some(http) = self.http_task.take() {
            let _ = http.await;
        }
    }
}

/// The gateway's own series: which build runs, for how long, on how many
/// async worker threads.
fn register_gateway_metrics(metrics: &MetricsRegistry) {
    // `[runtime] worker_threads` or its default: what the runtime took.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let workers = runtime.metrics().num_workers() as f64;
        metrics.add_computed_gauge(
            "ironbridge_runtime_worker_threads",
            "Async worker threads of the gateway's runtime ([runtime] worker_threads).",
            move || vec![(Vec::new(), workers)],
        );
    }
    metrics.add_computed_gauge(
        "ironbridge_build_info",
        "The gateway's version and commit (value 1).",
        || {
            vec![(
                vec![
                    ("version", env!("CARGO_PKG_VERSION").to_string()),
                    ("commit", env!("IRONBRIDGE_GIT_COMMIT").to_string()),
                ],
                1.0,
            )]
        },
    );
    let started = std::time::Instant::now();
    metrics.add_computed_gauge(
        "ironbridge_uptime_seconds",
        "Seconds since the gateway started.",
        move || vec![(Vec::new(), started.elapsed().as_secs_f64())],
    );
}

/// `ironbridge_model_state{model,version,state}`: its labels change with
/// the serving version and its state, so it is read at each scrape.
fn register_model_states(metrics: &MetricsRegistry, models: &Arc<Vec<ServedModel>>) {
    let models = models.clone();
    metrics.add_computed_gauge(
        "ironbridge_model_state",
        "1 for each model's serving version and its state (Serving, Drifting, Failed...).",
        move || {
            models
                .iter()
                .map(|m| {
                    let s = m.status();
                    (
                        vec![
                            ("model", s.name),
                            ("version", s.active_version),
                            ("state", s.state),
                        ],
                        1.0,
                    )
                })
                .collect()
        },
    );
}

/// Policy when the sink's channel is full: drop the newest record and count
/// it (the sink has its own bounded buffer for outages; a full channel means
/// the sink task itself is stalled).
fn send_to_sink(sink: &Option<mpsc::Sender<Record>>, record: Record, stats: &FanOutStats) {
    let Some(sink) = sink else { return };
    if let Err(mpsc::error::TrySendError::Full(_)) = sink.try_send(record) {
        let n = stats.sink_channel_full.inc_get();
        if n.is_power_of_two() {
            tracing::warn!(total = n, "InfluxDB sink channel full: record dropped");
        }
    }
}

/// Gives the heap start-up freed back to the system, and fixes glibc's
/// thresholds for the gateway's life. glibc keeps freed memory for reuse,
/// so the configuration's parse trees (about 4 KB per tag: ~40 MB for
/// 10,000 tags) and the address space's build leftovers would stay resident
/// for the gateway's life (BENCHMARKS.md §12).
///
/// The thresholds: freeing the parse's largest blocks raised glibc's
/// dynamic mmap and trim thresholds to tens of MB, so that afterwards every
/// block below that (libtorch's gemm buffers, a slow store's backlog of
/// lines) was carved from an arena and stayed resident after use. Fixed at
/// [`MMAP_THRESHOLD`] and [`TRIM_THRESHOLD`], that is ~0.2 KB a tag less at
/// 1,000 tags a machine, at no CPU cost measured at 1 ms polls (BENCHMARKS.md
/// §28: the sink reuses its chunk of lines, so it is not mapped afresh). A
/// user who sets either threshold (GLIBC_TUNABLES, MALLOC_*_THRESHOLD_)
/// keeps them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_heap() {
    let user_set = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| tunables_set_thresholds(&t))
        || std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
        || std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some();
    // SAFETY: mallopt only changes glibc's parameters, under its own lock;
    // malloc_trim only hands free pages back to the kernel, under glibc's
    // own arena locks; neither touches memory in use.
    unsafe {
        if !user_set {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
        libc::malloc_trim(0);
    }
}

/// Blocks this large and larger are mapped on their own (and unmapped when
/// freed). glibc's default start is 128 KiB, which keeps the same memory
/// here; 1 MiB maps fewer blocks afresh (BENCHMARKS.md §28).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 1 << 20;

/// An arena gives back a free top this large.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 2 << 20;

/// Whether a GLIBC_TUNABLES value sets glibc's mmap or trim threshold.
#[cfg(any(test, all(target_os = "linux", target_env = "gnu")))]
fn tunables_set_thresholds(tunables: &str) -> bool {
    tunables.split(':').any(|setting| {
        let name = setting.split('=').next().unwrap_or("");
        name == "glibc.malloc.mmap_threshold" || name == "glibc.malloc.trim_threshold"
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_heap() {}

#[cfg(test)]
mod tests {
    use super::{tunables_set_thresholds, InferenceRefusals};
    use ironbridge_models::SubmitError;

    #[test]
    fn thresholds_a_user_tuned_are_left_alone() {
        assert!(tunables_set_thresholds(
            "glibc.malloc.mmap_threshold=131072"
        ));
        assert!(tunables_set_thresholds(
            "glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=0"
        ));
        assert!(!tunables_set_thresholds("glibc.malloc.arena_max=2"));
        assert!(!tunables_set_thresholds(""));
        assert!(!tunables_set_thresholds("glibc.malloc.mmap_threshold_x=1"));
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        let refusals = InferenceRefusals::default();
        assert_eq!(refusals.count(&SubmitError::QueueFull), 1);
        assert_eq!(refusals.count(&SubmitError::QueueFull), 2);
        assert_eq!(
            refusals.count(&SubmitError::RowLength {
                expected: 5,
                actual: 4
            }),
            3
        );
        assert_eq!(refusals.count(&SubmitError::Stopped), 4);
        assert_eq!(
            refusals.by_reason(),
            [
                ("queue_full", 2),
                ("rate_limited", 0),
                ("row_length", 1),
                ("stopped", 1)
            ]
        );
    }
}
