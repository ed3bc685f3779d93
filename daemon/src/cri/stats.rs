//! Container and pod resource usage read straight from cgroupfs, with the
//! semantics containerd's CRI plugin and cAdvisor use (so kubelet's eviction
//! and `kubectl top` numbers agree with other runtimes):
//!
//! - working set = usage - inactive_file, clamped at 0;
//! - available = limit - working set, only when a limit is set;
//! - RSS = `total_rss` (v1) or `anon` (v2).
//!
//! Both layouts are supported: cgroup v1 (one hierarchy per controller under
//! `<root>/<controller>`; a hybrid host's `unified` cgroup2 mount carries no
//! controller we read, so hybrid counts as v1) and the unified v2 hierarchy.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// A v1 `memory.limit_in_bytes` at or above this is "no limit": the kernel
/// reports an unlimited cgroup as `PAGE_COUNTER_MAX * PAGE_SIZE`, just under
/// `i64::MAX`, and no real limit comes anywhere near 4 EiB.
const V1_UNLIMITED_THRESHOLD: u64 = (i64::MAX as u64) / 2;

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The cgroup does not exist (the container never started or is gone).
    #[error("cgroup {0} not found")]
    NotFound(String),
    #[error("invalid cgroups path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("reading {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing {}: unexpected value {value:?}", path.display())]
    Parse { path: PathBuf, value: String },
}

/// Where the cgroup hierarchies are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// One hierarchy per controller at `<root>/<controller>` (e.g.
    /// `/sys/fs/cgroup/memory`).
    V1 { root: PathBuf },
    /// The unified hierarchy at `root`.
    V2 { root: PathBuf },
}

impl CgroupLayout {
    /// v2 when `/sys/fs/cgroup` itself is a cgroup2 filesystem, else v1
    /// (which includes the hybrid layout, whose cgroup2 mount sits at
    /// `/sys/fs/cgroup/unified` and holds none of the controllers we read).
    pub fn detect() -> CgroupLayout {
        let root = PathBuf::from("/sys/fs/cgroup");
        match nix::sys::statfs::statfs(&root) {
            Ok(st) if st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => {
                CgroupLayout::V2 { root }
            }
            Ok(_) => CgroupLayout::V1 { root },
            Err(e) => {
                tracing::warn!(error = %e, "statfs /sys/fs/cgroup failed; assuming cgroup v1");
                CgroupLayout::V1 { root }
            }
        }
    }
}

/// One sample of a cgroup's usage; `None` where the controller or file is not
/// there (e.g. a controller not enabled for the cgroup).
#[derive(Default, Clone, Debug)]
pub struct CgroupStats {
    /// When the sample was taken, in ns since the Unix epoch.
    pub timestamp_ns: i64,
    /// Cumulative CPU time in ns.
    pub cpu_usage_ns: Option<u64>,
    pub memory_usage_bytes: Option<u64>,
    pub memory_working_set_bytes: Option<u64>,
    pub memory_rss_bytes: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// limit - working set; `None` when there is no limit.
    pub memory_available_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// Reads the stats of the cgroup that the OCI spec named as
/// `linux.cgroupsPath`: an absolute cgroupfs path (`/berth/pods/abc/def`) or
/// the systemd form `slice:prefix:name`.
pub fn read(layout: &CgroupLayout, cgroups_path: &str) -> Result<CgroupStats, StatsError> {
    let rel = resolve_cgroups_path(cgroups_path)?;
    let timestamp_ns = berth_sysutil::now_nanos();
    match layout {
        CgroupLayout::V1 { root } => read_v1(root, &rel, cgroups_path, timestamp_ns),
        CgroupLayout::V2 { root } => read_v2(&root.join(&rel), cgroups_path, timestamp_ns),
    }
}

/// Turns `linux.cgroupsPath` into a path relative to a hierarchy's root.
///
/// The systemd form is resolved the way runc does: the slice is expanded into
/// its parents (`a-b.slice` -> `a.slice/a-b.slice`) and the unit is
/// `<prefix>-<name>.scope` (or `name` itself when it is a slice).
fn resolve_cgroups_path(cgroups_path: &str) -> Result<PathBuf, StatsError> {
    let invalid = |reason| StatsError::InvalidPath {
        path: cgroups_path.to_string(),
        reason,
    };
    let resolved = if cgroups_path.starts_with('/') || !cgroups_path.contains(':') {
        PathBuf::from(cgroups_path)
    } else {
        let parts: Vec<&str> = cgroups_path.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(invalid("systemd form must be slice:prefix:name"));
        };
        if name.is_empty() || name.contains('/') {
            return Err(invalid("bad unit name"));
        }
        if name.ends_with(".slice") {
            // runc: a unit that is itself a slice lives at its own expanded path.
            expand_slice(name).ok_or_else(|| invalid("bad slice name"))?
        } else {
            let slice = if slice.is_empty() {
                "system.slice"
            } else {
                slice
            };
            let parent = expand_slice(slice).ok_or_else(|| invalid("bad slice name"))?;
            let unit = if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            parent.join(unit)
        }
    };
    // Only normal components may remain, so nothing can point outside the
    // cgroup mount (a CRI caller controls part of this string).
    let mut rel = PathBuf::new();
    for c in resolved.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => rel.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid("must not contain .."));
            }
        }
    }
    Ok(rel)
}

/// systemd's slice naming: `a-b-c.slice` is `/a.slice/a-b.slice/a-b-c.slice`;
/// `-.slice` is the root. `None` for a malformed name.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    let stem = slice.strip_suffix(".slice")?;
    if slice.contains('/') {
        return None;
    }
    let mut path = PathBuf::from("/");
    if stem == "-" {
        return Some(path);
    }
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            // `a--b.slice`, `-a.slice`, `a-.slice` are invalid in systemd.
            return None;
        }
        path.push(format!("{prefix}{part}.slice"));
        prefix.push_str(part);
        prefix.push('-');
    }
    Some(path)
}

/// Reads a whole file, `None` if it does not exist (controller not enabled)
/// or the cgroup was removed under us (ENODEV on an open file of a removed
/// cgroup).
fn read_opt(path: &Path) -> Result<Option<String>, StatsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV) => {
            Ok(None)
        }
        Err(source) => Err(StatsError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn parse_u64(path: &Path, s: &str) -> Result<u64, StatsError> {
    s.trim().parse().map_err(|_| StatsError::Parse {
        path: path.to_path_buf(),
        value: s.trim().to_string(),
    })
}

fn read_u64(path: &Path) -> Result<Option<u64>, StatsError> {
    read_opt(path)?.map(|s| parse_u64(path, &s)).transpose()
}

/// A flat-keyed file (`memory.stat`, `cpu.stat`): `key value` per line.
struct KeyValues {
    path: PathBuf,
    text: String,
}

impl KeyValues {
    fn read(path: PathBuf) -> Result<Option<KeyValues>, StatsError> {
        Ok(read_opt(&path)?.map(|text| KeyValues { path, text }))
    }

    fn get(&self, key: &str) -> Result<Option<u64>, StatsError> {
        for line in self.text.lines() {
            let mut it = line.split_whitespace();
            if it.next() == Some(key) {
                let v = it.next().unwrap_or("");
                return parse_u64(&self.path, v).map(Some);
            }
        }
        Ok(None)
    }
}

fn working_set(usage: u64, inactive_file: Option<u64>) -> u64 {
    usage.saturating_sub(inactive_file.unwrap_or(0))
}

fn read_v1(
    root: &Path,
    rel: &Path,
    cgroups_path: &str,
    timestamp_ns: i64,
) -> Result<CgroupStats, StatsError> {
    let mem_dir = root.join("memory").join(rel);
    let cpu_dir = root.join("cpuacct").join(rel);
    let pids_dir = root.join("pids").join(rel);
    // A cgroup exists when any of its controller directories does; runc
    // creates them all, so none at all means the container is gone.
    if !mem_dir.is_dir() && !cpu_dir.is_dir() && !pids_dir.is_dir() {
        return Err(StatsError::NotFound(cgroups_path.to_string()));
    }
    let mut st = CgroupStats {
        timestamp_ns,
        cpu_usage_ns: read_u64(&cpu_dir.join("cpuacct.usage"))?,
        pids: read_u64(&pids_dir.join("pids.current"))?,
        ..Default::default()
    };
    let usage = read_u64(&mem_dir.join("memory.usage_in_bytes"))?;
    let stat = KeyValues::read(mem_dir.join("memory.stat"))?;
    if let Some(stat) = &stat {
        // total_* include descendants: a pod cgroup's numbers cover its
        // containers, as kubelet expects.
        st.memory_rss_bytes = stat.get("total_rss")?;
        st.page_faults = stat.get("total_pgfault")?;
        st.major_page_faults = stat.get("total_pgmajfault")?;
    }
    if let Some(usage) = usage {
        let inactive = match &stat {
            Some(s) => s.get("total_inactive_file")?,
            None => None,
        };
        let ws = working_set(usage, inactive);
        st.memory_usage_bytes = Some(usage);
        st.memory_working_set_bytes = Some(ws);
        let limit = read_u64(&mem_dir.join("memory.limit_in_bytes"))?;
        if let Some(limit) = limit.filter(|l| *l < V1_UNLIMITED_THRESHOLD) {
            st.memory_available_bytes = Some(limit.saturating_sub(ws));
        }
    }
    if !mem_dir.is_dir() && !cpu_dir.is_dir() && !pids_dir.is_dir() {
        // Removed while we read: what we have is not a real sample.
        return Err(StatsError::NotFound(cgroups_path.to_string()));
    }
    Ok(st)
}

fn read_v2(dir: &Path, cgroups_path: &str, timestamp_ns: i64) -> Result<CgroupStats, StatsError> {
    if !dir.is_dir() {
        return Err(StatsError::NotFound(cgroups_path.to_string()));
    }
    let mut st = CgroupStats {
        timestamp_ns,
        pids: read_u64(&dir.join("pids.current"))?,
        ..Default::default()
    };
    // cpu.stat exists even without the cpu controller enabled (usage_usec is
    // always accounted on v2).
    if let Some(cpu) = KeyValues::read(dir.join("cpu.stat"))? {
        st.cpu_usage_ns = cpu.get("usage_usec")?.map(|us| us.saturating_mul(1000));
    }
    let usage = read_u64(&dir.join("memory.current"))?;
    let stat = KeyValues::read(dir.join("memory.stat"))?;
    if let Some(stat) = &stat {
        st.memory_rss_bytes = stat.get("anon")?;
        st.page_faults = stat.get("pgfault")?;
        st.major_page_faults = stat.get("pgmajfault")?;
    }
    if let Some(usage) = usage {
        let inactive = match &stat {
            Some(s) => s.get("inactive_file")?,
            None => None,
        };
        let ws = working_set(usage, inactive);
        st.memory_usage_bytes = Some(usage);
        st.memory_working_set_bytes = Some(ws);
        let max_path = dir.join("memory.max");
        match read_opt(&max_path)? {
            Some(s) if s.trim() != "max" => {
                let limit = parse_u64(&max_path, &s)?;
                st.memory_available_bytes = Some(limit.saturating_sub(ws));
            }
            _ => {}
        }
    }
    if !dir.is_dir() {
        return Err(StatsError::NotFound(cgroups_path.to_string()));
    }
    Ok(st)
}

/// Disk usage of the tree at `dir` as (bytes, inodes), like `du -x`: bytes
/// are allocated blocks, symlinks are not followed, other filesystems mounted
/// inside are skipped, and a hardlinked inode counts once.
///
/// Entries that vanish during the walk are skipped (a running container keeps
/// writing); a missing `dir` is an error.
pub fn filesystem_usage(dir: &Path) -> io::Result<(u64, u64)> {
    let root_md = std::fs::symlink_metadata(dir)?;
    let dev = root_md.dev();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut count = |md: &std::fs::Metadata| {
        if seen.insert(md.ino()) {
            // st_blocks is in 512-byte units whatever the fs block size.
            bytes = bytes.saturating_add(md.blocks().saturating_mul(512));
            inodes += 1;
        }
    };
    count(&root_md);
    if !root_md.is_dir() {
        return Ok((bytes, inodes));
    }
    // Iterative, so a deep tree cannot overflow the stack.
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let path = entry.path();
            let md = match std::fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if md.dev() != dev {
                // A mount point (e.g. a volume or /dev/shm): not ours.
                continue;
            }
            count(&md);
            if md.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok((bytes, inodes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(path: &Path, contents: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    #[test]
    fn cgroupfs_paths_resolve() {
        assert_eq!(
            resolve_cgroups_path("/berth/pods/abc/def").unwrap(),
            PathBuf::from("berth/pods/abc/def")
        );
        assert!(matches!(
            resolve_cgroups_path("/berth/../../etc"),
            Err(StatsError::InvalidPath { .. })
        ));
    }

    #[test]
    fn systemd_paths_resolve_like_runc() {
        assert_eq!(
            resolve_cgroups_path("kubepods-burstable-pod1.slice:berth:abc").unwrap(),
            PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/berth-abc.scope"
            )
        );
        assert_eq!(
            resolve_cgroups_path("system.slice:docker:x").unwrap(),
            PathBuf::from("system.slice/docker-x.scope")
        );
        assert_eq!(
            resolve_cgroups_path(":berth:x").unwrap(),
            PathBuf::from("system.slice/berth-x.scope")
        );
        assert_eq!(
            resolve_cgroups_path("-.slice:berth:x").unwrap(),
            PathBuf::from("berth-x.scope")
        );
        assert_eq!(
            resolve_cgroups_path("kubepods.slice:berth:kubepods-pod2.slice").unwrap(),
            PathBuf::from("kubepods.slice/kubepods-pod2.slice")
        );
        for bad in [
            "a--b.slice:p:n",
            "notaslice:p:n",
            "a.slice:p:n/x",
            "a.slice:p",
            "a.slice:p:",
            "../a.slice:p:n",
        ] {
            assert!(
                matches!(
                    resolve_cgroups_path(bad),
                    Err(StatsError::InvalidPath { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn v1_fake_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let cg = "kubepods/pod1/ctr";
        write(
            &root.join("memory").join(cg).join("memory.usage_in_bytes"),
            "10000\n",
        );
        write(
            &root.join("memory").join(cg).join("memory.limit_in_bytes"),
            "50000\n",
        );
        write(
            &root.join("memory").join(cg).join("memory.stat"),
            "cache 1\nrss 2\ninactive_file 3\ntotal_rss 4096\ntotal_inactive_file 3000\n\
             total_pgfault 77\ntotal_pgmajfault 5\n",
        );
        write(
            &root.join("cpuacct").join(cg).join("cpuacct.usage"),
            "123456789\n",
        );
        write(&root.join("pids").join(cg).join("pids.current"), "3\n");
        let layout = CgroupLayout::V1 {
            root: root.to_path_buf(),
        };
        let st = read(&layout, "/kubepods/pod1/ctr").unwrap();
        assert!(st.timestamp_ns > 0);
        assert_eq!(st.cpu_usage_ns, Some(123456789));
        assert_eq!(st.memory_usage_bytes, Some(10000));
        assert_eq!(st.memory_working_set_bytes, Some(7000));
        assert_eq!(st.memory_rss_bytes, Some(4096));
        assert_eq!(st.page_faults, Some(77));
        assert_eq!(st.major_page_faults, Some(5));
        assert_eq!(st.memory_available_bytes, Some(43000));
        assert_eq!(st.pids, Some(3));
    }

    #[test]
    fn v1_unlimited_and_clamped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mem = root.join("memory/c");
        write(&mem.join("memory.usage_in_bytes"), "100");
        write(&mem.join("memory.limit_in_bytes"), "9223372036854771712");
        write(&mem.join("memory.stat"), "total_inactive_file 500\n");
        let layout = CgroupLayout::V1 {
            root: root.to_path_buf(),
        };
        let st = read(&layout, "/c").unwrap();
        assert_eq!(st.memory_working_set_bytes, Some(0));
        assert_eq!(st.memory_available_bytes, None);
        // Controllers without a directory are None, not errors.
        assert_eq!(st.cpu_usage_ns, None);
        assert_eq!(st.pids, None);
    }

    #[test]
    fn v1_missing_cgroup_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = CgroupLayout::V1 {
            root: tmp.path().to_path_buf(),
        };
        assert!(matches!(
            read(&layout, "/gone"),
            Err(StatsError::NotFound(_))
        ));
    }

    #[test]
    fn v2_fake_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let dir = root.join(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/berth-abc.scope",
        );
        write(&dir.join("memory.current"), "20000\n");
        write(&dir.join("memory.max"), "max\n");
        write(
            &dir.join("memory.stat"),
            "anon 8192\nfile 100\ninactive_file 5000\nactive_file 1\npgfault 11\npgmajfault 2\n",
        );
        write(
            &dir.join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        );
        write(&dir.join("pids.current"), "1\n");
        let layout = CgroupLayout::V2 {
            root: root.to_path_buf(),
        };
        let st = read(&layout, "kubepods-burstable-pod1.slice:berth:abc").unwrap();
        assert_eq!(st.cpu_usage_ns, Some(1_500_000));
        assert_eq!(st.memory_usage_bytes, Some(20000));
        assert_eq!(st.memory_working_set_bytes, Some(15000));
        assert_eq!(st.memory_rss_bytes, Some(8192));
        assert_eq!(st.page_faults, Some(11));
        assert_eq!(st.major_page_faults, Some(2));
        assert_eq!(st.memory_available_bytes, None);
        assert_eq!(st.pids, Some(1));

        write(&dir.join("memory.max"), "16000\n");
        let st = read(&layout, "kubepods-burstable-pod1.slice:berth:abc").unwrap();
        assert_eq!(st.memory_available_bytes, Some(1000));

        assert!(matches!(
            read(&layout, "/nope"),
            Err(StatsError::NotFound(_))
        ));
    }

    #[test]
    fn v2_controllers_off_are_none_and_garbage_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        fs::create_dir_all(&dir).unwrap();
        let layout = CgroupLayout::V2 {
            root: tmp.path().to_path_buf(),
        };
        let st = read(&layout, "/c").unwrap();
        assert_eq!(st.memory_usage_bytes, None);
        assert_eq!(st.cpu_usage_ns, None);
        assert_eq!(st.pids, None);
        write(&dir.join("pids.current"), "lots\n");
        assert!(matches!(read(&layout, "/c"), Err(StatsError::Parse { .. })));
    }

    #[test]
    fn filesystem_usage_counts_hardlinks_once_and_skips_symlink_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("root");
        fs::create_dir_all(d.join("sub/deeper")).unwrap();
        fs::write(d.join("a"), vec![1u8; 64 * 1024]).unwrap();
        fs::hard_link(d.join("a"), d.join("sub/a-link")).unwrap();
        fs::write(d.join("sub/deeper/b"), b"x").unwrap();
        // A symlink to a big tree outside must count as the link only.
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("big"), vec![1u8; 1024 * 1024]).unwrap();
        std::os::unix::fs::symlink(&outside, d.join("sub/out")).unwrap();

        let (bytes, inodes) = filesystem_usage(&d).unwrap();
        // root, sub, deeper, a (=a-link), b, out
        assert_eq!(inodes, 6);
        assert!(bytes >= 64 * 1024, "{bytes}");
        assert!(bytes < 1024 * 1024, "{bytes}");

        // A file on its own.
        let (fb, fi) = filesystem_usage(&d.join("a")).unwrap();
        assert_eq!(fi, 1);
        assert!(fb >= 64 * 1024);
        assert!(filesystem_usage(&tmp.path().join("missing")).is_err());
    }

    #[test]
    fn filesystem_usage_does_not_cross_mounts() {
        if !nix::unistd::geteuid().is_root() {
            berth_sysutil::testing::precondition_missing(
                "filesystem_usage_does_not_cross_mounts",
                "needs root",
            );
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let mnt = d.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=4m"),
        )
        .unwrap();
        fs::write(mnt.join("inside"), vec![1u8; 1024 * 1024]).unwrap();
        let res = filesystem_usage(d);
        nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH).unwrap();
        let (bytes, inodes) = res.unwrap();
        // Only the temp dir itself: the mount point and its contents are
        // another filesystem.
        assert_eq!(inodes, 1);
        assert!(bytes < 1024 * 1024);
    }

    /// Against the host's real cgroup v1 hierarchies.
    #[test]
    fn real_v1_cgroup() {
        if !nix::unistd::geteuid().is_root() {
            berth_sysutil::testing::precondition_missing("real_v1_cgroup", "needs root");
            return;
        }
        let layout = CgroupLayout::detect();
        let CgroupLayout::V1 { root } = &layout else {
            // Not a missing precondition: the v2 path has its own tests.
            eprintln!("real_v1_cgroup: not applicable, the host is cgroup v2");
            return;
        };
        let name = format!("berth-stats-test-{:016x}", rand::random::<u64>());
        let ctls = ["memory", "cpu", "cpuacct", "pids"];
        let dirs: Vec<PathBuf> = ctls.iter().map(|c| root.join(c).join(&name)).collect();
        for d in &dirs {
            fs::create_dir(d).unwrap();
        }
        // The shell waits on stdin so it is in the cgroups before it burns
        // CPU and touches memory (v1 does not move old charges along).
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg("read x; i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; exec sleep 100")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        for d in &dirs {
            fs::write(d.join("cgroup.procs"), &pid).unwrap();
        }
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(b"go\n").unwrap();
        }
        let mut st = CgroupStats::default();
        for _ in 0..100 {
            st = read(&layout, &format!("/{name}")).unwrap();
            if st.cpu_usage_ns.unwrap_or(0) > 0 && st.memory_usage_bytes.unwrap_or(0) > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // The cgroup can still hold the dying task for a moment.
        for d in &dirs {
            for _ in 0..50 {
                if fs::remove_dir(d).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        eprintln!("{st:?}");
        assert!(st.cpu_usage_ns.unwrap() > 0);
        assert!(st.memory_usage_bytes.unwrap() > 0);
        assert!(st.memory_working_set_bytes.is_some());
        assert!(st.page_faults.is_some());
        assert_eq!(st.pids, Some(1));
        for d in &dirs {
            assert!(!d.exists(), "{} left behind", d.display());
        }
        assert!(matches!(
            read(&layout, &format!("/{name}")),
            Err(StatsError::NotFound(_))
        ));
    }
}
