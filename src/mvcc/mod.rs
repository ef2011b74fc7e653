//! etcd's multi-version key-value store, without Raft and without a storage engine.
//!
//! Everything here is deterministic: given the same sequence of write requests, every member computes the
//! same revisions, responses and records. Replication and durability are the caller's business.

pub mod backend;
pub mod etcd_record;
pub mod key_index;
pub mod revision;
pub mod store;
pub mod txn;

pub use backend::{Backend, Changes, MemBackend};
pub use key_index::RangeEnd;
pub use revision::Revision;
pub use store::Store;

/// Errors of the store, named like etcd's so the API layer can map each to etcd's gRPC status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("mvcc: database space exceeded")]
    NoSpace,
    #[error("corrupt cluster")]
    Corrupt,
    #[error("storage: {0}")]
    Backend(String),
}
