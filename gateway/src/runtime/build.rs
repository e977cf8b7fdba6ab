//! Building the components of a configuration, each on its own and before
//! anything runs: models verified and loaded, sources planned, the InfluxDB
//! writer made. A component that cannot be built fails the start here, with
//! its name, before any machine is read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ironbridge_connectors::influx::InfluxWriter;
use ironbridge_connectors::Source;
use ironbridge_metrics::MetricsRegistry;
use ironbridge_models::{
    DeviceChoice, InferenceOptions, LifecycleOptions, ModelError, ModelLifecycle, ModelManifest,
    ModelState, RemoteOptions, REMOTE_BACKOFF,
};

use crate::config::{
    resolve, BackendSetting, DeviceSetting, GatewayConfig, GatewayIdentity, ModelConfig,
    DEFAULT_REMOTE_TIMEOUT_MS,
};
use crate::features::FeatureMap;
use crate::modbus_server::{MapMachine, MapModel, RegisterMap};
use crate::opcua_server::{
    AddressSpaceLayout, MachineLayout, ModelLayout, ModelStatusView, RemoteStatusView,
};
use crate::GatewayError;

/// One served model: its versions and the one serving (the lifecycle), the
/// interface every version must keep (the manifest it started with), and
/// how its inputs are assembled.
pub(crate) struct ServedModel {
    pub(crate) config: ModelConfig,
    /// The manifest of the version activated at start: names, inputs and
    /// outputs the OPC UA nodes, Modbus registers and features were built for.
    pub(crate) manifest: ModelManifest,
    pub(crate) lifecycle: Arc<ModelLifecycle>,
    pub(crate) features: FeatureMap,
    pub(crate) name: Arc<str>,
    pub(crate) output_names: Vec<Arc<str>>,
    /// The manifest carries a training distribution: drift is measured.
    pub(crate) monitors_drift: bool,
    /// Set while any machine's inputs have drifted.
    pub(crate) drifting: Arc<AtomicBool>,
    /// Its prediction requests: made, refused, failed.
    pub(crate) requests: super::ModelRequestStats,
}

impl ServedModel {
    /// The serving version's own status (its worker's state, not a copy).
    pub(crate) fn status(&self) -> ModelStatusView {
        let serving = self.lifecycle.serving();
        let status = serving.handle.status();
        ModelStatusView {
            name: self.manifest.name.clone(),
            active_version: serving.manifest.version.clone(),
            sha256: serving.manifest.sha256.clone(),
            loaded_at: status.loaded_at.unwrap_or(SystemTime::UNIX_EPOCH),
            state: match status.state {
                // Still serving, but on inputs unlike its training data.
                ModelState::Serving if self.drifting.load(Ordering::Relaxed) => {
                    "Drifting".to_string()
                }
                state => state.as_str().to_string(),
            },
            inference_count: status.inference_count,
            inputs: self.manifest.input_names(),
            outputs: self.manifest.output_names(),
            shadow_version: self.lifecycle.shadow().map(|s| s.version.to_string()),
            remote: status.remote.map(|r| RemoteStatusView {
                reachable: r.reachable,
                last_error: r.last_error.unwrap_or_default(),
            }),
        }
    }
}

/// Everything a configuration asks for, built and not yet running.
pub(crate) struct Components {
    pub(crate) models: Vec<ServedModel>,
    pub(crate) sources: Vec<Box<dyn Source>>,
    pub(crate) influx: Option<InfluxWriter>,
    pub(crate) layout: AddressSpaceLayout,
    /// Only when `[modbus_server]` is configured.
    pub(crate) register_map: Option<RegisterMap>,
}

impl Components {
    /// Model versions register their counters in `metrics` as they load.
    pub(crate) fn build(
        config: &GatewayConfig,
        metrics: &MetricsRegistry,
    ) -> Result<Self, GatewayError> {
        let models = config
            .models
            .iter()
            .map(|m| load_model(config, m, metrics))
            .collect::<Result<Vec<_>, _>>()?;
        let sources = config
            .machines
            .iter()
            .map(|machine| {
                machine
                    .clone()
                    .build()
                    .map_err(|source| GatewayError::Machine {
                        machine: machine.name().to_string(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let influx = config
            .influx
            .as_ref()
            .map(|influx| {
                let writer = InfluxWriter::new(influx).map_err(|e| GatewayError::Machine {
                    machine: "influx".into(),
                    source: e,
                })?;
                // gzip unset depends on the host; say which it came to.
                tracing::info!(
                    url = %writer.write_url(),
                    gzip = writer.gzips(),
                    "InfluxDB sink configured"
                );
                Ok::<_, GatewayError>(writer)
            })
            .transpose()?;
        let layout = layout(&config.gateway, &sources, &models);
        let register_map = config
            .modbus_server
            .as_ref()
            .map(|_| modbus_register_map(&sources, &models))
            .transpose()?;
        Ok(Self {
            models,
            sources,
            influx,
            layout,
            register_map,
        })
    }
}

fn load_model(
    config: &GatewayConfig,
    model: &ModelConfig,
    metrics: &MetricsRegistry,
) -> Result<ServedModel, GatewayError> {
    let err = |source| GatewayError::Model {
        model: model.name.clone(),
        source: Box::new(source),
    };
    let device = match model.device_setting() {
        Some(DeviceSetting::Cuda(i)) => DeviceChoice::Cuda(i),
        _ => DeviceChoice::Cpu,
    };
    let options = LifecycleOptions {
        device,
        inference: InferenceOptions {
            max_batch: model.max_batch,
            max_wait: Duration::from_millis(model.max_wait_ms),
            queue_capacity: model.queue_capacity,
            rate_limit_per_s: model.rate_limit_per_s.and_then(std::num::NonZeroU32::new),
            intra_op_threads: model.intra_op_threads,
        },
        metrics: metrics.clone(),
        remote: remote_options(config, model).map_err(err)?,
    };
    let lifecycle = ModelLifecycle::start(
        &model.name,
        config.model_dir(model),
        &model.version,
        options,
    )
    .map_err(err)?;
    let manifest = (*lifecycle.serving().manifest).clone();
    let features = FeatureMap::new(
        manifest
            .inputs
            .iter()
            .map(|i| model.tag_for_input(&i.name).to_string())
            .collect(),
        model.max_input_age_ms.map(Duration::from_millis),
    );
    tracing::info!(
        model = %manifest.name,
        version = %manifest.version,
        sha256 = %manifest.sha256,
        "model verified and loaded"
    );
    let requests = super::ModelRequestStats::default();
    requests.register(metrics, &manifest.name);
    Ok(ServedModel {
        requests,
        config: model.clone(),
        name: Arc::from(manifest.name.as_str()),
        output_names: manifest
            .outputs
            .iter()
            .map(|o| Arc::from(o.name.as_str()))
            .collect(),
        monitors_drift: manifest.inputs.iter().any(|i| i.quantiles.is_some())
            || manifest.outputs.iter().any(|o| o.quantiles.is_some()),
        drifting: Arc::new(AtomicBool::new(false)),
        manifest,
        lifecycle: Arc::new(lifecycle),
        features,
    })
}

/// The engine a `backend = "remote"` model runs on; `None` for a local one.
/// Call after validation (which checked the keys and that `token_env` is
/// set).
fn remote_options(
    config: &GatewayConfig,
    model: &ModelConfig,
) -> Result<Option<RemoteOptions>, ModelError> {
    if model.backend_setting() != Some(BackendSetting::Remote) {
        return Ok(None);
    }
    let setup = |message: String| ModelError::RemoteSetup {
        model: model.name.clone(),
        message,
    };
    let url = model
        .url
        .clone()
        .ok_or_else(|| setup("backend = \"remote\" needs a url".to_owned()))?;
    let token = model
        .token_env
        .as_deref()
        .map(|name| {
            std::env::var(name).map_err(|e| setup(format!("token_env variable {name}: {e}")))
        })
        .transpose()?;
    // TLS files relative to the configuration file, like model paths.
    let file = |path: &Option<std::path::PathBuf>| path.as_ref().map(|p| resolve(&config.file, p));
    Ok(Some(RemoteOptions {
        url,
        remote_model: model.remote_model_name().to_owned(),
        timeout: Duration::from_millis(model.timeout_ms.unwrap_or(DEFAULT_REMOTE_TIMEOUT_MS)),
        token,
        tls_ca: file(&model.tls_ca),
        tls_cert: file(&model.tls_cert),
        tls_key: file(&model.tls_key),
        backoff: REMOTE_BACKOFF,
        fallback_version: model.fallback_version.clone(),
    }))
}

fn layout(
    gateway: &GatewayIdentity,
    sources: &[Box<dyn Source>],
    models: &[ServedModel],
) -> AddressSpaceLayout {
    AddressSpaceLayout {
        gateway: gateway.clone(),
        machines: sources
            .iter()
            .map(|s| MachineLayout {
                name: s.machine().to_string(),
                tags: s.tag_names().iter().map(|t| t.to_string()).collect(),
            })
            .collect(),
        models: models
            .iter()
            .map(|m| ModelLayout {
                name: m.manifest.name.clone(),
                inputs: m.manifest.input_names(),
                outputs: m.manifest.output_names(),
                machines: m.config.machines.clone(),
                registry_alias: m.config.registry.as_ref().map(|r| r.alias.clone()),
                remote_url: (m.config.backend_setting() == Some(BackendSetting::Remote))
                    .then(|| m.config.url.clone())
                    .flatten(),
            })
            .collect(),
    }
}

/// The Modbus register map of what is actually served: the same map
/// `modbus_server::register_map` derives from the configuration.
fn modbus_register_map(
    sources: &[Box<dyn Source>],
    models: &[ServedModel],
) -> Result<RegisterMap, GatewayError> {
    let machines = sources
        .iter()
        .map(|s| MapMachine {
            name: s.machine().to_string(),
            tag_count: s.tag_names().len(),
        })
        .collect();
    let models: Vec<MapModel> = models
        .iter()
        .map(|m| MapModel {
            name: m.manifest.name.clone(),
            version: m.manifest.version.clone(),
            outputs: m.manifest.output_names(),
            machines: m.config.machines.clone(),
        })
        .collect();
    RegisterMap::new(machines, &models).map_err(GatewayError::ModbusRegisterMap)
}

/// Which models each machine feeds, by index into the served models: built
/// once, so routing a scan is one map lookup.
pub(crate) fn routes(models: &[ServedModel]) -> HashMap<Arc<str>, Vec<usize>> {
    let mut routes: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
    for (i, model) in models.iter().enumerate() {
        for machine in &model.config.machines {
            routes
                .entry(Arc::from(machine.as_str()))
                .or_default()
                .push(i);
        }
    }
    routes
}
