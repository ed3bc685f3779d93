// STUB
use std::path::{Path, PathBuf};
use berth_api::runtime::v1 as cri;
pub struct PodFiles { pub resolv_conf: PathBuf, pub hostname: PathBuf, pub hosts: PathBuf }
pub fn write_pod_files(_d: &Path, _h: &str, _dns: Option<&cri::DnsConfig>, _hn: bool, _r: &Path, _hh: &Path) -> std::io::Result<PodFiles> { todo!() }
pub fn mount_shm(_d: &Path) -> std::io::Result<PathBuf> { todo!() }
pub fn unmount_shm(_d: &Path) -> std::io::Result<()> { todo!() }
