//! The topology notation of DESIGN §1: `T3000[HA]`, `T[::1]:3000[H] T9090[H]`.
//!
//! `sigma serve` reads the config ([`crate::config`]), whose `pipeline` key (or
//! the `--pipeline` flag) is parsed here into a [`Topology`]; the binary then
//! binds one `T` listener per [`Listener`] and runs its [`Stage`]s (`S` if
//! present, then `H`, then `A`) on each connection. This module only parses and prints the notation:
//! it binds nothing, resolves no host names and does not check that an address
//! is free.
//!
//! Grammar (whitespace only *between* listeners):
//!
//! ```text
//! topology = listener { ws+ listener }
//! listener = "T" addr "[" stages "]"
//! addr     = PORT                     bare port: 127.0.0.1:PORT (loopback only)
//!          | IPV4 ":" PORT
//!          | "[" IPV6 "]" ":" PORT
//!          | "localhost:" PORT         127.0.0.1:PORT
//! stages   = [ "S" ] ( "H" | "HA" )   S: TLS before H (DESIGN §2a)
//! PORT     = 0..=65535                 0 = ephemeral (tests)
//! ```
//!
//! A bare port deliberately binds loopback only: exposing sigma takes an
//! explicit `T0.0.0.0:3000[HA]` or `T[::]:3000[HA]`. The canonical form
//! ([`Display`](fmt::Display)) always spells the address out, so
//! `parse(&t.to_string()) == Ok(t)`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Every listener of one sigma process, in the order they were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// One entry per `T…[…]`; never empty when produced by [`parse`].
    pub listeners: Vec<Listener>,
}

/// One `T` listener and the stages each of its connections runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Where to listen. Port 0 asks the OS for an ephemeral port.
    pub addr: SocketAddr,
    /// The stages after `T`, left to right: [`Stage::S`] (TLS) if present,
    /// then always [`Stage::H`].
    pub stages: Vec<Stage>,
}

/// A pipeline stage after `T`. More stages may be added later; `S`, `H`
/// and `A` are accepted today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// TLS (rustls), between `T` and `H` (DESIGN §2a); needs `[tls]`.
    S,
    /// The HTTP/1.1 + WebSocket codec (DESIGN §3).
    H,
    /// Authentication and the identity gate (DESIGN §4).
    A,
}

impl Stage {
    /// The letter that names this stage in the notation.
    pub fn letter(self) -> char {
        match self {
            Stage::S => 'S',
            Stage::H => 'H',
            Stage::A => 'A',
        }
    }

    fn from_letter(c: char) -> Option<Stage> {
        match c {
            'S' => Some(Stage::S),
            'H' => Some(Stage::H),
            'A' => Some(Stage::A),
            _ => None,
        }
    }
}

impl Listener {
    /// Whether this listener's connections run `stage`.
    pub fn has(&self, stage: Stage) -> bool {
        self.stages.contains(&stage)
    }
}

/// A malformed topology: what is wrong and at which character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The spec as given.
    pub spec: String,
    /// Index (in chars, not bytes) of the offending character; equal to the
    /// char count when the spec ended too early.
    pub position: usize,
    /// What was expected or what is wrong, without the spec itself.
    pub message: String,
}

impl fmt::Display for SpecError {
    /// ```text
    /// invalid pipeline "T30x0[HA]": expected `[` after the address
    ///   T30x0[HA]
    ///      ^
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid pipeline {:?}: {}", self.spec, self.message)?;
        // One column per char: control characters (tabs, newlines) would
        // break the caret's alignment, so they are shown as spaces.
        let shown: String = self
            .spec
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        writeln!(f, "  {shown}")?;
        write!(f, "  {:width$}^", "", width = self.position)
    }
}

impl std::error::Error for SpecError {}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.letter())
    }
}

impl fmt::Display for Listener {
    /// `T127.0.0.1:3000[HA]`, `T[::1]:3000[H]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "T{}[", self.addr)?;
        for stage in &self.stages {
            write!(f, "{stage}")?;
        }
        write!(f, "]")
    }
}

impl fmt::Display for Topology {
    /// The listeners in canonical form, separated by one space.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, listener) in self.listeners.iter().enumerate() {
            if i > 0 {
                write!(f, " ")?;
            }
            write!(f, "{listener}")?;
        }
        Ok(())
    }
}

impl FromStr for Topology {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        parse(spec)
    }
}

/// Parses a topology such as `T3000[HA] T[::1]:9090[H]` (grammar in the
/// module docs). Duplicate listen addresses are an error, except port 0.
pub fn parse(spec: &str) -> Result<Topology, SpecError> {
    let mut cur = Cursor {
        spec,
        chars: spec.chars().collect(),
        pos: 0,
    };
    cur.skip_ws();
    if cur.peek().is_none() {
        return Err(cur.error(
            cur.pos,
            "empty pipeline: expected a listener such as `T3000[HA]`",
        ));
    }
    let mut listeners: Vec<Listener> = Vec::new();
    loop {
        let start = cur.pos;
        let listener = cur.listener()?;
        if listener.addr.port() != 0 {
            if let Some(i) = listeners.iter().position(|l| l.addr == listener.addr) {
                return Err(cur.error(
                    start,
                    format!(
                        "duplicate listen address {} (listener {} already uses it)",
                        listener.addr,
                        i + 1
                    ),
                ));
            }
        }
        listeners.push(listener);
        let separated = cur.skip_ws() > 0;
        match cur.peek() {
            None => break,
            Some(c) if !separated => {
                return Err(cur.error(
                    cur.pos,
                    format!(
                        "unexpected `{}` after the listener (separate listeners with a space)",
                        c.escape_debug()
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(Topology { listeners })
}

/// A position in the spec, counted in chars.
struct Cursor<'a> {
    spec: &'a str,
    chars: Vec<char>,
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    /// Skips whitespace; returns how many chars were skipped.
    fn skip_ws(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Takes the longest run of chars matching `keep`; returns its start.
    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> (usize, String) {
        let start = self.pos;
        let mut text = String::new();
        while let Some(c) = self.peek().filter(|&c| keep(c)) {
            text.push(c);
            self.pos += 1;
        }
        (start, text)
    }

    fn error(&self, position: usize, message: impl Into<String>) -> SpecError {
        SpecError {
            spec: self.spec.to_owned(),
            position,
            message: message.into(),
        }
    }

    /// "found `x`" or "found the end" for the char at the cursor.
    fn found(&self) -> String {
        match self.peek() {
            Some(c) => format!("found `{}`", c.escape_debug()),
            None => "found the end".to_owned(),
        }
    }

    fn listener(&mut self) -> Result<Listener, SpecError> {
        match self.peek() {
            Some('T') => self.pos += 1,
            Some('t') => {
                return Err(self.error(self.pos, "expected `T` (upper case) to start a listener"))
            }
            _ => {
                let msg = format!("expected `T` to start a listener, {}", self.found());
                return Err(self.error(self.pos, msg));
            }
        }
        let addr = self.addr()?;
        if self.peek() != Some('[') {
            let msg = format!("expected `[` after the address, {}", self.found());
            return Err(self.error(self.pos, msg));
        }
        self.pos += 1;
        let stages = self.stages()?;
        Ok(Listener { addr, stages })
    }

    fn addr(&mut self) -> Result<SocketAddr, SpecError> {
        match self.peek() {
            Some('[') => {
                self.pos += 1;
                let (start, text) =
                    self.take_while(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
                if self.peek() != Some(']') {
                    let msg = format!("expected `]` to close the IPv6 address, {}", self.found());
                    return Err(self.error(self.pos, msg));
                }
                let ip: Ipv6Addr = text
                    .parse()
                    .map_err(|_| self.error(start, format!("invalid IPv6 address `{text}`")))?;
                self.pos += 1;
                let port = self.colon_port("the IPv6 address")?;
                Ok(SocketAddr::new(IpAddr::V6(ip), port))
            }
            Some(c) if c.is_ascii_digit() => {
                let (start, text) = self.take_while(|c| c.is_ascii_digit() || c == '.');
                if self.peek() == Some(':') {
                    let ip: Ipv4Addr = text
                        .parse()
                        .map_err(|_| self.error(start, format!("invalid IPv4 address `{text}`")))?;
                    let port = self.colon_port("the IPv4 address")?;
                    Ok(SocketAddr::new(IpAddr::V4(ip), port))
                } else if text.contains('.') {
                    let msg = format!("expected `:` and a port after `{text}`, {}", self.found());
                    Err(self.error(self.pos, msg))
                } else {
                    let port = self.port_value(start, &text)?;
                    Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
                }
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let (start, text) =
                    self.take_while(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
                if !text.eq_ignore_ascii_case("localhost") {
                    return Err(self.error(
                        start,
                        format!(
                            "unknown host `{text}`: write an IP address, `localhost` or a bare port"
                        ),
                    ));
                }
                let port = self.colon_port("`localhost`")?;
                Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
            }
            _ => {
                let msg = format!(
                    "expected a port or an address after `T` (e.g. `T3000` or `T127.0.0.1:3000`), {}",
                    self.found()
                );
                Err(self.error(self.pos, msg))
            }
        }
    }

    /// `:` PORT after a host; `what` names the host in the message.
    fn colon_port(&mut self, what: &str) -> Result<u16, SpecError> {
        if self.peek() != Some(':') {
            let msg = format!("expected `:` and a port after {what}, {}", self.found());
            return Err(self.error(self.pos, msg));
        }
        self.pos += 1;
        let (start, text) = self.take_while(|c| c.is_ascii_digit());
        if text.is_empty() {
            let msg = format!("expected a port number, {}", self.found());
            return Err(self.error(self.pos, msg));
        }
        self.port_value(start, &text)
    }

    fn port_value(&self, start: usize, digits: &str) -> Result<u16, SpecError> {
        digits
            .parse()
            .map_err(|_| self.error(start, format!("port {digits} is out of range (0-65535)")))
    }

    /// The stage letters after `[`, through the closing `]`.
    fn stages(&mut self) -> Result<Vec<Stage>, SpecError> {
        let mut stages = Vec::new();
        loop {
            let at = self.pos;
            let c = match self.bump() {
                Some(']') if stages.is_empty() => {
                    return Err(self.error(
                        at,
                        "no stages: expected `H`, `HA`, `SH` or `SHA` inside `[]`",
                    ))
                }
                Some(']') if !stages.contains(&Stage::H) => {
                    return Err(self.error(at, "`S` needs `H` after it, e.g. `[SHA]`"))
                }
                Some(']') => return Ok(stages),
                Some(c) => c,
                None if stages.is_empty() => {
                    return Err(self.error(at, "expected the stages after `[`, e.g. `[HA]`"))
                }
                None => return Err(self.error(at, "expected `]` to close the stages")),
            };
            let Some(stage) = Stage::from_letter(c) else {
                let hint = if Stage::from_letter(c.to_ascii_uppercase()).is_some() {
                    " (stages are upper case)"
                } else {
                    ""
                };
                return Err(self.error(
                    at,
                    format!(
                        "unknown stage `{}`: expected `S`, `H` or `A`{hint}",
                        c.escape_debug()
                    ),
                ));
            };
            if stages.contains(&stage) {
                return Err(self.error(at, format!("duplicate stage `{stage}`")));
            }
            match stage {
                Stage::S if !stages.is_empty() => {
                    return Err(self.error(at, "`S` (TLS) must come first, before `H`"))
                }
                Stage::H if stages.iter().any(|s| *s != Stage::S) => {
                    return Err(self.error(at, "`H` must be the first stage (after `S`)"))
                }
                Stage::A if !stages.contains(&Stage::H) => {
                    return Err(self.error(at, "`A` needs `H` before it"))
                }
                _ => {}
            }
            stages.push(stage);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn l(addr: &str, stages: &[Stage]) -> Listener {
        Listener {
            addr: addr.parse().unwrap(),
            stages: stages.to_vec(),
        }
    }

    use Stage::{A, H, S};

    #[test]
    fn valid_specs() {
        let table: &[(&str, Vec<Listener>, &str)] = &[
            (
                "T3000[HA]",
                vec![l("127.0.0.1:3000", &[H, A])],
                "T127.0.0.1:3000[HA]",
            ),
            (
                "T127.0.0.1:3000[HA]",
                vec![l("127.0.0.1:3000", &[H, A])],
                "T127.0.0.1:3000[HA]",
            ),
            (
                "T0.0.0.0:80[H]",
                vec![l("0.0.0.0:80", &[H])],
                "T0.0.0.0:80[H]",
            ),
            (
                "T[::]:3000[HA]",
                vec![l("[::]:3000", &[H, A])],
                "T[::]:3000[HA]",
            ),
            (
                "T[::1]:3000[H]",
                vec![l("[::1]:3000", &[H])],
                "T[::1]:3000[H]",
            ),
            (
                "T[::ffff:1.2.3.4]:8080[H]",
                vec![l("[::ffff:1.2.3.4]:8080", &[H])],
                "T[::ffff:1.2.3.4]:8080[H]",
            ),
            (
                "Tlocalhost:3000[HA]",
                vec![l("127.0.0.1:3000", &[H, A])],
                "T127.0.0.1:3000[HA]",
            ),
            ("T0[H]", vec![l("127.0.0.1:0", &[H])], "T127.0.0.1:0[H]"),
            (
                "T0[H] T0[HA]",
                vec![l("127.0.0.1:0", &[H]), l("127.0.0.1:0", &[H, A])],
                "T127.0.0.1:0[H] T127.0.0.1:0[HA]",
            ),
            (
                "T443[SHA] T80[H]",
                vec![l("127.0.0.1:443", &[S, H, A]), l("127.0.0.1:80", &[H])],
                "T127.0.0.1:443[SHA] T127.0.0.1:80[H]",
            ),
            (
                "T0[SH]",
                vec![l("127.0.0.1:0", &[S, H])],
                "T127.0.0.1:0[SH]",
            ),
            (
                "T65535[H]",
                vec![l("127.0.0.1:65535", &[H])],
                "T127.0.0.1:65535[H]",
            ),
            (
                "T3000[HA] T9090[H]",
                vec![l("127.0.0.1:3000", &[H, A]), l("127.0.0.1:9090", &[H])],
                "T127.0.0.1:3000[HA] T127.0.0.1:9090[H]",
            ),
            (
                "  T3000[HA]   \t T9090[H]\n ",
                vec![l("127.0.0.1:3000", &[H, A]), l("127.0.0.1:9090", &[H])],
                "T127.0.0.1:3000[HA] T127.0.0.1:9090[H]",
            ),
            (
                "T127.0.0.1:3000[HA] T[::1]:3000[HA]",
                vec![l("127.0.0.1:3000", &[H, A]), l("[::1]:3000", &[H, A])],
                "T127.0.0.1:3000[HA] T[::1]:3000[HA]",
            ),
        ];
        for (spec, listeners, canonical) in table {
            let t = parse(spec).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
            assert_eq!(&t.listeners, listeners, "{spec:?}");
            assert_eq!(t.to_string(), *canonical, "{spec:?}");
            assert_eq!(parse(canonical).unwrap(), t, "{spec:?}");
            assert_eq!(spec.parse::<Topology>().unwrap(), t);
        }
    }

    #[test]
    fn invalid_specs_point_at_the_offending_char() {
        let table: &[(&str, usize, &str)] = &[
            ("", 0, "empty pipeline"),
            ("   ", 3, "empty pipeline"),
            ("T", 1, "expected a port or an address"),
            ("3000[HA]", 0, "expected `T`"),
            ("t3000[HA]", 0, "upper case"),
            ("T3000", 5, "expected `[` after the address, found the end"),
            ("T30x0[HA]", 3, "expected `[` after the address, found `x`"),
            ("T3000[", 6, "expected the stages"),
            ("T3000[H", 7, "expected `]`"),
            ("T3000[]", 6, "no stages"),
            ("T3000[X]", 6, "unknown stage `X`"),
            ("T3000[h]", 6, "upper case"),
            ("T3000[AH]", 6, "`A` needs `H` before it"),
            ("T443[S]", 6, "`S` needs `H` after it"),
            ("T443[HS]", 6, "`S` (TLS) must come first"),
            ("T443[SS]", 6, "duplicate stage `S`"),
            ("T443[SAH]", 6, "`A` needs `H` before it"),
            ("T443[s]", 5, "stages are upper case"),
            ("T3000[HAA]", 8, "duplicate stage `A`"),
            ("T3000[HH]", 7, "duplicate stage `H`"),
            ("T3000[H A]", 7, "unknown stage ` `"),
            ("T99999[H]", 1, "port 99999 is out of range"),
            ("T1.2.3:80[H]", 1, "invalid IPv4 address `1.2.3`"),
            ("T1.2.3.4[H]", 8, "expected `:` and a port"),
            ("T1.2.3.4:[H]", 9, "expected a port number"),
            ("T1.2.3.4:70000[H]", 9, "out of range"),
            ("T[::1:80[H]", 8, "expected `]` to close the IPv6 address"),
            ("T[::1]80[H]", 6, "expected `:` and a port"),
            ("T[1::2::3]:80[H]", 2, "invalid IPv6 address"),
            ("T[]:80[H]", 2, "invalid IPv6 address"),
            ("Texample.com:80[H]", 1, "unknown host `example.com`"),
            (
                "Tlocalhost[H]",
                10,
                "expected `:` and a port after `localhost`",
            ),
            ("T 3000[H]", 1, "expected a port or an address"),
            ("T3000 [H]", 5, "expected `[`"),
            ("T3000[HA]x", 9, "unexpected `x` after the listener"),
            ("T3000[HA]T9090[H]", 9, "separate listeners with a space"),
            ("T3000[HA] x", 10, "expected `T`"),
            (
                "T3000[HA] T3000[H]",
                10,
                "duplicate listen address 127.0.0.1:3000",
            ),
            (
                "T3000[HA] Tlocalhost:3000[H]",
                10,
                "listener 1 already uses it",
            ),
            ("é T3000[H]", 0, "expected `T`"),
            ("T3000[H] é", 9, "found `é`"),
        ];
        for (spec, position, needle) in table {
            let e = parse(spec).expect_err(spec);
            assert_eq!(e.position, *position, "{spec:?}: {e}");
            assert!(e.message.contains(needle), "{spec:?}: {e}");
            assert_eq!(e.spec, *spec);
        }
    }

    #[test]
    fn error_display_renders_a_caret() {
        let e = parse("T30x0[HA]").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid pipeline \"T30x0[HA]\": expected `[` after the address, found `x`\n  T30x0[HA]\n     ^"
        );
        // Controls keep the caret aligned; the end-of-input caret sits past the last char.
        let e = parse("T3000[H]\tT9[").unwrap_err();
        assert_eq!(e.position, 12);
        assert!(
            e.to_string().ends_with("  T3000[H] T9[\n              ^"),
            "{e}"
        );
    }

    #[test]
    fn listener_helpers() {
        let t = parse("T3000[HA] T9090[H]").unwrap();
        assert!(t.listeners[0].has(Stage::A));
        assert!(!t.listeners[1].has(Stage::A));
        assert!(t.listeners[1].has(Stage::H));
    }

    fn listener_strategy() -> impl Strategy<Value = Listener> {
        let ip = prop_oneof![
            any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
            any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
            Just(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Just(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        ];
        let stages = prop_oneof![
            Just(vec![H]),
            Just(vec![H, A]),
            Just(vec![S, H]),
            Just(vec![S, H, A])
        ];
        (ip, any::<u16>(), stages).prop_map(|(ip, port, stages)| Listener {
            addr: SocketAddr::new(ip, port),
            stages,
        })
    }

    fn topology_strategy() -> impl Strategy<Value = Topology> {
        proptest::collection::vec(listener_strategy(), 1..5).prop_map(|all| {
            let mut listeners: Vec<Listener> = Vec::new();
            for l in all {
                if l.addr.port() == 0 || !listeners.iter().any(|o| o.addr == l.addr) {
                    listeners.push(l);
                }
            }
            Topology { listeners }
        })
    }

    fn check_any(spec: &str) {
        match parse(spec) {
            Ok(t) => {
                assert!(!t.listeners.is_empty());
                assert_eq!(parse(&t.to_string()).as_ref(), Ok(&t));
            }
            Err(e) => {
                assert!(e.position <= spec.chars().count(), "{spec:?}: {e:?}");
                let _ = e.to_string();
            }
        }
    }

    proptest! {
        #[test]
        fn canonical_form_round_trips(t in topology_strategy()) {
            prop_assert_eq!(parse(&t.to_string()), Ok(t));
        }

        #[test]
        fn arbitrary_strings_never_panic(spec in any::<String>()) {
            check_any(&spec);
        }

        #[test]
        fn near_miss_strings_never_panic(spec in "[T\\[\\]:0-9a-fA-F.HAlocahst \t-]{0,24}") {
            check_any(&spec);
        }
    }
}
