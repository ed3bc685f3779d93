//! gRPC definitions: berth's native API (images, content, system). The CRI
//! runtime.v1 API joins here in the CRI issue.

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
