//! The Cluster service: MemberList now; membership changes arrive with the operations issue.

use tonic::{Request, Response, Status};

use super::{errors, header};
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::*;
use crate::raft::RaftNode;

pub struct ClusterService {
    pub node: RaftNode,
}

impl ClusterService {
    fn members(&self) -> Vec<Member> {
        let m = self.node.raft.metrics().borrow().membership_config.clone();
        let published = self.node.sm.client_urls();
        m.membership()
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                name: node.name.clone(),
                peer_ur_ls: node.peer_urls.clone(),
                client_ur_ls: published.get(id).cloned().unwrap_or_else(|| node.client_urls.clone()),
                is_learner: !m.membership().voter_ids().any(|v| v == *id),
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, _: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        Err(errors::not_supported("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(errors::not_supported("MemberRemove"))
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(errors::not_supported("MemberUpdate"))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse { header: header(&self.node), members: self.members() }))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(errors::not_supported("MemberPromote"))
    }
}
