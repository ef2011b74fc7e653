//! etcd's gRPC services, translated into calls on the Raft node and the MVCC store. Nothing here decides
//! anything about data: it validates requests (statelessly, like etcd's v3rpc layer), picks the write or
//! read path, and maps errors to etcd's status codes and texts.

pub mod auth;
pub mod authority;
pub mod cluster;
pub mod coalesce;
pub mod gateway;
pub mod health;
pub mod http;
pub mod kv;
pub mod learner;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod require_leader;
pub mod serve;
pub mod validate;
pub mod watch;

use tonic::Status;

use crate::mvcc::MvccError;
use crate::pb::etcdserverpb::ResponseHeader;
use crate::raft::node::NodeError;
use crate::raft::RaftNode;

/// etcd's error texts, which clients match on.
pub mod errors {
    use tonic::{Code, Status};

    pub fn empty_key() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: key is not provided")
    }
    pub fn too_many_ops() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: too many operations in txn request")
    }
    pub fn duplicate_key() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: duplicate key given in txn request")
    }
    pub fn value_provided() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: value is provided")
    }
    pub fn lease_provided() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: lease is provided")
    }
    pub fn lease_exists() -> Status {
        Status::new(Code::FailedPrecondition, "etcdserver: lease already exists")
    }
    pub fn lease_ttl_too_large() -> Status {
        Status::new(Code::OutOfRange, "etcdserver: too large lease TTL")
    }
    pub fn invalid_sort_option() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: invalid sort option")
    }
    pub fn request_too_large() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: request is too large")
    }
    pub fn compacted() -> Status {
        Status::new(Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
    }
    pub fn future_rev() -> Status {
        Status::new(Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision")
    }
    pub fn key_not_found() -> Status {
        Status::new(Code::InvalidArgument, "etcdserver: key not found")
    }
    pub fn lease_not_found() -> Status {
        Status::new(Code::NotFound, "etcdserver: requested lease not found")
    }
    pub fn corrupt() -> Status {
        Status::new(Code::DataLoss, "etcdserver: corrupt cluster")
    }
    pub fn no_space() -> Status {
        Status::new(Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded")
    }
    pub fn no_leader() -> Status {
        Status::new(Code::Unavailable, "etcdserver: no leader")
    }
    pub fn timeout() -> Status {
        Status::new(Code::Unavailable, "etcdserver: request timed out")
    }
    pub fn stopped() -> Status {
        Status::new(Code::Unavailable, "etcdserver: server stopped")
    }
    pub fn not_supported(what: &str) -> Status {
        Status::new(Code::Unimplemented, format!("concord: {what} is not supported yet"))
    }
}

pub fn mvcc_status(e: MvccError) -> Status {
    match e {
        MvccError::Compacted => errors::compacted(),
        MvccError::FutureRev => errors::future_rev(),
        MvccError::KeyNotFound => errors::key_not_found(),
        MvccError::LeaseNotFound => errors::lease_not_found(),
        MvccError::LeaseExists => errors::lease_exists(),
        MvccError::NoSpace => errors::no_space(),
        MvccError::Corrupt => errors::corrupt(),
        MvccError::Backend(m) => Status::internal(format!("etcdserver: {m}")),
    }
}

pub fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::NoLeader => errors::no_leader(),
        NodeError::Timeout => errors::timeout(),
        NodeError::Stopped => errors::stopped(),
        NodeError::Internal(m) => Status::internal(m),
    }
}

/// Proposes a client's write through Raft, as `caller` (see `auth::caller`); a deterministic error
/// from apply becomes etcd's status for it. A client's request always carries its caller, anonymous
/// while auth is off here: this member may not have applied an AuthEnable that the entry will be
/// applied after, and then it must be refused like any other anonymous write.
pub async fn write(
    node: &RaftNode,
    caller: Option<crate::auth::Caller>,
    req: crate::raft::Request,
) -> Result<crate::raft::Response, Status> {
    check_quota(node, &req).await?;
    let req = crate::raft::Request::Authed { caller: caller.unwrap_or_default(), request: Box::new(req) };
    match node.write(req).await.map_err(node_status)? {
        crate::raft::Response::Error(e) => Err(mvcc_status(e)),
        crate::raft::Response::Denied(e) => Err(auth::auth_status(e)),
        other => Ok(other),
    }
}

/// etcd's quota check before a write that adds data: past `--quota-backend-bytes` the member raises its
/// NOSPACE alarm (through the log, so every member refuses such writes) and refuses the request.
async fn check_quota(node: &RaftNode, req: &crate::raft::Request) -> Result<(), Status> {
    let cost = crate::quota::cost(req);
    if cost == 0 || node.sm.db_size_noted().saturating_add(cost) <= node.quota_bytes {
        return Ok(());
    }
    let alarm = crate::raft::Request::Alarm { activate: true, member: node.id, alarm: crate::quota::NOSPACE };
    if let Err(e) = node.write(alarm).await {
        tracing::warn!("raising the NOSPACE alarm: {e}");
    }
    Err(errors::no_space())
}

/// A response of another kind than the request's: a bug, never a client's doing.
pub fn unexpected() -> Status {
    Status::internal("etcdserver: unexpected response from the state machine")
}

/// Fills the member-level fields of a response header, keeping the revision the store put there.
pub fn fill_header(node: &RaftNode, header: &mut Option<ResponseHeader>) {
    let h = header.get_or_insert_with(ResponseHeader::default);
    h.cluster_id = node.cluster_id;
    h.member_id = node.id;
    h.raft_term = node.term();
}

/// A header for responses that carry no store revision of their own.
pub fn header(node: &RaftNode) -> Option<ResponseHeader> {
    let revision = node.sm.read(|s| s.current_revision());
    let mut h = Some(ResponseHeader { revision, ..Default::default() });
    fill_header(node, &mut h);
    h
}
