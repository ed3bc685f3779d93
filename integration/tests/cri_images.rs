//! End-to-end CRI `runtime.v1.ImageService`: a real berthd driven over its
//! Unix socket with the tonic-generated CRI client, against Debian's real
//! docker-registry, with fixtures built offline.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use berth_api::runtime::v1 as cri;
use berth_api::runtime::v1::image_service_client::ImageServiceClient;
use hyper_util::rt::TokioIo;
use integration::daemon::Daemon;
use integration::fixtures;
use integration::registry::{Registry, RegistryOpts};
use serde_json::Value;
use tokio::net::UnixStream;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint, Uri};

async fn client(d: &Daemon) -> Result<ImageServiceClient<Channel>> {
    let path = d.socket_path();
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .context("connecting to berthd")?;
    Ok(ImageServiceClient::new(channel))
}

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

async fn pull(
    c: &mut ImageServiceClient<Channel>,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    let resp = c
        .pull_image(cri::PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await?;
    Ok(resp.into_inner().image_ref)
}

async fn status(
    c: &mut ImageServiceClient<Channel>,
    image: &str,
    verbose: bool,
) -> Result<cri::ImageStatusResponse> {
    Ok(c.image_status(cri::ImageStatusRequest {
        image: spec(image),
        verbose,
    })
    .await?
    .into_inner())
}

async fn list(
    c: &mut ImageServiceClient<Channel>,
    filter: Option<&str>,
) -> Result<Vec<cri::Image>> {
    let filter = filter.map(|f| cri::ImageFilter { image: spec(f) });
    Ok(c.list_images(cri::ListImagesRequest { filter })
        .await?
        .into_inner()
        .images)
}

async fn stream(c: &mut ImageServiceClient<Channel>) -> Result<Vec<cri::Image>> {
    let mut s = c
        .stream_images(cri::StreamImagesRequest { filter: None })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = s.next().await {
        let msg = msg?;
        ensure!(!msg.images.is_empty(), "a stream message without images");
        out.extend(msg.images);
    }
    Ok(out)
}

async fn remove(c: &mut ImageServiceClient<Channel>, image: &str) -> Result<(), tonic::Status> {
    c.remove_image(cri::RemoveImageRequest { image: spec(image) })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pull_list_status_fsinfo_remove() -> Result<()> {
    let reg = Registry::start(RegistryOpts::default())?;
    let img = fixtures::busybox()?;
    reg.push_layout(img, "busybox:1")?;
    let d = Daemon::start()?;
    let mut c = client(&d).await?;
    let reference = reg.reference("busybox:1");

    // Nothing yet: empty list, empty stream, NotFound status is not an error.
    ensure!(list(&mut c, None).await?.is_empty());
    ensure!(stream(&mut c).await?.is_empty());
    let st = status(&mut c, &reference, true).await?;
    ensure!(st.image.is_none() && st.info.is_empty(), "{st:?}");

    // Pull: the image ref is the config digest.
    let id = pull(&mut c, &reference, None).await?;
    ensure!(id == img.config_digest, "{id} != {}", img.config_digest);
    // Pulling again answers the same id.
    ensure!(pull(&mut c, &reference, None).await? == id);

    // A second name for the same image, given through the native API.
    d.ctl_ok(["images", "tag", &reference, "mybox:2"])?;

    let images = list(&mut c, None).await?;
    ensure!(images.len() == 1, "one image for two names: {images:?}");
    let im = &images[0];
    ensure!(im.id == id);
    let mut want_tags = vec!["docker.io/library/mybox:2".to_string(), reference.clone()];
    want_tags.sort();
    ensure!(im.repo_tags == want_tags, "{:?}", im.repo_tags);
    let repo_digest = format!("{}/busybox@{}", reg.addr(), img.manifest_digest);
    ensure!(
        im.repo_digests.contains(&repo_digest),
        "{:?} lacks {repo_digest}",
        im.repo_digests
    );
    ensure!(im.size > 0, "{im:?}");
    ensure!(!im.pinned);
    ensure!(im.spec.as_ref().map(|s| s.image.as_str()) == Some(id.as_str()));
    let user = img.config()?["config"]["User"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if user.is_empty() {
        ensure!(im.uid.is_none() && im.username.is_empty(), "{im:?}");
    }

    // The stream carries the same images.
    ensure!(stream(&mut c).await? == images);

    // Filters: by name (short and full), by id, by an id prefix; unknown -> empty.
    ensure!(list(&mut c, Some("mybox:2")).await? == images);
    ensure!(list(&mut c, Some(&reference)).await? == images);
    ensure!(list(&mut c, Some(&id)).await? == images);
    ensure!(list(&mut c, Some(&id["sha256:".len()..][..12])).await? == images);
    ensure!(list(&mut c, Some("nothere:1")).await?.is_empty());

    // Status by id, by name and by a repo digest of an image pulled by tag
    // (critest's "all kinds of references"); verbose carries the JSON info blob.
    let st = status(&mut c, &id, false).await?;
    ensure!(st.image.as_ref() == Some(im), "{st:?}");
    let st = status(&mut c, &repo_digest, false).await?;
    ensure!(st.image.as_ref() == Some(im), "by {repo_digest}: {st:?}");
    let other_repo = format!("{}/other@{}", reg.addr(), img.manifest_digest);
    ensure!(status(&mut c, &other_repo, false).await?.image.is_none());
    ensure!(st.info.is_empty(), "info only when verbose: {:?}", st.info);
    let st = status(&mut c, "mybox:2", true).await?;
    ensure!(st.image.as_ref() == Some(im), "{st:?}");
    let info: Value = serde_json::from_str(st.info.get("info").context("no info key")?)?;
    ensure!(
        info["imageSpec"]["rootfs"]["diff_ids"] == img.config()?["rootfs"]["diff_ids"],
        "{info}"
    );
    ensure!(
        info["chainID"]
            .as_str()
            .is_some_and(|s| s.starts_with("sha256:")),
        "{info}"
    );
    let st = status(&mut c, "nothere:1", false).await?;
    ensure!(st.image.is_none(), "{st:?}");

    // ImageFsInfo: the snapshotter's directory, with the unpacked layer in it.
    let fs = c
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await?
        .into_inner();
    ensure!(fs.image_filesystems.len() == 1, "{fs:?}");
    let u = &fs.image_filesystems[0];
    ensure!(u.timestamp > 0);
    let mountpoint = u
        .fs_id
        .as_ref()
        .map(|f| f.mountpoint.clone())
        .unwrap_or_default();
    ensure!(
        mountpoint.starts_with(d.root().join("snapshotter").to_str().unwrap()),
        "{mountpoint}"
    );
    ensure!(u.used_bytes.as_ref().is_some_and(|b| b.value > 0), "{u:?}");
    ensure!(u.inodes_used.as_ref().is_some_and(|b| b.value > 0), "{u:?}");
    ensure!(fs.container_filesystems.len() == 1, "{fs:?}");

    // Remove by id: both names go; a second remove succeeds.
    remove(&mut c, &id).await?;
    ensure!(list(&mut c, None).await?.is_empty());
    ensure!(status(&mut c, &reference, false).await?.image.is_none());
    ensure!(status(&mut c, "mybox:2", false).await?.image.is_none());
    let names = d.ctl_ok(["images", "ls", "-q"])?;
    ensure!(names.trim().is_empty(), "berthctl still sees {names}");
    remove(&mut c, &id).await?;
    remove(&mut c, "mybox:2").await?;

    // Remove by one name removes every name of the image too.
    pull(&mut c, &reference, None).await?;
    d.ctl_ok(["images", "tag", &reference, "mybox:3"])?;
    remove(&mut c, "mybox:3").await?;
    ensure!(list(&mut c, None).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pull_with_auth_and_bad_requests() -> Result<()> {
    let reg = Registry::start(RegistryOpts::with_auth("alice", "s3cret"))?;
    let img = fixtures::busybox()?;
    reg.push_layout(img, "private:1")?;
    let d = Daemon::start()?;
    let mut c = client(&d).await?;
    let reference = reg.reference("private:1");

    // No credentials, wrong credentials: Unauthenticated, like the native API.
    let err = pull(&mut c, &reference, None).await.unwrap_err();
    ensure!(err.code() == tonic::Code::Unauthenticated, "{err:?}");
    let wrong = cri::AuthConfig {
        username: "alice".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = pull(&mut c, &reference, Some(wrong)).await.unwrap_err();
    ensure!(err.code() == tonic::Code::Unauthenticated, "{err:?}");

    // Auth for another server is not sent.
    let other = cri::AuthConfig {
        username: "alice".into(),
        password: "s3cret".into(),
        server_address: "other.example:5000".into(),
        ..Default::default()
    };
    let err = pull(&mut c, &reference, Some(other)).await.unwrap_err();
    ensure!(err.code() == tonic::Code::Unauthenticated, "{err:?}");

    // username/password.
    let good = cri::AuthConfig {
        username: "alice".into(),
        password: "s3cret".into(),
        server_address: reg.addr().to_string(),
        ..Default::default()
    };
    let id = pull(&mut c, &reference, Some(good)).await?;
    ensure!(id == img.config_digest, "{id}");
    remove(&mut c, &id).await?;

    // `auth`: base64 of user:pass ("alice:s3cret").
    let b64 = cri::AuthConfig {
        auth: "YWxpY2U6czNjcmV0".into(),
        ..Default::default()
    };
    let id = pull(&mut c, &reference, Some(b64)).await?;
    ensure!(id == img.config_digest, "{id}");
    let images = list(&mut c, None).await?;
    ensure!(images.len() == 1 && images[0].repo_tags == vec![reference.clone()]);

    // Missing or empty image spec: InvalidArgument on every call that takes one.
    let err = c
        .pull_image(cri::PullImageRequest::default())
        .await
        .unwrap_err();
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");
    let err = pull(&mut c, "  ", None).await.unwrap_err();
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");
    let err = pull(&mut c, "bad//ref:1", None).await.unwrap_err();
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");
    let err = c
        .image_status(cri::ImageStatusRequest::default())
        .await
        .unwrap_err();
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");
    let err = c
        .remove_image(cri::RemoveImageRequest::default())
        .await
        .unwrap_err();
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");

    // A missing image in a reachable registry: NotFound.
    let err = pull(
        &mut c,
        &reg.reference("private:nope"),
        Some(cri::AuthConfig {
            username: "alice".into(),
            password: "s3cret".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap_err();
    ensure!(err.code() == tonic::Code::NotFound, "{err:?}");

    // The image berthd holds is unaffected by the failed calls.
    let map: HashMap<String, cri::Image> = list(&mut c, None)
        .await?
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect();
    ensure!(map.contains_key(&img.config_digest), "{map:?}");
    Ok(())
}
