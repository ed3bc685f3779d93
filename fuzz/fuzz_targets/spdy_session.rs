//! A whole SPDY/3.1 exec/attach or port-forward session as berthd serves
//! it (`streaming::spdy::remote_command` / `port_forward` over
//! `session::Session`): stream creation, flow control, resets, GOAWAY, the
//! resize stream's JSON, the status on the error stream, all fed by a
//! client whose bytes are the input.
//!
//! Input: a mode byte (`SessionMode`), then the client's bytes. The session
//! must end (within a virtual day; all its timeouts are a minute) and never
//! panic.
#![no_main]

use berth_fuzz::{drive_session, limits, refusing_connector, seeds, serve_command, SessionMode};
use berth_streaming::{spdy, ExitStatus};
use libfuzzer_sys::fuzz_target;

const PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "",
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "bogus",
];

fuzz_target!(
    init: berth_fuzz::seeds_init("spdy_session", seeds::spdy_session),
    |data: &[u8]| {
        let Some((&mode, client)) = data.split_first() else {
            return;
        };
        let m = SessionMode::from_byte(mode);
        let status = if client.len() % 2 == 0 {
            ExitStatus::ExitCode(3)
        } else {
            ExitStatus::Success
        };
        drive_session(client, move |io| async move {
            if m.port_forward {
                let _ = spdy::port_forward(io, refusing_connector(), limits()).await;
            } else if let Ok(cmd) =
                spdy::remote_command(io, PROTOCOLS[m.protocol], m.opts, limits()).await
            {
                serve_command(cmd, status).await;
            }
        });
    }
);
