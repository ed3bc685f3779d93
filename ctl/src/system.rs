//! `berthctl info` and `berthctl events`.

use std::io::Write;

use anyhow::Result;
use berth_api::system::v1::system_client::SystemClient;
use berth_api::system::v1::{Event, EventsRequest, InfoRequest, InfoResponse};
use serde_json::{json, Value};

use crate::cli::Format;
use crate::connect::connect;
use crate::format::{human_size, rfc3339};
use crate::output::{print, print_json};

fn info_json(i: &InfoResponse) -> Value {
    let storage = i.storage.unwrap_or_default();
    let network = i.network.clone().unwrap_or_default();
    json!({
        "version": i.version,
        "revision": i.revision,
        "root": i.root,
        "state": i.state,
        "socket": i.socket,
        "runtimeHandlers": i.runtime_handlers.iter().map(|h| json!({
            "name": h.name, "runtime": h.runtime, "root": h.root, "default": h.default,
        })).collect::<Vec<_>>(),
        "network": {"confDir": network.conf_dir, "name": network.name},
        "storage": {
            "filesystemBytes": storage.filesystem_bytes,
            "filesystemFreeBytes": storage.filesystem_free_bytes,
            "contentBytes": storage.content_bytes,
            "contentBlobs": storage.content_blobs,
            "metadataBytes": storage.metadata_bytes,
            "images": storage.images,
            "snapshots": storage.snapshots,
        },
        "components": i.components.iter().map(|c| json!({
            "name": c.name, "healthy": c.healthy, "message": c.message,
        })).collect::<Vec<_>>(),
        "config": i.config_toml,
    })
}

fn size(b: u64) -> String {
    human_size(i64::try_from(b).unwrap_or(i64::MAX))
}

fn info_text(i: &InfoResponse) -> String {
    let storage = i.storage.unwrap_or_default();
    let network = i.network.clone().unwrap_or_default();
    let mut s = format!(
        "Server:\n  Version:   {}\n  Root:      {}\n  State:     {}\n  Socket:    {}\n",
        i.version, i.root, i.state, i.socket
    );
    s.push_str("Runtime handlers:\n");
    for h in &i.runtime_handlers {
        let default = if h.default { " (default)" } else { "" };
        s.push_str(&format!(
            "  {}{default}: {} (root {})\n",
            h.name, h.runtime, h.root
        ));
    }
    let name = if network.name.is_empty() {
        "none"
    } else {
        &network.name
    };
    s.push_str(&format!(
        "Network:\n  CNI:       {name} (from {})\n",
        network.conf_dir
    ));
    s.push_str(&format!(
        "Storage:\n  Filesystem: {} free of {}\n  Content:   {} in {} blobs\n  Images:    {}\n  Snapshots: {}\n  Metadata:  {}\n",
        size(storage.filesystem_free_bytes),
        size(storage.filesystem_bytes),
        size(storage.content_bytes),
        storage.content_blobs,
        storage.images,
        storage.snapshots,
        size(storage.metadata_bytes),
    ));
    s.push_str("Health:\n");
    for c in &i.components {
        let state = if c.healthy { "ok" } else { "UNHEALTHY" };
        s.push_str(&format!("  {:<12} {state:<9} {}\n", c.name, c.message));
    }
    s.push_str("Config:\n");
    for line in i.config_toml.lines() {
        s.push_str(&format!("  {line}\n"));
    }
    s.trim_end().to_string()
}

pub async fn info(address: &str, format: Format) -> Result<()> {
    let mut c = SystemClient::new(connect(address).await?);
    let i = c.info(InfoRequest {}).await?.into_inner();
    match format {
        Format::Json => print_json(&info_json(&i)),
        Format::Table => print(info_text(&i)),
    }
}

fn event_json(e: &Event) -> Value {
    json!({
        "timestamp": rfc3339(e.timestamp),
        "topic": e.topic,
        "id": e.id,
        "attributes": e.attributes.iter().collect::<std::collections::BTreeMap<_, _>>(),
    })
}

/// A value as is when it is one plain word, else quoted and escaped (an
/// exit reason has spaces; a name could hold anything).
fn attr_value(v: &str) -> String {
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_graphic() && c != '"') {
        v.to_string()
    } else {
        berth_sysutil::text::echo(v)
    }
}

/// One line per event, as `ctr events`: time, topic, object, attributes.
fn event_text(e: &Event) -> String {
    let time = rfc3339(e.timestamp);
    let mut attrs: Vec<(&String, &String)> = e.attributes.iter().collect();
    attrs.sort();
    let attrs: Vec<String> = attrs
        .into_iter()
        .map(|(k, v)| format!("{k}={}", attr_value(v)))
        .collect();
    format!(
        "{} {} {} {}",
        time.as_str().unwrap_or("-"),
        e.topic,
        if e.id.is_empty() { "-" } else { &e.id },
        attrs.join(" ")
    )
    .trim_end()
    .to_string()
}

/// Streams events until the daemon goes away or the user interrupts.
pub async fn events(address: &str, topics: Vec<String>, format: Format) -> Result<()> {
    let mut c = SystemClient::new(connect(address).await?);
    let mut stream = c.events(EventsRequest { topics }).await?.into_inner();
    while let Some(e) = stream.message().await? {
        let line = match format {
            Format::Json => serde_json::to_string(&event_json(&e))?,
            Format::Table => event_text(&e),
        };
        // Line by line, so a pipe (`| grep`) sees each event at once.
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines() {
        let e = Event {
            timestamp: 1_700_000_000_000_000_001,
            topic: "/pods/start".into(),
            id: "abc".into(),
            attributes: [
                ("pod_name".to_string(), "web".to_string()),
                ("namespace".to_string(), "default".to_string()),
                ("reason".to_string(), "shim died".to_string()),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(
            event_text(&e),
            "2023-11-14T22:13:20.000000001Z /pods/start abc namespace=default pod_name=web reason=\"shim died\""
        );
        let j = event_json(&e);
        assert_eq!(j["topic"], "/pods/start");
        assert_eq!(j["attributes"]["pod_name"], "web");
    }
}
