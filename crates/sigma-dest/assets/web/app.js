// sigma's bundled page (docs/web.md): login, a chat over &broadcast, notes in &db.
// Only sigma's public interfaces (DESIGN §9) are used, the way any client would.

const CHANNEL = 'public:lobby';
const NOTES = '/db/notes';

const $ = (id) => document.getElementById(id);

let me = null; // the logged-in user's name
let socket = null;
let retry = 0;
let retryTimer = null;
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
  try {
    await fetch('/logout', { method: 'POST', credentials: 'same-origin' });
  } finally {
    notesEtag = null;
    $('notes-text').value = '';
    $('chat-log').replaceChildren();
    await refresh();
  }
});

// ---- chat over &broadcast (WebSocket at /broadcast) ----

function chatStatus(text, cls = 'muted') {
  const s = $('chat-status');
  s.textContent = text;
  s.className = `status ${cls}`;
}

function addLine(from, text, cls) {
  const li = document.createElement('li');
  if (cls) li.className = cls;
  if (from !== undefined) {
    const who = document.createElement('span');
    who.className = from === null ? 'from anon' : 'from';
    who.textContent = from === null ? 'anonymous' : from;
    li.append(who);
  }
  li.append(document.createTextNode(text));
  const log = $('chat-log');
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.append(li);
  while (log.children.length > 500) log.firstElementChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function startChat() {
  if (socket) return;
  clearTimeout(retryTimer);
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/broadcast`;
  const ws = new WebSocket(url);
  socket = ws;
  chatStatus('Connecting…');
  ws.addEventListener('open', () => {
    ws.send(JSON.stringify({ type: 'subscribe', channel: CHANNEL }));
  });
  ws.addEventListener('message', (ev) => {
    let m;
    try {
      m = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (m.type === 'subscribed' && m.channel === CHANNEL) {
      retry = 0;
      chatStatus('Connected.', 'ok');
      $('chat').dataset.ready = 'true';
    } else if (m.type === 'message' && m.channel === CHANNEL) {
      const d = m.data;
      const text = d && typeof d === 'object' && typeof d.text === 'string' ? d.text : JSON.stringify(d);
      addLine(m.from ?? null, text);
    } else if (m.type === 'error') {
      addLine(undefined, `Error: ${m.message || m.code}`, 'sys');
    }
  });
  ws.addEventListener('close', (ev) => {
    if (socket !== ws) return;
    socket = null;
    delete $('chat').dataset.ready;
    if (me === null) return;
    retry = Math.min(retry + 1, 5);
    const wait = 2 ** retry;
    chatStatus(`Disconnected (${ev.code || 'no code'}). Reconnecting in ${wait} s…`, 'error');
    retryTimer = setTimeout(() => {
      if (me !== null) startChat();
    }, wait * 1000);
  });
}

function stopChat() {
  clearTimeout(retryTimer);
  const ws = socket;
  socket = null;
  if (ws) ws.close(1000, 'logout');
  delete $('chat').dataset.ready;
}

$('chat-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('chat-input');
  const text = input.value.trim();
  if (!text) return;
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    chatStatus('Not connected; message not sent.', 'error');
    return;
  }
  socket.send(JSON.stringify({ type: 'publish', channel: CHANNEL, data: { text } }));
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
