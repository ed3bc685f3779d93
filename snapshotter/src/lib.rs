//! Overlay snapshotter and layer application. Filled in by the snapshotter issue.
