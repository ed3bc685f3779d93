//! Reading a task's log file back: raw output (`file://`, stdout and stderr
//! mixed) or the CRI log format (`cri-log://`, one
//! `TIMESTAMP STREAM P|F CONTENT` line per chunk) turned back into the bytes
//! the process wrote.

use std::path::Path;

use berth_api::tasks::v1 as pb;
use tokio::io::AsyncReadExt;

use crate::shim::StdioScheme;

/// One decoded piece of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub stderr: bool,
    pub data: Vec<u8>,
}

impl Chunk {
    pub fn to_pb(&self) -> pb::Output {
        pb::Output {
            stream: if self.stderr {
                pb::output::Stream::Stderr
            } else {
                pb::output::Stream::Stdout
            } as i32,
            data: self.data.clone(),
        }
    }
}

/// Decodes one CRI log line (without its newline). Lines that are not in the
/// format are passed through as stdout.
pub fn decode_cri_line(line: &[u8]) -> Chunk {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let (_ts, stream, tag) = (parts.next(), parts.next(), parts.next());
    let content = parts.next().unwrap_or(&[]);
    match (stream, tag) {
        (Some(s), Some(t))
            if (s == b"stdout" || s == b"stderr")
                && (t == b"F" || t == b"P" || t.starts_with(b"F:") || t.starts_with(b"P:")) =>
        {
            let mut data = content.to_vec();
            if t.first() == Some(&b'F') {
                data.push(b'\n');
            }
            Chunk {
                stderr: s == b"stderr",
                data,
            }
        }
        _ => {
            let mut data = line.to_vec();
            data.push(b'\n');
            Chunk {
                stderr: false,
                data,
            }
        }
    }
}

/// Reads a log file incrementally.
pub struct LogFollower {
    file: tokio::fs::File,
    scheme: StdioScheme,
    pending: Vec<u8>,
}

impl LogFollower {
    pub async fn open(path: &Path, scheme: StdioScheme) -> std::io::Result<LogFollower> {
        Ok(LogFollower {
            file: tokio::fs::File::open(path).await?,
            scheme,
            pending: Vec::new(),
        })
    }

    /// A follower that starts at the file's current end (an attach sees
    /// what is written from now on).
    pub async fn open_at_end(path: &Path, scheme: StdioScheme) -> std::io::Result<LogFollower> {
        use tokio::io::AsyncSeekExt;
        let mut f = LogFollower::open(path, scheme).await?;
        f.file.seek(std::io::SeekFrom::End(0)).await?;
        Ok(f)
    }

    /// What was written since the last call (possibly nothing).
    pub async fn read_available(&mut self) -> std::io::Result<Vec<Chunk>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = self.file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            match self.scheme {
                StdioScheme::File => out.push(Chunk {
                    stderr: false,
                    data: buf[..n].to_vec(),
                }),
                StdioScheme::CriLog => {
                    self.pending.extend_from_slice(&buf[..n]);
                    while let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = self.pending.drain(..=i).collect();
                        out.push(decode_cri_line(&line[..line.len() - 1]));
                    }
                }
            }
            if out.len() > 256 {
                break;
            }
        }
        Ok(out)
    }

    /// A trailing line without its newline, at the very end.
    pub fn finish(&mut self) -> Option<Chunk> {
        if self.pending.is_empty() {
            return None;
        }
        let line = std::mem::take(&mut self.pending);
        let mut c = decode_cri_line(&line);
        if c.data.last() == Some(&b'\n') && !line.ends_with(b"\n") {
            c.data.pop();
        }
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_lines_decode() {
        assert_eq!(
            decode_cri_line(b"2024-01-01T00:00:00.000000000Z stdout F hello world"),
            Chunk {
                stderr: false,
                data: b"hello world\n".to_vec()
            }
        );
        assert_eq!(
            decode_cri_line(b"2024-01-01T00:00:00.000000000Z stderr P part"),
            Chunk {
                stderr: true,
                data: b"part".to_vec()
            }
        );
        assert_eq!(
            decode_cri_line(b"2024-01-01T00:00:00Z stdout F "),
            Chunk {
                stderr: false,
                data: b"\n".to_vec()
            }
        );
        assert_eq!(decode_cri_line(b"junk").data, b"junk\n".to_vec());
    }

    #[tokio::test]
    async fn follower_reads_increments() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "T stdout F a\nT stderr P b").unwrap();
        let mut f = LogFollower::open(&p, StdioScheme::CriLog).await.unwrap();
        let got = f.read_available().await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, b"a\n");
        use std::io::Write;
        let mut w = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        w.write_all(b"c\nT stdout F d").unwrap();
        let got = f.read_available().await.unwrap();
        assert_eq!(got[0].data, b"bc");
        assert!(got[0].stderr);
        assert_eq!(f.finish().unwrap().data, b"d");

        std::fs::write(&p, "raw\n").unwrap();
        let mut f = LogFollower::open(&p, StdioScheme::File).await.unwrap();
        assert_eq!(f.read_available().await.unwrap()[0].data, b"raw\n");
        assert!(f.finish().is_none());
    }
}
