//! The Maintenance service: Status now; the rest arrives with the operations issue.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::{errors, header};
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::*;
use crate::raft::RaftNode;

/// The etcd API level concord speaks; clients read it from Status.
pub const ETCD_VERSION: &str = "3.5.0";

pub struct MaintenanceService {
    pub node: RaftNode,
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, _: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // No alarm can be raised yet: report none, as a healthy etcd does.
        Ok(Response::new(AlarmResponse { header: header(&self.node), alarms: vec![] }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let m = self.node.raft.metrics().borrow().clone();
        let (db_size, db_size_in_use) = self.node.sm.db_size();
        Ok(Response::new(StatusResponse {
            header: header(&self.node),
            version: ETCD_VERSION.into(),
            db_size: db_size as i64,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            errors: vec![],
            db_size_in_use: db_size_in_use as i64,
            is_learner: false,
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(errors::not_supported("Defragment"))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(errors::not_supported("Hash"))
    }

    async fn hash_kv(&self, _: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Err(errors::not_supported("HashKV"))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, _: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(errors::not_supported("Snapshot"))
    }

    async fn move_leader(
        &self,
        _: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(errors::not_supported("MoveLeader"))
    }
}
