//! permessage-deflate (RFC 7692): the negotiation and the per-message codec.
//!
//! We always answer with `server_no_context_takeover` and `client_no_context_takeover`
//! (RFC 7692 lets a server add both to any offer it accepts): every message is compressed
//! on its own, in both directions. That is what lets a room or broadcast message be
//! compressed once and the same compressed frame go to every recipient that negotiated the
//! extension, and it means a connection keeps no compression state at all (a context per
//! connection would cost about 40 KB for each direction). The compressor and decompressor
//! are per thread and reset after each message. This is what Bun's `perMessageDeflate: true`
//! (uWebSockets' shared compressor and decompressor) negotiates too.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

pub const EXTENSION: &str = "permessage-deflate";
/// What we answer an accepted offer with.
pub const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// Messages shorter than this go out uncompressed: the saving is a few bytes at best, the
/// compressor's fixed cost is not.
pub const MIN_COMPRESS_BYTES: usize = 128;
/// The empty stored block that ends a sync flush; RFC 7692 strips it from each message and
/// the receiver puts it back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Whether one of the offers in `Sec-WebSocket-Extensions` header values can be accepted.
///
/// An offer is accepted when its parameters are valid and we can honour them: we compress
/// with a 32 KB window, so an offer limiting `server_max_window_bits` below 15 is declined
/// (RFC 7692, 7.1.2.1) and the next offer tried. Offers of other extensions are ignored.
pub fn accepts_offer<'a>(header_values: impl IntoIterator<Item = &'a str>) -> bool {
    header_values
        .into_iter()
        .flat_map(|value| value.split(','))
        .any(acceptable_offer)
}

fn acceptable_offer(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case(EXTENSION))
    {
        return false;
    }
    let mut seen: Vec<String> = Vec::new();
    for param in parts {
        if param.is_empty() {
            continue;
        }
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        // A parameter given twice makes the offer invalid (RFC 7692, 7.1).
        if seen.contains(&name) {
            return false;
        }
        let valid = match name.as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            // Without a value: the client can take a window limit; we set none.
            "client_max_window_bits" => value.is_none_or(|bits| window_bits(bits).is_some()),
            "server_max_window_bits" => value.and_then(window_bits) == Some(15),
            _ => false,
        };
        if !valid {
            return false;
        }
        seen.push(name);
    }
    true
}

fn window_bits(value: &str) -> Option<u8> {
    // No leading zeros or signs: the RFC's grammar is 1*DIGIT with value 8..15.
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

thread_local! {
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
    static DECOMPRESSOR: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// The compressed payload of one message (without the trailing empty block), or `None`
/// when compressing does not pay: short messages, or output no smaller than the input.
pub fn compress(payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() < MIN_COMPRESS_BYTES {
        return None;
    }
    COMPRESSOR.with(|compressor| {
        let mut compressor = compressor.borrow_mut();
        compressor.reset();
        // Room for the whole input plus block overhead: more than that is not worth sending.
        let give_up_at = payload.len() + 64;
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        let mut input = payload;
        loop {
            let before_in = compressor.total_in();
            compressor
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .ok()?;
            input = &input[(compressor.total_in() - before_in) as usize..];
            // All input taken and room left over: the flush is complete.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if out.len() >= give_up_at {
                return None;
            }
            out.reserve(out.len().max(64));
        }
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        (out.len() < payload.len()).then_some(out)
    })
}

/// Why a compressed message cannot be read.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum InflateError {
    /// Inflates to more than the limit (a decompression bomb or just too big).
    TooBig,
    Invalid,
}

/// Inflates one message's payload, refusing to produce more than `max` bytes.
pub fn decompress(payload: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    DECOMPRESSOR.with(|decompressor| {
        let mut decompressor = decompressor.borrow_mut();
        // Also discards whatever a failed message left half-read.
        decompressor.reset(false);
        inflate_into(&mut decompressor, payload, max)
    })
}

fn inflate_into(
    decompressor: &mut Decompress,
    payload: &[u8],
    max: usize,
) -> Result<Vec<u8>, InflateError> {
    let limit = max.saturating_add(1);
    let mut out = Vec::with_capacity(payload.len().saturating_mul(4).max(256).min(limit));
    for chunk in [payload, &TAIL[..]] {
        let mut input = chunk;
        loop {
            if out.len() == out.capacity() {
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                // Grow geometrically but never past one byte over the limit.
                out.reserve_exact(out.len().max(256).min(limit - out.len()));
            }
            let before_in = decompressor.total_in();
            let status = decompressor
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Invalid)?;
            input = &input[(decompressor.total_in() - before_in) as usize..];
            if out.len() > max {
                return Err(InflateError::TooBig);
            }
            match status {
                // The sender ended the message with a final block: what follows (our tail)
                // is not part of it.
                Status::StreamEnd => return Ok(out),
                _ if input.is_empty() && out.len() < out.capacity() => break,
                // No progress with input left and room to write: not a DEFLATE stream.
                Status::BufError if out.len() < out.capacity() => {
                    return Err(InflateError::Invalid)
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_offers_browsers_and_libraries_send() {
        assert!(accepts_offer(["permessage-deflate"]));
        assert!(accepts_offer([
            "permessage-deflate; client_max_window_bits"
        ]));
        assert!(accepts_offer([
            "permessage-deflate; client_max_window_bits=10; server_no_context_takeover"
        ]));
        assert!(accepts_offer([
            "permessage-deflate; server_max_window_bits=15; client_no_context_takeover"
        ]));
        // Several offers: the second is acceptable.
        assert!(accepts_offer([
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ]));
        assert!(accepts_offer([
            "x-webkit-deflate-frame",
            "permessage-deflate"
        ]));
    }

    #[test]
    fn declines_offers_it_cannot_honour_or_that_are_invalid() {
        assert!(!accepts_offer([]));
        assert!(!accepts_offer(["x-webkit-deflate-frame"]));
        assert!(!accepts_offer([
            "permessage-deflate; server_max_window_bits=10"
        ]));
        assert!(!accepts_offer([
            "permessage-deflate; server_max_window_bits"
        ]));
        assert!(!accepts_offer([
            "permessage-deflate; client_max_window_bits=7"
        ]));
        assert!(!accepts_offer([
            "permessage-deflate; client_max_window_bits=010"
        ]));
        assert!(!accepts_offer(["permessage-deflate; unknown_param"]));
        assert!(!accepts_offer([
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover"
        ]));
        assert!(!accepts_offer([
            "permessage-deflate; server_no_context_takeover=1"
        ]));
    }

    #[test]
    fn round_trips_and_strips_the_sync_tail() {
        let text =
            "{\"event\":\"chat\",\"data\":{\"text\":\"hello hello hello hello\"}}".repeat(20);
        let compressed = compress(text.as_bytes()).expect("compressible");
        assert!(compressed.len() < text.len() / 4);
        assert!(!compressed.ends_with(&TAIL));
        assert_eq!(
            decompress(&compressed, text.len()).unwrap(),
            text.as_bytes()
        );
        // The thread's codec holds no context between messages.
        let again = compress(text.as_bytes()).unwrap();
        assert_eq!(again, compressed);
    }

    #[test]
    fn leaves_short_or_incompressible_messages_alone() {
        assert_eq!(compress(b"{\"event\":\"x\"}"), None);
        // xorshift64: bytes DEFLATE cannot shrink.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        assert_eq!(compress(&noise), None);
    }

    #[test]
    fn bounds_what_a_message_may_inflate_to() {
        let zeros = vec![b'a'; 1 << 20];
        let bomb = compress(&zeros).unwrap();
        assert!(bomb.len() < 5_000);
        assert_eq!(decompress(&bomb, 64 * 1024), Err(InflateError::TooBig));
        assert_eq!(decompress(&bomb, 1 << 20).map(|out| out.len()), Ok(1 << 20));
        assert_eq!(
            decompress(&[0xff, 0xff, 0xff, 0xff], 1024),
            Err(InflateError::Invalid)
        );
        // The thread's decompressor still works after a failure.
        let ok = compress(&zeros[..1000]).unwrap();
        assert_eq!(decompress(&ok, 1000).unwrap().len(), 1000);
    }

    #[test]
    fn reads_an_empty_message() {
        // An empty message compresses to an empty stored block; with the tail stripped, a
        // single zero byte (what ws and browsers send).
        assert_eq!(decompress(&[0x00], 10), Ok(Vec::new()));
        assert_eq!(decompress(&[], 10), Ok(Vec::new()));
    }
}
