//! `NativeServer`: the native half of `WebSocketServerHelper` (lib/server.js is the other).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use napi::bindgen_prelude::{within_runtime_if_available, External, Function, PromiseRaw};
use napi::{Env, Result};
use napi_derive::napi;

use super::bridge::{DispatchFn, TsfnBridge};
use super::to_js_error;
use crate::broker::{RedisNodes, RedisTarget, RedisTls};
use crate::config::ServerConfig;
use crate::error::Error;
use crate::hub::ClientSnapshot;
use crate::server::{self, Server};

/// Settings, validated and defaulted by `lib/options.js`. Durations in milliseconds.
#[napi(object)]
pub struct NativeServerOptions {
    pub host: String,
    pub port: u32,
    pub path: String,
    pub default_rooms: Vec<String>,
    pub auth_timeout: u32,
    pub heartbeat_interval: u32,
    pub heartbeat_timeout: u32,
    pub callback_timeout: u32,
    pub max_payload_length: u32,
    /// Seconds; 0: never.
    pub idle_timeout: u32,
    pub send_pings: bool,
    pub upgrade_timeout: u32,
    pub allowed_origins: Vec<String>,
    pub has_verify_upgrade_fn: bool,
    pub per_message_deflate: bool,
    pub backpressure_limit: u32,
    pub close_on_backpressure_limit: bool,
    pub has_validate_room_fn: bool,
    pub has_message_handler: bool,
    pub has_client_connected_fn: bool,
    pub require_encryption: bool,
    pub has_handshake_fn: bool,
    pub has_outbound_transformer: bool,
    /// Bits: 1 debug, 2 info, 4 warn, 8 error.
    pub log_levels: u32,
    /// Absent: standalone.
    pub redis: Option<RedisConnection>,
    pub server_id: String,
}

/// A Redis server (`url`) or the seed nodes of a cluster (`nodes`), as `redis://` or
/// `rediss://` URLs, and TLS settings (lib/redis-connection.js reads them from a RedisHelper,
/// a URL or an options object).
#[napi(object)]
pub struct RedisConnection {
    pub url: Option<String>,
    pub nodes: Option<Vec<String>>,
    pub tls: Option<RedisTlsOptions>,
}

/// ioredis' `tls` option, reduced to what the bridge uses: PEM texts and whether the
/// server's certificate is checked.
#[napi(object)]
pub struct RedisTlsOptions {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub reject_unauthorized: bool,
}

impl RedisConnection {
    pub(crate) fn into_target(self) -> Option<RedisTarget> {
        let nodes = match (self.url, self.nodes) {
            (_, Some(nodes)) if !nodes.is_empty() => RedisNodes::Cluster(nodes),
            (Some(url), _) => RedisNodes::Single(url),
            _ => return None,
        };
        let tls = self.tls.map(|tls| RedisTls {
            ca: tls.ca,
            cert: tls.cert,
            key: tls.key,
            insecure: !tls.reject_unauthorized,
        });
        Some(RedisTarget { nodes, tls })
    }
}

impl From<NativeServerOptions> for ServerConfig {
    fn from(options: NativeServerOptions) -> Self {
        let ms = |value: u32| Duration::from_millis(u64::from(value));
        ServerConfig {
            host: options.host,
            port: options.port as u16,
            path: options.path,
            default_rooms: options.default_rooms,
            auth_timeout: ms(options.auth_timeout),
            heartbeat_interval: ms(options.heartbeat_interval),
            heartbeat_timeout: ms(options.heartbeat_timeout),
            callback_timeout: ms(options.callback_timeout),
            max_payload_length: options.max_payload_length as usize,
            idle_timeout: Duration::from_secs(u64::from(options.idle_timeout)),
            send_pings: options.send_pings,
            upgrade_timeout: ms(options.upgrade_timeout),
            allowed_origins: options.allowed_origins,
            has_verify_upgrade_fn: options.has_verify_upgrade_fn,
            per_message_deflate: options.per_message_deflate,
            backpressure_limit: options.backpressure_limit as usize,
            close_on_backpressure_limit: options.close_on_backpressure_limit,
            has_validate_room_fn: options.has_validate_room_fn,
            has_message_handler: options.has_message_handler,
            has_client_connected_fn: options.has_client_connected_fn,
            require_encryption: options.require_encryption,
            has_handshake_fn: options.has_handshake_fn,
            has_outbound_transformer: options.has_outbound_transformer,
            log_levels: options.log_levels as u8,
            redis: options.redis.and_then(RedisConnection::into_target),
            server_id: options.server_id,
        }
    }
}

/// One client's fields; `lib/server.js` turns it into an `IWebSocketClient`.
#[napi(object)]
pub struct ClientInfo {
    pub id: String,
    pub user_id: Option<String>,
    pub state: String,
    pub rooms: Vec<String>,
    pub backpressured: bool,
    pub dropped_messages: f64,
    pub buffered_amount: f64,
    pub encrypted: bool,
    pub server_public_key: Option<String>,
    pub salt: Option<String>,
    pub connected_at: f64,
    pub last_activity: f64,
    pub remote_address: String,
}

impl From<ClientSnapshot> for ClientInfo {
    fn from(snapshot: ClientSnapshot) -> Self {
        ClientInfo {
            id: snapshot.id,
            user_id: snapshot.user_id,
            state: snapshot.state.as_str().to_string(),
            rooms: snapshot.rooms,
            backpressured: snapshot.backpressured,
            dropped_messages: snapshot.dropped_messages as f64,
            buffered_amount: snapshot.buffered_amount as f64,
            encrypted: snapshot.encrypted,
            server_public_key: snapshot.server_public_key,
            salt: snapshot.salt,
            connected_at: snapshot.connected_at as f64,
            last_activity: snapshot.last_activity as f64,
            remote_address: snapshot.remote_address,
        }
    }
}

/// The running server, once `listen()` has started it. Shared between `NativeServer` and
/// the handle the per-message functions below take.
pub(super) type ServerSlot = Arc<OnceLock<Server>>;

/// What a handle (`NativeServer::handle`) holds: the server's slot. Dropped when JS
/// collects the handle, it makes the raw calls forget that they confirmed it
/// (`raw_calls::server_slot`) before its memory can be reused.
pub struct ServerHandle(pub(super) ServerSlot);

impl std::ops::Deref for ServerHandle {
    type Target = ServerSlot;

    fn deref(&self) -> &ServerSlot {
        &self.0
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        super::raw_calls::forget_confirmed_handle(self);
    }
}

#[napi]
pub struct NativeServer {
    config: ServerConfig,
    dispatch: Arc<DispatchFn>,
    server: ServerSlot,
}

impl NativeServer {
    fn running(&self) -> Option<&Server> {
        self.server.get()
    }

    fn snapshots(&self, pick: impl FnOnce(&Server) -> Vec<ClientSnapshot>) -> Vec<ClientInfo> {
        self.running()
            .map(|server| pick(server).into_iter().map(ClientInfo::from).collect())
            .unwrap_or_default()
    }

    fn set_dispatch_ref(&self, env: &Env, referenced: bool) {
        // napi's own ref/unref wrappers need `&mut`; the bridge shares the function, so call
        // Node-API directly. Both only flip whether the handle keeps the event loop alive.
        unsafe {
            if referenced {
                napi::sys::napi_ref_threadsafe_function(env.raw(), self.dispatch.raw());
            } else {
                napi::sys::napi_unref_threadsafe_function(env.raw(), self.dispatch.raw());
            }
        }
    }
}

#[napi]
impl NativeServer {
    /// `dispatch(batch)` runs a batch of callbacks on the JS thread (see lib/dispatch.js).
    #[napi(constructor)]
    pub fn new(options: NativeServerOptions, dispatch: Function<String, String>) -> Result<Self> {
        let dispatch = dispatch
            .build_threadsafe_function::<String>()
            .callee_handled::<false>()
            .weak::<true>()
            .build_callback(|call| {
                super::bridge::batch_starting();
                Ok(call.value)
            })?;
        Ok(NativeServer {
            config: options.into(),
            dispatch: Arc::new(dispatch),
            server: Arc::new(OnceLock::new()),
        })
    }

    /// What the per-message functions (`sendToClient(handle, ...)` and the others below)
    /// take instead of `this`: napi-rs registers every `&self` call's borrow in a global
    /// table, which costs about half a microsecond per call (measured: benchmark/README.md).
    #[napi(ts_return_type = "ExternalObject<'NativeServerHandle'>")]
    pub fn handle(&self) -> External<ServerHandle> {
        External::new(ServerHandle(self.server.clone()))
    }

    /// Binds and starts serving; returns the bound port. Throws when the address is taken.
    /// (Called on the JS thread only, so the check and the start cannot race.)
    #[napi]
    pub fn listen(&self, env: Env) -> Result<u32> {
        if let Some(server) = self.running() {
            return if server.is_shutting_down() {
                Err(to_js_error(Error::Closed))
            } else {
                Ok(u32::from(server.port()))
            };
        }
        let listener = server::bind(&self.config).map_err(to_js_error)?;
        let bridge = Arc::new(TsfnBridge {
            function: self.dispatch.clone(),
        });
        let config = self.config.clone();
        let server = within_runtime_if_available(|| Server::start(config, listener, bridge))
            .map_err(to_js_error)?;
        let port = server.port();
        if self.server.set(server).is_err() {
            unreachable!("listen() runs on the JS thread only, and the slot was empty");
        }
        // While listening the server keeps the process alive, like `net.Server`.
        self.set_dispatch_ref(&env, true);
        Ok(u32::from(port))
    }

    /// Closes every client (1001), runs their disconnect callbacks, stops listening.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn shutdown<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>> {
        // Unref synchronously: the returned promise keeps the loop alive until it settles,
        // and after that nothing of ours does.
        self.set_dispatch_ref(env, false);
        let slot = self.server.clone();
        env.spawn_future(async move {
            if let Some(server) = slot.get() {
                server.shutdown().await;
            }
            Ok(())
        })
    }

    /// Resolves true once both Redis connections are up and subscribed, false after
    /// `timeout_ms`. True at once in standalone mode.
    #[napi]
    pub async fn redis_ready(&self, timeout_ms: u32) -> bool {
        match self.running().and_then(|server| server.broker().cloned()) {
            Some(broker) => {
                broker
                    .ready(Duration::from_millis(u64::from(timeout_ms)))
                    .await
            }
            None => true,
        }
    }

    /// `'standalone'`, `'connecting'`, `'ready'`, `'reconnecting'` or `'closed'`.
    #[napi]
    pub fn redis_status(&self) -> String {
        match self.running() {
            None if self.config.redis.is_some() => "connecting".into(),
            Some(server) if server.broker().is_some() => server
                .broker()
                .map(|broker| broker.status().as_str().to_string())
                .unwrap_or_default(),
            _ => "standalone".into(),
        }
    }

    /// Membership changes wait for earlier sends, which were addressed to the old members.
    #[napi]
    pub fn join_room(&self, client_id: String, room: String) -> bool {
        self.running()
            .is_some_and(|server| server.sender().now(|hub| hub.join(&client_id, &room)))
    }

    #[napi]
    pub fn leave_room(&self, client_id: String, room: String) -> bool {
        self.running()
            .is_some_and(|server| server.sender().now(|hub| hub.leave(&client_id, &room)))
    }

    #[napi]
    pub fn client(&self, client_id: String) -> Option<ClientInfo> {
        self.running()
            .and_then(|server| server.hub().snapshot(&client_id))
            .map(ClientInfo::from)
    }

    #[napi]
    pub fn clients(&self) -> Vec<ClientInfo> {
        self.snapshots(|server| server.hub().snapshots())
    }

    #[napi]
    pub fn clients_by_user(&self, user_id: String) -> Vec<ClientInfo> {
        self.snapshots(|server| server.hub().snapshots_of_user(&user_id))
    }

    #[napi]
    pub fn clients_by_room(&self, room: String) -> Vec<ClientInfo> {
        self.snapshots(|server| server.hub().snapshots_of_room(&room))
    }

    /// `enableClientEncryption`: irreversible; false for an unknown or already encrypted
    /// client. Waits for earlier sends, which were meant for the client as it was.
    #[napi]
    pub fn enable_client_encryption(&self, client_id: String) -> bool {
        self.running().is_some_and(|server| {
            server
                .sender()
                .now(|hub| hub.enable_encryption(&client_id, Default::default()))
        })
    }

    /// `socket.close(code, reason)`: starts the close handshake with a real close frame.
    #[napi]
    pub fn socket_close(&self, client_id: String, code: u32, reason: String) -> bool {
        self.running()
            .is_some_and(|server| server.close_client(&client_id, code as u16, &reason))
    }
}
