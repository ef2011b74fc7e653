//! JSON Web Tokens (etcd's `--auth-token jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...`): signed
//! tokens carrying the user, the auth revision and an expiry, with etcd's claims, so any member (and
//! etcd itself, given the same keys) verifies them without having seen them issued.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// etcd's default JWT lifetime.
const DEFAULT_TTL: Duration = Duration::from_secs(300);

pub struct Jwt {
    algorithm: Algorithm,
    /// `None` with only a public key: this member verifies tokens but cannot issue them.
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("--auth-token: {0}")]
    Options(String),
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    #[error("auth: signing a token: {0}")]
    Sign(String),
}

impl Jwt {
    /// From the options after `jwt,` (`pub-key=FILE,priv-key=FILE,sign-method=ES256,ttl=5m`).
    pub fn from_options(options: &str) -> Result<Jwt, JwtError> {
        let bad = |m: String| JwtError::Options(m);
        let mut opts = HashMap::new();
        for pair in options.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| bad(format!("{pair:?} is not key=value")))?;
            if opts.insert(k, v).is_some() {
                return Err(bad(format!("{k} given twice")));
            }
        }
        let read = |key: &str| {
            opts.get(key)
                .map(|file| std::fs::read(file).map_err(|e| bad(format!("{key} {file}: {e}"))))
                .transpose()
        };
        let method = opts.get("sign-method").ok_or_else(|| bad("jwt needs sign-method".into()))?;
        let algorithm =
            Algorithm::from_str(method).map_err(|_| bad(format!("unknown sign-method {method}")))?;
        let ttl = match opts.get("ttl") {
            Some(t) => crate::config::parse_duration(t).map_err(bad)?,
            None => DEFAULT_TTL,
        };
        let (private, public) = (read("priv-key")?, read("pub-key")?);
        let key_err = |e: jsonwebtoken::errors::Error| bad(format!("{method} key: {e}"));
        let (signing, verifying) = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = private.ok_or_else(|| bad(format!("{method} needs priv-key")))?;
                (Some(EncodingKey::from_secret(&secret)), DecodingKey::from_secret(&secret))
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                let public = public.ok_or_else(|| bad(format!("{method} needs pub-key")))?;
                let signing = private.map(|p| EncodingKey::from_ec_pem(&p)).transpose().map_err(key_err)?;
                (signing, DecodingKey::from_ec_pem(&public).map_err(key_err)?)
            }
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => {
                let public = public.ok_or_else(|| bad(format!("{method} needs pub-key")))?;
                let signing = private.map(|p| EncodingKey::from_rsa_pem(&p)).transpose().map_err(key_err)?;
                (signing, DecodingKey::from_rsa_pem(&public).map_err(key_err)?)
            }
            Algorithm::EdDSA => return Err(bad("sign-method EdDSA is not one of etcd's".into())),
        };
        Ok(Jwt { algorithm, signing, verifying, ttl })
    }

    /// A token for `user` at auth `revision`, expiring after the TTL.
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, JwtError> {
        let key = self.signing.as_ref().ok_or(JwtError::VerifyOnly)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let claims = Claims { username: user.to_string(), revision, exp: (now + self.ttl).as_secs() };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|e| JwtError::Sign(e.to_string()))
    }

    /// The user and auth revision of a valid, unexpired token signed with this member's key.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.verifying, &validation).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: &std::path::Path) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.join("priv.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("pub.pem"), key.public_key_pem()).unwrap();
        format!(
            "pub-key={},priv-key={},sign-method=ES256",
            dir.join("pub.pem").display(),
            dir.join("priv.pem").display()
        )
    }

    #[test]
    fn a_signed_token_names_its_user_and_revision() {
        let dir = tempfile::tempdir().unwrap();
        let jwt = Jwt::from_options(&keys(dir.path())).unwrap();
        let token = jwt.sign("alice", 7).unwrap();
        assert_eq!(jwt.verify(&token), Some(("alice".into(), 7)));
        let mut forged = token.clone();
        forged.pop();
        assert_eq!(jwt.verify(&forged), None, "a changed signature");
        assert_eq!(jwt.verify("not.a.token"), None);

        let other = tempfile::tempdir().unwrap();
        let stranger = Jwt::from_options(&keys(other.path())).unwrap();
        assert_eq!(stranger.verify(&token), None, "another key's token");
    }

    #[test]
    fn options_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let opts = keys(dir.path());
        assert!(Jwt::from_options("pub-key=/nonexistent,sign-method=ES256").is_err());
        assert!(Jwt::from_options(&opts.replace("ES256", "XX1")).is_err());
        assert!(Jwt::from_options(&format!("{opts},ttl=nonsense")).is_err());
        let verify_only =
            opts.split(',').filter(|o| !o.starts_with("priv-key")).collect::<Vec<_>>().join(",");
        let jwt = Jwt::from_options(&verify_only).unwrap();
        assert!(matches!(jwt.sign("alice", 1), Err(JwtError::VerifyOnly)));
    }
}
