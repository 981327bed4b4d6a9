//! Files the config names (DESIGN §4; issue #13): `sigma check` and
//! `sigma serve` read them with `sigma::namedfile` — regular files only, at
//! most 16 MiB. Every file a config can name (world `code`, `[[auth.jwt]]
//! key_file`, `[auth.oauth.*] client_secret_file`, the config file itself)
//! is pointed at `/dev/zero`, a FIFO without a writer, a directory and a
//! sparse 17 MiB file: each run must exit 2 quickly with a message naming
//! the key, not allocate until killed or block forever.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// Generous: a correct run takes milliseconds; a run that reads
/// `/dev/zero` to the end or blocks on a FIFO never finishes (and
/// `run_bounded` kills it after 20 s).
const QUICK: Duration = Duration::from_secs(10);

/// The bad files, in `dir`: what each is, and what the message must say.
fn bad_files(dir: &Path) -> Vec<(&'static str, PathBuf, &'static str)> {
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    let sub = dir.join("a-directory");
    fs::create_dir_all(&sub).unwrap();
    let big = dir.join("big");
    // Sparse: 17 MiB long, nothing written, so the test itself is cheap.
    fs::File::create(&big).unwrap().set_len(17 << 20).unwrap();
    vec![
        (
            "/dev/zero",
            PathBuf::from("/dev/zero"),
            "is not a regular file (a character device)",
        ),
        ("a FIFO", fifo, "is not a regular file (a FIFO)"),
        ("a directory", sub, "is not a regular file (a directory)"),
        ("a 17 MiB file", big, "is larger than 16777216 bytes"),
    ]
}

/// A config whose `key` names `file`.
fn config_naming(key: &str, file: &Path) -> String {
    let f = file.display();
    match key {
        "world.x.code" => format!("[world.x]\ncode = \"{f}\"\nto = \"&echo\"\n"),
        "key_file" => format!(
            "[[auth.jwt]]\nissuer = \"https://id.example.com\"\naudience = \"sigma\"\n\
             algorithm = \"HS256\"\nkey_file = \"{f}\"\n"
        ),
        "auth.oauth.corp.client_secret_file" => format!(
            "[auth]\npublic_url = \"https://chat.example.com\"\n\
             [auth.oauth.corp]\nkind = \"oidc\"\nissuer = \"https://id.example.com\"\n\
             client_id = \"sigma\"\nclient_secret_file = \"{f}\"\n"
        ),
        _ => unreachable!("{key}"),
    }
}

const KEYS: &[&str] = &[
    "world.x.code",
    "key_file",
    "auth.oauth.corp.client_secret_file",
];

/// Runs `cmd`; its exit code, its stderr, and whether it was quick.
fn run(cmd: std::process::Command) -> (Option<i32>, String, Duration) {
    let t0 = Instant::now();
    let (st, _, err) = run_bounded(cmd, None);
    (st.code(), err, t0.elapsed())
}

#[test]
fn check_refuses_every_named_file_that_is_not_a_small_regular_file() {
    let dir = temp_dir("named-files");
    for (what, file, says) in bad_files(&dir) {
        for key in KEYS {
            let cfg = dir.join("sigma.toml");
            fs::write(&cfg, config_naming(key, &file)).unwrap();
            let mut cmd = sigma_cmd();
            cmd.arg("check").arg("--config").arg(&cfg);
            let (code, err, took) = run(cmd);
            assert_eq!(code, Some(2), "{key} = {what}: stderr: {err}");
            assert!(
                err.contains(&format!("{key}: {}", file.display())) && err.contains(says),
                "{key} = {what}: message must name the key and say {says:?}: {err}"
            );
            assert!(took < QUICK, "{key} = {what}: took {took:?}");
        }
    }
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn serve_refuses_them_too_before_listening() {
    let dir = temp_dir("named-files-serve");
    for (what, file, says) in bad_files(&dir) {
        for key in ["world.x.code", "key_file"] {
            let cfg = dir.join("sigma.toml");
            fs::write(&cfg, config_naming(key, &file)).unwrap();
            let mut cmd = sigma_cmd();
            cmd.arg("serve")
                .arg("--config")
                .arg(&cfg)
                .arg("--data")
                .arg(dir.join("data"))
                .arg("--pipeline")
                .arg("T127.0.0.1:0[HA]");
            let (code, err, took) = run(cmd);
            assert_eq!(code, Some(2), "{key} = {what}: stderr: {err}");
            assert!(
                err.contains(&format!("{key}: {}", file.display())) && err.contains(says),
                "{key} = {what}: {err}"
            );
            assert!(took < QUICK, "{key} = {what}: took {took:?}");
        }
    }
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn the_config_file_itself_is_read_the_same_way() {
    let dir = temp_dir("named-files-config");
    for (what, file, says) in bad_files(&dir) {
        let mut cmd = sigma_cmd();
        cmd.arg("check").arg("--config").arg(&file);
        let (code, err, took) = run(cmd);
        assert_eq!(code, Some(2), "config = {what}: stderr: {err}");
        assert!(
            err.contains("cannot read the config file") && err.contains(says),
            "config = {what}: {err}"
        );
        assert!(took < QUICK, "config = {what}: took {took:?}");
    }
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_regular_file_within_the_cap_is_used() {
    let dir = temp_dir("named-files-ok");
    let code = dir.join("notes.js");
    fs::write(&code, "// a world\n").unwrap();
    let secret = dir.join("hs256.secret");
    // At the HS256 minimum, well under the cap.
    fs::write(&secret, [b'k'; 64]).unwrap();
    for (key, file) in [("world.x.code", &code), ("key_file", &secret)] {
        let cfg = dir.join("sigma.toml");
        fs::write(&cfg, config_naming(key, file)).unwrap();
        let mut cmd = sigma_cmd();
        cmd.arg("check").arg("--config").arg(&cfg);
        let (code, err, _) = run(cmd);
        assert_eq!(code, Some(0), "{key}: stderr: {err}");
    }
    let _ = fs::remove_dir_all(dir);
}
