//! The peer gRPC service: Raft RPCs, forwarded writes and read-index requests from other members.

use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::membership::{MemberChange, MemberError};
use super::network::REMOVED;
use super::node::{LeaseAnswer, LeaseQuery, NodeError, RaftNode};
use super::types::{Request, TypeConfig, Vote};
use super::{decode, encode};
use crate::pb::concordraft::raft_peer_server::RaftPeer;
use crate::pb::concordraft::RaftPayload;

pub struct PeerService {
    pub node: RaftNode,
}

fn payload<T: serde::Serialize>(v: &T) -> Result<GrpcResponse<RaftPayload>, Status> {
    encode(v).map(|data| GrpcResponse::new(RaftPayload { data })).map_err(|e| Status::internal(e.to_string()))
}

fn parse<T: serde::de::DeserializeOwned>(req: GrpcRequest<RaftPayload>) -> Result<T, Status> {
    decode(&req.into_inner().data).map_err(|e| Status::invalid_argument(e.to_string()))
}

impl PeerService {
    /// A vote request the leader answers with "removed": the candidate is not a member, and its log is
    /// no newer than the leader's, so no membership the leader has not seen can name it either (a
    /// member added by a later leader would hold that leader's entries, of a higher term).
    fn removed_candidate(&self, rpc: &openraft::raft::VoteRequest<u64>) -> bool {
        let m = self.node.raft.metrics();
        let m = m.borrow();
        let candidate = rpc.vote.leader_id().voted_for();
        let last = rpc.last_log_id.map(|l| (l.leader_id.term, l.index));
        let stranger = candidate.is_some_and(|c| m.membership_config.membership().get_node(&c).is_none());
        stranger
            && (self.only_voter(&m)
                || m.current_leader == Some(self.node.id)
                    && last <= Some((m.current_term, m.last_log_index.unwrap_or(0))))
    }

    /// An append or a snapshot from a leader that is no member, while this member is the only voter:
    /// see [`Self::only_voter`].
    fn removed_leader(&self, vote: &Vote) -> bool {
        let m = self.node.raft.metrics();
        let m = m.borrow();
        let leader = vote.leader_id().voted_for();
        self.only_voter(&m) && leader.is_some_and(|l| m.membership_config.membership().get_node(&l).is_none())
    }

    /// Whether this member is the only voter of its membership. Every configuration after that one
    /// goes through this member's log, so no one else can be elected without its vote, and a leader or
    /// candidate it has no record of is from an older configuration: a member of the cluster as it was
    /// before `--force-new-cluster`, which must not overwrite it whatever its term and log. It hears
    /// what a removed member hears, and stops.
    fn only_voter(&self, m: &openraft::RaftMetrics<u64, super::Member>) -> bool {
        m.membership_config.membership().voter_ids().eq([self.node.id])
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        req: GrpcRequest<RaftPayload>,
    ) -> Result<GrpcResponse<RaftPayload>, Status> {
        let rpc: openraft::raft::AppendEntriesRequest<TypeConfig> = parse(req)?;
        if self.removed_leader(&rpc.vote) {
            return Err(Status::failed_precondition(REMOVED));
        }
        payload(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: GrpcRequest<RaftPayload>) -> Result<GrpcResponse<RaftPayload>, Status> {
        let rpc = parse(req)?;
        if self.removed_candidate(&rpc) {
            return Err(Status::failed_precondition(REMOVED));
        }
        payload(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: GrpcRequest<RaftPayload>,
    ) -> Result<GrpcResponse<RaftPayload>, Status> {
        let rpc: openraft::raft::InstallSnapshotRequest<TypeConfig> = parse(req)?;
        if self.removed_leader(&rpc.vote) {
            return Err(Status::failed_precondition(REMOVED));
        }
        payload(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, req: GrpcRequest<RaftPayload>) -> Result<GrpcResponse<RaftPayload>, Status> {
        let request: Request = parse(req)?;
        let result: Result<_, NodeError> = self.node.write_as_leader(request).await;
        payload(&result)
    }

    async fn lease(&self, req: GrpcRequest<RaftPayload>) -> Result<GrpcResponse<RaftPayload>, Status> {
        let query: LeaseQuery = parse(req)?;
        // Like ReadIndex: only the leader answers, nobody passes the question on.
        if self.node.leader() != Some(self.node.id) {
            return payload(&Err::<LeaseAnswer, _>(NodeError::NoLeader));
        }
        payload(&self.node.answer_lease(query).await)
    }

    async fn change_members(
        &self,
        req: GrpcRequest<RaftPayload>,
    ) -> Result<GrpcResponse<RaftPayload>, Status> {
        let change: MemberChange = parse(req)?;
        // Only the leader carries it out; see `lease`.
        if self.node.leader() != Some(self.node.id) {
            return payload(&Err::<(), _>(MemberError::Node(NodeError::NoLeader)));
        }
        let deadline = tokio::time::Instant::now() + self.node.leader_wait;
        payload(&self.node.change_as_leader(&change, deadline).await)
    }

    /// A member from before HashKV was etcd's asks: its hash could not match ours, so it gets none and
    /// leaves this member out of its check, as this member leaves it out of ours.
    async fn hash_kv(&self, _: GrpcRequest<RaftPayload>) -> Result<GrpcResponse<RaftPayload>, Status> {
        Err(Status::unimplemented("HashKV is etcd's now: ask EtcdHashKv"))
    }

    async fn etcd_hash_kv(&self, req: GrpcRequest<RaftPayload>) -> Result<GrpcResponse<RaftPayload>, Status> {
        let rev: i64 = parse(req)?;
        let answer: crate::corrupt::HashKv = self.node.sm.hash_kv(rev).await;
        payload(&answer)
    }

    async fn cluster_info(&self, _: GrpcRequest<RaftPayload>) -> Result<GrpcResponse<RaftPayload>, Status> {
        payload(&(self.node.cluster_id, self.node.members()))
    }

    async fn removed(&self, req: GrpcRequest<RaftPayload>) -> Result<GrpcResponse<RaftPayload>, Status> {
        let cluster_id = req.into_inner().data;
        if cluster_id != self.node.cluster_id.to_be_bytes() {
            return Err(Status::failed_precondition("cluster ID mismatch"));
        }
        self.node.network.mark_removed();
        payload(&())
    }

    async fn campaign(&self, _: GrpcRequest<RaftPayload>) -> Result<GrpcResponse<RaftPayload>, Status> {
        self.node.raft.trigger().elect().await.map_err(|e| Status::unavailable(e.to_string()))?;
        payload(&())
    }

    async fn read_index(&self, _req: GrpcRequest<RaftPayload>) -> Result<GrpcResponse<RaftPayload>, Status> {
        // Only the leader answers; passing the question on could make two members that each think the
        // other leads wait on each other's read loops.
        if self.node.leader() != Some(self.node.id) {
            return payload(&Err::<u64, _>(NodeError::NoLeader));
        }
        let result = self.node.read_index().await;
        payload(&result)
    }
}
