//! gRPC definitions: berth's native API (images, content, snapshots, tasks,
//! system). The CRI runtime.v1 API joins here in the CRI issue.

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
