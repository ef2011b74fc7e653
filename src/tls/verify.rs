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
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
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

/// Verifies the servers a member dials (its peers, its own client port).
#[derive(Debug)]
pub struct Server {
    webpki: Arc<WebPkiServerVerifier>,
    roots: Roots,
}

impl Server {
    pub fn new(roots: Vec<CertificateDer<'static>>, provider: Arc<CryptoProvider>) -> Result<Server, String> {
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(&roots)), provider)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Server { webpki, roots: Roots(roots) })
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

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Verifies client certificates (`--client-cert-auth`, `--peer-client-cert-auth`): one is required.
#[derive(Debug)]
pub struct Client {
    webpki: Arc<dyn ClientCertVerifier>,
    roots: Roots,
}

impl Client {
    pub fn new(roots: Vec<CertificateDer<'static>>, provider: Arc<CryptoProvider>) -> Result<Client, String> {
        let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(&roots)), provider)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Client { webpki, roots: Roots(roots) })
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
        match self.webpki.verify_client_cert(end_entity, intermediates, now) {
            Err(e) if self.roots.trusted_as_is(&e, end_entity, now) => Ok(ClientCertVerified::assertion()),
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
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
        let client = super::Client::new(vec![ca.clone()], provider.clone()).unwrap();
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
        let client = super::Client::new(vec![ca.der().clone()], provider.clone()).unwrap();
        let server = super::Server::new(vec![ca.der().clone()], provider).unwrap();
        let localhost = ServerName::try_from("localhost").unwrap();
        assert!(client.verify_client_cert(leaf.der(), &[], UnixTime::now()).is_ok());
        assert!(server.verify_server_cert(leaf.der(), &[], &localhost, &[], UnixTime::now()).is_ok());
    }
}
