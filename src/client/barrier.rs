//! etcd's `recipe.Barrier` and `recipe.DoubleBarrier`, with the same keys.

use super::keys::{put_new, put_unique, wait_event};
use super::{prefix_end, Client, ClientError, Session};
use crate::pb::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
use crate::pb::mvccpb::event::EventType;

/// Blocks waiters until released: the barrier is up while its key exists.
pub struct Barrier {
    client: Client,
    key: Vec<u8>,
}

impl Barrier {
    pub fn new(client: &Client, key: &str) -> Barrier {
        Barrier { client: client.clone(), key: key.as_bytes().to_vec() }
    }

    /// Raises the barrier (fails with a "key already exists" status if it is up already).
    pub async fn hold(&self) -> Result<(), ClientError> {
        match put_new(&self.client, &self.key, b"", 0).await? {
            Some(_) => Ok(()),
            None => Err(tonic::Status::already_exists("key already exists").into()),
        }
    }

    pub async fn release(&self) -> Result<(), ClientError> {
        self.client
            .kv()
            .delete_range(DeleteRangeRequest { key: self.key.clone(), ..Default::default() })
            .await?;
        Ok(())
    }

    /// Returns once the barrier is down.
    pub async fn wait(&self) -> Result<(), ClientError> {
        let resp =
            self.client.kv().range(RangeRequest { key: self.key.clone(), ..Default::default() }).await?;
        let resp = resp.into_inner();
        if resp.kvs.is_empty() {
            return Ok(());
        }
        let rev = resp.header.map_or(0, |h| h.revision);
        wait_event(&self.client, &self.key, rev + 1, EventType::Delete).await
    }
}

/// `count` participants enter together and leave together (keys `<name>/waiters/<nanos>` on each
/// participant's lease, and `<name>/ready`).
pub struct DoubleBarrier {
    client: Client,
    lease: i64,
    name: String,
    count: usize,
    mine: Option<(Vec<u8>, i64)>,
}

impl DoubleBarrier {
    pub fn new(session: &Session, name: &str, count: usize) -> DoubleBarrier {
        DoubleBarrier {
            client: session.client().clone(),
            lease: session.lease(),
            name: name.to_string(),
            count,
            mine: None,
        }
    }

    fn waiters(&self) -> RangeRequest {
        let key = format!("{}/waiters", self.name).into_bytes();
        RangeRequest { range_end: prefix_end(&key), key, ..Default::default() }
    }

    /// Waits until `count` participants have entered.
    pub async fn enter(&mut self) -> Result<(), ClientError> {
        let (key, rev) = put_unique(&self.client, &format!("{}/waiters", self.name), b"", self.lease).await?;
        self.mine = Some((key, rev));
        let n = self.client.kv().range(self.waiters()).await?.into_inner().kvs.len();
        let ready = format!("{}/ready", self.name).into_bytes();
        if n > self.count {
            return Err(tonic::Status::resource_exhausted("too many clients").into());
        }
        if n == self.count {
            self.client.kv().put(PutRequest { key: ready, ..Default::default() }).await?;
            return Ok(());
        }
        wait_event(&self.client, &ready, rev, EventType::Put).await
    }

    /// Waits until every participant has left.
    pub async fn leave(&mut self) -> Result<(), ClientError> {
        let Some((my_key, _)) = self.mine.clone() else { return Ok(()) };
        loop {
            let kvs = self.client.kv().range(self.waiters()).await?.into_inner().kvs;
            let (Some(lowest), Some(highest)) =
                (kvs.iter().min_by_key(|k| k.mod_revision), kvs.iter().max_by_key(|k| k.mod_revision))
            else {
                return Ok(());
            };
            if kvs.len() == 1 {
                // The last one out takes the barrier down.
                let ready = format!("{}/ready", self.name).into_bytes();
                self.client
                    .kv()
                    .delete_range(DeleteRangeRequest { key: ready, ..Default::default() })
                    .await?;
                self.client
                    .kv()
                    .delete_range(DeleteRangeRequest { key: my_key, ..Default::default() })
                    .await?;
                self.mine = None;
                return Ok(());
            }
            if lowest.key.as_ref() == my_key.as_slice() {
                // The lowest waits for the highest, and so on until it is alone.
                wait_event(&self.client, &highest.key, highest.mod_revision, EventType::Delete).await?;
            } else {
                if self.mine.take().is_some() {
                    let del = DeleteRangeRequest { key: my_key.clone(), ..Default::default() };
                    self.client.kv().delete_range(del).await?;
                }
                wait_event(&self.client, &lowest.key, lowest.mod_revision, EventType::Delete).await?;
                if self.mine.is_none() {
                    return Ok(());
                }
            }
        }
    }
}
