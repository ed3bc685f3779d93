//! `berthctl snapshots ...`: the Snapshots service.

use anyhow::Result;
use berth_api::snapshots::v1::snapshot::Kind;
use berth_api::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::snapshots::v1::{
    ListSnapshotsRequest, RemoveSnapshotRequest, Snapshot, SnapshotInfoRequest,
    SnapshotUsageRequest,
};
use serde_json::{json, Value};

use crate::cli::{Format, SnapshotsCommand};
use crate::connect::{connect, MAX_MESSAGE};
use crate::format::{human_size, now_nanos, relative_time, rfc3339, short_digest, table};
use crate::output::{for_each_name, print, print_json};

pub async fn run(address: &str, cmd: SnapshotsCommand) -> Result<()> {
    let mut c =
        SnapshotsClient::new(connect(address).await?).max_decoding_message_size(MAX_MESSAGE);
    match cmd {
        SnapshotsCommand::Ls { format, quiet } => {
            let resp = c.list(ListSnapshotsRequest {}).await?.into_inner();
            let mut snaps = resp.snapshots;
            snaps.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
            if quiet {
                let names: Vec<_> = snaps.into_iter().map(|s| s.name).collect();
                return if names.is_empty() {
                    Ok(())
                } else {
                    print(names.join("\n"))
                };
            }
            match format {
                Format::Json => {
                    print_json(&Value::Array(snaps.iter().map(snapshot_json).collect()))
                }
                Format::Table => print(list_table(&snaps, now_nanos())),
            }
        }
        SnapshotsCommand::Info { name } => {
            let resp = c.info(SnapshotInfoRequest { name }).await?.into_inner();
            match resp.snapshot {
                Some(s) => print_json(&snapshot_json(&s)),
                None => Ok(()),
            }
        }
        SnapshotsCommand::Usage { format } => {
            let u = c.usage(SnapshotUsageRequest {}).await?.into_inner();
            match format {
                Format::Json => print_json(&json!({
                    "snapshots": u.snapshots, "size": u.size, "inodes": u.inodes,
                })),
                Format::Table => print(table(
                    &["SNAPSHOTS", "SIZE", "INODES"],
                    vec![vec![
                        u.snapshots.to_string(),
                        human_size(u.size),
                        u.inodes.to_string(),
                    ]],
                )),
            }
        }
        SnapshotsCommand::Rm { names } => {
            for_each_name(names, |name| {
                let mut c = c.clone();
                async move {
                    c.remove(RemoveSnapshotRequest { name }).await?;
                    Ok(())
                }
            })
            .await
        }
    }
}

fn kind_name(kind: i32) -> &'static str {
    match Kind::try_from(kind).unwrap_or(Kind::Unknown) {
        Kind::View => "view",
        Kind::Active => "active",
        Kind::Committed => "committed",
        Kind::Unknown => "unknown",
    }
}

fn snapshot_json(s: &Snapshot) -> Value {
    json!({
        "name": s.name,
        "parent": s.parent,
        "kind": kind_name(s.kind),
        "labels": s.labels,
        "createdAt": rfc3339(s.created_at),
        "updatedAt": rfc3339(s.updated_at),
        "size": s.size,
        "inodes": s.inodes,
        "referenced": s.referenced,
    })
}

/// Chain IDs are shortened like digests; other keys are kept whole.
fn short_name(name: &str) -> String {
    if name.starts_with("sha256:") {
        short_digest(name)
    } else {
        name.to_string()
    }
}

fn list_table(snaps: &[Snapshot], now: i64) -> String {
    let rows = snaps
        .iter()
        .map(|s| {
            vec![
                short_name(&s.name),
                if s.parent.is_empty() {
                    "-".into()
                } else {
                    short_name(&s.parent)
                },
                kind_name(s.kind).to_string(),
                human_size(s.size),
                relative_time(s.created_at, now),
                if s.referenced { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    table(
        &["NAME", "PARENT", "KIND", "SIZE", "CREATED", "REFERENCED"],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_kind_and_parent() {
        let s = Snapshot {
            name: "sha256:0123456789abcdef0123".into(),
            parent: String::new(),
            kind: Kind::Committed as i32,
            size: 2_100_000,
            created_at: 0,
            referenced: true,
            ..Default::default()
        };
        let t = list_table(&[s], 0);
        assert!(
            t.contains("NAME") && t.contains("committed") && t.contains("2.1 MB"),
            "{t}"
        );
        assert!(t.contains(" - "), "{t}");
    }
}
