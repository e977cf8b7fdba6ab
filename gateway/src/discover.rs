//! `ironbridge discover`: the command-line side of the OPC UA browse in
//! `ironbridge_connectors::opcua::discover`.

use std::path::PathBuf;
use std::time::Duration;

use crate::GatewayError;
use ironbridge_connectors::opcua::{
    discover, DiscoveryLimits, Identity, SecurityModeName, SecurityPolicyName, SessionOptions,
};

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct DiscoverRequest {
    pub client: OpcUaClientArgs,
    pub max_nodes: usize,
}

/// How long each request of the browse may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl DiscoverRequest {
    /// The session options, or what is wrong with the arguments.
    pub fn session_options(&self) -> Result<SessionOptions, String> {
        self.client.session_options("ironbridge discover")
    }
}

/// How a command-line OPC UA client connects (`discover`, `model ...`).
#[derive(Debug, Clone)]
pub struct OpcUaClientArgs {
    pub endpoint: String,
    pub security: String,
    pub mode: String,
    pub username: Option<String>,
    pub password_env: String,
    pub trust_server_cert: bool,
    pub pki_dir: PathBuf,
}

impl OpcUaClientArgs {
    /// The session options, or what is wrong with the arguments.
    pub fn session_options(&self, session_name: &str) -> Result<SessionOptions, String> {
        let security_policy = match self.security.as_str() {
            "None" => SecurityPolicyName::None,
            "Basic256Sha256" => SecurityPolicyName::Basic256Sha256,
            "Aes128Sha256RsaOaep" => SecurityPolicyName::Aes128Sha256RsaOaep,
            "Aes256Sha256RsaPss" => SecurityPolicyName::Aes256Sha256RsaPss,
            other => {
                return Err(format!(
                    "--security {other:?}: use Basic256Sha256, Aes128Sha256RsaOaep, \
                     Aes256Sha256RsaPss or None"
                ))
            }
        };
        let security_mode = match self.mode.as_str() {
            "None" => SecurityModeName::None,
            "Sign" => SecurityModeName::Sign,
            "SignAndEncrypt" => SecurityModeName::SignAndEncrypt,
            other => {
                return Err(format!(
                    "--mode {other:?}: use SignAndEncrypt, Sign or None"
                ))
            }
        };
        if (security_policy == SecurityPolicyName::None)
            != (security_mode == SecurityModeName::None)
        {
            return Err("--security None goes with --mode None only".to_string());
        }
        let identity = match &self.username {
            None => Identity::Anonymous,
            Some(user) => {
                if security_mode != SecurityModeName::SignAndEncrypt {
                    return Err("a password is only sent over a SignAndEncrypt channel".to_string());
                }
                let password = std::env::var(&self.password_env)
                    .ok()
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| {
                        format!(
                            "--username needs the password in the environment variable {:?}",
                            self.password_env
                        )
                    })?;
                Identity::UserName {
                    user: user.clone(),
                    password,
                }
            }
        };
        Ok(SessionOptions {
            endpoint: self.endpoint.clone(),
            security_policy,
            security_mode,
            identity,
            trust_server_certs: self.trust_server_cert,
            pki_dir: self.pki_dir.clone(),
            request_timeout: REQUEST_TIMEOUT,
            session_name: session_name.to_string(),
        })
    }
}

/// Browses the server and returns the `[[machines]]` block.
pub fn run(request: DiscoverRequest) -> Result<String, GatewayError> {
    let options = request.session_options().map_err(GatewayError::Discover)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| GatewayError::Discover(format!("cannot start a runtime: {e}")))?;
    let limits = DiscoveryLimits {
        max_nodes: request.max_nodes,
        ..DiscoveryLimits::default()
    };
    let found = runtime.block_on(discover(&options, limits)).map_err(|e| {
        let hint = if e.to_lowercase().contains("certificate") {
            format!(
                " (an unknown server certificate lands in {}/rejected/: move it to \
                     trusted/, or pass --trust-server-cert)",
                options.pki_dir.display()
            )
        } else {
            String::new()
        };
        GatewayError::Discover(format!("{e}{hint}"))
    })?;
    Ok(found.machine_block(&options, &request.client.password_env))
}
