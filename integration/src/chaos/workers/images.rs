//! Image pulls: the initial ones and the puller that keeps pulling and
//! removing an image while everything else runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tonic::{Code, Status};

use super::STEP_BUDGET;
use crate::chaos::env::Setup;
use crate::chaos::{lock, reconnect, Ctx, LIFECYCLE_DEADLINE, LIST_DEADLINE, PULL_DEADLINE};
use crate::cri::{api, Img};

/// Pulls `image` (retrying through restarts) and records it.
pub async fn pull_ok(ctx: &Ctx, img: &mut Img, image: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = ctx
            .rpc(
                "PullImage",
                image,
                PULL_DEADLINE,
                img.pull_image(api::PullImageRequest {
                    image: Some(api::ImageSpec {
                        image: image.to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            )
            .await;
        match r {
            Ok(_) => return Ok(()),
            Err(s) if Instant::now() >= deadline => bail!("PullImage {image}: {s}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Pulls the big images in turn and removes each again; a pull that fails must
/// leave no image behind, one acknowledged must be there whole.
pub async fn puller(ctx: Arc<Ctx>, setup: Arc<Setup>) {
    let Some((_, mut img)) = ctx.connect(Duration::from_secs(60)).await else {
        return;
    };
    let mut n = 0usize;
    while !ctx.stopping() {
        let image = setup.big[n % setup.big.len()].clone();
        n += 1;
        let epoch = ctx.epoch();
        let full_before = ctx.disk_full.load(Ordering::SeqCst);
        ctx.pulling.store(true, Ordering::SeqCst);
        let r = ctx
            .rpc(
                "PullImage",
                &image,
                PULL_DEADLINE,
                img.pull_image(api::PullImageRequest {
                    image: Some(api::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            )
            .await;
        ctx.pulling.store(false, Ordering::SeqCst);
        let full = full_before || ctx.disk_full.load(Ordering::SeqCst);
        match r {
            Ok(_) => {
                ctx.stats().pulls_ok += 1;
                let seq = n as u64;
                lock(&ctx.model).images.insert(image.clone(), seq);
            }
            Err(s) => {
                ctx.stats().pulls_failed += 1;
                if full && s.code() == Code::ResourceExhausted {
                    ctx.disk_full_hit.store(true, Ordering::SeqCst);
                }
                if reconnect(&s) {
                    if let Some((_, i)) = ctx.connect(Duration::from_secs(60)).await {
                        img = i;
                    }
                }
                // A pull that failed while berthd stayed up leaves nothing visible.
                if ctx.epoch() == epoch && !ctx.is_down() && s.code() != Code::Unavailable {
                    failed_pull_leaves_nothing(&ctx, &mut img, &image, &s).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        remove_image(&ctx, &mut img, &image).await;
    }
}

async fn failed_pull_leaves_nothing(ctx: &Ctx, img: &mut Img, image: &str, why: &Status) {
    let r = ctx
        .rpc(
            "ImageStatus",
            image,
            LIST_DEADLINE,
            img.image_status(api::ImageStatusRequest {
                image: Some(api::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            }),
        )
        .await;
    if let Ok(r) = r {
        if r.image.is_some() {
            ctx.violation(
                "failed-pull-visible",
                image,
                format!(
                    "PullImage failed ({:?}: {}) and the image is listed",
                    why.code(),
                    why.message()
                ),
            );
        }
    }
}

async fn remove_image(ctx: &Ctx, img: &mut Img, image: &str) {
    // From here on the image is no longer promised to be there.
    lock(&ctx.model).images.remove(image);
    let deadline = Instant::now() + STEP_BUDGET;
    loop {
        let r = ctx
            .rpc(
                "RemoveImage",
                image,
                LIFECYCLE_DEADLINE,
                img.remove_image(api::RemoveImageRequest {
                    image: Some(api::ImageSpec {
                        image: image.to_string(),
                        ..Default::default()
                    }),
                }),
            )
            .await;
        match r {
            Ok(_) => break,
            Err(s) if s.code() == Code::NotFound => break,
            Err(s) => {
                if reconnect(&s) {
                    if let Some((_, i)) = ctx.connect(Duration::from_secs(60)).await {
                        *img = i;
                    }
                }
                if Instant::now() >= deadline {
                    ctx.violation(
                        "image-stuck",
                        image,
                        format!("RemoveImage keeps failing: {:?}: {}", s.code(), s.message()),
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
