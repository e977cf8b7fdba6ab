//! Node addresses as a configuration names them (`nsu=<uri>;s=Spindle.Speed`)
//! and their resolution against a server's NamespaceArray.
//!
//! Namespace indexes are the server's business: a server may register its
//! namespaces in another order after a restart, so the configuration names
//! a namespace by URI and the index is looked up at every (re)connect.

use std::str::FromStr;

use opcua::types::{Identifier, NamespaceMap, NodeId};

/// A node by namespace URI and identifier; no index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    /// `None`: namespace 0 (OPC UA's own, always index 0).
    pub namespace_uri: Option<String>,
    pub identifier: Identifier,
}

impl NodeAddress {
    /// Parses `nsu=<uri>;<i|s|g|b>=<id>` or a namespace-0 `<i|s|g|b>=<id>`.
    /// In the URI, `%3b` stands for `;` and `%25` for `%` (OPC UA Part 6).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.starts_with("ns=") {
            return Err(format!(
                "`{text}` names a namespace by index; name it by URI \
                 (nsu=<namespace uri>;...): servers renumber namespaces"
            ));
        }
        let (namespace_uri, id) = match text.strip_prefix("nsu=") {
            Some(rest) => {
                let Some((uri, id)) = rest.split_once(';') else {
                    return Err(format!(
                        "`{text}` has no identifier after the namespace URI (nsu=<uri>;s=<name>)"
                    ));
                };
                if uri.is_empty() {
                    return Err(format!("`{text}` has an empty namespace URI"));
                }
                let uri = uri
                    .replace("%3b", ";")
                    .replace("%3B", ";")
                    .replace("%25", "%");
                (Some(uri), id)
            }
            None => (None, text),
        };
        let unknown = || {
            format!(
                "`{id}` is not an identifier: use i=<number>, s=<string>, g=<guid> or b=<base64>"
            )
        };
        // async-opcua's parser slices the first two bytes, and panics when
        // they split a character (found by tests/tests/parser_properties.rs).
        if id.get(..2).is_none() {
            return Err(unknown());
        }
        let identifier = Identifier::from_str(id).map_err(|()| unknown())?;
        if matches!(&identifier, Identifier::String(s) if s.is_empty()) {
            return Err(format!("`{text}` has an empty string identifier"));
        }
        Ok(Self {
            namespace_uri,
            identifier,
        })
    }

    /// The NodeId on a server with this NamespaceArray; `None` when the
    /// server does not know the namespace.
    pub fn resolve(&self, namespaces: &NamespaceMap) -> Option<NodeId> {
        let index = match &self.namespace_uri {
            None => 0,
            Some(uri) => namespaces.get_index(uri)?,
        };
        Some(NodeId::new(index, self.identifier.clone()))
    }
}

impl std::fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(uri) = &self.namespace_uri {
            write!(f, "nsu={};", uri.replace('%', "%25").replace(';', "%3b"))?;
        }
        write!(f, "{}", self.identifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_across_the_prefix_is_refused_not_a_panic() {
        assert!(NodeAddress::parse("𝒥x").is_err());
        assert!(NodeAddress::parse("nsu=urn:a;é=1").is_err());
    }

    fn namespaces(uris: &[&str]) -> NamespaceMap {
        let mut map = NamespaceMap::new();
        for uri in uris {
            map.add_namespace(uri);
        }
        map
    }

    #[test]
    fn node_address_resolves_by_uri_wherever_the_namespace_sits() {
        let node = NodeAddress::parse("nsu=urn:acme:spindle;s=Spindle.Speed").unwrap();
        let first = namespaces(&["urn:other", "urn:acme:spindle"]);
        let second = namespaces(&["urn:acme:spindle", "urn:other", "urn:third"]);
        let a = node.resolve(&first).unwrap();
        let b = node.resolve(&second).unwrap();
        assert_ne!(a.namespace, b.namespace);
        assert_eq!(a.identifier, b.identifier);
        assert_eq!(Some(a.namespace), first.get_index("urn:acme:spindle"));
        assert!(node.resolve(&namespaces(&["urn:other"])).is_none());
    }

    #[test]
    fn node_address_parses_every_identifier_kind() {
        for text in [
            "nsu=urn:a;i=17",
            "nsu=urn:a;s=Line 1.Speed",
            "nsu=urn:a;g=72962b91-fa75-4ae6-8d28-b404dc7daf63",
            "nsu=urn:a;b=aGVsbG8=",
            "i=2258",
            "nsu=urn:a%3bb;s=x",
        ] {
            let node = NodeAddress::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                NodeAddress::parse(&node.to_string()).unwrap(),
                node,
                "{text}"
            );
        }
        let semi = NodeAddress::parse("nsu=urn:a%3bb;s=x").unwrap();
        assert_eq!(semi.namespace_uri.as_deref(), Some("urn:a;b"));
        assert_eq!(
            NodeAddress::parse("i=2258")
                .unwrap()
                .resolve(&NamespaceMap::new()),
            Some(NodeId::new(0, 2258u32))
        );
    }

    #[test]
    fn node_address_refuses_indexes_and_garbage() {
        for text in [
            "ns=2;s=Speed",
            "nsu=urn:a",
            "nsu=;s=x",
            "nsu=urn:a;x=1",
            "nsu=urn:a;i=notanumber",
            "nsu=urn:a;s=",
            "",
            "Speed",
        ] {
            assert!(NodeAddress::parse(text).is_err(), "{text}");
        }
        assert!(NodeAddress::parse("ns=2;s=Speed")
            .unwrap_err()
            .contains("nsu="));
    }
}
