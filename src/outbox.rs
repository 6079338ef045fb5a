//! A connection's outbound queue, bounded in bytes.
//!
//! Senders (fan-out on any thread, the JS thread, the connection itself) push shared frames.
//! When nothing is queued or being written, the sender writes to the socket itself (a
//! non-blocking write): no task wake-up, which on a busy or single core would cost a context
//! switch per message. What the kernel does not take is queued, and the connection's writer
//! task drains the queue with vectored writes as the socket becomes writable.
//! Bytes count until the kernel accepted them, so a peer that stops reading fills the queue
//! and further frames are dropped (or the connection closed) instead of growing memory.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

/// What happened to a frame handed to [`Outbox::push`]; the numbers JS sees follow Bun's
/// `ServerWebSocket.send()` (bytes queued, -1 queued under backpressure, 0 dropped).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Push {
    Queued(usize),
    /// Queued, and the queue is now over its limit.
    Backpressured,
    /// Not queued: the queue was already over its limit.
    Dropped,
    /// Not queued: the connection is closing.
    Closed,
}

impl Push {
    pub fn as_bun_send_result(self) -> i64 {
        match self {
            Push::Queued(bytes) => bytes as i64,
            Push::Backpressured => -1,
            Push::Dropped | Push::Closed => 0,
        }
    }
}

#[derive(Default)]
struct State {
    frames: VecDeque<Bytes>,
    /// Queued plus taken-but-not-yet-written bytes.
    pending_bytes: usize,
    /// A close frame is queued: nothing may follow it.
    closing: bool,
    /// The writer must stop now (the peer is gone or the close handshake is over).
    finished: bool,
    backpressured: bool,
    dropped: u64,
    /// The writer task has taken frames and not finished writing them: a direct write now
    /// would overtake them.
    writing: bool,
    /// The socket, for direct writes; absent in unit tests and after the connection ended.
    socket: Option<Arc<OwnedWriteHalf>>,
}

pub struct Outbox {
    state: Mutex<State>,
    wake: Notify,
    limit: usize,
}

/// What the writer took: frames to write, and whether the last one is the close frame.
pub struct Batch {
    pub frames: Vec<Bytes>,
    pub ends_with_close: bool,
}

impl Outbox {
    pub fn new(limit: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent: every
        // critical section is a few field updates.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives the outbox the socket, for direct writes.
    pub fn attach(&self, socket: Arc<OwnedWriteHalf>) {
        self.lock().socket = Some(socket);
    }

    /// Drops the outbox's reference to the socket (the writer drops the other one, which
    /// sends FIN).
    pub fn detach(&self) {
        self.lock().socket = None;
    }

    pub fn push(&self, frame: Bytes) -> Push {
        let mut state = self.lock();
        if state.closing || state.finished {
            return Push::Closed;
        }
        if state.pending_bytes > self.limit {
            state.dropped += 1;
            return Push::Dropped;
        }
        let len = frame.len();
        let mut frame = frame;
        if state.frames.is_empty() && !state.writing {
            if let Some(socket) = &state.socket {
                match socket.try_write(&frame) {
                    Ok(written) if written == len => return Push::Queued(len),
                    Ok(written) => frame = frame.slice(written..),
                    Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => {
                        // The peer is gone; the reader sees it too and ends the connection.
                        state.finished = true;
                        drop(state);
                        self.wake.notify_one();
                        return Push::Closed;
                    }
                }
            }
        }
        let len = frame.len();
        let was_empty = state.frames.is_empty();
        state.frames.push_back(frame);
        state.pending_bytes += len;
        let result = if state.pending_bytes > self.limit {
            state.backpressured = true;
            Push::Backpressured
        } else {
            Push::Queued(len)
        };
        drop(state);
        if was_empty {
            self.wake.notify_one();
        }
        result
    }

    /// Queues the close frame as the last frame. Returns false when already closing.
    pub fn close(&self, frame: Bytes) -> bool {
        let mut state = self.lock();
        if state.closing || state.finished {
            return false;
        }
        state.closing = true;
        state.pending_bytes += frame.len();
        state.frames.push_back(frame);
        drop(state);
        self.wake.notify_one();
        true
    }

    /// Stops the writer without a close frame.
    pub fn finish(&self) {
        self.lock().finished = true;
        self.wake.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        let state = self.lock();
        state.closing || state.finished
    }

    pub fn is_backpressured(&self) -> bool {
        self.lock().backpressured
    }

    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Bytes queued or being written: Bun's `getBufferedAmount()`.
    pub fn buffered(&self) -> usize {
        self.lock().pending_bytes
    }

    /// Waits for frames. `None` when the writer should stop.
    pub async fn take(&self) -> Option<Batch> {
        loop {
            {
                let mut state = self.lock();
                if state.finished {
                    return None;
                }
                if !state.frames.is_empty() {
                    state.writing = true;
                    return Some(Batch {
                        frames: state.frames.drain(..).collect(),
                        ends_with_close: state.closing,
                    });
                }
            }
            self.wake.notified().await;
        }
    }

    /// The writer reports bytes the kernel accepted; an emptied queue clears backpressure.
    pub fn written(&self, bytes: usize) {
        let mut state = self.lock();
        state.writing = false;
        state.pending_bytes = state.pending_bytes.saturating_sub(bytes);
        if state.pending_bytes == 0 && state.frames.is_empty() {
            state.backpressured = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Bytes {
        Bytes::from(vec![0u8; len])
    }

    #[tokio::test]
    async fn bounds_bytes_and_clears_backpressure_when_drained() {
        let outbox = Outbox::new(100);
        assert_eq!(outbox.push(frame(60)), Push::Queued(60));
        assert_eq!(outbox.push(frame(60)), Push::Backpressured);
        assert!(outbox.is_backpressured());
        assert_eq!(outbox.push(frame(1)), Push::Dropped);
        assert_eq!(outbox.dropped(), 1);
        let batch = outbox.take().await.unwrap();
        assert_eq!(batch.frames.len(), 2);
        assert!(!batch.ends_with_close);
        // Taken but not yet written still counts.
        assert_eq!(outbox.push(frame(1)), Push::Dropped);
        outbox.written(120);
        assert!(!outbox.is_backpressured());
        assert_eq!(outbox.push(frame(1)), Push::Queued(1));
    }

    #[tokio::test]
    async fn close_is_the_last_frame() {
        let outbox = Outbox::new(100);
        outbox.push(frame(3));
        assert!(outbox.close(frame(4)));
        assert!(!outbox.close(frame(4)));
        assert_eq!(outbox.push(frame(1)), Push::Closed);
        let batch = outbox.take().await.unwrap();
        assert_eq!(batch.frames.len(), 2);
        assert!(batch.ends_with_close);
        outbox.finish();
        assert!(outbox.take().await.is_none());
    }

    #[tokio::test]
    async fn wakes_a_waiting_writer() {
        let outbox = std::sync::Arc::new(Outbox::new(100));
        let writer = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.take().await.map(|batch| batch.frames.len()) })
        };
        tokio::task::yield_now().await;
        outbox.push(frame(1));
        assert_eq!(writer.await.unwrap(), Some(1));
    }
}
