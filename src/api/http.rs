//! etcd's plain HTTP endpoints, served on the client URLs next to gRPC (HTTP/1.1 and HTTP/2 share the
//! listener): `/health` (what load balancers probe), `/livez`, `/readyz`, `/version` and `/metrics`. The
//! same layer counts every gRPC call for `grpc_server_started_total` and `grpc_server_handled_total`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::Frame;
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::Code;

use crate::api::gateway;
use crate::api::maintenance::ETCD_VERSION;
use crate::api::require_leader::{self, RequireLeader};
use crate::metrics::{self, sample, GrpcMethod};
use crate::raft::RaftNode;

/// How long `/health`'s read may take, as etcd's health check allows.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct HttpLayer {
    pub node: RaftNode,
    /// The largest JSON body the gateway reads (the gRPC limit's size).
    pub max_body: usize,
    /// A `--listen-metrics-urls` listener: the HTTP endpoints only, 404 for anything else.
    pub endpoints_only: bool,
    /// Serve the JSON gateway (`--enable-grpc-gateway`); 404 for its paths if not.
    pub gateway: bool,
    /// `Some` once the member has lost its leader for good (`require_leader::monitor`).
    pub leader_lost: require_leader::LeaderLoss,
}

impl<S> tower::Layer<S> for HttpLayer {
    type Service = Http<S>;

    fn layer(&self, inner: S) -> Http<S> {
        Http {
            inner,
            node: self.node.clone(),
            max_body: self.max_body,
            endpoints_only: self.endpoints_only,
            gateway: self.gateway,
            leader_lost: self.leader_lost.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Http<S> {
    inner: S,
    node: RaftNode,
    max_body: usize,
    endpoints_only: bool,
    gateway: bool,
    leader_lost: require_leader::LeaderLoss,
}

impl<S> tower::Service<http::Request<Body>> for Http<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path();
        let endpoint_path = matches!(path, "/health" | "/livez" | "/readyz" | "/version" | "/metrics");
        let gateway_path = path.starts_with("/v3/") || path.starts_with("/v3beta/");
        if self.endpoints_only && !endpoint_path || !self.gateway && gateway_path {
            return Box::pin(async move { Ok(not_found()) });
        }
        if gateway_path && req.method() != http::Method::POST {
            // What etcd's gateway answers a browser's preflight and any other method.
            let resp = if req.method() == http::Method::OPTIONS {
                http::Response::new(Body::empty())
            } else {
                let status = http::StatusCode::METHOD_NOT_ALLOWED;
                response(status, "text/plain; charset=utf-8", "Method Not Allowed\n".to_string())
            };
            return Box::pin(async move { Ok(cors(resp)) });
        }
        if gateway_path {
            // The JSON gateway: the call goes on to the gRPC services, as gRPC.
            let Some(method) = gateway::method(path) else {
                return Box::pin(async move { Ok(cors(gateway_not_found())) });
            };
            // The service that was polled ready takes this call; a clone waits for the next (tower's rule).
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            let limit = self.max_body;
            let authorization = req.headers().get(http::header::AUTHORIZATION).cloned();
            let answer = async move {
                let body = match http_body_util::Limited::new(req.into_body(), limit).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        let too_large = super::errors::request_too_large();
                        return Ok(gateway::error(too_large.code(), too_large.message()));
                    }
                    Err(e) => return Ok(gateway_bad_body(&e.to_string())),
                };
                let call = match gateway::grpc_request(&method, &body, authorization) {
                    Ok(call) => call,
                    Err((code, message)) => return Ok(gateway::error(code, &message)),
                };
                let counters = metrics::grpc_method(call.uri().path());
                let resp = counted(counters, inner.call(call)).await?;
                Ok(gateway::json_reply(&method, resp).await)
            };
            return Box::pin(async move { answer.await.map(cors) });
        }
        if endpoint_path {
            let (node, path) = (self.node.clone(), path.to_string());
            let leader = require_leader::known_leader(&node, &self.leader_lost);
            let serializable = req.uri().query().is_some_and(|q| q.contains("serializable=true"));
            return Box::pin(async move { Ok(cors(endpoint(&node, leader, &path, serializable).await)) });
        }
        let counters = metrics::grpc_method(path);
        if require_leader::required(req.headers()) {
            if require_leader::known_leader(&self.node, &self.leader_lost).is_none() {
                return Box::pin(counted(counters, async { Ok(require_leader::refused()) }));
            }
            let (call, lost) = (self.inner.call(req), self.leader_lost.clone());
            let call = async move { Ok(call.await?.map(|b| Body::new(RequireLeader::new(b, lost)))) };
            return Box::pin(counted(counters, call));
        }
        Box::pin(counted(counters, self.inner.call(req)))
    }
}

/// A gRPC call (straight, or from the gateway), counted as started and, once its status is known, as
/// handled.
async fn counted<E>(
    method: Option<&'static GrpcMethod>,
    call: impl std::future::Future<Output = Result<http::Response<Body>, E>>,
) -> Result<http::Response<Body>, E> {
    let Some(method) = method else { return call.await };
    method.started();
    let resp = call.await?;
    // An error before any message comes "trailers-only": the status is in the headers.
    if let Some(code) = grpc_status(resp.headers()) {
        method.handled(code);
        return Ok(resp);
    }
    Ok(resp.map(|body| Body::new(Counted { inner: body, method: Some(method) })))
}

/// etcd's CORS headers (its `--cors` default, `*`), on every answer of the gateway and the HTTP
/// endpoints: a browser page may call them from any origin.
fn cors(mut resp: http::Response<Body>) -> http::Response<Body> {
    use http::header::{self, HeaderValue};
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    resp
}

/// Go's `http.NotFound`, as etcd answers a path it does not serve.
fn not_found() -> http::Response<Body> {
    response(http::StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "404 page not found\n".to_string())
}

/// etcd's JSON gateway's answer to a call it does not know.
fn gateway_not_found() -> http::Response<Body> {
    response(http::StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "Not Found\n".to_string())
}

fn gateway_bad_body(e: &str) -> http::Response<Body> {
    response(http::StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n"))
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    headers.get("grpc-status").map(|v| Code::from_bytes(v.as_bytes()))
}

/// A response body that counts its call as handled when the trailers (with grpc-status) go by.
struct Counted {
    inner: Body,
    /// Until the call is counted as handled.
    method: Option<&'static GrpcMethod>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().and_then(grpc_status),
            Poll::Ready(Some(Err(_))) => Some(Code::Internal),
            // Ended without a status: the client went away.
            Poll::Ready(None) => Some(Code::Cancelled),
            Poll::Pending => None,
        };
        if let (Some(code), Some(method)) = (code, code.and_then(|_| self.method.take())) {
            method.handled(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pub(super) fn response(status: http::StatusCode, content_type: &str, body: String) -> http::Response<Body> {
    let mut resp = http::Response::new(Body::new(body));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

/// The HTTP endpoints; `leader` is the leader as etcd would report it (`require_leader::known_leader`).
async fn endpoint(
    node: &RaftNode,
    leader: Option<u64>,
    path: &str,
    serializable: bool,
) -> http::Response<Body> {
    use http::StatusCode;
    match path {
        "/version" => {
            let v = serde_json::json!({ "etcdserver": ETCD_VERSION, "etcdcluster": ETCD_VERSION });
            response(StatusCode::OK, "application/json", v.to_string())
        }
        "/metrics" => response(StatusCode::OK, "text/plain; version=0.0.4", render(node, leader)),
        "/livez" => response(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match health(node, leader, false).await {
            Ok(()) => response(StatusCode::OK, "text/plain", "ok\n".into()),
            Err(reason) => response(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{reason}\n")),
        },
        _ => {
            let (status, health, reason) = match health(node, leader, serializable).await {
                Ok(()) => (StatusCode::OK, "true", String::new()),
                Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, "false", reason),
            };
            let body = serde_json::json!({ "health": health, "reason": reason });
            response(status, "application/json", body.to_string())
        }
    }
}

/// etcd's health check: a leader is known and a read goes through (linearizable unless `serializable`),
/// with etcd's reasons when not.
async fn health(node: &RaftNode, leader: Option<u64>, serializable: bool) -> Result<(), String> {
    if let Some((_, alarm)) = node.sm.alarms().first() {
        let name =
            crate::pb::etcdserverpb::AlarmType::try_from(*alarm).map_or("UNKNOWN", |a| a.as_str_name());
        return Err(format!("ALARM {name}"));
    }
    if leader.is_none() {
        return Err("RAFT NO LEADER".into());
    }
    if !serializable {
        match tokio::time::timeout(HEALTH_TIMEOUT, node.read_barrier()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("QGET ERROR:{e}")),
            Err(_) => return Err("QGET ERROR:context deadline exceeded".into()),
        }
    }
    Ok(())
}

/// The member's gauges (`leader` as in `endpoint`), then the process-wide counters and histograms.
fn render(node: &RaftNode, leader: Option<u64>) -> String {
    let mut out = String::new();
    let applied = node.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let o = &mut out;
    sample(
        o,
        "etcd_server_has_leader",
        "gauge",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        flag(leader.is_some()),
    );
    sample(
        o,
        "etcd_server_is_leader",
        "gauge",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        flag(leader == Some(node.id)),
    );
    sample(
        o,
        "etcd_server_is_learner",
        "gauge",
        "Whether or not this member is a learner. 1 if is, 0 otherwise.",
        flag(node.is_learner()),
    );
    sample(
        o,
        "etcd_server_proposals_committed_total",
        "gauge",
        "The total number of consensus proposals committed.",
        applied as f64,
    );
    sample(
        o,
        "etcd_server_proposals_applied_total",
        "gauge",
        "The total number of consensus proposals applied.",
        applied as f64,
    );
    let (size, in_use) = node.sm.db_size();
    sample(
        o,
        "etcd_mvcc_db_total_size_in_bytes",
        "gauge",
        "Total size of the underlying database physically allocated in bytes.",
        size as f64,
    );
    sample(
        o,
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "gauge",
        "Total size of the underlying database logically in use in bytes.",
        in_use as f64,
    );
    let (current, compacted, keys) =
        node.sm.read(|s| (s.current_revision(), s.compact_revision(), s.keys_total()));
    sample(
        o,
        "etcd_debugging_mvcc_current_revision",
        "gauge",
        "The current revision of store.",
        current as f64,
    );
    sample(
        o,
        "etcd_debugging_mvcc_compact_revision",
        "gauge",
        "The revision of the last compaction in store.",
        compacted as f64,
    );
    sample(o, "etcd_debugging_mvcc_keys_total", "gauge", "Total number of keys.", keys as f64);
    sample(
        o,
        "etcd_server_quota_backend_bytes",
        "gauge",
        "Current backend storage quota size in bytes.",
        node.quota_bytes as f64,
    );
    let version = crate::api::maintenance::ETCD_VERSION;
    let help = "Which version is running. 1 for 'server_version' label with current version.";
    metrics::info(o, "etcd_server_version", help, "server_version", version);
    let help = "Which version is running. 1 for 'cluster_version' label with current cluster version";
    let cluster_version = crate::api::maintenance::cluster_version();
    metrics::info(o, "etcd_cluster_version", help, "cluster_version", cluster_version);
    let help = "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.";
    metrics::info(o, "etcd_server_id", help, "server_id", &format!("{:x}", node.id));
    metrics::render_process(o);
    out
}
