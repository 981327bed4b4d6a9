// Worlds in a real browser (DESIGN §5, issue #8): headless Chromium logs in
// with /sigma.js, opens the session socket, forks worlds with WebCrypto
// Ed25519 keys (private key non-extractable), spawns each Worker from its
// verified /world/<command>.js URL, and relays the worker's signed messages;
// the server's replies reach that worker, and a second user never sees them.
//
// Run: node --test tests/browser/   (TEST_SIGMA_BIN picks the binary)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { apiLogin, launchBrowser, startSigma, TEST_TIMEOUT_MS } from './lib.mjs';

const USERS = [
  { name: 'alice', password: 'alice-password-1' },
  { name: 'bob', password: 'bob-password-2' },
];

/** Imports the served /sigma.js into `page` as `window.sigma`. */
async function loadSigmaJs(page, url) {
  const served = await page.request.get(`${url}/sigma.js`);
  assert.equal(served.status(), 200);
  assert.match(served.headers()['content-type'], /^text\/javascript/);
  await page.evaluate(async () => { window.sigma = await import('/sigma.js'); });
}

/** A page of `user`, logged in through sigma.js, with an open session
 * socket whose every received envelope is recorded in `window.seen`. */
async function openUser(browser, url, user, password) {
  const page = await (await browser.newContext()).newPage();
  page.on('pageerror', (e) => console.error(`[${user}] ${e}`));
  await page.goto(`${url}/auth/whoami`);
  await loadSigmaJs(page, url);
  const welcome = await page.evaluate(async ([u, p]) => {
    window.seen = [];
    window.events = [];
    await window.sigma.login(u, p);
    const s = await window.sigma.connect();
    s.ws.addEventListener('message', (e) => window.seen.push(JSON.parse(e.data)));
    s.addEventListener('error', (e) => window.events.push({ error: e.detail }));
    window.session = s;
    return { user: s.user, commands: s.commands };
  }, [user, password]);
  return { page, welcome };
}

/** Forks `command` in `page`; app events of the world go to window.events. */
function fork(page, command) {
  return page.evaluate(async (cmd) => {
    const w = await window.session.fork(cmd);
    window.worlds = window.worlds || {};
    window.worlds[w.id] = w;
    w.addEventListener('app', (e) => window.events.push({ world: w.id, ...e.detail }));
    return { id: w.id, extractable: w._key.extractable, type: w._key.type };
  }, command);
}

test('worlds: fork, signed messages both ways, isolation between users', { timeout: TEST_TIMEOUT_MS }, async () => {
  const sigma = await startSigma({ users: USERS });
  const browser = await launchBrowser();
  try {
    const a = await openUser(browser, sigma.url, 'alice', USERS[0].password);
    const b = await openUser(browser, sigma.url, 'bob', USERS[1].password);
    assert.equal(a.welcome.user, 'alice');
    assert.equal(b.welcome.user, 'bob');
    assert.ok(a.welcome.commands.some((c) => c.name === 'echo' && c.code === '/world/echo.js'));

    // Alice forks an echo world: the worker greets, sigma verifies the
    // signed message and &echo's reply comes back to that worker.
    const wa = await fork(a.page, 'echo');
    assert.equal(wa.type, 'private');
    assert.equal(wa.extractable, false, 'the world key is not extractable');
    await a.page.waitForFunction(
      (id) => window.events.some((e) => e.world === id && e.echoed === 'hello from the echo world'),
      wa.id, { timeout: 10_000 });
    await a.page.evaluate((id) => window.worlds[id].post('second message'), wa.id);
    await a.page.waitForFunction(
      (id) => window.events.some((e) => e.world === id && e.echoed === 'second message'),
      wa.id, { timeout: 10_000 });
    // What the server sent: world envelopes for that world only, stamped
    // with an increasing Lamport clock.
    const seenA = await a.page.evaluate(() => window.seen);
    const worldMsgs = seenA.filter((m) => m.type === 'world');
    assert.deepEqual(worldMsgs.map((m) => m.body), ['hello from the echo world', 'second message']);
    assert.ok(worldMsgs.every((m) => m.world === wa.id));
    const stamps = seenA.map((m) => m.lamport);
    assert.deepEqual(stamps, [...stamps].sort((x, y) => x - y));
    assert.equal(new Set(stamps).size, stamps.length);
    assert.deepEqual(await a.page.evaluate(() => window.events.filter((e) => e.error)), []);

    // Bob runs his own echo world at the same time; neither sees the other's.
    const wb = await fork(b.page, 'echo');
    await b.page.waitForFunction(
      (id) => window.events.some((e) => e.world === id && e.echoed === 'hello from the echo world'),
      wb.id, { timeout: 10_000 });
    await a.page.evaluate((id) => window.worlds[id].post('for alice only'), wa.id);
    await a.page.waitForFunction(
      (id) => window.events.some((e) => e.world === id && e.echoed === 'for alice only'),
      wa.id, { timeout: 10_000 });
    const seenB = await b.page.evaluate(() => window.seen);
    assert.ok(!JSON.stringify(seenB).includes(wa.id), 'bob never sees alice\'s world');
    assert.ok(!JSON.stringify(seenB).includes('for alice only'));
    assert.ok(!JSON.stringify(seenB).includes('second message'));
    const eventsB = await b.page.evaluate(() => window.events);
    assert.ok(eventsB.every((e) => e.world === wb.id), JSON.stringify(eventsB));

    // A world message Bob's page forges for Alice's world (it has no key
    // for it; it signs with its own world's key) is refused by sigma.
    await b.page.evaluate(async ([target, own]) => {
      const s = window.session;
      const w = window.worlds[own];
      const lamport = s.lamport + 1;
      const sig = await crypto.subtle.sign({ name: 'Ed25519' }, w._key,
        new TextEncoder().encode(`${target}\n${lamport}\nforged`));
      s._send({ type: 'world', world: target, body: 'forged', sig: window.sigma.b64url(sig) });
    }, [wa.id, wb.id]);
    await b.page.waitForFunction(() => window.events.some((e) => e.error && /unknown world/.test(e.error)),
      null, { timeout: 10_000 });

    // Disconnect ends the world: sigma stops answering for it.
    await a.page.evaluate((id) => window.worlds[id].disconnect(), wa.id);
    await a.page.waitForFunction(
      (id) => window.seen.some((m) => m.type === 'disconnect' && m.world === id), wa.id, { timeout: 10_000 });
  } finally {
    await browser.close();
    await sigma.stop();
  }
});

test('worlds: the chat demo world carries messages between users', { timeout: TEST_TIMEOUT_MS }, async () => {
  const sigma = await startSigma({ users: USERS });
  const browser = await launchBrowser();
  try {
    const a = await openUser(browser, sigma.url, 'alice', USERS[0].password);
    const b = await openUser(browser, sigma.url, 'bob', USERS[1].password);
    const wa = await fork(a.page, 'chat');
    const wb = await fork(b.page, 'chat');
    for (const [p, w] of [[a.page, wa], [b.page, wb]]) {
      await p.waitForFunction((id) => window.events.some((e) => e.world === id && e.joined === 'public:chat'),
        w.id, { timeout: 10_000 });
    }
    await a.page.evaluate((id) => window.worlds[id].post('hi bob'), wa.id);
    await b.page.waitForFunction(
      (id) => window.events.some((e) => e.world === id && e.from === 'alice' && e.text === 'hi bob'),
      wb.id, { timeout: 10_000 });

    // The web page's demo (worlds.js) does the same for a signed-in user:
    // its chat world's messages reach Bob's world.
    const page = await (await browser.newContext()).newPage();
    page.on('pageerror', (e) => console.error(`[page] ${e}`));
    assert.equal(await apiLogin(page, sigma.url, 'alice', USERS[0].password), 200);
    await page.goto(`${sigma.url}/`);
    await page.waitForFunction(() => /joined public:chat/.test(document.getElementById('worlds-status').textContent),
      null, { timeout: 10_000 });
    await page.fill('#worlds-input', 'from the demo page');
    await page.click('#worlds-form button[type=submit]');
    await page.waitForFunction(() => [...document.querySelectorAll('#worlds-log li')]
      .some((li) => li.textContent === 'alice: from the demo page'), null, { timeout: 10_000 });
    await b.page.waitForFunction(
      (id) => window.events.some((e) => e.world === id && e.from === 'alice' && e.text === 'from the demo page'),
      wb.id, { timeout: 10_000 });
  } finally {
    await browser.close();
    await sigma.stop();
  }
});

test('worlds: sigma.js settles every fork, on error and on close', { timeout: TEST_TIMEOUT_MS }, async () => {
  const sigma = await startSigma({ users: USERS });
  const browser = await launchBrowser();
  try {
    const a = await openUser(browser, sigma.url, 'alice', USERS[0].password);
    const got = await a.page.evaluate(async () => {
      const s = window.session;
      // A guard only: a promise that never settles shows up as 'pending'.
      const outcome = (p) => Promise.race([
        p.then(() => 'resolved', (e) => `rejected: ${e.message}`),
        new Promise((r) => { setTimeout(() => r('pending'), 10_000); }),
      ]);
      // The server answers this fork with `error` (a command name longer
      // than an envelope allows), not with fork-cookie or fork-refused.
      const long = 'x'.repeat(65);
      s.commands.push({ name: long, code: `/world/${long}.js` });
      const onError = await outcome(s.fork(long));
      // A fork sent just before the socket closes never gets its answer.
      const send = s._send.bind(s);
      s._send = (obj) => {
        const n = send(obj);
        if (obj.type === 'fork') s.ws.close();
        return n;
      };
      const onClose = await outcome(s.fork('echo'));
      const afterClose = await outcome(s.fork('echo'));
      return { onError, onClose, afterClose, pending: s._forks.size };
    });
    assert.match(got.onError, /^rejected: refused \(bad_message\): .*command/);
    assert.match(got.onClose, /^rejected: session socket closed/);
    assert.match(got.afterClose, /^rejected: session socket closed/);
    assert.equal(got.pending, 0);
  } finally {
    await browser.close();
    await sigma.stop();
  }
});
