//! Writes: Put, DeleteRange and Txn, each one revision, with etcd's compare and check rules.

use super::backend::Backend;
use super::key_index::{KeyRev, RangeEnd};
use super::revision::Revision;
use super::store::Store;
use super::MvccError;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::response_op::Response as OpResponse;
use crate::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::pb::mvccpb::{event::EventType, Event, KeyValue};

/// Answers whether a lease exists; the store itself knows nothing of leases.
pub type LeaseCheck<'a> = &'a dyn Fn(i64) -> bool;

impl Event {
    /// The event a stored record stands for: a tombstone (version 0) is a deletion, whose key-value
    /// carries only the key and the revision, as in etcd.
    pub fn of_record(kv: KeyValue) -> Event {
        let kind = if kv.version == 0 { EventType::Delete } else { EventType::Put };
        Event { r#type: kind as i32, kv: Some(kv), prev_kv: None }
    }
}

/// The result of one write request: its response and the events it produced, in order.
#[derive(Debug)]
pub struct Applied<T> {
    pub response: T,
    pub events: Vec<Event>,
}

/// One write request in progress. Every change it makes gets revision `current + 1` with increasing sub
/// revisions; the store's revision moves only if at least one change was made, as in etcd.
pub struct WriteTxn<'a, B> {
    store: &'a mut Store<B>,
    begin: i64,
    events: Vec<Event>,
}

impl<'a, B: Backend> WriteTxn<'a, B> {
    fn new(store: &'a mut Store<B>) -> Self {
        let begin = store.current;
        WriteTxn { store, begin, events: Vec::new() }
    }

    fn rev(&self) -> i64 {
        self.begin + 1
    }

    /// The revision this transaction's reads see: its own writes included.
    fn view(&self) -> i64 {
        if self.events.is_empty() {
            self.begin
        } else {
            self.rev()
        }
    }

    fn next_revision(&self) -> Revision {
        Revision::new(self.rev(), self.events.len() as i64)
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.store.range_as_of(req, self.view(), None)
    }

    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        crate::metrics::count(&crate::metrics::MVCC_PUTS);
        let view = self.view();
        let prev = self.store.index.get(&req.key).and_then(|h| h.at(view)).copied();
        let prev_kv = match (&prev, req.prev_kv || req.ignore_value) {
            (Some(kr), true) => Some(self.store.key_value(&req.key, kr, true)?),
            _ => None,
        };
        let rev = self.next_revision();
        let value = match (&prev_kv, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone().into(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let kr = KeyRev {
            mod_rev: rev,
            create_rev: prev.map_or(rev.main, |p| p.create_rev),
            version: prev.map_or(1, |p| p.version + 1),
            lease,
        };
        let kv = KeyValue {
            key: req.key.clone().into(),
            create_revision: kr.create_rev,
            mod_revision: rev.main,
            version: kr.version,
            value,
            lease,
        };
        self.store.index.put(&req.key, kr);
        self.store.pending.insert(rev, kv.clone());
        self.events.push(Event::of_record(kv));
        Ok(PutResponse {
            header: Some(ResponseHeader { revision: self.rev(), ..Default::default() }),
            prev_kv: if req.prev_kv { prev_kv } else { None },
        })
    }

    fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        crate::metrics::count(&crate::metrics::MVCC_DELETES);
        let view = self.view();
        let victims: Vec<(Vec<u8>, KeyRev)> = self
            .store
            .index
            .range(&req.key, RangeEnd::from_request(&req.range_end), view)
            .map(|(k, kr)| (k.to_vec(), *kr))
            .collect();
        let mut prev_kvs = Vec::new();
        for (key, kr) in &victims {
            if req.prev_kv {
                prev_kvs.push(self.store.key_value(key, kr, true)?);
            }
            let rev = self.next_revision();
            let tombstone =
                KeyValue { key: key.clone().into(), mod_revision: rev.main, ..Default::default() };
            self.store.index.put(key, KeyRev { mod_rev: rev, create_rev: 0, version: 0, lease: 0 });
            self.store.pending.insert(rev, tombstone.clone());
            self.events.push(Event::of_record(tombstone));
        }
        Ok(DeleteRangeResponse {
            header: Some(ResponseHeader { revision: self.view(), ..Default::default() }),
            deleted: victims.len() as i64,
            prev_kvs,
        })
    }

    fn end(self) -> Vec<Event> {
        if !self.events.is_empty() {
            self.store.current = self.begin + 1;
        }
        self.events
    }
}

impl<B: Backend> Store<B> {
    pub fn put(&mut self, req: &PutRequest, leases: LeaseCheck) -> Result<Applied<PutResponse>, MvccError> {
        // A lone Put checks the lease before the key (etcd's applier); a put in a Txn the other way round.
        if req.lease != 0 && !leases(req.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        self.check_put(req, self.current, leases)?;
        let mut txn = WriteTxn::new(self);
        let response = txn.put(req)?;
        Ok(Applied { response, events: txn.end() })
    }

    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<Applied<DeleteRangeResponse>, MvccError> {
        let mut txn = WriteTxn::new(self);
        let mut response = txn.delete_range(req)?;
        let events = txn.end();
        response.header = Some(ResponseHeader { revision: self.current, ..Default::default() });
        Ok(Applied { response, events })
    }

    /// A Txn with writes. The path through nested transactions is decided by evaluating every compare
    /// against the state before the transaction (as etcd does), then every op on that path is checked, and
    /// only then is anything executed: a failing check leaves no trace.
    pub fn txn(&mut self, req: &TxnRequest, leases: LeaseCheck) -> Result<Applied<TxnResponse>, MvccError> {
        let now = self.current;
        let path = self.txn_path(req, now)?;
        self.check_path(req, &path, now, Some(leases))?;
        let mut txn = WriteTxn::new(self);
        let mut response = exec_txn(&mut txn, req, &mut path.iter().copied())?;
        count_txn(&response);
        let events = txn.end();
        response.header = Some(ResponseHeader { revision: self.current, ..Default::default() });
        Ok(Applied { response, events })
    }

    /// A Txn that only reads: served from the current state without going through the write path.
    pub fn txn_read(&self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let now = self.current;
        let path = self.txn_path(req, now)?;
        self.check_path(req, &path, now, None)?;
        let mut view = ReadView { store: self, now };
        let mut response = exec_txn(&mut view, req, &mut path.iter().copied())?;
        count_txn(&response);
        response.header = Some(ResponseHeader { revision: now, ..Default::default() });
        Ok(response)
    }

    fn check_put(&self, req: &PutRequest, now: i64, leases: LeaseCheck) -> Result<(), MvccError> {
        if (req.ignore_value || req.ignore_lease)
            && self.index.get(&req.key).and_then(|h| h.at(now)).is_none()
        {
            return Err(MvccError::KeyNotFound);
        }
        if req.lease != 0 && !leases(req.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        Ok(())
    }

    /// Which branch each (nested) transaction takes, depth first, like etcd's `compareToPath`.
    fn txn_path(&self, req: &TxnRequest, now: i64) -> Result<Vec<bool>, MvccError> {
        let mut path = Vec::new();
        self.txn_path_into(req, now, &mut path)?;
        Ok(path)
    }

    fn txn_path_into(&self, req: &TxnRequest, now: i64, path: &mut Vec<bool>) -> Result<(), MvccError> {
        let mut ok = true;
        for c in &req.compare {
            if !self.compare(c, now)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        for op in if ok { &req.success } else { &req.failure } {
            if let Some(Op::RequestTxn(t)) = &op.request {
                self.txn_path_into(t, now, path)?;
            }
        }
        Ok(())
    }

    /// etcd's `checkRequests`, run once per kind of check over the ops on the taken path: first every put
    /// (writes only), then every range, so that the same request fails with the same error as on etcd.
    fn check_path(
        &self,
        req: &TxnRequest,
        path: &[bool],
        now: i64,
        leases: Option<LeaseCheck>,
    ) -> Result<(), MvccError> {
        if let Some(leases) = leases {
            self.check_ops(req, &mut path.iter().copied(), &mut |op| match op {
                Op::RequestPut(p) => self.check_put(p, now, leases),
                _ => Ok(()),
            })?;
        }
        self.check_ops(req, &mut path.iter().copied(), &mut |op| match op {
            Op::RequestRange(r) if r.revision > now => Err(MvccError::FutureRev),
            Op::RequestRange(r) if r.revision != 0 && r.revision < self.compacted => {
                Err(MvccError::Compacted)
            }
            _ => Ok(()),
        })
    }

    fn check_ops(
        &self,
        req: &TxnRequest,
        path: &mut impl Iterator<Item = bool>,
        check: &mut impl FnMut(&Op) -> Result<(), MvccError>,
    ) -> Result<(), MvccError> {
        let ops = if path.next().unwrap_or(false) { &req.success } else { &req.failure };
        for op in ops.iter().filter_map(|op| op.request.as_ref()) {
            match op {
                Op::RequestTxn(t) => self.check_ops(t, path, check)?,
                other => check(other)?,
            }
        }
        Ok(())
    }

    /// One compare. Over a range it must hold for every key; with no key at all, etcd compares against an
    /// empty KeyValue (version, revisions and lease 0), except that a VALUE compare then fails.
    pub(super) fn compare(&self, c: &Compare, now: i64) -> Result<bool, MvccError> {
        // An unknown target compares as "equal" in etcd; keep it as None.
        let target = CompareTarget::try_from(c.target).ok();
        let hits: Vec<(&[u8], &KeyRev)> =
            self.index.range(&c.key, RangeEnd::from_request(&c.range_end), now).collect();
        if hits.is_empty() {
            if target == Some(CompareTarget::Value) {
                return Ok(false);
            }
            return Ok(compare_one(c, target, None, &[]));
        }
        for (_, kr) in hits {
            let value = if target == Some(CompareTarget::Value) {
                self.value_at(kr.mod_rev)?
            } else {
                bytes::Bytes::new()
            };
            if !compare_one(c, target, Some(kr), &value) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn compare_one(c: &Compare, target: Option<CompareTarget>, kr: Option<&KeyRev>, value: &[u8]) -> bool {
    use std::cmp::Ordering;
    let Some(target) = target else {
        return compare_result(c.result, Ordering::Equal);
    };
    let ord: Ordering = match target {
        CompareTarget::Value => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            value.cmp(want)
        }
        _ => {
            let (have, want) = match (target, &c.target_union) {
                (CompareTarget::Version, Some(TargetUnion::Version(v))) => (kr.map_or(0, |k| k.version), *v),
                (CompareTarget::Version, _) => (kr.map_or(0, |k| k.version), 0),
                (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => {
                    (kr.map_or(0, |k| k.create_rev), *v)
                }
                (CompareTarget::Create, _) => (kr.map_or(0, |k| k.create_rev), 0),
                (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => {
                    (kr.map_or(0, |k| k.mod_rev.main), *v)
                }
                (CompareTarget::Mod, _) => (kr.map_or(0, |k| k.mod_rev.main), 0),
                (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => (kr.map_or(0, |k| k.lease), *v),
                (_, _) => (kr.map_or(0, |k| k.lease), 0),
            };
            have.cmp(&want)
        }
    };
    compare_result(c.result, ord)
}

/// An unknown result holds, as in etcd's `compareKV`.
fn compare_result(result: i32, ord: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering;
    match CompareResult::try_from(result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

/// What executing a transaction's ops needs; a read-only view refuses writes.
trait TxnOps {
    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError>;
    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError>;
    fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError>;
}

impl<B: Backend> TxnOps for WriteTxn<'_, B> {
    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        WriteTxn::range(self, req)
    }
    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        WriteTxn::put(self, req)
    }
    fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        WriteTxn::delete_range(self, req)
    }
}

struct ReadView<'a, B> {
    store: &'a Store<B>,
    now: i64,
}

impl<B: Backend> TxnOps for ReadView<'_, B> {
    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.store.range_as_of(req, self.now, None)
    }
    fn put(&mut self, _: &PutRequest) -> Result<PutResponse, MvccError> {
        Err(MvccError::Backend("write in a read-only transaction".into()))
    }
    fn delete_range(&mut self, _: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        Err(MvccError::Backend("write in a read-only transaction".into()))
    }
}

fn exec_txn(
    ops: &mut impl TxnOps,
    req: &TxnRequest,
    path: &mut impl Iterator<Item = bool>,
) -> Result<TxnResponse, MvccError> {
    let succeeded = path.next().unwrap_or(false);
    let branch = if succeeded { &req.success } else { &req.failure };
    let mut responses = Vec::with_capacity(branch.len());
    for op in branch {
        let response = match &op.request {
            Some(Op::RequestRange(r)) => Some(OpResponse::ResponseRange(ops.range(r)?)),
            Some(Op::RequestPut(p)) => Some(OpResponse::ResponsePut(ops.put(p)?)),
            Some(Op::RequestDeleteRange(d)) => Some(OpResponse::ResponseDeleteRange(ops.delete_range(d)?)),
            Some(Op::RequestTxn(t)) => Some(OpResponse::ResponseTxn(exec_txn(ops, t, path)?)),
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse { header: Some(ResponseHeader::default()), succeeded, responses })
}

/// etcd counts a transaction (`etcd_mvcc_txn_total`) when it ran more than one operation.
fn count_txn(response: &TxnResponse) {
    fn operations(response: &TxnResponse) -> usize {
        let nested = |op: &ResponseOp| match &op.response {
            Some(OpResponse::ResponseTxn(t)) => operations(t),
            Some(_) => 1,
            None => 0,
        };
        response.responses.iter().map(nested).sum()
    }
    if operations(response) > 1 {
        crate::metrics::count(&crate::metrics::MVCC_TXNS);
    }
}

/// Whether a Txn only reads, by etcd's rule (`isTxnReadonly`): every op on both branches is a Range. A
/// nested Txn counts as a write, whatever it holds.
pub fn is_read_only(req: &TxnRequest) -> bool {
    req.success.iter().chain(&req.failure).all(|op| matches!(op.request, Some(Op::RequestRange(_))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::MemBackend;
    use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
    use crate::pb::etcdserverpb::RequestOp;

    fn no_leases(_: i64) -> bool {
        false
    }

    fn put(s: &mut Store<MemBackend>, k: &str, v: &str) -> i64 {
        let req = PutRequest { key: k.into(), value: v.into(), ..Default::default() };
        s.put(&req, &no_leases).unwrap().response.header.unwrap().revision
    }

    fn get(s: &Store<MemBackend>, k: &str, rev: i64) -> Result<Option<KeyValue>, MvccError> {
        let req = RangeRequest { key: k.into(), revision: rev, ..Default::default() };
        Ok(s.range(&req)?.kvs.into_iter().next())
    }

    fn flushed(mut s: Store<MemBackend>) -> Store<MemBackend> {
        s.commit().unwrap();
        s
    }

    #[test]
    fn a_range_with_its_values_read_later_answers_the_same() {
        let mut s = Store::open(MemBackend::default(), 1, -1).unwrap();
        for (k, v) in [("a", "3"), ("b", "1"), ("c", "2"), ("a", "4")] {
            put(&mut s, k, v);
        }
        let mut s = flushed(s);
        put(&mut s, "d", "0"); // not yet committed: served from memory
        let all = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
        for req in [
            all.clone(),
            RangeRequest { limit: 2, ..all.clone() },
            RangeRequest { keys_only: true, ..all.clone() },
            RangeRequest { revision: 3, ..all.clone() },
            RangeRequest {
                sort_target: SortTarget::Value as i32,
                sort_order: SortOrder::Descend as i32,
                ..all.clone()
            },
            RangeRequest {
                sort_target: SortTarget::Mod as i32,
                sort_order: SortOrder::Ascend as i32,
                ..all.clone()
            },
        ] {
            let (mut later, refs) = s.range_later(&req).unwrap();
            Store::<MemBackend>::fill(&mut later, refs).unwrap();
            assert_eq!(later, s.range(&req).unwrap(), "{req:?}");
        }
    }

    /// The hashes real etcd (3.4.23 and 3.5.1 alike) answers for the same history.
    #[test]
    fn hash_kv_is_etcds() {
        let mut s = Store::open(MemBackend::default(), 1, -1).unwrap();
        let put = |s: &mut Store<MemBackend>, k: &str, v: &str| {
            put(s, k, v);
            s.commit().unwrap();
        };
        let del = |s: &mut Store<MemBackend>, k: &str, end: &str| {
            let req = DeleteRangeRequest { key: k.into(), range_end: end.into(), ..Default::default() };
            s.delete_range(&req).unwrap();
            s.commit().unwrap();
        };
        put(&mut s, "a", "b");
        assert_eq!(s.hash_kv(0).unwrap(), (3628877040, 2, -1));
        del(&mut s, "a", "");
        assert_eq!(s.hash_kv(0).unwrap().0, 2765545382);
        put(&mut s, "x", "1");
        put(&mut s, "y", "2");
        s.compact(4).unwrap();
        s.commit().unwrap();
        assert_eq!(s.hash_kv(0).unwrap(), (2485208201, 5, 4));
        del(&mut s, "x", "y");
        put(&mut s, "p", "1");
        del(&mut s, "p", "q");
        put(&mut s, "p", "2");
        // Below the compaction only what a read at the hashed revision sees: not x's put at 4 once x is
        // deleted at 6.
        assert_eq!(s.hash_kv(6).unwrap().0, 2788292616);
        assert_eq!(s.hash_kv(5).unwrap().0, 2485208201);
        assert_eq!(s.hash_kv(0).unwrap(), (810495791, 9, 4));
        assert!(matches!(s.hash_kv(4), Err(MvccError::Compacted)));
        assert!(matches!(s.hash_kv(10), Err(MvccError::FutureRev)));
    }

    #[test]
    fn a_rebuild_reports_the_records_compaction_dropped_until_they_are_committed() {
        let mut s = Store::open(MemBackend::default(), 1, -1).unwrap();
        put(&mut s, "a", "1");
        let last = put(&mut s, "a", "2");
        let mut s = flushed(s);
        // As after a restart whose checkpoint predates the compaction's commit.
        s.rebuild(last, last).unwrap();
        assert_eq!(s.dropped_records(), [Revision::new(2, 0)]);
        let s = flushed(s);
        assert!(s.dropped_records().is_empty());
        assert_eq!(get(&s, "a", 0).unwrap().unwrap().value, "2");
    }

    fn cmp(key: &str, target: CompareTarget, result: CompareResult, t: TargetUnion) -> Compare {
        Compare {
            key: key.into(),
            target: target as i32,
            result: result as i32,
            target_union: Some(t),
            range_end: vec![],
        }
    }

    fn put_op(k: &str, v: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn revisions_versions_and_tombstones_follow_etcd() {
        let mut s = Store::open(MemBackend::default(), 1, 0).unwrap();
        assert_eq!(s.current_revision(), 1, "an empty store is at revision 1");
        assert_eq!(put(&mut s, "a", "1"), 2);
        assert_eq!(put(&mut s, "a", "2"), 3);
        let kv = get(&s, "a", 0).unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        assert_eq!(kv.value, &b"2"[..]);

        let del =
            s.delete_range(&DeleteRangeRequest { key: "a".into(), prev_kv: true, ..Default::default() });
        let del = del.unwrap();
        assert_eq!(del.response.deleted, 1);
        assert_eq!(del.response.prev_kvs[0].value, &b"2"[..]);
        assert_eq!(del.response.header.unwrap().revision, 4);
        assert_eq!(del.events[0].r#type, EventType::Delete as i32);

        // Deleting nothing does not create a revision.
        let none = s.delete_range(&DeleteRangeRequest { key: "a".into(), ..Default::default() }).unwrap();
        assert_eq!((none.response.deleted, s.current_revision()), (0, 4));

        assert_eq!(put(&mut s, "a", "3"), 5);
        let kv = get(&s, "a", 0).unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.version), (5, 1), "a re-created key starts over");
        assert_eq!(get(&s, "a", 3).unwrap().unwrap().value, &b"2"[..], "history read");
        assert_eq!(get(&s, "a", 4).unwrap(), None, "deleted at 4");
        assert_eq!(get(&s, "a", 6), Err(MvccError::FutureRev));
    }

    #[test]
    fn compaction_drops_history_and_reports_etcd_errors() {
        let mut s = Store::open(MemBackend::default(), 1, 0).unwrap();
        for i in 0..5 {
            put(&mut s, "k", &i.to_string()); // revisions 2..=6
        }
        put(&mut s, "gone", "x"); // 7
        s.delete_range(&DeleteRangeRequest { key: "gone".into(), ..Default::default() }).unwrap(); // 8
        let mut s = flushed(s);
        assert_eq!(s.backend.len(), 7);
        s.compact(7).unwrap();
        let s2 = flushed(s);
        let mut s = s2;
        assert_eq!(s.backend.len(), 3, "k@6 (visible at 7), gone@7, gone's tombstone@8");
        assert_eq!(get(&s, "k", 6), Err(MvccError::Compacted));
        assert_eq!(get(&s, "k", 7).unwrap().unwrap().value, &b"4"[..]);
        assert_eq!(s.compact(7), Err(MvccError::Compacted));
        assert_eq!(s.compact(5), Err(MvccError::Compacted));
        assert_eq!(s.compact(9), Err(MvccError::FutureRev));
        s.compact(8).unwrap();
        let s = flushed(s);
        assert_eq!(s.backend.len(), 1);
        assert_eq!(get(&s, "gone", 8).unwrap(), None);
    }

    #[test]
    fn reopening_rebuilds_the_index_from_records() {
        let mut s = Store::open(MemBackend::default(), 1, 0).unwrap();
        put(&mut s, "a", "1");
        put(&mut s, "b", "2");
        put(&mut s, "a", "3");
        let s = flushed(s);
        let (cur, comp) = (s.current_revision(), s.compact_revision());
        let reopened = Store::open(s.backend, cur, comp).unwrap();
        let kv = get(&reopened, "a", 0).unwrap().unwrap();
        assert_eq!((kv.version, kv.create_revision, kv.mod_revision), (2, 2, 4));
        assert_eq!(get(&reopened, "a", 2).unwrap().unwrap().value, &b"1"[..]);
    }

    #[test]
    fn range_options() {
        let mut s = Store::open(MemBackend::default(), 1, 0).unwrap();
        put(&mut s, "c", "1"); // 2
        put(&mut s, "a", "3"); // 3
        put(&mut s, "b", "2"); // 4
        put(&mut s, "b", "2"); // 5
        let all = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
        let keys = |r: &RangeResponse| {
            r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect::<Vec<_>>()
        };

        let r = s.range(&RangeRequest { limit: 2, ..all.clone() }).unwrap();
        assert_eq!((keys(&r), r.more, r.count), (vec!["a".into(), "b".into()], true, 3));

        let r = s.range(&RangeRequest { count_only: true, ..all.clone() }).unwrap();
        assert!(r.kvs.is_empty());
        assert_eq!(r.count, 3);

        let r = s.range(&RangeRequest { keys_only: true, ..all.clone() }).unwrap();
        assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));

        let by = |target: SortTarget, order: SortOrder| {
            keys(
                &s.range(&RangeRequest {
                    sort_target: target as i32,
                    sort_order: order as i32,
                    ..all.clone()
                })
                .unwrap(),
            )
        };
        assert_eq!(by(SortTarget::Key, SortOrder::Descend), ["c", "b", "a"]);
        assert_eq!(by(SortTarget::Value, SortOrder::Ascend), ["c", "b", "a"]);
        assert_eq!(
            by(SortTarget::Create, SortOrder::None),
            ["c", "a", "b"],
            "non-key target defaults to ascending"
        );
        assert_eq!(by(SortTarget::Mod, SortOrder::Descend), ["b", "a", "c"]);
        assert_eq!(by(SortTarget::Version, SortOrder::Descend)[0], "b");

        let r = s.range(&RangeRequest { min_mod_revision: 3, max_mod_revision: 4, ..all.clone() }).unwrap();
        assert_eq!(keys(&r), ["a"]);
        let r = s.range(&RangeRequest { min_create_revision: 3, ..all.clone() }).unwrap();
        assert_eq!(keys(&r), ["a", "b"]);

        let r =
            s.range(&RangeRequest { key: "a".into(), range_end: "c".into(), ..Default::default() }).unwrap();
        assert_eq!(keys(&r), ["a", "b"]);
        assert_eq!(r.header.unwrap().revision, 5);
    }

    #[test]
    fn txn_compare_matrix() {
        let mut s = Store::open(MemBackend::default(), 1, 0).unwrap();
        put(&mut s, "k", "m"); // create 2, mod 2, version 1
        put(&mut s, "k", "m"); // mod 3, version 2
        use CompareResult::*;
        use CompareTarget as T;
        let cases = [
            (cmp("k", T::Version, Equal, TargetUnion::Version(2)), true),
            (cmp("k", T::Version, Greater, TargetUnion::Version(1)), true),
            (cmp("k", T::Version, Less, TargetUnion::Version(2)), false),
            (cmp("k", T::Version, NotEqual, TargetUnion::Version(2)), false),
            (cmp("k", T::Create, Equal, TargetUnion::CreateRevision(2)), true),
            (cmp("k", T::Mod, Greater, TargetUnion::ModRevision(2)), true),
            (cmp("k", T::Mod, Less, TargetUnion::ModRevision(3)), false),
            (cmp("k", T::Value, Equal, TargetUnion::Value("m".into())), true),
            (cmp("k", T::Value, Greater, TargetUnion::Value("a".into())), true),
            (cmp("k", T::Value, Less, TargetUnion::Value("a".into())), false),
            (cmp("k", T::Lease, Equal, TargetUnion::Lease(0)), true),
            (cmp("missing", T::Version, Equal, TargetUnion::Version(0)), true),
            (cmp("missing", T::Create, Equal, TargetUnion::CreateRevision(0)), true),
            (cmp("missing", T::Value, NotEqual, TargetUnion::Value("x".into())), false),
        ];
        for (c, want) in cases {
            assert_eq!(s.compare(&c, s.current_revision()).unwrap(), want, "{c:?}");
        }
        // A compare over a range holds only if it holds for every key in it.
        put(&mut s, "k2", "z");
        let mut over = cmp("k", T::Value, Equal, TargetUnion::Value("m".into()));
        over.range_end = "k3".into();
        assert!(!s.compare(&over, s.current_revision()).unwrap());
        over.result = Greater as i32;
        over.target_union = Some(TargetUnion::Value("a".into()));
        assert!(s.compare(&over, s.current_revision()).unwrap());
    }

    #[test]
    fn txn_is_one_revision_and_sees_its_own_writes() {
        let mut s = Store::open(MemBackend::default(), 1, 0).unwrap();
        put(&mut s, "a", "1"); // 2
        let req = TxnRequest {
            compare: vec![cmp(
                "a",
                CompareTarget::Value,
                CompareResult::Equal,
                TargetUnion::Value("1".into()),
            )],
            success: vec![
                put_op("x", "1"),
                put_op("y", "2"),
                RequestOp {
                    request: Some(Op::RequestRange(RangeRequest { key: "x".into(), ..Default::default() })),
                },
                RequestOp {
                    request: Some(Op::RequestTxn(TxnRequest {
                        compare: vec![cmp(
                            "x",
                            CompareTarget::Version,
                            CompareResult::Equal,
                            TargetUnion::Version(0),
                        )],
                        success: vec![put_op("nested", "ok")],
                        failure: vec![],
                    })),
                },
            ],
            failure: vec![put_op("failed", "1")],
        };
        let applied = s.txn(&req, &no_leases).unwrap();
        assert!(applied.response.succeeded);
        assert_eq!(applied.response.header.unwrap().revision, 3);
        assert_eq!(applied.events.len(), 3);
        let subs: Vec<_> = applied.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect();
        assert_eq!(subs, [3, 3, 3]);
        let Some(OpResponse::ResponseRange(r)) = &applied.response.responses[2].response else { panic!() };
        assert_eq!(r.kvs[0].value, &b"1"[..], "a read after a write in the same txn sees it");
        // The nested compare ran against the state before the txn, where "x" did not exist.
        assert_eq!(get(&s, "nested", 0).unwrap().unwrap().mod_revision, 3);
        assert_eq!(get(&s, "failed", 0).unwrap(), None);

        // A failing check (future revision on the taken path) leaves nothing behind.
        let bad = TxnRequest {
            success: vec![
                put_op("z", "1"),
                RequestOp {
                    request: Some(Op::RequestRange(RangeRequest {
                        key: "x".into(),
                        revision: 99,
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        assert_eq!(s.txn(&bad, &no_leases).unwrap_err(), MvccError::FutureRev);
        assert_eq!(s.current_revision(), 3);
        assert_eq!(get(&s, "z", 0).unwrap(), None);
    }

    #[test]
    fn put_checks() {
        let mut s = Store::open(MemBackend::default(), 1, 0).unwrap();
        let ignore = PutRequest { key: "a".into(), ignore_value: true, ..Default::default() };
        assert_eq!(s.put(&ignore, &no_leases).unwrap_err(), MvccError::KeyNotFound);
        let leased = PutRequest { key: "a".into(), lease: 7, ..Default::default() };
        assert_eq!(s.put(&leased, &no_leases).unwrap_err(), MvccError::LeaseNotFound);
        assert_eq!(s.current_revision(), 1);
        put(&mut s, "a", "v");
        let r = s.put(&PutRequest { prev_kv: true, ..ignore }, &no_leases).unwrap();
        assert_eq!(r.response.prev_kv.unwrap().value, &b"v"[..]);
        let kv = get(&s, "a", 0).unwrap().unwrap();
        assert_eq!((kv.value.as_ref(), kv.version), (&b"v"[..], 2), "ignore_value keeps the value");
    }

    #[test]
    fn read_only_txn_changes_nothing() {
        let mut s = Store::open(MemBackend::default(), 1, 0).unwrap();
        put(&mut s, "a", "1");
        let req = TxnRequest {
            success: vec![RequestOp {
                request: Some(Op::RequestRange(RangeRequest { key: "a".into(), ..Default::default() })),
            }],
            ..Default::default()
        };
        assert!(is_read_only(&req));
        assert!(!is_read_only(&TxnRequest { failure: vec![put_op("a", "b")], ..Default::default() }));
        let r = s.txn_read(&req).unwrap();
        assert!(r.succeeded);
        assert_eq!(r.header.unwrap().revision, 2);
        assert_eq!(s.current_revision(), 2);
    }
}
