//! Adapts openraft: the type configuration, log storage, state machine, peer network and the node handle
//! the API uses to write and to read linearizably.
//!
//! openraft dictates its error type (`StorageError`, over 200 bytes); boxing it in our helpers would only
//! add a conversion at every trait boundary.
#![allow(clippy::result_large_err)]

mod apply;
pub mod batcher;
pub mod force;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod node;
pub mod peer_service;
pub mod read_index;
pub mod state_machine;
pub mod transfer;
pub mod types;
pub mod wait;

pub use node::RaftNode;
pub use types::{Attributes, Member, Request, Response, TypeConfig};

/// Waits (until `deadline` at most) for a leader to be known, then a moment more: a new leader may not
/// take requests the instant it is elected. Used between retries of writes and read-index rounds.
pub(crate) async fn wait_for_leader(raft: &types::Raft, deadline: tokio::time::Instant) {
    let mut m = raft.metrics();
    let _ = tokio::time::timeout_at(deadline, m.wait_for(|m| m.current_leader.is_some())).await;
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
}

/// bincode with the standard configuration: the encoding of everything concord writes for itself.
pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(v, bincode::config::standard())
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(b, bincode::config::standard()).map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};
    use crate::pb::etcdserverpb::PutRequest;

    /// A put as entries written before its key and value were (de)serialized as byte slices.
    #[derive(serde::Serialize)]
    struct PutAsBefore {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
        prev_kv: bool,
        ignore_value: bool,
        ignore_lease: bool,
    }

    #[test]
    fn a_put_encodes_exactly_as_before_its_bytes_fields_were_read_as_slices() {
        let put = PutRequest {
            key: b"k".to_vec(),
            value: vec![7; 300],
            lease: 5,
            prev_kv: true,
            ..Default::default()
        };
        let before = PutAsBefore {
            key: put.key.clone(),
            value: put.value.clone(),
            lease: 5,
            prev_kv: true,
            ignore_value: false,
            ignore_lease: false,
        };
        let bytes = encode(&before).unwrap();
        assert_eq!(encode(&put).unwrap(), bytes);
        assert_eq!(decode::<PutRequest>(&bytes).unwrap(), put);
    }
}
