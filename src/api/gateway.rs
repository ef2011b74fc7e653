//! etcd's JSON gateway (grpc-gateway): `POST /v3/kv/put` with `{"key": "Zm9v", "value": "YmFy"}`, so
//! the `curl` examples of etcd's documentation work. Each call becomes a gRPC call to the same services
//! (learner rules, metrics and all): the JSON body is turned into the request message with the protos'
//! descriptors, and the answer back into proto3 JSON the way etcd's gateway writes it (the proto field
//! names, 64-bit integers as strings, bytes in base64, defaults left out). Streaming calls (`/v3/watch`,
//! `/v3/lease/keepalive`, `/v3/election/observe`, `/v3/maintenance/snapshot`) answer one
//! `{"result": ...}` line per message. As grpc-gateway does, the request stream is closed after the
//! body's messages, and each service decides what that means as etcd's does: a keepalive answers and
//! ends, a watch goes on for as long as the client keeps the connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor, SerializeOptions};
use tonic::body::Body;
use tonic::Code;

use super::http::response;

/// Gateway path → (gRPC service, method), as etcd's protos annotate them.
const ROUTES: &[(&str, &str, &str)] = &[
    ("/v3/kv/range", "etcdserverpb.KV", "Range"),
    ("/v3/kv/put", "etcdserverpb.KV", "Put"),
    ("/v3/kv/deleterange", "etcdserverpb.KV", "DeleteRange"),
    ("/v3/kv/txn", "etcdserverpb.KV", "Txn"),
    ("/v3/kv/compaction", "etcdserverpb.KV", "Compact"),
    ("/v3/watch", "etcdserverpb.Watch", "Watch"),
    ("/v3/lease/grant", "etcdserverpb.Lease", "LeaseGrant"),
    ("/v3/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("/v3/kv/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("/v3/lease/keepalive", "etcdserverpb.Lease", "LeaseKeepAlive"),
    ("/v3/lease/timetolive", "etcdserverpb.Lease", "LeaseTimeToLive"),
    ("/v3/kv/lease/timetolive", "etcdserverpb.Lease", "LeaseTimeToLive"),
    ("/v3/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("/v3/kv/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("/v3/cluster/member/add", "etcdserverpb.Cluster", "MemberAdd"),
    ("/v3/cluster/member/remove", "etcdserverpb.Cluster", "MemberRemove"),
    ("/v3/cluster/member/update", "etcdserverpb.Cluster", "MemberUpdate"),
    ("/v3/cluster/member/list", "etcdserverpb.Cluster", "MemberList"),
    ("/v3/cluster/member/promote", "etcdserverpb.Cluster", "MemberPromote"),
    ("/v3/maintenance/alarm", "etcdserverpb.Maintenance", "Alarm"),
    ("/v3/maintenance/status", "etcdserverpb.Maintenance", "Status"),
    ("/v3/maintenance/defragment", "etcdserverpb.Maintenance", "Defragment"),
    ("/v3/maintenance/hash", "etcdserverpb.Maintenance", "Hash"),
    ("/v3/maintenance/snapshot", "etcdserverpb.Maintenance", "Snapshot"),
    ("/v3/maintenance/transfer-leadership", "etcdserverpb.Maintenance", "MoveLeader"),
    ("/v3/auth/enable", "etcdserverpb.Auth", "AuthEnable"),
    ("/v3/auth/disable", "etcdserverpb.Auth", "AuthDisable"),
    ("/v3/auth/status", "etcdserverpb.Auth", "AuthStatus"),
    ("/v3/auth/authenticate", "etcdserverpb.Auth", "Authenticate"),
    ("/v3/auth/user/add", "etcdserverpb.Auth", "UserAdd"),
    ("/v3/auth/user/get", "etcdserverpb.Auth", "UserGet"),
    ("/v3/auth/user/list", "etcdserverpb.Auth", "UserList"),
    ("/v3/auth/user/delete", "etcdserverpb.Auth", "UserDelete"),
    ("/v3/auth/user/changepw", "etcdserverpb.Auth", "UserChangePassword"),
    ("/v3/auth/user/grant", "etcdserverpb.Auth", "UserGrantRole"),
    ("/v3/auth/user/revoke", "etcdserverpb.Auth", "UserRevokeRole"),
    ("/v3/auth/role/add", "etcdserverpb.Auth", "RoleAdd"),
    ("/v3/auth/role/get", "etcdserverpb.Auth", "RoleGet"),
    ("/v3/auth/role/list", "etcdserverpb.Auth", "RoleList"),
    ("/v3/auth/role/delete", "etcdserverpb.Auth", "RoleDelete"),
    ("/v3/auth/role/grant", "etcdserverpb.Auth", "RoleGrantPermission"),
    ("/v3/auth/role/revoke", "etcdserverpb.Auth", "RoleRevokePermission"),
    ("/v3/lock/lock", "v3lockpb.Lock", "Lock"),
    ("/v3/lock/unlock", "v3lockpb.Lock", "Unlock"),
    ("/v3/election/campaign", "v3electionpb.Election", "Campaign"),
    ("/v3/election/proclaim", "v3electionpb.Election", "Proclaim"),
    ("/v3/election/leader", "v3electionpb.Election", "Leader"),
    ("/v3/election/observe", "v3electionpb.Election", "Observe"),
    ("/v3/election/resign", "v3electionpb.Election", "Resign"),
];

/// The gRPC method behind a gateway path (etcd 3.3's `/v3beta/` prefix too).
pub fn method(path: &str) -> Option<MethodDescriptor> {
    let path = path.strip_prefix("/v3beta/").map_or_else(|| path.to_string(), |rest| format!("/v3/{rest}"));
    let (_, service, name) = ROUTES.iter().find(|(p, _, _)| *p == path)?;
    crate::pb::descriptors()?.get_service_by_name(service)?.methods().find(|m| m.name() == *name)
}

/// grpc-gateway's HTTP status for a gRPC code.
fn http_status(code: Code) -> http::StatusCode {
    use http::StatusCode as S;
    match code {
        Code::Ok => S::OK,
        Code::Cancelled => S::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => S::BAD_REQUEST,
        Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
        Code::NotFound => S::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => S::CONFLICT,
        Code::PermissionDenied => S::FORBIDDEN,
        Code::Unauthenticated => S::UNAUTHORIZED,
        Code::ResourceExhausted => S::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => S::PRECONDITION_FAILED,
        Code::Unimplemented => S::NOT_IMPLEMENTED,
        Code::Unavailable => S::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => S::INTERNAL_SERVER_ERROR,
    }
}

/// etcd's gateway error body, its fields in etcd's order.
pub fn error(code: Code, message: &str) -> http::Response<Body> {
    let body = serde_json::json!({ "error": message, "code": code as i32, "message": message });
    response(http_status(code), "application/json", body.to_string())
}

/// Every JSON value in `body` (a streaming call may send several), as request messages in gRPC frames.
fn frames(input: &MessageDescriptor, body: &[u8]) -> Result<Bytes, String> {
    let mut out = BytesMut::new();
    let mut put = |msg: DynamicMessage| {
        let msg = msg.encode_to_vec();
        out.extend_from_slice(&[0]);
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(&msg);
    };
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    if text.trim().is_empty() {
        put(DynamicMessage::new(input.clone()));
    }
    for value in serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>() {
        let value = value.map_err(|e| e.to_string())?;
        put(DynamicMessage::deserialize(input.clone(), value).map_err(|e| e.to_string())?);
    }
    Ok(out.freeze())
}

/// Takes the next whole message out of gRPC frames in `buf`, if it holds one.
fn next_message(buf: &mut BytesMut) -> Option<BytesMut> {
    let len = u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    buf.advance(5);
    Some(buf.split_to(len))
}

/// One response message as etcd's gateway writes it.
fn to_json(output: &MessageDescriptor, msg: &[u8]) -> Result<serde_json::Value, String> {
    let msg = DynamicMessage::decode(output.clone(), msg).map_err(|e| e.to_string())?;
    let options = SerializeOptions::new().use_proto_field_name(true).stringify_64_bit_integers(true);
    msg.serialize_with_options(serde_json::value::Serializer, &options).map_err(|e| e.to_string())
}

/// The gRPC call for a gateway request's JSON `body`; the gateway's error answer if the JSON is bad.
///
/// The caller's token travels as grpc-gateway sends it: the HTTP `Authorization` header becomes the
/// call's `authorization` metadata, which the services read as etcd does.
pub fn grpc_request(
    method: &MethodDescriptor,
    body: &[u8],
    authorization: Option<http::HeaderValue>,
) -> Result<http::Request<Body>, (Code, String)> {
    let data = frames(&method.input(), body).map_err(|e| (Code::InvalidArgument, e))?;
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let mut req = http::Request::new(Body::new(http_body_util::Full::new(data)));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = path.parse().map_err(|_| (Code::Internal, "bad method path".to_string()))?;
    *req.version_mut() = http::Version::HTTP_2;
    let headers = req.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    if let Some(token) = authorization {
        headers.insert(http::header::AUTHORIZATION, token);
    }
    Ok(req)
}

/// Turns the gRPC response into the gateway's: one JSON object for a unary call, a line per message for
/// a streaming one.
pub async fn json_reply(method: &MethodDescriptor, resp: http::Response<Body>) -> http::Response<Body> {
    if let Some(status) = tonic::Status::from_header_map(resp.headers()) {
        if status.code() != Code::Ok {
            return error(status.code(), status.message());
        }
    }
    let output = method.output();
    if method.is_server_streaming() {
        let lines = Lines { inner: resp.into_body(), buf: BytesMut::new(), output, done: false };
        let mut out = http::Response::new(Body::new(lines));
        out.headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        return out;
    }
    let collected = match resp.into_body().collect().await {
        Ok(c) => c,
        Err(e) => return error(Code::Internal, &e.to_string()),
    };
    if let Some(status) = collected.trailers().and_then(tonic::Status::from_header_map) {
        if status.code() != Code::Ok {
            return error(status.code(), status.message());
        }
    }
    let Some(msg) = next_message(&mut BytesMut::from(collected.to_bytes())) else {
        return error(Code::Internal, "no response message");
    };
    match to_json(&output, &msg) {
        Ok(v) => response(http::StatusCode::OK, "application/json", v.to_string()),
        Err(e) => error(Code::Internal, &e),
    }
}

/// A streaming response as JSON lines: `{"result": message}` per message, `{"error": ...}` at a failure.
struct Lines {
    inner: Body,
    buf: BytesMut,
    output: MessageDescriptor,
    done: bool,
}

impl Lines {
    /// The next complete message in the buffer, as a line.
    fn next_line(&mut self) -> Option<Bytes> {
        let msg = next_message(&mut self.buf)?;
        let line = match to_json(&self.output, &msg) {
            Ok(v) => serde_json::json!({ "result": v }),
            Err(e) => serde_json::json!({ "error": { "grpc_code": Code::Internal as i32, "message": e } }),
        };
        Some(Bytes::from(format!("{line}\n")))
    }
}

impl http_body::Body for Lines {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        loop {
            if let Some(line) = self.next_line() {
                return Poll::Ready(Some(Ok(Frame::data(line))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.done = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.buf.extend_from_slice(&data),
                    Err(frame) => {
                        self.done = true;
                        let failed = frame.trailers_ref().and_then(tonic::Status::from_header_map);
                        if let Some(s) = failed.filter(|s| s.code() != Code::Ok) {
                            let e = serde_json::json!({ "error": {
                                "grpc_code": s.code() as i32,
                                "http_code": http_status(s.code()).as_u16(),
                                "message": s.message(),
                                "http_status": http_status(s.code()).canonical_reason().unwrap_or(""),
                            }});
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!("{e}\n"))))));
                        }
                    }
                },
            }
        }
    }
}
