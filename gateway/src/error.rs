//! The one error type of the gateway library.

use ironbridge_connectors::Problem;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigErrors),
    #[error("model {model}: {source}")]
    Model {
        model: String,
        // Boxed: ModelError is large and this path is cold.
        #[source]
        source: Box<ironbridge_models::ModelError>,
    },
    #[error("machine {machine}: {source}")]
    Machine {
        machine: String,
        #[source]
        source: ironbridge_connectors::ConnectorError,
    },
    #[error("InfluxDB sink: {0}")]
    Sink(#[source] ironbridge_connectors::ConnectorError),
    #[error("invalid OPC UA server configuration: {}", join_problems(.0))]
    OpcUaConfig(Vec<Problem>),
    #[error("invalid OPC UA address space layout: {0}")]
    OpcUaLayout(String),
    #[error(
        "OPC UA user {username:?}: environment variable {env:?} (its password) is not set or empty"
    )]
    MissingPassword { username: String, env: String },
    #[error("OPC UA server certificate in {pki_dir}: {message}")]
    Certificate { pki_dir: String, message: String },
    #[error("OPC UA server cannot be built: {0}")]
    OpcUaBuild(String),
    #[error("OPC UA server cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("OPC UA server stopped with an error: {0}")]
    OpcUaRun(String),
    #[error("{0}")]
    Discover(String),
    #[error("invalid Modbus server configuration: {}", join_problems(.0))]
    ModbusServerConfig(Vec<Problem>),
    #[error("Modbus register map: {0}")]
    ModbusRegisterMap(String),
    #[error("Modbus server cannot listen on {addr}: {source}")]
    ModbusServerBind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid [http] configuration: {}", join_problems(.0))]
    HttpConfig(Vec<Problem>),
    #[error("health and metrics server ([http] address) cannot listen on {addr}: {source}")]
    HttpBind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("model registry {url}: {message}")]
    Registry { url: String, message: String },
    #[error(
        "model registry {url}: registered model {name:?} has no alias {alias:?} (or no such model)"
    )]
    RegistryAliasUnknown {
        url: String,
        name: String,
        alias: String,
    },
    #[error(
        "registry version {registry_version} of {name:?} has no artifact {path} in its source \
         (not an IronBridge version: it needs manifest.toml and the model file it names)"
    )]
    RegistryArtifactMissing {
        name: String,
        registry_version: String,
        path: String,
    },
    #[error(
        "registry version {registry_version} of {name:?}: its manifest is unusable: {message}"
    )]
    RegistryManifest {
        name: String,
        registry_version: String,
        message: String,
    },
    #[error(
        "registry version {registry_version} is model version {version}, but the folder {dir} \
         already holds a different {version}; not overwritten (remove the folder or publish \
         under a new version)"
    )]
    RegistryConflict {
        dir: String,
        version: String,
        registry_version: String,
    },
    #[error("cannot write the downloaded version to {path}: {source}")]
    RegistryWrite {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "model {model}: environment variable {env:?} (the registry's bearer token) is not set or empty"
    )]
    MissingRegistryToken { model: String, env: String },
}

fn join_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
