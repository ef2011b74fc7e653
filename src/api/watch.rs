//! The Watch service: each gRPC stream becomes a `watch::WatchStream` task on this member's applied
//! state. Watches are served by the member the client is connected to, leader or not.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Caller, Kind};
use crate::pb::etcdserverpb::{ResponseHeader, WatchRequest};
use crate::pb::watch_encoded::watch_server::Watch;
use crate::raft::RaftNode;
use crate::watch::{EncodedWatchResponse, Options, Permit, WatchStream};

/// Batches of responses a stream may have ready before it waits for the client to read.
const OUT_QUEUE: usize = 16;

pub struct WatchService {
    pub node: RaftNode,
    pub options: Options,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<EncodedWatchResponse, Status>> + Send>>;

impl WatchService {
    /// A watcher needs read permission on its range, checked when it is created against the auth
    /// state of then (etcd's `isWatchPermitted`), as the stream's caller: a stream opened with a bad
    /// token has each create refused with etcd's reason.
    fn permit(&self, caller: Result<Option<Caller>, Status>) -> Permit {
        let node = self.node.clone();
        Arc::new(move |key: &[u8], range_end: &[u8]| {
            // A bad token is refused even while auth is off, as etcd refuses it.
            let caller = match &caller {
                Ok(c) => c.clone().unwrap_or_else(Caller::anonymous),
                Err(status) => return Err(status.message().to_string()),
            };
            if !node.sm.auth_enabled() {
                return Ok(());
            }
            node.sm.auth().check(&caller, Kind::Read, key, range_end).map_err(|e| e.to_string())
        })
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ResponseStream;

    async fn watch(&self, req: Request<Streaming<WatchRequest>>) -> Result<Response<ResponseStream>, Status> {
        let permit = self.permit(super::auth::caller(&self.node, &req).await);
        // As etcd's recvLoop: a broken inbound stream ends the watch stream, a client's half-close does
        // not (its watchers go on; the gateway half-closes after its request body).
        let requests = futures::stream::unfold(req.into_inner(), |mut inbound| async move {
            match inbound.message().await {
                Ok(Some(request)) => Some((request, inbound)),
                Ok(None) => std::future::pending().await,
                Err(_) => None,
            }
        });
        let (tx, rx) = tokio::sync::mpsc::channel(OUT_QUEUE);
        let node = self.node.clone();
        let stamp = Arc::new(move |revision| ResponseHeader {
            cluster_id: node.cluster_id,
            member_id: node.id,
            revision,
            raft_term: node.term(),
        });
        let sm = self.node.sm.clone();
        let stream = WatchStream::new(sm.clone(), sm.hub().subscribe(), stamp, self.options.clone(), tx)
            .with_permit(permit);
        tokio::spawn(stream.run(Box::pin(requests)));
        let responses = tokio_stream::wrappers::ReceiverStream::new(rx).flat_map(|mut batch| {
            crate::watch::size_batch(&mut batch);
            futures::stream::iter(batch.into_iter().map(Ok))
        });
        Ok(Response::new(Box::pin(responses)))
    }
}
