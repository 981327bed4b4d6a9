//! Percent-decoding of a path segment, below every stage (T → H → A →
//! router → destination): the router normalises targets with it, and the
//! destinations that map a path to a name (`&db` keys, static files)
//! decode with it.

/// Decodes every `%XX` escape once (`+` stays `+`: this is a path, not a
/// form). `None` when a `%` is not followed by two hex digits. Used where a
/// destination maps a path to a name (`&db` keys, static files).
pub fn percent_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut it = raw.iter();
    while let Some(&b) = it.next() {
        if b == b'%' {
            let hi = hex(*it.next()?)?;
            let lo = hex(*it.next()?)?;
            out.push(hi << 4 | lo);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
