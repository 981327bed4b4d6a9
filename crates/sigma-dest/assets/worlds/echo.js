// The `echo` world (to &echo): every body it sends comes back to it.
// A Web Worker started by sigma.js; see the worker protocol there.
// It greets once at start, then echoes whatever the page posts.
'use strict';
self.onmessage = (e) => {
  const m = e.data || {};
  if (m.t === 'recv') self.postMessage({ t: 'app', data: { echoed: m.body } });
  else if (m.t === 'app') self.postMessage({ t: 'send', body: String(m.data) });
};
self.postMessage({ t: 'ready' });
self.postMessage({ t: 'send', body: 'hello from the echo world' });
