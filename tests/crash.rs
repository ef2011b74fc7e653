//! kill -9 in the middle of a write storm: every acknowledged write must be there after restart.
//!
//! A kill keeps the OS page cache, so this checks recovery (WAL replay, the state machine catching up
//! from the log after losing its unpersisted batches), not the disk's durability (fsync). And a log
//! damaged other than by a crash is refused at start.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Cluster;
use etcd_client::GetOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_mid_storm() {
    let mut c = Cluster::start(1, &["--snapshot-count", "40"]);
    c.members[0].client().await;
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..16 {
        let mut kv = c.members[0].client().await;
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let (k, v) = (format!("crash/{w:02}/{i:06}"), format!("value-{w}-{i}"));
                match kv.put(k.clone(), v.clone(), None).await {
                    Ok(_) => acked.lock().unwrap().push((k, v)),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    // Let the storm run past a few snapshots and log purges, then pull the plug.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 3000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes are not getting through ({} acknowledged); server log:\n{}",
            acked.lock().unwrap().len(),
            c.members[0].log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.members[0].kill();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();

    c.members[0].start();
    let mut kv = c.members[0].client().await;
    let r = kv.get("crash/", Some(GetOptions::new().with_prefix())).await.unwrap();
    let stored: std::collections::HashMap<String, String> = r
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string()))
        .collect();
    let lost: Vec<_> = acked.iter().filter(|(k, v)| stored.get(k) != Some(v)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    // Revisions stayed dense: one per write, acknowledged or in flight when the process died.
    assert_eq!(r.header().unwrap().revision(), 1 + r.count());
}

/// A member whose Raft log holds a damaged record (one flipped bit, not a write a crash tore) refuses
/// to start, as etcd does, rather than cut its log there and forget entries it synced and acknowledged.
#[tokio::test]
async fn a_member_with_a_damaged_raft_log_refuses_to_start() {
    let mut c = Cluster::start(1, &[]);
    let mut kv = c.members[0].client().await;
    for i in 0..5 {
        kv.put(format!("k{i}"), format!("value-number-{i}"), None).await.unwrap();
    }
    c.members[0].kill();
    let wal = c.members[0].data_dir.join("wal/0000000000000001.wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    let at = bytes.windows(14).position(|w| w == b"value-number-2").expect("the entry in the log");
    bytes[at + 3] ^= 0x10;
    std::fs::write(&wal, bytes).unwrap();
    c.members[0].start();
    let exit = c.members[0].exited(Duration::from_secs(30)).await;
    assert!(exit.is_some_and(|e| !e.success()), "started on a damaged log: {exit:?}");
    let log = c.members[0].log();
    assert!(log.contains("bad checksum (not a torn write); the Raft log is damaged"), "{log}");
}
