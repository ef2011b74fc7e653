//! etcd's `concurrency.Mutex`, key for key: a waiter puts `<prefix>/<lease id in hex>` with its session's
//! lease; the oldest key (lowest create revision) holds the lock; every other waiter waits for the
//! deletion of the key created just before its own. A Rust holder and a Go holder of the same name
//! therefore exclude each other.
//!
//! A lease-based lock cannot by itself stop a holder that was paused past its lease from acting; guard
//! writes with [`Mutex::is_owner`] (the key's create revision, a fencing token) in the write's Txn.

use super::keys::{compare, op, wait_event};
use super::{prefix_end, Client, ClientError, Session};
use crate::pb::etcdserverpb::compare::{CompareResult, TargetUnion};
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::response_op::Response as OpResponse;
use crate::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, ResponseHeader, TxnRequest,
};
use crate::pb::mvccpb::event::EventType;

pub struct Mutex {
    client: Client,
    lease: i64,
    /// `<name>/`.
    prefix: Vec<u8>,
    key: Vec<u8>,
    /// The create revision of this waiter's key: the fencing token while the lock is held.
    rev: i64,
    header: Option<ResponseHeader>,
}

/// Deletes a waiter's key if the `lock` future that put it is dropped before it completes.
pub(super) struct WaitGuard {
    pub(super) client: Client,
    pub(super) key: Option<Vec<u8>>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut kv = self.client.kv();
            tokio::spawn(async move {
                let _ = kv.delete_range(DeleteRangeRequest { key, ..Default::default() }).await;
            });
        }
    }
}

fn range_of(r: Option<&crate::pb::etcdserverpb::ResponseOp>) -> Option<&RangeResponse> {
    match r?.response.as_ref()? {
        OpResponse::ResponseRange(r) => Some(r),
        _ => None,
    }
}

impl Mutex {
    pub fn new(session: &Session, name: &str) -> Mutex {
        Mutex::with_lease(session.client(), session.lease(), name.as_bytes())
    }

    /// A mutex on a lease someone else keeps alive (etcd's lock service uses the caller's lease).
    pub fn with_lease(client: &Client, lease: i64, name: &[u8]) -> Mutex {
        Mutex {
            client: client.clone(),
            lease,
            prefix: [name, b"/"].concat(),
            key: Vec::new(),
            rev: -1,
            header: None,
        }
    }

    /// Queues this session's key and tells whether it is the oldest: (acquired, header).
    async fn enqueue(&mut self) -> Result<(bool, ResponseHeader), ClientError> {
        self.key = [self.prefix.clone(), format!("{:x}", self.lease).into_bytes()].concat();
        let cmp = compare(&self.key, CompareResult::Equal, TargetUnion::CreateRevision(0));
        let put =
            op(Op::RequestPut(PutRequest { key: self.key.clone(), lease: self.lease, ..Default::default() }));
        // An existing key means this session already waits or holds: reuse it.
        let get = op(Op::RequestRange(RangeRequest { key: self.key.clone(), ..Default::default() }));
        let owner = op(Op::RequestRange(RangeRequest {
            key: self.prefix.clone(),
            range_end: prefix_end(&self.prefix),
            sort_target: SortTarget::Create as i32,
            sort_order: SortOrder::Ascend as i32,
            limit: 1,
            ..Default::default()
        }));
        let txn =
            TxnRequest { compare: vec![cmp], success: vec![put, owner.clone()], failure: vec![get, owner] };
        let resp = self.client.kv().txn(txn).await?.into_inner();
        let header = resp.header.unwrap_or_default();
        self.rev = header.revision;
        if !resp.succeeded {
            self.rev = range_of(resp.responses.first())
                .and_then(|r| r.kvs.first())
                .map_or(-1, |kv| kv.create_revision);
        }
        let owner = range_of(resp.responses.get(1)).and_then(|r| r.kvs.first());
        Ok((owner.is_none_or(|kv| kv.create_revision == self.rev), header))
    }

    /// Waits until this session holds the lock. Dropping the future before then withdraws from the queue.
    pub async fn lock(&mut self) -> Result<(), ClientError> {
        let (acquired, header) = self.enqueue().await?;
        if acquired {
            self.header = Some(header);
            return Ok(());
        }
        let mut guard = WaitGuard { client: self.client.clone(), key: Some(self.key.clone()) };
        match wait_deletes(&self.client, &self.prefix, self.rev - 1).await {
            Ok(header) => {
                guard.key = None;
                self.header = Some(header);
                Ok(())
            }
            Err(e) => {
                guard.key = None;
                let _ = self.unlock().await;
                Err(e)
            }
        }
    }

    /// Takes the lock if it is free; otherwise withdraws and fails with [`ClientError::Locked`].
    pub async fn try_lock(&mut self) -> Result<(), ClientError> {
        let (acquired, header) = self.enqueue().await?;
        if acquired {
            self.header = Some(header);
            return Ok(());
        }
        self.unlock().await?;
        Err(ClientError::Locked)
    }

    /// Releases the lock; after an error it can be called again.
    pub async fn unlock(&mut self) -> Result<(), ClientError> {
        if self.key.is_empty() {
            return Ok(());
        }
        let del = DeleteRangeRequest { key: self.key.clone(), ..Default::default() };
        self.client.kv().delete_range(del).await?;
        self.key.clear();
        self.rev = -1;
        Ok(())
    }

    /// The lock key, `<name>/<lease id in hex>`.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The response header of the request that acquired the lock.
    pub fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }

    /// The fencing token: the lock key's create revision, the same for as long as this holder holds it.
    pub fn fencing_token(&self) -> i64 {
        self.rev
    }

    /// A Txn compare that holds only while this holder still owns the lock (etcd's `IsOwner`).
    pub fn is_owner(&self) -> Compare {
        compare(&self.key, CompareResult::Equal, TargetUnion::CreateRevision(self.rev))
    }
}

/// Waits until no key under `prefix` was created at or before `max_create` (etcd's `waitDeletes`).
pub(super) async fn wait_deletes(
    client: &Client,
    prefix: &[u8],
    max_create: i64,
) -> Result<ResponseHeader, ClientError> {
    loop {
        let req = RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            sort_target: SortTarget::Create as i32,
            sort_order: SortOrder::Descend as i32,
            limit: 1,
            max_create_revision: max_create,
            ..Default::default()
        };
        let resp = client.kv().range(req).await?.into_inner();
        let header = resp.header.unwrap_or_default();
        let Some(last) = resp.kvs.into_iter().next() else { return Ok(header) };
        // Watch from the revision of the read, so a deletion right after it is not missed.
        wait_event(client, &last.key, header.revision, EventType::Delete).await?;
    }
}

/// A guard-style lock on top of [`Mutex`] (`let _held = locker.lock().await?;`). Dropping the guard
/// releases the lock in the background; [`LockGuard::unlock`] releases it and reports errors. Like Go's
/// `NewLocker`, guards of one session share its key: the session holds the lock, not the guard.
pub struct Locker {
    client: Client,
    lease: i64,
    name: Vec<u8>,
}

impl Locker {
    pub fn new(session: &Session, name: &str) -> Locker {
        Locker { client: session.client().clone(), lease: session.lease(), name: name.as_bytes().to_vec() }
    }

    pub async fn lock(&self) -> Result<LockGuard, ClientError> {
        let mut mutex = Mutex::with_lease(&self.client, self.lease, &self.name);
        mutex.lock().await?;
        Ok(LockGuard { mutex: Some(mutex) })
    }
}

pub struct LockGuard {
    mutex: Option<Mutex>,
}

impl LockGuard {
    /// See [`Mutex::fencing_token`].
    pub fn fencing_token(&self) -> i64 {
        self.mutex.as_ref().map_or(-1, Mutex::fencing_token)
    }

    pub async fn unlock(mut self) -> Result<(), ClientError> {
        match self.mutex.take() {
            Some(mut m) => m.unlock().await,
            None => Ok(()),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(m) = self.mutex.take() {
            drop(WaitGuard { client: m.client.clone(), key: Some(m.key.clone()) });
        }
    }
}
