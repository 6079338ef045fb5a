//! The client, user and room indexes, and local delivery over them.
//!
//! One `RwLock` guards all three indexes so they never disagree; delivery takes the read lock
//! and only pushes shared frames into per-connection queues, which is cheap enough to do
//! under it. Empty rooms and users are removed, as in the TypeScript helper.

use crate::hash::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hashbrown::HashTable;
use smallvec::SmallVec;
use std::task::{Context, Poll};

use crate::frame::{close_code, close_frame, OutboundText};
use crate::outbox::{Outbox, OutboxOwner, Push};

pub type ClientId = Arc<str>;

/// A set of clients: a room, a user's connections, the broadcast audience.
///
/// A dense list, because a fan-out walks it while every recipient's `send(2)` evicts the
/// cache: consecutive pointers are fetched ahead by the CPU, a hash table's scattered buckets
/// were not (a cache miss per recipient, measured with `perf annotate`). Members are found
/// by handle address (the list holds the handle, so the address stays theirs), by scanning
/// while the set is small and through a position index once it is not; so every client's
/// own-id room costs no allocation at all (a set of one is kept inline) instead of a hash table.
#[derive(Default)]
struct Members {
    /// Inline for one member (every own-id room, most users), as large as a `Vec` otherwise.
    list: SmallVec<[Arc<ClientHandle>; 1]>,
    /// Each member's position in `list`, hashed by the member's address: 4 bytes a slot, where
    /// a map from address to position took 16 (with the default rooms, three sets hold every
    /// client). Boxed (8 bytes instead of 32 inline): most sets never need one.
    positions: Option<Box<HashTable<u32>>>,
}

/// Sets larger than this keep a position index.
const MEMBERS_SCANNED_UP_TO: usize = 32;

fn address(handle: &ClientHandle) -> usize {
    handle as *const ClientHandle as usize
}

/// Addresses are not chosen by peers, so a multiplicative hash will do; folding the high
/// half in gives the low bits (the bucket) the entropy the low, aligned address bits lack.
fn hash_address(address: usize) -> u64 {
    let mixed = (address as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    mixed ^ (mixed >> 32)
}

/// How far ahead of a fan-out the list of members is asked for: two cache lines of pointers.
const MEMBERS_PREFETCHED_AHEAD: usize = 16;

/// Asks the CPU for the line of `list` that holds member `at` (if any). Loading the next
/// member's pointer to prefetch its handle stalled on the list itself, whose lines the
/// kernel's work in between evicts (`perf annotate`).
fn prefetch_pointers(list: &[Arc<ClientHandle>], at: usize) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (list, at);
    #[cfg(target_arch = "x86_64")]
    if at < list.len() {
        // SAFETY: a prefetch is a hint; it reads nothing and cannot fault.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(list.as_ptr().add(at).cast());
        }
    }
}

fn hash_position(list: &[Arc<ClientHandle>], at: u32) -> u64 {
    hash_address(address(&list[at as usize]))
}

impl Members {
    fn position(&self, handle: &ClientHandle) -> Option<usize> {
        let key = address(handle);
        match &self.positions {
            Some(positions) => positions
                .find(hash_address(key), |&at| {
                    address(&self.list[at as usize]) == key
                })
                .map(|&at| at as usize),
            None => self.list.iter().position(|member| address(member) == key),
        }
    }

    fn insert(&mut self, handle: &Arc<ClientHandle>) {
        if self.position(handle).is_some() {
            return;
        }
        self.list.push(handle.clone());
        let Members { list, positions } = self;
        match positions {
            Some(positions) => {
                let at = (list.len() - 1) as u32;
                positions.insert_unique(hash_address(address(handle)), at, |&at| {
                    hash_position(list, at)
                });
            }
            None if list.len() > MEMBERS_SCANNED_UP_TO => {
                let mut index = HashTable::with_capacity(list.len() * 2);
                for at in 0..list.len() as u32 {
                    index.insert_unique(hash_position(list, at), at, |&at| hash_position(list, at));
                }
                *positions = Some(Box::new(index));
            }
            None => {}
        }
    }

    fn remove(&mut self, handle: &ClientHandle) {
        let Some(at) = self.position(handle) else {
            return;
        };
        let last = self.list.len() - 1;
        self.list.swap_remove(at);
        let Members { list, positions } = self;
        if let Some(positions) = positions {
            if let Ok(entry) =
                positions.find_entry(hash_address(address(handle)), |&i| i as usize == at)
            {
                entry.remove();
            }
            // The last member moved into the freed position.
            if let Some(moved) = list.get(at) {
                if let Some(slot) =
                    positions.find_mut(hash_address(address(moved)), |&i| i as usize == last)
                {
                    *slot = at as u32;
                }
            }
        }
        // A room that was large and emptied out gives its memory back.
        if list.capacity() > 64 && list.len() < list.capacity() / 4 {
            list.grow(list.len() * 2);
            if let Some(positions) = positions {
                positions.shrink_to(list.len() * 2, |&at| hash_position(list, at));
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, Arc<ClientHandle>> {
        self.list.iter()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Unauthorized,
    Authenticating,
    Authenticated,
}

impl ClientState {
    /// The `WebSocketClientStates` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Unauthorized => "unauthorized",
            ClientState::Authenticating => "authenticating",
            ClientState::Authenticated => "authenticated",
        }
    }
}

/// What every holder of a connection may do with it: queue frames, start closing it, and
/// read its activity. Owned jointly by the index and the connection's tasks.
pub struct ClientHandle {
    pub id: ClientId,
    /// Kept as an address, formatted when asked for: one allocation less per connection.
    pub remote_address: SocketAddr,
    pub connected_at: u64,
    last_activity: AtomicU64,
    /// When the peer last sent anything (any frame, pongs included), in
    /// [`crate::server::monotonic_ms`]: what `idleTimeout` measures.
    last_received: AtomicU64,
    /// A transport ping went out and nothing has arrived since.
    ping_outstanding: AtomicBool,
    outbox: Outbox,
    close_on_backpressure_limit: bool,
    /// permessage-deflate was negotiated: text messages may go out compressed.
    deflate: bool,
    /// Set once when a close frame is queued, so the reader stops routing messages.
    close_started: AtomicBool,
    /// The connection's reader task, woken when `close_started` is set.
    close_waker: AtomicWaker,
    /// Set once, never cleared: encryption cannot be turned off for a connection. Boxed:
    /// most connections never have it, and it is 40 bytes more in each of them inline.
    encryption: OnceLock<Box<Encryption>>,
}

/// A client's encryption, from `handshakeFn` (keys) or `enableClientEncryption` (none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encryption {
    pub server_public_key: Option<String>,
    pub salt: Option<String>,
}

/// Where messages for encrypted clients go instead of their sockets: the application's
/// `outboundTransformer`. Only installed when one is configured; without it encrypted
/// clients get the shared frame like everyone else.
pub trait EncryptedDelivery: Send + Sync {
    /// `message`: the `{ event, data }` JSON text; `clients`: its encrypted recipients.
    fn transform(&self, message: &str, clients: Vec<ClientId>);
}

impl ClientHandle {
    pub fn new(
        id: ClientId,
        remote_address: SocketAddr,
        now: u64,
        backpressure_limit: usize,
        close_on_backpressure_limit: bool,
        deflate: bool,
    ) -> Self {
        ClientHandle {
            id,
            remote_address,
            connected_at: now,
            last_activity: AtomicU64::new(now),
            last_received: AtomicU64::new(crate::server::monotonic_ms()),
            ping_outstanding: AtomicBool::new(false),
            outbox: Outbox::new(backpressure_limit),
            close_on_backpressure_limit,
            deflate,
            close_started: AtomicBool::new(false),
            close_waker: AtomicWaker::new(),
            encryption: OnceLock::new(),
        }
    }

    /// Marks the connection encrypted. False when it already was (the first keys stay).
    pub fn enable_encryption(&self, encryption: Encryption) -> bool {
        self.encryption.set(Box::new(encryption)).is_ok()
    }

    pub fn encryption(&self) -> Option<&Encryption> {
        self.encryption.get().map(|encryption| &**encryption)
    }

    pub fn is_encrypted(&self) -> bool {
        self.encryption.get().is_some()
    }

    pub fn send(self: &Arc<Self>, frame: &Bytes) -> Push {
        let result = self
            .outbox
            .push(frame, || self.clone() as Arc<dyn OutboxOwner>);
        if result == Push::Dropped && self.close_on_backpressure_limit {
            self.close(close_code::POLICY_VIOLATION, "Backpressure limit exceeded");
        }
        result
    }

    /// Whether permessage-deflate was negotiated (RSV1 may mark its messages).
    pub fn deflates(&self) -> bool {
        self.deflate
    }

    /// Queues a text message, compressed when this client negotiated permessage-deflate
    /// and compressing pays.
    pub fn send_text(self: &Arc<Self>, message: &OutboundText) -> Push {
        self.send(message.frame(self.deflate))
    }

    /// Starts the close handshake. Returns false when the connection is already closing.
    pub fn close(&self, code: u16, reason: &str) -> bool {
        let started = self.outbox.close(close_frame(code, reason));
        if started {
            self.close_started.store(true, Ordering::Release);
            self.close_waker.wake();
        }
        started
    }

    pub fn is_closing(&self) -> bool {
        self.outbox.is_closing()
    }

    /// Ready once a close frame was queued. For the connection's own task only: one waker
    /// is kept, the last task to poll.
    pub fn poll_close_started(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.close_started.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.close_waker.register(cx.waker());
        if self.close_started.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub async fn close_started(&self) {
        std::future::poll_fn(|cx| self.poll_close_started(cx)).await
    }

    /// Asks the CPU to load what a delivery to this client reads. A fan-out's recipients
    /// are rarely in cache (a send's kernel work evicts them), and each one's first access
    /// was the most expensive instruction of the loop (measured with `perf annotate`);
    /// requested one recipient ahead, the load overlaps the previous recipient's `send(2)`.
    fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint; it reads nothing and cannot fault.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>((self as *const Self).cast());
            _mm_prefetch::<_MM_HINT_T0>((&self.deflate as *const bool).cast());
            // The outbox spans two or three cache lines, and `push` reads its flags, which
            // may sit in the last: every line, or that load stalls instead (measured).
            let outbox = (&self.outbox as *const Outbox).cast::<i8>();
            _mm_prefetch::<_MM_HINT_T0>(outbox);
            _mm_prefetch::<_MM_HINT_T0>(outbox.wrapping_add(64));
            _mm_prefetch::<_MM_HINT_T0>(outbox.wrapping_add(std::mem::size_of::<Outbox>() - 1));
        }
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn touch(&self, now: u64) {
        self.last_activity.store(now, Ordering::Relaxed);
    }

    pub fn last_activity(&self) -> u64 {
        self.last_activity.load(Ordering::Relaxed)
    }

    /// The peer sent something (transport traffic, not necessarily a message).
    pub fn received(&self, monotonic_now: u64) {
        self.last_received.store(monotonic_now, Ordering::Relaxed);
        if self.ping_outstanding.load(Ordering::Relaxed) {
            self.ping_outstanding.store(false, Ordering::Relaxed);
        }
    }

    /// How long the peer has been silent, for the idle sweep.
    pub fn silent_for(&self, monotonic_now: u64) -> u64 {
        monotonic_now.saturating_sub(self.last_received.load(Ordering::Relaxed))
    }

    /// Marks a transport ping as sent; false when one is already waiting for traffic.
    pub fn start_ping(&self) -> bool {
        !self.ping_outstanding.swap(true, Ordering::Relaxed)
    }
}

impl OutboxOwner for ClientHandle {
    fn outbox(&self) -> &Outbox {
        &self.outbox
    }
}

struct Entry {
    handle: Arc<ClientHandle>,
    state: ClientState,
    user_id: Option<Arc<str>>,
    rooms: ClientRooms,
}

/// The rooms one client is in: its own id and the default rooms (three, by default) fit
/// inline, with no allocation; a hash set took 48 bytes here and 96 more on the heap for every
/// client. Scanned while short; a client that joins many rooms (a flood of joins, say) gets a
/// hash set, so each join stays a constant-time check instead of a scan of every room.
enum ClientRooms {
    Few(SmallVec<[Arc<str>; 3]>),
    Many(HashSet<Arc<str>>),
}

/// A client's room list longer than this becomes a hash set.
const CLIENT_ROOMS_SCANNED_UP_TO: usize = 32;

impl Default for ClientRooms {
    fn default() -> Self {
        ClientRooms::Few(SmallVec::new())
    }
}

impl ClientRooms {
    /// False when the client was in the room already.
    fn insert(&mut self, room: Arc<str>) -> bool {
        match self {
            ClientRooms::Many(set) => set.insert(room),
            ClientRooms::Few(list) => {
                if list.contains(&room) {
                    return false;
                }
                list.push(room);
                if list.len() > CLIENT_ROOMS_SCANNED_UP_TO {
                    *self = ClientRooms::Many(list.drain(..).collect());
                }
                true
            }
        }
    }

    fn remove(&mut self, room: &str) -> bool {
        match self {
            ClientRooms::Many(set) => set.remove(room),
            ClientRooms::Few(list) => match list.iter().position(|joined| &**joined == room) {
                Some(at) => {
                    list.swap_remove(at);
                    true
                }
                None => false,
            },
        }
    }

    fn contains(&self, room: &str) -> bool {
        match self {
            ClientRooms::Many(set) => set.contains(room),
            ClientRooms::Few(list) => list.iter().any(|joined| &**joined == room),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        let (few, many) = match self {
            ClientRooms::Few(list) => (Some(list.iter()), None),
            ClientRooms::Many(set) => (None, Some(set.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

/// A copy of one client's fields, for `getClients()` and friends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSnapshot {
    pub id: String,
    pub user_id: Option<String>,
    pub state: ClientState,
    pub rooms: Vec<String>,
    pub backpressured: bool,
    /// Frames dropped because the queue was over its limit, over the connection's life.
    pub dropped_messages: u64,
    pub buffered_amount: usize,
    pub encrypted: bool,
    pub server_public_key: Option<String>,
    pub salt: Option<String>,
    pub connected_at: u64,
    pub last_activity: u64,
    pub remote_address: String,
}

/// A client taken out of the index.
#[derive(Debug)]
pub struct Removed {
    pub user_id: Option<Arc<str>>,
    pub state: ClientState,
}

/// A client the index accepted as authenticated.
#[derive(Debug)]
pub struct Authenticated {
    /// The user id as the user index keeps it: connections share one copy.
    pub user_id: Option<Arc<str>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuthStart {
    Started,
    /// Authenticating or authenticated already: the spec answers 'Already authenticated'.
    NotUnauthorized,
    Unknown,
}

#[derive(Default)]
struct Index {
    clients: HashMap<ClientId, Entry>,
    users: HashMap<Arc<str>, Members>,
    rooms: HashMap<Arc<str>, Members>,
    /// Authenticated clients: the broadcast audience.
    authenticated: Members,
    /// Connections by message slot, the small number JS knows a message's sender by
    /// (`Dispatcher::message_flow`): a reply to the sender of the message JS is handling,
    /// the common case, finds its connection without reading and hashing a 36-character id.
    senders: Vec<Option<Arc<ClientHandle>>>,
}

#[derive(Default)]
pub struct Hub {
    index: RwLock<Index>,
    encrypted_delivery: OnceLock<Arc<dyn EncryptedDelivery>>,
}

/// `exclude` lists are usually a handful of ids; a set only pays off for long ones.
enum Exclusions<'a> {
    List(&'a [String]),
    Set(HashSet<&'a str>),
}

impl<'a> Exclusions<'a> {
    fn new(exclude: &'a [String]) -> Self {
        if exclude.len() > 8 {
            Exclusions::Set(exclude.iter().map(String::as_str).collect())
        } else {
            Exclusions::List(exclude)
        }
    }

    fn contains(&self, id: &str) -> bool {
        match self {
            Exclusions::List(list) => list.iter().any(|excluded| excluded == id),
            Exclusions::Set(set) => set.contains(id),
        }
    }
}

fn insert_member(
    map: &mut HashMap<Arc<str>, Members>,
    key: &str,
    handle: &Arc<ClientHandle>,
) -> Arc<str> {
    let key = match map.get_key_value(key) {
        Some((existing, _)) => existing.clone(),
        None => Arc::from(key),
    };
    map.entry(key.clone()).or_default().insert(handle);
    key
}

fn remove_member(map: &mut HashMap<Arc<str>, Members>, key: &str, handle: &ClientHandle) {
    if let Some(members) = map.get_mut(key) {
        members.remove(handle);
        if members.is_empty() {
            map.remove(key);
        }
    }
}

impl Hub {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn register(&self, handle: Arc<ClientHandle>) {
        let entry = Entry {
            handle: handle.clone(),
            state: ClientState::Unauthorized,
            user_id: None,
            rooms: ClientRooms::default(),
        };
        self.write().clients.insert(handle.id.clone(), entry);
    }

    pub fn begin_authentication(&self, id: &str) -> AuthStart {
        match self.write().clients.get_mut(id) {
            None => AuthStart::Unknown,
            Some(entry) if entry.state != ClientState::Unauthorized => AuthStart::NotUnauthorized,
            Some(entry) => {
                entry.state = ClientState::Authenticating;
                AuthStart::Started
            }
        }
    }

    /// Marks the client authenticated, indexes its user, joins its own id room and the
    /// default rooms, and adds it to the broadcast audience. None if it is gone.
    pub fn complete_authentication(
        &self,
        id: &str,
        user_id: Option<&str>,
        default_rooms: &[String],
    ) -> Option<Authenticated> {
        let mut guard = self.write();
        let index = &mut *guard;
        let entry = index.clients.get_mut(id)?;
        entry.state = ClientState::Authenticated;
        let handle = entry.handle.clone();
        if let Some(user) = user_id {
            entry.user_id = Some(insert_member(&mut index.users, user, &handle));
        }
        index.authenticated.insert(&handle);
        // The own-id room shares the id's allocation.
        index
            .rooms
            .entry(handle.id.clone())
            .or_default()
            .insert(&handle);
        entry.rooms.insert(handle.id.clone());
        for room in default_rooms {
            let room = insert_member(&mut index.rooms, room, &handle);
            entry.rooms.insert(room);
        }
        Some(Authenticated {
            user_id: entry.user_id.clone(),
        })
    }

    pub fn join(&self, id: &str, room: &str) -> bool {
        let mut guard = self.write();
        let index = &mut *guard;
        let Some(entry) = index.clients.get_mut(id) else {
            return false;
        };
        let room = insert_member(&mut index.rooms, room, &entry.handle);
        entry.rooms.insert(room);
        true
    }

    pub fn leave(&self, id: &str, room: &str) -> bool {
        let mut guard = self.write();
        let index = &mut *guard;
        let Some(entry) = index.clients.get_mut(id) else {
            return false;
        };
        let was_member = entry.rooms.remove(room);
        remove_member(&mut index.rooms, room, &entry.handle);
        was_member
    }

    /// The subset of `rooms` the client is in.
    pub fn rooms_of_client_among(&self, id: &str, rooms: &[String]) -> Vec<String> {
        let index = self.read();
        let Some(entry) = index.clients.get(id) else {
            return Vec::new();
        };
        rooms
            .iter()
            .filter(|room| entry.rooms.contains(room.as_str()))
            .cloned()
            .collect()
    }

    pub fn remove(&self, id: &str) -> Option<Removed> {
        let mut guard = self.write();
        let index = &mut *guard;
        let entry = index.clients.remove(id)?;
        if let Some(user) = &entry.user_id {
            remove_member(&mut index.users, user, &entry.handle);
        }
        for room in entry.rooms.iter() {
            remove_member(&mut index.rooms, room, &entry.handle);
        }
        index.authenticated.remove(&entry.handle);
        Some(Removed {
            user_id: entry.user_id,
            state: entry.state,
        })
    }

    pub fn state(&self, id: &str) -> Option<ClientState> {
        self.read().clients.get(id).map(|entry| entry.state)
    }

    pub fn user_of(&self, id: &str) -> Option<Arc<str>> {
        self.read()
            .clients
            .get(id)
            .and_then(|entry| entry.user_id.clone())
    }

    pub fn has_client(&self, id: &str) -> bool {
        self.read().clients.contains_key(id)
    }

    pub fn has_room(&self, room: &str) -> bool {
        self.read().rooms.contains_key(room)
    }

    pub fn handle(&self, id: &str) -> Option<Arc<ClientHandle>> {
        self.read()
            .clients
            .get(id)
            .map(|entry| entry.handle.clone())
    }

    pub fn len(&self) -> usize {
        self.read().clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn all_handles(&self) -> Vec<Arc<ClientHandle>> {
        self.read()
            .clients
            .values()
            .map(|entry| entry.handle.clone())
            .collect()
    }

    /// Every connection (authenticated or not) for which `select` holds, collected under
    /// the read lock so only those are cloned out.
    pub fn handles_where(&self, select: impl Fn(&ClientHandle) -> bool) -> Vec<Arc<ClientHandle>> {
        self.read()
            .clients
            .values()
            .filter(|entry| select(&entry.handle))
            .map(|entry| entry.handle.clone())
            .collect()
    }

    /// Authenticated clients silent for more than `timeout_ms`.
    pub fn stale(&self, now: u64, timeout_ms: u64) -> Vec<Arc<ClientHandle>> {
        self.read()
            .authenticated
            .iter()
            .filter(|handle| now.saturating_sub(handle.last_activity()) > timeout_ms)
            .cloned()
            .collect()
    }

    fn snapshot_of(entry: &Entry) -> ClientSnapshot {
        let encryption = entry.handle.encryption();
        ClientSnapshot {
            id: entry.handle.id.to_string(),
            user_id: entry.user_id.as_deref().map(str::to_string),
            state: entry.state,
            rooms: entry.rooms.iter().map(|room| room.to_string()).collect(),
            backpressured: entry.handle.outbox().is_backpressured(),
            dropped_messages: entry.handle.outbox().dropped(),
            buffered_amount: entry.handle.outbox().buffered(),
            encrypted: encryption.is_some(),
            server_public_key: encryption.and_then(|e| e.server_public_key.clone()),
            salt: encryption.and_then(|e| e.salt.clone()),
            connected_at: entry.handle.connected_at,
            last_activity: entry.handle.last_activity(),
            remote_address: entry.handle.remote_address.to_string(),
        }
    }

    pub fn snapshot(&self, id: &str) -> Option<ClientSnapshot> {
        self.read().clients.get(id).map(Self::snapshot_of)
    }

    pub fn snapshots(&self) -> Vec<ClientSnapshot> {
        self.read()
            .clients
            .values()
            .map(Self::snapshot_of)
            .collect()
    }

    fn snapshots_of(index: &Index, members: Option<&Members>) -> Vec<ClientSnapshot> {
        members
            .into_iter()
            .flat_map(Members::iter)
            .filter_map(|member| index.clients.get(&member.id).map(Self::snapshot_of))
            .collect()
    }

    pub fn snapshots_of_user(&self, user_id: &str) -> Vec<ClientSnapshot> {
        let index = self.read();
        Self::snapshots_of(&index, index.users.get(user_id))
    }

    pub fn snapshots_of_room(&self, room: &str) -> Vec<ClientSnapshot> {
        let index = self.read();
        Self::snapshots_of(&index, index.rooms.get(room))
    }

    /// Sends what reaches encrypted clients through `delivery` from now on.
    pub fn set_encrypted_delivery(&self, delivery: Arc<dyn EncryptedDelivery>) {
        let _ = self.encrypted_delivery.set(delivery);
    }

    /// Marks a client encrypted (`enableClientEncryption`). False for an unknown client or
    /// one that already is.
    pub fn enable_encryption(&self, id: &str, encryption: Encryption) -> bool {
        self.handle(id)
            .is_some_and(|handle| handle.enable_encryption(encryption))
    }

    /// Hands a message for encrypted recipients to the transformer.
    fn transform(&self, message: &OutboundText, clients: Vec<ClientId>) {
        if let Some(delivery) = self.encrypted_delivery.get() {
            delivery.transform(message.text(), clients);
        }
    }

    /// Queues a message for one client without the transformer (`socket.send`, and what the
    /// transformer produced).
    pub fn send_as_is(&self, id: &str, message: &OutboundText) -> Option<Push> {
        Some(self.handle(id)?.send_text(message))
    }

    pub fn send_to_client(&self, id: &str, message: &OutboundText) -> Option<Push> {
        Some(self.send_to_handle(&self.handle(id)?, message))
    }

    /// Names the connection that sends with message slot `slot`, from its first message on.
    pub fn name_sender(&self, slot: u32, handle: &Arc<ClientHandle>) {
        let senders = &mut self.write().senders;
        let at = slot as usize;
        if senders.len() <= at {
            senders.resize(at + 1, None);
        }
        senders[at] = Some(handle.clone());
    }

    /// Forgets the connection behind `slot`, if it is still `handle` (a slot is only reused
    /// after this, but a stale call must not forget the next holder).
    pub fn forget_sender(&self, slot: u32, handle: &ClientHandle) {
        if let Some(named) = self.write().senders.get_mut(slot as usize) {
            if named
                .as_deref()
                .is_some_and(|named| std::ptr::eq(named, handle))
            {
                *named = None;
            }
        }
    }

    /// The connection behind message slot `slot`. JS asks only while it handles a message
    /// from that slot, and a slot is not reused before JS is done with its messages, so
    /// this is the sender of that message (or nobody, once its connection ended).
    pub fn sender(&self, slot: u32) -> Option<Arc<ClientHandle>> {
        self.read().senders.get(slot as usize)?.clone()
    }

    /// `sendToClient` for a client already found.
    pub fn send_to_handle(&self, handle: &Arc<ClientHandle>, message: &OutboundText) -> Push {
        if handle.is_encrypted() && self.encrypted_delivery.get().is_some() {
            self.transform(message, vec![handle.id.clone()]);
            // Sent once the transformer is done; what Bun's send() would report for it.
            return Push::Queued(message.plain_frame_len());
        }
        handle.send_text(message)
    }

    /// Queues the shared frame for every plain member; encrypted members (when a transformer
    /// is configured) are collected for it instead. Returns how many were reached.
    fn deliver(
        &self,
        members: Option<&Members>,
        message: &OutboundText,
        exclude: &[String],
    ) -> (usize, Vec<ClientId>) {
        let Some(members) = members else {
            return (0, Vec::new());
        };
        let transforming = self.encrypted_delivery.get().is_some();
        let exclusions = Exclusions::new(exclude);
        let mut delivered = 0;
        let mut encrypted = Vec::new();
        let list = &members.list[..];
        for (at, handle) in list.iter().enumerate() {
            prefetch_pointers(list, at + MEMBERS_PREFETCHED_AHEAD);
            if let Some(next) = list.get(at + 1) {
                next.prefetch();
            }
            let id = &handle.id;
            if !exclude.is_empty() && exclusions.contains(id) {
                continue;
            }
            if transforming && handle.is_encrypted() {
                encrypted.push(id.clone());
                delivered += 1;
                continue;
            }
            if matches!(
                handle.send_text(message),
                Push::Queued(_) | Push::Backpressured
            ) {
                delivered += 1;
            }
        }
        (delivered, encrypted)
    }

    /// Delivers to `members` of the index, then hands the encrypted ones to the transformer
    /// outside the lock.
    fn deliver_to(
        &self,
        members: impl FnOnce(&Index) -> Option<&Members>,
        message: &OutboundText,
        exclude: &[String],
    ) -> usize {
        let (delivered, encrypted) = {
            let index = self.read();
            self.deliver(members(&index), message, exclude)
        };
        if !encrypted.is_empty() {
            self.transform(message, encrypted);
        }
        delivered
    }

    /// Returns how many clients the message was queued (or handed to the transformer) for.
    pub fn send_to_user(&self, user_id: &str, message: &OutboundText) -> usize {
        self.deliver_to(|index| index.users.get(user_id), message, &[])
    }

    pub fn send_to_room(&self, room: &str, message: &OutboundText, exclude: &[String]) -> usize {
        self.deliver_to(|index| index.rooms.get(room), message, exclude)
    }

    pub fn broadcast(&self, message: &OutboundText, exclude: &[String]) -> usize {
        self.deliver_to(|index| Some(&index.authenticated), message, exclude)
    }

    pub fn clear(&self) {
        *self.write() = Index::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(hub: &Hub, id: &str) -> Arc<ClientHandle> {
        let handle = Arc::new(ClientHandle::new(
            Arc::from(id),
            SocketAddr::from(([127, 0, 0, 1], 1)),
            1000,
            1 << 20,
            false,
            id.starts_with('z'),
        ));
        hub.register(handle.clone());
        handle
    }

    fn authenticated(hub: &Hub, id: &str, user: Option<&str>) -> Arc<ClientHandle> {
        let handle = client(hub, id);
        assert_eq!(hub.begin_authentication(id), AuthStart::Started);
        assert!(hub
            .complete_authentication(id, user, &["ws-default".into(), "ws-notification".into()])
            .is_some());
        handle
    }

    fn sorted(mut list: Vec<String>) -> Vec<String> {
        list.sort();
        list
    }

    #[test]
    fn a_message_slot_names_its_sender_until_forgotten_by_that_sender() {
        let hub = Hub::default();
        let (a, b) = (client(&hub, "a"), client(&hub, "b"));
        assert!(hub.sender(0).is_none());
        hub.name_sender(2, &a);
        assert!(hub.sender(0).is_none() && hub.sender(1).is_none());
        assert!(Arc::ptr_eq(&hub.sender(2).unwrap(), &a));
        hub.forget_sender(2, &a);
        assert!(hub.sender(2).is_none());
        hub.name_sender(2, &b);
        // A late forget by the previous holder leaves the next one named.
        hub.forget_sender(2, &a);
        assert!(Arc::ptr_eq(&hub.sender(2).unwrap(), &b));
        assert!(matches!(
            hub.send_to_handle(&b, &OutboundText::new("x")),
            Push::Queued(_)
        ));
        hub.clear();
        assert!(hub.sender(2).is_none());
    }

    #[test]
    fn authentication_indexes_user_and_joins_own_and_default_rooms() {
        let hub = Hub::default();
        client(&hub, "a");
        assert_eq!(hub.state("a"), Some(ClientState::Unauthorized));
        assert_eq!(hub.begin_authentication("a"), AuthStart::Started);
        assert_eq!(hub.begin_authentication("a"), AuthStart::NotUnauthorized);
        assert_eq!(hub.begin_authentication("zz"), AuthStart::Unknown);
        let accepted = hub.complete_authentication("a", Some("u1"), &["ws-default".into()]);
        assert_eq!(accepted.unwrap().user_id.as_deref(), Some("u1"));
        let snapshot = hub.snapshot("a").unwrap();
        assert_eq!(snapshot.state, ClientState::Authenticated);
        assert_eq!(snapshot.user_id.as_deref(), Some("u1"));
        assert_eq!(sorted(snapshot.rooms), vec!["a", "ws-default"]);
        assert_eq!(hub.snapshots_of_user("u1").len(), 1);
        assert!(hub.has_room("a"));
        assert!(hub.complete_authentication("gone", None, &[]).is_none());
        // A user's connections share one copy of its id: the index's.
        client(&hub, "b");
        hub.begin_authentication("b");
        let second = hub.complete_authentication("b", Some("u1"), &[]).unwrap();
        let first = hub.user_of("a").unwrap();
        assert!(Arc::ptr_eq(&first, &second.user_id.unwrap()));
    }

    #[test]
    fn removal_cleans_every_index_and_drops_empty_entries() {
        let hub = Hub::default();
        authenticated(&hub, "a", Some("u1"));
        authenticated(&hub, "b", Some("u1"));
        hub.join("a", "lobby");
        let removed = hub.remove("a").unwrap();
        assert_eq!(removed.user_id.as_deref(), Some("u1"));
        assert!(!hub.has_room("a"));
        assert!(!hub.has_room("lobby"));
        assert!(hub.has_room("ws-default"));
        assert_eq!(hub.snapshots_of_user("u1").len(), 1);
        hub.remove("b");
        assert!(hub.snapshots_of_user("u1").is_empty());
        assert!(!hub.has_room("ws-default"));
        assert!(hub.is_empty());
        assert!(hub.remove("b").is_none());
    }

    #[test]
    fn leave_only_affects_rooms_the_client_is_in() {
        let hub = Hub::default();
        authenticated(&hub, "a", None);
        authenticated(&hub, "b", None);
        hub.join("b", "lobby");
        assert_eq!(
            hub.rooms_of_client_among("a", &["lobby".into(), "ws-default".into()]),
            vec!["ws-default"]
        );
        assert!(!hub.leave("a", "lobby"));
        assert_eq!(hub.snapshots_of_room("lobby").len(), 1);
        assert!(hub.leave("b", "lobby"));
        assert!(!hub.has_room("lobby"));
    }

    #[tokio::test]
    async fn delivery_shares_one_frame_and_honours_exclusions() {
        let hub = Hub::default();
        let a = authenticated(&hub, "a", Some("u"));
        let b = authenticated(&hub, "b", Some("u"));
        let pending = client(&hub, "c");
        let message = OutboundText::new(&"frame ".repeat(50));
        let frame = message.frame(false);
        let frame = &frame;
        let compressed = authenticated(&hub, "z", None);
        let message = &message;
        assert_eq!(hub.broadcast(message, &["z".into()]), 2);
        assert_eq!(hub.broadcast(message, &["a".into(), "z".into()]), 1);
        assert_eq!(
            hub.send_to_room("ws-default", message, &["b".into(), "z".into()]),
            1
        );
        assert_eq!(hub.send_to_room("nowhere", message, &[]), 0);
        assert_eq!(hub.send_to_user("u", message), 2);
        assert!(hub.send_to_client("c", message).is_some());
        assert!(hub.send_to_client("nobody", message).is_none());
        let a_frames = a.outbox().next_batch().unwrap().frames;
        assert_eq!(a_frames.len(), 3);
        // The same allocation reached every queue.
        assert_eq!(a_frames[0].as_ptr(), frame.as_ptr());
        assert_eq!(b.outbox().next_batch().unwrap().frames.len(), 3);
        assert_eq!(pending.outbox().next_batch().unwrap().frames.len(), 1);
        let many: Vec<String> = (0..20)
            .map(|i| format!("x{i}"))
            .chain(["b".to_string(), "z".to_string()])
            .collect();
        assert_eq!(hub.broadcast(message, &many), 1);
        // A client that negotiated permessage-deflate gets the one compressed frame.
        assert_eq!(hub.send_to_room("ws-default", message, &[]), 3);
        let z_frame = compressed.outbox().next_batch().unwrap().frames.remove(0);
        assert_eq!(z_frame[0], 0xC1);
        assert_eq!(z_frame.as_ptr(), message.frame(true).as_ptr());
    }

    #[test]
    fn finds_stale_authenticated_clients_only() {
        let hub = Hub::default();
        let a = authenticated(&hub, "a", None);
        client(&hub, "idle-unauthorized");
        a.touch(5000);
        assert!(hub.stale(5000 + 100, 100).is_empty());
        assert_eq!(hub.stale(5000 + 101, 100).len(), 1);
    }

    #[test]
    fn members_stay_consistent_across_the_position_map_threshold() {
        let hub = Hub::default();
        let handles: Vec<_> = (0..100).map(|i| client(&hub, &format!("m{i}"))).collect();
        let mut members = Members::default();
        for handle in &handles {
            members.insert(handle);
            members.insert(handle); // a second insert changes nothing
        }
        assert_eq!(members.list.len(), 100);
        assert!(members.positions.is_some());
        // Remove every other one, from both ends, so swap_remove moves members around.
        for handle in handles.iter().step_by(2).rev() {
            members.remove(handle);
            members.remove(handle); // nor does a second remove
        }
        let mut left: Vec<&str> = members.iter().map(|member| &*member.id).collect();
        left.sort_unstable();
        let mut expected: Vec<&str> = handles.iter().skip(1).step_by(2).map(|h| &*h.id).collect();
        expected.sort_unstable();
        assert_eq!(left, expected);
        for (at, member) in members.list.iter().enumerate() {
            assert_eq!(members.position(member), Some(at));
        }
        for handle in &handles {
            members.remove(handle);
        }
        assert!(members.is_empty());
        assert!(members.list.capacity() <= 64);
        // A set of one (every own-id room) needs no allocation.
        let mut one = Members::default();
        one.insert(&handles[0]);
        assert!(!one.list.spilled());
    }

    #[test]
    fn a_client_keeps_any_number_of_rooms() {
        let hub = Hub::default();
        authenticated(&hub, "a", None);
        // Past the scanned list's length, so the rooms move into a hash set on the way.
        let rooms: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
        for room in &rooms {
            assert!(hub.join("a", room));
        }
        assert!(hub.join("a", "r3")); // joining again changes nothing
        for room in &rooms[..4] {
            assert!(hub.leave("a", room));
        }
        assert!(hub
            .rooms_of_client_among("a", &["r3".into(), "r4".into()])
            .eq(&["r4".to_string()]));
        assert!(!hub.leave("a", "r0"));
        let mut expected: Vec<String> = rooms[4..].to_vec();
        expected.extend(["a".into(), "ws-default".into(), "ws-notification".into()]);
        assert_eq!(sorted(hub.snapshot("a").unwrap().rooms), sorted(expected));
        assert_eq!(hub.snapshots_of_room("r3").len(), 0);
        assert_eq!(hub.snapshots_of_room("r9").len(), 1);
    }
}
