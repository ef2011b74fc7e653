//! The Watch service: each gRPC stream becomes a `watch::WatchStream` task on this member's applied
//! state. Watches are served by the member the client is connected to, leader or not.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::pb::etcdserverpb::watch_server::Watch;
use crate::pb::etcdserverpb::{ResponseHeader, WatchRequest, WatchResponse};
use crate::raft::RaftNode;
use crate::watch::{Options, WatchStream};

/// Responses a stream may have ready before it waits for the client to read.
const OUT_QUEUE: usize = 64;

pub struct WatchService {
    pub node: RaftNode,
    pub options: Options,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ResponseStream;

    async fn watch(&self, req: Request<Streaming<WatchRequest>>) -> Result<Response<ResponseStream>, Status> {
        // A broken inbound stream ends the watch stream, as in etcd.
        let requests = req
            .into_inner()
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| async { r.ok() });
        let (tx, rx) = tokio::sync::mpsc::channel(OUT_QUEUE);
        let node = self.node.clone();
        let stamp = Arc::new(move |revision| ResponseHeader {
            cluster_id: node.cluster_id,
            member_id: node.id,
            revision,
            raft_term: node.term(),
        });
        let sm = self.node.sm.clone();
        let stream = WatchStream::new(sm.clone(), sm.hub().subscribe(), stamp, self.options.clone(), tx);
        tokio::spawn(stream.run(Box::pin(requests)));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok))))
    }
}
