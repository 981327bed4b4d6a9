//! `static:DIR`: files under a directory, read-only (DESIGN §6; issue #6).
//!
//! ```text
//!  A ──Tagged{identity, GET /prefix/a/b.css}──▶ [ route ] ──▶ StaticFiles
//!        resolve (sans-IO) ─▶ canonicalize + prefix check ─▶ open, fstat
//!        ─▶ If-None-Match / If-Modified-Since ─▶ Range ─▶ read (blocking pool)
//! ```
//!
//! The path after the route prefix is resolved by [`resolve`], a pure
//! function: each segment is percent-decoded exactly once and refused if it
//! is `.`/`..`, hidden (starts with `.`), or holds a separator (`/`, `\`,
//! encoded or not), NUL, or anything that is not one plain path component.
//! The file system is then asked, on the blocking pool: the root and the
//! file are canonicalised (symlinks resolved) and the file must still lie
//! under the root, through no hidden component. Only regular files are
//! served; a directory is 404 (no listing, no index file).
//!
//! Bodies up to [`CHUNK`] bytes go whole; larger ones are streamed
//! ([`crate::streaming`]) in `CHUNK` pieces, each read on the blocking
//! pool only when the client has taken the previous one, so a big file
//! costs one chunk of memory. `Content-Type` comes from the requested
//! name's extension (`mime_guess`). What this does not do: write, list
//! directories, compress, or serve multiple ranges (a multi-range request
//! gets the whole file, `200`).

use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sigma_core::{
    Answer, BodyRx, BodyStream, Capabilities, Destination, LaterStreamed, Request, Streamed, Tagged,
};
use sigma_http::{Header, Method, RequestHead, Response, ResponseHead};

/// Bodies up to this size (64 KiB) are sent whole; larger ones are
/// streamed in pieces of this size, read as the client keeps up.
pub const CHUNK: usize = 64 << 10;

/// Why a request path does not name a servable file ([`resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A `.` or `..` segment, encoded or not.
    DotSegment,
    /// A segment starting with `.` (hidden file).
    Hidden,
    /// `/` or `\` inside a segment (`%2f`, `%5c`, a raw backslash).
    Separator,
    /// A NUL or other control byte.
    Control,
    /// Not valid UTF-8 once decoded.
    NotUtf8,
    /// A segment that is not a single plain path component.
    NotPlain,
}

/// Resolves `rest`, the raw (still percent-encoded) request path after the
/// route prefix, to a relative path of plain components. Empty segments
/// (`//`, a trailing `/`) are skipped; the empty path names the root.
/// Never returns a path that could leave the root: only
/// [`Component::Normal`] components that start with no `.`.
pub fn resolve(rest: &[u8]) -> Result<PathBuf, Refused> {
    let mut out = PathBuf::new();
    for raw in rest.split(|&b| b == b'/') {
        if raw.is_empty() {
            continue;
        }
        let seg = sigma_core::percent::percent_decode(raw).ok_or(Refused::BadEscape)?;
        if seg.iter().any(|&b| b == b'/' || b == b'\\') {
            return Err(Refused::Separator);
        }
        if seg.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(Refused::Control);
        }
        if seg == b"." || seg == b".." {
            return Err(Refused::DotSegment);
        }
        if seg.first() == Some(&b'.') {
            return Err(Refused::Hidden);
        }
        let seg = String::from_utf8(seg).map_err(|_| Refused::NotUtf8)?;
        let mut comps = Path::new(&seg).components();
        match (comps.next(), comps.next()) {
            (Some(Component::Normal(c)), None) if c == seg.as_str() => out.push(c),
            _ => return Err(Refused::NotPlain),
        }
    }
    Ok(out)
}

/// A `Range` header's meaning for a file of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable single byte range: send the whole file (`200`). Also for
    /// a syntactically invalid header, other units, or several ranges.
    Full,
    /// Send bytes `start..=end` (`206`).
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// The range lies beyond the file (`416`, `Content-Range: bytes */LEN`).
    Unsatisfiable,
}

/// Interprets a `Range` value (RFC 9110 §14.2) for a file of `len` bytes.
pub fn parse_range(value: &[u8], len: u64) -> RangeAnswer {
    let Ok(v) = std::str::from_utf8(value) else {
        return RangeAnswer::Full;
    };
    let v = v.trim();
    let Some(spec) = v
        .get(..6)
        .filter(|u| u.eq_ignore_ascii_case("bytes="))
        .and_then(|_| v.get(6..))
    else {
        return RangeAnswer::Full;
    };
    let spec = spec.trim();
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    if a.is_empty() {
        // Suffix: the last `n` bytes.
        return match num(b) {
            None => RangeAnswer::Full,
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Part {
                start: len.saturating_sub(n),
                end: len.saturating_sub(1),
            },
        };
    }
    let Some(start) = num(a) else {
        return RangeAnswer::Full;
    };
    let end = if b.is_empty() {
        None
    } else {
        match num(b) {
            Some(e) if e >= start => Some(e),
            _ => return RangeAnswer::Full,
        }
    };
    if start >= len {
        return RangeAnswer::Unsatisfiable;
    }
    let last = len.saturating_sub(1);
    RangeAnswer::Part {
        start,
        end: end.map_or(last, |e| e.min(last)),
    }
}

/// True when an `If-None-Match` value matches `etag` (weak comparison, as
/// RFC 9110 §13.1.2 asks: `W/` prefixes are ignored; `*` matches).
/// A malformed value matches nothing.
pub fn none_match(value: &[u8], etag: &str) -> bool {
    sigma_core::etag::parse([value]).is_ok_and(|l| l.star || l.contains_weak(etag))
}

/// A strong validator from size, modification time and inode: changes
/// whenever the file is replaced or rewritten.
fn etag_of(meta: &Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let ino = 0u64;
    format!("\"{:x}-{:x}-{:x}\"", meta.len(), mtime, ino)
}

/// The `Content-Type` for `path`, from its extension; text gets UTF-8.
pub fn content_type(path: &Path) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let essence = mime.essence_str();
    if mime.type_() == mime_guess::mime::TEXT
        || essence == "application/javascript"
        || essence == "application/json"
        || essence == "image/svg+xml"
    {
        format!("{essence}; charset=utf-8")
    } else {
        essence.to_owned()
    }
}

/// The `static:DIR` destination of one route.
#[derive(Debug)]
pub struct StaticFiles {
    /// The route's prefix without a trailing `/`, e.g. `/static` (`""` for `/`).
    prefix: String,
    /// The directory, as configured (canonicalised per request, so a
    /// replaced directory or symlink takes effect at once).
    root: PathBuf,
}

impl StaticFiles {
    /// The destination for a route at `prefix` serving `root`. A missing
    /// root is logged, not fatal: its requests are 404 until it exists.
    pub fn new(prefix: &str, root: &Path) -> Self {
        if !root.is_dir() {
            tracing::warn!(dir = %root.display(), route = prefix, "static: directory does not exist (yet); its requests get 404");
        }
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
            root: root.to_owned(),
        }
    }
}

impl StaticFiles {
    /// The sans-IO part of a request: the method, then the path after the
    /// prefix ([`resolve`]). `Err` is the complete answer.
    fn check(&self, head: &RequestHead) -> Result<PathBuf, Response> {
        if !matches!(head.method, Method::Get | Method::Head) {
            let mut resp = text(405, "method not allowed: static files take GET and HEAD\n");
            resp.headers
                .push(Header::new(&b"Allow"[..], &b"GET, HEAD"[..]));
            return Err(resp);
        }
        let rest = head
            .path()
            .strip_prefix(self.prefix.as_bytes())
            .unwrap_or_default();
        resolve(rest).map_err(|why| {
            tracing::debug!(?why, "static: path refused");
            not_found()
        })
    }
}

impl Destination for StaticFiles {
    fn name(&self) -> &str {
        "static"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            streams_http: true,
            ..Capabilities::HTTP
        }
    }

    fn handle(&self, req: Request) -> Answer {
        match req {
            Request::Stream { head, body, .. } => Answer::Stream(self.serve(head, body)),
            other => other.not_taken(),
        }
    }
}

impl StaticFiles {
    /// Files of any size, streamed in [`CHUNK`]-byte pieces as the client
    /// reads them; a request body (unusual on GET) is not read.
    fn serve(&self, head: Tagged<RequestHead>, body: BodyRx) -> LaterStreamed {
        drop(body);
        let identity = head.identity;
        let head = head.msg;
        let rel = match self.check(&head) {
            Ok(rel) => rel,
            Err(resp) => {
                return Box::pin(std::future::ready(Tagged::new(
                    identity,
                    Streamed::Whole(resp),
                )))
            }
        };
        let root = self.root.clone();
        Box::pin(async move {
            let answer =
                tokio::task::spawn_blocking(move || stream_answer(prepare(&root, &rel, &head)))
                    .await
                    .unwrap_or_else(|_| Streamed::Whole(text(500, "internal error\n")));
            Tagged::new(identity, answer)
        })
    }
}

fn text(status: u16, body: &'static str) -> Response {
    Response::new(
        status,
        vec![
            Header::new(&b"Content-Type"[..], &b"text/plain; charset=utf-8"[..]),
            Header::new(&b"X-Content-Type-Options"[..], &b"nosniff"[..]),
        ],
        Bytes::from_static(body.as_bytes()),
    )
}

fn not_found() -> Response {
    text(404, "not found\n")
}

/// True if `rel` (relative to the canonical root) has a hidden component.
fn has_hidden(rel: &Path) -> bool {
    rel.components().any(|c| match c {
        Component::Normal(s) => s.to_str().is_none_or(|s| s.starts_with('.')),
        _ => true,
    })
}

/// Opens `path` (canonical, under the canonical `root`) for reading, and
/// checks what was opened, since the tree may change between
/// `canonicalize` and `open`:
/// - `O_NOFOLLOW`: a last component swapped for a symlink is not followed;
/// - `O_NONBLOCK`: a FIFO (or a device) never blocks the thread in `open`;
/// - `fstat`: only a regular file is served;
/// - the open descriptor's real path (`/proc/self/fd/N`) must still lie
///   under `root` through no hidden component (a directory on the way
///   swapped for a symlink leads elsewhere).
///
/// `None` (404) otherwise. Blocking: runs on the blocking pool.
fn open_inside(root: &Path, path: &Path) -> Option<(File, Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let real = real_path(&file, path)?;
    match real.strip_prefix(root) {
        Ok(inside) if !has_hidden(inside) => Some((file, meta)),
        _ => {
            tracing::debug!(path = %path.display(), real = %real.display(), "static: opened file lies outside the root");
            None
        }
    }
}

/// Where the open `file` really is.
#[cfg(target_os = "linux")]
fn real_path(file: &File, _path: &Path) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

/// Where the open `file` really is: `path` canonicalised again, if it
/// still names the same inode (no `/proc` to ask).
#[cfg(not(target_os = "linux"))]
fn real_path(file: &File, path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let now = path.canonicalize().ok()?;
    let (a, b) = (file.metadata().ok()?, std::fs::metadata(&now).ok()?);
    (a.dev() == b.dev() && a.ino() == b.ino()).then_some(now)
}

/// Checks and opens `rel` under `root` and decides the answer from the
/// request's validators and `Range` (blocking: runs on the blocking pool).
fn prepare(root: &Path, rel: &Path, head: &RequestHead) -> Prepared {
    let Ok(root) = root.canonicalize() else {
        return Prepared::Done(not_found());
    };
    let Ok(path) = root.join(rel).canonicalize() else {
        return Prepared::Done(not_found());
    };
    // Symlinks may point anywhere: what they resolve to must stay inside
    // the root and must not be hidden there either.
    match path.strip_prefix(&root) {
        Ok(inside) if !has_hidden(inside) => {}
        _ => {
            tracing::debug!(path = %path.display(), "static: resolves outside the root");
            return Prepared::Done(not_found());
        }
    }
    // Not a regular file now: not even opened (opening a device may act).
    // The check that counts is on the open file ([`open_inside`]).
    if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
        return Prepared::Done(not_found());
    }
    let Some((mut file, meta)) = open_inside(&root, &path) else {
        return Prepared::Done(not_found());
    };
    let len = meta.len();
    let etag = etag_of(&meta);
    let modified = meta.modified().ok();
    let last_modified = modified.map(httpdate::fmt_http_date);
    let mut headers = vec![
        Header::new(&b"ETag"[..], etag.clone()),
        Header::new(&b"Cache-Control"[..], &b"no-cache"[..]),
        Header::new(&b"X-Content-Type-Options"[..], &b"nosniff"[..]),
        Header::new(&b"Accept-Ranges"[..], &b"bytes"[..]),
    ];
    if let Some(lm) = &last_modified {
        headers.push(Header::new(&b"Last-Modified"[..], lm.clone()));
    }
    if not_modified(head, &etag, modified) {
        return Prepared::Done(Response::new(304, headers, Bytes::new()));
    }
    headers.push(Header::new(
        &b"Content-Type"[..],
        content_type(rel).into_bytes(),
    ));
    let range = match head.header("range") {
        Some(r) if if_range_holds(head, &etag, last_modified.as_deref()) => {
            parse_range(&r.value, len)
        }
        _ => RangeAnswer::Full,
    };
    let (status, start, count) = match range {
        RangeAnswer::Full => (200, 0, len),
        RangeAnswer::Part { start, end } => {
            let count = end.saturating_sub(start).saturating_add(1);
            headers.push(Header::new(
                &b"Content-Range"[..],
                format!("bytes {start}-{end}/{len}").into_bytes(),
            ));
            (206, start, count)
        }
        RangeAnswer::Unsatisfiable => {
            let mut resp = text(416, "range not satisfiable\n");
            resp.headers.push(Header::new(
                &b"Content-Range"[..],
                format!("bytes */{len}").into_bytes(),
            ));
            return Prepared::Done(resp);
        }
    };
    if let Err(e) = file.seek(SeekFrom::Start(start)) {
        tracing::warn!(path = %path.display(), error = %e, "static: seek failed");
        return Prepared::Done(text(500, "read error\n"));
    }
    Prepared::File {
        status,
        headers,
        file,
        count,
        head_only: head.method == Method::Head,
    }
}

/// What [`prepare`] found: a complete answer, or a file to send.
#[derive(Debug)]
enum Prepared {
    /// An answer without a file body (404, 304, 416, …).
    Done(Response),
    /// `count` bytes of `file` (already positioned) with this head.
    File {
        status: u16,
        headers: Vec<Header>,
        file: File,
        count: u64,
        /// HEAD: the head only (with the length GET would have).
        head_only: bool,
    },
}

/// Reads a prepared file of at most [`CHUNK`] bytes into one whole
/// response (blocking); larger ones are streamed ([`stream_answer`]).
fn read_small(p: Prepared) -> Response {
    let limit = CHUNK as u64;
    let (status, headers, file, count) = match p {
        Prepared::Done(r) => return r,
        Prepared::File {
            status,
            headers,
            file,
            count,
            ..
        } => (status, headers, file, count),
    };
    if count > limit {
        tracing::error!(count, limit, "static: a large file on the whole-body path");
        return text(500, "internal error\n");
    }
    let Ok(cap) = usize::try_from(count) else {
        return text(500, "file too large\n");
    };
    let mut body = Vec::with_capacity(cap);
    match file.take(count).read_to_end(&mut body) {
        Ok(n) if n == cap => Response::new(status, headers, Bytes::from(body)),
        // Truncated while being read: a short body must not pass for a whole one.
        Ok(_) => text(503, "file changed while being read; retry\n"),
        Err(e) => {
            tracing::warn!(error = %e, "static: read failed");
            text(500, "read error\n")
        }
    }
}

/// The streamed answer to a prepared file: small bodies whole, larger
/// ones in [`CHUNK`]-byte pieces read on the blocking pool (blocking).
fn stream_answer(p: Prepared) -> Streamed {
    match p {
        Prepared::File {
            status,
            headers,
            count,
            head_only: true,
            ..
        } => Streamed::Stream {
            head: ResponseHead {
                status,
                headers,
                content_length: Some(count),
            },
            body: Box::pin(futures_util::stream::empty()),
        },
        Prepared::File {
            status,
            headers,
            file,
            count,
            head_only: false,
        } if count > CHUNK as u64 => Streamed::Stream {
            head: ResponseHead {
                status,
                headers,
                content_length: Some(count),
            },
            body: file_stream(file, count),
        },
        small => Streamed::Whole(read_small(small)),
    }
}

/// `count` bytes of `file` as a body stream. A file that ends early (it
/// was truncated meanwhile) or fails ends the stream with `Err`, so the
/// client's connection is aborted rather than given a short body.
fn file_stream(file: File, count: u64) -> BodyStream {
    let chunks = futures_util::stream::unfold(Some((file, count)), |state| async move {
        let (file, left) = state?;
        if left == 0 {
            return None;
        }
        let want = left.min(CHUNK as u64);
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(CHUNK);
            let mut f = file;
            let n = (&mut f).take(want).read_to_end(&mut buf)?;
            Ok::<_, std::io::Error>((f, buf, n))
        })
        .await;
        match read {
            Ok(Ok((file, buf, n))) if n > 0 => {
                let left = left.saturating_sub(n as u64);
                Some((Ok(Bytes::from(buf)), Some((file, left))))
            }
            Ok(Ok(_)) => {
                tracing::warn!(left, "static: file shorter than announced; aborting");
                Some((Err(()), None))
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "static: read failed; aborting");
                Some((Err(()), None))
            }
            Err(_) => Some((Err(()), None)),
        }
    });
    Box::pin(chunks)
}

/// `If-None-Match` (or, without it, `If-Modified-Since`) says the client's
/// copy is current.
fn not_modified(head: &RequestHead, etag: &str, modified: Option<SystemTime>) -> bool {
    if let Some(inm) = head.header("if-none-match") {
        return none_match(&inm.value, etag);
    }
    let (Some(ims), Some(modified)) = (head.header("if-modified-since"), modified) else {
        return false;
    };
    let Some(since) = std::str::from_utf8(&ims.value)
        .ok()
        .and_then(|s| httpdate::parse_http_date(s).ok())
    else {
        return false;
    };
    // HTTP dates have whole seconds.
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    secs(modified) <= secs(since)
}

/// `If-Range` absent, or naming the current strong ETag or exact date.
fn if_range_holds(head: &RequestHead, etag: &str, last_modified: Option<&str>) -> bool {
    match head.header("if-range") {
        None => true,
        Some(v) => {
            let v = v.value.as_ref();
            v == etag.as_bytes() || last_modified.is_some_and(|lm| v == lm.as_bytes())
        }
    }
}

/// `to = "static:DIR"`.
pub const FACTORY: &dyn crate::factory::Factory = &StaticFactory;

struct StaticFactory;

impl crate::factory::Factory for StaticFactory {
    fn name(&self) -> &'static str {
        "static:"
    }

    fn matches(&self, to: &str) -> bool {
        to.starts_with("static:")
    }

    fn build(
        &self,
        cx: &mut crate::factory::Build<'_, '_>,
    ) -> Result<std::sync::Arc<dyn Destination>, crate::UnavailableDestination> {
        let dir = cx.to.strip_prefix("static:").unwrap_or(cx.to);
        Ok(std::sync::Arc::new(StaticFiles::new(
            cx.path,
            Path::new(dir),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn resolves_plain_paths() {
        assert_eq!(resolve(b"").unwrap(), PathBuf::new());
        assert_eq!(resolve(b"/").unwrap(), PathBuf::new());
        assert_eq!(resolve(b"/a/b.txt").unwrap(), PathBuf::from("a/b.txt"));
        assert_eq!(resolve(b"//a//b/").unwrap(), PathBuf::from("a/b"));
        assert_eq!(resolve(b"/a%20b").unwrap(), PathBuf::from("a b"));
        assert_eq!(resolve(b"/%25zz").unwrap(), PathBuf::from("%zz"));
        assert_eq!(resolve(b"/caf%C3%A9").unwrap(), PathBuf::from("café"));
    }

    #[test]
    fn refuses_traversal() {
        use Refused::*;
        for (p, why) in [
            (&b"/.."[..], DotSegment),
            (b"/../x", DotSegment),
            (b"/a/../../x", DotSegment),
            (b"/%2e%2e/x", DotSegment),
            (b"/%2E%2e", DotSegment),
            (b"/.%2e", DotSegment),
            (b"/./x", DotSegment),
            (b"/..%2fx", Separator),
            (b"/..%2Fx", Separator),
            (b"/..%5cx", Separator),
            (b"/..\\x", Separator),
            (b"/a%00b", Control),
            (b"/a\0b", Control),
            (b"/.env", Hidden),
            (b"/.git/config", Hidden),
            (b"/%2egit", Hidden),
            (b"/%", BadEscape),
            (b"/%2", BadEscape),
            (b"/%zz", BadEscape),
            (b"/%ff", NotUtf8),
        ] {
            assert_eq!(resolve(p), Err(why), "{:?}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        let p = |s: &str, l| parse_range(s.as_bytes(), l);
        assert_eq!(p("bytes=0-3", 10), Part { start: 0, end: 3 });
        assert_eq!(p("bytes=5-", 10), Part { start: 5, end: 9 });
        assert_eq!(p("bytes=5-100", 10), Part { start: 5, end: 9 });
        assert_eq!(p("bytes=-3", 10), Part { start: 7, end: 9 });
        assert_eq!(p("bytes=-30", 10), Part { start: 0, end: 9 });
        assert_eq!(p("BYTES=1-1", 10), Part { start: 1, end: 1 });
        assert_eq!(p("bytes=10-", 10), Unsatisfiable);
        assert_eq!(p("bytes=-0", 10), Unsatisfiable);
        assert_eq!(p("bytes=0-", 0), Unsatisfiable);
        assert_eq!(p("bytes=0-1,3-4", 10), Full);
        assert_eq!(p("bytes=3-1", 10), Full);
        assert_eq!(p("items=0-1", 10), Full);
        assert_eq!(p("bytes=a-b", 10), Full);
        assert_eq!(p("bytes=+1-2", 10), Full);
        assert_eq!(p("bytes=99999999999999999999-", 10), Full);
    }

    #[test]
    fn etag_matching() {
        assert!(none_match(b"\"a\"", "\"a\""));
        assert!(none_match(b"W/\"a\"", "\"a\""));
        assert!(none_match(b"\"x\", \"a\"", "\"a\""));
        assert!(none_match(b"*", "\"a\""));
        assert!(!none_match(b"\"b\"", "\"a\""));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            content_type(Path::new("a.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.css")), "text/css; charset=utf-8");
        assert_eq!(content_type(Path::new("a.png")), "image/png");
        assert_eq!(content_type(Path::new("a")), "application/octet-stream");
    }

    fn get(target: &str, headers: &[(&'static str, &str)]) -> RequestHead {
        RequestHead {
            method: Method::Get,
            target: Bytes::copy_from_slice(target.as_bytes()),
            version: sigma_http::Version::Http11,
            headers: headers
                .iter()
                .map(|(n, v)| Header::new(n.as_bytes(), Bytes::copy_from_slice(v.as_bytes())))
                .collect(),
            keep_alive: true,
            websocket: None,
        }
    }

    /// Small files, answered whole, on real files.
    #[test]
    fn whole_responses_from_files() {
        let base = std::env::temp_dir().join(format!("sigma-static-unit-{}", std::process::id()));
        let root = base.join("www");
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("a.txt"), "hello world").unwrap();
        std::fs::write(base.join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(base.join("secret"), root.join("out")).unwrap();
        let serve = |rel: &str, h: &[(&'static str, &str)]| match stream_answer(prepare(
            &root,
            Path::new(rel),
            &get("/", h),
        )) {
            Streamed::Whole(r) => r,
            other => panic!("{rel}: {other:?}"),
        };
        let r = serve("a.txt", &[]);
        assert_eq!((r.status, &r.body[..]), (200, &b"hello world"[..]));
        let etag = r
            .headers
            .iter()
            .find(|h| h.is("etag"))
            .unwrap()
            .value
            .clone();
        let inm = std::str::from_utf8(&etag).unwrap();
        assert_eq!(serve("a.txt", &[("If-None-Match", inm)]).status, 304);
        let r = serve("a.txt", &[("Range", "bytes=6-")]);
        assert_eq!((r.status, &r.body[..]), (206, &b"world"[..]));
        assert_eq!(serve("a.txt", &[("Range", "bytes=20-")]).status, 416);
        assert_eq!(serve("out", &[]).status, 404);
        assert_eq!(serve("", &[]).status, 404);
        assert_eq!(serve("missing", &[]).status, 404);
        let _ = std::fs::remove_dir_all(base);
    }

    /// A tree changed between `canonicalize` and `open`: the open file
    /// itself is checked (what `prepare` would pass after a swap).
    #[test]
    fn opening_checks_what_was_opened() {
        let base = std::env::temp_dir().join(format!("sigma-static-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("www");
        std::fs::create_dir_all(root.join("dir")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::write(root.join("dir/a.txt"), "a").unwrap();
        std::fs::write(base.join("outside/secret"), "s").unwrap();
        let root = root.canonicalize().unwrap();
        assert!(open_inside(&root, &root.join("dir/a.txt")).is_some());
        // The last component became a symlink (to a file inside, even).
        std::os::unix::fs::symlink(root.join("dir/a.txt"), root.join("link")).unwrap();
        assert!(open_inside(&root, &root.join("link")).is_none());
        // A directory on the way became a symlink leading out.
        std::os::unix::fs::symlink(base.join("outside"), root.join("swapped")).unwrap();
        assert!(open_inside(&root, &root.join("swapped/secret")).is_none());
        // A directory is not a file.
        assert!(open_inside(&root, &root.join("dir")).is_none());
        // A FIFO: refused, and without blocking (a deadline, no writer).
        let fifo = root.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let r = root.clone();
        std::thread::spawn(move || {
            let _ = tx.send(open_inside(&r, &r.join("fifo")).is_none());
        });
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(10)),
            Ok(true)
        );
        let _ = std::fs::remove_dir_all(base);
    }

    proptest! {
        /// Whatever the request path, the resolved path has only plain,
        /// non-hidden components, so `root.join(p)` stays under `root`.
        #[test]
        fn resolver_never_leaves_the_root(
            segs in prop::collection::vec(
                prop::sample::select(vec![
                    "..", ".", "%2e%2e", "%2E.", ".%2e", "%2f", "%2F", "%5c", "%5C", "\\",
                    "a", "b.txt", "%00", "\0", "%", "%2", "..%2f..", "x%2f..%2fy",
                    "C:", "c:%5c", "~", "%7e", "%252e%252e", ".hidden", "%c0%ae", "é",
                ]),
                0..8,
            ),
            tail in "[ -~]{0,12}",
        ) {
            let raw = format!("/{}/{tail}", segs.join("/"));
            if let Ok(p) = resolve(raw.as_bytes()) {
                let root = Path::new("/srv/root");
                let joined = root.join(&p);
                prop_assert!(joined.starts_with(root));
                for c in p.components() {
                    match c {
                        Component::Normal(s) => {
                            let s = s.to_str().unwrap();
                            prop_assert!(!s.starts_with('.'));
                            prop_assert!(!s.contains('/') && !s.contains('\\') && !s.contains('\0'));
                        }
                        other => prop_assert!(false, "component {other:?} from {raw:?}"),
                    }
                }
            }
        }

        /// Arbitrary bytes never panic the resolver or the range parser.
        #[test]
        fn no_panics(raw in prop::collection::vec(any::<u8>(), 0..64), len in any::<u64>()) {
            if let Ok(p) = resolve(&raw) {
                prop_assert!(p.components().all(|c| matches!(c, Component::Normal(_))));
            }
            if let RangeAnswer::Part { start, end } = parse_range(&raw, len) {
                prop_assert!(start <= end && end < len);
            }
        }
    }
}
