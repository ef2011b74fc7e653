//! etcd's corruption checks. Members apply the same log, so at any revision they must hold the same
//! data; HashKV (a hash of every record up to a revision) proves it.
//!
//! - Periodically (`--experimental-corrupt-check-time`), the leader asks every member for its HashKV at
//!   the leader's revision; a member whose hash differs at the same compaction point gets a CORRUPT
//!   alarm, and the cluster refuses every change (reads go on, as etcd's do) until an operator replaces
//!   that member and disarms the alarm.
//! - At start (`--experimental-initial-corrupt-check`), a member compares itself with its peers before
//!   it serves, and refuses to start if it differs.
//!
//! Members that are behind (their revision is below the one asked) or compacted differently are skipped,
//! as etcd does: there is nothing to compare.

use std::time::Duration;

use crate::mvcc::MvccError;
use crate::pb::concordraft::RaftPayload;
use crate::raft::{decode, encode, RaftNode, Request};

/// HashKV as one member answers it: (hash, current revision, compacted revision).
pub type HashKv = Result<(u32, i64, i64), MvccError>;

const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Every other member's HashKV at `rev`; members that cannot be asked are left out (among them members
/// of a concord version whose hash differs, which do not know the RPC).
async fn peers(node: &RaftNode, rev: i64) -> Vec<(u64, HashKv)> {
    let mut out = Vec::new();
    let members = node
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, m)| (*id, m.clone()))
        .collect::<Vec<_>>();
    for (id, member) in members.into_iter().filter(|(id, _)| *id != node.id) {
        let Ok(mut client) = node.network.client(id, &member) else { continue };
        let Ok(data) = encode(&rev) else { continue };
        let asked = tokio::time::timeout(ASK_TIMEOUT, client.etcd_hash_kv(RaftPayload { data })).await;
        if let Ok(Ok(reply)) = asked {
            if let Ok(answer) = decode::<HashKv>(&reply.into_inner().data) {
                out.push((id, answer));
            }
        }
    }
    out
}

/// The members whose data differs from this member's at its current revision.
pub async fn mismatched(node: &RaftNode) -> Result<Vec<u64>, MvccError> {
    let (hash, rev, compacted) = node.sm.hash_kv(0).await?;
    Ok(peers(node, rev)
        .await
        .into_iter()
        .filter(|(_, theirs)| matches!(theirs, Ok((h, _, c)) if *c == compacted && *h != hash))
        .map(|(id, _)| id)
        .collect())
}

/// The leader's periodic check; raises a CORRUPT alarm for each member that differs.
pub async fn periodic(node: RaftNode, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        if node.leader() != Some(node.id) {
            continue;
        }
        let bad = match mismatched(&node).await {
            Ok(bad) => bad,
            Err(e) => {
                tracing::warn!("corruption check: {e}");
                continue;
            }
        };
        for member in bad {
            tracing::error!(
                member = format!("{member:x}"),
                "corruption check: the member's data differs; raising CORRUPT"
            );
            let alarm = Request::Alarm { activate: true, member, alarm: crate::quota::CORRUPT };
            if let Err(e) = node.write(alarm).await {
                tracing::warn!("raising the CORRUPT alarm: {e}");
            }
        }
    }
}
