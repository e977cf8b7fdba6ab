//! Opening an OPC UA session the way IronBridge wants it: the configured
//! endpoint, policy, mode and identity; the server certificate checked
//! against the trust list; async-opcua's own reconnects off (the caller
//! reconnects, see `source`); the event loop owned so it never outlives the
//! session.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opcua::client::transport::TcpConnector;
use opcua::client::{Client, ClientBuilder, IdentityToken, Session, SessionEventLoop};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    EndpointDescription, MessageSecurityMode, StatusCode, UserTokenPolicy, UserTokenType,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::ConnectorError;
use crate::opcua::config::{OpcUaMachineConfig, SecurityModeName, SecurityPolicyName};

/// The session's keep-alive: a Read of the server's state this often; after
/// this many failures in a row the session counts as lost.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);
const MAX_FAILED_KEEP_ALIVES: u64 = 3;
/// Largest array a response may carry (notifications, Read results).
const MAX_ARRAY_LENGTH: usize = 100_000;
/// How long a closing session may take to say goodbye.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// Who we are and where we connect.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub endpoint: String,
    pub security_policy: SecurityPolicyName,
    pub security_mode: SecurityModeName,
    pub identity: Identity,
    pub trust_server_certs: bool,
    /// The client's PKI folder (`own/`, `private/`, `trusted/`, `rejected/`).
    pub pki_dir: PathBuf,
    pub request_timeout: Duration,
    /// Shown in the server's session diagnostics.
    pub session_name: String,
}

/// The user identity of a session.
#[derive(Clone)]
pub enum Identity {
    Anonymous,
    UserName {
        user: String,
        password: String,
    },
    X509 {
        certificate: PathBuf,
        private_key: PathBuf,
    },
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Anonymous => f.write_str("Anonymous"),
            // Never the password.
            Identity::UserName { user, .. } => write!(f, "UserName({user})"),
            Identity::X509 { certificate, .. } => write!(f, "X509({})", certificate.display()),
        }
    }
}

impl SessionOptions {
    /// The options of a configured machine; reads its password from the
    /// environment.
    pub fn for_machine(c: &OpcUaMachineConfig) -> Result<Self, ConnectorError> {
        let identity = match (&c.username, &c.password_env, &c.certificate, &c.private_key) {
            (Some(user), Some(env), _, _) => Identity::UserName {
                user: user.clone(),
                password: std::env::var(env)
                    .ok()
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| {
                        ConnectorError::Config(format!(
                            "{}: environment variable {env:?} (the password) is not set",
                            c.name
                        ))
                    })?,
            },
            (_, _, Some(certificate), Some(private_key)) => Identity::X509 {
                certificate: certificate.clone(),
                private_key: private_key.clone(),
            },
            _ => Identity::Anonymous,
        };
        Ok(Self {
            endpoint: c.endpoint.clone(),
            security_policy: c.security_policy,
            security_mode: c.security_mode,
            identity,
            trust_server_certs: c.trust_server_certs,
            pki_dir: c.pki_dir.clone().unwrap_or_else(|| "pki/client".into()),
            request_timeout: Duration::from_millis(c.request_timeout_ms),
            session_name: format!("ironbridge {}", c.name),
        })
    }
}

/// A connected session and the task that drives its event loop. Dropping it
/// stops that task, so no session outlives its use.
pub struct LiveSession {
    pub session: Arc<Session>,
    event_loop: JoinHandle<()>,
    /// Set to the final status when the event loop ends (connection lost).
    ended: watch::Receiver<Option<StatusCode>>,
}

impl LiveSession {
    fn start(session: Arc<Session>, event_loop: SessionEventLoop<TcpConnector>) -> Self {
        let (tx, ended) = watch::channel(None);
        let event_loop = tokio::spawn(async move {
            let status = event_loop.run().await;
            let _ = tx.send(Some(status));
        });
        Self {
            session,
            event_loop,
            ended,
        }
    }

    /// Resolves when the session's event loop has ended, with its status.
    pub async fn lost(&self) -> StatusCode {
        let mut ended = self.ended.clone();
        let status = match ended.wait_for(Option::is_some).await {
            Ok(status) => *status,
            // The task is gone without a word (aborted): closed all the same.
            Err(_) => None,
        };
        status.unwrap_or(StatusCode::BadConnectionClosed)
    }

    /// Closes the session politely (bounded), then stops its event loop.
    pub async fn close(self) {
        if !self.event_loop.is_finished() {
            let _ = tokio::time::timeout(DISCONNECT_GRACE, self.session.disconnect()).await;
        }
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

/// Opens and activates a session, all within twice the request timeout.
/// The error is the reason, for the caller's log and error type.
pub async fn open_session(options: &SessionOptions) -> Result<LiveSession, String> {
    let timeout = options.request_timeout * 2;
    match tokio::time::timeout(timeout, open(options)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no session within {timeout:?}")),
    }
}

async fn open(options: &SessionOptions) -> Result<LiveSession, String> {
    // Making the client may generate its key pair (first use): CPU work that
    // must not stall the runtime's other tasks.
    let builder = client_builder(options);
    let mut client = tokio::task::spawn_blocking(move || builder.client())
        .await
        .map_err(|e| format!("OPC UA client setup failed: {e}"))?
        .map_err(|errors| format!("OPC UA client: {}", errors.join("; ")))?;
    let (identity, token_type) = identity_token(&options.identity)?;
    let mode = match options.security_mode {
        SecurityModeName::None => MessageSecurityMode::None,
        SecurityModeName::Sign => MessageSecurityMode::Sign,
        SecurityModeName::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    };
    let token_policy = UserTokenPolicy {
        token_type,
        ..UserTokenPolicy::anonymous()
    };
    let endpoint: EndpointDescription = (
        options.endpoint.as_str(),
        security_policy_uri(options.security_policy),
        mode,
        token_policy,
    )
        .into();
    let (session, event_loop) = connect(&mut client, endpoint, identity)
        .await
        .map_err(|e| format!("cannot open a session: {e}"))?;
    // Outages end the session; the caller reconnects.
    session.disable_reconnects();
    let live = LiveSession::start(session, event_loop);
    tokio::select! {
        connected = live.session.wait_for_connection() => {
            if connected {
                Ok(live)
            } else {
                Err("the session could not be activated".to_string())
            }
        }
        ended = live.lost() => Err(format!("the session ended while connecting: {ended}")),
    }
}

async fn connect(
    client: &mut Client,
    endpoint: EndpointDescription,
    identity: IdentityToken,
) -> Result<(Arc<Session>, SessionEventLoop<TcpConnector>), opcua::types::Error> {
    let configured = endpoint.endpoint_url.as_ref().to_string();
    let mut endpoints = client.get_server_endpoints_from_url(&configured).await?;
    for advertised in &mut endpoints {
        advertised.endpoint_url = reached_at(advertised.endpoint_url.as_ref(), &configured).into();
    }
    client
        .session_builder()
        .with_endpoints(endpoints)
        .connect_to_matching_endpoint(endpoint)?
        .user_identity_token(identity)
        .build(client.certificate_store().clone())
}

/// The server's advertised endpoint URL with the host and port the gateway
/// was configured to reach it at. A server behind a port forward, a NAT or a
/// container port mapping advertises an address the gateway cannot reach
/// (async-opcua replaces only the host); the configured address is the one
/// that works, and the path and the rest stay the server's.
fn reached_at(advertised: &str, configured: &str) -> String {
    const DEFAULT_PORT: u16 = 4840;
    let (Ok(mut url), Ok(reach)) = (url::Url::parse(advertised), url::Url::parse(configured))
    else {
        return advertised.to_string();
    };
    let Some(host) = reach.host_str() else {
        return advertised.to_string();
    };
    if url.set_host(Some(host)).is_err()
        || url
            .set_port(Some(reach.port().unwrap_or(DEFAULT_PORT)))
            .is_err()
    {
        return advertised.to_string();
    }
    url.into()
}

fn client_builder(options: &SessionOptions) -> ClientBuilder {
    let hostname = opcua::crypto::hostname().unwrap_or_else(|_| "localhost".to_string());
    ClientBuilder::new()
        .application_name("IronBridge gateway")
        .application_uri(format!("urn:ironbridge:gateway:client:{hostname}"))
        .product_uri("urn:ironbridge")
        .pki_dir(options.pki_dir.clone())
        // The gateway's client certificate, made on first use.
        .create_sample_keypair(true)
        .trust_server_certs(options.trust_server_certs)
        .verify_server_certs(true)
        .session_retry_limit(0)
        .request_timeout(options.request_timeout)
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .max_failed_keep_alive_count(MAX_FAILED_KEEP_ALIVES)
        .session_name(options.session_name.clone())
        // async-opcua decodes arrays of at most 1,000 elements by default; a
        // server that ignores the requested notifications per publish (or a
        // large Read) would otherwise break the connection.
        .max_array_length(MAX_ARRAY_LENGTH)
}

fn identity_token(identity: &Identity) -> Result<(IdentityToken, UserTokenType), String> {
    Ok(match identity {
        Identity::Anonymous => (IdentityToken::Anonymous, UserTokenType::Anonymous),
        Identity::UserName { user, password } => (
            IdentityToken::new_user_name(user.clone(), password.clone()),
            UserTokenType::UserName,
        ),
        Identity::X509 {
            certificate,
            private_key,
        } => (
            IdentityToken::new_x509_path(certificate, private_key).map_err(|e| {
                format!(
                    "X.509 identity {} / {}: {e}",
                    certificate.display(),
                    private_key.display()
                )
            })?,
            UserTokenType::Certificate,
        ),
    })
}

fn security_policy_uri(policy: SecurityPolicyName) -> &'static str {
    match policy {
        SecurityPolicyName::None => SecurityPolicy::None.to_uri(),
        SecurityPolicyName::Basic256Sha256 => SecurityPolicy::Basic256Sha256.to_uri(),
        SecurityPolicyName::Aes128Sha256RsaOaep => SecurityPolicy::Aes128Sha256RsaOaep.to_uri(),
        SecurityPolicyName::Aes256Sha256RsaPss => SecurityPolicy::Aes256Sha256RsaPss.to_uri(),
    }
}

#[cfg(test)]
mod tests {
    use super::reached_at;

    #[test]
    fn the_configured_host_and_port_replace_the_advertised_ones() {
        assert_eq!(
            reached_at(
                "opc.tcp://spindle-plc:4840/ua/server",
                "opc.tcp://10.0.0.5:14840/"
            ),
            "opc.tcp://10.0.0.5:14840/ua/server"
        );
        // No port configured: OPC UA's default, not the advertised one.
        assert_eq!(
            reached_at("opc.tcp://plc:4855/", "opc.tcp://gateway-side-name/"),
            "opc.tcp://gateway-side-name:4840/"
        );
        assert_eq!(
            reached_at("opc.tcp://plc:4840/", "opc.tcp://[::1]:4841"),
            "opc.tcp://[::1]:4841/"
        );
        // Something unparsable is left for the matching to refuse.
        assert_eq!(reached_at("not a url", "opc.tcp://a:1/"), "not a url");
    }
}
