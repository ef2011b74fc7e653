//! etcd's `recipe.Queue` and `recipe.PriorityQueue`, key for key, so Go and Rust producers and consumers
//! share a queue. Each item is a key; a consumer claims one by deleting it at the revision it read (a
//! Txn on its mod revision), so every item is delivered exactly once however many consumers race.

use super::keys::{compare, op, put_unique, wait_prefix_event};
use super::{prefix_end, Client, ClientError};
use crate::pb::etcdserverpb::compare::{CompareResult, TargetUnion};
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};
use crate::pb::mvccpb::event::EventType;

/// Deletes `key` if it is still at `rev`: the claim of one item.
async fn delete_rev_key(client: &Client, key: &[u8], rev: i64) -> Result<bool, ClientError> {
    let cmp = compare(key, CompareResult::Equal, TargetUnion::ModRevision(rev));
    let del = op(Op::RequestDeleteRange(DeleteRangeRequest { key: key.to_vec(), ..Default::default() }));
    let txn = TxnRequest { compare: vec![cmp], success: vec![del], failure: vec![] };
    Ok(client.kv().txn(txn).await?.into_inner().succeeded)
}

/// Takes the first item of `prefix` in `order` (waiting for one if there is none) and returns its value.
async fn dequeue(client: &Client, prefix: &[u8], sort_target: SortTarget) -> Result<Vec<u8>, ClientError> {
    loop {
        let first = RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            sort_target: sort_target as i32,
            sort_order: SortOrder::Ascend as i32,
            limit: 1,
            ..Default::default()
        };
        let resp = client.kv().range(first).await?.into_inner();
        if let Some(kv) = resp.kvs.first() {
            if delete_rev_key(client, &kv.key, kv.mod_revision).await? {
                return Ok(kv.value.to_vec());
            }
            continue; // another consumer took it
        }
        // Nothing yet: wait for the next put under the prefix after this read, then try to claim it.
        let rev = resp.header.map_or(0, |h| h.revision);
        let kv = wait_prefix_event(client, prefix, rev, EventType::Put).await?;
        if delete_rev_key(client, &kv.key, kv.mod_revision).await? {
            return Ok(kv.value.to_vec());
        }
    }
}

/// A FIFO queue: items are `<name>/<unix nanos>`, taken oldest (lowest mod revision) first.
pub struct Queue {
    client: Client,
    prefix: String,
}

impl Queue {
    pub fn new(client: &Client, name: &str) -> Queue {
        Queue { client: client.clone(), prefix: name.to_string() }
    }

    pub async fn enqueue(&self, value: &[u8]) -> Result<(), ClientError> {
        put_unique(&self.client, &self.prefix, value, 0).await.map(|_| ())
    }

    /// Takes the oldest item, waiting for one if the queue is empty.
    pub async fn dequeue(&self) -> Result<Vec<u8>, ClientError> {
        dequeue(&self.client, self.prefix.as_bytes(), SortTarget::Mod).await
    }
}

/// A priority queue: items are `<name>/<priority %05d>/<sequence %016d>`, lowest priority number
/// first and FIFO within a priority.
pub struct PriorityQueue {
    client: Client,
    /// `<name>/`.
    prefix: String,
}

impl PriorityQueue {
    pub fn new(client: &Client, name: &str) -> PriorityQueue {
        PriorityQueue { client: client.clone(), prefix: format!("{name}/") }
    }

    pub async fn enqueue(&self, value: &[u8], priority: u16) -> Result<(), ClientError> {
        let prefix = format!("{}{priority:05}", self.prefix);
        // etcd's newSequentialKV: the next number after the last key, guarded by a base key so that two
        // producers cannot both take it.
        let base = format!("__{prefix}").into_bytes();
        loop {
            let last = RangeRequest {
                key: prefix.clone().into_bytes(),
                range_end: prefix_end(prefix.as_bytes()),
                sort_target: SortTarget::Key as i32,
                sort_order: SortOrder::Descend as i32,
                limit: 1,
                ..Default::default()
            };
            let resp = self.client.kv().range(last).await?.into_inner();
            let next = match resp.kvs.first() {
                Some(kv) => {
                    let key = String::from_utf8_lossy(&kv.key).into_owned();
                    let seq = key.rsplit('/').next().and_then(|s| s.parse::<u64>().ok());
                    seq.ok_or_else(|| tonic::Status::invalid_argument(format!("not a queue key: {key}")))? + 1
                }
                None => 0,
            };
            let rev = resp.header.map_or(0, |h| h.revision);
            let cmp = compare(&base, CompareResult::Less, TargetUnion::ModRevision(rev + 1));
            let put_base = op(Op::RequestPut(PutRequest { key: base.clone(), ..Default::default() }));
            let key = format!("{prefix}/{next:016}").into_bytes();
            let put = op(Op::RequestPut(PutRequest { key, value: value.to_vec(), ..Default::default() }));
            let txn = TxnRequest { compare: vec![cmp], success: vec![put_base, put], failure: vec![] };
            if self.client.kv().txn(txn).await?.into_inner().succeeded {
                return Ok(());
            }
        }
    }

    /// Takes the item of lowest priority number (FIFO within it), waiting for one if there is none.
    pub async fn dequeue(&self) -> Result<Vec<u8>, ClientError> {
        dequeue(&self.client, self.prefix.as_bytes(), SortTarget::Key).await
    }
}
