// STUB
use std::path::{Path, PathBuf};
pub struct PodNamespaces { pub ipc: Option<PathBuf>, pub uts: Option<PathBuf> }
#[derive(Debug, thiserror::Error)] pub enum PodNsError { #[error("x")] X }
pub async fn pin(_dir: &Path, _id: &str, _ipc: bool, _uts: Option<&str>) -> Result<PodNamespaces, PodNsError> { todo!() }
pub async fn unpin(_dir: &Path, _id: &str) -> Result<(), PodNsError> { todo!() }
