//! A whole WebSocket exec/attach or port-forward session as berthd serves
//! it (`streaming::ws::remote_command` / `port_forward`): WebSocket framing
//! (tungstenite, berth's message limits), channel bytes, base64 text
//! channels, v5 close signals, resize JSON, port-forward channel routing.
//!
//! Input: a mode byte (`SessionMode`; for port-forward bit 0 asks for two
//! ports), then the client's bytes (masked client frames). The session must
//! end (within a virtual day) and never panic.
#![no_main]

use berth_fuzz::{drive_session, limits, refusing_connector, seeds, serve_command, SessionMode};
use berth_streaming::{ws, ExitStatus};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: berth_fuzz::seeds_init("ws_session", seeds::ws_session),
    |data: &[u8]| {
        let Some((&mode, client)) = data.split_first() else {
            return;
        };
        let m = SessionMode::from_byte(mode);
        let status = if client.len() % 2 == 0 {
            ExitStatus::Error("fuzz".into())
        } else {
            ExitStatus::ExitCode(1)
        };
        drive_session(client, move |io| async move {
            if m.port_forward {
                let protocol = ws::PORT_FORWARD_PROTOCOLS[m.protocol % 2];
                let ports = if mode & 1 != 0 { vec![80, 443] } else { vec![8080] };
                let _ = ws::port_forward(io, protocol, ports, refusing_connector(), limits()).await;
            } else {
                let protocol = ws::REMOTE_COMMAND_PROTOCOLS[m.protocol % 5];
                if let Ok(cmd) = ws::remote_command(io, protocol, m.opts, limits()).await {
                    serve_command(cmd, status).await;
                }
            }
        });
    }
);
