//! The ttrpc server: one thread accepts connections and reads requests from all of
//! them (non-blocking sockets, poll(2)); each request runs on a short-lived thread that
//! calls the generated handler and writes the response itself.
//!
//! ttrpc's own sync server keeps a connection thread, a reader, a writer and at least
//! one idle method worker per connection, and containerd opens one connection per
//! task: with a pod's worth of containers that is dozens of threads doing nothing.
//! Here an idle shim has one server thread whatever the number of connections; a
//! request (a blocking Wait included) holds one thread while it runs.
//!
//! Wire format (ttrpc): a 10-byte header (payload length and stream id, big-endian
//! u32s, message type, flags), then a protobuf `Request` / `Response`. What the
//! server answers, and when, follows ttrpc's sync server: requests only (other message
//! types are ignored), `INVALID_ARGUMENT` for an oversized message (whose body is
//! skipped), an undecodable request or an unknown method, and the connection is closed
//! when a handler fails to answer.
//!
//! Connection lifetime: each request's `TtrpcContext::cancel_rx` is disconnected once
//! the server has seen its connection end (EOF or error, found by the reader's poll:
//! no extra thread, no timer). A handler may keep a clone to learn that its caller
//! went away, even after it answered (the task service uses it for execs).

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use ttrpc::proto::{
    Codec, MessageHeader, MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX, MESSAGE_TYPE_REQUEST,
    MESSAGE_TYPE_RESPONSE,
};
use ttrpc::{Code, ConnectionContext, MethodHandler, Request, Response, TtrpcContext};

use crate::util::Pending;

pub type Methods = HashMap<String, Box<dyn MethodHandler + Send + Sync>>;

const READ_CHUNK: usize = 64 * 1024;
const REQUEST_STACK: usize = 1024 * 1024;

/// One client connection, shared by the reader and the request threads.
struct Shared {
    stream: UnixStream,
    /// Serializes whole response frames.
    write: Mutex<()>,
    /// Disconnected when the connection is over (`Conn::_alive` dropped).
    gone: crossbeam_channel::Receiver<()>,
}

struct Conn {
    shared: Arc<Shared>,
    /// Never sent on: dropping it (with the `Conn`) disconnects `Shared::gone`.
    _alive: crossbeam_channel::Sender<()>,
    buf: Vec<u8>,
    /// Bytes of an oversized message still to skip.
    skip: usize,
}

/// Serves `methods` on the listening socket `fd` (taken over) from a new thread.
pub fn start(fd: RawFd, methods: Methods) -> io::Result<()> {
    // SAFETY: the caller hands over an open listening socket it no longer uses.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    listener.set_nonblocking(true)?;
    let methods = Arc::new(methods);
    std::thread::Builder::new()
        .name("ttrpc".into())
        .stack_size(256 * 1024)
        .spawn(move || run(listener, methods))?;
    Ok(())
}

fn run(listener: UnixListener, methods: Arc<Methods>) {
    let conn_ctx = Arc::new(ConnectionContext::default());
    let mut conns: Vec<Conn> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let revents: Vec<PollFlags> = {
            let mut fds = Vec::with_capacity(conns.len() + 1);
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            for c in &conns {
                fds.push(PollFd::new(c.shared.stream.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("ttrpc poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            fds.iter()
                .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                .collect()
        };
        let mut i = 0;
        conns.retain_mut(|c| {
            i += 1;
            revents[i].is_empty() || c.read(&mut chunk, &methods, &conn_ctx)
        });
        if !revents[0].is_empty() {
            accept(&listener, &mut conns);
        }
    }
}

fn accept(listener: &UnixListener, conns: &mut Vec<Conn>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = stream.set_nonblocking(true) {
                    log::warn!("ttrpc connection: {e}");
                    continue;
                }
                log::debug!("ttrpc: new connection (fd {})", stream.as_raw_fd());
                let (alive, gone) = crossbeam_channel::bounded(0);
                conns.push(Conn {
                    shared: Arc::new(Shared {
                        stream,
                        write: Mutex::new(()),
                        gone,
                    }),
                    _alive: alive,
                    buf: Vec::new(),
                    skip: 0,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and the like: retry later rather than spin.
                log::warn!("ttrpc accept: {e}");
                std::thread::sleep(Duration::from_millis(200));
                return;
            }
        }
    }
}

impl Conn {
    /// Reads what is there and dispatches complete requests. False: the connection is
    /// over (EOF or error).
    fn read(
        &mut self,
        chunk: &mut [u8],
        methods: &Arc<Methods>,
        conn_ctx: &Arc<ConnectionContext>,
    ) -> bool {
        for _ in 0..4 {
            match (&self.shared.stream).read(chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    let mut data = &chunk[..n];
                    if self.skip > 0 {
                        let k = self.skip.min(data.len());
                        self.skip -= k;
                        data = &data[k..];
                    }
                    self.buf.extend_from_slice(data);
                    self.parse(methods, conn_ctx);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    log::debug!("ttrpc read: {e}");
                    return false;
                }
            }
        }
        true
    }

    fn parse(&mut self, methods: &Arc<Methods>, conn_ctx: &Arc<ConnectionContext>) {
        let mut at = 0;
        while self.buf.len() - at >= MESSAGE_HEADER_LENGTH {
            let mh = MessageHeader::from(&self.buf[at..at + MESSAGE_HEADER_LENGTH]);
            let len = mh.length as usize;
            if len > MESSAGE_LENGTH_MAX {
                at += MESSAGE_HEADER_LENGTH;
                let k = len.min(self.buf.len() - at);
                at += k;
                self.skip = len - k;
                let msg = format!(
                    "message length {len} exceed maximum message size of {MESSAGE_LENGTH_MAX}"
                );
                if mh.type_ == MESSAGE_TYPE_REQUEST {
                    let shared = self.shared.clone();
                    spawn_request("ttrpc-err", move || {
                        let res = error_response(Code::INVALID_ARGUMENT, msg);
                        send(&shared, mh.stream_id, &res);
                    });
                }
                continue;
            }
            if self.buf.len() - at < MESSAGE_HEADER_LENGTH + len {
                break;
            }
            let body =
                self.buf[at + MESSAGE_HEADER_LENGTH..at + MESSAGE_HEADER_LENGTH + len].to_vec();
            at += MESSAGE_HEADER_LENGTH + len;
            if mh.type_ != MESSAGE_TYPE_REQUEST {
                continue;
            }
            let (shared, methods, conn_ctx) =
                (self.shared.clone(), methods.clone(), conn_ctx.clone());
            spawn_request("ttrpc-req", move || {
                handle(&shared, &methods, conn_ctx, mh, body)
            });
        }
        self.buf.drain(..at);
    }
}

/// Requests whose response is not written yet.
static IN_FLIGHT: Pending = Pending::new();

/// Waits up to `max` until every request received so far has been answered (the
/// shim's last act before exiting: the Shutdown reply must reach the client).
pub fn wait_answered(max: Duration) -> bool {
    IN_FLIGHT.wait_zero(max)
}

/// Counts a request as answered when dropped, also if its handler panicked.
struct Answered;

impl Drop for Answered {
    fn drop(&mut self) {
        IN_FLIGHT.done();
    }
}

fn spawn_request(name: &str, f: impl FnOnce() + Send + 'static) {
    IN_FLIGHT.add();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .stack_size(REQUEST_STACK)
        .spawn(move || {
            let _answered = Answered;
            f();
        });
    if let Err(e) = spawned {
        IN_FLIGHT.done();
        // The client's call times out, as when ttrpc's server cannot start a worker.
        log::error!("ttrpc: no thread for a request: {e}");
    }
}

fn error_response(code: Code, msg: String) -> Response {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg)).into()
}

fn handle(
    shared: &Arc<Shared>,
    methods: &Methods,
    conn_ctx: Arc<ConnectionContext>,
    mh: MessageHeader,
    body: Vec<u8>,
) {
    let req = match <Request as Codec>::decode(&body) {
        Ok(r) => r,
        Err(e) => {
            let res = error_response(Code::INVALID_ARGUMENT, e.to_string());
            send(shared, mh.stream_id, &res);
            return;
        }
    };
    let path = format!("/{}/{}", req.service, req.method);
    let Some(method) = methods.get(&path) else {
        let res = error_response(Code::INVALID_ARGUMENT, format!("{path} does not exist"));
        send(shared, mh.stream_id, &res);
        return;
    };
    let (tx, rx) = mpsc::channel();
    let ctx = TtrpcContext {
        fd: shared.stream.as_raw_fd(),
        cancel_rx: shared.gone.clone(),
        mh,
        res_tx: tx,
        metadata: ttrpc::context::from_pb(&req.metadata),
        timeout_nano: req.timeout_nano,
        conn_ctx,
    };
    if let Err(e) = method.handler(ctx, req) {
        // ttrpc's server drops the connection when a handler cannot answer.
        log::debug!("ttrpc {path}: {e:?}");
        let _ = shared.stream.shutdown(std::net::Shutdown::Both);
        return;
    }
    for (mh, buf) in rx.try_iter() {
        write_frame(shared, mh, &buf);
    }
}

fn send(shared: &Shared, stream_id: u32, res: &Response) {
    match res.encode() {
        Ok(buf) => {
            let mh = MessageHeader {
                length: buf.len() as u32,
                stream_id,
                type_: MESSAGE_TYPE_RESPONSE,
                flags: 0,
            };
            write_frame(shared, mh, &buf);
        }
        Err(e) => log::warn!("ttrpc: encode response: {e:?}"),
    }
}

fn write_frame(shared: &Shared, mh: MessageHeader, buf: &[u8]) {
    let mut frame: Vec<u8> = mh.into();
    frame.extend_from_slice(buf);
    let _g = shared.write.lock().unwrap_or_else(|e| e.into_inner());
    let fd = shared.stream.as_fd();
    let mut data = &frame[..];
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
                if let Err(e) = poll(&mut fds, PollTimeout::NONE) {
                    if e != Errno::EINTR {
                        return;
                    }
                }
            }
            Err(e) => {
                log::debug!("ttrpc write: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::api::{ConnectRequest, StateRequest, StateResponse};
    use containerd_shim_protos::{create_task, Client, Task, TaskClient};
    use protobuf::Message;
    use std::io::Write;
    use std::os::fd::IntoRawFd;

    static CANCELLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    static FAST_DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    struct Fake;
    impl Task for Fake {
        fn state(&self, ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
            if req.id == "slow" {
                // Answers only once the fast call came back: a server that ran the
                // calls of one connection in turn would time out here.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while !FAST_DONE.load(std::sync::atomic::Ordering::SeqCst) {
                    if std::time::Instant::now() > deadline {
                        return Ok(StateResponse {
                            id: "slow-timed-out".into(),
                            ..Default::default()
                        });
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if req.id == "until-closed" {
                // Never sent on: disconnected when the connection ends.
                assert!(ctx.cancel_rx.recv_timeout(Duration::from_secs(10)).is_err());
                CANCELLED.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(StateResponse {
                id: req.id,
                ..Default::default()
            })
        }
    }

    fn read_frame(s: &mut UnixStream) -> (MessageHeader, Response) {
        let mut h = [0u8; MESSAGE_HEADER_LENGTH];
        s.read_exact(&mut h).unwrap();
        let mh = MessageHeader::from(&h);
        let mut body = vec![0u8; mh.length as usize];
        s.read_exact(&mut body).unwrap();
        (mh, <Response as Codec>::decode(&body).unwrap())
    }

    #[test]
    fn requests_answers_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("s");
        let l = UnixListener::bind(&sock).unwrap();
        start(l.into_raw_fd(), create_task(Arc::new(Fake))).unwrap();
        let addr = format!("unix://{}", sock.display());

        // Concurrent calls on one connection: a slow one does not hold up the other.
        let tc = TaskClient::new(Client::connect(&addr).unwrap());
        let tc2 = tc.clone();
        let slow = std::thread::spawn(move || {
            let req = StateRequest {
                id: "slow".into(),
                ..Default::default()
            };
            tc2.state(ttrpc::context::with_timeout(0), &req).unwrap().id
        });
        std::thread::sleep(Duration::from_millis(100));
        let req = StateRequest {
            id: "fast".into(),
            ..Default::default()
        };
        let r = tc.state(ttrpc::context::with_timeout(0), &req).unwrap();
        assert_eq!(r.id, "fast");
        FAST_DONE.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(slow.join().unwrap(), "slow");
        // Not implemented by the service: its error status comes back.
        let e = tc
            .connect(ttrpc::context::with_timeout(0), &ConnectRequest::default())
            .unwrap_err();
        assert!(format!("{e:?}").contains("is not supported"), "{e:?}");

        // Raw frames: an unknown method, then an oversized message (its body is
        // skipped), then a request that still works on the same connection.
        let mut s = UnixStream::connect(&sock).unwrap();
        let frame = |id: u32, method: &str, payload: Vec<u8>| {
            let req = Request {
                service: "containerd.task.v3.Task".into(),
                method: method.into(),
                payload,
                ..Default::default()
            };
            let body = req.encode().unwrap();
            let mut f: Vec<u8> = MessageHeader::new_request(id, body.len() as u32).into();
            f.extend_from_slice(&body);
            f
        };
        s.write_all(&frame(1, "Nope", Vec::new())).unwrap();
        let (mh, res) = read_frame(&mut s);
        assert_eq!(mh.stream_id, 1);
        assert_eq!(mh.type_, MESSAGE_TYPE_RESPONSE);
        assert_eq!(res.status.code(), Code::INVALID_ARGUMENT);
        assert!(res.status.message.contains("does not exist"));

        let big = MESSAGE_LENGTH_MAX + 10;
        let h: Vec<u8> = MessageHeader::new_request(3, big as u32).into();
        s.write_all(&h).unwrap();
        s.write_all(&vec![0u8; big]).unwrap();
        let (mh, res) = read_frame(&mut s);
        assert_eq!(mh.stream_id, 3);
        assert_eq!(res.status.code(), Code::INVALID_ARGUMENT);

        let state = StateRequest {
            id: "raw".into(),
            ..Default::default()
        };
        s.write_all(&frame(5, "State", state.write_to_bytes().unwrap()))
            .unwrap();
        let (mh, res) = read_frame(&mut s);
        assert_eq!(mh.stream_id, 5);
        assert_eq!(res.status.code(), Code::OK);
        let r = StateResponse::parse_from_bytes(&res.payload).unwrap();
        assert_eq!(r.id, "raw");

        // The request's cancel_rx is disconnected once its connection is gone.
        let closed = StateRequest {
            id: "until-closed".into(),
            ..Default::default()
        };
        s.write_all(&frame(7, "State", closed.write_to_bytes().unwrap()))
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!CANCELLED.load(std::sync::atomic::Ordering::SeqCst));
        let t0 = std::time::Instant::now();
        drop(s);
        while !CANCELLED.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "cancel_rx not disconnected"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
