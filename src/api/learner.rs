//! A learner replicates but does not vote, and etcd serves its clients only Status and serializable
//! Range (`isRPCSupportedForLearner`); every other RPC fails with "rpc not supported for learner", which
//! tells etcd's clients to try another member. Range checks `serializable` itself.

use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use tonic::Status;

use crate::raft::RaftNode;

pub fn not_supported() -> Status {
    Status::unavailable("etcdserver: rpc not supported for learner")
}

/// The RPCs a learner serves (Range only when serializable).
fn served_by_learner(path: &str) -> bool {
    matches!(path, "/etcdserverpb.Maintenance/Status" | "/etcdserverpb.KV/Range")
}

#[derive(Clone)]
pub struct LearnerLayer {
    pub node: RaftNode,
}

impl<S> tower::Layer<S> for LearnerLayer {
    type Service = LearnerGuard<S>;

    fn layer(&self, inner: S) -> LearnerGuard<S> {
        LearnerGuard { inner, node: self.node.clone() }
    }
}

#[derive(Clone)]
pub struct LearnerGuard<S> {
    inner: S,
    node: RaftNode,
}

impl<S, B> tower::Service<http::Request<B>> for LearnerGuard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if served_by_learner(req.uri().path()) || !self.node.is_learner() {
            Either::Right(self.inner.call(req))
        } else {
            Either::Left(futures::future::ready(Ok(not_supported().into_http())))
        }
    }
}
