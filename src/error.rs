//! The crate's one error type. `js::to_js_error` is the one place it becomes a JS error.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// The listener could not bind.
    Bind {
        address: String,
        source: std::io::Error,
    },
    /// The server was shut down; the operation needs a running one.
    Closed,
    /// Called before `configure()`.
    NotConfigured,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bind { address, source } => write!(f, "cannot listen on {address}: {source}"),
            Error::Closed => write!(f, "the server is shut down"),
            Error::NotConfigured => {
                write!(f, "the server is not configured; call configure() first")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. } => Some(source),
            _ => None,
        }
    }
}
