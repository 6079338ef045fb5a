//! The napi-facing layer: thin `#[napi]` wrappers over the core. Nothing here decides
//! protocol behaviour; it converts arguments and errors and forwards.

mod bridge;
mod calls;
mod emitter;
mod raw_calls;
mod runtime;
mod server;

pub use emitter::NativeEmitter;
pub use server::NativeServer;

/// The one place a core error becomes a JS error. The message carries the helper's prefix,
/// as the TypeScript helper's errors do.
pub(crate) fn to_js_error(error: crate::error::Error) -> napi::Error {
    let mut message = format!("[WebSocketServerHelper] {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(&format!("\nCaused by: {text}"));
        }
        source = cause.source();
    }
    napi::Error::new(napi::Status::GenericFailure, message)
}
