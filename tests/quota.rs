//! The space quota, side by side with etcd 3.4: past `--quota-backend-bytes` writes fail and the NOSPACE
//! alarm is raised; reads and deletes still work; compact, defrag and `alarm disarm` recover.

mod common;

use common::{etcdctl, eventually, status, wait_serving, Cluster, Etcd};

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

/// Three members: a member that passes the quota raises NOSPACE through the log, so every member
/// refuses writes and reports the alarm on /health (etcd's `ALARM NOSPACE`), and one disarm after
/// compacting and defragmenting every member brings writes back on all of them.
#[tokio::test]
async fn the_nospace_alarm_holds_on_every_member_of_a_cluster() {
    let c = Cluster::start(3, &["--quota-backend-bytes", QUOTA]);
    let mut clients = Vec::new();
    for m in &c.members {
        clients.push(m.client().await);
    }
    let value = vec![b'x'; 100 * 1024];
    let mut written = 0;
    while clients[0].put(format!("k{written}"), value.clone(), None).await.is_ok() {
        written += 1;
        assert!(written < 200, "{written} puts of 100 KiB under a 3 MB quota");
    }
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    for (m, client) in c.members.iter().zip(&mut clients) {
        let refused = status(client.put("small", "v", None).await.expect_err("put under NOSPACE"));
        let logs = || c.members.iter().map(|m| format!("== {}\n{}", m.name, m.log())).collect::<String>();
        assert_eq!(refused.message(), "etcdserver: mvcc: database space exceeded", "{}\n{}", m.name, logs());
        // Applied on each member in its own time: a follower may refuse through the leader first.
        let url = format!("{}/health", m.endpoint());
        eventually(&format!("{} reports the alarm on /health", m.name), || {
            let url = url.clone();
            async move {
                let out = std::process::Command::new("curl").args(["-s", &url]).output().expect("curl");
                out.stdout == br#"{"health":"false","reason":"ALARM NOSPACE"}"#
            }
        })
        .await;
    }

    let opts = etcd_client::DeleteOptions::new().with_prefix();
    let deleted = clients[1].delete("k", Some(opts)).await.expect("delete under NOSPACE");
    assert_eq!(deleted.deleted(), written);
    clients[2].compact(deleted.header().expect("header").revision(), None).await.expect("compact");
    let all = endpoints.join(",");
    let (ok, out, err) = etcdctl(&all, &["defrag"], None);
    assert!(ok && out.matches("Finished defragmenting").count() == 3, "defrag: {out}{err}");
    let (ok, _, err) = etcdctl(&endpoints[0], &["alarm", "disarm"], None);
    assert!(ok, "disarm: {err}");
    for (m, client) in c.members.iter().zip(&mut clients) {
        client
            .put("small", &*m.name, None)
            .await
            .unwrap_or_else(|e| panic!("{}: put after recovery: {e}", m.name));
    }
}
