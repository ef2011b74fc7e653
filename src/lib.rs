//! concord: an etcd-compatible coordination server.
//!
//! Layers, from the wire inwards: `api` translates etcd's gRPC services into calls; `raft` adapts openraft
//! (log storage, state machine, peer network); `storage` owns everything on disk; `mvcc` is etcd's
//! multi-version store, pure and deterministic; `watch` delivers its events. Every write takes one path:
//! api → raft (log, replicate, commit) → apply → mvcc → watch hub.

pub mod api;
pub mod auth;
pub mod backup;
pub mod bench;
pub mod bootstrap;
pub mod client;
pub mod compactor;
pub mod config;
pub mod corrupt;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod migrate;
pub mod mvcc;
pub mod pb;
pub mod quota;
pub mod raft;
pub mod server;
pub mod storage;
pub mod tls;
pub mod watch;
pub use config::Config;
pub use server::{Server, ServerError};
