//! Generates the gRPC stubs from proto/ with a vendored protoc, so a fresh machine builds with plain
//! `cargo build` and no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Write requests travel through the Raft log as these very types (bincode via serde), so no
        // second, hand-kept copy of every request shape is needed.
        .type_attribute(".etcdserverpb", "#[derive(serde::Serialize, serde::Deserialize)]")
        .type_attribute(".mvccpb", "#[derive(serde::Serialize, serde::Deserialize)]")
        // serde reads a `Vec<u8>` element by element: a put's key and value are read as one slice
        // instead (the same bincode bytes; decoding a 512 KiB value took ~50 ms unoptimised).
        .field_attribute(".etcdserverpb.PutRequest.key", "#[serde(with = \"serde_bytes\")]")
        .field_attribute(".etcdserverpb.PutRequest.value", "#[serde(with = \"serde_bytes\")]")
        // A key-value goes to every watcher of its key: `Bytes` makes each copy a reference count, not an
        // allocation and a memcpy of the value.
        .bytes(".mvccpb.KeyValue")
        .type_attribute(".authpb", "#[derive(serde::Serialize, serde::Deserialize)]")
        // The JSON gateway translates with these descriptors (proto3 JSON, etcd's grpc-gateway).
        .file_descriptor_set_path(std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("descriptors.bin"))
        .compile_protos(
            &[
                "proto/rpc.proto",
                "proto/v3lock.proto",
                "proto/v3election.proto",
                "proto/raft.proto",
                "proto/health.proto",
            ],
            &["proto"],
        )?;
    // The Watch service's server again, by hand: its responses leave as bytes encoded once for many
    // watchers (src/watch/encoded.rs), so its codec is not prost's. Clients use the generated one.
    let watch = tonic_build::manual::Method::builder()
        .name("watch")
        .route_name("Watch")
        .input_type("crate::pb::etcdserverpb::WatchRequest")
        .output_type("crate::watch::EncodedWatchResponse")
        .codec_path("crate::watch::WatchCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let service = tonic_build::manual::Service::builder().name("Watch").package("etcdserverpb").method(watch);
    tonic_build::manual::Builder::new().build_client(false).compile(&[service.build()]);
    Ok(())
}
