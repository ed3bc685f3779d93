//! `linux.resources` from the CRI resources (CreateContainer and
//! UpdateContainerResources), the cgroups path, and the oom_score_adj floor.

use std::collections::HashMap;

use berth_api::runtime::v1 as cri;
use oci_spec::runtime::{LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxResources};
use tracing::{debug, warn};

use super::{CgroupDriver, SpecError, SpecOptions, Who};

/// The daemon's own oom_score_adj: nothing it starts can go below it
/// without CAP_SYS_RESOURCE.
pub fn own_oom_score_adj() -> Result<i32, SpecError> {
    let s = std::fs::read_to_string("/proc/self/oom_score_adj")
        .map_err(|e| SpecError::Internal(format!("cannot read /proc/self/oom_score_adj: {e}")))?;
    s.trim()
        .parse()
        .map_err(|e| SpecError::Internal(format!("bad /proc/self/oom_score_adj {s:?}: {e}")))
}

/// The cgroupsPath a container (or the pod) gets: cgroupfs ->
/// "<parent>/<id>" (always absolute, HOST.md; default parent
/// "/berth/pods/<sandbox_id>"), systemd -> "<slice>:berth:<id>" from a
/// parent like "kubepods-burstable-podX.slice" (or a path ending in one;
/// default "berth.slice").
pub fn cgroups_path(
    driver: CgroupDriver,
    parent: &str,
    sandbox_id: &str,
    id: &str,
) -> Result<String, SpecError> {
    let bad = |m: String| SpecError::InvalidArgument(m);
    if id.is_empty() || id.contains('/') || id.contains(':') || id == "." || id == ".." {
        return Err(bad(format!("cgroup name {id:?} is not a valid id")));
    }
    let parent = parent.trim();
    match driver {
        CgroupDriver::Cgroupfs => {
            let trimmed = parent.trim_end_matches('/');
            let base = if trimmed.is_empty() {
                if sandbox_id.is_empty() || sandbox_id.contains('/') {
                    return Err(bad(format!("sandbox id {sandbox_id:?} is not valid")));
                }
                format!("/berth/pods/{sandbox_id}")
            } else if trimmed.starts_with('/') {
                trimmed.to_string()
            } else {
                format!("/{trimmed}")
            };
            if base.split('/').any(|c| c == "..") {
                return Err(bad(format!(
                    "linux.cgroup_parent {parent:?} must not contain \"..\""
                )));
            }
            Ok(format!("{base}/{id}"))
        }
        CgroupDriver::Systemd => {
            let slice = parent
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default();
            let slice = if slice.is_empty() {
                "berth.slice"
            } else {
                slice
            };
            if !slice.ends_with(".slice") || slice.contains(':') {
                return Err(bad(format!(
                    "linux.cgroup_parent {parent:?} is not a systemd slice (NAME.slice), as the systemd cgroup driver needs"
                )));
            }
            Ok(format!("{slice}:berth:{id}"))
        }
    }
}

fn valid_cpuset(s: &str) -> bool {
    s.split(',').all(|part| {
        let num = |x: &str| !x.is_empty() && x.chars().all(|c| c.is_ascii_digit());
        match part.trim().split_once('-') {
            Some((a, b)) => num(a) && num(b) && a.parse::<u64>().ok() <= b.parse::<u64>().ok(),
            None => num(part.trim()),
        }
    })
}

fn valid_page_size(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && matches!(unit, "KB" | "MB" | "GB" | "TB" | "PB")
}

/// linux.resources (without devices) from the CRI resources, validated.
pub(super) fn resources(
    who: &Who,
    r: Option<&cri::LinuxContainerResources>,
    opts: &SpecOptions,
) -> Result<LinuxResources, SpecError> {
    let mut out = LinuxResources::default();
    let Some(r) = r else { return Ok(out) };
    let f = |n: &str| format!("linux.resources.{n}");
    let mut cpu = LinuxCpu::default();
    if r.cpu_period < 0 || (r.cpu_period != 0 && !(1000..=1_000_000).contains(&r.cpu_period)) {
        return Err(who.invalid(
            &f("cpu_period"),
            format!("{} is outside [1000, 1000000] microseconds", r.cpu_period),
        ));
    }
    if r.cpu_quota < -1 || (r.cpu_quota > 0 && r.cpu_quota < 1000) {
        return Err(who.invalid(
            &f("cpu_quota"),
            format!(
                "{} must be -1 (unlimited) or at least 1000 microseconds",
                r.cpu_quota
            ),
        ));
    }
    if r.cpu_quota > 0 && r.cpu_period == 0 {
        return Err(who.invalid(&f("cpu_quota"), "a quota needs a cpu_period"));
    }
    if r.cpu_shares < 0 || (r.cpu_shares != 0 && !(2..=262_144).contains(&r.cpu_shares)) {
        return Err(who.invalid(
            &f("cpu_shares"),
            format!("{} is outside [2, 262144]", r.cpu_shares),
        ));
    }
    // The checks above make shares and period non-negative.
    if r.cpu_shares != 0 {
        cpu.set_shares(Some(r.cpu_shares as u64));
    }
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_period != 0 {
        cpu.set_period(Some(r.cpu_period as u64));
    }
    if !r.cpuset_cpus.is_empty() {
        if !valid_cpuset(&r.cpuset_cpus) {
            return Err(who.invalid(
                &f("cpuset_cpus"),
                format!("{:?} is not a CPU list like \"0-2,4\"", r.cpuset_cpus),
            ));
        }
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        if !valid_cpuset(&r.cpuset_mems) {
            return Err(who.invalid(
                &f("cpuset_mems"),
                format!("{:?} is not a node list like \"0-1\"", r.cpuset_mems),
            ));
        }
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    if cpu != LinuxCpu::default() {
        out.set_cpu(Some(cpu));
    }

    let mut memory = LinuxMemory::default();
    if r.memory_limit_in_bytes < 0 {
        return Err(who.invalid(
            &f("memory_limit_in_bytes"),
            format!("{} is negative", r.memory_limit_in_bytes),
        ));
    }
    if r.memory_swap_limit_in_bytes < -1 {
        return Err(who.invalid(
            &f("memory_swap_limit_in_bytes"),
            format!(
                "{} must be -1 (unlimited) or positive",
                r.memory_swap_limit_in_bytes
            ),
        ));
    }
    if r.memory_swap_limit_in_bytes > 0
        && r.memory_limit_in_bytes > 0
        && r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes
    {
        return Err(who.invalid(
            &f("memory_swap_limit_in_bytes"),
            format!(
                "{} (memory + swap) is below memory_limit_in_bytes {}",
                r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes
            ),
        ));
    }
    if r.memory_limit_in_bytes != 0 {
        memory.set_limit(Some(r.memory_limit_in_bytes));
        // memory + swap = memory: no swapping unless asked.
        if r.memory_swap_limit_in_bytes == 0 && opts.swap_controller {
            memory.set_swap(Some(r.memory_limit_in_bytes));
        }
    }
    if r.memory_swap_limit_in_bytes != 0 {
        if opts.swap_controller {
            memory.set_swap(Some(r.memory_swap_limit_in_bytes));
        } else {
            warn!("no swap accounting on this host: memory_swap_limit_in_bytes ignored");
        }
    }
    if memory != LinuxMemory::default() {
        out.set_memory(Some(memory));
    }

    let mut huge = Vec::new();
    for (i, h) in r.hugepage_limits.iter().enumerate() {
        if !valid_page_size(&h.page_size) {
            return Err(who.invalid(
                &format!("linux.resources.hugepage_limits[{i}].page_size"),
                format!("{:?} is not a page size like \"2MB\"", h.page_size),
            ));
        }
        let limit = i64::try_from(h.limit).map_err(|_| {
            who.invalid(
                &format!("linux.resources.hugepage_limits[{i}].limit"),
                format!("{} is too large", h.limit),
            )
        })?;
        let mut l = LinuxHugepageLimit::default();
        l.set_page_size(h.page_size.clone()).set_limit(limit);
        huge.push(l);
    }
    if !huge.is_empty() {
        if opts.hugetlb_controller {
            out.set_hugepage_limits(Some(huge));
        } else {
            warn!("no hugetlb cgroup controller: hugepage limits ignored");
        }
    }

    if !r.unified.is_empty() {
        if opts.cgroup_v2 {
            for k in r.unified.keys() {
                if k.is_empty() || k.contains('/') || !k.contains('.') {
                    return Err(
                        who.invalid(&f("unified"), format!("{k:?} is not a cgroup v2 file name"))
                    );
                }
            }
            let u: HashMap<String, String> = r.unified.clone().into_iter().collect();
            out.set_unified(Some(u));
        } else {
            // kubelet only sends these for cgroup v2 nodes; runc refuses
            // them on v1.
            debug!(keys = ?r.unified.keys().collect::<Vec<_>>(), "cgroup v1 host: unified resources ignored");
        }
    }
    Ok(out)
}

/// The OCI `LinuxResources` for `r`, validated as CreateContainer
/// validates it: what UpdateContainerResources hands the runtime. `who`
/// names the object in errors.
pub fn linux_resources(
    who: &str,
    r: &cri::LinuxContainerResources,
    opts: &SpecOptions,
) -> Result<LinuxResources, SpecError> {
    resources(&Who(who.to_string()), Some(r), opts)
}
