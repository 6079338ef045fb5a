//! Everything a client's bytes go through before a callback sees them: the upgrade request,
//! permessage-deflate negotiation, frame decoding, reassembly and inflating, and the message
//! parser and router's classification. Run with `cargo +nightly fuzz run inbound` (see README).
//!
//! The first input byte chooses the options (permessage-deflate negotiated or not, and the
//! size limit); the rest is the stream a client sends. Besides not panicking, it checks what
//! the connection code relies on: a decoded frame never claims more bytes than it was given,
//! messages respect the limit, and what the parser classifies as a room request holds only
//! strings.
#![no_main]

use ignis_native_ws::deflate;
use ignis_native_ws::frame::{self, DataMessage, MessageAssembler};
use ignis_native_ws::handshake::{self, Decision};
use ignis_native_ws::protocol::{self, Inbound, RoomRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&options, stream)) = data.split_first() else {
        return;
    };
    let negotiated = options & 1 == 1;
    let max_payload = 64 << (options >> 4); // 64 B .. 2 MB

    // The upgrade request, and the extension offers in it.
    let mut rest = stream;
    if options & 2 == 2 {
        match handshake::decide(stream, "/ws") {
            Ok(Some((Decision::Accept { request, .. }, used))) => {
                assert!(used <= stream.len());
                let _ = deflate::accepts_offer(request.header_values("sec-websocket-extensions"));
                let _ = request.origin_allowed(&["https://a.example".to_string()]);
                let _ = request.to_json("id", "127.0.0.1:1");
                rest = &stream[used..];
            }
            Ok(Some((Decision::Reject(_), used))) => rest = &stream[used..],
            Ok(None) | Err(_) => return,
        }
    }

    // Frames, as the reader decodes them from its buffer.
    let mut assembler = MessageAssembler::default();
    let mut offset = 0;
    while offset < rest.len() {
        let (decoded, used) = match frame::decode_frame(&rest[offset..], max_payload, negotiated) {
            Ok(Some(found)) => found,
            Ok(None) | Err(_) => return,
        };
        assert!(used > 0 && used <= rest.len() - offset);
        offset += used;
        if decoded.opcode & 0x08 != 0 {
            assert!(decoded.payload.len() <= 125);
            continue;
        }
        let message = match assembler.push(decoded, max_payload) {
            Ok(Some(message)) => message,
            Ok(None) => continue,
            Err(_) => return,
        };
        let text = match message {
            DataMessage::Text(text) => text,
            DataMessage::Binary(bytes) => match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(_) => continue,
            },
        };
        assert!(text.len() <= max_payload);
        route(&text);
    }
});

/// The router's decisions, without the connection around them.
fn route(text: &str) {
    match protocol::parse_inbound(text) {
        Ok(Inbound::Join(RoomRequest::Rooms(rooms)) | Inbound::Leave(RoomRequest::Rooms(rooms))) => {
            for room in &rooms {
                let _ = protocol::is_joinable_room_name(room);
            }
        }
        Ok(Inbound::Authenticate { data: Some(data) }) => {
            // The raw `data` is spliced into a JSON array for JS: it must be valid JSON.
            assert!(serde_json::from_str::<serde_json::Value>(data).is_ok());
        }
        Ok(Inbound::Custom { event, parts }) => {
            assert!(!event.is_empty());
            // The parts are spliced into the batch JS parses in one piece: each must be JSON
            // on its own, and the event the string it names.
            if let Some(parts) = parts {
                assert_eq!(serde_json::from_str::<String>(&text[parts.event]).unwrap(), event);
                assert!(serde_json::from_str::<Box<serde_json::value::RawValue>>(&text[parts.data]).is_ok());
            }
        }
        Ok(_) | Err(_) => {}
    }
}
