//! `[http]`: where health and metrics are served.

use std::net::SocketAddr;

use ironbridge_connectors::validation::Problem;
use serde::Deserialize;

/// The default listen address: loopback only. Metrics name machines and
/// models; serving them to the plant network is an explicit choice.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9184";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `ip:port` to listen on; port 0 lets the system choose (tests).
    pub address: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            address: DEFAULT_ADDRESS.to_string(),
        }
    }
}

impl HttpConfig {
    /// Every problem of this table; `path` is its key path (`http`).
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        match self.socket_addr() {
            Ok(_) => Vec::new(),
            Err(message) => vec![Problem::new(format!("{path}.address"), message)],
        }
    }

    /// The listen address, or why `address` is not one (a literal address:
    /// a name could resolve to an address nobody meant to expose).
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        crate::config::listen_address(&self.address, r#""127.0.0.1:9184", "0.0.0.0:9184""#)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_loopback_and_refuses_names_and_typos() {
        let config: HttpConfig = toml::from_str("").expect("empty table");
        assert_eq!(config.address, "127.0.0.1:9184");
        assert!(config.validate("http").is_empty());
        let named = HttpConfig {
            address: "localhost:9184".into(),
        };
        assert_eq!(named.validate("http")[0].path, "http.address");
        assert!(toml::from_str::<HttpConfig>("adress = \"x\"").is_err());
    }
}
