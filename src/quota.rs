//! etcd's space quota (`--quota-backend-bytes`). A write that adds data is refused once the records
//! would outgrow the quota, and the member raises the NOSPACE alarm through the log; while any member's
//! NOSPACE alarm is active, every member refuses such writes when it applies them (deletes and
//! compactions still go through), until an operator compacts, defragments and disarms the alarm.

use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::{PutRequest, RequestOp, TxnRequest};
use crate::raft::Request;

/// etcd's `DefaultQuotaBytes`: 2 GiB.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// etcd's per-key overhead in its cost estimate (`kvOverhead`).
const KV_OVERHEAD: u64 = 256;
/// etcd's estimate for a new lease (`leaseOverhead`).
const LEASE_OVERHEAD: u64 = 64;

/// The AlarmType values of etcd's protocol.
pub const NONE: i32 = 0;
pub const NOSPACE: i32 = 1;
pub const CORRUPT: i32 = 2;

/// The quota a `--quota-backend-bytes` value means: 0 is etcd's default, a negative value none.
pub fn quota_bytes(flag: i64) -> u64 {
    match flag {
        0 => DEFAULT_QUOTA_BYTES,
        n if n < 0 => u64::MAX,
        n => n as u64,
    }
}

fn put_cost(p: &PutRequest) -> u64 {
    KV_OVERHEAD + (p.key.len() + p.value.len()) as u64
}

fn ops_cost(ops: &[RequestOp]) -> u64 {
    ops.iter()
        .map(|op| match &op.request {
            Some(Op::RequestPut(p)) => put_cost(p),
            Some(Op::RequestTxn(t)) => txn_cost(t),
            _ => 0,
        })
        .sum()
}

/// The larger branch counts, as only one of them runs.
fn txn_cost(t: &TxnRequest) -> u64 {
    ops_cost(&t.success).max(ops_cost(&t.failure))
}

/// How much a request may add to the store (etcd's `backendQuota.Cost`); 0 for one that adds nothing.
pub fn cost(req: &Request) -> u64 {
    match req {
        Request::Put(p) => put_cost(p),
        Request::Txn(t) => txn_cost(t),
        Request::LeaseGrant { .. } => LEASE_OVERHEAD,
        Request::Batch(rs) => rs.iter().map(cost).sum(),
        Request::Authed { request, .. } | Request::Proposed { request, .. } => cost(request),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::DeleteRangeRequest;

    #[test]
    fn only_writes_that_add_data_cost_anything() {
        let put = PutRequest { key: b"k".to_vec(), value: vec![0; 100], ..Default::default() };
        assert_eq!(cost(&Request::Put(put.clone())), 357);
        assert_eq!(cost(&Request::DeleteRange(DeleteRangeRequest::default())), 0);
        let op = |p: PutRequest| RequestOp { request: Some(Op::RequestPut(p)) };
        let txn = TxnRequest {
            success: vec![op(put.clone()), op(put.clone())],
            failure: vec![op(put)],
            ..Default::default()
        };
        assert_eq!(cost(&Request::Txn(txn)), 714);
        assert_eq!(cost(&Request::Txn(TxnRequest::default())), 0);
        assert_eq!(quota_bytes(0), DEFAULT_QUOTA_BYTES);
        assert_eq!(quota_bytes(-1), u64::MAX);
    }
}
