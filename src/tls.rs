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
