//! Shared pieces of berth's fuzz targets: seed corpus generation and the
//! shim's CRI log writer (compiled in from `shim/src`, which is a binary
//! crate).
//!
//! Seeds are generated, never downloaded: every target calls [`seeds_init`]
//! from its libFuzzer init hook; with `BERTH_FUZZ_SEEDS=<dir>` in the
//! environment it writes its valid examples into `<dir>` and exits, so
//! `make fuzz` needs no second build of the daemon just for the generator.

pub mod seeds;

/// The shim's `util` module, for `crilog`'s timestamp formatting.
#[allow(dead_code)]
#[path = "../../shim/src/util.rs"]
mod util;

/// The shim's CRI log writer, exactly as the shim compiles it.
#[allow(dead_code)]
#[path = "../../shim/src/crilog.rs"]
pub mod crilog;

use std::path::Path;

/// With `BERTH_FUZZ_SEEDS=<dir>` set: writes `gen()`'s seeds into `<dir>`
/// (as `seed-<n>`) and exits the process. Otherwise does nothing.
pub fn seeds_init(target: &str, gen: fn() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("BERTH_FUZZ_SEEDS") else {
        return;
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("creating the seed directory");
    let seeds = gen();
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}")), s).expect("writing a seed");
    }
    eprintln!("{target}: wrote {} seeds to {}", seeds.len(), dir.display());
    std::process::exit(0);
}

/// Runs `server` on one end of an in-memory connection while the client
/// end writes `client_bytes`, half-closes, and reads whatever comes back.
/// Time is virtual (tokio's paused clock advances whenever everything
/// waits), so idle timeouts cost nothing. The server must have finished
/// within a virtual day: a session that outlives its client and every
/// timeout is a hang, reported as a panic.
pub fn drive_session<F, Fut>(client_bytes: &[u8], server: F)
where
    F: FnOnce(tokio::io::DuplexStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, server_io) = tokio::io::duplex(64 * 1024);
        let srv = tokio::spawn(server(server_io));
        let (mut rd, mut wr) = tokio::io::split(client);
        let write = async {
            if wr.write_all(client_bytes).await.is_ok() {
                let _ = wr.shutdown().await;
            }
        };
        let read = async {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        let all = async {
            tokio::join!(write, read);
            srv.await
        };
        match tokio::time::timeout(std::time::Duration::from_secs(24 * 3600), all).await {
            Err(_) => panic!("the session did not end within a virtual day of its client"),
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(_) => {}
        }
    });
}

/// A stand-in for the command behind an exec/attach: writes a line to
/// stdout and stderr, echoes stdin to stdout until stdin ends or the client
/// goes, takes resizes, then reports `status` and waits for the connection
/// to be over.
pub async fn serve_command(
    io: berth_streaming::CommandIo,
    status: berth_streaming::ExitStatus,
) {
    let berth_streaming::CommandIo {
        stdin,
        stdout,
        stderr,
        resize,
        done,
        mut client_gone,
    } = io;
    if let Some(mut r) = resize {
        tokio::spawn(async move { while r.recv().await.is_some() {} });
    }
    if let Some(e) = &stderr {
        let _ = e.send(bytes::Bytes::from_static(b"err line\n")).await;
    }
    if let Some(o) = &stdout {
        let _ = o.send(bytes::Bytes::from_static(b"out line\n")).await;
    }
    let mut gone = false;
    if let Some(mut input) = stdin {
        loop {
            tokio::select! {
                chunk = input.recv() => match chunk {
                    Some(c) => {
                        if let Some(o) = &stdout {
                            let _ = o.send(c).await;
                        }
                    }
                    None => break,
                },
                _ = &mut client_gone => {
                    gone = true;
                    break;
                }
            }
        }
    }
    drop(stdout);
    drop(stderr);
    let _ = done.send(status);
    if !gone {
        let _ = client_gone.await;
    }
}

/// Mode byte of the session targets: which streams, a TTY, a protocol
/// index, port-forward instead of exec.
pub struct SessionMode {
    pub opts: berth_streaming::StreamOpts,
    pub protocol: usize,
    pub port_forward: bool,
}

impl SessionMode {
    pub fn from_byte(b: u8) -> SessionMode {
        SessionMode {
            opts: berth_streaming::StreamOpts {
                stdin: b & 1 != 0,
                stdout: b & 2 != 0,
                stderr: b & 4 != 0,
                tty: b & 8 != 0,
            },
            protocol: usize::from((b >> 4) & 7),
            port_forward: b & 0x80 != 0,
        }
    }
}

/// Limits small enough that every timeout fires within a virtual minute.
pub fn limits() -> berth_streaming::Limits {
    berth_streaming::Limits {
        idle_timeout: std::time::Duration::from_secs(60),
        stream_creation_timeout: std::time::Duration::from_secs(10),
    }
}

/// A pod side that refuses every connection (port-forward).
pub fn refusing_connector() -> berth_streaming::PortConnector {
    std::sync::Arc::new(|_port| {
        Box::pin(async {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "fuzz: nothing listens",
            ))
        })
    })
}
