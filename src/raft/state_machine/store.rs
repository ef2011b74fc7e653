//! The state machine as openraft sees it: applying entries, and snapshots. To openraft a snapshot is
//! what lets it purge the log, which for concord is a checkpoint; a snapshot file is written only when a
//! lagging member needs one.

use std::io::{Read, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{snap_err, Durable, StateMachine};
use crate::raft::types::{
    Entry, LogId, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::raft::{decode, encode};

/// The handle openraft owns; cheap to clone.
#[derive(Clone)]
pub struct StateMachineStore {
    pub sm: Arc<StateMachine>,
}

/// Snapshot file layout: `u32` length + bincode `SnapshotMeta`, `u32` length + bincode `Durable`, then
/// every record in revision order, in the record log's format (integers big-endian here).
async fn write_snapshot(sm: Arc<StateMachine>, tmp: PathBuf) -> Result<SnapshotMeta, StorageError> {
    tokio::task::spawn_blocking(move || dump(&sm, &tmp)).await.map_err(|e| snap_err(ErrorVerb::Write, e))?
}

/// Streams the state into `tmp`, on a blocking thread (never a tokio worker). Only taking the view holds
/// the store's lock: applies go on while the records are copied.
pub(super) fn dump(sm: &StateMachine, tmp: &Path) -> Result<SnapshotMeta, StorageError> {
    let we = |e: std::io::Error| snap_err(ErrorVerb::Write, e);
    let (view, durable) = {
        let store = sm.store.read().unwrap_or_else(|p| p.into_inner());
        (store.backend().view(), sm.meta().durable(&store))
    };
    let meta = snapshot_meta(&durable);
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(tmp).map_err(we)?);
    for part in [encode(&meta), encode(&durable)] {
        let part = part.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        w.write_all(&(part.len() as u32).to_be_bytes()).map_err(we)?;
        w.write_all(&part).map_err(we)?;
    }
    view.write_to(&mut w).map_err(we)?;
    let file = w.into_inner().map_err(|e| we(e.into_error()))?;
    file.sync_all().map_err(we)?;
    Ok(meta)
}

/// Reads the head of a dump (its SnapshotMeta, which openraft has read already, and its checkpoint),
/// leaving `r` at the records.
pub(super) fn read_dump_head(r: &mut impl Read) -> Result<Durable, StorageError> {
    let re = |e: std::io::Error| snap_err(ErrorVerb::Read, e);
    read_part(r).map_err(re)?;
    Durable::decode(&read_part(r).map_err(re)?).map_err(|e| snap_err(ErrorVerb::Read, e))
}

fn read_part(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let mut part = vec![0; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut part)?;
    Ok(part)
}

pub(super) async fn read_snapshot_meta(file: &mut tokio::fs::File) -> std::io::Result<SnapshotMeta> {
    file.seek(SeekFrom::Start(0)).await?;
    let len = file.read_u32().await? as usize;
    let mut header = vec![0; len];
    file.read_exact(&mut header).await?;
    decode(&header).map_err(std::io::Error::other)
}

/// A snapshot, to openraft, is what lets it purge the log: for concord that is a checkpoint, since the
/// record log is the state (like etcd, whose snapshot is its bbolt file). The file a lagging member needs
/// is written only when one needs it (`get_current_snapshot`).
impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        self.sm.since_snapshot.store(0, Ordering::Relaxed);
        let sm = self.sm.clone();
        let durable = tokio::task::spawn_blocking(move || sm.checkpoint_state())
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))??;
        let meta = snapshot_meta(&durable);
        if let Some(l) = meta.last_log_id {
            self.sm.snapshot_floor.fetch_max(l.index, Ordering::Relaxed);
        }
        tracing::debug!(snapshot = %meta.snapshot_id, "checkpoint as snapshot");
        // openraft keeps only the meta of a snapshot it asked to build.
        let file = tokio::fs::File::open("/dev/null").await.map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

fn snapshot_meta(d: &Durable) -> SnapshotMeta {
    let snapshot_id = match d.last_applied {
        Some(l) => format!("{}-{}", l.leader_id.term, l.index),
        None => "0-0".to_string(),
    };
    SnapshotMeta { last_log_id: d.last_applied, last_membership: d.membership.clone(), snapshot_id }
}

/// The log index a snapshot file covers, from its name (`<term>-<index>-<records>.snap`).
fn snapshot_index(p: &std::path::Path) -> Option<u64> {
    if p.extension()? != "snap" {
        return None;
    }
    p.file_stem()?.to_str()?.split('-').nth(1)?.parse().ok()
}

/// Snapshot files in `dir`, newest (highest index) first.
pub(super) async fn snapshots(dir: &std::path::Path) -> Vec<(u64, PathBuf)> {
    let mut out = Vec::new();
    if let Ok(mut rd) = tokio::fs::read_dir(dir).await {
        while let Ok(Some(e)) = rd.next_entry().await {
            let p = e.path();
            if let Some(i) = snapshot_index(&p) {
                out.push((i, p));
            }
        }
    }
    out.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
    out
}

/// Removes snapshots older than the one at `keep` (a build and an install can finish in either order:
/// never let the older one delete the newer).
async fn remove_older_snapshots(dir: &std::path::Path, keep: &std::path::Path) {
    let Some(keep_index) = snapshot_index(keep) else { return };
    for (i, p) in snapshots(dir).await {
        if i < keep_index {
            let _ = tokio::fs::remove_file(p).await;
        }
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let meta = self.sm.meta.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok((meta.last_applied, meta.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.sm.apply_entries(entries)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.sm.snapshot_dir.join("receiving.tmp");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let re = |e: std::io::Error| snap_err(ErrorVerb::Read, e);
        snapshot.sync_all().await.map_err(re)?;
        snapshot.seek(SeekFrom::Start(0)).await.map_err(re)?;
        let file = snapshot.into_std().await;
        let sm = self.sm.clone();
        let snapshot_id = meta.snapshot_id.clone();
        let id = snapshot_id.clone();
        tokio::task::spawn_blocking(move || sm.install(file, &id))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))??;
        // Only once the state is durable does the file become the current snapshot.
        let path = self.sm.snapshot_path(&snapshot_id);
        tokio::fs::rename(self.sm.snapshot_dir.join("receiving.tmp"), &path).await.map_err(re)?;
        remove_older_snapshots(&self.sm.snapshot_dir, &path).await;
        Ok(())
    }

    /// The newest snapshot file if it covers the last snapshot's index; otherwise one is written now,
    /// from the current state (openraft 0.9 accepts a snapshot newer than the one it asked for). The
    /// exception is openraft's probe while starting: answering "none" then makes it build one (a
    /// checkpoint) instead of this member dumping its whole state at every restart.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let re = |e: std::io::Error| snap_err(ErrorVerb::Read, e);
        let floor = self.sm.snapshot_floor.load(Ordering::Relaxed);
        let newest = snapshots(&self.sm.snapshot_dir).await.into_iter().next();
        let path = match newest {
            Some((i, p)) if i >= floor => p,
            _ if !self.sm.probed.swap(true, Ordering::Relaxed) || self.sm.last_applied().is_none() => {
                return Ok(None)
            }
            _ => {
                static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = BUILDS.fetch_add(1, Ordering::Relaxed);
                let tmp = self.sm.snapshot_dir.join(format!("building-{n}.tmp"));
                let meta = write_snapshot(self.sm.clone(), tmp.clone()).await?;
                let path = self.sm.snapshot_path(&meta.snapshot_id);
                tokio::fs::rename(&tmp, &path).await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
                remove_older_snapshots(&self.sm.snapshot_dir, &path).await;
                tracing::info!(snapshot = %meta.snapshot_id, "wrote snapshot for a lagging member");
                path
            }
        };
        self.sm.probed.store(true, Ordering::Relaxed);
        let mut file = tokio::fs::File::open(&path).await.map_err(re)?;
        let meta = read_snapshot_meta(&mut file).await.map_err(re)?;
        file.seek(SeekFrom::Start(0)).await.map_err(re)?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
    }
}
