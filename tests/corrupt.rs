//! etcd's corruption checks against a member whose records were altered on disk (checksums made to
//! match, so only a comparison with the other members can tell).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{etcdctl, eventually, status, Cluster};

const ORIGINAL: &[u8] = b"original-value-0123456789";
const ALTERED: &[u8] = b"tampered-value-0123456789";

/// Rewrites the record holding `ORIGINAL` in `dir`'s record segments, with a valid checksum (layout in
/// src/storage/records.rs: `u32 len | u32 crc32 | body`, little-endian, the checksum over the body).
fn tamper(dir: &Path) -> bool {
    let mut done = false;
    for entry in std::fs::read_dir(dir.join("records")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rec") {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let mut at = 0;
        while at + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            if len == 0 || at + 8 + len > bytes.len() {
                break;
            }
            let body = at + 8..at + 8 + len;
            if let Some(i) = bytes[body.clone()].windows(ORIGINAL.len()).position(|w| w == ORIGINAL) {
                let start = body.start + i;
                bytes[start..start + ALTERED.len()].copy_from_slice(ALTERED);
                let crc = crc32fast::hash(&bytes[body.clone()]);
                bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
                done = true;
            }
            at = body.end;
        }
        std::fs::write(&path, &bytes).unwrap();
    }
    done
}

#[tokio::test]
async fn a_member_with_altered_data_is_caught_by_the_corruption_checks() {
    let mut c = Cluster::start(3, &["--snapshot-count", "10", "--experimental-corrupt-check-time", "500ms"]);
    let leader = c.leader().await;
    let mut client = c.members[leader].client().await;
    client.put("victim", ORIGINAL, None).await.expect("put");
    // Enough writes after it that every member checkpoints the record (checkpoints are not synced
    // otherwise, and a member replays what follows its checkpoint from the log).
    for i in 0..40 {
        client.put(format!("k{i}"), "v", None).await.expect("put");
    }
    let victim = (leader + 1) % 3;
    let victim_id = c.members[victim].id().await;
    c.members[victim].kill();
    assert!(tamper(&c.members[victim].data_dir), "the record was not found");

    // Checked before serving, the altered member refuses to start.
    let plain = c.members[victim].extra.clone();
    c.members[victim].extra.push("--experimental-initial-corrupt-check".into());
    c.members[victim].start();
    let exit = c.members[victim].exited(Duration::from_secs(30)).await.expect("refuses to start");
    assert!(!exit.success());
    assert!(c.members[victim].log().contains("found data inconsistency with peers"));

    // Started without that check, the leader's periodic check finds it and raises CORRUPT.
    c.members[victim].extra = plain;
    c.members[victim].start();
    let endpoint = format!("127.0.0.1:{}", c.members[leader].client_port);
    let list = || etcdctl(&endpoint, &["alarm", "list"], None).1;
    eventually("a CORRUPT alarm is raised", || async { list().contains("alarm:CORRUPT") }).await;
    let alarms = list();
    assert!(alarms.contains(&format!("memberID:{victim_id} alarm:CORRUPT")), "{alarms}");
    // etcd's answer to every change while the cluster is corrupt; reads are still served, as etcd's
    // are (they do not go through its corrupt applier).
    for refused in [client.put("k", "v", None).await.err(), client.delete("k0", None).await.err()] {
        let s = status(refused.expect("refused while corrupt"));
        assert_eq!((s.code(), s.message()), (tonic::Code::DataLoss, "etcdserver: corrupt cluster"));
    }
    client.get("k0", None).await.expect("a read while corrupt");
}
