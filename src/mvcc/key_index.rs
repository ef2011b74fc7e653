//! The in-memory index from a key to its history.
//!
//! etcd keeps only revisions in its tree index and fetches everything else from bbolt. We also keep each
//! revision's create revision, version and lease (32 bytes more per revision), so that counts, compares
//! on VERSION/CREATE/MOD/LEASE, `keys_only`-free filters and the bookkeeping of a put never touch the
//! disk. Only values live solely in the backend. Compaction keeps this small: after it, a live key holds
//! one entry.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::revision::Revision;

/// One change to a key. `version == 0` marks a deletion (a tombstone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRev {
    pub mod_rev: Revision,
    pub create_rev: i64,
    pub version: i64,
    pub lease: i64,
}

impl KeyRev {
    pub fn is_tombstone(&self) -> bool {
        self.version == 0
    }
}

/// The history of a single key, oldest first.
#[derive(Clone, Debug, Default)]
pub struct KeyHistory {
    revs: Vec<KeyRev>,
}

impl KeyHistory {
    /// The key as it was at `rev`, if it existed then.
    pub fn at(&self, rev: i64) -> Option<&KeyRev> {
        let idx = self.revs.partition_point(|r| r.mod_rev.main <= rev);
        let kr = self.revs.get(idx.checked_sub(1)?)?;
        (!kr.is_tombstone()).then_some(kr)
    }

    pub fn latest(&self) -> Option<&KeyRev> {
        self.revs.last().filter(|r| !r.is_tombstone())
    }

    fn push(&mut self, kr: KeyRev) {
        debug_assert!(self.revs.last().is_none_or(|l| l.mod_rev < kr.mod_rev));
        self.revs.push(kr);
    }

    /// Drops every change that no read at `rev` or later can see, reporting each dropped revision.
    /// Returns true when nothing is left.
    fn compact(&mut self, rev: i64, dropped: &mut Vec<Revision>) -> bool {
        let idx = self.revs.partition_point(|r| r.mod_rev.main <= rev);
        if idx == 0 {
            return false;
        }
        // Keep the newest change at or below `rev` unless it is a deletion: it is what a read at `rev` sees.
        let keep_from = if self.revs[idx - 1].is_tombstone() { idx } else { idx - 1 };
        dropped.extend(self.revs.drain(..keep_from).map(|r| r.mod_rev));
        self.revs.is_empty()
    }
}

/// All keys, ordered, so that ranges are a walk over a contiguous part of the map.
#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: BTreeMap<Vec<u8>, KeyHistory>,
}

impl KeyIndex {
    pub fn get(&self, key: &[u8]) -> Option<&KeyHistory> {
        self.keys.get(key)
    }

    pub fn put(&mut self, key: &[u8], kr: KeyRev) {
        match self.keys.get_mut(key) {
            Some(h) => h.push(kr),
            None => {
                let mut h = KeyHistory::default();
                h.push(kr);
                self.keys.insert(key.to_vec(), h);
            }
        }
    }

    /// Keys in `[key, end)` (or just `key` when `end` is `None`), with their state at `rev`. Keys that
    /// did not exist at `rev` are skipped.
    pub fn range<'a>(
        &'a self,
        key: &'a [u8],
        end: RangeEnd<'a>,
        rev: i64,
    ) -> impl Iterator<Item = (&'a [u8], &'a KeyRev)> + 'a {
        let upper = match end {
            RangeEnd::Single => Bound::Included(key),
            RangeEnd::Unbounded => Bound::Unbounded,
            RangeEnd::Before(e) => Bound::Excluded(e),
        };
        let empty = matches!(end, RangeEnd::Before(e) if e <= key);
        let iter = (!empty).then(|| self.keys.range::<[u8], _>((Bound::Included(key), upper)));
        iter.into_iter().flatten().filter_map(move |(k, h)| h.at(rev).map(|kr| (k.as_slice(), kr)))
    }

    /// Compacts every key's history at `rev`; returns the revisions whose records can be deleted.
    pub fn compact(&mut self, rev: i64) -> Vec<Revision> {
        let mut dropped = Vec::new();
        self.keys.retain(|_, h| !h.compact(rev, &mut dropped));
        dropped.sort_unstable();
        dropped
    }

    /// Every revision the index holds, key by key.
    pub fn revisions(&self) -> impl Iterator<Item = Revision> + '_ {
        self.keys.values().flat_map(|h| h.revs.iter().map(|r| r.mod_rev))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The end of a key range, decoded from etcd's `range_end` convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeEnd<'a> {
    /// Empty `range_end`: the single key.
    Single,
    /// `range_end == "\0"`: every key at or after `key`.
    Unbounded,
    /// Every key in `[key, end)`.
    Before(&'a [u8]),
}

impl<'a> RangeEnd<'a> {
    pub fn from_request(range_end: &'a [u8]) -> Self {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            e => RangeEnd::Before(e),
        }
    }

    /// Whether `k` lies in the range that starts at `key`.
    pub fn contains(&self, key: &[u8], k: &[u8]) -> bool {
        match self {
            RangeEnd::Single => k == key,
            RangeEnd::Unbounded => k >= key,
            RangeEnd::Before(e) => k >= key && k < *e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kr(main: i64, create: i64, version: i64) -> KeyRev {
        KeyRev { mod_rev: Revision::new(main, 0), create_rev: create, version, lease: 0 }
    }

    #[test]
    fn history_reads_see_the_state_at_each_revision() {
        let mut idx = KeyIndex::default();
        idx.put(b"a", kr(2, 2, 1));
        idx.put(b"a", kr(3, 2, 2));
        idx.put(b"a", kr(4, 0, 0)); // deleted
        idx.put(b"a", kr(6, 6, 1)); // re-created: version starts again
        let h = idx.get(b"a").unwrap();
        assert_eq!(h.at(1), None);
        assert_eq!(h.at(2).unwrap().version, 1);
        assert_eq!(h.at(3).unwrap().version, 2);
        assert_eq!(h.at(4), None);
        assert_eq!(h.at(5), None);
        assert_eq!(h.at(6).unwrap().create_rev, 6);
        assert_eq!(h.latest().unwrap().mod_rev.main, 6);
    }

    #[test]
    fn range_bounds_follow_etcd_conventions() {
        let mut idx = KeyIndex::default();
        for (i, k) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            idx.put(*k, kr(i as i64 + 2, i as i64 + 2, 1));
        }
        let keys = |key: &[u8], end: &[u8]| -> Vec<Vec<u8>> {
            idx.range(key, RangeEnd::from_request(end), 100).map(|(k, _)| k.to_vec()).collect()
        };
        assert_eq!(keys(b"b", b""), vec![b"b".to_vec()]);
        assert_eq!(keys(b"b", b"d"), vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(keys(b"b", b"\0"), vec![b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]);
        assert_eq!(keys(b"\0", b"\0").len(), 4);
        assert!(keys(b"c", b"a").is_empty(), "an end before the start is an empty range");
        assert!(keys(b"zz", b"").is_empty());
    }

    #[test]
    fn compaction_keeps_what_reads_at_or_after_it_can_see() {
        let mut idx = KeyIndex::default();
        idx.put(b"a", kr(2, 2, 1));
        idx.put(b"a", kr(3, 2, 2));
        idx.put(b"a", kr(5, 2, 3));
        idx.put(b"gone", KeyRev { mod_rev: Revision::new(2, 1), create_rev: 2, version: 1, lease: 0 });
        idx.put(b"gone", kr(4, 0, 0));
        let dropped = idx.compact(4);
        assert_eq!(dropped, vec![Revision::new(2, 0), Revision::new(2, 1), Revision::new(4, 0)]);
        assert!(idx.get(b"gone").is_none(), "a key deleted before the compaction point disappears");
        let h = idx.get(b"a").unwrap();
        assert_eq!(h.at(4).unwrap().version, 2, "the state at the compaction point stays readable");
        assert_eq!(h.at(5).unwrap().version, 3);
        assert_eq!(idx.len(), 1);
    }
}
