//! The request path as sigma routes it: normalised once, before `A` and
//! the route table look at it (docs/proxy.md, "Request paths").
//!
//! ```text
//!  H ──RequestHead{target}──▶ [ normalise_target ] ──▶ A (endpoints, admit) ──▶ route ──▶ destination
//!                                   └─ 400 invalid_path
//! ```
//!
//! Routing, `A`'s per-route admission and every destination must see the
//! same path, or a path that matches one route (`/x/../admin`) is served
//! by another (`/admin`). The path part of the target is normalised per
//! RFC 3986 §6.2.2: percent-encoded unreserved characters (`ALPHA DIGIT - .
//! _ ~`) are decoded and the hex of the remaining escapes is upper-cased.
//! Then a path is refused if it has a `.` or `..` segment (also written
//! `.;x` / `..;x`, which some servers read as a dot segment), an empty
//! segment (`//`; a trailing `/` is kept), `%00`, a malformed escape, a
//! raw backslash or a raw `#`. The query is left as it came. `%2F` (an
//! encoded `/`) stays as it is: `&db` keys may hold it; destinations that
//! would decode it refuse it themselves (the proxy, static files).

use bytes::Bytes;

/// Why a request target is refused (`400`, counted as `invalid_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// Neither origin-form (`/…`) nor `*`.
    NotOriginForm,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `%00`.
    Nul,
    /// A raw `\` (some servers read it as `/`).
    Backslash,
    /// A raw `#` (a fragment never belongs to a request target).
    Fragment,
    /// A `.` or `..` segment, encoded or not.
    DotSegment,
    /// An empty segment (`//`) before the last one.
    EmptySegment,
}

impl BadPath {
    /// A short description, for logs.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NotOriginForm => "not origin-form",
            Self::BadEscape => "malformed percent-escape",
            Self::Nul => "%00",
            Self::Backslash => "backslash",
            Self::Fragment => "fragment",
            Self::DotSegment => "dot segment",
            Self::EmptySegment => "empty segment",
        }
    }
}

/// The metric label of every refusal by [`normalise_target`].
pub const REJECT_LABEL: &str = "invalid_path";

/// `target` with its path normalised (see the module doc), the query kept
/// byte for byte; `*` (for `OPTIONS`) is kept as is. Allocates only when
/// the path holds a `%`.
pub fn normalise_target(target: &Bytes) -> Result<Bytes, BadPath> {
    if &target[..] == b"*" {
        return Ok(target.clone());
    }
    if target.first() != Some(&b'/') {
        return Err(BadPath::NotOriginForm);
    }
    let split = target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len());
    let (path, query) = target.split_at(split);
    let marks = Marks::of(path);
    if !marks.percent {
        marks.check()?;
        check_dots(path)?;
        return Ok(target.clone());
    }
    let norm = normalise_path(path)?;
    check_segments(&norm)?;
    if norm == path {
        return Ok(target.clone());
    }
    let mut out = norm;
    out.extend_from_slice(query);
    Ok(Bytes::from(out))
}

/// True for RFC 3986's unreserved characters.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes every `%XX` escape once; in `sigma-core`, where the
/// destinations that map a path to a name use it too.
pub use sigma_core::percent::percent_decode;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Decodes escaped unreserved characters and upper-cases the other
/// escapes; refuses what can never be a valid path (see [`BadPath`]).
fn normalise_path(path: &[u8]) -> Result<Vec<u8>, BadPath> {
    let mut out = Vec::with_capacity(path.len());
    let mut it = path.iter();
    while let Some(&b) = it.next() {
        match b {
            b'%' => {
                let hi = it.next().and_then(|&h| hex(h)).ok_or(BadPath::BadEscape)?;
                let lo = it.next().and_then(|&l| hex(l)).ok_or(BadPath::BadEscape)?;
                let v = hi << 4 | lo;
                if v == 0 {
                    return Err(BadPath::Nul);
                }
                if unreserved(v) {
                    out.push(v);
                } else {
                    let upper = |n: u8| HEX.get(usize::from(n)).copied().unwrap_or(b'0');
                    out.extend_from_slice(&[b'%', upper(hi), upper(lo)]);
                }
            }
            b'\\' => return Err(BadPath::Backslash),
            b'#' => return Err(BadPath::Fragment),
            _ => out.push(b),
        }
    }
    Ok(out)
}

/// Refuses dot segments, empty segments but the last, and what
/// [`normalise_path`] refuses in a path without escapes.
fn check_segments(path: &[u8]) -> Result<(), BadPath> {
    Marks::of(path).check()?;
    check_dots(path)
}

/// Which of the bytes that decide a path's fate it holds, found in one
/// pass (three `contains` calls, each a `memchr`, showed in the
/// per-request profile).
struct Marks {
    percent: bool,
    backslash: bool,
    hash: bool,
}

impl Marks {
    fn of(path: &[u8]) -> Self {
        let mut m = Self {
            percent: false,
            backslash: false,
            hash: false,
        };
        for &b in path {
            match b {
                b'%' => m.percent = true,
                b'\\' => m.backslash = true,
                b'#' => m.hash = true,
                _ => {}
            }
        }
        m
    }

    /// A raw backslash, then a raw `#`, in that order of precedence.
    fn check(&self) -> Result<(), BadPath> {
        if self.backslash {
            return Err(BadPath::Backslash);
        }
        if self.hash {
            return Err(BadPath::Fragment);
        }
        Ok(())
    }
}

/// Refuses dot segments and empty segments but the last.
fn check_dots(path: &[u8]) -> Result<(), BadPath> {
    // The path starts with `/`: the first piece is the empty one before
    // it. Walked by hand: the `split` and `peekable` adapters showed in
    // the per-request profile.
    let Some(first) = path.iter().position(|&b| b == b'/') else {
        return Ok(());
    };
    let mut rest = path.get(first + 1..).unwrap_or_default();
    loop {
        let (seg, last) = match rest.iter().position(|&b| b == b'/') {
            Some(i) => {
                let (seg, tail) = rest.split_at_checked(i).unwrap_or((rest, &[]));
                rest = tail.get(1..).unwrap_or_default();
                (seg, false)
            }
            None => (rest, true),
        };
        if seg.is_empty() && !last {
            return Err(BadPath::EmptySegment);
        }
        // `..;x` is `..` to servers that strip path parameters.
        let name = match seg.iter().position(|&b| b == b';') {
            Some(j) => seg.get(..j).unwrap_or(seg),
            None => seg,
        };
        if name == b"." || name == b".." {
            return Err(BadPath::DotSegment);
        }
        if last {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(t: &str) -> Result<String, BadPath> {
        normalise_target(&Bytes::copy_from_slice(t.as_bytes()))
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn plain_paths_are_kept() {
        for t in [
            "/",
            "*",
            "/a",
            "/a/",
            "/a/b.c",
            "/files/private/x",
            "/a?q=1",
            "/a?x=/../..//%00%zz",
            "/db/a%2Fb",
            "/db/caf%C3%A9",
            "/a;b/c",
            "/...",
            "/.a/..b",
        ] {
            assert_eq!(n(t).as_deref(), Ok(t), "{t}");
        }
    }

    #[test]
    fn escapes_are_normalised() {
        assert_eq!(n("/files/%70rivate/x").unwrap(), "/files/private/x");
        assert_eq!(n("/%41%7a%30%2D%2e%5F%7E").unwrap(), "/Az0-._~");
        assert_eq!(n("/db/a%2fb%c3%a9").unwrap(), "/db/a%2Fb%C3%A9");
        assert_eq!(n("/a%2e%2e").unwrap(), "/a..");
        assert_eq!(n("/%25%32%65").unwrap(), "/%252e");
        assert_eq!(n("/%70?%70").unwrap(), "/p?%70");
        assert_eq!(n("/%20").unwrap(), "/%20");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        use BadPath::*;
        for (t, why) in [
            ("/files//private/x", EmptySegment),
            ("//", EmptySegment),
            ("/a//", EmptySegment),
            ("/x/../admin/u", DotSegment),
            ("/x/%2e%2e/admin/u", DotSegment),
            ("/x/%2E./admin", DotSegment),
            ("/x/.%2E", DotSegment),
            ("/api/../z", DotSegment),
            ("/./a", DotSegment),
            ("/a/.", DotSegment),
            ("/a/..", DotSegment),
            ("/x/..;/admin", DotSegment),
            ("/x/.;a/admin", DotSegment),
            ("/a%00b", Nul),
            ("/a%", BadEscape),
            ("/a%2", BadEscape),
            ("/a%zz", BadEscape),
            ("/a\\b", Backslash),
            ("/admin#x", Fragment),
            ("/a%23b/..", DotSegment),
            ("a", NotOriginForm),
            ("", NotOriginForm),
        ] {
            assert_eq!(n(t), Err(why), "{t}");
        }
        // An encoded backslash is kept (upper-cased): the destinations that
        // would decode it refuse it themselves.
        assert_eq!(n("/a%5c").as_deref(), Ok("/a%5C"));
    }

    /// Percent-decodes everything (for the properties).
    fn decode_all(p: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < p.len() {
            if p[i] == b'%' && i + 2 < p.len() {
                let v = hex(p[i + 1]).unwrap() << 4 | hex(p[i + 2]).unwrap();
                out.push(v);
                i += 3;
            } else {
                out.push(p[i]);
                i += 1;
            }
        }
        out
    }

    fn path_of(t: &[u8]) -> &[u8] {
        let i = t.iter().position(|&b| b == b'?').unwrap_or(t.len());
        &t[..i]
    }

    /// The segment rules as first written, with `split`: the oracle for
    /// the hand-walked [`check_dots`].
    fn check_dots_by_split(path: &[u8]) -> Result<(), BadPath> {
        let mut segs = path.split(|&b| b == b'/').skip(1).peekable();
        while let Some(seg) = segs.next() {
            let last = segs.peek().is_none();
            if seg.is_empty() && !last {
                return Err(BadPath::EmptySegment);
            }
            let name = seg.split(|&b| b == b';').next().unwrap_or(seg);
            if name == b"." || name == b".." {
                return Err(BadPath::DotSegment);
            }
        }
        Ok(())
    }

    proptest! {
        /// The hand-walked segment check agrees with the `split` one on
        /// any path of slashes, dots, semicolons and letters.
        #[test]
        fn check_dots_matches_split(path in "[/.;a]{0,12}") {
            prop_assert_eq!(check_dots(path.as_bytes()), check_dots_by_split(path.as_bytes()));
        }

        /// What passes is normalised: idempotent, same meaning, upper-case
        /// escapes of reserved bytes only, no dot or empty segments, and
        /// the query untouched.
        #[test]
        fn normalised_paths_are_canonical(
            segs in prop::collection::vec(
                prop::sample::select(vec![
                    "", ".", "..", "%2e", "%2E%2e", "a", "B", "%41", "%7e", "%7E", "%2f",
                    "%2F", "%5c", "%25", "%00", "%", "%g1", "\\", "#", ";", "..;x", "x;y",
                    "%c3%a9", "~", "-", "_", "%2d", "a%2e%2e", "%3F", "%3f",
                ]),
                0..6,
            ),
            query in prop::option::of("[ -~]{0,10}"),
        ) {
            let mut t = format!("/{}", segs.join("/"));
            if let Some(q) = &query {
                t.push('?');
                t.push_str(q);
            }
            let input = Bytes::from(t.clone());
            if let Ok(out) = normalise_target(&input) {
                prop_assert_eq!(normalise_target(&out), Ok(out.clone()));
                let (pi, po) = (path_of(&input), path_of(&out));
                prop_assert_eq!(decode_all(pi), decode_all(po));
                prop_assert_eq!(&input[pi.len()..], &out[po.len()..]);
                let mut i = 0;
                while i < po.len() {
                    if po[i] == b'%' {
                        let (h, l) = (po[i + 1], po[i + 2]);
                        prop_assert!(h.is_ascii_digit() || (b'A'..=b'F').contains(&h));
                        prop_assert!(l.is_ascii_digit() || (b'A'..=b'F').contains(&l));
                        prop_assert!(!unreserved(hex(h).unwrap() << 4 | hex(l).unwrap()));
                        i += 3;
                    } else {
                        prop_assert!(po[i] != b'\\' && po[i] != b'#');
                        i += 1;
                    }
                }
                let segs: Vec<&[u8]> = po.split(|&b| b == b'/').skip(1).collect();
                for (k, s) in segs.iter().enumerate() {
                    prop_assert!(!s.is_empty() || k + 1 == segs.len(), "{t:?}");
                    prop_assert!(*s != b"." && *s != b"..", "{t:?}");
                }
            }
        }

        /// Arbitrary bytes never panic it.
        #[test]
        fn no_panics(raw in prop::collection::vec(any::<u8>(), 0..48)) {
            let _ = normalise_target(&Bytes::from(raw));
        }
    }
}
