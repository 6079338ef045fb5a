//! Sends issued by JavaScript (`sendToClient`, `sendToRoom`, `broadcast`, ...), in order.
//!
//! With more than one core, the JS thread only queues a send and an I/O task performs it
//! (the socket writes, the fan-out over a room): the JS thread is the one thread that cannot
//! be multiplied, so it should do as little as possible. One executor at a time drains the
//! queue in FIFO order, so sends reach each client in the order JS issued them. A JS loop
//! that outruns the I/O task drains the queue itself past a high-water mark, which bounds
//! the queue. On a single core there is nothing to gain from the hand-off, so sends run
//! inline on the calling thread.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::frame::OutboundText;
use crate::hub::{ClientHandle, Hub};
use crate::outbox::Cork;

/// One send, with its already-framed message.
pub enum Delivery {
    Client {
        client_id: String,
        message: OutboundText,
    },
    /// A client found when the send was issued (a reply to a message's sender).
    Handle {
        handle: Arc<ClientHandle>,
        message: OutboundText,
    },
    User {
        user_id: String,
        message: OutboundText,
    },
    Room {
        room: String,
        message: OutboundText,
        exclude: Vec<String>,
    },
    Broadcast {
        message: OutboundText,
        exclude: Vec<String>,
    },
}

impl Delivery {
    fn perform(self, hub: &Hub) {
        match self {
            Delivery::Client { client_id, message } => {
                hub.send_to_client(&client_id, &message);
            }
            Delivery::Handle { handle, message } => {
                hub.send_to_handle(&handle, &message);
            }
            Delivery::User { user_id, message } => {
                hub.send_to_user(&user_id, &message);
            }
            Delivery::Room {
                room,
                message,
                exclude,
            } => {
                hub.send_to_room(&room, &message, &exclude);
            }
            Delivery::Broadcast { message, exclude } => {
                hub.broadcast(&message, &exclude);
            }
        }
    }
}

/// Past this many queued sends the caller drains the queue itself.
const HIGH_WATER: usize = 16 * 1024;

pub struct Sender {
    hub: Arc<Hub>,
    queue: Mutex<VecDeque<Delivery>>,
    /// Held by whoever is performing sends, so batches never interleave.
    executing: Mutex<()>,
    wake: Notify,
    inline: bool,
}

impl Sender {
    /// `inline`: perform every send on the calling thread (single core).
    pub fn new(hub: Arc<Hub>, inline: bool) -> Arc<Self> {
        Arc::new(Sender {
            hub,
            queue: Mutex::new(VecDeque::new()),
            executing: Mutex::new(()),
            wake: Notify::new(),
            inline,
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Delivery>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn send(&self, delivery: Delivery) {
        if self.inline {
            // Still behind anything queued before (none is, when inline from the start).
            let _executing = self.executing.lock().unwrap_or_else(|p| p.into_inner());
            delivery.perform(&self.hub);
            return;
        }
        let mut queue = self.queue();
        let was_empty = queue.is_empty();
        queue.push_back(delivery);
        let overflowing = queue.len() >= HIGH_WATER;
        drop(queue);
        if overflowing {
            self.drain();
        } else if was_empty {
            self.wake.notify_one();
        }
    }

    /// `sendToClient`: as `send(Delivery::Client { .. })`, but the id is copied only when the
    /// send is queued (one allocation less per reply on a single core).
    pub fn send_to_client(&self, client_id: &str, message: OutboundText) {
        if self.inline {
            let _executing = self.executing.lock().unwrap_or_else(|p| p.into_inner());
            self.hub.send_to_client(client_id, &message);
            return;
        }
        self.send(Delivery::Client {
            client_id: client_id.to_owned(),
            message,
        });
    }

    /// `sendToClient` to the sender of the message JS is handling, named by its message slot
    /// ([`Hub::sender`]). The connection is found now: once JS is done with the message, the
    /// slot may pass to another connection before a queued send is performed.
    pub fn send_to_sender(&self, slot: u32, message: OutboundText) {
        let Some(handle) = self.hub.sender(slot) else {
            return;
        };
        if self.inline {
            let _executing = self.executing.lock().unwrap_or_else(|p| p.into_inner());
            self.hub.send_to_handle(&handle, &message);
            return;
        }
        self.send(Delivery::Handle { handle, message });
    }

    /// Performs everything queued, then `f`, on the calling thread: for a send whose result
    /// the caller needs now (`socket.send()`), without overtaking earlier sends.
    pub fn now<R>(&self, f: impl FnOnce(&Hub) -> R) -> R {
        let _executing = self.executing.lock().unwrap_or_else(|p| p.into_inner());
        self.drain_locked();
        f(&self.hub)
    }

    /// Performs queued sends until the queue is empty.
    fn drain(&self) {
        let _executing = self.executing.lock().unwrap_or_else(|p| p.into_inner());
        self.drain_locked();
    }

    fn drain_locked(&self) {
        // Everything queued is one batch: frames it produces for the same socket leave in
        // one write.
        let _cork = Cork::new();
        loop {
            let batch = std::mem::take(&mut *self.queue());
            if batch.is_empty() {
                return;
            }
            for delivery in batch {
                delivery.perform(&self.hub);
            }
        }
    }

    /// The I/O task: drains the queue whenever sends arrive. Ends when `stop` resolves.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = self.wake.notified() => self.drain(),
                _ = &mut stop => {
                    self.drain();
                    return;
                }
            }
        }
    }
}

/// Whether this process may run on more than one CPU (honours `taskset` and cgroup limits).
pub fn has_more_than_one_core() -> bool {
    std::thread::available_parallelism().is_ok_and(|cores| cores.get() > 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::text_payload;
    use crate::hub::AuthStart;
    use bytes::Bytes;

    fn client(hub: &Hub, id: &str) -> Arc<ClientHandle> {
        let handle = Arc::new(ClientHandle::new(
            Arc::from(id),
            std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            0,
            1 << 30,
            false,
            false,
        ));
        hub.register(handle.clone());
        assert_eq!(hub.begin_authentication(id), AuthStart::Started);
        hub.complete_authentication(id, None, &["room".to_string()]);
        handle
    }

    fn received(handle: &ClientHandle) -> Vec<Bytes> {
        handle
            .outbox()
            .next_batch()
            .map(|batch| batch.frames)
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn queued_sends_keep_their_order_per_client() {
        let hub = Arc::new(Hub::default());
        let a = client(&hub, "a");
        let sender = Sender::new(hub.clone(), false);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(sender.clone().run(async {
            let _ = stop_rx.await;
        }));
        for i in 0..100u8 {
            let message = OutboundText::new(&i.to_string());
            match i % 3 {
                0 => sender.send(Delivery::Client {
                    client_id: "a".into(),
                    message,
                }),
                1 => sender.send_to_client("a", message),
                _ => sender.send(Delivery::Room {
                    room: "room".into(),
                    message,
                    exclude: vec![],
                }),
            }
        }
        let _ = stop_tx.send(());
        task.await.unwrap();
        let frames = received(&a);
        let order: Vec<u8> = frames
            .iter()
            .map(|frame| text_payload(frame).unwrap().parse().unwrap())
            .collect();
        assert_eq!(order, (0..100).collect::<Vec<u8>>());
    }

    #[tokio::test]
    async fn a_flood_past_the_high_water_mark_is_drained_by_the_caller() {
        let hub = Arc::new(Hub::default());
        let a = client(&hub, "a");
        // No I/O task runs: only the high-water drain can deliver.
        let sender = Sender::new(hub.clone(), false);
        for _ in 0..HIGH_WATER {
            sender.send(Delivery::Broadcast {
                message: OutboundText::new("x"),
                exclude: vec![],
            });
        }
        assert!(sender.queue().is_empty());
        assert_eq!(received(&a).len(), HIGH_WATER);
    }

    #[tokio::test]
    async fn a_queued_reply_to_a_sender_goes_to_the_slot_holder_of_when_it_was_issued() {
        let hub = Arc::new(Hub::default());
        let (a, b) = (client(&hub, "a"), client(&hub, "b"));
        // No I/O task runs: the sends wait in the queue until drained below.
        let sender = Sender::new(hub.clone(), false);
        hub.name_sender(3, &a);
        sender.send_to_sender(3, OutboundText::new("x"));
        hub.forget_sender(3, &a);
        hub.name_sender(3, &b);
        sender.send_to_sender(3, OutboundText::new("y"));
        sender.send_to_sender(4, OutboundText::new("nobody's"));
        sender.drain();
        assert_eq!(received(&a), vec![Bytes::from_static(b"\x81\x01x")]);
        assert_eq!(received(&b), vec![Bytes::from_static(b"\x81\x01y")]);
    }

    #[tokio::test]
    async fn inline_mode_sends_at_once() {
        let hub = Arc::new(Hub::default());
        let a = client(&hub, "a");
        let sender = Sender::new(hub.clone(), true);
        sender.send(Delivery::User {
            user_id: "nobody".into(),
            message: OutboundText::new("x"),
        });
        sender.send(Delivery::Client {
            client_id: "a".into(),
            message: OutboundText::new("y"),
        });
        sender.send_to_client("a", OutboundText::new("z"));
        hub.name_sender(0, &a);
        sender.send_to_sender(0, OutboundText::new("w"));
        assert_eq!(
            received(&a),
            vec![
                Bytes::from_static(b"\x81\x01y"),
                Bytes::from_static(b"\x81\x01z"),
                Bytes::from_static(b"\x81\x01w")
            ]
        );
    }
}
