//! The Raft log: entries in our own write-ahead log ([`crate::storage::wal`]), vote, committed and purge
//! point in sled.
//!
//! `append` writes the entries and makes them durable with one `fdatasync` before it completes openraft's
//! callback. openraft 0.9 waits for each append's callback before its core takes the next message, so the
//! batching of concurrent writes into one entry (group commit) happens earlier, in [`super::batcher`].

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogId};

use super::state_machine::StateMachine;
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use super::{decode, encode};
use crate::storage::wal::Wal;
use crate::storage::{keys, Db};

fn io_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(ErrorSubject::Logs, verb, std::io::Error::other(e.to_string()))
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorVerb::Read, e)
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorVerb::Write, e)
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    wal: Arc<Wal>,
    sm: Arc<StateMachine>,
    recent: Recent,
}

impl LogStore {
    /// Opens the log in `wal_dir`.
    pub fn open(db: Arc<Db>, wal_dir: &std::path::Path, sm: Arc<StateMachine>) -> Result<Self, StorageError> {
        let purged: Option<LogId> = get_meta(&db, keys::PURGED)?;
        let wal = Arc::new(Wal::open(wal_dir, purged.map(|p| p.index)).map_err(read_err)?);
        Ok(LogStore { db, wal, sm, recent: Recent::default() })
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], v: &T) -> Result<(), StorageError> {
        let bytes = encode(v).map_err(write_err)?;
        self.db.raft.insert(key, bytes).map_err(write_err)?;
        Ok(())
    }

    async fn sync_db(&self) -> Result<(), StorageError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.sync()).await.map_err(write_err)?.map_err(write_err)
    }

    /// Appends `entry` and syncs it, for a change made before openraft starts (see [`super::force`]).
    pub(super) fn append_before_start(&self, entry: &Entry) -> Result<(), StorageError> {
        let record = encode(entry).map_err(write_err)?;
        self.wal.append(&[(entry.log_id.index, record)]).map_err(write_err)?;
        self.wal.sync().map_err(write_err)
    }

    /// Bytes of log on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.wal.disk_bytes()
    }
}

/// The entries appended last, kept decoded: openraft reads every entry back right after appending it (to
/// apply it, and on a leader to replicate it), and a clone is cheaper than a read, a checksum and a decode.
#[derive(Clone, Default)]
struct Recent {
    inner: Arc<std::sync::Mutex<RecentInner>>,
}

#[derive(Default)]
struct RecentInner {
    entries: std::collections::VecDeque<(Entry, usize)>,
    bytes: usize,
}

/// Bound on the cache, in encoded bytes.
const RECENT_BYTES: usize = 2 * 1024 * 1024;

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, RecentInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, entries: Vec<Entry>, bytes: usize) {
        let mut r = self.lock();
        // Appends follow each other; anything else (a leader change overwriting a suffix) starts afresh.
        let follows = match (r.entries.back(), entries.first()) {
            (Some((last, _)), Some(first)) => first.log_id.index == last.log_id.index + 1,
            _ => true,
        };
        if !follows {
            r.entries.clear();
            r.bytes = 0;
        }
        let per = bytes / entries.len().max(1);
        for e in entries {
            r.entries.push_back((e, per));
            r.bytes += per;
        }
        while r.bytes > RECENT_BYTES && r.entries.len() > 1 {
            if let Some((_, b)) = r.entries.pop_front() {
                r.bytes -= b;
            }
        }
    }

    /// Clones of `[from, to)` if the cache holds all of them.
    fn get(&self, from: u64, to: u64) -> Option<Vec<Entry>> {
        let r = self.lock();
        let first = r.entries.front()?.0.log_id.index;
        let last = r.entries.back()?.0.log_id.index;
        if from < first || to > last + 1 || from >= to {
            return None;
        }
        let start = (from - first) as usize;
        Some(r.entries.range(start..start + (to - from) as usize).map(|(e, _)| e.clone()).collect())
    }

    fn clear(&self) {
        let mut r = self.lock();
        r.entries.clear();
        r.bytes = 0;
    }
}

fn get_meta<T: serde::de::DeserializeOwned>(db: &Db, key: &[u8]) -> Result<Option<T>, StorageError> {
    match db.raft.get(key).map_err(read_err)? {
        Some(v) => Ok(Some(decode(&v).map_err(read_err)?)),
        None => Ok(None),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        if let Some(hit) = self.recent.get(from, to) {
            return Ok(hit);
        }
        let records = self.wal.read(from, to).map_err(read_err)?;
        records.into_iter().map(|(_, payload)| decode(&payload).map_err(read_err)).collect()
    }

    /// What replication sends in one append: openraft asks for up to 300 entries; this reads at most
    /// [`super::network::APPEND_BYTES`] of them (at least one), so that an append can reach a follower
    /// within openraft's timeout, and a retry does not read and decode them all again (with 512 KiB
    /// values that alone kept a leader's CPU busy enough that no append arrived in time).
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let end = self.wal.end_within(start, end, super::network::APPEND_BYTES);
        self.try_get_log_entries(start..end).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = get_meta(&self.db, keys::PURGED)?;
        let last = match self.wal.bounds().1 {
            Some(i) => {
                let rec = self.wal.read(i, i + 1).map_err(read_err)?;
                match rec.first() {
                    Some((_, payload)) => Some(*decode::<Entry>(payload).map_err(read_err)?.get_log_id()),
                    None => None,
                }
            }
            None => None,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last.or(last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(keys::VOTE, vote)?;
        self.sync_db().await
    }

    /// The vote, never as a committed (leader's) one: openraft would resume a committed vote's
    /// leadership at once on restart, taking its read index from a commit index that may be older than
    /// what it acknowledged before the crash (the commit index is not synced), so a read could go back in
    /// time (found by concord-chaos). A restarted member starts as a follower, as in etcd; the term and
    /// who it voted for, all that Raft needs kept, are unchanged.
    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let vote: Option<Vote> = get_meta(&self.db, keys::VOTE)?;
        Ok(vote.map(|v| Vote::new(v.leader_id().term, v.leader_id().voted_for().unwrap_or_default())))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Needs no sync of its own: losing it only means re-committing on restart.
        self.put_meta(keys::COMMITTED, &committed)
    }

    /// The stored commit index is not synced and may lag what the state machine made durable (a
    /// checkpoint, which is also the snapshot) or a snapshot file it wrote; openraft refuses to start
    /// with a snapshot past the commit index (found twice by concord-chaos: a member killed after
    /// writing a snapshot could not restart). Whatever was applied was committed, so the applied log id
    /// and the newest snapshot's are lower bounds; openraft applies the entries up to it again from
    /// the log (purges never pass the durable applied position, see `purge`).
    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let stored = get_meta::<Option<LogId>>(&self.db, keys::COMMITTED)?.flatten();
        Ok(stored.max(self.sm.last_applied()).max(self.sm.newest_snapshot().await))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let records = entries
            .iter()
            .map(|e| Ok((e.log_id.index, encode(e).map_err(write_err)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        self.wal.append(&records).map_err(write_err)?;
        self.recent.push(entries, records.iter().map(|(_, r)| r.len()).sum());
        // Synced here, on the Raft core's own worker: the core awaits this callback before it takes its
        // next message anyway, and a hand-off to a syncer thread and back cost two wake-ups per write
        // (docs/benchmarks.md, finding 19).
        callback.log_io_completed(self.wal.sync().map_err(|e| std::io::Error::other(e.to_string())));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.recent.clear();
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || wal.truncate(log_id.index))
            .await
            .map_err(write_err)?
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The state machine must cover what goes, durably. openraft can purge as soon as it has handed a
        // received snapshot to the state machine, before the install is done: wait for it, then make the
        // applied state durable before the purge point.
        self.sm.wait_applied(log_id.index).await;
        let sm = self.sm.clone();
        tokio::task::spawn_blocking(move || sm.checkpoint()).await.map_err(write_err)??;
        self.put_meta(keys::PURGED, &log_id)?;
        self.sync_db().await?;
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || wal.purge(log_id.index))
            .await
            .map_err(write_err)?
            .map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::pb::etcdserverpb::PutRequest;
    use crate::raft::state_machine::StateMachineStore;
    use crate::raft::Request;

    fn put(index: u64) -> Entry {
        let req =
            PutRequest { key: format!("k{index}").into_bytes(), value: b"v".to_vec(), ..Default::default() };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request::Put(req)),
        }
    }

    /// Regression test for a bug concord-chaos found: a member killed after its state machine made a
    /// checkpoint (its snapshot) but before the commit index it had stored reached the disk could not
    /// restart, as openraft refuses a snapshot past the commit index. The applied position is a floor.
    #[tokio::test]
    async fn the_commit_index_read_back_is_never_behind_the_durable_applied_position() {
        let dir = tempfile::tempdir().unwrap();
        let open_sm =
            || StateMachine::open(&dir.path().join("records"), dir.path().join("snap"), 100).unwrap();
        {
            let sm = open_sm();
            let db = Arc::new(Db::open(dir.path(), 1 << 20).unwrap());
            let mut log = LogStore::open(db.clone(), &dir.path().join("wal"), sm.clone()).unwrap();
            log.save_committed(Some(put(1).log_id)).await.unwrap();
            db.sync().unwrap();
            StateMachineStore { sm: sm.clone() }.apply((1..=3).map(put)).await.unwrap();
            sm.checkpoint().unwrap();
            // Killed here: the commit index of entries 2 and 3 never reached the disk.
        }
        let sm = open_sm();
        assert_eq!(sm.last_applied().map(|l| l.index), Some(3));
        let db = Arc::new(Db::open(dir.path(), 1 << 20).unwrap());
        let mut log = LogStore::open(db, &dir.path().join("wal"), sm).unwrap();
        assert_eq!(log.read_committed().await.unwrap().map(|l| l.index), Some(3));
    }

    /// The same, found again by concord-chaos: a leader wrote a snapshot file for a lagging member from
    /// its state in memory (past its last checkpoint) and was killed; at restart openraft found the
    /// snapshot past the commit index it read back and panicked.
    #[tokio::test]
    async fn the_commit_index_read_back_is_never_behind_the_newest_snapshot_file() {
        let dir = tempfile::tempdir().unwrap();
        let open_sm =
            || StateMachine::open(&dir.path().join("records"), dir.path().join("snap"), 100).unwrap();
        {
            let sm = open_sm();
            let mut store = StateMachineStore { sm: sm.clone() };
            store.apply([put(1)]).await.unwrap();
            sm.checkpoint().unwrap();
            store.apply((2..=3).map(put)).await.unwrap();
            // openraft's probe at start, then a lagging member's request: the file covers entry 3.
            assert!(store.get_current_snapshot().await.unwrap().is_none());
            let written = store.get_current_snapshot().await.unwrap().unwrap();
            assert_eq!(written.meta.last_log_id.map(|l| l.index), Some(3));
            // Killed here: neither entry 3's commit index nor a checkpoint past entry 1 reached the disk.
        }
        let sm = open_sm();
        let db = Arc::new(Db::open(dir.path(), 1 << 20).unwrap());
        let mut log = LogStore::open(db, &dir.path().join("wal"), sm.clone()).unwrap();
        assert!(sm.last_applied().map_or(0, |l| l.index) <= 3);
        assert_eq!(log.read_committed().await.unwrap().map(|l| l.index), Some(3));
    }
}
