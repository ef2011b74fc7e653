//! The Raft log in sled, with group commit.
//!
//! `append` inserts the entries (readable at once) and hands openraft's completion callback to a flusher
//! task. The flusher takes every callback that arrived since its last sync, makes them durable with one
//! flush + fdatasync, then completes them all: concurrent clients share one disk sync.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogId};
use tokio::sync::mpsc;

use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use super::{decode, encode};
use crate::storage::{keys, Db};

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    flusher: mpsc::UnboundedSender<LogFlushed<TypeConfig>>,
}

impl LogStore {
    /// Must be called inside a tokio runtime: it starts the flusher task.
    pub fn new(db: Arc<Db>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(flusher(db.clone(), rx));
        LogStore { db, flusher: tx }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.db.raft.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(decode(&v).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], v: &T) -> Result<(), StorageError> {
        let bytes = encode(v).map_err(write_err)?;
        self.db.raft.insert(key, bytes).map_err(write_err)?;
        Ok(())
    }

    async fn sync(&self) -> Result<(), StorageError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.sync()).await.map_err(write_err)?.map_err(write_err)
    }
}

async fn flusher(db: Arc<Db>, mut rx: mpsc::UnboundedReceiver<LogFlushed<TypeConfig>>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, usize::MAX).await > 0 {
        let db = db.clone();
        let result = tokio::task::spawn_blocking(move || db.sync()).await;
        let err = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        for cb in batch.drain(..) {
            cb.log_io_completed(match &err {
                None => Ok(()),
                Some(e) => Err(std::io::Error::other(e.clone())),
            });
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for item in self.db.raft.range(keys::log(start)..) {
            let (k, v) = item.map_err(read_err)?;
            if k.first() != Some(&keys::LOG_PREFIX) {
                break;
            }
            let idx = u64::from_be_bytes(k[1..9].try_into().map_err(read_err)?);
            if !range.contains(&idx) {
                break;
            }
            out.push(decode(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(keys::PURGED)?;
        let last = self
            .db
            .raft
            .scan_prefix([keys::LOG_PREFIX])
            .next_back()
            .transpose()
            .map_err(read_err)?
            .map(|(_, v)| decode::<Entry>(&v).map(|e| *e.get_log_id()))
            .transpose()
            .map_err(read_err)?;
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last.or(last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(keys::VOTE, vote)?;
        self.sync().await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(keys::VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Needs no sync of its own: losing it only means re-committing on restart.
        self.put_meta(keys::COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(keys::COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&keys::log(entry.log_id.index), encode(&entry).map_err(write_err)?);
        }
        self.db.raft.apply_batch(batch).map_err(write_err)?;
        self.flusher.send(callback).map_err(|_| write_err(std::io::Error::other("log flusher stopped")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.db.raft.range(keys::log(log_id.index)..=keys::log(u64::MAX)) {
            batch.remove(item.map_err(write_err)?.0);
        }
        self.db.raft.apply_batch(batch).map_err(write_err)?;
        self.sync().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.put_meta(keys::PURGED, &log_id)?;
        let mut batch = sled::Batch::default();
        for item in self.db.raft.range(keys::log(0)..=keys::log(log_id.index)) {
            batch.remove(item.map_err(write_err)?.0);
        }
        self.db.raft.apply_batch(batch).map_err(write_err)?;
        Ok(())
    }
}
