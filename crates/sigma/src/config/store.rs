//! `[store]`: where the durable state lives (DESIGN §7) — the embedded
//! redb store under `data_dir` (the default) or a PostgreSQL database
//! shared by several nodes.

use serde::Deserialize;

/// `[store]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgres://user@host:port/db` (or `postgresql://…`): users,
    /// sessions, secrets and `&db` in PostgreSQL. Unset: redb in
    /// `data_dir`.
    pub url: Option<String>,
}

/// Why `url` is refused, if it is: only PostgreSQL URLs are stores.
pub(super) fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(())
    } else {
        Err(
            "expected a PostgreSQL URL, `postgres://user@host:port/database` \
             (leave `url` out for the embedded store in `data_dir`)"
                .to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{from_str, ConfigErrorKind};

    #[test]
    fn store_url_is_read_from_file_and_environment_and_checked() {
        let c = from_str("", &[]).unwrap();
        assert_eq!(c.store.url, None);
        let c = from_str("[store]\nurl = \"postgres://u@h/db\"\n", &[]).unwrap();
        assert_eq!(c.store.url.as_deref(), Some("postgres://u@h/db"));
        let env = [(
            "SIGMA_STORE_URL".to_owned(),
            "postgresql://x@y/z".to_owned(),
        )];
        let c = from_str("", &env).unwrap();
        assert_eq!(c.store.url.as_deref(), Some("postgresql://x@y/z"));
        let e = from_str("[store]\nurl = \"redis://h\"\n", &[]).unwrap_err();
        assert_eq!(e.path, "store.url");
        assert!(matches!(e.kind, ConfigErrorKind::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("PostgreSQL URL"), "{e}");
        let e = from_str("[store]\nuri = 1\n", &[]).unwrap_err();
        assert_eq!(e.path, "store.uri");
    }
}
