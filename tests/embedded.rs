//! concord as a library: a member started inside this test's own tokio runtime, shut down cleanly,
//! and started again on the same data.

use concord::{Config, Server};
use etcd_client::Client;
use std::net::TcpListener;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

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
