//! Reading and checking CRI-format container logs.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::util::wait_for;

/// One line of a CRI log file.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub time: String,
    pub stream: String,
    pub tag: String,
    pub text: String,
}

/// Parses a CRI-format log (`<RFC3339Nano> <stdout|stderr> <F|P> <text>`);
/// a malformed line is an error.
pub fn parse_cri_log(content: &str) -> Result<Vec<LogLine>> {
    let mut out = Vec::new();
    for l in content.lines() {
        let mut parts = l.splitn(4, ' ');
        let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("malformed CRI log line {l:?}");
        };
        let text = parts.next().unwrap_or("");
        ensure!(
            stream == "stdout" || stream == "stderr",
            "bad stream in CRI log line {l:?}"
        );
        ensure!(tag == "F" || tag == "P", "bad tag in CRI log line {l:?}");
        ensure!(is_rfc3339(time), "bad timestamp in CRI log line {l:?}");
        out.push(LogLine {
            time: time.to_string(),
            stream: stream.to_string(),
            tag: tag.to_string(),
            text: text.to_string(),
        });
    }
    Ok(out)
}

/// An RFC 3339 time as the CRI log and crictl write it:
/// `2016-10-06T00:17:09.669794202Z` or with a numeric offset.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
            .iter()
            .all(|&i| b[i].is_ascii_digit())
        && (s.ends_with('Z') || s[19..].contains('+') || s[19..].contains('-'))
}

/// The parsed log at `path` (empty if it does not exist yet).
pub fn read_cri_log(path: &Path) -> Result<Vec<LogLine>> {
    match std::fs::read_to_string(path) {
        Ok(s) => parse_cri_log(&s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Polls until `pred` holds for the parsed log at `path`; returns the lines.
pub fn wait_log(
    path: &Path,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(&[LogLine]) -> bool,
) -> Result<Vec<LogLine>> {
    let r = wait_for(what, timeout, || {
        let lines = read_cri_log(path)?;
        Ok(pred(&lines).then_some(lines))
    });
    r.with_context(|| {
        format!(
            "log {}:\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_else(|e| format!("<{e}>"))
        )
    })
}

/// Whether the log has a full line `text` on `stream`.
pub fn has_line(lines: &[LogLine], stream: &str, text: &str) -> bool {
    lines
        .iter()
        .any(|l| l.stream == stream && l.tag == "F" && l.text == text)
}
