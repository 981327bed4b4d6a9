//! `[auth]`: the settings of A, the identity stage of T → H → A → router
//! → destination (DESIGN §4). The table's type lives in `sigma-auth`
//! ([`sigma_auth::config::AuthConfig`]); config assembly keeps the checks
//! across its keys here, where key paths are.

use super::keypath::{key, KeyPath, Seg};

pub use sigma_auth::config::AuthConfig;

/// `scheme://host[:port]` with an http(s) scheme and nothing after.
fn valid_origin(o: &str) -> bool {
    let Some(rest) = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// The checks across `[auth]`'s keys: the origins, the session
/// timeouts, `public_url` and the `[auth.oauth.<name>]` tables
/// (DESIGN §4). The error names the key (from `auth` down).
pub(super) fn check(auth: &AuthConfig) -> Result<(), (KeyPath, String)> {
    for (i, origin) in auth.allowed_origins.iter().enumerate() {
        if !valid_origin(origin) {
            return Err((
                vec![key("auth"), key("allowed_origins"), Seg::Index(i)],
                format!(
                    "invalid origin {origin:?}: expected scheme://host[:port], e.g. \"https://app.example.com\""
                ),
            ));
        }
    }
    if auth.session_idle_timeout > auth.session_lifetime {
        return Err((
            vec![key("auth"), key("session_idle_timeout")],
            "must not be longer than auth.session_lifetime".into(),
        ));
    }
    if let Some(url) = &auth.public_url {
        if !valid_origin(url.trim_end_matches('/')) {
            return Err((
                vec![key("auth"), key("public_url")],
                format!("invalid public URL {url:?}: expected scheme://host[:port], e.g. \"https://chat.example.com\""),
            ));
        }
    } else if !auth.oauth.is_empty() {
        return Err((
            vec![key("auth"), key("public_url")],
            "is required with [auth.oauth.*]: providers redirect to <public_url>/auth/<name>/callback".into(),
        ));
    }
    for (name, p) in &auth.oauth {
        if let Err(e) = p.validate(name) {
            let mut path = vec![key("auth"), key("oauth"), key(name)];
            if !e.key.is_empty() {
                path.push(key(e.key));
            }
            return Err((path, e.message));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sigma_auth::oauth::config::Secret;

    /// The whole configuration holding an OAuth secret never shows it
    /// (the `[auth]` table's own test is in `sigma-auth`).
    #[test]
    fn a_loaded_config_never_shows_an_oauth_secret() {
        let config = crate::config::from_str(
            "[auth]\npublic_url = \"https://chat.example.com\"\n[auth.oauth.gh]\nkind = \"github\"\nclient_id = \"c\"\nclient_secret = \"gh-secret-4f1d9a\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            config.auth.oauth["gh"]
                .client_secret
                .as_ref()
                .map(Secret::expose),
            Some("gh-secret-4f1d9a")
        );
        assert!(!format!("{config:?}").contains("gh-secret-4f1d9a"));
    }
}
