//! etcd's HTTP endpoints on the client port, probed with curl as load balancers and Prometheus do.

mod common;

use std::process::Command;

use common::Cluster;

/// (HTTP status, body) of a GET with curl.
fn get(port: u16, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", &format!("http://127.0.0.1:{port}{path}")])
        .output()
        .expect("curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.parse().expect("status code"), body.to_string())
}

fn metric(text: &str, name: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .unwrap_or_else(|| panic!("{name} in\n{text}"));
    line.rsplit_once(' ').expect("value").1.parse().expect("number")
}

#[tokio::test]
async fn health_version_and_metrics_answer_like_etcd() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader().await;
    let port = c.members[leader].client_port;
    let mut client = c.members[leader].client().await;
    client.put("k", "v", None).await.expect("put");

    assert_eq!(get(port, "/health"), (200, r#"{"health":"true","reason":""}"#.to_string()));
    assert_eq!(get(port, "/version").1, r#"{"etcdserver":"3.5.0","etcdcluster":"3.5.0"}"#);
    assert_eq!(get(port, "/livez"), (200, "ok\n".to_string()));
    assert_eq!(get(port, "/readyz").0, 200);
    assert_eq!(get(port, "/health?serializable=true").0, 200);

    let (status, text) = get(port, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "etcd_server_has_leader"), 1.0);
    assert_eq!(metric(&text, "etcd_server_is_leader"), 1.0);
    assert!(metric(&text, "etcd_server_leader_changes_seen_total") >= 1.0);
    assert!(metric(&text, "etcd_disk_wal_fsync_duration_seconds_count") >= 1.0);
    assert!(metric(&text, "etcd_mvcc_db_total_size_in_bytes") > 0.0);
    assert_eq!(metric(&text, "etcd_debugging_mvcc_current_revision"), 2.0);
    // At least the leader's first (blank) entry and the put's.
    assert!(metric(&text, "etcd_server_proposals_committed_total") >= 2.0);
    assert!(metric(&text, "etcd_server_proposals_applied_total") >= 2.0);
    let put = r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
    assert_eq!(metric(&text, put), 1.0);
    // Prometheus' process collector, as every Go program (etcd too) exports it.
    assert!(metric(&text, "process_resident_memory_bytes") > 1e6);
    assert!(metric(&text, "process_open_fds") > 0.0);
    assert!(metric(&text, "process_start_time_seconds") > 1.7e9);
    // The leader times its heartbeats to each peer, under etcd's name and label.
    let rtt = text
        .lines()
        .find(|l| l.starts_with("etcd_network_peer_round_trip_time_seconds_count{To=\""))
        .unwrap_or_else(|| panic!("no peer round trip in {text}"));
    assert!(rtt.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap() >= 1.0, "{rtt}");
    // etcd's identity gauges, and its MVCC counters, counted as etcd counts them: a txn of two
    // operations is one txn, one put and one range.
    assert_eq!(metric(&text, r#"etcd_server_version{server_version="3.5.0"}"#), 1.0);
    assert_eq!(metric(&text, r#"etcd_cluster_version{cluster_version="3.5"}"#), 1.0);
    let status = client.status().await.expect("status");
    let member = status.header().expect("header").member_id();
    let id = format!(r#"etcd_server_id{{server_id="{member:x}"}}"#);
    assert_eq!(metric(&text, &id), 1.0);
    assert_eq!(metric(&text, "etcd_server_quota_backend_bytes"), 2147483648.0);
    assert_eq!(metric(&text, "etcd_mvcc_put_total "), 1.0);
    let ranges = metric(&text, "etcd_mvcc_range_total ");
    client.delete("k", None).await.expect("delete");
    let txn = etcd_client::Txn::new()
        .and_then([etcd_client::TxnOp::put("t", "v", None), etcd_client::TxnOp::get("t", None)]);
    client.txn(txn).await.expect("txn");
    let text = get(port, "/metrics").1;
    assert_eq!(metric(&text, "etcd_mvcc_put_total "), 2.0);
    assert_eq!(metric(&text, "etcd_mvcc_delete_total "), 1.0);
    assert_eq!(metric(&text, "etcd_mvcc_txn_total "), 1.0);
    assert_eq!(metric(&text, "etcd_mvcc_range_total "), ranges + 1.0);

    let empty_key = client.put("", "v", None).await;
    assert!(empty_key.is_err());
    let text = get(port, "/metrics").1;
    let refused = r#"grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="Put","#;
    assert_eq!(metric(&text, refused), 1.0);

    // A member cut off from its quorum is unhealthy, with etcd's answer: 503 and a reason.
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &others {
        c.members[i].kill();
    }
    let (status, body) = get(port, "/health");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""health":"false","reason":"QGET ERROR:"#), "{body}");
    assert_eq!(get(port, "/readyz").0, 503);
}

/// `--listen-metrics-urls`: a listener of its own for the HTTP endpoints, and nothing else on it.
#[tokio::test]
async fn metrics_urls_serve_the_http_endpoints_only() {
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let c = Cluster::start(1, &["--listen-metrics-urls", &url]);
    c.members[0].client().await;
    let (status, text) = get(port, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "etcd_server_has_leader"), 1.0);
    assert_eq!(get(port, "/health"), (200, r#"{"health":"true","reason":""}"#.to_string()));
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", "{}"])
        .arg(format!("{url}/v3/kv/range"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404", "the gateway is not on the metrics URL");
    assert_eq!(get(port, "/elsewhere"), (404, "404 page not found\n".to_string()), "Go's answer, as etcd's");
    let (ok, _, _) =
        common::etcdctl(&format!("127.0.0.1:{port}"), &["get", "k", "--command-timeout=3s"], None);
    assert!(!ok, "gRPC is not on the metrics URL");
}
