//! Small helpers: atomic files, time conversions, ids, bundle config.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::MessageField;

pub use berth_shim_protocol::annotations::SANDBOX_ID as SANDBOX_ID_ANNOTATION;
pub use berth_shim_protocol::env::{
    LOG as ENV_LOG, RUNC_ROOT as ENV_RUNC_ROOT, RUNTIME as ENV_RUNTIME,
    SOCKET_DIR as ENV_SOCKET_DIR, TTRPC_ADDRESS as ENV_TTRPC_ADDRESS,
};
pub use berth_shim_protocol::{DEFAULT_RUNC_ROOT, DEFAULT_RUNTIME, DEFAULT_SOCKET_DIR};
pub use berth_sysutil::write_atomic;

/// A count of outstanding work (requests being answered, events being sent) that a
/// thread can wait to see drop to zero.
pub struct Pending {
    n: std::sync::Mutex<usize>,
    zero: std::sync::Condvar,
}

impl Pending {
    pub const fn new() -> Self {
        Pending {
            n: std::sync::Mutex::new(0),
            zero: std::sync::Condvar::new(),
        }
    }

    fn count(&self) -> std::sync::MutexGuard<'_, usize> {
        self.n.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self) -> usize {
        *self.count()
    }

    pub fn add(&self) {
        *self.count() += 1;
    }

    pub fn done(&self) {
        let mut n = self.count();
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.zero.notify_all();
        }
    }

    pub fn reset(&self) {
        *self.count() = 0;
        self.zero.notify_all();
    }

    /// Waits up to `max` for the count to reach zero; whether it did.
    pub fn wait_zero(&self, max: Duration) -> bool {
        let n = self.count();
        match self.zero.wait_timeout_while(n, max, |n| *n > 0) {
            Ok((n, _)) => *n == 0,
            Err(e) => *e.into_inner().0 == 0,
        }
    }
}

impl Default for Pending {
    fn default() -> Self {
        Pending::new()
    }
}

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

pub fn socket_dir() -> PathBuf {
    PathBuf::from(env_or(ENV_SOCKET_DIR, DEFAULT_SOCKET_DIR))
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

pub fn timestamp_field(t: Option<SystemTime>) -> MessageField<Timestamp> {
    match t {
        Some(t) => MessageField::some(timestamp(t)),
        None => MessageField::none(),
    }
}

/// `2024-01-01T00:00:00.000000000Z`: RFC 3339, UTC, always nine fractional digits.
pub fn format_rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m as u32, d as u32)
}

/// Container and exec ids become file names and runc arguments: allow what containerd
/// allows (its identifiers package) and nothing that could escape a directory.
pub fn validate_id(kind: &str, id: &str) -> Result<(), crate::error::Error> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(crate::error::Error::InvalidArgument(format!(
            "invalid {kind} id {id:?}"
        )))
    }
}

/// The parts of an OCI bundle's config.json the shim looks at.
#[derive(Debug, Default, Clone)]
pub struct BundleConfig {
    pub sandbox_id: Option<String>,
    /// True when the container has no private PID namespace (shares the host's or
    /// another's): its processes must be killed when init exits.
    pub shared_pid_ns: bool,
    pub uid: u32,
    pub gid: u32,
    pub cgroups_path: Option<String>,
}

impl BundleConfig {
    pub fn read(bundle: &Path) -> io::Result<Self> {
        let data = fs::read(bundle.join("config.json"))?;
        let v: serde_json::Value = serde_json::from_slice(&data)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Self::from_value(&v))
    }

    pub fn from_value(v: &serde_json::Value) -> Self {
        let sandbox_id = v
            .pointer("/annotations")
            .and_then(|a| a.get(SANDBOX_ID_ANNOTATION))
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let shared_pid_ns = match v.pointer("/linux/namespaces").and_then(|n| n.as_array()) {
            Some(ns) => !ns.iter().any(|n| {
                n.get("type").and_then(|t| t.as_str()) == Some("pid")
                    && n.get("path")
                        .and_then(|p| p.as_str())
                        .is_none_or(|p| p.is_empty())
            }),
            None => true,
        };
        let (uid, gid) = process_user(v.get("process").unwrap_or(&serde_json::Value::Null));
        let cgroups_path = v
            .pointer("/linux/cgroupsPath")
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        BundleConfig {
            sandbox_id,
            shared_pid_ns,
            uid,
            gid,
            cgroups_path,
        }
    }
}

/// (uid, gid) of an OCI `process` object.
pub fn process_user(process: &serde_json::Value) -> (u32, u32) {
    let get = |k: &str| {
        process
            .pointer(&format!("/user/{k}"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u32
    };
    (get("uid"), get("gid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_reaches_zero_when_the_work_is_done() {
        let p = std::sync::Arc::new(Pending::new());
        assert!(p.wait_zero(Duration::ZERO));
        p.add();
        p.add();
        assert!(!p.wait_zero(Duration::from_millis(10)));
        let p2 = p.clone();
        let t = std::thread::spawn(move || {
            p2.done();
            p2.done();
        });
        assert!(p.wait_zero(Duration::from_secs(10)));
        t.join().unwrap();
        p.done();
        assert_eq!(p.get(), 0);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(
            format_rfc3339_nanos(UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
        let t = UNIX_EPOCH + Duration::new(1_704_067_200, 5);
        assert_eq!(format_rfc3339_nanos(t), "2024-01-01T00:00:00.000000005Z");
        // 2000-02-29 12:34:56.123456789 (a leap day in a century leap year).
        let t = UNIX_EPOCH + Duration::new(951_827_696, 123_456_789);
        assert_eq!(format_rfc3339_nanos(t), "2000-02-29T12:34:56.123456789Z");
        let t = UNIX_EPOCH + Duration::new(4_102_444_799, 0);
        assert_eq!(format_rfc3339_nanos(t), "2099-12-31T23:59:59.000000000Z");
    }

    #[test]
    fn ids() {
        assert!(validate_id("container", "abc-1.2_x").is_ok());
        for bad in ["", "../x", "a/b", ".x", "a b", &"x".repeat(129)] {
            assert!(validate_id("container", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bundle_config() {
        let v = serde_json::json!({
            "annotations": {"io.kubernetes.cri.sandbox-id": "sb1"},
            "process": {"user": {"uid": 1000, "gid": 100}},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}],
                      "cgroupsPath": "/default/c1"}
        });
        let c = BundleConfig::from_value(&v);
        assert_eq!(c.sandbox_id.as_deref(), Some("sb1"));
        assert!(!c.shared_pid_ns);
        assert_eq!((c.uid, c.gid), (1000, 100));
        assert_eq!(c.cgroups_path.as_deref(), Some("/default/c1"));
        let v = serde_json::json!({
            "linux": {"namespaces": [{"type": "pid", "path": "/proc/1/ns/pid"}]}
        });
        assert!(BundleConfig::from_value(&v).shared_pid_ns);
        assert!(BundleConfig::from_value(&serde_json::json!({})).shared_pid_ns);
    }

    #[test]
    fn atomic_write() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("address");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
