#!/usr/bin/env bash
# Runs every test of sigma, installing what the tests need first.
# This is the README's test command, and what CI runs (.ci/run).
#
#   1. tools: a Python virtualenv (.venv) with `websockets` and `kosoku`;
#      Debian's pebble (ACME tests of crates/sigma-tls and
#      crates/sigma/tests/tls_acme.rs) and nginx (tests behind a reverse
#      proxy); the servers the
#      cluster tests need (scripts/services.sh: PostgreSQL on 127.0.0.1:5432
#      and Redis on 127.0.0.1:6379, else Debian's postgresql and
#      redis-server started privately on free ports), exported as
#      SIGMA_TEST_POSTGRES and SIGMA_TEST_REDIS so that those tests fail
#      rather than skip
#   2. static checks: links and layout (scripts/check_*.py), cargo fmt
#      --check, cargo clippy -D warnings, and
#      that the fuzz targets still compile against the crates they drive
#   3. Rust tests: unit, sans-IO, property and integration tests (nextest)
#   4. WebSocket: Python `websockets` client tests (broadcast, proxy, worlds)
#   5. browser: headless Chromium via playwright-core (web page, OAuth against
#      oauth2-mock-server, worlds); installs chromium and the npm packages;
#      then again over TLS with a test CA (tests/browser/tls-ca.mjs)
#   6. the Autobahn testsuite (kosoku) against sigma's &echo, strict
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { printf '\n==> %s\n' "$*"; }

step "tools"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
# Debian's pebble (the test ACME server) for crates/sigma-tls/tests/pebble.rs
if [ ! -x /usr/bin/pebble ] || [ ! -x /usr/bin/pebble-challtestsrv ]; then
    if [ "$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq pebble
fi

# Debian's nginx, run by crates/sigma/tests/behind_proxy.rs as a private
# non-daemon child (its own config, pid and logs in a temp directory)
if ! [ -x /usr/sbin/nginx ] && ! command -v nginx >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx
fi

step "services (scripts/services.sh)"
source scripts/services.sh
ensure_postgres
ensure_redis

step "links in README and docs resolve inside the repository"
python3 scripts/check_links.py

step "layout: crate graph, no module cycles, no source file over 1 200 lines"
python3 scripts/check_layout.py

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "fuzz targets compile (cargo check; running them: fuzz/README.md)"
cargo check --manifest-path fuzz/Cargo.toml --bins --locked

step "cargo build --release"
cargo build --release --locked -p sigma

step "README quick start resolves to the server (cargo run --release -- ...)"
cargo run --release --locked -q -- check --config crates/sigma/tests/data/config/full.toml >/dev/null

step "Rust tests (nextest)"
# The test-only destinations (&crossed, &inspect) exist only in this build.
cargo nextest run --workspace --features sigma/test-destinations --locked --no-fail-fast

if [ -d tests/ws ]; then
    step "WebSocket client tests (python websockets)"
    TEST_SIGMA_BIN="$root/target/release/sigma" .venv/bin/python -m pytest -q tests/ws
fi

if [ -d tests/browser ]; then
    step "browser tests (headless Chromium, playwright-core)"
    if [ ! -x /usr/bin/chromium ]; then
        if [ "$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium
    fi
    # playwright-core needs Node.js >= 20 (Debian 12's own nodejs is 18).
    node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
    if [ "$node_major" -lt 20 ]; then
        echo "browser tests need Node.js >= 20 with npm (found: $(node --version 2>/dev/null || echo none))" >&2
        exit 1
    fi
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
    TEST_SIGMA_BIN="$root/target/release/sigma" node --test tests/browser/
    step "browser tests over TLS (sigma on [SHA] with a test CA, docs/tls.md)"
    tls_dir=$(mktemp -d)
    node tests/browser/tls-ca.mjs "$tls_dir" >/dev/null
    TEST_SIGMA_BIN="$root/target/release/sigma" TEST_SIGMA_TLS_DIR="$tls_dir" \
        NODE_EXTRA_CA_CERTS="$tls_dir/ca.pem" node --test tests/browser/
    rm -rf "$tls_dir"
fi

if [ -x scripts/autobahn.sh ]; then
    step "Autobahn testsuite (kosoku), strict"
    scripts/autobahn.sh
fi

printf '\nall tests passed\n'
