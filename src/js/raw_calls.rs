//! `sendToClient` as a plain Node-API function, without napi-rs' generated glue: it runs
//! once per reply, and for `(handle, string, string)` that glue cost more than the send (a
//! borrow scope and a registry lookup for the handle, a heap copy of each string, then a
//! third copy into the frame; measured in benchmark/README.md). Here the id is read onto the
//! stack and the message straight into its frame.

// Only the generated napi registration calls `raw_send_to_client`; a test build has none.
#![cfg_attr(test, allow(dead_code))]

use std::ffi::c_char;
use std::ptr;

use napi::bindgen_prelude::{External, Function};
use napi::{sys, Env, Result};
use napi_derive::napi;

use super::server::ServerSlot;
use crate::frame::OutboundText;

/// Client ids this long or shorter are read onto the stack (ours are 36 bytes).
const STACK_ID_LEN: usize = 64;

/// `sendToClient(handle, clientId, message)`, for lib/server.js to take once at load.
#[napi(
    ts_return_type = "(handle: ExternalObject<'NativeServerHandle'>, clientId: string, message: string) => void"
)]
pub fn raw_send_to_client(env: &Env) -> Result<Function<'_, (), ()>> {
    env.create_function::<(), ()>("sendToClient", send_to_client)
}

/// Same contract as the `#[napi]` sends in `calls.rs`: `message` is the complete JSON text;
/// before `listen()` (or after shutdown) nothing happens. Wrong arguments throw a TypeError.
unsafe extern "C" fn send_to_client(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    let mut argc = 3;
    let mut argv = [ptr::null_mut(); 3];
    let status = unsafe {
        sys::napi_get_cb_info(
            env,
            info,
            &mut argc,
            argv.as_mut_ptr(),
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    if status != sys::Status::napi_ok || argc < 3 {
        return throw_type_error(
            env,
            c"sendToClient(handle, clientId, message): missing arguments",
        );
    }
    let Some(slot) = (unsafe { server_slot(env, argv[0]) }) else {
        return throw_type_error(
            env,
            c"sendToClient: the first argument is not a server handle",
        );
    };
    let mut id_on_stack = [0u8; STACK_ID_LEN + 1];
    let mut id_on_heap = Vec::new();
    let Some(id_len) = (unsafe { string_len(env, argv[1]) }) else {
        return throw_type_error(env, c"sendToClient: clientId must be a string");
    };
    let id_place = if id_len <= STACK_ID_LEN {
        &mut id_on_stack[..id_len + 1]
    } else {
        id_on_heap.resize(id_len + 1, 0);
        &mut id_on_heap[..]
    };
    let id_written = unsafe { write_utf8(env, argv[1], id_place) };
    let Ok(client_id) = std::str::from_utf8(&id_place[..id_written]) else {
        return throw_type_error(env, c"sendToClient: clientId must be a string");
    };
    let message = unsafe { string_len(env, argv[2]) }.and_then(|len| {
        OutboundText::filled(len, 1, |place| unsafe { write_utf8(env, argv[2], place) })
    });
    let Some(message) = message else {
        return throw_type_error(env, c"sendToClient: message must be a string");
    };
    if let Some(server) = slot.get() {
        server.sender().send_to_client(client_id, message);
    }
    undefined(env)
}

fn undefined(env: sys::napi_env) -> sys::napi_value {
    let mut value = ptr::null_mut();
    unsafe {
        sys::napi_get_undefined(env, &mut value);
    }
    value
}

/// The server behind a handle from `NativeServer.handle()`. napi-rs checks that the
/// external is one of its own `External<ServerSlot>` before it is dereferenced.
unsafe fn server_slot<'a>(env: sys::napi_env, value: sys::napi_value) -> Option<&'a ServerSlot> {
    let mut data = ptr::null_mut();
    let status = unsafe { sys::napi_get_value_external(env, value, &mut data) };
    if status != sys::Status::napi_ok {
        return None;
    }
    unsafe { External::<ServerSlot>::inner_from_raw(data) }
}

/// A JS string's length in UTF-8 bytes; `None` if the value is not a string.
unsafe fn string_len(env: sys::napi_env, value: sys::napi_value) -> Option<usize> {
    let mut len = 0;
    let status =
        unsafe { sys::napi_get_value_string_utf8(env, value, ptr::null_mut(), 0, &mut len) };
    (status == sys::Status::napi_ok).then_some(len)
}

/// Copies a JS string's UTF-8 into `place` (its length plus one, for the NUL Node-API
/// writes); returns the bytes written, NUL not counted (0 if the value is not a string).
unsafe fn write_utf8(env: sys::napi_env, value: sys::napi_value, place: &mut [u8]) -> usize {
    let mut written = 0;
    let status = unsafe {
        sys::napi_get_value_string_utf8(
            env,
            value,
            place.as_mut_ptr().cast::<c_char>(),
            place.len(),
            &mut written,
        )
    };
    if status == sys::Status::napi_ok {
        written
    } else {
        0
    }
}

fn throw_type_error(env: sys::napi_env, message: &std::ffi::CStr) -> sys::napi_value {
    unsafe {
        sys::napi_throw_type_error(env, ptr::null(), message.as_ptr());
    }
    ptr::null_mut()
}
