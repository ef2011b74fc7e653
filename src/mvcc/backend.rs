//! Where the MVCC store keeps its records: one per revision, holding the full `KeyValue`.
//!
//! The store collects the records of a batch of writes in memory and hands them to the backend as
//! [`Changes`] when its owner calls [`Store::commit`](super::Store::commit). Durability is the owner's
//! business (for concord, the Raft log and the state machine's checkpoints), which keeps this module free
//! of Raft and of any storage engine.

use std::collections::BTreeMap;

use super::revision::Revision;
use super::MvccError;
use crate::pb::mvccpb::KeyValue;

pub trait Backend {
    /// Where a record is, to be read without the store: see [`Store::range_later`](super::Store::range_later).
    type Ref: Send + 'static;

    /// The record written at `rev`, if it has not been compacted away.
    fn get(&self, rev: Revision) -> Result<Option<KeyValue>, MvccError>;

    /// Where the record written at `rev` is, if it has not been compacted away. The record stays readable
    /// through the reference whatever the backend does next.
    fn locate(&self, rev: Revision) -> Result<Option<Self::Ref>, MvccError>;

    /// Reads a record [`Backend::locate`] found.
    fn load(r: Self::Ref) -> Result<KeyValue, MvccError>;

    /// Every record in revision order; used to rebuild the key index on open.
    fn for_each(&self, f: &mut dyn FnMut(Revision, KeyValue)) -> Result<(), MvccError>;

    /// The records of main revisions `from..=to`, in revision order, until `f` returns false.
    fn for_each_between(
        &self,
        from: i64,
        to: i64,
        f: &mut dyn FnMut(Revision, KeyValue) -> bool,
    ) -> Result<(), MvccError>;

    /// Takes new records (in ascending revision order, above every record it holds) and forgets the ones
    /// compaction dropped. Records must be readable through [`Backend::get`] when this returns.
    fn commit(&mut self, changes: Changes) -> Result<(), MvccError>;
}

/// Records written and dropped since the last commit.
#[derive(Debug, Default)]
pub struct Changes {
    pub puts: Vec<(Revision, KeyValue)>,
    pub deletes: Vec<Revision>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

/// A backend in memory, for tests and for tools that need no durability.
#[derive(Debug, Default)]
pub struct MemBackend {
    records: BTreeMap<Revision, KeyValue>,
}

impl MemBackend {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

impl Backend for MemBackend {
    type Ref = KeyValue;

    fn get(&self, rev: Revision) -> Result<Option<KeyValue>, MvccError> {
        Ok(self.records.get(&rev).cloned())
    }

    fn locate(&self, rev: Revision) -> Result<Option<KeyValue>, MvccError> {
        self.get(rev)
    }

    fn load(kv: KeyValue) -> Result<KeyValue, MvccError> {
        Ok(kv)
    }

    fn for_each(&self, f: &mut dyn FnMut(Revision, KeyValue)) -> Result<(), MvccError> {
        for (rev, kv) in &self.records {
            f(*rev, kv.clone());
        }
        Ok(())
    }

    fn for_each_between(
        &self,
        from: i64,
        to: i64,
        f: &mut dyn FnMut(Revision, KeyValue) -> bool,
    ) -> Result<(), MvccError> {
        for (rev, kv) in self.records.range(Revision::new(from, 0)..Revision::new(to.saturating_add(1), 0)) {
            if !f(*rev, kv.clone()) {
                break;
            }
        }
        Ok(())
    }

    fn commit(&mut self, changes: Changes) -> Result<(), MvccError> {
        for (rev, kv) in changes.puts {
            self.records.insert(rev, kv);
        }
        for rev in changes.deletes {
            self.records.remove(&rev);
        }
        Ok(())
    }
}
