//! The tests of config assembly: every key, every error message.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use sigma_http::{Limits, WsLimits};

use super::broadcast::BroadcastTable;
use super::limits::{HttpTable, WebsocketTable};
use super::load::ConfigFile;
use super::route::RouteTable;
use super::world::WorldTable;
use super::*;
use crate::pipeline;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn err(toml: &str) -> ConfigError {
    match from_str(toml, &[]) {
        Ok(c) => panic!("expected an error for {toml:?}, got {c:?}"),
        Err(e) => e,
    }
}

fn full_toml_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/config/full.toml")
}

#[test]
fn defaults_match_the_codec_and_design() {
    let c = from_str("", &[]).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.topology, pipeline::parse(DEFAULT_PIPELINE).unwrap());
    assert_eq!(c.topology, default_topology());
    assert_eq!(c.data_dir, PathBuf::from("./sigma-data"));
    assert_eq!(c.routes, default_routes());
    assert_eq!(c.server.backlog, 1024);
    assert_eq!(c.server.drain_timeout, Duration::from_secs(10));
    assert_eq!(c.server.linger_timeout, Duration::from_secs(5));
    assert_eq!(load(None, &[]).unwrap(), c);
    // Empty tables are the defaults too.
    let c2 = from_str("[server]\n[http]\n[websocket]\n", &[]).unwrap();
    assert_eq!(c2, c);
}

#[test]
fn every_key_round_trips() {
    let toml = r#"
        pipeline = "T[::1]:4000[H] T0.0.0.0:4001[HA]"
        data_dir = "/var/lib/sigma"

        [server]
        max_connections = 11
        max_connections_per_ip = 12
        backlog = 13
        drain_timeout = "14s"
        linger_timeout = "15ms"
        metrics_allow = ["10.0.0.0/8"]
        memory_budget = 16

        [log]
        access = false

        [auth]
        session_idle_timeout = "1h"
        session_lifetime = "2h"
        cookie_secure = true
        token_ttl = "5m"
        token_per_session_per_minute = 6
        allowed_origins = ["https://app.example.com"]
        trusted_proxies = ["10.1.0.0/16"]
        login_per_ip_per_minute = 7
        login_failures_per_user_per_minute = 3
        # login_per_user_per_minute = 3 is its old name (an alias: old_login_key_name_still_reads)
        login_failures_per_minute = 8
        password_workers = 4
        password_queue = 9
        jwt = [{ issuer = "https://id.example.com", audience = "sigma", algorithm = "RS256", jwks_url = "https://id.example.com/jwks.json" }]
        public_url = "https://chat.example.com"
        oauth = { corp = { kind = "oidc", issuer = "https://id.example.com", client_id = "sigma", client_secret_file = "/etc/sigma/corp.secret", scopes = ["openid", "email"], user_claim = "email", groups_claim = "groups", allowed_domains = ["example.com"], allowed_users = ["alice@example.com"] }, gh = { kind = "github", client_id = "gh-client", client_secret = "gh-secret", auth_url = "https://gh.example.com/login/oauth/authorize", token_url = "https://gh.example.com/login/oauth/access_token", api_url = "https://api.gh.example.com" } }

        [db]
        max_value = 61
        max_key = 62

        [broadcast]
        max_subscriptions = 63
        max_message = 40
        history_size = 64
        history_ttl = "65s"
        join_leave = true
        [[broadcast.rule]]
        pattern = "news:*"
        subscribe = "anyone"
        publish = ["alice", "bob"]
        presence = "nobody"
        history_size = 0
        history_ttl = "66s"
        join_leave = false
        [[broadcast.rule]]
        pattern = "ops:{user}"
        subscribe = "logged_in"
        publish = "nobody"

        [http]
        max_request_line = 21
        max_header_bytes = 22
        max_headers = 23
        head_timeout = "24s"
        keepalive_timeout = "25s"
        max_body = 26
        body_min_rate = 27
        body_rate_grace = "28s"
        write_timeout = "29s"
        max_pipelined = 30
        max_requests_per_connection = 31
        max_chunk_extension = 32
        max_trailer_bytes = 33

        [websocket]
        max_frame = 41
        max_message = 42
        ping_interval = "43s"
        idle_timeout = "44s"
        close_timeout = "45s"
        max_outbound = 46
        compression = false

        [[route]]
        path = "/api"
        to = "http://127.0.0.1:8080"
        auth = "required"
        users = ["alice", "bob"]
        max_body = 51
        connect_timeout = "52s"
        read_timeout = "53s"
        echo_identity = true
        assert_identity = true

        [[route]]
        path = "/team"
        to = "&db"
        namespace = "team"
        writers = ["alice"]
        allow = ["group:team", "user:carol"]
        deny = ["cidr:10.0.0.0/8"]
        methods = ["GET", "PUT"]

        [[route]]
        path = "/secure"
        to = "https://backend.example:8443/v1"
        ca = "/etc/sigma/backend-ca.pem"

        [tls]
        cert = "/etc/sigma/site.pem"
        key = "/etc/sigma/site.key"
        handshake_timeout = "81s"
        session_tickets = 3

        [[tls.extra]]
        cert = "/etc/sigma/b.pem"
        key = "/etc/sigma/b.key"

        [tls.acme]
        directory = "https://acme.example/dir"
        email = "ops@example.com"
        domains = ["example.com", "www.example.com"]
        challenge = "http-01"
        ca = "/etc/sigma/acme-root.pem"

        [tls.http]
        redirect = true
        hsts = "max-age=82"

        [worlds]
        activation_timeout = "71s"
        max_per_user = 72
        forks_per_minute = 73
        key_rotation = "74s"
        max_used_per_user = 75
        max_users = 76

        [world.notes]
        code = "/srv/notes.js"
        to = "&db"
        users = ["alice"]

        [store]
        url = "postgres://sigma@db.example.com:5433/sigma"
        ca = "/etc/sigma/pg-ca.pem"

        [cluster]
        redis = "rediss://redis.example.com:6380/3"
        redis_ca = "/etc/sigma/redis-ca.pem"
        prefix = "chat:"
        node = "node-a"
    "#;
    let c = from_str(toml, &[]).unwrap();
    assert_eq!(
        c.worlds,
        WorldsConfig {
            activation_timeout: Duration::from_secs(71),
            max_per_user: 72,
            forks_per_minute: 73,
            key_rotation: Duration::from_secs(74),
            max_used_per_user: 75,
            max_users: 76,
        }
    );
    assert_eq!(
        c.world,
        vec![WorldCommand {
            name: "notes".into(),
            code: WorldCode::File("/srv/notes.js".into()),
            to: Destination::Db,
            users: Some(vec!["alice".into()]),
        }]
    );
    assert_eq!(c.topology.to_string(), "T[::1]:4000[H] T0.0.0.0:4001[HA]");
    assert_eq!(
        c.broadcast,
        BroadcastConfig {
            max_subscriptions: 63,
            max_message: 40,
            history_size: 64,
            history_ttl: Duration::from_secs(65),
            join_leave: true,
            rule: vec![
                BroadcastRule {
                    pattern: crate::broadcast::Pattern::parse("news:*").unwrap(),
                    subscribe: ChannelAccess::Anyone,
                    publish: ChannelAccess::Users(vec!["alice".into(), "bob".into()]),
                    presence: Some(ChannelAccess::Nobody),
                    history_size: Some(0),
                    history_ttl: Some(Duration::from_secs(66)),
                    join_leave: Some(false),
                },
                BroadcastRule {
                    pattern: crate::broadcast::Pattern::parse("ops:{user}").unwrap(),
                    subscribe: ChannelAccess::LoggedIn,
                    publish: ChannelAccess::Nobody,
                    presence: None,
                    history_size: None,
                    history_ttl: None,
                    join_leave: None,
                },
            ],
        }
    );
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/sigma"));
    assert!(!c.log.access, "[log] access = false");
    assert_eq!(
        c.server,
        ServerConfig {
            max_connections: 11,
            max_connections_per_ip: 12,
            backlog: 13,
            drain_timeout: Duration::from_secs(14),
            linger_timeout: Duration::from_millis(15),
            metrics_allow: vec![Cidr::parse("10.0.0.0/8").unwrap()],
            memory_budget: 16,
        }
    );
    let s = Duration::from_secs;
    assert_eq!(
        c.limits,
        Limits {
            max_request_line: 21,
            max_header_bytes: 22,
            max_headers: 23,
            head_timeout: s(24),
            keepalive_timeout: s(25),
            max_body: 26,
            body_min_rate: 27,
            body_rate_grace: s(28),
            write_timeout: s(29),
            max_pipelined: 30,
            max_requests_per_connection: 31,
            max_chunk_extension: 32,
            max_trailer_bytes: 33,
            ws: WsLimits {
                max_frame: 41,
                max_message: 42,
                ping_interval: s(43),
                idle_timeout: s(44),
                close_timeout: s(45),
                max_outbound: 46,
                write_timeout: s(29),
                compression: false,
            },
        }
    );
    assert_eq!(
        c.tls,
        Some(crate::config::TlsConfig {
            cert: Some("/etc/sigma/site.pem".into()),
            key: Some("/etc/sigma/site.key".into()),
            extra: vec![crate::config::CertPair {
                cert: "/etc/sigma/b.pem".into(),
                key: "/etc/sigma/b.key".into(),
            }],
            acme: Some(crate::config::AcmeTable {
                directory: "https://acme.example/dir".into(),
                email: Some("ops@example.com".into()),
                domains: vec!["example.com".into(), "www.example.com".into()],
                challenge: crate::config::Challenge::Http01,
                ca: Some("/etc/sigma/acme-root.pem".into()),
            }),
            http: crate::config::TlsHttp {
                redirect: true,
                hsts: Some("max-age=82".into()),
            },
            handshake_timeout: Duration::from_secs(81),
            session_tickets: 3,
        })
    );
    assert_eq!(
        c.routes,
        vec![
            RouteConfig {
                path: "/secure".into(),
                to: Destination::Upstream("https://backend.example:8443/v1".into()),
                auth: AuthLevel::Required,
                users: None,
                max_body: None,
                policy: None,
                shared: None,
                proxy: Some(ProxyOptions::default()),
                ca: Some("/etc/sigma/backend-ca.pem".into()),
            },
            RouteConfig {
                path: "/team".into(),
                to: Destination::Db,
                auth: AuthLevel::Required,
                users: None,
                max_body: None,
                policy: crate::auth::policy::Policy::parse(
                    Some(&["group:team".into(), "user:carol".into()]),
                    Some(&["cidr:10.0.0.0/8".into()]),
                    Some(&["GET".into(), "PUT".into()]),
                )
                .unwrap()
                .map(std::sync::Arc::new),
                shared: Some(SharedNamespace {
                    name: "team".into(),
                    writers: Some(vec!["alice".into()]),
                }),
                proxy: None,
                ca: None,
            },
            RouteConfig {
                path: "/api".into(),
                to: Destination::Upstream("http://127.0.0.1:8080".into()),
                auth: AuthLevel::Required,
                users: Some(vec!["alice".into(), "bob".into()]),
                max_body: Some(51),
                policy: None,
                shared: None,
                proxy: Some(ProxyOptions {
                    connect_timeout: Duration::from_secs(52),
                    read_timeout: Duration::from_secs(53),
                    echo_identity: true,
                    assert_identity: true,
                }),
                ca: None,
            },
        ]
    );
    assert_eq!(
        c.auth,
        AuthConfig {
            session_idle_timeout: Duration::from_secs(3600),
            session_lifetime: Duration::from_secs(7200),
            cookie_secure: true,
            token_ttl: Duration::from_secs(300),
            token_per_session_per_minute: 6,
            allowed_origins: vec!["https://app.example.com".into()],
            trusted_proxies: vec![Cidr::parse("10.1.0.0/16").unwrap()],
            login_per_ip_per_minute: 7,
            login_failures_per_user_per_minute: 3,
            login_failures_per_minute: 8,
            password_workers: 4,
            password_queue: 9,
            jwt: vec![crate::auth::jwt::JwtIssuerConfig {
                issuer: "https://id.example.com".into(),
                audience: "sigma".into(),
                algorithm: crate::auth::jwt::JwtAlgorithm::Rs256,
                key_file: None,
                jwks_url: Some("https://id.example.com/jwks.json".into()),
                user_claim: None,
            }],
            public_url: Some("https://chat.example.com".into()),
            oauth: [
                (
                    "corp".to_string(),
                    crate::auth::oauth::config::OAuthProviderConfig {
                        kind: crate::auth::oauth::config::ProviderKind::Oidc,
                        issuer: Some("https://id.example.com".into()),
                        client_id: "sigma".into(),
                        client_secret: None,
                        client_secret_file: Some("/etc/sigma/corp.secret".into()),
                        scopes: Some(vec!["openid".into(), "email".into()]),
                        user_claim: Some("email".into()),
                        groups_claim: Some("groups".into()),
                        allowed_domains: vec!["example.com".into()],
                        allowed_users: vec!["alice@example.com".into()],
                        auth_url: None,
                        token_url: None,
                        api_url: None,
                    },
                ),
                (
                    "gh".to_string(),
                    crate::auth::oauth::config::OAuthProviderConfig {
                        kind: crate::auth::oauth::config::ProviderKind::Github,
                        issuer: None,
                        client_id: "gh-client".into(),
                        client_secret: Some("gh-secret".into()),
                        client_secret_file: None,
                        scopes: None,
                        user_claim: None,
                        groups_claim: None,
                        allowed_domains: vec![],
                        allowed_users: vec![],
                        auth_url: Some("https://gh.example.com/login/oauth/authorize".into()),
                        token_url: Some("https://gh.example.com/login/oauth/access_token".into()),
                        api_url: Some("https://api.gh.example.com".into()),
                    },
                ),
            ]
            .into_iter()
            .collect(),
        }
    );
    assert_eq!(
        c.db,
        DbConfig {
            max_value: 61,
            max_key: 62,
        }
    );
    assert_eq!(
        c.store.url.as_deref(),
        Some("postgres://sigma@db.example.com:5433/sigma")
    );
    assert_eq!(
        c.cluster.redis.as_deref(),
        Some("rediss://redis.example.com:6380/3")
    );
    assert_eq!(
        c.cluster.redis_ca.as_deref(),
        Some(Path::new("/etc/sigma/redis-ca.pem"))
    );
    assert_eq!(
        (c.cluster.prefix.as_str(), c.cluster.node.as_deref()),
        ("chat:", Some("node-a"))
    );
    // The test above names every field of every table.
    for name in fields_of::<ServerConfig>()
        .iter()
        .chain(fields_of::<AuthConfig>())
        .chain(fields_of::<crate::auth::oauth::config::OAuthProviderConfig>())
        .chain(fields_of::<DbConfig>())
        .chain(fields_of::<HttpTable>())
        .chain(fields_of::<WebsocketTable>())
        .chain(fields_of::<RouteTable>())
        .chain(fields_of::<WorldsConfig>())
        .chain(fields_of::<WorldTable>())
        .chain(fields_of::<super::StoreConfig>())
        .chain(fields_of::<super::ClusterConfig>())
        .chain(fields_of::<ConfigFile>())
        .chain(fields_of::<crate::config::TlsConfig>())
        .chain(fields_of::<crate::config::CertPair>())
        .chain(fields_of::<crate::config::AcmeTable>())
        .chain(fields_of::<crate::config::TlsHttp>())
    {
        assert!(
            toml.contains(&format!("{name} = "))
                || toml.contains(&format!("[{name}]"))
                || toml.contains(&format!("[{name}."))
                || toml.contains(&format!(".{name}]]"))
                || toml.contains(&format!(".{name}]")),
            "{name} not covered"
        );
    }
}

#[test]
fn field_probe_reads_the_struct_fields() {
    assert_eq!(
        fields_of::<ConfigFile>(),
        &[
            "pipeline",
            "data_dir",
            "server",
            "http",
            "websocket",
            "auth",
            "db",
            "broadcast",
            "worlds",
            "world",
            "route",
            "log",
            "tls",
            "store",
            "cluster"
        ]
    );
    assert_eq!(fields_of::<HttpTable>().len(), 13);
    assert_eq!(fields_of::<WebsocketTable>().len(), 7);
    assert_eq!(fields_of::<ServerConfig>().len(), 7);
    assert_eq!(fields_of::<RouteTable>().len(), 15);
}

#[test]
fn oauth_tables_are_validated() {
    let e = from_str(
        "[auth.oauth.corp]\nkind = \"oidc\"\nissuer = \"https://id.example.com\"\nclient_id = \"c\"\n",
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("auth.public_url"), "{e}");
    let base =
        "[auth]\npublic_url = \"https://chat.example.com\"\n[auth.oauth.corp]\nclient_id = \"c\"\n";
    let e = from_str(&format!("{base}kind = \"oidc\"\n"), &[]).unwrap_err();
    assert!(e.to_string().contains("auth.oauth.corp.issuer"), "{e}");
    let e = from_str(&format!("{base}kind = \"saml\"\n"), &[]).unwrap_err();
    assert!(e.to_string().contains("auth.oauth.corp.kind"), "{e}");
    let e = from_str(&format!("{base}kind = \"github\"\nbogus = 1\n"), &[]).unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
    let e = from_str(
        &format!("{base}kind = \"github\"\nclient_secret = \"s\"\napi_url = \"http://api.example.com\"\n"),
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("auth.oauth.corp.api_url"), "{e}");
    let e = from_str("[auth]\npublic_url = \"chat.example.com\"\n", &[]).unwrap_err();
    assert!(e.to_string().contains("auth.public_url"), "{e}");
    let c = from_str(
        &format!("{base}kind = \"google\"\nclient_secret = \"s\"\n"),
        &[],
    )
    .unwrap();
    assert!(c.describe().contains(
        "oauth corp (google, issuer https://accounts.google.com) /auth/corp/login, redirect_uri https://chat.example.com/auth/corp/callback"
    ), "{}", c.describe());
}

#[test]
fn broadcast_rules_are_validated() {
    let e = from_str(
        "[[broadcast.rule]]\npattern = \"a b\"\nsubscribe = \"anyone\"\npublish = \"nobody\"\n",
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("broadcast.rule[0].pattern"), "{e}");
    let e = from_str(
        "[[broadcast.rule]]\npattern = \"x:*\"\nsubscribe = \"everyone\"\npublish = \"nobody\"\n",
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("broadcast.rule[0].subscribe"), "{e}");
    let e = from_str(
        "[[broadcast.rule]]\npattern = \"x:*\"\nsubscribe = []\npublish = \"nobody\"\n",
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("must not be empty"), "{e}");
    let e = from_str(
        "[[broadcast.rule]]\npattern = \"x:*\"\nsubscribe = \"anyone\"\n",
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("publish"), "{e}");
    let e = from_str("[[broadcast.rule]]\npattern = \"x:*\"\nsubscribe = \"anyone\"\npublish = \"nobody\"\nbogus = 1\n", &[]).unwrap_err();
    assert!(e.to_string().contains("broadcast.rule[0].bogus"), "{e}");
    let e = from_str("[broadcast]\nmax_subscriptions = 0\n", &[]).unwrap_err();
    assert!(e.to_string().contains("broadcast.max_subscriptions"), "{e}");
    let c = from_str(
        "",
        &[("SIGMA_BROADCAST_MAX_SUBSCRIPTIONS".into(), "9".into())],
    )
    .unwrap();
    assert_eq!(c.broadcast.max_subscriptions, 9);
}

#[test]
fn broadcast_max_message_never_above_max_outbound() {
    assert_eq!(
        from_str("", &[]).unwrap().broadcast.max_message,
        crate::broadcast::DEFAULT_MAX_MESSAGE
    );
    // Unset: the default, or max_outbound if that is smaller.
    let c = from_str("[websocket]\nmax_outbound = 4096\n", &[]).unwrap();
    assert_eq!(c.broadcast.max_message, 4096);
    // Set: at max_outbound is fine, one past is refused, naming the key.
    let c = from_str(
        "[websocket]\nmax_outbound = 4096\n[broadcast]\nmax_message = 4096\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.broadcast.max_message, 4096);
    let e = from_str(
        "[websocket]\nmax_outbound = 4096\n[broadcast]\nmax_message = 4097\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(e.path, "broadcast.max_message");
    assert!(
        e.to_string()
            .contains("above websocket.max_outbound (4096)"),
        "{e}"
    );
    let e = from_str("[broadcast]\nmax_message = 0\n", &[]).unwrap_err();
    assert_eq!(e.path, "broadcast.max_message");
    let c = from_str("", &[("SIGMA_BROADCAST_MAX_MESSAGE".into(), "77".into())]).unwrap();
    assert_eq!(c.broadcast.max_message, 77);
}

#[test]
fn auth_table_is_validated() {
    let e = from_str("[auth]\nallowed_origins = [\"example.com\"]\n", &[]).unwrap_err();
    assert!(e.to_string().contains("auth.allowed_origins[0]"), "{e}");
    let e = from_str("[auth]\nsession_idle_timeout = \"40d\"\n", &[]).unwrap_err();
    assert!(e.to_string().contains("auth.session_idle_timeout"), "{e}");
    let c = from_str("", &[("SIGMA_AUTH_COOKIE_SECURE".into(), "true".into())]).unwrap();
    assert!(c.auth.cookie_secure);
}

#[test]
fn cidr() {
    let net = Cidr::parse("10.1.0.0/16").unwrap();
    assert!(net.contains("10.1.200.3".parse().unwrap()));
    assert!(!net.contains("10.2.0.1".parse().unwrap()));
    assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
    assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
    assert!(Cidr::parse("0.0.0.0/0")
        .unwrap()
        .contains("8.8.8.8".parse().unwrap()));
    assert!(Cidr::parse("1.2.3.4/33").is_err());
    assert!(Cidr::parse("nope").is_err());
    let c = from_str("[server]\nmetrics_allow = [\"10.0.0.0/8\"]\n", &[]).unwrap();
    assert_eq!(
        c.server.metrics_allow,
        vec![Cidr::parse("10.0.0.0/8").unwrap()]
    );
    let e = from_str("[server]\nmetrics_allow = [\"10.0.0.0/99\"]\n", &[]).unwrap_err();
    assert!(e.to_string().contains("server.metrics_allow"), "{e}");
}

#[test]
fn proxy_keys_only_on_upstream_routes() {
    let e = err("[[route]]\npath = \"/e\"\nto = \"&echo\"\nread_timeout = \"1s\"\n");
    assert_eq!(e.path, "route[0].read_timeout");
    assert!(e.to_string().contains("upstream route only"), "{e}");
    let e = err("[[route]]\npath = \"/a\"\nto = \"http://h\"\nconnect_timeout = \"0s\"\n");
    assert_eq!(e.path, "route[0].connect_timeout");
    let c = from_str("[[route]]\npath = \"/a\"\nto = \"http://h\"\n", &[]).unwrap();
    assert_eq!(c.routes[0].proxy, Some(ProxyOptions::default()));
    let c = from_str(
        "[[route]]\npath = \"/a\"\nto = \"http://h\"\nread_timeout = \"300ms\"\necho_identity = true\n",
        &[],
    )
    .unwrap();
    assert!(c.describe().contains(
        "route /a -> http://h (auth required, connect_timeout 5s, read_timeout 300ms, echo_identity true)"
    ));
}

#[test]
fn old_login_key_name_still_reads() {
    let c = from_str("[auth]\nlogin_per_user_per_minute = 4\n", &[]).unwrap();
    assert_eq!(c.auth.login_failures_per_user_per_minute, 4);
    assert_eq!(c.auth.login_failures_per_minute, 600);
    assert_eq!(c.auth.password_queue, 64);
    let e = err("[auth]\nlogin_failures_per_minute = 0\n");
    assert_eq!(e.path, "auth.login_failures_per_minute");
}

#[test]
fn full_sample_file_loads_and_names_every_key() {
    let path = full_toml_path();
    let c = load(Some(&path), &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.server, ServerConfig::default());
    assert_eq!(c.topology, default_topology());
    assert!(c.routes.iter().any(|r| r.to == Destination::Echo));
    // The reference file spells out every key (uncommented).
    let text = std::fs::read_to_string(&path).unwrap();
    let tables: &[(&str, &[&str])] = &[
        ("", fields_of::<ConfigFile>()),
        ("server", fields_of::<ServerConfig>()),
        ("log", fields_of::<super::log::LogConfig>()),
        ("http", fields_of::<HttpTable>()),
        ("websocket", fields_of::<WebsocketTable>()),
        ("db", fields_of::<DbConfig>()),
        ("broadcast", fields_of::<BroadcastTable>()),
        ("broadcast.rule", fields_of::<BroadcastRule>()),
        ("route", fields_of::<RouteTable>()),
        ("worlds", fields_of::<WorldsConfig>()),
        ("world", fields_of::<WorldTable>()),
        ("tls", fields_of::<crate::config::TlsConfig>()),
        ("tls.acme", fields_of::<crate::config::AcmeTable>()),
        ("tls.http", fields_of::<crate::config::TlsHttp>()),
    ];
    for (table, keys) in tables {
        for k in *keys {
            let found = text.lines().any(|l| {
                l.starts_with(&format!("{k} = "))
                    || l.starts_with(&format!("[{k}]"))
                    || l.starts_with(&format!("[[{k}]]"))
                    || l.starts_with(&format!("[{k}."))
                    || l.starts_with(&format!("[[{table}.{k}]]"))
                    || l.starts_with(&format!("[{table}.{k}]"))
            });
            assert!(found, "full.toml lacks {table}.{k}");
        }
    }
}

#[test]
fn unknown_keys_name_their_path_and_line() {
    let e = err("pipeline = \"T3000[H]\"\nbogus = 1\n");
    assert_eq!(e.path, "bogus");
    assert!(matches!(e.kind, ConfigErrorKind::UnknownKey { .. }));
    assert_eq!(
        e.origin,
        Origin::File {
            name: "<config>".into(),
            line: Some(2)
        }
    );
    assert!(e
        .to_string()
        .starts_with("<config>:2: unknown key `bogus` (expected one of `pipeline`, `data_dir`"));

    let e = err("[http]\nmax_headers = 5\n\nmax_hedaers = 10\n");
    assert_eq!(e.path, "http.max_hedaers");
    let msg = e.to_string();
    assert!(
        msg.starts_with("<config>:4: unknown key `http.max_hedaers`"),
        "{msg}"
    );
    assert!(msg.contains("`max_headers`"), "{msg}");

    let e = err("[websocket]\nmax_fram = 1\n");
    assert_eq!(e.path, "websocket.max_fram");

    let e = err("[server]\nbacklg = 1\n");
    assert_eq!(e.path, "server.backlg");

    let e = err(
        "[[route]]\npath = \"/a\"\nto = \"&echo\"\n\n[[route]]\npath = \"/b\"\nto = \"&echo\"\nauht = \"none\"\n",
    );
    assert_eq!(e.path, "route[1].auht");
    assert!(
        e.to_string()
            .starts_with("<config>:8: unknown key `route[1].auht`"),
        "{e}"
    );

    // Dotted keys and inline tables are the same keys.
    let e = err("http.max_hedaers = 1\n");
    assert_eq!(e.path, "http.max_hedaers");
    let e = err("websocket = { max_frame = 1, x = 2 }\n");
    assert_eq!(e.path, "websocket.x");

    // Nested tables deny unknown keys the same way, line included.
    let e = err("[auth]\ncookie_secure = true\n\n[[auth.jwt]]\nissuer = \"i\"\nbogus = 1\n");
    assert_eq!(e.path, "auth.jwt[0].bogus");
    assert!(matches!(e.kind, ConfigErrorKind::UnknownKey { .. }));
    assert!(
        e.to_string()
            .starts_with("<config>:6: unknown key `auth.jwt[0].bogus` (expected one of `issuer`"),
        "{e}"
    );
}

#[test]
fn type_and_value_errors_name_the_key() {
    let e = err("[http]\n\nhead_timeout = \"ten\"\n");
    assert_eq!(e.path, "http.head_timeout");
    let msg = e.to_string();
    assert!(
        msg.starts_with("<config>:3: http.head_timeout: invalid duration \"ten\": "),
        "{msg}"
    );

    let e = err("[http]\nhead_timeout = 10\n");
    assert!(e.to_string().contains("expected a duration string"), "{e}");
    let e = err("[http]\nhead_timeout = \"0s\"\n");
    assert!(e.to_string().contains("must be greater than 0"), "{e}");
    let e = err("[server]\ndrain_timeout = \"400days\"\n");
    assert!(e.to_string().contains("at most 365 days"), "{e}");

    let e = err("[http]\nmax_headers = \"many\"\n");
    assert_eq!(e.path, "http.max_headers");
    assert!(e.to_string().contains("invalid type"), "{e}");

    let e = err("[http]\nmax_body = -1\n");
    assert_eq!(e.path, "http.max_body");

    let e = err("pipeline = 3000\n");
    assert_eq!(e.path, "pipeline");

    let e = err("http = 5\n");
    assert_eq!(e.path, "http");

    let e = err("[[route]]\npath = \"/a\"\n");
    assert_eq!(e.path, "route[0]");
    assert!(e.to_string().contains("missing field `to`"), "{e}");

    let e = err("[[route]]\npath = \"/a\"\nto = \"&echo\"\nauth = \"maybe\"\n");
    assert_eq!(e.path, "route[0].auth");
    assert!(e.to_string().contains("unknown variant `maybe`"), "{e}");
}

#[test]
fn zero_where_zero_makes_no_sense() {
    for (table, k) in [
        ("server", "max_connections"),
        ("server", "max_connections_per_ip"),
        ("server", "backlog"),
        ("server", "memory_budget"),
        ("http", "max_request_line"),
        ("http", "max_header_bytes"),
        ("http", "max_headers"),
        ("http", "body_min_rate"),
        ("http", "max_pipelined"),
        ("http", "max_requests_per_connection"),
        ("websocket", "max_frame"),
        ("websocket", "max_message"),
        ("websocket", "max_outbound"),
    ] {
        let e = err(&format!("[{table}]\n{k} = 0\n"));
        assert_eq!(e.path, format!("{table}.{k}"));
        assert!(e.to_string().contains("must be greater than 0"), "{e}");
    }
    let e = err("[http]\nmax_headers = -3\n");
    assert!(e.to_string().contains("invalid value: integer `-3`"), "{e}");
    let e = err("[server]\nbacklog = -3\n");
    assert!(
        e.to_string().contains("must be greater than 0 (got -3)"),
        "{e}"
    );
    let e = err("[server]\nbacklog = 2147483648\n");
    assert!(
        e.to_string()
            .starts_with("<config>:2: server.backlog: invalid value"),
        "{e}"
    );
    for (table, k) in [
        ("server", "drain_timeout"),
        ("server", "linger_timeout"),
        ("http", "head_timeout"),
        ("http", "keepalive_timeout"),
        ("http", "body_rate_grace"),
        ("http", "write_timeout"),
        ("websocket", "ping_interval"),
        ("websocket", "idle_timeout"),
        ("websocket", "close_timeout"),
    ] {
        let e = err(&format!("[{table}]\n{k} = \"0ms\"\n"));
        assert_eq!(e.path, format!("{table}.{k}"));
    }
    // Zero is meaningful here: no body, no chunk extensions, no trailers.
    let c = from_str(
        "[http]\nmax_body = 0\nmax_chunk_extension = 0\nmax_trailer_bytes = 0\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.limits.max_body, 0);

    let e = err("[websocket]\nmax_frame = 100\nmax_message = 99\n");
    assert_eq!(e.path, "websocket.max_frame");
    assert_eq!(
        e.to_string(),
        "<config>:2: websocket.max_frame: 100 is larger than websocket.max_message (99)"
    );
    let e = err("[websocket]\nping_interval = \"30s\"\nidle_timeout = \"30s\"\n");
    assert_eq!(e.path, "websocket.idle_timeout");

    let e = err("data_dir = \"\"\n");
    assert_eq!(e.path, "data_dir");
}

#[test]
fn pipeline_errors_keep_the_caret() {
    let e = err("pipeline = \"T30x0[HA]\"\n");
    assert_eq!(e.path, "pipeline");
    assert!(matches!(e.kind, ConfigErrorKind::Pipeline(ref s) if s.position == 3));
    assert!(e.to_string().ends_with("  T30x0[HA]\n     ^"), "{e}");
}

#[test]
fn syntax_and_io_errors_name_the_file() {
    let e = err("[http]\nmax_headers = = 3\n");
    assert!(matches!(e.kind, ConfigErrorKind::Syntax { .. }));
    assert_eq!(
        e.origin,
        Origin::File {
            name: "<config>".into(),
            line: Some(2)
        }
    );
    assert!(
        e.to_string().starts_with("<config>:2: invalid TOML: "),
        "{e}"
    );

    let missing = Path::new("/nonexistent/sigma.toml");
    let e = load(Some(missing), &[]).unwrap_err();
    assert!(matches!(e.kind, ConfigErrorKind::Io(_)));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/sigma.toml: cannot read the config file: "),
        "{e}"
    );
}

#[test]
fn environment_overrides_file_and_defaults() {
    let toml = "pipeline = \"T3000[H]\"\n[http]\nmax_headers = 50\n";
    let vars = env(&[
        ("SIGMA_HTTP_MAX_HEADERS", "70"),
        ("SIGMA_HTTP_HEAD_TIMEOUT", "3s"),
        ("SIGMA_WEBSOCKET_MAX_FRAME", "1000"),
        ("SIGMA_SERVER_BACKLOG", "64"),
        ("SIGMA_PIPELINE", "T[::1]:0[HA]"),
        ("SIGMA_DATA_DIR", "/tmp/sigma"),
        ("SIGMA_LOG", "debug"),
        ("SIGMA_LOG_FORMAT", "json"),
        ("PATH", "/usr/bin"),
        ("HTTP_MAX_HEADERS", "1"),
    ]);
    let c = from_str(toml, &vars).unwrap();
    assert_eq!(c.limits.max_headers, 70);
    assert_eq!(c.limits.head_timeout, Duration::from_secs(3));
    assert_eq!(c.limits.ws.max_frame, 1000);
    assert_eq!(c.server.backlog, 64);
    assert_eq!(c.topology.to_string(), "T[::1]:0[HA]");
    assert_eq!(c.data_dir, PathBuf::from("/tmp/sigma"));
    // The file still wins over the defaults where env is silent.
    let c = from_str(toml, &env(&[("SIGMA_HTTP_MAX_BODY", "5")])).unwrap();
    assert_eq!(c.limits.max_headers, 50);
    assert_eq!(c.limits.max_body, 5);
    // Without a file.
    let c = load(None, &env(&[("SIGMA_PIPELINE", "T9999[H]")])).unwrap();
    assert_eq!(c.topology.to_string(), "T127.0.0.1:9999[H]");
}

#[test]
fn environment_errors_name_the_variable() {
    // A variable that names no key is skipped (a warning, DESIGN §8):
    // another program's SIGMA_* must not stop sigma; the rest still apply.
    let c = from_str(
        "",
        &env(&[
            ("SIGMA_HTTP_MAX_HEDAERS", "10"),
            ("SIGMA_TEST_POSTGRES", "postgres://x"),
            ("SIGMA_HTTP_MAX_HEADERS", "12"),
            ("SIGMA_FOO", "1"),
            ("SIGMA_CONFIG", "/etc/sigma.toml"),
        ]),
    )
    .unwrap();
    assert_eq!(c.limits.max_headers, 12);
    assert_eq!(c, {
        let mut d = Config::default();
        d.limits.max_headers = 12;
        d
    });

    let e = from_str("", &env(&[("SIGMA_HTTP_HEAD_TIMEOUT", "ten")])).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("SIGMA_HTTP_HEAD_TIMEOUT: http.head_timeout: invalid duration \"ten\""),
        "{e}"
    );
    let e = from_str("", &env(&[("SIGMA_HTTP_HEAD_TIMEOUT", "10")])).unwrap_err();
    assert!(e.to_string().contains("expected a duration string"), "{e}");

    let e = from_str("", &env(&[("SIGMA_PIPELINE", "T3000")])).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("SIGMA_PIPELINE: pipeline: invalid pipeline"),
        "{e}"
    );

    let e = from_str("", &env(&[("SIGMA_WEBSOCKET_MAX_FRAME", "0")])).unwrap_err();
    assert!(e
        .to_string()
        .starts_with("SIGMA_WEBSOCKET_MAX_FRAME: websocket.max_frame"));

    let e = from_str("http = 1\n", &env(&[("SIGMA_HTTP_MAX_BODY", "1")])).unwrap_err();
    assert!(e.to_string().contains("is not a table"), "{e}");

    let e = from_str("", &env(&[("SIGMA_ROUTE", "x")])).unwrap_err();
    assert_eq!(e.path, "route");
}

fn route_err(path: &str, to: &str, extra: &str) -> ConfigError {
    err(&format!("[[route]]\npath = {path:?}\nto = {to:?}\n{extra}"))
}

#[test]
fn invalid_routes() {
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        ("echo", "&echo", "", "route[0].path", "must start with `/`"),
        ("", "&echo", "", "route[0].path", "must start with `/`"),
        ("/a b", "&echo", "", "route[0].path", "contains whitespace"),
        ("/a\tb", "&echo", "", "route[0].path", "contains whitespace"),
        ("/a/../b", "&echo", "", "route[0].path", "`..` segment"),
        ("/..", "&echo", "", "route[0].path", "`..` segment"),
        ("/a/./b", "&echo", "", "route[0].path", "`.` or"),
        ("/a//b", "&echo", "", "route[0].path", "contains `//`"),
        ("//", "&echo", "", "route[0].path", "contains `//`"),
        ("/a%2e", "&echo", "", "route[0].path", "contains `%`"),
        ("/a?b", "&echo", "", "route[0].path", "contains `?`"),
        ("/é", "&echo", "", "route[0].path", "contains `é`"),
        (
            "/x",
            "&chat",
            "",
            "route[0].to",
            "unknown destination `&chat`",
        ),
        (
            "/x",
            "echo",
            "",
            "route[0].to",
            "unknown destination \"echo\"",
        ),
        ("/x", "ftp://h", "", "route[0].to", "unknown destination"),
        ("/x", "https://", "", "route[0].to", "the host is missing"),
        (
            "/x",
            "http://h",
            "ca = \"/etc/ca.pem\"",
            "route[0].ca",
            "applies to an https:// upstream route only",
        ),
        (
            "/x",
            "&echo",
            "ca = \"/etc/ca.pem\"",
            "route[0].ca",
            "applies to an https:// upstream route only",
        ),
        ("/x", "http://", "", "route[0].to", "the host is missing"),
        ("/x", "http://:80", "", "route[0].to", "the host is missing"),
        ("/x", "http://h:0", "", "route[0].to", "the port must be"),
        (
            "/x",
            "http://h:99999",
            "",
            "route[0].to",
            "the port must be",
        ),
        ("/x", "http://h:+80", "", "route[0].to", "the port must be"),
        ("/x", "http://u:p@h", "", "route[0].to", "credentials"),
        ("/x", "http://h/a?b", "", "route[0].to", "query"),
        ("/x", "http://h /a", "", "route[0].to", "whitespace"),
        ("/x", "http://[::1", "", "route[0].to", "closing `]`"),
        (
            "/x",
            "http://[zz]:80",
            "",
            "route[0].to",
            "IPv6 address is invalid",
        ),
        ("/x", "http://h_h", "", "route[0].to", "the host may only"),
        ("/x", "static:", "", "route[0].to", "needs a directory"),
        (
            "/x",
            "&echo",
            "auth = \"none\"\nusers = [\"a\"]\n",
            "route[0].users",
            "needs auth",
        ),
        ("/x", "&echo", "users = []\n", "route[0].users", "is empty"),
        (
            "/x",
            "&echo",
            "allow = [\"admins\"]\n",
            "route[0].allow",
            "a subject is user:NAME",
        ),
        (
            "/x",
            "&echo",
            "allow = []\n",
            "route[0].allow",
            "admits nobody",
        ),
        (
            "/x",
            "&echo",
            "deny = [\"cidr:10.0.0.0/33\"]\n",
            "route[0].deny",
            "cidr:10.0.0.0/33",
        ),
        (
            "/x",
            "&echo",
            "methods = [\"get\"]\n",
            "route[0].methods",
            "is not a method",
        ),
        (
            "/x",
            "&echo",
            "users = [\"a\"]\nallow = [\"user:b\"]\n",
            "route[0].allow",
            "users and allow",
        ),
        (
            "/x",
            "&echo",
            "users = [\"\"]\n",
            "route[0].users",
            "invalid user name",
        ),
        (
            "/x",
            "&echo",
            "users = [\"a b\"]\n",
            "route[0].users",
            "invalid user name",
        ),
        (
            "/x",
            "&echo",
            "namespace = \"team\"\n",
            "route[0].namespace",
            "needs to = \"&db\"",
        ),
        (
            "/x",
            "&db",
            "namespace = \"a/b\"\n",
            "route[0].namespace",
            "invalid namespace",
        ),
        (
            "/x",
            "&db",
            "namespace = \"\"\n",
            "route[0].namespace",
            "invalid namespace",
        ),
        (
            "/x",
            "&db",
            "writers = [\"a\"]\n",
            "route[0].writers",
            "set namespace too",
        ),
        (
            "/x",
            "&db",
            "namespace = \"t\"\nwriters = []\n",
            "route[0].writers",
            "is empty",
        ),
    ];
    for (path, to, extra, key_path, needle) in cases {
        let e = route_err(path, to, extra);
        assert_eq!(e.path, *key_path, "{path:?} {to:?}: {e}");
        assert!(e.to_string().contains(needle), "{path:?} {to:?}: {e}");
        assert!(matches!(e.kind, ConfigErrorKind::Route(_)));
    }
}

#[test]
fn duplicate_routes() {
    let e = err(
        "[[route]]\npath = \"/a\"\nto = \"&echo\"\n[[route]]\npath = \"/b\"\nto = \"&db\"\n[[route]]\npath = \"/a/\"\nto = \"&db\"\n",
    );
    assert_eq!(e.path, "route[2].path");
    assert!(
        e.to_string().starts_with(
            "<config>:8: route[2].path: duplicate route path \"/a/\" (same as route[0])"
        ),
        "{e}"
    );
}

#[test]
fn routes_sorted_longest_first_and_described() {
    let toml = r#"
        pipeline = "T3000[HA] T9090[H]"
        [[route]]
        path = "/"
        to = "static:./www"
        [[route]]
        path = "/api"
        to = "http://127.0.0.1:8080/base"
        auth = "required"
        users = ["alice", "bob"]
        max_body = 1024
        [[route]]
        path = "/api/v2/"
        to = "http://[::1]:81"
        [[route]]
        path = "/chat"
        to = "&broadcast"
        [[route]]
        path = "/db"
        to = "&db"
        auth = "required"
    "#;
    let c = from_str(toml, &[]).unwrap();
    let paths: Vec<&str> = c.routes.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/api/v2/", "/chat", "/api", "/db", "/"]);
    assert_eq!(
        c.describe(),
        "pipeline T127.0.0.1:3000[HA] T127.0.0.1:9090[H]\n\
         route /api/v2/ -> http://[::1]:81 (auth required)\n\
         route /chat -> &broadcast (auth required)\n\
         route /api -> http://127.0.0.1:8080/base (auth required, users alice,bob, max_body 1024)\n\
         route /db -> &db (auth required)\n\
         route / -> static:./www (auth required)"
    );
    assert_eq!(
        Config::default().describe(),
        "pipeline T127.0.0.1:3000[HA]\n\
         route /broadcast -> &broadcast (auth optional)\n\
         route /world -> &world (auth required)\n\
         route /echo -> &echo (auth none)\n\
         route /db -> &db (auth required)\n\
         route /ws -> &world (auth required)\n\
         route / -> &web (auth optional)\n\
         world chat -> &broadcast (code builtin:chat)\n\
         world echo -> &echo (code builtin:echo)"
    );
}

#[test]
fn world_commands_are_checked() {
    let e = err("[world.x]\ncode = \"builtin:nope\"\nto = \"&echo\"\n");
    assert_eq!(e.path, "world.x.code");
    let e = err("[world.x]\ncode = \"builtin:echo\"\nto = \"&world\"\n");
    assert_eq!(e.path, "world.x.to");
    // Destinations with no WebSocket endpoint for a world.
    for to in ["http://127.0.0.1:8080", "static:./www", "&web"] {
        let e = err(&format!(
            "[world.x]\ncode = \"builtin:echo\"\nto = \"{to}\"\n"
        ));
        assert_eq!(e.path, "world.x.to", "{to}");
        assert!(e.to_string().contains("WebSocket"), "{e}");
    }
    let e = err("[world.x]\ncode = \"a.js\"\nto = \"&echo\"\nbogus = 1\n");
    assert_eq!(e.path, "world.x.bogus");
    let e = err("[world.\"a b\"]\ncode = \"a.js\"\nto = \"&echo\"\n");
    assert_eq!(e.path, "world.a b");
    let e = err("[worlds]\nmax_per_user = 0\n");
    assert_eq!(e.path, "worlds.max_per_user");
    for key in ["max_used_per_user", "max_users"] {
        let e = err(&format!("[worlds]\n{key} = 0\n"));
        assert_eq!(e.path, format!("worlds.{key}"));
    }
    // The key's name from when the limit was per login session.
    let e = err("[worlds]\nmax_per_session = 5\n");
    assert_eq!(e.path, "worlds.max_per_session");
    let c = from_str("[world.e]\ncode = \"builtin:echo\"\nto = \"&echo\"\n", &[]).unwrap();
    assert_eq!(c.world.len(), 1);
    // `users` is checked like a route's.
    let e = err("[world.x]\ncode = \"a.js\"\nto = \"&echo\"\nusers = []\n");
    assert_eq!(e.path, "world.x.users");
    let e = err("[world.x]\ncode = \"a.js\"\nto = \"&echo\"\nusers = [\"a b\"]\n");
    assert_eq!(e.path, "world.x.users");
}

#[test]
fn world_commands_inherit_the_users_of_the_route_they_reuse() {
    let routes = r#"
        [[route]]
        path = "/team"
        to = "&broadcast"
        auth = "required"
        users = ["alice", "bob"]
        [[route]]
        path = "/ws"
        to = "&world"
        auth = "required"
    "#;
    let c = from_str(
        &format!(
            "{routes}\n[world.open]\ncode = \"builtin:chat\"\nto = \"&broadcast\"\n\
             [world.mine]\ncode = \"builtin:chat\"\nto = \"&broadcast\"\nusers = [\"bob\", \"carol\"]\n\
             [world.echo]\ncode = \"builtin:echo\"\nto = \"&echo\"\nusers = [\"carol\"]\n"
        ),
        &[],
    )
    .unwrap();
    let users = |name: &str| {
        let w = c.world.iter().find(|w| w.name == name).unwrap();
        c.world_users(w)
    };
    assert_eq!(users("open"), Some(vec!["alice".into(), "bob".into()]));
    assert_eq!(users("mine"), Some(vec!["bob".into()]));
    assert_eq!(users("echo"), Some(vec!["carol".into()]));
    assert!(c
        .describe()
        .contains("world mine -> &broadcast (code builtin:chat, users bob)"));
    // Nobody could start it: an error naming the key.
    let e = err(&format!(
        "{routes}\n[world.x]\ncode = \"builtin:chat\"\nto = \"&broadcast\"\nusers = [\"carol\"]\n"
    ));
    assert_eq!(e.path, "world.x.users");
    assert!(e.to_string().contains("/team"), "{e}");
}

#[test]
fn explicit_empty_route_list_means_no_routes() {
    let c = from_str("route = []\n", &[]).unwrap();
    assert!(c.routes.is_empty());
}

#[test]
fn destinations_parse_and_print() {
    for (to, d) in [
        ("&echo", Destination::Echo),
        ("&broadcast", Destination::Broadcast),
        ("&db", Destination::Db),
        ("http://h", Destination::Upstream("http://h".into())),
        (
            "http://h.example:8080/x/y",
            Destination::Upstream("http://h.example:8080/x/y".into()),
        ),
        ("http://[::1]", Destination::Upstream("http://[::1]".into())),
        ("static:/srv/www", Destination::Static("/srv/www".into())),
        ("&web", Destination::Web),
    ] {
        assert_eq!(Destination::parse(to), Ok(d.clone()), "{to}");
        assert_eq!(d.to_string(), to);
        assert_eq!(to.parse::<Destination>(), Ok(d));
    }
    assert_eq!(
        Destination::parse("&nope"),
        Err(RouteError::UnknownBuiltin("nope".into()))
    );
}

#[test]
fn process_env_only_keeps_sigma_variables() {
    assert!(process_env().iter().all(|(k, _)| k.starts_with("SIGMA_")));
}

/// The field names serde knows for `T`, read from `deserialize_struct`
/// itself, so the coverage tests below can never drift from the structs.
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldProbe(&mut fields));
    fields
}

struct FieldProbe<'a>(&'a mut &'static [&'static str]);

#[derive(Debug)]
struct ProbeDone;

impl fmt::Display for ProbeDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field probe")
    }
}

impl std::error::Error for ProbeDone {}

impl de::Error for ProbeDone {
    fn custom<T: fmt::Display>(_: T) -> Self {
        ProbeDone
    }
}

impl<'de> Deserializer<'de> for FieldProbe<'_> {
    type Error = ProbeDone;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeDone> {
        Err(ProbeDone)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, ProbeDone> {
        *self.0 = fields;
        Err(ProbeDone)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}
