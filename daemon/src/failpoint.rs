//! Crash points for recovery tests: with `BERTH_FAILPOINTS=name[,name...]`
//! in its environment, berthd SIGKILLs itself when it reaches a named point,
//! so a test can stop it at an exact instruction (between a durable write and
//! the side effect that follows it). `name@MS` instead makes a [`delay`] point
//! wait MS milliseconds, to widen a race window. Without the variable a point
//! is one load of an empty list.

use std::sync::OnceLock;

static POINTS: OnceLock<Vec<String>> = OnceLock::new();

fn armed() -> &'static [String] {
    POINTS.get_or_init(|| {
        std::env::var("BERTH_FAILPOINTS")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Dies here, as `kill -9` would, if `name` is armed.
pub fn hit(name: &str) {
    if armed().iter().any(|p| p == name) {
        tracing::error!(failpoint = name, "failpoint reached: SIGKILL");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
}

/// Waits here if `name@MS` is armed.
pub async fn delay(name: &str) {
    let ms = armed()
        .iter()
        .filter_map(|p| p.strip_prefix(name)?.strip_prefix('@')?.parse::<u64>().ok())
        .next();
    if let Some(ms) = ms {
        tracing::warn!(failpoint = name, ms, "failpoint reached: waiting");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}
