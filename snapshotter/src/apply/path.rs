//! Lexical handling of entry names.

use std::ffi::CStr;

/// Normalises a tar entry name into `out`: components joined by single
/// slashes, no leading slash (absolute names are taken relative to the root,
/// as containerd does), no `.` components, and `..` popping the previous
/// component — clamped at the root, so `../../etc/x` becomes `etc/x`.
/// An empty result means the root itself.
///
/// This is purely lexical; symlinks met while resolving the result are dealt
/// with by the kernel (`RESOLVE_IN_ROOT`).
pub(crate) fn normalize(name: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    out.clear();
    if name.contains(&0) {
        return Err("name contains a NUL byte");
    }
    for comp in name.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => match out.iter().rposition(|&b| b == b'/') {
                Some(i) => out.truncate(i),
                None => out.clear(),
            },
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(())
}

/// Splits a normalised path into (parent, final component).
pub(crate) fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

/// A normalised path stored as `parent\0base\0`, so both halves can be handed
/// to syscalls without allocating per entry.
#[derive(Default)]
pub(crate) struct SplitPath {
    buf: Vec<u8>,
    split: usize,
}

impl SplitPath {
    pub(crate) fn set(&mut self, rel: &[u8]) {
        let (parent, base) = split(rel);
        self.buf.clear();
        self.buf.extend_from_slice(parent);
        self.buf.push(0);
        self.split = self.buf.len();
        self.buf.extend_from_slice(base);
        self.buf.push(0);
    }

    pub(crate) fn parent_bytes(&self) -> &[u8] {
        &self.buf[..self.split.saturating_sub(1)]
    }

    pub(crate) fn base_bytes(&self) -> &[u8] {
        &self.buf[self.split..self.buf.len().saturating_sub(1)]
    }

    /// The parent path (empty for an entry directly under the root).
    pub(crate) fn parent(&self) -> &CStr {
        cstr(&self.buf[..self.split])
    }

    pub(crate) fn base(&self) -> &CStr {
        cstr(&self.buf[self.split..])
    }
}

/// `bytes` is NUL-terminated and NUL-free before that ([`normalize`] rejects
/// NULs); the empty-string fallback can only make a syscall fail with ENOENT.
fn cstr(bytes: &[u8]) -> &CStr {
    CStr::from_bytes_with_nul(bytes).unwrap_or(c"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        let mut out = Vec::new();
        normalize(s.as_bytes(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn normalizes_names() {
        assert_eq!(norm("./a/b/"), "a/b");
        assert_eq!(norm("/etc/passwd"), "etc/passwd");
        assert_eq!(norm("../../etc/x"), "etc/x");
        assert_eq!(norm("a/../../b"), "b");
        assert_eq!(norm("a//b/./c/.."), "a/b");
        assert_eq!(norm("./"), "");
        assert_eq!(norm(".."), "");
        let mut out = Vec::new();
        assert!(normalize(b"a\0b", &mut out).is_err());
    }

    #[test]
    fn split_path() {
        let mut p = SplitPath::default();
        p.set(b"a/b/c");
        assert_eq!(p.parent_bytes(), b"a/b");
        assert_eq!(p.base_bytes(), b"c");
        assert_eq!(p.parent().to_bytes(), b"a/b");
        assert_eq!(p.base().to_bytes(), b"c");
        p.set(b"top");
        assert_eq!(p.parent_bytes(), b"");
        assert_eq!(p.base().to_bytes(), b"top");
    }
}
