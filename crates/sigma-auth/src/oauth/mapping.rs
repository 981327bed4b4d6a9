//! How a provider's user becomes a sigma user (DESIGN §4, issue #7).
//! Sans-IO: the provider's answer in, a user name or a refusal out.
//!
//! - The sigma user name is the configured `user_claim` (OIDC: a claim of
//!   the ID token or userinfo, default `email`; GitHub: `login`, `email`
//!   or `id`). E-mail addresses and GitHub logins are lower-cased (both are
//!   case-insensitive at the provider); the result must be a valid sigma
//!   user name (`A-Z a-z 0-9 . _ @ -`, at most 64).
//! - An e-mail address counts only when the provider says it is verified:
//!   `user_claim = "email"` with an unverified address is refused.
//! - `allowed_domains` (if not empty): the mapped e-mail (for
//!   `user_claim = "email"`) or, otherwise, some verified e-mail address of
//!   the user must be in one of the domains (exact match, no subdomains).
//! - `allowed_users` (if not empty): the mapped name must be listed
//!   (ignoring case for e-mail addresses and GitHub logins, which are
//!   lower-cased: `"OctoCat"` in the list admits `octocat`).
//! - A mapped name that is also a local password user is refused
//!   ([`MapError::NameTaken`], checked by the callback against the store)
//!   unless the operator linked the two by listing the name in this
//!   provider's `allowed_users` ([`linked`]): otherwise a provider account
//!   named `admin` would become sigma's `admin`.

use std::fmt;

use super::config::{OAuthProviderConfig, ProviderKind};

/// What a provider told sigma about the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderUser {
    /// The value of the configured user claim (or GitHub field), if any.
    pub claim: Option<String>,
    /// The user's e-mail addresses the provider marks as verified.
    pub verified_emails: Vec<String>,
    /// The members of the configured `groups_claim` that are valid group
    /// names, sorted (OIDC; none otherwise).
    pub groups: Vec<String>,
}

/// The valid group names among `v` (an array of strings), sorted and
/// unique, at most `MAX_GROUPS`; anything else: none.
pub fn groups_of(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::Array(items)) => {
            sigma_store::valid_groups(items.iter().filter_map(serde_json::Value::as_str))
        }
        _ => Vec::new(),
    }
}

/// Why a provider's user may not log in. The text is shown to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapError {
    /// The provider did not send the configured claim.
    NoClaim(String),
    /// `user_claim = "email"` but the address is not verified.
    UnverifiedEmail,
    /// The claim is not a valid sigma user name.
    InvalidName,
    /// No verified e-mail address in an allowed domain.
    DomainNotAllowed,
    /// The user is not in `allowed_users`.
    UserNotAllowed,
    /// The name is a local password user's and the provider is not linked
    /// to it (the name is not in its `allowed_users`).
    NameTaken,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoClaim(c) => write!(f, "The provider did not send the “{c}” of your account."),
            Self::UnverifiedEmail => {
                f.write_str("Your e-mail address is not verified at the provider.")
            }
            Self::InvalidName => {
                f.write_str("Your account name at the provider cannot be used as a user name here.")
            }
            Self::DomainNotAllowed => {
                f.write_str("Your e-mail domain is not allowed to sign in here.")
            }
            Self::UserNotAllowed => f.write_str("Your account is not allowed to sign in here."),
            Self::NameTaken => f.write_str(
                "Your account name at the provider belongs to a local account here and is not linked to this provider.",
            ),
        }
    }
}

impl MapError {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoClaim(_) => "oauth_no_claim",
            Self::UnverifiedEmail => "oauth_unverified_email",
            Self::InvalidName => "oauth_invalid_name",
            Self::DomainNotAllowed => "oauth_domain_not_allowed",
            Self::UserNotAllowed => "oauth_user_not_allowed",
            Self::NameTaken => "oauth_name_taken",
        }
    }
}

fn domain_of(email: &str) -> Option<&str> {
    email.rsplit_once('@').map(|(_, d)| d)
}

/// The sigma user name for `user` under `cfg`'s rules.
pub fn map_user(cfg: &OAuthProviderConfig, user: &ProviderUser) -> Result<String, MapError> {
    let claim = cfg.user_claim();
    let raw = user
        .claim
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| MapError::NoClaim(claim.to_owned()))?;
    let is_email = claim == "email";
    let name = if folds_case(cfg) {
        raw.to_ascii_lowercase()
    } else {
        raw.to_owned()
    };
    let verified: Vec<String> = user
        .verified_emails
        .iter()
        .map(|e| e.to_ascii_lowercase())
        .collect();
    if is_email && !verified.contains(&name) {
        return Err(MapError::UnverifiedEmail);
    }
    if !sigma_store::valid_user_name(&name) {
        return Err(MapError::InvalidName);
    }
    if !cfg.allowed_domains.is_empty() {
        let in_domain = |e: &str| {
            domain_of(e).is_some_and(|d| {
                cfg.allowed_domains
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(d))
            })
        };
        let ok = if is_email {
            in_domain(&name)
        } else {
            verified.iter().any(|e| in_domain(e))
        };
        if !ok {
            return Err(MapError::DomainNotAllowed);
        }
    }
    if !cfg.allowed_users.is_empty() && !linked(cfg, &name) {
        return Err(MapError::UserNotAllowed);
    }
    Ok(name)
}

/// True if the claim is case-insensitive at the provider (e-mail
/// addresses, GitHub logins): mapped names are lower-cased and compared
/// with `allowed_users` without regard to case.
fn folds_case(cfg: &OAuthProviderConfig) -> bool {
    let claim = cfg.user_claim();
    claim == "email" || (cfg.kind == ProviderKind::Github && claim == "login")
}

/// True if the operator listed the mapped `name` in the provider's
/// `allowed_users` (ignoring case where the claim does, see
/// [`folds_case`]): only then may it be a name that is also a local
/// password user (the two are the same person by configuration).
pub fn linked(cfg: &OAuthProviderConfig, name: &str) -> bool {
    if folds_case(cfg) {
        cfg.allowed_users
            .iter()
            .any(|u| u.eq_ignore_ascii_case(name))
    } else {
        cfg.allowed_users.iter().any(|u| u == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: ProviderKind) -> OAuthProviderConfig {
        OAuthProviderConfig {
            kind,
            issuer: Some("https://id.example.com".into()),
            client_id: "c".into(),
            client_secret: None,
            client_secret_file: None,
            scopes: None,
            user_claim: None,
            groups_claim: None,
            allowed_domains: vec![],
            allowed_users: vec![],
            auth_url: None,
            token_url: None,
            api_url: None,
        }
    }

    fn user(claim: &str, emails: &[&str]) -> ProviderUser {
        ProviderUser {
            claim: Some(claim.into()),
            verified_emails: emails.iter().map(|e| (*e).to_owned()).collect(),
            groups: Vec::new(),
        }
    }

    #[test]
    fn groups_claims_keep_valid_names() {
        let v = serde_json::json!(["ops", "Domain Users", 3, "admins", "ops"]);
        assert_eq!(
            groups_of(Some(&v)),
            vec!["admins".to_owned(), "ops".to_owned()]
        );
        assert!(groups_of(Some(&serde_json::json!("admins"))).is_empty());
        assert!(groups_of(None).is_empty());
    }

    #[test]
    fn email_mapping() {
        let mut c = cfg(ProviderKind::Oidc);
        let alice = user("Alice@Example.com", &["alice@example.com"]);
        assert_eq!(map_user(&c, &alice).unwrap(), "alice@example.com");
        assert_eq!(
            map_user(&c, &user("alice@example.com", &[])),
            Err(MapError::UnverifiedEmail)
        );
        assert_eq!(
            map_user(&c, &ProviderUser::default()),
            Err(MapError::NoClaim("email".into()))
        );
        c.allowed_domains = vec!["EXAMPLE.com".into()];
        assert!(map_user(&c, &alice).is_ok());
        c.allowed_domains = vec!["corp.example.com".into()];
        assert_eq!(map_user(&c, &alice), Err(MapError::DomainNotAllowed));
        // A look-alike domain is not a match.
        c.allowed_domains = vec!["example.com".into()];
        let evil = user("a@evilexample.com", &["a@evilexample.com"]);
        assert_eq!(map_user(&c, &evil), Err(MapError::DomainNotAllowed));
        c.allowed_users = vec!["bob@example.com".into()];
        assert_eq!(map_user(&c, &alice), Err(MapError::UserNotAllowed));
        c.allowed_users.push("alice@example.com".into());
        assert!(map_user(&c, &alice).is_ok());
    }

    #[test]
    fn allowed_users_case() {
        // E-mail addresses and GitHub logins: the list is matched without
        // regard to case, as the names are lower-cased.
        let mut c = cfg(ProviderKind::Oidc);
        c.allowed_users = vec!["Alice@Example.com".into()];
        let alice = user("alice@EXAMPLE.com", &["alice@example.com"]);
        assert_eq!(map_user(&c, &alice).unwrap(), "alice@example.com");
        let mut g = cfg(ProviderKind::Github);
        g.allowed_users = vec!["OctoCat".into()];
        assert_eq!(map_user(&g, &user("octocat", &[])).unwrap(), "octocat");
        assert_eq!(map_user(&g, &user("OCTOCAT", &[])).unwrap(), "octocat");
        assert!(linked(&g, "octocat"));
        assert_eq!(
            map_user(&g, &user("octodog", &[])),
            Err(MapError::UserNotAllowed)
        );
        // Other claims keep their case, at the provider and here.
        c.user_claim = Some("preferred_username".into());
        c.allowed_users = vec!["alice".into()];
        assert_eq!(map_user(&c, &user("alice", &[])).unwrap(), "alice");
        assert_eq!(
            map_user(&c, &user("Alice", &[])),
            Err(MapError::UserNotAllowed)
        );
        g.user_claim = Some("id".into());
        g.allowed_users = vec!["583231".into()];
        assert_eq!(map_user(&g, &user("583231", &[])).unwrap(), "583231");
    }

    #[test]
    fn linking_to_a_local_user() {
        let mut g = cfg(ProviderKind::Github);
        // GitHub's default claim: an account named "Admin" maps to "admin",
        // which is not linked unless the operator lists it.
        let name = map_user(&g, &user("Admin", &[])).unwrap();
        assert_eq!(name, "admin");
        assert!(!linked(&g, &name));
        g.allowed_users = vec!["admin".into()];
        assert!(linked(&g, &name));
        assert_eq!(MapError::NameTaken.reason(), "oauth_name_taken");
    }

    #[test]
    fn other_claims_and_github() {
        let mut c = cfg(ProviderKind::Oidc);
        c.user_claim = Some("preferred_username".into());
        assert_eq!(map_user(&c, &user("Alice", &[])).unwrap(), "Alice");
        assert_eq!(
            map_user(&c, &user("alice smith", &[])),
            Err(MapError::InvalidName)
        );
        c.allowed_domains = vec!["example.com".into()];
        assert_eq!(
            map_user(&c, &user("alice", &["alice@other.org"])),
            Err(MapError::DomainNotAllowed)
        );
        assert!(map_user(&c, &user("alice", &["alice@other.org", "a@example.com"])).is_ok());

        let g = cfg(ProviderKind::Github);
        assert_eq!(map_user(&g, &user("Octo-Cat", &[])).unwrap(), "octo-cat");
    }
}
