//! The server's settings, already validated and defaulted by the JS layer's option parsing
//! (`lib/options.js`); defaults are documented there and in `index.d.ts`.

use std::time::Duration;

use crate::broker::RedisTarget;

/// After a close frame is sent, how long we wait for the peer's close before dropping it.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub default_rooms: Vec<String>,
    pub auth_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// Bound on how long a connection waits for `validateRoomFn`, `clientConnectedFn` or
    /// `messageHandler` before handling its next message.
    pub callback_timeout: Duration,
    pub max_payload_length: usize,
    /// Close connections that sent nothing for this long (1001); zero: never.
    pub idle_timeout: Duration,
    /// Ping connections silent for half of `idle_timeout`, so live peers answer in time.
    pub send_pings: bool,
    /// How long a TCP connection may take to send a complete upgrade request, and the
    /// upgrade hook to answer it.
    pub upgrade_timeout: Duration,
    /// `Origin` values (lower case, no trailing slash) a browser page may connect from;
    /// empty: any.
    pub allowed_origins: Vec<String>,
    /// Ask JS's `verifyUpgradeFn` before answering an upgrade.
    pub has_verify_upgrade_fn: bool,
    /// Negotiate permessage-deflate with clients that offer it.
    pub per_message_deflate: bool,
    pub backpressure_limit: usize,
    pub close_on_backpressure_limit: bool,
    pub has_validate_room_fn: bool,
    pub has_message_handler: bool,
    pub has_client_connected_fn: bool,
    /// Authentication also needs a successful `handshakeFn` (else close 4004).
    pub require_encryption: bool,
    pub has_handshake_fn: bool,
    /// Messages to encrypted clients go through JS's `outboundTransformer`.
    pub has_outbound_transformer: bool,
    /// `LogLevel::bit()`s of the levels the JS logger takes; lines of other levels are
    /// neither formatted nor sent.
    pub log_levels: u8,
    /// `None`: standalone, no Redis.
    pub redis: Option<RedisTarget>,
    /// This instance's id in Redis envelopes.
    pub server_id: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".into(),
            port: 8080,
            path: "/ws".into(),
            default_rooms: vec!["ws-default".into(), "ws-notification".into()],
            auth_timeout: Duration::from_millis(5_000),
            heartbeat_interval: Duration::from_millis(30_000),
            heartbeat_timeout: Duration::from_millis(90_000),
            callback_timeout: Duration::from_millis(15_000),
            max_payload_length: 128 * 1024,
            idle_timeout: Duration::from_secs(60),
            send_pings: true,
            upgrade_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            has_verify_upgrade_fn: false,
            per_message_deflate: false,
            backpressure_limit: 1024 * 1024,
            close_on_backpressure_limit: false,
            has_validate_room_fn: false,
            has_message_handler: false,
            has_client_connected_fn: false,
            require_encryption: false,
            has_handshake_fn: false,
            has_outbound_transformer: false,
            log_levels: 0b1111,
            redis: None,
            server_id: String::new(),
        }
    }
}
