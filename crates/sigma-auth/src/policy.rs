//! Route policies (DESIGN §4, "Groups and policies"): who may use a route
//! beyond its `auth` level, decided by `A` once per request, after the
//! route is found and before the destination sees anything.
//!
//! ```text
//!  identity + client address + method ──▶ [ Policy::decide ] ──▶ Admit | Refuse(401/403/405)
//! ```
//!
//! ```toml
//! allow = ["group:admins", "user:carol"]   # any one admits; absent: everyone `auth` lets in
//! deny  = ["user:mallory", "cidr:10.0.0.0/8", "provider:jwt:*"]   # any one refuses; deny wins
//! methods = ["GET", "POST"]                # others: 405
//! ```
//!
//! Subjects: `user:NAME`, `group:NAME`, `provider:GLOB` (`password`,
//! `oauth:NAME`, `jwt:ISSUER`; `*` matches any run of characters) and
//! `cidr:NET`, matched against the client address as resolved through
//! `trusted_proxies`. The decision reads only the identity, that address
//! and the method: never the query, never a header (a forwarded URI
//! cannot steer it). The router already matched the normalised path.
//!
//! The order, and what a refusal answers:
//! 1. a `deny` subject matches → 403 (deny wins over everything);
//! 2. an `allow` list that nothing matches → 401 without an identity (a
//!    login might match), else 403;
//! 3. `methods` that do not list the method → 405 (`HEAD` counts as `GET`).
//!
//! Pure and sans-IO: property-tested against a reference model below, and
//! fuzzed (`fuzz/fuzz_targets/policy.rs`).

use std::fmt;
use std::net::IpAddr;

use sigma_core::net::Cidr;
use sigma_http::Method;

use crate::Identity;

/// Most subjects in one `allow` or `deny` list.
pub const MAX_SUBJECTS: usize = 256;

/// One `allow` / `deny` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// `user:NAME`: that user.
    User(String),
    /// `group:NAME`: members of the group.
    Group(String),
    /// `provider:GLOB`: identities from a matching provider.
    Provider(String),
    /// `cidr:NET`: clients from the network (anonymous ones too).
    Cidr(Cidr),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::User(u) => write!(f, "user:{u}"),
            Subject::Group(g) => write!(f, "group:{g}"),
            Subject::Provider(p) => write!(f, "provider:{p}"),
            Subject::Cidr(c) => write!(f, "cidr:{c}"),
        }
    }
}

/// Why a subject or a method does not parse (the message names it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not `user:`, `group:`, `provider:` or `cidr:`.
    #[error("{0:?}: a subject is user:NAME, group:NAME, provider:GLOB or cidr:NET")]
    UnknownKind(String),
    /// A user or group name outside the name rules.
    #[error("{0:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ @ - after the kind")]
    BadName(String),
    /// A provider glob that is empty, too long or has odd characters.
    #[error("{0:?}: a provider pattern is 1 to 256 visible characters")]
    BadProvider(String),
    /// A network that does not parse.
    #[error("{subject:?}: {reason}")]
    BadCidr {
        /// The subject as written.
        subject: String,
        /// Why.
        reason: String,
    },
    /// More than [`MAX_SUBJECTS`] subjects.
    #[error("at most {MAX_SUBJECTS} subjects in one list")]
    TooMany,
    /// An `allow = []`: it would refuse everyone; write `deny` instead.
    #[error("an empty allow list admits nobody; remove it or name who is allowed")]
    EmptyAllow,
    /// A method that is not an HTTP method sigma serves.
    #[error("{0:?} is not a method (GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS)")]
    BadMethod(String),
    /// `methods = []`.
    #[error("an empty methods list refuses every request")]
    EmptyMethods,
}

impl std::str::FromStr for Subject {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| PolicyError::UnknownKind(s.to_owned()))?;
        match kind {
            "user" if sigma_store::valid_user_name(rest) => Ok(Subject::User(rest.to_owned())),
            "group" if sigma_store::valid_group_name(rest) => Ok(Subject::Group(rest.to_owned())),
            "user" | "group" => Err(PolicyError::BadName(s.to_owned())),
            "provider"
                if !rest.is_empty()
                    && rest.len() <= 256
                    && rest.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Ok(Subject::Provider(rest.to_owned()))
            }
            "provider" => Err(PolicyError::BadProvider(s.to_owned())),
            "cidr" => Cidr::parse(rest)
                .map(Subject::Cidr)
                .map_err(|reason| PolicyError::BadCidr {
                    subject: s.to_owned(),
                    reason,
                }),
            _ => Err(PolicyError::UnknownKind(s.to_owned())),
        }
    }
}

/// What a request is judged on.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Who, if anyone.
    pub identity: Option<&'a Identity>,
    /// The client address (resolved through trusted proxies).
    pub client: IpAddr,
    /// The request method.
    pub method: Method,
}

impl Subject {
    /// True if the subject names the request's identity or client.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        match self {
            Subject::Cidr(c) => c.contains(facts.client),
            Subject::User(u) => facts.identity.is_some_and(|i| &i.user == u),
            Subject::Group(g) => facts
                .identity
                .is_some_and(|i| i.groups.iter().any(|x| x == g)),
            Subject::Provider(p) => facts
                .identity
                .is_some_and(|i| glob(p, &i.provider.to_string())),
        }
    }
}

/// `pattern` with `*` as any run of characters (none included), matched
/// against the whole of `text`. Linear in practice: the classic
/// backtracking-to-the-last-star algorithm, O(len(pattern) × len(text))
/// at worst, both short here.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if Some(&c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

/// A route's policy: `allow`, `deny`, `methods`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Any one admits; `None`: everyone the route's `auth` lets in.
    pub allow: Option<Vec<Subject>>,
    /// Any one refuses, whatever `allow` says.
    pub deny: Vec<Subject>,
    /// The methods served; `None`: all.
    pub methods: Option<Vec<Method>>,
}

/// `allow group:admins,user:carol, deny cidr:10.0.0.0/8, methods GET,POST`
/// (what `sigma check` prints for a route).
impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |v: &[Subject]| {
            v.iter()
                .map(Subject::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut parts = Vec::new();
        if let Some(a) = &self.allow {
            parts.push(format!("allow {}", join(a)));
        }
        if !self.deny.is_empty() {
            parts.push(format!("deny {}", join(&self.deny)));
        }
        if let Some(m) = &self.methods {
            let names: Vec<&str> = m.iter().map(|m| m.as_str()).collect();
            parts.push(format!("methods {}", names.join(",")));
        }
        f.write_str(&parts.join(", "))
    }
}

/// The outcome, with the rule that made it (for logs and `--explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let through: by `rule` (`allow user:carol`), or because there is
    /// no allow list.
    Allowed {
        /// The rule, e.g. `allow group:admins` or `no allow list`.
        rule: String,
    },
    /// Refused with `status` (401, 403 or 405) by `rule`.
    Refused {
        /// 401 (no identity, an allow list might admit one), 403, 405.
        status: u16,
        /// The rule, e.g. `deny cidr:10.0.0.0/8`.
        rule: String,
    },
}

impl Decision {
    /// True if the request may go on.
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

/// `HEAD` is served wherever `GET` is.
fn method_listed(methods: &[Method], m: Method) -> bool {
    methods.contains(&m) || (m == Method::Head && methods.contains(&Method::Get))
}

impl Policy {
    /// Reads the three route keys; `None` if none is set.
    pub fn parse(
        allow: Option<&[String]>,
        deny: Option<&[String]>,
        methods: Option<&[String]>,
    ) -> Result<Option<Self>, PolicyError> {
        if allow.is_none() && deny.is_none() && methods.is_none() {
            return Ok(None);
        }
        let subjects = |list: &[String]| -> Result<Vec<Subject>, PolicyError> {
            if list.len() > MAX_SUBJECTS {
                return Err(PolicyError::TooMany);
            }
            list.iter().map(|s| s.parse()).collect()
        };
        let allow = match allow {
            Some([]) => return Err(PolicyError::EmptyAllow),
            Some(list) => Some(subjects(list)?),
            None => None,
        };
        let deny = match deny {
            Some(list) => subjects(list)?,
            None => Vec::new(),
        };
        let methods = match methods {
            Some([]) => return Err(PolicyError::EmptyMethods),
            Some(list) => Some(
                list.iter()
                    .map(|m| {
                        Method::from_token(m.as_bytes())
                            .ok_or_else(|| PolicyError::BadMethod(m.clone()))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        Ok(Some(Policy {
            allow,
            deny,
            methods,
        }))
    }

    /// The decision for `facts` (the order of the module docs).
    pub fn decide(&self, facts: &Facts<'_>) -> Decision {
        if let Some(d) = self.deny.iter().find(|s| s.matches(facts)) {
            return Decision::Refused {
                status: 403,
                rule: format!("deny {d}"),
            };
        }
        let rule = match &self.allow {
            None => "no allow list".to_owned(),
            Some(list) => match list.iter().find(|s| s.matches(facts)) {
                Some(a) => format!("allow {a}"),
                None => {
                    return Decision::Refused {
                        status: if facts.identity.is_some() { 403 } else { 401 },
                        rule: "not in the allow list".to_owned(),
                    }
                }
            },
        };
        if let Some(methods) = &self.methods {
            if !method_listed(methods, facts.method) {
                return Decision::Refused {
                    status: 405,
                    rule: format!("{} not in methods", facts.method.as_str()),
                };
            }
        }
        Decision::Allowed { rule }
    }

    /// The `Allow` header value of a 405.
    pub fn allow_header(&self) -> Option<String> {
        let methods = self.methods.as_ref()?;
        let mut names: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
        if methods.contains(&Method::Get) && !methods.contains(&Method::Head) {
            names.push("HEAD");
        }
        Some(names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Provider;
    use proptest::prelude::*;

    fn id(user: &str, groups: &[&str], provider: Provider) -> Identity {
        Identity {
            user: user.to_owned(),
            provider,
            world: None,
            session: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn facts<'a>(identity: Option<&'a Identity>, client: &str, method: Method) -> Facts<'a> {
        Facts {
            identity,
            client: client.parse().unwrap(),
            method,
        }
    }

    #[test]
    fn subjects_parse_or_say_why() {
        assert_eq!("user:carol".parse(), Ok(Subject::User("carol".into())));
        assert_eq!("group:admins".parse(), Ok(Subject::Group("admins".into())));
        assert_eq!(
            "provider:jwt:*".parse(),
            Ok(Subject::Provider("jwt:*".into()))
        );
        assert!(matches!(
            "cidr:10.0.0.0/8".parse::<Subject>(),
            Ok(Subject::Cidr(_))
        ));
        for bad in [
            "carol",
            "usr:carol",
            "user:",
            "user:a b",
            "group:é",
            "provider:",
            "cidr:10.0.0.0/33",
            "cidr:x",
        ] {
            assert!(bad.parse::<Subject>().is_err(), "{bad:?}");
        }
        assert_eq!(
            Policy::parse(Some(&[]), None, None),
            Err(PolicyError::EmptyAllow)
        );
        assert_eq!(
            Policy::parse(None, None, Some(&[])),
            Err(PolicyError::EmptyMethods)
        );
        assert_eq!(
            Policy::parse(None, None, Some(&list(&["get"]))),
            Err(PolicyError::BadMethod("get".into()))
        );
        assert_eq!(Policy::parse(None, None, None), Ok(None));
    }

    #[test]
    fn globs() {
        for (p, t) in [
            ("*", ""),
            ("*", "jwt:x"),
            ("jwt:*", "jwt:https://id"),
            ("a*c", "abbc"),
            ("password", "password"),
            ("*:*", "oauth:corp"),
        ] {
            assert!(glob(p, t), "{p} {t}");
        }
        for (p, t) in [
            ("jwt:*", "oauth:corp"),
            ("a*c", "abcd"),
            ("password", "passwords"),
            ("", "x"),
        ] {
            assert!(!glob(p, t), "{p} {t}");
        }
    }

    #[test]
    fn the_example_of_the_design() {
        let p = Policy::parse(
            Some(&list(&["group:admins", "user:carol"])),
            Some(&list(&[
                "user:mallory",
                "cidr:10.0.0.0/8",
                "provider:jwt:*",
            ])),
            Some(&list(&["GET", "POST"])),
        )
        .unwrap()
        .unwrap();
        let alice = id("alice", &["admins"], Provider::Password);
        let carol = id("carol", &[], Provider::OAuth("corp".into()));
        let bob = id("bob", &["staff"], Provider::Password);
        let mallory = id("mallory", &["admins"], Provider::Password);
        let robot = id("robot", &["admins"], Provider::Jwt("https://id".into()));
        let ok = |d: Decision| assert!(d.allowed(), "{d:?}");
        let refused = |d: Decision, status: u16| match d {
            Decision::Refused { status: s, .. } => assert_eq!(s, status),
            other => panic!("{other:?}"),
        };
        ok(p.decide(&facts(Some(&alice), "192.0.2.1", Method::Get)));
        ok(p.decide(&facts(Some(&alice), "192.0.2.1", Method::Head)));
        ok(p.decide(&facts(Some(&carol), "192.0.2.1", Method::Post)));
        refused(p.decide(&facts(Some(&bob), "192.0.2.1", Method::Get)), 403);
        refused(p.decide(&facts(None, "192.0.2.1", Method::Get)), 401);
        // Deny wins over a matching allow.
        refused(
            p.decide(&facts(Some(&mallory), "192.0.2.1", Method::Get)),
            403,
        );
        refused(p.decide(&facts(Some(&alice), "10.1.2.3", Method::Get)), 403);
        refused(
            p.decide(&facts(Some(&robot), "192.0.2.1", Method::Get)),
            403,
        );
        refused(
            p.decide(&facts(Some(&alice), "192.0.2.1", Method::Delete)),
            405,
        );
        assert_eq!(
            p.decide(&facts(Some(&mallory), "192.0.2.1", Method::Get)),
            Decision::Refused {
                status: 403,
                rule: "deny user:mallory".into()
            }
        );
        assert_eq!(p.allow_header().as_deref(), Some("GET, POST, HEAD"));
    }

    fn arb_subject() -> impl Strategy<Value = Subject> {
        prop_oneof![
            "[abc]".prop_map(Subject::User),
            "[gh]".prop_map(Subject::Group),
            prop_oneof![Just("password"), Just("oauth:*"), Just("jwt:*"), Just("*")]
                .prop_map(|p| Subject::Provider(p.to_owned())),
            prop_oneof![Just("10.0.0.0/8"), Just("192.0.2.0/24"), Just("::1/128")]
                .prop_map(|c| Subject::Cidr(Cidr::parse(c).unwrap())),
        ]
    }

    fn arb_identity() -> impl Strategy<Value = Option<Identity>> {
        proptest::option::of(
            (
                "[abcd]",
                proptest::collection::vec("[ghi]", 0..3),
                prop_oneof![
                    Just(Provider::Password),
                    Just(Provider::OAuth("corp".into())),
                    Just(Provider::Jwt("iss".into()))
                ],
            )
                .prop_map(|(u, g, p)| Identity {
                    user: u,
                    provider: p,
                    world: None,
                    session: None,
                    groups: g,
                }),
        )
    }

    /// The reference model: written from the rule, not from the code.
    fn model(
        allow: &Option<Vec<Subject>>,
        deny: &[Subject],
        methods: &Option<Vec<Method>>,
        identity: Option<&Identity>,
        client: IpAddr,
        method: Method,
    ) -> bool {
        let names = |s: &Subject| -> bool {
            match (s, identity) {
                (Subject::Cidr(c), _) => c.contains(client),
                (_, None) => false,
                (Subject::User(u), Some(i)) => *u == i.user,
                (Subject::Group(g), Some(i)) => i.groups.contains(g),
                (Subject::Provider(p), Some(i)) => {
                    let name = i.provider.to_string();
                    match p.strip_suffix('*') {
                        Some(prefix) => name.starts_with(prefix),
                        None => *p == name,
                    }
                }
            }
        };
        if deny.iter().any(names) {
            return false;
        }
        let admitted = allow.as_ref().is_none_or(|a| a.iter().any(names));
        let method_ok = methods.as_ref().is_none_or(|m| {
            m.contains(&method) || (method == Method::Head && m.contains(&Method::Get))
        });
        admitted && method_ok
    }

    proptest! {
        #[test]
        fn decide_equals_the_reference_model(
            allow in proptest::option::of(proptest::collection::vec(arb_subject(), 1..4)),
            deny in proptest::collection::vec(arb_subject(), 0..3),
            methods in proptest::option::of(proptest::collection::vec(
                prop_oneof![Just(Method::Get), Just(Method::Post), Just(Method::Delete)], 1..3)),
            identity in arb_identity(),
            client in prop_oneof![Just("10.9.8.7"), Just("192.0.2.9"), Just("203.0.113.1"), Just("::1")],
            method in prop_oneof![Just(Method::Get), Just(Method::Head), Just(Method::Post), Just(Method::Put)],
        ) {
            let client: IpAddr = client.parse().unwrap();
            let policy = Policy { allow: allow.clone(), deny: deny.clone(), methods: methods.clone() };
            let got = policy.decide(&Facts { identity: identity.as_ref(), client, method });
            let want = model(&allow, &deny, &methods, identity.as_ref(), client, method);
            prop_assert_eq!(got.allowed(), want, "{:?}", got);
            // A refusal by an allow list is 401 exactly when there is no identity.
            if let Decision::Refused { status, rule } = &got {
                if rule == "not in the allow list" {
                    prop_assert_eq!(*status == 401, identity.is_none());
                }
            }
        }

        #[test]
        fn glob_agrees_with_a_regex_like_model(p in "[ab*]{0,6}", t in "[ab]{0,8}") {
            // Model: split on '*', the parts appear in order, the first
            // anchored at the start and the last at the end.
            let parts: Vec<&str> = p.split('*').collect();
            let model = if parts.len() == 1 {
                p == t
            } else {
                let (first, last) = (parts[0], parts[parts.len() - 1]);
                let mut ok = t.starts_with(first) && t.len() >= first.len() + last.len() && t.ends_with(last);
                if ok {
                    let mut rest = &t[first.len()..t.len() - last.len()];
                    for mid in &parts[1..parts.len() - 1] {
                        match rest.find(mid) {
                            Some(i) => rest = &rest[i + mid.len()..],
                            None => { ok = false; break; }
                        }
                    }
                }
                ok
            };
            prop_assert_eq!(glob(&p, &t), model);
        }
    }
}
