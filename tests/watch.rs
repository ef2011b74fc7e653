//! The Watch service against real `concord` processes, driven by the etcd-client crate (and, where the
//! crate hides a field, by raw gRPC).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;

use common::Cluster;
use etcd_client::{
    CompactionOptions, EventType, Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};

const WAIT: Duration = Duration::from_secs(20);

async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(WAIT, stream.message()).await.expect("a watch response in time").unwrap().unwrap()
}

/// Reads responses until `n` events have arrived: (type, key, value, mod revision).
async fn events(stream: &mut WatchStream, n: usize) -> Vec<(EventType, String, String, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = next(stream).await;
        for e in r.events() {
            let kv = e.kv().unwrap();
            out.push((
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.mod_revision(),
            ));
        }
    }
    assert_eq!(out.len(), n, "no more events than expected");
    out
}

fn put(k: &str, v: &str, rev: i64) -> (EventType, String, String, i64) {
    (EventType::Put, k.into(), v.into(), rev)
}

fn del(k: &str, rev: i64) -> (EventType, String, String, i64) {
    (EventType::Delete, k.into(), String::new(), rev)
}

#[tokio::test]
async fn live_events_history_and_the_key_range_forms() {
    let c = Cluster::start(1, &[]);
    let mut client = c.members[0].client().await;
    client.put("a", "1", None).await.unwrap(); // 2
    client.put("b", "1", None).await.unwrap(); // 3
    client.delete("a", None).await.unwrap(); // 4

    // From revision 2: history, then live events, with no gap and no duplicate.
    let (_w, mut all) =
        client.watch("", Some(WatchOptions::new().with_all_keys().with_start_revision(2))).await.unwrap();
    let (_w, mut single) = client.watch("a", None).await.unwrap();
    let (_w, mut prefix) = client.watch("a", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let (_w, mut range) = client.watch("b", Some(WatchOptions::new().with_range("c"))).await.unwrap();
    let (_w, mut from_key) = client.watch("b", Some(WatchOptions::new().with_from_key())).await.unwrap();
    assert_eq!(events(&mut all, 3).await, [put("a", "1", 2), put("b", "1", 3), del("a", 4)]);

    client.put("a", "2", None).await.unwrap(); // 5
    client.put("ab", "1", None).await.unwrap(); // 6
    client.put("b", "2", None).await.unwrap(); // 7
    client.put("c", "1", None).await.unwrap(); // 8
    let txn = Txn::new().and_then([TxnOp::put("a", "3", None), TxnOp::delete("b", None)]);
    client.txn(txn).await.unwrap(); // 9: one revision, two events, always together

    assert_eq!(
        events(&mut all, 6).await,
        [
            put("a", "2", 5),
            put("ab", "1", 6),
            put("b", "2", 7),
            put("c", "1", 8),
            put("a", "3", 9),
            del("b", 9)
        ]
    );
    assert_eq!(events(&mut single, 2).await, [put("a", "2", 5), put("a", "3", 9)]);
    assert_eq!(events(&mut prefix, 3).await, [put("a", "2", 5), put("ab", "1", 6), put("a", "3", 9)]);
    assert_eq!(events(&mut range, 2).await, [put("b", "2", 7), del("b", 9)]);
    assert_eq!(events(&mut from_key, 3).await, [put("b", "2", 7), put("c", "1", 8), del("b", 9)]);
}

#[tokio::test]
async fn prev_kv_filters_cancel_and_progress() {
    let c = Cluster::start(1, &[]);
    let mut client = c.members[0].client().await;
    let (mut w, mut s) = client.watch("k", Some(WatchOptions::new().with_prev_key())).await.unwrap();
    let (_w, mut no_put) =
        client.watch("k", Some(WatchOptions::new().with_filters([WatchFilterType::NoPut]))).await.unwrap();
    let (_w, mut no_delete) =
        client.watch("k", Some(WatchOptions::new().with_filters([WatchFilterType::NoDelete]))).await.unwrap();
    client.put("k", "1", None).await.unwrap(); // 2
    client.put("k", "2", None).await.unwrap(); // 3
    client.delete("k", None).await.unwrap(); // 4

    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(
            next(&mut s)
                .await
                .events()
                .iter()
                .map(|e| e.prev_kv().map(|p| p.value_str().unwrap().to_string())),
        );
    }
    assert_eq!(
        got,
        [None, Some("1".to_string()), Some("2".to_string())],
        "prev_kv of create, update, delete"
    );
    assert_eq!(events(&mut no_put, 1).await, [del("k", 4)]);
    assert_eq!(events(&mut no_delete, 2).await, [put("k", "1", 2), put("k", "2", 3)]);

    // A progress request is answered with the current revision and no watch id.
    w.request_progress().await.unwrap();
    let r = next(&mut s).await;
    assert_eq!((r.watch_id(), r.header().unwrap().revision(), r.events().len()), (-1, 4, 0));

    w.cancel().await.unwrap();
    let r = next(&mut s).await;
    assert!(r.canceled() && r.watch_id() == w.watch_id());
    client.put("k", "3", None).await.unwrap();
    assert_eq!(events(&mut no_delete, 1).await, [put("k", "3", 5)]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.message()).await.is_err(),
        "a canceled watch is quiet"
    );
}

#[tokio::test]
async fn a_compacted_start_revision_cancels_the_watch_with_the_compaction_point() {
    let c = Cluster::start(1, &[]);
    let mut client = c.members[0].client().await;
    for i in 0..5 {
        client.put("k", i.to_string(), None).await.unwrap();
    }
    client.compact(4, Some(CompactionOptions::new().with_physical())).await.unwrap();
    let (_w, mut s) = client.watch("k", Some(WatchOptions::new().with_start_revision(2))).await.unwrap();
    let r = next(&mut s).await;
    assert!(r.canceled());
    assert_eq!(r.compact_revision(), 4);
    // At the compaction point itself, history is still there.
    let (_w, mut s) = client.watch("k", Some(WatchOptions::new().with_start_revision(4))).await.unwrap();
    assert_eq!(events(&mut s, 3).await, [put("k", "2", 4), put("k", "3", 5), put("k", "4", 6)]);
}

#[tokio::test]
async fn invalid_ranges_and_duplicate_ids_are_refused_like_etcd() {
    use concord::pb::etcdserverpb::watch_client::WatchClient;
    use concord::pb::etcdserverpb::{watch_request::RequestUnion, WatchCreateRequest, WatchRequest};
    let c = Cluster::start(1, &[]);
    c.members[0].client().await;
    let mut raw = WatchClient::connect(c.members[0].endpoint()).await.unwrap();
    let create = |key: &str, end: &str, id: i64| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            range_end: end.into(),
            watch_id: id,
            ..Default::default()
        })),
    };
    let reqs = vec![create("b", "a", 0), create("a", "", 7), create("a", "", 7), create("a", "", 0)];
    let mut s =
        raw.watch(futures::stream::iter(reqs).chain(futures::stream::pending())).await.unwrap().into_inner();
    let mut got = Vec::new();
    for _ in 0..4 {
        let r = tokio::time::timeout(WAIT, s.message()).await.unwrap().unwrap().unwrap();
        got.push((r.watch_id, r.created, r.canceled, r.cancel_reason));
    }
    assert_eq!(
        got,
        [
            (-1, true, true, "mvcc: watcher range is empty".to_string()),
            (7, true, false, String::new()),
            (-1, true, true, "mvcc: duplicate watch ID provided on the WatchStream".to_string()),
            (0, true, false, String::new()),
        ]
    );
}

#[tokio::test]
async fn large_responses_are_fragmented_only_when_asked() {
    use concord::pb::etcdserverpb::watch_client::WatchClient;
    use concord::pb::etcdserverpb::{watch_request::RequestUnion, WatchCreateRequest, WatchRequest};
    let c = Cluster::start(1, &["--max-request-bytes", "10000"]);
    let mut client = c.members[0].client().await;
    let mut raw = WatchClient::connect(c.members[0].endpoint()).await.unwrap();
    // Ten puts of ~3 KB, then watches from the first: history arrives as one 30 KB response against a
    // 10 KB limit.
    for i in 0..10 {
        client.put(format!("f/{i}"), "v".repeat(3000), None).await.unwrap();
    }
    let create = |fragment: bool| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: "f/".into(),
            range_end: "f0".into(),
            start_revision: 2,
            fragment,
            ..Default::default()
        })),
    };
    let reqs = vec![create(true), create(false)];
    let mut s =
        raw.watch(futures::stream::iter(reqs).chain(futures::stream::pending())).await.unwrap().into_inner();
    let (mut fragments, mut whole) = (Vec::new(), Vec::new());
    while fragments.iter().sum::<usize>() < 10 || whole.is_empty() {
        let r = tokio::time::timeout(WAIT, s.message()).await.unwrap().unwrap().unwrap();
        if r.created {
            continue;
        }
        if r.watch_id == 0 {
            assert_eq!(
                r.fragment,
                fragments.iter().sum::<usize>() + r.events.len() < 10,
                "only the last is unflagged"
            );
            fragments.push(r.events.len());
        } else {
            whole.push(r.events.len());
        }
    }
    assert!(fragments.len() >= 3, "{fragments:?}");
    assert_eq!(whole, [10], "without fragment the response travels whole");
}

#[tokio::test]
async fn progress_notify_reaches_quiet_watchers() {
    let c = Cluster::start(1, &["--experimental-watch-progress-notify-interval", "200ms"]);
    let mut client = c.members[0].client().await;
    client.put("other", "1", None).await.unwrap();
    let (_w, mut s) = client.watch("quiet", Some(WatchOptions::new().with_progress_notify())).await.unwrap();
    let r = next(&mut s).await;
    assert!(r.events().is_empty() && !r.canceled());
    assert_eq!(r.header().unwrap().revision(), 2);
}

/// 1,000 puts from four writers while watchers read: ordered, unique and complete. One watcher reads
/// nothing until the writes are done, so its stream falls behind and must catch up from history.
#[tokio::test]
async fn a_thousand_puts_arrive_in_order_once_even_for_a_slow_reader() {
    let c = Cluster::start(1, &[]);
    let mut client = c.members[0].client().await;
    let (_w, mut fast) = client.watch("p/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let (_w, mut slow) = client.watch("p/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let value = "x".repeat(2000);
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = client.clone();
        let value = value.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..250 {
                c.put(format!("p/{w}/{i}"), value.as_str(), None).await.unwrap();
            }
        }));
    }
    let check = |got: Vec<(EventType, String, String, i64)>| {
        let revs: Vec<i64> = got.iter().map(|e| e.3).collect();
        assert_eq!(revs, (2..1002).collect::<Vec<_>>(), "every revision once, in order");
        let keys: BTreeSet<String> = got.into_iter().map(|e| e.1).collect();
        assert_eq!(keys.len(), 1000);
    };
    check(events(&mut fast, 1000).await);
    for w in writers {
        w.await.unwrap();
    }
    check(events(&mut slow, 1000).await);
}

#[tokio::test]
async fn ten_thousand_watchers_on_one_stream_and_a_thousand_streams() {
    let c = Cluster::start(1, &[]);
    let mut client = c.members[0].client().await;
    let (mut w, mut s) = client.watch("w/0", None).await.unwrap();
    for i in 1..10_000 {
        w.watch(format!("w/{i}"), None).await.unwrap();
    }
    let mut created = 1;
    while created < 10_000 {
        let r = next(&mut s).await;
        assert!(r.created());
        created += 1;
    }
    let mut streams = Vec::new();
    for _ in 0..1000 {
        streams.push(client.watch("w/", Some(WatchOptions::new().with_prefix())).await.unwrap());
    }
    let txn = Txn::new()
        .and_then((0..100).map(|i| TxnOp::put(format!("w/{}", i * 100), "v", None)).collect::<Vec<_>>());
    client.txn(txn).await.unwrap();
    let mut ids = BTreeSet::new();
    while ids.len() < 100 {
        let r = next(&mut s).await;
        assert_eq!(r.events().len(), 1);
        ids.insert(r.watch_id());
    }
    assert_eq!(ids, (0..100).map(|i| i * 100).collect(), "each watcher got its own key's event");
    for (_, s) in &mut streams {
        assert_eq!(next(s).await.events().len(), 100);
    }
}

#[tokio::test]
async fn etcdctl_watch_sees_puts_and_history() {
    let c = Cluster::start(1, &[]);
    let mut client = c.members[0].client().await;
    client.put("e", "1", None).await.unwrap();
    client.put("e", "2", None).await.unwrap();
    let out = std::process::Command::new("timeout")
        .env("ETCDCTL_API", "3")
        .args(["20", "/usr/bin/etcdctl", "--endpoints", &c.members[0].endpoint(), "watch", "e", "--rev", "2"])
        .arg("--prev-kv")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("etcdctl 3.4 (Debian etcd-client)");
    // Starting at revision 2, the watch sees this put whenever it is created: etcdctl prints PUT, key,
    // [prev key, prev value], value for each event.
    client.put("e", "3", None).await.unwrap();
    let mut out = out;
    let text = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut buf = Vec::new();
        let mut stdout = out.stdout.take().unwrap();
        let mut chunk = [0u8; 256];
        let deadline = std::time::Instant::now() + WAIT;
        while !String::from_utf8_lossy(&buf).contains("e\n2\ne\n3") && std::time::Instant::now() < deadline {
            match stdout.read(&mut chunk).unwrap() {
                0 => break,
                n => buf.extend_from_slice(&chunk[..n]),
            }
        }
        // SIGTERM to `timeout`, which passes it on to etcdctl.
        let _ = std::process::Command::new("kill").arg(out.id().to_string()).status();
        let _ = out.wait();
        String::from_utf8(buf).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(text, "PUT\ne\n1\nPUT\ne\n1\ne\n2\nPUT\ne\n2\ne\n3\n");
}

#[tokio::test]
async fn compaction_while_watching_and_resuming_after_a_restart() {
    let mut c = Cluster::start(1, &[]);
    let mut client = c.members[0].client().await;
    let (_w, mut s) = client.watch("r/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    for i in 0..5 {
        client.put(format!("r/{i}"), "v", None).await.unwrap(); // 2..=6
    }
    // A compaction under a live watcher changes nothing for it.
    client.compact(6, Some(CompactionOptions::new().with_physical())).await.unwrap();
    client.put("r/5", "v", None).await.unwrap(); // 7
    let got: Vec<i64> = events(&mut s, 6).await.into_iter().map(|e| e.3).collect();
    assert_eq!(got, (2..8).collect::<Vec<_>>());

    // The member restarts; the client resumes at its last revision + 1 and misses nothing written since.
    c.members[0].kill();
    c.members[0].start();
    let mut client = c.members[0].client().await;
    client.put("r/6", "v", None).await.unwrap(); // 8
    let (_w, mut resumed) =
        client.watch("r/", Some(WatchOptions::new().with_prefix().with_start_revision(8))).await.unwrap();
    assert_eq!(events(&mut resumed, 1).await, [put("r/6", "v", 8)]);
}
