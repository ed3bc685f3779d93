//! What a test may leak on the host: mounts, cgroups, processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

/// Mount points at or below `dir` (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let d = dir.display().to_string();
    let prefix = format!("{d}/");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|mp| mp.starts_with(&prefix))
        .collect()
}

pub(super) fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// The cgroup v1 hierarchies mounted below /sys/fs/cgroup (e.g. "memory",
/// "cpu" or "cpu,cpuacct"; symlinks to them are skipped, "unified" and
/// "systemd" too).
pub fn cgroup_controllers() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "unified" && n != "systemd")
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Reads `/sys/fs/cgroup/<hierarchy>/<path>/<file>` (trimmed), where
/// `hierarchy` is the mounted dir holding controller `ctl`.
pub fn cgroup_file(ctl: &str, path: &str, file: &str) -> Result<String> {
    let hier = cgroup_controllers()
        .into_iter()
        .find(|h| h.split(',').any(|c| c == ctl))
        .with_context(|| format!("no cgroup v1 hierarchy for {ctl}"))?;
    let p = Path::new("/sys/fs/cgroup")
        .join(hier)
        .join(path.trim_start_matches('/'))
        .join(file);
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("read {}", p.display()))?
        .trim()
        .to_string())
}

/// Dirs below `/sys/fs/cgroup/<ctl>/<parent>` whose name contains one of `ids`.
pub fn cgroup_dirs_naming(parent: &str, ids: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for ctl in cgroup_controllers() {
        let root = Path::new("/sys/fs/cgroup")
            .join(ctl)
            .join(parent.trim_start_matches('/'));
        walk_dirs(&root, &mut |p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if ids.iter().any(|id| name.contains(id.as_str())) {
                out.push(p.to_path_buf());
            }
        });
    }
    out
}

fn walk_dirs(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let p = e.path();
            f(&p);
            walk_dirs(&p, f);
        }
    }
}

/// Removes `/sys/fs/cgroup/<ctl>/<parent>` and everything below it (deepest
/// first), for every v1 controller; a busy or missing dir is skipped.
pub fn remove_cgroup_tree(parent: &str) {
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for ctl in rd.flatten() {
        let root = ctl.path().join(rel);
        let mut dirs = Vec::new();
        walk_dirs(&root, &mut |p| dirs.push(p.to_path_buf()));
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
        let _ = std::fs::remove_dir(&root);
    }
}

/// The cgroup v1 path (relative to the controller's mount) of `pid` for
/// controller `ctl` (e.g. "memory", "cpu").
pub fn cgroup_of(pid: i32, ctl: &str) -> Result<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    s.lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctls, path) = (p.next()?, p.next()?, p.next()?);
            ctls.split(',').any(|c| c == ctl).then(|| path.to_string())
        })
        .with_context(|| format!("no {ctl} cgroup for {pid}: {s}"))
}

/// The memory cgroup path (relative to the v1 memory mount) of `pid`.
pub fn memory_cgroup_of(pid: i32) -> Result<String> {
    cgroup_of(pid, "memory")
}

/// Reads a file of the memory controller for the cgroup `path`.
pub fn memory_cgroup_file(path: &str, file: &str) -> Result<String> {
    cgroup_file("memory", path, file)
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X")
    })
}

pub fn cmdline(pid: i32) -> String {
    let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&c)
        .replace('\0', " ")
        .trim()
        .to_string()
}

/// Live processes other than this one whose command line contains `needle`.
pub fn processes_naming(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if cmdline(pid).contains(needle) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Sends `sig` to `pid`.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: plain kill(2); a pid that is gone just fails.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A plain HTTP/1.0 GET over TCP; returns the whole response.
pub fn http_get_raw(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
