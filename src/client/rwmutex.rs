//! etcd's `recipe.RWMutex`, with the same keys (`<name>/read/<nanos>`, `<name>/write/<nanos>` on the
//! session's lease): readers share, a writer excludes everyone, and a waiting writer holds back readers
//! that come after it (writer-preferring).

use super::keys::{put_unique, wait_event};
use super::{prefix_end, Client, ClientError, Session};
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{DeleteRangeRequest, RangeRequest};
use crate::pb::mvccpb::event::EventType;

pub struct RWMutex {
    client: Client,
    lease: i64,
    /// `<name>/`.
    prefix: String,
    mine: Option<(Vec<u8>, i64)>,
}

impl RWMutex {
    pub fn new(session: &Session, name: &str) -> RWMutex {
        RWMutex {
            client: session.client().clone(),
            lease: session.lease(),
            prefix: format!("{name}/"),
            mine: None,
        }
    }

    /// Waits until no writer that queued before this reader holds or waits.
    pub async fn read_lock(&mut self) -> Result<(), ClientError> {
        self.queue("read").await?;
        let writers = format!("{}write", self.prefix);
        while !self.wait_on_last(&writers).await? {}
        Ok(())
    }

    /// Waits until every reader and writer that queued before this writer is gone.
    pub async fn write_lock(&mut self) -> Result<(), ClientError> {
        self.queue("write").await?;
        let everyone = self.prefix.clone();
        while !self.wait_on_last(&everyone).await? {}
        Ok(())
    }

    /// Releases the lock; after an error it can be called again.
    pub async fn unlock(&mut self) -> Result<(), ClientError> {
        if let Some((key, _)) = &self.mine {
            self.client
                .kv()
                .delete_range(DeleteRangeRequest { key: key.clone(), ..Default::default() })
                .await?;
            self.mine = None;
        }
        Ok(())
    }

    async fn queue(&mut self, kind: &str) -> Result<(), ClientError> {
        let mine = put_unique(&self.client, &format!("{}{kind}", self.prefix), b"", self.lease).await?;
        self.mine = Some(mine);
        Ok(())
    }

    /// Whether nothing under `prefix` queued before this key; otherwise waits for the latest such key
    /// to go and answers false (etcd's `waitOnLastRev`).
    async fn wait_on_last(&self, prefix: &str) -> Result<bool, ClientError> {
        let Some((_, my_rev)) = self.mine else { return Ok(true) };
        let req = RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            sort_target: SortTarget::Mod as i32,
            sort_order: SortOrder::Descend as i32,
            limit: 1,
            max_mod_revision: my_rev - 1,
            ..Default::default()
        };
        let resp = self.client.kv().range(req).await?.into_inner();
        let Some(blocking) = resp.kvs.first() else { return Ok(true) };
        wait_event(&self.client, &blocking.key, my_rev, EventType::Delete).await?;
        Ok(false)
    }
}
