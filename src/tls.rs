//! TLS for the client and the peer listeners, with etcd's flags (`--cert-file --key-file
//! --trusted-ca-file --client-cert-auth` and their `--peer-*` twins), through rustls. As in etcd, a
//! listener speaks TLS when its URL is `https://`; with client-cert-auth it also requires a certificate
//! signed by the trusted CA. The same files make the member a TLS client: of its peers (the peer files)
//! and of its own client port (the client files, for the lock and election services).
//!
//! `--auto-tls` / `--peer-auto-tls` make a self-signed certificate instead (kept in the data dir, as
//! etcd's `fixtures/`); nobody can verify it, so a member then dials without verifying the server's
//! certificate (etcd's InsecureSkipVerify): encryption without authentication, as in etcd.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::config::ConfigError;

/// One side's files, read once at start.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    identity: Option<(Vec<u8>, Vec<u8>)>,
    ca: Option<Vec<u8>>,
    client_cert_auth: bool,
    /// A self-signed certificate of `--auto-tls`: dial without verifying.
    auto: bool,
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
        Ok(Tls { identity, ca, client_cert_auth, auto: false })
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
        Ok(Tls {
            identity: Some((read(&cert_path)?, read(&key_path)?)),
            ca: None,
            client_cert_auth: false,
            auto: true,
        })
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

    /// How this side dials `https://` URLs: verifying against the CA, or, with a self-signed
    /// certificate of `--auto-tls`, not verifying at all.
    pub fn dialer(&self) -> Dialer {
        match self.auto {
            true => Dialer::unverified(),
            false => Dialer::Verify(self.client()),
        }
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

/// How a member (or a client) dials `https://` URLs.
#[derive(Clone)]
pub enum Dialer {
    /// Verifies the server against the configured CA (tonic's own TLS).
    Verify(ClientTlsConfig),
    /// Encrypts but does not verify (`--auto-tls`, etcdctl's `--insecure-skip-tls-verify`).
    Unverified(Arc<rustls::ClientConfig>),
}

impl From<ClientTlsConfig> for Dialer {
    fn from(c: ClientTlsConfig) -> Dialer {
        Dialer::Verify(c)
    }
}

impl Dialer {
    pub fn unverified() -> Dialer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Dialer::Unverified(Arc::new(config))
    }
}

/// Accepts whatever certificate the server shows; its handshake signatures are still checked (so the
/// server holds the key of the certificate it showed).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Dials TCP and does the TLS handshake itself, for `Dialer::Unverified` (tonic's TLS always verifies).
#[derive(Clone)]
struct UnverifiedConnector(Arc<rustls::ClientConfig>);

type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower::Service<http::Uri> for UnverifiedConnector {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.0.clone();
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| std::io::Error::other("no host"))?;
            let host = host.trim_matches(['[', ']']).to_string();
            let tcp = tokio::net::TcpStream::connect((host.as_str(), uri.port_u16().unwrap_or(443))).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host).map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// A URL to dial, with what it takes: tonic's endpoint, and for an unverified `https://` URL the
/// connector that does the TLS (the endpoint itself then says `http://`).
pub struct Dial {
    endpoint: Endpoint,
    unverified: Option<UnverifiedConnector>,
}

impl Dial {
    pub fn new(url: &str, dialer: Option<&Dialer>) -> Result<Dial, String> {
        let endpoint = |u: String| Endpoint::from_shared(u).map_err(|e| e.to_string());
        match (url.strip_prefix("https://"), dialer) {
            (None, _) => Ok(Dial { endpoint: endpoint(url.to_string())?, unverified: None }),
            (Some(_), None) => Err(format!("{url}: an https URL, and no TLS configured to dial it")),
            (Some(_), Some(Dialer::Verify(tls))) => {
                let endpoint =
                    endpoint(url.to_string())?.tls_config(tls.clone()).map_err(|e| e.to_string())?;
                Ok(Dial { endpoint, unverified: None })
            }
            (Some(rest), Some(Dialer::Unverified(config))) => Ok(Dial {
                endpoint: endpoint(format!("http://{rest}"))?,
                unverified: Some(UnverifiedConnector(config.clone())),
            }),
        }
    }

    /// Sets endpoint options (timeouts, ...).
    pub fn with(self, f: impl FnOnce(Endpoint) -> Endpoint) -> Dial {
        Dial { endpoint: f(self.endpoint), ..self }
    }

    /// A channel that connects on first use.
    pub fn lazy(self) -> Channel {
        match self.unverified {
            Some(c) => self.endpoint.connect_with_connector_lazy(c),
            None => self.endpoint.connect_lazy(),
        }
    }

    pub async fn connect(self) -> Result<Channel, tonic::transport::Error> {
        match self.unverified {
            Some(c) => self.endpoint.connect_with_connector(c).await,
            None => self.endpoint.connect().await,
        }
    }
}

/// The subject common name of a DER certificate: with `--client-cert-auth` and auth on, a client
/// certificate's CN names the user, as in etcd. Reads only the path to it (Certificate → TBSCertificate
/// → subject Name → the CN attribute), as DER lays it out in RFC 5280; anything else gives `None`.
pub fn common_name(der: &[u8]) -> Option<String> {
    /// One DER element at the start of `input`: (tag, contents, the rest).
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = match first {
            n if n < 0x80 => (n as usize, rest),
            n => {
                let bytes = (n & 0x7f) as usize;
                if bytes == 0 || bytes > 4 || rest.len() < bytes {
                    return None;
                }
                let len = rest[..bytes].iter().fold(0usize, |l, b| (l << 8) | *b as usize);
                (len, &rest[bytes..])
            }
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const VERSION: u8 = 0xa0; // [0] EXPLICIT, present from v2 on
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3

    let (SEQUENCE, cert, _) = element(der)? else { return None };
    let (SEQUENCE, mut tbs, _) = element(cert)? else { return None };
    if tbs.first() == Some(&VERSION) {
        tbs = element(tbs)?.2;
    }
    // serialNumber, signature, issuer, validity, then the subject.
    for _ in 0..4 {
        tbs = element(tbs)?.2;
    }
    let (SEQUENCE, mut subject, _) = element(tbs)? else { return None };
    while !subject.is_empty() {
        let (SET, mut rdn, rest) = element(subject)? else { return None };
        subject = rest;
        while !rdn.is_empty() {
            let (SEQUENCE, attribute, rest) = element(rdn)? else { return None };
            rdn = rest;
            let (_, oid, value) = element(attribute)?;
            if oid == COMMON_NAME {
                return String::from_utf8(element(value)?.1.to_vec()).ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_subject_common_name() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "concord");
        params.distinguished_name.push(rcgen::DnType::CommonName, "alice");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(super::common_name(cert.der()).as_deref(), Some("alice"));

        let no_cn =
            rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        let cn = super::common_name(no_cn.der());
        assert!(cn.is_none() || cn.as_deref() == Some("rcgen self signed cert"), "{cn:?}");
        assert_eq!(super::common_name(&cert.der()[..40]), None, "a truncated certificate");
        assert_eq!(super::common_name(b""), None);
    }
}
