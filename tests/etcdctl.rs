//! etcdctl (a third-party Go client) against a real `concord` process.

mod common;

use common::{etcdctl, etcdctl35, etcdctl_with, Cluster};

#[tokio::test]
async fn etcdctl_kv_round_trip() {
    let c = Cluster::start(1, &[]);
    let m = &c.members[0];
    m.client().await;
    // With the scheme, as etcd's docs write it: etcdctl 3.4 then sends `http://...` as the HTTP/2
    // :authority of the commands that dial each endpoint alone (`endpoint status`, `hashkv`, `defrag`),
    // which h2 refuses unless concord repairs it (src/api/authority.rs).
    let ep = m.endpoint();
    let run = |args: &[&str]| {
        let (ok, out, err) = etcdctl(&ep, args, None);
        assert!(ok, "etcdctl {args:?} failed: {err}");
        out
    };

    assert_eq!(run(&["put", "a", "b"]), "OK\n");
    assert_eq!(run(&["get", "a"]), "a\nb\n");
    run(&["put", "app/1", "x"]);
    run(&["put", "app/2", "y"]);
    assert_eq!(run(&["get", "app/", "--prefix", "--keys-only"]), "app/1\n\napp/2\n\n");
    let fields = run(&["get", "app/", "--prefix", "--limit", "1", "-w", "fields"]);
    assert!(fields.contains("\"Count\" : 2") && fields.contains("\"More\" : true"), "{fields}");
    assert_eq!(run(&["get", "a", "--rev=2"]), "a\nb\n");
    assert_eq!(run(&["del", "app/", "--prefix"]), "2\n");

    let (ok, out, err) = etcdctl(&ep, &["txn"], Some("value(\"a\") = \"b\"\n\nput a c\n\nput z 1\n\n"));
    assert!(ok, "{err}");
    assert_eq!(out, "SUCCESS\n\nOK\n");
    assert_eq!(run(&["get", "a", "--print-value-only"]), "c\n");

    assert_eq!(run(&["compact", "3"]), "compacted revision 3\n");
    let (ok, _, err) = etcdctl(&ep, &["get", "a", "--rev=2"], None);
    assert!(!ok);
    assert!(err.contains("etcdserver: mvcc: required revision has been compacted"), "{err}");

    let status = run(&["endpoint", "status", "-w", "json"]);
    assert!(status.contains("\"version\":\"3.5.0\""), "{status}");
    assert!(status.contains("\"leader\":"), "{status}");
    for field in ["\"raftAppliedIndex\":", "\"dbSizeInUse\":", "\"raftIndex\":", "\"dbSize\":"] {
        assert!(status.contains(field), "{field} in {status}");
    }
    // `--cluster` dials every member's advertised URL, scheme included.
    let status = run(&["endpoint", "status", "--cluster"]);
    assert!(status.starts_with(&format!("{ep}, ")), "{status}");
    assert!(run(&["endpoint", "hashkv"]).starts_with(&format!("{ep}, ")));
    assert_eq!(run(&["defrag"]), format!("Finished defragmenting etcd member[{ep}]\n"));
    let members = run(&["member", "list"]);
    assert!(members.contains(", started, m0, http://127.0.0.1:"), "{members}");
    assert!(members.contains(&m.endpoint()), "{members}");
}

#[tokio::test]
async fn etcdctl_3_5_with_scheme_endpoints() {
    let c = Cluster::start(1, &[]);
    let m = &c.members[0];
    m.client().await;
    let bin = etcdctl35();
    let ep = m.endpoint(); // http://127.0.0.1:port, as people write it
    let run = |args: &[&str]| {
        let (ok, out, err) = etcdctl_with(&bin, &ep, args, None);
        assert!(ok, "etcdctl 3.5 {args:?} failed: {err}");
        out
    };
    assert_eq!(run(&["put", "k", "v"]), "OK\n");
    assert_eq!(run(&["get", "k", "--print-value-only"]), "v\n");
    let status = run(&["endpoint", "status", "-w", "json"]);
    assert!(status.contains(&format!("\"Endpoint\":\"{ep}\"")), "{status}");
    assert!(run(&["endpoint", "health"]).contains("is healthy"));
    let (ok, out, err) = etcdctl_with(&bin, &ep, &["txn"], Some("version(\"k\") = \"1\"\n\ndel k\n\n\n"));
    assert!(ok, "{err}");
    assert_eq!(out, "SUCCESS\n\n1\n");
    assert!(run(&["member", "list", "-w", "json"]).contains(&ep));
}

#[tokio::test]
async fn etcdctl_leases() {
    let c = Cluster::start(1, &[]);
    let m = &c.members[0];
    m.client().await;
    let ep = m.endpoint();
    let run = |args: &[&str]| {
        let (ok, out, err) = etcdctl(&ep, args, None);
        assert!(ok, "etcdctl {args:?}: {err}");
        out
    };
    let granted = run(&["lease", "grant", "60"]);
    // "lease 694d77aa9e23d011 granted with TTL(60s)"
    let id = granted.split_whitespace().nth(1).expect("lease id").to_string();
    assert!(granted.ends_with("granted with TTL(60s)\n"), "{granted}");
    run(&["put", "leased", "v", &format!("--lease={id}")]);
    let ttl = run(&["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.contains("granted with TTL(60s)") && ttl.contains("attached keys([leased])"), "{ttl}");
    assert_eq!(run(&["lease", "keep-alive", "--once", &id]), format!("lease {id} keepalived with TTL(60)\n"));
    assert_eq!(run(&["lease", "list"]), format!("found 1 leases\n{id}\n"));
    assert_eq!(run(&["lease", "revoke", &id]), format!("lease {id} revoked\n"));
    assert_eq!(run(&["get", "leased"]), "");
    assert_eq!(run(&["lease", "timetolive", &id]), format!("lease {id} already expired\n"));
    let (ok, _, err) = etcdctl(&ep, &["put", "k", "v", "--lease=123"], None);
    assert!(!ok && err.contains("etcdserver: requested lease not found"), "{err}");
}

#[tokio::test]
async fn etcdctl_defrag_gives_space_back_and_hashkv_answers() {
    let c = Cluster::start(1, &[]);
    let m = &c.members[0];
    let mut client = m.client().await;
    let big = "x".repeat(200_000);
    let mut last = 0;
    for i in 0..40 {
        last = client
            .put(format!("big/{}", i % 4), big.as_str(), None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    client.delete("big/", Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
    client.compact(last + 1, None).await.unwrap();
    let before = client.status().await.unwrap().db_size();
    let ep = m.endpoint();
    let (ok, out, err) = etcdctl(&ep, &["defrag"], None);
    assert!(ok && out.contains("Finished defragmenting etcd member"), "{out} {err}");
    let after = client.status().await.unwrap().db_size();
    assert!(after < before / 4, "db size {before} -> {after}");
    let (ok, out, err) = etcdctl(&ep, &["endpoint", "hashkv"], None);
    assert!(ok && out.contains(&ep), "{out} {err}");
}

/// `etcdctl check datascale` reads the server's `process_resident_memory_bytes` from `/metrics` before
/// and after its 10,000 writes, then deletes them, compacts and defragments.
#[tokio::test]
async fn etcdctl_check_datascale_passes() {
    let c = Cluster::start(1, &[]);
    let m = &c.members[0];
    let mut client = m.client().await;
    for bin in ["/usr/bin/etcdctl".to_string(), etcdctl35()] {
        let args = ["check", "datascale", "--load", "s", "--auto-compact", "--auto-defrag"];
        let (ok, out, err) = etcdctl_with(&bin, &m.endpoint(), &args, None);
        assert!(ok && out.contains("PASS: Approximate system memory used"), "{bin}: {out}{err}");
    }
    let left = client
        .get(
            "/etcdctl-check-datascale/",
            Some(etcd_client::GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count");
    assert_eq!(left.count(), 0, "datascale deletes what it wrote");
}

/// `etcdctl make-mirror` copies what is there and then follows a watch into another cluster.
#[tokio::test]
async fn etcdctl_make_mirror_copies_and_follows() {
    let source = Cluster::start(1, &[]);
    let dest = Cluster::start(1, &[]);
    let mut src = source.members[0].client().await;
    let mut dst = dest.members[0].client().await;
    src.put("m/old", "1", None).await.expect("put");
    let prefix = etcd_client::WatchOptions::new().with_prefix();
    let (mut _watcher, mut events) = dst.watch("m/", Some(prefix)).await.expect("watch");
    let mut mirror = tokio::process::Command::new(etcdctl35())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", source.members[0].endpoint()))
        .args(["make-mirror", &dest.members[0].endpoint()])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("etcdctl make-mirror");
    // Whether m/new is copied with the existing keys or follows through the mirror's watch depends on
    // when the mirror starts: both must arrive.
    src.put("m/new", "2", None).await.expect("put");
    let mut seen = std::collections::BTreeMap::new();
    let both = async {
        while seen.len() < 2 {
            let resp = events.message().await.expect("watch").expect("a response");
            for e in resp.events() {
                let kv = e.kv().expect("kv");
                seen.insert(
                    kv.key_str().expect("utf-8").to_string(),
                    kv.value_str().expect("utf-8").to_string(),
                );
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), both).await.expect("mirrored within 20 s");
    let expected = [("m/new", "2"), ("m/old", "1")].map(|(k, v)| (k.to_string(), v.to_string()));
    assert_eq!(seen, expected.into_iter().collect());
    mirror.kill().await.expect("stop make-mirror");
}
