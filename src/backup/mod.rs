//! Backups, as etcd takes and restores them: `etcdctl snapshot save` streams one from
//! Maintenance.Snapshot, and `concord snapshot restore` builds a new member's data dir from it (etcdutl's
//! `snapshot restore`).
//!
//! A backup is etcd's backend file: a bbolt file ([`bolt`]) with etcd's buckets ([`etcd`]), followed,
//! as the server streams it, by the sha256 of everything before it. So etcd's tools read concord's
//! backups (`etcdctl snapshot status`, `etcdutl snapshot restore` into a real etcd), and concord
//! restores etcd's: a backup is also the way from etcd to concord and back.
//!
//! Backups from concord before it wrote etcd's files (a `concord1` header, the state machine's dump,
//! zeros up to a multiple of 512 bytes, the sha256) still restore.

pub mod bolt;
pub mod etcd;
pub mod etcd_dir;
pub mod etcd_wal;

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::raft::state_machine::StateMachine;
use crate::storage::StorageError;

const MAGIC: &[u8; 8] = b"concord1";
const HEADER: u64 = 16;
/// etcd's `hasChecksum`: the data is a whole number of 512-byte pages, then a sha256.
const PAGE: u64 = 512;
const SHA_LEN: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("data-dir {0:?} exists")]
    DataDirExists(PathBuf),
    #[error("{0}: snapshot missing hash but --skip-hash-check=false")]
    NoChecksum(PathBuf),
    #[error("{path}: snapshot file integrity check failed: expected sha256 {expected}, got {actual}")]
    Checksum { path: PathBuf, expected: String, actual: String },
    #[error(
        "{0:?} holds a member of a {1}-member etcd cluster; concord takes over a single member's data dir \
         only: restore each member from `etcdctl snapshot save` with `concord snapshot restore`"
    )]
    ClusterMember(PathBuf, usize),
    #[error("{0:?} is in use by a running etcd (its member/snap/db is locked): stop etcd first")]
    EtcdRunning(PathBuf),
    #[error("{0}: not a concord snapshot")]
    NotConcord(PathBuf),
    #[error("{0}: {1}")]
    Invalid(PathBuf, std::io::Error),
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

/// The header of a `concord1` backup whose dump is `len` bytes, and the zeros that follow the dump.
#[cfg(test)]
fn frame(len: u64) -> ([u8; HEADER as usize], usize) {
    let mut header = [0u8; HEADER as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&len.to_be_bytes());
    let padding = (PAGE - (HEADER + len) % PAGE) % PAGE;
    (header, padding as usize)
}

/// Checks a backup's sha256 (etcd's `hasChecksum`: a whole number of 512-byte pages, then the sha256),
/// unless `skip_hash_check` and it has none; returns the file and the length of its data.
fn open_checked(path: &Path, skip_hash_check: bool) -> Result<(File, u64), BackupError> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let has_hash = size >= SHA_LEN && (size - SHA_LEN).is_multiple_of(PAGE);
    if skip_hash_check {
        // As etcdutl: not checked, whatever the file ends with.
        return Ok((file, if has_hash { size - SHA_LEN } else { size }));
    }
    if !has_hash {
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
    Ok((file, size - SHA_LEN))
}

/// Builds the data dir of a new cluster's member from a backup, etcd's or concord's. The member is then
/// started with `--initial-cluster-state new` and the new cluster's `--initial-cluster`, like a member
/// etcdutl restored.
pub fn restore(backup: &Path, data_dir: &Path, skip_hash_check: bool) -> Result<(), BackupError> {
    if data_dir.exists() {
        return Err(BackupError::DataDirExists(data_dir.into()));
    }
    let (mut file, len) = open_checked(backup, skip_hash_check)?;
    let mut magic = [0u8; HEADER as usize];
    let concord1 = file.read_exact(&mut magic).is_ok() && &magic[..8] == MAGIC;
    let dump_len = concord1.then(|| u64::from_be_bytes(magic[8..].try_into().unwrap_or_default()));
    // Built aside and renamed: a failed restore leaves no half-made data dir behind.
    let building = aside(data_dir);
    let _ = std::fs::remove_dir_all(&building);
    let built = build(backup, &building, file, len, dump_len);
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    built?;
    std::fs::rename(&building, data_dir)?;
    Ok(())
}

/// `<data_dir>.restoring`, where a restore builds the data dir.
fn aside(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_owned();
    name.push(".restoring");
    name.into()
}

/// Fills a new state machine in `dir` from the backup `file` (`len` bytes of data besides the sha256):
/// a `concord1` dump of `dump_len` bytes after its header, or else etcd's backend file.
fn build(backup: &Path, dir: &Path, file: File, len: u64, dump_len: Option<u64>) -> Result<(), BackupError> {
    let sm = StateMachine::open(&dir.join("records"), dir.join("snap"), u64::MAX)?;
    if let Some(dump_len) = dump_len {
        if HEADER.checked_add(dump_len).is_none_or(|end| end > len) {
            return Err(BackupError::NotConcord(backup.into()));
        }
        sm.restore_dump(BufReader::with_capacity(1 << 20, file).take(dump_len))?;
        return Ok(());
    }
    load_etcd(&sm, dir, backup, file).map(|_| ())
}

/// Fills the new state machine `sm` (in `dir`) from etcd's backend file `file` (read from `path`):
/// etcd's records are converted to concord's in a file beside the new state, then loaded. Returns the
/// file's consistent index (the last log index etcd applied to it).
fn load_etcd(sm: &StateMachine, dir: &Path, path: &Path, file: File) -> Result<u64, BackupError> {
    let converted = dir.join("records.restoring");
    let mut w = BufWriter::with_capacity(1 << 20, File::create(&converted)?);
    let mut buf = Vec::new();
    let state = etcd::read(file, &mut |rev, kv| {
        buf.clear();
        crate::storage::records::encode_record(rev, &kv, &mut buf);
        w.write_all(&buf)
    })
    .map_err(|e| BackupError::Invalid(path.into(), e))?;
    w.flush()?;
    drop(w);
    let applied = state.consistent_index;
    sm.restore(state, &mut BufReader::with_capacity(1 << 20, File::open(&converted)?))?;
    std::fs::remove_file(&converted)?;
    Ok(applied)
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
        assert_eq!(open_checked(&path, false).unwrap().1, good.len() as u64 - SHA_LEN);

        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(matches!(open_checked(&path, false), Err(BackupError::NoChecksum(_))));
        assert_eq!(open_checked(&path, true).unwrap().1, good.len() as u64 - 1);
        let mut altered = good.clone();
        altered[17] ^= 1;
        std::fs::write(&path, &altered).unwrap();
        assert!(matches!(open_checked(&path, false), Err(BackupError::Checksum { .. })));
        assert_eq!(open_checked(&path, true).unwrap().1, good.len() as u64 - SHA_LEN, "not checked");
        assert!(matches!(restore(&path, dir.path(), false), Err(BackupError::DataDirExists(_))));
    }

    #[test]
    fn a_file_that_is_no_backup_is_refused_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let body = vec![7u8; 4096];
        std::fs::write(&path, [body.clone(), Sha256::digest(&body).to_vec()].concat()).unwrap();
        let data_dir = dir.path().join("member");
        let err = restore(&path, &data_dir, false).unwrap_err();
        assert!(matches!(err, BackupError::Invalid(..)), "{err}");
        assert!(err.to_string().contains("not a valid bbolt file"), "{err}");
        assert!(!data_dir.exists());
        assert!(!aside(&data_dir).exists());
    }
}
