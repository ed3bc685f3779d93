//! Pure rendering helpers: sizes, times, digests, tables and JSON records.

use std::time::{SystemTime, UNIX_EPOCH};

use berth_api::images::v1::{Descriptor, Image};
use comfy_table::{ContentArrangement, Table};
use serde_json::{json, Map, Value};

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Now as Unix nanoseconds, the unit the API uses for timestamps.
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Decimal units, as `docker images` uses: 2_100_000 -> "2.1 MB".
pub fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    let bytes = bytes.max(0);
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    value /= 1000.0;
    // Move up a unit when rounding to one decimal would print "1000.0".
    while value >= 999.95 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Coarse duration in the style of `docker ps`: "5 minutes", "About an hour".
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let minutes = secs / 60;
    // Hours are rounded so 1h40m reads "2 hours", as docker does.
    let hours = (secs as f64 / 3600.0).round() as i64;
    let days = secs / 86_400;
    match () {
        _ if secs < 1 => "Less than a second".into(),
        _ if secs == 1 => "1 second".into(),
        _ if secs < 60 => format!("{secs} seconds"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if days < 14 => format!("{days} days"),
        _ if days < 60 => format!("{} weeks", days / 7),
        _ if days < 730 => format!("{} months", days / 30),
        _ => format!("{} years", days / 365),
    }
}

/// "5 minutes ago"; "-" for an unset (zero) timestamp.
pub fn relative_time(unix_nanos: i64, now_nanos: i64) -> String {
    if unix_nanos <= 0 {
        return "-".into();
    }
    // A timestamp slightly in the future (clock skew) reads as just now.
    let secs = now_nanos.saturating_sub(unix_nanos) / NANOS_PER_SEC;
    format!("{} ago", human_duration(secs))
}

/// The first 12 hex digits of a digest, as `docker images` shows IDs.
pub fn short_digest(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.chars().take(12).collect()
}

/// RFC 3339 in UTC with nanoseconds trimmed of trailing zeros (like Go's
/// RFC3339Nano and protobuf's JSON timestamps); null for an unset timestamp.
pub fn rfc3339(unix_nanos: i64) -> Value {
    if unix_nanos <= 0 {
        return Value::Null;
    }
    let secs = unix_nanos.div_euclid(NANOS_PER_SEC);
    let nanos = unix_nanos.rem_euclid(NANOS_PER_SEC);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = berth_sysutil::time::civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    Value::String(s)
}

/// A borderless table like `docker images`: columns three spaces apart, no
/// leading space, no trailing whitespace, never wrapped (names stay copyable).
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.to_vec());
    for row in rows {
        t.add_row(row);
    }
    let last = headers.len().saturating_sub(1);
    for i in 0..headers.len() {
        if let Some(col) = t.column_mut(i) {
            col.set_padding((0, if i == last { 0 } else { 3 }));
        }
    }
    t.lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn images_table(images: &[Image], now: i64) -> String {
    let rows = images
        .iter()
        .map(|img| {
            vec![
                img.name.clone(),
                img.target
                    .as_ref()
                    .map(|t| short_digest(&t.digest))
                    .unwrap_or_default(),
                human_size(img.size),
                relative_time(img.created_at, now),
            ]
        })
        .collect();
    table(&["NAME", "DIGEST", "SIZE", "CREATED"], rows)
}

fn string_map<'a>(m: impl IntoIterator<Item = (&'a String, &'a String)>) -> Value {
    // Sorted, so output is stable whatever order the map iterates in.
    let mut entries: Vec<_> = m.into_iter().collect();
    entries.sort();
    Value::Object(
        entries
            .into_iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    )
}

/// Descriptor in OCI's JSON spelling.
pub fn descriptor_json(d: &Descriptor) -> Value {
    let mut v = json!({
        "mediaType": d.media_type,
        "digest": d.digest,
        "size": d.size,
    });
    if !d.annotations.is_empty() {
        v["annotations"] = string_map(&d.annotations);
    }
    v
}

/// Image record with protobuf-JSON style names and RFC 3339 times.
pub fn image_json(img: &Image) -> Value {
    json!({
        "name": img.name,
        "target": img.target.as_ref().map(descriptor_json),
        "configDigest": if img.config_digest.is_empty() { Value::Null } else { img.config_digest.clone().into() },
        "size": img.size,
        "labels": string_map(&img.labels),
        "createdAt": rfc3339(img.created_at),
        "updatedAt": rfc3339(img.updated_at),
    })
}

/// Raw JSON bytes from the daemon as a nested value; null when absent, and a
/// string rather than a failure if the bytes are not JSON.
pub fn raw_json(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(-5), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1000), "1.0 kB");
        assert_eq!(human_size(2_100_000), "2.1 MB");
        assert_eq!(human_size(2_146_000), "2.1 MB");
        assert_eq!(human_size(999_949), "999.9 kB");
        assert_eq!(human_size(999_990), "1.0 MB");
        assert_eq!(human_size(77_800_000_000), "77.8 GB");
        assert_eq!(human_size(i64::MAX), "9.2 EB");
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(1), "1 second");
        assert_eq!(human_duration(59), "59 seconds");
        assert_eq!(human_duration(60), "About a minute");
        assert_eq!(human_duration(5 * 60 + 3), "5 minutes");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(100 * 60), "2 hours");
        assert_eq!(human_duration(47 * 3600), "47 hours");
        assert_eq!(human_duration(3 * 86_400), "3 days");
        assert_eq!(human_duration(20 * 86_400), "2 weeks");
        assert_eq!(human_duration(90 * 86_400), "3 months");
        assert_eq!(human_duration(800 * 86_400), "2 years");
    }

    #[test]
    fn relative_times() {
        let now = 1_700_000_000 * NANOS_PER_SEC;
        assert_eq!(
            relative_time(now - 300 * NANOS_PER_SEC, now),
            "5 minutes ago"
        );
        assert_eq!(
            relative_time(now + NANOS_PER_SEC, now),
            "Less than a second ago"
        );
        assert_eq!(relative_time(0, now), "-");
    }

    #[test]
    fn short_digests() {
        assert_eq!(short_digest("sha256:0123456789abcdef0123"), "0123456789ab");
        assert_eq!(short_digest("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_digest("sha256:abc"), "abc");
        assert_eq!(short_digest(""), "");
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339(0), Value::Null);
        assert_eq!(rfc3339(NANOS_PER_SEC), json!("1970-01-01T00:00:01Z"));
        assert_eq!(
            rfc3339(1_700_000_000 * NANOS_PER_SEC + 120_000_000),
            json!("2023-11-14T22:13:20.12Z")
        );
        // Leap day.
        assert_eq!(
            rfc3339(951_782_400 * NANOS_PER_SEC),
            json!("2000-02-29T00:00:00Z")
        );
    }

    fn image(name: &str, digest: &str, size: i64, created: i64) -> Image {
        Image {
            name: name.into(),
            target: Some(Descriptor {
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                digest: digest.into(),
                size: 500,
                annotations: HashMap::new(),
            }),
            size,
            created_at: created,
            ..Default::default()
        }
    }

    #[test]
    fn images_table_layout() {
        let now = 1_700_000_000 * NANOS_PER_SEC;
        let out = images_table(
            &[
                image(
                    "docker.io/library/busybox:latest",
                    "sha256:0123456789abcdef",
                    2_150_000,
                    now - 300 * NANOS_PER_SEC,
                ),
                image("x:1", "sha256:fedcba9876543210", 12, 0),
            ],
            now,
        );
        let expected = "\
NAME                               DIGEST         SIZE     CREATED
docker.io/library/busybox:latest   0123456789ab   2.1 MB   5 minutes ago
x:1                                fedcba987654   12 B     -";
        assert_eq!(out, expected);
    }

    #[test]
    fn empty_table_has_header_only() {
        assert_eq!(images_table(&[], 0), "NAME   DIGEST   SIZE   CREATED");
    }

    #[test]
    fn image_json_shape() {
        let mut img = image("a:1", "sha256:00", 10, NANOS_PER_SEC);
        img.labels.insert("k".into(), "v".into());
        let v = image_json(&img);
        assert_eq!(v["name"], "a:1");
        assert_eq!(v["target"]["digest"], "sha256:00");
        assert_eq!(
            v["target"]["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(v["labels"]["k"], "v");
        assert_eq!(v["createdAt"], "1970-01-01T00:00:01Z");
        assert_eq!(v["updatedAt"], Value::Null);
        assert_eq!(v["configDigest"], Value::Null);
    }

    #[test]
    fn raw_json_nests() {
        assert_eq!(raw_json(b""), Value::Null);
        assert_eq!(raw_json(br#"{"a":[1]}"#), json!({"a": [1]}));
        assert_eq!(raw_json(b"not json"), json!("not json"));
    }
}
