//! Moving archives in and out: chunking a reader for Import and writing
//! Export's chunks to a file atomically or to stdout.

use std::fs::Permissions;
use std::io::{self, IsTerminal};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use berth_api::images::v1::ImportChunk;
use futures::Stream;
use tempfile::NamedTempFile;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// Size of each Import chunk: large enough to keep per-message overhead low,
/// well under gRPC's default 4 MiB message limit.
pub const CHUNK_SIZE: usize = 1 << 20;

/// Reads until `buf` is full or the reader ends, so every chunk but the last
/// is exactly `buf.len()` bytes whatever sizes the reader hands out.
pub async fn fill<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

struct ChunkState<R> {
    reader: R,
    base_name: String,
    chunk_size: usize,
    first: bool,
    done: bool,
    failed: Option<oneshot::Sender<io::Error>>,
}

/// The Import request stream. A request stream cannot carry an error, so a
/// read failure is sent on the returned receiver and the stream stalls; the
/// caller then drops the call, which cancels it, instead of handing the
/// daemon a silently truncated archive.
pub fn import_chunks<R>(
    reader: R,
    base_name: String,
    chunk_size: usize,
) -> (
    impl Stream<Item = ImportChunk> + Send + 'static,
    oneshot::Receiver<io::Error>,
)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let state = ChunkState {
        reader,
        base_name,
        chunk_size,
        first: true,
        done: false,
        failed: Some(tx),
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let mut buf = vec![0u8; st.chunk_size];
        match fill(&mut st.reader, &mut buf).await {
            Ok(n) => {
                st.done = n < st.chunk_size;
                // At EOF on a chunk boundary there is nothing left to send;
                // an empty input still sends one chunk carrying the options.
                if n == 0 && !st.first {
                    return None;
                }
                buf.truncate(n);
                let base_name = if st.first {
                    std::mem::take(&mut st.base_name)
                } else {
                    String::new()
                };
                st.first = false;
                Some((
                    ImportChunk {
                        data: buf,
                        base_name,
                    },
                    st,
                ))
            }
            Err(e) => {
                if let Some(tx) = st.failed.take() {
                    let _ = tx.send(e);
                }
                futures::future::pending().await
            }
        }
    });
    (stream, rx)
}

/// Opens an Import source: a file, or stdin for "-".
pub async fn open_input(file: &str) -> Result<Box<dyn AsyncRead + Unpin + Send>> {
    if file == "-" {
        if io::stdin().is_terminal() {
            bail!("refusing to read an archive from a terminal: pipe one in or name a file");
        }
        return Ok(Box::new(tokio::io::stdin()));
    }
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {file}"))?;
    Ok(Box::new(f))
}

/// Where Export writes. A file is written under a temporary name beside it
/// and renamed into place only once complete, so a failed or interrupted
/// export never leaves a truncated archive under the requested name.
pub enum Output {
    Stdout(tokio::io::Stdout),
    File {
        // Dropping it unlinks the temporary file: the cleanup on any failure.
        temp: NamedTempFile,
        writer: tokio::fs::File,
        dest: PathBuf,
    },
}

impl Output {
    pub fn open(target: &str) -> Result<Self> {
        if target == "-" {
            if io::stdout().is_terminal() {
                bail!("refusing to write an archive to a terminal: use -o FILE or redirect stdout");
            }
            return Ok(Output::Stdout(tokio::io::stdout()));
        }
        let dest = PathBuf::from(target);
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".berthctl-export-")
            // Mode at creation, so the umask applies as for any new file.
            .permissions(Permissions::from_mode(0o666))
            .tempfile_in(&dir)
            .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
        let writer = tokio::fs::File::from_std(
            temp.as_file()
                .try_clone()
                .context("cannot duplicate the temporary file handle")?,
        );
        Ok(Output::File { temp, writer, dest })
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Output::Stdout(out) => out.write_all(data).await?,
            Output::File { writer, temp, .. } => writer
                .write_all(data)
                .await
                .with_context(|| format!("cannot write {}", temp.path().display()))?,
        }
        Ok(())
    }

    /// Makes the archive durable and visible under its final name.
    pub async fn commit(self) -> Result<()> {
        match self {
            Output::Stdout(mut out) => out.flush().await?,
            Output::File {
                temp,
                mut writer,
                dest,
            } => {
                let ctx = || format!("cannot write {}", dest.display());
                writer.flush().await.with_context(ctx)?;
                writer.sync_all().await.with_context(ctx)?;
                drop(writer);
                temp.persist(&dest)
                    .map_err(|e| e.error)
                    .with_context(|| format!("cannot rename the archive to {}", dest.display()))?;
                sync_parent(&dest);
            }
        }
        Ok(())
    }
}

/// Best effort: persists the rename itself. The archive is complete either
/// way, so a directory that refuses fsync is not worth failing over.
fn sync_parent(dest: &Path) {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::pin::pin;

    async fn collect(data: Vec<u8>, base: &str, size: usize) -> Vec<ImportChunk> {
        let (stream, _rx) = import_chunks(std::io::Cursor::new(data), base.into(), size);
        stream.collect().await
    }

    #[tokio::test]
    async fn chunks_are_full_size_except_the_last() {
        let data: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let chunks = collect(data.clone(), "base", 1000).await;
        let sizes: Vec<_> = chunks.iter().map(|c| c.data.len()).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        assert_eq!(chunks[0].base_name, "base");
        assert!(chunks[1..].iter().all(|c| c.base_name.is_empty()));
        let joined: Vec<u8> = chunks.into_iter().flat_map(|c| c.data).collect();
        assert_eq!(joined, data);
    }

    #[tokio::test]
    async fn exact_multiple_sends_no_empty_tail() {
        let chunks = collect(vec![7; 2000], "", 1000).await;
        let sizes: Vec<_> = chunks.iter().map(|c| c.data.len()).collect();
        assert_eq!(sizes, [1000, 1000]);
    }

    #[tokio::test]
    async fn empty_input_still_sends_the_options() {
        let chunks = collect(Vec::new(), "name", 1000).await;
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].data.is_empty());
        assert_eq!(chunks[0].base_name, "name");
    }

    #[tokio::test]
    async fn default_chunk_is_one_mebibyte() {
        let chunks = collect(vec![1; CHUNK_SIZE + 1], "", CHUNK_SIZE).await;
        assert_eq!(chunks[0].data.len(), 1 << 20);
        assert_eq!(chunks[1].data.len(), 1);
    }

    /// Yields one byte per read, then fails.
    struct Flaky(usize);
    impl AsyncRead for Flaky {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if self.0 == 0 {
                return std::task::Poll::Ready(Err(io::Error::other("disk on fire")));
            }
            self.0 -= 1;
            buf.put_slice(&[1]);
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn read_error_is_reported_and_stream_stalls() {
        let (stream, rx) = import_chunks(Flaky(15), String::new(), 4);
        let mut stream = pin!(stream);
        // 15 bytes arrive before the error: three full chunks of 4.
        for _ in 0..3 {
            assert_eq!(stream.next().await.unwrap().data.len(), 4);
        }
        let next = tokio::time::timeout(std::time::Duration::from_millis(50), stream.next()).await;
        assert!(
            next.is_err(),
            "stream must stall, not end, after a read error"
        );
        assert_eq!(rx.await.unwrap().to_string(), "disk on fire");
    }

    #[tokio::test]
    async fn file_output_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.tar");
        let mut out = Output::open(dest.to_str().unwrap()).unwrap();
        out.write(b"hello ").await.unwrap();
        out.write(b"world").await.unwrap();
        assert!(!dest.exists());
        out.commit().await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello world");
        // Only the archive: the temporary name is gone.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn abandoned_output_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.tar");
        std::fs::write(&dest, b"old").unwrap();
        let mut out = Output::open(dest.to_str().unwrap()).unwrap();
        out.write(b"partial").await.unwrap();
        drop(out);
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn missing_input_names_the_file() {
        let err = open_input("/nonexistent/x.tar").await.err().unwrap();
        assert!(
            crate::error::render(&err).starts_with("cannot open /nonexistent/x.tar: no such file")
        );
    }
}
