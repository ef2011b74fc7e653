//! TLS for the client and the peer listeners, with etcd's flags (`--cert-file --key-file
//! --trusted-ca-file --client-cert-auth` and their `--peer-*` twins), through rustls. As in etcd, a
//! listener speaks TLS when its URL is `https://`; with client-cert-auth it also requires a certificate
//! signed by the trusted CA. The same files make the member a TLS client: of its peers (the peer files)
//! and of its own client port (the client files, for the lock and election services). Certificates are
//! verified as etcd's Go verifies them (`verify.rs`), so the files that work with etcd work here.
//!
//! `--auto-tls` / `--peer-auto-tls` make a self-signed certificate instead (kept in the data dir, as
//! etcd's `fixtures/`); nobody can verify it, so a member then dials without verifying the server's
//! certificate (etcd's InsecureSkipVerify): encryption without authentication, as in etcd.

mod accept;
mod cert;
mod suites;
mod verify;

pub use accept::{incoming, Conn, ConnInfo};
pub use cert::common_name;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::ConfigError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate revocation lists of a file's contents: PEM, or one list in DER (Go's
/// `x509.ParseCRL`, which etcd uses, takes both).
fn revocation_lists(
    data: &[u8],
    what: &str,
) -> Result<Vec<CertificateRevocationListDer<'static>>, ConfigError> {
    let pem = CertificateRevocationListDer::pem_slice_iter(data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::Tls(format!("{what}: {e}")))?;
    match (pem.is_empty(), data.first()) {
        (false, _) => Ok(pem),
        (true, Some(0x30)) => Ok(vec![CertificateRevocationListDer::from(data.to_vec())]),
        (true, _) => Err(ConfigError::Tls(format!("{what}: no certificate revocation list in it"))),
    }
}

/// The certificates of a PEM file's contents (`what` names the file for messages).
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::Tls(format!("{what}: {e}")))?;
    match certs.is_empty() {
        true => Err(ConfigError::Tls(format!("{what}: no certificate in it"))),
        false => Ok(certs),
    }
}

/// One side's TLS flags, as etcd names them (`--cert-file`, ... or `--peer-cert-file`, ...).
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// "" or "peer-", for messages.
    pub prefix: &'static str,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    /// `--client-crl-file` / `--peer-crl-file`: client certificates revoked.
    pub crl: Option<PathBuf>,
    pub client_cert_auth: bool,
    /// `--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname`: what a peer's certificate must name.
    pub allowed_cn: Option<String>,
    pub allowed_hostname: Option<String>,
}

/// One side's files, read once at start.
#[derive(Clone, Debug)]
pub struct Tls {
    identity: Option<(Vec<u8>, Vec<u8>)>,
    ca: Option<Vec<u8>>,
    /// The revocation lists `--client-crl-file` / `--peer-crl-file` hold, parsed at load.
    crls: Vec<CertificateRevocationListDer<'static>>,
    client_cert_auth: bool,
    allowed: verify::Allowed,
    /// A self-signed certificate of `--auto-tls`: dial without verifying.
    auto: bool,
    /// rustls' algorithms, narrowed by `--cipher-suites`.
    provider: Arc<CryptoProvider>,
}

impl Default for Tls {
    fn default() -> Tls {
        Tls {
            identity: None,
            ca: None,
            crls: Vec::new(),
            client_cert_auth: false,
            allowed: verify::Allowed::default(),
            auto: false,
            provider: provider(),
        }
    }
}

fn read(path: &Option<PathBuf>, flag: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    path.as_ref()
        .map(|p| std::fs::read(p).map_err(|e| ConfigError::Tls(format!("{flag} {}: {e}", p.display()))))
        .transpose()
}

impl Tls {
    /// Reads the files named by one side's flags.
    pub fn load(flags: Flags) -> Result<Tls, ConfigError> {
        let prefix = flags.prefix;
        let identity = match (
            read(&flags.cert, &format!("--{prefix}cert-file"))?,
            read(&flags.key, &format!("--{prefix}key-file"))?,
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Tls(format!(
                    "--{prefix}cert-file and --{prefix}key-file go together"
                )))
            }
        };
        let ca = read(&flags.ca, &format!("--{prefix}trusted-ca-file"))?;
        if flags.client_cert_auth && ca.is_none() {
            return Err(ConfigError::Tls(format!(
                "--{prefix}client-cert-auth needs --{prefix}trusted-ca-file"
            )));
        }
        let crl_flag = if prefix.is_empty() { "--client-crl-file" } else { "--peer-crl-file" };
        let crls = match read(&flags.crl, crl_flag)? {
            Some(data) => revocation_lists(&data, crl_flag)?,
            None => Vec::new(),
        };
        Ok(Tls {
            identity,
            ca,
            crls,
            client_cert_auth: flags.client_cert_auth,
            allowed: verify::Allowed { common_name: flags.allowed_cn, hostname: flags.allowed_hostname },
            auto: false,
            provider: provider(),
        })
    }

    /// The same, speaking only the TLS 1.2 cipher suites `--cipher-suites` names (all if none).
    pub fn with_cipher_suites(self, names: &[String]) -> Result<Tls, ConfigError> {
        let provider = suites::restrict(rustls::crypto::ring::default_provider(), names)?;
        Ok(Tls { provider: Arc::new(provider), ..self })
    }

    /// etcd's `--auto-tls`: the self-signed certificate in `dir` for `hosts`, made (valid for
    /// `years`) if it is not there yet, as etcd's `transport.SelfCert` does.
    pub fn auto(dir: &Path, hosts: &[String], years: u32) -> Result<Tls, ConfigError> {
        let err = |e: String| ConfigError::Tls(format!("auto-tls in {}: {e}", dir.display()));
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        if !(cert_path.exists() && key_path.exists()) {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            let mut params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(|e| err(e.to_string()))?;
            params.distinguished_name.push(rcgen::DnType::OrganizationName, "etcd");
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let year = 1970 + (now.as_secs() / 31_556_952) as i32;
            params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
            params.not_after = rcgen::date_time_ymd(year + years.max(1) as i32, 1, 1);
            let key = rcgen::KeyPair::generate().map_err(|e| err(e.to_string()))?;
            let cert = params.self_signed(&key).map_err(|e| err(e.to_string()))?;
            std::fs::write(&cert_path, cert.pem()).map_err(|e| err(e.to_string()))?;
            std::fs::write(&key_path, key.serialize_pem()).map_err(|e| err(e.to_string()))?;
        }
        let read = |p: &Path| std::fs::read(p).map_err(|e| err(format!("{}: {e}", p.display())));
        Ok(Tls { identity: Some((read(&cert_path)?, read(&key_path)?)), auto: true, ..Tls::default() })
    }

    /// The server side for listeners on `urls`: `None` for plain http, an error for an https URL
    /// without a certificate (etcd refuses that too).
    pub fn server(
        &self,
        urls: &[String],
        prefix: &str,
    ) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
        if !urls.iter().any(|u| u.starts_with("https://")) {
            return Ok(None);
        }
        let Some((cert, key)) = &self.identity else {
            return Err(ConfigError::Tls(format!(
                "TLS key/cert (--{prefix}cert-file, --{prefix}key-file) must be provided for {}",
                urls.join(",")
            )));
        };
        let err = |e: String| ConfigError::Tls(format!("{}: {e}", urls.join(",")));
        let builder = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(e.to_string()))?;
        let builder = match (self.client_cert_auth, &self.ca) {
            (true, Some(ca)) => {
                let roots = certificates(ca, &format!("--{prefix}trusted-ca-file"))?;
                let crls = self.crls.clone();
                let verifier = verify::Client::new(roots, crls, self.allowed.clone(), self.provider.clone());
                builder.with_client_cert_verifier(Arc::new(verifier.map_err(err)?))
            }
            _ => builder.with_no_client_auth(),
        };
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| ConfigError::Tls(format!("--{prefix}key-file: {e}")))?;
        let mut config = builder
            .with_single_cert(certificates(cert, &format!("--{prefix}cert-file"))?, key)
            .map_err(|e| err(e.to_string()))?;
        // gRPC, and HTTP/1.1 for /health, /metrics and the JSON gateway, as etcd serves them.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }

    /// How this side dials `https://` URLs: verifying against the CA, or, with a self-signed
    /// certificate of `--auto-tls`, not verifying at all.
    pub fn dialer(&self) -> Result<Dialer, ConfigError> {
        if self.auto {
            return Ok(Dialer::unverified());
        }
        let Some(ca) = &self.ca else {
            return Ok(Dialer::Verify(self.client()));
        };
        let verifier = verify::Server::new(certificates(ca, "trusted CA file")?, self.provider.clone())
            .map_err(|e| ConfigError::Tls(format!("trusted CA file: {e}")))?;
        let builder = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| ConfigError::Tls(format!("key file: {e}")))?;
                builder
                    .with_client_auth_cert(certificates(cert, "cert file")?, key)
                    .map_err(|e| ConfigError::Tls(e.to_string()))?
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Dialer::Rustls { config: Arc::new(config), server_name: None })
    }

    /// The client side through tonic's TLS, for a side with no CA of its own: trusts the CA and presents
    /// this member's certificate (a server with client-cert-auth asks for it).
    fn client(&self) -> ClientTlsConfig {
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

/// How a member (or a client) dials `https://` URLs.
#[derive(Clone)]
pub enum Dialer {
    /// Verifies the server with tonic's own TLS (the client library's `ClientTlsConfig`).
    Verify(ClientTlsConfig),
    /// TLS done by concord's connector: verified as etcd verifies (`verify.rs`), or not at all
    /// (`--auto-tls`, etcdctl's `--insecure-skip-tls-verify`). `server_name` is the name the
    /// certificate must have, when it is not the dialled host.
    Rustls { config: Arc<rustls::ClientConfig>, server_name: Option<String> },
}

impl From<ClientTlsConfig> for Dialer {
    fn from(c: ClientTlsConfig) -> Dialer {
        Dialer::Verify(c)
    }
}

impl Dialer {
    pub fn unverified() -> Dialer {
        let provider = provider();
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::Any::new(&provider)))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Dialer::Rustls { config: Arc::new(config), server_name: None }
    }

    /// The same, for a server whose certificate names `host` rather than the address dialled.
    pub fn with_server_name(self, host: String) -> Dialer {
        match self {
            Dialer::Verify(c) => Dialer::Verify(c.domain_name(host)),
            Dialer::Rustls { config, .. } => Dialer::Rustls { config, server_name: Some(host) },
        }
    }
}

/// Dials TCP and does the TLS handshake itself, for `Dialer::Rustls` (tonic's TLS verifies with
/// webpki's rules only).
#[derive(Clone)]
struct Connector {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<String>,
}

type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower::Service<http::Uri> for Connector {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let Connector { config, server_name } = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| std::io::Error::other("no host"))?;
            let host = host.trim_matches(['[', ']']).to_string();
            let tcp = tokio::net::TcpStream::connect((host.as_str(), uri.port_u16().unwrap_or(443))).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(server_name.unwrap_or(host)).map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// A URL to dial, with what it takes: tonic's endpoint, and for an `https://` URL that concord's
/// connector dials, that connector (the endpoint itself then says `http://`).
pub struct Dial {
    endpoint: Endpoint,
    connector: Option<Connector>,
}

impl Dial {
    pub fn new(url: &str, dialer: Option<&Dialer>) -> Result<Dial, String> {
        let endpoint = |u: String| Endpoint::from_shared(u).map_err(|e| e.to_string());
        match (url.strip_prefix("https://"), dialer) {
            (None, _) => Ok(Dial { endpoint: endpoint(url.to_string())?, connector: None }),
            (Some(_), None) => Err(format!("{url}: an https URL, and no TLS configured to dial it")),
            (Some(_), Some(Dialer::Verify(tls))) => {
                let endpoint =
                    endpoint(url.to_string())?.tls_config(tls.clone()).map_err(|e| e.to_string())?;
                Ok(Dial { endpoint, connector: None })
            }
            (Some(rest), Some(Dialer::Rustls { config, server_name })) => Ok(Dial {
                endpoint: endpoint(format!("http://{rest}"))?,
                connector: Some(Connector { config: config.clone(), server_name: server_name.clone() }),
            }),
        }
    }

    /// Sets endpoint options (timeouts, ...).
    pub fn with(self, f: impl FnOnce(Endpoint) -> Endpoint) -> Dial {
        Dial { endpoint: f(self.endpoint), ..self }
    }

    /// A channel that connects on first use.
    pub fn lazy(self) -> Channel {
        match self.connector {
            Some(c) => self.endpoint.connect_with_connector_lazy(c),
            None => self.endpoint.connect_lazy(),
        }
    }

    pub async fn connect(self) -> Result<Channel, tonic::transport::Error> {
        match self.connector {
            Some(c) => self.endpoint.connect_with_connector(c).await,
            None => self.endpoint.connect().await,
        }
    }
}
