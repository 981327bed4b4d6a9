//! Byte classes of the HTTP grammar (RFC 9110), shared by the head
//! parser, the response encoder and the WebSocket handshake.

/// RFC 9110 §5.6.2 `tchar`.
pub fn is_tchar(b: u8) -> bool {
    in_class(&TCHAR, b)
}

/// `b` is in `class` (a `u8` always indexes a 256-entry table; the
/// compiler drops the bound check).
pub(crate) fn in_class(class: &[bool; 256], b: u8) -> bool {
    class.get(usize::from(b)).copied().unwrap_or(false)
}

/// A 256-entry membership table: ASCII letters and digits plus `extra`.
/// A table lookup per byte, where `<[u8]>::contains` called `memchr` for
/// every punctuation byte of every head (it showed in the per-request
/// profile). Evaluated at compile time: an index out of range would stop
/// the build, never the server.
#[allow(clippy::indexing_slicing)]
const fn byte_class(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

static TCHAR: [bool; 256] = byte_class(b"!#$%&'*+-.^_`|~");
/// The characters of a `Host` value (an authority without userinfo).
pub(crate) static HOST_CHAR: [bool; 256] = byte_class(b"-._~!$&'()*+,;=:[]%");

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte, against the grammar written out as RFC 9110 and
    /// RFC 3986 give it.
    #[test]
    fn tables_match_the_grammar() {
        for b in 0..=255u8 {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_tchar(b), tchar, "tchar {b:#04x}");
            let host = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b);
            assert_eq!(in_class(&HOST_CHAR, b), host, "host {b:#04x}");
        }
        assert!(!is_tchar(b' ') && !is_tchar(b':') && !is_tchar(0x80));
        assert!(!in_class(&HOST_CHAR, b'@') && !in_class(&HOST_CHAR, b'/'));
    }
}
