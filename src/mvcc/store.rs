//! The store: the key index, the current and compacted revisions, and reads at any revision.

use std::collections::{BTreeMap, HashSet};

use super::backend::{Backend, Changes};
use super::etcd_record;
use super::key_index::{KeyIndex, KeyRev, RangeEnd};
use super::revision::Revision;
use super::MvccError;
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use crate::pb::mvccpb::{Event, KeyValue};

pub struct Store<B> {
    pub(super) index: KeyIndex,
    /// The revision of the last write; 1 for an empty store, as in etcd.
    pub(super) current: i64,
    pub(super) compacted: i64,
    pub(super) backend: B,
    /// Records written since the last [`Store::commit`]; reads look here first.
    pub(super) pending: BTreeMap<Revision, KeyValue>,
    pub(super) pending_deletes: Vec<Revision>,
}

impl<B: Backend> Store<B> {
    /// Opens a store over `backend`, rebuilding the key index from its records.
    pub fn open(backend: B, current: i64, compacted: i64) -> Result<Self, MvccError> {
        let mut store = Store {
            index: KeyIndex::default(),
            current,
            compacted,
            backend,
            pending: BTreeMap::new(),
            pending_deletes: Vec::new(),
        };
        store.rebuild(current, compacted)?;
        Ok(store)
    }

    /// Rebuilds the key index from the backend's records, at the given revisions (after the backend's
    /// records were replaced, e.g. by a snapshot).
    pub fn rebuild(&mut self, current: i64, compacted: i64) -> Result<(), MvccError> {
        let mut index = KeyIndex::default();
        let mut max_seen = 1;
        self.backend.for_each(&mut |rev, kv| {
            max_seen = max_seen.max(rev.main);
            index.put(
                &kv.key,
                KeyRev { mod_rev: rev, create_rev: kv.create_revision, version: kv.version, lease: kv.lease },
            );
        })?;
        // Records a compaction dropped may still be in the backend if its owner keeps them until some
        // later point (concord forgets them at its next checkpoint); compacting the rebuilt index again
        // finds them, and they go with the next commit.
        self.pending_deletes = if compacted > 0 { index.compact(compacted) } else { Vec::new() };
        self.pending.clear();
        self.index = index;
        self.current = current.max(max_seen);
        self.compacted = compacted;
        Ok(())
    }

    /// Records compaction dropped that the backend still holds until the next commit (after a rebuild):
    /// a copy of the backend's records must leave them out.
    pub fn dropped_records(&self) -> &[Revision] {
        &self.pending_deletes
    }

    pub fn current_revision(&self) -> i64 {
        self.current
    }

    /// Keys in the index, with or without a live version (etcd's `keys_total`).
    pub fn keys_total(&self) -> usize {
        self.index.len()
    }

    pub fn compact_revision(&self) -> i64 {
        self.compacted
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Number of keys with any retained history (live or not); a cheap size signal.
    pub fn indexed_keys(&self) -> usize {
        self.index.len()
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Hands the records written (and dropped) since the last commit to the backend. The owner calls it
    /// after a batch of writes; until then the store serves the new records from memory.
    pub fn commit(&mut self) -> Result<(), MvccError> {
        if self.pending.is_empty() && self.pending_deletes.is_empty() {
            return Ok(());
        }
        let puts = std::mem::take(&mut self.pending).into_iter().collect();
        let deletes = std::mem::take(&mut self.pending_deletes);
        self.backend.commit(Changes { puts, deletes })
    }

    pub(super) fn value_at(&self, rev: Revision) -> Result<bytes::Bytes, MvccError> {
        if let Some(kv) = self.pending.get(&rev) {
            return Ok(kv.value.clone());
        }
        match self.backend.get(rev)? {
            Some(kv) => Ok(kv.value),
            None => Err(MvccError::Backend(format!("record {rev} missing from the backend"))),
        }
    }

    pub(super) fn key_value(&self, key: &[u8], kr: &KeyRev, with_value: bool) -> Result<KeyValue, MvccError> {
        Ok(KeyValue {
            key: bytes::Bytes::copy_from_slice(key),
            create_revision: kr.create_rev,
            mod_revision: kr.mod_rev.main,
            version: kr.version,
            value: if with_value { self.value_at(kr.mod_rev)? } else { bytes::Bytes::new() },
            lease: kr.lease,
        })
    }

    /// Checks a read revision against history: 0 means "now".
    pub(super) fn read_revision(&self, requested: i64, now: i64) -> Result<i64, MvccError> {
        if requested > now {
            return Err(MvccError::FutureRev);
        }
        if requested <= 0 {
            return Ok(now);
        }
        if requested < self.compacted {
            return Err(MvccError::Compacted);
        }
        Ok(requested)
    }

    /// A Range request, served at `req.revision` (or the current revision).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.range_as_of(req, self.current, None)
    }

    /// The same Range, but its values are left to read without the store (and whatever lock guards it):
    /// the response has them empty, and the list says where each is. [`Store::fill`] reads them. A range
    /// over many keys then does not hold writes up while it reads their values, as etcd's concurrent
    /// read transactions do not.
    pub fn range_later(&self, req: &RangeRequest) -> Result<(RangeResponse, Later<B::Ref>), MvccError> {
        let mut later = Vec::new();
        let resp = self.range_as_of(req, self.current, Some(&mut later))?;
        Ok((resp, later))
    }

    /// Reads the values [`Store::range_later`] left out.
    pub fn fill(resp: &mut RangeResponse, later: Later<B::Ref>) -> Result<(), MvccError> {
        for (i, r) in later {
            let value = B::load(r)?.value;
            if let Some(kv) = resp.kvs.get_mut(i) {
                kv.value = value;
            }
        }
        Ok(())
    }

    /// A Range as seen by a transaction whose view is at revision `now`; with `later`, values are located,
    /// not read (see [`Store::range_later`]).
    pub(super) fn range_as_of(
        &self,
        req: &RangeRequest,
        now: i64,
        later: Option<&mut Later<B::Ref>>,
    ) -> Result<RangeResponse, MvccError> {
        crate::metrics::count(&crate::metrics::MVCC_RANGES);
        let rev = self.read_revision(req.revision, now)?;
        let mut hits: Vec<(&[u8], &KeyRev)> =
            self.index.range(&req.key, RangeEnd::from_request(&req.range_end), rev).collect();
        let count = hits.len() as i64;
        let header = Some(ResponseHeader { revision: now, ..Default::default() });
        if req.count_only {
            return Ok(RangeResponse { header, kvs: Vec::new(), more: false, count });
        }

        let filtered = req.max_mod_revision != 0
            || req.min_mod_revision != 0
            || req.max_create_revision != 0
            || req.min_create_revision != 0;
        if req.sort_order == SortOrder::None as i32 && !filtered && req.limit > 0 {
            // etcd fetches only `limit + 1` keys (in key order) when no sort order is given, then sorts
            // those by a non-key target: the same keys must come back.
            hits.truncate(req.limit as usize + 1);
        }
        // Filters, as etcd applies them: after the range, before sorting and the limit.
        hits.retain(|(_, kr)| {
            (req.max_mod_revision == 0 || kr.mod_rev.main <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kr.mod_rev.main >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kr.create_rev <= req.max_create_revision)
                && (req.min_create_revision == 0 || kr.create_rev >= req.min_create_revision)
        });

        let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
        let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
        if order == SortOrder::None && target != SortTarget::Key {
            order = SortOrder::Ascend;
        }
        // The index yields keys in ascending order already; sort only when something else is asked for.
        let sort_by_value = target == SortTarget::Value && order != SortOrder::None;
        let limit = if req.limit > 0 { req.limit as usize } else { usize::MAX };
        let mut kvs = Vec::with_capacity(hits.len().min(limit));
        let mut more = false;
        if sort_by_value {
            for (k, kr) in &hits {
                kvs.push(self.key_value(k, kr, true)?);
            }
            // Stable, and descending by comparator rather than by reversing, so equal values keep key order
            // as etcd's sort does for the small results where Go's sort is an insertion sort.
            if order == SortOrder::Descend {
                kvs.sort_by(|a, b| b.value.cmp(&a.value));
            } else {
                kvs.sort_by(|a, b| a.value.cmp(&b.value));
            }
            if kvs.len() > limit {
                kvs.truncate(limit);
                more = true;
            }
            if req.keys_only {
                kvs.iter_mut().for_each(|kv| kv.value.clear());
            }
        } else {
            match (order, target) {
                (SortOrder::None, _) | (SortOrder::Ascend, SortTarget::Key) => {}
                (SortOrder::Descend, SortTarget::Key) => hits.reverse(),
                (_, t) => {
                    let field = |kr: &KeyRev| match t {
                        SortTarget::Version => kr.version,
                        SortTarget::Create => kr.create_rev,
                        _ => kr.mod_rev.main,
                    };
                    if order == SortOrder::Descend {
                        hits.sort_by_key(|(_, kr)| std::cmp::Reverse(field(kr)));
                    } else {
                        hits.sort_by_key(|(_, kr)| field(kr));
                    }
                }
            }
            if hits.len() > limit {
                hits.truncate(limit);
                more = true;
            }
            match later {
                Some(later) if !req.keys_only => {
                    for (k, kr) in &hits {
                        let mut kv = self.key_value(k, kr, false)?;
                        if let Some(v) = self.pending.get(&kr.mod_rev) {
                            kv.value = v.value.clone();
                        } else {
                            let r = self.backend.locate(kr.mod_rev)?.ok_or_else(|| {
                                MvccError::Backend(format!("record {} missing from the backend", kr.mod_rev))
                            })?;
                            later.push((kvs.len(), r));
                        }
                        kvs.push(kv);
                    }
                }
                _ => {
                    for (k, kr) in &hits {
                        kvs.push(self.key_value(k, kr, !req.keys_only)?);
                    }
                }
            }
        }
        Ok(RangeResponse { header, kvs, more, count })
    }

    /// Every live key attached to a lease, with its lease (to rebuild the lease table on open).
    pub fn leased_keys(&self) -> Vec<(Vec<u8>, i64)> {
        self.index
            .range(b"", RangeEnd::Unbounded, self.current)
            .filter(|(_, kr)| kr.lease != 0)
            .map(|(k, kr)| (k.to_vec(), kr.lease))
            .collect()
    }

    /// etcd's `HashKV`: a checksum of the records up to `rev` (0: now), with the current and the compacted
    /// revision. Equal on every member, concord's or etcd's, with the same history; a mismatch means
    /// corruption.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), MvccError> {
        let mut h = self.hasher(rev)?;
        self.backend.for_each_between(1, h.rev, &mut |r, kv| {
            h.add(r, &kv);
            true
        })?;
        Ok(h.finish())
    }

    /// A [`KvHasher`] for `rev` (0: now), fixing which records it hashes. It needs the store only for
    /// this: the records can then be fed from a copy of the backend, without holding up writes.
    pub fn hasher(&self, rev: i64) -> Result<KvHasher, MvccError> {
        if rev > 0 && rev <= self.compacted {
            return Err(MvccError::Compacted);
        }
        if rev > self.current {
            return Err(MvccError::FutureRev);
        }
        let rev = if rev <= 0 { self.current } else { rev };
        // Of the records at or below the compacted revision etcd hashes only those a read at `rev` sees
        // (`kvindex.Keep(rev)`), or, when that is none, every one compaction kept.
        let mut below: HashSet<Revision> = self
            .index
            .range(b"", RangeEnd::Unbounded, rev)
            .map(|(_, kr)| kr.mod_rev)
            .filter(|r| r.main <= self.compacted)
            .collect();
        if self.index.range(b"", RangeEnd::Unbounded, rev).next().is_none() {
            below = self.index.revisions().filter(|r| r.main <= self.compacted).collect();
        }
        Ok(KvHasher {
            rev,
            current: self.current,
            compacted: self.compacted,
            below,
            crc: crc32c::crc32c(b"key"),
            buf: Vec::new(),
        })
    }

    /// The events of revisions `from..=to` in order (a watch's history), appended to `out`: at least
    /// `max_events` of them when there are that many, but never part of a revision's. Returns the last
    /// revision covered. Fails with `Compacted` if history before `from` is gone, as etcd's watch does
    /// when a watcher's start revision is below the compaction point.
    pub fn history(
        &self,
        from: i64,
        to: i64,
        max_events: usize,
        out: &mut Vec<Event>,
    ) -> Result<i64, MvccError> {
        if from < self.compacted {
            return Err(MvccError::Compacted);
        }
        let (start, mut last, mut full) = (out.len(), from - 1, false);
        self.backend.for_each_between(from, to, &mut |rev, kv| {
            if out.len() - start >= max_events && rev.main != last {
                full = true;
                return false;
            }
            last = rev.main;
            out.push(Event::of_record(kv));
            true
        })?;
        Ok(if full { last } else { to.max(from - 1) })
    }

    /// Compacts history at `rev`: every read at `rev` or later answers as before, earlier ones fail.
    pub fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        if rev <= self.compacted {
            return Err(MvccError::Compacted);
        }
        if rev > self.current {
            return Err(MvccError::FutureRev);
        }
        let dropped = self.index.compact(rev);
        for r in &dropped {
            self.pending.remove(r);
        }
        self.pending_deletes.extend(dropped);
        self.compacted = rev;
        Ok(())
    }
}

/// The values a [`Store::range_later`] response leaves out: the index of each in `kvs`, and where it is.
pub type Later<R> = Vec<(usize, R)>;

/// etcd's HashByRev: crc32c of the key bucket's name, then of each hashed record's key and value as etcd
/// stores them, in revision order.
pub struct KvHasher {
    /// Records above it are not hashed.
    pub rev: i64,
    current: i64,
    compacted: i64,
    /// The records at or below the compacted revision that are hashed.
    below: HashSet<Revision>,
    crc: u32,
    buf: Vec<u8>,
}

impl KvHasher {
    /// Takes the next record (in revision order); ignores those the hash leaves out.
    pub fn add(&mut self, r: Revision, kv: &KeyValue) {
        if r.main > self.rev || (r.main <= self.compacted && !self.below.contains(&r)) {
            return;
        }
        self.buf.clear();
        etcd_record::key(r, kv, &mut self.buf);
        etcd_record::value(kv, &mut self.buf);
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
    }

    /// The hash, the current revision and the compacted one, as HashKV answers.
    pub fn finish(self) -> (u32, i64, i64) {
        (self.crc, self.current, self.compacted)
    }
}
