//! A Rust-owned WebSocket server for Node.js and Bun with the API of Ignis'
//! `WebSocketServerHelper`.
//!
//! Rust owns the sockets, the client/user/room indexes, heartbeat and delivery; JavaScript
//! keeps the application's callbacks, which the server calls in batches through one
//! threadsafe function (see `dispatch`).
//!
//! Core modules (`protocol`, `json_scan`, `frame`, `deflate`, `handshake`, `outbox`, `hub`, `dispatch`, `sender`,
//! `connection`, `server`) take no napi types and are tested with `cargo test`; `js` is the
//! thin napi layer.
#![deny(clippy::all)]

pub mod broker;
pub mod config;
pub mod connection;
pub mod deflate;
pub mod dispatch;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod hash;
pub mod hub;
#[cfg(feature = "addon")]
pub mod js;
pub mod json_scan;
pub mod outbox;
pub mod protocol;
pub mod sender;
pub mod server;
