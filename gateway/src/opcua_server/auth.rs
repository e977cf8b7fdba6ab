//! Who may log in to the gateway's OPC UA server. async-opcua's
//! `DefaultAuthenticator` does the rest (anonymous, token policies,
//! permissions); the password check is ours: it compares in constant time
//! (the library's `==` stops at the first differing byte, which tells a
//! patient attacker how much of a guess was right).

use std::collections::BTreeMap;

use async_trait::async_trait;
use opcua::crypto::Thumbprint;
use opcua::server::authenticator::{
    AuthManager, CoreServerPermissions, DefaultAuthenticator, Password, UserToken,
};
use opcua::server::{ServerEndpoint, ServerUserToken};
use opcua::types::{Error, StatusCode, UserTokenPolicy};
use sha2::{Digest, Sha256};

/// The library's authenticator with a constant-time password check.
pub struct GatewayAuthenticator {
    inner: DefaultAuthenticator,
    users: BTreeMap<String, ServerUserToken>,
}

impl GatewayAuthenticator {
    /// `users`: the same token id → user map given to the server builder.
    pub fn new(users: BTreeMap<String, ServerUserToken>) -> Self {
        Self {
            inner: DefaultAuthenticator::new(users.clone()),
            users,
        }
    }
}

/// Equal without an early exit: both sides are hashed first, so neither
/// their contents nor their lengths change how long the comparison takes.
pub fn passwords_match(given: &str, expected: &str) -> bool {
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[async_trait]
impl AuthManager for GatewayAuthenticator {
    async fn authenticate_anonymous_token(&self, endpoint: &ServerEndpoint) -> Result<(), Error> {
        self.inner.authenticate_anonymous_token(endpoint).await
    }

    async fn authenticate_username_identity_token(
        &self,
        endpoint: &ServerEndpoint,
        username: &str,
        password: &Password,
    ) -> Result<UserToken, Error> {
        let refused = || {
            Error::new(
                StatusCode::BadIdentityTokenRejected,
                format!("Cannot authenticate user \"{username}\""),
            )
        };
        for id in &endpoint.user_token_ids {
            let Some(user) = self.users.get(id) else {
                continue;
            };
            if !user.is_user_pass() || user.user != username {
                continue;
            }
            let expected = user.pass.as_deref().unwrap_or("");
            if passwords_match(password.get(), expected) {
                return Ok(UserToken(id.clone()));
            }
            tracing::warn!(user = %username, "OPC UA login refused: wrong password");
            return Err(refused());
        }
        tracing::warn!(user = %username, "OPC UA login refused: no such user on this endpoint");
        Err(refused())
    }

    async fn authenticate_x509_identity_token(
        &self,
        endpoint: &ServerEndpoint,
        signing_thumbprint: &Thumbprint,
    ) -> Result<UserToken, Error> {
        self.inner
            .authenticate_x509_identity_token(endpoint, signing_thumbprint)
            .await
    }

    fn user_token_policies(&self, endpoint: &ServerEndpoint) -> Vec<UserTokenPolicy> {
        self.inner.user_token_policies(endpoint)
    }

    fn core_permissions(&self, token: &UserToken) -> CoreServerPermissions {
        self.inner.core_permissions(token)
    }
}

#[cfg(test)]
mod tests {
    use super::passwords_match;

    #[test]
    fn only_the_same_password_matches() {
        assert!(passwords_match("correct horse", "correct horse"));
        assert!(!passwords_match("correct hors", "correct horse"));
        assert!(!passwords_match("correct horsf", "correct horse"));
        assert!(!passwords_match("", "x"));
        assert!(passwords_match("", ""));
    }
}
