// Helpers shared by every browser test (run: `node --test tests/browser/`).
//
// startSigma() runs the real sigma binary ($TEST_SIGMA_BIN, default
// target/release/sigma) on a loopback port with a fresh data directory and
// learns its address by reading stdout up to the `listening on ADDR` line; no
// test sleeps to synchronise. launchBrowser() starts Debian's headless
// Chromium through playwright-core.
//
// Over TLS (DESIGN §2a, issue #16): with TEST_SIGMA_TLS_DIR=DIR (made by
// `node tests/browser/tls-ca.mjs DIR`: a test CA and a certificate for
// 127.0.0.1 it signed), startSigma() runs sigma on `T…[SHA]` with that
// certificate and returns https:// URLs, and launchBrowser() makes Chromium
// accept the certificate (--ignore-certificate-errors-spki-list with its
// key's hash). Run node with NODE_EXTRA_CA_CERTS=DIR/ca.pem so that
// playwright's own requests (page.request) trust the test CA too:
//   node tests/browser/tls-ca.mjs /tmp/t
//   TEST_SIGMA_TLS_DIR=/tmp/t NODE_EXTRA_CA_CERTS=/tmp/t/ca.pem node --test tests/browser/

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, openSync, closeSync } from 'node:fs';
import { connect as netConnect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

/** Repository root. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The sigma binary under test. */
export const SIGMA_BIN = resolve(process.env.TEST_SIGMA_BIN || join(ROOT, 'target', 'release', 'sigma'));

/** The test CA's directory when the suite runs over TLS (see the top). */
export const TLS_DIR = process.env.TEST_SIGMA_TLS_DIR || '';

/** `https` over TLS, else `http`. */
export const SCHEME = TLS_DIR ? 'https' : 'http';

/** Hang guard for starting sigma and for each browser step. */
export const START_TIMEOUT_MS = 20_000;

/** Per-test timeout to pass to `test(name, { timeout: TEST_TIMEOUT_MS }, fn)`. */
export const TEST_TIMEOUT_MS = 60_000;

/** The environment for sigma: no inherited SIGMA_* variables, quiet logs. */
function sigmaEnv(extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('SIGMA_')) env[k] = v;
  }
  env.SIGMA_LOG = 'warn';
  return { ...env, ...extra };
}

/** A free loopback TCP port (only for configs that must know the port in advance). */
export function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.on('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

/**
 * Starts `sigma serve` with `config` (a TOML string, or a function
 * `({port, url}) => TOML` when the config must name its own address, e.g. an
 * OAuth redirect URI) and the given users (created first with
 * `sigma user add NAME --password-stdin --data DIR`).
 *
 * Returns `{url, addr, port, dir, stderr(), stop()}`; `url` is
 * `http://127.0.0.1:PORT` without a trailing slash. Always `await stop()`.
 */
export async function startSigma({ config = '', users = [], env = {} } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'sigma-browser-'));
  const data = join(dir, 'data');
  const cfgPath = join(dir, 'sigma.toml');
  let port = 0;
  let toml = config;
  if (typeof config === 'function') {
    port = await freePort();
    toml = config({ port, url: `${SCHEME}://127.0.0.1:${port}` });
  }
  if (TLS_DIR) {
    toml += `\n[tls]\ncert = "${join(TLS_DIR, 'leaf.pem')}"\nkey = "${join(TLS_DIR, 'leaf.key')}"\n`;
  }
  // Also set in the file, the CLI flag wins; port 0 = an ephemeral port.
  const pipeline = `T127.0.0.1:${port}[${TLS_DIR ? 'S' : ''}HA]`;
  writeFileSync(cfgPath, toml);

  for (const u of users) {
    const r = spawnSync(SIGMA_BIN, ['user', 'add', u.name, '--password-stdin', '--data', data], {
      input: `${u.password}\n`,
      env: sigmaEnv(env),
      encoding: 'utf8',
      timeout: START_TIMEOUT_MS,
    });
    if (r.status !== 0) {
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`sigma user add ${u.name} failed (${r.status}): ${r.stderr}${r.error ?? ''}`);
    }
  }

  const errPath = join(dir, 'stderr.log');
  const errFd = openSync(errPath, 'w');
  const child = spawn(
    SIGMA_BIN,
    ['serve', '--config', cfgPath, '--data', data, '--pipeline', pipeline, '--workers', '2'],
    { cwd: dir, env: sigmaEnv(env), stdio: ['ignore', 'pipe', errFd] },
  );
  closeSync(errFd);
  const stderr = () => {
    try {
      return readFileSync(errPath, 'utf8');
    } catch {
      return '';
    }
  };
  // Settles when the process is gone, or never started ('error' without 'exit').
  const exited = new Promise((ok) => {
    child.once('exit', (code, sig) => ok({ code, sig }));
    child.once('error', (e) => ok({ error: e }));
  });

  const addr = await new Promise((ok, fail) => {
    const seen = [];
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => {
      fail(new Error(`sigma did not report its address within ${START_TIMEOUT_MS} ms; stdout: ${JSON.stringify(seen)}; stderr: ${stderr()}`));
    }, START_TIMEOUT_MS);
    child.once('error', (e) => {
      clearTimeout(timer);
      fail(new Error(`cannot run ${SIGMA_BIN}: ${e.message}`));
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      fail(new Error(`sigma exited (${code}) before listening; stderr: ${stderr()}`));
    });
    lines.on('line', (line) => {
      const m = /^listening on (\S+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        ok(m[1]);
      } else {
        seen.push(line);
      }
    });
  }).catch(async (e) => {
    child.kill('SIGKILL');
    await exited;
    rmSync(dir, { recursive: true, force: true });
    throw e;
  });
  // Keep draining stdout so sigma never blocks on a full pipe.
  child.stdout.resume();

  let stopped = false;
  async function stop() {
    if (stopped) return;
    stopped = true;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const guard = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(guard);
    }
    rmSync(dir, { recursive: true, force: true });
  }

  return {
    url: `${SCHEME}://${addr}`,
    addr,
    port: Number(addr.slice(addr.lastIndexOf(':') + 1)),
    dir,
    stderr,
    stop,
  };
}

/** Chromium flags for a quiet, sandbox-less headless run (CI runs as root). */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-quic',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
];

/** Launches Debian's Chromium (/usr/bin/chromium, or $CHROMIUM_BIN). Always `await browser.close()`. */
export function launchBrowser() {
  const args = [...CHROMIUM_ARGS];
  if (TLS_DIR) {
    const spki = readFileSync(join(TLS_DIR, 'leaf.spki'), 'utf8').trim();
    args.push(`--ignore-certificate-errors-spki-list=${spki}`);
  }
  return chromium.launch({
    executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
    args,
    timeout: START_TIMEOUT_MS,
  });
}

/**
 * Logs `page`'s context in as `name` through sigma's JSON `POST /login`
 * (the session cookie lands in the browser context). Returns the status.
 */
export async function apiLogin(page, url, name, password) {
  const r = await page.request.post(`${url}/login`, {
    data: { user: name, password },
    headers: { 'content-type': 'application/json' },
  });
  return r.status();
}

/**
 * A TCP proxy on a loopback port in front of `targetPort` (sigma), for
 * tests of reconnection: `cut()` drops every connection through it and
 * refuses new ones (each is closed as soon as it is accepted) until
 * `restore()`; `hold()` first makes requests in flight go unanswered.
 * Bytes pass through untouched, so TLS works end to end and
 * the browser's origin is the proxy's (`url`). Always `await close()`.
 */
export async function startProxy(targetPort) {
  const sockets = new Set();
  const pairs = new Set(); // [down, up] of each open connection
  let cut = false;
  let accepted = 0;
  const server = createServer((down) => {
    accepted += 1;
    if (cut) {
      down.destroy();
      return;
    }
    const up = netConnect(targetPort, '127.0.0.1');
    sockets.add(down);
    sockets.add(up);
    const pair = [down, up];
    pairs.add(pair);
    const drop = () => {
      down.destroy();
      up.destroy();
      sockets.delete(down);
      sockets.delete(up);
      pairs.delete(pair);
    };
    for (const s of [down, up]) {
      s.on('error', drop);
      s.on('close', drop);
    }
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(0, '127.0.0.1', ok);
  });
  const { port } = server.address();
  return {
    url: `${SCHEME}://127.0.0.1:${port}`,
    port,
    /** Connections accepted so far (refused ones included). */
    accepted: () => accepted,
    /** Drops every connection and refuses new ones. */
    cut() {
      cut = true;
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    /** Stops forwarding what the browser sends on the open connections
     * (sigma's side still flows): requests sent now are never answered. */
    hold() {
      for (const [down, up] of pairs) {
        down.unpipe(up);
        down.pause();
      }
    },
    /** Lets connections through again. */
    restore() {
      cut = false;
    },
    close() {
      cut = true;
      for (const s of sockets) s.destroy();
      sockets.clear();
      return new Promise((ok) => server.close(() => ok()));
    },
  };
}

/**
 * Logs in from Node (JSON `POST /login`, no browser) and returns the
 * `Cookie` header value to send with later requests.
 */
export async function nodeLogin(url, name, password) {
  const r = await fetch(`${url}/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user: name, password }),
  });
  if (r.status !== 200) throw new Error(`login of ${name}: HTTP ${r.status}`);
  return r.headers.getSetCookie().map((c) => c.split(';')[0]).join('; ');
}
