//! Streamed HTTP exchanges between the connection and a destination
//! (DESIGN §6; issue #6): the body channel and the streamed answer types
//! live in `sigma-core` ([`sigma_core::body`]), re-exported here so that
//! `crate::streaming::…` paths keep working.
//!
//! ```text
//!  H ──Event::Body──▶ dispatch ──BodyTx──▶ destination
//!  H ◀─Reply::Chunk── conn ◀── BodyStream ◀──┘
//! ```
//!
//! [`ends_with_session`]: an open-ended response (an event stream) ends
//! with the login session that authenticated it.

pub use sigma_core::body::*;

/// `body`, cut off (the connection aborted) once the login session `id`
/// ends (logout, expiry, user deleted): registered with `A` like a
/// socket, whose 4401 it stands for.
pub fn ends_with_session(
    body: sigma_core::BodyStream,
    auth: &crate::auth::Auth,
    id: &crate::store::SessionId,
    user: &str,
) -> sigma_core::BodyStream {
    use futures_util::StreamExt;
    let (push, rx) = sigma_core::ws_push_queue();
    let registration = auth.sessions.register_socket(id, user, push.closer());
    let state = Some((body, rx, registration, push));
    Box::pin(futures_util::stream::unfold(state, |state| async move {
        let (mut body, mut rx, registration, push) = state?;
        tokio::select! {
            biased;
            // Only the revocation mark wakes it: the sender is held here.
            _ = rx.recv() => Some((Err(()), None)),
            piece = body.next() => {
                let piece = piece?;
                Some((piece, Some((body, rx, registration, push))))
            }
        }
    }))
}
