//! The application protocol spoken over a WebSocket: what clients send and the frames the
//! server itself produces. Pure functions only; routing decisions that need state or JS
//! callbacks live in `connection.rs`.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::hub::Encryption;
use crate::json_scan;

pub const EVENT_AUTHENTICATE: &str = "authenticate";
pub const EVENT_CONNECTED: &str = "connected";
pub const EVENT_JOIN: &str = "join";
pub const EVENT_LEAVE: &str = "leave";
pub const EVENT_ERROR: &str = "error";
pub const EVENT_HEARTBEAT: &str = "heartbeat";

/// Room names starting with this prefix are reserved for Redis channels.
pub const INTERNAL_ROOM_PREFIX: &str = "ws:";
pub const MAX_ROOM_NAME_LENGTH: usize = 256;

/// Error texts sent to clients in `{ event: 'error', data: { message } }`; they match the
/// TypeScript helper byte for byte.
pub const ERR_INVALID_FORMAT: &str = "Invalid message format";
pub const ERR_NOT_AUTHENTICATED: &str = "Not authenticated";
pub const ERR_ALREADY_AUTHENTICATED: &str = "Already authenticated";
pub const ERR_AUTH_FAILED: &str = "Authentication failed";
pub const ERR_AUTH_ERROR: &str = "Authentication error";
pub const ERR_HANDSHAKE_FAILED: &str = "Encryption handshake failed";

/// A client message, classified. Borrowed from the frame text, so classifying costs one
/// validating parse and no copies.
#[derive(Debug, PartialEq)]
pub enum Inbound<'a> {
    Heartbeat,
    /// `data` is the raw JSON of the `data` field, `None` when absent or null.
    Authenticate {
        data: Option<&'a str>,
    },
    Join(RoomRequest),
    Leave(RoomRequest),
    /// Any other event: handed to `messageHandler` with the whole message.
    Custom {
        event: Cow<'a, str>,
        /// Where `event` and `data` lie in a message that has these two keys only, in
        /// this order (what clients send): JS then builds the object around them.
        parts: Option<MessageParts>,
    },
}

/// The byte ranges of a message's raw `event` (a JSON string, quotes included) and raw
/// `data` in its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageParts {
    pub event: Range<usize>,
    pub data: Range<usize>,
}

/// Rooms named in a `join`/`leave` request, or why the request had the wrong shape.
#[derive(Debug, PartialEq)]
pub enum RoomRequest {
    /// The string entries of `data.rooms`; other entries are dropped here.
    Rooms(Vec<String>),
    /// `data` is not an object with a `rooms` array.
    Malformed,
}

#[derive(Debug, PartialEq, Eq)]
pub enum InboundError {
    /// Not JSON, not a JSON object, or `event` is neither absent nor a string.
    InvalidFormat,
    /// `event` absent, null or empty: logged and dropped, as the TypeScript helper does.
    MissingEvent,
}

/// A message object's `event` and `data`, raw.
struct Envelope<'a> {
    event: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    /// The object has these two keys only, `event` first.
    event_then_data_only: bool,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum EnvelopeKey {
    Event,
    Data,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A map only: a derived struct would also take an array, `["chat",{}]`, by position.
        deserializer.deserialize_map(EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a message object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
        let mut envelope = Envelope {
            event: None,
            data: None,
            event_then_data_only: true,
        };
        let mut keys = 0;
        while let Some(key) = map.next_key::<EnvelopeKey>()? {
            match key {
                EnvelopeKey::Event if envelope.event.is_none() => {
                    envelope.event = Some(map.next_value()?);
                    envelope.event_then_data_only &= keys == 0;
                }
                EnvelopeKey::Data if envelope.data.is_none() => {
                    envelope.data = Some(map.next_value()?);
                    envelope.event_then_data_only &= keys == 1;
                }
                EnvelopeKey::Event => return Err(de::Error::duplicate_field("event")),
                EnvelopeKey::Data => return Err(de::Error::duplicate_field("data")),
                EnvelopeKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                    envelope.event_then_data_only = false;
                }
            }
            keys += 1;
        }
        envelope.event_then_data_only &= keys == 2;
        Ok(envelope)
    }
}

/// Where `part`, a slice of `text`, lies in it.
fn range_in(text: &str, part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - text.as_ptr() as usize;
    start..start + part.len()
}

#[derive(Deserialize)]
struct RoomsPayload {
    rooms: Vec<serde_json::Value>,
}

pub fn parse_inbound(text: &str) -> Result<Inbound<'_>, InboundError> {
    // What clients send, a custom event then its data, in one pass (`json_scan`); anything
    // else, system events included, through serde_json.
    if let Some((event, data)) = json_scan::event_then_data(text) {
        let name = &text[event.start + 1..event.end - 1];
        if !matches!(
            name,
            "" | EVENT_HEARTBEAT | EVENT_AUTHENTICATE | EVENT_JOIN | EVENT_LEAVE
        ) {
            return Ok(Inbound::Custom {
                event: Cow::Borrowed(name),
                parts: Some(MessageParts { event, data }),
            });
        }
    }
    parse_inbound_generally(text)
}

fn parse_inbound_generally(text: &str) -> Result<Inbound<'_>, InboundError> {
    // Duplicate keys would be a serde error; JSON.parse keeps the last one. Both are
    // "some" interpretation of a malformed message, and we answer with the format error.
    let envelope: Envelope<'_> =
        serde_json::from_str(text).map_err(|_| InboundError::InvalidFormat)?;
    let event: Cow<'_, str> = match envelope.event.map(RawValue::get) {
        None | Some("null") => return Err(InboundError::MissingEvent),
        // Borrowed where the name has no escapes (serde's Cow<str> would always copy); a
        // name with escapes, or what is not a string, takes the decoding path.
        Some(raw) => match serde_json::from_str::<&str>(raw) {
            Ok(name) => Cow::Borrowed(name),
            Err(_) => Cow::Owned(
                serde_json::from_str::<String>(raw).map_err(|_| InboundError::InvalidFormat)?,
            ),
        },
    };
    let parts = match (envelope.event_then_data_only, envelope.event, envelope.data) {
        (true, Some(event), Some(data)) => Some(MessageParts {
            event: range_in(text, event.get()),
            data: range_in(text, data.get()),
        }),
        _ => None,
    };
    let data = envelope
        .data
        .map(RawValue::get)
        .filter(|raw| *raw != "null");
    Ok(match event.as_ref() {
        "" => return Err(InboundError::MissingEvent),
        EVENT_HEARTBEAT => Inbound::Heartbeat,
        EVENT_AUTHENTICATE => Inbound::Authenticate { data },
        EVENT_JOIN => Inbound::Join(parse_rooms(data)),
        EVENT_LEAVE => Inbound::Leave(parse_rooms(data)),
        _ => Inbound::Custom { event, parts },
    })
}

fn parse_rooms(data: Option<&str>) -> RoomRequest {
    let Some(raw) = data else {
        return RoomRequest::Rooms(Vec::new());
    };
    match serde_json::from_str::<RoomsPayload>(raw) {
        Ok(payload) => RoomRequest::Rooms(
            payload
                .rooms
                .into_iter()
                .filter_map(|room| match room {
                    serde_json::Value::String(name) => Some(name),
                    _ => None,
                })
                .collect(),
        ),
        Err(_) => RoomRequest::Malformed,
    }
}

/// The join sanitising rule of the specification: non-empty, at most 256 characters (UTF-16
/// code units, as JavaScript's `length` counts them), not under the internal `ws:` prefix.
pub fn is_joinable_room_name(room: &str) -> bool {
    let length = room.encode_utf16().count();
    length > 0 && length <= MAX_ROOM_NAME_LENGTH && !room.starts_with(INTERNAL_ROOM_PREFIX)
}

/// `JSON.stringify({ event: 'error', data: { message } })`.
pub fn error_message(message: &str) -> String {
    format!(
        r#"{{"event":"{EVENT_ERROR}","data":{{"message":{}}}}}"#,
        json_string(message)
    )
}

/// `JSON.stringify({ event: 'connected', data: { id, userId, time } })`, with `userId`
/// omitted when absent, as JSON.stringify omits `undefined`. Appended by hand: this runs
/// once per connection, and `format!` took about 6,500 instructions here (callgrind,
/// benchmark/README.md).
pub fn connected_message(
    client_id: &str,
    user_id: Option<&str>,
    time_ms: u64,
    encryption: Option<&Encryption>,
) -> String {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(br#"{"event":""#);
    out.extend_from_slice(EVENT_CONNECTED.as_bytes());
    out.extend_from_slice(br#"","data":{"id":"#);
    push_json_string(&mut out, client_id);
    if let Some(user) = user_id {
        out.extend_from_slice(br#","userId":"#);
        push_json_string(&mut out, user);
    }
    out.extend_from_slice(br#","time":""#);
    push_iso_time(&mut out, time_ms);
    out.push(b'"');
    // As the TypeScript helper: the keys travel when the handshake gave a public key.
    if let Some(Encryption {
        server_public_key: Some(key),
        salt,
    }) = encryption
    {
        out.extend_from_slice(br#","serverPublicKey":"#);
        push_json_string(&mut out, key);
        out.extend_from_slice(br#","salt":"#);
        match salt {
            Some(salt) => push_json_string(&mut out, salt),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b"}}");
    String::from_utf8(out).expect("JSON written from strings is UTF-8")
}

/// A JSON string literal. serde_json escapes exactly what JSON.stringify escapes for
/// well-formed Unicode (which is all a Rust `str` can hold).
pub fn json_string(value: &str) -> String {
    serde_json::to_string(value).expect("serialising a str cannot fail")
}

/// [`json_string`] appended to `out`, for text built without intermediate strings.
pub fn push_json_string(out: &mut Vec<u8>, value: &str) {
    serde_json::to_writer(out, value).expect("serialising a str cannot fail")
}

/// `new Date(ms).toISOString()` for dates from 1970 on: `YYYY-MM-DDTHH:MM:SS.sssZ`.
pub fn iso_time(ms: u64) -> String {
    let mut out = Vec::with_capacity(24);
    push_iso_time(&mut out, ms);
    String::from_utf8(out).expect("digits and separators are ASCII")
}

/// [`iso_time`] appended to `out`.
fn push_iso_time(out: &mut Vec<u8>, ms: u64) {
    let (days, ms_of_day) = (ms / 86_400_000, ms % 86_400_000);
    let (year, month, day) = civil_from_days(days as i64);
    push_digits(out, year as u64, 4);
    out.push(b'-');
    push_digits(out, u64::from(month), 2);
    out.push(b'-');
    push_digits(out, u64::from(day), 2);
    out.push(b'T');
    push_digits(out, ms_of_day / 3_600_000, 2);
    out.push(b':');
    push_digits(out, ms_of_day / 60_000 % 60, 2);
    out.push(b':');
    push_digits(out, ms_of_day / 1000 % 60, 2);
    out.push(b'.');
    push_digits(out, ms_of_day % 1000, 3);
    out.push(b'Z');
}

/// `address.to_string()` (`ip:port`), written without the formatting machinery for the
/// common IPv4 case: this runs for every connection, and `Display` took about 1,800
/// instructions of it (callgrind, benchmark/README.md).
pub fn address_text(address: std::net::SocketAddr) -> String {
    let std::net::SocketAddr::V4(v4) = address else {
        return address.to_string();
    };
    let mut out = Vec::with_capacity(21);
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        push_digits(&mut out, u64::from(octet), 1);
    }
    out.push(b':');
    push_digits(&mut out, u64::from(v4.port()), 1);
    String::from_utf8(out).expect("digits and separators are ASCII")
}

/// `value` in decimal, zero-padded to `width` digits (more if it needs them).
pub(crate) fn push_digits(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut rest = value;
    let mut start = digits.len();
    while rest > 0 || digits.len() - start < width {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits[start..]);
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms(list: &[&str]) -> RoomRequest {
        RoomRequest::Rooms(list.iter().map(|room| room.to_string()).collect())
    }

    #[test]
    fn classifies_system_and_custom_events() {
        assert_eq!(
            parse_inbound(r#"{"event":"heartbeat"}"#),
            Ok(Inbound::Heartbeat)
        );
        assert_eq!(
            parse_inbound(r#"{"event":"authenticate","data":{"token":"t"}}"#),
            Ok(Inbound::Authenticate {
                data: Some(r#"{"token":"t"}"#)
            })
        );
        assert_eq!(
            parse_inbound(r#"{"event":"authenticate","data":null}"#),
            Ok(Inbound::Authenticate { data: None })
        );
        assert_eq!(
            parse_inbound(r#"{"event":"chat","data":[1,2],"id":"m1"}"#),
            Ok(Inbound::Custom {
                event: Cow::Borrowed("chat"),
                parts: None,
            })
        );
        // Escaped event names are decoded before matching.
        assert_eq!(
            parse_inbound(r#"{"event":"heart\u0062eat"}"#),
            Ok(Inbound::Heartbeat)
        );
        // A plain name is borrowed from the message; an escaped one is decoded into a copy.
        assert!(matches!(
            parse_inbound(r#"{"event":"chat"}"#),
            Ok(Inbound::Custom {
                event: Cow::Borrowed("chat"),
                parts: None,
            })
        ));
        match parse_inbound(r#"{"event":"say \"hi\""}"#) {
            Ok(Inbound::Custom {
                event: Cow::Owned(name),
                ..
            }) => assert_eq!(name, "say \"hi\""),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn finds_the_parts_of_a_message_of_event_then_data_only() {
        let parts = |text| match parse_inbound(text) {
            Ok(Inbound::Custom { parts, .. }) => {
                parts.map(|parts| (&text[parts.event], &text[parts.data]))
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            parts(r#"{"event":"chat","data":{"t":1,"s":"é"}}"#),
            Some((r#""chat""#, r#"{"t":1,"s":"é"}"#))
        );
        assert_eq!(
            parts(r#" { "event" : "say \"hi\"" , "data" : [ 1 , null ] } "#),
            Some((r#""say \"hi\"""#, "[ 1 , null ]"))
        );
        assert_eq!(
            parts(r#"{"event":"chat","data":null}"#),
            Some((r#""chat""#, "null"))
        );
        // An escaped key is the key it decodes to.
        assert_eq!(
            parts(r#"{"ev\u0065nt":"chat","data":1}"#),
            Some((r#""chat""#, "1"))
        );
        // Anything else comes whole: other keys, another order, no data.
        for text in [
            r#"{"event":"chat","data":1,"id":2}"#,
            r#"{"id":2,"event":"chat","data":1}"#,
            r#"{"data":1,"event":"chat"}"#,
            r#"{"event":"chat"}"#,
            r#"{"event":"chat","__proto__":{}}"#,
        ] {
            assert_eq!(parts(text), None, "{text}");
        }
    }

    #[test]
    fn the_one_pass_scan_classifies_as_serde_does() {
        use crate::json_scan::testing::{mutate, random_value, Random};
        const EVENTS: [&str; 9] = [
            "\"chat\"",
            "\"\"",
            "\"heartbeat\"",
            "\"join\"",
            "\"leave\"",
            "\"authenticate\"",
            "\"say \\\"hi\\\"\"",
            "\"é 中\"",
            "null",
        ];
        let mut random = Random(0x2545_F491_4F6C_DD1D);
        let mut scanned = 0;
        for _ in 0..40_000 {
            let mut data = String::new();
            random_value(&mut random, 3, &mut data);
            let event = EVENTS[random.below(EVENTS.len())];
            let mut text = match random.below(6) {
                0 => format!(r#"{{"data":{data},"event":{event}}}"#),
                1 => format!(r#"{{"event":{event},"data":{data},"id":1}}"#),
                2 => format!(r#"{{"event":{event}}}"#),
                _ => format!(r#"{{"event":{event},"data":{data}}}"#),
            };
            mutate(&mut random, &mut text);
            scanned += usize::from(crate::json_scan::event_then_data(&text).is_some());
            assert_eq!(
                parse_inbound(&text),
                parse_inbound_generally(&text),
                "{text:?}"
            );
        }
        assert!(scanned > 5_000, "{scanned}");
    }

    #[test]
    fn rejects_what_is_not_a_message_object() {
        for text in [
            "",
            "not json",
            "[1,2]",
            r#"["chat",{}]"#,
            r#"{"event":"chat","event":"chat"}"#,
            r#"{"event":"chat","data":1,"data":1}"#,
            "42",
            "\"event\"",
            "null",
            "{\"event\":",
        ] {
            assert_eq!(
                parse_inbound(text),
                Err(InboundError::InvalidFormat),
                "{text}"
            );
        }
        for text in [
            r#"{"event":5}"#,
            r#"{"event":{"a":1}}"#,
            r#"{"event":true}"#,
        ] {
            assert_eq!(
                parse_inbound(text),
                Err(InboundError::InvalidFormat),
                "{text}"
            );
        }
        for text in [
            r#"{}"#,
            r#"{"event":null}"#,
            r#"{"event":""}"#,
            r#"{"data":1}"#,
        ] {
            assert_eq!(
                parse_inbound(text),
                Err(InboundError::MissingEvent),
                "{text}"
            );
        }
    }

    #[test]
    fn parses_room_requests_leniently_but_safely() {
        assert_eq!(
            parse_inbound(r#"{"event":"join","data":{"rooms":["a",1,null,"b"]}}"#),
            Ok(Inbound::Join(rooms(&["a", "b"])))
        );
        assert_eq!(
            parse_inbound(r#"{"event":"leave"}"#),
            Ok(Inbound::Leave(rooms(&[])))
        );
        for data in [
            r#""abc""#,
            r#"{"rooms":"abc"}"#,
            r#"[1]"#,
            r#"{"rooms":{}}"#,
        ] {
            let text = format!(r#"{{"event":"join","data":{data}}}"#);
            assert_eq!(
                parse_inbound(&text),
                Ok(Inbound::Join(RoomRequest::Malformed)),
                "{text}"
            );
        }
    }

    #[test]
    fn sanitises_room_names_like_the_specification() {
        assert!(is_joinable_room_name("lobby"));
        assert!(!is_joinable_room_name(""));
        assert!(!is_joinable_room_name("ws:room:x"));
        assert!(is_joinable_room_name("wsx"));
        assert!(is_joinable_room_name(&"a".repeat(256)));
        assert!(!is_joinable_room_name(&"a".repeat(257)));
        // 128 astral characters are 256 UTF-16 units: still allowed; one more is not.
        assert!(is_joinable_room_name(&"😀".repeat(128)));
        assert!(!is_joinable_room_name(&"😀".repeat(129)));
    }

    #[test]
    fn builds_frames_identical_to_json_stringify() {
        assert_eq!(
            error_message("Not authenticated"),
            r#"{"event":"error","data":{"message":"Not authenticated"}}"#
        );
        assert_eq!(
            connected_message("c1", Some("u\"1"), 0, None),
            r#"{"event":"connected","data":{"id":"c1","userId":"u\"1","time":"1970-01-01T00:00:00.000Z"}}"#
        );
        assert_eq!(
            connected_message("c1", None, 1_700_000_000_123, None),
            r#"{"event":"connected","data":{"id":"c1","time":"2023-11-14T22:13:20.123Z"}}"#
        );
        let keys = Encryption {
            server_public_key: Some("pk".into()),
            salt: Some("s".into()),
        };
        assert_eq!(
            connected_message("c1", None, 0, Some(&keys)),
            r#"{"event":"connected","data":{"id":"c1","time":"1970-01-01T00:00:00.000Z","serverPublicKey":"pk","salt":"s"}}"#
        );
        let unsalted = Encryption {
            server_public_key: Some("pk".into()),
            salt: None,
        };
        assert_eq!(
            connected_message("c1", None, 0, Some(&unsalted)),
            r#"{"event":"connected","data":{"id":"c1","time":"1970-01-01T00:00:00.000Z","serverPublicKey":"pk","salt":null}}"#
        );
        // Enabled without a handshake: nothing to announce.
        assert_eq!(
            connected_message("c1", None, 0, Some(&Encryption::default())),
            connected_message("c1", None, 0, None)
        );
        assert_eq!(json_string("a\u{1}\n\u{2028}"), "\"a\\u0001\\n\u{2028}\"");
    }

    #[test]
    fn writes_addresses_as_display_does() {
        for text in [
            "127.0.0.1:45678",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.20.3:80",
            "[::1]:8080",
            "[fe80::1%2]:1",
        ] {
            let address: std::net::SocketAddr = text.parse().expect(text);
            assert_eq!(address_text(address), address.to_string(), "{text}");
        }
    }

    #[test]
    fn formats_iso_time_across_leap_years() {
        assert_eq!(iso_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso_time(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        // Every field zero-padded, as toISOString pads them.
        assert_eq!(iso_time(3_723_007), "1970-01-01T01:02:03.007Z");
        assert_eq!(iso_time(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(iso_time(4_102_444_800_000), "2100-01-01T00:00:00.000Z");
    }
}
