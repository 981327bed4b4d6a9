//! Entity tags (RFC 9110 §8.8.3, §13.1.1–2): the one parser of the
//! `If-Match` / `If-None-Match` lists, a header helper of `H` for the
//! destinations behind the router (`&db`, `&static`, the bundled page).
//!
//! `H` itself never evaluates preconditions; it only gives every
//! destination the same reading of the field, so that a tag list is not
//! parsed two ways in one server.

/// One entity tag: `"opaque"` or `W/"opaque"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityTag<'a> {
    /// `W/` was given.
    pub weak: bool,
    /// The characters between the quotes.
    pub opaque: &'a [u8],
}

impl<'a> EntityTag<'a> {
    /// One entity tag alone (such as a destination's own `ETag` value);
    /// `None` unless `value` is exactly one tag.
    pub fn parse(value: &'a [u8]) -> Option<Self> {
        match parse_list([value]) {
            Ok(TagList::Tags(tags)) => match tags.as_slice() {
                [one] => Some(*one),
                _ => None,
            },
            _ => None,
        }
    }

    /// The weak comparison (`If-None-Match`): `W/` is ignored.
    pub fn weak_eq(&self, other: &EntityTag<'_>) -> bool {
        self.opaque == other.opaque
    }

    /// The strong comparison (`If-Match`): both strong and the same.
    pub fn strong_eq(&self, other: &EntityTag<'_>) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }
}

/// A parsed `If-Match` / `If-None-Match` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagList<'a> {
    /// `*`: any current representation.
    Any,
    /// One or more entity tags, in order.
    Tags(Vec<EntityTag<'a>>),
}

/// The field is not `*` or a comma-separated list of entity tags (empty,
/// an unquoted tag, a bad character, `*` mixed with tags, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedTags;

/// Parses the values of one `If-Match` / `If-None-Match` field (one or
/// more header lines, joined as one list): `*` or a comma-separated list
/// of entity tags; empty list elements and optional white space are
/// allowed around the commas.
pub fn parse_list<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<TagList<'a>, MalformedTags> {
    let mut star = false;
    let mut tags = Vec::new();
    for value in values {
        let mut rest = value;
        loop {
            rest = trim_start(rest, |b| b == b' ' || b == b'\t' || b == b',');
            if rest.is_empty() {
                break;
            }
            if let Some(after) = rest.strip_prefix(b"*") {
                star = true;
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
                tags.push(EntityTag { weak, opaque });
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
    match (star, tags.is_empty()) {
        (true, true) => Ok(TagList::Any),
        (false, false) => Ok(TagList::Tags(tags)),
        // Empty, or `*` mixed with tags.
        _ => Err(MalformedTags),
    }
}

/// True when an `If-None-Match` field (`values`) matches the current
/// representation's tag `current` by the weak comparison (`*` matches
/// anything). A malformed field matches nothing: the full answer is sent.
pub fn none_match<'a>(values: impl IntoIterator<Item = &'a [u8]>, current: &[u8]) -> bool {
    let Some(current) = EntityTag::parse(current) else {
        return false;
    };
    match parse_list(values) {
        Ok(TagList::Any) => true,
        Ok(TagList::Tags(tags)) => tags.iter().any(|t| t.weak_eq(&current)),
        Err(MalformedTags) => false,
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

    fn tag(weak: bool, opaque: &str) -> EntityTag<'_> {
        EntityTag {
            weak,
            opaque: opaque.as_bytes(),
        }
    }

    fn list(v: &[&'static str]) -> Result<TagList<'static>, MalformedTags> {
        parse_list(v.iter().map(|s| s.as_bytes()))
    }

    #[test]
    fn lists() {
        assert_eq!(list(&["*"]), Ok(TagList::Any));
        assert_eq!(list(&[" * "]), Ok(TagList::Any));
        assert_eq!(list(&[", *,"]), Ok(TagList::Any));
        assert_eq!(
            list(&["\"a\", W/\"b\",\"\"", "\"a,b\""]),
            Ok(TagList::Tags(vec![
                tag(false, "a"),
                tag(true, "b"),
                tag(false, ""),
                tag(false, "a,b"),
            ]))
        );
        for bad in [
            "",
            " , ",
            "v3",
            "\"v3",
            "\"v3\" \"v4\"",
            "*, \"v3\"",
            "W/v3",
            "w/\"v3\"",
            "\"a b\"",
            "\"a\x7f\"",
            "**",
        ] {
            assert_eq!(list(&[bad]), Err(MalformedTags), "{bad:?}");
        }
        assert_eq!(list(&[]), Err(MalformedTags));
        assert_eq!(list(&["*", "\"a\""]), Err(MalformedTags));
    }

    #[test]
    fn comparisons() {
        assert!(tag(true, "a").weak_eq(&tag(false, "a")));
        assert!(!tag(true, "a").strong_eq(&tag(false, "a")));
        assert!(tag(false, "a").strong_eq(&tag(false, "a")));
        assert!(!tag(false, "a").weak_eq(&tag(false, "b")));
        assert_eq!(EntityTag::parse(b"W/\"x\""), Some(tag(true, "x")));
        assert_eq!(EntityTag::parse(b"\"x\", \"y\""), None);
        assert_eq!(EntityTag::parse(b"*"), None);
    }

    #[test]
    fn if_none_match() {
        let m = |v: &'static str, cur: &str| none_match([v.as_bytes()], cur.as_bytes());
        assert!(m("\"a\"", "\"a\""));
        assert!(m("W/\"a\"", "\"a\""));
        assert!(m("\"x\", \"a\"", "\"a\""));
        assert!(m("*", "\"a\""));
        assert!(!m("\"b\"", "\"a\""));
        assert!(!m("\"a", "\"a\""));
        assert!(!m("\"a\"", "a"));
    }
}
