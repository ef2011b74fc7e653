//! The handle the API layer uses: write through Raft from any member, and read linearizably.

use std::sync::Arc;
use std::time::Duration;

use super::batcher::{Batcher, ProposeError};
use super::membership::{self, MemberChange, MemberError, MemberInfo};
use super::network::Network;
use super::read_index::ReadIndexer;
use super::state_machine::StateMachine;
use super::types::{Member, Raft, Request, Response};
use super::{decode, encode};
use crate::lease::Lessor;
use crate::pb::concordraft::RaftPayload;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum NodeError {
    #[error("no leader")]
    NoLeader,
    #[error("request timed out")]
    Timeout,
    #[error("server is stopping")]
    Stopped,
    #[error("{0}")]
    Internal(String),
}

/// A question only the leader's lease clock can answer.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum LeaseQuery {
    Renew(i64),
    TimeToLive { id: i64, keys: bool },
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum LeaseAnswer {
    /// The TTL to report; 0 if the lease is gone or expired.
    Renewed(i64),
    /// (granted TTL, remaining seconds, keys), or `None` if there is no such lease.
    TimeToLive(Option<(i64, i64, Vec<Vec<u8>>)>),
}

#[derive(Clone)]
pub struct RaftNode {
    pub id: u64,
    pub cluster_id: u64,
    pub raft: Raft,
    pub sm: Arc<StateMachine>,
    pub network: Network,
    pub batcher: Batcher,
    /// Holds proposals and read-index rounds while a leadership transfer keeps this leader silent.
    pub gate: Arc<super::transfer::Gate>,
    pub reads: ReadIndexer,
    /// How long a request waits for a leader to appear before failing like etcd's "no leader".
    pub leader_wait: Duration,
    /// The lease clock, running while this member leads.
    pub lessor: Arc<Lessor>,
    /// `--strict-reconfig-check`: refuse membership changes that would leave too few started members.
    pub strict_reconfig: bool,
    /// `--quota-backend-bytes`, resolved: writes that add data are refused past it.
    pub quota_bytes: u64,
    /// `--client-cert-auth`: with auth on, a client certificate's common name names the caller.
    pub client_cert_auth: bool,
    /// `--auth-token jwt,...`: tokens are signed JWTs instead of simple tokens.
    pub jwt: Option<Arc<crate::auth::Jwt>>,
    /// Membership changes are carried out one at a time (openraft refuses one while another is in flight).
    pub reconfig: Arc<tokio::sync::Mutex<()>>,
}

/// The peer RPCs that carry a request to the leader.
#[derive(Clone, Copy)]
enum ToLeader {
    Forward,
    Lease,
    ChangeMembers,
}

impl RaftNode {
    // Both read openraft's server metrics, which change with elections and membership only: its full
    // metrics change with every write, and each change takes their lock for writing.
    pub fn term(&self) -> u64 {
        self.raft.server_metrics().borrow().vote.leader_id().term
    }

    pub fn leader(&self) -> Option<u64> {
        self.raft.server_metrics().borrow().current_leader
    }

    /// Proposes a write and waits until it is applied (on the leader) and acknowledged. Any member
    /// takes writes: a follower sends them to the leader.
    pub async fn write(&self, req: Request) -> Result<Response, NodeError> {
        let size = req.encoded_len();
        let deadline = tokio::time::Instant::now() + self.leader_wait;
        loop {
            match self.batcher.propose(req.clone(), size).await {
                Ok((resp, _)) => return Ok(resp),
                // Not appended anywhere (or truncated away), so sending it on cannot apply it twice.
                Err(ProposeError::NotLeader(Some((id, node)))) if id != self.id => {
                    match self.forward(id, &node, &req, deadline).await {
                        // The member we took for the leader said it is not: nothing was proposed; retry.
                        Err(NodeError::NoLeader) => {}
                        // As in etcd, a write acknowledged by a member has been applied there: a watch or a
                        // serializable read on this member right after sees it.
                        Ok((resp, index)) => return self.wait_applied(index).await.map(|()| resp),
                        Err(e) => return Err(e),
                    }
                }
                Err(ProposeError::NotLeader(_)) => {}
                Err(ProposeError::Fatal(e)) => return Err(NodeError::Internal(e)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::NoLeader);
            }
            super::wait_for_leader(&self.raft, deadline).await;
        }
    }

    /// Answers with the leader's lease clock: this member's if it leads, otherwise the leader's. The
    /// questions are idempotent, so a failed call is simply asked again until `leader_wait` runs out.
    pub async fn lease_query(&self, query: LeaseQuery) -> Result<LeaseAnswer, NodeError> {
        let deadline = tokio::time::Instant::now() + self.leader_wait;
        loop {
            match self.leader_node() {
                Some((id, _)) if id == self.id => match self.answer_lease(query.clone()).await {
                    Err(NodeError::NoLeader) => {} // deposed meanwhile: ask the new leader
                    answer => return answer,
                },
                Some((id, Some(node))) => {
                    let asked: Result<Result<LeaseAnswer, NodeError>, _> =
                        self.call_leader(id, &node, ToLeader::Lease, &query, deadline).await;
                    if let Ok(Ok(answer)) = asked {
                        return Ok(answer);
                    }
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::NoLeader);
            }
            super::wait_for_leader(&self.raft, deadline).await;
        }
    }

    /// The answer of this member's lease clock, given only while it leads: a quorum confirms that first
    /// (etcd's `ensureLeadership` before a renewal), and the answer waits until everything committed
    /// before has been applied here. A deposed leader that has not noticed yet would otherwise renew
    /// leases that the new leader is about to expire, or not know of a lease just granted.
    pub async fn answer_lease(&self, query: LeaseQuery) -> Result<LeaseAnswer, NodeError> {
        self.lead_and_catch_up().await?;
        if tokio::time::timeout(self.leader_wait, self.lessor.wait_primary()).await.is_err() {
            return Err(NodeError::NoLeader);
        }
        Ok(match query {
            LeaseQuery::Renew(id) => {
                let ttl = self.lessor.renew(id, self.sm.lease(id, false).map(|l| l.0));
                // A renewed lease has its whole TTL again: its checkpoint is cleared before the answer,
                // or a new leader would start it from what was left before (etcd clears it the same
                // way). Checkpoints computed before the renewal land first, so that none of them comes
                // after the clear. Usually one such write per lease per checkpoint interval. Also with
                // checkpoints off: one left from when they were on must not outlive a keepalive.
                if ttl > 0 {
                    let landed = self.lessor.checkpoints_landed(id);
                    match tokio::time::timeout(self.leader_wait, landed).await {
                        Err(_) => return Err(NodeError::NoLeader),
                        Ok(true) => {
                            // A checkpoint whose write failed (leadership moved) may still be committed:
                            // confirm leadership again and apply everything up to here, so that the
                            // clear below comes after every checkpoint that can still be applied.
                            self.lead_and_catch_up().await?
                        }
                        Ok(false) => {}
                    }
                    if self.sm.lease_checkpointed(id) > 0 {
                        self.write_as_leader(Request::LeaseCheckpoint(vec![(id, 0)])).await?;
                    }
                }
                LeaseAnswer::Renewed(ttl)
            }
            LeaseQuery::TimeToLive { id, keys } => LeaseAnswer::TimeToLive(
                self.sm.lease(id, keys).map(|(ttl, ks)| (ttl, self.lessor.remaining(id, ttl), ks)),
            ),
        })
    }

    /// Confirms with a quorum that this member leads, then waits until it has applied everything
    /// committed before: `NoLeader` if another member leads.
    async fn lead_and_catch_up(&self) -> Result<(), NodeError> {
        if self.single_voter() {
            return Ok(());
        }
        let (index, confirmed_by) = self.reads.read_index().await?;
        if confirmed_by != self.id {
            return Err(NodeError::NoLeader);
        }
        self.wait_applied(index).await
    }

    /// Proposes on the leader only: a member that is not the leader answers `NoLeader` instead of passing
    /// the request on (two members that each take the other for the leader must not bounce it).
    pub async fn write_as_leader(&self, req: Request) -> Result<(Response, u64), NodeError> {
        let size = req.encoded_len();
        match self.batcher.propose(req, size).await {
            Ok(done) => Ok(done),
            Err(ProposeError::NotLeader(_)) => Err(NodeError::NoLeader),
            Err(ProposeError::Fatal(e)) => Err(NodeError::Internal(e)),
        }
    }

    /// Sends a request to the leader. Only the leader's own "not leader" answer (inside `R`) and a refused
    /// connection mean it surely was not carried out; any other failure may or may not have reached the
    /// leader, so it comes back as `Timeout` and callers retry only idempotent requests.
    async fn call_leader<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        leader: u64,
        node: &Member,
        rpc: ToLeader,
        req: &T,
        deadline: tokio::time::Instant,
    ) -> Result<R, NodeError> {
        let mut client = self.network.client(leader, node).map_err(NodeError::Internal)?;
        let payload = RaftPayload { data: encode(req).map_err(|e| NodeError::Internal(e.to_string()))? };
        let call = async {
            match rpc {
                ToLeader::Forward => client.forward(payload).await,
                ToLeader::Lease => client.lease(payload).await,
                ToLeader::ChangeMembers => client.change_members(payload).await,
            }
        };
        let reply = match tokio::time::timeout_at(deadline, call).await {
            Err(_) => return Err(NodeError::Timeout),
            Ok(Err(s)) if s.code() == tonic::Code::Unavailable && s.message().contains("connect") => {
                // Refused before anything was sent: the request never left this member.
                return Err(NodeError::NoLeader);
            }
            Ok(Err(_)) => return Err(NodeError::Timeout),
            Ok(Ok(reply)) => reply,
        };
        decode(&reply.into_inner().data).map_err(|e| NodeError::Internal(e.to_string()))
    }

    /// Sends a write to the leader.
    async fn forward(
        &self,
        leader: u64,
        node: &Member,
        req: &Request,
        deadline: tokio::time::Instant,
    ) -> Result<(Response, u64), NodeError> {
        self.call_leader(leader, node, ToLeader::Forward, req, deadline).await?
    }

    /// The members as this member knows them.
    pub fn members(&self) -> Vec<MemberInfo> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        membership::list(m.membership(), &self.sm.attributes())
    }

    /// Whether this member is a learner (a member that replicates but does not vote).
    pub fn is_learner(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        membership.get_node(&self.id).is_some() && !membership.voter_ids().any(|v| v == self.id)
    }

    /// Carries out a membership change on the leader, from any member, and returns the id it concerns
    /// (the new id for an add) and the members after it. Like a forwarded write, it is retried only when
    /// the leader surely did not receive it.
    pub async fn change_members(&self, change: MemberChange) -> Result<(u64, Vec<MemberInfo>), MemberError> {
        let deadline = tokio::time::Instant::now() + self.leader_wait;
        loop {
            let result = match self.leader_node() {
                Some((id, _)) if id == self.id => self.change_as_leader(&change, deadline).await,
                Some((id, Some(node))) => {
                    match self.call_leader(id, &node, ToLeader::ChangeMembers, &change, deadline).await {
                        Ok(answer) => answer,
                        Err(e) => Err(e.into()),
                    }
                }
                _ => Err(NodeError::NoLeader.into()),
            };
            match result {
                Err(MemberError::Node(NodeError::NoLeader)) if tokio::time::Instant::now() < deadline => {}
                other => return other,
            }
            super::wait_for_leader(&self.raft, deadline).await;
        }
    }

    fn leader_node(&self) -> Option<(u64, Option<Member>)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader.map(|id| (id, m.membership_config.membership().get_node(&id).cloned()))
    }

    /// The leader's half of `change_members`: etcd's checks, then openraft's joint consensus. A removed
    /// member is told so, since the log entry that removes it is never replicated to it.
    pub async fn change_as_leader(
        &self,
        change: &MemberChange,
        deadline: tokio::time::Instant,
    ) -> Result<(u64, Vec<MemberInfo>), MemberError> {
        use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
        let _one_at_a_time = self.reconfig.lock().await;
        if matches!(change, MemberChange::Add { .. }) && self.sm.restored_unlogged() {
            // A new member would be sent the log without the restored state: wait until a snapshot
            // carries it (moments after the first start; `server::snapshot_restored`).
            return Err(MemberError::Unhealthy);
        }
        loop {
            let (members, progress) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                if m.current_leader != Some(self.id) {
                    return Err(NodeError::NoLeader.into());
                }
                let progress = membership::Progress {
                    leader_last_index: m.last_log_index.unwrap_or(0),
                    matched: m
                        .replication
                        .iter()
                        .flatten()
                        .map(|(id, log)| (*id, log.map_or(0, |l| l.index)))
                        .collect(),
                };
                (membership::list(m.membership_config.membership(), &self.sm.attributes()), progress)
            };
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let (id, removed) = match change {
                MemberChange::Add { peer_urls, .. } => {
                    (membership::new_member_id(peer_urls, self.cluster_id, now.as_nanos()), None)
                }
                MemberChange::Remove { id } => (*id, members.iter().find(|m| m.id == *id).cloned()),
                MemberChange::Update { id, .. } | MemberChange::Promote { id } => (*id, None),
            };
            let connectivity = self.strict_reconfig.then(|| self.network.connectivity(self.id));
            let plan = membership::plan(change, &members, &progress, connectivity.as_ref(), id)?;
            let voters = members.iter().filter(|m| !m.learner).count();
            let result = match change {
                MemberChange::Add { learner: false, .. } if voters == 1 => self.grow_from_one(plan, id).await,
                _ => self.raft.change_membership(plan.changes, plan.retain).await.map(|_| ()),
            };
            match result {
                Ok(_) => {
                    if let Some(gone) = removed {
                        self.network.tell_removed(self.id, self.cluster_id, gone);
                    }
                    return Ok((id, self.members()));
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) if tokio::time::Instant::now() < deadline => {
                    // A change left by the previous leader is still being committed: wait for it.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    return Err(NodeError::NoLeader.into())
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::EmptyMembership(_),
                ))) => return Err(MemberError::NotEnoughStarted),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::LearnerNotFound(_),
                ))) => return Err(MemberError::NotFound),
                Err(e) => return Err(NodeError::Internal(e.to_string()).into()),
            }
        }
    }

    /// A voter added to a one-member cluster, answered as etcd answers it: once the change is in the
    /// log, before the new member has started. etcd's single-step change commits under the old
    /// configuration (a quorum of one); openraft's joint configuration needs a quorum of the new one
    /// too, which cannot form until the new member runs, and the new member is started only after
    /// `member add` returns. The joint configuration already takes effect when appended, and openraft
    /// 0.9's core awaits each append's flush before it goes on and reports its metrics only after
    /// (`RaftCore::append_to_log`, `runtime_loop`): once the metrics show the member, the change is
    /// durable on the only voter, no other member can be elected without it, and from then on every
    /// commit needs both members, as in etcd's two-member cluster.
    /// The change completes in the background when the new member catches up.
    async fn grow_from_one(
        &self,
        plan: membership::Plan,
        id: u64,
    ) -> Result<(), openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, Member>>> {
        use openraft::error::{Fatal, RaftError};
        let raft = self.raft.clone();
        let mut change = tokio::spawn(async move {
            let done = raft.change_membership(plan.changes, plan.retain).await;
            if let Err(e) = &done {
                // Answered already, or answered now with this error: either way, say it.
                tracing::warn!(error = %e, "adding a voter to a one-member cluster did not complete");
            }
            done
        });
        let mut metrics = self.raft.metrics();
        loop {
            if metrics.borrow().membership_config.membership().get_node(&id).is_some() {
                return Ok(());
            }
            tokio::select! {
                done = &mut change => {
                    return match done {
                        Ok(result) => result.map(|_| ()),
                        Err(_) => Err(RaftError::Fatal(Fatal::Panicked)),
                    };
                }
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return Err(RaftError::Fatal(Fatal::Stopped));
                    }
                }
            }
        }
    }

    /// The only voter, and leader with this term's first entry applied. After a restart the state machine
    /// can be behind acknowledged writes until the log is re-applied; a leader that has applied an entry of
    /// its own term has applied everything committed before it.
    fn single_voter(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(self.id)
            && m.membership_config.membership().voter_ids().count() == 1
            && m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term)
    }

    /// Waits until a read of the local state is linearizable: this member has applied everything that was
    /// committed when the read arrived.
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        if self.single_voter() {
            // Every acknowledged write has been applied here before it was acknowledged.
            return Ok(());
        }
        let index = self.read_index().await?;
        self.wait_applied(index).await
    }

    /// The commit index a linearizable read must wait for, confirmed by the leader with a quorum; shared
    /// by every read that arrives while the previous confirmation was in flight.
    pub async fn read_index(&self) -> Result<u64, NodeError> {
        Ok(self.reads.read_index().await?.0)
    }

    pub async fn wait_applied(&self, index: u64) -> Result<(), NodeError> {
        if self.sm.last_applied().map_or(0, |l| l.index) >= index {
            return Ok(());
        }
        self.raft
            .wait(Some(self.leader_wait))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(..) => NodeError::Timeout,
                openraft::metrics::WaitError::ShuttingDown => NodeError::Stopped,
            })
    }
}
