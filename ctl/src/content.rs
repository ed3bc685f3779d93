//! `berthctl content ...`: the Content service.

use anyhow::Result;
use berth_api::content::v1::content_client::ContentClient;
use berth_api::content::v1::{
    DeleteContentRequest, Info, Ingest, ListContentRequest, PruneRequest, PruneResponse,
    UsageRequest, UsageResponse,
};
use serde_json::{json, Value};

use crate::cli::{ContentCommand, Format};
use crate::connect::{connect, MAX_MESSAGE};
use crate::format::{human_size, now_nanos, relative_time, rfc3339, table};
use crate::output::{for_each_name, print, print_json};

pub async fn run(address: &str, cmd: ContentCommand) -> Result<()> {
    let mut c = ContentClient::new(connect(address).await?).max_decoding_message_size(MAX_MESSAGE);
    match cmd {
        ContentCommand::Ls { format, quiet } => {
            let resp = c.list(ListContentRequest {}).await?.into_inner();
            let mut blobs = resp.blobs;
            blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
            if quiet {
                let digests: Vec<_> = blobs.into_iter().map(|b| b.digest).collect();
                return if digests.is_empty() {
                    Ok(())
                } else {
                    print(digests.join("\n"))
                };
            }
            match format {
                Format::Json => print_json(&list_json(&blobs, &resp.ingests)),
                Format::Table => print(list_table(&blobs, &resp.ingests, now_nanos())),
            }
        }
        ContentCommand::Rm { digests } => {
            for_each_name(digests, |digest| {
                let mut c = c.clone();
                async move {
                    c.delete(DeleteContentRequest { digest }).await?;
                    Ok(())
                }
            })
            .await
        }
        ContentCommand::Prune => {
            let resp = c.prune(PruneRequest {}).await?.into_inner();
            print(prune_report(&resp))
        }
        ContentCommand::Usage { format } => {
            let u = c.usage(UsageRequest {}).await?.into_inner();
            match format {
                Format::Json => print_json(&json!({
                    "blobs": u.blobs,
                    "bytes": u.bytes,
                    "ingests": u.ingests,
                    "ingestBytes": u.ingest_bytes,
                })),
                Format::Table => print(usage_table(&u)),
            }
        }
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

pub fn list_table(blobs: &[Info], ingests: &[Ingest], now: i64) -> String {
    let rows = blobs
        .iter()
        .map(|b| {
            vec![
                b.digest.clone(),
                human_size(b.size),
                relative_time(b.created_at, now),
                yes_no(b.referenced),
            ]
        })
        .collect();
    let mut out = table(&["DIGEST", "SIZE", "CREATED", "REFERENCED"], rows);
    // Ingests are rare; only show their table when there are some.
    if !ingests.is_empty() {
        let rows = ingests
            .iter()
            .map(|i| {
                let total = if i.total > 0 {
                    human_size(i.total)
                } else {
                    "?".into()
                };
                vec![
                    i.r#ref.clone(),
                    format!("{} / {total}", human_size(i.offset)),
                ]
            })
            .collect();
        out.push_str("\n\n");
        out.push_str(&table(&["INGEST", "PROGRESS"], rows));
    }
    out
}

pub fn list_json(blobs: &[Info], ingests: &[Ingest]) -> Value {
    json!({
        "blobs": blobs.iter().map(|b| json!({
            "digest": b.digest,
            "size": b.size,
            "createdAt": rfc3339(b.created_at),
            "referenced": b.referenced,
        })).collect::<Vec<_>>(),
        "ingests": ingests.iter().map(|i| json!({
            "ref": i.r#ref,
            "offset": i.offset,
            "total": i.total,
        })).collect::<Vec<_>>(),
    })
}

pub fn prune_report(resp: &PruneResponse) -> String {
    let mut lines = resp.removed.clone();
    lines.extend(
        resp.snapshots_removed
            .iter()
            .map(|s| format!("snapshot {s}")),
    );
    let n = resp.removed.len();
    let mut summary = format!(
        "removed {n} blob{}, freed {}",
        if n == 1 { "" } else { "s" },
        human_size(resp.bytes_freed)
    );
    let s = resp.snapshots_removed.len();
    if s > 0 {
        summary.push_str(&format!(
            ", and {s} snapshot{}",
            if s == 1 { "" } else { "s" }
        ));
    }
    lines.push(summary);
    lines.join("\n")
}

pub fn usage_table(u: &UsageResponse) -> String {
    table(
        &["", "COUNT", "SIZE"],
        vec![
            vec!["blobs".into(), u.blobs.to_string(), human_size(u.bytes)],
            vec![
                "ingests".into(),
                u.ingests.to_string(),
                human_size(u.ingest_bytes),
            ],
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn table_without_ingests() {
        let now = 1_000 * S;
        let blobs = [Info {
            digest: "sha256:aa".into(),
            size: 1_500,
            created_at: now - 120 * S,
            referenced: true,
        }];
        assert_eq!(
            list_table(&blobs, &[], now),
            "\
DIGEST      SIZE     CREATED         REFERENCED
sha256:aa   1.5 kB   2 minutes ago   yes"
        );
    }

    #[test]
    fn table_with_ingests() {
        let ingests = [Ingest {
            r#ref: "pull-sha256:bb".into(),
            offset: 1_000_000,
            total: 2_000_000,
        }];
        let out = list_table(&[], &ingests, 0);
        assert_eq!(
            out,
            "DIGEST   SIZE   CREATED   REFERENCED\n\nINGEST           PROGRESS\npull-sha256:bb   1.0 MB / 2.0 MB"
        );
    }

    #[test]
    fn json_shape() {
        let v = list_json(
            &[Info {
                digest: "sha256:aa".into(),
                size: 3,
                created_at: 0,
                referenced: false,
            }],
            &[],
        );
        assert_eq!(v["blobs"][0]["digest"], "sha256:aa");
        assert_eq!(v["blobs"][0]["referenced"], false);
        assert_eq!(v["ingests"], json!([]));
    }

    #[test]
    fn prune_lines() {
        let resp = PruneResponse {
            removed: vec!["sha256:aa".into(), "sha256:bb".into()],
            bytes_freed: 2_100_000,
            snapshots_removed: vec![],
        };
        assert_eq!(
            prune_report(&resp),
            "sha256:aa\nsha256:bb\nremoved 2 blobs, freed 2.1 MB"
        );
        let resp = PruneResponse {
            removed: vec![],
            bytes_freed: 0,
            snapshots_removed: vec!["sha256:cc".into()],
        };
        assert_eq!(
            prune_report(&resp),
            "snapshot sha256:cc\nremoved 0 blobs, freed 0 B, and 1 snapshot"
        );
        assert_eq!(
            prune_report(&PruneResponse::default()),
            "removed 0 blobs, freed 0 B"
        );
    }

    #[test]
    fn usage_layout() {
        let u = UsageResponse {
            blobs: 12,
            bytes: 45_600_000,
            ingests: 0,
            ingest_bytes: 0,
        };
        assert_eq!(
            usage_table(&u),
            "          COUNT   SIZE\nblobs     12      45.6 MB\ningests   0       0 B"
        );
    }
}
