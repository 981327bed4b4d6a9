// Smoke test of the browser harness: sigma starts, Chromium loads a sigma
// URL, a user created by startSigma() can log in.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { apiLogin, launchBrowser, startSigma, TEST_TIMEOUT_MS } from './lib.mjs';

test('harness: sigma + chromium + login', { timeout: TEST_TIMEOUT_MS }, async () => {
  const sigma = await startSigma({ users: [{ name: 'alice', password: 'correct horse battery' }] });
  const browser = await launchBrowser();
  try {
    const page = await (await browser.newContext()).newPage();
    const r = await page.goto(`${sigma.url}/auth/whoami`);
    assert.equal(r.status(), 200);
    assert.deepEqual(JSON.parse(await r.text()).user, null);
    assert.equal(await apiLogin(page, sigma.url, 'alice', 'correct horse battery'), 200);
    const again = await page.goto(`${sigma.url}/auth/whoami`);
    assert.equal(JSON.parse(await again.text()).user, 'alice');
  } finally {
    await browser.close();
    await sigma.stop();
  }
});
