//! Task events (TaskCreate, TaskStart, TaskExit, ...), published best-effort from one
//! background thread, in order:
//! - to `$TTRPC_ADDRESS` (containerd's ttrpc socket) with
//!   `containerd.services.events.ttrpc.v1.Events/Forward`, as containerd-shim-runc-v2
//!   does; or, when that is not set or fails,
//! - by running `<publish-binary> --address <address> publish --topic T --namespace NS`
//!   with the event (a protobuf `Any`) on stdin, the older shim convention.
//!
//! A full queue drops events (and logs it): the shim never blocks on its client.

use std::process::Command;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::{Client, EventsClient};
use protobuf::well_known_types::any::Any;
use protobuf::{Message, MessageDyn, MessageField};

use crate::reaper::Reaper;
use crate::util::timestamp;

const QUEUE: usize = 1024;

pub struct Event {
    pub topic: &'static str,
    pub event: Box<dyn MessageDyn>,
}

#[derive(Clone)]
pub struct Publisher {
    tx: Option<SyncSender<Event>>,
}

struct Target {
    namespace: String,
    ttrpc_address: Option<String>,
    publish_binary: Option<String>,
    address: String,
    reaper: Arc<Reaper>,
    client: Mutex<Option<EventsClient>>,
}

pub fn to_any(event: &dyn MessageDyn) -> Option<Any> {
    let value = event.write_to_bytes_dyn().ok()?;
    Some(Any {
        type_url: event.descriptor_dyn().full_name().to_string(),
        value,
        ..Default::default()
    })
}

impl Publisher {
    /// A publisher that drops everything (tests, or no way to reach the client).
    pub fn disabled() -> Self {
        Publisher { tx: None }
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
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let target = Target {
            namespace: namespace.to_string(),
            ttrpc_address,
            publish_binary,
            address: address.to_string(),
            reaper,
            client: Mutex::new(None),
        };
        let spawned = std::thread::Builder::new()
            .name("events".into())
            .stack_size(256 * 1024)
            .spawn(move || run(target, rx));
        match spawned {
            Ok(_) => Publisher { tx: Some(tx) },
            Err(e) => {
                log::warn!("no event publisher thread: {e}");
                Publisher::disabled()
            }
        }
    }

    pub fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Event { topic, event }) {
            Ok(()) => {}
            Err(TrySendError::Full(e)) => log::warn!("event queue full: dropped {}", e.topic),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn run(t: Target, rx: Receiver<Event>) {
    for ev in rx {
        let Some(any) = to_any(ev.event.as_ref()) else {
            continue;
        };
        if let Err(e) = t.send(ev.topic, any) {
            log::warn!("publish {}: {e}", ev.topic);
        }
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
}
