//! Task events (TaskCreate, TaskStart, TaskExit, ...), published best-effort from one
//! background thread (started on demand, gone when idle), in order:
//! - to `$TTRPC_ADDRESS` (containerd's ttrpc socket) with
//!   `containerd.services.events.ttrpc.v1.Events/Forward`, as containerd-shim-runc-v2
//!   does; or, when that is not set or fails,
//! - by running `<publish-binary> --address <address> publish --topic T --namespace NS`
//!   with the event (a protobuf `Any`) on stdin, the older shim convention.
//!
//! A full queue drops events (and logs it): the shim never blocks on its client.

use std::process::Command;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SendError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::{Client, EventsClient};
use protobuf::well_known_types::any::Any;
use protobuf::{Message, MessageField};

use crate::reaper::Reaper;
use crate::util::timestamp;
use crate::util::Pending;

const QUEUE: usize = 1024;
/// The publisher thread (and its connection to containerd) ends after this long
/// without events.
const IDLE: Duration = Duration::from_secs(2);

pub struct Event {
    pub topic: &'static str,
    pub any: Any,
}

/// The protobuf full name of a message put in an `Any`. Written out, and messages are
/// encoded through their concrete type, because any descriptor lookup (`descriptor_dyn`,
/// which `write_to_bytes_dyn` also does) builds the descriptors of the whole events
/// file and its imports, descriptor.proto among them: ~370 KiB of heap (measured with
/// massif) that a shim would keep for its lifetime. A test checks the names against
/// the descriptors.
pub trait TypeName: Message {
    const TYPE_URL: &'static str;
}

macro_rules! type_names {
    ($($t:ty => $n:literal,)*) => {
        $(impl TypeName for $t { const TYPE_URL: &'static str = $n; })*
        /// Every (name, descriptor name) pair, for the test.
        #[cfg(test)]
        fn all_type_names() -> Vec<(&'static str, String)> {
            use protobuf::MessageFull;
            vec![$(($n, <$t>::descriptor().full_name().to_string()),)*]
        }
    };
}

type_names! {
    containerd_shim_protos::events::task::TaskCreate => "containerd.events.TaskCreate",
    containerd_shim_protos::events::task::TaskStart => "containerd.events.TaskStart",
    containerd_shim_protos::events::task::TaskDelete => "containerd.events.TaskDelete",
    containerd_shim_protos::events::task::TaskExit => "containerd.events.TaskExit",
    containerd_shim_protos::events::task::TaskExecAdded => "containerd.events.TaskExecAdded",
    containerd_shim_protos::events::task::TaskExecStarted => "containerd.events.TaskExecStarted",
    containerd_shim_protos::events::task::TaskPaused => "containerd.events.TaskPaused",
    containerd_shim_protos::events::task::TaskResumed => "containerd.events.TaskResumed",
    containerd_shim_protos::shim::oci::ProcessDetails => "containerd.runc.v1.ProcessDetails",
}

#[derive(Clone)]
pub struct Publisher {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    target: Arc<Target>,
    /// The queue of the running publisher thread, if any. The thread exits after
    /// [`IDLE`] without events (taking this lock to see that the queue is empty and
    /// clear it); the next event starts a new one.
    tx: Mutex<Option<Sender<Event>>>,
    /// Events published and not yet sent (at most [`QUEUE`] queued).
    queued: Pending,
}

struct Target {
    namespace: String,
    ttrpc_address: Option<String>,
    publish_binary: Option<String>,
    address: String,
    reaper: Arc<Reaper>,
    client: Mutex<Option<EventsClient>>,
}

pub fn to_any<M: TypeName>(event: &M) -> Option<Any> {
    let value = event.write_to_bytes().ok()?;
    Some(Any {
        type_url: M::TYPE_URL.to_string(),
        value,
        ..Default::default()
    })
}

impl Publisher {
    /// A publisher that drops everything (tests, or no way to reach the client).
    pub fn disabled() -> Self {
        Publisher { inner: None }
    }

    pub fn start(
        namespace: &str,
        ttrpc_address: Option<String>,
        publish_binary: Option<String>,
        address: &str,
        reaper: Arc<Reaper>,
    ) -> Self {
        if ttrpc_address.is_none() && publish_binary.is_none() {
            return Publisher::disabled();
        }
        let target = Target {
            namespace: namespace.to_string(),
            ttrpc_address,
            publish_binary,
            address: address.to_string(),
            reaper,
            client: Mutex::new(None),
        };
        Publisher {
            inner: Some(Arc::new(Inner {
                target: Arc::new(target),
                tx: Mutex::new(None),
                queued: Pending::new(),
            })),
        }
    }

    pub fn publish<M: TypeName>(&self, topic: &'static str, event: M) {
        let Some(inner) = &self.inner else { return };
        let mut g = inner.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(any) = to_any(&event) else {
            log::warn!("event {topic} does not encode: dropped");
            return;
        };
        if inner.queued.get() >= QUEUE {
            log::warn!("event queue full: dropped {topic}");
            return;
        }
        let mut ev = Event { topic, any };
        if let Some(tx) = g.as_ref() {
            // Counted before the send: the thread may take it at once.
            inner.queued.add();
            match tx.send(ev) {
                Ok(()) => return,
                // The thread is gone (it cannot be while `tx` is set, unless it
                // panicked): start another.
                Err(SendError(e)) => ev = e,
            }
        }
        inner.queued.reset();
        // Unbounded (bounded by `queued`): a bounded std channel allocates all its
        // slots up front, 56 KiB for 1024 events, in every shim.
        let (tx, rx) = mpsc::channel();
        let inner2 = inner.clone();
        let spawned = std::thread::Builder::new()
            .name("events".into())
            .stack_size(256 * 1024)
            .spawn(move || run(&inner2, rx));
        match spawned {
            Ok(_) => {
                inner.queued.add();
                let _ = tx.send(ev);
                *g = Some(tx);
            }
            Err(e) => {
                *g = None;
                log::warn!("no event publisher thread: dropped {}: {e}", ev.topic);
            }
        }
    }
}

fn run(inner: &Inner, rx: Receiver<Event>) {
    let t = &inner.target;
    loop {
        let ev = match rx.recv_timeout(IDLE) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => {
                let mut g = inner.tx.lock().unwrap_or_else(|e| e.into_inner());
                match rx.try_recv() {
                    Ok(ev) => ev,
                    Err(_) => {
                        // Events are rare: keep neither this thread nor the client's
                        // connection (and its reader and writer threads) between
                        // bursts.
                        *g = None;
                        drop(g);
                        if let Ok(mut c) = t.client.lock() {
                            *c = None;
                        }
                        return;
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if let Err(e) = t.send(ev.topic, ev.any) {
            log::warn!("publish {}: {e}", ev.topic);
        }
        inner.queued.done();
    }
}

impl Target {
    fn send(&self, topic: &str, any: Any) -> Result<(), String> {
        let mut err = String::new();
        if let Some(addr) = &self.ttrpc_address {
            // One reconnect on failure (containerd restarted).
            for _ in 0..2 {
                match self.forward(addr, topic, &any) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        err = e;
                        if let Ok(mut c) = self.client.lock() {
                            *c = None;
                        }
                    }
                }
            }
        }
        if let Some(bin) = &self.publish_binary {
            return self.exec_publish(bin, topic, &any);
        }
        Err(err)
    }

    fn forward(&self, addr: &str, topic: &str, any: &Any) -> Result<(), String> {
        let mut guard = self.client.lock().map_err(|_| "poisoned".to_string())?;
        if guard.is_none() {
            let a = if addr.contains("://") {
                addr.to_string()
            } else {
                format!("unix://{addr}")
            };
            let c = Client::connect(&a).map_err(|e| format!("connect {a}: {e}"))?;
            *guard = Some(EventsClient::new(c));
        }
        let client = guard.as_ref().ok_or("no client")?;
        let req = ForwardRequest {
            envelope: MessageField::some(Envelope {
                timestamp: MessageField::some(timestamp(SystemTime::now())),
                namespace: self.namespace.clone(),
                topic: topic.to_string(),
                event: MessageField::some(any.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        client
            .forward(ttrpc::context::with_duration(Duration::from_secs(5)), &req)
            .map(|_| ())
            .map_err(|e| format!("forward: {e}"))
    }

    fn exec_publish(&self, bin: &str, topic: &str, any: &Any) -> Result<(), String> {
        let data = any.write_to_bytes().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        cmd.arg("--address")
            .arg(&self.address)
            .arg("publish")
            .arg("--topic")
            .arg(topic)
            .arg("--namespace")
            .arg(&self.namespace);
        let out = self
            .reaper
            .run(&mut cmd, Some(&data), true)
            .map_err(|e| format!("run {bin}: {e}"))?;
        if out.success() {
            Ok(())
        } else {
            Err(format!(
                "{bin} publish: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::events::task::TaskExit;

    #[test]
    fn any_type_url_is_the_proto_name() {
        let ev = TaskExit {
            container_id: "c".into(),
            exit_status: 7,
            ..Default::default()
        };
        let any = to_any(&ev).unwrap();
        assert_eq!(any.type_url, "containerd.events.TaskExit");
        let back = TaskExit::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.exit_status, 7);
    }

    #[test]
    fn type_names_match_the_descriptors() {
        for (name, full) in all_type_names() {
            assert_eq!(name, full);
        }
    }
}
