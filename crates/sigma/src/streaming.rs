//! Streamed HTTP exchanges between the connection and a destination
//! (DESIGN §6; issue #6): the body channel and the streamed answer types
//! live in `sigma-core` ([`sigma_core::body`]), re-exported here so that
//! `crate::streaming::…` paths keep working.
//!
//! ```text
//!  H ──Event::Body──▶ dispatch ──BodyTx──▶ destination
//!  H ◀─Reply::Chunk── conn ◀── BodyStream ◀──┘
//! ```

pub use sigma_core::body::*;
