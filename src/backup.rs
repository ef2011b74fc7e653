//! Backups, as etcd takes and restores them: `etcdctl snapshot save` streams one from
//! Maintenance.Snapshot, and `concord snapshot restore` builds a new member's data dir from it (etcdutl's
//! `snapshot restore`).
//!
//! The file is the state machine's snapshot dump (the one a lagging member receives) framed the way
//! etcdctl checks a snapshot: a 16-byte header (magic, dump length), the dump, zeros up to a multiple of
//! 512 bytes, then the sha256 of everything before it, which the server sends as the stream's last
//! message. A truncated or altered file fails the checksum and is refused.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::raft::state_machine::StateMachine;
use crate::storage::StorageError;

const MAGIC: &[u8; 8] = b"concord1";
const HEADER: u64 = 16;
/// etcdctl's `hasChecksum`: the data is a whole number of 512-byte pages, then a sha256.
const PAGE: u64 = 512;
const SHA_LEN: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("data-dir {0:?} exists")]
    DataDirExists(PathBuf),
    #[error("{0}: not a concord snapshot (sha256 checksum not found)")]
    NoChecksum(PathBuf),
    #[error("{path}: snapshot file integrity check failed: expected sha256 {expected}, got {actual}")]
    Checksum { path: PathBuf, expected: String, actual: String },
    #[error("{0}: not a concord snapshot")]
    NotConcord(PathBuf),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Raft(Box<crate::raft::types::StorageError>),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<crate::raft::types::StorageError> for BackupError {
    fn from(e: crate::raft::types::StorageError) -> Self {
        BackupError::Raft(Box::new(e))
    }
}

/// The header of a backup whose dump is `len` bytes, and the zeros that follow the dump.
pub fn frame(len: u64) -> ([u8; HEADER as usize], usize) {
    let mut header = [0u8; HEADER as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&len.to_be_bytes());
    let padding = (PAGE - (HEADER + len) % PAGE) % PAGE;
    (header, padding as usize)
}

/// Checks a backup's checksum and header; returns the file positioned at the dump, and its length.
fn open_checked(path: &Path) -> Result<(BufReader<File>, u64), BackupError> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    if size < HEADER + SHA_LEN || !(size - SHA_LEN).is_multiple_of(PAGE) {
        return Err(BackupError::NoChecksum(path.into()));
    }
    let mut hasher = Sha256::new();
    std::io::copy(&mut (&mut file).take(size - SHA_LEN), &mut hasher)?;
    let mut expected = [0u8; SHA_LEN as usize];
    file.read_exact(&mut expected)?;
    let actual = hasher.finalize();
    if actual.as_slice() != expected {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        return Err(BackupError::Checksum {
            path: path.into(),
            expected: hex(&expected),
            actual: hex(&actual),
        });
    }
    file.seek(SeekFrom::Start(0))?;
    let mut header = [0u8; HEADER as usize];
    file.read_exact(&mut header)?;
    let len = u64::from_be_bytes(header[8..].try_into().unwrap_or_default());
    if &header[..8] != MAGIC || HEADER + len > size - SHA_LEN {
        return Err(BackupError::NotConcord(path.into()));
    }
    Ok((BufReader::with_capacity(1 << 20, file), len))
}

/// Builds the data dir of a new cluster's member from a backup. The member is then started with
/// `--initial-cluster-state new` and the new cluster's `--initial-cluster`, like a member etcdutl restored.
pub fn restore(backup: &Path, data_dir: &Path) -> Result<(), BackupError> {
    if data_dir.exists() {
        return Err(BackupError::DataDirExists(data_dir.into()));
    }
    let (dump, len) = open_checked(backup)?;
    // Built aside and renamed: a failed restore leaves no half-made data dir behind.
    let building = data_dir.with_extension("restoring");
    let _ = std::fs::remove_dir_all(&building);
    let sm = StateMachine::open(&building.join("records"), building.join("snap"), u64::MAX)?;
    sm.restore(dump.take(len))?;
    drop(sm);
    std::fs::rename(&building, data_dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_whole_pages() {
        for len in [0, 1, 495, 496, 497, 10_000] {
            let (_, pad) = frame(len);
            assert_eq!((HEADER + len + pad as u64) % PAGE, 0, "len {len}");
            assert!((pad as u64) < PAGE);
        }
    }

    #[test]
    fn a_truncated_or_altered_backup_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (header, pad) = frame(3);
        let mut body = header.to_vec();
        body.extend_from_slice(b"abc");
        body.extend(std::iter::repeat_n(0, pad));
        let sha = Sha256::digest(&body);
        let good = [body.clone(), sha.to_vec()].concat();
        let path = dir.path().join("b");
        std::fs::write(&path, &good).unwrap();
        assert_eq!(open_checked(&path).unwrap().1, 3);

        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(matches!(open_checked(&path), Err(BackupError::NoChecksum(_))));
        let mut altered = good.clone();
        altered[17] ^= 1;
        std::fs::write(&path, &altered).unwrap();
        assert!(matches!(open_checked(&path), Err(BackupError::Checksum { .. })));
        assert!(matches!(restore(&path, dir.path()), Err(BackupError::DataDirExists(_))));
    }
}
