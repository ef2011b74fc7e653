//! etcd's lock and election services (v3lockpb, v3electionpb). Like etcd, they are built on the recipes
//! over the member's own client API: a loopback client runs `client::Mutex` and `client::Election` on
//! the caller's lease.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status};

use crate::client::{Client, Election, Mutex};
use crate::pb::etcdserverpb::{DeleteRangeRequest, ResponseHeader};
use crate::pb::v3electionpb::election_server::Election as ElectionApi;
use crate::pb::v3electionpb::*;
use crate::pb::v3lockpb::lock_server::Lock;
use crate::pb::v3lockpb::*;

/// A client of this member's own client API, connected on first use.
#[derive(Clone)]
pub struct Loopback {
    url: String,
    tls: Option<tonic::transport::ClientTlsConfig>,
    client: Arc<tokio::sync::OnceCell<Client>>,
}

impl Loopback {
    /// A client of this member's own client `url`; `tls` for an `https://` one.
    pub fn new(url: String, tls: Option<tonic::transport::ClientTlsConfig>) -> Loopback {
        Loopback { url, tls, client: Default::default() }
    }

    async fn get(&self) -> Result<Client, Status> {
        let url = std::slice::from_ref(&self.url);
        let connect = || Client::connect_tls(url, Duration::from_secs(5), self.tls.clone());
        self.client.get_or_try_init(connect).await.cloned().map_err(Status::from)
    }
}

fn missing_leader() -> Status {
    Status::unknown("\"leader\" field must be provided")
}

pub struct LockService {
    pub client: Loopback,
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let req = req.into_inner();
        let mut m = Mutex::with_lease(&self.client.get().await?, req.lease, &req.name);
        m.lock().await.map_err(Status::from)?;
        Ok(Response::new(LockResponse { header: m.header().copied(), key: m.key().to_vec() }))
    }

    async fn unlock(&self, req: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let key = req.into_inner().key;
        let resp = self
            .client
            .get()
            .await?
            .kv()
            .delete_range(DeleteRangeRequest { key, ..Default::default() })
            .await?;
        Ok(Response::new(UnlockResponse { header: resp.into_inner().header }))
    }
}

pub struct ElectionService {
    pub client: Loopback,
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

fn leader_response(kv: crate::pb::mvccpb::KeyValue) -> LeaderResponse {
    // An observed change carries its own revision (etcd's Observe reports the watch's).
    let header = Some(ResponseHeader { revision: kv.mod_revision, ..Default::default() });
    LeaderResponse { header, kv: Some(kv) }
}

#[tonic::async_trait]
impl ElectionApi for ElectionService {
    async fn campaign(&self, req: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let req = req.into_inner();
        let mut e = Election::with_lease(&self.client.get().await?, req.lease, &req.name);
        e.campaign(&req.value).await.map_err(Status::from)?;
        let leader = LeaderKey {
            name: req.name,
            key: e.key().map(<[u8]>::to_vec).unwrap_or_default(),
            rev: e.rev(),
            lease: req.lease,
        };
        Ok(Response::new(CampaignResponse { header: e.header().copied(), leader: Some(leader) }))
    }

    async fn proclaim(&self, req: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let req = req.into_inner();
        let l = req.leader.ok_or_else(missing_leader)?;
        let mut e = Election::resume(&self.client.get().await?, l.lease, &l.name, &l.key, l.rev);
        e.proclaim(&req.value).await.map_err(Status::from)?;
        Ok(Response::new(ProclaimResponse { header: e.header().copied() }))
    }

    async fn leader(&self, req: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let name = req.into_inner().name;
        let e = Election::with_lease(&self.client.get().await?, 0, &name);
        let (header, kv) = e.leader_read().await.map_err(Status::from)?;
        Ok(Response::new(LeaderResponse { header, kv: Some(kv) }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, req: Request<LeaderRequest>) -> Result<Response<ObserveStream>, Status> {
        let name = req.into_inner().name;
        let rx = Election::with_lease(&self.client.get().await?, 0, &name).observe();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(futures::StreamExt::map(stream, |kv| Ok(leader_response(kv))))))
    }

    async fn resign(&self, req: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let l = req.into_inner().leader.ok_or_else(missing_leader)?;
        let mut e = Election::resume(&self.client.get().await?, l.lease, &l.name, &l.key, l.rev);
        e.resign().await.map_err(Status::from)?;
        Ok(Response::new(ResignResponse { header: e.header().copied() }))
    }
}
