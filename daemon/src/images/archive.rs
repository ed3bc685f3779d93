//! Import and export of image archives: OCI image layout tars (what
//! `skopeo copy oci-archive:` and `ctr images import/export` use) and, for
//! import, `docker save` tars.
//!
//! Import stages the upload in a temp file, then streams every blob of the tar
//! into the content store (verifying the digests an OCI layout names), and
//! only then records the images: a bad archive leaves no image behind, and
//! its blobs are unreferenced, so GC removes them.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Component, Path};
use std::pin::Pin;
use std::sync::Arc;

use berth_api::images::v1 as pb;
use content_store::{ContentStore, Digest, Expected};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use tracing::info;

use super::error::{blocking, ImageError};
use super::gc::{children, Lease};
use super::store::{now_nanos, ImageRecord};
use super::ImageService;
use berth_distribution::oci::{self, Descriptor};
use berth_distribution::reference::Reference;

const ANNOTATION_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF: &str = "org.opencontainers.image.ref.name";
/// Metadata files (index.json, manifest.json...) larger than this are refused.
const MAX_METADATA: u64 = 4 << 20;

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

fn bad(what: impl Into<String>) -> ImageError {
    ImageError::InvalidArgument(format!("import: {}", what.into()))
}

/// An archive path made safe: relative, no `..`, no leading `./`.
fn clean_path(p: &Path) -> Result<String, ImageError> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(
                s.to_str()
                    .ok_or_else(|| bad(format!("archive entry {} is not UTF-8", p.display())))?,
            ),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(bad(format!(
                    "archive entry {:?} has an unsafe path (absolute or with ..)",
                    p.display().to_string()
                )))
            }
        }
    }
    Ok(parts.join("/"))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// What pass one over the tar found.
#[derive(Default)]
struct Scanned {
    /// Archive path -> blob written to the store.
    files: HashMap<String, (Digest, u64)>,
    /// Symlinks (docker save dedupes layers with them): path -> target path.
    links: HashMap<String, String>,
    index_json: Option<Vec<u8>>,
    manifest_json: Option<Vec<u8>>,
}

fn read_small(entry: &mut impl Read, name: &str) -> Result<Vec<u8>, ImageError> {
    let mut buf = Vec::new();
    entry
        .take(MAX_METADATA + 1)
        .read_to_end(&mut buf)
        .map_err(|e| bad(format!("reading {name}: {e}")))?;
    if buf.len() as u64 > MAX_METADATA {
        return Err(bad(format!("{name} is larger than {MAX_METADATA} bytes")));
    }
    Ok(buf)
}

fn store_entry(
    content: &ContentStore,
    lease: &Lease,
    entry: &mut impl Read,
    path: &str,
    expected: Option<Digest>,
) -> Result<(Digest, u64), ImageError> {
    if let Some(d) = &expected {
        lease.add_blocking(d.as_str());
        if content.exists(d) {
            let info = content.info(d).map_err(ImageError::content(path))?;
            return Ok((info.digest, info.size));
        }
    }
    let reference = format!("import-{}-{}", now_nanos(), rand::random::<u32>());
    let mut w = content
        .writer(&reference, expected.clone().map(|d| Expected::new(d, None)))
        .map_err(ImageError::content(path))?;
    let copied = std::io::copy(entry, &mut w);
    if let Err(e) = copied {
        let _ = w.abort();
        return Err(bad(format!("reading {path}: {e}")));
    }
    // Leased before it is committed: a GC running in between must not take
    // a blob nothing references yet.
    let digest = w.digest_so_far();
    lease.add_blocking(digest.as_str());
    let info = match w.commit(None, None) {
        Ok(i) => i,
        Err(content_store::Error::DigestMismatch { actual, .. }) => {
            return Err(bad(format!(
                "{path} does not match its name: its digest is {actual}"
            )))
        }
        Err(e) => return Err(ImageError::content(path)(e)),
    };
    Ok((info.digest, info.size))
}

fn scan(content: &ContentStore, lease: &Lease, file: std::fs::File) -> Result<Scanned, ImageError> {
    let mut out = Scanned::default();
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("corrupt tar archive: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| bad(format!("bad entry name: {e}")))?
            .into_owned();
        let path = clean_path(&raw)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(|e| bad(format!("bad link in {path}: {e}")))?
                .ok_or_else(|| bad(format!("link {path} has no target")))?;
            // Symlink targets are relative to the link's directory.
            let base = if kind.is_symlink() {
                Path::new(&path)
                    .parent()
                    .unwrap_or(Path::new(""))
                    .join(target)
            } else {
                target.into_owned()
            };
            let mut parts: Vec<String> = Vec::new();
            for c in base.components() {
                match c {
                    Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
                    Component::ParentDir => {
                        if parts.pop().is_none() {
                            return Err(bad(format!("link {path} points outside the archive")));
                        }
                    }
                    Component::CurDir => {}
                    _ => return Err(bad(format!("link {path} points outside the archive"))),
                }
            }
            out.links.insert(path, parts.join("/"));
            continue;
        }
        if !kind.is_file() {
            return Err(bad(format!("archive entry {path} is not a regular file")));
        }
        match path.as_str() {
            "index.json" => out.index_json = Some(read_small(&mut entry, &path)?),
            "manifest.json" => out.manifest_json = Some(read_small(&mut entry, &path)?),
            "oci-layout" | "repositories" => {}
            _ => {
                let expected = match path.strip_prefix("blobs/sha256/") {
                    Some(hex) => Some(
                        Digest::parse(&format!("sha256:{hex}"))
                            .map_err(|_| bad(format!("{path} is not named by a sha256 digest")))?,
                    ),
                    None if path.starts_with("blobs/") => {
                        return Err(bad(format!("{path}: only sha256 blobs are supported")))
                    }
                    None if path.ends_with(".tar") || path.ends_with(".json") => None,
                    None => continue,
                };
                let stored = store_entry(content, lease, &mut entry, &path, expected)?;
                out.files.insert(path, stored);
            }
        }
    }
    Ok(out)
}

impl Scanned {
    fn lookup(&self, path: &str) -> Option<&(Digest, u64)> {
        let mut p = path.trim_start_matches("./").to_string();
        for _ in 0..8 {
            if let Some(f) = self.files.get(&p) {
                return Some(f);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }
}

/// Names an index entry: a full reference annotation wins; a bare tag joins
/// the base name.
pub(crate) fn entry_name(desc: &Descriptor, base: &str) -> Result<Option<String>, ImageError> {
    let ann = desc.annotations.clone().unwrap_or_default();
    if let Some(n) = ann.get(ANNOTATION_NAME) {
        let r = Reference::parse_normalized(n).map_err(|e| bad(e.to_string()))?;
        return Ok(Some(r.to_string()));
    }
    if let Some(n) = ann.get(ANNOTATION_REF) {
        let full = if n.contains('/') || (base.is_empty() && n.contains(':')) {
            n.clone()
        } else if !base.is_empty() {
            format!("{base}:{n}")
        } else {
            return Ok(None);
        };
        let r = Reference::parse_normalized(&full).map_err(|e| bad(e.to_string()))?;
        return Ok(Some(r.to_string()));
    }
    if base.is_empty() {
        return Ok(None);
    }
    let r = Reference::parse_normalized(base).map_err(|e| bad(e.to_string()))?;
    Ok(Some(r.to_string()))
}

/// Size and config digest of the first platform manifest present.
fn summarize(content: &ContentStore, top: &Descriptor) -> Result<(i64, String), ImageError> {
    let manifest = if oci::is_index(&top.media_type) {
        children(content, top, MAX_METADATA)
            .into_iter()
            .find(|d| {
                oci::is_manifest(&d.media_type)
                    && Digest::parse(&d.digest).is_ok_and(|dg| content.exists(&dg))
            })
            .ok_or_else(|| {
                bad(format!(
                    "index {} has no manifest in the archive",
                    top.digest
                ))
            })?
    } else {
        top.clone()
    };
    let parts = children(content, &manifest, MAX_METADATA);
    if parts.is_empty() {
        return Err(bad(format!(
            "manifest {} is missing or empty",
            manifest.digest
        )));
    }
    for p in &parts {
        let present = Digest::parse(&p.digest).is_ok_and(|d| content.exists(&d));
        if !present {
            return Err(bad(format!(
                "archive lacks blob {} of manifest {}",
                p.digest, manifest.digest
            )));
        }
    }
    let size = manifest.size + parts.iter().map(|p| p.size).sum::<i64>();
    Ok((size, parts[0].digest.clone()))
}

fn docker_images(
    content: &ContentStore,
    lease: &Lease,
    scanned: &Scanned,
    manifest_json: &[u8],
) -> Result<Vec<(String, Descriptor)>, ImageError> {
    let entries: Vec<DockerManifestEntry> = serde_json::from_slice(manifest_json)
        .map_err(|e| bad(format!("manifest.json is not valid: {e}")))?;
    let mut out = Vec::new();
    for e in entries {
        let (config, config_size) = scanned
            .lookup(&e.config)
            .ok_or_else(|| {
                bad(format!(
                    "manifest.json names config {} not in the archive",
                    e.config
                ))
            })?
            .clone();
        let mut layers = Vec::new();
        for l in &e.layers {
            let (digest, size) = scanned
                .lookup(l)
                .ok_or_else(|| bad(format!("manifest.json names layer {l} not in the archive")))?
                .clone();
            let mut magic = [0u8; 4];
            let n = content
                .reader(&digest)
                .and_then(|r| {
                    r.read_at(&mut magic, 0)
                        .map_err(|e| content_store::Error::Io {
                            context: "reading layer".into(),
                            path: l.into(),
                            source: e,
                        })
                })
                .map_err(ImageError::content(l))?;
            let media_type = match &magic[..n] {
                [0x1f, 0x8b, ..] => oci::DOCKER_LAYER_GZIP,
                [0x28, 0xb5, 0x2f, 0xfd] => oci::OCI_LAYER_ZSTD,
                _ => oci::DOCKER_LAYER,
            };
            layers.push(serde_json::json!({
                "mediaType": media_type, "size": size, "digest": digest.as_str()
            }));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::DOCKER_MANIFEST,
            "config": {"mediaType": oci::DOCKER_CONFIG, "size": config_size, "digest": config.as_str()},
            "layers": layers,
        });
        let body =
            serde_json::to_vec(&manifest).map_err(|e| ImageError::Internal(e.to_string()))?;
        let digest = Digest::of(&body);
        lease.add_blocking(digest.as_str());
        content
            .write_blob(&body, Some(&digest))
            .map_err(ImageError::content("manifest"))?;
        let desc = Descriptor {
            media_type: oci::DOCKER_MANIFEST.into(),
            digest: digest.to_string(),
            size: body.len() as i64,
            urls: None,
            annotations: None,
            platform: None,
        };
        for tag in e.repo_tags.unwrap_or_default() {
            let r = Reference::parse_normalized(&tag).map_err(|e| bad(e.to_string()))?;
            out.push((r.to_string(), desc.clone()));
        }
    }
    Ok(out)
}

impl ImageService {
    pub async fn import(
        self: &Arc<Self>,
        mut chunks: Streaming<pb::ImportChunk>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let tmp_dir = self.config.root.join("tmp");
        let dir = tmp_dir.clone();
        let staged = blocking(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|e| ImageError::Internal(format!("creating {}: {e}", dir.display())))?;
            tempfile::NamedTempFile::new_in(&dir).map_err(|e| {
                ImageError::Internal(format!("staging import in {}: {e}", dir.display()))
            })
        })
        .await?;
        let (file, path) = staged.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let mut base_name = String::new();
        let mut received = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk
                .map_err(|e| ImageError::InvalidArgument(format!("import: upload broke: {e}")))?;
            if base_name.is_empty() && !chunk.base_name.is_empty() {
                base_name = chunk.base_name;
            }
            received += chunk.data.len() as u64;
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk.data)
                .await
                .map_err(|e| ImageError::Internal(format!("staging import: {e}")))?;
        }
        if received == 0 {
            return Err(bad("the archive is empty"));
        }
        let file = file.into_std().await;
        let content = self.content.clone();
        let lease = self.leases.create("import");
        let svc = self.clone();
        // The import stops unpacking if its caller goes away (see CancelOnDrop).
        let stop = super::unpack::CancelOnDrop::new();
        let cancel = stop.flag();
        let found = blocking(move || {
            use std::io::Seek;
            let mut file = file;
            file.rewind().map_err(|e| ImageError::Internal(e.to_string()))?;
            let scanned = scan(&content, &lease, file)?;
            drop(path);
            let mut named: Vec<(String, Descriptor)> = Vec::new();
            if let Some(index) = &scanned.index_json {
                let idx: oci::Index = serde_json::from_slice(index)
                    .map_err(|e| bad(format!("index.json is not valid: {e}")))?;
                for m in &idx.manifests {
                    if let Some(n) = entry_name(m, &base_name)? {
                        let mut d = m.clone();
                        d.annotations = None;
                        named.push((n, d));
                    }
                }
            }
            if named.is_empty() {
                if let Some(mj) = &scanned.manifest_json {
                    named = docker_images(&content, &lease, &scanned, mj)?;
                }
            }
            if named.is_empty() {
                return Err(bad(if scanned.index_json.is_some() || scanned.manifest_json.is_some() {
                    "the archive's images have no names; pass a base name (berthctl images import --base-name NAME)"
                } else {
                    "not an OCI image layout or docker-save archive (no index.json or manifest.json)"
                }));
            }
            let now = now_nanos();
            let mut records = Vec::new();
            for (name, target) in named {
                let (size, config_digest) = summarize(&content, &target)?;
                // Unpack before recording: an image is usable once listed.
                for chain in super::snapshots::image_chains(&content, &target, MAX_METADATA) {
                    for c in &chain {
                        lease.add_blocking(&format!("{}{}", super::gc::SNAPSHOT_LEASE_PREFIX, c.chain_id));
                    }
                    svc.unpack_chain_until(&name, &chain, &cancel)?;
                }
                records.push(ImageRecord {
                    name,
                    target,
                    labels: HashMap::new(),
                    created_at: now,
                    updated_at: now,
                    size,
                    config_digest,
                });
            }
            Ok((records, lease))
        })
        .await?;
        drop(stop);
        let (records, lease) = found;
        let images = self.images.clone();
        let records = blocking(move || images.put_all(records).map_err(ImageError::from)).await?;
        drop(lease);
        for r in &records {
            info!(image = %r.name, digest = %r.target.digest, "imported image");
        }
        let _ = tmp_dir;
        Ok(records)
    }

    pub async fn export(
        &self,
        names: Vec<String>,
        all_platforms: bool,
    ) -> Result<ExportStream, ImageError> {
        if names.is_empty() {
            return Err(ImageError::InvalidArgument(
                "export: name at least one image".into(),
            ));
        }
        let records = names
            .iter()
            .map(|n| self.lookup(n))
            .collect::<Result<Vec<_>, _>>()?;
        let content = self.content.clone();
        let (tx, rx) = mpsc::channel::<Result<pb::ExportChunk, Status>>(4);
        let err_tx = tx.clone();
        tokio::task::spawn_blocking(move || {
            let res = write_layout(&content, &records, all_platforms, ChunkWriter::new(tx));
            if let Err(e) = res {
                let _ = err_tx.blocking_send(Err(e.into()));
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// Sends the tar in 1 MiB chunks; a client that goes away stops the writer.
struct ChunkWriter {
    tx: mpsc::Sender<Result<pb::ExportChunk, Status>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    const CHUNK: usize = 1 << 20;
    fn new(tx: mpsc::Sender<Result<pb::ExportChunk, Status>>) -> Self {
        ChunkWriter {
            tx,
            buf: Vec::with_capacity(Self::CHUNK),
        }
    }
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::CHUNK));
        self.tx
            .blocking_send(Ok(pb::ExportChunk { data }))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "export client went away")
            })
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(Self::CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= Self::CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

fn tar_header(path: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    // Paths here are short and ASCII, so set_path cannot fail in practice.
    let _ = h.set_path(path);
    h.set_cksum();
    h
}

fn write_layout(
    content: &ContentStore,
    records: &[ImageRecord],
    all_platforms: bool,
    out: ChunkWriter,
) -> Result<(), ImageError> {
    let io_err = |e: std::io::Error| ImageError::Internal(format!("export: {e}"));
    let mut blobs: BTreeMap<String, Descriptor> = BTreeMap::new();
    let mut index_entries = Vec::new();
    let mut docker_manifest = Vec::new();
    for rec in records {
        let mut queue = vec![rec.target.clone()];
        while let Some(d) = queue.pop() {
            let present = Digest::parse(&d.digest).is_ok_and(|dg| content.exists(&dg));
            if !present {
                if all_platforms || !oci::is_manifest(&d.media_type) {
                    return Err(ImageError::BadImage {
                        image: rec.name.clone(),
                        reason: format!("blob {} is not in the content store", d.digest),
                    });
                }
                // A platform never pulled: the index still names it.
                continue;
            }
            queue.extend(children(content, &d, MAX_METADATA));
            blobs.insert(d.digest.clone(), d);
        }
        let mut target = rec.target.clone();
        let mut ann = BTreeMap::new();
        ann.insert(ANNOTATION_NAME.to_string(), rec.name.clone());
        if let Ok(r) = Reference::parse_normalized(&rec.name) {
            if let Some(tag) = r.tag() {
                ann.insert(ANNOTATION_REF.to_string(), tag.to_string());
            }
            if oci::is_manifest(&target.media_type) {
                let parts = children(content, &target, MAX_METADATA);
                if let Some((config, layers)) = parts.split_first() {
                    docker_manifest.push(serde_json::json!({
                        "Config": format!("blobs/sha256/{}", config.digest.trim_start_matches("sha256:")),
                        "RepoTags": if r.tag().is_some() { vec![r.familiar()] } else { vec![] },
                        "Layers": layers.iter().map(|l| format!("blobs/sha256/{}", l.digest.trim_start_matches("sha256:"))).collect::<Vec<_>>(),
                    }));
                }
            }
        }
        target.annotations = Some(ann);
        index_entries.push(target);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::OCI_INDEX,
        "manifests": index_entries,
    });
    let index = serde_json::to_vec(&index).map_err(|e| ImageError::Internal(e.to_string()))?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let mut tar = tar::Builder::new(out);
    let add = |tar: &mut tar::Builder<ChunkWriter>, path: &str, data: &[u8]| {
        let h = tar_header(path, data.len() as u64);
        tar.append(&h, data).map_err(io_err)
    };
    add(&mut tar, "oci-layout", layout)?;
    for digest in blobs.keys() {
        let d = Digest::parse(digest).map_err(ImageError::content(digest))?;
        let reader = content.reader(&d).map_err(ImageError::content(digest))?;
        let h = tar_header(&format!("blobs/sha256/{}", d.hex()), reader.size());
        tar.append(&h, reader).map_err(io_err)?;
    }
    if !docker_manifest.is_empty() {
        let mj = serde_json::to_vec(&docker_manifest)
            .map_err(|e| ImageError::Internal(e.to_string()))?;
        add(&mut tar, "manifest.json", &mj)?;
    }
    add(&mut tar, "index.json", &index)?;
    let mut out = tar.into_inner().map_err(io_err)?;
    out.flush().map_err(io_err)?;
    Ok(())
}
