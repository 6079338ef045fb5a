//! `sendToClient` as a plain Node-API function, without napi-rs' generated glue: it runs
//! once per reply, and for `(handle, string, string)` that glue cost more than the send (a
//! borrow scope and a registry lookup for the handle, a heap copy of each string, then a
//! third copy into the frame; measured in benchmark/README.md). Here the id is read onto the
//! stack and the message into a reused buffer, both as UTF-16: V8 copies a string out as
//! UTF-16 in one pass, where UTF-8 takes one pass to measure and a slower one to encode
//! (callgrind, echo on Node: 2,800 instructions per reply in `napi_get_value_string_utf8`).

// Only the generated napi registration calls the raw functions; a test build has none.
#![cfg_attr(test, allow(dead_code))]

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::ptr;

use napi::bindgen_prelude::{External, Function};
use napi::{sys, Env, Result};
use napi_derive::napi;

use super::server::{ServerHandle, ServerSlot};
use crate::frame::{narrow_ascii, OutboundText};

/// Client ids this long or shorter are read onto the stack (ours are 36 characters).
const STACK_ID_LEN: usize = 64;

/// The message buffer is kept between calls up to this many code units (256 KiB).
const KEPT_MESSAGE_UNITS: usize = 128 * 1024;

/// The message buffer's size at least (8 KiB), so most messages are read in one call.
const FIRST_TRY_MESSAGE_UNITS: usize = 4 * 1024;

thread_local! {
    /// The calling JS thread's buffer for a message's UTF-16.
    static MESSAGE_UNITS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// `sendToClient(handle, clientId, message)`, for lib/server.js to take once at load.
#[napi(
    ts_return_type = "(handle: ExternalObject<'NativeServerHandle'>, clientId: string, message: string) => void"
)]
pub fn raw_send_to_client(env: &Env) -> Result<Function<'_, (), ()>> {
    env.create_function::<(), ()>("sendToClient", send_to_client)
}

/// `sendToClient(handle, slot, message)` to the sender of the message JS is handling, named by
/// the message slot the dispatcher knows it by, for lib/server.js to take once at load. The
/// common reply, to the sender, then skips reading and looking up its 36-character id (about
/// 1,000 of the 3,900 instructions of a reply on Node, callgrind).
#[napi(
    ts_return_type = "(handle: ExternalObject<'NativeServerHandle'>, slot: number, message: string) => void"
)]
pub fn raw_send_to_sender(env: &Env) -> Result<Function<'_, (), ()>> {
    env.create_function::<(), ()>("sendToSender", send_to_sender)
}

/// Same contract as the `#[napi]` sends in `calls.rs`: `message` is the complete JSON text;
/// before `listen()` (or after shutdown) nothing happens. Wrong arguments throw a TypeError.
unsafe extern "C" fn send_to_client(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    let Some([handle, client_id, message]) = (unsafe { three_arguments(env, info) }) else {
        return throw_type_error(
            env,
            c"sendToClient(handle, clientId, message): missing arguments",
        );
    };
    let Some(slot) = (unsafe { server_slot(env, handle) }) else {
        return throw_type_error(
            env,
            c"sendToClient: the first argument is not a server handle",
        );
    };
    let mut id_units = [0u16; STACK_ID_LEN + 1];
    let mut id_bytes = [0u8; STACK_ID_LEN];
    let Some(client_id) = (unsafe { read_client_id(env, client_id, &mut id_units, &mut id_bytes) })
    else {
        return throw_type_error(env, c"sendToClient: clientId must be a string");
    };
    let Some(message) = (unsafe { read_message(env, message) }) else {
        return throw_type_error(env, c"sendToClient: message must be a string");
    };
    if let Some(server) = slot.get() {
        server.sender().send_to_client(&client_id, message);
    }
    undefined(env)
}

/// As `send_to_client`, with the sender's message slot for its id.
unsafe extern "C" fn send_to_sender(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    let Some([handle, sender, message]) = (unsafe { three_arguments(env, info) }) else {
        return throw_type_error(
            env,
            c"sendToSender(handle, slot, message): missing arguments",
        );
    };
    let Some(slot) = (unsafe { server_slot(env, handle) }) else {
        return throw_type_error(
            env,
            c"sendToSender: the first argument is not a server handle",
        );
    };
    let mut sender_slot = 0;
    if unsafe { sys::napi_get_value_uint32(env, sender, &mut sender_slot) } != sys::Status::napi_ok
    {
        return throw_type_error(env, c"sendToSender: slot must be a number");
    }
    let Some(message) = (unsafe { read_message(env, message) }) else {
        return throw_type_error(env, c"sendToSender: message must be a string");
    };
    if let Some(server) = slot.get() {
        server.sender().send_to_sender(sender_slot, message);
    }
    undefined(env)
}

/// The call's first three arguments; `None` if it has fewer.
unsafe fn three_arguments(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> Option<[sys::napi_value; 3]> {
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
    (status == sys::Status::napi_ok && argc >= 3).then_some(argv)
}

fn undefined(env: sys::napi_env) -> sys::napi_value {
    let mut value = ptr::null_mut();
    unsafe {
        sys::napi_get_undefined(env, &mut value);
    }
    value
}

thread_local! {
    /// The handle this JS thread last passed, once napi-rs confirmed it: its external's data
    /// pointer and the handle. The same handle comes with every call, so the check (a global
    /// lock and a hash lookup, about 220 instructions a call on Node, callgrind) is made once.
    /// A handle forgets itself here when dropped, which happens on this thread (Node-API
    /// runs finalizers on the thread of their environment), before its memory is freed.
    static CONFIRMED_HANDLE: Cell<(*mut c_void, *const ServerHandle)> =
        const { Cell::new((ptr::null_mut(), ptr::null())) };
}

/// Called when a handle is dropped: see `CONFIRMED_HANDLE`.
pub(super) fn forget_confirmed_handle(handle: &ServerHandle) {
    // `try_with`: a handle dropped while the thread itself ends has nothing to forget.
    let _ = CONFIRMED_HANDLE.try_with(|confirmed| {
        if ptr::eq(confirmed.get().1, handle) {
            confirmed.set((ptr::null_mut(), ptr::null()));
        }
    });
}

/// The server behind a handle from `NativeServer.handle()`. napi-rs checks that the
/// external is one of its own `External<ServerHandle>` before it is dereferenced (once per
/// handle and thread, see `CONFIRMED_HANDLE`).
unsafe fn server_slot<'a>(env: sys::napi_env, value: sys::napi_value) -> Option<&'a ServerSlot> {
    let mut data = ptr::null_mut();
    let status = unsafe { sys::napi_get_value_external(env, value, &mut data) };
    if status != sys::Status::napi_ok || data.is_null() {
        return None;
    }
    let (confirmed, handle) = CONFIRMED_HANDLE.get();
    if data == confirmed {
        // SAFETY: confirmed by napi-rs for this very pointer, and still alive: a dropped
        // handle clears the entry first.
        return Some(unsafe { &*handle });
    }
    let handle = unsafe { External::<ServerHandle>::inner_from_raw(data) }?;
    CONFIRMED_HANDLE.set((data, handle));
    Some(handle)
}

/// A client id: ASCII (every id this server makes) narrowed onto the caller's stack
/// buffers, anything else decoded onto the heap. `None` if the value is not a string.
unsafe fn read_client_id<'a>(
    env: sys::napi_env,
    value: sys::napi_value,
    units: &mut [u16; STACK_ID_LEN + 1],
    bytes: &'a mut [u8; STACK_ID_LEN],
) -> Option<Cow<'a, str>> {
    // Copied straight onto the stack; only an id that fills the buffer may be longer, and
    // only then is its length asked for.
    let written = unsafe { write_utf16(env, value, units) }?;
    if written == STACK_ID_LEN {
        let len = unsafe { utf16_len(env, value) }?;
        if len > STACK_ID_LEN {
            let mut long_units = vec![0; len + 1];
            let written = unsafe { write_utf16(env, value, &mut long_units) }?;
            return Some(Cow::Owned(String::from_utf16_lossy(&long_units[..written])));
        }
    }
    let (units, bytes) = (&units[..written], &mut bytes[..written]);
    if narrow_ascii(units, bytes) {
        // ASCII is UTF-8.
        return std::str::from_utf8(bytes).ok().map(Cow::Borrowed);
    }
    Some(Cow::Owned(String::from_utf16_lossy(units)))
}

/// A message's frame, read through the thread's reused buffer. `None` if the value is not a
/// string.
unsafe fn read_message(env: sys::napi_env, value: sys::napi_value) -> Option<OutboundText> {
    MESSAGE_UNITS.with_borrow_mut(|units| {
        if units.len() < FIRST_TRY_MESSAGE_UNITS {
            units.resize(FIRST_TRY_MESSAGE_UNITS, 0);
        }
        // Copied into the buffer as it is; only a message that fills it may be longer, and
        // only then is its length asked for.
        let mut written = unsafe { write_utf16(env, value, units) }?;
        if written + 1 == units.len() {
            let len = unsafe { utf16_len(env, value) }?;
            if len > written {
                units.resize(len + 1, 0);
                written = unsafe { write_utf16(env, value, units) }?;
            }
        }
        let message = OutboundText::from_utf16(&units[..written]);
        if units.len() > KEPT_MESSAGE_UNITS {
            *units = Vec::new();
        }
        Some(message)
    })
}

/// A JS string's length in UTF-16 code units (no copy); `None` if the value is not a string.
unsafe fn utf16_len(env: sys::napi_env, value: sys::napi_value) -> Option<usize> {
    let mut len = 0;
    let status =
        unsafe { sys::napi_get_value_string_utf16(env, value, ptr::null_mut(), 0, &mut len) };
    (status == sys::Status::napi_ok).then_some(len)
}

/// Copies a JS string's UTF-16 into `place`, at most `place.len() - 1` code units (Node-API
/// writes a terminator after them); returns the code units written, terminator not
/// counted. `None` if the value is not a string.
unsafe fn write_utf16(
    env: sys::napi_env,
    value: sys::napi_value,
    place: &mut [u16],
) -> Option<usize> {
    let mut written = 0;
    let status = unsafe {
        sys::napi_get_value_string_utf16(env, value, place.as_mut_ptr(), place.len(), &mut written)
    };
    (status == sys::Status::napi_ok).then_some(written)
}

fn throw_type_error(env: sys::napi_env, message: &std::ffi::CStr) -> sys::napi_value {
    unsafe {
        sys::napi_throw_type_error(env, ptr::null(), message.as_ptr());
    }
    ptr::null_mut()
}
