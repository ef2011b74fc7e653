//! Stateless request checks, as etcd's v3rpc layer does them before anything reaches Raft.

use std::collections::HashSet;

use tonic::Status;

use super::errors;
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};

pub fn range(r: &RangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    // etcd 3.4 ignores an unknown sort order and crashes on an unknown sort target; later etcd refuses
    // both, which is what a client can rely on.
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(errors::invalid_sort_option());
    }
    Ok(())
}

pub fn put(r: &PutRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(errors::value_provided());
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(errors::lease_provided());
    }
    Ok(())
}

pub fn delete_range(r: &DeleteRangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    Ok(())
}

/// etcd's order: the shape of the whole request first (op counts, empty keys, put options), then the
/// put/delete overlap check, so the same bad request gets the same error from both.
pub fn txn(r: &TxnRequest, max_ops: usize) -> Result<(), Status> {
    txn_shape(r, max_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

/// etcd's `checkTxnRequest`: a nested txn gets the budget its parent left (`max_ops - ops`).
fn txn_shape(r: &TxnRequest, max_ops: usize) -> Result<(), Status> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_ops {
        return Err(errors::too_many_ops());
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(errors::empty_key());
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Op::RequestRange(x)) => range(x)?,
            Some(Op::RequestPut(x)) => put(x)?,
            Some(Op::RequestDeleteRange(x)) => delete_range(x)?,
            Some(Op::RequestTxn(x)) => txn_shape(x, max_ops - ops)?,
            // An op with nothing in it: etcd answers "key not found".
            None => return Err(errors::key_not_found()),
        }
    }
    Ok(())
}

/// A deleted range as etcd's `checkIntervals` sees it: `[key, range_end)` taken literally, so a
/// `range_end` of `"\0"` (which deletes every key from `key` on) makes an empty interval that conflicts
/// with nothing. Matching that quirk keeps concord accepting exactly the txns etcd accepts.
struct Interval {
    start: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let end = if range_end.is_empty() {
            let mut end = key.to_vec();
            end.push(0);
            end
        } else {
            range_end.to_vec()
        };
        Interval { start: key.to_vec(), end }
    }

    fn contains(&self, k: &[u8]) -> bool {
        k >= self.start.as_slice() && k < self.end.as_slice()
    }
}

/// etcd's `checkIntervals`: no key may be put twice, or put and deleted, by the ops that can run together
/// (the two branches of a nested txn exclude each other). Returns the puts and deletes of `ops`.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Interval>), Status> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Op::RequestDeleteRange(d)) => Some(Interval::of(&d.key, &d.range_end)),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Op::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(errors::duplicate_key());
            }
        }
        puts.extend(puts_then.iter().cloned());
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || dels.iter().any(|d| d.contains(&k)) {
                return Err(errors::duplicate_key());
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Op::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
            return Err(errors::duplicate_key());
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp { request: Some(Op::RequestPut(PutRequest { key: k.into(), ..Default::default() })) }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp { request: Some(Op::RequestTxn(TxnRequest { compare: vec![], success, failure })) }
    }
    fn check(success: Vec<RequestOp>) -> Result<(), Status> {
        txn(&TxnRequest { success, ..Default::default() }, 128)
    }

    #[test]
    fn duplicate_keys_are_refused_like_etcd() {
        assert!(check(vec![put("a"), put("b")]).is_ok());
        assert_eq!(
            check(vec![put("a"), put("a")]).unwrap_err().message(),
            "etcdserver: duplicate key given in txn request"
        );
        assert!(check(vec![put("b"), del("a", "c")]).is_err(), "put inside a deleted range");
        assert!(check(vec![put("c"), del("a", "c")]).is_ok(), "range end is exclusive");
        assert!(check(vec![put("z"), del("a", "\0")]).is_ok(), "etcd takes a \\0 range end literally");
        assert!(check(vec![nested(vec![put("a")], vec![put("a")])]).is_ok(), "branches exclude each other");
        assert!(check(vec![put("a"), nested(vec![put("a")], vec![])]).is_err());
        assert!(check(vec![del("a", ""), nested(vec![], vec![put("a")])]).is_err());
    }

    #[test]
    fn limits_and_empty_keys() {
        let many: Vec<RequestOp> = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check(many).unwrap_err().message(), "etcdserver: too many operations in txn request");
        assert_eq!(check(vec![put("")]).unwrap_err().message(), "etcdserver: key is not provided");
        let bad = PutRequest { key: "a".into(), value: "v".into(), ignore_value: true, ..Default::default() };
        assert_eq!(super::put(&bad).unwrap_err().message(), "etcdserver: value is provided");
    }
}
