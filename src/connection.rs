//! One client connection: the upgrade, a reader that routes messages in arrival order, a
//! writer that drains the outbound queue, and the close handshake.
//!
//! The reader handles messages in arrival order. Authentication and room validation are
//! finished, or timed out, before the next message is read. Custom messages are handed to
//! JS without waiting (JS runs `messageHandler` for one connection in order, holding later
//! messages behind a Promise), up to a credit of bytes per connection; over it, and before a
//! join or leave, the reader waits for JS to catch up. A client that floods is slowed by TCP
//! backpressure instead of by server memory.

use std::future::{poll_fn, Future};
use std::io::{ErrorKind, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::Poll;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant, Sleep};

use crate::config::CLOSE_GRACE;
use crate::deflate;
use crate::dispatch::{CallResult, JsCall, JsNotice, LogLevel, MessageFlow, Outcome, PendingCall};
use crate::frame::{self, close_code, DataMessage, FrameError, MessageAssembler};
use crate::handshake::{self, Decision, Rejection, UpgradeRequest};
use crate::hub::{AuthStart, ClientHandle, ClientId, Encryption};
use crate::outbox::Cork;
use crate::protocol::{self, Inbound, InboundError, MessageParts, RoomRequest};
use crate::server::{monotonic_ms, now_ms, ConnectionGuard, Core};

/// Reads per wake-up are at most this large; the buffer is released whenever it empties,
/// so an idle connection holds no read buffer at all.
const READ_CHUNK: usize = 4 * 1024;
/// A connection holds a read buffer only while it has unprocessed bytes. Each I/O thread
/// keeps one emptied buffer for the next read, so a connection that reads, handles and
/// empties its buffer in one go (nearly every message) allocates nothing; measured on
/// `echo`, a 4 KB allocation and free per message was most of the I/O thread's `malloc` time.
mod spare_read_buffer {
    use std::cell::Cell;

    /// Larger buffers (a big message was assembled) are freed instead of kept.
    const KEPT_UP_TO: usize = 2 * super::READ_CHUNK;

    thread_local! {
        static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    }

    /// The thread's spare buffer, or a new empty one.
    pub(super) fn take() -> Vec<u8> {
        SPARE.with(Cell::take)
    }

    pub(super) fn give_back(mut buffer: Vec<u8>) {
        if buffer.capacity() == 0 || buffer.capacity() > KEPT_UP_TO {
            return;
        }
        buffer.clear();
        SPARE.with(|spare| spare.set(buffer));
    }
}

/// How much of an offending message a log line quotes.
const LOG_QUOTE_CHARS: usize = 200;

/// A socket just accepted.
pub(crate) struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
}

/// The connection's task, for its whole life. `accepted` is boxed because an async fn keeps
/// room for its arguments as long as it runs: unboxed, these 56 bytes, used only up to the
/// upgrade, were part of every idle connection. `_alive` keeps the server's shutdown waiting
/// until this connection is gone.
pub(crate) async fn run(core: Arc<Core>, accepted: Box<Accepted>, _alive: ConnectionGuard) {
    // Unboxed in a block so the box is freed now, not when the task ends.
    let Accepted { stream, peer } = {
        let accepted = accepted;
        *accepted
    };
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    // Boxed: the upgrade is over before the connection spends its life idle.
    let Some(Upgraded {
        id,
        buffer,
        upgrade,
    }) = Box::pin(upgrade(&core, &mut reader, &mut writer, peer)).await
    else {
        return;
    };

    let handle = Arc::new(ClientHandle::new(
        id,
        peer,
        now_ms(),
        core.config.backpressure_limit,
        core.config.close_on_backpressure_limit,
        upgrade.deflate,
    ));
    // The write half is held only by the outbox and, while frames wait, its writer task:
    // once both let go, it closes and FIN goes out.
    let runtime = tokio::runtime::Handle::current();
    let weak_handle = Arc::downgrade(&handle);
    handle.outbox().attach(
        Arc::new(writer),
        Box::new(move |writer| runtime.spawn(write_loop(writer, weak_handle.clone()))),
    );
    core.hub.register(handle.clone());
    core.log(
        LogLevel::Info,
        format_args!("New connection (unauthorized) | id: {}", handle.id),
    );

    let mut session = Session {
        deadline: Some(Instant::now() + core.config.auth_timeout),
        closing: false,
        core: core.clone(),
        handle: handle.clone(),
        buffer,
        assembler: MessageAssembler::default(),
        user_id: None,
        authenticated: false,
        timer: None,
        discard_input: false,
        message_flow: None,
        request: Some(upgrade.request_json),
    };
    session.read_loop(&mut reader).await;
    // Held until JS has been told of the disconnect: its slot is not reused before.
    let message_flow = session.message_flow.take();
    drop(session);

    // A writer still running ends by itself after writing a queued close frame; otherwise
    // it stops before its next batch, or is cut off after the grace period. (Boxed: its
    // timer would otherwise be part of every connection task, idle ones included.)
    if !handle.is_closing() {
        handle.outbox().finish();
    }
    if let Some(writer_task) = handle.outbox().writer_task() {
        Box::pin(wait_for_writer(writer_task)).await;
    }
    handle.outbox().detach();

    // The task keeps the id in the handle only: a copy here would be part of every task.
    let id = &handle.id;
    if let Some(removed) = core.hub.remove(id) {
        let user = removed.user_id.as_deref();
        core.log(
            LogLevel::Info,
            format_args!(
                "Client disconnected | id: {id} | userId: {}",
                user.unwrap_or("anonymous")
            ),
        );
        core.dispatcher.notify(JsNotice::ClientDisconnected {
            client_id: id,
            user_id: user,
            slot: message_flow.as_ref().map(|flow| flow.slot()),
        });
    }
    // Before the slot can pass to another connection, which is once this flow and JS's
    // messages let go of it.
    if let Some(flow) = &message_flow {
        core.hub.forget_sender(flow.slot(), &handle);
    }
    drop(message_flow);
}

async fn wait_for_writer(mut writer_task: tokio::task::JoinHandle<()>) {
    if timeout(CLOSE_GRACE, &mut writer_task).await.is_err() {
        writer_task.abort();
    }
}

/// A connection past its 101 answer.
struct Upgraded {
    id: ClientId,
    /// Bytes the client sent after its request, without waiting for the answer.
    buffer: Vec<u8>,
    upgrade: Upgrade,
}

/// Reads the upgrade request (within `upgradeTimeout`), decides on it and answers it.
/// `None`: refused (the answer is written) or the peer went away.
async fn upgrade(
    core: &Core,
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    peer: SocketAddr,
) -> Option<Upgraded> {
    let mut buffer = Vec::new();
    let read = timeout(
        core.config.upgrade_timeout,
        read_upgrade(reader, &mut buffer, &core.config.path),
    )
    .await;
    let (request, accept_key) = match read {
        Err(_) => {
            // Slow-loris: no answer, the socket is simply dropped.
            core.log(
                LogLevel::Debug,
                format_args!("Upgrade timeout | address: {peer}"),
            );
            return None;
        }
        Ok(Err(None)) => return None,
        Ok(Err(Some(rejection))) => {
            refuse(core, writer, peer, rejection).await;
            return None;
        }
        Ok(Ok(accepted)) => accepted,
    };
    let mut id_text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id: ClientId = Arc::from(&*uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id_text));
    let remote_address = protocol::address_text(peer);
    let upgrade = match negotiate(core, &id, &remote_address, &request).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            refuse(core, writer, peer, rejection).await;
            return None;
        }
    };
    let extensions = upgrade.deflate.then_some(deflate::RESPONSE);
    writer
        .write_all(handshake::accept_response(&accept_key, extensions).as_bytes())
        .await
        .ok()?;
    Some(Upgraded {
        id,
        buffer,
        upgrade,
    })
}

async fn refuse(core: &Core, writer: &mut OwnedWriteHalf, peer: SocketAddr, rejection: Rejection) {
    core.log(
        LogLevel::Debug,
        format_args!(
            "Upgrade refused | address: {peer} | status: {}",
            rejection.status
        ),
    );
    let _ = writer
        .write_all(handshake::reject_response(rejection).as_bytes())
        .await;
    let _ = writer.shutdown().await;
}

/// What the upgrade agreed on.
struct Upgrade {
    deflate: bool,
    /// The request as JSON, for `authenticateFn`.
    request_json: Box<str>,
}

/// Decides on a well-formed upgrade request: shutdown, `allowedOrigins`, permessage-deflate,
/// then the application's `verifyUpgradeFn`.
async fn negotiate(
    core: &Core,
    id: &str,
    remote_address: &str,
    request: &UpgradeRequest,
) -> Result<Upgrade, Rejection> {
    if core.is_shutting_down() {
        return Err(Rejection {
            status: 503,
            reason: "Service Unavailable",
        });
    }
    if !request.origin_allowed(&core.config.allowed_origins) {
        core.log(
            LogLevel::Info,
            format_args!(
                "Upgrade refused: origin not allowed | address: {remote_address} | origin: {}",
                request.header_values("origin").next().unwrap_or_default()
            ),
        );
        return Err(Rejection {
            status: 403,
            reason: "Forbidden",
        });
    }
    let deflate = core.config.per_message_deflate
        && deflate::accepts_offer(request.header_values("sec-websocket-extensions"));
    let request_json = request.to_json(id, remote_address);
    if core.config.has_verify_upgrade_fn {
        verify_upgrade(core, id, remote_address, &request_json).await?;
    }
    Ok(Upgrade {
        deflate,
        request_json: request_json.into_boxed_str(),
    })
}

/// Asks `verifyUpgradeFn`. JS answers 0 to accept or the HTTP status to refuse with.
async fn verify_upgrade(
    core: &Core,
    id: &str,
    remote_address: &str,
    request_json: &str,
) -> Result<(), Rejection> {
    let unavailable = Rejection {
        status: 503,
        reason: "Service Unavailable",
    };
    let mut call = core.dispatcher.call(JsCall::VerifyUpgrade {
        client_id: id,
        request: request_json,
    });
    let outcome = match timeout(core.config.callback_timeout, call.outcome()).await {
        Ok(CallResult::Settled(outcome)) => outcome,
        Ok(CallResult::Abandoned) => return Err(unavailable),
        Err(_) => {
            core.log(
                LogLevel::Warn,
                format_args!("verifyUpgradeFn did not settle in time | address: {remote_address}"),
            );
            return Err(unavailable);
        }
    };
    match outcome {
        Ok(Value::Number(status)) if status.as_u64() == Some(0) => Ok(()),
        Ok(Value::Number(status)) => {
            let status = status
                .as_u64()
                .filter(|status| (400..=599).contains(status))
                .unwrap_or(403) as u16;
            Err(Rejection {
                status,
                reason: handshake::reason_phrase(status),
            })
        }
        Ok(_) => Err(Rejection {
            status: 403,
            reason: "Forbidden",
        }),
        Err(error) => {
            core.log(
                LogLevel::Error,
                format_args!("verifyUpgradeFn error | address: {remote_address} | error: {error}"),
            );
            Err(Rejection {
                status: 500,
                reason: "Internal Server Error",
            })
        }
    }
}

/// Reads until a complete upgrade request is in `buffer`, then decides on it. Bytes after
/// the request (frames a client sent without waiting) stay in `buffer`.
/// `Err(None)`: the peer went away before finishing its request.
async fn read_upgrade(
    reader: &mut OwnedReadHalf,
    buffer: &mut Vec<u8>,
    path: &str,
) -> Result<(UpgradeRequest, String), Option<Rejection>> {
    loop {
        match handshake::decide(buffer, path) {
            Err(rejection) => return Err(Some(rejection)),
            Ok(Some((Decision::Reject(rejection), _))) => return Err(Some(rejection)),
            Ok(Some((
                Decision::Accept {
                    request,
                    accept_key,
                },
                used,
            ))) => {
                buffer.drain(..used);
                return Ok((request, accept_key));
            }
            Ok(None) => {}
        }
        buffer.reserve(1024);
        loop {
            let stream: &TcpStream = reader.as_ref();
            if poll_fn(|cx| stream.poll_read_ready(cx)).await.is_err() {
                return Err(None);
            }
            match read_available(reader, buffer) {
                Ok(0) => return Err(None),
                Ok(_) => break,
                Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return Err(None),
            }
        }
    }
}

/// Reads what the socket holds into the spare capacity of `buffer` (which must have some).
/// `WouldBlock` when there is nothing to read.
///
/// Tokio forgets a socket's read readiness only when a read fails with `WouldBlock`, so after
/// every message the reader would make one more `recv` that finds nothing before it can wait
/// (a third of the system calls of an echo round trip). A short read means the receive
/// queue was empty at that moment, so readiness is cleared right away instead: the read runs
/// inside `try_io`, which clears it only if no readiness event of this socket arrived since
/// it was observed (data that lands after the read brings a new event, and a peer's close is
/// never cleared). One exception on Linux: a read stops short at a TCP urgent mark
/// (`MSG_OOB`), and the bytes after it then wait for the peer's next segment. No WebSocket
/// client sends urgent data; one that does only delays itself.
fn read_available(reader: &OwnedReadHalf, buffer: &mut Vec<u8>) -> std::io::Result<usize> {
    let spare = buffer.capacity() - buffer.len();
    debug_assert!(spare > 0, "read_available needs spare capacity");
    // Stays `WouldBlock` when `try_io` finds the socket not ready and does not run the read.
    let mut read = Err(ErrorKind::WouldBlock.into());
    let stream: &TcpStream = reader.as_ref();
    let _ = stream.try_io(Interest::READABLE, || {
        read = reader.try_read_buf(buffer);
        if matches!(read, Ok(n) if n > 0 && n < spare) {
            Err(ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    read
}

/// Writes what direct writes left queued, as the socket becomes writable, until the queue
/// is empty. After the close frame it lets go of the socket, which sends FIN once this task
/// ends (the outbox's reference is dropped with it).
async fn write_loop(writer: Arc<OwnedWriteHalf>, handle: Weak<ClientHandle>) {
    let Some(handle) = handle.upgrade() else {
        return;
    };
    let outbox = handle.outbox();
    while let Some(batch) = outbox.next_batch() {
        let total: usize = batch.frames.iter().map(Bytes::len).sum();
        if write_all_frames(&writer, &batch.frames).await.is_err() {
            outbox.finish();
            return;
        }
        outbox.written(total);
        if batch.ends_with_close {
            outbox.detach();
            return;
        }
    }
}

async fn write_all_frames(writer: &OwnedWriteHalf, frames: &[Bytes]) -> std::io::Result<()> {
    let (mut index, mut offset) = (0, 0);
    while index < frames.len() {
        writer.writable().await?;
        let slices: Vec<IoSlice<'_>> = std::iter::once(&frames[index][offset..])
            .chain(frames[index + 1..].iter().map(|frame| &frame[..]))
            .take(64)
            .map(IoSlice::new)
            .collect();
        let mut written = match writer.try_write_vectored(&slices) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(written) => written,
            Err(error) if error.kind() == ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        };
        while index < frames.len() && written >= frames[index].len() - offset {
            written -= frames[index].len() - offset;
            index += 1;
            offset = 0;
        }
        offset += written;
    }
    Ok(())
}

struct Session {
    core: Arc<Core>,
    handle: Arc<ClientHandle>,
    buffer: Vec<u8>,
    assembler: MessageAssembler,
    user_id: Option<Arc<str>>,
    authenticated: bool,
    /// Until authentication starts, when to close with 4001; once a close frame is queued
    /// (`closing`), how long the peer has to answer it. One field: the two never apply at
    /// once, and every idle connection holds a `Session`.
    deadline: Option<Instant>,
    closing: bool,
    /// Fires at the authentication or close deadline, whichever applies.
    timer: Option<Pin<Box<Sleep>>>,
    /// After a framing error the rest of the stream is unreadable.
    discard_input: bool,
    /// Custom messages handed to JS and not yet handled; created with the first one.
    message_flow: Option<Arc<MessageFlow>>,
    /// The upgrade request as JSON, until `authenticateFn` has had it.
    request: Option<Box<str>>,
}

/// Whether the read loop goes on after a frame.
enum Flow {
    Continue,
    Stop,
}

/// What became of a frame: done with, or a message whose routing has to wait.
enum Handled {
    Done(Flow),
    Route(String),
}

/// What ended an idle connection's wait.
enum Wake {
    Readable(std::io::Result<()>),
    Deadline,
    CloseStarted,
}

impl Session {
    fn id(&self) -> &str {
        &self.handle.id
    }

    fn close_started(&mut self) {
        if !self.closing {
            self.closing = true;
            self.deadline = Some(Instant::now() + CLOSE_GRACE);
        }
    }

    fn close(&mut self, code: u16, reason: &str) {
        self.handle.close(code, reason);
        self.close_started();
    }

    fn send_error(&self, message: &str) {
        self.handle
            .send(&frame::text_frame(&protocol::error_message(message)));
    }

    async fn read_loop(&mut self, reader: &mut OwnedReadHalf) {
        loop {
            if let Flow::Stop = self.process_buffer().await {
                return;
            }
            self.arm_timer(self.deadline);
            let watch_close = !self.closing;
            let (handle, timer) = (&self.handle, &mut self.timer);
            // Polled by hand rather than with `select!` over three futures: an idle connection
            // spends its life in this wait, and nothing here is stored in the task (read
            // readiness and the close signal keep the waker themselves; the timer exists only
            // while a deadline does). Smaller tasks, and no futures built and dropped per message.
            let wake = poll_fn(|cx| {
                if watch_close && handle.poll_close_started(cx).is_ready() {
                    return Poll::Ready(Wake::CloseStarted);
                }
                if let Some(timer) = timer {
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Deadline);
                    }
                }
                AsRef::<TcpStream>::as_ref(reader)
                    .poll_read_ready(cx)
                    .map(Wake::Readable)
            })
            .await;
            match wake {
                Wake::Readable(Err(_)) => return,
                Wake::Readable(Ok(())) => {
                    if self.buffer.capacity() == 0 {
                        self.buffer = spare_read_buffer::take();
                    }
                    if self.buffer.capacity() - self.buffer.len() < READ_CHUNK {
                        self.buffer.reserve(READ_CHUNK);
                    }
                    match read_available(reader, &mut self.buffer) {
                        Ok(0) => return,
                        Ok(_) => self.handle.received(monotonic_ms()),
                        Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
                Wake::Deadline => {
                    if self.closing {
                        return;
                    }
                    self.deadline = None;
                    self.core.log(
                        LogLevel::Warn,
                        format_args!("Auth timeout | id: {}", self.id()),
                    );
                    self.close(close_code::AUTH_TIMEOUT, "Authentication timeout");
                }
                Wake::CloseStarted => self.close_started(),
            }
        }
    }

    /// Keeps the timer on `deadline`; without one, no timer is held.
    fn arm_timer(&mut self, deadline: Option<Instant>) {
        match (deadline, &mut self.timer) {
            (None, timer) => *timer = None,
            (Some(at), Some(timer)) => {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
            }
            (Some(at), timer) => *timer = Some(Box::pin(sleep_until(at))),
        }
    }

    /// Handles every complete frame in the buffer, then releases the buffer if it is empty.
    async fn process_buffer(&mut self) -> Flow {
        let mut consumed = 0;
        let flow = loop {
            let text = match self.process_frames(&mut consumed) {
                Handled::Done(flow) => break flow,
                Handled::Route(text) => text,
            };
            // Boxed: what routing a message may await (callbacks, JS credit) would otherwise
            // be part of every connection task, idle ones included. Most messages need no
            // wait and no allocation for it. (Bound first: a `match` would keep its
            // scrutinee in the task across the await.)
            let routing = Box::pin(self.route(text));
            routing.await;
        };
        self.buffer.drain(..consumed);
        if self.buffer.is_empty() {
            spare_read_buffer::give_back(std::mem::take(&mut self.buffer));
        }
        flow
    }

    /// Handles complete frames from `consumed` on until the buffer holds no complete frame
    /// (`Done(Continue)`), the connection is over (`Done(Stop)`), or a message has to wait
    /// for its routing (`Route`). Frames this produces (pongs, error replies) go out together
    /// when it returns.
    fn process_frames(&mut self, consumed: &mut usize) -> Handled {
        let _cork = Cork::new();
        let max = self.core.config.max_payload_length;
        loop {
            if self.discard_input {
                *consumed = self.buffer.len();
                return Handled::Done(Flow::Continue);
            }
            let decoded =
                match frame::decode_frame(&self.buffer[*consumed..], max, self.handle.deflates()) {
                    Ok(Some((frame, used))) => {
                        *consumed += used;
                        frame
                    }
                    Ok(None) => return Handled::Done(Flow::Continue),
                    Err(error) => {
                        self.framing_error(error);
                        continue;
                    }
                };
            match self.handle_frame(decoded) {
                Handled::Done(Flow::Continue) => continue,
                handled => return handled,
            }
        }
    }

    fn framing_error(&mut self, error: FrameError) {
        self.core.log(
            LogLevel::Warn,
            format_args!(
                "Closing connection | id: {} | code: {} | reason: {}",
                self.id(),
                error.close_code(),
                error.reason()
            ),
        );
        self.discard_input = true;
        self.close(error.close_code(), error.reason());
    }

    fn handle_frame(&mut self, decoded: frame::Frame) -> Handled {
        match decoded.opcode {
            frame::OP_CLOSE => {
                // Either the answer to our close or the peer closing: answer with its code.
                if !self.closing {
                    let code = match frame::close_code_of(&decoded.payload) {
                        None if decoded.payload.is_empty() => close_code::NORMAL,
                        Some(code) if frame::is_valid_close_code(code) => code,
                        _ => close_code::PROTOCOL_ERROR,
                    };
                    self.handle.close(code, "");
                }
                return Handled::Done(Flow::Stop);
            }
            frame::OP_PING => {
                if !self.closing {
                    self.handle
                        .send(&frame::encode_frame(frame::OP_PONG, &decoded.payload));
                }
                return Handled::Done(Flow::Continue);
            }
            frame::OP_PONG => return Handled::Done(Flow::Continue),
            _ => {}
        }
        let message = match self
            .assembler
            .push(decoded, self.core.config.max_payload_length)
        {
            Ok(Some(message)) => message,
            Ok(None) => return Handled::Done(Flow::Continue),
            Err(error) => {
                self.framing_error(error);
                return Handled::Done(Flow::Continue);
            }
        };
        if self.closing {
            // Closing: messages that crossed our close frame are not routed.
            return Handled::Done(Flow::Continue);
        }
        self.handle.touch(now_ms());
        let text = match message {
            DataMessage::Text(text) => text,
            // Binary frames are read as UTF-8 JSON text, as the TypeScript helper does.
            DataMessage::Binary(bytes) => match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(_) => {
                    self.send_error(protocol::ERR_INVALID_FORMAT);
                    return Handled::Done(Flow::Continue);
                }
            },
        };
        match self.route_now(text) {
            Some(text) => Handled::Route(text),
            None => Handled::Done(Flow::Continue),
        }
    }

    /// Routes the common messages, which need no waiting: heartbeats, and custom messages
    /// while the connection's credit with JS lasts. Hands every other text back for
    /// [`Session::route`], which reads it again.
    fn route_now(&mut self, text: String) -> Option<String> {
        let parts = match protocol::parse_inbound(&text) {
            Ok(Inbound::Heartbeat) => return None,
            Ok(Inbound::Custom { parts, .. }) if self.authenticated => parts,
            // Errors, authentication, rooms, and custom messages before authentication.
            _ => return Some(text),
        };
        if !self.core.config.has_message_handler
            || !self
                .message_flow
                .as_ref()
                .is_none_or(|flow| flow.has_credit())
        {
            return Some(text);
        }
        self.hand_to_js(text, parts);
        None
    }

    /// Routes a message whose handling may wait (authentication, rooms, a custom message
    /// past the connection's credit). Owns the text so a custom message moves on to JS
    /// without a copy.
    async fn route(&mut self, text: String) {
        let inbound = match protocol::parse_inbound(&text) {
            Ok(inbound) => inbound,
            Err(InboundError::InvalidFormat) => {
                return self.send_error(protocol::ERR_INVALID_FORMAT)
            }
            Err(InboundError::MissingEvent) => {
                let quoted: String = text.chars().take(LOG_QUOTE_CHARS).collect();
                self.core.log(
                    LogLevel::Error,
                    format_args!(
                        "Invalid message payload | Missing event | id: {} | raw: {quoted}",
                        self.id()
                    ),
                );
                return;
            }
        };
        match inbound {
            Inbound::Heartbeat => {}
            // Boxed: these futures are large and live only while a callback runs; the
            // message path's own allocation stays small for the common custom message.
            Inbound::Authenticate { data } => {
                Box::pin(self.authenticate(data.unwrap_or("{}"))).await
            }
            _ if !self.authenticated => self.send_error(protocol::ERR_NOT_AUTHENTICATED),
            Inbound::Join(request) => {
                if Box::pin(self.messages_done()).await {
                    Box::pin(self.join(request)).await
                }
            }
            Inbound::Leave(request) => {
                if Box::pin(self.messages_done()).await {
                    self.leave(request)
                }
            }
            Inbound::Custom { event, parts } => {
                drop(event);
                self.custom(text, parts).await
            }
        }
    }

    /// Waits until `ready` holds for this connection's messages in JS, or the connection
    /// starts closing (false). JS bounds every handler by `callbackTimeout`, so this ends.
    async fn wait_for_messages(&mut self, ready: fn(&MessageFlow) -> bool) -> bool {
        let Some(flow) = self.message_flow.clone() else {
            return true;
        };
        let handle = self.handle.clone();
        while !ready(&flow) {
            tokio::select! {
                _ = flow.released() => {}
                _ = handle.close_started() => {
                    self.close_started();
                    return false;
                }
            }
        }
        true
    }

    /// Room changes wait for earlier messages, as every message of a connection is handled
    /// in arrival order.
    async fn messages_done(&mut self) -> bool {
        self.wait_for_messages(MessageFlow::is_idle).await
    }

    /// Waits for a JS call, bounded by `deadline`; also gives up when the connection starts
    /// closing. `None` when there is no outcome to act on (the reason is already logged).
    async fn wait_for(
        &mut self,
        call: &mut PendingCall,
        deadline: Instant,
        callback: &str,
    ) -> Option<Outcome> {
        let handle = self.handle.clone();
        tokio::select! {
            result = call.outcome() => match result {
                CallResult::Settled(outcome) => Some(outcome),
                CallResult::Abandoned => None,
            },
            _ = sleep_until(deadline) => {
                self.core.log(
                    LogLevel::Warn,
                    format_args!("{callback} did not settle in time | id: {}", self.id()),
                );
                None
            }
            _ = handle.close_started() => {
                self.close_started();
                None
            }
        }
    }

    fn callback_deadline(&self) -> Instant {
        Instant::now() + self.core.config.callback_timeout
    }

    /// A callback of the authentication did not settle within `authTimeout * 3` (unless the
    /// connection is closing anyway): 4001.
    fn authentication_window_over(&mut self) {
        if !self.closing {
            self.core.log(
                LogLevel::Warn,
                format_args!("Auth in-progress timeout | id: {}", self.id()),
            );
            self.close(close_code::AUTH_TIMEOUT, "Authentication timeout");
        }
    }

    async fn authenticate(&mut self, data: &str) {
        match self.core.hub.begin_authentication(self.id()) {
            AuthStart::Started => {}
            AuthStart::NotUnauthorized => {
                return self.send_error(protocol::ERR_ALREADY_AUTHENTICATED)
            }
            AuthStart::Unknown => return,
        }
        // The in-progress timer replaces the initial one (no close has started: a closing
        // connection's messages are not routed).
        self.deadline = None;
        let deadline = Instant::now() + self.core.config.auth_timeout * 3;
        let id = self.handle.id.clone();
        let request = self.request.take();
        let mut call = self.core.dispatcher.call(JsCall::Authenticate {
            client_id: &id,
            data,
            request: request.as_deref(),
        });
        let Some(outcome) = self.wait_for(&mut call, deadline, "authenticateFn").await else {
            return self.authentication_window_over();
        };
        let (user_id, keep_metadata) = match outcome {
            Err(error) => {
                self.core.log(
                    LogLevel::Error,
                    format_args!("Authentication error | id: {id} | error: {error}"),
                );
                self.send_error(protocol::ERR_AUTH_ERROR);
                return self.close(close_code::AUTH_FAILED, "Authentication failed");
            }
            // The JS dispatcher answers `false` for a falsy result, otherwise `{ userId, keep }`
            // where `keep` says it attached metadata to this client under this token: confirmed
            // by `ClientConnected`, or dropped by `Discard` if the client is not accepted.
            Ok(Value::Object(result)) => (
                result
                    .get("userId")
                    .and_then(Value::as_str)
                    .map(Arc::<str>::from),
                result.get("keep") == Some(&Value::Bool(true)),
            ),
            Ok(_) => {
                self.core.log(
                    LogLevel::Info,
                    format_args!("Authentication rejected | id: {id}"),
                );
                self.send_error(protocol::ERR_AUTH_FAILED);
                return self.close(close_code::AUTH_FAILED, "Authentication failed");
            }
        };
        let auth_token = call.token;
        if self.core.config.require_encryption {
            // Encrypted before it joins any index, so no plain message can reach it.
            let Some(encryption) = self.handshake(user_id.as_deref(), data, deadline).await else {
                if keep_metadata {
                    self.core
                        .dispatcher
                        .notify(JsNotice::Discard { token: auth_token });
                }
                return;
            };
            self.handle.enable_encryption(encryption);
        }
        let accepted = if self.handle.is_closing() {
            None
        } else {
            self.core.hub.complete_authentication(
                &id,
                user_id.as_deref(),
                &self.core.config.default_rooms,
            )
        };
        let Some(accepted) = accepted else {
            if keep_metadata {
                self.core
                    .dispatcher
                    .notify(JsNotice::Discard { token: auth_token });
            }
            return;
        };
        self.authenticated = true;
        self.user_id = accepted.user_id;
        let user = self.user_id.clone();
        // Sent as it is, never through the transformer: the client needs the keys in it.
        let connected =
            protocol::connected_message(&id, user.as_deref(), now_ms(), self.handle.encryption());
        self.handle.send(&frame::text_frame(&connected));
        self.core.log(
            LogLevel::Info,
            format_args!(
                "Authenticated | id: {id} | userId: {} | encrypted: {}",
                user.as_deref().unwrap_or("anonymous"),
                self.handle.is_encrypted()
            ),
        );
        if !keep_metadata && !self.core.config.has_client_connected_fn {
            return;
        }
        // Also confirms the metadata JS attached under `auth_token` (JS stops tracking it).
        let mut call = self.core.dispatcher.call(JsCall::ClientConnected {
            client_id: &id,
            user_id: user.as_deref(),
            auth_token,
        });
        let deadline = self.callback_deadline();
        if let Some(Err(error)) = self
            .wait_for(&mut call, deadline, "clientConnectedFn")
            .await
        {
            self.core.log(
                LogLevel::Error,
                format_args!("clientConnectedFn error | id: {id} | error: {error}"),
            );
        }
    }

    /// `requireEncryption`: runs `handshakeFn` after a successful `authenticateFn`. `None`
    /// when the connection is being closed instead (4004, or 4001 past `deadline`).
    async fn handshake(
        &mut self,
        user_id: Option<&str>,
        data: &str,
        deadline: Instant,
    ) -> Option<Encryption> {
        let id = self.handle.id.clone();
        if !self.core.config.has_handshake_fn {
            self.core.log(
                LogLevel::Error,
                format_args!("requireEncryption is true but no handshakeFn configured | id: {id}"),
            );
            self.close(close_code::ENCRYPTION_REQUIRED, "Encryption required");
            return None;
        }
        let mut call = self.core.dispatcher.call(JsCall::Handshake {
            client_id: &id,
            user_id,
            data,
        });
        let Some(outcome) = self.wait_for(&mut call, deadline, "handshakeFn").await else {
            self.authentication_window_over();
            return None;
        };
        // The JS dispatcher answers `false` for a falsy result, else the two keys.
        let keys = match outcome {
            Ok(Value::Object(keys)) => keys,
            refused => {
                match refused {
                    Err(error) => self.core.log(
                        LogLevel::Error,
                        format_args!("Handshake error | id: {id} | error: {error}"),
                    ),
                    _ => self.core.log(
                        LogLevel::Info,
                        format_args!("Handshake rejected | id: {id}"),
                    ),
                }
                self.send_error(protocol::ERR_HANDSHAKE_FAILED);
                self.close(close_code::ENCRYPTION_REQUIRED, "Encryption required");
                return None;
            }
        };
        let text = |name: &str| keys.get(name).and_then(Value::as_str).map(str::to_string);
        Some(Encryption {
            server_public_key: text("serverPublicKey"),
            salt: text("salt"),
        })
    }

    async fn join(&mut self, request: RoomRequest) {
        let id = self.handle.id.clone();
        let RoomRequest::Rooms(requested) = request else {
            return self.core.log(
                LogLevel::Warn,
                format_args!(
                    "Join rejected | id: {id} | reason: data must be {{ rooms: string[] }}"
                ),
            );
        };
        if requested.is_empty() {
            return;
        }
        let mut sanitized: Vec<String> = requested
            .into_iter()
            .filter(|room| protocol::is_joinable_room_name(room))
            .collect();
        sanitized.dedup();
        let rooms_json = serde_json::to_string(&sanitized).unwrap_or_default();
        if sanitized.is_empty() {
            return self.core.log(
                LogLevel::Warn,
                format_args!("Join rejected | id: {id} | reason: all rooms filtered out"),
            );
        }
        if !self.core.config.has_validate_room_fn {
            return self.core.log(
                LogLevel::Warn,
                format_args!("Join rejected | id: {id} | rooms: {rooms_json} | reason: no validateRoomFn configured"),
            );
        }
        let user = self.user_id.clone();
        let mut call = self.core.dispatcher.call(JsCall::ValidateRooms {
            client_id: &id,
            user_id: user.as_deref(),
            rooms: &sanitized,
        });
        let deadline = self.callback_deadline();
        let allowed = match self.wait_for(&mut call, deadline, "validateRoomFn").await {
            None => return,
            Some(Err(error)) => {
                return self.core.log(
                    LogLevel::Error,
                    format_args!(
                        "Failed to join rooms | id: {id} | rooms: {rooms_json} | error: {error}"
                    ),
                )
            }
            Some(Ok(Value::Array(allowed))) => allowed,
            Some(Ok(_)) => Vec::new(),
        };
        // Only rooms that were requested and passed sanitising: a validateRoomFn returning
        // something else cannot put the client into an internal or unrequested room.
        let joined: Vec<&String> = sanitized
            .iter()
            .filter(|room| {
                allowed
                    .iter()
                    .any(|allowed| allowed.as_str() == Some(room.as_str()))
            })
            .collect();
        if joined.is_empty() {
            return self.core.log(
                LogLevel::Warn,
                format_args!(
                    "Join rejected | id: {id} | rooms: {rooms_json} | reason: no rooms allowed"
                ),
            );
        }
        for room in &joined {
            self.core.hub.join(&id, room);
        }
        self.core.log(
            LogLevel::Info,
            format_args!(
                "Joined rooms | id: {id} | rooms: {}",
                serde_json::to_string(&joined).unwrap_or_default()
            ),
        );
    }

    fn leave(&mut self, request: RoomRequest) {
        let RoomRequest::Rooms(requested) = request else {
            return self.core.log(
                LogLevel::Warn,
                format_args!(
                    "Leave rejected | id: {} | reason: data must be {{ rooms: string[] }}",
                    self.id()
                ),
            );
        };
        let rooms = self.core.hub.rooms_of_client_among(self.id(), &requested);
        if rooms.is_empty() {
            return;
        }
        for room in &rooms {
            self.core.hub.leave(self.id(), room);
        }
        self.core.log(
            LogLevel::Info,
            format_args!(
                "Left rooms | id: {} | rooms: {}",
                self.id(),
                serde_json::to_string(&rooms).unwrap_or_default()
            ),
        );
    }

    async fn custom(&mut self, text: String, parts: Option<MessageParts>) {
        if !self.core.config.has_message_handler {
            return self.core.log(
                LogLevel::Debug,
                format_args!("No messageHandler for extra event | id: {}", self.id()),
            );
        }
        if !self.wait_for_messages(MessageFlow::has_credit).await {
            return;
        }
        self.hand_to_js(text, parts);
    }

    /// Hands a custom message to `messageHandler`, charging the connection's credit.
    fn hand_to_js(&mut self, text: String, parts: Option<MessageParts>) {
        let (core, handle) = (&self.core, &self.handle);
        let user_id = self.user_id.as_deref();
        let flow = self.message_flow.get_or_insert_with(|| {
            let flow = core.dispatcher.message_flow(&handle.id, user_id);
            core.hub.name_sender(flow.slot(), handle);
            flow
        });
        core.dispatcher.message(flow, text, parts);
    }
}

#[cfg(test)]
mod tests {
    /// Every idle connection holds this future; callback paths are boxed to keep it small.
    /// Tokio allocates a task as a cell aligned to 128 bytes, about 104 bytes plus the
    /// future: up to 408 bytes of future the cell is 512 bytes, one byte more and it is 640.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let server = crate::server::start_for_tests();
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], server.port()));
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (guard, _all_gone) = tokio::sync::mpsc::channel(1);
        let accepted = Box::new(super::Accepted {
            stream,
            peer: address,
        });
        let task = super::run(server.core_for_tests(), accepted, guard);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 408, "connection future is {size} bytes");
    }
}
