//! TLS for the client and the peer listeners, with etcd's flags (`--cert-file --key-file
//! --trusted-ca-file --client-cert-auth` and their `--peer-*` twins), through rustls. As in etcd, a
//! listener speaks TLS when its URL is `https://`; with client-cert-auth it also requires a certificate
//! signed by the trusted CA. The same files make the member a TLS client: of its peers (the peer files)
//! and of its own client port (the client files, for the lock and election services).

use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::ConfigError;

/// One side's files, read once at start.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    identity: Option<(Vec<u8>, Vec<u8>)>,
    ca: Option<Vec<u8>>,
    client_cert_auth: bool,
}

fn read(path: &Option<PathBuf>, flag: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    path.as_ref()
        .map(|p| std::fs::read(p).map_err(|e| ConfigError::Tls(format!("{flag} {}: {e}", p.display()))))
        .transpose()
}

impl Tls {
    /// Reads the files named by one side's flags (`prefix` is "" or "peer-", for messages).
    pub fn load(
        prefix: &str,
        cert: &Option<PathBuf>,
        key: &Option<PathBuf>,
        ca: &Option<PathBuf>,
        client_cert_auth: bool,
    ) -> Result<Tls, ConfigError> {
        let identity = match (
            read(cert, &format!("--{prefix}cert-file"))?,
            read(key, &format!("--{prefix}key-file"))?,
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Tls(format!(
                    "--{prefix}cert-file and --{prefix}key-file go together"
                )))
            }
        };
        let ca = read(ca, &format!("--{prefix}trusted-ca-file"))?;
        if client_cert_auth && ca.is_none() {
            return Err(ConfigError::Tls(format!(
                "--{prefix}client-cert-auth needs --{prefix}trusted-ca-file"
            )));
        }
        Ok(Tls { identity, ca, client_cert_auth })
    }

    /// The server side for listeners on `urls`: `None` for plain http, an error for an https URL
    /// without a certificate (etcd refuses that too).
    pub fn server(&self, urls: &[String], prefix: &str) -> Result<Option<ServerTlsConfig>, ConfigError> {
        if !urls.iter().any(|u| u.starts_with("https://")) {
            return Ok(None);
        }
        let Some((cert, key)) = &self.identity else {
            return Err(ConfigError::Tls(format!(
                "TLS key/cert (--{prefix}cert-file, --{prefix}key-file) must be provided for {}",
                urls.join(",")
            )));
        };
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let (true, Some(ca)) = (self.client_cert_auth, &self.ca) {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        Ok(Some(config))
    }

    /// The client side, for dialling `https://` URLs: trusts the CA and presents this member's
    /// certificate (a server with client-cert-auth asks for it).
    pub fn client(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &self.ca {
            config = config.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}
