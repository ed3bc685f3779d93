//! Port-forward over WebSocket: a data and an error channel per port.

use super::*;

/// Port-forward over an already-upgraded connection: connects to every
/// port in `ports` (in the order of the query, which fixes the channel
/// numbers) and pipes data both ways until every pod-side connection has
/// ended, then closes. A port that cannot be reached gets an error message
/// on its error channel; the others carry on. The client cannot half-close
/// a channel in this protocol: when it goes, the pod connections are
/// dropped.
pub async fn port_forward<IO>(
    io: IO,
    protocol: &str,
    ports: Vec<u16>,
    connector: PortConnector,
    limits: Limits,
) -> Result<(), WsError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let codec = port_forward_codec(protocol)?;
    if ports.is_empty() {
        return Err(WsError::NoPorts);
    }
    if ports.len() > MAX_PORTS {
        return Err(WsError::TooManyPorts(ports.len()));
    }
    let (sink, source) = open(io).await;
    debug!(protocol, ?ports, "websocket port-forward");

    let activity = Activity::new();
    let gone = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(QUEUE);

    // Every channel starts with its port number, before any data.
    let mut sink = sink;
    for (i, port) in ports.iter().enumerate() {
        let data_ch = channel_of(i);
        for ch in [data_ch, data_ch + 1] {
            sink.feed(frame(codec, ch, &port.to_le_bytes()))
                .await
                .map_err(|e| WsError::WebSocket(Box::new(e)))?;
        }
    }
    sink.flush()
        .await
        .map_err(|e| WsError::WebSocket(Box::new(e)))?;

    let writer = tokio::spawn(
        {
            let (activity, gone, shutdown) = (activity.clone(), gone.clone(), shutdown.clone());
            async move {
                let mut result = Ok(());
                loop {
                    tokio::select! {
                        biased;
                        _ = gone.cancelled() => break,
                        m = out_rx.recv() => match m {
                            Some(m) => {
                                if let Err(e) = send(&mut sink, m, limits, &activity).await {
                                    result = Err(e);
                                    break;
                                }
                            }
                            // Every port is done.
                            None => {
                                close(sink, limits, &activity, &gone).await;
                                break;
                            }
                        },
                    }
                }
                shutdown.cancel();
                result
            }
        }
        .in_current_span(),
    );

    let mut to_pod = Vec::with_capacity(ports.len());
    let mut tasks = tokio::task::JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
        to_pod.push(tx);
        let fwd = PortPipe {
            port,
            data_ch: channel_of(i),
            codec,
            out: out_tx.clone(),
        };
        tasks.spawn(fwd.run(connector.clone(), rx).in_current_span());
    }
    // Only the port tasks hold senders now: the writer closes the
    // connection once they are all done.
    drop(out_tx);

    let reader = tokio::spawn(
        {
            let (activity, gone, shutdown) = (activity.clone(), gone.clone(), shutdown.clone());
            async move {
                let mut to_pod = to_pod;
                let mut rd = Reader {
                    source,
                    limits,
                    activity,
                    shutdown,
                };
                let end = loop {
                    let handled = match rd.next().await {
                        Ok(msg) => rd.guard(route_to_pod(codec, &mut to_pod, msg)).await,
                        Err(end) => Err(end),
                    };
                    if let Err(end) = handled {
                        break end;
                    }
                };
                gone.cancel();
                end
            }
        }
        .in_current_span(),
    );

    // The port tasks end with their pod connections, or all at once when
    // the client goes.
    loop {
        tokio::select! {
            biased;
            _ = gone.cancelled() => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
            t = tasks.join_next() => if t.is_none() { break },
        }
    }

    let write_result = writer.await.unwrap_or(Ok(()));
    let end = reader.await.unwrap_or(ReadEnd::ClientGone);
    match end {
        ReadEnd::Idle => Err(WsError::IdleTimeout(limits.idle_timeout)),
        _ => write_result,
    }
}

fn channel_of(port_index: usize) -> u8 {
    // parse_ports/port_forward cap the ports at MAX_PORTS, so 2*i+1 <= 253.
    u8::try_from(port_index * 2).unwrap_or(u8::MAX - 1)
}

/// Hands client data on a data channel to that port's pod connection.
async fn route_to_pod(codec: Codec, to_pod: &mut [mpsc::Sender<Bytes>], msg: Bytes) {
    match decode(codec, false, msg) {
        Incoming::Data(ch, data) if ch % 2 == 0 && usize::from(ch / 2) < to_pod.len() => {
            if data.is_empty() {
                return;
            }
            // An error means the pod side is already closed: drop the data.
            let _ = to_pod[usize::from(ch / 2)].send(data).await;
        }
        Incoming::Data(ch, data) => {
            debug!(
                channel = ch,
                len = data.len(),
                "ignoring data on a channel the client may not write"
            );
        }
        Incoming::Close(_) => {}
        Incoming::Junk(why) => debug!(why, "ignoring a malformed message"),
    }
}

/// One forwarded port: a pod connection piped to a channel pair.
struct PortPipe {
    port: u16,
    data_ch: u8,
    codec: Codec,
    out: mpsc::Sender<Message>,
}

impl PortPipe {
    async fn run(self, connector: PortConnector, mut from_client: mpsc::Receiver<Bytes>) {
        let stream = match connector(self.port).await {
            Ok(s) => s,
            Err(e) => {
                warn!(port = self.port, error = %e, "port-forward: connecting in the pod failed");
                self.error(&format!("error forwarding port {}: {e}", self.port))
                    .await;
                return;
            }
        };
        let (mut rd, mut wr) = stream.into_split();

        // client -> pod, half-closing the pod connection when the client
        // side ends.
        let upstream = async {
            while let Some(data) = from_client.recv().await {
                wr.write_all(&data).await?;
            }
            wr.shutdown().await
        };
        // pod -> client, until the pod closes its side.
        let downstream = async {
            let mut buf = vec![0u8; PORT_CHUNK];
            loop {
                let n = rd.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                if self
                    .out
                    .send(frame(self.codec, self.data_ch, &buf[..n]))
                    .await
                    .is_err()
                {
                    // The connection is closing; nobody reads any more.
                    return Ok(());
                }
            }
        };
        tokio::pin!(upstream, downstream);
        let mut upstream_done = false;
        let result = loop {
            tokio::select! {
                r = &mut downstream => break r,
                r = &mut upstream, if !upstream_done => {
                    upstream_done = true;
                    if let Err(e) = r {
                        break Err(e);
                    }
                }
            }
        };
        match result {
            Ok(()) => debug!(port = self.port, "port-forward connection ended"),
            Err(e) => {
                debug!(port = self.port, error = %e, "port-forward connection failed");
                self.error(&format!("error forwarding port {}: {e}", self.port))
                    .await;
            }
        }
    }

    async fn error(&self, msg: &str) {
        let _ = self
            .out
            .send(frame(self.codec, self.data_ch + 1, msg.as_bytes()))
            .await;
    }
}
