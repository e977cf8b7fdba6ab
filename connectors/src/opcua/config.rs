//! Configuration of one machine read over OPC UA (`protocol = "opcua"`) and
//! its tags. Key names are a contract (see `config/example.toml`).

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use crate::backoff::BackoffConfig;
use crate::opcua::node::NodeAddress;
use crate::validation::{name_problem, Problem};

/// One machine with an OPC UA server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcUaMachineConfig {
    pub name: String,
    /// `opc.tcp://host:port/path`
    pub endpoint: String,
    #[serde(default)]
    pub security_policy: SecurityPolicyName,
    #[serde(default)]
    pub security_mode: SecurityModeName,
    /// Username identity; the password comes from the environment variable
    /// `password_env`, never from the file.
    pub username: Option<String>,
    pub password_env: Option<String>,
    /// X.509 user identity: a DER or PEM certificate and its private key.
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    /// Trust any server certificate. Off by default: an unknown server
    /// certificate is refused and saved in the PKI folder's `rejected/`,
    /// for an operator to move to `trusted/`.
    #[serde(default)]
    pub trust_server_certs: bool,
    /// The gateway's client PKI folder (`own/`, `private/`, `trusted/`,
    /// `rejected/`). Default: `client/` inside `[opcua] pki_dir`.
    pub pki_dir: Option<PathBuf>,
    #[serde(default = "default_publishing_interval_ms")]
    pub publishing_interval_ms: u64,
    #[serde(default)]
    pub mode: ReadMode,
    /// Period of the Read service in `mode = "poll"`.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Deadline of each service call and of connecting.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Reconnect delay (default 500 ms doubling up to 30 s).
    #[serde(default = "default_backoff")]
    pub backoff: BackoffConfig,
    pub tags: Vec<OpcUaTagConfig>,
}

/// One variable of the machine's server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcUaTagConfig {
    pub name: String,
    /// `nsu=<namespace uri>;<i|s|g|b>=<identifier>`; namespace 0 nodes may
    /// leave out `nsu=` (`i=2258`). A namespace index (`ns=2;`) is refused:
    /// servers renumber their namespaces.
    pub node: String,
    /// How often the server samples the value (subscription mode). Default:
    /// the publishing interval.
    pub sampling_interval_ms: Option<f64>,
    /// Values the server queues between publishes (oldest discarded).
    #[serde(default = "default_queue_size")]
    pub queue_size: u32,
    /// Report only changes beyond this deadband (subscription mode).
    pub deadband: Option<DeadbandConfig>,
    pub unit: Option<String>,
}

/// `{ absolute = 0.5 }` or `{ percent = 1.0 }` (percent of the variable's
/// EURange, which the server must have).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadbandConfig {
    pub absolute: Option<f64>,
    pub percent: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum SecurityPolicyName {
    None,
    #[default]
    Basic256Sha256,
    Aes128Sha256RsaOaep,
    Aes256Sha256RsaPss,
}

impl SecurityPolicyName {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicyName::None => "None",
            SecurityPolicyName::Basic256Sha256 => "Basic256Sha256",
            SecurityPolicyName::Aes128Sha256RsaOaep => "Aes128Sha256RsaOaep",
            SecurityPolicyName::Aes256Sha256RsaPss => "Aes256Sha256RsaPss",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum SecurityModeName {
    None,
    Sign,
    #[default]
    SignAndEncrypt,
}

impl SecurityModeName {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityModeName::None => "None",
            SecurityModeName::Sign => "Sign",
            SecurityModeName::SignAndEncrypt => "SignAndEncrypt",
        }
    }
}

/// How values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// Monitored items in one subscription; the server pushes changes.
    #[default]
    Subscription,
    /// The Read service every `poll_interval_ms`, for servers whose
    /// subscriptions are broken.
    Poll,
}

fn default_publishing_interval_ms() -> u64 {
    1000
}
fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_request_timeout_ms() -> u64 {
    5000
}
fn default_queue_size() -> u32 {
    10
}
fn default_backoff() -> BackoffConfig {
    BackoffConfig {
        initial_ms: 500,
        max_ms: 30_000,
    }
}

impl OpcUaMachineConfig {
    /// Every problem of this machine at key paths below `path`. Looks up the
    /// password's environment variable (no other I/O), so `validate` run in
    /// the service's environment catches a missing secret.
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let at = |key: &str| format!("{path}.{key}");
        if let Some(message) = name_problem(&self.name) {
            problems.push(Problem::new(at("name"), message));
        }
        if let Some(message) = endpoint_problem(&self.endpoint) {
            problems.push(Problem::new(at("endpoint"), message));
        }
        let no_policy = self.security_policy == SecurityPolicyName::None;
        let no_mode = self.security_mode == SecurityModeName::None;
        if no_policy != no_mode {
            problems.push(Problem::new(
                at("security_mode"),
                format!(
                    "security_policy {:?} and security_mode {:?} do not go together: \
                     \"None\" goes with \"None\" only",
                    self.security_policy.as_str(),
                    self.security_mode.as_str()
                ),
            ));
        }
        match (&self.username, &self.password_env) {
            (Some(_), None) => problems.push(Problem::new(
                at("password_env"),
                "a username needs password_env (the environment variable holding the password)",
            )),
            (None, Some(_)) => problems.push(Problem::new(
                at("username"),
                "password_env is set but username is not",
            )),
            (Some(_), Some(env)) => {
                if std::env::var(env).map(|v| v.is_empty()).unwrap_or(true) {
                    problems.push(Problem::new(
                        at("password_env"),
                        format!("environment variable {env:?} (the password) is not set or empty"),
                    ));
                }
                if self.security_mode != SecurityModeName::SignAndEncrypt {
                    problems.push(Problem::new(
                        at("security_mode"),
                        "a password is only sent over a SignAndEncrypt channel",
                    ));
                }
            }
            (None, None) => {}
        }
        match (&self.certificate, &self.private_key) {
            (Some(_), None) => problems.push(Problem::new(
                at("private_key"),
                "certificate needs its private_key",
            )),
            (None, Some(_)) => problems.push(Problem::new(
                at("certificate"),
                "private_key needs its certificate",
            )),
            _ => {}
        }
        if self.username.is_some() && self.certificate.is_some() {
            problems.push(Problem::new(
                at("certificate"),
                "choose one identity: username or certificate",
            ));
        }
        for (key, value) in [
            ("publishing_interval_ms", self.publishing_interval_ms),
            ("poll_interval_ms", self.poll_interval_ms),
            ("request_timeout_ms", self.request_timeout_ms),
        ] {
            if value == 0 {
                problems.push(Problem::new(at(key), "must be greater than 0"));
            }
        }
        problems.extend(self.backoff.validate(&at("backoff")));
        if self.tags.is_empty() {
            problems.push(Problem::new(at("tags"), "at least one tag is needed"));
        }
        let mut names = HashSet::new();
        let mut nodes = HashSet::new();
        for (i, tag) in self.tags.iter().enumerate() {
            let tag_path = at(&format!("tags[{i}]"));
            if let Some(message) = name_problem(&tag.name) {
                problems.push(Problem::new(format!("{tag_path}.name"), message));
            } else if !names.insert(tag.name.as_str()) {
                problems.push(Problem::new(
                    format!("{tag_path}.name"),
                    format!("duplicate tag name `{}`", tag.name),
                ));
            }
            match NodeAddress::parse(&tag.node) {
                Err(message) => problems.push(Problem::new(format!("{tag_path}.node"), message)),
                Ok(node) => {
                    if !nodes.insert(node) {
                        problems.push(Problem::new(
                            format!("{tag_path}.node"),
                            format!("node {:?} is read by another tag already", tag.node),
                        ));
                    }
                }
            }
            if let Some(ms) = tag.sampling_interval_ms {
                if !ms.is_finite() || ms < 0.0 {
                    problems.push(Problem::new(
                        format!("{tag_path}.sampling_interval_ms"),
                        format!("{ms} is not a finite number ≥ 0"),
                    ));
                }
            }
            if tag.queue_size == 0 {
                problems.push(Problem::new(
                    format!("{tag_path}.queue_size"),
                    "must be greater than 0",
                ));
            }
            if let Some(deadband) = tag.deadband {
                if let Err(message) = deadband.kind() {
                    problems.push(Problem::new(format!("{tag_path}.deadband"), message));
                }
            }
        }
        problems
    }
}

/// What a deadband table asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadband {
    Absolute(f64),
    Percent(f64),
}

impl DeadbandConfig {
    pub fn kind(&self) -> Result<Deadband, String> {
        match (self.absolute, self.percent) {
            (Some(a), None) if a.is_finite() && a >= 0.0 => Ok(Deadband::Absolute(a)),
            (None, Some(p)) if p.is_finite() && (0.0..=100.0).contains(&p) => {
                Ok(Deadband::Percent(p))
            }
            (Some(a), None) => Err(format!("absolute {a} is not a finite number ≥ 0")),
            (None, Some(p)) => Err(format!("percent {p} is not within 0..=100")),
            _ => Err("give exactly one of `absolute` or `percent`".to_string()),
        }
    }
}

fn endpoint_problem(endpoint: &str) -> Option<String> {
    let Some(rest) = endpoint.strip_prefix("opc.tcp://") else {
        return Some(format!("`{endpoint}` does not start with opc.tcp://"));
    };
    let host_port = rest.split('/').next().unwrap_or("");
    let Some((host, port)) = host_port.rsplit_once(':') else {
        return Some(format!("`{endpoint}` names no port (opc.tcp://host:port/)"));
    };
    if host.is_empty() {
        return Some(format!("`{endpoint}` names no host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Some(format!("`{endpoint}`: `{port}` is not a port (1-65535)")),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> OpcUaMachineConfig {
        toml::from_str(text).unwrap()
    }

    fn valid() -> OpcUaMachineConfig {
        parse(
            r#"
            name = "spindle-3"
            endpoint = "opc.tcp://10.0.0.5:4840/"
            [[tags]]
            name = "speed_rpm"
            node = "nsu=urn:acme:spindle;s=Spindle.Speed"
            "#,
        )
    }

    fn paths(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn defaults_are_secure_and_documented() {
        let c = valid();
        assert_eq!(c.security_policy, SecurityPolicyName::Basic256Sha256);
        assert_eq!(c.security_mode, SecurityModeName::SignAndEncrypt);
        assert!(!c.trust_server_certs);
        assert_eq!(c.mode, ReadMode::Subscription);
        assert_eq!(c.publishing_interval_ms, 1000);
        assert_eq!(c.tags[0].queue_size, 10);
        assert!(c.validate("machines[0]").is_empty());
    }

    #[test]
    fn every_key_of_the_issue_parses() {
        std::env::set_var("IB_TEST_SPINDLE_PW", "secret");
        let c = parse(
            r#"
            name = "spindle-3"
            endpoint = "opc.tcp://10.0.0.5:4840/"
            security_policy = "Aes256Sha256RsaPss"
            security_mode = "SignAndEncrypt"
            username = "gateway"
            password_env = "IB_TEST_SPINDLE_PW"
            trust_server_certs = true
            publishing_interval_ms = 100
            mode = "poll"
            backoff = { initial_ms = 500, max_ms = 30000 }
            [[tags]]
            name = "speed_rpm"
            node = "nsu=urn:acme:spindle;s=Spindle.Speed"
            sampling_interval_ms = 50
            deadband = { absolute = 0.5 }
            unit = "rpm"
            [[tags]]
            name = "load"
            node = "nsu=urn:acme:spindle;i=17"
            deadband = { percent = 1.0 }
            "#,
        );
        assert_eq!(c.mode, ReadMode::Poll);
        assert_eq!(
            c.tags[0].deadband.unwrap().kind(),
            Ok(Deadband::Absolute(0.5))
        );
        assert_eq!(
            c.tags[1].deadband.unwrap().kind(),
            Ok(Deadband::Percent(1.0))
        );
        assert!(c.validate("m").is_empty(), "{:?}", c.validate("m"));
    }

    #[test]
    fn unknown_keys_and_values_are_refused() {
        for text in [
            "name = \"m\"\nendpoint = \"opc.tcp://h:1/\"\ntags = []\nsecurity = \"x\"",
            "name = \"m\"\nendpoint = \"opc.tcp://h:1/\"\ntags = []\nsecurity_policy = \"Basic256\"",
            "name = \"m\"\nendpoint = \"opc.tcp://h:1/\"\ntags = []\nmode = \"push\"",
        ] {
            assert!(toml::from_str::<OpcUaMachineConfig>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn problems_name_their_keys() {
        let mut c = valid();
        c.endpoint = "http://h:1/".into();
        c.security_policy = SecurityPolicyName::None;
        c.username = Some("u".into());
        c.password_env = Some("IB_TEST_UNSET_VARIABLE_FOR_SURE".into());
        c.certificate = Some("c.der".into());
        c.publishing_interval_ms = 0;
        c.tags.push(OpcUaTagConfig {
            name: "speed_rpm".into(),
            node: "ns=2;s=Spindle.Speed".into(),
            sampling_interval_ms: Some(-1.0),
            queue_size: 0,
            deadband: Some(DeadbandConfig {
                absolute: Some(1.0),
                percent: Some(1.0),
            }),
            unit: None,
        });
        let problems = c.validate("machines[2]");
        let p = paths(&problems);
        for expected in [
            "machines[2].endpoint",
            "machines[2].security_mode",
            "machines[2].password_env",
            "machines[2].private_key",
            "machines[2].certificate",
            "machines[2].publishing_interval_ms",
            "machines[2].tags[1].name",
            "machines[2].tags[1].node",
            "machines[2].tags[1].sampling_interval_ms",
            "machines[2].tags[1].queue_size",
            "machines[2].tags[1].deadband",
        ] {
            assert!(p.contains(&expected), "{expected} missing in {problems:#?}");
        }
        let node = problems
            .iter()
            .find(|p| p.path == "machines[2].tags[1].node")
            .unwrap();
        assert!(node.message.contains("nsu="), "{}", node.message);
    }

    #[test]
    fn endpoints_need_scheme_host_and_port() {
        for (endpoint, ok) in [
            ("opc.tcp://10.0.0.5:4840/", true),
            ("opc.tcp://plc.local:4840", true),
            ("opc.tcp://plc.local:4840/UA/Server", true),
            ("opc.tcp://plc.local/", false),
            ("opc.tcp://:4840/", false),
            ("tcp://plc:4840/", false),
            ("opc.tcp://plc:0/", false),
        ] {
            assert_eq!(endpoint_problem(endpoint).is_none(), ok, "{endpoint}");
        }
    }
}
