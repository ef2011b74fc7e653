//! The Lease service against real `concord` processes, driven by the etcd-client crate.

mod common;

use std::time::{Duration, Instant};

use common::{status, Cluster};
use etcd_client::{EventType, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn grant_attach_keepalive_time_to_live_and_revoke() {
    let c = Cluster::start(1, &[]);
    let mut client = c.members[0].client().await;
    let lease = client.lease_grant(60, None).await.unwrap();
    assert!(lease.id() > 0);
    assert_eq!(lease.ttl(), 60);
    let id = lease.id();
    client.put("a", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    client.put("b", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    client.put("c", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    client.put("c", "2", None).await.unwrap(); // moved off the lease

    let ttl = client.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    assert_eq!((ttl.granted_ttl(), ttl.keys()), (60, &[b"a".to_vec(), b"b".to_vec()][..]));
    assert!((58..=60).contains(&ttl.ttl()), "remaining {}", ttl.ttl());

    let (mut keeper, mut responses) = client.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let r = tokio::time::timeout(WAIT, responses.message()).await.unwrap().unwrap().unwrap();
    assert_eq!((r.id(), r.ttl()), (id, 60));

    let leases = client.leases().await.unwrap();
    assert_eq!(leases.leases().iter().map(|l| l.id()).collect::<Vec<_>>(), [id]);

    // Revoking deletes every attached key in one revision, with a delete event for each.
    let (_w, mut watch) = client.watch("", Some(WatchOptions::new().with_all_keys())).await.unwrap();
    let revoked = client.lease_revoke(id).await.unwrap();
    let rev = revoked.header().unwrap().revision();
    let r = tokio::time::timeout(WAIT, watch.message()).await.unwrap().unwrap().unwrap();
    let events: Vec<(EventType, &[u8], i64)> = r
        .events()
        .iter()
        .map(|e| (e.event_type(), e.kv().unwrap().key(), e.kv().unwrap().mod_revision()))
        .collect();
    assert_eq!(events, [(EventType::Delete, &b"a"[..], rev), (EventType::Delete, &b"b"[..], rev)]);
    let got = client.get("c", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"2", "a key moved off the lease stays");
    assert!(client.get("a", None).await.unwrap().kvs().is_empty());
}

#[tokio::test]
async fn lease_errors_are_etcds() {
    let c = Cluster::start(1, &[]);
    let mut client = c.members[0].client().await;
    let e = status(client.put("k", "v", Some(PutOptions::new().with_lease(42))).await.unwrap_err());
    assert_eq!((e.code(), e.message()), (Code::NotFound, "etcdserver: requested lease not found"));
    client.lease_grant(10, Some(LeaseGrantOptions::new().with_id(42))).await.unwrap();
    let e = status(client.lease_grant(10, Some(LeaseGrantOptions::new().with_id(42))).await.unwrap_err());
    assert_eq!((e.code(), e.message()), (Code::FailedPrecondition, "etcdserver: lease already exists"));
    let e = status(client.lease_grant(9_000_000_001, None).await.unwrap_err());
    assert_eq!((e.code(), e.message()), (Code::OutOfRange, "etcdserver: too large lease TTL"));
    let e = status(client.lease_revoke(7).await.unwrap_err());
    assert_eq!((e.code(), e.message()), (Code::NotFound, "etcdserver: requested lease not found"));
    let ttl = client.lease_time_to_live(7, None).await.unwrap();
    assert_eq!((ttl.ttl(), ttl.granted_ttl()), (-1, 0));
    // A keepalive for an unknown lease answers TTL 0, which the crate reports as "lease not found".
    let e = client.lease_keep_alive(7).await.unwrap_err();
    assert!(e.to_string().contains("lease not found"), "{e}");
    // A TTL below the minimum (1.5 election timeouts: 750 ms here, rounded up) is raised to it.
    assert_eq!(client.lease_grant(0, None).await.unwrap().ttl(), 1);
}

#[tokio::test]
async fn an_expired_lease_deletes_its_keys_through_raft() {
    let c = Cluster::start(1, &[]);
    let mut client = c.members[0].client().await;
    let id = client.lease_grant(1, None).await.unwrap().id();
    let put = client.put("eph", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    let (_w, mut watch) = client.watch("eph", None).await.unwrap();
    let start = Instant::now();
    let r = tokio::time::timeout(WAIT, watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(r.events()[0].event_type(), EventType::Delete);
    assert_eq!(r.events()[0].kv().unwrap().mod_revision(), put.header().unwrap().revision() + 1);
    assert!(start.elapsed() >= Duration::from_millis(900), "not before its TTL of 1 s");
    assert_eq!(client.lease_time_to_live(id, None).await.unwrap().ttl(), -1);
}

#[tokio::test]
async fn leases_and_their_keys_survive_a_restart() {
    let mut c = Cluster::start(1, &[]);
    let mut client = c.members[0].client().await;
    let id = client.lease_grant(100, None).await.unwrap().id();
    client.put("kept", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    c.members[0].kill();
    c.members[0].start();
    let mut client = c.members[0].client().await;
    let ttl = client.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    assert_eq!((ttl.granted_ttl(), ttl.keys()), (100, &[b"kept".to_vec()][..]));
    assert!(ttl.ttl() >= 99, "the clock restarts with the full TTL: {}", ttl.ttl());
    client.lease_revoke(id).await.unwrap();
    assert!(client.get("kept", None).await.unwrap().kvs().is_empty());
}

/// Keepalives sent to a follower reach the leader; when the leader dies, the new one starts every
/// lease's clock afresh, so a lease kept alive through the failover never expires.
#[tokio::test]
async fn a_lease_kept_alive_through_a_follower_survives_the_leader_crashing() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let mut client = c.members[follower].client().await;
    let id = client.lease_grant(3, None).await.unwrap().id();
    client.put("held", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    let (mut keeper, mut responses) = client.lease_keep_alive(id).await.unwrap();
    let mut keepalive = async || {
        keeper.keep_alive().await.unwrap();
        tokio::time::timeout(WAIT, responses.message()).await.unwrap().unwrap().unwrap().ttl()
    };
    assert_eq!(keepalive().await, 3);
    c.members[leader].kill();
    // Keep the lease alive for twice its TTL across the failover (a keepalive may fail while there is
    // no leader: it answers NoLeader, and the next one goes through).
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(keepalive().await, 3, "the lease is alive");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let got = client.get("held", None).await.unwrap();
    assert_eq!(got.kvs().len(), 1, "the lease's key survived");
}

#[tokio::test]
async fn a_leader_cut_off_from_its_quorum_renews_no_lease() {
    let c = Cluster::start(3, &[]);
    let leader = c.leader().await;
    let followers = [(leader + 1) % 3, (leader + 2) % 3];
    let mut client = c.members[leader].client().await;
    let id = client.lease_grant(5, None).await.unwrap().id();
    let (mut keeper, mut responses) = client.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert_eq!(responses.message().await.unwrap().unwrap().ttl(), 5);
    for f in followers {
        c.members[f].pause();
    }
    // It still takes itself for the leader but cannot confirm it: a renewal now could promise the lease
    // past the expiry a new leader elected on the other side would apply (found by concord-chaos).
    keeper.keep_alive().await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(3), responses.message()).await;
    for f in followers {
        c.members[f].resume();
    }
    assert!(!matches!(&answer, Ok(Ok(Some(r))) if r.ttl() > 0), "renewed without a quorum: {answer:?}");
}

#[tokio::test]
async fn leases_survive_a_restart_of_the_whole_cluster() {
    let mut c = Cluster::start(3, &[]);
    c.leader().await;
    let mut client = c.members[0].client().await;
    let id = client.lease_grant(100, None).await.unwrap().id();
    client.put("everyone", "1", Some(PutOptions::new().with_lease(id))).await.unwrap();
    for m in &mut c.members {
        m.kill();
    }
    for m in &mut c.members {
        m.start();
    }
    c.leader().await;
    let mut client = c.members[1].client().await;
    let ttl = client.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    assert_eq!((ttl.granted_ttl(), ttl.keys()), (100, &[b"everyone".to_vec()][..]));
    let (_keeper, _) = client.lease_keep_alive(id).await.unwrap();
    assert_eq!(client.get("everyone", None).await.unwrap().kvs().len(), 1);
}

/// Moves leadership from the current leader to the next member; returns the new leader's index.
async fn move_leader(c: &Cluster) -> usize {
    let from = c.leader().await;
    c.move_leader(from, (from + 1) % c.members.len()).await;
    c.leader().await
}

async fn raft_index(member: &common::Member) -> u64 {
    member.client().await.status().await.unwrap().raft_index()
}

/// Lease `id`'s TTL as `member` (the leader) reports it.
async fn ttl_on(member: &common::Member, id: i64) -> i64 {
    member.client().await.lease_time_to_live(id, None).await.unwrap().ttl()
}

/// `--experimental-enable-lease-checkpoint`: the leader records what is left of a lease, so that a new
/// leader starts it from there instead of from its whole TTL (which a run of leader changes could
/// otherwise keep renewing for ever); a keepalive gives it its whole TTL back, across a change of
/// leader too.
#[tokio::test]
async fn checkpointed_leases_keep_what_was_left_across_leader_changes() {
    let flags = ["--experimental-enable-lease-checkpoint", "--experimental-lease-checkpoint-interval=1s"];
    let c = Cluster::start(3, &flags);
    let leader = c.leader().await;
    let id = c.members[leader].client().await.lease_grant(30, None).await.unwrap().id();
    let granted = Instant::now();
    // Once the leader has logged a checkpoint (nothing else moves an idle cluster's raft index, but a
    // new leader's first entry: then try again), the next leader starts the lease from what was left
    // then, plus an election timeout (as etcd), where without it the lease would have its 30 s again.
    let deadline = Instant::now() + WAIT;
    let mut leader = c.leader().await;
    loop {
        let before = raft_index(&c.members[leader]).await;
        common::eventually("the leader logs a checkpoint", || async {
            raft_index(&c.members[leader]).await > before
        })
        .await;
        leader = move_leader(&c).await;
        let ttl = ttl_on(&c.members[leader], id).await;
        let elapsed = granted.elapsed().as_secs() as i64;
        assert!(ttl <= 30 && ttl >= 30 - elapsed - 2, "ttl {ttl} after {elapsed} s");
        if ttl < 30 {
            break;
        }
        assert!(Instant::now() < deadline, "no new leader started the lease from a checkpoint");
    }
    // A keepalive clears the checkpoint: the next leader starts the lease from its whole TTL again.
    // First let the leader checkpoint it well below its TTL (24 s left, then one more checkpoint), so
    // that a checkpoint left in place could not pass for a cleared one.
    let leader = c.leader().await;
    common::eventually("24 s are left", || async { ttl_on(&c.members[leader], id).await <= 24 }).await;
    let before = raft_index(&c.members[leader]).await;
    common::eventually("the leader logs a checkpoint", || async {
        raft_index(&c.members[leader]).await > before
    })
    .await;
    let (mut keeper, mut answers) = c.members[leader].client().await.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert_eq!(answers.message().await.unwrap().expect("a keepalive answer").ttl(), 30);
    let renewed = Instant::now();
    let leader = move_leader(&c).await;
    let ttl = ttl_on(&c.members[leader], id).await;
    // Checkpoints taken since the keepalive cost it the seconds gone by, no more.
    let gone = renewed.elapsed().as_secs() as i64;
    assert!(ttl >= 29 - gone && ttl > 25, "ttl {ttl} {gone} s after a keepalive");
}

/// A lease checkpoint is kept on disk: a member restarted after its log was purged past the checkpoint
/// (`--snapshot-count 1`) still starts the lease from what was left.
#[tokio::test]
async fn a_lease_checkpoint_survives_a_restart() {
    let flags = [
        "--experimental-enable-lease-checkpoint",
        "--experimental-lease-checkpoint-interval=1s",
        "--snapshot-count",
        "1",
    ];
    let mut c = Cluster::start(1, &flags);
    // The member's own entry at start must not pass for the checkpoint below (the full run once
    // published it after the grant).
    c.members[0].published().await;
    let mut client = c.members[0].client().await;
    let id = client.lease_grant(30, None).await.unwrap().id();
    let before = raft_index(&c.members[0]).await;
    common::eventually("the leader logs a checkpoint", || async { raft_index(&c.members[0]).await > before })
        .await;
    // One more entry, so that a snapshot after the checkpoint lets the log go.
    client.put("after", "checkpoint", None).await.unwrap();
    c.members[0].kill();
    c.members[0].start();
    let ttl = ttl_on(&c.members[0], id).await;
    assert!(ttl < 30, "ttl {ttl}: the restarted member started the lease afresh");
}
