//! The Kubernetes CRI (`runtime.v1`) served on berthd's socket, as thin layers
//! over berth's own services (one image store: the CRI sees what berthctl sees).

pub mod image;
pub mod podfiles;
pub mod podns;
pub mod stats;
