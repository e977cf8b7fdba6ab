//! The gateway's configuration: one TOML file, typed with serde, unknown keys
//! rejected, validated as a whole before any I/O. Every problem is reported at
//! once with its key path and line (`ironbridge validate`).
//!
//! Each component owns its section's type and checks (`ModbusMachineConfig`,
//! `InfluxSinkConfig`, `OpcUaServerConfig`, `ModbusServerConfig`,
//! [`ModelConfig`]); this module
//! reads the file, hands each section to its owner, adds the checks that span
//! sections (a model's machines exist and carry its inputs) and puts a line
//! number on every problem.

mod identity;
mod model;
mod runtime;
mod source_map;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use ironbridge_connectors::influx::{BufferKind, InfluxSinkConfig};
use ironbridge_connectors::modbus::{ModbusMachineConfig, ModbusRtuMachineConfig};
use ironbridge_connectors::opcua::OpcUaMachineConfig;
use ironbridge_connectors::{Problem, SourceConfig};
use ironbridge_models::ModelRegistry;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

pub use identity::GatewayIdentity;
pub use model::{
    BackendSetting, DeviceSetting, DriftConfig, ModelConfig, OnNewVersion, RegistryConfig,
    DEFAULT_REMOTE_TIMEOUT_MS,
};
pub use runtime::{RuntimeConfig, MAX_WORKER_THREADS};
pub use source_map::SourceMap;

use crate::http::HttpConfig;
use crate::modbus_server::{map as modbus_map, ModbusServerConfig};
use crate::opcua_server::OpcUaServerConfig;

/// A whole, validated gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The file it was read from; relative paths inside are taken from its folder.
    pub file: PathBuf,
    /// sha256 of the file's text (lowercase hex), for the `gateway_info`
    /// lineage point; empty for a configuration built in code.
    pub source_sha256: String,
    /// `[gateway]`: its name and site tags in a fleet.
    pub gateway: GatewayIdentity,
    /// `[runtime]`: the async runtime's threads.
    pub runtime: RuntimeConfig,
    pub opcua: OpcUaServerConfig,
    /// Absent: process values and predictions go to OPC UA only.
    pub influx: Option<InfluxSinkConfig>,
    /// Absent: no Modbus server.
    pub modbus_server: Option<ModbusServerConfig>,
    /// Absent: no health and metrics endpoint.
    pub http: Option<HttpConfig>,
    pub machines: Vec<MachineConfig>,
    pub models: Vec<ModelConfig>,
}

/// One machine and the protocol it is read with (the connectors' type: the
/// gateway never looks inside it beyond name and tags).
pub use ironbridge_connectors::SourceConfig as MachineConfig;

/// Protocols a `[[machines]]` entry may name.
const PROTOCOLS: &[&str] = SourceConfig::PROTOCOLS;
const SECTIONS: &[&str] = &[
    "gateway",
    "runtime",
    "opcua",
    "influx",
    "modbus_server",
    "http",
    "machines",
    "models",
];

/// A problem with the line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedProblem {
    pub line: Option<usize>,
    pub path: String,
    pub message: String,
}

/// Everything wrong with a configuration file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub problems: Vec<LocatedProblem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{} has {n} problem{}:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            let place = match p.line {
                Some(line) => format!("{}:{line}", self.file.display()),
                None => self.file.display().to_string(),
            };
            if p.path.is_empty() {
                writeln!(f, "  {place}: {}", p.message)?;
            } else {
                writeln!(f, "  {place}: {}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl GatewayConfig {
    /// Reads and validates `file`. Model manifests are read and their hashes
    /// checked (no model is loaded into libtorch, no socket is opened).
    ///
    /// The file is parsed on a thread of its own and the configuration
    /// returned is a copy made on the calling thread. The reason is memory:
    /// the parse trees (toml's and toml_edit's, ~6 KB a tag at their peak)
    /// are freed once read, but the values kept were allocated among them,
    /// and every page a kept value shares with freed tree stays resident
    /// for the gateway's life: 8 MB at 10,000 tags. Parsed on another
    /// thread, trees and values are in that thread's malloc arena, which is
    /// all free once the parsed copy is dropped, and the copy kept is packed
    /// together (BENCHMARKS.md §27).
    pub fn load(file: &Path) -> Result<Self, ConfigErrors> {
        let parsed = std::thread::scope(|scope| {
            let parse = std::thread::Builder::new()
                .name("config-parse".into())
                .spawn_scoped(scope, || Self::load_here(file));
            match parse {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                // No thread to be had: parse here, only the memory differs.
                Err(_) => Self::load_here(file),
            }
        });
        let parsed = parsed?;
        // The copy kept is allocated here; the parsed one goes back to the
        // parse thread's arena.
        let kept = parsed.clone();
        drop(parsed);
        Ok(kept)
    }

    fn load_here(file: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigErrors {
            file: file.to_path_buf(),
            problems: vec![LocatedProblem {
                line: None,
                path: String::new(),
                message: format!("cannot read the configuration file: {e}"),
            }],
        })?;
        Self::parse(&text, file)
    }

    /// Validates configuration `text` said to come from `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigErrors> {
        let fail = |problems| ConfigErrors {
            file: file.to_path_buf(),
            problems,
        };
        let syntax_error = |span: Option<std::ops::Range<usize>>, message: &str| {
            fail(vec![LocatedProblem {
                line: span.map(|s| SourceMap::line_of(text, s.start)),
                path: String::new(),
                message: format!("not valid TOML: {message}"),
            }])
        };
        // Two parses of the same text: toml_edit keeps the spans that give
        // each problem its line, toml gives the values serde reads.
        let source = SourceMap::parse(text).map_err(|e| syntax_error(e.span(), e.message()))?;
        let root: toml::Table =
            toml::from_str(text).map_err(|e| syntax_error(e.span(), e.message()))?;

        let mut reader = SectionReader::default();
        let config = reader.read(root, file);
        reader.check_across(&config);

        if reader.problems.is_empty() {
            let mut config = config;
            config.source_sha256 = hex::encode(Sha256::digest(text.as_bytes()));
            config.opcua.pki_dir = resolve(file, &config.opcua.pki_dir);
            if let Some(influx) = &mut config.influx {
                let path = influx
                    .dead_letter_path
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("dead-letter/influx.lp"));
                influx.dead_letter_path = Some(resolve(file, &path));
                if let Some(dir) = &influx.spool_dir {
                    influx.spool_dir = Some(resolve(file, dir));
                }
            }
            for machine in &mut config.machines {
                if let MachineConfig::OpcUa(c) = machine {
                    // One client certificate for every OPC UA machine, kept
                    // apart from the server's own.
                    c.pki_dir = Some(match &c.pki_dir {
                        Some(dir) => resolve(file, dir),
                        None => config.opcua.pki_dir.join("client"),
                    });
                    for path in [&mut c.certificate, &mut c.private_key]
                        .into_iter()
                        .flatten()
                    {
                        *path = resolve(file, path);
                    }
                }
            }
            Ok(config)
        } else {
            let mut problems: Vec<LocatedProblem> = reader
                .problems
                .into_iter()
                .map(|p| LocatedProblem {
                    line: source.line(&p.path),
                    path: p.path,
                    message: p.message,
                })
                .collect();
            // In file order, as an editor would walk them.
            problems.sort_by_key(|p| p.line.unwrap_or(0));
            Err(fail(problems))
        }
    }

    /// A model's folder, with relative paths taken from the config's folder.
    pub fn model_dir(&self, model: &ModelConfig) -> PathBuf {
        resolve(&self.file, &model.path)
    }
}

/// `path` relative to the folder of the configuration `file`.
/// A listen address from the configuration, or why `text` is not one.
/// Only literal addresses: a name would need a DNS lookup before the gateway
/// starts, and could resolve to a non-loopback address nobody meant to
/// expose. `examples` go into the message.
pub fn listen_address(text: &str, examples: &str) -> Result<std::net::SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not an ip:port address (e.g. {examples})"))
}

pub fn resolve(file: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(path)
    }
}

/// Collects problems while reading sections, so one bad section never hides
/// the problems of another.
#[derive(Default)]
struct SectionReader {
    problems: Vec<Problem>,
    /// Names of machines whose section failed to read, so that models naming
    /// them are not reported twice.
    unreadable_machines: HashSet<String>,
    /// Every `[[machines]]` name as written, readable or not, by index.
    machine_names: Vec<(usize, String)>,
}

impl SectionReader {
    fn read(&mut self, mut root: toml::Table, file: &Path) -> GatewayConfig {
        for key in root.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                self.problems.push(Problem::new(
                    key.clone(),
                    format!("unknown section; expected one of: {}", SECTIONS.join(", ")),
                ));
            }
        }
        let gateway = match root.remove("gateway") {
            Some(v) => self.section::<GatewayIdentity>(v, "gateway"),
            None => Some(GatewayIdentity::default()),
        };
        let runtime = match root.remove("runtime") {
            Some(v) => self.section::<RuntimeConfig>(v, "runtime"),
            None => Some(RuntimeConfig::default()),
        };
        let opcua = match root.remove("opcua") {
            Some(v) => self.section::<OpcUaServerConfig>(v, "opcua"),
            None => Some(OpcUaServerConfig::default()),
        };
        let influx = root
            .remove("influx")
            .and_then(|v| self.section::<InfluxSinkConfig>(v, "influx"));
        let modbus_server = root
            .remove("modbus_server")
            .and_then(|v| self.section::<ModbusServerConfig>(v, "modbus_server"));
        let http = root
            .remove("http")
            .and_then(|v| self.section::<HttpConfig>(v, "http"));
        let machines = match root.remove("machines") {
            Some(toml::Value::Array(items)) => {
                let read: Vec<(usize, MachineConfig)> = items
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, v)| self.machine(v, i).map(|m| (i, m)))
                    .collect();
                // Machines sharing a line (RTU) must agree with each other.
                self.problems.extend(SourceConfig::validate_together(
                    read.iter().map(|(i, m)| (format!("machines[{i}]"), m)),
                ));
                read.into_iter().map(|(_, m)| m).collect()
            }
            Some(_) => {
                self.problems.push(Problem::new(
                    "machines",
                    "must be an array of tables ([[machines]])",
                ));
                Vec::new()
            }
            None => Vec::new(),
        };
        let models = match root.remove("models") {
            Some(toml::Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, v)| self.section::<ModelConfig>(v, &format!("models[{i}]")))
                .collect(),
            Some(_) => {
                self.problems.push(Problem::new(
                    "models",
                    "must be an array of tables ([[models]])",
                ));
                Vec::new()
            }
            None => Vec::new(),
        };
        let mut config = GatewayConfig {
            file: file.to_path_buf(),
            source_sha256: String::new(),
            // A section that failed to read is already a problem; the default
            // only keeps the remaining checks going.
            gateway: gateway.unwrap_or_default(),
            runtime: runtime.unwrap_or_default(),
            opcua: opcua.unwrap_or_default(),
            influx,
            modbus_server,
            http,
            machines,
            models,
        };
        self.problems.extend(config.gateway.validate("gateway"));
        self.problems.extend(config.runtime.validate("runtime"));
        self.problems.extend(config.opcua.validate("opcua"));
        if let Some(http) = &config.http {
            self.problems.extend(http.validate("http"));
        }
        if let Some(influx) = &mut config.influx {
            // Problems with these are reported under `gateway` above.
            influx.point_tags = config.gateway.point_tags().unwrap_or_default();
            // The default spool folder (resolved beside the file later).
            if influx.buffer == BufferKind::Disk && influx.spool_dir.is_none() {
                influx.spool_dir = Some(PathBuf::from("spool/influx"));
            }
            self.problems.extend(influx.validate("influx"));
        }
        if let Some(modbus_server) = &config.modbus_server {
            self.problems
                .extend(modbus_server.validate("modbus_server"));
        }
        for (i, m) in config.machines.iter().enumerate() {
            self.problems.extend(m.validate(&format!("machines[{i}]")));
        }
        for (i, m) in config.models.iter().enumerate() {
            self.problems.extend(m.validate(&format!("models[{i}]")));
        }
        config
    }

    /// Deserializes one section, recording a problem with the exact key path
    /// on failure.
    fn section<T: DeserializeOwned>(&mut self, value: toml::Value, path: &str) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let full = if inner.is_empty() || inner == "." {
                    path.to_string()
                } else {
                    format!("{path}.{inner}")
                };
                self.problems
                    .push(Problem::new(full, e.inner().message().to_string()));
                None
            }
        }
    }

    fn machine(&mut self, value: toml::Value, index: usize) -> Option<MachineConfig> {
        let path = &format!("machines[{index}]");
        let toml::Value::Table(mut table) = value else {
            self.problems
                .push(Problem::new(path, "must be a table ([[machines]])"));
            return None;
        };
        let name = table
            .get("name")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        if let Some(name) = &name {
            self.machine_names.push((index, name.clone()));
        }
        let protocol = table.remove("protocol");
        let machine = match protocol.as_ref().map(|p| p.as_str()) {
            Some(Some("modbus-tcp")) => self
                .section::<ModbusMachineConfig>(toml::Value::Table(table), path)
                .map(MachineConfig::ModbusTcp),
            Some(Some("modbus-rtu")) => self
                .section::<ModbusRtuMachineConfig>(toml::Value::Table(table), path)
                .map(MachineConfig::ModbusRtu),
            Some(Some("modbus-rtu-over-tcp")) => self
                .section::<ModbusMachineConfig>(toml::Value::Table(table), path)
                .map(MachineConfig::ModbusRtuOverTcp),
            Some(Some("opcua")) => self
                .section::<OpcUaMachineConfig>(toml::Value::Table(table), path)
                .map(MachineConfig::OpcUa),
            Some(Some(other)) => {
                self.problems.push(Problem::new(
                    format!("{path}.protocol"),
                    format!(
                        "unknown protocol {other:?}; supported: {}",
                        PROTOCOLS.join(", ")
                    ),
                ));
                None
            }
            Some(None) => {
                self.problems
                    .push(Problem::new(format!("{path}.protocol"), "must be a string"));
                None
            }
            None => {
                self.problems.push(Problem::new(
                    format!("{path}.protocol"),
                    format!("missing; supported: {}", PROTOCOLS.join(", ")),
                ));
                None
            }
        };
        if machine.is_none() {
            if let Some(name) = name {
                self.unreadable_machines.insert(name);
            }
        }
        machine
    }

    /// Checks that span sections: unique machine names, models that name
    /// existing machines carrying their inputs, model files that verify.
    fn check_across(&mut self, config: &GatewayConfig) {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, name) in &self.machine_names {
            if let Some(first) = seen.insert(name, *i) {
                self.problems.push(Problem::new(
                    format!("machines[{i}].name"),
                    format!("machine name {name:?} is already used by machines[{first}]"),
                ));
            }
        }
        let mut model_names = HashSet::new();
        for (i, model) in config.models.iter().enumerate() {
            let path = format!("models[{i}]");
            if !model_names.insert(model.name.as_str()) {
                self.problems.push(Problem::new(
                    format!("{path}.name"),
                    format!("model name {:?} is used twice", model.name),
                ));
            }
            let dir = config.model_dir(model);
            let manifest = match ModelRegistry::open(&dir).and_then(|r| r.load(&model.version)) {
                Ok(verified) => Some(verified.manifest().clone()),
                Err(e) => {
                    self.problems.push(Problem::new(
                        format!("{path}.version"),
                        format!("model {} version {}: {e}", model.name, model.version),
                    ));
                    None
                }
            };
            if let (Some(manifest), Some(fallback)) = (&manifest, &model.fallback_version) {
                // Found at load, not at the first outage.
                let problem = match ModelRegistry::open(&dir).and_then(|r| r.load(fallback)) {
                    Err(e) => Some(e.to_string()),
                    Ok(verified)
                        if verified.manifest().input_names() != manifest.input_names()
                            || verified.manifest().output_names() != manifest.output_names() =>
                    {
                        Some("its inputs or outputs differ from the served version's".to_string())
                    }
                    Ok(_) => None,
                };
                if let Some(problem) = problem {
                    self.problems.push(Problem::new(
                        format!("{path}.fallback_version"),
                        format!("model {} version {fallback}: {problem}", model.name),
                    ));
                }
            }
            if let Some(manifest) = &manifest {
                if manifest.name != model.name {
                    self.problems.push(Problem::new(
                        format!("{path}.name"),
                        format!(
                            "the manifest in {} names the model {:?}, not {:?}",
                            dir.display(),
                            manifest.name,
                            model.name
                        ),
                    ));
                }
                if config.modbus_server.is_some() {
                    if let Some(problem) =
                        modbus_map::served_model_problem(&manifest.version, manifest.outputs.len())
                    {
                        self.problems.push(Problem::new(
                            format!("{path}.version"),
                            format!("served over Modbus ([modbus_server]), the model {problem}"),
                        ));
                    }
                }
                if let Some(output) = model.gate.as_ref().and_then(|g| g.output.as_ref()) {
                    if !manifest.outputs.iter().any(|o| &o.name == output) {
                        self.problems.push(Problem::new(
                            format!("{path}.gate.output"),
                            format!(
                                "the model has no output {output:?} (outputs: {})",
                                manifest.output_names().join(", ")
                            ),
                        ));
                    }
                }
                for input in model.input_tags.keys() {
                    if !manifest.inputs.iter().any(|i| &i.name == input) {
                        self.problems.push(Problem::new(
                            format!("{path}.input_tags.{input}"),
                            format!("the model has no input {input:?}"),
                        ));
                    }
                }
            }
            for (j, machine_name) in model.machines.iter().enumerate() {
                let machine = config.machines.iter().find(|m| m.name() == machine_name);
                match (machine, &manifest) {
                    (None, _) if self.unreadable_machines.contains(machine_name) => {}
                    (None, _) => self.problems.push(Problem::new(
                        format!("{path}.machines[{j}]"),
                        format!("no machine is named {machine_name:?}"),
                    )),
                    (Some(machine), Some(manifest)) => {
                        let tags = machine.tag_names();
                        if let Some(label) = &model.label_tag {
                            if !tags.contains(&label.as_str()) {
                                self.problems.push(Problem::new(
                                    format!("{path}.label_tag"),
                                    format!("machine {machine_name:?} has no tag {label:?}"),
                                ));
                            }
                        }
                        for input in &manifest.inputs {
                            let tag = model.tag_for_input(&input.name);
                            if !tags.contains(&tag) {
                                self.problems.push(Problem::new(
                                    format!("{path}.machines[{j}]"),
                                    format!(
                                        "machine {machine_name:?} has no tag {tag:?} for model input {:?} \
                                         (map it with models.input_tags)",
                                        input.name
                                    ),
                                ));
                            }
                        }
                    }
                    (Some(_), None) => {}
                }
            }
        }
        if config.modbus_server.is_some() {
            let blocks: usize = config
                .models
                .iter()
                .map(|model| {
                    config
                        .machines
                        .iter()
                        .filter(|m| model.machines.iter().any(|n| n == m.name()))
                        .count()
                })
                .sum();
            if blocks > modbus_map::MAX_BLOCKS {
                self.problems.push(Problem::new(
                    "modbus_server",
                    modbus_map::block_count_problem(blocks),
                ));
            }
        }
    }
}
