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
