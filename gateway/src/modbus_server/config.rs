//! Configuration of the Modbus TCP server (the `[modbus_server]` table).

use std::net::SocketAddr;

use ironbridge_connectors::Problem;
use serde::Deserialize;

/// The optional `[modbus_server]` table. Its presence turns the server on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModbusServerConfig {
    /// `ip:port` to listen on. Loopback by default: the protocol has no
    /// authentication, so serving the plant network is an explicit choice.
    /// Port 0 lets the system choose (tests); the start log names the port.
    pub address: String,
    /// The only unit id answered; other unit ids get exception 0x0B (gateway
    /// target device failed to respond). Absent: every unit id is answered.
    pub unit_id: Option<u8>,
}

/// The default listen address: loopback, and not 502 (which needs root on
/// most systems and is usually the machines' own port).
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:5502";

impl Default for ModbusServerConfig {
    fn default() -> Self {
        Self {
            address: DEFAULT_ADDRESS.to_string(),
            unit_id: None,
        }
    }
}

impl ModbusServerConfig {
    /// Every problem of this table; `path` is its key path (`modbus_server`).
    /// Opens nothing.
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(message) = self.socket_addr() {
            problems.push(Problem::new(format!("{path}.address"), message));
        }
        problems
    }

    /// The listen address, or why `address` is not one. Only literal
    /// addresses: a name would need a DNS lookup before the gateway starts,
    /// and could resolve to a non-loopback address nobody meant to expose.
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        crate::config::listen_address(
            &self.address,
            r#""127.0.0.1:5502", "0.0.0.0:502", "[::1]:5502""#,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<ModbusServerConfig, toml::de::Error> {
        toml::from_str(toml_text)
    }

    #[test]
    fn modbus_server_defaults_to_loopback_and_any_unit() {
        let config = parse("").expect("empty table parses");
        assert_eq!(config.address, "127.0.0.1:5502");
        assert_eq!(config.unit_id, None);
        assert!(config.validate("modbus_server").is_empty());
        let addr = config.socket_addr().expect("default parses");
        assert!(addr.ip().is_loopback());
    }

    #[test]
    fn modbus_server_refuses_unknown_keys_and_bad_addresses() {
        let err = parse("adress = \"127.0.0.1:502\"").expect_err("typo must be refused");
        assert!(err.to_string().contains("adress"), "{err}");
        let err = parse("unit_id = 300").expect_err("unit id is a byte");
        assert!(err.to_string().contains("unit_id"), "{err}");
        for bad in ["localhost:5502", "127.0.0.1", "127.0.0.1:70000", ""] {
            let config = ModbusServerConfig {
                address: bad.to_string(),
                ..Default::default()
            };
            let problems = config.validate("modbus_server");
            assert_eq!(problems.len(), 1, "{bad:?}: {problems:?}");
            assert_eq!(problems[0].path, "modbus_server.address");
        }
        for good in ["0.0.0.0:502", "[::1]:5502", "127.0.0.1:0"] {
            let config = ModbusServerConfig {
                address: good.to_string(),
                unit_id: Some(1),
            };
            assert!(config.validate("modbus_server").is_empty(), "{good}");
        }
    }
}
