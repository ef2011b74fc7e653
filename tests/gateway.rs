//! etcd's JSON gateway, side by side with etcd 3.4: the same curl requests get the same JSON answers
//! (apart from the ids of cluster and member), errors included, and `/v3/watch` streams.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{wait_serving, Cluster, Etcd};
use serde_json::Value;

/// (HTTP status, the CORS headers, body) of a request with curl.
fn with_cors_headers(port: u16, method: &str, path: &str) -> (u16, Vec<String>, String) {
    let out = Command::new("curl")
        .args(["-s", "-i", "-X", method, "-d", "{}", &format!("http://127.0.0.1:{port}{path}")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").expect("headers");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
    let mut cors: Vec<String> = head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("access-control-"))
        .map(str::to_ascii_lowercase)
        .collect();
    cors.sort();
    (status, cors, body.to_string())
}

fn post(port: u16, path: &str, body: &str) -> (u16, Value) {
    let (code, json) = common::post(port, path, body);
    (code, serde_json::from_str(&json).unwrap_or_else(|e| panic!("{path}: {e}: {json}")))
}

/// What two servers may answer differently: their ids, what each reports about itself, and time.
fn comparable(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        if let Value::Object(m) = v {
            for k in [
                "cluster_id",
                "member_id",
                "raft_term",
                "version",
                "dbSize",
                "dbSizeInUse",
                "leader",
                "raftIndex",
                "raftTerm",
                "raftAppliedIndex",
            ] {
                m.remove(k);
            }
            // The seconds left on a lease depend on when each server was asked.
            if m.contains_key("grantedTTL") {
                m.remove("TTL");
            }
            m.values_mut().for_each(strip);
        } else if let Value::Array(a) = v {
            a.iter_mut().for_each(strip);
        }
    }
    strip(&mut v);
    v
}

const CALLS: &[(&str, &str)] = &[
    ("/v3/kv/put", r#"{"key": "Zm9v", "value": "YmFy"}"#),
    ("/v3/kv/range", r#"{"key": "Zm9v"}"#),
    ("/v3/kv/range", r#"{"key": "bm9uZQ=="}"#),
    ("/v3/kv/range", r#"{"key": "Zm9v", "range_end": "Zm9w", "count_only": true}"#),
    ("/v3/kv/range", r#"{"key": "", "rangeEnd": "Zm9w"}"#),
    ("/v3/kv/range", r#"{"key": "Zm9v", "revision": "100"}"#),
    (
        "/v3/kv/txn",
        r#"{"compare":[{"target":"CREATE","key":"Zm9v","createRevision":"2"}],"success":[{"requestPut":{"key":"Zm9v","value":"YmF6"}}],"failure":[{"requestRange":{"key":"Zm9v"}}]}"#,
    ),
    (
        "/v3/kv/txn",
        r#"{"compare":[{"target":"VALUE","key":"Zm9v","value":"bm8="}],"failure":[{"requestRange":{"key":"Zm9v"}}]}"#,
    ),
    ("/v3/kv/deleterange", r#"{"key": "Zm9v", "prev_kv": true}"#),
    ("/v3/lease/grant", r#"{"TTL": 30, "ID": 4242}"#),
    ("/v3/kv/put", r#"{"key": "bGVhc2Vk", "value": "eA==", "lease": "4242"}"#),
    ("/v3/lease/timetolive", r#"{"ID": 4242, "keys": true}"#),
    ("/v3/kv/lease/revoke", r#"{"ID": 4242}"#),
    ("/v3/kv/compaction", r#"{"revision": "2"}"#),
    ("/v3/kv/range", r#"{"key": "Zm9v", "revision": "1"}"#),
    ("/v3/kv/put", r#"{"key": "", "value": "YmFy"}"#),
    ("/v3/maintenance/status", "{}"),
    ("/v3beta/kv/range", r#"{"key": "Zm9v"}"#),
];

#[tokio::test]
async fn curl_gets_the_same_json_from_concord_as_from_etcd() {
    let etcd = Etcd::start();
    wait_serving(etcd.client_port).await;
    let c = Cluster::start(1, &[]);
    c.members[0].client().await;
    let concord = c.members[0].client_port;
    for (path, body) in CALLS {
        let (etcd_code, etcd_json) = post(etcd.client_port, path, body);
        let (code, json) = post(concord, path, body);
        assert_eq!(code, etcd_code, "{path} {body}: {json} against etcd's {etcd_json}");
        assert_eq!(comparable(json), comparable(etcd_json), "{path} {body}");
    }
    // CORS as etcd's default allows it: on answers, on a browser's preflight, and a plain-text refusal
    // of any method but POST.
    for (method, path) in [("POST", "/v3/kv/range"), ("OPTIONS", "/v3/kv/range"), ("GET", "/v3/kv/range")] {
        let (status, cors, body) = with_cors_headers(concord, method, path);
        let (etcd_status, etcd_cors, etcd_body) = with_cors_headers(etcd.client_port, method, path);
        assert_eq!((status, &cors), (etcd_status, &etcd_cors), "{method} {path}");
        assert!(!cors.is_empty(), "{method} {path}");
        if method != "POST" {
            assert_eq!(body, etcd_body, "{method} {path}");
        }
    }
    // A call the gateway does not know gets etcd's plain-text answer, byte for byte.
    for (path, body) in [("/v3/kv/nope", "{}"), ("/v3beta/nope", "{}")] {
        assert_eq!(common::post(concord, path, body), common::post(etcd.client_port, path, body), "{path}");
    }
}

#[tokio::test]
async fn an_oversized_body_is_refused_before_it_is_read_whole() {
    let c = Cluster::start(1, &["--max-request-bytes", "1024"]);
    c.members[0].client().await;
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    // A small put padded with a megabyte of blanks: only the body's size is wrong.
    std::fs::write(&body, format!(r#"{{"key": "Zm9v", "value": "YmFy"}}{}"#, " ".repeat(1 << 20))).unwrap();
    let (code, json) = post(c.members[0].client_port, "/v3/kv/put", &format!("@{}", body.display()));
    assert_eq!(code, 400, "{json}");
    assert_eq!(json["message"], "etcdserver: request is too large");
}

#[tokio::test]
async fn a_watch_streams_one_json_line_per_response() {
    let c = Cluster::start(1, &[]);
    c.members[0].client().await;
    let port = c.members[0].client_port;
    // curl gives up after 30 s: a line that never comes fails the test instead of hanging it.
    let mut watch = Command::new("curl")
        .args([
            "-s",
            "-N",
            "--max-time",
            "30",
            "-X",
            "POST",
            "-d",
            r#"{"create_request": {"key": "d2F0Y2hlZA=="}}"#,
        ])
        .arg(format!("http://127.0.0.1:{port}/v3/watch"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let created: Value = serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("JSON");
    assert_eq!(created["result"]["created"], true, "{created}");
    post(port, "/v3/kv/put", r#"{"key": "d2F0Y2hlZA==", "value": "MQ=="}"#);
    let event: Value = serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("JSON");
    let kv = &event["result"]["events"][0]["kv"];
    assert_eq!((kv["key"].as_str(), kv["value"].as_str()), (Some("d2F0Y2hlZA=="), Some("MQ==")), "{event}");
    // A line of 16 KB: the server gathers it before writing (src/api/coalesce.rs) and must still write it
    // while the client only waits.
    let big = "eHh4".repeat(4_000); // "xxx" 4,000 times
    post(port, "/v3/kv/put", &format!(r#"{{"key": "d2F0Y2hlZA==", "value": "{big}"}}"#));
    let event: Value = serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("JSON");
    assert_eq!(event["result"]["events"][0]["kv"]["value"].as_str(), Some(big.as_str()));
    let _ = watch.kill();
    let _ = watch.wait();
}

/// A keepalive through the gateway answers once and ends, as etcd's: grpc-gateway closes the request
/// stream after the body's messages, and etcd's LeaseKeepAlive returns when its client does (a watch,
/// above, goes on). Compared with etcd 3.5.1, whose answer to the same curl ends the same way.
#[tokio::test]
async fn a_keepalive_answers_once_and_ends_as_etcds() {
    let c = Cluster::start(1, &[]);
    c.members[0].client().await;
    let etcd = Etcd::start_35();
    wait_serving(etcd.client_port).await;
    for port in [c.members[0].client_port, etcd.client_port] {
        let (code, granted) = post(port, "/v3/lease/grant", r#"{"TTL": 30, "ID": 1234}"#);
        assert_eq!((code, granted["ID"].as_str()), (200, Some("1234")), "{granted}");
        // curl gives up after 10 s: a stream left open fails the test instead of hanging it.
        let out = Command::new("curl")
            .args(["-s", "-N", "-m", "10", "-X", "POST", "-d", r#"{"ID": 1234}"#])
            .arg(format!("http://127.0.0.1:{port}/v3/lease/keepalive"))
            .output()
            .expect("curl");
        assert!(out.status.success(), "the keepalive stream did not end: {out:?}");
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(
            (lines[0]["result"]["ID"].as_str(), lines[0]["result"]["TTL"].as_str()),
            (Some("1234"), Some("30"))
        );
    }
}
