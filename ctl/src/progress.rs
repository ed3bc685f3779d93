//! Rendering pull/push progress events: bars on a terminal, one line per
//! state change otherwise (logs and pipes must not get a line per chunk).

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::Duration;

use berth_api::images::v1::layer_progress::State;
use berth_api::images::v1::LayerProgress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::format::{human_size, short_digest};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Pull,
    Push,
}

impl Op {
    fn active_verb(self) -> &'static str {
        match self {
            Op::Pull => "downloading",
            Op::Push => "uploading",
        }
    }
}

/// Progress display chosen by whether stdout is a terminal.
pub enum View {
    Tty(TtyView),
    Plain(PlainView),
}

impl View {
    pub fn new(op: Op, terminal: bool) -> Self {
        if terminal {
            View::Tty(TtyView::new(op))
        } else {
            View::Plain(PlainView::new(op))
        }
    }

    /// Applies one event; every event carries the full list of layers.
    pub fn update(
        &mut self,
        reference: &str,
        status: &str,
        layers: &[LayerProgress],
    ) -> io::Result<()> {
        match self {
            View::Tty(v) => {
                v.update(reference, status, layers);
                Ok(())
            }
            View::Plain(v) => {
                let lines = v.update(reference, status, layers);
                let mut out = io::stdout().lock();
                for line in lines {
                    writeln!(out, "{line}")?;
                }
                out.flush()
            }
        }
    }

    /// Marks the operation complete; bars stay on screen as a record.
    pub fn finish(&mut self) {
        if let View::Tty(v) = self {
            v.finish();
        }
    }
}

/// Short label for what a descriptor is, from its media type.
pub fn kind(media_type: &str) -> &'static str {
    let mt = media_type.to_ascii_lowercase();
    if mt.contains("index") || mt.contains("manifest.list") {
        "index"
    } else if mt.contains("manifest") {
        "manifest"
    } else if mt.contains("config") {
        "config"
    } else {
        "layer"
    }
}

fn state_of(layer: &LayerProgress) -> Option<State> {
    State::try_from(layer.state).ok()
}

fn state_name(op: Op, state: Option<State>) -> &'static str {
    match state {
        Some(State::Waiting) => "waiting",
        Some(State::Downloading) => op.active_verb(),
        Some(State::Exists) => "exists",
        Some(State::Done) => "done",
        Some(State::Failed) => "failed",
        // A newer daemon may add states; show the change rather than hide it.
        None => "unknown state",
    }
}

/// Line-per-change renderer; pure, so it is unit-tested.
pub struct PlainView {
    op: Op,
    status: String,
    states: HashMap<String, i32>,
}

impl PlainView {
    pub fn new(op: Op) -> Self {
        Self {
            op,
            status: String::new(),
            states: HashMap::new(),
        }
    }

    /// Lines to print for this event: status changes and layer state changes.
    pub fn update(
        &mut self,
        reference: &str,
        status: &str,
        layers: &[LayerProgress],
    ) -> Vec<String> {
        let mut lines = Vec::new();
        if !status.is_empty() && status != self.status {
            self.status = status.to_string();
            lines.push(format!("{reference}: {status}"));
        }
        for layer in layers {
            let prev = self.states.insert(layer.digest.clone(), layer.state);
            if prev == Some(layer.state) {
                continue;
            }
            let state = state_of(layer);
            // Every layer starts out waiting; announcing that is noise.
            if prev.is_none() && state == Some(State::Waiting) {
                continue;
            }
            lines.push(self.layer_line(layer, state));
        }
        lines
    }

    fn layer_line(&self, layer: &LayerProgress, state: Option<State>) -> String {
        let label = format!(
            "{} {}",
            kind(&layer.media_type),
            short_digest(&layer.digest)
        );
        let name = state_name(self.op, state);
        let size = match (state, layer.total > 0) {
            (_, false) => String::new(),
            (Some(State::Failed), true) => format!(
                " at {} of {}",
                human_size(layer.done),
                human_size(layer.total)
            ),
            (_, true) => format!(" ({})", human_size(layer.total)),
        };
        format!("{label}: {name}{size}")
    }
}

/// indicatif bars: a spinner with the phase, then one bar per layer.
pub struct TtyView {
    op: Op,
    multi: MultiProgress,
    header: ProgressBar,
    bars: HashMap<String, (ProgressBar, i32)>,
    style: ProgressStyle,
}

impl TtyView {
    fn new(op: Op) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let header = multi.add(ProgressBar::new_spinner());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
            header.set_style(style);
        }
        header.enable_steady_tick(Duration::from_millis(100));
        // The template is a constant; fall back to the default rather than fail.
        let style = ProgressStyle::with_template(
            "{prefix:.bold} {msg:<11} [{bar:30}] {decimal_bytes:>9} / {decimal_total_bytes:<9}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        Self {
            op,
            multi,
            header,
            bars: HashMap::new(),
            style,
        }
    }

    fn update(&mut self, reference: &str, status: &str, layers: &[LayerProgress]) {
        if !status.is_empty() {
            self.header.set_message(format!("{reference}: {status}"));
        }
        for layer in layers {
            let (bar, last) = self.bars.entry(layer.digest.clone()).or_insert_with(|| {
                let bar = self.multi.add(
                    ProgressBar::new(0)
                        .with_style(self.style.clone())
                        .with_prefix(format!(
                            "{:<8} {}",
                            kind(&layer.media_type),
                            short_digest(&layer.digest)
                        )),
                );
                // Not the state of any event, so the first event always applies.
                (bar, -1)
            });
            if bar.is_finished() {
                continue;
            }
            bar.set_length(layer.total.max(0) as u64);
            bar.set_position(layer.done.max(0) as u64);
            if *last == layer.state {
                continue;
            }
            *last = layer.state;
            let state = state_of(layer);
            let name = state_name(self.op, state);
            match state {
                Some(State::Exists | State::Done) => {
                    bar.set_position(layer.total.max(layer.done).max(0) as u64);
                    bar.finish_with_message(name);
                }
                Some(State::Failed) => bar.abandon_with_message(name),
                _ => bar.set_message(name),
            }
        }
    }

    fn finish(&mut self) {
        for (bar, _) in self.bars.values() {
            if !bar.is_finished() {
                bar.finish();
            }
        }
        self.header.finish();
    }
}

impl Drop for TtyView {
    // On an error or Ctrl-C, leave the bars as they stood so the terminal
    // shows where it stopped, and let the error line print below them.
    fn drop(&mut self) {
        for (bar, _) in self.bars.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
        if !self.header.is_finished() {
            self.header.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    fn layer(digest: &str, state: State, done: i64, total: i64) -> LayerProgress {
        LayerProgress {
            digest: digest.into(),
            media_type: LAYER.into(),
            done,
            total,
            state: state as i32,
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(kind("application/vnd.oci.image.index.v1+json"), "index");
        assert_eq!(
            kind("application/vnd.docker.distribution.manifest.list.v2+json"),
            "index"
        );
        assert_eq!(
            kind("application/vnd.oci.image.manifest.v1+json"),
            "manifest"
        );
        assert_eq!(kind("application/vnd.oci.image.config.v1+json"), "config");
        assert_eq!(kind(LAYER), "layer");
        assert_eq!(kind(""), "layer");
    }

    #[test]
    fn plain_prints_state_changes_not_chunks() {
        let mut v = PlainView::new(Op::Pull);
        let r = "docker.io/library/busybox:latest";
        assert_eq!(v.update(r, "resolving", &[]), [format!("{r}: resolving")]);
        // Both start waiting: nothing to say about layers yet.
        let a = "sha256:aaaaaaaaaaaaaaaaaaaa";
        let b = "sha256:bbbbbbbbbbbbbbbbbbbb";
        assert_eq!(
            v.update(
                r,
                "fetching",
                &[
                    layer(a, State::Waiting, 0, 2_100_000),
                    layer(b, State::Exists, 0, 500)
                ]
            ),
            [
                format!("{r}: fetching"),
                "layer bbbbbbbbbbbb: exists (500 B)".to_string()
            ]
        );
        assert_eq!(
            v.update(
                r,
                "fetching",
                &[
                    layer(a, State::Downloading, 10, 2_100_000),
                    layer(b, State::Exists, 500, 500)
                ]
            ),
            ["layer aaaaaaaaaaaa: downloading (2.1 MB)"]
        );
        // More bytes in the same state: silent.
        assert!(v
            .update(
                r,
                "fetching",
                &[
                    layer(a, State::Downloading, 1_000_000, 2_100_000),
                    layer(b, State::Exists, 500, 500)
                ]
            )
            .is_empty());
        assert_eq!(
            v.update(
                r,
                "done",
                &[
                    layer(a, State::Done, 2_100_000, 2_100_000),
                    layer(b, State::Exists, 500, 500)
                ]
            ),
            [
                format!("{r}: done"),
                "layer aaaaaaaaaaaa: done (2.1 MB)".to_string()
            ]
        );
    }

    #[test]
    fn plain_failure_and_push_wording() {
        let mut v = PlainView::new(Op::Push);
        let a = "sha256:cccccccccccccccc";
        assert_eq!(
            v.update("r", "", &[layer(a, State::Downloading, 0, 0)]),
            ["layer cccccccccccc: uploading"]
        );
        assert_eq!(
            v.update("r", "", &[layer(a, State::Failed, 1000, 2000)]),
            ["layer cccccccccccc: failed at 1.0 kB of 2.0 kB"]
        );
        let mut odd = layer(a, State::Done, 0, 0);
        odd.state = 42;
        assert_eq!(
            v.update("r", "", &[odd]),
            ["layer cccccccccccc: unknown state"]
        );
    }

    #[test]
    fn tty_view_tracks_states_without_a_terminal() {
        // Draws to stdout, which indicatif hides when it is not a terminal.
        let mut v = TtyView::new(Op::Pull);
        let a = "sha256:dddddddddddd";
        v.update("r", "fetching", &[layer(a, State::Downloading, 5, 10)]);
        assert_eq!(v.bars[a].0.position(), 5);
        v.update("r", "fetching", &[layer(a, State::Exists, 5, 10)]);
        assert!(v.bars[a].0.is_finished());
        assert_eq!(v.bars[a].0.position(), 10);
        v.finish();
        assert!(v.header.is_finished());
    }
}
