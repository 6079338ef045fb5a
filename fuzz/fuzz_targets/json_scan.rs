//! The one-pass scanner of `{"event":...,"data":...}` messages against serde_json. Run with
//! `cargo +nightly fuzz run json_scan` (see README). What the scanner accepts is spliced into
//! the batch JS parses in one piece, so it must never accept what is not JSON; and it should
//! not refuse JSON either (that only costs speed: serde_json then decides), except deeper
//! than its limit.
#![no_main]

use ignis_native_ws::json_scan;
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fn serde_accepts(text: &str) -> bool {
    serde_json::from_str::<Box<RawValue>>(text).is_ok()
}

/// The deepest nesting of arrays and objects outside strings.
fn nesting(text: &str) -> u32 {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0u32, 0u32, false, false);
    for byte in text.bytes() {
        match (in_string, escaped, byte) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let scanned = json_scan::is_json_value(text);
    let serde = serde_accepts(text);
    assert!(!scanned || serde, "accepted what serde_json refuses: {text:?}");
    assert!(scanned || !serde || nesting(text) > json_scan::MAX_DEPTH, "refused JSON: {text:?}");

    for message in [
        format!(r#"{{"event":"chat","data":{text}}}"#),
        text.to_string(),
    ] {
        if let Some((event, data)) = json_scan::event_then_data(&message) {
            assert!(serde_accepts(&message), "accepted a message serde_json refuses: {message:?}");
            assert!(serde_json::from_str::<String>(&message[event]).is_ok());
            assert!(serde_accepts(&message[data]));
        }
    }
});
