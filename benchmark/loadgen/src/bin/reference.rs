//! A reference server for the benchmarks: the least a server can do for each scenario, with
//! no JavaScript and no framework, so the tables show the floor that the machine's kernel
//! puts under every implementation. It speaks just enough of the helper's wire protocol for
//! the load generator (`authenticate` → `connected`, `join`, `echo`, `bench:broadcast`,
//! `bench:room`) and nothing else: no validation, no heartbeat, no limits, no backpressure
//! (a full socket drops the frame). It is a measuring stick, not a server to use.
//!
//! One thread, like the TypeScript helper's: a current-thread tokio runtime reads frames with
//! tokio-tungstenite, and every send is one `write(2)` of a frame built once, on each
//! recipient's descriptor, the same system call per delivery that every implementation pays.
//!
//! `--hand-off` answers `echo` the way this package's design has to, still without JS: the
//! reading thread (SCHED_BATCH, as the addon's I/O threads) queues each message for a second
//! thread and, once the other connections that have a message in hand have queued theirs
//! (one scheduler pass, as the addon's dispatcher waits), wakes it through an eventfd (as a
//! threadsafe function's `uv_async_send` does); that thread builds and writes the replies.
//! The difference to the one-thread reference is what handing a message to another thread
//! and back costs. `--hand-off --epoll` reads on a bare epoll loop instead of tokio (echo
//! only): the same design with the lightest reading thread.
//!
//! Usage: reference [--idle-thread | --hand-off [--epoll]] (prints `READY <port> <pid>` like
//! the other benchmark servers)

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::net::TcpStream as StdStream;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::task::LocalSet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Default)]
struct Registry {
    /// Authenticated connections (the broadcast set).
    all: Vec<RawFd>,
    rooms: HashMap<String, Vec<RawFd>>,
}

impl Registry {
    fn remove(&mut self, fd: RawFd) {
        self.all.retain(|&member| member != fd);
        for members in self.rooms.values_mut() {
            members.retain(|&member| member != fd);
        }
    }
}

/// An unmasked server text frame.
fn frame(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// One `write(2)` on a descriptor the connection's own task keeps open; a full socket or an
/// error drops the frame (the reference has no queue).
fn write_to(fd: RawFd, bytes: &[u8]) {
    // SAFETY: `fd` belongs to a live connection (connections leave the registry before their
    // stream is dropped, on this one thread); ManuallyDrop keeps this view from closing it.
    let stream = ManuallyDrop::new(unsafe { StdStream::from_raw_fd(fd) });
    let _ = (&*stream).write(bytes);
}

fn event_frame(event: &str, data: &serde_json::Value) -> Vec<u8> {
    frame(&serde_json::json!({ "event": event, "data": data }).to_string())
}

/// `--hand-off`: echo messages waiting for the replying thread.
struct HandOff {
    queue: Mutex<Vec<(RawFd, serde_json::Value)>>,
    /// Tells the reading thread's waker task that the queue stopped being empty.
    queued: tokio::sync::Notify,
    /// An eventfd: written by the waker task, read by the replying thread.
    wake: RawFd,
}

impl HandOff {
    fn start() -> Arc<HandOff> {
        // SAFETY: plain system call; the descriptor lives as long as the process.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(wake >= 0, "eventfd: {}", std::io::Error::last_os_error());
        let hand_off = Arc::new(HandOff {
            queue: Mutex::default(),
            queued: tokio::sync::Notify::new(),
            wake,
        });
        let replier = hand_off.clone();
        std::thread::spawn(move || replier.reply_forever());
        hand_off
    }

    /// Queues a reply; true when the queue was empty (the replying thread needs waking).
    fn push(&self, fd: RawFd, data: serde_json::Value) -> bool {
        let mut queue = self.queue.lock().unwrap();
        let was_empty = queue.is_empty();
        queue.push((fd, data));
        was_empty
    }

    fn wake(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.wake, (&one as *const u64).cast(), 8) };
    }

    /// The reading thread's waker task: lets every connection task that is already runnable
    /// queue its message, then wakes the replying thread once for all of them.
    async fn wake_replier(self: Arc<Self>) {
        loop {
            self.queued.notified().await;
            tokio::task::yield_now().await;
            self.wake();
        }
    }

    /// The replying thread. A connection that closes while its reply waits may have its
    /// descriptor reused before the write: acceptable for a measuring stick whose load keeps
    /// every connection open, not for a server.
    fn reply_forever(&self) {
        loop {
            let mut count = 0u64;
            // SAFETY: reads 8 bytes into a live u64 from our eventfd (blocks until written).
            unsafe { libc::read(self.wake, (&mut count as *mut u64).cast(), 8) };
            let batch = std::mem::take(&mut *self.queue.lock().unwrap());
            for (fd, data) in batch {
                write_to(fd, &event_frame("echo", &data));
            }
        }
    }
}

async fn serve(
    tcp: tokio::net::TcpStream,
    registry: Rc<RefCell<Registry>>,
    hand_off: Option<Arc<HandOff>>,
) {
    let _ = tcp.set_nodelay(true);
    let fd = tcp.as_raw_fd();
    // tungstenite zeroes its read buffer (128 KB by default) before each read; the messages
    // here are small, and a large buffer would make the reference spend its time in memset.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let data = &message["data"];
        match message["event"].as_str().unwrap_or_default() {
            "authenticate" => {
                registry.borrow_mut().all.push(fd);
                let id = format!("reference-{fd}");
                write_to(
                    fd,
                    &event_frame("connected", &serde_json::json!({ "id": id })),
                );
            }
            "join" => {
                let mut registry = registry.borrow_mut();
                for room in data["rooms"].as_array().into_iter().flatten() {
                    if let Some(room) = room.as_str() {
                        registry.rooms.entry(room.to_owned()).or_default().push(fd);
                    }
                }
            }
            "echo" => match &hand_off {
                Some(hand_off) => {
                    if hand_off.push(fd, data.clone()) {
                        hand_off.queued.notify_one();
                    }
                }
                None => write_to(fd, &event_frame("echo", data)),
            },
            "bench:broadcast" => {
                let bytes = event_frame("tick", data);
                for &member in &registry.borrow().all {
                    write_to(member, &bytes);
                }
            }
            "bench:room" => {
                let bytes = event_frame("tick", data);
                let registry = registry.borrow();
                let room = data["room"].as_str().unwrap_or_default();
                for &member in registry.rooms.get(room).into_iter().flatten() {
                    write_to(member, &bytes);
                }
            }
            _ => {}
        }
    }
    registry.borrow_mut().remove(fd);
}

/// `--hand-off --epoll`: the same hand-off with the lightest reading thread this file can
/// make, to see where the design's floor is without tokio: one `epoll_wait` for all
/// connections (level-triggered), one `read` per ready connection into a shared buffer,
/// frames parsed in place, and one wake of the replying thread per `epoll_wait` that queued
/// something. Echo only (`authenticate` and `echo`); no fragments, no limits.
fn serve_with_epoll(listener: std::net::TcpListener, hand_off: Arc<HandOff>) {
    use std::io::{ErrorKind, Read};

    struct Connection {
        stream: StdStream,
        /// Bytes of an incomplete request or frame, kept between reads.
        pending: Vec<u8>,
        upgraded: bool,
    }

    fn watch(epoll: RawFd, fd: RawFd) {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: plain system call with a live event.
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
    }

    /// Answers the upgrade request at the start of `input`; returns the bytes it used.
    fn upgrade(stream: &StdStream, input: &[u8]) -> Option<usize> {
        let end = input.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let request = std::str::from_utf8(&input[..end]).ok()?;
        let key = request.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim())
        })?;
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        let _ = (&*stream).write_all(response.as_bytes());
        Some(end)
    }

    /// Handles every complete frame at the start of `input`; returns the bytes it used and
    /// whether the replying thread needs waking (a reply went into an empty queue).
    fn frames(fd: RawFd, input: &[u8], hand_off: &HandOff) -> (usize, bool) {
        let (mut used, mut needs_wake) = (0, false);
        loop {
            let rest = &input[used..];
            if rest.len() < 2 {
                break;
            }
            let (length, header) = match rest[1] & 0x7F {
                126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
                127 if rest.len() >= 10 => (
                    u64::from_be_bytes(rest[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                126 | 127 => break,
                short => (short as usize, 2),
            };
            if rest.len() < header + 4 + length {
                break;
            }
            let mask = &rest[header..header + 4];
            let payload: Vec<u8> = rest[header + 4..header + 4 + length]
                .iter()
                .enumerate()
                .map(|(i, byte)| byte ^ mask[i % 4])
                .collect();
            used += header + 4 + length;
            if rest[0] & 0x0F != 1 {
                continue;
            }
            let Ok(message) = serde_json::from_slice::<serde_json::Value>(&payload) else {
                continue;
            };
            match message["event"].as_str().unwrap_or_default() {
                "authenticate" => write_to(
                    fd,
                    &event_frame(
                        "connected",
                        &serde_json::json!({ "id": format!("reference-{fd}") }),
                    ),
                ),
                "echo" => needs_wake |= hand_off.push(fd, message["data"].clone()),
                _ => {}
            }
        }
        (used, needs_wake)
    }

    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let listening = listener.as_raw_fd();
    // SAFETY: plain system call; the descriptor lives as long as the process.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(
        epoll >= 0,
        "epoll_create1: {}",
        std::io::Error::last_os_error()
    );
    watch(epoll, listening);
    let mut connections: HashMap<RawFd, Connection> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `events` is valid for its length.
        let ready =
            unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, -1) };
        let mut wake = false;
        for event in &events[..ready.max(0) as usize] {
            let fd = event.u64 as RawFd;
            if fd == listening {
                while let Ok((stream, _)) = listener.accept() {
                    let _ = stream.set_nonblocking(true);
                    let _ = stream.set_nodelay(true);
                    watch(epoll, stream.as_raw_fd());
                    let connection = Connection {
                        stream,
                        pending: Vec::new(),
                        upgraded: false,
                    };
                    connections.insert(connection.stream.as_raw_fd(), connection);
                }
                continue;
            }
            let Some(connection) = connections.get_mut(&fd) else {
                continue;
            };
            let read = match (&connection.stream).read(&mut buffer) {
                Ok(0) => None,
                Ok(read) => Some(read),
                Err(error) if error.kind() == ErrorKind::WouldBlock => continue,
                Err(_) => None,
            };
            let Some(read) = read else {
                // SAFETY: plain system call; the connection's stream closes the descriptor.
                unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
                connections.remove(&fd);
                continue;
            };
            // The common case reads whole frames and parses them where they landed.
            let mut input = &buffer[..read];
            if !connection.pending.is_empty() {
                connection.pending.extend_from_slice(input);
                input = &connection.pending;
            }
            let mut used = 0;
            if !connection.upgraded {
                match upgrade(&connection.stream, input) {
                    Some(request) => {
                        connection.upgraded = true;
                        used = request;
                    }
                    None => used = 0,
                }
            }
            if connection.upgraded {
                let (frames_used, needs_wake) = frames(fd, &input[used..], &hand_off);
                used += frames_used;
                wake |= needs_wake;
            }
            let left = input[used..].to_vec();
            connection.pending = left;
        }
        if wake {
            hand_off.wake();
        }
    }
}

fn main() {
    // `--idle-thread`: a second thread that never runs makes the process multi-threaded, as
    // every Node or Bun process is; the kernel then takes a reference on a socket's file for
    // each system call on it (`fdget`), which it skips in a single-threaded process.
    if std::env::args().any(|arg| arg == "--idle-thread") {
        std::thread::spawn(|| loop {
            std::thread::park();
        });
    }
    let hand_off = std::env::args().any(|arg| arg == "--hand-off").then(|| {
        let hand_off = HandOff::start();
        // The reading thread does not preempt the replying one when a packet wakes it.
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain system call on the calling thread.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        hand_off
    });
    if let Some(hand_off) = hand_off
        .clone()
        .filter(|_| std::env::args().any(|arg| arg == "--epoll"))
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        println!("READY {port} {}", std::process::id());
        let _ = std::io::stdout().flush();
        serve_with_epoll(listener, hand_off);
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    LocalSet::new().block_on(&runtime, async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        println!("READY {port} {}", std::process::id());
        let _ = std::io::stdout().flush();
        let registry = Rc::new(RefCell::new(Registry::default()));
        if let Some(hand_off) = &hand_off {
            tokio::task::spawn_local(hand_off.clone().wake_replier());
        }
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::task::spawn_local(serve(tcp, registry.clone(), hand_off.clone()));
        }
    });
}
