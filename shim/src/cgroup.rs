//! A container cgroup that runc left behind. runc makes the cgroup early in
//! `create`; killed before it wrote its state, `runc delete --force` knows no
//! container and removes nothing, and the cgroup (with a `runc init` that may
//! outlive its parent) stays on the node for good.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The dirs of `cgroups_path` (a cgroupfs path; systemd's `slice:prefix:name`
/// units are systemd's to remove) below `root`: one per v1 hierarchy, or the
/// unified one.
fn dirs_of(root: &Path, cgroups_path: &str) -> Vec<PathBuf> {
    let rel = cgroups_path.trim_start_matches('/');
    if !cgroups_path.starts_with('/') || rel.is_empty() || rel.split('/').any(|c| c == "..") {
        return Vec::new();
    }
    let mut out: Vec<PathBuf> = fs::read_dir(root)
        .map(|rd| rd.flatten().map(|e| e.path().join(rel)).collect())
        .unwrap_or_default();
    out.push(root.join(rel));
    out.retain(|d| d.is_dir());
    out
}

/// Kills what is left in the container's cgroup and removes its dirs; returns
/// how many dirs went. Missing dirs are fine.
pub fn remove_leftover(root: &Path, cgroups_path: &str) -> usize {
    let dirs = dirs_of(root, cgroups_path);
    for d in &dirs {
        let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let mut removed = 0;
    for d in dirs {
        // A killed process leaves the cgroup a moment after the signal.
        for _ in 0..100 {
            match fs::remove_dir(&d) {
                Ok(()) => {
                    removed += 1;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cgroupfs_paths_below_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for ctl in ["memory", "pids"] {
            fs::create_dir_all(root.join(ctl).join("k8s/pod1/c1")).unwrap();
        }
        assert!(dirs_of(root, "k8s.slice:cri:c1").is_empty());
        assert!(dirs_of(root, "/").is_empty());
        assert!(dirs_of(root, "/k8s/../k8s/pod1/c1").is_empty());
        assert_eq!(dirs_of(root, "/k8s/pod1/c1").len(), 2);
        assert_eq!(remove_leftover(root, "/k8s/pod1/c1"), 2);
        assert!(root.join("memory/k8s/pod1").is_dir());
        assert!(!root.join("memory/k8s/pod1/c1").exists());
        assert_eq!(remove_leftover(root, "/k8s/pod1/c1"), 0);
    }
}
