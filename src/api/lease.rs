//! The Lease service. Grant and revoke go through Raft; keepalives and time-to-live questions go to the
//! leader's lease clock (answered here on the leader, forwarded from a follower), never through the log.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{errors, header, node_status, unexpected, write};
use crate::lease::MAX_TTL;
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::*;
use crate::raft::node::{LeaseAnswer, LeaseQuery};
use crate::raft::{self, RaftNode};

pub struct LeaseService {
    pub node: RaftNode,
    /// etcd's minimum TTL (`lease::min_ttl`).
    pub min_ttl: i64,
    ids: AtomicU64,
}

impl LeaseService {
    pub fn new(node: RaftNode, heartbeat_ms: u64, election_ms: u64) -> Self {
        // Like etcd's request id generator: the member id's low 16 bits, then a clock-seeded counter, so
        // members never hand out the same id.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let seed = ((node.id & 0xffff) << 48) | ((now_ms & 0xff_ffff_ffff) << 8);
        LeaseService {
            node,
            min_ttl: crate::lease::min_ttl(heartbeat_ms, election_ms),
            ids: AtomicU64::new(seed),
        }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let caller = super::auth::caller(&self.node, &req).await?;
        let req = req.into_inner();
        if req.ttl > MAX_TTL {
            return Err(errors::lease_ttl_too_large());
        }
        let mut id = req.id;
        while id == 0 {
            // Only positive ids, as etcd.
            id = (self.ids.fetch_add(1, Ordering::Relaxed) & (i64::MAX as u64)) as i64;
        }
        let ttl = req.ttl.max(self.min_ttl);
        match write(&self.node, caller, raft::Request::LeaseGrant { id, ttl }).await? {
            raft::Response::LeaseGrant(mut r) => {
                super::fill_header(&self.node, &mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected()),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let caller = super::auth::caller(&self.node, &req).await?;
        let id = req.into_inner().id;
        match write(&self.node, caller, raft::Request::LeaseRevoke { id }).await? {
            raft::Response::LeaseRevoke(mut r) => {
                super::fill_header(&self.node, &mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected()),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        // Renewing is changing: the caller must be someone (checked once, for the whole stream). While
        // auth is off its token is not looked at, as etcd never looks at a keepalive's.
        let caller = match self.node.sm.auth_enabled() {
            true => super::auth::caller(&self.node, &req).await?,
            false => None,
        };
        super::auth::check(&self.node, &caller, |auth, c| auth.check_authenticated(c))?;
        let node = self.node.clone();
        let requests = req.into_inner();
        let responses = requests.then(move |r| {
            let node = node.clone();
            async move {
                let id = r?.id;
                // The header is taken before the renewal (as etcd): a keepalive never reports a revision
                // later than a revoke it raced with.
                let header = header(&node);
                match node.lease_query(LeaseQuery::Renew(id)).await.map_err(node_status)? {
                    LeaseAnswer::Renewed(ttl) => Ok(LeaseKeepAliveResponse { header, id, ttl }),
                    _ => Err(unexpected()),
                }
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let caller = super::auth::caller(&self.node, &req).await?;
        let req = req.into_inner();
        // etcd 3.5's `checkLeaseTimeToLive`: with auth on, only a caller who may read every key on the
        // lease learns about it (its keys would tell what it holds).
        super::auth::check(&self.node, &caller, |auth, c| {
            if c.user.is_empty() {
                return Err(crate::auth::AuthError::UserEmpty);
            }
            let keys = self.node.sm.lease(req.id, true).map(|(_, keys)| keys).unwrap_or_default();
            keys.iter().try_for_each(|k| auth.check(c, crate::auth::Kind::Read, k, &[]))
        })?;
        let query = LeaseQuery::TimeToLive { id: req.id, keys: req.keys };
        let answer = self.node.lease_query(query).await.map_err(node_status)?;
        let LeaseAnswer::TimeToLive(found) = answer else { return Err(unexpected()) };
        // An unknown lease is not an error here: TTL -1, as etcd answers.
        let (granted_ttl, ttl, keys) = found.unwrap_or((0, -1, Vec::new()));
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: header(&self.node),
            id: req.id,
            ttl,
            granted_ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self.node.sm.leases().into_iter().map(|(id, _)| LeaseStatus { id }).collect();
        Ok(Response::new(LeaseLeasesResponse { header: header(&self.node), leases }))
    }
}
