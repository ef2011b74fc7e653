//! `concord migrate` from real etcd 3.4 and 3.5.1 into concord while a writer keeps writing to etcd:
//! every write arrives, leases keep their ids, and keys outside the prefix stay behind.

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_serving, Cluster, Etcd};
use etcd_client::{GetOptions, PutOptions, Txn, TxnOp};
use tokio::io::{AsyncBufReadExt, BufReader};

async fn kvs(client: &mut etcd_client::Client, prefix: &str) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
    let r = client.get(prefix, Some(GetOptions::new().with_prefix())).await.expect("get");
    r.kvs().iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.lease())).collect()
}

/// A running `concord migrate`.
struct Migration {
    child: tokio::process::Child,
}

impl Migration {
    /// Starts it and waits until it has copied everything and mirrors.
    async fn start(args: &[&str]) -> Migration {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord"))
            .arg("migrate")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("concord migrate");
        let mut progress = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut said = String::new();
        while let Some(line) = progress.next_line().await.expect("read progress") {
            if line.contains("mirroring") {
                // Keep draining progress lines so the migration never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = progress.next_line().await {} });
                return Migration { child };
            }
            said.push_str(&line);
        }
        panic!("migrate ended before mirroring: {said}");
    }

    /// Stops it as an operator would (SIGTERM); it must then succeed. Returns what it printed.
    async fn stop(self) -> String {
        let pid = self.child.id().expect("pid").to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let out = tokio::time::timeout(Duration::from_secs(60), self.child.wait_with_output())
            .await
            .expect("migrate stops")
            .expect("migrate output");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}");
        stdout
    }
}

async fn migrate_from(etcd: Etcd, label: &str) {
    wait_serving(etcd.client_port).await;
    let source = format!("127.0.0.1:{}", etcd.client_port);
    let mut src = etcd_client::Client::connect([source.clone()], None).await.expect("connect etcd");
    for i in 0..300 {
        src.put(format!("app/k{i:03}"), format!("v{i}"), None).await.expect("put");
    }
    src.put("other/x", "stays behind", None).await.expect("put");
    let lease = src.lease_grant(600, None).await.expect("grant").id();
    src.put("app/leased", "l", Some(PutOptions::new().with_lease(lease))).await.expect("put");

    let target = Cluster::start(1, &[]);
    let mut dst = target.members[0].client().await;

    // A writer runs through the copy and the mirroring: puts, deletes and transactions.
    let mirroring = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut src, mirroring) = (src.clone(), mirroring.clone());
        tokio::spawn(async move {
            let mut after = 0;
            for i in 0.. {
                src.put(format!("app/w{:02}", i % 40), i.to_string(), None).await.expect("put");
                if i % 7 == 0 {
                    src.delete(format!("app/k{:03}", i % 300), None).await.expect("delete");
                }
                if i % 11 == 0 {
                    let ops = (0..3).map(|j| TxnOp::put(format!("app/t{j}"), i.to_string(), None));
                    src.txn(Txn::new().and_then(ops.collect::<Vec<_>>())).await.expect("txn");
                }
                if mirroring.load(Ordering::Relaxed) {
                    after += 1;
                    if after == 200 {
                        return;
                    }
                }
            }
        })
    };

    let migration =
        Migration::start(&["--from", &source, "--to", &target.members[0].endpoint(), "--prefix", "app/"])
            .await;
    mirroring.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let stdout = migration.stop().await;
    assert!(stdout.contains("source and target hold the same"), "{label}: {stdout}");

    // Checked again from outside: the same keys and values, leases kept, nothing outside the prefix.
    let (from, to) = (kvs(&mut src, "app/").await, kvs(&mut dst, "app/").await);
    let pairs =
        |v: &[(Vec<u8>, Vec<u8>, i64)]| v.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect::<Vec<_>>();
    assert_eq!(pairs(&from), pairs(&to), "{label}");
    assert!(to.iter().any(|(k, _, l)| k == b"app/leased" && *l == lease), "{label}");
    assert!(dst.lease_time_to_live(lease, None).await.expect("ttl").ttl() > 0, "{label}");
    assert!(kvs(&mut dst, "other/").await.is_empty(), "{label}");
}

#[tokio::test]
async fn migrates_a_live_etcd_3_4() {
    migrate_from(Etcd::start(), "etcd 3.4").await;
}

#[tokio::test]
async fn migrates_a_live_etcd_3_5() {
    migrate_from(Etcd::start_35(), "etcd 3.5.1").await;
}

/// Into a concord that serves clients over TLS and asks for client certificates.
#[tokio::test]
async fn migrates_into_a_tls_member() {
    let etcd = Etcd::start_35();
    wait_serving(etcd.client_port).await;
    let source = format!("127.0.0.1:{}", etcd.client_port);
    let mut src = etcd_client::Client::connect([source.clone()], None).await.expect("connect etcd");
    for i in 0..100 {
        src.put(format!("k{i}"), "v", None).await.expect("put");
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());
    let mut target = Cluster::new(1, &[]);
    let m = &mut target.members[0];
    m.use_tls(pki.member_flags(true));
    m.start();
    let certs = [
        format!("--cacert={}", pki.ca.display()),
        format!("--cert={}", pki.cert.display()),
        format!("--key={}", pki.key.display()),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut args: Vec<&str> = certs.iter().map(String::as_str).collect();
        args.extend(["endpoint", "health"]);
        if common::etcdctl(&m.endpoint(), &args, None).0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the TLS member does not come up: {}", m.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ca = format!("--to-cacert={}", pki.ca.display());
    let cert = format!("--to-cert={}", pki.cert.display());
    let key = format!("--to-key={}", pki.key.display());
    let migration = Migration::start(&["--from", &source, "--to", &m.endpoint(), &ca, &cert, &key]).await;
    for i in 100..110 {
        src.put(format!("k{i}"), "v", None).await.expect("put");
    }
    let stdout = migration.stop().await;
    assert!(stdout.contains("hold the same 110 keys"), "{stdout}");
}

/// With auth on at both ends: a user of the source that may read the prefix, a user of the target that
/// may write it (etcdctl's `--user` form for both).
#[tokio::test]
async fn migrates_with_users_at_both_ends() {
    let etcd = Etcd::start_35();
    wait_serving(etcd.client_port).await;
    let source = format!("http://127.0.0.1:{}", etcd.client_port);
    let target = Cluster::start(1, &[]);
    target.members[0].client().await;
    let bin = common::etcdctl35();
    let setup = |endpoint: &str, perm: &str| {
        common::etcdctl_steps(
            &bin,
            endpoint,
            &[
                &["user", "add", "root:rootpw"],
                &["user", "grant-role", "root", "root"],
                &["role", "add", "mover"],
                &["role", "grant-permission", "mover", perm, "app/", "--prefix"],
                &["user", "add", "mover:pw"],
                &["user", "grant-role", "mover", "mover"],
                &["auth", "enable"],
            ],
        )
    };
    let (ok, _, err) = common::etcdctl_with(&bin, &source, &["put", "app/a", "1"], None);
    assert!(ok, "{err}");
    setup(&source, "read");
    setup(&target.members[0].endpoint(), "readwrite");
    let to = target.members[0].endpoint();
    let migration = Migration::start(&[
        "--from",
        &source,
        "--from-user",
        "mover:pw",
        "--to",
        &to,
        "--to-user",
        "mover:pw",
        "--prefix",
        "app/",
    ])
    .await;
    let (ok, _, err) =
        common::etcdctl_with(&bin, &source, &["--user", "root:rootpw", "put", "app/b", "2"], None);
    assert!(ok, "{err}");
    let stdout = migration.stop().await;
    assert!(stdout.contains("hold the same 2 keys"), "{stdout}");
    let (ok, out, err) =
        common::etcdctl_with(&bin, &to, &["--user", "mover:pw", "get", "app/", "--prefix"], None);
    assert!(ok && out == "app/a\n1\napp/b\n2\n", "{out}{err}");
}
