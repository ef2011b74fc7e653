//! `concord::Server`: one member, embeddable in any tokio program (like etcd's `embed` package). The
//! binary is a thin wrapper over it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::auth::AuthService;
use crate::api::authority::RepairAuthority;
use crate::api::cluster::ClusterService;
use crate::api::coalesce::Coalesce;
use crate::api::health::HealthService;
use crate::api::http::HttpLayer;
use crate::api::kv::KvService;
use crate::api::learner::LearnerLayer;
use crate::api::lease::LeaseService;
use crate::api::lock::{ElectionService, LockService};
use crate::api::maintenance::MaintenanceService;
use crate::api::serve;
use crate::api::watch::WatchService;
use crate::bootstrap::Identity;
use crate::config::{host_port, ClusterState, Config, ConfigError};
use crate::pb::concordraft::raft_peer_server::RaftPeerServer;
use crate::pb::etcdserverpb::auth_server::AuthServer;
use crate::pb::etcdserverpb::cluster_server::ClusterServer;
use crate::pb::etcdserverpb::kv_server::KvServer;
use crate::pb::etcdserverpb::lease_server::LeaseServer;
use crate::pb::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::pb::health::health_server::HealthServer;
use crate::pb::v3electionpb::election_server::ElectionServer;
use crate::pb::v3lockpb::lock_server::LockServer;
use crate::pb::watch_encoded::watch_server::WatchServer;
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::peer_service::PeerService;
use crate::raft::state_machine::{StateMachine, StateMachineStore};
use crate::raft::{Attributes, Member, RaftNode};
use crate::storage::{Db, StorageError};

/// gRPC framing and headers on top of the request itself, as etcd allows (`grpcOverheadBytes`).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// sled's page cache (sled's default is 1 GiB): sled holds only a few keys of Raft metadata.
const CACHE_BYTES: u64 = 1024 * 1024;

/// Why a member stops by itself (see [`Server::stopped`]).
#[derive(Debug)]
pub enum Stopped {
    Removed,
    /// The Raft core stopped on this error.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("joining the cluster: {0}")]
    Join(String),
    #[error("etcdserver: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Adopt(#[from] crate::backup::BackupError),
    #[error(
        "{0:?} holds a restored state (or one taken over from etcd), which starts a new cluster: start it \
         with --initial-cluster-state new, or give a member that joins an existing cluster an empty data dir"
    )]
    RestoredJoin(std::path::PathBuf),
}

/// tonic refuses an oversized message with OutOfRange; grpc-go, and so etcd, with ResourceExhausted.
/// Clients tell "request too large" from "revision compacted" (also OutOfRange) by the code, so rewrite it.
/// (grpc-message is percent-encoded on the wire.)
fn grpc_size_error_like_etcd<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let h = resp.headers_mut();
    let oversized = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message")
            .is_some_and(|m| m.as_bytes().starts_with(b"Error,%20decoded%20message%20length%20too%20large"));
    if oversized {
        h.insert("grpc-status", http::HeaderValue::from_static("8"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static("grpc:%20received%20message%20larger%20than%20max"),
        );
    }
    resp
}

pub struct Server {
    node: RaftNode,
    db: Arc<Db>,
    client_addrs: Vec<SocketAddr>,
    peer_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(urls: &[String]) -> Result<Vec<TcpListener>, ServerError> {
    let mut out = Vec::new();
    for url in urls {
        let hp = host_port(url)?;
        out.push(TcpListener::bind(&hp).await.map_err(|e| ServerError::Listen(url.clone(), e))?);
    }
    Ok(out)
}

impl Server {
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        if config.enable_v2 {
            return Err(ConfigError::EnableV2.into());
        }
        for (flag, why) in config.ignored.given() {
            tracing::warn!("{flag} is taken for etcd's sake and ignored: {why}");
        }
        let auto_compaction = config.auto_compaction()?;
        let data_dir = config.data_dir();
        std::fs::create_dir_all(&data_dir)?;
        let adopt = crate::backup::etcd_dir::Options {
            bcrypt_cost: config.bcrypt_cost,
            min_lease_ttl: crate::lease::min_ttl(config.heartbeat_interval, config.election_timeout),
        };
        // etcd's WAL is in `--wal-dir` itself when given, as concord's is.
        let etcd_wal = config.wal_dir.clone().unwrap_or_else(|| data_dir.join("member").join("wal"));
        if let Some(a) = crate::backup::etcd_dir::adopt(&data_dir, &etcd_wal, &config.wal_dir(), &adopt)? {
            tracing::info!(
                data_dir = %data_dir.display(),
                revision = a.revision,
                "took over an etcd member's data dir: its backend file and {} requests from its WAL ({} of \
                 them already in the file, or refused as etcd refused them); member/ is left as it was",
                a.replayed,
                a.unchanged
            );
        }
        // A restored state starts a new cluster: joining one, it would be applied under the cluster's log.
        if !Db::exists(&data_dir)
            && config.initial_cluster_state == ClusterState::Existing
            && StateMachine::restored_unlogged_in(&data_dir.join("snap"))
        {
            return Err(ServerError::RestoredJoin(data_dir));
        }
        let db = Arc::new(Db::open(&data_dir, CACHE_BYTES)?);
        let (client_tls, peer_tls) = (config.client_tls()?, config.peer_tls()?);
        let client_tls_server = client_tls.server(&config.listen_client_urls, "")?;
        let peer_tls_server = peer_tls.server(&config.listen_peer_urls, "peer-")?;
        let peer_tls_client = Some(peer_tls.dialer()?);
        let Identity { id, cluster_id } =
            crate::bootstrap::identity(&config, &db, peer_tls_client.as_ref()).await?;

        let client_listeners = bind(&config.listen_client_urls).await?;
        let peer_listeners = bind(&config.listen_peer_urls).await?;
        let metrics_listeners = bind(&config.listen_metrics_urls).await?;
        let client_addrs: Vec<SocketAddr> =
            client_listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
        let peer_addrs = peer_listeners.iter().filter_map(|l| l.local_addr().ok()).collect();

        let raft_config = openraft::Config {
            cluster_name: config.initial_cluster_token.clone(),
            heartbeat_interval: config.heartbeat_interval,
            election_timeout_min: config.election_timeout,
            election_timeout_max: config.election_timeout * 3 / 2 + 1,
            // The state machine counts requests, as etcd does, and asks for snapshots itself.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            // Like etcd's SnapshotCatchUpEntries: a follower this far behind still catches up from the log.
            max_in_snapshot_log_to_keep: config.snapshot_count.min(5000),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ServerError::Raft(e.to_string()))?;

        let sm = StateMachine::open(&data_dir.join("records"), data_dir.join("snap"), config.snapshot_count)
            .map_err(|e| ServerError::Raft(e.to_string()))?;
        let mut log_store = LogStore::open(db.clone(), &config.wal_dir(), sm.clone())
            .map_err(|e| ServerError::Raft(e.to_string()))?;
        if config.force_new_cluster {
            let me = Member {
                name: config.name.clone(),
                peer_urls: config.initial_advertise_peer_urls.clone(),
                client_urls: config.advertise_client_urls.clone(),
            };
            let mut sm_store = StateMachineStore { sm: sm.clone() };
            if crate::raft::force::force_new_cluster(&mut log_store, &mut sm_store, id, me)
                .await
                .map_err(|e| ServerError::Raft(e.to_string()))?
            {
                tracing::warn!("forced a new one-member cluster: every other member is removed from it");
            }
        }
        let network =
            Network::new(config.experimental_peer_dial_urls.iter().cloned().collect(), peer_tls_client);
        let raft = openraft::Raft::new(
            id,
            Arc::new(raft_config),
            network.clone(),
            log_store,
            StateMachineStore { sm: sm.clone() },
        )
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;

        let initialized = raft.is_initialized().await.map_err(|e| ServerError::Raft(e.to_string()))?;
        if config.initial_cluster_state == ClusterState::New && !initialized {
            let nodes: BTreeMap<u64, Member> = crate::bootstrap::initial_members(&config)?
                .into_iter()
                .map(|(mid, name, peer_urls)| {
                    let client_urls =
                        if mid == id { config.advertise_client_urls.clone() } else { Vec::new() };
                    (mid, Member { name, peer_urls, client_urls })
                })
                .collect();
            // Every member of a new cluster initializes with the same membership; openraft allows that.
            raft.initialize(nodes).await.map_err(|e| ServerError::Raft(e.to_string()))?;
        } else if initialized {
            // A restarted member starts as a follower (see `LogStore::read_vote`); the only voter need
            // not wait out an election timeout to lead again (etcd's initial election tick advance).
            let voters: Vec<u64> =
                raft.metrics().borrow().membership_config.membership().voter_ids().collect();
            if voters == [id] {
                let _ = raft.trigger().elect().await;
            }
        }

        let leader_wait = Duration::from_secs(5) + Duration::from_millis(2 * config.election_timeout);
        let gate = Arc::new(crate::raft::transfer::Gate::default());
        let node = RaftNode {
            id,
            cluster_id,
            batcher: crate::raft::batcher::Batcher::start(raft.clone(), sm.wait().clone(), gate.clone()),
            reads: crate::raft::read_index::ReadIndexer::start(crate::raft::read_index::Source {
                id,
                raft: raft.clone(),
                network: network.clone(),
                leader_wait,
                gate: gate.clone(),
            }),
            gate,
            raft,
            sm,
            network,
            leader_wait,
            lessor: Arc::new(crate::lease::Lessor::new(config.lease_checkpoints())),
            strict_reconfig: config.strict_reconfig_check,
            quota_bytes: crate::quota::quota_bytes(config.quota_backend_bytes),
            client_cert_auth: config.client_cert_auth,
            jwt: config.jwt()?.map(Arc::new),
            reconfig: Default::default(),
        };

        node.sm.tokens().set_ttl(Duration::from_secs(config.auth_token_ttl));
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let max_recv = config.max_request_bytes + GRPC_OVERHEAD_BYTES;
        // etcd builds its lock and election services on a client of its own client API; so does concord.
        let loopback = {
            let addr = client_addrs.first().map_or_else(|| "127.0.0.1:2379".to_string(), |a| a.to_string());
            match &client_tls_server {
                None => crate::api::lock::Loopback::new(format!("http://{addr}"), None, node.clone()),
                // The certificate names the advertised host, not necessarily the address bound.
                Some(_) => {
                    let host = config
                        .advertise_client_urls
                        .first()
                        .and_then(|u| crate::config::url_host(u))
                        .unwrap_or_else(|| "localhost".into());
                    let tls = client_tls.dialer()?.with_server_name(host);
                    crate::api::lock::Loopback::new(format!("https://{addr}"), Some(tls), node.clone())
                }
            }
        };
        let leader_lost = crate::api::require_leader::monitor(
            node.clone(),
            std::time::Duration::from_millis(config.election_timeout),
        );
        for listener in client_listeners {
            let kv = KvService {
                node: node.clone(),
                max_request_bytes: config.max_request_bytes,
                max_txn_ops: config.max_txn_ops,
            };
            let routes = tonic::service::Routes::new(
                KvServer::new(kv).max_decoding_message_size(max_recv).max_encoding_message_size(usize::MAX),
            )
            .add_service(WatchServer::new(WatchService {
                node: node.clone(),
                options: crate::watch::Options {
                    max_request_bytes: config.max_request_bytes,
                    progress_notify_interval: config.experimental_watch_progress_notify_interval,
                },
            }))
            .add_service(LeaseServer::new(LeaseService::new(
                node.clone(),
                config.heartbeat_interval,
                config.election_timeout,
            )))
            .add_service(HealthServer::new(HealthService { stop: stop_rx.clone() }))
            .add_service(LockServer::new(LockService { client: loopback.clone() }))
            .add_service(ElectionServer::new(ElectionService { client: loopback.clone() }))
            .add_service(MaintenanceServer::new(MaintenanceService {
                node: node.clone(),
                leader_lost: leader_lost.clone(),
            }))
            .add_service(ClusterServer::new(ClusterService { node: node.clone() }))
            .add_service(AuthServer::new(AuthService { node: node.clone(), bcrypt_cost: config.bcrypt_cost }))
            .prepare();
            let svc = tower::ServiceBuilder::new()
                // etcd's HTTP endpoints (/health, /metrics, ...) share the client port with gRPC.
                .layer(HttpLayer {
                    node: node.clone(),
                    max_body: max_recv,
                    endpoints_only: false,
                    gateway: config.enable_grpc_gateway,
                    leader_lost: leader_lost.clone(),
                })
                .map_response(grpc_size_error_like_etcd)
                .layer(LearnerLayer { node: node.clone() })
                .service(routes);
            let options = serve::Options {
                http1: true,
                max_concurrent_streams: Some(config.max_concurrent_streams),
                keepalive_interval: Some(config.grpc_keepalive_interval).filter(|d| !d.is_zero()),
                keepalive_timeout: Some(config.grpc_keepalive_timeout),
            };
            // etcd 3.4's clients send an `http://` endpoint as the :authority, which h2 refuses.
            let incoming = crate::tls::incoming(listener, client_tls_server.clone());
            let incoming =
                futures::TryStreamExt::map_ok(incoming, |c| Coalesce::new(RepairAuthority::new(c)));
            tasks.push(tokio::spawn(serve::serve(svc, incoming, options, stop_rx.clone())));
        }
        // etcd's `--listen-metrics-urls`: the HTTP endpoints on listeners of their own (TLS as the
        // client side's for an https:// one).
        for (url, listener) in config.listen_metrics_urls.iter().zip(metrics_listeners) {
            let tls = client_tls.server(std::slice::from_ref(url), "")?;
            let leader_lost = leader_lost.clone();
            let layer = HttpLayer {
                node: node.clone(),
                max_body: 0,
                endpoints_only: true,
                gateway: false,
                leader_lost,
            };
            let svc = tower::Layer::layer(&layer, tonic::service::Routes::default().prepare());
            let options = serve::Options { http1: true, ..Default::default() };
            let incoming = crate::tls::incoming(listener, tls);
            tasks.push(tokio::spawn(serve::serve(svc, incoming, options, stop_rx.clone())));
        }
        for listener in peer_listeners {
            let peer = RaftPeerServer::new(PeerService { node: node.clone() })
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            let routes = tonic::service::Routes::new(peer).prepare();
            let incoming = crate::tls::incoming(listener, peer_tls_server.clone());
            tasks.push(tokio::spawn(serve::serve(routes, incoming, Default::default(), stop_rx.clone())));
        }

        tasks.push(tokio::spawn(snapshots(node.clone(), stop_rx.clone())));
        if node.sm.restored_unlogged() {
            tasks.push(tokio::spawn(snapshot_restored(node.clone(), stop_rx.clone())));
        }
        tasks.push(tokio::spawn(count_leader_changes(node.clone(), stop_rx.clone())));
        if !config.experimental_corrupt_check_time.is_zero() {
            let every = config.experimental_corrupt_check_time;
            tasks.push(tokio::spawn(crate::corrupt::periodic(node.clone(), every, stop_rx.clone())));
        }
        if let Some(mode) = auto_compaction {
            tasks.push(tokio::spawn(crate::compactor::run(node.clone(), mode, stop_rx.clone())));
        }
        let extend = Duration::from_millis(config.election_timeout);
        tasks.push(tokio::spawn(lease_clock(node.clone(), extend, stop_rx.clone())));
        let attributes =
            Attributes { name: config.name.clone(), client_urls: config.advertise_client_urls.clone() };
        tasks.push(tokio::spawn(publish(node.clone(), attributes, stop_rx.clone())));

        tracing::info!(name = %config.name, id = format!("{id:x}"), cluster = format!("{cluster_id:x}"), "concord member started");
        let server = Server { node, db, client_addrs, peer_addrs, stop, tasks };
        if config.experimental_initial_corrupt_check {
            if let Err(e) = server.initial_corrupt_check().await {
                let _ = server.shutdown().await;
                return Err(e);
            }
        }
        Ok(server)
    }

    /// `--experimental-initial-corrupt-check`: a member whose data differs from a peer's at the same
    /// revision stops instead of serving it.
    async fn initial_corrupt_check(&self) -> Result<(), ServerError> {
        let bad =
            crate::corrupt::mismatched(&self.node).await.map_err(|e| ServerError::Raft(e.to_string()))?;
        if let Some(peer) = bad.first() {
            return Err(ServerError::Corrupt(format!(
                "found data inconsistency with peers: {:x} differs from {peer:x} (and {} more)",
                self.node.id,
                bad.len() - 1
            )));
        }
        Ok(())
    }

    /// Addresses actually bound for clients (useful with port 0).
    pub fn client_addrs(&self) -> &[SocketAddr] {
        &self.client_addrs
    }

    pub fn peer_addrs(&self) -> &[SocketAddr] {
        &self.peer_addrs
    }

    pub fn node(&self) -> &RaftNode {
        &self.node
    }

    /// Resolves once this member has to stop by itself: it was removed from the cluster (etcd stops a
    /// removed member), or its Raft core stopped on an error. The core stops when a log write or sync
    /// fails: after a failed `fdatasync` the kernel may have dropped the unsynced pages and will not
    /// say so again, so no later sync can be trusted. A member that went on would serve reads and
    /// refuse every write forever; etcd exits then ("failed to save Raft hard state and entries"), and
    /// so must concord, to be restarted from what its disk holds.
    pub async fn stopped(&self) -> Stopped {
        let mut removed = self.node.network.removed();
        // The core holds the metrics' senders: they close when it stops.
        let mut core = self.node.raft.server_metrics();
        tokio::select! {
            _ = removed.wait_for(|r| *r) => Stopped::Removed,
            () = async { while core.changed().await.is_ok() {} } => {
                let why = match &self.node.raft.metrics().borrow().running_state {
                    Err(e) => e.to_string(),
                    // It ended without saying why: it panicked.
                    Ok(()) => "the Raft core panicked".to_string(),
                };
                Stopped::Failed(why)
            }
        }
    }

    /// Stops serving, stops Raft and syncs storage.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        self.node.raft.shutdown().await.map_err(|e| ServerError::Raft(e.to_string()))?;
        let db = self.db.clone();
        let sm = self.node.sm.clone();
        tokio::task::spawn_blocking(move || {
            sm.checkpoint().map_err(|e| StorageError::Corrupt(e.to_string()))?;
            db.sync()
        })
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))??;
        Ok(())
    }
}

/// Asks openraft for a snapshot (a checkpoint, which lets it purge the log) whenever the state machine
/// has applied `--snapshot-count` requests since the last one.
async fn snapshots(node: RaftNode, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = node.sm.snapshot_due() => {
                if node.raft.trigger().snapshot().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Makes a restored member's state reach members added later. A restored (or taken over) state comes
/// from no log entry: openraft would bring a new member up to date from the log alone, since nothing of
/// it is purged, and the new member would lack everything restored (etcd's restored member has its
/// state in a snapshot at the log's start for the same reason). So, once the first entry is applied,
/// this takes a snapshot and purges the log up to it: from then on a new member is sent the snapshot.
async fn snapshot_restored(node: RaftNode, mut stop: watch::Receiver<bool>) {
    // The purge waits until no replication still needs the entries: with a restored member down, the
    // others' marker stays (and so does their refusal of `member add`) until it is back.
    let settled = async {
        node.sm.wait_applied(1).await;
        node.raft.trigger().snapshot().await.map_err(|e| e.to_string())?;
        let mut metrics = node.raft.metrics();
        let stopped = |e: tokio::sync::watch::error::RecvError| e.to_string();
        let snapshot = metrics.wait_for(|m| m.snapshot.is_some()).await.map_err(stopped)?.snapshot;
        let at = snapshot.map_or(0, |s| s.index);
        node.raft.trigger().purge_log(at).await.map_err(|e| e.to_string())?;
        metrics.wait_for(|m| m.purged.is_some_and(|p| p.index >= at)).await.map_err(stopped)?;
        node.sm.restored_logged().map_err(|e| e.to_string())
    };
    tokio::select! {
        _ = stop.changed() => {}
        done = settled => {
            if let Err(e) = done {
                tracing::warn!(error = %e, "putting the restored state into a snapshot failed; member add stays refused");
            }
        }
    }
}

/// Runs the lease clock while this member leads: starts every lease afresh on promotion (from its
/// whole TTL, or with checkpoints from what was left at its last one, plus `extend`, like etcd), and
/// proposes the checkpoints that are due and the revoke of each lease that expires.
async fn lease_clock(node: RaftNode, extend: Duration, mut stop: watch::Receiver<bool>) {
    // Server metrics: they change with leadership and membership, not with every write as the full
    // metrics do (a wake-up of this task and the next one per write; docs/benchmarks.md, finding 20).
    let mut metrics = node.raft.server_metrics();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut leading = false;
    loop {
        // Leadership is checked on every change; expiry only on the tick (it walks every lease).
        let ticked = tokio::select! {
            _ = stop.changed() => return,
            changed = metrics.changed() => if changed.is_err() { return } else { false },
            _ = tick.tick() => true,
        };
        let leads = {
            let m = metrics.borrow();
            m.current_leader == Some(node.id) && m.state == openraft::ServerState::Leader
        };
        if leads && !leading {
            // Checkpoints left from when they were on are not trusted once they are off.
            let clocks = if node.lessor.checkpoints() { node.sm.lease_clocks() } else { node.sm.leases() };
            node.lessor.promote(&clocks, extend);
        } else if !leads && leading {
            node.lessor.demote();
        }
        leading = leads;
        if !leading || !ticked {
            continue;
        }
        // One copy of the lease table per tick, for the checkpoints and the expiries alike.
        let leases = node.sm.leases();
        let checkpoints = node.lessor.due_checkpoints(&leases);
        if !checkpoints.is_empty() {
            let request = crate::raft::Request::LeaseCheckpoint(checkpoints.clone());
            let landing = Landing(node.clone(), checkpoints);
            tokio::spawn(async move {
                if let Err(e) = landing.0.write_as_leader(request).await {
                    tracing::debug!("lease checkpoint: {e}");
                }
            });
        }
        for id in node.lessor.expired(&leases) {
            let node = node.clone();
            tokio::spawn(async move {
                // Proposed here or nowhere: a revoke forwarded to a newer leader would carry out this
                // clock's decision after that leader renewed the lease (found by concord-chaos).
                match node.write_as_leader(crate::raft::Request::LeaseRevoke { id }).await {
                    // Refused when applied (a CORRUPT alarm): asked again on a later tick.
                    Ok((crate::raft::Response::Error(e), _)) => {
                        tracing::debug!(lease = id, "revoking an expired lease: {e}; will retry");
                        node.lessor.retry(id);
                    }
                    Ok(_) => tracing::debug!(lease = id, "revoked expired lease"),
                    Err(crate::raft::node::NodeError::NoLeader) => {} // deposed: the new leader's clock decides
                    Err(e) => {
                        tracing::warn!(lease = id, "revoking an expired lease: {e}; will retry");
                        node.lessor.retry(id);
                    }
                }
            });
        }
    }
}

/// Marks lease checkpoints as landed however the task writing them ends (keepalives of those leases
/// wait for them), also if it is dropped unpolled.
struct Landing(RaftNode, Vec<(i64, i64)>);

impl Drop for Landing {
    fn drop(&mut self) {
        self.0.lessor.checkpoints_done(&self.1);
    }
}

/// Counts the leaders this member sees elected (etcd_server_leader_changes_seen_total) and logs each
/// change as etcd does.
async fn count_leader_changes(node: RaftNode, mut stop: watch::Receiver<bool>) {
    let mut metrics = node.raft.server_metrics();
    let (mut last, mut current) = (None, None);
    loop {
        let (leader, term) = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.vote.leader_id().term)
        };
        if leader.is_some() && leader != last {
            crate::metrics::LEADER_CHANGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        last = leader.or(last);
        // etcd's lines, word for word (raft/node.go): operators and scripts look for them.
        let id = node.id;
        match (current, leader) {
            (None, Some(l)) => tracing::info!("raft.node: {id:x} elected leader {l:x} at term {term}"),
            (Some(c), Some(l)) if c != l => {
                tracing::info!("raft.node: {id:x} changed leader from {c:x} to {l:x} at term {term}")
            }
            (Some(c), None) => tracing::info!("raft.node: {id:x} lost leader {c:x} at term {term}"),
            _ => {}
        }
        current = leader;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

/// Announces this member's name and client URLs through Raft (once per change), so every member lists
/// them.
async fn publish(node: RaftNode, attributes: Attributes, mut stop: watch::Receiver<bool>) {
    loop {
        let published = node.sm.attributes().get(&node.id) == Some(&attributes) || {
            let req = crate::raft::Request::Publish { id: node.id, attributes: attributes.clone() };
            match node.write(req).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!("publishing client URLs: {e}; will retry");
                    false
                }
            }
        };
        if published {
            // etcd's milestones, word for word: scripts and etcd's own e2e suite wait for these lines.
            let version = crate::api::maintenance::cluster_version();
            tracing::info!(cluster_version = version, "enabled capabilities for version {version}");
            tracing::info!(name = %attributes.name, client_urls = ?attributes.client_urls, "published local member to cluster through raft");
            tracing::info!("ready to serve client requests");
            return;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
