//! Batched read index: every linearizable read that arrives while one leadership check is in flight
//! shares the next one (etcd's `linearizableReadLoop`). 64 concurrent readers cost one heartbeat round,
//! not 64.

use std::time::Duration;

use openraft::error::RaftError;
use tokio::sync::{mpsc, oneshot};

use super::decode;
use super::network::Network;
use super::node::NodeError;
use super::types::Raft;
use crate::pb::concordraft::RaftPayload;

/// A round's answer: the read index, and the leader that confirmed it.
type Round = Result<(u64, u64), NodeError>;
type Waiter = oneshot::Sender<Round>;

#[derive(Clone)]
pub struct ReadIndexer {
    tx: mpsc::UnboundedSender<Waiter>,
}

/// What one round needs; owned by the loop, so the loop ends when the last `ReadIndexer` is dropped.
pub struct Source {
    pub id: u64,
    pub raft: Raft,
    pub network: Network,
    pub leader_wait: Duration,
    /// Closed while a leadership transfer keeps the leader silent: a round would speak for it.
    pub gate: std::sync::Arc<super::transfer::Gate>,
}

impl ReadIndexer {
    pub fn start(source: Source) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        tokio::spawn(async move {
            let mut waiters = Vec::new();
            // Readers that arrive during a round are not covered by it (its index may predate their
            // arrival); they wait in the channel for the next round.
            while rx.recv_many(&mut waiters, usize::MAX).await > 0 {
                let result = source.fetch().await;
                for w in waiters.drain(..) {
                    let _ = w.send(result.clone());
                }
            }
        });
        ReadIndexer { tx }
    }

    /// The commit index a linearizable read arriving now must wait for, and the leader that confirmed it.
    pub async fn read_index(&self) -> Round {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }
}

impl Source {
    fn leader(&self) -> Option<u64> {
        self.raft.server_metrics().borrow().current_leader
    }

    /// One round: on the leader, a quorum confirms leadership; elsewhere, the leader answers.
    async fn fetch(&self) -> Round {
        let deadline = tokio::time::Instant::now() + self.leader_wait;
        loop {
            match self.leader() {
                Some(l) if l == self.id => {
                    self.gate.pass().await;
                    match self.raft.get_read_log_id().await {
                        Ok((read, _)) => return Ok((read.map_or(0, |l| l.index), l)),
                        Err(RaftError::Fatal(_)) => return Err(NodeError::Stopped),
                        Err(RaftError::APIError(_)) => {}
                    }
                }
                Some(l) => {
                    let node = self
                        .raft
                        .server_metrics()
                        .borrow()
                        .membership_config
                        .membership()
                        .get_node(&l)
                        .cloned();
                    if let Some(node) = node {
                        let mut client = self.network.client(l, &node).map_err(NodeError::Internal)?;
                        let call = client.read_index(RaftPayload { data: Vec::new() });
                        match tokio::time::timeout_at(deadline, call).await {
                            Ok(Ok(reply)) => {
                                match decode::<Result<u64, NodeError>>(&reply.into_inner().data) {
                                    Ok(Ok(index)) => return Ok((index, l)),
                                    // The member we took for the leader is not (any more): ask again.
                                    Ok(Err(NodeError::NoLeader)) => {}
                                    Ok(Err(e)) => return Err(e),
                                    Err(e) => return Err(NodeError::Internal(e.to_string())),
                                }
                            }
                            Ok(Err(e)) => tracing::debug!("read index from leader {l:x}: {e}"),
                            Err(_) => return Err(NodeError::Timeout),
                        }
                    }
                }
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::NoLeader);
            }
            super::wait_for_leader(&self.raft, deadline).await;
        }
    }
}
