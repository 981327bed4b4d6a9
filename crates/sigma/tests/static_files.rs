//! `static:DIR` routes and the bundled page (`&web`) over real sockets, with
//! curl as the client (`--path-as-is`, so traversal attempts reach sigma
//! unnormalised): content types, ETag / 304, Range 206 / 416, HEAD, 405,
//! and every traversal attempt refused without leaking the file outside.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{parse_response, temp_dir, Resp, Server};

const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-ROOT";

/// Runs curl against `server` for `path` (sent as is), with `args`.
fn curl(server: &Server, path: &str, args: &[&str]) -> Resp {
    let url = format!("http://{}{}", server.addr(), path);
    let out = Command::new("curl")
        .args(["-sS", "-i", "--path-as-is", "--max-time", "10"])
        .args(args)
        .arg(&url)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head_only = args.contains(&"-I") || args.contains(&"--head");
    let (resp, _) = parse_response(&out.stdout, head_only)
        .unwrap_or_else(|e| panic!("bad response to {url}: {e}"))
        .unwrap_or_else(|| panic!("incomplete response to {url}"));
    resp
}

/// A root with a few files, a hidden file, a subdirectory, a symlink that
/// stays inside and one that leads out to `SECRET`.
fn site() -> (PathBuf, PathBuf) {
    let base = temp_dir("static");
    let root = base.join("www");
    fs::create_dir_all(root.join("sub/dir")).unwrap();
    fs::write(base.join("secret.txt"), SECRET).unwrap();
    fs::write(root.join("index.html"), "<!doctype html><p>hi</p>").unwrap();
    fs::write(root.join("style.css"), "body{}").unwrap();
    fs::write(root.join("app.js"), "export {};").unwrap();
    fs::write(root.join("pic.png"), b"\x89PNG\r\n\x1a\n").unwrap();
    fs::write(root.join("digits.txt"), "0123456789").unwrap();
    fs::write(root.join("blob"), [0u8, 1, 2]).unwrap();
    fs::write(root.join("sub/dir/deep.json"), "{\"deep\":true}").unwrap();
    fs::write(root.join(".env"), SECRET).unwrap();
    std::os::unix::fs::symlink(base.join("secret.txt"), root.join("out")).unwrap();
    std::os::unix::fs::symlink(&base, root.join("up")).unwrap();
    std::os::unix::fs::symlink(root.join("digits.txt"), root.join("in")).unwrap();
    (base, root)
}

fn start(root: &Path) -> Server {
    Server::start(&format!(
        "[[route]]\npath = \"/static\"\nto = \"static:{}\"\nauth = \"optional\"\n",
        root.display()
    ))
}

#[test]
fn serves_files_with_content_types() {
    let (base, root) = site();
    let s = start(&root);
    for (path, ctype, body) in [
        (
            "/static/index.html",
            "text/html; charset=utf-8",
            &b"<!doctype html><p>hi</p>"[..],
        ),
        ("/static/style.css", "text/css; charset=utf-8", b"body{}"),
        (
            "/static/app.js",
            "text/javascript; charset=utf-8",
            b"export {};",
        ),
        ("/static/pic.png", "image/png", b"\x89PNG\r\n\x1a\n"),
        ("/static/blob", "application/octet-stream", b"\0\x01\x02"),
        (
            "/static/sub/dir/deep.json",
            "application/json; charset=utf-8",
            b"{\"deep\":true}",
        ),
        (
            "/static/sub/dir/deep.json?x=1",
            "application/json; charset=utf-8",
            b"{\"deep\":true}",
        ),
        (
            "/static/%73ub/dir/deep.json",
            "application/json; charset=utf-8",
            b"{\"deep\":true}",
        ),
        ("/static/in", "application/octet-stream", b"0123456789"), // by the requested name
        (
            "/static/digits%2etxt",
            "text/plain; charset=utf-8",
            b"0123456789",
        ),
    ] {
        let r = curl(&s, path, &[]);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ctype), "{path}");
        assert_eq!(r.body, body, "{path}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert!(
            r.header("etag").is_some_and(|e| e.starts_with('"')),
            "{path}"
        );
        assert!(r.header("last-modified").is_some());
    }
    let _ = fs::remove_dir_all(base);
}

#[test]
fn etag_and_if_modified_since_give_304() {
    let (base, root) = site();
    let s = start(&root);
    let r = curl(&s, "/static/digits.txt", &[]);
    let etag = r.header("etag").unwrap().to_owned();
    let lm = r.header("last-modified").unwrap().to_owned();
    let r = curl(
        &s,
        "/static/digits.txt",
        &["-H", &format!("If-None-Match: {etag}")],
    );
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let r = curl(
        &s,
        "/static/digits.txt",
        &["-H", "If-None-Match: \"other\""],
    );
    assert_eq!(r.status, 200);
    let r = curl(
        &s,
        "/static/digits.txt",
        &["-H", &format!("If-Modified-Since: {lm}")],
    );
    assert_eq!(r.status, 304);
    // A rewrite changes the validator.
    fs::write(root.join("digits.txt"), "01234567890123").unwrap();
    let r = curl(
        &s,
        "/static/digits.txt",
        &["-H", &format!("If-None-Match: {etag}")],
    );
    assert_eq!(r.status, 200);
    assert_ne!(r.header("etag"), Some(etag.as_str()));
    let _ = fs::remove_dir_all(base);
}

#[test]
fn ranges() {
    let (base, root) = site();
    let s = start(&root);
    let r = curl(&s, "/static/digits.txt", &["-H", "Range: bytes=2-4"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, b"234");
    assert_eq!(r.header("content-range"), Some("bytes 2-4/10"));
    let r = curl(&s, "/static/digits.txt", &["-H", "Range: bytes=-3"]);
    assert_eq!((r.status, r.body.as_slice()), (206, &b"789"[..]));
    let r = curl(&s, "/static/digits.txt", &["-H", "Range: bytes=7-"]);
    assert_eq!((r.status, r.body.as_slice()), (206, &b"789"[..]));
    let r = curl(&s, "/static/digits.txt", &["-H", "Range: bytes=10-20"]);
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */10"));
    // Several ranges: the whole file.
    let r = curl(&s, "/static/digits.txt", &["-H", "Range: bytes=0-1,4-5"]);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"0123456789"[..]));
    // If-Range with a stale validator: the whole file.
    let r = curl(
        &s,
        "/static/digits.txt",
        &["-H", "Range: bytes=0-1", "-H", "If-Range: \"stale\""],
    );
    assert_eq!(r.status, 200);
    let _ = fs::remove_dir_all(base);
}

#[test]
fn large_files_are_streamed_whole_and_in_ranges() {
    let (base, root) = site();
    // 3 MiB + 7 bytes: many 64 KiB chunks and a short last one.
    let big: Vec<u8> = (0..(3 << 20) + 7).map(|i: u32| (i % 251) as u8).collect();
    fs::write(root.join("big.bin"), &big).unwrap();
    let s = start(&root);
    let r = curl(&s, "/static/big.bin", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(big.len().to_string().as_str())
    );
    assert!(r.body == big, "streamed body differs");
    let r = curl(
        &s,
        "/static/big.bin",
        &["-H", "Range: bytes=100000-1200000"],
    );
    assert_eq!(r.status, 206);
    assert!(r.body == big[100_000..=1_200_000]);
    let r = curl(&s, "/static/big.bin", &["-I"]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(big.len().to_string().as_str())
    );
    // Keep-alive still works after a streamed body: two in one curl run.
    let url = format!("http://{}/static/big.bin", s.addr());
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
        ])
        .args([
            "-w",
            "%{http_code} %{size_download} %{num_connects}\n",
            &url,
            &url,
        ])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let want = format!("200 {} 1", big.len());
    let want2 = format!("200 {} 0", big.len());
    assert_eq!(lines, [want.as_str(), want2.as_str()], "{text}");
    let _ = fs::remove_dir_all(base);
}

#[test]
fn head_and_methods() {
    let (base, root) = site();
    let s = start(&root);
    let r = curl(&s, "/static/digits.txt", &["-I"]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("10"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let r = curl(&s, "/static/digits.txt", &["-X", "POST", "--data", "x"]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = curl(&s, "/static/digits.txt", &["-X", "DELETE"]);
    assert_eq!(r.status, 405);
    let _ = fs::remove_dir_all(base);
}

#[test]
fn traversal_and_hidden_files_are_refused() {
    let (base, root) = site();
    // Something worth stealing right next to the root, and the repo's own file.
    let s = start(&root);
    for path in [
        "/static/..%2fsecret.txt",
        "/static/..%2Fsecret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/%2E%2E/secret.txt",
        "/static/.%2e/secret.txt",
        "/static/..%5csecret.txt",
        "/static/..\\secret.txt",
        "/static/../secret.txt",
        "/static/sub/../../secret.txt",
        "/static/../Cargo.toml",
        "/static/%2e%2e%2fsecret.txt",
        "/static/%252e%252e/secret.txt",
        "/static/out",
        "/static/up/secret.txt",
        "/static/.env",
        "/static/%2eenv",
        "/static/digits.txt%00.png",
        "/static/sub",
        "/static/sub/",
        "/static/",
        "/static",
        "/static/nope.txt",
        "/static/%",
        "/static/%zz",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
    ] {
        let r = curl(&s, path, &[]);
        assert!(
            r.status == 404 || r.status == 400,
            "{path}: status {}",
            r.status
        );
        let body = r.body_str();
        assert!(!body.contains(SECRET), "{path} leaked the secret");
        assert!(!body.contains("[package]"), "{path} leaked Cargo.toml");
        assert!(!body.contains("root:"), "{path} leaked /etc/passwd");
    }
    let _ = fs::remove_dir_all(base);
}

/// Route lookup, `A`'s admission and the file system see one path: an
/// empty segment or an escaped letter cannot step from a public route into
/// a private one below it (route::path).
#[test]
fn private_subroute_cannot_be_reached_through_another_spelling() {
    let base = temp_dir("static-private");
    let root = base.join("www");
    fs::create_dir_all(root.join("private")).unwrap();
    fs::write(root.join("public.txt"), "public").unwrap();
    fs::write(root.join("private/x"), SECRET).unwrap();
    let s = Server::start(&format!(
        "[[route]]\npath = \"/files\"\nto = \"static:{0}\"\nauth = \"none\"\n\
         [[route]]\npath = \"/files/private\"\nto = \"static:{0}/private\"\nauth = \"required\"\n",
        root.display()
    ));
    assert_eq!(curl(&s, "/files/public.txt", &[]).status, 200);
    assert_eq!(curl(&s, "/files/private/x", &[]).status, 401);
    for (path, want) in [
        ("/files//private/x", 400),
        ("/files/%70rivate/x", 401),
        ("/files/%70%72ivate/x", 401),
        ("/files/./private/x", 400),
        ("/files/nope/../private/x", 400),
        ("/files/private//x", 400),
        ("/files/private%2fx", 404),
    ] {
        let r = curl(&s, path, &[]);
        assert_eq!(r.status, want, "{path}");
        assert!(!r.body_str().contains(SECRET), "{path} leaked the file");
    }
    let r = curl(&s, "/files//private/x", &[]);
    assert!(r.body_str().contains("invalid_path"), "{}", r.body_str());
    let m = curl(&s, "/metrics", &[]).body_str();
    assert!(
        m.lines()
            .any(|l| l.contains("reason=\"invalid_path\"") && !l.ends_with(" 0")),
        "{m}"
    );
    let _ = fs::remove_dir_all(base);
}

/// A FIFO inside the root is not a file: 404 at once, and the blocking
/// pool is not stuck on it (the next request is answered too). curl's
/// `--max-time` is the deadline.
#[test]
fn fifo_is_404_and_does_not_hang() {
    let (base, root) = site();
    let made = Command::new("mkfifo")
        .arg(root.join("pipe"))
        .status()
        .expect("run mkfifo");
    assert!(made.success());
    let s = start(&root);
    let started = std::time::Instant::now();
    for _ in 0..3 {
        assert_eq!(curl(&s, "/static/pipe", &[]).status, 404);
    }
    assert_eq!(curl(&s, "/static/digits.txt", &[]).status, 200);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let _ = fs::remove_dir_all(base);
}

#[test]
fn missing_root_is_404_not_fatal() {
    let base = temp_dir("static-missing");
    let s = start(&base.join("does-not-exist"));
    assert_eq!(curl(&s, "/static/x", &[]).status, 404);
    let _ = fs::remove_dir_all(base);
}

#[test]
fn web_page_is_served_at_root_with_csp() {
    let s = Server::start("");
    let r = curl(&s, "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = r.header("content-security-policy").expect("CSP header");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert!(r.body_str().contains("<section id=\"worlds\""));
    let etag = r.header("etag").unwrap().to_owned();
    let r = curl(&s, "/", &["-H", &format!("If-None-Match: {etag}")]);
    assert_eq!(r.status, 304);
    for (path, ctype) in [
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/sigma.js", "text/javascript; charset=utf-8"),
    ] {
        let r = curl(&s, path, &[]);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ctype), "{path}");
        assert!(r.header("content-security-policy").is_some());
    }
    assert_eq!(curl(&s, "/nope", &[]).status, 404);
    assert_eq!(curl(&s, "/../Cargo.toml", &[]).status / 100, 4);
    // The other default routes still win over `/`.
    let r = curl(&s, "/auth/whoami", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body_str().contains("\"user\":null"));
    let r = curl(&s, "/echo", &["--data", "ping"]);
    assert_eq!(r.body, b"ping");
}
