// The web page's worlds demo (DESIGN §5): once the user is signed in (the
// page shows #app), open the session socket with /sigma.js, fork a `chat`
// world — a Web Worker with its own Ed25519 key whose every message sigma
// verifies — and chat through it on the &broadcast channel `public:chat`.
import { connect } from './sigma.js';

const $ = (id) => document.getElementById(id);
const section = $('worlds');
let session = null;
let world = null;
let starting = false;

function status(text, cls = 'muted') {
  const el = $('worlds-status');
  el.textContent = text;
  el.className = `status ${cls}`;
}

function line(text, cls = '') {
  const li = document.createElement('li');
  li.textContent = text;
  if (cls) li.className = cls;
  const log = $('worlds-log');
  log.append(li);
  while (log.children.length > 200) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
}

async function start() {
  if (starting || session) return;
  starting = true;
  section.hidden = false;
  status('Connecting the session socket…');
  try {
    session = await connect();
    session.addEventListener('close', () => { session = null; world = null; status('Session socket closed.', 'error'); });
    session.addEventListener('error', (e) => line(`sigma: ${e.detail}`, 'error'));
    status('Forking a chat world…');
    world = await session.fork('chat');
    world.addEventListener('app', (e) => {
      const d = e.detail || {};
      if (d.joined) status(`World ${world.id.slice(0, 8)}… joined ${d.joined}; its messages are signed.`, 'ok');
      else if (d.error) line(`error: ${d.error}`, 'error');
      else if (d.text !== undefined) line(`${d.from ?? 'anonymous'}: ${d.text}`);
    });
    world.addEventListener('end', () => status('The world ended.', 'muted'));
  } catch (e) {
    status(`Worlds unavailable: ${e.message}`, 'error');
  } finally {
    starting = false;
  }
}

function stop() {
  if (session) session.close();
  session = null;
  world = null;
  $('worlds-log').replaceChildren();
  section.hidden = true;
}

$('worlds-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('worlds-input');
  if (world && input.value) {
    world.post(input.value);
    input.value = '';
  }
});

// Follow the page's signed-in state: #app is shown only to a signed-in user.
const app = $('app');
const follow = () => (app.hidden ? stop() : start());
new MutationObserver(follow).observe(app, { attributes: true, attributeFilter: ['hidden'] });
follow();
