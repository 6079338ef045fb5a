//! Calls JS makes once per message or per callback outcome: free functions on the server's
//! handle (`NativeServer::handle`), because napi-rs registers each `&self` method call's
//! borrow in a global table, about half a microsecond a call. Before `listen()` they do
//! nothing.

// Only the generated napi registration calls these; a test build does not generate it.
#![cfg_attr(test, allow(dead_code))]

use napi::bindgen_prelude::External;
use napi_derive::napi;

use super::server::ServerHandle;
use crate::frame::OutboundText;
use crate::sender::Delivery;
use crate::server::Server;

fn deliver(server: &External<ServerHandle>, delivery: Delivery) {
    if let Some(server) = server.get() {
        server.sender().send(delivery);
    }
}

/// Delivers an outcome that JS produced asynchronously. False when nobody waits for it.
#[napi]
pub fn settle(
    #[napi(ts_arg_type = "ExternalObject<'NativeServerHandle'>")] server: &External<ServerHandle>,
    token: f64,
    failed: bool,
    value: String,
) -> bool {
    let Some(server) = server.get() else {
        return false;
    };
    let outcome = if failed {
        Err(value)
    } else {
        serde_json::from_str(&value).map_err(|error| format!("unreadable callback result: {error}"))
    };
    server.settle(token as u64, outcome)
}

/// The sends' `message` is the complete JSON text, as produced by
/// `JSON.stringify({ event, data })`; they are performed in the order they were issued (see
/// `sender.rs`). `sendToClient`, the one a reply makes, is in `raw_calls.rs`.
#[napi]
pub fn send_to_user(
    #[napi(ts_arg_type = "ExternalObject<'NativeServerHandle'>")] server: &External<ServerHandle>,
    user_id: String,
    message: String,
) {
    deliver(
        server,
        Delivery::User {
            user_id,
            message: OutboundText::new(&message),
        },
    );
}

#[napi]
pub fn send_to_room(
    #[napi(ts_arg_type = "ExternalObject<'NativeServerHandle'>")] server: &External<ServerHandle>,
    room: String,
    message: String,
    exclude: Option<Vec<String>>,
) {
    deliver(
        server,
        Delivery::Room {
            room,
            message: OutboundText::new(&message),
            exclude: exclude.unwrap_or_default(),
        },
    );
}

#[napi]
pub fn broadcast(
    #[napi(ts_arg_type = "ExternalObject<'NativeServerHandle'>")] server: &External<ServerHandle>,
    message: String,
    exclude: Option<Vec<String>>,
) {
    deliver(
        server,
        Delivery::Broadcast {
            message: OutboundText::new(&message),
            exclude: exclude.unwrap_or_default(),
        },
    );
}

/// Publishes an envelope (from `JSON.stringify`) on `channel`; failures are logged once
/// per outage. No-op in standalone mode.
#[napi]
pub fn publish(
    #[napi(ts_arg_type = "ExternalObject<'NativeServerHandle'>")] server: &External<ServerHandle>,
    channel: String,
    envelope: String,
) {
    if let Some(broker) = server.get().and_then(Server::broker) {
        broker.publish(channel, envelope);
    }
}

#[napi]
pub fn has_client(
    #[napi(ts_arg_type = "ExternalObject<'NativeServerHandle'>")] server: &External<ServerHandle>,
    client_id: String,
) -> bool {
    server
        .get()
        .is_some_and(|server| server.hub().has_client(&client_id))
}

#[napi]
pub fn has_room(
    #[napi(ts_arg_type = "ExternalObject<'NativeServerHandle'>")] server: &External<ServerHandle>,
    room: String,
) -> bool {
    server
        .get()
        .is_some_and(|server| server.hub().has_room(&room))
}

/// `socket.send(data)`: bytes queued, -1 queued under backpressure, 0 dropped (Bun's
/// convention).
#[napi]
pub fn socket_send(
    #[napi(ts_arg_type = "ExternalObject<'NativeServerHandle'>")] server: &External<ServerHandle>,
    client_id: String,
    data: String,
) -> i64 {
    server
        .get()
        .map_or(0, |server| server.send_text(&client_id, &data))
}

/// What `outboundTransformer` produced for an encrypted client: sent as it is.
#[napi]
pub fn send_transformed(
    #[napi(ts_arg_type = "ExternalObject<'NativeServerHandle'>")] server: &External<ServerHandle>,
    client_id: String,
    message: String,
) {
    if let Some(server) = server.get() {
        server.send_text(&client_id, &message);
    }
}
