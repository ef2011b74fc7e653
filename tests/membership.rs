//! Runtime membership changes, driven the way etcd's runtime-reconfiguration guide does: with etcdctl.

mod common;

use std::time::Duration;

use common::{env_value, etcdctl, eventually, status, Cluster};
use etcd_client::GetOptions;

/// `etcdctl` 3.4 against `http://127.0.0.1:port`.
fn ctl(port: u16, args: &[&str]) -> (bool, String, String) {
    etcdctl(&format!("http://127.0.0.1:{port}"), args, None)
}

/// `ctl` for a membership change, asked again while the cluster answers "unhealthy cluster": like etcd,
/// concord takes changes only once the leader has heard from every voter for 5 s (after a start or an
/// election it has not yet), which an operator's script waits out the same way.
async fn ctl_change(port: u16, args: &[&str]) -> (bool, String, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, err) = ctl(port, args);
        if ok || !err.contains("etcdserver: unhealthy cluster") || std::time::Instant::now() > deadline {
            return (ok, out, err);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The runtime-reconfiguration runbook: `member add`, start the new member with the environment etcdctl
/// printed, and it catches up (by snapshot: the log has been purged) while writes go on.
#[tokio::test]
async fn a_member_added_with_etcdctl_joins_under_write_load_and_catches_up() {
    let mut c = Cluster::start(3, &["--snapshot-count", "50"]);
    let mut client = c.members[0].client().await;
    for i in 0..300 {
        client.put(format!("k{i}"), format!("v{i}"), None).await.expect("put");
    }
    let writer = {
        let mut client = client.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            loop {
                if client.put("load", n.to_string(), None).await.is_ok() {
                    n += 1;
                }
            }
        })
    };

    let port0 = c.members[0].client_port;
    let new = c.prepare_member("m3");
    let peer = format!("http://127.0.0.1:{}", new.peer_port);
    let (ok, out, err) = ctl_change(port0, &["member", "add", "m3", &format!("--peer-urls={peer}")]).await;
    assert!(ok, "member add failed: {err}");
    assert!(out.contains("added to cluster"), "{out}");
    assert_eq!(env_value(&out, "ETCD_NAME"), "m3");
    assert_eq!(env_value(&out, "ETCD_INITIAL_CLUSTER_STATE"), "existing");
    assert_eq!(env_value(&out, "ETCD_INITIAL_ADVERTISE_PEER_URLS"), peer);
    let initial_cluster = env_value(&out, "ETCD_INITIAL_CLUSTER");
    assert_eq!(initial_cluster.split(',').count(), 4, "{initial_cluster}");
    // Added but not started yet: etcdctl lists it as unstarted.
    let (_, list, _) = ctl(port0, &["member", "list"]);
    assert!(list.lines().any(|l| l.contains("unstarted") && l.contains(&peer)), "{list}");

    new.initial_cluster = initial_cluster;
    new.extra = vec!["--initial-cluster-state".into(), "existing".into()];
    new.start();
    let mut joined = c.members[3].client().await;
    eventually("the new member has every key", || {
        let mut joined = joined.clone();
        async move {
            let r = joined.get("k", Some(GetOptions::new().with_prefix().with_serializable())).await;
            r.is_ok_and(|r| r.count() == 300)
        }
    })
    .await;
    writer.abort();
    // By snapshot: with --snapshot-count 50 the leader's log no longer reaches back to the start. The line
    // is logged just after the installed state is readable.
    eventually("the new member logs the snapshot it installed", || {
        let log = c.members[3].log();
        async move { log.contains("installed snapshot from the leader") }
    })
    .await;

    // Every member lists four started members, and a linearizable read through the new member sees the
    // last write.
    let (_, list, _) = ctl(c.members[3].client_port, &["member", "list"]);
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(!list.contains("unstarted"), "{list}");
    client.put("last", "write", None).await.expect("put");
    let r = joined.get("last", None).await.expect("get");
    assert_eq!(r.kvs()[0].value(), b"write");
    // Same data everywhere: etcd's corruption check compares HashKV at one revision.
    let rev = r.header().expect("header").revision();
    let mut hashes = Vec::new();
    for m in &c.members {
        let mc = m.client().await;
        eventually("the member applied the last write", || {
            let mut mc = mc.clone();
            async move {
                mc.get("last", Some(GetOptions::new().with_serializable()))
                    .await
                    .is_ok_and(|r| r.count() == 1)
            }
        })
        .await;
        hashes.push(mc.maintenance_client().hash_kv(rev).await.expect("hashkv").hash());
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
}

/// Growing one member to two, as etcd does it: `member add` answers before the new member starts (etcd
/// commits the change under the one-member configuration), the new member then joins with the printed
/// environment, and from then on both hold every write.
#[tokio::test]
async fn a_single_member_grows_to_two_with_etcdctl() {
    let mut c = Cluster::start(1, &[]);
    let mut client = c.members[0].client().await;
    client.put("before", "add", None).await.expect("put");
    let port0 = c.members[0].client_port;
    let new = c.prepare_member("m1");
    let peer = format!("http://127.0.0.1:{}", new.peer_port);
    let (ok, out, err) = ctl_change(port0, &["member", "add", "m1", &format!("--peer-urls={peer}")]).await;
    assert!(ok, "member add failed: {err}");
    let (_, list, _) = ctl(port0, &["member", "list"]);
    assert!(list.lines().any(|l| l.contains("unstarted") && l.contains(&peer)), "{list}");

    new.initial_cluster = env_value(&out, "ETCD_INITIAL_CLUSTER");
    new.extra = vec!["--initial-cluster-state".into(), "existing".into()];
    new.start();
    client.put("after", "join", None).await.expect("a write once both members run");
    let mut joined = c.members[1].client().await;
    let got = joined.get("", Some(GetOptions::new().with_from_key())).await.expect("linearizable get");
    let keys: Vec<&[u8]> = got.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, [&b"after"[..], b"before"]);
    let (_, list, _) = ctl(c.members[1].client_port, &["member", "list"]);
    assert_eq!(list.lines().filter(|l| l.contains(", started, ")).count(), 2, "{list}");
}

/// A learner replicates without voting, serves only serializable reads, and is promoted once caught up.
#[tokio::test]
async fn a_learner_serves_serializable_reads_only_until_promoted() {
    let mut c = Cluster::start(3, &[]);
    let mut client = c.members[0].client().await;
    client.put("k", "v", None).await.expect("put");
    let port0 = c.members[0].client_port;
    let new = c.prepare_member("m3");
    let peer = format!("http://127.0.0.1:{}", new.peer_port);
    let (ok, out, err) =
        ctl_change(port0, &["member", "add", "m3", "--learner", &format!("--peer-urls={peer}")]).await;
    assert!(ok, "member add --learner failed: {err}");
    let id = out.split_whitespace().nth(1).expect("Member <id> added").to_string();
    // etcd allows one learner at a time.
    let (ok, _, err) = ctl(port0, &["member", "add", "m4", "--learner", "--peer-urls=http://127.0.0.1:1"]);
    assert!(!ok && err.contains("etcdserver: too many learner members in cluster"), "{err}");

    new.initial_cluster = env_value(&out, "ETCD_INITIAL_CLUSTER");
    new.extra = vec!["--initial-cluster-state".into(), "existing".into()];
    new.start();
    let mut learner = c.members[3].client().await;
    eventually("the learner has the key", || {
        let mut learner = learner.clone();
        async move {
            learner.get("k", Some(GetOptions::new().with_serializable())).await.is_ok_and(|r| r.count() == 1)
        }
    })
    .await;
    let refused = status(learner.get("k", None).await.expect_err("linearizable read on a learner"));
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(refused.message(), "etcdserver: rpc not supported for learner");
    let refused = status(learner.put("k", "w", None).await.expect_err("write on a learner"));
    assert_eq!(refused.message(), "etcdserver: rpc not supported for learner");
    assert!(learner.status().await.expect("status").is_learner());
    let (_, list, _) = ctl(port0, &["member", "list"]);
    assert!(list.lines().any(|l| l.contains("m3") && l.ends_with("true")), "{list}");

    // A voter cannot be promoted.
    let voter = format!("{:x}", c.members[0].id().await);
    let (ok, _, err) = ctl(port0, &["member", "promote", &voter]);
    assert!(!ok && err.contains("etcdserver: can only promote a learner member"), "{err}");
    eventually("the learner is promoted", || async { ctl(port0, &["member", "promote", &id]).0 }).await;
    assert!(!learner.status().await.expect("status").is_learner());
    assert_eq!(learner.get("k", None).await.expect("linearizable read").kvs()[0].value(), b"v");
}

/// Removing the leader: the others elect a new one and keep every write; the removed member stops.
#[tokio::test]
async fn removing_the_leader_keeps_the_cluster_and_stops_the_removed_member() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader().await;
    let other = (leader + 1) % 3;
    let mut client = c.members[other].client().await;
    client.put("before", "removal", None).await.expect("put");
    let leader_id = c.members[leader].client().await.status().await.expect("status").leader();

    let (ok, out, err) =
        ctl_change(c.members[other].client_port, &["member", "remove", &format!("{leader_id:x}")]).await;
    assert!(ok, "member remove failed: {err}");
    // etcdctl prints the id with `%16x`: padded with spaces to 16 digits.
    assert!(out.contains(&format!("Member {leader_id:16x} removed from cluster")), "{out}");
    let exit = c.members[leader].exited(Duration::from_secs(20)).await.expect("the removed member exits");
    assert!(!exit.success());
    assert!(c.members[leader].log().contains("the member has been permanently removed from the cluster"));

    client.put("after", "removal", None).await.expect("put after the removal");
    let r = client.get("before", None).await.expect("get");
    assert_eq!(r.kvs()[0].value(), b"removal");
    let (_, list, _) = ctl(c.members[other].client_port, &["member", "list"]);
    assert_eq!(list.lines().count(), 2, "{list}");

    // etcd's errors for ids and URLs it does not accept.
    let (ok, _, err) = ctl(c.members[other].client_port, &["member", "remove", &format!("{leader_id:x}")]);
    assert!(!ok && err.contains("etcdserver: member not found"), "{err}");
    let taken = format!("--peer-urls=http://127.0.0.1:{}", c.members[other].peer_port);
    let (ok, _, err) = ctl(c.members[other].client_port, &["member", "add", "x", &taken]);
    assert!(!ok && err.contains("etcdserver: Peer URLs already exists"), "{err}");
}

/// `etcdctl member update` (3.5.1's here; the other tests use 3.4's) moves a member to new peer URLs:
/// the member list shows them at once, and once the member is restarted listening there, the leader
/// reaches it at the new address only (nothing listens on the old one) and it catches up.
#[tokio::test]
async fn a_member_updated_to_a_new_peer_url_is_reached_there() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader().await;
    let moved = (leader + 1) % 3;
    let ctl35 = |port: u16, args: &[&str]| {
        common::etcdctl_with(&common::etcdctl35(), &format!("http://127.0.0.1:{port}"), args, None)
    };
    let leader_port = c.members[leader].client_port;
    let id = c.members[moved].id().await;
    let mut client = c.members[leader].client().await;
    client.put("before", "update", None).await.expect("put");

    let new_port = common::free_port();
    let new_url = format!("http://127.0.0.1:{new_port}");
    let (ok, out, err) =
        ctl35(leader_port, &["member", "update", &format!("{id:x}"), &format!("--peer-urls={new_url}")]);
    assert!(ok, "member update failed: {err}");
    assert!(out.contains(&format!("Member {id:16x} updated in cluster")), "{out}");
    let (_, list, _) = ctl35(leader_port, &["member", "list"]);
    let line = list.lines().find(|l| l.starts_with(&format!("{id:x}"))).unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains(&format!(", {new_url}, ")), "{list}");
    // etcd's checks: a URL another member has, an unknown id.
    let taken = format!("--peer-urls=http://127.0.0.1:{}", c.members[leader].peer_port);
    let (ok, _, err) = ctl35(leader_port, &["member", "update", &format!("{id:x}"), &taken]);
    assert!(!ok && err.contains("etcdserver: Peer URLs already exists"), "{err}");
    let (ok, _, err) = ctl35(leader_port, &["member", "update", "1234", &format!("--peer-urls={new_url}")]);
    assert!(!ok && err.contains("etcdserver: member not found"), "{err}");

    c.members[moved].kill();
    c.members[moved].peer_port = new_port;
    c.members[moved].start();
    client.put("after", "update", None).await.expect("put");
    let moved_client = c.members[moved].client().await;
    eventually("the moved member has the write made after its restart", || {
        let mut mc = moved_client.clone();
        async move {
            mc.get("after", Some(GetOptions::new().with_serializable())).await.is_ok_and(|r| r.count() == 1)
        }
    })
    .await;
}

/// A member that was down while it was removed learns it from the leader when it comes back.
#[tokio::test]
async fn a_member_removed_while_down_stops_when_it_returns() {
    let mut c = Cluster::start(3, &["--strict-reconfig-check=false"]);
    let leader = c.leader().await;
    let gone = (leader + 1) % 3;
    let gone_id = c.members[gone].id().await;
    c.members[gone].kill();
    let mut client = c.members[leader].client().await;
    let removed = client.member_remove(gone_id).await.expect("member remove");
    assert_eq!(removed.members().len(), 2);
    client.put("k", "v", None).await.expect("put");

    c.members[gone].start();
    c.members[gone].exited(Duration::from_secs(30)).await.expect("the removed member stops");
    assert!(c.members[gone].log().contains("the member has been permanently removed from the cluster"));
}

/// `etcdctl move-leader`: leadership goes to the member named, while a writer keeps writing (its
/// requests wait out the transfer, none fails); etcd's errors for a learner, an unknown member, and a
/// request sent to a follower.
#[tokio::test]
async fn move_leader_hands_leadership_over_under_writes() {
    let c = Cluster::start(3, &[]);
    let from = c.leader().await;
    let to = (from + 1) % 3;
    let mut ids = Vec::new();
    for m in &c.members {
        ids.push(m.id().await);
    }
    let target = ids[to];
    let writer = {
        let mut client = c.members[(from + 2) % 3].client().await;
        tokio::spawn(async move {
            let mut written = 0u32;
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_secs(6) {
                client
                    .put("load", written.to_string(), None)
                    .await
                    .expect("a write during the transfer failed");
                written += 1;
            }
            written
        })
    };
    let endpoints: Vec<String> = c.members.iter().map(|m| format!("127.0.0.1:{}", m.client_port)).collect();
    let (ok, out, err) = etcdctl(&endpoints.join(","), &["move-leader", &format!("{target:x}")], None);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("Leadership transferred from {:x} to {target:x}", ids[from])), "{out}");
    assert_eq!(c.leader().await, to);
    assert!(writer.await.unwrap() > 0);

    // To itself: nothing to do. To nobody, or through a follower: etcd's errors.
    let (ok, _, err) = etcdctl(&endpoints.join(","), &["move-leader", &format!("{target:x}")], None);
    assert!(ok, "{err}");
    let (ok, _, err) = etcdctl(&endpoints.join(","), &["move-leader", "1234"], None);
    assert!(!ok && err.contains("etcdserver: bad leader transferee"), "{err}");
    let mut follower = c.members[from].client().await;
    let e = follower.move_leader(target).await.expect_err("asked a follower");
    assert_eq!(status(e).message(), "etcdserver: not leader");
}

/// Downgrade (etcd 3.5's Maintenance.Downgrade): concord's data cannot go back to an older etcd, so it
/// answers every request with the error etcd gives when it will not.
#[tokio::test]
async fn downgrade_is_refused_with_etcds_errors() {
    use concord::pb::etcdserverpb::{maintenance_client::MaintenanceClient, DowngradeRequest};
    let c = Cluster::start(1, &[]);
    c.members[0].client().await;
    let mut m = MaintenanceClient::connect(c.members[0].endpoint()).await.unwrap();
    let ask = |action: i32, version: &str| {
        let req = DowngradeRequest { action, version: version.into() };
        let mut m = m.clone();
        async move { m.downgrade(req).await.expect_err("downgrade") }
    };
    for (action, version, code, text) in [
        (0, "3.4", tonic::Code::InvalidArgument, "etcdserver: invalid downgrade target version"),
        (1, "3.4.0", tonic::Code::InvalidArgument, "etcdserver: invalid downgrade target version"),
        (1, "three", tonic::Code::InvalidArgument, "etcdserver: wrong downgrade target version format"),
        (2, "", tonic::Code::FailedPrecondition, "etcdserver: no inflight downgrade job"),
        (9, "3.4", tonic::Code::Unknown, "etcdserver: unknown method"),
    ] {
        let e = ask(action, version).await;
        assert_eq!((e.code(), e.message()), (code, text), "action {action} {version}");
    }
    m.status(concord::pb::etcdserverpb::StatusRequest {}).await.expect("still serving");
}

/// etcd's `--strict-reconfig-check` health rule: with a voter down, the leader refuses to add a member
/// (the new configuration could not commit anything until it starts), but removing the member that is
/// down is fine.
#[tokio::test]
async fn with_a_voter_down_adding_is_refused_and_removing_it_is_not() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader().await;
    let down = (leader + 1) % 3;
    let port = c.members[leader].client_port;
    // Healthy first: every voter has been answering for 5 s.
    let (ok, out, err) =
        ctl_change(port, &["member", "add", "m9", "--learner", "--peer-urls=http://127.0.0.1:1"]).await;
    assert!(ok, "{out}{err}");
    let learner = env_value(&out, "ETCD_NAME");
    assert_eq!(learner, "m9");
    let list = c.members[leader].client().await.member_list().await.expect("list");
    let learner_id = list.members().iter().find(|m| m.is_learner()).expect("the learner").id();
    let (ok, _, err) = ctl(port, &["member", "remove", &format!("{learner_id:x}")]);
    assert!(ok, "{err}");

    let down_id = c.members[down].id().await;
    c.members[down].kill();
    // Right after the kill the leader may not have missed a heartbeat yet: a learner added meanwhile
    // (harmless: it does not vote) is removed again, until the leader refuses.
    let attempt = std::sync::atomic::AtomicU16::new(10);
    eventually("the leader notices the member is down", || async {
        let url = format!(
            "--peer-urls=http://127.0.0.1:{}",
            attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (ok, _, err) = ctl(port, &["member", "add", "m8", "--learner", &url]);
        if ok {
            let list = c.members[leader].client().await.member_list().await.expect("list");
            let id = list.members().iter().find(|m| m.is_learner()).expect("the learner").id();
            assert!(ctl(port, &["member", "remove", &format!("{id:x}")]).0);
        }
        err.contains("etcdserver: unhealthy cluster")
    })
    .await;
    let (ok, _, err) = ctl(port, &["member", "add", "m8", "--peer-urls=http://127.0.0.1:2"]);
    assert!(!ok && err.contains("etcdserver: unhealthy cluster"), "adding a voter: {err}");
    let (ok, out, err) = ctl(port, &["member", "remove", &format!("{down_id:x}")]);
    assert!(ok, "removing the member that is down: {out}{err}");
}

/// etcd's way out of a lost quorum: two of three members are gone for good, and the third restarts with
/// `--force-new-cluster` as a one-member cluster. It keeps every key at its revision, and also the
/// write it had appended but could not commit (its outcome was unknown to the client; etcd drops such
/// entries, concord keeps them: its commit index is not synced, so they could be acknowledged ones). It
/// stays one member once restarted without the flag, and grows again with `member add`.
#[tokio::test]
async fn force_new_cluster_revives_the_last_member_of_a_cluster_that_lost_its_quorum() {
    let mut c = Cluster::start(3, &[]);
    let s = c.leader().await;
    let mut client = c.members[s].client().await;
    for i in 0..20 {
        client.put(format!("k{i}"), "v", None).await.expect("put");
    }
    let all = || Some(GetOptions::new().with_from_key());
    let before = client.get("", all()).await.expect("get");
    // The other two stop answering: the leader appends the next write but cannot commit it.
    for i in (0..3).filter(|i| *i != s) {
        c.members[i].pause();
    }
    let pending = tokio::time::timeout(Duration::from_secs(2), client.put("pending", "?", None)).await;
    assert!(pending.is_err(), "a write committed without a quorum: {pending:?}");
    for m in &mut c.members {
        m.kill();
    }

    let survivor = &mut c.members[s];
    survivor.extra = vec!["--force-new-cluster".into()];
    survivor.start();
    let port = survivor.client_port;
    let mut client = survivor.client().await;
    let (_, list, _) = ctl(port, &["member", "list"]);
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(list.contains(&format!(", {}, ", survivor.name)), "{list}");
    let after = client.get("", all()).await.expect("linearizable get on the forced member");
    let revisions = |kvs: &[etcd_client::KeyValue]| -> Vec<(Vec<u8>, i64, i64, i64)> {
        let kvs = kvs.iter().filter(|kv| kv.key() != b"pending");
        kvs.map(|kv| (kv.key().to_vec(), kv.create_revision(), kv.mod_revision(), kv.version())).collect()
    };
    assert_eq!(revisions(after.kvs()), revisions(before.kvs()), "every key at its revisions");
    let pending = after.kvs().iter().find(|kv| kv.key() == b"pending").expect("the appended write is kept");
    assert_eq!(pending.mod_revision(), before.header().unwrap().revision() + 1);
    let put = client.put("new", "w", None).await.expect("a write on the one-member cluster");
    assert_eq!(put.header().unwrap().revision(), pending.mod_revision() + 1);

    // The flag is needed once: restarted without it, the member is still a cluster of one.
    survivor.kill();
    survivor.extra = Vec::new();
    survivor.start();
    let mut client = survivor.client().await;
    client.put("restarted", "w", None).await.expect("a write after a restart without the flag");
    let (_, list, _) = ctl(port, &["member", "list"]);
    assert_eq!(list.lines().count(), 1, "{list}");

    // A member of the old cluster that comes back is told it was removed, and stops, as in etcd.
    let old = (s + 1) % 3;
    c.members[old].start();
    let exit = c.members[old].exited(Duration::from_secs(20)).await;
    assert!(exit.is_some_and(|e| !e.success()), "{exit:?}\n{}", c.members[old].log());
    assert!(c.members[old].log().contains("the member has been permanently removed from the cluster"));
    let mut client = c.members[s].client().await;
    client.put("after-old", "w", None).await.expect("a write after the old member came back");

    let new = c.prepare_member("m3");
    let peer = format!("http://127.0.0.1:{}", new.peer_port);
    let (ok, out, err) = ctl_change(port, &["member", "add", "m3", &format!("--peer-urls={peer}")]).await;
    assert!(ok, "member add failed: {err}");
    new.initial_cluster = env_value(&out, "ETCD_INITIAL_CLUSTER");
    new.extra = vec!["--initial-cluster-state".into(), "existing".into()];
    new.start();
    client.put("grown", "w", None).await.expect("a write once both members run");
    let mut joined = c.members[3].client().await;
    let got = joined.get("", all()).await.expect("linearizable get on the new member");
    assert_eq!(got.count(), 20 + 5);
}

/// `--force-new-cluster` on a member while the rest of the old cluster still runs (and has taken writes
/// without it): the forced member stays a cluster of one with the data it had, and the others, whatever
/// their terms and logs, are told they were removed and stop instead of overwriting it.
#[tokio::test]
async fn the_old_members_stop_when_one_is_forced_while_they_run() {
    let mut c = Cluster::start(3, &[]);
    let s = c.leader().await;
    let forced = (s + 1) % 3;
    let mut client = c.members[s].client().await;
    client.put("k", "before", None).await.expect("put");
    eventually("the member to force has the key", || {
        let m = c.members[forced].client();
        async move {
            let got = m.await.get("k", Some(GetOptions::new().with_serializable())).await;
            got.is_ok_and(|r| r.count() == 1)
        }
    })
    .await;
    c.members[forced].kill();
    client.put("k", "without it", None).await.expect("a write the other two commit");
    // The other two go on to terms the forced member never saw: each move of leadership starts one.
    for _ in 0..3 {
        let l = c.leader().await;
        let next = (0..3).find(|i| *i != forced && *i != l).expect("the other running member");
        c.move_leader(l, next).await;
    }

    c.members[forced].extra = vec!["--force-new-cluster".into()];
    c.members[forced].start();
    for i in (0..3).filter(|i| *i != forced) {
        let exit = c.members[i].exited(Duration::from_secs(20)).await;
        assert!(exit.is_some_and(|e| !e.success()), "{exit:?}\n{}", c.members[i].log());
    }
    let mut client = c.members[forced].client().await;
    let got = client.get("k", None).await.expect("linearizable get on the forced member");
    assert_eq!(got.kvs()[0].value(), b"before");
    client.put("k", "after", None).await.expect("a write on the forced member");
    let (_, list, _) = ctl(c.members[forced].client_port, &["member", "list"]);
    assert_eq!(list.lines().count(), 1, "{list}");
}
