//! Reading an entry's headers into [`Meta`]: the tar header, PAX records
//! (times, sizes, xattrs) and GNU long names, leniently where tar writers differ.

use std::ffi::CString;
use std::io::{self, Read};

use super::error::ApplyError;
use super::{invalid, stream_error, Applier, Meta, Scratch, PAX_XATTR_PREFIX};

impl Applier<'_> {
    /// Mode, ownership, times and xattrs of the entry (xattrs into `self.xattrs`).
    pub(super) fn read_meta<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        s: &Scratch,
    ) -> Result<Meta, ApplyError> {
        let header = entry.header();
        let old = header.as_old();
        let mode = lenient(header.mode().map(u64::from), &old.mode)? as u32 & 0o7777;
        let uid = lenient(header.uid(), &old.uid)?;
        let gid = lenient(header.gid(), &old.gid)?;
        let mtime = lenient(header.mtime(), &old.mtime)?;
        // u32::MAX is "no change" to chown: not a valid id.
        let uid = libc::uid_t::try_from(uid)
            .ok()
            .filter(|&u| u != u32::MAX)
            .ok_or_else(|| invalid(s, "uid out of range"))?;
        let gid = libc::gid_t::try_from(gid)
            .ok()
            .filter(|&g| g != u32::MAX)
            .ok_or_else(|| invalid(s, "gid out of range"))?;
        let mut time = (i64::try_from(mtime).unwrap_or(i64::MAX), 0);

        self.xattrs.clear();
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(|e| stream_error(&self.state, e))?
        {
            for ext in exts {
                let ext = ext.map_err(ApplyError::Tar)?;
                let key = ext.key_bytes();
                if key == b"mtime" {
                    if let Some(t) = parse_pax_time(ext.value_bytes()) {
                        time = t;
                    }
                } else if key.starts_with(b"GNU.sparse.") {
                    // PAX-format (GNU 0.1/1.0) sparse files are not expanded by
                    // the tar reader: refuse rather than write the raw map.
                    return Err(invalid(s, "PAX-format sparse files are not supported"));
                } else if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    let name = CString::new(name)
                        .map_err(|_| invalid(s, "xattr name contains a NUL byte"))?;
                    self.xattrs.push((name, ext.value_bytes().to_vec()));
                }
            }
        }
        let ts = libc::timespec {
            tv_sec: time.0,
            tv_nsec: time.1,
        };
        Ok(Meta {
            mode,
            uid,
            gid,
            times: [ts, ts],
        })
    }
}

/// Parses a PAX time (`[-]secs[.fraction]`) into (seconds, nanoseconds).
fn parse_pax_time(value: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(value).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nanos: i64 = 0;
    let mut digits = 0;
    for b in frac.bytes().take(9) {
        nanos = nanos * 10 + i64::from(b - b'0');
        digits += 1;
    }
    for _ in digits..9 {
        nanos *= 10;
    }
    if neg {
        if nanos > 0 {
            Some((-secs - 1, 1_000_000_000 - nanos))
        } else {
            Some((-secs, 0))
        }
    } else {
        Some((secs, nanos))
    }
}

/// A numeric header field that failed to parse but is blank (all NULs or
/// spaces) reads as 0, as Go's archive/tar has it.
fn lenient(value: io::Result<u64>, raw: &[u8]) -> Result<u64, ApplyError> {
    match value {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
        Err(e) => Err(ApplyError::Tar(e)),
    }
}
