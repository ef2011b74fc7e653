//! `concord bench` drives a real server and reports what it did (a functional check, not a timing).

mod common;

use std::process::Command;

use common::Cluster;

fn bench(endpoint: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args([
            "bench",
            "--endpoints",
            endpoint,
            "--json",
            "--clients",
            "4",
            "--conns",
            "2",
            "--total",
            "200",
        ])
        .args(args)
        .output()
        .expect("run concord bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON report")
}

#[tokio::test]
async fn bench_workloads_run_against_a_server() {
    let c = Cluster::start(1, &[]);
    let mut kv = c.members[0].client().await;
    let ep = format!("127.0.0.1:{}", c.members[0].client_port);

    let r = bench(&ep, &["put", "--key-space-size", "50", "--sequential-keys", "--val-size", "256"]);
    assert_eq!((r["requests"].as_u64(), r["errors"].as_u64()), (Some(200), Some(0)), "{r}");
    let keys =
        kv.get("", Some(etcd_client::GetOptions::new().with_all_keys().with_count_only())).await.unwrap();
    assert_eq!(keys.count(), 50, "sequential keys cover the key space");
    assert_eq!(keys.header().unwrap().revision(), 201, "every put was applied once");

    for args in [
        &["range", "foo"][..],
        &["range", "foo", "--consistency", "s"],
        &["txn-put", "--txn-ops", "4", "--key-space-size", "1000"],
        &["txn-mixed", "--key-space-size", "10"],
        &["lease-keepalive"],
        &["stm", "--accounts", "5"],
    ] {
        let r = bench(&ep, args);
        assert_eq!((r["requests"].as_u64(), r["errors"].as_u64()), (Some(200), Some(0)), "{args:?}: {r}");
        assert!(r["p99_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap());
    }
}

#[tokio::test]
async fn the_watch_workload_counts_every_delivered_event() {
    let c = Cluster::start(1, &[]);
    c.members[0].client().await;
    let ep = format!("127.0.0.1:{}", c.members[0].client_port);
    let r = bench(&ep, &["watch", "--watchers", "30", "--streams", "3"]);
    // 200 puts, each delivered to 30 watchers.
    assert_eq!((r["requests"].as_u64(), r["errors"].as_u64()), (Some(6000), Some(0)), "{r}");
}
