//! Task stats from the container's cgroup, as containerd's cgroups metrics protos:
//! `io.containerd.cgroups.v1.Metrics` on cgroup v1 (also the v1 controllers of a hybrid
//! layout) and `io.containerd.cgroups.v2.Metrics` on a pure cgroup v2 host.
//!
//! The cgroup is found from `/proc/<init pid>/cgroup`, falling back to the spec's
//! absolute `cgroupsPath`. Missing files are left at zero (a controller that is not
//! mounted, kernel memory accounting that is off, ...). Not filled in: hugetlb,
//! rdma, network and per-device names for blkio (major/minor only).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use protobuf::well_known_types::any::Any;
use protobuf::{Message, MessageField};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

pub fn is_unified(root: &Path) -> bool {
    root.join("cgroup.controllers").exists()
}

/// controller -> path inside its hierarchy ("" key: the v2 hierarchy).
pub fn parse_proc_cgroup(text: &str) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(ctls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctls.is_empty() {
            m.insert(String::new(), path.to_string());
            continue;
        }
        for c in ctls.split(',') {
            let c = c.strip_prefix("name=").unwrap_or(c);
            m.insert(c.to_string(), path.to_string());
        }
    }
    m
}

fn read_u64(p: &Path) -> u64 {
    fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A limit file: "max" (v2) means no limit (0).
fn read_limit(p: &Path) -> u64 {
    match fs::read_to_string(p) {
        Ok(s) if s.trim() == "max" => 0,
        Ok(s) => s.trim().parse().unwrap_or(0),
        Err(_) => 0,
    }
}

/// "key value" lines.
pub fn read_kv(p: &Path) -> HashMap<String, u64> {
    fs::read_to_string(p)
        .map(|s| parse_kv(&s))
        .unwrap_or_default()
}

pub fn parse_kv(s: &str) -> HashMap<String, u64> {
    s.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let k = f.next()?;
            let v = f.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// Where the container's cgroup is, per controller (v1) or as one dir (v2).
pub enum CgroupDirs {
    V1(HashMap<String, PathBuf>),
    V2(PathBuf),
}

pub fn locate(root: &Path, pid: Option<u32>, cgroups_path: Option<&str>) -> Option<CgroupDirs> {
    let unified = is_unified(root);
    let from_proc = pid
        .filter(|p| *p > 0)
        .and_then(|p| fs::read_to_string(format!("/proc/{p}/cgroup")).ok())
        .map(|t| parse_proc_cgroup(&t));
    let rel = |p: &str| root.to_path_buf().join(p.trim_start_matches('/'));
    if unified {
        let p = from_proc
            .as_ref()
            .and_then(|m| m.get("").cloned())
            .or_else(|| {
                cgroups_path
                    .filter(|c| c.starts_with('/'))
                    .map(str::to_string)
            })?;
        return Some(CgroupDirs::V2(rel(&p)));
    }
    let mut dirs = HashMap::new();
    for ctl in ["cpu", "cpuacct", "memory", "pids", "blkio"] {
        let p = from_proc
            .as_ref()
            .and_then(|m| m.get(ctl).cloned())
            .or_else(|| {
                cgroups_path
                    .filter(|c| c.starts_with('/'))
                    .map(str::to_string)
            });
        if let Some(p) = p {
            let d = root.join(ctl).join(p.trim_start_matches('/'));
            if d.is_dir() {
                dirs.insert(ctl.to_string(), d);
            }
        }
    }
    if dirs.is_empty() {
        None
    } else {
        Some(CgroupDirs::V1(dirs))
    }
}

pub fn collect(dirs: &CgroupDirs) -> Any {
    let (type_url, value) = match dirs {
        CgroupDirs::V1(d) => {
            let m = v1_metrics(d);
            ("io.containerd.cgroups.v1.Metrics", m.write_to_bytes())
        }
        CgroupDirs::V2(d) => {
            let m = v2_metrics(d);
            ("io.containerd.cgroups.v2.Metrics", m.write_to_bytes())
        }
    };
    Any {
        type_url: type_url.to_string(),
        value: value.unwrap_or_default(),
        ..Default::default()
    }
}

/// USER_HZ: cpuacct.stat counts in clock ticks.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn v1_metrics(d: &HashMap<String, PathBuf>) -> v1::Metrics {
    let mut m = v1::Metrics::new();
    if let Some(p) = d.get("pids") {
        m.pids = MessageField::some(v1::PidsStat {
            current: read_u64(&p.join("pids.current")),
            limit: read_limit(&p.join("pids.max")),
            ..Default::default()
        });
    }
    let mut cpu = v1::CPUStat::new();
    if let Some(p) = d.get("cpuacct") {
        let ns_per_tick = 1_000_000_000 / clock_ticks();
        let st = read_kv(&p.join("cpuacct.stat"));
        cpu.usage = MessageField::some(v1::CPUUsage {
            total: read_u64(&p.join("cpuacct.usage")),
            user: st.get("user").copied().unwrap_or(0) * ns_per_tick,
            kernel: st.get("system").copied().unwrap_or(0) * ns_per_tick,
            per_cpu: fs::read_to_string(p.join("cpuacct.usage_percpu"))
                .map(|s| {
                    s.split_whitespace()
                        .filter_map(|v| v.parse().ok())
                        .collect()
                })
                .unwrap_or_default(),
            ..Default::default()
        });
    }
    if let Some(p) = d.get("cpu") {
        let st = read_kv(&p.join("cpu.stat"));
        cpu.throttling = MessageField::some(v1::Throttle {
            periods: st.get("nr_periods").copied().unwrap_or(0),
            throttled_periods: st.get("nr_throttled").copied().unwrap_or(0),
            throttled_time: st.get("throttled_time").copied().unwrap_or(0),
            ..Default::default()
        });
    }
    m.cpu = MessageField::some(cpu);
    if let Some(p) = d.get("memory") {
        let st = read_kv(&p.join("memory.stat"));
        let g = |k: &str| st.get(k).copied().unwrap_or(0);
        let entry = |prefix: &str| {
            MessageField::some(v1::MemoryEntry {
                usage: read_u64(&p.join(format!("{prefix}.usage_in_bytes"))),
                limit: read_u64(&p.join(format!("{prefix}.limit_in_bytes"))),
                max: read_u64(&p.join(format!("{prefix}.max_usage_in_bytes"))),
                failcnt: read_u64(&p.join(format!("{prefix}.failcnt"))),
                ..Default::default()
            })
        };
        m.memory = MessageField::some(v1::MemoryStat {
            cache: g("cache"),
            rss: g("rss"),
            rss_huge: g("rss_huge"),
            mapped_file: g("mapped_file"),
            dirty: g("dirty"),
            writeback: g("writeback"),
            pg_pg_in: g("pgpgin"),
            pg_pg_out: g("pgpgout"),
            pg_fault: g("pgfault"),
            pg_maj_fault: g("pgmajfault"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            hierarchical_memory_limit: g("hierarchical_memory_limit"),
            hierarchical_swap_limit: g("hierarchical_memsw_limit"),
            total_cache: g("total_cache"),
            total_rss: g("total_rss"),
            total_rss_huge: g("total_rss_huge"),
            total_mapped_file: g("total_mapped_file"),
            total_dirty: g("total_dirty"),
            total_writeback: g("total_writeback"),
            total_pg_pg_in: g("total_pgpgin"),
            total_pg_pg_out: g("total_pgpgout"),
            total_pg_fault: g("total_pgfault"),
            total_pg_maj_fault: g("total_pgmajfault"),
            total_inactive_anon: g("total_inactive_anon"),
            total_active_anon: g("total_active_anon"),
            total_inactive_file: g("total_inactive_file"),
            total_active_file: g("total_active_file"),
            total_unevictable: g("total_unevictable"),
            usage: entry("memory"),
            swap: entry("memory.memsw"),
            kernel: entry("memory.kmem"),
            kernel_tcp: entry("memory.kmem.tcp"),
            ..Default::default()
        });
        let oom = read_kv(&p.join("memory.oom_control"));
        m.memory_oom_control = MessageField::some(v1::MemoryOomControl {
            oom_kill_disable: oom.get("oom_kill_disable").copied().unwrap_or(0),
            under_oom: oom.get("under_oom").copied().unwrap_or(0),
            oom_kill: oom.get("oom_kill").copied().unwrap_or(0),
            ..Default::default()
        });
    }
    if let Some(p) = d.get("blkio") {
        let f = |name: &str| -> Vec<v1::BlkIOEntry> {
            let primary = blkio_entries(&p.join(format!("blkio.{name}")));
            if primary.is_empty() {
                blkio_entries(&p.join(format!("blkio.throttle.{name}")))
            } else {
                primary
            }
        };
        m.blkio = MessageField::some(v1::BlkIOStat {
            io_service_bytes_recursive: f("io_service_bytes_recursive"),
            io_serviced_recursive: f("io_serviced_recursive"),
            io_queued_recursive: blkio_entries(&p.join("blkio.io_queued_recursive")),
            io_service_time_recursive: blkio_entries(&p.join("blkio.io_service_time_recursive")),
            io_wait_time_recursive: blkio_entries(&p.join("blkio.io_wait_time_recursive")),
            io_merged_recursive: blkio_entries(&p.join("blkio.io_merged_recursive")),
            io_time_recursive: blkio_entries(&p.join("blkio.time_recursive")),
            sectors_recursive: blkio_entries(&p.join("blkio.sectors_recursive")),
            ..Default::default()
        });
    }
    m
}

/// "MAJ:MIN [Op] value" lines ("Total" lines skipped).
pub fn parse_blkio(s: &str) -> Vec<v1::BlkIOEntry> {
    let mut out = Vec::new();
    for l in s.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (dev, op, val) = match f.as_slice() {
            [dev, op, val] => (*dev, *op, *val),
            [dev, val] if dev.contains(':') => (*dev, "", *val),
            _ => continue,
        };
        let Some((maj, min)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor), Ok(value)) = (maj.parse(), min.parse(), val.parse()) else {
            continue;
        };
        out.push(v1::BlkIOEntry {
            op: op.to_string(),
            major,
            minor,
            value,
            ..Default::default()
        });
    }
    out
}

fn blkio_entries(p: &Path) -> Vec<v1::BlkIOEntry> {
    fs::read_to_string(p)
        .map(|s| parse_blkio(&s))
        .unwrap_or_default()
}

fn v2_metrics(d: &Path) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    m.pids = MessageField::some(v2::PidsStat {
        current: read_u64(&d.join("pids.current")),
        limit: read_limit(&d.join("pids.max")),
        ..Default::default()
    });
    let cpu = read_kv(&d.join("cpu.stat"));
    let c = |k: &str| cpu.get(k).copied().unwrap_or(0);
    m.cpu = MessageField::some(v2::CPUStat {
        usage_usec: c("usage_usec"),
        user_usec: c("user_usec"),
        system_usec: c("system_usec"),
        nr_periods: c("nr_periods"),
        nr_throttled: c("nr_throttled"),
        throttled_usec: c("throttled_usec"),
        nr_bursts: c("nr_bursts"),
        burst_usec: c("burst_usec"),
        ..Default::default()
    });
    let st = read_kv(&d.join("memory.stat"));
    let g = |k: &str| st.get(k).copied().unwrap_or(0);
    m.memory = MessageField::some(v2::MemoryStat {
        anon: g("anon"),
        file: g("file"),
        kernel_stack: g("kernel_stack"),
        slab: g("slab"),
        sock: g("sock"),
        shmem: g("shmem"),
        file_mapped: g("file_mapped"),
        file_dirty: g("file_dirty"),
        file_writeback: g("file_writeback"),
        anon_thp: g("anon_thp"),
        inactive_anon: g("inactive_anon"),
        active_anon: g("active_anon"),
        inactive_file: g("inactive_file"),
        active_file: g("active_file"),
        unevictable: g("unevictable"),
        slab_reclaimable: g("slab_reclaimable"),
        slab_unreclaimable: g("slab_unreclaimable"),
        pgfault: g("pgfault"),
        pgmajfault: g("pgmajfault"),
        usage: read_u64(&d.join("memory.current")),
        usage_limit: read_limit(&d.join("memory.max")),
        swap_usage: read_u64(&d.join("memory.swap.current")),
        swap_limit: read_limit(&d.join("memory.swap.max")),
        max_usage: read_u64(&d.join("memory.peak")),
        ..Default::default()
    });
    let ev = read_kv(&d.join("memory.events"));
    let e = |k: &str| ev.get(k).copied().unwrap_or(0);
    m.memory_events = MessageField::some(v2::MemoryEvents {
        low: e("low"),
        high: e("high"),
        max: e("max"),
        oom: e("oom"),
        oom_kill: e("oom_kill"),
        ..Default::default()
    });
    m.io = MessageField::some(v2::IOStat {
        usage: fs::read_to_string(d.join("io.stat"))
            .map(|s| parse_io_stat(&s))
            .unwrap_or_default(),
        ..Default::default()
    });
    m
}

/// cgroup v2 io.stat: "MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...".
pub fn parse_io_stat(s: &str) -> Vec<v2::IOEntry> {
    let mut out = Vec::new();
    for l in s.lines() {
        let mut f = l.split_whitespace();
        let Some((maj, min)) = f.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse(), min.parse()) else {
            continue;
        };
        let mut e = v2::IOEntry {
            major,
            minor,
            ..Default::default()
        };
        for kv in f {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v = v.parse().unwrap_or(0);
            match k {
                "rbytes" => e.rbytes = v,
                "wbytes" => e.wbytes = v,
                "rios" => e.rios = v,
                "wios" => e.wios = v,
                _ => {}
            }
        }
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_hybrid() {
        let m = parse_proc_cgroup(
            "12:pids:/default/c1\n\
             4:cpu,cpuacct:/default/c1\n\
             3:memory:/default/c1\n\
             1:name=systemd:/default/c1\n\
             0::/default/c1\n",
        );
        assert_eq!(m["cpu"], "/default/c1");
        assert_eq!(m["cpuacct"], "/default/c1");
        assert_eq!(m["memory"], "/default/c1");
        assert_eq!(m["systemd"], "/default/c1");
        assert_eq!(m[""], "/default/c1");
    }

    #[test]
    fn blkio_and_io_stat() {
        let e = parse_blkio("8:0 Read 4096\n8:0 Write 0\nTotal 4096\n");
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].major, e[0].minor, e[0].op.as_str(), e[0].value),
            (8, 0, "Read", 4096)
        );
        let io = parse_io_stat("259:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n");
        assert_eq!(
            (io[0].rbytes, io[0].wbytes, io[0].rios, io[0].wios),
            (10, 20, 1, 2)
        );
    }

    #[test]
    fn v1_from_fake_tree() {
        let d = tempfile::tempdir().unwrap();
        let mut dirs = HashMap::new();
        for ctl in ["memory", "cpuacct", "cpu", "pids"] {
            let p = d.path().join(ctl);
            fs::create_dir_all(&p).unwrap();
            dirs.insert(ctl.to_string(), p);
        }
        fs::write(d.path().join("memory/memory.usage_in_bytes"), "1048576\n").unwrap();
        fs::write(d.path().join("memory/memory.limit_in_bytes"), "2097152\n").unwrap();
        fs::write(
            d.path().join("memory/memory.stat"),
            "rss 4096\ntotal_rss 8192\n",
        )
        .unwrap();
        fs::write(d.path().join("cpuacct/cpuacct.usage"), "123456\n").unwrap();
        fs::write(d.path().join("cpuacct/cpuacct.usage_percpu"), "100 200 \n").unwrap();
        fs::write(
            d.path().join("cpu/cpu.stat"),
            "nr_periods 3\nnr_throttled 1\nthrottled_time 9\n",
        )
        .unwrap();
        fs::write(d.path().join("pids/pids.current"), "2\n").unwrap();
        fs::write(d.path().join("pids/pids.max"), "max\n").unwrap();
        let any = collect(&CgroupDirs::V1(dirs));
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let m = v1::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.memory.usage.usage, 1_048_576);
        assert_eq!(m.memory.usage.limit, 2_097_152);
        assert_eq!((m.memory.rss, m.memory.total_rss), (4096, 8192));
        assert_eq!(m.cpu.usage.total, 123_456);
        assert_eq!(m.cpu.usage.per_cpu, vec![100, 200]);
        assert_eq!(m.cpu.throttling.throttled_time, 9);
        assert_eq!((m.pids.current, m.pids.limit), (2, 0));
    }
}
