//! What travels through the Raft log, and the openraft type configuration.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, AuthOp, Caller};
use crate::mvcc::MvccError;
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};

/// A write request, as the client sent it (already validated by the API layer).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    /// A member announces its name and the client URLs it serves on (etcd's "publish" of member
    /// attributes); a member added at run time is "unstarted" until it does.
    Publish {
        id: u64,
        attributes: Attributes,
    },
    /// A new lease (its id chosen by the proposer, its TTL already within etcd's limits).
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Revokes a lease and deletes its keys in one revision; the leader proposes it when a lease expires.
    LeaseRevoke {
        id: i64,
    },
    /// etcd's Maintenance.Alarm: raise or clear an alarm of a member (an `AlarmType` value).
    Alarm {
        activate: bool,
        member: u64,
        alarm: i32,
    },
    /// A change to users, roles, permissions or whether auth is on, or an Authenticate.
    Auth(AuthOp),
    /// A client's request with its caller (anonymous while auth is off): apply checks the caller's
    /// permissions against the auth state it applies to (etcd's `authApplierV3`). Requests without one
    /// come from the members themselves (lease expiry, alarms) and are not checked.
    Authed {
        caller: Caller,
        request: Box<Request>,
    },
    /// Concurrent requests proposed as one entry (see `batcher`); applied in order, one revision each.
    Batch(Vec<Request>),
    /// A request with the id its proposer waits on (see `wait`): applied as the request itself.
    Proposed {
        id: u64,
        request: Box<Request>,
    },
    /// What the leader's clock has left of leases, (id, seconds; 0 forgets it), so that a new leader
    /// starts them from there instead of from their whole TTL (etcd's lease checkpoints). Last of the
    /// variants: bincode numbers them, and entries already in a log keep their numbers.
    LeaseCheckpoint(Vec<(i64, i64)>),
}

impl Request {
    /// Approximate encoded size, used to bound batches.
    pub fn encoded_len(&self) -> usize {
        use prost::Message;
        match self {
            Request::Put(r) => r.encoded_len(),
            Request::DeleteRange(r) => r.encoded_len(),
            Request::Txn(r) => r.encoded_len(),
            Request::Compact(r) => r.encoded_len(),
            Request::LeaseGrant { .. } | Request::LeaseRevoke { .. } | Request::Alarm { .. } => 16,
            Request::LeaseCheckpoint(c) => 16 * c.len(),
            Request::Publish { attributes: a, .. } => {
                8 + a.name.len() + a.client_urls.iter().map(|u| u.len() + 2).sum::<usize>()
            }
            Request::Auth(_) => 128,
            Request::Authed { caller, request } => caller.user.len() + 16 + request.encoded_len(),
            Request::Batch(rs) => rs.iter().map(Request::encoded_len).sum(),
            Request::Proposed { request, .. } => 8 + request.encoded_len(),
        }
    }

    /// How many client requests this is (etcd's `--snapshot-count` counts these).
    pub fn requests(&self) -> u64 {
        match self {
            Request::Batch(rs) => rs.len() as u64,
            Request::Proposed { request, .. } => request.requests(),
            _ => 1,
        }
    }
}

/// The outcome of applying one log entry. Errors that depend on the state (a compacted revision, a
/// missing key) are outcomes too: every member reaches the same one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    Error(MvccError),
    /// The alarm an Alarm request raised or cleared, if it changed anything: (member, alarm).
    Alarm(Option<(u64, i32)>),
    /// A refused caller (permission denied, auth not enabled, ...).
    Denied(AuthError),
    /// The simple token an Authenticate issued.
    Token(String),
    /// Blank and membership entries; auth changes.
    None,
    /// The responses to a `Request::Batch`, in order.
    Batch(Vec<Response>),
}

/// A member as Raft knows it: enough to reach it and to list it like etcd's MemberList.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// What a member publishes about itself once it runs (etcd's member attributes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    pub name: String,
    pub client_urls: Vec<String>,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_urls.join(","))
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<u64, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, Member>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<u64>;
pub type Raft = openraft::Raft<TypeConfig>;
/// Where `Raft::client_write_ff` delivers openraft's answer to an entry.
pub type WriteAnswer = tokio::sync::oneshot::Receiver<openraft::raft::ClientWriteResult<TypeConfig>>;
