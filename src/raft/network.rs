//! Raft traffic between members: a tonic client per peer (one pooled HTTP/2 channel each) and the peer
//! service that hands incoming messages to the local Raft.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tonic::transport::Channel;

use super::membership::MemberInfo;
use super::types::{Member, TypeConfig};
use super::{decode, encode};
use crate::pb::concordraft::raft_peer_client::RaftPeerClient;
use crate::pb::concordraft::RaftPayload;

/// One channel per peer, shared by every client openraft asks for.
#[derive(Clone, Default)]
pub struct Network {
    channels: Arc<Mutex<HashMap<u64, (String, Channel)>>>,
    /// Member name (or advertised peer URL) → the URL to dial instead. The fault suite gives each member
    /// its own proxy per peer this way, so that every directed link can fail on its own. A member added
    /// at run time has no name in the membership, hence the peer URL.
    dial: Arc<HashMap<String, String>>,
    /// Turns true once this member learns that it has been removed from the cluster.
    removed: Arc<tokio::sync::watch::Sender<bool>>,
    /// For `https://` peer URLs: how to dial them (the peer TLS files, as a client).
    tls: Option<crate::tls::Dialer>,
    /// Since when each peer has been answering this member's Raft RPCs without a break, and when it
    /// last did (etcd's transport "active since"; see `connectivity`).
    answering: Arc<Mutex<HashMap<u64, Answering>>>,
}

#[derive(Clone, Copy)]
struct Answering {
    since: Instant,
    last: Instant,
}

/// etcd's `HealthInterval`: how long every voter must have been answering before a member is added.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// A peer that answered within this is answering now: etcd's `ConnReadTimeout`, how long its peer
/// streams wait on a silent connection before they call the peer inactive. The leader sends heartbeats
/// far more often; a busy peer's appends can time out (openraft gives them one heartbeat interval) for a
/// while without the peer being gone.
const ACTIVE_WINDOW: Duration = Duration::from_secs(5);

/// At most this many bytes of entries go in one AppendEntries (always at least one entry): the log
/// reader hands replication no more (`LogStore::limited_get_log_entries`). openraft 0.9 would put up to
/// `max_payload_entries` (300) entries in a request, give it one heartbeat interval, and on a timeout
/// send the same range again: 300 entries of 100 KiB never reached a follower within 50 ms on a loaded
/// machine, and that follower never caught up again (the NOSPACE test in tests/quota.rs, under CPU load).
pub const APPEND_BYTES: usize = 1 << 20;

/// What a removed member hears when it asks the leader for a vote, and logs before it stops.
pub const REMOVED: &str = "the member has been permanently removed from the cluster";

impl Network {
    pub fn new(dial: HashMap<String, String>, tls: Option<crate::tls::Dialer>) -> Self {
        Network {
            channels: Arc::default(),
            dial: Arc::new(dial),
            removed: Arc::new(tokio::sync::watch::Sender::new(false)),
            tls,
            answering: Arc::default(),
        }
    }

    /// Whom this member (as leader, the one sending RPCs to everyone) hears from, for the strict
    /// membership checks.
    pub fn connectivity(&self, me: u64) -> super::membership::Connectivity {
        let now = Instant::now();
        let answering = self.answering.lock().unwrap_or_else(|p| p.into_inner());
        let active = answering.iter().filter(|(_, a)| now - a.last < ACTIVE_WINDOW);
        super::membership::Connectivity {
            me,
            active: active.clone().map(|(id, _)| *id).collect(),
            steady: active.filter(|(_, a)| now - a.since >= HEALTH_INTERVAL).map(|(id, _)| *id).collect(),
        }
    }

    /// Resolves once this member has been removed from the cluster.
    pub fn removed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.removed.subscribe()
    }

    pub fn mark_removed(&self) {
        mark_removed(&self.removed);
    }

    /// Tells the member `gone` (best effort, in the background) that the leader `me` has removed it.
    pub fn tell_removed(&self, me: u64, cluster_id: u64, gone: MemberInfo) {
        if gone.id == me {
            return self.mark_removed();
        }
        let node = Member { name: gone.name, peer_urls: gone.peer_urls, client_urls: gone.client_urls };
        let Ok(mut client) = self.client(gone.id, &node) else { return };
        tokio::spawn(async move {
            for _ in 0..3 {
                let data = cluster_id.to_be_bytes().to_vec();
                let call = client.removed(RaftPayload { data });
                if let Ok(Ok(_)) = tokio::time::timeout(std::time::Duration::from_secs(1), call).await {
                    return;
                }
            }
        });
    }

    pub fn channel(&self, id: u64, member: &Member) -> Result<Channel, String> {
        let advertised =
            member.peer_urls.first().cloned().ok_or_else(|| format!("member {id:x} has no peer URL"))?;
        let url =
            self.dial.get(&member.name).or_else(|| self.dial.get(&advertised)).unwrap_or(&advertised).clone();
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((u, ch)) = map.get(&id) {
            if *u == url {
                return Ok(ch.clone());
            }
        }
        let ch = endpoint(&url, self.tls.as_ref())?.lazy();
        map.insert(id, (url, ch.clone()));
        Ok(ch)
    }

    pub fn client(&self, id: u64, member: &Member) -> Result<RaftPeerClient<Channel>, String> {
        Ok(RaftPeerClient::new(self.channel(id, member)?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }
}

/// A peer URL to dial, with TLS for an `https://` one.
pub fn endpoint(url: &str, tls: Option<&crate::tls::Dialer>) -> Result<crate::tls::Dial, String> {
    let dial =
        crate::tls::Dial::new(url, tls).map_err(|e| format!("{e} (--peer-cert-file or --peer-auto-tls)"))?;
    Ok(dial.with(|ep| ep.connect_timeout(std::time::Duration::from_secs(1)).tcp_nodelay(true)))
}

fn mark_removed(removed: &tokio::sync::watch::Sender<bool>) {
    if !removed.send_replace(true) {
        tracing::error!("{REMOVED}");
    }
}

/// openraft's client for one peer (one per replication stream).
pub struct PeerClient {
    peer: Peer,
    /// The last append with entries, until its answer has been seen (see [`InFlight`]).
    inflight: Option<InFlight>,
}

/// An append openraft stopped waiting for. openraft gives an append one heartbeat interval and then
/// sends the same range again; a follower that needs longer for it (a slow disk, a loaded machine, large
/// entries) would be sent the same entries forever and never catch up. So an append keeps going on its
/// own task after openraft gives up on it, the next attempt waits for it first (one append in flight
/// per peer), and if it carried the start of the range asked for again, its answer is that attempt's.
struct InFlight {
    vote: openraft::Vote<u64>,
    prev: Option<openraft::LogId<u64>>,
    last: Option<openraft::LogId<u64>>,
    reply: tokio::task::JoinHandle<AppendResult>,
}

type AppendResult = Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>>;

/// What an RPC to one peer needs; cloned into an append's own task.
#[derive(Clone)]
struct Peer {
    target: u64,
    /// etcd_network_peer_round_trip_time_seconds{To=target}, observed on heartbeats (appends without
    /// entries: the network and the peer's Raft core, no disk).
    rtt: Arc<crate::metrics::PeerRtt>,
    answering: Arc<Mutex<HashMap<u64, Answering>>>,
    client: Result<RaftPeerClient<Channel>, String>,
    removed: Arc<tokio::sync::watch::Sender<bool>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerClient {
        let rtt = crate::metrics::peer_rtt(target);
        let answering = self.answering.clone();
        let peer =
            Peer { target, client: self.client(target, node), removed: self.removed.clone(), rtt, answering };
        PeerClient { peer, inflight: None }
    }
}

impl Peer {
    async fn call<Req, Resp, E>(
        &mut self,
        req: &Req,
        timeout: Duration,
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
        request.set_timeout(timeout);
        let reply = match method {
            Method::Append => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::Snapshot => client.install_snapshot(request).await,
        };
        self.answered(reply.as_ref().map(|_| ()).map_err(|s| s.code()));
        let reply = reply.map_err(|s| match s.code() {
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&s)),
            tonic::Code::FailedPrecondition if s.message() == REMOVED => {
                mark_removed(&self.removed);
                RPCError::Network(NetworkError::new(&s))
            }
            _ => RPCError::Network(NetworkError::new(&s)),
        })?;
        let result: Result<Resp, E> =
            decode(&reply.into_inner().data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl Peer {
    /// Records how the peer answered. Only a failed connection breaks a run of answers, as in etcd's
    /// transport: an RPC that timed out tells nothing (a peer fsyncing on a loaded machine is slow, not
    /// gone; one that really stopped answering drops out of `connectivity` after `ACTIVE_WINDOW`).
    fn answered(&self, reply: Result<(), tonic::Code>) {
        let mut answering = self.answering.lock().unwrap_or_else(|p| p.into_inner());
        match reply {
            Err(tonic::Code::Unavailable) => {
                answering.remove(&self.target);
                return;
            }
            Err(tonic::Code::DeadlineExceeded | tonic::Code::Cancelled) => return,
            Ok(()) | Err(_) => {} // an answer, even a refusal, comes from a live peer
        }
        let now = Instant::now();
        let a = answering.entry(self.target).or_insert(Answering { since: now, last: now });
        if now - a.last >= ACTIVE_WINDOW {
            a.since = now; // silent for a while: a new run of answers starts
        }
        a.last = now;
    }
}

enum Method {
    Append,
    Vote,
    Snapshot,
}

impl PeerClient {
    /// An append with entries, sent on a task of its own that outlives openraft's timeout (see
    /// [`InFlight`]).
    async fn append(&mut self, rpc: AppendEntriesRequest<TypeConfig>, option: RPCOption) -> AppendResult {
        let want = rpc.entries.last().map(|e| e.log_id);
        if let Some(f) = self.inflight.as_mut() {
            let answer = (&mut f.reply).await;
            let f = self.inflight.take().expect("awaited just now");
            let same_start = f.vote == rpc.vote && f.prev == rpc.prev_log_id && f.last <= want;
            if same_start && matches!(answer, Ok(Ok(AppendEntriesResponse::Success))) {
                return Ok(matched(f.last, want));
            }
        }
        let (vote, prev) = (rpc.vote, rpc.prev_log_id);
        // Long enough for a slow follower, short enough that a member cut off is soon asked again.
        let timeout = (option.hard_ttl() * 20).max(Duration::from_secs(1));
        let mut peer = self.peer.clone();
        let reply = tokio::spawn(async move { peer.call(&rpc, timeout, Method::Append).await });
        let f = self.inflight.insert(InFlight { vote, prev, last: want, reply });
        let answer = (&mut f.reply).await;
        self.inflight = None;
        answer.map_err(|e| RPCError::Network(NetworkError::new(&e)))?
    }
}

/// The answer for a range up to `want` of which the follower took everything up to `last` (an earlier
/// append's range, when openraft asks again from the same start with entries appended since).
fn matched(
    last: Option<openraft::LogId<u64>>,
    want: Option<openraft::LogId<u64>>,
) -> AppendEntriesResponse<u64> {
    if last == want {
        AppendEntriesResponse::Success
    } else {
        AppendEntriesResponse::PartialSuccess(last)
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        if !rpc.entries.is_empty() {
            return self.append(rpc, option).await;
        }
        let started = std::time::Instant::now();
        let reply = self.peer.call(&rpc, option.hard_ttl(), Method::Append).await;
        if reply.is_ok() {
            self.peer.rtt.observe(started.elapsed());
        }
        reply
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>>
    {
        self.peer.call(&rpc, option.hard_ttl(), Method::Snapshot).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        self.peer.call(&rpc, option.hard_ttl(), Method::Vote).await
    }
}
