// The `chat` world (to &broadcast): the web page's demo. The worker joins
// the channel `public:chat` and publishes what the page posts; deliveries
// (with the sender's user, set by sigma) go back to the page.
// A Web Worker started by sigma.js; see the worker protocol there.
'use strict';
const CHANNEL = 'public:chat';
const send = (obj) => self.postMessage({ type: 'send', body: JSON.stringify(obj) });
self.onmessage = (e) => {
  const m = e.data || {};
  if (m.type === 'app') {
    send({ type: 'publish', channel: CHANNEL, data: { text: String(m.data) } });
  } else if (m.type === 'recv') {
    let msg;
    try { msg = JSON.parse(m.body); } catch { return; }
    if (msg.type === 'message') {
      self.postMessage({ type: 'app', data: { from: msg.from, text: msg.data && msg.data.text, seq: msg.seq } });
    } else if (msg.type === 'subscribed') {
      self.postMessage({ type: 'app', data: { joined: msg.channel } });
    } else if (msg.type === 'error') {
      self.postMessage({ type: 'app', data: { error: msg.message } });
    }
  }
};
self.postMessage({ type: 'ready' });
send({ type: 'subscribe', channel: CHANNEL });
