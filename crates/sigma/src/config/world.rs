//! `[world.<name>]`: the world commands (DESIGN §5), checked against the
//! routes they reuse; `[worlds]` (the session socket's limits) and the
//! worker-code type belong to the world destination (T → H → A → router
//! → destination) and are re-exported from `sigma_dest::world::config`.

use std::path::PathBuf;

use serde::Deserialize;

use super::keypath::{key, KeyPath};
use super::route::{check_user_list, Destination, RouteConfig};
// The world destination's own tables, re-exported for `crate::config`.
pub use sigma_dest::world::config::{WorldCode, WorldsConfig, BUILTIN_WORLD_CODE};

/// One `[world.<name>]`: a world command, its worker code and where its
/// messages go (DESIGN §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldCommand {
    /// The command's name: 1–64 characters of `[A-Za-z0-9_-]` (it is
    /// served at `/world/<name>.js`).
    pub name: String,
    /// The worker code.
    pub code: WorldCode,
    /// Where the world's messages go: a destination with a WebSocket
    /// endpoint ([`Destination::hosts_worlds`]).
    pub to: Destination,
    /// If set, only these users may start it (never empty). See
    /// [`Config::world_users`](super::Config::world_users) for who may, once the route it reuses is
    /// taken into account.
    pub users: Option<Vec<String>>,
}

/// The world commands when the config has no `[world.*]` table: `echo`
/// (to `&echo`) and the web page's demo `chat` (to `&broadcast`).
pub fn default_world_commands() -> Vec<WorldCommand> {
    vec![
        WorldCommand {
            name: "chat".to_owned(),
            code: WorldCode::Builtin("chat".to_owned()),
            to: Destination::Broadcast,
            users: None,
        },
        WorldCommand {
            name: "echo".to_owned(),
            code: WorldCode::Builtin("echo".to_owned()),
            to: Destination::Echo,
            users: None,
        },
    ]
}

/// One `[world.<name>]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WorldTable {
    pub(super) code: String,
    pub(super) to: String,
    #[serde(default)]
    pub(super) users: Option<Vec<String>>,
}

/// Validates every `[world.<name>]` (name, `code`, `to`).
pub(super) fn world_commands(
    tables: std::collections::BTreeMap<String, WorldTable>,
) -> Result<Vec<WorldCommand>, (KeyPath, String)> {
    let mut out = Vec::with_capacity(tables.len());
    for (name, t) in tables {
        let at = |k: &str| vec![key("world"), key(&name), key(k)];
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err((
                vec![key("world"), key(&name)],
                format!("invalid world command name {name:?}: use 1 to 64 characters of A-Z a-z 0-9 _ -"),
            ));
        }
        let code = match t.code.strip_prefix("builtin:") {
            Some(b) if BUILTIN_WORLD_CODE.contains(&b) => WorldCode::Builtin(b.to_owned()),
            Some(b) => {
                return Err((
                    at("code"),
                    format!(
                        "unknown built-in world code {b:?} (built-ins are {})",
                        BUILTIN_WORLD_CODE.join(", ")
                    ),
                ))
            }
            None if t.code.is_empty() => {
                return Err((
                    at("code"),
                    "must name a JavaScript file or builtin:NAME".into(),
                ))
            }
            None => WorldCode::File(PathBuf::from(t.code)),
        };
        let to = Destination::parse(&t.to).map_err(|e| (at("to"), e.to_string()))?;
        if to == Destination::World {
            return Err((at("to"), "a world cannot forward to &world".into()));
        }
        if !to.hosts_worlds() {
            return Err((
                at("to"),
                format!(
                    "{to} has no WebSocket endpoint a world can run on; use &echo, &broadcast or &db"
                ),
            ));
        }
        if let Some(users) = &t.users {
            check_user_list(users).map_err(|e| (at("users"), e.to_string()))?;
        }
        out.push(WorldCommand {
            name,
            code,
            to,
            users: t.users,
        });
    }
    Ok(out)
}

/// A world command that reuses a route's destination must not reach
/// users that route does not admit: the two `users` lists intersect, and
/// an empty intersection (nobody could start it) is an error.
pub(super) fn check_world_access(
    routes: &[RouteConfig],
    world: &[WorldCommand],
) -> Result<(), (KeyPath, String)> {
    for w in world {
        let Some((_, route)) = world_route(routes, w) else {
            continue;
        };
        if let Some(allowed) = world_users(routes, w) {
            if allowed.is_empty() {
                return Err((
                    vec![key("world"), key(&w.name), key("users")],
                    format!(
                        "none of these users may use route {} (users {}), whose {} this world reuses",
                        route.path,
                        route.users.as_deref().unwrap_or_default().join(","),
                        route.to
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The route whose destination world command `w` reuses: the first one
/// (in match order) with the same `to` that does not serve a shared
/// `&db` namespace.
pub(super) fn world_route<'a>(
    routes: &'a [RouteConfig],
    w: &WorldCommand,
) -> Option<(usize, &'a RouteConfig)> {
    routes
        .iter()
        .enumerate()
        .find(|(_, r)| r.to == w.to && r.shared.is_none())
}

/// Who may start `w`: its own `users`, intersected with those of the
/// route it reuses; `None`: every authenticated user.
pub(super) fn world_users(routes: &[RouteConfig], w: &WorldCommand) -> Option<Vec<String>> {
    let route = world_route(routes, w).and_then(|(_, r)| r.users.as_ref());
    match (&w.users, route) {
        (None, None) => None,
        (Some(own), None) => Some(own.clone()),
        (None, Some(route)) => Some(route.clone()),
        (Some(own), Some(route)) => {
            Some(own.iter().filter(|u| route.contains(u)).cloned().collect())
        }
    }
}
