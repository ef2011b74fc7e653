//! The Maintenance service.

use std::pin::Pin;

use futures::Stream;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::auth::require_admin;
use super::{header, mvcc_status};
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::*;
use crate::raft::RaftNode;

/// The etcd API level concord speaks; clients read it from Status.
pub const ETCD_VERSION: &str = "3.5.0";

/// The cluster version etcd names capabilities and metrics by: the API level's major.minor.
pub fn cluster_version() -> &'static str {
    ETCD_VERSION.rsplit_once('.').map_or(ETCD_VERSION, |(major_minor, _)| major_minor)
}

pub struct MaintenanceService {
    pub node: RaftNode,
    /// `Some` once the member has lost its leader for good (`require_leader::monitor`).
    pub leader_lost: super::require_leader::LeaderLoss,
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

/// An alarm as etcd's Status lists it.
pub fn alarm_text(member: u64, alarm: i32) -> String {
    let name = AlarmType::try_from(alarm).map_or_else(|_| alarm.to_string(), |a| a.as_str_name().to_string());
    format!("memberID:{member} alarm:{name} ")
}

/// Reads until `buf` is full or the input ends.
fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// Lists alarms, or raises or clears one through the log (`etcdctl alarm list|disarm`).
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        use alarm_request::AlarmAction;
        let caller = super::auth::caller(&self.node, &req).await?;
        let req = req.into_inner();
        let member = |(member_id, alarm): (u64, i32)| AlarmMember { member_id, alarm };
        let alarms = match AlarmAction::try_from(req.action) {
            // One kind of alarm, or all of them for NONE, as etcd's alarm store answers.
            Ok(AlarmAction::Get) => {
                let all = self.node.sm.alarms().into_iter();
                all.filter(|(_, a)| req.alarm == AlarmType::None as i32 || *a == req.alarm)
                    .map(member)
                    .collect()
            }
            Ok(action) => {
                let activate = action == AlarmAction::Activate;
                let change =
                    crate::raft::Request::Alarm { activate, member: req.member_id, alarm: req.alarm };
                match super::write(&self.node, caller, change).await? {
                    crate::raft::Response::Alarm(changed) => changed.into_iter().map(member).collect(),
                    _ => return Err(super::unexpected()),
                }
            }
            Err(_) => return Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        };
        Ok(Response::new(AlarmResponse { header: header(&self.node), alarms }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let m = self.node.raft.metrics().borrow().clone();
        let (db_size, db_size_in_use) = self.node.sm.db_size();
        Ok(Response::new(StatusResponse {
            header: header(&self.node),
            version: ETCD_VERSION.into(),
            db_size: db_size as i64,
            leader: super::require_leader::known_leader(&self.node, &self.leader_lost).unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            errors: self.node.sm.alarms().into_iter().map(|(m, a)| alarm_text(m, a)).collect(),
            db_size_in_use: db_size_in_use as i64,
            is_learner: self.node.is_learner(),
        }))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        require_admin(&self.node, &req).await?;
        let sm = self.node.sm.clone();
        let (before, after) = tokio::task::spawn_blocking(move || sm.defragment().map_err(|e| e.to_string()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("etcdserver: {e}")))?;
        tracing::info!(before, after, "defragmented the record files");
        Ok(Response::new(DefragmentResponse { header: header(&self.node) }))
    }

    /// etcd hashes its whole backend file; concord hashes every retained record (HashKV at the current
    /// revision), which is what a comparison between members needs.
    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        require_admin(&self.node, &req).await?;
        let (hash, _, _) = self.node.sm.hash_kv(0).await.map_err(mvcc_status)?;
        Ok(Response::new(HashResponse { header: header(&self.node), hash }))
    }

    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        require_admin(&self.node, &req).await?;
        let rev = req.into_inner().revision;
        let (hash, current, compact_revision) = self.node.sm.hash_kv(rev).await.map_err(mvcc_status)?;
        let mut h = Some(ResponseHeader { revision: current, ..Default::default() });
        super::fill_header(&self.node, &mut h);
        Ok(Response::new(HashKvResponse { header: h, hash, compact_revision }))
    }

    type SnapshotStream = SnapshotStream;

    /// A point-in-time copy of the whole state as etcd's backend file (see `backup`), in 32 KiB messages
    /// (etcd's `snapshotSendBufferSize`) and ending with its sha256, as etcd sends it.
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        require_admin(&self.node, &req).await?;
        let sm = self.node.sm.clone();
        let internal = |e: String| Status::internal(format!("etcdserver: {e}"));
        let file = tokio::task::spawn_blocking(move || sm.backup().map_err(|e| e.to_string()))
            .await
            .map_err(|e| internal(e.to_string()))?
            .map_err(internal)?;
        // A bbolt file is whole pages, so already the multiple of 512 bytes etcd's tools expect
        // before the sha256.
        let total = file.metadata().map_err(|e| internal(e.to_string()))?.len();
        let mut body = file;
        let header = header(&self.node);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut hasher = Sha256::new();
            let mut sent = 0u64;
            let mut buf = vec![0u8; 32 * 1024];
            while sent < total {
                let n = match read_full(&mut body, &mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx
                            .blocking_send(Err(Status::internal("etcdserver: reading the snapshot failed")));
                        return;
                    }
                    Ok(n) => n,
                };
                hasher.update(&buf[..n]);
                sent += n as u64;
                let resp =
                    SnapshotResponse { header, remaining_bytes: total - sent, blob: buf[..n].to_vec() };
                if tx.blocking_send(Ok(resp)).is_err() {
                    return; // the client went away
                }
            }
            let sha = SnapshotResponse { header, remaining_bytes: 0, blob: hasher.finalize().to_vec() };
            let _ = tx.blocking_send(Ok(sha));
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    /// etcd 3.5's cluster downgrade. concord's data cannot be read by an older etcd, so no target
    /// version is valid: etcd's answers for a malformed version, a version it will not go to, and a
    /// cancel with nothing to cancel.
    async fn downgrade(&self, req: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        use downgrade_request::DowngradeAction;
        require_admin(&self.node, &req).await?;
        let req = req.into_inner();
        match DowngradeAction::try_from(req.action) {
            Ok(DowngradeAction::Validate | DowngradeAction::Enable) => {
                let parts: Vec<&str> = req.version.split('.').collect();
                let numbers = parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
                if !(2..=3).contains(&parts.len()) || !numbers {
                    return Err(Status::invalid_argument(
                        "etcdserver: wrong downgrade target version format",
                    ));
                }
                Err(Status::invalid_argument("etcdserver: invalid downgrade target version"))
            }
            Ok(DowngradeAction::Cancel) => {
                Err(Status::failed_precondition("etcdserver: no inflight downgrade job"))
            }
            Err(_) => Err(Status::unknown("etcdserver: unknown method")),
        }
    }

    /// etcdctl sends it to the leader (it finds it with Status); another member answers "not leader".
    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        require_admin(&self.node, &req).await?;
        let target = req.into_inner().target_id;
        self.node.move_leader(target).await.map_err(|e| {
            use crate::raft::transfer::TransferError;
            match e {
                TransferError::NotLeader | TransferError::BadTransferee => {
                    Status::failed_precondition(e.to_string())
                }
                TransferError::Timeout => Status::unavailable(e.to_string()),
                TransferError::Node(n) => super::node_status(n),
            }
        })?;
        Ok(Response::new(MoveLeaderResponse { header: header(&self.node) }))
    }
}
