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
//!
//! While a thread holds a [`Cork`] (the server is busy with a batch: a JS call batch, a drain
//! of JS-issued sends, several Redis messages, a read of a connection's input), frames are
//! queued instead of written, and when the cork is released every outbox it touched is
//! written in one vectored write. Under load a batch holds many frames for the same sockets,
//! so one system call and one TCP segment carry many frames; an idle server's batches hold one
//! frame each and write it as soon as that batch is done, with no timer and no waiting.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::marker::PhantomData;
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
    /// Listed by a thread's cork, which writes the queue when it is released.
    in_cork: bool,
    /// Write system calls made by senders and cork releases (not by the writer task).
    writes: u64,
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

    /// A non-blocking write of as much of `slices` as the kernel takes, in one system call.
    #[cfg(target_os = "linux")]
    fn try_write_vectored(&self, slices: &[IoSlice<'_>]) -> std::io::Result<usize> {
        // SAFETY: `IoSlice` has the layout of `iovec` on Unix, the slices outlive the call,
        // and `fd` stays open while `half` is held.
        let sent = unsafe {
            let mut message: libc::msghdr = std::mem::zeroed();
            message.msg_iov = slices.as_ptr() as *mut libc::iovec;
            message.msg_iovlen = slices.len() as _;
            libc::sendmsg(self.fd, &message, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
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
    fn try_write_vectored(&self, slices: &[IoSlice<'_>]) -> std::io::Result<usize> {
        self.half.try_write_vectored(slices)
    }
}

/// At most this many frames go into one vectored write (Linux takes up to 1024).
const SLICES_PER_WRITE: usize = 64;
/// A corked queue this large is written at once instead of at the cork's release, so a long
/// batch neither holds much memory per socket nor runs into the backpressure limit by itself.
const CORKED_BYTES_WRITTEN_EARLY: usize = 64 * 1024;

/// What owns an outbox (a client connection): what a cork keeps alive until it is released.
pub trait OutboxOwner: Send + Sync {
    fn outbox(&self) -> &Outbox;
}

thread_local! {
    /// How many corks this thread holds.
    static CORK_DEPTH: Cell<usize> = const { Cell::new(0) };
    /// The outboxes that queued frames under this thread's cork, in the order they did.
    static CORKED: RefCell<Vec<Arc<dyn OutboxOwner>>> = const { RefCell::new(Vec::new()) };
}

/// While held, this thread's sends queue instead of writing; the last cork released on a
/// thread writes every outbox they queued in. Not `Send`: a cork held across an `.await`
/// does not compile into a task, since the task could resume on another thread or leave
/// this one's sockets waiting while it sleeps.
pub struct Cork(PhantomData<*const ()>);

impl Cork {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        CORK_DEPTH.with(|depth| depth.set(depth.get() + 1));
        Cork(PhantomData)
    }

    /// Whether this thread holds a cork.
    pub fn is_held() -> bool {
        CORK_DEPTH.with(Cell::get) > 0
    }
}

impl Drop for Cork {
    fn drop(&mut self) {
        let depth = CORK_DEPTH.with(|depth| {
            depth.set(depth.get() - 1);
            depth.get()
        });
        if depth == 0 {
            release_corked();
        }
    }
}

/// Writes every outbox queued in under this thread's cork.
fn release_corked() {
    // Taken out, so nothing here holds the list while an outbox is written; the emptied list
    // goes back to keep its capacity.
    let mut corked = CORKED.with(|list| std::mem::take(&mut *list.borrow_mut()));
    for owner in corked.drain(..) {
        owner.outbox().write_corked();
    }
    CORKED.with(|list| {
        let mut list = list.borrow_mut();
        if list.is_empty() {
            *list = corked;
        }
    });
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
    /// has to wait in the queue). Under a [`Cork`] it waits for the cork's release, and
    /// `owner` (called once per cork) is what the cork keeps until then.
    pub fn push(&self, frame: &Bytes, owner: impl FnOnce() -> Arc<dyn OutboxOwner>) -> Push {
        let corked = Cork::is_held();
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
        if !corked && state.frames.is_empty() && !state.writer_running {
            state.writes += u64::from(state.socket.is_some());
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
        if corked && !state.writer_running {
            if !state.in_cork {
                state.in_cork = true;
                let owner = owner();
                CORKED.with(|list| list.borrow_mut().push(owner));
            }
            if state.frames.len() >= SLICES_PER_WRITE
                || state.pending_bytes >= CORKED_BYTES_WRITTEN_EARLY
            {
                write_queued(&mut state);
            }
        } else {
            start_writer_if_idle(&mut state);
        }
        if state.pending_bytes > self.limit {
            state.backpressured = true;
            Push::Backpressured
        } else {
            Push::Queued(len)
        }
    }

    /// At a cork's release: writes what the cork held back, unless a writer task owns the
    /// queue (then it writes them, in order).
    fn write_corked(&self) {
        let mut state = self.lock();
        state.in_cork = false;
        if !state.writer_running && !state.finished {
            write_queued(&mut state);
        }
    }

    /// Write system calls made by senders and cork releases so far.
    pub fn writes(&self) -> u64 {
        self.lock().writes
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

/// Writes queued frames directly, in vectored writes, while the kernel takes them all; what
/// it does not take is left to a writer task.
fn write_queued(state: &mut State) {
    let Some(socket) = &state.socket else {
        return;
    };
    while !state.frames.is_empty() {
        let (first, second) = state.frames.as_slices();
        let mut slices = [IoSlice::new(&[]); SLICES_PER_WRITE];
        let mut count = 0;
        let mut offered = 0;
        for frame in first.iter().chain(second).take(SLICES_PER_WRITE) {
            slices[count] = IoSlice::new(frame);
            offered += frame.len();
            count += 1;
        }
        state.writes += 1;
        // One frame (the common case at light load) goes by `send(2)`: `sendmsg(2)` costs
        // more in the kernel for the same bytes.
        let result = if count == 1 {
            socket.direct.try_write(&slices[0])
        } else {
            socket.direct.try_write_vectored(&slices[..count])
        };
        let mut written = match result {
            Ok(written) => written,
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            Err(_) => {
                // The peer is gone; the reader sees it too and ends the connection.
                state.finished = true;
                return;
            }
        };
        state.pending_bytes -= written;
        let took_everything = written == offered;
        while written > 0 {
            let front = state.frames.front_mut().expect("written bytes were queued");
            if written >= front.len() {
                written -= front.len();
                state.frames.pop_front();
            } else {
                *front = front.slice(written..);
                written = 0;
            }
        }
        if !took_everything {
            // The socket is full: the writer task goes on once it is writable.
            break;
        }
    }
    if state.frames.is_empty() {
        // Freed rather than kept: most connections spend their life idle.
        state.frames = VecDeque::new();
        state.backpressured = false;
    } else {
        start_writer_if_idle(state);
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

    /// An outbox as a cork keeps it: behind an owner.
    struct Owned(Outbox);

    impl OutboxOwner for Owned {
        fn outbox(&self) -> &Outbox {
            &self.0
        }
    }

    fn push(owned: &Arc<Owned>, frame: &Bytes) -> Push {
        owned
            .0
            .push(frame, || owned.clone() as Arc<dyn OutboxOwner>)
    }

    /// An outbox on one end of a real TCP connection; its writer task must never be needed.
    async fn connected_outbox() -> (Arc<Owned>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        let (_read_half, write_half) = server_side.into_split();
        let owned = Arc::new(Owned(Outbox::new(usize::MAX)));
        owned.0.attach(
            Arc::new(write_half),
            Box::new(|_| panic!("the kernel took everything: no writer task is needed")),
        );
        (owned, peer)
    }

    async fn read_exactly(peer: &mut tokio::net::TcpStream, len: usize) -> Vec<u8> {
        let mut received = vec![0u8; len];
        tokio::io::AsyncReadExt::read_exact(peer, &mut received)
            .await
            .unwrap();
        received
    }

    /// An owned outbox with `push` taking only the frame, for the tests below.
    struct Plain<'a>(&'a Arc<Owned>);

    impl std::ops::Deref for Plain<'_> {
        type Target = Outbox;
        fn deref(&self) -> &Outbox {
            &self.0 .0
        }
    }

    impl Plain<'_> {
        fn push(&self, frame: &Bytes) -> Push {
            push(self.0, frame)
        }
    }

    fn numbered_frames(count: u8) -> Vec<Bytes> {
        (0..count)
            .map(|i| Bytes::from(vec![i; 10 + usize::from(i)]))
            .collect()
    }

    #[tokio::test]
    async fn frames_queued_for_one_socket_under_a_cork_leave_in_one_write_in_order() {
        let (owned, mut peer) = connected_outbox().await;
        let frames = numbered_frames(10);
        {
            let _cork = Cork::new();
            for frame in &frames {
                assert_eq!(push(&owned, frame), Push::Queued(frame.len()));
            }
            assert_eq!(owned.0.writes(), 0, "nothing is written while corked");
            assert_eq!(
                owned.0.buffered(),
                frames.iter().map(Bytes::len).sum::<usize>()
            );
        }
        assert_eq!(owned.0.writes(), 1);
        assert_eq!(owned.0.buffered(), 0);
        let expected: Vec<u8> = frames.concat();
        assert_eq!(read_exactly(&mut peer, expected.len()).await, expected);
    }

    #[tokio::test]
    async fn without_a_cork_each_frame_is_written_at_once() {
        let (owned, mut peer) = connected_outbox().await;
        let frames = numbered_frames(10);
        for (i, frame) in frames.iter().enumerate() {
            push(&owned, frame);
            assert_eq!(owned.0.writes(), i as u64 + 1);
        }
        let expected: Vec<u8> = frames.concat();
        assert_eq!(read_exactly(&mut peer, expected.len()).await, expected);
    }

    #[tokio::test]
    async fn nested_corks_write_when_the_outermost_is_released() {
        let (a, mut peer_a) = connected_outbox().await;
        let (b, mut peer_b) = connected_outbox().await;
        let frames = numbered_frames(4);
        let outer = Cork::new();
        push(&a, &frames[0]);
        {
            let _inner = Cork::new();
            push(&b, &frames[1]);
            push(&a, &frames[2]);
        }
        assert_eq!((a.0.writes(), b.0.writes()), (0, 0));
        push(&b, &frames[3]);
        drop(outer);
        assert_eq!((a.0.writes(), b.0.writes()), (1, 1));
        assert!(!Cork::is_held());
        let expected_a = [frames[0].clone(), frames[2].clone()].concat();
        let expected_b = [frames[1].clone(), frames[3].clone()].concat();
        assert_eq!(
            read_exactly(&mut peer_a, expected_a.len()).await,
            expected_a
        );
        assert_eq!(
            read_exactly(&mut peer_b, expected_b.len()).await,
            expected_b
        );
    }

    /// A long batch does not hold a socket's frames until its end: every
    /// `SLICES_PER_WRITE` frames (or 64 KiB) are written as they fill.
    #[tokio::test]
    async fn a_long_corked_batch_writes_as_it_fills() {
        let (owned, mut peer) = connected_outbox().await;
        let frames: Vec<Bytes> = (0..SLICES_PER_WRITE * 2 + 1)
            .map(|i| Bytes::from(vec![i as u8; 3]))
            .collect();
        {
            let _cork = Cork::new();
            for frame in &frames {
                push(&owned, frame);
            }
            assert_eq!(owned.0.writes(), 2);
        }
        assert_eq!(owned.0.writes(), 3);
        let expected: Vec<u8> = frames.concat();
        assert_eq!(read_exactly(&mut peer, expected.len()).await, expected);
    }

    #[test]
    fn bounds_bytes_and_clears_backpressure_when_drained() {
        let owned = Arc::new(Owned(Outbox::new(100)));
        let outbox = Plain(&owned);
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
        let owned = Arc::new(Owned(Outbox::new(100)));
        let outbox = Plain(&owned);
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
        let owned = Arc::new(Owned(Outbox::new(usize::MAX)));
        let outbox = Plain(&owned);
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (weak, count) = (Arc::downgrade(&owned), started.clone());
        outbox.attach(
            Arc::new(write_half),
            Box::new(move |socket| {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let owned = weak.upgrade().unwrap();
                tokio::spawn(async move {
                    let outbox = &owned.0;
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
