//! What a reply handed to `H` was: the accounting of [`super::Dispatch`]
//! after it went out (access log bytes, metrics).

use sigma_http::Reply;

/// What a reply handed to `H` was, for the accounting after it went out.
#[derive(Debug, Clone, Copy)]
pub(super) enum Sent {
    /// A whole response, with its body's length.
    Response { status: u16, bytes: u64 },
    /// The head of a streamed response.
    Head(u16),
    /// A piece of a streamed body.
    Chunk(u64),
    /// The end of a streamed body (or its abort).
    End,
    /// A WebSocket upgrade accepted.
    Accept,
    /// A WebSocket message, with its payload length.
    Ws(usize),
    /// Anything else (a close frame).
    Other,
}

impl Sent {
    pub(super) fn of(reply: &Reply) -> Self {
        match reply {
            Reply::Response(r) => Self::Response {
                status: r.status,
                bytes: r.body.len() as u64,
            },
            Reply::Head(h) => Self::Head(h.status),
            Reply::Chunk(b) => Self::Chunk(b.len() as u64),
            Reply::EndOfBody | Reply::Abort => Self::End,
            Reply::Accept { .. } => Self::Accept,
            Reply::Ws(m) => Self::Ws(m.len()),
            _ => Self::Other,
        }
    }
}
