//! etcd's own Go client (clientv3 from Debian's etcd 3.4 source) against concord: tests/go/kvcheck.go
//! exits non-zero on the first behaviour that differs from etcd's. It runs against real etcd too, so the
//! check itself is held to etcd's behaviour.

mod common;

use std::process::{Command, Stdio};

use common::{Cluster, Etcd};

fn run_kvcheck(endpoints: &[String]) {
    run("kvcheck", endpoints);
}

fn run(program: &str, endpoints: &[String]) {
    let out = Command::new(common::go_program(program))
        .args(endpoints)
        .stderr(Stdio::null())
        .output()
        .expect("run kvcheck");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.trim() == "ok", "Go clientv3 {program} failed: {stdout}");
}

#[tokio::test]
async fn go_clientv3_operations_against_three_members() {
    let c = Cluster::start(3, &[]);
    c.leader().await;
    let endpoints: Vec<String> = c.members.iter().map(|m| format!("127.0.0.1:{}", m.client_port)).collect();
    run("opscheck", &endpoints);
}

#[tokio::test]
async fn the_go_operations_check_passes_against_real_etcd() {
    let etcd = Etcd::start();
    run("opscheck", &[format!("127.0.0.1:{}", etcd.client_port)]);
}

#[tokio::test]
async fn go_clientv3_against_one_member() {
    let c = Cluster::start(1, &[]);
    c.members[0].client().await;
    run_kvcheck(&[format!("127.0.0.1:{}", c.members[0].client_port)]);
}

#[tokio::test]
async fn go_clientv3_against_a_follower_of_three() {
    let c = Cluster::start(3, &[]);
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    run_kvcheck(&[format!("127.0.0.1:{}", c.members[follower].client_port)]);
}

#[tokio::test]
async fn the_go_check_passes_against_real_etcd() {
    let etcd = Etcd::start();
    // clientv3 waits for the server to come up (DialTimeout); no sleep needed.
    run_kvcheck(&[format!("127.0.0.1:{}", etcd.client_port)]);
}
