//! `[gateway]`: which gateway of a fleet this is. Its `name` becomes a
//! `gateway=<name>` tag on every point written and the OPC UA node
//! `Gateway/Name`; `tags` (e.g. `site`, `line`) go on every point beside it,
//! so one store and one dashboard can tell a fleet's gateways apart.

use std::collections::BTreeMap;

use ironbridge_connectors::influx::line_protocol::PointTags;
use ironbridge_connectors::Problem;
use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayIdentity {
    /// Absent: points carry no `gateway` tag (a single gateway needs none).
    #[serde(default)]
    pub name: Option<String>,
    /// Extra tags on every point, e.g. `tags = { site = "north", line = "3" }`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl GatewayIdentity {
    /// The tags every point carries: `gateway` first, then `tags` by key.
    /// Fails where [`Self::validate`] reports a problem.
    pub fn point_tags(&self) -> Result<PointTags, String> {
        let name = self.name.as_deref().map(|name| ("gateway", name));
        let tags = self.tags.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        PointTags::new(name.into_iter().chain(tags)).map_err(|e| e.to_string())
    }

    pub fn validate(&self, path: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Some(name) = &self.name {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                problems.push(Problem::new(
                    format!("{path}.name"),
                    format!(
                        "gateway name {name:?} must be non-empty and use only letters, digits, \
                         '_', '-' and '.' (it is a tag value, an OPC UA value and a file name \
                         in a fleet)"
                    ),
                ));
            }
        }
        for (key, value) in &self.tags {
            let at = format!("{path}.tags.{key}");
            if key == "gateway" {
                problems.push(Problem::new(at, "is set by `name`; use `name` instead"));
                continue;
            }
            // Also an OPC UA browse name and a Grafana/Prometheus label name.
            let mut chars = key.chars();
            let well_formed = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !well_formed {
                problems.push(Problem::new(
                    at,
                    format!(
                        "tag key {key:?} must start with a letter or '_' and use only letters, \
                         digits and '_'"
                    ),
                ));
                continue;
            }
            if PointTags::RESERVED_KEYS.contains(&key.as_str()) {
                problems.push(Problem::new(
                    at,
                    format!(
                        "{key:?} is a tag of the gateway's own points; choose another key \
                         (reserved: {})",
                        PointTags::RESERVED_KEYS.join(", ")
                    ),
                ));
                continue;
            }
            if let Err(e) = PointTags::new([(key.as_str(), value.as_str())]) {
                problems.push(Problem::new(at, e.to_string()));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(text: &str) -> GatewayIdentity {
        toml::from_str(text).unwrap()
    }

    fn paths(problems: &[Problem]) -> Vec<String> {
        problems.iter().map(|p| p.path.clone()).collect()
    }

    #[test]
    fn name_and_tags_make_the_point_tags() {
        let id = identity(
            r#"
            name = "line-3"
            tags = { site = "north", cell = "7" }
            "#,
        );
        assert!(id.validate("gateway").is_empty());
        assert_eq!(
            id.point_tags().unwrap().as_str(),
            ",gateway=line-3,cell=7,site=north"
        );
        assert!(GatewayIdentity::default().point_tags().unwrap().is_empty());
    }

    #[test]
    fn bad_names_and_reserved_or_unencodable_tags_are_named() {
        let id = identity(
            r#"
            name = "line 3"
            tags = { gateway = "x", machine = "y", site = "", "a/b" = "z" }
            "#,
        );
        assert_eq!(
            paths(&id.validate("gateway")),
            [
                "gateway.name",
                "gateway.tags.a/b",
                "gateway.tags.gateway",
                "gateway.tags.machine",
                "gateway.tags.site"
            ]
        );
        assert!(toml::from_str::<GatewayIdentity>("nam = \"x\"").is_err());
    }
}
