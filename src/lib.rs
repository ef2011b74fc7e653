//! concord: an etcd-compatible coordination server.
//!
//! Layers, from the wire inwards: `api` translates etcd's gRPC services into calls; `raft` adapts openraft
//! (log storage, state machine, peer network); `storage` is the one module that knows sled; `mvcc` is
//! etcd's multi-version store, pure and deterministic. Every write takes one path:
//! api → raft (log, replicate, commit) → apply → mvcc → (watchers, later).

pub mod api;
pub mod bench;
pub mod config;
pub mod mvcc;
pub mod pb;
pub mod raft;
pub mod server;
pub mod storage;
pub use config::Config;
pub use server::{Server, ServerError};
