//! etcd's write-ahead log, read back as etcd reads it when it restarts (`wal/decoder.go`, `wal.ReadAll`),
//! so that concord can take over a stopped etcd member's data dir: the backend file (`member/snap/db`)
//! holds every request up to its consistent index, and the log holds the ones committed after it.
//!
//! A WAL file (`member/wal/<seq>-<index>.wal`) is a sequence of frames: a little-endian u64 whose low 56
//! bits are the length of a `walpb.Record` and whose top bit, when set, says the next byte's low three
//! bits count the zeros padding it to 8 bytes. Each record's `crc` is the running CRC-32C of the data of
//! every record before it and its own; a `crc` record at the start of a file carries the running value
//! over from the file before. A record torn by a crash can only be the last one.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::Path;

use prost::Message;

const METADATA: i64 = 1;
const ENTRY: i64 = 2;
const STATE: i64 = 3;
const CRC: i64 = 4;
const SNAPSHOT: i64 = 5;
/// etcd's `maxWALEntrySizeLimit`.
const MAX_RECORD: u64 = 10 << 20;

#[derive(Clone, PartialEq, Message)]
struct Record {
    #[prost(int64, tag = "1")]
    kind: i64,
    #[prost(uint32, tag = "2")]
    crc: u32,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
}

/// `raftpb.Entry`.
#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    /// 0 normal, 1 `ConfChange`, 2 `ConfChangeV2`.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(uint64, tag = "2")]
    pub term: u64,
    #[prost(uint64, tag = "3")]
    pub index: u64,
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
}

pub const ENTRY_NORMAL: i32 = 0;

/// `raftpb.HardState`.
#[derive(Clone, PartialEq, Message)]
struct HardState {
    #[prost(uint64, tag = "1")]
    term: u64,
    #[prost(uint64, tag = "2")]
    vote: u64,
    #[prost(uint64, tag = "3")]
    commit: u64,
}

/// `walpb.Snapshot`: where a `.snap` file took over from the log.
#[derive(Clone, PartialEq, Message)]
struct Snapshot {
    #[prost(uint64, tag = "1")]
    index: u64,
    #[prost(uint64, tag = "2")]
    term: u64,
}

/// `etcdserverpb.Metadata`, written at the head of every WAL file.
#[derive(Clone, PartialEq, Message)]
struct Metadata {
    #[prost(uint64, tag = "1")]
    node_id: u64,
    #[prost(uint64, tag = "2")]
    cluster_id: u64,
}

/// What a member's WAL says, as etcd replays it.
#[derive(Debug, Default)]
pub struct Wal {
    pub member_id: u64,
    pub cluster_id: u64,
    /// The highest index known committed.
    pub commit: u64,
    /// The entries after the last snapshot record, each index once (a later append supersedes an
    /// earlier one at the same index and everything after it, as in Raft).
    pub entries: Vec<Entry>,
}

fn bad(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("etcd WAL: {what}"))
}

/// Reads every file of the WAL directory `dir`, in order.
pub fn read(dir: &Path) -> io::Result<Wal> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| is_etcd_wal(n))
        .collect();
    // Name order is sequence order.
    names.sort();
    if names.is_empty() {
        return Err(bad(format!("no .wal file in {}", dir.display())));
    }
    let mut wal = Wal::default();
    let mut crc = 0u32;
    let last = names.len() - 1;
    for (i, name) in names.iter().enumerate() {
        let mut r = BufReader::with_capacity(1 << 20, File::open(dir.join(name))?);
        while let Some(record) = next_record(&mut r, i == last).map_err(|e| bad(format!("{name}: {e}")))? {
            if record.kind == CRC {
                if crc != 0 && record.crc != crc {
                    return Err(bad(format!("{name}: CRC mismatch at the start of the file")));
                }
                crc = record.crc;
                continue;
            }
            crc = crc32c::crc32c_append(crc, &record.data);
            if record.crc != crc {
                if i == last {
                    // A torn write at the tail: etcd repairs the file by cutting it here.
                    break;
                }
                return Err(bad(format!("{name}: CRC mismatch")));
            }
            apply(&mut wal, record).map_err(|e| bad(format!("{name}: {e}")))?;
        }
    }
    Ok(wal)
}

/// `<seq>-<index>.wal`, both 16 hex digits; concord's own segments (`<seq>.wal`), which may share a
/// `--wal-dir`, do not match.
fn is_etcd_wal(name: &str) -> bool {
    let hex = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
    name.strip_suffix(".wal").and_then(|n| n.split_once('-')).is_some_and(|(a, b)| hex(a) && hex(b))
}

fn apply(wal: &mut Wal, record: Record) -> Result<(), prost::DecodeError> {
    match record.kind {
        METADATA => {
            let m = Metadata::decode(record.data.as_slice())?;
            (wal.member_id, wal.cluster_id) = (m.node_id, m.cluster_id);
        }
        ENTRY => {
            let e = Entry::decode(record.data.as_slice())?;
            let keep = wal.entries.partition_point(|x| x.index < e.index);
            wal.entries.truncate(keep);
            wal.entries.push(e);
        }
        STATE => {
            let s = HardState::decode(record.data.as_slice())?;
            // An empty hard state is written when nothing changed.
            if s != HardState::default() {
                wal.commit = s.commit;
            }
        }
        SNAPSHOT => {
            let s = Snapshot::decode(record.data.as_slice())?;
            wal.entries.retain(|e| e.index > s.index);
            wal.commit = wal.commit.max(s.index);
        }
        _ => {}
    }
    Ok(())
}

/// The next record, or `None` at the end of the file: its end, zeros (the preallocated rest), or, in the
/// last file, a frame cut short by a crash.
fn next_record(r: &mut impl Read, last: bool) -> io::Result<Option<Record>> {
    let mut len = [0u8; 8];
    match r.read_exact(&mut len) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let field = u64::from_le_bytes(len);
    if field == 0 {
        return Ok(None);
    }
    let bytes = field & !(0xff << 56);
    let padding = if field >> 63 == 1 { (field >> 56) & 0x7 } else { 0 };
    if bytes + padding >= MAX_RECORD {
        return Err(bad(format!("a record of {bytes} bytes")));
    }
    let mut data = vec![0u8; (bytes + padding) as usize];
    match r.read_exact(&mut data) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && last => return Ok(None),
        other => other?,
    }
    match Record::decode(&data[..bytes as usize]) {
        Ok(record) => Ok(Some(record)),
        // A sector of zeros in the last file's last record: torn by a crash.
        Err(_) if last => Ok(None),
        Err(e) => Err(bad(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes records as etcd's encoder does (`wal/encoder.go`): running CRC, frames padded to 8 bytes.
    fn frame(out: &mut Vec<u8>, crc: &mut u32, kind: i64, data: Vec<u8>) {
        let record = if kind == CRC {
            Record { kind, crc: *crc, data }
        } else {
            *crc = crc32c::crc32c_append(*crc, &data);
            Record { kind, crc: *crc, data }
        };
        let bytes = record.encode_to_vec();
        let padding = (8 - bytes.len() % 8) % 8;
        let mut field = bytes.len() as u64;
        if padding != 0 {
            field |= (0x80 | padding as u64) << 56;
        }
        out.extend_from_slice(&field.to_le_bytes());
        out.extend_from_slice(&bytes);
        out.extend(std::iter::repeat_n(0, padding));
    }

    fn entry(index: u64, term: u64, data: &[u8]) -> Vec<u8> {
        Entry { kind: ENTRY_NORMAL, term, index, data: data.to_vec() }.encode_to_vec()
    }

    #[test]
    fn reads_what_etcd_writes_across_files_keeping_the_last_append_of_each_index() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut crc) = (Vec::new(), 0);
        frame(&mut a, &mut crc, CRC, vec![]);
        frame(&mut a, &mut crc, METADATA, Metadata { node_id: 7, cluster_id: 9 }.encode_to_vec());
        frame(&mut a, &mut crc, SNAPSHOT, Snapshot { index: 0, term: 0 }.encode_to_vec());
        for i in 1..=3 {
            frame(&mut a, &mut crc, ENTRY, entry(i, 1, b"old"));
        }
        frame(&mut a, &mut crc, STATE, HardState { term: 1, vote: 7, commit: 1 }.encode_to_vec());
        a.extend([0u8; 64]); // preallocated
        let mut b = Vec::new();
        frame(&mut b, &mut crc, CRC, vec![]);
        frame(&mut b, &mut crc, ENTRY, entry(2, 2, b"new"));
        frame(&mut b, &mut crc, STATE, HardState { term: 2, vote: 7, commit: 2 }.encode_to_vec());
        fs::write(dir.path().join("0000000000000000-0000000000000000.wal"), &a).unwrap();
        fs::write(dir.path().join("0000000000000001-0000000000000002.wal"), &b).unwrap();
        fs::write(dir.path().join("0000000000000001.wal"), b"concord's own segment").unwrap();

        let wal = read(dir.path()).unwrap();
        assert_eq!((wal.member_id, wal.cluster_id, wal.commit), (7, 9, 2));
        let got: Vec<_> = wal.entries.iter().map(|e| (e.index, e.term, e.data.clone())).collect();
        assert_eq!(got, [(1, 1, b"old".to_vec()), (2, 2, b"new".to_vec())]);
    }

    #[test]
    fn a_torn_tail_ends_the_log_but_damage_before_it_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut crc) = (Vec::new(), 0);
        frame(&mut a, &mut crc, ENTRY, entry(1, 1, b"x"));
        let second = a.len();
        frame(&mut a, &mut crc, ENTRY, entry(2, 1, b"y"));
        let torn = a.len() - 3;
        fs::write(dir.path().join("0000000000000000-0000000000000000.wal"), &a[..torn]).unwrap();
        assert_eq!(read(dir.path()).unwrap().entries.len(), 1);

        // The same damage in a file with another after it is not a crash's doing.
        let mut b = a.clone();
        b[second + 8 + 4] ^= 0xff;
        fs::write(dir.path().join("0000000000000000-0000000000000000.wal"), &b).unwrap();
        let (mut c, mut crc2) = (Vec::new(), 0);
        frame(&mut c, &mut crc2, CRC, vec![]);
        fs::write(dir.path().join("0000000000000001-0000000000000003.wal"), &c).unwrap();
        assert!(read(dir.path()).is_err());
    }
}
