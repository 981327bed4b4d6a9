//! `sigma user add|del|list|passwd` (DESIGN §9) and the first-start
//! `admin` account (DESIGN §8).
//!
//! ```text
//!  operator ──▶ sigma user … ──▶ [ users ] ──▶ Store (the data directory)
//!  sigma serve, no users yet  ──▶ [ users ] ──▶ create `admin`, print its password once
//! ```
//!
//! The command line faces an operator, not a client; it still validates
//! every name with [`valid_user_name`] and every password with the rules
//! of [`password`]. Passwords come from standard input with
//! `--password-stdin` (first line, trailing `\r\n` removed) or, on a
//! terminal, from a prompt without echo, asked twice. They never appear in
//! a message. Changing a password or deleting a user revokes the user's
//! sessions (the store does that in the same transaction).
//!
//! While `sigma serve` runs on the same data directory (its embedded
//! store is locked), the commands send their change to the server's admin
//! socket ([`ADMIN_SOCKET`], served by [`crate::admin`]) as one [`Op`],
//! and the server applies it at once; otherwise they open the store
//! themselves. Either way [`apply`] does the work. `list`, `del` and
//! `passwd` on a data directory that does not exist fail
//! ([`UserError::NoDataDir`]) rather than create an empty store. Every
//! failure is a [`UserError`]; `main` turns it into exit status 2, or 1
//! for a runtime failure ([`UserError::is_runtime`]).

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;

use crate::auth::password::{self, PasswordError, MAX_PASSWORD_LEN};
use crate::config::{self, ConfigError};
use crate::store::MAX_GROUPS;
use crate::store::{
    random_bytes, valid_user_name, RedbStore, Store, StoreError, UserRecord, MAX_USER_NAME_LEN,
};
use std::sync::Arc;

/// The account created on first start.
pub const ADMIN_USER: &str = "admin";
/// Length of the generated `admin` password (alphanumeric: ~119 bits).
pub const ADMIN_PASSWORD_LEN: usize = 20;

/// `sigma user …`.
#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Add {
        /// The user name (1–64 characters of A-Z a-z 0-9 . _ @ -).
        name: String,
        /// A group of the user (policies' `group:` subjects); repeat it
        /// for several.
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        location: DataArgs,
    },
    /// Delete a user and revoke all of its sessions.
    Del {
        /// The user name.
        name: String,
        #[command(flatten)]
        location: DataArgs,
    },
    /// List the users, one per line.
    List {
        #[command(flatten)]
        location: DataArgs,
    },
    /// Replace a user's groups (none given: no groups). Its sessions stay
    /// and see the new groups on their next request.
    Groups {
        /// The user name.
        name: String,
        /// The groups (1–64 characters of A-Z a-z 0-9 . _ @ - each).
        groups: Vec<String>,
        #[command(flatten)]
        location: DataArgs,
    },
    /// Change a user's password and revoke all of its sessions.
    Passwd {
        /// The user name.
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        location: DataArgs,
    },
}

/// `sigma apikey …`.
#[derive(Debug, clap::Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key and print it, once (only its SHA-256 is kept).
    Add {
        /// The key's name: the identity's user (1–64 characters of
        /// A-Z a-z 0-9 . _ @ -).
        name: String,
        /// A group of the key (policies' `group:` subjects); repeat it.
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        #[command(flatten)]
        location: DataArgs,
    },
    /// List the keys: name, groups, creation time (never the key).
    List {
        #[command(flatten)]
        location: DataArgs,
    },
    /// Delete a key; requests with it are refused at once.
    Del {
        /// The key's name.
        name: String,
        #[command(flatten)]
        location: DataArgs,
    },
}

/// Where the store is.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DataArgs {
    /// Data directory (default: the config's `data_dir`, `./sigma-data`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Configuration file to take `data_dir` from.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
}

/// Where the password comes from.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct PasswordArgs {
    /// Read the password from standard input (its first line).
    #[arg(long)]
    pub password_stdin: bool,
}

/// Why a `sigma user` command or the first-start account failed. No
/// message contains a password or a hash.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    /// The name breaks [`valid_user_name`].
    #[error(
        "invalid user name {0:?}: use 1 to {MAX_USER_NAME_LEN} characters of A-Z a-z 0-9 . _ @ -"
    )]
    InvalidName(String),
    /// A group name that breaks the rules, or too many groups.
    #[error(
        "invalid group {0:?}: use 1 to {MAX_USER_NAME_LEN} characters of A-Z a-z 0-9 . _ @ -, at most {MAX_GROUPS} groups"
    )]
    InvalidGroup(String),
    /// `apikey add` of an existing key name.
    #[error("API key {0} already exists")]
    KeyExists(String),
    /// `apikey del` of a key that does not exist.
    #[error("no such API key: {0}")]
    NoSuchKey(String),
    /// A key hash sent to the admin socket that is not 64 hex digits.
    #[error("not an API key hash (64 lower-case hex digits)")]
    BadKeyHash,
    /// `add` of an existing user.
    #[error("user {0} already exists")]
    Exists(String),
    /// `del` or `passwd` of a user that does not exist.
    #[error("no such user: {0}")]
    NoSuchUser(String),
    /// Neither `--password-stdin` nor a terminal to prompt on.
    #[error("no password given: use --password-stdin and write the password to standard input")]
    NoPassword,
    /// The two prompted passwords differ.
    #[error("the passwords do not match")]
    PasswordMismatch,
    /// The password read is not UTF-8.
    #[error("the password is not valid UTF-8")]
    PasswordNotUtf8,
    /// Standard input or the terminal could not be read.
    #[error("cannot read the password: {0}")]
    ReadPassword(io::Error),
    /// The password breaks the length rules, or hashing failed.
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// The configuration named by `--config` (or the environment) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store failed (including: locked by a running server).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Standard output could not be written.
    #[error("cannot write the output: {0}")]
    Output(io::Error),
    /// The data directory does not exist (`list`, `del`, `passwd`).
    #[error("no data directory {}: give the one `sigma serve` uses (--data, --config or SIGMA_DATA_DIR)", .0.display())]
    NoDataDir(PathBuf),
    /// The running server's admin socket failed.
    #[error("the running server's admin socket {}: {error}", socket.display())]
    Admin { socket: PathBuf, error: io::Error },
    /// The running server refused the change (its message).
    #[error("{message}")]
    Server { message: String, runtime: bool },
}

impl UserError {
    /// A runtime failure (exit status 1: the store locked or failing, a
    /// stream or socket that broke) rather than a usage error (2).
    pub fn is_runtime(&self) -> bool {
        let store_runtime = |s: &StoreError| !matches!(s, StoreError::InvalidUserName);
        match self {
            UserError::Store(s) => store_runtime(s),
            UserError::ReadPassword(_) | UserError::Output(_) | UserError::Admin { .. } => true,
            UserError::Server { runtime, .. } => *runtime,
            _ => false,
        }
    }
}

/// The file name of the admin socket in the data directory: a running
/// `sigma serve` answers `sigma user …` there ([`crate::admin`]).
pub const ADMIN_SOCKET: &str = "admin.sock";

/// Most bytes of one request to the admin socket (a name and a PHC hash
/// fit many times over).
pub const MAX_ADMIN_REQUEST: usize = 4096;

/// Most bytes of one reply from the admin socket (`list` of many users).
pub const MAX_ADMIN_REPLY: u64 = 64 << 20;

/// One change or query of the users, as `sigma user …` applies it to the
/// store itself or sends it, one JSON line, to a running server. A new
/// password travels as its Argon2id hash, never in clear.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Op {
    /// Does `name` exist? Answers `[name]` or `[]` (`add` and `passwd`
    /// ask before prompting for a password).
    Has { name: String },
    /// Create `name` with the hash `phc` and `groups`.
    Add {
        name: String,
        phc: String,
        #[serde(default)]
        groups: Vec<String>,
    },
    /// Replace `name`'s groups.
    Groups { name: String, groups: Vec<String> },
    /// Store the API key `name` by its hash.
    KeyAdd {
        name: String,
        hash: String,
        #[serde(default)]
        groups: Vec<String>,
    },
    /// Every API key (name, groups, created).
    KeyList {},
    /// Delete the API key `name`.
    KeyDel { name: String },
    /// Delete `name`, its sessions and its `&db` namespace.
    Del { name: String },
    /// Every user name.
    List {},
    /// Set `name`'s hash to `phc`, revoking its sessions.
    Passwd { name: String, phc: String },
}

impl Op {
    /// The user whose sessions the change ends (`del`, `passwd`), which a
    /// running server must also end in memory (cache, open sockets).
    pub fn revokes(&self) -> Option<&str> {
        match self {
            Op::Del { name } | Op::Passwd { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The user whose record changes under open sessions (`groups`),
    /// which a running server must read again.
    pub fn refreshes(&self) -> Option<&str> {
        match self {
            Op::Groups { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The API key whose cached identity a running server must drop.
    pub fn forgets_key(&self) -> Option<&str> {
        match self {
            Op::KeyDel { name } => Some(name),
            _ => None,
        }
    }
}

/// The admin socket's answer: the lines to print, or the error (its
/// message, and whether it is a runtime failure: exit 1 rather than 2).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Reply {
    Ok(Vec<String>),
    Error { message: String, runtime: bool },
}

impl From<Result<Vec<String>, UserError>> for Reply {
    fn from(r: Result<Vec<String>, UserError>) -> Self {
        match r {
            Ok(lines) => Reply::Ok(lines),
            Err(e) => Reply::Error {
                message: e.to_string(),
                runtime: e.is_runtime(),
            },
        }
    }
}

/// Applies `op` to `store`; returns the lines to print. Validates names
/// again: a request from the socket is checked like one from the CLI.
pub fn apply(store: &dyn Store, op: &Op) -> Result<Vec<String>, UserError> {
    match op {
        Op::Has { name } => {
            check_name(name)?;
            Ok(store
                .user_get(name)?
                .map(|_| name.clone())
                .into_iter()
                .collect())
        }
        Op::Add { name, phc, groups } => {
            check_name(name)?;
            password::check_phc(phc)?;
            let rec = UserRecord {
                phc: phc.clone(),
                created: crate::auth::unix_now(),
                groups: check_groups(groups)?,
            };
            if !store.user_create(name, &rec)? {
                return Err(UserError::Exists(name.clone()));
            }
            Ok(vec![format!("added user {name}")])
        }
        Op::Del { name } => {
            check_name(name)?;
            if !store.user_delete(name)? {
                return Err(UserError::NoSuchUser(name.clone()));
            }
            announce_user_revoked(store, name);
            // The user's &db namespace goes too: a later user of the same
            // name must not inherit it.
            let keys = store.kv_drop_namespace(name)?;
            Ok(vec![format!("deleted user {name} ({keys} &db keys)")])
        }
        Op::Groups { name, groups } => {
            check_name(name)?;
            let groups = check_groups(groups)?;
            if !store.user_set_groups(name, &groups)? {
                return Err(UserError::NoSuchUser(name.clone()));
            }
            announce(store, crate::store::Revocation::Groups(name.clone()));
            Ok(vec![if groups.is_empty() {
                format!("user {name} has no groups")
            } else {
                format!("user {name} is in {}", groups.join(", "))
            }])
        }
        Op::List {} => Ok(store.user_list()?),
        Op::KeyAdd { name, hash, groups } => {
            check_name(name)?;
            if !crate::store::valid_key_hash(hash) {
                return Err(UserError::BadKeyHash);
            }
            let rec = crate::store::ApiKeyRecord {
                hash: hash.clone(),
                groups: check_groups(groups)?,
                created: crate::auth::unix_now(),
            };
            if !store.apikey_create(name, &rec)? {
                return Err(UserError::KeyExists(name.clone()));
            }
            Ok(vec![format!("added API key {name}")])
        }
        Op::KeyList {} => Ok(store
            .apikey_list()?
            .into_iter()
            .map(|(name, k)| {
                let groups = if k.groups.is_empty() {
                    "-".to_owned()
                } else {
                    k.groups.join(",")
                };
                format!("{name} groups={groups} created={}", k.created)
            })
            .collect()),
        Op::KeyDel { name } => {
            check_name(name)?;
            if !store.apikey_delete(name)? {
                return Err(UserError::NoSuchKey(name.clone()));
            }
            announce(store, crate::store::Revocation::ApiKey(name.clone()));
            Ok(vec![format!("deleted API key {name}")])
        }
        Op::Passwd { name, phc } => {
            check_name(name)?;
            password::check_phc(phc)?;
            if !store.user_set_password(name, phc)? {
                return Err(UserError::NoSuchUser(name.clone()));
            }
            announce_user_revoked(store, name);
            Ok(vec![format!(
                "changed the password of {name}; its sessions are revoked"
            )])
        }
    }
}

/// Tells the servers on a shared store (PostgreSQL) that `user`'s
/// sessions ended, so that they close its sockets (4401). Best effort: the
/// sessions are gone from the store either way.
fn announce_user_revoked(store: &dyn Store, user: &str) {
    announce(store, crate::store::Revocation::User(user.to_owned()));
}

/// Tells the servers on a shared store what changed (best effort: the
/// store has the change either way, and caches expire).
fn announce(store: &dyn Store, r: crate::store::Revocation) {
    if let Err(e) = store.announce_revocation(&r) {
        tracing::warn!(error = %e, "could not tell the running servers");
    }
}

/// Where a command's [`Op`]s go: a running server's admin socket, or the
/// store itself.
enum Target {
    Server(PathBuf),
    Store(Arc<dyn Store>),
}

impl Target {
    /// The server answering on the data directory's admin socket if there
    /// is one, else the store. `create`: the data directory may be created
    /// (`add`, as the first start would); otherwise a missing one is
    /// [`UserError::NoDataDir`], not a new empty store.
    fn open(args: &DataArgs, env: &[(String, String)], create: bool) -> Result<Self, UserError> {
        let dir = match &args.data {
            Some(d) => d.clone(),
            None => {
                let cfg = config::load(args.config.as_deref(), env)?;
                if cfg.store.url.is_some() {
                    // PostgreSQL: no lock to share; the server reads the
                    // database itself.
                    return Ok(Target::Store(crate::storage::open(
                        &cfg.store,
                        &cfg.data_dir,
                    )?));
                }
                cfg.data_dir
            }
        };
        if !create && !dir.is_dir() {
            return Err(UserError::NoDataDir(dir));
        }
        let socket = dir.join(ADMIN_SOCKET);
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Ok(Target::Server(socket));
        }
        Ok(Target::Store(Arc::new(RedbStore::open(&dir)?)))
    }

    fn apply(&self, op: &Op) -> Result<Vec<String>, UserError> {
        match self {
            Target::Store(store) => apply(&**store, op),
            Target::Server(socket) => ask_server(socket, op),
        }
    }
}

/// Sends `op` to the server on `socket` and returns its answer.
fn ask_server(socket: &std::path::Path, op: &Op) -> Result<Vec<String>, UserError> {
    let admin = |error: io::Error| UserError::Admin {
        socket: socket.to_owned(),
        error,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(admin)?;
    let timeout = Some(std::time::Duration::from_secs(30));
    stream.set_read_timeout(timeout).map_err(admin)?;
    stream.set_write_timeout(timeout).map_err(admin)?;
    let mut line = serde_json::to_vec(op).map_err(|e| admin(io::Error::other(e)))?;
    line.push(b'\n');
    // A server that refuses us answers and closes without reading: its
    // answer is still there to read after a broken pipe.
    match stream.write_all(&line) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(admin(e)),
        _ => {}
    }
    let mut answer = Vec::new();
    io::BufReader::new(stream)
        .take(MAX_ADMIN_REPLY)
        .read_until(b'\n', &mut answer)
        .map_err(admin)?;
    let reply: Reply = serde_json::from_slice(&answer).map_err(|e| {
        admin(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unreadable answer: {e}"),
        ))
    })?;
    match reply {
        Reply::Ok(lines) => Ok(lines),
        Reply::Error { message, runtime } => Err(UserError::Server { message, runtime }),
    }
}

/// Runs a `sigma apikey` command; `add` prints the new key on `out`,
/// once.
pub fn run_apikey(
    cmd: ApiKeyCommand,
    env: &[(String, String)],
    out: &mut dyn Write,
) -> Result<(), UserError> {
    let lines = match cmd {
        ApiKeyCommand::Add {
            name,
            groups,
            location,
        } => {
            check_name(&name)?;
            check_groups(&groups)?;
            let (key, hash) = crate::auth::apikey::generate()?;
            let mut lines =
                Target::open(&location, env, true)?.apply(&Op::KeyAdd { name, hash, groups })?;
            lines.push(key);
            lines.push("(shown only now: keep it in a secret store)".to_owned());
            lines
        }
        ApiKeyCommand::List { location } => {
            Target::open(&location, env, false)?.apply(&Op::KeyList {})?
        }
        ApiKeyCommand::Del { name, location } => {
            check_name(&name)?;
            Target::open(&location, env, false)?.apply(&Op::KeyDel { name })?
        }
    };
    for line in lines {
        say(out, &line)?;
    }
    Ok(())
}

/// Runs a `sigma user` command from the process's standard streams.
pub fn run(cmd: UserCommand, env: &[(String, String)]) -> Result<(), UserError> {
    let stdin = io::stdin();
    let interactive = stdin.is_terminal();
    let mut input = stdin.lock();
    let mut out = io::stdout().lock();
    run_with(cmd, env, &mut input, interactive, &mut out)
}

/// [`run`] with explicit streams. `interactive`: the password may be
/// prompted for on the terminal when `--password-stdin` is absent.
pub fn run_with(
    cmd: UserCommand,
    env: &[(String, String)],
    input: &mut dyn BufRead,
    interactive: bool,
    out: &mut dyn Write,
) -> Result<(), UserError> {
    let lines = match cmd {
        UserCommand::Add {
            name,
            groups,
            password,
            location,
        } => {
            check_name(&name)?;
            check_groups(&groups)?;
            // Fail on a locked store or an existing user before asking
            // for a password.
            let target = Target::open(&location, env, true)?;
            if !target.apply(&Op::Has { name: name.clone() })?.is_empty() {
                return Err(UserError::Exists(name));
            }
            let pw = read_password(password, input, interactive, &name)?;
            let phc = password::hash(&pw)?;
            target.apply(&Op::Add { name, phc, groups })?
        }
        UserCommand::Groups {
            name,
            groups,
            location,
        } => {
            check_name(&name)?;
            check_groups(&groups)?;
            Target::open(&location, env, false)?.apply(&Op::Groups { name, groups })?
        }
        UserCommand::Del { name, location } => {
            check_name(&name)?;
            Target::open(&location, env, false)?.apply(&Op::Del { name })?
        }
        UserCommand::List { location } => {
            Target::open(&location, env, false)?.apply(&Op::List {})?
        }
        UserCommand::Passwd {
            name,
            password,
            location,
        } => {
            check_name(&name)?;
            let target = Target::open(&location, env, false)?;
            if target.apply(&Op::Has { name: name.clone() })?.is_empty() {
                return Err(UserError::NoSuchUser(name));
            }
            let pw = read_password(password, input, interactive, &name)?;
            let phc = password::hash(&pw)?;
            target.apply(&Op::Passwd { name, phc })?
        }
    };
    for line in lines {
        say(out, &line)?;
    }
    Ok(())
}

/// First start of `sigma serve`: if the store has no users, creates
/// [`ADMIN_USER`] with a random password and writes it to `out`, once:
///
/// ```text
/// created user admin with password <PASSWORD>
/// change it with: sigma user passwd admin --password-stdin
/// ```
///
/// Returns whether the account was created.
pub fn first_start(store: &dyn Store, out: &mut dyn Write) -> Result<bool, UserError> {
    if store.user_count()? > 0 {
        return Ok(false);
    }
    let pw = random_password(ADMIN_PASSWORD_LEN)?;
    let rec = UserRecord {
        phc: password::hash(&pw)?,
        created: crate::auth::unix_now(),
        groups: Vec::new(),
    };
    if !store.user_create(ADMIN_USER, &rec)? {
        return Ok(false);
    }
    say(
        out,
        &format!("created user {ADMIN_USER} with password {pw}\nchange it with: sigma user passwd {ADMIN_USER} --password-stdin"),
    )?;
    out.flush().map_err(UserError::Output)?;
    Ok(true)
}

/// `len` characters of `A-Z a-z 0-9` from the operating system's CSPRNG
/// (rejection sampling: no character is more likely than another).
pub fn random_password(len: usize) -> Result<String, StoreError> {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // The largest multiple of 62 that fits a byte: 248.
    const LIMIT: u8 = 248;
    let mut pw = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while pw.len() < len {
        random_bytes(&mut buf)?;
        for &b in buf.iter().filter(|&&b| b < LIMIT) {
            if pw.len() == len {
                break;
            }
            if let Some(&c) = ALPHABET.get(usize::from(b % 62)) {
                pw.push(char::from(c));
            }
        }
    }
    Ok(pw)
}

/// `groups` valid, sorted and without repeats ([`UserError::InvalidGroup`]).
fn check_groups(groups: &[String]) -> Result<Vec<String>, UserError> {
    crate::store::normalise_groups(groups).map_err(UserError::InvalidGroup)
}

fn check_name(name: &str) -> Result<(), UserError> {
    if valid_user_name(name) {
        Ok(())
    } else {
        Err(UserError::InvalidName(name.to_owned()))
    }
}

fn say(out: &mut dyn Write, line: &str) -> Result<(), UserError> {
    writeln!(out, "{line}").map_err(UserError::Output)
}

/// The new password: from `input` with `--password-stdin`, else from two
/// terminal prompts if `interactive`, else [`UserError::NoPassword`].
fn read_password(
    args: PasswordArgs,
    input: &mut dyn BufRead,
    interactive: bool,
    name: &str,
) -> Result<String, UserError> {
    if args.password_stdin {
        return read_password_line(input);
    }
    if !interactive {
        return Err(UserError::NoPassword);
    }
    let first = rpassword::prompt_password(format!("password for {name}: "))
        .map_err(UserError::ReadPassword)?;
    password::check_length(&first)?;
    let second =
        rpassword::prompt_password("repeat the password: ").map_err(UserError::ReadPassword)?;
    if first != second {
        return Err(UserError::PasswordMismatch);
    }
    Ok(first)
}

/// The first line of `input` without its `\n` or `\r\n`; reads at most a
/// few bytes more than [`MAX_PASSWORD_LEN`].
pub fn read_password_line(input: &mut dyn BufRead) -> Result<String, UserError> {
    // Room for the longest password and its `\r\n`, plus one byte to tell
    // "too long" from "exactly the longest".
    let cap = MAX_PASSWORD_LEN + 3;
    let mut line = Vec::new();
    input
        .take(cap as u64)
        .read_until(b'\n', &mut line)
        .map_err(UserError::ReadPassword)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    let pw = String::from_utf8(line).map_err(|_| UserError::PasswordNotUtf8)?;
    password::check_length(&pw)?;
    Ok(pw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SessionStore as _, UserStore as _};
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!(
            "sigma-users-{tag}-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ))
    }

    fn loc(dir: &Path) -> DataArgs {
        DataArgs {
            data: Some(dir.to_owned()),
            config: None,
        }
    }

    const STDIN: PasswordArgs = PasswordArgs {
        password_stdin: true,
    };

    fn run_cmd(cmd: UserCommand, stdin: &str) -> Result<String, UserError> {
        let mut out = Vec::new();
        run_with(cmd, &[], &mut stdin.as_bytes(), false, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn password_line_rules() {
        let read = |s: &[u8]| read_password_line(&mut &s[..]);
        assert_eq!(read(b"pw\n").unwrap(), "pw");
        assert_eq!(read(b"pw\r\n").unwrap(), "pw");
        assert_eq!(read(b"pw").unwrap(), "pw");
        assert_eq!(read(b"pw\nsecond line\n").unwrap(), "pw");
        assert_eq!(read(b" p w \n").unwrap(), " p w ");
        assert_eq!(read(b"p\rw\n").unwrap(), "p\rw");
        assert!(matches!(
            read(b""),
            Err(UserError::Password(PasswordError::Empty))
        ));
        assert!(matches!(
            read(b"\n"),
            Err(UserError::Password(PasswordError::Empty))
        ));
        assert!(matches!(
            read(b"\r\n"),
            Err(UserError::Password(PasswordError::Empty))
        ));
        assert!(matches!(read(b"\xff\n"), Err(UserError::PasswordNotUtf8)));
        let max = "a".repeat(MAX_PASSWORD_LEN);
        assert_eq!(read(format!("{max}\r\n").as_bytes()).unwrap(), max);
        assert_eq!(read(max.as_bytes()).unwrap(), max);
        let long = "a".repeat(MAX_PASSWORD_LEN + 1);
        assert!(matches!(
            read(format!("{long}\n").as_bytes()),
            Err(UserError::Password(PasswordError::TooLong { .. }))
        ));
        let huge = "a".repeat(1 << 20);
        assert!(matches!(
            read(huge.as_bytes()),
            Err(UserError::Password(PasswordError::TooLong { .. }))
        ));
    }

    #[test]
    fn random_passwords() {
        let a = random_password(ADMIN_PASSWORD_LEN).unwrap();
        let b = random_password(ADMIN_PASSWORD_LEN).unwrap();
        assert_eq!(a.len(), 20);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
        assert_eq!(random_password(0).unwrap(), "");
        assert_eq!(random_password(500).unwrap().len(), 500);
    }

    #[test]
    fn commands_round_trip() {
        let dir = temp_dir("cmds");
        let add = |name: &str, pw: &str| {
            run_cmd(
                UserCommand::Add {
                    name: name.into(),
                    groups: Vec::new(),
                    password: STDIN,
                    location: loc(&dir),
                },
                pw,
            )
        };
        assert_eq!(add("bob", "pw1\n").unwrap(), "added user bob\n");
        assert_eq!(add("alice", "pw2\n").unwrap(), "added user alice\n");
        assert!(matches!(add("bob", "x\n"), Err(UserError::Exists(_))));
        assert!(matches!(add("b b", "x\n"), Err(UserError::InvalidName(_))));
        assert!(matches!(
            add("carol", "\n"),
            Err(UserError::Password(PasswordError::Empty))
        ));
        let list = run_cmd(
            UserCommand::List {
                location: loc(&dir),
            },
            "",
        )
        .unwrap();
        assert_eq!(list, "alice\nbob\n");

        // Without --password-stdin and without a terminal: a usage error.
        let err = run_cmd(
            UserCommand::Passwd {
                name: "bob".into(),
                password: PasswordArgs::default(),
                location: loc(&dir),
            },
            "pw\n",
        )
        .unwrap_err();
        assert!(matches!(err, UserError::NoPassword), "{err:?}");

        let passwd = |name: &str| {
            run_cmd(
                UserCommand::Passwd {
                    name: name.into(),
                    password: STDIN,
                    location: loc(&dir),
                },
                "new\n",
            )
        };
        {
            let store = RedbStore::open(&dir).unwrap();
            let id = crate::store::SessionId([1; 32]);
            let rec = crate::store::SessionRecord {
                user: "bob".into(),
                provider: "password".into(),
                created: 1,
                last_seen: 1,
                expires: u64::MAX,
                groups: Vec::new(),
            };
            store.session_put(&id, &rec, true).unwrap();
        }
        assert!(passwd("bob")
            .unwrap()
            .starts_with("changed the password of bob"));
        assert!(matches!(passwd("nobody"), Err(UserError::NoSuchUser(_))));
        {
            let store = RedbStore::open(&dir).unwrap();
            assert_eq!(store.sessions_of_user("bob").unwrap(), vec![]);
            let phc = store.user_get("bob").unwrap().unwrap().phc;
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let v = password::Verifier::new(1, 0);
            let t = v.admit().unwrap();
            assert!(rt.block_on(v.verify(t, Some(phc.clone()), "new".into())));
            let t = v.admit().unwrap();
            assert!(!rt.block_on(v.verify(t, Some(phc), "pw1".into())));
        }

        let del = |name: &str| {
            run_cmd(
                UserCommand::Del {
                    name: name.into(),
                    location: loc(&dir),
                },
                "",
            )
        };
        assert_eq!(del("bob").unwrap(), "deleted user bob (0 &db keys)\n");
        assert!(matches!(del("bob"), Err(UserError::NoSuchUser(_))));
        let list = run_cmd(
            UserCommand::List {
                location: loc(&dir),
            },
            "",
        )
        .unwrap();
        assert_eq!(list, "alice\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn data_dir_from_config_file() {
        let dir = temp_dir("cfg");
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("sigma.toml");
        let data = dir.join("from-config");
        std::fs::write(
            &cfg,
            format!("data_dir = {:?}\n", data.display().to_string()),
        )
        .unwrap();
        // The config's data_dir: that is where the store is opened.
        let args = DataArgs {
            data: None,
            config: Some(cfg.clone()),
        };
        drop(Target::open(&args, &[], true).unwrap());
        assert!(data.join(crate::store::DB_FILE).is_file());
        // --data wins over the config.
        let flag = dir.join("flag");
        let args = DataArgs {
            data: Some(flag.clone()),
            config: Some(cfg),
        };
        drop(Target::open(&args, &[], true).unwrap());
        assert!(flag.join(crate::store::DB_FILE).is_file());
        // Without `create`, a missing directory is an error, created nowhere.
        let args = DataArgs {
            data: Some(dir.join("missing")),
            config: None,
        };
        assert!(matches!(
            Target::open(&args, &[], false),
            Err(UserError::NoDataDir(_))
        ));
        assert!(!dir.join("missing").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn first_start_creates_admin_once() {
        let dir = temp_dir("first");
        let store = RedbStore::open(&dir).unwrap();
        let mut out = Vec::new();
        assert!(first_start(&store, &mut out).unwrap());
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        let first = lines.next().unwrap();
        let pw = first
            .strip_prefix("created user admin with password ")
            .unwrap();
        assert_eq!(pw.len(), ADMIN_PASSWORD_LEN);
        assert_eq!(
            lines.next().unwrap(),
            "change it with: sigma user passwd admin --password-stdin"
        );
        assert_eq!(lines.next(), None);
        let phc = store.user_get(ADMIN_USER).unwrap().unwrap().phc;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let v = password::Verifier::new(1, 0);
        let t = v.admit().unwrap();
        assert!(rt.block_on(v.verify(t, Some(phc), pw.into())));

        let mut out = Vec::new();
        assert!(!first_start(&store, &mut out).unwrap());
        assert!(out.is_empty());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn messages_name_the_problem_without_secrets() {
        assert_eq!(
            UserError::InvalidName("a b".into()).to_string(),
            "invalid user name \"a b\": use 1 to 64 characters of A-Z a-z 0-9 . _ @ -"
        );
        assert_eq!(
            UserError::Exists("bob".into()).to_string(),
            "user bob already exists"
        );
        assert_eq!(
            UserError::NoSuchUser("bob".into()).to_string(),
            "no such user: bob"
        );
        assert!(UserError::NoPassword
            .to_string()
            .contains("--password-stdin"));
    }
}
