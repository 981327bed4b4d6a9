//! Invariant: any text: parsing `allow` / `deny` / `methods` lists never
//! panics, and a policy that parses decides every request without
//! panicking, with deny winning (a matching deny subject is always a
//! refusal), an allowed request always satisfying `methods`, and a 401
//! only without an identity.
//!
//! Where it sits: `A`, on the route's policy (DESIGN §4), which the
//! operator writes and the client steers with its identity and address.
//!
//! Input layout: lines. Line 0: the method and client address the request
//! is judged with (`GET 10.1.2.3`); line 1: the identity (`user group,group
//! provider`, or empty for anonymous); then subject lines, each prefixed
//! `+` (allow), `-` (deny) or `m` (a method).

#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use sigma::auth::policy::{Decision, Facts, Policy};
use sigma::auth::{Identity, Provider};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.lines();
    let head = lines.next().unwrap_or("");
    let (method, client) = head.split_once(' ').unwrap_or((head, "192.0.2.1"));
    let method =
        sigma_http::Method::from_token(method.as_bytes()).unwrap_or(sigma_http::Method::Get);
    let client: IpAddr = client.parse().unwrap_or(IpAddr::from([192, 0, 2, 1]));
    let who = lines.next().unwrap_or("");
    let identity = {
        let mut parts = who.split(' ');
        match parts.next().filter(|u| !u.is_empty()) {
            None => None,
            Some(user) => Some(Identity {
                user: user.to_owned(),
                groups: parts
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .filter(|g| !g.is_empty())
                    .map(str::to_owned)
                    .collect(),
                provider: match parts.next() {
                    Some(p) if p.starts_with("oauth:") => Provider::OAuth(p[6..].to_owned()),
                    Some(p) if p.starts_with("jwt:") => Provider::Jwt(p[4..].to_owned()),
                    _ => Provider::Password,
                },
                world: None,
                session: None,
            }),
        }
    };
    let (mut allow, mut deny, mut methods) = (Vec::new(), Vec::new(), Vec::new());
    for l in lines {
        match l.split_at_checked(1) {
            Some(("+", s)) => allow.push(s.to_owned()),
            Some(("-", s)) => deny.push(s.to_owned()),
            Some(("m", s)) => methods.push(s.to_owned()),
            _ => {}
        }
    }
    fn opt(v: &[String]) -> Option<&[String]> {
        (!v.is_empty()).then_some(v)
    }
    let Ok(Some(policy)) = Policy::parse(opt(&allow), opt(&deny), opt(&methods)) else {
        return;
    };
    let facts = Facts {
        identity: identity.as_ref(),
        client,
        method,
    };
    let decision = policy.decide(&facts);
    if policy.deny.iter().any(|s| s.matches(&facts)) {
        assert!(!decision.allowed(), "a deny matched but {decision:?}");
    }
    match &decision {
        Decision::Allowed { .. } => {
            if let Some(m) = &policy.methods {
                assert!(
                    m.contains(&method)
                        || (method == sigma_http::Method::Head
                            && m.contains(&sigma_http::Method::Get)),
                    "allowed outside methods"
                );
            }
        }
        Decision::Refused { status: 401, .. } => assert!(identity.is_none()),
        Decision::Refused { status, .. } => assert!(matches!(status, 403 | 405)),
    }
});
