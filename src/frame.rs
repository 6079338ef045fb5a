//! RFC 6455 framing for the server side, kept apart from I/O.
//!
//! We frame outgoing messages ourselves (instead of letting a WebSocket stream do it per
//! socket) so that a room or broadcast message is framed once and every recipient's queue
//! holds the same reference-counted bytes. Incoming frames are decoded from the connection's
//! buffer; nothing here allocates for a frame whose declared size is over the limit.

use std::sync::OnceLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::deflate::{self, InflateError};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close codes this server sends.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const AUTH_TIMEOUT: u16 = 4001;
    pub const HEARTBEAT_TIMEOUT: u16 = 4002;
    pub const AUTH_FAILED: u16 = 4003;
    pub const ENCRYPTION_REQUIRED: u16 = 4004;
}

/// The text of a (complete, unmasked) text frame built by [`text_frame`].
pub fn text_payload(frame: &[u8]) -> Option<&str> {
    let header = match frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    std::str::from_utf8(frame.get(header..)?).ok()
}

/// One decoded frame, payload already unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    /// RSV1 on a message's first frame: its payload is DEFLATE-compressed (RFC 7692).
    pub compressed: bool,
    pub payload: Vec<u8>,
}

/// Why a peer's bytes cannot be read as frames; each maps to the close code we answer with.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum FrameError {
    Protocol(&'static str),
    TooBig,
    InvalidUtf8,
    /// RSV1 said compressed, but the payload is not a DEFLATE stream.
    InvalidCompressed,
}

impl FrameError {
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::Protocol(_) => close_code::PROTOCOL_ERROR,
            FrameError::TooBig => close_code::MESSAGE_TOO_BIG,
            FrameError::InvalidUtf8 | FrameError::InvalidCompressed => close_code::INVALID_PAYLOAD,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            FrameError::Protocol(reason) => reason,
            FrameError::TooBig => "Message too big",
            FrameError::InvalidUtf8 => "Invalid UTF-8",
            FrameError::InvalidCompressed => "Invalid compressed data",
        }
    }
}

/// Decodes one client frame from the start of `buf`. `Ok(None)` means more bytes are needed.
/// Data frames whose declared payload exceeds `max_payload` fail before their payload is read.
/// `deflate`: permessage-deflate was negotiated, so RSV1 may mark a message's first frame.
pub fn decode_frame(
    buf: &[u8],
    max_payload: usize,
    deflate: bool,
) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    let compressed = b0 & 0x40 != 0;
    let opcode = b0 & 0x0F;
    let is_control = opcode & 0x08 != 0;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Err(FrameError::Protocol("Reserved opcode")),
    }
    // RSV2 and RSV3 belong to no extension we speak; RSV1 only to permessage-deflate, and
    // only on the first frame of a data message (RFC 7692, 6.1).
    if b0 & 0x30 != 0 || (compressed && (!deflate || is_control || opcode == OP_CONTINUATION)) {
        return Err(FrameError::Protocol("Reserved bits set"));
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("Client frame not masked"));
    }
    let (length, mut offset) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(bytes), 10)
        }
        short => (u64::from(short), 2),
    };
    if is_control && (length > 125 || !fin) {
        return Err(FrameError::Protocol("Invalid control frame"));
    }
    if length > max_payload as u64 {
        return Err(FrameError::TooBig);
    }
    let length = length as usize;
    if buf.len() < offset + 4 + length {
        return Ok(None);
    }
    let mask = [
        buf[offset],
        buf[offset + 1],
        buf[offset + 2],
        buf[offset + 3],
    ];
    offset += 4;
    let payload = unmasked(&buf[offset..offset + length], mask);
    Ok(Some((
        Frame {
            fin,
            opcode,
            compressed,
            payload,
        },
        offset + length,
    )))
}

/// The payload unmasked into a new buffer, eight bytes at a time.
fn unmasked(masked: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut payload = masked.to_vec();
    let [m0, m1, m2, m3] = mask;
    let mask_word = u64::from_ne_bytes([m0, m1, m2, m3, m0, m1, m2, m3]);
    let mut words = payload.chunks_exact_mut(8);
    for word in &mut words {
        let unmasked = u64::from_ne_bytes((&*word).try_into().expect("eight bytes")) ^ mask_word;
        word.copy_from_slice(&unmasked.to_ne_bytes());
    }
    // The rest starts at a multiple of eight, so the mask starts over with its first byte.
    for (byte, mask_byte) in words.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= mask_byte;
    }
    payload
}

/// A complete data message, reassembled from its fragments.
#[derive(Debug, PartialEq, Eq)]
pub enum DataMessage {
    Text(String),
    Binary(Vec<u8>),
}

/// Reassembles fragmented data messages, inflates compressed ones, and enforces the message
/// size limit across fragments and after inflating. Control frames are not passed through it.
#[derive(Default)]
pub struct MessageAssembler {
    /// The message being reassembled, from its first fragment to its last. Boxed: most
    /// messages are never fragmented, and every idle connection holds an assembler.
    partial: Option<Box<Partial>>,
}

struct Partial {
    opcode: u8,
    compressed: bool,
    fragments: Vec<u8>,
}

impl MessageAssembler {
    pub fn push(
        &mut self,
        frame: Frame,
        max_payload: usize,
    ) -> Result<Option<DataMessage>, FrameError> {
        let (opcode, compressed, payload) = match (frame.opcode, self.partial.as_mut()) {
            (OP_CONTINUATION, None) => {
                return Err(FrameError::Protocol("Continuation without a message"))
            }
            (OP_CONTINUATION, Some(partial)) => {
                if partial.fragments.len() + frame.payload.len() > max_payload {
                    return Err(FrameError::TooBig);
                }
                partial.fragments.extend_from_slice(&frame.payload);
                if !frame.fin {
                    return Ok(None);
                }
                let Partial {
                    opcode,
                    compressed,
                    fragments,
                } = *self.partial.take().expect("a message is being reassembled");
                (opcode, compressed, fragments)
            }
            (_, Some(_)) => return Err(FrameError::Protocol("Expected a continuation frame")),
            (opcode, None) if !frame.fin => {
                self.partial = Some(Box::new(Partial {
                    opcode,
                    compressed: frame.compressed,
                    fragments: frame.payload,
                }));
                return Ok(None);
            }
            (opcode, None) => (opcode, frame.compressed, frame.payload),
        };
        let payload = if compressed {
            deflate::decompress(&payload, max_payload).map_err(|error| match error {
                InflateError::TooBig => FrameError::TooBig,
                InflateError::Invalid => FrameError::InvalidCompressed,
            })?
        } else {
            payload
        };
        Ok(Some(match opcode {
            OP_TEXT => {
                DataMessage::Text(String::from_utf8(payload).map_err(|_| FrameError::InvalidUtf8)?)
            }
            _ => DataMessage::Binary(payload),
        }))
    }
}

/// An unmasked server frame with FIN set.
pub fn encode_frame(opcode: u8, payload: &[u8]) -> Bytes {
    encode(0x80 | opcode, payload)
}

/// `first_byte`: FIN, RSV bits and opcode.
fn encode(first_byte: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + MAX_HEADER_LEN);
    put_header(&mut out, first_byte, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// A server frame's header (unmasked) for a payload of `len` bytes.
fn put_header(out: &mut BytesMut, first_byte: u8, len: usize) {
    let (header, header_len) = header_bytes(first_byte, len);
    out.put_slice(&header[..header_len]);
}

/// The longest a server frame's header is.
const MAX_HEADER_LEN: usize = 10;

/// A server frame's header (unmasked) for a payload of `len` bytes, and how many of the
/// bytes it takes.
fn header_bytes(first_byte: u8, len: usize) -> ([u8; MAX_HEADER_LEN], usize) {
    let mut header = [0; MAX_HEADER_LEN];
    header[0] = first_byte;
    let header_len = match len {
        len if len < 126 => {
            header[1] = len as u8;
            2
        }
        len if len <= 0xFFFF => {
            header[1] = 126;
            header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        len => {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    (header, header_len)
}

/// Writes each UTF-16 code unit of `units` to the byte at the same place in `out` (as long as
/// `units`) and tells whether all were ASCII, in which case `out` holds their UTF-8. One pass
/// with no branch per unit, so the compiler can use vector instructions.
pub fn narrow_ascii(units: &[u16], out: &mut [u8]) -> bool {
    debug_assert_eq!(units.len(), out.len());
    let mut all_bits = 0u16;
    for (byte, &unit) in out.iter_mut().zip(units) {
        *byte = unit as u8;
        all_bits |= unit;
    }
    all_bits < 0x80
}

/// [`narrow_ascii`] chunk by chunk, up to the first chunk that is not all ASCII: returns how
/// many units from the start were narrowed into `out`. Text with some characters that are not
/// ASCII (a Vietnamese word in a JSON message, say) mostly still is, up to the first of them.
fn narrow_ascii_prefix(units: &[u16], out: &mut [u8]) -> usize {
    const CHUNK: usize = 16;
    let mut narrowed = 0;
    let mut chunks = units.chunks_exact(CHUNK).zip(out.chunks_exact_mut(CHUNK));
    for (units, out) in chunks.by_ref() {
        if !narrow_ascii(units, out) {
            return narrowed;
        }
        narrowed += CHUNK;
    }
    let rest = units.len() - narrowed;
    if narrow_ascii(&units[narrowed..], &mut out[narrowed..narrowed + rest]) {
        narrowed += rest;
    }
    narrowed
}

/// A surrogate pair starts at `units[at]`.
fn pair_at(units: &[u16], at: usize) -> bool {
    (0xD800..0xDC00).contains(&units[at])
        && units
            .get(at + 1)
            .is_some_and(|next| (0xDC00..0xE000).contains(next))
}

/// The UTF-8 length of `units`, an unpaired surrogate counting as U+FFFD (3 bytes).
fn utf16_as_utf8_len(units: &[u16]) -> usize {
    // Branch-free over chunks whose counts fit 16-bit lanes, so it vectorises, unless there
    // is a surrogate (rare): a pair is 4 bytes, not 3 and 3, so then each unit is looked at
    // in turn.
    let mut len = 0usize;
    let mut surrogates = 0u16;
    for chunk in units.chunks(1024) {
        let mut extra = 0u16;
        for &unit in chunk {
            extra += u16::from(unit >= 0x80) + u16::from(unit >= 0x800);
            surrogates |= u16::from(unit & 0xF800 == 0xD800);
        }
        len += chunk.len() + usize::from(extra);
    }
    if surrogates == 0 {
        return len;
    }
    let (mut len, mut at) = (0, 0);
    while at < units.len() {
        len += match units[at] {
            0..0x80 => 1,
            0x80..0x800 => 2,
            _ if pair_at(units, at) => {
                at += 1;
                4
            }
            _ => 3,
        };
        at += 1;
    }
    len
}

/// Writes `units` as UTF-8 into `out`, which is exactly `utf16_as_utf8_len(units)` long.
fn write_utf16_as_utf8(units: &[u16], out: &mut [u8]) {
    let (mut at, mut written) = (0, 0);
    while at < units.len() {
        let unit = units[at];
        match unit {
            // Most of any text, even where some of it is not ASCII.
            0..0x80 => {
                out[written] = unit as u8;
                written += 1;
                at += 1;
                // The ASCII run goes on eight units at a time.
                while let (Some(eight), Some(place)) = (
                    units[at..].first_chunk::<8>(),
                    out[written..].first_chunk_mut::<8>(),
                ) {
                    if !narrow_ascii(eight, place) {
                        break;
                    }
                    at += 8;
                    written += 8;
                }
                continue;
            }
            0x80..0x800 => {
                out[written..written + 2]
                    .copy_from_slice(&[0xC0 | (unit >> 6) as u8, 0x80 | (unit & 0x3F) as u8]);
                written += 2;
            }
            0xD800..0xE000 => {
                let code = if pair_at(units, at) {
                    at += 1;
                    0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(units[at]) - 0xDC00)
                } else {
                    u32::from(char::REPLACEMENT_CHARACTER)
                };
                // A valid scalar value by construction: surrogates were paired or replaced.
                let character = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
                written += character.encode_utf8(&mut out[written..]).len();
            }
            _ => {
                out[written..written + 3].copy_from_slice(&[
                    0xE0 | (unit >> 12) as u8,
                    0x80 | ((unit >> 6) & 0x3F) as u8,
                    0x80 | (unit & 0x3F) as u8,
                ]);
                written += 3;
            }
        }
        at += 1;
    }
}

/// Appends `units` as UTF-8, unpaired surrogates as U+FFFD: the ASCII prefix narrowed in
/// place, the rest (if any) measured, then encoded.
fn put_utf16_as_utf8(out: &mut BytesMut, units: &[u16]) {
    let start = out.len();
    out.resize(start + units.len(), 0);
    let ascii = narrow_ascii_prefix(units, &mut out[start..]);
    if ascii < units.len() {
        let rest = &units[ascii..];
        out.resize(start + ascii + utf16_as_utf8_len(rest), 0);
        write_utf16_as_utf8(rest, &mut out[start + ascii..]);
    }
}

pub fn text_frame(text: &str) -> Bytes {
    encode_frame(OP_TEXT, text.as_bytes())
}

/// A text message on its way out: framed once, and compressed once the first time a
/// recipient that negotiated permessage-deflate needs it. Every recipient gets a clone of
/// one of the two frames.
pub struct OutboundText {
    plain: Bytes,
    /// `None` inside: not worth compressing (short, or does not shrink).
    compressed: OnceLock<Option<Bytes>>,
}

impl OutboundText {
    pub fn new(text: &str) -> Self {
        OutboundText {
            plain: text_frame(text),
            compressed: OnceLock::new(),
        }
    }

    /// A message whose text arrives as UTF-16 code units (a JS string, which an engine copies
    /// out as UTF-16 in one pass whatever it holds, where its UTF-8 takes a pass to measure
    /// and one to encode). ASCII, the common case, is narrowed straight into the frame; other
    /// text is encoded into the same buffer, unpaired surrogates becoming U+FFFD as
    /// Node-API's UTF-8 makes them.
    pub fn from_utf16(units: &[u16]) -> Self {
        // The payload goes after room for the longest header, and its header just before
        // it once its length is known (text that is not ASCII is longer in UTF-8).
        let mut frame = BytesMut::with_capacity(MAX_HEADER_LEN + units.len());
        frame.resize(MAX_HEADER_LEN, 0);
        put_utf16_as_utf8(&mut frame, units);
        let (header, header_len) = header_bytes(0x80 | OP_TEXT, frame.len() - MAX_HEADER_LEN);
        let start = MAX_HEADER_LEN - header_len;
        frame[start..MAX_HEADER_LEN].copy_from_slice(&header[..header_len]);
        frame.advance(start);
        OutboundText {
            plain: frame.freeze(),
            compressed: OnceLock::new(),
        }
    }

    /// The message text.
    pub fn text(&self) -> &str {
        text_payload(&self.plain).unwrap_or_default()
    }

    /// The uncompressed frame's length: what Bun's `send()` reports as queued.
    pub fn plain_frame_len(&self) -> usize {
        self.plain.len()
    }

    /// The frame for a recipient; `deflate`: it negotiated permessage-deflate.
    pub fn frame(&self, deflate: bool) -> &Bytes {
        if deflate {
            let compressed = self.compressed.get_or_init(|| {
                deflate::compress(self.text().as_bytes())
                    .map(|payload| encode(0xC0 | OP_TEXT, &payload))
            });
            if let Some(frame) = compressed {
                return frame;
            }
        }
        &self.plain
    }
}

/// A close frame; the reason is cut at a character boundary to fit the 125-byte limit.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode_frame(OP_CLOSE, &payload)
}

/// Codes a peer may put in a close frame (RFC 6455, section 7.4).
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The status code of a received close frame, if it carried one.
pub fn close_code_of(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmasking_matches_the_byte_by_byte_rule_at_every_length() {
        let mask = [0x12, 0x9a, 0x00, 0xff];
        for len in 0..40 {
            let masked: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let expected: Vec<u8> = masked
                .iter()
                .enumerate()
                .map(|(i, byte)| byte ^ mask[i % 4])
                .collect();
            assert_eq!(unmasked(&masked, mask), expected, "length {len}");
        }
    }

    /// A masked client frame, as a browser would send it.
    pub fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![first_byte];
        match payload.len() {
            len if len < 126 => out.push(0x80 | len as u8),
            len if len <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn decodes_masked_frames_of_every_length_form() {
        for len in [0usize, 5, 125, 126, 1000, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let bytes = client_frame(0x81, &payload);
            let (frame, used) = decode_frame(&bytes, 1 << 20, false).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(frame.payload, payload);
            assert!(frame.fin);
            assert_eq!(frame.opcode, OP_TEXT);
            // Every strict prefix asks for more bytes instead of failing.
            for cut in [0, 1, 2, bytes.len() / 2, bytes.len() - 1] {
                assert_eq!(
                    decode_frame(&bytes[..cut], 1 << 20, false),
                    Ok(None),
                    "len {len} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn rejects_what_rfc_6455_forbids() {
        let unmasked = [0x81u8, 0x01, b'a'];
        assert!(matches!(
            decode_frame(&unmasked, 100, false),
            Err(FrameError::Protocol(_))
        ));
        let rsv1 = client_frame(0xC1, b"a");
        assert!(matches!(
            decode_frame(&rsv1, 100, false),
            Err(FrameError::Protocol(_))
        ));
        // With permessage-deflate: RSV1 on a first data frame only; RSV2/3 never.
        assert!(
            decode_frame(&rsv1, 100, true)
                .unwrap()
                .unwrap()
                .0
                .compressed
        );
        for forbidden in [0xA1, 0x91, 0xC0, 0xC9] {
            assert!(matches!(
                decode_frame(&client_frame(forbidden, b"a"), 100, true),
                Err(FrameError::Protocol(_))
            ));
        }
        let reserved_opcode = client_frame(0x83, b"a");
        assert!(matches!(
            decode_frame(&reserved_opcode, 100, false),
            Err(FrameError::Protocol(_))
        ));
        let long_ping = client_frame(0x89, &[0; 126]);
        assert!(matches!(
            decode_frame(&long_ping, 1000, false),
            Err(FrameError::Protocol(_))
        ));
        let fragmented_ping = client_frame(0x09, b"a");
        assert!(matches!(
            decode_frame(&fragmented_ping, 1000, false),
            Err(FrameError::Protocol(_))
        ));
    }

    #[test]
    fn refuses_oversize_frames_from_the_header_alone() {
        let header_only = &client_frame(0x81, &[0; 2000])[..4];
        assert_eq!(
            decode_frame(header_only, 1999, false),
            Err(FrameError::TooBig)
        );
        let huge = [0x82u8, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(decode_frame(&huge, 1 << 20, false), Err(FrameError::TooBig));
    }

    #[test]
    fn reassembles_fragments_within_the_limit() {
        let mut assembler = MessageAssembler::default();
        let part = |fin: bool, opcode: u8, text: &str| Frame {
            fin,
            opcode,
            compressed: false,
            payload: text.as_bytes().to_vec(),
        };
        assert_eq!(assembler.push(part(false, OP_TEXT, "he"), 10), Ok(None));
        assert_eq!(
            assembler.push(part(false, OP_CONTINUATION, "ll"), 10),
            Ok(None)
        );
        assert_eq!(
            assembler.push(part(true, OP_CONTINUATION, "o"), 10),
            Ok(Some(DataMessage::Text("hello".into())))
        );
        assert_eq!(assembler.push(part(false, OP_BINARY, "12345"), 8), Ok(None));
        assert_eq!(
            assembler.push(part(true, OP_CONTINUATION, "6789"), 8),
            Err(FrameError::TooBig)
        );
        let mut assembler = MessageAssembler::default();
        assert!(assembler.push(part(true, OP_CONTINUATION, "x"), 8).is_err());
        assert_eq!(assembler.push(part(false, OP_TEXT, "x"), 8), Ok(None));
        assert!(assembler.push(part(true, OP_TEXT, "y"), 8).is_err());
        let mut assembler = MessageAssembler::default();
        let invalid = Frame {
            fin: true,
            opcode: OP_TEXT,
            compressed: false,
            payload: vec![0xff, 0xfe],
        };
        assert_eq!(assembler.push(invalid, 8), Err(FrameError::InvalidUtf8));
    }

    #[test]
    fn inflates_compressed_messages_also_when_fragmented() {
        let text = "{\"event\":\"chat\",\"data\":\"la la la la la la\"}".repeat(10);
        let compressed = deflate::compress(text.as_bytes()).unwrap();
        let (first, rest) = compressed.split_at(compressed.len() / 2);
        let mut assembler = MessageAssembler::default();
        let frame = |fin, opcode, compressed, payload: &[u8]| Frame {
            fin,
            opcode,
            compressed,
            payload: payload.to_vec(),
        };
        assert_eq!(
            assembler.push(frame(false, OP_TEXT, true, first), 1000),
            Ok(None)
        );
        assert_eq!(
            assembler.push(frame(true, OP_CONTINUATION, false, rest), 1000),
            Ok(Some(DataMessage::Text(text.clone())))
        );
        // The limit applies to the inflated size, and garbage is refused with 1007.
        assert_eq!(
            assembler.push(frame(true, OP_TEXT, true, &compressed), 100),
            Err(FrameError::TooBig)
        );
        let garbage = assembler.push(frame(true, OP_TEXT, true, &[0xff; 8]), 100);
        assert_eq!(garbage, Err(FrameError::InvalidCompressed));
        assert_eq!(FrameError::InvalidCompressed.close_code(), 1007);
        // A plain message after a compressed one is not inflated.
        assert_eq!(
            assembler.push(frame(true, OP_TEXT, false, b"hi"), 100),
            Ok(Some(DataMessage::Text("hi".into())))
        );
    }

    #[test]
    fn outbound_text_compresses_once_for_deflate_recipients_only() {
        let message = OutboundText::new(&"abcdefgh".repeat(64));
        let plain = message.frame(false);
        assert_eq!(plain[0], 0x81);
        let compressed = message.frame(true);
        assert_eq!(compressed[0], 0xC1);
        assert!(compressed.len() < plain.len() / 4);
        // The same buffer every time: compressed once, shared.
        assert_eq!(message.frame(true).as_ptr(), compressed.as_ptr());
        let short = OutboundText::new("{\"event\":\"x\"}");
        assert_eq!(short.frame(true)[0], 0x81);
        assert_eq!(short.text(), "{\"event\":\"x\"}");
    }

    #[test]
    fn a_message_from_utf16_is_the_frame_of_its_utf8() {
        for text in [
            "",
            "{\"event\":\"tick\"}",
            "{\"event\":\"é 漢字 😀\"}",
            &"x".repeat(300),
            &"y".repeat(70_000),
            &format!("{}é", "z".repeat(200)),
            // The non-ASCII part makes the header longer than the UTF-16 length suggested.
            &format!("{}{}", "a".repeat(100), "é".repeat(20)),
            &format!("{}{}", "b".repeat(65_500), "漢".repeat(20)),
            // Measured over several chunks of 1,024 units.
            &"é漢a".repeat(1_500),
            // Non-ASCII at, before and after a chunk's edge, and last.
            &format!("{}ệ{}", "c".repeat(15), "d".repeat(40)),
            &format!("{}ệ{}", "c".repeat(16), "d".repeat(40)),
            &format!("{}ệ{}", "c".repeat(17), "d".repeat(40)),
            &format!("{}ệ", "c".repeat(47)),
            "ệ",
        ] {
            let units: Vec<u16> = text.encode_utf16().collect();
            let message = OutboundText::from_utf16(&units);
            assert_eq!(message.frame(false), &text_frame(text));
            assert_eq!(message.text(), text);
        }
        // Unpaired surrogates become U+FFFD; a pair is one character.
        let units = [0x61, 0xD800, 0x62, 0xDC00, 0xD83D, 0xDE00];
        assert_eq!(
            OutboundText::from_utf16(&units).text(),
            "a\u{FFFD}b\u{FFFD}😀"
        );
    }

    #[test]
    fn utf16_is_encoded_as_std_decodes_it_lossily() {
        let mut cases: Vec<Vec<u16>> = vec![
            vec![],
            vec![0xD800],
            vec![0xDC00, 0xD800],
            vec![0xD83D, 0xDE00, 0xD83D],
            vec![0x7F, 0x80, 0x7FF, 0x800, 0xFFFF, 0xD7FF, 0xE000],
            vec![0xDBFF, 0xDFFF, 0xD800, 0xDC00],
        ];
        // Every single unit, and every unit after a high surrogate.
        cases.extend((0..=0xFFFFu16).map(|unit| vec![0x61, unit, 0x62]));
        cases.extend((0..=0xFFFFu16).step_by(7).map(|unit| vec![0xD801, unit]));
        for units in cases {
            let expected = String::from_utf16_lossy(&units);
            assert_eq!(utf16_as_utf8_len(&units), expected.len(), "{units:x?}");
            let mut out = vec![0; expected.len()];
            write_utf16_as_utf8(&units, &mut out);
            assert_eq!(out, expected.as_bytes(), "{units:x?}");
        }
    }

    #[test]
    fn an_ascii_prefix_is_narrowed_in_whole_chunks() {
        for (len, first_wide, narrowed) in [
            (0, None, 0),
            (40, None, 40),
            (40, Some(0), 0),
            (40, Some(15), 0),
            (40, Some(16), 16),
            (40, Some(39), 32),
            (7, Some(6), 0),
        ] {
            let mut units = vec![0x61u16; len];
            if let Some(at) = first_wide {
                units[at] = 0x1EC7;
            }
            let mut out = vec![0u8; len];
            assert_eq!(narrow_ascii_prefix(&units, &mut out), narrowed);
            assert!(out[..narrowed].iter().all(|&byte| byte == 0x61));
        }
    }

    #[test]
    fn narrowing_reports_whether_every_unit_was_ascii() {
        let mut out = [0u8; 3];
        assert!(narrow_ascii(&[0x61, 0x7F, 0x00], &mut out));
        assert_eq!(out, [0x61, 0x7F, 0x00]);
        // Units whose low byte is ASCII but which are not: a truncating copy would pass them.
        assert!(!narrow_ascii(&[0x61, 0x0141, 0x62], &mut out));
        assert!(!narrow_ascii(&[0x80, 0x61, 0x62], &mut out));
        assert!(!narrow_ascii(&[0x61, 0x62, 0xFF00], &mut out));
    }

    #[test]
    fn encodes_unmasked_server_frames() {
        assert_eq!(&text_frame("hi")[..], &[0x81, 2, b'h', b'i']);
        let medium = encode_frame(OP_BINARY, &[7; 300]);
        assert_eq!(&medium[..4], &[0x82, 126, 0x01, 0x2C]);
        assert_eq!(medium.len(), 304);
        let large = encode_frame(OP_TEXT, &vec![b'a'; 70_000]);
        assert_eq!(&large[..2], &[0x81, 127]);
        assert_eq!(large.len(), 70_010);
        let close = close_frame(4001, "Authentication timeout");
        assert_eq!(&close[..4], &[0x88, 24, 0x0F, 0xA1]);
        assert_eq!(close_code_of(&close[2..]), Some(4001));
        // Long multi-byte reasons are cut at a character boundary within 125 bytes.
        let long = close_frame(1000, &"é".repeat(100));
        assert!(long.len() - 2 <= 125);
        assert!(std::str::from_utf8(&long[4..]).is_ok());
    }
}
