//! Everything concord keeps on disk, per member:
//! - `<data-dir>/wal`: the Raft log ([`wal`]);
//! - `<data-dir>/records`: the MVCC records and the state machine's checkpoints ([`records`]);
//! - `<data-dir>/db`: a sled database whose `raft` tree holds the Raft metadata (`v` vote, `c`
//!   committed, `p` last purged log id) and the cluster id. This is the only module that knows sled.
//!
//! Durability: sled's `flush()` ends in `sync_file_range`, which neither flushes the disk cache nor
//! persists the file size, and sled writes large items to blob files it never syncs at all. [`Db::sync`]
//! therefore follows `flush()` with `fdatasync` of the `db` file and `fsync` of any new blob file.

pub mod records;
pub mod wal;

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

/// Makes the entries of `dir` (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Keys of the `raft` tree.
pub mod keys {
    pub const CLUSTER_ID: &[u8] = b"cluster-id";
    pub const MEMBER_ID: &[u8] = b"member-id";
    pub const VOTE: &[u8] = b"v";
    pub const COMMITTED: &[u8] = b"c";
    pub const PURGED: &[u8] = b"p";
}

pub struct Db {
    pub db: sled::Db,
    /// Raft metadata and the cluster id.
    pub raft: sled::Tree,
    path: PathBuf,
    file: File,
    synced_blobs: Mutex<HashSet<std::ffi::OsString>>,
}

impl Db {
    /// Whether a member has started on the data dir `dir` (the database is made at the first start).
    pub fn exists(dir: &Path) -> bool {
        dir.join("db").exists()
    }

    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Db, StorageError> {
        let path = dir.join("db");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(cache_bytes)
            // Every write here is followed by `Db::sync` where it matters (the vote, the purge point).
            .flush_every_ms(None)
            .open()?;
        let raft = db.open_tree("raft")?;
        let file = File::open(path.join("db"))?;
        Ok(Db { db, raft, path, file, synced_blobs: Mutex::new(HashSet::new()) })
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
}
