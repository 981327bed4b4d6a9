// The `Client` of /sigma.js (DESIGN §6, issue #19) in headless Chromium:
// &broadcast (subscribe, publish, presence, history, join/leave, refusals),
// &db (get, put with ifMatch, delete, list, watch) and recovery across a
// cut connection: a TCP proxy between the browser and sigma drops every
// socket, messages published over HTTP meanwhile all arrive after the
// Client reconnects, in order and exactly once, requests in flight
// reject, and the `state` events are seen; the bundled page's chat
// recovers the same way. Every wait is on an event or a promise, never a sleep.
//
// Run: node --test tests/browser/   (TEST_SIGMA_BIN picks the binary)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  apiLogin, launchBrowser, nodeLogin, startProxy, startSigma, TEST_TIMEOUT_MS,
} from './lib.mjs';

const USERS = [
  { name: 'alice', password: 'alice-password-1' },
  { name: 'bob', password: 'bob-password-22' },
];

// room:* hears joins and leaves; small:* keeps only 2 messages, so that
// a cut longer than that cannot be recovered.
const CONFIG = `
[[broadcast.rule]]
pattern = "room:*"
subscribe = "logged_in"
publish = "logged_in"
join_leave = true

[[broadcast.rule]]
pattern = "small:*"
subscribe = "logged_in"
publish = "logged_in"
history_size = 2
`;

const WAIT = { timeout: 15_000 };

/**
 * A page of `user` at `url` (sigma, or the proxy in front of it), logged
 * in, with /sigma.js imported and `window.client = new Client(options)`.
 * `window.states` records the client's state events.
 */
async function openClient(browser, url, user, password, options = {}) {
  const page = await (await browser.newContext()).newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(`[${user}] ${e.message}`));
  await page.goto(`${url}/auth/whoami`);
  assert.equal(await apiLogin(page, url, user, password), 200);
  await page.evaluate(async (opts) => {
    window.sigma = await import('/sigma.js');
    window.client = new window.sigma.Client(opts);
    window.states = [];
    window.client.on('state', (s) => window.states.push(s));
  }, options);
  return { page, errors };
}

/** Publishes `data` on `channel` over HTTP from Node; returns the seq. */
async function httpPublish(url, cookie, channel, data) {
  const r = await fetch(`${url}/broadcast/${channel}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', cookie },
    body: JSON.stringify(data),
  });
  const body = await r.text();
  assert.equal(r.status, 202, `publish on ${channel}: ${body}`);
  return JSON.parse(body).seq;
}

test('client: subscribe, publish, presence, history, join/leave, refusals', { timeout: TEST_TIMEOUT_MS }, async () => {
  const sigma = await startSigma({ config: CONFIG, users: USERS });
  const browser = await launchBrowser();
  try {
    const a = await openClient(browser, sigma.url, 'alice', USERS[0].password);
    const b = await openClient(browser, sigma.url, 'bob', USERS[1].password);

    // Alice subscribes first: `ready` gives the subscribed info.
    const readyA = await a.page.evaluate(async () => {
      window.got = [];
      window.joins = [];
      window.sub = window.client.subscribe('room:1', {
        onMessage: (data, m) => window.got.push({ data, seq: m.seq, from: m.from }),
        onJoin: (u) => window.joins.push(`join ${u}`),
        onLeave: (u) => window.joins.push(`leave ${u}`),
      });
      return window.sub.ready;
    });
    assert.equal(readyA.channel, 'room:1');
    assert.equal(readyA.seq, 0);
    assert.equal(typeof readyA.epoch, 'string');
    assert.deepEqual(await a.page.evaluate(() => [window.client.state, window.states]),
      ['connected', ['connecting', 'connected']]);

    // Bob's subscription is a join for alice.
    await b.page.evaluate(async () => {
      window.got = [];
      window.sub = window.client.subscribe('room:1', {
        onMessage: (data, m) => window.got.push({ data, seq: m.seq, from: m.from }),
      });
      await window.sub.ready;
    });
    await a.page.waitForFunction(() => window.joins.includes('join bob'), null, WAIT);

    // Alice publishes: {seq}; both subscribers get it, from = alice.
    const pub = await a.page.evaluate(() => window.client.publish('room:1', { text: 'hi bob' }));
    assert.deepEqual(pub, { seq: 1 });
    await b.page.waitForFunction(() => window.got.length === 1, null, WAIT);
    assert.deepEqual(await b.page.evaluate(() => window.got),
      [{ data: { text: 'hi bob' }, seq: 1, from: 'alice' }]);
    await a.page.waitForFunction(() => window.got.length === 1, null, WAIT);
    // Several publishes in flight at once resolve with their own seqs.
    const seqs = await b.page.evaluate(() => Promise.all(
      [2, 3, 4].map((n) => window.client.publish('room:1', { n }).then((r) => r.seq))));
    assert.deepEqual(seqs, [2, 3, 4]);
    await a.page.waitForFunction(() => window.got.length === 4, null, WAIT);
    assert.deepEqual(await a.page.evaluate(() => window.got.map((m) => m.seq)), [1, 2, 3, 4]);

    // Presence: both users, once each.
    const users = await a.page.evaluate(() => window.client.presence('room:1'));
    assert.deepEqual(users, [{ user: 'alice', connections: 1 }, { user: 'bob', connections: 1 }]);

    // History: the kept messages, with the epoch of the subscription.
    const hist = await a.page.evaluate(() => window.client.history('room:1', { limit: 2 }));
    assert.equal(hist.epoch, readyA.epoch);
    assert.equal(hist.seq, 4);
    assert.deepEqual(hist.messages.map((m) => [m.seq, m.data]), [[3, { n: 3 }], [4, { n: 4 }]]);

    // A subscription with `since` from history starts after it.
    const since = await b.page.evaluate(async (h) => {
      window.got2 = [];
      window.recover2 = [];
      let both;
      const arrived = new Promise((ok) => { both = ok; });
      const s = window.client.subscribe('public:since', {
        onMessage: (data, m) => { window.got2.push(m.seq); if (window.got2.length === 2) both(); },
        onRecover: (i) => window.recover2.push(i.recovered),
      });
      await s.ready;
      await window.client.publish('public:since', 1);
      await window.client.publish('public:since', 2);
      await arrived;
      const hist2 = await window.client.history('public:since');
      await s.unsubscribe();
      await window.client.publish('public:since', 3);
      const again = window.client.subscribe('public:since', {
        since: { seq: hist2.seq, epoch: hist2.epoch },
        onMessage: (data, m) => window.got2.push(m.seq),
        onRecover: (i) => window.recover2.push(i.recovered),
      });
      return again.ready;
    }, hist);
    assert.equal(since.recovered, true);
    await b.page.waitForFunction(() => window.got2.length === 3, null, WAIT);
    assert.deepEqual(await b.page.evaluate(() => [window.got2, window.recover2]), [[1, 2, 3], [true]]);

    // Refusals reject with sigma's error code; the socket stays usable.
    const refused = await a.page.evaluate(async () => {
      const out = {};
      try { await window.client.publish('user:bob:inbox', 1); } catch (e) { out.publish = e.code; }
      const s = window.client.subscribe('user:bob:inbox', { onError: (e) => { out.onError = e.code; } });
      try { await s.ready; } catch (e) { out.subscribe = e.code; }
      try { await window.client.presence('nope!'); } catch (e) { out.presence = e.code; }
      try { window.client.subscribe('room:1'); } catch (e) { out.twice = e.code; }
      out.after = (await window.client.publish('room:1', 'still here')).seq;
      return out;
    });
    assert.deepEqual(refused, {
      publish: 'forbidden', subscribe: 'forbidden', onError: 'forbidden',
      presence: 'bad_channel', twice: 'already_subscribed', after: 5,
    });

    // Bob unsubscribes: alice hears the leave and bob gets nothing more.
    await b.page.evaluate(() => window.sub.unsubscribe());
    await a.page.waitForFunction(() => window.joins.includes('leave bob'), null, WAIT);
    assert.deepEqual(await a.page.evaluate(() => window.joins), ['join bob', 'leave bob']);

    // close(): state disconnected, no more requests.
    const closed = await a.page.evaluate(async () => {
      window.client.close();
      let code = null;
      try { await window.client.publish('room:1', 'late'); } catch (e) { code = e.code; }
      return { state: window.client.state, last: window.states.at(-1), code };
    });
    assert.deepEqual(closed, { state: 'disconnected', last: 'disconnected', code: 'closed' });
    await b.page.evaluate(() => window.client.close());
    assert.deepEqual([...a.errors, ...b.errors], []);
  } finally {
    await browser.close();
    await sigma.stop();
  }
});

test('client: db get, put with ifMatch, delete, list, watch', { timeout: TEST_TIMEOUT_MS }, async () => {
  const sigma = await startSigma({ users: USERS });
  const browser = await launchBrowser();
  try {
    const a = await openClient(browser, sigma.url, 'alice', USERS[0].password);
    const r = await a.page.evaluate(async () => {
      const db = window.client.db;
      const out = {};
      out.missing = await db.get('todo/1');
      window.changes = [];
      const w = db.watch('todo/', (c) => window.changes.push(c));
      await w.ready;
      out.put1 = await db.put('todo/1', 'milk');
      out.get1 = await db.get('todo/1');
      try { await db.put('todo/1', 'eggs', { ifMatch: '"v999999"' }); } catch (e) { out.stale = e.code; }
      out.put2 = await db.put('todo/1', 'eggs', { ifMatch: out.put1.etag });
      try { await db.put('todo/1', 'x', { ifNoneMatch: '*' }); } catch (e) { out.createOnly = e.code; }
      out.put3 = await db.put('todo/2', new Uint8Array([0xff, 0, 1]));
      const bytes = await db.get('todo/2');
      out.bytes = [bytes.value instanceof Uint8Array, [...bytes.value], bytes.contentType];
      await db.put('other', 'not watched');
      out.list = (await db.list('todo/')).map((i) => [i.key, i.size]);
      out.page = (await db.list('todo/', { limit: 1 })).map((i) => i.key);
      out.deleted = await db.delete('todo/1');
      out.deletedAgain = await db.delete('todo/1');
      out.gone = await db.get('todo/1');
      try { await db.get('../x'); } catch (e) { out.invalid = e.code; }
      return out;
    });
    assert.equal(r.missing, null);
    assert.equal(r.put1.created, true);
    assert.match(r.put1.etag, /^"v\d+"$/);
    assert.deepEqual(r.get1, { value: 'milk', etag: r.put1.etag, contentType: 'text/plain; charset=utf-8' });
    assert.equal(r.stale, 'precondition_failed');
    assert.equal(r.put2.created, false);
    assert.notEqual(r.put2.etag, r.put1.etag);
    assert.equal(r.createOnly, 'precondition_failed');
    assert.deepEqual(r.bytes, [true, [0xff, 0, 1], 'application/octet-stream']);
    assert.deepEqual(r.list, [['todo/1', 4], ['todo/2', 3]]);
    assert.deepEqual(r.page, ['todo/1']);
    assert.deepEqual([r.deleted, r.deletedAgain, r.gone], [true, false, null]);
    assert.equal(r.invalid, 'invalid_key');

    // The watch saw every change under todo/, in commit order, and not `other`.
    await a.page.waitForFunction(() => window.changes.length === 4, null, WAIT);
    assert.deepEqual(await a.page.evaluate(() => window.changes), [
      { key: 'todo/1', etag: r.put1.etag },
      { key: 'todo/1', etag: r.put2.etag },
      { key: 'todo/2', etag: r.put3.etag },
      { key: 'todo/1', etag: null },
    ]);

    // A change from another connection (HTTP, from Node) reaches the watch too.
    const cookie = await nodeLogin(sigma.url, 'alice', USERS[0].password);
    const put = await fetch(`${sigma.url}/db/todo/3`, {
      method: 'PUT', headers: { cookie, 'content-type': 'text/plain' }, body: 'bread',
    });
    assert.equal(put.status, 201);
    await a.page.waitForFunction(() => window.changes.length === 5, null, WAIT);
    assert.deepEqual(await a.page.evaluate(() => window.changes[4]),
      { key: 'todo/3', etag: put.headers.get('etag') });

    // Bob's namespace is his own.
    const b = await openClient(browser, sigma.url, 'bob', USERS[1].password);
    assert.equal(await b.page.evaluate(() => window.client.db.get('todo/3')), null);
    assert.deepEqual([...a.errors, ...b.errors], []);
  } finally {
    await browser.close();
    await sigma.stop();
  }
});

test('client: a cut connection loses no message (reconnect, since, state events)', { timeout: TEST_TIMEOUT_MS }, async () => {
  const sigma = await startSigma({ config: CONFIG, users: USERS });
  const proxy = await startProxy(sigma.port);
  const browser = await launchBrowser();
  try {
    const a = await openClient(browser, proxy.url, 'alice', USERS[0].password,
      { minDelay: 50, maxDelay: 500 });
    const cookie = await nodeLogin(sigma.url, 'bob', USERS[1].password);

    await a.page.evaluate(async () => {
      window.got = [];
      window.small = [];
      window.recovers = [];
      window.changes = [];
      window.resyncs = 0;
      const c = window.client;
      const s1 = c.subscribe('public:feed', {
        onMessage: (d, m) => window.got.push([m.seq, d.n]),
        onRecover: (i) => window.recovers.push(['feed', i.recovered]),
      });
      const s2 = c.subscribe('small:feed', {
        onMessage: (d, m) => window.small.push([m.seq, d.n]),
        onRecover: (i) => window.recovers.push(['small', i.recovered, i.seq]),
      });
      const w = c.db.watch('w/', (ch) => window.changes.push(ch.key), {
        onResync: () => { window.resyncs += 1; },
      });
      await Promise.all([s1.ready, s2.ready, w.ready]);
    });
    assert.equal(await a.page.evaluate(() => window.client.state), 'connected');

    for (const n of [1, 2]) assert.equal(await httpPublish(sigma.url, cookie, 'public:feed', { n }), n);
    assert.equal(await httpPublish(sigma.url, cookie, 'small:feed', { n: 1 }), 1);
    await a.page.waitForFunction(() => window.got.length === 2 && window.small.length === 1, null, WAIT);

    // Requests in flight when the socket drops reject with `disconnected`:
    // held by the proxy, they never reach sigma.
    proxy.hold();
    await a.page.evaluate(() => {
      const code = (p) => p.then(() => 'answered', (e) => e.code);
      window.lost = Promise.all([
        code(window.client.publish('public:feed', { n: 'lost' })),
        code(window.client.db.get('w/x')),
      ]);
    });
    // Cut: every socket through the proxy drops, new ones are refused.
    const before = await a.page.evaluate(() => window.states.length);
    proxy.cut();
    assert.deepEqual(await a.page.evaluate(() => window.lost), ['disconnected', 'disconnected']);
    await a.page.waitForFunction((i) => window.states.slice(i).includes('disconnected'), before, WAIT);
    // The client keeps retrying (each attempt refused) while the cut lasts.
    await a.page.waitForFunction((i) => window.states.slice(i).includes('connecting'), before, WAIT);

    // Published while cut: 5 on the feed, 4 on small:feed (which keeps 2).
    for (const n of [3, 4, 5, 6, 7]) assert.equal(await httpPublish(sigma.url, cookie, 'public:feed', { n }), n);
    for (const n of [2, 3, 4, 5]) assert.equal(await httpPublish(sigma.url, cookie, 'small:feed', { n }), n);
    // A publish made while disconnected waits and is sent once reconnected.
    await a.page.evaluate(() => {
      window.queued = window.client.publish('public:feed', { n: 8 });
    });

    proxy.restore();
    assert.equal(await a.page.evaluate(() => window.queued.then((r) => r.seq)), 8);
    await a.page.waitForFunction(() => window.got.length >= 8 && window.client.state === 'connected', null, WAIT);
    assert.equal(await httpPublish(sigma.url, cookie, 'public:feed', { n: 9 }), 9);
    assert.equal(await httpPublish(sigma.url, cookie, 'small:feed', { n: 6 }), 6);
    await a.page.waitForFunction(() => window.got.length >= 9 && window.small.length >= 2, null, WAIT);

    const seen = await a.page.evaluate(() => ({
      got: window.got, small: window.small, recovers: window.recovers, states: window.states,
    }));
    // Every message of the feed, in order, exactly once.
    assert.deepEqual(seen.got, [1, 2, 3, 4, 5, 6, 7, 8, 9].map((n) => [n, n]));
    // small:feed could not be recovered: told so, then live from seq 5.
    assert.deepEqual(seen.recovers.sort(), [['feed', true], ['small', false, 5]]);
    assert.deepEqual(seen.small, [[1, 1], [6, 6]]);
    // State events: connected, then disconnected by the cut, retries, connected again.
    assert.deepEqual(seen.states.slice(0, 2), ['connecting', 'connected']);
    assert.equal(seen.states[before], 'disconnected');
    assert.equal(seen.states.at(-1), 'connected');
    for (let i = 1; i < seen.states.length; i += 1) assert.notEqual(seen.states[i], seen.states[i - 1]);

    // The db watch is re-established: a later change is pushed again.
    await a.page.waitForFunction(() => window.resyncs === 1, null, WAIT);
    const put = await fetch(`${sigma.url}/db/w/after-cut`, {
      method: 'PUT', headers: { cookie: await nodeLogin(sigma.url, 'alice', USERS[0].password) }, body: 'x',
    });
    assert.equal(put.status, 201);
    await a.page.waitForFunction(() => window.changes.includes('w/after-cut'), null, WAIT);
    assert.ok(proxy.accepted() > 3, 'the client retried through the proxy');
    assert.deepEqual(a.errors, []);
  } finally {
    await browser.close();
    await proxy.close();
    await sigma.stop();
  }
});

test('web page: the chat recovers across a cut, history shown after a reload', { timeout: TEST_TIMEOUT_MS }, async () => {
  const sigma = await startSigma({ users: USERS });
  const proxy = await startProxy(sigma.port);
  const browser = await launchBrowser();
  try {
    const page = await (await browser.newContext()).newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${proxy.url}/auth/whoami`);
    assert.equal(await apiLogin(page, proxy.url, 'alice', USERS[0].password), 200);
    await page.goto(`${proxy.url}/`);
    await page.locator('#chat[data-ready="true"]').waitFor(WAIT);
    const cookie = await nodeLogin(sigma.url, 'bob', USERS[1].password);
    await httpPublish(sigma.url, cookie, 'public:lobby', { text: 'before the cut' });
    await page.locator('#chat-log li', { hasText: 'before the cut' }).waitFor(WAIT);

    proxy.cut();
    await page.locator('#chat-status', { hasText: 'Disconnected' }).waitFor(WAIT);
    await page.locator('#chat:not([data-ready])').waitFor(WAIT);
    for (const n of [1, 2, 3]) await httpPublish(sigma.url, cookie, 'public:lobby', { text: `during the cut ${n}` });
    proxy.restore();
    await page.locator('#chat[data-ready="true"]').waitFor(WAIT);
    await page.locator('#chat-log li', { hasText: 'during the cut 3' }).waitFor(WAIT);
    await httpPublish(sigma.url, cookie, 'public:lobby', { text: 'after the cut' });
    await page.locator('#chat-log li', { hasText: 'after the cut' }).waitFor(WAIT);
    const lines = ['before the cut', 'during the cut 1', 'during the cut 2', 'during the cut 3', 'after the cut']
      .map((t) => `bob${t}`);
    assert.deepEqual(await page.locator('#chat-log li').allTextContents(), lines);
    assert.equal(await page.locator('#chat-status').textContent(), 'Connected.');

    // A reload shows the same lines, from the channel's history.
    await page.reload();
    await page.locator('#chat[data-ready="true"]').waitFor(WAIT);
    assert.deepEqual(await page.locator('#chat-log li').allTextContents(), lines);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await proxy.close();
    await sigma.stop();
  }
});
