//! etcd's own Go client (clientv3 from Debian's etcd 3.4 source) against concord: tests/go/kvcheck.go
//! exits non-zero on the first behaviour that differs from etcd's. It runs against real etcd too, so the
//! check itself is held to etcd's behaviour.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::{Cluster, Etcd};

fn kvcheck() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kvcheck");
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/go/kvcheck.go");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(&src)
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gocache"))
            .status()
            .expect("go (install golang-go and golang-etcd-server-dev; scripts/test does)");
        assert!(status.success(), "building tests/go/kvcheck.go failed");
        out
    })
}

fn run_kvcheck(endpoints: &[String]) {
    let out = Command::new(kvcheck()).args(endpoints).stderr(Stdio::null()).output().expect("run kvcheck");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.trim() == "ok", "Go clientv3 check failed: {stdout}");
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
