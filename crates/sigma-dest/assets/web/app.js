// sigma's bundled page (docs/web.md): login, a chat over &broadcast, notes in &db.
// Only sigma's public interfaces (DESIGN §9) are used, the way any client would:
// the chat through the Client of /sigma.js (docs/sdk.md), the notes over HTTP.
import { Client } from './sigma.js';

const CHANNEL = 'public:lobby';
const NOTES = '/db/notes';

const $ = (id) => document.getElementById(id);

let me = null; // the logged-in user's name
let client = null; // the Client of /sigma.js while logged in (chat)
let notesEtag = null; // ETag of the note as last loaded or saved; null: none yet

function show(el, on) {
  el.hidden = !on;
}

async function whoami() {
  const r = await fetch('/auth/whoami', { cache: 'no-store', credentials: 'same-origin' });
  if (!r.ok) throw new Error(`whoami: HTTP ${r.status}`);
  return (await r.json()).user;
}

async function refresh() {
  try {
    me = await whoami();
  } catch (e) {
    $('loading').textContent = `Cannot reach the server (${e.message}).`;
    return;
  }
  show($('loading'), false);
  if (me === null) {
    stopChat();
    show($('whoami'), false);
    show($('app'), false);
    show($('login'), true);
    $('login-user').focus();
    return;
  }
  $('me').textContent = me;
  show($('login'), false);
  show($('whoami'), true);
  show($('app'), true);
  startChat();
  loadNotes();
}

// ---- login / logout ----

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const err = $('login-error');
  const button = ev.submitter || $('login-form').querySelector('button');
  const user = $('login-user').value.trim();
  const password = $('login-password').value;
  if (!user || !password) {
    err.textContent = 'Enter your user name and password.';
    return;
  }
  err.textContent = '';
  button.disabled = true;
  try {
    const r = await fetch('/login', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ user, password }),
    });
    if (r.ok) {
      $('login-password').value = '';
      await refresh();
      // The form is gone: keep keyboard users somewhere useful.
      if (me !== null) $('chat-input').focus();
    } else if (r.status === 401) {
      err.textContent = 'Wrong user name or password.';
    } else if (r.status === 429) {
      const after = r.headers.get('Retry-After');
      err.textContent = `Too many attempts. Try again${after ? ` in ${after} s` : ' later'}.`;
    } else if (r.status === 503) {
      const after = r.headers.get('Retry-After');
      err.textContent = `The server is busy. Try again${after ? ` in ${after} s` : ' later'}.`;
    } else {
      err.textContent = `Login failed (HTTP ${r.status}).`;
    }
  } catch (e) {
    err.textContent = `Login failed: ${e.message}`;
  } finally {
    button.disabled = false;
  }
});

$('logout').addEventListener('click', async () => {
  stopChat();
  try {
    await fetch('/logout', { method: 'POST', credentials: 'same-origin' });
  } finally {
    notesEtag = null;
    $('notes-text').value = '';
    $('chat-log').replaceChildren();
    await refresh();
  }
});

// ---- chat over &broadcast, through the Client of /sigma.js ----
// On load: the channel's kept messages (history), then a subscription
// `since` the last of them, so that nothing is missed or shown twice. The
// Client reconnects by itself and resubscribes with `since`.

function chatStatus(text, cls = 'muted') {
  const s = $('chat-status');
  s.textContent = text;
  s.className = `status ${cls}`;
}

/** Adds a line; with `seq`, in seq order and only once. */
function addLine(from, text, cls, seq) {
  const log = $('chat-log');
  let before = null;
  if (seq !== undefined) {
    if (log.querySelector(`li[data-seq="${seq}"]`)) return;
    for (let el = log.lastElementChild; el; el = el.previousElementSibling) {
      if (el.dataset.seq === undefined) continue;
      if (Number(el.dataset.seq) < seq) break;
      before = el;
    }
  }
  const li = document.createElement('li');
  if (cls) li.className = cls;
  if (seq !== undefined) li.dataset.seq = String(seq);
  if (from !== undefined) {
    const who = document.createElement('span');
    who.className = from === null ? 'from anon' : 'from';
    who.textContent = from === null ? 'anonymous' : from;
    li.append(who);
  }
  li.append(document.createTextNode(text));
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.insertBefore(li, before);
  while (log.children.length > 500) log.firstElementChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function addMessage(m) {
  const d = m.data;
  const text = d && typeof d === 'object' && typeof d.text === 'string' ? d.text : JSON.stringify(d);
  addLine(m.from ?? null, text, undefined, m.seq);
}

let chatEpoch = null; // the epoch of the numbered lines shown

/** Shows kept messages; a new epoch replaces the numbered lines. */
function showHistory(h) {
  if (h.epoch !== chatEpoch) {
    for (const li of [...$('chat-log').querySelectorAll('li[data-seq]')]) li.remove();
    chatEpoch = h.epoch;
  }
  for (const m of h.messages) addMessage(m);
}

async function startChat() {
  if (client) return;
  const c = new Client();
  client = c;
  chatStatus('Connecting…');
  c.on('state', (state) => {
    if (client !== c) return;
    if (state === 'disconnected') {
      delete $('chat').dataset.ready;
      chatStatus('Disconnected. Reconnecting…', 'error');
    } else if (state === 'connecting' && $('chat').dataset.ready !== 'true') {
      chatStatus('Connecting…');
    }
  });
  c.on('error', (e) => {
    if (client === c) addLine(undefined, `Error: ${e.message || e.code}`, 'sys');
  });
  let since;
  try {
    const h = await c.history(CHANNEL);
    if (client !== c) return;
    showHistory(h);
    since = { seq: h.seq, epoch: h.epoch };
  } catch (e) {
    if (client !== c) return;
    addLine(undefined, `Could not load the history: ${e.message}`, 'sys');
  }
  c.subscribe(CHANNEL, {
    since,
    onMessage: (data, m) => addMessage(m),
    onSubscribed: (info) => {
      if (client !== c) return;
      if (chatEpoch === null) chatEpoch = info.epoch;
      chatStatus('Connected.', 'ok');
      $('chat').dataset.ready = 'true';
    },
    onRecover: (info) => {
      if (info.recovered || client !== c) return;
      // Missed messages were not kept (or the server restarted): reload.
      // A new epoch numbers messages afresh: drop the old lines now,
      // before the new epoch's live messages arrive.
      showHistory({ epoch: info.epoch, messages: [] });
      c.history(CHANNEL).then((h) => { if (client === c) showHistory(h); }, () => {});
    },
    onError: (e) => {
      if (client === c) chatStatus(`Cannot join the chat (${e.code}).`, 'error');
    },
  });
}

function stopChat() {
  const c = client;
  client = null;
  chatEpoch = null;
  if (c) c.close();
  delete $('chat').dataset.ready;
}

$('chat-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('chat-input');
  const text = input.value.trim();
  if (!text) return;
  if (!client || $('chat').dataset.ready !== 'true') {
    chatStatus('Not connected; message not sent.', 'error');
    return;
  }
  client.publish(CHANNEL, { text }).catch((e) => {
    addLine(undefined, `Not sent (${e.code}): ${text}`, 'sys');
  });
  input.value = '';
  input.focus();
});

// ---- notes in &db (/db/notes, If-Match with the ETag) ----

function notesStatus(text, cls = '') {
  const s = $('notes-status');
  s.textContent = text;
  s.className = `status ${cls}`;
}

async function loadNotes() {
  notesStatus('Loading…', 'muted');
  try {
    const r = await fetch(NOTES, { cache: 'no-store', credentials: 'same-origin' });
    if (r.status === 404) {
      notesEtag = null;
      $('notes-text').value = '';
      notesStatus('No notes yet.', 'muted');
    } else if (r.ok) {
      notesEtag = r.headers.get('ETag');
      $('notes-text').value = await r.text();
      notesStatus('Loaded.', 'muted');
    } else {
      notesStatus(`Could not load the notes (HTTP ${r.status}).`, 'error');
    }
  } catch (e) {
    notesStatus(`Could not load the notes: ${e.message}`, 'error');
  }
  $('notes').dataset.loaded = 'true';
}

async function saveNotes() {
  const button = $('notes-save');
  button.disabled = true;
  notesStatus('Saving…', 'muted');
  const headers = { 'Content-Type': 'text/plain; charset=utf-8' };
  // Only overwrite the version we loaded; create only if there is none.
  if (notesEtag) headers['If-Match'] = notesEtag;
  else headers['If-None-Match'] = '*';
  try {
    const r = await fetch(NOTES, {
      method: 'PUT',
      credentials: 'same-origin',
      headers,
      body: $('notes-text').value,
    });
    if (r.ok) {
      notesEtag = r.headers.get('ETag');
      notesStatus(`Saved at ${new Date().toLocaleTimeString()}.`, 'ok');
    } else if (r.status === 412) {
      notesStatus(
        'Conflict: the notes were changed elsewhere since you loaded them. '
          + 'Your text is still here; copy it, then Reload to see the other version.',
        'error',
      );
    } else if (r.status === 413) {
      notesStatus('Too large to save.', 'error');
    } else {
      notesStatus(`Could not save (HTTP ${r.status}).`, 'error');
    }
  } catch (e) {
    notesStatus(`Could not save: ${e.message}`, 'error');
  } finally {
    button.disabled = false;
  }
}

$('notes-save').addEventListener('click', saveNotes);
$('notes-reload').addEventListener('click', loadNotes);
$('notes-text').addEventListener('keydown', (ev) => {
  if ((ev.ctrlKey || ev.metaKey) && ev.key === 's') {
    ev.preventDefault();
    saveNotes();
  }
});

refresh();
