// The `chat` world (to &broadcast): the web page's demo. The worker joins
// the channel `public:chat` and publishes what the page posts; deliveries
// (with the sender's user, set by sigma) go back to the page.
// A Web Worker started by sigma.js; see the worker protocol there.
'use strict';
const CHANNEL = 'public:chat';
const send = (obj) => self.postMessage({ t: 'send', body: JSON.stringify(obj) });
self.onmessage = (e) => {
  const m = e.data || {};
  if (m.t === 'app') {
    send({ type: 'publish', channel: CHANNEL, data: { text: String(m.data) } });
  } else if (m.t === 'recv') {
    let msg;
    try { msg = JSON.parse(m.body); } catch { return; }
    if (msg.type === 'message') {
      self.postMessage({ t: 'app', data: { from: msg.from, text: msg.data && msg.data.text, seq: msg.seq } });
    } else if (msg.type === 'subscribed') {
      self.postMessage({ t: 'app', data: { joined: msg.channel } });
    } else if (msg.type === 'error') {
      self.postMessage({ t: 'app', data: { error: msg.message } });
    }
  }
};
self.postMessage({ t: 'ready' });
send({ type: 'subscribe', channel: CHANNEL });
