//! etcd's `concurrency.Session`: a lease kept alive in the background for as long as the session lives.

use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;

use super::{Client, ClientError};
use crate::pb::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};

/// etcd's default session TTL, in seconds.
pub const DEFAULT_TTL: i64 = 60;

pub struct Session {
    client: Client,
    lease: i64,
    done: watch::Receiver<bool>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Grants a lease of `ttl` seconds and keeps it alive (a third of the TTL apart, as clientv3 does).
    pub async fn new(client: &Client, ttl: i64) -> Result<Session, ClientError> {
        let lease = client.lease().lease_grant(LeaseGrantRequest { ttl, id: 0 }).await?.into_inner();
        let (tx, reqs) = tokio::sync::mpsc::channel(1);
        // The first keepalive goes out with the call (grpc-go sends no headers before a first message).
        tx.send(LeaseKeepAliveRequest { id: lease.id }).await.map_err(|_| ClientError::SessionExpired)?;
        let mut responses = client.lease().lease_keep_alive(ReceiverStream::new(reqs)).await?.into_inner();
        let (done_tx, done) = watch::channel(false);
        let period = Duration::from_millis((lease.ttl.max(1) as u64 * 1000) / 3);
        let id = lease.id;
        let keepalive = tokio::spawn(async move {
            loop {
                match responses.message().await {
                    Ok(Some(r)) if r.ttl > 0 => {}
                    // Expired, revoked, or the stream broke: the session is over.
                    _ => break,
                }
                tokio::time::sleep(period).await;
                if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                    break;
                }
            }
            let _ = done_tx.send(true);
        });
        Ok(Session { client: client.clone(), lease: lease.id, done, keepalive })
    }

    pub fn lease(&self) -> i64 {
        self.lease
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Resolves when the lease is no longer kept alive (expired, revoked or unreachable).
    pub async fn done(&self) {
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    /// Ends the session: stops the keepalives and revokes the lease, deleting every key on it.
    pub async fn close(self) -> Result<(), ClientError> {
        self.keepalive.abort();
        self.client.lease().lease_revoke(LeaseRevokeRequest { id: self.lease }).await?;
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Without `close`, the lease simply expires after its TTL, as when a Go program exits.
        self.keepalive.abort();
    }
}
