//! The admin socket: `sigma user …` while `sigma serve` runs on the same
//! data directory (DESIGN §8).
//!
//! ```text
//!  sigma user add bob ──one JSON line (users::Op)──▶ DATA_DIR/admin.sock
//!        ◀──one JSON line (users::Reply)── [ admin ] ──▶ users::apply(store)
//!                                                  └──▶ A: revoke_user (cache, sockets 4401)
//! ```
//!
//! The embedded store is locked by the server, so the CLI cannot open it;
//! it sends its change here instead, and the server applies it to its own
//! store, so it takes effect at once: a new user can log in on the next
//! request, a deleted one's sessions and open WebSockets end.
//!
//! Who may use it: the socket file is mode 0600 in the data directory, and
//! each connection's peer credentials (`SO_PEERCRED`) must be the socket
//! file's owner (the server's user) or root; anyone else is answered with
//! an error and closed. One request per connection, at most
//! [`MAX_ADMIN_REQUEST`] bytes, within [`REQUEST_TIMEOUT`]; at most
//! [`MAX_CLIENTS`] connections are served at once (others wait in the
//! kernel's backlog). Passwords never reach it: the CLI sends Argon2id
//! hashes.

use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::auth::Auth;
use crate::store::Store;
use crate::users::{self, Op, Reply, ADMIN_SOCKET, MAX_ADMIN_REQUEST};

/// A request must arrive whole this soon after connecting.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once.
pub const MAX_CLIENTS: usize = 4;

/// The bound admin socket; removes its file when dropped (at shutdown).
#[derive(Debug)]
pub struct AdminSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `DATA_DIR/admin.sock` and serves it with `store` and `auth`.
/// Fails if another server answers there, or the socket cannot be bound
/// (the path too long for a Unix socket, a read-only directory).
pub fn serve(data_dir: &Path, store: Arc<dyn Store>, auth: Arc<Auth>) -> io::Result<AdminSocket> {
    let path = data_dir.join(ADMIN_SOCKET);
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another server answers on it",
        ));
    }
    // A file left by a server that did not shut down: nobody answers it.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let owner = std::fs::metadata(&path)?.uid();
    let task = tokio::spawn(accept_loop(listener, owner, store, auth));
    Ok(AdminSocket { path, task })
}

async fn accept_loop(listener: UnixListener, owner: u32, store: Arc<dyn Store>, auth: Arc<Auth>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin socket: accept failed");
                // EMFILE and the like: let a moment pass rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let store = Arc::clone(&store);
        let auth = Arc::clone(&auth);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = handle(stream, owner, store, auth).await {
                tracing::debug!(error = %e, "admin socket: connection ended");
            }
        });
    }
}

/// Serves one connection: one request, one reply.
async fn handle(
    mut stream: UnixStream,
    owner: u32,
    store: Arc<dyn Store>,
    auth: Arc<Auth>,
) -> io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    if uid != owner && uid != 0 {
        tracing::warn!(
            target: "sigma::security",
            event = "admin_refused",
            uid,
            "admin socket: refused a connection from another user"
        );
        return answer(
            &mut stream,
            refused("permission denied: not the server's user"),
        )
        .await;
    }
    let mut line = Vec::new();
    let read = {
        let mut reader = BufReader::new(&mut stream).take(MAX_ADMIN_REQUEST as u64 + 1);
        tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await
    };
    match read {
        Ok(r) => {
            r?;
        }
        Err(_) => return answer(&mut stream, refused("request timed out")).await,
    }
    if line.len() > MAX_ADMIN_REQUEST || line.last() != Some(&b'\n') {
        return answer(&mut stream, refused("request too long or unterminated")).await;
    }
    let op: Op = match serde_json::from_slice(&line) {
        Ok(op) => op,
        Err(e) => return answer(&mut stream, refused(&format!("bad request: {e}"))).await,
    };
    let reply = tokio::task::spawn_blocking(move || {
        let result = users::apply(&*store, &op);
        if result.is_ok() {
            if let Some(user) = op.revokes() {
                // The store ended the sessions; end them in memory too.
                let closed = auth.revoke_user(user);
                tracing::info!(user, closed, "admin socket: sessions revoked");
            }
            if let Some(user) = op.refreshes() {
                // Open sessions read the new groups on their next request.
                auth.refresh_user(user);
            }
            if let Some(key) = op.forgets_key() {
                auth.apikeys.forget(key);
            }
        }
        log_change(&op, result.as_ref().err());
        Reply::from(result)
    })
    .await
    .unwrap_or_else(|_| refused("internal error"));
    answer(&mut stream, reply).await
}

/// One `INFO` line per change (not for `has` and `list`), naming no hash.
fn log_change(op: &Op, error: Option<&users::UserError>) {
    let (what, user) = match op {
        Op::Add { name, .. } => ("add", name),
        Op::Del { name } => ("del", name),
        Op::Passwd { name, .. } => ("passwd", name),
        Op::Groups { name, .. } => ("groups", name),
        Op::KeyAdd { name, .. } => ("apikey add", name),
        Op::KeyDel { name } => ("apikey del", name),
        Op::Has { .. } | Op::List {} | Op::KeyList {} => return,
    };
    match error {
        None => tracing::info!(op = what, user = %user, "admin socket: user changed"),
        Some(e) => {
            tracing::info!(op = what, user = %user, error = %e, "admin socket: change refused")
        }
    }
}

fn refused(message: &str) -> Reply {
    Reply::Error {
        message: message.to_owned(),
        runtime: false,
    }
}

async fn answer(stream: &mut UnixStream, reply: Reply) -> io::Result<()> {
    let mut out = serde_json::to_vec(&reply).map_err(io::Error::other)?;
    out.push(b'\n');
    stream.write_all(&out).await?;
    stream.shutdown().await
}
