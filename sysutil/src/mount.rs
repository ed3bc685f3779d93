//! `/proc/self/mountinfo`: which paths are mount points. One reader for the
//! checks (rootfs mounts, pin directories, the pod shm mount).

use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Every mount point of this process's mount namespace.
pub fn mount_points() -> std::io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(MOUNTINFO)?;
    Ok(text.lines().filter_map(mount_point).collect())
}

/// Whether `target` is a mount point (false if mountinfo cannot be read).
/// The table holds resolved paths, so `target` is resolved first.
pub fn is_mount_point(target: &Path) -> bool {
    let target = std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
    mount_points().is_ok_and(|points| points.contains(&target))
}

/// The mount point (field 5) of a `/proc/self/mountinfo` line, with the
/// kernel's octal escapes (`\040` for a space) undone.
fn mount_point(line: &str) -> Option<PathBuf> {
    let field = line.split(' ').nth(4)?;
    let mut out = Vec::with_capacity(field.len());
    let b = field.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let v = d.iter().fold(0u16, |v, c| v * 8 + u16::from(c - b'0'));
                u8::try_from(v).ok()
            });
        if let (b'\\', Some(v)) = (b[i], octal) {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_mount_points_unescape() {
        let line = "36 35 98:0 /mnt1 /run/with\\040space rw,noatime master:1 - ext3 /dev/root rw";
        assert_eq!(
            super::mount_point(line),
            Some(std::path::PathBuf::from("/run/with space"))
        );
        let line = "36 35 98:0 / /odd\\9x\\777\\0 rw - ext3 /dev/root rw";
        assert_eq!(
            super::mount_point(line),
            Some(std::path::PathBuf::from("/odd\\9x\\777\\0"))
        );
    }
}
