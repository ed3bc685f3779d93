//! gRPC definitions: berth's native API (images, content, snapshots, tasks,
//! system) and the Kubernetes CRI `runtime.v1` API (`runtime::v1`).

pub mod images {
    pub mod v1 {
        tonic::include_proto!("berth.images.v1");
    }
}

pub mod content {
    pub mod v1 {
        tonic::include_proto!("berth.content.v1");
    }
}

pub mod system {
    pub mod v1 {
        tonic::include_proto!("berth.system.v1");
    }
}

pub mod snapshots {
    pub mod v1 {
        tonic::include_proto!("berth.snapshots.v1");
    }
}

pub mod tasks {
    // RunResponse's oneof carries a whole Task in one arm and a few bytes in
    // the others; it is built once per message, so boxing buys nothing.
    #[allow(clippy::large_enum_variant)]
    pub mod v1 {
        tonic::include_proto!("berth.tasks.v1");
    }
}

/// The Kubernetes Container Runtime Interface, package `runtime.v1`
/// (`RuntimeService` and `ImageService`), generated from berth's copy of
/// upstream's `api.proto` (`proto/runtime/v1/api.proto`), whose names, field
/// numbers and types are the wire contract with kubelet and crictl.
pub mod runtime {
    // The doc comments are upstream's proto comments, written as plain text
    // rather than Markdown (e.g. PullImageResponse.image_ref's list).
    #[allow(clippy::doc_lazy_continuation)]
    pub mod v1 {
        tonic::include_proto!("runtime.v1");

        /// The encoded `FileDescriptorSet` of `runtime/v1/api.proto`, as
        /// compiled by build.rs (for tests and gRPC reflection).
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/runtime_v1_descriptor.bin"));
    }
}
