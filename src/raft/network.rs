//! Raft traffic between members: a tonic client per peer (one pooled HTTP/2 channel each) and the peer
//! service that hands incoming messages to the local Raft.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tonic::transport::{Channel, Endpoint};

use super::types::{Member, TypeConfig};
use super::{decode, encode};
use crate::pb::concordraft::raft_peer_client::RaftPeerClient;
use crate::pb::concordraft::RaftPayload;

/// One channel per peer, shared by every client openraft asks for.
#[derive(Clone, Default)]
pub struct Network {
    channels: Arc<Mutex<HashMap<u64, (String, Channel)>>>,
    /// Member name → the URL to dial instead of its advertised peer URL. The fault suite gives each
    /// member its own proxy per peer this way, so that every directed link can fail on its own.
    dial: Arc<HashMap<String, String>>,
}

impl Network {
    pub fn new(dial: HashMap<String, String>) -> Self {
        Network { channels: Arc::default(), dial: Arc::new(dial) }
    }

    pub fn channel(&self, id: u64, member: &Member) -> Result<Channel, String> {
        let url = match self.dial.get(&member.name) {
            Some(url) => url.clone(),
            None => {
                member.peer_urls.first().cloned().ok_or_else(|| format!("member {id:x} has no peer URL"))?
            }
        };
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((u, ch)) = map.get(&id) {
            if *u == url {
                return Ok(ch.clone());
            }
        }
        let ch = Endpoint::from_shared(url.clone())
            .map_err(|e| e.to_string())?
            .connect_timeout(std::time::Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(id, (url, ch.clone()));
        Ok(ch)
    }

    pub fn client(&self, id: u64, member: &Member) -> Result<RaftPeerClient<Channel>, String> {
        Ok(RaftPeerClient::new(self.channel(id, member)?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }
}

pub struct PeerClient {
    target: u64,
    client: Result<RaftPeerClient<Channel>, String>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerClient {
        PeerClient { target, client: self.client(target, node) }
    }
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        method: Method,
    ) -> Result<Resp, RPCError<u64, Member, E>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let client = self
            .client
            .as_mut()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e.clone()))))?;
        let data = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let reply = match method {
            Method::Append => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|s| match s.code() {
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&s)),
            _ => RPCError::Network(NetworkError::new(&s)),
        })?;
        let result: Result<Resp, E> =
            decode(&reply.into_inner().data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

enum Method {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        self.call(&rpc, &option, Method::Append).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>>
    {
        self.call(&rpc, &option, Method::Snapshot).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        self.call(&rpc, &option, Method::Vote).await
    }
}
