//! The HTTP/1.1 upgrade request: parse it, decide, and write the answer.
//!
//! Only a WebSocket upgrade on the configured path is accepted. Anything else gets a small
//! plain-text HTTP error and the connection is closed, so a browser or curl pointed at the
//! port sees why nothing happened.

use std::borrow::Cow;

use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::protocol::push_json_string;

/// Upgrade requests larger than this are refused (431).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// The parts of an upgrade request the server keeps. The headers are two allocations, not
/// two per header: every connection makes one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The request target as sent, path and query.
    pub url: String,
    /// Each header's name (lower case) and value, back to back, in the request's order.
    header_text: String,
    /// Per header, where its name ends and where its value ends in `header_text`; each
    /// name starts where the previous value ended.
    header_ends: Vec<(u32, u32)>,
}

/// An HTTP status with a short plain-text reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
}

impl UpgradeRequest {
    /// Every header as (lower-case name, value), in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = 0;
        self.header_ends.iter().map(move |&(name_end, value_end)| {
            let (name_end, value_end) = (name_end as usize, value_end as usize);
            let header = (
                &self.header_text[start..name_end],
                &self.header_text[name_end..value_end],
            );
            start = value_end;
            header
        })
    }

    /// The values of every header named `name` (lower case), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers()
            .filter(move |(header, _)| *header == name)
            .map(|(_, value)| value)
    }

    /// Whether the request may open a connection under an `allowedOrigins` list (lower
    /// case, without trailing slashes; empty: any origin). A request without an `Origin`
    /// header does not come from a browser page and is let through: origin checks protect
    /// users' browsers from other sites' pages, not the server from other programs.
    pub fn origin_allowed(&self, allowed: &[String]) -> bool {
        if allowed.is_empty() {
            return true;
        }
        match self.header_values("origin").next() {
            None => true,
            Some(origin) => {
                let origin = origin.trim().trim_end_matches('/');
                allowed
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(origin))
            }
        }
    }

    /// The request as JSON for the application's callbacks: `{ clientId, remoteAddress,
    /// url, headers }`, with repeated headers joined as HTTP allows (`; ` for cookies).
    pub fn to_json(&self, client_id: &str, remote_address: &str) -> String {
        // Written by hand: this runs for every connection, and a request has a dozen headers.
        // Only a repeated header needs a string of its own.
        let mut merged: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(self.header_ends.len());
        for (name, value) in self.headers() {
            match merged.iter_mut().find(|(seen, _)| *seen == name) {
                Some((_, joined)) => {
                    let joined = joined.to_mut();
                    joined.push_str(if name == "cookie" { "; " } else { ", " });
                    joined.push_str(value);
                }
                None => merged.push((name, Cow::Borrowed(value))),
            }
        }
        let mut out = Vec::with_capacity(64 + self.url.len() + self.header_text.len() * 5 / 4);
        out.extend_from_slice(b"{\"clientId\":");
        push_json_string(&mut out, client_id);
        out.extend_from_slice(b",\"remoteAddress\":");
        push_json_string(&mut out, remote_address);
        out.extend_from_slice(b",\"url\":");
        push_json_string(&mut out, &self.url);
        out.extend_from_slice(b",\"headers\":{");
        for (i, (name, value)) in merged.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_json_string(&mut out, name);
            out.push(b':');
            push_json_string(&mut out, value);
        }
        out.extend_from_slice(b"}}");
        String::from_utf8(out).expect("JSON written from strings is UTF-8")
    }
}

pub enum Decision {
    Accept {
        request: UpgradeRequest,
        accept_key: String,
    },
    Reject(Rejection),
}

const BAD_REQUEST: Rejection = Rejection {
    status: 400,
    reason: "Bad Request",
};

/// Parses the request at the start of `buf`. `Ok(None)`: incomplete, read more.
/// On success also returns how many bytes the request took (frames may follow it).
pub fn decide(buf: &[u8], path: &str) -> Result<Option<(Decision, usize)>, Rejection> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let used = match request.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_BYTES => {
            return Err(Rejection {
                status: 431,
                reason: "Request Header Fields Too Large",
            })
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejection {
                status: 431,
                reason: "Request Header Fields Too Large",
            })
        }
        Err(_) => return Err(BAD_REQUEST),
    };
    let url = request.path.ok_or(BAD_REQUEST)?;
    let request_path = url.split('?').next().unwrap_or_default();
    if request_path != path {
        return Ok(Some((
            Decision::Reject(Rejection {
                status: 404,
                reason: "Not Found",
            }),
            used,
        )));
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|value| {
            value
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    };
    let reject = |status, reason| Ok(Some((Decision::Reject(Rejection { status, reason }), used)));
    if request.method != Some("GET") {
        return reject(405, "Method Not Allowed");
    }
    if request.version != Some(1) {
        return reject(400, "Bad Request");
    }
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return reject(426, "Upgrade Required");
    }
    if header("sec-websocket-version") != Some("13") {
        return reject(426, "Upgrade Required");
    }
    let Some(key) = header("sec-websocket-key").filter(|key| is_valid_key(key)) else {
        return reject(400, "Bad Request");
    };
    let accept_key = derive_accept_key(key.as_bytes());
    let mut header_text = String::with_capacity(
        request
            .headers
            .iter()
            .map(|h| h.name.len() + h.value.len())
            .sum(),
    );
    let mut header_ends = Vec::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        // httparse accepts only token characters (ASCII) in names.
        let name_start = header_text.len();
        header_text.push_str(h.name);
        header_text[name_start..].make_ascii_lowercase();
        let name_end = header_text.len() as u32;
        header_text.push_str(&String::from_utf8_lossy(h.value));
        // One read delivers at most a few tens of KB (lossy decoding at most triples it), far
        // below u32::MAX.
        header_ends.push((name_end, header_text.len() as u32));
    }
    let request = UpgradeRequest {
        url: url.to_string(),
        header_text,
        header_ends,
    };
    Ok(Some((
        Decision::Accept {
            request,
            accept_key,
        },
        used,
    )))
}

/// A key is the base64 form of 16 bytes: 22 characters and `==`.
fn is_valid_key(key: &str) -> bool {
    key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The 101 answer; `extensions`: the `Sec-WebSocket-Extensions` value, if one was agreed.
pub fn accept_response(accept_key: &str, extensions: Option<&str>) -> String {
    // Appended, not `format!`ted: once per connection.
    const HEAD: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ";
    let mut out = String::with_capacity(HEAD.len() + accept_key.len() + 64);
    out.push_str(HEAD);
    out.push_str(accept_key);
    out.push_str("\r\n");
    if let Some(value) = extensions {
        out.push_str("Sec-WebSocket-Extensions: ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out
}

/// The reason phrase of a status an upgrade hook chose (anything unusual: "Refused").
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Refused",
    }
}

pub fn reject_response(rejection: Rejection) -> String {
    let body = format!("{} {}\n", rejection.status, rejection.reason);
    let upgrade_hint = if rejection.status == 426 {
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {} {}\r\n{upgrade_hint}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        rejection.status,
        rejection.reason,
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade(path: &str, extra: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn status_of(request: &str) -> u16 {
        match decide(request.as_bytes(), "/ws") {
            Ok(Some((Decision::Accept { .. }, _))) => 101,
            Ok(Some((Decision::Reject(rejection), _))) | Err(rejection) => rejection.status,
            Ok(None) => 0,
        }
    }

    #[test]
    fn accepts_a_valid_upgrade_with_the_rfc_example_key() {
        let text = upgrade("/ws?token=1", "Origin: http://a\r\n");
        let Ok(Some((
            Decision::Accept {
                request,
                accept_key,
            },
            used,
        ))) = decide(text.as_bytes(), "/ws")
        else {
            panic!("not accepted");
        };
        assert_eq!(used, text.len());
        assert_eq!(accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(request.url, "/ws?token=1");
        assert!(request
            .headers()
            .any(|header| header == ("origin", "http://a")));
        assert_eq!(
            request.header_values("upgrade").collect::<Vec<_>>(),
            ["websocket"]
        );
    }

    #[test]
    fn answers_everything_else_with_an_http_error() {
        assert_eq!(status_of(&upgrade("/other", "")), 404);
        assert_eq!(status_of("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"), 426);
        assert_eq!(status_of("POST /ws HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
        assert_eq!(status_of("GET /other HTTP/1.1\r\nHost: x\r\n\r\n"), 404);
        assert_eq!(
            status_of(&upgrade("/ws", "").replace("Version: 13", "Version: 8")),
            426
        );
        assert_eq!(status_of(&upgrade("/ws", "").replace(KEY, "short")), 400);
        assert_eq!(status_of("\x16\x03\x01garbage\r\n\r\n"), 400);
        assert_eq!(status_of("GET /ws HTTP/1.0\r\nHost: x\r\n\r\n"), 400);
        let huge = format!("GET /ws HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST_BYTES));
        assert_eq!(status_of(&huge), 431);
        assert_eq!(status_of("GET /ws HTTP/1.1\r\nHost"), 0);
    }

    #[test]
    fn responses_are_well_formed_http() {
        let response = reject_response(Rejection {
            status: 426,
            reason: "Upgrade Required",
        });
        assert!(response.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(response.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(response.ends_with("\r\n\r\n426 Upgrade Required\n"));
        assert_eq!(
            accept_response("abc", None),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: abc\r\n\r\n"
        );
        assert!(
            accept_response("abc", Some("permessage-deflate")).ends_with(
                "Sec-WebSocket-Accept: abc\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
            )
        );
    }

    fn accepted(extra: &str) -> UpgradeRequest {
        match decide(upgrade("/ws?room=a&x=%20", extra).as_bytes(), "/ws") {
            Ok(Some((Decision::Accept { request, .. }, _))) => request,
            _ => panic!("not accepted"),
        }
    }

    #[test]
    fn checks_the_origin_against_the_allowed_list() {
        let allowed = vec!["https://app.example".to_string()];
        assert!(accepted("Origin: https://app.example\r\n").origin_allowed(&allowed));
        assert!(accepted("Origin: HTTPS://APP.example/\r\n").origin_allowed(&allowed));
        assert!(!accepted("Origin: https://evil.example\r\n").origin_allowed(&allowed));
        assert!(!accepted("Origin: null\r\n").origin_allowed(&allowed));
        // Not from a browser page: no Origin to check.
        assert!(accepted("").origin_allowed(&allowed));
        assert!(accepted("Origin: https://evil.example\r\n").origin_allowed(&[]));
    }

    #[test]
    fn gives_callbacks_the_request_as_json() {
        let request = accepted("Cookie: a=1\r\nCookie: b=2\r\nX-Tag: one\r\nX-Tag: two\r\n");
        let json: serde_json::Value =
            serde_json::from_str(&request.to_json("id-1", "127.0.0.1:5000")).unwrap();
        assert_eq!(json["clientId"], "id-1");
        assert_eq!(json["remoteAddress"], "127.0.0.1:5000");
        assert_eq!(json["url"], "/ws?room=a&x=%20");
        assert_eq!(json["headers"]["cookie"], "a=1; b=2");
        assert_eq!(json["headers"]["x-tag"], "one, two");
        assert_eq!(json["headers"]["sec-websocket-version"], "13");
    }
}
