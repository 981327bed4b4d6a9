//! `sigma check --explain "METHOD PATH" [--user U] [--group G…]
//! [--provider P] [--from ADDR]` (DESIGN §4): which route a request
//! takes, its destination, and `A`'s decision with the rule that made it,
//! computed from the config alone (no server, no store), with the same
//! path normalisation, route lookup and policy code the server runs.
//! Exit status 0 when the request would be let through, 1 when refused.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::auth::policy::{Decision, Facts};
use crate::auth::{Identity, Provider};
use crate::config::{AuthLevel, Config};

/// Who is asking, as the flags describe them.
#[derive(Debug, Clone)]
pub struct Asker {
    /// `--user`; `None`: anonymous.
    pub user: Option<String>,
    /// `--group`.
    pub groups: Vec<String>,
    /// `--provider` (`password`, `oauth:NAME`, `jwt:ISSUER`).
    pub provider: Option<String>,
    /// `--from` (default 127.0.0.1).
    pub from: IpAddr,
}

/// What `--explain` found: the lines to print and whether it is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// `request …`, `route …`, `decision …`.
    pub lines: Vec<String>,
    /// Let through (exit 0) or refused (exit 1).
    pub allowed: bool,
}

/// Why the `--explain` arguments are wrong (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// Not `METHOD PATH`.
    #[error("--explain {0:?}: write \"METHOD /path\", e.g. \"GET /admin\"")]
    Request(String),
    /// `--provider` not one of the kinds.
    #[error("--provider {0:?}: password, oauth:NAME or jwt:ISSUER")]
    Provider(String),
    /// `--group` without `--user`.
    #[error("--group and --provider need --user")]
    GroupsWithoutUser,
}

fn provider(p: Option<&str>) -> Result<Provider, ExplainError> {
    match p {
        None | Some("password") => Ok(Provider::Password),
        Some(p) => match p.split_once(':') {
            Some(("oauth", name)) if !name.is_empty() => Ok(Provider::OAuth(name.to_owned())),
            Some(("jwt", iss)) if !iss.is_empty() => Ok(Provider::Jwt(iss.to_owned())),
            _ => Err(ExplainError::Provider(p.to_owned())),
        },
    }
}

/// Explains `request` (`"GET /admin?x=1"`) by `asker` under `config`.
pub fn explain(config: &Config, request: &str, asker: &Asker) -> Result<Explanation, ExplainError> {
    let bad = || ExplainError::Request(request.to_owned());
    let (method, target) = request.trim().split_once(' ').ok_or_else(bad)?;
    let method = sigma_http::Method::from_token(method.as_bytes()).ok_or_else(bad)?;
    if asker.user.is_none() && (!asker.groups.is_empty() || asker.provider.is_some()) {
        return Err(ExplainError::GroupsWithoutUser);
    }
    let identity = match &asker.user {
        Some(u) => Some(Arc::new(Identity {
            user: u.clone(),
            provider: provider(asker.provider.as_deref())?,
            world: None,
            session: None,
            groups: asker.groups.clone(),
        })),
        None => None,
    };
    let who = match &identity {
        Some(i) if i.groups.is_empty() => format!("{} ({})", i.user, i.provider),
        Some(i) => format!("{} ({}; groups {})", i.user, i.provider, i.groups.join(",")),
        None => "anonymous".to_owned(),
    };
    let mut lines = vec![format!(
        "request {} {} from {} as {who}",
        method.as_str(),
        target.trim(),
        asker.from
    )];
    let refuse = |mut lines: Vec<String>, why: String| {
        lines.push(format!("decision: refused, {why}"));
        Ok(Explanation {
            lines,
            allowed: false,
        })
    };
    let normalised =
        match crate::route::path::normalise_target(&Bytes::from(target.trim().as_bytes().to_vec()))
        {
            Ok(t) => t,
            Err(e) => return refuse(lines, format!("400: the path is refused ({e:?})")),
        };
    let path = normalised
        .split(|&b| b == b'?')
        .next()
        .unwrap_or_default()
        .to_vec();
    if crate::auth::endpoints::is_endpoint(&path) {
        lines.push("route: A's own endpoint (login, logout, /auth/…), before any route".into());
        lines.push("decision: allowed (A answers it)".into());
        return Ok(Explanation {
            lines,
            allowed: true,
        });
    }
    let Some(route) = config
        .routes
        .iter()
        .find(|r| crate::route::prefix_matches(r.path.as_bytes(), &path))
    else {
        lines.push("route: none".into());
        return refuse(lines, "404: no route takes this path".into());
    };
    let mut line = format!("route {} -> {} (auth {}", route.path, route.to, route.auth);
    if let Some(users) = &route.users {
        line.push_str(&format!(", users {}", users.join(",")));
    }
    if let Some(p) = &route.policy {
        line.push_str(&format!(", {p}"));
    }
    line.push(')');
    lines.push(line);
    // As the server does: `auth = "none"` authenticates nobody, then A's
    // own rule for `auth` and `users`, then the policy.
    let identity = if route.auth == AuthLevel::None {
        None
    } else {
        identity
    };
    match crate::auth::admit::authorize(&identity, route.auth, route.users.as_deref()) {
        Ok(()) => {}
        Err(crate::auth::admit::Denied::Unauthenticated) => {
            return refuse(lines, "401: auth = \"required\" and no identity".into());
        }
        Err(_) => {
            let who = identity.as_ref().map_or("", |i| i.user.as_str());
            return refuse(lines, format!("403: {who} is not in users"));
        }
    }
    let Some(policy) = &route.policy else {
        lines.push(format!(
            "decision: allowed, by auth = \"{}\" (no policy)",
            route.auth
        ));
        return Ok(Explanation {
            lines,
            allowed: true,
        });
    };
    let facts = Facts {
        identity: identity.as_deref(),
        client: asker.from,
        method,
    };
    match policy.decide(&facts) {
        Decision::Allowed { rule } => {
            lines.push(format!("decision: allowed, by {rule}"));
            Ok(Explanation {
                lines,
                allowed: true,
            })
        }
        Decision::Refused { status, rule } => refuse(lines, format!("{status}: by {rule}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml: &str) -> Config {
        crate::config::from_str(toml, &[]).expect("config")
    }

    fn asker(user: Option<&str>, groups: &[&str], from: &str) -> Asker {
        Asker {
            user: user.map(str::to_owned),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            provider: None,
            from: from.parse().unwrap(),
        }
    }

    const ADMIN: &str = r#"
[[route]]
path = "/admin"
to = "&echo"
allow = ["group:admins", "user:carol"]
deny = ["user:mallory", "cidr:10.0.0.0/8"]
methods = ["GET", "POST"]
"#;

    #[test]
    fn allowed_and_refused_with_the_rule() {
        let c = cfg(ADMIN);
        let e = explain(
            &c,
            "GET /admin/users?x=1",
            &asker(Some("alice"), &["admins"], "192.0.2.1"),
        )
        .unwrap();
        assert!(e.allowed, "{e:?}");
        assert_eq!(
            e.lines.last().unwrap(),
            "decision: allowed, by allow group:admins"
        );
        assert!(
            e.lines[1]
                .starts_with("route /admin -> &echo (auth required, allow group:admins,user:carol"),
            "{e:?}"
        );
        let e = explain(
            &c,
            "GET /admin",
            &asker(Some("alice"), &["admins"], "10.1.1.1"),
        )
        .unwrap();
        assert!(!e.allowed);
        assert_eq!(
            e.lines.last().unwrap(),
            "decision: refused, 403: by deny cidr:10.0.0.0/8"
        );
        let e = explain(&c, "DELETE /admin", &asker(Some("carol"), &[], "192.0.2.1")).unwrap();
        assert_eq!(
            e.lines.last().unwrap(),
            "decision: refused, 405: by DELETE not in methods"
        );
        let e = explain(&c, "GET /admin", &asker(None, &[], "192.0.2.1")).unwrap();
        assert_eq!(
            e.lines.last().unwrap(),
            "decision: refused, 401: auth = \"required\" and no identity"
        );
        let e = explain(
            &c,
            "GET /elsewhere",
            &asker(Some("carol"), &[], "192.0.2.1"),
        )
        .unwrap();
        assert_eq!(
            e.lines.last().unwrap(),
            "decision: refused, 404: no route takes this path"
        );
        // The path is normalised as the server does: no way around the prefix.
        let e = explain(&c, "GET /%61dmin", &asker(Some("bob"), &[], "192.0.2.1")).unwrap();
        assert!(e.lines[1].starts_with("route /admin"), "{e:?}");
        assert!(!e.allowed);
        assert!(matches!(
            explain(&c, "GET", &asker(None, &[], "::1")),
            Err(ExplainError::Request(_))
        ));
        assert!(matches!(
            explain(&c, "get /x", &asker(None, &[], "::1")),
            Err(ExplainError::Request(_))
        ));
    }
}
