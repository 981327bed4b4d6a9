//! The command line of DESIGN §9: exit status 2 with a precise message on
//! stderr for config and usage errors, 0 for a valid config.

mod common;

use std::fs;

use common::*;

fn check(toml: &str) -> (Option<i32>, String, String) {
    let (dir, path) = write_temp_config("check", toml);
    let mut cmd = sigma_cmd();
    cmd.arg("check").arg("--config").arg(&path);
    let (st, out, err) = run_bounded(cmd, None);
    let _ = fs::remove_dir_all(dir);
    (st.code(), out, err)
}

#[test]
fn check_unknown_key_exits_2_with_key_path() {
    let (code, _, err) = check("[http]\nmax_headers = 10\nmax_hedaers = 5\n");
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(
        err.contains("http.max_hedaers"),
        "key path missing from: {err}"
    );
}

#[test]
fn check_unknown_top_level_and_route_keys() {
    let (code, _, err) = check("pipelin = \"T3000[HA]\"\n");
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(err.contains("pipelin"), "{err}");

    let (code, _, err) = check("[[route]]\npath = \"/echo\"\nto = \"&echo\"\nbogus = 1\n");
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(err.contains("bogus") && err.contains("route"), "{err}");
}

#[test]
fn check_invalid_values_exit_2() {
    for (toml, needle) in [
        ("[http]\nhead_timeout = \"ten\"\n", "http.head_timeout"),
        ("[http]\nmax_headers = \"many\"\n", "http.max_headers"),
        ("[server]\nmax_connections = -1\n", "server.max_connections"),
        ("this is not toml", ""),
    ] {
        let (code, _, err) = check(toml);
        assert_eq!(code, Some(2), "{toml:?}: stderr: {err}");
        assert!(
            err.contains(needle),
            "{toml:?}: {needle} missing from: {err}"
        );
    }
}

#[test]
fn check_refuses_world_destinations_without_websocket() {
    for to in ["http://127.0.0.1:8080", "static:./www", "&web"] {
        let toml = format!(
            "[[route]]\npath = \"/ws\"\nto = \"&world\"\nauth = \"required\"\n\
             [[route]]\npath = \"/up\"\nto = \"{to}\"\n\
             [world.x]\ncode = \"builtin:echo\"\nto = \"{to}\"\n"
        );
        let (code, _, err) = check(&toml);
        assert_eq!(code, Some(2), "{to}: stderr: {err}");
        assert!(
            err.contains("world.x.to") && err.contains("WebSocket"),
            "{to}: {err}"
        );
    }
}

#[test]
fn check_missing_file_exits_2() {
    let mut cmd = sigma_cmd();
    cmd.arg("check")
        .arg("--config")
        .arg(temp_dir("missing").join("no-such.toml"));
    let (st, _, err) = run_bounded(cmd, None);
    assert_eq!(st.code(), Some(2), "stderr: {err}");
    assert!(!err.is_empty());
}

#[test]
fn check_reference_config_exits_0() {
    let full = data_dir().join("config/full.toml");
    assert!(full.exists(), "{} is missing", full.display());
    let mut cmd = sigma_cmd();
    cmd.arg("check").arg("--config").arg(&full);
    let (st, out, err) = run_bounded(cmd, None);
    assert_eq!(st.code(), Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("route /echo -> &echo"), "{out}");
}

#[test]
fn serve_bad_pipeline_exits_2_with_caret() {
    let (dir, cfg) = write_temp_config("pipe", "");
    let mut cmd = sigma_cmd();
    cmd.arg("serve")
        .arg("--config")
        .arg(&cfg)
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--pipeline")
        .arg("T30x0[HA]");
    let (st, _, err) = run_bounded(cmd, None);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(st.code(), Some(2), "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    let spec_line = lines
        .iter()
        .position(|l| l.trim_end().ends_with("T30x0[HA]") && !l.contains('"'))
        .unwrap_or_else(|| panic!("no line echoing the spec in: {err}"));
    let caret_line = lines
        .get(spec_line + 1)
        .unwrap_or_else(|| panic!("no caret line in: {err}"));
    let caret = caret_line
        .find('^')
        .unwrap_or_else(|| panic!("no caret in: {err}"));
    let x = lines[spec_line].find("T30x0[HA]").unwrap() + 3;
    assert_eq!(caret, x, "caret does not point at the `x`:\n{err}");
}

#[test]
fn serve_invalid_config_exits_2() {
    let (dir, cfg) = write_temp_config("badserve", "[http]\nmax_hedaers = 5\n");
    let mut cmd = sigma_cmd();
    cmd.arg("serve")
        .arg("--config")
        .arg(&cfg)
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--pipeline")
        .arg("T127.0.0.1:0[HA]");
    let (st, _, err) = run_bounded(cmd, None);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(st.code(), Some(2), "stderr: {err}");
    assert!(err.contains("http.max_hedaers"), "{err}");
}

#[test]
fn unknown_subcommand_exits_2() {
    let mut cmd = sigma_cmd();
    cmd.arg("frobnicate");
    let (st, _, err) = run_bounded(cmd, None);
    assert_eq!(st.code(), Some(2), "stderr: {err}");
}

/// An address already in use is a runtime failure: exit 1 (DESIGN §8),
/// with the address in the message, not the 2 of a config error.
#[test]
fn serve_on_a_busy_address_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (dir, cfg) = write_temp_config("busy", "");
    let mut cmd = sigma_cmd();
    cmd.arg("serve")
        .arg("--config")
        .arg(&cfg)
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--pipeline")
        .arg(format!("T127.0.0.1:{port}[HA]"));
    let (st, out, err) = run_bounded(cmd, None);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(st.code(), Some(1), "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    drop(taken);
}
