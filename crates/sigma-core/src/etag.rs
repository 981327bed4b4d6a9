//! Entity tags (RFC 9110 §8.8.3): parsing `If-Match` / `If-None-Match`
//! and comparing tags, for every destination that validates.
//!
//! ```text
//!  A ──Tagged{request}──▶ destination (&db, static, &web) ──▶ etag::parse(field)
//! ```
//!
//! One strict parser of the field (`*` or a comma-separated list of
//! quoted tags, each maybe `W/`), so that `&db`'s preconditions and the
//! static files' revalidation read the same bytes the same way. What a
//! tag's opaque part means (a version, a file's validator) is the
//! destination's business, not this module's.

/// One entity tag, as written in the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityTag<'a> {
    /// Written `W/"…"`: matches only in the weak comparison.
    pub weak: bool,
    /// Between the quotes.
    pub opaque: &'a [u8],
}

/// The values of an `If-Match` / `If-None-Match` field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagList<'a> {
    /// A `*` was present.
    pub star: bool,
    /// The tags, in order.
    pub tags: Vec<EntityTag<'a>>,
}

/// The field is not `*` or a list of entity tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedTags;

impl std::fmt::Display for MalformedTags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed entity-tag list")
    }
}

impl std::error::Error for MalformedTags {}

/// Parses the values of one field (one or more header lines): each a
/// comma-separated list of `*` and entity tags (empty elements are
/// skipped, RFC 9110 §5.6.1). Whether `*` may be mixed with tags, and
/// whether an empty field means anything, is the caller's rule.
pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Result<TagList<'a>, MalformedTags> {
    let mut out = TagList::default();
    for value in values {
        let mut rest = value;
        loop {
            rest = trim_start(rest, |b| b == b' ' || b == b'\t' || b == b',');
            if rest.is_empty() {
                break;
            }
            if let Some(after) = rest.strip_prefix(b"*") {
                out.star = true;
                rest = after;
            } else {
                let (weak, body) = match rest.strip_prefix(b"W/") {
                    Some(b) => (true, b),
                    None => (false, rest),
                };
                let body = body.strip_prefix(b"\"").ok_or(MalformedTags)?;
                let end = body.iter().position(|&b| b == b'"').ok_or(MalformedTags)?;
                let (opaque, after) = body.split_at(end);
                // etagc = %x21 / %x23-7E / obs-text
                if !opaque.iter().all(|&b| b == 0x21 || b >= 0x23) || opaque.contains(&0x7f) {
                    return Err(MalformedTags);
                }
                out.tags.push(EntityTag { weak, opaque });
                rest = after.get(1..).unwrap_or_default();
            }
            // A tag or `*` is followed by the end or a comma.
            let next = trim_start(rest, |b| b == b' ' || b == b'\t');
            if !next.is_empty() && !next.starts_with(b",") {
                return Err(MalformedTags);
            }
            rest = next;
        }
    }
    Ok(out)
}

impl TagList<'_> {
    /// True if `etag` (as sent in `ETag`: `"…"` or `W/"…"`) is in the list
    /// by the weak comparison (`W/` ignored on both sides), as
    /// `If-None-Match` asks.
    pub fn contains_weak(&self, etag: &str) -> bool {
        let want = etag.strip_prefix("W/").unwrap_or(etag);
        let want = want
            .strip_prefix('"')
            .and_then(|w| w.strip_suffix('"'))
            .unwrap_or(want);
        self.tags.iter().any(|t| t.opaque == want.as_bytes())
    }
}

fn trim_start(mut s: &[u8], skip: impl Fn(u8) -> bool) -> &[u8] {
    while let Some((&b, rest)) = s.split_first() {
        if !skip(b) {
            break;
        }
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(v: &str) -> Result<TagList<'_>, MalformedTags> {
        parse([v.as_bytes()])
    }

    #[test]
    fn lists_stars_and_weak_tags() {
        let l = tags(" \"a\", W/\"b\",,\"\" ").unwrap();
        assert!(!l.star);
        let got: Vec<_> = l.tags.iter().map(|t| (t.weak, t.opaque)).collect();
        assert_eq!(got, [(false, &b"a"[..]), (true, b"b"), (false, b"")]);
        assert!(tags("*").unwrap().star);
        // Mixing is the caller's rule, not a syntax error.
        let mixed = tags("*, \"a\"").unwrap();
        assert!(mixed.star && mixed.tags.len() == 1);
        // A comma inside a tag is part of it.
        assert_eq!(tags("\"a,b\"").unwrap().tags[0].opaque, b"a,b");
        assert_eq!(parse([&b"\"a\""[..], b"\"b\""]).unwrap().tags.len(), 2);
        assert_eq!(tags("").unwrap(), TagList::default());
    }

    #[test]
    fn malformed_fields() {
        for bad in [
            "v3",
            "\"v3",
            "\"v3\" \"v4\"",
            "W/v3",
            "\"a b\"",
            "**",
            "\"\x7f\"",
        ] {
            assert_eq!(tags(bad), Err(MalformedTags), "{bad:?}");
        }
    }

    #[test]
    fn weak_comparison() {
        let l = tags("\"x\", W/\"a\"").unwrap();
        assert!(l.contains_weak("\"a\""));
        assert!(l.contains_weak("W/\"a\""));
        assert!(l.contains_weak("\"x\""));
        assert!(!l.contains_weak("\"b\""));
    }
}
