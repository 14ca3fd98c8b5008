//! Generated protobuf and gRPC code for `keyward.v1`, and its descriptor set.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("keyward.v1");

/// The encoded descriptor set of `proto/`, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/keyward_descriptor.bin"));
