//! Leadership transfer (etcd's MoveLeader). openraft 0.9 has no transfer of its own, so the leader
//! arranges one with what it offers:
//!
//! 1. it holds new proposals and read-index rounds at the [`Gate`] (they wait, they do not fail), and
//!    stops its idle heartbeats;
//! 2. it waits until the transferee holds every entry of its log, so the transferee's log is at least
//!    as up to date as any other member's and its candidacy can win;
//! 3. it stays silent for longer than a follower's leader lease (openraft's followers refuse to vote
//!    while their leader lease runs, which is `election_timeout_max` from the leader's last message),
//!    and shorter than the lease plus the shortest election timeout, after which followers would stand
//!    themselves;
//! 4. it asks the transferee to stand now (peer RPC `Campaign`); the transferee's higher term deposes
//!    the old leader when it asks for its vote.
//!
//! Whatever the outcome, heartbeats resume and the gate opens; requests held there go on to whoever
//! leads then.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::node::{NodeError, RaftNode};
use crate::pb::concordraft::RaftPayload;

/// Where proposals and read-index rounds wait while a transfer keeps the leader silent.
#[derive(Default)]
pub struct Gate {
    closed: AtomicBool,
    opened: Notify,
}

impl Gate {
    /// Returns at once while the gate is open (one atomic load), otherwise when it opens.
    pub async fn pass(&self) {
        while self.closed.load(Ordering::Acquire) {
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if !self.closed.load(Ordering::Acquire) {
                return;
            }
            opened.await;
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn open(&self) {
        self.closed.store(false, Ordering::Release);
        self.opened.notify_waiters();
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum TransferError {
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: bad leader transferee")]
    BadTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    Timeout,
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// Opens the gate and resumes heartbeats however the transfer ends.
struct Resume<'a>(&'a RaftNode);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.raft.runtime_config().heartbeat(true);
        self.0.gate.open();
    }
}

impl RaftNode {
    /// Makes `target` the leader; called on the leader. Returns once `target` leads.
    pub async fn move_leader(&self, target: u64) -> Result<(), TransferError> {
        if self.leader() != Some(self.id) {
            return Err(TransferError::NotLeader);
        }
        let node = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            if !membership.voter_ids().any(|v| v == target) {
                return Err(TransferError::BadTransferee);
            }
            membership.get_node(&target).cloned().ok_or(TransferError::BadTransferee)?
        };
        if target == self.id {
            return Ok(());
        }
        // One at a time, and never during a membership change.
        let _one = self.reconfig.lock().await;
        let deadline = tokio::time::Instant::now() + self.leader_wait;
        let config = self.raft.config();
        let lease = Duration::from_millis(config.election_timeout_max);
        let margin = Duration::from_millis(config.heartbeat_interval.max(10));
        tracing::info!(target = format_args!("{target:x}"), "leadership transfer starting");

        self.gate.close();
        self.raft.runtime_config().heartbeat(false);
        let _resume = Resume(self);
        let caught_up = self
            .raft
            .wait(Some(deadline - tokio::time::Instant::now()))
            .metrics(
                |m| {
                    let matched = m.replication.as_ref().and_then(|r| r.get(&target).copied().flatten());
                    matched.map(|l| l.index) >= m.last_log_index
                },
                "transferee caught up",
            )
            .await;
        if caught_up.is_err() {
            return Err(TransferError::Timeout);
        }
        tokio::time::sleep(lease + margin).await;
        let mut client =
            self.network.client(target, &node).map_err(|e| NodeError::Internal(e.to_string()))?;
        let asked =
            tokio::time::timeout_at(deadline, client.campaign(RaftPayload { data: Vec::new() })).await;
        if !matches!(asked, Ok(Ok(_))) {
            return Err(TransferError::Timeout);
        }
        let led = self
            .raft
            .wait(Some(deadline.saturating_duration_since(tokio::time::Instant::now())))
            .metrics(|m| m.current_leader == Some(target), "transferee leads")
            .await;
        match led {
            Ok(_) => {
                tracing::info!(target = format_args!("{target:x}"), "leadership transfer finished");
                Ok(())
            }
            Err(_) => Err(TransferError::Timeout),
        }
    }
}
