//! The shim's own log: `time=... level=... msg=...` lines to one file descriptor
//! (containerd's `log` FIFO in the bundle, or a file). Writes never block the shim:
//! a FIFO is opened non-blocking and lines are dropped when its reader is gone or slow.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use log::{LevelFilter, Log, Metadata, Record};

use berth_sysutil::time::format_rfc3339_nanos;

struct Logger {
    out: Mutex<Option<File>>,
    level: LevelFilter,
    ns: String,
    id: String,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        if m.target().starts_with("ttrpc") && self.level < LevelFilter::Debug {
            return m.level() <= log::Level::Warn;
        }
        m.level() <= self.level
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format!(
            "time=\"{}\" level={} msg={:?} namespace={} id={} runtime=io.containerd.berth.v2\n",
            format_rfc3339_nanos(SystemTime::now()),
            r.level().as_str().to_ascii_lowercase(),
            r.args().to_string(),
            self.ns,
            self.id
        );
        if let Ok(mut g) = self.out.lock() {
            if let Some(f) = g.as_mut() {
                let _ = f.write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

/// Opens the shim log: `explicit` if given, else `<bundle>/log` when it is a FIFO with a
/// reader (containerd), else `<bundle>/shim.log`.
pub fn open_log(explicit: Option<&Path>, bundle: &Path) -> Option<File> {
    if let Some(p) = explicit {
        return OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(p)
            .ok();
    }
    let fifo = bundle.join("log");
    if std::fs::metadata(&fifo).is_ok_and(|m| m.file_type().is_fifo()) {
        if let Ok(f) = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&fifo)
        {
            return Some(f);
        }
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(bundle.join("shim.log"))
        .ok()
}

pub fn init(out: Option<File>, debug: bool, ns: &str, id: &str) {
    let level = if debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    let logger = Logger {
        out: Mutex::new(out),
        level,
        ns: ns.to_string(),
        id: id.to_string(),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}
