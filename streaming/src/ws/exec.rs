//! Exec and attach over WebSocket: the remote-command channels.

use super::*;

/// Receives from an optional queue; a closed or absent queue never yields.
async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Exec/attach over an already-upgraded connection (the caller has written
/// the `101` with `protocol` as `Sec-WebSocket-Protocol`). The returned
/// [`CommandIo`] is served by background tasks: channel 0 feeds `stdin`
/// (closed at the v5 close signal or when the client goes), channel 4
/// feeds `resize` (with a TTY), `stdout`/`stderr` become channel 1/2
/// messages. After `done`, the status goes out on channel 3 and the
/// connection is closed. `client_gone` fires when the client disconnects or
/// idles out (and also once the connection is over after `done`).
pub async fn remote_command<IO>(
    io: IO,
    protocol: &str,
    opts: StreamOpts,
    limits: Limits,
) -> Result<CommandIo, WsError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let proto = remote_command_proto(protocol)?;
    let (sink, source) = open(io).await;

    let (stdin_tx, stdin_rx) = if opts.stdin {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (resize_tx, resize_rx) = if opts.tty {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (stdout_tx, stdout_rx) = if opts.stdout {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    // With a TTY the terminal merges stderr into stdout.
    let (stderr_tx, stderr_rx) = if opts.stderr && !opts.tty {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (done_tx, done_rx) = oneshot::channel();
    let (gone_tx, gone_rx) = oneshot::channel::<()>();

    let activity = Activity::new();
    // Cancelled when the reader stops (the client is gone or idle).
    let gone = CancellationToken::new();
    // Cancelled when the writer is done with the connection.
    let shutdown = CancellationToken::new();

    // kubelet opens the stream with an empty message on the lowest channel
    // the client will read, which tells clients the connection works.
    let hello = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    debug!(protocol, ?opts, "websocket remote command");

    tokio::spawn(
        {
            let (activity, gone, shutdown) = (activity.clone(), gone.clone(), shutdown.clone());
            async move {
                let writer = CommandWriter {
                    proto,
                    limits,
                    activity: &activity,
                    gone: &gone,
                };
                writer.run(sink, hello, stdout_rx, stderr_rx, done_rx).await;
                shutdown.cancel();
            }
        }
        .in_current_span(),
    );

    tokio::spawn(async move {
        let mut reader = CommandReader {
            proto,
            stdin: stdin_tx,
            resize: resize_tx,
            resize_buf: Vec::new(),
        };
        let mut rd = Reader {
            source,
            limits,
            activity,
            shutdown,
        };
        let end = loop {
            let handled = match rd.next().await {
                Ok(data) => rd.guard(reader.handle(data)).await,
                Err(end) => Err(end),
            };
            if let Err(end) = handled {
                break end;
            }
        };
        match end {
            ReadEnd::Idle => {
                warn!(idle_timeout = ?limits.idle_timeout, "exec/attach connection idle, closing")
            }
            ReadEnd::ClientGone => debug!("exec/attach client went away"),
            ReadEnd::Shutdown => {}
        }
        // stdin EOF and client_gone fire by dropping their senders here.
        drop(reader);
        drop(gone_tx);
        gone.cancel();
    }.in_current_span());

    Ok(CommandIo {
        stdin: stdin_rx,
        stdout: stdout_tx,
        stderr: stderr_tx,
        resize: resize_rx,
        done: done_tx,
        client_gone: gone_rx,
    })
}

struct CommandReader {
    proto: Proto,
    stdin: Option<mpsc::Sender<Bytes>>,
    resize: Option<mpsc::Sender<TermSize>>,
    /// Resize JSON is a stream of objects that need not align with
    /// messages (kubelet reads it with a JSON decoder).
    resize_buf: Vec<u8>,
}

impl CommandReader {
    async fn handle(&mut self, msg: Bytes) {
        match decode(self.proto.codec, self.proto.close_signal, msg) {
            Incoming::Junk(why) => debug!(why, "ignoring a malformed message"),
            Incoming::Close(STDIN) => {
                debug!("client closed stdin");
                self.stdin = None;
            }
            Incoming::Close(RESIZE) => self.resize = None,
            Incoming::Close(channel) => debug!(
                channel,
                "ignoring close of a channel the client does not write"
            ),
            Incoming::Data(STDIN, data) => {
                if data.is_empty() {
                    return;
                }
                if let Some(tx) = &self.stdin {
                    if tx.send(data).await.is_err() {
                        // The backend no longer reads stdin: drop the rest.
                        self.stdin = None;
                    }
                }
            }
            Incoming::Data(RESIZE, data) => self.resize(&data).await,
            Incoming::Data(channel, data) => {
                debug!(
                    channel,
                    len = data.len(),
                    "ignoring data on a channel the client may not write"
                );
            }
        }
    }

    async fn resize(&mut self, data: &[u8]) {
        let Some(tx) = &self.resize else {
            return;
        };
        self.resize_buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let consumed = {
            let mut it =
                serde_json::Deserializer::from_slice(&self.resize_buf).into_iter::<TermSize>();
            loop {
                match it.next() {
                    Some(Ok(size)) => sizes.push(size),
                    Some(Err(e)) if e.is_eof() => break it.byte_offset(),
                    Some(Err(e)) => {
                        debug!(error = %e, "ignoring a malformed resize");
                        break self.resize_buf.len();
                    }
                    None => break it.byte_offset(),
                }
            }
        };
        self.resize_buf.drain(..consumed);
        if self.resize_buf.len() > MAX_RESIZE_BUF {
            debug!("dropping an oversized partial resize");
            self.resize_buf.clear();
        }
        for size in sizes {
            if tx.send(size).await.is_err() {
                self.resize = None;
                return;
            }
        }
    }
}

struct CommandWriter<'a> {
    proto: Proto,
    limits: Limits,
    activity: &'a Activity,
    gone: &'a CancellationToken,
}

impl CommandWriter<'_> {
    async fn run<IO>(
        &self,
        mut sink: Sink<IO>,
        hello: u8,
        stdout: Option<mpsc::Receiver<Bytes>>,
        stderr: Option<mpsc::Receiver<Bytes>>,
        done: oneshot::Receiver<ExitStatus>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match self.pump(&mut sink, hello, stdout, stderr, done).await {
            Ok(Some(status)) => {
                if let Err(e) = self.finish(&mut sink, &status).await {
                    debug!(error = %e, "writing the exit status failed");
                    return;
                }
                close(sink, self.limits, self.activity, self.gone).await;
            }
            Ok(None) => {}
            Err(e) => debug!(error = %e, "writing to the exec/attach client failed"),
        }
    }

    /// Copies stdout/stderr to the client until the command is done
    /// (`Some(status)`) or the client is gone (`None`).
    async fn pump<IO>(
        &self,
        sink: &mut Sink<IO>,
        hello: u8,
        mut stdout: Option<mpsc::Receiver<Bytes>>,
        mut stderr: Option<mpsc::Receiver<Bytes>>,
        mut done: oneshot::Receiver<ExitStatus>,
    ) -> Result<Option<ExitStatus>, WsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let codec = self.proto.codec;
        self.send(sink, frame(codec, hello, &[])).await?;
        let status = loop {
            tokio::select! {
                biased;
                _ = self.gone.cancelled() => return Ok(None),
                d = recv_opt(&mut stdout) => match d {
                    Some(d) => self.send(sink, frame(codec, STDOUT, &d)).await?,
                    None => stdout = None,
                },
                d = recv_opt(&mut stderr) => match d {
                    Some(d) => self.send(sink, frame(codec, STDERR, &d)).await?,
                    None => stderr = None,
                },
                s = &mut done => break s.unwrap_or_else(|_| {
                    ExitStatus::Error("the command ended without an exit status".to_string())
                }),
            }
        };
        // Output the backend queued before reporting `done` is still in
        // the queues: it goes out before the status.
        for (channel, rx) in [(STDOUT, &mut stdout), (STDERR, &mut stderr)] {
            if let Some(rx) = rx {
                while let Ok(d) = rx.try_recv() {
                    self.send(sink, frame(codec, channel, &d)).await?;
                }
            }
        }
        Ok(Some(status))
    }

    async fn finish<IO>(&self, sink: &mut Sink<IO>, status: &ExitStatus) -> Result<(), WsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let body = match (self.proto.status, status) {
            (StatusFormat::Json, s) => status_json(s),
            (StatusFormat::Text, ExitStatus::Success) => return Ok(()),
            (StatusFormat::Text, s) => status_message(s),
        };
        self.send(sink, frame(self.proto.codec, ERROR, body.as_bytes()))
            .await
    }

    async fn send<IO>(&self, sink: &mut Sink<IO>, msg: Message) -> Result<(), WsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        send(sink, msg, self.limits, self.activity).await
    }
}

/// The `message` of the status JSON: what the unversioned protocols send.
fn status_message(s: &ExitStatus) -> String {
    serde_json::from_str::<serde_json::Value>(&status_json(s))
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_default()
}
