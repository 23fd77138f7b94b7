//! The Switchyard gRPC contract: generated prost messages and tonic clients/servers.
//!
//! Only this crate and the `convert` modules of `control` and `worker` know these
//! types; routing code and the store use their own domain types.
#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("switchyard.v1");
}

/// Encoded `FileDescriptorSet` for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));

pub mod channel;

pub use v1::*;
