//! A connection's outbound queue, bounded in bytes.
//!
//! Senders (fan-out on any thread, the JS thread, the connection itself) push shared frames.
//! When nothing is queued or being written, the sender writes to the socket itself (a
//! non-blocking write): no task wake-up, which on a busy or single core would cost a context
//! switch per message. What the kernel does not take is queued, and a writer task, started
//! then and ending when the queue is empty, drains it with vectored writes as the socket
//! becomes writable.
//! Bytes count until the kernel accepted them, so a peer that stops reading fills the queue
//! and further frames are dropped (or the connection closed) instead of growing memory.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::task::JoinHandle;

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
    /// A writer task owns the queue until it finds it empty: a direct write now would
    /// overtake the frames it is writing.
    writer_running: bool,
    /// The last writer task started, for the connection to wait for at its end.
    writer_task: Option<JoinHandle<()>>,
    /// The socket; absent in unit tests and after the connection ended.
    socket: Option<Attached>,
}

/// Starts a task that drains the queue through the given socket (see [`Outbox::attach`]).
pub type StartWriter = Box<dyn Fn(Arc<OwnedWriteHalf>) -> JoinHandle<()> + Send + Sync>;

struct Attached {
    direct: DirectSocket,
    start_writer: StartWriter,
}

/// The socket as direct writes use it. A fan-out writes to every recipient in turn, and on
/// that path each pointer followed is a likely cache miss (measured: with 1,000 recipients
/// tokio's `try_write`, reached through the write half, its stream and its registration, was
/// a fifth of the server's user time). So the descriptor is kept here and written with
/// `send(2)`; the `Arc` only keeps it open. A `WouldBlock` here leaves tokio's readiness
/// stale, which costs the writer task one extra `WouldBlock` of its own, nothing more.
struct DirectSocket {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
    /// Keeps `fd` open; the writer task gets its own reference.
    half: Arc<OwnedWriteHalf>,
}

impl DirectSocket {
    fn new(half: Arc<OwnedWriteHalf>) -> Self {
        DirectSocket {
            #[cfg(target_os = "linux")]
            fd: std::os::fd::AsRawFd::as_raw_fd(AsRef::<tokio::net::TcpStream>::as_ref(&*half)),
            half,
        }
    }

    /// A non-blocking write of as much of `bytes` as the kernel takes.
    #[cfg(target_os = "linux")]
    fn try_write(&self, bytes: &[u8]) -> std::io::Result<usize> {
        // SAFETY: `fd` stays open while `half` is held, and the buffer is valid for its length.
        let sent = unsafe {
            libc::send(
                self.fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == ErrorKind::Interrupted {
                return Err(ErrorKind::WouldBlock.into());
            }
            return Err(error);
        }
        Ok(sent as usize)
    }

    #[cfg(not(target_os = "linux"))]
    fn try_write(&self, bytes: &[u8]) -> std::io::Result<usize> {
        self.half.try_write(bytes)
    }
}

pub struct Outbox {
    state: Mutex<State>,
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

    /// Gives the outbox the socket, for direct writes, and what starts a writer task when
    /// frames have to wait. Most connections never need one: direct writes succeed unless
    /// the peer reads slower than it is sent to, so the task (and its memory) exists only
    /// while something is queued.
    pub fn attach(&self, socket: Arc<OwnedWriteHalf>, start_writer: StartWriter) {
        self.lock().socket = Some(Attached {
            direct: DirectSocket::new(socket),
            start_writer,
        });
    }

    /// Drops the outbox's references to the socket (once the writer task let go of its own,
    /// the write half closes and FIN goes out).
    pub fn detach(&self) {
        self.lock().socket = None;
    }

    /// Queues `frame` (shared by every recipient of a fan-out: it is only cloned when it
    /// has to wait in the queue).
    pub fn push(&self, frame: &Bytes) -> Push {
        let mut state = self.lock();
        if state.closing || state.finished {
            return Push::Closed;
        }
        if state.pending_bytes > self.limit {
            state.dropped += 1;
            return Push::Dropped;
        }
        let len = frame.len();
        let mut written = 0;
        if state.frames.is_empty() && !state.writer_running {
            if let Some(socket) = &state.socket {
                match socket.direct.try_write(frame) {
                    Ok(all) if all == len => return Push::Queued(len),
                    Ok(some) => written = some,
                    Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => {
                        // The peer is gone; the reader sees it too and ends the connection.
                        state.finished = true;
                        return Push::Closed;
                    }
                }
            }
        }
        let frame = frame.slice(written..);
        let len = frame.len();
        state.frames.push_back(frame);
        state.pending_bytes += len;
        start_writer_if_idle(&mut state);
        if state.pending_bytes > self.limit {
            state.backpressured = true;
            Push::Backpressured
        } else {
            Push::Queued(len)
        }
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
        start_writer_if_idle(&mut state);
        true
    }

    /// Stops the writer without a close frame (it notices before its next batch).
    pub fn finish(&self) {
        self.lock().finished = true;
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

    /// For the writer task: everything queued. `None` when the writer should end, because
    /// the queue is empty (the next frame that has to wait starts a new one) or the
    /// connection is finished.
    pub fn next_batch(&self) -> Option<Batch> {
        let mut state = self.lock();
        if state.finished || state.frames.is_empty() {
            state.writer_running = false;
            return None;
        }
        Some(Batch {
            frames: state.frames.drain(..).collect(),
            ends_with_close: state.closing,
        })
    }

    /// The writer task, if one was started: the connection waits for it before it ends.
    pub fn writer_task(&self) -> Option<JoinHandle<()>> {
        self.lock().writer_task.take()
    }

    /// The writer reports bytes the kernel accepted; an emptied queue clears backpressure.
    pub fn written(&self, bytes: usize) {
        let mut state = self.lock();
        state.pending_bytes = state.pending_bytes.saturating_sub(bytes);
        if state.pending_bytes == 0 && state.frames.is_empty() {
            state.backpressured = false;
        }
    }
}

fn start_writer_if_idle(state: &mut State) {
    if state.writer_running {
        return;
    }
    if let Some(socket) = &state.socket {
        state.writer_running = true;
        state.writer_task = Some((socket.start_writer)(socket.direct.half.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Bytes {
        Bytes::from(vec![0u8; len])
    }

    #[test]
    fn bounds_bytes_and_clears_backpressure_when_drained() {
        let outbox = Outbox::new(100);
        assert_eq!(outbox.push(&frame(60)), Push::Queued(60));
        assert_eq!(outbox.push(&frame(60)), Push::Backpressured);
        assert!(outbox.is_backpressured());
        assert_eq!(outbox.push(&frame(1)), Push::Dropped);
        assert_eq!(outbox.dropped(), 1);
        let batch = outbox.next_batch().unwrap();
        assert_eq!(batch.frames.len(), 2);
        assert!(!batch.ends_with_close);
        // Taken but not yet written still counts.
        assert_eq!(outbox.push(&frame(1)), Push::Dropped);
        outbox.written(120);
        assert!(!outbox.is_backpressured());
        assert_eq!(outbox.push(&frame(1)), Push::Queued(1));
    }

    #[test]
    fn close_is_the_last_frame() {
        let outbox = Outbox::new(100);
        outbox.push(&frame(3));
        assert!(outbox.close(frame(4)));
        assert!(!outbox.close(frame(4)));
        assert_eq!(outbox.push(&frame(1)), Push::Closed);
        let batch = outbox.next_batch().unwrap();
        assert_eq!(batch.frames.len(), 2);
        assert!(batch.ends_with_close);
        assert!(outbox.next_batch().is_none());
    }

    /// A peer that does not read: direct writes fill the socket, then frames queue and one
    /// writer task (not one per frame) is started; it ends once it has written them all.
    #[tokio::test]
    async fn a_writer_task_exists_only_while_frames_wait() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        let (_read_half, write_half) = server_side.into_split();
        let outbox = Arc::new(Outbox::new(usize::MAX));
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (weak, count) = (Arc::downgrade(&outbox), started.clone());
        outbox.attach(
            Arc::new(write_half),
            Box::new(move |socket| {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let outbox = weak.upgrade().unwrap();
                tokio::spawn(async move {
                    while let Some(batch) = outbox.next_batch() {
                        for frame in &batch.frames {
                            let mut offset = 0;
                            while offset < frame.len() {
                                socket.writable().await.unwrap();
                                if let Ok(written) = socket.try_write(&frame[offset..]) {
                                    offset += written;
                                }
                            }
                            outbox.written(frame.len());
                        }
                    }
                })
            }),
        );
        assert_eq!(outbox.push(&frame(10)), Push::Queued(10));
        assert!(
            outbox.writer_task().is_none(),
            "a direct write needs no task"
        );
        let mut sent = 10;
        while outbox.buffered() == 0 {
            outbox.push(&frame(64 * 1024));
            sent += 64 * 1024;
        }
        for _ in 0..10 {
            outbox.push(&frame(64 * 1024));
            sent += 64 * 1024;
        }
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Reading everything lets the writer finish and end.
        let mut received = 0;
        let mut buffer = vec![0u8; 256 * 1024];
        let mut peer = peer;
        while received < sent {
            received += tokio::io::AsyncReadExt::read(&mut peer, &mut buffer)
                .await
                .unwrap();
        }
        outbox.writer_task().unwrap().await.unwrap();
        assert_eq!(outbox.buffered(), 0);
        // The next frame is written directly again, without a task.
        assert_eq!(outbox.push(&frame(10)), Push::Queued(10));
        assert!(outbox.writer_task().is_none());
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
