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
    /// A PEM file of the roots PostgreSQL's certificate must chain to:
    /// TLS (`sslmode=require`). Without it, `?sslmode=require` in `url`
    /// checks against the system's roots.
    pub ca: Option<std::path::PathBuf>,
}

/// `[cluster]`: the shared ephemeral state of several nodes (DESIGN §7).
///
/// ```toml
/// [cluster]
/// redis = "redis://127.0.0.1:6379/0"   # broadcast fan-out, shared login throttles
/// redis_ca = "/etc/sigma/redis-ca.pem"  # optional, with rediss://: the roots of its certificate
/// prefix = "sigma:"                    # every Redis key and channel starts with it
/// node = "a"                           # this node's name in the start-up log
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://host:port/db`: `&broadcast` across nodes and shared login
    /// throttles. Unset: one node, everything in-process.
    pub redis: Option<String>,
    /// With a `rediss://` URL: a PEM file of the roots the server's
    /// certificate must chain to (unset: the system's roots).
    pub redis_ca: Option<std::path::PathBuf>,
    /// What every key and pub/sub channel sigma uses in Redis starts
    /// with: deployments sharing one Redis use different ones.
    pub prefix: String,
    /// This node's name, in the start-up log (`-` when unset).
    pub node: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis: None,
            redis_ca: None,
            prefix: "sigma:".to_owned(),
            node: None,
        }
    }
}

/// Why `[cluster] redis` is refused, if it is.
pub(super) fn check_redis_url(url: &str) -> Result<(), String> {
    if ["redis://", "rediss://", "unix://", "redis+unix://"]
        .iter()
        .any(|p| url.starts_with(p))
    {
        Ok(())
    } else {
        Err("expected a Redis URL, `redis://host:port/db` (`rediss://` for TLS)".to_owned())
    }
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
        let e = from_str("[store]\nca = \"ca.pem\"\n", &[]).unwrap_err();
        assert_eq!(e.path, "store.ca");
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

    #[test]
    fn cluster_is_read_from_file_and_environment_and_checked() {
        let c = from_str("", &[]).unwrap();
        assert_eq!(c.cluster.redis, None);
        assert_eq!(c.cluster.prefix, "sigma:");
        let c = from_str(
            "[cluster]\nredis = \"redis://h:1/2\"\nprefix = \"p:\"\nnode = \"a\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.cluster.redis.as_deref(), Some("redis://h:1/2"));
        assert_eq!(
            (c.cluster.prefix.as_str(), c.cluster.node.as_deref()),
            ("p:", Some("a"))
        );
        let env = [("SIGMA_CLUSTER_REDIS".to_owned(), "redis://x/0".to_owned())];
        assert_eq!(
            from_str("", &env).unwrap().cluster.redis.as_deref(),
            Some("redis://x/0")
        );
        let e = from_str("[cluster]\nredis = \"postgres://h\"\n", &[]).unwrap_err();
        assert_eq!(e.path, "cluster.redis");
        assert!(e.to_string().contains("Redis URL"), "{e}");
        // A CA needs a TLS URL.
        let e = from_str(
            "[cluster]\nredis = \"redis://h\"\nredis_ca = \"ca.pem\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.path, "cluster.redis_ca");
        assert!(e.to_string().contains("rediss://"), "{e}");
        let c = from_str(
            "[cluster]\nredis = \"rediss://h\"\nredis_ca = \"ca.pem\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.cluster.redis_ca.as_deref(),
            Some(std::path::Path::new("ca.pem"))
        );
        let e = from_str("[cluster]\nredis = \"redis://h\"\nprefix = \"\"\n", &[]).unwrap_err();
        assert_eq!(e.path, "cluster.prefix");
        let e = from_str("[cluster]\nredsi = 1\n", &[]).unwrap_err();
        assert_eq!(e.path, "cluster.redsi");
    }
}
