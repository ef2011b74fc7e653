//! The binary configured the ways etcd is: a YAML `--config-file`, and environment variables
//! (`ETCD_*`, or `CONCORD_*`), with JSON logs on request.

mod common;

use std::process::{Command, Stdio};

use common::{etcdctl, free_port, wait_serving};

struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_yaml_config_file_and_concord_environment_variables_configure_the_member() {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let yaml = format!(
        "name: from-file\ndata-dir: {}\nlisten-client-urls: http://127.0.0.1:{client}\n\
         advertise-client-urls: http://127.0.0.1:{client}\nlisten-peer-urls: http://127.0.0.1:{peer}\n\
         initial-advertise-peer-urls: http://127.0.0.1:{peer}\ninitial-cluster: from-file=http://127.0.0.1:{peer}\n\
         enable-v2: false\nclient-transport-security:\n  client-cert-auth: false\nlog-format: json\n",
        dir.path().join("data").display()
    );
    let file = dir.path().join("etcd.yaml");
    std::fs::write(&file, yaml).unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let _member = Running(
        Command::new(env!("CARGO_BIN_EXE_concord"))
            .env("CONCORD_CONFIG_FILE", &file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_serving(client).await;
    let endpoint = format!("127.0.0.1:{client}");
    let (ok, _, err) = etcdctl(&endpoint, &["put", "k", "v"], None);
    assert!(ok, "{err}");
    let (_, members, _) = etcdctl(&endpoint, &["member", "list"], None);
    assert!(members.contains("from-file"), "{members}");
    assert!(dir.path().join("data").exists());
    let logs = std::fs::read_to_string(dir.path().join("log")).unwrap();
    let first = logs.lines().next().expect("a log line");
    let line: serde_json::Value = serde_json::from_str(first).expect("JSON logs");
    assert!(line.get("level").is_some(), "{first}");
}

/// An etcd 3.4 command line with the flags of etcd's tuning and logging starts concord as it starts
/// etcd: logs go where `--log-outputs` says, as zap's JSON lines with `--logger=zap`, `--enable-grpc-gateway=false` takes the JSON API away (the
/// same 404 as etcd's), and the flags for parts concord does not have are logged as ignored.
#[tokio::test]
async fn etcds_tuning_and_logging_flags_are_taken() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("member.log");
    let log_outputs = format!("--log-outputs={},stderr", log.display());
    let flags = [
        "--logger=zap",
        &log_outputs,
        "--enable-v2=false",
        "--enable-grpc-gateway=false",
        "--max-wals=5",
        "--max-snapshots=5",
        "--pre-vote",
        "--grpc-keepalive-min-time=5s",
        "--grpc-keepalive-interval=1m",
        "--grpc-keepalive-timeout=5s",
        "--backend-batch-interval=100ms",
        "--metrics=basic",
    ];
    let etcd = common::Etcd::start_with(&flags);
    wait_serving(etcd.client_port).await;
    let c = common::Cluster::start(1, &flags);
    c.members[0].client().await;
    for port in [etcd.client_port, c.members[0].client_port] {
        let gone = common::post(port, "/v3/kv/range", r#"{"key":"Zm9v"}"#);
        assert_eq!(gone, (404, "404 page not found\n".to_string()), "port {port}");
    }
    let (ok, _, err) = etcdctl(&c.members[0].endpoint(), &["put", "k", "v"], None);
    assert!(ok, "{err}");
    let logged = std::fs::read_to_string(&log).expect("the log file");
    assert!(logged.contains("concord member started"), "{logged}");
    // With --logger=zap both write zap's JSON lines (etcd's and concord's lines share the file): the
    // same keys first, in the same order (etcd 3.5 names some lines' logger, "raft", among them).
    for line in logged.lines() {
        let fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let keys: Vec<&str> = fields.keys().map(String::as_str).filter(|k| *k != "logger").take(4).collect();
        assert_eq!(keys, ["level", "ts", "caller", "msg"], "{line}");
    }
    assert!(logged.contains("--max-wals=5 is taken for etcd's sake and ignored"), "{logged}");
    assert!(c.members[0].log().contains("concord member started"), "stderr too");

    let refused = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["--enable-v2", "--data-dir", dir.path().join("v2").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--enable-v2: concord serves etcd's v3 API only"), "{err}");
}
