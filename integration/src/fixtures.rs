//! Offline, reproducible OCI image fixtures built from the host's static busybox.
//!
//! Every image is written as an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/..`). Layers are built with the `tar` crate: entries sorted by path,
//! uid/gid 0, mtime 0, no user/group names; gzip without name or mtime. Two builds on one
//! host give byte-identical blobs and therefore identical digests.
//!
//! The cached accessors ([`busybox`], [`multilayer`], ...) build each kind once per
//! process into one shared temporary directory (removed at process exit) and hand out
//! `&'static Image`s. Treat those layouts as read-only; use [`build`] with your own
//! directory for a private copy.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::util::{digest_hex, sha256_digest, write_file};

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MT_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Annotation that names a tag in an OCI layout's index.json.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// `PATH` set in every fixture config.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Applets that are always linked into `/bin` (the rest come from `busybox --list`).
pub const REQUIRED_APPLETS: &[&str] = &[
    "sh",
    "ls",
    "cat",
    "echo",
    "sleep",
    "true",
    "false",
    "env",
    "httpd",
    "wc",
    "sha256sum",
    "mkdir",
    "rm",
    "id",
    "hostname",
    "ps",
    "kill",
    "touch",
    "test",
    "nc",
    "wget",
    "ip",
    "grep",
    "head",
    "stat",
    "mount",
    "df",
    "dd",
    "uname",
    "whoami",
];

/// Files of the `multilayer` image and what a correct unpack looks like.
pub mod multilayer_files {
    /// Present after unpack (from layer 2).
    pub const KEEP: &str = "/data/keep.txt";
    pub const KEEP_CONTENT: &str = "keep me\n";
    /// Added in layer 2, whited out in layer 3: absent after unpack.
    pub const REMOVED: &str = "/data/remove-me.txt";
    pub const REMOVED_CONTENT: &str = "remove me\n";
    /// Added in layer 2; `/olddir` is made opaque in layer 3: absent after unpack.
    pub const OLD_A: &str = "/olddir/a";
    pub const OLD_B: &str = "/olddir/b";
    /// Added in layer 3 inside the opaque dir: the only entry of `/olddir` after unpack.
    pub const NEW: &str = "/olddir/new";
    pub const NEW_CONTENT: &str = "new after opaque\n";
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    /// gzip with stored (uncompressed) deflate blocks: fast; for incompressible data.
    GzipStored,
    Zstd,
}

impl Compression {
    /// OCI media type of a layer compressed this way.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => MT_OCI_LAYER_TAR,
            Compression::Gzip | Compression::GzipStored => MT_OCI_LAYER_GZIP,
            Compression::Zstd => MT_OCI_LAYER_ZSTD,
        }
    }

    pub fn compress(self, tar: &[u8]) -> Result<Vec<u8>> {
        match self {
            Compression::None => Ok(tar.to_vec()),
            Compression::Gzip | Compression::GzipStored => {
                let level = if self == Compression::Gzip {
                    flate2::Compression::default()
                } else {
                    flate2::Compression::none()
                };
                // GzBuilder without filename/mtime: reproducible header.
                let mut enc = flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(255)
                    .write(Vec::with_capacity(tar.len() / 2), level);
                enc.write_all(tar)?;
                Ok(enc.finish()?)
            }
            Compression::Zstd => Ok(zstd::stream::encode_all(tar, 3)?),
        }
    }
}

/// Decompresses a layer blob according to its media type (OCI or Docker).
pub fn decompress_layer(media_type: &str, blob: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if media_type.ends_with("gzip") {
        flate2::read::GzDecoder::new(blob).read_to_end(&mut out)?;
    } else if media_type.ends_with("zstd") {
        out = zstd::stream::decode_all(blob)?;
    } else if media_type.ends_with(".tar") || media_type.ends_with(".tar.diff") {
        out = blob.to_vec();
    } else {
        bail!("unknown layer media type {media_type}");
    }
    Ok(out)
}

/// One entry of a layer tar.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

/// Builds a reproducible layer tar from a set of entries (sorted by path on build).
/// Paths are relative ("bin/busybox"); a leading "/" is stripped.
#[derive(Debug, Clone, Default)]
pub struct LayerBuilder {
    entries: Vec<Entry>,
}

fn rel(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        self.entries.push(Entry::Dir {
            path: rel(path),
            mode,
        });
        self
    }

    pub fn file(mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Self {
        self.entries.push(Entry::File {
            path: rel(path),
            mode,
            data: data.into(),
        });
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.entries.push(Entry::Symlink {
            path: rel(path),
            target: target.to_string(),
        });
        self
    }

    /// A whiteout for `path` (`dir/.wh.name`): deletes `path` from lower layers.
    pub fn whiteout(self, path: &str) -> Self {
        let p = rel(path);
        let (dir, name) = match p.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n.to_string()),
            None => (String::new(), p),
        };
        self.file(&format!("{dir}.wh.{name}"), 0o644, Vec::new())
    }

    /// An opaque marker (`dir/.wh..wh..opq`): hides everything below `dir` from lower layers.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{}/.wh..wh..opq", rel(dir)), 0o644, Vec::new())
    }

    /// The uncompressed tar bytes.
    pub fn build_tar(&self) -> Result<Vec<u8>> {
        let mut entries: Vec<&Entry> = self.entries.iter().collect();
        entries.sort_by(|a, b| a.path().cmp(b.path()));
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match e {
                Entry::Dir { path, mode } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{path}/"), std::io::empty())?;
                }
                Entry::File { path, mode, data } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_slice())?;
                }
                Entry::Symlink { path, target } => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, target)?;
                }
            }
        }
        Ok(b.into_inner()?)
    }
}

/// A layer as referenced from a manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerDesc {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// sha256 of the uncompressed tar (as in the config's rootfs.diff_ids).
    pub diff_id: String,
}

/// One image manifest (the only one of a single image, or one entry of an index).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestDesc {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub os: String,
    pub architecture: String,
    pub config_digest: String,
    pub config_size: u64,
    pub config_media_type: String,
    pub layers: Vec<LayerDesc>,
}

/// A built image in an OCI layout directory.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Image {
    /// Fixture kind ("busybox", "multilayer", "multiplatform", "busybox-docker",
    /// "pause", "large-<mb>-<layers>-<seed>").
    pub kind: String,
    pub layout_dir: PathBuf,
    /// Tag in the layout's index.json (`org.opencontainers.image.ref.name`), "latest".
    pub tag: String,
    /// Media type of the top-level manifest (an index for `multiplatform`).
    pub media_type: String,
    /// Digest of the top-level manifest (the index digest for `multiplatform`).
    pub manifest_digest: String,
    pub manifest_size: u64,
    /// Config of the (first / linux-amd64) image manifest.
    pub config_digest: String,
    /// Layers of the (first / linux-amd64) image manifest.
    pub layers: Vec<LayerDesc>,
    /// For an index: its manifests (amd64 first). Empty for a single-manifest image.
    pub manifests: Vec<ManifestDesc>,
}

impl Image {
    pub fn is_index(&self) -> bool {
        !self.manifests.is_empty()
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.layout_dir
            .join("blobs/sha256")
            .join(digest_hex(digest))
    }

    pub fn blob(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.blob_path(digest);
        std::fs::read(&p).with_context(|| format!("read blob {}", p.display()))
    }

    /// Bytes of the top-level manifest (or index).
    pub fn manifest_bytes(&self) -> Result<Vec<u8>> {
        self.blob(&self.manifest_digest)
    }

    /// The parsed config of the (first) image manifest.
    pub fn config(&self) -> Result<Value> {
        Ok(serde_json::from_slice(&self.blob(&self.config_digest)?)?)
    }

    /// Digests of every blob in the layout (manifests, configs, layers), sorted.
    pub fn all_blobs(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(self.layout_dir.join("blobs/sha256"))? {
            v.push(format!("sha256:{}", e?.file_name().to_string_lossy()));
        }
        v.sort();
        Ok(v)
    }

    /// Sum of the layer sizes (compressed) of the (first) image manifest.
    pub fn layers_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// Which fixture to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One gzip layer: busybox + applet links, /etc/passwd, /etc/group, /tmp; Cmd ["sh"].
    Busybox,
    /// busybox (gzip) + layer 2 (zstd: files) + layer 3 (uncompressed: whiteout, opaque).
    Multilayer,
    /// OCI index with linux/amd64 and linux/arm64 manifests.
    Multiplatform,
    /// busybox with Docker schema2 media types.
    BusyboxDocker,
    /// A pause image: /pause (static catatonit), Entrypoint ["/pause", "-P"].
    Pause,
    /// Incompressible pseudo-random layers totalling about `size_mb` MiB.
    Large {
        size_mb: usize,
        layers: usize,
        seed: u64,
    },
}

impl Kind {
    pub fn name(&self) -> String {
        match self {
            Kind::Busybox => "busybox".into(),
            Kind::Multilayer => "multilayer".into(),
            Kind::Multiplatform => "multiplatform".into(),
            Kind::BusyboxDocker => "busybox-docker".into(),
            Kind::Pause => "pause".into(),
            Kind::Large {
                size_mb,
                layers,
                seed,
            } => format!("large-{size_mb}-{layers}-{seed}"),
        }
    }
}

struct Cache {
    dir: PathBuf,
    images: HashMap<Kind, &'static Image>,
}

static CACHE: OnceLock<Mutex<Option<Cache>>> = OnceLock::new();
static CACHE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_cache_dir() {
    if let Some(d) = CACHE_DIR.get() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Builds (once per process) and returns the fixture of `kind`.
///
/// All kinds but `Large` are also cached on disk across processes (several test
/// binaries, repeated runs) in `$TMPDIR/berth-fixture-cache/<key>`, where the key hashes
/// this file's source, the kind and the size/mtime of the host binaries they are built
/// from; set `BERTH_FIXTURE_NO_DISK_CACHE=1` to turn that off. `Large` fixtures live in a
/// per-process temp dir removed at exit.
pub fn get(kind: Kind) -> Result<&'static Image> {
    let lock = CACHE.get_or_init(|| Mutex::new(None));
    let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        let dir = tempfile::Builder::new()
            .prefix("berth-fixtures-")
            .tempdir()?
            .keep();
        if CACHE_DIR.set(dir.clone()).is_ok() {
            // SAFETY: registering a plain extern "C" fn with no captured state.
            unsafe {
                libc::atexit(remove_cache_dir);
            }
        }
        *guard = Some(Cache {
            dir,
            images: HashMap::new(),
        });
    }
    let cache = guard
        .as_mut()
        .ok_or_else(|| anyhow!("fixture cache missing"))?;
    if let Some(img) = cache.images.get(&kind) {
        return Ok(img);
    }
    let use_disk = !matches!(kind, Kind::Large { .. })
        && std::env::var_os("BERTH_FIXTURE_NO_DISK_CACHE").is_none();
    let img = if use_disk {
        build_disk_cached(kind)?
    } else {
        build(kind, &cache.dir.join(kind.name()))?
    };
    let img: &'static Image = Box::leak(Box::new(img));
    cache.images.insert(kind, img);
    Ok(img)
}

fn disk_cache_key(kind: Kind) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(include_str!("fixtures.rs"));
    h.update(kind.name());
    for bin in ["/bin/busybox", "/usr/bin/catatonit"] {
        if let Ok(md) = std::fs::metadata(bin) {
            use std::os::unix::fs::MetadataExt;
            h.update(format!("{bin}:{}:{}:{}", md.len(), md.mtime(), md.ino()));
        }
    }
    format!("{}-{}", kind.name(), &hex::encode(h.finalize())[..16])
}

fn build_disk_cached(kind: Kind) -> Result<Image> {
    let root = std::env::temp_dir().join("berth-fixture-cache");
    std::fs::create_dir_all(&root)?;
    let final_dir = root.join(disk_cache_key(kind));
    let meta = |d: &Path| d.join("fixture.json");
    if let Ok(bytes) = std::fs::read(meta(&final_dir)) {
        if let Ok(mut img) = serde_json::from_slice::<Image>(&bytes) {
            img.layout_dir = final_dir.join("layout");
            return Ok(img);
        }
    }
    // Build next to the final place, then rename: readers only ever see complete dirs.
    let tmp = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&root)?;
    let img = build(kind, &tmp.path().join("layout"))?;
    write_file(&meta(tmp.path()), &serde_json::to_vec_pretty(&img)?)?;
    let staged = tmp.keep();
    match std::fs::rename(&staged, &final_dir) {
        Ok(()) => {}
        Err(_) if meta(&final_dir).exists() => {
            // Another process won the race; its build is identical.
            let _ = std::fs::remove_dir_all(&staged);
        }
        Err(e) => return Err(e).context("install fixture into disk cache"),
    }
    Ok(Image {
        layout_dir: final_dir.join("layout"),
        ..img
    })
}

pub fn busybox() -> Result<&'static Image> {
    get(Kind::Busybox)
}
pub fn multilayer() -> Result<&'static Image> {
    get(Kind::Multilayer)
}
pub fn multiplatform() -> Result<&'static Image> {
    get(Kind::Multiplatform)
}
pub fn busybox_docker() -> Result<&'static Image> {
    get(Kind::BusyboxDocker)
}
pub fn pause() -> Result<&'static Image> {
    get(Kind::Pause)
}
pub fn large(size_mb: usize, layers: usize, seed: u64) -> Result<&'static Image> {
    get(Kind::Large {
        size_mb,
        layers,
        seed,
    })
}

/// Builds `kind` into the (new or empty) directory `dir`, uncached.
pub fn build(kind: Kind, dir: &Path) -> Result<Image> {
    let name = kind.name();
    match kind {
        Kind::Busybox => ImageBuilder::new(&name)
            .layer(busybox_layer()?, Compression::Gzip, "busybox base")
            .write(dir),
        Kind::BusyboxDocker => ImageBuilder::new(&name)
            .docker()
            .layer(busybox_layer()?, Compression::Gzip, "busybox base")
            .write(dir),
        Kind::Multilayer => {
            use multilayer_files as f;
            let l2 = LayerBuilder::new()
                .dir("/data", 0o755)
                .file(f::KEEP, 0o644, f::KEEP_CONTENT)
                .file(f::REMOVED, 0o644, f::REMOVED_CONTENT)
                .dir("/olddir", 0o755)
                .file(f::OLD_A, 0o644, "a\n")
                .file(f::OLD_B, 0o644, "b\n");
            let l3 = LayerBuilder::new()
                .dir("/data", 0o755)
                .whiteout(f::REMOVED)
                .dir("/olddir", 0o755)
                .opaque("/olddir")
                .file(f::NEW, 0o644, f::NEW_CONTENT);
            ImageBuilder::new(&name)
                .layer(busybox_layer()?, Compression::Gzip, "busybox base")
                .layer(l2, Compression::Zstd, "add /data and /olddir")
                .layer(l3, Compression::None, "whiteout and opaque dir")
                .write(dir)
        }
        Kind::Multiplatform => {
            let base = busybox_layer()?;
            IndexBuilder::new(&name)
                .platform(ImageBuilder::new(&name).arch("amd64").layer(
                    base.clone(),
                    Compression::Gzip,
                    "busybox base",
                ))
                .platform(ImageBuilder::new(&name).arch("arm64").layer(
                    base,
                    Compression::Gzip,
                    "busybox base",
                ))
                .write(dir)
        }
        Kind::Pause => {
            let pause = std::fs::read("/usr/bin/catatonit")
                .context("read /usr/bin/catatonit (apt-get install catatonit)")?;
            let l = LayerBuilder::new()
                .file("/pause", 0o755, pause)
                .dir("/dev", 0o755)
                .dir("/proc", 0o755)
                .dir("/sys", 0o755)
                .dir("/etc", 0o755)
                .file("/etc/passwd", 0o644, PASSWD)
                .file("/etc/group", 0o644, GROUP);
            ImageBuilder::new(&name)
                .layer(l, Compression::Gzip, "pause (catatonit -P)")
                .entrypoint(&["/pause", "-P"])
                .cmd(&[])
                .write(dir)
        }
        Kind::Large {
            size_mb,
            layers,
            seed,
        } => {
            let layers = layers.max(1);
            let total = size_mb * 1024 * 1024;
            let per = total / layers;
            let mut rng = XorShift64::new(seed);
            let mut b =
                ImageBuilder::new(&name).layer(busybox_layer()?, Compression::Gzip, "busybox base");
            for i in 0..layers {
                let mut data = vec![0u8; per];
                rng.fill(&mut data);
                let l = LayerBuilder::new().dir("/data", 0o755).file(
                    &format!("/data/blob-{i}.bin"),
                    0o644,
                    data,
                );
                b = b.layer(l, Compression::GzipStored, &format!("random data {i}"));
            }
            b.write(dir)
        }
    }
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n";

/// The busybox base layer (cached per process: the tar is the same every time).
pub fn busybox_layer() -> Result<LayerBuilder> {
    static LAYER: OnceLock<LayerBuilder> = OnceLock::new();
    if let Some(l) = LAYER.get() {
        return Ok(l.clone());
    }
    let bin = std::fs::read("/bin/busybox")
        .context("read /bin/busybox (apt-get install busybox-static)")?;
    let mut applets: Vec<String> = REQUIRED_APPLETS.iter().map(|s| s.to_string()).collect();
    if let Ok(out) = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
    {
        if out.status.success() {
            applets.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty() && !l.contains('/') && l != "busybox"),
            );
        }
    }
    applets.sort();
    applets.dedup();
    let mut l = LayerBuilder::new()
        .dir("/bin", 0o755)
        .file("/bin/busybox", 0o755, bin)
        .dir("/etc", 0o755)
        .file("/etc/passwd", 0o644, PASSWD)
        .file("/etc/group", 0o644, GROUP)
        .dir("/root", 0o700)
        .dir("/tmp", 0o1777)
        .dir("/var", 0o755)
        .dir("/home", 0o755);
    for a in &applets {
        l = l.symlink(&format!("/bin/{a}"), "busybox");
    }
    let _ = LAYER.set(l.clone());
    Ok(l)
}

/// Deterministic xorshift64* PRNG.
pub struct XorShift64(u64);

impl XorShift64 {
    pub fn new(seed: u64) -> Self {
        // Never zero; mix the seed a little.
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rem = chunks.into_remainder();
        let v = self.next_u64().to_le_bytes();
        let n = rem.len();
        rem.copy_from_slice(&v[..n]);
    }
}

/// Compresses `tar`, remembering results for small tars (the busybox base layer is
/// shared by most fixtures and gzip is slow in unoptimized builds).
fn compress_memo(c: Compression, tar: &[u8], diff_id: &str) -> Result<Vec<u8>> {
    type Memo = Mutex<HashMap<(Compression, String), Vec<u8>>>;
    static MEMO: OnceLock<Memo> = OnceLock::new();
    if tar.len() > 16 * 1024 * 1024 {
        return c.compress(tar);
    }
    let memo = MEMO.get_or_init(Default::default);
    let key = (c, diff_id.to_string());
    if let Some(b) = memo.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(b.clone());
    }
    let b = c.compress(tar)?;
    memo.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, b.clone());
    Ok(b)
}

/// Writes blobs into `<layout>/blobs/sha256/` and returns descriptors.
struct BlobWriter<'a> {
    dir: &'a Path,
}

impl BlobWriter<'_> {
    fn put(&self, data: &[u8]) -> Result<(String, u64)> {
        let digest = sha256_digest(data);
        let p = self.dir.join("blobs/sha256").join(digest_hex(&digest));
        if !p.exists() {
            write_file(&p, data)?;
        }
        Ok((digest, data.len() as u64))
    }
}

/// Builds one image manifest (with its config and layers).
#[derive(Clone)]
pub struct ImageBuilder {
    name: String,
    docker: bool,
    os: String,
    arch: String,
    layers: Vec<(LayerBuilder, Compression, String)>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Vec<String>,
    tag: String,
}

impl ImageBuilder {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            docker: false,
            os: "linux".into(),
            arch: "amd64".into(),
            layers: Vec::new(),
            entrypoint: None,
            cmd: Some(vec!["sh".into()]),
            env: vec![DEFAULT_PATH.into()],
            tag: "latest".into(),
        }
    }

    /// Docker schema2 media types instead of OCI.
    pub fn docker(mut self) -> Self {
        self.docker = true;
        self
    }

    pub fn arch(mut self, arch: &str) -> Self {
        self.arch = arch.to_string();
        self
    }

    pub fn tag(mut self, tag: &str) -> Self {
        self.tag = tag.to_string();
        self
    }

    pub fn layer(mut self, l: LayerBuilder, c: Compression, created_by: &str) -> Self {
        self.layers.push((l, c, created_by.to_string()));
        self
    }

    pub fn entrypoint(mut self, args: &[&str]) -> Self {
        self.entrypoint = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Empty `args` removes Cmd.
    pub fn cmd(mut self, args: &[&str]) -> Self {
        self.cmd = if args.is_empty() {
            None
        } else {
            Some(args.iter().map(|s| s.to_string()).collect())
        };
        self
    }

    pub fn env(mut self, kv: &str) -> Self {
        self.env.push(kv.to_string());
        self
    }

    /// Writes blobs and returns the manifest descriptor (no index.json).
    fn write_blobs(&self, w: &BlobWriter<'_>) -> Result<ManifestDesc> {
        let mut layers = Vec::new();
        let mut history = Vec::new();
        for (lb, c, created_by) in &self.layers {
            let tar = lb.build_tar()?;
            let diff_id = sha256_digest(&tar);
            let blob = compress_memo(*c, &tar, &diff_id)?;
            let (digest, size) = w.put(&blob)?;
            let media_type = if self.docker {
                if *c != Compression::Gzip && *c != Compression::GzipStored {
                    bail!("docker schema2 fixtures only support gzip layers");
                }
                MT_DOCKER_LAYER_GZIP.to_string()
            } else {
                c.oci_media_type().to_string()
            };
            layers.push(LayerDesc {
                digest,
                size,
                media_type,
                diff_id,
            });
            history.push(json!({
                "created": "1970-01-01T00:00:00Z",
                "created_by": format!("berth fixture {}: {}", self.name, created_by),
            }));
        }
        let mut cfg = serde_json::Map::new();
        cfg.insert("Env".into(), json!(self.env));
        if let Some(e) = &self.entrypoint {
            cfg.insert("Entrypoint".into(), json!(e));
        }
        if let Some(c) = &self.cmd {
            cfg.insert("Cmd".into(), json!(c));
        }
        cfg.insert("WorkingDir".into(), json!("/"));
        let config = json!({
            "created": "1970-01-01T00:00:00Z",
            "architecture": self.arch,
            "os": self.os,
            "config": Value::Object(cfg),
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": history,
        });
        let config_bytes = serde_json::to_vec(&config)?;
        let (config_digest, config_size) = w.put(&config_bytes)?;
        let (mt, config_mt) = if self.docker {
            (MT_DOCKER_MANIFEST, MT_DOCKER_CONFIG)
        } else {
            (MT_OCI_MANIFEST, MT_OCI_CONFIG)
        };
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {
                "mediaType": config_mt,
                "digest": config_digest,
                "size": config_size,
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let mbytes = serde_json::to_vec_pretty(&manifest)?;
        let (digest, size) = w.put(&mbytes)?;
        Ok(ManifestDesc {
            digest,
            size,
            media_type: mt.to_string(),
            os: self.os.clone(),
            architecture: self.arch.clone(),
            config_digest,
            config_size,
            config_media_type: config_mt.to_string(),
            layers,
        })
    }

    /// Writes a complete OCI layout for this single image into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Image> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        let m = self.write_blobs(&BlobWriter { dir })?;
        write_layout_index(dir, &m.media_type, &m.digest, m.size, &self.tag)?;
        Ok(Image {
            kind: self.name.clone(),
            layout_dir: dir.to_path_buf(),
            tag: self.tag.clone(),
            media_type: m.media_type.clone(),
            manifest_digest: m.digest.clone(),
            manifest_size: m.size,
            config_digest: m.config_digest.clone(),
            layers: m.layers.clone(),
            manifests: Vec::new(),
        })
    }
}

/// Builds an OCI image index over several platform images.
pub struct IndexBuilder {
    name: String,
    platforms: Vec<ImageBuilder>,
    tag: String,
}

impl IndexBuilder {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            platforms: Vec::new(),
            tag: "latest".into(),
        }
    }

    pub fn platform(mut self, b: ImageBuilder) -> Self {
        self.platforms.push(b);
        self
    }

    pub fn write(&self, dir: &Path) -> Result<Image> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        let w = BlobWriter { dir };
        let mut manifests = Vec::new();
        for p in &self.platforms {
            manifests.push(p.write_blobs(&w)?);
        }
        let first = manifests
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("index without platforms"))?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_INDEX,
            "manifests": manifests.iter().map(|m| json!({
                "mediaType": m.media_type,
                "digest": m.digest,
                "size": m.size,
                "platform": {"os": m.os, "architecture": m.architecture},
            })).collect::<Vec<_>>(),
        });
        let ibytes = serde_json::to_vec_pretty(&index)?;
        let (digest, size) = w.put(&ibytes)?;
        write_layout_index(dir, MT_OCI_INDEX, &digest, size, &self.tag)?;
        Ok(Image {
            kind: self.name.clone(),
            layout_dir: dir.to_path_buf(),
            tag: self.tag.clone(),
            media_type: MT_OCI_INDEX.to_string(),
            manifest_digest: digest,
            manifest_size: size,
            config_digest: first.config_digest.clone(),
            layers: first.layers.clone(),
            manifests,
        })
    }
}

fn write_layout_index(
    dir: &Path,
    media_type: &str,
    digest: &str,
    size: u64,
    tag: &str,
) -> Result<()> {
    write_file(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [{
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "annotations": {REF_NAME_ANNOTATION: tag},
        }],
    });
    write_file(&dir.join("index.json"), &serde_json::to_vec(&index)?)
}

/// Appends the tree below `dir` (sorted, uid/gid 0, mtime 0) under `prefix`.
fn append_tree(b: &mut tar::Builder<impl Write>, dir: &Path, prefix: &str) -> Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for n in names {
        let p = dir.join(&n);
        let name = format!("{prefix}{}", n.to_string_lossy());
        let md = std::fs::symlink_metadata(&p)?;
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        if md.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, format!("{name}/"), std::io::empty())?;
            append_tree(b, &p, &format!("{name}/"))?;
        } else if md.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(md.len());
            b.append_data(&mut h, &name, std::fs::File::open(&p)?)?;
        }
    }
    Ok(())
}

/// Writes an OCI archive (a plain tar of the layout: `oci-layout`, `index.json`,
/// `blobs/...`) of `layout_dir` to `out_tar`, reproducibly.
pub fn write_oci_archive(layout_dir: &Path, out_tar: &Path) -> Result<()> {
    let f =
        std::fs::File::create(out_tar).with_context(|| format!("create {}", out_tar.display()))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    append_tree(&mut b, layout_dir, "")?;
    b.into_inner()?.flush()?;
    Ok(())
}

/// Writes a `docker save` format tar of a single-manifest `image` to `out_tar`:
/// `manifest.json`, `repositories`, `<config hex>.json` and `<diff_id hex>/layer.tar`
/// (+ `VERSION`, `json`). `repo_tag` is e.g. "busybox:latest".
pub fn write_docker_archive(image: &Image, repo_tag: &str, out_tar: &Path) -> Result<()> {
    if image.is_index() {
        bail!("docker archive of an index is not supported");
    }
    let (repo, tag) = repo_tag
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("repo_tag needs a tag: {repo_tag}"))?;
    let f =
        std::fs::File::create(out_tar).with_context(|| format!("create {}", out_tar.display()))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    let add = |b: &mut tar::Builder<_>, name: &str, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data)?;
        Ok(())
    };
    let config_name = format!("{}.json", digest_hex(&image.config_digest));
    let mut layer_paths = Vec::new();
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut parent: Option<String> = None;
    for l in &image.layers {
        let tar = decompress_layer(&l.media_type, &image.blob(&l.digest)?)?;
        let id = digest_hex(&l.diff_id).to_string();
        let mut j = json!({"id": id, "created": "1970-01-01T00:00:00Z"});
        if let Some(p) = &parent {
            j["parent"] = json!(p);
        }
        entries.push((format!("{id}/VERSION"), b"1.0".to_vec()));
        entries.push((format!("{id}/json"), serde_json::to_vec(&j)?));
        entries.push((format!("{id}/layer.tar"), tar));
        layer_paths.push(format!("{id}/layer.tar"));
        parent = Some(id);
    }
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": [repo_tag],
        "Layers": layer_paths,
    }]);
    let repositories = json!({ repo: { tag: parent.unwrap_or_default() } });
    entries.push((config_name.clone(), image.blob(&image.config_digest)?));
    entries.push(("manifest.json".into(), serde_json::to_vec(&manifest)?));
    entries.push(("repositories".into(), serde_json::to_vec(&repositories)?));
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut seen_dirs = std::collections::BTreeSet::new();
    for (name, data) in &entries {
        if let Some((d, _)) = name.split_once('/') {
            if seen_dirs.insert(d.to_string()) {
                let mut h = tar::Header::new_gnu();
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, format!("{d}/"), std::io::empty())?;
            }
        }
        add(&mut b, name, data)?;
    }
    b.into_inner()?.flush()?;
    Ok(())
}

/// One entry of a tar, as listed by [`list_tar`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    pub path: String,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub size: u64,
    pub link: Option<String>,
}

/// Lists the entries of a (layer) tar, in archive order, for assertions.
pub fn list_tar(tar_bytes: &[u8]) -> Result<Vec<TarEntry>> {
    let mut a = tar::Archive::new(tar_bytes);
    let mut v = Vec::new();
    for e in a.entries()? {
        let e = e?;
        let h = e.header();
        v.push(TarEntry {
            path: e.path()?.to_string_lossy().into_owned(),
            kind: h.entry_type(),
            mode: h.mode()?,
            size: h.size()?,
            link: e.link_name()?.map(|l| l.to_string_lossy().into_owned()),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn check_layout(img: &Image) {
        // every blob's name is its digest
        for d in img.all_blobs().unwrap() {
            assert_eq!(sha256_digest(&img.blob(&d).unwrap()), d);
        }
        let index: Value =
            serde_json::from_slice(&std::fs::read(img.layout_dir.join("index.json")).unwrap())
                .unwrap();
        assert_eq!(index["manifests"][0]["digest"], json!(img.manifest_digest));
        assert_eq!(
            index["manifests"][0]["annotations"][REF_NAME_ANNOTATION],
            json!(img.tag)
        );
        let single: Vec<ManifestDesc> = if img.is_index() {
            img.manifests.clone()
        } else {
            vec![ManifestDesc {
                digest: img.manifest_digest.clone(),
                size: img.manifest_size,
                media_type: img.media_type.clone(),
                os: String::new(),
                architecture: String::new(),
                config_digest: img.config_digest.clone(),
                config_size: 0,
                config_media_type: String::new(),
                layers: img.layers.clone(),
            }]
        };
        for m in single {
            let man: Value = serde_json::from_slice(&img.blob(&m.digest).unwrap()).unwrap();
            assert_eq!(man["mediaType"], json!(m.media_type));
            assert_eq!(man["config"]["digest"], json!(m.config_digest));
            let cfg: Value = serde_json::from_slice(&img.blob(&m.config_digest).unwrap()).unwrap();
            let diff_ids = cfg["rootfs"]["diff_ids"].as_array().unwrap();
            assert_eq!(diff_ids.len(), m.layers.len());
            assert_eq!(cfg["history"].as_array().unwrap().len(), m.layers.len());
            for (i, l) in m.layers.iter().enumerate() {
                assert_eq!(man["layers"][i]["digest"], json!(l.digest));
                assert_eq!(man["layers"][i]["size"], json!(l.size));
                assert_eq!(man["layers"][i]["mediaType"], json!(l.media_type));
                let tar = decompress_layer(&l.media_type, &img.blob(&l.digest).unwrap()).unwrap();
                assert_eq!(sha256_digest(&tar), l.diff_id);
                assert_eq!(diff_ids[i], json!(l.diff_id));
            }
        }
    }

    #[test]
    fn busybox_image_is_valid_and_fast() {
        let t = Instant::now();
        let img = busybox().unwrap();
        let took = t.elapsed();
        eprintln!("busybox fixture built in {took:?}");
        check_layout(img);
        assert_eq!(img.media_type, MT_OCI_MANIFEST);
        assert_eq!(img.layers.len(), 1);
        assert_eq!(img.layers[0].media_type, MT_OCI_LAYER_GZIP);
        let cfg = img.config().unwrap();
        assert_eq!(cfg["config"]["Cmd"], json!(["sh"]));
        assert_eq!(cfg["config"]["Env"], json!([DEFAULT_PATH]));
        assert_eq!(cfg["architecture"], json!("amd64"));
        let tar =
            decompress_layer(MT_OCI_LAYER_GZIP, &img.blob(&img.layers[0].digest).unwrap()).unwrap();
        let entries = list_tar(&tar).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "entries sorted");
        for a in REQUIRED_APPLETS {
            let p = format!("bin/{a}");
            let e = entries
                .iter()
                .find(|e| e.path == p)
                .unwrap_or_else(|| panic!("{p}"));
            assert_eq!(e.kind, tar::EntryType::Symlink);
            assert_eq!(e.link.as_deref(), Some("busybox"));
        }
        let tmp = entries.iter().find(|e| e.path == "tmp/").unwrap();
        assert_eq!(tmp.mode, 0o1777);
        assert!(names.contains(&"etc/passwd"));
        let bb = entries.iter().find(|e| e.path == "bin/busybox").unwrap();
        assert_eq!(bb.mode, 0o755);
        // cached: same instance
        assert!(std::ptr::eq(img, busybox().unwrap()));
    }

    #[test]
    fn fixtures_are_reproducible() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        // (Multiplatform and BusyboxDocker share all code paths with these.)
        for kind in [
            Kind::Busybox,
            Kind::Multilayer,
            Kind::Large {
                size_mb: 1,
                layers: 2,
                seed: 7,
            },
        ] {
            let x = build(kind, &a.path().join(kind.name())).unwrap();
            let y = build(kind, &b.path().join(kind.name())).unwrap();
            assert_eq!(x.manifest_digest, y.manifest_digest, "{kind:?}");
            assert_eq!(x.config_digest, y.config_digest);
            assert_eq!(x.layers, y.layers);
            assert_eq!(x.all_blobs().unwrap(), y.all_blobs().unwrap());
        }
        // and matches the cached build
        let c = busybox().unwrap();
        let x = build(Kind::Busybox, &a.path().join("again")).unwrap();
        assert_eq!(c.manifest_digest, x.manifest_digest);
        // archives are reproducible too
        write_oci_archive(&x.layout_dir, &a.path().join("1.tar")).unwrap();
        write_oci_archive(&c.layout_dir, &a.path().join("2.tar")).unwrap();
        assert_eq!(
            std::fs::read(a.path().join("1.tar")).unwrap(),
            std::fs::read(a.path().join("2.tar")).unwrap()
        );
    }

    #[test]
    fn multilayer_has_all_compressions_and_whiteouts() {
        let img = multilayer().unwrap();
        check_layout(img);
        let mts: Vec<&str> = img.layers.iter().map(|l| l.media_type.as_str()).collect();
        assert_eq!(
            mts,
            [MT_OCI_LAYER_GZIP, MT_OCI_LAYER_ZSTD, MT_OCI_LAYER_TAR]
        );
        let l3 = img.blob(&img.layers[2].digest).unwrap();
        let names: Vec<String> = list_tar(&l3).unwrap().into_iter().map(|e| e.path).collect();
        assert_eq!(
            names,
            [
                "data/",
                "data/.wh.remove-me.txt",
                "olddir/",
                "olddir/.wh..wh..opq",
                "olddir/new"
            ]
        );
        let l2 =
            decompress_layer(MT_OCI_LAYER_ZSTD, &img.blob(&img.layers[1].digest).unwrap()).unwrap();
        let names: Vec<String> = list_tar(&l2).unwrap().into_iter().map(|e| e.path).collect();
        assert!(names.contains(&"data/remove-me.txt".to_string()));
        assert_eq!(
            img.layers[0],
            busybox().unwrap().layers[0],
            "shared base layer"
        );
    }

    #[test]
    fn multiplatform_index() {
        let img = multiplatform().unwrap();
        check_layout(img);
        assert_eq!(img.media_type, MT_OCI_INDEX);
        assert_eq!(img.manifests.len(), 2);
        assert_eq!(img.manifests[0].architecture, "amd64");
        assert_eq!(img.manifests[1].architecture, "arm64");
        assert_ne!(img.manifests[0].digest, img.manifests[1].digest);
        assert_ne!(
            img.manifests[0].config_digest,
            img.manifests[1].config_digest
        );
        let idx: Value = serde_json::from_slice(&img.manifest_bytes().unwrap()).unwrap();
        assert_eq!(idx["manifests"][1]["platform"]["architecture"], "arm64");
        assert_eq!(img.config_digest, img.manifests[0].config_digest);
    }

    #[test]
    fn docker_variant_and_archives() {
        let img = busybox_docker().unwrap();
        check_layout(img);
        assert_eq!(img.media_type, MT_DOCKER_MANIFEST);
        assert_eq!(img.layers[0].media_type, MT_DOCKER_LAYER_GZIP);
        let man: Value = serde_json::from_slice(&img.manifest_bytes().unwrap()).unwrap();
        assert_eq!(man["config"]["mediaType"], MT_DOCKER_CONFIG);
        let bb = busybox().unwrap();
        assert_eq!(img.layers[0].digest, bb.layers[0].digest);
        assert_ne!(img.manifest_digest, bb.manifest_digest);

        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("save.tar");
        write_docker_archive(bb, "busybox:latest", &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let mut a = tar::Archive::new(bytes.as_slice());
        let mut files = HashMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let mut d = Vec::new();
            e.read_to_end(&mut d).unwrap();
            files.insert(e.path().unwrap().to_string_lossy().into_owned(), d);
        }
        let m: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let layer = m[0]["Layers"][0].as_str().unwrap();
        assert_eq!(sha256_digest(&files[layer]), bb.layers[0].diff_id);
        let cfg = m[0]["Config"].as_str().unwrap();
        assert_eq!(sha256_digest(&files[cfg]), bb.config_digest);
        assert_eq!(m[0]["RepoTags"], json!(["busybox:latest"]));
        assert!(files.contains_key("repositories"));

        let oci = dir.path().join("oci.tar");
        write_oci_archive(&bb.layout_dir, &oci).unwrap();
        let bytes = std::fs::read(&oci).unwrap();
        let names: Vec<String> = list_tar(&bytes)
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert!(names.contains(&"oci-layout".to_string()));
        assert!(names.contains(&"index.json".to_string()));
        assert!(names.contains(&format!("blobs/sha256/{}", digest_hex(&bb.manifest_digest))));
    }

    #[test]
    fn large_and_pause() {
        let t = Instant::now();
        let img = large(4, 2, 1).unwrap();
        eprintln!("large(4,2) built in {:?}", t.elapsed());
        check_layout(img);
        assert_eq!(img.layers.len(), 3);
        let data: u64 = img.layers[1..].iter().map(|l| l.size).sum();
        assert!(data >= 4 * 1024 * 1024, "incompressible: {data}");
        assert_ne!(
            large(4, 2, 2).unwrap().layers[1].digest,
            img.layers[1].digest
        );
        let p = pause().unwrap();
        check_layout(p);
        assert_eq!(
            p.config().unwrap()["config"]["Entrypoint"],
            json!(["/pause", "-P"])
        );
    }
}
