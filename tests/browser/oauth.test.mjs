// OAuth2 / OIDC login end to end (DESIGN §4, issue #7), over real sockets:
// sigma, a real OIDC provider on loopback (oauth2-mock-server), and a small
// GitHub stand-in (node:http) with GitHub's token and user API shapes.
// The browser is played by fetch with `redirect: 'manual'` and a tiny
// cookie jar that honours cookie paths; one test drives headless Chromium.
//
// Run: node --test tests/browser/   (TEST_SIGMA_BIN picks the binary)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { OAuth2Server } from 'oauth2-mock-server';
import { SIGMA_BIN, START_TIMEOUT_MS, freePort, launchBrowser } from './lib.mjs';

/** The environment for sigma: no inherited SIGMA_* variables, quiet logs. */
function sigmaEnv() {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('SIGMA_')));
  return { ...env, SIGMA_LOG: 'warn' };
}

/**
 * Starts sigma with `config` on `port` with its data in `dir` (kept, so a
 * second start is a restart); resolves when it listens. (lib.mjs's
 * startSigma always makes a fresh data directory; the restart test needs
 * the same one.)
 */
async function startSigma(config, port, dir) {
  fs.mkdirSync(dir, { recursive: true });
  const cfg = path.join(dir, 'sigma.toml');
  fs.writeFileSync(cfg, config);
  const errPath = path.join(dir, 'stderr');
  const stderr = fs.openSync(errPath, 'a');
  const proc = spawn(SIGMA_BIN, ['serve', '--config', cfg, '--pipeline', `T127.0.0.1:${port}[HA]`,
    '--data', path.join(dir, 'data')], { stdio: ['ignore', 'pipe', stderr], env: sigmaEnv() });
  fs.closeSync(stderr);
  const exited = new Promise((r) => proc.once('exit', r));
  const rl = readline.createInterface({ input: proc.stdout });
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`sigma did not start in ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`sigma exited (${code}): ${fs.readFileSync(errPath, 'utf8')}`));
    });
    rl.on('line', (line) => {
      const m = /^listening on (\S+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
  }).catch((e) => {
    proc.kill('SIGKILL');
    throw e;
  });
  return {
    base: `http://${addr}`,
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const guard = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(guard);
    },
  };
}

/** A cookie jar for one origin that honours Path (enough for sigma). */
class Jar {
  constructor() { this.cookies = new Map(); }
  store(res) {
    for (const sc of res.headers.getSetCookie()) {
      const [pair, ...attrs] = sc.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      let cpath = '/';
      let expired = false;
      for (const a of attrs) {
        const [k, v] = a.split('=');
        if (k.toLowerCase() === 'path') cpath = v;
        if (k.toLowerCase() === 'max-age' && Number(v) <= 0) expired = true;
      }
      const key = `${name}|${cpath}`;
      if (expired || value === '') this.cookies.delete(key);
      else this.cookies.set(key, { name, value, path: cpath, raw: sc });
    }
  }
  header(urlPath) {
    return [...this.cookies.values()]
      .filter((c) => urlPath === c.path.replace(/\/$/, '') || urlPath.startsWith(c.path))
      .map((c) => `${c.name}=${c.value}`).join('; ');
  }
  get(name) { return [...this.cookies.values()].find((c) => c.name === name); }
  clone() { const j = new Jar(); j.cookies = new Map(this.cookies); return j; }
}

/** One request; cookies go only to sigma (`sigmaBase`). */
async function step(url, jar, sigmaBase) {
  const u = new URL(url);
  const headers = {};
  if (jar && url.startsWith(sigmaBase)) {
    const c = jar.header(u.pathname);
    if (c) headers.cookie = c;
  }
  const res = await fetch(url, { redirect: 'manual', headers });
  if (jar && url.startsWith(sigmaBase)) jar.store(res);
  const body = await res.text();
  const loc = res.headers.get('location');
  return { status: res.status, location: loc ? new URL(loc, url).href : null, rawLocation: loc, body, headers: res.headers };
}

/** Follows redirects from `url` until a non-redirect or a hop that `stop` picks. */
async function follow(url, jar, sigmaBase, stop = () => false) {
  const hops = [];
  for (let i = 0; i < 10; i++) {
    const r = await step(url, jar, sigmaBase);
    hops.push({ url, ...r });
    if (!r.location || stop(r.location)) return { last: r, hops, next: r.location };
    url = r.location;
  }
  throw new Error('too many redirects');
}

function reason(r) {
  const m = /<code id="reason">([^<]*)<\/code>/.exec(r.body);
  return m && m[1];
}

async function whoami(sigma, jar) {
  const r = await step(`${sigma.base}/auth/whoami`, jar, sigma.base);
  assert.equal(r.status, 200);
  return JSON.parse(r.body);
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const decodeJwt = (t) => JSON.parse(Buffer.from(t.split('.')[1], 'base64url').toString());

// ---------------------------------------------------------------------------
// The world of these tests.

let oidc; // the OIDC provider
let gh; // the GitHub stand-in
let sigma;
let sigmaPort;
let dataDir;
let config;
const ghState = { codes: new Map(), tokens: new Map(), requests: [] };

/** Adds email claims to ID tokens (not to access tokens) while `fn` runs. */
function onIdToken(fn) {
  const listener = (token) => {
    if ('scope' in token.payload) return; // the access token
    fn(token);
  };
  oidc.service.on('beforeTokenSigning', listener);
  return () => oidc.service.off('beforeTokenSigning', listener);
}

let emailFor = 'alice@example.com';
let emailVerified = true;
let ghLogin = 'OctoCat'; // the GitHub stand-in's account name

function startGithubStandIn() {
  const srv = http.createServer(async (req, res) => {
    const u = new URL(req.url, 'http://x');
    const json = (status, body) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    ghState.requests.push(`${req.method} ${u.pathname}`);
    if (req.method === 'GET' && u.pathname === '/login/oauth/authorize') {
      const q = u.searchParams;
      if (q.get('client_id') !== 'gh-client' || q.get('code_challenge_method') !== 'S256' || !q.get('code_challenge')) {
        return json(400, { error: 'bad authorize request' });
      }
      const code = randomUUID();
      ghState.codes.set(code, { challenge: q.get('code_challenge'), redirect: q.get('redirect_uri') });
      const back = new URL(q.get('redirect_uri'));
      back.searchParams.set('code', code);
      back.searchParams.set('state', q.get('state'));
      res.writeHead(302, { location: back.href });
      return res.end();
    }
    if (req.method === 'POST' && u.pathname === '/login/oauth/access_token') {
      let body = '';
      for await (const chunk of req) body += chunk;
      const f = new URLSearchParams(body);
      if (!(req.headers.accept || '').includes('application/json')) return json(406, {});
      const saved = ghState.codes.get(f.get('code'));
      ghState.codes.delete(f.get('code')); // single use, like GitHub
      const verifierOk = saved && f.get('code_verifier')
        && b64url(createHash('sha256').update(f.get('code_verifier')).digest()) === saved.challenge;
      if (f.get('client_id') !== 'gh-client' || f.get('client_secret') !== 'gh-secret' || !saved || !verifierOk
        || f.get('redirect_uri') !== saved.redirect) {
        // GitHub answers a refused code with 200 and an error object.
        return json(200, { error: 'bad_verification_code', error_description: 'The code passed is incorrect or expired.', error_uri: 'https://docs.github.com/' });
      }
      const token = `gho_${randomUUID().replaceAll('-', '')}`;
      ghState.tokens.set(token, true);
      return json(200, { access_token: token, token_type: 'bearer', scope: 'read:user,user:email' });
    }
    const auth = (req.headers.authorization || '').replace(/^(Bearer|token) /, '');
    if (!ghState.tokens.has(auth)) return json(401, { message: 'Bad credentials' });
    if (req.method === 'GET' && u.pathname === '/user') {
      return json(200, { login: ghLogin, id: 583231, name: 'The Octocat', email: null });
    }
    if (req.method === 'GET' && u.pathname === '/user/emails') {
      return json(200, [
        { email: 'octocat@users.noreply.example', primary: false, verified: true, visibility: null },
        { email: 'octo@github.example', primary: true, verified: true, visibility: 'public' },
      ]);
    }
    return json(404, { message: 'Not Found' });
  });
  return new Promise((r) => srv.listen(0, '127.0.0.1', () => r(srv)));
}

before(async () => {
  oidc = new OAuth2Server();
  await oidc.issuer.keys.generate('RS256');
  await oidc.start(0, '127.0.0.1');
  onIdToken((t) => {
    if (emailFor === null) return;
    t.payload.email = emailFor;
    t.payload.email_verified = emailVerified;
  });
  gh = await startGithubStandIn();
  const ghBase = `http://127.0.0.1:${gh.address().port}`;
  const downPort = await freePort(); // nothing listens there
  sigmaPort = await freePort();
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sigma-oauth-'));
  fs.writeFileSync(path.join(dataDir, 'corp.secret'), 'corp-secret\n');
  config = `
[[route]]
path = "/echo"
to = "&echo"
auth = "none"

# Only members of the group admins, as an OIDC provider's groups claim says.
[[route]]
path = "/team"
to = "&echo"
allow = ["group:admins"]

[auth]
public_url = "http://127.0.0.1:${sigmaPort}"
# Every callback counts as a login attempt of 127.0.0.1; this file makes dozens.
login_per_ip_per_minute = 1000
login_per_user_per_minute = 1000

[auth.oauth.corp]
kind = "oidc"
issuer = "${oidc.issuer.url}"
client_id = "sigma-client"
client_secret_file = "${path.join(dataDir, 'corp.secret')}"
user_claim = "email"
allowed_domains = ["example.com"]

[auth.oauth.teams]
kind = "oidc"
issuer = "${oidc.issuer.url}"
client_id = "sigma-client"
client_secret_file = "${path.join(dataDir, 'corp.secret')}"
user_claim = "email"
groups_claim = "groups"

[auth.oauth.strict]
kind = "oidc"
issuer = "${oidc.issuer.url}"
client_id = "sigma-client"
user_claim = "sub"
allowed_users = ["somebody-else"]

[auth.oauth.subdom]
kind = "oidc"
issuer = "${oidc.issuer.url}"
client_id = "sigma-client"
user_claim = "sub"
allowed_domains = ["example.com"]

[auth.oauth.goog]
kind = "google"
issuer = "${oidc.issuer.url}"
client_id = "sigma-client"
client_secret = "google-secret"

[auth.oauth.down]
kind = "oidc"
issuer = "http://127.0.0.1:${downPort}"
client_id = "sigma-client"

[auth.oauth.gh]
kind = "github"
client_id = "gh-client"
client_secret = "gh-secret"
auth_url = "${ghBase}/login/oauth/authorize"
token_url = "${ghBase}/login/oauth/access_token"
api_url = "${ghBase}"

# Linked to the local password user admin (sigma creates it on first start);
# GitHub logins are case-insensitive, so is this list.
[auth.oauth.ghadmin]
kind = "github"
client_id = "gh-client"
client_secret = "gh-secret"
auth_url = "${ghBase}/login/oauth/authorize"
token_url = "${ghBase}/login/oauth/access_token"
api_url = "${ghBase}"
allowed_users = ["Admin"]
`;
  sigma = await startSigma(config, sigmaPort, path.join(dataDir, 'run'));
});

after(async () => {
  await sigma?.stop();
  await oidc?.stop();
  await new Promise((r) => (gh ? gh.close(r) : r()));
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

/** Login up to the callback: returns the jar and the callback URL (not yet fetched). */
async function toCallback(provider, next = '/echo', s = sigma) {
  const jar = new Jar();
  const start = `${s.base}/auth/${provider}/login?next=${encodeURIComponent(next)}`;
  const { hops, next: callback } = await follow(start, jar, s.base,
    (loc) => loc.startsWith(`${s.base}/auth/${provider}/callback`));
  assert.ok(callback, `no callback: ${JSON.stringify(hops.map((h) => [h.url, h.status, h.body.slice(0, 200)]))}`);
  return { jar, callback, authorize: hops[0].location };
}

// ---------------------------------------------------------------------------

test('login page shows one button per provider', async () => {
  const r = await step(`${sigma.base}/login?next=%2Fecho`, null, sigma.base);
  assert.equal(r.status, 200);
  for (const name of ['corp', 'strict', 'goog', 'down', 'gh']) {
    assert.ok(r.body.includes(`href="/auth/${name}/login?next=%2Fecho"`), name);
  }
  assert.ok(r.body.includes('Sign in with GitHub'));
  assert.ok(r.body.includes('Sign in with Google'));
});

test('OIDC: full redirect flow gives a session naming the mapped user', async () => {
  const jar = new Jar();
  let tokenRequest;
  oidc.service.once('beforeResponse', (_resp, req) => { tokenRequest = req.body; });
  const { last, hops } = await follow(`${sigma.base}/auth/corp/login?next=${encodeURIComponent('/echo?x=1')}`, jar, sigma.base);
  // sigma → provider: code flow with PKCE S256, state and nonce.
  const authz = new URL(hops[0].location);
  assert.equal(hops[0].status, 303);
  assert.equal(authz.origin, oidc.issuer.url);
  assert.equal(authz.searchParams.get('response_type'), 'code');
  assert.equal(authz.searchParams.get('code_challenge_method'), 'S256');
  assert.equal(authz.searchParams.get('redirect_uri'), `${sigma.base}/auth/corp/callback`);
  assert.ok(authz.searchParams.get('state').length >= 32);
  assert.ok(authz.searchParams.get('nonce').length >= 32);
  assert.match(authz.searchParams.get('scope'), /openid/);
  // The state cookie: short-lived, HttpOnly, Lax, scoped to the provider.
  const sc = hops[0].headers.getSetCookie().find((c) => c.startsWith('sigma_oauth='));
  assert.match(sc, /HttpOnly/);
  assert.match(sc, /SameSite=Lax/);
  assert.match(sc, /Path=\/auth\/corp\//);
  assert.match(sc, /Max-Age=600/);
  // The token request carried the PKCE verifier of that challenge.
  assert.equal(b64url(createHash('sha256').update(tokenRequest.code_verifier).digest()),
    authz.searchParams.get('code_challenge'));
  // Callback → session → next.
  const cb = hops.find((h) => h.url.includes('/auth/corp/callback'));
  assert.equal(cb.status, 303);
  assert.equal(cb.rawLocation, '/echo?x=1');
  assert.ok(cb.headers.getSetCookie().some((c) => /^sigma_oauth=;.*Max-Age=0/.test(c)), 'state cookie cleared');
  assert.ok(jar.get('sigma_session'));
  assert.equal(jar.get('sigma_oauth'), undefined);
  assert.ok(last.status < 500);
  assert.deepEqual(await whoami(sigma, jar), { user: 'alice@example.com', provider: 'oauth:corp' });
});

test('OIDC groups_claim: the valid group names reach whoami and route policies', async () => {
  const off = onIdToken((t) => { t.payload.groups = ['admins', 'Domain Users']; });
  try {
    const jar = new Jar();
    await follow(`${sigma.base}/auth/teams/login?next=%2Fecho`, jar, sigma.base);
    assert.deepEqual(await whoami(sigma, jar),
      { user: 'alice@example.com', provider: 'oauth:teams', groups: ['admins'] });
    const r = await step(`${sigma.base}/team/x`, jar, sigma.base);
    assert.equal(r.status, 200, r.body);
  } finally {
    off();
  }
  // The same login without the claim: no groups, and the policy refuses.
  const jar = new Jar();
  await follow(`${sigma.base}/auth/teams/login?next=%2Fecho`, jar, sigma.base);
  assert.deepEqual(await whoami(sigma, jar), { user: 'alice@example.com', provider: 'oauth:teams' });
  const r = await step(`${sigma.base}/team/x`, jar, sigma.base);
  assert.equal(r.status, 403, r.body);
});

test('kind = "google" (issuer pointed at the local provider) logs in too', async () => {
  const { jar, callback } = await toCallback('goog');
  const r = await step(callback, jar, sigma.base);
  assert.equal(r.status, 303, r.body);
  assert.deepEqual(await whoami(sigma, jar), { user: 'alice@example.com', provider: 'oauth:goog' });
});

test('wrong state is refused with a clear page', async () => {
  const { jar, callback } = await toCallback('corp');
  const u = new URL(callback);
  const st = u.searchParams.get('state');
  u.searchParams.set('state', (st[0] === 'x' ? 'y' : 'x') + st.slice(1));
  const r = await step(u.href, jar, sigma.base);
  assert.equal(r.status, 400);
  assert.equal(reason(r), 'oauth_bad_state');
  assert.match(r.headers.get('content-type'), /text\/html/);
  assert.equal((await whoami(sigma, jar)).user, null);
});

test('missing PKCE verifier (no state cookie) is refused before any token request', async () => {
  const { callback } = await toCallback('corp');
  let tokenCalls = 0;
  const count = () => { tokenCalls++; };
  oidc.service.on('beforeResponse', count);
  const r = await step(callback, new Jar(), sigma.base);
  oidc.service.off('beforeResponse', count);
  assert.equal(r.status, 400);
  assert.equal(reason(r), 'oauth_no_state_cookie');
  assert.equal(tokenCalls, 0);
  // A tampered cookie (the verifier sealed inside) does not open either.
  const { jar, callback: cb2 } = await toCallback('corp');
  const c = jar.get('sigma_oauth');
  const raw = Buffer.from(c.value, 'base64url');
  raw[raw.length - 1] ^= 1;
  c.value = raw.toString('base64url');
  const r2 = await step(cb2, jar, sigma.base);
  assert.equal(r2.status, 400);
  assert.equal(reason(r2), 'oauth_bad_state_cookie');
});

test('a replayed authorization code is refused', async () => {
  const { jar, callback } = await toCallback('corp');
  const captured = jar.clone(); // an attacker who also has the state cookie
  const ok = await step(callback, jar, sigma.base);
  assert.equal(ok.status, 303);
  const replay = await step(callback, captured, sigma.base);
  assert.equal(replay.status, 400);
  assert.equal(reason(replay), 'oauth_state_reused');
  assert.equal((await whoami(sigma, captured)).user, null);
  // Same browser again: its state cookie is gone.
  const again = await step(callback, jar, sigma.base);
  assert.equal(again.status, 400);
  assert.equal(reason(again), 'oauth_no_state_cookie');
});

test('the provider refusing the code gives a clear page', async () => {
  const { jar, callback } = await toCallback('corp');
  oidc.service.once('beforeResponse', (resp) => {
    resp.statusCode = 400;
    resp.body = { error: 'invalid_grant' };
  });
  const r = await step(callback, jar, sigma.base);
  assert.equal(r.status, 400);
  assert.equal(reason(r), 'oauth_code_rejected');
});

test('an oversized token response is not read', async () => {
  const { jar, callback } = await toCallback('corp');
  oidc.service.once('beforeResponse', (resp) => {
    resp.body.padding = 'x'.repeat(300 * 1024); // a valid response, too large
  });
  const r = await step(callback, jar, sigma.base);
  assert.equal(r.status, 502, r.body);
  assert.equal(reason(r), 'oauth_provider_unreachable');
  assert.equal((await whoami(sigma, jar)).user, null);
});

test('error=access_denied from the provider gives a clear page', async () => {
  oidc.service.once('beforeAuthorizeRedirect', (redirect) => {
    redirect.url.searchParams.delete('code');
    redirect.url.searchParams.set('error', 'access_denied');
  });
  const jar = new Jar();
  const { last } = await follow(`${sigma.base}/auth/corp/login`, jar, sigma.base);
  assert.equal(last.status, 403);
  assert.equal(reason(last), 'oauth_access_denied');
  assert.match(last.body, /cancelled/);
});

for (const [name, mutate, expected] of [
  ['wrong aud', (p) => { p.aud = 'someone-else'; }, 'oauth_id_token_bad_audience'],
  ['wrong nonce', (p) => { p.nonce = 'not-the-nonce'; }, 'oauth_id_token_bad_nonce'],
  ['expired', (p) => { p.exp = Math.floor(Date.now() / 1000) - 600; p.iat = p.exp - 600; }, 'oauth_id_token_expired'],
  ['wrong iss', (p) => { p.iss = 'http://127.0.0.1:1'; }, 'oauth_id_token_bad_issuer'],
]) {
  test(`ID token with ${name} is refused`, async () => {
    const { jar, callback } = await toCallback('corp');
    const off = onIdToken((t) => mutate(t.payload));
    const r = await step(callback, jar, sigma.base).finally(off);
    assert.equal(r.status, 403);
    assert.equal(reason(r), expected);
    assert.equal((await whoami(sigma, jar)).user, null);
  });
}

test('key rotation at the provider: the new kid is fetched and accepted', async () => {
  const { jar: j1, callback: c1 } = await toCallback('corp');
  assert.equal((await step(c1, j1, sigma.base)).status, 303);
  // A second key: the mock signs access tokens and ID tokens in turn, so
  // from now on every ID token carries the new kid sigma has not seen.
  const fresh = await oidc.issuer.keys.generate('RS256');
  let kid;
  const off = onIdToken((t) => { kid = t.header.kid; });
  const { jar, callback } = await toCallback('corp');
  const r = await step(callback, jar, sigma.base).finally(off);
  assert.equal(kid, fresh.kid);
  assert.equal(r.status, 303, r.body);
  assert.equal((await whoami(sigma, jar)).provider, 'oauth:corp');
});

test('key rotation: a login racing another login\'s JWKS refetch is not refused', async () => {
  // A provider of its own (its own JWKS cache and refetch limit) behind a
  // gate that can hold a token request: login B takes its snapshot of the
  // provider's keys, then waits at the token endpoint while login A meets
  // the new kid and refetches; B then must use the keys A installed.
  const rot = new OAuth2Server();
  await rot.issuer.keys.generate('RS256');
  let hold = null;
  const gate = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    if (req.method === 'POST' && req.url === '/token' && hold) {
      const h = hold;
      hold = null;
      h.arrived();
      await h.released;
    }
    const up = http.request({ host: '127.0.0.1', port: rot.address().port, method: req.method, path: req.url, headers: req.headers },
      (ur) => { res.writeHead(ur.statusCode, ur.headers); ur.pipe(res); });
    up.on('error', () => res.destroy());
    up.end(Buffer.concat(chunks));
  });
  await new Promise((r) => gate.listen(0, '127.0.0.1', r));
  rot.issuer.url = `http://127.0.0.1:${gate.address().port}`;
  await rot.start(0, '127.0.0.1');
  const port = await freePort();
  const s = await startSigma(`
[auth]
public_url = "http://127.0.0.1:${port}"
[auth.oauth.rot]
kind = "oidc"
issuer = "${rot.issuer.url}"
client_id = "sigma-client"
user_claim = "sub"
`, port, path.join(dataDir, 'rotation'));
  try {
    const first = await toCallback('rot', '/', s);
    assert.equal((await step(first.callback, first.jar, s.base)).status, 303);
    // A second key: from now on every ID token is signed with it.
    await rot.issuer.keys.generate('RS256');
    const b = await toCallback('rot', '/', s);
    let release;
    const released = new Promise((r) => { release = r; });
    const arrived = new Promise((r) => { hold = { arrived: r, released }; });
    const bDone = step(b.callback, b.jar, s.base);
    await arrived;
    const a = await toCallback('rot', '/', s);
    const ra = await step(a.callback, a.jar, s.base);
    assert.equal(ra.status, 303, ra.body);
    release();
    const rb = await bDone;
    assert.equal(rb.status, 303, rb.body);
    assert.equal((await whoami(s, b.jar)).provider, 'oauth:rot');
  } finally {
    hold = null;
    await s.stop();
    await rot.stop();
    await new Promise((r) => gate.close(r));
  }
});

test('ID token signed by an unknown key is refused', async () => {
  // Another key set (a second, never started issuer) signs a token with
  // the right claims; sigma's JWKS refetch cannot find its kid.
  const rogue = new OAuth2Server();
  await rogue.issuer.keys.generate('RS256');
  rogue.issuer.url = oidc.issuer.url;
  const forged = await rogue.issuer.buildToken({
    scopesOrTransform: (_h, p) => Object.assign(p, {
      sub: 'johndoe', aud: 'sigma-client', email: 'alice@example.com', email_verified: true,
    }),
  });
  const { jar, callback } = await toCallback('corp');
  let swapped = false;
  oidc.service.once('beforeResponse', (resp) => {
    resp.body.id_token = forged;
    swapped = true;
  });
  const r = await step(callback, jar, sigma.base);
  assert.ok(swapped, 'token endpoint was called');
  assert.equal(r.status, 403);
  assert.equal(reason(r), 'oauth_id_token_unknown_key');
});

test('open redirects in next are neutralised', async () => {
  for (const next of [`/${'a'.repeat(1100)}`, '//evil.example/x', 'https://evil.example/', '/\\evil.example', 'javascript:alert(1)', '/ok\r\nLocation: https://evil.example']) {
    const { jar, callback } = await toCallback('corp', next);
    const r = await step(callback, jar, sigma.base);
    assert.equal(r.status, 303);
    assert.equal(r.rawLocation, '/', `next=${JSON.stringify(next)}`);
  }
});

test('mapping rules: domain and unverified e-mail and allowed_users', async () => {
  emailFor = 'mallory@evil.example';
  try {
    const { jar, callback } = await toCallback('corp');
    const r = await step(callback, jar, sigma.base);
    assert.equal(r.status, 403);
    assert.equal(reason(r), 'oauth_domain_not_allowed');
  } finally {
    emailFor = 'alice@example.com';
  }
  emailVerified = false;
  try {
    const { jar, callback } = await toCallback('corp');
    const r = await step(callback, jar, sigma.base);
    assert.equal(r.status, 403);
    assert.equal(reason(r), 'oauth_unverified_email');
  } finally {
    emailVerified = true;
  }
  const { jar, callback } = await toCallback('strict');
  const r = await step(callback, jar, sigma.base);
  assert.equal(r.status, 403);
  assert.equal(reason(r), 'oauth_user_not_allowed');
  assert.equal((await whoami(sigma, jar)).user, null);
});

test('userinfo supplies the user claim when the ID token lacks it', async () => {
  emailFor = null;
  try {
    oidc.service.once('beforeUserinfo', (resp, req) => {
      assert.match(req.headers.authorization, /^Bearer /);
      resp.body = { sub: 'johndoe', email: 'Bob@Example.com', email_verified: true };
    });
    const { jar, callback } = await toCallback('corp');
    const r = await step(callback, jar, sigma.base);
    assert.equal(r.status, 303, r.body);
    assert.deepEqual(await whoami(sigma, jar), { user: 'bob@example.com', provider: 'oauth:corp' });
    // Userinfo about somebody else is not believed.
    oidc.service.once('beforeUserinfo', (resp) => {
      resp.body = { sub: 'mallory', email: 'bob@example.com', email_verified: true };
    });
    const again = await toCallback('corp');
    const r2 = await step(again.callback, again.jar, sigma.base);
    assert.equal(r2.status, 403);
    assert.equal(reason(r2), 'oauth_userinfo_subject_mismatch');
  } finally {
    emailFor = 'alice@example.com';
  }
});

test('userinfo supplies the verified address the domain rule needs', async () => {
  // user_claim = "sub" with allowed_domains, an ID token without e-mail
  // claims: the address comes from userinfo.
  emailFor = null;
  try {
    oidc.service.once('beforeUserinfo', (resp) => {
      resp.body = { sub: 'johndoe', email: 'bob@example.com', email_verified: true };
    });
    const { jar, callback } = await toCallback('subdom');
    const r = await step(callback, jar, sigma.base);
    assert.equal(r.status, 303, r.body);
    assert.deepEqual(await whoami(sigma, jar), { user: 'johndoe', provider: 'oauth:subdom' });
    oidc.service.once('beforeUserinfo', (resp) => {
      resp.body = { sub: 'johndoe', email: 'bob@other.example', email_verified: true };
    });
    const other = await toCallback('subdom');
    const r2 = await step(other.callback, other.jar, sigma.base);
    assert.equal(r2.status, 403);
    assert.equal(reason(r2), 'oauth_domain_not_allowed');
  } finally {
    emailFor = 'alice@example.com';
  }
  // An address without email_verified in the ID token: userinfo's address
  // and flag are taken together, never its flag for the token's address.
  emailVerified = undefined;
  try {
    oidc.service.once('beforeUserinfo', (resp) => {
      resp.body = { sub: 'johndoe', email: 'carol@example.com', email_verified: true };
    });
    const { jar, callback } = await toCallback('corp');
    const r = await step(callback, jar, sigma.base);
    assert.equal(r.status, 303, r.body);
    assert.equal((await whoami(sigma, jar)).user, 'carol@example.com');
  } finally {
    emailVerified = true;
  }
});

test('a provider that is down: clear page, sigma keeps serving', async () => {
  const jar = new Jar();
  const r = await step(`${sigma.base}/auth/down/login`, jar, sigma.base);
  assert.equal(r.status, 503);
  assert.equal(reason(r), 'oauth_provider_unavailable');
  assert.equal((await whoami(sigma, jar)).user, null);
  const unknown = await step(`${sigma.base}/auth/nosuch/login`, jar, sigma.base);
  assert.equal(unknown.status, 404);
});

test('GitHub (stand-in): code + PKCE → token → /user → session', async () => {
  const jar = new Jar();
  const { hops } = await follow(`${sigma.base}/auth/gh/login?next=%2Fecho`, jar, sigma.base);
  const authz = new URL(hops[0].location);
  assert.equal(authz.pathname, '/login/oauth/authorize');
  assert.equal(authz.searchParams.get('code_challenge_method'), 'S256');
  assert.deepEqual(authz.searchParams.get('scope').split(' ').sort(), ['read:user', 'user:email']);
  const cb = hops.find((h) => h.url.includes('/auth/gh/callback'));
  assert.equal(cb.status, 303, cb.body);
  assert.equal(cb.rawLocation, '/echo');
  assert.deepEqual(await whoami(sigma, jar), { user: 'octocat', provider: 'oauth:gh' });
  // A replayed code: refused by sigma (state used) and by "GitHub".
  const replay = await step(cb.url, jar, sigma.base);
  assert.equal(replay.status, 400);
});

test('GitHub (stand-in): a refused code gives a clear page', async () => {
  const { jar, callback } = await toCallback('gh');
  const u = new URL(callback);
  ghState.codes.delete(u.searchParams.get('code'));
  const r = await step(callback, jar, sigma.base);
  assert.equal(r.status, 400);
  assert.equal(reason(r), 'oauth_code_rejected');
});

test('GitHub: an account named like a local password user is refused unless linked', async () => {
  // sigma created the password user admin on first start; GitHub's
  // default user_claim = "login" maps the account "Admin" to admin.
  ghLogin = 'Admin';
  try {
    const { jar, callback } = await toCallback('gh');
    const r = await step(callback, jar, sigma.base);
    assert.equal(r.status, 403, r.body);
    assert.equal(reason(r), 'oauth_name_taken');
    assert.equal(r.headers.get('sigma-login-error'), 'oauth_name_taken');
    assert.equal((await whoami(sigma, jar)).user, null);
    // Listed in that provider's allowed_users: the operator linked them.
    const linked = await toCallback('ghadmin');
    const ok = await step(linked.callback, linked.jar, sigma.base);
    assert.equal(ok.status, 303, ok.body);
    assert.deepEqual(await whoami(sigma, linked.jar), { user: 'admin', provider: 'oauth:ghadmin' });
  } finally {
    ghLogin = 'OctoCat';
  }
  // A GitHub provider open to every account is reported at start.
  const log = fs.readFileSync(path.join(dataDir, 'run', 'stderr'), 'utf8');
  assert.match(log, /auth\.oauth\.gh: kind = "github" with neither allowed_users nor allowed_domains/);
  assert.doesNotMatch(log, /auth\.oauth\.ghadmin: kind/);
});

test('callbacks are throttled per client address (429 + Retry-After)', async () => {
  const port = await freePort();
  const small = await startSigma(`
[auth]
public_url = "http://127.0.0.1:${port}"
login_per_ip_per_minute = 2
[auth.oauth.corp]
kind = "oidc"
issuer = "${oidc.issuer.url}"
client_id = "sigma-client"
user_claim = "sub"
`, port, path.join(dataDir, 'throttle'));
  try {
    for (let i = 0; i < 2; i++) {
      const { jar, callback } = await toCallback('corp', '/', small);
      assert.equal((await step(callback, jar, small.base)).status, 303);
    }
    const { jar, callback } = await toCallback('corp', '/', small);
    const r = await step(callback, jar, small.base);
    assert.equal(r.status, 429);
    assert.equal(reason(r), 'login_throttled');
    assert.ok(Number(r.headers.get('retry-after')) >= 1);
  } finally {
    await small.stop();
  }
});

test('whoami still says oauth:<name> after a restart; a removed provider\'s sessions end', async () => {
  const { jar, callback } = await toCallback('corp');
  assert.equal((await step(callback, jar, sigma.base)).status, 303);
  const goog = await toCallback('goog');
  assert.equal((await step(goog.callback, goog.jar, sigma.base)).status, 303);
  assert.equal((await whoami(sigma, goog.jar)).provider, 'oauth:goog');
  // Restart with the same data but without [auth.oauth.goog].
  const withoutGoog = config.replace(/\[auth\.oauth\.goog\][^[]*/, '');
  assert.ok(!withoutGoog.includes('goog'));
  await sigma.stop();
  sigma = await startSigma(withoutGoog, sigmaPort, path.join(dataDir, 'run'));
  assert.deepEqual(await whoami(sigma, jar), { user: 'alice@example.com', provider: 'oauth:corp' });
  // Not valid any more, and never shown as a password session.
  assert.deepEqual(await whoami(sigma, goog.jar), { user: null, provider: null });
  const r = await fetch(`${sigma.base}/auth/token`, {
    method: 'POST', headers: { cookie: goog.jar.header('/auth/token'), origin: sigma.base },
  });
  assert.equal(r.status, 401);
});

test('headless Chromium: button → provider → back, logged in', async (t) => {
  if (!fs.existsSync(process.env.CHROMIUM_BIN || '/usr/bin/chromium')) {
    t.skip('no Chromium at /usr/bin/chromium');
    return;
  }
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage();
    await page.goto(`${sigma.base}/login?next=%2Fauth%2Fwhoami`);
    await Promise.all([
      page.waitForURL(`${sigma.base}/auth/whoami`, { timeout: 15000 }),
      page.click('a[href^="/auth/corp/login"]'),
    ]);
    const who = JSON.parse(await page.textContent('body'));
    assert.deepEqual(who, { user: 'alice@example.com', provider: 'oauth:corp' });
  } finally {
    await browser.close();
  }
});
