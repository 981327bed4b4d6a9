//! Incremental UTF-8 validation of text messages (RFC 6455 §8.1).
//!
//! Place in `T → H → A`: inside `H`, on the client-facing side. A text
//! message reaches [`super::conn::WsConn`] in arbitrary pieces: several
//! fragments, each split across reads. [`Utf8Validator::push`] validates each
//! piece as it arrives and appends it to the message `String`, carrying at
//! most three bytes of an unfinished character to the next piece. It fails
//! on the first byte that no valid continuation could follow (fail fast,
//! Autobahn 6.4.x), so an invalid message is rejected before it is complete.
//! Every byte is validated once; nothing already scanned is scanned again.
//! The checks themselves are `std::str::from_utf8`; this file adds only the
//! bookkeeping across pieces. It does not know about frames or limits.

use std::str;

/// The text so far is not, and cannot become, valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// The state of one text message being validated piece by piece.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// The start of a character whose remaining bytes have not arrived.
    carry: [u8; 4],
    /// Bytes used in `carry` (0–3).
    carry_len: usize,
}

/// The encoded length announced by a leading byte; 0 for a byte that
/// cannot start a character.
fn char_width(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 0,
    }
}

/// True when `bytes` is the start of some valid character but not a whole one.
fn is_valid_prefix(bytes: &[u8]) -> bool {
    match str::from_utf8(bytes) {
        Ok(_) => false,
        Err(e) => e.valid_up_to() == 0 && e.error_len().is_none(),
    }
}

/// Where the unfinished character at the end of `bytes` starts, or
/// `bytes.len()` when `bytes` ends on a character boundary (or is invalid
/// in a way the full check will report).
fn unfinished_tail_start(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(3) {
        let at = len - back;
        match bytes.get(at) {
            Some(&b) if b & 0xc0 == 0x80 => continue,
            Some(&b) => return if char_width(b) > back { at } else { len },
            None => break,
        }
    }
    len
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when the text so far ends on a character boundary.
    pub fn is_complete(&self) -> bool {
        self.carry_len == 0
    }

    /// Bytes of an unfinished character carried to the next piece (0–3).
    pub fn pending(&self) -> usize {
        self.carry_len
    }

    /// Validates `input` as the next piece of the message and appends the
    /// complete characters to `text`. On error `text` may hold a prefix of
    /// the piece; the message is to be discarded.
    pub fn push(&mut self, mut input: &[u8], text: &mut String) -> Result<(), InvalidUtf8> {
        if self.carry_len > 0 {
            input = self.finish_carried(input, text)?;
            if self.carry_len > 0 {
                return Ok(());
            }
        }
        let (body, tail) = input.split_at(unfinished_tail_start(input));
        let body = str::from_utf8(body).map_err(|_| InvalidUtf8)?;
        if !tail.is_empty() && !is_valid_prefix(tail) {
            return Err(InvalidUtf8);
        }
        text.push_str(body);
        self.carry_len = 0;
        for (slot, b) in self.carry.iter_mut().zip(tail) {
            *slot = *b;
            self.carry_len += 1;
        }
        Ok(())
    }

    /// Completes the carried character from the front of `input`; returns
    /// the rest of `input`. Leaves a (longer) carry if `input` runs out.
    fn finish_carried<'a>(
        &mut self,
        input: &'a [u8],
        text: &mut String,
    ) -> Result<&'a [u8], InvalidUtf8> {
        let lead = self.carry.first().copied().unwrap_or(0);
        let width = char_width(lead).min(self.carry.len());
        let take = width.saturating_sub(self.carry_len).min(input.len());
        let (head, rest) = input.split_at(take);
        for (slot, b) in self.carry.iter_mut().skip(self.carry_len).zip(head) {
            *slot = *b;
        }
        self.carry_len += take;
        let seq = self.carry.get(..self.carry_len).ok_or(InvalidUtf8)?;
        if self.carry_len < width {
            return if is_valid_prefix(seq) {
                Ok(rest)
            } else {
                Err(InvalidUtf8)
            };
        }
        let ch = str::from_utf8(seq).map_err(|_| InvalidUtf8)?;
        text.push_str(ch);
        self.carry_len = 0;
        Ok(rest)
    }

    /// Ends the message: an unfinished character is an error.
    pub fn finish(&self) -> Result<(), InvalidUtf8> {
        if self.is_complete() {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `pieces`; returns the text or the index of the failing piece.
    fn run(pieces: &[&[u8]]) -> Result<String, usize> {
        let mut v = Utf8Validator::new();
        let mut s = String::new();
        for (i, p) in pieces.iter().enumerate() {
            v.push(p, &mut s).map_err(|_| i)?;
        }
        v.finish().map_err(|_| pieces.len())?;
        Ok(s)
    }

    fn bytewise(bytes: &[u8]) -> Result<String, usize> {
        let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
        run(&pieces)
    }

    #[test]
    fn valid_text_any_split() {
        let text = "Hello-µ@ßöäüàá-UTF-8!! κόσμε \u{10FFFF} 𝄞 \u{7f}\u{80}\u{7ff}\u{800}\u{ffff}";
        let b = text.as_bytes();
        assert_eq!(run(&[b]).as_deref(), Ok(text));
        assert_eq!(bytewise(b).as_deref(), Ok(text));
        for i in 0..=b.len() {
            for j in i..=b.len() {
                assert_eq!(run(&[&b[..i], &b[i..j], &b[j..]]).as_deref(), Ok(text));
            }
        }
    }

    #[test]
    fn fails_fast_on_the_first_impossible_byte() {
        // Autobahn 6.4.2: "κόσμε" then F4, then 90 (> U+10FFFF) must fail at 90.
        let p1 = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4";
        assert_eq!(run(&[p1, b"\x90", b"\x80\x80edited"]), Err(1));
        // Autobahn 6.4.1: the invalid 4-byte sequence as one piece.
        assert_eq!(
            run(&[
                b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5",
                b"\xf4\x90\x80\x80",
                b"edited"
            ]),
            Err(1)
        );
        // Surrogate: ED A0 fails at A0.
        assert_eq!(bytewise(b"ab\xed\xa0\x80"), Err(3));
        // Overlong: E0 80 fails at 80; C0 fails at once.
        assert_eq!(bytewise(b"\xe0\x80\x80"), Err(1));
        assert_eq!(bytewise(b"\xc0\xaf"), Err(0));
        assert_eq!(bytewise(b"\xf5"), Err(0));
        assert_eq!(bytewise(b"\xff"), Err(0));
        assert_eq!(bytewise(b"\x80"), Err(0));
        // A valid prefix is not an error until the message ends.
        assert_eq!(bytewise(b"\xf0\x9f\x98"), Err(3));
        assert_eq!(run(&[b"a\xf0\x9f"]), Err(1));
        // Lead byte followed by ASCII.
        assert_eq!(bytewise(b"\xe2\x82a"), Err(2));
        assert_eq!(run(&[b"\xe2", b"\x82a"]), Err(1));
    }

    #[test]
    fn empty_pieces_are_harmless() {
        assert_eq!(
            run(&[b"", b"\xe2", b"", b"\x82", b"", b"\xac", b""]).as_deref(),
            Ok("€")
        );
    }

    #[test]
    fn tail_detection() {
        assert_eq!(unfinished_tail_start(b""), 0);
        assert_eq!(unfinished_tail_start(b"abc"), 3);
        assert_eq!(unfinished_tail_start(b"a\xe2\x82"), 1);
        assert_eq!(unfinished_tail_start(b"a\xe2\x82\xac"), 4);
        assert_eq!(unfinished_tail_start(b"\xf0\x9f\x98"), 0);
        assert_eq!(unfinished_tail_start(b"\x80\x80\x80"), 3);
    }

    proptest! {
        #[test]
        fn agrees_with_std(bytes in proptest::collection::vec(any::<u8>(), 0..40),
                           cuts in proptest::collection::vec(0usize..40, 0..6)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut last = 0;
            for c in cuts {
                pieces.push(&bytes[last..c]);
                last = c;
            }
            pieces.push(&bytes[last..]);
            let got = run(&pieces);
            match std::str::from_utf8(&bytes) {
                Ok(s) => prop_assert_eq!(got.as_deref(), Ok(s)),
                Err(e) => match e.error_len() {
                    // Only unfinished at the end: fails at finish.
                    None => prop_assert_eq!(got, Err(pieces.len())),
                    // Fails no later than the piece holding the byte that
                    // makes the sequence impossible.
                    Some(n) => {
                        let Err(piece) = got else { panic!("accepted invalid input") };
                        prop_assert!(piece < pieces.len(), "failed only at finish");
                        let start: usize = pieces[..piece].iter().map(|p| p.len()).sum();
                        prop_assert!(start <= e.valid_up_to() + n, "failed late");
                    }
                },
            }
        }

        #[test]
        fn valid_strings_split_anywhere(s in "\\PC{0,20}", cut in 0usize..80) {
            let b = s.as_bytes();
            let cut = cut.min(b.len());
            prop_assert_eq!(run(&[&b[..cut], &b[cut..]]), Ok(s.clone()));
            prop_assert_eq!(bytewise(b), Ok(s.clone()));
        }
    }
}
