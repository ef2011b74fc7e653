//! Generated protobuf and gRPC code (see build.rs and proto/).
#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
/// The Watch server with its own codec (build.rs; the client is in `etcdserverpb`).
pub mod watch_encoded {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.Watch.rs"));
}
/// gRPC's health checking service.
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}
pub mod concordraft {
    tonic::include_proto!("concordraft");
}

/// The descriptors of every message and service above, for the JSON gateway and the gRPC metrics.
pub fn descriptors() -> Option<&'static prost_reflect::DescriptorPool> {
    static POOL: std::sync::LazyLock<Option<prost_reflect::DescriptorPool>> =
        std::sync::LazyLock::new(|| {
            prost_reflect::DescriptorPool::decode(
                &include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"))[..],
            )
            .ok()
        });
    POOL.as_ref()
}
