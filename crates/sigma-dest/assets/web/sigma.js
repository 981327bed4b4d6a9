// sigma.js: the browser side of sigma's worlds (DESIGN §5).
//
// An ES module, no dependencies. It logs in, opens the session socket at
// /ws, and forks *worlds*: Web Workers each with their own Ed25519 key pair
// (WebCrypto, private key non-extractable) whose messages the page signs
// and relays to sigma, which verifies every one.
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
