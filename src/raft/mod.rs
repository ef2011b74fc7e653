//! Adapts openraft: the type configuration, log storage, state machine, peer network and the node handle
//! the API uses to write and to read linearizably.
//!
//! openraft dictates its error type (`StorageError`, over 200 bytes); boxing it in our helpers would only
//! add a conversion at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod batcher;
pub mod log_store;
pub mod network;
pub mod node;
pub mod peer_service;
pub mod read_index;
pub mod state_machine;
pub mod types;

pub use node::RaftNode;
pub use types::{Member, Request, Response, TypeConfig};

/// bincode with the standard configuration: the encoding of everything concord writes for itself.
pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(v, bincode::config::standard())
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(b, bincode::config::standard()).map(|(v, _)| v)
}
