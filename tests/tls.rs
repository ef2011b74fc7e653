//! TLS with etcd's flags, certificates made at test time: clients with etcdctl's `--cacert --cert --key`,
//! client certificates required, plain text refused, and peers talking TLS to each other.

mod common;

use std::path::Path;

use common::{etcdctl, pki, Cluster};

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn clients_and_peers_speak_tls_with_etcds_flags() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let mut c = Cluster::new(3, &[]);
    for m in &mut c.members {
        m.use_tls(pki.member_flags(true));
        m.start();
    }
    let with_cert = [
        format!("--cacert={}", s(&pki.ca)),
        format!("--cert={}", s(&pki.cert)),
        format!("--key={}", s(&pki.key)),
    ];
    let ctl = |m: usize, args: &[&str], auth: &[String]| {
        let endpoint = format!("https://127.0.0.1:{}", c.members[m].client_port);
        let mut all: Vec<&str> = auth.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        etcdctl(&endpoint, &all, None)
    };
    // Written through one member, read through another: the peers replicate over TLS.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (ok, _, err) = ctl(0, &["put", "secret", "v"], &with_cert);
        if ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "put over TLS: {err}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (ok, out, err) = ctl(2, &["get", "secret"], &with_cert);
    assert!(ok && out.contains("secret\nv"), "{out}{err}");
    // The lock service is a client of the member's own TLS port.
    let (ok, out, err) = ctl(1, &["lock", "l", "echo", "locked"], &with_cert);
    assert!(ok && out.contains("locked"), "{out}{err}");

    // No client certificate, or one from a CA the member does not trust: refused.
    let ca_only = [format!("--cacert={}", s(&pki.ca)), "--command-timeout=3s".to_string()];
    let (ok, _, _) = ctl(0, &["get", "secret"], &ca_only);
    assert!(!ok, "a client without a certificate was served");
    let stranger = [
        format!("--cacert={}", s(&pki.ca)),
        format!("--cert={}", s(&pki.other_ca_cert)),
        format!("--key={}", s(&pki.other_ca_key)),
        "--command-timeout=3s".to_string(),
    ];
    let (ok, _, _) = ctl(0, &["get", "secret"], &stranger);
    assert!(!ok, "a client with an untrusted certificate was served");
    // Plain text on the TLS port: refused.
    let plain = format!("http://127.0.0.1:{}", c.members[0].client_port);
    let (ok, _, _) = etcdctl(&plain, &["get", "secret", "--command-timeout=3s"], None);
    assert!(!ok, "a plain-text client was served on a TLS port");
}

/// `--auto-tls` and `--peer-auto-tls`: each member makes itself a certificate (kept in its data dir);
/// peers talk TLS without verifying each other, clients with etcdctl's `--insecure-skip-tls-verify`,
/// and the lock service's own client gets through too.
#[test]
fn auto_tls_members_make_their_own_certificates() {
    let mut c = Cluster::new(3, &[]);
    for m in &mut c.members {
        m.use_tls(vec!["--auto-tls".into(), "--peer-auto-tls".into()]);
        m.start();
    }
    let ctl = |m: usize, args: &[&str]| {
        let endpoint = format!("https://127.0.0.1:{}", c.members[m].client_port);
        let mut all =
            vec!["--insecure-skip-tls-verify", "--insecure-transport=false", "--command-timeout=5s"];
        all.extend_from_slice(args);
        etcdctl(&endpoint, &all, None)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (ok, _, err) = ctl(0, &["put", "k", "v"]);
        if ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "put over auto TLS: {err}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (ok, out, err) = ctl(2, &["get", "k"]);
    assert!(ok && out == "k\nv\n", "{out}{err}");
    for m in &c.members {
        for side in ["client", "peer"] {
            let cert = m.data_dir.join("fixtures").join(side).join("cert.pem");
            assert!(cert.exists(), "{}", cert.display());
        }
    }
    // The lock service, through the gateway: its loopback client dials the member's own TLS port.
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", c.members[1].client_port);
    let curl = |path: &str, body: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sk", "-X", "POST", "-d", body, &url(path)])
            .output()
            .expect("curl");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let lease = curl("/v3/lease/grant", r#"{"TTL": 30}"#);
    let id = lease["ID"].as_str().expect("lease id").to_string();
    let lock = curl("/v3/lock/lock", &format!(r#"{{"name": "bG9jaw==", "lease": "{id}"}}"#));
    assert!(lock["key"].is_string(), "{lock}");
    // Plain text on the TLS port: refused.
    let plain = format!("http://127.0.0.1:{}", c.members[0].client_port);
    let (ok, _, _) = etcdctl(&plain, &["get", "k", "--command-timeout=3s"], None);
    assert!(!ok, "a plain-text client was served on a TLS port");
}

/// One self-signed CA certificate as every member's certificate and as the trusted CA, on both
/// sides (`openssl req -x509` makes such certificates; etcd's e2e suite uses one): Go takes a peer
/// certificate that is itself a trusted root, and so must concord, as a server (clients, peers) and
/// as a client (of its peers, and of its own port for the lock service).
#[test]
fn a_self_signed_ca_certificate_serves_as_certificate_and_ca_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let self_signed = |stem: &str| {
        let mut p =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "root");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let (c, k) = (dir.path().join(format!("{stem}.pem")), dir.path().join(format!("{stem}-key.pem")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (s(&c), s(&k))
    };
    let (cert, key) = self_signed("root");
    let mut c = Cluster::new(3, &[]);
    for m in &mut c.members {
        m.use_tls(vec![
            format!("--cert-file={cert}"),
            format!("--key-file={key}"),
            format!("--trusted-ca-file={cert}"),
            "--client-cert-auth".into(),
            format!("--peer-cert-file={cert}"),
            format!("--peer-key-file={key}"),
            format!("--peer-trusted-ca-file={cert}"),
            "--peer-client-cert-auth".into(),
        ]);
        m.start();
    }
    let ctl = |m: usize, args: &[&str], (cert, key): (&str, &str)| {
        let endpoint = format!("https://127.0.0.1:{}", c.members[m].client_port);
        let auth = [format!("--cacert={cert}"), format!("--cert={cert}"), format!("--key={key}")];
        let mut all: Vec<&str> = auth.iter().map(String::as_str).collect();
        all.push("--command-timeout=5s");
        all.extend_from_slice(args);
        etcdctl(&endpoint, &all, None)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (ok, _, err) = ctl(0, &["put", "k", "v"], (&cert, &key));
        if ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "put with a self-signed CA certificate: {err}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (ok, out, err) = ctl(2, &["get", "k"], (&cert, &key));
    assert!(ok && out == "k\nv\n", "{out}{err}");
    let (ok, out, err) = ctl(1, &["lock", "l", "echo", "locked"], (&cert, &key));
    assert!(ok && out.contains("locked"), "{out}{err}");

    // Another self-signed certificate, with the same name but not trusted: refused.
    let (other, other_key) = self_signed("other");
    let endpoint = format!("https://127.0.0.1:{}", c.members[0].client_port);
    let stranger = [format!("--cacert={cert}"), format!("--cert={other}"), format!("--key={other_key}")];
    let mut args: Vec<&str> = stranger.iter().map(String::as_str).collect();
    args.extend(["--command-timeout=3s", "get", "k"]);
    let (ok, _, _) = etcdctl(&endpoint, &args, None);
    assert!(!ok, "a client with an untrusted self-signed certificate was served");
}

/// `--client-cert-allowed-hostname`: a client certificate from the trusted CA is refused unless it
/// names the allowed host (the test certificates name 127.0.0.1 and localhost).
#[test]
fn a_client_certificate_must_name_the_allowed_hostname() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let with_cert = [
        format!("--cacert={}", s(&pki.ca)),
        format!("--cert={}", s(&pki.alice_cert)),
        format!("--key={}", s(&pki.alice_key)),
        "--command-timeout=3s".to_string(),
    ];
    for (allowed, served) in [("elsewhere.example", false), ("localhost", true)] {
        let mut c = Cluster::new(1, &[]);
        let mut flags = pki.member_flags(true);
        flags.push(format!("--client-cert-allowed-hostname={allowed}"));
        c.members[0].use_tls(flags);
        c.members[0].start();
        let endpoint = format!("https://127.0.0.1:{}", c.members[0].client_port);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !c.members[0].log().contains("concord member started") {
            assert!(std::time::Instant::now() < deadline, "{}", c.members[0].log());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mut args: Vec<&str> = with_cert.iter().map(String::as_str).collect();
        args.extend(["put", "k", "v"]);
        let (ok, _, err) = etcdctl(&endpoint, &args, None);
        assert_eq!(ok, served, "allowed {allowed}: {err}");
    }
}
