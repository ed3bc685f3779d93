//! Runs the berthctl binary against an in-process fake berthd on a Unix
//! socket, to check wiring, output and exit codes end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::content::v1::content_server::{Content, ContentServer};
use berth_api::content::v1::*;
use berth_api::images::v1::images_server::{Images, ImagesServer};
use berth_api::images::v1::layer_progress::State as LState;
use berth_api::images::v1::*;
use berth_api::system::v1::system_server::{System, SystemServer};
use berth_api::system::v1::*;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

const BUSYBOX: &str = "docker.io/library/busybox:latest";
const INDEX_DIGEST: &str =
    "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const LAYER_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const CONFIG_B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

#[derive(Default)]
struct Seen {
    import_chunks: Vec<usize>,
    import_bytes: Vec<u8>,
    import_base_names: Vec<String>,
    pull_requests: Vec<PullRequest>,
    removed: Vec<(String, bool)>,
}

#[derive(Default)]
struct Fake {
    seen: Arc<Mutex<Seen>>,
    pull_cancelled: Arc<AtomicBool>,
}

/// Sets a flag when the server drops the stream, i.e. when the call ends.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn image() -> Image {
    Image {
        name: BUSYBOX.into(),
        target: Some(Descriptor {
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            digest: INDEX_DIGEST.into(),
            size: 9000,
            annotations: HashMap::new(),
        }),
        labels: HashMap::new(),
        created_at: 1_700_000_000_000_000_000,
        updated_at: 1_700_000_000_000_000_000,
        size: 2_150_000,
        config_digest: CONFIG_B.into(),
    }
}

fn layer(digest: &str, mt: &str, state: LState, done: i64, total: i64) -> LayerProgress {
    LayerProgress {
        digest: digest.into(),
        media_type: mt.into(),
        done,
        total,
        state: state as i32,
    }
}

fn progress(status: &str, layers: Vec<LayerProgress>, image: Option<Image>) -> PullProgress {
    PullProgress {
        reference: BUSYBOX.into(),
        status: status.into(),
        layers,
        image,
    }
}

#[tonic::async_trait]
impl Images for Fake {
    type PullStream = BoxStream<PullProgress>;
    type PushStream = BoxStream<PushProgress>;
    type ExportStream = BoxStream<ExportChunk>;

    async fn pull(&self, req: Request<PullRequest>) -> Result<Response<Self::PullStream>, Status> {
        let req = req.into_inner();
        self.seen.lock().unwrap().pull_requests.push(req.clone());
        const L: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
        const C: &str = "application/vnd.oci.image.config.v1+json";
        match req.reference.as_str() {
            "busybox" => {
                let events = vec![
                    progress("resolving", vec![], None),
                    progress(
                        "fetching",
                        vec![
                            layer(LAYER_A, L, LState::Waiting, 0, 2_100_000),
                            layer(CONFIG_B, C, LState::Exists, 600, 600),
                        ],
                        None,
                    ),
                    progress(
                        "fetching",
                        vec![
                            layer(LAYER_A, L, LState::Downloading, 1000, 2_100_000),
                            layer(CONFIG_B, C, LState::Exists, 600, 600),
                        ],
                        None,
                    ),
                    progress(
                        "fetching",
                        vec![
                            layer(LAYER_A, L, LState::Downloading, 2_000_000, 2_100_000),
                            layer(CONFIG_B, C, LState::Exists, 600, 600),
                        ],
                        None,
                    ),
                    progress(
                        "done",
                        vec![
                            layer(LAYER_A, L, LState::Done, 2_100_000, 2_100_000),
                            layer(CONFIG_B, C, LState::Exists, 600, 600),
                        ],
                        Some(image()),
                    ),
                ];
                Ok(Response::new(Box::pin(futures::stream::iter(
                    events.into_iter().map(Ok),
                ))))
            }
            "slow" => {
                // About three seconds of progress at the daemon's ~100ms cadence,
                // for watching the terminal view (see `serve_for_manual_testing`).
                let layers = |step: i64| {
                    let st = |d: i64, t: i64| {
                        if d >= t {
                            LState::Done
                        } else {
                            LState::Downloading
                        }
                    };
                    vec![
                        layer(CONFIG_B, C, LState::Exists, 600, 600),
                        layer(
                            LAYER_A,
                            L,
                            st(step * 100_000, 2_100_000),
                            (step * 100_000).min(2_100_000),
                            2_100_000,
                        ),
                        layer(
                            INDEX_DIGEST,
                            L,
                            st(step * 1_000_000, 30_000_000),
                            (step * 1_000_000).min(30_000_000),
                            30_000_000,
                        ),
                    ]
                };
                let events = futures::stream::iter(0..=30).then(move |step| async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(if step == 30 {
                        progress("done", layers(step), Some(image()))
                    } else {
                        progress("fetching", layers(step), None)
                    })
                });
                let first = futures::stream::iter([Ok(progress("resolving", vec![], None))]);
                Ok(Response::new(Box::pin(first.chain(events))))
            }
            "broken" => {
                let events = vec![
                    Ok(progress("resolving", vec![], None)),
                    Ok(progress(
                        "fetching",
                        vec![layer(LAYER_A, L, LState::Downloading, 1000, 2_100_000)],
                        None,
                    )),
                    Err(Status::unavailable(
                        "fetching layer sha256:aaaaaaaaaaaa: connection reset by peer",
                    )),
                ];
                Ok(Response::new(Box::pin(futures::stream::iter(events))))
            }
            "hang" => {
                let flag = DropFlag(self.pull_cancelled.clone());
                let first = futures::stream::iter([Ok(progress("resolving", vec![], None))]);
                let rest =
                    futures::stream::pending().map(move |x: Result<PullProgress, Status>| {
                        let _keep = &flag;
                        x
                    });
                Ok(Response::new(Box::pin(first.chain(rest))))
            }
            other => Err(Status::not_found(format!(
                "pull {other}: repository does not exist or may require authorization"
            ))),
        }
    }

    async fn list(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let mut other = image();
        other.name = "docker.io/library/alpine:3".into();
        let mut images = vec![image(), other];
        if !req.get_ref().filters.is_empty() {
            images.retain(|i| req.get_ref().filters.contains(&i.name));
        }
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn get(
        &self,
        req: Request<GetImageRequest>,
    ) -> Result<Response<GetImageResponse>, Status> {
        if req.get_ref().name != BUSYBOX {
            return Err(Status::not_found(format!(
                "image {:?} not found",
                req.get_ref().name
            )));
        }
        Ok(Response::new(GetImageResponse {
            image: Some(image()),
            index_json: br#"{"schemaVersion":2,"manifests":[]}"#.to_vec(),
            manifest_json: br#"{"schemaVersion":2,"layers":[{"digest":"sha256:aa"}]}"#.to_vec(),
            config_json: br#"{"architecture":"amd64","os":"linux"}"#.to_vec(),
        }))
    }

    async fn remove(
        &self,
        req: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let r = req.into_inner();
        if r.name == "missing" {
            return Err(Status::not_found("image \"missing\" not found"));
        }
        self.seen.lock().unwrap().removed.push((r.name, r.sync));
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn tag(
        &self,
        req: Request<TagImageRequest>,
    ) -> Result<Response<TagImageResponse>, Status> {
        let mut img = image();
        img.name = format!("docker.io/library/{}", req.into_inner().target);
        Ok(Response::new(TagImageResponse { image: Some(img) }))
    }

    async fn push(&self, _: Request<PushRequest>) -> Result<Response<Self::PushStream>, Status> {
        let ev = |state, done| PushProgress {
            reference: "registry.example/busybox:latest".into(),
            status: "pushing".into(),
            layers: vec![layer(LAYER_A, "", state, done, 100)],
        };
        let events = vec![Ok(ev(LState::Downloading, 10)), Ok(ev(LState::Done, 100))];
        Ok(Response::new(Box::pin(futures::stream::iter(events))))
    }

    async fn import(
        &self,
        req: Request<Streaming<ImportChunk>>,
    ) -> Result<Response<ImportResponse>, Status> {
        let mut stream = req.into_inner();
        while let Some(chunk) = stream.message().await? {
            let mut seen = self.seen.lock().unwrap();
            seen.import_chunks.push(chunk.data.len());
            seen.import_bytes.extend_from_slice(&chunk.data);
            seen.import_base_names.push(chunk.base_name);
        }
        let mut img = image();
        img.name = "docker.io/library/imported:1".into();
        Ok(Response::new(ImportResponse {
            images: vec![image(), img],
        }))
    }

    async fn export(
        &self,
        req: Request<ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        if req.get_ref().names.iter().any(|n| n == "fail") {
            let items = vec![
                Ok(ExportChunk {
                    data: b"partial".to_vec(),
                }),
                Err(Status::not_found("image \"fail\" not found")),
            ];
            return Ok(Response::new(Box::pin(futures::stream::iter(items))));
        }
        let items = (0..3u8).map(|i| {
            Ok(ExportChunk {
                data: vec![b'a' + i; 1000],
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn mount(&self, req: Request<MountRequest>) -> Result<Response<MountResponse>, Status> {
        if req.get_ref().name != "busybox" {
            return Err(Status::not_found("image not found"));
        }
        Ok(Response::new(MountResponse {
            snapshot: "mount-1".into(),
        }))
    }

    async fn unmount(
        &self,
        _: Request<UnmountRequest>,
    ) -> Result<Response<UnmountResponse>, Status> {
        Ok(Response::new(UnmountResponse {}))
    }

    async fn usage(
        &self,
        _: Request<ImageUsageRequest>,
    ) -> Result<Response<ImageUsageResponse>, Status> {
        Ok(Response::new(ImageUsageResponse { images: vec![] }))
    }
}

#[tonic::async_trait]
impl Content for Fake {
    async fn list(
        &self,
        _: Request<ListContentRequest>,
    ) -> Result<Response<ListContentResponse>, Status> {
        Ok(Response::new(ListContentResponse {
            blobs: vec![berth_api::content::v1::Info {
                digest: LAYER_A.into(),
                size: 2_100_000,
                created_at: 1,
                referenced: true,
            }],
            ingests: vec![],
        }))
    }
    async fn info(
        &self,
        _: Request<berth_api::content::v1::InfoRequest>,
    ) -> Result<Response<berth_api::content::v1::InfoResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn delete(
        &self,
        _: Request<DeleteContentRequest>,
    ) -> Result<Response<DeleteContentResponse>, Status> {
        Err(Status::failed_precondition(
            "blob sha256:aa is referenced by docker.io/library/busybox:latest",
        ))
    }
    async fn usage(&self, _: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        Ok(Response::new(UsageResponse {
            blobs: 2,
            bytes: 2_100_600,
            ingests: 0,
            ingest_bytes: 0,
        }))
    }
    async fn prune(&self, _: Request<PruneRequest>) -> Result<Response<PruneResponse>, Status> {
        Ok(Response::new(PruneResponse {
            removed: vec![LAYER_A.into()],
            bytes_freed: 2_100_000,
            snapshots_removed: vec![],
        }))
    }
}

#[tonic::async_trait]
impl System for Fake {
    async fn version(
        &self,
        _: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: "9.9.9".into(),
            revision: "deadbeef".into(),
            root: "/var/lib/berth".into(),
            state: "/run/berth".into(),
        }))
    }

    // info and events are tested against a real berthd (integration).
    async fn info(
        &self,
        _: Request<berth_api::system::v1::InfoRequest>,
    ) -> Result<Response<berth_api::system::v1::InfoResponse>, Status> {
        Err(Status::unimplemented("not in the fake daemon"))
    }

    type EventsStream = BoxStream<berth_api::system::v1::Event>;

    async fn events(
        &self,
        _: Request<berth_api::system::v1::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        Err(Status::unimplemented("not in the fake daemon"))
    }
}

struct Daemon {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    seen: Arc<Mutex<Seen>>,
    pull_cancelled: Arc<AtomicBool>,
}

async fn daemon() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("berth.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let fake = Fake::default();
    let (seen, pull_cancelled) = (fake.seen.clone(), fake.pull_cancelled.clone());
    let fake = Arc::new(fake);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ImagesServer::from_arc(fake.clone()))
            .add_service(ContentServer::from_arc(fake.clone()))
            .add_service(SystemServer::from_arc(fake))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    Daemon {
        _dir: dir,
        sock,
        seen,
        pull_cancelled,
    }
}

fn command(sock: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_berthctl"));
    cmd.arg("--address")
        .arg(sock)
        .args(args)
        .env_remove("BERTH_ADDRESS")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn run(sock: &Path, args: &[&str]) -> Output {
    tokio::time::timeout(Duration::from_secs(30), command(sock, args).output())
        .await
        .expect("berthctl timed out")
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_shows_both_sides() {
    let d = daemon().await;
    let out = run(&d.sock, &["version"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("Client:\n  Version:  0.1.0"), "{s}");
    assert!(
        s.contains("Server:\n  Version:  9.9.9\n  Revision: deadbeef"),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_daemon_is_one_line_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("absent.sock");
    let out = run(&sock, &["images", "ls"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "berthctl: cannot connect to berthd at {}: no such file or directory (is berthd running?)\n",
            sock.display()
        )
    );
    // version still shows the client half.
    let out = run(&sock, &["version"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).starts_with("Client:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_plain_output() {
    let d = daemon().await;
    let out = run(
        &d.sock,
        &[
            "images",
            "pull",
            "--platform",
            "linux/arm64",
            "-u",
            "me:pw",
            "busybox",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{BUSYBOX}: resolving\n\
             {BUSYBOX}: fetching\n\
             config bbbbbbbbbbbb: exists (600 B)\n\
             layer aaaaaaaaaaaa: downloading (2.1 MB)\n\
             {BUSYBOX}: done\n\
             layer aaaaaaaaaaaa: done (2.1 MB)\n\
             {BUSYBOX} {INDEX_DIGEST}\n"
        )
    );
    let seen = d.seen.lock().unwrap();
    let req = &seen.pull_requests[0];
    assert_eq!(req.platform, "linux/arm64");
    let creds = req.credentials.as_ref().unwrap();
    assert_eq!(
        (creds.username.as_str(), creds.password.as_str()),
        ("me", "pw")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_not_found_is_the_daemon_message() {
    let d = daemon().await;
    let out = run(&d.sock, &["i", "pull", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "berthctl: pull nope: repository does not exist or may require authorization\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_error_mid_stream() {
    let d = daemon().await;
    let out = run(&d.sock, &["images", "pull", "broken"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{BUSYBOX}: resolving\n{BUSYBOX}: fetching\nlayer aaaaaaaaaaaa: downloading (2.1 MB)\n"
        )
    );
    assert_eq!(
        text(&out.stderr),
        "berthctl: fetching layer sha256:aaaaaaaaaaaa: connection reset by peer\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_without_password_and_no_terminal_fails_early() {
    let d = daemon().await;
    let out = run(&d.sock, &["images", "pull", "--user", "me", "busybox"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("berthctl: no password for me"));
    assert!(d.seen.lock().unwrap().pull_requests.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_cancels_pull() {
    let d = daemon().await;
    let child = command(&d.sock, &["images", "pull", "hang"])
        .spawn()
        .unwrap();
    // Wait until the call is in flight.
    for _ in 0..200 {
        if !d.seen.lock().unwrap().pull_requests.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    for _ in 0..100 {
        if d.pull_cancelled.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the daemon never saw the pull end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_formats() {
    let d = daemon().await;
    let out = run(&d.sock, &["images", "ls"]).await;
    let s = text(&out.stdout);
    let lines: Vec<_> = s.lines().collect();
    assert!(lines[0].starts_with("NAME   "), "{s}");
    // Sorted by name; short digest and human size.
    assert!(lines[1].starts_with("docker.io/library/alpine:3 "), "{s}");
    assert!(lines[2].contains("0123456789ab   2.1 MB   "), "{s}");
    assert!(lines[2].ends_with(" ago"), "{s}");

    let out = run(&d.sock, &["images", "list", "-q"]).await;
    assert_eq!(
        text(&out.stdout),
        format!("docker.io/library/alpine:3\n{BUSYBOX}\n")
    );

    let out = run(&d.sock, &["image", "ls", "--format", "json", BUSYBOX]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["name"], BUSYBOX);
    assert_eq!(v[0]["target"]["digest"], INDEX_DIGEST);
    assert_eq!(v[0]["createdAt"], "2023-11-14T22:13:20Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_nests_raw_json() {
    let d = daemon().await;
    let out = run(&d.sock, &["images", "inspect", BUSYBOX]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["image"]["name"], BUSYBOX);
    assert_eq!(v["manifest"]["layers"][0]["digest"], "sha256:aa");
    assert_eq!(v["config"]["os"], "linux");
    assert_eq!(v["index"]["schemaVersion"], 2);

    let out = run(&d.sock, &["images", "inspect", "nope"]).await;
    assert_eq!(text(&out.stderr), "berthctl: image \"nope\" not found\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_continues_past_failures() {
    let d = daemon().await;
    let out = run(&d.sock, &["images", "rm", "--sync", "a", "missing", "b"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "a\nb\n");
    assert_eq!(text(&out.stderr), "berthctl: image \"missing\" not found\n");
    assert_eq!(
        d.seen.lock().unwrap().removed,
        [("a".to_string(), true), ("b".to_string(), true)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_and_push() {
    let d = daemon().await;
    let out = run(&d.sock, &["images", "tag", BUSYBOX, "mine:1"]).await;
    assert_eq!(text(&out.stdout), "docker.io/library/mine:1\n");
    let out = run(&d.sock, &["images", "push", "--plain-http", BUSYBOX]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "registry.example/busybox:latest: pushing\n\
         layer aaaaaaaaaaaa: uploading (100 B)\n\
         layer aaaaaaaaaaaa: done (100 B)\n\
         pushed registry.example/busybox:latest\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_streams_mebibyte_chunks() {
    let d = daemon().await;
    let data: Vec<u8> = (0..(2 << 20) + 12345u32).map(|i| (i % 251) as u8).collect();
    let file = d._dir.path().join("in.tar");
    std::fs::write(&file, &data).unwrap();
    let out = run(
        &d.sock,
        &[
            "images",
            "import",
            "--base-name",
            "imp",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{BUSYBOX}\ndocker.io/library/imported:1\n")
    );
    {
        let seen = d.seen.lock().unwrap();
        assert_eq!(seen.import_chunks, [1 << 20, 1 << 20, 12345]);
        assert_eq!(seen.import_bytes, data);
        assert_eq!(seen.import_base_names, ["imp", "", ""]);
    }

    // From stdin.
    d.seen.lock().unwrap().import_bytes.clear();
    let mut cmd = command(&d.sock, &["images", "import", "-"]);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"tiny archive").await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(d.seen.lock().unwrap().import_bytes, b"tiny archive");

    let out = run(&d.sock, &["images", "import", "/nonexistent.tar"]).await;
    assert_eq!(
        text(&out.stderr),
        "berthctl: cannot open /nonexistent.tar: no such file or directory\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_to_file_and_stdout() {
    let d = daemon().await;
    let file = d._dir.path().join("out.tar");
    let out = run(
        &d.sock,
        &["images", "export", "-o", file.to_str().unwrap(), BUSYBOX],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected: Vec<u8> = [vec![b'a'; 1000], vec![b'b'; 1000], vec![b'c'; 1000]].concat();
    assert_eq!(std::fs::read(&file).unwrap(), expected);

    let out = run(&d.sock, &["images", "export", BUSYBOX]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, expected);

    // A failed export leaves the previous file untouched and no temp files.
    let out = run(
        &d.sock,
        &["images", "export", "-o", file.to_str().unwrap(), "fail"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "berthctl: image \"fail\" not found\n");
    assert_eq!(std::fs::read(&file).unwrap(), expected);
    let names: Vec<_> = std::fs::read_dir(d._dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".berthctl"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_commands() {
    let d = daemon().await;
    let out = run(&d.sock, &["content", "ls"]).await;
    let s = text(&out.stdout);
    assert!(s.starts_with("DIGEST "), "{s}");
    assert!(s.contains(&format!("{LAYER_A}   2.1 MB   ")), "{s}");
    assert!(s.trim_end().ends_with("yes"), "{s}");

    let out = run(&d.sock, &["content", "ls", "-q"]).await;
    assert_eq!(text(&out.stdout), format!("{LAYER_A}\n"));

    let out = run(&d.sock, &["content", "prune"]).await;
    assert_eq!(
        text(&out.stdout),
        format!("{LAYER_A}\nremoved 1 blob, freed 2.1 MB\n")
    );

    let out = run(&d.sock, &["content", "usage", "--format", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["blobs"], 2);

    let out = run(&d.sock, &["content", "rm", "sha256:aa", "sha256:bb"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr).lines().count(), 2);
    assert!(text(&out.stderr).starts_with("berthctl: blob sha256:aa is referenced"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_needs_no_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&dir.path().join("x.sock"), &["completion", "bash"]).await;
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("berthctl"));
}

/// Serves the fake daemon for a person to try berthctl against, e.g. the
/// terminal progress view:
/// `FAKE_BERTHD=/tmp/fake.sock cargo test -p berthctl --test fake_daemon -- --ignored`
/// then `berthctl --address /tmp/fake.sock images pull slow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "manual: serves until killed"]
async fn serve_for_manual_testing() {
    let Some(path) = std::env::var_os("FAKE_BERTHD") else {
        return;
    };
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let fake = Arc::new(Fake::default());
    tonic::transport::Server::builder()
        .add_service(ImagesServer::from_arc(fake.clone()))
        .add_service(ContentServer::from_arc(fake.clone()))
        .add_service(SystemServer::from_arc(fake))
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await
        .unwrap();
}
