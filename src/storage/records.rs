//! The MVCC records: append-only segment files in apply order, and the location of every retained
//! revision in memory.
//!
//! Why not sled (measured, docs/benchmarks.md): compacting 290,000 records took a sled-backed member from
//! 65 MB to 700 MB of RSS, and its files kept growing under a put/delete/compact soak. Here a retained
//! revision costs 32 bytes of memory (its location), values live in the OS page cache, a compaction only
//! forgets locations, and space comes back a segment at a time: a segment that is mostly dead has its few
//! live records copied forward and is deleted.
//!
//! Layout in the directory:
//! - `<id:08x>.rec`: records `u32 len | u32 crc32 | i64 main | i64 sub | KeyValue (protobuf)`; `len` and
//!   the checksum cover everything after the 8-byte header; integers little-endian.
//! - `checkpoint`: `u32 len | u32 crc32 | u32 first | u32 active | u64 active_len | u32 n | n × u32
//!   segment ids | owner's bytes`,
//!   replaced atomically (write, fsync, rename, fsync the directory).
//!
//! Nothing is synced on the write path: the Raft log is the durability point. A checkpoint states which
//! prefix of the segments is durable and the owner's position (its applied log id) that prefix matches.
//! On open everything the checkpoint does not cover is cut off, and the owner replays its log from there.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;

use super::StorageError;
use crate::mvcc::{Backend, Changes, MvccError, Revision};
use crate::pb::mvccpb::KeyValue;

/// A segment is sealed once it holds this much; a commit never splits across segments.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Bytes written since the last checkpoint that make the next one due.
const CHECKPOINT_BYTES: u64 = 64 << 20;
const HEADER: usize = 8;
const REV: usize = 16;
const CHECKPOINT: &str = "checkpoint";

/// Where a record is: its segment, offset and length (header included).
#[derive(Clone, Copy, Debug)]
struct Loc {
    seg: u32,
    len: u32,
    off: u64,
}

impl Loc {
    /// The record's bytes, from `file` (its segment's).
    fn read(&self, file: &File) -> io::Result<Vec<u8>> {
        let mut rec = vec![0; self.len as usize];
        file.read_exact_at(&mut rec, self.off)?;
        Ok(rec)
    }
}

struct Segment {
    file: Arc<File>,
    len: u64,
    /// Bytes of records still referenced; the rest is reclaimable.
    live: u64,
}

pub struct RecordLog {
    dir: PathBuf,
    segments: BTreeMap<u32, Segment>,
    active: u32,
    /// Segments below this one belong to a state replaced by a snapshot install.
    first: u32,
    /// Every retained revision, in revision order.
    locs: Vec<(Revision, Loc)>,
    /// Segments written since the last checkpoint, with a write counter so that a checkpoint only marks
    /// clean what it synced.
    dirty: BTreeMap<u32, u64>,
    writes: u64,
    new_files: bool,
    written_since_checkpoint: u64,
    /// The segment being reclaimed and its live revisions not moved yet.
    victim: Option<(u32, Vec<Revision>)>,
    /// Set when something may have become reclaimable.
    reclaim_hint: bool,
    /// A defragmentation is under way: every segment with a dead record is reclaimed.
    defrag: bool,
    /// Reclaimed segments, deleted once a checkpoint covers the copies of their records.
    drained: Vec<u32>,
    buf: Vec<u8>,
}

fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08x}.rec"))
}

fn corrupt(what: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(what.to_string())
}

fn backend_err(e: impl std::fmt::Display) -> MvccError {
    MvccError::Backend(e.to_string())
}

pub fn encode_record(rev: Revision, kv: &KeyValue, out: &mut Vec<u8>) {
    let start = out.len();
    let body_len = REV + kv.encoded_len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&rev.main.to_le_bytes());
    out.extend_from_slice(&rev.sub.to_le_bytes());
    kv.encode_raw(out);
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_le_bytes(a)
}

/// Checks a record's checksum and returns its revision.
fn check_record(rec: &[u8]) -> Option<Revision> {
    if rec.len() < HEADER + REV || le_u32(rec) as usize != rec.len() - HEADER {
        return None;
    }
    if crc32fast::hash(&rec[HEADER..]) != le_u32(&rec[4..]) {
        return None;
    }
    Some(Revision::new(le_i64(&rec[HEADER..]), le_i64(&rec[HEADER + 8..])))
}

/// Reads one record from `r`: `Ok(None)` at a clean end.
fn read_record(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<Option<Revision>, StorageError> {
    buf.resize(HEADER, 0);
    match r.read_exact(&mut buf[..HEADER]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = le_u32(buf) as usize;
    buf.resize(HEADER + len, 0);
    r.read_exact(&mut buf[HEADER..]).map_err(|e| corrupt(format!("truncated record: {e}")))?;
    check_record(buf).map(Some).ok_or_else(|| corrupt("record with a bad checksum"))
}

struct CheckpointFile {
    first: u32,
    active: u32,
    active_len: u64,
    /// Every segment the checkpointed state needs: one missing on open is lost data, not a reclaimed
    /// segment.
    segments: Vec<u32>,
    meta: Vec<u8>,
}

impl CheckpointFile {
    fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(20 + 4 * self.segments.len() + self.meta.len());
        body.extend_from_slice(&self.first.to_le_bytes());
        body.extend_from_slice(&self.active.to_le_bytes());
        body.extend_from_slice(&self.active_len.to_le_bytes());
        body.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for id in &self.segments {
            body.extend_from_slice(&id.to_le_bytes());
        }
        body.extend_from_slice(&self.meta);
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn read(dir: &Path) -> Result<Option<CheckpointFile>, StorageError> {
        let data = match std::fs::read(dir.join(CHECKPOINT)) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let bad = || corrupt("checkpoint file is damaged");
        if data.len() < HEADER + 20 || le_u32(&data) as usize != data.len() - HEADER {
            return Err(bad());
        }
        let body = &data[HEADER..];
        if crc32fast::hash(body) != le_u32(&data[4..]) {
            return Err(bad());
        }
        let n = le_u32(&body[16..]) as usize;
        let meta_at = 20 + 4 * n;
        if body.len() < meta_at {
            return Err(bad());
        }
        Ok(Some(CheckpointFile {
            first: le_u32(body),
            active: le_u32(&body[4..]),
            active_len: le_i64(&body[8..]) as u64,
            segments: (0..n).map(|i| le_u32(&body[20 + 4 * i..])).collect(),
            meta: body[meta_at..].to_vec(),
        }))
    }
}

impl RecordLog {
    /// Opens (or creates) the records in `dir`; returns them with the owner's bytes of the last
    /// checkpoint (`None` for a new store).
    pub fn open(dir: &Path) -> Result<(RecordLog, Option<Vec<u8>>), StorageError> {
        std::fs::create_dir_all(dir)?;
        let checkpoint = CheckpointFile::read(dir)?;
        let (first, active, active_len) =
            checkpoint.as_ref().map_or((1, 1, 0), |c| (c.first, c.active, c.active_len));
        if let Some(c) = &checkpoint {
            if let Some(id) = c.segments.iter().find(|id| !segment_path(dir, **id).exists()) {
                return Err(corrupt(format!("segment {id:x}, named by the checkpoint, is missing")));
            }
        }
        let mut ids: Vec<u32> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| u32::from_str_radix(e.file_name().to_str()?.strip_suffix(".rec")?, 16).ok())
            .collect();
        ids.sort_unstable();
        let mut log = RecordLog {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            active,
            first,
            locs: Vec::new(),
            dirty: BTreeMap::new(),
            writes: 0,
            new_files: false,
            written_since_checkpoint: 0,
            victim: None,
            reclaim_hint: true,
            defrag: false,
            drained: Vec::new(),
            buf: Vec::new(),
        };
        let mut buf = Vec::new();
        for id in ids {
            let path = segment_path(dir, id);
            // Segments outside the checkpoint were written after it (or replaced by an install before it).
            if checkpoint.is_none() || id < first || id > active {
                std::fs::remove_file(&path)?;
                continue;
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let mut len = file.metadata()?.len();
            if id == active {
                if len < active_len {
                    return Err(corrupt(format!("segment {id:x} is shorter than its checkpoint")));
                }
                file.set_len(active_len)?;
                len = active_len;
            }
            let mut r = io::BufReader::with_capacity(1 << 20, (&file).take(len));
            let mut off = 0u64;
            while let Some(rev) = read_record(&mut r, &mut buf)
                .map_err(|e| corrupt(format!("segment {id:x} at offset {off}: {e}")))?
            {
                log.locs.push((rev, Loc { seg: id, len: buf.len() as u32, off }));
                off += buf.len() as u64;
            }
            log.segments.insert(id, Segment { file: Arc::new(file), len, live: 0 });
        }
        // A reclaimed segment whose deletion a crash interrupted holds copies of records that were moved
        // to a later segment: the later copy (the last after a stable sort) is the one kept.
        log.locs.sort_by_key(|(rev, _)| *rev);
        log.locs.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                *kept = *later;
            }
            same
        });
        for (_, loc) in &log.locs {
            if let Some(s) = log.segments.get_mut(&loc.seg) {
                s.live += u64::from(loc.len);
            }
        }
        if !log.segments.contains_key(&active) {
            log.create_segment(active)?;
        }
        Ok((log, checkpoint.map(|c| c.meta)))
    }

    fn create_segment(&mut self, id: u32) -> io::Result<()> {
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).open(segment_path(&self.dir, id))?;
        self.segments.insert(id, Segment { file: Arc::new(file), len: 0, live: 0 });
        self.active = id;
        self.new_files = true;
        Ok(())
    }

    /// Appends `buf` to the active segment (sealing it first if it is full); returns the offset.
    fn write(&mut self, buf: &[u8]) -> io::Result<u64> {
        let full = self
            .segments
            .get(&self.active)
            .is_none_or(|s| s.len > 0 && s.len + buf.len() as u64 > SEGMENT_BYTES);
        if full {
            self.create_segment(self.active + 1)?;
            self.reclaim_hint = true;
        }
        let seg = self.segments.get_mut(&self.active).ok_or_else(|| io::Error::other("no active segment"))?;
        seg.file.write_all_at(buf, seg.len)?;
        let at = seg.len;
        seg.len += buf.len() as u64;
        seg.live += buf.len() as u64;
        self.writes += 1;
        self.dirty.insert(self.active, self.writes);
        self.written_since_checkpoint += buf.len() as u64;
        Ok(at)
    }

    fn position(&self, rev: Revision) -> Result<usize, usize> {
        self.locs.binary_search_by_key(&rev, |(r, _)| *r)
    }

    fn segment_file(&self, seg: u32) -> io::Result<&Arc<File>> {
        self.segments
            .get(&seg)
            .map(|s| &s.file)
            .ok_or_else(|| io::Error::other(format!("segment {seg:x} gone")))
    }

    fn read_raw(&self, loc: Loc) -> io::Result<Vec<u8>> {
        loc.read(self.segment_file(loc.seg)?)
    }

    /// Forgets `revs` (sorted), which compaction dropped: one pass over the locations.
    fn forget(&mut self, revs: &[Revision]) {
        let mut gone = revs.iter().peekable();
        let segments = &mut self.segments;
        self.locs.retain(|(rev, loc)| {
            while gone.next_if(|g| *g < rev).is_some() {}
            if gone.next_if(|g| *g == rev).is_none() {
                return true;
            }
            if let Some(s) = segments.get_mut(&loc.seg) {
                s.live -= u64::from(loc.len);
            }
            false
        });
        self.reclaim_hint = true;
    }

    /// Whether [`RecordLog::reclaim_step`] or a checkpoint has work to do.
    pub fn maintenance_due(&self) -> bool {
        self.reclaim_hint || self.victim.is_some() || self.checkpoint_due()
    }

    /// Whether a checkpoint would free space or bound the work of a restart.
    pub fn checkpoint_due(&self) -> bool {
        !self.drained.is_empty() || self.written_since_checkpoint >= CHECKPOINT_BYTES
    }

    /// Moves up to `budget` live records out of the emptiest sealed segment that is at least half dead.
    /// Returns whether more work remains. Each step is short, so that the caller can hold the store's
    /// lock for it without stalling reads and applies for long.
    pub fn reclaim_step(&mut self, budget: usize) -> Result<bool, StorageError> {
        if self.victim.is_none() {
            let candidate = self
                .segments
                .iter()
                .filter(|(id, s)| {
                    **id != self.active && (s.live * 2 <= s.len || (self.defrag && s.live < s.len))
                })
                .min_by_key(|(_, s)| s.live)
                .map(|(id, _)| *id);
            let Some(id) = candidate else {
                self.reclaim_hint = false;
                self.defrag = false;
                return Ok(false);
            };
            let revs = self.locs.iter().filter(|(_, l)| l.seg == id).map(|(r, _)| *r).rev().collect();
            self.victim = Some((id, revs));
        }
        let Some((id, mut pending)) = self.victim.take() else { return Ok(false) };
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut moved = Vec::new();
        for _ in 0..budget {
            let Some(rev) = pending.pop() else { break };
            // Compaction may have dropped it since the victim was chosen.
            let Ok(i) = self.position(rev) else { continue };
            let loc = self.locs[i].1;
            if loc.seg != id {
                continue;
            }
            moved.push((i, buf.len() as u64, loc.len));
            buf.extend_from_slice(&self.read_raw(loc)?);
        }
        if !buf.is_empty() {
            let at = self.write(&buf)?;
            for (i, start, len) in moved {
                self.locs[i].1 = Loc { seg: self.active, len, off: at + start };
                if let Some(s) = self.segments.get_mut(&id) {
                    s.live -= u64::from(len);
                }
            }
        }
        self.buf = buf;
        if pending.is_empty() {
            self.segments.remove(&id);
            self.drained.push(id);
            return Ok(true);
        }
        self.victim = Some((id, pending));
        Ok(true)
    }

    /// Starts a defragmentation: the active segment is sealed if it holds dead records, and every
    /// segment with a dead record becomes reclaimable, until none is left.
    pub fn start_defrag(&mut self) -> Result<(), StorageError> {
        if self.segments.get(&self.active).is_some_and(|s| s.live < s.len) {
            self.create_segment(self.active + 1)?;
        }
        self.defrag = true;
        Ok(())
    }

    /// Captures what a checkpoint must make durable, with the owner's `meta` describing this exact state.
    /// The slow part, [`SyncPoint::complete`], runs without the caller's locks; checkpoints must
    /// complete in the order they were captured.
    pub fn sync_point(&mut self, meta: Vec<u8>) -> SyncPoint {
        let files = self
            .dirty
            .iter()
            .filter_map(|(id, w)| Some((*id, *w, self.segments.get(id)?.file.clone())))
            .collect();
        let active_len = self.segments.get(&self.active).map_or(0, |s| s.len);
        SyncPoint {
            dir: self.dir.clone(),
            files,
            new_files: self.new_files,
            checkpoint: CheckpointFile {
                first: self.first,
                active: self.active,
                active_len,
                segments: self.segments.keys().copied().collect(),
                meta,
            }
            .encode(),
            drained: self.drained.clone(),
            written: self.written_since_checkpoint,
        }
    }

    /// Records that `point` completed: what it synced is clean, what it deleted is gone.
    pub fn synced(&mut self, point: &SyncPoint) {
        for (id, w, _) in &point.files {
            if self.dirty.get(id) == Some(w) {
                self.dirty.remove(id);
            }
        }
        if point.new_files {
            self.new_files = self.dirty.keys().any(|id| !point.files.iter().any(|(f, _, _)| f == id));
        }
        self.drained.retain(|id| !point.drained.contains(id));
        self.written_since_checkpoint = self.written_since_checkpoint.saturating_sub(point.written);
    }

    /// Replaces every record with those read from `r` (the record format above, in revision order), in
    /// new segments; the old ones go with the next checkpoint, which makes the replacement durable.
    pub fn replace(&mut self, r: &mut impl Read) -> Result<(), StorageError> {
        let old: Vec<u32> = self.segments.keys().copied().collect();
        let next = self.active + 1;
        self.create_segment(next)?;
        self.first = next;
        for id in old {
            self.segments.remove(&id);
            self.drained.push(id);
        }
        self.locs.clear();
        self.victim = None;
        let mut rec = Vec::new();
        let mut batch = Vec::new();
        let mut revs: Vec<(Revision, u64, u32)> = Vec::new();
        loop {
            let rev = read_record(r, &mut rec)?;
            if let Some(rev) = rev {
                if revs
                    .last()
                    .map(|(r, _, _)| *r)
                    .or(self.locs.last().map(|(r, _)| *r))
                    .is_some_and(|last| rev <= last)
                {
                    return Err(corrupt("snapshot records out of revision order"));
                }
                revs.push((rev, batch.len() as u64, rec.len() as u32));
                batch.extend_from_slice(&rec);
            }
            if (rev.is_none() && !batch.is_empty()) || batch.len() >= 1 << 20 {
                let at = self.write(&batch)?;
                let seg = self.active;
                self.locs
                    .extend(revs.drain(..).map(|(rev, off, len)| (rev, Loc { seg, len, off: at + off })));
                batch.clear();
            }
            if rev.is_none() {
                return Ok(());
            }
        }
    }

    /// A consistent copy of the locations, holding the files open: it can be read without the store's
    /// lock, since neither compaction nor reclaiming can take the records away from under it.
    pub fn view(&self) -> RecordsView {
        RecordsView {
            locs: self.locs.iter().map(|(_, l)| *l).collect(),
            files: self.segments.iter().map(|(id, s)| (*id, s.file.clone())).collect(),
        }
    }

    /// Bytes in segment files, and the part of them still referenced.
    pub fn size(&self) -> (u64, u64) {
        self.segments.values().fold((0, 0), |(len, live), s| (len + s.len, live + s.live))
    }

    pub fn len(&self) -> usize {
        self.locs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locs.is_empty()
    }
}

impl RecordLog {
    /// Reads and checks the record of `rev` at `loc`.
    fn record(&self, rev: Revision, loc: Loc) -> Result<KeyValue, MvccError> {
        let rec = self.read_raw(loc).map_err(backend_err)?;
        decode_checked(rec, rev)
    }
}

fn decode_checked(rec: Vec<u8>, rev: Revision) -> Result<KeyValue, MvccError> {
    if check_record(&rec) != Some(rev) {
        return Err(backend_err(format!("record {rev} is damaged")));
    }
    // Decoding from `Bytes` makes the key and value slices of the one buffer read, not copies.
    KeyValue::decode(bytes::Bytes::from(rec).slice(HEADER + REV..)).map_err(backend_err)
}

/// A record's place, with its segment file held open: segments are append-only and a reclaimed one is
/// only unlinked, so the record can be read after the store's lock is released.
pub struct RecordRef {
    file: Arc<File>,
    rev: Revision,
    loc: Loc,
}

impl Backend for RecordLog {
    type Ref = RecordRef;

    fn get(&self, rev: Revision) -> Result<Option<KeyValue>, MvccError> {
        let Ok(i) = self.position(rev) else { return Ok(None) };
        self.record(rev, self.locs[i].1).map(Some)
    }

    fn locate(&self, rev: Revision) -> Result<Option<RecordRef>, MvccError> {
        let Ok(i) = self.position(rev) else { return Ok(None) };
        let loc = self.locs[i].1;
        let file = self.segment_file(loc.seg).map_err(backend_err)?.clone();
        Ok(Some(RecordRef { file, rev, loc }))
    }

    fn load(r: RecordRef) -> Result<KeyValue, MvccError> {
        decode_checked(r.loc.read(&r.file).map_err(backend_err)?, r.rev)
    }

    fn for_each(&self, f: &mut dyn FnMut(Revision, KeyValue)) -> Result<(), MvccError> {
        for (rev, loc) in &self.locs {
            f(*rev, self.record(*rev, *loc)?);
        }
        Ok(())
    }

    fn for_each_between(
        &self,
        from: i64,
        to: i64,
        f: &mut dyn FnMut(Revision, KeyValue) -> bool,
    ) -> Result<(), MvccError> {
        let start = self.locs.partition_point(|(r, _)| r.main < from);
        for (rev, loc) in self.locs[start..].iter().take_while(|(r, _)| r.main <= to) {
            if !f(*rev, self.record(*rev, *loc)?) {
                break;
            }
        }
        Ok(())
    }

    fn commit(&mut self, changes: Changes) -> Result<(), MvccError> {
        if !changes.puts.is_empty() {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            let mut at = Vec::with_capacity(changes.puts.len());
            for (rev, kv) in &changes.puts {
                let start = buf.len();
                encode_record(*rev, kv, &mut buf);
                at.push((*rev, start as u64, (buf.len() - start) as u32));
            }
            let off = self.write(&buf).map_err(backend_err)?;
            self.buf = buf;
            let seg = self.active;
            for (rev, start, len) in at {
                let loc = Loc { seg, len, off: off + start };
                match self.locs.last() {
                    Some((last, _)) if *last >= rev => {
                        return Err(backend_err(format!("record {rev} written after {last}")));
                    }
                    _ => self.locs.push((rev, loc)),
                }
            }
        }
        if !changes.deletes.is_empty() {
            let mut deletes = changes.deletes;
            deletes.sort_unstable();
            self.forget(&deletes);
        }
        Ok(())
    }
}

/// The durable half of a checkpoint, done without locks: sync the written segments, replace the
/// checkpoint file, delete reclaimed segments.
pub struct SyncPoint {
    dir: PathBuf,
    files: Vec<(u32, u64, Arc<File>)>,
    new_files: bool,
    checkpoint: Vec<u8>,
    drained: Vec<u32>,
    written: u64,
}

impl SyncPoint {
    pub fn complete(&self) -> io::Result<()> {
        crate::metrics::BACKEND_COMMIT.time(|| self.sync())
    }

    fn sync(&self) -> io::Result<()> {
        for (_, _, f) in &self.files {
            f.sync_data()?;
        }
        if self.new_files {
            super::sync_dir(&self.dir)?;
        }
        let tmp = self.dir.join("checkpoint.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&self.checkpoint)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(CHECKPOINT))?;
        super::sync_dir(&self.dir)?;
        for id in &self.drained {
            match std::fs::remove_file(segment_path(&self.dir, *id)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// See [`RecordLog::view`].
pub struct RecordsView {
    locs: Vec<Loc>,
    files: BTreeMap<u32, Arc<File>>,
}

impl RecordsView {
    /// Writes every record, in revision order and in the segment format, to `w`.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        self.for_each_run(&mut |run| w.write_all(run))
    }

    /// Passes every record, in revision order, to `f`.
    pub fn for_each(&self, f: &mut dyn FnMut(Revision, KeyValue) -> io::Result<()>) -> io::Result<()> {
        self.for_each_run(&mut |mut run| {
            while !run.is_empty() {
                let len = HEADER + le_u32(run) as usize;
                let rec = run.get(..len).ok_or_else(|| io::Error::other(corrupt("truncated record")))?;
                let rev = check_record(rec)
                    .ok_or_else(|| io::Error::other(corrupt("record with a bad checksum")))?;
                let kv = KeyValue::decode(&rec[HEADER + REV..]).map_err(io::Error::other)?;
                f(rev, kv)?;
                run = &run[len..];
            }
            Ok(())
        })
    }

    /// Reads the records in runs of whole records, each passed to `f`.
    fn for_each_run(&self, f: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut i = 0;
        while i < self.locs.len() {
            // Records stored next to each other are read together.
            let start = self.locs[i];
            let mut end = start.off + u64::from(start.len);
            let mut j = i + 1;
            while j < self.locs.len()
                && self.locs[j].seg == start.seg
                && self.locs[j].off == end
                && end - start.off < 1 << 20
            {
                end += u64::from(self.locs[j].len);
                j += 1;
            }
            let file =
                self.files.get(&start.seg).ok_or_else(|| io::Error::other("segment missing from view"))?;
            buf.resize((end - start.off) as usize, 0);
            file.read_exact_at(&mut buf, start.off)?;
            f(&buf)?;
            i = j;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, rev: i64, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_string().into(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            value: value.to_string().into(),
            lease: 0,
        }
    }

    fn put(log: &mut RecordLog, revs: std::ops::Range<i64>, value: &str) {
        let puts = revs.map(|r| (Revision::new(r, 0), kv(&format!("k{r}"), r, value))).collect();
        log.commit(Changes { puts, deletes: vec![] }).unwrap();
    }

    fn checkpoint(log: &mut RecordLog, meta: &[u8]) {
        let p = log.sync_point(meta.to_vec());
        p.complete().unwrap();
        log.synced(&p);
    }

    fn revs(log: &RecordLog) -> Vec<i64> {
        let mut out = Vec::new();
        log.for_each(&mut |r, _| out.push(r.main)).unwrap();
        out
    }

    #[test]
    fn reopen_keeps_the_checkpoint_and_cuts_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, meta) = RecordLog::open(dir.path()).unwrap();
        assert!(meta.is_none());
        put(&mut log, 2..5, "a");
        checkpoint(&mut log, b"at 4");
        put(&mut log, 5..7, "b");
        drop(log);
        let (log, meta) = RecordLog::open(dir.path()).unwrap();
        assert_eq!(meta.as_deref(), Some(&b"at 4"[..]));
        assert_eq!(revs(&log), vec![2, 3, 4]);
        assert_eq!(log.get(Revision::new(3, 0)).unwrap().unwrap().value, &b"a"[..]);
        assert_eq!(log.get(Revision::new(5, 0)).unwrap(), None);
    }

    #[test]
    fn a_missing_checkpointed_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = RecordLog::open(dir.path()).unwrap();
        put(&mut log, 2..5, "a");
        checkpoint(&mut log, b"");
        drop(log);
        std::fs::remove_file(segment_path(dir.path(), 1)).unwrap();
        assert!(matches!(RecordLog::open(dir.path()), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn no_checkpoint_means_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = RecordLog::open(dir.path()).unwrap();
        put(&mut log, 2..5, "a");
        drop(log);
        let (log, meta) = RecordLog::open(dir.path()).unwrap();
        assert!(meta.is_none() && log.is_empty());
    }

    #[test]
    fn a_damaged_record_under_the_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = RecordLog::open(dir.path()).unwrap();
        put(&mut log, 2..5, "value");
        checkpoint(&mut log, b"");
        drop(log);
        let path = segment_path(dir.path(), 1);
        let mut data = std::fs::read(&path).unwrap();
        let n = data.len();
        data[n - 2] ^= 0xff;
        std::fs::write(&path, data).unwrap();
        assert!(matches!(RecordLog::open(dir.path()), Err(StorageError::Corrupt(_))));
    }

    /// Writes three segments' worth of 64 KiB records from revision 2; returns the value and the first
    /// revision not written.
    fn three_segments(log: &mut RecordLog) -> (String, i64) {
        let big = "x".repeat(64 << 10);
        let n = (3 * SEGMENT_BYTES / (64 << 10)) as i64;
        for r in 2..n {
            put(log, r..r + 1, &big);
        }
        (big, n)
    }

    #[test]
    fn compaction_and_reclaiming_give_space_back_and_keep_live_records() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = RecordLog::open(dir.path()).unwrap();
        // Three segments' worth of records, then all but every hundredth dropped.
        let (big, n) = three_segments(&mut log);
        let dropped: Vec<Revision> = (2..n).filter(|r| r % 100 != 0).map(|r| Revision::new(r, 0)).collect();
        log.commit(Changes { puts: vec![], deletes: dropped }).unwrap();
        let before = log.size().0;
        while log.reclaim_step(16).unwrap() {}
        assert!(log.checkpoint_due());
        checkpoint(&mut log, b"reclaimed");
        let (len, live) = log.size();
        assert!(len < before / 10, "{len} of {before} left");
        // Only the active segment (never reclaimed while written to) may hold dead records.
        assert!(live * 2 >= len, "{live} of {len} live");
        let kept: Vec<i64> = (2..n).filter(|r| r % 100 == 0).collect();
        assert_eq!(revs(&log), kept);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files <= 3, "{files} files left");
        drop(log);
        // Dead records in the active segment come back (the store compacts them again on open).
        let (log, _) = RecordLog::open(dir.path()).unwrap();
        let r = revs(&log);
        assert!(kept.iter().all(|k| r.contains(k)) && r.len() < kept.len() + 100, "{r:?}");
        assert_eq!(log.get(Revision::new(100, 0)).unwrap().unwrap().value, big.as_bytes());
    }

    #[test]
    fn a_located_record_stays_readable_after_its_segment_is_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = RecordLog::open(dir.path()).unwrap();
        let (big, n) = three_segments(&mut log);
        // A range found the record under the store's lock; compaction and reclaiming run before it reads.
        let found = log.locate(Revision::new(2, 0)).unwrap().expect("record 2");
        let dropped: Vec<Revision> = (2..n).map(|r| Revision::new(r, 0)).collect();
        log.commit(Changes { puts: vec![], deletes: dropped }).unwrap();
        while log.reclaim_step(16).unwrap() {}
        checkpoint(&mut log, b"reclaimed");
        assert!(!segment_path(dir.path(), 1).exists(), "the record's segment is gone");
        assert_eq!(log.get(Revision::new(2, 0)).unwrap(), None);
        assert_eq!(RecordLog::load(found).unwrap(), kv("k2", 2, &big));
    }

    #[test]
    fn a_crash_before_deleting_a_reclaimed_segment_keeps_one_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = RecordLog::open(dir.path()).unwrap();
        let big = "y".repeat(1 << 20);
        for r in 2..70 {
            put(&mut log, r..r + 1, &big);
        }
        let dropped: Vec<Revision> = (2..60).map(|r| Revision::new(r, 0)).collect();
        log.commit(Changes { puts: vec![], deletes: dropped }).unwrap();
        while log.reclaim_step(4).unwrap() {}
        // The checkpoint lands, the deletion does not.
        let mut p = log.sync_point(b"m".to_vec());
        p.drained.clear();
        p.complete().unwrap();
        drop(log);
        let (log, _) = RecordLog::open(dir.path()).unwrap();
        // The surviving segment brings back the dropped records (the store compacts them again on open),
        // and the copies of the live ones are read once.
        let r = revs(&log);
        assert!(r.len() > 10 && r.windows(2).all(|w| w[0] < w[1]), "{r:?}");
        assert!((60..70).all(|x| r.contains(&x)));
        assert_eq!(log.get(Revision::new(65, 0)).unwrap().unwrap().value, big.as_bytes());
    }

    #[test]
    fn replace_and_view_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, _) = RecordLog::open(&dir.path().join("a")).unwrap();
        put(&mut a, 2..50, "v");
        a.commit(Changes { puts: vec![], deletes: vec![Revision::new(7, 0)] }).unwrap();
        let mut bytes = Vec::new();
        a.view().write_to(&mut bytes).unwrap();

        let (mut b, _) = RecordLog::open(&dir.path().join("b")).unwrap();
        put(&mut b, 2..1000, "old");
        checkpoint(&mut b, b"old");
        b.replace(&mut &bytes[..]).unwrap();
        checkpoint(&mut b, b"new");
        assert_eq!(revs(&b), revs(&a));
        drop(b);
        let (b, meta) = RecordLog::open(&dir.path().join("b")).unwrap();
        assert_eq!(meta.as_deref(), Some(&b"new"[..]));
        assert_eq!(revs(&b), revs(&a));
        assert_eq!(b.get(Revision::new(9, 0)).unwrap().unwrap().value, &b"v"[..]);

        let mut damaged = bytes.clone();
        damaged[20] ^= 1;
        assert!(b_replace_fails(&dir.path().join("c"), &damaged));
        assert!(b_replace_fails(&dir.path().join("d"), &bytes[..bytes.len() - 3]));
    }

    fn b_replace_fails(dir: &Path, bytes: &[u8]) -> bool {
        let (mut log, _) = RecordLog::open(dir).unwrap();
        log.replace(&mut &bytes[..]).is_err()
    }
}
