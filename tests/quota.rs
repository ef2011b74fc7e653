//! The space quota, side by side with etcd 3.4: past `--quota-backend-bytes` writes fail and the NOSPACE
//! alarm is raised; reads and deletes still work; compact, defrag and `alarm disarm` recover.

mod common;

use common::{etcdctl, status, wait_serving, Cluster, Etcd};

const QUOTA: &str = "3000000";

/// Fills the server on `port` to its quota, then recovers it as etcd's maintenance guide says.
async fn fill_and_recover(port: u16, server: &str) {
    wait_serving(port).await;
    let endpoint = format!("127.0.0.1:{port}");
    let mut client = etcd_client::Client::connect([endpoint.clone()], None).await.expect("connect");
    let value = vec![b'x'; 100 * 1024];
    let mut written = 0;
    let refused = loop {
        match client.put(format!("k{written}"), value.clone(), None).await {
            Ok(_) => written += 1,
            Err(e) => break status(e),
        }
        assert!(written < 200, "{server}: {written} puts of 100 KiB under a 3 MB quota");
    };
    assert!(written > 5, "{server}: refused after {written} puts");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{server}");
    assert_eq!(refused.message(), "etcdserver: mvcc: database space exceeded", "{server}");

    let (_, alarms, _) = etcdctl(&endpoint, &["alarm", "list"], None);
    assert!(alarms.contains("alarm:NOSPACE"), "{server}: {alarms}");
    // While the alarm is up: small writes fail too, reads and deletes work.
    let small = status(client.put("small", "v", None).await.expect_err("put under NOSPACE"));
    assert_eq!(small.message(), "etcdserver: mvcc: database space exceeded", "{server}");
    assert_eq!(client.get("k0", None).await.expect("get").kvs()[0].value(), &value[..], "{server}");
    let opts = etcd_client::DeleteOptions::new().with_prefix();
    let deleted = client.delete("k", Some(opts)).await.expect("delete under NOSPACE");
    assert_eq!(deleted.deleted(), written, "{server}");

    // Recovery: compact, defragment, disarm.
    let rev = deleted.header().expect("header").revision();
    client.compact(rev, None).await.expect("compact");
    let (ok, _, err) = etcdctl(&endpoint, &["defrag"], None);
    assert!(ok, "{server}: defrag: {err}");
    let (ok, out, err) = etcdctl(&endpoint, &["alarm", "disarm"], None);
    assert!(ok && out.contains("alarm:NOSPACE"), "{server}: disarm: {out}{err}");
    let (_, alarms, _) = etcdctl(&endpoint, &["alarm", "list"], None);
    assert!(alarms.trim().is_empty(), "{server}: {alarms}");
    client.put("small", "v", None).await.unwrap_or_else(|e| panic!("{server}: put after recovery: {e}"));
}

#[tokio::test]
async fn a_full_database_refuses_writes_like_etcd_until_compacted_defragmented_and_disarmed() {
    let etcd = Etcd::start_with(&["--quota-backend-bytes", QUOTA]);
    fill_and_recover(etcd.client_port, "etcd 3.4").await;

    let c = Cluster::start(1, &["--quota-backend-bytes", QUOTA]);
    c.members[0].client().await;
    fill_and_recover(c.members[0].client_port, "concord").await;
}
