//! Keys, prefixes, content types and entity tags of `&db`: parsing and
//! validation of client input, nothing else.

use sigma_store::{KvTags, MAX_KV_CONTENT_TYPE};

use super::Fail;

/// The `ETag` of `version`: `"v<version>"` (strong).
pub fn etag(version: u64) -> String {
    format!("\"v{version}\"")
}

/// Percent-decodes a key from a request path (`+` is itself). `None` for a
/// malformed escape or a result that is not UTF-8.
pub(super) fn decode_path(raw: &[u8]) -> Option<String> {
    String::from_utf8(sigma_core::percent::percent_decode(raw)?).ok()
}

/// A key: 1 to `max_key` bytes, no control characters, no `.` or `..`
/// segment.
pub(super) fn check_key(key: &str, max_key: usize) -> Result<(), Fail> {
    if key.is_empty()
        || key.len() > max_key
        || key.chars().any(char::is_control)
        || key.split('/').any(|seg| seg == "." || seg == "..")
    {
        return Err(Fail::InvalidKey);
    }
    Ok(())
}

/// A prefix (of a listing or a watch): at most `max_key` bytes, no control
/// characters; empty means everything.
pub(super) fn check_prefix(prefix: &str, max_key: usize) -> Result<(), Fail> {
    if prefix.len() > max_key || prefix.chars().any(char::is_control) {
        return Err(Fail::InvalidKey);
    }
    Ok(())
}

/// A content type to store: printable ASCII (and tab), at most
/// [`MAX_KV_CONTENT_TYPE`] bytes; empty means the default.
pub(super) fn check_content_type(ct: &[u8]) -> Result<(), Fail> {
    if ct.len() > MAX_KV_CONTENT_TYPE
        || !ct.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return Err(Fail::InvalidContentType);
    }
    Ok(())
}

/// How entity tags are compared (RFC 9110 §8.8.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compare {
    /// `If-Match`: a weak tag never matches.
    Strong,
    /// `If-None-Match`: `W/"v3"` matches version 3.
    Weak,
}

/// Parses the values of an `If-Match` / `If-None-Match` field (one or more
/// header lines): `*` or a comma-separated list of entity tags
/// ([`sigma_core::etag::parse`]). Tags that are not ours (`"v<version>"`)
/// are kept as never matching. `Err` for a malformed field, an empty one,
/// or `*` mixed with tags.
pub(super) fn parse_tags<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
    compare: Compare,
) -> Result<KvTags, Fail> {
    let list = sigma_core::etag::parse(values).map_err(|_| Fail::BadRequest)?;
    match (list.star, list.tags.is_empty()) {
        (true, true) => Ok(KvTags::Any),
        (false, false) => Ok(KvTags::Versions(
            list.tags
                .iter()
                .filter(|t| !t.weak || compare == Compare::Weak)
                .filter_map(|t| our_version(t.opaque))
                .collect(),
        )),
        // Empty, or `*` mixed with tags.
        _ => Err(Fail::BadRequest),
    }
}

/// The version in one of our opaque tags, `v<decimal>` in canonical form.
fn our_version(tag: &[u8]) -> Option<u64> {
    let digits = tag.strip_prefix(b"v")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits.len() > 1 && digits.starts_with(b"0") {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A tag given over WebSocket: as in a header (`"\"v3\""`, `*`, a list),
/// or a bare `v3`.
pub(super) fn parse_ws_tags(s: &str, compare: Compare) -> Result<KvTags, Fail> {
    if let Some(v) = our_version(s.as_bytes()) {
        return Ok(KvTags::Versions(vec![v]));
    }
    parse_tags([s.as_bytes()], compare)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_decoding() {
        assert_eq!(decode_path(b"a/b%20c+d").as_deref(), Some("a/b c+d"));
        assert_eq!(decode_path(b"%C3%A9%2f").as_deref(), Some("é/"));
        assert_eq!(decode_path(b"%c3%a9").as_deref(), Some("é"));
        for bad in [&b"%"[..], b"%4", b"%zz", b"%ff", b"a%G0"] {
            assert_eq!(decode_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn keys() {
        for ok in ["a", "a/b", "a//b", "/x", ".a", "a/..b", "a b", "é", "x/"] {
            assert_eq!(check_key(ok, 16), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/..",
            "../a",
            "a/./b",
            "a\0b",
            "a\nb",
            "\u{7f}",
            "x".repeat(17).as_str(),
        ] {
            assert_eq!(check_key(bad, 16), Err(Fail::InvalidKey), "{bad:?}");
        }
        assert_eq!(check_key(&"x".repeat(16), 16), Ok(()));
        assert_eq!(check_prefix("", 4), Ok(()));
        assert_eq!(check_prefix("a/..", 4), Ok(()));
        assert_eq!(check_prefix("abcde", 4), Err(Fail::InvalidKey));
        assert_eq!(check_prefix("a\0", 4), Err(Fail::InvalidKey));
    }

    #[test]
    fn content_types() {
        assert_eq!(check_content_type(b"text/plain; charset=utf-8"), Ok(()));
        assert_eq!(check_content_type(b""), Ok(()));
        assert!(check_content_type(b"a\x01").is_err());
        assert!(check_content_type(b"\xc3\xa9").is_err());
        assert!(check_content_type(&[b'a'; 256]).is_err());
    }

    fn tags(v: &[&str], c: Compare) -> Result<KvTags, Fail> {
        parse_tags(v.iter().map(|s| s.as_bytes()), c)
    }

    #[test]
    fn entity_tags() {
        use Compare::{Strong, Weak};
        assert_eq!(etag(7), "\"v7\"");
        assert_eq!(tags(&["*"], Strong), Ok(KvTags::Any));
        assert_eq!(tags(&[" * "], Weak), Ok(KvTags::Any));
        assert_eq!(tags(&["\"v3\""], Strong), Ok(KvTags::Versions(vec![3])));
        assert_eq!(
            tags(&["\"v3\", \"v5\",\"x\"", "\"v9\""], Strong),
            Ok(KvTags::Versions(vec![3, 5, 9]))
        );
        // Weak tags match only in the weak comparison.
        assert_eq!(tags(&["W/\"v3\""], Strong), Ok(KvTags::Versions(vec![])));
        assert_eq!(tags(&["W/\"v3\""], Weak), Ok(KvTags::Versions(vec![3])));
        // Tags that are not ours, or not canonical, match nothing.
        for other in [
            "\"3\"",
            "\"v03\"",
            "\"v\"",
            "\"v-1\"",
            "\"v+1\"",
            "\"\"",
            "\"v99999999999999999999\"",
        ] {
            assert_eq!(
                tags(&[other], Strong),
                Ok(KvTags::Versions(vec![])),
                "{other}"
            );
        }
        for bad in [
            "",
            " , ",
            "v3",
            "\"v3",
            "\"v3\" \"v4\"",
            "*, \"v3\"",
            "W/v3",
            "\"a b\"",
            "**",
        ] {
            assert_eq!(tags(&[bad], Strong), Err(Fail::BadRequest), "{bad:?}");
        }
        assert_eq!(parse_ws_tags("v4", Strong), Ok(KvTags::Versions(vec![4])));
        assert_eq!(
            parse_ws_tags("\"v4\"", Strong),
            Ok(KvTags::Versions(vec![4]))
        );
        assert_eq!(parse_ws_tags("*", Strong), Ok(KvTags::Any));
        assert_eq!(parse_ws_tags("nope", Strong), Err(Fail::BadRequest));
    }
}
