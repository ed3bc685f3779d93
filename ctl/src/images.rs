//! `berthctl images ...`: the Images service.

use std::io::{self, IsTerminal, Write};

use anyhow::{anyhow, Context, Result};
use berth_api::images::v1::images_client::ImagesClient;
use berth_api::images::v1::{
    Credentials, ExportRequest, GetImageRequest, ImageUsage, ImageUsageRequest, ListImagesRequest,
    MountRequest, PullRequest, PushRequest, RemoveImageRequest, TagImageRequest, UnmountRequest,
};
use serde_json::json;
use tokio::io::AsyncRead;
use tonic::transport::Channel;

use crate::archive::{self, Output, CHUNK_SIZE};
use crate::cli::{Format, ImagesCommand, ListArgs, PullArgs, PushArgs, RegistryArgs, User};
use crate::connect::{connect, MAX_MESSAGE};
use crate::format::{human_size, image_json, images_table, now_nanos, raw_json, table};
use crate::output::{for_each_name, print, print_json};
use crate::progress::{Op, View};

async fn client(address: &str) -> Result<ImagesClient<Channel>> {
    Ok(ImagesClient::new(connect(address).await?)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

pub async fn run(address: &str, cmd: ImagesCommand) -> Result<()> {
    match cmd {
        ImagesCommand::Pull(args) => pull(client(address).await?, args).await,
        ImagesCommand::Ls(args) => list(client(address).await?, args).await,
        ImagesCommand::Inspect { reference } => inspect(client(address).await?, reference).await,
        ImagesCommand::Rm { sync, references } => {
            remove(client(address).await?, references, sync).await
        }
        ImagesCommand::Tag { source, target } => {
            let resp = client(address)
                .await?
                .tag(TagImageRequest {
                    source,
                    target: target.clone(),
                })
                .await?
                .into_inner();
            print(resp.image.map_or(target, |i| i.name))
        }
        ImagesCommand::Push(args) => push(client(address).await?, args).await,
        ImagesCommand::Import { base_name, file } => {
            // Opened before connecting, so a bad path is reported even with no daemon.
            let input = archive::open_input(&file).await?;
            import(client(address).await?, input, base_name, file).await
        }
        ImagesCommand::Export {
            output,
            all_platforms,
            names,
        } => {
            let out = Output::open(&output)?;
            export(client(address).await?, names, all_platforms, out).await
        }
        ImagesCommand::Mount { reference, target } => {
            // The daemon mounts on its host: send an absolute path.
            let target = std::path::absolute(&target)
                .with_context(|| format!("cannot resolve {target}"))?
                .display()
                .to_string();
            client(address)
                .await?
                .mount(MountRequest {
                    name: reference,
                    target: target.clone(),
                    platform: String::new(),
                })
                .await?;
            print(target)
        }
        ImagesCommand::Unmount { target } => {
            let target = std::path::absolute(&target)
                .with_context(|| format!("cannot resolve {target}"))?
                .display()
                .to_string();
            client(address)
                .await?
                .unmount(UnmountRequest {
                    target: target.clone(),
                })
                .await?;
            print(target)
        }
        ImagesCommand::Usage { format, names } => {
            let resp = client(address)
                .await?
                .usage(ImageUsageRequest { names })
                .await?
                .into_inner();
            match format {
                Format::Json => print_json(&json!(resp
                    .images
                    .iter()
                    .map(|u| json!({
                        "name": u.name,
                        "size": u.size,
                        "unique": u.unique,
                        "shared": u.shared,
                        "unpacked": u.unpacked,
                    }))
                    .collect::<Vec<_>>())),
                Format::Table => print(usage_table(&resp.images)),
            }
        }
    }
}

fn usage_table(images: &[ImageUsage]) -> String {
    let rows = images
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                human_size(u.size),
                human_size(u.unique),
                human_size(u.shared),
                if u.unpacked { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    table(&["NAME", "SIZE", "UNIQUE", "SHARED", "UNPACKED"], rows)
}

/// Credentials for the request; the password must already have been
/// prompted for (see `main::prompt_passwords`).
fn credentials(user: Option<User>) -> Option<Credentials> {
    user.map(|u| Credentials {
        username: u.username,
        password: u.password.unwrap_or_default(),
        identity_token: String::new(),
    })
}

fn stdout_is_terminal() -> bool {
    io::stdout().is_terminal()
}

async fn pull(mut c: ImagesClient<Channel>, args: PullArgs) -> Result<()> {
    let PullArgs {
        registry:
            RegistryArgs {
                plain_http,
                skip_verify,
                user,
            },
        platform,
        reference,
    } = args;
    let req = PullRequest {
        reference: reference.clone(),
        credentials: credentials(user),
        plain_http,
        platform: platform.unwrap_or_default(),
        skip_verify,
    };
    let mut stream = c.pull(req).await?.into_inner();
    let mut view = View::new(Op::Pull, stdout_is_terminal());
    let mut name = reference;
    let mut image = None;
    // Dropping `stream` (on error or Ctrl-C) cancels the RPC.
    while let Some(ev) = stream.message().await? {
        if !ev.reference.is_empty() {
            name.clone_from(&ev.reference);
        }
        view.update(&name, &ev.status, &ev.layers)?;
        if ev.image.is_some() {
            image = ev.image;
        }
    }
    view.finish();
    match image {
        Some(img) => {
            let digest = img.target.map(|t| t.digest).unwrap_or_default();
            print(format!("{} {}", img.name, digest).trim_end())
        }
        // Lenient with a daemon that ends cleanly without the final record.
        None => print(name),
    }
}

async fn push(mut c: ImagesClient<Channel>, args: PushArgs) -> Result<()> {
    let PushArgs {
        registry:
            RegistryArgs {
                plain_http,
                skip_verify,
                user,
            },
        reference,
        destination,
    } = args;
    let req = PushRequest {
        reference: reference.clone(),
        destination: destination.clone().unwrap_or_default(),
        credentials: credentials(user),
        plain_http,
        skip_verify,
    };
    let mut stream = c.push(req).await?.into_inner();
    let mut view = View::new(Op::Push, stdout_is_terminal());
    let mut name = destination.unwrap_or(reference);
    while let Some(ev) = stream.message().await? {
        if !ev.reference.is_empty() {
            name.clone_from(&ev.reference);
        }
        view.update(&name, &ev.status, &ev.layers)?;
    }
    view.finish();
    print(format!("pushed {name}"))
}

async fn list(mut c: ImagesClient<Channel>, args: ListArgs) -> Result<()> {
    let mut images = c
        .list(ListImagesRequest {
            filters: args.filters,
        })
        .await?
        .into_inner()
        .images;
    images.sort_by(|a, b| a.name.cmp(&b.name));
    if args.quiet {
        let names: Vec<_> = images.into_iter().map(|i| i.name).collect();
        return if names.is_empty() {
            Ok(())
        } else {
            print(names.join("\n"))
        };
    }
    match args.format {
        Format::Json => print_json(&images.iter().map(image_json).collect()),
        Format::Table => print(images_table(&images, now_nanos())),
    }
}

async fn inspect(mut c: ImagesClient<Channel>, reference: String) -> Result<()> {
    let resp = c
        .get(GetImageRequest {
            name: reference.clone(),
            verbose: true,
        })
        .await?
        .into_inner();
    let image = resp
        .image
        .ok_or_else(|| anyhow!("berthd returned no record for {reference}"))?;
    print_json(&json!({
        "image": image_json(&image),
        "index": raw_json(&resp.index_json),
        "manifest": raw_json(&resp.manifest_json),
        "config": raw_json(&resp.config_json),
    }))
}

async fn remove(c: ImagesClient<Channel>, references: Vec<String>, sync: bool) -> Result<()> {
    for_each_name(references, |name| {
        let mut c = c.clone();
        async move {
            c.remove(RemoveImageRequest { name, sync }).await?;
            Ok(())
        }
    })
    .await
}

async fn import(
    mut c: ImagesClient<Channel>,
    input: Box<dyn AsyncRead + Unpin + Send>,
    base_name: Option<String>,
    file: String,
) -> Result<()> {
    let (chunks, mut read_failed) =
        archive::import_chunks(input, base_name.unwrap_or_default(), CHUNK_SIZE);
    let read_error =
        |err: io::Error| anyhow::Error::new(err).context(format!("cannot read {file}"));
    let result = tokio::select! {
        result = c.import(chunks) => result,
        // Returning drops the call, which cancels it on the daemon.
        Ok(err) = &mut read_failed => return Err(read_error(err)),
    };
    // The daemon may have answered (likely with an error about a truncated
    // archive) after a read failed; the read failure is the real cause.
    if let Ok(err) = read_failed.try_recv() {
        return Err(read_error(err));
    }
    let names: Vec<_> = result?
        .into_inner()
        .images
        .into_iter()
        .map(|i| i.name)
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    print(names.join("\n"))
}

async fn export(
    mut c: ImagesClient<Channel>,
    names: Vec<String>,
    all_platforms: bool,
    mut out: Output,
) -> Result<()> {
    let mut stream = c
        .export(ExportRequest {
            names,
            all_platforms,
        })
        .await?
        .into_inner();
    while let Some(chunk) = stream.message().await? {
        out.write(&chunk.data).await?;
    }
    out.commit().await?;
    // Make sure nothing of ours is left buffered on the way out.
    io::stdout().flush().context("cannot flush stdout")?;
    Ok(())
}
