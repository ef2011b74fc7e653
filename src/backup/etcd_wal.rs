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

use crate::storage::wal::torn;

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

/// What a member's WAL says, as etcd replays it.
#[derive(Debug, Default)]
pub struct Wal {
    /// The highest index known committed.
    pub commit: u64,
    /// The index of the last snapshot record: entries up to it are in the member's `.snap` file.
    pub snapshot: u64,
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
        let mut offset = 0;
        loop {
            let frame =
                next_frame(&mut r, &mut offset, i == last).map_err(|e| bad(format!("{name}: {e}")))?;
            let Some((frame, at)) = frame else { break };
            // etcd's `isTornEntry`: only the last file's last record can be cut short by a crash, and
            // what was not written reads as zeros; any other damage is an error, as etcd refuses it.
            let torn = || i == last && torn(&frame.bytes, at);
            let record = match Record::decode(frame.record()) {
                Ok(record) => record,
                Err(_) if torn() => break,
                Err(e) => return Err(bad(format!("{name}: {e}"))),
            };
            if record.kind == CRC {
                if crc != 0 && record.crc != crc {
                    return Err(bad(format!("{name}: CRC mismatch at the start of the file")));
                }
                crc = record.crc;
                continue;
            }
            let next = crc32c::crc32c_append(crc, &record.data);
            if record.crc != next {
                if torn() {
                    break;
                }
                return Err(bad(format!("{name}: CRC mismatch")));
            }
            crc = next;
            apply(&mut wal, record).map_err(|e| bad(format!("{name}: {e}")))?;
        }
    }
    Ok(wal)
}

/// A record's bytes as framed: the record, then its padding.
struct Frame {
    bytes: Vec<u8>,
    len: usize,
}

impl Frame {
    fn record(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// `<seq>-<index>.wal`, both 16 hex digits; concord's own segments (`<seq>.wal`), which may share a
/// `--wal-dir`, do not match.
fn is_etcd_wal(name: &str) -> bool {
    let hex = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
    name.strip_suffix(".wal").and_then(|n| n.split_once('-')).is_some_and(|(a, b)| hex(a) && hex(b))
}

fn apply(wal: &mut Wal, record: Record) -> Result<(), String> {
    let e = |e: prost::DecodeError| e.to_string();
    match record.kind {
        // The member's and cluster's ids: concord's member starts a new cluster of its own.
        METADATA => {}
        ENTRY => {
            let entry = Entry::decode(record.data.as_slice()).map_err(e)?;
            let keep = wal.entries.partition_point(|x| x.index < entry.index);
            wal.entries.truncate(keep);
            wal.entries.push(entry);
        }
        STATE => {
            let s = HardState::decode(record.data.as_slice()).map_err(e)?;
            // An empty hard state is written when nothing changed.
            if s != HardState::default() {
                wal.commit = s.commit;
            }
        }
        SNAPSHOT => {
            let s = Snapshot::decode(record.data.as_slice()).map_err(e)?;
            wal.entries.retain(|e| e.index > s.index);
            wal.commit = wal.commit.max(s.index);
            wal.snapshot = s.index;
        }
        kind => return Err(format!("a record of unknown type {kind}")),
    }
    Ok(())
}

/// The next frame and the offset of its bytes in the file, or `None` at the end of the file: its end,
/// zeros (the preallocated rest), or, in the last file, a frame cut short by a crash.
fn next_frame(r: &mut impl Read, offset: &mut u64, last: bool) -> io::Result<Option<(Frame, u64)>> {
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
    let at = *offset + 8;
    *offset = at + data.len() as u64;
    Ok(Some((Frame { bytes: data, len: bytes as usize }, at)))
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
        frame(&mut a, &mut crc, METADATA, vec![8, 7, 16, 9]);
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
        assert_eq!(wal.commit, 2);
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
        let file = dir.path().join("0000000000000000-0000000000000000.wal");
        fs::write(&file, &a[..torn]).unwrap();
        assert_eq!(read(dir.path()).unwrap().entries.len(), 1);
        // The last record's bytes zeroed (never written), or altered (damage etcd would refuse too).
        let mut zeroed = a.clone();
        zeroed[second + 8..].fill(0);
        fs::write(&file, &zeroed).unwrap();
        assert_eq!(read(dir.path()).unwrap().entries.len(), 1);
        let mut altered = a.clone();
        altered[second + 8 + 4] ^= 0x55;
        fs::write(&file, &altered).unwrap();
        assert!(read(dir.path()).is_err());

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
