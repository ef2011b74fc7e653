//! Certificate verification as etcd's Go does it, on top of webpki's.
//!
//! Go's crypto/x509 takes a peer certificate that is itself one of the trusted roots as verified,
//! whatever its basic constraints say; webpki refuses a CA certificate as an end entity
//! (`CaUsedAsEndEntity`). `openssl req -x509` makes CA certificates by default, and etcd users (etcd's
//! own e2e fixtures among them) pass one self-signed file as certificate, key's partner and CA. A
//! member that refused those would not join its peers nor take its clients, so both directions go
//! through webpki first and, only when webpki's one objection is that rule, accept a certificate that
//! is byte for byte a trusted root, within its validity period (and, for a server, valid for the name
//! dialled), as Go does.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// The trusted roots, and the one webpki refusal Go does not make.
#[derive(Debug)]
struct Roots(Vec<CertificateDer<'static>>);

impl Roots {
    /// Whether `error` is only webpki's refusal of a CA certificate as an end entity, for a
    /// certificate that is a trusted root itself and valid at `now`.
    fn trusted_as_is(&self, error: &rustls::Error, cert: &CertificateDer<'_>, now: UnixTime) -> bool {
        let ca_as_end_entity = matches!(
            error,
            rustls::Error::InvalidCertificate(CertificateError::Other(other))
                if matches!(other.0.downcast_ref(), Some(webpki::Error::CaUsedAsEndEntity))
        );
        ca_as_end_entity
            && self.0.iter().any(|root| root.as_ref() == cert.as_ref())
            && super::cert::validity(cert)
                .is_some_and(|(from, until)| (from..=until).contains(&now.as_secs()))
    }
}

fn root_store(roots: &[CertificateDer<'static>]) -> RootCertStore {
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(roots.iter().cloned());
    store
}

/// The handshake's own signature checks, the same for every verifier here: the signature is made with
/// the key of the certificate shown, by one of the provider's algorithms (what webpki's verifiers do).
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// Accepts whatever certificate the server shows (`--auto-tls`, etcd's InsecureSkipVerify); its
/// handshake signatures are still checked, so the server holds the key of the certificate it showed.
#[derive(Debug)]
pub struct Any {
    algorithms: WebPkiSupportedAlgorithms,
}

impl Any {
    pub fn new(provider: &CryptoProvider) -> Any {
        Any { algorithms: provider.signature_verification_algorithms }
    }
}

impl ServerCertVerifier for Any {
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

    handshake_signatures!();
}

/// Verifies the servers a member dials (its peers, its own client port).
#[derive(Debug)]
pub struct Server {
    webpki: Arc<WebPkiServerVerifier>,
    roots: Roots,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Server {
    pub fn new(roots: Vec<CertificateDer<'static>>, provider: Arc<CryptoProvider>) -> Result<Server, String> {
        let algorithms = provider.signature_verification_algorithms;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(&roots)), provider)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Server { webpki, roots: Roots(roots), algorithms })
    }
}

impl ServerCertVerifier for Server {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(e) if self.roots.trusted_as_is(&e, end_entity, now) => {
                rustls::client::verify_server_name(&ParsedCertificate::try_from(end_entity)?, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            verified => verified,
        }
    }

    handshake_signatures!();
}

/// What a peer's certificate must name besides being trusted (`--peer-cert-allowed-cn`,
/// `--peer-cert-allowed-hostname`), checked as etcd's listener does after the handshake's own checks.
#[derive(Clone, Debug, Default)]
pub struct Allowed {
    pub common_name: Option<String>,
    pub hostname: Option<String>,
}

impl Allowed {
    /// A refusal goes to the peer as etcd's does, a bad_certificate alert.
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let refuse = |what: String| {
            let error: Box<dyn std::error::Error + Send + Sync> = what.into();
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(error.into())))
        };
        if let Some(cn) = &self.common_name {
            if super::cert::common_name(cert).as_ref() != Some(cn) {
                return Err(refuse(format!("CommonName authentication failed (allowed {cn:?})")));
            }
        }
        if let Some(host) = &self.hostname {
            let valid = ServerName::try_from(host.as_str()).ok().is_some_and(|name| {
                ParsedCertificate::try_from(cert)
                    .is_ok_and(|c| rustls::client::verify_server_name(&c, &name).is_ok())
            });
            if !valid {
                return Err(refuse(format!("hostname authentication failed (allowed {host:?})")));
            }
        }
        Ok(())
    }
}

/// Verifies client certificates (`--client-cert-auth`, `--peer-client-cert-auth`): one is required,
/// not revoked by the CRL given (`--client-crl-file`, `--peer-crl-file`), naming what is `allowed`.
#[derive(Debug)]
pub struct Client {
    webpki: Arc<dyn ClientCertVerifier>,
    roots: Roots,
    allowed: Allowed,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Client {
    pub fn new(
        roots: Vec<CertificateDer<'static>>,
        crls: Vec<CertificateRevocationListDer<'static>>,
        allowed: Allowed,
        provider: Arc<CryptoProvider>,
    ) -> Result<Client, String> {
        // etcd checks a certificate's serial against the list and nothing else: a certificate whose
        // issuer has no list here is not revoked.
        let algorithms = provider.signature_verification_algorithms;
        let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(&roots)), provider)
            .with_crls(crls)
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Client { webpki, roots: Roots(roots), allowed, algorithms })
    }
}

impl ClientCertVerifier for Client {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(e) = self.webpki.verify_client_cert(end_entity, intermediates, now) {
            if !self.roots.trusted_as_is(&e, end_entity, now) {
                return Err(e);
            }
        }
        self.allowed.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::danger::ClientCertVerifier;

    /// A self-signed CA certificate for localhost, as `openssl req -x509` makes one, valid in 2024-2026.
    fn self_signed_ca(name: &str) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 1, 1);
        params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().der().clone()
    }

    fn at(year_2025_day: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(1_735_689_600 + year_2025_day * 86_400))
    }

    #[test]
    fn a_trusted_ca_certificate_is_accepted_as_the_peers_own_as_go_accepts_it() {
        let ca = self_signed_ca("root");
        let provider = super::super::provider();
        let client =
            super::Client::new(vec![ca.clone()], vec![], Default::default(), provider.clone()).unwrap();
        let server = super::Server::new(vec![ca.clone()], provider).unwrap();
        let localhost = ServerName::try_from("localhost").unwrap();

        assert!(client.verify_client_cert(&ca, &[], at(100)).is_ok());
        assert!(server.verify_server_cert(&ca, &[], &localhost, &[], at(100)).is_ok());

        // Only within its validity period, and as a server only for its own names.
        assert!(client.verify_client_cert(&ca, &[], at(400)).is_err(), "expired");
        assert!(server.verify_server_cert(&ca, &[], &localhost, &[], at(400)).is_err(), "expired");
        let elsewhere = ServerName::try_from("example.com").unwrap();
        assert!(server.verify_server_cert(&ca, &[], &elsewhere, &[], at(100)).is_err(), "other name");

        // A CA certificate that is not itself trusted is refused as before.
        let stranger = self_signed_ca("root");
        assert!(client.verify_client_cert(&stranger, &[], at(100)).is_err());
        assert!(server.verify_server_cert(&stranger, &[], &localhost, &[], at(100)).is_err());
    }

    #[test]
    fn certificates_the_trusted_ca_signed_are_verified_by_webpki() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = params.signed_by(&rcgen::KeyPair::generate().unwrap(), &ca, &key).unwrap();
        let provider = super::super::provider();
        let client =
            super::Client::new(vec![ca.der().clone()], vec![], Default::default(), provider.clone()).unwrap();
        let server = super::Server::new(vec![ca.der().clone()], provider).unwrap();
        let localhost = ServerName::try_from("localhost").unwrap();
        assert!(client.verify_client_cert(leaf.der(), &[], UnixTime::now()).is_ok());
        assert!(server.verify_server_cert(leaf.der(), &[], &localhost, &[], UnixTime::now()).is_ok());
    }

    #[test]
    fn a_peer_must_name_the_allowed_common_name_or_host() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["peer.example.com".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "example.com");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = params.signed_by(&rcgen::KeyPair::generate().unwrap(), &ca, &key).unwrap();
        let verify = |common_name: Option<&str>, hostname: Option<&str>| {
            let allowed = super::Allowed {
                common_name: common_name.map(Into::into),
                hostname: hostname.map(Into::into),
            };
            let provider = super::super::provider();
            let client = super::Client::new(vec![ca.der().clone()], vec![], allowed, provider).unwrap();
            client.verify_client_cert(leaf.der(), &[], UnixTime::now()).is_ok()
        };
        assert!(verify(None, None));
        assert!(verify(Some("example.com"), None));
        assert!(!verify(Some("example2.com"), None));
        assert!(verify(None, Some("peer.example.com")));
        assert!(!verify(None, Some("other.example.com")));
    }
}
