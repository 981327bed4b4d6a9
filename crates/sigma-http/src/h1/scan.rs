//! Incremental scanner for a request head or a trailer section.
//!
//! It finds the blank line that ends a head while the bytes arrive, and
//! enforces on the way what must be refused before the head is complete:
//! the request-line length (414), the header-block size and count (431),
//! bare CR or LF, NUL and obs-fold (400). It remembers how far it has
//! scanned, so a head fed one byte at a time costs O(n), never O(n²)
//! (hyper's `is_complete_fast`, h11's receive buffer). It does not parse
//! fields: once the end is found, [`super::request`] parses the head once.

use crate::error::ParseError;

/// What the scanner bounds.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    /// Longest request line (without CRLF); `None` for a trailer section.
    pub max_request_line: Option<usize>,
    /// Most bytes after the request line (trailer: the whole section).
    pub max_field_bytes: usize,
    /// Most field lines.
    pub max_fields: usize,
    /// Error for exceeding `max_field_bytes`.
    pub too_large: ParseError,
}

/// Scan progress over a buffer that only grows at the end.
#[derive(Debug, Clone, Default)]
pub struct Scanner {
    /// Bytes already examined.
    scanned: usize,
    /// Start of the current line.
    line_start: usize,
    /// End of the request line (index of its CR), once seen.
    request_line_end: Option<usize>,
    /// Leading empty lines skipped before the request line.
    leading: usize,
    /// Field lines seen.
    fields: usize,
}

/// Where a complete head lies in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadSpan {
    /// Bytes to skip first (empty lines before the request line).
    pub skip: usize,
    /// End of the request line (exclusive, before CRLF), relative to the buffer start.
    pub request_line_end: usize,
    /// Total head length including the final CRLF CRLF.
    pub len: usize,
    /// Number of field lines.
    pub fields: usize,
}

/// Empty lines tolerated before a request line (RFC 9112 §2.2).
const MAX_LEADING_EMPTY_LINES: usize = 4;

impl Scanner {
    /// A fresh scanner.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no byte has been scanned yet.
    pub fn is_fresh(&self) -> bool {
        self.scanned == 0
    }

    /// Scans `buf` (which starts where the head starts and may have grown
    /// since the last call). Returns the span once the head is complete.
    pub fn scan(
        &mut self,
        buf: &[u8],
        limits: &ScanLimits,
    ) -> Result<Option<HeadSpan>, ParseError> {
        self.scan_with::<true>(buf, limits)
    }

    /// [`Scanner::scan`]; with `RUNS` false every byte takes the bytewise
    /// path (the tests' oracle for the `memchr` runs).
    fn scan_with<const RUNS: bool>(
        &mut self,
        buf: &[u8],
        limits: &ScanLimits,
    ) -> Result<Option<HeadSpan>, ParseError> {
        let is_request = limits.max_request_line.is_some();
        while let Some(&b) = buf.get(self.scanned) {
            let i = self.scanned;
            // A run of ordinary bytes (no CR, LF or NUL) is passed in one
            // step (`memchr`, as httparse and hyper do): the length limits
            // only grow with the position, so checking the run's last byte
            // checks every byte of it. SP or HTAB as a line's first byte
            // (obs-fold there) takes the bytewise path below.
            if RUNS
                && !matches!(b, b'\n' | b'\r' | 0)
                && (i != self.line_start || !matches!(b, b' ' | b'\t'))
            {
                let rest = buf.get(i..).unwrap_or_default();
                let run = memchr::memchr3(b'\n', b'\r', 0, rest).unwrap_or(rest.len());
                self.check_length(i + run.saturating_sub(1), false, limits)?;
                self.scanned = i + run.max(1);
                continue;
            }
            // Length limits first, so that no byte (not even the LF that
            // ends the head) escapes them.
            self.check_length(i, b == b'\r' || b == b'\n', limits)?;
            match b {
                b'\n' => {
                    // A LF must follow a CR.
                    if i == 0 || buf.get(i - 1) != Some(&b'\r') {
                        return Err(ParseError::BareCrOrLf);
                    }
                    if let Some(span) = self.end_line(i, is_request, limits)? {
                        return Ok(Some(span));
                    }
                }
                b'\r' => {
                    // A CR must be followed by LF; decide once the next byte
                    // is here (the CR is examined again on the next call).
                    match buf.get(i + 1) {
                        Some(b'\n') if RUNS => {
                            // The LF in the same step, with its own check.
                            self.check_length(i + 1, true, limits)?;
                            if let Some(span) = self.end_line(i + 1, is_request, limits)? {
                                return Ok(Some(span));
                            }
                            self.scanned = i + 2;
                            continue;
                        }
                        Some(b'\n') => {}
                        Some(_) => return Err(ParseError::BareCrOrLf),
                        None => return Ok(None),
                    }
                }
                0 => return Err(ParseError::Nul),
                b' ' | b'\t' if i == self.line_start => {
                    let in_fields = !is_request || self.request_line_end.is_some();
                    if in_fields {
                        return Err(ParseError::ObsFold);
                    }
                    return Err(ParseError::BadRequestLine);
                }
                _ => {}
            }
            self.scanned = i + 1;
        }
        Ok(None)
    }

    /// The line ending in the CRLF whose LF is at `lf`: the request line,
    /// an empty line before it, a field line, or the empty line that ends
    /// the head (the span, returned).
    fn end_line(
        &mut self,
        lf: usize,
        is_request: bool,
        limits: &ScanLimits,
    ) -> Result<Option<HeadSpan>, ParseError> {
        let line_len = lf.saturating_sub(1).saturating_sub(self.line_start);
        if is_request && self.request_line_end.is_none() {
            if line_len == 0 {
                // Empty line before the request line.
                self.leading += 1;
                if self.leading > MAX_LEADING_EMPTY_LINES {
                    return Err(ParseError::BadRequestLine);
                }
            } else {
                self.request_line_end = Some(lf.saturating_sub(1));
            }
        } else if line_len == 0 {
            self.scanned = lf + 1;
            return Ok(Some(HeadSpan {
                skip: self.leading * 2,
                request_line_end: self.request_line_end.unwrap_or(0),
                len: lf + 1,
                fields: self.fields,
            }));
        } else {
            self.fields += 1;
            if self.fields > limits.max_fields {
                return Err(ParseError::TooManyHeaders);
            }
        }
        self.line_start = lf + 1;
        Ok(None)
    }

    /// The length limits at byte `i` of the head (`eol`: it is a CR or LF).
    fn check_length(&self, i: usize, eol: bool, limits: &ScanLimits) -> Result<(), ParseError> {
        match (limits.max_request_line, self.request_line_end) {
            (Some(max), None) => {
                if !eol && i - self.line_start >= max {
                    return Err(ParseError::RequestLineTooLong);
                }
            }
            (_, end) => {
                // Field lines with their CRLFs, plus the final CRLF.
                let start = end.map_or(0, |e| e + 2);
                if (i + 1).saturating_sub(start) > limits.max_field_bytes.saturating_add(2) {
                    return Err(limits.too_large);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req_limits() -> ScanLimits {
        ScanLimits {
            max_request_line: Some(20),
            max_field_bytes: 40,
            max_fields: 3,
            too_large: ParseError::HeadersTooLarge,
        }
    }

    fn scan_all(input: &[u8]) -> Result<Option<HeadSpan>, ParseError> {
        Scanner::new().scan(input, &req_limits())
    }

    fn scan_bytewise(input: &[u8]) -> Result<Option<HeadSpan>, ParseError> {
        let mut s = Scanner::new();
        for n in 1..=input.len() {
            if let Some(span) = s.scan(&input[..n], &req_limits())? {
                return Ok(Some(span));
            }
        }
        Ok(None)
    }

    #[test]
    fn finds_end_whole_and_bytewise() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
        for r in [scan_all(input), scan_bytewise(input)] {
            let span = r.unwrap().unwrap();
            assert_eq!(span.len, 27);
            assert_eq!(span.request_line_end, 14);
            assert_eq!(span.fields, 1);
        }
    }

    #[test]
    fn rejects() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", ParseError::BareCrOrLf),
            (
                b"GET / HTTP/1.1\r\nHost: a\rX\r\n\r\n",
                ParseError::BareCrOrLf,
            ),
            (b"GET / HTTP/1.1\r\nHost: a\0\r\n\r\n", ParseError::Nul),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
                ParseError::ObsFold,
            ),
            (
                b"GET /aaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n",
                ParseError::RequestLineTooLong,
            ),
            (
                b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n",
                ParseError::TooManyHeaders,
            ),
            (
                b"GET / HTTP/1.1\r\nA: 0123456789012345678901234567890123456789\r\n\r\n",
                ParseError::HeadersTooLarge,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                scan_all(input),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(
                scan_bytewise(input),
                Err(*want),
                "bytewise {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn request_line_exactly_at_limit_is_accepted() {
        // 20 bytes of request line.
        let input = b"GET /aaaaaa HTTP/1.1\r\n\r\n";
        assert_eq!(scan_all(input).unwrap().unwrap().request_line_end, 20);
        let over = b"GET /aaaaaaa HTTP/1.1\r\n\r\n";
        assert_eq!(scan_all(over), Err(ParseError::RequestLineTooLong));
    }

    #[test]
    fn header_block_exactly_at_limit_is_accepted() {
        // 40 bytes of field lines (with CRLFs), then the final CRLF.
        let at = b"GET / HTTP/1.1\r\nA: 01234567890123456789012345678901234\r\n\r\n";
        assert!(scan_all(at).unwrap().is_some());
        let over = b"GET / HTTP/1.1\r\nA: 012345678901234567890123456789012345\r\n\r\n";
        assert_eq!(scan_all(over), Err(ParseError::HeadersTooLarge));
        assert_eq!(scan_bytewise(over), Err(ParseError::HeadersTooLarge));
    }

    #[test]
    fn leading_empty_lines_are_skipped_but_bounded() {
        let span = scan_all(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(span.skip, 4);
        assert!(scan_all(b"\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n").is_err());
    }

    use proptest::prelude::*;

    /// Pieces where the scanner decides something: CR, LF, NUL, SP, HTAB,
    /// ordinary bytes of header lines, and whole CRLFs (so that valid
    /// lines, and heads ending exactly at a limit, come up often).
    fn head_piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => Just(b"a".to_vec()),
            1 => Just(b":".to_vec()),
            2 => Just(b"\r".to_vec()),
            2 => Just(b"\n".to_vec()),
            3 => Just(b"\r\n".to_vec()),
            1 => Just(b" ".to_vec()),
            1 => Just(b"\t".to_vec()),
            1 => Just(vec![0u8]),
            1 => any::<u8>().prop_map(|b| vec![b]),
        ]
    }

    /// Feeds `input` in the chunks `cuts` gives, as the connection does.
    fn feed(
        input: &[u8],
        cuts: &[usize],
        limits: &ScanLimits,
        reference: bool,
    ) -> Result<Option<HeadSpan>, ParseError> {
        let mut s = Scanner::new();
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        ends.push(input.len());
        ends.sort_unstable();
        for end in ends {
            let buf = &input[..end];
            let r = if reference {
                s.scan_with::<false>(buf, limits)
            } else {
                s.scan(buf, limits)
            };
            match r {
                Ok(None) => {}
                done => return done,
            }
        }
        Ok(None)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        /// The `memchr` fast path decides exactly what the bytewise scan
        /// (the scanner without it) decides: the same span, the same
        /// error, whatever the limits and however the bytes arrive.
        #[test]
        fn runs_decide_as_the_bytewise_scan(
            pieces in proptest::collection::vec(head_piece(), 0..120),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
            request in any::<bool>(),
            max_line in 1usize..40,
            max_field_bytes in 0usize..80,
            max_fields in 0usize..8,
            valid_prefix in any::<bool>(),
        ) {
            let mut input = pieces.concat();
            if valid_prefix {
                let mut head = b"GET /path HTTP/1.1\r\nHost: a\r\n".to_vec();
                head.append(&mut input);
                input = head;
            }
            let limits = ScanLimits {
                max_request_line: request.then_some(max_line),
                max_field_bytes,
                max_fields,
                too_large: ParseError::HeadersTooLarge,
            };
            let want = feed(&input, &[], &limits, true);
            prop_assert_eq!(feed(&input, &[], &limits, false), want);
            prop_assert_eq!(feed(&input, &cuts, &limits, false), want);
            prop_assert_eq!(feed(&input, &cuts, &limits, true), want);
        }
    }
}
