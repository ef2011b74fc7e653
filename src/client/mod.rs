//! A small async etcd v3 client over concord's own generated stubs, and etcd's concurrency recipes on it.
//!
//! It speaks only the public etcd API, so everything here works against real etcd as well as concord,
//! and keeps etcd's key layouts, so Rust and Go programs share locks (see `mutex.rs`).

mod barrier;
pub mod demo;
mod election;
mod keys;
mod mutex;
mod queue;
mod rwmutex;
mod session;
pub mod stm;

pub use barrier::{Barrier, DoubleBarrier};
pub use election::Election;
pub use mutex::{LockGuard, Locker, Mutex};
pub use queue::{PriorityQueue, Queue};
pub use rwmutex::RWMutex;
pub use session::{Session, DEFAULT_TTL};
pub use stm::{Isolation, Stm};

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::{InterceptedService, Interceptor};
use tonic::transport::{Channel, ClientTlsConfig};

use crate::tls::{Dial, Dialer};

use crate::pb::etcdserverpb::auth_client::AuthClient;
use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::lease_client::LeaseClient;
use crate::pb::etcdserverpb::watch_client::WatchClient;
use crate::pb::etcdserverpb::{
    watch_request::RequestUnion, AuthenticateRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An error the server answered with, carrying etcd's status code and text.
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("the watch stream ended")]
    WatchClosed,
    /// `try_lock` found the lock held by another session.
    #[error("mutex: Locked by another session")]
    Locked,
    #[error("the session's lease is gone")]
    SessionExpired,
}

/// A server's error passes through with its status; the recipes' own errors are plain, as etcd's Go
/// recipe errors reach a gRPC caller (Unknown).
impl From<ClientError> for tonic::Status {
    fn from(e: ClientError) -> tonic::Status {
        match e {
            ClientError::Status(s) => s,
            other => tonic::Status::unknown(other.to_string()),
        }
    }
}

/// What every call of a [`Client`] goes through: the connection, and the credentials it adds.
pub type Transport = InterceptedService<Channel, Credentials>;

/// The auth token a client's calls carry, as etcd's Go client sends it (`token` metadata); shared by
/// the clones of a client, so that renewing it (see `Client::renew_token`) renews it for all of them.
#[derive(Clone, Default)]
pub struct Credentials {
    token: Arc<RwLock<Option<MetadataValue<Ascii>>>>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &*self.token.read().unwrap_or_else(|p| p.into_inner()) {
            req.metadata_mut().insert("token", token.clone());
        }
        Ok(req)
    }
}

fn token_value(token: &str) -> Result<MetadataValue<Ascii>, ClientError> {
    MetadataValue::try_from(token)
        .map_err(|_| tonic::Status::invalid_argument("an auth token must be printable ASCII").into())
}

/// A connection to one of the given endpoints (the first that answers).
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    credentials: Credentials,
}

impl Client {
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Client, ClientError> {
        Client::connect_tls(endpoints, timeout, None).await
    }

    /// Like `connect`, with TLS for `https://` endpoints.
    pub async fn connect_tls(
        endpoints: &[String],
        timeout: Duration,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Client, ClientError> {
        Client::connect_with(endpoints, timeout, tls.map(Dialer::from)).await
    }

    /// Like `connect`, dialing `https://` endpoints as `dialer` says (also without verifying them).
    pub async fn connect_with(
        endpoints: &[String],
        timeout: Duration,
        dialer: Option<Dialer>,
    ) -> Result<Client, ClientError> {
        let mut last = ClientError::Connect(String::new(), "no endpoints".into());
        for e in endpoints {
            let url = if e.contains("://") { e.clone() } else { format!("http://{e}") };
            let dial =
                Dial::new(&url, dialer.as_ref()).map_err(|err| ClientError::Connect(url.clone(), err))?;
            match dial.with(|ep| ep.connect_timeout(timeout).tcp_nodelay(true)).connect().await {
                Ok(channel) => return Ok(Client::from_channel(channel)),
                Err(err) => last = ClientError::Connect(url, err.to_string()),
            }
        }
        Err(last)
    }

    /// A client over a channel made elsewhere (the bench tool shares its connections).
    pub fn from_channel(channel: Channel) -> Client {
        Client { channel, credentials: Credentials::default() }
    }

    /// The same connection, its calls made with `token` (one an Authenticate gave).
    pub fn with_token(&self, token: &str) -> Result<Client, ClientError> {
        let credentials = Credentials { token: Arc::new(RwLock::new(Some(token_value(token)?))) };
        Ok(Client { channel: self.channel.clone(), credentials })
    }

    /// Authenticates as `user` (etcd's Auth.Authenticate), and returns a client whose calls carry the
    /// token.
    pub async fn authenticate(&self, user: &str, password: &str) -> Result<Client, ClientError> {
        let client = Client::from_channel(self.channel.clone());
        client.renew_token(user, password).await?;
        Ok(client)
    }

    /// Authenticates again and makes this client (and its clones) use the new token: a token expires
    /// when unused for the server's `--auth-token-ttl`, and a JWT at its expiry. The request goes out
    /// without the old token, which etcd would refuse.
    pub async fn renew_token(&self, user: &str, password: &str) -> Result<(), ClientError> {
        let req = AuthenticateRequest { name: user.into(), password: password.into() };
        let token = AuthClient::new(self.channel.clone()).authenticate(req).await?.into_inner().token;
        *self.credentials.token.write().unwrap_or_else(|p| p.into_inner()) = Some(token_value(&token)?);
        Ok(())
    }

    pub fn kv(&self) -> KvClient<Transport> {
        KvClient::with_interceptor(self.channel.clone(), self.credentials.clone())
    }

    pub fn lease(&self) -> LeaseClient<Transport> {
        LeaseClient::with_interceptor(self.channel.clone(), self.credentials.clone())
    }

    pub fn watch_client(&self) -> WatchClient<Transport> {
        WatchClient::with_interceptor(self.channel.clone(), self.credentials.clone())
    }

    pub fn auth(&self) -> AuthClient<Transport> {
        AuthClient::with_interceptor(self.channel.clone(), self.credentials.clone())
    }

    /// Opens a watch stream with one watcher; returns its responses after the `created` one.
    pub async fn watch(&self, create: WatchCreateRequest) -> Result<WatchStream, ClientError> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // The create goes out with the call: grpc-go (etcd) sends no headers before its first message.
        let req = WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) };
        tx.send(req).await.map_err(|_| ClientError::WatchClosed)?;
        let mut responses = self.watch_client().watch(ReceiverStream::new(rx)).await?.into_inner();
        match responses.message().await? {
            Some(r) if r.created && !r.canceled => Ok(WatchStream { _requests: tx, responses }),
            Some(r) => Err(tonic::Status::cancelled(r.cancel_reason).into()),
            None => Err(ClientError::WatchClosed),
        }
    }
}

/// One watcher's responses.
pub struct WatchStream {
    _requests: tokio::sync::mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
}

impl WatchStream {
    pub async fn next(&mut self) -> Result<WatchResponse, ClientError> {
        match self.responses.message().await? {
            Some(r) if r.canceled => Err(tonic::Status::cancelled(r.cancel_reason).into()),
            Some(r) => Ok(r),
            None => Err(ClientError::WatchClosed),
        }
    }
}

/// The range end that makes `key` a prefix (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
