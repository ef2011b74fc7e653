//! The KV service.

use prost::Message;
use tonic::{Request, Response, Status};

use super::auth::{caller, check, still_current};
use super::{errors, fill_header, mvcc_status, node_status, unexpected, validate, write};
use crate::mvcc::txn::is_read_only;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::raft::{self, RaftNode};

pub struct KvService {
    pub node: RaftNode,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
}

impl KvService {
    /// etcd measures the request as it goes into its Raft log: wrapped in an `InternalRaftRequest` with a
    /// request header. Count that wrapping too, so a request right at the limit gets the same answer.
    fn check_size(&self, m: &impl Message) -> Result<(), Status> {
        const HEADER: usize = 2 + 10; // RequestHeader { ID }: tag, length, a 64-bit varint at most
        let inner = m.encoded_len();
        if 1 + prost::length_delimiter_len(inner) + inner + HEADER > self.max_request_bytes {
            return Err(errors::request_too_large());
        }
        Ok(())
    }
}

/// A read-only txn whose every range is serializable is served from local state (etcd's
/// `isTxnSerializable`).
fn txn_serializable(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| matches!(&op.request, Some(Op::RequestRange(r)) if r.serializable))
}

/// Ranges that may be longer than this many keys run on tokio's blocking pool (see [`read`]).
const WIDE: i64 = 1000;

/// A range over a span of keys with no limit, or a limit above [`WIDE`], that returns them.
fn wide(r: &RangeRequest) -> bool {
    !r.range_end.is_empty() && !r.count_only && (r.limit == 0 || r.limit > WIDE)
}

/// Runs a read in place, or on tokio's blocking pool when it is `wide`. A connection's calls share its
/// task (`api/serve.rs`), and one range over 100,000 keys takes ~150 ms of CPU here: in place it would
/// hold up every other call of its connection (a Go client's watches and keepalives among them) for
/// that long. A narrow read is done before the hand-off to another thread would be.
async fn read<T: Send + 'static>(wide: bool, read: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    if !wide {
        return Ok(read());
    }
    tokio::task::spawn_blocking(read).await.map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        // The request's form is checked before its token, and a linearizable read's token after the
        // read barrier, as etcd does: a token revoked by a change committed before the read is refused
        // as invalid, not taken and then found stale.
        validate::range(request.get_ref())?;
        if !request.get_ref().serializable {
            if self.node.is_learner() {
                return Err(super::learner::not_supported());
            }
            self.node.read_barrier().await.map_err(node_status)?;
        }
        let caller = caller(&self.node, &request).await?;
        let req = request.into_inner();
        check(&self.node, &caller, |auth, c| auth.check_range(c, &req))?;
        let sm = self.node.sm.clone();
        let mut resp = read(wide(&req), move || sm.range(&req)).await?.map_err(mvcc_status)?;
        still_current(&self.node, &caller)?;
        fill_header(&self.node, &mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        validate::put(request.get_ref())?;
        let caller = caller(&self.node, &request).await?;
        let req = request.into_inner();
        self.check_size(&req)?;
        let raft::Response::Put(mut resp) = write(&self.node, caller, raft::Request::Put(req)).await? else {
            return Err(unexpected());
        };
        fill_header(&self.node, &mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        validate::delete_range(request.get_ref())?;
        let caller = caller(&self.node, &request).await?;
        let req = request.into_inner();
        self.check_size(&req)?;
        let raft::Response::DeleteRange(mut resp) =
            write(&self.node, caller, raft::Request::DeleteRange(req)).await?
        else {
            return Err(unexpected());
        };
        fill_header(&self.node, &mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        validate::txn(request.get_ref(), self.max_txn_ops)?;
        let mut resp = if is_read_only(request.get_ref()) {
            // As a range: the token after the read barrier.
            if !txn_serializable(request.get_ref()) {
                self.node.read_barrier().await.map_err(node_status)?;
            }
            let caller = caller(&self.node, &request).await?;
            let req = request.into_inner();
            check(&self.node, &caller, |auth, c| auth.check_txn(c, &req))?;
            let any_wide = req
                .success
                .iter()
                .chain(&req.failure)
                .any(|op| matches!(&op.request, Some(Op::RequestRange(r)) if wide(r)));
            let sm = self.node.sm.clone();
            let resp = read(any_wide, move || sm.read(|s| s.txn_read(&req))).await?.map_err(mvcc_status)?;
            still_current(&self.node, &caller)?;
            resp
        } else {
            let caller = caller(&self.node, &request).await?;
            let req = request.into_inner();
            self.check_size(&req)?;
            let raft::Response::Txn(resp) = write(&self.node, caller, raft::Request::Txn(req)).await? else {
                return Err(unexpected());
            };
            resp
        };
        fill_header(&self.node, &mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let req = request.into_inner();
        let raft::Response::Compact(mut resp) =
            write(&self.node, caller, raft::Request::Compact(req)).await?
        else {
            return Err(unexpected());
        };
        fill_header(&self.node, &mut resp.header);
        Ok(Response::new(resp))
    }
}
