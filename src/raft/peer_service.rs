//! The peer gRPC service: Raft RPCs, forwarded writes and read-index requests from other members.

use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::node::{LeaseAnswer, LeaseQuery, NodeError, RaftNode};
use super::types::Request;
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

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        req: GrpcRequest<RaftPayload>,
    ) -> Result<GrpcResponse<RaftPayload>, Status> {
        let rpc = parse(req)?;
        payload(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: GrpcRequest<RaftPayload>) -> Result<GrpcResponse<RaftPayload>, Status> {
        let rpc = parse(req)?;
        payload(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: GrpcRequest<RaftPayload>,
    ) -> Result<GrpcResponse<RaftPayload>, Status> {
        let rpc = parse(req)?;
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
