//! The only module that knows sled.
//!
//! One sled database per member, in `<data-dir>/db`, with two trees:
//! - `raft`: the Raft log (`l` + index, big-endian) and Raft metadata (`v` vote, `c` committed, `p` last
//!   purged log id);
//! - the default tree: the state machine. MVCC records (`r` + revision) and its metadata (`m...`: applied
//!   log id, membership, current and compacted revision) share one tree so that one `apply_batch` makes an
//!   applied entry and its effects atomic.
//!
//! Durability: sled's `flush()` ends in `sync_file_range`, which neither flushes the disk cache nor
//! persists the file size, and sled writes large items to blob files it never syncs at all. [`Db::sync`]
//! therefore follows `flush()` with `fdatasync` of the `db` file and `fsync` of any new blob file.

mod backend;
pub mod wal;

pub use backend::SledBackend;

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl From<StorageError> for io::Error {
    fn from(e: StorageError) -> io::Error {
        match e {
            StorageError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        }
    }
}

/// The state machine tree's metadata keys.
pub mod keys {
    pub const RECORD_PREFIX: u8 = b'r';
    pub const APPLIED: &[u8] = b"m/applied";
    pub const MEMBERSHIP: &[u8] = b"m/membership";
    pub const CLIENT_URLS: &[u8] = b"m/client-urls";
    pub const CLUSTER_ID: &[u8] = b"cluster-id";

    pub fn record(rev: crate::mvcc::Revision) -> [u8; 17] {
        let mut k = [0u8; 17];
        k[0] = RECORD_PREFIX;
        k[1..].copy_from_slice(&rev.to_bytes());
        k
    }

    pub const LOG_PREFIX: u8 = b'l';
    pub const VOTE: &[u8] = b"v";
    pub const COMMITTED: &[u8] = b"c";
    pub const PURGED: &[u8] = b"p";

    pub fn log(index: u64) -> [u8; 9] {
        let mut k = [0u8; 9];
        k[0] = LOG_PREFIX;
        k[1..].copy_from_slice(&index.to_be_bytes());
        k
    }
}

pub struct Db {
    pub db: sled::Db,
    /// Raft log and Raft metadata.
    pub raft: sled::Tree,
    /// The state machine (default tree).
    pub state: sled::Tree,
    path: PathBuf,
    file: File,
    synced_blobs: Mutex<HashSet<std::ffi::OsString>>,
}

impl Db {
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Db, StorageError> {
        let path = dir.join("db");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(cache_bytes)
            // The state machine needs no sync per write (the Raft log is the durability point), but a
            // timely write-out keeps the log replay after a process crash short.
            .flush_every_ms(Some(1000))
            .open()?;
        let raft = db.open_tree("raft")?;
        let state = (*db).clone();
        let file = File::open(path.join("db"))?;
        Ok(Db { db, raft, state, path, file, synced_blobs: Mutex::new(HashSet::new()) })
    }

    /// Makes every write done so far durable. Blocking: call from a blocking-capable context.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        self.file.sync_data()?;
        self.sync_new_blobs()?;
        Ok(())
    }

    fn sync_new_blobs(&self) -> Result<(), StorageError> {
        let dir = self.path.join("blobs");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = HashSet::new();
        let mut any_new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_data()?,
                    // sled removes blobs it no longer needs; one gone meanwhile needs no sync.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                }
                any_new = true;
            }
            present.insert(name);
        }
        if any_new {
            File::open(&dir)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }

    /// Bytes on disk under the database directory.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
