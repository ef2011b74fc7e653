//! etcd's `concurrency.Election`, key for key: candidates put `<name>/<lease id in hex>` with their
//! session's lease; the oldest key is the leader, and its value is the leader's proclamation. Go's
//! Election (and `etcdctl elect`) and this one take part in the same elections.

use tokio::sync::mpsc;

use super::keys::{compare, op, wait_prefix_event};
use super::{prefix_end, Client, ClientError, Session};
use crate::pb::etcdserverpb::compare::{CompareResult, TargetUnion};
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::response_op::Response as OpResponse;
use crate::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, ResponseHeader, TxnRequest,
    WatchCreateRequest,
};
use crate::pb::mvccpb::{event::EventType, KeyValue};

pub struct Election {
    client: Client,
    lease: i64,
    /// `<name>/`.
    prefix: Vec<u8>,
    /// Set while this session is a candidate or the leader.
    leader_key: Option<Vec<u8>>,
    leader_rev: i64,
    header: Option<ResponseHeader>,
}

fn created_at(key: &[u8], rev: i64) -> Compare {
    compare(key, CompareResult::Equal, TargetUnion::CreateRevision(rev))
}

/// etcd's errors, with etcd's texts.
pub fn not_leader() -> ClientError {
    ClientError::Status(tonic::Status::unknown("election: not leader"))
}

pub fn no_leader() -> ClientError {
    ClientError::Status(tonic::Status::unknown("election: no leader"))
}

impl Election {
    pub fn new(session: &Session, name: &str) -> Election {
        Election::with_lease(session.client(), session.lease(), name.as_bytes())
    }

    /// An election on a lease someone else keeps alive (etcd's election service uses the caller's).
    pub fn with_lease(client: &Client, lease: i64, name: &[u8]) -> Election {
        Election {
            client: client.clone(),
            lease,
            prefix: [name, b"/"].concat(),
            leader_key: None,
            leader_rev: -1,
            header: None,
        }
    }

    /// Takes up a leadership won elsewhere (etcd's `ResumeElection`): its key and revision.
    pub fn resume(client: &Client, lease: i64, name: &[u8], key: &[u8], rev: i64) -> Election {
        Election {
            leader_key: Some(key.to_vec()),
            leader_rev: rev,
            ..Election::with_lease(client, lease, name)
        }
    }

    fn oldest(&self) -> RangeRequest {
        RangeRequest {
            key: self.prefix.clone(),
            range_end: prefix_end(&self.prefix),
            sort_target: SortTarget::Create as i32,
            sort_order: SortOrder::Ascend as i32,
            limit: 1,
            ..Default::default()
        }
    }

    /// Waits until this session leads, proclaiming `value`. Dropping the future gives up the candidacy.
    pub async fn campaign(&mut self, value: &[u8]) -> Result<(), ClientError> {
        let key = [self.prefix.clone(), format!("{:x}", self.lease).into_bytes()].concat();
        let put = op(Op::RequestPut(PutRequest {
            key: key.clone(),
            value: value.to_vec(),
            lease: self.lease,
            ..Default::default()
        }));
        let get = op(Op::RequestRange(RangeRequest { key: key.clone(), ..Default::default() }));
        let txn = TxnRequest { compare: vec![created_at(&key, 0)], success: vec![put], failure: vec![get] };
        let resp = self.client.kv().txn(txn).await?.into_inner();
        let header = resp.header.unwrap_or_default();
        self.leader_key = Some(key.clone());
        self.leader_rev = header.revision;
        if !resp.succeeded {
            let kv = match resp.responses.first().and_then(|r| r.response.as_ref()) {
                Some(OpResponse::ResponseRange(RangeResponse { kvs, .. })) => kvs.first().cloned(),
                _ => None,
            };
            let Some(kv) = kv else { return Err(not_leader()) };
            self.leader_rev = kv.create_revision;
            if kv.value.as_ref() != value {
                if let Err(e) = self.proclaim(value).await {
                    let _ = self.resign().await;
                    return Err(e);
                }
            }
        }
        let mut guard = super::mutex::WaitGuard { client: self.client.clone(), key: Some(key) };
        let waited = super::mutex::wait_deletes(&self.client, &self.prefix, self.leader_rev - 1).await;
        guard.key = None;
        match waited {
            Ok(_) => {
                self.header = Some(header);
                Ok(())
            }
            Err(e) => {
                let _ = self.resign().await;
                Err(e)
            }
        }
    }

    /// Replaces the leader's value, while still the leader.
    pub async fn proclaim(&mut self, value: &[u8]) -> Result<(), ClientError> {
        let Some(key) = self.leader_key.clone() else { return Err(not_leader()) };
        let put = op(Op::RequestPut(PutRequest {
            key: key.clone(),
            value: value.to_vec(),
            lease: self.lease,
            ..Default::default()
        }));
        let txn = TxnRequest {
            compare: vec![created_at(&key, self.leader_rev)],
            success: vec![put],
            failure: vec![],
        };
        let resp = self.client.kv().txn(txn).await?.into_inner();
        if !resp.succeeded {
            self.leader_key = None;
            return Err(not_leader());
        }
        self.header = resp.header;
        Ok(())
    }

    /// Gives up leadership (or candidacy); nothing to do if there is none.
    pub async fn resign(&mut self) -> Result<(), ClientError> {
        let Some(key) = self.leader_key.take() else { return Ok(()) };
        let del = op(Op::RequestDeleteRange(DeleteRangeRequest { key: key.clone(), ..Default::default() }));
        let txn = TxnRequest {
            compare: vec![created_at(&key, self.leader_rev)],
            success: vec![del],
            failure: vec![],
        };
        self.header = self.client.kv().txn(txn).await?.into_inner().header;
        Ok(())
    }

    /// The current leader's key-value (key, proclaimed value, create revision).
    pub async fn leader(&self) -> Result<KeyValue, ClientError> {
        Ok(self.leader_read().await?.1)
    }

    /// The leader's key-value with the header of the read that found it (as etcd's `Leader` returns).
    pub async fn leader_read(&self) -> Result<(Option<ResponseHeader>, KeyValue), ClientError> {
        let resp = self.client.kv().range(self.oldest()).await?.into_inner();
        let kv = resp.kvs.into_iter().next().ok_or_else(no_leader)?;
        Ok((resp.header, kv))
    }

    /// This session's leader key, while campaigning or leading.
    pub fn key(&self) -> Option<&[u8]> {
        self.leader_key.as_deref()
    }

    /// The leader key's create revision: a fencing token, like the Mutex's.
    pub fn rev(&self) -> i64 {
        self.leader_rev
    }

    pub fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }

    /// Every leader and every proclamation, in order, as etcd's `Observe` reports them; ends when the
    /// receiver is dropped or the connection fails.
    pub fn observe(&self) -> mpsc::Receiver<KeyValue> {
        let (tx, rx) = mpsc::channel(16);
        let (client, range) = (self.client.clone(), self.oldest());
        tokio::spawn(async move {
            let _ = observe(client, range, tx).await;
        });
        rx
    }
}

async fn observe(
    client: Client,
    oldest: RangeRequest,
    tx: mpsc::Sender<KeyValue>,
) -> Result<(), ClientError> {
    loop {
        let resp = client.kv().range(oldest.clone()).await?.into_inner();
        let rev = resp.header.map_or(0, |h| h.revision);
        let leader = match resp.kvs.into_iter().next() {
            Some(kv) => kv,
            None => {
                // No leader yet: the first put under the prefix after this read is the next one.
                wait_prefix_event(&client, &oldest.key, rev, EventType::Put).await?
            }
        };
        let (key, from) = (leader.key.to_vec(), leader.mod_revision + 1);
        if tx.send(leader).await.is_err() {
            return Ok(());
        }
        // Follow this leader's proclamations until its key goes.
        let mut w =
            client.watch(WatchCreateRequest { key, start_revision: from, ..Default::default() }).await?;
        'leader: loop {
            for ev in w.next().await?.events {
                if ev.r#type == EventType::Delete as i32 {
                    break 'leader;
                }
                if let Some(kv) = ev.kv {
                    if tx.send(kv).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}
