// sigma.js: the browser SDK of sigma (DESIGN §6; docs/sdk.md).
//
// An ES module, no dependencies. `Client` covers &broadcast (pub/sub over
// one WebSocket at /broadcast), &db (the key-value store over one
// WebSocket at /db) and worlds (`client.worlds`: the session socket at /ws,
// DESIGN §5). It reconnects with exponential backoff and full jitter, and
// resubscribes with `since` so that a short cut loses no message.
//
//   import { Client } from '/sigma.js';
//   const client = new Client();                 // same origin; sockets open on first use
//   client.on('state', (s) => console.log(s));   // connecting | connected | disconnected
//   const sub = client.subscribe('public:lobby', { onMessage: (data, m) => console.log(m.from, data) });
//   await sub.ready;                             // {channel, seq, epoch, recovered?}
//   const { seq } = await client.publish('public:lobby', { text: 'hi' });
//   await client.db.put('notes', 'milk');        // {etag, created}
//   const note = await client.db.get('notes');   // {value, etag, contentType} or null
//
// Worlds (the lower-level exports below, also as client.worlds):
//
//   import { login, connect } from '/sigma.js';
//   await login('alice', 'secret');            // sets the session cookie
//   const session = await connect();           // GET /ws, hello -> welcome
//   const world = await session.fork('echo');  // fork -> cookie -> initiate -> Worker
//   world.addEventListener('app', (e) => console.log(e.detail));
//   world.post({ hello: 1 });                  // to the worker (the worker decides what to send)
//   await world.disconnect();
//
// The worker protocol (what world code sees through postMessage):
//   worker -> page: {type:'ready'}                  the worker runs
//                   {type:'send', body: STRING}     sign and send to sigma
//                   {type:'app', data: ANY}         for the page ('app' event)
//   page -> worker: {type:'recv', body: STRING}     a message from sigma
//                   {type:'app', data: ANY}         from the page (world.post)
//                   {type:'disconnect'}             the world ends
//
// Wire format (DESIGN §5): JSON envelopes {"type": TYPE, "lamport": n, "id"?, ...};
// the page's Lamport clock ticks on send (+1) and on receive
// (max(local, r) + 1). A world message is signed over the UTF-8 bytes of
// world + "\n" + lamport + "\n" + body.
//
// Every promise settles: connect(), fork() and a worker's start reject
// when the server answers `error` or the socket closes first. An `error`
// names no message, so it fails every fork still waiting for its answer
// (forking again is safe: the server keeps no state for a fork).

const enc = new TextEncoder();

/** Unpadded base64url of bytes. */
export function b64url(bytes) {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let s = '';
  for (let i = 0; i < b.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, b.subarray(i, i + 0x8000));
  }
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** Logs in with a password (POST /login); resolves to the user name. */
export async function login(user, password) {
  const r = await fetch('/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user, password }),
    credentials: 'same-origin',
  });
  if (!r.ok) throw new Error(`login failed: ${r.status}`);
  return (await r.json()).user;
}

/** The current user (GET /auth/whoami), or null. */
export async function whoami() {
  const r = await fetch('/auth/whoami', { credentials: 'same-origin' });
  return r.ok ? (await r.json()).user : null;
}

/**
 * Opens the session socket and activates it. Resolves to a Session once
 * `welcome` arrives. Options: `url` (default ws(s)://<this host>/ws),
 * `timeout` ms (default 5000).
 */
export function connect(options = {}) {
  const url = options.url
    || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const session = new Session(ws);
    const timer = setTimeout(() => { reject(new Error('no welcome')); ws.close(); },
      options.timeout || 5000);
    session._welcomed = (err) => {
      clearTimeout(timer);
      if (err) { reject(err); ws.close(); } else resolve(session);
    };
    ws.onopen = () => session._send({ type: 'hello' });
    ws.onerror = () => { clearTimeout(timer); reject(new Error('session socket failed')); };
  });
}

/** One session socket: the user, the commands it may start, its worlds. */
export class Session extends EventTarget {
  constructor(ws) {
    super();
    this.ws = ws;
    this.lamport = 0;
    this.user = null;
    this.commands = [];
    this.worlds = new Map();
    this._forks = new Map(); // world id -> { resolve, reject } of a fork's answer
    this._chain = Promise.resolve();
    ws.onmessage = (e) => this._receive(e.data);
    ws.onclose = (e) => {
      this._fail(new Error(`session socket closed (${e.code})`));
      for (const w of this.worlds.values()) w._end();
      this.worlds.clear();
      this.dispatchEvent(new CustomEvent('close', { detail: { code: e.code, reason: e.reason } }));
    };
  }

  /** Rejects every wait for an answer: connect's welcome, pending forks. */
  _fail(err) {
    if (this._welcomed) { this._welcomed(err); this._welcomed = null; }
    const forks = [...this._forks.values()];
    this._forks.clear();
    for (const f of forks) f.reject(err);
  }

  _send(obj) {
    this.lamport += 1;
    const env = { ...obj, lamport: this.lamport };
    this.ws.send(JSON.stringify(env));
    return env.lamport;
  }

  _receive(text) {
    let msg;
    try { msg = JSON.parse(text); } catch { return; }
    if (typeof msg.lamport === 'number') this.lamport = Math.max(this.lamport, msg.lamport) + 1;
    switch (msg.type) {
      case 'welcome':
        this.user = msg.user;
        this.commands = msg.commands;
        if (this._welcomed) { this._welcomed(null); this._welcomed = null; }
        break;
      case 'fork-cookie':
      case 'fork-refused': {
        const pending = this._forks.get(msg.world);
        if (pending) { this._forks.delete(msg.world); pending.resolve(msg); }
        break;
      }
      case 'world': {
        const w = this.worlds.get(msg.world);
        if (w) w._recv(msg.body);
        break;
      }
      case 'disconnect': {
        const w = this.worlds.get(msg.world);
        if (w) { this.worlds.delete(msg.world); w._end(); }
        break;
      }
      case 'error':
        this._fail(new Error(`refused (${msg.code}): ${msg.message}`));
        this.dispatchEvent(new CustomEvent('error', { detail: msg.message }));
        break;
      default:
        break;
    }
  }

  /**
   * Forks a world running `command`: a fresh Ed25519 key pair (private key
   * non-extractable), `fork` -> `fork-cookie`, the signed initiate, and the
   * Worker started from /world/<command>.js?initiate=…&sig=…. Resolves to
   * the World once its worker runs; rejects with the refusal's reason, on
   * an `error` from the server, or when the socket closes first.
   */
  async fork(command) {
    const info = this.commands.find((c) => c.name === command);
    if (!info) throw new Error(`unknown command ${command}`);
    const keys = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
    const world = b64url(await crypto.subtle.exportKey('raw', keys.publicKey));
    const answer = await new Promise((resolve, reject) => {
      // A closing socket would drop the fork unanswered (and fire no close
      // event for a wait registered after it fired).
      if (this.ws.readyState !== WebSocket.OPEN) {
        reject(new Error('session socket closed'));
        return;
      }
      this._forks.set(world, { resolve, reject });
      this._send({ type: 'fork', world, command });
    });
    if (answer.type !== 'fork-cookie') throw new Error(`fork refused: ${answer.reason}`);
    const initiate = enc.encode(JSON.stringify({ cookie: answer.cookie, world, command }));
    const sig = await crypto.subtle.sign({ name: 'Ed25519' }, keys.privateKey, initiate);
    const url = `${info.code}?initiate=${b64url(initiate)}&sig=${b64url(sig)}`;
    const w = new World(this, world, command, keys.privateKey);
    this.worlds.set(world, w);
    try {
      await w._spawn(url);
    } catch (e) {
      this.worlds.delete(world);
      throw e;
    }
    return w;
  }

  /** Signs and sends one world message (serialised: signing is async). */
  _sendWorld(world, key, body) {
    this._chain = this._chain.then(async () => {
      if (this.ws.readyState !== WebSocket.OPEN) return;
      // The signature covers the lamport stamp. If a message arrived (or
      // was sent) while signing, the clock moved: sign again with the new
      // stamp (a few tries), else send the signed stamp as it is — it is
      // still greater than every earlier world message's.
      let lamport;
      let sig;
      for (let tries = 0; tries < 3; tries += 1) {
        lamport = this.lamport + 1;
        sig = await crypto.subtle.sign({ name: 'Ed25519' }, key,
          enc.encode(`${world}\n${lamport}\n${body}`));
        if (this.lamport + 1 === lamport) break;
      }
      this.ws.send(JSON.stringify({ type: 'world', world, body, sig: b64url(sig), lamport }));
      this.lamport = Math.max(this.lamport, lamport);
    }).catch(() => {});
    return this._chain;
  }

  /** Closes the session socket (every world ends). */
  close() { this.ws.close(1000); }
}

/** One world: its id (public key), its worker, and events `app`, `end`. */
export class World extends EventTarget {
  constructor(session, id, command, key) {
    super();
    this.session = session;
    this.id = id;
    this.command = command;
    this._key = key;
    this.worker = null;
    this.ended = false;
    this._starting = null;
  }

  _spawn(url) {
    return new Promise((resolve, reject) => {
      const worker = new Worker(url);
      this.worker = worker;
      this._starting = reject; // until 'ready'; _end rejects with it
      worker.onerror = (e) => { e.preventDefault(); reject(new Error('world code refused')); };
      worker.onmessage = (e) => {
        const m = e.data || {};
        if (m.type === 'ready') { this._starting = null; resolve(); }
        else if (m.type === 'send' && typeof m.body === 'string' && !this.ended) {
          this.session._sendWorld(this.id, this._key, m.body);
        } else if (m.type === 'app') {
          this.dispatchEvent(new CustomEvent('app', { detail: m.data }));
        }
      };
    });
  }

  _recv(body) { if (this.worker) this.worker.postMessage({ type: 'recv', body }); }

  _end() {
    if (this.ended) return;
    this.ended = true;
    if (this._starting) { this._starting(new Error('world ended before it ran')); this._starting = null; }
    if (this.worker) {
      this.worker.postMessage({ type: 'disconnect' });
      this.worker.terminate();
    }
    this.dispatchEvent(new CustomEvent('end'));
  }

  /** Sends app data to the worker. */
  post(data) { if (this.worker && !this.ended) this.worker.postMessage({ type: 'app', data }); }

  /** Signs and sends a body on the world's behalf (as the worker would). */
  send(body) { return this.session._sendWorld(this.id, this._key, String(body)); }

  /** Ends the world (`disconnect`); resolves when the message is sent. */
  async disconnect() {
    if (this.ended) return;
    await this.session._chain;
    this.session._send({ type: 'disconnect', world: this.id });
    this.session.worlds.delete(this.id);
    this._end();
  }
}

// ---------------------------------------------------------------------------
// Client (DESIGN §6): &broadcast, &db and worlds behind one object.

/** A refusal from sigma (`code` as in docs/broadcast.md, docs/db.md), or a
 * local failure: `disconnected` (the socket closed before the answer),
 * `closed` (client.close()), `timeout`. */
export class SigmaError extends Error {
  constructor(code, message, detail = {}) {
    super(message || code);
    this.name = 'SigmaError';
    this.code = code;
    Object.assign(this, detail);
  }
}

const STATES = ['disconnected', 'connecting', 'connected'];

function b64encode(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function b64decode(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i += 1) out[i] = s.charCodeAt(i);
  return out;
}

/**
 * One reconnecting WebSocket of a Client. Requests get an `id` from a
 * counter of the current socket; every request waiting for its answer
 * fails with `disconnected` when that socket closes. Requests made while
 * the socket is (re)connecting wait for it to open.
 */
class Link {
  constructor(client, name, path, handlers) {
    this.client = client;
    this.name = name;
    this.path = path;
    this.handlers = handlers; // { open(), message(msg), close() }
    this.ws = null;
    this.state = 'disconnected';
    this.started = false;
    this.attempt = 0;
    this.timer = null;
    this.nextId = 0;
    this.pending = new Map(); // id -> entry, sent on this socket
    this.queue = []; // entries waiting for the socket to open
  }

  get open() { return this.ws !== null && this.ws.readyState === WebSocket.OPEN; }

  start() {
    if (this.started || this.client.closed) return;
    this.started = true;
    this._connect();
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.client._linkState(this);
  }

  _connect() {
    this.timer = null;
    if (this.client.closed) return;
    this._setState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.client._wsUrl(this.path));
    } catch (e) {
      this._lost(null);
      return;
    }
    this.ws = ws;
    this.nextId = 0;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.attempt = 0;
      this.handlers.open();
      const queued = this.queue;
      this.queue = [];
      for (const e of queued) this._send(e);
      this._setState('connected');
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg === null || typeof msg !== 'object') return;
      if (msg.id !== undefined && this.pending.has(msg.id)) {
        const e = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        this._settle(e, msg.type === 'error'
          ? new SigmaError(msg.code, msg.message, { channel: msg.channel }) : null, msg);
        return;
      }
      this.handlers.message(msg);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this._lost(ev);
    };
  }

  /** The socket is gone: fail what it carried, then retry after a delay. */
  _lost(ev) {
    this.ws = null;
    const err = new SigmaError('disconnected',
      `${this.name} socket closed${ev ? ` (${ev.code || 'no code'})` : ''}`, { closeCode: ev ? ev.code : 0 });
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const e of pending) this._settle(e, err, null);
    this.handlers.close(ev);
    if (this.client.closed) {
      this._setState('disconnected');
      return;
    }
    // Full jitter: uniform in [0, min(max, min * 2^attempt)].
    const { minDelay, maxDelay } = this.client.options;
    const cap = Math.min(maxDelay, minDelay * 2 ** Math.min(this.attempt, 30));
    this.attempt += 1;
    this._setState('disconnected');
    this.timer = setTimeout(() => this._connect(), Math.random() * cap);
  }

  /** Sends `obj` with a fresh id; `settle(err, answer)` is called exactly
   * once, synchronously with the answer's arrival. `queue: false` fails at
   * once when the socket is not open; `timeout: false` waits as long as
   * the socket lives (subscribe and watch, redone on every reconnect). */
  call(obj, settle, { queue = true, timeout = true } = {}) {
    const e = { obj, settle, timer: null, done: false };
    if (this.client.closed) {
      this._settle(e, new SigmaError('closed', 'the client is closed'), null);
      return e;
    }
    const ms = this.client.options.timeout;
    if (timeout && ms > 0) {
      e.timer = setTimeout(() => {
        if (e.id !== undefined) this.pending.delete(e.id);
        const i = this.queue.indexOf(e);
        if (i >= 0) this.queue.splice(i, 1);
        this._settle(e, new SigmaError('timeout', `no answer within ${ms} ms`), null);
      }, ms);
    }
    if (this.open) this._send(e);
    else if (queue) { this.queue.push(e); this.start(); }
    else this._settle(e, new SigmaError('disconnected', `${this.name} socket not connected`), null);
    return e;
  }

  /** `call` as a promise of the answer. */
  request(obj) {
    return new Promise((resolve, reject) => {
      this.call(obj, (err, msg) => (err ? reject(err) : resolve(msg)));
    });
  }

  /** Sends without an id (no answer expected). */
  post(obj) { if (this.open) this.ws.send(JSON.stringify(obj)); }

  _send(e) {
    this.nextId += 1;
    e.id = this.nextId;
    this.pending.set(e.id, e);
    this.ws.send(JSON.stringify({ ...e.obj, id: e.id }));
  }

  _settle(e, err, msg) {
    if (e.done) return;
    e.done = true;
    if (e.timer) clearTimeout(e.timer);
    try { e.settle(err, msg); } catch (x) { setTimeout(() => { throw x; }); }
  }

  close() {
    clearTimeout(this.timer);
    this.timer = null;
    const err = new SigmaError('closed', 'the client is closed');
    const waiting = [...this.queue, ...this.pending.values()];
    this.queue = [];
    this.pending.clear();
    for (const e of waiting) this._settle(e, err, null);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    this.handlers.close(null);
    this._setState('disconnected');
  }
}

/** Calls a user callback; an exception does not break the client. */
function invoke(fn, ...args) {
  if (typeof fn !== 'function') return;
  try { fn(...args); } catch (e) { setTimeout(() => { throw e; }); }
}

/**
 * One subscription to a channel (client.subscribe). `ready` resolves with
 * the first `subscribed` answer ({channel, seq, epoch, recovered?}) and
 * rejects when sigma refuses the subscription (a SigmaError: `forbidden`,
 * `bad_channel`, ...) or the client is closed first. `seq` and `epoch`
 * are where the subscriber is: the last message it was given.
 */
export class Subscription {
  constructor(client, channel, handlers) {
    this.client = client;
    this.channel = channel;
    this.handlers = handlers;
    this.seq = handlers.since ? handlers.since.seq : null;
    this.epoch = handlers.since ? handlers.since.epoch : null;
    this.live = false; // a `subscribed` arrived on the current socket
    this.active = true;
    this.everSubscribed = false;
    this.ready = new Promise((resolve, reject) => { this._ready = { resolve, reject }; });
    this.ready.catch(() => {}); // a refusal also goes to onError
  }

  _subscribe(link) {
    const msg = { type: 'subscribe', channel: this.channel };
    if (this.seq !== null && this.epoch !== null) msg.since = { seq: this.seq, epoch: this.epoch };
    link.call(msg, (err, answer) => this._answered(err, answer, msg.since !== undefined),
      { queue: false, timeout: false });
  }

  _answered(err, m, withSince) {
    if (!this.active) return;
    if (err) {
      if (err.code === 'disconnected') return; // resubscribed on reconnect
      this.active = false;
      this.client._subs.delete(this.channel);
      if (this._ready) { this._ready.reject(err); this._ready = null; }
      invoke(this.handlers.onError, err);
      return;
    }
    const info = { channel: m.channel, seq: m.seq, epoch: m.epoch };
    if (m.recovered !== undefined) info.recovered = m.recovered;
    if (!withSince || m.recovered !== true) {
      // Nothing is replayed: continue from the channel's current seq.
      this.seq = m.seq;
      this.epoch = m.epoch;
    }
    this.live = true;
    const first = !this.everSubscribed;
    this.everSubscribed = true;
    if (this._ready) { this._ready.resolve(info); this._ready = null; }
    if (withSince) invoke(this.handlers.onRecover, info);
    invoke(this.handlers.onSubscribed, info, { first });
  }

  _message(m) {
    if (!this.live) return;
    if (m.type === 'message') {
      if (typeof m.seq === 'number' && this.seq !== null && m.seq <= this.seq) return; // a repeat
      if (typeof m.seq === 'number') this.seq = m.seq;
      invoke(this.handlers.onMessage, m.data, m);
    } else if (m.type === 'join') {
      invoke(this.handlers.onJoin, m.user, m);
    } else if (m.type === 'leave') {
      invoke(this.handlers.onLeave, m.user, m);
    }
  }

  /** Stops the subscription; resolves when sigma confirmed it (at once
   * when the socket is not connected: nothing to undo). */
  unsubscribe() {
    if (!this.active) return Promise.resolve();
    this.active = false;
    this.live = false;
    if (this.client._subs.get(this.channel) === this) this.client._subs.delete(this.channel);
    if (this._ready) { this._ready.reject(new SigmaError('unsubscribed', 'unsubscribed')); this._ready = null; }
    const link = this.client._broadcast;
    if (!link.open) return Promise.resolve();
    return link.request({ type: 'unsubscribe', channel: this.channel }).then(() => {}, () => {});
  }
}

/** One watch of a &db prefix (client.db.watch). `ready` resolves once
 * sigma watches; `unwatch()` stops it. */
class Watch {
  constructor(db, prefix, onChange, options) {
    this.db = db;
    this.prefix = prefix;
    this.onChange = onChange;
    this.options = options;
    this.active = true;
    this.ready = new Promise((resolve, reject) => { this._ready = { resolve, reject }; });
    this.ready.catch(() => {});
  }

  unwatch() {
    if (!this.active) return Promise.resolve();
    this.active = false;
    if (this._ready) { this._ready.reject(new SigmaError('unwatched', 'unwatched')); this._ready = null; }
    return this.db._unwatch(this);
  }
}

/** client.db: the &db key-value store over its WebSocket (docs/db.md). */
class Db {
  constructor(client, path) {
    this.client = client;
    this._watches = new Map(); // prefix -> Set<Watch>
    this._watched = new Set(); // prefixes sigma watches on this socket
    this._link = new Link(client, 'db', path, {
      open: () => this._rewatch(),
      message: (m) => this._message(m),
      close: () => this._watched.clear(),
    });
  }

  _req(obj) { return this._link.request(obj); }

  /** `{value, etag, contentType}` (value: a string, or a Uint8Array when
   * the stored bytes are not UTF-8), or null when there is no such key. */
  async get(key) {
    try {
      const r = await this._req({ type: 'get', key });
      const value = r.value !== undefined ? r.value : b64decode(r.value_base64);
      return { value, etag: r.etag, contentType: r.content_type };
    } catch (e) {
      if (e.code === 'not_found') return null;
      throw e;
    }
  }

  /** Writes a string (stored as UTF-8) or bytes (Uint8Array, ArrayBuffer).
   * Options: `ifMatch` (an etag: write only over that version),
   * `ifNoneMatch` ('*': create only), `contentType`. Resolves
   * `{etag, created}`; a failed condition rejects with code
   * `precondition_failed`. */
  async put(key, value, options = {}) {
    const msg = { type: 'put', key };
    if (typeof value === 'string') msg.value = value;
    else if (value instanceof Uint8Array) msg.value_base64 = b64encode(value);
    else if (value instanceof ArrayBuffer) msg.value_base64 = b64encode(new Uint8Array(value));
    else throw new TypeError('db.put: the value is a string, a Uint8Array or an ArrayBuffer');
    if (options.contentType !== undefined) msg.content_type = options.contentType;
    if (options.ifMatch !== undefined) msg.if_match = options.ifMatch;
    if (options.ifNoneMatch !== undefined) msg.if_none_match = options.ifNoneMatch;
    const r = await this._req(msg);
    return { etag: r.etag, created: r.created };
  }

  /** Deletes a key: true, or false when there was none. Options: `ifMatch`, `ifNoneMatch`. */
  async delete(key, options = {}) {
    const msg = { type: 'delete', key };
    if (options.ifMatch !== undefined) msg.if_match = options.ifMatch;
    if (options.ifNoneMatch !== undefined) msg.if_none_match = options.ifNoneMatch;
    try {
      await this._req(msg);
      return true;
    } catch (e) {
      if (e.code === 'not_found') return false;
      throw e;
    }
  }

  /** The keys under `prefix`, `[{key, etag, size}]` in key order. Every
   * page is fetched, unless `limit` asks for one page (starting `after`). */
  async list(prefix = '', options = {}) {
    const items = [];
    let after = options.after;
    for (;;) {
      const msg = { type: 'list', prefix };
      if (after !== undefined) msg.after = after;
      if (options.limit !== undefined) msg.limit = options.limit;
      const r = await this._req(msg);
      items.push(...r.items);
      if (!r.more || options.limit !== undefined || r.items.length === 0) return items;
      after = r.items[r.items.length - 1].key;
    }
  }

  /** Calls `onChange({key, etag})` for every change under `prefix` (etag
   * null: deleted). Changes made while the socket was cut are not
   * replayed: `options.onResync()` is called each time the watch is
   * re-established after a reconnect, to re-read what matters. Returns a
   * Watch (`ready`, `unwatch()`). */
  watch(prefix, onChange, options = {}) {
    const w = new Watch(this, prefix, onChange, options);
    let set = this._watches.get(prefix);
    if (!set) { set = new Set(); this._watches.set(prefix, set); }
    set.add(w);
    if (this._watched.has(prefix)) {
      w._ready.resolve({ prefix }); w._ready = null;
    } else if (set.size === 1) {
      if (this._link.open) this._watchPrefix(prefix, false);
      else this._link.start();
    }
    return w;
  }

  _watchPrefix(prefix, resync) {
    this._link.call({ type: 'watch', prefix }, (err) => {
      const set = this._watches.get(prefix);
      if (!set) return;
      if (err) {
        if (err.code === 'disconnected') return;
        this._watches.delete(prefix);
        for (const w of set) {
          w.active = false;
          if (w._ready) { w._ready.reject(err); w._ready = null; }
          invoke(w.options.onError, err);
        }
        return;
      }
      this._watched.add(prefix);
      for (const w of set) {
        if (w._ready) { w._ready.resolve({ prefix }); w._ready = null; } else if (resync) invoke(w.options.onResync);
      }
    }, { queue: false, timeout: false });
  }

  _rewatch() {
    for (const prefix of this._watches.keys()) this._watchPrefix(prefix, true);
  }

  async _unwatch(w) {
    const set = this._watches.get(w.prefix);
    if (!set || !set.delete(w) || set.size > 0) return;
    this._watches.delete(w.prefix);
    if (!this._watched.delete(w.prefix) || !this._link.open) return;
    await this._req({ type: 'unwatch', prefix: w.prefix }).catch(() => {});
  }

  _message(m) {
    if (m.type === 'change') {
      for (const [prefix, set] of this._watches) {
        if (!m.key.startsWith(prefix)) continue;
        for (const w of set) if (w.active) invoke(w.onChange, { key: m.key, etag: m.etag });
      }
    } else if (m.type === 'error') {
      this.client._emit('error', new SigmaError(m.code, m.message));
    }
  }
}

/**
 * The SDK's entry point (DESIGN §6). Options:
 * - `url`: sigma's origin, `http(s)://host[:port]` (default: this page's);
 * - `broadcast`, `db`, `worlds`: the routes (default `/broadcast`, `/db`,
 *   `/ws`), or full `ws(s)://` URLs;
 * - `minDelay`, `maxDelay`: the reconnect backoff in ms (250, 10000): the
 *   n-th retry waits a uniform random time up to min(maxDelay, minDelay * 2^n);
 * - `timeout`: ms a request may wait for its answer, 0 for no limit (15000).
 *
 * Sockets open on first use. Events (`client.on(name, fn)`): `state`
 * (fn(state): `connecting`, `connected`, `disconnected`; the worst of the
 * sockets in use, also in `client.state`) and `error` (fn(SigmaError): an
 * error sigma sent that answers no request).
 */
export class Client {
  constructor(options = {}) {
    this.options = {
      url: null, broadcast: '/broadcast', db: '/db', worlds: '/ws',
      minDelay: 250, maxDelay: 10_000, timeout: 15_000, ...options,
    };
    const base = this.options.url || (typeof location !== 'undefined' ? location.origin : '');
    this.httpBase = base.replace(/\/+$/, '');
    this.closed = false;
    this.state = 'disconnected';
    this._listeners = new Map();
    this._subs = new Map(); // channel -> Subscription
    this._broadcast = new Link(this, 'broadcast', this.options.broadcast, {
      open: () => { for (const sub of this._subs.values()) sub._subscribe(this._broadcast); },
      message: (m) => this._broadcastMessage(m),
      close: () => { for (const sub of this._subs.values()) sub.live = false; },
    });
    this.db = new Db(this, this.options.db);
    const worldsUrl = () => this._wsUrl(this.options.worlds);
    this.worlds = {
      connect: (opts = {}) => connect({ url: worldsUrl(), ...opts }),
      login: (user, password) => this.login(user, password),
      whoami: () => this.whoami(),
      Session,
      World,
    };
  }

  _wsUrl(path) {
    if (/^wss?:\/\//i.test(path)) return path;
    return `${this.httpBase.replace(/^http/i, 'ws')}${path}`;
  }

  /** Subscribes to `fn` for `event` ('state', 'error'); returns a function that unsubscribes. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) { const s = this._listeners.get(event); if (s) s.delete(fn); }

  _emit(event, ...args) {
    const s = this._listeners.get(event);
    if (s) for (const fn of [...s]) invoke(fn, ...args);
  }

  _linkState() {
    const used = [this._broadcast, this.db._link].filter((l) => l.started);
    let state = 'disconnected';
    if (used.length > 0 && !this.closed) {
      state = used.map((l) => l.state).reduce((a, b) => (STATES.indexOf(a) <= STATES.indexOf(b) ? a : b));
    }
    if (state === this.state) return;
    this.state = state;
    this._emit('state', state);
  }

  _broadcastMessage(m) {
    const sub = typeof m.channel === 'string' ? this._subs.get(m.channel) : undefined;
    if (sub && (m.type === 'message' || m.type === 'join' || m.type === 'leave')) {
      sub._message(m);
    } else if (m.type === 'error') {
      this._emit('error', new SigmaError(m.code, m.message, { channel: m.channel }));
    }
  }

  /**
   * Subscribes to `channel`. Handlers: `onMessage(data, message)`
   * (message: {channel, seq, from, data}), `onJoin(user)`, `onLeave(user)`,
   * `onRecover(info)` after every re-subscription with `since`
   * (`info.recovered === false`: messages were missed, reload the state),
   * `onError(err)` when sigma refuses it. `since: {seq, epoch}` starts
   * after a known message (e.g. from `history`). Returns a Subscription.
   */
  subscribe(channel, handlers = {}) {
    if (this.closed) throw new SigmaError('closed', 'the client is closed');
    if (this._subs.has(channel)) throw new SigmaError('already_subscribed', `already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, handlers);
    this._subs.set(channel, sub);
    if (this._broadcast.open) sub._subscribe(this._broadcast);
    else this._broadcast.start();
    return sub;
  }

  /** Publishes `data` (any JSON value) on `channel`; resolves `{seq}`. */
  async publish(channel, data) {
    const r = await this._broadcast.request({ type: 'publish', channel, data: data === undefined ? null : data });
    return { seq: r.seq };
  }

  /** The users subscribed to `channel` now: `[{user, connections}]`. */
  async presence(channel) {
    return (await this._broadcast.request({ type: 'presence', channel })).users;
  }

  /** The kept messages of `channel`, oldest first: `{channel, epoch, seq,
   * messages}` (`seq`: the channel's last; pass `{seq, epoch}` as a
   * subscription's `since` to continue after them). Option: `limit`. */
  async history(channel, options = {}) {
    const msg = { type: 'history', channel };
    if (options.limit !== undefined) msg.limit = options.limit;
    const r = await this._broadcast.request(msg);
    return { channel: r.channel, epoch: r.epoch, seq: r.seq, messages: r.messages };
  }

  /** Logs in with a password (POST /login); resolves to the user name. */
  async login(user, password) {
    const r = await fetch(`${this.httpBase}/login`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ user, password }),
      credentials: 'same-origin',
    });
    if (!r.ok) throw new SigmaError('login_failed', `login failed: ${r.status}`, { status: r.status });
    return (await r.json()).user;
  }

  /** The current user (GET /auth/whoami), or null. */
  async whoami() {
    const r = await fetch(`${this.httpBase}/auth/whoami`, { credentials: 'same-origin', cache: 'no-store' });
    return r.ok ? (await r.json()).user : null;
  }

  /** Closes the sockets and stops reconnecting; waiting requests reject (`closed`). */
  close() {
    if (this.closed) return;
    this.closed = true;
    const subs = [...this._subs.values()];
    this._subs.clear();
    for (const sub of subs) {
      sub.active = false;
      if (sub._ready) { sub._ready.reject(new SigmaError('closed', 'the client is closed')); sub._ready = null; }
    }
    this._broadcast.close();
    this.db._link.close();
    this._linkState();
  }
}
