use std::io;
use std::path::PathBuf;

/// Why applying a layer failed. Entry-level variants name the entry as it
/// appears in the tar stream (lossily decoded), before normalisation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The root directory could not be opened.
    #[error("opening layer root {root:?}: {source}")]
    Root {
        root: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A filesystem operation for an entry failed.
    #[error("layer entry {path:?}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// A character or block device entry while `allow_devices` is false.
    #[error("layer entry {path:?}: device nodes are not allowed")]
    DeviceNotAllowed { path: String },

    /// An entry declares more data than `max_file_size` (a sparse file: its
    /// apparent size).
    #[error("layer entry {path:?}: size {size} exceeds the limit of {limit} bytes")]
    EntryTooLarge { path: String, size: u64, limit: u64 },

    /// An entry would take the uncompressed layer past `max_total_size`
    /// (sparse files count at their apparent size).
    #[error(
        "layer entry {path:?}: size {size} would take the layer past its limit of {limit} bytes (sparse files count at their apparent size)"
    )]
    LayerTooLarge { path: String, size: u64, limit: u64 },

    /// The uncompressed stream itself grew past `max_total_size`.
    #[error("uncompressed layer stream exceeds the limit of {limit} bytes")]
    StreamTooLarge { limit: u64 },

    /// The header(s) of a single entry (PAX records, long names, sparse maps)
    /// are larger than the tar reader is allowed to buffer.
    #[error("tar metadata of a single entry exceeds {limit} bytes")]
    MetadataTooLarge { limit: u64 },

    /// More entries than `max_entries`.
    #[error("layer has more than {limit} entries")]
    TooManyEntries { limit: u64 },

    /// An entry type the applier does not handle (GNU volume headers, ...).
    #[error("layer entry {path:?}: unsupported tar entry type {kind:?}")]
    UnsupportedType { path: String, kind: char },

    /// A malformed entry (bad whiteout name, NUL in a name, id out of range...).
    #[error("layer entry {path:?}: {reason}")]
    InvalidEntry { path: String, reason: String },

    /// A hardlink whose target is not in the root. When applying into a bare
    /// overlay upper dir, files of lower layers are not visible: apply through
    /// a mounted snapshot instead.
    #[error("layer entry {path:?}: hardlink target {target:?} does not exist in the root")]
    HardlinkTargetMissing { path: String, target: String },

    /// Reading or decompressing the blob failed.
    #[error("decompressing layer: {}", escaped(.0))]
    Decompress(#[source] io::Error),

    /// The tar stream is malformed or truncated.
    #[error("reading layer tar: {}", escaped(.0))]
    Tar(#[source] io::Error),

    /// The caller's cancellation flag was set.
    #[error("layer application cancelled")]
    Cancelled,
}

impl ApplyError {
    /// Whether the target filesystem was full (or over quota): the layer is fine,
    /// the node has to make room.
    pub fn is_no_space(&self) -> bool {
        match self {
            ApplyError::Root { source, .. } | ApplyError::Io { source, .. } => {
                crate::is_no_space(source)
            }
            _ => false,
        }
    }
}

/// The longest decoder or tar error repeated in a message.
const MAX_ECHO: usize = 512;

/// A decoder's or the tar reader's error, whose text may quote the layer's own
/// bytes (a header field of a blob that is not a tar): control characters
/// escaped, length bounded, so that the error is safe on a terminal and in a
/// gRPC status.
fn escaped(e: &io::Error) -> String {
    let mut out = String::new();
    for c in e.to_string().chars() {
        if out.len() >= MAX_ECHO {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_errors_are_escaped_and_bounded() {
        let raw = format!(
            "numeric field was not a number: \u{1b}[31m\0{}",
            "x".repeat(4096)
        );
        let e = ApplyError::Tar(io::Error::other(raw)).to_string();
        assert!(!e.chars().any(char::is_control), "{e:?}");
        assert!(e.contains("\\u{1b}[31m"), "{e}");
        assert!(e.len() < MAX_ECHO + 64, "{} bytes", e.len());
    }
}
