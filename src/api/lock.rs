//! etcd's lock and election services (v3lockpb, v3electionpb). Like etcd, they are built on the recipes
//! over the member's own client API: a loopback client runs `client::Mutex` and `client::Election` on
//! the caller's lease.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status};

use crate::auth::{AuthError, Tokens};
use crate::client::{Client, Election, Mutex};
use crate::pb::etcdserverpb::{DeleteRangeRequest, ResponseHeader};
use crate::pb::v3electionpb::election_server::Election as ElectionApi;
use crate::pb::v3electionpb::*;
use crate::pb::v3lockpb::lock_server::Lock;
use crate::pb::v3lockpb::*;
use crate::raft::RaftNode;

/// A client of this member's own client API, connected on first use.
#[derive(Clone)]
pub struct Loopback {
    url: String,
    tls: Option<crate::tls::Dialer>,
    client: Arc<tokio::sync::OnceCell<Client>>,
    node: RaftNode,
    /// A token of this member's own for each caller the loopback has acted for (see `get`).
    tokens: Arc<std::sync::Mutex<HashMap<String, String>>>,
}

impl Loopback {
    /// A client of this member's own client `url`; `tls` for an `https://` one.
    pub fn new(url: String, tls: Option<crate::tls::Dialer>, node: RaftNode) -> Loopback {
        Loopback { url, tls, client: Default::default(), node, tokens: Default::default() }
    }

    /// [`Self::act_for`], refusing as etcd's services refuse (see [`etcds`]).
    async fn get<T>(&self, req: &Request<T>) -> Result<Client, Status> {
        self.act_for(req).await.map_err(etcds)
    }

    /// The client, its calls made as the caller of `req` (etcd's lock service passes the caller's
    /// context to its in-process client), so the lock's keys are checked against the caller's
    /// permissions. With auth on, the loopback always carries a token: one this member issues to
    /// itself for the caller, however the caller was named (token or certificate), and never lets its
    /// own certificate speak for anyone. A caller without a name goes no further.
    async fn act_for<T>(&self, req: &Request<T>) -> Result<Client, Status> {
        let caller = super::auth::caller(&self.node, req).await?;
        let url = std::slice::from_ref(&self.url);
        let connect = || Client::connect_with(url, Duration::from_secs(5), self.tls.clone());
        let client = self.client.get_or_try_init(connect).await.map_err(Status::from)?;
        let Some(caller) = caller else { return Ok(client.clone()) };
        if caller.user.is_empty() {
            return Err(super::auth::auth_status(AuthError::UserEmpty));
        }
        let tokens = self.node.sm.tokens();
        let mut mine = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let token = match mine.get(&caller.user) {
            Some(t) if tokens.user(t).as_ref() == Some(&caller.user) => t.clone(),
            _ => {
                // Index 0: nothing to wait for; the loopback only ever asks this member.
                let t = tokens.issue(caller.user.clone(), &Tokens::prefix(), 0);
                mine.insert(caller.user, t.clone());
                t
            }
        };
        client.with_token(&token).map_err(Status::from)
    }
}

fn missing_leader() -> Status {
    Status::unknown("\"leader\" field must be provided")
}

/// An error as etcd's lock and election services answer it. They call etcd through its Go client,
/// which turns an error with one of etcd's messages into a plain error value (`rpctypes.Error`), and
/// gRPC answers that with code Unknown: the message stays (clients match etcd's errors by message),
/// the code is etcd's. Other failures, such as the loopback's transport errors, keep their code.
fn etcds(e: impl Into<Status>) -> Status {
    let s = e.into();
    if s.message().starts_with("etcdserver: ") {
        Status::unknown(s.message())
    } else {
        s
    }
}

pub struct LockService {
    pub client: Loopback,
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let client = self.client.get(&req).await?;
        let req = req.into_inner();
        let mut m = Mutex::with_lease(&client, req.lease, &req.name);
        m.lock().await.map_err(etcds)?;
        Ok(Response::new(LockResponse { header: m.header().copied(), key: m.key().to_vec() }))
    }

    async fn unlock(&self, req: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let client = self.client.get(&req).await?;
        let key = req.into_inner().key;
        let resp = client.kv().delete_range(DeleteRangeRequest { key, ..Default::default() }).await;
        let resp = resp.map_err(etcds)?;
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
        let client = self.client.get(&req).await?;
        let req = req.into_inner();
        let mut e = Election::with_lease(&client, req.lease, &req.name);
        e.campaign(&req.value).await.map_err(etcds)?;
        let leader = LeaderKey {
            name: req.name,
            key: e.key().map(<[u8]>::to_vec).unwrap_or_default(),
            rev: e.rev(),
            lease: req.lease,
        };
        Ok(Response::new(CampaignResponse { header: e.header().copied(), leader: Some(leader) }))
    }

    async fn proclaim(&self, req: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let client = self.client.get(&req).await?;
        let req = req.into_inner();
        let l = req.leader.ok_or_else(missing_leader)?;
        let mut e = Election::resume(&client, l.lease, &l.name, &l.key, l.rev);
        e.proclaim(&req.value).await.map_err(etcds)?;
        Ok(Response::new(ProclaimResponse { header: e.header().copied() }))
    }

    async fn leader(&self, req: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let client = self.client.get(&req).await?;
        let name = req.into_inner().name;
        let e = Election::with_lease(&client, 0, &name);
        let (header, kv) = e.leader_read().await.map_err(etcds)?;
        Ok(Response::new(LeaderResponse { header, kv: Some(kv) }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, req: Request<LeaderRequest>) -> Result<Response<ObserveStream>, Status> {
        let client = self.client.get(&req).await?;
        let name = req.into_inner().name;
        let rx = Election::with_lease(&client, 0, &name).observe();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(futures::StreamExt::map(stream, |kv| Ok(leader_response(kv))))))
    }

    async fn resign(&self, req: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let client = self.client.get(&req).await?;
        let l = req.into_inner().leader.ok_or_else(missing_leader)?;
        let mut e = Election::resume(&client, l.lease, &l.name, &l.key, l.rev);
        e.resign().await.map_err(etcds)?;
        Ok(Response::new(ResignResponse { header: e.header().copied() }))
    }
}
