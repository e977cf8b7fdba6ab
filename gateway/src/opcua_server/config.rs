//! Configuration of the OPC UA server (the `[opcua]` table).

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;

use ironbridge_connectors::Problem;
use serde::Deserialize;

/// Security policies offered on the secure endpoints. Only current ones: the
/// deprecated Basic128Rsa15 and Basic256 (SHA-1) are refused on purpose.
pub const SUPPORTED_SECURITY_POLICIES: [&str; 3] = [
    "Basic256Sha256",
    "Aes128Sha256RsaOaep",
    "Aes256Sha256RsaPss",
];

const DEPRECATED_SECURITY_POLICIES: [&str; 2] = ["Basic128Rsa15", "Basic256"];

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpcUaServerConfig {
    /// Address to listen on. "0.0.0.0" (all interfaces) for plant use.
    pub host: String,
    pub port: u16,
    /// Holds `own/cert.der` + `private/private.pem` (created on first start),
    /// `trusted/` (client certificates an admin accepted) and `rejected/`
    /// (unknown client certificates, waiting for an admin).
    pub pki_dir: PathBuf,
    pub application_name: String,
    /// One SignAndEncrypt endpoint per policy, see [`SUPPORTED_SECURITY_POLICIES`].
    pub security_policies: Vec<String>,
    /// Accept (and store in `trusted/`) any client certificate. Off by default:
    /// unknown certificates are refused and land in `rejected/`.
    pub trust_client_certs: bool,
    /// Offer the anonymous user identity on the secure endpoints.
    pub allow_anonymous: bool,
    /// Username/password users of the secure endpoints.
    pub users: Vec<OpcUaUserConfig>,
    /// Add a SecurityPolicy None, anonymous endpoint. Only for a loopback
    /// `host` (local tools, tests); every node is read-only anyway.
    pub insecure_loopback_endpoint: bool,
    /// Most files kept in `pki_dir/rejected/` (oldest deleted first): any
    /// client on the network can leave a certificate there.
    pub rejected_certs_max: usize,
    /// Most bytes kept in `pki_dir/rejected/`.
    pub rejected_certs_max_bytes: u64,
    /// What one client (or many) may take of the server (`[opcua.limits]`).
    pub limits: OpcUaLimits,
}

/// `[opcua.limits]`: bounds on what clients may open, so no client (or
/// scanner) can take the gateway's memory. Defaults are async-opcua's, sized
/// for a handful of HMIs and SCADA connections.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpcUaLimits {
    /// Sessions open at once; more are refused with BadTooManySessions.
    pub max_sessions: usize,
    /// Subscriptions per session (BadTooManySubscriptions beyond).
    pub max_subscriptions_per_session: usize,
    /// Monitored items per subscription (BadTooManyMonitoredItems beyond).
    pub max_monitored_items_per_subscription: usize,
    /// Largest message in bytes, all chunks together.
    pub max_message_size: usize,
    /// Most chunks of one message.
    pub max_chunk_count: usize,
    /// Failed logins from one client address before it is locked out
    /// (0: no throttling). Only that address: the throttle cannot lock out
    /// another client.
    pub failed_logins_before_lockout: u32,
    /// The first lockout; each further failure doubles it...
    pub login_lockout_ms: u64,
    /// ...up to this.
    pub max_login_lockout_ms: u64,
    /// The shortest publishing and sampling interval a client is granted,
    /// and the period of the server's subscription tick that sends data
    /// changes (async-opcua's default: 100 ms). Lower it for HMIs that
    /// need values sooner; each tick wakes the server once, subscribed or
    /// not.
    pub min_publishing_interval_ms: u64,
}

impl Default for OpcUaLimits {
    fn default() -> Self {
        Self {
            max_sessions: 20,
            max_subscriptions_per_session: 10,
            max_monitored_items_per_subscription: 1000,
            max_message_size: 5 * 65_535,
            max_chunk_count: 5,
            failed_logins_before_lockout: 5,
            login_lockout_ms: 1_000,
            max_login_lockout_ms: 60_000,
            min_publishing_interval_ms: DEFAULT_MIN_PUBLISHING_INTERVAL_MS,
        }
    }
}

/// OPC UA Part 6: a peer must accept messages of at least 8192 bytes.
const MIN_MESSAGE_SIZE: usize = 8192;

/// async-opcua's own subscription tick.
const DEFAULT_MIN_PUBLISHING_INTERVAL_MS: u64 = 100;

/// Ticks shorter than this cost wake-ups for nothing a client can use: a
/// scan reaches the address space once per poll, and polls are rarely
/// faster than 10 ms on the machines a gateway reads.
const SHORTEST_PUBLISHING_INTERVAL_MS: u64 = 10;

impl OpcUaLimits {
    fn validate(&self, path: &str, problems: &mut Vec<Problem>) {
        let at = |key: &str| format!("{path}.{key}");
        for (key, value) in [
            ("max_sessions", self.max_sessions),
            (
                "max_subscriptions_per_session",
                self.max_subscriptions_per_session,
            ),
            (
                "max_monitored_items_per_subscription",
                self.max_monitored_items_per_subscription,
            ),
            ("max_chunk_count", self.max_chunk_count),
        ] {
            if value == 0 {
                problems.push(Problem::new(at(key), "must be greater than 0"));
            }
        }
        if self.failed_logins_before_lockout > 0 && self.login_lockout_ms == 0 {
            problems.push(Problem::new(
                at("login_lockout_ms"),
                "must be greater than 0",
            ));
        }
        if self.max_login_lockout_ms < self.login_lockout_ms {
            problems.push(Problem::new(
                at("max_login_lockout_ms"),
                format!(
                    "must be at least login_lockout_ms ({})",
                    self.login_lockout_ms
                ),
            ));
        }
        if !(SHORTEST_PUBLISHING_INTERVAL_MS..=60_000).contains(&self.min_publishing_interval_ms) {
            problems.push(Problem::new(
                at("min_publishing_interval_ms"),
                format!("must be between {SHORTEST_PUBLISHING_INTERVAL_MS} and 60000"),
            ));
        }
        if self.max_message_size < MIN_MESSAGE_SIZE {
            problems.push(Problem::new(
                at("max_message_size"),
                format!("must be at least {MIN_MESSAGE_SIZE} (OPC UA's smallest buffer)"),
            ));
        }
    }
}

/// A username/password user. The password never sits in the file: it is read
/// from the environment variable `password_env` at start.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcUaUserConfig {
    pub username: String,
    pub password_env: String,
    /// What the user may do; `observer` unless given (anonymous, where
    /// allowed, is always an observer).
    #[serde(default)]
    pub role: Role,
}

/// What an OPC UA user may do. Every variable is read-only for everyone;
/// the model methods (`Activate`, `Rollback`) are for `admin` only, and only
/// over a signed and encrypted channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and subscribes.
    #[default]
    Observer,
    /// Reads and subscribes (reserved for operator actions to come).
    Operator,
    /// Also changes which model version serves.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Observer => "observer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl Default for OpcUaServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_string(),
            port: 4840,
            pki_dir: PathBuf::from("pki"),
            application_name: "IronBridge".to_string(),
            security_policies: SUPPORTED_SECURITY_POLICIES
                .iter()
                .map(|p| p.to_string())
                .collect(),
            trust_client_certs: false,
            allow_anonymous: false,
            users: Vec::new(),
            insecure_loopback_endpoint: false,
            rejected_certs_max: 100,
            rejected_certs_max_bytes: 1024 * 1024,
            limits: OpcUaLimits::default(),
        }
    }
}

impl OpcUaServerConfig {
    /// Every problem of this table; `path` is its key path (e.g. `opcua`).
    ///
    /// Reads the users' password environment variables (no other I/O), so
    /// `ironbridge validate` run in the service's environment catches a
    /// missing secret before start.
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let at = |key: &str| format!("{path}.{key}");

        if self.host.trim().is_empty() {
            problems.push(Problem::new(at("host"), "must not be empty"));
        }
        if self.port == 0 {
            problems.push(Problem::new(
                at("port"),
                "must not be 0: clients need a fixed port to find the server",
            ));
        }
        if self.pki_dir.as_os_str().is_empty() {
            problems.push(Problem::new(at("pki_dir"), "must not be empty"));
        }
        if self.application_name.trim().is_empty() {
            problems.push(Problem::new(at("application_name"), "must not be empty"));
        }

        self.limits.validate(&at("limits"), &mut problems);

        let mut seen_policies = HashSet::new();
        for (i, policy) in self.security_policies.iter().enumerate() {
            let key = at(&format!("security_policies[{i}]"));
            if !seen_policies.insert(policy.as_str()) {
                problems.push(Problem::new(key, format!("{policy:?} is listed twice")));
            } else if policy == "None" {
                problems.push(Problem::new(
                    key,
                    "\"None\" is not a secure policy; use insecure_loopback_endpoint \
                     for a local unsecured endpoint",
                ));
            } else if DEPRECATED_SECURITY_POLICIES.contains(&policy.as_str()) {
                problems.push(Problem::new(
                    key,
                    format!(
                        "{policy:?} is deprecated (SHA-1) and not offered; use one of {}",
                        SUPPORTED_SECURITY_POLICIES.join(", ")
                    ),
                ));
            } else if !SUPPORTED_SECURITY_POLICIES.contains(&policy.as_str()) {
                problems.push(Problem::new(
                    key,
                    format!(
                        "unknown security policy {policy:?}; expected one of {}",
                        SUPPORTED_SECURITY_POLICIES.join(", ")
                    ),
                ));
            }
        }
        let has_secure_endpoint = !self.security_policies.is_empty();
        if !has_secure_endpoint && !self.insecure_loopback_endpoint {
            problems.push(Problem::new(
                at("security_policies"),
                "is empty, so the server would offer no endpoint",
            ));
        }
        if !has_secure_endpoint && (self.allow_anonymous || !self.users.is_empty()) {
            problems.push(Problem::new(
                at("security_policies"),
                "is empty, but users/allow_anonymous only apply to the secure endpoints",
            ));
        }

        let mut seen_users = HashSet::new();
        for (i, user) in self.users.iter().enumerate() {
            let key = |field: &str| at(&format!("users[{i}].{field}"));
            if user.username.trim().is_empty() {
                problems.push(Problem::new(key("username"), "must not be empty"));
            } else if !seen_users.insert(user.username.as_str()) {
                problems.push(Problem::new(
                    key("username"),
                    format!("user {:?} is listed twice", user.username),
                ));
            }
            if user.password_env.trim().is_empty() {
                problems.push(Problem::new(
                    key("password_env"),
                    "must name the environment variable holding the password",
                ));
            } else if password_from_env(&user.password_env).is_none() {
                problems.push(Problem::new(
                    key("password_env"),
                    format!(
                        "environment variable {:?} is not set or empty",
                        user.password_env
                    ),
                ));
            }
        }

        if self.rejected_certs_max == 0 || self.rejected_certs_max_bytes == 0 {
            problems.push(Problem::new(
                at("rejected_certs_max"),
                "rejected_certs_max and rejected_certs_max_bytes must be at least 1 \
                 (an administrator needs to see the certificate to trust it)",
            ));
        }
        if self.insecure_loopback_endpoint && !is_loopback_host(&self.host) {
            problems.push(Problem::new(
                at("insecure_loopback_endpoint"),
                format!(
                    "is only allowed when host is a loopback address (127.0.0.1, ::1, \
                     localhost), not {:?}",
                    self.host
                ),
            ));
        }

        if self.users.is_empty() && !self.allow_anonymous && !self.insecure_loopback_endpoint {
            problems.push(Problem::new(
                at("users"),
                "no way to log in: add a user, set allow_anonymous, or (loopback only) \
                 insecure_loopback_endpoint",
            ));
        }
        problems
    }
}

/// The password in environment variable `name`, if set and not empty.
pub(crate) fn password_from_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|p| !p.is_empty())
}

/// `true` for addresses that only this machine can reach.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    unbracketed
        .parse::<IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn limits_default_to_async_opcuas_and_refuse_zero_and_tiny_messages() {
        let config = parse("").expect("empty table");
        assert_eq!(config.limits.max_sessions, 20);
        assert_eq!(config.limits.max_message_size, 327_675);
        let config = parse("[limits]\nmax_sessions = 3\nmax_chunk_count = 2\n").expect("limits");
        assert_eq!(config.limits.max_sessions, 3);
        assert_eq!(config.limits.max_chunk_count, 2);
        assert_eq!(config.limits.max_subscriptions_per_session, 10);
        assert_eq!(config.limits.failed_logins_before_lockout, 5);
        assert_eq!(config.limits.login_lockout_ms, 1_000);
        assert_eq!(config.limits.max_login_lockout_ms, 60_000);
        assert_eq!(config.limits.min_publishing_interval_ms, 100);
        let bad = parse(
            "[limits]\nmax_sessions = 0\nmax_monitored_items_per_subscription = 0\n\
             max_message_size = 100\nlogin_lockout_ms = 0\nmin_publishing_interval_ms = 1\n",
        )
        .expect("parses");
        let problems = bad.validate("opcua");
        let limit_problems: Vec<&str> = paths(&problems)
            .into_iter()
            .filter(|p| p.starts_with("opcua.limits"))
            .collect();
        assert_eq!(
            limit_problems,
            [
                "opcua.limits.max_sessions",
                "opcua.limits.max_monitored_items_per_subscription",
                "opcua.limits.login_lockout_ms",
                "opcua.limits.min_publishing_interval_ms",
                "opcua.limits.max_message_size"
            ]
        );
        let inverted = parse("[limits]\nlogin_lockout_ms = 5000\nmax_login_lockout_ms = 1000\n")
            .expect("parses");
        assert!(paths(&inverted.validate("opcua")).contains(&"opcua.limits.max_login_lockout_ms"));
        assert!(parse("[limits]\nmax_session = 3\n").is_err());
    }

    fn parse(toml_text: &str) -> Result<OpcUaServerConfig, toml::de::Error> {
        toml::from_str(toml_text)
    }

    #[test]
    fn opcua_defaults_are_secure_and_need_a_login() {
        let config = parse("").expect("empty table parses");
        assert_eq!(config.host, "127.0.0.1");
        assert_eq!(config.port, 4840);
        assert_eq!(config.pki_dir, PathBuf::from("pki"));
        assert_eq!(config.security_policies, SUPPORTED_SECURITY_POLICIES);
        assert!(!config.trust_client_certs);
        assert!(!config.allow_anonymous);
        assert!(!config.insecure_loopback_endpoint);
        // Secure by default means: nobody can log in until someone is allowed.
        assert_eq!(paths(&config.validate("opcua")), ["opcua.users"]);
    }

    #[test]
    fn opcua_unknown_keys_are_rejected() {
        let err = parse("prot = 4841").expect_err("typo must be refused");
        assert!(err.to_string().contains("prot"), "{err}");
        let err = parse("users = [{ username = \"a\", password = \"x\" }]")
            .expect_err("a password in the file must be refused");
        assert!(err.to_string().contains("password"), "{err}");
    }

    #[test]
    fn opcua_reports_every_problem_with_its_path() {
        std::env::set_var("IRONBRIDGE_TEST_OPCUA_PW_SET", "secret");
        std::env::remove_var("IRONBRIDGE_TEST_OPCUA_PW_UNSET");
        let config = parse(
            r#"
            host = "0.0.0.0"
            port = 0
            security_policies = ["Basic256Sha256", "Basic128Rsa15", "Rot13", "None", "Basic256Sha256"]
            insecure_loopback_endpoint = true
            users = [
                { username = "op", password_env = "IRONBRIDGE_TEST_OPCUA_PW_SET" },
                { username = "eng", password_env = "IRONBRIDGE_TEST_OPCUA_PW_UNSET" },
                { username = "op", password_env = "" },
            ]
            "#,
        )
        .expect("parses");
        let problems = config.validate("opcua");
        assert_eq!(
            paths(&problems),
            [
                "opcua.port",
                "opcua.security_policies[1]",
                "opcua.security_policies[2]",
                "opcua.security_policies[3]",
                "opcua.security_policies[4]",
                "opcua.users[1].password_env",
                "opcua.users[2].username",
                "opcua.users[2].password_env",
                "opcua.insecure_loopback_endpoint",
            ],
            "{problems:#?}"
        );
    }

    #[test]
    fn opcua_insecure_endpoint_is_fine_on_loopback() {
        for host in ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"] {
            let config = OpcUaServerConfig {
                host: host.to_string(),
                insecure_loopback_endpoint: true,
                ..Default::default()
            };
            assert_eq!(config.validate("opcua"), [], "host {host}");
        }
        for host in ["0.0.0.0", "::", "192.168.1.10", "gateway.plant"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn opcua_no_endpoint_at_all_is_a_problem() {
        let config = OpcUaServerConfig {
            security_policies: Vec::new(),
            allow_anonymous: true,
            ..Default::default()
        };
        let problems = config.validate("opcua");
        assert_eq!(
            paths(&problems),
            ["opcua.security_policies", "opcua.security_policies"],
            "{problems:#?}"
        );
    }
}
