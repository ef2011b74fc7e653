//! `--cipher-suites`: Go's names for TLS 1.2 cipher suites, mapped onto rustls' provider.
//!
//! etcd takes any name Go knows (`tlsutil.GetCipherSuite`) and refuses others. rustls implements only
//! the ECDHE suites with AEAD ciphers, which are also the ones Go enables by default; a name Go knows
//! and rustls does not (CBC, RC4, 3DES, RSA key exchange) is left out with a warning. TLS 1.3's suites
//! are not configurable, in Go as here: they stay.

use rustls::crypto::CryptoProvider;
use rustls::SupportedCipherSuite;

use crate::config::ConfigError;

/// Every name Go 1.19's `tls.CipherSuites()` and `tls.InsecureCipherSuites()` list, and the two
/// older ChaCha20 names etcd also takes.
const GO_NAMES: &[&str] = &[
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
];

/// rustls' name for a suite, as Go writes it (rustls' enum variants are the IANA names).
fn name(suite: &SupportedCipherSuite) -> String {
    format!("{:?}", suite.suite())
}

/// `provider` with its TLS 1.2 suites narrowed to `names` (all of them if `names` is empty).
pub fn restrict(mut provider: CryptoProvider, names: &[String]) -> Result<CryptoProvider, ConfigError> {
    if names.is_empty() {
        return Ok(provider);
    }
    let mut wanted = Vec::new();
    for given in names {
        if !GO_NAMES.contains(&given.as_str()) {
            return Err(ConfigError::Tls(format!("unexpected TLS cipher suite {given:?}")));
        }
        // Go's two short ChaCha20 names are the _SHA256 suites.
        let full = match given.as_str() {
            n @ ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305") => {
                format!("{n}_SHA256")
            }
            n => n.to_string(),
        };
        match provider.cipher_suites.iter().any(|s| name(s) == full) {
            true => wanted.push(full),
            false if full.starts_with("TLS_AES") || full.starts_with("TLS_CHACHA20") => {}
            false => tracing::warn!("--cipher-suites: {given} is not implemented here; left out"),
        }
    }
    provider.cipher_suites.retain(|s| s.tls13().is_some() || wanted.contains(&name(s)));
    Ok(provider)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &CryptoProvider) -> Vec<String> {
        p.cipher_suites.iter().map(name).collect()
    }

    #[test]
    fn narrows_tls12_to_the_named_suites_and_keeps_tls13() {
        let all = rustls::crypto::ring::default_provider();
        assert!(names(&all).contains(&"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_string()));
        let given = ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"];
        let p = restrict(all.clone(), &given.map(String::from)).unwrap();
        let mut tls12: Vec<String> =
            p.cipher_suites.iter().filter(|s| s.tls13().is_none()).map(name).collect();
        tls12.sort();
        assert_eq!(
            tls12,
            ["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]
        );
        assert!(p.cipher_suites.iter().any(|s| s.tls13().is_some()), "TLS 1.3 stays");

        // A name Go knows but rustls lacks is left out; one Go does not know is refused, as etcd does.
        let cbc = restrict(all.clone(), &["TLS_RSA_WITH_AES_128_CBC_SHA".to_string()]).unwrap();
        assert!(cbc.cipher_suites.iter().all(|s| s.tls13().is_some()));
        let err = restrict(all.clone(), &["TLS_MADE_UP".to_string()]).unwrap_err().to_string();
        assert!(err.contains(r#"unexpected TLS cipher suite "TLS_MADE_UP""#), "{err}");
        assert_eq!(names(&restrict(all.clone(), &[]).unwrap()), names(&all));
    }
}
