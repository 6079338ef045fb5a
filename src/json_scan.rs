//! A validating scanner for the shape nearly every client message has,
//! `{"event":"<name>","data":<any JSON value>}` (whitespace allowed), in one pass over the
//! bytes. serde_json's general path, with a visitor for the keys and raw values for the
//! parts, cost about 1,800 instructions for an echo message (callgrind), most of it per
//! call and per token rather than per byte.
//!
//! The scanner only ever says yes or "not mine": anything it does not recognise (other keys,
//! another order, an escape in the event or in a key, nesting deeper than `MAX_DEPTH`, or
//! text that is not JSON) goes to serde_json's path in `protocol.rs`, which decides, errors
//! included. So it has to be right only when it accepts, and what it accepts must be JSON
//! (RFC 8259) that `JSON.parse` accepts too: the data is spliced into the batch that JS
//! parses in one piece. Tests compare it with serde_json on generated and mutated input.

use std::ops::Range;

/// Levels of arrays and objects, the message's own object included; deeper data is left to
/// serde_json (whose own limit is 128), which also keeps this scanner's recursion small.
pub const MAX_DEPTH: u32 = 64;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Where the event (a JSON string without escapes, quotes included) and the data lie in a
/// message of exactly the two keys `event` then `data`; `None` for anything else.
pub fn event_then_data(text: &str) -> Option<(Range<usize>, Range<usize>)> {
    let mut scanner = Scanner {
        bytes: text.as_bytes(),
        at: 0,
    };
    scanner.skip_whitespace();
    scanner.punctuation(b'{')?;
    scanner.key(b"\"event\"")?;
    let event_start = scanner.at;
    scanner.plain_string()?;
    let event = event_start..scanner.at;
    scanner.skip_whitespace();
    scanner.punctuation(b',')?;
    scanner.key(b"\"data\"")?;
    let data_start = scanner.at;
    scanner.value(1)?;
    let data = data_start..scanner.at;
    scanner.skip_whitespace();
    scanner.punctuation(b'}')?;
    (scanner.at == scanner.bytes.len()).then_some((event, data))
}

/// Whether `text` is one JSON value (surrounding whitespace allowed) that this scanner
/// accepts; for the tests and the fuzz target, which compare it with serde_json.
pub fn is_json_value(text: &str) -> bool {
    let mut scanner = Scanner {
        bytes: text.as_bytes(),
        at: 0,
    };
    scanner.skip_whitespace();
    scanner.value(0).is_some() && {
        scanner.skip_whitespace();
        scanner.at == scanner.bytes.len()
    }
}

/// The bytes of `word` (little-endian) that are a quote, a backslash or a control
/// character, as their high bits. Only bytes above a flagged one can be flagged wrongly (the
/// borrow of the subtraction runs upwards), so the lowest flag is always exact.
fn special_bytes(word: u64) -> u64 {
    let has_zero_byte = |value: u64| value.wrapping_sub(ONES) & !value & HIGH_BITS;
    let quote = has_zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero_byte(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH_BITS;
    quote | backslash | control
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// `byte`, then whitespace.
    fn punctuation(&mut self, byte: u8) -> Option<()> {
        self.eat(byte)?;
        self.skip_whitespace();
        Some(())
    }

    /// A key written without escapes, then the colon.
    fn key(&mut self, quoted: &[u8]) -> Option<()> {
        self.eat_literal(quoted)?;
        self.skip_whitespace();
        self.punctuation(b':')
    }

    fn eat_literal(&mut self, literal: &[u8]) -> Option<()> {
        self.bytes[self.at..]
            .starts_with(literal)
            .then(|| self.at += literal.len())
    }

    /// Moves to the first quote, backslash or control character (or the end), eight bytes
    /// at a time.
    fn skip_plain_run(&mut self) {
        while let Some(chunk) = self.bytes.get(self.at..self.at + 8) {
            let special = special_bytes(u64::from_le_bytes(chunk.try_into().expect("eight bytes")));
            if special != 0 {
                self.at += (special.trailing_zeros() / 8) as usize;
                return;
            }
            self.at += 8;
        }
        while let Some(byte) = self.peek() {
            if byte == b'"' || byte == b'\\' || byte < 0x20 {
                return;
            }
            self.at += 1;
        }
    }

    /// A string without escapes, at its opening quote. The text is already UTF-8.
    fn plain_string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        self.skip_plain_run();
        self.eat(b'"')
    }

    /// A string, at its opening quote: raw control characters are not allowed, escapes
    /// are the nine of RFC 8259 (`\u` with four hex digits, any code unit, as JSON.parse).
    fn string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            self.skip_plain_run();
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => match *self.bytes.get(self.at + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 2,
                    b'u' => {
                        let hex = self.bytes.get(self.at + 2..self.at + 6)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        self.at += 6;
                    }
                    _ => return None,
                },
                // A control character.
                _ => return None,
            }
        }
    }

    /// Digits, at least one.
    fn digits(&mut self) -> Option<()> {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        (self.at > start).then_some(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`; what follows is checked by
    /// the caller (`01` fails there, on the `1`).
    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits()?,
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.digits()?;
        }
        Some(())
    }

    /// A value inside `depth` arrays or objects.
    fn value(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.string(),
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b't' => self.eat_literal(b"true"),
            b'f' => self.eat_literal(b"false"),
            b'n' => self.eat_literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn object(&mut self, depth: u32) -> Option<()> {
        self.container(b'{', b'}', depth, |scanner| {
            scanner.string()?;
            scanner.skip_whitespace();
            scanner.eat(b':')?;
            scanner.skip_whitespace();
            scanner.value(depth)
        })
    }

    fn array(&mut self, depth: u32) -> Option<()> {
        self.container(b'[', b']', depth, |scanner| scanner.value(depth))
    }

    /// `open`, then items separated by commas, then `close`.
    fn container(
        &mut self,
        open: u8,
        close: u8,
        depth: u32,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(open)?;
        self.skip_whitespace();
        if self.eat(close).is_some() {
            return Some(());
        }
        loop {
            item(self)?;
            self.skip_whitespace();
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    self.skip_whitespace();
                }
                byte if byte == close => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{mutate, random_value, Random};
    use super::*;
    use serde::de::IgnoredAny;

    fn serde_accepts(text: &str) -> bool {
        serde_json::from_str::<IgnoredAny>(text).is_ok()
    }

    /// Values, valid and not, that probe every rule of the grammar.
    const PROBES: &[&str] = &[
        "0",
        "-0",
        "1",
        "-1",
        "10",
        "01",
        "-01",
        "00",
        "1.5",
        "1.",
        ".5",
        "-.5",
        "1e5",
        "1E5",
        "1e+5",
        "1e-5",
        "1e",
        "1e+",
        "-",
        "--1",
        "+1",
        "1.5e3",
        "0.0",
        "1.0e",
        "0e0",
        "1ee5",
        "123456789012345678901234567890",
        "1e400",
        "-1e-400",
        "0x10",
        "NaN",
        "Infinity",
        "true",
        "false",
        "null",
        "tru",
        "nul",
        "True",
        "nulll",
        "\"\"",
        "\"a\"",
        "\"\\\"\"",
        "\"\\\\\"",
        "\"\\/\"",
        "\"\\b\\f\\n\\r\\t\"",
        "\"\\u0041\"",
        "\"\\u00e9\"",
        "\"\\uD800\"",
        "\"\\uDC00\\uD800\"",
        "\"\\u12\"",
        "\"\\u12G4\"",
        "\"\\x41\"",
        "\"\\a\"",
        "\"\\\"",
        "\"\\",
        "\"",
        "\"abc",
        "\"tab\there\"",
        "\"nl\nhere\"",
        "\"\u{7f}\"",
        "\"é – 中 😀\"",
        "\"0123456789abcdef0123456789\\n456789abcdef\"",
        "[]",
        "{}",
        "[1]",
        "[1,]",
        "[,1]",
        "[1 2]",
        "[1,2]",
        " [ 1 , 2 ] ",
        "[[[]]]",
        "[",
        "]",
        "{\"a\":1}",
        "{\"a\":1,}",
        "{\"a\"}",
        "{\"a\":}",
        "{a:1}",
        "{\"a\" 1}",
        "{\"a\":1 \"b\":2}",
        "{\"a\":1,\"a\":2}",
        "{\"\\u0061\":[{}]}",
        "{,}",
        "{\"a\":1}}",
        "[1]]",
        "1 2",
        "",
        " ",
        "\t\n\r 1 \r\n\t",
        "\u{b}1",
        "\u{c}1",
        "1\u{0}",
        "{\"k\":\"v\",\"n\":[1,-2.5e-3,true,false,null,{}]}",
    ];

    #[test]
    fn agrees_with_serde_on_every_rule_of_the_grammar() {
        for probe in PROBES {
            assert_eq!(is_json_value(probe), serde_accepts(probe), "{probe:?}");
        }
    }

    #[test]
    fn finds_the_event_and_the_data() {
        let parts = |text: &'static str| {
            event_then_data(text).map(|(event, data)| (&text[event], &text[data]))
        };
        assert_eq!(
            parts(r#"{"event":"chat","data":{"t":1,"s":"é"}}"#),
            Some((r#""chat""#, r#"{"t":1,"s":"é"}"#))
        );
        assert_eq!(
            parts(" \n{ \"event\" :\t\"a b\" , \"data\" : [ 1 , null ] }\r\n"),
            Some((r#""a b""#, "[ 1 , null ]"))
        );
        assert_eq!(parts(r#"{"event":"","data":0}"#), Some((r#""""#, "0")));
        // Not recognised: left to serde_json's path.
        for text in [
            r#"{"event":"say \"hi\"","data":1}"#,
            r#"{"ev\u0065nt":"chat","data":1}"#,
            r#"{"event":"chat","d\u0061ta":1}"#,
            r#"{"data":1,"event":"chat"}"#,
            r#"{"event":"chat"}"#,
            r#"{"event":"chat","data":1,"id":2}"#,
            r#"{"event":5,"data":1}"#,
            r#"{"event":"chat","data":01}"#,
            r#"{"event":"chat","data":1}x"#,
            r#"{"event":"chat","data":1"#,
            r#"["event","chat"]"#,
        ] {
            assert_eq!(parts(text), None, "{text}");
        }
    }

    #[test]
    fn finds_the_first_special_byte_of_a_word_exactly() {
        let mut random = Random(0x1234_5678_9ABC_DEF1);
        let plain = |random: &mut Random| loop {
            let byte = random.next() as u8;
            if byte >= 0x20 && byte != b'"' && byte != b'\\' {
                return byte;
            }
        };
        for _ in 0..20_000 {
            let mut bytes: [u8; 8] = std::array::from_fn(|_| plain(&mut random));
            assert_eq!(special_bytes(u64::from_le_bytes(bytes)), 0, "{bytes:x?}");
            let first = random.below(8);
            for byte in &mut bytes[first..] {
                if random.below(2) == 0 {
                    *byte = [b'"', b'\\', 0, 0x1f, random.next() as u8 & 0x1f][random.below(5)];
                }
            }
            bytes[first] = [b'"', b'\\', 0, 0x1f, random.next() as u8 & 0x1f][random.below(5)];
            let special = special_bytes(u64::from_le_bytes(bytes));
            assert_eq!(special.trailing_zeros() / 8, first as u32, "{bytes:x?}");
        }
    }

    #[test]
    fn leaves_deep_nesting_to_serde() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(is_json_value(&nested(MAX_DEPTH as usize)));
        assert!(!is_json_value(&nested(MAX_DEPTH as usize + 1)));
        assert!(is_json_value(&format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_DEPTH as usize),
            "}".repeat(MAX_DEPTH as usize)
        )));
    }

    #[test]
    fn agrees_with_serde_on_generated_and_mutated_values() {
        let mut random = Random(0x9E37_79B9_7F4A_7C15);
        let (mut accepted, mut total) = (0, 0);
        for _ in 0..60_000 {
            let mut data = String::new();
            random_value(&mut random, 4, &mut data);
            mutate(&mut random, &mut data);
            // Two mutations cannot make a member of their own (`,"k":1`), so a message
            // serde_json reads is one of event then data.
            let message = format!("{{\"event\":\"chat\",\"data\":{data}}}");
            let found = event_then_data(&message);
            assert_eq!(found.is_some(), serde_accepts(&message), "{message:?}");
            if let Some((event, data)) = found {
                assert_eq!(&message[event], "\"chat\"");
                assert!(serde_accepts(&message[data]), "{message:?}");
                accepted += 1;
            }
            total += 1;
        }
        // Both outcomes were exercised.
        assert!(
            accepted > total / 10 && accepted < total * 9 / 10,
            "{accepted} of {total}"
        );
    }
}

/// Generated and mutated JSON, for this module's tests and `protocol.rs`'.
#[cfg(test)]
pub(crate) mod testing {
    /// xorshift64*: the same inputs on every run, so a failure can be replayed.
    pub struct Random(pub u64);

    impl Random {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        pub fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    /// A random valid value, up to `depth` levels deep, with random whitespace.
    pub fn random_value(random: &mut Random, depth: u32, out: &mut String) {
        const SPACE: [&str; 6] = ["", "", "", " ", "\n\t", "\r\n "];
        const ATOMS: [&str; 14] = [
            "0",
            "-12",
            "3.25",
            "-0.5e-7",
            "6E+2",
            "true",
            "false",
            "null",
            "\"\"",
            "\"text\"",
            "\"\\u00e9\\n\\\"\"",
            "\"é – 中 😀\"",
            "\"0123456789abcdefghij\"",
            "1e400",
        ];
        let space = |random: &mut Random| SPACE[random.below(SPACE.len())];
        match if depth == 0 { 0 } else { random.below(4) } {
            0 | 1 => out.push_str(ATOMS[random.below(ATOMS.len())]),
            2 => {
                out.push('[');
                for i in 0..random.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(space(random));
                    random_value(random, depth - 1, out);
                    out.push_str(space(random));
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                for i in 0..random.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(space(random));
                    out.push_str(["\"k\"", "\"\"", "\"key \\t\"", "\"中\""][random.below(4)]);
                    out.push_str(space(random));
                    out.push(':');
                    out.push_str(space(random));
                    random_value(random, depth - 1, out);
                }
                out.push('}');
            }
        }
    }

    /// Up to two random edits of `text` (insertions, deletions, replacements) with bytes that
    /// matter to the grammar, and a few that do not.
    pub fn mutate(random: &mut Random, text: &mut String) {
        const ALPHABET: &[&str] = &[
            "{", "}", "[", "]", "\"", ":", ",", "\\", "/", "u", "0", "1", "9", ".", "e", "E", "+",
            "-", "t", "r", "n", "l", "f", "a", "s", " ", "\t", "\n", "\r", "\u{0}", "\u{1f}",
            "\u{b}", "é", "中", "x",
        ];
        for _ in 0..random.below(3) {
            let mut at = random.below(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let piece = ALPHABET[random.below(ALPHABET.len())];
            let remove = random.below(3);
            if remove > 0 && at < text.len() {
                text.remove(at);
            }
            if remove != 1 {
                text.insert_str(at, piece);
            }
        }
    }
}
