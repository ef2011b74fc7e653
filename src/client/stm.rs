//! etcd's software transactional memory (`concurrency.STM`): run a closure that reads and writes keys;
//! its writes are committed in one Txn guarded by what it read, and the closure runs again on conflict.
//! The four isolation levels and their conflict rules are etcd's.

use std::collections::BTreeMap;

use super::{Client, ClientError};
use crate::pb::etcdserverpb::compare::{CompareResult, TargetUnion};
use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::response_op::Response as OpResponse;
use crate::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    /// Reads from one snapshot; fails on any read key changed, or any written key changed since the
    /// snapshot (etcd's default).
    #[default]
    SerializableSnapshot,
    /// Reads from one snapshot; fails on any read key changed.
    Serializable,
    /// Fails on any read key changed; reads are not from one snapshot.
    RepeatableReads,
    /// No conflict checks: reads see committed data, writes go through.
    ReadCommitted,
}

/// The transaction a closure works on.
pub struct Stm {
    client: Client,
    iso: Isolation,
    reads: BTreeMap<Vec<u8>, RangeResponse>,
    writes: BTreeMap<Vec<u8>, (Vec<u8>, RequestOp)>,
    /// Reads that serve the next attempt after a conflict (the snapshot levels).
    prefetch: BTreeMap<Vec<u8>, RangeResponse>,
    /// The snapshot levels read every key at the revision of their first read.
    snapshot: Option<i64>,
}

fn mod_revision(key: &[u8], result: CompareResult, rev: i64) -> Compare {
    super::keys::compare(key, result, TargetUnion::ModRevision(rev))
}

impl Stm {
    /// The value of `key` (empty if absent), as this transaction sees it.
    pub async fn get(&mut self, key: &[u8]) -> Result<Vec<u8>, ClientError> {
        if let Some((value, _)) = self.writes.get(key) {
            return Ok(value.clone());
        }
        Ok(self.fetch(key).await?.kvs.first().map(|kv| kv.value.to_vec()).unwrap_or_default())
    }

    /// The mod revision of `key` (0 if absent), as this transaction sees it.
    pub async fn rev(&mut self, key: &[u8]) -> Result<i64, ClientError> {
        Ok(self.fetch(key).await?.kvs.first().map_or(0, |kv| kv.mod_revision))
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        let put = PutRequest { key: key.to_vec(), value: value.to_vec(), ..Default::default() };
        self.writes.insert(key.to_vec(), (value.to_vec(), RequestOp { request: Some(Op::RequestPut(put)) }));
    }

    pub fn del(&mut self, key: &[u8]) {
        let del = DeleteRangeRequest { key: key.to_vec(), ..Default::default() };
        self.writes
            .insert(key.to_vec(), (Vec::new(), RequestOp { request: Some(Op::RequestDeleteRange(del)) }));
    }

    fn snapshot_level(&self) -> bool {
        matches!(self.iso, Isolation::SerializableSnapshot | Isolation::Serializable)
    }

    async fn fetch(&mut self, key: &[u8]) -> Result<&RangeResponse, ClientError> {
        if !self.reads.contains_key(key) {
            let resp = match self.prefetch.remove(key) {
                Some(r) => r,
                None => {
                    let get = RangeRequest {
                        key: key.to_vec(),
                        revision: self.snapshot.unwrap_or(0),
                        serializable: self.snapshot.is_some() || !self.snapshot_level(),
                        ..Default::default()
                    };
                    self.client.kv().range(get).await?.into_inner()
                }
            };
            if self.snapshot_level() && self.snapshot.is_none() {
                self.snapshot = resp.header.as_ref().map(|h| h.revision);
            }
            self.reads.insert(key.to_vec(), resp);
        }
        self.reads.get(key).ok_or(ClientError::WatchClosed)
    }

    fn conflicts(&self) -> Vec<Compare> {
        let reads = || {
            self.reads.iter().map(|(k, r)| {
                mod_revision(k, CompareResult::Equal, r.kvs.first().map_or(0, |kv| kv.mod_revision))
            })
        };
        match self.iso {
            Isolation::SerializableSnapshot => {
                let first = self.reads.values().filter_map(|r| r.header.as_ref()).map(|h| h.revision).min();
                let first = first.unwrap_or(i64::MAX - 1);
                reads()
                    .chain(self.writes.keys().map(|k| mod_revision(k, CompareResult::Less, first + 1)))
                    .collect()
            }
            Isolation::Serializable | Isolation::RepeatableReads => reads().collect(),
            Isolation::ReadCommitted => Vec::new(),
        }
    }

    /// Commits; `None` on a conflict (after refreshing what the next attempt reads, at the snapshot levels).
    async fn commit(&mut self) -> Result<Option<TxnResponse>, ClientError> {
        let keys: Vec<Vec<u8>> = self.reads.keys().cloned().collect();
        let failure = if self.snapshot_level() {
            keys.iter()
                .map(|k| RequestOp {
                    request: Some(Op::RequestRange(RangeRequest { key: k.clone(), ..Default::default() })),
                })
                .collect()
        } else {
            Vec::new()
        };
        let txn = TxnRequest {
            compare: self.conflicts(),
            success: self.writes.values().map(|(_, op)| op.clone()).collect(),
            failure,
        };
        let resp = self.client.kv().txn(txn).await?.into_inner();
        if resp.succeeded {
            return Ok(Some(resp));
        }
        if self.snapshot_level() {
            let header = resp.header;
            self.prefetch = keys
                .into_iter()
                .zip(resp.responses)
                .filter_map(|(k, r)| match r.response {
                    Some(OpResponse::ResponseRange(mut range)) => {
                        range.header = header;
                        Some((k, range))
                    }
                    _ => None,
                })
                .collect();
        }
        Ok(None)
    }

    fn reset(&mut self) {
        self.reads.clear();
        self.writes.clear();
        self.snapshot = None;
    }
}

/// What `apply` returns: a future borrowing the transaction (`|s| Box::pin(async move { ... })`).
pub type Apply<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ClientError>> + Send + 'a>>;

/// Runs `apply` as a transaction at isolation `iso`, retrying it until it commits without a conflict;
/// `prefetch` keys are read before it runs. An error from `apply` ends the run with that error.
pub async fn run<F>(
    client: &Client,
    iso: Isolation,
    prefetch: &[Vec<u8>],
    mut apply: F,
) -> Result<TxnResponse, ClientError>
where
    F: for<'s> FnMut(&'s mut Stm) -> Apply<'s>,
{
    let mut stm = Stm {
        client: client.clone(),
        iso,
        reads: BTreeMap::new(),
        writes: BTreeMap::new(),
        prefetch: BTreeMap::new(),
        snapshot: None,
    };
    loop {
        stm.reset();
        for key in prefetch {
            stm.get(key).await?;
        }
        apply(&mut stm).await?;
        if let Some(resp) = stm.commit().await? {
            return Ok(resp);
        }
    }
}
