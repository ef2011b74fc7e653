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
    run_with(program, endpoints, &[]);
}

fn run_with(program: &str, endpoints: &[String], env: &[(&str, &str)]) {
    let out = Command::new(common::go_program(program))
        .args(endpoints)
        .envs(env.iter().copied())
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
    // Timeouts of real etcd under load are retried (opscheck.go says which).
    run_with("opscheck", &[format!("127.0.0.1:{}", etcd.client_port)], &[("OPSCHECK_REFERENCE", "1")]);
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

/// `clientv3.WithRequireLeader`, as Kubernetes watches: a member that has lost its quorum ends such a
/// watch with "etcdserver: no leader" and refuses such reads, and leaves other watches open. The member
/// watched is the leader, the harder case: openraft's leader does not step down on its own.
#[tokio::test]
async fn require_leader_watches_end_when_the_member_loses_its_quorum() {
    use std::io::{BufRead, BufReader, Write};
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader().await;
    let mut check = Command::new(common::go_program("leadercheck"))
        .arg(format!("127.0.0.1:{}", c.members[leader].client_port))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run leadercheck");
    let mut out = BufReader::new(check.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    assert_eq!(line, "watching\n");
    for i in (0..3).filter(|&i| i != leader) {
        c.members[i].kill();
    }
    writeln!(check.stdin.take().expect("stdin"), "go").expect("write");
    let mut rest = String::new();
    out.read_line(&mut rest).expect("read");
    let status = check.wait().expect("wait");
    assert!(status.success() && rest == "ok\n", "Go clientv3 leadercheck: {rest}");
    // etcd's "no leader" alert reads this gauge.
    let url = format!("http://127.0.0.1:{}/metrics", c.members[leader].client_port);
    let metrics = Command::new("curl").args(["-s", &url]).output().expect("curl");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(metrics.contains("\netcd_server_has_leader 0\n"), "{metrics}");
}

/// gRPC's health service, asked with grpc-go's health client: concord answers as etcd 3.4 does.
#[tokio::test]
async fn the_grpc_health_service_answers_as_etcds() {
    let etcd = Etcd::start();
    common::wait_serving(etcd.client_port).await;
    let c = Cluster::start(1, &[]);
    c.members[0].client().await;
    let ask = |port: u16| {
        let out = Command::new(common::go_program("healthcheck"))
            .arg(format!("127.0.0.1:{port}"))
            .stderr(Stdio::null())
            .output()
            .expect("run healthcheck");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let etcds = ask(etcd.client_port);
    assert!(etcds.contains("check \"\": SERVING"), "{etcds}");
    assert_eq!(ask(c.members[0].client_port), etcds);
}
