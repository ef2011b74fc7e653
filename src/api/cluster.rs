//! The Cluster service: etcd's membership API, carried out by the leader (see `raft::membership`).

use tonic::{Request, Response, Status};

use super::{header, node_status};
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::*;
use crate::raft::membership::{MemberChange, MemberError, MemberInfo};
use crate::raft::RaftNode;

pub struct ClusterService {
    pub node: RaftNode,
}

fn member(m: MemberInfo) -> Member {
    Member {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.learner,
    }
}

fn members(list: Vec<MemberInfo>) -> Vec<Member> {
    list.into_iter().map(member).collect()
}

fn member_status(e: MemberError) -> Status {
    match e {
        MemberError::Node(e) => node_status(e),
        MemberError::BadUrls => Status::invalid_argument(e.to_string()),
        MemberError::NotFound => Status::not_found(e.to_string()),
        MemberError::Unhealthy => Status::unavailable(e.to_string()),
        MemberError::Exists
        | MemberError::PeerUrlExists
        | MemberError::NotEnoughStarted
        | MemberError::NotLearner
        | MemberError::LearnerNotReady
        | MemberError::TooManyLearners => Status::failed_precondition(e.to_string()),
    }
}

impl ClusterService {
    /// etcd's `checkMembershipOperationPermission`: membership changes are admin's.
    async fn change<T>(
        &self,
        req: &Request<T>,
        change: MemberChange,
    ) -> Result<(u64, Vec<MemberInfo>), Status> {
        super::auth::require_admin(&self.node, req).await?;
        self.node.change_members(change).await.map_err(member_status)
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let change = MemberChange::Add {
            peer_urls: req.get_ref().peer_ur_ls.clone(),
            learner: req.get_ref().is_learner,
        };
        let (id, list) = self.change(&req, change).await?;
        let req = req.into_inner();
        let added =
            Member { id, peer_ur_ls: req.peer_ur_ls, is_learner: req.is_learner, ..Default::default() };
        Ok(Response::new(MemberAddResponse {
            header: header(&self.node),
            member: Some(added),
            members: members(list),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let (_, list) = self.change(&req, MemberChange::Remove { id: req.get_ref().id }).await?;
        Ok(Response::new(MemberRemoveResponse { header: header(&self.node), members: members(list) }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let change =
            MemberChange::Update { id: req.get_ref().id, peer_urls: req.get_ref().peer_ur_ls.clone() };
        let (_, list) = self.change(&req, change).await?;
        Ok(Response::new(MemberUpdateResponse { header: header(&self.node), members: members(list) }))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let list = members(self.node.members());
        Ok(Response::new(MemberListResponse { header: header(&self.node), members: list }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let (_, list) = self.change(&req, MemberChange::Promote { id: req.get_ref().id }).await?;
        Ok(Response::new(MemberPromoteResponse { header: header(&self.node), members: members(list) }))
    }
}
