// STUB
use std::path::{Path, PathBuf};
#[derive(Debug, Clone)] pub enum CgroupLayout { V1 { root: PathBuf }, V2 { root: PathBuf } }
impl CgroupLayout { pub fn detect() -> CgroupLayout { todo!() } }
#[derive(Default, Clone, Debug)] pub struct CgroupStats { pub timestamp_ns: i64, pub cpu_usage_ns: Option<u64>, pub memory_usage_bytes: Option<u64>, pub memory_working_set_bytes: Option<u64>, pub memory_rss_bytes: Option<u64>, pub page_faults: Option<u64>, pub major_page_faults: Option<u64>, pub memory_available_bytes: Option<u64>, pub pids: Option<u64> }
#[derive(Debug, thiserror::Error)] pub enum StatsError { #[error("x")] NotFound }
pub fn read(_l: &CgroupLayout, _p: &str) -> Result<CgroupStats, StatsError> { todo!() }
pub fn filesystem_usage(_d: &Path) -> std::io::Result<(u64, u64)> { todo!() }
