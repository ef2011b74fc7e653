//! The key helpers etcd's recipes share (`contrib/recipes/key.go`, `watch.go`).

use super::{Client, ClientError};
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::{Compare, PutRequest, RequestOp, TxnRequest, WatchCreateRequest};
use crate::pb::mvccpb::{event::EventType, KeyValue};

/// A Txn compare on one key; the target follows from what is compared (etcd's
/// `v3.Compare(v3.CreateRevision(key), "=", 0)` and the like).
pub(super) fn compare(key: &[u8], result: CompareResult, value: TargetUnion) -> Compare {
    let target = match value {
        TargetUnion::Version(_) => CompareTarget::Version,
        TargetUnion::CreateRevision(_) => CompareTarget::Create,
        TargetUnion::ModRevision(_) => CompareTarget::Mod,
        TargetUnion::Value(_) => CompareTarget::Value,
        TargetUnion::Lease(_) => CompareTarget::Lease,
    };
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(value),
    }
}

pub(super) fn op(r: Op) -> RequestOp {
    RequestOp { request: Some(r) }
}

/// Puts `key` only if it does not exist; the revision of the put, or `None` if the key exists.
pub(super) async fn put_new(
    client: &Client,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<Option<i64>, ClientError> {
    let cmp = compare(key, CompareResult::Equal, TargetUnion::Version(0));
    let put = PutRequest { key: key.to_vec(), value: value.to_vec(), lease, ..Default::default() };
    let txn = TxnRequest { compare: vec![cmp], success: vec![op(Op::RequestPut(put))], failure: vec![] };
    let resp = client.kv().txn(txn).await?.into_inner();
    Ok(resp.succeeded.then(|| resp.header.map_or(0, |h| h.revision)))
}

/// Puts a new key `<prefix>/<unix nanos>` (etcd's `newUniqueKV`): its name and revision.
pub(super) async fn put_unique(
    client: &Client,
    prefix: &str,
    value: &[u8],
    lease: i64,
) -> Result<(Vec<u8>, i64), ClientError> {
    loop {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let key = format!("{prefix}/{nanos}").into_bytes();
        if let Some(rev) = put_new(client, &key, value, lease).await? {
            return Ok((key, rev));
        }
    }
}

/// Waits, from revision `rev` on, for an event of `kind` on `key` (etcd's `WaitEvents`).
pub(super) async fn wait_event(
    client: &Client,
    key: &[u8],
    rev: i64,
    kind: EventType,
) -> Result<(), ClientError> {
    let create = WatchCreateRequest { key: key.to_vec(), start_revision: rev, ..Default::default() };
    first_event(client, create, kind).await.map(|_| ())
}

/// Waits, from revision `rev` on, for an event of `kind` under `prefix`; returns its key-value (etcd's
/// `WaitPrefixEvents`).
pub(super) async fn wait_prefix_event(
    client: &Client,
    prefix: &[u8],
    rev: i64,
    kind: EventType,
) -> Result<KeyValue, ClientError> {
    let range_end = super::prefix_end(prefix);
    let create =
        WatchCreateRequest { key: prefix.to_vec(), range_end, start_revision: rev, ..Default::default() };
    first_event(client, create, kind).await
}

async fn first_event(
    client: &Client,
    create: WatchCreateRequest,
    kind: EventType,
) -> Result<KeyValue, ClientError> {
    let mut watch = client.watch(create).await?;
    loop {
        let found = watch.next().await?.events.into_iter().find(|e| e.r#type == kind as i32);
        if let Some(kv) = found.and_then(|e| e.kv) {
            return Ok(kv);
        }
    }
}
