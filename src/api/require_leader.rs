//! etcd's "require leader" calls (`clientv3.WithRequireLeader`, gRPC metadata `hasleader: true`):
//! a member without a leader refuses them at once, and ends their streams once it has been without one
//! for three election timeouts (etcd's `monitorLeader`). Kubernetes watches this way, so that a watch
//! on a member cut off from its quorum fails over to another member instead of going quiet.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::sync::watch;
use tonic::body::Body;

use super::errors;
use crate::raft::RaftNode;

/// etcd's `maxNoLeaderCnt`: checks in a row without a leader before require-leader streams end.
const MISSES: u32 = 3;

/// What [`monitor`] reports: `None` while this member has a leader (or has not been without one for
/// long), `Some(then)` once it has gone `MISSES` checks without a confirmed one, `then` being the leader
/// it took for current at the last check (`None`: it knew of none).
pub type LeaderLoss = watch::Receiver<Option<Option<u64>>>;

/// The leader as etcd would report it (`lost` from `monitor`). An etcd leader cut off from its quorum
/// steps down; an openraft one goes on taking itself for the leader, which status, `/health` and
/// `/metrics` must not repeat.
pub fn known_leader(node: &RaftNode, lost: &LeaderLoss) -> Option<u64> {
    reported(node.leader(), *lost.borrow())
}

fn reported(now: Option<u64>, lost: Option<Option<u64>>) -> Option<u64> {
    match lost {
        // Still the leader it had when the monitor gave up on it, or still none.
        Some(then) if then == now => None,
        // A leader elected since is reported at once, not from the monitor's next check on: a member
        // whose first election took more than `MISSES` checks (a slow start) reported no leader for up
        // to an election timeout after it had one (etcd's e2e MoveLeader test asks every member's
        // status right after start, and failed now and then).
        _ => now,
    }
}

/// Whether the call asks for a leader.
pub fn required(headers: &http::HeaderMap) -> bool {
    headers.get("hasleader").is_some_and(|v| v == "true")
}

/// etcd's `ErrGRPCNoLeader` (`errors::no_leader`), as the trailers that end a call.
fn no_leader() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    // A fixed message that is a valid header once encoded: nothing to fail on.
    let _ = errors::no_leader().add_header(&mut trailers);
    trailers
}

/// A call refused before it starts: a gRPC "trailers-only" response.
pub fn refused() -> http::Response<Body> {
    errors::no_leader().into_http()
}

/// Starts checking for a leader every `interval` (the election timeout); what it returns turns `Some`
/// after `MISSES` checks in a row without one, and `None` again with the next leader. It stops when the
/// last receiver is gone.
pub fn monitor(node: RaftNode, interval: Duration) -> LeaderLoss {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        let mut misses = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tx.closed() => return,
            }
            misses = if has_leader(&node, interval).await { 0 } else { misses + 1 };
            let lost = (misses >= MISSES).then(|| node.leader());
            // Receivers hear of a loss and of its end; which leader a loss goes with changes silently
            // (`known_leader` reads it), or a require-leader stream would take the change for a loss.
            tx.send_if_modified(|was| std::mem::replace(was, lost).is_some() != lost.is_some());
        }
    });
    rx
}

/// Whether this member has a leader. openraft 0.9's leader does not step down when it loses its quorum
/// (etcd's leader does, with raft's CheckQuorum), so a member that takes itself for the leader asks a
/// quorum to confirm it, as a linearizable read does.
async fn has_leader(node: &RaftNode, within: Duration) -> bool {
    match node.leader() {
        None => false,
        Some(leader) if leader == node.id => {
            matches!(tokio::time::timeout(within, node.read_index()).await, Ok(Ok(_)))
        }
        Some(_) => true,
    }
}

/// A require-leader call's response body: it ends with `no_leader` when the member loses its leader
/// for good (`monitor`'s flag turns true after the call started).
pub struct RequireLeader {
    inner: Body,
    lost: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl RequireLeader {
    pub fn new(inner: Body, mut flag: LeaderLoss) -> Self {
        // Only a loss after the call started counts: one reported before is already over, or the call
        // would have been refused.
        flag.borrow_and_update();
        let lost = async move {
            loop {
                if flag.changed().await.is_err() {
                    // The monitor stopped (the server is stopping): nothing more to report.
                    return std::future::pending().await;
                }
                if flag.borrow_and_update().is_some() {
                    return;
                }
            }
        };
        RequireLeader { inner, lost: Some(Box::pin(lost)) }
    }
}

impl http_body::Body for RequireLeader {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let Some(lost) = self.lost.as_mut() else { return Poll::Ready(None) };
        if lost.as_mut().poll(cx).is_ready() {
            self.lost = None;
            return Poll::Ready(Some(Ok(Frame::trailers(no_leader()))));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.lost = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.lost.is_none() || self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A response body that never ends, like a watch stream's.
    fn endless() -> Body {
        Body::new(http_body_util::StreamBody::new(futures::stream::pending::<
            Result<Frame<Bytes>, tonic::Status>,
        >()))
    }

    #[tokio::test]
    async fn a_stream_ends_with_no_leader_when_the_flag_turns_after_it_started() {
        let (tx, rx) = watch::channel(Some(None));
        let mut body = RequireLeader::new(endless(), rx);
        // A loss reported before the call started does not end it...
        let first = tokio::time::timeout(Duration::from_millis(50), body.frame()).await;
        assert!(first.is_err(), "still open");
        // ...a new one does, with etcd's status in the trailers.
        tx.send_replace(None);
        tx.send_replace(Some(None));
        let frame = body.frame().await.expect("a frame").expect("no error");
        let trailers = frame.into_trailers().expect("trailers");
        let status = tonic::Status::from_header_map(&trailers).expect("a status");
        assert_eq!((status.code(), status.message()), (tonic::Code::Unavailable, "etcdserver: no leader"));
        assert!(body.frame().await.is_none(), "and nothing after");
    }

    #[test]
    fn a_leader_elected_after_the_loss_is_reported_at_once() {
        // Nothing lost: whatever the member knows.
        assert_eq!(reported(Some(1), None), Some(1));
        assert_eq!(reported(None, None), None);
        // Lost with no leader at all, as at a slow start; then one is elected.
        assert_eq!(reported(None, Some(None)), None);
        assert_eq!(reported(Some(2), Some(None)), Some(2));
        // A leader cut off from its quorum still takes itself for the leader: not repeated...
        assert_eq!(reported(Some(3), Some(Some(3))), None);
        // ...until it learns of another one.
        assert_eq!(reported(Some(4), Some(Some(3))), Some(4));
    }

    #[test]
    fn only_hasleader_true_requires_a_leader() {
        let mut h = http::HeaderMap::new();
        assert!(!required(&h));
        h.insert("hasleader", http::HeaderValue::from_static("false"));
        assert!(!required(&h));
        h.insert("hasleader", http::HeaderValue::from_static("true"));
        assert!(required(&h));
    }
}
