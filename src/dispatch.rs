//! Calls into JavaScript, batched.
//!
//! Connections never call JS directly. They queue calls here; one runner task takes
//! everything queued, encodes it as one JSON array and hands it to the JS thread in a single
//! crossing. While JS works through a batch the next one accumulates, and it is cut only
//! once JS has answered, so the number of crossings falls as load rises (and with it, since
//! a batch's sends are corked, the number of writes per socket). JS answers
//! calls that finished synchronously in the batch's return value and the others later
//! through [`Dispatcher::settle`].
//!
//! Every call that expects an answer carries a token; a caller that stops waiting (timeout,
//! closed connection) drops its [`PendingCall`], which forgets the token, so a late answer
//! is recognised and JS is told to discard what it kept for it.
//!
//! Custom messages (`messageHandler`) are not calls: nobody waits for them. JS keeps each
//! connection's messages in order itself (a Promise-returning handler holds back that
//! connection's later messages) and reports in the batch's answer which messages it deferred;
//! every other message of the batch is done when the batch returns. What a connection has
//! handed to JS and JS has not finished is bounded by its [`MessageFlow`], so a client that
//! sends faster than its handler finishes is slowed by TCP, not buffered by the server.

use crate::hash::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use crate::protocol::{self, json_string, push_json_string, MessageParts};

/// The JS side of the bridge. `deliver` runs the batch on the JS thread and hands JS's
/// answer (the JSON text of the synchronous outcomes) to the batch's [`BatchInJs`] there,
/// or drops it if the batch cannot run (which counts as an empty answer).
///
/// The answer is acted on where it arrives, not sent back to an I/O task: most answers need
/// nothing but a few counters updated, and waking an I/O thread for each batch would cost a
/// system call and, on a busy core, a context switch.
pub trait JsBridge: Send + Sync + 'static {
    fn deliver(&self, batch: String, in_js: BatchInJs);
}

/// The result of one JS callback: its (normalised) value, or the message of what it threw
/// or rejected with.
pub type Outcome = Result<Value, String>;

/// Calls whose outcome a connection waits for.
pub enum JsCall<'a> {
    /// `verifyUpgradeFn`: before the 101, with the connection's future client id.
    VerifyUpgrade {
        client_id: &'a str,
        /// The upgrade request as JSON (`UpgradeRequest::to_json`).
        request: &'a str,
    },
    Authenticate {
        client_id: &'a str,
        /// Raw JSON of the message's `data`.
        data: &'a str,
        /// The upgrade request as JSON; absent for a second attempt.
        request: Option<&'a str>,
    },
    ValidateRooms {
        client_id: &'a str,
        user_id: Option<&'a str>,
        rooms: &'a [String],
    },
    ClientConnected {
        client_id: &'a str,
        user_id: Option<&'a str>,
        auth_token: u64,
    },
    Handshake {
        client_id: &'a str,
        user_id: Option<&'a str>,
        /// Raw JSON of the authenticate message's `data`.
        data: &'a str,
    },
}

/// Fire-and-forget notices.
pub enum JsNotice<'a> {
    ClientDisconnected {
        client_id: &'a str,
        user_id: Option<&'a str>,
        /// The connection's message slot, if it sent messages: JS forgets it.
        slot: Option<u32>,
    },
    /// JS may drop what it kept for this token (an accepted authentication's metadata).
    Discard {
        token: u64,
    },
    Log {
        level: LogLevel,
        text: &'a str,
    },
    /// The Redis bridge changed state.
    RedisStatus {
        status: &'a str,
        detail: Option<&'a str>,
    },
    /// Run `outboundTransformer` for each encrypted recipient of a message and send the
    /// results (JS keeps each client's messages in order).
    Transform {
        /// The `{ event, data }` JSON text.
        message: &'a str,
        clients: &'a [Arc<str>],
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// This level's bit in `ServerConfig::log_levels`.
    pub fn bit(self) -> u8 {
        match self {
            LogLevel::Debug => 1,
            LogLevel::Info => 2,
            LogLevel::Warn => 4,
            LogLevel::Error => 8,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Kinds as the JS dispatcher (lib/dispatch.js) reads them.
mod kind {
    pub const AUTHENTICATE: u8 = 1;
    pub const VALIDATE_ROOMS: u8 = 2;
    pub const CLIENT_CONNECTED: u8 = 3;
    pub const MESSAGE: u8 = 4;
    pub const CLIENT_DISCONNECTED: u8 = 5;
    pub const DISCARD: u8 = 6;
    pub const LOG: u8 = 7;
    pub const REDIS_STATUS: u8 = 8;
    pub const HANDSHAKE: u8 = 9;
    pub const TRANSFORM: u8 = 10;
    pub const VERIFY_UPGRADE: u8 = 11;
    pub const MESSAGE_SENDER: u8 = 12;
}

/// A JSON string, or `null`.
fn opt_string(value: Option<&str>) -> String {
    let mut out = Vec::with_capacity(value.map_or(4, |value| value.len() + 2));
    push_opt_string(&mut out, value);
    String::from_utf8(out).expect("JSON written from a str is UTF-8")
}

/// [`opt_string`] appended to `out`.
fn push_opt_string(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => push_json_string(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// `[kind,token,"clientId",...]`: a call's row. Appended by hand rather than `format!`ted:
/// an authentication's row took about 3,200 instructions that way (callgrind, connect,
/// benchmark/README.md).
fn encode_call(token: u64, call: &JsCall<'_>) -> String {
    // Room for a typical upgrade request: the row lives only until the batch is cut.
    let mut row = Vec::with_capacity(512);
    let start = |row: &mut Vec<u8>, kind: u8, client_id: &str| {
        row.push(b'[');
        protocol::push_digits(row, u64::from(kind), 1);
        row.push(b',');
        protocol::push_digits(row, token, 1);
        row.push(b',');
        push_json_string(row, client_id);
    };
    // `,` and a value that is JSON already.
    let push_raw = |row: &mut Vec<u8>, json: &str| {
        row.push(b',');
        row.extend_from_slice(json.as_bytes());
    };
    // `,` and a string, or null.
    let push_optional = |row: &mut Vec<u8>, value: Option<&str>| {
        row.push(b',');
        push_opt_string(row, value);
    };
    match call {
        JsCall::VerifyUpgrade { client_id, request } => {
            start(&mut row, kind::VERIFY_UPGRADE, client_id);
            push_raw(&mut row, request);
        }
        JsCall::Authenticate {
            client_id,
            data,
            request,
        } => {
            start(&mut row, kind::AUTHENTICATE, client_id);
            push_raw(&mut row, data);
            push_raw(&mut row, request.unwrap_or("null"));
        }
        JsCall::ValidateRooms {
            client_id,
            user_id,
            rooms,
        } => {
            start(&mut row, kind::VALIDATE_ROOMS, client_id);
            push_optional(&mut row, *user_id);
            row.push(b',');
            serde_json::to_writer(&mut row, rooms).expect("strings serialise");
        }
        JsCall::ClientConnected {
            client_id,
            user_id,
            auth_token,
        } => {
            start(&mut row, kind::CLIENT_CONNECTED, client_id);
            push_optional(&mut row, *user_id);
            row.push(b',');
            protocol::push_digits(&mut row, *auth_token, 1);
        }
        JsCall::Handshake {
            client_id,
            user_id,
            data,
        } => {
            start(&mut row, kind::HANDSHAKE, client_id);
            push_optional(&mut row, *user_id);
            push_raw(&mut row, data);
        }
    }
    row.push(b']');
    String::from_utf8(row).expect("a row is written from strings")
}

/// `[12,0,slot,clientId,userId]`: the ids behind a message slot, once per connection that
/// sends messages.
fn encode_message_sender(slot: u32, client_id: &str, user_id: Option<&str>) -> String {
    format!(
        "[{},0,{slot},{},{}]",
        kind::MESSAGE_SENDER,
        json_string(client_id),
        opt_string(user_id)
    )
}

/// A message on its way to `messageHandler`.
struct QueuedMessage {
    token: u64,
    slot: u32,
    /// The message's JSON text, as the client sent it.
    text: String,
    parts: Option<MessageParts>,
}

/// Appends consecutive messages (if any) to the batch as one flat row,
/// `[4,n,tokens...,slots...,events...,datas...]` (`n` of each), and empties `group`: V8
/// parses one array faster than an array per message or per column (benchmark/README.md),
/// and JS still runs them in order. A message of `event` then `data` only comes as its two
/// parts, and JS builds its object (cheaper than JSON.parse building it); any other has
/// `null` for its event and its whole text for data.
fn push_message_group(batch: &mut String, group: &mut Vec<QueuedMessage>) {
    if group.is_empty() {
        return;
    }
    // Room for the whole row at once (a token has at most 20 digits, a slot 10, an absent
    // event is `null`, and each message has four commas), so a large group does not grow
    // the batch step by step.
    let row_len: usize = group.iter().map(|m| m.text.len() + 38).sum();
    batch.reserve(row_len + 16);
    batch.push(if batch.is_empty() { '[' } else { ',' });
    batch.push('[');
    batch.push_str(itoa::Buffer::new().format(kind::MESSAGE));
    batch.push(',');
    batch.push_str(itoa::Buffer::new().format(group.len()));
    for message in group.iter() {
        batch.push(',');
        batch.push_str(itoa::Buffer::new().format(message.token));
    }
    for message in group.iter() {
        batch.push(',');
        batch.push_str(itoa::Buffer::new().format(message.slot));
    }
    for message in group.iter() {
        batch.push(',');
        match &message.parts {
            Some(parts) => batch.push_str(&message.text[parts.event.clone()]),
            None => batch.push_str("null"),
        }
    }
    for message in group.iter() {
        batch.push(',');
        match &message.parts {
            Some(parts) => batch.push_str(&message.text[parts.data.clone()]),
            None => batch.push_str(&message.text),
        }
    }
    batch.push(']');
    group.clear();
}

fn encode_notice(notice: &JsNotice<'_>) -> String {
    match notice {
        JsNotice::ClientDisconnected {
            client_id,
            user_id,
            slot,
        } => format!(
            "[{},0,{},{},{}]",
            kind::CLIENT_DISCONNECTED,
            json_string(client_id),
            opt_string(*user_id),
            slot.map_or_else(|| "null".to_string(), |slot| slot.to_string())
        ),
        JsNotice::Discard { token } => format!("[{},0,{token}]", kind::DISCARD),
        JsNotice::Transform { message, clients } => {
            let ids: Vec<&str> = clients.iter().map(|id| &**id).collect();
            format!(
                "[{},0,{message},{}]",
                kind::TRANSFORM,
                serde_json::to_string(&ids).expect("strings serialise")
            )
        }
        JsNotice::RedisStatus { status, detail } => format!(
            "[{},0,{},{}]",
            kind::REDIS_STATUS,
            json_string(status),
            opt_string(*detail)
        ),
        JsNotice::Log { level, text } => {
            format!(
                "[{},0,\"{}\",{}]",
                kind::LOG,
                level.as_str(),
                json_string(text)
            )
        }
    }
}

/// JS's answer to a batch.
#[derive(Debug, Default, PartialEq)]
pub struct BatchAnswer {
    /// Calls that finished synchronously.
    pub outcomes: Vec<(u64, Outcome)>,
    /// Messages JS holds for later (an async handler, or queued behind one); it reports each
    /// through `settle` when done. Every other message of the batch is done.
    pub deferred: Vec<u64>,
}

/// Row states in JS's answer `[[token, state, value], ...]` (an empty string: no rows).
mod answer_state {
    pub const RESOLVED: u8 = 0;
    pub const DEFERRED: u8 = 2;
    // 1: failed, the value is the error's message.
}

/// Parses JS's answer to a batch.
pub fn parse_answer(text: &str) -> Result<BatchAnswer, serde_json::Error> {
    let mut answer = BatchAnswer::default();
    if text.is_empty() {
        return Ok(answer);
    }
    let rows: Vec<(u64, u8, Box<RawValue>)> = serde_json::from_str(text)?;
    for (token, state, value) in rows {
        match state {
            answer_state::DEFERRED => answer.deferred.push(token),
            answer_state::RESOLVED => answer
                .outcomes
                .push((token, Ok(serde_json::from_str(value.get())?))),
            // answer_state::FAILED, and anything unknown counts as a failure.
            _ => answer.outcomes.push((
                token,
                Err(serde_json::from_str::<String>(value.get())
                    .unwrap_or_else(|_| value.get().to_string())),
            )),
        }
    }
    Ok(answer)
}

/// How much of one connection's input sits with JS: messages handed over and not yet
/// handled. The connection's reader stops reading while it is over [`MESSAGE_CREDIT`].
/// Created at the connection's first message ([`Dispatcher::message_flow`]); it holds the
/// connection's message slot until the last of its messages is done.
pub struct MessageFlow {
    in_js_bytes: AtomicUsize,
    released: Notify,
    slot: u32,
    slots: Arc<SlotPool>,
}

impl Drop for MessageFlow {
    fn drop(&mut self) {
        self.slots.release(self.slot);
    }
}

/// Small numbers for the connections that send messages. JS maps each to the client's ids
/// (told once, by a `MESSAGE_SENDER` row), so a message row carries a number instead of two
/// 36-character strings that V8 would parse and allocate per message. A number is reused
/// only once JS is done with its connection's messages and has been told of the disconnect
/// (the connection holds its flow until then), so the rows about a slot reach JS in order:
/// its ids, its messages, the disconnect, the next holder's ids.
#[derive(Default)]
struct SlotPool {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    released: Vec<u32>,
    never_used: u32,
}

impl SlotPool {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> u32 {
        let mut slots = self.slots();
        slots.released.pop().unwrap_or_else(|| {
            slots.never_used += 1;
            slots.never_used - 1
        })
    }

    fn release(&self, slot: u32) {
        self.slots().released.push(slot);
    }
}

/// Bytes of messages one connection may have handed to JS and not yet seen handled. At
/// least one message always goes, whatever its size.
pub const MESSAGE_CREDIT: usize = 1 << 20;
/// Counted per message on top of its length: a flood of tiny messages is bounded too.
const MESSAGE_OVERHEAD: usize = 256;

impl MessageFlow {
    /// The number JS knows this connection by in message rows.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    fn cost(message: &str) -> usize {
        message.len() + MESSAGE_OVERHEAD
    }

    fn take(&self, cost: usize) {
        self.in_js_bytes.fetch_add(cost, Ordering::AcqRel);
    }

    fn release(&self, cost: usize) {
        self.in_js_bytes.fetch_sub(cost, Ordering::AcqRel);
        self.released.notify_one();
    }

    /// Whether another message may go to JS now.
    pub fn has_credit(&self) -> bool {
        self.in_js_bytes.load(Ordering::Acquire) < MESSAGE_CREDIT
    }

    /// Whether JS has finished every message handed over.
    pub fn is_idle(&self) -> bool {
        self.in_js_bytes.load(Ordering::Acquire) == 0
    }

    /// Resolves after some message was released (or at once if one was released since the
    /// last wait): callers re-check their condition in a loop.
    pub async fn released(&self) {
        self.released.notified().await
    }
}

/// A message handed to JS, until JS is done with it.
struct MessageInJs {
    flow: Arc<MessageFlow>,
    cost: usize,
}

impl MessageInJs {
    fn release(self) {
        self.flow.release(self.cost);
    }
}

enum Item {
    Encoded(String),
    /// A message for the batch, and what it charges its connection until JS is done with it.
    Message(QueuedMessage, MessageInJs),
    Log(String),
    Flush(oneshot::Sender<()>),
    /// Ends the runner, which releases the bridge (and with it the JS function).
    Stop,
}

/// Upper bound of one batch, so a burst cannot build an unbounded string.
const MAX_BATCH_ITEMS: usize = 4096;
/// Batches handed to JS and not yet answered. One: a second, cut while JS still ran the first,
/// held only what had arrived by then, and what arrived after it waited for a third batch
/// (under load, fan-outs one per batch instead of coalesced, and two batches of latency);
/// an echo run lost nothing measurable by waiting for the answer (benchmark/RESULTS.md).
const BATCHES_IN_FLIGHT: usize = 1;
const NEVER_CLOSED: &str = "the batch semaphore is never closed";
/// Log lines waiting for JS beyond this are dropped and counted: a client flooding the
/// server with bad frames must not grow memory through the log.
const MAX_QUEUED_LOGS: usize = 10_000;

pub struct Dispatcher {
    queue: mpsc::UnboundedSender<Item>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    /// Messages JS deferred, until it settles them. Every other message travels with its
    /// batch and is done when the batch's answer is acted on: no table entry per message.
    deferred: Mutex<Deferred>,
    slots: Arc<SlotPool>,
    /// Tokens are numbered from one counter: even for calls, odd for messages, so `settle`
    /// tells which table a token belongs to.
    next_token: AtomicU64,
    queued_logs: AtomicUsize,
    dropped_logs: AtomicU64,
}

#[derive(Default)]
struct Deferred {
    /// Deferred messages, by token.
    waiting: HashMap<u64, MessageInJs>,
    /// Messages JS settled before their batch's answer was acted on (if the engine ever ran
    /// a Promise reaction in between): done as soon as the answer defers them.
    settled_early: HashSet<u64>,
}

/// What became of a call.
#[derive(Debug, PartialEq)]
pub enum CallResult {
    Settled(Outcome),
    /// The dispatcher stopped (the server shut down) before JS answered.
    Abandoned,
}

/// A call in flight. Dropping it forgets the token.
pub struct PendingCall {
    dispatcher: Arc<Dispatcher>,
    pub token: u64,
    receiver: oneshot::Receiver<Outcome>,
}

impl PendingCall {
    pub async fn outcome(&mut self) -> CallResult {
        match (&mut self.receiver).await {
            Ok(outcome) => CallResult::Settled(outcome),
            Err(_) => CallResult::Abandoned,
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        self.dispatcher.forget(self.token);
    }
}

impl Dispatcher {
    /// Creates the dispatcher and spawns its runner on the current tokio runtime.
    pub fn start(bridge: Arc<dyn JsBridge>) -> Arc<Self> {
        let (queue, receiver) = mpsc::unbounded_channel();
        let dispatcher = Arc::new(Dispatcher {
            queue,
            pending: Mutex::default(),
            deferred: Mutex::default(),
            slots: Arc::default(),
            next_token: AtomicU64::new(1),
            queued_logs: AtomicUsize::new(0),
            dropped_logs: AtomicU64::new(0),
        });
        tokio::spawn(dispatcher.clone().run(receiver, bridge));
        dispatcher
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Outcome>>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn next_token(&self, for_message: bool) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed) * 2 + u64::from(for_message)
    }

    pub fn call(self: &Arc<Self>, call: JsCall<'_>) -> PendingCall {
        let token = self.next_token(false);
        let (sender, receiver) = oneshot::channel();
        self.pending().insert(token, sender);
        if self
            .queue
            .send(Item::Encoded(encode_call(token, &call)))
            .is_err()
        {
            // The runner is gone: dropping the sender makes the caller see `Abandoned`.
            self.forget(token);
        }
        PendingCall {
            dispatcher: self.clone(),
            token,
            receiver,
        }
    }

    fn deferred(&self) -> std::sync::MutexGuard<'_, Deferred> {
        self.deferred
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The flow of a connection's messages, made at its first message: takes a slot and
    /// tells JS whose it is (an authenticated client's ids do not change).
    pub fn message_flow(&self, client_id: &str, user_id: Option<&str>) -> Arc<MessageFlow> {
        let slot = self.slots.take();
        let _ = self.queue.send(Item::Encoded(encode_message_sender(
            slot, client_id, user_id,
        )));
        Arc::new(MessageFlow {
            in_js_bytes: AtomicUsize::new(0),
            released: Notify::new(),
            slot,
            slots: self.slots.clone(),
        })
    }

    /// Hands a custom message to `messageHandler`. Nobody waits for it; `flow` is charged
    /// until JS is done with it (callers check [`MessageFlow::has_credit`] first).
    /// `parts`: where the message's `event` and `data` are, if they are its only keys.
    pub fn message(&self, flow: &Arc<MessageFlow>, message: String, parts: Option<MessageParts>) {
        let token = self.next_token(true);
        let cost = MessageFlow::cost(&message);
        flow.take(cost);
        let in_js = MessageInJs {
            flow: flow.clone(),
            cost,
        };
        let message = QueuedMessage {
            token,
            slot: flow.slot,
            text: message,
            parts,
        };
        if let Err(mpsc::error::SendError(Item::Message(_, in_js))) =
            self.queue.send(Item::Message(message, in_js))
        {
            in_js.release();
        }
    }

    /// A message JS deferred: done when JS settles it, or now if it already did.
    fn defer(&self, token: u64, in_js: MessageInJs) {
        let mut deferred = self.deferred();
        if deferred.settled_early.remove(&token) {
            drop(deferred);
            in_js.release();
        } else {
            deferred.waiting.insert(token, in_js);
        }
    }

    /// JS is done with a deferred message.
    fn finish_deferred(&self, token: u64) {
        let mut deferred = self.deferred();
        match deferred.waiting.remove(&token) {
            Some(in_js) => {
                drop(deferred);
                in_js.release();
            }
            None => {
                deferred.settled_early.insert(token);
            }
        }
    }

    pub fn notify(&self, notice: JsNotice<'_>) {
        if let JsNotice::Log { .. } = notice {
            if self.queued_logs.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_LOGS {
                self.queued_logs.fetch_sub(1, Ordering::Relaxed);
                self.dropped_logs.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let _ = self.queue.send(Item::Log(encode_notice(&notice)));
            return;
        }
        let _ = self.queue.send(Item::Encoded(encode_notice(&notice)));
    }

    pub fn log(&self, level: LogLevel, text: &str) {
        self.notify(JsNotice::Log { level, text });
    }

    fn forget(&self, token: u64) {
        self.pending().remove(&token);
    }

    /// Routes a JS outcome to its waiting caller, or marks a deferred message done. False
    /// when nobody waits for the call any more.
    pub fn settle(&self, token: u64, outcome: Outcome) -> bool {
        if token % 2 == 1 {
            self.finish_deferred(token);
            return true;
        }
        let waiting = self.pending().remove(&token);
        waiting.is_some_and(|sender| sender.send(outcome).is_ok())
    }

    /// Resolves once everything queued before it has been handed to JS and JS returned.
    pub async fn flush(&self) {
        let (sender, receiver) = oneshot::channel();
        if self.queue.send(Item::Flush(sender)).is_ok() {
            let _ = receiver.await;
        }
    }

    /// Delivers what is queued, then ends the runner; later calls are abandoned at once.
    pub async fn stop(&self) {
        self.flush().await;
        let _ = self.queue.send(Item::Stop);
    }

    async fn run(
        self: Arc<Self>,
        mut receiver: mpsc::UnboundedReceiver<Item>,
        bridge: Arc<dyn JsBridge>,
    ) {
        let mut items = Vec::with_capacity(64);
        let mut group = Vec::with_capacity(64);
        let mut stopped = false;
        let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        while !stopped && receiver.recv_many(&mut items, 1).await > 0 {
            // The batch is cut only once JS can take it: everything that arrives while JS is
            // busy joins it. Cut at once and then held back, batches stayed as small as the
            // load was light when they were cut, each waited behind the others, and under
            // load JS ran one fan-out per batch instead of coalescing them (benchmark/
            // RESULTS.md, saturation sweep).
            let permit = in_flight.clone().acquire_owned().await.expect(NEVER_CLOSED);
            // Woken by the first call: let every other task that is already runnable (readers
            // with a message in hand) queue theirs before the batch is cut, and again while a
            // pass brings more. A scheduler pass of latency buys far fewer JS crossings under
            // load: on one core, 4% less CPU per echo round trip and 40% fewer context switches
            // per connection than cutting after the first pass (benchmark/README.md).
            tokio::task::yield_now().await;
            loop {
                let before = items.len();
                while items.len() < MAX_BATCH_ITEMS {
                    match receiver.try_recv() {
                        Ok(item) => items.push(item),
                        Err(_) => break,
                    }
                }
                if items.len() == before || items.len() >= MAX_BATCH_ITEMS {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let mut batch = String::with_capacity(256);
            let mut flushes = Vec::new();
            let mut messages = Vec::with_capacity(items.len());
            let mut logs = 0;
            for item in items.drain(..) {
                if !matches!(item, Item::Message(..)) {
                    push_message_group(&mut batch, &mut group);
                }
                let encoded = match item {
                    Item::Message(message, in_js) => {
                        messages.push((message.token, in_js));
                        group.push(message);
                        continue;
                    }
                    Item::Encoded(text) => text,
                    Item::Log(text) => {
                        logs += 1;
                        text
                    }
                    Item::Flush(done) => {
                        flushes.push(done);
                        continue;
                    }
                    Item::Stop => {
                        stopped = true;
                        continue;
                    }
                };
                batch.push(if batch.is_empty() { '[' } else { ',' });
                batch.push_str(&encoded);
            }
            push_message_group(&mut batch, &mut group);
            self.queued_logs.fetch_sub(logs, Ordering::Relaxed);
            let dropped = self.dropped_logs.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                let text = format!("{dropped} log lines dropped: logging could not keep up");
                batch.push(if batch.is_empty() { '[' } else { ',' });
                batch.push_str(&encode_notice(&JsNotice::Log {
                    level: LogLevel::Warn,
                    text: &text,
                }));
            }
            if !batch.is_empty() {
                batch.push(']');
                bridge.deliver(
                    batch,
                    BatchInJs {
                        dispatcher: self.clone(),
                        messages: Some(messages),
                        _permit: permit,
                    },
                );
            } else {
                drop(permit);
            }
            if !flushes.is_empty() || stopped {
                // Everything queued before a flush (or the stop) has run in JS.
                drop(
                    in_flight
                        .acquire_many(BATCHES_IN_FLIGHT as u32)
                        .await
                        .expect(NEVER_CLOSED),
                );
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
        // Nothing queued after Stop is delivered; clearing the pending calls abandons their
        // callers instead of leaving them to their timeouts.
        drop(receiver);
        self.pending().clear();
        let deferred = std::mem::take(&mut *self.deferred());
        deferred
            .waiting
            .into_values()
            .for_each(MessageInJs::release);
    }

    /// Acts on JS's answer to a batch. `messages`: the tokens of the batch's custom messages,
    /// each done unless JS deferred it.
    fn answered(&self, answer: Result<String, String>, messages: Vec<(u64, MessageInJs)>) {
        let answer = answer
            .map_err(|error| {
                format!("[ignis-native-ws] could not deliver callbacks to JavaScript: {error}")
            })
            .and_then(|text| {
                parse_answer(&text).map_err(|error| {
                    format!("[ignis-native-ws] unreadable answer from the JS dispatcher: {error}")
                })
            });
        // Calls waiting on a batch that did not run end by their own timeouts.
        let answer = answer.unwrap_or_else(|error| {
            eprintln!("{error}");
            BatchAnswer::default()
        });
        let deferred: HashSet<u64> = answer.deferred.iter().copied().collect();
        for (token, in_js) in messages {
            if !deferred.is_empty() && deferred.contains(&token) {
                self.defer(token, in_js);
            } else {
                in_js.release();
            }
        }
        for (token, outcome) in answer.outcomes {
            if !self.settle(token, outcome) {
                self.notify(JsNotice::Discard { token });
            }
        }
    }
}

/// A batch handed to JS, until its answer is acted on ([`BatchInJs::answer`]). Dropped
/// unanswered (JS is shutting down and the batch will not run), it releases the batch's
/// messages as if JS had answered with nothing, so no reader waits on them for ever.
pub struct BatchInJs {
    dispatcher: Arc<Dispatcher>,
    /// The batch's custom messages and their charges; taken when the answer is acted on.
    messages: Option<Vec<(u64, MessageInJs)>>,
    /// One of `BATCHES_IN_FLIGHT`, returned when the answer has been acted on.
    _permit: OwnedSemaphorePermit,
}

impl BatchInJs {
    /// JS's answer, or why the batch could not run.
    pub fn answer(mut self, answer: Result<String, String>) {
        self.act_on(answer);
    }

    fn act_on(&mut self, answer: Result<String, String>) {
        if let Some(messages) = self.messages.take() {
            self.dispatcher.answered(answer, messages);
        }
    }
}

impl Drop for BatchInJs {
    fn drop(&mut self) {
        self.act_on(Err("the batch was dropped unrun".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A JS stand-in that records batches and answers every call synchronously with the
    /// token echoed back; messages are done at once unless their `event` is "defer".
    struct EchoBridge {
        batches: Mutex<Vec<String>>,
    }

    impl JsBridge for EchoBridge {
        fn deliver(&self, batch: String, in_js: BatchInJs) {
            let rows: Vec<Vec<Value>> = serde_json::from_str(&batch).unwrap();
            self.batches.lock().unwrap().push(batch);
            let answers: Vec<String> = rows
                .iter()
                .flat_map(|row| match row[0].as_u64() {
                    // [4, n, tokens..., slots..., events..., datas...]
                    Some(4) => {
                        let n = row[1].as_u64().unwrap() as usize;
                        (0..n)
                            .filter(|i| match &row[2 + 2 * n + i] {
                                Value::Null => row[2 + 3 * n + i]["event"] == "defer",
                                event => *event == "defer",
                            })
                            .map(|i| format!("[{},2,0]", row[2 + i]))
                            .collect()
                    }
                    _ if row[1].as_u64() == Some(0) => vec![],
                    _ => vec![format!("[{},0,{}]", row[1], row[1])],
                })
                .collect();
            // Answered from another thread, as the JS thread does.
            std::thread::spawn(move || in_js.answer(Ok(format!("[{}]", answers.join(",")))));
        }
    }

    /// The parts of `text` as a connection finds them.
    fn message_parts(text: &str) -> Option<MessageParts> {
        match crate::protocol::parse_inbound(text) {
            Ok(crate::protocol::Inbound::Custom { parts, .. }) => parts,
            _ => None,
        }
    }

    /// Hands `text` to `dispatcher` as a connection does.
    fn send_message(dispatcher: &Dispatcher, flow: &Arc<MessageFlow>, text: &str) {
        dispatcher.message(flow, text.to_string(), message_parts(text));
    }

    #[test]
    fn encodes_calls_as_json_rows() {
        let rooms = vec!["a\"b".to_string()];
        let row = encode_call(
            7,
            &JsCall::ValidateRooms {
                client_id: "c",
                user_id: None,
                rooms: &rooms,
            },
        );
        assert_eq!(row, r#"[2,7,"c",null,["a\"b"]]"#);
        let row = encode_call(
            1 << 40,
            &JsCall::ValidateRooms {
                client_id: "c",
                user_id: Some("u\n"),
                rooms: &[],
            },
        );
        assert_eq!(row, r#"[2,1099511627776,"c","u\n",[]]"#);
        let request = r#"{"url":"/ws"}"#;
        let row = encode_call(
            3,
            &JsCall::Authenticate {
                client_id: "c\"",
                data: r#"{"token":1}"#,
                request: Some(request),
            },
        );
        assert_eq!(row, r#"[1,3,"c\"",{"token":1},{"url":"/ws"}]"#);
        let row = encode_call(
            5,
            &JsCall::Authenticate {
                client_id: "c",
                data: "null",
                request: None,
            },
        );
        assert_eq!(row, r#"[1,5,"c",null,null]"#);
        let row = encode_call(
            0,
            &JsCall::VerifyUpgrade {
                client_id: "c",
                request,
            },
        );
        assert_eq!(row, r#"[11,0,"c",{"url":"/ws"}]"#);
        let row = encode_call(
            12,
            &JsCall::ClientConnected {
                client_id: "c",
                user_id: None,
                auth_token: 10,
            },
        );
        assert_eq!(row, r#"[3,12,"c",null,10]"#);
        let row = encode_call(
            14,
            &JsCall::Handshake {
                client_id: "c",
                user_id: Some("u"),
                data: r#"{"k":"v"}"#,
            },
        );
        assert_eq!(row, r#"[9,14,"c","u",{"k":"v"}]"#);
        let row = encode_message_sender(3, "c\n", Some("\"é"));
        assert_eq!(row, r#"[12,0,3,"c\n","\"é"]"#);
        assert_eq!(encode_message_sender(0, "c", None), r#"[12,0,0,"c",null]"#);
        let mut batch = String::new();
        let message = |token, slot, text: &str| QueuedMessage {
            token,
            slot,
            text: text.to_string(),
            parts: message_parts(text),
        };
        push_message_group(&mut batch, &mut Vec::new());
        assert_eq!(batch, "", "no messages, no row");
        let mut group = vec![
            message(8, 0, r#"{"event":"x"}"#),
            message(9, 2, r#"{"event":"y","data":{"a":[1]}}"#),
        ];
        push_message_group(&mut batch, &mut group);
        assert_eq!(batch, r#"[[4,2,8,9,0,2,null,"y",{"event":"x"},{"a":[1]}]"#);
        assert!(group.is_empty());
        push_message_group(
            &mut batch,
            &mut vec![message(10, 1, r#"{ "event" : "z" , "data" : null }"#)],
        );
        assert_eq!(
            batch,
            r#"[[4,2,8,9,0,2,null,"y",{"event":"x"},{"a":[1]}],[4,1,10,1,"z",null]"#
        );
        assert_eq!(
            encode_notice(&JsNotice::ClientDisconnected {
                client_id: "c",
                user_id: None,
                slot: Some(4)
            }),
            r#"[5,0,"c",null,4]"#
        );
        let clients: Vec<Arc<str>> = vec![Arc::from("a"), Arc::from("b")];
        assert_eq!(
            encode_notice(&JsNotice::Transform {
                message: r#"{"event":"e","data":1}"#,
                clients: &clients
            }),
            r#"[10,0,{"event":"e","data":1},["a","b"]]"#
        );
        assert_eq!(
            encode_notice(&JsNotice::Log {
                level: LogLevel::Warn,
                text: "a\nb"
            }),
            r#"[7,0,"warn","a\nb"]"#
        );
    }

    #[test]
    fn parses_outcomes_of_both_kinds() {
        let answer =
            parse_answer(r#"[[1,0,{"userId":"u"}],[2,1,"boom"],[3,0,null],[4,2,0]]"#).unwrap();
        assert_eq!(
            answer.outcomes[0],
            (1, Ok(serde_json::json!({"userId":"u"})))
        );
        assert_eq!(answer.outcomes[1], (2, Err("boom".to_string())));
        assert_eq!(answer.outcomes[2], (3, Ok(Value::Null)));
        assert_eq!(answer.deferred, vec![4]);
        assert_eq!(parse_answer("").unwrap(), BatchAnswer::default());
        assert!(parse_answer("nope").is_err());
    }

    #[tokio::test]
    async fn batches_calls_and_routes_answers_by_token() {
        let bridge = Arc::new(EchoBridge {
            batches: Mutex::new(Vec::new()),
        });
        let dispatcher = Dispatcher::start(bridge.clone());
        let mut calls: Vec<PendingCall> = (0..5)
            .map(|_| {
                dispatcher.call(JsCall::Authenticate {
                    client_id: "c",
                    data: "{}",
                    request: None,
                })
            })
            .collect();
        dispatcher.log(LogLevel::Info, "hello");
        for call in &mut calls {
            let token = call.token;
            assert_eq!(
                call.outcome().await,
                CallResult::Settled(Ok(Value::from(token)))
            );
        }
        dispatcher.flush().await;
        let batches = bridge.batches.lock().unwrap().clone();
        // All six items were queued before the runner woke: one crossing.
        assert_eq!(batches.len(), 1, "{batches:?}");
    }

    #[tokio::test]
    async fn messages_charge_their_flow_until_js_is_done_with_them() {
        let bridge = Arc::new(EchoBridge {
            batches: Mutex::new(Vec::new()),
        });
        let dispatcher = Dispatcher::start(bridge.clone());
        let flow = dispatcher.message_flow("c", None);
        send_message(&dispatcher, &flow, r#"{"event":"now"}"#);
        assert!(!flow.is_idle(), "charged while queued");
        dispatcher.flush().await;
        assert!(
            flow.is_idle(),
            "a message JS did not defer is done with its batch"
        );

        let big = format!(
            r#"{{"event":"defer","data":"{}"}}"#,
            "x".repeat(MESSAGE_CREDIT)
        );
        send_message(&dispatcher, &flow, &big);
        dispatcher.flush().await;
        assert!(!flow.has_credit(), "a deferred message stays charged");
        let batches = bridge.batches.lock().unwrap().clone();
        let rows: Vec<Vec<Value>> = serde_json::from_str(batches.last().unwrap()).unwrap();
        let token = rows[0][2].as_u64().unwrap();
        assert!(dispatcher.settle(token, Ok(Value::Null)));
        tokio::time::timeout(Duration::from_secs(1), flow.released())
            .await
            .expect("the reader is woken");
        assert!(flow.is_idle());
        dispatcher.settle(token, Ok(Value::Null));
        assert!(flow.is_idle(), "released once");
        assert!(flow.has_credit());
    }

    /// Should an engine run a Promise reaction before the batch's answer is acted on, the
    /// message it settles is done once the answer defers it.
    #[tokio::test]
    async fn a_message_settled_before_its_batch_is_answered_is_done_when_deferred() {
        struct EarlyBridge(std::sync::OnceLock<Arc<Dispatcher>>);
        impl JsBridge for EarlyBridge {
            fn deliver(&self, batch: String, in_js: BatchInJs) {
                let rows: Vec<Vec<Value>> = serde_json::from_str(&batch).unwrap();
                let tokens: Vec<u64> = rows
                    .iter()
                    .filter(|row| row[0] == 4)
                    .flat_map(|row| {
                        let n = row[1].as_u64().unwrap() as usize;
                        (0..n)
                            .map(|i| row[2 + i].as_u64().unwrap())
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let dispatcher = self.0.get().unwrap();
                for token in &tokens {
                    assert_eq!(token % 2, 1, "a message token is odd");
                    dispatcher.settle(*token, Ok(Value::Null));
                }
                let rows: Vec<String> = tokens.iter().map(|t| format!("[{t},2,0]")).collect();
                in_js.answer(Ok(format!("[{}]", rows.join(","))));
            }
        }
        let bridge = Arc::new(EarlyBridge(std::sync::OnceLock::new()));
        let dispatcher = Dispatcher::start(bridge.clone());
        let _ = bridge.0.set(dispatcher.clone());
        let flow = dispatcher.message_flow("c", None);
        send_message(&dispatcher, &flow, r#"{"event":"a"}"#);
        send_message(&dispatcher, &flow, r#"{"event":"b"}"#);
        dispatcher.flush().await;
        assert!(flow.is_idle());
        let deferred = dispatcher.deferred();
        assert!(deferred.waiting.is_empty() && deferred.settled_early.is_empty());
    }

    #[tokio::test]
    async fn a_slot_is_named_before_its_messages_and_reused_once_they_are_done() {
        let bridge = Arc::new(EchoBridge {
            batches: Mutex::new(Vec::new()),
        });
        let dispatcher = Dispatcher::start(bridge.clone());
        let first = dispatcher.message_flow("a", Some("u"));
        let second = dispatcher.message_flow("b", None);
        let (first_slot, second_slot) = (first.slot(), second.slot());
        assert_ne!(first_slot, second_slot);
        send_message(&dispatcher, &first, r#"{"event":"defer","data":0}"#);
        send_message(&dispatcher, &second, r#"{"event":"now"}"#);
        dispatcher.flush().await;
        let sent = bridge.batches.lock().unwrap().concat();
        let named = sent.find(&format!(r#"[12,0,{first_slot},"a","u"]"#));
        let group = sent.find(&format!(
            r#"{first_slot},{second_slot},"defer",null,0,{{"event":"now"}}]"#
        ));
        assert!(named.is_some() && named < group, "{sent}");

        drop(second);
        let third = dispatcher.message_flow("c", None);
        assert_eq!(third.slot(), second_slot, "done with, the slot is free");
        drop(first);
        let fourth = dispatcher.message_flow("d", None);
        assert_ne!(
            fourth.slot(),
            first_slot,
            "a deferred message still holds it"
        );
        let rows: Vec<Vec<Value>> =
            serde_json::from_str(&bridge.batches.lock().unwrap()[0]).unwrap();
        // The first message's token, in its row [4, n, tokens...].
        let deferred = rows.iter().find(|row| row[0] == 4).unwrap()[2]
            .as_u64()
            .unwrap();
        assert!(dispatcher.settle(deferred, Ok(Value::Null)));
        assert_eq!(dispatcher.message_flow("e", None).slot(), first_slot);
    }

    /// JS shutting down drops queued batches unrun: their messages must not stay charged.
    #[tokio::test]
    async fn a_batch_dropped_unrun_releases_its_messages() {
        struct DroppingBridge;
        impl JsBridge for DroppingBridge {
            fn deliver(&self, _: String, in_js: BatchInJs) {
                drop(in_js);
            }
        }
        let dispatcher = Dispatcher::start(Arc::new(DroppingBridge));
        let flow = dispatcher.message_flow("c", None);
        send_message(&dispatcher, &flow, r#"{"event":"now"}"#);
        tokio::time::timeout(Duration::from_secs(1), dispatcher.flush())
            .await
            .expect("the batch's permit came back");
        assert!(flow.is_idle());
    }

    #[tokio::test]
    async fn stopping_releases_deferred_messages() {
        let bridge = Arc::new(EchoBridge {
            batches: Mutex::new(Vec::new()),
        });
        let dispatcher = Dispatcher::start(bridge.clone());
        let flow = dispatcher.message_flow("c", None);
        send_message(&dispatcher, &flow, r#"{"event":"defer"}"#);
        dispatcher.stop().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(flow.is_idle());
    }

    #[tokio::test]
    async fn after_stop_calls_are_abandoned_and_the_bridge_is_released() {
        let bridge = Arc::new(EchoBridge {
            batches: Mutex::new(Vec::new()),
        });
        let dispatcher = Dispatcher::start(bridge.clone());
        dispatcher.stop().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut call = dispatcher.call(JsCall::Authenticate {
            client_id: "c",
            data: "{}",
            request: None,
        });
        assert_eq!(call.outcome().await, CallResult::Abandoned);
        assert_eq!(
            Arc::strong_count(&bridge),
            1,
            "the runner dropped its bridge"
        );
    }

    #[tokio::test]
    async fn a_forgotten_token_is_discarded_not_delivered() {
        let bridge = Arc::new(EchoBridge {
            batches: Mutex::new(Vec::new()),
        });
        let dispatcher = Dispatcher::start(bridge.clone());
        let call = dispatcher.call(JsCall::Authenticate {
            client_id: "c",
            data: "{}",
            request: None,
        });
        let token = call.token;
        drop(call);
        assert!(!dispatcher.settle(token, Ok(Value::Null)));
        dispatcher.flush().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        dispatcher.flush().await;
        let batches = bridge.batches.lock().unwrap().clone();
        assert!(
            batches
                .iter()
                .any(|b| b.contains(&format!("[6,0,{token}]"))),
            "{batches:?}"
        );
    }
}
