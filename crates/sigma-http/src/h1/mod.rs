//! HTTP/1.x half of `H`: head scanning and parsing, body framing, response
//! encoding (RFC 9112, strict). [`crate::ServerConn`] composes these.

pub mod decode;
pub mod encode;
pub mod request;
pub mod scan;
