// The `echo` world (to &echo): every body it sends comes back to it.
// A Web Worker started by sigma.js; see the worker protocol there.
// It greets once at start, then echoes whatever the page posts.
'use strict';
self.onmessage = (e) => {
  const m = e.data || {};
  if (m.type === 'recv') self.postMessage({ type: 'app', data: { echoed: m.body } });
  else if (m.type === 'app') self.postMessage({ type: 'send', body: String(m.data) });
};
self.postMessage({ type: 'ready' });
self.postMessage({ type: 'send', body: 'hello from the echo world' });
