//! Who may connect and what they may do: users with SCRAM-SHA-256 passwords (from a file or the environment), an
//! optional read-only flag per user, trust (no passwords) only when asked for, and TLS with a given certificate.
//!
//! Users are written `name:password` or `name:password:readonly`, one per line in a file (`#` comments) or
//! comma-separated in `KFSQL_USERS`. Passwords are salted and hashed when loaded; only the SCRAM verifier is kept.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use pgwire::api::auth::sasl::scram::gen_salted_password;
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::tokio_rustls::rustls;

use crate::error::{KfsqlError, Result};

/// SCRAM iterations (PostgreSQL's default).
pub const ITERATIONS: usize = 4096;

#[derive(Debug)]
struct User {
    salt: Vec<u8>,
    salted_password: Vec<u8>,
    read_only: bool,
}

/// The configured users.
#[derive(Debug, Default)]
pub struct Users {
    users: HashMap<String, User>,
}

impl Users {
    /// Parse `name:password[:readonly]` entries separated by newlines or commas.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut users = HashMap::new();
        for (n, entry) in spec.split(['\n', ',']).map(str::trim).enumerate() {
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let bad = || {
                KfsqlError::InvalidParameter(format!(
                    "user entry {} is not name:password or name:password:readonly",
                    n + 1
                ))
            };
            let (name, rest) = entry.split_once(':').ok_or_else(bad)?;
            let (password, read_only) = match rest.rsplit_once(':') {
                Some((p, flag)) if flag.eq_ignore_ascii_case("readonly") => (p, true),
                _ => (rest, false),
            };
            if name.is_empty() || password.is_empty() {
                return Err(bad());
            }
            let salt = rand::random::<[u8; 16]>().to_vec();
            let salted_password = gen_salted_password(password, &salt, ITERATIONS);
            users.insert(name.to_string(), User { salt, salted_password, read_only });
        }
        if users.is_empty() {
            return Err(KfsqlError::InvalidParameter("no users configured".into()));
        }
        Ok(Self { users })
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KfsqlError::InvalidParameter(format!("reading users file {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    pub fn is_read_only(&self, name: &str) -> bool {
        self.users.get(name).is_some_and(|u| u.read_only)
    }

    /// Check a clear-text password (Arrow Flight's basic authentication) against the user's SCRAM verifier:
    /// `Some(read_only)` when it is the user's password, None for a wrong password or an unknown user alike.
    pub fn verify(&self, name: &str, password: &str) -> Option<bool> {
        let user = self.users.get(name)?;
        let salted = gen_salted_password(password, &user.salt, ITERATIONS);
        // compared in constant time: how much of a guess was right must not show in the answer's timing
        let same = salted.len() == user.salted_password.len()
            && salted.iter().zip(&user.salted_password).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        same.then_some(user.read_only)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The SCRAM verifier source pgwire asks during authentication.
#[derive(Debug)]
pub struct UserAuthSource(pub Arc<Users>);

#[async_trait]
impl AuthSource for UserAuthSource {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let name = login.user().unwrap_or("");
        match self.0.users.get(name) {
            Some(u) => Ok(Password::new(Some(u.salt.clone()), u.salted_password.clone())),
            // the same answer as a wrong password: which users exist is not for strangers to learn
            None => Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28P01".into(),
                format!("password authentication failed for user \"{name}\""),
            )))),
        }
    }
}

/// How the server authenticates and encrypts connections, and how many it holds at once.
#[derive(Clone, Default)]
pub struct Security {
    /// None: trust every connection (only when explicitly enabled, or the embedded default on loopback).
    pub users: Option<Arc<Users>>,
    pub tls: Option<TlsAcceptor>,
    /// Connections served at once (None: [`DEFAULT_MAX_CONNECTIONS`]); one more is answered with FATAL 53300.
    pub max_connections: Option<usize>,
}

/// Connections served at once unless configured.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("users", &self.users.as_ref().map(|u| u.len()))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Security {
    pub fn is_read_only(&self, user: Option<&str>) -> bool {
        match (&self.users, user) {
            (Some(users), Some(u)) => users.is_read_only(u),
            _ => false,
        }
    }
}

/// A TLS acceptor from PEM files: the certificate chain and its private key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, p: &Path, e: String| KfsqlError::InvalidParameter(format!("{what} {}: {e}", p.display()));
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("TLS certificate", cert, e.to_string()))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad("TLS certificate", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("TLS certificate", cert, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("TLS key", key, e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| KfsqlError::Internal(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| KfsqlError::InvalidParameter(format!("TLS certificate and key do not fit: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_parse_with_read_only_flags_and_reject_bad_entries() {
        let u = Users::parse("# analysts\nalice:s3cret\nbob:pa:ss:readonly, carol:x:READONLY").expect("parse");
        assert_eq!(u.len(), 3);
        assert!(!u.is_read_only("alice") && u.is_read_only("bob") && u.is_read_only("carol"));
        assert!(!u.is_read_only("nobody"));
        assert!(Users::parse("alice").is_err());
        assert!(Users::parse("alice:").is_err());
        assert!(Users::parse("  \n# only comments").is_err());
    }
}
