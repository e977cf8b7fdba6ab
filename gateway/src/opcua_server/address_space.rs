//! The IronBridge address space (the contract in README.md, "Contracts", "OPC UA"):
//!
//! ```text
//! Objects/IronBridge/
//!   Machines/<machine>/Tags/<tag>
//!   Machines/<machine>/Predictions/<model>/<output> | ModelVersion
//!   Models/<model>/ActiveVersion | Sha256 | LoadedAt | State | InferenceCount | Inputs | Outputs
//!   Models/<model>/Activate(version) | Rollback() | StartShadow(version) | StopShadow()
//!                                                             (methods: admin, SignAndEncrypt)
//!   Models/<model>/Shadow/Version | Shadow/<machine>/<output>
//!   Models/<model>/Gate/ShadowVersion | Metric | Samples | Mean | Lower | Upper | Margin | Psi | Decision
//!   Models/<model>/Drift/<input or output>                    (PSI against the training distribution)
//!   Models/<model>/Remote/Url | Reachable | LastError          (backend = "remote" only)
//!   Models/<model>/Versions/<version>/State | Sha256 | CreatedAt | TrainingDataSha256
//!                                     | CodeCommit | Acceptance | FailureReason
//!   Models/<model>/Registry/LastSync | Alias | VersionSeen | LastError
//!                                                   (only with [models.registry])
//!   Gateway/Version | Commit | StartedAt | UptimeSeconds | Ready | NotReady
//!   Gateway/Machines/<machine>/Up
//!   Gateway/Sink/State | BufferedLines                      (State: Delivering, Failing,
//!                                                            Unauthorized, Off)
//! ```
//!
//! Version folders found while running get their nodes when they are found.
//!
//! Browse names live in [`NAMESPACE_URI`]; NodeIds are strings equal to the
//! browse path below `IronBridge` (`s=Machines/press-7/Tags/temp_c`). Folders
//! organize their children, objects own their variables by HasComponent, so
//! a hierarchical browse from Objects reaches every variable.
//!
//! Tag variables declare DataType BaseDataType until their first value: the
//! type of a tag is only known from the values the connector decodes. The
//! publisher then narrows the DataType to Double, Int64, UInt64 or Boolean
//! (what an HMI needs to map the tag), so a client browsing a running gateway
//! sees the concrete type. Every variable is read-only (CurrentRead).
//!
//! The tag variables are not in this address space: `tag_nodes` serves
//! them (same NodeIds, browse names and references) from a table that costs
//! a fraction of what a node here does.

use std::collections::{HashMap, HashSet};

use opcua::server::address_space::{
    AccessLevel, AddressSpace, MethodBuilder, NodeType, ObjectBuilder, VariableBuilder,
};
use opcua::types::{
    Argument, DataTypeId, DataValue, LocalizedText, NodeId, ObjectId, ObjectTypeId, QualifiedName,
    StatusCode, VariableTypeId, Variant,
};

use super::nodes::ModelMethod;
use crate::config::GatewayIdentity;

pub const NAMESPACE_URI: &str = "urn:ironbridge:gateway";

/// Browse name (and NodeId) of the root object under Objects.
pub const ROOT_NAME: &str = "IronBridge";

/// Name of the variable beside a model's outputs that holds the version
/// which computed them.
pub const MODEL_VERSION_NAME: &str = "ModelVersion";

/// What the server exposes: the machines with their tags, the models with
/// their inputs/outputs and the machines each model runs for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressSpaceLayout {
    /// `Gateway/Name` and `Gateway/Tags/<key>`.
    pub gateway: GatewayIdentity,
    pub machines: Vec<MachineLayout>,
    pub models: Vec<ModelLayout>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineLayout {
    pub name: String,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelLayout {
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Machines whose scans this model predicts for (each gets a
    /// `Predictions/<model>` object).
    pub machines: Vec<String>,
    /// The registry alias the model follows (`[models.registry]`): its
    /// `Registry/` nodes exist only then.
    pub registry_alias: Option<String>,
    /// The engine's base URL of a `backend = "remote"` model (it gets a
    /// `Remote/` folder).
    pub remote_url: Option<String>,
}

impl AddressSpaceLayout {
    /// Checks that every name can be a browse-path segment (NodeIds are the
    /// paths, so a `/` would make two nodes indistinguishable) and that no
    /// two nodes share a path. Lists every problem.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        let mut machine_names = HashSet::new();
        for machine in &self.machines {
            check_segment(&mut problems, "machine", &machine.name);
            if !machine_names.insert(machine.name.as_str()) {
                problems.push(format!("machine {:?} is listed twice", machine.name));
            }
            check_unique_segments(
                &mut problems,
                &format!("machine {:?} tag", machine.name),
                &machine.tags,
            );
        }
        let mut model_names = HashSet::new();
        for model in &self.models {
            check_segment(&mut problems, "model", &model.name);
            if !model_names.insert(model.name.as_str()) {
                problems.push(format!("model {:?} is listed twice", model.name));
            }
            let what = format!("model {:?}", model.name);
            check_unique_segments(&mut problems, &format!("{what} input"), &model.inputs);
            check_unique_segments(&mut problems, &format!("{what} output"), &model.outputs);
            if model.outputs.iter().any(|o| o == MODEL_VERSION_NAME) {
                problems.push(format!(
                    "{what} output {MODEL_VERSION_NAME:?} collides with the node of the same name"
                ));
            }
            let mut seen = HashSet::new();
            for machine in &model.machines {
                if !machine_names.contains(machine.as_str()) {
                    problems.push(format!("{what} runs for unknown machine {machine:?}"));
                } else if !seen.insert(machine.as_str()) {
                    problems.push(format!("{what} lists machine {machine:?} twice"));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

fn check_segment(problems: &mut Vec<String>, what: &str, name: &str) {
    if name.is_empty() {
        problems.push(format!("{what} name is empty"));
    } else if name.contains('/') || name.chars().any(char::is_control) {
        problems.push(format!(
            "{what} name {name:?} contains '/' or a control character"
        ));
    }
}

fn check_unique_segments(problems: &mut Vec<String>, what: &str, names: &[String]) {
    let mut seen = HashSet::new();
    for name in names {
        check_segment(problems, what, name);
        if !seen.insert(name.as_str()) {
            problems.push(format!("{what} {name:?} is listed twice"));
        }
    }
}

/// The variables of one model's predictions for one machine.
#[derive(Debug, Clone)]
pub(crate) struct PredictionNodes {
    pub(crate) outputs: HashMap<String, NodeId>,
    pub(crate) model_version: NodeId,
}

/// The status variables of one model.
#[derive(Debug, Clone)]
pub(crate) struct ModelNodes {
    pub(crate) active_version: NodeId,
    pub(crate) sha256: NodeId,
    pub(crate) loaded_at: NodeId,
    pub(crate) state: NodeId,
    pub(crate) inference_count: NodeId,
    pub(crate) inputs: NodeId,
    pub(crate) outputs: NodeId,
    /// The `Versions` folder; each version's object is added under it.
    pub(crate) versions: NodeId,
    pub(crate) methods: Vec<(ModelMethod, NodeId)>,
    /// `Shadow/Version`: the shadow version, empty when none runs.
    pub(crate) shadow_version: NodeId,
    /// machine → output → `Shadow/<machine>/<output>`.
    pub(crate) shadow_outputs: HashMap<String, HashMap<String, NodeId>>,
    pub(crate) gate: GateNodes,
    /// `Drift/<input or output>` → its PSI variable.
    pub(crate) drift: HashMap<String, NodeId>,
    /// `Registry/...`, when the model follows a registry.
    pub(crate) registry: Option<RegistryNodes>,
    /// `Remote/Reachable | LastError`, for a remote model.
    pub(crate) remote: Option<RemoteNodes>,
}

/// `Models/<model>/Registry/...`: what the gateway last saw of the registry
/// (`Alias` is set from the configuration when built).
#[derive(Debug, Clone)]
pub(crate) struct RegistryNodes {
    pub(crate) last_sync: NodeId,
    pub(crate) version_seen: NodeId,
    pub(crate) last_error: NodeId,
}

#[derive(Debug, Clone)]
pub(crate) struct RemoteNodes {
    pub(crate) reachable: NodeId,
    pub(crate) last_error: NodeId,
}

/// `Models/<model>/Gate/...`: the gate's running statistics.
#[derive(Debug, Clone)]
pub(crate) struct GateNodes {
    pub(crate) shadow_version: NodeId,
    pub(crate) metric: NodeId,
    pub(crate) samples: NodeId,
    pub(crate) mean: NodeId,
    pub(crate) lower: NodeId,
    pub(crate) upper: NodeId,
    pub(crate) margin: NodeId,
    pub(crate) psi: NodeId,
    pub(crate) decision: NodeId,
}

/// The variables of one version folder, `Models/<model>/Versions/<version>/`.
#[derive(Debug, Clone)]
pub(crate) struct VersionNodes {
    pub(crate) state: NodeId,
    pub(crate) sha256: NodeId,
    pub(crate) created_at: NodeId,
    pub(crate) training_data_sha256: NodeId,
    pub(crate) code_commit: NodeId,
    /// The manifest's acceptance metrics, `name=value` per entry.
    pub(crate) acceptance: NodeId,
    pub(crate) failure_reason: NodeId,
}

/// `Gateway/...`: the gateway's own health, as `/ready` reports it.
#[derive(Debug, Clone, Default)]
pub(crate) struct GatewayNodes {
    pub(crate) started_at: NodeId,
    pub(crate) uptime_seconds: NodeId,
    pub(crate) ready: NodeId,
    pub(crate) not_ready: NodeId,
    /// machine → `Gateway/Machines/<machine>/Up`
    pub(crate) machines_up: HashMap<String, NodeId>,
    pub(crate) sink_state: NodeId,
    pub(crate) sink_buffered_lines: NodeId,
}

/// Where each published value goes, so publishing never formats a path.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeIndex {
    pub(crate) gateway: GatewayNodes,
    /// machine → model → variables
    pub(crate) predictions: HashMap<String, HashMap<String, PredictionNodes>>,
    /// model → variables
    pub(crate) models: HashMap<String, ModelNodes>,
}

/// Adds the layout's nodes to `space` (namespace index `ns`). The layout must
/// have passed [`AddressSpaceLayout::validate`].
pub(crate) fn build(space: &mut AddressSpace, ns: u16, layout: &AddressSpaceLayout) -> NodeIndex {
    let mut index = NodeIndex::default();
    let root = add_folder(
        space,
        ns,
        ROOT_NAME.to_string(),
        ROOT_NAME,
        &ObjectId::ObjectsFolder.into(),
    );
    let machines = add_folder(space, ns, "Machines".to_string(), "Machines", &root);
    let models = add_folder(space, ns, "Models".to_string(), "Models", &root);

    for machine in &layout.machines {
        let machine_path = format!("Machines/{}", machine.name);
        let machine_node = add_object(space, ns, machine_path.clone(), &machine.name, &machines);
        // The tag variables themselves are served by `tag_nodes`, not kept
        // in the address space (their cost per tag, BENCHMARKS.md §26).
        add_folder(
            space,
            ns,
            format!("{machine_path}/Tags"),
            "Tags",
            &machine_node,
        );
        add_folder(
            space,
            ns,
            format!("{machine_path}/Predictions"),
            "Predictions",
            &machine_node,
        );
    }

    index.gateway = add_gateway(space, ns, &root, layout);

    for model in &layout.models {
        for machine in &model.machines {
            let predictions_path = format!("Machines/{machine}/Predictions");
            let parent = NodeId::new(ns, predictions_path.clone());
            let model_path = format!("{predictions_path}/{}", model.name);
            let model_node = add_object(space, ns, model_path.clone(), &model.name, &parent);
            let outputs = model
                .outputs
                .iter()
                .map(|output| {
                    let id = add_variable(
                        space,
                        ns,
                        format!("{model_path}/{output}"),
                        output,
                        &model_node,
                        DataTypeId::Double,
                        None,
                    );
                    (output.clone(), id)
                })
                .collect();
            let model_version = add_variable(
                space,
                ns,
                format!("{model_path}/{MODEL_VERSION_NAME}"),
                MODEL_VERSION_NAME,
                &model_node,
                DataTypeId::String,
                None,
            );
            index
                .predictions
                .entry(machine.clone())
                .or_default()
                .insert(
                    model.name.clone(),
                    PredictionNodes {
                        outputs,
                        model_version,
                    },
                );
        }

        let model_path = format!("Models/{}", model.name);
        let model_node = add_object(space, ns, model_path.clone(), &model.name, &models);
        let mut var = |name: &str, data_type: DataTypeId, initial: Option<Variant>| {
            add_variable(
                space,
                ns,
                format!("{model_path}/{name}"),
                name,
                &model_node,
                data_type,
                initial,
            )
        };
        let nodes = ModelNodes {
            active_version: var("ActiveVersion", DataTypeId::String, None),
            sha256: var("Sha256", DataTypeId::String, None),
            loaded_at: var("LoadedAt", DataTypeId::DateTime, None),
            state: var("State", DataTypeId::String, None),
            inference_count: var("InferenceCount", DataTypeId::UInt64, None),
            // Known from the layout already, so readable before the model loads.
            inputs: var(
                "Inputs",
                DataTypeId::String,
                Some(string_array(&model.inputs)),
            ),
            outputs: var(
                "Outputs",
                DataTypeId::String,
                Some(string_array(&model.outputs)),
            ),
            versions: add_folder(
                space,
                ns,
                format!("{model_path}/Versions"),
                "Versions",
                &model_node,
            ),
            methods: ModelMethod::ALL
                .iter()
                .map(|&method| {
                    (
                        method,
                        add_method(space, ns, &model_path, &model_node, method),
                    )
                })
                .collect(),
            shadow_version: NodeId::null(),
            shadow_outputs: HashMap::new(),
            gate: add_gate(space, ns, &model_path, &model_node),
            drift: HashMap::new(),
            registry: model
                .registry_alias
                .as_ref()
                .map(|alias| add_registry(space, ns, &model_path, &model_node, alias)),
            remote: model
                .remote_url
                .as_ref()
                .map(|url| add_remote(space, ns, &model_path, &model_node, url)),
        };
        let mut nodes = nodes;
        let drift_path = format!("{model_path}/Drift");
        let drift = add_folder(space, ns, drift_path.clone(), "Drift", &model_node);
        for name in model.inputs.iter().chain(&model.outputs) {
            if nodes.drift.contains_key(name) {
                continue; // an output named like an input: the input's PSI
            }
            let id = add_variable(
                space,
                ns,
                format!("{drift_path}/{name}"),
                name,
                &drift,
                DataTypeId::Double,
                None,
            );
            nodes.drift.insert(name.clone(), id);
        }
        let shadow_path = format!("{model_path}/Shadow");
        let shadow = add_folder(space, ns, shadow_path.clone(), "Shadow", &model_node);
        nodes.shadow_version = add_variable(
            space,
            ns,
            format!("{shadow_path}/Version"),
            "Version",
            &shadow,
            DataTypeId::String,
            None,
        );
        for machine in &model.machines {
            let machine_path = format!("{shadow_path}/{machine}");
            let machine_node = add_object(space, ns, machine_path.clone(), machine, &shadow);
            let outputs = model
                .outputs
                .iter()
                .map(|output| {
                    let id = add_variable(
                        space,
                        ns,
                        format!("{machine_path}/{output}"),
                        output,
                        &machine_node,
                        DataTypeId::Double,
                        None,
                    );
                    (output.clone(), id)
                })
                .collect();
            nodes.shadow_outputs.insert(machine.clone(), outputs);
        }
        index.models.insert(model.name.clone(), nodes);
    }
    index
}

/// `Gateway/`: version and commit (known now), the rest published.
fn add_gateway(
    space: &mut AddressSpace,
    ns: u16,
    root: &NodeId,
    layout: &AddressSpaceLayout,
) -> GatewayNodes {
    let gateway = add_object(space, ns, "Gateway".to_string(), "Gateway", root);
    let mut var = |name: &str, data_type: DataTypeId, initial: Option<Variant>| {
        add_variable(
            space,
            ns,
            format!("Gateway/{name}"),
            name,
            &gateway,
            data_type,
            initial,
        )
    };
    var(
        "Version",
        DataTypeId::String,
        Some(Variant::from(env!("CARGO_PKG_VERSION"))),
    );
    var(
        "Commit",
        DataTypeId::String,
        Some(Variant::from(env!("IRONBRIDGE_GIT_COMMIT"))),
    );
    // Empty when `[gateway] name` is not set, so a client finds the node on
    // every gateway.
    var(
        "Name",
        DataTypeId::String,
        Some(Variant::from(
            layout.gateway.name.clone().unwrap_or_default().as_str(),
        )),
    );
    let mut nodes = GatewayNodes {
        started_at: var("StartedAt", DataTypeId::DateTime, None),
        uptime_seconds: var("UptimeSeconds", DataTypeId::Double, None),
        ready: var("Ready", DataTypeId::Boolean, None),
        not_ready: var("NotReady", DataTypeId::String, None),
        ..GatewayNodes::default()
    };
    if !layout.gateway.tags.is_empty() {
        let tags = add_folder(space, ns, "Gateway/Tags".to_string(), "Tags", &gateway);
        for (key, value) in &layout.gateway.tags {
            add_variable(
                space,
                ns,
                format!("Gateway/Tags/{key}"),
                key,
                &tags,
                DataTypeId::String,
                Some(Variant::from(value.as_str())),
            );
        }
    }
    let machines = add_folder(
        space,
        ns,
        "Gateway/Machines".to_string(),
        "Machines",
        &gateway,
    );
    for machine in &layout.machines {
        let path = format!("Gateway/Machines/{}", machine.name);
        let node = add_object(space, ns, path.clone(), &machine.name, &machines);
        let up = add_variable(
            space,
            ns,
            format!("{path}/Up"),
            "Up",
            &node,
            DataTypeId::Boolean,
            None,
        );
        nodes.machines_up.insert(machine.name.clone(), up);
    }
    let sink = add_object(space, ns, "Gateway/Sink".to_string(), "Sink", &gateway);
    nodes.sink_state = add_variable(
        space,
        ns,
        "Gateway/Sink/State".to_string(),
        "State",
        &sink,
        DataTypeId::String,
        None,
    );
    nodes.sink_buffered_lines = add_variable(
        space,
        ns,
        "Gateway/Sink/BufferedLines".to_string(),
        "BufferedLines",
        &sink,
        DataTypeId::UInt64,
        None,
    );
    nodes
}

/// Adds `Models/<model>/Versions/<version>/` and its variables (values
/// come from the publisher).
pub(crate) fn add_version(
    space: &mut AddressSpace,
    ns: u16,
    model: &str,
    versions_folder: &NodeId,
    version: &str,
) -> VersionNodes {
    let path = format!("Models/{model}/Versions/{version}");
    let object = add_object(space, ns, path.clone(), version, versions_folder);
    let mut var = |name: &str, data_type: DataTypeId, initial: Option<Variant>| {
        add_variable(
            space,
            ns,
            format!("{path}/{name}"),
            name,
            &object,
            data_type,
            initial,
        )
    };
    VersionNodes {
        state: var("State", DataTypeId::String, None),
        sha256: var("Sha256", DataTypeId::String, None),
        created_at: var("CreatedAt", DataTypeId::DateTime, None),
        training_data_sha256: var("TrainingDataSha256", DataTypeId::String, None),
        code_commit: var("CodeCommit", DataTypeId::String, None),
        // An array of `name=value` (declared as one from the start).
        acceptance: var("Acceptance", DataTypeId::String, Some(string_array(&[]))),
        failure_reason: var("FailureReason", DataTypeId::String, None),
    }
}

/// `Models/<model>/Remote/`: the engine's URL (known now), whether it
/// answers and its last error (published with the model's status).
fn add_remote(
    space: &mut AddressSpace,
    ns: u16,
    model_path: &str,
    model_node: &NodeId,
    url: &str,
) -> RemoteNodes {
    let path = format!("{model_path}/Remote");
    let remote = add_folder(space, ns, path.clone(), "Remote", model_node);
    add_variable(
        space,
        ns,
        format!("{path}/Url"),
        "Url",
        &remote,
        DataTypeId::String,
        Some(Variant::from(url.to_string())),
    );
    RemoteNodes {
        reachable: add_variable(
            space,
            ns,
            format!("{path}/Reachable"),
            "Reachable",
            &remote,
            DataTypeId::Boolean,
            None,
        ),
        last_error: add_variable(
            space,
            ns,
            format!("{path}/LastError"),
            "LastError",
            &remote,
            DataTypeId::String,
            None,
        ),
    }
}

fn add_gate(space: &mut AddressSpace, ns: u16, model_path: &str, model_node: &NodeId) -> GateNodes {
    let path = format!("{model_path}/Gate");
    let gate = add_object(space, ns, path.clone(), "Gate", model_node);
    let mut var = |name: &str, data_type: DataTypeId| {
        add_variable(
            space,
            ns,
            format!("{path}/{name}"),
            name,
            &gate,
            data_type,
            None,
        )
    };
    GateNodes {
        shadow_version: var("ShadowVersion", DataTypeId::String),
        metric: var("Metric", DataTypeId::String),
        samples: var("Samples", DataTypeId::UInt64),
        mean: var("Mean", DataTypeId::Double),
        lower: var("Lower", DataTypeId::Double),
        upper: var("Upper", DataTypeId::Double),
        margin: var("Margin", DataTypeId::Double),
        psi: var("Psi", DataTypeId::Double),
        decision: var("Decision", DataTypeId::String),
    }
}

/// `Models/<model>/Registry/`: the alias is known from the configuration;
/// the rest reads BadWaitingForInitialData until the first sync.
fn add_registry(
    space: &mut AddressSpace,
    ns: u16,
    model_path: &str,
    model_node: &NodeId,
    alias: &str,
) -> RegistryNodes {
    let path = format!("{model_path}/Registry");
    let registry = add_object(space, ns, path.clone(), "Registry", model_node);
    let mut var = |name: &str, data_type: DataTypeId, initial: Option<Variant>| {
        add_variable(
            space,
            ns,
            format!("{path}/{name}"),
            name,
            &registry,
            data_type,
            initial,
        )
    };
    // Fixed by the configuration: set once, never published.
    var("Alias", DataTypeId::String, Some(Variant::from(alias)));
    RegistryNodes {
        last_sync: var("LastSync", DataTypeId::DateTime, None),
        version_seen: var("VersionSeen", DataTypeId::String, None),
        last_error: var("LastError", DataTypeId::String, None),
    }
}

/// `Models/<model>/Activate(version: String)`, `Rollback()`,
/// `StartShadow(version: String)` or `StopShadow()`.
fn add_method(
    space: &mut AddressSpace,
    ns: u16,
    model_path: &str,
    model_node: &NodeId,
    method: ModelMethod,
) -> NodeId {
    let name = method.name();
    let id = NodeId::new(ns, format!("{model_path}/{name}"));
    let builder = MethodBuilder::new(&id, QualifiedName::new(ns, name), name)
        .component_of(model_node.clone())
        .executable(true)
        .user_executable(true);
    let builder = match method {
        ModelMethod::Activate | ModelMethod::StartShadow => builder.input_args(
            space,
            &NodeId::new(ns, format!("{model_path}/{name}/InputArguments")),
            &[Argument {
                name: "version".into(),
                data_type: DataTypeId::String.into(),
                value_rank: -1,
                array_dimensions: None,
                description: LocalizedText::new("", "a version folder of the model"),
            }],
        ),
        ModelMethod::Rollback | ModelMethod::StopShadow => builder,
    };
    builder.insert(space);
    id
}

pub(crate) fn string_array(items: &[String]) -> Variant {
    Variant::from(items.to_vec())
}

fn add_folder(
    space: &mut AddressSpace,
    ns: u16,
    path: String,
    name: &str,
    parent: &NodeId,
) -> NodeId {
    let id = NodeId::new(ns, path);
    ObjectBuilder::new(&id, QualifiedName::new(ns, name), name)
        .is_folder()
        .organized_by(parent.clone())
        .insert(space);
    id
}

fn add_object(
    space: &mut AddressSpace,
    ns: u16,
    path: String,
    name: &str,
    parent: &NodeId,
) -> NodeId {
    let id = NodeId::new(ns, path);
    ObjectBuilder::new(&id, QualifiedName::new(ns, name), name)
        .has_type_definition(ObjectTypeId::BaseObjectType)
        .organized_by(parent.clone())
        .insert(space);
    id
}

/// What a variable reads before its first value: BadWaitingForInitialData,
/// with an explicit empty value (async-opcua 0.19 reports a DataValue
/// without a value as Good, dropping its status).
pub(crate) fn waiting_for_initial_data() -> DataValue {
    DataValue {
        value: Some(Variant::Empty),
        status: Some(StatusCode::BadWaitingForInitialData),
        ..DataValue::null()
    }
}

/// A read-only variable owned by `parent`. Without an initial value it reads
/// as BadWaitingForInitialData until the first publish.
fn add_variable(
    space: &mut AddressSpace,
    ns: u16,
    path: String,
    name: &str,
    parent: &NodeId,
    data_type: DataTypeId,
    initial: Option<Variant>,
) -> NodeId {
    let id = NodeId::new(ns, path);
    let is_array = matches!(&initial, Some(Variant::Array(_)));
    let mut builder = VariableBuilder::new(&id, QualifiedName::new(ns, name), name)
        .data_type(data_type)
        .access_level(AccessLevel::CURRENT_READ)
        .user_access_level(AccessLevel::CURRENT_READ)
        .has_type_definition(VariableTypeId::BaseDataVariableType)
        .component_of(parent.clone());
    builder = if is_array {
        builder.value_rank(1)
    } else {
        builder.value_rank(-1)
    };
    builder.insert(space);
    let initial_value = match initial {
        Some(value) => DataValue::new_now(value),
        None => waiting_for_initial_data(),
    };
    if let Some(NodeType::Variable(variable)) = space.find_mut(&id) {
        variable.set_data_value(initial_value);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> AddressSpaceLayout {
        AddressSpaceLayout {
            gateway: GatewayIdentity::default(),
            machines: vec![MachineLayout {
                name: "press-7".into(),
                tags: vec!["temp_c".into(), "pressure_bar".into()],
            }],
            models: vec![ModelLayout {
                name: "wear".into(),
                inputs: vec!["temp_c".into(), "pressure_bar".into()],
                outputs: vec!["wear_pct".into()],
                machines: vec!["press-7".into()],
                registry_alias: None,
                remote_url: None,
            }],
        }
    }

    #[test]
    fn opcua_layout_accepts_a_plain_layout() {
        assert_eq!(layout().validate(), Ok(()));
    }

    #[test]
    fn opcua_layout_lists_every_problem() {
        let mut bad = layout();
        bad.machines[0].tags.push("a/b".into());
        bad.machines[0].tags.push("temp_c".into());
        bad.machines.push(MachineLayout {
            name: String::new(),
            tags: vec![],
        });
        bad.models[0].outputs.push(MODEL_VERSION_NAME.into());
        bad.models[0].machines.push("press-9".into());
        let err = bad.validate().expect_err("must fail");
        for expected in [
            "\"a/b\" contains '/'",
            "tag \"temp_c\" is listed twice",
            "machine name is empty",
            "collides",
            "unknown machine \"press-9\"",
        ] {
            assert!(err.contains(expected), "{expected:?} missing in {err}");
        }
    }
}
