//! gRPC's standard health service (`grpc.health.v1.Health`), which etcd serves on its client port for
//! gRPC load balancers and probes: the server as a whole (the service name "") is SERVING for as long
//! as it runs, as etcd 3.4 and 3.5 report it; any other name is unknown.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::pb::health::health_check_response::ServingStatus;
use crate::pb::health::health_server::Health;
use crate::pb::health::{HealthCheckRequest, HealthCheckResponse};

pub struct HealthService {
    /// Ends `Watch` streams when the member stops (an open stream would hold up the shutdown).
    pub stop: watch::Receiver<bool>,
}

fn answer(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: status as i32 }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(&self, req: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        if !req.get_ref().service.is_empty() {
            return Err(Status::not_found("unknown service"));
        }
        Ok(Response::new(answer(ServingStatus::Serving)))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    /// The status now, then nothing more: it does not change while the member runs.
    async fn watch(&self, req: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let status = if req.get_ref().service.is_empty() {
            ServingStatus::Serving
        } else {
            ServingStatus::ServiceUnknown
        };
        let mut stop = self.stop.clone();
        let stream = futures::stream::once(async move { Ok(answer(status)) })
            .chain(futures::stream::pending())
            .take_until(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
        Ok(Response::new(Box::pin(stream)))
    }
}
