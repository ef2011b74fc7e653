//! concord as a library: a member started inside this test's own tokio runtime, shut down cleanly,
//! and started again on the same data.

mod common;

use common::free_port;
use concord::{Config, Server};
use etcd_client::Client;

fn config(dir: &std::path::Path, client: u16, peer: u16) -> Config {
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    Config {
        name: "embedded".into(),
        data_dir: Some(dir.join("data")),
        listen_client_urls: vec![c.clone()],
        advertise_client_urls: vec![c],
        listen_peer_urls: vec![p.clone()],
        initial_advertise_peer_urls: vec![p],
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_server_starts_serves_and_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());

    let server = Server::start(config(dir.path(), client, peer)).await.unwrap();
    assert_eq!(server.client_addrs()[0].port(), client);
    let mut kv = Client::connect([format!("http://127.0.0.1:{client}")], None).await.unwrap();
    // The single member elects itself; the first write waits for that, not for a timer.
    kv.put("embedded", "yes", None).await.unwrap();
    server.shutdown().await.unwrap();
    assert!(kv.get("embedded", None).await.is_err(), "nothing serves after shutdown");

    let server = Server::start(config(dir.path(), client, peer)).await.unwrap();
    let mut kv = Client::connect([format!("http://127.0.0.1:{client}")], None).await.unwrap();
    let r = kv.get("embedded", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"yes");
    server.shutdown().await.unwrap();
}

/// Regression test for a bug concord-chaos found: a deposed leader's lease clock proposed the revoke of a
/// lease it had seen expire, the proposal was passed on to the new leader, and the new leader revoked a
/// lease it had just renewed. Leader-only proposals are never passed on: a member that does not lead
/// refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_only_proposal_is_never_passed_on_to_the_leader() {
    use concord::raft::node::NodeError;
    use concord::raft::Request;

    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> =
        ports.iter().enumerate().map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}")).collect();
    let mut servers = Vec::new();
    for (i, (c, p)) in ports.iter().enumerate() {
        let config = Config {
            name: format!("m{i}"),
            data_dir: Some(dir.path().join(format!("m{i}"))),
            initial_cluster: Some(initial.join(",")),
            heartbeat_interval: 50,
            election_timeout: 500,
            ..config(dir.path(), *c, *p)
        };
        servers.push(Server::start(config).await.unwrap());
    }
    let endpoints: Vec<String> = ports.iter().map(|(c, _)| format!("http://127.0.0.1:{c}")).collect();
    let mut client = Client::connect(endpoints, None).await.unwrap();
    let lease = client.lease_grant(60, None).await.unwrap().id();
    // A member that was not in the grant's quorum may not have heard from the leader yet.
    common::eventually("the first member knows the leader", || async {
        servers[0].node().leader().is_some()
    })
    .await;
    let leader = servers[0].node().leader().expect("a leader after a write");
    let follower = servers.iter().find(|s| s.node().id != leader).expect("a follower").node();

    let refused = follower.write_as_leader(Request::LeaseRevoke { id: lease }).await;
    assert_eq!(refused.err(), Some(NodeError::NoLeader));
    assert!(client.lease_time_to_live(lease, None).await.unwrap().ttl() > 0, "the lease was revoked");
    // An ordinary write from the same member is passed on, and carried out.
    follower.write(Request::LeaseRevoke { id: lease }).await.unwrap();
    assert_eq!(client.lease_time_to_live(lease, None).await.unwrap().ttl(), -1);
    for s in servers {
        s.shutdown().await.unwrap();
    }
}
