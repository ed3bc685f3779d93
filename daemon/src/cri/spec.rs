// STUB
use std::path::Path;
use berth_api::runtime::v1 as cri;
use serde_json::Value;
#[derive(Debug, Clone, Copy)] pub enum CgroupDriver { Cgroupfs, Systemd }
pub struct PodContext<'a> {
    pub sandbox_id: &'a str, pub config: &'a cri::PodSandboxConfig,
    pub netns: Option<&'a Path>, pub ipc_ns: Option<&'a Path>, pub uts_ns: Option<&'a Path>, pub pid_ns: Option<&'a Path>,
    pub resolv_conf: Option<&'a Path>, pub hostname_file: Option<&'a Path>, pub hosts_file: Option<&'a Path>, pub shm: Option<&'a Path>,
}
pub struct SpecOptions { pub cgroup_driver: CgroupDriver, pub apparmor: bool }
impl SpecOptions { pub fn detect() -> SpecOptions { todo!() } }
#[derive(Debug, thiserror::Error)] pub enum SpecError { #[error("{0}")] InvalidArgument(String) }
pub fn container_spec(_id: &str, _cfg: &cri::ContainerConfig, _pod: &PodContext, _image: &crate::tasks::spec::ContainerConfig, _rootfs: &Path, _opts: &SpecOptions) -> Result<Value, SpecError> { todo!() }
pub fn cgroups_path(_d: CgroupDriver, _parent: &str, _s: &str, _id: &str) -> Result<String, SpecError> { todo!() }
pub fn parse_signal(_s: &str) -> Option<i32> { todo!() }
pub fn linux_resources(_r: &cri::LinuxContainerResources) -> Result<Value, SpecError> { todo!() }
