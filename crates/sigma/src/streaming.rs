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

/// The login session a streamed response was authenticated by, if any.
pub struct SessionBound(
    Option<(
        std::sync::Arc<crate::auth::Auth>,
        crate::store::SessionId,
        String,
    )>,
);

impl SessionBound {
    /// The session of a request of `identity` (none for bearer tokens,
    /// API keys and anonymous requests).
    pub fn new(
        auth: Option<&std::sync::Arc<crate::auth::Auth>>,
        session: Option<crate::store::SessionId>,
        identity: &sigma_core::Principal,
    ) -> Self {
        Self(match (auth, session, identity) {
            (Some(a), Some(id), Some(who)) => {
                Some((std::sync::Arc::clone(a), id, who.user.clone()))
            }
            _ => None,
        })
    }

    /// `body` as sent: an open-ended one (no length: an event stream)
    /// ends with the session ([`ends_with_session`]).
    pub fn wrap(self, head: &sigma_http::ResponseHead, body: BodyStream) -> BodyStream {
        match self.0 {
            Some((auth, id, user)) if head.content_length.is_none() => {
                ends_with_session(body, &auth, &id, &user)
            }
            _ => body,
        }
    }
}

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
