//! Who this member is: its id and its cluster's id. A member of a new cluster derives both from
//! `--initial-cluster`; a member joining an existing cluster (after `etcdctl member add`) asks the
//! members it is told about, as etcd's `getClusterFromRemotePeers` does. Both are kept in the data dir,
//! so a restart needs neither the flags nor the peers.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::config::{cluster_id, fnv64, member_id, ClusterState, Config, ConfigError};
use crate::pb::concordraft::raft_peer_client::RaftPeerClient;
use crate::pb::concordraft::RaftPayload;
use crate::raft::membership::MemberInfo;
use crate::server::ServerError;
use crate::storage::{keys, Db, StorageError};

/// How long a joining member keeps trying to reach the cluster it was told about.
const JOIN_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub id: u64,
    pub cluster_id: u64,
}

/// The members `--initial-cluster` names, with their ids: (id, name, peer URLs).
pub fn initial_members(config: &Config) -> Result<Vec<(u64, String, Vec<String>)>, ConfigError> {
    let members = config.initial_members()?;
    let token = &config.initial_cluster_token;
    Ok(members.into_iter().map(|(name, urls)| (member_id(&urls, token), name, urls)).collect())
}

/// The identity stored in `db`, or a new one (then stored).
pub async fn identity(
    config: &Config,
    db: &Db,
    tls: Option<&crate::tls::Dialer>,
) -> Result<Identity, ServerError> {
    let stored = |key: &[u8]| -> Result<Option<u64>, ServerError> {
        let v = db.raft.get(key).map_err(StorageError::from)?;
        Ok(v.and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes))
    };
    let members = initial_members(config)?;
    let from_flags = || {
        let id = members.iter().find(|(_, n, _)| *n == config.name).map_or(0, |(id, _, _)| *id);
        let ids: Vec<u64> = members.iter().map(|(id, _, _)| *id).collect();
        Identity { id, cluster_id: cluster_id(&ids) }
    };
    let identity = match (stored(keys::MEMBER_ID)?, stored(keys::CLUSTER_ID)?) {
        (Some(id), Some(cluster_id)) => return Ok(Identity { id, cluster_id }),
        // A data dir from before member ids were stored: its id came from the flags, the way concord
        // derived ids then.
        (None, Some(cluster_id)) => Identity { id: legacy_member_id(config)?, cluster_id },
        _ if config.initial_cluster_state == ClusterState::New => from_flags(),
        _ => join(config, &members, tls).await?,
    };
    db.raft.insert(keys::MEMBER_ID, &identity.id.to_be_bytes()).map_err(StorageError::from)?;
    db.raft.insert(keys::CLUSTER_ID, &identity.cluster_id.to_be_bytes()).map_err(StorageError::from)?;
    db.sync()?;
    Ok(identity)
}

/// This member's id as concord derived ids before it took etcd's way (`config::member_id`).
fn legacy_member_id(config: &Config) -> Result<u64, ConfigError> {
    let members = config.initial_members()?;
    let Some((name, urls)) = members.iter().find(|(n, _)| *n == config.name) else { return Ok(0) };
    let mut urls = urls.clone();
    urls.sort();
    let token = config.initial_cluster_token.as_bytes();
    Ok(fnv64(&[name.as_bytes(), urls.join(",").as_bytes(), token]).max(1))
}

/// Finds this member in an existing cluster: the member whose peer URLs are ours.
async fn join(
    config: &Config,
    members: &[(u64, String, Vec<String>)],
    tls: Option<&crate::tls::Dialer>,
) -> Result<Identity, ServerError> {
    let ours: BTreeSet<&String> = config.initial_advertise_peer_urls.iter().collect();
    let urls: Vec<&String> =
        members.iter().filter(|(_, name, _)| *name != config.name).flat_map(|(_, _, urls)| urls).collect();
    let deadline = tokio::time::Instant::now() + JOIN_PATIENCE;
    loop {
        for url in &urls {
            let Ok((cluster_id, listed)) = cluster_info(url, tls).await else { continue };
            return match listed.iter().find(|m| m.peer_urls.iter().collect::<BTreeSet<_>>() == ours) {
                Some(m) => Ok(Identity { id: m.id, cluster_id }),
                None => Err(ServerError::Join(format!(
                    "no member of the cluster at {url} has peer URLs {:?}; add this member with \
                     `etcdctl member add {} --peer-urls={}` first",
                    config.initial_advertise_peer_urls,
                    config.name,
                    config.initial_advertise_peer_urls.join(",")
                ))),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ServerError::Join(format!(
                "cannot fetch cluster info from peer urls {urls:?}: could not retrieve cluster information \
                 from the given URLs"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn cluster_info(
    url: &str,
    tls: Option<&crate::tls::Dialer>,
) -> Result<(u64, Vec<MemberInfo>), Box<dyn std::error::Error>> {
    let mut client = RaftPeerClient::new(crate::raft::network::endpoint(url, tls)?.connect().await?);
    let reply =
        tokio::time::timeout(Duration::from_secs(2), client.cluster_info(RaftPayload::default())).await??;
    Ok(crate::raft::decode(&reply.into_inner().data)?)
}
