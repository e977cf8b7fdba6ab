//! `ironbridge discover`: browses a server's Objects folder and describes
//! every variable a machine configuration could read, as a ready-to-paste
//! `[[machines]]` block (NodeIds by namespace URI, data type, unit, a
//! suggested tag name).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;

use opcua::types::{
    AttributeId, BrowseDescription, BrowseDirection, BrowseResult, BrowseResultMask, ByteString,
    DataTypeId, EUInformation, Identifier, NodeClass, NodeId, ObjectId, ReadValueId,
    ReferenceTypeId, TimestampsToReturn, Variant,
};

use crate::opcua::node::NodeAddress;
use crate::opcua::session::{open_session, Identity, LiveSession, SessionOptions};
use crate::validation::name_problem;

/// Bounds on a browse, so a huge server cannot keep the command busy for
/// ever.
#[derive(Debug, Clone, Copy)]
pub struct DiscoveryLimits {
    /// Nodes visited at most.
    pub max_nodes: usize,
    /// Levels below Objects.
    pub max_depth: usize,
}

impl Default for DiscoveryLimits {
    fn default() -> Self {
        Self {
            max_nodes: 20_000,
            max_depth: 12,
        }
    }
}

/// One variable found on the server.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveredVariable {
    pub node: NodeAddress,
    /// Browse names from Objects, joined by `/`.
    pub browse_path: String,
    /// The DataType's name (`Double`, `Boolean`, ...), or its NodeId.
    pub data_type: String,
    pub unit: Option<String>,
    /// Why a gateway tag cannot read it (not a scalar number, boolean or
    /// string, or not readable); `None` when it can.
    pub unusable: Option<String>,
    /// A tag name that is valid and unique in this discovery.
    pub suggested_name: String,
}

/// What a browse found.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub endpoint: String,
    pub variables: Vec<DiscoveredVariable>,
    /// The limits cut the browse short.
    pub truncated: bool,
}

const READ_CHUNK: usize = 500;
const ENGINEERING_UNITS: &str = "EngineeringUnits";

/// Connects with `options` and browses the server.
pub async fn discover(
    options: &SessionOptions,
    limits: DiscoveryLimits,
) -> Result<Discovery, String> {
    let live = open_session(options).await?;
    let result = browse_all(&live, limits).await;
    live.close().await;
    let (variables, truncated) = result?;
    Ok(Discovery {
        endpoint: options.endpoint.clone(),
        variables,
        truncated,
    })
}

/// A variable seen while browsing, before its attributes are read.
struct Candidate {
    id: NodeId,
    browse_path: String,
    browse_name: String,
    units_property: Option<NodeId>,
}

async fn browse_all(
    live: &LiveSession,
    limits: DiscoveryLimits,
) -> Result<(Vec<DiscoveredVariable>, bool), String> {
    let session = &live.session;
    let namespaces = session
        .read_namespace_array()
        .await
        .map_err(|e| format!("cannot read the NamespaceArray: {e}"))?;
    let uri_of: HashMap<u16, String> = namespaces
        .known_namespaces()
        .iter()
        .map(|(uri, index)| (*index, uri.clone()))
        .collect();

    let mut queue: VecDeque<(NodeId, String, usize)> = VecDeque::new();
    queue.push_back((ObjectId::ObjectsFolder.into(), String::new(), 0));
    let mut seen: HashSet<NodeId> = HashSet::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut truncated = false;
    while let Some((node, path, depth)) = queue.pop_front() {
        if seen.len() >= limits.max_nodes {
            truncated = true;
            break;
        }
        if !seen.insert(node.clone()) {
            continue;
        }
        let references = browse_children(live, &node).await?;
        let mut units_property = None;
        for r in references {
            let child = r.node_id.node_id.clone();
            let name = r.browse_name.name.as_ref().to_string();
            // The server's own objects (namespace 0: Server, diagnostics)
            // are no machine data.
            if child.namespace == 0 {
                continue;
            }
            if r.reference_type_id == ReferenceTypeId::HasProperty {
                if name == ENGINEERING_UNITS {
                    units_property = Some(child);
                }
                continue;
            }
            let child_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}/{name}")
            };
            if r.node_class == NodeClass::Variable {
                candidates.push(Candidate {
                    id: child.clone(),
                    browse_path: child_path.clone(),
                    browse_name: name,
                    units_property: None,
                });
            }
            if depth + 1 < limits.max_depth {
                queue.push_back((child, child_path, depth + 1));
            } else {
                truncated = true;
            }
        }
        // Properties of a variable belong to the candidate made for it.
        if let Some(units) = units_property {
            if let Some(c) = candidates.iter_mut().find(|c| c.id == node) {
                c.units_property = Some(units);
            }
        }
    }

    // Browse order is the server's; the block reads better (and names
    // come out the same every run) in path order.
    candidates.sort_by(|a, b| a.browse_path.cmp(&b.browse_path));
    let mut variables = Vec::with_capacity(candidates.len());
    let mut names: HashSet<String> = HashSet::new();
    for chunk in candidates.chunks(READ_CHUNK) {
        let mut reads = Vec::with_capacity(chunk.len() * 4);
        for c in chunk {
            for attribute in [
                AttributeId::DataType,
                AttributeId::ValueRank,
                AttributeId::UserAccessLevel,
            ] {
                reads.push(read_of(&c.id, attribute));
            }
            // The unit (or a placeholder read of the node itself, so every
            // candidate has four answers).
            reads.push(read_of(
                c.units_property.as_ref().unwrap_or(&c.id),
                AttributeId::Value,
            ));
        }
        let values = session
            .read(&reads, TimestampsToReturn::Neither, 0.0)
            .await
            .map_err(|e| format!("cannot read variable attributes: {e}"))?;
        for (c, answers) in chunk.iter().zip(values.chunks(4)) {
            let [data_type, value_rank, access, units] = answers else {
                continue;
            };
            let data_type_id = match &data_type.value {
                Some(Variant::NodeId(id)) => Some((**id).clone()),
                _ => None,
            };
            let (type_name, type_usable) = describe_type(data_type_id.as_ref(), &uri_of);
            let scalar = matches!(value_rank.value, Some(Variant::Int32(-1)));
            let readable = matches!(access.value, Some(Variant::Byte(bits)) if bits & 1 == 1);
            let unusable = if !readable {
                Some("not readable by this user".to_string())
            } else if !scalar {
                Some("an array, not a scalar".to_string())
            } else if !type_usable {
                Some(format!("{type_name} is not a number, boolean or string"))
            } else {
                None
            };
            let unit = if c.units_property.is_some() {
                match &units.value {
                    Some(Variant::ExtensionObject(obj)) => obj
                        .inner_as::<EUInformation>()
                        .map(|eu| eu.display_name.text.as_ref().to_string())
                        .filter(|t| !t.is_empty()),
                    _ => None,
                }
            } else {
                None
            };
            let Some(node) = node_address(&c.id, &uri_of) else {
                continue;
            };
            variables.push(DiscoveredVariable {
                suggested_name: unique_name(&c.browse_path, &c.browse_name, &mut names),
                node,
                browse_path: c.browse_path.clone(),
                data_type: type_name,
                unit,
                unusable,
            });
        }
    }
    Ok((variables, truncated))
}

async fn browse_children(
    live: &LiveSession,
    node: &NodeId,
) -> Result<Vec<opcua::types::ReferenceDescription>, String> {
    let description = BrowseDescription {
        node_id: node.clone(),
        browse_direction: BrowseDirection::Forward,
        reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
        include_subtypes: true,
        node_class_mask: (NodeClass::Object as u32) | (NodeClass::Variable as u32),
        result_mask: BrowseResultMask::All as u32,
    };
    let mut out = Vec::new();
    let mut results: Vec<BrowseResult> = live
        .session
        .browse(&[description], 1000, None)
        .await
        .map_err(|e| format!("cannot browse {node}: {e}"))?;
    while let Some(result) = results.pop() {
        if result.status_code.is_bad() {
            // One node that cannot be browsed does not end the discovery.
            break;
        }
        out.extend(result.references.unwrap_or_default());
        let point: ByteString = result.continuation_point;
        if point.is_null() || point.is_empty() {
            break;
        }
        results = live
            .session
            .browse_next(false, &[point])
            .await
            .map_err(|e| format!("cannot continue browsing {node}: {e}"))?;
    }
    Ok(out)
}

fn read_of(node: &NodeId, attribute: AttributeId) -> ReadValueId {
    ReadValueId {
        node_id: node.clone(),
        attribute_id: attribute as u32,
        ..Default::default()
    }
}

/// The type's name, and whether a gateway tag can carry it.
fn describe_type(id: Option<&NodeId>, uri_of: &HashMap<u16, String>) -> (String, bool) {
    let Some(id) = id else {
        return ("unknown".to_string(), false);
    };
    if id.namespace == 0 {
        if let Identifier::Numeric(n) = id.identifier {
            if let Ok(t) = DataTypeId::try_from(n) {
                let usable = matches!(
                    t,
                    DataTypeId::Boolean
                        | DataTypeId::SByte
                        | DataTypeId::Byte
                        | DataTypeId::Int16
                        | DataTypeId::UInt16
                        | DataTypeId::Int32
                        | DataTypeId::UInt32
                        | DataTypeId::Int64
                        | DataTypeId::UInt64
                        | DataTypeId::Float
                        | DataTypeId::Double
                        | DataTypeId::Duration
                        | DataTypeId::String
                        | DataTypeId::LocalizedText
                        | DataTypeId::Number
                        | DataTypeId::Integer
                        | DataTypeId::UInteger
                        | DataTypeId::Enumeration
                );
                return (format!("{t:?}"), usable);
            }
        }
    }
    let name = node_address(id, uri_of)
        .map(|a| a.to_string())
        .unwrap_or_else(|| id.to_string());
    (name, false)
}

fn node_address(id: &NodeId, uri_of: &HashMap<u16, String>) -> Option<NodeAddress> {
    let namespace_uri = if id.namespace == 0 {
        None
    } else {
        Some(uri_of.get(&id.namespace)?.clone())
    };
    Some(NodeAddress {
        namespace_uri,
        identifier: id.identifier.clone(),
    })
}

/// A tag name from the browse name, in snake case and the characters tag
/// names allow; the browse path makes it unique where names repeat.
fn unique_name(path: &str, browse_name: &str, taken: &mut HashSet<String>) -> String {
    let base = snake(browse_name);
    let mut name = if base.is_empty() {
        "tag".to_string()
    } else {
        base
    };
    if taken.contains(&name) {
        let full = snake(&path.replace('/', "_"));
        if !full.is_empty() {
            name = full;
        }
    }
    let mut candidate = name.clone();
    let mut n = 2;
    while taken.contains(&candidate) || name_problem(&candidate).is_some() {
        candidate = format!("{name}_{n}");
        n += 1;
        if n > 10_000 {
            candidate = format!("tag_{}", taken.len() + 1);
            break;
        }
    }
    taken.insert(candidate.clone());
    candidate
}

fn snake(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    let mut prev_lower = false;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && prev_lower {
                out.push('_');
            }
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
            out.push(c.to_ascii_lowercase());
        } else {
            if !out.ends_with('_') && !out.is_empty() {
                out.push('_');
            }
            prev_lower = false;
        }
    }
    out.trim_matches('_').to_string()
}

impl Discovery {
    /// A `[[machines]]` block for `config/…toml`: usable variables as tags,
    /// the others commented out with the reason.
    pub fn machine_block(&self, options: &SessionOptions, password_env: &str) -> String {
        let mut out = String::new();
        let usable = self
            .variables
            .iter()
            .filter(|v| v.unusable.is_none())
            .count();
        let _ = writeln!(
            out,
            "# Discovered on {} : {} variable(s), {} readable as tags{}.",
            self.endpoint,
            self.variables.len(),
            usable,
            if self.truncated {
                " (browse cut short by its limits)"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "[[machines]]");
        let _ = writeln!(out, "name = \"machine-1\"              # choose a name");
        let _ = writeln!(out, "protocol = \"opcua\"");
        let _ = writeln!(out, "endpoint = {:?}", options.endpoint);
        let _ = writeln!(
            out,
            "security_policy = {:?}",
            options.security_policy.as_str()
        );
        let _ = writeln!(out, "security_mode = {:?}", options.security_mode.as_str());
        match &options.identity {
            Identity::Anonymous => {}
            Identity::UserName { user, .. } => {
                let _ = writeln!(out, "username = {user:?}");
                let _ = writeln!(out, "password_env = {password_env:?}");
            }
            Identity::X509 {
                certificate,
                private_key,
            } => {
                let _ = writeln!(out, "certificate = {:?}", certificate.display().to_string());
                let _ = writeln!(out, "private_key = {:?}", private_key.display().to_string());
            }
        }
        let _ = writeln!(out, "trust_server_certs = false");
        let _ = writeln!(out, "publishing_interval_ms = 1000");
        for v in &self.variables {
            let prefix = if v.unusable.is_some() { "# " } else { "" };
            let _ = writeln!(out);
            if let Some(why) = &v.unusable {
                let _ = writeln!(out, "  # {}: {why}", v.browse_path);
            } else {
                let _ = writeln!(out, "  # {} ({})", v.browse_path, v.data_type);
            }
            let _ = writeln!(out, "  {prefix}[[machines.tags]]");
            let _ = writeln!(out, "  {prefix}name = {:?}", v.suggested_name);
            let _ = writeln!(out, "  {prefix}node = {:?}", v.node.to_string());
            if let Some(unit) = &v.unit {
                let _ = writeln!(out, "  {prefix}unit = {unit:?}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_suggests_valid_unique_names() {
        let mut taken = HashSet::new();
        assert_eq!(unique_name("Spindle/Speed", "Speed", &mut taken), "speed");
        assert_eq!(unique_name("Axis/Speed", "Speed", &mut taken), "axis_speed");
        assert_eq!(
            unique_name(
                "Spindle/BearingTemperature",
                "BearingTemperature",
                &mut taken
            ),
            "bearing_temperature"
        );
        assert_eq!(
            unique_name("x/Temp (°C)", "Temp (°C)", &mut taken),
            "temp_c"
        );
        assert_eq!(
            unique_name("Axis/Speed", "Speed", &mut taken),
            "axis_speed_2"
        );
        assert_eq!(unique_name("a/???", "???", &mut taken), "tag");
        for name in &taken {
            assert!(name_problem(name).is_none(), "{name}");
        }
    }

    #[test]
    fn discover_names_types_and_knows_which_a_tag_can_carry() {
        let uris = HashMap::from([(3u16, "urn:acme".to_string())]);
        let double: NodeId = DataTypeId::Double.into();
        assert_eq!(
            describe_type(Some(&double), &uris),
            ("Double".to_string(), true)
        );
        let blob: NodeId = DataTypeId::ByteString.into();
        assert_eq!(
            describe_type(Some(&blob), &uris),
            ("ByteString".to_string(), false)
        );
        let custom = NodeId::new(3, 3001u32);
        assert_eq!(
            describe_type(Some(&custom), &uris),
            ("nsu=urn:acme;i=3001".to_string(), false)
        );
    }
}
